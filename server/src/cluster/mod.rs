//! Several isle nodes as one service. etcd holds who is alive (a lease per
//! node), the partition map and the controller; each node's
//! [`coordinator::Coordinator`] is its one etcd client, on the control
//! thread, and keeps a [`view::ClusterView`] from one watch. The shards
//! never talk to etcd and never wait on it.
//!
//! - `partitions`: the partition map and its stored form, checked whole;
//! - `view`: the cluster as the keys under the prefix describe it;
//! - `coordinator`: the lease, registration, election, the controller's
//!   assignment, the watch, endpoint failover.

pub mod coordinator;
pub mod partitions;
pub mod view;
