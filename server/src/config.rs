//! The server's configuration: embedded defaults, then one TOML file, the
//! environment (`ISLE_*`) and flags, layered by `layers`; [`Config::validate`]
//! checks the result, whichever layer each value came from.

pub mod cluster;
pub mod flags;
pub mod layers;

use std::{net::SocketAddr, path::PathBuf};

use serde::{de, Deserialize, Deserializer, Serialize};
use shard::{duration, LimitsError, PartitionMap, ShardConfig, TestNumbers, PARTITIONS_DEFAULT};

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// A table (`prefix`, `code`) or, as the flag takes it, `"PREFIX:CODE"`.
    #[serde(deserialize_with = "test_numbers")]
    pub test_numbers: Option<TestNumbersConfig>,
    pub storage: StorageConfig,
    pub limits: Limits,
    pub clock: ClockConfig,
    pub admin: AdminConfig,
    /// Several nodes as one service, through etcd; `None`: a single node.
    pub cluster: Option<cluster::ClusterConfig>,
}

/// `[admin]`: the admin HTTP listener (metrics, health, `isle ctl`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where it listens. The default, `127.0.0.1:0`, is loopback on a port
    /// the kernel picks, which the ready line and `DATA_DIR/admin.addr`
    /// name; set a fixed port for Prometheus.
    pub listen: SocketAddr,
    /// Required as a bearer token on everything but the health checks;
    /// mandatory when `listen` is not a loopback address.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
        }
    }
}

/// How the wall clock is trusted (`shard::WallClock`): a clock step never
/// deletes messages by itself.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockConfig {
    /// At start, how far past the latest wall time the log recorded the
    /// clock may be and be trusted (the server was down that long).
    /// Further, or behind it, and expiry waits until the clock is trusted.
    #[serde(with = "duration::ms")]
    pub jump_max_ms: u64,
    /// How long a clock in doubt must keep step with the monotonic clock
    /// to be trusted; what was queued before a forward step then counts
    /// its age from the step.
    #[serde(with = "duration::ms")]
    pub settle_ms: u64,
    /// The clock at start is right whatever the log recorded: ages count
    /// by it (a server really was down for a month). `--clock-confirmed`.
    pub confirmed: bool,
}

impl Default for ClockConfig {
    fn default() -> ClockConfig {
        let shard = ShardConfig::default();
        ClockConfig {
            jump_max_ms: shard.clock_jump_max_ms,
            settle_ms: shard.clock_settle_ms,
            confirmed: shard.clock_confirmed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JournalKind {
    /// Every commit is written and fdatasync'ed before it is acknowledged.
    Log,
    /// Nothing is written: a restart loses everything. For benchmarks of
    /// the message path alone.
    Memory,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    #[serde(with = "duration::ms")]
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
            sync_delay_ms: ShardConfig::default().sync_delay_ms,
            salvage: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain and private key. When both are absent a
    /// self-signed pair is generated into `data_dir/tls/`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsConfig {
    /// When set, codes are POSTed as JSON to this URL instead of being
    /// written to the log and `data_dir/sms-outbox.log`.
    pub webhook_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Pushes to phones that are away are POSTed as JSON to this URL (a
    /// relay to FCM or APNs). Unset: tokens are kept, nothing is sent.
    pub webhook_url: Option<String>,
    /// At most one push per account per this long.
    #[serde(with = "duration::ms")]
    pub interval_ms: u64,
    /// Tries per push, and the wait before the first retry (doubling).
    pub attempts_max: u32,
    #[serde(with = "duration::ms")]
    pub retry_ms: u64,
}

impl Default for PushConfig {
    fn default() -> PushConfig {
        PushConfig {
            webhook_url: None,
            interval_ms: ShardConfig::default().push_interval_ms,
            attempts_max: 4,
            retry_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestNumbersConfig {
    /// Numbers starting with this (for example `+1555`) sign up with `code`.
    pub prefix: String,
    /// Six digits (leading zeros may be left out).
    pub code: u32,
}

impl std::str::FromStr for TestNumbersConfig {
    type Err = ConfigError;

    /// `PREFIX:CODE`, as `--test-numbers` takes it: `+1555:123456`.
    fn from_str(spec: &str) -> Result<TestNumbersConfig, ConfigError> {
        let malformed = || ConfigError::TestNumbersSpec {
            spec: spec.to_owned(),
        };
        let (prefix, code) = spec.split_once(':').ok_or_else(malformed)?;
        let all_digits = !code.is_empty() && code.bytes().all(|b| b.is_ascii_digit());
        let code = match code.parse() {
            Ok(code) if all_digits => code,
            // Digits too many for a u32 are too many for six.
            _ if all_digits => u32::MAX,
            _ => return Err(malformed()),
        };
        Ok(TestNumbersConfig {
            prefix: prefix.to_owned(),
            code,
        })
    }
}

/// Reads `test_numbers` as a table or as `"PREFIX:CODE"`; what the code and
/// prefix must be is checked with the rest in [`Config::validate`].
fn test_numbers<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<TestNumbersConfig>, D::Error> {
    struct TableOrSpec;
    impl<'de> de::Visitor<'de> for TableOrSpec {
        type Value = TestNumbersConfig;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a table with prefix and code, or \"PREFIX:CODE\"")
        }
        fn visit_str<E: de::Error>(self, spec: &str) -> Result<TestNumbersConfig, E> {
            spec.parse().map_err(E::custom)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<TestNumbersConfig, A::Error> {
            TestNumbersConfig::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_any(TableOrSpec).map(Some)
}

/// `[limits]`: the shard's limits, each documented and given its default
/// once, in `shard::ShardConfig`, and the server's own.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections not logged in, per shard. 0, the default: half of what
    /// the process's open-file limit leaves phones, shared among the
    /// shards (see `prelogin_connections_default`).
    pub prelogin_connections_max: usize,
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
    /// Every other key of `[limits]`: those of `shard::ShardConfig` not
    /// marked `#[serde(skip)]`.
    #[serde(flatten)]
    pub shard: ShardConfig,
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
            admin: AdminConfig::default(),
            cluster: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            prelogin_connections_max: 0,
            peer_staging_messages_max: 16 * 1024,
            peer_queue_batches_max: 64,
            io_memory_bytes: 512 * 1024,
            io_ring_depth: 4096,
            shard: ShardConfig::default(),
        }
    }
}

impl Config {
    /// What shard `shard_id` of `map` runs with: `[limits]`, the settings
    /// of the shard's that other sections hold, and the ones derived here.
    /// The caller sets `wall_clock_offset_ms`, which it reads from the
    /// clock when the shards start.
    pub fn shard_config(&self, shard_id: u16, map: PartitionMap) -> ShardConfig {
        let limits = &self.limits;
        let prelogin_connections_max = match limits.prelogin_connections_max {
            0 => prelogin_connections_default(usize::from(map.shards())),
            n => n,
        };
        // One source never takes more than a quarter of a shard's places.
        let per_source_share = (prelogin_connections_max / 4).max(1);
        let per_source_share = u32::try_from(per_source_share).unwrap_or(u32::MAX);
        ShardConfig {
            shard_id,
            map,
            test_numbers: self.test_numbers.as_ref().map(|t| TestNumbers {
                prefix: t.prefix.clone(),
                code: t.code,
            }),
            prelogin_connections_max,
            prelogin_per_source_max: limits.shard.prelogin_per_source_max.min(per_source_share),
            // A journal in memory writes nothing, so nothing waits to be
            // written.
            sync_delay_ms: match self.storage.journal {
                JournalKind::Log => self.storage.sync_delay_ms,
                JournalKind::Memory => 0,
            },
            push_interval_ms: self.push.interval_ms,
            clock_jump_max_ms: self.clock.jump_max_ms,
            clock_settle_ms: self.clock.settle_ms,
            clock_confirmed: self.clock.confirmed,
            ..limits.shard.clone()
        }
    }

    /// Shards to run: as configured, or one per core for 0.
    pub fn shard_count(&self) -> Result<usize, ConfigError> {
        let shard_count = match self.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        if shard_count > usize::from(PARTITIONS_DEFAULT) {
            return Err(ConfigError::Shards);
        }
        Ok(shard_count)
    }

    /// Checks every value the server relies on, wherever it was set (file,
    /// environment or flag): the one place a value is judged, after the
    /// layers are put together. Returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(numbers) = &self.test_numbers {
            check_test_numbers(numbers)?;
        }
        let shard_count = self.shard_count()?;
        if self.storage.journal == JournalKind::Log {
            check_segment_bytes(self.storage.segment_bytes_max)?;
        }
        let map = PartitionMap::new(PARTITIONS_DEFAULT, shard_count as u16);
        self.shard_config(0, map).validate()?;
        if self.listen.is_none() && self.plaintext_listen.is_none() {
            return Err(ConfigError::NoListener);
        }
        if let Some(cluster) = &self.cluster {
            cluster.settings(self.listen)?;
        }
        self.check_admin()?;
        self.check_addresses()?;
        self.check_machine()?;
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::HalfTlsIdentity);
        }
        self.check_server_limits()
    }

    /// A data dir named, and CPUs this machine has (check-config runs on
    /// the machine the server will).
    fn check_machine(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::NoDataDir);
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self.cpus.iter().find(|&&cpu| cpu >= cpus) {
            Some(&cpu) => Err(ConfigError::NoSuchCpu { cpu, cpus }),
            None => Ok(()),
        }
    }

    /// No two listeners on one address: the kernel would split the
    /// connections between them (a port of 0 is the kernel's pick, never
    /// shared).
    fn check_addresses(&self) -> Result<(), ConfigError> {
        let peer = self.cluster.as_ref().and_then(|c| c.peer_listen);
        let named = [
            ("listen", self.listen),
            ("plaintext_listen", self.plaintext_listen),
            ("admin.listen", Some(self.admin.listen)),
            ("cluster.peer_listen", peer),
        ];
        let bound: Vec<(&'static str, std::net::SocketAddr)> = named
            .into_iter()
            .filter_map(|(key, addr)| Some((key, addr?)))
            .filter(|(_, addr)| addr.port() != 0)
            .collect();
        for (i, &(first, addr)) in bound.iter().enumerate() {
            if let Some(&(second, _)) = bound[i + 1..].iter().find(|(_, other)| *other == addr) {
                return Err(ConfigError::SharedAddress {
                    first,
                    second,
                    addr,
                });
            }
        }
        Ok(())
    }

    /// An empty token is no token; off loopback one is required.
    fn check_admin(&self) -> Result<(), ConfigError> {
        match self.admin.token.as_deref() {
            Some(token) if token.trim().is_empty() => Err(ConfigError::EmptyAdminToken),
            None if !self.admin.listen.ip().is_loopback() => {
                Err(ConfigError::AdminTokenRequired(self.admin.listen))
            }
            _ => Ok(()),
        }
    }

    /// The server's own limits that size queues and rings: 0 would make
    /// a queue that takes nothing or a ring the kernel refuses.
    fn check_server_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let positive = [
            (
                "peer_staging_messages_max",
                limits.peer_staging_messages_max,
            ),
            ("peer_queue_batches_max", limits.peer_queue_batches_max),
            ("io_memory_bytes", limits.io_memory_bytes),
            ("io_ring_depth", limits.io_ring_depth),
        ];
        if let Some((limit, _)) = positive.into_iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::ServerLimitZero(limit));
        }
        if limits.io_ring_depth > IO_RING_DEPTH_MAX {
            return Err(ConfigError::RingTooDeep(limits.io_ring_depth));
        }
        Ok(())
    }

    /// Reads a config file's text. A bad value of a shard limit is
    /// reported with its key: `#[serde(flatten)]` reads those from a
    /// buffer, and its errors point at `[limits]` but name no key.
    fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|error: toml::de::Error| match limits_key_at_fault(text) {
            Some(key) => format!("limits.{key}: {}", error.message()),
            None => error.to_string(),
        })
    }
}

/// A configuration the server cannot run with, found by
/// [`Config::validate`] (or while reading `test_numbers`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("test_numbers takes PREFIX:CODE, for example +1555:123456, not {spec:?}")]
    TestNumbersSpec { spec: String },
    #[error("test_numbers.code is {code}: the test code must be six digits")]
    TestCode { code: u32 },
    #[error(
        "test_numbers.prefix is {prefix:?}: it must be + and 1 to 15 digits \
         (an empty one would make every number a test number)"
    )]
    TestPrefix { prefix: String },
    #[error("at most {PARTITIONS_DEFAULT} shards")]
    Shards,
    #[error(
        "segment_bytes_max is {bytes}: it must be a multiple of {block} from \
         {SEGMENT_BYTES_MIN} to {SEGMENT_BYTES_MAX}"
    )]
    SegmentBytes { bytes: u64, block: u64 },
    #[error("the configured limits")]
    Limits(#[from] LimitsError),
    #[error("no listener configured: set listen or plaintext_listen")]
    NoListener,
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("admin.token is empty: an empty token would let anyone in; remove it or set one")]
    EmptyAdminToken,
    #[error("admin.listen {0} is not a loopback address: set admin.token (or --admin-token)")]
    AdminTokenRequired(std::net::SocketAddr),
    #[error("limits.{0} is 0: it must be at least 1")]
    ServerLimitZero(&'static str),
    #[error("{first} and {second} are both {addr}: each listener needs an address of its own")]
    SharedAddress {
        first: &'static str,
        second: &'static str,
        addr: std::net::SocketAddr,
    },
    #[error("tls.cert and tls.key go together: set both, or neither for a generated pair")]
    HalfTlsIdentity,
    #[error("data_dir is empty: name a directory")]
    NoDataDir,
    #[error("cpus names CPU {cpu}, and this machine has {cpus} (0 to {})", cpus - 1)]
    NoSuchCpu { cpu: usize, cpus: usize },
    #[error("limits.io_ring_depth is {0}: io_uring takes at most {IO_RING_DEPTH_MAX} entries")]
    RingTooDeep(usize),
}

/// The most entries an io_uring ring may have (the kernel's
/// `IORING_MAX_ENTRIES`).
const IO_RING_DEPTH_MAX: usize = 32_768;

impl ConfigError {
    /// The dotted key whose value is at fault, when one is.
    pub fn key(&self) -> Option<String> {
        let key = match self {
            ConfigError::TestNumbersSpec { .. } => "test_numbers",
            ConfigError::TestCode { .. } => "test_numbers.code",
            ConfigError::TestPrefix { .. } => "test_numbers.prefix",
            ConfigError::Shards => "shards",
            ConfigError::SegmentBytes { .. } => "storage.segment_bytes_max",
            ConfigError::Limits(LimitsError::Zero { limit, .. }) => {
                return Some(format!("limits.{limit}"));
            }
            ConfigError::Limits(LimitsError::TickTooLong { .. }) => "limits.tick_ms",
            ConfigError::Cluster(error) => error.key(),
            ConfigError::EmptyAdminToken => "admin.token",
            ConfigError::AdminTokenRequired(_) => "admin.listen",
            ConfigError::ServerLimitZero(limit) => return Some(format!("limits.{limit}")),
            ConfigError::SharedAddress { second, .. } => second,
            ConfigError::HalfTlsIdentity => "tls.key",
            ConfigError::NoDataDir => "data_dir",
            ConfigError::NoSuchCpu { .. } => "cpus",
            ConfigError::RingTooDeep(_) => "limits.io_ring_depth",
            ConfigError::Limits(_) | ConfigError::NoListener => return None,
        };
        Some(key.to_owned())
    }
}

/// Test codes are six digits; a test prefix is a country code and more,
/// never empty (that would make every number a test number).
fn check_test_numbers(numbers: &TestNumbersConfig) -> Result<(), ConfigError> {
    const TEST_CODE_MAX: u32 = 999_999;
    const PREFIX_DIGITS_MAX: usize = 15;
    if numbers.code > TEST_CODE_MAX {
        return Err(ConfigError::TestCode { code: numbers.code });
    }
    let digits = numbers.prefix.strip_prefix('+').unwrap_or("");
    let well_formed = (1..=PREFIX_DIGITS_MAX).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit());
    if !well_formed {
        return Err(ConfigError::TestPrefix {
            prefix: numbers.prefix.clone(),
        });
    }
    Ok(())
}

/// Segments hold whole blocks and at least a few batches; the upper bound
/// keeps replay, which reads a segment at a time, within reason.
const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

fn check_segment_bytes(bytes: u64) -> Result<(), ConfigError> {
    let block = storage::log::format::BLOCK_BYTES as u64;
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&bytes) || !bytes.is_multiple_of(block) {
        return Err(ConfigError::SegmentBytes { bytes, block });
    }
    Ok(())
}

/// The first key of `[limits]` that cannot be read on its own.
fn limits_key_at_fault(text: &str) -> Option<String> {
    let file: toml::Table = toml::from_str(text).ok()?;
    let limits = file.get("limits")?.as_table()?;
    let (key, _) = limits.iter().find(|&(key, value)| {
        let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
        Limits::deserialize(alone).is_err()
    })?;
    Some(key.clone())
}

/// Open files the process keeps out of the phones' budget, per shard: its
/// journal (the directory, the segment written, the spare being prepared,
/// a checkpoint being written), its three io_uring rings and their
/// eventfds, and its listeners. A shard at rest holds 8; the rest is room
/// for its journal to rotate and checkpoint.
pub const FILES_RESERVED_PER_SHARD: usize = 16;
/// Open files the process keeps out of the phones' budget for itself:
/// stdio, the data dir's lock, the control thread's runtime, the SMS and
/// push senders' connections (16), and the admin listener's connections
/// (`ADMIN_CONNECTIONS_MAX`), which are capped so that no client of the
/// admin port can take what phones and journals need.
pub const FILES_RESERVED_PROCESS: usize = 16 + crate::control::listener::ADMIN_CONNECTIONS_MAX;

/// Open files the process keeps out of the phones' budget with `shards`
/// shards (README, "Open files").
pub fn files_reserved(shards: usize) -> usize {
    FILES_RESERVED_PROCESS + FILES_RESERVED_PER_SHARD * shards
}

/// The process's open-file limit (`RLIMIT_NOFILE`'s soft value; 1024 when
/// it cannot be read).
fn open_files_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes `limit`.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX),
        _ => 1024,
    }
}

/// Connections not logged in one shard may hold when the config does not
/// say: half of what the open-file limit leaves phones (past
/// [`files_reserved`]), shared among the shards, so that anonymous
/// connections can never take every descriptor (the other half is for
/// phones that log in), and a login storm of as many phones as half the
/// limit is not throttled.
fn prelogin_connections_default(shards: usize) -> usize {
    prelogin_connections_within(open_files_limit(), shards)
}

fn prelogin_connections_within(open_files: usize, shards: usize) -> usize {
    let phones = open_files.saturating_sub(files_reserved(shards));
    // No floor: with a small limit a floor would hand anonymous
    // connections every descriptor.
    (phones / 2 / shards.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> PartitionMap {
        PartitionMap::new(shard::PARTITIONS_DEFAULT, 2)
    }

    /// Every `[limits]` key README and the tests name, each set away from
    /// its default, reaches the shards (or the server) under its name.
    /// A limit added to `shard::ShardConfig` becomes a `[limits]` key by
    /// itself; this keeps README's list of them from falling behind.
    #[test]
    fn every_limits_key_is_named_in_the_readme() {
        let readme = include_str!("../../README.md");
        let limits = toml::Value::try_from(Limits::default()).expect("limits serialize");
        let keys: Vec<&String> = limits.as_table().expect("a table").keys().collect();
        assert!(keys.len() >= 34, "keys: {keys:?}");
        let missing: Vec<&&String> = keys
            .iter()
            .filter(|key| {
                !readme.contains(&format!("`{key}`")) && !readme.contains(&format!("limits.{key}"))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "[limits] keys README.md does not name: {missing:?}"
        );
    }

    #[test]
    fn every_limits_key_is_read_into_the_shard_config() {
        // The u8 limits fit a u8, and the one per source stays below a
        // quarter of `prelogin_connections_max` (a cap of its own).
        let keys: [(&str, u64); 34] = [
            ("idle_timeout_ms", 1001),
            ("login_timeout_ms", 1002),
            ("close_flush_timeout_ms", 1003),
            ("unacked_messages_max", 1004),
            ("send_rate_per_s", 1005),
            ("send_burst", 1006),
            ("code_requests_max", 1007),
            ("prelogin_connections_max", 1008),
            ("prelogin_per_source_max", 109),
            ("code_requests_per_connection_max", 110),
            ("code_attempts_per_connection_max", 111),
            ("code_attempts_per_source_per_hour", 1012),
            ("logins_per_minute", 1013),
            ("groups_created_per_day", 1014),
            ("code_requests_per_source_per_hour", 1015),
            ("code_requests_per_prefix_per_hour", 1016),
            ("code_requests_per_range_per_hour", 1017),
            ("sms_per_minute", 1018),
            ("mailbox_entries_max", 1019),
            ("mailbox_bytes_max", 1020),
            ("receipts_max", 1021),
            ("group_entries_max", 1022),
            ("group_bytes_max", 1023),
            ("group_members_max", 1024),
            ("contacts_max", 1025),
            ("contact_syncs_per_hour", 1026),
            ("contact_lookups_per_day", 1027),
            ("presence_subscriptions_max", 1028),
            ("message_retention_ms", 1029),
            ("peer_staging_messages_max", 1030),
            ("peer_queue_batches_max", 1031),
            ("io_memory_bytes", 1032),
            ("io_ring_depth", 1033),
            ("tick_ms", 1034),
        ];
        let text: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let config = Config::parse(&format!("[limits]\n{text}")).unwrap();
        let shard = config.shard_config(1, map());
        let read: [u64; 34] = [
            shard.idle_timeout_ms,
            shard.login_timeout_ms,
            shard.close_flush_timeout_ms,
            shard.unacked_messages_max,
            shard.send_rate_per_s.into(),
            shard.send_burst.into(),
            shard.code_requests_max.into(),
            shard.prelogin_connections_max as u64,
            shard.prelogin_per_source_max.into(),
            shard.code_requests_per_connection_max.into(),
            shard.code_attempts_per_connection_max.into(),
            shard.code_attempts_per_source_per_hour.into(),
            shard.logins_per_minute.into(),
            shard.groups_created_per_day.into(),
            shard.code_requests_per_source_per_hour.into(),
            shard.code_requests_per_prefix_per_hour.into(),
            shard.code_requests_per_range_per_hour.into(),
            shard.sms_per_minute.into(),
            shard.mailbox_entries_max as u64,
            shard.mailbox_bytes_max as u64,
            shard.receipts_max as u64,
            shard.group_entries_max as u64,
            shard.group_bytes_max as u64,
            shard.group_members_max as u64,
            shard.contacts_max as u64,
            shard.contact_syncs_per_hour.into(),
            shard.contact_lookups_per_day.into(),
            shard.presence_subscriptions_max as u64,
            shard.message_retention_ms,
            config.limits.peer_staging_messages_max as u64,
            config.limits.peer_queue_batches_max as u64,
            config.limits.io_memory_bytes as u64,
            config.limits.io_ring_depth as u64,
            shard.tick_ms,
        ];
        assert_eq!(read, keys.map(|(_, value)| value));
        assert_eq!(shard.shard_id, 1);
        assert_eq!(shard.map, map());
    }

    /// The open-file budget: what the process keeps for itself (the admin
    /// connections among it) and anonymous connections at most half of
    /// the rest, whatever the shard count; a tiny limit still leaves one
    /// place per shard.
    #[test]
    fn anonymous_connections_get_half_of_what_the_reserve_leaves() {
        for (open_files, shards) in [(20_000, 4), (1_048_576, 64), (256, 1), (1_000, 7)] {
            let prelogin = prelogin_connections_within(open_files, shards);
            let phones = open_files - files_reserved(shards);
            assert!(prelogin * shards <= phones / 2, "{open_files} {shards}");
            assert!(
                prelogin * shards + shards > phones / 2,
                "{open_files} {shards}"
            );
        }
        assert_eq!(prelogin_connections_within(40, 2), 1);
    }

    /// With no file, a shard runs with `ShardConfig`'s defaults, but for
    /// what the server derives: the share of anonymous connections.
    #[test]
    fn without_a_file_the_shards_run_with_their_defaults() {
        let shard = Config::default().shard_config(0, map());
        let derived = prelogin_connections_default(2);
        assert_eq!(shard.prelogin_connections_max, derived);
        let quarter = u32::try_from((derived / 4).max(1)).unwrap_or(u32::MAX);
        let expected = ShardConfig {
            prelogin_connections_max: derived,
            prelogin_per_source_max: ShardConfig::default().prelogin_per_source_max.min(quarter),
            ..ShardConfig::new(0, map())
        };
        assert_eq!(format!("{shard:?}"), format!("{expected:?}"));
        assert_eq!(shard.validate(), Ok(()));
    }

    /// Settings the shard has that live in other sections (or nowhere)
    /// are not `[limits]` keys.
    #[test]
    fn only_limits_keys_are_read_under_limits() {
        for key in [
            "not_a_limit",
            "shard_id",
            "wall_clock_offset_ms",
            "sync_delay_ms",
            "push_interval_ms",
            "clock_settle_ms",
            "dedup_ttl_ms",
            "outbox_bytes_max",
        ] {
            let error = Config::parse(&format!("[limits]\n{key} = 1\n")).unwrap_err();
            assert!(error.contains(&format!("unknown field `{key}`")), "{error}");
        }
    }

    #[test]
    fn the_other_sections_reach_the_shard() {
        let text = "
            [storage]
            sync_delay_ms = 7
            [push]
            interval_ms = 8
            [clock]
            jump_max_ms = 9
            settle_ms = 10
            confirmed = true
            [test_numbers]
            prefix = \"+1555\"
            code = 123456
        ";
        let config = Config::parse(text).unwrap();
        let shard = config.shard_config(0, map());
        assert_eq!(shard.sync_delay_ms, 7);
        assert_eq!(shard.push_interval_ms, 8);
        assert_eq!((shard.clock_jump_max_ms, shard.clock_settle_ms), (9, 10));
        assert!(shard.clock_confirmed);
        let numbers = shard.test_numbers.unwrap();
        assert_eq!((numbers.prefix.as_str(), numbers.code), ("+1555", 123456));
        // A journal in memory writes nothing, so nothing waits for it.
        let memory = Config::parse("[storage]\njournal = \"memory\"\nsync_delay_ms = 7\n");
        assert_eq!(memory.unwrap().shard_config(0, map()).sync_delay_ms, 0);
    }

    #[test]
    fn a_bad_value_is_reported_with_its_key() {
        for (text, key) in [
            ("tick_ms = 5\nsend_burst = \"x\"", "send_burst"),
            (
                "code_requests_per_connection_max = 300",
                "code_requests_per_connection_max",
            ),
            ("io_ring_depth = -1", "io_ring_depth"),
        ] {
            let error = Config::parse(&format!("[limits]\n{text}\n")).unwrap_err();
            assert!(error.starts_with(&format!("limits.{key}: ")), "{error}");
        }
        // Elsewhere toml's own report stands: it has the line.
        let error = Config::parse("[storage]\nsalvage = 3\n").unwrap_err();
        assert!(error.contains("line 2"), "{error}");
    }

    /// A 7-digit test code was refused as a flag (`--test-numbers`
    /// checked it while reading) and accepted from the file, which only
    /// read a u32. Now both are read alike and judged once, in `validate`.
    #[test]
    fn a_seven_digit_test_code_is_refused_from_the_file_as_from_the_flag() {
        let from_file = "[test_numbers]\nprefix = \"+1555\"\ncode = 1234567\n";
        let from_flag = "test_numbers = \"+1555:1234567\"\n";
        for text in [from_file, from_flag] {
            let error = Config::parse(text).unwrap().validate().unwrap_err();
            assert_eq!(
                error.to_string(),
                "test_numbers.code is 1234567: the test code must be six digits"
            );
        }
        let too_long: Result<TestNumbersConfig, _> = "+1555:12345678901".parse();
        let code = too_long.unwrap().code;
        assert!(check_test_numbers(&TestNumbersConfig {
            prefix: "+1555".into(),
            code
        })
        .is_err());
        for text in [from_file, from_flag] {
            let six = text.replace("1234567", "123456");
            Config::parse(&six).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn a_test_prefix_is_a_plus_and_digits() {
        let check = |spec: &str| {
            let numbers: TestNumbersConfig =
                spec.parse().map_err(|e: ConfigError| e.to_string())?;
            check_test_numbers(&numbers).map_err(|e| e.to_string())
        };
        check("+1555:111111").unwrap();
        check("+1:000001").unwrap();
        // An empty prefix would make every number a test number.
        for spec in [":111111", "+:111111", "1555:111111", "+15a5:111111"] {
            let error = check(spec).unwrap_err();
            assert!(error.contains("test_numbers.prefix"), "{spec}: {error}");
        }
        for spec in ["+1555", "+1555:", "+1555:12a456", "+1555:-1"] {
            let error = check(spec).unwrap_err();
            assert!(error.contains("PREFIX:CODE"), "{spec}: {error}");
        }
    }

    #[test]
    fn every_duration_key_takes_a_unit() {
        let text = "
            [storage]
            sync_delay_ms = \"250ms\"
            [push]
            interval_ms = \"1m\"
            retry_ms = \"2s\"
            [clock]
            jump_max_ms = \"2days\"
            settle_ms = \"15m\"
            [limits]
            tick_ms = \"50ms\"
            idle_timeout_ms = \"10m\"
            login_timeout_ms = \"45s\"
            close_flush_timeout_ms = \"3s\"
            message_retention_ms = \"7days\"
        ";
        let config = Config::parse(text).unwrap();
        let shard = config.shard_config(0, map());
        assert_eq!(shard.sync_delay_ms, 250);
        assert_eq!(shard.push_interval_ms, 60_000);
        assert_eq!(config.push.retry_ms, 2_000);
        assert_eq!(shard.clock_jump_max_ms, 2 * 86_400_000);
        assert_eq!(shard.clock_settle_ms, 900_000);
        assert_eq!(shard.tick_ms, 50);
        assert_eq!(shard.idle_timeout_ms, 600_000);
        assert_eq!(shard.login_timeout_ms, 45_000);
        assert_eq!(shard.close_flush_timeout_ms, 3_000);
        assert_eq!(shard.message_retention_ms, 7 * 86_400_000);
        let error = Config::parse("[limits]\nidle_timeout_ms = \"later\"\n").unwrap_err();
        assert!(error.starts_with("limits.idle_timeout_ms: "), "{error}");
        assert!(error.contains("\"later\" is not a duration"), "{error}");
    }

    /// Every key of the configuration, dotted, from its default written as
    /// JSON (where unset options appear too, as null).
    fn every_key() -> Vec<String> {
        fn walk(prefix: &str, value: &serde_json::Value, keys: &mut Vec<String>) {
            let serde_json::Value::Object(table) = value else {
                keys.push(prefix.to_owned());
                return;
            };
            for (key, value) in table {
                let dotted = match prefix {
                    "" => key.clone(),
                    _ => format!("{prefix}.{key}"),
                };
                walk(&dotted, value, keys);
            }
        }
        let mut keys = Vec::new();
        // A section that is off by default is named key by key too.
        let every_section = Config {
            cluster: Some(cluster::ClusterConfig::default()),
            ..Config::default()
        };
        walk("", &serde_json::to_value(every_section).unwrap(), &mut keys);
        keys
    }

    /// The keys `packaging/isle.toml` names, set or commented out
    /// (`# key = example`, for options without a default).
    fn sample_keys(sample: &str) -> Vec<String> {
        let mut section = String::new();
        let mut keys = Vec::new();
        for line in sample.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = format!("{name}.");
            } else if let Some((key, _)) = line.split_once(" = ") {
                if key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    keys.push(format!("{section}{key}"));
                }
            }
        }
        keys
    }

    #[test]
    fn the_sample_config_names_every_key_at_its_default() {
        let sample = include_str!("../../packaging/isle.toml");
        let named = sample_keys(sample);
        assert!(named.len() >= 55, "{named:?}");
        let missing: Vec<String> = every_key()
            .into_iter()
            .filter(|key| !named.contains(key))
            .collect();
        assert!(
            missing.is_empty(),
            "keys packaging/isle.toml does not name: {missing:?}"
        );
        // What it sets is the default, value for value.
        let read = Config::parse(sample).unwrap();
        let written = |config: &Config| toml::Value::try_from(config).unwrap();
        assert_eq!(written(&read), written(&Config::default()));
    }
}
