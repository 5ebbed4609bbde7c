//! `isle ctl status` as text: readiness, one row per shard (connections,
//! commit time, the journal), then every queue length a shard reports as
//! `now/1s/10s/100s` (the current value and its decaying averages), one
//! row per queue and one column per shard, shards in groups that keep a
//! line within `LINE_CHARS_MAX`; in a cluster, one row per outgoing link
//! (shard, peer node) with its queue depth the same way.

use std::collections::BTreeMap;

use crate::{
    cluster::coordinator::CoordinatorStatus,
    control::{ShardStatus, Status},
};

/// The widest line the table writes, in characters: readable on a
/// terminal of 100 columns or more.
const LINE_CHARS_MAX: usize = 100;
/// Queue labels' width.
const LABEL_CHARS: usize = 20;
/// A queue cell's width: four compact numbers (`compact`, 4 characters at
/// most) and three slashes, and a space before the next.
const CELL_CHARS: usize = 4 * 4 + 3 + 1;
/// Shards side by side in the queue table.
const SHARDS_PER_LINE: usize = (LINE_CHARS_MAX - LABEL_CHARS) / CELL_CHARS;
const _: () = assert!(SHARDS_PER_LINE >= 1);

/// The queues in the order an operator reads them (where a message
/// waits, from the socket inwards), with their labels. A queue the server
/// reports that is not named here is shown under its own name, after.
const QUEUES: &[(&str, &str)] = &[
    ("outbox_bytes", "outbox bytes"),
    ("held_replies", "held for a commit"),
    ("mailbox_entries", "mailbox entries"),
    ("mailbox_bytes", "mailbox bytes"),
    ("write_back_bytes", "write-back bytes"),
    ("peer_staged_messages", "staged for shards"),
    ("peer_staged_messages_max", "  most for one"),
    ("node_staged_messages", "staged for nodes"),
    ("node_staged_messages_max", "  most for one"),
    ("replica_lag_batches", "replica lag batches"),
];
/// Queues of a cluster's links: shown only for a node of one.
const CLUSTER_QUEUES: &[&str] = &[
    "node_staged_messages",
    "node_staged_messages_max",
    "replica_lag_batches",
];

/// The status as text: readiness, the shards' rows, the queue table.
pub fn table(status: &Status) -> String {
    let mut out = match &status.reason {
        None => "ready\n".to_owned(),
        Some(reason) => format!("not ready: {reason}\n"),
    };
    // While starting, shards report only once they replayed: show how far
    // each has come.
    if status.shards.len() < status.replayed.len() {
        let progress: Vec<String> = status
            .replayed
            .iter()
            .enumerate()
            .map(|(shard, records)| format!("shard {shard} {}", compact(*records as f64)))
            .collect();
        out += &format!("records replayed so far: {}\n", progress.join(", "));
    }
    if let Some(cluster) = &status.cluster {
        out += &cluster_lines(cluster);
        out += &phones_sent_away(status);
    }
    out += &format!(
        "{:>5} {:>7} {:>7} {:>17} {:>12} {}\n",
        "shard", "conns", "logged", "commit ms p50/99", "sync ms p50", "journal"
    );
    for shard in &status.shards {
        out += &shard_row(shard);
    }
    out += &queue_table(status);
    out += &link_table(status);
    if status.reports_dropped > 0 {
        out += &format!("({} shard reports dropped)\n", status.reports_dropped);
    }
    out
}

/// A cluster node's part: who it is, the membership, the map, its lease
/// and links, and why its last etcd session ended while it is not back.
fn cluster_lines(cluster: &CoordinatorStatus) -> String {
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    let mut out = format!(
        "node {} incarnation {}: {} members, {} live {:?}, controller {}\n",
        cluster.node_id,
        or_dash(cluster.incarnation.map(|i| format!("{i:x}"))),
        cluster.members.len(),
        cluster.nodes_live.len(),
        cluster.nodes_live,
        or_dash(cluster.controller.map(|c| c.to_string())),
    );
    out += &format!(
        "partitions owned {} (map revision {}), lease {:.1} s left, links {}/{} up, etcd {}\n",
        cluster.partitions_owned,
        or_dash(cluster.map_revision.map(|r| r.to_string())),
        cluster.lease_left_ms as f64 / 1e3,
        cluster.links_up,
        cluster.links,
        cluster.endpoint.as_deref().unwrap_or("not connected"),
    );
    if cluster.partitions_owned == 0 && cluster.map_revision.is_some() {
        out += "owns 0 partitions: it serves no account (partitions are assigned only at \
                the cluster's bootstrap; moving them to a node that joins later is not done yet)\n";
    }
    if cluster.replication == "off" {
        out += "replication off: each node's partitions are on its disk alone\n";
    }
    for island in &cluster.islands {
        out += &format!(
            "island {}: epoch {}, primary {}, secondary {}, in sync {:?}, {}\n",
            island.id, island.epoch, island.primary, island.secondary, island.insync, island.mode
        );
    }
    if let Some(error) = &cluster.last_error {
        out += &format!("last etcd error: {error}\n");
    }
    out
}

/// A cluster node's count of phones it sent to other nodes (`Redirect`)
/// or told to come back later (`TryLater`), all shards, since start.
fn phones_sent_away(status: &Status) -> String {
    let total = |name: &str| -> u64 {
        let counters = status.shards.iter().map(|s| &s.counters);
        counters.filter_map(|c| c.get(name)).sum()
    };
    format!(
        "phones redirected {}, told to try later {}\n",
        total("redirects"),
        total("try_laters")
    )
}

/// One row per outgoing link: shard, peer node, connected, its queue
/// depth as `now/1s/10s/100s`, redials since start (connections after
/// the first, and failed dials), and how long the peer has been silent.
fn link_table(status: &Status) -> String {
    let links: Vec<_> = status
        .shards
        .iter()
        .flat_map(|shard| shard.links.iter().map(move |link| (shard.shard, link)))
        .collect();
    if links.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n{:<12} {:<4} {:<CELL_CHARS$} {:>8} {:>9}\n",
        "link", "up", "queue now/1s/10s/100s", "redials", "silent s"
    );
    for (shard, link) in links {
        let [s1, s10, s100] = link.queue_averages;
        let depth = [link.queue_messages as f64, s1, s10, s100].map(compact);
        let redials = link.connects.saturating_sub(1) + link.dial_failures;
        let silent = link
            .silent_ms
            .map_or("-".to_owned(), |ms| format!("{:.1}", ms as f64 / 1e3));
        let line = format!(
            "{:<12} {:<4} {:<CELL_CHARS$} {redials:>8} {silent:>9}",
            format!("shard {shard} -> {}", link.node),
            if link.connected { "yes" } else { "no" },
            depth.join("/"),
        );
        out += line.trim_end();
        out += "\n";
    }
    out
}

fn shard_row(shard: &ShardStatus) -> String {
    let counter = |name: &str| shard.counters.get(name).copied().unwrap_or(0);
    let ms =
        |us: Option<u32>| us.map_or("-".to_owned(), |us| format!("{:.2}", f64::from(us) / 1e3));
    let commit = format!("{}/{}", ms(shard.commit_p50_us), ms(shard.commit_p99_us));
    let journal = match (
        shard.journal.failed,
        shard.journal.disk_full,
        shard.journal.unavailable,
    ) {
        (true, _, _) => "FAILED",
        (_, true, _) => "disk full",
        (_, _, true) => "short of resources",
        _ => "ok",
    };
    format!(
        "{:>5} {:>7} {:>7} {:>17} {:>12} {}\n",
        shard.shard,
        counter("connections"),
        counter("sessions"),
        commit,
        ms(shard.sync_p50_us),
        journal
    )
}

/// One row per queue, one `now/1s/10s/100s` cell per shard; shards in
/// groups of `SHARDS_PER_LINE`, each group under a header of its own.
fn queue_table(status: &Status) -> String {
    let names = queue_names(status);
    let mut out = String::new();
    for group in status.shards.chunks(SHARDS_PER_LINE) {
        out += &format!("\n{:<LABEL_CHARS$}", "now/1s/10s/100s");
        for shard in group {
            out += &format!("{:<CELL_CHARS$}", format!("shard {}", shard.shard));
        }
        out = out.trim_end().to_owned() + "\n";
        for (name, label) in &names {
            let mut line = format!("{label:<LABEL_CHARS$}");
            for shard in group {
                line += &format!("{:<CELL_CHARS$}", cell(shard, name));
            }
            out += line.trim_end();
            out += "\n";
        }
    }
    out
}

/// Every queue the shards report, with its label, in `QUEUES`' order and
/// then by name; a cluster's link queues only for a node of one.
fn queue_names(status: &Status) -> Vec<(String, String)> {
    let reported: BTreeMap<&str, ()> = status
        .shards
        .iter()
        .flat_map(|shard| shard.queues.keys().map(|name| (name.as_str(), ())))
        .collect();
    let shown = |name: &str| status.cluster.is_some() || !CLUSTER_QUEUES.contains(&name);
    let known = QUEUES
        .iter()
        .filter(|(name, _)| reported.contains_key(name) && shown(name))
        .map(|(name, label)| (name.to_string(), label.to_string()));
    let unknown = reported
        .keys()
        .filter(|name| !QUEUES.iter().any(|(known, _)| known == *name))
        .map(|name| (name.to_string(), name.replace('_', " ")));
    known.chain(unknown).collect()
}

/// A queue's `now/1s/10s/100s` on one shard.
fn cell(shard: &ShardStatus, name: &str) -> String {
    let now = shard.queues.get(name).copied().unwrap_or(0);
    let [s1, s10, s100] = shard.queue_averages.get(name).copied().unwrap_or_default();
    [now as f64, s1, s10, s100].map(compact).join("/")
}

/// A count in at most four characters: `0`, `0.4`, `12`, `999`, `1.2k`,
/// `12k`, `1.2M`, ... (an average under 10 keeps a decimal; a value
/// rounds to the nearest shown).
fn compact(value: f64) -> String {
    const UNITS: [&str; 6] = ["", "k", "M", "G", "T", "P"];
    if value < 9.95 {
        let text = format!("{value:.1}");
        return text.strip_suffix(".0").map_or(text.clone(), str::to_owned);
    }
    let mut scaled = value;
    for unit in UNITS {
        if scaled < 9.95 {
            return format!("{scaled:.1}{unit}");
        }
        if scaled < 999.5 {
            return format!("{scaled:.0}{unit}");
        }
        scaled /= 1000.0;
    }
    "huge".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_numbers_fit_four_characters() {
        let cases = [
            (0.0, "0"),
            (0.04, "0"),
            (0.4, "0.4"),
            (9.94, "9.9"),
            (9.96, "10"),
            (12.0, "12"),
            (999.4, "999"),
            (999.6, "1.0k"),
            (1_234.0, "1.2k"),
            (12_345.0, "12k"),
            (999_499.0, "999k"),
            (1_500_000.0, "1.5M"),
            (64.0 * 1024.0 * 1024.0, "67M"),
        ];
        for (value, text) in cases {
            assert_eq!(compact(value), text, "{value}");
        }
        for exponent in 0..20 {
            let value = 1.37 * 10f64.powi(exponent);
            assert!(compact(value).len() <= 4, "{value}: {}", compact(value));
        }
    }
}
