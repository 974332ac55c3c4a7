//! Deadlines on the loop: the loop clock, the connection timers of the wheel and what
//! each does when it fires (408, idle close, heartbeat, end of a stream's life).
//!
//! Two clocks are read once per turn: the monotonic `now`, which every deadline runs on,
//! and the wall clock, which only token checks need (`exp` and `nbf` are Unix times). A
//! wall-clock time is turned into a loop deadline once, when a stream opens, so a later
//! step of the wall clock does not move it.

use std::time::Instant;

use super::*;

/// Heartbeat intervals a blocked stream may go without writing a byte before it is closed.
pub(crate) const STALLED_HEARTBEATS: u64 = 2;

/// The wall clock in Unix milliseconds (0 if it reads before 1970, which makes every token
/// with an `exp` look fresh rather than expired: the deadline still comes, late).
pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl EventLoop {
    /// Replaces a connection's deadline.
    pub(super) fn set_timer(&mut self, key: usize, at: Instant, idle: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(old) = conn.timer.take() {
            self.wheel.cancel(old);
        }
        conn.timer = Some(self.wheel.set(at, key));
        conn.idle = idle;
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.now.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// The loop time (ms) at which wall-clock time `unix_ms` arrives, as the two clocks
    /// stand this turn (a time already past is now). Never 0, which means "never".
    pub(super) fn loop_ms_at(&self, unix_ms: u64) -> u64 {
        let ahead = unix_ms.saturating_sub(self.now_unix_ms);
        self.now_ms().saturating_add(ahead).max(1)
    }

    pub(super) fn random(&mut self) -> u64 {
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        self.jitter
    }

    /// A reconnect hint between `retry_ms` and twice that, so clients told to leave
    /// together do not come back together.
    pub(super) fn jittered_retry_ms(&mut self) -> u32 {
        let base = self.shared.limits.retry_ms;
        let spread = u64::from(base).max(1);
        base.saturating_add((self.random() % spread) as u32)
    }

    /// Tells a stream to come back after a jittered delay (`retry:`), then to close, and
    /// writes what it can of that now. While draining, the delay is spread over
    /// `shutdown_retry_window_ms`, so a restart is not a reconnect storm.
    pub(super) fn send_back(&mut self, key: usize) {
        let retry_ms = if self.drain_deadline.is_some() {
            let limits = &self.shared.limits;
            let base = limits.retry_ms;
            let window_ms = limits.shutdown_retry_window.as_millis() as u64;
            base.saturating_add((self.random() % (window_ms + 1)) as u32)
        } else {
            self.jittered_retry_ms()
        };
        if let Some(Connection {
            state: ConnState::Stream(stream),
            ..
        }) = self.conns.get_mut(key)
        {
            stream.close_with_hint(retry_ms);
        }
        self.flush(key);
    }

    pub(super) fn expire_timers(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.expire(self.now, |key| due.push(key));
        for &key in &due {
            self.on_timer(key);
        }
        due.clear();
        self.due = due;
    }

    pub(super) fn on_timer(&mut self, key: usize) {
        let now_ms = self.now_ms();
        let limits = &self.shared.limits;
        let (heartbeat_ms, head_timeout) =
            (limits.heartbeat.as_millis() as u64, limits.head_timeout);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.timer = None;
        match &mut conn.state {
            ConnState::Lingering { .. } => self.close(key),
            ConnState::Http(exchange) => match exchange.on_timeout() {
                Step::Close => self.close(key),
                _ => {
                    // The 408 is written by the exchange; give it one more deadline to go out.
                    let at = self.now + head_timeout;
                    self.set_timer(key, at, false);
                    self.drive_http(key);
                }
            },
            ConnState::Stream(stream) => {
                // A client that stopped reading holds whatever it is behind by (its share
                // of the rings, a resume's backfill): with no bytes moving for two
                // heartbeat intervals it is a slow consumer, even if no event comes to
                // trigger the lag check.
                let stalled = stream.blocked
                    && now_ms.saturating_sub(stream.last_write_ms)
                        >= STALLED_HEARTBEATS * heartbeat_ms;
                if stalled {
                    return self.close_stream(key, StreamEnd::SlowConsumer);
                }
                if stream.expires_ms != 0 && now_ms >= stream.expires_ms {
                    self.send_back(key);
                } else {
                    if stream.queue_heartbeat(now_ms, heartbeat_ms) {
                        self.counters.heartbeats += 1;
                    }
                    self.flush(key);
                }
                self.arm_stream_timer(key);
            }
        }
    }
}
