//! The node's one etcd client, on the control thread's tokio runtime: it
//! holds the node's lease, registers the node under it, elects the
//! controller, lets the controller assign the partitions, and keeps a
//! [`ClusterView`] current from one watch on the cluster's prefix. The
//! shards never wait on it: they get each new view through a channel.
//!
//! A session is one connection to one etcd endpoint. It ends on any error
//! (the endpoint went away, the watch broke, the lease was lost) and the
//! next one tries the next endpoint after a short, growing pause: the
//! client is never given several endpoints at once, because one dead
//! member in its list makes its calls fail (etcd-client#12, #39). Its
//! HTTP/2 keepalive is 10 s: etcd answers pings more often than every 5 s
//! with `GOAWAY too_many_pings` (etcd#8905).
//!
//! The lease outlives sessions: a new session renews the lease it had
//! before, if etcd still holds it, so a switch of endpoint is not a new
//! incarnation. A node that starts finds its predecessor's record (a
//! process of the same id that died or was killed less than a TTL ago) and
//! revokes that lease first: the old incarnation is gone at once rather
//! than when its lease runs out.
//!
//! An etcd outage stops membership changes, never messages: nothing on a
//! shard waits for etcd.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use serde::Serialize;

use super::{
    islands,
    partitions::PartitionOwners,
    removal,
    sync_votes::{Decision, SyncVotes},
    view::{Change, ClusterView, NodeRecord},
};
use crate::config::cluster::{ClusterSettings, Replication};
use server::island::{tablet::IslandTxn, LeaseClock};
use shard::island::IslandId;

/// What an operator asks of the coordinator through the admin listener;
/// `answer` says what was done, or why not.
pub enum OperatorRequest {
    /// Remove member `node` for good (`isle ctl remove-node`; rules in
    /// `super::removal`).
    Remove {
        node: u16,
        answer: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
    /// A planned stop: revoke this node's lease now, so that the islands
    /// it leads are taken over at once instead of a lease TTL later, and
    /// start no session again (the process is stopping).
    Leave {
        answer: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
}

/// The next item of an optional channel: an island transaction a shard
/// asked for, an operator's request; never, when there is no channel (a
/// node that does not replicate, a coordinator without an admin side).
async fn next_from<T>(channel: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match channel {
        Some(channel) => channel.recv().await,
        None => std::future::pending().await,
    }
}

/// How long one etcd call may take before the session gives up on the
/// endpoint.
const CALL_TIMEOUT_MS: u64 = 3_000;
/// The HTTP/2 keepalive interval and timeout: at least etcd's
/// `--grpc-keepalive-min-time` (5 s) apart.
const HTTP2_KEEPALIVE_MS: (u64, u64) = (10_000, 5_000);
/// Pause before the next session, doubling from the first to the last.
const RETRY_MS: (u64, u64) = (100, 5_000);
/// Keepalives per lease TTL.
const KEEPALIVES_PER_TTL: u32 = 5;
/// Fraction of the TTL after the last answered keepalive's send time that
/// the lease counts as held here: etcd counts from when it received the
/// keepalive, so this ends before etcd's expiry.
const LEASE_TRUST: f64 = 0.99;

/// What the coordinator shows the operator (`/status`, metrics).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct CoordinatorStatus {
    pub node_id: u16,
    /// The endpoint of the current session, if one is up.
    pub endpoint: Option<String>,
    /// The node's lease id: its incarnation.
    pub incarnation: Option<i64>,
    /// How long the lease is held for sure, from now (ms): counted from
    /// `lease_until` when the status is read, so it runs down while etcd
    /// does not answer.
    pub lease_left_ms: u64,
    /// Until when (the monotonic clock) the lease is held for sure.
    #[serde(skip)]
    pub lease_until: Option<Instant>,
    pub controller: Option<u16>,
    pub revision: i64,
    /// The revision of the partition map in use (`None`: no readable map,
    /// so no account can be placed: the node is not ready).
    pub map_revision: Option<i64>,
    /// Live nodes, members, partitions this node owns.
    pub nodes_live: Vec<u16>,
    pub members: Vec<u16>,
    pub partitions_owned: usize,
    /// Every island as etcd shows it: id, epoch, primary, secondary,
    /// in-sync nodes and mode; none while replication is off (the records
    /// exist, but nothing is shipped: no island has a second copy).
    #[serde(default)]
    pub islands: Vec<IslandStatus>,
    /// `cluster.replication`: `sync`, or `off`.
    #[serde(default)]
    pub replication: String,
    /// This node's outgoing links (one per shard and other member), and
    /// those connected now, from the shards' last reports.
    #[serde(default)]
    pub links: usize,
    #[serde(default)]
    pub links_up: usize,
    /// Sessions started, values of etcd keys refused, and the error that
    /// ended the last session, until a session is healthy again.
    pub sessions: u64,
    pub rejected_keys: u64,
    pub last_error: Option<String>,
}

impl CoordinatorStatus {
    /// The status as of `now`: the lease time left counted down to it.
    pub fn at(&self, now: Instant) -> CoordinatorStatus {
        let mut status = self.clone();
        if let Some(until) = self.lease_until {
            status.lease_left_ms = until.saturating_duration_since(now).as_millis() as u64;
        }
        status
    }
}

/// One island as the status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct IslandStatus {
    pub id: u16,
    pub epoch: u64,
    pub primary: u16,
    pub secondary: u16,
    pub insync: Vec<u16>,
    /// `sync` or `solo`.
    pub mode: String,
}

/// The node's etcd client and what it keeps.
pub struct Coordinator {
    settings: ClusterSettings,
    record: NodeRecord,
    /// Where each new view goes (the latest only: a slow reader skips).
    publish: tokio::sync::watch::Sender<Arc<ClusterView>>,
    status: Arc<Mutex<CoordinatorStatus>>,
    /// The lease this node holds, and until when (the monotonic clock) it
    /// is held for sure.
    lease: Option<(i64, Instant)>,
    view: ClusterView,
    /// The map revision this node was last told it owns nothing in, so
    /// that it says so once per map.
    unowned_said: Option<i64>,
    /// Where the lease's validity goes for the shards' island members.
    lease_clock: Option<Arc<LeaseClock>>,
    /// Island transactions the shards' members ask for.
    txns: Option<tokio::sync::mpsc::Receiver<IslandTxn>>,
    /// Asks to take a secondary back in sync, until every shard asked.
    votes: SyncVotes,
    /// The revision of the last record of each island this process wrote
    /// (across sessions: what a view shows as `written_here`).
    written: BTreeMap<IslandId, i64>,
    /// Members without a lease, since when this node saw them so (for
    /// the controller's re-pairing).
    away_since: BTreeMap<u16, Instant>,
    /// What operators ask for through this node's admin listener.
    requests: Option<tokio::sync::mpsc::Receiver<OperatorRequest>>,
    /// The node left for a planned stop: no session starts again.
    left: bool,
}

/// Why a session ended without an etcd error.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("the lease expired")]
    LeaseLost,
    #[error("the watch ended")]
    WatchEnded,
    #[error("the watch was compacted away; reading again")]
    Compacted,
    #[error("the node left the cluster for a planned stop")]
    Left,
}

impl Coordinator {
    /// A coordinator for this node (`shards` shards), publishing views to
    /// `publish` and its state to `status`.
    pub fn new(
        settings: ClusterSettings,
        shards: u16,
        publish: tokio::sync::watch::Sender<Arc<ClusterView>>,
        status: Arc<Mutex<CoordinatorStatus>>,
    ) -> Coordinator {
        let record = NodeRecord {
            advertise: settings.advertise.clone(),
            peer: settings.peer_advertise,
            shards,
            instance: settings.instance.clone(),
        };
        status.lock().expect("not poisoned").node_id = settings.node_id;
        Coordinator {
            settings,
            record,
            publish,
            status,
            lease: None,
            view: ClusterView::default(),
            unowned_said: None,
            lease_clock: None,
            txns: None,
            votes: SyncVotes::new(shards),
            written: BTreeMap::new(),
            away_since: BTreeMap::new(),
            requests: None,
            left: false,
        }
    }

    /// The coordinator takes operators' requests from `requests`.
    pub fn with_requests(
        mut self,
        requests: tokio::sync::mpsc::Receiver<OperatorRequest>,
    ) -> Coordinator {
        self.requests = Some(requests);
        self
    }

    /// The coordinator of a node whose shards replicate (docs/islands.md):
    /// it tells them until when the lease holds, and runs the island
    /// transactions they ask for.
    pub fn with_islands(
        mut self,
        lease_clock: Arc<LeaseClock>,
        txns: tokio::sync::mpsc::Receiver<IslandTxn>,
    ) -> Coordinator {
        self.lease_clock = Some(lease_clock);
        self.txns = Some(txns);
        self
    }

    /// Runs sessions, one endpoint after another, for as long as the
    /// runtime runs.
    pub async fn run(mut self) {
        let mut endpoint = 0;
        let mut pause_ms = RETRY_MS.0;
        loop {
            let url = self.settings.etcd[endpoint % self.settings.etcd.len()].clone();
            let started = Instant::now();
            let error = match self.session(&url).await {
                Ok(never) => match never {},
                Err(error) => error,
            };
            if self.left {
                self.note(|s| {
                    s.endpoint = None;
                    s.last_error = Some("left the cluster: stopping".into());
                });
                return std::future::pending().await;
            }
            log::warn!("cluster: etcd session on {url} ended: {error:#}");
            self.note(|s| {
                s.endpoint = None;
                s.last_error = Some(format!("{url}: {error:#}"));
            });
            // A session that ran a while earns a quick retry.
            if started.elapsed() > Duration::from_millis(RETRY_MS.1) {
                pause_ms = RETRY_MS.0;
            }
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            pause_ms = (pause_ms * 2).min(RETRY_MS.1);
            endpoint += 1;
        }
    }

    /// One session on `url`: returns only with why it ended.
    async fn session(&mut self, url: &str) -> anyhow::Result<std::convert::Infallible> {
        let options = ConnectOptions::new()
            .with_timeout(Duration::from_millis(CALL_TIMEOUT_MS))
            .with_connect_timeout(Duration::from_millis(CALL_TIMEOUT_MS))
            .with_keep_alive(
                Duration::from_millis(HTTP2_KEEPALIVE_MS.0),
                Duration::from_millis(HTTP2_KEEPALIVE_MS.1),
            );
        let mut client = Client::connect([url], Some(options))
            .await
            .with_context(|| format!("connecting to {url}"))?;
        client.status().await.context("asking for etcd's status")?;
        self.note(|s| {
            s.endpoint = Some(url.to_owned());
            s.sessions += 1;
        });
        let lease = self.hold_lease(&mut client).await?;
        self.register(&mut client, lease).await?;
        loop {
            match self.follow(&mut client, lease).await {
                Err(error) if matches!(error.downcast_ref(), Some(SessionEnd::Compacted)) => {
                    log::info!("cluster: {error}");
                }
                Err(error) => return Err(error),
                Ok(never) => match never {},
            }
        }
    }

    /// The lease of the last session if etcd still holds it, else a new
    /// one.
    async fn hold_lease(&mut self, client: &mut Client) -> anyhow::Result<i64> {
        if let Some((id, _)) = self.lease {
            if self.renew(client, id).await.unwrap_or(false) {
                return Ok(id);
            }
        }
        let ttl_s = self.settings.lease_ttl_ms.div_ceil(1_000) as i64;
        let sent = Instant::now();
        let granted = client
            .lease_grant(ttl_s, None)
            .await
            .context("granting a lease")?;
        self.held_until(granted.id(), sent, granted.ttl());
        log::info!(
            "cluster: node {} holds lease {:x} ({} s)",
            self.settings.node_id,
            granted.id(),
            granted.ttl()
        );
        Ok(granted.id())
    }

    /// One keepalive of lease `id`: false when etcd no longer holds it.
    async fn renew(&mut self, client: &mut Client, id: i64) -> anyhow::Result<bool> {
        let (mut keeper, mut answers) = client.lease_keep_alive(id).await?;
        let sent = Instant::now();
        keeper.keep_alive().await?;
        let answer = answers.message().await?.context("no keepalive answer")?;
        if answer.ttl() <= 0 {
            return Ok(false);
        }
        self.held_until(id, sent, answer.ttl());
        Ok(true)
    }

    fn held_until(&mut self, id: i64, sent: Instant, ttl_s: i64) {
        let held = Duration::from_secs(ttl_s.max(0) as u64).mul_f64(LEASE_TRUST);
        self.lease = Some((id, sent + held));
        if let Some(clock) = &self.lease_clock {
            clock.held_until(Some(sent + held));
        }
        self.note(|s| {
            s.incarnation = Some(id);
            s.lease_until = Some(sent + held);
        });
    }

    /// Revokes a predecessor's lease, then publishes this node's record
    /// under the lease and its membership. Err, revoking nothing, while
    /// another process (another host or data dir) holds the id alive: the
    /// session ends and tries again, so this start waits for that lease to
    /// end instead of taking a live node down.
    async fn register(&mut self, client: &mut Client, lease: i64) -> anyhow::Result<()> {
        let node_key = self.key(&format!("nodes/{}", self.settings.node_id));
        let found = client.get(node_key.clone(), None).await?;
        if let Some(kv) = found.kvs().first() {
            let (old, holder) = (kv.lease(), serde_json::from_slice::<NodeRecord>(kv.value()));
            let other = holder.ok().map(|r| r.instance).filter(|i| !i.is_empty());
            if let Some(other) = other.filter(|i| *i != self.record.instance) {
                if old != lease {
                    anyhow::bail!(held_elsewhere(
                        self.settings.node_id,
                        &other,
                        &self.record.instance
                    ));
                }
            }
            if old != lease && old != 0 {
                log::warn!("cluster: revoking lease {old:x} of this node's previous incarnation");
                // Gone already is as good as revoked.
                let _ = client.lease_revoke(old).await;
            }
        }
        let value = serde_json::to_vec(&self.record)?;
        let member_key = self.key(&format!("members/{}", self.settings.node_id));
        let put = PutOptions::new().with_lease(lease);
        // One transaction: a node is never live without being a member.
        let register = Txn::new().and_then([
            TxnOp::put(node_key, value.clone(), Some(put)),
            TxnOp::put(member_key, value, None),
        ]);
        client.txn(register).await?;
        Ok(())
    }

    /// Reads the prefix, then follows its watch from the revision read,
    /// keeping the lease alive. Returns with why it stopped.
    async fn follow(
        &mut self,
        client: &mut Client,
        lease: i64,
    ) -> anyhow::Result<std::convert::Infallible> {
        let read = client
            .get(
                self.settings.prefix.clone(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let revision = read.header().map_or(0, |h| h.revision());
        self.view = ClusterView::default();
        for kv in read.kvs() {
            self.take(Self::put(&self.settings.prefix, kv), revision);
        }
        self.view.revision = revision;
        self.settle(client, lease).await?;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut watch = client
            .watch(self.settings.prefix.clone(), Some(options))
            .await?;
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
        let every = Duration::from_millis(self.settings.lease_ttl_ms) / KEEPALIVES_PER_TTL;
        let mut tick = tokio::time::interval(every);
        let mut sent = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    sent = Instant::now();
                    keeper.keep_alive().await?;
                    self.note_lease();
                    self.repair(client).await?;
                }
                answer = answers.message() => {
                    let answer = answer?.ok_or(SessionEnd::LeaseLost)?;
                    if answer.ttl() <= 0 {
                        self.lease = None;
                        if let Some(clock) = &self.lease_clock {
                            clock.held_until(None);
                        }
                        self.note(|s| s.lease_until = None);
                        return Err(SessionEnd::LeaseLost.into());
                    }
                    self.held_until(lease, sent, answer.ttl());
                }
                Some(txn) = next_from(&mut self.txns) => {
                    self.island_txn(client, txn).await?;
                }
                Some(request) = next_from(&mut self.requests) => {
                    self.operator_request(client, lease, request).await?;
                }
                message = watch.message() => {
                    let message = message?.ok_or(SessionEnd::WatchEnded)?;
                    if message.compact_revision() > 0 || message.canceled() {
                        return Err(SessionEnd::Compacted.into());
                    }
                    let revision = message.header().map_or(0, |h| h.revision());
                    for event in message.events() {
                        let Some(kv) = event.kv() else { continue };
                        let change = match event.event_type() {
                            EventType::Put => Self::put(&self.settings.prefix, kv),
                            EventType::Delete => Change::Delete {
                                key: Self::relative(&self.settings.prefix, kv.key()),
                            },
                        };
                        self.take(change, kv.mod_revision().max(revision));
                    }
                    self.settle(client, lease).await?;
                }
            }
        }
    }

    /// After the view changed: this node's record must be there (else the
    /// lease is gone), a controller must be elected, the controller
    /// assigns the partitions when there are none, and the view goes out.
    async fn settle(&mut self, client: &mut Client, lease: i64) -> anyhow::Result<()> {
        let me = self.settings.node_id;
        if self.view.nodes.get(&me).map(|n| n.incarnation) != Some(lease) {
            self.register(client, lease).await?;
        }
        if self.view.controller.is_none() {
            self.campaign(client, lease).await?;
        }
        if self.view.controller == Some(me) && self.view.partitions.is_none() {
            self.bootstrap(client).await?;
        }
        self.publish();
        Ok(())
    }

    /// Runs an island's compare-and-swap (rules 2, 3, 5 and 7 of
    /// docs/islands.md): the new record goes in only if the island's key
    /// is still at the revision its member saw and, for a promotion, the
    /// old primary holds no lease. The member learns the outcome from the
    /// views, as every other node does.
    async fn island_txn(&mut self, client: &mut Client, txn: IslandTxn) -> anyhow::Result<()> {
        if let Err(error) = islands::check(&txn.record) {
            log::error!(
                "cluster: island {}: refused to write {:?}: {error}",
                txn.island,
                txn.record
            );
            return Ok(());
        }
        let (txn_island, txn_secondary) = (txn.island, txn.record.secondary);
        let txn = match self.votes.offer(txn, Instant::now()) {
            Decision::Run(txn) => txn,
            Decision::Wait { have } => {
                log::debug!(
                    "cluster: island {}: {have} of {} shards ask to take node {} back in sync",
                    txn_island,
                    self.record.shards,
                    txn_secondary
                );
                return Ok(());
            }
        };
        let key = self.key(&format!("islands/{}", txn.island));
        let mut when = vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            txn.expect_revision as i64,
        )];
        if let Some(node) = txn.absent {
            let node_key = self.key(&format!("nodes/{node}"));
            when.push(Compare::create_revision(node_key, CompareOp::Equal, 0));
        }
        let put = TxnOp::put(key, islands::encode(&txn.record), None);
        let done = client.txn(Txn::new().when(when).and_then([put])).await?;
        let record = &txn.record;
        if done.succeeded() {
            let revision = done.header().map_or(0, |h| h.revision());
            self.written.insert(txn.island, revision);
            log::warn!(
                "cluster: island {}: epoch {}, primary {}, in sync {:?}, {:?}",
                txn.island,
                record.epoch,
                record.primary,
                record.insync,
                record.mode
            );
        } else {
            log::info!(
                "cluster: island {}: the change to epoch {} lost its race (revision {} moved on)",
                txn.island,
                record.epoch,
                txn.expect_revision
            );
        }
        Ok(())
    }

    /// Runs an operator's request and answers it. Err: etcd's error, or
    /// the node left (either ends the session).
    async fn operator_request(
        &mut self,
        client: &mut Client,
        lease: i64,
        request: OperatorRequest,
    ) -> anyhow::Result<()> {
        match request {
            OperatorRequest::Remove { node, answer } => {
                let outcome = self.remove(client, node).await;
                let said = match &outcome {
                    Ok(said) => said.clone(),
                    Err(error) => Err(format!("etcd failed: {error:#}; try again")),
                };
                let _ = answer.send(said);
                outcome.map(drop)
            }
            OperatorRequest::Leave { answer } => {
                let revoked = client.lease_revoke(lease).await;
                self.leave();
                let said = match &revoked {
                    Ok(_) => Ok(format!("lease {lease:x} revoked")),
                    Err(error) => Err(format!("revoking lease {lease:x}: {error}")),
                };
                log::warn!("cluster: leaving for a planned stop: {said:?}");
                let _ = answer.send(said);
                Err(SessionEnd::Left.into())
            }
        }
    }

    /// Holds no lease from now on and starts no session again.
    fn leave(&mut self) {
        self.left = true;
        self.lease = None;
        if let Some(clock) = &self.lease_clock {
            clock.held_until(None);
        }
        self.note(|s| s.lease_until = None);
    }

    /// Removes member `node` for good if `removal::check` allows it, by
    /// one transaction that compares what the check read. The inner
    /// result is the operator's answer; Err is etcd's (the session ends).
    async fn remove(
        &mut self,
        client: &mut Client,
        node: u16,
    ) -> anyhow::Result<Result<String, String>> {
        let guard = match removal::check(&self.view, node) {
            Ok(guard) => guard,
            Err(refused) => return Ok(Err(refused.to_string())),
        };
        let member = self.key(&format!("members/{node}"));
        let mut when = vec![
            Compare::create_revision(self.key(&format!("nodes/{node}")), CompareOp::Equal, 0),
            Compare::create_revision(member.clone(), CompareOp::Greater, 0),
        ];
        for (island, revision) in &guard.islands {
            let key = self.key(&format!("islands/{island}"));
            when.push(Compare::mod_revision(key, CompareOp::Equal, *revision));
        }
        if let Some(revision) = guard.map_revision {
            let key = self.key("partitions");
            when.push(Compare::mod_revision(key, CompareOp::Equal, revision));
        }
        let delete = TxnOp::delete(member, None);
        let done = client.txn(Txn::new().when(when).and_then([delete])).await?;
        if !done.succeeded() {
            return Ok(Err(format!(
                "the cluster changed while node {node} was being removed (its lease, an \
                 island or the map): nothing was removed; try again"
            )));
        }
        log::warn!("cluster: node {node} removed from the members by an operator");
        Ok(Ok(format!(
            "node {node} removed: the other nodes drop their links to it and send on what \
             they held for it"
        )))
    }

    /// The controller's re-pairing of an island left solo whose secondary
    /// stays away past `repair_grace_ms` (docs/islands.md): one island a
    /// call, by compare-and-swap on its key and on the old secondary's
    /// absence, so a node back just in time keeps its place.
    async fn repair(&mut self, client: &mut Client) -> anyhow::Result<()> {
        let now = Instant::now();
        let live: BTreeSet<u16> = self.view.nodes.keys().copied().collect();
        self.away_since.retain(|node, _| !live.contains(node));
        for &member in self.view.members.keys() {
            if !live.contains(&member) {
                self.away_since.entry(member).or_insert(now);
            }
        }
        let me = self.settings.node_id;
        let replicating = self.settings.replication != Replication::Off;
        if self.view.controller != Some(me) || !replicating {
            return Ok(());
        }
        let grace = Duration::from_millis(self.settings.repair_grace_ms);
        let away = &self.away_since;
        let away_long = |node| away.get(&node).is_some_and(|since| now >= *since + grace);
        let Some(repair) = islands::repair(&self.view.islands, &live, away_long) else {
            return Ok(());
        };
        let key = self.key(&format!("islands/{}", repair.island));
        let gone = self.key(&format!("nodes/{}", repair.old_secondary));
        let when = [
            Compare::mod_revision(key.clone(), CompareOp::Equal, repair.expect_revision),
            Compare::create_revision(gone, CompareOp::Equal, 0),
        ];
        let put = TxnOp::put(key, islands::encode(&repair.record), None);
        let done = client.txn(Txn::new().when(when).and_then([put])).await?;
        if done.succeeded() {
            log::warn!(
                "cluster: island {}: node {} has been away over {} s; node {} is its \
                 secondary now (epoch {}, solo until it caught up)",
                repair.island,
                repair.old_secondary,
                grace.as_secs(),
                repair.record.secondary,
                repair.record.epoch
            );
        }
        Ok(())
    }

    /// Takes the controller key if nobody holds it.
    async fn campaign(&mut self, client: &mut Client, lease: i64) -> anyhow::Result<()> {
        let key = self.key("controller");
        let free = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
        let me = self.settings.node_id.to_string();
        let take = TxnOp::put(key, me, Some(PutOptions::new().with_lease(lease)));
        let won = client.txn(Txn::new().when([free]).and_then([take])).await?;
        if won.succeeded() {
            log::warn!("cluster: node {} is the controller", self.settings.node_id);
            self.view.controller = Some(self.settings.node_id);
        }
        Ok(())
    }

    /// The controller's first duty: once `bootstrap_nodes` nodes are live,
    /// spread the partitions over them, if nobody has yet.
    async fn bootstrap(&mut self, client: &mut Client) -> anyhow::Result<()> {
        let live: Vec<u16> = self.view.nodes.keys().copied().collect();
        if live.len() < self.settings.bootstrap_nodes {
            return Ok(());
        }
        let owners = PartitionOwners::assign_evenly(&live);
        let key = self.key("partitions");
        let absent = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
        let mut puts = vec![TxnOp::put(key, owners.encode(), None)];
        // The islands go with the map they pair: node i's partitions are
        // island i, so no map exists without its islands.
        let ring = islands::ring(&live);
        for (id, record) in &ring {
            puts.push(TxnOp::put(
                self.key(&format!("islands/{id}")),
                islands::encode(record),
                None,
            ));
        }
        let done = client.txn(Txn::new().when([absent]).and_then(puts)).await?;
        if done.succeeded() {
            log::warn!(
                "cluster: partitions assigned to nodes {live:?}, in {} islands",
                ring.len()
            );
        }
        Ok(())
    }

    fn take(&mut self, change: Change<'_>, revision: i64) {
        if let Err(rejected) = self.view.apply(change, revision) {
            log::error!("cluster: {rejected}; left out of the view");
            self.note(|s| s.rejected_keys += 1);
        }
    }

    fn put<'a>(prefix: &str, kv: &'a etcd_client::KeyValue) -> Change<'a> {
        Change::Put {
            key: Self::relative(prefix, kv.key()),
            value: kv.value(),
            lease: kv.lease(),
            mod_revision: kv.mod_revision(),
        }
    }

    /// A key without the prefix (keys are UTF-8 here; another is no key
    /// of ours).
    fn relative<'a>(prefix: &str, key: &'a [u8]) -> &'a str {
        std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(prefix))
            .unwrap_or("")
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.settings.prefix)
    }

    /// Sends the view out and updates the status.
    fn publish(&mut self) {
        self.view.written_here = self.written.clone();
        let view = Arc::new(self.view.clone());
        let me = self.settings.node_id;
        let replicating = self.settings.replication;
        self.note(|s| {
            s.controller = view.controller;
            s.revision = view.revision;
            s.nodes_live = view.nodes.keys().copied().collect();
            s.members = view.members.keys().copied().collect();
            s.partitions_owned = view
                .partitions
                .as_ref()
                .map_or(0, |(map, _)| map.owned_by(me));
            s.map_revision = view.partitions.as_ref().map(|(_, revision)| *revision);
            s.replication = format!("{:?}", replicating).to_lowercase();
            s.islands = view
                .islands
                .iter()
                .filter(|_| replicating != Replication::Off)
                .map(|(&id, (record, _))| IslandStatus {
                    id,
                    epoch: record.epoch,
                    primary: record.primary,
                    secondary: record.secondary,
                    insync: record.insync.clone(),
                    mode: format!("{:?}", record.mode).to_lowercase(),
                })
                .collect();
            // A view settled: the session is healthy, whatever ended the
            // one before.
            s.last_error = None;
        });
        self.note_lease();
        if let Some((map, revision)) = &view.partitions {
            if map.owned_by(me) == 0 && self.unowned_said != Some(*revision) {
                self.unowned_said = Some(*revision);
                log::warn!(
                    "cluster: node {me} owns 0 partitions (map revision {revision}): it serves \
                     no account. Partitions are assigned only when a cluster is bootstrapped \
                     (bootstrap_nodes); moving them to a node that joins later is not done yet"
                );
            }
        }
        self.publish.send_replace(view);
    }

    fn note_lease(&self) {
        let left = self.lease.map_or(0, |(_, until)| {
            until.saturating_duration_since(Instant::now()).as_millis() as u64
        });
        self.note(|s| s.lease_left_ms = left);
    }

    fn note(&self, change: impl FnOnce(&mut CoordinatorStatus)) {
        change(&mut self.status.lock().expect("not poisoned"));
    }
}

/// Why a start waits: another live process (`other`, host and data dir)
/// holds this node id.
fn held_elsewhere(node_id: u16, other: &str, this: &str) -> String {
    format!(
        "node id {node_id} is held by a live process at {other}; this one ({this}) \
         waits for its lease to end (stop it, or give this one another node_id)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_node_id_is_told_in_one_plain_line() {
        let line = held_elsewhere(2, "a:/srv/isle", "b:/srv/isle");
        assert_eq!(
            line,
            "node id 2 is held by a live process at a:/srv/isle; this one (b:/srv/isle) \
             waits for its lease to end (stop it, or give this one another node_id)"
        );
        assert!(!line.contains("  "), "{line:?}");
    }
}
