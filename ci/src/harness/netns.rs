//! `Net`: one bridge and a network namespace per role, the faults the
//! kernel here allows, and starting processes inside a role's namespace.
//!
//! Layout of one run (`R` = `isle-test-<pid>-<seq>`):
//!
//! ```text
//!  namespace R-hub:   br0 ── port "n1" ── port "n2" ── port "lg" ...
//!                              │veth         │veth        │veth
//!  namespace R-n1:   eth0 10.77.0.1/24       │            │
//!  namespace R-n2:                 eth0 10.77.0.2/24      │
//!  namespace R-lg:                               eth0 10.77.0.3/24
//! ```
//!
//! The bridge lives in a namespace of its own rather than the root one:
//! the machine's own network never sees the run (no device, no route to
//! the subnet), the bridge ports need no globally unique names (they are
//! named after their roles), and several runs can all use 10.77.0.0/24
//! side by side. Every name a run makes starts with `R`, the pid in it
//! tells a later run whether the owner still lives, and everything is
//! removed on drop, also while a test unwinds from a panic.

use std::{
    fs::File,
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, PoisonError,
    },
    time::Duration,
};

use super::{program, Error, Proc};

/// Every namespace and run directory the harness makes starts with this,
/// then `<pid>-<seq>-`.
pub(super) const RUN_PREFIX: &str = "isle-test-";
/// A run directory kept for post-mortem is renamed to start with this, so
/// that no later run cleans it as stale.
const KEPT_PREFIX: &str = "isle-kept-";
/// Set (to anything) to keep every run directory, not only those of
/// failed tests.
const KEEP_ENV: &str = "ISLE_HARNESS_KEEP";
/// The subnet every run uses; role `i` (from 0) gets `.i+1`.
const SUBNET: [u8; 3] = [10, 77, 0];
const SUBNET_PREFIX_LEN: u8 = 24;
/// Roles are also the names of the bridge ports in the hub namespace,
/// and Linux interface names are at most 15 bytes.
const ROLE_BYTES_MAX: usize = 15;
const ROLES_MAX: usize = 250;
/// The hub namespace's suffix, and so a role nobody may take.
const HUB: &str = "hub";
const BRIDGE: &str = "br0";
/// The one interface in each role's namespace besides `lo`.
const INSIDE: &str = "eth0";
/// A locally administered address no interface has: frames sent to it
/// cross the bridge and are taken by nobody.
const BOGUS_LLADDR: &str = "02:00:00:00:00:99";

/// Numbers this process's nets, so that two in one test binary differ.
static NET_SEQ: AtomicU32 = AtomicU32::new(0);
/// Making a net and cleaning stale ones are done one at a time per
/// process: two tests must not both delete the same leftover, and the
/// first `ip netns add` of a boot sets up `/run/netns` in a way that does
/// not take concurrent callers well.
static MAKING: Mutex<()> = Mutex::new(());

/// A bridge and one network namespace per role, with the run's processes
/// logging into one directory. See the module doc for the layout.
///
/// Dropping it kills every process still inside its namespaces (with
/// SIGKILL), deletes the namespaces (and so the veths and the bridge) and
/// removes the run directory, unless the drop happens during a panic or
/// `ISLE_HARNESS_KEEP` is set: then the directory is renamed to
/// `isle-kept-...` and its path printed.
pub struct Net {
    /// `isle-test-<pid>-<seq>`: the start of every name this net makes.
    run: String,
    roles: Vec<String>,
    /// Logs of every process, and the data directories of etcd and nodes.
    dir: PathBuf,
    /// Numbers the log files in the order processes started.
    spawned: AtomicU32,
}

impl Net {
    /// Makes the namespaces for `roles` (in that order they get
    /// 10.77.0.1, .2, ...), joined by veth pairs to one bridge, with
    /// loopback up in each, after removing what crashed earlier runs left
    /// (namespaces and run directories whose owning pid is dead).
    ///
    /// Errors: [`Error::NotRoot`], [`Error::Missing`] when `ip` is not
    /// installed, [`Error::BadRole`], or the failing `ip` command.
    pub fn new(roles: &[&str]) -> Result<Net, Error> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::NotRoot);
        }
        program("ip", "iproute2")?;
        check_roles(roles)?;
        let _making = MAKING.lock().unwrap_or_else(PoisonError::into_inner);
        clean_stale();
        let seq = NET_SEQ.fetch_add(1, Ordering::Relaxed);
        let run = format!("{RUN_PREFIX}{}-{seq}", std::process::id());
        let dir = std::env::temp_dir().join(&run);
        std::fs::create_dir(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        // From here on, drop undoes whatever part was made.
        let net = Net {
            run,
            roles: roles.iter().map(|role| role.to_string()).collect(),
            dir,
            spawned: AtomicU32::new(0),
        };
        net.make_hub()?;
        for role in roles {
            net.make_role(role)?;
        }
        Ok(net)
    }

    /// The address of `role` on the bridge.
    ///
    /// Panics for a role the net was not made with: that is a mistake in
    /// the test, not a condition to handle.
    pub fn addr(&self, role: &str) -> Ipv4Addr {
        let index = self
            .index(role)
            .unwrap_or_else(|error| panic!("Net::addr: {error}"));
        let [a, b, c] = SUBNET;
        Ipv4Addr::new(a, b, c, index as u8 + 1)
    }

    /// `isle-test-<pid>-<seq>`: the start of every name this net makes.
    pub fn name(&self) -> &str {
        &self.run
    }

    /// The roles, in the order they were given.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// The namespace of `role`, as `ip netns` names it
    /// (`ip netns exec NAME ...` for poking at a kept run by hand).
    pub fn namespace(&self, role: &str) -> Result<String, Error> {
        self.index(role)?;
        Ok(format!("{}-{role}", self.run))
    }

    /// Every namespace this net made, the hub last.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = (self.roles.iter())
            .map(|role| format!("{}-{role}", self.run))
            .collect();
        names.push(self.hub());
        names
    }

    /// The run directory: process logs (`NN-label.stdout`, `.stderr`) and
    /// data directories.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many processes this net has started: the number the next
    /// one's log files get.
    pub fn spawned(&self) -> u32 {
        self.spawned.load(Ordering::Relaxed)
    }

    /// Starts `command` inside `role`'s namespace (the child enters it
    /// with `setns` between fork and exec, so the pid is the program's
    /// own), with stdin from /dev/null and stdout and stderr in the run
    /// directory under `label`.
    pub fn spawn(&self, role: &str, label: &str, mut command: Command) -> Result<Proc, Error> {
        let netns = self.open_namespace(role)?;
        let number = self.spawned.fetch_add(1, Ordering::Relaxed);
        let base = self.dir.join(format!("{number:02}-{label}"));
        Proc::spawn(&mut command, netns, label, &base)
    }

    /// Runs `command` in `role`'s namespace to its end, at most
    /// `timeout`, and returns its stdout; a non-zero exit is an
    /// [`Error::Command`] with its stderr. Its output stays in the run
    /// directory like any process's.
    pub fn run(
        &self,
        role: &str,
        label: &str,
        command: Command,
        timeout: Duration,
    ) -> Result<String, Error> {
        let described = format!("{command:?}");
        let mut process = self.spawn(role, label, command)?;
        let status = process.wait(timeout)?;
        if !status.success() {
            return Err(Error::Command {
                command: described,
                status,
                stderr: process.stderr_tail(),
            });
        }
        process.stdout()
    }

    /// Runs `work` on a thread that has entered `role`'s namespace, so a
    /// socket it makes belongs there (a socket keeps its namespace for
    /// life, whichever thread uses it later). A panic in `work` goes on
    /// in the caller.
    pub fn within<T: Send>(&self, role: &str, work: impl FnOnce() -> T + Send) -> Result<T, Error> {
        let netns = self.open_namespace(role)?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                // SAFETY: setns on a descriptor we own, for this thread
                // only; it changes which namespace new sockets join.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(work())
            });
            match thread.join() {
                Ok(result) => result.map_err(Error::io(format!("entering {role}'s namespace"))),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// A TCP connection from `from`'s namespace to `to`, giving up after
    /// `timeout`. Failing to enter the namespace is an error too.
    pub fn connect(&self, from: &str, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.within(from, || TcpStream::connect_timeout(&to, timeout))
            .map_err(io::Error::other)?
    }

    /// A listener on `role`'s address and `port` (0: the kernel picks).
    pub fn listen(&self, role: &str, port: u16) -> io::Result<TcpListener> {
        let addr = SocketAddr::from((self.addr(role), port));
        self.within(role, || TcpListener::bind(addr))
            .map_err(io::Error::other)?
    }

    /// A silent two-way partition of `role`: its bridge port goes down, so
    /// every frame to or from it is dropped without an error to anyone
    /// (its own interface sees the carrier go). Undone by [`Net::heal`].
    pub fn cut(&self, role: &str) -> Result<(), Error> {
        self.index(role)?;
        self.ip_in(&self.hub(), &["link", "set", role, "down"])
    }

    /// Undoes [`Net::cut`]: the port forwards again at once (the bridge
    /// runs no spanning tree, so there is no listening delay).
    pub fn heal(&self, role: &str) -> Result<(), Error> {
        self.index(role)?;
        self.ip_in(&self.hub(), &["link", "set", role, "up"])
    }

    /// A silent one-way drop: what `from` sends to `to` goes to a link
    /// address nobody has (a permanent neighbour entry in `from`'s
    /// namespace), while `to` still reaches `from`. Sends succeed;
    /// nothing arrives. Undone by [`Net::unblackhole`].
    pub fn blackhole(&self, from: &str, to: &str) -> Result<(), Error> {
        let peer = self.addr_checked(to)?.to_string();
        let args = ["neigh", "replace", &peer, "lladdr", BOGUS_LLADDR];
        let args = [&args[..], &["dev", INSIDE, "nud", "permanent"]].concat();
        self.ip_in(&self.namespace(from)?, &args)
    }

    /// Undoes [`Net::blackhole`]: the entry goes, and the next packet
    /// resolves `to`'s real link address again.
    pub fn unblackhole(&self, from: &str, to: &str) -> Result<(), Error> {
        let peer = self.addr_checked(to)?.to_string();
        self.ip_in(
            &self.namespace(from)?,
            &["neigh", "del", &peer, "dev", INSIDE],
        )
    }

    fn hub(&self) -> String {
        format!("{}-{HUB}", self.run)
    }

    fn index(&self, role: &str) -> Result<usize, Error> {
        (self.roles.iter().position(|known| known == role)).ok_or_else(|| Error::UnknownRole {
            role: role.to_owned(),
            known: self.roles.join(", "),
        })
    }

    fn addr_checked(&self, role: &str) -> Result<Ipv4Addr, Error> {
        self.index(role).map(|_| self.addr(role))
    }

    fn open_namespace(&self, role: &str) -> Result<File, Error> {
        let path = Path::new("/run/netns").join(self.namespace(role)?);
        File::open(&path).map_err(Error::io(format!("opening {}", path.display())))
    }

    fn make_hub(&self) -> Result<(), Error> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        self.ip_in(&hub, &["link", "set", "lo", "up"])?;
        self.ip_in(&hub, &["link", "add", BRIDGE, "type", "bridge"])?;
        self.ip_in(&hub, &["link", "set", BRIDGE, "up"])
    }

    /// A namespace for `role`, a veth pair from its `eth0` to the bridge
    /// port named after the role, and its address.
    fn make_role(&self, role: &str) -> Result<(), Error> {
        let (hub, inside) = (self.hub(), self.namespace(role)?);
        ip(&["netns", "add", &inside])?;
        self.ip_in(&inside, &["link", "set", "lo", "up"])?;
        let pair = ["link", "add", role, "type", "veth", "peer", "name", INSIDE];
        self.ip_in(&hub, &[&pair[..], &["netns", &inside]].concat())?;
        self.ip_in(&hub, &["link", "set", role, "master", BRIDGE])?;
        self.ip_in(&hub, &["link", "set", role, "up"])?;
        let addr = format!("{}/{SUBNET_PREFIX_LEN}", self.addr(role));
        self.ip_in(&inside, &["addr", "add", &addr, "dev", INSIDE])?;
        self.ip_in(&inside, &["link", "set", INSIDE, "up"])
    }

    fn ip_in(&self, namespace: &str, args: &[&str]) -> Result<(), Error> {
        ip(&[&["-n", namespace][..], args].concat()).map(drop)
    }

    /// Keeps the run directory (renamed so that no run cleans it) when a
    /// test is failing or the environment asks for it; removes it
    /// otherwise.
    fn put_away_dir(&self) {
        if std::thread::panicking() || std::env::var_os(KEEP_ENV).is_some() {
            let name = self.run.replacen(RUN_PREFIX, KEPT_PREFIX, 1);
            let kept = self.dir.with_file_name(name);
            match std::fs::rename(&self.dir, &kept) {
                Ok(()) => eprintln!("harness: logs and data kept in {}", kept.display()),
                Err(error) => eprintln!("harness: keeping {}: {error}", self.dir.display()),
            }
        } else if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("harness: removing {}: {error}", self.dir.display());
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for namespace in self.namespaces() {
            remove_namespace(&namespace);
        }
        self.put_away_dir();
    }
}

fn check_roles(roles: &[&str]) -> Result<(), Error> {
    if roles.len() > ROLES_MAX {
        return Err(Error::BadRole(format!(
            "{} roles (at most {ROLES_MAX})",
            roles.len()
        )));
    }
    for (at, role) in roles.iter().enumerate() {
        let well_formed = (1..=ROLE_BYTES_MAX).contains(&role.len())
            && role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !well_formed || *role == HUB || roles[..at].contains(role) {
            return Err(Error::BadRole(role.to_string()));
        }
    }
    Ok(())
}

/// Runs `ip` with `args` and returns its stdout.
fn ip(args: &[&str]) -> Result<String, Error> {
    let output = Command::new(program("ip", "iproute2")?)
        .args(args)
        .output()
        .map_err(Error::io("running ip"))?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("ip {}", args.join(" ")),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Kills what runs inside `namespace` and deletes it; a namespace that
/// does not exist (a half-made net) is no error. Failures are printed,
/// not returned: this runs in `drop`.
fn remove_namespace(namespace: &str) {
    if !Path::new("/run/netns").join(namespace).exists() {
        return;
    }
    // A namespace outlives its name while a process is inside, and with
    // it the veths and the bridge.
    if let Ok(pids) = ip(&["netns", "pids", namespace]) {
        for pid in pids.split_whitespace().filter_map(|pid| pid.parse().ok()) {
            // SAFETY: kill has no memory preconditions; the pid was read
            // just now from inside a namespace only this run uses.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Err(error) = ip(&["netns", "del", namespace]) {
        eprintln!("harness: {error}");
    }
}

/// Removes the namespaces and run directories of runs whose process is
/// gone (a test binary killed before its drops ran).
fn clean_stale() {
    let listed = ip(&["netns", "list"]).unwrap_or_default();
    // Lines are `NAME` or `NAME (id: N)`.
    for name in listed
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        if owner_is_gone(name) {
            remove_namespace(name);
        }
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_is_gone(&name) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether `name` is a run's name (`isle-test-<pid>-...`) whose pid is no
/// longer a process. A reused pid keeps a leftover until that process
/// ends too; the next run then cleans it.
fn owner_is_gone(name: &str) -> bool {
    let pid = name
        .strip_prefix(RUN_PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<libc::pid_t>().ok());
    let Some(pid) = pid else {
        return false;
    };
    // SAFETY: signal 0 only asks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    !alive
}

#[cfg(test)]
mod tests {
    use super::{check_roles, owner_is_gone};

    #[test]
    fn roles_are_short_lowercase_unique_and_not_the_hub() {
        assert!(check_roles(&["etcd", "n1", "n2", "lg"]).is_ok());
        assert!(check_roles(&["abcdefghijklmno"]).is_ok());
        for bad in [
            &["abcdefghijklmnop"][..],
            &[""],
            &["N1"],
            &["n-1"],
            &["hub"],
            &["n1", "n1"],
        ] {
            assert!(check_roles(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn only_run_names_of_dead_processes_are_stale() {
        let own = format!("isle-test-{}-0-hub", std::process::id());
        assert!(!owner_is_gone(&own));
        assert!(!owner_is_gone("isle-kept-1-0"));
        assert!(!owner_is_gone("isle-test-x-0"));
        assert!(!owner_is_gone("other"));
        // Beyond the kernel's pid_max (at most 2^22): never a process.
        assert!(owner_is_gone("isle-test-99999999-0-n1"));
    }
}
