//! `docs/dashboard.md`: what the picture is, exactly, how it was made
//! (the machine, the commands, the Prometheus version, how the
//! dashboard's variables were replaced), the load phases with what
//! loadgen measured in each, and for every panel the highest and the
//! last value of each series in each phase.

use std::fmt::Write;

use super::{
    capture::{Capture, PanelData, Series},
    grafana::Kind,
    load::PhaseRecord,
    render::clock,
    units::Unit,
};

/// The description of `capture`, as Markdown.
pub fn markdown(capture: &Capture) -> String {
    let mut out = String::new();
    introduction(&mut out, capture);
    how_it_was_made(&mut out, capture);
    phases(&mut out, &capture.phases);
    out.push_str("\n## What each panel shows\n\n");
    out.push_str(
        "For each series, its highest value during each phase and its value at the \
         phase's end (`max / end`), in the panel's unit. The lead-in before phase 1 \
         and the rest after the last phase are left out.\n",
    );
    for data in &capture.panels {
        panel(&mut out, data, capture);
    }
    out
}

fn introduction(out: &mut String, capture: &Capture) {
    let _ = write!(
        out,
        "# The Grafana dashboard against a running server\n\n\
         ![The panels of packaging/grafana/isle.json over a run of isle under loadgen](dashboard.png)\n\n\
         **What this picture is:** the panels of `packaging/grafana/isle.json`, their \
         queries evaluated by {prometheus} against isle under the loadgen run below, \
         drawn by `ci dashboard` (`ci/src/dashboard/`). Grafana itself is not \
         installable on the machine that made it (it is not packaged in Debian, and \
         dl.grafana.com, Docker Hub and the Go module proxy do not resolve from there), \
         so this is not a Grafana screenshot: the grid, the titles, the queries, the \
         legend names and the units are the dashboard's; the drawing is plotters' \
         (SVG, rasterised by resvg in DejaVu Sans), not Grafana's theme.\n\n\
         Made with `cargo run -p ci -- dashboard`, which writes this file and the \
         picture; `--from` draws both again from the capture a run saved.\n",
        prometheus = capture
            .environment
            .iter()
            .find(|(what, _)| what == "prometheus")
            .map_or("Prometheus", |(_, version)| version.as_str()),
    );
}

fn how_it_was_made(out: &mut String, capture: &Capture) {
    out.push_str("\n## How it was made\n\n");
    for (what, value) in &capture.environment {
        let _ = writeln!(out, "- {what}: {value}");
    }
    let _ = writeln!(
        out,
        "- Prometheus ran as a process of its own (its own configuration, a \
         temporary data directory and a loopback port, so a packaged Prometheus \
         service could not answer instead), scraping isle's admin listener \
         (`/metrics`) every {scrape} s.\n\
         - Each panel's queries were evaluated with `/api/v1/query_range` from {from} \
         to {to} UTC, a step of {step} s: what Grafana asks for this range from a data \
         source whose scrape interval is set to {scrape} s.",
        scrape = capture.scrape_s,
        step = capture.step_s,
        from = clock(capture.start_s),
        to = clock(capture.end_s),
    );
    let variables: Vec<String> = capture
        .variables
        .iter()
        .map(|(name, value)| format!("`${name}` by `{value}`"))
        .collect();
    let rate_interval_s = (capture.step_s + capture.scrape_s).max(4 * capture.scrape_s);
    let _ = writeln!(
        out,
        "- Variables were replaced as Grafana replaces them for this range: template \
         variables set to \"All\" ({}; `$datasource` only picks the data source), \
         `$__rate_interval` by `{rate_interval_s}s` (Grafana's `max($__interval + \
         scrape interval, 4 × scrape interval)`), `$__interval` by the step and \
         `$__range` by the range. With Grafana's default scrape interval for a data \
         source, 15 s, `$__rate_interval` would be at least 60 s, and each change of \
         load below a ramp of a minute.\n\
         - Legends are each target's `legendFormat` with `{{{{label}}}}` replaced by \
         the series' label, as Grafana does.",
        variables.join(", "),
    );
    out.push_str(
        "\nWhere the picture differs from what Grafana would draw:\n\n\
         - A stat panel shows the value at the end of the run (Grafana's default \
         reduction, the last value) over a sparkline of the run, as Grafana's default \
         stat does, and adds the peak and its time; it is not coloured by thresholds.\n\
         - The load phases are shaded and numbered in every time series.\n\
         - A panel whose series are all zero says so; one with no series says \
         \"No data\", as Grafana does.\n",
    );
}

fn phases(out: &mut String, phases: &[PhaseRecord]) {
    out.push_str(
        "\n## Load phases\n\nOne after the other, each loadgen run to its end \
         (logins, sending, then waiting for every message to arrive):\n\n\
         | # | phase | UTC | what it does | loadgen measured |\n\
         |---|---|---|---|---|\n",
    );
    for (index, phase) in phases.iter().enumerate() {
        let command = if phase.command.is_empty() {
            String::new()
        } else {
            format!(" (`{}`)", phase.command)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {}–{} ({:.0} s) | {}{} | {} |",
            index + 1,
            phase.name,
            clock(phase.start_s),
            clock(phase.end_s),
            phase.end_s - phase.start_s,
            phase.summary,
            command,
            measured(&phase.report),
        );
    }
    out.push_str(
        "\nLatency is loadgen's, from a send to its arrival: a message to a phone that \
         is away waits for it to come back (phase 1's p99); phones that read nothing \
         are left out of the figures (phase 2). A mailbox keeps an entry, a message \
         or a receipt, until its phone acknowledges it, and loadgen ends a run once \
         every message has arrived, not every receipt: the `Delivered` receipts its \
         phones had not read when they logged off stay queued after the run (in a \
         run of phase 2 alone, every message stored was acknowledged, the mailboxes \
         held no message bytes, and the entries left equalled the receipts stored \
         less those loadgen read).\n\
         \nWhat this load does not exercise, so its series stay at zero: SMS (test \
         numbers get a fixed code and no SMS), push (no phone registers a push token), \
         the write-back cache (`sync_delay_ms` is 0 by default, so it is off), \
         presence and typing signals (none are sent, so none are dropped), and a \
         failing journal.\n",
    );
}

/// loadgen's figures for a phase, from its JSON report.
fn measured(report: &serde_json::Value) -> String {
    if report.is_null() {
        return "–".to_owned();
    }
    let number = |name: &str| report[name].as_f64().unwrap_or(0.0);
    format!(
        "{:.0} delivered/s; latency p50 {:.1} ms, p99 {:.1} ms; {:.0} sends refused \
         and resent; lost {:.0}",
        number("delivered_per_s"),
        number("latency_us_p50") / 1000.0,
        number("latency_us_p99") / 1000.0,
        number("refused_retryable"),
        number("lost"),
    )
}

fn panel(out: &mut String, data: &PanelData, capture: &Capture) {
    let kind = match data.panel.kind {
        Kind::Stat => "stat",
        Kind::TimeSeries => "time series",
    };
    let _ = writeln!(
        out,
        "\n### {}\n\nA {kind}; its queries:\n",
        data.panel.title
    );
    for query in &data.queries {
        let _ = writeln!(out, "- `{query}`");
    }
    out.push('\n');
    if data.series.iter().all(|series| series.points.is_empty()) {
        out.push_str(
            "No data: no series matched over the whole run (the counters of this \
             panel appear only once what they count has happened).\n",
        );
        return;
    }
    let Some((series, (time, value))) = highest(data) else {
        out.push_str("0 throughout the run.\n");
        return;
    };
    let name = match data.panel.kind {
        Kind::Stat => "the value",
        Kind::TimeSeries => &format!("`{}`", series.legend),
    };
    let _ = writeln!(
        out,
        "Highest: {name} at {}, {} UTC ({}).\n",
        data.panel.unit.scale(value).format(value),
        clock(time),
        phase_at(&capture.phases, time),
    );
    out.push_str("| series |");
    for (index, phase) in capture.phases.iter().enumerate() {
        let _ = write!(out, " {} {} |", index + 1, phase.name);
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(capture.phases.len()));
    out.push('\n');
    for series in &data.series {
        // A stat's series is unnamed (its query, without legendFormat).
        let name = match data.panel.kind {
            Kind::Stat => "value",
            Kind::TimeSeries => series.legend.as_str(),
        };
        let _ = write!(out, "| {name} |");
        for phase in &capture.phases {
            let _ = write!(out, " {} |", in_phase(series, phase, data.panel.unit));
        }
        out.push('\n');
    }
}

/// The series and point of a panel's highest value (its first time),
/// if any is above zero.
fn highest(data: &PanelData) -> Option<(&Series, (f64, f64))> {
    let points = data
        .series
        .iter()
        .flat_map(|series| series.points.iter().map(move |&point| (series, point)));
    points.fold(None, |best, (series, (time, value))| {
        let higher = best.map_or(value > 0.0, |(_, (_, top))| value > top);
        if higher {
            Some((series, (time, value)))
        } else {
            best
        }
    })
}

/// Which phase `time` falls in, as `phase N NAME`, or the rest around
/// them.
fn phase_at(phases: &[PhaseRecord], time: f64) -> String {
    let found = phases
        .iter()
        .position(|phase| time >= phase.start_s && time < phase.end_s);
    match found {
        Some(index) => format!("phase {} {}", index + 1, phases[index].name),
        None if phases.first().is_some_and(|first| time < first.start_s) => {
            "before the first phase".to_owned()
        }
        None => "after the last phase".to_owned(),
    }
}

/// `max / end` of `series` within `phase` (its start included, its end
/// not: the next phase's), each number in its own scale,
/// or `–` with no point there.
fn in_phase(series: &Series, phase: &PhaseRecord, unit: Unit) -> String {
    let points: Vec<f64> = series
        .points
        .iter()
        .filter(|&&(time, _)| time >= phase.start_s && time < phase.end_s)
        .map(|&(_, value)| value)
        .collect();
    let Some(&end) = points.last() else {
        return "–".to_owned();
    };
    let max = points.iter().copied().fold(f64::MIN, f64::max);
    let write = |value: f64| unit.scale(value).format(value);
    format!("{} / {}", write(max), write(end))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::markdown;
    use crate::dashboard::{
        capture::{Capture, PanelData, Series},
        grafana::{Grid, Kind, Panel, Target},
        load::PhaseRecord,
        units::Unit,
    };

    fn phase(name: &str, start_s: f64, end_s: f64) -> PhaseRecord {
        PhaseRecord {
            name: name.to_owned(),
            summary: format!("{name} things"),
            command: String::new(),
            start_s,
            end_s,
            report: serde_json::Value::Null,
        }
    }

    fn panel(title: &str, series: Vec<Series>) -> PanelData {
        PanelData {
            panel: Panel {
                title: title.to_owned(),
                kind: Kind::TimeSeries,
                grid: Grid {
                    x: 0,
                    y: 0,
                    w: 12,
                    h: 8,
                },
                unit: Unit::Seconds,
                targets: vec![Target {
                    expr: "q".to_owned(),
                    legend: None,
                }],
            },
            queries: vec!["q".to_owned()],
            series,
        }
    }

    fn line(legend: &str, values: &[f64]) -> Series {
        Series {
            legend: legend.to_owned(),
            target: 0,
            points: values
                .iter()
                .enumerate()
                .map(|(t, &v)| (t as f64, v))
                .collect(),
        }
    }

    #[test]
    fn each_series_is_summed_up_per_phase() {
        let capture = Capture {
            title: "t".to_owned(),
            start_s: 0.0,
            end_s: 6.0,
            step_s: 1,
            scrape_s: 1,
            variables: BTreeMap::from([("instance".to_owned(), ".*".to_owned())]),
            environment: vec![],
            phases: vec![phase("busy", 0.0, 3.0), phase("idle", 3.0, 6.0)],
            panels: vec![
                panel(
                    "Latency",
                    vec![line("p99", &[0.001, 0.004, 0.002, 0.0005, 0.0, 0.0])],
                ),
                panel("Flat", vec![line("a", &[0.0, 0.0])]),
                panel("Empty", vec![]),
            ],
        };
        let text = markdown(&capture);
        assert!(
            text.contains("| p99 | 4 ms / 2 ms | 500 µs / 0 µs |"),
            "{text}"
        );
        assert!(text.contains("Highest: `p99` at 4 ms, 00:00:01 UTC (phase 1 busy)."));
        assert!(text.contains("### Flat\n\nA time series; its queries:\n\n- `q`\n\n0 throughout"));
        assert!(text.contains("### Empty") && text.contains("No data: no series matched"));
        assert!(
            text.contains("`$instance` by `.*`") && text.contains("`$__rate_interval` by `4s`")
        );
    }
}
