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
use wire::{encode_client, ClientFrame, Phone, Presence, ServerFrame};

use crate::connection::BoxIo;
use crate::dial::{take_frames, ConnectArgs, Dialed, Dialer};
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
    /// Per phone, its last change: the intended time in nanoseconds shifted
    /// left by one, with the low bit set when it became available (0
    /// before the first).
    last_change: Vec<AtomicU64>,
    changes: AtomicU64,
    changes_measured: AtomicU64,
    updates: AtomicU64,
    updates_measured: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
}

pub fn run(args: &Args) -> anyhow::Result<Report> {
    args.connect.require_isle("presence")?;
    if args.contacts < 2 || !args.contacts.is_multiple_of(2) || args.contacts >= args.phones {
        bail!("--contacts must be even, at least 2 and less than --phones");
    }
    if !args.rate.is_finite() || args.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let first = args.connect.first(args.phones)?;
    let dialer = args.connect.dialer()?;
    let dial_counts = dialer.counts.clone();
    let shared = Arc::new(Shared {
        logged_in: AtomicUsize::new(0),
        synced: AtomicUsize::new(0),
        subscribed: AtomicUsize::new(0),
        failed: Arc::default(),
        window: Window::default(),
        finished: AtomicBool::new(false),
        last_change: (0..args.phones).map(|_| AtomicU64::new(0)).collect(),
        changes: AtomicU64::new(0),
        changes_measured: AtomicU64::new(0),
        updates: AtomicU64::new(0),
        updates_measured: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        errors: AtomicU64::new(0),
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
            format!("changes={changes} updates={updates} errors={errors}")
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
    histogram: RefCell<Histogram<u64>>,
}

impl Thread {
    fn window(&self) -> &Window {
        &self.shared.window
    }

    /// Waits until `done` holds; fails once another phone has.
    async fn until(&self, done: impl Fn() -> bool) -> anyhow::Result<()> {
        while !done() {
            if self.shared.failed.load(Relaxed) || self.shared.finished.load(Relaxed) {
                bail!("the run ended during the setup");
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// One phone, as its reader and its writer see it.
struct PhoneState {
    /// Position in the ring, 0..phones.
    index: usize,
    contacts: Vec<Phone>,
    /// `Contacts` answered, and `Online` answers to its subscriptions.
    synced: Cell<bool>,
    online_answers: Cell<usize>,
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
            contacts,
            synced: Cell::new(false),
            online_answers: Cell::new(0),
        });
        let (thread, dialer, permits) = (thread.clone(), dialer.clone(), permits.clone());
        tasks.push(glommio::spawn_local(async move {
            let number = Phone::from_u64(thread.first + phone.index as u64)?;
            let result = run_phone(&thread, &dialer, &permits, number, &phone).await;
            if let Err(error) = &result {
                if thread.shared.errors.fetch_add(1, Relaxed) < 5 {
                    eprintln!("phone {number}: {error:#}");
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

async fn run_phone(
    thread: &Thread,
    dialer: &Dialer,
    permits: &glommio::sync::Semaphore,
    number: Phone,
    phone: &PhoneState,
) -> anyhow::Result<()> {
    let account = Account::default();
    let connection = {
        let _permit = permits
            .acquire_permit(1)
            .await
            .expect("semaphore never closes");
        dialer.log_in(number, &account).await?
    };
    thread.shared.logged_in.fetch_add(1, Relaxed);
    let (reader, writer) = split(connection.io);
    futures_lite::future::or(
        read_loop(thread, phone, reader, connection.inbox),
        write_loop(thread, phone, writer),
    )
    .await
}

async fn write_loop(
    thread: &Thread,
    phone: &PhoneState,
    mut writer: WriteHalf<BoxIo>,
) -> anyhow::Result<()> {
    let shared = &thread.shared;
    let phones = thread.args.phones;
    let mut out = Vec::new();
    let mut write = async |out: &mut Vec<u8>| -> anyhow::Result<()> {
        writer.write_all(out).await?;
        writer.flush().await?;
        out.clear();
        Ok(())
    };

    thread
        .until(|| shared.logged_in.load(Relaxed) >= phones)
        .await?;
    let sync = ClientFrame::SyncContacts {
        client_id: 1,
        full: true,
        add: phone.contacts.clone(),
        remove: Vec::new(),
    };
    encode_client(&sync, &mut out);
    write(&mut out).await?;
    thread.until(|| phone.synced.get()).await?;
    shared.synced.fetch_add(1, Relaxed);

    // Follows succeed only once both sides list each other.
    thread
        .until(|| shared.synced.load(Relaxed) >= phones)
        .await?;
    for &contact in &phone.contacts {
        encode_client(&ClientFrame::Subscribe { phone: contact }, &mut out);
    }
    write(&mut out).await?;
    let contacts = phone.contacts.len();
    thread
        .until(|| phone.online_answers.get() >= contacts)
        .await?;
    shared.subscribed.fetch_add(1, Relaxed);

    let window = thread.window();
    thread.until(|| window.started()).await?;
    let start_ns = window.start_ns();
    let period_ns = phones as f64 * 1e9 / thread.args.rate;
    let offset_ns = period_ns * phone.index as f64 / phones as f64;
    for k in 0u64.. {
        let due_ns = start_ns + (offset_ns + k as f64 * period_ns) as u64;
        let wait_ns = due_ns.saturating_sub(thread.window().now_ns());
        if wait_ns > 0 {
            glommio::timer::sleep(Duration::from_nanos(wait_ns)).await;
        }
        if window.stopped() {
            break;
        }
        // Everyone starts available, so the first change is away.
        let available = k % 2 == 1;
        shared.last_change[phone.index].store(due_ns << 1 | u64::from(available), Relaxed);
        encode_client(&ClientFrame::SetPresence { available }, &mut out);
        write(&mut out).await?;
        shared.changes.fetch_add(1, Relaxed);
        if thread.window().measuring(due_ns) {
            shared.changes_measured.fetch_add(1, Relaxed);
        }
    }
    // Keep the connection (and the reader) until the drain is over.
    while !shared.finished.load(Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

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
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            if thread.shared.finished.load(Relaxed) {
                return Ok(());
            }
            bail!("the server closed the connection");
        }
        inbox.extend_from_slice(&buffer[..read]);
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
            phone.synced.set(true);
        }
        ServerFrame::Presence {
            phone: about,
            presence,
        } => {
            if shared.finished.load(Relaxed) {
                // Phones hanging up at the end of the run: not a change.
                return Ok(());
            }
            let slot = about
                .as_u64()
                .checked_sub(thread.first)
                .and_then(|index| shared.last_change.get(index as usize));
            let Some(slot) = slot else {
                bail!("presence of {about}, not one of the run's phones");
            };
            let last = slot.load(Relaxed);
            if !thread.window().started() || last == 0 {
                // An answer to a subscription.
                if presence != Presence::Online {
                    bail!("a mutual contact shows {presence:?}");
                }
                phone.online_answers.set(phone.online_answers.get() + 1);
                return Ok(());
            }
            shared.updates.fetch_add(1, Relaxed);
            let now = thread.window().now_ns();
            if thread.window().measuring(now) {
                shared.updates_measured.fetch_add(1, Relaxed);
            }
            let available = match presence {
                Presence::Online => true,
                Presence::Offline { .. } => false,
                Presence::Unavailable => bail!("a mutual contact became unavailable"),
            };
            if available != (last & 1 == 1) {
                shared.stale.fetch_add(1, Relaxed);
                return Ok(());
            }
            if thread.window().measuring(now) {
                let changed_ns = last >> 1;
                let _ = thread
                    .histogram
                    .borrow_mut()
                    .record(now.saturating_sub(changed_ns).max(1));
            }
        }
        ServerFrame::Error { kind, detail, .. } => bail!("server error {kind:?}: {detail}"),
        ServerFrame::Bye { reason } => bail!("Bye {reason:?}"),
        _ => {}
    }
    Ok(())
}
