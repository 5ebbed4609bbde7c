//! [`Member`]: one node's part in one island, as primary, secondary or
//! neither, following `docs/islands.md`.

use std::collections::VecDeque;

use super::{Epoch, IslandId, IslandRecord, LogInfo, Mode, NodeId, Output, ReplMsg, Seq, View};

/// A mistake the simulation must catch, switched on only by its tests.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// Acknowledge in `sync` mode on local durability alone.
    AckBeforeReplica,
    /// Promote a secondary without bumping the epoch.
    PromoteWithoutEpochBump,
    /// Let a secondary rejoin without truncating what the primary's
    /// history does not hold.
    RejoinWithoutTruncation,
}

/// A member's settings.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub me: NodeId,
    pub island: IslandId,
    /// A primary whose secondary has not acknowledged a waiting batch for
    /// this long asks the store for `solo` (ms).
    pub replica_ack_timeout_ms: u64,
    /// Ship again from the last acknowledgement, or ask again to catch up,
    /// when nothing moved for this long (ms).
    pub retry_ms: u64,
    /// Batches shipped and not acknowledged, at most.
    pub window: u64,
    /// Whether this member, as an in-sync secondary, promotes itself when
    /// its primary's lease is gone (rule 2). Off where the node cannot yet
    /// serve an island it takes over: the island then waits for its
    /// primary to come back.
    pub promote: bool,
    #[doc(hidden)]
    pub planted: Option<PlantedBug>,
}

impl MemberConfig {
    pub fn new(me: NodeId, island: IslandId) -> MemberConfig {
        MemberConfig {
            me,
            island,
            replica_ack_timeout_ms: 2_000,
            retry_ms: 200,
            window: 64,
            promote: true,
            planted: None,
        }
    }
}

/// A batch offered to a member that is not the serving primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this node does not serve the island now")]
pub struct NotPrimary;

#[derive(Debug)]
struct Primary {
    epoch: Epoch,
    mode: Mode,
    revision: u64,
    secondary: NodeId,
    insync: Vec<NodeId>,
    /// This epoch's first batch (its empty `EpochStart`).
    start: Seq,
    /// The secondary joined this epoch (its log agrees with ours).
    joined: bool,
    /// The secondary's cumulative durable seq, and the highest shipped.
    acked: Seq,
    shipped: Seq,
    /// Replies released up to here.
    acknowledged: Seq,
    /// Since when a batch waits for the secondary.
    waiting_since_ms: Option<u64>,
    progress_ms: u64,
    /// Solo, taking the caught-up secondary back in `insync`: replies wait
    /// for the secondary as in sync mode, so that once the store says it
    /// is in sync it holds everything acknowledged. Since when.
    holding_since_ms: Option<u64>,
    /// The secondary was found behind the log and sent the checkpoint,
    /// last at this time: sent again every `SNAPSHOT_RESEND_MS` until it
    /// asks to catch up.
    snapshot_sent_ms: Option<u64>,
}

#[derive(Debug)]
struct Secondary {
    epoch: Epoch,
    primary: NodeId,
    /// Cleared before a promotion is asked for (rule 2).
    acking: bool,
    joined: bool,
    next: Seq,
    asked_ms: u64,
    /// A truncation is being done by the driver.
    truncating: bool,
    /// The last gap reported, and when: one `Expect` per gap per retry.
    expected: (Seq, u64),
    /// When a repeated batch last made it ack again (its ack was lost).
    reacked_ms: u64,
    /// A checkpoint from the primary is being written (since the last
    /// chunk came): no `CatchUp` meanwhile, unless it stalls.
    installing_since_ms: Option<u64>,
}

#[derive(Debug)]
struct Txn {
    id: u64,
    record: IslandRecord,
    expect_revision: u64,
    asked_ms: u64,
}

/// A primary that sent its checkpoint to a secondary and has not heard it
/// ask to catch up since sends it again after this long (ms); a transfer
/// still running is left to go on.
const SNAPSHOT_RESEND_MS: u64 = 10_000;

/// A checkpoint transfer with no chunk for this long is taken as dropped:
/// the secondary asks to catch up again (ms).
const SNAPSHOT_STALL_MS: u64 = 30_000;

/// A store transaction unanswered for this long is taken as lost: the
/// views say whether it applied (ms).
const TXN_TIMEOUT_MS: u64 = 1_000;

#[derive(Debug)]
enum Role {
    /// Not serving: before a view, fenced, or outside the island.
    Idle,
    Primary(Box<Primary>),
    Secondary(Secondary),
}

/// One node's part in one island.
#[derive(Debug)]
pub struct Member {
    config: MemberConfig,
    log: LogInfo,
    view: Option<View>,
    role: Role,
    out: VecDeque<Output>,
    now_ms: u64,
    /// The lease is known valid until then (monotonic ms; rule 4).
    valid_until_ms: u64,
    /// A store transaction in flight: its id, the record it puts, the
    /// revision it expects, and when it was asked.
    txn: Option<Txn>,
    next_txn: u64,
    /// Named primary with an empty log of an island that served and whose
    /// secondary is in sync: this node's log was lost (see `take_role`).
    lost_log: bool,
}

impl Member {
    /// A member over a local log of shape `log` (durable to its end after
    /// a restart).
    pub fn new(config: MemberConfig, log: LogInfo, now_ms: u64) -> Member {
        Member {
            config,
            log,
            view: None,
            role: Role::Idle,
            out: VecDeque::new(),
            now_ms,
            valid_until_ms: 0,
            txn: None,
            next_txn: 1,
            lost_log: false,
        }
    }

    /// Whether this node was named the island's primary with an empty log
    /// while the island has served and its in-sync secondary holds every
    /// acknowledged batch: its log was lost (a new disk, a wiped data
    /// dir). It never serves then: serving would make the secondary cut
    /// its log to this empty one and lose the island.
    pub fn lost_log(&self) -> bool {
        self.lost_log
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn log(&self) -> &LogInfo {
        &self.log
    }

    /// The epoch this member serves as primary, if it does.
    pub fn primary_epoch(&self) -> Option<Epoch> {
        match &self.role {
            Role::Primary(p) => Some(p.epoch),
            _ => None,
        }
    }

    /// Whether [`Member::propose`] would take a batch now: this member is
    /// the primary, and not a solo primary past its lease (rule 4).
    pub fn may_propose(&self) -> bool {
        match &self.role {
            Role::Primary(p) => p.mode == Mode::Sync || self.now_ms < self.valid_until_ms,
            _ => false,
        }
    }

    /// Whether this member is the primary and its secondary is known to
    /// hold every batch up to `seq` (joined, and acknowledged that far):
    /// what the secondary may still need to be shipped is above it.
    pub fn replica_holds(&self, seq: Seq) -> bool {
        matches!(&self.role, Role::Primary(p) if p.joined && p.acked >= seq)
    }

    /// As the island's primary, the last batch its secondary acknowledged
    /// in this epoch (`None` otherwise).
    pub fn replica_acked(&self) -> Option<Seq> {
        match &self.role {
            Role::Primary(p) => Some(p.acked),
            _ => None,
        }
    }

    /// As the island's primary, the batches of its log its secondary is
    /// not known to hold (0 otherwise): how far the replica lags.
    pub fn replica_lag(&self) -> u64 {
        match &self.role {
            Role::Primary(p) => self.log.last.saturating_sub(p.acked),
            _ => 0,
        }
    }

    /// The island's record as this member last saw it, and its revision.
    pub fn seen(&self) -> Option<(&IslandRecord, u64)> {
        self.view.as_ref().map(|v| (&v.record, v.revision))
    }

    /// A one-line summary, for logs and the simulation's reports.
    pub fn summary(&self) -> String {
        let role = match &self.role {
            Role::Idle => "idle".to_owned(),
            Role::Primary(p) => format!(
                "primary e{} {:?} r{} joined={} acked={} ack'd={} waiting={:?} holding={:?}",
                p.epoch,
                p.mode,
                p.revision,
                p.joined,
                p.acked,
                p.acknowledged,
                p.waiting_since_ms,
                p.holding_since_ms
            ),
            Role::Secondary(s) => format!(
                "secondary e{} joined={} acking={} next={} truncating={}",
                s.epoch, s.joined, s.acking, s.next, s.truncating
            ),
        };
        let view = self
            .view
            .as_ref()
            .map(|v| (v.revision, v.record.epoch, v.live.clone()));
        format!(
            "{role}; log {}..{} e{}; txn {:?}; view {view:?}",
            self.log.durable,
            self.log.last,
            self.log.last_epoch(),
            self.txn
                .as_ref()
                .map(|t| (t.id, t.record.epoch, t.record.mode))
        )
    }

    /// The store answered a keepalive: the lease holds until `valid_until_ms`.
    pub fn keepalive(&mut self, valid_until_ms: u64) {
        self.valid_until_ms = self.valid_until_ms.max(valid_until_ms);
    }

    /// A new batch to replicate, from the shard's commit. Its seq.
    pub fn propose(&mut self, bytes: Vec<u8>) -> Result<Seq, NotPrimary> {
        let Role::Primary(p) = &mut self.role else {
            return Err(NotPrimary);
        };
        if p.mode == Mode::Solo && self.now_ms >= self.valid_until_ms {
            return Err(NotPrimary);
        }
        let seq = self.log.last + 1;
        self.log.appended(seq, p.epoch);
        let epoch = p.epoch;
        if p.mode == Mode::Sync && p.waiting_since_ms.is_none() {
            p.waiting_since_ms = Some(self.now_ms);
        }
        let ship = p.joined && seq == p.shipped + 1 && seq <= p.acked + self.config.window;
        let to = p.secondary;
        if ship {
            p.shipped = seq;
        }
        self.out.push_back(Output::Append {
            seq,
            epoch,
            bytes: bytes.clone(),
        });
        if ship {
            let msg = ReplMsg::Ship {
                epoch,
                seq,
                written: epoch,
                bytes,
            };
            self.out.push_back(Output::Send { to, msg });
        }
        Ok(seq)
    }

    /// The local log is durable up to `seq`.
    pub fn durable(&mut self, seq: Seq) {
        self.log.durable = self.log.durable.max(seq.min(self.log.last));
        match &mut self.role {
            Role::Secondary(s) if s.joined && s.acking => {
                let (to, epoch) = (s.primary, s.epoch);
                let seq = self.log.durable;
                self.out.push_back(Output::Send {
                    to,
                    msg: ReplMsg::Ack { epoch, seq },
                });
            }
            Role::Secondary(s) if !s.joined => self.ask_to_join(),
            _ => {}
        }
        self.check_promotion();
        self.release();
    }

    /// The driver truncated the log after `after`.
    pub fn truncated(&mut self, after: Seq) {
        self.log.truncated(after);
        if let Role::Secondary(s) = &mut self.role {
            s.truncating = false;
            self.ask_to_join();
        }
    }

    /// Local batches read for `to` (answering [`Output::Read`]).
    pub fn ship_read(&mut self, to: NodeId, batches: Vec<(Seq, Epoch, Vec<u8>)>) {
        let Role::Primary(p) = &self.role else {
            return;
        };
        if to != p.secondary {
            return;
        }
        let epoch = p.epoch;
        for (seq, written, bytes) in batches {
            let msg = ReplMsg::Ship {
                epoch,
                seq,
                written,
                bytes,
            };
            self.out.push_back(Output::Send { to, msg });
        }
    }

    /// The answer to [`Output::Txn`] `id`.
    pub fn txn_result(&mut self, id: u64, applied: bool) {
        if self.txn.as_ref().is_some_and(|t| t.id == id) && !applied {
            self.txn = None;
            if let Role::Secondary(s) = &mut self.role {
                // Not promoted: ack again if the primary is back (the next
                // view tells).
                s.acking = self.view.as_ref().is_some_and(primary_live);
            }
        }
    }

    /// Time passes.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        if self
            .txn
            .as_ref()
            .is_some_and(|t| now_ms >= t.asked_ms + TXN_TIMEOUT_MS)
        {
            self.txn = None;
        }
        let retry = self.config.retry_ms;
        match &mut self.role {
            Role::Primary(p)
                if p.joined && p.acked < p.shipped && now_ms >= p.progress_ms + retry =>
            {
                p.progress_ms = now_ms;
                p.shipped = p.acked;
                self.ship_more();
            }
            Role::Secondary(s) if !s.joined && !s.truncating && now_ms >= s.asked_ms + retry => {
                self.ask_to_join();
            }
            Role::Primary(p)
                if p.snapshot_sent_ms
                    .is_some_and(|at| now_ms >= at + SNAPSHOT_RESEND_MS) =>
            {
                // Lost, or refused: the secondary never asked to catch up.
                p.snapshot_sent_ms = Some(now_ms);
                let to = p.secondary;
                self.out.push_back(Output::SendSnapshot { to });
            }
            _ => {}
        }
        self.check_solo();
        self.check_insync();
        self.release();
    }

    /// What the store shows of the island now.
    pub fn view(&mut self, view: View, now_ms: u64) {
        self.now_ms = now_ms;
        if self
            .view
            .as_ref()
            .is_some_and(|v| v.revision > view.revision)
        {
            return;
        }
        let mine = self.txn.as_ref().is_some_and(|t| t.record == view.record);
        // Applied (this view shows it), or failed (the island moved past
        // the revision it compared).
        if mine
            || self
                .txn
                .as_ref()
                .is_some_and(|t| view.revision > t.expect_revision)
        {
            self.txn = None;
        }
        self.view = Some(view.clone());
        let record = &view.record;
        let me = self.config.me;
        let same = match &mut self.role {
            Role::Primary(p) if p.epoch == record.epoch && record.primary == me => {
                p.mode = record.mode;
                p.revision = view.revision;
                p.insync = record.insync.clone();
                p.secondary = record.secondary;
                true
            }
            Role::Secondary(s) if s.epoch == record.epoch && record.secondary == me => {
                if self.txn.is_none() && primary_live(&view) {
                    s.acking = true;
                }
                true
            }
            _ => false,
        };
        if !same {
            self.take_role(&view, mine);
        }
        self.check_promotion();
        self.check_insync();
        self.release();
    }

    /// A replication message from `from`.
    pub fn receive(&mut self, from: NodeId, msg: ReplMsg) {
        match msg {
            ReplMsg::Ship {
                epoch,
                seq,
                written,
                bytes,
            } => self.shipped_here(from, (epoch, seq, written), bytes),
            ReplMsg::Ack { epoch, seq } => self.acked(epoch, seq),
            ReplMsg::Expect { epoch, seq } => {
                if let Role::Primary(p) = &mut self.role {
                    if p.epoch == epoch && p.joined && seq > p.acked && seq <= p.shipped {
                        p.shipped = seq - 1;
                        self.ship_more();
                    }
                }
            }
            ReplMsg::Fenced { epoch } => {
                if self.serving_epoch().is_some_and(|e| e < epoch) {
                    self.role = Role::Idle;
                }
            }
            ReplMsg::CatchUp {
                epoch,
                last_epoch,
                last_seq,
            } => self.catch_up(from, epoch, (last_epoch, last_seq)),
            ReplMsg::Diverge { epoch, upto } => self.diverge(epoch, upto),
            ReplMsg::Snapshot {
                epoch,
                batch,
                offset,
                total,
                bytes,
            } => self.snapshot_chunk(epoch, batch, (offset, total), bytes),
            // The driver paces a transfer by these (it owns the file).
            ReplMsg::SnapshotAck { .. } => {}
        }
    }

    /// The log no longer holds the batches `to`, this primary's
    /// secondary, needs next (their segments went after a checkpoint):
    /// shipping stops and the latest checkpoint goes instead
    /// ([`Output::SendSnapshot`]); the secondary asks to catch up again
    /// once it installed it.
    pub fn log_gone(&mut self, to: NodeId) {
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        if to != p.secondary || !p.joined {
            return;
        }
        p.joined = false;
        p.shipped = p.acked;
        p.snapshot_sent_ms = Some(self.now_ms);
        self.out.push_back(Output::SendSnapshot { to });
    }

    /// The driver wrote the checkpoint of `batch` up to `offset`
    /// (answering [`Output::SnapshotChunk`]): the primary is told, so that
    /// it sends more.
    pub fn snapshot_written(&mut self, batch: Seq, offset: u64) {
        if let Role::Secondary(s) = &mut self.role {
            if s.installing_since_ms.is_some() {
                s.installing_since_ms = Some(self.now_ms);
                let (to, epoch) = (s.primary, s.epoch);
                let msg = ReplMsg::SnapshotAck {
                    epoch,
                    batch,
                    offset,
                };
                self.out.push_back(Output::Send { to, msg });
            }
        }
    }

    /// The driver made the primary's checkpoint this tablet's whole state:
    /// its log is `log` now (empty after the checkpoint's batch, durable).
    /// It asks to catch up from there.
    pub fn installed(&mut self, log: LogInfo) {
        self.log = log;
        if let Role::Secondary(s) = &mut self.role {
            s.installing_since_ms = None;
            s.joined = false;
            s.truncating = false;
            self.ask_to_join();
        }
    }

    // ---- roles ----------------------------------------------------------

    fn serving_epoch(&self) -> Option<Epoch> {
        match &self.role {
            Role::Primary(p) => Some(p.epoch),
            Role::Secondary(s) => Some(s.epoch),
            Role::Idle => None,
        }
    }

    /// The island changed under this member: what it is now.
    fn take_role(&mut self, view: &View, mine: bool) {
        let record = &view.record;
        let me = self.config.me;
        self.role = Role::Idle;
        let lost = self.log.last == 0 && holds_everything(record);
        // An epoch this process made (another shard's member asked for it)
        // is served only if this log holds nothing of it: a log never
        // starts an epoch twice, or two batches would share (epoch, seq).
        let made_here = view.made_here && !lost && record.epoch > self.log.last_epoch();
        if record.primary == me && (mine || made_here) {
            self.become_primary(view);
        } else if record.primary == me && lost {
            self.lost_log = true;
            // Its in-sync secondary holds every acknowledged batch: it
            // takes the island over (as by rule 2, but asked for by the
            // primary, which knows it cannot serve), so the island is
            // served again without waiting for an operator.
            let secondary = record.secondary;
            if view.live.contains(&secondary) {
                self.ask(view, None, |r| {
                    r.epoch += 1;
                    r.primary = secondary;
                    r.secondary = me;
                    r.insync = vec![secondary];
                    r.mode = Mode::Solo;
                });
            }
        } else if record.primary == me {
            // Primary of an epoch it did not make (a restart): it may have
            // lost what it shipped, so it never serves that epoch again.
            self.ask(view, None, |r| {
                r.epoch += 1;
                r.insync = vec![me];
                r.mode = Mode::Solo;
            });
        } else if record.secondary == me {
            self.role = Role::Secondary(Secondary {
                epoch: record.epoch,
                primary: record.primary,
                acking: self.txn.is_none(),
                joined: false,
                next: 0,
                asked_ms: 0,
                truncating: false,
                expected: (0, 0),
                reacked_ms: 0,
                installing_since_ms: None,
            });
            self.ask_to_join();
        }
    }

    fn become_primary(&mut self, view: &View) {
        let record = &view.record;
        if record.epoch < self.log.last_epoch() {
            // A store that went back (restored from an old backup, say):
            // this log has written a later epoch already, and a log's
            // epochs never go back.
            return;
        }
        let start = self.log.last + 1;
        self.log.appended(start, record.epoch);
        self.out.push_back(Output::Append {
            seq: start,
            epoch: record.epoch,
            bytes: Vec::new(),
        });
        self.role = Role::Primary(Box::new(Primary {
            epoch: record.epoch,
            mode: record.mode,
            revision: view.revision,
            secondary: record.secondary,
            insync: record.insync.clone(),
            start,
            joined: false,
            acked: 0,
            shipped: 0,
            acknowledged: 0,
            waiting_since_ms: (record.mode == Mode::Sync).then_some(self.now_ms),
            progress_ms: self.now_ms,
            holding_since_ms: None,
            snapshot_sent_ms: None,
        }));
    }

    /// Asks the store for the island's record changed by `change`, if its
    /// revision is still the one seen (and `absent` holds no lease).
    fn ask(&mut self, view: &View, absent: Option<NodeId>, change: impl FnOnce(&mut IslandRecord)) {
        if self.txn.is_some() {
            return;
        }
        let mut record = view.record.clone();
        change(&mut record);
        let id = self.next_txn;
        self.next_txn += 1;
        self.txn = Some(Txn {
            id,
            record: record.clone(),
            expect_revision: view.revision,
            asked_ms: self.now_ms,
        });
        self.out.push_back(Output::Txn {
            id,
            expect_revision: view.revision,
            absent,
            record,
        });
    }

    /// Rule 2: a secondary in `insync` whose primary's lease is gone stops
    /// acking, waits for its own appends, then asks for the next epoch.
    fn check_promotion(&mut self) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let me = self.config.me;
        let record = &view.record;
        let Role::Secondary(s) = &mut self.role else {
            return;
        };
        let eligible = self.config.promote
            && s.epoch == record.epoch
            && record.mode == Mode::Sync
            && record.insync.contains(&me)
            && !primary_live(&view);
        if !eligible || self.txn.is_some() {
            return;
        }
        s.acking = false;
        if s.truncating || self.log.durable < self.log.last {
            return;
        }
        let bump = u64::from(self.config.planted != Some(PlantedBug::PromoteWithoutEpochBump));
        let old_primary = record.primary;
        self.ask(&view, Some(old_primary), |r| {
            r.epoch += bump;
            r.primary = me;
            r.secondary = old_primary;
            r.insync = vec![me];
            r.mode = Mode::Solo;
        });
    }

    /// Rule 3: a sync primary whose secondary stays silent asks for solo;
    /// so does one whose secondary holds no lease, even while nothing is
    /// written (else an idle island keeps naming a dead secondary in sync,
    /// and the controller never gives it another). (Runs every tick: the
    /// view is copied only to ask.)
    fn check_solo(&mut self) {
        let (now, last) = (self.now_ms, self.log.last);
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        // A batch proposed while the island was solo, still unacknowledged
        // when it turned sync, waits for the secondary from then on.
        if p.mode == Mode::Sync && p.acked < last && p.waiting_since_ms.is_none() {
            p.waiting_since_ms = Some(now);
        }
        let secondary_gone = self
            .view
            .as_ref()
            .is_some_and(|v| !v.live.contains(&p.secondary));
        // The record says `sync` while this tablet released replies its
        // secondary does not hold: another shard's member took the island
        // back in sync on a race this one lost (the votes of
        // `cluster::sync_votes` make it rare). The record claims too much
        // for this tablet: solo again at once, not after the timeout.
        let unbacked = p.acked < p.acknowledged;
        let overdue = secondary_gone
            || unbacked
            || p.waiting_since_ms
                .is_some_and(|since| self.now_ms >= since + self.config.replica_ack_timeout_ms);
        let current = self.view.as_ref().is_some_and(|v| v.revision == p.revision);
        if p.mode != Mode::Sync || !overdue || !current {
            return;
        }
        let view = self.view.clone().expect("checked above");
        let me = self.config.me;
        self.ask(&view, None, |r| {
            r.epoch += 1;
            r.insync = vec![me];
            r.mode = Mode::Solo;
        });
    }

    /// A solo primary whose secondary caught up takes it back in `insync`:
    /// first it holds its replies until the secondary has everything
    /// acknowledged so far, then it asks the store. A secondary that stops
    /// acking meanwhile lets the replies go again. (Runs every tick: the
    /// view is copied only to ask.)
    fn check_insync(&mut self) {
        let (now, timeout) = (self.now_ms, self.config.replica_ack_timeout_ms);
        let (last, window, idle) = (self.log.last, self.config.window, self.txn.is_none());
        let Some(view) = &self.view else {
            return;
        };
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        let secondary = p.secondary;
        if p.mode != Mode::Solo || !p.joined || !view.live.contains(&secondary) {
            p.holding_since_ms = None;
            return;
        }
        let ask = match p.holding_since_ms {
            None if p.acked >= p.start && p.acked + window >= last => {
                p.holding_since_ms = Some(now);
                false
            }
            Some(since) if now >= since + timeout && idle => {
                p.holding_since_ms = None;
                false
            }
            Some(_) => p.acked >= p.acknowledged && view.revision == p.revision,
            None => false,
        };
        if ask {
            let view = view.clone();
            self.ask(&view, None, |r| {
                r.insync.push(secondary);
                r.mode = Mode::Sync;
            });
        }
    }

    // ---- the secondary's side ---------------------------------------------

    fn ask_to_join(&mut self) {
        let Role::Secondary(s) = &mut self.role else {
            return;
        };
        let installing = s
            .installing_since_ms
            .is_some_and(|since| self.now_ms < since + SNAPSHOT_STALL_MS);
        if s.truncating || installing || self.log.durable < self.log.last {
            return;
        }
        s.installing_since_ms = None;
        s.asked_ms = self.now_ms;
        let msg = ReplMsg::CatchUp {
            epoch: s.epoch,
            last_epoch: self.log.last_epoch(),
            last_seq: self.log.last,
        };
        self.out.push_back(Output::Send { to: s.primary, msg });
    }

    fn shipped_here(
        &mut self,
        from: NodeId,
        (epoch, seq, written): (Epoch, Seq, Epoch),
        bytes: Vec<u8>,
    ) {
        let known = self.view.as_ref().map_or(0, |v| v.record.epoch);
        let Role::Secondary(s) = &mut self.role else {
            if known > epoch {
                let msg = ReplMsg::Fenced { epoch: known };
                self.out.push_back(Output::Send { to: from, msg });
            }
            return;
        };
        if epoch < s.epoch {
            let msg = ReplMsg::Fenced { epoch: s.epoch };
            self.out.push_back(Output::Send { to: from, msg });
            return;
        }
        // A batch must come from this epoch's primary, written in an
        // epoch between this log's last and this one: anything else is a
        // broken peer, and is dropped rather than allowed to break the
        // log's epoch history.
        let written_ok = written <= epoch && written >= self.log.last_epoch();
        if epoch > s.epoch || !s.acking || s.truncating || !written_ok {
            return;
        }
        if !s.joined {
            // The primary ships only to a log it found agreeing with its
            // own, from just after it: the first such batch is the sign.
            if seq != self.log.last + 1 || self.log.durable < self.log.last {
                return;
            }
            s.joined = true;
            s.next = seq;
        }
        if seq > s.next {
            let (gap, at) = s.expected;
            if gap != s.next || self.now_ms >= at + self.config.retry_ms {
                s.expected = (s.next, self.now_ms);
                let msg = ReplMsg::Expect { epoch, seq: s.next };
                self.out.push_back(Output::Send { to: from, msg });
            }
            return;
        }
        if seq < s.next {
            // Shipped again: the primary missed an ack.
            if self.now_ms >= s.reacked_ms + self.config.retry_ms {
                s.reacked_ms = self.now_ms;
                let seq = self.log.durable;
                self.out.push_back(Output::Send {
                    to: from,
                    msg: ReplMsg::Ack { epoch, seq },
                });
            }
            return;
        }
        s.next += 1;
        self.log.appended(seq, written);
        self.out.push_back(Output::Append {
            seq,
            epoch: written,
            bytes,
        });
    }

    /// A chunk of the primary's checkpoint, taken by a secondary of the
    /// primary's epoch when no truncation is under way. A joined
    /// secondary gets one when the primary, shipping again from an
    /// acknowledgement that was lost, found those batches gone: out of
    /// `insync` it starts over from the checkpoint (dropping its log is
    /// safe, no acknowledgement counts on it); in `insync` it holds
    /// every acknowledged batch, so it says where its log ends instead
    /// and the primary ships from there.
    fn snapshot_chunk(&mut self, epoch: Epoch, batch: Seq, at: (u64, u64), bytes: Vec<u8>) {
        let me = self.config.me;
        let insync = (self.view.as_ref()).is_some_and(|v| v.record.insync.contains(&me));
        let Role::Secondary(s) = &mut self.role else {
            return;
        };
        if epoch != s.epoch || s.truncating || !s.acking {
            return;
        }
        if s.joined {
            s.joined = false;
            if insync {
                self.ask_to_join();
                return;
            }
        }
        s.installing_since_ms = Some(self.now_ms);
        let (offset, total) = at;
        self.out.push_back(Output::SnapshotChunk {
            batch,
            offset,
            total,
            bytes,
        });
    }

    fn diverge(&mut self, epoch: Epoch, upto: Seq) {
        let Role::Secondary(s) = &mut self.role else {
            return;
        };
        if epoch != s.epoch || s.joined || s.truncating {
            return;
        }
        s.truncating = true;
        self.out.push_back(Output::Truncate { after: upto });
    }

    // ---- the primary's side -----------------------------------------------

    fn catch_up(&mut self, from: NodeId, epoch: Epoch, (last_epoch, last_seq): (Epoch, Seq)) {
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        if epoch != p.epoch || from != p.secondary {
            return;
        }
        let agree = match self.config.planted {
            // Takes the secondary's log as it is, stale tail and all.
            Some(PlantedBug::RejoinWithoutTruncation) => last_seq,
            _ => self.log.end_of(last_epoch).min(last_seq),
        };
        if agree < last_seq {
            let msg = ReplMsg::Diverge { epoch, upto: agree };
            self.out.push_back(Output::Send { to: from, msg });
            return;
        }
        p.joined = true;
        p.snapshot_sent_ms = None;
        p.acked = last_seq;
        p.shipped = last_seq;
        p.progress_ms = self.now_ms;
        self.ship_more();
        self.release();
        self.check_insync();
    }

    fn acked(&mut self, epoch: Epoch, seq: Seq) {
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        if epoch > p.epoch {
            self.role = Role::Idle;
            return;
        }
        if epoch < p.epoch || !p.joined || seq <= p.acked {
            return;
        }
        p.acked = seq.min(self.log.last);
        p.progress_ms = self.now_ms;
        p.waiting_since_ms = (p.acked < self.log.last).then_some(self.now_ms);
        self.ship_more();
        self.release();
        self.check_insync();
    }

    /// Ships what the window allows past `shipped`, read from the log.
    fn ship_more(&mut self) {
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        let upto = self.log.last.min(p.acked + self.config.window);
        if p.shipped >= upto {
            return;
        }
        let from = p.shipped + 1;
        p.shipped = upto;
        self.out.push_back(Output::Read {
            to: p.secondary,
            from,
            upto,
        });
    }

    /// Rule 1 and 4: releases the replies whose batches are durable where
    /// the mode needs them.
    fn release(&mut self) {
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        let local = self.log.durable;
        let planted = self.config.planted == Some(PlantedBug::AckBeforeReplica);
        let upto = match p.mode {
            Mode::Sync if planted => local,
            Mode::Sync => local.min(p.acked),
            Mode::Solo if self.now_ms >= self.valid_until_ms => return,
            Mode::Solo if p.holding_since_ms.is_some() => local.min(p.acked),
            Mode::Solo => local,
        };
        if upto < p.start || upto <= p.acknowledged {
            return;
        }
        p.acknowledged = upto;
        let epoch = p.epoch;
        self.out.push_back(Output::Acknowledged { epoch, upto });
    }
}

/// Whether `record` is of an island that has served (past the bootstrap's
/// epoch) and whose secondary holds every batch it acknowledged (in sync).
fn holds_everything(record: &IslandRecord) -> bool {
    record.epoch > 1 && record.mode == Mode::Sync && record.insync.contains(&record.secondary)
}

/// Whether the island's primary holds a lease in `view`.
fn primary_live(view: &View) -> bool {
    view.live.contains(&view.record.primary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secondary of epoch 5 over an empty log, joined by its first batch.
    fn joined_secondary() -> Member {
        let mut member = Member::new(MemberConfig::new(2, 1), LogInfo::default(), 0);
        let record = IslandRecord {
            epoch: 5,
            primary: 1,
            secondary: 2,
            insync: vec![1, 2],
            mode: Mode::Sync,
        };
        let view = View {
            record,
            revision: 10,
            live: vec![1, 2],
            made_here: false,
        };
        member.view(view, 0);
        let first = ReplMsg::Ship {
            epoch: 5,
            seq: 1,
            written: 5,
            bytes: vec![1],
        };
        member.receive(1, first);
        while member.poll_output().is_some() {}
        assert_eq!(member.log().last, 1);
        member
    }

    fn outputs(member: &mut Member) -> Vec<Output> {
        std::iter::from_fn(|| member.poll_output()).collect()
    }

    /// A restarted primary with an empty log (its disk was lost) whose
    /// in-sync secondary holds the island never serves it; with the
    /// secondary out of sync (solo), or at the bootstrap's epoch, an empty
    /// log may be a start that never wrote, and it goes on as rule 7 says.
    #[test]
    fn a_primary_that_lost_its_log_never_serves_an_island_its_secondary_holds() {
        let view = |epoch, mode, insync: Vec<NodeId>| View {
            record: IslandRecord {
                epoch,
                primary: 1,
                secondary: 2,
                insync,
                mode,
            },
            revision: 10,
            live: vec![1, 2],
            made_here: false,
        };
        let fresh = || Member::new(MemberConfig::new(1, 1), LogInfo::default(), 0);
        let mut member = fresh();
        member.view(view(3, Mode::Sync, vec![1, 2]), 0);
        assert!(member.lost_log());
        // Its live secondary is asked to take the island over.
        let handed = IslandRecord {
            epoch: 4,
            primary: 2,
            secondary: 1,
            insync: vec![2],
            mode: Mode::Solo,
        };
        let txn = Output::Txn {
            id: 1,
            expect_revision: 10,
            absent: None,
            record: handed,
        };
        assert_eq!(outputs(&mut member), [txn]);
        let mut alone = fresh();
        alone.view(
            View {
                live: vec![1],
                ..view(3, Mode::Sync, vec![1, 2])
            },
            0,
        );
        assert!(alone.lost_log());
        assert_eq!(outputs(&mut alone), [], "no live secondary to hand it to");
        for (epoch, mode, insync) in [(3, Mode::Solo, vec![1]), (1, Mode::Sync, vec![1, 2])] {
            let mut member = fresh();
            member.view(view(epoch, mode, insync), 0);
            assert!(!member.lost_log());
            assert!(matches!(outputs(&mut member)[..], [Output::Txn { .. }]));
        }
        let mut written = Member::new(
            MemberConfig::new(1, 1),
            LogInfo::restored(vec![(2, 1)], 9),
            0,
        );
        written.view(view(3, Mode::Sync, vec![1, 2]), 0);
        assert!(!written.lost_log());
    }

    /// A primary whose log no longer holds what its secondary needs sends
    /// its checkpoint; the secondary takes the chunks, asks nothing
    /// meanwhile, and once it installed the checkpoint asks to catch up
    /// from the checkpoint's batch, which the primary takes.
    #[test]
    fn a_secondary_behind_the_primary_s_log_gets_its_checkpoint_then_catches_up() {
        let mut record = IslandRecord {
            epoch: 2,
            primary: 1,
            secondary: 2,
            insync: vec![1],
            mode: Mode::Solo,
        };
        let view = |record: &IslandRecord, revision| View {
            record: record.clone(),
            revision,
            live: vec![1, 2],
            made_here: false,
        };
        let log = LogInfo::restored(vec![(2, 1)], 50);
        let mut primary = Member::new(MemberConfig::new(1, 1), log, 0);
        primary.keepalive(u64::MAX);
        // Restarted, it serves only an epoch of its own (rule 7).
        primary.view(view(&record, 10), 0);
        outputs(&mut primary);
        record.epoch = 3;
        let view = view(&record, 11);
        primary.view(view.clone(), 0);
        primary.durable(51);
        outputs(&mut primary);
        let mut secondary = Member::new(MemberConfig::new(2, 1), LogInfo::default(), 0);
        secondary.view(view, 0);
        let asked = outputs(&mut secondary);
        let Some(Output::Send { msg: catch_up, .. }) = asked.into_iter().next() else {
            panic!("no CatchUp");
        };
        primary.receive(2, catch_up);
        assert!(outputs(&mut primary)
            .iter()
            .any(|o| matches!(o, Output::Read { from: 1, .. })));
        primary.log_gone(2);
        assert_eq!(outputs(&mut primary), [Output::SendSnapshot { to: 2 }]);

        let chunk = |offset: u64, bytes: Vec<u8>| ReplMsg::Snapshot {
            epoch: 3,
            batch: 40,
            offset,
            total: 8,
            bytes,
        };
        secondary.receive(1, chunk(0, vec![1; 4]));
        assert!(matches!(
            outputs(&mut secondary)[..],
            [Output::SnapshotChunk {
                batch: 40,
                offset: 0,
                total: 8,
                ..
            }]
        ));
        secondary.snapshot_written(40, 4);
        // While installing, a retry asks nothing of the primary.
        secondary.tick(1_000);
        let acked = outputs(&mut secondary);
        assert_eq!(acked.len(), 1, "{acked:?}");
        assert!(matches!(
            acked[0],
            Output::Send {
                msg: ReplMsg::SnapshotAck { offset: 4, .. },
                ..
            }
        ));
        secondary.receive(1, chunk(4, vec![2; 4]));
        outputs(&mut secondary);
        secondary.installed(LogInfo::restored(vec![(2, 1)], 40));
        let Some(Output::Send { msg: catch_up, .. }) = outputs(&mut secondary).pop() else {
            panic!("no CatchUp after the install");
        };
        assert_eq!(
            catch_up,
            ReplMsg::CatchUp {
                epoch: 3,
                last_epoch: 2,
                last_seq: 40
            }
        );
        primary.receive(2, catch_up);
        assert!(outputs(&mut primary).iter().any(|o| matches!(
            o,
            Output::Read {
                from: 41,
                upto: 51,
                ..
            }
        )));
        assert_eq!(primary.replica_acked(), Some(40));
    }

    #[test]
    fn a_batch_proposed_while_solo_and_unacknowledged_once_sync_makes_the_island_solo_again() {
        let mut member = Member::new(MemberConfig::new(1, 1), LogInfo::default(), 0);
        member.keepalive(u64::MAX);
        let mut record = IslandRecord {
            epoch: 1,
            primary: 1,
            secondary: 2,
            insync: vec![1, 2],
            mode: Mode::Sync,
        };
        let view = |record: &IslandRecord, revision| View {
            record: record.clone(),
            revision,
            live: vec![1, 2],
            made_here: false,
        };
        // A restarted primary asks for a new epoch, solo, and gets it.
        member.view(view(&record, 10), 0);
        assert!(matches!(outputs(&mut member)[..], [Output::Txn { .. }]));
        record.epoch = 2;
        record.insync = vec![1];
        record.mode = Mode::Solo;
        member.view(view(&record, 11), 0);
        outputs(&mut member);
        member.durable(1);
        // The secondary catches up; the primary asks to take it back.
        let (epoch, last_epoch, last_seq) = (2, 0, 0);
        let catch_up = ReplMsg::CatchUp {
            epoch,
            last_epoch,
            last_seq,
        };
        member.receive(2, catch_up);
        member.ship_read(2, vec![(1, 2, Vec::new())]);
        member.receive(2, ReplMsg::Ack { epoch: 2, seq: 1 });
        member.tick(10);
        let asked = outputs(&mut member);
        assert!(
            asked.iter().any(|o| matches!(o, Output::Txn { .. })),
            "{asked:?}"
        );
        // A batch goes in while still solo; then the island is in sync,
        // and the secondary falls silent.
        assert_eq!(member.propose(vec![9]), Ok(2));
        member.durable(2);
        record.insync = vec![1, 2];
        record.mode = Mode::Sync;
        member.view(view(&record, 12), 20);
        outputs(&mut member);
        member.tick(30);
        member.tick(30 + MemberConfig::new(1, 1).replica_ack_timeout_ms);
        let solo = outputs(&mut member).into_iter().find_map(|o| match o {
            Output::Txn { record, .. } => Some(record),
            _ => None,
        });
        assert_eq!(
            solo.map(|r| (r.epoch, r.mode, r.insync)),
            Some((3, Mode::Solo, vec![1]))
        );
    }

    /// An idle sync primary whose secondary's lease is gone asks for solo
    /// (nothing waits for an ack to time out), so that the controller can
    /// give the island another secondary; it asks nothing while the
    /// secondary is live.
    #[test]
    fn an_idle_sync_primary_whose_secondary_holds_no_lease_asks_for_solo() {
        let mut member = Member::new(MemberConfig::new(1, 1), LogInfo::default(), 0);
        member.keepalive(u64::MAX);
        let mut record = IslandRecord::first(1, 2);
        let view = |record: &IslandRecord, revision, live: Vec<NodeId>| View {
            record: record.clone(),
            revision,
            live,
            made_here: false,
        };
        member.view(view(&record, 10, vec![1, 2]), 0);
        let Some(Output::Txn { record: asked, .. }) = member.poll_output() else {
            panic!("a started primary asks for its own epoch first");
        };
        record = asked;
        member.view(view(&record, 11, vec![1, 2]), 0);
        record.insync = vec![1, 2];
        record.mode = Mode::Sync;
        member.view(view(&record, 12, vec![1, 2]), 0);
        outputs(&mut member);
        member.tick(60_000);
        assert_eq!(outputs(&mut member), [], "idle, its secondary live");
        member.view(view(&record, 12, vec![1]), 60_000);
        member.tick(60_001);
        let solo = outputs(&mut member).into_iter().find_map(|o| match o {
            Output::Txn { record, .. } => Some(record),
            _ => None,
        });
        let epoch = record.epoch + 1;
        assert_eq!(
            solo.map(|r| (r.epoch, r.mode, r.insync)),
            Some((epoch, Mode::Solo, vec![1]))
        );
    }

    /// One member per shard: an epoch another shard's member of the same
    /// running process asked for is served, not bumped again (which made
    /// two shards bump each other's epochs for ever); one the process did
    /// not write is bumped (rule 7).
    #[test]
    fn a_primary_serves_an_epoch_its_own_process_wrote_and_bumps_any_other() {
        let view = |record: &IslandRecord, revision, made_here| View {
            record: record.clone(),
            revision,
            live: vec![1, 2],
            made_here,
        };
        let mut record = IslandRecord::first(1, 2);
        record.epoch = 6;
        record.insync = vec![1];
        record.mode = Mode::Solo;
        let log = LogInfo::restored(vec![(5, 1)], 3);
        let mut member = Member::new(MemberConfig::new(1, 1), log.clone(), 0);
        member.keepalive(u64::MAX);
        member.view(view(&record, 10, true), 0);
        assert_eq!(member.primary_epoch(), Some(6));
        let asked: Vec<_> = outputs(&mut member)
            .into_iter()
            .filter(|o| matches!(o, Output::Txn { .. }))
            .collect();
        assert_eq!(asked, []);
        let mut other = Member::new(MemberConfig::new(1, 1), log, 0);
        other.view(view(&record, 10, false), 0);
        assert_eq!(other.primary_epoch(), None);
        let Some(Output::Txn { record: asked, .. }) = other.poll_output() else {
            panic!("an epoch its process did not write is bumped");
        };
        assert_eq!(asked.epoch, 7);
        // A log that already holds epoch 6 never starts it again.
        let served = LogInfo::restored(vec![(5, 1), (6, 4)], 5);
        let mut again = Member::new(MemberConfig::new(1, 1), served, 0);
        again.view(view(&record, 10, true), 0);
        assert_eq!(again.primary_epoch(), None);
        let Some(Output::Txn { record: asked, .. }) = again.poll_output() else {
            panic!("an epoch this log holds is bumped");
        };
        assert_eq!(asked.epoch, 7);
    }

    /// The record turned `sync` while this tablet had released replies its
    /// secondary does not hold (another shard's member asked on a race):
    /// it asks for solo at once, without waiting for the ack timeout.
    #[test]
    fn a_sync_record_this_tablet_cannot_back_is_answered_by_solo_at_once() {
        let view = |record: &IslandRecord, revision| View {
            record: record.clone(),
            revision,
            live: vec![1, 2],
            made_here: true,
        };
        let mut record = IslandRecord::first(1, 2);
        record.epoch = 6;
        record.insync = vec![1];
        record.mode = Mode::Solo;
        let mut member = Member::new(MemberConfig::new(1, 1), LogInfo::default(), 0);
        member.keepalive(u64::MAX);
        member.view(view(&record, 10), 0);
        let start = member.log().last;
        member.durable(start);
        let seq = member.propose(vec![7]).unwrap();
        member.durable(seq);
        assert!(outputs(&mut member).contains(&Output::Acknowledged {
            epoch: 6,
            upto: seq
        }));
        record.insync = vec![1, 2];
        record.mode = Mode::Sync;
        member.view(view(&record, 11), 5);
        member.tick(6);
        let solo = outputs(&mut member).into_iter().find_map(|o| match o {
            Output::Txn { record, .. } => Some(record),
            _ => None,
        });
        assert_eq!(solo.map(|r| (r.epoch, r.mode)), Some((7, Mode::Solo)));
    }

    #[test]
    fn a_store_that_went_back_never_makes_a_log_write_an_old_epoch_again() {
        let log = LogInfo::restored(vec![(5, 1)], 3);
        let mut member = Member::new(MemberConfig::new(1, 1), log, 0);
        let mut record = IslandRecord::first(1, 2);
        record.epoch = 3;
        let view = |record: &IslandRecord, revision| View {
            record: record.clone(),
            revision,
            live: vec![1, 2],
            made_here: false,
        };
        member.view(view(&record, 10), 0);
        let Some(Output::Txn { record: asked, .. }) = member.poll_output() else {
            panic!("a restarted primary asks for a new epoch first");
        };
        assert_eq!(asked.epoch, 4);
        member.view(view(&asked, 11), 0);
        assert_eq!(member.poll_output(), None);
        assert_eq!(member.primary_epoch(), None);
        assert_eq!(member.log().last, 3, "nothing appended");
    }

    #[test]
    fn a_batch_claiming_an_epoch_outside_the_log_s_history_is_dropped() {
        let mut member = joined_secondary();
        for written in [3, 6] {
            let ship = ReplMsg::Ship {
                epoch: 5,
                seq: 2,
                written,
                bytes: vec![2],
            };
            member.receive(1, ship);
            assert_eq!(member.poll_output(), None, "written in {written}");
            assert_eq!(member.log().last, 1);
        }
    }
}
