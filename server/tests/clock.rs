//! Clock steps on the real binary, through libfaketime (`LD_PRELOAD`): the
//! process sees the wall clock stepped while its monotonic clock runs true.
//! A step never deletes a queued message; stamps follow the wall clock
//! once it is trusted.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::Server;
use loadgen::client::{Client, Event};
use wire::{ClientFrame, Phone};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// libfaketime, from Debian's `libfaketime` (the `ci` command installs it).
fn libfaketime() -> PathBuf {
    let path = PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
    assert!(
        path.exists(),
        "{} is missing: apt-get install faketime",
        path.display()
    );
    path
}

/// Runs the server with its wall clock offset by what `offset_file`
/// holds (`+0`, `+31d`, ...), read again every second.
fn faked(offset_file: &Path) -> impl FnOnce(&mut Command) + '_ {
    move |command: &mut Command| {
        command
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME_TIMESTAMP_FILE", offset_file)
            .env("FAKETIME_CACHE_DURATION", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Alice sends Bob, who is away, `count` messages.
fn queue(server: &Server, bob: Phone, count: u64) -> Client {
    let (mut alice, _, _) = server.phone("+15550004001");
    for client_id in 1..=count {
        alice
            .send(&ClientFrame::Send {
                client_id,
                to: bob,
                body: b"waiting",
            })
            .unwrap();
        assert!(matches!(alice.recv().unwrap(), Event::Sent { .. }));
    }
    alice
}

/// Bob's messages after logging in, as `(client_id, sent_at_ms)`.
fn messages(server: &Server, bob: Phone, key: wire::DeviceKey, count: usize) -> Vec<(u64, u64)> {
    let mut client = server.connect();
    client.set_timeout(Duration::from_secs(5)).unwrap();
    client.login(bob, key).unwrap();
    let mut got = Vec::new();
    while got.len() < count {
        match client.recv() {
            Ok(Event::Message {
                client_id,
                sent_at_ms,
                ..
            }) => got.push((client_id, sent_at_ms)),
            Ok(_) => {}
            Err(error) => panic!("after {} messages: {error}", got.len()),
        }
    }
    got
}

fn config(dir: &Path, settle_ms: u64) -> String {
    let path = dir.join("isle.toml");
    std::fs::write(&path, format!("[clock]\nsettle_ms = {settle_ms}\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_restart_with_the_clock_a_month_ahead_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let config = config(dir.path(), 600_000);
    let extra = ["--config", config.as_str()];
    let server = Server::start_with(tempfile::tempdir().unwrap(), &extra, faked(&offset));
    let (bob, bob_key) = {
        let (_, bob, key) = server.phone("+15550004002");
        (bob, key)
    };
    drop(queue(&server, bob, 3));
    // The first tick records the latest wall time; a clean stop keeps it.
    std::thread::sleep(Duration::from_millis(500));
    let (_, data) = server.stop_keeping_data();

    std::fs::write(&offset, "+31d\n").unwrap();
    let server = Server::start_with(data, &extra, faked(&offset));
    // Sweeps come every minute at the default retention, the first at once.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(messages(&server, bob, bob_key, 3).len(), 3);
    let lines: Vec<String> = server.stderr.try_iter().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ahead of the time the log last recorded")),
        "the operator was not told: {lines:#?}"
    );
}

#[test]
fn a_step_during_a_run_deletes_nothing_and_stamps_follow_once_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let config = config(dir.path(), 2_000);
    let extra = ["--config", config.as_str()];
    let server = Server::start_with(tempfile::tempdir().unwrap(), &extra, faked(&offset));
    let (bob, bob_key) = {
        let (_, bob, key) = server.phone("+15550004002");
        (bob, key)
    };
    let mut alice = queue(&server, bob, 3);

    // A month forward; trusted once it has kept step for 2 s.
    std::fs::write(&offset, "+31d\n").unwrap();
    std::thread::sleep(Duration::from_secs(5));
    alice
        .send(&ClientFrame::Send {
            client_id: 4,
            to: bob,
            body: b"after the step",
        })
        .unwrap();
    assert!(matches!(alice.recv().unwrap(), Event::Sent { .. }));
    let got = messages(&server, bob, bob_key, 4);
    let now = unix_ms();
    for &(client_id, sent_at_ms) in &got[..3] {
        assert!(
            sent_at_ms.abs_diff(now) < 60_000,
            "message {client_id} stamped {sent_at_ms}, now {now}"
        );
    }
    let (_, stamp) = got[3];
    assert!(
        stamp.abs_diff(now + 31 * DAY_MS) < 60_000,
        "the stamp did not follow the clock: {stamp}, expected about {}",
        now + 31 * DAY_MS
    );
    let lines: Vec<String> = server.stderr.try_iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("trusted again")),
        "{lines:#?}"
    );
}
