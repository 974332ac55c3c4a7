//! Redis Cluster hosting ([`ClusterNodes`]): the stream key lives in one hash slot, so every
//! bus connection goes straight to the primary that owns that slot, and the keys herald
//! keeps beside the stream (the presence hashes) are named into the same slot with a hash
//! tag ([`presence_prefix`]).
//!
//! At every (re)connection a thread goes to the node the cluster last named for the slot
//! (a `MOVED` reply's address, or the owner found before); without one, or when it cannot be
//! reached, it asks the seed nodes (`redis_cluster_nodes`) in turn for `CLUSTER SLOTS` and
//! connects to the slot's primary. A command on a node that no longer owns the slot is
//! answered `MOVED slot host:port`: the thread records that address
//! (`ClusterNodes::redirected`) and reconnects there. During the last moments of a slot
//! migration (the stream key already moved, the slot not yet handed over) the old owner
//! answers `ASK`: that is treated as a brief outage (a publish gets `503`, the reader retries after its
//! last id under its backoff), not followed, since each command would need its own
//! `ASKING` on another connection and the state lasts only until the migration's final
//! `CLUSTER SETSLOT ... NODE`.
//!
//! Not the `redis` crate's `ClusterClient`: it retries a command after a connection error
//! (an `XADD` that may have been stored would then be stored twice), routes `WAIT` (which
//! has no key) to a random node, and has no `MULTI`/`EXEC` pipelines or the
//! send-then-read-replies-one-by-one the writer relies on. One connection per thread to the
//! one node that matters keeps all of that, and the code paths of a single Redis.

use std::sync::Mutex;
use std::time::Duration;

use redis::Value;

use super::link::{open, Endpoint};
use super::sentinel::{host_ports, parse_host_port, NodeAddr};

/// Hash slots in a Redis Cluster.
const SLOTS: u16 = 16_384;

/// The seed nodes of a Redis Cluster, the slot of the stream, and the node last known to
/// own it.
pub(super) struct ClusterNodes {
    /// `(host, port)` of each seed, asked in this order.
    seeds: Vec<NodeAddr>,
    /// How connections to the nodes are made (TLS, credentials).
    endpoint: Endpoint,
    /// The stream's hash slot.
    slot: u16,
    /// Where the next connection goes first: the owner found last, or the address of the
    /// last `MOVED` reply. Shared by the bus's threads, so one redirect serves all.
    owner: Mutex<Option<NodeAddr>>,
}

impl ClusterNodes {
    /// Seeds at `addresses` (`host:port`, checked by `Config::validate`) of a cluster whose
    /// nodes are reached as `endpoint` says, for the stream key `stream`.
    pub(super) fn new(addresses: &[String], stream: &str, endpoint: Endpoint) -> Self {
        ClusterNodes {
            seeds: host_ports(addresses),
            endpoint,
            slot: key_slot(stream.as_bytes()),
            owner: Mutex::new(None),
        }
    }

    /// The stream's hash slot.
    pub(super) fn slot(&self) -> u16 {
        self.slot
    }

    /// A connection to the node owning the stream's slot, with the bus's timeouts
    /// (`extra_read` added to the read timeout), and that node's address. The node last
    /// named is tried first; then each seed is asked for `CLUSTER SLOTS`. The error is the
    /// last seed's.
    pub(super) fn connect_owner(
        &self,
        extra_read: Duration,
    ) -> redis::RedisResult<(redis::Connection, NodeAddr)> {
        let known = super::lock(&self.owner).clone();
        if let Some(addr) = known {
            match self.open(&addr, extra_read) {
                Ok(conn) => return Ok((conn, addr)),
                // Gone (a failed primary, a stale redirect): the seeds know better.
                Err(_) => self.forget(&addr),
            }
        }
        let mut last = None;
        for (host, port) in &self.seeds {
            let found = self
                .ask(host, *port)
                .and_then(|addr| Ok((self.open(&addr, extra_read)?, addr)));
            match found {
                Ok((conn, addr)) => {
                    *super::lock(&self.owner) = Some(addr.clone());
                    return Ok((conn, addr));
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "no redis_cluster_nodes given",
            ))
        }))
    }

    /// Opens a connection to the node at `addr`.
    fn open(&self, addr: &NodeAddr, extra_read: Duration) -> redis::RedisResult<redis::Connection> {
        open(&self.endpoint.client(&addr.0, addr.1)?, extra_read)
    }

    /// Forgets `addr` as the owner (if it still is the one recorded).
    fn forget(&self, addr: &NodeAddr) {
        let mut owner = super::lock(&self.owner);
        if owner.as_ref() == Some(addr) {
            *owner = None;
        }
    }

    /// The primary the seed at `host:port` names for the stream's slot.
    fn ask(&self, host: &str, port: u16) -> redis::RedisResult<NodeAddr> {
        let mut seed = self.open(&(host.to_owned(), port), Duration::ZERO)?;
        let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut seed)?;
        slot_owner(&reply, self.slot, host).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::ClusterDown,
                "the seed names no primary for the stream's hash slot",
                format!("{host}:{port}, slot {}", self.slot),
            ))
        })
    }

    /// Called with every error a bus thread gets: a `MOVED` for the stream's slot records the
    /// node it names, so the next connection of every thread goes there; any other error
    /// that says the node does not serve the slot (`CLUSTERDOWN`, a connection that failed)
    /// leaves the record alone, and the next connection finds out.
    pub(super) fn redirected(&self, error: &redis::RedisError) {
        if error.kind() != redis::ErrorKind::Moved {
            return;
        }
        let Some((addr, slot)) = error.redirect_node() else {
            return;
        };
        let Some(addr) = parse_host_port(addr) else {
            return;
        };
        if slot != self.slot {
            return;
        }
        let mut owner = super::lock(&self.owner);
        if owner.as_ref() != Some(&addr) {
            log::info!(
                "redis cluster: hash slot {slot} of the stream moved to {}:{}; reconnecting there",
                addr.0,
                addr.1
            );
            *owner = Some(addr);
        }
    }
}

/// The error a reply in a pipeline carries when the node no longer serves the stream's slot
/// (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`): the connection must be left, whatever
/// the other replies said.
pub(super) fn not_served(reply: &Value) -> Option<redis::RedisError> {
    let Value::ServerError(error) = reply else {
        return None;
    };
    match error.code() {
        "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" => Some(error.clone().into()),
        _ => None,
    }
}

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole key when it has
/// none, modulo 16,384, as Redis Cluster computes it.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS
}

/// The part of `key` Redis Cluster hashes instead of the whole key: what lies between the
/// first `{` and the first `}` after it, when that is not empty.
pub(crate) fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = key[open + 1..].iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

/// What the keys herald keeps beside the stream `stream` start with, so that in a Redis
/// Cluster they hash to the stream's slot: the stream name itself when it carries a hash
/// tag (`{herald}` → `{herald}:presence:...`); otherwise the name wrapped in braces
/// (`herald` → `{herald}:presence:...`, whose tag `herald` hashes like the stream key).
/// `None` when neither works: a name without a hash tag that holds a `}` (the wrapped tag
/// would end there); `Config::validate` refuses such a name in cluster mode.
pub(crate) fn presence_prefix(stream: &str) -> Option<String> {
    if hash_tag(stream.as_bytes()).is_some() {
        return Some(stream.to_owned());
    }
    (!stream.contains('}')).then(|| format!("{{{stream}}}"))
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), bit by bit: the bus hashes one
/// key at start, so a table would buy nothing.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = match crc & 0x8000 {
                0 => crc << 1,
                _ => (crc << 1) ^ 0x1021,
            };
        }
    }
    crc
}

/// The primary serving `slot` in a `CLUSTER SLOTS` reply (`[[start, end, [host, port, id,
/// ...], replica, ...], ...]`); an empty or nil host means the node that answered
/// (`seed_host`), a `?` host an unknown one. `None` when no range covers the slot or the
/// reply is malformed.
fn slot_owner(reply: &Value, slot: u16, seed_host: &str) -> Option<NodeAddr> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let int = |value: &Value| match value {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    ranges.iter().find_map(|range| {
        let Value::Array(fields) = range else {
            return None;
        };
        let [start, end, primary, ..] = fields.as_slice() else {
            return None;
        };
        if !(int(start)?..=int(end)?).contains(&slot) {
            return None;
        }
        let Value::Array(node) = primary else {
            return None;
        };
        let host = match node.first()? {
            Value::Nil => seed_host.to_owned(),
            Value::BulkString(bytes) if bytes.is_empty() => seed_host.to_owned(),
            Value::BulkString(bytes) if bytes != b"?" => std::str::from_utf8(bytes).ok()?.into(),
            _ => return None,
        };
        let port = int(node.get(1)?).filter(|port| *port != 0)?;
        Some((host, port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
    #[test]
    fn slots_are_computed_as_redis_does() {
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12_182);
        assert_eq!(key_slot(b"herald"), key_slot(b"{herald}"));
        assert_eq!(key_slot(b"{herald}"), key_slot(b"{herald}:presence:n1"));
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty first tag is no tag: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(hash_tag(b"a{b"), None);
    }

    #[test]
    fn presence_keys_share_the_stream_slot() {
        for (stream, prefix) in [
            ("{herald}", Some("{herald}")),
            ("app:{herald}:events", Some("app:{herald}:events")),
            ("herald", Some("{herald}")),
            ("a{b", Some("{a{b}")),
            ("a{}b", None),
            ("x}y", None),
        ] {
            let got = presence_prefix(stream);
            assert_eq!(got.as_deref(), prefix, "{stream}");
            if let Some(prefix) = got {
                let key = format!("{prefix}:presence:node");
                assert_eq!(
                    key_slot(key.as_bytes()),
                    key_slot(stream.as_bytes()),
                    "{key}"
                );
            }
        }
    }

    #[test]
    fn the_slot_owner_is_read_from_cluster_slots() {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let node = |host: Value, port: i64| Value::Array(vec![host, Value::Int(port), bulk("id")]);
        let range = |start: i64, end: i64, primary: Value| {
            Value::Array(vec![Value::Int(start), Value::Int(end), primary])
        };
        let reply = Value::Array(vec![
            range(0, 5460, node(bulk("127.0.0.1"), 7001)),
            range(5461, 10922, node(bulk(""), 7002)),
            range(10923, 16383, node(Value::Nil, 7003)),
        ]);
        let owner = |slot| slot_owner(&reply, slot, "seed");
        assert_eq!(owner(0), Some(("127.0.0.1".to_owned(), 7001)));
        assert_eq!(owner(5461), Some(("seed".to_owned(), 7002)));
        assert_eq!(owner(16383), Some(("seed".to_owned(), 7003)));
        let unknown = Value::Array(vec![range(0, 16383, node(bulk("?"), 7001))]);
        assert_eq!(slot_owner(&unknown, 1, "seed"), None);
        let partial = Value::Array(vec![range(0, 100, node(bulk("h"), 7001))]);
        assert_eq!(slot_owner(&partial, 101, "seed"), None);
        assert_eq!(slot_owner(&Value::Nil, 1, "seed"), None);
    }

    #[test]
    fn moved_addresses_are_read_strictly() {
        assert_eq!(
            parse_host_port("127.0.0.1:7001"),
            Some(("127.0.0.1".into(), 7001))
        );
        assert_eq!(parse_host_port("::1:7001"), Some(("::1".into(), 7001)));
        for bad in ["", ":7001", "host", "host:0", "host:x"] {
            assert_eq!(parse_host_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_a_moved_for_the_stream_slot_is_recorded() {
        let nodes = ClusterNodes::new(
            &["127.0.0.1:7000".to_owned()],
            "{herald}",
            Endpoint {
                tls: false,
                certs: None,
                redis: redis::RedisConnectionInfo::default(),
            },
        );
        let slot = nodes.slot();
        let moved =
            |detail: String| redis::RedisError::from((redis::ErrorKind::Moved, "moved", detail));
        nodes.redirected(&moved(format!("{} 127.0.0.1:7009", slot + 1)));
        assert_eq!(*super::super::lock(&nodes.owner), None);
        nodes.redirected(&moved(format!("{slot} 127.0.0.1:7002")));
        assert_eq!(
            *super::super::lock(&nodes.owner),
            Some(("127.0.0.1".to_owned(), 7002))
        );
        for (line, served) in [
            (format!("-ASK {slot} 127.0.0.1:7002\r\n"), false),
            (format!("-MOVED {slot} 127.0.0.1:7002\r\n"), false),
            ("-CLUSTERDOWN The cluster is down\r\n".to_owned(), false),
            ("-ERR wrong number of arguments\r\n".to_owned(), true),
            ("+OK\r\n".to_owned(), true),
        ] {
            let reply = redis::parse_redis_value(line.as_bytes()).unwrap();
            assert_eq!(not_served(&reply).is_none(), served, "{line:?}");
        }
    }
}
