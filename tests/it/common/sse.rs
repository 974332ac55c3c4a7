//! Server-Sent Events for the tests: an open `GET /events` stream ([`Subscriber`]), read
//! through `testkit::sse`, the WHATWG-exact parser that `fuzz/` and `loadtest/` use too. Its
//! owned types are re-exported so a test file finds them in `common`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::http::{build_request, find, form, preview, Conn, Response};
use super::DEADLINE;

pub use testkit::sse::{SseCollector, SseEvent};

/// An open `GET /events` stream, read through [`SseCollector`].
pub struct Subscriber {
    conn: Conn,
    parser: SseCollector,
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
            parser: SseCollector::new(),
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
