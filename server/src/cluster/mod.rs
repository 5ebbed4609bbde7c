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
//! - `envelope`: a peer message as it crosses to another node, and the
//!   checks it meets there;
//! - `identity`: the node a data directory belongs to;
//! - `islands`: an island's record in etcd, checked whole, and the first
//!   islands a bootstrap writes (a ring);
//! - `removal`: when a member that left for good may be removed, and what
//!   the removal compares;
//! - `sync_votes`: an island goes back to `sync` only once every shard of
//!   its primary asked for it.

pub mod coordinator;
pub mod envelope;
pub mod identity;
pub mod islands;
pub mod partitions;
pub mod removal;
pub mod sync_votes;
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
        nodes.insert(id, placed(record, 0));
    }
    for (&id, live) in &view.nodes {
        nodes.insert(id, placed(&live.record, live.incarnation));
    }
    let incarnation = view.nodes.get(&me).map_or(0, |n| n.incarnation);
    let islands = view
        .islands
        .iter()
        .map(|(&id, (record, revision))| (id, (record.clone(), (*revision).max(0) as u64)))
        .collect();
    let made_here = view
        .islands
        .iter()
        .filter(|(id, (_, revision))| view.written_here.get(id) == Some(revision))
        .map(|(&id, _)| id)
        .collect();
    Placement::new((me, incarnation), revision, owners, nodes)
        .with_islands(islands)
        .with_made_here(made_here)
}

/// A node as a placement shows it; `incarnation` 0: not live.
fn placed(record: &view::NodeRecord, incarnation: i64) -> PlacedNode {
    PlacedNode {
        advertise: record.advertise.clone(),
        shards: record.shards,
        live: incarnation != 0,
        peer: record.peer,
        incarnation,
    }
}
