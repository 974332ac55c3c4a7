//! Unit tests of the head module.

use super::*;

fn complete(raw: &str) -> Request<'_> {
    match parse(raw.as_bytes(), false) {
        Ok(Parsed::Complete(request)) => request,
        other => panic!("{raw:?} gave {other:?}"),
    }
}

fn error(raw: &str) -> HttpError {
    match parse(raw.as_bytes(), false) {
        Err(error) => error,
        other => panic!("{raw:?} gave {other:?}"),
    }
}

#[test]
fn every_truncation_needs_more() {
    let raw = "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 5-1\r\n\r\n";
    for end in 0..raw.len() {
        assert!(
            matches!(parse(&raw.as_bytes()[..end], false), Ok(Parsed::NeedMore)),
            "prefix of {end} bytes"
        );
    }
    let request = complete(raw);
    assert_eq!(request.method, Method::Get);
    assert_eq!((request.path, request.query), ("/events", "topic=a"));
    assert_eq!(request.last_event_id, Some("5-1"));
    assert_eq!(request.head_len, raw.len());
    assert!(request.keep_alive);
}

#[test]
fn full_partial_head_is_too_large() {
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\nX: aaaa", true).unwrap_err(),
        HttpError::HeadTooLarge
    );
}

#[test]
fn framing_rules() {
    let ok = complete(
        "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    );
    assert_eq!((ok.content_length, ok.has_content_length), (5, true));
    let table = [
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            HttpError::AmbiguousFraming,
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            HttpError::BadContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            HttpError::BadContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            HttpError::BadContentLength,
        ),
        ("GET / HTTP/1.1\r\n\r\n", HttpError::MissingHost),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n",
            HttpError::ExpectationFailed,
        ),
        (
            "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            HttpError::VersionNotSupported,
        ),
        ("GET /\r\n\r\n", HttpError::MalformedHead),
        ("NOT A REQUEST\r\n\r\n", HttpError::MalformedHead),
        (
            "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            HttpError::MalformedHead,
        ),
        ("G\0T / HTTP/1.1\r\n\r\n", HttpError::MalformedHead),
    ];
    for (raw, expected) in table {
        assert_eq!(error(raw), expected, "{raw:?}");
    }
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..HEADERS_MAX {
        many.push_str(&format!("X-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(error(&many), HttpError::TooManyHeaders);
}

#[test]
fn content_length_values() {
    let head =
        |value: &str| format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n");
    for (value, length) in [
        ("5", 5),
        ("005", 5),
        ("\t5 ", 5),
        ("5,5", 5),
        ("5 , 5,\t5", 5),
        ("0", 0),
        ("18446744073709551615", usize::MAX),
    ] {
        let raw = head(value);
        let request = complete(&raw);
        assert_eq!(
            (request.has_content_length, request.content_length),
            (true, length),
            "{value:?}"
        );
    }
    for value in [
        "5\u{a0}",
        "\u{a0}5",
        "5\u{85}",
        "5\u{2028}",
        "5\u{feff}",
        "\u{3000}5",
        "+5",
        "-0",
        "5,6",
        "5,",
        ",5",
        "5,,5",
        "5 5",
        "5;q=1",
        "0x5",
        "5e0",
        "\u{661}",
        "18446744073709551616",
        "",
    ] {
        assert_eq!(
            error(&head(value)),
            HttpError::BadContentLength,
            "{value:?}"
        );
    }
}

#[test]
fn header_values_are_read_exactly() {
    let ok = complete(
        "GET / HTTP/1.1\r\nHost: [::1]:80\r\nOrigin: \thttps://a.example \r\nLast-Event-ID: 5-1\u{a0}\r\nContent-Type: text/plain\u{a0}\r\nExpect: 100-CONTINUE\r\n\r\n",
    );
    assert_eq!(ok.origin, Some("https://a.example"));
    // U+00A0 is part of the value, as a proxy in front reads it.
    assert_eq!(ok.last_event_id, Some("5-1\u{a0}"));
    assert_eq!(ok.content_type, Some("text/plain\u{a0}"));
    assert!(ok.expect_continue);
    assert!(complete("GET / HTTP/1.1\r\nHost:\r\n\r\n").path == "/");
    let table: [(&[u8], HttpError); 14] = [
        (
            b"Host: a\r\nHost: a\r\n",
            HttpError::BadHeader("Host header given twice"),
        ),
        (
            b"Host: a b\r\n",
            HttpError::BadHeader("Host header is not a host[:port]"),
        ),
        (
            b"Host: a/b\r\n",
            HttpError::BadHeader("Host header is not a host[:port]"),
        ),
        (
            b"Host: u@a\r\n",
            HttpError::BadHeader("Host header is not a host[:port]"),
        ),
        (
            b"Host: a\xc2\xa0\r\n",
            HttpError::BadHeader("Host header is not a host[:port]"),
        ),
        (
            b"Host: a\r\nOrigin: x\r\norigin: y\r\n",
            HttpError::BadHeader("Origin header given twice"),
        ),
        (
            b"Host: a\r\nOrigin: \xff\r\n",
            HttpError::BadHeader("Origin header is not UTF-8"),
        ),
        (
            b"Host: a\r\nLast-Event-ID: 1\r\nLast-Event-Id: 1\r\n",
            HttpError::BadHeader("Last-Event-ID header given twice"),
        ),
        (
            b"Host: a\r\nLast-Event-ID: \xff\r\n",
            HttpError::BadHeader("Last-Event-ID header is not UTF-8"),
        ),
        (
            b"Host: a\r\nContent-Type: a\r\nContent-Type: a\r\n",
            HttpError::BadHeader("Content-Type header given twice"),
        ),
        (
            b"Host: a\r\nContent-Type: text/plain\xff\r\n",
            HttpError::BadHeader("Content-Type header is not UTF-8"),
        ),
        (
            b"Host: a\r\nAuthorization: Bearer a\r\nAuthorization: Bearer a\r\n",
            HttpError::BadHeader("Authorization header given twice"),
        ),
        (
            b"Host: a\r\nExpect: 100-continue\xc2\xa0\r\n",
            HttpError::ExpectationFailed,
        ),
        (
            b"Host: a\r\nExpect: 100-continue, x\r\n",
            HttpError::ExpectationFailed,
        ),
    ];
    for (headers, expected) in table {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        raw.extend_from_slice(headers);
        raw.extend_from_slice(b"\r\n");
        assert_eq!(
            parse(&raw, false).unwrap_err(),
            expected,
            "{}",
            String::from_utf8_lossy(&raw)
        );
        assert!(expected.closes(), "{expected:?} must close");
    }
}

#[test]
fn empty_lines_before_the_request_line_are_skipped() {
    for raw in [
        "\r\nGET / HTTP/2.0\r\nHost: x\r\n\r\n",
        "\nGET / HTTP/2.0\r\nHost: x\r\n\r\n",
        "\r\n\n\r\nGET / HTTP/1.2\r\nHost: x\r\n\r\n",
    ] {
        assert_eq!(error(raw), HttpError::VersionNotSupported, "{raw:?}");
        // Every prefix still waits rather than deciding early.
        let line_end = raw.trim_start_matches(['\r', '\n']).find('\r').unwrap();
        let leading = raw.len() - raw.trim_start_matches(['\r', '\n']).len();
        for end in 0..leading + line_end {
            assert!(
                matches!(parse(&raw.as_bytes()[..end], false), Ok(Parsed::NeedMore)),
                "{raw:?}: prefix of {end} bytes"
            );
        }
    }
    assert_eq!(
        error("\r\nGET / HTTX/1.1\r\n\r\n"),
        HttpError::MalformedHead
    );
    let request = complete("\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((request.path, request.head_len), ("/a", 32));
}

#[test]
fn version_answer_does_not_depend_on_reads() {
    // Found by fuzz/head: "HTTP/2" alone was 400 while the whole line was 505.
    let raw = "OPTIONS /events HTTP/2.0\r\nHost: x\r\n\r\n";
    for end in 0..raw.find('\r').unwrap() {
        assert!(
            matches!(parse(&raw.as_bytes()[..end], false), Ok(Parsed::NeedMore)),
            "prefix of {end} bytes"
        );
    }
    assert_eq!(error(raw), HttpError::VersionNotSupported);
    assert_eq!(error("GET / HTTP/2.01\r\n\r\n"), HttpError::MalformedHead);
    assert_eq!(error("GET / HTTX"), HttpError::MalformedHead);
    assert_eq!(
        parse(b"GET / HTTP/2.0", true).unwrap_err(),
        HttpError::HeadTooLarge
    );
}

#[test]
fn keep_alive_by_version() {
    assert!(!complete("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(complete("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    assert!(!complete("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive);
}
