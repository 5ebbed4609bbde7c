//! What the shard owes the journal, and what waits for it.
//!
//! [`Durability`] owns the records not yet taken for a commit, the replies
//! held until the batch holding their records is durable, the write-back
//! cache (`sync_delay_ms`), and the journal's state as the shard sees it
//! (failed for good, disk full, short of a resource). Every rule that says
//! "only after the commit" or "not while the disk is full" is one of its
//! verbs, so no handler writes that rule again.
//!
//! [`WriteBack`] is the one value per account that the write-back cache
//! needs: which of the account's mailbox seqs the journal accounts for, so
//! an entry acknowledged before it was due is never written and replay
//! never sees a mailbox with a hole in it.

use std::collections::VecDeque;

use storage::{EntryRecord, Record};
use wire::{encode_server, ErrorKind, ServerFrame};

use super::{ConnId, Dest, PeerMessage};

/// The largest record vector (in records) kept for reuse between journal
/// batches.
const SPARE_RECORDS_CAPACITY_MAX: usize = 64 * 1024;

/// What a cached record counts against `sync_delay_bytes_max` beyond its
/// body: the record's fixed fields and the queue slot, roughly.
const CACHED_RECORD_OVERHEAD_BYTES: usize = 64;

pub(super) const STORAGE_FAILED: &str = "the server cannot write to its storage; try later";
pub(super) const DISK_FULL: &str = "the server's disk is full; try later";
pub(super) const STORAGE_UNAVAILABLE: &str =
    "the server is short of resources for its storage; retry later";

/// A reply held until the journal commits the batch it depends on.
#[derive(Debug)]
pub(super) enum Held {
    /// Encoded frames for a connection.
    Frame { conn: ConnId, bytes: Vec<u8> },
    /// A message for a shard (this one included) or another node.
    Peer { dest: Dest, message: PeerMessage },
}

/// Why new durable work may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The journal failed; nothing durable is accepted again.
    Failed,
    /// The disk is full: its room is kept for acknowledgements.
    DiskFull,
    /// The journal is short of a resource that comes back (descriptors,
    /// memory) until a commit succeeds.
    Unavailable,
}

impl Refusal {
    /// The error a phone or a peer shard is answered with.
    pub(super) fn kind(self) -> ErrorKind {
        match self {
            Refusal::Failed => ErrorKind::StorageFailed,
            Refusal::DiskFull => ErrorKind::DiskFull,
            Refusal::Unavailable => ErrorKind::Overloaded,
        }
    }

    /// The detail of that error, for people.
    pub(super) fn detail(self) -> &'static str {
        match self {
            Refusal::Failed => STORAGE_FAILED,
            Refusal::DiskFull => DISK_FULL,
            Refusal::Unavailable => STORAGE_UNAVAILABLE,
        }
    }
}

/// A mailbox record in the write-back cache, written at `due_ms` unless
/// an acknowledgement makes it moot first.
#[derive(Debug)]
struct Deferred {
    due_ms: u64,
    record: Record,
}

/// The shard's records, held replies and write-back cache, and the state
/// of its journal.
#[derive(Debug, Default)]
pub(super) struct Durability {
    /// Records for the next commit, in the order they were made.
    records: Vec<Record>,
    /// An empty vector kept from a committed batch (see `recycle`).
    spare_records: Vec<Record>,
    /// Held replies, each tagged with the batch that must commit first;
    /// the tags never decrease front to back.
    held: VecDeque<(u64, Held)>,
    /// The last batch handed out by `take_batch`.
    batch: u64,
    /// The write-back cache, in arrival (so due) order, and what it
    /// counts against `sync_delay_bytes_max`.
    deferred: VecDeque<Deferred>,
    deferred_bytes: usize,
    failed: bool,
    disk_full: bool,
    storage_unavailable: bool,
}

impl Durability {
    /// A record for the next commit.
    pub(super) fn record(&mut self, record: Record) {
        self.records.push(record);
    }

    /// Holds a reply until the batch that holds the records made so far is
    /// durable: the next one `take_batch` hands out.
    pub(super) fn hold(&mut self, held: Held) {
        let batch = self.batch + 1;
        debug_assert!(self.held.back().is_none_or(|(b, _)| *b <= batch));
        self.held.push_back((batch, held));
    }

    /// Encodes `frame` and holds it for `conn` (see `hold`).
    pub(super) fn hold_frame(&mut self, conn: ConnId, frame: &ServerFrame<'_>) {
        let mut bytes = Vec::new();
        encode_server(frame, &mut bytes);
        self.hold(Held::Frame { conn, bytes });
    }

    /// Holds a message for `dest` (see `hold`).
    pub(super) fn hold_peer(&mut self, dest: Dest, message: PeerMessage) {
        self.hold(Held::Peer { dest, message });
    }

    /// Whether new durable work (a message, a signup, a profile) may
    /// start. Acknowledgements, deliveries and resends of what is stored
    /// go on regardless.
    pub(super) fn admit(&self) -> Result<(), Refusal> {
        if self.failed {
            Err(Refusal::Failed)
        } else if self.disk_full {
            Err(Refusal::DiskFull)
        } else if self.storage_unavailable {
            Err(Refusal::Unavailable)
        } else {
            Ok(())
        }
    }

    /// True once the journal failed for good.
    pub(super) fn is_failed(&self) -> bool {
        self.failed
    }

    pub(super) fn set_disk_full(&mut self, full: bool) {
        self.disk_full = full;
    }

    pub(super) fn is_disk_full(&self) -> bool {
        self.disk_full
    }

    pub(super) fn set_storage_unavailable(&mut self, unavailable: bool) {
        self.storage_unavailable = unavailable;
    }

    pub(super) fn is_storage_unavailable(&self) -> bool {
        self.storage_unavailable
    }

    /// The records for the next commit, and its batch number.
    pub(super) fn take_batch(&mut self) -> (u64, Vec<Record>) {
        self.batch += 1;
        let spare = std::mem::take(&mut self.spare_records);
        (self.batch, std::mem::replace(&mut self.records, spare))
    }

    /// Keeps a committed batch's vector so the next batch reuses its
    /// memory instead of growing a new one record by record.
    pub(super) fn recycle(&mut self, mut records: Vec<Record>) {
        records.clear();
        if records.capacity() <= SPARE_RECORDS_CAPACITY_MAX
            && records.capacity() > self.spare_records.capacity()
        {
            self.spare_records = records;
        }
    }

    /// Batches up to `batch` are durable: the replies that waited for them,
    /// oldest first.
    pub(super) fn committed(&mut self, batch: u64) -> Vec<Held> {
        debug_assert!(batch <= self.batch, "batch {batch} was never handed out");
        let due = self.held.partition_point(|(b, _)| *b <= batch);
        self.held.drain(..due).map(|(_, held)| held).collect()
    }

    /// The journal cannot commit anything any more: drops the records and
    /// the cache (what is cached was never promised durable) and returns
    /// every held reply for the caller to turn into an error. Records still
    /// come out of `take_batch` afterwards; the caller drops them.
    pub(super) fn fail(&mut self) -> Vec<Held> {
        self.failed = true;
        self.records.clear();
        self.deferred.clear();
        self.deferred_bytes = 0;
        self.held.drain(..).map(|(_, held)| held).collect()
    }

    /// True while records wait to be taken or replies wait for a commit.
    pub(super) fn has_pending(&self) -> bool {
        !self.records.is_empty() || !self.held.is_empty()
    }

    /// True when something waits for a commit not yet begun (records not
    /// taken, or replies held for the next batch); false when only the
    /// commit in flight, if any, is awaited.
    pub(super) fn awaits_next_commit(&self) -> bool {
        !self.records.is_empty() || self.held.back().is_some_and(|(b, _)| *b > self.batch)
    }

    // ---- the write-back cache ----------------------------------------------

    /// Caches a mailbox record until `due_ms`.
    pub(super) fn defer(&mut self, record: Record, due_ms: u64) {
        debug_assert!(self.deferred.back().is_none_or(|d| d.due_ms <= due_ms));
        self.deferred_bytes += cached_bytes(&record);
        self.deferred.push_back(Deferred { due_ms, record });
    }

    /// Replies held for a commit.
    pub(super) fn held_len(&self) -> usize {
        self.held.len()
    }

    /// What the cache counts against `sync_delay_bytes_max`.
    pub(super) fn deferred_bytes(&self) -> usize {
        self.deferred_bytes
    }

    /// Takes the oldest cached record, due or not.
    pub(super) fn take_oldest_deferred(&mut self) -> Option<Record> {
        let deferred = self.deferred.pop_front()?;
        self.deferred_bytes -= cached_bytes(&deferred.record);
        Some(deferred.record)
    }

    /// Takes the oldest cached record if it is due at `now_ms`.
    pub(super) fn take_due(&mut self, now_ms: u64) -> Option<Record> {
        if self.deferred.front()?.due_ms <= now_ms {
            self.take_oldest_deferred()
        } else {
            None
        }
    }
}

/// What a cached record counts against `sync_delay_bytes_max`.
fn cached_bytes(record: &Record) -> usize {
    CACHED_RECORD_OVERHEAD_BYTES
        + match record {
            Record::MailboxPut {
                entry: EntryRecord::Message { body, .. },
                ..
            } => body.len(),
            _ => 0,
        }
}

/// What the journal holds of one account's mailbox, as far as the
/// write-back cache is concerned.
#[derive(Debug, Default)]
pub(super) struct WriteBack {
    /// The highest seq the journal accounts for: a `MailboxPut` that went
    /// to it (not the write-back cache), or a `MailboxAck` past those
    /// (entries acknowledged before they were written).
    written_put: u64,
    /// The lowest written entry that no written `MailboxAck` covers yet (a
    /// lower bound: entries never written may lie above it).
    written_unacked_from: Option<u64>,
    /// This account's entries in the write-back cache.
    cached: u32,
}

/// What becomes of a `MailboxPut` on its way to the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PutWrite {
    /// Acknowledged before it was written: its body never is.
    Moot,
    /// Written, after an ack up to `ack_before` when the entries in
    /// between were acknowledged and never written (so that replay never
    /// sees a mailbox with a hole in it).
    Write { ack_before: Option<u64> },
}

impl WriteBack {
    /// The highest seq the journal accounts for.
    pub(super) fn written_put(&self) -> u64 {
        self.written_put
    }

    /// Entries of this account in the write-back cache.
    pub(super) fn cached(&self) -> u32 {
        self.cached
    }

    /// An entry went into the write-back cache.
    pub(super) fn cache_entered(&mut self) {
        self.cached += 1;
    }

    /// The cache was dropped (the journal failed).
    pub(super) fn cache_dropped(&mut self) {
        self.cached = 0;
    }

    /// A `MailboxPut` of `seq` is on its way to the journal (out of the
    /// cache if `from_cache`), and the mailbox is acknowledged up to
    /// `acked_up_to`: whether it is written, and what goes before it.
    pub(super) fn put(&mut self, seq: u64, acked_up_to: u64, from_cache: bool) -> PutWrite {
        if from_cache {
            assert!(self.cached > 0, "a cached put of seq {seq} was not counted");
            self.cached -= 1;
        }
        if seq <= acked_up_to {
            return PutWrite::Moot;
        }
        let mut ack_before = None;
        if seq > self.written_put + 1 && self.written_unacked_from.is_some() {
            // The entries in between were acknowledged and never written.
            // Acknowledge the written ones before them too (they are: acks
            // cover a prefix).
            ack_before = Some(seq - 1);
            self.acked(seq - 1);
        }
        assert!(
            seq > self.written_put,
            "put of seq {seq} at or below {} already written",
            self.written_put
        );
        self.written_put = seq;
        self.written_unacked_from.get_or_insert(seq);
        PutWrite::Write { ack_before }
    }

    /// A `MailboxAck` up to `up_to` is on its way to the journal: true when
    /// it must be written. It is when it covers a written entry, or seqs
    /// the journal has not seen (entries acknowledged before they were
    /// written): replay must continue the mailbox after them, never reuse
    /// a seq.
    pub(super) fn ack(&mut self, up_to: u64) -> bool {
        let covers_written = self.written_unacked_from.is_some_and(|from| from <= up_to);
        if !covers_written && up_to <= self.written_put {
            return false;
        }
        self.acked(up_to);
        self.written_put = self.written_put.max(up_to);
        true
    }

    /// A replayed `MailboxPut` of `seq`.
    pub(super) fn restored_put(&mut self, seq: u64) {
        self.written_put = seq;
        self.written_unacked_from.get_or_insert(seq);
    }

    /// A replayed `MailboxAck` up to `up_to`.
    pub(super) fn restored_ack(&mut self, up_to: u64) {
        self.acked(up_to);
        self.written_put = self.written_put.max(up_to);
    }

    /// A replayed `MailboxStart` at `next_seq`.
    pub(super) fn restored_start(&mut self, next_seq: u64) {
        self.written_put = next_seq - 1;
        self.written_unacked_from = None;
    }

    /// A `MailboxAck` up to `up_to` went to the journal.
    fn acked(&mut self, up_to: u64) {
        self.written_unacked_from = match self.written_unacked_from {
            Some(_) if up_to >= self.written_put => None,
            Some(from) => Some(from.max(up_to + 1)),
            None => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_replies_wait_for_the_batch_after_the_records_before_them() {
        let mut durability = Durability::default();
        durability.hold_peer(
            Dest::Shard {
                island: 0,
                shard: 1,
            },
            PeerMessage::GroupStored {
                group: group(),
                gseq: 1,
            },
        );
        let (batch, _) = durability.take_batch();
        assert!(!durability.awaits_next_commit());
        durability.hold_peer(
            Dest::Shard {
                island: 0,
                shard: 1,
            },
            PeerMessage::GroupStored {
                group: group(),
                gseq: 2,
            },
        );
        assert!(durability.awaits_next_commit());
        assert_eq!(durability.committed(batch).len(), 1);
        assert!(durability.has_pending());
        let (next, _) = durability.take_batch();
        assert_eq!(durability.committed(next).len(), 1);
        assert!(!durability.has_pending());
    }

    #[test]
    fn a_failed_journal_refuses_before_a_full_disk() {
        let mut durability = Durability::default();
        assert_eq!(durability.admit(), Ok(()));
        durability.set_storage_unavailable(true);
        assert_eq!(durability.admit(), Err(Refusal::Unavailable));
        durability.set_disk_full(true);
        assert_eq!(durability.admit(), Err(Refusal::DiskFull));
        durability.hold_frame(conn(), &ServerFrame::Pong { nonce: 1 });
        assert_eq!(durability.fail().len(), 1);
        assert_eq!(durability.admit(), Err(Refusal::Failed));
        assert_eq!(Refusal::Failed.kind(), ErrorKind::StorageFailed);
    }

    #[test]
    fn the_cache_hands_back_what_is_due_in_order_and_counts_bytes() {
        let mut durability = Durability::default();
        durability.defer(ack(1), 10);
        durability.defer(ack(2), 20);
        assert_eq!(
            durability.deferred_bytes(),
            2 * CACHED_RECORD_OVERHEAD_BYTES
        );
        assert!(durability.take_due(9).is_none());
        assert_eq!(durability.take_due(10), Some(ack(1)));
        assert_eq!(durability.take_oldest_deferred(), Some(ack(2)));
        assert_eq!(durability.deferred_bytes(), 0);
    }

    #[test]
    fn a_put_acknowledged_before_it_was_due_is_moot() {
        let mut write_back = WriteBack::default();
        write_back.cache_entered();
        assert_eq!(write_back.put(1, 1, true), PutWrite::Moot);
        assert_eq!(write_back.cached(), 0);
        // Its ack covers a seq the journal has not seen: it is written.
        assert!(write_back.ack(1));
        assert!(!write_back.ack(1), "a repeated ack is not written again");
    }

    #[test]
    fn a_put_after_unwritten_entries_acknowledges_the_written_ones_first() {
        let mut write_back = WriteBack::default();
        assert_eq!(
            write_back.put(1, 0, false),
            PutWrite::Write { ack_before: None }
        );
        // Seqs 2 and 3 were acknowledged in the cache and never written.
        assert_eq!(
            write_back.put(4, 3, false),
            PutWrite::Write {
                ack_before: Some(3)
            }
        );
        assert_eq!(write_back.written_put(), 4);
        assert!(write_back.ack(4));
    }

    fn group() -> wire::GroupId {
        wire::GroupId::derive(wire::Phone::from_u64(15550000001).unwrap(), 1)
    }

    fn conn() -> ConnId {
        ConnId::for_tests(0, 1)
    }

    pub(super) fn ack(up_to: u64) -> Record {
        Record::MailboxAck {
            owner: wire::Phone::from_u64(15550000001).unwrap(),
            up_to,
        }
    }
}
