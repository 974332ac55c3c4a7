//! The stream entry codec: stream ids to and from sequence numbers, Redis replies to lists
//! of entries, and an entry's fields to an event checked like a publish and encoded once.
//! Shared by the reader, the backfiller and the writer; no I/O here.

use redis::Value;

use super::Core;
use crate::bus::Published;
use crate::event::{Event, PublishError};
use crate::history::ring::Seq;
use crate::publish;
use crate::sse::{encode_event, EventFields};

/// The sequence number of stream id `ms-n`. Every id has one: a `Seq` is two ids' halves.
pub(super) fn pack(ms: u64, n: u64) -> Seq {
    Seq::from(ms) << 64 | Seq::from(n)
}

/// The stream id of a sequence number.
pub(super) fn format_id(seq: Seq) -> String {
    format!("{}-{}", seq >> 64, seq & Seq::from(u64::MAX))
}

/// Parses a full stream id `ms-n`.
pub(super) fn parse_id(text: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(text).ok()?;
    let (ms, n) = text.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(n) {
        return None;
    }
    Some((ms.parse().ok()?, n.parse().ok()?))
}

/// A stream entry id, as `(ms, n)`.
pub(super) type RawId = (u64, u64);

/// Decodes a list of stream entries `[[id, [field, value, ...]], ...]` (in id order);
/// items that are not entries are dropped.
pub(super) fn entries(reply: Value) -> Vec<(RawId, Vec<Value>)> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            continue;
        };
        if pair.len() != 2 {
            continue;
        }
        let fields = match pair.pop() {
            Some(Value::Array(fields)) => fields,
            _ => Vec::new(),
        };
        if let Some(id) = pair.pop().as_ref().and_then(text).and_then(parse_id) {
            out.push((id, fields));
        }
    }
    out
}

/// A reply value's bytes, when it is a string.
pub(super) fn text(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// An entry's fields as an event, checked like a publish body.
pub(super) fn decode(
    fields: &[Value],
    data_bytes_max: usize,
    topics_max: usize,
) -> Result<Event, &'static str> {
    let mut event = Event {
        topics: Vec::new(),
        name: None,
        data: String::new(),
        retry_ms: None,
    };
    let (mut has_data, mut has_retry) = (false, false);
    for pair in fields.chunks(2) {
        let [field, value] = pair else {
            return Err("odd number of field values");
        };
        let (Some(field), Some(value)) = (text(field), text(value)) else {
            return Err("a field or value is not a string");
        };
        let value = std::str::from_utf8(value).map_err(|_| "a value is not UTF-8")?;
        match field {
            b"topic" => {
                // Distinct names only, and no more than a publish may name: a long
                // repetitive value must not become millions of strings.
                for name in value.split(',') {
                    if event.topics.iter().any(|t| t == name) {
                        continue;
                    }
                    if event.topics.len() == topics_max {
                        return Err(PublishError::TooManyTopics.reason());
                    }
                    event.topics.push(name.to_owned());
                }
            }
            b"data" if has_data => return Err("data given twice"),
            b"data" => {
                if value.len() > data_bytes_max {
                    return Err("data larger than max_publish_bytes");
                }
                event.data = value.to_owned();
                has_data = true;
            }
            b"event" if event.name.is_some() => return Err("event given twice"),
            b"event" => event.name = Some(value.to_owned()),
            b"retry" if has_retry => return Err("retry given twice"),
            b"retry" => {
                event.retry_ms =
                    Some(publish::parse_retry(value).ok_or(PublishError::InvalidRetry.reason())?);
                has_retry = true;
            }
            _ => {} // Applications may keep their own fields next to ours.
        }
    }
    Ok(event)
}

/// The entry as a frame for the loops, or why every node skips it.
/// `wanted` sees the topics before the frame is encoded: `None` when it declines.
pub(super) fn to_published(
    core: &Core,
    id: RawId,
    fields: &[Value],
    wanted: impl Fn(&[Box<str>]) -> bool,
) -> Result<Option<Published>, &'static str> {
    let seq = pack(id.0, id.1);
    let event = decode(fields, core.data_bytes_max, core.limits.topics_max)?;
    let outgoing = publish::prepare(&event, &core.limits).map_err(PublishError::reason)?;
    if !wanted(&outgoing.topics) {
        return Ok(None);
    }
    let id = format_id(seq);
    let frame = encode_event(&EventFields {
        id: &id,
        name: outgoing.name,
        data: outgoing.data,
        retry_ms: outgoing.retry_ms,
    });
    Ok(Some(Published {
        seq,
        topics: outgoing.topics.into_boxed_slice(),
        frame,
        // Ids Redis generates are its clock in ms: the publish time, at no cost.
        time_ms: (seq >> 64) as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn ids_pack_in_order_and_round_trip() {
        let a = pack(1_764_230_400_123, 0);
        let b = pack(1_764_230_400_123, 1);
        let c = pack(1_764_230_400_124, 0);
        assert!(a < b && b < c);
        assert_eq!(format_id(b), "1764230400123-1");
        assert_eq!(parse_id(b"1764230400123-1"), Some((1_764_230_400_123, 1)));
        // Every id Redis accepts maps, in order, and back to itself.
        let ids = [
            (0, 1),
            (1_764_230_400_123, u64::MAX),
            (1_764_230_400_124, 0),
            (1_733_000_000_000_000, 0),
            (1_733_000_000_000_000, u64::MAX - 1),
            (u64::MAX, u64::MAX),
        ];
        for pair in ids.windows(2) {
            assert!(pack(pair[0].0, pair[0].1) < pack(pair[1].0, pair[1].1));
        }
        for (ms, n) in ids {
            let text = format_id(pack(ms, n));
            assert_eq!(parse_id(text.as_bytes()), Some((ms, n)), "{text}");
        }
        assert_eq!(
            format_id(Seq::MAX),
            "18446744073709551615-18446744073709551615"
        );
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "1-2-3",
            "a-1",
            "1-+1",
            "99999999999999999999999-0",
        ] {
            assert_eq!(parse_id(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn entries_decode_like_publishes() {
        let fields = [
            bulk("topic"),
            bulk("a,b"),
            bulk("topic"),
            bulk("c"),
            bulk("event"),
            bulk("note"),
            bulk("data"),
            bulk("x\ny"),
            bulk("retry"),
            bulk("250"),
            bulk("app_field"),
            bulk("ignored"),
        ];
        let event = decode(&fields, 100, 4).unwrap();
        assert_eq!(event.topics, ["a", "b", "c"]);
        assert_eq!(event.name.as_deref(), Some("note"));
        assert_eq!(event.data, "x\ny");
        assert_eq!(event.retry_ms, Some(250));

        let twice = [
            bulk("topic"),
            bulk("a"),
            bulk("data"),
            bulk("1"),
            bulk("data"),
            bulk("2"),
        ];
        assert_eq!(decode(&twice, 100, 4).unwrap_err(), "data given twice");
        let odd = [bulk("topic"), bulk("a"), bulk("data")];
        assert!(decode(&odd, 100, 4).is_err());
        let big = [bulk("topic"), bulk("a"), bulk("data"), bulk("0123456789")];
        assert!(decode(&big, 5, 4).is_err());
        let binary = [
            bulk("topic"),
            bulk("a"),
            bulk("data"),
            Value::BulkString(vec![0xff]),
        ];
        assert!(decode(&binary, 100, 4).is_err());
        let retry = [bulk("topic"), bulk("a"), bulk("retry"), bulk("soon")];
        assert!(decode(&retry, 100, 4).is_err());
        let many = "a,".repeat(100_000) + "b";
        let repeated = [bulk("topic"), bulk(&many), bulk("data"), bulk("x")];
        assert_eq!(decode(&repeated, 100, 4).unwrap().topics, ["a", "b"]);
        let wide = [bulk("topic"), bulk("a,b,c,d,e"), bulk("data"), bulk("x")];
        assert_eq!(
            decode(&wide, 100, 4).unwrap_err(),
            PublishError::TooManyTopics.reason()
        );
    }

    #[test]
    fn entry_lists_keep_order_and_drop_bad_ids() {
        let entry =
            |id: &str| Value::Array(vec![bulk(id), Value::Array(vec![bulk("topic"), bulk("a")])]);
        let reply = Value::Array(vec![
            entry("5-0"),
            entry("nonsense"),
            entry("5-1"),
            entry("9999999999999999-0"),
        ]);
        let ids: Vec<RawId> = entries(reply).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [(5, 0), (5, 1), (9_999_999_999_999_999, 0)]);
        assert!(entries(Value::Nil).is_empty());
    }
}
