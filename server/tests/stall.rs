//! The cross-shard stall hunt: many fresh two-shard servers, each asked
//! cross-shard requests right after start while two threads keep both
//! cores busy, timing every answer.
//!
//! The shard's tick wakes its executor every `tick_ms` and so heals any
//! wake-up glommio loses; here the tick is stretched to 10 s, so that
//! only the peer queues' own wake-ups (and their backstop timer, see
//! `peer_queue.rs`) can deliver a batch in time. Before that backstop,
//! one answer in a few hundred waited for the receiving shard's tick.
//!
//! `ISLE_STALL_ROUNDS` sets the rounds (default 10, for CI);
//! `cargo run -p ci -- stall` runs 400.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::Server;
use loadgen::client::{Client, Event};
use shard::{PartitionMap, PARTITIONS_DEFAULT};
use wire::{ClientFrame, Phone};

/// An answer later than this counts as a stall.
const LATE: Duration = Duration::from_secs(1);

/// Test numbers whose home is shard 0 and shard 1.
fn numbers() -> (String, String) {
    let map = PartitionMap::new(PARTITIONS_DEFAULT, 2);
    let on = |shard| {
        (0..1000)
            .map(|n| format!("+1555000{n:04}"))
            .find(|n| map.shard_of(Phone::parse(n).unwrap()) == shard)
            .unwrap()
    };
    (on(0), on(1))
}

/// Sends `frame` and waits for the answer `is_answer` picks out; returns
/// how long it took.
fn timed(
    client: &mut Client,
    frame: &ClientFrame<'_>,
    is_answer: impl Fn(&Event) -> bool,
) -> Duration {
    let started = Instant::now();
    client.send(frame).unwrap();
    loop {
        let event = client.recv().unwrap_or_else(|e| {
            panic!("no answer to {frame:?} after {:?}: {e}", started.elapsed())
        });
        if is_answer(&event) {
            return started.elapsed();
        }
    }
}

/// Keeps a core busy until `stop` is set.
fn burn(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    })
}

fn sent(wanted: u64) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::Sent { client_id, .. } if *client_id == wanted)
}

/// One fresh server: the first cross-shard requests after start, then a
/// pipelined burst. Returns every answer's time.
fn round(config: &str, a_number: &str, b_number: &str) -> Vec<Duration> {
    let server = Server::start(&["--shards", "2", "--config", config]);
    let (mut a, alice, _) = server.phone(a_number);
    let (mut b, bob, _) = server.phone(b_number);
    let send = |client_id, to, body| ClientFrame::Send {
        client_id,
        to,
        body,
    };
    let sync = ClientFrame::SyncContacts {
        client_id: 2,
        full: true,
        add: vec![bob],
        remove: vec![],
    };
    let create = ClientFrame::CreateGroup {
        client_id: 3,
        subject: "s",
        members: vec![bob],
    };
    let mut times = vec![
        timed(&mut a, &send(1, bob, &b"first"[..]), sent(1)),
        timed(&mut b, &send(1, alice, &b"back"[..]), sent(1)),
        timed(&mut a, &sync, |e| matches!(e, Event::Contacts { .. })),
        timed(&mut a, &ClientFrame::Subscribe { phone: bob }, |e| {
            matches!(e, Event::Presence { .. })
        }),
        timed(&mut a, &create, sent(3)),
    ];
    // Fifty sends written at once, timed to the last answer.
    let started = Instant::now();
    for client_id in 10..60 {
        a.send(&send(client_id, bob, &b"burst"[..])).unwrap();
    }
    loop {
        match a.recv() {
            Ok(Event::Sent { client_id: 59, .. }) => break,
            Ok(_) => {}
            Err(e) => panic!("the burst unanswered after {:?}: {e}", started.elapsed()),
        }
    }
    times.push(started.elapsed());
    times
}

#[test]
fn cross_shard_requests_on_busy_cores_never_wait_for_the_tick() {
    let rounds: usize = std::env::var("ISLE_STALL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("isle.toml");
    std::fs::write(&config, "[limits]\ntick_ms = 10000\n").unwrap();
    let config = config.to_str().unwrap();
    let (a, b) = numbers();
    let stop = Arc::new(AtomicBool::new(false));
    let burners: Vec<_> = (0..2).map(|_| burn(stop.clone())).collect();
    let mut all = Vec::new();
    for _ in 0..rounds {
        all.extend(round(config, &a, &b));
    }
    stop.store(true, Ordering::Relaxed);
    for burner in burners {
        burner.join().unwrap();
    }
    all.sort_unstable();
    let late = all.iter().filter(|&&t| t > LATE).count();
    let (median, max) = (all[all.len() / 2], all[all.len() - 1]);
    eprintln!(
        "stall hunt: {rounds} rounds, {} answers, median {median:?}, max {max:?}, \
         {late} later than {LATE:?}",
        all.len()
    );
    assert_eq!(
        late, 0,
        "answers later than {LATE:?}; the slowest took {max:?}"
    );
}
