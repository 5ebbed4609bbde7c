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

#[cfg(test)]
mod tests {
    use super::*;

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
