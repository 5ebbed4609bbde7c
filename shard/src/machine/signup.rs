//! Signups in progress: the code each number was sent, its guesses left,
//! and how many more codes the number may be sent.
//!
//! An entry lives while its code does or its allowance refills, and no
//! longer: one timer per entry checks, and drops what a new entry would
//! equal. Entries are made only for codes that went out, so a refused
//! flood leaves nothing behind.

use ahash::AHashMap;
use subtle::ConstantTimeEq;
use wire::Phone;

use super::TimerEvent;
use crate::{
    allowance::{Exhausted, Rate, TokenBucket},
    timer_wheel::{TimerId, TimerWheel},
};

/// The rules a signup follows, from the shard's config.
#[derive(Debug, Clone, Copy)]
pub(super) struct CodeRules {
    /// How often a number may be sent a code (`code_requests_max` a window).
    pub(super) number_rate: Rate,
    pub(super) code_ttl_ms: u64,
    pub(super) code_attempts_max: u32,
    /// Entries at most (`signups_max`).
    pub(super) signups_max: usize,
    pub(super) tick_ms: u64,
}

/// Why a number may not be sent a code now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CodeRefusal {
    /// The number's own allowance is spent.
    Number(Exhausted),
    /// The table is at `signups_max`.
    TableFull,
}

#[derive(Debug)]
struct Signup {
    code: Option<u32>,
    code_expires_at_ms: u64,
    attempts_left: u32,
    /// Codes this number may still be sent.
    requests: TokenBucket,
    timer: Option<TimerId>,
}

impl Signup {
    /// No code yet, and the number's whole allowance.
    fn new() -> Signup {
        Signup {
            code: None,
            code_expires_at_ms: 0,
            attempts_left: 0,
            requests: TokenBucket::full(),
            timer: None,
        }
    }

    /// Arms the entry's timer for `deadline_ms` unless it has one.
    fn arm(
        &mut self,
        phone: Phone,
        deadline_ms: u64,
        tick_ms: u64,
        timers: &mut TimerWheel<TimerEvent>,
    ) {
        if self.timer.is_none() {
            let tick = deadline_ms.div_ceil(tick_ms);
            self.timer = Some(timers.arm(tick, TimerEvent::Signup(phone)));
        }
    }
}

/// The signups of one shard.
#[derive(Debug, Default)]
pub(super) struct Signups {
    pending: AHashMap<Phone, Signup>,
}

impl Signups {
    /// Whether `phone` may be sent a code at `now_ms`. Nothing is spent:
    /// every other limit must agree first.
    pub(super) fn may_send(
        &self,
        phone: Phone,
        rules: CodeRules,
        now_ms: u64,
    ) -> Result<(), CodeRefusal> {
        let entry = self.pending.get(&phone);
        // A copy, full for a number not seen yet: with a burst of 0
        // (`code_requests_max = 0`) even a first code is refused.
        let mut probe = entry.map_or(TokenBucket::full(), |s| s.requests);
        probe
            .take(1, rules.number_rate, now_ms)
            .map_err(CodeRefusal::Number)?;
        if entry.is_none() && self.pending.len() >= rules.signups_max {
            return Err(CodeRefusal::TableFull);
        }
        Ok(())
    }

    /// `code` went out to `phone` at `now_ms` (after `may_send` agreed):
    /// spends the number's allowance and replaces any earlier code.
    pub(super) fn sent(
        &mut self,
        phone: Phone,
        code: u32,
        (rules, now_ms): (CodeRules, u64),
        timers: &mut TimerWheel<TimerEvent>,
    ) {
        let signup = self.pending.entry(phone).or_insert_with(Signup::new);
        let spent = signup.requests.take(1, rules.number_rate, now_ms).is_ok();
        debug_assert!(spent, "may_send agreed to a code for {phone}");
        signup.code = Some(code);
        signup.code_expires_at_ms = now_ms + rules.code_ttl_ms;
        signup.attempts_left = rules.code_attempts_max;
        // Kept while the code lives or the allowance refills.
        let deadline_ms = now_ms + rules.code_ttl_ms.max(rules.number_rate.period_ms);
        signup.arm(phone, deadline_ms, rules.tick_ms, timers);
    }

    /// A replayed code for `phone`, still inside the number's window: its
    /// allowance is spent again as of `now_ms`.
    pub(super) fn restore_sent(
        &mut self,
        phone: Phone,
        (rules, now_ms): (CodeRules, u64),
        timers: &mut TimerWheel<TimerEvent>,
    ) {
        let signup = self.pending.entry(phone).or_insert_with(Signup::new);
        // Already spent is fine: a replay only ever adds.
        let _ = signup.requests.take(1, rules.number_rate, now_ms);
        let deadline_ms = now_ms + rules.number_rate.period_ms;
        signup.arm(phone, deadline_ms, rules.tick_ms, timers);
    }

    /// Whether `code` is `phone`'s live code at `now_ms`. A wrong guess
    /// spends one of the code's attempts; the last one, or a right guess,
    /// ends the code. The comparison takes the same time whatever matches.
    pub(super) fn check(&mut self, phone: Phone, code: u32, now_ms: u64) -> bool {
        let Some(signup) = self.pending.get_mut(&phone) else {
            return false;
        };
        let live = now_ms < signup.code_expires_at_ms && signup.attempts_left > 0;
        let Some(expected) = signup.code.filter(|_| live) else {
            signup.code = None;
            return false;
        };
        if !bool::from(code.to_le_bytes().ct_eq(&expected.to_le_bytes())) {
            signup.attempts_left -= 1;
            if signup.attempts_left == 0 {
                signup.code = None;
            }
            return false;
        }
        signup.code = None;
        true
    }

    /// `phone`'s timer fired at `now_ms`: drops the entry if a new one
    /// would be the same, else checks again later.
    pub(super) fn timer_fired(
        &mut self,
        phone: Phone,
        (rules, now_ms): (CodeRules, u64),
        timers: &mut TimerWheel<TimerEvent>,
    ) {
        let Some(signup) = self.pending.get_mut(&phone) else {
            return;
        };
        signup.timer = None;
        let code_live = signup.code.is_some() && signup.code_expires_at_ms > now_ms;
        if !code_live && signup.requests.is_full(rules.number_rate, now_ms) {
            self.pending.remove(&phone);
        } else {
            let step_ms = rules.code_ttl_ms.min(rules.number_rate.period_ms).max(1);
            signup.arm(phone, now_ms + step_ms, rules.tick_ms, timers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: CodeRules = CodeRules {
        number_rate: Rate::new(1, 1_000, 1),
        code_ttl_ms: 100,
        code_attempts_max: 2,
        signups_max: 1,
        tick_ms: 10,
    };

    fn phone(n: u64) -> Phone {
        Phone::from_u64(15550000000 + n).unwrap()
    }

    #[test]
    fn a_code_takes_a_limited_number_of_guesses_and_lives_its_ttl() {
        let mut signups = Signups::default();
        let mut timers = TimerWheel::new(64, 0);
        assert_eq!(signups.may_send(phone(1), RULES, 0), Ok(()));
        signups.sent(phone(1), 123_456, (RULES, 0), &mut timers);
        assert!(!signups.check(phone(1), 1, 10));
        assert!(
            signups.check(phone(1), 123_456, 10),
            "one wrong guess left one"
        );
        assert!(!signups.check(phone(1), 123_456, 10), "a used code is gone");
        assert!(
            matches!(
                signups.may_send(phone(1), RULES, 10),
                Err(CodeRefusal::Number(_))
            ),
            "the number's allowance is spent"
        );
        assert_eq!(
            signups.may_send(phone(2), RULES, 10),
            Err(CodeRefusal::TableFull)
        );
    }

    #[test]
    fn an_entry_goes_once_its_code_died_and_its_allowance_refilled() {
        let mut signups = Signups::default();
        let mut timers = TimerWheel::new(64, 0);
        signups.sent(phone(1), 1, (RULES, 0), &mut timers);
        signups.timer_fired(phone(1), (RULES, 500), &mut timers);
        assert_eq!(signups.pending.len(), 1, "the allowance is still refilling");
        signups.timer_fired(phone(1), (RULES, 1_000), &mut timers);
        assert!(signups.pending.is_empty());
    }
}
