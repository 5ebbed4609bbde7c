//! One shard's executor: its listeners, its connections, its links to the
//! other shards, and the glue that feeds them all through the sans-IO
//! [`shard::Shard`].
//!
//! Everything here runs on one glommio executor pinned to one core. State is
//! in `Rc`/`RefCell`; nothing is shared with other threads except the bounded
//! SPSC queues to other shards.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd},
    pin::Pin,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use ahash::AHashMap;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::{
    net::{TcpListener, TcpStream},
    Latency, Shares, TaskQueueHandle,
};
use rustls::{ServerConfig, ServerConnection};
use shard::{ClockNote, ConnId, ConnSnapshot, FrameOutcome, PeerMessage, Shard, Source};
use storage::{
    log::{checkpoint, glommio_disk::GlommioDisk, Log, LogConfig},
    Journal, JournalError, JournalStats, MemoryJournal, Record,
};
use wire::{decode_client, split_frame, ErrorKind, FrameError, FRAME_BYTES_MAX};

use crate::{peer_queue, transport::Transport};

/// Bytes read from a socket per call, into the shard's one scratch buffer:
/// an idle connection holds no read buffer at all.
const READ_SCRATCH_BYTES: usize = 64 * 1024;
/// How long a closing connection keeps reading (and discarding) so that its
/// last frames are not destroyed by a reset.
const LINGER_MS: u64 = 1_000;

/// Closed connections a shard lets linger at once (see `ConnTask::linger`),
/// and never more than a quarter of its places for anonymous connections.
const LINGERING_MAX: usize = 64;

/// What crosses from one shard to another, in batches.
pub enum Mail {
    Peer(PeerMessage),
    /// A connection moving to its home shard: the socket, its TLS state, and
    /// the bytes already read but not yet handled (starting with the frame
    /// that caused the move).
    Adopt {
        fd: OwnedFd,
        tls: Option<Box<ServerConnection>>,
        snapshot: ConnSnapshot,
        pending: Vec<u8>,
    },
}

pub type Batch = Vec<Mail>;

/// The ends of the queues one shard owns: a sender to every other shard and a
/// receiver from every other shard (`None` at its own index).
pub struct PeerEnds {
    pub senders: Vec<Option<peer_queue::Sender<Batch>>>,
    pub receivers: Vec<Option<peer_queue::Receiver<Batch>>>,
}

pub struct Listeners {
    pub tls: Option<OwnedFd>,
    pub plain: Option<OwnedFd>,
}

/// A wake-up for one task on this executor.
#[derive(Default)]
struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn raise(&self) {
        self.raised.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    fn wait(&self) -> impl Future<Output = ()> + '_ {
        futures_lite::future::poll_fn(move |cx| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// The outgoing side of one (this shard, destination) queue.
#[derive(Default)]
struct Link {
    staging: RefCell<Vec<Mail>>,
    signal: Signal,
    /// Connections paused because this link is over its staging limit. Each
    /// registers at most once per drain, so the list never holds more than
    /// one waker per connection.
    blocked: RefCell<Vec<Waker>>,
    /// How many times `blocked` has been drained.
    drains: Cell<u64>,
}

pub struct Runtime {
    shard_id: u16,
    core: RefCell<Shard>,
    commit_signal: Signal,
    links: Vec<Link>,
    wakers: RefCell<AHashMap<ConnId, Waker>>,
    scratch: RefCell<Vec<u8>>,
    woken: RefCell<Vec<ConnId>>,
    started: Instant,
    staging_max: usize,
    stopping: Cell<bool>,
    /// Connection tasks alive on this shard.
    live_tasks: Cell<usize>,
    /// Commits begun and finished (or given up on, once the journal failed).
    commits_started: Cell<u64>,
    commits_done: Cell<u64>,
    /// The commit in flight is waiting to be retried (a full disk, a
    /// resource short): connections stop holding their bytes for it.
    commit_stalled: Cell<bool>,
    /// Closed sockets still lingering (`LINGERING_MAX` at most).
    lingering: Cell<usize>,
    /// Connections holding their bytes until a commit finishes; drained
    /// (and woken) after every commit, each task on it at most once.
    holding: RefCell<Vec<Waker>>,
    /// A checkpoint written off the executor, reported back to the commit
    /// task: the batch it covers, or why it failed.
    checkpoint_written: RefCell<Option<Result<CheckpointWritten, String>>>,
    /// The journal's own counters as of the last commit.
    journal_stats: Cell<JournalStats>,
}

struct CheckpointWritten {
    batch: u64,
    records: usize,
    bytes: u64,
    started: Instant,
}

/// When and where the commit task writes checkpoints.
struct CheckpointPlan {
    dir: std::path::PathBuf,
    shard: u16,
    shard_count: u16,
    /// Closed segments that call for one.
    segments: usize,
}

impl Runtime {
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Moves the shard's outputs to where they go: peer messages to their
    /// links, wake-ups to connection tasks, records to the committer.
    /// Returns a destination over its staging limit, if this call fed one.
    fn after_core(&self) -> Option<u16> {
        let mut congested = None;
        let mut woken = self.woken.borrow_mut();
        {
            let mut core = self.core.borrow_mut();
            let mut signals_dropped = 0;
            for (destination, message) in core.drain_peer_messages() {
                let link = &self.links[destination as usize];
                let mut staging = link.staging.borrow_mut();
                // Presence and typing give way early, at a quarter of the
                // bound, so that a storm of them never delays a message.
                if message.is_signal() && staging.len() >= self.staging_max / 4 {
                    signals_dropped += 1;
                    continue;
                }
                staging.push(Mail::Peer(message));
                if staging.len() > self.staging_max {
                    congested = Some(destination);
                }
                link.signal.raise();
            }
            if signals_dropped > 0 {
                core.signals_dropped(signals_dropped);
            }
            woken.extend(core.drain_woken());
            if core.has_pending_records() {
                self.commit_signal.raise();
            }
        }
        let wakers = self.wakers.borrow();
        for id in woken.drain(..) {
            if let Some(waker) = wakers.get(&id) {
                waker.wake_by_ref();
            }
        }
        congested
    }

    /// The commit that makes durable everything recorded so far: the next
    /// one if records wait, else the one in flight (done already if none).
    fn commit_covering_now(&self) -> u64 {
        if self.core.borrow().awaits_next_commit() {
            self.commits_started.get() + 1
        } else {
            self.commits_started.get()
        }
    }

    /// The commit in flight cannot finish for now: connections holding
    /// their bytes for it write them.
    fn commit_stalls(&self) {
        if !self.commit_stalled.replace(true) {
            for waker in self.holding.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }

    fn commit_finished(&self) {
        self.commits_done.set(self.commits_done.get() + 1);
        for waker in self.holding.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    fn link_congested(&self, destination: u16) -> bool {
        self.links[destination as usize].staging.borrow().len() > self.staging_max
    }
}

/// Where a shard's commits go.
pub struct StorageSetup {
    pub journal: crate::config::JournalKind,
    /// The shard's log directory (segments and checkpoints).
    pub dir: std::path::PathBuf,
    /// Closed segments that call for a checkpoint.
    pub checkpoint_segments: usize,
    pub log: LogConfig,
}

pub struct ShardSetup {
    pub shard: Shard,
    pub storage: StorageSetup,
    /// Told once, when the shard has replayed its log (a line for the
    /// server's log) or failed to (why).
    pub recovered: std::sync::mpsc::Sender<Result<String, String>>,
    pub peers: PeerEnds,
    pub listeners: Listeners,
    pub tls: Option<Arc<ServerConfig>>,
    pub limits: crate::config::Limits,
    pub stop: Arc<AtomicBool>,
    pub started: Instant,
    /// Push tokens the gateway refused, for accounts of this shard.
    pub push_rejected: crossbeam_channel::Receiver<crate::push::Rejected>,
}

/// Runs one shard until `stop` is raised and its connections are closed.
pub async fn run(setup: ShardSetup) {
    let ShardSetup {
        mut shard,
        storage,
        recovered,
        peers,
        listeners,
        tls,
        limits,
        stop,
        started,
        push_rejected,
    } = setup;
    let shard_id = shard.config().shard_id;
    let journal = match open_journal(&mut shard, &storage).await {
        Ok((journal, report)) => {
            let _ = recovered.send(Ok(report));
            journal
        }
        Err(error) => {
            let _ = recovered.send(Err(format!("shard {shard_id}: {error:#}")));
            return;
        }
    };
    log_clock_notes(shard_id, &mut shard);
    let tick_ms = shard.config().tick_ms;
    let shard_count = peers.senders.len();
    let runtime = Rc::new(Runtime {
        shard_id,
        core: RefCell::new(shard),
        commit_signal: Signal::default(),
        links: (0..shard_count).map(|_| Link::default()).collect(),
        wakers: RefCell::new(AHashMap::new()),
        scratch: RefCell::new(vec![0; READ_SCRATCH_BYTES]),
        woken: RefCell::new(Vec::new()),
        started,
        staging_max: limits.peer_staging_messages_max,
        stopping: Cell::new(false),
        live_tasks: Cell::new(0),
        commits_started: Cell::new(0),
        commits_done: Cell::new(0),
        holding: RefCell::new(Vec::new()),
        commit_stalled: Cell::new(false),
        lingering: Cell::new(0),
        checkpoint_written: RefCell::new(None),
        journal_stats: Cell::new(JournalStats::default()),
    });
    let plan = CheckpointPlan {
        dir: storage.dir.clone(),
        shard: storage.log.shard,
        shard_count: storage.log.shard_count,
        segments: storage.checkpoint_segments,
    };

    // Queues that other executors wake must be latency-sensitive, or their
    // wake-ups wait for the scheduler's next time slice.
    let peer_queue = glommio::executor().create_task_queue(
        Shares::default(),
        Latency::Matters(Duration::from_micros(500)),
        "peers",
    );

    let mut tasks = Vec::new();
    for (destination, sender) in peers.senders.into_iter().enumerate() {
        if let Some(sender) = sender {
            let runtime = runtime.clone();
            tasks.push(spawn_in(peer_queue, forward(runtime, destination, sender)));
        }
    }
    for receiver in peers.receivers.into_iter().flatten() {
        let runtime = runtime.clone();
        tasks.push(spawn_in(peer_queue, receive(runtime, receiver)));
    }
    tasks.push(match journal {
        ShardJournal::Log(log) => {
            glommio::spawn_local(commit(runtime.clone(), *log, plan)).detach()
        }
        ShardJournal::Memory(memory) => {
            glommio::spawn_local(commit(runtime.clone(), memory, plan)).detach()
        }
    });
    for (fd, tls) in [(listeners.tls, tls), (listeners.plain, None)] {
        if let Some(fd) = fd {
            // SAFETY: the fd is a bound, listening TCP socket we own.
            let listener = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
            tasks.push(glommio::spawn_local(accept(runtime.clone(), listener, tls)).detach());
        }
    }

    // The tick: one runtime timer per shard drives the shard's own wheel.
    let tick = Duration::from_millis(tick_ms);
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(tick).await;
        {
            let mut core = runtime.core.borrow_mut();
            let now_ms = runtime.now_ms();
            core.observe_wall_clock(unix_ms(), now_ms);
            log_clock_notes(runtime.shard_id, &mut core);
            core.tick(now_ms);
            for (phone, token) in push_rejected.try_iter() {
                core.push_rejected(phone, &token);
            }
        }
        runtime.after_core();
    }

    // Drain: tell every phone, give the writes a moment, then leave.
    runtime.stopping.set(true);
    runtime.core.borrow_mut().close_all();
    runtime.after_core();
    let deadline = Instant::now() + STOP_CONNECTIONS_WAIT;
    // Connections to close, and records (the write-back cache, written out
    // by `close_all`) to commit: taken by the commit task is not written,
    // so the commit in flight counts too.
    let unwritten = || {
        runtime.core.borrow().has_pending_records()
            || runtime.commits_done.get() < runtime.commits_started.get()
    };
    let busy = || runtime.live_tasks.get() > 0 || unwritten();
    while busy() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    // What phones were told is stored must be on disk before the process
    // ends: wait longer for the commits alone, and say so if they do not
    // finish (a full disk, say).
    let deadline = Instant::now() + STOP_COMMITS_WAIT;
    while unwritten() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    if unwritten() {
        log::error!(
            "shard {shard_id}: stopping with records not yet written after {} s; what the \
             write-back cache held since the last commit is lost",
            STOP_COMMITS_WAIT.as_secs()
        );
    }
    let counters = runtime.core.borrow().counters();
    let journal = runtime.journal_stats.get();
    log::info!("shard {shard_id} stopped: {counters:?}; journal {journal:?}");
    drop(tasks);
}

pub(crate) enum ShardJournal {
    Log(Box<Log<GlommioDisk>>),
    Memory(MemoryJournal),
}

/// Opens the shard's journal and replays it into `shard`.
pub(crate) async fn open_journal(
    shard: &mut Shard,
    storage: &StorageSetup,
) -> anyhow::Result<(ShardJournal, String)> {
    use crate::config::JournalKind;
    let shard_id = shard.config().shard_id;
    if storage.journal == JournalKind::Memory {
        let report = format!("shard {shard_id}: in-memory journal, nothing to replay");
        return Ok((ShardJournal::Memory(MemoryJournal::default()), report));
    }
    let started = Instant::now();
    let disk = GlommioDisk::open(&storage.dir)
        .await
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", storage.dir.display()))?;
    let mut restore_error = None;
    let mut restore = |record| {
        if restore_error.is_none() {
            restore_error = shard.restore(record).err();
        }
    };
    // Startup, before any connection: blocking reads cost nobody.
    let config = storage.log;
    let checkpoint = checkpoint::load(&storage.dir, config.shard, config.shard_count, &mut restore)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let after = checkpoint.map_or(0, |c| c.batch);
    let (log, recovery) = Log::open_after(disk, config, after, &mut restore)
        .await
        .map_err(|e| anyhow::anyhow!("log {}: {e}", storage.dir.display()))?;
    if let Some(error) = restore_error {
        anyhow::bail!("log {}: {error}", storage.dir.display());
    }
    shard.restored();
    for salvaged in &recovery.salvaged {
        log::error!("shard {shard_id}: salvaged past damage in {salvaged}");
    }
    if let Some((segment, offset)) = recovery.torn_tail {
        log::warn!("shard {shard_id}: cut a torn write at segment {segment} byte {offset}");
    }
    let (entries, bytes) = shard.queued();
    let from_checkpoint = match checkpoint {
        Some(c) => format!(
            "a checkpoint of {} records (to batch {}) and ",
            c.records, c.batch
        ),
        None => String::new(),
    };
    let report = format!(
        "shard {shard_id}: replayed {from_checkpoint}{} records in {} batches from {} segments \
         in {:.3} s; {entries} mailbox entries ({bytes} body bytes) queued",
        recovery.records,
        recovery.batches,
        recovery.segments,
        started.elapsed().as_secs_f64()
    );
    Ok((ShardJournal::Log(Box::new(log)), report))
}

fn spawn_in<F: Future<Output = ()> + 'static>(
    queue: TaskQueueHandle,
    future: F,
) -> glommio::task::JoinHandle<()> {
    glommio::spawn_local_into(future, queue)
        .expect("the peer task queue exists")
        .detach()
}

/// The first wait after a failed accept, and the longest: out of file
/// descriptors, the shard waits for connections to close, doubling the
/// wait, instead of spinning on the same error.
const ACCEPT_BACKOFF_MIN_MS: u64 = 10;
const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;

async fn accept(runtime: Rc<Runtime>, listener: TcpListener, tls: Option<Arc<ServerConfig>>) {
    let mut failing = AcceptFailures::default();
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                let wait_ms = failing.failed(runtime.shard_id, &error);
                glommio::timer::sleep(Duration::from_millis(wait_ms)).await;
                continue;
            }
        };
        failing.recovered(runtime.shard_id);
        if runtime.stopping.get() {
            return;
        }
        let source = match stream.peer_addr() {
            Ok(addr) => Source::new(addr.ip()),
            // Already reset by the peer: nothing to serve.
            Err(_) => continue,
        };
        let opened = runtime.core.borrow_mut().open(source, runtime.now_ms());
        let Ok(id) = opened else {
            // Closed unread: too many connections that have not logged in
            // (counted in `connections_refused`).
            continue;
        };
        let _ = stream.set_nodelay(true);
        let transport = match &tls {
            Some(config) => match ServerConnection::new(config.clone()) {
                Ok(connection) => Transport::Tls(Box::new(connection)),
                Err(error) => {
                    log::warn!("TLS session setup failed: {error}");
                    runtime.core.borrow_mut().closed(id, runtime.now_ms());
                    runtime.after_core();
                    continue;
                }
            },
            None => Transport::Plain,
        };
        spawn_connection(&runtime, id, stream, transport, Vec::new());
    }
}

/// A listener's run of failed accepts: one warning when it starts, one
/// line when it ends, and a doubling wait in between, however long the
/// run (usually EMFILE: the process is out of file descriptors).
#[derive(Default)]
struct AcceptFailures {
    count: u64,
    wait_ms: u64,
    since: Option<Instant>,
}

impl AcceptFailures {
    /// Notes a failure; returns how long to wait before the next accept.
    fn failed(&mut self, shard: u16, error: &dyn std::fmt::Display) -> u64 {
        if self.count == 0 {
            log::warn!(
                "shard {shard}: accept failed ({error}); backing off up to \
                 {ACCEPT_BACKOFF_MAX_MS} ms until it works again"
            );
            self.since = Some(Instant::now());
            self.wait_ms = ACCEPT_BACKOFF_MIN_MS;
        } else {
            self.wait_ms = (self.wait_ms * 2).min(ACCEPT_BACKOFF_MAX_MS);
        }
        self.count += 1;
        self.wait_ms
    }

    fn recovered(&mut self, shard: u16) {
        if self.count > 0 {
            let ms = self.since.map_or(0, |t| t.elapsed().as_millis());
            log::warn!(
                "shard {shard}: accepting again after {} failed accepts over {ms} ms",
                self.count
            );
            *self = AcceptFailures::default();
        }
    }
}

fn spawn_connection(
    runtime: &Rc<Runtime>,
    id: ConnId,
    stream: TcpStream,
    transport: Transport,
    pending: Vec<u8>,
) {
    runtime.live_tasks.set(runtime.live_tasks.get() + 1);
    let task = ConnTask {
        runtime: runtime.clone(),
        id,
        stream: Some(stream),
        transport: Some(transport),
        replay: !pending.is_empty(),
        inbox: pending,
        tx: Vec::new(),
        tx_written: 0,
        polls: 0,
        flush_after: None,
        hold_until: None,
        held_at: None,
        handover_to: None,
        paused_on: None,
        blocked_at: None,
    };
    glommio::spawn_local(task).detach();
}

/// Sends staged mail to one other shard, a batch at a time. While the queue
/// is full this task waits; only connections feeding this destination pause.
async fn forward(runtime: Rc<Runtime>, destination: usize, sender: peer_queue::Sender<Batch>) {
    let link = &runtime.links[destination];
    loop {
        link.signal.wait().await;
        loop {
            let batch = std::mem::take(&mut *link.staging.borrow_mut());
            if batch.is_empty() {
                break;
            }
            if sender.send(batch).await.is_err() {
                // The destination shard has stopped; nothing more can reach it.
                return;
            }
            if link.staging.borrow().len() <= runtime.staging_max {
                link.drains.set(link.drains.get() + 1);
                for waker in link.blocked.borrow_mut().drain(..) {
                    waker.wake();
                }
            }
        }
    }
}

async fn receive(runtime: Rc<Runtime>, receiver: peer_queue::Receiver<Batch>) {
    while let Some(batch) = receiver.recv().await {
        for mail in batch {
            match mail {
                Mail::Peer(message) => runtime
                    .core
                    .borrow_mut()
                    .handle_peer(message, runtime.now_ms()),
                Mail::Adopt {
                    fd,
                    tls,
                    snapshot,
                    pending,
                } => {
                    // SAFETY: the fd is a connected TCP socket whose only
                    // other owner closed its copy before sending this one.
                    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
                    let adopted = runtime.core.borrow_mut().adopt(snapshot, runtime.now_ms());
                    // Refused (too many anonymous connections here): the
                    // stream closes as it drops.
                    if let Ok(id) = adopted {
                        let transport = tls.map_or(Transport::Plain, Transport::Tls);
                        spawn_connection(&runtime, id, stream, transport, pending);
                    }
                }
            }
        }
        runtime.after_core();
    }
}

/// Group commit: everything the shard produced since the last commit goes to
/// the journal as one batch, and the replies that waited for it are released.
///
/// Once enough segments are closed, the shard's state is captured as
/// records right after a batch is taken (so it is exactly the state that
/// batch leaves), written to a checkpoint file on a blocking thread while
/// commits go on, and the segments it covers are then deleted.
async fn commit(runtime: Rc<Runtime>, mut journal: impl Journal, plan: CheckpointPlan) {
    let mut checkpointing = false;
    // After a failed checkpoint (a full disk, say), the next waits a while
    // rather than snapshotting the shard on every commit.
    let mut checkpoint_not_before = Instant::now();
    // A disk found full at start refuses messages from the first one on,
    // rather than taking one into a commit that cannot be written.
    note_disk_full(&runtime, journal.disk_full());
    loop {
        if runtime.core.borrow().is_disk_full() {
            // Look again now and then: space may have been freed.
            futures_lite::future::or(runtime.commit_signal.wait(), async {
                glommio::timer::sleep(DISK_FULL_CHECK).await;
            })
            .await;
        } else {
            runtime.commit_signal.wait().await;
        }
        note_disk_full(&runtime, journal.disk_full());
        let written = runtime.checkpoint_written.borrow_mut().take();
        if let Some(written) = written {
            checkpointing = false;
            if !finish_checkpoint(&runtime, &mut journal, &plan, written).await {
                checkpoint_not_before = Instant::now() + CHECKPOINT_RETRY;
            }
        }
        let due = !checkpointing
            && journal.closed_segments() >= plan.segments
            && Instant::now() >= checkpoint_not_before;
        let (batch, records) = runtime.core.borrow_mut().take_records();
        let snapshot = due.then(|| runtime.core.borrow_mut().checkpoint());
        runtime
            .commits_started
            .set(runtime.commits_started.get() + 1);
        let mut result = journal.commit(&records).await;
        loop {
            // Nothing of the batch was written and the log is intact: the
            // same records go again once there is room (or the resource
            // it lacked). Its replies wait; meanwhile no new message is
            // accepted, so only acks pile up.
            match &result {
                Err(JournalError::NoSpace) => note_disk_full(&runtime, true),
                Err(JournalError::Unavailable(reason)) => {
                    note_storage_unavailable(&runtime, Some(reason));
                }
                _ => break,
            }
            runtime.commit_stalls();
            glommio::timer::sleep(DISK_FULL_CHECK).await;
            result = journal.commit(&records).await;
        }
        runtime.commit_stalled.set(false);
        if result.is_ok() {
            note_storage_unavailable(&runtime, None);
        }
        match result {
            Ok(()) => {
                let mut core = runtime.core.borrow_mut();
                core.committed(batch);
                core.recycle_records(records);
                drop(core);
                runtime.commit_finished();
                runtime.journal_stats.set(journal.stats());
                runtime.after_core();
                if let Some(snapshot) = snapshot {
                    checkpointing = true;
                    start_checkpoint(&runtime, &plan, journal.last_batch(), snapshot);
                }
            }
            Err(error) => {
                // Without durability nothing may be acknowledged again: the
                // shard refuses sends and signups from now on, and what it
                // still records is dropped here rather than piling up.
                log::error!(
                    "shard {}: {error}; refusing new messages and signups until restarted",
                    runtime.shard_id
                );
                runtime.core.borrow_mut().journal_failed();
                runtime.commit_finished();
                runtime.after_core();
                loop {
                    runtime.commit_signal.wait().await;
                    runtime
                        .commits_started
                        .set(runtime.commits_started.get() + 1);
                    let (_, records) = runtime.core.borrow_mut().take_records();
                    drop(records);
                    runtime.commit_finished();
                }
            }
        }
    }
}

/// The system's wall clock, in Unix ms (0 before 1970).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Tells the operator what the shard made of the wall clock: a clock in
/// doubt holds expiry, loudly, until it is trusted.
fn log_clock_notes(shard_id: u16, shard: &mut Shard) {
    while let Some(note) = shard.take_clock_note() {
        match note {
            ClockNote::InDoubt { ahead_ms, at_start } => log::error!(
                "shard {shard_id}: the wall clock is {} {} the time {}; nothing expires \
                 until it is trusted: once it keeps step for [clock] settle_ms, what was \
                 queued before counts its age from the step; or start once with \
                 --clock-confirmed if this clock is right, and ages count by it (what it \
                 makes older than the retention then expires at once)",
                human_ms(ahead_ms.unsigned_abs()),
                if ahead_ms >= 0 { "ahead of" } else { "behind" },
                if at_start {
                    "the log last recorded"
                } else {
                    "the monotonic clock expected"
                },
            ),
            ClockNote::Accepted {
                confirmed,
                floor_ms,
            } => log::warn!(
                "shard {shard_id}: the wall clock is trusted again ({}){}",
                if confirmed {
                    "--clock-confirmed"
                } else {
                    "it kept step"
                },
                match floor_ms {
                    Some(floor) => format!(
                        "; what was queued before the step counts its age from {floor} (Unix ms)"
                    ),
                    None => String::new(),
                }
            ),
        }
    }
}

/// `ms` for a log line: days, hours, minutes or seconds.
fn human_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "days"),
        (3_600_000, "hours"),
        (60_000, "minutes"),
        (1_000, "s"),
    ];
    for (unit, name) in UNITS {
        if ms >= unit {
            return format!("{:.1} {name}", ms as f64 / unit as f64);
        }
    }
    format!("{ms} ms")
}

/// How long a stopping shard waits for its connections to take their last
/// bytes, and then for its last commits.
const STOP_CONNECTIONS_WAIT: Duration = Duration::from_secs(2);
const STOP_COMMITS_WAIT: Duration = Duration::from_secs(30);

/// How long after a failed checkpoint the next is tried.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(10);

/// How often a full disk is looked at again.
const DISK_FULL_CHECK: Duration = Duration::from_secs(1);

/// Tells the shard (and the operator) when the journal runs short of a
/// resource other than space (`reason`), or has it again (`None`).
fn note_storage_unavailable(runtime: &Runtime, reason: Option<&std::io::Error>) {
    let mut core = runtime.core.borrow_mut();
    if core.is_storage_unavailable() == reason.is_some() {
        return;
    }
    core.set_storage_unavailable(reason.is_some());
    match reason {
        Some(reason) => log::warn!(
            "shard {}: {reason}; refusing new messages and signups (Overloaded) and \
             trying again every {} ms",
            runtime.shard_id,
            DISK_FULL_CHECK.as_millis()
        ),
        None => log::warn!(
            "shard {}: the journal has what it needs again; accepting messages",
            runtime.shard_id
        ),
    }
}

/// Tells the shard (and the operator) when the disk fills up or has room
/// again.
fn note_disk_full(runtime: &Runtime, full: bool) {
    let mut core = runtime.core.borrow_mut();
    if core.is_disk_full() == full {
        return;
    }
    core.set_disk_full(full);
    if full {
        log::error!(
            "shard {}: the disk has no room for another log segment; refusing new \
             messages and signups until it has (acknowledgements go on)",
            runtime.shard_id
        );
    } else {
        log::warn!(
            "shard {}: the disk has room again; accepting messages",
            runtime.shard_id
        );
    }
}

/// Writes `snapshot`, the state after log batch `batch`, on a blocking
/// thread; the commit task hears of the result through the runtime.
fn start_checkpoint(
    runtime: &Rc<Runtime>,
    plan: &CheckpointPlan,
    batch: u64,
    snapshot: Vec<Record>,
) {
    let runtime = runtime.clone();
    let dir = plan.dir.clone();
    let (shard, shard_count) = (plan.shard, plan.shard_count);
    glommio::spawn_local(async move {
        let started = Instant::now();
        let records = snapshot.len();
        let result = glommio::executor()
            .spawn_blocking(move || checkpoint::write(&dir, shard, shard_count, batch, &snapshot))
            .await;
        *runtime.checkpoint_written.borrow_mut() = Some(match result {
            Ok(bytes) => Ok(CheckpointWritten {
                batch,
                records,
                bytes,
                started,
            }),
            Err(error) => Err(error.to_string()),
        });
        runtime.commit_signal.raise();
    })
    .detach();
}

/// A checkpoint is durable: the segments and older checkpoints it covers
/// go. A failure here costs disk space, not data, so it is only logged
/// (a later checkpoint tries again). False when something failed.
async fn finish_checkpoint(
    runtime: &Runtime,
    journal: &mut impl Journal,
    plan: &CheckpointPlan,
    written: Result<CheckpointWritten, String>,
) -> bool {
    let shard = runtime.shard_id;
    let written = match written {
        Ok(written) => written,
        Err(error) => {
            log::error!("shard {shard}: writing a checkpoint failed: {error}");
            return false;
        }
    };
    let removed = match journal.remove_through(written.batch).await {
        Ok(removed) => removed,
        Err(error) => {
            log::error!("shard {shard}: deleting segments a checkpoint covers: {error}");
            return false;
        }
    };
    if let Err(error) = checkpoint::remove_older(&plan.dir, written.batch) {
        log::error!("shard {shard}: deleting old checkpoints: {error}");
    }
    runtime.core.borrow_mut().checkpoint_finished();
    log::info!(
        "shard {shard}: checkpoint after batch {}: {} records, {} bytes in {:.3} s; \
         {removed} segments deleted",
        written.batch,
        written.records,
        written.bytes,
        written.started.elapsed().as_secs_f64()
    );
    true
}

/// One connection: reads frames into the shard, writes its outbox out.
struct ConnTask {
    runtime: Rc<Runtime>,
    id: ConnId,
    stream: Option<TcpStream>,
    transport: Option<Transport>,
    /// Plaintext read but not yet handled: a partial frame, or frames that
    /// wait for a handover. Empty (and unallocated) while idle.
    inbox: Vec<u8>,
    /// Handle `inbox` before reading: it holds frames from another shard.
    replay: bool,
    /// Bytes for the socket, and how many of them are written.
    tx: Vec<u8>,
    tx_written: usize,
    /// Times this task has been polled.
    polls: u64,
    /// Set to `polls` when outbox bytes were first seen: they are written on
    /// a later poll, after the tasks already queued this round have run and
    /// perhaps added more for this phone, so that one send carries them all.
    flush_after: Option<u64>,
    /// Set when outbox bytes were first seen while a commit was pending or
    /// in flight: they wait for that commit, so that the `Sent` replies it
    /// releases leave in the same write as the deliveries.
    hold_until: Option<u64>,
    /// `commits_done` when this task's waker went on the holding list.
    held_at: Option<u64>,
    handover_to: Option<u16>,
    paused_on: Option<u16>,
    /// The drain count of `paused_on`'s link when this task's waker went on
    /// its blocked list.
    blocked_at: Option<u64>,
}

enum Step {
    Progress,
    Idle,
    Done,
}

impl Future for ConnTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.polls += 1;
        {
            let mut wakers = this.runtime.wakers.borrow_mut();
            let entry = wakers.entry(this.id).or_insert_with(|| cx.waker().clone());
            if !entry.will_wake(cx.waker()) {
                *entry = cx.waker().clone();
            }
        }
        loop {
            let step = this.step(cx);
            match step {
                Step::Progress => continue,
                Step::Idle => return Poll::Pending,
                Step::Done => {
                    this.finish();
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl ConnTask {
    fn step(&mut self, cx: &mut Context<'_>) -> Step {
        if self.runtime.core.borrow().is_abandoned(self.id) {
            // Closing, and the phone did not take its last bytes in time.
            return Step::Done;
        }
        let mut progress = false;
        match self.write(cx) {
            Err(()) => return Step::Done,
            Ok(wrote) => progress |= wrote,
        }
        let all_written =
            self.tx_written == self.tx.len() && self.runtime.core.borrow().outbox_len(self.id) == 0;
        if all_written {
            if let Some(shard) = self.handover_to {
                self.hand_over(shard);
                return Step::Done;
            }
            if self.runtime.core.borrow().is_closing(self.id) {
                self.linger();
                return Step::Done;
            }
        }
        let wants_input =
            self.handover_to.is_none() && self.runtime.core.borrow().wants_input(self.id);
        if self.replay && wants_input {
            self.replay = false;
            let inbox = std::mem::take(&mut self.inbox);
            self.handle_bytes(&inbox);
            return Step::Progress;
        }
        if let Some(destination) = self.paused_on {
            let link = &self.runtime.links[destination as usize];
            if self.runtime.link_congested(destination) {
                // Polled again while paused (say, to write a delivery): the
                // waker is already on the list unless it was drained since.
                if self.blocked_at != Some(link.drains.get()) {
                    link.blocked.borrow_mut().push(cx.waker().clone());
                    self.blocked_at = Some(link.drains.get());
                }
                return if progress { Step::Progress } else { Step::Idle };
            }
            self.paused_on = None;
            self.blocked_at = None;
        }
        if wants_input {
            let runtime = self.runtime.clone();
            let mut scratch = runtime.scratch.borrow_mut();
            let stream = self.stream.as_mut().expect("present until done");
            match Pin::new(stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Step::Done,
                Poll::Ready(Ok(n)) => {
                    let closed = self.ingest(&scratch[..n]);
                    if closed {
                        return Step::Done;
                    }
                    progress = true;
                }
                Poll::Pending => {}
            }
        }
        if progress {
            Step::Progress
        } else {
            Step::Idle
        }
    }

    /// Decrypts (if TLS) and handles socket bytes. Returns true when the
    /// connection must end now.
    fn ingest(&mut self, bytes: &[u8]) -> bool {
        let transport = self.transport.as_mut().expect("present until done");
        if matches!(transport, Transport::Plain) && self.inbox.is_empty() {
            // The common case: whole frames straight from the scratch buffer.
            self.handle_bytes(bytes);
            return false;
        }
        let mut inbox = std::mem::take(&mut self.inbox);
        match transport.ingest(bytes, &mut inbox) {
            Ok(peer_closed) => {
                self.handle_bytes(&inbox);
                peer_closed
            }
            Err(error) => {
                log::debug!("closing a connection: {error}");
                true
            }
        }
    }

    /// Handles every whole frame in `bytes`; keeps the rest in `inbox`.
    fn handle_bytes(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        let runtime = self.runtime.clone();
        loop {
            if self.handover_to.is_some() || !runtime.core.borrow().wants_input(self.id) {
                // Moving away, closing, or the reply backlog is over its
                // limit: keep the rest for later.
                break;
            }
            let raw = match split_frame(rest, FRAME_BYTES_MAX) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(error) => {
                    let kind = match error {
                        FrameError::TooLarge { .. } => ErrorKind::FrameTooLarge,
                        FrameError::Empty => ErrorKind::Malformed,
                    };
                    runtime
                        .core
                        .borrow_mut()
                        .protocol_error(self.id, kind, error.to_string());
                    rest = &[];
                    break;
                }
            };
            let frame = match decode_client(raw.payload) {
                Ok(frame) => frame,
                Err(error) => {
                    runtime.core.borrow_mut().protocol_error(
                        self.id,
                        ErrorKind::Malformed,
                        error.to_string(),
                    );
                    rest = &[];
                    break;
                }
            };
            let outcome = runtime
                .core
                .borrow_mut()
                .handle_frame(self.id, frame, runtime.now_ms());
            match outcome {
                FrameOutcome::Continue => rest = &rest[raw.consumed..],
                FrameOutcome::HandOver { shard } => self.handover_to = Some(shard),
            }
        }
        self.inbox.clear();
        self.inbox.extend_from_slice(rest);
        if self.inbox.is_empty() {
            self.inbox = Vec::new();
        } else if !self.replay {
            // Frames left because of backpressure are handled again once the
            // outbox drains.
            self.replay = self.handover_to.is_none()
                && split_frame(rest, FRAME_BYTES_MAX).ok().flatten().is_some();
        }
        if let Some(destination) = runtime.after_core() {
            self.paused_on = Some(destination);
        }
    }

    /// Writes pending bytes; refills from the outbox. Err when the socket failed.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        let mut progress = false;
        loop {
            if self.tx_written == self.tx.len() {
                let outbox_len = self.runtime.core.borrow().outbox_len(self.id);
                let transport = self.transport.as_mut().expect("present until done");
                if outbox_len == 0 && !transport.wants_write() {
                    if self.tx.capacity() > 0 {
                        self.tx = Vec::new();
                        self.tx_written = 0;
                    }
                    return Ok(progress);
                }
                let runtime = &self.runtime;
                let done = runtime.commits_done.get();
                // While the commit waits for the disk (or a resource), what
                // the outbox holds promises nothing durable (`Sent` waits
                // in the shard): it goes out rather than wait with it.
                let needed = match runtime.commit_stalled.get() {
                    true => 0,
                    false => *self
                        .hold_until
                        .get_or_insert_with(|| runtime.commit_covering_now()),
                };
                if needed > done {
                    if self.held_at != Some(done) {
                        runtime.holding.borrow_mut().push(cx.waker().clone());
                        self.held_at = Some(done);
                    }
                    return Ok(progress);
                }
                let waited = needed > 0 && self.held_at.is_some();
                self.hold_until = None;
                self.held_at = None;
                match self.flush_after {
                    _ if waited => self.flush_after = None,
                    Some(poll) if poll < self.polls => self.flush_after = None,
                    Some(_) => return Ok(progress),
                    None => {
                        // Go to the back of the run queue once; the outbox
                        // stays in the shard, so it can still grow.
                        self.flush_after = Some(self.polls);
                        cx.waker().wake_by_ref();
                        return Ok(progress);
                    }
                }
                let outbox = self.runtime.core.borrow_mut().take_outbox(self.id);
                self.tx.clear();
                self.tx_written = 0;
                if let Err(error) = transport.seal(outbox, &mut self.tx) {
                    log::debug!("sealing failed: {error}");
                    return Err(());
                }
                // Room in the outbox again: let the shard feed the mailbox in.
                self.runtime.core.borrow_mut().flushed(self.id);
                self.runtime.after_core();
            }
            let stream = self.stream.as_mut().expect("present until done");
            match Pin::new(stream).poll_write(cx, &self.tx[self.tx_written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
                Poll::Ready(Ok(n)) => {
                    self.tx_written += n;
                    progress = true;
                }
                Poll::Pending => return Ok(progress),
            }
        }
    }

    /// Moves this connection, with its TLS state and unread frames, to its
    /// home shard. Everything queued for the phone has been written.
    fn hand_over(&mut self, shard: u16) {
        let Some(snapshot) = self.runtime.core.borrow_mut().hand_over(self.id) else {
            return;
        };
        let stream = self.stream.take().expect("present until done");
        // The stream's own fd closes with it; the duplicate travels.
        // SAFETY: dup of a valid fd we own; the result is checked.
        let duplicate = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        drop(stream);
        if duplicate < 0 {
            log::warn!("handover failed: {}", std::io::Error::last_os_error());
            return;
        }
        // SAFETY: `duplicate` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(duplicate) };
        let tls = match self.transport.take() {
            Some(Transport::Tls(tls)) => Some(tls),
            _ => None,
        };
        let pending = std::mem::take(&mut self.inbox);
        let link = &self.runtime.links[shard as usize];
        link.staging.borrow_mut().push(Mail::Adopt {
            fd,
            tls,
            snapshot,
            pending,
        });
        link.signal.raise();
    }

    /// Half-closes and keeps reading briefly, so that the phone receives the
    /// final frames instead of a reset caused by bytes it sent meanwhile.
    fn linger(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // SAFETY: shutdown on a valid socket fd has no memory effects.
        unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
        // A lingering socket counts against no connection bound: past a
        // few, closing connections close at once (a flood of them must not
        // take the descriptors phones need).
        let lingering = &self.runtime.lingering;
        let lingering_max = {
            let core = self.runtime.core.borrow();
            LINGERING_MAX.min((core.config().prelogin_connections_max / 4).max(1))
        };
        if lingering.get() >= lingering_max {
            return;
        }
        lingering.set(lingering.get() + 1);
        let runtime = self.runtime.clone();
        glommio::spawn_local(async move {
            let mut stream = stream;
            let mut buffer = [0u8; 512];
            let drain = async {
                while let Ok(n) = futures_lite::AsyncReadExt::read(&mut stream, &mut buffer).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let timeout = async {
                glommio::timer::sleep(Duration::from_millis(LINGER_MS)).await;
            };
            futures_lite::future::or(drain, timeout).await;
            runtime.lingering.set(runtime.lingering.get() - 1);
        })
        .detach();
    }

    fn finish(&mut self) {
        let now_ms = self.runtime.now_ms();
        self.runtime.core.borrow_mut().closed(self.id, now_ms);
        // A close records (last seen) and may wake others: pass that on
        // now, not at the next tick (which a stopping shard no longer has).
        self.runtime.after_core();
        self.runtime.wakers.borrow_mut().remove(&self.id);
        self.runtime
            .live_tasks
            .set(self.runtime.live_tasks.get() - 1);
        drop(self.stream.take());
    }
}
