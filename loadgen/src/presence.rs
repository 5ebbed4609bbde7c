//! The `presence` scenario: phones in a ring of mutual contacts, each
//! following its `--contacts` nearest neighbours and switching between
//! available and away at fixed times, `--rate` changes a second over all
//! phones.
//!
//! Every change should reach each of the phone's followers, so a run
//! expects `changes × contacts` presence updates; presence is best-effort,
//! so the ones that never came are reported (`missed`) rather than failing
//! the run. Latency is from the change's intended time to a follower
//! reading it: the time rides in a table the threads share, indexed by
//! phone, since a presence frame carries none.
//!
//! The setup goes in steps every phone finishes before any starts the
//! next: sign up, upload the neighbours as contacts, follow them (each
//! must answer `Online`, which checks that the visibility rule lets mutual
//! contacts through), then change presence.
//!
//! A phone whose connection ends (its node killed, say) does what
//! docs/protocol.md asks of a phone: it backs off with jitter, logs in
//! again (following `Redirect`, honouring `TryLater`), subscribes to its
//! contacts again and carries on with its schedule; the changes that fell
//! due while it was away are not made, so not counted. After the setup a
//! subscription may be answered `Offline` (that contact is away too) or
//! `Unavailable` (its node is not reachable: subscribed again at the
//! phone's next change). What followers hear of a contact's connection
//! ending or starting is not a change: it is counted apart
//! (`session_updates`), as is an `Offline` that repeats the last one a
//! follower saw (`repeats`), and neither is in `updates` or the latency.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context};
use futures_lite::{
    io::{split, ReadHalf, WriteHalf},
    AsyncReadExt, AsyncWriteExt,
};
use hdrhistogram::Histogram;
use serde::Serialize;
use wire::{encode_client, ByeReason, ClientFrame, Phone, Presence, ServerFrame};

use crate::connection::{BoxIo, Connection};
use crate::dial::{take_frames, Backoff, ConnectArgs, Dialed, Dialer};
use crate::route::Account;
use crate::window::{latency_histogram, wait_for, Measured, Threads, Window};

#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
pub struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    pub connect: ConnectArgs,
    #[arg(long, default_value_t = 2_000)]
    pub phones: usize,
    /// Neighbours each phone lists and follows (even: half on each side
    /// in the ring); each of its changes should reach all of them.
    #[arg(long, default_value_t = 8)]
    pub contacts: usize,
    /// Presence changes per second over all phones, spread evenly.
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// Seconds of changes, warm-up included.
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// Seconds at the start left out of the figures.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Seconds to wait, after changes stop, for updates still on the way.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// Seconds a phone keeps trying to make its first connection (the
    /// server may still be starting); a phone that cannot fails the run.
    #[arg(long, default_value_t = 30.0)]
    pub connect_patience: f64,
    /// The server's pid: adds its CPU time and RSS to the report.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON on the last line.
    #[arg(long)]
    pub json: bool,
    /// Write the report (JSON, update latency and rate charts) into this
    /// directory.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub phones: usize,
    pub contacts: usize,
    pub offered_changes_per_s: f64,
    pub measured_s: f64,
    /// Presence changes made inside the measured window, per second.
    pub changes_per_s: f64,
    /// Presence updates read by followers inside the measured window, per
    /// second: a change counts once per follower that heard of it.
    pub updates_per_s: f64,
    /// The same per second of server CPU time, when --server-pid is given.
    pub updates_per_server_cpu_s: Option<f64>,
    pub server_cpu_share: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_max: f64,
    /// Over the whole run: changes made, updates read, and updates
    /// expected (`changes × contacts`) that never came.
    pub changes: u64,
    pub updates: u64,
    pub missed: u64,
    /// Updates that arrived after the phone had already changed again
    /// (counted in `updates`, left out of the latency).
    pub stale: u64,
    /// Presence that followers heard because a contact's connection ended
    /// or a contact logged in again, not because it changed; and
    /// `Offline`s that repeated the last one a follower saw of that
    /// contact. Neither is in `updates`.
    pub session_updates: u64,
    pub repeats: u64,
    /// Connections that ended while the run lasted, and logins again
    /// after one ended.
    pub disconnects: u64,
    pub reconnects: u64,
    /// Subscriptions answered `Unavailable` after the setup (the
    /// contact's node was not reachable), each made again later.
    pub resubscribed: u64,
    pub errors: u64,
    /// What phones met on their way onto a server (redirects,
    /// try-laters, loops cut, waits that ran out).
    #[serde(flatten)]
    pub dialed: Dialed,
    /// For `--report`: not on the JSON line.
    #[serde(skip)]
    pub curves: crate::report::Curves,
}

impl Report {
    pub fn print_summary(&self) {
        println!(
            "presence: {} phones, {} contacts each: {:.0} changes/s, {:.0} updates/s{}",
            self.phones,
            self.contacts,
            self.changes_per_s,
            self.updates_per_s,
            match self.updates_per_server_cpu_s {
                Some(per_cpu) => format!(" ({per_cpu:.0} per server CPU second)"),
                None => String::new(),
            }
        );
        println!(
            "latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; missed {} of {}, stale {}, errors {}",
            self.latency_us_p50 / 1000.0,
            self.latency_us_p99 / 1000.0,
            self.latency_us_max / 1000.0,
            self.missed,
            self.changes * self.contacts as u64,
            self.stale,
            self.errors
        );
        println!(
            "connections: disconnects {} reconnects {} resubscribed {}; \
             heard apart from updates: session {} repeats {}",
            self.disconnects,
            self.reconnects,
            self.resubscribed,
            self.session_updates,
            self.repeats
        );
        println!("dialing: {}", self.dialed);
    }

    /// A run fails on an error, or when nothing changed or nothing was
    /// heard; missed updates are best-effort and reported, not failed.
    pub fn failed(&self) -> bool {
        self.errors > 0 || self.changes == 0 || self.updates == 0
    }
}

/// What the threads share with the main one.
struct Shared {
    logged_in: AtomicUsize,
    synced: AtomicUsize,
    subscribed: AtomicUsize,
    failed: Arc<AtomicBool>,
    /// Changes start, warm-up ends, changes end.
    window: Window,
    /// The drain after the window is over too: phones hang up.
    finished: AtomicBool,
    /// Per phone, its last [`Mark`], packed.
    last_change: Vec<AtomicU64>,
    changes: AtomicU64,
    changes_measured: AtomicU64,
    updates: AtomicU64,
    updates_measured: AtomicU64,
    stale: AtomicU64,
    session_updates: AtomicU64,
    repeats: AtomicU64,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    resubscribed: AtomicU64,
    errors: AtomicU64,
}

/// What a phone last did that its followers may hear of: what a follower
/// judges a presence frame about it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Nothing yet: the setup.
    Nothing,
    /// A change, due at `due_ns` (the window's clock): it became
    /// available, or went away.
    Change { due_ns: u64, available: bool },
    /// Its connection ended, or it logged in again, and it has made no
    /// change since: what its followers hear meanwhile comes from that.
    Session,
}

impl Mark {
    /// Two low bits say which (0 nothing, 1 away, 2 available, 3
    /// session); a change's time is above them.
    fn pack(self) -> u64 {
        match self {
            Mark::Nothing => 0,
            Mark::Change { due_ns, available } => due_ns << 2 | (1 + u64::from(available)),
            Mark::Session => 3,
        }
    }

    fn unpack(packed: u64) -> Mark {
        match packed & 3 {
            0 => Mark::Nothing,
            3 => Mark::Session,
            tag => Mark::Change {
                due_ns: packed >> 2,
                available: tag == 2,
            },
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<Report> {
    args.connect.require_isle("presence")?;
    if args.contacts < 2 || !args.contacts.is_multiple_of(2) || args.contacts >= args.phones {
        bail!("--contacts must be even, at least 2 and less than --phones");
    }
    if !args.rate.is_finite() || args.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    if !args.connect_patience.is_finite() || args.connect_patience < 0.0 {
        bail!("--connect-patience must be a number of seconds, 0 or more");
    }
    let first = args.connect.first(args.phones)?;
    let dialer = args.connect.dialer()?;
    let dial_counts = dialer.counts.clone();
    let counter = || AtomicU64::new(0);
    let shared = Arc::new(Shared {
        logged_in: AtomicUsize::new(0),
        synced: AtomicUsize::new(0),
        subscribed: AtomicUsize::new(0),
        failed: Arc::default(),
        window: Window::default(),
        finished: AtomicBool::new(false),
        last_change: (0..args.phones).map(|_| counter()).collect(),
        changes: counter(),
        changes_measured: counter(),
        updates: counter(),
        updates_measured: counter(),
        stale: counter(),
        session_updates: counter(),
        repeats: counter(),
        disconnects: counter(),
        reconnects: counter(),
        resubscribed: counter(),
        errors: counter(),
    });
    let threads = args.connect.threads().min(args.phones);
    let run = {
        let (args, shared) = (args.clone(), shared.clone());
        move |thread: usize| {
            let phones = args.phones;
            let range = phones * thread / threads..phones * (thread + 1) / threads;
            let (args, shared, dialer) = (args.clone(), shared.clone(), dialer.clone());
            run_thread(args, first, range, shared, dialer)
        }
    };
    let threads = Threads::spawn(
        &args.connect,
        "loadgen",
        threads,
        shared.failed.clone(),
        run,
    )?;

    let finish = |shared: &Shared| shared.finished.store(true, Relaxed);
    let (phones, failed) = (args.phones, &shared.failed);
    let setup = wait_for("logins", &shared.logged_in, phones, failed)
        .and_then(|()| wait_for("contact syncs", &shared.synced, phones, failed))
        .and_then(|()| wait_for("subscriptions", &shared.subscribed, phones, failed));
    if let Err(error) = setup {
        finish(&shared);
        return Err(error);
    }
    eprintln!("{phones} phones following {} contacts each", args.contacts);

    let counts = || [shared.changes.load(Relaxed), shared.updates.load(Relaxed)];
    let measured = shared.window.run(
        (args.warmup, args.duration),
        args.server_pid,
        counts,
        || {
            let [changes, updates] = counts();
            let errors = shared.errors.load(Relaxed);
            let reconnects = shared.reconnects.load(Relaxed);
            format!("changes={changes} updates={updates} errors={errors} reconnects={reconnects}")
        },
    )?;
    std::thread::sleep(Duration::from_secs_f64(args.drain));
    finish(&shared);
    let histograms = threads.join()?;

    let mut histogram = latency_histogram();
    for result in histograms {
        histogram.add(&result)?;
    }
    Ok(Report::new(
        args,
        &shared,
        &histogram,
        measured,
        dial_counts.read(),
    ))
}

impl Report {
    /// The report of a run: the counts `shared` holds, the latency the
    /// threads measured (`histogram`), and what the main thread measured
    /// over the window, with what the phones met dialing (`dialed`).
    fn new(
        args: &Args,
        shared: &Shared,
        histogram: &Histogram<u64>,
        measured: Measured,
        dialed: Dialed,
    ) -> Report {
        let updates_measured = shared.updates_measured.load(Relaxed) as f64;
        let measured_s = measured.seconds;
        let micros = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        let changes = shared.changes.load(Relaxed);
        let updates = shared.updates.load(Relaxed);
        Report {
            phones: args.phones,
            contacts: args.contacts,
            offered_changes_per_s: args.rate,
            measured_s,
            changes_per_s: shared.changes_measured.load(Relaxed) as f64 / measured_s,
            updates_per_s: updates_measured / measured_s,
            updates_per_server_cpu_s: measured.per_server_cpu_s(updates_measured),
            server_cpu_share: measured.server_cpu_share(),
            server_rss_bytes: measured.server_rss_bytes,
            latency_us_p50: micros(0.5),
            latency_us_p99: micros(0.99),
            latency_us_max: histogram.max() as f64 / 1000.0,
            changes,
            updates,
            missed: (changes * args.contacts as u64).saturating_sub(updates),
            stale: shared.stale.load(Relaxed),
            session_updates: shared.session_updates.load(Relaxed),
            repeats: shared.repeats.load(Relaxed),
            disconnects: shared.disconnects.load(Relaxed),
            reconnects: shared.reconnects.load(Relaxed),
            resubscribed: shared.resubscribed.load(Relaxed),
            errors: shared.errors.load(Relaxed),
            dialed,
            curves: crate::report::Curves::new("presence update latency", histogram).with_timeline(
                measured.timeline,
                ["changes", "updates"],
                args.warmup,
            ),
        }
    }
}

/// One loadgen thread's share of the phones.
struct Thread {
    shared: Arc<Shared>,
    args: Args,
    first: u64,
    dialer: Dialer,
    histogram: RefCell<Histogram<u64>>,
}

impl Thread {
    fn window(&self) -> &Window {
        &self.shared.window
    }

    /// Waits until `done` holds: true then, false once the run has
    /// finished; an error once another phone has failed.
    async fn until(&self, done: impl Fn() -> bool) -> anyhow::Result<bool> {
        while !done() {
            if self.shared.failed.load(Relaxed) {
                bail!("the run failed during the setup");
            }
            if self.shared.finished.load(Relaxed) {
                return Ok(false);
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        Ok(true)
    }

    /// The slot of the run's phone `phone`.
    fn mark_of(&self, phone: Phone) -> &AtomicU64 {
        &self.shared.last_change[(phone.as_u64() - self.first) as usize]
    }
}

/// One phone: what outlives its connections, and what its reader and
/// writer share on the current one.
struct PhoneState {
    /// Position in the ring, 0..phones.
    index: usize,
    number: Phone,
    /// Sorted: a contact's place in it indexes `follows`.
    contacts: Vec<Phone>,
    account: Account,
    /// Its contact list was answered (it is stored: once for the run).
    synced: Cell<bool>,
    /// Its first round of subscriptions was answered, every one `Online`.
    subscribed: Cell<bool>,
    /// Per contact, its subscription on the current connection.
    follows: RefCell<Vec<Follow>>,
    /// Contacts whose subscription was answered `Unavailable`: subscribed
    /// again at the phone's next change.
    hidden: RefCell<Vec<usize>>,
    /// Its presence on the server: available after every login.
    available: Cell<bool>,
}

/// A phone's subscription to one contact, on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// Not subscribed (yet, or its node was not reachable).
    Not,
    /// `Subscribe` written, not answered yet.
    Asked,
    /// What the contact showed last: the answer, then each update.
    Shows(Presence),
}

impl PhoneState {
    fn answered(&self) -> bool {
        !self.follows.borrow().contains(&Follow::Asked)
    }
}

async fn run_thread(
    args: Args,
    first: u64,
    phones: std::ops::Range<usize>,
    shared: Arc<Shared>,
    dialer: Dialer,
) -> anyhow::Result<Histogram<u64>> {
    let thread = Rc::new(Thread {
        shared,
        first,
        dialer,
        histogram: RefCell::new(latency_histogram()),
        args,
    });
    let permits = Rc::new(glommio::sync::Semaphore::new(
        thread.args.connect.connect_concurrency.max(1) as u64,
    ));
    let total = thread.args.phones;
    let half = thread.args.contacts / 2;
    let mut tasks = Vec::new();
    for index in phones {
        let mut contacts = Vec::with_capacity(2 * half);
        for d in 1..=half {
            for neighbour in [(index + d) % total, (index + total - d) % total] {
                contacts.push(Phone::from_u64(first + neighbour as u64)?);
            }
        }
        contacts.sort_unstable();
        let phone = Rc::new(PhoneState {
            index,
            number: Phone::from_u64(first + index as u64)?,
            follows: RefCell::new(vec![Follow::Not; contacts.len()]),
            contacts,
            account: Account::default(),
            synced: Cell::new(false),
            subscribed: Cell::new(false),
            hidden: RefCell::new(Vec::new()),
            available: Cell::new(true),
        });
        let (thread, permits) = (thread.clone(), permits.clone());
        tasks.push(glommio::spawn_local(async move {
            let result = run_phone(&thread, &permits, &phone).await;
            if let Err(error) = &result {
                if thread.shared.errors.fetch_add(1, Relaxed) < 5 {
                    eprintln!("phone {}: {error:#}", phone.number);
                }
                thread.shared.failed.store(true, Relaxed);
            }
            result
        }));
    }
    let mut failure = None;
    for task in tasks {
        if let Err(error) = task.await {
            failure.get_or_insert(error);
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(thread.histogram.borrow().clone()),
    }
}

/// Runs one phone's connections until the run finishes: when one ends,
/// the phone backs off, logs in again and carries on.
async fn run_phone(
    thread: &Thread,
    permits: &glommio::sync::Semaphore,
    phone: &PhoneState,
) -> anyhow::Result<()> {
    let shared = &thread.shared;
    let give_up = || shared.finished.load(Relaxed) || shared.failed.load(Relaxed);
    let mut backoff = Backoff::new(phone.number.as_u64());
    let first = {
        let _permit = permits
            .acquire_permit(1)
            .await
            .expect("semaphore never closes");
        let patience = Duration::from_secs_f64(thread.args.connect_patience);
        let started = std::time::Instant::now();
        let impatient = || give_up() || started.elapsed() >= patience;
        (thread.dialer)
            .log_in_with_backoff(phone.number, &phone.account, &mut backoff, impatient)
            .await
    };
    let mut connection = match first {
        Ok(connection) => connection,
        Err(_) if shared.finished.load(Relaxed) => return Ok(()),
        Err(error) => return Err(error),
    };
    shared.logged_in.fetch_add(1, Relaxed);
    loop {
        on_connection(phone, connection, thread).await?;
        if shared.finished.load(Relaxed) {
            return Ok(());
        }
        shared.disconnects.fetch_add(1, Relaxed);
        // What its followers hear from now until its next change comes
        // from the connection ending and the next login.
        let mark = thread.mark_of(phone.number);
        mark.store(Mark::Session.pack(), Relaxed);
        // The server may have just gone away: wait before the first try too.
        let mut backoff = Backoff::new(phone.number.as_u64() ^ shared.disconnects.load(Relaxed));
        backoff.wait().await;
        connection = match (thread.dialer)
            .log_in_with_backoff(phone.number, &phone.account, &mut backoff, give_up)
            .await
        {
            Ok(connection) => connection,
            Err(_) if shared.finished.load(Relaxed) => return Ok(()),
            Err(error) => return Err(error),
        };
        shared.reconnects.fetch_add(1, Relaxed);
    }
}

/// One logged-in connection, until it ends or the run finishes; an
/// error only for what a reconnect would not cure (a frame that breaks
/// the protocol, a contact list answered wrong).
async fn on_connection(
    phone: &PhoneState,
    connection: Connection,
    thread: &Thread,
) -> anyhow::Result<()> {
    phone.available.set(true);
    phone.follows.borrow_mut().fill(Follow::Not);
    phone.hidden.borrow_mut().clear();
    let (reader, writer) = split(connection.io);
    futures_lite::future::or(
        read_loop(thread, phone, reader, connection.inbox),
        write_loop(thread, phone, writer),
    )
    .await
}

/// Writes `out` and empties it; false when the connection has ended.
async fn write(writer: &mut WriteHalf<BoxIo>, out: &mut Vec<u8>) -> bool {
    let written = writer.write_all(out).await.is_ok() && writer.flush().await.is_ok();
    out.clear();
    written
}

/// The setup steps a phone has not finished: its contacts synced, its
/// subscriptions asked (and, the first time, answered). False when the
/// connection or the run ended first.
async fn set_up(
    thread: &Thread,
    phone: &PhoneState,
    writer: &mut WriteHalf<BoxIo>,
    out: &mut Vec<u8>,
) -> anyhow::Result<bool> {
    let shared = &thread.shared;
    let phones = thread.args.phones;

    if !phone.synced.get() {
        if !thread
            .until(|| shared.logged_in.load(Relaxed) >= phones)
            .await?
        {
            return Ok(false);
        }
        let sync = ClientFrame::SyncContacts {
            client_id: 1,
            full: true,
            add: phone.contacts.clone(),
            remove: Vec::new(),
        };
        encode_client(&sync, out);
        if !write(writer, out).await {
            return Ok(false);
        }
        if !thread.until(|| phone.synced.get()).await? {
            return Ok(false);
        }
    }

    // Follows succeed only once both sides list each other.
    if !thread
        .until(|| shared.synced.load(Relaxed) >= phones)
        .await?
    {
        return Ok(false);
    }
    {
        let mut follows = phone.follows.borrow_mut();
        for (follow, &contact) in follows.iter_mut().zip(&phone.contacts) {
            encode_client(&ClientFrame::Subscribe { phone: contact }, out);
            *follow = Follow::Asked;
        }
    }
    if !write(writer, out).await {
        return Ok(false);
    }
    // The setup waits for every answer; a phone back on a new connection
    // does not: an answer from a node that is away comes when it is back.
    if !phone.subscribed.get() {
        if !thread.until(|| phone.answered()).await? {
            return Ok(false);
        }
        phone.subscribed.set(true);
        shared.subscribed.fetch_add(1, Relaxed);
    }
    Ok(true)
}

/// The phone's side of one connection: the setup steps it has not
/// finished, its subscriptions, then its changes on schedule. Ends when
/// the connection does, or once the run has finished.
async fn write_loop(
    thread: &Thread,
    phone: &PhoneState,
    mut writer: WriteHalf<BoxIo>,
) -> anyhow::Result<()> {
    let mut out = Vec::new();
    if !set_up(thread, phone, &mut writer, &mut out).await? {
        return Ok(());
    }
    let shared = &thread.shared;
    let phones = thread.args.phones;
    let window = thread.window();
    if !thread.until(|| window.started()).await? {
        return Ok(());
    }
    let start_ns = window.start_ns();
    let period_ns = phones as f64 * 1e9 / thread.args.rate;
    let offset_ns = period_ns * phone.index as f64 / phones as f64;
    let due = |k: u64| start_ns + (offset_ns + k as f64 * period_ns) as u64;
    // After a reconnect, the changes that fell due meanwhile are skipped.
    let since_start = window.now_ns().saturating_sub(start_ns) as f64;
    let mut k = ((since_start - offset_ns) / period_ns).ceil().max(0.0) as u64;
    while !window.stopped() {
        let due_ns = due(k);
        k += 1;
        let wait_ns = due_ns.saturating_sub(window.now_ns());
        if wait_ns > 0 {
            glommio::timer::sleep(Duration::from_nanos(wait_ns)).await;
        }
        if window.stopped() {
            break;
        }
        for contact in phone.hidden.take() {
            let frame = ClientFrame::Subscribe {
                phone: phone.contacts[contact],
            };
            encode_client(&frame, &mut out);
            phone.follows.borrow_mut()[contact] = Follow::Asked;
        }
        let available = !phone.available.get();
        phone.available.set(available);
        let mark = Mark::Change { due_ns, available };
        thread.mark_of(phone.number).store(mark.pack(), Relaxed);
        encode_client(&ClientFrame::SetPresence { available }, &mut out);
        if !write(&mut writer, &mut out).await {
            return Ok(());
        }
        shared.changes.fetch_add(1, Relaxed);
        if window.measuring(due_ns) {
            shared.changes_measured.fetch_add(1, Relaxed);
        }
    }
    // Keep the connection (and the reader) until the drain is over.
    while !shared.finished.load(Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Reads and handles frames until the connection ends.
async fn read_loop(
    thread: &Thread,
    phone: &PhoneState,
    mut reader: ReadHalf<BoxIo>,
    mut inbox: Vec<u8>,
) -> anyhow::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let mut failure = None;
        take_frames(&mut inbox, |frame| {
            if let Err(error) = handle(thread, phone, frame) {
                failure.get_or_insert(error);
            }
        })
        .context("reading frames")?;
        if let Some(error) = failure {
            return Err(error);
        }
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(read) => inbox.extend_from_slice(&buffer[..read]),
        }
    }
}

fn handle(thread: &Thread, phone: &PhoneState, frame: ServerFrame<'_>) -> anyhow::Result<()> {
    let shared = &thread.shared;
    match frame {
        ServerFrame::Contacts {
            client_id: 1,
            registered,
        } => {
            if registered != phone.contacts {
                bail!(
                    "{} of {} contacts found registered",
                    registered.len(),
                    phone.contacts.len()
                );
            }
            if !phone.synced.replace(true) {
                shared.synced.fetch_add(1, Relaxed);
            }
        }
        ServerFrame::Presence {
            phone: about,
            presence,
        } => on_presence(thread, phone, about, presence)?,
        ServerFrame::Error { kind, detail, .. } => bail!("server error {kind:?}: {detail}"),
        // The connection ends next; the phone comes back as from any end.
        ServerFrame::Bye {
            reason: ByeReason::ShuttingDown,
        } => {}
        ServerFrame::Bye { reason } => bail!("Bye {reason:?}"),
        _ => {}
    }
    Ok(())
}

/// A presence frame about the contact `about`: the answer to a
/// subscription, or what it tells of the contact since.
fn on_presence(
    thread: &Thread,
    phone: &PhoneState,
    about: Phone,
    presence: Presence,
) -> anyhow::Result<()> {
    let shared = &thread.shared;
    let Ok(contact) = phone.contacts.binary_search(&about) else {
        bail!("presence of {about}, which this phone does not follow");
    };
    let mut follows = phone.follows.borrow_mut();
    let before = follows[contact];
    match (before, presence) {
        // Its subscription was answered hidden: nothing more comes of it.
        (Follow::Not, _) => {}
        (Follow::Asked, Presence::Online) => follows[contact] = Follow::Shows(presence),
        // The setup checks that mutual contacts see each other: at the
        // first round, every one is there to see.
        (Follow::Asked, _) if !phone.subscribed.get() => {
            bail!("a mutual contact shows {presence:?}")
        }
        (Follow::Asked, Presence::Unavailable) => {
            // Its node is not reachable now: ask again later.
            follows[contact] = Follow::Not;
            phone.hidden.borrow_mut().push(contact);
            shared.resubscribed.fetch_add(1, Relaxed);
        }
        (Follow::Asked, _) => follows[contact] = Follow::Shows(presence),
        (Follow::Shows(_), Presence::Unavailable) => {
            bail!("a mutual contact became unavailable")
        }
        (Follow::Shows(shown), _) => {
            follows[contact] = Follow::Shows(presence);
            if shared.finished.load(Relaxed) {
                // Phones hanging up at the end of the run: not a change.
                return Ok(());
            }
            heard(thread, about, shown, presence);
        }
    }
    Ok(())
}

/// A follower heard `presence` of `about` after `shown`: an update of
/// its last change (timed when it is still the last), or what its
/// connection ending or its login caused, or a repeat.
fn heard(thread: &Thread, about: Phone, shown: Presence, presence: Presence) {
    let shared = &thread.shared;
    if presence == shown && matches!(presence, Presence::Offline { .. }) {
        // The same last-seen time again: an away contact's connection
        // ended. Nothing changed.
        shared.repeats.fetch_add(1, Relaxed);
        return;
    }
    let Mark::Change { due_ns, available } = Mark::unpack(thread.mark_of(about).load(Relaxed))
    else {
        shared.session_updates.fetch_add(1, Relaxed);
        return;
    };
    shared.updates.fetch_add(1, Relaxed);
    let now = thread.window().now_ns();
    if thread.window().measuring(now) {
        shared.updates_measured.fetch_add(1, Relaxed);
    }
    if available != (presence == Presence::Online) {
        shared.stale.fetch_add(1, Relaxed);
        return;
    }
    if thread.window().measuring(now) {
        let _ = (thread.histogram.borrow_mut()).record(now.saturating_sub(due_ns).max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::Mark;

    #[test]
    fn a_mark_packs_and_unpacks_to_itself() {
        for mark in [
            Mark::Nothing,
            Mark::Session,
            Mark::Change {
                due_ns: 0,
                available: false,
            },
            Mark::Change {
                due_ns: 1_234_567_890_123,
                available: true,
            },
            Mark::Change {
                due_ns: (1 << 62) - 1,
                available: false,
            },
        ] {
            assert_eq!(Mark::unpack(mark.pack()), mark, "{mark:?}");
        }
    }
}
