//! A hashed timer wheel: O(1) arm and cancel, for millions of deadlines.
//!
//! Time is counted in ticks. A deadline lands in slot `deadline % slots`;
//! advancing visits each slot once per tick and fires the entries whose
//! deadline has passed, leaving those a whole revolution (or more) away.
//! Cancelled entries are dropped lazily when their slot is next visited, so
//! cancel is a single store.

/// A handle to an armed timer; stale handles are harmless (generations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
struct Entry<T> {
    deadline: u64,
    generation: u32,
    value: Option<T>,
}

#[derive(Debug)]
pub struct TimerWheel<T> {
    slots: Vec<Vec<u32>>,
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    /// Every tick before this one has been processed.
    current: u64,
    armed: usize,
}

impl<T> TimerWheel<T> {
    /// `slot_count` is rounded up to a power of two.
    pub fn new(slot_count: usize, now_tick: u64) -> TimerWheel<T> {
        let slot_count = slot_count.next_power_of_two();
        TimerWheel {
            slots: (0..slot_count).map(|_| Vec::new()).collect(),
            entries: Vec::new(),
            free: Vec::new(),
            current: now_tick,
            armed: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.armed
    }

    pub fn is_empty(&self) -> bool {
        self.armed == 0
    }

    /// Arms `value` to fire at `deadline_tick`. A deadline in the past fires
    /// at the next advance.
    pub fn arm(&mut self, deadline_tick: u64, value: T) -> TimerId {
        let deadline = deadline_tick.max(self.current);
        let index = match self.free.pop() {
            Some(index) => {
                let entry = &mut self.entries[index as usize];
                entry.deadline = deadline;
                entry.value = Some(value);
                index
            }
            None => {
                self.entries.push(Entry {
                    deadline,
                    generation: 0,
                    value: Some(value),
                });
                (self.entries.len() - 1) as u32
            }
        };
        let mask = self.slots.len() as u64 - 1;
        self.slots[(deadline & mask) as usize].push(index);
        self.armed += 1;
        TimerId {
            index,
            generation: self.entries[index as usize].generation,
        }
    }

    /// Cancels a timer; returns its value if it had not fired yet.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let entry = self.entries.get_mut(id.index as usize)?;
        if entry.generation != id.generation {
            return None;
        }
        let value = entry.value.take()?;
        self.armed -= 1;
        // The slot still names this index; the generation bump makes the slot
        // visit recycle it instead of firing it.
        entry.generation = entry.generation.wrapping_add(1);
        Some(value)
    }

    /// Processes every tick up to and including `now_tick`, calling `fire` for
    /// each timer due.
    pub fn advance(&mut self, now_tick: u64, mut fire: impl FnMut(T)) {
        if now_tick < self.current {
            return;
        }
        let mask = self.slots.len() as u64 - 1;
        // Every due deadline lies in [current, now_tick] (arm clamps to
        // current), so one revolution of slots covers them all, however far
        // time jumped.
        let last = now_tick.min(self.current + mask);
        for tick in self.current..=last {
            let slot = &mut self.slots[(tick & mask) as usize];
            let entries = &mut self.entries;
            let free = &mut self.free;
            let armed = &mut self.armed;
            slot.retain(|&index| {
                let entry = &mut entries[index as usize];
                let deadline = entry.deadline;
                let Some(value) = entry.value.take_if(|_| deadline <= now_tick) else {
                    if entry.value.is_none() {
                        // Cancelled: recycle the index now that no slot names it.
                        free.push(index);
                        return false;
                    }
                    return true;
                };
                entry.generation = entry.generation.wrapping_add(1);
                free.push(index);
                *armed -= 1;
                fire(value);
                false
            });
        }
        self.current = now_tick + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(wheel: &mut TimerWheel<u32>, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.advance(now, |value| out.push(value));
        out.sort();
        out
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let mut wheel = TimerWheel::new(8, 0);
        wheel.arm(3, 1);
        wheel.arm(3, 2);
        wheel.arm(5, 3);
        assert_eq!(fired(&mut wheel, 2), Vec::<u32>::new());
        assert_eq!(fired(&mut wheel, 3), vec![1, 2]);
        assert_eq!(fired(&mut wheel, 4), Vec::<u32>::new());
        assert_eq!(fired(&mut wheel, 5), vec![3]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_revolution_wait_their_turn() {
        let mut wheel = TimerWheel::new(4, 0);
        wheel.arm(2, 1);
        wheel.arm(6, 2);
        wheel.arm(10, 3);
        assert_eq!(fired(&mut wheel, 2), vec![1]);
        assert_eq!(fired(&mut wheel, 6), vec![2]);
        assert_eq!(fired(&mut wheel, 9), Vec::<u32>::new());
        assert_eq!(fired(&mut wheel, 10), vec![3]);
    }

    #[test]
    fn a_long_jump_fires_everything_due() {
        let mut wheel = TimerWheel::new(4, 0);
        for deadline in 0..20 {
            wheel.arm(deadline, deadline as u32);
        }
        assert_eq!(fired(&mut wheel, 100), (0..20).collect::<Vec<_>>());
        assert!(wheel.is_empty());
        wheel.arm(102, 7);
        assert_eq!(fired(&mut wheel, 101), Vec::<u32>::new());
        assert_eq!(fired(&mut wheel, 102), vec![7]);
    }

    #[test]
    fn cancel_prevents_firing_and_stale_ids_do_nothing() {
        let mut wheel = TimerWheel::new(8, 0);
        let a = wheel.arm(2, 1);
        let b = wheel.arm(2, 2);
        assert_eq!(wheel.cancel(a), Some(1));
        assert_eq!(wheel.cancel(a), None);
        assert_eq!(fired(&mut wheel, 2), vec![2]);
        assert_eq!(wheel.cancel(b), None, "already fired");
        // The recycled index must not be cancellable through the old id.
        let c = wheel.arm(4, 3);
        assert_eq!(wheel.cancel(a), None);
        assert_eq!(wheel.cancel(b), None);
        assert_eq!(fired(&mut wheel, 4), vec![3]);
        assert_eq!(wheel.cancel(c), None);
    }

    /// Against a plain model: random arms, cancels and advances.
    #[test]
    fn matches_a_sorted_model() {
        let mut state = 12345u64;
        let mut next = |bound: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % bound
        };
        let mut wheel = TimerWheel::new(16, 0);
        let mut model: Vec<(u64, u32, TimerId)> = Vec::new();
        let mut now = 0;
        for value in 0..5_000u32 {
            match next(4) {
                0 | 1 => {
                    let deadline = now + next(70);
                    let id = wheel.arm(deadline, value);
                    model.push((deadline, value, id));
                }
                2 if !model.is_empty() => {
                    let (_, expected, id) = model.swap_remove(next(model.len() as u64) as usize);
                    assert_eq!(wheel.cancel(id), Some(expected));
                }
                _ => {
                    now += next(40);
                    let mut expected: Vec<u32> = model
                        .iter()
                        .filter(|(deadline, ..)| *deadline <= now)
                        .map(|(_, v, _)| *v)
                        .collect();
                    expected.sort();
                    model.retain(|(deadline, ..)| *deadline > now);
                    assert_eq!(fired(&mut wheel, now), expected, "at {now}");
                }
            }
            assert_eq!(wheel.len(), model.len());
        }
    }
}
