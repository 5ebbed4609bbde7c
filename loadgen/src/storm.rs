//! The storm: every phone loses its connection at once and comes back at
//! once, as after a network blip or a server restart.
//!
//! All `--phones` sign up and log in. Then, with `--trigger command` (the
//! default), loadgen closes all their connections itself; `--senders` other
//! phones send `--queued` messages to random ones of them while they are
//! away; and all of them log in again at the same moment. With `--trigger
//! server` loadgen waits for the server to drop them (restart it by hand or
//! from a script) and they come back with backoff while it starts.
//!
//! Reported: the time from the storm until every phone is back, logins per
//! second over that time, each phone's login time, failures, and whether
//! the messages queued meanwhile all arrived, once each and in order per
//! sender.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use ahash::{AHashMap, AHashSet};
use anyhow::bail;
use clap::{Parser, ValueEnum};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use wire::{encode_client, ClientFrame, Phone, ServerFrame};

use crate::connection::Connection;
use crate::dial::{take_frames, Backoff, Dialed, Dialer};
use crate::report::Heading;
use crate::route::Account;
use crate::window::{wait_until, Threads};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// loadgen closes every phone's connection itself.
    Command,
    /// The server drops them (it is restarted meanwhile).
    Server,
}

#[derive(Debug, Clone, Parser, serde::Serialize)]
pub struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    pub connect: crate::dial::ConnectArgs,
    /// Phones that drop and come back.
    #[arg(long, default_value_t = 10_000)]
    pub phones: usize,
    /// What drops them.
    #[arg(long, value_enum, default_value_t = Trigger::Command)]
    pub trigger: Trigger,
    /// Phones that stay connected and send while the others are away
    /// (`--trigger command` only).
    #[arg(long, default_value_t = 20)]
    pub senders: usize,
    /// Messages sent to the absent phones (`--trigger command` only).
    #[arg(long, default_value_t = 10_000)]
    pub queued: u64,
    /// Seconds a phone keeps trying to come back.
    #[arg(long, default_value_t = 60.0)]
    pub patience: f64,
    /// The server's process id: its CPU time while the phones come back
    /// is reported, so logins per second of server CPU can be told apart
    /// from what loadgen itself could drive.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// Write the report (JSON, and the login time percentile chart) into
    /// this directory.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// `scenario` ("storm"), `phones`, `tls`.
    #[serde(flatten)]
    pub heading: Heading,
    pub trigger: &'static str,
    /// Phones logged in again after the drop, and those that gave up.
    pub back: usize,
    pub failures: u64,
    /// What phones met on their way onto a server (redirects,
    /// try-laters, loops cut, waits that ran out).
    #[serde(flatten)]
    pub dialed: Dialed,
    pub logins_per_s: f64,
    /// From the moment the phones set out to come back (`command`), or
    /// the first phone saw the server go (`server`), until the last phone
    /// was logged in again.
    pub time_to_all_back_s: f64,
    /// Per phone, from the moment it set out to come back to `LoggedIn`.
    pub login_ms_p50: f64,
    pub login_ms_p99: f64,
    pub login_ms_max: f64,
    /// Messages sent to absent phones and answered `Sent`.
    pub queued: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// From the reconnect until every queued message had arrived.
    pub drain_s: f64,
    /// CPU seconds the server spent while the phones came back, and logins
    /// per such second (0 without `--server-pid`).
    pub server_cpu_s: f64,
    pub logins_per_server_cpu_s: f64,
    /// For `--report`: not on the JSON line.
    #[serde(skip)]
    pub curves: crate::report::Curves,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.lost > 0 || self.failures > 0 || self.back < self.heading.phones
    }

    pub fn print_summary(&self) {
        println!(
            "storm ({}): {} of {} phones back in {:.2} s, {:.0} logins/s, {} failed; login ms p50={:.1} p99={:.1} max={:.1}",
            self.trigger,
            self.back,
            self.heading.phones,
            self.time_to_all_back_s,
            self.logins_per_s,
            self.failures,
            self.login_ms_p50,
            self.login_ms_p99,
            self.login_ms_max,
        );
        println!("dialing: {}", self.dialed);
        if self.server_cpu_s > 0.0 {
            println!(
                "server CPU while they came back: {:.2} s, {:.0} logins per CPU second",
                self.server_cpu_s, self.logins_per_server_cpu_s
            );
        }
        if self.queued > 0 {
            println!(
                "queued while away: {} sent, {} delivered in {:.2} s, lost={} duplicates={} reordered={}",
                self.queued, self.delivered, self.drain_s, self.lost, self.duplicates, self.reordered
            );
        }
    }
}

/// Where the run is; phones and senders wait for the main thread to move it.
const PHASE_SIGN_UP: u8 = 0;
const PHASE_DROP: u8 = 1;
const PHASE_QUEUE: u8 = 2;
const PHASE_RECONNECT: u8 = 3;
const PHASE_FINISHED: u8 = 4;

struct Shared {
    phase: AtomicU8,
    epoch: Instant,
    logged_in: AtomicUsize,
    signup_failures: AtomicU64,
    dropped: AtomicUsize,
    /// Nanoseconds since `epoch` of the first drop seen (`u64::MAX`: none).
    first_drop_ns: AtomicU64,
    senders_done: AtomicUsize,
    back: AtomicUsize,
    failures: AtomicU64,
    last_back_ns: AtomicU64,
    queued: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    reordered: AtomicU64,
    /// Set at each reconnect: what the phones measure their login from.
    reconnect_ns: AtomicU64,
    /// Set when a thread fails, so the main thread stops waiting.
    failed: Arc<AtomicBool>,
}

#[derive(Default)]
struct ThreadResult {
    /// (sender, client_id) of every message answered `Sent`.
    sent: Vec<u64>,
    delivered: AHashSet<u64>,
    login_ns: Vec<u64>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            phase: AtomicU8::new(PHASE_SIGN_UP),
            epoch: Instant::now(),
            logged_in: AtomicUsize::new(0),
            signup_failures: AtomicU64::new(0),
            dropped: AtomicUsize::new(0),
            first_drop_ns: AtomicU64::new(u64::MAX),
            senders_done: AtomicUsize::new(0),
            back: AtomicUsize::new(0),
            failures: AtomicU64::new(0),
            last_back_ns: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            reconnect_ns: AtomicU64::new(0),
            failed: Arc::default(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn phase(&self) -> u8 {
        self.phase.load(Relaxed)
    }
}

pub fn run(args: &Args) -> anyhow::Result<Report> {
    run_then(args, || {})
}

/// [`run`], calling `waiting` once every phone is signed up and, with
/// `--trigger server`, the run waits for the server to go down: whoever
/// restarts the server (an operator, a test) does it then, not on a guess
/// at how long signing up takes.
pub fn run_then(args: &Args, waiting: impl FnOnce()) -> anyhow::Result<Report> {
    crate::process::raise_fd_limit()?;
    let senders = match args.trigger {
        Trigger::Command => args.senders.max(1),
        Trigger::Server => 0,
    };
    let first = args.connect.first(args.phones + senders)?;
    args.connect.require_isle("storm")?;
    let dialer = args.connect.dialer()?;
    let dial_counts = dialer.counts.clone();
    let shared = Arc::new(Shared::new());
    let threads = args.connect.threads();
    let run = {
        let (args, shared) = (args.clone(), shared.clone());
        move |thread: usize| {
            let phones = args.phones * thread / threads..args.phones * (thread + 1) / threads;
            let sending = senders * thread / threads..senders * (thread + 1) / threads;
            let (args, shared, dialer) = (args.clone(), shared.clone(), dialer.clone());
            run_thread(args, first, phones, sending, dialer, shared)
        }
    };
    let failed = shared.failed.clone();
    let handles = Threads::spawn(&args.connect, "loadgen-storm", threads, failed, run)?;
    let result = drive(args, senders, &shared, waiting);
    shared.phase.store(PHASE_FINISHED, Relaxed);
    let results = handles.join()?;
    Report::new(args, &shared, &results, result?, dial_counts.read())
}

impl Report {
    /// The report of a run: the counts `shared` holds, what each thread
    /// saw (`results`), and what the main thread measured as it drove the
    /// phases (`phases`), with what the phones met dialing (`dialed`).
    fn new(
        args: &Args,
        shared: &Shared,
        results: &[ThreadResult],
        phases: Phases,
        dialed: Dialed,
    ) -> anyhow::Result<Report> {
        let mut delivered = AHashSet::new();
        let mut login = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3)?;
        for result in results {
            delivered.extend(result.delivered.iter().copied());
            for &ns in &result.login_ns {
                login.record(ns.max(1))?;
            }
        }
        let sent: Vec<u64> = results
            .iter()
            .flat_map(|r| r.sent.iter().copied())
            .collect();
        let lost = sent.iter().filter(|key| !delivered.contains(key)).count() as u64;
        let back = shared.back.load(Relaxed);
        let last_back = shared.last_back_ns.load(Relaxed);
        // From when they set out, not from the first `LoggedIn`: when every
        // phone starts at once the logins finish together at the end.
        let time_to_all_back_s = last_back.saturating_sub(phases.dropped_ns) as f64 / 1e9;
        let ms = |ns: u64| ns as f64 / 1e6;
        let server_cpu_s = phases.server_cpu_s;
        Ok(Report {
            heading: Heading::new("storm", args.phones, &args.connect),
            trigger: match args.trigger {
                Trigger::Command => "command",
                Trigger::Server => "server",
            },
            back,
            failures: shared.failures.load(Relaxed),
            dialed,
            logins_per_s: back as f64 / time_to_all_back_s.max(1e-9),
            time_to_all_back_s,
            login_ms_p50: ms(login.value_at_quantile(0.5)),
            login_ms_p99: ms(login.value_at_quantile(0.99)),
            login_ms_max: ms(login.max()),
            queued: sent.len() as u64,
            delivered: delivered.len() as u64,
            lost,
            duplicates: shared.duplicates.load(Relaxed),
            reordered: shared.reordered.load(Relaxed),
            drain_s: phases.drain_s,
            server_cpu_s,
            logins_per_server_cpu_s: if server_cpu_s > 0.0 {
                back as f64 / server_cpu_s
            } else {
                0.0
            },
            curves: crate::report::Curves::new("login time", &login),
        })
    }
}

/// What the main thread measured as it drove the phases.
struct Phases {
    /// From the reconnect until every queued message had arrived.
    drain_s: f64,
    /// When the storm began (ns since the epoch): the reconnect for
    /// `command`, the first drop seen for `server`.
    dropped_ns: u64,
    /// The server's CPU seconds while the phones came back (0 without
    /// `--server-pid`).
    server_cpu_s: f64,
}

/// Moves the run through its phases, and measures them.
fn drive(
    args: &Args,
    senders: usize,
    shared: &Shared,
    waiting: impl FnOnce(),
) -> anyhow::Result<Phases> {
    let cpu = || -> anyhow::Result<f64> {
        match args.server_pid {
            Some(pid) => crate::process::cpu_seconds(pid),
            None => Ok(0.0),
        }
    };
    let wait = |what: &str, limit_s: f64, done: &dyn Fn() -> bool| {
        wait_until(what, Duration::from_secs_f64(limit_s), &shared.failed, done)
    };
    let everyone = args.phones + senders;
    wait("signing up every phone", 600.0, &|| {
        shared.logged_in.load(Relaxed) + shared.signup_failures.load(Relaxed) as usize >= everyone
    })?;
    if shared.signup_failures.load(Relaxed) > 0 {
        bail!(
            "{} phones could not sign up",
            shared.signup_failures.load(Relaxed)
        );
    }
    eprintln!("storm: {everyone} phones logged in");
    let dropped_ns;
    match args.trigger {
        Trigger::Command => {
            shared.phase.store(PHASE_DROP, Relaxed);
            wait("closing every phone", 60.0, &|| {
                shared.dropped.load(Relaxed) >= args.phones
            })?;
            shared.phase.store(PHASE_QUEUE, Relaxed);
            wait("queueing the messages", 600.0, &|| {
                shared.senders_done.load(Relaxed) >= senders
            })?;
            eprintln!(
                "storm: {} messages queued; every phone comes back now",
                shared.queued.load(Relaxed)
            );
            dropped_ns = shared.now_ns();
            shared.reconnect_ns.store(dropped_ns, Relaxed);
        }
        Trigger::Server => {
            eprintln!("storm: waiting for the server to drop the phones (restart it)");
            shared.phase.store(PHASE_DROP, Relaxed);
            waiting();
            wait("the server dropping every phone", 3_600.0, &|| {
                shared.dropped.load(Relaxed) >= args.phones
            })?;
            dropped_ns = shared.first_drop_ns.load(Relaxed);
        }
    }
    let cpu_before = cpu()?;
    let reconnected = Instant::now();
    shared.phase.store(PHASE_RECONNECT, Relaxed);
    wait("every phone coming back", args.patience + 60.0, &|| {
        shared.back.load(Relaxed) + shared.failures.load(Relaxed) as usize >= args.phones
    })?;
    let server_cpu_s = cpu()? - cpu_before;
    eprintln!(
        "storm: {} phones back, {} failed",
        shared.back.load(Relaxed),
        shared.failures.load(Relaxed)
    );
    let queued = shared.queued.load(Relaxed);
    let drained = wait("delivering what was queued", 60.0, &|| {
        shared.delivered.load(Relaxed) >= queued
    });
    if let Err(error) = drained {
        eprintln!("storm: {error}");
    }
    Ok(Phases {
        drain_s: reconnected.elapsed().as_secs_f64(),
        dropped_ns,
        server_cpu_s,
    })
}

async fn run_thread(
    args: Args,
    first: u64,
    phones: std::ops::Range<usize>,
    senders: std::ops::Range<usize>,
    dialer: Dialer,
    shared: Arc<Shared>,
) -> anyhow::Result<ThreadResult> {
    let local = Rc::new(Local {
        dialer,
        shared: shared.clone(),
        permits: glommio::sync::Semaphore::new(args.connect.connect_concurrency as u64),
        result: RefCell::new(ThreadResult::default()),
        last_from: RefCell::new(AHashMap::new()),
        phase: Cell::new(PHASE_SIGN_UP),
        waiting: RefCell::new(Vec::new()),
    });
    let mut tasks = Vec::new();
    for index in phones.clone() {
        let number = Phone::from_u64(first + index as u64).expect("range checked");
        let (local, args) = (local.clone(), args.clone());
        tasks.push(glommio::spawn_local(storm_phone(local, args, number)).detach());
    }
    let targets = args.phones as u64;
    let per_sender = |s: usize| {
        let senders = (args.senders.max(1)) as u64;
        args.queued * (s as u64 + 1) / senders - args.queued * s as u64 / senders
    };
    for s in senders {
        let number = Phone::from_u64(first + (args.phones + s) as u64).expect("range checked");
        let local = local.clone();
        let count = per_sender(s);
        tasks.push(
            glommio::spawn_local(sender(local, number, first, targets, count, s as u64)).detach(),
        );
    }
    // One task watches the main thread's phase and wakes the phones that
    // wait for it: ten thousand phones polling a timer each would use the
    // core the storm needs.
    loop {
        let phase = shared.phase();
        if phase > local.phase.get() {
            local.phase.set(phase);
            for waker in local.waiting.borrow_mut().drain(..) {
                waker.wake();
            }
        }
        if phase >= PHASE_FINISHED {
            break;
        }
        glommio::timer::sleep(Duration::from_micros(500)).await;
    }
    drop(tasks);
    let result = std::mem::take(&mut *local.result.borrow_mut());
    Ok(result)
}

/// One thread's share of the run.
struct Local {
    dialer: Dialer,
    shared: Arc<Shared>,
    permits: glommio::sync::Semaphore,
    result: RefCell<ThreadResult>,
    /// Highest client id delivered per (sender, recipient).
    last_from: RefCell<AHashMap<(u64, u64), u64>>,
    /// The phase as this thread last saw it, and who waits for a later one.
    phase: Cell<u8>,
    waiting: RefCell<Vec<std::task::Waker>>,
}

impl Local {
    async fn until_phase(&self, phase: u8) {
        futures_lite::future::poll_fn(|cx| {
            if self.phase.get() >= phase {
                return std::task::Poll::Ready(());
            }
            self.waiting.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
    }
}

async fn sign_up(local: &Local, number: Phone, account: &Account) -> Option<Connection> {
    let _permit = local.permits.acquire_permit(1).await.expect("never closed");
    match local.dialer.log_in(number, account).await {
        Ok(connection) => {
            local.shared.logged_in.fetch_add(1, Relaxed);
            Some(connection)
        }
        Err(error) => {
            if local.shared.signup_failures.fetch_add(1, Relaxed) < 5 {
                eprintln!("phone {number}: {error:#}");
            }
            None
        }
    }
}

async fn storm_phone(local: Rc<Local>, args: Args, number: Phone) {
    let shared = &local.shared;
    let account = Account::default();
    let Some(mut connection) = sign_up(&local, number, &account).await else {
        return;
    };
    match args.trigger {
        Trigger::Command => {
            local.until_phase(PHASE_DROP).await;
            let _ = connection.io.close().await;
            drop(connection);
        }
        Trigger::Server => {
            local.until_phase(PHASE_DROP).await;
            // Nothing is sent to it; the read ends when the server goes.
            let mut buffer = [0u8; 256];
            while matches!(connection.io.read(&mut buffer).await, Ok(n) if n > 0) {}
            drop(connection);
            let _ = shared.first_drop_ns.fetch_min(shared.now_ns(), Relaxed);
        }
    }
    shared.dropped.fetch_add(1, Relaxed);
    local.until_phase(PHASE_RECONNECT).await;
    let set_out = match args.trigger {
        Trigger::Command => shared.reconnect_ns.load(Relaxed),
        Trigger::Server => shared.now_ns(),
    };
    let mut backoff = Backoff::new(number.as_u64());
    let patience = Duration::from_secs_f64(args.patience);
    let started = Instant::now();
    let connection = loop {
        match local.dialer.log_in(number, &account).await {
            Ok(connection) => break connection,
            Err(error) if started.elapsed() > patience => {
                if shared.failures.fetch_add(1, Relaxed) < 5 {
                    eprintln!("phone {number} did not come back: {error:#}");
                }
                return;
            }
            Err(_) => backoff.wait().await,
        }
    };
    let now = shared.now_ns();
    shared.back.fetch_add(1, Relaxed);
    shared.last_back_ns.fetch_max(now, Relaxed);
    local.result.borrow_mut().login_ns.push(now - set_out);
    receive(&local, number, connection).await;
}

/// Reads what was queued for this phone, acknowledging as it goes, until
/// the run ends.
async fn receive(local: &Local, number: Phone, mut connection: Connection) {
    let shared = &local.shared;
    let mut buffer = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    loop {
        let mut up_to = 0;
        let taken = take_frames(&mut connection.inbox, |frame| {
            if let ServerFrame::Message {
                seq,
                from,
                client_id,
                ..
            } = frame
            {
                up_to = up_to.max(seq);
                if local
                    .result
                    .borrow_mut()
                    .delivered
                    .insert(message_key(from, client_id))
                {
                    shared.delivered.fetch_add(1, Relaxed);
                    let mut last = local.last_from.borrow_mut();
                    let previous = last.entry((from.as_u64(), number.as_u64())).or_insert(0);
                    if client_id < *previous {
                        shared.reordered.fetch_add(1, Relaxed);
                    }
                    *previous = (*previous).max(client_id);
                } else {
                    shared.duplicates.fetch_add(1, Relaxed);
                }
            }
        });
        if taken.is_err() {
            return;
        }
        if up_to > 0 {
            out.clear();
            encode_client(&ClientFrame::Ack { up_to }, &mut out);
            if connection.io.write_all(&out).await.is_err() {
                return;
            }
            let _ = connection.io.flush().await;
        }
        if shared.phase() >= PHASE_FINISHED {
            return;
        }
        let read = futures_lite::future::or(
            async { Some(connection.io.read(&mut buffer).await) },
            async {
                local.until_phase(PHASE_FINISHED).await;
                None
            },
        )
        .await;
        match read {
            Some(Ok(n)) if n > 0 => connection.inbox.extend_from_slice(&buffer[..n]),
            _ => return,
        }
    }
}

/// One message, as `(sender, client id)` packed: client ids stay far below
/// 2^24 in a run, and phone numbers below 2^40.
fn message_key(from: Phone, client_id: u64) -> u64 {
    (from.as_u64() << 24) ^ client_id
}

/// Stays connected and, while the others are away, sends them `count`
/// messages, waiting for each `Sent`.
async fn sender(local: Rc<Local>, number: Phone, first: u64, targets: u64, count: u64, seed: u64) {
    let shared = &local.shared;
    let account = Account::default();
    let Some(mut connection) = sign_up(&local, number, &account).await else {
        return;
    };
    local.until_phase(PHASE_QUEUE).await;
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    let body = [0u8; 32];
    // A window of sends in flight: enough to keep the server busy.
    const WINDOW: u64 = 64;
    let (mut written, mut answered) = (0u64, 0u64);
    while answered < count {
        out.clear();
        while written < count && written - answered < WINDOW {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let to = Phone::from_u64(first + rng % targets).expect("range checked");
            written += 1;
            encode_client(
                &ClientFrame::Send {
                    client_id: written,
                    to,
                    body: &body,
                },
                &mut out,
            );
        }
        if !out.is_empty() && connection.io.write_all(&out).await.is_err() {
            break;
        }
        let _ = connection.io.flush().await;
        let n = match connection.io.read(&mut buffer).await {
            Ok(n) if n > 0 => n,
            _ => break,
        };
        connection.inbox.extend_from_slice(&buffer[..n]);
        let taken = take_frames(&mut connection.inbox, |frame| match frame {
            ServerFrame::Sent { client_id, .. } => {
                answered += 1;
                shared.queued.fetch_add(1, Relaxed);
                let key = message_key(number, client_id);
                local.result.borrow_mut().sent.push(key);
            }
            ServerFrame::Error {
                client_id: Some(_), ..
            } => answered += 1,
            _ => {}
        });
        if taken.is_err() {
            break;
        }
    }
    shared.senders_done.fetch_add(1, Relaxed);
    local.until_phase(PHASE_FINISHED).await;
}
