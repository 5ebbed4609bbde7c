//! A planned stop (SIGTERM, SIGINT, `POST /stop`, `isle ctl restart`).
//!
//! A single node stops at once, as it always did: each shard closes its
//! connections (phones are told `Bye { ShuttingDown }`) and finishes its
//! commits. A cluster node first gives its islands away, so that their
//! phones wait about one etcd round trip instead of a lease TTL:
//! 1. readiness goes false;
//! 2. it waits, at most `LAG_WAIT_MS` (1 s), until every replica holds every
//!    batch (a batch not yet on the secondary is not acknowledged to its
//!    phone, which sends it again after the failover);
//! 3. the coordinator revokes the node's lease and starts no session
//!    again: every other node sees the node gone at once, its in-sync
//!    secondaries take its islands over (docs/islands.md, rule 2; their
//!    acks for the old epoch stop first, so the node acknowledges nothing
//!    more), and the islands it is secondary of go solo (rule 3);
//! 4. the shards stop as a single node's do; the phones reconnect to
//!    another node, which redirects them to their island's new primary.
//!
//! Nothing here decides whether stopping is safe for the cluster (an
//! island whose secondary is not in sync has no other node to go to):
//! `isle ctl restart` checks that first; a signal stops regardless.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::Shared;
use crate::cluster::coordinator::OperatorRequest;

/// How often the control thread looks for a stop request, in ms.
const POLL_MS: u64 = 50;
/// How long a planned stop waits for every replica to hold every batch,
/// in ms. The shards report their lag once a second, and under load it is
/// rarely 0 (each commit in flight counts): the wait is a bound, not a
/// promise; a batch the secondary lacks at the revocation is not
/// acknowledged, and its phones send it again.
const LAG_WAIT_MS: u64 = 1_000;
/// How long it waits for the coordinator to revoke the lease, in ms: more
/// than one etcd call's timeout (3 s) is not worth waiting; the lease then
/// ends by itself.
const LEAVE_WAIT_MS: u64 = 3_000;

/// Waits for a stop request (`requested`), runs the planned stop, then
/// stops the shards. Returns early, doing nothing, when the server
/// stopped otherwise (a start that failed).
pub(super) async fn watch(shared: Arc<Shared>, requested: Arc<AtomicBool>) {
    let mut interval = tokio::time::interval(Duration::from_millis(POLL_MS));
    loop {
        interval.tick().await;
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        if requested.load(Ordering::Relaxed) {
            break;
        }
    }
    if let Some(requests) = shared.coordinator.get() {
        hand_over(&shared, requests).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
}

/// Steps 1 to 3 of the module doc.
async fn hand_over(shared: &Shared, requests: &tokio::sync::mpsc::Sender<OperatorRequest>) {
    let started = Instant::now();
    shared.state.lock().expect("not poisoned").draining = true;
    log::warn!("planned stop: giving this node's islands to their secondaries first");
    let lagging = until(LAG_WAIT_MS, || replica_lag_batches(shared) == 0).await;
    if lagging {
        log::warn!(
            "planned stop: replicas still {} batches behind after {LAG_WAIT_MS} ms: their \
             phones send those messages again",
            replica_lag_batches(shared)
        );
    }
    let (answer, answered) = tokio::sync::oneshot::channel();
    if requests
        .try_send(OperatorRequest::Leave { answer })
        .is_err()
    {
        log::warn!("planned stop: the coordinator is busy: the lease ends by itself");
        return;
    }
    let wait = Duration::from_millis(LEAVE_WAIT_MS);
    match tokio::time::timeout(wait, answered).await {
        Ok(Ok(Ok(done))) => log::warn!(
            "planned stop: {done}; stopping, {} ms after the request",
            started.elapsed().as_millis()
        ),
        Ok(Ok(Err(error))) => log::warn!("planned stop: {error}; the lease ends by itself"),
        Ok(Err(_)) | Err(_) => log::warn!(
            "planned stop: etcd did not answer within {LEAVE_WAIT_MS} ms: the lease ends by \
             itself"
        ),
    }
}

/// Waits until `done` says so, at most `wait_ms`. True: it did not.
async fn until(wait_ms: u64, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    while !done() {
        if Instant::now() >= deadline {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    false
}

/// Batches of this node's islands their secondaries do not hold yet, all
/// shards, as the shards last reported.
fn replica_lag_batches(shared: &Shared) -> u64 {
    let state = shared.state.lock().expect("not poisoned");
    let shards = state.shards.values();
    shards.map(|s| s.latest.queues.replica_lag_batches).sum()
}
