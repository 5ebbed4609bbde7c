//! `isle ctl restart` and `isle ctl rolling-restart`: a node restarted
//! without its phones noticing more than a reconnect, and a cluster's
//! nodes restarted one at a time that way (an upgrade, a configuration
//! change).
//!
//! For one node:
//! 1. it is checked that stopping it leaves every island it belongs to
//!    served: each is `sync`, with both of its nodes live (else the
//!    restart is refused, saying which island is not, unless `--force`);
//! 2. the node is asked for a planned stop (`POST /stop`; see
//!    `control::planned_stop`): its islands go to their secondaries in
//!    about one etcd round trip, then it stops;
//! 3. the service manager starts it again (`Restart=always` in the
//!    packaged unit); this command only waits for that;
//! 4. once it answers as a new incarnation and is ready, it waits until
//!    every island the node belongs to is `sync` again: the node caught
//!    up as its islands' secondary.
//!
//! A rolling restart does this for each node in turn, so no two nodes of
//! an island are ever down at once.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::Admin;
use crate::{cluster::coordinator::CoordinatorStatus, control::Status};

/// How often the node is asked how it is, in ms.
const POLL_MS: u64 = 250;

/// What one node's restart took, from the stop request on, in ms.
#[derive(Debug, serde::Serialize)]
pub struct Restarted {
    pub node: Option<u16>,
    /// Until the old process no longer answered.
    pub stopped_ms: u64,
    /// Until the new one answered, ready.
    pub back_ms: u64,
    /// Until every island the node belongs to was `sync` again.
    pub in_sync_ms: u64,
}

/// Restarts the node behind `admin`; waits at most `wait_ms` for each
/// step after the stop request.
pub(super) fn restart(admin: &Admin, wait_ms: u64, force: bool) -> anyhow::Result<Restarted> {
    let before = status(admin)?;
    let cluster = before.cluster.as_ref();
    if let Some(cluster) = cluster {
        let unsafe_islands = not_ready_to_stop(cluster);
        if !unsafe_islands.is_empty() && !force {
            anyhow::bail!(
                "node {} not restarted: {} (wait until they are, or --force)",
                cluster.node_id,
                unsafe_islands.join("; ")
            );
        }
    }
    let node = cluster.map(|c| c.node_id);
    let name = node.map_or("the server".to_owned(), |n| format!("node {n}"));
    admin.request(("POST", "/stop"), None)?;
    let started = Instant::now();
    let deadline = || started + Duration::from_millis(wait_ms);
    let elapsed_ms = || started.elapsed().as_millis() as u64;
    say(admin, format!("{name}: stopping"));
    // Gone, or already another process.
    let old = before.process;
    await_step(deadline(), || {
        status(&admin.current()).map_or(true, |s| s.process != old)
    })
    .with_context(|| format!("{name} still answers after {wait_ms} ms"))?;
    let stopped_ms = elapsed_ms();
    say(
        admin,
        format!(
            "{name}: stopped after {stopped_ms} ms; waiting for the service manager to start it"
        ),
    );
    await_step(deadline(), || {
        status(&admin.current()).is_ok_and(|s| s.process != old && s.ready)
    })
    .with_context(|| format!("{name} not back and ready after {wait_ms} ms: is it started?"))?;
    let back_ms = elapsed_ms();
    say(admin, format!("{name}: back after {back_ms} ms, ready"));
    await_step(deadline(), || {
        let now = status(&admin.current());
        now.is_ok_and(|s| s.cluster.as_ref().is_none_or(|c| not_in_sync(c).is_empty()))
    })
    .with_context(|| format!("{name}'s islands not in sync after {wait_ms} ms"))?;
    let in_sync_ms = elapsed_ms();
    if node.is_some() {
        say(
            admin,
            format!("{name}: its islands in sync after {in_sync_ms} ms"),
        );
    }
    Ok(Restarted {
        node,
        stopped_ms,
        back_ms,
        in_sync_ms,
    })
}

/// Restarts each node in turn; stops at the first that fails.
pub(super) fn rolling(admins: &[Admin], wait_ms: u64) -> anyhow::Result<Vec<Restarted>> {
    let mut done = Vec::new();
    for admin in admins {
        done.push(restart(admin, wait_ms, false)?);
    }
    Ok(done)
}

/// Prints a step on stderr (stdout is the result's).
fn say(admin: &Admin, line: String) {
    if !admin.json {
        eprintln!("{line}");
    }
}

fn status(admin: &Admin) -> anyhow::Result<Status> {
    let body = admin.fetch("/status")?;
    serde_json::from_str(&body).context("the server's /status")
}

/// Waits until `done`, polling, at most until `deadline`.
fn await_step(deadline: Instant, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    Ok(())
}

/// Why stopping this node now would leave an island unserved or with a
/// single copy: each island it belongs to that is not `sync` with both
/// of its nodes live, described. Empty: it may stop.
pub fn not_ready_to_stop(cluster: &CoordinatorStatus) -> Vec<String> {
    if cluster.replication == "off" {
        return vec!["replication is off: its partitions have no other copy".into()];
    }
    let mut reasons = not_in_sync(cluster);
    let me = cluster.node_id;
    for island in &cluster.islands {
        let other = if island.primary == me {
            island.secondary
        } else if island.secondary == me {
            island.primary
        } else {
            continue;
        };
        if !cluster.nodes_live.contains(&other) {
            reasons.push(format!("island {}: node {other} is not live", island.id));
        }
    }
    reasons
}

/// The islands this node belongs to that are not `sync` with both nodes
/// in sync, described.
fn not_in_sync(cluster: &CoordinatorStatus) -> Vec<String> {
    let me = cluster.node_id;
    cluster
        .islands
        .iter()
        .filter(|i| i.primary == me || i.secondary == me)
        .filter(|i| {
            i.mode != "sync" || !i.insync.contains(&i.primary) || !i.insync.contains(&i.secondary)
        })
        .map(|i| format!("island {} is {} (in sync {:?})", i.id, i.mode, i.insync))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::coordinator::IslandStatus;

    fn island(id: u16, primary: u16, secondary: u16, insync: Vec<u16>) -> IslandStatus {
        let mode = if insync.len() == 2 { "sync" } else { "solo" };
        IslandStatus {
            id,
            epoch: 3,
            primary,
            secondary,
            insync,
            mode: mode.into(),
        }
    }

    fn cluster(islands: Vec<IslandStatus>, live: Vec<u16>) -> CoordinatorStatus {
        CoordinatorStatus {
            node_id: 1,
            nodes_live: live,
            islands,
            replication: "sync".into(),
            ..CoordinatorStatus::default()
        }
    }

    #[test]
    fn a_node_stops_only_while_every_island_it_belongs_to_has_two_live_copies() {
        let ring = || {
            vec![
                island(1, 1, 2, vec![1, 2]),
                island(2, 2, 3, vec![2, 3]),
                island(3, 3, 1, vec![3, 1]),
            ]
        };
        assert!(not_ready_to_stop(&cluster(ring(), vec![1, 2, 3])).is_empty());
        // Island 2 does not name node 1: its state does not matter here.
        let mut islands = ring();
        islands[1] = island(2, 2, 3, vec![2]);
        assert!(not_ready_to_stop(&cluster(islands, vec![1, 2, 3])).is_empty());
        let mut islands = ring();
        islands[2] = island(3, 3, 1, vec![3]);
        let reasons = not_ready_to_stop(&cluster(islands, vec![1, 2, 3]));
        assert_eq!(reasons, ["island 3 is solo (in sync [3])"]);
        let reasons = not_ready_to_stop(&cluster(ring(), vec![1, 3]));
        assert_eq!(reasons, ["island 1: node 2 is not live"]);
        let mut off = cluster(ring(), vec![1, 2, 3]);
        off.replication = "off".into();
        assert_eq!(not_ready_to_stop(&off).len(), 1);
    }
}
