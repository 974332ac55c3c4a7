//! The wildcard index of one loop: which live patterns (`prefix*`, the byte-prefix meaning
//! JWT claims give `*`) a topic name falls under, found in one pass over the name.
//!
//! Publishing looks every topic of every event up here, so the cost must not grow with the
//! number of patterns. The patterns are kept by a keyed hash of their prefix, with a count
//! of live patterns per prefix length. One pass feeds the name's bytes into a streaming
//! hasher and, at each length some live pattern has, reads the hash of the name's prefix so
//! far and looks it up: O(1) per byte of the name (at most `max_topic_bytes`), plus a byte
//! comparison per pattern that matches (a pattern is confirmed, never taken on its hash).
//! The key is random per loop (`RandomState`, SipHash), so no client can choose prefixes
//! that pile into one bucket. Memory is one entry and a copy of the prefix per pattern
//! (a trie would cost a node per prefix byte), and the per-length counts (at most
//! `max_topic_bytes` + 1). No I/O here.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use super::topics::TopicId;

/// Live patterns by prefix.
#[derive(Default)]
pub(crate) struct Patterns {
    /// The keyed hash of each live prefix, with the patterns that have it (one, unless
    /// two prefixes collide).
    by_hash: HashMap<u64, Vec<(Box<str>, TopicId)>>,
    /// Live patterns per prefix length (index: length in bytes).
    lengths: Vec<usize>,
    /// Live patterns.
    len: usize,
    /// The hash key.
    key: RandomState,
}

impl Patterns {
    /// The keyed hash of `prefix`, computed as [`Patterns::matching`] streams it.
    fn hash(&self, prefix: &str) -> u64 {
        let mut hasher = self.key.build_hasher();
        for &byte in prefix.as_bytes() {
            hasher.write_u8(byte);
        }
        hasher.finish()
    }

    /// Whether no pattern is live (then publishing skips the pass).
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds the pattern `prefix*`, kept as topic `id`. The caller adds each prefix once.
    pub(crate) fn insert(&mut self, prefix: &str, id: TopicId) {
        let hash = self.hash(prefix);
        let bucket = self.by_hash.entry(hash).or_default();
        debug_assert!(
            bucket.iter().all(|(p, _)| **p != *prefix),
            "pattern added twice"
        );
        bucket.push((prefix.into(), id));
        if self.lengths.len() <= prefix.len() {
            self.lengths.resize(prefix.len() + 1, 0);
        }
        self.lengths[prefix.len()] += 1;
        self.len += 1;
    }

    /// Removes the pattern `prefix*`.
    pub(crate) fn remove(&mut self, prefix: &str) {
        let hash = self.hash(prefix);
        let Some(bucket) = self.by_hash.get_mut(&hash) else {
            debug_assert!(false, "removing a pattern that is not there");
            return;
        };
        let Some(index) = bucket.iter().position(|(p, _)| **p == *prefix) else {
            debug_assert!(false, "removing a pattern that is not there");
            return;
        };
        bucket.swap_remove(index);
        if bucket.is_empty() {
            self.by_hash.remove(&hash);
        }
        self.lengths[prefix.len()] -= 1;
        while self.lengths.last() == Some(&0) {
            self.lengths.pop();
        }
        self.len -= 1;
    }

    /// Calls `visit` with every live pattern whose prefix starts `name`, shortest first.
    pub(crate) fn matching(&self, name: &str, mut visit: impl FnMut(TopicId)) {
        let bytes = name.as_bytes();
        let mut hasher = self.key.build_hasher();
        // Lengths past the longest live prefix, or the name, have nothing to find.
        let last = bytes.len().min(self.lengths.len().saturating_sub(1));
        for length in 0..=last {
            if length > 0 {
                hasher.write_u8(bytes[length - 1]);
            }
            if self.lengths.get(length).is_none_or(|&n| n == 0) {
                continue;
            }
            let Some(bucket) = self.by_hash.get(&hasher.finish()) else {
                continue;
            };
            for (prefix, id) in bucket {
                if prefix.as_bytes() == &bytes[..length] {
                    visit(*id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(patterns: &Patterns, name: &str) -> Vec<TopicId> {
        let mut found = Vec::new();
        patterns.matching(name, |id| found.push(id));
        found
    }

    #[test]
    fn prefixes_match_by_bytes_and_leave_nothing_behind() {
        let mut patterns = Patterns::default();
        assert!(patterns.is_empty());
        patterns.insert("prices/", 1);
        patterns.insert("prices/eu", 2);
        patterns.insert("pr", 3);
        patterns.insert("news", 4);
        assert_eq!(matches(&patterns, "prices/eu/de"), [3, 1, 2]);
        assert_eq!(matches(&patterns, "prices/eu"), [3, 1, 2]);
        assert_eq!(matches(&patterns, "prices/us"), [3, 1]);
        assert_eq!(matches(&patterns, "prices"), [3]);
        assert_eq!(matches(&patterns, "p"), Vec::<TopicId>::new());
        assert_eq!(matches(&patterns, "px"), Vec::<TopicId>::new());
        assert_eq!(matches(&patterns, "newsletter"), [4]);
        assert_eq!(matches(&patterns, "nows"), Vec::<TopicId>::new());
        patterns.remove("prices/");
        assert_eq!(matches(&patterns, "prices/eu/de"), [3, 2]);
        patterns.remove("prices/eu");
        assert_eq!(matches(&patterns, "prices/eu/de"), [3]);
        assert_eq!(patterns.lengths.len(), 5, "up to `news`");
        patterns.insert("", 5);
        assert_eq!(matches(&patterns, "x"), [5]);
        assert_eq!(matches(&patterns, "pr"), [5, 3]);
        for prefix in ["pr", "news", ""] {
            patterns.remove(prefix);
        }
        assert!(patterns.is_empty());
        assert!(patterns.by_hash.is_empty() && patterns.lengths.is_empty());
    }

    /// Two prefixes in one bucket are told apart by their bytes.
    #[test]
    fn a_shared_bucket_is_confirmed_byte_for_byte() {
        let mut patterns = Patterns::default();
        patterns.insert("ab", 1);
        let hash = patterns.hash("ab");
        // Force a collision: `cd` filed under `ab`'s hash.
        patterns
            .by_hash
            .entry(hash)
            .or_default()
            .push(("cd".into(), 2));
        patterns.lengths[2] += 1;
        patterns.len += 1;
        assert_eq!(matches(&patterns, "abc"), [1]);
        assert_eq!(matches(&patterns, "cdc"), Vec::<TopicId>::new());
    }
}
