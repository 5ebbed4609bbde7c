//! What `ci dashboard` reads of a Grafana dashboard JSON: its panels
//! (type, title, grid position, unit, and each target's `expr` and
//! `legendFormat`) and its template variables, and how a query's
//! variables become PromQL Prometheus can evaluate on its own.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::units::Unit;

/// Grafana's grid is 24 columns wide.
pub const GRID_COLUMNS: u32 = 24;

/// A dashboard as far as drawing it goes.
#[derive(Debug)]
pub struct Dashboard {
    pub title: String,
    pub panels: Vec<Panel>,
    /// Template variables by name, as what each stands for in a query
    /// when set to "All" (or to its `allValue`).
    variables: BTreeMap<String, String>,
}

/// One panel: where it sits on the grid and what it asks Prometheus.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Panel {
    pub title: String,
    pub kind: Kind,
    pub grid: Grid,
    pub unit: Unit,
    pub targets: Vec<Target>,
}

/// The panel types drawn; any other type is refused when read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// One number (the last value, as Grafana's default reduction)
    /// over a sparkline.
    Stat,
    /// Lines over time with a legend.
    TimeSeries,
}

/// `gridPos`: columns of 24 and rows of Grafana's 30 px units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grid {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// One query of a panel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    /// The PromQL as written in the dashboard, variables included.
    pub expr: String,
    /// `legendFormat`, with `{{label}}` placeholders; `None` when unset.
    pub legend: Option<String>,
}

/// The intervals Grafana's built-in variables stand for, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Intervals {
    /// The query step (`$__interval`).
    pub step_s: u64,
    /// The data source's scrape interval (part of `$__rate_interval`).
    pub scrape_s: u64,
    /// The whole time range (`$__range`).
    pub range_s: u64,
}

impl Dashboard {
    /// Reads a dashboard's JSON. Errors name the panel or variable that
    /// is not understood.
    pub fn parse(text: &str) -> anyhow::Result<Dashboard> {
        let json: Value = serde_json::from_str(text).context("the dashboard is not JSON")?;
        let title = json["title"].as_str().unwrap_or("dashboard").to_owned();
        let panels = json["panels"]
            .as_array()
            .context("the dashboard has no panels")?
            .iter()
            .map(|panel| Panel::parse(panel).with_context(|| format!("panel {:?}", panel["title"])))
            .collect::<anyhow::Result<_>>()?;
        let variables = variables(&json["templating"]["list"])?;
        Ok(Dashboard {
            title,
            panels,
            variables,
        })
    }

    /// `expr` with every variable replaced, as Grafana sends it when each
    /// template variable is "All": a query variable becomes `.*` (or its
    /// `allValue`), `$__rate_interval` is `max($__interval + scrape,
    /// 4 × scrape)`, `$__interval` the step and `$__range` the range.
    /// Both `$name` and `${name}` are understood; an unknown variable is
    /// an error.
    pub fn expr(&self, expr: &str, intervals: Intervals) -> anyhow::Result<String> {
        let builtin = |name: &str| {
            let seconds = match name {
                "__rate_interval" => {
                    (intervals.step_s + intervals.scrape_s).max(4 * intervals.scrape_s)
                }
                "__interval" => intervals.step_s,
                "__range" => intervals.range_s,
                _ => return None,
            };
            Some(format!("{seconds}s"))
        };
        let mut out = String::with_capacity(expr.len());
        let mut rest = expr;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let (name, after) = variable_at(&rest[at + 1..])
                .with_context(|| format!("a `$` that names no variable in {expr:?}"))?;
            let value = builtin(name)
                .or_else(|| self.variables.get(name).cloned())
                .with_context(|| format!("unknown variable ${name} in {expr:?}"))?;
            out.push_str(&value);
            rest = after;
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The variables and what each was replaced with, for the record of
    /// how the picture was made.
    pub fn variables(&self) -> &BTreeMap<String, String> {
        &self.variables
    }
}

impl Panel {
    fn parse(json: &Value) -> anyhow::Result<Panel> {
        let kind = match json["type"].as_str() {
            Some("stat") => Kind::Stat,
            Some("timeseries") => Kind::TimeSeries,
            other => bail!("panel type {other:?} is not drawn (only stat and timeseries)"),
        };
        let grid: Grid = serde_json::from_value(json["gridPos"].clone()).context("gridPos")?;
        if grid.w == 0 || grid.h == 0 || grid.x + grid.w > GRID_COLUMNS {
            bail!("gridPos {grid:?} is outside the 24-column grid");
        }
        let unit = Unit::from_grafana(
            json["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or("short"),
        )?;
        let targets = json["targets"]
            .as_array()
            .context("no targets")?
            .iter()
            .map(|target| {
                Ok(Target {
                    expr: target["expr"]
                        .as_str()
                        .context("a target without expr")?
                        .to_owned(),
                    legend: target["legendFormat"]
                        .as_str()
                        .filter(|format| !format.is_empty())
                        .map(str::to_owned),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Panel {
            title: json["title"].as_str().unwrap_or_default().to_owned(),
            kind,
            grid,
            unit,
            targets,
        })
    }
}

/// A series' name in the legend: `format` with each `{{label}}` replaced
/// by the series' value of that label (empty when it has none), as
/// Grafana does; without a format, the labels as `{a="1", b="2"}`, or
/// the query itself when the series has no labels.
pub fn legend(format: Option<&str>, labels: &BTreeMap<String, String>, expr: &str) -> String {
    let Some(format) = format else {
        if labels.is_empty() {
            return expr.to_owned();
        }
        let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        return format!("{{{}}}", pairs.join(", "));
    };
    let mut out = String::new();
    let mut rest = format;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open..].find("}}") else {
            break;
        };
        out.push_str(&rest[..open]);
        let name = rest[open + 2..open + close].trim();
        out.push_str(labels.get(name).map_or("", String::as_str));
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

/// The name after a `$` (`name` or `{name}`) and the text after it.
fn variable_at(text: &str) -> Option<(&str, &str)> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if let Some(braced) = text.strip_prefix('{') {
        let close = braced.find('}')?;
        let name = &braced[..close];
        return (!name.is_empty() && name.chars().all(is_name))
            .then(|| (name, &braced[close + 1..]));
    }
    let end = text.find(|c: char| !is_name(c)).unwrap_or(text.len());
    (end > 0).then(|| (&text[..end], &text[end..]))
}

/// Each template variable and what it stands for at "All": `allValue`
/// if set, else `.*`, which matches every value in the `=~` matchers
/// Grafana's multi-value variables are used in. A data source variable
/// only picks the data source, and stands for nothing in a query.
fn variables(list: &Value) -> anyhow::Result<BTreeMap<String, String>> {
    let mut variables = BTreeMap::new();
    for variable in list.as_array().map_or(&[][..], Vec::as_slice) {
        let name = variable["name"]
            .as_str()
            .context("a variable without a name")?;
        match variable["type"].as_str() {
            Some("datasource") => continue,
            Some("query" | "custom") => {
                let all = variable["allValue"].as_str().unwrap_or(".*");
                variables.insert(name.to_owned(), all.to_owned());
            }
            other => bail!("variable {name} has type {other:?}, which is not substituted"),
        }
    }
    Ok(variables)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{legend, Dashboard, Intervals, Kind};
    use crate::dashboard::units::Unit;

    const INTERVALS: Intervals = Intervals {
        step_s: 1,
        scrape_s: 1,
        range_s: 150,
    };

    fn dashboard(variables: &str) -> Dashboard {
        let text =
            format!(r#"{{"title": "t", "templating": {{"list": [{variables}]}}, "panels": []}}"#);
        Dashboard::parse(&text).unwrap()
    }

    #[test]
    fn variables_become_what_grafana_sends_for_all() {
        let board = dashboard(
            r#"{"name": "datasource", "type": "datasource"},
               {"name": "instance", "type": "query"},
               {"name": "shard", "type": "custom", "allValue": "[0-9]+"}"#,
        );
        let check = |expr: &str, expected: &str| {
            assert_eq!(board.expr(expr, INTERVALS).unwrap(), expected);
        };
        check(r#"up{instance=~"$instance"}"#, r#"up{instance=~".*"}"#);
        check(r#"up{shard=~"${shard}"}"#, r#"up{shard=~"[0-9]+"}"#);
        check("rate(x[$__rate_interval])", "rate(x[4s])");
        check(
            "rate(x[$__interval]) + y[$__range]",
            "rate(x[1s]) + y[150s]",
        );
        check("no variables", "no variables");
        assert!(board.expr("up{a=~\"$nope\"}", INTERVALS).is_err());
        assert!(board.expr("a $ b", INTERVALS).is_err());
        assert!(board.expr("up{a=~\"$datasource\"}", INTERVALS).is_err());
    }

    #[test]
    fn legends_take_the_series_labels() {
        let labels = BTreeMap::from([("shard".to_owned(), "1".to_owned())]);
        assert_eq!(
            legend(Some("stored, shard {{shard}}"), &labels, "e"),
            "stored, shard 1"
        );
        assert_eq!(legend(Some("{{ kind }}!"), &labels, "e"), "!");
        assert_eq!(legend(None, &labels, "e"), "{shard=\"1\"}");
        assert_eq!(legend(None, &BTreeMap::new(), "sum(x)"), "sum(x)");
    }

    #[test]
    fn the_shipped_dashboard_is_read_whole() {
        let text = include_str!("../../../packaging/grafana/isle.json");
        let board = Dashboard::parse(text).unwrap();
        assert!(board.panels.len() >= 10);
        assert_eq!(board.panels[0].kind, Kind::Stat);
        let commit = board
            .panels
            .iter()
            .find(|panel| panel.unit == Unit::Seconds)
            .expect("a latency panel");
        assert_eq!(commit.kind, Kind::TimeSeries);
        for panel in &board.panels {
            for target in &panel.targets {
                let expr = board.expr(&target.expr, INTERVALS).unwrap();
                assert!(!expr.contains('$'), "{expr}");
            }
        }
    }
}
