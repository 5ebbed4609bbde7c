//! Allowances: one token bucket type for every rate limit a shard keeps
//! (sends, contact syncs, contact lookups, code requests per source and
//! per destination range, the shard's SMS budget).
//!
//! A bucket holds at most `burst` tokens and gains `tokens` every
//! `period_ms`. It counts what was spent rather than what is left, so a
//! zeroed bucket is a full one, and [`TokenBucket::spent`] makes one that
//! starts empty: what a restart restores for allowances that bound
//! enumeration or cost money, since it cannot know what was spent before.
//!
//! The arithmetic is exact: the level is kept in token-milliseconds
//! (`tokens × period_ms`), so a refill of `elapsed_ms × tokens` loses
//! nothing to rounding however often the bucket is looked at.

/// How fast a bucket refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens gained per `period_ms`; 0 never refills.
    pub tokens: u64,
    pub period_ms: u64,
    /// Tokens a full bucket holds.
    pub burst: u64,
}

impl Rate {
    pub const fn new(tokens: u64, period_ms: u64, burst: u64) -> Rate {
        Rate {
            tokens,
            period_ms,
            burst,
        }
    }

    /// `per_s` a second with a burst of `burst`.
    pub const fn per_second(per_s: u64, burst: u64) -> Rate {
        Rate::new(per_s, 1_000, burst)
    }

    /// The level of a full bucket, in token-milliseconds.
    fn capacity(&self) -> u128 {
        u128::from(self.burst) * u128::from(self.period_ms.max(1))
    }

    fn cost(&self, tokens: u64) -> u128 {
        u128::from(tokens) * u128::from(self.period_ms.max(1))
    }
}

/// A token bucket. It does not hold its [`Rate`]: the owner's config
/// does, so a million accounts do not each carry a copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Token-milliseconds spent and not yet refilled; 0 is full.
    spent: u128,
    /// When `spent` was last brought up to date.
    at_ms: u64,
}

/// A bucket too low for a request: how long until it would fit, in ms
/// (`u64::MAX` when it never will: more than the burst, or no refill).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    pub retry_after_ms: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub const fn full() -> TokenBucket {
        TokenBucket { spent: 0, at_ms: 0 }
    }

    /// An empty bucket at `now_ms`: it refills from now on.
    pub fn spent(rate: Rate, now_ms: u64) -> TokenBucket {
        TokenBucket {
            spent: rate.capacity(),
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, rate: Rate, now_ms: u64) {
        let elapsed = u128::from(now_ms.saturating_sub(self.at_ms));
        self.spent = self
            .spent
            .saturating_sub(elapsed * u128::from(rate.tokens))
            .min(rate.capacity());
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Whole tokens in the bucket at `now_ms`.
    pub fn available(&mut self, rate: Rate, now_ms: u64) -> u64 {
        self.refill(rate, now_ms);
        let left = rate.capacity() - self.spent;
        (left / u128::from(rate.period_ms.max(1))) as u64
    }

    /// Takes `tokens` if the bucket holds them; otherwise takes nothing.
    pub fn take(&mut self, tokens: u64, rate: Rate, now_ms: u64) -> Result<(), Exhausted> {
        self.refill(rate, now_ms);
        let cost = rate.cost(tokens);
        let left = rate.capacity() - self.spent;
        if cost <= left {
            self.spent += cost;
            return Ok(());
        }
        let retry_after_ms = if tokens > rate.burst || rate.tokens == 0 {
            u64::MAX
        } else {
            let missing = cost - left;
            u64::try_from(missing.div_ceil(u128::from(rate.tokens))).unwrap_or(u64::MAX)
        };
        Err(Exhausted { retry_after_ms })
    }

    /// True when the bucket is full at `now_ms`: it can be forgotten, as a
    /// new one would be the same.
    pub fn is_full(&mut self, rate: Rate, now_ms: u64) -> bool {
        self.refill(rate, now_ms);
        self.spent == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_gives_its_burst_then_refills_at_the_rate() {
        let rate = Rate::per_second(10, 20);
        let mut bucket = TokenBucket::full();
        assert_eq!(bucket.take(20, rate, 0), Ok(()));
        assert_eq!(
            bucket.take(1, rate, 0),
            Err(Exhausted {
                retry_after_ms: 100
            })
        );
        assert_eq!(
            bucket.take(1, rate, 99),
            Err(Exhausted { retry_after_ms: 1 })
        );
        assert_eq!(bucket.take(1, rate, 100), Ok(()));
        assert_eq!(bucket.available(rate, 100_000), 20, "capped at the burst");
    }

    #[test]
    fn slow_rates_lose_nothing_to_rounding() {
        // 1000 a day is one every 86.4 s; looked at every 10 ms it must
        // still refill.
        let rate = Rate::new(1_000, 24 * 60 * 60 * 1000, 5);
        let mut bucket = TokenBucket::spent(rate, 0);
        let mut now = 0;
        while bucket.available(rate, now) == 0 {
            now += 10;
        }
        assert_eq!(now, 86_400);
    }

    #[test]
    fn a_spent_bucket_starts_empty_and_more_than_the_burst_never_fits() {
        let rate = Rate::per_second(1, 3);
        let mut bucket = TokenBucket::spent(rate, 5_000);
        assert_eq!(bucket.available(rate, 5_000), 0);
        assert_eq!(bucket.available(rate, 7_000), 2);
        assert_eq!(
            bucket.take(4, rate, 100_000),
            Err(Exhausted {
                retry_after_ms: u64::MAX
            })
        );
        assert!(bucket.is_full(rate, 100_000));
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let rate = Rate::per_second(1, 1);
        let mut bucket = TokenBucket::full();
        assert_eq!(bucket.take(1, rate, 10_000), Ok(()));
        assert!(bucket.take(1, rate, 5_000).is_err());
        assert!(bucket.take(1, rate, 10_500).is_err());
        assert_eq!(bucket.take(1, rate, 11_000), Ok(()));
    }
}
