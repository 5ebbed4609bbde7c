//! What one `ci dashboard` run saw: the time range, the load phases, how
//! it was made, and every panel's series as Prometheus evaluated its
//! queries. Saved as JSON next to the build, so the picture and its
//! description can be drawn again (`--from`) without running the load.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{
    grafana::{self, Dashboard, Intervals, Panel},
    load::PhaseRecord,
    prometheus::Prometheus,
};

/// Everything the picture and its description are drawn from.
#[derive(Debug, Serialize, Deserialize)]
pub struct Capture {
    /// The dashboard's title.
    pub title: String,
    /// The range queried, in unix seconds.
    pub start_s: f64,
    pub end_s: f64,
    /// The query step and Prometheus's scrape interval.
    pub step_s: u64,
    pub scrape_s: u64,
    /// Each template variable and what it was replaced with.
    pub variables: BTreeMap<String, String>,
    /// How the run was made, as (what, value) lines: the machine, the
    /// versions, the commands.
    pub environment: Vec<(String, String)>,
    pub phases: Vec<PhaseRecord>,
    pub panels: Vec<PanelData>,
}

/// One panel and what its queries gave.
#[derive(Debug, Serialize, Deserialize)]
pub struct PanelData {
    pub panel: Panel,
    /// Each target's query as sent to Prometheus (variables replaced).
    pub queries: Vec<String>,
    /// Series in target order, each target's sorted by legend.
    pub series: Vec<Series>,
}

/// One line of a panel.
#[derive(Debug, Serialize, Deserialize)]
pub struct Series {
    pub legend: String,
    /// The index of the target it came from.
    pub target: usize,
    /// (unix seconds, value); missing steps are gaps.
    pub points: Vec<(f64, f64)>,
}

/// The time range of the run and its query step.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start_s: f64,
    pub end_s: f64,
    pub step_s: u64,
    pub scrape_s: u64,
}

/// Evaluates every target of every panel of `dashboard` over `window`.
pub fn query_panels(
    dashboard: &Dashboard,
    prometheus: &Prometheus,
    window: Window,
) -> anyhow::Result<Vec<PanelData>> {
    let intervals = Intervals {
        step_s: window.step_s,
        scrape_s: window.scrape_s,
        range_s: (window.end_s - window.start_s).ceil() as u64,
    };
    let mut panels = Vec::new();
    for panel in &dashboard.panels {
        let mut queries = Vec::new();
        let mut series = Vec::new();
        for (index, target) in panel.targets.iter().enumerate() {
            let expr = dashboard.expr(&target.expr, intervals)?;
            let mut found: Vec<Series> = prometheus
                .query_range(&expr, window.start_s, window.end_s, window.step_s)?
                .into_iter()
                .map(|range| Series {
                    legend: grafana::legend(target.legend.as_deref(), &range.labels, &expr),
                    target: index,
                    points: range.points,
                })
                .collect();
            found.sort_by(|a, b| a.legend.cmp(&b.legend));
            series.extend(found);
            queries.push(expr);
        }
        panels.push(PanelData {
            panel: panel.clone(),
            queries,
            series,
        });
    }
    Ok(panels)
}

impl Capture {
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(path: &Path) -> anyhow::Result<Capture> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a capture", path.display()))
    }
}
