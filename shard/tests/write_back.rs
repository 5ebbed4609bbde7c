//! The write-back cache may leave entries unwritten (acknowledged before
//! they were due), but never what must outlive them: a mailbox's seqs and
//! the client ids a resend is recognised by. Checked as an invariant: after
//! any mix of sends and acks, a clean stop (or a crash once the cache has
//! drained) replays to the same state.

mod common;

use common::*;

fn next(state: &mut u64, below: u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % below.max(1)
}

/// The shards' state, as their checkpoints say it, order aside.
fn state(net: &mut Net) -> Vec<Vec<String>> {
    net.shards
        .iter_mut()
        .map(|shard| {
            let mut lines: Vec<String> = shard
                .checkpoint()
                .iter()
                .map(|r| format!("{r:?}"))
                .collect();
            lines.sort();
            lines
        })
        .collect()
}

/// Four phones on two shards send and acknowledge at random within and
/// past the cache's delay.
fn random_traffic(seed: u64, clean_stop: bool) {
    let mut rng = seed * 2 + 0x9e37_79b9_7f4a_7c15;
    let delay = 2_000;
    let mut net = Net::new(2, |c| {
        c.sync_delay_ms = delay;
        c.unacked_messages_max = 10_000;
    });
    let numbers = [
        "+15550000001",
        "+15550000002",
        "+15550000003",
        "+15550000004",
    ];
    let mut phones: Vec<(Phone, Phone_, u64)> = numbers
        .iter()
        .map(|n| {
            let (phone, key) = net.signup(n);
            let (conn, _) = net.login(phone, key);
            (phone, conn, 0)
        })
        .collect();
    let mut client_id = 0;
    for _ in 0..200 {
        let p = next(&mut rng, 4) as usize;
        match next(&mut rng, 10) {
            0..=5 => {
                let to = phones[(p + 1 + next(&mut rng, 3) as usize) % 4].0;
                client_id += 1;
                // Now and then a resend of an earlier message.
                let id = if client_id > 3 && next(&mut rng, 5) == 0 {
                    client_id - 1 - next(&mut rng, 3)
                } else {
                    client_id
                };
                let mut conn = phones[p].1;
                net.message(&mut conn, to, id, b"x");
                net.read(&conn);
            }
            6..=8 => {
                let mut conn = phones[p].1;
                let got = net.read(&conn);
                let top = got.iter().fold(phones[p].2, |top, g| match g {
                    Got::Message { seq, .. } | Got::Receipt { seq, .. } => top.max(*seq),
                    _ => top,
                });
                phones[p].2 = top;
                if top > 0 {
                    let up_to = top - next(&mut rng, 2).min(top - 1);
                    net.send(&mut conn, ClientFrame::Ack { up_to });
                }
            }
            _ => net.advance(next(&mut rng, delay * 2)),
        }
    }
    if clean_stop {
        for shard in &mut net.shards {
            shard.close_all();
        }
        net.settle();
    } else {
        // A crash once everything cached is due: nothing may be lost.
        net.advance(delay + 1);
    }
    let before = state(&mut net);
    net.restart();
    let after = state(&mut net);
    assert_eq!(before, after, "seed {seed}, clean stop {clean_stop}");
}

#[test]
fn a_clean_stop_replays_to_the_same_seqs_and_resend_detection() {
    for seed in 0..40 {
        random_traffic(seed, true);
    }
}

#[test]
fn a_crash_after_the_cache_drained_replays_to_the_same_state() {
    for seed in 0..40 {
        random_traffic(seed, false);
    }
}

#[test]
fn a_resend_of_a_message_acked_in_the_cache_is_recognised_after_a_stop() {
    // The case: Sent{1}, acked within the delay, a clean stop.
    let mut net = Net::new(2, |c| c.sync_delay_ms = 2_000);
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    net.message(&mut alice_conn, bob, 1, b"first");
    assert_eq!(
        net.read(&alice_conn),
        vec![Got::Sent {
            client_id: 1,
            id: 1
        }]
    );
    net.read(&bob_conn);
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 1 });
    for shard in &mut net.shards {
        shard.close_all();
    }
    net.settle();
    net.restart();
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (bob_conn, _) = net.login(bob, bob_key);
    net.message(&mut alice_conn, bob, 2, b"second");
    net.message(&mut alice_conn, bob, 1, b"first, again");
    let got = net.read(&alice_conn);
    assert_eq!(
        got,
        vec![
            Got::Sent {
                client_id: 2,
                id: 2
            },
            Got::Sent {
                client_id: 1,
                id: 1
            },
        ],
        "seqs continue and the resend is recognised"
    );
    let delivered: Vec<u64> = net
        .read(&bob_conn)
        .iter()
        .filter_map(|g| match g {
            Got::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![2]);
}
