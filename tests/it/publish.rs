#![allow(clippy::unwrap_used)]
//! `POST /publish` in each format (form, JSON with string and non-string data and topic
//! arrays, raw body with query), the answers' exact bodies, the id format, the bearer token
//! and the separate publish listener.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::*;
use herald::{BusKind, Event};
use testkit::redis::RedisServer;

fn assert_text_answer(response: &Response, case: &str) -> String {
    assert_eq!(response.status, 200, "{case}: {}", response.summary());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "{case}: answer Content-Type {content_type:?}"
    );
    id_from_text_answer(response.body_text())
}

fn assert_json_answer(response: &Response, case: &str) -> String {
    assert_eq!(response.status, 200, "{case}: {}", response.summary());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "{case}: answer Content-Type {content_type:?}"
    );
    id_from_json_answer(response.body_text())
}

fn post_json(addr: SocketAddr, body: &str) -> Response {
    post(addr, "/publish", Some("application/json"), body.as_bytes())
}

#[test]
fn form_publish_with_every_field() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut a = subscribe(addr, &["fa"]);
    let mut b = subscribe(addr, &["fb"]);
    let body = form(&[
        ("topic", "fa"),
        ("topic", "fb"),
        ("data", "hello world & more=stuff"),
        ("event", "update"),
        ("retry", "1500"),
    ]);
    let response = post(
        addr,
        "/publish",
        Some("application/x-www-form-urlencoded"),
        body.as_bytes(),
    );
    let id = assert_text_answer(&response, "form publish");
    for subscriber in [&mut a, &mut b] {
        let event = subscriber.next_event("the form-published event");
        assert_eq!(event.data, "hello world & more=stuff");
        assert_eq!(event.event_type, "update");
        assert_eq!(event.last_event_id, id);
        assert_eq!(subscriber.retry_ms(), Some(1500));
        let frame =
            format!("id: {id}\nevent: update\nretry: 1500\ndata: hello world & more=stuff\n\n");
        assert_eq!(
            String::from_utf8_lossy(subscriber.raw_after_retry_frame()),
            frame
        );
    }
}

#[test]
fn form_publish_decodes_plus_as_space() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["plus"]);
    let response = post(
        addr,
        "/publish",
        Some("application/x-www-form-urlencoded"),
        b"topic=plus&data=a+b%2Bc",
    );
    assert_text_answer(&response, "form publish with +");
    assert_eq!(subscriber.next_event("the event").data, "a b+c");
}

#[test]
fn form_publish_takes_topics_from_the_url_too() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut url_topic = subscribe(addr, &["from-url"]);
    let mut body_topic = subscribe(addr, &["from-body"]);
    let response = post(
        addr,
        "/publish?topic=from-url",
        Some("application/x-www-form-urlencoded"),
        form(&[("topic", "from-body"), ("data", "x")]).as_bytes(),
    );
    let id = assert_text_answer(&response, "form publish with ?topic=");
    assert_eq!(
        url_topic.next_event("event via URL topic").last_event_id,
        id
    );
    assert_eq!(
        body_topic.next_event("event via body topic").last_event_id,
        id
    );

    let response = post(
        addr,
        "/publish?topic=from-url",
        Some("application/x-www-form-urlencoded"),
        b"data=only-url",
    );
    let id = assert_text_answer(&response, "form publish with only ?topic=");
    let event = url_topic.next_event("event with only a URL topic");
    assert_eq!(
        (event.last_event_id, event.data),
        (id, "only-url".to_owned())
    );
}

#[test]
fn json_publish_with_string_data() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["js"]);
    let data = "say \"hi\"\\ \u{e9}\n\ttab";
    let body = format!("{{\"topic\":\"js\",\"data\":{}}}", json_string(data));
    let id = assert_json_answer(&post_json(addr, &body), "JSON string data");
    let event = subscriber.next_event("the JSON-published event");
    assert_eq!(event.data, data);
    assert_eq!(event.event_type, "message");
    assert_eq!(event.last_event_id, id);
}

#[test]
fn json_publish_with_topic_array_event_retry_and_object_data() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut a = subscribe(addr, &["ja"]);
    let mut b = subscribe(addr, &["jb"]);
    let mut both = subscribe(addr, &["ja", "jb"]);
    let body = r#"{ "topic" : ["ja", "jb"], "event": "tick", "retry": 1000,
                   "data": { "price": 187.2, "sym": "AAPL", "tags": [ 1, "two", null, true ] } }"#;
    let id = assert_json_answer(&post_json(addr, body), "JSON object data");
    for subscriber in [&mut a, &mut b, &mut both] {
        let event = subscriber.next_event("the JSON object event");
        assert_eq!(
            event.data, r#"{"price":187.2,"sym":"AAPL","tags":[1,"two",null,true]}"#,
            "non-string data is sent as compact JSON"
        );
        assert_eq!(event.event_type, "tick");
        assert_eq!(event.last_event_id, id);
        assert_eq!(subscriber.retry_ms(), Some(1000));
    }
    // The subscriber of both topics got it once.
    publish(&server.handle(), &Event::new("jb", "end"));
    assert_eq!(both.events_before("end"), vec![]);
}

#[test]
fn json_publish_with_number_bool_and_array_data() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["jn"]);
    for (data, expected) in [
        ("42", "42"),
        ("-1.5", "-1.5"),
        ("true", "true"),
        ("false", "false"),
        ("[ ]", "[]"),
        ("[1, [2, {}], \"x\"]", "[1,[2,{}],\"x\"]"),
        ("{}", "{}"),
    ] {
        let body = format!("{{\"data\": {data}, \"topic\": \"jn\"}}");
        let id = assert_json_answer(&post_json(addr, &body), &body);
        let event = subscriber.next_event(&format!("the event of {body}"));
        assert_eq!(
            (event.data.as_str(), event.last_event_id.as_str()),
            (expected, id.as_str()),
            "{body}"
        );
    }
}

#[test]
fn json_publish_with_single_topic_array() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["one"]);
    let id = assert_json_answer(
        &post_json(addr, r#"{"topic":["one"],"data":"x"}"#),
        "topic array of one",
    );
    assert_eq!(subscriber.next_event("the event").last_event_id, id);
}

#[test]
fn raw_publish_with_text_plain_octet_stream_and_no_content_type() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["raw"]);
    for content_type in [Some("text/plain"), Some("application/octet-stream"), None] {
        let case = format!("raw publish with Content-Type {content_type:?}");
        let body = format!("raw body\nline two {content_type:?}");
        let response = post(
            addr,
            "/publish?topic=raw&event=note&retry=700",
            content_type,
            body.as_bytes(),
        );
        let id = assert_text_answer(&response, &case);
        let event = subscriber.next_event(&case);
        assert_eq!(event.data, body, "{case}");
        assert_eq!(event.event_type, "note", "{case}");
        assert_eq!(event.last_event_id, id, "{case}");
        assert_eq!(subscriber.retry_ms(), Some(700), "{case}");
    }
}

#[test]
fn raw_publish_to_several_topics_from_the_query() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut one = subscribe(addr, &["r1"]);
    let mut two = subscribe(addr, &["r2"]);
    let response = post(
        addr,
        "/publish?topic=r1&topic=r2",
        Some("text/plain"),
        b"both",
    );
    let id = assert_text_answer(&response, "raw publish to two topics");
    assert_eq!(one.next_event("r1").last_event_id, id);
    assert_eq!(two.next_event("r2").last_event_id, id);
}

#[test]
fn raw_publish_of_an_empty_body_sends_empty_data() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["empty"]);
    let response = post(addr, "/publish?topic=empty", Some("text/plain"), b"");
    let id = assert_text_answer(&response, "raw publish of an empty body");
    let event = subscriber.next_event("the empty event");
    assert_eq!(
        (event.data.as_str(), event.last_event_id.as_str()),
        ("", id.as_str())
    );
    assert_eq!(
        String::from_utf8_lossy(subscriber.raw_after_retry_frame()),
        format!("id: {id}\ndata: \n\n")
    );
}

#[test]
fn ids_are_epoch_dash_seq_with_seq_counting_every_publish() {
    let before_ms = unix_ms();
    let server = start(|_| {});
    let addr = server.local_addr();
    let handle = server.handle();
    let first = publish_form(addr, &[("topic", "p"), ("data", "1")]);
    let second = publish(&handle, &Event::new("other", "2")).to_string();
    let third = assert_json_answer(
        &post_json(addr, r#"{"topic":"p","data":3}"#),
        "JSON publish",
    );
    let fourth = assert_text_answer(&post(addr, "/publish?topic=q", None, b"4"), "raw publish");
    let ids: Vec<(u64, u64)> = [&first, &second, &third, &fourth]
        .iter()
        .map(|id| split_id(id))
        .collect();
    let epoch = ids[0].0;
    assert!(
        ids.iter().all(|(e, _)| *e == epoch),
        "one epoch for one server: {ids:?}"
    );
    assert!(
        epoch >= before_ms && epoch <= unix_ms(),
        "epoch {epoch} is not the server's start time in unix ms (test started at {before_ms})"
    );
    let seqs: Vec<u64> = ids.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4],
        "seq starts at 1 and counts every publish"
    );
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .try_into()
        .unwrap()
}

#[test]
fn publish_with_the_right_bearer_token_is_accepted() {
    let server = start(|config| config.publish_token = Some("s3cret-token".to_owned()));
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["auth"]);
    let response = exchange(
        addr,
        post_request(
            "/publish?topic=auth",
            Some("text/plain"),
            b"allowed",
            &[
                ("Authorization", "Bearer s3cret-token"),
                ("Connection", "close"),
            ],
        ),
    );
    let id = assert_text_answer(&response, "publish with the token");
    let event = subscriber.next_event("the authorised event");
    assert_eq!(
        (event.data.as_str(), event.last_event_id.as_str()),
        ("allowed", id.as_str())
    );
}

#[test]
fn publish_listener_serves_publish_and_healthz_only() {
    let server = start(|config| config.publish_listen = Some("127.0.0.1:0".parse().unwrap()));
    let main = server.local_addr();
    let private = server
        .publish_addr()
        .expect("publish_addr() must be Some when publish_listen is set");
    assert_ne!(main, private);
    let mut subscriber = subscribe(main, &["pl"]);

    let id = assert_text_answer(
        &post(private, "/publish?topic=pl", Some("text/plain"), b"private"),
        "publish on the publish listener",
    );
    let event = subscriber.next_event("the event published on the publish listener");
    assert_eq!(
        (event.data.as_str(), event.last_event_id.as_str()),
        ("private", id.as_str())
    );

    let health = get(private, "/healthz");
    assert_eq!(
        (health.status, health.body_text()),
        (200, "ok\n"),
        "GET /healthz on the publish listener: {}",
        health.summary()
    );
    for target in ["/events?topic=pl", "/", "/nope"] {
        assert_error(
            &get(private, target),
            404,
            &format!("GET {target} on the publish listener"),
        );
    }
    assert_error(
        &post(main, "/publish?topic=pl", Some("text/plain"), b"public"),
        403,
        "publish on the main listener when publish_listen is set",
    );
    assert_healthy(main, "a refused publish");
}

#[test]
fn server_without_publish_listen_has_no_publish_addr() {
    let server = start(|_| {});
    assert_eq!(server.publish_addr(), None);
}

// --- What every event source refuses alike (issue 10, item 12) ------------------------------

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
const JSON: Option<&str> = Some("application/json");

/// Asserts a 400 whose reason contains `reason`.
fn assert_refused(response: &Response, reason: &str, case: &str) {
    assert_error(response, 400, case);
    assert!(
        response.body_text().contains(reason),
        "{case}: reason {:?} should mention {reason:?}",
        response.body_text()
    );
}

#[test]
fn the_gap_event_name_is_refused_from_every_http_format_and_the_library() {
    let server = start(|config| config.gap_event = "resync".into());
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["g"]);
    let form_body = form(&[("topic", "g"), ("event", "resync"), ("data", "x")]);
    let cases: [(&str, &str, Option<&str>, &[u8]); 4] = [
        ("form", "/publish", FORM, form_body.as_bytes()),
        (
            "JSON",
            "/publish",
            JSON,
            br#"{"topic":"g","event":"resync","data":"x"}"#,
        ),
        ("raw", "/publish?topic=g&event=resync", None, b"x"),
        (
            "form with the name in the URL",
            "/publish?event=resync",
            FORM,
            b"topic=g&data=x",
        ),
    ];
    for (case, target, content_type, body) in cases {
        let response = post(addr, target, content_type, body);
        assert_refused(&response, "gap_event", case);
    }
    let refused = server
        .handle()
        .publish(&Event::new("g", "x").named("resync"));
    assert!(
        refused.is_err_and(|e| e.to_string().contains("gap_event")),
        "the library may not publish the gap event name either"
    );
    // Only the configured name is reserved, exactly (EventSource types are case-sensitive).
    for name in ["gap", "Resync"] {
        let id = publish_form(addr, &[("topic", "g"), ("event", name), ("data", name)]);
        let event = subscriber.next_event(&format!("the event named {name:?}"));
        assert_eq!((event.event_type.as_str(), event.last_event_id), (name, id));
    }
    publish_form(addr, &[("topic", "g"), ("data", "end")]);
    assert_eq!(subscriber.events_before("end"), vec![]);
}

#[test]
fn retry_outside_whole_milliseconds_up_to_a_day_is_refused_from_http_and_the_library() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let handle = server.handle();
    let over = Event::new("r", "x").with_retry_ms(86_400_001);
    assert!(
        handle
            .publish(&over)
            .is_err_and(|e| e.to_string().contains("retry")),
        "the library's retry has the HTTP ceiling"
    );
    publish(&handle, &Event::new("r", "x").with_retry_ms(86_400_000));
    for (case, body) in [
        ("retry over a day", "topic=r&data=x&retry=86400001"),
        ("retry with a plus sign", "topic=r&data=x&retry=%2B5"),
        ("retry with a space", "topic=r&data=x&retry=+5"),
        ("empty retry", "topic=r&data=x&retry="),
    ] {
        let response = post(addr, "/publish", FORM, body.as_bytes());
        assert_refused(&response, "retry", case);
    }
}

#[test]
fn percent_encoded_bytes_that_are_not_utf8_are_refused_everywhere() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["u"]);
    let cases: [(&str, &str, Option<&str>, &[u8]); 8] = [
        ("form data %FF", "/publish", FORM, b"topic=u&data=%FF"),
        (
            "form event %FF",
            "/publish",
            FORM,
            b"topic=u&event=%FF&data=x",
        ),
        (
            "form data %C3%28",
            "/publish",
            FORM,
            b"topic=u&data=a%C3%28b",
        ),
        (
            "form topic in the URL %FF",
            "/publish?topic=u%FF",
            FORM,
            b"data=x",
        ),
        (
            "raw event in the URL %FF",
            "/publish?topic=u&event=%FF",
            None,
            b"x",
        ),
        (
            "raw with an unknown URL parameter %FF",
            "/publish?topic=u&x=%FF",
            None,
            b"x",
        ),
        (
            "JSON lone surrogate in data",
            "/publish",
            JSON,
            br#"{"topic":"u","data":"\ud800"}"#,
        ),
        (
            "JSON lone surrogate in event",
            "/publish",
            JSON,
            br#"{"topic":"u","event":"\udc00","data":"x"}"#,
        ),
    ];
    for (case, target, content_type, body) in cases {
        let response = post(addr, target, content_type, body);
        assert_error(&response, 400, case);
    }
    // Subscriptions: topic and lastEventId are decoded as strictly.
    for target in [
        "/events?topic=u%FF",
        "/events?topic=u&lastEventId=%FF",
        "/events?topic=u&lastEventId=1%0A2",
        "/events?topic=u&lastEventId=%00",
    ] {
        let response = get(addr, target);
        assert_error(&response, 400, target);
    }
    // Valid UTF-8 in every place still works.
    let id = publish_form(
        addr,
        &[
            ("topic", "u"),
            ("event", "\u{e9}t\u{e9}"),
            ("data", "\u{20ac}"),
        ],
    );
    let event = subscriber.next_event("the UTF-8 event");
    assert_eq!(
        (
            event.event_type.as_str(),
            event.data.as_str(),
            event.last_event_id
        ),
        ("\u{e9}t\u{e9}", "\u{20ac}", id)
    );
    publish_form(addr, &[("topic", "u"), ("data", "end")]);
    assert_eq!(
        subscriber.events_before("end"),
        vec![],
        "nothing refused was published"
    );
}

#[test]
fn redis_stream_entries_pass_the_checks_http_publishes_pass() {
    let redis = RedisServer::start("publish-checks");
    let url = redis.url();
    let server = start(move |config| {
        config.bus = BusKind::Redis;
        config.redis_url = url;
        config.redis_stream = "checks".into();
    });
    let handle = server.handle();
    wait_until("the node reads the stream", || {
        let _ = handle.publish(&Event::new("warmup", "x"));
        handle.stats().events_published > 0
    });
    let mut subscriber = subscribe(server.local_addr(), &["s"]);
    let mut redis_conn = redis.client();
    let invalid: [&[(&str, &str)]; 5] = [
        &[
            ("topic", "s"),
            ("retry", "86400001"),
            ("data", "over a day"),
        ],
        &[("topic", "s"), ("retry", "+5"), ("data", "signed retry")],
        &[
            ("topic", "s"),
            ("retry", "4294967296"),
            ("data", "u32 overflow"),
        ],
        &[("topic", "s"), ("event", "gap"), ("data", "the gap name")],
        &[
            ("topic", "s"),
            ("event", "a\u{0}b"),
            ("data", "NUL in the name"),
        ],
    ];
    for fields in invalid {
        redis_conn.xadd("checks", fields);
    }
    let after = redis_conn.xadd(
        "checks",
        &[("topic", "s"), ("retry", "86400000"), ("data", "after")],
    );
    let events = subscriber.events_before("after");
    assert_eq!(events, vec![], "entries that HTTP would refuse are skipped");
    assert_eq!(subscriber.last_event_id(), after);
    assert_eq!(subscriber.retry_ms(), Some(86_400_000));
}
