//! Publish pacing: an absolute schedule (event `k` is due at `start + k / rate`), so a late
//! event never pushes the ones after it back, and the open-loop saturation ladder.
//!
//! The arithmetic is pure; [`wait_until`] is the one place that sleeps.

use std::time::{Duration, Instant};

/// When each event is due, relative to the start of publishing.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Events per second; at least one event per hour.
    rate: f64,
}

impl Schedule {
    /// A schedule of `rate` events per second (clamped to a sane positive range).
    pub fn new(rate: f64) -> Schedule {
        Schedule {
            rate: rate.clamp(1.0 / 3600.0, 1e9),
        }
    }

    /// Offset of event `k` from the start. Computed from `k` alone: no accumulated drift.
    pub fn due(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// Events that fit in `duration` at this rate (at least one).
    pub fn events_in(&self, duration: Duration) -> u64 {
        ((duration.as_secs_f64() * self.rate).round() as u64).max(1)
    }
}

/// Rates of the saturation ladder: `start`, `start * factor`, ... up to `steps` rates.
pub fn ladder(start: f64, factor: f64, steps: usize) -> Vec<f64> {
    let factor = factor.max(1.01);
    std::iter::successors(Some(start.max(1.0)), |r| Some(r * factor))
        .take(steps)
        .collect()
}

/// Sleeps until `at`: coarse sleep while far, then yields for the last stretch so the
/// publish lands within tens of microseconds of its due time.
pub fn wait_until(at: Instant) {
    const SPIN: Duration = Duration::from_micros(500);
    loop {
        let now = Instant::now();
        let Some(left) = at.checked_duration_since(now) else {
            return;
        };
        if left > SPIN {
            std::thread::sleep(left - SPIN);
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_absolute() {
        let s = Schedule::new(200.0);
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(1), Duration::from_millis(5));
        assert_eq!(s.due(2_000), Duration::from_secs(10));
        // A million events at 3/s: no drift from summing rounded intervals.
        let s = Schedule::new(3.0);
        let d = s.due(3_000_000);
        assert!(d.abs_diff(Duration::from_secs(1_000_000)) < Duration::from_micros(1));
    }

    #[test]
    fn events_in_a_window() {
        assert_eq!(
            Schedule::new(200.0).events_in(Duration::from_secs(10)),
            2_000
        );
        assert_eq!(Schedule::new(0.1).events_in(Duration::from_secs(1)), 1);
    }

    #[test]
    fn ladder_steps_up() {
        assert_eq!(ladder(100.0, 1.5, 4), vec![100.0, 150.0, 225.0, 337.5]);
        assert_eq!(ladder(100.0, 1.5, 0), Vec::<f64>::new());
    }

    #[test]
    fn wait_until_past_returns() {
        let before = Instant::now();
        wait_until(before);
        let at = Instant::now() + Duration::from_millis(3);
        wait_until(at);
        assert!(Instant::now() >= at);
    }
}
