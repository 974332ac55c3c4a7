//! The loop's clock and deadlines: the time read once per turn, the jitter source, and
//! the timer wheel that holds each connection's one deadline. What a deadline means is
//! the connection's business (`Connection::on_deadline`); the loop only carries it out.
//!
//! Two clocks are read once per turn: the monotonic one, which every deadline runs on,
//! and the wall clock, which only token checks need (`exp` and `nbf` are Unix times). A
//! wall-clock time is turned into a loop deadline once, when a stream opens, so a later
//! step of the wall clock does not move it.

use std::time::{Duration, Instant};

use super::EventLoop;
use crate::conn::{self, Expired, Now};

/// The wall clock in Unix milliseconds (0 if it reads before 1970, which makes every token
/// with an `exp` look fresh rather than expired: the deadline still comes, late).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The time as this turn read it, and the jitter source.
pub(super) struct Clock {
    origin: Instant,
    now: Instant,
    unix_ms: u64,
    /// xorshift state for lifetime and retry jitter (spreading, not security).
    jitter: u64,
}

impl Clock {
    /// A clock starting now.
    pub(super) fn start() -> Self {
        let origin = Instant::now();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
            | 1;
        Clock {
            origin,
            now: origin,
            unix_ms: unix_ms(),
            jitter: seed,
        }
    }

    /// Reads both clocks, once per turn.
    pub(super) fn read(&mut self) {
        self.now = Instant::now();
        self.unix_ms = unix_ms();
    }

    /// When the loop started: loop milliseconds count from here.
    pub(super) fn origin(&self) -> Instant {
        self.origin
    }

    /// This turn's instant.
    pub(super) fn now(&self) -> Instant {
        self.now
    }

    /// This turn's time as a connection takes it.
    pub(super) fn as_now(&self) -> Now {
        Now {
            ms: self.now.saturating_duration_since(self.origin).as_millis() as u64,
            unix_ms: self.unix_ms,
        }
    }

    /// The instant of loop time `ms`.
    pub(super) fn instant_at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }

    /// The next jitter value.
    pub(super) fn random(&mut self) -> u64 {
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        self.jitter
    }
}

impl EventLoop {
    /// Replaces a connection's deadline with loop time `at_ms`.
    pub(super) fn set_timer(&mut self, key: usize, at_ms: u64) {
        let at = self.clock.instant_at(at_ms);
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(old) = slot.timer.take() {
            self.wheel.cancel(old);
        }
        slot.timer = Some(self.wheel.set(at, key));
    }

    /// Re-arms the exchange's timer when its deadline moved.
    pub(super) fn rearm_exchange(&mut self, key: usize) {
        let moved = self
            .conns
            .get_mut(key)
            .and_then(|slot| slot.conn.take_deadline());
        if let Some(at_ms) = moved {
            self.set_timer(key, at_ms);
        }
    }

    /// Tells a stream to come back after a jittered delay (`retry:`), then to close, and
    /// writes what it can of that now. While draining, the delay is spread over
    /// `shutdown_retry_window`, so a restart is not a reconnect storm.
    pub(super) fn send_back(&mut self, key: usize) {
        let random = self.clock.random();
        let draining = self.drain_deadline.is_some();
        let retry_ms = conn::jittered_retry_ms(&self.ctx.limits, random, draining);
        // Outside a drain only lost events send every stream back (`fanout.rs`).
        let why = match draining {
            true => conn::Parting::Shutdown,
            false => conn::Parting::LostEvents,
        };
        if let Some(stream) = self.conns.get_mut(key).and_then(|s| s.conn.stream_mut()) {
            stream.close_with_hint(retry_ms, why);
        }
        self.write_stream(key);
    }

    /// Carries out every deadline that passed by this turn's clock.
    pub(super) fn expire_timers(&mut self) {
        let mut due = std::mem::take(&mut self.pending.due);
        self.wheel.expire(self.clock.now(), |key| due.push(key));
        for &key in &due {
            self.on_timer(key);
        }
        due.clear();
        self.pending.due = due;
    }

    fn on_timer(&mut self, key: usize) {
        let now = self.clock.as_now();
        let random = self.clock.random();
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        slot.timer = None;
        match slot.conn.on_deadline(now, &self.ctx.limits, random) {
            Expired::Close(end) => self.close_stream(key, end),
            Expired::Drive => {
                self.rearm_exchange(key);
                self.drive(key);
            }
            Expired::Write { heartbeat, next_ms } => {
                self.counters.heartbeats += u64::from(heartbeat);
                self.set_timer(key, next_ms);
                self.write_stream(key);
            }
        }
    }
}
