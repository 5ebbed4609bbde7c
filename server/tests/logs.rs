//! What the server writes to its log: JSON lines on request, protocol
//! errors with where they came from but never more than a budget a second,
//! and no signup code.

mod common;

use std::time::{Duration, Instant};

use common::{await_sms_budget, Server};
use loadgen::client::Client;
use wire::{ClientFrame, Phone};

/// Lines written to stderr within `wait`.
fn lines_within(server: &Server, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match server.stderr.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    lines
}

#[test]
fn protocol_errors_are_logged_with_their_source_within_a_budget() {
    let server = Server::start(&["--log-format", "json", "--shards", "1"]);
    for _ in 0..60 {
        let mut client = Client::connect_raw(server.plain).unwrap();
        // A frame whose length prefix says 0 bytes: malformed.
        client.send_raw(&[0, 0, 0, 0]).unwrap();
        let _ = client.recv();
    }
    // Past the second, the next protocol error brings the summary line.
    std::thread::sleep(Duration::from_millis(1_100));
    let mut client = Client::connect_raw(server.plain).unwrap();
    client.send_raw(&[0, 0, 0, 0]).unwrap();
    let _ = client.recv();
    let lines = lines_within(&server, Duration::from_secs(2));
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let errors: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|entry| {
            entry["msg"]
                .as_str()
                .is_some_and(|msg| msg.starts_with("protocol error: "))
                && entry["peer"]
                    .as_str()
                    .is_some_and(|peer| peer.starts_with("127.0.0.1:"))
        })
        .collect();
    assert!(
        (20..=22).contains(&errors.len()),
        "{} protocol error lines: {errors:#?}",
        errors.len()
    );
    assert!(
        entries.iter().any(|entry| entry["msg"]
            .as_str()
            .is_some_and(|msg| msg.contains("more protocol errors not logged"))),
        "{lines:#?}"
    );
    assert!(entries.iter().all(|entry| entry["level"].is_string()));
}

#[test]
fn a_signup_code_never_reaches_the_log() {
    let server = Server::start(&["--shards", "1"]);
    await_sms_budget();
    let phone = Phone::parse("+442071230001").unwrap();
    let mut client = server.connect();
    client.send(&ClientFrame::RequestCode { phone }).unwrap();
    let _ = client.recv().unwrap();
    let outbox = server.data_dir().join("sms-outbox.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !outbox.exists() {
        assert!(Instant::now() < deadline, "no outbox");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let written = std::fs::read_to_string(&outbox).unwrap();
    let code = written.split_whitespace().nth(2).unwrap().to_owned();
    let lines = lines_within(&server, Duration::from_millis(500));
    assert!(
        lines.iter().any(|line| line.contains("SMS to")),
        "{lines:#?}"
    );
    // As a number of its own: six digits inside the phone number are not it.
    let has_code = |line: &String| line.split(|c: char| !c.is_ascii_digit()).any(|n| n == code);
    assert!(!lines.iter().any(has_code), "{lines:#?}");
}

/// JSON log lines written within `wait` whose `msg` starts with `start`.
fn json_lines_starting(server: &Server, start: &str, wait: Duration) -> Vec<serde_json::Value> {
    lines_within(server, wait)
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| {
            entry["msg"]
                .as_str()
                .is_some_and(|msg| msg.starts_with(start))
        })
        .collect()
}

/// A phone that hung up was logged (when at all) without its shard or
/// address. It is a debug line with both as fields.
#[test]
fn a_phone_hanging_up_is_logged_with_its_shard_and_address() {
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &["--log-format", "json", "--shards", "1"],
        |command| {
            command.env("RUST_LOG", "info,isle::runtime=debug");
        },
    );
    let mut phone = std::net::TcpStream::connect(server.plain).unwrap();
    let mut hello = Vec::new();
    wire::encode_client(
        &ClientFrame::Hello {
            version: wire::PROTOCOL_VERSION,
        },
        &mut hello,
    );
    std::io::Write::write_all(&mut phone, &hello).unwrap();
    let address = phone.local_addr().unwrap().to_string();
    // The answer to Hello, so that the server is past accepting it.
    std::io::Read::read(&mut phone, &mut [0u8; 64]).unwrap();
    drop(phone);
    let lines = json_lines_starting(&server, "peer hung up", Duration::from_secs(2));
    assert!(
        lines
            .iter()
            .any(|line| line["shard"] == 0 && line["peer"] == address.as_str()),
        "no hang-up line for {address}: {lines:#?}"
    );
}

/// A login, a move to the home shard and a hang-up were lines with the
/// shard, the phone and its address (without the port) inside the
/// message, and the hang-up did not name the phone. Each is a line with
/// `shard`, `peer` (address and port) and, once logged in, `phone` as
/// fields of their own.
#[test]
fn connection_lines_carry_shard_peer_and_phone_as_fields() {
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &["--log-format", "json", "--shards", "2"],
        |command| {
            command.env("RUST_LOG", "info,isle::runtime=debug");
        },
    );
    let (client, phone, _) = server.phone("+15550000001");
    let address = client.local_addr().unwrap().to_string();
    let home = shard::PartitionMap::new(shard::PARTITIONS_DEFAULT, 2).shard_of(phone);
    drop(client);
    let lines: Vec<serde_json::Value> = lines_within(&server, Duration::from_secs(2))
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|entry: &serde_json::Value| entry["peer"] == address.as_str())
        .collect();
    let with = |start: &str| {
        lines
            .iter()
            .find(|entry| entry["msg"].as_str().is_some_and(|m| m.starts_with(start)))
            .unwrap_or_else(|| panic!("no {start:?} line for {address}: {lines:#?}"))
    };
    for start in ["logged in", "peer hung up, session ended"] {
        let entry = with(start);
        assert_eq!(entry["phone"], "+15550000001", "{entry}");
        assert_eq!(entry["shard"], home, "{entry}");
        let msg = entry["msg"].as_str().unwrap();
        assert!(
            !msg.contains("+1555") && !msg.contains("127.0.0.1"),
            "{entry}"
        );
    }
}

/// A failed TLS handshake was a debug line without shard or address. It
/// is a warning with both, and each is counted in /metrics.
#[test]
fn failed_tls_handshakes_are_counted_warnings_with_shard_and_address() {
    let server = Server::start(&["--log-format", "json", "--shards", "1"]);
    const ATTEMPTS: usize = 3;
    let mut addresses = Vec::new();
    for _ in 0..ATTEMPTS {
        let mut stream = std::net::TcpStream::connect(server.tls).unwrap();
        addresses.push(stream.local_addr().unwrap().to_string());
        // Not a TLS record: the handshake fails on the first bytes.
        let _ = std::io::Write::write_all(&mut stream, b"GET / HTTP/1.1\r\n\r\n");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = std::io::Read::read(&mut stream, &mut [0u8; 64]);
    }
    let lines = json_lines_starting(&server, "TLS handshake failed", Duration::from_secs(2));
    for address in &addresses {
        assert!(
            lines.iter().any(|line| line["shard"] == 0
                && line["peer"] == address.as_str()
                && line["level"] == "WARN"),
            "no warning for {address}: {lines:#?}"
        );
    }
    let metric = format!("isle_tls_handshake_failures_total{{shard=\"0\"}} {ATTEMPTS}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = ureq::get(&format!("http://{}/metrics", server.admin))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        if text.lines().any(|line| line == metric) {
            break;
        }
        assert!(Instant::now() < deadline, "no {metric:?} in:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
