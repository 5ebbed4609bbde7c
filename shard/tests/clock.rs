//! Clock steps never delete messages (README, "Expiry"): a step forward,
//! during a run or across a restart, holds expiry until the clock is
//! trusted, and what was queued before it then counts its age from the
//! step.

mod common;

use common::*;

const START: u64 = 1_800_000_000_000;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;
const SETTLE_MS: u64 = 60_000;

fn net() -> Net {
    Net::new(2, |c| {
        c.wall_clock_offset_ms = START;
        c.message_retention_ms = DAY_MS;
        c.clock_settle_ms = SETTLE_MS;
    })
}

/// `ms` pass in ticks of 10 s, the system clock reading `wall(now_ms)`.
fn pass(net: &mut Net, ms: u64, wall: impl Fn(u64) -> u64) {
    let end = net.now_ms + ms;
    while net.now_ms < end {
        net.now_ms += 10_000;
        let now = net.now_ms;
        for shard in &mut net.shards {
            shard.observe_wall_clock(wall(now), now);
            shard.tick(now);
        }
        net.settle();
    }
}

/// Messages expired so far, over all shards (each sends its sender an
/// `Expired` receipt).
fn expired(net: &Net) -> u64 {
    net.shards
        .iter()
        .map(|s| s.counters().messages_expired)
        .sum()
}

fn messages(got: &[Got]) -> usize {
    got.iter()
        .filter(|g| matches!(g, Got::Message { .. }))
        .count()
}

/// Bob is away with three messages from Alice waiting.
fn three_waiting(net: &mut Net) -> (Phone, DeviceKey) {
    let (alice, alice_key, bob, bob_key) = signed_up_pair(net);
    let (mut a, _) = net.login(alice, alice_key);
    for client_id in 1..=3 {
        net.message(&mut a, bob, client_id, b"waiting");
    }
    (bob, bob_key)
}

#[test]
fn a_step_forward_during_a_run_expires_nothing_at_once() {
    let mut net = net();
    let (bob, bob_key) = three_waiting(&mut net);
    pass(&mut net, 60 * 60_000, |now| START + now);
    // A month forward, then steady.
    pass(&mut net, 5 * 60_000, |now| START + now + 31 * DAY_MS);
    assert_eq!(expired(&net), 0, "a step deleted messages");
    assert!(!net.shards[0].clock_in_doubt(), "trusted once steady");
    // Their age counts from the step: a retention later they expire, and
    // their sender is told.
    pass(&mut net, DAY_MS, |now| START + now + 31 * DAY_MS);
    assert_eq!(expired(&net), 3);
    let (_, got) = net.login(bob, bob_key);
    assert_eq!(messages(&got), 0);
}

#[test]
fn a_clock_that_keeps_jumping_holds_expiry() {
    let mut net = net();
    let (bob, bob_key) = three_waiting(&mut net);
    pass(&mut net, 60_000, |now| START + now);
    // A clock jumping between two readings a month apart is never trusted.
    pass(&mut net, 2 * DAY_MS, |now| {
        START + now + (now / 30_000 % 2) * 31 * DAY_MS
    });
    assert_eq!(expired(&net), 0);
    assert!(net.shards[1].clock_in_doubt());
    let (_, got) = net.login(bob, bob_key);
    assert_eq!(messages(&got), 3);
}

#[test]
fn a_restart_with_the_clock_a_month_ahead_expires_nothing_at_once() {
    let mut net = net();
    let (bob, bob_key) = three_waiting(&mut net);
    // Long enough for the latest wall time to be recorded.
    pass(&mut net, 2 * 60_000, |now| START + now);
    net.restart_with(|c| c.wall_clock_offset_ms = START + 31 * DAY_MS);
    assert!(net.shards[0].clock_in_doubt());
    assert!(matches!(
        net.shards[0].take_clock_note(),
        Some(ClockNote::InDoubt { at_start: true, .. })
    ));
    pass(&mut net, 10 * 60_000, |now| START + 31 * DAY_MS + now);
    assert!(!net.shards[0].clock_in_doubt());
    let (_, got) = net.login(bob, bob_key);
    assert_eq!(messages(&got), 3, "a clock step deleted messages: {got:?}");
    assert_eq!(expired(&net), 0);
}

#[test]
fn an_operator_who_confirms_the_clock_has_ages_counted_by_it() {
    let mut net = net();
    let (bob, bob_key) = three_waiting(&mut net);
    pass(&mut net, 2 * 60_000, |now| START + now);
    net.restart_with(|c| {
        c.wall_clock_offset_ms = START + 31 * DAY_MS;
        c.clock_confirmed = true;
    });
    assert!(!net.shards[0].clock_in_doubt());
    pass(&mut net, 2 * 60_000, |now| START + 31 * DAY_MS + now);
    let (_, got) = net.login(bob, bob_key);
    assert_eq!(messages(&got), 0, "the month away counted");
    assert_eq!(expired(&net), 3);
}

#[test]
fn a_restart_a_few_hours_later_counts_the_downtime() {
    let mut net = net();
    let (bob, bob_key) = three_waiting(&mut net);
    pass(&mut net, 2 * 60_000, |now| START + now);
    // Down for 20 hours, within `clock_jump_max_ms`; 5 more hours after.
    net.restart_with(|c| c.wall_clock_offset_ms = START + 20 * 60 * 60_000);
    assert!(!net.shards[0].clock_in_doubt());
    pass(&mut net, 5 * 60 * 60_000, |now| {
        START + 20 * 60 * 60_000 + now
    });
    let (_, got) = net.login(bob, bob_key);
    assert_eq!(messages(&got), 0, "a day old after the downtime");
}
