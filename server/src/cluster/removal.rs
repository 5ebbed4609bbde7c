//! Removing a member that left for good (`isle ctl remove-node N`): when
//! etcd may let it go, and what the removal's compare-and-swap compares.
//!
//! A member stays a member after its lease ends (`members/<id>` is
//! durable): what is owed to a node that is down waits on its links until
//! it is back. A node that will not come back is removed by an operator.
//! The removal deletes its `members/<id>` key only while:
//! - it holds no lease (a live node is stopped first);
//! - no island names it as primary, secondary or in sync: an island it
//!   was primary of is served elsewhere once its secondary took it over,
//!   and one it was secondary of is given another by the controller after
//!   `repair_grace_ms`;
//! - the islands and the partition map are still at the revisions this
//!   check read (the transaction compares them), so a takeover or a
//!   re-pairing racing the removal makes it fail instead of leaving an
//!   island naming a node nobody links to.
//!
//! Every other node then drops its links to the node and sends on what
//! they held for it to where it goes now (`runtime::remote`).

use shard::island::IslandId;

use super::view::ClusterView;

/// Why a member cannot be removed now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemovalRefused {
    #[error("node {0} is not a member of the cluster")]
    NotMember(u16),
    #[error("node {0} is live (it holds a lease): stop it first, then remove it")]
    Live(u16),
    #[error(
        "island {island} still has node {node} as its primary: it is removed once the \
         island's secondary took it over (when that is in sync), or the node is back"
    )]
    Primary { island: IslandId, node: u16 },
    #[error(
        "island {island} still has node {node} as its secondary: the controller gives it \
         another once node {node} has been away for repair_grace_ms and another node is live"
    )]
    Secondary { island: IslandId, node: u16 },
    #[error("the partition map still gives partitions to node {0}")]
    OwnsPartitions(u16),
}

/// What a removal of `node` compares, as read when it was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovalGuard {
    pub node: u16,
    /// Each island's key revision.
    pub islands: Vec<(IslandId, i64)>,
    /// The partition map's revision, if there is a map.
    pub map_revision: Option<i64>,
}

/// Whether `node` may be removed from the cluster `view` shows, and if
/// so what the removal compares.
pub fn check(view: &ClusterView, node: u16) -> Result<RemovalGuard, RemovalRefused> {
    if !view.members.contains_key(&node) {
        return Err(RemovalRefused::NotMember(node));
    }
    if view.nodes.contains_key(&node) {
        return Err(RemovalRefused::Live(node));
    }
    for (&island, (record, _)) in &view.islands {
        if record.primary == node {
            return Err(RemovalRefused::Primary { island, node });
        }
        if record.secondary == node || record.insync.contains(&node) {
            return Err(RemovalRefused::Secondary { island, node });
        }
    }
    if let Some((map, _)) = &view.partitions {
        // Islands name the nodes of the partitions they pair; without
        // island records (none written yet), the map names the owner.
        if view.islands.is_empty() && map.owned_by(node) > 0 {
            return Err(RemovalRefused::OwnsPartitions(node));
        }
    }
    Ok(RemovalGuard {
        node,
        islands: view
            .islands
            .iter()
            .map(|(&island, (_, revision))| (island, *revision))
            .collect(),
        map_revision: view.partitions.as_ref().map(|(_, revision)| *revision),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shard::island::{IslandRecord, Mode};

    use super::*;
    use crate::cluster::{
        partitions::PartitionOwners,
        view::{LiveNode, NodeRecord},
    };

    fn record(node: u16) -> NodeRecord {
        NodeRecord {
            advertise: format!("10.0.0.{node}:5222"),
            peer: format!("10.0.0.{node}:7000").parse().unwrap(),
            shards: 1,
            instance: String::new(),
        }
    }

    /// Members 1, 2, 3; nodes 1 and 2 live; island 3 taken over by node
    /// 1 and re-paired with node 2; islands 1 and 2 on the ring of 1 and 2.
    fn view() -> ClusterView {
        let island = |primary, secondary, revision| {
            let record = IslandRecord {
                epoch: 2,
                primary,
                secondary,
                insync: vec![primary, secondary],
                mode: Mode::Sync,
            };
            (record, revision)
        };
        let live = |node| LiveNode {
            record: record(node),
            incarnation: i64::from(node) * 100,
        };
        ClusterView {
            revision: 50,
            nodes: BTreeMap::from([(1, live(1)), (2, live(2))]),
            members: (1..=3).map(|n| (n, record(n))).collect(),
            partitions: Some((PartitionOwners::assign_evenly(&[1, 2, 3]), 7)),
            controller: Some(1),
            islands: BTreeMap::from([
                (1, island(1, 2, 10)),
                (2, island(2, 1, 11)),
                (3, island(1, 2, 40)),
            ]),
            written_here: BTreeMap::new(),
        }
    }

    #[test]
    fn a_node_no_island_names_is_removed_comparing_every_island_and_the_map() {
        let guard = check(&view(), 3).unwrap();
        assert_eq!(guard.islands, [(1, 10), (2, 11), (3, 40)]);
        assert_eq!(guard.map_revision, Some(7));
    }

    #[test]
    fn a_live_node_a_stranger_and_a_node_an_island_names_are_refused() {
        assert_eq!(check(&view(), 2), Err(RemovalRefused::Live(2)));
        assert_eq!(check(&view(), 9), Err(RemovalRefused::NotMember(9)));
        let mut primary = view();
        primary.islands.get_mut(&3).unwrap().0.primary = 3;
        let refused = check(&primary, 3);
        assert_eq!(refused, Err(RemovalRefused::Primary { island: 3, node: 3 }));
        let mut secondary = view();
        let island = &mut secondary.islands.get_mut(&3).unwrap().0;
        island.secondary = 3;
        island.insync = vec![1];
        let refused = check(&secondary, 3);
        assert_eq!(
            refused,
            Err(RemovalRefused::Secondary { island: 3, node: 3 })
        );
    }

    #[test]
    fn without_island_records_the_map_decides() {
        let mut bare = view();
        bare.islands.clear();
        assert_eq!(check(&bare, 3), Err(RemovalRefused::OwnsPartitions(3)));
        bare.partitions = Some((PartitionOwners::assign_evenly(&[1, 2]), 9));
        assert_eq!(check(&bare, 3).unwrap().map_revision, Some(9));
    }
}
