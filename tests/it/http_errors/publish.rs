//! `/publish` errors: refused publishes (400) publish nothing, other content types are 415,
//! a body over `max_publish_bytes` is 413 and closed, no `Content-Length` is 411.

use super::*;

// --- /publish --------------------------------------------------------------------------------

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
