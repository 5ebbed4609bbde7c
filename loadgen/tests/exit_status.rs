//! loadgen's exit status: a run that measured nothing must not pass.

use std::process::Command;

#[test]
fn a_run_where_no_phone_could_log_in_fails_and_says_why() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--target", &format!("127.0.0.1:{port}")])
        .args(["--phones", "4", "--duration", "1", "--warmup", "0"])
        .args(["--connect-patience", "0.5", "--drain", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("4 of 4 phones could not connect or log in"),
        "{stderr}"
    );
    assert!(stderr.contains("no message was sent"), "{stderr}");
}
