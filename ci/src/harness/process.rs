//! `Proc`: a process the harness started inside a namespace, with its
//! output in files and the signals the fault tests send.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use super::Error;

/// How often waits look at the process and its output again.
const POLL_MS: u64 = 10;
/// Lines of stderr an error shows.
const STDERR_TAIL_LINES: usize = 20;

/// A running (or ended, not yet dropped) process in a namespace. Its
/// stdout and stderr are files (`<base>.stdout`, `<base>.stderr` in the
/// run directory) rather than pipes: nothing has to drain them, a test
/// that stops reading cannot block the process, and they are there to
/// read after the test.
///
/// Dropping it sends SIGKILL (which also ends a stopped process) and
/// reaps it.
pub struct Proc {
    label: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Set once the child is reaped; its pid may then be anyone's, so no
    /// signal is sent after.
    status: Option<ExitStatus>,
    /// Bytes of stdout that [`Proc::wait_for_line`] has looked at, and
    /// of stderr that [`Proc::wait_for_stderr_line`] has.
    read_bytes: usize,
    stderr_read_bytes: usize,
}

impl Proc {
    /// Starts `command` in the namespace `netns` (an open
    /// `/run/netns/NAME`), output into `base` + `.stdout`/`.stderr`.
    ///
    /// The child enters the namespace with `setns` between fork and exec
    /// rather than through `ip netns exec`: the pid is the program's own
    /// from the start, a missing program is an error from `spawn` rather
    /// than an exit status of `ip`, and nothing but the network namespace
    /// changes (no mount namespace, /sys left alone).
    pub(super) fn spawn(
        command: &mut Command,
        netns: File,
        label: &str,
        base: &Path,
    ) -> Result<Proc, Error> {
        let with = |suffix: &str| {
            let mut path = base.as_os_str().to_owned();
            path.push(suffix);
            PathBuf::from(path)
        };
        let (stdout, stderr) = (with(".stdout"), with(".stderr"));
        let create = |path: &Path| {
            File::create(path).map_err(Error::io(format!("creating {}", path.display())))
        };
        command
            .stdin(Stdio::null())
            .stdout(create(&stdout)?)
            .stderr(create(&stderr)?);
        let fd = netns.as_raw_fd();
        // SAFETY: setns is a plain system call, async-signal-safe; the
        // closure touches nothing but the descriptor, which `netns` keeps
        // open until spawn returns.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(Error::io(format!("starting {label} ({command:?})")))?;
        drop(netns);
        Ok(Proc {
            label: label.to_owned(),
            child,
            stdout,
            stderr,
            status: None,
            read_bytes: 0,
            stderr_read_bytes: 0,
        })
    }

    /// The name its logs are under.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process id (valid until the process is reaped).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, then reaps it. Returns the exit status (of the signal,
    /// or of an earlier exit).
    pub fn kill(&mut self) -> Result<ExitStatus, Error> {
        if let Some(status) = self.try_status()? {
            return Ok(status);
        }
        self.signal(libc::SIGKILL)?;
        self.wait(Duration::from_secs(10))
    }

    /// SIGSTOP: the process freezes; its sockets stay open and the kernel
    /// still completes TCP handshakes for its listeners.
    pub fn stop(&mut self) -> Result<(), Error> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT, after [`Proc::stop`].
    pub fn cont(&mut self) -> Result<(), Error> {
        self.signal(libc::SIGCONT)
    }

    /// Sends `signal` (SIGTERM, say). An error once the process has been
    /// reaped: its pid may belong to another process by then.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<(), Error> {
        if let Some(status) = self.try_status()? {
            return Err(Error::Exited {
                label: self.label.clone(),
                status,
                what: format!("signal {signal}"),
                details: self.details(),
            });
        }
        // SAFETY: our own unreaped child: the pid cannot have been reused.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } != 0 {
            let what = format!("sending signal {signal} to {}", self.label);
            return Err(Error::io(what)(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Its exit status if it has ended (reaping it), `None` while it runs.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>, Error> {
        if self.status.is_none() {
            let what = format!("waiting for {}", self.label);
            self.status = self.child.try_wait().map_err(Error::io(what))?;
        }
        Ok(self.status)
    }

    /// Waits at most `timeout` for it to end on its own.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(format!("{} to exit", self.label), timeout));
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
    }

    /// Waits at most `timeout` for a whole line of stdout containing
    /// `pattern`, and returns it (without its newline). Each call goes on
    /// after the line the previous one returned, so successive calls find
    /// successive events. Ending without such a line is
    /// [`Error::Exited`]; the error carries the stderr tail.
    pub fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<String, Error> {
        self.wait_for_line_in(Stream::Stdout, pattern, timeout)
    }

    /// [`Proc::wait_for_line`] on stderr (where loadgen says how far it
    /// got), with its own place in it.
    pub fn wait_for_stderr_line(
        &mut self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        self.wait_for_line_in(Stream::Stderr, pattern, timeout)
    }

    fn wait_for_line_in(
        &mut self,
        stream: Stream,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read before asking whether it ended: a line printed just
            // before exiting is then still seen.
            let ended = self.try_status()?;
            if let Some(line) = self.next_line_with(stream, pattern)? {
                return Ok(line);
            }
            if let Some(status) = ended {
                return Err(Error::Exited {
                    label: self.label.clone(),
                    status,
                    what: format!("a line with {pattern:?}"),
                    details: self.details(),
                });
            }
            if Instant::now() >= deadline {
                let what = format!("{} printing a line with {pattern:?}", self.label);
                return Err(self.timeout(what, timeout));
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> Result<String, Error> {
        std::fs::read_to_string(&self.stdout)
            .map_err(Error::io(format!("reading {}", self.stdout.display())))
    }

    /// Where its stdout goes.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// Where its stderr goes.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// The last lines of its stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
    }

    /// Its stderr tail and where its logs are: the `details` of errors.
    pub(super) fn details(&self) -> String {
        format!(
            "\n--- last lines of {}:\n{}\n--- stdout: {}",
            self.stderr.display(),
            self.stderr_tail(),
            self.stdout.display()
        )
    }

    pub(super) fn timeout(&self, what: String, waited: Duration) -> Error {
        Error::Timeout {
            what,
            waited_ms: waited.as_millis() as u64,
            details: self.details(),
        }
    }

    /// The first complete line of `stream` after the bytes looked at so
    /// far that contains `pattern`, moving past it; lines without it are
    /// passed over for good.
    fn next_line_with(&mut self, stream: Stream, pattern: &str) -> Result<Option<String>, Error> {
        let path = match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        let read_bytes = match stream {
            Stream::Stdout => &mut self.read_bytes,
            Stream::Stderr => &mut self.stderr_read_bytes,
        };
        let unread = text.get(*read_bytes..).unwrap_or_default();
        let mut consumed = 0;
        for line in unread.split_inclusive('\n') {
            if !line.ends_with('\n') {
                break;
            }
            consumed += line.len();
            if line.contains(pattern) {
                *read_bytes += consumed;
                return Ok(Some(line.trim_end_matches('\n').to_owned()));
            }
        }
        *read_bytes += consumed;
        Ok(None)
    }
}

/// Which of a process's outputs a wait reads.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            eprintln!("harness: {error}");
        }
    }
}
