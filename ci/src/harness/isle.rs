//! `Node`: an isle server in a role's namespace, on a data directory that
//! outlives its processes, so a test can kill it and start it again.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

use super::{Binaries, Error, Net, Proc};

/// isle prints one line starting with this on stdout once it serves.
const READY_PREFIX: &str = "isle ready";
/// From start to the ready line. A fresh data directory prepares log
/// segments first (small ones with `--segment-bytes`); a restart replays
/// the log. Debug builds on two busy cores are slow at both.
const READY_TIMEOUT_MS: u64 = 30_000;

/// An isle server in `role`'s namespace: `isle --data-dir <run dir>/isle-
/// <role> FLAGS`, with `RUST_LOG=info` on stderr. Dropping it kills the
/// process.
pub struct Node<'net> {
    net: &'net Net,
    binary: PathBuf,
    role: String,
    data_dir: PathBuf,
    flags: Vec<String>,
    process: Option<Proc>,
    /// The ready line of the running process: its addresses.
    ready: String,
    starts: u32,
}

impl<'net> Node<'net> {
    /// Starts isle in `role`'s namespace with `flags` (say
    /// `--plaintext-listen 10.77.0.2:5223 --test-numbers +1555:111111`)
    /// and waits for its ready line. Errors: the process exits or prints
    /// no ready line in time (the error has its stderr tail).
    pub fn start(
        net: &'net Net,
        binaries: &Binaries,
        role: &str,
        flags: &[impl AsRef<str>],
    ) -> Result<Node<'net>, Error> {
        let mut node = Node {
            net,
            binary: binaries.isle.clone(),
            role: role.to_owned(),
            data_dir: net.dir().join(format!("isle-{role}")),
            flags: flags.iter().map(|f| f.as_ref().to_owned()).collect(),
            process: None,
            ready: String::new(),
            starts: 0,
        };
        net.namespace(role)?;
        node.launch()?;
        Ok(node)
    }

    /// Starts it again with the same flags on the same data directory
    /// (killing the running process first, if any) and waits for the
    /// ready line.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill()?;
        self.launch()
    }

    /// `kill -9` of the running process; `None` if none runs.
    pub fn kill(&mut self) -> Result<Option<ExitStatus>, Error> {
        match self.process.take() {
            Some(mut process) => process.kill().map(Some),
            None => Ok(None),
        }
    }

    /// The running process (for SIGSTOP and SIGCONT, its logs), `None`
    /// after [`Node::kill`].
    pub fn process(&mut self) -> Option<&mut Proc> {
        self.process.as_mut()
    }

    /// The role's address on the bridge.
    pub fn addr(&self) -> Ipv4Addr {
        self.net.addr(&self.role)
    }

    /// Where its data lives across restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The running process's ready line.
    pub fn ready_line(&self) -> &str {
        &self.ready
    }

    /// A `name=value` field of the ready line (`plaintext`, `tls`,
    /// `admin`, `cert`, `shards`).
    pub fn ready_field(&self, name: &str) -> Result<&str, Error> {
        let prefix = format!("{name}=");
        (self.ready.split_whitespace())
            .find_map(|field| field.strip_prefix(&prefix))
            .ok_or_else(|| {
                self.bad_output(format!("no {name}= in the ready line {:?}", self.ready))
            })
    }

    /// The plaintext listener (needs `--plaintext-listen`).
    pub fn plaintext(&self) -> Result<SocketAddr, Error> {
        self.socket_field("plaintext")
    }

    /// The admin listener (metrics, health, `isle ctl`).
    pub fn admin(&self) -> Result<SocketAddr, Error> {
        self.socket_field("admin")
    }

    fn socket_field(&self, name: &str) -> Result<SocketAddr, Error> {
        let value = self.ready_field(name)?;
        value
            .parse()
            .map_err(|_| self.bad_output(format!("{name}={value} is not an address")))
    }

    fn bad_output(&self, problem: String) -> Error {
        Error::Output {
            label: format!("isle in {}", self.role),
            problem,
            stdout: (self.process.as_ref())
                .map(|process| process.stdout_path().to_owned())
                .unwrap_or_default(),
        }
    }

    fn launch(&mut self) -> Result<(), Error> {
        let mut command = Command::new(&self.binary);
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.flags)
            .env("RUST_LOG", "info");
        let label = format!("isle-{}-{}", self.role, self.starts);
        self.starts += 1;
        let mut process = self.net.spawn(&self.role, &label, command)?;
        let timeout = Duration::from_millis(READY_TIMEOUT_MS);
        self.ready = process.wait_for_line(READY_PREFIX, timeout)?;
        self.process = Some(process);
        Ok(())
    }
}
