//! What a shard tells the control thread, once a second: its counters, its
//! queue lengths and what its commits took since the last report. Built on
//! the shard's own thread from values it owns; sent through a bounded
//! channel that the shard never waits on.

use std::time::Instant;

use serde::Serialize;
use shard::{QueueLengths, ShardCounters};

/// How often a shard reports, in ms.
pub const REPORT_INTERVAL_MS: u64 = 1_000;

/// Commit and sync times kept per report, at most: past it a report keeps
/// the count and the sum, not each time (a shard commits a few hundred
/// times a second at most under load; this bounds the report's size).
pub const COMMIT_SAMPLES_MAX: usize = 4_096;

/// One shard's report.
#[derive(Debug, Clone)]
pub struct ShardReport {
    pub shard: u16,
    /// When it was taken.
    pub at: Instant,
    /// How long until the next, at most (in ms): reports go out in the
    /// shard's tick, so with a tick longer than `REPORT_INTERVAL_MS` they
    /// come once a tick.
    pub interval_ms: u64,
    pub counters: ShardCounters,
    pub queues: Queues,
    pub commits: CommitSamples,
    pub journal: JournalState,
    /// `Error` frames sent to phones since start, by kind (`ErrorKind`'s
    /// name).
    pub errors_sent: Vec<(String, u64)>,
    /// Bytes read from and written to phones' sockets since start.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// In a cluster, once the links started: what they report.
    pub remote: Option<server::remote::RemoteStats>,
    /// TLS handshakes with phones that failed since start.
    pub tls_handshake_failures: u64,
    /// With replication: what the shard's tablets moved (its own as
    /// primary, summed with those it keeps as secondary).
    pub replication: Option<server::island::tablet::TabletStats>,
}

impl ShardReport {
    /// What its links to other nodes reported (none for a single node).
    pub fn links(&self) -> &[server::remote::LinkStats] {
        self.remote.as_ref().map_or(&[], |remote| &remote.links)
    }
}

/// Queue lengths: the shard's own, and its links to the other shards.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Queues {
    #[serde(flatten)]
    pub shard: QueueLengths,
    /// Messages staged for other shards, not yet in a queue (all links).
    pub peer_staged_messages: u64,
    /// The most staged for any one other shard.
    pub peer_staged_messages_max: u64,
    /// In a cluster: messages staged for other nodes, not yet on a link
    /// (all nodes), and the most for any one node.
    pub node_staged_messages: u64,
    pub node_staged_messages_max: u64,
    /// With replication: batches of this shard's log its island's
    /// secondary does not hold yet (0 in sync and idle).
    pub replica_lag_batches: u64,
    /// The same in bytes (of batches written since the shard started).
    pub replica_lag_bytes: u64,
}

/// The journal as the shard sees it.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct JournalState {
    pub failed: bool,
    pub disk_full: bool,
    pub unavailable: bool,
    /// Totals since the shard started.
    pub records: u64,
    pub bytes: u64,
    /// Batches written (a commit larger than a segment's room is two).
    pub batches: u64,
    pub syncs: u64,
    /// The last checkpoint's duration, in ms, if one was written.
    pub last_checkpoint_ms: Option<u64>,
}

/// Commits finished since the last report: each one's time from taking its
/// records to their durability, and the sync inside it, in µs.
#[derive(Debug, Default, Clone)]
pub struct CommitSamples {
    pub commit_us: Vec<u32>,
    pub sync_us: Vec<u32>,
    /// Records and bytes of each commit.
    pub records: Vec<u32>,
    pub bytes: Vec<u32>,
    /// Commits not in the vectors (past `COMMIT_SAMPLES_MAX`).
    pub dropped: u64,
}

impl CommitSamples {
    /// One finished commit.
    pub fn push(&mut self, commit_us: u64, sync_us: u64, records: u64, bytes: u64) {
        if self.commit_us.len() >= COMMIT_SAMPLES_MAX {
            self.dropped += 1;
            return;
        }
        let clamp = |value: u64| u32::try_from(value).unwrap_or(u32::MAX);
        self.commit_us.push(clamp(commit_us));
        self.sync_us.push(clamp(sync_us));
        self.records.push(clamp(records));
        self.bytes.push(clamp(bytes));
    }
}
