//! `cargo run -p ci -- dashboard`: a picture of the Grafana dashboard
//! (`packaging/grafana/isle.json`) against a running server, for the
//! docs, where Grafana itself cannot be installed (not in Debian; its
//! downloads unreachable from where this was written).
//!
//! It installs Prometheus (Debian's) and a font when missing, builds a
//! release `isle` and `loadgen`, starts isle with two shards
//! ([`load::Server`]) and a Prometheus of its own scraping isle's admin
//! listener every second ([`prometheus::Prometheus`]), drives the load
//! phases of [`load::PHASES`], then evaluates every panel's queries over
//! the run ([`capture`]) and draws them on the dashboard's grid
//! ([`render`]) into `docs/dashboard.png`, with `docs/dashboard.md`
//! saying what the picture is and what each panel showed in each phase
//! ([`describe`]). What was queried is kept as JSON in the target
//! directory, and `--from` draws from it again without the load.
//! Run by hand; not part of `ci test`.

mod capture;
mod describe;
mod grafana;
mod load;
mod prometheus;
mod render;
mod units;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;

use capture::{Capture, Window};
use grafana::Dashboard;
use prometheus::Prometheus;

/// Prometheus scrapes isle this often, and the queries step by it:
/// isle's shards publish their counters once a second.
const SCRAPE_S: u64 = 1;

/// Quiet time recorded before the first phase and after the last, so the
/// charts start and end at rest.
const REST_S: u64 = 5;

/// What `ci dashboard` needs beyond the build, and the Debian package of
/// each.
const PACKAGES: &[(&str, &str)] = &[
    ("prometheus", "prometheus"),
    (render::FONT_PATH, "fonts-dejavu-core"),
];

pub use crate::DashboardOptions as Options;

/// Runs the load and draws it, or draws `--from` a saved capture.
pub fn dashboard(options: &Options) -> anyhow::Result<()> {
    crate::packages(PACKAGES)?;
    let capture = match &options.from {
        Some(path) => Capture::load(path)?,
        None => {
            let capture = record()?;
            let saved = target_dir().join("dashboard/capture.json");
            capture.save(&saved)?;
            eprintln!("ci: dashboard capture saved in {}", saved.display());
            capture
        }
    };
    std::fs::create_dir_all(&options.out)?;
    let png = options.out.join("dashboard.png");
    render::draw(&capture, &png)?;
    let md = options.out.join("dashboard.md");
    std::fs::write(&md, describe::markdown(&capture))
        .with_context(|| format!("writing {}", md.display()))?;
    eprintln!("ci: wrote {} and {}", png.display(), md.display());
    Ok(())
}

/// Builds, starts isle and Prometheus, drives the phases and queries
/// every panel over the run.
fn record() -> anyhow::Result<Capture> {
    let text = std::fs::read_to_string(crate::root().join("packaging/grafana/isle.json"))?;
    let dashboard = Dashboard::parse(&text).context("packaging/grafana/isle.json")?;
    crate::cargo(&["build", "--release", "-p", "server", "-p", "loadgen"])?;
    let bin = target_dir().join("release");
    let server = load::Server::start(&bin)?;
    let program = crate::find_program("prometheus").context("prometheus is not installed")?;
    let prometheus = Prometheus::start(&program, &server.admin, SCRAPE_S)?;
    let start_s = now_s().floor();
    std::thread::sleep(Duration::from_secs(REST_S));
    let phases = load::drive(&bin, &server, &load::PHASES)?;
    std::thread::sleep(Duration::from_secs(REST_S));
    let end_s = now_s().ceil();
    // The last scrape of the range lands within a scrape interval.
    std::thread::sleep(Duration::from_secs(2 * SCRAPE_S));
    let window = Window {
        start_s,
        end_s,
        step_s: SCRAPE_S,
        scrape_s: SCRAPE_S,
    };
    let panels = capture::query_panels(&dashboard, &prometheus, window)?;
    let environment = environment(&program, &server.command)?;
    drop(prometheus);
    server.stop()?;
    Ok(Capture {
        title: dashboard.title.clone(),
        start_s,
        end_s,
        step_s: SCRAPE_S,
        scrape_s: SCRAPE_S,
        variables: dashboard.variables().clone(),
        environment,
        phases,
        panels,
    })
}

/// How the run was made, for the description: the machine, the
/// commit, Prometheus's version and isle's command line.
fn environment(prometheus: &Path, isle: &str) -> anyhow::Result<Vec<(String, String)>> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kernel = output("uname", &["-sr"]).unwrap_or_default();
    let commit = output("git", &["describe", "--always", "--dirty"]).unwrap_or_default();
    Ok(vec![
        (
            "machine".into(),
            format!(
                "{cpu}, {cores} cores, {:.0} GiB of memory, {kernel}",
                memory_kib as f64 / 1024.0 / 1024.0
            ),
        ),
        (
            "isle".into(),
            format!("commit {commit}, release build: `{isle}`"),
        ),
        (
            "prometheus".into(),
            format!("{} (Debian's package)", Prometheus::version(prometheus)?),
        ),
    ])
}

/// A command's first line of output, run in the workspace.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(crate::root())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next()?.trim().to_owned())
}

/// Where cargo builds: `CARGO_TARGET_DIR` if set (relative to the
/// workspace, where [`crate::cargo`] runs cargo), else the workspace's
/// `target`.
fn target_dir() -> PathBuf {
    let root = crate::root();
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// The wall clock as unix seconds, the time base Prometheus uses.
fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}
