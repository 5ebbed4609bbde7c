//! `Etcd`: one or three etcd members (Debian's `etcd-server`, 3.4), each
//! in its role's namespace with its data in the run directory, and
//! `etcdctl` run from any namespace against them.
//!
//! Each member listens on its bridge address only, never on loopback of
//! the root namespace: a system etcd the Debian package may have started
//! (127.0.0.1:2379 in the root namespace) is a different socket in a
//! different namespace and cannot clash.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use super::{program, Error, Net, Proc};

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// A member's start until it answers healthy: a one-member cluster needs
/// about a second (it elects itself); three need a round of elections.
const READY_TIMEOUT_MS: u64 = 20_000;
/// How long one `/health` request may take before it counts as no answer.
const HEALTH_REQUEST_MS: u64 = 500;
const HEALTH_POLL_MS: u64 = 50;
/// How long an `etcdctl` call may run; its own command timeout is 5 s.
const CTL_TIMEOUT_MS: u64 = 15_000;

/// An etcd cluster of one member per role, each in that role's namespace.
/// Dropping it kills the members (their data goes with the run
/// directory).
pub struct Etcd<'net> {
    net: &'net Net,
    members: Vec<Member>,
}

struct Member {
    role: String,
    data_dir: PathBuf,
    /// `None` after [`Etcd::kill`], until [`Etcd::restart`].
    process: Option<Proc>,
    starts: u32,
}

impl<'net> Etcd<'net> {
    /// Starts one member in each of `roles` (1 for most tests, 3 for an
    /// etcd outage) as one new cluster, and waits until every member
    /// answers healthy on `/health`. Errors: [`Error::Missing`] without
    /// `etcd`, or a member that exits or does not get healthy in time.
    pub fn start(net: &'net Net, roles: &[&str]) -> Result<Etcd<'net>, Error> {
        program("etcd", "etcd-server")?;
        let mut etcd = Etcd {
            net,
            members: Vec::new(),
        };
        for role in roles {
            net.namespace(role)?;
            etcd.members.push(Member {
                role: role.to_string(),
                data_dir: net.dir().join(format!("etcd-{role}")),
                process: None,
                starts: 0,
            });
        }
        // All members first: none gets healthy before it has a quorum.
        for index in 0..etcd.members.len() {
            etcd.launch(index)?;
        }
        for index in 0..etcd.members.len() {
            etcd.wait_healthy(index)?;
        }
        Ok(etcd)
    }

    /// The client URLs, `http://10.77.0.N:2379`, one per member.
    pub fn endpoints(&self) -> Vec<String> {
        (self.members.iter())
            .map(|member| format!("http://{}", self.client_addr(&member.role)))
            .collect()
    }

    /// The client URLs comma-joined: the form `--etcd` and `etcdctl
    /// --endpoints` take.
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// Runs `etcdctl --endpoints=<all members> ARGS` in `from`'s namespace
    /// and returns its stdout; a non-zero exit is an error with its
    /// stderr. Needs `etcdctl` (package `etcd-client`).
    pub fn ctl(&self, from: &str, args: &[&str]) -> Result<String, Error> {
        let label = format!("etcdctl-{from}");
        let timeout = Duration::from_millis(CTL_TIMEOUT_MS);
        self.net.run(from, &label, self.ctl_command(args)?, timeout)
    }

    /// The command `etcdctl --endpoints=<all members> ARGS`, for one that
    /// runs on (`lease keep-alive`, `watch`): start it with [`Net::spawn`].
    pub fn ctl_command(&self, args: &[&str]) -> Result<Command, Error> {
        let mut command = Command::new(program("etcdctl", "etcd-client")?);
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints_arg()))
            .args(args);
        Ok(command)
    }

    /// The process of the member in `role`, for SIGSTOP and the like;
    /// `None` while it is killed.
    pub fn member(&mut self, role: &str) -> Result<Option<&mut Proc>, Error> {
        let index = self.index(role)?;
        Ok(self.members[index].process.as_mut())
    }

    /// `kill -9` of the member in `role`.
    pub fn kill(&mut self, role: &str) -> Result<(), Error> {
        let index = self.index(role)?;
        if let Some(mut process) = self.members[index].process.take() {
            process.kill()?;
        }
        Ok(())
    }

    /// Starts the member in `role` again on its data directory (killing
    /// it first if it runs) and waits until it answers healthy.
    pub fn restart(&mut self, role: &str) -> Result<(), Error> {
        self.kill(role)?;
        let index = self.index(role)?;
        self.launch(index)?;
        self.wait_healthy(index)
    }

    fn index(&self, role: &str) -> Result<usize, Error> {
        (self.members.iter().position(|member| member.role == role)).ok_or_else(|| {
            Error::UnknownRole {
                role: role.to_owned(),
                known: format!("etcd members {}", self.roles().join(", ")),
            }
        })
    }

    fn roles(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.role.as_str()).collect()
    }

    fn client_addr(&self, role: &str) -> SocketAddr {
        SocketAddr::from((self.net.addr(role), CLIENT_PORT))
    }

    fn peer_url(&self, role: &str) -> String {
        format!("http://{}:{PEER_PORT}", self.net.addr(role))
    }

    /// Starts member `index`. On a data directory that already holds a
    /// member, etcd ignores the `--initial-*` flags and rejoins.
    fn launch(&mut self, index: usize) -> Result<(), Error> {
        let member = &self.members[index];
        let role = member.role.as_str();
        let cluster: Vec<String> = (self.roles().iter())
            .map(|other| format!("{other}={}", self.peer_url(other)))
            .collect();
        let client_url = format!("http://{}", self.client_addr(role));
        let mut command = Command::new(program("etcd", "etcd-server")?);
        command
            .args(["--name", role, "--data-dir"])
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &self.peer_url(role)])
            .args(["--initial-advertise-peer-urls", &self.peer_url(role)])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", self.net.name()])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let label = format!("etcd-{role}-{}", member.starts);
        let process = self.net.spawn(role, &label, command)?;
        let member = &mut self.members[index];
        member.process = Some(process);
        member.starts += 1;
        Ok(())
    }

    /// Polls member `index`'s `/health` from its own namespace until it
    /// says `"health":"true"`.
    fn wait_healthy(&mut self, index: usize) -> Result<(), Error> {
        let role = self.members[index].role.clone();
        let addr = self.client_addr(&role);
        let timeout = Duration::from_millis(READY_TIMEOUT_MS);
        let deadline = Instant::now() + timeout;
        loop {
            if self.net.within(&role, || healthy(addr))? {
                return Ok(());
            }
            let process = (self.members[index].process.as_mut()).expect("launched before waiting");
            if let Some(status) = process.try_status()? {
                return Err(Error::Exited {
                    label: process.label().to_owned(),
                    status,
                    what: format!("etcd at {addr} to be healthy"),
                    details: process.details(),
                });
            }
            if Instant::now() >= deadline {
                return Err(process.timeout(format!("etcd at {addr} healthy"), timeout));
            }
            std::thread::sleep(Duration::from_millis(HEALTH_POLL_MS));
        }
    }
}

/// Whether etcd at `addr` answers `GET /health` with
/// `{"health":"true"}`; any failure to ask is a no.
fn healthy(addr: SocketAddr) -> bool {
    let patience = Duration::from_millis(HEALTH_REQUEST_MS);
    let ask = || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, patience)?;
        stream.set_read_timeout(Some(patience))?;
        write!(
            stream,
            "GET /health HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    };
    ask().is_ok_and(|answer| answer.contains("\"health\":\"true\""))
}
