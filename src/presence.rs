//! Presence: how many streams are subscribed to a topic right now, on this node and (with
//! the Redis bus) across the cluster, for `GET /topics` and [`crate::Handle::topics`].
//!
//! Counts live in [`Presence`], a table shared by every loop, sharded by topic name. A
//! loop changes it only when a stream opens or closes (one shard lock per topic of the
//! stream), never per event: the fan-out path does not touch it. The newest id of a topic
//! is not kept here: every loop's history already holds it (every loop receives every
//! event), so a loop answers it from its own topic table, and a library handle asks a loop
//! through a small query queue ([`Query`]), which also carries `Handle::replay`'s questions.
//!
//! With the Redis bus, a background thread (`bus/redis/presence.rs`) writes this node's
//! counts to Redis every second and sums the other nodes' counts into
//! [`Presence::set_remote`]; a topic's count is this node's live count plus that sum,
//! which is at most one refresh (plus the other node's own refresh) old.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crossbeam_channel::Sender;

/// Shards of the local count table: enough that loops opening streams at once rarely
/// take the same lock, few enough that a snapshot is cheap.
const SHARDS: usize = 16;

/// Queries a loop answers per turn; the rest wait for the next turn.
pub(crate) const QUERIES_PER_TURN_MAX: usize = 16;
/// Queries waiting for one loop; a handle that finds the queue full is told to retry.
pub(crate) const QUERY_QUEUE_MAX: usize = 64;

/// One topic's presence, as `GET /topics` and [`crate::Handle::topics`] report it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicPresence {
    /// Streams subscribed to the topic now: on this node, or, with the Redis bus, on
    /// every live node (other nodes' counts are up to about two seconds old).
    pub subscribers: u64,
    /// The id of the newest event of the topic this node's history holds; `None` when it
    /// holds none (never published, or evicted from the history).
    pub last_id: Option<String>,
}

/// Open streams per topic, in one shard.
type Counts = HashMap<Box<str>, u64>;

/// Locks `mutex`; a panic while it was held cannot leave a counter half-written.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Subscriber counts per topic: this node's, kept live by the loops, and the other
/// nodes' sums, replaced whole by the Redis presence thread.
pub(crate) struct Presence {
    /// Open streams per topic on this node; a topic leaves its shard at zero, so the
    /// table holds at most connections times topics per subscription entries.
    shards: Box<[Mutex<Counts>]>,
    /// The sums of every other live node's counts (empty with the embedded bus).
    remote: RwLock<Arc<Counts>>,
}

impl Presence {
    /// An empty table.
    pub(crate) fn new() -> Self {
        Presence {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            remote: RwLock::new(Arc::new(HashMap::new())),
        }
    }

    fn shard(&self, name: &str) -> MutexGuard<'_, Counts> {
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        lock(&self.shards[hasher.finish() as usize % SHARDS])
    }

    /// A stream subscribed to `name` opened on this node. Wildcards (`prefix*`) are not
    /// counted: presence is per exact topic.
    pub(crate) fn join(&self, name: &str) {
        if name.ends_with('*') {
            return;
        }
        let mut shard = self.shard(name);
        match shard.get_mut(name) {
            Some(count) => *count += 1,
            None => {
                shard.insert(name.into(), 1);
            }
        }
    }

    /// A stream subscribed to `name` closed on this node.
    pub(crate) fn leave(&self, name: &str) {
        if name.ends_with('*') {
            return;
        }
        let mut shard = self.shard(name);
        if let Some(count) = shard.get_mut(name) {
            *count -= 1;
            if *count == 0 {
                shard.remove(name);
            }
        } else {
            debug_assert!(false, "a stream left a topic it never joined");
        }
    }

    /// Streams subscribed to `name` on this node.
    pub(crate) fn local(&self, name: &str) -> u64 {
        self.shard(name).get(name).copied().unwrap_or(0)
    }

    /// Streams subscribed to `name`: this node's, plus the other nodes' last reported.
    pub(crate) fn count(&self, name: &str) -> u64 {
        let remote = self
            .remote
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
            .unwrap_or(0);
        self.local(name) + remote
    }

    /// Every topic with subscribers on this node and its count, for the Redis writer.
    pub(crate) fn snapshot(&self) -> Vec<(Box<str>, u64)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            all.extend(shard.iter().map(|(name, &count)| (name.clone(), count)));
        }
        all
    }

    /// Replaces the other nodes' sums.
    pub(crate) fn set_remote(&self, sums: HashMap<Box<str>, u64>) {
        *self.remote.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(sums);
    }
}

/// A library handle's question to a loop, answered from the loop's history.
pub(crate) enum Query {
    /// The newest ids of `names` (`Handle::topics`): one id (or `None`) per name, in order.
    Newest {
        /// The topics, validated.
        names: Vec<String>,
        /// Where the answer goes; the handle waits on the other end with a timeout.
        reply: Sender<Vec<Option<String>>>,
    },
    /// What the history keeps of some topics from a starting point (`Handle::replay`).
    Replay(crate::replay::ReplayQuery),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_joins_and_leaves_and_add_remote_sums() {
        let presence = Presence::new();
        presence.join("a");
        presence.join("a");
        presence.join("b");
        assert_eq!((presence.count("a"), presence.count("b")), (2, 1));
        presence.leave("a");
        presence.leave("b");
        assert_eq!((presence.count("a"), presence.count("b")), (1, 0));
        assert_eq!(presence.snapshot(), vec![("a".into(), 1)]);
        presence.set_remote(HashMap::from([("a".into(), 5), ("c".into(), 2)]));
        assert_eq!((presence.count("a"), presence.count("c")), (6, 2));
        assert_eq!(presence.local("a"), 1);
        presence.set_remote(HashMap::new());
        assert_eq!(presence.count("c"), 0);
    }
}
