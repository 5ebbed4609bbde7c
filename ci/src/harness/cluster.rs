//! `Cluster`: isle nodes of one cluster, one per role, each with one
//! shard, registered with one etcd and given the partitions, as the
//! cluster tests and the cluster benchmark start them.

use std::time::{Duration, Instant};

use super::{Binaries, Error, Net, Node};

/// The port of each node's phone-facing (plaintext) and peer listeners.
pub const PHONE_PORT: u16 = 5223;
pub const PEER_PORT: u16 = 5300;

/// How long the nodes take to register and be given every partition.
const ASSIGNED_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest wait for a node's admin listener to answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The partitions a cluster's map spreads over its nodes.
const PARTITIONS: u64 = 1024;

/// The flags every node gets, single or clustered: plaintext on
/// [`PHONE_PORT`], one shard, small log segments, test numbers. (A
/// cluster's nodes add `--advertise` and the rest of `[cluster]`.)
pub fn node_flags(net: &Net, role: &str) -> Vec<String> {
    let phones = format!("{}:{PHONE_PORT}", net.addr(role));
    [
        "--plaintext-listen",
        &phones,
        "--no-tls",
        "--shards",
        "1",
        "--segment-bytes",
        "1048576",
        "--test-numbers",
        "+1555:111111",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Nodes 1, 2, ... in `roles`, started and given the partitions.
pub struct Cluster<'net> {
    net: &'net Net,
    pub nodes: Vec<Node<'net>>,
    roles: Vec<String>,
    /// The `--config` file every node gets (`bootstrap_nodes`).
    config: String,
    /// etcd's endpoints, comma separated.
    etcd: String,
}

impl<'net> Cluster<'net> {
    /// Starts node `i + 1` in `roles[i]`, each registering with `etcd`
    /// (its endpoints, comma separated) and bootstrapping once all are
    /// live, and waits until the partitions are assigned. Errors: a node
    /// did not start, or the map was not made in time.
    pub fn start(
        net: &'net Net,
        binaries: &Binaries,
        roles: &[&str],
        etcd: &str,
    ) -> Result<Cluster<'net>, Error> {
        Cluster::start_with(net, binaries, roles, etcd, "")
    }

    /// [`Cluster::start`] with more keys of the `[cluster]` section in
    /// every node's configuration file (`cluster_keys`: TOML lines, such
    /// as `replication = "sync"`).
    pub fn start_with(
        net: &'net Net,
        binaries: &Binaries,
        roles: &[&str],
        etcd: &str,
        cluster_keys: &str,
    ) -> Result<Cluster<'net>, Error> {
        // The nodes prove their membership to each other with a shared
        // secret, as a deployment's should.
        // Named after the first role: two clusters may share a network.
        let first = roles.first().copied().unwrap_or("cluster");
        let secret = net.dir().join(format!("cluster-{first}.secret"));
        let key: String = (0..32).map(|_| format!("{:02x}", rand_byte())).collect();
        std::fs::write(&secret, key).map_err(Error::io("writing the cluster secret"))?;
        let config = net.dir().join(format!("cluster-{first}.toml"));
        let toml = format!(
            "[cluster]\nbootstrap_nodes = {}\nsecret_file = {:?}\n{cluster_keys}\n",
            roles.len(),
            secret.display().to_string()
        );
        std::fs::write(&config, toml).map_err(Error::io("writing the cluster configuration"))?;
        let mut cluster = Cluster {
            net,
            nodes: Vec::new(),
            roles: Vec::new(),
            config: config.to_string_lossy().into_owned(),
            etcd: etcd.to_owned(),
        };
        for role in roles {
            cluster.start_node(binaries, role)?;
        }
        cluster.await_assigned()?;
        Ok(cluster)
    }

    /// Starts node `nodes.len() + 1` in `role` after the bootstrap: it
    /// registers and learns the map, but owns no partition (partitions
    /// move only at the bootstrap for now). Errors: it did not start.
    pub fn join(&mut self, binaries: &Binaries, role: &str) -> Result<(), Error> {
        self.start_node(binaries, role)
    }

    fn start_node(&mut self, binaries: &Binaries, role: &str) -> Result<(), Error> {
        let mut flags = node_flags(self.net, role);
        let addr = self.net.addr(role);
        let (phones, peers) = (
            format!("{addr}:{PHONE_PORT}"),
            format!("{addr}:{PEER_PORT}"),
        );
        let id = (self.nodes.len() + 1).to_string();
        let more = [
            "--config",
            &self.config,
            "--node-id",
            &id,
            "--etcd",
            &self.etcd,
        ];
        flags.extend(more.map(str::to_owned));
        flags.extend(["--peer-listen".to_owned(), peers]);
        flags.extend(["--advertise".to_owned(), phones]);
        self.nodes
            .push(Node::start(self.net, binaries, role, &flags)?);
        self.roles.push(role.to_owned());
        Ok(())
    }

    /// Waits until every node sees `count` nodes live. Errors: not in
    /// time.
    pub fn await_live(&self, count: usize) -> Result<(), Error> {
        let deadline = Instant::now() + ASSIGNED_TIMEOUT;
        loop {
            let live: Vec<usize> = (0..self.nodes.len())
                .map(|index| {
                    self.status(index)["nodes_live"]
                        .as_array()
                        .map_or(0, Vec::len)
                })
                .collect();
            if live.iter().all(|&l| l == count) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{count} nodes live in every node's view (seen: {live:?})"),
                    waited_ms: ASSIGNED_TIMEOUT.as_millis() as u64,
                    details: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The nodes' phone-facing addresses, comma separated: loadgen's
    /// `--target`.
    pub fn targets(&self) -> String {
        self.targets_of(0..self.nodes.len())
    }

    /// [`Cluster::targets`] of the nodes at `indices` only.
    pub fn targets_of(&self, indices: std::ops::Range<usize>) -> String {
        let targets: Vec<String> = (self.roles[indices].iter())
            .map(|role| format!("{}:{PHONE_PORT}", self.net.addr(role)))
            .collect();
        targets.join(",")
    }

    /// The cluster part of node `index`'s `/status`, asked from inside its
    /// namespace; `Null` when it does not answer.
    pub fn status(&self, index: usize) -> serde_json::Value {
        let status: serde_json::Value = (self.admin_get(index, "/status"))
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        status["cluster"].clone()
    }

    /// Node `index`'s `/metrics` text (read it with
    /// [`metrics::samples`](super::metrics::samples)); `None` when it
    /// does not answer.
    pub fn metrics(&self, index: usize) -> Option<String> {
        self.admin_get(index, "/metrics")
    }

    /// The body of a GET of `path` on node `index`'s admin listener, from
    /// inside its namespace.
    fn admin_get(&self, index: usize, path: &str) -> Option<String> {
        let admin = self.nodes[index].admin().ok()?;
        let url = format!("http://{admin}{path}");
        let text = self.net.within(&self.roles[index], || {
            // A stopped node accepts (the kernel does) and never answers.
            let agent = ureq::AgentBuilder::new().timeout(ADMIN_TIMEOUT).build();
            let answer = agent.get(&url).call().ok()?;
            answer.into_string().ok()
        });
        text.ok().flatten()
    }

    /// Waits until every node sees every node live and owns partitions,
    /// [`PARTITIONS`] in all.
    fn await_assigned(&self) -> Result<(), Error> {
        let deadline = Instant::now() + ASSIGNED_TIMEOUT;
        loop {
            let owned: Vec<u64> = (0..self.nodes.len())
                .map(|index| {
                    let status = self.status(index);
                    let live = status["nodes_live"].as_array().map_or(0, Vec::len);
                    match live == self.nodes.len() {
                        true => status["partitions_owned"].as_u64().unwrap_or(0),
                        false => 0,
                    }
                })
                .collect();
            if owned.iter().all(|&o| o > 0) && owned.iter().sum::<u64>() == PARTITIONS {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("partitions assigned to every node (owned: {owned:?})"),
                    waited_ms: ASSIGNED_TIMEOUT.as_millis() as u64,
                    details: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A byte that differs from run to run (the secret need not be strong:
/// the test network is private; it must only be the cluster's own).
fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) as u8
}
