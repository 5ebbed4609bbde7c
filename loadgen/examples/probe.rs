//! One message at a time between two phones, over blocking sockets: the
//! server's own latency per hop, with no client scheduler in the way.
//!
//! ```text
//! cargo run --release -p loadgen --example probe -- 127.0.0.1:5223 1000
//! ```
//!
//! Needs a plaintext listener and the test-number range `+1555` with code
//! 111111. Rounds are spaced 2 ms apart to stay inside the per-phone send rate.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use loadgen::client::{quantile_us, Client, Event};
use wire::{ClientFrame, Phone};

const CODE: u32 = 111_111;
const ROUND_GAP: Duration = Duration::from_millis(2);

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:5223".into())
        .parse()
        .context("address")?;
    let rounds: usize = match args.next() {
        Some(text) => text.parse().context("rounds")?,
        None => 1000,
    };

    let a = Phone::from_u64(15_559_000_001)?;
    let b = Phone::from_u64(15_559_000_002)?;
    let mut alice = Client::connect(addr)?;
    let key = alice.sign_up(a, || Ok(CODE))?;
    alice.login(a, key)?;
    let mut bob = Client::connect(addr)?;
    let key = bob.sign_up(b, || Ok(CODE))?;
    bob.login(b, key)?;

    // Client ids new to the server on every run: it (rightly) drops resends.
    let base = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as u64;
    let mut ping = Vec::with_capacity(rounds);
    let mut sent = Vec::with_capacity(rounds);
    let mut message = Vec::with_capacity(rounds);
    let mut receipt = Vec::with_capacity(rounds);
    for client_id in base..base + rounds as u64 {
        std::thread::sleep(ROUND_GAP);
        let start = Instant::now();
        alice.send(&ClientFrame::Ping { nonce: client_id })?;
        alice.recv_until(|e| matches!(e, Event::Pong { .. }).then_some(()))?;
        ping.push(start.elapsed());

        let start = Instant::now();
        alice.send(&ClientFrame::Send {
            client_id,
            to: b,
            body: b"probe",
        })?;
        alice.recv_until(|e| matches!(e, Event::Sent { .. }).then_some(()))?;
        sent.push(start.elapsed());
        let seq = bob.recv_until(|e| match e {
            Event::Message { seq, .. } => Some(*seq),
            _ => None,
        })?;
        message.push(start.elapsed());
        bob.send(&ClientFrame::Ack { up_to: seq })?;
        let seq = alice.recv_until(|e| match e {
            Event::Receipt { seq, .. } => Some(*seq),
            _ => None,
        })?;
        receipt.push(start.elapsed());
        alice.send(&ClientFrame::Ack { up_to: seq })?;
    }

    println!("hop        p50 us   p90 us   p99 us   max us");
    for (name, mut samples) in [
        ("ping", ping),
        ("sent", sent),
        ("message", message),
        ("receipt", receipt),
    ] {
        samples.sort();
        let at = |q: f64| quantile_us(&samples, q);
        println!(
            "{name:<8} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0)
        );
    }
    Ok(())
}
