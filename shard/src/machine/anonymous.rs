//! What connections that have not logged in may cost: how many may be
//! open at once (per shard and per source host), and how many signup
//! codes (each a paid SMS) may be asked for, per connection, per source
//! host, per source network, per range of destination numbers, and in all.
//!
//! Every such limit is a [`TokenBucket`] or a count owned here; the shard
//! reaches them only through [`Anonymous`]'s verbs.

use std::collections::VecDeque;

use ahash::AHashMap;
use storage::Record;
use wire::Phone;

use crate::{
    allowance::{Rate, TokenBucket},
    source::{number_range, Buckets, Source},
    ShardConfig,
};

/// Why a new connection was turned away before any byte was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this shard holds prelogin_connections_max connections that have not logged in")]
    ShardFull,
    #[error("this source holds prelogin_per_source_max connections that have not logged in")]
    SourceFull,
}

/// The limits on work done for connections that have not logged in.
#[derive(Debug)]
pub(super) struct Anonymous {
    /// Connections on this shard not logged in, in all and by source.
    open: usize,
    open_by_source: AHashMap<Source, u32>,
    code_sources: Buckets<Source>,
    code_prefixes: Buckets<Source>,
    code_ranges: Buckets<u64>,
    /// Code guesses per source host.
    attempt_sources: Buckets<Source>,
    /// The shard's SMS budget. Made spent at start: a crash cannot hand
    /// out a new burst of paid messages.
    sms: TokenBucket,
    /// Codes sent within the allowances' window, oldest first, as
    /// `(Unix ms, number, source)`: what a checkpoint writes as `CodeSent`
    /// records so that the allowances stay spent across restarts.
    recent: VecDeque<(u64, Phone, Source)>,
}

/// Codes remembered for checkpoints, at most: the SMS budget keeps the
/// real count far below (600 a minute is 36,000 an hour).
const CODES_REMEMBERED_MAX: usize = 100_000;

/// Which limit refused a code request, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CodeRefused {
    pub limit: &'static str,
    pub retry_after_ms: u64,
}

impl Anonymous {
    pub(super) fn new(config: &ShardConfig, now_ms: u64) -> Anonymous {
        let entries_max = config.source_table_entries_max;
        Anonymous {
            open: 0,
            open_by_source: AHashMap::new(),
            code_sources: Buckets::new(entries_max),
            code_prefixes: Buckets::new(entries_max),
            code_ranges: Buckets::new(entries_max),
            attempt_sources: Buckets::new(entries_max),
            sms: TokenBucket::spent(config.sms_rate(), now_ms),
            recent: VecDeque::new(),
        }
    }

    /// How long a sent code counts against an allowance: the longest of
    /// their windows.
    fn window_ms(config: &ShardConfig) -> u64 {
        [
            config.code_number_rate(),
            config.code_source_rate(),
            config.code_prefix_rate(),
            config.code_range_rate(),
        ]
        .iter()
        .map(|rate| rate.period_ms)
        .max()
        .unwrap_or(0)
    }

    /// A code went out at `wall_ms`: remembered until its window ends, and
    /// returned as the record that makes it durable.
    pub(super) fn sent(&mut self, phone: Phone, source: Source, wall_ms: u64) -> Record {
        self.remember(wall_ms, phone, source);
        Record::CodeSent {
            phone,
            source: source.addr(),
            at_ms: wall_ms,
        }
    }

    /// A replayed `CodeSent`: if it is still inside the window, spends the
    /// source, network and range allowances again as of now (when it was
    /// spent before the restart is not kept, so this errs towards spent).
    /// True when it is; the caller spends the number's own allowance.
    pub(super) fn restore_sent(
        &mut self,
        config: &ShardConfig,
        (phone, source, at_ms): (Phone, Source, u64),
        (now_ms, wall_ms): (u64, u64),
    ) -> bool {
        if wall_ms.saturating_sub(at_ms) >= Anonymous::window_ms(config) {
            return false;
        }
        // Already spent is fine: a replay only ever adds.
        let _ = self
            .code_sources
            .take(source, 1, config.code_source_rate(), now_ms);
        let _ = self
            .code_prefixes
            .take(source.prefix(), 1, config.code_prefix_rate(), now_ms);
        let _ = self
            .code_ranges
            .take(number_range(phone), 1, config.code_range_rate(), now_ms);
        self.remember(at_ms, phone, source);
        true
    }

    /// Keeps a sent code for checkpoints, dropping the oldest past the
    /// bound.
    fn remember(&mut self, at_ms: u64, phone: Phone, source: Source) {
        if self.recent.len() >= CODES_REMEMBERED_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((at_ms, phone, source));
    }

    /// The codes still inside their window, as records.
    pub(super) fn checkpoint(&self, records: &mut Vec<Record>) {
        records.extend(
            self.recent
                .iter()
                .map(|&(at_ms, phone, source)| Record::CodeSent {
                    phone,
                    source: source.addr(),
                    at_ms,
                }),
        );
    }

    /// A connection from `source` that has not logged in wants to live on
    /// this shard (new, or handed over): counts it, or says which bound
    /// it would pass.
    pub(super) fn admit(&mut self, config: &ShardConfig, source: Source) -> Result<(), Refused> {
        if self.open >= config.prelogin_connections_max {
            return Err(Refused::ShardFull);
        }
        let count = self.open_by_source.entry(source).or_insert(0);
        if *count >= config.prelogin_per_source_max {
            return Err(Refused::SourceFull);
        }
        *count += 1;
        self.open += 1;
        Ok(())
    }

    /// A connection `admit` counted logged in, closed or moved away.
    pub(super) fn left(&mut self, source: Source) {
        debug_assert!(self.open > 0, "left without admit");
        self.open -= 1;
        if let Some(count) = self.open_by_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.open_by_source.remove(&source);
            }
        }
    }

    /// Connections not logged in, on this shard.
    pub(super) fn open(&self) -> usize {
        self.open
    }

    /// A code for `phone` asked for from `source`: spends one token of
    /// every limit, or none when any of them is spent. The per-connection
    /// count and the per-number window are the caller's.
    pub(super) fn charge_code(
        &mut self,
        config: &ShardConfig,
        source: Source,
        phone: Phone,
        now_ms: u64,
    ) -> Result<(), CodeRefused> {
        let (host, network, range) = (
            config.code_source_rate(),
            config.code_prefix_rate(),
            config.code_range_rate(),
        );
        let refused = |limit, retry_after_ms| {
            Err(CodeRefused {
                limit,
                retry_after_ms,
            })
        };
        if !self.code_sources.has(source, 1, host, now_ms) {
            return refused("code_requests_per_source_per_hour", retry(host));
        }
        if !self.code_prefixes.has(source.prefix(), 1, network, now_ms) {
            return refused("code_requests_per_prefix_per_hour", retry(network));
        }
        if !self.code_ranges.has(number_range(phone), 1, range, now_ms) {
            return refused("code_requests_per_range_per_hour", retry(range));
        }
        let sms = config.sms_rate();
        if self.sms.available(sms, now_ms) == 0 {
            return refused("sms_per_minute", retry(sms));
        }
        let taken = self.code_sources.take(source, 1, host, now_ms).is_ok()
            && self
                .code_prefixes
                .take(source.prefix(), 1, network, now_ms)
                .is_ok()
            && self
                .code_ranges
                .take(number_range(phone), 1, range, now_ms)
                .is_ok()
            && self.sms.take(1, sms, now_ms).is_ok();
        debug_assert!(taken, "each checked above");
        Ok(())
    }

    /// A code guess from `source`: Err names the limit when it is spent,
    /// and when to retry.
    pub(super) fn charge_attempt(
        &mut self,
        config: &ShardConfig,
        source: Source,
        now_ms: u64,
    ) -> Result<(), (&'static str, u64)> {
        let rate = config.code_attempt_source_rate();
        self.attempt_sources
            .take(source, 1, rate, now_ms)
            .map_err(|e| ("code_attempts_per_source_per_hour", e.retry_after_ms))
    }

    /// Forgets buckets that refilled and codes past their window (called
    /// now and then from `tick`).
    pub(super) fn prune(&mut self, config: &ShardConfig, now_ms: u64, wall_ms: u64) {
        let window_ms = Anonymous::window_ms(config);
        while self
            .recent
            .front()
            .is_some_and(|&(at_ms, ..)| at_ms + window_ms <= wall_ms)
        {
            self.recent.pop_front();
        }
        self.code_sources.prune(config.code_source_rate(), now_ms);
        self.code_prefixes.prune(config.code_prefix_rate(), now_ms);
        self.code_ranges.prune(config.code_range_rate(), now_ms);
        self.attempt_sources
            .prune(config.code_attempt_source_rate(), now_ms);
    }
}

/// The time one token of `rate` takes to come back.
fn retry(rate: Rate) -> u64 {
    match rate.tokens {
        0 => u64::MAX,
        tokens => rate.period_ms.div_ceil(tokens),
    }
}
