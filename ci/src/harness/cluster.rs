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
        let config = net.dir().join("cluster.toml");
        let toml = format!("[cluster]\nbootstrap_nodes = {}\n", roles.len());
        std::fs::write(&config, toml).map_err(Error::io("writing cluster.toml"))?;
        let config = config.to_string_lossy().into_owned();
        let mut nodes = Vec::new();
        for (i, role) in roles.iter().enumerate() {
            let mut flags = node_flags(net, role);
            let addr = net.addr(role);
            let (phones, peers) = (
                format!("{addr}:{PHONE_PORT}"),
                format!("{addr}:{PEER_PORT}"),
            );
            let id = (i + 1).to_string();
            let more = ["--config", &config, "--node-id", &id, "--etcd", etcd];
            flags.extend(more.map(str::to_owned));
            flags.extend(["--peer-listen".to_owned(), peers]);
            flags.extend(["--advertise".to_owned(), phones]);
            nodes.push(Node::start(net, binaries, role, &flags)?);
        }
        let cluster = Cluster {
            net,
            nodes,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        };
        cluster.await_assigned()?;
        Ok(cluster)
    }

    /// The nodes' phone-facing addresses, comma separated: loadgen's
    /// `--target`.
    pub fn targets(&self) -> String {
        let targets: Vec<String> = (self.roles.iter())
            .map(|role| format!("{}:{PHONE_PORT}", self.net.addr(role)))
            .collect();
        targets.join(",")
    }

    /// The cluster part of node `index`'s `/status`, asked from inside its
    /// namespace; `Null` when it does not answer.
    pub fn status(&self, index: usize) -> serde_json::Value {
        let Ok(admin) = self.nodes[index].admin() else {
            return serde_json::Value::Null;
        };
        let url = format!("http://{admin}/status");
        let text = self.net.within(&self.roles[index], || {
            let answer = ureq::get(&url).call().ok()?;
            answer.into_string().ok()
        });
        let status: serde_json::Value = (text.ok().flatten())
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        status["cluster"].clone()
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
