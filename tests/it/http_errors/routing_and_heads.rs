//! Routing errors (404, 405 with `Allow`) and malformed request heads: bad request lines
//! and headers, versions, heads over `max_head_bytes` or 64 headers (431), and `Host`.

use super::*;

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
