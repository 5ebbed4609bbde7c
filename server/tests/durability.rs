//! The durable log through the real binary: what a phone was told was sent
//! survives `kill -9`, and the data dir guards itself.

mod common;

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{expect, Server, TEST_CODE};
use loadgen::client::{Client, Event};
use wire::ClientFrame;

#[test]
fn messages_for_an_offline_phone_survive_kill_9() {
    let server = Server::start(&[]);
    let (mut alice, _, alice_key) = server.phone("+15550001001");
    let (bob_client, bob, bob_key) = server.phone("+15550001002");
    drop(bob_client);
    for client_id in 1..=20u64 {
        let body = format!("message {client_id}");
        alice
            .send(&ClientFrame::Send {
                client_id,
                to: bob,
                body: body.as_bytes(),
            })
            .unwrap();
        expect(
            &mut alice,
            "Sent",
            |e| matches!(e, Event::Sent { client_id: c, .. } if *c == client_id),
        );
    }
    drop(alice);

    // SIGKILL: no drain, no flush. Only what the log synced remains.
    let dir = server.into_data_dir();
    let server = Server::start_in(dir, &[]);

    let mut bob_client = server.connect();
    bob_client
        .login(bob, bob_key)
        .expect("the key survived the crash");
    let mut seen = Vec::new();
    for _ in 1..=20 {
        match bob_client.recv().unwrap() {
            Event::Message {
                client_id, body, ..
            } => {
                assert_eq!(body.as_ref(), format!("message {client_id}").as_bytes());
                seen.push(client_id);
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    assert_eq!(seen, (1..=20).collect::<Vec<_>>(), "all of them, in order");

    // A resend after the restart is recognised, not stored again.
    let phone = wire::Phone::parse("+15550001001").unwrap();
    let mut alice = server.connect();
    alice.login(phone, alice_key).unwrap();
    alice
        .send(&ClientFrame::Send {
            client_id: 7,
            to: bob,
            body: b"message 7",
        })
        .unwrap();
    expect(&mut alice, "Sent for the resend", |e| {
        matches!(
            e,
            Event::Sent {
                client_id: 7,
                id: 7
            }
        )
    });
    bob_client.send(&ClientFrame::Ping { nonce: 5 }).unwrap();
    expect(&mut bob_client, "Pong and nothing before it", |e| {
        *e == Event::Pong { nonce: 5 }
    });
}

/// Starts the binary expecting it to refuse; returns its stderr.
fn refused(dir: &std::path::Path, shards: &str) -> String {
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
fn stderr_of(child: &mut std::process::Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

#[test]
fn a_data_dir_in_use_or_of_another_shard_count_is_refused() {
    let server = Server::start(&[]);
    let stderr = refused(server.data_dir(), "2");
    assert!(
        stderr.contains("in use by another isle process"),
        "{stderr}"
    );

    let dir = server.into_data_dir();
    let stderr = refused(dir.path(), "3");
    assert!(
        stderr.contains("holds the logs of 2 shards") && stderr.contains("--shards 2"),
        "{stderr}"
    );
    // With the right count it starts, and the accounts are there.
    let server = Server::start_in(dir, &[]);
    let mut client = Client::connect(server.plain).unwrap();
    let phone = wire::Phone::parse("+15550001003").unwrap();
    client.sign_up(phone, || Ok(TEST_CODE)).unwrap();
}

/// The README's first command runs with `./data`: a relative data dir must
/// work, and a restart must replay it.
#[test]
fn a_relative_data_dir_works_across_restarts() {
    let cwd = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_isle"))
            .current_dir(cwd.path())
            .args([
                "--no-tls",
                "--plaintext-listen",
                "127.0.0.1:0",
                "--shards",
                "2",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running isle");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let _ = child.kill();
        let status = child.wait().unwrap();
        let stderr = stderr_of(&mut child);
        assert!(
            line.starts_with("isle ready"),
            "round {round}: {line:?} {status:?} {stderr}"
        );
        assert!(stderr.contains("replayed"), "round {round}: {stderr}");
    }
    assert!(cwd.path().join("data/log/shard-1").is_dir());
}
