//! A report's charts, drawn as SVG with plotters: latency by percentile
//! (milliseconds on a log scale, the tail spread out by nines), the rates
//! of every second with the warm-up shaded, and the server's memory
//! against phones with the fitted slope. Text is left to the viewer's
//! sans-serif font, so no font crate is needed.

use std::path::Path;

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{Curves, Percentile, Tick};
use crate::idle::Sample;

/// Every chart's size in pixels: wide enough for a tick label per nine.
const CHART_SIZE: (u32, u32) = (900, 520);

/// Room for the y axis's tick labels and its description.
const Y_LABEL_AREA: u32 = 80;

/// Room for the x axis's tick labels and its description.
const X_LABEL_AREA: u32 = 50;

/// Room right of the plot, so the last x tick label is not cut off.
const RIGHT_MARGIN: u32 = 40;

const CAPTION_FONT: (&str, u32) = ("sans-serif", 22);
const LABEL_FONT: (&str, u32) = ("sans-serif", 15);

type ChartResult = Result<(), Box<dyn std::error::Error>>;

/// Draws every chart `curves` has data for into `dir`; returns their file
/// names.
pub(super) fn draw(dir: &Path, curves: &Curves) -> anyhow::Result<Vec<&'static str>> {
    let mut drawn = Vec::new();
    let mut draw_one = |file: &'static str, chart: &dyn Fn(&Path) -> ChartResult| {
        let path = dir.join(file);
        chart(&path).map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
        drawn.push(file);
        anyhow::Ok(())
    };
    draw_one("latency.svg", &|path| {
        latency(path, curves.latency_of, &curves.latency)
    })?;
    if !curves.timeline.is_empty() {
        draw_one("throughput.svg", &|path| rates(path, curves))?;
    }
    if !curves.memory.is_empty() {
        draw_one("memory.svg", &|path| {
            memory(path, &curves.memory, curves.bytes_per_phone)
        })?;
    }
    Ok(drawn)
}

/// Where a percentile sits on the chart's x axis: the number of nines, so
/// 90 % is 1, 99 % is 2, 99.9 % is 3 (the tail gets as much room as the
/// body, as in HdrHistogram's own plots). 100 % (the maximum) is at 6.
fn nines(percentile: f64) -> f64 {
    let rest = (1.0 - percentile / 100.0).max(1e-6);
    -rest.log10()
}

/// The x axis's tick labels: the percentile at each whole nine.
fn nines_label(x: f64) -> String {
    const LABELS: [&str; 7] = ["0", "90", "99", "99.9", "99.99", "99.999", "max"];
    let whole = x.round();
    match LABELS.get(whole as usize) {
        Some(label) if (x - whole).abs() < 1e-6 && whole >= 0.0 => (*label).to_owned(),
        _ => String::new(),
    }
}

/// A log axis's labelled values between `low` and `high`: 1, 2 and 5 of
/// every decade, which read as round numbers and sit nearly evenly apart.
fn one_two_five(low: f64, high: f64) -> Vec<f64> {
    let mut points = Vec::new();
    let mut decade = 10f64.powf(low.log10().floor());
    while decade <= high {
        for step in [1.0, 2.0, 5.0] {
            let value = decade * step;
            if (low..=high).contains(&value) {
                points.push(value);
            }
        }
        decade *= 10.0;
    }
    points
}

/// A number as people write it: no trailing zeros, at most three decimals
/// below 10 and none above, thousands grouped (0.05, 2.5, 120, 45,000).
fn plain(value: f64) -> String {
    let decimals = match value.abs() {
        v if v >= 10.0 => 0,
        v if v >= 1.0 => 1,
        v if v >= 0.1 => 2,
        _ => 3,
    };
    let text = format!("{value:.decimals$}");
    let text = match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.'),
        false => &text,
    };
    let (sign, digits) = text.split_at(usize::from(text.starts_with('-')));
    if digits.len() < 5 || digits.contains('.') {
        return text.to_owned();
    }
    let mut grouped = String::from(sign);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// The percentiles a latency chart names beside their points.
const NAMED: [(f64, &str); 4] = [
    (50.0, "p50"),
    (99.0, "p99"),
    (99.9, "p99.9"),
    (100.0, "max"),
];

fn latency(path: &Path, what: &str, points: &[Percentile]) -> ChartResult {
    let root = SVGBackend::new(path, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let ms: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (nines(p.percentile), (p.latency_us / 1000.0).max(0.001)))
        .collect();
    // A run that measured nothing still gets its (empty) chart: around
    // 1 ms, not an inverted range.
    let low = ms.iter().map(|p| p.1).reduce(f64::min).unwrap_or(1.0);
    let high = ms.iter().map(|p| p.1).fold(low, f64::max);
    // From the decade below the fastest (a hair under it, so that its
    // label is inside), with room above the slowest for its label.
    let bottom = 10f64.powf(low.log10().floor()) * 0.999;
    let top = high * 3.0;
    let y_axis = (bottom..top)
        .log_scale()
        .with_key_points(one_two_five(bottom, top));
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{what} by percentile"), CAPTION_FONT)
        .margin(12)
        .margin_right(RIGHT_MARGIN)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(0.0..6.0, y_axis)?;
    chart
        .configure_mesh()
        .x_labels(7)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| plain(*y))
        .x_desc("percentile (%)")
        .y_desc(format!("{what} (ms)"))
        .label_style(LABEL_FONT)
        .axis_desc_style(LABEL_FONT)
        .draw()?;
    chart.draw_series(LineSeries::new(ms.iter().copied(), BLUE.stroke_width(2)))?;
    chart.draw_series(ms.iter().map(|&point| Circle::new(point, 3, BLUE.filled())))?;
    for (percentile, name) in NAMED {
        let Some(point) = points.iter().find(|p| p.percentile == percentile) else {
            continue;
        };
        let at = (nines(percentile), (point.latency_us / 1000.0).max(0.001));
        // Below the curve, which only rises: right of the point, or left
        // of it at the right edge.
        let (offset, across) = match at.0 > 5.0 {
            true => ((-8, 8), HPos::Right),
            false => ((8, 8), HPos::Left),
        };
        let style = TextStyle::from(LABEL_FONT.into_font()).pos(Pos::new(across, VPos::Top));
        let text = format!("{name} {} ms", plain(at.1));
        chart.draw_series(std::iter::once(
            EmptyElement::at(at) + Text::new(text, offset, style),
        ))?;
    }
    root.present()?;
    Ok(())
}

fn rates(path: &Path, curves: &Curves) -> ChartResult {
    let ticks = &curves.timeline;
    let root = SVGBackend::new(path, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let end = ticks.last().map_or(1.0, |t| t.t_s.max(1.0));
    // Headroom above the highest rate for the legend.
    let top = ticks
        .iter()
        .map(|t| t.sent_per_s.max(t.delivered_per_s))
        .fold(1.0, f64::max)
        * 1.35;
    let [first, second] = curves.rates_of;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{first} and {second} per second"), CAPTION_FONT)
        .margin(12)
        .margin_right(RIGHT_MARGIN)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(0.0..end, 0.0..top)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| plain(*x))
        .y_label_formatter(&|y| plain(*y))
        .x_desc("seconds since the load began")
        .y_desc("per second")
        .label_style(LABEL_FONT)
        .axis_desc_style(LABEL_FONT)
        .draw()?;
    if curves.warmup_s > 0.0 {
        let shade = BLACK.mix(0.08);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.0), (curves.warmup_s.min(end), top)],
                shade.filled(),
            )))?
            .label("warm-up (left out of the figures)")
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], shade.filled()));
    }
    let points = |value: fn(&Tick) -> f64| -> Vec<(f64, f64)> {
        ticks.iter().map(|t| (t.t_s, value(t))).collect()
    };
    let series = [
        (first, RED, points(|t| t.sent_per_s)),
        (second, BLUE, points(|t| t.delivered_per_s)),
    ];
    for (label, color, points) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(LABEL_FONT)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn memory(path: &Path, samples: &[Sample], bytes_per_phone: f64) -> ChartResult {
    let root = SVGBackend::new(path, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.phones as f64, mib(s.server_rss_bytes as f64)))
        .collect();
    let right = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let top = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("server memory by phones logged in", CAPTION_FONT)
        .margin(12)
        .margin_right(RIGHT_MARGIN)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(0.0..right, 0.0..top)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| plain(*x))
        .y_label_formatter(&|y| plain(*y))
        .x_desc("phones logged in")
        .y_desc("server RSS (MiB)")
        .label_style(LABEL_FONT)
        .axis_desc_style(LABEL_FONT)
        .draw()?;
    // The least-squares line passes through the mean point.
    let n = points.len() as f64;
    let mean = points
        .iter()
        .fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
    let slope_mib = mib(bytes_per_phone);
    let fit = |x: f64| mean.1 + slope_mib * (x - mean.0);
    chart
        .draw_series(LineSeries::new(
            [(0.0, fit(0.0)), (right, fit(right))],
            BLUE.stroke_width(2),
        ))?
        .label(format!("fit: {} bytes per phone", plain(bytes_per_phone)))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 5, RED.filled())))?
        .label("after each step")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(LABEL_FONT)
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
    fn nines_put_the_tail_on_equal_steps() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), 6.0);
    }

    /// A run that measured no latency (no phone logged in) still gets its
    /// chart: with no points the axis must not come out inverted, which
    /// plotters' log scale never finishes drawing.
    #[test]
    fn a_chart_of_nothing_is_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.svg");
        latency(&path, "message latency", &[]).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("<svg"));
    }

    #[test]
    fn log_axes_are_labelled_one_two_five() {
        let points = one_two_five(0.0999, 30.0);
        let labels: Vec<String> = points.iter().map(|&p| plain(p)).collect();
        assert_eq!(labels, ["0.1", "0.2", "0.5", "1", "2", "5", "10", "20"]);
    }

    #[test]
    fn tick_labels_read_as_people_write_numbers() {
        assert_eq!(nines_label(0.0), "0");
        assert_eq!(nines_label(3.0), "99.9");
        assert_eq!(nines_label(6.0), "max");
        assert_eq!(nines_label(2.5), "");
        assert_eq!(plain(0.05), "0.05");
        assert_eq!(plain(2.5), "2.5");
        assert_eq!(plain(2.0), "2");
        assert_eq!(plain(120.0), "120");
        assert_eq!(plain(4500.0), "4500");
        assert_eq!(plain(45000.0), "45,000");
        assert_eq!(plain(-2654.2), "-2654");
        assert_eq!(plain(1234567.0), "1,234,567");
        assert_eq!(plain(0.001), "0.001");
    }
}
