//! The one client-side reader of `text/event-stream` for herald's tests, fuzz checks and load
//! generator, following the WHATWG HTML "event stream interpretation" to the letter.
//!
//! [`SseParser`] is incremental and allocation-free once its buffers are warm: bytes in, in
//! any split, and [`Item`]s out through a callback, each borrowing the parser's buffers, so
//! the load generator can read millions of events with it. [`SseCollector`] wraps it for tests:
//! owned [`SseEvent`]s, the comments, the last `retry:` value and the last event ID string.
//!
//! The spec decodes the stream as UTF-8 (replacing invalid sequences) before it splits lines.
//! This parser works on bytes and decodes only what it hands out; that is the same thing,
//! because every byte the rules look at (CR, LF, `:`, space, NUL, digits and field names) is
//! ASCII, which always ends an incomplete UTF-8 sequence and never occurs inside one:
//!
//! - One leading U+FEFF (BOM, `EF BB BF`) is dropped, even when split across reads.
//! - Lines end in CRLF, a lone LF or a lone CR; a CR at the end of one read and an LF at the
//!   start of the next are one line end.
//! - A blank line dispatches; a line starting with `:` is a comment; otherwise the field name
//!   runs to the first `:`, and one space after it is dropped from the value; a line without
//!   `:` is a field with an empty value.
//! - `event` sets the type buffer, `data` appends the value and LF, `id` sets the last event
//!   ID buffer unless the value contains NUL, `retry` sets the reconnection time if the value
//!   is ASCII digits only (a value too large for `u64` saturates); other fields are ignored.
//! - Dispatch sets the last event ID from its buffer (it persists across events), then fires
//!   nothing if the data buffer is empty; otherwise drops the data's last LF and fires. The
//!   event type and data buffers are reset either way.
//! - At the end of the stream a partly received event never dispatches.
//!
//! Sans-io: no socket here.

/// Longest line [`SseParser::new`] keeps while waiting for its end. A longer line is a
/// protocol fault: the parser reports it and the caller closes the stream, so a server cannot
/// grow client memory without bound.
pub const LINE_BYTES_MAX: usize = 64 * 1024;

/// Most bytes of `data` [`SseParser::new`] accumulates for one event, for the same reason.
pub const EVENT_BYTES_MAX: usize = 1024 * 1024;

/// The line and event limit of [`SseCollector`]: four times herald's largest accepted publish
/// body (64 MiB), so no event herald can send reaches it and only a runaway stream does.
pub const COLLECTOR_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Comment lines an [`SseCollector`] keeps (heartbeats add one each); past this a stream
/// that never stops commenting fails the test instead of growing its memory.
pub const COLLECTOR_COMMENTS_MAX: usize = 100_000;

/// One dispatched event. Slices borrow the parser's buffers until the callback returns.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The last event ID at dispatch (persists across events, as in a browser).
    pub id: &'a [u8],
    /// The `event:` value, empty for the default `message`.
    pub name: &'a [u8],
    /// The `data` lines joined with LF, without the trailing LF.
    pub data: &'a [u8],
}

impl Event<'_> {
    /// The type an EventSource fires: the `event:` value, or `message` when it was empty.
    pub fn event_type(&self) -> &[u8] {
        if self.name.is_empty() {
            b"message"
        } else {
            self.name
        }
    }

    /// An owned copy, decoded the way an EventSource decodes it.
    pub fn to_owned_event(&self) -> SseEvent {
        SseEvent {
            event_type: lossy(self.event_type()),
            data: lossy(self.data),
            last_event_id: lossy(self.id),
        }
    }
}

/// What one line of the stream did that a reader may want to know.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A blank line dispatched an event.
    Event(Event<'a>),
    /// A comment line, without its leading `:`.
    Comment(&'a [u8]),
    /// A valid `retry:` field set the reconnection time, in milliseconds.
    Retry(u64),
}

/// Why a stream could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseError {
    /// A line exceeded the parser's line limit.
    LineTooLong,
    /// An event's data exceeded the parser's event limit.
    EventTooLarge,
}

/// Parser state for one stream. Buffers start empty and only hold a partial line or the
/// event being assembled; they are reused, never reallocated per line.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    name: Vec<u8>,
    /// The id field most recently parsed, not yet confirmed by a dispatch.
    id_buffer: Vec<u8>,
    /// The id of the last dispatch: what a reconnecting browser sends.
    last_id: Vec<u8>,
    /// The previous read ended in CR: an LF at the start of the next one is not a new line.
    after_cr: bool,
    /// Still at the very start of the stream, where one UTF-8 BOM is skipped.
    at_start: bool,
    line_bytes_max: usize,
    event_bytes_max: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    /// A parser for a new stream, within [`LINE_BYTES_MAX`] and [`EVENT_BYTES_MAX`].
    pub fn new() -> SseParser {
        SseParser::with_limits(LINE_BYTES_MAX, EVENT_BYTES_MAX)
    }

    /// A parser for a new stream whose lines and event data may each reach the given sizes.
    pub fn with_limits(line_bytes_max: usize, event_bytes_max: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            data: Vec::new(),
            name: Vec::new(),
            id_buffer: Vec::new(),
            last_id: Vec::new(),
            after_cr: false,
            at_start: true,
            line_bytes_max,
            event_bytes_max,
        }
    }

    /// A parser for a resumed stream that keeps `last_id` until the server sends another id.
    pub fn resumed(last_id: Vec<u8>) -> SseParser {
        SseParser {
            id_buffer: last_id.clone(),
            last_id,
            ..SseParser::new()
        }
    }

    /// The id in force at the last dispatch (what a reconnecting client sends as
    /// `Last-Event-ID`). An id whose event was cut off by a disconnect does not count.
    pub fn last_id(&self) -> &[u8] {
        &self.last_id
    }

    /// Feeds `bytes`, calling `on_item` for each event, comment and valid `retry:` they
    /// complete. After an error the stream is broken: the caller closes it.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        on_item: &mut impl FnMut(Item<'_>),
    ) -> Result<(), SseError> {
        if bytes.is_empty() {
            return Ok(());
        }
        bytes = self.skip_bom(bytes);
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.push_line_part(&bytes[..end])?;
            self.end_line(on_item)?;
            let crlf = bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n');
            if bytes[end] == b'\r' && end + 1 == bytes.len() {
                self.after_cr = true;
            }
            bytes = &bytes[end + if crlf { 2 } else { 1 }..];
        }
        self.push_line_part(bytes)
    }

    /// Skips a UTF-8 byte order mark at the start of the stream, even one split across reads.
    fn skip_bom<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        if !self.at_start || bytes.is_empty() {
            return bytes;
        }
        let seen = self.line.len();
        let take = (BOM.len() - seen).min(bytes.len());
        if self
            .line
            .iter()
            .chain(&bytes[..take])
            .eq(&BOM[..seen + take])
        {
            if seen + take == BOM.len() {
                self.line.clear();
                self.at_start = false;
            } else {
                self.line.extend_from_slice(&bytes[..take]);
            }
            return &bytes[take..];
        }
        // Not a BOM: whatever was held back is ordinary line content.
        self.at_start = false;
        bytes
    }

    fn push_line_part(&mut self, part: &[u8]) -> Result<(), SseError> {
        if !part.is_empty() {
            self.at_start = false;
        }
        if self.line.len() + part.len() > self.line_bytes_max {
            return Err(SseError::LineTooLong);
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    fn end_line(&mut self, on_item: &mut impl FnMut(Item<'_>)) -> Result<(), SseError> {
        self.at_start = false;
        // Taken and put back, so the line's allocation serves the next line too.
        let line = std::mem::take(&mut self.line);
        let result = if line.is_empty() {
            self.dispatch(on_item);
            Ok(())
        } else {
            self.field(&line, on_item)
        };
        self.line = line;
        self.line.clear();
        result
    }

    fn field(&mut self, line: &[u8], on_item: &mut impl FnMut(Item<'_>)) -> Result<(), SseError> {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => {
                on_item(Item::Comment(&line[1..]));
                return Ok(());
            }
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.event_bytes_max {
                    return Err(SseError::EventTooLarge);
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(value);
            }
            b"id" if !value.contains(&0) => {
                self.id_buffer.clear();
                self.id_buffer.extend_from_slice(value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let ms = value.iter().try_fold(0u64, |ms, digit| {
                    ms.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
                });
                on_item(Item::Retry(ms.unwrap_or(u64::MAX)));
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, on_item: &mut impl FnMut(Item<'_>)) {
        if self.last_id != self.id_buffer {
            self.last_id.clear();
            self.last_id.extend_from_slice(&self.id_buffer);
        }
        if !self.data.is_empty() {
            self.data.pop(); // The trailing LF.
            on_item(Item::Event(Event {
                id: &self.last_id,
                name: &self.name,
                data: &self.data,
            }));
        }
        self.data.clear();
        self.name.clear();
    }
}

/// One dispatched `MessageEvent` as an EventSource would fire it, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type: the `event` field, or `message` when it was empty.
    pub event_type: String,
    /// The data buffer with its last LF removed.
    pub data: String,
    /// The EventSource's last event ID string at dispatch time.
    pub last_event_id: String,
}

/// [`SseParser`] for tests: owned events out, and what else the stream said kept in fields.
/// Limited by [`COLLECTOR_BYTES_MAX`] and [`COLLECTOR_COMMENTS_MAX`]; a stream beyond
/// either fails the test.
#[derive(Debug)]
pub struct SseCollector {
    parser: SseParser,
    /// The last event ID string (what a browser would send on reconnect).
    pub last_event_id: String,
    /// The reconnection time set by the last valid `retry` field.
    pub retry_ms: Option<u64>,
    /// Comment lines seen (without the leading `:`), in order.
    pub comments: Vec<String>,
}

impl Default for SseCollector {
    fn default() -> Self {
        SseCollector::new()
    }
}

impl SseCollector {
    /// A collector at the start of a stream.
    pub fn new() -> SseCollector {
        SseCollector {
            parser: SseParser::with_limits(COLLECTOR_BYTES_MAX, COLLECTOR_BYTES_MAX),
            last_event_id: String::new(),
            retry_ms: None,
            comments: Vec::new(),
        }
    }

    /// Feeds the next bytes of the stream; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let (retry_ms, comments) = (&mut self.retry_ms, &mut self.comments);
        let fed = self.parser.feed(bytes, &mut |item| match item {
            Item::Event(event) => events.push(event.to_owned_event()),
            Item::Comment(text) => comments.push(lossy(text)),
            Item::Retry(ms) => *retry_ms = Some(ms),
        });
        if let Err(error) = fed {
            panic!("the event stream broke the collector's limit: {error:?}");
        }
        assert!(
            self.comments.len() <= COLLECTOR_COMMENTS_MAX,
            "the event stream sent more than {COLLECTOR_COMMENTS_MAX} comment lines"
        );
        let last_id = self.parser.last_id();
        if last_id != self.last_event_id.as_bytes() {
            self.last_event_id = lossy(last_id);
        }
        events
    }
}

/// Parses a whole stream in one piece.
pub fn parse_stream(bytes: &[u8]) -> Vec<SseEvent> {
    SseCollector::new().feed(bytes)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests;
