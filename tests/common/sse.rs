//! Server-Sent Events for the tests: an open `GET /events` stream ([`Subscriber`]) and the
//! parser it reads through ([`EventStreamParser`]), which follows the WHATWG HTML "event
//! stream interpretation" to the letter.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::http::{build_request, find, form, preview, Conn, Response};
use super::DEADLINE;

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
