#![allow(clippy::unwrap_used)]
//! Data round trips through herald and back out of a spec-exact EventSource parser: LF, CR,
//! CRLF, unicode, empty strings, separators that look like SSE syntax, and 1 MiB payloads,
//! published through the library handle and through every HTTP publish format ([`Via`]: each
//! data test runs once per way in).

use crate::common::*;
use herald::Event;

/// Data that must come out of an EventSource as it went in (after CR and CRLF became LF).
fn tricky_data() -> Vec<String> {
    [
        "plain",
        "",
        "line1\nline2",
        "cr\ronly",
        "crlf\r\nline",
        "mixed\nlf\rcr\r\ncrlf",
        "trailing lf\n",
        "trailing cr\r",
        "trailing crlf\r\n",
        "\n",
        "\r",
        "\r\n",
        "\n\n\n",
        "\r\r\n\n\r",
        "\nleading lf",
        " leading space",
        "  two leading spaces",
        "\ttab",
        ":starts with a colon",
        "data: looks like a field",
        "id: 99\nevent: fake\nretry: 1\n\ndata: injected",
        "unicode: é ß 世界 🚀 \u{200b} \u{feff}",
        "\u{feff}leading bom",
        "quotes \" and \\ backslash",
        "nul \u{0} inside",
        "emoji line\n🚀\r\n世界",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// 1 MiB of data with every kind of line break and multi-byte characters.
fn mebibyte_payload() -> String {
    let mut data = String::with_capacity(1 << 20);
    let pieces = [
        "abcdefghijklmnopqrstuvwxyz0123456789",
        "\n",
        "é世🚀",
        "\r\n",
        " spaced : colon ",
        "\r",
        "data: not a field",
        "\n\n",
    ];
    let mut i = 0;
    while data.len() < (1 << 20) - 64 {
        data.push_str(pieces[i % pieces.len()]);
        i += 1;
    }
    while data.len() < 1 << 20 {
        data.push('x');
    }
    assert_eq!(data.len(), 1 << 20);
    data
}

/// Every way an event gets into herald.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// `Handle::publish` in the library.
    Handle,
    /// `POST /publish` with a form body.
    Form,
    /// `POST /publish` with a JSON body.
    Json,
    /// `POST /publish?topic=..` with the data as a `text/plain` body.
    Raw,
}

impl Via {
    const ALL: [Via; 4] = [Via::Handle, Via::Form, Via::Json, Via::Raw];

    /// Publishes `data` on `topic` this way; returns the id herald answered.
    fn publish(self, server: &herald::Server, topic: &str, data: &str) -> String {
        let addr = server.local_addr();
        match self {
            Via::Handle => publish(&server.handle(), &Event::new(topic, data)).to_string(),
            Via::Form => publish_form(addr, &[("topic", topic), ("data", data)]),
            Via::Json => {
                let body = format!(
                    "{{\"topic\":{},\"data\":{}}}",
                    json_string(topic),
                    json_string(data)
                );
                let response = post(addr, "/publish", Some("application/json"), body.as_bytes());
                assert_eq!(response.status, 200, "{body}: {}", response.summary());
                id_from_json_answer(response.body_text())
            }
            Via::Raw => {
                let target = format!("/publish?{}", form(&[("topic", topic)]));
                let response = post(addr, &target, Some("text/plain"), data.as_bytes());
                assert_eq!(response.status, 200, "{data:?}: {}", response.summary());
                id_from_text_answer(response.body_text())
            }
        }
    }
}

fn check_roundtrip(subscriber: &mut Subscriber, sent: &[(String, String)], how: &str) {
    for (id, data) in sent {
        let event = subscriber.next_event(&format!("the event with data {data:?} ({how})"));
        assert_eq!(
            event.data,
            normalize_newlines(data),
            "data {data:?} published {how} did not round-trip"
        );
        assert_eq!(&event.last_event_id, id, "id of {data:?} published {how}");
        assert_eq!(event.event_type, "message", "{how}");
    }
}

#[test]
fn tricky_data_round_trips_through_every_publish_path() {
    for via in Via::ALL {
        let server = start(|_| {});
        let mut subscriber = subscribe(server.local_addr(), &["rt"]);
        let sent: Vec<(String, String)> = tricky_data()
            .into_iter()
            .map(|data| (via.publish(&server, "rt", &data), data))
            .collect();
        check_roundtrip(&mut subscriber, &sent, &format!("via {via:?}"));
    }
}

#[test]
fn unicode_event_names_and_retry_round_trip() {
    let server = start(|_| {});
    let handle = server.handle();
    let mut subscriber = subscribe(server.local_addr(), &["rt"]);
    let id = publish(
        &handle,
        &Event::new("rt", "x").named("état-世界").with_retry_ms(0),
    );
    let event = subscriber.next_event("the named event");
    assert_eq!(event.event_type, "état-世界");
    assert_eq!(event.last_event_id, id.as_str());
    assert_eq!(subscriber.retry_ms(), Some(0));
}

fn big_server() -> herald::Server {
    start(|config| {
        config.max_publish_bytes = 4 << 20;
        config.max_lag_bytes = 32 << 20;
    })
}

fn check_big(subscriber: &mut Subscriber, id: &str, payload: &str, how: &str) {
    let event = subscriber.next_event(&format!("the 1 MiB event ({how})"));
    assert_eq!(&event.last_event_id, id, "{how}");
    let expected = normalize_newlines(payload);
    assert_eq!(
        event.data.len(),
        expected.len(),
        "1 MiB payload length ({how})"
    );
    assert!(
        event.data == expected,
        "1 MiB payload content differs ({how})"
    );
}

#[test]
fn one_mebibyte_payload_round_trips_through_every_publish_path() {
    let payload = mebibyte_payload();
    assert!(
        form(&[("topic", "big"), ("data", &payload)]).len() < 4 << 20,
        "encoded form fits max_publish_bytes"
    );
    for via in Via::ALL {
        let server = big_server();
        let mut subscriber = subscribe(server.local_addr(), &["big"]);
        let id = via.publish(&server, "big", &payload);
        check_big(&mut subscriber, &id, &payload, &format!("via {via:?}"));
    }
}

#[test]
fn many_subscribers_get_identical_bytes_of_a_big_event() {
    let server = big_server();
    let addr = server.local_addr();
    let mut subscribers: Vec<Subscriber> = (0..8).map(|_| subscribe(addr, &["big"])).collect();
    let payload = mebibyte_payload();
    let id = publish(&server.handle(), &Event::new("big", payload.clone()));
    for subscriber in &mut subscribers {
        check_big(subscriber, id.as_str(), &payload, "to one of 8 subscribers");
    }
    let first = subscribers[0].raw.clone();
    assert!(
        subscribers.iter().all(|s| s.raw == first),
        "every subscriber receives the same bytes"
    );
}
