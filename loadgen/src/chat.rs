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
//! refusals count as `rejected`.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, VecDeque},
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use ahash::{AHashMap, AHashSet};
use anyhow::bail;
use clap::Parser;
use futures_lite::{
    io::{split, ReadHalf, WriteHalf},
    AsyncReadExt, AsyncWriteExt,
};
use hdrhistogram::Histogram;
use serde::Serialize;
use wire::{encode_client, ClientFrame, DeviceKey, ErrorKind, Phone, ServerFrame};

use crate::connection::{BoxIo, Connection};
use crate::dial::{Backoff, Dialer, Protocol};
use crate::mqtt;
use crate::window::{wait_until, Threads, SETUP_WAIT_MAX};

#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", about = "Drive phones against an isle server")]
pub struct Args {
    #[command(flatten)]
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
    /// Print the result as one JSON object on the last line.
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
    /// its memory when sending stops go into the report.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the report (JSON, latency and throughput charts) into this
    /// directory.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
}

/// Counters shared by all threads.
#[derive(Default)]
struct Shared {
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

/// What a run saw. `sent` counts distinct messages (a resend is not a new
/// one); `delivered` counts distinct messages received, `duplicates` the
/// extra copies (which a phone drops by id); `reordered` the messages that
/// arrived after a later one from the same sender.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub protocol: Protocol,
    pub phones: usize,
    /// Phones that stopped reading (`--stalled-share`), and the messages
    /// they received once they read again.
    pub stalled: usize,
    pub delivered_to_stalled: u64,
    pub threads: usize,
    pub tls: bool,
    pub offered_rate: u64,
    pub duration_s: f64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    /// Messages whose sender got `Sent` and whose recipient never got them.
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub receipts: u64,
    pub errors: u64,
    /// Sends the server refused with a final error.
    pub rejected: u64,
    /// Refusals with a retryable error, each followed by a resend, and
    /// among them those for waiting on an earlier refused send.
    pub refused_retryable: u64,
    pub out_of_order: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub resent: u64,
    pub hangups: u64,
    pub connect_failures: u64,
    pub login_per_s: f64,
    /// Messages received per second between the end of warm-up and the end
    /// of sending (to phones that were not stalled).
    pub delivered_per_s: f64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_p999: f64,
    pub latency_us_max: f64,
    /// How late sends were written against their intended time: loadgen's
    /// own delay, already inside the latency figures. When it is a large
    /// share of them, loadgen (not the server) is the bottleneck.
    pub send_lag_us_p50: f64,
    pub send_lag_us_p99: f64,
    /// With `--server-pid`: the server's CPU seconds in the measured
    /// window, deliveries per such second (per core when the server is
    /// pinned to one), and its resident memory when sending stopped.
    pub server_cpu_s: Option<f64>,
    pub delivered_per_server_cpu_s: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    /// For `--report`: not on the JSON line.
    #[serde(skip)]
    pub curves: crate::report::Curves,
}

/// What one thread hands back at the end.
struct ThreadResult {
    histogram: Histogram<u64>,
    send_lag: Histogram<u64>,
    acked: Vec<u64>,
    delivered: AHashSet<u64>,
    measured_deliveries: u64,
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
    let shared = Arc::new(Shared::default());
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
    let started = Instant::now();
    let mut last = (0u64, 0u64, Instant::now());
    let mut timeline = Vec::new();
    let server_cpu = || args.server_pid.map(crate::process::cpu_seconds).transpose();
    let (warmup_end, end) = (
        Duration::from_secs_f64(args.warmup),
        Duration::from_secs_f64(args.duration),
    );
    // The server's CPU time when warm-up ends (`Some(None)`: no pid given).
    let mut cpu_at_warmup_end = None;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= end {
            break;
        }
        if cpu_at_warmup_end.is_none() && elapsed >= warmup_end {
            cpu_at_warmup_end = Some(server_cpu()?);
        }
        let next_tick = Duration::from_secs(timeline.len() as u64 + 1).min(end);
        let wake = match cpu_at_warmup_end {
            None => next_tick.min(warmup_end),
            Some(_) => next_tick,
        };
        std::thread::sleep(wake.saturating_sub(elapsed));
        if started.elapsed() < next_tick {
            continue;
        }
        let (sent, delivered) = (shared.sent.load(Relaxed), shared.delivered.load(Relaxed));
        let seconds = last.2.elapsed().as_secs_f64();
        let rate = (delivered - last.1) as f64 / seconds;
        timeline.push(crate::report::Tick {
            t_s: started.elapsed().as_secs_f64(),
            sent_per_s: (sent - last.0) as f64 / seconds,
            delivered_per_s: rate,
        });
        last = (sent, delivered, Instant::now());
        eprintln!(
            "t={:>4.1}s sent={} acked={} delivered={} rate={rate:.0}/s errors={} reconnects={}",
            started.elapsed().as_secs_f64(),
            shared.sent.load(Relaxed),
            shared.acked.load(Relaxed),
            delivered,
            shared.errors.load(Relaxed),
            shared.reconnects.load(Relaxed),
        );
    }
    let cpu_at_end = server_cpu()?;
    let server_rss_bytes = args.server_pid.map(crate::process::rss_bytes).transpose()?;
    shared.stop_sending.store(true, Relaxed);
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
    shared.finished.store(true, Relaxed);
    let results = handles.join()?;

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut send_lag = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut delivered = AHashSet::new();
    let mut measured = 0;
    for result in &results {
        histogram.add(&result.histogram)?;
        send_lag.add(&result.send_lag)?;
        delivered.extend(result.delivered.iter().copied());
        measured += result.measured_deliveries;
    }
    let acked: Vec<u64> = results
        .iter()
        .flat_map(|r| r.acked.iter().copied())
        .collect();
    let lost = acked.iter().filter(|key| !delivered.contains(key)).count() as u64;
    let measured_s = (args.duration - args.warmup).max(0.001);
    let micros = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let server_cpu_s = match (cpu_at_warmup_end.flatten(), cpu_at_end) {
        (Some(begin), Some(end)) => Some(end - begin),
        _ => None,
    };
    let report = Report {
        scenario: "chat",
        protocol: args.connect.target.protocol,
        phones: args.phones,
        stalled: (0..args.phones)
            .filter(|&i| stalled(i, args.stalled_share))
            .count(),
        delivered_to_stalled: shared.delivered_to_stalled.load(Relaxed),
        threads,
        tls: args.connect.tls,
        offered_rate: args.rate,
        duration_s: args.duration,
        sent: shared.sent.load(Relaxed),
        acked: acked.len() as u64,
        delivered: delivered.len() as u64,
        lost,
        duplicates: shared.duplicates.load(Relaxed),
        reordered: shared.reordered.load(Relaxed),
        receipts: shared.receipts.load(Relaxed),
        errors: shared.errors.load(Relaxed),
        rejected: shared.rejected.load(Relaxed),
        refused_retryable: shared.refused_retryable.load(Relaxed),
        out_of_order: shared.out_of_order.load(Relaxed),
        disconnects: shared.disconnects.load(Relaxed),
        reconnects: shared.reconnects.load(Relaxed),
        resent: shared.resent.load(Relaxed),
        hangups: shared.hangups.load(Relaxed),
        connect_failures: shared.connect_failures.load(Relaxed),
        login_per_s: args.phones as f64 / login_s,
        delivered_per_s: measured as f64 / measured_s,
        latency_us_p50: micros(0.5),
        latency_us_p99: micros(0.99),
        latency_us_p999: micros(0.999),
        latency_us_max: histogram.max() as f64 / 1000.0,
        send_lag_us_p50: send_lag.value_at_quantile(0.5) as f64 / 1000.0,
        send_lag_us_p99: send_lag.value_at_quantile(0.99) as f64 / 1000.0,
        server_cpu_s,
        delivered_per_server_cpu_s: server_cpu_s.map(|cpu| measured as f64 / cpu.max(1e-9)),
        server_rss_bytes,
        curves: crate::report::Curves::new("message latency", timeline, &histogram),
    };
    Ok(report)
}

impl Report {
    /// Why the run failed, one line each; empty when it did not. A run
    /// fails when an acknowledged message was lost, when a phone could
    /// not connect or log in (a wrong `--ca`, no server), or when nothing
    /// was sent at all: figures from such a run measure nothing.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.lost > 0 {
            failures.push(format!(
                "{} acknowledged messages were never delivered",
                self.lost
            ));
        }
        if self.connect_failures > 0 {
            failures.push(format!(
                "{} of {} phones could not connect or log in (see the first errors above)",
                self.connect_failures, self.phones
            ));
        }
        if self.sent == 0 && self.duration_s > 0.0 {
            failures.push("no message was sent".into());
        }
        failures
    }

    pub fn print_summary(&self) {
        let r = self;
        println!(
        "protocol={:?} phones={} threads={} tls={} rate={} duration={}s\n\
         sent={} acked={} delivered={} lost={} duplicates={} reordered={} receipts={} errors={} rejected={}\n\
         refused_retryable={} out_of_order={} disconnects={} reconnects={} resent={} hangups={}\n\
         logins/s={:.0} delivered/s={:.0} latency_us p50={:.1} p99={:.1} p99.9={:.1} max={:.1}\n\
         send_lag_us p50={:.1} p99={:.1}{}",
        r.protocol,
        r.phones,
        r.threads,
        r.tls,
        if r.offered_rate == 0 { "max".to_string() } else { r.offered_rate.to_string() },
        r.duration_s,
        r.sent,
        r.acked,
        r.delivered,
        r.lost,
        r.duplicates,
        r.reordered,
        r.receipts,
        r.errors,
        r.rejected,
        r.refused_retryable,
        r.out_of_order,
        r.disconnects,
        r.reconnects,
        r.resent,
        r.hangups,
        r.login_per_s,
        r.delivered_per_s,
        r.latency_us_p50,
        r.latency_us_p99,
        r.latency_us_p999,
        r.latency_us_max,
        r.send_lag_us_p50,
        r.send_lag_us_p99,
        match (r.server_cpu_s, r.delivered_per_server_cpu_s, r.server_rss_bytes) {
            (Some(cpu), Some(per_cpu), Some(rss)) => format!(
                "\nserver: cpu_s={cpu:.2} delivered_per_cpu_s={per_cpu:.0} rss_mib={:.1}",
                rss as f64 / 1048576.0
            ),
            _ => String::new(),
        },
    );
    }
}

/// One simulated phone: what outlives any one of its connections.
struct PhoneState {
    index: u32,
    number: Phone,
    /// Reads nothing and sends nothing until sending stops.
    stalled: bool,
    /// The device key sign-up gave, to log in again after a reconnect.
    key: Cell<Option<DeviceKey>>,
    /// Intended send times (ns since the epoch) of sends not yet written.
    queue: RefCell<VecDeque<u64>>,
    /// Highest mailbox seq received and not yet acknowledged.
    ack_up_to: Cell<u64>,
    /// MQTT: packet ids of messages received and not yet acknowledged.
    pubacks: RefCell<Vec<u16>>,
    waker: RefCell<Option<std::task::Waker>>,
    next_client_id: Cell<u64>,
    /// Sends written and not yet answered, by client id: a new connection
    /// writes them again in the order they were first written.
    in_flight: RefCell<BTreeMap<u64, InFlight>>,
    /// Set for each new connection, until its writer has resent `in_flight`.
    resend: Cell<bool>,
    /// Sends refused with a retryable error, to write again in this order
    /// once `retry_due` is set (a timer sets it [`RETRY_MS`] after the
    /// first of them).
    refused: RefCell<std::collections::BTreeSet<u64>>,
    retry_due: Cell<bool>,
    /// Set to make the phone hang up; it stays away until `offline_until_ns`.
    hang_up: Cell<bool>,
    offline_until_ns: Cell<u64>,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    intended_ns: u64,
    to: Phone,
}

impl PhoneState {
    fn new(index: u32, number: Phone, stalled: bool) -> PhoneState {
        PhoneState {
            index,
            number,
            stalled,
            key: Cell::new(None),
            queue: RefCell::new(VecDeque::new()),
            ack_up_to: Cell::new(0),
            pubacks: RefCell::new(Vec::new()),
            waker: RefCell::new(None),
            next_client_id: Cell::new(1),
            in_flight: RefCell::new(BTreeMap::new()),
            resend: Cell::new(false),
            refused: RefCell::new(std::collections::BTreeSet::new()),
            retry_due: Cell::new(false),
            hang_up: Cell::new(false),
            offline_until_ns: Cell::new(0),
        }
    }

    /// Whether a refused send to `to` waits to be written again.
    fn refused_to(&self, to: Phone) -> bool {
        let in_flight = self.in_flight.borrow();
        self.refused
            .borrow()
            .iter()
            .any(|id| in_flight.get(id).is_some_and(|sent| sent.to == to))
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

struct Thread {
    args: Args,
    first: u64,
    shared: Arc<Shared>,
    epoch: Instant,
    dialer: Dialer,
    /// Deliveries of sends intended before this are not measured.
    warmup_end_ns: Cell<u64>,
    /// Deliveries received from warm-up's end until this count towards
    /// throughput; those that arrive later (draining a backlog) do not.
    sending_end_ns: Cell<u64>,
    histogram: RefCell<Histogram<u64>>,
    send_lag: RefCell<Histogram<u64>>,
    acked: RefCell<Vec<u64>>,
    delivered: RefCell<AHashSet<u64>>,
    last_from: RefCell<AHashMap<(u32, u32), u64>>,
    measured: Cell<u64>,
    rng: Cell<u64>,
    /// Stalled phones' readers, woken once when sending stops.
    stalled_readers: RefCell<Vec<std::task::Waker>>,
}

impl Thread {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn random(&self, bound: u64) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x % bound
    }
}

async fn run_thread(
    args: Args,
    first: u64,
    range: std::ops::Range<usize>,
    threads: usize,
    shared: Arc<Shared>,
    epoch: Instant,
    dialer: Dialer,
) -> anyhow::Result<ThreadResult> {
    let thread = Rc::new(Thread {
        first,
        shared: shared.clone(),
        epoch,
        dialer,
        warmup_end_ns: Cell::new(u64::MAX),
        sending_end_ns: Cell::new(0),
        histogram: RefCell::new(
            Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
        ),
        send_lag: RefCell::new(
            Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
        ),
        acked: RefCell::new(Vec::new()),
        delivered: RefCell::new(AHashSet::new()),
        last_from: RefCell::new(AHashMap::new()),
        measured: Cell::new(0),
        stalled_readers: RefCell::new(Vec::new()),
        rng: Cell::new(0x9E37_79B9_7F4A_7C15 ^ (range.start as u64 + 1)),
        args,
    });

    // Sign up and log in, a bounded number at a time; a phone that cannot
    // connect keeps trying for `connect_patience` seconds.
    let permits = Rc::new(glommio::sync::Semaphore::new(
        thread.args.connect.connect_concurrency as u64,
    ));
    let mut joins = Vec::new();
    for index in range.clone() {
        let (thread, permits) = (thread.clone(), permits.clone());
        joins.push(glommio::spawn_local(async move {
            let number =
                Phone::from_u64(thread.first + index as u64).expect("range checked at start");
            let phone = Rc::new(PhoneState::new(
                index as u32,
                number,
                stalled(index, thread.args.stalled_share),
            ));
            let _permit = permits
                .acquire_permit(1)
                .await
                .expect("semaphore never closes");
            let patience = Duration::from_secs_f64(thread.args.connect_patience);
            let started = Instant::now();
            let give_up = || started.elapsed() >= patience;
            match connect_with_backoff(&thread, &phone, &mut Backoff::new(index as u64), give_up)
                .await
            {
                Ok(connection) => {
                    thread.shared.logged_in.fetch_add(1, Relaxed);
                    Some((phone, connection))
                }
                Err(error) => {
                    if thread.shared.connect_failures.fetch_add(1, Relaxed) < 5 {
                        eprintln!("phone {index}: {error:#}");
                    }
                    None
                }
            }
        }));
    }
    let mut connected = Vec::new();
    for join in joins {
        if let Some(phone) = join.await {
            connected.push(phone);
        }
    }
    // Every thread waits for every phone, so nobody sends to a phone that
    // does not exist yet.
    while shared.logged_in.load(Relaxed) + (shared.connect_failures.load(Relaxed) as usize)
        < thread.args.phones
    {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let start_ns = thread.now_ns();
    thread
        .warmup_end_ns
        .set(start_ns + (thread.args.warmup * 1e9) as u64);
    thread
        .sending_end_ns
        .set(start_ns + (thread.args.duration * 1e9) as u64);

    let mut phones = Vec::new();
    let mut tasks = Vec::new();
    for (phone, connection) in connected {
        tasks.push(
            glommio::spawn_local(phone_loop(thread.clone(), phone.clone(), connection)).detach(),
        );
        phones.push(phone);
    }
    let all_phones = phones.clone();
    phones.retain(|phone| !phone.stalled);

    if !phones.is_empty() && thread.args.churn_per_s > 0.0 {
        let churn = churn(thread.clone(), phones.clone(), threads);
        tasks.push(glommio::spawn_local(churn).detach());
    }
    if !phones.is_empty() {
        if thread.args.rate > 0 {
            pace(&thread, &phones, start_ns, threads).await;
        } else {
            for phone in &phones {
                for _ in 0..thread.args.window {
                    phone.queue.borrow_mut().push_back(0);
                }
                phone.wake();
            }
        }
    }
    while !shared.finished.load(Relaxed) {
        glommio::timer::sleep(Duration::from_millis(10)).await;
        if shared.stop_sending.load(Relaxed) {
            for waker in thread.stalled_readers.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }
    for phone in &all_phones {
        phone.wake();
    }
    drop(tasks);
    let histogram = thread.histogram.borrow().clone();
    let send_lag = thread.send_lag.borrow().clone();
    let acked = std::mem::take(&mut *thread.acked.borrow_mut());
    let delivered = std::mem::take(&mut *thread.delivered.borrow_mut());
    Ok(ThreadResult {
        histogram,
        send_lag,
        acked,
        delivered,
        measured_deliveries: thread.measured.get(),
    })
}

/// Runs one phone's connections until the run finishes: when one ends, the
/// phone backs off, connects and logs in again, and carries on.
async fn phone_loop(thread: Rc<Thread>, phone: Rc<PhoneState>, first: Connection) {
    let mut connection = first;
    loop {
        phone.resend.set(true);
        let (reader, writer) = split(connection.io);
        // Whichever side ends first ends the connection: dropping the other
        // half closes the socket.
        futures_lite::future::or(
            read_loop(&thread, &phone, reader, connection.inbox),
            write_loop(&thread, &phone, writer),
        )
        .await;
        let finished = || thread.shared.finished.load(Relaxed);
        if finished() {
            return;
        }
        let offline_ns = phone.offline_until_ns.get().saturating_sub(thread.now_ns());
        if offline_ns > 0 {
            glommio::timer::sleep(Duration::from_nanos(offline_ns)).await;
        }
        // The server may have just gone away: wait before the first try too.
        let mut backoff = Backoff::new(thread.random(u64::MAX));
        backoff.wait().await;
        connection = match connect_with_backoff(&thread, &phone, &mut backoff, finished).await {
            Ok(connection) if !finished() => connection,
            _ => return,
        };
        thread.shared.reconnects.fetch_add(1, Relaxed);
    }
}

/// Connects and logs in, backing off between attempts, until it works or
/// `give_up` says to stop (then the last attempt's error).
async fn connect_with_backoff(
    thread: &Thread,
    phone: &PhoneState,
    backoff: &mut Backoff,
    give_up: impl Fn() -> bool,
) -> anyhow::Result<Connection> {
    loop {
        match thread.dialer.log_in(phone.number, &phone.key).await {
            Ok(connection) => return Ok(connection),
            Err(error) if give_up() => return Err(error),
            Err(_) => backoff.wait().await,
        }
    }
}

/// Makes random phones hang up, at `churn_per_s` over all threads.
async fn churn(thread: Rc<Thread>, phones: Vec<Rc<PhoneState>>, threads: usize) {
    let interval = Duration::from_secs_f64(threads as f64 / thread.args.churn_per_s);
    while !thread.shared.stop_sending.load(Relaxed) {
        glommio::timer::sleep(interval).await;
        let phone = &phones[thread.random(phones.len() as u64) as usize];
        let now = thread.now_ns();
        if phone.offline_until_ns.get() <= now {
            phone
                .offline_until_ns
                .set(now + thread.args.offline_ms * 1_000_000);
            phone.hang_up.set(true);
            phone.wake();
        }
    }
}

/// The pacer's shortest sleep. Every wake-up costs a pass of the executor's
/// loop (with its io_uring calls), so at high rates the pacer wakes less
/// often and issues the sends that fell due meanwhile together; the delay
/// shows in `send_lag`.
const PACER_SLEEP_NS_MIN: u64 = 50_000;

/// Issues sends at fixed intended times, whatever the server is doing.
async fn pace(thread: &Thread, phones: &[Rc<PhoneState>], start_ns: u64, threads: usize) {
    let rate = thread.args.rate as f64 / threads as f64;
    let interval_ns = 1e9 / rate;
    let mut issued: u64 = 0;
    while !thread.shared.stop_sending.load(Relaxed) {
        let now = thread.now_ns();
        // Sends 0..=k are due once now >= start + k * interval.
        let due = ((now - start_ns) as f64 / interval_ns) as u64 + 1;
        while issued < due {
            let intended = start_ns + (issued as f64 * interval_ns) as u64;
            let phone = &phones[thread.random(phones.len() as u64) as usize];
            phone.queue.borrow_mut().push_back(intended);
            phone.wake();
            issued += 1;
        }
        // Sleep until the next send is due (a fixed sleep would add up to
        // its own length to every latency figure), but not less than the
        // minimum.
        let next = start_ns + (issued as f64 * interval_ns) as u64;
        let wait = next.saturating_sub(thread.now_ns());
        glommio::timer::sleep(Duration::from_nanos(
            wait.clamp(PACER_SLEEP_NS_MIN, 1_000_000),
        ))
        .await;
    }
}

/// Appends one send in the target's protocol; `again` marks a send written
/// again after a reconnect.
fn encode_send(
    thread: &Thread,
    phone: &PhoneState,
    client_id: u64,
    to: Phone,
    body: &[u8],
    again: bool,
    bytes: &mut Vec<u8>,
) {
    match thread.dialer.protocol {
        Protocol::Isle => {
            encode_client(
                &ClientFrame::Send {
                    client_id,
                    to,
                    body,
                },
                bytes,
            );
        }
        Protocol::Mqtt => mqtt::encode_publish(
            &mqtt::topic(to),
            mqtt::packet_id(client_id),
            again,
            phone.number,
            client_id,
            body,
            bytes,
        ),
    }
}

/// Whether the phone may write a send with this client id now. MQTT packet
/// ids repeat every 65,535 sends, so a send waits while the one that long
/// before it is still unanswered (`mqtt::client_id_of` relies on this).
fn may_send(thread: &Thread, phone: &PhoneState) -> bool {
    thread.dialer.protocol != Protocol::Mqtt
        || phone
            .in_flight
            .borrow()
            .first_key_value()
            .is_none_or(|(&oldest, _)| {
                phone.next_client_id.get() < oldest + u64::from(mqtt::PACKET_IDS)
            })
}

async fn write_loop(thread: &Thread, phone: &PhoneState, mut writer: WriteHalf<BoxIo>) {
    let total = thread.args.phones as u64;
    let mut bytes = Vec::new();
    let mut body = vec![0u8; thread.args.body_bytes];
    loop {
        if phone.resend.replace(false) {
            // Unanswered on the last connection: the server may or may not
            // have stored them, and recognises the client id if it has.
            // Refused ones go too, in their place.
            phone.refused.borrow_mut().clear();
            for (&client_id, sent) in phone.in_flight.borrow().iter() {
                body[..8].copy_from_slice(&sent.intended_ns.to_le_bytes());
                encode_send(thread, phone, client_id, sent.to, &body, true, &mut bytes);
                thread.shared.resent.fetch_add(1, Relaxed);
            }
        }
        if phone.retry_due.replace(false) {
            // The order rule: every refused send again, oldest first, so
            // each conversation resumes from its refused one on.
            let refused = std::mem::take(&mut *phone.refused.borrow_mut());
            let in_flight = phone.in_flight.borrow();
            for client_id in refused {
                if let Some(sent) = in_flight.get(&client_id) {
                    body[..8].copy_from_slice(&sent.intended_ns.to_le_bytes());
                    encode_send(thread, phone, client_id, sent.to, &body, true, &mut bytes);
                }
            }
        }
        let closed_loop = thread.args.rate == 0;
        let stop = thread.shared.stop_sending.load(Relaxed);
        {
            let mut queue = phone.queue.borrow_mut();
            while let Some(intended) = if stop || !may_send(thread, phone) {
                None
            } else {
                queue.pop_front()
            } {
                let client_id = phone.next_client_id.get();
                phone.next_client_id.set(client_id + 1);
                let mut to = thread.random(total.max(2) - 1);
                if to >= u64::from(phone.index) {
                    to += 1;
                }
                let to = Phone::from_u64(thread.first + to.min(total - 1))
                    .expect("range checked at start");
                let now = thread.now_ns();
                let intended = if closed_loop { now } else { intended };
                if intended >= thread.warmup_end_ns.get() {
                    let lag = now.saturating_sub(intended).max(1);
                    let _ = thread.send_lag.borrow_mut().record(lag);
                }
                // The order rule: nothing new in a conversation whose
                // refused send waits to be written again; this one goes
                // after it, in the next retry.
                let waits = phone.refused_to(to);
                if !waits {
                    body[..8].copy_from_slice(&intended.to_le_bytes());
                    encode_send(thread, phone, client_id, to, &body, false, &mut bytes);
                }
                phone.in_flight.borrow_mut().insert(
                    client_id,
                    InFlight {
                        intended_ns: intended,
                        to,
                    },
                );
                if waits {
                    phone.refused.borrow_mut().insert(client_id);
                }
                thread.shared.sent.fetch_add(1, Relaxed);
            }
        }
        let ack = phone.ack_up_to.replace(0);
        if ack > 0 {
            encode_client(&ClientFrame::Ack { up_to: ack }, &mut bytes);
        }
        // A PUBACK lost with its connection is not written again: the
        // broker sends the message again on the next one (same id, DUP
        // set), and the phone acknowledges that copy.
        for packet_id in phone.pubacks.borrow_mut().drain(..) {
            mqtt::encode_puback(packet_id, &mut bytes);
        }
        if !bytes.is_empty() {
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                // The ack may not have arrived: send it again next time.
                phone.ack_up_to.set(phone.ack_up_to.get().max(ack));
                thread.shared.disconnects.fetch_add(1, Relaxed);
                return;
            }
            bytes.clear();
            continue;
        }
        if thread.shared.finished.load(Relaxed) || phone.hang_up.replace(false) {
            if !thread.shared.finished.load(Relaxed) {
                thread.shared.hangups.fetch_add(1, Relaxed);
            }
            let _ = writer.close().await;
            return;
        }
        futures_lite::future::poll_fn(|cx| {
            let ready = !phone.queue.borrow().is_empty()
                && !thread.shared.stop_sending.load(Relaxed)
                && may_send(thread, phone)
                || phone.retry_due.get()
                || phone.ack_up_to.get() > 0
                || !phone.pubacks.borrow().is_empty()
                || phone.hang_up.get()
                || thread.shared.finished.load(Relaxed);
            if ready {
                std::task::Poll::Ready(())
            } else {
                *phone.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

async fn read_loop(
    thread: &Thread,
    phone: &Rc<PhoneState>,
    mut reader: ReadHalf<BoxIo>,
    mut inbox: Vec<u8>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    if phone.stalled {
        futures_lite::future::poll_fn(|cx| {
            if thread.shared.stop_sending.load(Relaxed) {
                std::task::Poll::Ready(())
            } else {
                thread.stalled_readers.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
    }
    loop {
        let taken = match thread.dialer.protocol {
            Protocol::Isle => take_isle(thread, phone, &mut inbox),
            Protocol::Mqtt => take_mqtt(thread, phone, &mut inbox),
        };
        if let Err(error) = taken {
            eprintln!("bad frame from the server: {error:#}");
            thread.shared.errors.fetch_add(1, Relaxed);
            return;
        }
        let n = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                if !thread.shared.finished.load(Relaxed) {
                    thread.shared.disconnects.fetch_add(1, Relaxed);
                }
                return;
            }
            Ok(n) => n,
        };
        inbox.extend_from_slice(&buffer[..n]);
    }
}

/// Handles and removes the whole isle frames at the front of `inbox`, then
/// has the writer acknowledge the messages among them.
fn take_isle(thread: &Thread, phone: &Rc<PhoneState>, inbox: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut max_seq = 0;
    let taken = crate::dial::take_frames(inbox, |frame| {
        max_seq = max_seq.max(handle(thread, phone, frame));
    });
    if max_seq > 0 {
        phone.ack_up_to.set(phone.ack_up_to.get().max(max_seq));
        phone.wake();
    }
    taken
}

/// Handles one frame; returns the mailbox seq to acknowledge (0 for none).
fn handle(thread: &Thread, phone: &Rc<PhoneState>, frame: ServerFrame<'_>) -> u64 {
    let shared = &thread.shared;
    match frame {
        ServerFrame::Sent { client_id, .. } => {
            on_sent(thread, phone, client_id);
            0
        }
        ServerFrame::Message {
            seq,
            from,
            client_id,
            body,
            ..
        } => {
            on_message(thread, phone, from, client_id, &body);
            seq
        }
        ServerFrame::Receipt { seq, .. } => {
            shared.receipts.fetch_add(1, Relaxed);
            seq
        }
        ServerFrame::Error {
            kind,
            client_id,
            detail,
        } => {
            if shared.errors.fetch_add(1, Relaxed) < 5 {
                eprintln!(
                    "phone {}: error {kind:?} for {client_id:?}: {detail}",
                    phone.index
                );
            }
            if let Some(client_id) = client_id {
                on_refused(thread, phone, client_id, kind);
            }
            0
        }
        _ => 0,
    }
}

/// How long a phone waits after a retryable refusal before writing its
/// refused sends again (ms).
pub const RETRY_MS: u64 = 100;

/// The server refused the send `client_id`: a final refusal ends it, a
/// retryable one keeps it in flight to be written again (see the module
/// doc).
fn on_refused(thread: &Thread, phone: &Rc<PhoneState>, client_id: u64, kind: ErrorKind) {
    let shared = &thread.shared;
    if !phone.in_flight.borrow().contains_key(&client_id) {
        return;
    }
    if !kind.is_retryable() {
        phone.in_flight.borrow_mut().remove(&client_id);
        shared.rejected.fetch_add(1, Relaxed);
        return;
    }
    shared.refused_retryable.fetch_add(1, Relaxed);
    if kind == ErrorKind::OutOfOrder {
        shared.out_of_order.fetch_add(1, Relaxed);
    }
    let first = {
        let mut refused = phone.refused.borrow_mut();
        refused.insert(client_id);
        refused.len() == 1
    };
    if first {
        let phone = phone.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(RETRY_MS)).await;
            phone.retry_due.set(true);
            phone.wake();
        })
        .detach();
    }
}

/// The server has taken responsibility for a send.
fn on_sent(thread: &Thread, phone: &PhoneState, client_id: u64) {
    let shared = &thread.shared;
    if phone.in_flight.borrow_mut().remove(&client_id).is_some() {
        shared.acked.fetch_add(1, Relaxed);
        thread.acked.borrow_mut().push(key(phone.index, client_id));
        if thread.args.rate == 0 && !shared.stop_sending.load(Relaxed) {
            phone.queue.borrow_mut().push_back(0);
        }
        if !phone.queue.borrow().is_empty() {
            phone.wake();
        }
    }
}

/// A message reached `phone`: counted once, timed, checked for order.
fn on_message(thread: &Thread, phone: &PhoneState, from: Phone, client_id: u64, body: &[u8]) {
    let shared = &thread.shared;
    // A sender outside this run's range cannot be one of ours; it still
    // counts as a delivery, under an index no phone uses.
    let from_index = from
        .as_u64()
        .wrapping_sub(thread.first)
        .min(u64::from(u32::MAX)) as u32;
    if !thread
        .delivered
        .borrow_mut()
        .insert(key(from_index, client_id))
    {
        shared.duplicates.fetch_add(1, Relaxed);
        return;
    }
    shared.delivered.fetch_add(1, Relaxed);
    if phone.stalled {
        // Left out of latency and throughput alike: what is measured is
        // everyone else.
        shared.delivered_to_stalled.fetch_add(1, Relaxed);
    } else {
        let intended = body
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        let now = thread.now_ns();
        if intended >= thread.warmup_end_ns.get() {
            let latency = now.saturating_sub(intended).max(1);
            let _ = thread.histogram.borrow_mut().record(latency);
        }
        if (thread.warmup_end_ns.get()..thread.sending_end_ns.get()).contains(&now) {
            thread.measured.set(thread.measured.get() + 1);
        }
    }
    let mut last = thread.last_from.borrow_mut();
    let previous = last.entry((from_index, phone.index)).or_insert(0);
    if client_id < *previous {
        shared.reordered.fetch_add(1, Relaxed);
    }
    *previous = (*previous).max(client_id);
}

/// Handles and removes the whole MQTT packets at the front of `inbox`.
fn take_mqtt(thread: &Thread, phone: &PhoneState, inbox: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut consumed = 0;
    let result = loop {
        let (packet, length) = match mqtt::take_packet(&inbox[consumed..]) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        };
        consumed += length;
        match packet {
            mqtt::Packet::PubAck { packet_id } => {
                let oldest = phone.in_flight.borrow().first_key_value().map(|(&k, _)| k);
                if let Some(oldest) = oldest {
                    on_sent(thread, phone, mqtt::client_id_of(packet_id, oldest));
                }
            }
            mqtt::Packet::Publish {
                packet_id, payload, ..
            } => {
                if let Some(packet_id) = packet_id {
                    phone.pubacks.borrow_mut().push(packet_id);
                }
                match mqtt::split_payload(payload) {
                    Ok((from, client_id, body)) => on_message(thread, phone, from, client_id, body),
                    Err(error) => break Err(error),
                }
            }
            mqtt::Packet::ConnAck { .. } | mqtt::Packet::SubAck { .. } | mqtt::Packet::PingResp => {
            }
        }
    };
    inbox.drain(..consumed);
    if !phone.pubacks.borrow().is_empty() {
        phone.wake();
    }
    result
}

/// Whether phone `index` is one of the `share` that stall: spread evenly
/// over the range, so every thread gets its part.
fn stalled(index: usize, share: f64) -> bool {
    (index as f64 * share).floor() != ((index + 1) as f64 * share).floor()
}

fn key(phone_index: u32, client_id: u64) -> u64 {
    (u64::from(phone_index) << 32) | (client_id & 0xFFFF_FFFF)
}
