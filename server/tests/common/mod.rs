//! Starts the real `isle` binary on loopback for a test.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

pub mod etcd;

use loadgen::client::{Client, Event};
use wire::{DeviceKey, Phone};

/// The fixed code of the test-number range every test server enables.
pub const TEST_CODE: u32 = 111_111;

/// A server's SMS budget starts spent (`sms_per_minute`, 600 by default:
/// a code comes back every 100 ms); a test asking for a real code right
/// after the start waits this long first.
pub fn await_sms_budget() {
    std::thread::sleep(Duration::from_millis(250));
}

pub struct Server {
    child: Child,
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    pub cert: PathBuf,
    /// The admin listener (metrics, health, `isle ctl`).
    pub admin: SocketAddr,
    data_dir: tempfile::TempDir,
    pub stderr: mpsc::Receiver<String>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let data_dir = tempfile::tempdir().expect("temp dir");
        Server::start_in(data_dir, extra)
    }

    pub fn start_in(data_dir: tempfile::TempDir, extra: &[&str]) -> Server {
        Server::start_with(data_dir, extra, |_| {})
    }

    /// As `start_in`, with a last say over the command (limits, say).
    pub fn start_with(
        data_dir: tempfile::TempDir,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_isle"));
        command
            .args(["--data-dir", data_dir.path().to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            // A test that restarts the server on the same port passes its own.
            .args(match extra.contains(&"--plaintext-listen") {
                true => &[][..],
                false => &["--plaintext-listen", "127.0.0.1:0"][..],
            })
            .args(match extra.contains(&"--shards") {
                true => &[][..],
                false => &["--shards", "2"][..],
            })
            .args(["--test-numbers", "+1555:111111"])
            // Segments are written full of zeros before use: small ones
            // keep each start quick.
            .args(match extra.contains(&"--segment-bytes") {
                true => &[][..],
                false => &["--segment-bytes", "1048576"][..],
            })
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = command.spawn().expect("starting isle");
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[isle] {line}");
                let _ = tx.send(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reading the ready line");
        assert!(
            line.starts_with("isle ready"),
            "unexpected first line: {line:?}"
        );
        let field = |name: &str| -> String {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_owned()
        };
        let plain = field("plaintext").parse().unwrap();
        let tls = field("tls").parse().unwrap();
        let cert = PathBuf::from(field("cert"));
        let admin = field("admin").parse().unwrap();
        Server {
            child,
            plain,
            tls,
            cert,
            admin,
            data_dir,
            stderr,
        }
    }

    /// As `start`, with the process's open-file limit at `open_files`.
    pub fn start_with_open_files(open_files: u64, extra: &[&str]) -> Server {
        use std::os::unix::process::CommandExt;
        let data_dir = tempfile::tempdir().expect("temp dir");
        Server::start_with(data_dir, extra, move |command| {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec here.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: open_files,
                        rlim_max: open_files,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
            };
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.plain).expect("connecting")
    }

    /// A signed-up and logged-in phone on a fresh connection.
    pub fn phone(&self, number: &str) -> (Client, Phone, DeviceKey) {
        let phone = Phone::parse(number).unwrap();
        let mut client = self.connect();
        let key = client.sign_up(phone, || Ok(TEST_CODE)).expect("sign up");
        client.login(phone, key).expect("login");
        (client, phone, key)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        wait_timeout(&mut self.child, Duration::from_secs(10))
    }

    /// SIGTERM (a clean stop), wait, and keep the data dir for a restart.
    pub fn stop_keeping_data(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let status = wait_timeout(&mut self.child, Duration::from_secs(10));
        let dir = tempfile::tempdir().unwrap();
        (status, std::mem::replace(&mut self.data_dir, dir))
    }

    pub fn into_data_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.data_dir, dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "isle did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// Reads events until one matches, failing on anything else.
pub fn expect(client: &mut Client, what: &str, matches: impl Fn(&Event) -> bool) -> Event {
    let event = client
        .recv()
        .unwrap_or_else(|error| panic!("waiting for {what}: {error}"));
    assert!(matches(&event), "waiting for {what}, got {event:?}");
    event
}

/// Reads the next event, which must be an `Error` of `kind`.
pub fn expect_error(client: &mut Client, kind: wire::ErrorKind) {
    let event = client
        .recv()
        .unwrap_or_else(|error| panic!("waiting for {kind:?}: {error}"));
    assert!(
        matches!(&event, Event::Error { kind: k, .. } if *k == kind),
        "waiting for {kind:?}, got {event:?}"
    );
}

/// Starts the binary expecting it to refuse; returns its stderr.
pub fn refused(dir: &std::path::Path, shards: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["--data-dir", dir.to_str().unwrap()])
        .args(["--no-tls", "--plaintext-listen", "127.0.0.1:0"])
        .args(["--shards", shards])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running isle");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("isle started where it must not");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !status.success(),
        "isle exited cleanly where it must refuse"
    );
    stderr_of(&mut child)
}

/// Everything the (exited) child wrote to stderr.
pub fn stderr_of(child: &mut std::process::Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

/// A loopback port free right now, for a server that must come back on
/// the same address after a restart (see [`etcd::free_port`]).
pub fn free_port() -> u16 {
    etcd::free_port()
}

/// A small HTTP server on loopback, standing in for a gateway: it answers
/// each POST with the status `answer` picks for its JSON body, and passes
/// the body on.
pub fn http_receiver(
    answer: impl Fn(&serde_json::Value) -> u16 + Send + 'static,
) -> (String, mpsc::Receiver<serde_json::Value>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, bodies) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            assert!(request_line.starts_with("POST /hook "), "{request_line}");
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let status = answer(&json);
            let response =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(response.as_bytes());
            if tx.send(json).is_err() {
                return;
            }
        }
    });
    (url, bodies)
}
