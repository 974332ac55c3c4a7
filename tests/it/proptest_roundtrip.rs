//! Property tests: an event encoded into an SSE frame comes back out of a spec-exact
//! EventSource parser ([`crate::common::SseCollector`]) with its data (every CR and CRLF as
//! LF), its name (or `message`), its id and its retry hint, however the stream is split into
//! reads. The same holds for events that arrive as JSON, form and raw publish bodies.
//! No server here: the encoder and parsers are driven directly.

#![allow(clippy::unwrap_used)]

use crate::common::{SseCollector, SseEvent};
use herald::testing::{
    encode_frame, event_name_is_valid, parse_publish, prepare_publish, PublishFormat,
};
use proptest::prelude::*;

/// Text dense in what the encoder must get right: line breaks in every combination, a BOM,
/// colons and leading spaces (which a reader could take for field syntax), multi-byte chars.
fn tricky_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("\r".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just(" ".to_owned()),
            Just(":".to_owned()),
            Just("data: x".to_owned()),
            Just("\u{FEFF}".to_owned()),
            Just("\0".to_owned()),
            "[a-zé€😀]{1,4}",
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

fn data() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), tricky_text()]
}

/// Valid event names: 1..=64 bytes without CR, LF or NUL, spaces and colons included.
fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        r"[^\r\n\x00]{1,16}",
        "[ :a-z]{1,64}",
        Just("message".to_owned()),
        Just("x".repeat(64)),
    ]
    .prop_filter("at most 64 bytes", |name| name.len() <= 64)
}

/// A stream cut into reads at these fractions of its length.
fn cuts() -> impl Strategy<Value = Vec<f64>> {
    proptest::collection::vec(0.0..1.0, 0..6)
}

fn expected(name: Option<&str>, data: &str, id: &str) -> SseEvent {
    SseEvent {
        event_type: name.unwrap_or("message").to_owned(),
        data: data.replace("\r\n", "\n").replace('\r', "\n"),
        last_event_id: id.to_owned(),
    }
}

/// Reads `frame` followed by a plain event, fed in pieces at `cuts`; returns what fired and
/// the reconnection time the stream set.
fn read_back(frame: &[u8], cuts: &[f64]) -> (Vec<SseEvent>, Option<u64>) {
    let mut stream = frame.to_vec();
    stream.extend_from_slice(&encode_frame("next", None, "after", None));
    let mut ends: Vec<usize> = cuts
        .iter()
        .map(|cut| (cut * stream.len() as f64) as usize)
        .collect();
    ends.push(stream.len());
    ends.sort_unstable();
    let mut parser = SseCollector::new();
    let mut events = Vec::new();
    let mut start = 0;
    for end in ends {
        events.extend(parser.feed(&stream[start..end]));
        start = end;
    }
    let after = events.pop();
    assert_eq!(
        after,
        Some(expected(None, "after", "next")),
        "frame {frame:?}"
    );
    (events, parser.retry_ms)
}

proptest! {
    #[test]
    fn frame_round_trips(
        data in data(),
        name in proptest::option::of(event_name()),
        sequence: u64,
        epoch: u64,
        retry_ms: Option<u32>,
        cuts in cuts(),
    ) {
        prop_assert!(name.as_deref().is_none_or(event_name_is_valid));
        let id = format!("{sequence}-{epoch}");
        let frame = encode_frame(&id, name.as_deref(), &data, retry_ms);
        let (events, retry) = read_back(&frame, &cuts);
        prop_assert_eq!(events, vec![expected(name.as_deref(), &data, &id)]);
        prop_assert_eq!(retry, retry_ms.map(u64::from));
    }

    #[test]
    fn event_name_rule(name in prop_oneof![any::<String>(), tricky_text()]) {
        let valid = (1..=64).contains(&name.len()) && !name.contains(['\r', '\n', '\0']);
        prop_assert_eq!(event_name_is_valid(&name), valid);
    }

    #[test]
    fn published_events_round_trip(
        data in data(),
        name in proptest::option::of(event_name()),
        retry_ms in proptest::option::of(0u32..=86_400_000),
        format in prop_oneof![
            Just(PublishFormat::Json),
            Just(PublishFormat::Form),
            Just(PublishFormat::Raw),
            Just(PublishFormat::Ndjson),
        ],
        cuts in cuts(),
    ) {
        let mut fields = form_urlencoded::Serializer::new(String::new());
        fields.append_pair("topic", "t");
        if let Some(name) = &name {
            fields.append_pair("event", name);
        }
        if let Some(retry_ms) = retry_ms {
            fields.append_pair("retry", &retry_ms.to_string());
        }
        let (query, body) = match format {
            PublishFormat::Json | PublishFormat::Ndjson => {
                let mut object = serde_json::json!({ "topic": "t", "data": data });
                if let Some(name) = &name {
                    object["event"] = name.as_str().into();
                }
                if let Some(retry_ms) = retry_ms {
                    object["retry"] = retry_ms.into();
                }
                (String::new(), object.to_string())
            }
            PublishFormat::Form => {
                fields.append_pair("data", &data);
                (String::new(), fields.finish())
            }
            PublishFormat::Raw => (fields.finish(), data.clone()),
        };
        let event = parse_publish(format, &query, body.as_bytes()).unwrap();
        prop_assert_eq!(&event.data, &data);
        prop_assert_eq!(&event.name, &name);
        prop_assert_eq!(prepare_publish(&event), Ok(vec!["t".to_owned()]));
        let frame = encode_frame("1-1", event.name.as_deref(), &event.data, event.retry_ms);
        let (events, retry) = read_back(&frame, &cuts);
        prop_assert_eq!(events, vec![expected(name.as_deref(), &data, "1-1")]);
        prop_assert_eq!(retry, retry_ms.map(u64::from));
    }
}
