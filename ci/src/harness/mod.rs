//! A harness for tests of several isle nodes on one machine.
//!
//! A [`Net`] is a bridge and one network namespace per role (`etcd`,
//! `n1`, `n2`, `lg`, ...), each with an address on one private subnet.
//! Processes start inside a role's namespace as [`Proc`]s whose stdout
//! and stderr go to files in the run's directory; [`Etcd`] is one or
//! three etcd members, [`Node`] an isle server (restartable on its data
//! directory), [`Loadgen`] a loadgen run whose JSON report is collected
//! at the end. Faults are what this kernel offers without netem or
//! iptables: a role's bridge port taken down ([`Net::cut`]), a one-way
//! drop through a bogus neighbour entry ([`Net::blackhole`]), and the
//! signals on [`Proc`].
//!
//! A test reads as the scenario it plays:
//!
//! ```no_run
//! # fn main() -> Result<(), ci::harness::Error> {
//! use ci::harness::{Binaries, Etcd, Loadgen, Net, Node};
//! let bins = Binaries::get()?;
//! let net = Net::new(&["etcd", "n1", "n2", "lg"])?;
//! let etcd = Etcd::start(&net, &["etcd"])?;
//! let flags = |role: &str| vec!["--plaintext-listen".to_owned(), format!("{}:5223", net.addr(role))];
//! let n1 = Node::start(&net, bins, "n1", &flags("n1"))?;
//! let mut n2 = Node::start(&net, bins, "n2", &flags("n2"))?;
//! let run = Loadgen::start(&net, bins, "lg", &["chat", "--target", &n1.plaintext()?.to_string()])?;
//! net.cut("n1")?;
//! std::thread::sleep(std::time::Duration::from_secs(2));
//! net.heal("n1")?;
//! n2.kill()?;
//! n2.restart()?;
//! let report = run.finish(std::time::Duration::from_secs(60))?;
//! assert_eq!(report.count("lost")?, 0);
//! # drop(etcd); Ok(()) }
//! ```
//!
//! Everything needs root (namespaces, `setns`) and `ip` from iproute2;
//! without them [`Net::new`] says what is missing instead of skipping.

mod binaries;
mod cluster;
mod etcd;
mod isle;
mod loadgen;
pub mod metrics;
mod netns;
mod process;

use std::{path::PathBuf, process::ExitStatus};

pub use binaries::{target_dir, without_package_env, Binaries};
pub use cluster::{node_flags, Cluster, PEER_PORT, PHONE_PORT};
pub use etcd::Etcd;
pub use isle::Node;
pub use loadgen::{Loadgen, Report, Tick};
pub use netns::Net;
pub use process::Proc;

/// What can go wrong in the harness. Each variant carries what a person
/// needs to see why: the command, the process's stderr tail, the paths
/// of its logs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Namespaces and `setns` need CAP_SYS_ADMIN and CAP_NET_ADMIN.
    #[error(
        "the multi-node harness needs root (network namespaces, setns); run the tests as root"
    )]
    NotRoot,
    /// A program the harness runs is not installed.
    #[error("`{program}` is not installed (Debian package `{package}`; `cargo run -p ci -- test` installs it)")]
    Missing {
        program: &'static str,
        package: &'static str,
    },
    /// A role name that is not 1 to 15 bytes of `a-z0-9`, is `hub`, or
    /// is given twice.
    #[error("bad role name {0:?}: 1 to 15 bytes of a-z and 0-9, unique, not `hub`")]
    BadRole(String),
    /// A role this `Net` was not made with.
    #[error("no namespace for role {role:?} (this net has {known})")]
    UnknownRole { role: String, known: String },
    /// A command the harness runs to set things up failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Something awaited did not happen in time.
    #[error("{what}: not within {waited_ms} ms{details}")]
    Timeout {
        what: String,
        waited_ms: u64,
        /// The stderr tail and log paths of the process concerned, if any.
        details: String,
    },
    /// A process ended while the harness was waiting for it to get ready.
    #[error("{label} exited with {status} while waiting for {what}{details}")]
    Exited {
        label: String,
        status: ExitStatus,
        what: String,
        details: String,
    },
    /// A process's output was not what the harness expected (a ready line
    /// without a field, a report that is not JSON).
    #[error("unexpected output from {label}: {problem} (stdout: {stdout})")]
    Output {
        label: String,
        problem: String,
        stdout: PathBuf,
    },
}

impl Error {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// Where `name` is installed: on the PATH or in the sbin directories a
/// user's PATH may lack. `package` is the Debian package that has it.
pub(crate) fn program(name: &'static str, package: &'static str) -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(Error::Missing {
            program: name,
            package,
        })
}
