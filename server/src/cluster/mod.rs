//! Several isle nodes as one service. etcd holds who is alive (a lease per
//! node), the partition map and the controller; each node's
//! [`coordinator::Coordinator`] is its one etcd client, on the control
//! thread, and keeps a [`view::ClusterView`] from one watch. The shards
//! never talk to etcd and never wait on it.
//!
//! - `partitions`: the partition map and its stored form, checked whole;
//! - `view`: the cluster as the keys under the prefix describe it;
//! - `coordinator`: the lease, registration, election, the controller's
//!   assignment, the watch, endpoint failover;
//! - `identity`: the node a data directory belongs to.

pub mod coordinator;
pub mod identity;
pub mod partitions;
pub mod view;

use std::collections::BTreeMap;

use shard::{PlacedNode, Placement};

/// The placement node `me`'s shards route by, from a view: the partition
/// map, and every member with its last record (live or not).
pub fn placement(view: &view::ClusterView, me: u16) -> Placement {
    let owners = view
        .partitions
        .as_ref()
        .map_or_else(Vec::new, |(map, _)| map.owners().to_vec());
    let revision = view.partitions.as_ref().map_or(0, |(_, r)| *r).max(0) as u64;
    let mut nodes = BTreeMap::new();
    for (&id, record) in &view.members {
        nodes.insert(id, placed(record, false));
    }
    for (&id, live) in &view.nodes {
        nodes.insert(id, placed(&live.record, true));
    }
    Placement::new(me, revision, owners, nodes)
}

fn placed(record: &view::NodeRecord, live: bool) -> PlacedNode {
    PlacedNode {
        advertise: record.advertise.clone(),
        shards: record.shards,
        live,
    }
}
