//! The crash test: loadgen traffic across repeated `kill -9`s and restarts
//! of the real server. Every message whose sender was told `Sent` must reach
//! its recipient, once as far as the application can tell (copies on the
//! wire carry the same client id and are dropped by it), in per-pair order.

mod common;

use std::time::{Duration, SystemTime};

use clap::Parser;
use common::{free_port, Server};

/// A port the kernel just handed out, so the server can come back on it.
/// xorshift64: the kill times only need to differ between runs.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_message() {
    const PHONES: u64 = 200;
    // ISLE_CRASH_ROUNDS=100 makes a soak of it.
    let rounds: usize = std::env::var("ISLE_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    // Kills come every 0.8..2.5 s; sending outlasts them.
    let duration_s = (rounds as f64 * 2.5 + 1.0).to_string();
    let seed = std::env::var("ISLE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("ISLE_CRASH_SEED={seed}");
    let mut rng = seed;

    let addr = format!("127.0.0.1:{}", free_port());
    let extra = ["--plaintext-listen", addr.as_str()];
    let mut server = Server::start(&extra);
    let args = loadgen::chat::Args::parse_from([
        "loadgen",
        "--target",
        &addr,
        "--phones",
        &PHONES.to_string(),
        "--rate",
        "2000",
        "--duration",
        &duration_s,
        "--warmup",
        "0",
        "--drain",
        "30",
        // A tenth of the phones offline at a time, two seconds each: their
        // messages wait in mailboxes across the crashes.
        "--churn-per-s",
        "10",
        "--offline-ms",
        "2000",
    ]);
    let run = std::thread::spawn(move || loadgen::chat::run(&args));

    for round in 0..rounds {
        let wait_ms = 800 + next(&mut rng) % 1700;
        std::thread::sleep(Duration::from_millis(wait_ms));
        let dir = server.into_data_dir(); // SIGKILL
        eprintln!("round {round}: killed after {wait_ms} ms");
        server = Server::start_in(dir, &extra);
    }
    let report = run.join().unwrap().expect("loadgen ran");
    report.print_summary();

    assert!(report.hangups > 50, "too little churn: {report:?}");
    assert!(
        report.reconnects >= PHONES * rounds as u64 / 2,
        "the phones did not live through the crashes: {} reconnects",
        report.reconnects
    );
    assert!(report.acked > 5_000, "too little traffic: {report:?}");
    assert_eq!(report.lost, 0, "acknowledged messages lost: {report:?}");
    assert_eq!(report.reordered, 0, "per-pair order broken: {report:?}");
    // Nothing vanished either: every message was delivered or refused
    // (sends unanswered when a crash came were written again).
    assert_eq!(
        report.delivered + report.rejected,
        report.sent,
        "{report:?}"
    );
    assert!(server.is_running());
}
