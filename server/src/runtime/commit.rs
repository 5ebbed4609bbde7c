//! Group commit and checkpoints.
//!
//! The commit task takes everything the shard recorded since the last
//! commit as one batch, makes it durable, and tells the shard, which
//! releases the replies that waited for it. [`Commits`] is what the rest of
//! the runtime sees of that: which commit covers what is recorded now,
//! how many are done, whether the one in flight is stalled, and who waits.
//!
//! Once enough segments are closed, the shard's state is captured as
//! records right after a batch is taken (so it is exactly the state that
//! batch leaves), written to a checkpoint file on a blocking thread while
//! commits go on, and the segments it covers are then deleted.

use std::{
    cell::{Cell, RefCell},
    io,
    path::PathBuf,
    rc::Rc,
    task::Waker,
    time::{Duration, Instant},
};

use server::flow::CommitProgress;
use server::island::tablet::Tablet;
use storage::{
    log::{checkpoint, shipping::ShippedBatch},
    Journal, JournalError, JournalStats, Record,
};

use super::{islands, Runtime, Signal, StorageSetup};
use crate::control::snapshot::CommitSamples;

/// How long after a failed checkpoint the next is tried.
const CHECKPOINT_RETRY_MS: u64 = 10_000;

/// How often a commit waiting for room (or a resource) is tried again, and
/// a full disk looked at again: freed space is found within this, and a
/// stalled shard costs one attempt per interval.
pub const DISK_FULL_CHECK_MS: u64 = 1_000;

/// The commits as the rest of the runtime sees them.
#[derive(Default)]
pub struct Commits {
    /// Raised when records wait (or a checkpoint was written): the commit
    /// task has work.
    signal: Signal,
    /// Commits begun and finished (or given up on, once the journal failed).
    started: Cell<u64>,
    done: Cell<u64>,
    /// The commit in flight is waiting to be retried (a full disk, a
    /// resource short): connections stop holding their bytes for it.
    stalled: Cell<bool>,
    /// Connections holding their bytes until a commit finishes; drained
    /// (and woken) after every commit, each task on it at most once.
    holding: RefCell<Vec<Waker>>,
    /// The journal's own counters as of the last commit.
    journal_stats: Cell<JournalStats>,
    /// What each commit since the last report took (see `take_samples`).
    samples: RefCell<CommitSamples>,
    /// The last checkpoint's duration, in ms.
    last_checkpoint_ms: Cell<Option<u64>>,
    /// What waits for a commit to finish: its number and what to call
    /// then (see `after`).
    after: RefCell<Vec<(u64, AfterCommit)>>,
    /// The journal failed: commits finish without writing.
    failed: Cell<bool>,
    /// The server is stopping and the commit in flight was given up on
    /// while it waited for its island's secondary (see `abandon`).
    abandoned: Cell<bool>,
}

/// Called once a commit finished: with true when it was written, false
/// when the journal had failed.
pub type AfterCommit = Box<dyn FnOnce(bool)>;

impl Commits {
    /// Records wait: the commit task takes them as soon as it can.
    pub fn request(&self) {
        self.signal.raise();
    }

    /// The commit that makes durable everything recorded so far: the next
    /// one if something awaits a commit not yet begun (`awaits_next`), else
    /// the one in flight (done already if none).
    pub fn covering_now(&self, awaits_next: bool) -> u64 {
        if awaits_next {
            self.started.get() + 1
        } else {
            self.started.get()
        }
    }

    /// Commits finished, and whether the one in flight waits to be
    /// retried.
    pub fn progress(&self) -> CommitProgress {
        CommitProgress {
            done: self.done.get(),
            stalled: self.stalled.get(),
        }
    }

    /// Wakes `waker` when the next commit finishes (or stalls).
    pub fn hold(&self, waker: Waker) {
        self.holding.borrow_mut().push(waker);
    }

    /// The server is stopping and the commit in flight, written here,
    /// will never be acknowledged by its island's secondary (the lease
    /// was revoked for a planned stop, or the secondary is gone): its
    /// replies are never sent (their phones send again, to the island's
    /// next primary), what waits for it is told it was not written, and
    /// nothing more is committed.
    pub fn abandon(&self) {
        self.abandoned.set(true);
        self.end_unacknowledged();
    }

    /// The commit in flight ends unacknowledged: its island is served by
    /// another node now. As [`Commits::abandon`], but later commits go on
    /// (a stale tablet records nothing that is written).
    pub fn give_up(&self) {
        self.done.set(self.started.get());
        self.end_unacknowledged();
    }

    /// What waits for a commit is told it was not written; connections
    /// holding their bytes for it let them go.
    fn end_unacknowledged(&self) {
        let waiting: Vec<AfterCommit> = self
            .after
            .borrow_mut()
            .drain(..)
            .map(|(_, then)| then)
            .collect();
        for then in waiting {
            then(false);
        }
        for waker in self.holding.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Whether the commits were given up on for a stop (`abandon`).
    pub fn abandoned(&self) -> bool {
        self.abandoned.get()
    }

    /// Calls `then` once commit `target` has finished (at once if it has):
    /// with true when it was written, false when the journal failed.
    pub fn after(&self, target: u64, then: AfterCommit) {
        if self.done.get() >= target {
            then(!self.failed.get());
        } else {
            self.after.borrow_mut().push((target, then));
        }
    }

    /// True while a commit begun has not finished: what it holds is not
    /// yet written.
    pub fn in_flight(&self) -> bool {
        self.done.get() < self.started.get()
    }

    pub fn journal_stats(&self) -> JournalStats {
        self.journal_stats.get()
    }

    /// The commits finished since the last call, for the shard's report.
    pub fn take_samples(&self) -> CommitSamples {
        std::mem::take(&mut *self.samples.borrow_mut())
    }

    pub fn last_checkpoint_ms(&self) -> Option<u64> {
        self.last_checkpoint_ms.get()
    }

    /// A commit that began at `started` finished with the journal's
    /// counters at `stats`.
    fn finished_with(&self, started: Instant, stats: JournalStats) {
        let before = self.journal_stats.replace(stats);
        self.samples.borrow_mut().push(
            started.elapsed().as_micros() as u64,
            stats.sync_us.saturating_sub(before.sync_us),
            stats.records.saturating_sub(before.records),
            stats.bytes.saturating_sub(before.bytes),
        );
    }

    fn begin(&self) {
        self.started.set(self.started.get() + 1);
    }

    /// The commit in flight cannot finish for now: connections holding
    /// their bytes for it write them.
    fn stall(&self) {
        if !self.stalled.replace(true) {
            for waker in self.holding.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }

    fn finish(&self) {
        self.stalled.set(false);
        let done = self.done.get() + 1;
        self.done.set(done);
        for waker in self.holding.borrow_mut().drain(..) {
            waker.wake();
        }
        let due: Vec<AfterCommit> = {
            let mut after = self.after.borrow_mut();
            let (due, waiting) = after.drain(..).partition(|(target, _)| *target <= done);
            *after = waiting;
            due.into_iter().map(|(_, then)| then).collect()
        };
        for then in due {
            then(!self.failed.get());
        }
    }
}

/// When and where the commit task writes checkpoints.
#[derive(Clone)]
pub struct CheckpointPlan {
    dir: PathBuf,
    shard: u16,
    shard_count: u16,
    /// Closed segments that call for one.
    segments: usize,
    /// Closed segments kept past that for an island's secondary that does
    /// not hold them yet (down, or catching up): it catches up from them
    /// when it is back. Past this many the checkpoint goes ahead, and the
    /// secondary is sent the checkpoint first (docs/islands.md).
    replica_retain: usize,
}

impl CheckpointPlan {
    pub fn new(storage: &StorageSetup) -> CheckpointPlan {
        CheckpointPlan {
            dir: storage.dir.clone(),
            shard: storage.log.shard,
            shard_count: storage.log.shard_count,
            segments: storage.checkpoint_segments,
            replica_retain: storage.replica_retain_segments,
        }
    }
}

/// The commit task's checkpoints: at most one written at a time.
struct Checkpoints {
    plan: CheckpointPlan,
    /// Set while one is written off the executor.
    writing: bool,
    /// After a failed checkpoint (a full disk, say), the next waits a while
    /// rather than snapshotting the shard on every commit.
    not_before: Instant,
    /// The checkpoint written off the executor, reported back here: the
    /// batch it covers, or why it failed.
    written: Rc<RefCell<Option<io::Result<CheckpointWritten>>>>,
}

struct CheckpointWritten {
    batch: u64,
    records: usize,
    bytes: u64,
    started: Instant,
}

/// What a commit task replicates its tablet through.
pub enum Replication {
    /// The shard's own island's tablet, once the cluster says whether
    /// there is one (see `islands::Islands::start_own`).
    Own,
    /// An island this node took over: its tablet's member, primary now.
    Led(Rc<RefCell<Tablet>>),
}

impl CheckpointPlan {
    /// The plan for a taken-over island's tablet, whose log is in `dir`.
    pub fn in_dir(&self, dir: PathBuf) -> CheckpointPlan {
        CheckpointPlan {
            dir,
            ..self.clone()
        }
    }
}

/// Group commit: everything the shard produced since the last commit goes to
/// the journal as one batch, and the replies that waited for it are released.
pub async fn commit(
    runtime: Rc<Runtime>,
    mut journal: impl Journal,
    plan: CheckpointPlan,
    replication: Replication,
) {
    let mut checkpoints = Checkpoints {
        plan,
        writing: false,
        not_before: Instant::now(),
        written: Rc::default(),
    };
    // A disk found full at start refuses messages from the first one on,
    // rather than taking one into a commit that cannot be written.
    note_disk_full(&runtime, journal.disk_full());
    let own = match replication {
        Replication::Own => match start_replicating(&runtime, &journal).await {
            Ok(own) => own,
            Err(error) => return refuse_durable_work(&runtime, error).await,
        },
        Replication::Led(tablet) => Some(tablet),
    };
    let mut frames = Vec::new();
    loop {
        wait_for_work(&runtime, own.as_deref()).await;
        if own.is_none() && !runtime.shard().leads_own_island() {
            // A stale copy of an island another node serves: it records
            // nothing that matters, and nothing of it is written.
            continue;
        }
        note_disk_full(&runtime, journal.disk_full());
        if let Some(tablet) = &own {
            if let Err(error) = islands::primary_log_work(&runtime, &mut journal, tablet).await {
                return refuse_durable_work(&runtime, error).await;
            }
            if !tablet.borrow().may_propose() {
                // Not the island's primary (yet, or any more): what waits
                // is not written, so nothing is acknowledged.
                continue;
            }
        }
        checkpoints.finish_written(&runtime, &mut journal).await;
        // A secondary that does not hold the log yet catches up from its
        // segments: they stay, within a bound.
        let replica_holds = own
            .as_ref()
            .is_none_or(|tablet| tablet.borrow().member().replica_holds(journal.last_batch()));
        let disk_full = runtime.shard().is_disk_full();
        let due = checkpoints.is_due(journal.closed_segments(), replica_holds, disk_full);
        let (batch, records, snapshot) = runtime.with_shard_no_outputs(|shard| {
            let (batch, records) = shard.take_records();
            (batch, records, due.then(|| shard.checkpoint()))
        });
        runtime.commits.begin();
        let started = Instant::now();
        // Frames are kept only for a replica to ship to.
        let ship = own.is_some().then_some(&mut frames);
        match write_batch(&runtime, &mut journal, &records, ship).await {
            Ok(()) => {
                if let Some(tablet) = &own {
                    match await_island(&runtime, &mut journal, tablet, &mut frames).await {
                        Ok(Island::Acknowledged) => {}
                        Ok(Island::GivenUp) => continue,
                        Ok(Island::Stopping) => return,
                        Err(error) => return refuse_durable_work(&runtime, error).await,
                    }
                }
                runtime.with_shard(|shard| {
                    shard.committed(batch);
                    shard.recycle_records(records);
                    runtime.commits.finish();
                    runtime.commits.finished_with(started, journal.stats());
                });
                // What other nodes sent that this commit made durable.
                runtime.remote.release_durable();
                if let Some(snapshot) = snapshot {
                    checkpoints.start(&runtime, journal.last_batch(), snapshot);
                }
            }
            Err(error) => return refuse_durable_work(&runtime, error).await,
        }
    }
}

/// What became of a batch written here, as its island goes.
enum Island {
    /// The secondary holds it too: its replies may go.
    Acknowledged,
    /// Another node serves the island now: it never will be; the commit
    /// ends without its replies, and the task goes on.
    GivenUp,
    /// The process stops first: the commit ends without its replies, and
    /// so does the task.
    Stopping,
}

/// Rule 1: the replies of the batch just written (`frames`) wait for the
/// island, not only for this disk. Err: the tablet stops for good.
async fn await_island(
    runtime: &Runtime,
    journal: &mut impl Journal,
    tablet: &RefCell<Tablet>,
    frames: &mut Vec<ShippedBatch>,
) -> Result<Island, islands::TabletStop> {
    for batch in frames.drain(..) {
        tablet.borrow_mut().written(batch.seq, batch.frame)?;
    }
    let target = journal.last_batch();
    match islands::wait_acknowledged(runtime, journal, tablet, target).await {
        Ok(()) => Ok(Island::Acknowledged),
        Err(islands::TabletStop::Superseded) => {
            log::warn!(
                shard = runtime.shard_id;
                "batch {target} will not be acknowledged: another node serves the island \
                 now; its replies are not sent (the phones send again, there)"
            );
            runtime.commits.give_up();
            Ok(Island::GivenUp)
        }
        Err(islands::TabletStop::Stopping) => {
            log::warn!(
                shard = runtime.shard_id;
                "stopping: batch {target} is not acknowledged by the island's secondary; its \
                 replies are not sent (the phones send again)"
            );
            runtime.commits.abandon();
            Ok(Island::Stopping)
        }
        Err(error) => Err(error),
    }
}

/// With replication, the shard's own tablet once the cluster says whether
/// there is one (see `islands::Islands::start_own`), and its shipping
/// task started.
async fn start_replicating(
    runtime: &Rc<Runtime>,
    journal: &impl Journal,
) -> Result<Option<Rc<RefCell<Tablet>>>, String> {
    let Some(islands) = runtime.islands.clone() else {
        return Ok(None);
    };
    let log = runtime.shard().epochs().log_info(journal.last_batch());
    let Some(tablet) = islands.clone().start_own(log).await? else {
        return Ok(None);
    };
    glommio::spawn_local(islands.ship(tablet.clone())).detach();
    Ok(Some(tablet))
}

/// Waits until records wait (or a checkpoint was written, or the own
/// tablet has log work). While the disk is full it also looks again now
/// and then: space may have been freed.
async fn wait_for_work(runtime: &Runtime, own: Option<&RefCell<Tablet>>) {
    let records = runtime.commits.signal.wait();
    let tablet_work = async {
        match own.map(|tablet| tablet.borrow().work_signal.clone()) {
            Some(work) => work.wait().await,
            None => std::future::pending().await,
        }
    };
    let disk_check = async {
        if runtime.shard().is_disk_full() {
            glommio::timer::sleep(Duration::from_millis(DISK_FULL_CHECK_MS)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    futures_lite::future::or(records, futures_lite::future::or(tablet_work, disk_check)).await;
}

/// Commits `records`. Nothing of the batch was written and the log is
/// intact when it is refused for want of room (or of a resource): the same
/// records go again until they go through. Their replies wait; meanwhile
/// no new message is accepted, so only acks pile up.
async fn write_batch(
    runtime: &Runtime,
    journal: &mut impl Journal,
    records: &[Record],
    mut frames: Option<&mut Vec<ShippedBatch>>,
) -> Result<(), JournalError> {
    let mut result = commit_once(journal, records, frames.as_deref_mut()).await;
    loop {
        match &result {
            Err(JournalError::NoSpace) => note_disk_full(runtime, true),
            Err(JournalError::Unavailable(reason)) => {
                note_storage_unavailable(runtime, Some(reason));
            }
            _ => break,
        }
        runtime.commits.stall();
        glommio::timer::sleep(Duration::from_millis(DISK_FULL_CHECK_MS)).await;
        result = commit_once(journal, records, frames.as_deref_mut()).await;
    }
    if result.is_ok() {
        note_storage_unavailable(runtime, None);
    }
    result
}

/// One attempt at committing `records`, handing the frames written to
/// `frames` when there is a replica to ship them to.
async fn commit_once(
    journal: &mut impl Journal,
    records: &[Record],
    frames: Option<&mut Vec<ShippedBatch>>,
) -> Result<(), JournalError> {
    match frames {
        Some(frames) => journal.commit_shipping(records, frames).await,
        None => journal.commit(records).await,
    }
}

/// The journal failed. Without durability nothing may be acknowledged
/// again: the shard refuses sends and signups from now on, and what it
/// still records is dropped here rather than piling up. Never returns.
async fn refuse_durable_work(runtime: &Runtime, error: impl std::fmt::Display) {
    log::error!(
        shard = runtime.shard_id; "{error}; refusing new messages and signups until restarted"
    );
    runtime.commits.failed.set(true);
    runtime.with_shard(|shard| {
        shard.journal_failed();
        runtime.commits.finish();
    });
    loop {
        runtime.commits.signal.wait().await;
        runtime.commits.begin();
        let (_, records) = runtime.with_shard_no_outputs(|shard| shard.take_records());
        drop(records);
        runtime.commits.finish();
    }
}

/// Tells the shard (and the operator) when the journal runs short of a
/// resource other than space (`reason`), or has it again (`None`).
fn note_storage_unavailable(runtime: &Runtime, reason: Option<&io::Error>) {
    let changed = runtime.with_shard_no_outputs(|shard| {
        let changed = shard.is_storage_unavailable() != reason.is_some();
        if changed {
            shard.set_storage_unavailable(reason.is_some());
        }
        changed
    });
    if !changed {
        return;
    }
    match reason {
        Some(reason) => log::warn!(
            shard = runtime.shard_id;
            "{reason}; refusing new messages and signups (Overloaded) and \
             trying again every {DISK_FULL_CHECK_MS} ms"
        ),
        None => log::warn!(
            shard = runtime.shard_id; "the journal has what it needs again; accepting messages"
        ),
    }
}

/// Tells the shard (and the operator) when the disk fills up or has room
/// again.
fn note_disk_full(runtime: &Runtime, full: bool) {
    let changed = runtime.with_shard_no_outputs(|shard| {
        let changed = shard.is_disk_full() != full;
        if changed {
            shard.set_disk_full(full);
        }
        changed
    });
    if !changed {
        return;
    }
    if full {
        log::error!(
            shard = runtime.shard_id;
            "the disk has no room for another log segment; refusing new \
             messages and signups until it has (acknowledgements go on)"
        );
    } else {
        log::warn!(
            shard = runtime.shard_id; "the disk has room again; accepting messages"
        );
    }
}

impl Checkpoints {
    /// A checkpoint is due: none is being written, enough segments are
    /// closed, and the last failure was long enough ago.
    /// On a full disk one closed segment is enough: the checkpoint lets
    /// the segments it covers go, which may be the room the next segment
    /// needs (a shard would otherwise refuse messages until the operator
    /// freed space its own log holds).
    fn is_due(&self, closed_segments: usize, replica_holds: bool, disk_full: bool) -> bool {
        let wanted = match (replica_holds, disk_full) {
            (true, true) => self.plan.segments.min(1),
            (true, false) => self.plan.segments,
            (false, _) => self.plan.segments + self.plan.replica_retain,
        };
        !self.writing && closed_segments >= wanted && Instant::now() >= self.not_before
    }

    /// Writes `snapshot`, the state after log batch `batch`, on a blocking
    /// thread; the commit task hears of the result through `written`.
    fn start(&mut self, runtime: &Rc<Runtime>, batch: u64, snapshot: Vec<Record>) {
        self.writing = true;
        let runtime = runtime.clone();
        let written = self.written.clone();
        let dir = self.plan.dir.clone();
        let (shard, shard_count) = (self.plan.shard, self.plan.shard_count);
        glommio::spawn_local(async move {
            let started = Instant::now();
            let records = snapshot.len();
            let result = glommio::executor()
                .spawn_blocking(move || {
                    checkpoint::write(&dir, shard, shard_count, batch, &snapshot)
                })
                .await;
            *written.borrow_mut() = Some(result.map(|bytes| CheckpointWritten {
                batch,
                records,
                bytes,
                started,
            }));
            runtime.commits.request();
        })
        .detach();
    }

    /// If a checkpoint was written, finishes it; after a failure the next
    /// waits `CHECKPOINT_RETRY_MS`.
    async fn finish_written(&mut self, runtime: &Runtime, journal: &mut impl Journal) {
        let written = self.written.borrow_mut().take();
        if let Some(written) = written {
            self.writing = false;
            if !self.finish(runtime, journal, written).await {
                self.not_before = Instant::now() + Duration::from_millis(CHECKPOINT_RETRY_MS);
            }
        }
    }

    /// A checkpoint is durable: the segments and older checkpoints it covers
    /// go. A failure here costs disk space, not data, so it is only logged
    /// (a later checkpoint tries again). False when something failed.
    async fn finish(
        &self,
        runtime: &Runtime,
        journal: &mut impl Journal,
        written: io::Result<CheckpointWritten>,
    ) -> bool {
        let shard = runtime.shard_id;
        let written = match written {
            Ok(written) => written,
            Err(error) => {
                log::error!(shard; "writing a checkpoint failed: {error}");
                return false;
            }
        };
        let removed = match journal.remove_through(written.batch).await {
            Ok(removed) => removed,
            Err(error) => {
                log::error!(shard; "deleting segments a checkpoint covers: {error}");
                return false;
            }
        };
        if let Err(error) = checkpoint::remove_older(&self.plan.dir, written.batch) {
            log::error!(shard; "deleting old checkpoints: {error}");
        }
        runtime.with_shard_no_outputs(|shard| shard.checkpoint_finished());
        let took_ms = written.started.elapsed().as_millis() as u64;
        runtime.commits.last_checkpoint_ms.set(Some(took_ms));
        log::info!(
            shard; "checkpoint after batch {}: {} records, {} bytes in {:.3} s; \
             {removed} segments deleted",
            written.batch,
            written.records,
            written.bytes,
            written.started.elapsed().as_secs_f64()
        );
        true
    }
}
