//! Event payloads: `seq=<n> ts=<unix nanos> ` padded with `x` to the requested size, on
//! one line, so a subscriber can tell order, loss, duplicates and latency from the data
//! alone, whatever ids the server assigns.
//!
//! Sans-io. The publisher stamps `ts` right before the write; the worker subtracts it from
//! its own clock on receipt (same machine, same clock).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Smallest useful payload: the header with a 20-digit timestamp and a 10-digit sequence.
pub const PAYLOAD_BYTES_MIN: usize = 40;

/// Writes the payload for event `seq` stamped `ts_nanos`, `bytes` long (or just the header
/// when `bytes` is smaller than it), into `out`, replacing its contents.
pub fn encode(out: &mut Vec<u8>, seq: u64, ts_nanos: u64, bytes: usize) {
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "seq={seq} ts={ts_nanos} ");
    if out.len() < bytes {
        out.resize(bytes, b'x');
    }
}

/// The wall clock in nanoseconds since the Unix epoch, as payloads carry it in `ts` (0 if
/// the clock is before the epoch).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The sequence number and timestamp of a payload, or `None` for foreign data.
pub fn decode(data: &[u8]) -> Option<(u64, u64)> {
    let rest = data.strip_prefix(b"seq=")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let seq = number(&rest[..space])?;
    let rest = rest[space + 1..].strip_prefix(b"ts=")?;
    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    Some((seq, number(&rest[..end])?))
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let mut out = Vec::new();
        encode(&mut out, 17, 1_700_000_000_123_456_789, 64);
        assert_eq!(out.len(), 64);
        assert!(out.starts_with(b"seq=17 ts=1700000000123456789 xxx"));
        assert_eq!(decode(&out), Some((17, 1_700_000_000_123_456_789)));
        encode(&mut out, u64::MAX, u64::MAX, 1);
        assert_eq!(decode(&out), Some((u64::MAX, u64::MAX)));
    }

    #[test]
    fn foreign_data() {
        for data in [
            &b""[..],
            b"hello",
            b"seq=1",
            b"seq=x ts=1 ",
            b"seq=1 ts=",
            b"seq=1 tx=2",
        ] {
            assert_eq!(decode(data), None, "{data:?}");
        }
        assert_eq!(decode(b"seq=1 ts=2"), Some((1, 2)));
    }
}
