//! The wall clock as a shard trusts it.
//!
//! Wall time does two jobs: the stamps phones see (`sent_at_ms`, a group
//! change's `at_ms`, last seen) and expiry, which deletes what waited longer
//! than `message_retention_ms`. A clock stepped forward would make
//! everything queued look old at once, so a step must never delete messages
//! by itself. The rules:
//!
//! - The latest wall time the shard has used is durable (`Record::Clock`,
//!   written every [`CLOCK_RECORD_INTERVAL_MS`] and in checkpoints). At
//!   start, a clock behind it (by more than [`STEP_TOLERANCE_MS`]) or ahead
//!   of it by more than `ShardConfig::clock_jump_max_ms` is *in doubt*.
//! - During a run the wall clock is read every tick and compared with what
//!   the monotonic clock says it should read. Drift within
//!   [`STEP_TOLERANCE_MS`] is followed at once; a larger step puts the clock
//!   in doubt, and stamps go on from the monotonic clock meanwhile.
//! - While the clock is in doubt nothing expires, and the operator is told.
//!   Doubt ends when the operator says the clock is right
//!   (`ShardConfig::clock_confirmed`, at start: ages then count by the
//!   clock) or when the clock has kept step with the monotonic clock for
//!   `ShardConfig::clock_settle_ms`. In the second case a forward step
//!   raises the *expiry floor* to the moment of the step: what was queued
//!   before it counts its age from then, so a step forward delays expiry
//!   and never brings it on.
//! - A step back delays expiry: entries stamped ahead of the clock wait for
//!   it to pass their stamp. Retention errs long, never short.
//!
//! Sans-IO like the rest of the shard: the system's wall time comes in
//! through [`WallClock::observe`] next to the monotonic `now_ms`.

/// How often (in wall ms) the latest wall time is recorded.
pub const CLOCK_RECORD_INTERVAL_MS: u64 = 60_000;

/// Disagreement between the wall clock and the monotonic clock (ms) that
/// counts as drift, followed at once; beyond it, a step. Measured from
/// the last time the clock was trusted, plus [`DRIFT_PER_MS`] of the
/// monotonic time since: NTP slews at most 0.5 ms a second, so a clock
/// that runs fast (or keeps stepping a little) is caught however small
/// each step.
pub const STEP_TOLERANCE_MS: u64 = 10_000;

/// The drift followed per monotonic ms, as a fraction: 1/1000 (twice what
/// NTP slews).
pub const DRIFT_PER_MS: u64 = 1_000;

/// The shard's view of wall time: `wall = now_ms + offset`.
#[derive(Debug)]
pub struct WallClock {
    offset_ms: u64,
    /// The offset and monotonic time when the clock was last trusted:
    /// drift is measured from here.
    anchor: (u64, u64),
    /// The latest wall time used, and what the journal holds of it.
    latest_ms: u64,
    latest_written_ms: u64,
    /// Entries stamped before this count as stamped at it, for expiry.
    floor_ms: u64,
    floor_written_ms: u64,
    doubt: Option<Doubt>,
    /// Said for the operator; taken by [`WallClock::take_note`].
    notes: Vec<ClockNote>,
}

/// A clock reading not yet trusted.
#[derive(Debug, Clone, Copy)]
struct Doubt {
    /// The offset the system clock shows, and since when (monotonic ms)
    /// it has kept to it.
    offset_ms: u64,
    steady_since_ms: u64,
    /// The wall time the shard had reached when the doubt began: a
    /// forward step accepted later raises the expiry floor to the step.
    before_ms: u64,
}

/// What the operator is told about the clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockNote {
    /// The clock is `ahead_ms` past (negative: behind) the wall time the
    /// shard expected; expiry is held.
    InDoubt { ahead_ms: i64, at_start: bool },
    /// The clock is trusted again; `floor_ms` is set when a forward step
    /// moved the expiry floor.
    Accepted {
        confirmed: bool,
        floor_ms: Option<u64>,
    },
}

/// The durable part, as `Record::Clock` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockState {
    pub latest_ms: u64,
    pub floor_ms: u64,
}

impl WallClock {
    /// A clock reading `offset_ms + now_ms`, trusted until a journal says
    /// otherwise (see [`WallClock::started`]).
    pub fn new(offset_ms: u64) -> WallClock {
        WallClock {
            offset_ms,
            anchor: (0, offset_ms),
            latest_ms: 0,
            latest_written_ms: 0,
            floor_ms: 0,
            floor_written_ms: 0,
            doubt: None,
            notes: Vec::new(),
        }
    }

    /// Wall time (Unix ms) at monotonic `now_ms`, for stamps.
    pub fn wall_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(self.offset_ms)
    }

    /// A `Record::Clock` read back: the last one's latest time holds (it
    /// moves back once a clock stepped back is trusted), the highest floor.
    pub fn restore(&mut self, state: ClockState) {
        self.latest_ms = state.latest_ms;
        self.floor_ms = self.floor_ms.max(state.floor_ms);
        self.latest_written_ms = self.latest_ms;
        self.floor_written_ms = self.floor_ms;
    }

    /// The journal is replayed: judges the clock at start against the
    /// latest wall time recorded. `jump_max_ms` is how far ahead of it the
    /// clock may be (the server was down that long); `confirmed` trusts
    /// the clock whatever it says.
    pub fn started(&mut self, now_ms: u64, jump_max_ms: u64, confirmed: bool) {
        let wall = self.wall_ms(now_ms);
        if self.latest_ms == 0 {
            return;
        }
        let ahead = wall as i64 - self.latest_ms as i64;
        let plausible = ahead >= -(STEP_TOLERANCE_MS as i64) && ahead <= jump_max_ms as i64;
        if plausible {
            return;
        }
        self.notes.push(ClockNote::InDoubt {
            ahead_ms: ahead,
            at_start: true,
        });
        if confirmed {
            self.notes.push(ClockNote::Accepted {
                confirmed: true,
                floor_ms: None,
            });
            self.latest_ms = wall;
            self.anchor = (now_ms, self.offset_ms);
            return;
        }
        self.doubt = Some(Doubt {
            offset_ms: self.offset_ms,
            steady_since_ms: now_ms,
            before_ms: self.latest_ms,
        });
    }

    /// The system clock reads `system_ms` (Unix ms) at monotonic `now_ms`.
    /// `settle_ms`: how long a doubted clock must keep step to be trusted.
    pub fn observe(&mut self, system_ms: u64, now_ms: u64, settle_ms: u64) {
        let offset = system_ms.saturating_sub(now_ms);
        match self.doubt {
            None => {
                let (anchored_at, anchor_offset) = self.anchor;
                let allowed = STEP_TOLERANCE_MS + now_ms.saturating_sub(anchored_at) / DRIFT_PER_MS;
                if offset.abs_diff(anchor_offset) <= allowed {
                    self.offset_ms = offset;
                } else {
                    let before = self.wall_ms(now_ms);
                    self.notes.push(ClockNote::InDoubt {
                        ahead_ms: system_ms as i64 - before as i64,
                        at_start: false,
                    });
                    self.doubt = Some(Doubt {
                        offset_ms: offset,
                        steady_since_ms: now_ms,
                        before_ms: before,
                    });
                }
            }
            Some(ref mut doubt) => {
                if offset.abs_diff(doubt.offset_ms) > STEP_TOLERANCE_MS {
                    // Stepped again: the wait starts over.
                    doubt.offset_ms = offset;
                    doubt.steady_since_ms = now_ms;
                } else if now_ms.saturating_sub(doubt.steady_since_ms) >= settle_ms {
                    self.accept(offset, now_ms);
                }
            }
        }
        self.latest_ms = self.latest_ms.max(self.wall_ms(now_ms));
    }

    /// Trusts the doubted clock: stamps follow it from now on, and a
    /// forward step raises the expiry floor to when it happened.
    fn accept(&mut self, offset_ms: u64, now_ms: u64) {
        let doubt = self.doubt.take().expect("called while in doubt");
        self.offset_ms = offset_ms;
        self.anchor = (now_ms, offset_ms);
        let wall = self.wall_ms(now_ms);
        if wall < self.latest_ms {
            // Trusted behind what was recorded: the record follows, or
            // every restart would doubt the clock again.
            self.latest_ms = wall;
        }
        let step_at = wall.saturating_sub(now_ms.saturating_sub(doubt.steady_since_ms));
        let floor = (step_at > doubt.before_ms && step_at > self.floor_ms).then_some(step_at);
        if let Some(floor) = floor {
            self.floor_ms = floor;
        }
        self.notes.push(ClockNote::Accepted {
            confirmed: false,
            floor_ms: floor,
        });
    }

    /// The stamp below which entries expire at monotonic `now_ms`, given
    /// `retention_ms`; `None` while the clock is in doubt.
    pub fn expiry_cutoff(&self, now_ms: u64, retention_ms: u64) -> Option<u64> {
        if self.doubt.is_some() {
            return None;
        }
        self.wall_ms(now_ms).checked_sub(retention_ms)
    }

    /// The stamp expiry uses for an entry stamped `stamp_ms`.
    pub fn expiry_stamp(&self, stamp_ms: u64) -> u64 {
        stamp_ms.max(self.floor_ms)
    }

    pub fn in_doubt(&self) -> bool {
        self.doubt.is_some()
    }

    /// The state to record, when it moved enough since it last was (or
    /// `always`, for a checkpoint).
    pub fn to_record(&mut self, always: bool) -> Option<ClockState> {
        let due = self.latest_ms >= self.latest_written_ms + CLOCK_RECORD_INTERVAL_MS
            || self.latest_ms < self.latest_written_ms
            || self.floor_ms != self.floor_written_ms;
        if !(always || due) || self.latest_ms == 0 {
            return None;
        }
        self.latest_written_ms = self.latest_ms;
        self.floor_written_ms = self.floor_ms;
        Some(ClockState {
            latest_ms: self.latest_ms,
            floor_ms: self.floor_ms,
        })
    }

    /// The oldest note for the operator.
    pub fn take_note(&mut self) -> Option<ClockNote> {
        (!self.notes.is_empty()).then(|| self.notes.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 24 * 60 * 60 * 1000;
    const START: u64 = 1_800_000_000_000;

    #[test]
    fn drift_is_followed_and_a_step_holds_expiry_until_it_settles() {
        let mut clock = WallClock::new(START);
        clock.observe(START + 1_000 + 2_000, 1_000, 60_000);
        assert_eq!(clock.wall_ms(1_000), START + 3_000, "drift followed");
        // A month forward.
        clock.observe(START + 2_000 + 31 * DAY_MS, 2_000, 60_000);
        assert!(clock.in_doubt());
        assert_eq!(clock.expiry_cutoff(2_000, DAY_MS), None);
        assert_eq!(clock.wall_ms(2_000), START + 4_000, "stamps go on");
        clock.observe(START + 62_000 + 31 * DAY_MS, 62_000, 60_000);
        assert!(!clock.in_doubt());
        // What was queued before the step counts its age from the step.
        let step = START + 2_000 + 31 * DAY_MS;
        assert_eq!(clock.expiry_stamp(START), step);
        assert_eq!(clock.expiry_stamp(step + 5), step + 5);
        assert!(matches!(
            clock.take_note(),
            Some(ClockNote::InDoubt {
                at_start: false,
                ..
            })
        ));
        assert_eq!(
            clock.take_note(),
            Some(ClockNote::Accepted {
                confirmed: false,
                floor_ms: Some(step)
            })
        );
    }

    #[test]
    fn a_clock_running_fast_is_caught_however_small_each_step() {
        let mut clock = WallClock::new(START);
        // Fifty times fast: 4.9 s gained per 100 ms tick, each under the
        // step tolerance.
        let mut doubted_at = None;
        for tick in 1..=100u64 {
            let now = tick * 100;
            clock.observe(START + now * 50, now, 60_000);
            if clock.in_doubt() && doubted_at.is_none() {
                doubted_at = Some(now);
            }
        }
        assert!(doubted_at.is_some_and(|t| t <= 300), "{doubted_at:?}");
        assert_eq!(clock.expiry_cutoff(10_000, 1), None);
    }

    #[test]
    fn a_clock_trusted_behind_the_record_moves_the_record_back() {
        let mut clock = WallClock::new(START);
        clock.restore(ClockState {
            latest_ms: START + 365 * DAY_MS,
            floor_ms: 0,
        });
        clock.started(0, DAY_MS, false);
        assert!(clock.in_doubt());
        clock.observe(START + 61_000, 61_000, 60_000);
        assert!(!clock.in_doubt());
        let state = clock.to_record(false).expect("the record moves back");
        assert_eq!(state.latest_ms, START + 61_000);
    }

    #[test]
    fn a_clock_that_keeps_stepping_is_never_trusted() {
        let mut clock = WallClock::new(START);
        for n in 1..10u64 {
            let now = n * 30_000;
            clock.observe(START + now + n * DAY_MS, now, 60_000);
            assert!(clock.in_doubt(), "step {n}");
        }
    }

    #[test]
    fn at_start_a_clock_far_ahead_or_behind_the_journal_is_doubted() {
        for (wall, doubted) in [
            (START + DAY_MS / 2, false),
            (START + 31 * DAY_MS, true),
            (START - 365 * DAY_MS, true),
            (START - 1_000, false),
        ] {
            let mut clock = WallClock::new(wall);
            clock.restore(ClockState {
                latest_ms: START,
                floor_ms: 0,
            });
            clock.started(0, DAY_MS, false);
            assert_eq!(clock.in_doubt(), doubted, "{wall}");
            let mut confirmed = WallClock::new(wall);
            confirmed.restore(ClockState {
                latest_ms: START,
                floor_ms: 0,
            });
            confirmed.started(0, DAY_MS, true);
            assert!(!confirmed.in_doubt());
            assert_eq!(confirmed.expiry_stamp(START - 5), START - 5, "no floor");
        }
    }

    #[test]
    fn the_latest_time_is_recorded_as_it_moves_on() {
        let mut clock = WallClock::new(START);
        clock.observe(START, 0, 60_000);
        assert!(clock.to_record(false).is_some());
        clock.observe(START + 1_000, 1_000, 60_000);
        assert_eq!(clock.to_record(false), None);
        clock.observe(
            START + CLOCK_RECORD_INTERVAL_MS + 1,
            CLOCK_RECORD_INTERVAL_MS + 1,
            60_000,
        );
        assert!(clock.to_record(false).is_some());
    }
}
