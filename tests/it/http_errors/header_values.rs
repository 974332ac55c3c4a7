//! Header values read exactly as the RFCs write them (issue 10, item 17): `Content-Length`
//! digits and whitespace, versions after empty lines, `Host` once, headers herald reads once,
//! and Unicode space that is not trimmed.

use super::*;

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
