//! The server the dashboard watches and the load it is put under: a
//! release `isle` with two shards and test numbers, and loadgen runs one
//! after the other in phases, so that every chart shows change.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// How long isle may take to exit after SIGTERM.
const STOP_TIMEOUT_MS: u64 = 10_000;

/// The test-number range and code the server accepts, and loadgen's
/// default code.
const TEST_NUMBERS: &str = "+1555:111111";

/// One stretch of the run: a loadgen invocation, or none (idle).
pub struct Phase {
    pub name: &'static str,
    /// What the phase does, in a sentence for the description.
    pub summary: &'static str,
    /// loadgen's scenario and arguments (`--target` is added); empty for
    /// an idle phase.
    pub loadgen: &'static str,
    /// How long an idle phase lasts (a loadgen phase lasts as loadgen).
    pub idle_s: u64,
}

/// The phases of `ci dashboard`, about two minutes and a half in all.
/// Each loadgen phase uses its own range of numbers, so its phones sign
/// up afresh rather than meet the keys of the phase before.
pub const PHASES: [Phase; 4] = [
    Phase {
        name: "moderate",
        summary: "3,000 phones send 2,000 messages a second between random pairs; \
                  20 phones a second hang up and stay away for 3 s, so messages \
                  wait in their mailboxes meanwhile",
        loadgen: "chat --first-phone +15550000000 --phones 3000 --rate 2000 \
                  --duration 40 --warmup 1 --churn-per-s 20 --offline-ms 3000 --json",
        idle_s: 0,
    },
    Phase {
        name: "high",
        summary: "3,000 other phones send 8,000 messages a second; 5% of them read \
                  nothing (and send nothing) until sending stops, so what is sent \
                  to them waits in their mailboxes until they read it at the end",
        loadgen: "chat --first-phone +15551000000 --phones 3000 --rate 8000 \
                  --duration 40 --warmup 1 --stalled-share 0.05 --json",
        idle_s: 0,
    },
    Phase {
        name: "flood",
        summary: "20 phones send as fast as they can, 64 messages in flight each: \
                  past the allowance of 1,000 messages a second per account, so the \
                  server refuses some with RateLimited (and the next ones of that \
                  conversation with OutOfOrder until the refused one comes again)",
        loadgen: "chat --first-phone +15552000000 --phones 20 --window 64 \
                  --duration 15 --warmup 1 --json",
        idle_s: 0,
    },
    Phase {
        name: "idle",
        summary: "no phone connected",
        loadgen: "",
        idle_s: 30,
    },
];

/// What happened in one phase, for the description.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub name: String,
    pub summary: String,
    /// The loadgen command line (binary name and arguments), or empty.
    pub command: String,
    pub start_s: f64,
    pub end_s: f64,
    /// loadgen's JSON report (its last line), or `null` when idle.
    pub report: serde_json::Value,
}

/// A running isle with its data in a temporary directory.
pub struct Server {
    child: Child,
    /// `host:port` of the admin listener (`/metrics`).
    pub admin: String,
    /// `host:port` of the plaintext phone port.
    pub plaintext: String,
    /// The command line it was started with, for the description.
    pub command: String,
    _data: tempfile::TempDir,
}

impl Server {
    /// Starts `BIN/isle` with two shards, a plaintext port and the test
    /// numbers, and waits for its ready line.
    pub fn start(bin: &Path) -> anyhow::Result<Server> {
        let data = tempfile::tempdir()?;
        let args = [
            "--shards",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--plaintext-listen",
            "127.0.0.1:0",
            "--test-numbers",
            TEST_NUMBERS,
        ];
        let mut child = Command::new(bin.join("isle"))
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("starting isle")?;
        let mut ready = String::new();
        let stdout = child.stdout.take().context("isle's stdout")?;
        BufReader::new(stdout).read_line(&mut ready)?;
        let field = |name: &str| {
            ready
                .split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{name}=")).map(str::to_owned))
                .with_context(|| format!("no {name} in isle's ready line {ready:?}"))
        };
        Ok(Server {
            admin: field("admin")?,
            plaintext: field("plaintext")?,
            command: format!("isle --data-dir TEMP {}", args.join(" ")),
            child,
            _data: data,
        })
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: signalling a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("isle exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("isle did not exit within {STOP_TIMEOUT_MS} ms of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // After `stop` this finds the process reaped and does nothing.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `phases` one after the other against `server`; a loadgen run
/// that fails stops the whole (the picture would show a broken run).
pub fn drive(bin: &Path, server: &Server, phases: &[Phase]) -> anyhow::Result<Vec<PhaseRecord>> {
    let mut records = Vec::new();
    for phase in phases {
        eprintln!("ci: dashboard phase {}: {}", phase.name, phase.summary);
        let start_s = super::now_s();
        let (command, report) = if phase.loadgen.is_empty() {
            std::thread::sleep(Duration::from_secs(phase.idle_s));
            (String::new(), serde_json::Value::Null)
        } else {
            let args: Vec<&str> = phase.loadgen.split_whitespace().collect();
            run_loadgen(bin, &server.plaintext, &args)?
        };
        records.push(PhaseRecord {
            name: phase.name.to_owned(),
            summary: phase.summary.to_owned(),
            command,
            start_s,
            end_s: super::now_s(),
            report,
        });
    }
    Ok(records)
}

/// One loadgen run to its end: its command line and its JSON report.
fn run_loadgen(
    bin: &Path,
    target: &str,
    args: &[&str],
) -> anyhow::Result<(String, serde_json::Value)> {
    let (scenario, rest) = args.split_first().context("loadgen without a scenario")?;
    let output = Command::new(bin.join("loadgen"))
        .arg(scenario)
        .args(["--target", target])
        .args(rest)
        .stderr(Stdio::null())
        .output()
        .context("running loadgen")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let command = format!("loadgen {scenario} --target ADDR {}", rest.join(" "));
    if !output.status.success() {
        bail!("{command} exited with {}:\n{stdout}", output.status);
    }
    let last = stdout.lines().last().context("loadgen printed nothing")?;
    let report = serde_json::from_str(last).context("loadgen's last line is not JSON")?;
    Ok((command, report))
}
