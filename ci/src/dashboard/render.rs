//! Draws a [`Capture`] as one PNG laid out on the dashboard's grid: each
//! panel with its title, a time series as lines over clock time with its
//! legend below and its unit on the value axis, a stat as its last value
//! over a sparkline. The load phases are shaded and numbered on every
//! time series, and named in a header. plotters draws it as SVG (text
//! measured with ab_glyph) and resvg rasterises that, its text shaped
//! with the same DejaVu Sans file.

use std::path::Path;

use anyhow::{anyhow, Context};
use plotters::{
    coord::{types::RangedCoordf64, Shift},
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use resvg::{tiny_skia, usvg};

use super::{
    capture::{Capture, PanelData, Series},
    grafana::{Kind, GRID_COLUMNS},
};

/// The whole picture's width; a grid column is a 24th of it.
const IMAGE_WIDTH_PX: u32 = 1800;
/// One of Grafana's grid rows (30 px there), taller here so that an
/// 8-row panel holds a chart and a legend of six entries.
const GRID_ROW_PX: u32 = 40;
/// Space between panels.
const GAP_PX: u32 = 8;
/// The title, the subtitle and the phases' key above the grid.
const HEADER_PX: u32 = 96;

/// DejaVu Sans, from Debian's `fonts-dejavu-core` (installed when missing).
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT_BOLD_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf";
const FONT: &str = "sans-serif";
const FONT_FAMILY: &str = "DejaVu Sans";

/// plotters takes a font's size as its line height and writes
/// `size / 1.24` as the SVG font size; the sizes below are the SVG's, in
/// pixels, and [`font`] converts.
const LINE_HEIGHT_PER_EM: f64 = 1.24;

const TITLE_PX: u32 = 17;
const TEXT_PX: u32 = 14;
const SMALL_PX: u32 = 13;
const STAT_VALUE_PX: u32 = 44;
/// Where a stat's value starts, under the title.
const STAT_TOP_PX: u32 = 40;
const LEGEND_ROW_PX: u32 = 20;

const BACKGROUND: RGBColor = RGBColor(244, 245, 245);
const PANEL: RGBColor = WHITE;
const BORDER: RGBColor = RGBColor(214, 216, 220);
const INK: RGBColor = RGBColor(36, 41, 46);
const MUTED: RGBColor = RGBColor(110, 116, 124);
const GRID_LINE: RGBColor = RGBColor(232, 234, 237);

/// Line colours, in order: Grafana's classic palette, darkened where a
/// colour is faint on white.
const PALETTE: [RGBColor; 8] = [
    RGBColor(50, 116, 217),
    RGBColor(255, 120, 10),
    RGBColor(86, 166, 75),
    RGBColor(224, 47, 68),
    RGBColor(143, 59, 184),
    RGBColor(196, 160, 0),
    RGBColor(31, 158, 158),
    RGBColor(214, 51, 138),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Writes the picture of `capture` to `path` (PNG).
pub fn draw(capture: &Capture, path: &Path) -> anyhow::Result<()> {
    let fonts = read_fonts()?;
    let rows = capture
        .panels
        .iter()
        .map(|data| data.panel.grid.y + data.panel.grid.h)
        .max()
        .unwrap_or(0);
    let size = (IMAGE_WIDTH_PX, HEADER_PX + rows * GRID_ROW_PX + GAP_PX);
    let mut svg = String::new();
    draw_svg(capture, &mut svg, size)?;
    rasterise(&svg, size, fonts, path)
}

/// The picture as SVG into `svg`.
fn draw_svg(capture: &Capture, svg: &mut String, size: (u32, u32)) -> anyhow::Result<()> {
    let root = SVGBackend::with_string(svg, size).into_drawing_area();
    root.fill(&BACKGROUND).map_err(plot)?;
    header(&root, capture)?;
    let column_px = IMAGE_WIDTH_PX / GRID_COLUMNS;
    for data in &capture.panels {
        let grid = data.panel.grid;
        let area = root.clone().shrink(
            (
                grid.x * column_px + GAP_PX,
                HEADER_PX + grid.y * GRID_ROW_PX + GAP_PX,
            ),
            (grid.w * column_px - GAP_PX, grid.h * GRID_ROW_PX - GAP_PX),
        );
        area.fill(&PANEL).map_err(plot)?;
        let (width, height) = area.dim_in_pixel();
        area.draw(&Rectangle::new(
            [(0, 0), (width as i32 - 1, height as i32 - 1)],
            BORDER,
        ))
        .map_err(plot)?;
        text(&area, &data.panel.title, (12, 10), bold(TITLE_PX), INK)?;
        match data.panel.kind {
            Kind::Stat => stat(&area, data, capture)?,
            Kind::TimeSeries => time_series(&area, data, capture)?,
        }
    }
    root.present().map_err(plot)
}

/// Renders `svg` to a PNG at `path`, its `sans-serif` text in DejaVu
/// Sans from `fonts` (the regular and bold files).
fn rasterise(
    svg: &str,
    size: (u32, u32),
    fonts: [&'static [u8]; 2],
    path: &Path,
) -> anyhow::Result<()> {
    let mut database = usvg::fontdb::Database::new();
    for font in fonts {
        database.load_font_data(font.to_vec());
    }
    database.set_sans_serif_family(FONT_FAMILY);
    let options = usvg::Options {
        font_family: FONT_FAMILY.to_owned(),
        fontdb: std::sync::Arc::new(database),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &options).context("the drawing is not SVG resvg reads")?;
    let mut pixmap = tiny_skia::Pixmap::new(size.0, size.1).context("an empty picture")?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap
        .save_png(path)
        .with_context(|| format!("writing {}", path.display()))
}

/// The dashboard's title, what the picture is, and the phases' key.
fn header(root: &Area, capture: &Capture) -> anyhow::Result<()> {
    let title = format!(
        "{} — Grafana dashboard packaging/grafana/isle.json",
        capture.title
    );
    text(root, &title, (GAP_PX as i32 + 4, 12), bold(21), INK)?;
    let subtitle = format!(
        "Its queries evaluated by Prometheus every {} s from {} to {} UTC against a \
         two-shard isle under loadgen, drawn by `cargo run -p ci -- dashboard` \
         (not by Grafana: see docs/dashboard.md)",
        capture.step_s,
        clock(capture.start_s),
        clock(capture.end_s),
    );
    text(
        root,
        &subtitle,
        (GAP_PX as i32 + 4, 44),
        regular(TEXT_PX),
        MUTED,
    )?;
    let phases: Vec<String> = capture
        .phases
        .iter()
        .enumerate()
        .map(|(index, phase)| {
            format!(
                "{} {} ({}–{})",
                index + 1,
                phase.name,
                clock(phase.start_s),
                clock(phase.end_s)
            )
        })
        .collect();
    let key = format!(
        "Load phases (UTC), shaded and numbered in each chart:  {}",
        phases.join("  ·  ")
    );
    text(root, &key, (GAP_PX as i32 + 4, 68), regular(TEXT_PX), INK)
}

/// A time series panel: the chart, with the legend under it.
fn time_series(area: &Area, data: &PanelData, capture: &Capture) -> anyhow::Result<()> {
    let (width, height) = area.dim_in_pixel();
    let legend = legend_layout(area, &data.series, width - 24)?;
    let legend_px = legend.last().map_or(0, |entry| entry.row + 1) * LEGEND_ROW_PX;
    // Under the title with room for the top tick's label.
    let chart_area = area.margin(44, legend_px + 10, 10, 18);
    let largest = data
        .series
        .iter()
        .flat_map(|series| series.points.iter().map(|&(_, value)| value.abs()))
        .fold(0.0, f64::max);
    let scale = data.panel.unit.scale(largest);
    // Headroom over the largest value keeps the top tick's label inside;
    // a panel at zero shows an axis up to 1.
    let highest = if largest > 0.0 {
        largest / scale.divisor
    } else {
        1.0
    };
    let top = highest * 1.15;
    let mut chart = ChartBuilder::on(&chart_area)
        .x_label_area_size(26)
        .y_label_area_size(76)
        .build_cartesian_2d(capture.start_s..capture.end_s, 0.0..top)
        .map_err(plot)?;
    let format_time = |t: &f64| clock(*t);
    let format_value = |v: &f64| scale.format_scaled(*v);
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(5)
        .x_label_formatter(&format_time)
        .y_label_formatter(&format_value)
        .label_style(regular(SMALL_PX).color(&MUTED))
        .axis_style(BORDER)
        .bold_line_style(GRID_LINE)
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(plot)?;
    phase_bands(&mut chart, capture, top)?;
    for (index, series) in data.series.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        for segment in segments(&series.points, capture.step_s) {
            let points = segment.iter().map(|&(t, v)| (t, v / scale.divisor));
            if let [(time, value)] = segment {
                // A value between gaps is a dot, as Grafana draws one.
                let dot = Circle::new((*time, value / scale.divisor), 3, color.filled());
                chart.draw_series(std::iter::once(dot)).map_err(plot)?;
                continue;
            }
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot)?;
        }
    }
    if let Some(note) = empty_note(data) {
        let style = regular(TEXT_PX + 2)
            .color(&MUTED)
            .pos(Pos::new(HPos::Center, VPos::Center));
        let middle = ((capture.start_s + capture.end_s) / 2.0, top / 2.0);
        chart
            .draw_series(std::iter::once(Text::new(note, middle, style)))
            .map_err(plot)?;
    }
    let legend_top = height - legend_px - 6;
    draw_legend(area, &legend, legend_top)
}

/// What to say over a chart with nothing to show: Grafana's "No data"
/// when no series matched, or that every series stayed at zero.
fn empty_note(data: &PanelData) -> Option<&'static str> {
    if data.series.iter().all(|series| series.points.is_empty()) {
        return Some("No data (no series matched)");
    }
    let zero = data
        .series
        .iter()
        .all(|series| series.points.iter().all(|&(_, value)| value == 0.0));
    zero.then_some("0 throughout the run")
}

/// Shades every other phase and numbers each at its top left.
fn phase_bands(
    chart: &mut ChartContext<SVGBackend, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    capture: &Capture,
    top: f64,
) -> anyhow::Result<()> {
    for (index, phase) in capture.phases.iter().enumerate() {
        let shade = if index % 2 == 0 {
            RGBAColor(50, 116, 217, 0.06)
        } else {
            RGBAColor(0, 0, 0, 0.025)
        };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(phase.start_s, 0.0), (phase.end_s, top)],
                shade.filled(),
            )))
            .map_err(plot)?;
        // A little right of the band's edge (SVG drops a leading space).
        let inset_s = (capture.end_s - capture.start_s) * 0.004;
        let label = Text::new(
            format!("{} {}", index + 1, phase.name),
            (phase.start_s + inset_s, top),
            regular(SMALL_PX).color(&MUTED),
        );
        chart.draw_series(std::iter::once(label)).map_err(plot)?;
    }
    Ok(())
}

/// A stat panel: the first series' last value large in the middle, its
/// peak under it, over a sparkline of the whole run.
fn stat(area: &Area, data: &PanelData, capture: &Capture) -> anyhow::Result<()> {
    let (width, height) = area.dim_in_pixel();
    let Some(series) = data
        .series
        .first()
        .filter(|series| !series.points.is_empty())
    else {
        let style = regular(TEXT_PX + 2)
            .color(&MUTED)
            .pos(Pos::new(HPos::Center, VPos::Center));
        let middle = (width as i32 / 2, height as i32 / 2);
        return area
            .draw(&Text::new("No data", middle, style))
            .map_err(plot);
    };
    let peak = series
        .points
        .iter()
        .copied()
        .fold(
            (0.0, f64::MIN),
            |best, point| if point.1 > best.1 { point } else { best },
        );
    sparkline(area, series, capture, peak.1)?;
    // Each number in its own scale, as Grafana writes a stat's value.
    let unit = data.panel.unit;
    let write = |value: f64| unit.scale(value).format(value);
    let last = series.points.last().map_or(0.0, |&(_, value)| value);
    let center = Pos::new(HPos::Center, VPos::Center);
    let value = bold(STAT_VALUE_PX).color(&INK).pos(center);
    let middle = (width as i32 / 2, (STAT_TOP_PX + STAT_VALUE_PX / 2) as i32);
    area.draw(&Text::new(write(last), middle, value))
        .map_err(plot)?;
    let caption = if peak.1 == 0.0 {
        "last value; 0 throughout".to_owned()
    } else {
        format!("last value; peak {} at {}", write(peak.1), clock(peak.0))
    };
    let caption_style = regular(SMALL_PX)
        .color(&MUTED)
        .pos(Pos::new(HPos::Right, VPos::Top));
    area.draw(&Text::new(caption, (width as i32 - 12, 12), caption_style))
        .map_err(plot)
}

/// The run's values as a filled line along the bottom of a stat panel,
/// under its value.
fn sparkline(area: &Area, series: &Series, capture: &Capture, largest: f64) -> anyhow::Result<()> {
    let band = area.margin(STAT_TOP_PX + STAT_VALUE_PX + 10, 2, 2, 2);
    let top = if largest > 0.0 { largest * 1.05 } else { 1.0 };
    let mut chart = ChartBuilder::on(&band)
        .build_cartesian_2d(capture.start_s..capture.end_s, 0.0..top)
        .map_err(plot)?;
    let fill = RGBAColor(50, 116, 217, 0.15);
    for segment in segments(&series.points, capture.step_s) {
        chart
            .draw_series(
                AreaSeries::new(segment.iter().copied(), 0.0, fill)
                    .border_style(PALETTE[0].stroke_width(2)),
            )
            .map_err(plot)?;
    }
    Ok(())
}

/// Where each legend entry goes: row and x, filled left to right.
struct LegendEntry {
    text: String,
    color: RGBColor,
    row: u32,
    x: u32,
}

/// Lays the series' names out in rows no wider than `width`.
fn legend_layout(area: &Area, series: &[Series], width: u32) -> anyhow::Result<Vec<LegendEntry>> {
    let mut entries = Vec::new();
    let (mut row, mut x) = (0, 0);
    for (index, series) in series.iter().enumerate() {
        // ab_glyph takes plotters' size as the font's ascent to descent,
        // a little less than the line height the SVG divides by, so this
        // is a few percent wider than drawn: room, never overlap.
        let (text_px, _) = area
            .estimate_text_size(&series.legend, &regular(TEXT_PX).into())
            .map_err(plot)?;
        let entry_px = 26 + text_px + 22;
        if x > 0 && x + entry_px > width {
            row += 1;
            x = 0;
        }
        entries.push(LegendEntry {
            text: series.legend.clone(),
            color: PALETTE[index % PALETTE.len()],
            row,
            x,
        });
        x += entry_px;
    }
    Ok(entries)
}

fn draw_legend(area: &Area, entries: &[LegendEntry], top: u32) -> anyhow::Result<()> {
    for entry in entries {
        let x = 14 + entry.x as i32;
        let y = (top + entry.row * LEGEND_ROW_PX) as i32;
        area.draw(&Rectangle::new(
            [(x, y + 8), (x + 18, y + 11)],
            entry.color.filled(),
        ))
        .map_err(plot)?;
        text(area, &entry.text, (x + 26, y + 2), regular(TEXT_PX), INK)?;
    }
    Ok(())
}

/// The runs of consecutive points (no step missing between them).
fn segments(points: &[(f64, f64)], step_s: u64) -> Vec<&[(f64, f64)]> {
    let gap_s = step_s as f64 * 1.5;
    let mut segments = Vec::new();
    let mut start = 0;
    for at in 1..=points.len() {
        if at == points.len() || points[at].0 - points[at - 1].0 > gap_s {
            if at > start {
                segments.push(&points[start..at]);
            }
            start = at;
        }
    }
    segments
}

/// Unix seconds as `HH:MM:SS` (UTC).
pub fn clock(unix_s: f64) -> String {
    let seconds = unix_s.round() as u64 % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

fn text(
    area: &Area,
    text: &str,
    at: (i32, i32),
    font: FontDesc,
    color: RGBColor,
) -> anyhow::Result<()> {
    area.draw(&Text::new(text, at, font.color(&color)))
        .map_err(plot)
}

fn regular(px: u32) -> FontDesc<'static> {
    font(px, FontStyle::Normal)
}

fn bold(px: u32) -> FontDesc<'static> {
    font(px, FontStyle::Bold)
}

/// The font whose SVG size is `px`.
fn font(px: u32, style: FontStyle) -> FontDesc<'static> {
    FontDesc::new(
        FontFamily::Name(FONT),
        f64::from(px) * LINE_HEIGHT_PER_EM,
        style,
    )
}

/// Reads the regular and bold DejaVu Sans files and registers them with
/// plotters, which measures text with ab_glyph from fonts registered by
/// name (to lay out legends and axes).
fn read_fonts() -> anyhow::Result<[&'static [u8]; 2]> {
    let mut fonts = [&[][..]; 2];
    for (at, (path, style)) in [
        (FONT_PATH, FontStyle::Normal),
        (FONT_BOLD_PATH, FontStyle::Bold),
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = std::fs::read(path).with_context(|| format!("reading the font {path}"))?;
        // plotters keeps registered fonts for the life of the process:
        // leaked once per picture, two files of a few hundred KiB.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FONT, style, bytes)
            .map_err(|_| anyhow!("{path} is not a font ab_glyph can read"))?;
        fonts[at] = bytes;
    }
    Ok(fonts)
}

/// plotters' drawing errors, as anyhow's.
fn plot<E: std::error::Error + Send + Sync + 'static>(
    error: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow!("drawing: {error}")
}

#[cfg(test)]
mod tests {
    use super::{clock, segments};

    #[test]
    fn a_missing_step_breaks_the_line() {
        let points = [(0.0, 1.0), (1.0, 1.0), (3.0, 2.0), (4.0, 2.0), (9.0, 0.0)];
        let lengths: Vec<usize> = segments(&points, 1).iter().map(|s| s.len()).collect();
        assert_eq!(lengths, [2, 2, 1]);
        assert!(segments(&[], 1).is_empty());
    }

    #[test]
    fn clock_time_is_utc() {
        assert_eq!(clock(1_700_000_000.0), "22:13:20");
        assert_eq!(clock(86_400.4), "00:00:00");
    }
}
