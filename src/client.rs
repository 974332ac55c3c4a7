//! Who a client is: its address (from the configured forwarding header, `X-Forwarded-For`
//! or `Forwarded`, only when the peer is a trusted proxy), the key it is counted under
//! (IPv6 by network, IPv4-mapped as IPv4), and how many connections each key holds, shared
//! by all loops for the per-address limit. No I/O here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::ForwardedHeader;
use crate::http::head::trim_ows;

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
        // An IPv4-mapped block is the IPv4 block, as mapped peers are IPv4 peers.
        if let IpAddr::V6(v6) = network {
            if let (Some(v4), Some(prefix)) = (v6.to_ipv4_mapped(), prefix.checked_sub(96)) {
                return Ok(Cidr {
                    network: IpAddr::V4(v4),
                    prefix,
                });
            }
        }
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

/// One hop of a forwarding header, read right to left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    /// An address the hop to its right wrote down.
    Addr(IpAddr),
    /// Empty, unreadable, malformed, `unknown` or obfuscated: nobody can be named past it.
    Opaque,
}

/// Hops of one header line kept for the walk, the rightmost ones. A line with more ends
/// the walk (at the nearest trusted hop) past the ones kept: no proxy chain is this long.
const HOPS_PER_LINE_MAX: usize = 16;

/// The rightmost hops of one line, in a ring so a long line costs no copying.
struct LineHops {
    hops: [Hop; HOPS_PER_LINE_MAX],
    /// Hops seen; past `HOPS_PER_LINE_MAX` the earliest were overwritten.
    seen: usize,
}

impl LineHops {
    fn new() -> Self {
        LineHops {
            hops: [Hop::Opaque; HOPS_PER_LINE_MAX],
            seen: 0,
        }
    }

    fn push(&mut self, hop: Hop) {
        self.hops[self.seen % HOPS_PER_LINE_MAX] = hop;
        self.seen += 1;
    }

    /// The kept hops from the right, then `Opaque` if earlier ones were dropped.
    fn right_to_left(&self) -> impl Iterator<Item = Hop> + '_ {
        let kept = self.seen.min(HOPS_PER_LINE_MAX);
        let dropped = self.seen > HOPS_PER_LINE_MAX;
        (1..=kept)
            .map(move |back| self.hops[(self.seen - back) % HOPS_PER_LINE_MAX])
            .chain(dropped.then_some(Hop::Opaque))
    }
}

/// Splits at the first `separator` outside a quoted string (RFC 9110 `quoted-string`, with
/// `\` escaping the next byte). An unterminated quote runs to the end.
fn split_unquoted(bytes: &[u8], separator: u8) -> (&[u8], Option<&[u8]>) {
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b if b == separator && !quoted => return (&bytes[..i], Some(&bytes[i + 1..])),
            _ => {}
        }
        i += 1;
    }
    (bytes, None)
}

/// Reads a node: `IPv4`, `IPv4:port`, `[IPv6]`, `[IPv6]:port` or a bare IPv6 address.
/// `unknown`, obfuscated identifiers (`_hidden`) and anything else are opaque.
fn parse_node(node: &[u8]) -> Hop {
    let Ok(text) = std::str::from_utf8(node) else {
        return Hop::Opaque;
    };
    let port_ok = |port: &str| {
        (!port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()))
            || (port.len() > 1
                && port.starts_with('_')
                && port
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'))
    };
    if let Some(rest) = text.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Hop::Opaque;
        };
        let port_fine = after.is_empty() || after.strip_prefix(':').is_some_and(port_ok);
        return match v6.parse::<std::net::Ipv6Addr>() {
            Ok(addr) if port_fine => Hop::Addr(IpAddr::V6(addr)),
            _ => Hop::Opaque,
        };
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Hop::Addr(addr);
    }
    match text.split_once(':') {
        Some((v4, port)) if port_ok(port) => v4
            .parse::<std::net::Ipv4Addr>()
            .map_or(Hop::Opaque, |addr| Hop::Addr(IpAddr::V4(addr))),
        _ => Hop::Opaque,
    }
}

/// One `X-Forwarded-For` element: a node, never quoted.
fn x_forwarded_for_hop(element: &[u8]) -> Hop {
    parse_node(trim_ows(element))
}

/// Whether `bytes` is an RFC 9110 token.
fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// One `Forwarded` element (`pair *( ";" pair )`): the node of its one `for=` parameter,
/// a token or a quoted string without escapes. No `for`, two of them, or a malformed
/// parameter make it opaque.
fn forwarded_hop(element: &[u8]) -> Hop {
    let mut node = None;
    let mut rest = Some(element);
    while let Some(bytes) = rest {
        let (pair, next) = split_unquoted(bytes, b';');
        rest = next;
        let pair = trim_ows(pair);
        if pair.is_empty() {
            continue;
        }
        let Some(equals) = pair.iter().position(|&b| b == b'=') else {
            return Hop::Opaque;
        };
        let (name, value) = (&pair[..equals], &pair[equals + 1..]);
        let value = match value {
            [b'"', inner @ .., b'"'] if !inner.contains(&b'"') && !inner.contains(&b'\\') => inner,
            token if is_token(token) => token,
            _ => return Hop::Opaque,
        };
        if !is_token(name) {
            return Hop::Opaque;
        }
        if name.eq_ignore_ascii_case(b"for") {
            if node.is_some() {
                return Hop::Opaque;
            }
            node = Some(value);
        }
    }
    node.map_or(Hop::Opaque, parse_node)
}

/// The hops of one header line, the rightmost kept.
fn line_hops(header: ForwardedHeader, line: &[u8]) -> LineHops {
    let mut hops = LineHops::new();
    match header {
        // No quoting in X-Forwarded-For: every comma separates.
        ForwardedHeader::XForwardedFor => {
            for element in line.split(|&b| b == b',') {
                hops.push(x_forwarded_for_hop(element));
            }
        }
        ForwardedHeader::Forwarded => {
            let mut rest = Some(line);
            while let Some(bytes) = rest {
                let (element, next) = split_unquoted(bytes, b',');
                rest = next;
                hops.push(forwarded_hop(element));
            }
        }
    }
    hops
}

/// The client's address. Only a peer inside `trusted` may name it, in `header` only (the
/// other forwarding header is never read): the lines of that header, in order, form one
/// list whose hops are walked from the right, skipping trusted proxies, and the first
/// untrusted hop is the client. An empty, unreadable (not UTF-8), malformed, `unknown` or
/// obfuscated hop ends the walk at the last trusted hop, so a client can never name an
/// address it does not own.
pub(crate) fn client_addr(
    peer: IpAddr,
    trusted: &[Cidr],
    header: ForwardedHeader,
    lines: &[&[u8]],
) -> IpAddr {
    let is_trusted = |addr: IpAddr| trusted.iter().any(|cidr| cidr.contains(addr));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for line in lines.iter().rev() {
        for hop in line_hops(header, line).right_to_left() {
            let Hop::Addr(addr) = hop else {
                return client;
            };
            client = addr;
            if !is_trusted(addr) {
                return client;
            }
        }
    }
    client
}

/// The address `addr` is counted under for `max_connections_per_ip`: an IPv4-mapped IPv6
/// address as its IPv4 address, any other IPv6 address as its network of `ipv6_prefix`
/// bits (one host can use every address of its /64).
pub(crate) fn client_key(addr: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(ipv6_prefix.min(128)))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
    }
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
    fn mapped_blocks_are_ipv4_blocks() {
        let block = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(block, Cidr::parse("10.0.0.0/8").unwrap());
        assert!(block.contains(ip("10.9.9.9")));
        assert!(block.contains(ip("::ffff:10.9.9.9")));
        assert!(!block.contains(ip("11.0.0.1")));
    }

    /// Runs `client_addr` for a trusted `peer` (127.0.0.1, 10/8 and fd00::/8 are trusted)
    /// with the lines of `header`, and compares with `expected`.
    fn check(peer: &str, header: ForwardedHeader, lines: &[&[u8]], expected: &str) {
        let trusted = [
            Cidr::parse("127.0.0.1").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("fd00::/8").unwrap(),
        ];
        assert_eq!(
            client_addr(ip(peer), &trusted, header, lines),
            ip(expected),
            "peer {peer} {header:?} {:?}",
            lines
                .iter()
                .map(|l| String::from_utf8_lossy(l))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right_past_trusted_hops() {
        use ForwardedHeader::XForwardedFor as Xff;
        check("203.0.113.9", Xff, &[b"1.2.3.4"], "203.0.113.9");
        check("127.0.0.1", Xff, &[], "127.0.0.1");
        check("127.0.0.1", Xff, &[b"1.2.3.4"], "1.2.3.4");
        check(
            "127.0.0.1",
            Xff,
            &[b"6.6.6.6, 1.2.3.4, 10.0.0.7"],
            "1.2.3.4",
        );
        check("127.0.0.1", Xff, &[b"\t1.2.3.4 "], "1.2.3.4");
        check("127.0.0.1", Xff, &[b"1.2.3.4:5678"], "1.2.3.4");
        check("127.0.0.1", Xff, &[b"[2001:db8::1]:443"], "2001:db8::1");
        check("127.0.0.1", Xff, &[b"[2001:db8::1]"], "2001:db8::1");
        check("127.0.0.1", Xff, &[b"2001:db8::1"], "2001:db8::1");
        // Lines combine in order; the last is the nearest proxy's.
        check("127.0.0.1", Xff, &[b"1.1.1.1", b"2.2.2.2"], "2.2.2.2");
        check("127.0.0.1", Xff, &[b"1.1.1.1", b"10.0.0.7"], "1.1.1.1");
        check(
            "127.0.0.1",
            Xff,
            &[b"1.1.1.1", b"10.0.0.8, 10.0.0.7"],
            "1.1.1.1",
        );
        // An empty, unreadable or malformed hop stops at the nearest trusted hop.
        for stop in [
            &b"garbage"[..],
            b"",
            b" ",
            b"\xff",
            b"1.2.3.4\xc2\xa0",
            b"\"1.2.3.4\"",
            b"1.2.3.4:",
            b"1.2.3.4:http",
            b"1.2.3.4:123456",
            b"[2001:db8::1",
            b"[1.2.3.4]",
            b"unknown",
            b"_hidden",
            b"fe80::1%eth0",
        ] {
            let mut line = stop.to_vec();
            line.extend_from_slice(b", 10.0.0.7");
            check("127.0.0.1", Xff, &[&line], "10.0.0.7");
            check("127.0.0.1", Xff, &[b"6.6.6.6", &line], "10.0.0.7");
            check("127.0.0.1", Xff, &[stop], "127.0.0.1");
        }
        check("127.0.0.1", Xff, &[b"6.6.6.6,,10.0.0.7"], "10.0.0.7");
        check(
            "127.0.0.1",
            Xff,
            &[b"6.6.6.6, \xff", b"10.0.0.7"],
            "10.0.0.7",
        );
        // What stock nginx makes of `X-Forwarded-For: \xff` from 1.2.3.4.
        check("127.0.0.1", Xff, &[b"\xff, 1.2.3.4"], "1.2.3.4");
        // Forwarded is not read when X-Forwarded-For is the header (nor the reverse).
        check("127.0.0.1", ForwardedHeader::Forwarded, &[], "127.0.0.1");
    }

    #[test]
    fn forwarded_elements_name_the_client_by_their_for_node() {
        use ForwardedHeader::Forwarded as Fwd;
        check("127.0.0.1", Fwd, &[b"for=192.0.2.60"], "192.0.2.60");
        check(
            "127.0.0.1",
            Fwd,
            &[b"for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\""],
            "2001:db8::1",
        );
        check("127.0.0.1", Fwd, &[b"For=\"192.0.2.60:80\""], "192.0.2.60");
        check(
            "127.0.0.1",
            Fwd,
            &[b"proto=https; for=192.0.2.60 ;by=10.0.0.7"],
            "192.0.2.60",
        );
        check("127.0.0.1", Fwd, &[b"for=192.0.2.60;"], "192.0.2.60");
        check(
            "127.0.0.1",
            Fwd,
            &[b"for=\"[2001:db8::1]:_port\""],
            "2001:db8::1",
        );
        check("127.0.0.1", Fwd, &[b"for=1.1.1.1, for=10.0.0.7"], "1.1.1.1");
        check(
            "127.0.0.1",
            Fwd,
            &[b"for=1.1.1.1", b"for=10.0.0.7"],
            "1.1.1.1",
        );
        check(
            "127.0.0.1",
            Fwd,
            &[b"for=1.1.1.1", b"for=2.2.2.2"],
            "2.2.2.2",
        );
        // A quoted comma or semicolon does not split.
        check(
            "127.0.0.1",
            Fwd,
            &[b"for=6.6.6.6;x=\"a, for=1.1.1.1\", for=10.0.0.7"],
            "6.6.6.6",
        );
        for stop in [
            &b"for=unknown"[..],
            b"for=_hidden",
            b"for=\"_hidden:_port\"",
            b"proto=https",
            b"",
            b"for=1.1.1.1;for=2.2.2.2",
            b"for=\"1.1.1.1\"x",
            b"for=\"1.1.1\\.1\"",
            b"for=1.1.1.1 x",
            b"for=[2001:db8::1]",
            b"for=\"\xff\"",
            b"f\xffr=1.1.1.1",
            b"for",
        ] {
            let mut line = stop.to_vec();
            line.extend_from_slice(b", for=10.0.0.7");
            check("127.0.0.1", Fwd, &[&line], "10.0.0.7");
            check("127.0.0.1", Fwd, &[stop], "127.0.0.1");
        }
        // An unterminated quote swallows the rest of its line: the nearest proxy's view
        // is lost, so the walk stops at the peer.
        check("127.0.0.1", Fwd, &[b"for=\", for=1.2.3.4"], "127.0.0.1");
        // X-Forwarded-For is never read with Forwarded chosen.
        check(
            "127.0.0.1",
            ForwardedHeader::XForwardedFor,
            &[b"for=1.2.3.4"],
            "127.0.0.1",
        );
    }

    #[test]
    fn a_line_with_more_hops_than_kept_stops_past_them() {
        let mut line = b"6.6.6.6".to_vec();
        for _ in 0..HOPS_PER_LINE_MAX {
            line.extend_from_slice(b", 10.0.0.7");
        }
        check(
            "127.0.0.1",
            ForwardedHeader::XForwardedFor,
            &[&line],
            "10.0.0.7",
        );
        let mut line = b"6.6.6.6".to_vec();
        for _ in 1..HOPS_PER_LINE_MAX {
            line.extend_from_slice(b", 10.0.0.7");
        }
        check(
            "127.0.0.1",
            ForwardedHeader::XForwardedFor,
            &[&line],
            "6.6.6.6",
        );
    }

    #[test]
    fn keys_group_ipv6_by_prefix_and_map_ipv4() {
        let key = |addr: &str, prefix: u8| client_key(ip(addr), prefix);
        assert_eq!(key("192.0.2.1", 64), ip("192.0.2.1"));
        assert_eq!(key("::ffff:192.0.2.1", 64), ip("192.0.2.1"));
        assert_eq!(key("::ffff:192.0.2.1", 8), ip("192.0.2.1"));
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 64), ip("2001:db8:1:2::"));
        assert_eq!(key("2001:db8:1:2:ffff::1", 64), ip("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:3::1", 64), key("2001:db8:1:2::1", 64));
        assert_eq!(key("2001:db8:1:3::1", 48), key("2001:db8:1:2::1", 48));
        assert_eq!(key("2001:db8::1", 128), ip("2001:db8::1"));
        assert_ne!(key("2001:db8::1", 128), key("2001:db8::2", 128));
        assert_eq!(key("2001:db8::1", 1), ip("::"));
        assert_eq!(key("::1", 64), ip("::"));
        let table = ClientTable::new();
        assert!(table.acquire(key("2001:db8::1", 64), 1));
        assert!(!table.acquire(key("2001:db8::2", 64), 1));
        assert!(table.acquire(key("::ffff:192.0.2.1", 64), 1));
        assert!(!table.acquire(key("192.0.2.1", 64), 1));
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
