//! The `groups` scenario: phones in groups of `--group-size`, each group's
//! creator posting to it in a closed loop, and every member delivery
//! counted.
//!
//! A post stays in flight until its sender has a `Delivered` receipt from
//! every other member, so at most `--window` posts per group are anywhere
//! between the sender and the last member: the server is loaded as far as
//! it can go and nothing piles up without bound. Latency is from the send
//! (a timestamp in the body) to a member reading the post.
//!
//! A group never spans loadgen threads, so forming groups needs no
//! coordination between threads.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use futures_lite::{
    io::{split, ReadHalf},
    AsyncReadExt, AsyncWriteExt,
};
use hdrhistogram::Histogram;
use serde::Serialize;
use wire::{encode_client, ClientFrame, GroupId, Phone, ReceiptKind, ServerFrame};

use crate::connection::BoxIo;
use crate::dial::{take_frames, Backoff, ConnectArgs, Dialed, Dialer};
use crate::route::Account;
use crate::window::{latency_histogram, wait_for, Threads, Window};

#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
pub struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    pub connect: ConnectArgs,
    /// Phones, in groups of --group-size (a remainder sits out).
    #[arg(long, default_value_t = 2_560)]
    pub phones: usize,
    /// Members per group, the creator included.
    #[arg(long, default_value_t = 10)]
    pub group_size: usize,
    /// Posts per group in flight (sent, and not yet delivered to every
    /// member).
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Seconds of posting, warm-up included.
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// Seconds at the start left out of the figures.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Seconds to wait, after posting stops, for posts still in flight.
    #[arg(long, default_value_t = 30.0)]
    pub drain: f64,
    /// The server's pid: adds its CPU time and RSS to the report.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON on the last line.
    #[arg(long)]
    pub json: bool,
    /// Write the report (JSON, latency and throughput charts) into this
    /// directory.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub phones: usize,
    pub groups: usize,
    pub group_size: usize,
    pub window: usize,
    pub measured_s: f64,
    /// Posts accepted (`Sent`) inside the measured window, per second.
    pub posts_per_s: f64,
    /// Member deliveries inside the measured window, per second: each post
    /// counts once per member that read it.
    pub deliveries_per_s: f64,
    /// The same per second of server CPU time, when --server-pid is given.
    pub deliveries_per_server_cpu_s: Option<f64>,
    pub server_cpu_share: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_max: f64,
    /// Posts accepted over the whole run, and member deliveries of them
    /// that never arrived (each post should reach `group_size - 1`).
    pub posts: u64,
    pub deliveries: u64,
    pub undelivered: u64,
    /// Posts that reached a member twice or out of order.
    pub duplicates: u64,
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
            "groups: {} groups of {}, window {}: {:.0} posts/s, {:.0} member deliveries/s{}",
            self.groups,
            self.group_size,
            self.window,
            self.posts_per_s,
            self.deliveries_per_s,
            match self.deliveries_per_server_cpu_s {
                Some(per_cpu) => format!(" ({per_cpu:.0} per server CPU second)"),
                None => String::new(),
            }
        );
        println!(
            "latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; undelivered {}, duplicates {}, errors {}",
            self.latency_us_p50 / 1000.0,
            self.latency_us_p99 / 1000.0,
            self.latency_us_max / 1000.0,
            self.undelivered,
            self.duplicates,
            self.errors
        );
        println!("dialing: {}", self.dialed);
    }

    pub fn failed(&self) -> bool {
        self.undelivered > 0 || self.duplicates > 0 || self.errors > 0
    }
}

/// What the threads share with the main one.
#[derive(Default)]
struct Shared {
    logged_in: AtomicUsize,
    created: AtomicUsize,
    failed: Arc<AtomicBool>,
    /// Posting starts, warm-up ends, posting ends.
    window: Window,
    posts: AtomicU64,
    posts_measured: AtomicU64,
    deliveries: AtomicU64,
    deliveries_measured: AtomicU64,
    duplicates: AtomicU64,
    errors: AtomicU64,
}

struct ThreadResult {
    histogram: Histogram<u64>,
    undelivered: u64,
}

pub fn run(args: &Args) -> anyhow::Result<Report> {
    args.connect.require_isle("groups")?;
    if args.group_size < 2 || args.group_size > 1024 {
        bail!("--group-size must be 2..=1024");
    }
    if args.body_bytes < 8 || args.body_bytes > wire::BODY_BYTES_MAX {
        bail!("--body-bytes must be 8..={}", wire::BODY_BYTES_MAX);
    }
    let groups = args.phones / args.group_size;
    if groups == 0 {
        bail!("--phones must make at least one group");
    }
    let first = args.connect.first(args.phones)?;
    let dialer = args.connect.dialer()?;
    let dial_counts = dialer.counts.clone();
    let shared = Arc::new(Shared::default());
    let threads = args.connect.threads().min(groups);
    let run = {
        let (args, shared) = (args.clone(), shared.clone());
        move |thread: usize| {
            let range = groups * thread / threads..groups * (thread + 1) / threads;
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

    let phones = groups * args.group_size;
    let failed = &shared.failed;
    wait_for("logins", &shared.logged_in, phones, failed)?;
    wait_for("group creations", &shared.created, groups, failed)?;
    eprintln!("{phones} phones in {groups} groups of {}", args.group_size);

    let counts = || [shared.posts.load(Relaxed), shared.deliveries.load(Relaxed)];
    let measured = shared.window.run(
        (args.warmup, args.duration),
        args.server_pid,
        counts,
        || {
            let [posts, deliveries] = counts();
            let errors = shared.errors.load(Relaxed);
            format!("posts={posts} deliveries={deliveries} errors={errors}")
        },
    )?;
    let results = threads.join()?;

    let mut histogram = latency_histogram();
    let mut undelivered = 0;
    for result in results {
        histogram.add(&result.histogram)?;
        undelivered += result.undelivered;
    }
    let deliveries_measured = shared.deliveries_measured.load(Relaxed) as f64;
    let measured_s = measured.seconds;
    let micros = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        phones,
        groups,
        group_size: args.group_size,
        window: args.window,
        measured_s,
        posts_per_s: shared.posts_measured.load(Relaxed) as f64 / measured_s,
        deliveries_per_s: deliveries_measured / measured_s,
        deliveries_per_server_cpu_s: measured.per_server_cpu_s(deliveries_measured),
        server_cpu_share: measured.server_cpu_share(),
        server_rss_bytes: measured.server_rss_bytes,
        latency_us_p50: micros(0.5),
        latency_us_p99: micros(0.99),
        latency_us_max: histogram.max() as f64 / 1000.0,
        posts: shared.posts.load(Relaxed),
        deliveries: shared.deliveries.load(Relaxed),
        undelivered,
        duplicates: shared.duplicates.load(Relaxed),
        errors: shared.errors.load(Relaxed),
        dialed: dial_counts.read(),
        curves: crate::report::Curves::new("member delivery latency", &histogram).with_timeline(
            measured.timeline,
            ["posts", "member deliveries"],
            args.warmup,
        ),
    })
}

/// One loadgen thread's share: whole groups.
struct Thread {
    shared: Arc<Shared>,
    args: Args,
    histogram: RefCell<Histogram<u64>>,
    /// Phones of this thread logged in so far.
    logged_in: Cell<usize>,
    phones: usize,
}

impl Thread {
    fn window(&self) -> &Window {
        &self.shared.window
    }
}

async fn run_thread(
    args: Args,
    first: u64,
    groups: std::ops::Range<usize>,
    shared: Arc<Shared>,
    dialer: Dialer,
) -> anyhow::Result<ThreadResult> {
    let size = args.group_size;
    let thread = Rc::new(Thread {
        shared,
        histogram: RefCell::new(latency_histogram()),
        logged_in: Cell::new(0),
        phones: groups.len() * size,
        args,
    });
    let permits = Rc::new(glommio::sync::Semaphore::new(
        thread.args.connect.connect_concurrency.max(1) as u64,
    ));
    let mut creators = Vec::new();
    for group in groups {
        let numbers: Vec<Phone> = (0..size)
            .map(|m| Phone::from_u64(first + (group * size + m) as u64))
            .collect::<Result<_, _>>()?;
        for (m, &number) in numbers.iter().enumerate() {
            let (thread, dialer, permits) = (thread.clone(), dialer.clone(), permits.clone());
            let members = numbers.clone();
            let task = glommio::spawn_local(async move {
                let result = phone(&thread, &dialer, &permits, number, m == 0, members).await;
                if let Err(error) = &result {
                    eprintln!("phone {number}: {error:#}");
                    thread.shared.errors.fetch_add(1, Relaxed);
                    thread.shared.failed.store(true, Relaxed);
                }
                result
            });
            if m == 0 {
                creators.push(task);
            } else {
                // Members read until the thread ends.
                task.detach();
            }
        }
    }
    let mut undelivered = 0;
    for creator in creators {
        undelivered += creator.await.unwrap_or(0);
    }
    let histogram = thread.histogram.borrow().clone();
    Ok(ThreadResult {
        histogram,
        undelivered,
    })
}

/// One phone: logs in, and then either creates its group and posts to it
/// (`creates`), or reads and acknowledges. A creator returns the member
/// deliveries that never arrived.
/// How long a phone keeps trying to log in before the run fails.
const LOGIN_PATIENCE: Duration = Duration::from_secs(30);

/// Logs in, trying again after a jittered back-off when a node resets the
/// connection or does not answer (a node's close after a redirect can
/// race the phone's next frame and come back as a reset), for up to
/// [`LOGIN_PATIENCE`].
async fn log_in_patiently(
    dialer: &Dialer,
    number: Phone,
    account: &Account,
) -> anyhow::Result<crate::connection::Connection> {
    let give_up = Instant::now() + LOGIN_PATIENCE;
    let mut backoff = Backoff::new(number.as_u64());
    loop {
        match dialer.log_in(number, account).await {
            Ok(connection) => return Ok(connection),
            Err(_) if Instant::now() < give_up => backoff.wait().await,
            Err(error) => return Err(error),
        }
    }
}

async fn phone(
    thread: &Rc<Thread>,
    dialer: &Dialer,
    permits: &glommio::sync::Semaphore,
    number: Phone,
    creates: bool,
    members: Vec<Phone>,
) -> anyhow::Result<u64> {
    let account = Account::default();
    let connection = {
        let _permit = permits
            .acquire_permit(1)
            .await
            .expect("semaphore never closes");
        log_in_patiently(dialer, number, &account).await?
    };
    thread.logged_in.set(thread.logged_in.get() + 1);
    thread.shared.logged_in.fetch_add(1, Relaxed);
    let (mut reader, mut writer) = split(connection.io);
    let mut inbox = connection.inbox;
    let mut out = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut member = Member::new(creates, members.len() - 1);
    if creates {
        // Every member must have an account before it can be added.
        while thread.logged_in.get() < thread.phones {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let others: Vec<Phone> = members[1..].to_vec();
        encode_client(
            &ClientFrame::CreateGroup {
                client_id: member.create_client_id,
                subject: "loadgen",
                members: others,
            },
            &mut out,
        );
    }
    let drain = Duration::from_secs_f64(thread.args.drain);
    let mut stopped_at: Option<Instant> = None;
    loop {
        if member.group.is_some() {
            member.post(thread, &mut out);
            if thread.window().stopped() {
                let since = *stopped_at.get_or_insert_with(Instant::now);
                if member.in_flight.is_empty() || since.elapsed() > drain {
                    return Ok(member.in_flight.values().map(|&n| n as u64).sum());
                }
            }
        }
        if !out.is_empty() {
            writer.write_all(&out).await?;
            writer.flush().await?;
            out.clear();
        }
        let Some(read) = member.read(thread, &mut reader, &mut buffer).await? else {
            continue;
        };
        if read == 0 {
            bail!("the server closed the connection");
        }
        inbox.extend_from_slice(&buffer[..read]);
        member.take(thread, &mut inbox, &mut out)?;
    }
}

/// What one phone keeps across reads: a creator's group and its posts in
/// flight, and every member's place in the group's posts and its mailbox.
struct Member {
    creates: bool,
    /// Members that confirm each post: all but the creator.
    expected: usize,
    group: Option<GroupId>,
    /// Per post in flight, the members yet to confirm it.
    in_flight: HashMap<u64, usize>,
    next_client_id: u64,
    /// The client id of its `CreateGroup` (a creator's).
    create_client_id: u64,
    /// Posts of a group reach a member in `gseq` order, once.
    last_gseq: u64,
    /// The mailbox seq acknowledged so far.
    acked: u64,
}

impl Member {
    fn new(creates: bool, expected: usize) -> Member {
        let base = crate::client_id_base();
        Member {
            creates,
            expected,
            group: None,
            in_flight: HashMap::new(),
            next_client_id: base + 1,
            create_client_id: base,
            last_gseq: 0,
            acked: 0,
        }
    }

    /// A creator tops its window of posts up once posting has begun, each
    /// with its send time in the body.
    fn post(&mut self, thread: &Thread, out: &mut Vec<u8>) {
        let Some(group) = self.group else {
            return;
        };
        let window = thread.args.window.max(1);
        let started = thread.window().started();
        while started && !thread.window().stopped() && self.in_flight.len() < window {
            let mut body = vec![0u8; thread.args.body_bytes];
            body[..8].copy_from_slice(&thread.window().now_ns().to_le_bytes());
            encode_client(
                &ClientFrame::GroupSend {
                    client_id: self.next_client_id,
                    group,
                    body: &body,
                },
                out,
            );
            self.in_flight.insert(self.next_client_id, self.expected);
            self.next_client_id += 1;
        }
    }

    /// Reads what the server sent. A creator waiting for the start, or
    /// draining after the stop, looks again shortly (`None`) rather than
    /// wait for bytes that may never come.
    async fn read(
        &self,
        thread: &Thread,
        reader: &mut ReadHalf<BoxIo>,
        buffer: &mut [u8],
    ) -> anyhow::Result<Option<usize>> {
        let look_again = if self.creates && self.group.is_some() && !thread.window().started() {
            Some(Duration::from_millis(10))
        } else if self.creates && thread.window().stopped() {
            Some(Duration::from_millis(100))
        } else {
            None
        };
        let Some(wait) = look_again else {
            return Ok(Some(reader.read(buffer).await?));
        };
        match glommio::timer::timeout(wait, async { Ok(reader.read(buffer).await) }).await {
            Ok(read) => Ok(Some(read?)),
            Err(_) => Ok(None),
        }
    }

    /// Handles the whole frames at the front of `inbox`, and acknowledges
    /// what they put in the mailbox.
    fn take(
        &mut self,
        thread: &Thread,
        inbox: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        let mut up_to = self.acked;
        let mut failure = None;
        take_frames(inbox, |frame| {
            if let Some(error) = self.on_frame(thread, frame, &mut up_to) {
                failure = Some(error);
            }
        })
        .context("reading frames")?;
        if let Some(error) = failure {
            return Err(error);
        }
        if up_to > self.acked {
            self.acked = up_to;
            encode_client(&ClientFrame::Ack { up_to }, out);
        }
        Ok(())
    }

    /// Counts one frame, raising `up_to` to the mailbox seq it carries; an
    /// error that ends the phone.
    fn on_frame(
        &mut self,
        thread: &Thread,
        frame: ServerFrame<'_>,
        up_to: &mut u64,
    ) -> Option<anyhow::Error> {
        let shared = &thread.shared;
        match frame {
            ServerFrame::Sent { client_id, id } if client_id == self.create_client_id => {
                match GroupId::from_u64(id) {
                    Ok(id) => {
                        self.group = Some(id);
                        shared.created.fetch_add(1, Relaxed);
                    }
                    Err(error) => return Some(anyhow::anyhow!("creation answered {error}")),
                }
            }
            ServerFrame::Sent { .. } => {
                shared.posts.fetch_add(1, Relaxed);
                if thread.window().measuring(thread.window().now_ns()) {
                    shared.posts_measured.fetch_add(1, Relaxed);
                }
            }
            ServerFrame::Receipt {
                seq,
                kind,
                client_id,
                ..
            } => {
                *up_to = (*up_to).max(seq);
                if kind == ReceiptKind::Undeliverable {
                    // Never to arrive: counted where the run ends.
                    shared.errors.fetch_add(1, Relaxed);
                }
                if matches!(kind, ReceiptKind::Delivered | ReceiptKind::Undeliverable) {
                    if let Some(left) = self.in_flight.get_mut(&client_id) {
                        *left -= 1;
                        if *left == 0 {
                            self.in_flight.remove(&client_id);
                        }
                    }
                }
            }
            ServerFrame::GroupMessage {
                seq, gseq, body, ..
            } => {
                *up_to = (*up_to).max(seq);
                if gseq <= self.last_gseq {
                    shared.duplicates.fetch_add(1, Relaxed);
                    return None;
                }
                self.last_gseq = gseq;
                let now = thread.window().now_ns();
                shared.deliveries.fetch_add(1, Relaxed);
                if thread.window().measuring(now) {
                    shared.deliveries_measured.fetch_add(1, Relaxed);
                    let sent = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
                    let _ = thread
                        .histogram
                        .borrow_mut()
                        .record(now.saturating_sub(sent).max(1));
                }
            }
            ServerFrame::GroupNotice { seq, .. } | ServerFrame::Message { seq, .. } => {
                *up_to = (*up_to).max(seq);
            }
            ServerFrame::Error { kind, detail, .. } => {
                return Some(anyhow::anyhow!("server error {kind:?}: {detail}"))
            }
            ServerFrame::Bye { reason } => return Some(anyhow::anyhow!("Bye {reason:?}")),
            _ => {}
        }
        None
    }
}
