//! Who a client is: its address (from `X-Forwarded-For` or `Forwarded` only when the peer
//! is a trusted proxy), and how many connections each address holds, shared by all loops
//! for the per-address limit. No I/O here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// An address block such as `10.0.0.0/8` or `::1/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare address (a block of one).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an address or CIDR block"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(|| format!("{text:?} has a prefix outside 0..={bits}"))?,
            None => bits,
        };
        Ok(Cidr { network, prefix })
    }

    /// Whether `addr` is inside the block. IPv4-mapped IPv6 addresses match IPv4 blocks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Parses one hop of `X-Forwarded-For` or a `for=` value of `Forwarded`: an address with
/// an optional port, IPv6 optionally in brackets, optionally quoted.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(addr) = hop.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (addr, _port) = hop.rsplit_once(':')?;
    addr.parse().ok()
}

/// The client's address. Only a peer inside `trusted` may name it: the hops of
/// `X-Forwarded-For` (else `Forwarded: for=`) are walked from the right, skipping trusted
/// proxies, and the first untrusted hop is the client. Anything unparseable stops the walk
/// at the last trusted hop, so a client can never name an address it does not own.
pub(crate) fn client_addr(
    peer: IpAddr,
    trusted: &[Cidr],
    x_forwarded_for: Option<&str>,
    forwarded: Option<&str>,
) -> IpAddr {
    let is_trusted = |addr: IpAddr| trusted.iter().any(|cidr| cidr.contains(addr));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = match (x_forwarded_for, forwarded) {
        (Some(xff), _) => xff.split(',').collect(),
        (None, Some(forwarded)) => forwarded
            .split(',')
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim().eq_ignore_ascii_case("for").then_some(value)
                })
            })
            .collect(),
        (None, None) => return peer,
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(addr) = parse_hop(hop) else {
            break;
        };
        client = addr;
        if !is_trusted(addr) {
            break;
        }
    }
    client
}

/// Shards of the per-address table; a power of two so the shard is a mask of a hash.
const SHARDS: usize = 16;

/// Open connections per client address, across all loops. Entries exist only while an
/// address has connections, so the table is bounded by the connection limit.
pub(crate) struct ClientTable {
    shards: Vec<Mutex<HashMap<IpAddr, u32>>>,
}

impl ClientTable {
    /// An empty table.
    pub(crate) fn new() -> Self {
        ClientTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, addr: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let index = match addr {
            IpAddr::V4(v4) => u32::from(v4) as usize,
            IpAddr::V6(v6) => (u128::from(v6) >> 64) as usize ^ u128::from(v6) as usize,
        } % SHARDS;
        // Holders never panic while updating a count, so a poisoned shard is still sound.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Counts one more connection for `addr` unless it already holds `max`.
    pub(crate) fn acquire(&self, addr: IpAddr, max: usize) -> bool {
        let mut shard = self.shard(addr);
        let count = shard.entry(addr).or_insert(0);
        if *count as usize >= max {
            if *count == 0 {
                shard.remove(&addr);
            }
            return false;
        }
        *count += 1;
        true
    }

    /// Forgets one connection of `addr`.
    pub(crate) fn release(&self, addr: IpAddr) {
        let mut shard = self.shard(addr);
        if let Some(count) = shard.get_mut(&addr) {
            *count -= 1;
            if *count == 0 {
                shard.remove(&addr);
            }
        }
    }

    /// Connections counted for `addr`.
    #[cfg(test)]
    pub(crate) fn count(&self, addr: IpAddr) -> u32 {
        self.shard(addr).get(&addr).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidr_blocks() {
        let block = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(block.contains(ip("10.1.255.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(block.contains(ip("::ffff:10.1.0.9")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("banana").is_err());
    }

    #[test]
    fn forwarded_addresses_only_from_trusted_peers() {
        let trusted = [
            Cidr::parse("127.0.0.1").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ];
        let check = |peer: &str, xff: Option<&str>, fwd: Option<&str>, expected: &str| {
            assert_eq!(
                client_addr(ip(peer), &trusted, xff, fwd),
                ip(expected),
                "peer {peer} xff {xff:?} forwarded {fwd:?}"
            );
        };
        check("203.0.113.9", Some("1.2.3.4"), None, "203.0.113.9");
        check("127.0.0.1", Some("1.2.3.4"), None, "1.2.3.4");
        check(
            "127.0.0.1",
            Some("6.6.6.6, 1.2.3.4, 10.0.0.7"),
            None,
            "1.2.3.4",
        );
        check("127.0.0.1", Some("garbage, 10.0.0.7"), None, "10.0.0.7");
        check("127.0.0.1", Some("1.2.3.4:5678"), None, "1.2.3.4");
        check(
            "127.0.0.1",
            None,
            Some("for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\""),
            "2001:db8::1",
        );
        check("127.0.0.1", None, None, "127.0.0.1");
    }

    #[test]
    fn per_address_counts() {
        let table = ClientTable::new();
        let a = ip("192.0.2.1");
        assert!(table.acquire(a, 2));
        assert!(table.acquire(a, 2));
        assert!(!table.acquire(a, 2));
        table.release(a);
        assert!(table.acquire(a, 2));
        table.release(a);
        table.release(a);
        assert_eq!(table.count(a), 0);
        assert!(!table.acquire(ip("192.0.2.2"), 0));
        assert_eq!(table.count(ip("192.0.2.2")), 0);
    }
}
