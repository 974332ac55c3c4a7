//! Message framing errors: `Content-Length` with `Transfer-Encoding`, two different or
//! non-numeric lengths, a GET with a body (400 and closed), and `Expect` other than
//! `100-continue` (417).

use super::*;

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
