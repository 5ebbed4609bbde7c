//! What changes without a restart (SIGHUP, `POST /reload`, `isle ctl
//! reload`): the TLS certificate and key for new connections, and the
//! `[limits]` keys a running shard reads where it uses them.
//!
//! A reload reads the whole configuration again, with the same layers as
//! at start (file, `ISLE_*` environment, the flags the process was started
//! with), and validates it as at start: a configuration that does not
//! load changes nothing. It then compares it, key by key, with what is in
//! effect. Live keys are sent to every shard (`ShardCommand::SetLimits`);
//! any other key that differs is named as needing a restart and keeps its
//! value. Secrets are never echoed: a restart-only key is named without
//! its value.

use std::{collections::BTreeMap, sync::Arc};

use super::{commands::ShardCommand, Shared};
use crate::config::Config;

/// Loads the TLS identity anew: the configuration for new connections and
/// the certificate's fingerprint.
pub type TlsLoader =
    Box<dyn Fn() -> anyhow::Result<(Arc<rustls::ServerConfig>, String)> + Send + Sync>;

/// Loads and validates the configuration anew, from the same layers as at
/// start.
pub type ConfigLoader = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// `[limits]` keys of the server's own that need a restart: the links'
/// queues and the io_uring rings are sized when a shard starts.
const SERVER_RESTART_ONLY: &[&str] = &[
    "peer_staging_messages_max",
    "peer_queue_batches_max",
    "io_memory_bytes",
    "io_ring_depth",
];

/// The configuration in effect, and how to read it again.
pub struct ConfigReload {
    loader: ConfigLoader,
    /// Every key in effect (`section.key`) and its value as JSON text.
    applied: BTreeMap<String, String>,
}

impl ConfigReload {
    /// `started` is the configuration the server started with, as loaded
    /// (before the data dir was resolved).
    pub fn new(loader: ConfigLoader, started: &Config) -> ConfigReload {
        ConfigReload {
            loader,
            applied: flatten(started),
        }
    }
}

/// A key a reload found changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub key: String,
    pub before: String,
    pub after: String,
}

/// What a reload compared: the keys applied now, and those that differ
/// but wait for a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub live: Vec<Changed>,
    pub restart: Vec<String>,
}

impl Diff {
    /// One line for the log and the operator.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.live.is_empty() {
            parts.push("limits unchanged".to_owned());
        } else {
            let changes: Vec<String> = self
                .live
                .iter()
                .map(|c| format!("{} {} -> {}", c.key, c.before, c.after))
                .collect();
            parts.push(format!("limits changed: {}", changes.join(", ")));
        }
        if !self.restart.is_empty() {
            parts.push(format!(
                "changed but in effect only after a restart: {}",
                self.restart.join(", ")
            ));
        }
        parts.join("; ")
    }
}

/// Whether `key` (`section.key`) takes a new value while running.
pub fn is_live(key: &str) -> bool {
    let Some(limit) = key.strip_prefix("limits.") else {
        return false;
    };
    !shard::ShardConfig::RESTART_ONLY.contains(&limit) && !SERVER_RESTART_ONLY.contains(&limit)
}

/// Every key of `config` as `section.key` (nested tables joined with
/// dots) with its value as JSON text.
pub fn flatten(config: &Config) -> BTreeMap<String, String> {
    let value = serde_json::to_value(config).expect("a configuration serializes");
    let mut keys = BTreeMap::new();
    flatten_into(String::new(), &value, &mut keys);
    keys
}

fn flatten_into(prefix: String, value: &serde_json::Value, keys: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(table) if !table.is_empty() => {
            for (key, value) in table {
                let key = match prefix.is_empty() {
                    true => key.clone(),
                    false => format!("{prefix}.{key}"),
                };
                flatten_into(key, value, keys);
            }
        }
        other => {
            keys.insert(prefix, other.to_string());
        }
    }
}

/// The keys of `next` that differ from `applied`, split into live and
/// restart-only.
pub fn diff(applied: &BTreeMap<String, String>, next: &BTreeMap<String, String>) -> Diff {
    let mut diff = Diff::default();
    let keys: std::collections::BTreeSet<&String> = applied.keys().chain(next.keys()).collect();
    let missing = "null".to_owned();
    for key in keys {
        let before = applied.get(key).unwrap_or(&missing);
        let after = next.get(key).unwrap_or(&missing);
        if before == after {
            continue;
        }
        if is_live(key) {
            diff.live.push(Changed {
                key: key.clone(),
                before: before.clone(),
                after: after.clone(),
            });
        } else {
            diff.restart.push(key.clone());
        }
    }
    diff
}

/// A handle that reloads what can change without a restart (SIGHUP and
/// `POST /reload` use it).
#[derive(Clone)]
pub struct Reloader(pub(super) Arc<Shared>);

impl Reloader {
    /// Reads the configuration again and applies what can change live:
    /// the TLS certificate and key (new connections get them) and the
    /// live `[limits]` keys. Ok: what changed, for the log. Err: nothing
    /// changed, and why.
    pub fn reload(&self) -> Result<String, String> {
        let mut config = self.0.config.lock().expect("not poisoned");
        let loaded = match config.as_ref() {
            Some(reload) => Some((reload.loader)().map_err(|error| format!("{error:#}"))?),
            None => None,
        };
        let (Some(reload), Some(loaded)) = (config.as_mut(), loaded) else {
            self.0.room_for(1)?;
            return self.reload_tls();
        };
        let next = flatten(&loaded);
        let diff = diff(&reload.applied, &next);
        // Room for every command first, so a reload is applied to every
        // shard or to none.
        let commands =
            usize::from(self.0.tls_loader.get().is_some()) + usize::from(!diff.live.is_empty());
        self.0.room_for(commands)?;
        let tls = self.reload_tls()?;
        if !diff.live.is_empty() {
            self.send_limits(&loaded)?;
            for change in &diff.live {
                reload
                    .applied
                    .insert(change.key.clone(), change.after.clone());
            }
        }
        Ok(format!("{tls}; {}", diff.describe()))
    }

    fn reload_tls(&self) -> Result<String, String> {
        let Some(loader) = self.0.tls_loader.get() else {
            return Ok("no TLS listener".into());
        };
        let (config, fingerprint) = loader().map_err(|error| format!("{error:#}"))?;
        self.to_every_shard(|| ShardCommand::ReloadTls(config.clone()))?;
        Ok(format!(
            "TLS certificate reloaded: fingerprint {fingerprint}"
        ))
    }

    fn send_limits(&self, loaded: &Config) -> Result<(), String> {
        let map = self.0.map;
        let mut shard = 0;
        self.to_every_shard(|| {
            let limits = loaded.shard_config(shard, map);
            shard += 1;
            ShardCommand::SetLimits(Box::new(limits))
        })
    }

    /// Sends every shard a command. A shard whose channel is full (it has
    /// not taken its commands for a while) fails the reload; the shards
    /// before it have their command.
    fn to_every_shard(&self, mut command: impl FnMut() -> ShardCommand) -> Result<(), String> {
        for (shard, commands) in self.0.commands.iter().enumerate() {
            if commands.try_send(command()).is_err() {
                return Err(format!(
                    "shard {shard} has too many commands waiting; retry"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_live_but_the_tick_and_the_rings() {
        assert!(is_live("limits.send_burst"));
        assert!(is_live("limits.prelogin_connections_max"));
        assert!(!is_live("limits.tick_ms"));
        assert!(!is_live("limits.io_ring_depth"));
        assert!(!is_live("listen"));
        assert!(!is_live("storage.sync_delay_ms"));
    }

    #[test]
    fn a_diff_names_live_changes_with_values_and_the_rest_by_name() {
        let before = Config::default();
        let mut after = Config::default();
        after.limits.shard.send_burst = 7;
        after.limits.shard.tick_ms = 5;
        after.admin.token = Some("secret".into());
        let diff = diff(&flatten(&before), &flatten(&after));
        assert_eq!(
            diff.live,
            [Changed {
                key: "limits.send_burst".into(),
                before: before.limits.shard.send_burst.to_string(),
                after: "7".into(),
            }]
        );
        assert_eq!(diff.restart, ["admin.token", "limits.tick_ms"]);
        assert!(!diff.describe().contains("secret"));
        assert_eq!(
            super::diff(&flatten(&before), &flatten(&before)),
            Diff::default()
        );
    }
}
