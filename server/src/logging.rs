//! The process's logger: env_logger's output (text, or one JSON object a
//! line) behind a filter an operator can replace while the server runs.
//!
//! The filter is, in order: the level set by `isle ctl log-level` (for
//! every target), else `RUST_LOG`'s directives, else `info`. A level set
//! while running replaces `RUST_LOG`'s directives rather than narrowing
//! them: an operator who asks for `debug` gets debug lines, whatever the
//! unit's environment says (the packaged unit sets `RUST_LOG=info`).
//! `default` goes back to the directives.
//!
//! Key-value fields (`log::debug!(shard = 3, peer:% = addr; "...")`) are
//! written after the message as `key=value` in text, and as keys of the
//! line's object in JSON.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
};

use log::{LevelFilter, Log, Metadata, Record};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// env_logger's: time, level, target, message, fields.
    Text,
    /// One JSON object per line with `ts`, `level`, `target`, `msg` and
    /// each field.
    Json,
}

/// The level when neither an operator nor `RUST_LOG` says.
const LEVEL_DEFAULT: LevelFilter = LevelFilter::Info;

/// What `set_level` changed from, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    /// `RUST_LOG`'s directives, which no longer apply.
    Directives(String),
    /// A level set before, or the default.
    Level(LevelFilter),
}

/// The installed logger.
struct Logger {
    /// Writes every record it is given (its own filter lets all through).
    writer: env_logger::Logger,
    /// `RUST_LOG` as given, and its directives.
    directives: Option<(String, env_filter::Filter)>,
    /// The level an operator set, as `LevelFilter as usize + 1`; 0: none.
    level_set: AtomicUsize,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger: `RUST_LOG`'s directives when set, `format`'s lines
/// on stderr. Once, before anything logs.
pub fn init(format: LogFormat) {
    let directives = std::env::var("RUST_LOG").ok().map(|text| {
        let filter = env_filter::Builder::new().parse(&text).build();
        (text, filter)
    });
    let mut writer = env_logger::Builder::new();
    writer.filter_level(LevelFilter::Trace);
    if format == LogFormat::Json {
        writer.format(write_json);
    }
    let logger = LOGGER.get_or_init(|| Logger {
        writer: writer.build(),
        directives,
        level_set: AtomicUsize::new(0),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.max_level());
    }
}

/// From now on every target logs at `level` (`None`: back to `RUST_LOG`'s
/// directives, or `info` without them). Returns what applied before.
pub fn set_level(level: Option<LevelFilter>) -> Replaced {
    let Some(logger) = LOGGER.get() else {
        return Replaced::Level(LEVEL_DEFAULT);
    };
    let encoded = level.map_or(0, |level| level as usize + 1);
    let before = logger.level_set.swap(encoded, Ordering::Relaxed);
    log::set_max_level(logger.max_level());
    match (decode(before), &logger.directives) {
        (Some(level), _) => Replaced::Level(level),
        (None, Some((text, _))) => Replaced::Directives(text.clone()),
        (None, None) => Replaced::Level(LEVEL_DEFAULT),
    }
}

/// What applies when no level is set: `RUST_LOG=...`, or `info`.
pub fn default_filter() -> String {
    match LOGGER.get().and_then(|logger| logger.directives.as_ref()) {
        Some((text, _)) => format!("RUST_LOG={text}"),
        None => LEVEL_DEFAULT.to_string(),
    }
}

fn decode(encoded: usize) -> Option<LevelFilter> {
    LevelFilter::iter().nth(encoded.checked_sub(1)?)
}

impl Logger {
    fn level_set(&self) -> Option<LevelFilter> {
        decode(self.level_set.load(Ordering::Relaxed))
    }

    /// The most detailed level any record may pass at: what `log`'s
    /// macros check before anything else.
    fn max_level(&self) -> LevelFilter {
        match (self.level_set(), &self.directives) {
            (Some(level), _) => level,
            (None, Some((_, filter))) => filter.filter(),
            (None, None) => LEVEL_DEFAULT,
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        match (self.level_set(), &self.directives) {
            (Some(level), _) => metadata.level() <= level,
            (None, Some((_, filter))) => filter.enabled(metadata),
            (None, None) => metadata.level() <= LEVEL_DEFAULT,
        }
    }

    fn log(&self, record: &Record<'_>) {
        let passes = match (self.level_set(), &self.directives) {
            (None, Some((_, filter))) => filter.matches(record),
            _ => self.enabled(record.metadata()),
        };
        if passes {
            self.writer.log(record);
        }
    }

    fn flush(&self) {
        self.writer.flush();
    }
}

/// One JSON object: `ts`, `level`, `target`, `msg`, then the record's
/// fields (numbers and booleans as such, the rest as text).
fn write_json(out: &mut env_logger::fmt::Formatter, record: &Record<'_>) -> std::io::Result<()> {
    let mut line = serde_json::Map::new();
    line.insert("ts".into(), out.timestamp_millis().to_string().into());
    line.insert("level".into(), record.level().as_str().into());
    line.insert("target".into(), record.target().into());
    line.insert("msg".into(), record.args().to_string().into());
    let mut fields = JsonFields(&mut line);
    // Visiting a record's fields fails only when a visitor does; ours
    // does not.
    let _ = record.key_values().visit(&mut fields);
    writeln!(out, "{}", serde_json::Value::Object(line))
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let value = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_owned(), value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_set_is_stored_and_read_back_as_itself() {
        for level in LevelFilter::iter() {
            assert_eq!(decode(level as usize + 1), Some(level));
        }
        assert_eq!(decode(0), None);
    }
}
