//! Changing the shard count of a data dir: every account, key, queued
//! message, acknowledgement and recent client id moves to the shard that
//! owns it under the new count, and a re-partitioning that a crash cut
//! short is finished or redone on the next start.

mod common;

use std::{collections::BTreeMap, path::Path, time::Duration};

use common::{expect, refused, Server};
use loadgen::client::{Client, Event};
use wire::{ClientFrame, DeviceKey, Phone};

const RECIPIENTS: u64 = 24;
const PER_RECIPIENT: u64 = 3;

/// The phones and what the server told the sender.
struct World {
    alice: (Phone, DeviceKey),
    recipients: Vec<(Phone, DeviceKey)>,
    /// client_id -> the id (`seq` in the recipient's mailbox) it was given.
    ids: BTreeMap<u64, u64>,
    /// Per recipient, the client ids still unacknowledged, oldest first.
    queued: Vec<Vec<u64>>,
}

fn client_id(recipient: u64, k: u64) -> u64 {
    recipient * 100 + k
}

/// The next event that is not a receipt.
fn next_answer(client: &mut Client) -> Event {
    loop {
        match client.recv().expect("an event") {
            Event::Receipt { .. } => continue,
            other => return other,
        }
    }
}

fn send(alice: &mut Client, to: Phone, client_id: u64) -> u64 {
    let body = format!("message {client_id}");
    alice
        .send(&ClientFrame::Send {
            client_id,
            to,
            body: body.as_bytes(),
        })
        .unwrap();
    match next_answer(alice) {
        Event::Sent { client_id: c, id } if c == client_id => id,
        other => panic!("expected Sent for {client_id}, got {other:?}"),
    }
}

/// Signs everyone up on a two-shard server, queues messages for the
/// (offline) recipients, and lets the first recipient acknowledge one.
fn populate(server: &Server) -> World {
    let (mut alice, alice_phone, alice_key) = server.phone("+15550002000");
    let mut recipients = Vec::new();
    for r in 0..RECIPIENTS {
        let (client, phone, key) = server.phone(&format!("+155500021{r:02}"));
        drop(client);
        recipients.push((phone, key));
    }
    let mut ids = BTreeMap::new();
    let mut queued = Vec::new();
    for (r, (phone, _)) in recipients.iter().enumerate() {
        let mut mine = Vec::new();
        for k in 0..PER_RECIPIENT {
            let c = client_id(r as u64, k);
            ids.insert(c, send(&mut alice, *phone, c));
            mine.push(c);
        }
        queued.push(mine);
    }
    // The first recipient reads its messages and acknowledges the first.
    let (phone, key) = recipients[0];
    let mut first = server.connect();
    first.login(phone, key).unwrap();
    for &c in &queued[0] {
        expect(
            &mut first,
            "a queued message",
            |e| matches!(e, Event::Message { client_id, .. } if *client_id == c),
        );
    }
    first
        .send(&ClientFrame::Ack {
            up_to: ids[&queued[0][0]],
        })
        .unwrap();
    first.send(&ClientFrame::Ping { nonce: 1 }).unwrap();
    expect(&mut first, "Pong after the ack", |e| {
        *e == Event::Pong { nonce: 1 }
    });
    queued[0].remove(0);
    World {
        alice: (alice_phone, alice_key),
        recipients,
        ids,
        queued,
    }
}

/// Every recipient logs in with the key it signed up with and gets exactly
/// its unacknowledged messages, in order, with their original ids.
fn check(server: &Server, world: &World) {
    for (r, &(phone, key)) in world.recipients.iter().enumerate() {
        let mut client = server.connect();
        client
            .login(phone, key)
            .unwrap_or_else(|e| panic!("recipient {r} cannot log in: {e}"));
        for &c in &world.queued[r] {
            match client.recv().unwrap() {
                Event::Message {
                    seq,
                    client_id,
                    body,
                    ..
                } => {
                    assert_eq!(client_id, c, "recipient {r}: order");
                    assert_eq!(seq, world.ids[&c], "recipient {r}: the id it was given");
                    assert_eq!(body.as_ref(), format!("message {c}").as_bytes());
                }
                other => panic!("recipient {r}: expected message {c}, got {other:?}"),
            }
        }
        client.send(&ClientFrame::Ping { nonce: 2 }).unwrap();
        expect(&mut client, "Pong and nothing before it", |e| {
            *e == Event::Pong { nonce: 2 }
        });
    }
}

/// A resend is still recognised: answered with the first copy's id and
/// not delivered twice.
fn check_resend(server: &Server, world: &World, recipient: u64) {
    let (phone, key) = world.alice;
    let mut alice = server.connect();
    alice.login(phone, key).unwrap();
    let c = client_id(recipient, 1);
    let to = world.recipients[recipient as usize].0;
    assert_eq!(send(&mut alice, to, c), world.ids[&c], "resend of {c}");
}

fn waits_for(server: &Server, text: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(line) = server.stderr.recv_timeout(Duration::from_millis(100)) {
            if line.contains(text) {
                return line;
            }
        }
    }
    panic!("the server never logged {text:?}");
}

fn shard_dirs(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn leftovers(data_dir: &Path) -> Vec<String> {
    ["log.new", "log.old", "log/RESHARDED"]
        .into_iter()
        .filter(|name| data_dir.join(name).exists())
        .map(str::to_string)
        .collect()
}

#[test]
fn changing_the_shard_count_keeps_accounts_messages_acks_and_resends() {
    let server = Server::start(&[]);
    let world = populate(&server);
    // kill -9, then three shards: everything moves.
    let dir = server.into_data_dir();
    let server = Server::start_in(dir, &["--shards", "3"]);
    waits_for(&server, "re-partitioned");
    assert_eq!(
        shard_dirs(server.data_dir()),
        ["shard-0", "shard-1", "shard-2"]
    );
    assert!(leftovers(server.data_dir()).is_empty());
    check(&server, &world);
    check_resend(&server, &world, 5);

    // New traffic after the move continues each mailbox's ids, and the
    // move down to one shard keeps it too.
    let (phone, key) = world.alice;
    let mut alice = server.connect();
    alice.login(phone, key).unwrap();
    let mut world = world;
    let to = world.recipients[7].0;
    let c = client_id(7, PER_RECIPIENT);
    let id = send(&mut alice, to, c);
    assert_eq!(id, world.ids[&client_id(7, PER_RECIPIENT - 1)] + 1);
    world.ids.insert(c, id);
    world.queued[7].push(c);
    drop(alice);

    let dir = server.into_data_dir();
    let server = Server::start_in(dir, &["--shards", "1"]);
    waits_for(&server, "re-partitioned");
    assert_eq!(shard_dirs(server.data_dir()), ["shard-0"]);
    check(&server, &world);
    check_resend(&server, &world, 11);
}

/// Copies a directory tree (the data dirs here hold a few small files).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn an_interrupted_re_partitioning_is_finished_or_redone() {
    let server = Server::start(&[]);
    let world = populate(&server);
    let (_, two) = server.stop_keeping_data();

    // The same data for three shards, made by a re-partitioning that ran to
    // the end in a copy of the data dir.
    let three = tempfile::tempdir().unwrap();
    copy_tree(two.path(), three.path());
    let _ = std::fs::remove_file(three.path().join("LOCK"));
    let (_, three) = Server::start_in(three, &["--shards", "3"]).stop_keeping_data();

    // A crash after `log.new` was complete and `log` moved aside, before
    // `log.new` took its place: the next start finishes the move.
    let crashed = tempfile::tempdir().unwrap();
    copy_tree(&two.path().join("log"), &crashed.path().join("log.old"));
    copy_tree(&three.path().join("log"), &crashed.path().join("log.new"));
    std::fs::write(
        crashed.path().join("log.new/RESHARDED"),
        "from 2 to 3 shards\n",
    )
    .unwrap();
    let server = Server::start_in(crashed, &["--shards", "3"]);
    waits_for(&server, "finished an interrupted re-partitioning");
    assert!(leftovers(server.data_dir()).is_empty());
    check(&server, &world);
    drop(server);

    // A crash while `log.new` was still being written: it is thrown away
    // and the re-partitioning runs again from the old logs.
    let crashed = tempfile::tempdir().unwrap();
    copy_tree(&two.path().join("log"), &crashed.path().join("log"));
    copy_tree(
        &three.path().join("log/shard-0"),
        &crashed.path().join("log.new/shard-0"),
    );
    let server = Server::start_in(crashed, &["--shards", "3"]);
    waits_for(&server, "re-partitioned");
    assert!(leftovers(server.data_dir()).is_empty());
    assert_eq!(
        shard_dirs(server.data_dir()),
        ["shard-0", "shard-1", "shard-2"]
    );
    check(&server, &world);
}

#[test]
fn a_missing_shard_log_is_refused_with_what_to_do() {
    let server = Server::start(&[]);
    let (_, dir) = server.stop_keeping_data();
    std::fs::remove_dir_all(dir.path().join("log/shard-0")).unwrap();
    let stderr = refused(dir.path(), "2");
    assert!(
        stderr.contains("a shard's log is missing") && stderr.contains("backup"),
        "{stderr}"
    );
}
