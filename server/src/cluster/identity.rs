//! Which cluster node a data directory belongs to, written in it the first
//! time a node of a cluster starts on it, and checked at every start.
//!
//! A node's data holds only the accounts of the partitions it owns, and a
//! single node's data holds every account: started as the other, either
//! would serve accounts whose history is elsewhere, or sign up numbers
//! that already have accounts. So the server refuses to start a data dir
//! under another node id or cluster, a node's data dir as a single node,
//! and a single node's data (logs already written) as a node of a cluster
//! (moving accounts into a cluster is not done yet).

use std::{fs, io::Write, path::Path};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The file in the data dir that names its node.
pub const NODE_FILE: &str = "cluster-node.json";

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    pub node_id: u16,
    /// The cluster's etcd prefix: a node belongs to one cluster.
    pub prefix: String,
}

/// A start the data dir does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "data dir belongs to node {found} of the cluster at {found_prefix}; \
         this start is node {wanted} of {wanted_prefix}"
    )]
    OtherNode {
        found: u16,
        found_prefix: String,
        wanted: u16,
        wanted_prefix: String,
    },
    #[error(
        "data dir belongs to node {0} of a cluster: start it with [cluster] \
         (node_id {0}), not as a single node"
    )]
    ClusterNode(u16),
    #[error(
        "data dir holds a single node's data: it cannot become a node of a \
         cluster (accounts cannot move into one yet); start the node on an empty data dir"
    )]
    SingleNodeData,
}

/// Which process holds a node id, as its record in etcd says: the host
/// and the data dir (which one process at a time locks). A restart on the
/// same data dir is the same instance, so it may revoke its predecessor's
/// lease; another data dir claiming a live node's id is not.
pub fn instance(data_dir: &Path) -> String {
    let mut name = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
    let host = match ok {
        true => {
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        }
        false => "?".to_owned(),
    };
    let dir = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    format!("{host}:{}", dir.display())
}

/// Checks `data_dir` against this start (`wanted`: the node it is, if
/// any) and, for a node's first start on a fresh data dir, writes its
/// identity (synced). `has_data`: logs were written in it before.
pub fn check(data_dir: &Path, wanted: Option<&NodeIdentity>, has_data: bool) -> anyhow::Result<()> {
    let path = data_dir.join(NODE_FILE);
    let found: Option<NodeIdentity> = match fs::read(&path) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged", path.display()))?,
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    match (found, wanted) {
        (Some(found), Some(wanted)) if found == *wanted => Ok(()),
        (Some(found), Some(wanted)) => Err(IdentityError::OtherNode {
            found: found.node_id,
            found_prefix: found.prefix,
            wanted: wanted.node_id,
            wanted_prefix: wanted.prefix.clone(),
        }
        .into()),
        (Some(found), None) => Err(IdentityError::ClusterNode(found.node_id).into()),
        (None, Some(_)) if has_data => Err(IdentityError::SingleNodeData.into()),
        (None, Some(wanted)) => write(data_dir, &path, wanted),
        (None, None) => Ok(()),
    }
}

fn write(data_dir: &Path, path: &Path, identity: &NodeIdentity) -> anyhow::Result<()> {
    let temporary = data_dir.join(format!("{NODE_FILE}.new"));
    let mut file = fs::File::create(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(&serde_json::to_vec(identity)?)?;
    file.sync_all()?;
    fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    fs::File::open(data_dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u16) -> NodeIdentity {
        NodeIdentity {
            node_id: id,
            prefix: "/isle/v1/".into(),
        }
    }

    #[test]
    fn a_data_dir_keeps_the_node_it_first_served() {
        let dir = tempfile::tempdir().unwrap();
        check(dir.path(), None, false).unwrap();
        check(dir.path(), Some(&node(2)), false).unwrap();
        check(dir.path(), Some(&node(2)), true).unwrap();
        let error = check(dir.path(), Some(&node(3)), true).unwrap_err();
        assert!(error.to_string().contains("node 2"), "{error}");
        let error = check(dir.path(), None, true).unwrap_err();
        assert!(error.to_string().contains("single node"), "{error}");

        let single = tempfile::tempdir().unwrap();
        let error = check(single.path(), Some(&node(1)), true).unwrap_err();
        assert!(error.to_string().contains("single node's data"), "{error}");
        assert!(!single.path().join(NODE_FILE).exists());

        fs::write(dir.path().join(NODE_FILE), b"{not json").unwrap();
        assert!(check(dir.path(), Some(&node(2)), true).is_err());
    }
}
