//! loadgen's scenarios against the real binary.

mod common;

use clap::Parser;
use common::Server;

#[test]
fn idle_holds_every_phone_and_samples_server_memory_per_step() {
    let server = Server::start(&[]);
    let addr = server.plain.to_string();
    let pid = server.pid().to_string();
    let args = loadgen::idle::Args::parse_from([
        "idle",
        "--target",
        &addr,
        "--phones",
        "400",
        "--steps",
        "4",
        "--server-pid",
        &pid,
        "--keepalive-s",
        "0.3",
        "--hold",
        "1",
        "--settle",
        "0.2",
    ]);
    let report = loadgen::idle::run(&args).unwrap();
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.logged_in, 400);
    let phones: Vec<usize> = report.samples.iter().map(|s| s.phones).collect();
    assert_eq!(phones, [0, 100, 200, 300, 400], "{report:?}");
    assert!(report.samples.iter().all(|s| s.server_rss_bytes > 0));
    assert!(
        report.pongs > 400,
        "every phone pinged at least once: {report:?}"
    );
    assert!(report.login_per_s > 0.0);
    assert!(server.stderr.try_iter().all(|line| !line.contains("ERROR")));
}
