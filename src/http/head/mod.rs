//! Request heads: `httparse` over the connection's bounded head buffer, into a [`Request`]
//! that borrows from it, or an [`HttpError`]. The framing rules that keep pipelined
//! requests trustworthy (Content-Length, Transfer-Encoding, Host) are enforced here.
//! No I/O here.

use std::mem::MaybeUninit;

use httparse::Status;

use super::answer::HttpError;

/// Headers parsed per request; more is 431. Browsers send about 15.
pub(crate) const HEADERS_MAX: usize = 64;

/// Lines of one forwarding header kept per request, the last ones: each proxy on the way
/// adds at most one, and no real chain has this many. When a head has more, the walk over
/// them ends at the earliest line kept, which is the nearest trusted hop's view.
pub(crate) const FORWARDING_LINES_MAX: usize = 8;

/// Every line of one header, in arrival order, as raw bytes (a proxy may pass any byte
/// through; the reader decides what is unreadable). Only the last
/// [`FORWARDING_LINES_MAX`] are kept.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HeaderLines<'b> {
    lines: [&'b [u8]; FORWARDING_LINES_MAX],
    len: usize,
}

impl<'b> HeaderLines<'b> {
    /// Adds the next line, dropping the earliest when full.
    fn push(&mut self, line: &'b [u8]) {
        if self.len == FORWARDING_LINES_MAX {
            self.lines.copy_within(1.., 0);
            self.len -= 1;
        }
        self.lines[self.len] = line;
        self.len += 1;
    }

    /// The lines in arrival order (the last is the nearest proxy's).
    pub(crate) fn as_slice(&self) -> &[&'b [u8]] {
        &self.lines[..self.len]
    }
}

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

impl Method {
    /// The method's name (`OTHER` for the ones herald does not serve).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
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
    /// Every `X-Forwarded-For` line (proxies append to the last or add a line).
    pub x_forwarded_for: HeaderLines<'b>,
    /// Every `Forwarded` line.
    pub forwarded: HeaderLines<'b>,
    /// The last `Cookie` header.
    pub cookie: Option<&'b str>,
    /// Every `Accept` line, the last [`FORWARDING_LINES_MAX`] (only `/metrics` reads it, to
    /// pick the exposition format).
    pub accept: HeaderLines<'b>,
    /// The whole head as received (request line and headers), for [`header_pairs`].
    pub raw: &'b [u8],
}

/// Every header of a head that [`parse`] accepted, in order: name and value, the value's
/// bytes as lossy UTF-8. At most [`HEADERS_MAX`], as `parse` allowed. Only an application
/// that decides access needs them, so they are read again then rather than kept.
pub(crate) fn header_pairs(raw: &[u8]) -> Vec<(String, String)> {
    let mut headers = uninit_headers();
    let mut request = httparse::Request::new(&mut []);
    if !matches!(
        request.parse_with_uninit_headers(raw, &mut headers),
        Ok(Status::Complete(_))
    ) {
        return Vec::new(); // Parsed once already: cannot happen.
    }
    request
        .headers
        .iter()
        .map(|header| {
            (
                header.name.to_owned(),
                String::from_utf8_lossy(header.value).into_owned(),
            )
        })
        .collect()
}

/// Room for [`HEADERS_MAX`] headers, left uninitialised: httparse writes only the ones a
/// head has, where an initialised array would cost 2 KiB of stores on every request.
fn uninit_headers<'b>() -> [MaybeUninit<httparse::Header<'b>>; HEADERS_MAX] {
    [const { MaybeUninit::uninit() }; HEADERS_MAX]
}

/// Result of a parse attempt over the bytes received so far.
// A complete head carries every forwarding header line (a few hundred bytes of slices); it
// lives on the stack for one request and is destructured at once, so boxing it would only
// add an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Parsed<'b> {
    /// The head is incomplete; read more (the buffer has room).
    NeedMore,
    /// A complete head.
    Complete(Request<'b>),
}

/// Parses the head at the start of `buf`; `full` says the buffer cannot take more bytes.
pub(crate) fn parse(buf: &[u8], full: bool) -> Result<Parsed<'_>, HttpError> {
    let mut headers = uninit_headers();
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buf, &mut headers) {
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
        x_forwarded_for: HeaderLines::default(),
        forwarded: HeaderLines::default(),
        cookie: None,
        accept: HeaderLines::default(),
        raw: &buf[..head_len],
    };
    let mut seen = Seen::default();
    for header in request.headers.iter() {
        apply_header(&mut head, header.name, header.value, &mut seen)?;
    }
    if minor_version == 1 && !seen.host {
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

/// Classifies the version field of the request line in `buf`, after the empty lines that
/// httparse skips before it (RFC 9112 §2.2: a server SHOULD ignore at least one), so that
/// `\r\nGET / HTTP/2.0` is 505 like the same line without the empty one before it.
fn request_line_version(buf: &[u8]) -> Version {
    const PATTERN: &[u8] = b"HTTP/0.0";
    let buf = skip_empty_lines(buf);
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

/// Headers herald reads as one value. A repeat is refused rather than resolved: a front
/// proxy that keeps the first of two `Host` or `Authorization` lines while herald kept the
/// last would check one request and forward another (RFC 9110 §5.3 lets a recipient refuse).
#[derive(Default)]
struct Seen {
    host: bool,
    content_type: bool,
    last_event_id: bool,
    origin: bool,
    authorization: bool,
}

/// Marks `flag` seen, refusing a second sighting of the header `name`.
fn once(flag: &mut bool, repeated: &'static str) -> Result<(), HttpError> {
    if std::mem::replace(flag, true) {
        return Err(HttpError::BadHeader(repeated));
    }
    Ok(())
}

/// Strips the optional whitespace around a field value: SP and HTAB only (RFC 9110 §5.6.3).
/// `str::trim` would also strip Unicode spaces such as U+00A0, which a proxy reads as part
/// of the value, so the two would disagree about it.
pub(crate) fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| matches!(b, b' ' | b'\t');
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// A `Content-Length` value: `1*DIGIT` with OWS around it (RFC 9112 §6.3), or a list of the
/// same such value repeated (`5, 5`, which RFC 9110 §8.6 lets a recipient read as `5`).
/// Anything else (a sign, another value, an empty member, Unicode space, overflow) is `None`:
/// a proxy in front could frame the body differently, which is request smuggling.
fn content_length(value: &[u8]) -> Option<usize> {
    let mut length = None;
    for member in value.split(|&b| b == b',') {
        let digits = trim_ows(member);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // All ASCII digits, so this is UTF-8; parse refuses only overflow here.
        let parsed = std::str::from_utf8(digits).ok()?.parse::<usize>().ok()?;
        if length.is_some_and(|first| first != parsed) {
            return None;
        }
        length = Some(parsed);
    }
    length
}

/// Whether `value` is a `Host` value: `uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2),
/// checked by its characters (reg-name, IP literal and port are all drawn from these). Empty
/// is allowed: it is what a client sends for a target without an authority.
fn is_host(value: &[u8]) -> bool {
    value.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

/// `buf` after its leading empty lines (CRLF or bare LF), as httparse skips them.
fn skip_empty_lines(mut buf: &[u8]) -> &[u8] {
    loop {
        buf = match buf {
            [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..] => rest,
            _ => return buf,
        };
    }
}

fn apply_header<'b>(
    head: &mut Request<'b>,
    name: &str,
    value: &'b [u8],
    seen: &mut Seen,
) -> Result<(), HttpError> {
    let value = trim_ows(value);
    let text = || std::str::from_utf8(value);
    if name.eq_ignore_ascii_case("content-length") {
        let length = content_length(value).ok_or(HttpError::BadContentLength)?;
        if head.has_content_length && head.content_length != length {
            return Err(HttpError::BadContentLength);
        }
        head.has_content_length = true;
        head.content_length = length;
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        // Any value: herald reads no chunked bodies, so its presence alone decides (411).
        head.has_transfer_encoding = true;
    } else if name.eq_ignore_ascii_case("host") {
        once(&mut seen.host, "Host header given twice")?;
        if !is_host(value) {
            return Err(HttpError::BadHeader("Host header is not a host[:port]"));
        }
    } else if name.eq_ignore_ascii_case("connection") {
        for token in value.split(|&b| b == b',') {
            let token = trim_ows(token);
            if token.eq_ignore_ascii_case(b"close") {
                head.keep_alive = false;
            } else if token.eq_ignore_ascii_case(b"keep-alive") && head.minor_version == 0 {
                head.keep_alive = true;
            }
        }
    } else if name.eq_ignore_ascii_case("expect") {
        // The expectation token is case-insensitive (RFC 9110 §10.1.1).
        if value.eq_ignore_ascii_case(b"100-continue") {
            head.expect_continue = true;
        } else {
            return Err(HttpError::ExpectationFailed);
        }
    } else if name.eq_ignore_ascii_case("last-event-id") {
        once(&mut seen.last_event_id, "Last-Event-ID header given twice")?;
        let id = text().map_err(|_| HttpError::BadHeader("Last-Event-ID header is not UTF-8"))?;
        head.last_event_id = Some(id);
    } else if name.eq_ignore_ascii_case("origin") {
        once(&mut seen.origin, "Origin header given twice")?;
        let origin = text().map_err(|_| HttpError::BadHeader("Origin header is not UTF-8"))?;
        head.origin = Some(origin);
    } else if name.eq_ignore_ascii_case("authorization") {
        once(&mut seen.authorization, "Authorization header given twice")?;
        head.authorization = Some(value);
    } else if name.eq_ignore_ascii_case("content-type") {
        once(&mut seen.content_type, "Content-Type header given twice")?;
        let media = text().map_err(|_| HttpError::BadHeader("Content-Type header is not UTF-8"))?;
        head.content_type = Some(media);
    } else if name.eq_ignore_ascii_case("x-forwarded-for") {
        head.x_forwarded_for.push(value);
    } else if name.eq_ignore_ascii_case("forwarded") {
        head.forwarded.push(value);
    } else if name.eq_ignore_ascii_case("cookie") {
        head.cookie = text().ok();
    } else if name.eq_ignore_ascii_case("accept") {
        head.accept.push(value);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
