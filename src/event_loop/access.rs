//! The access log (`--access-log`): one `info` line under the `herald::access` target per
//! answered request (taken from the exchange after each step) and per closed stream (its
//! line is kept in the connection's slot from its opening, with the bytes written to it).
//! Nothing here runs when the access log is off: the loop checks one flag first.

use crate::conn::access::{Answered, RequestLine};
use crate::logging::ACCESS_TARGET;

/// What the access log keeps of an open stream.
pub(super) struct StreamAccess {
    /// The request that opened it.
    pub line: RequestLine,
    /// Bytes written to it so far (head, events, heartbeats, the parting `retry:`).
    pub bytes: u64,
}

/// Milliseconds from the request's head to loop time `now_ms` (0 without a head).
fn duration_ms(line: &RequestLine, now_ms: u64) -> u64 {
    line.started_ms
        .map_or(0, |started_ms| now_ms.saturating_sub(started_ms))
}

/// Logs an answered request at loop time `now_ms`.
pub(super) fn log_answered(answered: &Answered, now_ms: u64) {
    let line = &answered.line;
    tracing::info!(
        target: ACCESS_TARGET,
        client = %line.client,
        method = line.method,
        path = &*line.path,
        status = u64::from(answered.status),
        bytes = answered.bytes as u64,
        duration_ms = duration_ms(line, now_ms),
        topics = &*line.topics,
        "request"
    );
}

/// Logs a stream that closed at loop time `now_ms` for the reason named `close`.
pub(super) fn log_stream(access: &StreamAccess, close: &str, now_ms: u64) {
    let line = &access.line;
    tracing::info!(
        target: ACCESS_TARGET,
        client = %line.client,
        method = line.method,
        path = &*line.path,
        status = 200u64,
        bytes = access.bytes,
        duration_ms = duration_ms(line, now_ms),
        topics = &*line.topics,
        close,
        "stream"
    );
}
