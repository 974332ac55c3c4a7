//! Shared helpers for herald's integration tests: start a server on `127.0.0.1:0`, talk raw
//! HTTP/1.1 over real TCP sockets, and read Server-Sent Events with a parser that follows the
//! WHATWG HTML "event stream interpretation" to the letter.
//!
//! Every read goes until a delimiter or a deadline ([`DEADLINE`]); nothing here sleeps. A read
//! that runs out of time fails the test with what it was waiting for and what it got.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use herald::{Config, Event, EventId, Handle, PublishError, Server};

/// How long any single wait (a read helper, a publish retry, a child process line) may take
/// before the test fails. Generous: it only bounds a hang, it never measures speed.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The `retry:` value a server sends when `retry_ms` is left at its default.
pub const RETRY_MS_DEFAULT: u32 = 3_000;

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// The configuration every test starts from: an ephemeral port on loopback, two event loops
/// (the machine has two cores), everything else default.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        ..Config::default()
    }
}

/// Starts a server on `127.0.0.1:0` with [`test_config`] changed by `tweak`.
pub fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = test_config();
    tweak(&mut config);
    match Server::start(config) {
        Ok(server) => server,
        Err(error) => panic!("herald::Server::start failed: {error}"),
    }
}

/// Publishes through the library handle. `Busy` is the documented "retry shortly" answer of a
/// saturated server, so it is retried (without sleeping) until [`DEADLINE`]; any other error
/// fails the test.
pub fn publish(handle: &Handle, event: &Event) -> EventId {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match handle.publish(event) {
            Ok(id) => return id,
            Err(PublishError::Busy) if Instant::now() < deadline => std::thread::yield_now(),
            Err(error) => panic!("Handle::publish({event:?}) failed: {error}"),
        }
    }
}

/// Waits until `condition` holds, re-checking without sleeping, or fails after [`DEADLINE`].
/// Only for eventually-consistent counters such as [`Handle::stats`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::yield_now();
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP client
// ---------------------------------------------------------------------------------------------

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
fn preview(bytes: &[u8]) -> String {
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
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

    /// The bytes received but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buffer
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
    fn try_fill(&mut self, deadline: Instant, waiting_for: &str) -> Option<usize> {
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

// ---------------------------------------------------------------------------------------------
// SSE subscriber
// ---------------------------------------------------------------------------------------------

/// An open `GET /events` stream, read through [`EventStreamParser`].
pub struct Subscriber {
    conn: Conn,
    parser: EventStreamParser,
    pending: VecDeque<SseEvent>,
    /// The response head.
    pub head: Response,
    /// Every body byte received so far, starting with the `retry:` frame.
    pub raw: Vec<u8>,
}

/// Subscribes to `topics` (`GET /events?topic=..&topic=..`) and waits for the stream's first
/// `retry:` frame, after which the server has registered the subscriber.
pub fn subscribe(addr: SocketAddr, topics: &[&str]) -> Subscriber {
    Subscriber::open(addr, &events_target(topics, None), &[])
}

/// `/events?topic=..&topic=..[&lastEventId=..]`.
pub fn events_target(topics: &[&str], last_event_id: Option<&str>) -> String {
    let mut pairs: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
    if let Some(id) = last_event_id {
        pairs.push(("lastEventId", id));
    }
    format!("/events?{}", form(&pairs))
}

impl Subscriber {
    /// Opens `GET target` with extra `headers`, asserts a 200 `text/event-stream` answer and
    /// reads up to the end of the first frame, which must be `retry: <ms>`.
    pub fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Subscriber {
        Subscriber::open_on(Conn::connect(addr), target, headers)
    }

    /// [`Subscriber::open`] on a connection the caller made (e.g. from another source
    /// address with [`Conn::connect_with`]).
    pub fn open_on(conn: Conn, target: &str, headers: &[(&str, &str)]) -> Subscriber {
        Subscriber::try_open_on(conn, target, headers)
            .unwrap_or_else(|failed| panic!("GET {target} was refused: {}", failed.summary()))
    }

    /// Like [`Subscriber::open_on`], but a refusal is returned (with its body) instead of
    /// failing the test.
    pub fn try_open_on(
        mut conn: Conn,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<Subscriber, Response> {
        conn.send(build_request("GET", target, headers, b""));
        let head = conn.read_head(&format!("the response head of GET {target}"));
        if head.status != 200 {
            let mut failed = head.clone();
            if let Some(length) = head.content_length() {
                failed.body = conn.read_exact_bytes(length, "the error body");
            }
            return Err(failed);
        }
        assert_eq!(
            head.header("content-type"),
            Some("text/event-stream"),
            "GET {target}: {}",
            head.summary()
        );
        let mut subscriber = Subscriber {
            conn,
            parser: EventStreamParser::new(),
            pending: VecDeque::new(),
            head,
            raw: Vec::new(),
        };
        subscriber.wait_for_retry_frame(target);
        Ok(subscriber)
    }

    fn wait_for_retry_frame(&mut self, target: &str) {
        let waiting_for = format!("the first `retry:` frame of GET {target}");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let buffered = self.conn.take_buffered();
            self.take(&buffered);
            if find(&self.raw, b"\n\n").is_some() {
                break;
            }
            self.read_more(deadline, &waiting_for);
        }
        assert!(
            self.raw.starts_with(b"retry: "),
            "GET {target}: the body must start with a `retry:` frame, got {}",
            preview(&self.raw)
        );
    }

    /// Reads more body bytes into the parser; fails the test on a close or the deadline.
    fn read_more(&mut self, deadline: Instant, waiting_for: &str) {
        match self.conn.try_fill(deadline, waiting_for) {
            Some(0) => panic!(
                "the server closed the stream while waiting for {waiting_for}; body received: {}",
                preview(&self.raw)
            ),
            Some(_) => {
                let bytes = self.conn.take_buffered();
                self.take(&bytes);
            }
            None => panic!(
                "timed out after {DEADLINE:?} waiting for {waiting_for}; body received: {}",
                preview(&self.raw)
            ),
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        self.pending.extend(self.parser.feed(bytes));
    }

    /// Waits for the next dispatched event.
    pub fn next_event(&mut self, waiting_for: &str) -> SseEvent {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            self.read_more(deadline, waiting_for);
        }
    }

    /// Waits for the next `n` events.
    pub fn events(&mut self, n: usize) -> Vec<SseEvent> {
        (0..n)
            .map(|i| self.next_event(&format!("event {} of {n}", i + 1)))
            .collect()
    }

    /// Reads events until one with data `sentinel` arrives; returns those before it. Publishing
    /// a sentinel last is how a test shows that nothing else (no duplicate, no stray event)
    /// arrived in between.
    pub fn events_before(&mut self, sentinel: &str) -> Vec<SseEvent> {
        let mut events = Vec::new();
        loop {
            let event = self.next_event(&format!("the sentinel event {sentinel:?}"));
            if event.data == sentinel {
                return events;
            }
            events.push(event);
        }
    }

    /// The body bytes after the first `retry:` frame.
    pub fn raw_after_retry_frame(&self) -> &[u8] {
        let end = find(&self.raw, b"\n\n").unwrap() + 2;
        &self.raw[end..]
    }

    /// The last `retry:` value the parser accepted.
    pub fn retry_ms(&self) -> Option<u64> {
        self.parser.retry_ms
    }

    /// The parser's last event ID string (what a browser would send on reconnect).
    pub fn last_event_id(&self) -> &str {
        &self.parser.last_event_id
    }

    /// The underlying connection, e.g. to see it closed.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// The comment lines received so far (without their leading `:`), in order.
    pub fn comments(&self) -> &[String] {
        &self.parser.comments
    }

    /// Events parsed but not yet taken with [`Subscriber::next_event`].
    pub fn pending_events(&self) -> &VecDeque<SseEvent> {
        &self.pending
    }

    /// Reads until at least `n` comment lines have arrived in total.
    pub fn wait_for_comments(&mut self, n: usize, waiting_for: &str) {
        let deadline = Instant::now() + DEADLINE;
        while self.parser.comments.len() < n {
            self.read_more(deadline, waiting_for);
        }
    }

    /// Gives up the parser and returns the connection (e.g. to [`Conn::reset`] it).
    pub fn into_conn(self) -> Conn {
        self.conn
    }

    /// The `N` of the stream's last frame, which must be exactly `retry: N` and end the body
    /// received so far (a stream the server ended with a reconnect hint).
    pub fn closing_retry_hint(&self) -> u64 {
        let body = String::from_utf8_lossy(self.raw_after_retry_frame()).into_owned();
        let frames = body
            .strip_suffix("\n\n")
            .unwrap_or_else(|| panic!("the stream did not end with a whole frame: {body:?}"));
        let last = frames.rsplit("\n\n").next().unwrap_or_default();
        last.strip_prefix("retry: ")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!("the last frame must be `retry: N`, got {last:?}; body: {body:?}")
            })
    }

    /// Reads until the server closes the stream; returns the events that arrived on the way
    /// (after any still pending).
    pub fn read_to_close(&mut self, waiting_for: &str) -> Vec<SseEvent> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.conn.try_fill(deadline, waiting_for) {
                Some(0) => break,
                Some(_) => {
                    let bytes = self.conn.take_buffered();
                    self.take(&bytes);
                }
                None => panic!(
                    "timed out after {DEADLINE:?} waiting for {waiting_for}; body received: {}",
                    preview(&self.raw)
                ),
            }
        }
        self.pending.drain(..).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// One `GET /metrics` page, checked line by line against the Prometheus text exposition
/// format (0.0.4) as it is parsed.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// The page as received.
    pub text: String,
    /// The samples in page order: `name` or `name{labels}` (labels as sent) and the value.
    pub samples: Vec<(String, f64)>,
}

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks `k="v",k="v"` (the text between the braces) and returns the label names.
fn parse_labels(labels: &str, line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("metrics: bad labels in {line:?}"));
        assert!(
            is_label_name(name),
            "metrics: bad label name {name:?} in {line:?}"
        );
        let mut value_end = None;
        let mut escaped = false;
        for (at, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    value_end = Some(at);
                    break;
                }
                '\n' => panic!("metrics: raw newline in a label value in {line:?}"),
                _ => {}
            }
        }
        let end = value_end.unwrap_or_else(|| panic!("metrics: unterminated label in {line:?}"));
        names.push(name.to_owned());
        rest = &after[end + 1..];
        if let Some(more) = rest.strip_prefix(',') {
            rest = more;
        } else {
            assert!(rest.is_empty(), "metrics: junk after a label in {line:?}");
        }
    }
    names
}

impl Scrape {
    /// Parses a page, failing the test on any line that is not `# HELP name text`,
    /// `# TYPE name kind` or a sample `name{labels} value`; on a sample whose family has no
    /// `# TYPE` line before it; on a family typed twice; and on a duplicate sample.
    pub fn parse(text: &str) -> Scrape {
        assert!(
            text.ends_with('\n'),
            "metrics: the page must end with a line feed"
        );
        let mut types: Vec<(String, String)> = Vec::new();
        let mut samples: Vec<(String, f64)> = Vec::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix('#') {
                let mut parts = comment.trim_start().splitn(3, ' ');
                let keyword = parts.next().unwrap_or_default();
                let name = parts.next().unwrap_or_default();
                let rest = parts.next().unwrap_or_default();
                match keyword {
                    "HELP" => assert!(is_metric_name(name), "metrics: bad HELP line {line:?}"),
                    "TYPE" => {
                        assert!(is_metric_name(name), "metrics: bad TYPE line {line:?}");
                        assert!(
                            ["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest),
                            "metrics: bad type in {line:?}"
                        );
                        assert!(
                            !types.iter().any(|(n, _)| n == name),
                            "metrics: family {name} typed twice"
                        );
                        types.push((name.to_owned(), rest.to_owned()));
                    }
                    _ => {} // Other comments are allowed by the format.
                }
                continue;
            }
            assert!(!line.trim().is_empty(), "metrics: blank line in the page");
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("metrics: sample line without a value: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("metrics: bad value in {line:?}"));
            let (name, label_names) = match key.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("metrics: bad labels in {line:?}"));
                    (name, parse_labels(labels, line))
                }
                None => (key, Vec::new()),
            };
            assert!(is_metric_name(name), "metrics: bad metric name in {line:?}");
            let family = types.iter().find(|(family, kind)| {
                name == family
                    || (kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| name.strip_suffix(suffix) == Some(family)))
                    || (kind == "summary"
                        && ["_sum", "_count"]
                            .iter()
                            .any(|suffix| name.strip_suffix(suffix) == Some(family)))
            });
            let (_, kind) = family
                .unwrap_or_else(|| panic!("metrics: sample {line:?} has no # TYPE before it"));
            if kind == "histogram" && name.ends_with("_bucket") {
                assert!(
                    label_names.iter().any(|l| l == "le"),
                    "metrics: histogram bucket without le: {line:?}"
                );
            }
            assert!(
                !samples.iter().any(|(k, _)| k == key),
                "metrics: duplicate sample {key}"
            );
            samples.push((key.to_owned(), value));
        }
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of the sample `key` (`name` or `name{labels}` exactly as sent), if present.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.samples.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The value of the sample `key`; fails the test if the page has no such sample.
    pub fn value(&self, key: &str) -> f64 {
        self.get(key)
            .unwrap_or_else(|| panic!("metrics: no sample {key} in\n{}", self.text))
    }

    /// Every sample whose name (before any `{`) is `name`, in page order.
    pub fn family(&self, name: &str) -> Vec<(String, f64)> {
        self.samples
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .cloned()
            .collect()
    }
}

/// Asserts a `/metrics` answer is `200` Prometheus text, and parses it.
pub fn parse_metrics_response(response: &Response) -> Scrape {
    assert_eq!(response.status, 200, "GET /metrics: {}", response.summary());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "GET /metrics: Content-Type {content_type:?} is not Prometheus text 0.0.4"
    );
    Scrape::parse(response.body_text())
}

/// `GET /metrics` on a new connection.
pub fn scrape(addr: SocketAddr) -> Scrape {
    parse_metrics_response(&get(addr, "/metrics"))
}

/// `GET /metrics` on an existing keep-alive connection, so repeated scrapes open no new
/// connections (and do not move the connection counters).
pub fn scrape_on(conn: &mut Conn) -> Scrape {
    conn.send(build_request("GET", "/metrics", &[], b""));
    parse_metrics_response(&conn.read_response("the /metrics answer"))
}

/// Scrapes on `conn` until `condition` holds for a page, or fails after [`DEADLINE`] showing
/// the last page. For counters that settle once the event loops finish their turn.
pub fn scrape_until(
    conn: &mut Conn,
    what: &str,
    mut condition: impl FnMut(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = scrape_on(conn);
        if condition(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}; last /metrics page:\n{}",
            page.text
        );
        std::thread::yield_now();
    }
}

// ---------------------------------------------------------------------------------------------
// The herald binary
// ---------------------------------------------------------------------------------------------

/// The `herald` binary Cargo built for this test run.
pub const HERALD_BIN: &str = env!("CARGO_BIN_EXE_herald");

/// A running `herald serve --listen 127.0.0.1:0 ...`, found through its
/// `herald listening on http://ADDR` stderr line. Killed (by its PID) when dropped unless it
/// has exited.
pub struct HeraldProcess {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    lines: Receiver<Option<String>>,
    stderr: Vec<String>,
    exited: Option<ExitStatus>,
}

impl HeraldProcess {
    /// Starts `herald serve --listen 127.0.0.1:0 args...` without inherited `HERALD_*`
    /// variables and waits (up to [`DEADLINE`]) for its listening line.
    pub fn spawn(args: &[&str]) -> HeraldProcess {
        let mut command = Command::new(HERALD_BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args);
        for (name, _) in std::env::vars() {
            if name.starts_with("HERALD_") {
                command.env_remove(name);
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {HERALD_BIN}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = sender.send(None);
        });
        let mut process = HeraldProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
            stderr: Vec::new(),
            exited: None,
        };
        const MARKER: &str = "herald listening on http://";
        let deadline = Instant::now() + DEADLINE;
        loop {
            let Some(line) = process.next_line(deadline) else {
                let status = process.child.wait().unwrap();
                process.exited = Some(status);
                panic!(
                    "herald {args:?} exited with {status:?} before listening; stderr: {:?}",
                    process.stderr
                );
            };
            if let Some(at) = line.find(MARKER) {
                let text = line[at + MARKER.len()..].trim().trim_end_matches('/');
                process.addr = text
                    .parse()
                    .unwrap_or_else(|_| panic!("bad address in stderr line {line:?}"));
                return process;
            }
        }
    }

    /// The next stderr line, or `None` once stderr is closed; fails at `deadline`.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(Some(line)) => {
                self.stderr.push(line.clone());
                Some(line)
            }
            Ok(None) | Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "herald (pid {}): timed out waiting on its stderr; so far: {:?}",
                self.pid(),
                self.stderr
            ),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `"TERM"`) with `kill -SIGNAL PID`.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Waits (up to `within`) for the process to exit: its stderr closes when it does.
    /// Returns its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        while self.next_line(deadline).is_some() {}
        let status = self.child.wait().unwrap();
        self.exited = Some(status);
        status
    }

    /// The stderr lines read so far (only read while starting and in
    /// [`HeraldProcess::wait_exit`]).
    pub fn stderr_lines(&self) -> &[String] {
        &self.stderr
    }

    /// A `kB` field of `/proc/PID/status` (e.g. `VmRSS`, `VmHWM`), in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let value = status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in {path}:\n{status}"));
        value
            .trim()
            .strip_suffix(" kB")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("bad {field} line in {path}: {value:?}"))
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// EventSource parser (WHATWG HTML, "9.2.6 Interpreting an event stream")
// ---------------------------------------------------------------------------------------------

/// One dispatched `MessageEvent` as an EventSource would fire it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type: the `event` field, or `message` when it was empty.
    pub event_type: String,
    /// The data buffer with its last LF removed.
    pub data: String,
    /// The EventSource's last event ID string at dispatch time.
    pub last_event_id: String,
}

/// An incremental event stream parser: bytes in, dispatched events out.
///
/// - The stream is UTF-8 decoded with replacement; one leading U+FEFF (BOM) is dropped.
/// - Lines end in CRLF, a lone LF or a lone CR; a CR at the end of one chunk and an LF at the
///   start of the next are one line end.
/// - A blank line dispatches; a line starting with `:` is a comment; otherwise the field name
///   runs to the first `:`, and one space after it is dropped from the value; a line without
///   `:` is a field with an empty value.
/// - `event` sets the type buffer, `data` appends the value and LF, `id` sets the last event
///   ID buffer unless the value contains U+0000, `retry` sets the reconnection time if the
///   value is ASCII digits only; other fields are ignored.
/// - Dispatch sets the last event ID string from its buffer (it persists across events), then
///   fires nothing if the data buffer is empty; otherwise drops the data's last LF and fires.
/// - At end of stream a partly received event is discarded (nothing to do: it never
///   dispatches).
#[derive(Debug, Default)]
pub struct EventStreamParser {
    /// Bytes held while deciding whether the stream starts with a BOM.
    bom_prefix: Vec<u8>,
    /// Whether the BOM check is over.
    bom_checked: bool,
    /// The current, unfinished line.
    line: Vec<u8>,
    /// The previous byte was a CR: an LF now completes the same line end.
    after_cr: bool,
    data: String,
    event_type: String,
    last_event_id_buffer: String,
    /// The last event ID string.
    pub last_event_id: String,
    /// The reconnection time set by the last valid `retry` field.
    pub retry_ms: Option<u64>,
    /// Comment lines seen (without the leading `:`), for tests that want them.
    pub comments: Vec<String>,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl EventStreamParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the stream; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let mut bytes = bytes;
        if !self.bom_checked {
            while !bytes.is_empty() && self.bom_prefix.len() < BOM.len() {
                let next = bytes[0];
                if next != BOM[self.bom_prefix.len()] {
                    break;
                }
                self.bom_prefix.push(next);
                bytes = &bytes[1..];
            }
            if self.bom_prefix.len() == BOM.len() {
                self.bom_prefix.clear();
                self.bom_checked = true;
            } else if bytes.is_empty() {
                return events; // Still a possible BOM prefix: wait for more.
            } else {
                // Not a BOM: the held bytes are ordinary stream content.
                self.bom_checked = true;
                let held = std::mem::take(&mut self.bom_prefix);
                self.scan(&held, &mut events);
            }
        }
        self.scan(bytes, &mut events);
        events
    }

    fn scan(&mut self, bytes: &[u8], events: &mut Vec<SseEvent>) {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
                None => {
                    self.line.extend_from_slice(rest);
                    return;
                }
                Some(at) => {
                    self.line.extend_from_slice(&rest[..at]);
                    self.after_cr = rest[at] == b'\r';
                    rest = &rest[at + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&String::from_utf8_lossy(&line), events);
                }
            }
        }
    }

    fn process_line(&mut self, line: &str, events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(events);
        } else if let Some(comment) = line.strip_prefix(':') {
            self.comments.push(comment.to_owned());
        } else if let Some((field, value)) = line.split_once(':') {
            let value = value.strip_prefix(' ').unwrap_or(value);
            self.process_field(field, value);
        } else {
            self.process_field(line, "");
        }
    }

    fn process_field(&mut self, field: &str, value: &str) {
        match field {
            "event" => self.event_type = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_event_id_buffer = value.to_owned(),
            // All digits; a value too large for u64 saturates.
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry_ms = Some(value.parse().unwrap_or(u64::MAX));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        self.last_event_id.clone_from(&self.last_event_id_buffer);
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        let event_type = if self.event_type.is_empty() {
            "message".to_owned()
        } else {
            std::mem::take(&mut self.event_type)
        };
        events.push(SseEvent {
            event_type,
            data: std::mem::take(&mut self.data),
            last_event_id: self.last_event_id.clone(),
        });
    }
}

/// Parses a whole stream in one piece.
pub fn parse_stream(bytes: &[u8]) -> Vec<SseEvent> {
    EventStreamParser::new().feed(bytes)
}

/// Sends `signal` (e.g. `"TERM"`, `"STOP"`) to a process this test started, with
/// `kill -SIGNAL PID`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("running kill failed: {e}"));
    assert!(status.success(), "kill -{signal} {pid} failed: {status:?}");
}

#[cfg(test)]
mod event_stream_parser_tests {
    use super::*;

    fn event(event_type: &str, data: &str, last_event_id: &str) -> SseEvent {
        SseEvent {
            event_type: event_type.to_owned(),
            data: data.to_owned(),
            last_event_id: last_event_id.to_owned(),
        }
    }

    fn message(data: &str) -> SseEvent {
        event("message", data, "")
    }

    /// Parses `input` whole, split at every position, and byte by byte; all must agree with
    /// `expected`.
    fn check(input: &[u8], expected: &[SseEvent]) {
        assert_eq!(parse_stream(input), expected, "whole input {input:?}");
        for split in 0..=input.len() {
            let mut parser = EventStreamParser::new();
            let mut events = parser.feed(&input[..split]);
            events.extend(parser.feed(&input[split..]));
            assert_eq!(events, expected, "input {input:?} split at {split}");
        }
        let mut parser = EventStreamParser::new();
        let events: Vec<SseEvent> = input.iter().flat_map(|b| parser.feed(&[*b])).collect();
        assert_eq!(events, expected, "input {input:?} fed byte by byte");
    }

    #[test]
    fn spec_example_data_lines_are_joined_with_lf() {
        check(
            b"data: YHOO\ndata: +2\ndata: 10\n\n",
            &[message("YHOO\n+2\n10")],
        );
    }

    #[test]
    fn spec_example_comment_id_reset_and_leading_space() {
        check(
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
            &[
                event("message", "first event", "1"),
                event("message", "second event", ""),
                event("message", " third event", ""),
            ],
        );
    }

    #[test]
    fn spec_example_empty_data_and_unterminated_event() {
        check(
            b"data\n\ndata\ndata\n\ndata:",
            &[message(""), message("\n")],
        );
    }

    #[test]
    fn spec_example_space_after_colon_is_optional() {
        check(
            b"data:test\n\ndata: test\n\n",
            &[message("test"), message("test")],
        );
    }

    #[test]
    fn cr_lf_and_crlf_all_end_lines() {
        check(
            b"data: a\rdata: b\r\ndata: c\ndata: d\r\r\n",
            &[message("a\nb\nc\nd")],
        );
        check(b"data: x\r\rdata: y\n\n", &[message("x"), message("y")]);
        check(b"data: x\r\n\r\ndata: y\r\r", &[message("x"), message("y")]);
    }

    #[test]
    fn cr_then_lf_in_separate_chunks_is_one_line_end() {
        let mut parser = EventStreamParser::new();
        assert_eq!(parser.feed(b"data: a\r"), vec![]);
        assert_eq!(parser.feed(b"\ndata: b\r"), vec![]);
        assert_eq!(parser.feed(b"\n"), vec![]);
        assert_eq!(parser.feed(b"\r"), vec![message("a\nb")]);
        assert_eq!(parser.feed(b"\n"), vec![]);
    }

    #[test]
    fn one_leading_bom_is_dropped() {
        check(b"\xEF\xBB\xBFdata: x\n\n", &[message("x")]);
        // A second BOM belongs to the field name `\u{feff}data`, an unknown field.
        check(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n", &[]);
        // A BOM later in the stream is content.
        check(b"data: \xEF\xBB\xBFx\n\n", &[message("\u{feff}x")]);
        // A partial BOM is not a BOM: the decoder replaces it.
        check(b"\xEF\xBBdata: x\n\ndata: y\n\n", &[message("y")]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        check(b"data: a\xFFb\n\n", &[message("a\u{fffd}b")]);
        check(b"data: \xE2\x82\n\n", &[message("\u{fffd}")]);
        check("data: é世🚀\n\n".as_bytes(), &[message("é世🚀")]);
    }

    #[test]
    fn event_field_sets_the_type_for_one_event_only() {
        check(
            b"event: add\ndata: 1\n\ndata: 2\n\nevent: a\nevent: b\ndata: 3\n\n",
            &[event("add", "1", ""), message("2"), event("b", "3", "")],
        );
        check(b"event:\ndata: x\n\n", &[message("x")]);
    }

    #[test]
    fn empty_data_buffer_dispatches_nothing_and_resets_the_type() {
        check(b"event: e\n\ndata: x\n\n", &[message("x")]);
        check(b"id: 1\nevent: e\nretry: 5\n\n", &[]);
        check(b"\n\n\n", &[]);
    }

    #[test]
    fn id_persists_and_ids_with_nul_are_ignored() {
        check(
            b"id: 7\ndata: a\n\ndata: b\n\nid: 8\x009\ndata: c\n\nid\ndata: d\n\n",
            &[
                event("message", "a", "7"),
                event("message", "b", "7"),
                event("message", "c", "7"),
                event("message", "d", ""),
            ],
        );
        let mut parser = EventStreamParser::new();
        assert_eq!(parser.feed(b"id: 42\n\n"), vec![]);
        assert_eq!(parser.last_event_id, "42");
        // The buffer only becomes the last event ID at dispatch.
        assert_eq!(parser.feed(b"id: 43\n"), vec![]);
        assert_eq!(parser.last_event_id, "42");
        assert_eq!(parser.feed(b"\n"), vec![]);
        assert_eq!(parser.last_event_id, "43");
    }

    #[test]
    fn retry_accepts_ascii_digits_only() {
        let retry = |input: &[u8]| {
            let mut parser = EventStreamParser::new();
            parser.feed(input);
            parser.retry_ms
        };
        assert_eq!(retry(b"retry: 1500\n"), Some(1500));
        assert_eq!(retry(b"retry:1500\n"), Some(1500));
        assert_eq!(retry(b"retry: 1500\nretry: 15x\n"), Some(1500));
        assert_eq!(retry(b"retry:  1500\n"), None);
        assert_eq!(retry(b"retry: -1\n"), None);
        assert_eq!(retry(b"retry: 1.5\n"), None);
        assert_eq!(retry(b"retry\n"), None);
        assert_eq!(retry(b"retry: \n"), None);
        assert_eq!(
            retry(b"retry: 1500"),
            None,
            "an unfinished line is not a field"
        );
    }

    #[test]
    fn fields_without_colon_unknown_fields_and_comments() {
        check(
            b"foo: bar\n:comment\n: another\ndata\ndata:x\ndata::y\n\n",
            &[message("\nx\n:y")],
        );
        let mut parser = EventStreamParser::new();
        parser.feed(b": ping\n:\n");
        assert_eq!(parser.comments, vec![" ping".to_owned(), String::new()]);
        check(b"Data: x\n\n", &[]);
        check(b"data : x\n\n", &[]);
    }

    #[test]
    fn only_one_space_after_the_colon_is_dropped() {
        check(b"data:  two\n\n", &[message(" two")]);
        check(b"data:\tx\n\n", &[message("\tx")]);
        check(b"data: \n\n", &[message("")]);
    }

    #[test]
    fn unterminated_event_at_end_of_stream_is_discarded() {
        check(b"data: done\n\ndata: pending\n", &[message("done")]);
        check(b"data: done\n\ndata: pending", &[message("done")]);
    }

    #[test]
    fn a_long_stream_with_every_feature_survives_every_split() {
        let input = "\u{feff}: hello\r\nretry: 10\r\n\r\nid: 1\nevent: add\ndata: a\r\ndata:b\rdata\n\n\
                     id: 2\u{0}\ndata: é世🚀\r\n\r\ndata: x\r\r:c\nevent: e\nid: 3\n\nid\ndata:  y\n\n"
            .as_bytes();
        check(
            input,
            &[
                event("add", "a\nb\n", "1"),
                event("message", "é世🚀", "1"),
                event("message", "x", "1"),
                event("message", " y", ""),
            ],
        );
    }
}
