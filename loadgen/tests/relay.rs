//! The bare relay through its binary, driven by the chat workload: every
//! message that was answered `Sent` arrives, once, in order.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use clap::Parser;

struct Relay(std::process::Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_relay_forwards_every_message_of_a_chat_run() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["relay", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the relay");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let relay = Relay(child);
    let addr = line
        .trim()
        .strip_prefix("relay ready listen=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let args = loadgen::chat::Args::parse_from([
        "loadgen",
        "--target",
        &addr,
        "--phones",
        "60",
        "--duration",
        "2",
        "--warmup",
        "0.5",
    ]);
    let report = loadgen::chat::run(&args).unwrap();
    drop(relay);
    assert!(report.sent > 1_000, "{report:?}");
    assert_eq!(report.acked, report.sent, "{report:?}");
    assert_eq!(report.delivered, report.sent, "{report:?}");
    assert_eq!(
        (report.lost, report.duplicates, report.reordered),
        (0, 0, 0),
        "{report:?}"
    );
    assert_eq!(report.receipts, 0, "the relay sends no receipts");
}
