//! `cargo run -p ci -- bench`: the same workloads on isle, on mosquitto and
//! on loadgen's bare relay, one server after the other on this machine with
//! the same pinning (server on CPU 0, loadgen on CPU 1), so that what it
//! prints are ratios measured side by side.
//!
//! Three measurements, each repeated `--rounds` times with the servers
//! interleaved (so that slow moments of a shared machine fall on all of
//! them), reported as medians:
//! 1. chat, closed loop: the most each server delivers per second, and per
//!    second of its own CPU;
//! 2. chat, open loop at half of isle's median maximum: p99 latency on isle
//!    and on mosquitto at the same offered rate;
//! 3. slow readers, once, at the same half load on isle and mosquitto: a
//!    tenth of the phones stop reading, and the p99 of the others is
//!    compared with a run where everyone reads;
//! 4. a login storm on isle: logins per second of server CPU.
//!
//! It prints a table and writes `bench.json` (every run, the medians, the
//! ratios, the versions) and each chat run's `--report` directory under
//! `--out`.

use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::{cargo, find_program, packages, root};

/// The benchmark's settings, from `ci bench`'s flags.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Phones in each chat run.
    #[arg(long, default_value_t = 10_000)]
    pub phones: u64,
    /// Seconds of each chat run, warm-up included.
    #[arg(long = "duration", value_name = "SECONDS", default_value_t = 15.0)]
    pub duration_s: f64,
    /// Seconds at the start of each chat run left out of the figures.
    #[arg(long = "warmup", value_name = "SECONDS", default_value_t = 3.0)]
    pub warmup_s: f64,
    /// Times each measurement is repeated (at least once), servers
    /// interleaved.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub rounds: usize,
    /// Phones in the login storm.
    #[arg(long, default_value_t = 18_000)]
    pub storm_phones: u64,
    /// Where `bench.json` and each run's report go.
    #[arg(long, default_value_os_t = root().join("target/bench"))]
    pub out: PathBuf,
}

/// A count of rounds: 0 runs one.
fn at_least_one(value: &str) -> Result<usize, String> {
    let rounds: usize = value
        .parse()
        .map_err(|error| format!("{value:?}: {error}"))?;
    Ok(rounds.max(1))
}

/// The CPU servers are pinned to, and the one loadgen runs on.
const SERVER_CPU: usize = 0;
const LOADGEN_CPU: &str = "1";

/// Seconds loadgen waits after sending for the last deliveries: a server
/// offered more than it can take (mosquitto at isle's half load) has a
/// backlog of several seconds to deliver before `lost` means lost.
const DRAIN_S: &str = "60";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// isle with its default journal: every commit fdatasync'ed before
    /// `Sent`.
    Isle,
    /// isle with `--journal memory`: nothing written, like mosquitto with
    /// persistence off.
    IsleMemory,
    Mosquitto,
    Relay,
}

impl Target {
    const ALL: [Target; 4] = [
        Target::Isle,
        Target::IsleMemory,
        Target::Mosquitto,
        Target::Relay,
    ];

    fn name(self) -> &'static str {
        match self {
            Target::Isle => "isle",
            Target::IsleMemory => "isle-memory",
            Target::Mosquitto => "mosquitto",
            Target::Relay => "relay",
        }
    }
}

/// A server under test; killed when dropped.
struct Server {
    child: Child,
    /// What loadgen's `--target` takes.
    target: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling a child we started; SIGTERM lets isle drain.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pins a child to `cpu` and gives it the hard open-file limit, before it
/// starts (mosquitto does neither itself).
fn pin(command: &mut Command, cpu: usize) {
    // SAFETY: between fork and exec only async-signal-safe calls are made:
    // sched_setaffinity, getrlimit and setrlimit on this process.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            Ok(())
        });
    }
}

/// Reads a child's first stdout line and the `key=` field in it.
fn ready_field(child: &mut Child, key: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .with_context(|| format!("no {key}= in the ready line {line:?}"))
}

fn start(target: Target, bin: &Path) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let (child, target) = match target {
        Target::Isle | Target::IsleMemory => {
            let mut command = Command::new(bin.join("isle"));
            command
                .arg("--data-dir")
                .arg(dir.path())
                .args(["--shards", "1", "--cpus", &SERVER_CPU.to_string()])
                .args(["--no-tls", "--plaintext-listen", "127.0.0.1:0"])
                .args(["--test-numbers", "+1555:111111"]);
            if target == Target::IsleMemory {
                command.args(["--journal", "memory"]);
            }
            let mut child = command
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting isle")?;
            let addr = ready_field(&mut child, "plaintext")?;
            (child, addr)
        }
        Target::Relay => {
            let mut child = Command::new(bin.join("loadgen"))
                .args(["relay", "--listen", "127.0.0.1:0"])
                .args(["--cpu", &SERVER_CPU.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .context("starting the relay")?;
            let addr = ready_field(&mut child, "listen")?;
            (child, addr)
        }
        Target::Mosquitto => {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let config = dir.path().join("mosquitto.conf");
            std::fs::write(&config, mosquitto_config(port))?;
            let mut command = Command::new(find_program("mosquitto").context("no mosquitto")?);
            pin(&mut command, SERVER_CPU);
            let child = command
                .arg("-c")
                .arg(&config)
                .stderr(Stdio::null())
                .spawn()
                .context("starting mosquitto")?;
            let addr = format!("127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(&addr).is_err() {
                if Instant::now() > deadline {
                    bail!("mosquitto did not listen on {addr}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (child, format!("mqtt://{addr}"))
        }
    };
    Ok(Server {
        child,
        target,
        _dir: dir,
    })
}

/// mosquitto as a fair peer: in memory like `isle-memory` (persistence off),
/// no cap on the messages it queues per client (isle has none; mosquitto's
/// default of 1000 would drop acknowledged messages), Nagle off as isle
/// has it, and everything else at its defaults.
fn mosquitto_config(port: u16) -> String {
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         max_queued_messages 0\n\
         max_connections -1\n\
         set_tcp_nodelay true\n\
         user root\n"
    )
}

/// Runs loadgen with `args` and returns its JSON report.
fn loadgen(bin: &Path, args: &[String]) -> anyhow::Result<Value> {
    eprintln!("ci bench: loadgen {}", args.join(" "));
    let output = Command::new(bin.join("loadgen"))
        .args(args)
        .stderr(Stdio::null())
        .output()
        .context("running loadgen")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or("");
    let report: Value = serde_json::from_str(last)
        .with_context(|| format!("loadgen gave no JSON ({}): {stdout}", output.status))?;
    Ok(report)
}

/// Runs loadgen's `scenario` against `server`, pinned and watching the
/// server's process like every run here, with `extra` options.
fn scenario(bin: &Path, name: &str, server: &Server, extra: &[String]) -> anyhow::Result<Value> {
    let mut args: Vec<String> = [name, "--target", &server.target, "--cpus", LOADGEN_CPU]
        .map(str::to_owned)
        .to_vec();
    args.extend(["--server-pid".to_owned(), server.child.id().to_string()]);
    args.push("--json".to_owned());
    args.extend_from_slice(extra);
    loadgen(bin, &args)
}

/// The chat workload's options (chat and slow share them) at `rate`
/// (0: closed loop).
fn workload(options: &Options, rate: u64) -> Vec<String> {
    [
        ("--phones", options.phones.to_string()),
        ("--duration", options.duration_s.to_string()),
        ("--warmup", options.warmup_s.to_string()),
        ("--rate", rate.to_string()),
        ("--drain", DRAIN_S.to_owned()),
    ]
    .into_iter()
    .flat_map(|(name, value)| [name.to_owned(), value])
    .collect()
}

fn chat(
    bin: &Path,
    options: &Options,
    server: &Server,
    rate: u64,
    report_dir: &Path,
) -> anyhow::Result<Value> {
    let mut extra = workload(options, rate);
    let dir = report_dir.to_str().context("utf-8 path")?;
    extra.extend(["--report".to_owned(), dir.to_owned()]);
    scenario(bin, "chat", server, &extra)
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The median of field `name` over the runs of `phase` on `target`.
fn median_of(runs: &[Value], phase: &str, target: &str, name: &str) -> f64 {
    median(
        runs.iter()
            .filter(|r| r["phase"] == phase && r["target"] == target)
            .map(|r| field(&r["report"], name))
            .collect(),
    )
}

fn field(report: &Value, name: &str) -> f64 {
    report[name].as_f64().unwrap_or(f64::NAN)
}

fn version(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, m)| m.trim().to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": kernel.trim(),
    })
}

pub fn bench(options: &Options) -> anyhow::Result<()> {
    packages(&[("mosquitto", "mosquitto")])?;
    cargo(&["build", "--release", "-p", "server", "-p", "loadgen"])?;
    let bin = root().join("target/release");
    std::fs::create_dir_all(&options.out)?;
    let mut runs = Vec::new();
    run_max(&bin, options, &mut runs)?;
    let isle_max = median_of(&runs, "max", "isle", "delivered_per_s");
    let half = (isle_max / 2.0).round() as u64;
    if half > 0 {
        run_half(&bin, options, half, &mut runs)?;
        run_slow(&bin, options, half, &mut runs)?;
    }
    run_storm(&bin, options, &mut runs)?;

    let summary = Summary::new(&runs);
    summary.print(options, half);
    let lost = summary.lost;
    let document = json!({
        "machine": machine(),
        "versions": {
            "isle": version(&bin.join("isle"), &["--version"]),
            "mosquitto": find_program("mosquitto").map(|m| version(&m, &["-h"])),
            "rustc": version(Path::new("rustc"), &["--version"]),
        },
        "options": {
            "phones": options.phones,
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "rounds": options.rounds,
            "storm_phones": options.storm_phones,
            "server_cpu": SERVER_CPU,
            "loadgen_cpu": LOADGEN_CPU,
            "half_load_rate": half,
        },
        "medians": summary.medians,
        "ratios": summary.ratios,
        "storm": summary.storm,
        "slow": summary.slow,
        "lost": lost,
        "runs": runs,
    });
    let path = options.out.join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&document)?)?;
    println!("written: {}", path.display());
    if lost > 0 {
        bail!("{lost} acknowledged messages were lost");
    }
    Ok(())
}

/// 1. The most each server delivers: chat in closed loop, every target,
///    `--rounds` times interleaved.
fn run_max(bin: &Path, options: &Options, runs: &mut Vec<Value>) -> anyhow::Result<()> {
    for round in 1..=options.rounds {
        for target in Target::ALL {
            let server = start(target, bin)?;
            let dir = options.out.join(format!("max-{}-{round}", target.name()));
            let report = chat(bin, options, &server, 0, &dir)?;
            drop(server);
            eprintln!(
                "ci bench: round {round} {}: {:.0} msg/s, lost {}",
                target.name(),
                field(&report, "delivered_per_s"),
                report["lost"]
            );
            runs.push(
                json!({"phase": "max", "target": target.name(), "round": round, "report": report}),
            );
        }
    }
    Ok(())
}

/// 2. Latency at `half` of isle's maximum, on isle and mosquitto alike.
fn run_half(bin: &Path, options: &Options, half: u64, runs: &mut Vec<Value>) -> anyhow::Result<()> {
    for round in 1..=options.rounds {
        for target in [Target::Isle, Target::Mosquitto] {
            let server = start(target, bin)?;
            let dir = options.out.join(format!("half-{}-{round}", target.name()));
            let report = chat(bin, options, &server, half, &dir)?;
            drop(server);
            runs.push(
                json!({"phase": "half", "target": target.name(), "round": round, "report": report}),
            );
        }
    }
    Ok(())
}

/// 3. Slow readers at `half` load, once each on isle and mosquitto.
fn run_slow(bin: &Path, options: &Options, half: u64, runs: &mut Vec<Value>) -> anyhow::Result<()> {
    for target in [Target::Isle, Target::Mosquitto] {
        let server = start(target, bin)?;
        let mut extra = workload(options, half);
        extra.extend(["--share".to_owned(), "0.1".to_owned()]);
        let report = scenario(bin, "slow", &server, &extra)?;
        drop(server);
        runs.push(json!({"phase": "slow", "target": target.name(), "round": 1, "report": report}));
    }
    Ok(())
}

/// 4. A login storm on isle, `--rounds` times.
fn run_storm(bin: &Path, options: &Options, runs: &mut Vec<Value>) -> anyhow::Result<()> {
    for round in 1..=options.rounds {
        let server = start(Target::Isle, bin)?;
        let extra = [
            "--phones".to_owned(),
            options.storm_phones.to_string(),
            "--queued".to_owned(),
            "10000".to_owned(),
        ];
        let report = scenario(bin, "storm", &server, &extra)?;
        drop(server);
        runs.push(json!({"phase": "storm", "target": "isle", "round": round, "report": report}));
    }
    Ok(())
}

/// The medians, ratios and per-phase figures of every run.
struct Summary {
    /// Per target, in `Target::ALL` order, its row of medians.
    table: Vec<(&'static str, Value)>,
    medians: serde_json::Map<String, Value>,
    slow: serde_json::Map<String, Value>,
    storm: Value,
    ratios: Value,
    /// Acknowledged messages lost over all runs.
    lost: u64,
}

impl Summary {
    fn new(runs: &[Value]) -> Summary {
        let of = |phase: &str, target: &str, name: &str| median_of(runs, phase, target, name);
        let mut table = Vec::new();
        let mut medians = serde_json::Map::new();
        for target in Target::ALL {
            let name = target.name();
            let row = json!({
                "delivered_per_s": of("max", name, "delivered_per_s"),
                "delivered_per_server_cpu_s": of("max", name, "delivered_per_server_cpu_s"),
                "latency_us_p99_at_max": of("max", name, "latency_us_p99"),
                "server_rss_bytes": of("max", name, "server_rss_bytes"),
                "latency_us_p99_at_half": of("half", name, "latency_us_p99"),
                "latency_us_p50_at_half": of("half", name, "latency_us_p50"),
                "send_lag_us_p50_at_half": of("half", name, "send_lag_us_p50"),
                "delivered_per_s_at_half": of("half", name, "delivered_per_s"),
                "server_cpu_s_at_half": of("half", name, "server_cpu_s"),
            });
            table.push((name, row.clone()));
            medians.insert(name.to_owned(), row);
        }
        let storm = json!({
            "logins_per_s": of("storm", "isle", "logins_per_s"),
            "logins_per_server_cpu_s": of("storm", "isle", "logins_per_server_cpu_s"),
            "time_to_all_back_s": of("storm", "isle", "time_to_all_back_s"),
        });
        let ratios = ratios(&medians);
        Summary {
            table,
            medians,
            slow: slow_rows(runs),
            storm,
            ratios,
            lost: runs
                .iter()
                .map(|r| r["report"]["lost"].as_u64().unwrap_or(0))
                .sum(),
        }
    }

    /// Prints the table, the half load, the ratios, the storm and the slow
    /// readers.
    fn print(&self, options: &Options, half: u64) {
        println!(
            "\nchat: {} phones, {} s ({} s warm-up), medians of {} rounds; server on CPU {SERVER_CPU}, \
             loadgen on CPU {LOADGEN_CPU}",
            options.phones, options.duration_s, options.warmup_s, options.rounds
        );
        println!(
            "{:<12} {:>12} {:>14} {:>14} {:>10} {:>16}",
            "server", "msg/s", "msg/server-s", "p99 max (ms)", "rss (MiB)", "p99 @half (ms)"
        );
        for (name, row) in &self.table {
            let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<12} {:>12.0} {:>14.0} {:>14.1} {:>10.1} {:>16}",
                name,
                f("delivered_per_s"),
                f("delivered_per_server_cpu_s"),
                f("latency_us_p99_at_max") / 1000.0,
                f("server_rss_bytes") / 1_048_576.0,
                if f("latency_us_p99_at_half").is_nan() {
                    "-".to_owned()
                } else {
                    format!("{:.2}", f("latency_us_p99_at_half") / 1000.0)
                }
            );
        }
        println!("half load: {half} msg/s offered (half of isle's median maximum)");
        for target in [Target::Isle, Target::Mosquitto] {
            let f = |k: &str| self.medians[target.name()][k].as_f64().unwrap_or(f64::NAN);
            println!(
                "  {:<10} delivered {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, server CPU {:.0} %, \
                 loadgen's own send lag p50 {:.2} ms",
                target.name(),
                f("delivered_per_s_at_half"),
                f("latency_us_p50_at_half") / 1000.0,
                f("latency_us_p99_at_half") / 1000.0,
                100.0 * f("server_cpu_s_at_half") / (options.duration_s - options.warmup_s),
                f("send_lag_us_p50_at_half") / 1000.0,
            );
        }
        let pretty = serde_json::to_string_pretty(&self.ratios).unwrap_or_default();
        println!("ratios: {pretty}");
        let storm = |k: &str| self.storm[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "storm: {} phones: {:.0} logins/s, {:.0} logins per server CPU s, all back in {:.2} s",
            options.storm_phones,
            storm("logins_per_s"),
            storm("logins_per_server_cpu_s"),
            storm("time_to_all_back_s"),
        );
        for (target, row) in &self.slow {
            let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "slow readers ({target}, a tenth stalled at half load): others' p99 {:.2} ms -> {:.2} ms (x{:.2})",
                f("p99_us_baseline") / 1000.0,
                f("p99_us_with_stalled") / 1000.0,
                f("p99_ratio"),
            );
        }
        println!("lost over all runs: {}", self.lost);
    }
}

/// isle's medians over mosquitto's and the relay's.
fn ratios(medians: &serde_json::Map<String, Value>) -> Value {
    let ratio = |a: &str, b: &str, name: &str| {
        let value = |t: &str| medians[t][name].as_f64().unwrap_or(f64::NAN);
        value(a) / value(b)
    };
    json!({
        "isle_over_mosquitto_delivered_per_s": ratio("isle", "mosquitto", "delivered_per_s"),
        "isle_memory_over_mosquitto_delivered_per_s": ratio("isle-memory", "mosquitto", "delivered_per_s"),
        "isle_over_relay_delivered_per_s": ratio("isle", "relay", "delivered_per_s"),
        "isle_memory_over_relay_delivered_per_s": ratio("isle-memory", "relay", "delivered_per_s"),
        "isle_over_mosquitto_per_server_cpu_s": ratio("isle", "mosquitto", "delivered_per_server_cpu_s"),
        "isle_over_mosquitto_p99_at_half": ratio("isle", "mosquitto", "latency_us_p99_at_half"),
    })
}

/// Per target, the slow-reader run's figures.
fn slow_rows(runs: &[Value]) -> serde_json::Map<String, Value> {
    runs.iter()
        .filter(|r| r["phase"] == "slow")
        .map(|r| {
            let report = &r["report"];
            let target = r["target"].as_str().unwrap_or("?").to_owned();
            (
                target,
                json!({
                    "p99_us_baseline": report["baseline"]["latency_us_p99"],
                    "p99_us_with_stalled": report["with_stalled"]["latency_us_p99"],
                    "p99_ratio": report["p99_ratio"],
                    "server_rss_bytes_with_stalled": report["with_stalled"]["server_rss_bytes"],
                }),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::Summary;

    fn run(phase: &str, target: &str, round: u32, delivered_per_s: f64, lost: u64) -> Value {
        json!({
            "phase": phase,
            "target": target,
            "round": round,
            "report": {"delivered_per_s": delivered_per_s, "lost": lost},
        })
    }

    #[test]
    fn the_summary_takes_medians_per_target_and_counts_every_loss() {
        let runs = [
            run("max", "isle", 1, 100.0, 0),
            run("max", "isle", 2, 300.0, 1),
            run("max", "isle", 3, 200.0, 0),
            run("max", "mosquitto", 1, 40.0, 0),
            run("max", "mosquitto", 2, 60.0, 0),
            run("max", "relay", 1, 400.0, 2),
        ];
        let summary = Summary::new(&runs);
        assert_eq!(summary.medians["isle"]["delivered_per_s"], 200.0);
        assert_eq!(summary.medians["mosquitto"]["delivered_per_s"], 50.0);
        assert_eq!(summary.ratios["isle_over_mosquitto_delivered_per_s"], 4.0);
        assert_eq!(summary.ratios["isle_over_relay_delivered_per_s"], 0.5);
        // No half-load runs: their medians are missing, not zero.
        assert_eq!(
            summary.medians["isle"]["latency_us_p99_at_half"],
            Value::Null
        );
        assert_eq!(summary.lost, 3);
    }
}
