//! The units a Grafana panel declares (`fieldConfig.defaults.unit`) and how
//! their values are written on an axis: scaled once per panel by its
//! largest value, so a p99 of 2.4 ms reads `2.4 ms`, not `0.0024 s`.

use serde::{Deserialize, Serialize};

/// What a panel's values are, as Grafana's unit ids say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    /// `short` or `none`: a count, written with k and M.
    Count,
    /// `ops`, `reqps`: events per second.
    PerSecond,
    /// `s`: a duration in seconds, written in µs, ms or s.
    Seconds,
    /// `bytes`: IEC multiples (KiB, MiB), as Grafana writes them.
    Bytes,
    /// `Bps`: bytes per second, SI multiples (kB/s, MB/s), as Grafana.
    BytesPerSecond,
}

/// How one panel writes its values: divide by `divisor`, append `suffix`
/// (which carries its own space: `2k/s`, `2.4 ms`).
#[derive(Clone, Debug, PartialEq)]
pub struct Scale {
    pub divisor: f64,
    pub suffix: &'static str,
}

const SI: [(f64, &str); 3] = [(1.0, ""), (1e3, "k"), (1e6, "M")];
const KIB: f64 = 1024.0;

impl Unit {
    /// The unit for a Grafana unit id; an id this drawing does not know
    /// is an error, so a new one is given its scale rather than drawn
    /// as a bare number.
    pub fn from_grafana(id: &str) -> anyhow::Result<Unit> {
        Ok(match id {
            "short" | "none" | "" => Unit::Count,
            "ops" | "reqps" => Unit::PerSecond,
            "s" => Unit::Seconds,
            "bytes" => Unit::Bytes,
            "Bps" => Unit::BytesPerSecond,
            other => anyhow::bail!("the dashboard uses the unit {other:?}, which ci dashboard does not draw yet (units.rs)"),
        })
    }

    /// The scale that writes `largest` (the largest absolute value the
    /// panel shows) with at most three digits before the point.
    pub fn scale(self, largest: f64) -> Scale {
        let largest = largest.abs();
        let pick = |steps: &[(f64, &'static str)]| {
            let (divisor, suffix) = steps
                .iter()
                .rev()
                .find(|(divisor, _)| largest >= *divisor)
                .unwrap_or(&steps[0]);
            Scale {
                divisor: *divisor,
                suffix,
            }
        };
        match self {
            Unit::Count => pick(&SI),
            Unit::PerSecond => pick(&[(1.0, "/s"), (1e3, "k/s"), (1e6, "M/s")]),
            Unit::Seconds => pick(&[(1e-6, " µs"), (1e-3, " ms"), (1.0, " s")]),
            Unit::Bytes => pick(&[
                (1.0, " B"),
                (KIB, " KiB"),
                (KIB * KIB, " MiB"),
                (KIB * KIB * KIB, " GiB"),
            ]),
            Unit::BytesPerSecond => pick(&[
                (1.0, " B/s"),
                (1e3, " kB/s"),
                (1e6, " MB/s"),
                (1e9, " GB/s"),
            ]),
        }
    }
}

impl Scale {
    /// `value` (in the panel's unit) scaled and written with the suffix.
    pub fn format(&self, value: f64) -> String {
        format!("{}{}", number(value / self.divisor), self.suffix)
    }

    /// A value already divided by `divisor` (an axis drawn in this
    /// scale), written with the suffix; zero is `0` alone, so an axis
    /// does not start at `0k/s`.
    pub fn format_scaled(&self, scaled: f64) -> String {
        if scaled == 0.0 {
            return "0".to_owned();
        }
        format!("{}{}", number(scaled), self.suffix)
    }
}

/// A number with as few decimals as it needs, at most two (three
/// significant digits for values under ten).
fn number(value: f64) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    let decimals = match value.abs() {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::Unit;

    fn check(unit: &str, largest: f64, value: f64, expected: &str) {
        let scale = Unit::from_grafana(unit).unwrap().scale(largest);
        assert_eq!(scale.format(value), expected, "{unit} {largest} {value}");
    }

    #[test]
    fn values_are_written_in_the_scale_of_the_largest() {
        check("s", 0.0024, 0.0024, "2.4 ms");
        check("s", 0.0024, 0.0005, "0.5 ms");
        check("s", 0.0004, 0.00025, "250 µs");
        check("s", 2.5, 2.5, "2.5 s");
        check("ops", 8_000.0, 8_000.0, "8k/s");
        check("ops", 8_000.0, 2_500.0, "2.5k/s");
        check("ops", 40.0, 12.5, "12.5/s");
        check("short", 3_000.0, 3_000.0, "3k");
        check("short", 1.0, 1.0, "1");
        check("short", 0.8, 0.25, "0.25");
        check("bytes", 9.5 * 1024.0 * 1024.0, 1024.0 * 1024.0, "1 MiB");
        check("bytes", 900.0, 512.0, "512 B");
        check("Bps", 1.5e6, 1.5e6, "1.5 MB/s");
        check("ops", 0.0, 0.0, "0/s");
        assert_eq!(Unit::PerSecond.scale(8_000.0).format_scaled(0.0), "0");
        assert_eq!(Unit::PerSecond.scale(8_000.0).format_scaled(2.5), "2.5k/s");
    }

    #[test]
    fn an_unknown_unit_is_refused() {
        assert!(Unit::from_grafana("percentunit").is_err());
    }
}
