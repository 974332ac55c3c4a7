//! Topics on one event loop: name validation, interning, each topic's history ring and its
//! subscriber index, and the global history budget across all topics.
//!
//! A topic exists while it has subscribers or history; one with neither is removed, so a
//! flood of distinct topic names costs at most the history budget. No I/O here.
//!
//! A wildcard subscription `prefix*` is a topic of its own, named with its `*` (which no
//! topic name may hold), whose ring gets every event appended to a topic starting with
//! `prefix`: the streams, the merge, the fan-out and resume read it like any topic, topics
//! created later need nothing, and an event a stream reaches through several of its topics
//! and patterns is sent once (the merge visits each sequence number once). Appending finds
//! the patterns in one pass over the name ([`Patterns`]: prefixes by keyed hash). A new pattern
//! starts with what the rings of the topics under it keep (its history on this loop), and
//! counts everything older, or everything when the table is too large to scan, as evicted.

use std::collections::{HashMap, VecDeque};

use slab::Slab;

use super::patterns::Patterns;
use super::ring::{Ring, Seq};
use crate::sse::Frame;

/// Index of a topic in its loop's table. Valid while the topic has subscribers or history.
pub(crate) type TopicId = usize;

/// Bytes charged to the history budget per kept entry beyond its frame: the ring entry,
/// the budget queue entry and the frame's reference count.
const ENTRY_OVERHEAD_BYTES: usize = 64;
/// Bytes charged per topic beyond its name: map and table slots, ring and index headers.
/// Only topics without subscribers are charged: those are what a flood of distinct
/// published names creates, while subscribed topics are already bounded by connections
/// times topics per subscription. Charging them would let subscriptions alone exhaust
/// the budget and evict every new event before it is sent.
const TOPIC_OVERHEAD_BYTES: usize = 160;

/// Topics a new pattern's history is gathered from at most: past this the loop's table is
/// not scanned (a subscription must not cost a walk over a flood of names), and the new
/// pattern counts everything before it as evicted, so a resume from before gets the gap.
const SEED_SCAN_TOPICS_MAX: usize = 4_096;
/// Entries a new pattern's gathering looks at, at most: a prefix over thousands of full
/// rings must not cost a subscription more than this. Past it the pattern gathers nothing
/// and counts everything before it as evicted, as past [`SEED_SCAN_TOPICS_MAX`].
const SEED_SCAN_ENTRIES_MAX: usize = 65_536;

/// Whether `name` is a pattern (`prefix*`) rather than a topic name; returns its prefix.
pub(crate) fn pattern_prefix(name: &str) -> Option<&str> {
    name.strip_suffix('*')
}

/// What a topic without subscribers costs the history budget beyond its entries.
fn topic_charge(name: &str) -> usize {
    TOPIC_OVERHEAD_BYTES + 2 * name.len()
}

/// Checks a topic name: 1..=`max_bytes` bytes of `A-Z a-z 0-9 _ - . : / @ ~`. The set keeps
/// names safe in URLs, logs, metrics and Redis keys, and leaves `*` and `,` free for patterns.
pub(crate) fn is_valid_name(name: &str, max_bytes: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_bytes
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/' | b'@' | b'~')
        })
}

/// Where one subscriber sits in a topic's subscriber list: the connection's slab key and
/// the index of this topic in that connection's topic list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SubscriberRef {
    /// The connection's key in the loop's slab.
    pub conn: usize,
    /// Index of the topic in the connection's own topic list.
    pub slot: u16,
}

/// One of a stream's topics and where the stream sits in that topic's subscriber list.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamTopic {
    /// The topic.
    pub id: TopicId,
    /// Position in the topic's subscriber list (kept current when others leave).
    pub position: u32,
}

/// One topic on one loop.
pub(crate) struct Topic {
    name: Box<str>,
    /// The topic's history.
    pub ring: Ring,
    /// Subscribers, unordered; removal swaps the last one into the hole.
    pub subscribers: Vec<SubscriberRef>,
    /// Whether the topic is queued in `Topics::dirty` this turn.
    dirty: bool,
}

/// History limits, copied from the config.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HistoryLimits {
    /// Entries kept per topic.
    pub events: usize,
    /// Frame bytes kept per topic.
    pub bytes: usize,
    /// Bytes charged across all topics (frames plus overheads).
    pub total_bytes: usize,
    /// How long an event is kept (ms from its publish time); `None`: until evicted.
    pub ttl_ms: Option<u64>,
}

impl Topic {
    /// The topic's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// All topics of one event loop.
pub(crate) struct Topics {
    by_name: HashMap<Box<str>, TopicId>,
    table: Slab<Topic>,
    /// Every kept entry in append order, for evicting the globally oldest when the total
    /// budget is exceeded. Entries whose topic already evicted them are skipped lazily and
    /// compacted when they outnumber the live ones.
    order: VecDeque<(TopicId, Seq)>,
    /// Entries kept across all rings.
    entries_live: usize,
    /// Bytes charged against `limits.total_bytes`.
    charged_bytes: usize,
    /// Highest sequence number forgotten together with a removed topic; new topics start
    /// from it so a resume never misses a gap.
    forgotten_max: Seq,
    /// Highest sequence number appended on this loop.
    head_seq: Seq,
    /// Topics that received events since the last `take_dirty`.
    dirty: Vec<TopicId>,
    /// The live patterns, by prefix.
    patterns: Patterns,
    /// Patterns an event falls under (reused across appends).
    matched: Vec<TopicId>,
    limits: HistoryLimits,
}

impl Topics {
    /// An empty table.
    pub(crate) fn new(limits: HistoryLimits) -> Self {
        Topics {
            by_name: HashMap::new(),
            table: Slab::new(),
            order: VecDeque::new(),
            entries_live: 0,
            charged_bytes: 0,
            forgotten_max: 0,
            head_seq: 0,
            dirty: Vec::new(),
            patterns: Patterns::default(),
            matched: Vec::new(),
            limits,
        }
    }

    /// The topic with this id. Ids held by subscribers stay valid until they unsubscribe.
    pub(crate) fn get(&self, id: TopicId) -> Option<&Topic> {
        self.table.get(id)
    }

    /// Every topic, for the simulation's index checks.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (TopicId, &Topic)> {
        self.table.iter()
    }

    /// Looks up a topic without creating it.
    pub(crate) fn find(&self, name: &str) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    /// Highest sequence number a topic named `name` has forgotten, whether it exists or
    /// would be created now (a pattern: the floor it would gather its history above). The
    /// bus fills in exactly what is below it, and may skip all of that when its own log
    /// has a gap, so it must be no higher than what the rings will serve.
    pub(crate) fn evicted_max(&self, name: &str) -> Seq {
        if let Some(topic) = self.find(name).and_then(|id| self.get(id)) {
            return topic.ring.evicted_max();
        }
        match pattern_prefix(name) {
            Some(prefix) => self.seed(prefix).0,
            None => self.forgotten_max,
        }
    }

    /// Highest sequence number appended on this loop.
    pub(crate) fn head_seq(&self) -> Seq {
        self.head_seq
    }

    /// Number of topics that exist on this loop.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    fn intern(&mut self, name: &str) -> TopicId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let prefix = pattern_prefix(name);
        let (floor, seed) = match prefix {
            Some(prefix) => self.seed(prefix),
            None => (self.forgotten_max, Vec::new()),
        };
        let name: Box<str> = name.into();
        self.charged_bytes += topic_charge(&name);
        let id = self.table.insert(Topic {
            name: name.clone(),
            ring: Ring::new(floor),
            subscribers: Vec::new(),
            dirty: false,
        });
        self.by_name.insert(name, id);
        if let Some(prefix) = prefix {
            self.patterns.insert(prefix, id);
            for (seq, frame, time_ms) in seed {
                self.push(id, seq, &frame, time_ms);
            }
        }
        id
    }

    /// A new pattern's history: the newest events (at most a ring's count limit) kept by
    /// the topics starting with `prefix`, in sequence order and each once, and the floor
    /// below which it knows nothing: what those rings and removed topics forgot, and what
    /// did not fit. Walks the table's topics twice (their floors, then their entries from
    /// the newest), or not at all past [`SEED_SCAN_TOPICS_MAX`]; gives up past
    /// [`SEED_SCAN_ENTRIES_MAX`] entries.
    fn seed(&self, prefix: &str) -> (Seq, Vec<(Seq, Frame, u64)>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if self.table.len() > SEED_SCAN_TOPICS_MAX {
            return (self.head_seq, Vec::new());
        }
        let under = || {
            self.table
                .iter()
                .filter(|(_, t)| pattern_prefix(&t.name).is_none() && t.name.starts_with(prefix))
        };
        let mut floor = under()
            .map(|(_, t)| t.ring.evicted_max())
            .fold(self.forgotten_max, Seq::max);
        // The newest `events` entries above the floor: a min-heap of (seq, topic, index).
        let keep = self.limits.events.max(1);
        let mut heap: BinaryHeap<Reverse<(Seq, TopicId, usize)>> = BinaryHeap::new();
        let mut looked_at = 0;
        for (id, topic) in under() {
            for index in (0..topic.ring.len()).rev() {
                let Some(entry) = topic.ring.get(index) else {
                    break;
                };
                looked_at += 1;
                if looked_at > SEED_SCAN_ENTRIES_MAX {
                    return (self.head_seq, Vec::new());
                }
                if entry.seq <= floor {
                    break; // Older entries of this ring are older still.
                }
                if heap.len() >= keep && heap.peek().is_some_and(|m| entry.seq <= m.0 .0) {
                    // It does not fit, nor do the older ones: the pattern never holds them.
                    floor = floor.max(entry.seq);
                    break;
                }
                heap.push(Reverse((entry.seq, id, index)));
                if heap.len() > keep {
                    if let Some(Reverse((dropped, _, _))) = heap.pop() {
                        floor = floor.max(dropped);
                    }
                }
            }
        }
        let mut picked: Vec<(Seq, TopicId, usize)> = heap
            .into_iter()
            .map(|Reverse(key)| key)
            .filter(|&(seq, _, _)| seq > floor)
            .collect();
        picked.sort_unstable();
        picked.dedup_by_key(|&mut (seq, _, _)| seq);
        let seed = picked
            .into_iter()
            .filter_map(|(_, id, index)| {
                let entry = self.table.get(id)?.ring.get(index)?;
                Some((entry.seq, entry.frame.clone(), entry.time_ms))
            })
            .collect();
        (floor, seed)
    }

    /// Appends an event published at time 0 (no time to live applies to it): for tests and
    /// benches that do not look at times.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn append(&mut self, seq: Seq, names: &[Box<str>], frame: &Frame) {
        self.append_at(seq, names, frame, 0);
    }

    /// Appends an event published at `time_ms` (Unix ms) to each of its topics (creating
    /// them as needed), marks them dirty, then enforces the per-topic and total history
    /// limits. With a time to live, each of those topics first drops what expired by the
    /// event's publish time: expiry costs O(1) per event, on the topics already touched.
    pub(crate) fn append_at(&mut self, seq: Seq, names: &[Box<str>], frame: &Frame, time_ms: u64) {
        debug_assert!(seq > self.head_seq);
        self.head_seq = seq;
        for name in names {
            let id = self.intern(name);
            self.push(id, seq, frame, time_ms);
        }
        if !self.patterns.is_empty() {
            let mut matched = std::mem::take(&mut self.matched);
            for name in names {
                self.patterns.matching(name, |id| matched.push(id));
            }
            for &id in &matched {
                // An event under one pattern through two of its topics is kept once.
                if self.table[id].ring.newest_seq() != Some(seq) {
                    self.push(id, seq, frame, time_ms);
                }
            }
            matched.clear();
            self.matched = matched;
        }
        self.enforce_total();
        self.compact_order();
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    /// Appends one event to topic `id` (after dropping what expired by its time), marks the
    /// topic dirty and keeps the per-topic limits and the budget's books.
    fn push(&mut self, id: TopicId, seq: Seq, frame: &Frame, time_ms: u64) {
        if let Some(cutoff) = self.cutoff(time_ms) {
            self.expire_topic(id, cutoff);
        }
        let topic = &mut self.table[id];
        topic.ring.push(seq, frame.clone(), time_ms);
        let freed_count_before = topic.ring.len();
        let freed_bytes = topic.ring.trim(self.limits.events, self.limits.bytes);
        let evicted = freed_count_before - topic.ring.len();
        if !topic.dirty {
            topic.dirty = true;
            self.dirty.push(id);
        }
        self.entries_live = self.entries_live + 1 - evicted;
        self.charged_bytes += frame.len() + ENTRY_OVERHEAD_BYTES;
        self.charged_bytes -= freed_bytes + evicted * ENTRY_OVERHEAD_BYTES;
        self.order.push_back((id, seq));
    }

    /// With a time to live, the newest publish time that has expired at `now_ms`.
    fn cutoff(&self, now_ms: u64) -> Option<u64> {
        let ttl = self.limits.ttl_ms?;
        now_ms.checked_sub(ttl)
    }

    /// Drops from `names`' rings what has expired at `now_ms` (Unix ms), before a resume
    /// reads them: expired events are neither replayed nor kept, and a resume across them
    /// gets the gap event. Lazy: only the topics a subscription names are looked at, and
    /// each expired entry once.
    pub(crate) fn expire(&mut self, names: &[String], now_ms: u64) {
        let Some(cutoff) = self.cutoff(now_ms) else {
            return;
        };
        for name in names {
            if let Some(id) = self.find(name) {
                self.expire_topic(id, cutoff);
                self.remove_if_unused(id);
            }
        }
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    /// Creates the wildcard patterns among `names` that do not exist yet, each with the
    /// history its topics keep, so a resume or replay reads them before the stream opens.
    pub(crate) fn gather_patterns(&mut self, names: &[String]) {
        for name in names {
            if pattern_prefix(name).is_some() {
                self.intern(name);
            }
        }
        self.enforce_total();
    }

    /// Removes the patterns among `names` that gathered nothing and have no subscribers:
    /// a subscription that never opens (its fetch failed, its client left) leaves none
    /// behind. One with history stays, and goes like any topic's history.
    pub(crate) fn drop_unused_patterns(&mut self, names: &[String]) {
        for name in names {
            if let (Some(_), Some(id)) = (pattern_prefix(name), self.find(name)) {
                self.remove_if_unused(id);
            }
        }
    }

    /// Evicts topic `id`'s entries published at or before `cutoff_ms`, keeping the budget's
    /// books (the global order queue skips them lazily, as it does per-topic evictions).
    fn expire_topic(&mut self, id: TopicId, cutoff_ms: u64) {
        let Some(topic) = self.table.get_mut(id) else {
            return;
        };
        let (count, freed) = topic.ring.expire(cutoff_ms);
        self.entries_live -= count;
        self.charged_bytes -= freed + count * ENTRY_OVERHEAD_BYTES;
    }

    /// Where a replay from `since_ms` (Unix ms) starts on this loop's rings of `names`:
    /// the cursor just before the oldest kept event of theirs published at or after it, or
    /// the newest event appended when none is. Publish times never decrease in sequence
    /// order, so every event after that cursor was published at or after `since_ms`.
    pub(crate) fn cursor_since(&self, names: &[String], since_ms: u64) -> Seq {
        names
            .iter()
            .filter_map(|name| self.get(self.find(name)?)?.ring.first_since(since_ms))
            .min()
            .map_or(self.head_seq, |first| first - 1)
    }

    /// Evicts the globally oldest entries until the total budget holds.
    fn enforce_total(&mut self) {
        while self.charged_bytes > self.limits.total_bytes {
            let Some((id, seq)) = self.order.pop_front() else {
                break;
            };
            let Some(topic) = self.table.get_mut(id) else {
                continue;
            };
            if topic.ring.oldest_seq() != Some(seq) {
                continue; // Already evicted by the topic's own limits.
            }
            let freed = topic.ring.evict_oldest().unwrap_or(0);
            self.entries_live -= 1;
            self.charged_bytes -= freed + ENTRY_OVERHEAD_BYTES;
            self.remove_if_unused(id);
        }
    }

    /// Drops queue entries for already-evicted history once they outnumber live ones, so
    /// the queue stays within twice the kept entries (amortised O(1) per append).
    fn compact_order(&mut self) {
        if self.order.len() <= 2 * self.entries_live + 64 {
            return;
        }
        let table = &self.table;
        self.order.retain(|&(id, seq)| {
            table
                .get(id)
                .and_then(|t| t.ring.oldest_seq())
                .is_some_and(|oldest| seq >= oldest)
        });
    }

    fn remove_if_unused(&mut self, id: TopicId) {
        let Some(topic) = self.table.get(id) else {
            return;
        };
        if !topic.ring.is_empty() || !topic.subscribers.is_empty() || topic.dirty {
            return;
        }
        let topic = self.table.remove(id);
        match pattern_prefix(&topic.name) {
            // A pattern's entries are its topics' too, whose rings account for them.
            Some(prefix) => self.patterns.remove(prefix),
            None => self.forgotten_max = self.forgotten_max.max(topic.ring.evicted_max()),
        }
        self.charged_bytes -= topic_charge(&topic.name);
        self.by_name.remove(&topic.name);
    }

    /// Adds a subscriber to a topic (creating it) and returns the topic's id and the
    /// subscriber's position in its list.
    pub(crate) fn subscribe(&mut self, name: &str, subscriber: SubscriberRef) -> (TopicId, u32) {
        let id = self.intern(name);
        let topic = &mut self.table[id];
        if topic.subscribers.is_empty() {
            self.charged_bytes -= topic_charge(&topic.name);
        }
        let subscribers = &mut topic.subscribers;
        subscribers.push(subscriber);
        // Subscriber counts are bounded by the loop's connections, far below u32::MAX.
        let position = (subscribers.len() - 1) as u32;
        // A new pattern's gathered history is charged like appended events; the topic is
        // subscribed now, so the budget's evictions cannot remove it.
        self.enforce_total();
        (id, position)
    }

    /// Removes the subscriber at `position` of topic `id`. Returns the subscriber that was
    /// moved into that position, whose stored position the caller must update.
    pub(crate) fn unsubscribe(&mut self, id: TopicId, position: u32) -> Option<SubscriberRef> {
        let topic = self.table.get_mut(id)?;
        let position = position as usize;
        if position >= topic.subscribers.len() {
            debug_assert!(false, "subscriber position out of range");
            return None;
        }
        topic.subscribers.swap_remove(position);
        let moved = topic.subscribers.get(position).copied();
        if topic.subscribers.is_empty() {
            self.charged_bytes += topic_charge(&topic.name);
            self.remove_if_unused(id);
            self.enforce_total();
        }
        moved
    }

    /// Takes the list of topics that received events, clearing their marks. Topics left
    /// unused by the last eviction are removed here.
    pub(crate) fn take_dirty(&mut self, into: &mut Vec<TopicId>) {
        into.clear();
        std::mem::swap(into, &mut self.dirty);
        for &id in into.iter() {
            if let Some(topic) = self.table.get_mut(id) {
                topic.dirty = false;
            }
        }
    }

    /// Removes dirty-listed topics that turned out unused (called after fan-out).
    pub(crate) fn sweep(&mut self, ids: &[TopicId]) {
        for &id in ids {
            self.remove_if_unused(id);
        }
    }

    /// The newest sequence number the history of topic `name` keeps at `now_ms` (Unix
    /// ms), if any: an event past its time to live is not kept, even before a reader
    /// evicts it (expiry is lazy).
    pub(crate) fn newest_seq(&self, name: &str, now_ms: u64) -> Option<Seq> {
        let (seq, time_ms) = self.get(self.find(name)?)?.ring.newest()?;
        let expired = self.cutoff(now_ms).is_some_and(|cutoff| time_ms <= cutoff);
        (!expired).then_some(seq)
    }

    /// The name of a topic.
    #[cfg(test)]
    pub(crate) fn name(&self, id: TopicId) -> Option<&str> {
        self.table.get(id).map(|t| &*t.name)
    }

    /// Bytes charged against the total budget.
    #[cfg(test)]
    pub(crate) fn charged_bytes(&self) -> usize {
        self.charged_bytes
    }

    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        debug_assert_eq!(self.by_name.len(), self.table.len());
        let live: usize = self.table.iter().map(|(_, t)| t.ring.len()).sum();
        debug_assert_eq!(live, self.entries_live);
        let charged: usize = self
            .table
            .iter()
            .map(|(_, t)| {
                let entries = t.ring.bytes() + t.ring.len() * ENTRY_OVERHEAD_BYTES;
                let topic = if t.subscribers.is_empty() {
                    topic_charge(&t.name)
                } else {
                    0
                };
                entries + topic
            })
            .sum();
        debug_assert_eq!(charged, self.charged_bytes, "charged bytes drifted");
        debug_assert!(self.order.len() >= self.entries_live);
        debug_assert!(
            self.charged_bytes <= self.limits.total_bytes || self.order.is_empty(),
            "over the total budget with evictable history left"
        );
    }
}

#[cfg(test)]
mod tests;
