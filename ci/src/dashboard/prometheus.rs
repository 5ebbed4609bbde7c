//! A Prometheus of `ci dashboard`'s own: its own process, configuration,
//! data directory (a temporary one) and port, scraping one target, so a
//! packaged Prometheus service on the machine (Debian's starts one on
//! :9090 where services may start) neither answers the queries nor
//! mixes its data in. Queried through the HTTP API's `query_range`.

use std::{
    collections::BTreeMap,
    fs::File,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// How long Prometheus may take to open its HTTP port and make its first
/// scrape of the target.
const START_TIMEOUT_MS: u64 = 30_000;

/// Longest a query may take; a two-minute range at a one-second step is
/// answered in milliseconds.
const QUERY_TIMEOUT_MS: u64 = 30_000;

/// A running Prometheus; dropping it stops the process.
pub struct Prometheus {
    child: Child,
    base: String,
    agent: ureq::Agent,
    /// Holds the configuration, the TSDB and the log while it runs.
    dir: tempfile::TempDir,
}

/// One series of a range query's answer: its labels, and (unix seconds,
/// value) pairs. Steps where the expression had no value (or `NaN`, as
/// `histogram_quantile` gives with no observations) are absent, so a
/// line drawn from them has a gap there, as Grafana's does.
#[derive(Debug)]
pub struct RangeSeries {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(f64, f64)>,
}

impl Prometheus {
    /// Starts `program` scraping `http://TARGET/metrics` every
    /// `scrape_s` seconds on a loopback port of its own, and waits until
    /// it has scraped the target once.
    pub fn start(program: &Path, target: &str, scrape_s: u64) -> anyhow::Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {scrape_s}s\n  evaluation_interval: {scrape_s}s\n\
                 scrape_configs:\n  - job_name: isle\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )?;
        let port = free_port()?;
        let log = File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(program)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(QUERY_TIMEOUT_MS))
            .build();
        let prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            agent,
            dir,
        };
        prometheus.wait_for_first_scrape()?;
        Ok(prometheus)
    }

    /// Evaluates `expr` from `start_s` to `end_s` (unix seconds) every
    /// `step_s` seconds. A query Prometheus refuses is an error carrying
    /// its message.
    pub fn query_range(
        &self,
        expr: &str,
        start_s: f64,
        end_s: f64,
        step_s: u64,
    ) -> anyhow::Result<Vec<RangeSeries>> {
        let answer: serde_json::Value = self
            .agent
            .get(&format!("{}/api/v1/query_range", self.base))
            .query("query", expr)
            .query("start", &format!("{start_s:.3}"))
            .query("end", &format!("{end_s:.3}"))
            .query("step", &step_s.to_string())
            .call()
            .map_err(|error| match error {
                ureq::Error::Status(code, response) => {
                    let body = response.into_string().unwrap_or_default();
                    anyhow::anyhow!("Prometheus answered {code} to {expr:?}: {body}")
                }
                other => anyhow::Error::new(other).context(format!("querying {expr:?}")),
            })?
            .into_json()?;
        if answer["status"] != "success" {
            bail!("Prometheus could not evaluate {expr:?}: {answer}");
        }
        let results = answer["data"]["result"]
            .as_array()
            .context("no result in the answer")?;
        results.iter().map(range_series).collect()
    }

    /// `Prometheus VERSION`, from the first line `prometheus --version`
    /// prints (`prometheus, version 2.42.0+ds (branch: ...`).
    pub fn version(program: &Path) -> anyhow::Result<String> {
        let output = Command::new(program).arg("--version").output()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let version = text
            .split_whitespace()
            .skip_while(|word| *word != "version")
            .nth(1)
            .with_context(|| format!("no version in {text:?}"))?;
        Ok(format!("Prometheus {version}"))
    }

    /// Waits until `up` of the target is 1: Prometheus answers and has
    /// scraped isle.
    fn wait_for_first_scrape(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            let up = self
                .agent
                .get(&format!("{}/api/v1/query", self.base))
                .query("query", "up")
                .call()
                .ok()
                .and_then(|response| response.into_json::<serde_json::Value>().ok());
            let scraped = up.is_some_and(|up| up["data"]["result"][0]["value"][1] == "1");
            if scraped {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.dir.path().join("prometheus.log");
                let log = std::fs::read_to_string(log).unwrap_or_default();
                bail!(
                    "Prometheus did not scrape isle within {START_TIMEOUT_MS} ms; its log:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn range_series(json: &serde_json::Value) -> anyhow::Result<RangeSeries> {
    let labels = json["metric"]
        .as_object()
        .context("a series without labels")?
        .iter()
        .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_owned()))
        .collect();
    let mut points = Vec::new();
    for pair in json["values"]
        .as_array()
        .context("a series without values")?
    {
        let time = pair[0].as_f64().context("a point without a time")?;
        let value: f64 = pair[1]
            .as_str()
            .context("a point without a value")?
            .parse()
            .context("a value that is not a number")?;
        if value.is_finite() {
            points.push((time, value));
        }
    }
    Ok(RangeSeries { labels, points })
}

/// A loopback port nobody listened on a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
