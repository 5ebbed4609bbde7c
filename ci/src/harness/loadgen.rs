//! `Loadgen`: a loadgen run in a role's namespace, started in the
//! background so that faults can happen during it, and its JSON report
//! (`--json`: one object on the last line of stdout) collected at the end,
//! with the timeline of its `--report` directory where the scenario
//! writes one.

use std::{
    path::PathBuf,
    process::{Command, ExitStatus},
    time::Duration,
};

use super::{Binaries, Error, Net, Proc};

/// The scenarios that take `--report DIR` (a JSON document with the
/// timeline, charts, a page).
const REPORTING: [&str; 5] = ["chat", "groups", "presence", "idle", "storm"];

/// A loadgen run. Dropping it before [`Loadgen::finish`] kills it.
pub struct Loadgen {
    process: Proc,
    /// Its `--report` directory, for the scenarios that write one.
    report_dir: Option<PathBuf>,
}

/// What a loadgen run reported, and how it exited (non-zero when it
/// counted lost messages or could not connect: the report says which).
#[derive(Debug)]
pub struct Report {
    /// The JSON object of its last stdout line.
    pub json: serde_json::Value,
    /// `report.json` of its `--report` directory (parameters, summary,
    /// latency curve, timeline), for the scenarios that write one.
    pub document: Option<serde_json::Value>,
    pub status: ExitStatus,
}

/// One second of a run's timeline, as loadgen counts it (for chat,
/// messages sent and delivered in that second).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    /// Seconds since the load began, at the end of the tick.
    pub t_s: f64,
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
}

impl Loadgen {
    /// Starts `loadgen ARGS --json` in `role`'s namespace; `args` begin
    /// with the scenario (`chat`, `groups`, ...). Scenarios that can
    /// write a report also get `--report` into the run directory, unless
    /// `args` name one.
    pub fn start(
        net: &Net,
        binaries: &Binaries,
        role: &str,
        args: &[impl AsRef<str>],
    ) -> Result<Loadgen, Error> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let scenario = args.first().copied().unwrap_or("run");
        let label = format!("loadgen-{role}-{scenario}");
        let mut command = Command::new(&binaries.loadgen);
        command.args(&args).arg("--json").env("RUST_LOG", "warn");
        let mut report_dir = None;
        if REPORTING.contains(&scenario) && !args.contains(&"--report") {
            let dir = net.dir().join(format!("{label}-{}", net.spawned()));
            command.arg("--report").arg(&dir);
            report_dir = Some(dir);
        }
        let process = net.spawn(role, &label, command)?;
        Ok(Loadgen {
            process,
            report_dir,
        })
    }

    /// [`Loadgen::start`], then [`Loadgen::finish`].
    pub fn run(
        net: &Net,
        binaries: &Binaries,
        role: &str,
        args: &[impl AsRef<str>],
        timeout: Duration,
    ) -> Result<Report, Error> {
        Loadgen::start(net, binaries, role, args)?.finish(timeout)
    }

    /// The loadgen process (its pid, logs, signals).
    pub fn process(&mut self) -> &mut Proc {
        &mut self.process
    }

    /// Waits at most `timeout` for the run to end (then kills it: an
    /// [`Error::Timeout`]) and parses its report. A run that printed no
    /// JSON is an [`Error::Output`].
    pub fn finish(mut self, timeout: Duration) -> Result<Report, Error> {
        let status = self.process.wait(timeout)?;
        let stdout = self.process.stdout()?;
        let last = stdout.lines().last().unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(last).map_err(|error| {
            let details = self.process.details();
            Error::Output {
                label: self.process.label().to_owned(),
                problem: format!("exited with {status}; last line is not JSON ({error}){details}"),
                stdout: self.process.stdout_path().to_owned(),
            }
        })?;
        let document = (self.report_dir.as_ref())
            .and_then(|dir| std::fs::read_to_string(dir.join("report.json")).ok())
            .and_then(|text| serde_json::from_str(&text).ok());
        Ok(Report {
            json,
            document,
            status,
        })
    }
}

impl Report {
    /// A counter of the report (`lost`, `sent`, `delivered`,
    /// `duplicates`, `reordered`, `connect_failures`, ...).
    pub fn count(&self, name: &str) -> Result<u64, Error> {
        self.json[name].as_u64().ok_or_else(|| Error::Output {
            label: "loadgen".to_owned(),
            problem: format!("no counter {name} in {}", self.json),
            stdout: Default::default(),
        })
    }

    /// The run's timeline, one tick a second, from its report document.
    pub fn timeline(&self) -> Result<Vec<Tick>, Error> {
        let bad = |problem: &str| Error::Output {
            label: "loadgen".to_owned(),
            problem: problem.to_owned(),
            stdout: Default::default(),
        };
        let document = (self.document.as_ref()).ok_or_else(|| bad("no --report document"))?;
        let ticks = document["timeline"].as_array();
        let ticks = ticks.ok_or_else(|| bad("no timeline in the report document"))?;
        let field = |tick: &serde_json::Value, name: &str| {
            tick[name]
                .as_f64()
                .ok_or_else(|| bad(&format!("a tick without {name}: {tick}")))
        };
        (ticks.iter())
            .map(|tick| {
                Ok(Tick {
                    t_s: field(tick, "t_s")?,
                    sent_per_s: field(tick, "sent_per_s")?,
                    delivered_per_s: field(tick, "delivered_per_s")?,
                })
            })
            .collect()
    }
}
