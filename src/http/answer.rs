//! Response bytes: refusals (status plus a one-line plain-text reason), small successful
//! answers, the event-stream head, and CORS headers. Every status herald sends is chosen in
//! [`HttpError::answer`]. No I/O here.

use std::fmt::Write as _;

use crate::auth::TokenError;
use crate::bus::BackfillError;
use crate::event::PublishError;

/// Where an event sits in a batch publish body, as its refusal names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BatchPlace {
    /// A line of an NDJSON body, counted from 1 (blank lines count).
    Line(usize),
    /// An element of a JSON array body, counted from 0.
    Index(usize),
}

impl std::fmt::Display for BatchPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchPlace::Line(line) => write!(f, "line {line}"),
            BatchPlace::Index(index) => write!(f, "index {index}"),
        }
    }
}

/// Everything herald refuses, each with one status and one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HttpError {
    /// httparse rejected the request line or a header.
    MalformedHead,
    /// The head did not fit in `max_head_bytes`.
    HeadTooLarge,
    /// More headers than `HEADERS_MAX`.
    TooManyHeaders,
    /// The head (or body) did not arrive within `head_timeout_ms`.
    HeadTimeout,
    /// Not HTTP/1.0 or HTTP/1.1.
    VersionNotSupported,
    /// HTTP/1.1 without `Host`.
    MissingHost,
    /// Both `Content-Length` and `Transfer-Encoding`.
    AmbiguousFraming,
    /// `Content-Length` unparseable or given twice with different values.
    BadContentLength,
    /// `Transfer-Encoding` (chunked bodies are not accepted) or a POST without a length.
    LengthRequired,
    /// `Expect` other than `100-continue`.
    ExpectationFailed,
    /// A header herald reads is repeated or its value is unreadable; the reason says which.
    BadHeader(&'static str),
    /// A query parameter herald reads could not be decoded; the reason says which.
    BadQuery(&'static str),
    /// A body on a request that takes none.
    UnexpectedBody,
    /// No route for the path.
    NotFound,
    /// The path exists but not with this method; `allow` lists the methods.
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: &'static str,
    },
    /// Publishing is bound to the separate publish listener.
    PublishListenerOnly,
    /// A missing or refused token (subscriber or publisher); the reason says which.
    Unauthorized(TokenError),
    /// A valid token that does not cover the requested topics.
    Forbidden,
    /// The publish body exceeds `max_publish_bytes`.
    BodyTooLarge,
    /// The publish body's content type is not one herald reads.
    UnsupportedMediaType,
    /// `/events` without a `topic` parameter.
    MissingTopic,
    /// A topic name outside the allowed set or length.
    InvalidTopic,
    /// More topics than `max_topics_per_subscription`.
    TooManyTopics,
    /// A publish body or parameter that could not be understood; the reason says which.
    BadPublish(&'static str),
    /// The bus refused the event.
    Publish(PublishError),
    /// One event of a batch publish was refused, so the whole batch is: `status` and
    /// `reason` are that event's own refusal, and the answer names where it sits.
    InBatch {
        /// The refused event's line or array index.
        place: BatchPlace,
        /// The status the event alone would get.
        status: u16,
        /// The reason the event alone would get.
        reason: &'static str,
    },
    /// The server holds `max_connections`.
    ServerFull,
    /// The publish listener holds `max_publish_connections`.
    PublishListenerFull,
    /// The client address holds `max_connections_per_ip`.
    TooManyFromClient,
    /// A resume needs events from the Redis stream and too many such fetches are queued.
    ResumeBusy,
    /// The application (`auth_url` or the `Authorize` hook) answered 401.
    AppUnauthorized,
    /// The application answered 403, or granted topics that do not cover the request.
    AppForbidden,
    /// The application's decision could not be had; the reason says why.
    AuthUnavailable(AuthFailure),
}

/// Why a subscription got no decision from the application (answered `503`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// The authorization queue (`auth_queue`) is full.
    Busy,
    /// The application failed: an error status, an unreadable answer, no connection.
    Failed,
    /// No decision within `auth_timeout_ms`.
    Timeout,
}

impl HttpError {
    /// This refusal of one event of a batch, as the refusal of the whole batch.
    pub(crate) fn in_batch(self, place: BatchPlace) -> HttpError {
        let (status, reason) = self.answer();
        HttpError::InBatch {
            place,
            status,
            reason,
        }
    }

    /// Status code and one-line reason.
    pub(crate) fn answer(self) -> (u16, &'static str) {
        match self {
            HttpError::MalformedHead => (400, "malformed request head"),
            HttpError::HeadTooLarge => (431, "request head exceeds max_head_bytes"),
            HttpError::TooManyHeaders => (431, "too many request headers"),
            HttpError::HeadTimeout => (408, "request not received within head_timeout_ms"),
            HttpError::VersionNotSupported => (505, "only HTTP/1.0 and HTTP/1.1 are supported"),
            HttpError::MissingHost => (400, "HTTP/1.1 request without Host header"),
            HttpError::AmbiguousFraming => {
                (400, "both Content-Length and Transfer-Encoding given")
            }
            HttpError::BadContentLength => (400, "invalid or conflicting Content-Length"),
            HttpError::LengthRequired => (
                411,
                "request body needs Content-Length (Transfer-Encoding is not supported)",
            ),
            HttpError::ExpectationFailed => (417, "only Expect: 100-continue is supported"),
            HttpError::BadHeader(reason) | HttpError::BadQuery(reason) => (400, reason),
            HttpError::UnexpectedBody => (400, "this request takes no body"),
            HttpError::NotFound => (404, "no such path"),
            HttpError::MethodNotAllowed { .. } => (405, "method not allowed for this path"),
            HttpError::PublishListenerOnly => {
                (403, "publishing is only accepted on the publish listener")
            }
            HttpError::Unauthorized(error) => (401, error.reason()),
            HttpError::Forbidden => (403, "token does not allow these topics"),
            HttpError::BodyTooLarge => (413, "request body exceeds max_publish_bytes"),
            HttpError::UnsupportedMediaType => (
                415,
                "content type must be application/x-www-form-urlencoded, application/json, application/x-ndjson, text/plain or application/octet-stream",
            ),
            HttpError::MissingTopic => (400, "missing topic parameter"),
            HttpError::InvalidTopic => (400, PublishError::InvalidTopic.reason()),
            HttpError::TooManyTopics => (400, PublishError::TooManyTopics.reason()),
            HttpError::BadPublish(reason) => (400, reason),
            HttpError::InBatch { status, reason, .. } => (status, reason),
            HttpError::ServerFull => (503, "server is at max_connections; retry later"),
            HttpError::PublishListenerFull => (
                503,
                "publish listener is at max_publish_connections; retry shortly",
            ),
            HttpError::ResumeBusy => (
                503,
                "too many resumes are being fetched from redis; retry shortly",
            ),
            HttpError::AppUnauthorized => (401, "the application did not accept the credentials"),
            HttpError::AppForbidden => (403, "the application does not allow these topics"),
            HttpError::AuthUnavailable(failure) => (
                503,
                match failure {
                    AuthFailure::Busy => "too many subscriptions wait for the application's decision; retry shortly",
                    AuthFailure::Failed => "the application could not decide (its auth endpoint failed); retry shortly",
                    AuthFailure::Timeout => "the application did not decide within auth_timeout_ms; retry shortly",
                },
            ),
            HttpError::TooManyFromClient => {
                (429, "too many connections from this address (max_connections_per_ip)")
            }
            HttpError::Publish(error) => (
                match error {
                    PublishError::Busy
                    | PublishError::ShuttingDown
                    | PublishError::Unavailable
                    | PublishError::NotReplicated => 503,
                    PublishError::TooLarge
                    | PublishError::DataTooLarge
                    | PublishError::BatchTooLarge => 413,
                    _ => 400,
                },
                error.reason(),
            ),
        }
    }

    /// Whether the connection must close after the answer because the request stream can
    /// no longer be trusted (framing unknown, body unread).
    pub(crate) fn closes(self) -> bool {
        matches!(
            self,
            HttpError::MalformedHead
                | HttpError::HeadTooLarge
                | HttpError::TooManyHeaders
                | HttpError::HeadTimeout
                | HttpError::VersionNotSupported
                | HttpError::AmbiguousFraming
                | HttpError::BadContentLength
                | HttpError::LengthRequired
                | HttpError::ExpectationFailed
                | HttpError::BadHeader(_)
                | HttpError::UnexpectedBody
                | HttpError::BodyTooLarge
                | HttpError::ServerFull
                | HttpError::PublishListenerFull
                | HttpError::TooManyFromClient
        )
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

impl From<BackfillError> for HttpError {
    /// A resume whose missed events could not be fetched: 503, with Retry-After unless the
    /// server is shutting down.
    fn from(error: BackfillError) -> Self {
        match error {
            BackfillError::Busy => HttpError::ResumeBusy,
            BackfillError::ShuttingDown => HttpError::Publish(PublishError::ShuttingDown),
            BackfillError::Unavailable => HttpError::Publish(PublishError::Unavailable),
        }
    }
}

/// CORS headers for a request's `Origin`, given the configured allowed origins.
///
/// An origin named in the list is echoed with `Access-Control-Allow-Credentials: true`, so
/// a page there may send cookies (`new EventSource(url, {withCredentials: true})`, the
/// `herald_token` cookie). `*` allows any other origin, never with credentials (browsers
/// refuse that pair). With any named origin configured, every answer depends on the
/// request's `Origin` (allowed or not, or absent), so every one carries `Vary: Origin` and
/// no cache serves one origin's answer to another.
pub(crate) fn cors_headers(allowed: &[String], origin: Option<&str>) -> String {
    let named = |candidate: &String| candidate != "*";
    let mut out = String::new();
    let echoed = origin.filter(|o| allowed.iter().any(|a| named(a) && a == o));
    if let Some(origin) = echoed {
        // The origin matched a configured value, so it has no CR or LF.
        let _ = write!(
            out,
            "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Credentials: true\r\n"
        );
    } else if allowed.iter().any(|a| a == "*") {
        out.push_str("Access-Control-Allow-Origin: *\r\n");
    }
    if allowed.iter().any(named) {
        out.push_str("Vary: Origin\r\n");
    }
    out
}

/// A complete response with a body. `extra` is extra header lines, each ending in CRLF.
pub(crate) fn response(
    status: u16,
    content_type: &str,
    extra: &str,
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) -> Vec<u8> {
    response_of(status, content_type, extra, &[body], keep_alive, head_only)
}

/// Bytes of a response head besides its content type and extra lines (the longest status
/// line, the field names, a 20-digit length and `Connection: close`), so a response is
/// one allocation.
const RESPONSE_HEAD_BYTES: usize = 128;

/// [`response`] with the body given in parts, copied once: a publish's answer is built
/// in one allocation, with no formatting machinery, on every publish.
pub(crate) fn response_of(
    status: u16,
    content_type: &str,
    extra: &str,
    body: &[&[u8]],
    keep_alive: bool,
    head_only: bool,
) -> Vec<u8> {
    let body_len: usize = body.iter().map(|part| part.len()).sum();
    let mut out =
        Vec::with_capacity(RESPONSE_HEAD_BYTES + content_type.len() + extra.len() + body_len);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(status_text(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra.as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        for part in body {
            out.extend_from_slice(part);
        }
    }
    out
}

/// The answer to a refusal: status, one-line reason, and the headers the status needs.
pub(crate) fn refusal(error: HttpError, cors: &str, keep_alive: bool) -> Vec<u8> {
    let (status, reason) = error.answer();
    let mut extra = String::from(cors);
    match error {
        HttpError::MethodNotAllowed { allow } => {
            let _ = write!(extra, "Allow: {allow}\r\n");
        }
        HttpError::Unauthorized(_) => extra.push_str("WWW-Authenticate: Bearer\r\n"),
        HttpError::Publish(
            PublishError::Busy | PublishError::Unavailable | PublishError::NotReplicated,
        )
        | HttpError::TooManyFromClient
        | HttpError::PublishListenerFull
        | HttpError::ResumeBusy
        | HttpError::AuthUnavailable(_) => extra.push_str("Retry-After: 1\r\n"),
        HttpError::ServerFull => extra.push_str("Retry-After: 5\r\n"),
        _ => {}
    }
    let body = match error {
        HttpError::InBatch { place, .. } => format!("{place}: {reason}\n"),
        _ => format!("{reason}\n"),
    };
    response(
        status,
        "text/plain; charset=utf-8",
        &extra,
        body.as_bytes(),
        keep_alive && !error.closes(),
        false,
    )
}

/// The `204` answer to a CORS preflight.
pub(crate) fn preflight(cors: &str, keep_alive: bool) -> Vec<u8> {
    let mut head = String::from("HTTP/1.1 204 No Content\r\n");
    head.push_str(cors);
    head.push_str(
        "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n\
         Access-Control-Allow-Headers: Last-Event-ID, Content-Type, Authorization, Cache-Control\r\n\
         Access-Control-Max-Age: 86400\r\n",
    );
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The head of an event stream. The body is delimited by closing the connection, so no
/// per-write transfer framing is needed and every subscriber gets the shared frames as-is.
pub(crate) fn stream_head(cors: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\nConnection: close\r\n{cors}\r\n"
    )
    .into_bytes()
}

/// The interim answer to `Expect: 100-continue`.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_bytes() {
        let bytes = refusal(
            HttpError::MethodNotAllowed {
                allow: "GET, OPTIONS",
            },
            "",
            true,
        );
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 33\r\nAllow: GET, OPTIONS\r\n\r\nmethod not allowed for this path\n"
        );
        let closing = String::from_utf8(refusal(HttpError::HeadTooLarge, "", true)).unwrap();
        assert!(closing.starts_with("HTTP/1.1 431 "));
        assert!(closing.contains("Connection: close\r\n"));
    }

    /// A resume the bus could not fetch is answered as before backfills had their own
    /// error type: 503, and Retry-After unless the server is shutting down.
    #[test]
    fn backfill_errors_are_503() {
        let cases = [
            (BackfillError::Busy, true, "too many resumes"),
            (BackfillError::Unavailable, true, "redis is unavailable"),
            (BackfillError::ShuttingDown, false, "shutting down"),
        ];
        for (error, retry_after, reason) in cases {
            let text = String::from_utf8(refusal(error.into(), "", true)).unwrap();
            assert!(text.starts_with("HTTP/1.1 503 "), "{error:?}: {text}");
            assert_eq!(
                text.contains("Retry-After: 1\r\n"),
                retry_after,
                "{error:?}"
            );
            assert!(text.contains(reason), "{error:?}: {text}");
        }
    }

    #[test]
    fn every_reason_is_one_line() {
        let all = [
            HttpError::MalformedHead,
            HttpError::LengthRequired,
            HttpError::UnsupportedMediaType,
            HttpError::Publish(PublishError::Busy),
            HttpError::BadPublish("x"),
        ];
        for error in all {
            let (status, reason) = error.answer();
            assert!((400..600).contains(&status));
            assert!(!reason.contains('\n') && !reason.is_empty());
        }
    }

    #[test]
    fn cors() {
        let list = vec!["https://a.example".to_owned()];
        assert_eq!(
            cors_headers(&list, Some("https://a.example")),
            "Access-Control-Allow-Origin: https://a.example\r\n\
             Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
        );
        assert_eq!(
            cors_headers(&list, Some("https://b.example")),
            "Vary: Origin\r\n"
        );
        assert_eq!(cors_headers(&list, None), "Vary: Origin\r\n");
        assert_eq!(
            cors_headers(&["*".to_owned()], Some("https://a.example")),
            "Access-Control-Allow-Origin: *\r\n"
        );
        assert_eq!(cors_headers(&[], Some("https://a.example")), "");
        // A named origin and `*`: the named one gets credentials, any other the wildcard.
        let mixed = vec!["*".to_owned(), "https://a.example".to_owned()];
        assert!(cors_headers(&mixed, Some("https://a.example"))
            .contains("Access-Control-Allow-Credentials: true\r\n"));
        assert_eq!(
            cors_headers(&mixed, Some("https://b.example")),
            "Access-Control-Allow-Origin: *\r\nVary: Origin\r\n"
        );
        assert_eq!(
            cors_headers(&mixed, Some("*")),
            "Access-Control-Allow-Origin: *\r\nVary: Origin\r\n"
        );
    }
}
