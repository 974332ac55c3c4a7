#![allow(clippy::unwrap_used)]
//! `GET /events`: the response head, the first `retry:` frame, the exact bytes of event
//! frames, live-only delivery without a Last-Event-ID, and multi-topic subscriptions (the
//! union in id order, an event of several topics once).

use crate::common::*;
use herald::Event;

#[test]
fn events_head_has_exactly_the_stream_headers_and_no_length() {
    let server = start(|_| {});
    let subscriber = subscribe(server.local_addr(), &["news"]);
    let head = &subscriber.head;
    assert_eq!(head.status, 200, "{}", head.summary());
    assert_eq!(
        head.header_names(),
        vec![
            "cache-control",
            "connection",
            "content-type",
            "x-accel-buffering"
        ],
        "the /events head must have exactly these headers (no CORS configured): {}",
        head.summary()
    );
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    assert_eq!(head.header("x-accel-buffering"), Some("no"));
    assert_eq!(head.header("connection"), Some("close"));
}

#[test]
fn stream_body_starts_with_the_default_retry_frame() {
    let server = start(|_| {});
    let subscriber = subscribe(server.local_addr(), &["news"]);
    assert_opening_frame(&subscriber.raw, RETRY_MS_DEFAULT);
    assert_eq!(subscriber.retry_ms(), Some(u64::from(RETRY_MS_DEFAULT)));
}

#[test]
fn stream_body_starts_with_the_configured_retry_frame() {
    let server = start(|config| config.retry_ms = 1234);
    let subscriber = subscribe(server.local_addr(), &["news"]);
    assert_opening_frame(&subscriber.raw, 1234);
}

/// The first frame of a stream opened without Last-Event-ID: the `retry:` hint and the
/// `id:` of where the stream starts (`<epoch>-<seq>`), so a client that reconnects before
/// its first event can resume from there.
fn assert_opening_frame(raw: &[u8], retry_ms: u32) {
    let text = String::from_utf8_lossy(raw);
    let id = text
        .strip_prefix(&format!("retry: {retry_ms}\nid: "))
        .and_then(|rest| rest.strip_suffix("\n\n"))
        .unwrap_or_else(|| {
            panic!("the first frame is not `retry: {retry_ms}` and an id: {text:?}")
        });
    split_id(id);
}

#[test]
fn event_frame_bytes_are_id_event_retry_then_one_data_line_per_line() {
    let server = start(|_| {});
    let handle = server.handle();
    let mut subscriber = subscribe(server.local_addr(), &["news"]);
    let plain = publish(&handle, &Event::new("news", "hello"));
    let full = publish(
        &handle,
        &Event::new("news", "l1\r\nl2\rl3\nl4")
            .named("tick")
            .with_retry_ms(500),
    );
    let empty = publish(&handle, &Event::new("news", ""));
    let trailing = publish(&handle, &Event::new("news", "end\n"));
    subscriber.events(4);
    let expected = format!(
        "id: {plain}\ndata: hello\n\n\
         id: {full}\nevent: tick\nretry: 500\ndata: l1\ndata: l2\ndata: l3\ndata: l4\n\n\
         id: {empty}\ndata: \n\n\
         id: {trailing}\ndata: end\ndata: \n\n"
    );
    assert_eq!(
        String::from_utf8_lossy(subscriber.raw_after_retry_frame()),
        expected,
        "frames after the retry frame"
    );
}

#[test]
fn parsed_events_carry_id_type_and_retry() {
    let server = start(|_| {});
    let handle = server.handle();
    let mut subscriber = subscribe(server.local_addr(), &["news"]);
    let id = publish(
        &handle,
        &Event::new("news", "payload")
            .named("update")
            .with_retry_ms(777),
    );
    let event = subscriber.next_event("the published event");
    assert_eq!(event.event_type, "update");
    assert_eq!(event.data, "payload");
    assert_eq!(event.last_event_id, id.as_str());
    assert_eq!(subscriber.retry_ms(), Some(777));
}

#[test]
fn without_last_event_id_only_live_events_arrive() {
    // One loop, so a witness that has seen the early event proves the loop has processed it
    // before the second subscriber arrives.
    let server = start(|config| config.threads = 1);
    let handle = server.handle();
    let mut witness = subscribe(server.local_addr(), &["news"]);
    publish(&handle, &Event::new("news", "before"));
    assert_eq!(witness.next_event("the early event").data, "before");

    let mut late = subscribe(server.local_addr(), &["news"]);
    let live = publish(&handle, &Event::new("news", "after"));
    let event = late.next_event("the live event");
    assert_eq!(
        (event.data.as_str(), event.last_event_id.as_str()),
        ("after", live.as_str()),
        "a subscriber without Last-Event-ID must not get events published before it subscribed"
    );
}

#[test]
fn subscriber_gets_only_its_topics() {
    let server = start(|_| {});
    let handle = server.handle();
    let mut subscriber = subscribe(server.local_addr(), &["mine"]);
    publish(&handle, &Event::new("other", "not for you"));
    publish(&handle, &Event::new("mine", "for you"));
    publish(&handle, &Event::new("mine-2", "not for you either"));
    publish(&handle, &Event::new("mine", "end"));
    let events = subscriber.events_before("end");
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, vec!["for you"]);
}

#[test]
fn multi_topic_subscriber_gets_the_union_in_id_order() {
    let server = start(|_| {});
    let handle = server.handle();
    let mut both = subscribe(server.local_addr(), &["a", "b"]);
    let mut only_b = subscribe(server.local_addr(), &["b"]);

    let mut expected_both = Vec::new();
    let mut expected_b = Vec::new();
    for i in 0..30 {
        let topic = ["a", "b", "c", "b", "a"][i % 5];
        let data = format!("{topic}{i}");
        let id = publish(&handle, &Event::new(topic, data.clone()));
        if topic != "c" {
            expected_both.push((id.to_string(), data.clone()));
        }
        if topic == "b" {
            expected_b.push((id.to_string(), data));
        }
    }
    publish(&handle, &Event::new("a", "end").and_topic("b"));

    let got: Vec<(String, String)> = both
        .events_before("end")
        .into_iter()
        .map(|e| (e.last_event_id, e.data))
        .collect();
    assert_eq!(got, expected_both, "subscriber of a+b");
    let got_b: Vec<(String, String)> = only_b
        .events_before("end")
        .into_iter()
        .map(|e| (e.last_event_id, e.data))
        .collect();
    assert_eq!(got_b, expected_b, "subscriber of b only");
}

#[test]
fn event_published_to_two_subscribed_topics_arrives_once() {
    let server = start(|_| {});
    let handle = server.handle();
    let mut subscriber = subscribe(server.local_addr(), &["a", "b", "c"]);
    let twice = publish(&handle, &Event::new("a", "shared").and_topic("b"));
    let thrice = publish(
        &handle,
        &Event::new("c", "everywhere").and_topic("b").and_topic("a"),
    );
    publish(&handle, &Event::new("b", "end"));
    let events = subscriber.events_before("end");
    let got: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.last_event_id.as_str(), e.data.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![(twice.as_str(), "shared"), (thrice.as_str(), "everywhere")]
    );
}

#[test]
fn multi_topic_events_published_over_http_arrive_once_in_order() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["x", "y"]);
    let first = publish_form(addr, &[("topic", "x"), ("topic", "y"), ("data", "1")]);
    let second = publish_form(addr, &[("topic", "y"), ("data", "2")]);
    let third = publish_form(addr, &[("topic", "x"), ("data", "3")]);
    let events = subscriber.events(3);
    let got: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.last_event_id.as_str(), e.data.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (first.as_str(), "1"),
            (second.as_str(), "2"),
            (third.as_str(), "3")
        ]
    );
}

#[test]
fn stats_count_subscribers_publishes_and_deliveries() {
    let server = start(|_| {});
    let handle = server.handle();
    let mut first = subscribe(server.local_addr(), &["s"]);
    let mut second = subscribe(server.local_addr(), &["s", "t"]);
    wait_until("stats().subscribers == 2", || {
        handle.stats().subscribers == 2
    });
    for i in 0..3 {
        publish(&handle, &Event::new("s", i.to_string()));
    }
    assert_eq!(handle.stats().events_published, 3);
    first.events(3);
    second.events(3);
    wait_until("stats().deliveries == 6", || handle.stats().deliveries == 6);
    assert!(handle.stats().connections >= 2);
}

#[test]
fn http_1_0_subscriber_gets_a_stream() {
    let server = start(|_| {});
    let handle = server.handle();
    let mut conn = Conn::connect(server.local_addr());
    conn.send("GET /events?topic=old HTTP/1.0\r\n\r\n");
    let head = conn.read_head("the /events head for HTTP/1.0");
    assert_eq!(head.status, 200, "{}", head.summary());
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_opening_frame(
        &conn.read_until(b"\n\n", "the retry frame"),
        RETRY_MS_DEFAULT,
    );
    let id = publish(&handle, &Event::new("old", "hi"));
    assert_eq!(
        conn.read_until(b"\n\n", "the event frame"),
        format!("id: {id}\ndata: hi\n\n").as_bytes()
    );
}
