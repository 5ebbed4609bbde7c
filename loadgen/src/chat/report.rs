//! What a chat run reports: the JSON line, the summary people read, and
//! whether the run failed.

use std::sync::atomic::Ordering::Relaxed;

use ahash::AHashSet;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::phone::stalled;
use super::thread::ThreadResult;
use super::{Args, Sending, Shared};
use crate::dial::{Dialed, Protocol};
use crate::report::Heading;
use crate::window::latency_histogram;

/// Lost messages named in the log, at most.
const LOST_NAMED_MAX: usize = 20;

/// What a run saw. `sent` counts distinct messages (a resend is not a new
/// one); `delivered` counts distinct messages received, `duplicates` the
/// extra copies (which a phone drops by id); `reordered` the messages that
/// arrived after a later one from the same sender.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `scenario` ("chat"), `phones`, `tls`.
    #[serde(flatten)]
    pub heading: Heading,
    pub protocol: Protocol,
    /// Phones that stopped reading (`--stalled-share`), and the messages
    /// they received once they read again.
    pub stalled: usize,
    pub delivered_to_stalled: u64,
    pub threads: usize,
    pub offered_rate: u64,
    pub duration_s: f64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    /// Messages whose sender got `Sent` and whose recipient never got them.
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub receipts: u64,
    pub errors: u64,
    /// Sends the server refused with a final error.
    pub rejected: u64,
    /// Refusals with a retryable error, each followed by a resend, and
    /// among them those for waiting on an earlier refused send.
    pub refused_retryable: u64,
    pub out_of_order: u64,
    /// Among the retryable refusals, those because the recipient's
    /// server was down (`Unavailable`, in a cluster).
    pub unavailable: u64,
    /// What phones met on their way onto a server: redirects followed,
    /// try-laters honoured, redirect loops cut, waits for an answer that
    /// ran out.
    #[serde(flatten)]
    pub dialed: Dialed,
    /// The longest any phone waited, with sends outstanding, between two
    /// answers to them (`Sent` or a final refusal), in ms; a phone still
    /// waiting at the end counts its wait until then. How long a server's
    /// failure (or a phone's own time offline) stalled a phone.
    pub answer_gap_ms_max: f64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub resent: u64,
    pub hangups: u64,
    pub connect_failures: u64,
    pub login_per_s: f64,
    /// Messages received per second between the end of warm-up and the end
    /// of sending (to phones that were not stalled).
    pub delivered_per_s: f64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_p999: f64,
    pub latency_us_max: f64,
    /// The same latency of deliveries between two phones logged in at
    /// one server, and of those between phones on two (a message that
    /// crossed a link between nodes), with the deliveries each counts.
    pub same_node_latency_us_p50: f64,
    pub same_node_latency_us_p99: f64,
    pub same_node_deliveries_timed: u64,
    pub cross_node_latency_us_p50: f64,
    pub cross_node_latency_us_p99: f64,
    pub cross_node_deliveries_timed: u64,
    /// The p99 latency of the messages meant to be sent in each second of
    /// sending (0 for a second with none timed, as in the warm-up): where
    /// in the run a spike was.
    pub latency_us_p99_by_second: Vec<f64>,
    /// How late sends were written against their intended time: loadgen's
    /// own delay, already inside the latency figures. When it is a large
    /// share of them, loadgen (not the server) is the bottleneck.
    pub send_lag_us_p50: f64,
    pub send_lag_us_p99: f64,
    /// From a send's intended time to its `Sent` (the wait for durability,
    /// a replica's included), of sends meant after warm-up (and from
    /// phones on `--latency-nodes`).
    pub sent_latency_us_p50: f64,
    pub sent_latency_us_p99: f64,
    /// With `--server-pid`: the server's CPU seconds in the measured
    /// window, deliveries per such second (per core when the server is
    /// pinned to one), and its resident memory when sending stopped.
    pub server_cpu_s: Option<f64>,
    pub delivered_per_server_cpu_s: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    /// For `--report`: not on the JSON line.
    #[serde(skip)]
    pub curves: crate::report::Curves,
}

impl Report {
    /// The report of a run: the counts `shared` holds, what each thread
    /// measured (`results`), and what the main thread did (logins took
    /// `login_s`; `sending`).
    pub(super) fn new(
        args: &Args,
        shared: &Shared,
        threads: usize,
        login_s: f64,
        sending: Sending,
        dialed: Dialed,
        results: &[ThreadResult],
    ) -> anyhow::Result<Report> {
        let mut histogram = latency_histogram();
        let (mut same_node, mut cross_node) = (latency_histogram(), latency_histogram());
        let mut send_lag = latency_histogram();
        let mut sent_latency = latency_histogram();
        let mut by_second: Vec<Histogram<u64>> = Vec::new();
        let mut delivered = AHashSet::new();
        let mut measured = 0;
        let mut answer_gap_ns_max = 0;
        for result in results {
            answer_gap_ns_max = answer_gap_ns_max.max(result.answer_gap_ns_max);
            histogram.add(&result.histogram)?;
            same_node.add(&result.same_node)?;
            for (second, histogram) in result.by_second.iter().enumerate() {
                if by_second.len() <= second {
                    by_second.push(super::thread::second_histogram());
                }
                by_second[second].add(histogram)?;
            }
            cross_node.add(&result.cross_node)?;
            send_lag.add(&result.send_lag)?;
            sent_latency.add(&result.sent_latency)?;
            delivered.extend(result.delivered.iter().copied());
            measured += result.measured_deliveries;
        }
        let acked: Vec<u64> = results
            .iter()
            .flat_map(|r| r.acked.iter().copied())
            .collect();
        let lost = count_lost(&acked, &delivered);
        let measured_s = (args.duration - args.warmup).max(0.001);
        let micros = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        let micros_of = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let server_cpu_s = sending.server_cpu_s;
        Ok(Report {
            heading: Heading::new("chat", args.phones, &args.connect),
            protocol: args.connect.target.protocol,
            stalled: (0..args.phones)
                .filter(|&i| stalled(i, args.stalled_share))
                .count(),
            delivered_to_stalled: shared.delivered_to_stalled.load(Relaxed),
            threads,
            offered_rate: args.rate,
            duration_s: args.duration,
            sent: shared.sent.load(Relaxed),
            acked: acked.len() as u64,
            delivered: delivered.len() as u64,
            lost,
            duplicates: shared.duplicates.load(Relaxed),
            reordered: shared.reordered.load(Relaxed),
            receipts: shared.receipts.load(Relaxed),
            errors: shared.errors.load(Relaxed),
            rejected: shared.rejected.load(Relaxed),
            refused_retryable: shared.refused_retryable.load(Relaxed),
            out_of_order: shared.out_of_order.load(Relaxed),
            unavailable: shared.unavailable.load(Relaxed),
            dialed,
            answer_gap_ms_max: answer_gap_ns_max as f64 / 1e6,
            disconnects: shared.disconnects.load(Relaxed),
            reconnects: shared.reconnects.load(Relaxed),
            resent: shared.resent.load(Relaxed),
            hangups: shared.hangups.load(Relaxed),
            connect_failures: shared.connect_failures.load(Relaxed),
            login_per_s: args.phones as f64 / login_s,
            delivered_per_s: measured as f64 / measured_s,
            latency_us_p50: micros(0.5),
            latency_us_p99: micros(0.99),
            latency_us_p999: micros(0.999),
            latency_us_max: histogram.max() as f64 / 1000.0,
            same_node_latency_us_p50: micros_of(&same_node, 0.5),
            same_node_latency_us_p99: micros_of(&same_node, 0.99),
            same_node_deliveries_timed: same_node.len(),
            cross_node_latency_us_p50: micros_of(&cross_node, 0.5),
            cross_node_latency_us_p99: micros_of(&cross_node, 0.99),
            cross_node_deliveries_timed: cross_node.len(),
            latency_us_p99_by_second: (by_second.iter()).map(|h| micros_of(h, 0.99)).collect(),
            send_lag_us_p50: send_lag.value_at_quantile(0.5) as f64 / 1000.0,
            send_lag_us_p99: send_lag.value_at_quantile(0.99) as f64 / 1000.0,
            sent_latency_us_p50: sent_latency.value_at_quantile(0.5) as f64 / 1000.0,
            sent_latency_us_p99: sent_latency.value_at_quantile(0.99) as f64 / 1000.0,
            server_cpu_s,
            delivered_per_server_cpu_s: server_cpu_s.map(|cpu| measured as f64 / cpu.max(1e-9)),
            server_rss_bytes: sending.server_rss_bytes,
            curves: crate::report::Curves::new("message latency", &histogram).with_timeline(
                sending.timeline,
                ["sent", "delivered"],
                args.warmup,
            ),
        })
    }

    /// Why the run failed, one line each; empty when it did not. A run
    /// fails when an acknowledged message was lost, when a phone could
    /// not connect or log in (a wrong `--ca`, no server), or when nothing
    /// was sent at all: figures from such a run measure nothing.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.lost > 0 {
            failures.push(format!(
                "{} acknowledged messages were never delivered",
                self.lost
            ));
        }
        if self.connect_failures > 0 {
            failures.push(format!(
                "{} of {} phones could not connect or log in (see the first errors above)",
                self.connect_failures, self.heading.phones
            ));
        }
        if self.sent == 0 && self.duration_s > 0.0 {
            failures.push("no message was sent".into());
        }
        failures
    }

    pub fn print_summary(&self) {
        let r = self;
        println!(
        "protocol={:?} phones={} threads={} tls={} rate={} duration={}s\n\
         sent={} acked={} delivered={} lost={} duplicates={} reordered={} receipts={} errors={} rejected={}\n\
         refused_retryable={} out_of_order={} disconnects={} reconnects={} resent={} hangups={}\n\
         {} unavailable={} answer_gap_ms_max={:.1}\n\
         logins/s={:.0} delivered/s={:.0} latency_us p50={:.1} p99={:.1} p99.9={:.1} max={:.1}\n\
         send_lag_us p50={:.1} p99={:.1} sent_latency_us p50={:.1} p99={:.1}{}{}",
        r.protocol,
        r.heading.phones,
        r.threads,
        r.heading.tls,
        if r.offered_rate == 0 { "max".to_string() } else { r.offered_rate.to_string() },
        r.duration_s,
        r.sent,
        r.acked,
        r.delivered,
        r.lost,
        r.duplicates,
        r.reordered,
        r.receipts,
        r.errors,
        r.rejected,
        r.refused_retryable,
        r.out_of_order,
        r.disconnects,
        r.reconnects,
        r.resent,
        r.hangups,
        r.dialed,
        r.unavailable,
        r.answer_gap_ms_max,
        r.login_per_s,
        r.delivered_per_s,
        r.latency_us_p50,
        r.latency_us_p99,
        r.latency_us_p999,
        r.latency_us_max,
        r.send_lag_us_p50,
        r.send_lag_us_p99,
        r.sent_latency_us_p50,
        r.sent_latency_us_p99,
        match r.cross_node_deliveries_timed {
            0 => String::new(),
            crossed => format!(
                "\nsame node: latency_us p50={:.1} p99={:.1} ({} timed); \
                 cross node: p50={:.1} p99={:.1} ({crossed} timed)",
                r.same_node_latency_us_p50,
                r.same_node_latency_us_p99,
                r.same_node_deliveries_timed,
                r.cross_node_latency_us_p50,
                r.cross_node_latency_us_p99,
            ),
        },
        match (r.server_cpu_s, r.delivered_per_server_cpu_s, r.server_rss_bytes) {
            (Some(cpu), Some(per_cpu), Some(rss)) => format!(
                "\nserver: cpu_s={cpu:.2} delivered_per_cpu_s={per_cpu:.0} rss_mib={:.1}",
                rss as f64 / 1048576.0
            ),
            _ => String::new(),
        },
    );
    }
}

/// Acknowledged messages never delivered; the first [`LOST_NAMED_MAX`]
/// are named on stderr, so that a run that lost one says which to look
/// for in the servers' logs.
fn count_lost(acked: &[u64], delivered: &AHashSet<u64>) -> u64 {
    let lost: Vec<u64> = acked
        .iter()
        .filter(|key| !delivered.contains(key))
        .copied()
        .collect();
    for &key in lost.iter().take(LOST_NAMED_MAX) {
        let (sender, client_id) = super::phone::unkey(key);
        eprintln!(
            "loadgen: lost: phone {sender}'s message {client_id} was answered Sent, never delivered"
        );
    }
    lost.len() as u64
}
