//! [`Tablet`]: one shard's part in one island, between the protocol's core
//! ([`Member`]) and the tasks that do its I/O. The member's outputs are
//! sorted by who acts on them: messages for the peer go to the
//! replication connection, log work to the task that owns the log (the
//! commit task on a primary, the standby's task on a secondary), store
//! transactions to the control thread, and the acknowledged point to the
//! commit task. The connection waits on `outbox_signal`, the log's owner
//! on `work_signal` (log work, or a new acknowledged point).

use std::{collections::VecDeque, rc::Rc};

use shard::island::{Epoch, IslandId, IslandRecord, Member, NodeId, Output, ReplMsg, Seq, View};

use crate::remote::Signal;

/// Messages for the peer kept while no connection takes them, at most:
/// the member ships again from the last acknowledgement after its retry
/// interval, so older ones are dropped first, never needed.
pub const OUTBOX_MESSAGES_MAX: usize = 1_024;
/// Bytes of shipped batches kept for the peer, at most (dropped oldest
/// first, like the messages).
pub const OUTBOX_BYTES_MAX: usize = 64 << 20;

/// Store transactions waiting for the control thread, at most (a member
/// asks one at a time; this bounds a stalled control thread's backlog).
pub const TXNS_WAITING_MAX: usize = 16;

/// Entries kept to count the replica's lag in bytes, at most: past it the
/// two oldest merge, so the count stays exact in total and coarse only
/// in which ack takes an entry off (it comes off when its last batch is
/// acknowledged).
const LAG_ENTRIES_MAX: usize = 4_096;

/// What a tablet moved since its shard started, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TabletStats {
    /// As primary: batches (and their bytes) put on the replication
    /// connection, a batch shipped again counting again.
    pub shipped_batches: u64,
    pub shipped_bytes: u64,
    /// As secondary: batches (and their bytes) given to the standby to
    /// append.
    pub appended_batches: u64,
    pub appended_bytes: u64,
    /// As primary: bytes of the log the secondary is not known to hold.
    pub lag_bytes: u64,
    /// Messages dropped from a full outbox, and txns from a full queue.
    pub dropped: u64,
}

/// The primary's written batches its secondary has not acknowledged, as
/// (last seq, bytes) runs: the replica's lag in bytes.
#[derive(Debug, Default)]
struct LagBytes {
    runs: VecDeque<(Seq, u64)>,
    total: u64,
}

impl LagBytes {
    fn written(&mut self, seq: Seq, bytes: u64) {
        self.runs.push_back((seq, bytes));
        self.total += bytes;
        if self.runs.len() > LAG_ENTRIES_MAX {
            let (_, older) = self.runs.pop_front().expect("more than the max");
            self.runs[0].1 += older;
        }
    }

    fn acked(&mut self, upto: Seq) {
        while let Some(&(seq, bytes)) = self.runs.front() {
            if seq > upto {
                break;
            }
            self.runs.pop_front();
            self.total -= bytes;
        }
    }

    fn clear(&mut self) {
        self.runs.clear();
        self.total = 0;
    }
}

/// Work on the tablet's local log, done in order by the log's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWork {
    /// Append batch `seq` written in `epoch` (empty `bytes`: the epoch's
    /// own first batch, an `EpochStart`); then [`Tablet::durable`].
    Append {
        seq: Seq,
        epoch: Epoch,
        bytes: Vec<u8>,
    },
    /// Drop every batch after `after`; then [`Tablet::truncated`].
    Truncate { after: Seq },
    /// Read batches `from..=upto` and hand them to [`Tablet::ship_read`].
    Read { from: Seq, upto: Seq },
    /// Send the latest checkpoint to the secondary `to` (its next batch is
    /// gone from the log): [`Tablet::send_chunk`], paced by
    /// [`Tablet::snapshot_acked`].
    SendSnapshot { to: NodeId },
    /// Write this chunk of the primary's checkpoint of `batch`; then
    /// [`Tablet::snapshot_written`], and once whole, install it and
    /// [`Tablet::installed`].
    SnapshotChunk {
        batch: Seq,
        offset: u64,
        total: u64,
        bytes: Vec<u8>,
    },
}

/// The shard's log and its island member no longer count batches alike:
/// the log wrote batch `log` where the member expected `member` (0: it is
/// not the serving primary any more). Nothing more is acknowledged; the
/// node rejoins its island by a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the log wrote batch {log} where the island member expected {member} (0: it is no longer \
     the primary; a newer epoch came while the batch was written): nothing more may be \
     acknowledged; restart the node to rejoin its island"
)]
pub struct OutOfStep {
    pub log: Seq,
    pub member: Seq,
}

/// A compare-and-swap on `islands/<island>` a member asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IslandTxn {
    pub island: IslandId,
    /// The shard whose member asked (its tablet of the island).
    pub shard: u16,
    pub expect_revision: u64,
    /// The txn also needs this node to hold no lease.
    pub absent: Option<NodeId>,
    pub record: IslandRecord,
}

/// One shard's part in one island.
pub struct Tablet {
    island: IslandId,
    /// The shard that runs this tablet.
    shard: u16,
    member: Member,
    outbox: VecDeque<ReplMsg>,
    /// Bytes of the batches in `outbox`.
    outbox_bytes: usize,
    log_work: VecDeque<LogWork>,
    txns: VecDeque<IslandTxn>,
    /// Acknowledged up to this batch, at this epoch (rule 1).
    acknowledged: (Epoch, Seq),
    /// Raised when messages wait for the peer.
    pub outbox_signal: Rc<Signal>,
    /// Raised when log work waits or the acknowledged point moved.
    pub work_signal: Rc<Signal>,
    stats: TabletStats,
    lag: LagBytes,
    /// As primary sending a checkpoint: how far the secondary wrote it.
    snapshot_acked: Option<(Seq, u64)>,
}

impl Tablet {
    /// Shard `shard`'s tablet of `island`, run by `member`.
    pub fn new(island: IslandId, shard: u16, member: Member) -> Tablet {
        Tablet {
            island,
            shard,
            member,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            log_work: VecDeque::new(),
            txns: VecDeque::new(),
            acknowledged: (0, 0),
            outbox_signal: Rc::default(),
            work_signal: Rc::default(),
            stats: TabletStats::default(),
            lag: LagBytes::default(),
            snapshot_acked: None,
        }
    }

    pub fn island(&self) -> IslandId {
        self.island
    }

    pub fn member(&self) -> &Member {
        &self.member
    }

    /// The last batch whose replies may go, and the epoch that let them.
    pub fn acknowledged(&self) -> (Epoch, Seq) {
        self.acknowledged
    }

    /// What it moved so far, and the replica's lag in bytes now.
    pub fn stats(&self) -> TabletStats {
        TabletStats {
            lag_bytes: self.lag.total,
            ..self.stats
        }
    }

    /// Whether a new batch may be written as this island's primary now.
    pub fn may_propose(&self) -> bool {
        self.member.may_propose()
    }

    /// A batch the primary wrote and made durable: `seq` must be the next
    /// the member expects (the log and the member count alike). Err when
    /// the member stopped being the serving primary while the batch was
    /// written (a newer epoch seen from etcd or a peer): the batch is in
    /// the local log but no epoch of the island holds it, so it must never
    /// be acknowledged, and this log cannot go on shipping.
    pub fn written(&mut self, seq: Seq, bytes: Vec<u8>) -> Result<(), OutOfStep> {
        let length = bytes.len() as u64;
        match self.member.propose(bytes) {
            Ok(proposed) if proposed == seq => {}
            Ok(member) => return Err(OutOfStep { log: seq, member }),
            Err(_) => {
                return Err(OutOfStep {
                    log: seq,
                    member: 0,
                })
            }
        }
        self.lag.written(seq, length);
        // The member's own append is the one just done.
        self.member.durable(seq);
        self.pump();
        self.log_work
            .retain(|w| !matches!(w, LogWork::Append { seq: s, .. } if *s == seq));
        Ok(())
    }

    pub fn durable(&mut self, seq: Seq) {
        self.member.durable(seq);
        self.pump();
    }

    pub fn truncated(&mut self, after: Seq) {
        self.member.truncated(after);
        self.pump();
    }

    /// Batches read for the peer: `(seq, epoch written, frame)`.
    pub fn ship_read(&mut self, to: NodeId, batches: Vec<(Seq, Epoch, Vec<u8>)>) {
        self.member.ship_read(to, batches);
        self.pump();
    }

    pub fn receive(&mut self, from: NodeId, msg: ReplMsg) {
        if let ReplMsg::SnapshotAck { batch, offset, .. } = msg {
            // The transfer looks at it on its own poll: no task to wake.
            self.snapshot_acked = Some((batch, offset));
        }
        self.member.receive(from, msg);
        self.pump();
    }

    /// As primary: the log no longer holds the batches its secondary `to`
    /// needs next.
    pub fn log_gone(&mut self, to: NodeId) {
        self.snapshot_acked = None;
        self.member.log_gone(to);
        self.pump();
    }

    /// As primary sending a checkpoint: (its batch, bytes the secondary
    /// wrote) as last acknowledged.
    pub fn snapshot_acked(&self) -> Option<(Seq, u64)> {
        self.snapshot_acked
    }

    /// As primary sending a checkpoint: a chunk for the secondary (a
    /// [`ReplMsg::Snapshot`] of this epoch), through the outbox.
    pub fn send_chunk(&mut self, batch: Seq, (offset, total): (u64, u64), bytes: Vec<u8>) {
        let Some(epoch) = self.member.primary_epoch() else {
            return;
        };
        let msg = ReplMsg::Snapshot {
            epoch,
            batch,
            offset,
            total,
            bytes,
        };
        self.enqueue(msg);
        self.outbox_signal.raise();
    }

    /// As secondary: the checkpoint of `batch` is written up to `offset`.
    pub fn snapshot_written(&mut self, batch: Seq, offset: u64) {
        self.member.snapshot_written(batch, offset);
        self.pump();
    }

    /// As secondary: the checkpoint is the tablet's state; its log is `log`.
    pub fn installed(&mut self, log: shard::island::LogInfo) {
        self.member.installed(log);
        self.pump();
    }

    pub fn view(&mut self, view: View, now_ms: u64) {
        self.member.view(view, now_ms);
        self.pump();
    }

    pub fn tick(&mut self, now_ms: u64, lease_valid_until_ms: u64) {
        self.member.keepalive(lease_valid_until_ms);
        self.member.tick(now_ms);
        self.pump();
    }

    /// The next message for the peer.
    pub fn next_message(&mut self) -> Option<ReplMsg> {
        let msg = self.outbox.pop_front()?;
        let bytes = shipped_bytes(&msg);
        self.outbox_bytes -= bytes;
        if matches!(msg, ReplMsg::Ship { .. }) {
            self.stats.shipped_batches += 1;
            self.stats.shipped_bytes += bytes as u64;
        }
        Some(msg)
    }

    /// The connection ended: what waited for it is dropped (the member
    /// ships again from the last acknowledgement, or asks again, on its
    /// retry interval).
    pub fn disconnected(&mut self) {
        self.outbox.clear();
        self.outbox_bytes = 0;
    }

    pub fn next_log_work(&mut self) -> Option<LogWork> {
        let work = self.log_work.pop_front()?;
        if let LogWork::Append { bytes, .. } = &work {
            if !bytes.is_empty() {
                self.stats.appended_batches += 1;
                self.stats.appended_bytes += bytes.len() as u64;
            }
        }
        Some(work)
    }

    pub fn has_log_work(&self) -> bool {
        !self.log_work.is_empty()
    }

    pub fn next_txn(&mut self) -> Option<IslandTxn> {
        self.txns.pop_front()
    }

    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        format!("island {}: {}", self.island, self.member.summary())
    }

    /// A message for the peer, the oldest dropped past the outbox's bounds.
    fn enqueue(&mut self, msg: ReplMsg) {
        self.outbox_bytes += shipped_bytes(&msg);
        self.outbox.push_back(msg);
        while self.outbox.len() > OUTBOX_MESSAGES_MAX || self.outbox_bytes > OUTBOX_BYTES_MAX {
            let Some(old) = self.outbox.pop_front() else {
                break;
            };
            self.outbox_bytes -= shipped_bytes(&old);
            self.stats.dropped += 1;
        }
    }

    /// Sorts the member's outputs by who acts on them.
    fn pump(&mut self) {
        let (mut sends, mut work) = (false, false);
        while let Some(output) = self.member.poll_output() {
            work |= !matches!(output, Output::Send { .. } | Output::Txn { .. });
            sends |= matches!(output, Output::Send { .. });
            match output {
                Output::Append { seq, epoch, bytes } => {
                    self.log_work
                        .push_back(LogWork::Append { seq, epoch, bytes });
                }
                Output::Truncate { after } => self.log_work.push_back(LogWork::Truncate { after }),
                Output::Read { from, upto, .. } => {
                    self.log_work.push_back(LogWork::Read { from, upto });
                }
                Output::Send { msg, .. } => self.enqueue(msg),
                Output::SendSnapshot { to } => {
                    self.log_work.push_back(LogWork::SendSnapshot { to });
                }
                Output::SnapshotChunk {
                    batch,
                    offset,
                    total,
                    bytes,
                } => self.log_work.push_back(LogWork::SnapshotChunk {
                    batch,
                    offset,
                    total,
                    bytes,
                }),
                Output::Txn {
                    expect_revision,
                    absent,
                    record,
                    ..
                } => {
                    if self.txns.len() >= TXNS_WAITING_MAX {
                        self.txns.pop_front();
                        self.stats.dropped += 1;
                    }
                    self.txns.push_back(IslandTxn {
                        island: self.island,
                        shard: self.shard,
                        expect_revision,
                        absent,
                        record,
                    });
                }
                Output::Acknowledged { epoch, upto } => {
                    self.acknowledged = (epoch, upto);
                }
            }
        }
        match self.member.replica_acked() {
            Some(acked) => self.lag.acked(acked),
            None => self.lag.clear(),
        }
        if sends {
            self.outbox_signal.raise();
        }
        if work {
            self.work_signal.raise();
        }
    }
}

/// The batch bytes a message carries.
fn shipped_bytes(msg: &ReplMsg) -> usize {
    match msg {
        ReplMsg::Ship { bytes, .. } | ReplMsg::Snapshot { bytes, .. } => bytes.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_in_bytes_stays_exact_in_total_and_bounded_in_entries() {
        let mut lag = LagBytes::default();
        for seq in 1..=(LAG_ENTRIES_MAX as u64 * 3) {
            lag.written(seq, 10);
        }
        assert_eq!(lag.total, LAG_ENTRIES_MAX as u64 * 30);
        assert!(lag.runs.len() <= LAG_ENTRIES_MAX);
        // The merged oldest run comes off only once its last batch is acked.
        let first_last = lag.runs[0].0;
        lag.acked(first_last - 1);
        assert_eq!(lag.total, LAG_ENTRIES_MAX as u64 * 30);
        lag.acked(first_last);
        assert!(lag.total < LAG_ENTRIES_MAX as u64 * 30);
        lag.acked(LAG_ENTRIES_MAX as u64 * 3);
        assert_eq!((lag.total, lag.runs.len()), (0, 0));
    }
}
