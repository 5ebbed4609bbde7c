//! A real full disk: the server's data dir on a small ext4 file system
//! (loop-mounted), filled up while it runs. New messages are refused with
//! `DiskFull`, acknowledgements go on, and once space is freed messages are
//! accepted again, with nothing lost across a `kill -9`.

mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::Server;
use loadgen::client::{Client, Event};
use wire::{ClientFrame, ErrorKind, Phone};

/// A loop-mounted ext4 file system, unmounted on drop.
struct SmallDisk {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl SmallDisk {
    fn new(bytes: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                mount.to_str().unwrap(),
            ],
        );
        SmallDisk { _dir: dir, mount }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e} (this test needs root and e2fsprogs)"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_data()) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(error) => panic!("filling the disk: {error}"),
        }
    }
}

/// The next event that is not a receipt.
/// Waits (up to 15 s) until `/health/ready`'s answer says `what`.
fn await_readiness(server: &Server, what: &str) {
    let url = format!("http://{}/health/ready", server.admin);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = match ureq::get(&url).call() {
            Ok(answer) => answer.into_string().unwrap_or_default(),
            Err(ureq::Error::Status(_, answer)) => answer.into_string().unwrap_or_default(),
            Err(error) => panic!("{url}: {error}"),
        };
        if text.contains(what) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} says {text:?}, not {what:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn next_answer(client: &mut Client) -> Event {
    loop {
        match client.recv().expect("an event") {
            Event::Receipt { .. } => continue,
            event => return event,
        }
    }
}

/// The next message, which must be `client_id`; returns its seq.
fn receive(bob: &mut Client, client_id: u64) -> u64 {
    match next_answer(bob) {
        Event::Message {
            seq, client_id: c, ..
        } => {
            assert_eq!(c, client_id);
            seq
        }
        other => panic!("expected message {client_id}, got {other:?}"),
    }
}

fn send(client: &mut Client, client_id: u64, to: Phone, body: &[u8]) {
    client
        .send(&ClientFrame::Send {
            client_id,
            to,
            body,
        })
        .unwrap();
}

#[test]
fn a_full_disk_refuses_new_messages_and_recovers_when_space_is_freed() {
    let disk = SmallDisk::new(24 * 1024 * 1024);
    let data = tempfile::tempdir_in(&disk.mount).unwrap();
    let server = Server::start_in(data, &[]);
    let (mut alice, _, alice_key) = server.phone("+15550003001");
    let (mut bob, bob_phone, bob_key) = server.phone("+15550003002");
    let filler = disk.mount.join("filler");
    fill(&filler);

    // Bob's log fills its segment, starts the one prepared before the disk
    // filled up, and finds no room for the next: sends are refused.
    let body = vec![b'x'; 8 * 1024];
    let refused_body = body.clone();
    let mut client_id = 0;
    let mut unacked = 0;
    let refused = loop {
        client_id += 1;
        assert!(client_id < 200, "never refused");
        send(&mut alice, client_id, bob_phone, &body);
        match next_answer(&mut alice) {
            Event::Sent { client_id: c, .. } => {
                assert_eq!(c, client_id);
                unacked = receive(&mut bob, client_id);
            }
            Event::Error {
                kind,
                client_id: c,
                detail,
            } => {
                assert_eq!(kind, ErrorKind::DiskFull, "{detail}");
                assert_eq!(c, Some(client_id));
                break client_id;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    // The segment (1 MiB; a commit pads to 4 KiB blocks) took dozens first.
    assert!(refused > 20, "refused after only {refused} messages");
    // Acks go on while the disk is full: Bob's, of everything he got, is
    // written (the restart below would deliver it all again otherwise).
    bob.send(&ClientFrame::Ack { up_to: unacked }).unwrap();
    // Still refused, and the phones are still served. A phone sends the
    // refused message again (a later one would wait for it: README,
    // "Order across refusals").
    send(&mut alice, refused, bob_phone, &body);
    assert!(matches!(
        next_answer(&mut alice),
        Event::Error {
            kind: ErrorKind::DiskFull,
            ..
        }
    ));
    bob.send(&ClientFrame::Ping { nonce: 7 }).unwrap();
    assert_eq!(next_answer(&mut bob), Event::Pong { nonce: 7 });
    // Nothing new can be taken: the server says it is not ready (the
    // shards report once a second).
    await_readiness(&server, "disk is full");

    // Space is freed: within a few seconds messages are accepted again.
    std::fs::remove_file(&filler).unwrap();
    await_readiness(&server, "ready\n");
    let deadline = Instant::now() + Duration::from_secs(15);
    let last = loop {
        assert!(Instant::now() < deadline, "never accepted again");
        send(&mut alice, refused, bob_phone, &body);
        match next_answer(&mut alice) {
            Event::Sent { .. } => break refused,
            Event::Error {
                kind: ErrorKind::DiskFull,
                ..
            } => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("unexpected {other:?}"),
        }
    };
    let lines: Vec<String> = server.stderr.try_iter().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("no room for another log segment")),
        "the operator was not told"
    );
    assert!(lines.iter().any(|l| l.contains("has room again")));

    // Nothing the disk-full episode touched is lost: the last message,
    // unread, comes back after a kill -9.
    drop((alice, bob));
    let data = server.into_data_dir();
    let server = Server::start_in(data, &[]);
    let mut bob = server.connect();
    bob.login(bob_phone, bob_key).unwrap();
    match next_answer(&mut bob) {
        Event::Message {
            client_id, body, ..
        } => {
            assert_eq!(client_id, last);
            assert_eq!(body.as_ref(), &refused_body[..]);
        }
        other => panic!("expected the last message, got {other:?}"),
    }
    let mut alice = server.connect();
    alice
        .login(Phone::parse("+15550003001").unwrap(), alice_key)
        .unwrap();
    drop(server);
}

/// Queues `count` small messages from Alice for Bob, who is offline, then
/// fills the disk. Returns Alice's connection and last client id.
fn queue_then_fill(server: &Server, disk: &SmallDisk, bob: Phone, count: u64) -> (Client, u64) {
    let (mut alice, _, _) = server.phone("+15550003101");
    for client_id in 1..=count {
        send(&mut alice, client_id, bob, b"queued");
        match next_answer(&mut alice) {
            Event::Sent { client_id: c, .. } => assert_eq!(c, client_id),
            other => panic!("unexpected {other:?}"),
        }
    }
    fill(&disk.mount.join("filler"));
    (alice, count)
}

/// Bob takes his queue one message at a time, acknowledging each, while
/// Carol pings every half second: every acknowledgement is a commit of
/// its own, so the log's current segment runs out partway, with no room
/// on the disk for the next. Every ping must be answered and every stored
/// message delivered all the same.
fn ack_one_by_one_with_pings(bob: &mut Client, carol: &mut Client, count: u64) {
    let mut last_ping = Instant::now();
    let mut nonce = 0;
    for expected in 1..=count {
        let seq = receive(bob, expected);
        bob.send(&ClientFrame::Ack { up_to: seq }).unwrap();
        if last_ping.elapsed() >= Duration::from_millis(500) {
            nonce += 1;
            carol.send(&ClientFrame::Ping { nonce }).unwrap();
            assert_eq!(
                next_answer(carol),
                Event::Pong { nonce },
                "after {expected} acks"
            );
            last_ping = Instant::now();
        }
        // Acks take a few ms each when written; spread them out enough
        // for the segment to run out between pings.
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends `client_id` until it is answered `Sent`, for at most `patience`;
/// every answer before must be `DiskFull`, each within the client's
/// timeout.
fn send_until_sent(alice: &mut Client, client_id: u64, to: Phone, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        assert!(Instant::now() < deadline, "never accepted again");
        send(alice, client_id, to, b"after the full disk");
        match next_answer(alice) {
            Event::Sent { client_id: c, .. } => {
                assert_eq!(c, client_id);
                return;
            }
            Event::Error {
                kind: ErrorKind::DiskFull,
                ..
            } => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The case behind the rule "a full disk leaves the server live, and it
/// resumes by itself": the current segment runs out while the disk is
/// full; then the filler is deleted, and messages are accepted again
/// without a restart.
#[test]
fn a_segment_running_out_on_a_full_disk_keeps_the_server_live_and_it_resumes() {
    let disk = SmallDisk::new(24 * 1024 * 1024);
    let data = tempfile::tempdir_in(&disk.mount).unwrap();
    let server = Server::start_in(data, &["--shards", "1"]);
    let bob_phone = Phone::parse("+15550003102").unwrap();
    let bob_key = server.phone("+15550003102").2;
    let (mut carol, _, _) = server.phone("+15550003103");
    let (mut alice, last) = queue_then_fill(&server, &disk, bob_phone, 600);
    for client in [&mut alice, &mut carol] {
        client.set_timeout(Duration::from_secs(3)).unwrap();
    }
    let mut bob = server.connect();
    bob.set_timeout(Duration::from_secs(3)).unwrap();
    bob.login(bob_phone, bob_key).unwrap();
    ack_one_by_one_with_pings(&mut bob, &mut carol, last);
    // New messages are answered at once, not left waiting: refused while
    // the disk is full, or taken if Bob's acks let a checkpoint free a
    // segment meanwhile (on a loaded machine it sometimes has).
    send(&mut alice, last + 1, bob_phone, b"after the full disk");
    let answer = next_answer(&mut alice);
    assert!(
        matches!(
            answer,
            Event::Error {
                kind: ErrorKind::DiskFull,
                ..
            } | Event::Sent { .. }
        ),
        "{answer:?}"
    );

    std::fs::remove_file(disk.mount.join("filler")).unwrap();
    send_until_sent(&mut alice, last + 1, bob_phone, Duration::from_secs(15));
    assert_eq!(receive(&mut bob, last + 1), last + 1);
    carol.send(&ClientFrame::Ping { nonce: 99 }).unwrap();
    assert_eq!(next_answer(&mut carol), Event::Pong { nonce: 99 });
}

/// A restart while the disk is still full and the current segment used up:
/// a send is answered (`DiskFull`), not left waiting for room; once space
/// is freed it is accepted.
#[test]
fn a_restart_on_a_still_full_disk_answers_every_send() {
    let disk = SmallDisk::new(24 * 1024 * 1024);
    let data = tempfile::tempdir_in(&disk.mount).unwrap();
    let server = Server::start_in(data, &["--shards", "1"]);
    let bob_phone = Phone::parse("+15550003102").unwrap();
    let bob_key = server.phone("+15550003102").2;
    let (mut carol, carol_phone, carol_key) = server.phone("+15550003103");
    let (alice, last) = queue_then_fill(&server, &disk, bob_phone, 600);
    carol.set_timeout(Duration::from_secs(3)).unwrap();
    let mut bob = server.connect();
    bob.set_timeout(Duration::from_secs(3)).unwrap();
    bob.login(bob_phone, bob_key).unwrap();
    ack_one_by_one_with_pings(&mut bob, &mut carol, last);
    drop((alice, bob, carol));

    let data = server.into_data_dir(); // SIGKILL

    // The room a checkpoint on the full disk freed (the segments Bob's
    // acks emptied) is taken again, so the restart finds the disk full.
    fill(&disk.mount.join("filler-2"));
    let server = Server::start_in(data, &["--shards", "1"]);
    let mut carol = server.connect();
    carol.set_timeout(Duration::from_secs(3)).unwrap();
    carol.login(carol_phone, carol_key).unwrap();
    send(&mut carol, 1, bob_phone, b"after the restart");
    match next_answer(&mut carol) {
        Event::Error {
            kind: ErrorKind::DiskFull,
            client_id,
            ..
        } => assert_eq!(client_id, Some(1)),
        other => panic!("unexpected {other:?}"),
    }
    carol.send(&ClientFrame::Ping { nonce: 5 }).unwrap();
    assert_eq!(next_answer(&mut carol), Event::Pong { nonce: 5 });
    std::fs::remove_file(disk.mount.join("filler")).unwrap();
    std::fs::remove_file(disk.mount.join("filler-2")).unwrap();
    send_until_sent(&mut carol, 1, bob_phone, Duration::from_secs(15));
}

/// What fills the disk may be the log's own closed segments, which a
/// checkpoint lets go of: on a full disk one closed segment makes a
/// checkpoint due (not `checkpoint_segments` of them), so the shard finds
/// room for its next segment and takes messages again without anyone
/// freeing space.
#[test]
fn a_full_disk_checkpoints_at_once_and_takes_messages_again() {
    let disk = SmallDisk::new(24 * 1024 * 1024);
    let data = tempfile::tempdir_in(&disk.mount).unwrap();
    let flags = ["--shards", "1", "--segment-bytes", "262144"];
    let server = Server::start_in(data, &flags);
    let (mut alice, _, _) = server.phone("+15550003201");
    let (mut bob, bob_phone, _) = server.phone("+15550003202");
    for client in [&mut alice, &mut bob] {
        client.set_timeout(Duration::from_secs(3)).unwrap();
    }
    // Full, then room for a checkpoint but not for a 256 KiB segment.
    let filler = disk.mount.join("filler");
    fill(&filler);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    file.set_len(file.metadata().unwrap().len() - 128 * 1024)
        .unwrap();
    file.sync_all().unwrap();

    // Bob takes and acknowledges every message: the log's segments hold
    // nothing a checkpoint must keep.
    let body = vec![b'x'; 8 * 1024];
    let mut client_id = 0;
    let refused = loop {
        client_id += 1;
        assert!(client_id < 500, "never refused");
        send(&mut alice, client_id, bob_phone, &body);
        match next_answer(&mut alice) {
            Event::Sent { client_id: c, .. } => {
                assert_eq!(c, client_id);
                let seq = receive(&mut bob, client_id);
                bob.send(&ClientFrame::Ack { up_to: seq }).unwrap();
            }
            Event::Error { kind, detail, .. } => {
                assert_eq!(kind, ErrorKind::DiskFull, "{detail}");
                break client_id;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    // The filler stays: the checkpoint makes the room.
    send_until_sent(&mut alice, refused, bob_phone, Duration::from_secs(15));
    receive(&mut bob, refused);
    let lines: Vec<String> = server.stderr.try_iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("segments deleted")),
        "no checkpoint: {lines:#?}"
    );
}
