//! Queue lengths as decaying averages over 1, 10 and 100 seconds, the way
//! an operator reads a queue: is it backed up now, this minute, lately.
//!
//! Each average moves towards every new sample by `1 - e^(-dt/τ)`, where
//! `dt` is the time since the last sample and `τ` the window, so samples
//! that arrive late or unevenly weigh what the time they stand for.

/// The windows, in seconds.
pub const WINDOWS_S: [f64; 3] = [1.0, 10.0, 100.0];

/// One quantity's decaying averages.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Decaying {
    /// Averages over `WINDOWS_S`, in the quantity's unit.
    averages: [f64; 3],
    /// When the last sample was taken (seconds on any monotonic clock).
    last_at_s: Option<f64>,
}

impl Decaying {
    /// A sample `value` taken at `at_s`. The first sample sets every
    /// average; a sample not later than the last one is ignored.
    pub fn observe(&mut self, value: f64, at_s: f64) {
        let Some(last_at_s) = self.last_at_s else {
            self.averages = [value; 3];
            self.last_at_s = Some(at_s);
            return;
        };
        let dt = at_s - last_at_s;
        if dt <= 0.0 {
            return;
        }
        for (average, window) in self.averages.iter_mut().zip(WINDOWS_S) {
            let weight = 1.0 - (-dt / window).exp();
            *average += (value - *average) * weight;
        }
        self.last_at_s = Some(at_s);
    }

    /// The averages over 1, 10 and 100 seconds.
    pub fn averages(&self) -> [f64; 3] {
        self.averages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_shows_in_the_short_window_first() {
        let mut queue = Decaying::default();
        queue.observe(0.0, 0.0);
        for second in 1..=10 {
            queue.observe(100.0, f64::from(second));
        }
        let [one, ten, hundred] = queue.averages();
        assert!(one > 99.0, "{one}");
        assert!((60.0..66.0).contains(&ten), "{ten}");
        assert!((9.0..10.0).contains(&hundred), "{hundred}");
    }

    #[test]
    fn uneven_samples_weigh_the_time_they_stand_for() {
        let (mut even, mut uneven) = (Decaying::default(), Decaying::default());
        even.observe(0.0, 0.0);
        uneven.observe(0.0, 0.0);
        for second in 1..=4 {
            even.observe(8.0, f64::from(second));
        }
        uneven.observe(8.0, 4.0);
        for (a, b) in even.averages().iter().zip(uneven.averages()) {
            assert!((a - b).abs() < 1e-9, "{a} {b}");
        }
        let before = uneven.averages();
        uneven.observe(1_000.0, 4.0);
        assert_eq!(uneven.averages(), before, "no time passed");
    }
}
