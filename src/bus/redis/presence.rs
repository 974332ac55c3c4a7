//! The presence thread: makes subscriber counts cluster-wide. Every [`REFRESH`] it
//! replaces this node's hash `<prefix>:presence:<node>` (topic → open streams here) with a
//! time-to-live of [`NODE_TTL`], lists the node in the set `<prefix>:presence`, then sums
//! every other listed node's hash into the local [`Presence`] table's remote part (a set
//! rather than a `SCAN`, which would walk the whole keyspace every second). A node that dies stops being counted once its hash
//! expires (at most `NODE_TTL` plus one refresh); one whose bus closes deletes its hash
//! within a refresh, unless the process exits first. `<prefix>` is the stream's name; in a
//! Redis Cluster, one that hashes to the stream's slot (`cluster::presence_prefix`), so the
//! hashes live on the node the bus's connections go to.
//!
//! Everything here runs on its own thread and connection: loops never wait on it, and a
//! `/topics` answer reads the last sums (at most about one refresh old for other nodes;
//! this node's own count is always live).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::Value;

use super::link::RedisConn;
use super::Core;
use crate::presence::Presence;

/// How often a node writes its counts and reads the others'.
pub(super) const REFRESH: Duration = Duration::from_millis(1_000);
/// Lifetime of a node's hash: a few refreshes, so one slow round does not drop a live
/// node, while a dead one stops counting within seconds.
pub(super) const NODE_TTL: Duration = Duration::from_millis(5_000);
/// Field-value pairs per `HSET`: bounds one command's size.
const HSET_PAIRS_MAX: usize = 512;
/// Node hashes summed per refresh; more (nodes that died faster than the set is cleaned,
/// say) are left for a later refresh, so one refresh's work stays bounded.
const NODES_MAX: usize = 1_024;
/// Distinct topics kept in the remote sums: bounds memory whatever the hashes hold.
const REMOTE_TOPICS_MAX: usize = 1_000_000;

/// The key of one node's hash.
fn node_key(prefix: &str, node: &str) -> String {
    format!("{prefix}:presence:{node}")
}

/// A node id unique enough among the nodes of one cluster: the process's hash keys
/// (random per process) with the process id.
pub(super) fn node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{:016x}-{}", random, std::process::id())
}

/// The presence thread's body: runs until the bus closes, then deletes this node's hash.
pub(super) fn run_presence(core: &Core, presence: &Presence, node: &str) {
    let key = node_key(&core.key_prefix, node);
    let nodes = format!("{}:presence", core.key_prefix);
    let mut connection = RedisConn::new("presence");
    let mut last_read = Instant::now();
    while !core.closed.load(Ordering::Acquire) {
        let started = Instant::now();
        if let Some(conn) = connection.get(core) {
            let result = write_own(conn, &nodes, node, &key, presence)
                .and_then(|()| read_others(conn, &nodes, &core.key_prefix, node));
            match result {
                Ok(sums) => {
                    presence.set_remote(sums);
                    last_read = Instant::now();
                }
                Err(error) => connection.lost(core, &error),
            }
        }
        // Sums older than a node's lifetime may count nodes that are gone: count none.
        if last_read.elapsed() > NODE_TTL {
            presence.set_remote(HashMap::new());
        }
        std::thread::sleep(REFRESH.saturating_sub(started.elapsed()));
    }
    if let Some(conn) = connection.get(core) {
        let _ = redis::pipe()
            .del(&key)
            .srem(&nodes, node)
            .query::<Value>(conn);
    }
}

/// Replaces this node's hash with its current counts and sets its lifetime, and lists
/// the node in the set readers find the nodes in; atomically.
fn write_own(
    conn: &mut redis::Connection,
    nodes: &str,
    node: &str,
    key: &str,
    presence: &Presence,
) -> redis::RedisResult<()> {
    let counts = presence.snapshot();
    let mut pipe = redis::pipe();
    pipe.atomic().del(key).ignore();
    for chunk in counts.chunks(HSET_PAIRS_MAX) {
        let mut hset = redis::cmd("HSET");
        hset.arg(key);
        for (topic, count) in chunk {
            hset.arg(&**topic).arg(*count);
        }
        pipe.add_command(hset).ignore();
    }
    if !counts.is_empty() {
        pipe.pexpire(key, NODE_TTL.as_millis() as i64).ignore();
        pipe.sadd(nodes, node).ignore();
    }
    pipe.query::<()>(conn)
}

/// Sums the counts in every listed node's hash but this node's. A node whose hash is gone
/// (expired: the node died; or deleted: it counts nothing) leaves the set; a live one
/// lists itself again at its next refresh.
fn read_others(
    conn: &mut redis::Connection,
    nodes_key: &str,
    prefix: &str,
    own: &str,
) -> redis::RedisResult<HashMap<Box<str>, u64>> {
    let mut nodes: Vec<String> = redis::cmd("SRANDMEMBER")
        .arg(nodes_key)
        .arg(NODES_MAX)
        .query(conn)?;
    nodes.retain(|node| node != own);
    let mut pipe = redis::pipe();
    for node in &nodes {
        pipe.cmd("HGETALL").arg(node_key(prefix, node));
    }
    let hashes: Vec<HashMap<String, String>> = pipe.query(conn)?;
    let mut sums: HashMap<Box<str>, u64> = HashMap::new();
    let mut gone = Vec::new();
    for (node, fields) in nodes.iter().zip(hashes) {
        if fields.is_empty() {
            gone.push(node);
        }
        for (topic, count) in fields {
            let Ok(count) = count.parse::<u64>() else {
                continue; // Not written by herald: ignored like a malformed entry.
            };
            if let Some(sum) = sums.get_mut(topic.as_str()) {
                *sum = sum.saturating_add(count);
            } else if sums.len() < REMOTE_TOPICS_MAX {
                sums.insert(topic.into_boxed_str(), count);
            }
        }
    }
    if !gone.is_empty() {
        redis::cmd("SREM")
            .arg(nodes_key)
            .arg(gone)
            .query::<()>(conn)?;
    }
    Ok(sums)
}
