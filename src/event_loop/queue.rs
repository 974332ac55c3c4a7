//! The fan-out queue: streams waiting for their write, each once, in the order their
//! topics moved. It holds a stream for `--coalesce-ms` after its topic moved, so events
//! published meanwhile go out in the same write, and it measures the inbox budget from the
//! oldest waiting stream. The event loop and the simulation share it.

use std::collections::VecDeque;
use std::time::Duration;

/// One waiting stream.
struct Waiting {
    /// The stream's slab key.
    key: usize,
    /// Loop time (ms) from which it may be written.
    due_ms: u64,
    /// The inbox totals when the turn that queued it began draining: every event it has
    /// not written was taken from the inbox after that.
    drained: (u64, u64),
}

/// Streams waiting for the fan-out, with their hold and the inbox totals they are owed.
pub(crate) struct FanOutQueue {
    waiting: VecDeque<Waiting>,
    /// `--coalesce-ms`: how long a stream is held after its topic moved.
    window_ms: u64,
    /// Events and frame bytes taken from the inbox since the loop began.
    drained: (u64, u64),
    /// `drained` when this turn's drain began (the mark streams queued this turn get).
    turn_mark: (u64, u64),
}

impl Default for FanOutQueue {
    /// A queue that holds no stream.
    fn default() -> Self {
        FanOutQueue::new(Duration::ZERO)
    }
}

impl FanOutQueue {
    /// An empty queue holding each stream for `window`.
    pub(crate) fn new(window: Duration) -> Self {
        FanOutQueue {
            waiting: VecDeque::new(),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            drained: (0, 0),
            turn_mark: (0, 0),
        }
    }

    /// Queues a stream whose topic moved this turn (the caller queues each stream once).
    pub(crate) fn push(&mut self, key: usize, now_ms: u64) {
        self.waiting.push_back(Waiting {
            key,
            due_ms: now_ms.saturating_add(self.window_ms),
            drained: self.turn_mark,
        });
    }

    /// The oldest waiting stream, if its hold is over.
    pub(crate) fn pop_due(&mut self, now_ms: u64) -> Option<usize> {
        if self.waiting.front()?.due_ms > now_ms {
            return None;
        }
        self.waiting.pop_front().map(|waiting| waiting.key)
    }

    /// Milliseconds until the oldest waiting stream may be written: `None` when none
    /// waits, `Some(0)` when one may be written now.
    pub(crate) fn wait_ms(&self, now_ms: u64) -> Option<u64> {
        let front = self.waiting.front()?;
        Some(front.due_ms.saturating_sub(now_ms))
    }

    /// Starts a turn's drain of the inbox, and says how many events and frame bytes it may
    /// take: `budget` less what was taken since the oldest waiting stream was queued, so no
    /// waiting stream has more than `budget` of unwritten events pushed through a ring
    /// before its write (the whole budget when none waits).
    pub(crate) fn begin_drain(&mut self, budget: (usize, usize)) -> (usize, usize) {
        self.turn_mark = self.drained;
        let since = self.waiting.front().map_or((0, 0), |oldest| {
            (
                self.drained.0 - oldest.drained.0,
                self.drained.1 - oldest.drained.1,
            )
        });
        let left = |max: usize, taken: u64| {
            usize::try_from(taken).map_or(0, |taken| max.saturating_sub(taken))
        };
        (left(budget.0, since.0), left(budget.1, since.1))
    }

    /// Counts an event taken from the inbox.
    pub(crate) fn drained(&mut self, frame_bytes: usize) {
        self.drained.0 += 1;
        self.drained.1 += frame_bytes as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_window_every_stream_is_due_at_once_in_order() {
        let mut queue = FanOutQueue::new(Duration::ZERO);
        queue.push(3, 10);
        queue.push(1, 10);
        assert_eq!(queue.wait_ms(10), Some(0));
        assert_eq!(queue.pop_due(10), Some(3));
        assert_eq!(queue.pop_due(10), Some(1));
        assert_eq!(queue.pop_due(10), None);
        assert_eq!(queue.wait_ms(10), None);
    }

    #[test]
    fn a_window_holds_each_stream_from_when_it_was_queued() {
        let mut queue = FanOutQueue::new(Duration::from_millis(5));
        queue.push(1, 100);
        queue.push(2, 103);
        assert_eq!(queue.pop_due(104), None);
        assert_eq!(queue.wait_ms(104), Some(1));
        assert_eq!(queue.pop_due(105), Some(1));
        assert_eq!(queue.pop_due(107), None, "the second is held until 108");
        assert_eq!(queue.wait_ms(107), Some(1));
        assert_eq!(queue.pop_due(108), Some(2));
    }

    /// The budget is owed to the oldest waiting stream, counting the events of the turn
    /// that queued it; it comes back whole once nothing waits, and as the oldest is written.
    #[test]
    fn the_inbox_budget_runs_from_the_oldest_waiting_stream() {
        let mut queue = FanOutQueue::new(Duration::from_millis(5));
        let budget = (10, 1_000);
        assert_eq!(queue.begin_drain(budget), (10, 1_000));
        for _ in 0..4 {
            queue.drained(100);
        }
        queue.push(1, 0); // Made dirty by those four events.
        assert_eq!(queue.begin_drain(budget), (6, 600));
        for _ in 0..2 {
            queue.drained(100);
        }
        queue.push(2, 1);
        assert_eq!(queue.begin_drain(budget), (4, 400));
        assert_eq!(queue.pop_due(5), Some(1));
        // Stream 2 was queued by the turn that began after four events: owed two.
        assert_eq!(queue.begin_drain(budget), (8, 800));
        assert_eq!(queue.pop_due(6), Some(2));
        assert_eq!(queue.begin_drain(budget), (10, 1_000));
    }
}
