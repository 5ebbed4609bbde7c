//! `--report DIR`: a run's result as files people can read. `report.json`
//! holds the run's parameters, its summary, the rates of every second,
//! the latency percentile curve and (idle) the server's memory against
//! phones; [`chart`] draws them as SVG (`latency.svg`, `throughput.svg`,
//! `memory.svg`), and `index.html` shows the charts between the parameters
//! and the summary.

mod chart;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::idle::Sample;

/// What the reports of chat, idle and storm open with: which scenario
/// ran, with how many phones, and whether over TLS. Each report embeds it
/// with `#[serde(flatten)]`, so its fields are keys of the report's own
/// JSON object, as scripts read them.
#[derive(Debug, Clone, Serialize)]
pub struct Heading {
    pub scenario: &'static str,
    pub phones: usize,
    pub tls: bool,
}

impl Heading {
    pub fn new(
        scenario: &'static str,
        phones: usize,
        connect: &crate::dial::ConnectArgs,
    ) -> Heading {
        Heading {
            scenario,
            phones,
            tls: connect.tls,
        }
    }
}

/// One second of a run: the two rates [`Curves::rates_of`] names (for
/// chat, messages sent and delivered).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Tick {
    /// Seconds since the load began, at the end of this tick.
    pub t_s: f64,
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
}

/// Builds a timeline, one [`Tick`] a second, from two running counts.
pub struct Timeline {
    started: Instant,
    /// The counts at the last tick, and when it was taken.
    last: ([u64; 2], Instant),
    ticks: Vec<Tick>,
}

impl Timeline {
    /// Starts now, from `counts`.
    pub fn start(counts: [u64; 2]) -> Timeline {
        let now = Instant::now();
        Timeline {
            started: now,
            last: (counts, now),
            ticks: Vec::new(),
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Time since the last tick ended (or the start).
    pub fn since_last_tick(&self) -> Duration {
        self.last.1.elapsed()
    }

    /// When the next tick is due, from the start: every whole second.
    pub fn next_due(&self) -> Duration {
        Duration::from_secs(self.ticks.len() as u64 + 1)
    }

    /// Ends the current tick with the running `counts`; returns it.
    pub fn tick(&mut self, counts: [u64; 2]) -> Tick {
        let seconds = self.last.1.elapsed().as_secs_f64().max(1e-9);
        let rate = |i: usize| counts[i].saturating_sub(self.last.0[i]) as f64 / seconds;
        let tick = Tick {
            t_s: self.elapsed().as_secs_f64(),
            sent_per_s: rate(0),
            delivered_per_s: rate(1),
        };
        self.ticks.push(tick);
        self.last = (counts, Instant::now());
        tick
    }

    pub fn into_ticks(self) -> Vec<Tick> {
        self.ticks
    }
}

/// A point of the latency percentile curve.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentile {
    pub percentile: f64,
    pub latency_us: f64,
}

/// What a report charts. Each part may be empty, and then its chart is
/// not drawn: `timeline` for a scenario with no steady rate to follow
/// (idle, storm), `memory` without `--server-pid` or outside idle.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Curves {
    /// What the percentile curve measures: "message latency", "login time".
    pub latency_of: &'static str,
    pub latency: Vec<Percentile>,
    /// What the timeline's two rates count: "sent" and "delivered" for
    /// chat.
    pub rates_of: [&'static str; 2],
    pub timeline: Vec<Tick>,
    /// Seconds at the start of the timeline that the figures leave out.
    pub warmup_s: f64,
    /// The server's resident memory after each step of logins, and the
    /// slope fitted through it (bytes per phone).
    pub memory: Vec<Sample>,
    pub bytes_per_phone: f64,
}

/// Percentiles charted, each nine one decade further into the tail.
const NINES: [f64; 13] = [
    0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 0.999999, 1.0,
];

impl Curves {
    /// The percentile curve of `latency`, in nanoseconds; nothing else.
    pub fn new(latency_of: &'static str, latency: &Histogram<u64>) -> Curves {
        let latency = if latency.is_empty() {
            Vec::new()
        } else {
            NINES
                .iter()
                .map(|&q| Percentile {
                    percentile: q * 100.0,
                    latency_us: latency.value_at_quantile(q) as f64 / 1000.0,
                })
                .collect()
        };
        Curves {
            latency_of,
            latency,
            ..Curves::default()
        }
    }

    /// Adds the rates of every second, what they count (`rates_of`), and
    /// the warm-up they began with.
    pub fn with_timeline(
        self,
        timeline: Vec<Tick>,
        rates_of: [&'static str; 2],
        warmup_s: f64,
    ) -> Curves {
        Curves {
            timeline,
            rates_of,
            warmup_s,
            ..self
        }
    }

    /// Adds the server's memory against phones and the slope through it.
    pub fn with_memory(self, memory: Vec<Sample>, bytes_per_phone: f64) -> Curves {
        Curves {
            memory,
            bytes_per_phone,
            ..self
        }
    }
}

/// Writes the report files into `dir`, creating it: `parameters` are the
/// run's options (its `Args`), `summary` its report.
pub fn write(
    dir: &Path,
    parameters: &impl Serialize,
    summary: &impl Serialize,
    curves: &Curves,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[derive(Serialize)]
    struct Document<'a, P, S> {
        parameters: &'a P,
        summary: &'a S,
        #[serde(flatten)]
        curves: &'a Curves,
    }
    let document = Document {
        parameters,
        summary,
        curves,
    };
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&document)?,
    )?;
    let charts = chart::draw(dir, curves)?;
    let page = page(
        &serde_json::to_value(parameters)?,
        &serde_json::to_value(summary)?,
        &charts,
    );
    std::fs::write(dir.join("index.html"), page)?;
    Ok(())
}

/// `index.html`: what ran, the charts, and what it measured.
fn page(parameters: &serde_json::Value, summary: &serde_json::Value, charts: &[&str]) -> String {
    let images: Vec<String> = charts
        .iter()
        .map(|file| format!("<img src=\"{file}\">"))
        .collect();
    format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>loadgen report</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}td{{padding:0 1em}}\
         img{{max-width:100%}}</style>\n\
         <h1>loadgen report</h1>\n<h2>Parameters</h2>\n<table>\n{}</table>\n\
         <h2>Charts</h2>\n{}\n<h2>Results</h2>\n<table>\n{}</table>\n",
        rows(parameters),
        images.join("\n"),
        rows(summary)
    )
}

/// A table row per field of a JSON object.
fn rows(object: &serde_json::Value) -> String {
    let mut rows = String::new();
    for (name, value) in object.as_object().into_iter().flatten() {
        let value = match value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Null => "not set".to_owned(),
            other => other.to_string(),
        };
        rows += &format!(
            "<tr><td>{}</td><td>{}</td></tr>\n",
            html(name),
            html(&value)
        );
    }
    rows
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_writes_json_and_charts_with_the_run_in_them() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for micros in 1..=1000u64 {
            histogram.record(micros * 1000).unwrap();
        }
        let timeline = vec![
            Tick {
                t_s: 1.0,
                sent_per_s: 900.0,
                delivered_per_s: 880.0,
            },
            Tick {
                t_s: 2.0,
                sent_per_s: 1000.0,
                delivered_per_s: 1010.0,
            },
        ];
        let curves = Curves::new("message latency", &histogram).with_timeline(
            timeline,
            ["sent", "delivered"],
            1.0,
        );
        let dir = std::env::temp_dir().join(format!("loadgen-report-{}", std::process::id()));
        let parameters = serde_json::json!({"phones": 10, "rate": 1000});
        write(
            &dir,
            &parameters,
            &serde_json::json!({"delivered": 1890}),
            &curves,
        )
        .unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["summary"]["delivered"], 1890);
        assert_eq!(json["timeline"].as_array().unwrap().len(), 2);
        let p99 = json["latency"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["percentile"] == 99.0)
            .unwrap();
        assert!(
            (p99["latency_us"].as_f64().unwrap() - 990.0).abs() < 2.0,
            "{p99}"
        );
        let svg = std::fs::read_to_string(dir.join("latency.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("polyline"), "{svg}");
        let svg = std::fs::read_to_string(dir.join("throughput.svg")).unwrap();
        assert!(svg.contains("delivered"));
        assert!(std::fs::read_to_string(dir.join("index.html"))
            .unwrap()
            .contains("<td>delivered</td><td>1890</td>"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_page_shows_the_parameters_and_the_charts_mark_the_warm_up() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        histogram.record(2_500_000).unwrap();
        let tick = |t_s| Tick {
            t_s,
            sent_per_s: 50.0,
            delivered_per_s: 500.0,
        };
        let curves = Curves::new("member delivery latency", &histogram).with_timeline(
            vec![tick(1.0), tick(2.0), tick(3.0)],
            ["posts", "member deliveries"],
            2.0,
        );
        let dir = tempfile::tempdir().unwrap();
        let parameters = serde_json::json!({"group_size": 10, "ca": null, "target": "127.0.0.1:1"});
        write(dir.path(), &parameters, &serde_json::json!({}), &curves).unwrap();
        let page = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
        for row in [
            "<td>group_size</td><td>10</td>",
            "<td>ca</td><td>not set</td>",
            "<td>target</td><td>127.0.0.1:1</td>",
        ] {
            assert!(page.contains(row), "{row} in {page}");
        }
        let latency = std::fs::read_to_string(dir.path().join("latency.svg")).unwrap();
        assert!(latency.contains("(ms)") && latency.contains("p50 2.5 ms"));
        let rates = std::fs::read_to_string(dir.path().join("throughput.svg")).unwrap();
        for text in ["warm-up", "posts and member deliveries per second"] {
            assert!(rates.contains(text), "{text}");
        }
        let json = std::fs::read_to_string(dir.path().join("report.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["parameters"]["group_size"], 10);
        assert_eq!(json["warmup_s"], 2.0);
    }

    #[test]
    fn memory_against_phones_is_charted_when_measured() {
        let histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let samples = [(0, 100 << 20), (1000, 110 << 20), (2000, 120 << 20)]
            .map(|(phones, server_rss_bytes)| Sample {
                phones,
                server_rss_bytes,
            })
            .to_vec();
        let curves = Curves::new("login time", &histogram).with_memory(samples, 10_485.76);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &(), &serde_json::json!({}), &curves).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("memory.svg")).unwrap();
        assert!(svg.contains("10,486 bytes per phone"), "{svg}");
        let page = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
        assert!(page.contains("<img src=\"memory.svg\">"));
    }

    #[test]
    fn without_a_timeline_there_is_no_throughput_chart() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        histogram.record(5_000_000).unwrap();
        let curves = Curves::new("login time", &histogram);
        let dir =
            std::env::temp_dir().join(format!("loadgen-report-logins-{}", std::process::id()));
        write(&dir, &(), &serde_json::json!({"back": 1}), &curves).unwrap();
        assert!(std::fs::read_to_string(dir.join("latency.svg"))
            .unwrap()
            .contains("login time by percentile"));
        assert!(!dir.join("throughput.svg").exists());
        let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
        assert!(!page.contains("throughput.svg"), "{page}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
