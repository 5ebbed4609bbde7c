//! [`SyncVotes`]: an island goes back to `sync` only when every shard of
//! its primary asks for it.
//!
//! An island's record is one per island, but its data is one tablet per
//! shard, each with its own log and its own member (docs/islands.md). A
//! record naming the secondary in sync says the secondary holds every
//! acknowledged batch of *every* tablet: if the primary then fails, the
//! secondary promotes itself and serves what it holds. A member sees only
//! its own tablet, so one member's word is not enough on a node running
//! several shards. The coordinator holds each member's ask (a vote) and runs
//! the transaction once all the node's shards asked for the same record at
//! the same revision. Any other island transaction (solo, a promotion, a
//! new epoch) names one node in sync, claims nothing of the others, and
//! runs at once.
//!
//! Sans-IO: the coordinator passes in the time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use server::island::tablet::IslandTxn;
use shard::island::{IslandId, IslandRecord};

/// How long a member's ask counts as its vote. Below the member's own
/// transaction timeout (1 s, `TXN_TIMEOUT_MS` in `shard::island::member`):
/// a vote is never used after its member stopped holding its replies for
/// it. Above half the period (about 1 s) at which a member still waiting
/// asks again: the asks of all shards then always meet within it.
pub const VOTE_VALID: Duration = Duration::from_millis(800);

/// The asks of one island's members to take its secondary back in sync.
#[derive(Debug)]
pub struct SyncVotes {
    shards: u16,
    pending: BTreeMap<IslandId, Pending>,
}

#[derive(Debug)]
struct Pending {
    expect_revision: u64,
    record: IslandRecord,
    /// Shard → when it asked.
    by: BTreeMap<u16, Instant>,
}

/// What to do with a member's ask.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the transaction now.
    Run(IslandTxn),
    /// Wait: `have` of the node's shards asked for it so far.
    Wait { have: usize },
}

impl SyncVotes {
    /// Votes for a node running `shards` shards (at least 1).
    pub fn new(shards: u16) -> SyncVotes {
        assert!(shards >= 1, "a node runs at least one shard");
        SyncVotes {
            shards,
            pending: BTreeMap::new(),
        }
    }

    /// Takes a member's ask `txn` (of `txn.shard`) at `now`.
    pub fn offer(&mut self, txn: IslandTxn, now: Instant) -> Decision {
        let shard = txn.shard;
        let vouches_for_another = txn.record.insync.len() > 1;
        if self.shards == 1 || !vouches_for_another {
            return Decision::Run(txn);
        }
        let pending = self.pending.entry(txn.island).or_insert_with(|| Pending {
            expect_revision: txn.expect_revision,
            record: txn.record.clone(),
            by: BTreeMap::new(),
        });
        if txn.expect_revision < pending.expect_revision {
            // Asked on a view older than another shard's: stale.
            return Decision::Wait {
                have: pending.by.len(),
            };
        }
        if (txn.expect_revision, &txn.record) != (pending.expect_revision, &pending.record) {
            *pending = Pending {
                expect_revision: txn.expect_revision,
                record: txn.record.clone(),
                by: BTreeMap::new(),
            };
        }
        pending.by.retain(|_, at| now < *at + VOTE_VALID);
        pending.by.insert(shard, now);
        if pending.by.len() < usize::from(self.shards) {
            return Decision::Wait {
                have: pending.by.len(),
            };
        }
        self.pending.remove(&txn.island);
        Decision::Run(txn)
    }
}

#[cfg(test)]
mod tests {
    use shard::island::Mode;

    use super::*;

    fn solo() -> IslandRecord {
        IslandRecord {
            epoch: 4,
            primary: 1,
            secondary: 2,
            insync: vec![1],
            mode: Mode::Solo,
        }
    }

    fn to_sync(shard: u16, expect_revision: u64) -> IslandTxn {
        let mut record = solo();
        record.insync.push(2);
        record.mode = Mode::Sync;
        IslandTxn {
            island: 1,
            shard,
            expect_revision,
            absent: None,
            record,
        }
    }

    #[test]
    fn sync_runs_only_once_every_shard_asked_within_the_validity() {
        let t0 = Instant::now();
        let mut votes = SyncVotes::new(2);
        let ask = |votes: &mut SyncVotes, shard, at| votes.offer(to_sync(shard, 30), at);
        assert_eq!(ask(&mut votes, 0, t0), Decision::Wait { have: 1 });
        assert_eq!(
            ask(&mut votes, 0, t0 + Duration::from_millis(100)),
            Decision::Wait { have: 1 }
        );
        // Shard 0's vote is too old by the time shard 1 asks.
        let late = t0 + Duration::from_millis(100) + VOTE_VALID;
        assert_eq!(ask(&mut votes, 1, late), Decision::Wait { have: 1 });
        assert_eq!(
            ask(&mut votes, 0, late + Duration::from_millis(10)),
            Decision::Run(to_sync(0, 30))
        );
        // Spent: the next round starts from nothing.
        assert_eq!(
            ask(&mut votes, 1, late + Duration::from_millis(20)),
            Decision::Wait { have: 1 }
        );
    }

    #[test]
    fn a_vote_counts_only_for_the_same_record_at_the_same_revision() {
        let t0 = Instant::now();
        let mut votes = SyncVotes::new(2);
        assert_eq!(votes.offer(to_sync(0, 30), t0), Decision::Wait { have: 1 });
        // A newer revision starts over; an older one is stale.
        assert_eq!(votes.offer(to_sync(1, 31), t0), Decision::Wait { have: 1 });
        assert_eq!(votes.offer(to_sync(0, 30), t0), Decision::Wait { have: 1 });
        assert_eq!(
            votes.offer(to_sync(0, 31), t0),
            Decision::Run(to_sync(0, 31))
        );
    }

    #[test]
    fn a_record_naming_one_node_in_sync_and_a_single_shard_node_run_at_once() {
        let t0 = Instant::now();
        let go_solo = IslandTxn {
            island: 1,
            shard: 2,
            expect_revision: 30,
            absent: None,
            record: IslandRecord { epoch: 5, ..solo() },
        };
        let mut votes = SyncVotes::new(4);
        assert_eq!(votes.offer(go_solo.clone(), t0), Decision::Run(go_solo));
        let mut one = SyncVotes::new(1);
        assert_eq!(one.offer(to_sync(0, 30), t0), Decision::Run(to_sync(0, 30)));
    }
}
