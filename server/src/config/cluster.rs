//! `[cluster]`: several nodes serving as one, coordinated through etcd.
//! Without the section the server is a single node and never talks to
//! etcd.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};
use shard::duration;

/// The highest node id: ids name nodes in etcd keys and on the wire.
pub const NODE_ID_MAX: u16 = 4095;
/// The etcd lease a node holds may not be shorter: etcd's own minimum TTL
/// is 2 s, and a keepalive goes out every `lease_ttl_ms / 5`.
pub const LEASE_TTL_MS_MIN: u64 = 2_000;

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id, 1 to [`NODE_ID_MAX`], unique in the cluster and
    /// kept for the life of its data directory (`--node-id`).
    pub node_id: u16,
    /// etcd client URLs (`http://host:port`), tried in turn: a member that
    /// does not answer is skipped (`--etcd URL,URL`).
    pub etcd: Vec<String>,
    /// Where this node listens for the other nodes' links
    /// (`--peer-listen`).
    pub peer_listen: Option<SocketAddr>,
    /// The phone-facing `host:port` other nodes put in the redirects they
    /// send this node's phones (`--advertise`). Default: the TLS listen
    /// address, when it names a host (not 0.0.0.0).
    pub advertise: Option<String>,
    /// Where the other nodes reach the peer listener. Default:
    /// `peer_listen`, when it names a host.
    pub peer_advertise: Option<SocketAddr>,
    /// The node's etcd lease: when it is not renewed for this long the
    /// node counts as gone.
    #[serde(with = "duration::ms")]
    pub lease_ttl_ms: u64,
    /// The first controller assigns the partitions once this many nodes
    /// are registered (only while the cluster has no partition map;
    /// `--bootstrap-nodes`).
    pub bootstrap_nodes: usize,
    /// Where in etcd the cluster keeps its keys.
    pub prefix: String,
    /// A file holding the secret every node of the cluster shares (at
    /// least 16 bytes; surrounding whitespace is trimmed). With it, the
    /// links' handshakes prove membership by an HMAC over each hello and
    /// welcome, and a peer without it is refused; without it, anyone who
    /// reaches the peer port and names a member is taken for it
    /// (docs/security.md, "The peer port").
    pub secret_file: Option<PathBuf>,
    /// Whether each shard's log is shipped to its island's secondary
    /// before phones are told `Sent` (docs/islands.md): `off` (the
    /// default) or `sync`. Every node of a cluster must agree.
    pub replication: Replication,
    /// With replication: closed log segments a shard keeps past its
    /// checkpoint rule for an island secondary that does not hold them
    /// yet (down, or catching up). Past this many the checkpoint goes
    /// ahead, and a secondary that comes back later gets the checkpoint
    /// itself before it catches up from the log.
    pub replica_retain_segments: usize,
    /// With replication: an island left solo because its secondary is
    /// gone is given another live node as its secondary once the
    /// secondary has been gone this long, by the controller; a shorter
    /// absence moves no data.
    #[serde(with = "duration::ms")]
    pub repair_grace_ms: u64,
}

/// `cluster.replication`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// Each node's partitions live on its disk alone.
    #[default]
    Off,
    /// A batch is acknowledged once the primary's and the secondary's
    /// disks hold it (or the primary's alone once etcd says `solo`).
    Sync,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            node_id: 0,
            etcd: Vec::new(),
            peer_listen: None,
            advertise: None,
            peer_advertise: None,
            lease_ttl_ms: 5_000,
            bootstrap_nodes: 1,
            prefix: "/isle/v1/".into(),
            secret_file: None,
            replication: Replication::Off,
            replica_retain_segments: 64,
            repair_grace_ms: 600_000,
        }
    }
}

/// A `[cluster]` section the server cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.node_id is {0}: it must be from 1 to {NODE_ID_MAX}")]
    NodeId(u16),
    #[error("cluster.etcd is empty: name at least one etcd client URL")]
    NoEtcd,
    #[error("cluster.etcd has {0:?}: an etcd client URL is http://host:port")]
    EtcdUrl(String),
    #[error(
        "cluster.etcd has {0:?}: isle talks to etcd over plain http only (it is built \
         without TLS to etcd): name http://host:port and let only the nodes reach \
         etcd's port (docs/security.md)"
    )]
    EtcdTls(String),
    #[error("cluster.peer_listen is not set: the other nodes need somewhere to reach this one")]
    NoPeerListen,
    #[error(
        "cluster.peer_advertise is not set and peer_listen {0} names no host: \
         say where the other nodes reach this one"
    )]
    NoPeerAdvertise(SocketAddr),
    #[error(
        "cluster.advertise is not set and the TLS listener names no host: \
         say which host:port redirects send phones to"
    )]
    NoAdvertise,
    #[error(
        "cluster.advertise is {0:?}: it must be host:port, where redirects send phones \
         (for example 10.0.0.1:5222)"
    )]
    Advertise(String),
    #[error("cluster.lease_ttl_ms is {0}: it must be at least {LEASE_TTL_MS_MIN}")]
    LeaseTtl(u64),
    #[error(
        "cluster.bootstrap_nodes is 0: at least one node must be there to take the partitions"
    )]
    BootstrapNodes,
    #[error("cluster.prefix {0:?} must start and end with /")]
    Prefix(String),
}

impl ClusterError {
    /// The dotted key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            ClusterError::NodeId(_) => "cluster.node_id",
            ClusterError::NoEtcd | ClusterError::EtcdUrl(_) | ClusterError::EtcdTls(_) => {
                "cluster.etcd"
            }
            ClusterError::NoPeerListen => "cluster.peer_listen",
            ClusterError::NoPeerAdvertise(_) => "cluster.peer_advertise",
            ClusterError::NoAdvertise | ClusterError::Advertise(_) => "cluster.advertise",
            ClusterError::LeaseTtl(_) => "cluster.lease_ttl_ms",
            ClusterError::BootstrapNodes => "cluster.bootstrap_nodes",
            ClusterError::Prefix(_) => "cluster.prefix",
        }
    }
}

/// What a node of the cluster runs with, every default resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub node_id: u16,
    pub etcd: Vec<String>,
    pub peer_listen: SocketAddr,
    pub peer_advertise: SocketAddr,
    pub advertise: String,
    pub lease_ttl_ms: u64,
    pub bootstrap_nodes: usize,
    pub prefix: String,
    pub replication: Replication,
    pub repair_grace_ms: u64,
    /// Which process holds the node id: its host and data dir (set by
    /// the server at start; see `cluster::identity::instance`).
    pub instance: String,
}

impl ClusterConfig {
    /// Checks the section and resolves its defaults; `tls_listen` is the
    /// phone-facing TLS address, if any.
    pub fn settings(
        &self,
        tls_listen: Option<SocketAddr>,
    ) -> Result<ClusterSettings, ClusterError> {
        if !(1..=NODE_ID_MAX).contains(&self.node_id) {
            return Err(ClusterError::NodeId(self.node_id));
        }
        if self.etcd.is_empty() {
            return Err(ClusterError::NoEtcd);
        }
        if let Some(bad) = self.etcd.iter().find(|url| url.starts_with("https://")) {
            return Err(ClusterError::EtcdTls(bad.clone()));
        }
        if let Some(bad) = self.etcd.iter().find(|url| !is_etcd_url(url)) {
            return Err(ClusterError::EtcdUrl(bad.clone()));
        }
        let peer_listen = self.peer_listen.ok_or(ClusterError::NoPeerListen)?;
        let peer_advertise = match self.peer_advertise {
            Some(addr) => addr,
            None if !peer_listen.ip().is_unspecified() => peer_listen,
            None => return Err(ClusterError::NoPeerAdvertise(peer_listen)),
        };
        let advertise = match (&self.advertise, tls_listen) {
            (Some(addr), _) => addr.clone(),
            (None, Some(addr)) if !addr.ip().is_unspecified() => addr.to_string(),
            _ => return Err(ClusterError::NoAdvertise),
        };
        if !is_host_port(&advertise) {
            return Err(ClusterError::Advertise(advertise));
        }
        if self.lease_ttl_ms < LEASE_TTL_MS_MIN {
            return Err(ClusterError::LeaseTtl(self.lease_ttl_ms));
        }
        if self.bootstrap_nodes == 0 {
            return Err(ClusterError::BootstrapNodes);
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') {
            return Err(ClusterError::Prefix(self.prefix.clone()));
        }
        Ok(ClusterSettings {
            node_id: self.node_id,
            etcd: self.etcd.clone(),
            peer_listen,
            peer_advertise,
            advertise,
            lease_ttl_ms: self.lease_ttl_ms,
            bootstrap_nodes: self.bootstrap_nodes,
            prefix: self.prefix.clone(),
            replication: self.replication,
            repair_grace_ms: self.repair_grace_ms,
            instance: String::new(),
        })
    }
}

/// `http://host:port`, nothing after the port, the port from 1.
/// (etcd-client is built without TLS: an `https://` URL could never
/// connect.)
fn is_etcd_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let rest = rest.trim_end_matches('/');
    is_host_port(rest)
        && rest
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// `host:port`: a host without spaces or slashes and a port number.
fn is_host_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(|c: char| c.is_whitespace() || c == '/')
                && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ClusterConfig {
        ClusterConfig {
            node_id: 1,
            etcd: vec!["http://10.0.0.9:2379".into()],
            peer_listen: Some("10.0.0.1:5223".parse().unwrap()),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn defaults_resolve_from_the_listeners() {
        let tls = Some("10.0.0.1:5222".parse().unwrap());
        let settings = good().settings(tls).unwrap();
        assert_eq!(settings.advertise, "10.0.0.1:5222");
        assert_eq!(settings.peer_advertise, "10.0.0.1:5223".parse().unwrap());
        let any = Some("0.0.0.0:5222".parse().unwrap());
        assert_eq!(good().settings(any), Err(ClusterError::NoAdvertise));
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let tls = Some("10.0.0.1:5222".parse().unwrap());
        type Spoil = fn(&mut ClusterConfig);
        let cases: [(Spoil, &str); 12] = [
            (|c| c.node_id = 0, "cluster.node_id"),
            (|c| c.etcd.clear(), "cluster.etcd"),
            (|c| c.etcd = vec!["10.0.0.9:2379".into()], "cluster.etcd"),
            (
                |c| c.etcd = vec!["https://10.0.0.9:2379".into()],
                "cluster.etcd",
            ),
            (|c| c.advertise = Some(String::new()), "cluster.advertise"),
            (
                |c| c.advertise = Some("10.0.0.1".into()),
                "cluster.advertise",
            ),
            (
                |c| c.advertise = Some("not an address".into()),
                "cluster.advertise",
            ),
            (
                |c| c.advertise = Some("phones.example:http".into()),
                "cluster.advertise",
            ),
            (
                |c| c.etcd = vec!["http://10.0.0.9:0".into()],
                "cluster.etcd",
            ),
            (|c| c.peer_listen = None, "cluster.peer_listen"),
            (|c| c.lease_ttl_ms = 1_000, "cluster.lease_ttl_ms"),
            (|c| c.prefix = "isle".into(), "cluster.prefix"),
        ];
        for (spoil, key) in cases {
            let mut config = good();
            spoil(&mut config);
            assert_eq!(config.settings(tls).unwrap_err().key(), key);
        }
    }

    #[test]
    fn an_advertised_name_or_address_with_its_port_is_taken() {
        let tls = Some("10.0.0.1:5222".parse().unwrap());
        for addr in ["phones.example:5222", "10.0.0.1:443", "[::1]:5222"] {
            let mut config = good();
            config.advertise = Some(addr.into());
            assert_eq!(config.settings(tls).unwrap().advertise, addr);
        }
    }
}
