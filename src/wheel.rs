//! A hashed timing wheel: O(1) to set and to cancel, and per tick only the timers of one
//! slot are looked at, so no tick ever scans every connection.
//!
//! Time is injected (`Instant` in, expired values out); the wheel never reads the clock.
//! Handles carry a generation, so cancelling with a handle whose timer already fired (and
//! whose slot was reused) does nothing. No I/O here.

use std::time::{Duration, Instant};

use slab::Slab;

/// Slots in the wheel. With the default tick this covers 51.2 s per rotation, longer than
/// the usual heartbeat and head deadlines, so most timers fire in their first rotation.
const SLOTS: usize = 512;
// Slot selection masks with `SLOTS - 1`.
const _: () = assert!(SLOTS.is_power_of_two());

/// A set timer, for cancelling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerHandle {
    key: u32,
    generation: u32,
}

struct Entry<T> {
    deadline_tick: u64,
    slot: u32,
    index: u32,
    generation: u32,
    value: T,
}

/// Timers carrying a `T` (a connection key, say), with a resolution of one tick.
pub(crate) struct TimerWheel<T> {
    /// Entry keys per slot; an entry knows its index here so cancel is a swap-remove.
    /// The extra last slot holds timers set for a tick already processed: they are due at
    /// the next `expire`.
    slots: Vec<Vec<u32>>,
    entries: Slab<Entry<T>>,
    origin: Instant,
    tick: Duration,
    /// Every tick before this one has been processed.
    next_tick: u64,
    generation: u32,
}

impl<T: Copy> TimerWheel<T> {
    /// An empty wheel whose tick 0 starts at `origin`.
    pub(crate) fn new(origin: Instant, tick: Duration) -> Self {
        debug_assert!(!tick.is_zero());
        TimerWheel {
            slots: (0..=SLOTS).map(|_| Vec::new()).collect(),
            entries: Slab::new(),
            origin,
            tick,
            next_tick: 0,
            generation: 0,
        }
    }

    /// The first tick boundary at or after `at`: a timer's deadline rounds up.
    fn tick_of(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.origin);
        let ticks = elapsed.as_nanos().div_ceil(self.tick.as_nanos());
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// The last tick boundary at or before `now`: the clock rounds down, so together
    /// with deadlines rounding up a timer never fires early.
    fn ticks_passed(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin);
        let ticks = elapsed.as_nanos() / self.tick.as_nanos();
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// Sets a timer that fires at the first `expire` call at or after `at`.
    pub(crate) fn set(&mut self, at: Instant, value: T) -> TimerHandle {
        let deadline_tick = self.tick_of(at);
        let slot = if deadline_tick < self.next_tick {
            SLOTS
        } else {
            (deadline_tick as usize) & (SLOTS - 1)
        };
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let index = self.slots[slot].len() as u32;
        let key = self.entries.insert(Entry {
            deadline_tick,
            slot: slot as u32,
            index,
            generation,
            value,
        });
        // Timers are bounded by connections, far below u32::MAX.
        self.slots[slot].push(key as u32);
        TimerHandle {
            key: key as u32,
            generation,
        }
    }

    /// Cancels a timer; a handle whose timer already fired or was cancelled is ignored.
    pub(crate) fn cancel(&mut self, handle: TimerHandle) {
        let key = handle.key as usize;
        match self.entries.get(key) {
            Some(entry) if entry.generation == handle.generation => {}
            _ => return,
        }
        let entry = self.entries.remove(key);
        self.unlink(entry.slot as usize, entry.index as usize);
    }

    fn unlink(&mut self, slot: usize, index: usize) {
        let keys = &mut self.slots[slot];
        keys.swap_remove(index);
        if let Some(&moved) = keys.get(index) {
            if let Some(entry) = self.entries.get_mut(moved as usize) {
                entry.index = index as u32;
            }
        }
    }

    /// Removes every timer due at `now` and passes its value to `fire`. Processes at most
    /// one rotation of slots per call, which covers every due timer.
    pub(crate) fn expire(&mut self, now: Instant, mut fire: impl FnMut(T)) {
        while let Some(&key) = self.slots[SLOTS].last() {
            let entry = self.entries.remove(key as usize);
            self.unlink(SLOTS, entry.index as usize);
            fire(entry.value);
        }
        let now_tick = self.ticks_passed(now);
        if now_tick < self.next_tick {
            return;
        }
        let first = self.next_tick;
        let last = now_tick.min(first.saturating_add(SLOTS as u64 - 1));
        for tick in first..=last {
            let slot = (tick as usize) & (SLOTS - 1);
            let mut index = 0;
            while index < self.slots[slot].len() {
                let key = self.slots[slot][index] as usize;
                let due = self
                    .entries
                    .get(key)
                    .is_some_and(|entry| entry.deadline_tick <= now_tick);
                if !due {
                    index += 1;
                    continue;
                }
                let entry = self.entries.remove(key);
                self.unlink(slot, index);
                fire(entry.value);
            }
        }
        self.next_tick = now_tick + 1;
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    /// Number of pending timers.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The wheel's resolution.
    pub(crate) fn tick(&self) -> Duration {
        self.tick
    }

    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        let linked: usize = self.slots.iter().map(Vec::len).sum();
        debug_assert_eq!(linked, self.entries.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    fn fired(wheel: &mut TimerWheel<u32>, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.expire(now, |v| out.push(v));
        out.sort_unstable();
        out
    }

    #[test]
    fn fires_at_or_after_deadline_never_before() {
        let origin = Instant::now();
        let mut wheel = TimerWheel::new(origin, TICK);
        wheel.set(origin + Duration::from_millis(250), 1);
        wheel.set(origin + Duration::from_millis(201), 9);
        wheel.set(origin + Duration::from_millis(300), 2);
        wheel.set(origin + Duration::from_secs(120), 3); // More than one rotation away.
        assert_eq!(
            fired(&mut wheel, origin + Duration::from_millis(200)),
            Vec::<u32>::new()
        );
        assert_eq!(
            fired(&mut wheel, origin + Duration::from_millis(299)),
            Vec::<u32>::new()
        );
        assert_eq!(
            fired(&mut wheel, origin + Duration::from_millis(300)),
            [1, 2, 9]
        );
        assert_eq!(
            fired(&mut wheel, origin + Duration::from_secs(60)),
            Vec::<u32>::new()
        );
        assert_eq!(
            fired(&mut wheel, origin + Duration::from_secs(119)),
            Vec::<u32>::new()
        );
        assert_eq!(fired(&mut wheel, origin + Duration::from_secs(121)), [3]);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn cancel_is_exact_and_stale_handles_are_ignored() {
        let origin = Instant::now();
        let mut wheel = TimerWheel::new(origin, TICK);
        let at = origin + Duration::from_secs(1);
        let a = wheel.set(at, 1);
        let _b = wheel.set(at, 2);
        let c = wheel.set(at, 3);
        wheel.cancel(a);
        wheel.cancel(a);
        assert_eq!(fired(&mut wheel, at), [2, 3]);
        // `c` fired; its slab key is reused by a new timer, which a stale cancel must not touch.
        let d = wheel.set(at + Duration::from_secs(1), 4);
        wheel.cancel(c);
        assert_eq!(fired(&mut wheel, at + Duration::from_secs(1)), [4]);
        wheel.cancel(d);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_expire_and_long_sleeps_catch_up() {
        let origin = Instant::now();
        let mut wheel = TimerWheel::new(origin, TICK);
        wheel.expire(origin + Duration::from_secs(10), |_: u32| {});
        wheel.set(origin, 7); // Already past.
        wheel.set(origin + Duration::from_secs(11), 8);
        assert_eq!(fired(&mut wheel, origin + Duration::from_secs(10)), [7]);
        assert_eq!(fired(&mut wheel, origin + Duration::from_secs(500)), [8]);
    }

    #[test]
    fn many_timers_in_one_slot() {
        let origin = Instant::now();
        let mut wheel = TimerWheel::new(origin, TICK);
        let at = origin + Duration::from_millis(500);
        let handles: Vec<_> = (0..1000).map(|v| wheel.set(at, v)).collect();
        for handle in handles.iter().step_by(2) {
            wheel.cancel(*handle);
        }
        let out = fired(&mut wheel, at);
        assert_eq!(out.len(), 500);
        assert!(out.iter().all(|v| v % 2 == 1));
    }
}
