#![allow(clippy::unwrap_used)]
//! Every bad request gets its exact status and the common error shape (`text/plain;
//! charset=utf-8`, `Content-Length`, one line ending in `\n`); the connection is closed where
//! the spec says so; and the server keeps serving afterwards.
//!
//! - [`routing_and_heads`]: unknown paths (404), wrong methods (405), malformed request
//!   lines and headers (400), heads over the size and header-count limits (431), `Host`.
//! - [`framing`]: message framing: `Content-Length` with `Transfer-Encoding`, conflicting or
//!   non-numeric lengths, a GET with a body, `Expect` other than `100-continue` (417).
//! - [`topics`]: `/events` without a topic, with invalid or too many topics, the allowed
//!   characters and length limits of topic names.
//! - [`publish`]: refused publishes (400), other content types (415), oversized bodies (413),
//!   missing `Content-Length` (411).
//! - [`access_and_recovery`]: publish without the right bearer token (401) or on the main
//!   listener when `--publish-listen` is set (403); a subscriber is undisturbed by a stream
//!   of bad requests.
//! - [`header_values`]: header values read exactly as the RFCs write them (issue 10, item 17).

use std::net::SocketAddr;

use crate::common::*;
use herald::Event;

mod access_and_recovery;
mod framing;
mod header_values;
mod publish;
mod routing_and_heads;
mod topics;

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

fn post_raw(target: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    post_request(target, content_type, body, &[])
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
const JSON: Option<&str> = Some("application/json");
const TEXT: Option<&str> = Some("text/plain");
