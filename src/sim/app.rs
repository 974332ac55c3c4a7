//! The simulated application behind `--auth-url` (or an `Authorize` hook): questions from
//! the loop wait in a small queue (a full one is the pool's `Busy`) and are answered one at
//! a time, in random order across connections, with random decisions (allowed, allowed for
//! only some topics or for a while, 401, 403, no decision), often after the connection's
//! deadline passed, so late answers must match nothing. In the calm it allows everything
//! at once. It draws from its own generator, so seeds without it replay as before.

use std::time::{Duration, UNIX_EPOCH};

use crate::authorize::{Decision, Grant};
use crate::bus::Ticket;

use super::Rng;

/// The simulated application.
pub(super) struct SimApp {
    /// Subscriptions and publishes need its decision in this run.
    pub on: bool,
    /// Questions it holds at most (the pool's queue and workers together).
    queue_max: usize,
    /// Questions not answered yet, with the topics each asked for.
    pending: Vec<(Ticket, Vec<String>)>,
    rng: Rng,
}

impl SimApp {
    /// Decides in about half the runs, from a generator of its own seeded by `seed`.
    pub(super) fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5EED_A117);
        SimApp {
            on: rng.below(2) == 0,
            queue_max: 1 + rng.below(4) as usize,
            pending: Vec::new(),
            rng,
        }
    }

    /// Takes a question, or refuses it when the queue is full.
    pub(super) fn ask(&mut self, ticket: Ticket, topics: Vec<String>) -> bool {
        if self.pending.len() >= self.queue_max {
            return false;
        }
        self.pending.push((ticket, topics));
        true
    }

    /// Maybe one answer (about one turn in three), or, in the calm, every answer, each
    /// allowing what was asked. `unix_ms` is the wall clock now, for grants that end.
    pub(super) fn answers(&mut self, calm: bool, unix_ms: u64) -> Vec<(Ticket, Decision)> {
        if calm {
            return self
                .pending
                .drain(..)
                .map(|(ticket, _)| (ticket, Decision::allow()))
                .collect();
        }
        if self.pending.is_empty() || !self.rng.chance(333) {
            return Vec::new();
        }
        let index = self.rng.below(self.pending.len() as u64) as usize;
        let (ticket, topics) = self.pending.swap_remove(index);
        let decision = match self.rng.below(10) {
            0..=3 => Decision::allow(),
            // Only the first topic: a subscription to more is refused.
            4 => Decision::Allow(Grant {
                topics: Some(topics.into_iter().take(1).collect()),
                expires_at: None,
            }),
            // A grant that ends within a few seconds (or has ended already).
            5 => Decision::Allow(Grant {
                topics: None,
                expires_at: Some(
                    UNIX_EPOCH + Duration::from_millis(unix_ms + self.rng.below(5_000)),
                ),
            }),
            6 => Decision::Unauthorized,
            7 => Decision::Forbidden,
            _ => Decision::Unavailable,
        };
        vec![(ticket, decision)]
    }
}
