//! The flags `isle` and `isle check-config` take, and the layer of the
//! configuration they make: each flag sets one key, as the file or the
//! environment would, and its value is read and judged like theirs.

use std::{net::SocketAddr, path::PathBuf};

use figment::{
    value::{Dict, Empty, Map, Value},
    Error, Metadata, Profile, Provider,
};

use super::JournalKind;

/// The server's flags. Each overrides the key the table in
/// [`FLAG_KEYS`] names, over the file and the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Flags {
    /// TOML configuration file; the environment (ISLE_*) and flags
    /// override it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Data directory (default ./data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// TLS listen address (default 0.0.0.0:5222).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Do not listen for TLS at all.
    #[arg(long)]
    pub no_tls: bool,
    /// Also listen for plaintext connections here (for loopback benchmarks).
    #[arg(long)]
    pub plaintext_listen: Option<SocketAddr>,
    /// Number of shards (default: one per core).
    #[arg(long)]
    pub shards: Option<usize>,
    /// CPUs to pin shards to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// Enable the test-number range: PREFIX:CODE, for example +1555:123456.
    #[arg(long)]
    pub test_numbers: Option<String>,
    /// Close logged-in connections idle for this long (milliseconds, or a
    /// duration such as 5m).
    #[arg(long)]
    pub idle_timeout_ms: Option<String>,
    /// POST signup codes to this URL instead of writing them to the outbox.
    #[arg(long)]
    pub sms_webhook: Option<String>,
    /// POST pushes for phones that are away to this URL.
    #[arg(long)]
    pub push_webhook: Option<String>,
    /// Where committed state goes: `log` (durable, the default) or `memory`.
    #[arg(long, value_enum)]
    pub journal: Option<JournalKind>,
    /// Start even if a shard's log is damaged in the middle, skipping (and
    /// reporting) what the damage covered.
    #[arg(long)]
    pub salvage: bool,
    /// Size of a log segment, in bytes (a multiple of 4096). Every segment
    /// is written with zeros to this size before it is used.
    #[arg(long)]
    pub segment_bytes: Option<u64>,
    /// Write-back cache delay (milliseconds, or a duration such as 1s; 0:
    /// write every message before `Sent`). A crash loses messages accepted
    /// in the last this-long.
    #[arg(long)]
    pub sync_delay_ms: Option<String>,
    /// The wall clock is right, however far it is from the latest time the
    /// log recorded (the server was down that long): expiry counts by it
    /// rather than waiting for the clock to be trusted.
    #[arg(long)]
    pub clock_confirmed: bool,
    /// The admin listener: metrics, health checks, `isle ctl` (default
    /// 127.0.0.1 on a port the kernel picks, named in the ready line).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// The bearer token the admin listener requires (needed when it is not
    /// on a loopback address). Better from the file or `ISLE_ADMIN__TOKEN`
    /// than on a command line others can read.
    #[arg(long)]
    pub admin_token: Option<String>,
    /// In a cluster: this node's id (1 to 4095).
    #[arg(long)]
    pub node_id: Option<u16>,
    /// In a cluster: etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// In a cluster: where the other nodes' links connect.
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,
    /// In a cluster: the host:port redirects send this node's phones to.
    #[arg(long)]
    pub advertise: Option<String>,
    /// In a cluster: how many nodes must be registered before the first
    /// controller assigns the partitions (default 1; only while the
    /// cluster has no partition map).
    #[arg(long)]
    pub bootstrap_nodes: Option<usize>,
}

/// Each flag that sets a key, and that key (dotted: section, then key).
/// `--config` names the file and sets none.
pub const FLAG_KEYS: &[(&str, &str)] = &[
    ("--data-dir", "data_dir"),
    ("--listen", "listen"),
    ("--no-tls", "listen"),
    ("--plaintext-listen", "plaintext_listen"),
    ("--shards", "shards"),
    ("--cpus", "cpus"),
    ("--test-numbers", "test_numbers"),
    ("--idle-timeout-ms", "limits.idle_timeout_ms"),
    ("--sms-webhook", "sms.webhook_url"),
    ("--push-webhook", "push.webhook_url"),
    ("--journal", "storage.journal"),
    ("--salvage", "storage.salvage"),
    ("--segment-bytes", "storage.segment_bytes_max"),
    ("--sync-delay-ms", "storage.sync_delay_ms"),
    ("--clock-confirmed", "clock.confirmed"),
    ("--admin-listen", "admin.listen"),
    ("--admin-token", "admin.token"),
    ("--node-id", "cluster.node_id"),
    ("--etcd", "cluster.etcd"),
    ("--peer-listen", "cluster.peer_listen"),
    ("--advertise", "cluster.advertise"),
    ("--bootstrap-nodes", "cluster.bootstrap_nodes"),
];

impl Flags {
    /// The flags given, as the layer of the configuration they make.
    pub fn layer(&self) -> FlagLayer {
        let text = |value: &Option<String>| value.clone().map(Value::from);
        let path = |value: &Option<PathBuf>| value.as_ref().map(|p| p.display().to_string().into());
        let addr = |value: Option<SocketAddr>| value.map(|a| a.to_string().into());
        let on = |set: bool| set.then(|| Value::from(true));
        let set: [(&str, Option<Value>); 22] = [
            ("--data-dir", path(&self.data_dir)),
            ("--listen", addr(self.listen)),
            // After --listen, as before: no TLS wins.
            ("--no-tls", self.no_tls.then(|| Value::from(Empty::None))),
            ("--plaintext-listen", addr(self.plaintext_listen)),
            ("--shards", self.shards.map(Value::from)),
            ("--cpus", self.cpus.clone().map(Value::from)),
            ("--test-numbers", text(&self.test_numbers)),
            ("--idle-timeout-ms", text(&self.idle_timeout_ms)),
            ("--sms-webhook", text(&self.sms_webhook)),
            ("--push-webhook", text(&self.push_webhook)),
            ("--journal", self.journal.map(journal_name)),
            ("--salvage", on(self.salvage)),
            ("--segment-bytes", self.segment_bytes.map(Value::from)),
            ("--sync-delay-ms", text(&self.sync_delay_ms)),
            ("--clock-confirmed", on(self.clock_confirmed)),
            ("--admin-listen", addr(self.admin_listen)),
            ("--admin-token", text(&self.admin_token)),
            ("--node-id", self.node_id.map(Value::from)),
            ("--etcd", self.etcd.clone().map(Value::from)),
            ("--peer-listen", addr(self.peer_listen)),
            ("--advertise", text(&self.advertise)),
            ("--bootstrap-nodes", self.bootstrap_nodes.map(Value::from)),
        ];
        FlagLayer {
            values: set
                .into_iter()
                .filter_map(|(flag, value)| Some((flag, value?)))
                .collect(),
        }
    }
}

fn journal_name(kind: JournalKind) -> Value {
    match kind {
        JournalKind::Log => "log".into(),
        JournalKind::Memory => "memory".into(),
    }
}

/// The key a flag sets.
fn key_of(flag: &str) -> &'static str {
    FLAG_KEYS
        .iter()
        .find(|(name, _)| *name == flag)
        .map(|(_, key)| *key)
        .expect("every flag is in FLAG_KEYS")
}

/// The flag that sets `key`, to name it in an error.
fn flag_of(key: &str) -> Option<&'static str> {
    FLAG_KEYS
        .iter()
        .find(|(_, k)| *k == key)
        .map(|(flag, _)| *flag)
}

/// The flags given, each with its value, in the order they apply.
pub struct FlagLayer {
    values: Vec<(&'static str, Value)>,
}

impl FlagLayer {
    /// The flags given, as written: for the line saying where values came
    /// from.
    pub fn names(&self) -> Vec<&'static str> {
        self.values.iter().map(|(flag, _)| *flag).collect()
    }
}

impl Provider for FlagLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("flags").interpolater(|_: &Profile, keys: &[&str]| {
            let key = keys.join(".");
            match flag_of(&key) {
                Some(flag) => format!("flag {flag}"),
                None => format!("flags: {key}"),
            }
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut dict = Dict::new();
        for (flag, value) in &self.values {
            insert(&mut dict, key_of(flag), value.clone());
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Sets the dotted `key` of `dict` to `value`, making sections as needed.
fn insert(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((section, rest)) => {
            let entry = dict
                .entry(section.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}
