//! Request heads: `httparse` over the connection's bounded head buffer, into a [`Request`]
//! that borrows from it, or an [`HttpError`]. The framing rules that keep pipelined
//! requests trustworthy (Content-Length, Transfer-Encoding, Host) are enforced here.
//! No I/O here.

use httparse::Status;

use super::answer::HttpError;

/// Headers parsed per request; more is 431. Browsers send about 15.
pub(crate) const HEADERS_MAX: usize = 64;

/// HTTP method, as far as routing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `OPTIONS`
    Options,
    /// Anything else; answered 405.
    Other,
}

/// A parsed request head; strings borrow from the head buffer.
#[derive(Debug)]
pub(crate) struct Request<'b> {
    /// The method.
    pub method: Method,
    /// Path part of the target, without the query.
    pub path: &'b str,
    /// Query part of the target, without `?` (empty if none).
    pub query: &'b str,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
    /// Declared body length (0 when absent).
    pub content_length: usize,
    /// Whether `Content-Length` was present.
    pub has_content_length: bool,
    /// Whether `Transfer-Encoding` was present (we never accept it).
    pub has_transfer_encoding: bool,
    /// Whether the client wants the connection kept open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// `Last-Event-ID` header.
    pub last_event_id: Option<&'b str>,
    /// `Origin` header.
    pub origin: Option<&'b str>,
    /// `Authorization` header (a second one is refused).
    pub authorization: Option<&'b [u8]>,
    /// `Content-Type` header, parameters included.
    pub content_type: Option<&'b str>,
    /// The last `X-Forwarded-For` header (proxies append to it).
    pub x_forwarded_for: Option<&'b str>,
    /// The last `Forwarded` header.
    pub forwarded: Option<&'b str>,
    /// The last `Cookie` header.
    pub cookie: Option<&'b str>,
}

/// Result of a parse attempt over the bytes received so far.
#[derive(Debug)]
pub(crate) enum Parsed<'b> {
    /// The head is incomplete; read more (the buffer has room).
    NeedMore,
    /// A complete head.
    Complete(Request<'b>),
}

/// Parses the head at the start of `buf`; `full` says the buffer cannot take more bytes.
pub(crate) fn parse(buf: &[u8], full: bool) -> Result<Parsed<'_>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) if full => return Err(HttpError::HeadTooLarge),
        Ok(Status::Partial) => return Ok(Parsed::NeedMore),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            return match request_line_version(buf) {
                Version::Named => Err(HttpError::VersionNotSupported),
                Version::Unfinished if full => Err(HttpError::HeadTooLarge),
                Version::Unfinished => Ok(Parsed::NeedMore),
                Version::Malformed => Err(HttpError::MalformedHead),
            }
        }
        Err(_) => return Err(HttpError::MalformedHead),
    };
    // Complete guarantees method, path and version are set.
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HttpError::MalformedHead);
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = Request {
        method: match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        },
        path,
        query,
        minor_version,
        head_len,
        content_length: 0,
        has_content_length: false,
        has_transfer_encoding: false,
        keep_alive: minor_version == 1,
        expect_continue: false,
        last_event_id: None,
        origin: None,
        authorization: None,
        content_type: None,
        x_forwarded_for: None,
        forwarded: None,
        cookie: None,
    };
    let mut has_host = false;
    for header in request.headers.iter() {
        apply_header(&mut head, header.name, header.value, &mut has_host)?;
    }
    if minor_version == 1 && !has_host {
        return Err(HttpError::MissingHost);
    }
    if head.has_content_length && head.has_transfer_encoding {
        return Err(HttpError::AmbiguousFraming);
    }
    Ok(Parsed::Complete(head))
}

/// What stands where a request line's version should be, once httparse refused it.
enum Version {
    /// A well-formed `HTTP/<digit>.<digit>` that is not one we speak (505).
    Named,
    /// The line is unfinished and could still become either: wait, so the answer does not
    /// depend on how the line was split into reads.
    Unfinished,
    /// Garbage where the version should be (400).
    Malformed,
}

/// Classifies the version field of the first line in `buf`.
fn request_line_version(buf: &[u8]) -> Version {
    const PATTERN: &[u8] = b"HTTP/0.0";
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = &buf[..line_end.unwrap_or(buf.len())];
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Version::Malformed;
    };
    let fits = version.len() <= PATTERN.len()
        && version.iter().zip(PATTERN).all(|(&b, &p)| match p {
            b'0' => b.is_ascii_digit(),
            _ => b == p,
        });
    match (fits, line_end) {
        (true, Some(_)) if version.len() == PATTERN.len() => Version::Named,
        (true, None) => Version::Unfinished,
        _ => Version::Malformed,
    }
}

fn apply_header<'b>(
    head: &mut Request<'b>,
    name: &str,
    value: &'b [u8],
    has_host: &mut bool,
) -> Result<(), HttpError> {
    let text = || std::str::from_utf8(value).map(str::trim);
    if name.eq_ignore_ascii_case("content-length") {
        let length = text()
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<usize>().ok())
            .ok_or(HttpError::BadContentLength)?;
        if head.has_content_length && head.content_length != length {
            return Err(HttpError::BadContentLength);
        }
        head.has_content_length = true;
        head.content_length = length;
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        head.has_transfer_encoding = true;
    } else if name.eq_ignore_ascii_case("host") {
        *has_host = true;
    } else if name.eq_ignore_ascii_case("connection") {
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                head.keep_alive = false;
            } else if token.eq_ignore_ascii_case(b"keep-alive") && head.minor_version == 0 {
                head.keep_alive = true;
            }
        }
    } else if name.eq_ignore_ascii_case("expect") {
        if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
            head.expect_continue = true;
        } else {
            return Err(HttpError::ExpectationFailed);
        }
    } else if name.eq_ignore_ascii_case("last-event-id") {
        head.last_event_id = Some(text().map_err(|_| HttpError::MalformedHead)?);
    } else if name.eq_ignore_ascii_case("origin") {
        head.origin = text().ok();
    } else if name.eq_ignore_ascii_case("authorization") {
        // Not a list field (RFC 9110 §5.3): two of them leave the credentials ambiguous.
        if head.authorization.replace(value).is_some() {
            return Err(HttpError::DuplicateAuthorization);
        }
    } else if name.eq_ignore_ascii_case("content-type") {
        head.content_type = text().ok();
    } else if name.eq_ignore_ascii_case("x-forwarded-for") {
        head.x_forwarded_for = text().ok();
    } else if name.eq_ignore_ascii_case("forwarded") {
        head.forwarded = text().ok();
    } else if name.eq_ignore_ascii_case("cookie") {
        head.cookie = text().ok();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", HttpError::AmbiguousFraming),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", HttpError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", HttpError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", HttpError::BadContentLength),
            ("GET / HTTP/1.1\r\n\r\n", HttpError::MissingHost),
            ("GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", HttpError::ExpectationFailed),
            ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", HttpError::VersionNotSupported),
            ("GET /\r\n\r\n", HttpError::MalformedHead),
            ("NOT A REQUEST\r\n\r\n", HttpError::MalformedHead),
            ("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", HttpError::MalformedHead),
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
}
