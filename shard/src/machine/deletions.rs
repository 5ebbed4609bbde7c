//! Account deletions that are durable on the account's home shard but not
//! yet finished everywhere.
//!
//! Deleting an account takes it out of every group it belongs to, and
//! groups live on the shards (and nodes) their ids hash to. The home shard
//! records `AccountDeleted`, then tells every shard (`AccountGone`); each
//! takes the number out of the groups it owns, and once those `Left` posts
//! are durable answers `GroupsLeft`. Until every shard of the cluster has
//! answered, the deletion stays here, as a tombstone:
//!
//! - it is in every checkpoint (as `AccountDeleted`), so a crash of the
//!   home shard forgets nothing: replay finds it and tells everyone again;
//! - it is told again every [`DELETION_RESEND_MS`] to the shards that did
//!   not answer (a crash of theirs before their commit, a link that lost
//!   its queue), so no group keeps the number for good;
//! - the number may not sign up again while it is here, so its next owner
//!   never joins its predecessor's groups.
//!
//! The deletion also owes an `Undeliverable` receipt for every message
//! still in the deleted mailbox. The mailbox is gone once the deletion is
//! durable, so nothing could ever tell those senders again: the receipts
//! are part of the tombstone (`ReceiptOwed` records), go to the senders'
//! shards in bounded `ReceiptsOwed` messages, are written there through
//! any write-back cache, and stay owed until those shards answer
//! `OwedStored` after their commit.
//!
//! Taking a number out of groups is idempotent, so telling a shard twice
//! costs nothing but the message; a receipt told twice (a crash between
//! its commit and the answer) reaches its sender twice, which drops the
//! repeat by `(by, client_id)` as it does any receipt.

use std::collections::{BTreeMap, BTreeSet};

use storage::Record;
use wire::Phone;

use super::Dest;

/// How often a pending deletion is told again to the shards that have not
/// answered (ms).
pub const DELETION_RESEND_MS: u64 = 10_000;

/// Deletions pending at once, at most: past it new deletions are refused
/// (retry later) until answers come. Deletions are an operator's act, so
/// this bound is only reached while part of the cluster is unreachable.
pub(super) const DELETIONS_PENDING_MAX: usize = 100_000;

/// Receipts owed by pending deletions, at most (about 48 bytes each, so
/// 48 MB): past it a deletion that would owe more is refused (retry
/// later). One deletion is always taken when nothing else is owed, so a
/// full mailbox can always be deleted.
pub(super) const RECEIPTS_OWED_MAX: usize = 1_000_000;

/// Receipts in one `ReceiptsOwed` message, at most: what one message to a
/// shard or across a link may carry (about 24 bytes each).
pub(super) const RECEIPTS_PER_MESSAGE_MAX: usize = 512;

/// Pending deletions looked at in one tick, at most (see `Deletions::due`).
const VISITS_PER_TICK_MAX: usize = 256;

/// A receipt a deleted account owes: to `to`, for its message
/// `client_id` sent at `sent_at_ms` (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwedReceipt {
    pub to: Phone,
    pub client_id: u64,
    pub sent_at_ms: u64,
}

#[derive(Debug, Default)]
struct Pending {
    /// Shards that answered `GroupsLeft`.
    confirmed: BTreeSet<Dest>,
    /// When it was last told to the shards that did not answer; `None`:
    /// replayed, so due at once.
    told_ms: Option<u64>,
    /// Receipts not yet durable on their recipients' shards, by
    /// `(to, client_id)`, with the message's sent time.
    owed: BTreeMap<(Phone, u64), u64>,
}

impl Pending {
    fn finished(&self, everyone: &[Dest]) -> bool {
        self.owed.is_empty() && everyone.iter().all(|dest| self.confirmed.contains(dest))
    }
}

/// What a pending deletion still needs, handed out to be told again.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Due {
    pub(super) phone: Phone,
    /// Shards that have not answered `GroupsLeft`.
    pub(super) missing: Vec<Dest>,
    /// Receipts still owed.
    pub(super) owed: Vec<OwedReceipt>,
}

/// The home shard's pending deletions, by number.
#[derive(Debug, Default)]
pub(super) struct Deletions {
    pending: BTreeMap<Phone, Pending>,
    /// Receipts owed by all pending deletions.
    owed_total: usize,
    /// Where the last resend sweep stopped, so every deletion gets its
    /// turn when there are more than a tick's worth.
    cursor: Option<Phone>,
}

impl Deletions {
    /// `phone`'s deletion is recorded and told to every shard at
    /// `told_ms`; `None`: replayed, to be told at the next tick. It owes
    /// nothing until `owe` says so.
    pub(super) fn begin(&mut self, phone: Phone, told_ms: Option<u64>) {
        let pending = self.pending.entry(phone).or_default();
        self.owed_total -= pending.owed.len();
        pending.owed.clear();
        pending.confirmed.clear();
        pending.told_ms = told_ms;
    }

    /// `by`'s deletion owes `receipt` (see `begin`).
    pub(super) fn owe(&mut self, by: Phone, receipt: OwedReceipt) {
        let pending = self.pending.get_mut(&by);
        let pending = pending.expect("a receipt is owed only by a pending deletion");
        let key = (receipt.to, receipt.client_id);
        if pending.owed.insert(key, receipt.sent_at_ms).is_none() {
            self.owed_total += 1;
        }
    }

    pub(super) fn is_pending(&self, phone: Phone) -> bool {
        self.pending.contains_key(&phone)
    }

    /// Whether a deletion owing `receipts` more must wait: too many are
    /// pending, or owe too much.
    pub(super) fn is_full(&self, receipts: usize) -> bool {
        self.pending.len() >= DELETIONS_PENDING_MAX
            || (self.owed_total > 0 && self.owed_total + receipts > RECEIPTS_OWED_MAX)
    }

    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Receipts owed by all pending deletions.
    pub(super) fn owed_total(&self) -> usize {
        self.owed_total
    }

    /// A replayed signup of `phone`: its deletion finished before it.
    pub(super) fn forget(&mut self, phone: Phone) {
        if let Some(pending) = self.pending.remove(&phone) {
            self.owed_total -= pending.owed.len();
        }
    }

    /// `by` answered that `phone` left its groups. True when the deletion
    /// is finished and forgotten with that answer (see `finish`).
    pub(super) fn confirm(&mut self, phone: Phone, by: Dest, everyone: Option<&[Dest]>) -> bool {
        let Some(pending) = self.pending.get_mut(&phone) else {
            return false;
        };
        pending.confirmed.insert(by);
        self.finish(phone, everyone)
    }

    /// The receipts `stored` (by `(to, client_id)`) of `phone`'s deletion
    /// are durable on their recipients' shards. True when the deletion is
    /// finished and forgotten with that answer (see `finish`).
    pub(super) fn stored(
        &mut self,
        phone: Phone,
        stored: &[(Phone, u64)],
        everyone: Option<&[Dest]>,
    ) -> bool {
        let Some(pending) = self.pending.get_mut(&phone) else {
            return false;
        };
        for key in stored {
            if pending.owed.remove(key).is_some() {
                self.owed_total -= 1;
            }
        }
        self.finish(phone, everyone)
    }

    /// Forgets `phone`'s deletion if every shard of `everyone` has
    /// answered and no receipt is owed. `everyone` is `None` while the
    /// shard does not know every shard yet (a cluster without its first
    /// view): nothing finishes.
    fn finish(&mut self, phone: Phone, everyone: Option<&[Dest]>) -> bool {
        let Some(everyone) = everyone else {
            return false;
        };
        if self.pending[&phone].finished(everyone) {
            self.pending.remove(&phone);
            return true;
        }
        false
    }

    /// The deletions due to be told again at `now_ms`, each with the
    /// shards of `everyone` that have not answered and the receipts still
    /// owed. One call looks at [`VISITS_PER_TICK_MAX`] deletions at most,
    /// going on next time where it stopped, so every deletion gets its
    /// turn and a long backlog (after a node was away) does not stall the
    /// shard.
    pub(super) fn due(&mut self, now_ms: u64, everyone: &[Dest]) -> Vec<Due> {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut due = Vec::new();
        let mut visits = 0;
        let after = self.cursor.take().map_or(Unbounded, Excluded);
        let mut last = None;
        for (&phone, pending) in self.pending.range_mut((after, Unbounded)) {
            if visits == VISITS_PER_TICK_MAX {
                break;
            }
            visits += 1;
            last = Some(phone);
            if pending
                .told_ms
                .is_none_or(|told_ms| now_ms >= told_ms + DELETION_RESEND_MS)
            {
                pending.told_ms = Some(now_ms);
                let missing = everyone
                    .iter()
                    .copied()
                    .filter(|dest| !pending.confirmed.contains(dest))
                    .collect();
                let owed = pending
                    .owed
                    .iter()
                    .map(|(&(to, client_id), &sent_at_ms)| OwedReceipt {
                        to,
                        client_id,
                        sent_at_ms,
                    })
                    .collect();
                due.push(Due {
                    phone,
                    missing,
                    owed,
                });
            }
        }
        // Stopped short of the end: go on from here next time; else start
        // again from the first.
        if visits == VISITS_PER_TICK_MAX {
            self.cursor = last;
        }
        due
    }

    /// Every pending deletion, for a checkpoint.
    pub(super) fn checkpoint(&self, records: &mut Vec<Record>) {
        for (&phone, pending) in &self.pending {
            records.push(Record::AccountDeleted { phone });
            records.extend(pending.owed.iter().map(|(&(to, client_id), &sent_at_ms)| {
                Record::ReceiptOwed {
                    by: phone,
                    to,
                    client_id,
                    sent_at_ms,
                }
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(n: u64) -> Phone {
        Phone::parse(&format!("+1555{n:07}")).unwrap()
    }

    #[test]
    fn a_deletion_finishes_when_every_shard_answered_once_each() {
        let everyone = [
            Dest::Shard(0),
            Dest::Shard(1),
            Dest::Node { node: 2, shard: 0 },
        ];
        let mut deletions = Deletions::default();
        deletions.begin(phone(1), Some(0));
        assert!(!deletions.confirm(phone(1), Dest::Shard(0), Some(&everyone)));
        // An answer twice from the same shard counts once.
        assert!(!deletions.confirm(phone(1), Dest::Shard(0), Some(&everyone)));
        assert!(!deletions.confirm(phone(1), Dest::Shard(1), Some(&everyone)));
        assert!(deletions.is_pending(phone(1)));
        assert!(deletions.confirm(phone(1), Dest::Node { node: 2, shard: 0 }, Some(&everyone)));
        assert!(!deletions.is_pending(phone(1)));
        assert!(!deletions.confirm(phone(1), Dest::Shard(1), Some(&everyone)));
    }

    #[test]
    fn only_the_shards_that_did_not_answer_are_told_again_after_the_interval() {
        let everyone = [Dest::Shard(0), Dest::Shard(1)];
        let mut deletions = Deletions::default();
        deletions.begin(phone(1), Some(1_000));
        deletions.confirm(phone(1), Dest::Shard(0), Some(&everyone));
        assert!(deletions
            .due(1_000 + DELETION_RESEND_MS - 1, &everyone)
            .is_empty());
        let due = deletions.due(1_000 + DELETION_RESEND_MS, &everyone);
        let expected = Due {
            phone: phone(1),
            missing: vec![Dest::Shard(1)],
            owed: vec![],
        };
        assert_eq!(due, vec![expected]);
        assert!(deletions
            .due(1_000 + DELETION_RESEND_MS, &everyone)
            .is_empty());
    }

    #[test]
    fn a_long_backlog_is_told_again_a_bounded_slice_per_tick_and_all_in_turn() {
        let everyone = [Dest::Shard(0)];
        let mut deletions = Deletions::default();
        let count = VISITS_PER_TICK_MAX * 2 + 10;
        for n in 0..count as u64 {
            deletions.begin(phone(n), Some(0));
        }
        let mut told = BTreeSet::new();
        for tick in 0..3 {
            let due = deletions.due(DELETION_RESEND_MS + tick, &everyone);
            assert!(due.len() <= VISITS_PER_TICK_MAX);
            told.extend(due.into_iter().map(|due| due.phone));
        }
        assert_eq!(told.len(), count);
    }

    #[test]
    fn a_checkpoint_names_each_pending_deletion() {
        let everyone = [Dest::Shard(0)];
        let mut deletions = Deletions::default();
        deletions.begin(phone(1), Some(0));
        deletions.begin(phone(2), Some(0));
        deletions.confirm(phone(2), Dest::Shard(0), Some(&everyone));
        let mut records = Vec::new();
        deletions.checkpoint(&mut records);
        assert_eq!(records, vec![Record::AccountDeleted { phone: phone(1) }]);
    }

    fn receipt(to: u64, client_id: u64) -> OwedReceipt {
        OwedReceipt {
            to: phone(to),
            client_id,
            sent_at_ms: 5,
        }
    }

    #[test]
    fn a_deletion_owing_receipts_finishes_only_once_they_are_stored() {
        let everyone = [Dest::Shard(0), Dest::Shard(1)];
        let mut deletions = Deletions::default();
        deletions.begin(phone(1), Some(0));
        deletions.owe(phone(1), receipt(2, 10));
        deletions.owe(phone(1), receipt(3, 11));
        // Owed twice (a replayed record after a checkpoint) counts once.
        deletions.owe(phone(1), receipt(3, 11));
        assert_eq!(deletions.owed_total(), 2);
        assert!(!deletions.confirm(phone(1), Dest::Shard(0), Some(&everyone)));
        assert!(!deletions.confirm(phone(1), Dest::Shard(1), Some(&everyone)));
        assert!(!deletions.stored(phone(1), &[(phone(2), 10)], Some(&everyone)));
        let due = deletions.due(DELETION_RESEND_MS, &everyone);
        assert_eq!(due[0].missing, vec![]);
        assert_eq!(due[0].owed, vec![receipt(3, 11)]);
        // Unknown keys change nothing; a cluster without its view
        // finishes nothing.
        assert!(!deletions.stored(phone(1), &[(phone(9), 1)], Some(&everyone)));
        assert!(!deletions.stored(phone(1), &[(phone(3), 11)], None));
        assert!(deletions.is_pending(phone(1)));
        assert!(deletions.confirm(phone(1), Dest::Shard(0), Some(&everyone)));
        assert_eq!(deletions.owed_total(), 0);
    }

    #[test]
    fn owed_receipts_are_bounded_in_total_but_one_deletion_always_goes() {
        let mut deletions = Deletions::default();
        assert!(
            !deletions.is_full(RECEIPTS_OWED_MAX * 2),
            "nothing owed yet"
        );
        deletions.begin(phone(1), Some(0));
        for n in 0..10 {
            deletions.owe(phone(1), receipt(2, n));
        }
        assert!(!deletions.is_full(RECEIPTS_OWED_MAX - 10));
        assert!(deletions.is_full(RECEIPTS_OWED_MAX - 9));
        // A new deletion of the same number starts owing nothing.
        deletions.begin(phone(1), Some(0));
        assert_eq!(deletions.owed_total(), 0);
        deletions.owe(phone(1), receipt(2, 1));
        deletions.forget(phone(1));
        assert_eq!(deletions.owed_total(), 0);
    }

    #[test]
    fn a_checkpoint_keeps_what_is_still_owed_after_its_deletion() {
        let mut deletions = Deletions::default();
        deletions.begin(phone(1), Some(0));
        deletions.owe(phone(1), receipt(2, 10));
        deletions.owe(phone(1), receipt(3, 11));
        deletions.stored(phone(1), &[(phone(3), 11)], None);
        let mut records = Vec::new();
        deletions.checkpoint(&mut records);
        let owed = Record::ReceiptOwed {
            by: phone(1),
            to: phone(2),
            client_id: 10,
            sent_at_ms: 5,
        };
        assert_eq!(
            records,
            vec![Record::AccountDeleted { phone: phone(1) }, owed]
        );
    }
}
