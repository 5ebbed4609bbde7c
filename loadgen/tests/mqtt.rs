//! The chat workload on a real MQTT broker (mosquitto, which `cargo run -p
//! ci -- test` installs): phones that hang up and come back get what was
//! queued for them meanwhile, and every message answered with a `PUBACK`
//! arrives.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use clap::Parser;

struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("mosquitto is not installed: `cargo run -p ci -- test` installs it")
}

/// Starts mosquitto on a free loopback port, with the settings `ci bench`
/// uses, and waits until it accepts connections.
fn start_broker(dir: &std::path::Path) -> (Broker, SocketAddr) {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nset_tcp_nodelay true\n",
            addr.port()
        ),
    )
    .unwrap();
    let broker = Broker(
        Command::new(mosquitto())
            .arg("-c")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "mosquitto never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    (broker, addr)
}

#[test]
fn chat_on_mqtt_delivers_every_acknowledged_message_across_hang_ups() {
    let dir = std::env::temp_dir().join(format!("loadgen-mqtt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (broker, addr) = start_broker(&dir);
    let target = format!("mqtt://{addr}");
    let args = loadgen::chat::Args::parse_from([
        "loadgen",
        "--target",
        &target,
        "--phones",
        "80",
        "--duration",
        "3",
        "--warmup",
        "0.5",
        // Phones go away for a moment now and then: the broker keeps their
        // session and queues for them, and unanswered sends are written
        // again (DUP set) on the next connection.
        "--churn-per-s",
        "20",
        "--offline-ms",
        "300",
    ]);
    let report = loadgen::chat::run(&args).unwrap();
    drop(broker);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(report.sent > 1_000, "{report:?}");
    assert!(report.hangups > 10 && report.reconnects > 10, "{report:?}");
    assert_eq!(report.acked + report.rejected, report.sent, "{report:?}");
    assert_eq!(report.delivered, report.sent, "{report:?}");
    assert_eq!((report.lost, report.reordered), (0, 0), "{report:?}");
    assert_eq!(report.receipts, 0, "MQTT has no receipts");
    assert_eq!(report.errors, 0, "{report:?}");
}

#[test]
fn a_scenario_that_speaks_only_isle_refuses_an_mqtt_target() {
    let args = loadgen::storm::Args::parse_from([
        "storm",
        "--target",
        "mqtt://127.0.0.1:1",
        "--phones",
        "1",
    ]);
    let error = loadgen::storm::run(&args).unwrap_err().to_string();
    assert!(error.contains("isle's protocol only"), "{error}");
}
