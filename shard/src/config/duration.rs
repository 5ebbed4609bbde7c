//! Durations in the config file, the environment and flags: a key named
//! `..._ms` takes milliseconds as an integer, as it always did, or a
//! number with a unit (`30s`, `10m`, `1h 30m`, `250ms`), read by
//! `humantime`. Either way the value is kept, and printed, as milliseconds.

use serde::{de, Deserializer, Serializer};

/// A duration that could not be read as whole milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "{text:?} is not a duration ({reason}): write milliseconds, or a number \
         with a unit such as 30s, 10m or 1h 30m"
    )]
    Unreadable { text: String, reason: String },
    #[error("{text:?} is not a whole number of milliseconds")]
    Fraction { text: String },
    #[error("{text:?} is longer than {} ms", u64::MAX)]
    TooLong { text: String },
}

/// Reads a duration written as text: digits alone are milliseconds;
/// anything else is a `humantime` duration (`30s`, `10m`, `1h 30m`,
/// `2days`). Refuses what is not a whole number of milliseconds.
pub fn parse_ms(text: &str) -> Result<u64, DurationError> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| DurationError::TooLong {
            text: text.to_owned(),
        });
    }
    let duration = humantime::parse_duration(text).map_err(|error| DurationError::Unreadable {
        text: text.to_owned(),
        reason: error.to_string(),
    })?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err(DurationError::Fraction {
            text: text.to_owned(),
        });
    }
    u64::try_from(duration.as_millis()).map_err(|_| DurationError::TooLong {
        text: text.to_owned(),
    })
}

/// `#[serde(with = "...")]` for a `u64` of milliseconds: read from an
/// integer or from text ([`parse_ms`]), written as an integer.
pub mod ms {
    use super::*;

    pub fn serialize<S: Serializer>(ms: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(*ms)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(MsVisitor)
    }
}

struct MsVisitor;

impl de::Visitor<'_> for MsVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("milliseconds, or a duration such as \"30s\" or \"10m\"")
    }

    fn visit_u64<E: de::Error>(self, ms: u64) -> Result<u64, E> {
        Ok(ms)
    }

    fn visit_i64<E: de::Error>(self, ms: i64) -> Result<u64, E> {
        u64::try_from(ms).map_err(|_| E::invalid_value(de::Unexpected::Signed(ms), &self))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
        parse_ms(text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<u64, &str>) {
        let got = parse_ms(text).map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(ms), Ok(wanted)) => assert_eq!(ms, wanted, "{text:?}"),
            (Err(error), Err(wanted)) => assert!(error.contains(wanted), "{text:?}: {error}"),
            (got, wanted) => panic!("{text:?}: got {got:?}, wanted {wanted:?}"),
        }
    }

    #[test]
    fn milliseconds_or_a_number_with_a_unit() {
        check("300000", Ok(300_000));
        check("0", Ok(0));
        check("250ms", Ok(250));
        check("30s", Ok(30_000));
        check("10m", Ok(600_000));
        check("1h 30m", Ok(5_400_000));
        check("30days", Ok(30 * 24 * 3_600_000));
        check(" 5s ", Ok(5_000));
    }

    #[test]
    fn what_is_not_whole_milliseconds_is_refused_with_the_text() {
        check("", Err("\"\" is not a duration"));
        check("30", Ok(30));
        check("30 parsecs", Err("\"30 parsecs\" is not a duration"));
        check("-5s", Err("is not a duration"));
        check("1500us", Err("not a whole number of milliseconds"));
        check("99999999999999999999", Err("longer than"));
    }

    #[test]
    fn the_key_reads_integers_and_text_and_writes_integers() {
        #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
        struct Keys {
            #[serde(with = "ms")]
            idle_timeout_ms: u64,
        }
        let read = |text: &str| toml::from_str::<Keys>(text).map(|k| k.idle_timeout_ms);
        assert_eq!(read("idle_timeout_ms = 1500").unwrap(), 1500);
        assert_eq!(read("idle_timeout_ms = \"10m\"").unwrap(), 600_000);
        let error = read("idle_timeout_ms = -1").unwrap_err().to_string();
        assert!(error.contains("milliseconds, or a duration"), "{error}");
        let error = read("idle_timeout_ms = \"soon\"").unwrap_err().to_string();
        assert!(error.contains("\"soon\" is not a duration"), "{error}");
        let written = toml::to_string(&Keys {
            idle_timeout_ms: 30_000,
        });
        assert_eq!(written.unwrap(), "idle_timeout_ms = 30000\n");
    }
}
