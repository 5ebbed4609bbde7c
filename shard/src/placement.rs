//! Where accounts and groups live in a cluster: which node owns each
//! partition, which nodes are live, and how many shards each runs. The
//! control thread builds a [`Placement`] from the cluster's etcd keys and
//! hands every shard the same `Arc` each time it changes; a single node
//! has none, and every partition is its own.
//!
//! The map gives each partition an **island** (docs/islands.md: nodes
//! are machines, islands are data); the island's record names the node
//! that is its primary now, and there partition `p` lives on shard
//! `p % shards`, the rule a single node uses: a node's shard count is
//! fixed while it is a member. A cluster that does not replicate has no
//! island records: each island is served by the node of the same id.
//! The tablet a partition lives in is (island, shard): a node hosts its
//! own island's tablets, and those of islands it took over.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    island::{IslandId, IslandRecord, View},
    PARTITIONS_DEFAULT,
};

/// A node as the placement knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedNode {
    /// The phone-facing `host:port` a `Redirect` names.
    pub advertise: String,
    pub shards: u16,
    /// It holds its lease now: requests may go to it. A node that is not
    /// live still gets what is owed to it (receipts, group copies), which
    /// waits on the link until it is back.
    pub live: bool,
    /// Where its links connect, and its incarnation (its lease id; 0 while
    /// it is not live).
    pub peer: std::net::SocketAddr,
    pub incarnation: i64,
}

/// The cluster's partition map as a shard routes by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// This node's id, and its incarnation (0 until it is registered).
    pub node: u16,
    pub incarnation: i64,
    /// The partition map's revision: what a `Redirect` carries.
    pub revision: u64,
    /// `owners[p]`: the island owning partition `p`; empty while the
    /// cluster has no map yet.
    owners: Vec<IslandId>,
    /// Every island `owners` names, once.
    mapped: Vec<IslandId>,
    nodes: BTreeMap<u16, PlacedNode>,
    /// Each island's record and the etcd revision it was written at.
    islands: BTreeMap<IslandId, (IslandRecord, u64)>,
    /// The islands whose current record this node's running process wrote
    /// ([`View::made_here`]).
    made_here: BTreeSet<IslandId>,
}

/// Where a partition's accounts and groups are, seen from one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    /// On this node: tablet `shard` of island `island` (a single node's
    /// only island is 0).
    Here { island: IslandId, shard: u16 },
    /// In tablet `shard` of island `island`, on node `node`, its primary.
    Away {
        node: u16,
        island: IslandId,
        shard: u16,
        live: bool,
    },
    /// Nowhere known: the cluster has no partition map yet, or its owner
    /// was never seen.
    Unknown,
}

impl Placement {
    /// `owners` has one island id per partition ([`PARTITIONS_DEFAULT`]),
    /// or none before the cluster has a map.
    pub fn new(
        (node, incarnation): (u16, i64),
        revision: u64,
        owners: Vec<IslandId>,
        nodes: BTreeMap<u16, PlacedNode>,
    ) -> Placement {
        assert!(
            owners.is_empty() || owners.len() == usize::from(PARTITIONS_DEFAULT),
            "one owner per partition"
        );
        let mut mapped = owners.clone();
        mapped.sort_unstable();
        mapped.dedup();
        Placement {
            node,
            incarnation,
            revision,
            owners,
            mapped,
            nodes,
            islands: BTreeMap::new(),
            made_here: BTreeSet::new(),
        }
    }

    /// The placement with the cluster's islands.
    pub fn with_islands(mut self, islands: BTreeMap<IslandId, (IslandRecord, u64)>) -> Placement {
        self.islands = islands;
        self
    }

    /// The placement, knowing which islands' current records this node's
    /// running process wrote.
    pub fn with_made_here(mut self, islands: BTreeSet<IslandId>) -> Placement {
        self.made_here = islands;
        self
    }

    /// Every island, with its record.
    pub fn islands(&self) -> impl Iterator<Item = (IslandId, &IslandRecord)> {
        self.islands.iter().map(|(&id, (record, _))| (id, record))
    }

    /// What an island's member is shown: its record at its revision, the
    /// nodes that hold a lease now, and whether this process wrote it.
    pub fn island_view(&self, island: IslandId) -> Option<View> {
        let (record, revision) = self.islands.get(&island)?;
        let live = self
            .nodes
            .iter()
            .filter(|(_, node)| node.live)
            .map(|(&id, _)| id)
            .collect();
        Some(View {
            record: record.clone(),
            revision: *revision,
            live,
            made_here: self.made_here.contains(&island),
        })
    }

    /// Where `partition` lives, for a shard of this node running
    /// `local_shards` shards.
    pub fn home(&self, partition: u16, local_shards: u16) -> Home {
        let Some(&island) = self.owners.get(usize::from(partition)) else {
            return Home::Unknown;
        };
        self.tablet_home(island, partition, local_shards)
    }

    /// The node serving `island` now: its record's primary, or (a cluster
    /// that does not replicate) the node of the same id.
    pub fn primary_of(&self, island: IslandId) -> u16 {
        self.islands
            .get(&island)
            .map_or(island, |(record, _)| record.primary)
    }

    fn tablet_home(&self, island: IslandId, partition: u16, local_shards: u16) -> Home {
        let primary = self.primary_of(island);
        if primary == self.node {
            return Home::Here {
                island,
                shard: partition % local_shards,
            };
        }
        match self.nodes.get(&primary) {
            Some(node) => Home::Away {
                node: primary,
                island,
                shard: partition % node.shards.max(1),
                live: node.live,
            },
            None => Home::Unknown,
        }
    }

    /// Every island the map names, with the node serving it now (see
    /// [`Placement::primary_of`]).
    pub fn mapped_islands(&self) -> impl Iterator<Item = (IslandId, u16)> + '_ {
        self.mapped
            .iter()
            .map(|&island| (island, self.primary_of(island)))
    }

    pub fn node(&self, id: u16) -> Option<&PlacedNode> {
        self.nodes.get(&id)
    }

    /// Every node known, live or not.
    pub fn nodes(&self) -> impl Iterator<Item = (u16, &PlacedNode)> {
        self.nodes.iter().map(|(&id, node)| (id, node))
    }

    /// The cluster has a partition map.
    pub fn has_map(&self) -> bool {
        !self.owners.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node 1 live and node 2 down, each running `shards` shards.
    fn nodes_1_live_2_down(shards: u16) -> BTreeMap<u16, PlacedNode> {
        let node = |live| PlacedNode {
            advertise: "b:5222".into(),
            shards,
            live,
            peer: "10.0.0.2:5223".parse().unwrap(),
            incarnation: 7,
        };
        BTreeMap::from([(1, node(true)), (2, node(false))])
    }

    #[test]
    fn partitions_are_here_away_or_unknown() {
        let mut owners = vec![1u16; 512];
        owners.extend(vec![2u16; 511]);
        owners.push(3);
        let placement = Placement::new((1, 5), 9, owners, nodes_1_live_2_down(4));
        assert_eq!(
            placement.home(5, 2),
            Home::Here {
                island: 1,
                shard: 1
            }
        );
        assert_eq!(
            placement.home(513, 2),
            Home::Away {
                node: 2,
                island: 2,
                shard: 1,
                live: false
            }
        );
        assert_eq!(placement.home(1023, 2), Home::Unknown, "node 3 never seen");
        let empty = Placement::new((1, 0), 0, Vec::new(), BTreeMap::new());
        assert_eq!(empty.home(0, 2), Home::Unknown);
    }

    /// An island's partitions follow its record's primary: taken over by
    /// node 1, island 2's partitions are here, in island 2's tablets.
    #[test]
    fn an_island_s_partitions_live_where_its_primary_is() {
        let mut owners = vec![1u16; 512];
        owners.extend(vec![2u16; 512]);
        let nodes = nodes_1_live_2_down(2);
        let mut taken = IslandRecord::first(2, 1);
        taken.epoch = 2;
        taken.primary = 1;
        let islands = BTreeMap::from([(1, (IslandRecord::first(1, 2), 3)), (2, (taken, 4))]);
        let placement = Placement::new((1, 5), 9, owners, nodes).with_islands(islands);
        assert_eq!(
            placement.home(5, 2),
            Home::Here {
                island: 1,
                shard: 1
            }
        );
        assert_eq!(
            placement.home(515, 2),
            Home::Here {
                island: 2,
                shard: 1
            }
        );
        assert_eq!(
            placement.mapped_islands().collect::<Vec<_>>(),
            [(1, 1), (2, 1)]
        );
    }
}
