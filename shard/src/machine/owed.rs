//! Receipts this shard owes other shards and keeps on disk until they say
//! the receipt is durable there.
//!
//! A receipt is normally sent and forgotten: if a crash loses it, the
//! acknowledgement that made it is lost too (or within the write-back
//! cache's documented window), so the message is delivered again and the
//! receipt made again. Two kinds of receipt have nothing left to make them
//! again, and wait here instead, as `ReceiptOwed` records (in every
//! checkpoint while they wait):
//!
//! - those of a deleted account: the mailbox that held the messages is
//!   gone once the deletion is durable;
//! - those to a node that is not live: they would wait on its link, in
//!   memory, for as long as it is down, and a restart of this node in the
//!   meantime would lose them.
//!
//! They go in bounded `ReceiptsOwed` messages, are stored by the
//! recipient's shard through its write-back cache, and leave when it
//! answers `OwedStored` after its commit; until then they are told again
//! every [`OWED_RESEND_MS`], to live nodes only. A receipt told twice (a
//! crash between its commit and the answer, or a restart here before the
//! next checkpoint) reaches its phone twice, which keeps one per
//! `(by, client_id)`.

use std::collections::BTreeMap;

use storage::Record;
use wire::{Phone, ReceiptKind};

/// How often an owed receipt is told again while unanswered (ms).
pub const OWED_RESEND_MS: u64 = 10_000;

/// Receipts owed at once, at most (about 64 bytes each in memory, so
/// 64 MB): past it a deletion is refused (retry later), and a receipt to a
/// node that is down waits on its link in memory, as before this table.
pub(super) const RECEIPTS_OWED_MAX: usize = 1_000_000;

/// Receipts in one `ReceiptsOwed` message, at most: what one message to a
/// shard or across a link may carry (at most 42 bytes each encoded; a
/// server test checks a full one fits a link's envelope).
pub const RECEIPTS_PER_MESSAGE_MAX: usize = 512;

/// Receipts looked at per tick for telling again, at most, so a long
/// backlog (after a node was away) does not stall the shard.
const VISITS_PER_TICK_MAX: usize = 4_096;

/// A receipt owed: `by`'s, of kind `kind`, for `to`'s message
/// `client_id` sent at `sent_at_ms` (Unix ms; 0: not known).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwedReceipt {
    pub to: Phone,
    pub by: Phone,
    pub client_id: u64,
    pub kind: ReceiptKind,
    pub sent_at_ms: u64,
}

/// An owed receipt's identity: what an `OwedStored` answer names.
pub type OwedKey = (Phone, Phone, u64, ReceiptKind);

impl OwedReceipt {
    pub fn key(&self) -> OwedKey {
        (self.to, self.by, self.client_id, self.kind)
    }

    pub(super) fn record(&self) -> Record {
        Record::ReceiptOwed {
            to: self.to,
            by: self.by,
            client_id: self.client_id,
            kind: self.kind,
            sent_at_ms: self.sent_at_ms,
        }
    }
}

type Slot = (Phone, Phone, u64, u8);

fn slot(key: &OwedKey) -> Slot {
    (key.0, key.1, key.2, key.3 as u8)
}

#[derive(Debug)]
struct Waiting {
    receipt: OwedReceipt,
    /// When it was last told; `None`: not yet (replayed, or its node was
    /// not live), so due at the next tick.
    told_ms: Option<u64>,
}

/// The receipts this shard owes, by recipient first.
#[derive(Debug, Default)]
pub(super) struct OwedReceipts {
    owed: BTreeMap<Slot, Waiting>,
    /// Where the last resend sweep stopped.
    cursor: Option<Slot>,
}

impl OwedReceipts {
    /// Whether `more` receipts fit. One deletion always fits when
    /// nothing is owed, so a full mailbox can always be deleted.
    pub(super) fn has_room(&self, more: usize) -> bool {
        self.owed.is_empty() || self.owed.len() + more <= RECEIPTS_OWED_MAX
    }

    pub(super) fn len(&self) -> usize {
        self.owed.len()
    }

    /// `receipt` is owed; told at `told_ms` (`None`: not yet). The caller
    /// records it (`OwedReceipt::record`) unless replaying.
    pub(super) fn owe(&mut self, receipt: OwedReceipt, told_ms: Option<u64>) {
        self.owed
            .insert(slot(&receipt.key()), Waiting { receipt, told_ms });
    }

    /// The receipts `stored` are durable on their recipients' shards.
    pub(super) fn stored(&mut self, stored: &[OwedKey]) {
        for key in stored {
            self.owed.remove(&slot(key));
        }
    }

    /// The receipts due to be told at `now_ms` (never told, or told
    /// [`OWED_RESEND_MS`] ago) among those `may_tell` accepts (whose
    /// node is live); they count as told now. One call looks at
    /// [`VISITS_PER_TICK_MAX`] at most, going on next time where it
    /// stopped.
    pub(super) fn due(
        &mut self,
        now_ms: u64,
        mut may_tell: impl FnMut(&OwedReceipt) -> bool,
    ) -> Vec<OwedReceipt> {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut due = Vec::new();
        let mut visits = 0;
        let after = self.cursor.take().map_or(Unbounded, Excluded);
        let mut last = None;
        for (&slot, waiting) in self.owed.range_mut((after, Unbounded)) {
            if visits == VISITS_PER_TICK_MAX {
                break;
            }
            visits += 1;
            last = Some(slot);
            let is_due = waiting
                .told_ms
                .is_none_or(|told_ms| now_ms >= told_ms + OWED_RESEND_MS);
            if is_due && may_tell(&waiting.receipt) {
                waiting.told_ms = Some(now_ms);
                due.push(waiting.receipt);
            }
        }
        if visits == VISITS_PER_TICK_MAX {
            self.cursor = last;
        }
        due
    }

    /// Every owed receipt, for a checkpoint.
    pub(super) fn checkpoint(&self, records: &mut Vec<Record>) {
        records.extend(self.owed.values().map(|w| w.receipt.record()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(n: u64) -> Phone {
        Phone::parse(&format!("+1555{n:07}")).unwrap()
    }

    fn receipt(to: u64, client_id: u64, kind: ReceiptKind) -> OwedReceipt {
        OwedReceipt {
            to: phone(to),
            by: phone(1),
            client_id,
            kind,
            sent_at_ms: 5,
        }
    }

    #[test]
    fn a_receipt_is_told_when_its_node_may_hear_it_and_again_until_stored() {
        let mut owed = OwedReceipts::default();
        let delivered = receipt(2, 10, ReceiptKind::Delivered);
        let read = receipt(2, 10, ReceiptKind::Read);
        owed.owe(delivered, None);
        owed.owe(read, Some(1_000));
        assert_eq!(owed.len(), 2, "two kinds of the same message are two");
        assert!(owed.due(1_000, |_| false).is_empty(), "node not live");
        assert_eq!(owed.due(1_000, |_| true), vec![delivered]);
        assert!(owed.due(1_000 + OWED_RESEND_MS - 1, |_| true).is_empty());
        assert_eq!(
            owed.due(1_000 + OWED_RESEND_MS, |_| true),
            vec![delivered, read]
        );
        owed.stored(&[delivered.key(), receipt(9, 9, ReceiptKind::Read).key()]);
        assert_eq!(owed.due(u64::MAX / 2, |_| true), vec![read]);
        let mut records = Vec::new();
        owed.checkpoint(&mut records);
        assert_eq!(records, vec![read.record()]);
    }

    #[test]
    fn owed_receipts_are_bounded_but_one_deletion_always_fits() {
        let mut owed = OwedReceipts::default();
        assert!(owed.has_room(RECEIPTS_OWED_MAX * 2), "nothing owed yet");
        for n in 0..10 {
            owed.owe(receipt(2, n, ReceiptKind::Undeliverable), None);
        }
        assert!(owed.has_room(RECEIPTS_OWED_MAX - 10));
        assert!(!owed.has_room(RECEIPTS_OWED_MAX - 9));
    }

    #[test]
    fn a_long_backlog_is_told_a_bounded_slice_per_tick_and_all_in_turn() {
        let mut owed = OwedReceipts::default();
        let count = VISITS_PER_TICK_MAX * 2 + 10;
        for n in 0..count as u64 {
            owed.owe(receipt(2, n, ReceiptKind::Delivered), None);
        }
        let mut told = 0;
        for tick in 0..3 {
            let due = owed.due(tick, |_| true);
            assert!(due.len() <= VISITS_PER_TICK_MAX);
            told += due.len();
        }
        assert_eq!(told, count);
    }
}
