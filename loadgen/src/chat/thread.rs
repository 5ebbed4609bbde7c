//! One loadgen executor's share of the chat workload: its phones, what
//! they measure, and the run of the thread from sign-up to the end.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use ahash::{AHashMap, AHashSet};
use hdrhistogram::Histogram;
use wire::Phone;

use super::pacer::{churn, pace};
use super::phone::{connect_with_backoff, phone_loop, stalled, PhoneState};
use super::{Args, Shared};
use crate::connection::Connection;
use crate::dial::{Backoff, Dialer};
use crate::window::latency_histogram;

/// What one thread hands back at the end.
pub(super) struct ThreadResult {
    pub(super) histogram: Histogram<u64>,
    /// Of those latencies, deliveries between phones on one node, and
    /// between phones on two.
    pub(super) same_node: Histogram<u64>,
    pub(super) cross_node: Histogram<u64>,
    /// The same latencies by the second of sending their message was
    /// meant for, from the start of sending.
    pub(super) by_second: Vec<Histogram<u64>>,
    pub(super) send_lag: Histogram<u64>,
    /// From intended send to its `Sent`.
    pub(super) sent_latency: Histogram<u64>,
    pub(super) acked: Vec<u64>,
    pub(super) delivered: AHashSet<u64>,
    pub(super) measured_deliveries: u64,
    pub(super) answer_gap_ns_max: u64,
}

/// One executor's share of the run: what its phones share, and what they
/// measure.
pub(super) struct Thread {
    pub(super) args: Args,
    /// The run's first phone number (phone `i` is `first + i`).
    pub(super) first: u64,
    pub(super) shared: Arc<Shared>,
    /// What every thread's nanoseconds count from.
    epoch: Instant,
    pub(super) dialer: Dialer,
    /// Deliveries of sends intended before this are not measured.
    pub(super) warmup_end_ns: Cell<u64>,
    /// Deliveries received from warm-up's end until this count towards
    /// throughput; those that arrive later (draining a backlog) do not.
    pub(super) sending_end_ns: Cell<u64>,
    /// Latency from intended send to delivery (and the same split into
    /// same-node and cross-node deliveries), and how late sends were
    /// written against their intended time.
    pub(super) histogram: RefCell<Histogram<u64>>,
    pub(super) same_node: RefCell<Histogram<u64>>,
    pub(super) cross_node: RefCell<Histogram<u64>>,
    /// `--latency-nodes` as `Shared::homes` numbers them; empty for all.
    latency_nodes: Vec<u8>,
    /// When sending began, and the timed latencies by the second their
    /// send was meant for (one histogram a second of `--duration`).
    start_ns: Cell<u64>,
    by_second: RefCell<Vec<Histogram<u64>>>,
    pub(super) send_lag: RefCell<Histogram<u64>>,
    /// From a send's intended time to its `Sent` (the sender's wait for
    /// durability, replication included), for sends meant after warm-up
    /// from phones `--latency-nodes` counts.
    sent_latency: RefCell<Histogram<u64>>,
    /// Keys (`phone::key`) of sends answered `Sent`, and of messages
    /// received.
    pub(super) acked: RefCell<Vec<u64>>,
    pub(super) delivered: RefCell<AHashSet<u64>>,
    /// Highest client id received per (sender, recipient), for `reordered`.
    pub(super) last_from: RefCell<AHashMap<(u32, u32), u64>>,
    /// Deliveries that count towards throughput.
    pub(super) measured: Cell<u64>,
    /// The longest any phone of the thread waited, with sends
    /// outstanding, between two answers (see `PhoneState::answer_mark_ns`).
    answer_gap_ns_max: Cell<u64>,
    rng: Cell<u64>,
    /// Stalled phones' readers, woken once when sending stops.
    pub(super) stalled_readers: RefCell<Vec<std::task::Waker>>,
}

impl Thread {
    /// The thread whose phones start at `range_start`, which also seeds
    /// its random choices.
    fn new(
        args: Args,
        first: u64,
        shared: Arc<Shared>,
        epoch: Instant,
        dialer: Dialer,
        range_start: usize,
    ) -> Thread {
        let latency_nodes = (args.latency_nodes.iter())
            .map(|&server| shared.server_number(server))
            .collect();
        Thread {
            first,
            latency_nodes,
            start_ns: Cell::new(0),
            by_second: RefCell::new(Vec::new()),
            same_node: RefCell::new(latency_histogram()),
            cross_node: RefCell::new(latency_histogram()),
            shared,
            epoch,
            dialer,
            warmup_end_ns: Cell::new(u64::MAX),
            sending_end_ns: Cell::new(0),
            histogram: RefCell::new(latency_histogram()),
            send_lag: RefCell::new(latency_histogram()),
            sent_latency: RefCell::new(latency_histogram()),
            acked: RefCell::new(Vec::new()),
            delivered: RefCell::new(AHashSet::new()),
            last_from: RefCell::new(AHashMap::new()),
            measured: Cell::new(0),
            answer_gap_ns_max: Cell::new(0),
            stalled_readers: RefCell::new(Vec::new()),
            rng: Cell::new(0x9E37_79B9_7F4A_7C15 ^ (range_start as u64 + 1)),
            args,
        }
    }

    pub(super) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(super) fn random(&self, bound: u64) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x % bound
    }

    /// `phone` logged in at `server`.
    pub(super) fn logged_in_at(&self, phone: &PhoneState, server: std::net::SocketAddr) {
        let number = self.shared.server_number(server);
        self.shared.homes[phone.index as usize].store(number, Relaxed);
    }

    /// Records the latency of a delivery from phone `from` to phone `to`
    /// (indices in the run) of a send meant for `intended_ns`, unless
    /// `--latency-nodes` leaves it out.
    pub(super) fn record_latency(&self, from: usize, to: usize, intended_ns: u64, latency_ns: u64) {
        let homes = (self.shared.home(from), self.shared.home(to));
        if !self.latency_nodes.is_empty() {
            let counted = |home: Option<u8>| home.is_some_and(|h| self.latency_nodes.contains(&h));
            if !(counted(homes.0) && counted(homes.1)) {
                return;
            }
        }
        let _ = self.histogram.borrow_mut().record(latency_ns);
        let second = intended_ns.saturating_sub(self.start_ns.get()) / 1_000_000_000;
        if let Some(histogram) = self.by_second.borrow_mut().get_mut(second as usize) {
            let _ = histogram.record(latency_ns);
        }
        let class = match homes {
            (Some(a), Some(b)) if a == b => &self.same_node,
            (Some(_), Some(_)) => &self.cross_node,
            _ => return,
        };
        let _ = class.borrow_mut().record(latency_ns);
    }

    /// Phone `from`'s send meant for `intended_ns` was answered `Sent`
    /// now: timed unless warm-up or `--latency-nodes` leaves it out.
    pub(super) fn record_sent(&self, from: usize, intended_ns: u64) {
        if intended_ns < self.warmup_end_ns.get() {
            return;
        }
        let home = self.shared.home(from);
        if !self.latency_nodes.is_empty() && !home.is_some_and(|h| self.latency_nodes.contains(&h))
        {
            return;
        }
        let latency_ns = self.now_ns().saturating_sub(intended_ns);
        let _ = self.sent_latency.borrow_mut().record(latency_ns);
    }

    /// A phone waited `gap_ns` for an answer to one of its sends.
    pub(super) fn note_answer_gap(&self, gap_ns: u64) {
        self.answer_gap_ns_max
            .set(self.answer_gap_ns_max.get().max(gap_ns));
    }

    /// What the thread measured, taken out at its end.
    fn result(&self) -> ThreadResult {
        ThreadResult {
            histogram: self.histogram.borrow().clone(),
            same_node: self.same_node.borrow().clone(),
            cross_node: self.cross_node.borrow().clone(),
            by_second: std::mem::take(&mut *self.by_second.borrow_mut()),
            send_lag: self.send_lag.borrow().clone(),
            sent_latency: self.sent_latency.borrow().clone(),
            acked: std::mem::take(&mut *self.acked.borrow_mut()),
            delivered: std::mem::take(&mut *self.delivered.borrow_mut()),
            measured_deliveries: self.measured.get(),
            answer_gap_ns_max: self.answer_gap_ns_max.get(),
        }
    }
}

/// Latencies of one second of sending, to two significant digits: one
/// such histogram a second is kept, so smaller than the run's.
pub(super) fn second_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("valid bounds")
}

/// Runs phones `range` (of `threads` threads) from sign-up until the main
/// thread says the run is finished.
pub(super) async fn run_thread(
    args: Args,
    first: u64,
    range: std::ops::Range<usize>,
    threads: usize,
    shared: Arc<Shared>,
    epoch: Instant,
    dialer: Dialer,
) -> anyhow::Result<ThreadResult> {
    let thread = Thread::new(args, first, shared.clone(), epoch, dialer, range.start);
    let thread = Rc::new(thread);
    let connected = sign_up(&thread, range).await;
    // Every thread waits for every phone, so nobody sends to a phone that
    // does not exist yet.
    while shared.logged_in.load(Relaxed) + (shared.connect_failures.load(Relaxed) as usize)
        < thread.args.phones
    {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let start_ns = thread.now_ns();
    thread.start_ns.set(start_ns);
    *thread.by_second.borrow_mut() = (0..thread.args.duration.ceil() as usize)
        .map(|_| second_histogram())
        .collect();
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
    let now = thread.now_ns();
    for phone in &all_phones {
        // A phone still waiting at the end has waited until now.
        if !phone.in_flight.borrow().is_empty() {
            thread.note_answer_gap(now.saturating_sub(phone.answer_mark_ns.get()));
        }
        phone.wake();
    }
    drop(tasks);
    Ok(thread.result())
}

/// Signs up and logs in phones `range`, a bounded number at a time; a
/// phone that cannot connect keeps trying for `connect_patience` seconds.
/// The phones that made it, each with its connection.
async fn sign_up(
    thread: &Rc<Thread>,
    range: std::ops::Range<usize>,
) -> Vec<(Rc<PhoneState>, Connection)> {
    let permits = Rc::new(glommio::sync::Semaphore::new(
        thread.args.connect.connect_concurrency as u64,
    ));
    let mut joins = Vec::new();
    for index in range {
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
                    thread.logged_in_at(&phone, connection.server);
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
    connected
}
