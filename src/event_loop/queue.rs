//! The fan-out queue: streams waiting for their write, each once, in the order their
//! topics moved, and the inbox budget measured from the oldest waiting stream. The event
//! loop and the simulation share it.

use std::collections::VecDeque;

/// One waiting stream.
struct Waiting {
    /// The stream's slab key.
    key: usize,
    /// The inbox totals when the turn that queued it began draining: every event it has
    /// not written was taken from the inbox after that.
    drained: (u64, u64),
}

/// Streams waiting for the fan-out, with the inbox totals they are owed.
#[derive(Default)]
pub(crate) struct FanOutQueue {
    waiting: VecDeque<Waiting>,
    /// Events and frame bytes taken from the inbox since the loop began.
    drained: (u64, u64),
    /// `drained` when this turn's drain began (the mark streams queued this turn get).
    turn_mark: (u64, u64),
}

impl FanOutQueue {
    /// Whether no stream waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Streams waiting.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Queues a stream whose topic moved this turn (the caller queues each stream once).
    pub(crate) fn push(&mut self, key: usize) {
        self.waiting.push_back(Waiting {
            key,
            drained: self.turn_mark,
        });
    }

    /// Takes the oldest waiting stream.
    pub(crate) fn pop(&mut self) -> Option<usize> {
        self.waiting.pop_front().map(|waiting| waiting.key)
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
    fn streams_come_out_in_the_order_they_were_queued() {
        let mut queue = FanOutQueue::default();
        queue.push(3);
        queue.push(1);
        assert_eq!(queue.pop(), Some(3));
        assert_eq!(queue.pop(), Some(1));
        assert_eq!(queue.pop(), None);
        assert!(queue.is_empty());
    }

    /// The budget is owed to the oldest waiting stream, counting the events of the turn
    /// that queued it; it comes back whole once nothing waits, and as the oldest is written.
    /// (Counted from an empty queue instead, a queue that never empties would stop the
    /// inbox for good.)
    #[test]
    fn the_inbox_budget_runs_from_the_oldest_waiting_stream() {
        let mut queue = FanOutQueue::default();
        let budget = (10, 1_000);
        assert_eq!(queue.begin_drain(budget), (10, 1_000));
        for _ in 0..4 {
            queue.drained(100);
        }
        queue.push(1); // Made dirty by those four events.
        assert_eq!(queue.begin_drain(budget), (6, 600));
        for _ in 0..2 {
            queue.drained(100);
        }
        queue.push(2);
        assert_eq!(queue.begin_drain(budget), (4, 400));
        assert_eq!(queue.pop(), Some(1));
        // Stream 2 was queued by the turn that began after four events: owed two.
        assert_eq!(queue.begin_drain(budget), (8, 800));
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.begin_drain(budget), (10, 1_000));
    }
}
