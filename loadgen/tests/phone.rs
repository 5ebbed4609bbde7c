//! The `loadgen phone` binary through its standard input, against the bare
//! relay (the real server's version of this test is in
//! `server/tests/phone.rs`): commands go in as lines, frames come out as
//! lines, and the end of the input ends it once the answers are in.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the relay on a free port; its address.
fn relay() -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["relay", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the relay");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("relay ready listen=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (Killed(child), addr)
}

#[test]
fn the_phone_reads_commands_from_stdin_and_prints_every_frame() {
    let (_relay, addr) = relay();
    let keys = tempfile::tempdir().unwrap();
    let mut phone = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["phone", "--target", &addr])
        .args(["--keys", keys.path().to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the phone");
    let mut stdin = phone.stdin.take().unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = phone.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut expect = |wanted: &str| loop {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(wanted) {
                    return line;
                }
            }
            Err(_) => panic!("never printed {wanted:?}; printed {seen:#?}"),
        }
    };
    expect("< Welcome version=1");
    writeln!(stdin, "signup +15550000001").unwrap();
    expect("< CodeSent +15550000001");
    writeln!(stdin, "code 123456").unwrap();
    expect("< Registered +15550000001 key=");
    expect("< LoggedIn +15550000001");
    assert!(keys.path().join("+15550000001.key").exists());
    writeln!(stdin, "help").unwrap();
    expect("login PHONE [KEY_HEX]");
    // Answers to commands still in flight when the input ends are printed.
    writeln!(stdin, "send +15550000001 to myself\nping").unwrap();
    drop(stdin);
    expect("< Message seq=1 from=+15550000001");
    expect("< Pong nonce=1");
    let status = phone.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_phone_with_no_server_fails_and_says_why() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["phone", "--target", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("connecting to 127.0.0.1"), "{stderr}");
}
