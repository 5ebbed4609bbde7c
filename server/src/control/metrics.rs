//! The Prometheus side of the reports: one registry, labelled by shard,
//! encoded as OpenMetrics text for `/metrics` (the format of the
//! `prometheus-client` crate, the Prometheus project's own Rust client).
//!
//! Counters come from [`ShardCounters`] field by field (its gauges, such as
//! `connections`, as gauges), so a counter added to the shard is exported
//! without a change here. Queue lengths are exported as they are now and
//! as decaying averages over 1, 10 and 100 s (`_avg{window=...}`).

use std::{borrow::Cow, collections::BTreeMap, sync::atomic::Ordering};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use server::island::tablet::TabletStats;
use shard::ShardCounters;

use super::{
    decay::WINDOWS_S,
    gateways::GatewayCounts,
    link_metrics::LinkMetrics,
    snapshot::{Queues, ShardReport},
};

/// `ShardCounters` fields that are levels, not counts.
const GAUGE_FIELDS: [&str; 7] = [
    "connections",
    "sessions",
    "connections_anonymous",
    "accounts",
    "groups",
    "account_deletions_pending",
    "receipts_owed",
];

/// Histogram buckets for commit and sync times, in seconds: 50 µs doubling
/// to about 1.6 s.
const TIME_BUCKET_FIRST_S: f64 = 0.000_05;
const TIME_BUCKETS: u16 = 16;
/// Buckets for records and bytes per commit: 1 doubling to about 1 M.
const SIZE_BUCKETS: u16 = 21;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    shard: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WindowLabel {
    shard: String,
    window: String,
}

type Histograms = Family<ShardLabel, Histogram, fn() -> Histogram>;

/// The registry and every family in it.
pub struct Metrics {
    registry: Registry,
    /// The links between nodes, in a cluster.
    links: LinkMetrics,
    counters: CounterFamilies,
    gauges: GaugeFamilies,
    queues: QueueFamilies,
    queue_averages: AverageFamilies,
    journal: GaugeFamilies,
    commit_seconds: Histograms,
    sync_seconds: Histograms,
    commit_records: Histograms,
    commit_bytes: Histograms,
    /// `replication_*` per shard, by `TabletStats` field (its lag is a
    /// queue).
    replication: CounterFamilies,
    errors_sent: Family<KindLabel, Counter>,
    bytes_in: Family<ShardLabel, Counter>,
    bytes_out: Family<ShardLabel, Counter>,
    tls_handshake_failures: Family<ShardLabel, Counter>,
    /// SMS and push sender counts, by outcome (`sent`, `failed`,
    /// `retried`).
    sms: Family<OutcomeLabel, Counter>,
    push: Family<OutcomeLabel, Counter>,
    replayed: Family<ShardLabel, Gauge>,
    ready: Gauge,
    /// This node's part of the cluster; `None` for a single node.
    cluster: Option<ClusterGauges>,
}

/// `isle_cluster_*`: what `isle ctl status` shows of the cluster.
struct ClusterGauges {
    members: Gauge,
    nodes_live: Gauge,
    map_revision: Gauge,
    partitions_owned: Gauge,
    lease_left_ms: Gauge,
    links: Gauge,
    links_up: Gauge,
    controller: Gauge,
    /// Per island (label `island`): its epoch, its primary's node id,
    /// whether it is solo (1) or sync (0), and how many nodes are in sync.
    island_epoch: Family<IslandLabel, Gauge>,
    island_primary: Family<IslandLabel, Gauge>,
    island_solo: Family<IslandLabel, Gauge>,
    island_insync: Family<IslandLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IslandLabel {
    island: String,
}

impl ClusterGauges {
    fn register(registry: &mut Registry) -> ClusterGauges {
        let mut gauge = |name: &str, help: &str| register(registry, name, help, Gauge::default());
        ClusterGauges {
            members: gauge(
                "cluster_members",
                "nodes that are members of the cluster (etcd)",
            ),
            nodes_live: gauge("cluster_nodes_live", "members whose lease is live"),
            map_revision: gauge(
                "cluster_map_revision",
                "etcd revision of the partition map in use (0: none)",
            ),
            partitions_owned: gauge("cluster_partitions_owned", "partitions this node owns"),
            lease_left_ms: gauge(
                "cluster_lease_left_ms",
                "milliseconds this node's lease is held for sure (counts down while etcd is away)",
            ),
            links: gauge(
                "cluster_links",
                "this node's outgoing links to other members",
            ),
            links_up: gauge("cluster_links_up", "of those, connected now"),
            controller: gauge("cluster_controller", "1 while this node is the controller"),
            island_epoch: register(
                registry,
                "cluster_island_epoch",
                "each island's epoch as etcd holds it: bumped by every change of who may \
                 acknowledge for it (solo, back in sync, a restarted primary)",
                Family::default(),
            ),
            island_primary: register(
                registry,
                "cluster_island_primary",
                "the node id of each island's primary",
                Family::default(),
            ),
            island_solo: register(
                registry,
                "cluster_island_solo",
                "1 while an island is solo (its primary acknowledges on its own disk), 0 in sync",
                Family::default(),
            ),
            island_insync: register(
                registry,
                "cluster_island_insync",
                "nodes in an island's in-sync set (2 in sync, 1 solo)",
                Family::default(),
            ),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

fn time_histogram() -> Histogram {
    Histogram::new(exponential_buckets(TIME_BUCKET_FIRST_S, 2.0, TIME_BUCKETS))
}

fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, SIZE_BUCKETS))
}

impl Metrics {
    /// The registry; `node`: in a cluster, this node's id, a label on
    /// every series.
    pub fn new(node: Option<u16>) -> Metrics {
        let labels = node.map(|id| (Cow::Borrowed("node"), Cow::Owned(id.to_string())));
        let mut registry = Registry::with_prefix_and_labels("isle", labels.into_iter());
        let links = LinkMetrics::register(&mut registry);
        let cluster = node.map(|_| ClusterGauges::register(&mut registry));
        let (counters, gauges) = register_counters(&mut registry);
        let (queues, queue_averages) = register_queues(&mut registry);
        let mut journal = BTreeMap::new();
        for (name, help) in JOURNAL_GAUGES {
            journal.insert(name, register(&mut registry, name, help, Family::default()));
        }
        let histograms = |registry: &mut Registry, name, help, make: fn() -> Histogram| {
            register(registry, name, help, Histograms::new_with_constructor(make))
        };
        let r = &mut registry;
        let commit_help = "seconds from taking a batch's records to their durability (group \
                           commit: the write and the fdatasync)";
        let commit_seconds = histograms(r, "commit_seconds", commit_help, time_histogram);
        let sync_help = "seconds each commit's fdatasync took";
        let sync_seconds = histograms(r, "sync_seconds", sync_help, time_histogram);
        let records_help = "records in each commit";
        let commit_records = histograms(r, "commit_records", records_help, size_histogram);
        let bytes_help = "bytes each commit wrote";
        let commit_bytes = histograms(r, "commit_bytes", bytes_help, size_histogram);
        let errors_help = "Error frames sent to phones, by kind (ErrorKind)";
        let errors_sent = register(r, "errors_sent", errors_help, Family::default());
        let bytes_in_help = "bytes read from phones' sockets (TLS records included)";
        let bytes_in = register(r, "bytes_in", bytes_in_help, Family::default());
        let bytes_out_help = "bytes written to phones' sockets (TLS records included)";
        let bytes_out = register(r, "bytes_out", bytes_out_help, Family::default());
        let tls_help = "TLS handshakes with phones that failed";
        let tls_handshake_failures =
            register(r, "tls_handshake_failures", tls_help, Family::default());
        let sms_help = "signup codes the SMS sender handled, by outcome: sent (to the webhook \
                        or the outbox file), failed (refused, or out of attempts), retried \
                        (attempts that failed and were made again)";
        let sms = register(r, "sms", sms_help, Family::default());
        let push_help = "pushes the push sender handled, by outcome: sent (the gateway took \
                         it), failed (refused, or out of attempts), retried (attempts that \
                         failed and were made again)";
        let push = register(r, "push", push_help, Family::default());
        let replayed_help = "records replayed from the journal at start (so far, while starting)";
        let replayed = register(r, "replayed_records", replayed_help, Family::default());
        let mut replication = BTreeMap::new();
        for (name, help) in REPLICATION_COUNTERS {
            replication.insert(*name, register(r, name, help, Family::default()));
        }
        let ready = register(
            r,
            "ready",
            "1 while /health/ready answers 200, else 0",
            Gauge::default(),
        );
        Metrics {
            registry,
            links,
            counters,
            gauges,
            queues,
            queue_averages,
            journal,
            commit_seconds,
            sync_seconds,
            commit_records,
            commit_bytes,
            errors_sent,
            bytes_in,
            bytes_out,
            tls_handshake_failures,
            sms,
            push,
            replayed,
            ready,
            cluster,
            replication,
        }
    }

    /// Takes in this node's part of the cluster.
    pub fn set_cluster(&self, status: &crate::cluster::coordinator::CoordinatorStatus) {
        let Some(gauges) = &self.cluster else {
            return;
        };
        let count = |n: usize| clamp_i64(n as u64);
        gauges.members.set(count(status.members.len()));
        gauges.nodes_live.set(count(status.nodes_live.len()));
        gauges.map_revision.set(status.map_revision.unwrap_or(0));
        gauges.partitions_owned.set(count(status.partitions_owned));
        gauges.lease_left_ms.set(clamp_i64(status.lease_left_ms));
        gauges.links.set(count(status.links));
        gauges.links_up.set(count(status.links_up));
        let controller = status.controller == Some(status.node_id);
        gauges.controller.set(i64::from(controller));
        for island in &status.islands {
            let label = IslandLabel {
                island: island.id.to_string(),
            };
            let epoch = clamp_i64(island.epoch);
            gauges.island_epoch.get_or_create(&label).set(epoch);
            let primary = i64::from(island.primary);
            gauges.island_primary.get_or_create(&label).set(primary);
            let solo = i64::from(island.mode == "solo");
            gauges.island_solo.get_or_create(&label).set(solo);
            let insync = count(island.insync.len());
            gauges.island_insync.get_or_create(&label).set(insync);
        }
    }

    /// Takes in a shard's report and its decaying averages.
    pub fn update(&self, report: &ShardReport, averages: &super::Averages) {
        let label = ShardLabel {
            shard: report.shard.to_string(),
        };
        for (name, value) in counter_values(&report.counters) {
            if let Some(family) = self.counters.get(name) {
                family
                    .get_or_create(&label)
                    .inner()
                    .store(value, Ordering::Relaxed);
            } else if let Some(family) = self.gauges.get(name) {
                family.get_or_create(&label).set(clamp_i64(value));
            }
        }
        for (name, value) in queue_values(&report.queues) {
            if let Some(family) = self.queues.get(&name) {
                family.get_or_create(&label).set(clamp_i64(value));
            }
        }
        for (name, windows) in &averages.queues {
            let Some(family) = self.queue_averages.get(name) else {
                continue;
            };
            for (average, window) in windows.iter().zip(WINDOWS_S) {
                let label = WindowLabel {
                    shard: label.shard.clone(),
                    window: format!("{window}s"),
                };
                family.get_or_create(&label).set(*average);
            }
        }
        self.update_journal(report, &label);
        for (kind, count) in &report.errors_sent {
            let kind_label = KindLabel {
                shard: label.shard.clone(),
                kind: kind.clone(),
            };
            let counter = self.errors_sent.get_or_create(&kind_label);
            counter.inner().store(*count, Ordering::Relaxed);
        }
        let bytes_in = self.bytes_in.get_or_create(&label);
        bytes_in.inner().store(report.bytes_in, Ordering::Relaxed);
        let bytes_out = self.bytes_out.get_or_create(&label);
        bytes_out.inner().store(report.bytes_out, Ordering::Relaxed);
        if let Some(remote) = &report.remote {
            self.links.update(report.shard, remote, &averages.links);
        }
        if let Some(stats) = &report.replication {
            self.update_replication(stats, &label);
        }
        let tls_failures = self.tls_handshake_failures.get_or_create(&label);
        let failures = report.tls_handshake_failures;
        tls_failures.inner().store(failures, Ordering::Relaxed);
    }

    fn update_replication(&self, stats: &TabletStats, label: &ShardLabel) {
        let value = serde_json::to_value(stats).expect("stats serialize");
        for (name, _) in REPLICATION_COUNTERS {
            let field = name.trim_start_matches("replication_");
            let Some(count) = value.get(field).and_then(|v| v.as_u64()) else {
                continue;
            };
            if let Some(family) = self.replication.get(name) {
                let counter = family.get_or_create(label);
                counter.inner().store(count, Ordering::Relaxed);
            }
        }
    }

    fn update_journal(&self, report: &ShardReport, label: &ShardLabel) {
        let journal = &report.journal;
        let values = [
            ("journal_failed", u64::from(journal.failed)),
            ("journal_disk_full", u64::from(journal.disk_full)),
            ("journal_unavailable", u64::from(journal.unavailable)),
            ("journal_records", journal.records),
            ("journal_bytes", journal.bytes),
            ("journal_batches", journal.batches),
            ("journal_syncs", journal.syncs),
            (
                "checkpoint_last_ms",
                journal.last_checkpoint_ms.unwrap_or(0),
            ),
        ];
        for (name, value) in values {
            self.journal[name]
                .get_or_create(label)
                .set(clamp_i64(value));
        }
        let samples = &report.commits;
        let observe = |family: &Histograms, values: &[u32], scale: f64| {
            let histogram = family.get_or_create(label);
            for &value in values {
                histogram.observe(f64::from(value) * scale);
            }
        };
        observe(&self.commit_seconds, &samples.commit_us, 1e-6);
        observe(&self.sync_seconds, &samples.sync_us, 1e-6);
        observe(&self.commit_records, &samples.records, 1.0);
        observe(&self.commit_bytes, &samples.bytes, 1.0);
    }

    /// The SMS and push senders' counts now.
    pub fn set_gateways(&self, sms: GatewayCounts, push: GatewayCounts) {
        for (family, counts) in [(&self.sms, sms), (&self.push, push)] {
            for (outcome, value) in [
                ("sent", counts.sent),
                ("failed", counts.failed),
                ("retried", counts.retried),
            ] {
                let label = OutcomeLabel {
                    outcome: outcome.to_owned(),
                };
                family
                    .get_or_create(&label)
                    .inner()
                    .store(value, Ordering::Relaxed);
            }
        }
    }

    /// Records each shard replayed, by shard.
    pub fn set_replayed(&self, replayed: &[u64]) {
        for (shard, records) in replayed.iter().enumerate() {
            let label = ShardLabel {
                shard: shard.to_string(),
            };
            self.replayed.get_or_create(&label).set(clamp_i64(*records));
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The registry as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Registers `metric` as `name` and returns it (a handle to the same
/// series).
fn register<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// `isle_replication_*_total`: `TabletStats` fields, prefixed.
const REPLICATION_COUNTERS: &[(&str, &str)] = &[
    (
        "replication_shipped_batches",
        "batches of this shard's log put on the replication connection to its island's \
         secondary (a batch shipped again counts again)",
    ),
    (
        "replication_shipped_bytes",
        "bytes of the batches shipped to the island's secondary",
    ),
    (
        "replication_appended_batches",
        "batches this shard appended to the standbys it keeps as another island's secondary",
    ),
    (
        "replication_appended_bytes",
        "bytes of the batches appended to standbys",
    ),
    (
        "replication_dropped",
        "replication messages dropped from a full outbox (shipped again from the last \
         acknowledgement) and island transactions dropped from a full queue (asked again)",
    ),
];

type CounterFamilies = BTreeMap<&'static str, Family<ShardLabel, Counter>>;
type GaugeFamilies = BTreeMap<&'static str, Family<ShardLabel, Gauge>>;

/// One family per `ShardCounters` field: a gauge for the levels, a
/// counter for the rest.
fn register_counters(registry: &mut Registry) -> (CounterFamilies, GaugeFamilies) {
    let (mut counters, mut gauges) = (BTreeMap::new(), BTreeMap::new());
    for name in counter_names() {
        let help = ShardCounters::help(name).unwrap_or(name);
        if GAUGE_FIELDS.contains(&name) {
            gauges.insert(name, register(registry, name, help, Family::default()));
        } else {
            counters.insert(name, register(registry, name, help, Family::default()));
        }
    }
    (counters, gauges)
}

type QueueFamilies = BTreeMap<String, Family<ShardLabel, Gauge>>;
type AverageFamilies =
    BTreeMap<String, Family<WindowLabel, Gauge<f64, std::sync::atomic::AtomicU64>>>;

/// Two families per queue: its length now, and its decaying averages.
fn register_queues(registry: &mut Registry) -> (QueueFamilies, AverageFamilies) {
    let (mut queues, mut averages) = (BTreeMap::new(), BTreeMap::new());
    for name in queue_names() {
        let what = queue_help(&name).unwrap_or(&name);
        let help = format!("{what}, now");
        let family = register(registry, &format!("queue_{name}"), &help, Family::default());
        queues.insert(name.clone(), family);
        let help = format!("{what}, averaged over the last `window` (decaying)");
        let family = register(
            registry,
            &format!("queue_{name}_avg"),
            &help,
            Family::default(),
        );
        averages.insert(name, family);
    }
    (queues, averages)
}

/// What each queue holds, with its unit: the start of its HELP lines.
fn queue_help(name: &str) -> Option<&'static str> {
    Some(match name {
        "outbox_bytes" => "bytes encoded for phones and not yet taken by their sockets' writers",
        "mailbox_entries" => "entries (messages, group posts, receipts) in this shard's mailboxes",
        "mailbox_bytes" => "body bytes of the messages and posts in this shard's mailboxes",
        "write_back_bytes" => "bytes the write-back cache holds, against sync_delay_bytes_max",
        "held_replies" => {
            "replies to phones and shards held until the commit holding their records is durable"
        }
        "peer_staged_messages" => {
            "messages staged for the other shards of this node, not yet in their queues"
        }
        "peer_staged_messages_max" => "messages staged for the one other shard with the most",
        "node_staged_messages" => {
            "messages staged for other nodes of the cluster, not yet on their links"
        }
        "node_staged_messages_max" => "messages staged for the one other node with the most",
        "replica_lag_batches" => {
            "batches of this shard's log its island's secondary does not hold yet (replication)"
        }
        "replica_lag_bytes" => {
            "bytes of this shard's log its island's secondary does not hold yet (of batches \
             written since the shard started; replication)"
        }
        _ => return None,
    })
}

/// Journal gauges, by name, with their help.
const JOURNAL_GAUGES: [(&str, &str); 8] = [
    (
        "journal_failed",
        "1 once the journal failed: nothing durable is accepted",
    ),
    ("journal_disk_full", "1 while the journal's disk is full"),
    (
        "journal_unavailable",
        "1 while the journal is short of a resource",
    ),
    ("journal_records", "records committed since start"),
    ("journal_bytes", "bytes written to the journal since start"),
    (
        "journal_batches",
        "batches written since start (a commit larger than a segment's room is two)",
    ),
    (
        "journal_syncs",
        "fdatasync calls on the journal since start",
    ),
    (
        "checkpoint_last_ms",
        "milliseconds the last checkpoint took to write (0: none yet)",
    ),
];

/// Every `ShardCounters` field, by name.
fn counter_names() -> Vec<&'static str> {
    counter_values(&ShardCounters::default())
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// `ShardCounters` as (field, value) pairs, through its `Serialize`.
pub fn counter_values(counters: &ShardCounters) -> Vec<(&'static str, u64)> {
    let value = serde_json::to_value(counters).expect("counters serialize");
    let object = value.as_object().expect("a struct serializes as an object");
    object
        .iter()
        .map(|(name, value)| (intern(name), value.as_u64().unwrap_or(0)))
        .collect()
}

/// Every queue, by name.
fn queue_names() -> Vec<String> {
    queue_values(&Queues::default())
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// `Queues` as (name, value) pairs, through its `Serialize`.
pub fn queue_values(queues: &Queues) -> Vec<(String, u64)> {
    let value = serde_json::to_value(queues).expect("queues serialize");
    let object = value.as_object().expect("a struct serializes as an object");
    object
        .iter()
        .map(|(name, value)| (name.clone(), value.as_u64().unwrap_or(0)))
        .collect()
}

/// A counter's name for the registry, which keeps `&'static str`s: the set
/// of names is fixed (the fields of `ShardCounters`), so each is leaked
/// once.
fn intern(name: &str) -> &'static str {
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<Vec<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .expect("not poisoned");
    if let Some(known) = names.iter().find(|known| **known == name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(leaked);
    leaked
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::snapshot::{CommitSamples, JournalState};

    #[test]
    fn a_report_shows_up_as_labelled_series() {
        let metrics = Metrics::new(None);
        let mut report = ShardReport {
            shard: 3,
            at: std::time::Instant::now(),
            interval_ms: 1_000,
            counters: ShardCounters::default(),
            queues: Queues::default(),
            commits: CommitSamples::default(),
            journal: JournalState::default(),
            errors_sent: vec![("RateLimited".into(), 5)],
            bytes_in: 10,
            bytes_out: 20,
            remote: None,
            tls_handshake_failures: 2,
            replication: None,
        };
        report.counters.messages_stored = 42;
        report.counters.connections = 7;
        report.queues.shard.outbox_bytes = 1_000;
        report.commits.push(300, 120, 10, 4_096);
        let averages = super::super::Averages {
            queues: BTreeMap::from([("outbox_bytes".to_owned(), [1.0, 2.0, 3.0])]),
            links: BTreeMap::new(),
        };
        metrics.update(&report, &averages);
        let text = metrics.encode();
        for line in [
            "isle_messages_stored_total{shard=\"3\"} 42",
            "isle_connections{shard=\"3\"} 7",
            "isle_queue_outbox_bytes{shard=\"3\"} 1000",
            "isle_queue_outbox_bytes_avg{shard=\"3\",window=\"10s\"} 2.0",
            "isle_commit_seconds_count{shard=\"3\"} 1",
            "isle_errors_sent_total{shard=\"3\",kind=\"RateLimited\"} 5",
            "isle_bytes_out_total{shard=\"3\"} 20",
            "isle_tls_handshake_failures_total{shard=\"3\"} 2",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    /// In a cluster every series carries the node, and each link its
    /// peer; the series of a link that is gone are removed.
    #[test]
    fn a_cluster_node_labels_its_series_and_shows_its_links() {
        use server::remote::{InboundStats, LinkStats, RemoteStats};
        let metrics = Metrics::new(Some(2));
        let link = |node| LinkStats {
            node,
            connected: true,
            queue_messages: 12,
            retransmitted: 3,
            ..LinkStats::default()
        };
        let mut report = ShardReport {
            shard: 1,
            at: std::time::Instant::now(),
            interval_ms: 1_000,
            counters: ShardCounters::default(),
            queues: Queues::default(),
            commits: CommitSamples::default(),
            journal: JournalState::default(),
            errors_sent: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            tls_handshake_failures: 0,
            replication: Some(TabletStats {
                shipped_batches: 5,
                appended_bytes: 700,
                ..TabletStats::default()
            }),
            remote: Some(RemoteStats {
                links: vec![link(1), link(3)],
                inbound: vec![InboundStats {
                    node: 3,
                    shard: 0,
                    received: 9,
                    ..InboundStats::default()
                }],
                handshakes_refused: 4,
                ..RemoteStats::default()
            }),
        };
        let averages = super::super::Averages {
            queues: BTreeMap::new(),
            links: BTreeMap::from([(1, [12.0, 6.5, 0.25]), (3, [0.0; 3])]),
        };
        metrics.update(&report, &averages);
        let text = metrics.encode();
        for line in [
            "isle_link_connected{node=\"2\",shard=\"1\",peer_node=\"3\"} 1",
            "isle_link_queue_messages_avg{node=\"2\",shard=\"1\",peer_node=\"1\",window=\"10s\"} 6.5",
            "isle_link_queue_messages_avg{node=\"2\",shard=\"1\",peer_node=\"1\",window=\"100s\"} 0.25",
            "isle_link_queue_messages{node=\"2\",shard=\"1\",peer_node=\"1\"} 12",
            "isle_link_retransmitted_total{node=\"2\",shard=\"1\",peer_node=\"3\"} 3",
            "isle_link_in_received_total{node=\"2\",shard=\"1\",peer_node=\"3\",peer_shard=\"0\"} 9",
            "isle_remote_handshakes_refused_total{node=\"2\",shard=\"1\"} 4",
            "isle_connections{node=\"2\",shard=\"1\"} 0",
            "isle_replication_shipped_batches_total{node=\"2\",shard=\"1\"} 5",
            "isle_replication_appended_bytes_total{node=\"2\",shard=\"1\"} 700",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        // Node 3 left the cluster: its link's series go.
        report.remote.as_mut().unwrap().links.pop();
        metrics.update(&report, &averages);
        let text = metrics.encode();
        assert!(!text.contains("peer_node=\"3\"} "), "{text}");
        assert!(text.contains("isle_link_connected{node=\"2\",shard=\"1\",peer_node=\"1\"} 1"));
    }

    /// HELP lines used to say only "shard counter messages_written (see
    /// ShardCounters)". Every family, a cluster node's included, says
    /// what it counts now: its help is a sentence, not its name.
    #[test]
    fn every_family_says_what_it_counts() {
        let text = Metrics::new(Some(1)).encode();
        let mut families = 0;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("# HELP isle_") else {
                continue;
            };
            let (name, help) = rest.split_once(' ').unwrap();
            let help = help.trim_end_matches('.');
            let bare = name.strip_suffix("_total").unwrap_or(name);
            assert!(
                help != bare && help.contains(' ') && help.len() > 20,
                "{name}: {help:?}"
            );
            assert!(!help.contains("(see "), "{name}: {help:?}");
            families += 1;
        }
        assert!(families >= 100, "{families} families");
    }

    /// Every series the shipped Grafana dashboard queries exists, so a
    /// renamed metric cannot leave a panel empty.
    #[test]
    fn the_dashboard_queries_only_series_that_exist() {
        let dashboard = include_str!("../../../packaging/grafana/isle.json");
        let dashboard: serde_json::Value = serde_json::from_str(dashboard).unwrap();
        let text = Metrics::new(None).encode();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        let panels = dashboard["panels"].as_array().unwrap();
        let mut queried = 0;
        for target in panels.iter().flat_map(|p| p["targets"].as_array().unwrap()) {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("isle_"))
            {
                let family = ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                assert!(
                    families.contains(&family),
                    "{name} in {expr:?} is not exported"
                );
                queried += 1;
            }
        }
        assert!(queried >= 20, "{queried}");
    }
}
