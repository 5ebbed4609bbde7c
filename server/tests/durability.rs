//! The durable log through the real binary: what a phone was told was sent
//! survives `kill -9`, and the data dir guards itself.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{expect, refused, stderr_of, Server, TEST_CODE};
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

#[test]
fn a_data_dir_in_use_is_refused() {
    let server = Server::start(&[]);
    let stderr = refused(server.data_dir(), "2");
    assert!(
        stderr.contains("in use by another isle process"),
        "{stderr}"
    );
    // Once the first process is gone it starts, and the accounts are there.
    let dir = server.into_data_dir();
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

/// Reads events until one matches (receipts and the like in between).
fn until(client: &mut Client, pick: impl Fn(&Event) -> bool) -> Event {
    for _ in 0..1_000 {
        let event = client.recv().expect("an event");
        assert!(!matches!(event, Event::Error { .. }), "{event:?}");
        if pick(&event) {
            return event;
        }
    }
    panic!("no matching event in 1,000");
}

/// Bytes under `dir` in files whose names end with `suffix`.
fn bytes_in(dir: &std::path::Path, suffix: &str) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for shard in std::fs::read_dir(dir.join("log")).unwrap() {
        for entry in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name().to_str().unwrap().ends_with(suffix) {
                files += 1;
                bytes += entry.metadata().unwrap().len();
            }
        }
    }
    (files, bytes)
}

#[test]
fn checkpoints_keep_the_log_small_and_restore_after_kill_9() {
    const SEGMENT: &str = "65536";
    let server = Server::start(&["--segment-bytes", SEGMENT]);
    let (mut alice, _, alice_key) = server.phone("+15550002001");
    let (mut bob_client, bob, bob_key) = server.phone("+15550002002");
    let (carol_client, carol, carol_key) = server.phone("+15550002003");
    drop(carol_client);

    // About 1 MB through Bob's log, all of it acknowledged.
    let body = vec![b'x'; 8 * 1024];
    for client_id in 1..=120u64 {
        alice
            .send(&ClientFrame::Send {
                client_id,
                to: bob,
                body: &body,
            })
            .unwrap();
        until(
            &mut alice,
            |e| matches!(e, Event::Sent { client_id: c, .. } if *c == client_id),
        );
        let Event::Message { seq, .. } =
            until(&mut bob_client, |e| matches!(e, Event::Message { .. }))
        else {
            unreachable!()
        };
        bob_client.send(&ClientFrame::Ack { up_to: seq }).unwrap();
    }
    for client_id in 1..=10u64 {
        let body = format!("for carol {client_id}");
        alice
            .send(&ClientFrame::Send {
                client_id,
                to: carol,
                body: body.as_bytes(),
            })
            .unwrap();
        until(
            &mut alice,
            |e| matches!(e, Event::Sent { client_id: c, .. } if *c == client_id),
        );
    }
    // Bob's acks reach the log with the next commits; then a checkpoint.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut checkpoints = 0;
    while checkpoints < 2 && Instant::now() < deadline {
        if let Ok(line) = server.stderr.recv_timeout(Duration::from_millis(200)) {
            checkpoints += usize::from(line.contains("checkpoint after batch"));
        }
    }
    assert!(checkpoints >= 2, "no checkpoints written");
    let (segments, segment_bytes) = bytes_in(server.data_dir(), ".log");
    // At most 4 closed segments per shard before a checkpoint, plus the
    // one being written; far below the 1 MB that passed through.
    assert!(segments <= 2 * 6, "{segments} segments");
    assert!(
        segment_bytes < 900 * 1024,
        "{segment_bytes} bytes of segments"
    );
    drop(alice);
    drop(bob_client);

    let dir = server.into_data_dir();
    let server = Server::start_in(dir, &["--segment-bytes", SEGMENT]);
    let mut carol_client = server.connect();
    carol_client.login(carol, carol_key).unwrap();
    for client_id in 1..=10u64 {
        let got = carol_client.recv().unwrap();
        match got {
            Event::Message {
                client_id: c, body, ..
            } => {
                assert_eq!(c, client_id);
                assert_eq!(body.as_ref(), format!("for carol {client_id}").as_bytes());
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    let mut bob_client = server.connect();
    bob_client.login(bob, bob_key).unwrap();
    bob_client.send(&ClientFrame::Ping { nonce: 1 }).unwrap();
    expect(&mut bob_client, "Pong and no old message", |e| {
        *e == Event::Pong { nonce: 1 }
    });
    // Acknowledged long ago and checkpointed since: still a resend.
    let mut alice = server.connect();
    alice
        .login(wire::Phone::parse("+15550002001").unwrap(), alice_key)
        .unwrap();
    alice
        .send(&ClientFrame::Send {
            client_id: 5,
            to: bob,
            body: &body,
        })
        .unwrap();
    until(&mut alice, |e| {
        matches!(
            e,
            Event::Sent {
                client_id: 5,
                id: 5
            }
        )
    });
    bob_client.send(&ClientFrame::Ping { nonce: 2 }).unwrap();
    expect(&mut bob_client, "Pong and no resend", |e| {
        *e == Event::Pong { nonce: 2 }
    });
}

#[test]
fn the_write_back_cache_is_written_out_on_a_clean_stop() {
    // A minute of delay: nothing reaches the log while the server runs.
    let args = ["--sync-delay-ms", "60000"];
    let server = Server::start(&args);
    let (mut alice, _, _) = server.phone("+15550003001");
    let (bob_client, bob, bob_key) = server.phone("+15550003002");
    drop(bob_client);
    let started = Instant::now();
    alice
        .send(&ClientFrame::Send {
            client_id: 1,
            to: bob,
            body: b"cached",
        })
        .unwrap();
    until(&mut alice, |e| {
        matches!(e, Event::Sent { client_id: 1, .. })
    });
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "Sent did not wait"
    );
    drop(alice);

    let (status, dir) = server.stop_keeping_data();
    assert!(status.success(), "{status:?}");
    let server = Server::start_in(dir, &args);
    let mut bob_client = server.connect();
    bob_client.login(bob, bob_key).unwrap();
    let got = bob_client.recv().unwrap();
    assert!(
        matches!(&got, Event::Message { client_id: 1, body, .. } if body.as_ref() == b"cached"),
        "{got:?}"
    );
}

/// A cache flush larger than a segment takes a commit that switches
/// segments; the stop waits for that commit too, not only for the records
/// to be taken (2 runs in 10 lost every message before).
#[test]
fn a_clean_stop_waits_for_the_cache_flush_to_be_written() {
    let args = ["--sync-delay-ms", "60000"];
    for round in 0..3 {
        let server = Server::start(&args);
        let (mut alice, _, _) = server.phone("+15550003011");
        let (bob_client, bob, bob_key) = server.phone("+15550003012");
        drop(bob_client);
        // 200 x 16 KiB: three 1 MiB segments' worth.
        let body = vec![b'x'; 16 * 1024];
        for client_id in 1..=200u64 {
            alice
                .send(&ClientFrame::Send {
                    client_id,
                    to: bob,
                    body: &body,
                })
                .unwrap();
            until(
                &mut alice,
                |e| matches!(e, Event::Sent { client_id: c, .. } if *c == client_id),
            );
        }
        drop(alice);
        let (status, dir) = server.stop_keeping_data();
        assert!(status.success(), "{status:?}");
        let server = Server::start_in(dir, &args);
        let mut bob_client = server.connect();
        bob_client.login(bob, bob_key).unwrap();
        for client_id in 1..=200u64 {
            let got = bob_client.recv().unwrap_or_else(|e| {
                panic!("round {round}: message {client_id} lost across a clean stop: {e}")
            });
            assert!(
                matches!(&got, Event::Message { client_id: c, .. } if *c == client_id),
                "{got:?}"
            );
        }
    }
}

/// The write-back cache may never write a message acknowledged in time,
/// but a clean stop keeps the seq it took and its client id: after the
/// restart seqs continue and a resend is recognised, not stored again.
#[test]
fn a_clean_stop_keeps_seqs_and_resends_of_messages_the_cache_never_wrote() {
    let server = Server::start(&["--sync-delay-ms", "2000"]);
    let (mut alice, _, alice_key) = server.phone("+15550000001");
    let (mut bob, bob_phone, bob_key) = server.phone("+15550000002");
    let alice_phone = wire::Phone::parse("+15550000001").unwrap();
    let send = |client: &mut Client, client_id: u64| {
        client
            .send(&ClientFrame::Send {
                client_id,
                to: bob_phone,
                body: b"hello",
            })
            .unwrap();
        match until(client, |e| matches!(e, Event::Sent { .. })) {
            Event::Sent { id, .. } => id,
            _ => unreachable!(),
        }
    };
    assert_eq!(send(&mut alice, 1), 1);
    until(&mut bob, |e| matches!(e, Event::Message { seq: 1, .. }));
    bob.send(&ClientFrame::Ack { up_to: 1 }).unwrap();
    // The ack is in before the stop: a ping's answer follows it.
    bob.send(&ClientFrame::Ping { nonce: 7 }).unwrap();
    until(&mut bob, |e| matches!(e, Event::Pong { nonce: 7 }));
    drop((alice, bob));
    let (status, dir) = server.stop_keeping_data();
    assert!(status.success());

    let server = Server::start_in(dir, &["--sync-delay-ms", "2000"]);
    let mut alice = server.connect();
    alice.login(alice_phone, alice_key).unwrap();
    assert_eq!(send(&mut alice, 2), 2, "seqs continue after the stop");
    assert_eq!(send(&mut alice, 1), 1, "the resend is recognised");
    let mut bob = server.connect();
    bob.login(bob_phone, bob_key).unwrap();
    match until(&mut bob, |e| matches!(e, Event::Message { .. })) {
        Event::Message { seq, client_id, .. } => assert_eq!((seq, client_id), (2, 2)),
        _ => unreachable!(),
    }
    bob.set_timeout(Duration::from_millis(500)).unwrap();
    assert!(bob.recv().is_err(), "nothing stored twice");
}
