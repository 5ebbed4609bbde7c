//! `cargo run -p ci -- <task>`: the checks CI runs, runnable by anyone.
//!
//! - `test` (the default): `fmt`, `clippy`, `unit` and `smoke`, in that order,
//!   after installing the Debian packages the tests use when they are missing
//!   (`e2fsprogs` for the disk-full test, `mosquitto` for the MQTT target,
//!   `faketime` for the clock-step tests, `systemd` for verifying the unit
//!   in `packaging/`, `etcd-server` and `etcd-client` for the multi-node
//!   harness, `protobuf-compiler` for the etcd client crate's build).
//! - `fmt`: `cargo fmt --check`.
//! - `clippy`: every target, warnings denied.
//! - `unit`: `cargo test --workspace` (integration tests start the real binary).
//! - `smoke`: starts a release `isle` with two shards and runs `loadgen` over
//!   plaintext and TLS; fails if any acknowledged message is lost, duplicated
//!   or reordered, or if the server does not exit cleanly on SIGTERM.
//! - `bench`: isle against mosquitto and the bare relay, side by side (see
//!   [`bench`]); not part of `test`.
//! - `stall`: the cross-shard stall hunt (`server/tests/stall.rs`) at 400
//!   rounds instead of CI's 10; not part of `test`.
//! - `cluster`: the three-node tests (`ci/tests/cluster.rs`), release
//!   builds, with ten kills and restarts instead of `test`'s one, and the
//!   long case `test` leaves out: a node stopped with SIGSTOP for 10 s,
//!   the others' queues held to their bounds and their latency reported
//!   against runs without the stop.
//! - `cluster-bench [FILTER]`: the cluster benchmarks
//!   (`ci/tests/cluster_bench.rs`), release builds: deliveries per
//!   server CPU-second on one node and on three, cross-node against
//!   same-node latency at a quarter of the maximum rate, and sync
//!   replication against none and one node; a filter (`latency`,
//!   `replication`) runs those whose name has it.
//! - `dashboard`: draws the Grafana dashboard against a running server
//!   under load into `docs/dashboard.png` (see [`dashboard`]); for the
//!   docs, run by hand, not part of `test`.

mod bench;
#[cfg(feature = "dashboard")]
mod dashboard;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ci", about = "The checks CI runs, runnable by anyone")]
struct Cli {
    /// What to run; `test` when none is named.
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Subcommand)]
enum Task {
    /// Installs what the tests use, then fmt, clippy, unit and smoke.
    Test,
    /// `cargo fmt --check`.
    Fmt,
    /// clippy on every target, warnings denied.
    Clippy,
    /// `cargo test --workspace`.
    Unit,
    /// A release isle and loadgen over plaintext and TLS.
    Smoke,
    /// The cross-shard stall hunt at 400 rounds.
    Stall,
    /// The three-node cluster tests, ten kills and restarts, twenty
    /// kills of a replicating primary, and a node stopped for 10 s;
    /// release builds.
    Cluster,
    /// The cluster benchmarks, release builds, interleaved rounds:
    /// deliveries per server CPU-second on one node and on three, and
    /// cross-node against same-node latency.
    ClusterBench(ClusterBenchOptions),
    /// isle against mosquitto and the bare relay, side by side.
    Bench(bench::Options),
    /// The Grafana dashboard drawn against isle under load, for the docs.
    Dashboard(DashboardOptions),
}

impl Task {
    fn name(&self) -> &'static str {
        match self {
            Task::Test => "test",
            Task::Fmt => "fmt",
            Task::Clippy => "clippy",
            Task::Unit => "unit",
            Task::Smoke => "smoke",
            Task::Stall => "stall",
            Task::Cluster => "cluster",
            Task::ClusterBench(_) => "cluster-bench",
            Task::Bench(_) => "bench",
            Task::Dashboard(_) => "dashboard",
        }
    }
}

fn main() {
    let task = Cli::parse().task.unwrap_or(Task::Test);
    let result = match &task {
        Task::Test => packages(TEST_PACKAGES)
            .and_then(|()| fmt())
            .and_then(|()| clippy())
            .and_then(|()| unit())
            .and_then(|()| smoke()),
        Task::Fmt => fmt(),
        Task::Clippy => clippy(),
        Task::Unit => unit(),
        Task::Smoke => smoke(),
        Task::Stall => stall(),
        Task::Cluster => cluster(),
        Task::ClusterBench(options) => cluster_bench(options),
        Task::Bench(options) => bench::bench(options),
        Task::Dashboard(options) => draw_dashboard(options),
    };
    if let Err(error) = result {
        eprintln!("ci: {error:#}");
        std::process::exit(1);
    }
    eprintln!("ci: {} passed", task.name());
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ci lives in the workspace")
        .to_owned()
}

/// Which cluster benchmarks `ci cluster-bench` runs.
#[derive(clap::Args)]
pub struct ClusterBenchOptions {
    /// Only the benchmarks whose test name contains this (`latency`,
    /// `per_server_cpu`); all of them without it.
    pub filter: Option<String>,
}

/// Where `ci dashboard` writes, and what it draws from.
#[derive(clap::Args)]
pub struct DashboardOptions {
    /// Where dashboard.png and dashboard.md go.
    #[arg(long, default_value_os_t = root().join("docs"))]
    pub out: PathBuf,
    /// Draw from a capture an earlier run saved (its path is printed at
    /// the end of a run) instead of running the load again.
    #[arg(long)]
    pub from: Option<PathBuf>,
}

#[cfg(feature = "dashboard")]
fn draw_dashboard(options: &DashboardOptions) -> anyhow::Result<()> {
    dashboard::dashboard(options)
}

/// Without its feature (see Cargo.toml), `ci dashboard` runs again with it.
#[cfg(not(feature = "dashboard"))]
fn draw_dashboard(options: &DashboardOptions) -> anyhow::Result<()> {
    let out = options.out.to_string_lossy().into_owned();
    let mut args = vec!["run", "-q", "-p", "ci", "--features", "dashboard", "--"];
    args.extend(["dashboard", "--out", &out]);
    let from = options
        .from
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    if let Some(from) = &from {
        args.extend(["--from", from]);
    }
    cargo(&args)
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("ci: cargo {}", args.join(" "));
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(args).current_dir(root());
    // Started by `cargo run -p ci`, this process has ci's package
    // variables, which would make these builds differ from a shell's.
    ci::harness::without_package_env(&mut command);
    let status = command.status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Programs the tests run, and the Debian package each comes in.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("mkfs.ext4", "e2fsprogs"),
    ("mosquitto", "mosquitto"),
    // libfaketime, for the clock-step tests.
    ("faketime", "faketime"),
    // `systemd-analyze verify` of packaging/isle.service.
    ("systemd-analyze", "systemd"),
    // The cluster tests' coordination store and its command-line client.
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    // The etcd client crate's build compiles etcd's protobuf definitions
    // (.cargo/protoc falls back to a vendored protoc without it).
    ("protoc", "protobuf-compiler"),
];

/// Where `program` is, on the PATH or in the sbin directories (which a
/// user's PATH may lack). An absolute path names a file a package
/// installs (a font), found there or not at all.
fn find_program(program: &str) -> Option<PathBuf> {
    if Path::new(program).is_absolute() {
        return Path::new(program).is_file().then(|| program.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Installs with apt-get the packages whose program (or file, given as
/// an absolute path) is missing. Only root
/// can; anyone else is told what to install.
fn packages(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(program, _)| find_program(program).is_none())
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("install {} (apt-get install {0})", missing.join(" "));
    }
    eprintln!("ci: apt-get install {}", missing.join(" "));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-q"])?;
    apt(&[&["install", "-y", "-q"][..], &missing].concat())
}

/// Many fresh two-shard servers on busy cores, timing cross-shard answers.
fn stall() -> anyhow::Result<()> {
    std::env::set_var("ISLE_STALL_ROUNDS", "400");
    cargo(&[
        "test",
        "--release",
        "-p",
        "server",
        "--test",
        "stall",
        "--",
        "--nocapture",
    ])
}

/// The cluster tests of `ci test`, with more kills, and the long ones
/// it leaves out (ignored tests), in release builds: the stopped node's
/// latency figures mean something only there, and the harness builds
/// its binaries in the test's profile.
fn cluster() -> anyhow::Result<()> {
    packages(TEST_PACKAGES)?;
    std::env::set_var("ISLE_CLUSTER_ROUNDS", "10");
    std::env::set_var("ISLE_FAILOVER_ROUNDS", "20");
    let test = ["test", "--release", "-p", "ci", "--test", "cluster"];
    let run = [
        "--",
        "--include-ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ];
    cargo(&[&test[..], &run[..]].concat())
}

/// The benchmarks are ignored tests of `ci`, built in release so the
/// binaries their harness builds are release ones too.
fn cluster_bench(options: &ClusterBenchOptions) -> anyhow::Result<()> {
    packages(TEST_PACKAGES)?;
    let test = ["test", "--release", "-p", "ci", "--test", "cluster_bench"];
    let mut run = vec!["--", "--ignored", "--nocapture", "--test-threads", "1"];
    if let Some(filter) = &options.filter {
        run.push(filter);
    }
    cargo(&[&test[..], &run[..]].concat())
}

fn fmt() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])
}

fn clippy() -> anyhow::Result<()> {
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

fn unit() -> anyhow::Result<()> {
    cargo(&["test", "--workspace"])
}

fn smoke() -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "server", "-p", "loadgen"])?;
    let bin = root().join("target/release");
    let data = tempfile::tempdir()?;
    let mut server = Command::new(bin.join("isle"))
        .args([
            "--data-dir",
            data.path().to_str().context("utf-8 temp path")?,
        ])
        .args([
            "--shards",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--plaintext-listen",
            "127.0.0.1:0",
        ])
        .args(["--test-numbers", "+1555:111111"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting isle")?;
    let mut ready = String::new();
    BufReader::new(server.stdout.take().context("stdout")?).read_line(&mut ready)?;
    let field = |name: &str| {
        ready
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")).map(str::to_owned))
            .with_context(|| format!("no {name} in ready line {ready:?}"))
    };
    let outcome = (|| {
        let plain = field("plaintext")?;
        let tls = field("tls")?;
        let cert = field("cert")?;
        run_loadgen(&bin, &["--target", &plain, "--first-phone", "+15550000000"])?;
        run_loadgen(
            &bin,
            &[
                "--target",
                &tls,
                "--tls",
                "--ca",
                &cert,
                "--first-phone",
                "+15551000000",
            ],
        )
    })();
    // SAFETY: signalling a child we started.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            bail!("isle did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    outcome?;
    if !status.success() {
        bail!("isle exited with {status} after SIGTERM");
    }
    Ok(())
}

fn run_loadgen(bin: &Path, extra: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(bin.join("loadgen"))
        .args([
            "--phones",
            "2000",
            "--duration",
            "4",
            "--warmup",
            "1",
            "--json",
        ])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .context("running loadgen")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    let last = stdout.lines().last().context("loadgen printed nothing")?;
    let report: serde_json::Value =
        serde_json::from_str(last).context("loadgen's last line is not JSON")?;
    let number = |name: &str| {
        report[name]
            .as_u64()
            .with_context(|| format!("no {name} in {last}"))
    };
    if number("lost")? > 0 || number("duplicates")? > 0 || number("reordered")? > 0 {
        bail!("loadgen saw lost, duplicated or reordered messages: {last}");
    }
    if number("delivered")? == 0 || number("connect_failures")? > 0 {
        bail!("loadgen delivered nothing or could not connect: {last}");
    }
    if !output.status.success() {
        bail!("loadgen exited with {}", output.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Task};

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_takes_the_same_flags_and_defaults() {
        let bench = |args: &[&str]| match Cli::parse_from(args).task {
            Some(Task::Bench(options)) => options,
            _ => panic!("not bench"),
        };
        let options = bench(&["ci", "bench"]);
        assert_eq!(
            (options.phones, options.rounds, options.storm_phones),
            (10_000, 3, 18_000)
        );
        assert_eq!((options.duration_s, options.warmup_s), (15.0, 3.0));
        assert!(options.out.ends_with("target/bench"));
        let options = bench(&[
            "ci",
            "bench",
            "--phones",
            "2000",
            "--duration",
            "4.5",
            "--warmup",
            "1",
            "--rounds",
            "0",
            "--storm-phones",
            "500",
            "--out",
            "/tmp/bench",
        ]);
        assert_eq!(
            (options.phones, options.rounds, options.storm_phones),
            (2000, 1, 500)
        );
        assert_eq!((options.duration_s, options.warmup_s), (4.5, 1.0));
        assert_eq!(options.out, std::path::Path::new("/tmp/bench"));
        assert!(Cli::try_parse_from(["ci", "bench", "--phones"]).is_err());
        assert!(Cli::try_parse_from(["ci", "bench", "--unknown", "1"]).is_err());
        assert!(Cli::parse_from(["ci"]).task.is_none(), "test by default");
    }

    #[test]
    fn cluster_bench_takes_an_optional_filter() {
        let filter = |args: &[&str]| match Cli::parse_from(args).task {
            Some(Task::ClusterBench(options)) => options.filter,
            _ => panic!("not cluster-bench"),
        };
        assert_eq!(filter(&["ci", "cluster-bench"]), None);
        assert_eq!(
            filter(&["ci", "cluster-bench", "latency"]).as_deref(),
            Some("latency")
        );
        assert!(Cli::try_parse_from(["ci", "cluster-bench", "a", "b"]).is_err());
    }
}
