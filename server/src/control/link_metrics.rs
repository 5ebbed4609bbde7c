//! The Prometheus side of the links between nodes: what each shard's
//! [`RemoteStats`] says, by shard and peer node (and the peer's shard for
//! what arrives), under `isle_link_*`, `isle_link_in_*` and
//! `isle_remote_*`; each link's queue depth also as decaying averages
//! (`isle_link_queue_messages_avg{window=...}`).
//!
//! The fields come from the stats' `Serialize`, as the shard counters do,
//! so a field added to `LinkStats` is exported without a change here; the
//! lists below only say which fields are counters. The series of a node
//! that left the cluster are removed at the next report, so a dashboard
//! does not show a dead link as connected.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;

use server::remote::RemoteStats;

use super::decay::WINDOWS_S;

/// `LinkStats` fields that only grow; the others are levels.
const LINK_COUNTERS: [&str; 7] = [
    "pushed",
    "acked",
    "retransmitted",
    "resets",
    "connects",
    "dial_failures",
    "frames_refused",
];
/// `InboundStats` fields that only grow.
const INBOUND_COUNTERS: [&str; 1] = ["received"];
/// Fields that name a series instead of being one.
const NAMING_FIELDS: [&str; 2] = ["node", "shard"];

/// An outgoing link: this node's shard `shard` to node `peer_node`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct LinkLabel {
    shard: String,
    peer_node: String,
}

/// What arrives from shard `peer_shard` of node `peer_node` at `shard`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct InboundLabel {
    shard: String,
    peer_node: String,
    peer_shard: String,
}

/// A link's series over one averaging window (`1s`, `10s`, `100s`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct LinkWindowLabel {
    shard: String,
    peer_node: String,
    window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardOnly {
    shard: String,
}

/// Counter and gauge families of one kind of series, by field name.
struct Families<L: EncodeLabelSet + Clone + std::hash::Hash + Eq> {
    counters: BTreeMap<String, Family<L, Counter>>,
    gauges: BTreeMap<String, Family<L, Gauge>>,
}

impl<L> Families<L>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    /// Registers one family per numeric field of `example` (its
    /// `Serialize`), named `prefix_field`.
    fn register(
        registry: &mut Registry,
        prefix: &str,
        example: &impl Serialize,
        counters: &[&str],
    ) -> Families<L> {
        let mut families = Families {
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
        };
        for field in field_names(example) {
            let name = format!("{prefix}_{field}");
            let help = field_help(prefix, &field).unwrap_or(&name);
            if counters.contains(&field.as_str()) {
                let family = Family::<L, Counter>::default();
                registry.register(&name, help, family.clone());
                families.counters.insert(field, family);
            } else {
                let family = Family::<L, Gauge>::default();
                registry.register(&name, help, family.clone());
                families.gauges.insert(field, family);
            }
        }
        families
    }

    fn set(&self, label: &L, stats: &impl Serialize) {
        for (field, value) in fields(stats) {
            if let Some(family) = self.counters.get(&field) {
                let counter = family.get_or_create(label);
                counter.inner().store(value, Ordering::Relaxed);
            } else if let Some(family) = self.gauges.get(&field) {
                let value = i64::try_from(value).unwrap_or(i64::MAX);
                family.get_or_create(label).set(value);
            }
        }
    }

    fn remove(&self, label: &L) {
        for family in self.counters.values() {
            family.remove(label);
        }
        for family in self.gauges.values() {
            family.remove(label);
        }
    }
}

/// The link and inbound series one shard reported.
type Reported = (BTreeSet<LinkLabel>, BTreeSet<InboundLabel>);

/// Every link metric family, and the series each shard reported last.
pub(super) struct LinkMetrics {
    links: Families<LinkLabel>,
    /// Each link's queue depth averaged over each window.
    depth_averages: Family<LinkWindowLabel, Gauge<f64, AtomicU64>>,
    inbound: Families<InboundLabel>,
    totals: Families<ShardOnly>,
    /// By shard: the link and inbound series of its last report.
    reported: Mutex<BTreeMap<u16, Reported>>,
}

impl LinkMetrics {
    pub(super) fn register(registry: &mut Registry) -> LinkMetrics {
        let link = server::remote::LinkStats::default();
        let inbound = server::remote::InboundStats::default();
        let totals = totals(&RemoteStats::default());
        let depth_averages = Family::default();
        registry.register(
            "link_queue_messages_avg",
            "messages on the link's queue, averaged over the last `window` (decaying)",
            depth_averages.clone(),
        );
        LinkMetrics {
            links: Families::register(registry, "link", &link, &LINK_COUNTERS),
            depth_averages,
            inbound: Families::register(registry, "link_in", &inbound, &INBOUND_COUNTERS),
            totals: Families::register(registry, "remote", &totals, &TOTALS_COUNTERS),
            reported: Mutex::default(),
        }
    }

    /// Takes in shard `shard`'s link stats and its links' depth averages
    /// (by peer node, over `WINDOWS_S`).
    pub(super) fn update(
        &self,
        shard: u16,
        stats: &RemoteStats,
        depth_averages: &BTreeMap<u16, [f64; 3]>,
    ) {
        let shard_name = shard.to_string();
        let mut links = BTreeSet::new();
        for link in &stats.links {
            let label = LinkLabel {
                shard: shard_name.clone(),
                peer_node: link.node.to_string(),
            };
            self.links.set(&label, link);
            let windows = depth_averages.get(&link.node).copied().unwrap_or_default();
            for (average, window) in windows.into_iter().zip(WINDOWS_S) {
                let label = window_label(&label, window);
                self.depth_averages.get_or_create(&label).set(average);
            }
            links.insert(label);
        }
        let mut inbound = BTreeSet::new();
        for session in &stats.inbound {
            let label = InboundLabel {
                shard: shard_name.clone(),
                peer_node: session.node.to_string(),
                peer_shard: session.shard.to_string(),
            };
            self.inbound.set(&label, session);
            inbound.insert(label);
        }
        let label = ShardOnly { shard: shard_name };
        self.totals.set(&label, &totals(stats));
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let (old_links, old_inbound) = reported.insert(shard, (links, inbound)).unwrap_or_default();
        let (links, inbound) = &reported[&shard];
        for gone in old_links.difference(links) {
            self.links.remove(gone);
            for window in WINDOWS_S {
                self.depth_averages.remove(&window_label(gone, window));
            }
        }
        for gone in old_inbound.difference(inbound) {
            self.inbound.remove(gone);
        }
    }
}

fn window_label(link: &LinkLabel, window_s: f64) -> LinkWindowLabel {
    LinkWindowLabel {
        shard: link.shard.clone(),
        peer_node: link.peer_node.clone(),
        window: format!("{window_s}s"),
    }
}

/// `RemoteStats`' own counts, without its lists.
#[derive(Serialize)]
struct Totals {
    handshakes_refused: u64,
    hellos_unproven: u64,
    hellos_not_approved: u64,
    handshakes_evicted: u64,
    frames_refused: u64,
    handovers: u64,
    handovers_refused: u64,
    sender_resets: u64,
    log_lines_dropped: u64,
}

/// Every field of [`Totals`] only grows.
const TOTALS_COUNTERS: [&str; 9] = [
    "handshakes_refused",
    "hellos_unproven",
    "hellos_not_approved",
    "handshakes_evicted",
    "frames_refused",
    "handovers",
    "handovers_refused",
    "sender_resets",
    "log_lines_dropped",
];

fn totals(stats: &RemoteStats) -> Totals {
    Totals {
        handshakes_refused: stats.handshakes_refused,
        hellos_unproven: stats.hellos_unproven,
        hellos_not_approved: stats.hellos_not_approved,
        handshakes_evicted: stats.handshakes_evicted,
        frames_refused: stats.frames_refused,
        handovers: stats.handovers,
        handovers_refused: stats.handovers_refused,
        sender_resets: stats.sender_resets,
        log_lines_dropped: stats.log_lines_dropped,
    }
}

/// What field `field` of the stats behind `prefix` (`link`, `link_in`,
/// `remote`) means, with its unit, for its HELP line. Every field has one
/// (tested).
fn field_help(prefix: &str, field: &str) -> Option<&'static str> {
    Some(match (prefix, field) {
        ("link", "connected") => "1 while this shard's link to peer_node is connected",
        ("link", "queue_messages") => "messages on the link's queue, all unacknowledged",
        ("link", "queue_bytes") => "payload bytes on the link's queue",
        ("link", "in_flight") => "messages written on the current connection, not acknowledged",
        ("link", "pushed") => "messages put on the link to peer_node",
        ("link", "acked") => "messages the receiver acknowledged",
        ("link", "retransmitted") => "messages written again after a reconnect",
        ("link", "resets") => "times the session started over for a new receiver incarnation",
        ("link", "connects") => "connections that completed their handshake",
        ("link", "dial_failures") => "dials to the peer node that failed",
        ("link", "frames_refused") => "connections closed because the receiver broke the protocol",
        ("link", "silent_ms") => "milliseconds since anything arrived from the receiver",
        ("link_in", "incarnation") => "the sending node's incarnation this session belongs to",
        ("link_in", "connected") => "1 while the sender from peer_node/peer_shard is connected",
        ("link_in", "received") => "messages received in sequence from that sender",
        ("link_in", "unreleased_messages") => {
            "messages received and not yet released (stored or handed on)"
        }
        ("link_in", "unreleased_bytes") => "payload bytes received and not yet released",
        ("link_in", "silent_ms") => "milliseconds since anything arrived from that sender",
        ("remote", "handshakes_refused") => {
            "incoming hellos refused and handshakes that failed on the peer port"
        }
        ("remote", "hellos_unproven") => {
            "incoming hellos without a valid proof of the cluster's secret"
        }
        ("remote", "hellos_not_approved") => {
            "incoming hellos from a node etcd does not list, or not at that incarnation"
        }
        ("remote", "handshakes_evicted") => {
            "peer connections that had not said hello, shut down to make room for newer ones"
        }
        ("remote", "frames_refused") => {
            "incoming peer connections closed for a bad frame or a broken rule"
        }
        ("remote", "handovers") => {
            "incoming peer connections passed to the shard their hello named"
        }
        ("remote", "handovers_refused") => {
            "incoming peer connections refused because that shard's inbox was full"
        }
        ("remote", "sender_resets") => {
            "senders whose new incarnation replaced an old one's receive state"
        }
        ("remote", "log_lines_dropped") => "log lines about peers left out by the per-second limit",
        _ => return None,
    })
}

/// The fields of `value` (a struct) through its `Serialize`, but those
/// that name a series.
fn object(value: &impl Serialize) -> serde_json::Map<String, serde_json::Value> {
    let value = serde_json::to_value(value).expect("stats serialize");
    let serde_json::Value::Object(mut object) = value else {
        unreachable!("a struct serializes as an object")
    };
    object.retain(|name, _| !NAMING_FIELDS.contains(&name.as_str()));
    object
}

/// Every field's name: the families to register.
fn field_names(example: &impl Serialize) -> Vec<String> {
    object(example).into_iter().map(|(name, _)| name).collect()
}

/// The numeric fields of `value`: booleans as 0 and 1; an absent option
/// (or a negative number) left out.
fn fields(value: &impl Serialize) -> Vec<(String, u64)> {
    object(value)
        .into_iter()
        .filter_map(|(name, value)| {
            let number = match value {
                serde_json::Value::Bool(flag) => Some(u64::from(flag)),
                _ => value.as_u64(),
            };
            number.map(|n| (name, n))
        })
        .collect()
}
