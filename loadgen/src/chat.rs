//! The chat workload: many phones sending 1:1 messages to random peers.
//!
//! Phones are spread over one glommio executor per `--threads`. Each signs up
//! through the server's test-number range, logs in, then chats: in open loop
//! (`--rate N`) a pacer issues sends at fixed intended times and latency is
//! measured from the intended time, so a stalled server cannot hide its stall
//! (coordinated omission); with `--rate 0` each phone keeps `--window` sends
//! outstanding, as fast as the server answers.
//!
//! A phone whose connection ends reconnects with exponential backoff, logs in
//! with the key it was given, and writes again every send that has had no
//! answer, under the same client id (the server recognises a resend). So a
//! run may span a server crash and restart, and its `lost` count is the
//! crash test: a message is lost when its sender was told `Sent` and its
//! recipient never received it by the end of the run.
//!
//! Phones follow the order rule (README, "Order across refusals"): a send
//! refused with a retryable error (rate limit, full mailbox, full disk)
//! stays in flight, and after [`RETRY_MS`] the phone writes again every
//! send refused meanwhile, in the order first written; new sends to a
//! conversation with a refused one waiting join that retry instead of
//! going out ahead of it. The server holds later sends of each such
//! conversation back (`OutOfOrder`, retryable too) meanwhile. Only final
//! refusals count as `rejected`. In a cluster, `Unavailable` (the
//! recipient's server is down) is one more retryable refusal.
//!
//! `--target` may name several nodes of a cluster; `dial` takes each
//! phone to its home node (redirects, try-laters). How long a node's
//! failure stalls the phones shows in `answer_gap_ms_max`: the longest
//! any phone waited, with sends outstanding, between two answers. Each
//! phone's node is where its login ended, so a delivery is known as
//! same-node (sender and recipient on one node) or cross-node, and the
//! latency of each kind is reported apart; `--latency-nodes` keeps the
//! latency figures to messages between phones of some nodes only (those
//! of a node that is stopped on purpose left out, say).

mod pacer;
mod phone;
mod read;
mod report;
mod thread;
mod write;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use clap::Parser;

pub use phone::RETRY_MS;
pub use report::Report;

use crate::window::{wait_until, Threads, SETUP_WAIT_MAX};
use thread::run_thread;

#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(name = "loadgen", about = "Drive phones against an isle server")]
pub struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    pub connect: crate::dial::ConnectArgs,
    /// Phones to simulate.
    #[arg(long, default_value_t = 1000)]
    pub phones: usize,
    /// Total sends per second over all phones; 0 means as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Sends each phone keeps outstanding when --rate is 0.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Seconds of sending, warm-up included.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds at the start excluded from latency and throughput.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Longest wait, after sending stops, for every acknowledged message.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Message body size (at least 8: the intended send time rides in it).
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Print the result as one JSON object on the last line: every figure
    /// of the summary, among them (for a cluster) redirects, try_laters,
    /// redirect_loops_cut, answer_timeouts, unavailable (sends refused
    /// because their recipient's server was down, written again later)
    /// and answer_gap_ms_max (the longest any phone waited, with sends
    /// outstanding, between two answers).
    #[arg(long)]
    pub json: bool,
    /// Seconds a phone keeps trying to make its first connection (the
    /// server may still be starting).
    #[arg(long, default_value_t = 30.0)]
    pub connect_patience: f64,
    /// Phones per second (over all threads) that hang up and stay offline
    /// for `--offline-ms`, so messages queue for them meanwhile.
    #[arg(long, default_value_t = 0.0)]
    pub churn_per_s: f64,
    #[arg(long, default_value_t = 2000)]
    pub offline_ms: u64,
    /// Share of phones (0..1) that stop reading from their connection
    /// while sending lasts, and send nothing: messages queue for them on
    /// the server. They read again once sending stops, so nothing sent to
    /// them counts as lost; the latency figures leave them out.
    #[arg(long, default_value_t = 0.0)]
    pub stalled_share: f64,
    /// The server's process id: its CPU time over the measured window and
    /// its memory when sending stops go into the report. Several, comma
    /// separated (the nodes of a cluster): their sums.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Write the report (JSON, latency and throughput charts) into this
    /// directory.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
    /// Servers (comma separated, as in --target): only messages whose
    /// sender and recipient are both logged in at one of them count in
    /// the latency figures. The others are sent, delivered and checked
    /// all the same. By default every message counts.
    #[arg(long, value_delimiter = ',')]
    pub latency_nodes: Vec<std::net::SocketAddr>,
}

/// Counters shared by all threads.
#[derive(Default)]
struct Shared {
    /// Per phone, the server it is logged in at: an index into `servers`
    /// plus one (0 before its first login).
    homes: Vec<AtomicU8>,
    /// The servers phones have logged in at, the --target list first.
    servers: Mutex<Vec<std::net::SocketAddr>>,
    logged_in: AtomicUsize,
    connect_failures: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    delivered_to_stalled: AtomicU64,
    duplicates: AtomicU64,
    reordered: AtomicU64,
    receipts: AtomicU64,
    errors: AtomicU64,
    /// Sends the server refused with a final error (never stored, never
    /// delivered).
    rejected: AtomicU64,
    /// Sends refused with a retryable error (so written again later), and
    /// those refused for waiting on one (`OutOfOrder`).
    refused_retryable: AtomicU64,
    out_of_order: AtomicU64,
    /// Among those, refusals because the recipient's server was down
    /// (`Unavailable`, in a cluster).
    unavailable: AtomicU64,
    disconnects: AtomicU64,
    /// Connections made again after one ended, and sends written again on
    /// them because their first copy had no answer.
    reconnects: AtomicU64,
    resent: AtomicU64,
    /// Connections the phones closed themselves (`--churn-per-s`).
    hangups: AtomicU64,
    stop_sending: AtomicBool,
    finished: AtomicBool,
}

impl Shared {
    /// The number `homes` holds for `server`, registered on first sight;
    /// [`UNKNOWN_SERVER`] past 254 servers (too many to tell apart).
    fn server_number(&self, server: std::net::SocketAddr) -> u8 {
        let mut servers = self.servers.lock().expect("no thread panics holding it");
        let index = match servers.iter().position(|&known| known == server) {
            Some(index) => index,
            None => {
                servers.push(server);
                servers.len() - 1
            }
        };
        u8::try_from(index + 1)
            .ok()
            .filter(|&number| number != UNKNOWN_SERVER)
            .unwrap_or(UNKNOWN_SERVER)
    }
}

/// A `homes` entry that names no server a delivery can be judged by.
const UNKNOWN_SERVER: u8 = u8::MAX;

impl Shared {
    /// The server phone `index` is logged in at, if known.
    fn home(&self, index: usize) -> Option<u8> {
        let number = self.homes.get(index)?.load(Relaxed);
        (number != 0 && number != UNKNOWN_SERVER).then_some(number)
    }
}

/// Runs the workload to its end and reports; `Err` only when the run could
/// not be carried out at all.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    if args.body_bytes < 8 || args.body_bytes > wire::BODY_BYTES_MAX {
        bail!("--body-bytes must be 8..={}", wire::BODY_BYTES_MAX);
    }
    if !(0.0..1.0).contains(&args.stalled_share) {
        bail!("--stalled-share must be at least 0 and below 1");
    }
    let first = args.connect.first(args.phones)?;
    let dialer = args.connect.dialer()?;
    let dial_counts = dialer.counts.clone();
    let shared = Arc::new(Shared {
        homes: (0..args.phones).map(|_| AtomicU8::new(0)).collect(),
        servers: Mutex::new(args.connect.target.addrs.clone()),
        ..Shared::default()
    });
    let epoch = Instant::now();

    let threads = args.connect.threads();
    let failed = Arc::new(AtomicBool::new(false));
    let run = {
        let (args, shared) = (args.clone(), shared.clone());
        move |thread: usize| {
            let range = args.phones * thread / threads..args.phones * (thread + 1) / threads;
            let (args, shared, dialer) = (args.clone(), shared.clone(), dialer.clone());
            run_thread(args, first, range, threads, shared, epoch, dialer)
        }
    };
    let handles = Threads::spawn(&args.connect, "loadgen", threads, failed.clone(), run)?;

    // Progress, and the phases' timing, from the main thread.
    let login_started = Instant::now();
    wait_until("logins", SETUP_WAIT_MAX, &failed, || {
        let failures = shared.connect_failures.load(Relaxed) as usize;
        shared.logged_in.load(Relaxed) + failures >= args.phones
    })?;
    let login_s = login_started.elapsed().as_secs_f64();
    eprintln!(
        "{} phones logged in in {login_s:.2} s",
        shared.logged_in.load(Relaxed)
    );
    let sending = send(args, &shared)?;
    shared.stop_sending.store(true, Relaxed);
    drain(args, &shared);
    shared.finished.store(true, Relaxed);
    let results = handles.join()?;
    let dialed = dial_counts.read();
    Report::new(args, &shared, threads, login_s, sending, dialed, &results)
}

/// What the main thread measured while the phones sent.
struct Sending {
    /// Sends and deliveries of every second.
    timeline: Vec<crate::report::Tick>,
    /// The server's CPU seconds from the end of warm-up until sending
    /// stopped, and its resident memory then (with `--server-pid`).
    server_cpu_s: Option<f64>,
    server_rss_bytes: Option<u64>,
}

/// The main thread's part while the phones send: a line of progress and a
/// tick of the timeline each second, and the server's CPU time at the end
/// of warm-up and when sending stops.
fn send(args: &Args, shared: &Shared) -> anyhow::Result<Sending> {
    let counts = || [shared.sent.load(Relaxed), shared.delivered.load(Relaxed)];
    let mut timeline = crate::report::Timeline::start(counts());
    let server_cpu = || crate::process::sum_over(&args.server_pid, crate::process::cpu_seconds);
    let (warmup_end, end) = (
        Duration::from_secs_f64(args.warmup),
        Duration::from_secs_f64(args.duration),
    );
    // The server's CPU time when warm-up ends (`Some(None)`: no pid given).
    let mut cpu_at_warmup_end = None;
    loop {
        let elapsed = timeline.elapsed();
        if elapsed >= end {
            break;
        }
        if cpu_at_warmup_end.is_none() && elapsed >= warmup_end {
            cpu_at_warmup_end = Some(server_cpu()?);
        }
        let next_tick = timeline.next_due().min(end);
        let wake = match cpu_at_warmup_end {
            None => next_tick.min(warmup_end),
            Some(_) => next_tick,
        };
        std::thread::sleep(wake.saturating_sub(elapsed));
        if timeline.elapsed() < next_tick {
            continue;
        }
        let now = counts();
        let (delivered, rate) = (now[1], timeline.tick(now).delivered_per_s);
        eprintln!(
            "t={:>4.1}s sent={} acked={} delivered={} rate={rate:.0}/s errors={} reconnects={}",
            timeline.elapsed().as_secs_f64(),
            shared.sent.load(Relaxed),
            shared.acked.load(Relaxed),
            delivered,
            shared.errors.load(Relaxed),
            shared.reconnects.load(Relaxed),
        );
    }
    let cpu_at_end = server_cpu()?;
    Ok(Sending {
        timeline: timeline.into_ticks(),
        server_cpu_s: match (cpu_at_warmup_end.flatten(), cpu_at_end) {
            (Some(begin), Some(end)) => Some(end - begin),
            _ => None,
        },
        server_rss_bytes: crate::process::sum_over(&args.server_pid, crate::process::rss_bytes)?,
    })
}

/// Waits, up to `--drain` seconds after sending stopped, for every send
/// to settle.
fn drain(args: &Args, shared: &Shared) {
    let drain_started = Instant::now();
    // Deliveries can overtake their `Sent`, so wait for both: every send
    // written, less those refused, delivered and acknowledged.
    let settled = || {
        let (sent, rejected) = (shared.sent.load(Relaxed), shared.rejected.load(Relaxed));
        shared.delivered.load(Relaxed) + rejected >= sent
            && shared.acked.load(Relaxed) + rejected >= sent
    };
    while !settled() && drain_started.elapsed().as_secs_f64() < args.drain {
        std::thread::sleep(Duration::from_millis(20));
    }
}
