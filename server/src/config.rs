//! The server's configuration: embedded defaults, one TOML file, then flags.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the server keeps its logs, TLS identity and SMS outbox.
    pub data_dir: PathBuf,
    /// Shards to run; 0 means one per available core.
    pub shards: usize,
    /// CPUs to pin shards to, in order; empty means 0, 1, 2, ...
    pub cpus: Vec<usize>,
    /// The TLS listener.
    pub listen: Option<SocketAddr>,
    /// A plaintext listener, for loopback benchmarks. Off unless set.
    pub plaintext_listen: Option<SocketAddr>,
    pub tls: TlsConfig,
    pub sms: SmsConfig,
    pub push: PushConfig,
    pub test_numbers: Option<TestNumbersConfig>,
    pub storage: StorageConfig,
    pub limits: Limits,
    pub clock: ClockConfig,
}

/// How the wall clock is trusted (`shard::WallClock`): a clock step never
/// deletes messages by itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockConfig {
    /// At start, how far past the latest wall time the log recorded the
    /// clock may be and be trusted (the server was down that long).
    /// Further, or behind it, and expiry waits until the clock is trusted.
    pub jump_max_ms: u64,
    /// How long a clock in doubt must keep step with the monotonic clock
    /// to be trusted; what was queued before a forward step then counts
    /// its age from the step.
    pub settle_ms: u64,
    /// The clock at start is right whatever the log recorded: ages count
    /// by it (a server really was down for a month). `--clock-confirmed`.
    pub confirmed: bool,
}

impl Default for ClockConfig {
    fn default() -> ClockConfig {
        let shard = shard::ShardConfig::new(0, shard::PartitionMap::new(1, 1));
        ClockConfig {
            jump_max_ms: shard.clock_jump_max_ms,
            settle_ms: shard.clock_settle_ms,
            confirmed: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JournalKind {
    /// Every commit is written and fdatasync'ed before it is acknowledged.
    Log,
    /// Nothing is written: a restart loses everything. For benchmarks of
    /// the message path alone.
    Memory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub journal: JournalKind,
    /// A log segment is closed once it would grow past this.
    pub segment_bytes_max: u64,
    /// A checkpoint is written once this many segments are closed; the
    /// segments it covers are then deleted. Disk use stays near
    /// (this + 2) segments plus the checkpoint, whatever the traffic.
    pub checkpoint_segments: usize,
    /// Write-back cache: 0 writes every message before `Sent`; above 0 a
    /// message (and its deletion) waits this long in memory and is never
    /// written if acknowledged in time. A crash loses what waits.
    pub sync_delay_ms: u64,
    /// Start even if a log is damaged in the middle, skipping the damage
    /// (and losing what it held). Off: such a log stops the server.
    pub salvage: bool,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            journal: JournalKind::Log,
            segment_bytes_max: storage::log::SEGMENT_BYTES_MAX_DEFAULT,
            checkpoint_segments: 4,
            sync_delay_ms: 0,
            salvage: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain and private key. When both are absent a
    /// self-signed pair is generated into `data_dir/tls/`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsConfig {
    /// When set, codes are POSTed as JSON to this URL instead of being
    /// written to the log and `data_dir/sms-outbox.log`.
    pub webhook_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Pushes to phones that are away are POSTed as JSON to this URL (a
    /// relay to FCM or APNs). Unset: tokens are kept, nothing is sent.
    pub webhook_url: Option<String>,
    /// At most one push per account per this long.
    pub interval_ms: u64,
    /// Tries per push, and the wait before the first retry (doubling).
    pub attempts_max: u32,
    pub retry_ms: u64,
}

impl Default for PushConfig {
    fn default() -> PushConfig {
        PushConfig {
            webhook_url: None,
            interval_ms: shard::ShardConfig::new(0, shard::PartitionMap::new(1, 1))
                .push_interval_ms,
            attempts_max: 4,
            retry_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestNumbersConfig {
    /// Numbers starting with this (for example `+1555`) sign up with `code`.
    pub prefix: String,
    pub code: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub idle_timeout_ms: u64,
    pub login_timeout_ms: u64,
    /// A closing connection is dropped this long after its `Bye`, written
    /// or not.
    pub close_flush_timeout_ms: u64,
    pub unacked_messages_max: u64,
    pub send_rate_per_s: u32,
    pub send_burst: u32,
    /// Codes one number may ask for per hour.
    pub code_requests_max: u32,
    /// Connections not logged in, per shard (0, the default: half the
    /// process's open-file limit, shared among the shards), and per
    /// source host per shard; codes per connection, per source host, per
    /// source network and per range of 10,000 numbers per hour, and SMS
    /// per minute, each per shard (see `shard::ShardConfig`).
    pub prelogin_connections_max: usize,
    pub prelogin_per_source_max: u32,
    pub code_requests_per_connection_max: u8,
    /// Code guesses per connection, and per source host per hour per shard.
    pub code_attempts_per_connection_max: u8,
    pub code_attempts_per_source_per_hour: u32,
    /// Logins to one account per minute; groups one account creates per day.
    pub logins_per_minute: u32,
    pub groups_created_per_day: u32,
    pub code_requests_per_source_per_hour: u32,
    pub code_requests_per_prefix_per_hour: u32,
    pub code_requests_per_range_per_hour: u32,
    pub sms_per_minute: u32,
    /// What one account may have queued (entries, body bytes); messages past
    /// either bound are refused with `MailboxFull`.
    pub mailbox_entries_max: usize,
    pub mailbox_bytes_max: usize,
    /// Receipts one account may have queued, apart from its messages;
    /// past it new receipts are dropped and counted.
    pub receipts_max: usize,
    /// Group posts one account may have queued, and their body bytes,
    /// apart from its 1:1 messages.
    pub group_entries_max: usize,
    pub group_bytes_max: usize,
    /// Members one group may have, its creator included.
    pub group_members_max: usize,
    /// Numbers one account's contact list may hold; contact syncs per
    /// account per hour; numbers not looked up before, per account per day
    /// (after a first `contacts_max`).
    pub contacts_max: usize,
    pub contact_syncs_per_hour: u32,
    pub contact_lookups_per_day: u32,
    /// Phones one connection may follow the presence of at once.
    pub presence_subscriptions_max: usize,
    /// Messages not delivered within this long are deleted and their
    /// senders get an `Expired` receipt.
    pub message_retention_ms: u64,
    /// Messages waiting to cross to one other shard before the connections
    /// that feed them stop being read.
    pub peer_staging_messages_max: usize,
    /// Batches in flight on one (source, destination) shard queue.
    pub peer_queue_batches_max: usize,
    /// io_uring buffer memory per shard; locked memory is scarce.
    pub io_memory_bytes: usize,
    /// Submission entries per io_uring ring. Every idle connection keeps a
    /// poll armed, and the kernel sizes the table it searches on each cancel
    /// (the executor cancels its preemption timers on every loop) from this
    /// depth: at the 128 default a shard with 10,000 phones spent a third of
    /// its time in that search. 4,096 gives the table its maximum size.
    pub io_ring_depth: usize,
    /// The shard's timer granularity (ms): deadlines, sweeps and the
    /// clock check run this often. Also the longest any wake-up glommio
    /// loses can delay a shard, since its tick wakes it.
    pub tick_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("./data"),
            shards: 0,
            cpus: Vec::new(),
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 5222))),
            plaintext_listen: None,
            tls: TlsConfig::default(),
            sms: SmsConfig::default(),
            push: PushConfig::default(),
            test_numbers: None,
            storage: StorageConfig::default(),
            limits: Limits::default(),
            clock: ClockConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        let shard = shard::ShardConfig::new(0, shard::PartitionMap::new(1, 1));
        Limits {
            idle_timeout_ms: shard.idle_timeout_ms,
            login_timeout_ms: shard.login_timeout_ms,
            close_flush_timeout_ms: shard.close_flush_timeout_ms,
            unacked_messages_max: shard.unacked_messages_max,
            send_rate_per_s: shard.send_rate_per_s,
            send_burst: shard.send_burst,
            code_requests_max: shard.code_requests_max,
            prelogin_connections_max: 0,
            prelogin_per_source_max: shard.prelogin_per_source_max,
            code_requests_per_connection_max: shard.code_requests_per_connection_max,
            code_attempts_per_connection_max: shard.code_attempts_per_connection_max,
            code_attempts_per_source_per_hour: shard.code_attempts_per_source_per_hour,
            logins_per_minute: shard.logins_per_minute,
            groups_created_per_day: shard.groups_created_per_day,
            code_requests_per_source_per_hour: shard.code_requests_per_source_per_hour,
            code_requests_per_prefix_per_hour: shard.code_requests_per_prefix_per_hour,
            code_requests_per_range_per_hour: shard.code_requests_per_range_per_hour,
            sms_per_minute: shard.sms_per_minute,
            mailbox_entries_max: shard.mailbox_entries_max,
            mailbox_bytes_max: shard.mailbox_bytes_max,
            receipts_max: shard.receipts_max,
            group_entries_max: shard.group_entries_max,
            group_bytes_max: shard.group_bytes_max,
            group_members_max: shard.group_members_max,
            contacts_max: shard.contacts_max,
            contact_syncs_per_hour: shard.contact_syncs_per_hour,
            contact_lookups_per_day: shard.contact_lookups_per_day,
            presence_subscriptions_max: shard.presence_subscriptions_max,
            message_retention_ms: shard.message_retention_ms,
            peer_staging_messages_max: 16 * 1024,
            peer_queue_batches_max: 64,
            io_memory_bytes: 512 * 1024,
            io_ring_depth: 4096,
            tick_ms: shard.tick_ms,
        }
    }
}

impl Config {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("cannot read config {}: {error}", path.display()))?;
        toml::from_str(&text).map_err(|error| anyhow::anyhow!("config {}: {error}", path.display()))
    }
}
