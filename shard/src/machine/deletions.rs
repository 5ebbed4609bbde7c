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
//! Taking a number out of groups is idempotent, so telling a shard twice
//! costs nothing but the message. The `Undeliverable` receipts a deletion
//! owes its senders are not kept here: they wait in `owed::OwedReceipts`
//! until the senders' shards have them on disk.

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

/// Pending deletions looked at in one tick, at most (see `Deletions::due`).
const VISITS_PER_TICK_MAX: usize = 256;

#[derive(Debug, Default)]
struct Pending {
    /// Shards that answered `GroupsLeft`.
    confirmed: BTreeSet<Dest>,
    /// When it was last told to the shards that did not answer; `None`:
    /// replayed, so due at once.
    told_ms: Option<u64>,
}

/// The home shard's pending deletions, by number.
#[derive(Debug, Default)]
pub(super) struct Deletions {
    pending: BTreeMap<Phone, Pending>,
    /// Where the last resend sweep stopped, so every deletion gets its
    /// turn when there are more than a tick's worth.
    cursor: Option<Phone>,
}

impl Deletions {
    /// `phone`'s deletion is recorded and told to every shard at
    /// `told_ms`; `None`: replayed, to be told at the next tick.
    pub(super) fn begin(&mut self, phone: Phone, told_ms: Option<u64>) {
        let pending = self.pending.entry(phone).or_default();
        pending.confirmed.clear();
        pending.told_ms = told_ms;
    }

    pub(super) fn is_pending(&self, phone: Phone) -> bool {
        self.pending.contains_key(&phone)
    }

    pub(super) fn is_full(&self) -> bool {
        self.pending.len() >= DELETIONS_PENDING_MAX
    }

    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// A replayed signup of `phone`: its deletion finished before it.
    pub(super) fn forget(&mut self, phone: Phone) {
        self.pending.remove(&phone);
    }

    /// `by` answered that `phone` left its groups. True when, with that
    /// answer, every shard of `everyone` has answered: the deletion is
    /// finished and forgotten. `everyone` is `None` while the shard does
    /// not know every shard yet (a cluster without its first view): the
    /// answer is kept, and nothing finishes.
    pub(super) fn confirm(&mut self, phone: Phone, by: Dest, everyone: Option<&[Dest]>) -> bool {
        let Some(pending) = self.pending.get_mut(&phone) else {
            return false;
        };
        pending.confirmed.insert(by);
        let Some(everyone) = everyone else {
            return false;
        };
        if everyone.iter().all(|dest| pending.confirmed.contains(dest)) {
            self.pending.remove(&phone);
            return true;
        }
        false
    }

    /// The deletions due to be told again at `now_ms`, each with the
    /// shards of `everyone` that have not answered. One call looks at
    /// [`VISITS_PER_TICK_MAX`] deletions at most, going on next time where
    /// it stopped, so every deletion gets its turn and a long backlog
    /// (after a node was away) does not stall the shard.
    pub(super) fn due(&mut self, now_ms: u64, everyone: &[Dest]) -> Vec<(Phone, Vec<Dest>)> {
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
                due.push((phone, missing));
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
        records.extend(
            self.pending
                .keys()
                .map(|&phone| Record::AccountDeleted { phone }),
        );
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
            Dest::Shard {
                island: 0,
                shard: 0,
            },
            Dest::Shard {
                island: 0,
                shard: 1,
            },
            Dest::Node {
                node: 2,
                island: 2,
                shard: 0,
            },
        ];
        let mut deletions = Deletions::default();
        deletions.begin(phone(1), Some(0));
        assert!(!deletions.confirm(
            phone(1),
            Dest::Shard {
                island: 0,
                shard: 0
            },
            Some(&everyone)
        ));
        // An answer twice from the same shard counts once.
        assert!(!deletions.confirm(
            phone(1),
            Dest::Shard {
                island: 0,
                shard: 0
            },
            Some(&everyone)
        ));
        assert!(!deletions.confirm(
            phone(1),
            Dest::Shard {
                island: 0,
                shard: 1
            },
            Some(&everyone)
        ));
        assert!(deletions.is_pending(phone(1)));
        assert!(deletions.confirm(
            phone(1),
            Dest::Node {
                node: 2,
                island: 2,
                shard: 0
            },
            Some(&everyone)
        ));
        assert!(!deletions.is_pending(phone(1)));
        assert!(!deletions.confirm(
            phone(1),
            Dest::Shard {
                island: 0,
                shard: 1
            },
            Some(&everyone)
        ));
    }

    #[test]
    fn only_the_shards_that_did_not_answer_are_told_again_after_the_interval() {
        let everyone = [
            Dest::Shard {
                island: 0,
                shard: 0,
            },
            Dest::Shard {
                island: 0,
                shard: 1,
            },
        ];
        let mut deletions = Deletions::default();
        deletions.begin(phone(1), Some(1_000));
        deletions.confirm(
            phone(1),
            Dest::Shard {
                island: 0,
                shard: 0,
            },
            Some(&everyone),
        );
        assert!(deletions
            .due(1_000 + DELETION_RESEND_MS - 1, &everyone)
            .is_empty());
        let due = deletions.due(1_000 + DELETION_RESEND_MS, &everyone);
        assert_eq!(
            due,
            vec![(
                phone(1),
                vec![Dest::Shard {
                    island: 0,
                    shard: 1
                }]
            )]
        );
        assert!(deletions
            .due(1_000 + DELETION_RESEND_MS, &everyone)
            .is_empty());
    }

    #[test]
    fn a_long_backlog_is_told_again_a_bounded_slice_per_tick_and_all_in_turn() {
        let everyone = [Dest::Shard {
            island: 0,
            shard: 0,
        }];
        let mut deletions = Deletions::default();
        let count = VISITS_PER_TICK_MAX * 2 + 10;
        for n in 0..count as u64 {
            deletions.begin(phone(n), Some(0));
        }
        let mut told = BTreeSet::new();
        for tick in 0..3 {
            let due = deletions.due(DELETION_RESEND_MS + tick, &everyone);
            assert!(due.len() <= VISITS_PER_TICK_MAX);
            told.extend(due.into_iter().map(|(phone, _)| phone));
        }
        assert_eq!(told.len(), count);
    }

    #[test]
    fn a_checkpoint_names_each_pending_deletion() {
        let everyone = [Dest::Shard {
            island: 0,
            shard: 0,
        }];
        let mut deletions = Deletions::default();
        deletions.begin(phone(1), Some(0));
        deletions.begin(phone(2), Some(0));
        deletions.confirm(
            phone(2),
            Dest::Shard {
                island: 0,
                shard: 0,
            },
            Some(&everyone),
        );
        let mut records = Vec::new();
        deletions.checkpoint(&mut records);
        assert_eq!(records, vec![Record::AccountDeleted { phone: phone(1) }]);
    }
}
