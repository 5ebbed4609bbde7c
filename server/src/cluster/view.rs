//! What this node knows of the cluster, rebuilt from etcd's keys: the
//! nodes that hold a lease now, the partition map, the controller. The
//! coordinator feeds it a read of the prefix and then the watch's events,
//! in revision order; it does no I/O.
//!
//! Keys, under the cluster's prefix:
//! - `nodes/<id>`: a live node's addresses and shard count, bound to its
//!   lease (the lease id is the node's incarnation);
//! - `members/<id>`: a node that ever joined, durable, with its last
//!   record (where to send what is owed to it while it is down);
//! - `partitions`: the partition map ([`PartitionOwners`]);
//! - `controller`: the node id of the elected controller, bound to its
//!   lease;
//! - `islands/<id>`: an island's record (`super::islands`), changed only
//!   by compare-and-swap on its revision.
//!
//! A value that cannot be read is left out of the view and reported (as
//! [`Rejected`]); the rest of the view stands.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use shard::island::{IslandId, IslandRecord};

use super::{
    islands::{self, IslandError},
    partitions::{MapError, PartitionOwners},
};
use crate::config::cluster::NODE_ID_MAX;

/// Bytes a node record may take in etcd.
pub const NODE_RECORD_BYTES_MAX: usize = 4096;

/// What a live node publishes about itself under `nodes/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// Where phones are redirected to (`host:port`).
    pub advertise: String,
    /// Where the other nodes' links connect.
    pub peer: SocketAddr,
    /// Shards the node runs: partition `p` lives on shard `p % shards`.
    pub shards: u16,
    /// The process holding the id (`identity::instance`); empty in records
    /// written before it was kept.
    #[serde(default)]
    pub instance: String,
}

/// A live node: its record and its incarnation (its lease id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveNode {
    pub record: NodeRecord,
    pub incarnation: i64,
}

/// A key whose value the view could not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("etcd key {key}: {reason}")]
    Value { key: String, reason: String },
    #[error("etcd key {key}: {error}")]
    Map { key: String, error: MapError },
    #[error("etcd key {key}: {error}")]
    Island { key: String, error: IslandError },
}

/// The cluster as the last event seen leaves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The etcd revision of the last change applied.
    pub revision: i64,
    pub nodes: BTreeMap<u16, LiveNode>,
    /// Every node that ever joined, with its last record.
    pub members: BTreeMap<u16, NodeRecord>,
    /// The partition map and the revision it was written at.
    pub partitions: Option<(PartitionOwners, i64)>,
    pub controller: Option<u16>,
    /// Each island's record and the revision it was written at (what a
    /// compare-and-swap on it compares).
    pub islands: BTreeMap<IslandId, (IslandRecord, i64)>,
    /// Not from etcd: the revision of the last record of each island this
    /// node's running process wrote, kept by the coordinator. A member
    /// serves an epoch whose record its process wrote, whichever shard's
    /// member asked for it (rule 7 of docs/islands.md).
    pub written_here: BTreeMap<IslandId, i64>,
}

/// One change to a key under the prefix, as the watch reports it (or a
/// read of the prefix, as puts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<'a> {
    Put {
        /// The key without the prefix.
        key: &'a str,
        value: &'a [u8],
        lease: i64,
        mod_revision: i64,
    },
    Delete {
        key: &'a str,
    },
}

impl ClusterView {
    /// Applies a change made at `revision`. Err: the value was not taken
    /// (the key is then as if absent).
    pub fn apply(&mut self, change: Change<'_>, revision: i64) -> Result<(), Rejected> {
        self.revision = self.revision.max(revision);
        let key = match change {
            Change::Put { key, .. } | Change::Delete { key } => key,
        };
        let result = match (key.split_once('/'), change) {
            (Some(("nodes", id)), change) => self.apply_node(key, id, change),
            (Some(("members", id)), change) => self.apply_member(key, id, change),
            (Some(("islands", id)), change) => self.apply_island(key, id, change),
            (
                None,
                Change::Put {
                    value,
                    mod_revision,
                    ..
                },
            ) if key == "partitions" => {
                // A map that cannot be read leaves the last good one in
                // use: one bad write must not unplace every account.
                let owners = PartitionOwners::decode(value).map_err(|error| Rejected::Map {
                    key: key.to_owned(),
                    error,
                })?;
                self.partitions = Some((owners, mod_revision));
                Ok(())
            }
            (None, Change::Delete { .. }) if key == "partitions" => {
                self.partitions = None;
                Ok(())
            }
            (None, change) if key == "controller" => {
                self.controller = None;
                if let Change::Put { value, .. } = change {
                    self.controller = Some(parse_id(key, value)?);
                }
                Ok(())
            }
            // Keys of later versions: not this one's business.
            _ => Ok(()),
        };
        result
    }

    fn apply_node(&mut self, key: &str, id: &str, change: Change<'_>) -> Result<(), Rejected> {
        let id = parse_id(key, id.as_bytes())?;
        self.nodes.remove(&id);
        let Change::Put { value, lease, .. } = change else {
            return Ok(());
        };
        let record = parse_record(key, value)?;
        let incarnation = lease;
        self.nodes.insert(
            id,
            LiveNode {
                record,
                incarnation,
            },
        );
        Ok(())
    }

    fn apply_island(&mut self, key: &str, id: &str, change: Change<'_>) -> Result<(), Rejected> {
        let id = parse_id(key, id.as_bytes())?;
        match change {
            Change::Put {
                value,
                mod_revision,
                ..
            } => {
                // A record that is no island leaves the last good one: a
                // bad write must not leave the island without a primary.
                let record = islands::decode(value).map_err(|error| Rejected::Island {
                    key: key.to_owned(),
                    error,
                })?;
                self.islands.insert(id, (record, mod_revision));
            }
            Change::Delete { .. } => {
                self.islands.remove(&id);
            }
        }
        Ok(())
    }

    fn apply_member(&mut self, key: &str, id: &str, change: Change<'_>) -> Result<(), Rejected> {
        let id = parse_id(key, id.as_bytes())?;
        self.members.remove(&id);
        if let Change::Put { value, .. } = change {
            self.members.insert(id, parse_record(key, value)?);
        }
        Ok(())
    }
}

/// A node's record, checked.
fn parse_record(key: &str, value: &[u8]) -> Result<NodeRecord, Rejected> {
    if value.len() > NODE_RECORD_BYTES_MAX {
        return Err(rejected(key, "the record is too long"));
    }
    let record: NodeRecord =
        serde_json::from_slice(value).map_err(|e| rejected(key, &e.to_string()))?;
    if record.shards == 0 {
        return Err(rejected(key, "a node runs at least one shard"));
    }
    Ok(record)
}

fn rejected(key: &str, reason: &str) -> Rejected {
    Rejected::Value {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A node id written as decimal text.
fn parse_id(key: &str, text: &[u8]) -> Result<u16, Rejected> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<u16>().ok())
        .filter(|id| (1..=NODE_ID_MAX).contains(id))
        .ok_or_else(|| rejected(key, "not a node id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(port: u16) -> Vec<u8> {
        let record = NodeRecord {
            advertise: format!("10.0.0.1:{port}"),
            peer: format!("10.0.0.1:{}", port + 1).parse().unwrap(),
            shards: 2,
            instance: "host:/data".into(),
        };
        serde_json::to_vec(&record).unwrap()
    }

    #[test]
    fn events_build_the_view_and_bad_values_are_left_out() {
        let mut view = ClusterView::default();
        let node = record(5222);
        let put = |key, value, lease| Change::Put {
            key,
            value,
            lease,
            mod_revision: 5,
        };
        view.apply(put("nodes/1", &node, 77), 3).unwrap();
        view.apply(put("members/1", &node, 0), 3).unwrap();
        view.apply(put("controller", b"1", 77), 4).unwrap();
        let map = PartitionOwners::assign_evenly(&[1]).encode();
        view.apply(put("partitions", map.as_bytes(), 0), 5).unwrap();
        assert_eq!(view.nodes[&1].incarnation, 77);
        assert_eq!(view.members.keys().collect::<Vec<_>>(), [&1]);
        assert_eq!(view.controller, Some(1));
        assert_eq!(
            view.partitions.as_ref().map(|(m, _)| m.owner(1023)),
            Some(1)
        );
        assert_eq!(view.revision, 5);

        assert!(view.apply(put("nodes/2", b"{", 78), 6).is_err());
        assert!(view.apply(put("nodes/0", &node, 78), 6).is_err());
        assert!(view.apply(put("nodes/x", &node, 78), 6).is_err());
        let long = vec![b' '; NODE_RECORD_BYTES_MAX + 1];
        assert!(view.apply(put("nodes/3", &long, 78), 6).is_err());
        assert!(view.apply(put("partitions", b"[]", 0), 7).is_err());
        assert_eq!(
            view.partitions.as_ref().map(|(m, _)| m.owner(0)),
            Some(1),
            "a bad map leaves the last good one in use"
        );
        assert_eq!(view.nodes.len(), 1);
        view.apply(put("something/new", b"?", 0), 8).unwrap();

        view.apply(Change::Delete { key: "nodes/1" }, 9).unwrap();
        view.apply(Change::Delete { key: "controller" }, 9).unwrap();
        assert!(view.nodes.is_empty());
        assert_eq!(view.controller, None);
        assert_eq!(view.members.len(), 1, "members stay");
        assert_eq!(view.revision, 9);
    }

    #[test]
    fn an_island_that_cannot_be_read_leaves_the_last_good_record() {
        let mut view = ClusterView::default();
        fn put(value: &[u8], mod_revision: i64) -> Change<'_> {
            Change::Put {
                key: "islands/1",
                value,
                lease: 0,
                mod_revision,
            }
        }
        let good = islands::encode(&islands::ring(&[1, 2])[0].1);
        view.apply(put(good.as_bytes(), 4), 4).unwrap();
        assert_eq!(view.islands[&1].1, 4);
        let two_primaries = br#"{"epoch":2,"primary":1,"secondary":1,"insync":[1],"mode":"solo"}"#;
        assert!(matches!(
            view.apply(put(two_primaries, 5), 5),
            Err(Rejected::Island { .. })
        ));
        assert_eq!(view.islands[&1].0.epoch, 1, "the last good record stands");
        assert!(view
            .apply(
                Change::Put {
                    key: "islands/0",
                    value: good.as_bytes(),
                    lease: 0,
                    mod_revision: 6
                },
                6
            )
            .is_err());
        view.apply(Change::Delete { key: "islands/1" }, 7).unwrap();
        assert!(view.islands.is_empty());
    }
}
