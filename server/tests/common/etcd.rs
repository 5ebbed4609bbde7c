//! A one-member etcd (Debian's etcd-server) on loopback for a test: its
//! own data dir and ports, killed when dropped.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long etcd gets to answer after it starts.
const START_WAIT: Duration = Duration::from_secs(20);

pub struct Etcd {
    child: Child,
    data_dir: tempfile::TempDir,
    /// The client URL (`http://127.0.0.1:PORT`).
    pub url: String,
    peer_url: String,
}

/// A loopback port nothing listens on right now, and that nothing else
/// of this test process will be given: taken in turn from below the
/// kernel's ephemeral range (32768 and up by default), so that neither a
/// bind to port 0 nor an outgoing connection (a node's links, an etcd
/// client) takes it between now and its use, as happened with a port of
/// that range released for later use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries run one after another; the process id spreads them.
    let base = std::process::id() % COUNT;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (base + n) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port from {FIRST} to {}", FIRST + COUNT - 1);
}

impl Etcd {
    pub fn start() -> Etcd {
        let data_dir = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let child = Etcd::spawn(&data_dir, &url, &peer_url);
        let etcd = Etcd {
            child,
            data_dir,
            url,
            peer_url,
        };
        etcd.await_healthy();
        etcd
    }

    fn spawn(data_dir: &tempfile::TempDir, url: &str, peer_url: &str) -> Child {
        Command::new(etcd_binary())
            .args(["--name", "test"])
            .args(["--data-dir", data_dir.path().join("etcd").to_str().unwrap()])
            .args(["--listen-client-urls", url, "--advertise-client-urls", url])
            .args(["--listen-peer-urls", peer_url])
            .args(["--initial-advertise-peer-urls", peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "starting etcd (Debian package etcd-server; `cargo run -p ci -- test` installs it)",
            )
    }

    fn await_healthy(&self) {
        let deadline = Instant::now() + START_WAIT;
        let health = format!("{}/health", self.url);
        loop {
            let answer = ureq::get(&health).timeout(Duration::from_secs(1)).call();
            if answer.is_ok_and(|a| a.into_string().unwrap_or_default().contains("true")) {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kill -9, then the same member again on the same data: an outage.
    pub fn crash_and_restart(&mut self, down_for: Duration) {
        self.crash();
        std::thread::sleep(down_for);
        self.restart();
    }

    /// kill -9 of the member; `restart` brings it back on its data.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.child = Etcd::spawn(&self.data_dir, &self.url, &self.peer_url);
        self.await_healthy();
    }

    /// The value of `key`, read with etcdctl (None: absent).
    pub fn get(&self, key: &str) -> Option<String> {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url, "get", key, "--print-value-only"])
            .output()
            .expect("running etcdctl (Debian package etcd-client)");
        assert!(output.status.success(), "etcdctl get {key} failed");
        let text = String::from_utf8(output.stdout).unwrap();
        let value = text.strip_suffix('\n').unwrap_or(&text);
        (!text.is_empty()).then(|| value.to_owned())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd_binary() -> String {
    for candidate in ["/usr/bin/etcd", "/usr/sbin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "etcd".into()
}
