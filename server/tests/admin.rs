//! The admin listener of the real binary: Prometheus metrics that follow
//! what the shards do, the health checks, the bearer token, and `isle ctl`.

mod common;

use std::time::{Duration, Instant};

use common::{expect, Server};
use loadgen::client::Event;
use wire::ClientFrame;

/// Reports reach the control thread once a second.
const REPORT_WAIT: Duration = Duration::from_secs(10);

fn get(server: &Server, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = ureq::get(&format!("http://{}{path}", server.admin));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    match request.call() {
        Ok(response) => (response.status(), response.into_string().unwrap()),
        Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
        Err(error) => panic!("GET {path}: {error}"),
    }
}

/// Polls `/metrics` until `line` is in it.
fn await_metric(server: &Server, line: &str, token: Option<&str>) -> String {
    let deadline = Instant::now() + REPORT_WAIT;
    loop {
        let (code, text) = get(server, "/metrics", token);
        assert_eq!(code, 200, "{text}");
        if text.lines().any(|l| l == line) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {line:?} in:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_follow_the_shards_and_health_says_ready() {
    let server = Server::start(&["--shards", "1"]);
    let (code, body) = get(&server, "/health/live", None);
    assert_eq!((code, body.as_str()), (200, "live\n"));
    let (mut alice, _, _) = server.phone("+15550000001");
    let (_bob, bob, _) = server.phone("+15550000002");
    for client_id in 1..=3 {
        let body = b"hi";
        alice
            .send(&ClientFrame::Send {
                client_id,
                to: bob,
                body,
            })
            .unwrap();
        expect(&mut alice, "Sent", |e| matches!(e, Event::Sent { .. }));
    }
    let text = await_metric(&server, "isle_messages_stored_total{shard=\"0\"} 3", None);
    for series in [
        "isle_sessions{shard=\"0\"} 2",
        "isle_queue_mailbox_entries{shard=\"0\"} 3",
        "isle_journal_failed{shard=\"0\"} 0",
        "isle_ready 1",
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "no {series:?} in:\n{text}"
        );
    }
    assert!(text.contains("isle_commit_seconds_bucket{"), "{text}");
    assert!(text.contains("isle_queue_outbox_bytes_avg{shard=\"0\",window=\"100s\"}"));
    let (code, body) = get(&server, "/health/ready", None);
    assert_eq!((code, body.as_str()), (200, "ready\n"));
}

#[test]
fn a_token_guards_everything_but_the_health_checks() {
    let server = Server::start(&["--admin-token", "s3cret"]);
    assert_eq!(get(&server, "/metrics", None).0, 401);
    assert_eq!(get(&server, "/status", Some("wrong")).0, 401);
    assert_eq!(get(&server, "/status", Some("s3cret")).0, 200);
    assert_eq!(get(&server, "/health/live", None).0, 200);
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--no-tls", "--plaintext-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "0.0.0.0:0"])
        .env_remove("ISLE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin.token"), "{stderr}");
}

/// `isle ctl status`'s text, once it shows `shards` shard rows and the
/// server is ready.
fn status_table(server: &Server, shards: usize) -> String {
    let deadline = Instant::now() + REPORT_WAIT;
    loop {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
            .args(["ctl", "status", "--data-dir"])
            .arg(server.data_dir())
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&output.stdout).into_owned();
        let rows = shard_rows(&table).len();
        if output.status.success() && table.starts_with("ready\n") && rows == shards {
            return table;
        }
        assert!(
            Instant::now() < deadline,
            "{table}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The rows of the shards' table: after its header, up to the blank line.
fn shard_rows(table: &str) -> Vec<&str> {
    table
        .lines()
        .skip(2)
        .take_while(|line| !line.is_empty())
        .collect()
}

#[test]
fn ctl_status_shows_every_shard() {
    let server = Server::start(&[]);
    let table = status_table(&server, 2);
    let rows = shard_rows(&table);
    assert!(rows[0].trim_start().starts_with("0 "), "{table}");
    assert!(rows[1].trim_start().starts_with("1 "), "{table}");
    assert!(rows.iter().all(|row| row.ends_with(" ok")), "{table}");
}

/// Only the outbox showed its 1/10/100 s averages; every other queue
/// length only its current value, though /metrics had the averages. Each
/// queue is now a row of `now/1s/10s/100s` per shard, within 100
/// columns.
#[test]
fn ctl_status_shows_every_queue_with_its_decays() {
    let server = Server::start(&[]);
    let (mut alice, _, _) = server.phone("+15550000001");
    let (bob_client, bob, _) = server.phone("+15550000002");
    drop(bob_client);
    for client_id in 1..=5 {
        alice
            .send(&ClientFrame::Send {
                client_id,
                to: bob,
                body: b"waiting",
            })
            .unwrap();
        expect(&mut alice, "Sent", |e| matches!(e, Event::Sent { .. }));
    }
    // Two reports at least, so that the averages have moved.
    std::thread::sleep(Duration::from_millis(2_500));
    let table = status_table(&server, 2);
    assert!(table.lines().all(|line| line.len() <= 100), "{table}");
    let row = |label: &str| -> Vec<Vec<String>> {
        let line = table
            .lines()
            .find(|line| line.starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} row in:\n{table}"));
        line[label.len()..]
            .split_whitespace()
            .map(|cell| cell.split('/').map(str::to_owned).collect())
            .collect()
    };
    let labels = [
        "outbox bytes",
        "held for a commit",
        "mailbox entries",
        "mailbox bytes",
        "write-back bytes",
        "staged for shards",
    ];
    for label in labels {
        let cells = row(label);
        assert_eq!(cells.len(), 2, "{label}: one cell per shard in:\n{table}");
        assert!(cells.iter().all(|c| c.len() == 4), "{label}:\n{table}");
    }
    // Bob's shard holds his five messages, now and over the last second.
    let mailbox = row("mailbox entries");
    let bobs = mailbox.iter().find(|cell| cell[0] == "5");
    let bobs = bobs.unwrap_or_else(|| panic!("no shard holds 5 entries:\n{table}"));
    assert_ne!(bobs[1], "0", "{table}");
}

/// A single node has no members to remove: it says so, and removes
/// nothing; a node id that is not one is refused before anything is asked.
#[test]
fn remove_node_on_a_single_node_says_it_is_not_in_a_cluster() {
    let server = Server::start(&[]);
    let ctl = |node: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
            .args(["ctl", "--data-dir"])
            .arg(server.data_dir())
            .args(["remove-node", node])
            .output()
            .unwrap()
    };
    let out = ctl("2");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("404") && said.contains("not in a cluster"),
        "{said}"
    );
    let out = ctl("70000");
    assert!(!out.status.success(), "not a node id");
}

/// Signs up +15550000001 and +15550000002; the first sends the second
/// `body` as `client_id`, answered `Sent`.
fn sent_between_two(server: &Server, client_id: u64, body: &[u8]) {
    let (mut alice, _, _) = server.phone("+15550000001");
    let (_, bob, _) = server.phone("+15550000002");
    let send = ClientFrame::Send {
        client_id,
        to: bob,
        body,
    };
    alice.send(&send).unwrap();
    expect(&mut alice, "Sent", |e| matches!(e, Event::Sent { .. }));
}

fn ctl(server: &Server, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["ctl", "--admin", &server.admin.to_string()])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn an_operator_sees_and_revokes_an_account() {
    let server = Server::start(&[]);
    let (mut alice, alice_phone, alice_key) = server.phone("+15550000001");
    let (ok, shown) = ctl(&server, &["--json", "account", "show", "+15550000001"]);
    assert!(ok, "{shown}");
    let info: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
    assert_eq!(info["online"], true, "{shown}");
    assert_eq!(info["generation"], 1, "{shown}");
    let (ok, missing) = ctl(&server, &["account", "show", "+15559999999"]);
    assert!(!ok && missing.contains("404"), "{missing}");

    let (ok, revoked) = ctl(&server, &["account", "revoke", "+15550000001"]);
    assert!(ok, "{revoked}");
    expect(&mut alice, "Bye", |e| {
        matches!(
            e,
            Event::Bye {
                reason: wire::ByeReason::Revoked
            }
        )
    });
    assert_key_refused(&server, alice_phone, alice_key);
}

/// The level set while running applies even with `RUST_LOG` set (every
/// test server has `RUST_LOG=info`, as the packaged unit does): it used
/// to answer `DEBUG` and log nothing more, since `RUST_LOG`'s directives
/// still filtered. `default` goes back to them.
#[test]
fn the_log_level_changes_while_running_whatever_rust_log_says() {
    let server = Server::start(&["--shards", "1"]);
    let logged_in = |server: &Server, number: &str| {
        let _ = server.stderr.try_iter().count();
        server.phone(number);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut lines = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match server.stderr.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        lines
            .iter()
            .any(|line| line.contains(&format!("phone={number}")))
    };
    assert!(!logged_in(&server, "+15550000001"), "a debug line at info");
    let (ok, answer) = ctl(&server, &["log-level", "debug"]);
    assert!(ok, "{answer}");
    assert!(
        logged_in(&server, "+15550000002"),
        "no debug line after `isle ctl log-level debug`: {answer}"
    );
    assert!(answer.starts_with("DEBUG\n"), "{answer}");
    assert!(answer.contains("replaces RUST_LOG=info"), "{answer}");
    let (ok, answer) = ctl(&server, &["log-level", "default"]);
    assert!(ok && answer.contains("back to RUST_LOG=info"), "{answer}");
    assert!(!logged_in(&server, "+15550000003"), "a debug line at info");
    let (ok, answer) = ctl(&server, &["log-level", "chatty"]);
    assert!(!ok && answer.contains("400"), "{answer}");
}

#[test]
fn a_drain_closes_every_connection_and_the_server_is_not_ready() {
    let server = Server::start(&[]);
    let (mut alice, _, _) = server.phone("+15550000001");
    let (mut bob, _, _) = server.phone("+15550000002");
    let (ok, answer) = ctl(&server, &["drain", "--wait-ms", "20000"]);
    assert!(ok, "{answer}");
    for phone in [&mut alice, &mut bob] {
        expect(phone, "Bye", |e| {
            matches!(
                e,
                Event::Bye {
                    reason: wire::ByeReason::ShuttingDown
                }
            )
        });
    }
    let (code, body) = get(&server, "/health/ready", None);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
}

#[test]
fn a_reload_gives_new_tls_connections_the_new_certificate() {
    let server = Server::start(&[]);
    let tls_dir = server.data_dir().join("tls");
    let old_cert = server.data_dir().join("old-cert.pem");
    std::fs::copy(&server.cert, &old_cert).unwrap();
    let mut before = loadgen::client::Client::connect_tls(server.tls, Some(&old_cert)).unwrap();
    // A new identity where the old one was, as an operator puts it there.
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let new = rcgen::generate_simple_self_signed(names).unwrap();
    std::fs::write(tls_dir.join("key.pem"), new.key_pair.serialize_pem()).unwrap();
    std::fs::write(tls_dir.join("cert.pem"), new.cert.pem()).unwrap();
    let (ok, answer) = ctl(&server, &["reload"]);
    assert!(ok && answer.contains("fingerprint"), "{answer}");
    let deadline = Instant::now() + REPORT_WAIT;
    // Shards take the new configuration in their next tick.
    while loadgen::client::Client::connect_tls(server.tls, Some(&server.cert)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        loadgen::client::Client::connect_tls(server.tls, Some(&old_cert)).is_err(),
        "new connections no longer get the old certificate"
    );
    before.send(&ClientFrame::Ping { nonce: 9 }).unwrap();
    expect(&mut before, "Pong", |e| {
        matches!(e, Event::Pong { nonce: 9 })
    });
}

/// A reload that found the data dir's certificate without its key made
/// a new identity, and every phone that pinned the old certificate was
/// locked out. It is an error now, and the identity in use stays.
#[test]
fn a_reload_with_the_key_missing_keeps_the_identity() {
    let server = Server::start(&["--shards", "1"]);
    let key = server.data_dir().join("tls").join("key.pem");
    let cert_before = std::fs::read(&server.cert).unwrap();
    std::fs::remove_file(&key).unwrap();
    let (ok, answer) = ctl(&server, &["reload"]);
    assert!(!ok && answer.contains("key.pem is missing"), "{answer}");
    assert!(!key.exists(), "a key was made: {answer}");
    assert_eq!(std::fs::read(&server.cert).unwrap(), cert_before);
    // Past the shards' next tick, new connections still get the identity
    // phones pinned.
    std::thread::sleep(Duration::from_millis(500));
    let pinned = loadgen::client::Client::connect_tls(server.tls, Some(&server.cert));
    assert!(pinned.is_ok(), "the pinned certificate is no longer served");
}

/// A start that finds half of the data dir's identity refuses, naming
/// the missing file, instead of making a new identity.
#[test]
fn a_start_with_the_key_missing_refuses() {
    let server = Server::start(&["--shards", "1"]);
    let (_, data_dir) = server.stop_keeping_data();
    std::fs::remove_file(data_dir.path().join("tls").join("key.pem")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["--data-dir", data_dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--shards", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("isle started with half an identity");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = common::stderr_of(&mut child);
    assert!(stderr.contains("key.pem is missing"), "{stderr}");
    assert!(!data_dir.path().join("tls").join("key.pem").exists());
}

#[test]
fn the_sms_sender_counts_what_it_sent() {
    let server = Server::start(&["--shards", "1"]);
    common::await_sms_budget();
    let mut client = server.connect();
    let phone = wire::Phone::parse("+442071230001").unwrap();
    client.send(&ClientFrame::RequestCode { phone }).unwrap();
    expect(&mut client, "CodeSent", |e| {
        matches!(e, Event::CodeSent { .. })
    });
    let text = await_metric(&server, "isle_sms_total{outcome=\"sent\"} 1", None);
    assert!(
        text.contains("isle_push_total{outcome=\"failed\"} 0"),
        "{text}"
    );
}

#[test]
fn a_restart_shows_what_each_shard_replayed() {
    let server = Server::start(&["--shards", "1"]);
    sent_between_two(&server, 1, b"kept");
    let (_, dir) = server.stop_keeping_data();
    let server = Server::start_in(dir, &["--shards", "1"]);
    let (code, text) = get(&server, "/metrics", None);
    assert_eq!(code, 200);
    let replayed: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("isle_replayed_records{shard=\"0\"} "))
        .unwrap_or_else(|| panic!("no replay count in:\n{text}"))
        .parse()
        .unwrap();
    // Two accounts and a message at least.
    assert!(replayed >= 3, "{replayed}");
}

#[test]
fn a_trace_says_where_a_message_is() {
    let server = Server::start(&[]);
    sent_between_two(&server, 77, b"here?");
    let (ok, answer) = ctl(&server, &["--json", "trace", "+15550000001", "77"]);
    assert!(ok, "{answer}");
    let hits: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(hits[0]["to"], "+15550000002", "{answer}");
    assert!(
        ["queued", "delivered"].contains(&hits[0]["state"].as_str().unwrap()),
        "{answer}"
    );
    let (ok, answer) = ctl(&server, &["trace", "+15550000001", "78"]);
    assert!(
        ok && answer.contains("nothing the server remembers"),
        "{answer}"
    );
}

/// `isle ctl account delete` answers once the deletion is on disk: the
/// phone is told and closed, the sender learns its queued message will
/// never arrive, and after a restart the account is still gone.
#[test]
fn an_operator_deletes_an_account_durably() {
    let server = Server::start(&["--shards", "2"]);
    let (mut alice, _, _) = server.phone("+15550000001");
    let (mut bob, bob_phone, bob_key) = server.phone("+15550000002");
    alice
        .send(&ClientFrame::Send {
            client_id: 5,
            to: bob_phone,
            body: b"lost to the deletion",
        })
        .unwrap();
    expect(&mut alice, "Sent", |e| matches!(e, Event::Sent { .. }));
    let (ok, answer) = ctl(&server, &["--json", "account", "delete", "+15550000002"]);
    assert!(ok, "{answer}");
    let deleted: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(deleted["was_online"], true, "{answer}");
    assert_eq!(deleted["mailbox_entries"], 1, "{answer}");
    // Written to bob's phone, never acknowledged: still his to lose.
    expect(&mut bob, "Message", |e| matches!(e, Event::Message { .. }));
    expect(&mut bob, "Bye", |e| {
        matches!(
            e,
            Event::Bye {
                reason: wire::ByeReason::AccountDeleted
            }
        )
    });
    expect(&mut alice, "Undeliverable", |e| {
        matches!(
            e,
            Event::Receipt {
                kind: wire::ReceiptKind::Undeliverable,
                client_id: 5,
                ..
            }
        )
    });
    let (ok, missing) = ctl(&server, &["account", "delete", "+15550000002"]);
    assert!(!ok && missing.contains("404"), "{missing}");
    let (_, dir) = server.stop_keeping_data();
    let server = Server::start_in(dir, &["--shards", "2"]);
    let (ok, missing) = ctl(&server, &["account", "show", "+15550000002"]);
    assert!(!ok && missing.contains("404"), "{missing}");
    assert_key_refused(&server, bob_phone, bob_key);
}

/// A login with `key` to `phone` is refused `BadCredentials`.
fn assert_key_refused(server: &Server, phone: wire::Phone, key: wire::DeviceKey) {
    let mut again = server.connect();
    again.send(&ClientFrame::Login { phone, key }).unwrap();
    common::expect_error(&mut again, wire::ErrorKind::BadCredentials);
}

/// A reload reads the config file again: a `[limits]` key takes effect
/// in the running shards, a key that needs a restart is named and keeps
/// its value, and a file that does not load changes nothing.
#[test]
fn a_reload_applies_new_limits_and_names_what_needs_a_restart() {
    let config = tempfile::NamedTempFile::new().unwrap();
    let write = |text: &str| std::fs::write(config.path(), text).unwrap();
    write("[limits]\nmailbox_entries_max = 100\n");
    let path = config.path().to_str().unwrap().to_owned();
    let server = Server::start(&["--shards", "1", "--config", &path]);
    let (mut alice, _, _) = server.phone("+15550000001");
    let (_, bob, _) = server.phone("+15550000002");
    let mut send = |client_id: u64| {
        let body = b"queued";
        alice
            .send(&ClientFrame::Send {
                client_id,
                to: bob,
                body,
            })
            .unwrap();
        alice.recv().unwrap()
    };
    assert!(matches!(send(1), Event::Sent { .. }));
    write("[limits]\nmailbox_entries_max = 1\ntick_ms = 50\n");
    let (ok, answer) = ctl(&server, &["reload"]);
    assert!(ok, "{answer}");
    assert!(
        answer.contains("limits.mailbox_entries_max 100 -> 1"),
        "{answer}"
    );
    assert!(answer.contains("restart: limits.tick_ms"), "{answer}");
    // Shards take the new limits in their next tick.
    let deadline = Instant::now() + REPORT_WAIT;
    let mut client_id = 2;
    loop {
        match send(client_id) {
            Event::Error {
                kind: wire::ErrorKind::MailboxFull,
                ..
            } => break,
            Event::Sent { .. } => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "the new bound never applied");
        client_id += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    write("[limits]\nmailbox_entries_max = 0x\n");
    let (ok, answer) = ctl(&server, &["reload"]);
    assert!(!ok && answer.contains("mailbox_entries_max"), "{answer}");
}

/// `isle ctl` takes phone numbers, never pieces of a path: `../drain?`
/// is refused before anything is asked, and the server keeps serving.
#[test]
fn ctl_takes_a_phone_number_not_a_path() {
    let server = Server::start(&["--shards", "1"]);
    for args in [
        &["account", "revoke", "../drain?"][..],
        &["account", "show", "../metrics"],
        &["account", "delete", "+1555/../../drain"],
        &["trace", "../drain?", "1"],
    ] {
        let (ok, answer) = ctl(&server, args);
        assert!(
            !ok && answer.contains("not a phone number"),
            "{args:?}: {answer}"
        );
    }
    let deadline = Instant::now() + REPORT_WAIT;
    while get(&server, "/health/ready", None).0 != 200 {
        assert!(Instant::now() < deadline, "not ready: drained?");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A drained server closes its phone listeners: a phone that connects is
/// refused at once (and goes elsewhere), not left waiting in a backlog.
#[test]
fn a_drained_server_refuses_new_phones() {
    let server = Server::start(&["--shards", "1"]);
    let (ok, answer) = ctl(&server, &["drain", "--wait-ms", "10000"]);
    assert!(ok, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(server.plain).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the drained server still takes connections"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--json`, `--admin`, `--token` and `--data-dir` were taken only before
/// the subcommand: `isle ctl status --json` was refused. They are global
/// now, taken before or after it, at any depth.
#[test]
fn ctl_options_go_before_or_after_the_subcommand() {
    let server = Server::start(&["--shards", "1", "--admin-token", "sesame"]);
    server.phone("+15550000001");
    let admin = server.admin.to_string();
    let data_dir = server.data_dir().to_str().unwrap().to_owned();
    for args in [
        &["status", "--json", "--admin", &admin, "--token", "sesame"][..],
        &[
            "--json",
            "status",
            "--token",
            "sesame",
            "--data-dir",
            &data_dir,
        ],
        &[
            "account",
            "show",
            "+15550000001",
            "--json",
            "--admin",
            &admin,
            "--token",
            "sesame",
        ],
        &[
            "account",
            "--admin",
            &admin,
            "show",
            "--token",
            "sesame",
            "+15550000001",
            "--json",
        ],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
            .arg("ctl")
            .args(args)
            .env_remove("ISLE_ADMIN_TOKEN")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "isle ctl {args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(stdout.trim());
        assert!(
            parsed.is_ok(),
            "isle ctl {args:?} printed no JSON: {stdout}"
        );
    }
}

/// `isle ctl --json SUBCOMMAND`'s stdout, parsed; the test fails when it
/// is not one JSON value.
fn ctl_json(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, answer) = ctl(server, &all);
    assert!(ok, "isle ctl {all:?}: {answer}");
    serde_json::from_str(answer.trim())
        .unwrap_or_else(|error| panic!("isle ctl {all:?} printed no JSON ({error}): {answer}"))
}

/// `--json` printed the server's text for `reload`, `log-level`,
/// `account revoke` and `drain`, and `account show` printed JSON with or
/// without it. Every subcommand prints one JSON value with `--json` now
/// (`top` one a line), and text without.
#[test]
fn every_ctl_subcommand_speaks_json_when_asked() {
    let server = Server::start(&["--shards", "2"]);
    let (mut alice, _, _) = server.phone("+15550000001");
    server.phone("+15550000002");
    sent_between_two_again(&mut alice, 9);
    let status = ctl_json(&server, &["status"]);
    assert!(status["shards"].is_array(), "{status}");
    let shown = ctl_json(&server, &["account", "show", "+15550000001"]);
    assert_eq!(shown["phone"], "+15550000001", "{shown}");
    let traced = ctl_json(&server, &["trace", "+15550000001", "9"]);
    assert_eq!(traced[0]["to"], "+15550000002", "{traced}");
    let level = ctl_json(&server, &["log-level", "info"]);
    assert_eq!(level["level"], "INFO", "{level}");
    let reloaded = ctl_json(&server, &["reload"]);
    assert!(reloaded["fingerprint"].is_string(), "{reloaded}");
    let revoked = ctl_json(&server, &["account", "revoke", "+15550000002"]);
    assert_eq!(revoked["revoked"], "+15550000002", "{revoked}");
    let deleted = ctl_json(&server, &["account", "delete", "+15550000002"]);
    assert_eq!(deleted["was_online"], false, "{deleted}");
    // One frame of `top`: its first line.
    let first = top_first_line(&server, &["--json"]);
    let frame: serde_json::Value = serde_json::from_str(&first)
        .unwrap_or_else(|error| panic!("top's first line is no JSON ({error}): {first}"));
    assert!(frame["shards"].is_array(), "{frame}");
    // Without --json and into a pipe: text, without a terminal's escape
    // codes.
    let first = top_first_line(&server, &[]);
    assert_eq!(first, "ready\n", "top's first line into a pipe");
    let drained = ctl_json(&server, &["drain", "--wait-ms", "20000"]);
    assert_eq!(drained["drained"], true, "{drained}");
    // Without --json, text.
    let (ok, shown) = ctl(&server, &["account", "show", "+15550000001"]);
    assert!(
        ok && serde_json::from_str::<serde_json::Value>(&shown).is_err(),
        "{shown}"
    );
}

/// Sends +15550000002 a message as `client_id` from an open session,
/// answered `Sent`.
fn sent_between_two_again(alice: &mut loadgen::client::Client, client_id: u64) {
    let bob = wire::Phone::parse("+15550000002").unwrap();
    let send = ClientFrame::Send {
        client_id,
        to: bob,
        body: b"traced",
    };
    alice.send(&send).unwrap();
    expect(alice, "Sent", |e| matches!(e, Event::Sent { .. }));
}

/// `account show` said only `online: true`. It names the shard serving
/// the phone and the phone's address with its port.
#[test]
fn an_account_shows_where_its_phone_is_connected() {
    let server = Server::start(&["--shards", "2"]);
    let (alice, _, _) = server.phone("+15550000001");
    let address = alice.local_addr().unwrap().to_string();
    let home = shard::PartitionMap::new(shard::PARTITIONS_DEFAULT, 2)
        .shard_of(wire::Phone::parse("+15550000001").unwrap());
    let shown = ctl_json(&server, &["account", "show", "+15550000001"]);
    assert_eq!(shown["connection"]["shard"], home, "{shown}");
    assert_eq!(shown["connection"]["peer"], address.as_str(), "{shown}");
    let (ok, text) = ctl(&server, &["account", "show", "+15550000001"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("logged in on shard {home} from {address}")),
        "{text}"
    );
    drop(alice);
    let deadline = Instant::now() + REPORT_WAIT;
    loop {
        let shown = ctl_json(&server, &["account", "show", "+15550000001"]);
        if shown["connection"].is_null() && shown["online"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "still connected: {shown}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A trace of a refused message said "not stored anywhere". It says it
/// was refused, the error and its detail, as the sender's shard recorded.
#[test]
fn a_trace_says_a_refused_message_was_refused_and_why() {
    let server = Server::start(&["--shards", "2"]);
    let (mut alice, _, _) = server.phone("+15550000001");
    let nobody = wire::Phone::parse("+15559999999").unwrap();
    alice
        .send(&ClientFrame::Send {
            client_id: 31,
            to: nobody,
            body: b"to no one",
        })
        .unwrap();
    common::expect_error(&mut alice, wire::ErrorKind::UnknownRecipient);
    let (ok, text) = ctl(&server, &["trace", "+15550000001", "31"]);
    assert!(ok, "{text}");
    assert!(text.contains("refused UnknownRecipient"), "{text}");
    assert!(text.contains("the recipient has no account"), "{text}");
    let traced = ctl_json(&server, &["trace", "+15550000001", "31"]);
    assert_eq!(traced[0]["state"], "refused", "{traced}");
    assert_eq!(traced[0]["reason"], "UnknownRecipient", "{traced}");
}

/// Receipts were counted with messages in `isle_messages_written_total`.
/// Messages and receipts have counters of their own: stored, written,
/// acknowledged.
#[test]
fn receipts_are_counted_apart_from_messages() {
    let server = Server::start(&["--shards", "1"]);
    let (mut alice, _, _) = server.phone("+15550000001");
    let (mut bob, bob_phone, _) = server.phone("+15550000002");
    alice
        .send(&ClientFrame::Send {
            client_id: 1,
            to: bob_phone,
            body: b"one message",
        })
        .unwrap();
    expect(&mut alice, "Sent", |e| matches!(e, Event::Sent { .. }));
    let seq = match expect(&mut bob, "Message", |e| matches!(e, Event::Message { .. })) {
        Event::Message { seq, .. } => seq,
        _ => unreachable!(),
    };
    bob.send(&ClientFrame::Ack { up_to: seq }).unwrap();
    let receipt = expect(&mut alice, "Delivered", |e| {
        matches!(e, Event::Receipt { .. })
    });
    let Event::Receipt { seq, .. } = receipt else {
        unreachable!()
    };
    alice.send(&ClientFrame::Ack { up_to: seq }).unwrap();
    let text = await_metric(&server, "isle_receipts_acked_total{shard=\"0\"} 1", None);
    for line in [
        "isle_messages_stored_total{shard=\"0\"} 1",
        "isle_messages_written_total{shard=\"0\"} 1",
        "isle_messages_acked_total{shard=\"0\"} 1",
        "isle_receipts_stored_total{shard=\"0\"} 1",
        "isle_receipts_written_total{shard=\"0\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    let help = "# HELP isle_receipts_written receipts";
    assert!(text.lines().any(|l| l.starts_with(help)), "{text}");
}

/// `/health/ready` answered 503 ("shard 0 has not reported") for up to a
/// second after the ready line, and, with a tick longer than the 5 s a
/// shard may be silent, between two of its reports. Polled from the
/// ready line on through a steady run of messages, it stays 200.
#[test]
fn readiness_holds_steady_from_the_ready_line_on() {
    let config = tempfile::NamedTempFile::new().unwrap();
    // Shards report once a tick: every 6 s here.
    std::fs::write(config.path(), "[limits]\ntick_ms = 6000\n").unwrap();
    let path = config.path().to_str().unwrap().to_owned();
    let server = Server::start(&["--shards", "2", "--config", &path]);
    let mut answers = vec![get(&server, "/health/ready", None)];
    let (mut alice, _, _) = server.phone("+15550000001");
    let (_bob, bob, _) = server.phone("+15550000002");
    // Past two reports of every shard.
    let until = Instant::now() + Duration::from_secs(13);
    let mut client_id = 0;
    while Instant::now() < until {
        client_id += 1;
        let body = b"steady";
        let send = ClientFrame::Send {
            client_id,
            to: bob,
            body,
        };
        alice.send(&send).unwrap();
        expect(&mut alice, "Sent", |e| matches!(e, Event::Sent { .. }));
        answers.push(get(&server, "/health/ready", None));
        std::thread::sleep(Duration::from_millis(20));
    }
    let not_ready: Vec<&str> = answers
        .iter()
        .filter(|(code, _)| *code != 200)
        .map(|(_, body)| body.trim())
        .collect();
    let mut reasons = not_ready.clone();
    reasons.dedup_by(|a, b| a.split(" for ").next() == b.split(" for ").next());
    assert!(
        not_ready.is_empty(),
        "{} of {} answers not ready: {reasons:?}",
        not_ready.len(),
        answers.len()
    );
}

/// `DATA_DIR/admin.addr` was written after the shards replayed their
/// logs: during a long start `isle ctl` could not find the server. It is
/// written once the admin listener is bound. Here the start is held by
/// a listener already on the phone port (the server waits for it to go,
/// then refuses): `isle ctl status` answers meanwhile.
#[test]
fn ctl_finds_a_server_that_is_still_starting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--no-tls", "--plaintext-listen", &port, "--shards", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the server stopped before `isle ctl status` found it"
        );
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
            .args(["ctl", "status", "--data-dir", dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        if output.status.success() {
            break String::from_utf8_lossy(&output.stdout).into_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.starts_with("not ready: "), "{status}");
    assert!(status.contains("records replayed so far"), "{status}");
    // It gives up on the address that is taken.
    let exit = child.wait().unwrap();
    assert!(!exit.success());
    drop(taken);
}

/// A reload answered before the shards took the new certificate: a
/// connection made right after the answer could get the old one. It
/// answers once every shard has it, however long their tick.
#[test]
fn a_connection_right_after_a_reload_gets_the_new_certificate() {
    let config = tempfile::NamedTempFile::new().unwrap();
    // Shards take commands once a tick: a second here.
    std::fs::write(config.path(), "[limits]\ntick_ms = 1000\n").unwrap();
    let path = config.path().to_str().unwrap().to_owned();
    let server = Server::start(&["--shards", "2", "--config", &path]);
    let tls_dir = server.data_dir().join("tls");
    for round in 0..3 {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let new = rcgen::generate_simple_self_signed(names).unwrap();
        std::fs::write(tls_dir.join("key.pem"), new.key_pair.serialize_pem()).unwrap();
        std::fs::write(tls_dir.join("cert.pem"), new.cert.pem()).unwrap();
        let (ok, answer) = ctl(&server, &["reload"]);
        assert!(
            ok && answer.contains("TLS certificate reloaded: "),
            "{answer}"
        );
        // Both shards' listeners, by connecting a few times.
        for _ in 0..4 {
            let connected = loadgen::client::Client::connect_tls(server.tls, Some(&server.cert));
            assert!(connected.is_ok(), "round {round}: the old certificate");
        }
    }
    // The same files again: the answer says nothing changed.
    let (ok, answer) = ctl(&server, &["reload"]);
    assert!(ok && answer.contains("unchanged"), "{answer}");
}

/// Reloads asked for at once are coalesced: those that come while one
/// runs share the next, so they never queue up one per request.
#[test]
fn concurrent_reloads_share_one() {
    // As many as one source may have open at once.
    const REQUESTS: usize = 4;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[limits]\ntick_ms = 1000\n").unwrap();
    let path = config.path().to_str().unwrap().to_owned();
    let server = Server::start(&["--shards", "1", "--config", &path]);
    let _ = server.stderr.try_iter().count();
    let admin = server.admin.to_string();
    let answers: Vec<std::process::Output> = std::thread::scope(|scope| {
        let asks: Vec<_> = (0..REQUESTS)
            .map(|_| {
                scope.spawn(|| {
                    std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
                        .args(["ctl", "--admin", &admin, "reload"])
                        .output()
                        .unwrap()
                })
            })
            .collect();
        asks.into_iter().map(|ask| ask.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|a| a.status.success()), "{answers:?}");
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut reloads = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match server.stderr.recv_timeout(left) {
            Ok(line) if line.contains("reload (asked by") => reloads.push(line),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // The first alone and the others together, or all together when they
    // came at once (one late asker may need a third): never one each.
    assert!(
        (1..=3).contains(&reloads.len()),
        "{} reloads for {REQUESTS} requests: {reloads:#?}",
        reloads.len()
    );
    assert!(
        reloads
            .iter()
            .any(|line| line.contains("the admin listener x")),
        "{reloads:#?}"
    );
}

/// `isle ctl` read its token only from `ISLE_ADMIN_TOKEN`, the server
/// from `ISLE_ADMIN__TOKEN`: one export did not serve both. `isle ctl`
/// takes the server's variable too.
#[test]
fn ctl_takes_the_servers_token_variable_too() {
    let server = Server::start(&["--shards", "1", "--admin-token", "sesame"]);
    let status_with = |variable: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_isle"));
        command
            .args(["ctl", "--admin", &server.admin.to_string(), "status"])
            .env_remove("ISLE_ADMIN_TOKEN")
            .env_remove("ISLE_ADMIN__TOKEN");
        if let Some(variable) = variable {
            command.env(variable, "sesame");
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), stderr)
    };
    let (ok, stderr) = status_with(None);
    assert!(!ok && stderr.contains("401"), "{stderr}");
    for variable in ["ISLE_ADMIN_TOKEN", "ISLE_ADMIN__TOKEN"] {
        let (ok, stderr) = status_with(Some(variable));
        assert!(ok, "{variable}: {stderr}");
    }
}

/// A stopped server leaves `DATA_DIR/admin.addr` behind, and `isle ctl`
/// said only "Connection refused". It says nothing answers there and
/// where the address came from.
#[test]
fn ctl_says_when_the_server_in_admin_addr_is_gone() {
    let server = Server::start(&["--shards", "1"]);
    let (_, dir) = server.stop_keeping_data();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["ctl", "status", "--data-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("nothing answers") && stderr.contains("admin.addr"),
        "{stderr}"
    );
}

/// The first line `isle ctl [FLAGS] top` writes into a pipe (then it is
/// stopped).
fn top_first_line(server: &Server, flags: &[&str]) -> String {
    let admin = server.admin.to_string();
    let mut top = std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["ctl", "--admin", &admin])
        .args(flags)
        .arg("top")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(top.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    top.kill().unwrap();
    top.wait().unwrap();
    first
}
