//! `--report DIR`: a run's result as files people can read. `report.json`
//! holds the summary, the throughput of every second and the latency
//! percentile curve; `latency.svg` and `throughput.svg` chart them (through
//! plotters), and `index.html` shows both with the summary.

use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

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

/// One second of a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Tick {
    /// Seconds since sending began, at the end of this tick.
    pub t_s: f64,
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
}

/// A point of the latency percentile curve.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentile {
    pub percentile: f64,
    pub latency_us: f64,
}

/// What a report charts. `timeline` may be empty (a scenario with no
/// steady rate to follow), and then no throughput chart is drawn.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Curves {
    /// What the percentile curve measures: "message latency", "login time".
    pub latency_of: &'static str,
    pub timeline: Vec<Tick>,
    pub latency: Vec<Percentile>,
}

/// Percentiles charted, each nine one decade further into the tail.
const NINES: [f64; 13] = [
    0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 0.999999, 1.0,
];

impl Curves {
    /// `latency` is in nanoseconds.
    pub fn new(latency_of: &'static str, timeline: Vec<Tick>, latency: &Histogram<u64>) -> Curves {
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
            timeline,
            latency,
        }
    }
}

/// Writes the report files for `summary` into `dir`, creating it.
pub fn write(dir: &Path, summary: &impl Serialize, curves: &Curves) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[derive(Serialize)]
    struct Document<'a, S> {
        summary: &'a S,
        #[serde(flatten)]
        curves: &'a Curves,
    }
    let json = serde_json::to_string_pretty(&Document { summary, curves })?;
    std::fs::write(dir.join("report.json"), &json)?;
    let latency = dir.join("latency.svg");
    let throughput = dir.join("throughput.svg");
    latency_chart(&latency, curves.latency_of, &curves.latency)
        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", latency.display()))?;
    let mut images = "<img src=\"latency.svg\">".to_owned();
    if !curves.timeline.is_empty() {
        throughput_chart(&throughput, &curves.timeline)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", throughput.display()))?;
        images += " <img src=\"throughput.svg\">";
    }
    let summary = serde_json::to_value(summary)?;
    let mut rows = String::new();
    if let Some(fields) = summary.as_object() {
        for (name, value) in fields {
            rows += &format!(
                "<tr><td>{}</td><td>{}</td></tr>\n",
                html(name),
                html(&value.to_string())
            );
        }
    }
    let page = format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>loadgen report</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}td{{padding:0 1em}}</style>\n\
         <h1>loadgen report</h1>\n{images}\n<table>\n{rows}</table>\n"
    );
    std::fs::write(dir.join("index.html"), page)?;
    Ok(())
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Where a percentile sits on the chart's x axis: the number of nines, so
/// 90 % is 1, 99 % is 2, 99.9 % is 3 (the tail gets as much room as the
/// body, as in HdrHistogram's own plots).
fn nines(percentile: f64) -> f64 {
    let rest = (1.0 - percentile / 100.0).max(1e-6);
    -rest.log10()
}

type ChartResult = Result<(), Box<dyn std::error::Error>>;

fn latency_chart(path: &Path, what: &str, points: &[Percentile]) -> ChartResult {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_us = points.iter().map(|p| p.latency_us).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{what} by percentile"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..6.0, (1.0..max_us * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc(format!("{what} (µs)"))
        .x_label_formatter(&|x| format!("{}", 100.0 - 100.0 * 10f64.powf(-x)))
        .draw()?;
    chart.draw_series(LineSeries::new(
        points
            .iter()
            .map(|p| (nines(p.percentile), p.latency_us.max(1.0))),
        &BLUE,
    ))?;
    root.present()?;
    Ok(())
}

fn throughput_chart(path: &Path, ticks: &[Tick]) -> ChartResult {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let end = ticks.last().map_or(1.0, |t| t.t_s.max(1.0));
    let top = ticks
        .iter()
        .map(|t| t.sent_per_s.max(t.delivered_per_s))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("messages per second", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..top * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .draw()?;
    let points = |value: fn(&Tick) -> f64| -> Vec<(f64, f64)> {
        ticks.iter().map(|t| (t.t_s, value(t))).collect()
    };
    let series = [
        ("sent", RED, points(|t| t.sent_per_s)),
        ("delivered", BLUE, points(|t| t.delivered_per_s)),
    ];
    for (label, color, points) in series {
        chart
            .draw_series(LineSeries::new(points, &color))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
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
        let curves = Curves::new("message latency", timeline, &histogram);
        let dir = std::env::temp_dir().join(format!("loadgen-report-{}", std::process::id()));
        write(&dir, &serde_json::json!({"delivered": 1890}), &curves).unwrap();
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
    fn without_a_timeline_there_is_no_throughput_chart() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        histogram.record(5_000_000).unwrap();
        let curves = Curves::new("login time", Vec::new(), &histogram);
        let dir =
            std::env::temp_dir().join(format!("loadgen-report-logins-{}", std::process::id()));
        write(&dir, &serde_json::json!({"back": 1}), &curves).unwrap();
        assert!(std::fs::read_to_string(dir.join("latency.svg"))
            .unwrap()
            .contains("login time by percentile"));
        assert!(!dir.join("throughput.svg").exists());
        let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
        assert!(!page.contains("throughput.svg"), "{page}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nines_put_the_tail_on_equal_steps() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), 6.0);
    }
}
