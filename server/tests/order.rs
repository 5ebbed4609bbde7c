//! Order across refusals on the real binary: loadgen's phones follow the
//! phone's half of the rule (write refused sends again, in order, after a
//! pause) while the server's send allowance refuses many of their sends.
//! What each recipient gets from each sender must still follow the order
//! it was written, and nothing may be lost or given up.

mod common;

use clap::Parser;
use common::{free_port, Server};

#[test]
fn rate_limited_phones_that_resend_in_order_keep_every_conversation_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("isle.toml");
    // A phone may send 20 a second in bursts of 4, and is made to send
    // 40 a second to one of 23 others: a send written once a token came
    // back would overtake one refused just before it, unless held back;
    // and a phone often has more than 16 conversations waiting (the
    // server's gap bound per sender).
    std::fs::write(&config, "[limits]\nsend_rate_per_s = 20\nsend_burst = 4\n").unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start(&[
        "--shards",
        "2",
        "--plaintext-listen",
        &addr,
        "--config",
        config.to_str().unwrap(),
    ]);
    let args = loadgen::chat::Args::parse_from([
        "loadgen",
        "--target",
        &addr,
        "--phones",
        "24",
        "--rate",
        "960",
        "--duration",
        "3",
        "--warmup",
        "0",
        "--drain",
        "20",
    ]);
    let report = loadgen::chat::run(&args).expect("loadgen ran");
    report.print_summary();
    assert_eq!(
        report.reordered, 0,
        "a conversation's order broke: {report:?}"
    );
    assert!(
        report.refused_retryable > 100,
        "the allowance should have refused many sends: {report:?}"
    );
    assert!(
        report.out_of_order > 0,
        "sends behind a refused one should have been held back: {report:?}"
    );
    assert_eq!(report.rejected, 0, "only retryable refusals: {report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.delivered, report.sent, "{report:?}");
    assert!(server.is_running());
}
