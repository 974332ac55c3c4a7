//! A topic's bounded, sequence-numbered history of frames, and the cursor arithmetic
//! subscribers use to read from it.
//!
//! Each event loop keeps one [`Ring`] per topic; entries point at frames shared by every
//! loop. Subscribers hold a [`Seq`] cursor (the last event they were sent), never a copy.
//! The ring only appends at the head and evicts at the tail, so an entry's position never
//! changes while it is kept. No I/O here.

use std::collections::VecDeque;

use crate::sse::Frame;

/// Newest entries [`Ring::first_after`] looks at before it searches.
const FIRST_AFTER_SCAN: usize = 4;

/// Bus-assigned sequence number of an event; strictly increasing in publish order.
/// `0` is "before every event".
pub(crate) type Seq = u128;

/// One kept event.
pub(crate) struct Entry {
    /// The event's sequence number.
    pub seq: Seq,
    /// The encoded event, shared with every other ring that holds it.
    pub frame: Frame,
    /// When the event was published (Unix ms, never decreasing in sequence order): what
    /// `since` and the history's time to live read. It fits the padding the `u128`
    /// alignment leaves, so an entry is 64 bytes with it as without it.
    pub time_ms: u64,
    /// Bytes appended to this ring up to and including this frame (for lag arithmetic).
    end: u64,
}

/// The history of one topic on one event loop.
#[derive(Default)]
pub(crate) struct Ring {
    entries: VecDeque<Entry>,
    /// Total length of the kept frames.
    bytes: usize,
    /// Bytes ever appended; `Entry::end` of the newest entry.
    appended: u64,
    /// Highest sequence number evicted (or otherwise forgotten); a cursor below it has
    /// missed events that are gone.
    evicted_max: Seq,
}

impl Ring {
    /// An empty ring that treats everything up to `forgotten` as evicted.
    pub(crate) fn new(forgotten: Seq) -> Self {
        Ring {
            evicted_max: forgotten,
            ..Ring::default()
        }
    }

    /// Appends the newest event, published at `time_ms`. Callers append in sequence order.
    pub(crate) fn push(&mut self, seq: Seq, frame: Frame, time_ms: u64) {
        debug_assert!(self.newest_seq().is_none_or(|newest| newest < seq));
        debug_assert!(self.evicted_max < seq);
        self.bytes += frame.len();
        self.appended += frame.len() as u64;
        self.entries.push_back(Entry {
            seq,
            frame,
            time_ms,
            end: self.appended,
        });
    }

    /// Evicts the oldest entry and returns its size in bytes.
    pub(crate) fn evict_oldest(&mut self) -> Option<usize> {
        let entry = self.entries.pop_front()?;
        self.bytes -= entry.frame.len();
        self.evicted_max = entry.seq;
        debug_assert!(self.bytes as u64 <= self.appended);
        Some(entry.frame.len())
    }

    /// Evicts from the tail until at most `count_max` entries and `bytes_max` bytes are
    /// kept, but never the newest entry (subscribers have not been sent it yet). Returns
    /// the bytes freed.
    pub(crate) fn trim(&mut self, count_max: usize, bytes_max: usize) -> usize {
        let mut freed = 0;
        while self.entries.len() > 1 && (self.entries.len() > count_max || self.bytes > bytes_max) {
            freed += self.evict_oldest().unwrap_or(0);
        }
        freed
    }

    /// Evicts from the tail while the oldest entry was published at or before `cutoff_ms`
    /// (its time to live has run out), the newest included: an expired event is not kept.
    /// Returns the entries and bytes freed. O(1) per entry evicted.
    pub(crate) fn expire(&mut self, cutoff_ms: u64) -> (usize, usize) {
        let (mut count, mut freed) = (0, 0);
        while self.entries.front().is_some_and(|e| e.time_ms <= cutoff_ms) {
            freed += self.evict_oldest().unwrap_or(0);
            count += 1;
        }
        (count, freed)
    }

    /// Sequence number of the oldest kept entry published at or after `since_ms`.
    /// Times never decrease along the ring, so this is a binary search.
    pub(crate) fn first_since(&self, since_ms: u64) -> Option<Seq> {
        let index = self.entries.partition_point(|e| e.time_ms < since_ms);
        self.entries.get(index).map(|e| e.seq)
    }

    /// Number of kept entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the ring keeps nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sequence number of the oldest kept entry.
    pub(crate) fn oldest_seq(&self) -> Option<Seq> {
        self.entries.front().map(|e| e.seq)
    }

    /// Sequence number of the newest kept entry.
    pub(crate) fn newest_seq(&self) -> Option<Seq> {
        self.entries.back().map(|e| e.seq)
    }

    /// Sequence number and publish time (Unix ms) of the newest kept entry.
    pub(crate) fn newest(&self) -> Option<(Seq, u64)> {
        self.entries.back().map(|e| (e.seq, e.time_ms))
    }

    /// Highest sequence number this ring has forgotten.
    pub(crate) fn evicted_max(&self) -> Seq {
        self.evicted_max
    }

    /// Whether a reader whose cursor is `cursor` can still be given every later event.
    pub(crate) fn covers(&self, cursor: Seq) -> bool {
        cursor >= self.evicted_max
    }

    /// Index of the first entry after `cursor`. A reader that keeps up is a few entries
    /// behind the newest, so those are looked at first (each fan-out write asks this);
    /// only a reader further behind pays for the binary search.
    pub(crate) fn first_after(&self, cursor: Seq) -> usize {
        let len = self.entries.len();
        let near = len.min(FIRST_AFTER_SCAN);
        for back in 1..=near {
            if self.entries[len - back].seq <= cursor {
                return len - back + 1;
            }
        }
        if near == len {
            return 0;
        }
        self.entries.partition_point(|e| e.seq <= cursor)
    }

    /// The entry at `index`, if kept.
    pub(crate) fn get(&self, index: usize) -> Option<&Entry> {
        self.entries.get(index)
    }

    /// Bytes of kept frames after `cursor`. Callers check [`Ring::covers`] first: frames
    /// already evicted are not counted.
    pub(crate) fn lag_bytes(&self, cursor: Seq) -> u64 {
        let index = self.first_after(cursor);
        let Some(next) = self.entries.get(index) else {
            return 0;
        };
        self.appended - (next.end - next.frame.len() as u64)
    }

    /// Total length of the kept frames.
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ring_of(seqs: &[Seq]) -> Ring {
        let mut ring = Ring::new(0);
        for &seq in seqs {
            ring.push(seq, Bytes::from(vec![b'x'; 10]), seq as u64 * 10);
        }
        ring
    }

    #[test]
    fn trim_keeps_newest_and_records_eviction() {
        let mut ring = ring_of(&[1, 3, 5, 7]);
        assert_eq!(ring.trim(2, usize::MAX), 20);
        assert_eq!(ring.oldest_seq(), Some(5));
        assert_eq!(ring.evicted_max(), 3);
        assert!(ring.covers(3));
        assert!(!ring.covers(2));
        assert_eq!(ring.trim(0, 0), 10);
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.bytes(), 10);
    }

    #[test]
    fn cursor_arithmetic() {
        let ring = ring_of(&[2, 4, 6]);
        assert_eq!(ring.first_after(0), 0);
        assert_eq!(ring.first_after(4), 2);
        assert_eq!(ring.first_after(9), 3);
        assert_eq!(ring.lag_bytes(0), 30);
        assert_eq!(ring.lag_bytes(4), 10);
        assert_eq!(ring.lag_bytes(5), 10);
        assert_eq!(ring.lag_bytes(6), 0);
    }

    /// The look at the newest entries agrees with a binary search for every cursor, in
    /// rings shorter and longer than the look, wrapped around or not.
    #[test]
    fn first_after_agrees_with_a_search() {
        for len in 0..12u128 {
            let seqs: Vec<u128> = (1..=len).map(|i| i * 2).collect();
            let mut ring = ring_of(&seqs);
            for round in 0..3 {
                for cursor in 0..=len * 2 + 3 {
                    let searched = ring.entries.partition_point(|e| e.seq <= cursor);
                    assert_eq!(ring.first_after(cursor), searched, "{len} {round} {cursor}");
                }
                // Moves the deque's start so later rounds read it wrapped.
                if let Some(oldest) = ring.oldest_seq() {
                    ring.evict_oldest();
                    ring.push(oldest + 1_000 * (round + 1), Bytes::from_static(b"y"), 0);
                }
            }
        }
    }

    /// The publish time costs no memory: it sits in the padding of the `u128` alignment.
    #[test]
    fn entry_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
    }

    #[test]
    fn expiry_and_since() {
        let mut ring = ring_of(&[1, 2, 3, 4]);
        assert_eq!(ring.first_since(0), Some(1));
        assert_eq!(ring.first_since(21), Some(3));
        assert_eq!(ring.first_since(41), None);
        assert_eq!(ring.expire(20), (2, 20));
        assert_eq!((ring.oldest_seq(), ring.evicted_max()), (Some(3), 2));
        assert_eq!(ring.expire(40), (2, 20));
        assert!(ring.is_empty());
        assert_eq!(ring.evicted_max(), 4);
    }

    #[test]
    fn lag_after_eviction() {
        let mut ring = ring_of(&[1, 2, 3]);
        ring.evict_oldest();
        assert!(!ring.covers(0));
        assert_eq!(ring.lag_bytes(1), 20);
        assert!(!Ring::new(9).covers(8));
    }
}
