//! What a connection's move to its account's shard saves and costs, over
//! blocking sockets against a server with two or more shards:
//!
//! - `sent`: a `Send` answered `Sent` between two phones of one shard, and
//!   between phones of two shards (the message and its answer each cross a
//!   queue between shards). Serving a connection where it lands would add
//!   that crossing to every frame of a phone whose account lives on
//!   another shard.
//! - `login`: connect, `Hello` and `Login` until `LoggedIn`, each phone once
//!   on a new connection; with two shards about half of them land on the
//!   other shard and move. Run it against one shard too to compare.
//!
//! ```text
//! cargo run --release -p loadgen --example handover -- 127.0.0.1:5223 2 1000
//! ```
//!
//! Needs a plaintext listener and the test-number range `+1555` with code
//! 111111. Sends are spaced 2 ms apart to stay inside the send rate.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use loadgen::client::{quantile_us, Client, Event};
use shard::{PartitionMap, PARTITIONS_DEFAULT};
use wire::{ClientFrame, DeviceKey, Phone};

const CODE: u32 = 111_111;
const ROUND_GAP: Duration = Duration::from_millis(2);
/// The test numbers this example signs up start here.
const FIRST_NUMBER: u64 = 15_558_000_000;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:5223".into())
        .parse()
        .context("address")?;
    let shards: u16 = args.next().map_or(Ok(2), |t| t.parse()).context("shards")?;
    let rounds: usize = args
        .next()
        .map_or(Ok(1000), |t| t.parse())
        .context("rounds")?;
    let map = PartitionMap::new(PARTITIONS_DEFAULT, shards);
    let salt = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() % 90 * 10_000;
    let numbers = (FIRST_NUMBER + salt..).map(Phone::from_u64);

    let mut phones: Vec<(Phone, DeviceKey)> = Vec::with_capacity(rounds + 3);
    let mut signup = Client::connect(addr)?;
    for phone in numbers.take(rounds + 3) {
        let phone = phone?;
        let key = signup.sign_up(phone, || Ok(CODE))?;
        phones.push((phone, key));
        signup = Client::connect(addr)?;
    }
    let (same, cross, probes) = match shards {
        1 => (Vec::new(), Vec::new(), Vec::new()),
        _ => sends(addr, map, &phones, rounds)?,
    };
    let mut logins = Vec::with_capacity(rounds);
    for (phone, key) in phones.iter().filter(|(p, _)| !probes.contains(p)) {
        let start = Instant::now();
        let mut client = Client::connect(addr)?;
        client.login(*phone, *key)?;
        logins.push(start.elapsed());
    }

    println!("shards={shards} rounds={rounds}");
    println!("measure             p50 us   p90 us   p99 us");
    for (name, samples) in [
        ("sent, one shard", same),
        ("sent, two shards", cross),
        ("login", logins),
    ] {
        print_row(name, samples);
    }
    Ok(())
}

/// `Send` to `Sent` times from a phone of shard 0 to one of shard 0 and to
/// one of the last shard, alternated; and the three phones used.
#[allow(clippy::type_complexity)]
fn sends(
    addr: std::net::SocketAddr,
    map: PartitionMap,
    phones: &[(Phone, DeviceKey)],
    rounds: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Vec<Phone>)> {
    let shards = map.shards();
    // A sender on shard 0, one recipient there and one on another shard.
    let on = |shard: u16| {
        phones
            .iter()
            .filter(move |(p, _)| map.shard_of(*p) == shard)
    };
    let mut first = on(0).cloned();
    let (a, a_key) = first.next().context("a phone on shard 0")?;
    let (near, near_key) = first.next().context("a second phone on shard 0")?;
    let far_shard = shards.saturating_sub(1);
    let (far, far_key) = on(far_shard)
        .next()
        .cloned()
        .context("a phone on the last shard")?;
    let mut alice = Client::connect(addr)?;
    alice.login(a, a_key)?;
    let mut receivers = Vec::new();
    for (phone, key) in [(near, near_key), (far, far_key)] {
        let mut client = Client::connect(addr)?;
        client.login(phone, key)?;
        receivers.push(client);
    }

    let base = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as u64;
    let (mut same, mut cross) = (Vec::new(), Vec::new());
    for (round, client_id) in (base..base + rounds as u64).enumerate() {
        std::thread::sleep(ROUND_GAP);
        let to = if round % 2 == 0 { near } else { far };
        let start = Instant::now();
        let body = b"handover probe";
        alice.send(&ClientFrame::Send {
            client_id,
            to,
            body,
        })?;
        alice.recv_until(|e| matches!(e, Event::Sent { .. }).then_some(()))?;
        match round % 2 {
            0 => same.push(start.elapsed()),
            _ => cross.push(start.elapsed()),
        }
    }

    Ok((same, cross, vec![a, near, far]))
}

fn print_row(name: &str, mut samples: Vec<Duration>) {
    if samples.is_empty() {
        return;
    }
    samples.sort();
    let at = |q: f64| quantile_us(&samples, q);
    println!(
        "{name:<18} {:>8.1} {:>8.1} {:>8.1}",
        at(0.5),
        at(0.9),
        at(0.99)
    );
}
