//! Islands as etcd keeps them: `islands/<id>` holds one island's record
//! (`docs/islands.md`, "Words"), a small JSON object changed only by
//! compare-and-swap on its revision, so that a promotion and a primary's
//! move to `solo` cannot both win (rules 2 and 3).
//!
//! The controller writes the first records with the partition map, as a
//! ring over the bootstrap nodes: island *i* is node *i*'s partitions,
//! node *i* its primary and the next node its secondary. A value that
//! does not make a well-formed island is refused whole, so that a bad
//! write can never name two primaries or an empty in-sync set.

use serde::{Deserialize, Serialize};
use shard::island::{IslandId, IslandRecord, Mode, NodeId};

use crate::config::cluster::NODE_ID_MAX;

/// Bytes an island record may take in etcd: a few node ids and numbers.
pub const ISLAND_RECORD_BYTES_MAX: usize = 512;

/// An island record as stored, before it is checked.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    epoch: u64,
    primary: u16,
    secondary: u16,
    insync: Vec<u16>,
    mode: StoredMode,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoredMode {
    Sync,
    Solo,
}

/// Why a stored island record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IslandError {
    #[error("the record is longer than {ISLAND_RECORD_BYTES_MAX} bytes")]
    TooLong,
    #[error("not an island record: {0}")]
    Syntax(String),
    #[error("epochs start at 1")]
    EpochZero,
    #[error("node id {0} is not between 1 and {NODE_ID_MAX}")]
    NodeId(u16),
    #[error("the primary is also the secondary")]
    SamePrimary,
    #[error("the in-sync set must hold the primary and only the island's nodes, once each")]
    InSync,
    #[error("sync mode needs both nodes in sync, solo only the primary")]
    ModeInSync,
}

/// The stored form of `record`.
pub fn encode(record: &IslandRecord) -> String {
    let stored = Stored {
        epoch: record.epoch,
        primary: record.primary,
        secondary: record.secondary,
        insync: record.insync.clone(),
        mode: match record.mode {
            Mode::Sync => StoredMode::Sync,
            Mode::Solo => StoredMode::Solo,
        },
    };
    serde_json::to_string(&stored).expect("an island record serializes")
}

/// An island record read back from etcd, checked whole.
pub fn decode(value: &[u8]) -> Result<IslandRecord, IslandError> {
    if value.len() > ISLAND_RECORD_BYTES_MAX {
        return Err(IslandError::TooLong);
    }
    let stored: Stored =
        serde_json::from_slice(value).map_err(|e| IslandError::Syntax(e.to_string()))?;
    let record = IslandRecord {
        epoch: stored.epoch,
        primary: stored.primary,
        secondary: stored.secondary,
        insync: stored.insync,
        mode: match stored.mode {
            StoredMode::Sync => Mode::Sync,
            StoredMode::Solo => Mode::Solo,
        },
    };
    check(&record)?;
    Ok(record)
}

/// What makes a record an island: a positive epoch, two distinct valid
/// nodes, the primary in sync, and the mode agreeing with the in-sync set
/// (`docs/islands.md` rules 2, 3 and 8 only ever write such records).
pub fn check(record: &IslandRecord) -> Result<(), IslandError> {
    if record.epoch == 0 {
        return Err(IslandError::EpochZero);
    }
    for node in [record.primary, record.secondary] {
        if !(1..=NODE_ID_MAX).contains(&node) {
            return Err(IslandError::NodeId(node));
        }
    }
    if record.primary == record.secondary {
        return Err(IslandError::SamePrimary);
    }
    let ours = |n: &NodeId| *n == record.primary || *n == record.secondary;
    let once = record.insync.len() <= 2
        && !(record.insync.len() == 2 && record.insync[0] == record.insync[1]);
    if !record.insync.contains(&record.primary) || !record.insync.iter().all(ours) || !once {
        return Err(IslandError::InSync);
    }
    let both = record.insync.len() == 2;
    if both != (record.mode == Mode::Sync) {
        return Err(IslandError::ModeInSync);
    }
    Ok(())
}

/// The first islands of a cluster bootstrapped on `nodes` (ascending, at
/// least two): island *i* for each node *i*, its partitions' primary, with
/// the next node round the ring as its secondary, both in sync, epoch 1.
pub fn ring(nodes: &[NodeId]) -> Vec<(IslandId, IslandRecord)> {
    if nodes.len() < 2 {
        return Vec::new();
    }
    nodes
        .iter()
        .enumerate()
        .map(|(at, &primary)| {
            let secondary = nodes[(at + 1) % nodes.len()];
            (primary, IslandRecord::first(primary, secondary))
        })
        .collect()
}

/// An island the controller gives a new secondary (see [`repair`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub island: IslandId,
    /// The record to put, if the island's key is still at
    /// `expect_revision` and `old_secondary` still holds no lease.
    pub record: IslandRecord,
    pub expect_revision: i64,
    pub old_secondary: NodeId,
}

/// The controller's re-pairing (docs/islands.md, "Re-pairing"): the first
/// island left solo, its primary live, whose secondary `away_long` says
/// has been gone past the grace period, paired with a live node that is
/// neither of its two (of those, the secondary of the fewest islands, then
/// the lowest id), in a new epoch, solo until that node caught up. `None`:
/// nothing to do, or no node to pair with.
pub fn repair(
    islands: &std::collections::BTreeMap<IslandId, (IslandRecord, i64)>,
    live: &std::collections::BTreeSet<NodeId>,
    away_long: impl Fn(NodeId) -> bool,
) -> Option<Repair> {
    let (&island, (record, revision)) = islands.iter().find(|(_, (r, _))| {
        r.mode == Mode::Solo
            && live.contains(&r.primary)
            && !live.contains(&r.secondary)
            && away_long(r.secondary)
    })?;
    let load = |node: NodeId| {
        islands
            .values()
            .filter(|(r, _)| r.secondary == node)
            .count()
    };
    let secondary = live
        .iter()
        .copied()
        .filter(|&n| n != record.primary && n != record.secondary)
        .min_by_key(|&n| (load(n), n))?;
    let new = IslandRecord {
        epoch: record.epoch + 1,
        primary: record.primary,
        secondary,
        insync: vec![record.primary],
        mode: Mode::Solo,
    };
    Some(Repair {
        island,
        record: new,
        expect_revision: *revision,
        old_secondary: record.secondary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solo_island_whose_secondary_stays_away_gets_the_least_loaded_live_node() {
        let mut islands: std::collections::BTreeMap<_, _> = ring(&[1, 2, 3, 4])
            .into_iter()
            .enumerate()
            .map(|(at, (id, record))| (id, (record, 10 + at as i64)))
            .collect();
        // Node 3 is gone: island 2 (2 → 3) went solo, island 3 (3 → 4)
        // has no primary.
        let solo = |r: &mut IslandRecord| {
            r.epoch += 1;
            r.insync = vec![r.primary];
            r.mode = Mode::Solo;
        };
        solo(&mut islands.get_mut(&2).unwrap().0);
        let live = [1, 2, 4].into_iter().collect();
        assert_eq!(repair(&islands, &live, |_| false), None, "within the grace");
        let done = repair(&islands, &live, |n| n == 3).unwrap();
        // Node 1 is secondary of island 4, node 4 of island 3: a tie, the
        // lowest id wins.
        assert_eq!(
            (done.island, done.old_secondary, done.expect_revision),
            (2, 3, 11)
        );
        assert_eq!(
            done.record,
            IslandRecord {
                epoch: 3,
                primary: 2,
                secondary: 1,
                insync: vec![2],
                mode: Mode::Solo
            }
        );
        assert_eq!(check(&done.record), Ok(()));
        // An island in sync, or whose primary is gone, is left alone.
        let live_without_2 = [1, 4].into_iter().collect();
        assert_eq!(repair(&islands, &live_without_2, |_| true), None);
        // Nobody else to pair with: nothing to do.
        let two: std::collections::BTreeMap<_, _> = [(2, islands[&2].clone())].into();
        assert_eq!(repair(&two, &[2].into_iter().collect(), |_| true), None);
    }

    #[test]
    fn a_ring_pairs_every_node_with_the_next_and_reads_back() {
        let islands = ring(&[1, 2, 5]);
        let pairs: Vec<_> = islands
            .iter()
            .map(|(id, r)| (*id, r.primary, r.secondary))
            .collect();
        assert_eq!(pairs, [(1, 1, 2), (2, 2, 5), (5, 5, 1)]);
        for (_, record) in &islands {
            assert_eq!(decode(encode(record).as_bytes()).as_ref(), Ok(record));
        }
        assert!(ring(&[1]).is_empty(), "one node has nobody to pair with");
    }

    #[test]
    fn records_that_are_no_island_are_refused() {
        let good = ring(&[1, 2]).remove(0).1;
        let with = |change: fn(&mut IslandRecord)| {
            let mut record = good.clone();
            change(&mut record);
            decode(encode(&record).as_bytes())
        };
        assert_eq!(with(|r| r.epoch = 0), Err(IslandError::EpochZero));
        assert_eq!(with(|r| r.secondary = 1), Err(IslandError::SamePrimary));
        assert_eq!(with(|r| r.primary = 0), Err(IslandError::NodeId(0)));
        assert_eq!(with(|r| r.insync = vec![2]), Err(IslandError::InSync));
        assert_eq!(with(|r| r.insync = vec![1, 3]), Err(IslandError::InSync));
        assert_eq!(with(|r| r.insync = vec![1, 1]), Err(IslandError::InSync));
        assert_eq!(with(|r| r.mode = Mode::Solo), Err(IslandError::ModeInSync));
        assert_eq!(
            with(|r| {
                r.insync = vec![1];
                r.mode = Mode::Solo;
            })
            .map(|r| r.insync),
            Ok(vec![1])
        );
        assert!(matches!(decode(b"{"), Err(IslandError::Syntax(_))));
        let extra = br#"{"epoch":1,"primary":1,"secondary":2,"insync":[1,2],"mode":"sync","x":1}"#;
        assert!(matches!(decode(extra), Err(IslandError::Syntax(_))));
        let long = vec![b' '; ISLAND_RECORD_BYTES_MAX + 1];
        assert_eq!(decode(&long), Err(IslandError::TooLong));
    }
}
