//! The redial delay of a link: exponential from `redial_min_ms` to
//! `redial_max_ms`, each delay drawn at random from the upper half of its
//! step, so that the links of every shard of every node that lost the same
//! peer do not dial it again in step. No clock and no I/O: the caller
//! sleeps.

/// The delays of one link's run of failed dials.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    /// The step the next delay is drawn from.
    step_ms: u64,
    /// xorshift64 state; never 0.
    random: u64,
}

impl Backoff {
    /// `seed` makes the jitter; any value does (0 is replaced).
    pub fn new(min_ms: u64, max_ms: u64, seed: u64) -> Backoff {
        let min_ms = min_ms.max(1);
        Backoff {
            min_ms,
            max_ms: max_ms.max(min_ms),
            step_ms: min_ms,
            random: seed | 1,
        }
    }

    /// The delay before the next dial: within the upper half of the
    /// current step, which then doubles up to the max.
    pub fn next_ms(&mut self) -> u64 {
        let step = self.step_ms;
        self.step_ms = (step * 2).min(self.max_ms);
        let half = step / 2;
        step - half + self.random() % (half + 1)
    }

    /// A connection worked: the next failure starts from the min again.
    pub fn reset(&mut self) {
        self.step_ms = self.min_ms;
    }

    fn random(&mut self) -> u64 {
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_min_to_the_max_within_the_upper_half() {
        let mut backoff = Backoff::new(100, 5_000, 42);
        let steps = [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000];
        for step in steps {
            let delay = backoff.next_ms();
            assert!(
                (step / 2..=step).contains(&delay),
                "{delay} ms outside the upper half of {step}"
            );
        }
        backoff.reset();
        assert!(backoff.next_ms() <= 100);
    }

    #[test]
    fn two_links_draw_different_delays() {
        let draw = |seed| {
            let mut backoff = Backoff::new(100, 5_000, seed);
            (0..8).map(|_| backoff.next_ms()).collect::<Vec<_>>()
        };
        assert_ne!(draw(1), draw(2));
        assert_eq!(draw(3), draw(3), "a seed replays");
    }
}
