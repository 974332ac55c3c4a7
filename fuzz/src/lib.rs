//! Checks shared by herald's fuzz targets. The frame encoder is round-tripped through
//! `testkit::sse`, the spec-exact reader of `text/event-stream` (WHATWG HTML, "event stream
//! interpretation") that herald's tests and load generator use too.
//!
//! Every check panics on a broken property, which libFuzzer reports as a crash. Inputs that a
//! server would refuse are fine; a refusal must only be precise, one line, and independent of
//! how the bytes were split into reads.

use arbitrary::{Arbitrary, Unstructured};
use herald::testing::{
    encode_frame, encoded_frame_len, event_name_is_valid, head_outcome, parse_publish,
    parse_publish_batch, prepare_publish, HeadOutcome, PublishFormat, Refusal,
};
use herald::Event;
use testkit::sse::{SseCollector, SseEvent};

/// Everything a whole stream did to an EventSource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interpreted {
    /// Events fired, in order.
    pub events: Vec<SseEvent>,
    /// The reconnection time set by the last valid `retry:` field.
    pub retry_ms: Option<u64>,
}

/// Interprets a complete stream the way the WHATWG spec's steps do, with `testkit::sse` (the
/// reader herald's tests and load generator use too): a last line without its end is never
/// processed.
pub fn interpret(stream: &[u8]) -> Interpreted {
    let mut collector = SseCollector::new();
    let events = collector.feed(stream);
    Interpreted {
        events,
        retry_ms: collector.retry_ms,
    }
}

/// `data` with every CRLF and lone CR replaced by LF: what an EventSource hands back.
pub fn normalize_line_breaks(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

/// The event-name rule, restated independently of herald: 1..=64 bytes without CR, LF, NUL.
pub fn name_is_valid(name: &str) -> bool {
    (1..=64).contains(&name.len()) && !name.contains(['\r', '\n', '\0'])
}

/// The topic-name rule, restated: 1..=`max_bytes` of `[A-Za-z0-9_.:/@~-]`.
pub fn topic_is_valid(topic: &str, max_bytes: usize) -> bool {
    (1..=max_bytes).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/@~".contains(&b))
}

/// Encodes one event and checks that a spec-exact reader gets it back: one event with the
/// data (line breaks as LF), the name (or `message`), the id and the retry hint. Also checks
/// that the frame ends its event, so the next frame on the stream is read on its own.
pub fn check_frame(id: &str, name: Option<&str>, data: &str, retry_ms: Option<u32>) {
    let frame = encode_frame(id, name, data, retry_ms);
    assert_eq!(frame.len(), encoded_frame_len(id, name, data, retry_ms));
    assert!(frame.ends_with(b"\n\n"), "frame does not end its event");
    let expected = SseEvent {
        event_type: name.unwrap_or("message").to_owned(),
        data: normalize_line_breaks(data),
        last_event_id: id.to_owned(),
    };
    let mut stream = frame.to_vec();
    stream.extend_from_slice(&encode_frame("next", None, "after", None));
    let interpreted = interpret(&stream);
    let after = SseEvent {
        event_type: "message".to_owned(),
        data: "after".to_owned(),
        last_event_id: "next".to_owned(),
    };
    assert_eq!(interpreted.events, [expected, after], "frame {frame:?}");
    assert_eq!(
        interpreted.retry_ms,
        retry_ms.map(u64::from),
        "frame {frame:?}"
    );
}

/// The `sse_frame` target's input.
#[derive(Arbitrary, Debug)]
pub struct FrameInput {
    /// Bus ids are `<sequence>-<epoch>`.
    pub sequence: u64,
    /// The second half of the id.
    pub epoch: u64,
    /// The event name, valid or not.
    pub name: Option<String>,
    /// The `retry:` hint.
    pub retry_ms: Option<u32>,
    /// The data.
    pub data: String,
}

/// The `sse_frame` target: herald's name rule agrees with [`name_is_valid`], and a frame with
/// a valid name round-trips ([`check_frame`]).
pub fn check_frame_bytes(bytes: &[u8]) {
    let Ok(input) = FrameInput::arbitrary_take_rest(Unstructured::new(bytes)) else {
        return;
    };
    if let Some(name) = &input.name {
        assert_eq!(
            event_name_is_valid(name),
            name_is_valid(name),
            "name {name:?}"
        );
        if !name_is_valid(name) {
            return;
        }
    }
    let id = format!("{}-{}", input.sequence, input.epoch);
    check_frame(&id, input.name.as_deref(), &input.data, input.retry_ms);
}

fn check_refusal((status, reason): Refusal, expected_class: std::ops::RangeInclusive<u16>) {
    assert!(expected_class.contains(&status), "status {status}");
    assert!(
        !reason.is_empty() && !reason.contains(['\r', '\n']),
        "reason {reason:?}"
    );
}

/// Checks the request-head parser and the routing decisions taken from a complete head:
/// - a full buffer turns "need more" into 431 and changes nothing else;
/// - the outcome does not depend on how the bytes were split into reads: a prefix either
///   needs more or already reaches the same outcome;
/// - bytes after a complete head change nothing, and the head ends with its blank line;
/// - a subscription's topics are valid, distinct and within the default limits.
pub fn check_head(buf: &[u8]) {
    let outcome = head_outcome(buf, false);
    match (&outcome, head_outcome(buf, true)) {
        (HeadOutcome::NeedMore, HeadOutcome::Refused((431, _))) => {}
        (HeadOutcome::NeedMore, full) => panic!("full buffer gave {full:?}"),
        (other, full) => assert_eq!(other, &full, "full buffer changed the outcome"),
    }
    for end in prefix_ends(buf.len()) {
        match head_outcome(&buf[..end], false) {
            HeadOutcome::NeedMore => {}
            early => assert_eq!(early, outcome, "the first {end} bytes decided differently"),
        }
    }
    let summary = match outcome {
        HeadOutcome::NeedMore => return,
        HeadOutcome::Refused(refusal) => return check_refusal(refusal, 400..=599),
        HeadOutcome::Complete(summary) => summary,
    };
    let head = &buf[..summary.head_len];
    assert!(
        head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
        "head {head:?}"
    );
    assert_eq!(
        head_outcome(head, false),
        HeadOutcome::Complete(summary.clone()),
        "bytes after the head changed it"
    );
    if let Err(refusal) = &summary.route {
        check_refusal(*refusal, 400..=499);
    }
    match &summary.subscription {
        Ok(topics) => {
            assert!((1..=16).contains(&topics.len()), "{topics:?}");
            for (i, topic) in topics.iter().enumerate() {
                assert!(topic_is_valid(topic, 128), "{topic:?}");
                assert!(!topics[..i].contains(topic), "duplicate {topic:?}");
            }
        }
        Err(refusal) => check_refusal(*refusal, 400..=499),
    }
    if let Some(token) = &summary.bearer {
        assert!(
            !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()),
            "bearer token {token:?} is empty or has bytes no token has"
        );
    }
    if let Some(token) = &summary.cookie_token {
        assert!(!token.is_empty(), "an empty cookie counts as none");
    }
    if let Err(refusal) = summary.publish_format {
        check_refusal(refusal, 415..=415);
    }
}

/// Prefix lengths to re-parse: all of them for short inputs, an even spread otherwise (every
/// prefix of a long input would make each run quadratic).
fn prefix_ends(len: usize) -> Vec<usize> {
    const ALL_BELOW: usize = 512;
    const SPREAD: usize = 64;
    if len <= ALL_BELOW {
        (0..len).collect()
    } else {
        (0..SPREAD).map(|i| i * len / SPREAD).collect()
    }
}

/// Splits a publish input into query (before the first LF) and body (after it); an input
/// without LF is all body. The query must be UTF-8, as the head parser guarantees.
pub fn split_publish_input(input: &[u8]) -> Option<(&str, &[u8])> {
    let (query, body) = match input.iter().position(|&b| b == b'\n') {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (&input[..0], input),
    };
    Some((std::str::from_utf8(query).ok()?, body))
}

/// Checks one publish body parser:
/// - a refusal is a one-line 400;
/// - a raw body is the data byte for byte;
/// - an accepted event re-encoded in the same format (`reencode` gives a query and a body)
///   parses back to the same event;
/// - an event that passes validation has valid, distinct topics, and its frame round-trips.
pub fn check_publish(
    format: PublishFormat,
    input: &[u8],
    reencode: fn(&Event) -> (String, Vec<u8>),
) {
    let Some((query, body)) = split_publish_input(input) else {
        return;
    };
    let event = match parse_publish(format, query, body) {
        Ok(event) => event,
        Err(refusal) => return check_refusal(refusal, 400..=400),
    };
    if format == PublishFormat::Raw {
        assert_eq!(
            event.data.as_bytes(),
            body,
            "raw data differs from the body"
        );
    }
    let (query, body) = reencode(&event);
    assert_eq!(
        parse_publish(format, &query, &body),
        Ok(event.clone()),
        "re-encoded as {query:?} and {:?}",
        String::from_utf8_lossy(&body)
    );
    let Ok(topics) = prepare_publish(&event) else {
        return;
    };
    assert!((1..=16).contains(&topics.len()), "{topics:?}");
    for (i, topic) in topics.iter().enumerate() {
        assert!(topic_is_valid(topic, 128), "{topic:?}");
        assert!(!topics[..i].contains(topic), "duplicate {topic:?}");
        assert!(event.topics.contains(topic), "{topic:?} was not published");
    }
    for topic in &event.topics {
        assert!(topics.contains(topic), "{topic:?} was dropped");
    }
    if let Some(name) = &event.name {
        assert!(name_is_valid(name), "{name:?} passed validation");
    }
    check_frame("1-1", event.name.as_deref(), &event.data, event.retry_ms);
}

/// Events per batch the batch check allows; small, so inputs reach the limit.
const BATCH_EVENTS_MAX: usize = 8;

/// Checks the batch readers on one body, read both as NDJSON and as a JSON array:
/// - a refusal is a one-line 400, 413 (too many events) or 415 (a JSON body that is not an
///   array);
/// - a batch holds 1..=`BATCH_EVENTS_MAX` events, each what the single JSON reader makes of
///   its own line or element re-encoded, and the batch re-encoded in the same format parses
///   back to the same events;
/// - each event that passes validation passes the single-publish checks too.
pub fn check_publish_batch(input: &[u8]) {
    let Some((query, body)) = split_publish_input(input) else {
        return;
    };
    for format in [PublishFormat::Ndjson, PublishFormat::Json] {
        let events = match parse_publish_batch(format, query, body, BATCH_EVENTS_MAX) {
            Ok(events) => events,
            Err(refusal) => {
                check_refusal(refusal, 400..=415);
                assert!(matches!(refusal.0, 400 | 413 | 415), "status {}", refusal.0);
                continue;
            }
        };
        assert!((1..=BATCH_EVENTS_MAX).contains(&events.len()));
        let objects: Vec<Vec<u8>> = events.iter().map(|event| json_body(event).1).collect();
        let reencoded = match format {
            PublishFormat::Ndjson => objects.join(&b'\n'),
            _ => [b"[".to_vec(), objects.join(&b','), b"]".to_vec()].concat(),
        };
        assert_eq!(
            parse_publish_batch(format, "", &reencoded, BATCH_EVENTS_MAX),
            Ok(events.clone()),
            "re-encoded as {:?}",
            String::from_utf8_lossy(&reencoded)
        );
        for (event, object) in events.iter().zip(&objects) {
            assert_eq!(
                parse_publish(PublishFormat::Json, "", object).as_ref(),
                Ok(event)
            );
            if prepare_publish(event).is_ok() {
                check_frame("1-1", event.name.as_deref(), &event.data, event.retry_ms);
            }
        }
    }
}

/// Topics, name and retry of `event` as form fields.
fn form_fields(event: &Event) -> form_urlencoded::Serializer<'static, String> {
    let mut fields = form_urlencoded::Serializer::new(String::new());
    for topic in &event.topics {
        fields.append_pair("topic", topic);
    }
    if let Some(name) = &event.name {
        fields.append_pair("event", name);
    }
    if let Some(retry_ms) = event.retry_ms {
        fields.append_pair("retry", &retry_ms.to_string());
    }
    fields
}

/// `event` as a form body (every field in the body, empty query).
pub fn form_body(event: &Event) -> (String, Vec<u8>) {
    let mut fields = form_fields(event);
    fields.append_pair("data", &event.data);
    (String::new(), fields.finish().into_bytes())
}

/// `event` as a JSON body (every field in the body, empty query).
pub fn json_body(event: &Event) -> (String, Vec<u8>) {
    let mut object = serde_json::Map::new();
    object.insert("topic".into(), event.topics.clone().into());
    if let Some(name) = &event.name {
        object.insert("event".into(), name.clone().into());
    }
    if let Some(retry_ms) = event.retry_ms {
        object.insert("retry".into(), retry_ms.into());
    }
    object.insert("data".into(), event.data.clone().into());
    (
        String::new(),
        serde_json::Value::Object(object).to_string().into_bytes(),
    )
}

/// `event` as a raw body: the data, with everything else in the query.
pub fn raw_body(event: &Event) -> (String, Vec<u8>) {
    (form_fields(event).finish(), event.data.clone().into_bytes())
}

/// Runs the check of the target named `target` on one input.
pub fn check_target(target: &str, input: &[u8]) {
    match target {
        "head" => check_head(input),
        "publish_form" => check_publish(PublishFormat::Form, input, form_body),
        "publish_json" => check_publish(PublishFormat::Json, input, json_body),
        "publish_raw" => check_publish(PublishFormat::Raw, input, raw_body),
        "publish_batch" => check_publish_batch(input),
        "sse_frame" => check_frame_bytes(input),
        _ => panic!("no target {target:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(event_type: &str, data: &str, last_event_id: &str) -> SseEvent {
        SseEvent {
            event_type: event_type.to_owned(),
            data: data.to_owned(),
            last_event_id: last_event_id.to_owned(),
        }
    }

    #[test]
    fn interprets_the_spec_examples() {
        // The WHATWG spec's own examples, plus line-end and BOM rules.
        let stream = interpret(b"\xEF\xBB\xBFdata: YHOO\ndata: +2\ndata: 10\n\n");
        assert_eq!(stream.events, [fired("message", "YHOO\n+2\n10", "")]);
        let stream = interpret(b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n");
        assert_eq!(
            stream.events,
            [
                fired("message", "first event", "1"),
                fired("message", "second event", ""),
                fired("message", " third event", ""),
            ]
        );
        let stream = interpret(b"data\n\ndata\ndata\n\ndata:");
        assert_eq!(
            stream.events,
            [fired("message", "", ""), fired("message", "\n", "")]
        );
        let stream = interpret(b"event: e\rdata: a\r\ndata: b\rretry: 12\rretry: x\r\r");
        assert_eq!(stream.events, [fired("e", "a\nb", "")]);
        assert_eq!(stream.retry_ms, Some(12));
        let stream = interpret(b"id: a\0b\ndata: x\n\nevent: lost\n\ndata: y\n\n");
        assert_eq!(
            stream.events,
            [fired("message", "x", ""), fired("message", "y", "")]
        );
    }

    #[test]
    fn frames_round_trip() {
        check_frame("7-1", Some(" spaced "), "a\rb\r\nc\n", Some(5));
        check_frame("7-2", None, "", None);
        check_frame("7-3", Some("message"), "\u{FEFF}x", None);
    }

    /// Replays `seeds/<target>/*` through each target's check, on stable, under `cargo test`.
    #[test]
    fn seeds_pass() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        let mut replayed = 0;
        for target in [
            "head",
            "publish_form",
            "publish_json",
            "publish_raw",
            "publish_batch",
            "sse_frame",
        ] {
            for entry in std::fs::read_dir(seeds.join(target)).unwrap() {
                let path = entry.unwrap().path();
                check_target(target, &std::fs::read(&path).unwrap());
                replayed += 1;
            }
        }
        assert!(replayed >= 20, "only {replayed} seeds");
    }

    #[test]
    fn publish_inputs_split_at_the_first_line_feed() {
        assert_eq!(
            split_publish_input(b"topic=a\nx\ny"),
            Some(("topic=a", &b"x\ny"[..]))
        );
        assert_eq!(split_publish_input(b"body"), Some(("", &b"body"[..])));
        assert_eq!(split_publish_input(b"\xff\nbody"), None);
    }
}
