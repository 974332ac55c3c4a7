//! Finding the primary through Redis Sentinel ([`Sentinels`]): at every (re)connection a
//! thread asks the sentinels in turn for the address of the primary named
//! `redis_master_name` (`SENTINEL GET-MASTER-ADDR-BY-NAME`), connects to it and checks with
//! `ROLE` that it says it is a primary. A failover therefore needs nothing of its own: the
//! connections to the old primary fail (it died, or Sentinel's reconfiguration closed its
//! clients), the threads reconnect under their backoff, and the sentinels name the new
//! primary once they have promoted it. Until then the reader counts as disconnected, so
//! `/readyz` answers 503 and publishes are refused with 503.
//!
//! Not the `redis` crate's sync `Sentinel`: it opens its connections to sentinels and nodes
//! without a timeout, so one frozen sentinel would hold a bus thread forever, and it stops
//! at the first candidate that fails its check instead of asking the next sentinel. Here
//! every connection has the bus's timeouts, and each sentinel is asked in turn.

use std::time::Duration;

use redis::Value;

use super::link::{open, Endpoint};

/// Sentinels asked for the primary, and how to reach the data nodes they name.
pub(super) struct Sentinels {
    /// `(host, port)` of each sentinel, asked in this order.
    sentinels: Vec<(String, u16)>,
    /// The primary's name in Sentinel.
    master_name: String,
    /// Sentinels are spoken to over the same transport as the nodes (TLS or not), without
    /// the nodes' credentials or database.
    sentinel_endpoint: Endpoint,
    /// How a connection to the primary is made once its address is known.
    node_endpoint: Endpoint,
}

impl Sentinels {
    /// Sentinels at `addresses` (`host:port`, checked by `Config::validate`) for the primary
    /// named `master_name`, whose nodes are reached as `endpoint` says.
    pub(super) fn new(addresses: &[String], master_name: &str, endpoint: Endpoint) -> Self {
        let sentinels = host_ports(addresses);
        let sentinel_endpoint = Endpoint {
            redis: redis::RedisConnectionInfo::default(),
            ..endpoint.clone()
        };
        Sentinels {
            sentinels,
            master_name: master_name.to_owned(),
            sentinel_endpoint,
            node_endpoint: endpoint,
        }
    }

    /// A connection to the primary, with the bus's timeouts (`extra_read` added to the read
    /// timeout). The error is the last sentinel's, or the named node's.
    pub(super) fn connect_primary(
        &self,
        extra_read: Duration,
    ) -> redis::RedisResult<(redis::Connection, NodeAddr)> {
        let mut last = None;
        for (host, port) in &self.sentinels {
            match self.ask(host, *port, extra_read) {
                Ok(found) => return Ok(found),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(no_sentinel))
    }

    /// The primary's address as the first sentinel that knows it says, without connecting
    /// to it: how the watcher thread notices that the sentinels promoted another node while the one it
    /// is connected to still accepts writes (a manual failover, a partition), before that
    /// node is demoted and its writes since the promotion are discarded.
    pub(super) fn primary_addr(&self) -> redis::RedisResult<NodeAddr> {
        let mut last = None;
        for (host, port) in &self.sentinels {
            match self.addr_from(host, *port) {
                Ok(addr) => return Ok(addr),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(no_sentinel))
    }

    /// What the sentinel at `host:port` names as the primary.
    fn addr_from(&self, host: &str, port: u16) -> redis::RedisResult<NodeAddr> {
        let client = self.sentinel_endpoint.client(host, port)?;
        let mut sentinel = open(&client, Duration::ZERO)?;
        let reply: Value = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master_name)
            .query(&mut sentinel)?;
        master_addr(&reply).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::MasterNameNotFoundBySentinel,
                "sentinel does not know the primary",
                format!("{host}:{port} for {:?}", self.master_name),
            ))
        })
    }

    /// Asks one sentinel for the primary and connects to the node it names, if that node
    /// says it is a primary (a sentinel that has not yet seen a failover names the old one,
    /// which may be a replica by now).
    fn ask(
        &self,
        host: &str,
        port: u16,
        extra_read: Duration,
    ) -> redis::RedisResult<(redis::Connection, NodeAddr)> {
        let (node_host, node_port) = self.addr_from(host, port)?;
        let mut conn = open(
            &self.node_endpoint.client(&node_host, node_port)?,
            extra_read,
        )?;
        if !is_primary(&mut conn)? {
            return Err(redis::RedisError::from((
                redis::ErrorKind::MasterDown,
                "the node sentinel named is not a primary (failover under way)",
                format!("{node_host}:{node_port}"),
            )));
        }
        Ok((conn, (node_host, node_port)))
    }
}

/// A data node's `(host, port)` as Sentinel (or a Redis Cluster) names it.
pub(super) type NodeAddr = (String, u16);

/// The `(host, port)` of each `host:port` or `[v6]:port` in `addresses`; malformed ones
/// (which `Config::validate` refuses) are left out.
pub(super) fn host_ports(addresses: &[String]) -> Vec<NodeAddr> {
    addresses
        .iter()
        .filter_map(|address| parse_host_port(address))
        .collect()
}

/// `host:port`, `[v6]:port` or (as a `MOVED` reply gives it) `v6:port`; `None` without a
/// host or with port 0.
pub(super) fn parse_host_port(address: &str) -> Option<NodeAddr> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((
        host.to_owned(),
        port.parse().ok().filter(|port| *port != 0)?,
    ))
}

fn no_sentinel() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no sentinel given"))
}

/// Whether the node `conn` talks to says, through `ROLE`, that it is a primary.
pub(super) fn is_primary(conn: &mut redis::Connection) -> redis::RedisResult<bool> {
    let role: Value = redis::cmd("ROLE").query(conn)?;
    Ok(match role {
        Value::Array(fields) => matches!(
            fields.first(),
            Some(Value::BulkString(name)) if name == b"master"
        ),
        _ => false,
    })
}

/// The `(host, port)` in a `SENTINEL GET-MASTER-ADDR-BY-NAME` reply; `None` for nil (an
/// unknown name) or anything malformed.
fn master_addr(reply: &Value) -> Option<(String, u16)> {
    let Value::Array(fields) = reply else {
        return None;
    };
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    match fields.as_slice() {
        [host, port] => Some((text(host)?, text(port)?.parse().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_addresses_are_read_strictly() {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let reply = Value::Array(vec![bulk("127.0.0.1"), bulk("6380")]);
        assert_eq!(master_addr(&reply), Some(("127.0.0.1".to_owned(), 6380)));
        for bad in [
            Value::Nil,
            Value::Array(vec![bulk("127.0.0.1")]),
            Value::Array(vec![bulk("127.0.0.1"), bulk("port")]),
            Value::Array(vec![bulk("127.0.0.1"), bulk("70000")]),
            Value::Array(vec![bulk("a"), bulk("1"), bulk("2")]),
        ] {
            assert_eq!(master_addr(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sentinel_addresses_keep_their_hosts() {
        let endpoint = Endpoint {
            tls: false,
            certs: None,
            redis: redis::RedisConnectionInfo {
                db: 3,
                password: Some("secret".to_owned()),
                ..Default::default()
            },
        };
        let sentinels = Sentinels::new(
            &["127.0.0.1:26379".to_owned(), "[::1]:26380".to_owned()],
            "main",
            endpoint,
        );
        assert_eq!(
            sentinels.sentinels,
            [("127.0.0.1".to_owned(), 26379), ("::1".to_owned(), 26380)]
        );
        assert_eq!(sentinels.sentinel_endpoint.redis.password, None);
        assert_eq!(sentinels.node_endpoint.redis.db, 3);
    }
}
