//! Which node owns each partition: the cluster's partition map, as etcd
//! keeps it under `partitions` and the controller writes it (by
//! compare-and-swap only).
//!
//! A phone number or a group id hashes to one of
//! [`PARTITIONS_DEFAULT`] partitions (`shard::PartitionMap`, the same rule
//! a single node uses to pick a shard); the map names the node that owns
//! each, and on that node partition `p` lives on shard `p % shards`.
//!
//! The value in etcd is JSON, a list of ranges: `[{"node":1,"first":0,
//! "last":341}, ...]`. What is read back is checked whole: every
//! partition covered exactly once, by a valid node id, in a bounded
//! number of ranges. A value that fails is an error the caller reports,
//! never a partial map.

use serde::{Deserialize, Serialize};
use shard::PARTITIONS_DEFAULT;

use crate::config::cluster::NODE_ID_MAX;

/// Ranges a map may hold: one per partition at worst.
const RANGES_MAX: usize = PARTITIONS_DEFAULT as usize;

/// The owner of every partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOwners {
    /// `owners[p]` is the node id owning partition `p`.
    owners: Vec<u16>,
}

/// One run of partitions with the same owner, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    node: u16,
    first: u16,
    last: u16,
}

/// A stored partition map that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("the partition map is not valid JSON ranges: {0}")]
    Format(String),
    #[error("the partition map has more than {RANGES_MAX} ranges")]
    TooManyRanges,
    #[error("the partition map names node {0}, which is not a node id")]
    Node(u16),
    #[error("the partition map's range {first}..={last} does not follow the one before")]
    Gap { first: u16, last: u16 },
    #[error("the partition map covers {0} partitions, not {PARTITIONS_DEFAULT}")]
    Coverage(usize),
}

impl PartitionOwners {
    /// The partitions spread over `nodes` (distinct ids, in any order) in
    /// contiguous runs as even as they can be: node `i` of the sorted list
    /// gets partitions `i * P / n` up to `(i + 1) * P / n`.
    pub fn assign_evenly(nodes: &[u16]) -> PartitionOwners {
        assert!(!nodes.is_empty(), "someone takes the partitions");
        let mut sorted = nodes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let count = PARTITIONS_DEFAULT as usize;
        let owners = (0..count)
            .map(|p| sorted[p * sorted.len() / count])
            .collect();
        PartitionOwners { owners }
    }

    /// Every partition's owner, by partition.
    pub fn owners(&self) -> &[u16] {
        &self.owners
    }

    /// The node owning `partition` (below [`PARTITIONS_DEFAULT`]).
    #[cfg(test)]
    pub fn owner(&self, partition: u16) -> u16 {
        self.owners[usize::from(partition)]
    }

    /// Partitions `node` owns.
    pub fn owned_by(&self, node: u16) -> usize {
        self.owners.iter().filter(|&&n| n == node).count()
    }

    /// The value stored in etcd.
    pub fn encode(&self) -> String {
        let mut ranges: Vec<Range> = Vec::new();
        for (p, &node) in self.owners.iter().enumerate() {
            let p = p as u16;
            match ranges.last_mut() {
                Some(range) if range.node == node => range.last = p,
                _ => ranges.push(Range {
                    node,
                    first: p,
                    last: p,
                }),
            }
        }
        serde_json::to_string(&ranges).expect("ranges serialize")
    }

    /// A stored value, checked whole.
    pub fn decode(value: &[u8]) -> Result<PartitionOwners, MapError> {
        let ranges: Vec<Range> =
            serde_json::from_slice(value).map_err(|error| MapError::Format(error.to_string()))?;
        if ranges.len() > RANGES_MAX {
            return Err(MapError::TooManyRanges);
        }
        let mut owners = Vec::with_capacity(PARTITIONS_DEFAULT as usize);
        for range in ranges {
            if !(1..=NODE_ID_MAX).contains(&range.node) {
                return Err(MapError::Node(range.node));
            }
            let follows = usize::from(range.first) == owners.len() && range.first <= range.last;
            if !follows || range.last >= PARTITIONS_DEFAULT {
                return Err(MapError::Gap {
                    first: range.first,
                    last: range.last,
                });
            }
            owners.extend((range.first..=range.last).map(|_| range.node));
        }
        if owners.len() != PARTITIONS_DEFAULT as usize {
            return Err(MapError::Coverage(owners.len()));
        }
        Ok(PartitionOwners { owners })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_even_assignment_gives_every_node_a_contiguous_third() {
        let map = PartitionOwners::assign_evenly(&[3, 1, 2]);
        let counts: Vec<usize> = [1, 2, 3].iter().map(|&n| map.owned_by(n)).collect();
        assert_eq!(counts.iter().sum::<usize>(), 1024);
        assert!(
            counts.iter().all(|&c| (341..=342).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(map.owner(0), 1);
        assert_eq!(map.owner(1023), 3);
        assert_eq!(
            map.encode(),
            r#"[{"node":1,"first":0,"last":341},{"node":2,"first":342,"last":682},{"node":3,"first":683,"last":1023}]"#
        );
        assert_eq!(PartitionOwners::decode(map.encode().as_bytes()), Ok(map));
    }

    #[test]
    fn a_damaged_map_is_refused_whole() {
        type Expected = fn(&MapError) -> bool;
        let cases: [(&str, Expected); 6] = [
            ("not json", |e| matches!(e, MapError::Format(_))),
            (r#"[{"node":0,"first":0,"last":1023}]"#, |e| {
                matches!(e, MapError::Node(0))
            }),
            (r#"[{"node":1,"first":1,"last":1023}]"#, |e| {
                matches!(e, MapError::Gap { .. })
            }),
            (r#"[{"node":1,"first":0,"last":1024}]"#, |e| {
                matches!(e, MapError::Gap { .. })
            }),
            (r#"[{"node":1,"first":0,"last":500}]"#, |e| {
                matches!(e, MapError::Coverage(501))
            }),
            (r#"[{"node":1,"first":0,"last":1023,"extra":1}]"#, |e| {
                matches!(e, MapError::Format(_))
            }),
        ];
        for (value, expected) in cases {
            let error = PartitionOwners::decode(value.as_bytes()).unwrap_err();
            assert!(expected(&error), "{value}: {error}");
        }
    }
}
