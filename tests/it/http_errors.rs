#![allow(clippy::unwrap_used)]
//! Every bad request gets its exact status and the common error shape (`text/plain;
//! charset=utf-8`, `Content-Length`, one line ending in `\n`); the connection is closed where
//! the spec says so; and the server keeps serving afterwards.

use std::net::SocketAddr;

use crate::common::*;
use herald::Event;

/// Sends `request` on a new connection, checks the answer is an error with `status`, that the
/// connection is then closed when `closed`, and that the server still serves /healthz.
fn check(addr: SocketAddr, case: &str, request: &[u8], status: u16, closed: bool) -> Response {
    let mut conn = Conn::connect(addr);
    conn.send_may_be_cut(request);
    let response = conn.read_response(&format!("the answer to {case}"));
    assert_error(&response, status, case);
    if closed {
        conn.expect_closed(&format!("the {status} answer to {case}"));
    }
    assert_healthy(addr, case);
    response
}

fn raw(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    build_request(method, target, headers, body)
}

// --- Routing -------------------------------------------------------------------------------

#[test]
fn unknown_paths_are_404() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for target in [
        "/nope",
        "/eventsx",
        "/events/extra",
        "/publish/x",
        "/healthz/x",
        "/index.html",
    ] {
        check(
            addr,
            &format!("GET {target}"),
            &raw("GET", target, &[], b""),
            404,
            false,
        );
    }
    let body = b"x";
    check(
        addr,
        "POST /nope",
        &raw("POST", "/nope?topic=a", &[], body),
        404,
        false,
    );
}

#[test]
fn wrong_methods_are_405_with_allow() {
    let server = start(|config| config.demo = true);
    let addr = server.local_addr();
    let cases: [(&str, &str, &str); 8] = [
        ("POST", "/events?topic=a", "GET, OPTIONS"),
        ("PUT", "/events?topic=a", "GET, OPTIONS"),
        ("DELETE", "/events?topic=a", "GET, OPTIONS"),
        ("GET", "/publish?topic=a", "POST, OPTIONS"),
        ("PUT", "/publish?topic=a", "POST, OPTIONS"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/healthz", "GET, HEAD"),
        ("POST", "/", "GET, HEAD"),
    ];
    for (method, target, allow) in cases {
        let headers: &[(&str, &str)] = if method == "GET" {
            &[]
        } else {
            &[("Content-Length", "0")]
        };
        let case = format!("{method} {target}");
        let response = check(addr, &case, &raw(method, target, headers, b""), 405, false);
        assert_eq!(
            response.header("allow"),
            Some(allow),
            "{case}: Allow header; {}",
            response.summary()
        );
    }
}

// --- Malformed heads -----------------------------------------------------------------------

#[test]
fn malformed_request_lines_and_headers_are_400_and_closed() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let cases: [(&str, &[u8]); 6] = [
        ("binary garbage", b"\x00\x01\x02\x03\r\n\r\n"),
        (
            "a control character in the method",
            b"G\x01T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "a header without a colon",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        ),
        (
            "a header with an empty name",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n: no-name\r\n\r\n",
        ),
        (
            "a header value with a NUL",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Test: a\x00b\r\n\r\n",
        ),
        (
            "a space inside a header name",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX Test: a\r\n\r\n",
        ),
    ];
    for (case, request) in cases {
        check(addr, case, request, 400, true);
    }
}

#[test]
fn request_line_whose_version_is_not_http_is_400_and_closed() {
    // `REQUEST` is not an HTTP-version at all (not a well-formed but unsupported one), so the
    // request line is malformed.
    let server = start(|_| {});
    let addr = server.local_addr();
    check(
        addr,
        "the request line `NOT A REQUEST`",
        b"NOT A REQUEST\r\n\r\n",
        400,
        true,
    );
    check(
        addr,
        "a space inside the target (`GET /health z HTTP/1.1`)",
        b"GET /health z HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        true,
    );
}

#[test]
fn head_over_max_head_bytes_is_431_and_closed() {
    let server = start(|config| config.max_head_bytes = 1024);
    let addr = server.local_addr();
    let big = "a".repeat(2000);
    check(
        addr,
        "a 2 KB header with max_head_bytes = 1024",
        &raw("GET", "/healthz", &[("X-Big", &big)], b""),
        431,
        true,
    );
    // A head that never ends but fills the buffer.
    let mut endless = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
    while endless.len() <= 1100 {
        endless.extend_from_slice(b"X-Filler: 0123456789\r\n");
    }
    check(
        addr,
        "an unterminated head past max_head_bytes",
        &endless,
        431,
        true,
    );
}

fn head_of_length(target_len: usize) -> Vec<u8> {
    let base = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: \r\n\r\n".len();
    let pad = "p".repeat(target_len - base);
    let head =
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {pad}\r\n\r\n");
    assert_eq!(head.len(), target_len);
    head.into_bytes()
}

#[test]
fn head_of_exactly_max_head_bytes_is_accepted_one_more_is_431() {
    let server = start(|config| config.max_head_bytes = 1024);
    let addr = server.local_addr();
    let response = exchange(addr, head_of_length(1024));
    assert_eq!(
        (response.status, response.body_text()),
        (200, "ok\n"),
        "a 1024-byte head with max_head_bytes = 1024: {}",
        response.summary()
    );
    check(
        addr,
        "a 1025-byte head with max_head_bytes = 1024",
        &head_of_length(1025),
        431,
        true,
    );
}

fn request_with_headers(total: usize) -> Vec<u8> {
    let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 2..total {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[test]
fn sixty_four_headers_are_accepted_sixty_five_are_431_and_closed() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let response = exchange(addr, request_with_headers(64));
    assert_eq!(
        (response.status, response.body_text()),
        (200, "ok\n"),
        "64 headers: {}",
        response.summary()
    );
    check(addr, "65 headers", &request_with_headers(65), 431, true);
    check(addr, "100 headers", &request_with_headers(100), 431, true);
}

#[test]
fn http_1_1_without_host_is_400_but_http_1_0_needs_none() {
    let server = start(|_| {});
    let addr = server.local_addr();
    check(
        addr,
        "HTTP/1.1 without Host",
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
        400,
        false,
    );
    let response = exchange(addr, "GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(
        (response.status, response.body_text()),
        (200, "ok\n"),
        "HTTP/1.0 without Host: {}",
        response.summary()
    );
}

// --- Message framing -------------------------------------------------------------------------

#[test]
fn content_length_with_transfer_encoding_is_400_and_closed() {
    let server = start(|_| {});
    check(
        server.local_addr(),
        "Content-Length and Transfer-Encoding",
        &raw(
            "POST",
            "/publish?topic=a",
            &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        400,
        true,
    );
}

#[test]
fn two_different_content_lengths_are_400_and_closed() {
    let server = start(|_| {});
    check(
        server.local_addr(),
        "Content-Length 5 and 6",
        &raw(
            "POST",
            "/publish?topic=a",
            &[("Content-Length", "5"), ("Content-Length", "6")],
            b"hello!",
        ),
        400,
        true,
    );
}

#[test]
fn non_numeric_content_length_is_400_and_closed() {
    let server = start(|_| {});
    for value in ["abc", "-1", "1.5", "12a", "0x10", "+5", ""] {
        check(
            server.local_addr(),
            &format!("Content-Length {value:?}"),
            &raw(
                "POST",
                "/publish?topic=a",
                &[("Content-Length", value), ("Content-Type", "text/plain")],
                b"hello",
            ),
            400,
            true,
        );
    }
}

#[test]
fn get_with_a_body_is_400_and_closed() {
    let server = start(|_| {});
    let addr = server.local_addr();
    check(
        addr,
        "GET /healthz with Content-Length 5",
        &raw("GET", "/healthz", &[("Content-Length", "5")], b"hello"),
        400,
        true,
    );
    check(
        addr,
        "GET /events with Content-Length 2",
        &raw("GET", "/events?topic=a", &[("Content-Length", "2")], b"hi"),
        400,
        true,
    );
    // A zero Content-Length on a GET is fine.
    let response = exchange(
        addr,
        raw(
            "GET",
            "/healthz",
            &[("Content-Length", "0"), ("Connection", "close")],
            b"",
        ),
    );
    assert_eq!(
        response.status,
        200,
        "GET with Content-Length 0: {}",
        response.summary()
    );
}

#[test]
fn expect_other_than_100_continue_is_417() {
    let server = start(|_| {});
    check(
        server.local_addr(),
        "Expect: 200-ok",
        &raw(
            "POST",
            "/publish?topic=a",
            &[("Content-Length", "0"), ("Expect", "200-ok")],
            b"",
        ),
        417,
        false,
    );
}

// --- /events ---------------------------------------------------------------------------------

#[test]
fn events_without_topic_is_400() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for target in [
        "/events",
        "/events?",
        "/events?other=1",
        "/events?lastEventId=1-1",
    ] {
        check(
            addr,
            &format!("GET {target}"),
            &raw("GET", target, &[], b""),
            400,
            false,
        );
    }
}

#[test]
fn events_with_an_invalid_topic_is_400() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let too_long = "t".repeat(129);
    for topic in [
        "",
        "a b",
        "café",
        "a!b",
        "a#b",
        "a\"b",
        "a,b",
        "a\nb",
        too_long.as_str(),
    ] {
        let target = events_target(&["ok", topic], None);
        check(
            addr,
            &format!("GET {target}"),
            &raw("GET", &target, &[], b""),
            400,
            false,
        );
    }
}

#[test]
fn every_allowed_topic_character_and_the_longest_name_are_accepted() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let longest = "L".repeat(128);
    let special = "AZaz09_-.:/@~";
    let mut subscriber = subscribe(addr, &[special, &longest]);
    let id = publish_form(
        addr,
        &[("topic", special), ("topic", &longest), ("data", "ok")],
    );
    let event = subscriber.next_event("the event on the special topics");
    assert_eq!(
        (event.data.as_str(), event.last_event_id.as_str()),
        ("ok", id.as_str())
    );
}

#[test]
fn max_topic_bytes_is_configurable() {
    let server = start(|config| config.max_topic_bytes = 4);
    let addr = server.local_addr();
    subscribe(addr, &["abcd"]);
    let target = events_target(&["abcde"], None);
    check(
        addr,
        "a 5-byte topic with max_topic_bytes = 4",
        &raw("GET", &target, &[], b""),
        400,
        false,
    );
}

#[test]
fn events_with_too_many_topics_is_400() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let names: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
    let topics: Vec<&str> = names.iter().map(String::as_str).collect();
    subscribe(addr, &topics[..16]);
    let target = events_target(&topics, None);
    check(
        addr,
        "GET /events with 17 topics",
        &raw("GET", &target, &[], b""),
        400,
        false,
    );

    let server = start(|config| config.max_topics_per_subscription = 2);
    let addr = server.local_addr();
    subscribe(addr, &topics[..2]);
    let target = events_target(&topics[..3], None);
    check(
        addr,
        "GET /events with 3 topics and max_topics_per_subscription = 2",
        &raw("GET", &target, &[], b""),
        400,
        false,
    );
}

// --- /publish --------------------------------------------------------------------------------

fn post_raw(target: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    post_request(target, content_type, body, &[])
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
const JSON: Option<&str> = Some("application/json");
const TEXT: Option<&str> = Some("text/plain");

#[test]
fn refused_publishes_are_400_and_publish_nothing() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["a", "ok"]);
    let seventeen: String = (0..17).map(|i| format!("topic=t{i}&")).collect();
    let seventeen_json: Vec<String> = (0..17).map(|i| format!("\"t{i}\"")).collect();
    let seventeen_json = format!(
        "{{\"topic\":[{}],\"data\":\"x\"}}",
        seventeen_json.join(",")
    );
    let cases: Vec<(&str, String, Option<&str>, Vec<u8>)> = vec![
        (
            "raw body without topic",
            "/publish".into(),
            TEXT,
            b"x".to_vec(),
        ),
        (
            "raw body without content type or topic",
            "/publish".into(),
            None,
            b"x".to_vec(),
        ),
        (
            "form without topic",
            "/publish".into(),
            FORM,
            b"data=x".to_vec(),
        ),
        (
            "JSON without topic",
            "/publish".into(),
            JSON,
            br#"{"data":"x"}"#.to_vec(),
        ),
        (
            "JSON with an empty topic array",
            "/publish".into(),
            JSON,
            br#"{"topic":[],"data":"x"}"#.to_vec(),
        ),
        (
            "raw body with a bad topic",
            "/publish?topic=a%20b".into(),
            TEXT,
            b"x".to_vec(),
        ),
        (
            "raw body with an empty topic",
            "/publish?topic=".into(),
            TEXT,
            b"x".to_vec(),
        ),
        (
            "form with a bad topic",
            "/publish".into(),
            FORM,
            b"topic=a&topic=no%21&data=x".to_vec(),
        ),
        (
            "JSON with a bad topic",
            "/publish".into(),
            JSON,
            br#"{"topic":"a b","data":"x"}"#.to_vec(),
        ),
        (
            "JSON with a bad topic in an array",
            "/publish".into(),
            JSON,
            br#"{"topic":["a","b!"],"data":"x"}"#.to_vec(),
        ),
        (
            "JSON with a too long topic",
            "/publish".into(),
            JSON,
            format!("{{\"topic\":\"{}\",\"data\":\"x\"}}", "t".repeat(129)).into_bytes(),
        ),
        (
            "raw body with 17 topics",
            format!("/publish?{seventeen}"),
            TEXT,
            b"x".to_vec(),
        ),
        (
            "form with 17 topics",
            "/publish".into(),
            FORM,
            format!("{seventeen}data=x").into_bytes(),
        ),
        (
            "JSON with 17 topics",
            "/publish".into(),
            JSON,
            seventeen_json.into_bytes(),
        ),
        (
            "form with an unknown field",
            "/publish".into(),
            FORM,
            b"topic=a&data=x&colour=red".to_vec(),
        ),
        (
            "form without data",
            "/publish".into(),
            FORM,
            b"topic=a&event=e".to_vec(),
        ),
        (
            "JSON with an unknown key",
            "/publish".into(),
            JSON,
            br#"{"topic":"a","data":"x","colour":"red"}"#.to_vec(),
        ),
        (
            "JSON without data",
            "/publish".into(),
            JSON,
            br#"{"topic":"a","event":"e"}"#.to_vec(),
        ),
        (
            "invalid JSON (truncated)",
            "/publish".into(),
            JSON,
            br#"{"topic":"a","data":"#.to_vec(),
        ),
        (
            "invalid JSON (not JSON)",
            "/publish".into(),
            JSON,
            b"topic=a&data=x".to_vec(),
        ),
        (
            "invalid JSON (trailing garbage)",
            "/publish".into(),
            JSON,
            br#"{"topic":"a","data":"x"} x"#.to_vec(),
        ),
        ("empty JSON body", "/publish".into(), JSON, b"".to_vec()),
        (
            "non-UTF-8 raw body",
            "/publish?topic=a".into(),
            TEXT,
            b"bad \xFF\xFE bytes".to_vec(),
        ),
        (
            "non-UTF-8 octet-stream body",
            "/publish?topic=a".into(),
            Some("application/octet-stream"),
            b"\xC3\x28".to_vec(),
        ),
        (
            "non-UTF-8 raw body without content type",
            "/publish?topic=a".into(),
            None,
            b"\x80".to_vec(),
        ),
    ];
    for (case, target, content_type, body) in cases {
        check(
            addr,
            case,
            &post_raw(&target, content_type, &body),
            400,
            false,
        );
    }
    let id = publish_form(addr, &[("topic", "ok"), ("data", "end")]);
    let events = subscriber.events_before("end");
    assert_eq!(
        events,
        vec![],
        "refused publishes must not publish anything"
    );
    assert_eq!(subscriber.last_event_id(), id);
}

#[test]
fn other_content_types_are_415() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for content_type in [
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "text/html",
        "image/png",
    ] {
        check(
            addr,
            &format!("publish with Content-Type {content_type}"),
            &post_raw("/publish?topic=a", Some(content_type), b"--xyz--\r\n"),
            415,
            false,
        );
    }
}

#[test]
fn body_over_max_publish_bytes_is_413_and_closed() {
    let server = start(|config| config.max_publish_bytes = 1024);
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["a"]);
    let fits = "f".repeat(1024);
    let response = post(addr, "/publish?topic=a", TEXT, fits.as_bytes());
    assert_eq!(
        response.status,
        200,
        "a body of exactly max_publish_bytes: {}",
        response.summary()
    );
    let too_big = "b".repeat(1025);
    check(
        addr,
        "a raw body of max_publish_bytes + 1",
        &post_raw("/publish?topic=a", TEXT, too_big.as_bytes()),
        413,
        true,
    );
    let form_body = format!("topic=a&data={}", "b".repeat(1100));
    check(
        addr,
        "a form body over max_publish_bytes",
        &post_raw("/publish", FORM, form_body.as_bytes()),
        413,
        true,
    );
    publish_form(addr, &[("topic", "a"), ("data", "end")]);
    assert_eq!(subscriber.next_event("the fitting event").data, fits);
    assert_eq!(subscriber.events_before("end"), vec![]);
}

#[test]
fn post_without_content_length_is_411() {
    let server = start(|_| {});
    check(
        server.local_addr(),
        "POST /publish without Content-Length",
        b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\r\n",
        411,
        false,
    );
}

#[test]
fn transfer_encoding_without_content_length_is_411_and_closed() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for encoding in ["chunked", "gzip", "gzip, chunked", "identity"] {
        check(
            addr,
            &format!("Transfer-Encoding: {encoding} without Content-Length"),
            &raw(
                "POST",
                "/publish?topic=a",
                &[
                    ("Transfer-Encoding", encoding),
                    ("Content-Type", "text/plain"),
                ],
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            411,
            true,
        );
    }
}

// --- Access ----------------------------------------------------------------------------------

#[test]
fn publish_without_the_right_bearer_token_is_401() {
    let server = start(|config| config.publish_token = Some("s3cret-token".to_owned()));
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["a"]);
    let wrong: [(&str, Option<&str>); 6] = [
        ("no Authorization", None),
        ("a wrong token", Some("Bearer wrong-token")),
        ("a token prefix", Some("Bearer s3cret")),
        ("a longer token", Some("Bearer s3cret-token-x")),
        ("Basic credentials", Some("Basic czNjcmV0LXRva2Vu")),
        ("Bearer without a token", Some("Bearer")),
    ];
    for (case, authorization) in wrong {
        let extra: Vec<(&str, &str)> = authorization
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        let response = check(
            addr,
            &format!("publish with {case}"),
            &post_request("/publish?topic=a", TEXT, b"refused", &extra),
            401,
            false,
        );
        let challenge = response.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer"),
            "publish with {case}: WWW-Authenticate must be Bearer, got {:?}",
            response.summary()
        );
    }
    let response = exchange(
        addr,
        post_request(
            "/publish?topic=a",
            TEXT,
            b"end",
            &[("Authorization", "Bearer s3cret-token")],
        ),
    );
    assert_eq!(
        response.status,
        200,
        "publish with the right token: {}",
        response.summary()
    );
    assert_eq!(
        subscriber.events_before("end"),
        vec![],
        "refused publishes published nothing"
    );
}

#[test]
fn publish_on_the_main_listener_is_403_when_publish_listen_is_set() {
    let server = start(|config| config.publish_listen = Some("127.0.0.1:0".parse().unwrap()));
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["a"]);
    check(
        addr,
        "raw publish on the main listener",
        &post_raw("/publish?topic=a", TEXT, b"no"),
        403,
        false,
    );
    check(
        addr,
        "form publish on the main listener",
        &post_raw("/publish", FORM, b"topic=a&data=no"),
        403,
        false,
    );
    let private = server.publish_addr().unwrap();
    let response = post(private, "/publish?topic=a", TEXT, b"end");
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(subscriber.events_before("end"), vec![]);
}

// --- The server keeps serving ----------------------------------------------------------------

#[test]
fn a_subscriber_is_undisturbed_by_a_stream_of_bad_requests() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let handle = server.handle();
    let mut subscriber = subscribe(addr, &["calm"]);
    let first = publish(&handle, &Event::new("calm", "before"));
    for request in [
        &b"\x00\x01\x02\x03\r\n\r\n"[..],
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ] {
        let mut conn = Conn::connect(addr);
        conn.send_may_be_cut(request);
        let response = conn.read_response("an error answer");
        assert!(
            (400..500).contains(&response.status),
            "{:?}: {}",
            String::from_utf8_lossy(request),
            response.summary()
        );
    }
    let second = publish(&handle, &Event::new("calm", "after"));
    let events = subscriber.events(2);
    assert_eq!(
        events
            .iter()
            .map(|e| (e.data.as_str(), e.last_event_id.as_str()))
            .collect::<Vec<_>>(),
        vec![("before", first.as_str()), ("after", second.as_str())]
    );
    assert_healthy(addr, "a stream of bad requests");
}

// --- Header values read exactly as the RFCs write them (issue 10, item 17) -------------------

/// A publish of `hello` with the given headers, `Connection: close` unless given.
fn publish_hello(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut all = vec![("Content-Type", "text/plain")];
    all.extend_from_slice(headers);
    raw("POST", "/publish?topic=a", &all, b"hello")
}

#[test]
fn content_length_is_digits_with_only_spaces_or_tabs_around() {
    // `str::trim` took U+00A0 for whitespace: a proxy in front that does not would frame the
    // body differently (request smuggling).
    let server = start(|_| {});
    let addr = server.local_addr();
    for value in [
        "5\u{a0}",
        "\u{a0}5",
        "5\u{2003}",
        "5\u{feff}",
        "\u{3000}5",
        "+5",
        "5,6",
        "5, 6",
        "5,",
        ",5",
        "5,,5",
        "5 5",
        "5;",
        "0x5",
        "18446744073709551621",
    ] {
        check(
            addr,
            &format!("Content-Length {value:?}"),
            &publish_hello(&[("Content-Length", value)]),
            400,
            true,
        );
    }
    // Spaces and tabs around the digits, leading zeros, and a list of one value repeated
    // (RFC 9110 section 8.6) are the length 5.
    for value in ["5", " 5", "5\t", "\t5 ", "005", "5,5", "5, 5", "5 ,\t5"] {
        let response = exchange(
            addr,
            publish_hello(&[("Content-Length", value), ("Connection", "close")]),
        );
        assert_eq!(
            response.status,
            200,
            "Content-Length {value:?}: {}",
            response.summary()
        );
    }
}

#[test]
fn an_unsupported_version_after_empty_lines_is_505_like_without_them() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for (case, request) in [
        ("CRLF", &b"\r\nGET /healthz HTTP/2.0\r\nHost: x\r\n\r\n"[..]),
        ("LF", b"\nGET /healthz HTTP/3.0\r\nHost: x\r\n\r\n"),
        (
            "two CRLFs",
            b"\r\n\r\nGET /healthz HTTP/1.2\r\nHost: x\r\n\r\n",
        ),
    ] {
        check(
            addr,
            &format!("{case} before an HTTP/2.0 request line"),
            request,
            505,
            true,
        );
    }
    let response = exchange(
        addr,
        "\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        response.status,
        200,
        "an empty line before a good request is ignored: {}",
        response.summary()
    );
}

#[test]
fn host_must_be_given_once_and_be_a_host() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for (case, hosts) in [
        ("two Host lines", &["a", "b"][..]),
        ("two equal Host lines", &["a", "a"]),
        ("a space in Host", &["a b"]),
        ("a no-break space after Host", &["a\u{a0}"]),
        ("a path in Host", &["a/b"]),
        ("userinfo in Host", &["user@a"]),
        ("a query in Host", &["a?b"]),
    ] {
        let headers: Vec<(&str, &str)> = hosts.iter().map(|h| ("Host", *h)).collect();
        check(
            addr,
            case,
            &raw("GET", "/healthz", &headers, b""),
            400,
            true,
        );
    }
    for host in [
        "",
        "herald.test",
        "127.0.0.1:8080",
        "[::1]:8080",
        "xn--bcher-kva.example",
    ] {
        let request = raw(
            "GET",
            "/healthz",
            &[("Host", host), ("Connection", "close")],
            b"",
        );
        let response = exchange(addr, request);
        assert_eq!(
            response.status,
            200,
            "Host {host:?}: {}",
            response.summary()
        );
    }
}

#[test]
fn headers_herald_reads_once_are_400_when_repeated() {
    let server = start(|config| config.cors_origins = vec!["https://a.example".to_owned()]);
    let addr = server.local_addr();
    for (name, first, second) in [
        ("Content-Type", "text/plain", "application/json"),
        ("Origin", "https://a.example", "https://b.example"),
        ("Last-Event-ID", "1-1", "2-1"),
        ("Authorization", "Bearer a", "Bearer b"),
    ] {
        check(
            addr,
            &format!("two {name} headers"),
            &publish_hello(&[(name, first), (name, second)]),
            400,
            true,
        );
    }
}

#[test]
fn unicode_space_is_not_trimmed_from_content_type_origin_or_last_event_id() {
    let server = start(|config| config.cors_origins = vec!["https://a.example".to_owned()]);
    let addr = server.local_addr();
    // A media type with U+00A0 after it is no media type herald reads.
    check(
        addr,
        "Content-Type application/json + U+00A0",
        &post_raw(
            "/publish",
            Some("application/json\u{a0}"),
            br#"{"topic":"a","data":"x"}"#,
        ),
        415,
        false,
    );
    // Spaces and tabs around it are optional whitespace.
    let response = post(
        addr,
        "/publish",
        Some("\tapplication/json ; charset=utf-8"),
        br#"{"topic":"a","data":"x"}"#,
    );
    assert_eq!(response.status, 200, "{}", response.summary());
    // An unreadable Content-Type is refused, not taken for "none" (a raw body).
    let mut request =
        b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n".to_vec();
    request.extend_from_slice(b"Content-Type: text/plain\xff\r\n\r\nx");
    check(
        addr,
        "a Content-Type that is not UTF-8",
        &request,
        400,
        true,
    );
    let mut request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
    request.extend_from_slice(b"Origin: https://a.example\xff\r\n\r\n");
    check(addr, "an Origin that is not UTF-8", &request, 400, true);
    // An Origin with U+00A0 after it is not the allowed origin.
    let response = exchange(
        addr,
        raw(
            "GET",
            "/healthz",
            &[
                ("Origin", "https://a.example\u{a0}"),
                ("Connection", "close"),
            ],
            b"",
        ),
    );
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(
        response.header("access-control-allow-origin"),
        None,
        "an origin with U+00A0 after it is not allowed"
    );
    // A Last-Event-ID with U+00A0 after it is not the id: the resume reports a gap.
    let handle = server.handle();
    let first = publish(&handle, &Event::new("lei", "one"));
    publish(&handle, &Event::new("lei", "two"));
    let mut subscriber = Subscriber::open(
        addr,
        "/events?topic=lei",
        &[("Last-Event-ID", &format!("{first}\u{a0}"))],
    );
    let event = subscriber.next_event("the answer to a Last-Event-ID with U+00A0");
    assert_eq!(event.event_type, "gap", "{event:?}");
    // `Expect` is compared exactly too (it already was).
    check(
        addr,
        "Expect 100-continue + U+00A0",
        &publish_hello(&[("Expect", "100-continue\u{a0}")]),
        417,
        true,
    );
}
