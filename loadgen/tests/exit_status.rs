//! loadgen's exit status: a run that measured nothing must not pass.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener},
    process::{Command, Output, Stdio},
    sync::{mpsc, Arc},
    time::Duration,
};

/// How long one short run may take before the test calls it hung (and
/// kills it): far above what any of these runs needs.
const RUN_BOUND: Duration = Duration::from_secs(60);

/// Runs loadgen to its end; fails the test if it does not end within
/// `RUN_BOUND`.
fn loadgen(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (done, ended) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match ended.recv_timeout(RUN_BOUND) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            panic!("loadgen {args:?} still running after {RUN_BOUND:?}");
        }
    }
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A server that takes connections and never says a word: a listener
/// that never accepts, as a stopped (SIGSTOP) isle's is. The kernel
/// completes the handshakes; nothing answers after them.
fn silent_server() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

#[test]
fn a_run_where_no_phone_could_log_in_fails_and_says_why() {
    let port = closed_port().port();
    let output = loadgen(&[
        "--target",
        &format!("127.0.0.1:{port}"),
        "--phones",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--connect-patience",
        "0.5",
        "--drain",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("4 of 4 phones could not connect or log in"),
        "{stderr}"
    );
    assert!(stderr.contains("no message was sent"), "{stderr}");
}

/// Each scenario's arguments for a short run of a few phones, after
/// `--target`.
const SCENARIOS: [(&str, &[&str]); 6] = [
    (
        "chat",
        &["--phones", "4", "--duration", "1", "--warmup", "0"],
    ),
    ("idle", &["--phones", "4", "--steps", "1"]),
    ("storm", &["--phones", "4", "--senders", "1"]),
    (
        "slow",
        &["--phones", "4", "--duration", "1", "--warmup", "0"],
    ),
    (
        "groups",
        &["--phones", "4", "--group-size", "2", "--duration", "1"],
    ),
    (
        "presence",
        &["--phones", "4", "--contacts", "2", "--duration", "1"],
    ),
];

/// Options only some scenarios have: give up on the first connection
/// quickly (chat, slow which runs it, presence).
fn patience(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "chat" | "slow" | "presence" => &["--connect-patience", "0.5", "--drain", "1"],
        _ => &[],
    }
}

/// Runs every scenario against `target` with `extra` options, asking for
/// a report (which must not keep a run that measured nothing from
/// ending); each must exit non-zero.
fn every_scenario_fails(target: SocketAddr, extra: &[&str], why: &str) {
    let reports = tempfile::tempdir().unwrap();
    for (scenario, args) in SCENARIOS {
        let target = target.to_string();
        let report = reports.path().join(scenario);
        let mut all = vec![scenario, "--target", &target];
        all.extend_from_slice(args);
        all.extend_from_slice(patience(scenario));
        all.extend_from_slice(extra);
        all.extend_from_slice(&["--report", report.to_str().unwrap()]);
        let output = loadgen(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && output.status.code().is_some(),
            "{scenario} {why}: exited {:?}\n{stderr}",
            output.status
        );
    }
}

/// Regression: `slow` printed `lost=0` and exited 0 when no phone could
/// connect, since it only looked at lost messages.
#[test]
fn every_scenario_fails_without_a_server() {
    every_scenario_fails(closed_port(), &[], "without a server");
}

/// Regression: against a server that took connections and never
/// answered (a stopped isle), a run never ended: the login's waits for an
/// answer had no bound, and `--connect-patience` was only looked at
/// between attempts.
#[test]
fn every_scenario_ends_against_a_server_that_never_answers() {
    let (_listener, addr) = silent_server();
    let bound = ["--answer-timeout-ms", "300"];
    every_scenario_fails(addr, &bound, "against a silent server");
    let tls = ["--answer-timeout-ms", "300", "--tls"];
    every_scenario_fails(addr, &tls, "against a silent TLS server");
}

/// The same for chat, and what it says: why the phones failed, and how
/// many waits ran out.
#[test]
fn a_chat_run_against_a_server_that_never_answers_counts_the_waits_that_ran_out() {
    let (_listener, addr) = silent_server();
    let output = loadgen(&[
        "--target",
        &addr.to_string(),
        "--phones",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--connect-patience",
        "0.5",
        "--drain",
        "1",
        "--answer-timeout-ms",
        "300",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("4 of 4 phones could not connect or log in"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("no answer (Welcome) from {addr} within 300 ms")),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // Each phone tried at least twice within its patience.
    assert!(json["answer_timeouts"].as_u64().unwrap() >= 8, "{json}");
}

/// A TLS server whose certificate the phones are not told to trust: every
/// connection accepted completes as much of the handshake as the client
/// allows, then ends.
fn untrusted_tls_server() -> SocketAddr {
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = generated.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(generated.key_pair.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let config = config.clone();
            std::thread::spawn(move || {
                let connection = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(connection, stream);
                let _ = tls.read(&mut [0; 64]);
            });
        }
    });
    addr
}

/// A `--ca` that is not the server's certificate: every phone's handshake
/// fails, and so must the run.
#[test]
fn every_scenario_fails_when_the_server_is_not_the_one_trusted() {
    let server = untrusted_tls_server();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, other.cert.pem()).unwrap();
    let ca = ca.to_str().unwrap();
    every_scenario_fails(server, &["--tls", "--ca", ca], "with a wrong --ca");
}

#[test]
fn version_prints_the_version() {
    for flag in ["--version", "-V"] {
        let output = loadgen(&[flag]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{flag}: {output:?}");
        assert_eq!(
            stdout.trim(),
            format!("loadgen {}", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}
