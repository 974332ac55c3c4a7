//! A bounded queue that serves its clients in turn: one item of each client with items
//! queued, round-robin, so a client that queues many items waits for them itself instead of
//! making every other client wait behind them. Each client may hold only a bounded share
//! of the queue. Sans-io: no locks, no threads, no clock; the Redis bus wraps it in a mutex
//! for its backfiller.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Why an item was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds `len_max` items.
    Full,
    /// This client holds `per_client_max` items.
    ClientFull,
}

/// Items queued per client, served one per client in turn.
pub(crate) struct FairQueue<K, T> {
    /// Each client's items, oldest first; a client with none has no entry.
    queues: HashMap<K, VecDeque<T>>,
    /// Clients with items, in the order they are served next.
    turn: VecDeque<K>,
    len: usize,
    len_max: usize,
    per_client_max: usize,
}

impl<K: Copy + Eq + Hash, T> FairQueue<K, T> {
    /// An empty queue of at most `len_max` items, `per_client_max` of them per client.
    pub(crate) fn new(len_max: usize, per_client_max: usize) -> Self {
        debug_assert!(per_client_max <= len_max);
        FairQueue {
            queues: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
            len_max,
            per_client_max,
        }
    }

    /// Queues `item` for `client`, or hands it back with the reason.
    pub(crate) fn push(&mut self, client: K, item: T) -> Result<(), (Refused, T)> {
        if self.len >= self.len_max {
            return Err((Refused::Full, item));
        }
        let queue = self.queues.entry(client).or_default();
        if queue.len() >= self.per_client_max {
            return Err((Refused::ClientFull, item));
        }
        if queue.is_empty() {
            self.turn.push_back(client);
        }
        queue.push_back(item);
        self.len += 1;
        self.check_invariants();
        Ok(())
    }

    /// The next item: the oldest of the client whose turn it is. That client, if it has
    /// more, goes to the back of the turn.
    pub(crate) fn pop(&mut self) -> Option<(K, T)> {
        let client = self.turn.pop_front()?;
        let queue = self.queues.get_mut(&client)?;
        let item = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&client);
        } else {
            self.turn.push_back(client);
        }
        self.len -= 1;
        self.check_invariants();
        Some((client, item))
    }

    /// Items queued.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        debug_assert!(self.len <= self.len_max);
        debug_assert_eq!(self.turn.len(), self.queues.len());
        debug_assert_eq!(
            self.queues.values().map(VecDeque::len).sum::<usize>(),
            self.len
        );
        debug_assert!(self.queues.values().all(|q| !q.is_empty()));
        debug_assert!(self.queues.values().all(|q| q.len() <= self.per_client_max));
    }

    #[cfg(not(debug_assertions))]
    fn check_invariants(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_take_turns_and_keep_their_own_order() {
        let mut queue = FairQueue::new(100, 10);
        for i in 0..6 {
            queue.push('h', i).unwrap();
        }
        queue.push('a', 100).unwrap();
        queue.push('b', 200).unwrap();
        queue.push('a', 101).unwrap();
        let order: Vec<(char, i32)> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(
            order,
            [
                ('h', 0),
                ('a', 100),
                ('b', 200),
                ('h', 1),
                ('a', 101),
                ('h', 2),
                ('h', 3),
                ('h', 4),
                ('h', 5)
            ]
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn a_client_gets_a_bounded_share_and_the_total_is_bounded() {
        let mut queue = FairQueue::new(5, 3);
        for i in 0..3 {
            queue.push(1, i).unwrap();
        }
        assert_eq!(queue.push(1, 3), Err((Refused::ClientFull, 3)));
        queue.push(2, 10).unwrap();
        queue.push(3, 20).unwrap();
        assert_eq!(queue.push(4, 30), Err((Refused::Full, 30)));
        assert_eq!(queue.len(), 5);
        assert_eq!(queue.pop(), Some((1, 0)));
        queue.push(4, 30).unwrap();
        assert_eq!(queue.pop(), Some((2, 10)));
        assert_eq!(queue.pop(), Some((3, 20)));
        assert_eq!(queue.pop(), Some((1, 1)));
        assert_eq!(queue.pop(), Some((4, 30)));
        assert_eq!(queue.pop(), Some((1, 2)));
        assert_eq!(queue.pop(), None);
        queue.push(1, 9).unwrap();
        assert_eq!(queue.pop(), Some((1, 9)));
    }
}
