//! A raw HTTP/1.1 client over real TCP sockets ([`Conn`], [`Response`]), request builders,
//! the assertions every error answer and health check share, and the hand-written encoders
//! (percent-encoding, forms, JSON strings, publish answers) the tests need.
//!
//! Every read goes until a delimiter, a byte count or end of stream within [`DEADLINE`].

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::DEADLINE;

/// One parsed HTTP response.
#[derive(Clone, Debug)]
pub struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// The status code.
    pub status: u16,
    /// The reason phrase (not asserted anywhere; informative in failure messages).
    pub reason: String,
    /// Header fields in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, read by `Content-Length` (empty for streams, 1xx, 204 and HEAD).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the headers named `name` (case-insensitive).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The lower-cased header names, sorted.
    pub fn header_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .headers
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect();
        names.sort();
        names
    }

    /// The body as UTF-8 (fails the test if it is not).
    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body)
            .unwrap_or_else(|_| panic!("response body is not UTF-8: {:?}", self.body))
    }

    /// `Content-Length` as a number, if present.
    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length").map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad Content-Length in response: {v:?}"))
        })
    }

    /// A one-line summary for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "{} {} {} headers={:?} body={:?}",
            self.version,
            self.status,
            self.reason,
            self.headers,
            String::from_utf8_lossy(&self.body[..self.body.len().min(400)])
        )
    }
}

/// A client connection with its own read buffer. Reads stop at a delimiter, a byte count or
/// end of stream, each within [`DEADLINE`].
pub struct Conn {
    stream: TcpStream,
    buffer: Vec<u8>,
    eof: bool,
}

/// Printable preview of received bytes for failure messages.
pub(super) fn preview(bytes: &[u8]) -> String {
    const PREVIEW_BYTES: usize = 600;
    if bytes.len() <= PREVIEW_BYTES {
        format!("{:?}", String::from_utf8_lossy(bytes))
    } else {
        format!(
            "{:?}... ({} bytes)",
            String::from_utf8_lossy(&bytes[..PREVIEW_BYTES]),
            bytes.len()
        )
    }
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    /// Connects to `addr`, failing the test after [`DEADLINE`].
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, DEADLINE)
            .unwrap_or_else(|e| panic!("connect to {addr} failed: {e}"));
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buffer: Vec::new(),
            eof: false,
        }
    }

    /// Connects to `addr` from the local address `from` (anything in 127.0.0.0/8 is local,
    /// so one test can be several clients), optionally with a small `SO_RCVBUF` set before
    /// the handshake (`recv_buffer`, bytes; the kernel may round it).
    pub fn connect_with(
        addr: SocketAddr,
        from: Option<IpAddr>,
        recv_buffer: Option<usize>,
    ) -> Conn {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .unwrap_or_else(|e| panic!("socket() failed: {e}"));
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes).unwrap();
        }
        if let Some(ip) = from {
            socket
                .bind(&SocketAddr::new(ip, 0).into())
                .unwrap_or_else(|e| panic!("binding the client socket to {ip} failed: {e}"));
        }
        socket
            .connect_timeout(&addr.into(), DEADLINE)
            .unwrap_or_else(|e| panic!("connect to {addr} from {from:?} failed: {e}"));
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buffer: Vec::new(),
            eof: false,
        }
    }

    /// A second handle on the socket, e.g. to write from another thread while this one reads.
    pub fn try_clone_stream(&self) -> TcpStream {
        self.stream.try_clone().unwrap()
    }

    /// Closes the connection with a reset (`SO_LINGER` 0) instead of a FIN.
    pub fn reset(self) {
        SockRef::from(&self.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }

    /// Writes all of `bytes` in one `write_all`.
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        self.stream.write_all(bytes).unwrap_or_else(|e| {
            panic!(
                "writing {} bytes to the server failed: {e}; received so far: {}",
                bytes.len(),
                preview(&self.buffer)
            )
        });
    }

    /// Writes `bytes`, tolerating a reset or broken pipe: for requests the server may answer
    /// and close before reading them whole (oversized heads and bodies).
    pub fn send_may_be_cut(&mut self, bytes: impl AsRef<[u8]>) {
        if let Err(e) = self.stream.write_all(bytes.as_ref()) {
            assert!(
                matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
                "writing to the server failed: {e}"
            );
        }
    }

    /// Takes the bytes received but not yet consumed.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buffer)
    }

    /// Reads once more into the buffer. Returns the number of bytes read; 0 means the peer
    /// closed (a reset after a complete answer counts as a close too).
    fn fill(&mut self, deadline: Instant, waiting_for: &str) -> usize {
        match self.try_fill(deadline, waiting_for) {
            Some(n) => n,
            None => panic!(
                "timed out after {DEADLINE:?} waiting for {waiting_for}; received so far: {}",
                preview(&self.buffer)
            ),
        }
    }

    /// Like `fill`, but `None` when the deadline passes.
    pub(super) fn try_fill(&mut self, deadline: Instant, waiting_for: &str) -> Option<usize> {
        if self.eof {
            return Some(0);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        self.stream.set_read_timeout(Some(deadline - now)).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Some(0);
                }
                Ok(n) => {
                    self.buffer.extend_from_slice(&chunk[..n]);
                    return Some(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    self.eof = true;
                    return Some(0);
                }
                Err(e) => panic!("read failed while waiting for {waiting_for}: {e}"),
            }
        }
    }

    /// Reads until `delimiter` has arrived and returns everything up to and including it.
    pub fn read_until(&mut self, delimiter: &[u8], waiting_for: &str) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        let mut searched: usize = 0;
        loop {
            let start = searched.saturating_sub(delimiter.len());
            if let Some(at) = find(&self.buffer[start..], delimiter) {
                let end = start + at + delimiter.len();
                let rest = self.buffer.split_off(end);
                return std::mem::replace(&mut self.buffer, rest);
            }
            searched = self.buffer.len();
            if self.fill(deadline, waiting_for) == 0 {
                panic!(
                    "connection closed while waiting for {waiting_for}; received: {}",
                    preview(&self.buffer)
                );
            }
        }
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact_bytes(&mut self, n: usize, waiting_for: &str) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        while self.buffer.len() < n {
            if self.fill(deadline, waiting_for) == 0 {
                panic!(
                    "connection closed after {} of {n} bytes while waiting for {waiting_for}; received: {}",
                    self.buffer.len(),
                    preview(&self.buffer)
                );
            }
        }
        let rest = self.buffer.split_off(n);
        std::mem::replace(&mut self.buffer, rest)
    }

    /// Reads some more bytes (at least one), or returns `None` when the peer has closed.
    pub fn read_some(&mut self, waiting_for: &str) -> Option<Vec<u8>> {
        if self.buffer.is_empty() && self.fill(Instant::now() + DEADLINE, waiting_for) == 0 {
            return None;
        }
        Some(self.take_buffered())
    }

    /// Reads everything until the server closes the connection.
    pub fn read_to_close(&mut self, waiting_for: &str) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        while self.fill(deadline, waiting_for) != 0 {}
        self.take_buffered()
    }

    /// Asserts that the server closes the connection without sending anything more.
    pub fn expect_closed(&mut self, after: &str) {
        let rest = self.read_to_close(&format!("the server to close the connection after {after}"));
        assert!(
            rest.is_empty(),
            "expected the connection to be closed after {after}, but got more bytes: {}",
            preview(&rest)
        );
    }

    /// Reads a response head (through the blank line) and parses it; the body is left unread.
    pub fn read_head(&mut self, waiting_for: &str) -> Response {
        let head = self.read_until(b"\r\n\r\n", waiting_for);
        parse_head(&head)
    }

    /// Reads one whole response: the head, then `Content-Length` bytes of body. A response
    /// without `Content-Length` has an empty body if it is 1xx, 204 or 304, and otherwise runs
    /// to the end of the connection.
    pub fn read_response(&mut self, waiting_for: &str) -> Response {
        let mut response = self.read_head(waiting_for);
        response.body = match response.content_length() {
            Some(length) => self.read_exact_bytes(length, &format!("the body of {waiting_for}")),
            None if response.status < 200 || response.status == 204 || response.status == 304 => {
                Vec::new()
            }
            None => self.read_to_close(&format!("the close-delimited body of {waiting_for}")),
        };
        response
    }
}

/// Parses a response head ending in `\r\n\r\n`.
pub fn parse_head(head: &[u8]) -> Response {
    let text = std::str::from_utf8(head)
        .unwrap_or_else(|_| panic!("response head is not UTF-8: {}", preview(head)));
    let mut lines = text
        .strip_suffix("\r\n\r\n")
        .unwrap_or_else(|| panic!("response head does not end in CRLF CRLF: {text:?}"))
        .split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_owned();
    assert!(
        version == "HTTP/1.1" || version == "HTTP/1.0",
        "bad status line {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let reason = parts.next().unwrap_or_default().to_owned();
    let headers = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?} in {text:?}"));
            assert!(
                !name.is_empty() && !name.contains(' '),
                "bad header name in {line:?}"
            );
            (name.to_owned(), value.trim().to_owned())
        })
        .collect();
    Response {
        version,
        status,
        reason,
        headers,
        body: Vec::new(),
    }
}

/// Builds a request. `Host` is added unless `headers` has one or the version is 1.0; a body
/// gets a `Content-Length` unless `headers` already names `Content-Length` or
/// `Transfer-Encoding`.
pub fn build_request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("host") {
        head.push_str("Host: herald.test\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() && !has("content-length") && !has("transfer-encoding") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// Writes `bytes` to `socket` one at a time with `pause` between them, on its own thread,
/// until they are all sent, a write fails (the server closed) or `stop` is set; returns how
/// many went out. The pause is the behaviour of the slow client under test, not a wait.
pub fn dribble(
    mut socket: TcpStream,
    bytes: Vec<u8>,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut sent = 0;
        for byte in bytes {
            if stop.load(Ordering::Acquire) || socket.write_all(&[byte]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(pause);
        }
        sent
    })
}

/// Sends one request on a fresh connection and reads one response.
pub fn exchange(addr: SocketAddr, request: impl AsRef<[u8]>) -> Response {
    let mut conn = Conn::connect(addr);
    conn.send(request);
    conn.read_response("the response")
}

/// `GET target` with `Connection: close`.
pub fn get(addr: SocketAddr, target: &str) -> Response {
    exchange(
        addr,
        build_request("GET", target, &[("Connection", "close")], b""),
    )
}

/// `POST target` with an optional `Content-Type` and `Connection: close`. Always sends a
/// `Content-Length`, also for an empty body.
pub fn post(addr: SocketAddr, target: &str, content_type: Option<&str>, body: &[u8]) -> Response {
    exchange(addr, post_request(target, content_type, body, &[]))
}

/// A `POST` request with `Content-Length` (also when 0), an optional `Content-Type` and extra
/// headers.
pub fn post_request(
    target: &str,
    content_type: Option<&str>,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let length = body.len().to_string();
    let mut headers: Vec<(&str, &str)> = vec![("Content-Length", &length)];
    if let Some(content_type) = content_type {
        headers.push(("Content-Type", content_type));
    }
    headers.extend_from_slice(extra);
    build_request("POST", target, &headers, body)
}

/// Asserts the shape every error answer has: `status`, `Content-Type: text/plain;
/// charset=utf-8`, a `Content-Length`, and a body of one non-empty line ending in `\n`.
pub fn assert_error(response: &Response, status: u16, case: &str) {
    assert_eq!(
        response.status,
        status,
        "{case}: expected status {status}, got {}",
        response.summary()
    );
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{case}: error Content-Type; {}",
        response.summary()
    );
    assert!(
        response.content_length().is_some(),
        "{case}: error answer has no Content-Length; {}",
        response.summary()
    );
    let body = response.body_text();
    assert!(
        body.ends_with('\n') && body.matches('\n').count() == 1 && body.trim().len() > 1,
        "{case}: error body must be one line of text ending in \\n, got {body:?}"
    );
}

/// Asserts the server still answers `GET /healthz` with `200 ok\n` on a new connection.
pub fn assert_healthy(addr: SocketAddr, after: &str) {
    let response = get(addr, "/healthz");
    assert_eq!(
        (response.status, response.body_text()),
        (200, "ok\n"),
        "the server stopped serving /healthz after {after}: {}",
        response.summary()
    );
}

// ---------------------------------------------------------------------------------------------
// Encoding helpers (no dependencies: written by hand)
// ---------------------------------------------------------------------------------------------

/// Percent-encodes everything but RFC 3986 unreserved characters; valid both in a URL query
/// and in an `application/x-www-form-urlencoded` body.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `k1=v1&k2=v2`, each part percent-encoded.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A JSON string literal for `text`.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The id in a JSON publish answer, which must be exactly `{"id":"<id>"}`.
pub fn id_from_json_answer(body: &str) -> String {
    let id = body
        .strip_prefix("{\"id\":\"")
        .and_then(|rest| rest.strip_suffix("\"}"))
        .unwrap_or_else(|| panic!("JSON publish answer is not {{\"id\":\"<id>\"}}: {body:?}"));
    assert!(
        !id.is_empty() && !id.contains('"') && !id.contains('\\'),
        "odd id in {body:?}"
    );
    id.to_owned()
}

/// The id in a plain-text publish answer, which must be exactly `<id>\n`.
pub fn id_from_text_answer(body: &str) -> String {
    let id = body
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("text publish answer is not `<id>\\n`: {body:?}"));
    assert!(
        !id.is_empty() && !id.contains('\n') && !id.contains(' '),
        "odd id in {body:?}"
    );
    id.to_owned()
}

/// Splits an id `"<epoch>-<seq>"` into its two numbers.
pub fn split_id(id: &str) -> (u64, u64) {
    let (epoch, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("id {id:?} is not <epoch>-<seq>"));
    let parse = |part: &str| {
        assert!(
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()),
            "id {id:?} is not <epoch>-<seq> in decimal"
        );
        part.parse::<u64>().unwrap()
    };
    (parse(epoch), parse(seq))
}

/// Publishes over HTTP with a form body and returns the id from the `text/plain` answer.
pub fn publish_form(addr: SocketAddr, pairs: &[(&str, &str)]) -> String {
    let response = post(
        addr,
        "/publish",
        Some("application/x-www-form-urlencoded"),
        form(pairs).as_bytes(),
    );
    assert_eq!(
        response.status,
        200,
        "form publish {pairs:?} failed: {}",
        response.summary()
    );
    id_from_text_answer(response.body_text())
}

/// What the data of an event looks like after an EventSource has read it: line breaks
/// (CRLF, CR, LF) become LF.
pub fn normalize_newlines(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}
