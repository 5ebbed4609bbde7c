//! The slow-reader scenario: does a phone that stops reading hold up
//! anyone else? The chat workload runs twice against the same server, with
//! the same phones count and offered rate: first with every phone reading,
//! then with `--share` of them stalled (connected, reading nothing, sending
//! nothing, so that messages to them pile up on the server). The
//! latency of everyone else is compared between the two runs: a server
//! that isolates its connections shows the same figures.
//!
//! The second run uses the next range of phone numbers, so that nothing
//! of the first (keys, queued messages, sessions) is carried into it.

use clap::Parser;
use serde::Serialize;

use crate::chat;

// No argument group of its own: chat's `Args` group has the same name.
#[derive(Debug, Clone, Parser)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    pub chat: chat::Args,
    /// Share of phones (0..1) that stop reading in the second run; it
    /// replaces the chat option `--stalled-share`. With `--report DIR`,
    /// each run's report goes into `DIR/baseline` and `DIR/with-stalled`.
    #[arg(long, default_value_t = 0.1)]
    pub share: f64,
}

/// One of the two runs.
#[derive(Debug, Serialize)]
pub struct Run {
    pub stalled: usize,
    /// Messages the stalled phones received once sending stopped.
    pub delivered_to_stalled: u64,
    pub delivered_per_s: f64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_p999: f64,
    pub lost: u64,
    /// The server's resident memory when sending stopped (`--server-pid`).
    pub server_rss_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub phones: usize,
    pub offered_rate: u64,
    pub share: f64,
    pub baseline: Run,
    pub with_stalled: Run,
    /// Latency of the phones that kept reading, with the stalled ones
    /// present over without: 1 is perfect isolation.
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    pub lost: u64,
    /// Why either run failed (chat's `failures`, each line prefixed with
    /// the run), for the exit status: not on the JSON line.
    #[serde(skip)]
    pub failures: Vec<String>,
}

impl Report {
    /// Why the comparison failed, one line each; empty when it did not.
    /// Either run failing fails it: a message lost, a phone that could not
    /// connect or log in, nothing sent. Figures from such a run compare
    /// nothing.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }

    pub fn print_summary(&self) {
        let line = |name: &str, run: &Run| {
            println!(
                "{name:<13} stalled={:<6} delivered/s={:<8.0} latency_us p50={:.1} p99={:.1} \
                 p99.9={:.1} lost={}{}",
                run.stalled,
                run.delivered_per_s,
                run.latency_us_p50,
                run.latency_us_p99,
                run.latency_us_p999,
                run.lost,
                run.server_rss_bytes.map_or(String::new(), |rss| format!(
                    " server_rss_mib={:.1}",
                    rss as f64 / 1_048_576.0
                )),
            );
        };
        println!(
            "slow: {} phones, rate {}, share {}",
            self.phones,
            if self.offered_rate == 0 {
                "max".to_owned()
            } else {
                self.offered_rate.to_string()
            },
            self.share
        );
        line("baseline", &self.baseline);
        line("with stalled", &self.with_stalled);
        println!(
            "others' latency with/without stalled phones: p50 x{:.2}, p99 x{:.2}",
            self.p50_ratio, self.p99_ratio
        );
    }
}

fn summarise(report: &chat::Report) -> Run {
    Run {
        stalled: report.stalled,
        delivered_to_stalled: report.delivered_to_stalled,
        delivered_per_s: report.delivered_per_s,
        latency_us_p50: report.latency_us_p50,
        latency_us_p99: report.latency_us_p99,
        latency_us_p999: report.latency_us_p999,
        lost: report.lost,
        server_rss_bytes: report.server_rss_bytes,
    }
}

fn write_report(args: &chat::Args, report: &chat::Report) -> anyhow::Result<()> {
    match &args.report {
        Some(dir) => crate::report::write(dir, args, report, &report.curves),
        None => Ok(()),
    }
}

pub fn run(args: &Args) -> anyhow::Result<Report> {
    if !(0.0..1.0).contains(&args.share) || args.share == 0.0 {
        anyhow::bail!("--share must be above 0 and below 1");
    }
    let mut chat = args.chat.clone();
    chat.stalled_share = 0.0;
    // Each run's report goes into its own directory under `--report`.
    let report_in = |name: &str| args.chat.report.as_ref().map(|dir| dir.join(name));
    chat.report = report_in("baseline");
    eprintln!("slow: baseline run, every phone reading");
    let baseline = chat::run(&chat)?;
    write_report(&chat, &baseline)?;
    let first = args.chat.connect.first(args.chat.phones * 2)?;
    chat.connect.first_phone = format!("+{}", first + args.chat.phones as u64);
    chat.stalled_share = args.share;
    chat.report = report_in("with-stalled");
    eprintln!("slow: second run, {} of phones stalled", args.share);
    let stalled = chat::run(&chat)?;
    write_report(&chat, &stalled)?;
    let failures = [("baseline", &baseline), ("with stalled", &stalled)]
        .into_iter()
        .flat_map(|(name, run)| {
            run.failures()
                .into_iter()
                .map(move |f| format!("{name}: {f}"))
        })
        .collect();
    Ok(Report {
        scenario: "slow",
        phones: args.chat.phones,
        offered_rate: args.chat.rate,
        share: args.share,
        p50_ratio: stalled.latency_us_p50 / baseline.latency_us_p50,
        p99_ratio: stalled.latency_us_p99 / baseline.latency_us_p99,
        lost: baseline.lost + stalled.lost,
        baseline: summarise(&baseline),
        with_stalled: summarise(&stalled),
        failures,
    })
}
