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

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::sync::oneshot;

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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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

/// What a reload did, for the log and the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    /// The fingerprint of the certificate every shard now gives new TLS
    /// connections (`None`: the server has no TLS listener).
    pub fingerprint: Option<String>,
    /// Whether that certificate differs from the one served before.
    pub certificate_changed: bool,
    /// `[limits]` keys every shard applies now.
    pub limits_changed: Vec<Changed>,
    /// Keys that differ from what is in effect but wait for a restart
    /// (named without their values: some are secrets).
    pub restart_needed: Vec<String>,
}

impl Reloaded {
    /// One line for the log and `isle ctl reload`.
    pub fn describe(&self) -> String {
        let tls = match (&self.fingerprint, self.certificate_changed) {
            (Some(fingerprint), true) => {
                format!("TLS certificate reloaded: fingerprint {fingerprint}")
            }
            (Some(fingerprint), false) => format!(
                "TLS certificate reloaded, unchanged: fingerprint {fingerprint} (the same \
                 files; under systemd's LoadCredential, a restart copies new ones)"
            ),
            (None, _) => "no TLS listener".to_owned(),
        };
        let diff = Diff {
            live: self.limits_changed.clone(),
            restart: self.restart_needed.clone(),
        };
        format!("{tls}; {}", diff.describe())
    }
}

/// Reloads asked for and not yet begun, and whether one is running: a
/// request that comes while one runs waits for the next, which every
/// request waiting then shares (reloads are coalesced, so they never pile
/// up, and each request is answered by a reload that read the files after
/// it came).
#[derive(Default)]
pub(super) struct ReloadQueue {
    running: bool,
    /// Who asked (for the log), and where to answer.
    waiting: Vec<(&'static str, oneshot::Sender<Result<Reloaded, String>>)>,
}

/// Who asked for a reload, as the log names it.
pub const ASKED_BY_SIGNAL: &str = "SIGHUP";
pub const ASKED_BY_ADMIN: &str = "the admin listener";

/// A handle that reloads what can change without a restart (SIGHUP and
/// `POST /reload` use it).
#[derive(Clone)]
pub struct Reloader(pub(super) Arc<Shared>);

impl Reloader {
    /// Reads the configuration again and applies what can change live:
    /// the TLS certificate and key (new connections get them) and the
    /// live `[limits]` keys. Answers once every shard has taken them, so
    /// a connection made after the answer gets the new certificate. Err:
    /// why not (when the configuration or the identity did not load,
    /// nothing changed).
    pub async fn reload(&self) -> Result<Reloaded, String> {
        let answer = self.request(ASKED_BY_ADMIN);
        answer
            .await
            .unwrap_or_else(|_| Err("the control thread stopped".into()))
    }

    /// [`Reloader::reload`] for a thread outside the control thread's
    /// runtime (the SIGHUP thread): waits for the answer.
    pub fn reload_blocking(&self) -> Result<Reloaded, String> {
        let answer = self.request(ASKED_BY_SIGNAL);
        answer
            .blocking_recv()
            .unwrap_or_else(|_| Err("the control thread stopped".into()))
    }

    /// Queues a request, and starts the task that runs reloads on the
    /// control thread unless it runs already.
    fn request(&self, asked_by: &'static str) -> oneshot::Receiver<Result<Reloaded, String>> {
        let (answer, answered) = oneshot::channel();
        let mut queue = self.0.reloads.lock().expect("not poisoned");
        queue.waiting.push((asked_by, answer));
        if !queue.running {
            queue.running = true;
            self.0.runtime.spawn(self.clone().run_reloads());
        }
        answered
    }

    /// Runs one reload for every request waiting, until none waits, and
    /// logs each with who asked for it.
    async fn run_reloads(self) {
        loop {
            let waiting = {
                let mut queue = self.0.reloads.lock().expect("not poisoned");
                if queue.waiting.is_empty() {
                    queue.running = false;
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            let result = self.reload_once().await;
            let asked_by = asked_by(waiting.iter().map(|(asked_by, _)| *asked_by));
            match &result {
                Ok(done) => log::info!("reload ({asked_by}): {}", done.describe()),
                Err(error) => log::error!("reload ({asked_by}) failed, nothing changed: {error}"),
            }
            for (_, answer) in waiting {
                let _ = answer.send(result.clone());
            }
        }
    }

    /// One reload: loads, sends every shard its commands, and waits until
    /// each took them.
    async fn reload_once(&self) -> Result<Reloaded, String> {
        let (loaded, diff) = {
            let config = self.0.config.lock().expect("not poisoned");
            match config.as_ref() {
                Some(reload) => {
                    let loaded = (reload.loader)().map_err(|error| format!("{error:#}"))?;
                    let diff = diff(&reload.applied, &flatten(&loaded));
                    (Some(loaded), diff)
                }
                None => (None, Diff::default()),
            }
        };
        // Room for every command first, so a reload is applied to every
        // shard or to none.
        let commands =
            usize::from(self.0.tls_loader.get().is_some()) + usize::from(!diff.live.is_empty());
        self.0.room_for(commands.max(1))?;
        let tls = match self.0.tls_loader.get() {
            Some(loader) => Some(loader().map_err(|error| format!("{error:#}"))?),
            None => None,
        };
        let mut taken = Vec::new();
        if let Some((config, _)) = &tls {
            taken.extend(self.to_every_shard(|reply| ShardCommand::ReloadTls {
                config: config.clone(),
                taken: reply,
            })?);
        }
        if let (Some(loaded), false) = (&loaded, diff.live.is_empty()) {
            let map = self.0.map;
            let mut shard = 0;
            taken.extend(self.to_every_shard(|reply| {
                let limits = loaded.shard_config(shard, map);
                shard += 1;
                ShardCommand::SetLimits {
                    limits: Box::new(limits),
                    taken: reply,
                }
            })?);
            let mut config = self.0.config.lock().expect("not poisoned");
            if let Some(reload) = config.as_mut() {
                for change in &diff.live {
                    reload
                        .applied
                        .insert(change.key.clone(), change.after.clone());
                }
            }
        }
        let wait = Duration::from_millis(super::SHARD_ANSWER_WAIT_MS);
        for (shard, answer) in taken {
            if tokio::time::timeout(wait, answer).await.is_err() {
                return Err(format!(
                    "shard {shard} did not take the reload within {} s; it stays queued and \
                     applies when the shard takes its commands",
                    wait.as_secs()
                ));
            }
        }
        let fingerprint = tls.map(|(_, fingerprint)| fingerprint);
        let served = &mut *self.0.tls_fingerprint.lock().expect("not poisoned");
        let certificate_changed = fingerprint.is_some() && *served != fingerprint;
        if fingerprint.is_some() {
            served.clone_from(&fingerprint);
        }
        Ok(Reloaded {
            fingerprint,
            certificate_changed,
            limits_changed: diff.live,
            restart_needed: diff.restart,
        })
    }

    /// Sends every shard a command made with a reply channel, and returns
    /// where each shard's acknowledgement comes. A shard whose channel is
    /// full (it has not taken its commands for a while) fails the reload;
    /// the shards before it have their command.
    fn to_every_shard(
        &self,
        mut command: impl FnMut(oneshot::Sender<()>) -> ShardCommand,
    ) -> Result<Vec<(usize, oneshot::Receiver<()>)>, String> {
        let mut taken = Vec::new();
        for (shard, commands) in self.0.commands.iter().enumerate() {
            let (reply, answer) = oneshot::channel();
            if commands.try_send(command(reply)).is_err() {
                return Err(format!(
                    "shard {shard} has too many commands waiting; retry"
                ));
            }
            taken.push((shard, answer));
        }
        Ok(taken)
    }
}

/// Who asked for one reload: `SIGHUP`, or `the admin listener x3` when
/// three requests shared it.
fn asked_by(origins: impl Iterator<Item = &'static str>) -> String {
    let mut counted: Vec<(&str, usize)> = Vec::new();
    for origin in origins {
        match counted.iter_mut().find(|(known, _)| *known == origin) {
            Some((_, count)) => *count += 1,
            None => counted.push((origin, 1)),
        }
    }
    let named: Vec<String> = counted
        .into_iter()
        .map(|(origin, count)| match count {
            1 => origin.to_owned(),
            _ => format!("{origin} x{count}"),
        })
        .collect();
    format!("asked by {}", named.join(" and "))
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
