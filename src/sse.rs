//! Server-Sent Events encoding: an event becomes one immutable [`Frame`] exactly once, and
//! every subscriber is sent the same bytes.
//!
//! Data is split on LF, CR and CRLF into one `data:` line each, so a spec-conforming
//! EventSource parser gets the original text back with every line break normalised to LF.
//! No I/O here.

use bytes::Bytes;

/// Encoded, shared SSE bytes (reference-counted; cloning never copies the payload).
pub(crate) type Frame = Bytes;

/// Longest event name, in bytes.
pub(crate) const EVENT_NAME_BYTES_MAX: usize = 64;

/// Checks an event name: 1..=64 bytes without CR, LF or NUL (CR and LF would end the
/// `event:` line early; NUL is legal in SSE but never what a publisher meant).
pub(crate) fn check_event_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > EVENT_NAME_BYTES_MAX {
        return Err("must be 1..=64 bytes");
    }
    if name.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err("must not contain CR, LF or NUL");
    }
    Ok(())
}

/// The parts of one event frame; `id` is the bus-assigned id.
pub(crate) struct EventFields<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub data: &'a str,
    pub retry_ms: Option<u32>,
}

/// Encodes an event. The caller has validated `name` with [`check_event_name`].
pub(crate) fn encode_event(fields: &EventFields<'_>) -> Frame {
    debug_assert!(fields.name.is_none_or(|n| check_event_name(n).is_ok()));
    let lines = data_lines(fields.data);
    let mut out = Vec::with_capacity(encoded_len(fields));
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(fields.id.as_bytes());
    out.push(b'\n');
    if let Some(name) = fields.name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    if let Some(retry_ms) = fields.retry_ms {
        out.extend_from_slice(format!("retry: {retry_ms}\n").as_bytes());
    }
    for line in lines {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    debug_assert_eq!(out.len(), encoded_len(fields));
    Bytes::from(out)
}

/// Exact size of [`encode_event`]'s output, computed without encoding (used for the size
/// check before a frame is built and for the capacity of its buffer).
pub(crate) fn encoded_len(fields: &EventFields<'_>) -> usize {
    let mut len = "id: \n".len() + fields.id.len();
    if let Some(name) = fields.name {
        len += "event: \n".len() + name.len();
    }
    if let Some(retry_ms) = fields.retry_ms {
        len += "retry: \n".len() + decimal_len(retry_ms);
    }
    for line in data_lines(fields.data) {
        len += "data: \n".len() + line.len();
    }
    len + 1
}

fn decimal_len(mut value: u32) -> usize {
    let mut len = 1;
    while value >= 10 {
        value /= 10;
        len += 1;
    }
    len
}

/// Splits on CRLF, CR and LF; an empty string is one empty line, and a trailing break
/// yields a trailing empty line (so `"a\n"` round-trips).
fn data_lines(data: &str) -> impl Iterator<Item = &str> {
    let bytes = data.as_bytes();
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let rest = &bytes[start..];
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(offset) => {
                let end = start + offset;
                let skip = if bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                // Line breaks are ASCII, so both slice bounds are char boundaries.
                let line = &data[start..end];
                start = end + skip;
                Some(line)
            }
            None => {
                done = true;
                Some(&data[start..])
            }
        }
    })
}

/// The `retry:` frame that opens every stream.
pub(crate) fn encode_retry(retry_ms: u32) -> Frame {
    Bytes::from(format!("retry: {retry_ms}\n\n"))
}

/// The frame that opens a stream, with the `retry:` hint and, for a client that sent no
/// Last-Event-ID, the `id:` of where its stream starts. A block with an `id:` and no `data:`
/// sets an EventSource's last event id without dispatching an event (WHATWG "dispatch the
/// event", step 1), so a client that reconnects before its first event resumes from the
/// point its first stream began instead of from whatever is newest by then.
pub(crate) fn encode_opening(retry_ms: u32, start_id: Option<&str>) -> Vec<u8> {
    match start_id {
        Some(id) => format!("retry: {retry_ms}\nid: {id}\n\n").into_bytes(),
        None => encode_retry(retry_ms).to_vec(),
    }
}

/// The frame that tells a resuming client its Last-Event-ID is older than the history (or
/// unknown). It carries no `id:` so the client's last id stays what it was.
pub(crate) fn encode_gap(event_name: &str, last_event_id: &str) -> Frame {
    let data = serde_json::json!({ "lastEventId": last_event_id }).to_string();
    let mut out = format!("event: {event_name}\n");
    // serde_json escapes control characters, so `data` is a single line.
    out.push_str("data: ");
    out.push_str(&data);
    out.push_str("\n\n");
    Bytes::from(out)
}

/// A frame that moves the client's last event id to `id` without an event: a block with
/// `id:` and no `data:` sets the id but dispatches nothing (WHATWG HTML, "dispatch the
/// event"), so a client told to come back resumes after `id`.
pub(crate) fn encode_id(id: &str) -> Frame {
    Bytes::from(format!("id: {id}\n\n"))
}

/// An event frame read back: the fields [`encode_event`] wrote, data lines joined with LF.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DecodedEvent {
    /// The `id:` line.
    pub id: String,
    /// The `event:` line, if any.
    pub name: Option<String>,
    /// The `data:` lines, joined with LF.
    pub data: String,
    /// The `retry:` line, if any.
    pub retry_ms: Option<u32>,
}

/// Reads back a frame [`encode_event`] wrote (what the history rings keep): its `id:`,
/// `event:`, `retry:` and `data:` lines, the data lines joined with LF, so the data is what
/// was published with every CR and CRLF line break as LF (what an EventSource sees).
/// `None` for bytes that are not such a frame (none is ever kept). Only herald's own
/// frames are read here, never input from the network.
pub(crate) fn decode_event(frame: &[u8]) -> Option<DecodedEvent> {
    let text = std::str::from_utf8(frame).ok()?;
    let body = text.strip_suffix("\n\n")?;
    let mut event = DecodedEvent {
        id: String::new(),
        name: None,
        data: String::new(),
        retry_ms: None,
    };
    let mut data_lines = 0usize;
    for line in body.split('\n') {
        if let Some(id) = line.strip_prefix("id: ") {
            event.id = id.to_owned();
        } else if let Some(name) = line.strip_prefix("event: ") {
            event.name = Some(name.to_owned());
        } else if let Some(retry) = line.strip_prefix("retry: ") {
            event.retry_ms = Some(retry.parse().ok()?);
        } else if let Some(data) = line.strip_prefix("data: ") {
            if data_lines > 0 {
                event.data.push('\n');
            }
            event.data.push_str(data);
            data_lines += 1;
        } else {
            return None;
        }
    }
    (data_lines > 0 && !event.id.is_empty()).then_some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(data: &str, name: Option<&str>, expected: &str) {
        let fields = EventFields {
            id: "7-1",
            name,
            data,
            retry_ms: None,
        };
        let frame = encode_event(&fields);
        assert_eq!(std::str::from_utf8(&frame).unwrap(), expected);
        assert_eq!(frame.len(), encoded_len(&fields));
    }

    #[test]
    fn frames() {
        check("hello", None, "id: 7-1\ndata: hello\n\n");
        check("", None, "id: 7-1\ndata: \n\n");
        check(
            "a\nb",
            Some("tick"),
            "id: 7-1\nevent: tick\ndata: a\ndata: b\n\n",
        );
        check("a\rb\r\nc", None, "id: 7-1\ndata: a\ndata: b\ndata: c\n\n");
        check("a\n", None, "id: 7-1\ndata: a\ndata: \n\n");
        check("\r\n\r\n", None, "id: 7-1\ndata: \ndata: \ndata: \n\n");
        check("\n\r", None, "id: 7-1\ndata: \ndata: \ndata: \n\n");
        check("é€😀", None, "id: 7-1\ndata: é€😀\n\n");
    }

    #[test]
    fn retry_field() {
        let fields = EventFields {
            id: "1-2",
            name: None,
            data: "x",
            retry_ms: Some(1500),
        };
        assert_eq!(
            &encode_event(&fields)[..],
            b"id: 1-2\nretry: 1500\ndata: x\n\n"
        );
        assert_eq!(encoded_len(&fields), encode_event(&fields).len());
    }

    #[test]
    fn gap_frame_is_one_event_without_id() {
        let frame = encode_gap("gap", "bad\nid\"");
        assert_eq!(
            std::str::from_utf8(&frame).unwrap(),
            "event: gap\ndata: {\"lastEventId\":\"bad\\nid\\\"\"}\n\n"
        );
    }

    #[test]
    fn event_names() {
        assert!(check_event_name("tick").is_ok());
        assert!(check_event_name("").is_err());
        assert!(check_event_name("a\rb").is_err());
        assert!(check_event_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn frames_decode_to_what_was_encoded() {
        for (data, name, retry_ms) in [
            ("hello", None, None),
            ("", Some("tick"), Some(1500)),
            ("a\nb\n", None, None),
            ("\n\n", Some("x: y"), None),
            ("data: a\nid: 9", None, Some(0)),
            ("é€😀", None, None),
        ] {
            let fields = EventFields {
                id: "7-1",
                name,
                data,
                retry_ms,
            };
            let decoded = decode_event(&encode_event(&fields)).unwrap();
            assert_eq!(
                decoded,
                DecodedEvent {
                    id: "7-1".into(),
                    name: name.map(String::from),
                    data: data.into(),
                    retry_ms,
                }
            );
        }
        let crlf = encode_event(&EventFields {
            id: "1",
            name: None,
            data: "a\r\nb\rc",
            retry_ms: None,
        });
        assert_eq!(decode_event(&crlf).unwrap().data, "a\nb\nc");
        assert_eq!(decode_event(b"retry: 5\n\n"), None);
        assert_eq!(decode_event(b"id: 1\ndata: x\n"), None);
    }
}
