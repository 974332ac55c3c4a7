//! Client-side parser of a `text/event-stream` body, following the WHATWG "event stream
//! interpretation": lines end in CRLF, LF or CR (a CR at the end of one read and an LF at
//! the start of the next are one line end), `field: value` with one optional space removed,
//! `data` lines joined with LF, `id` kept across events, comments (`:`) ignored, a blank
//! line dispatches. Bytes may arrive split at any position.
//!
//! Sans-io: bytes in, events out through a callback. No socket here.

/// Longest line kept while waiting for its end. A longer line is a protocol fault: the
/// parser reports it and the caller closes the stream, so a server cannot grow client
/// memory without bound.
pub const LINE_BYTES_MAX: usize = 64 * 1024;

/// Most bytes of `data` accumulated for one event, for the same reason.
pub const EVENT_BYTES_MAX: usize = 1024 * 1024;

/// One dispatched event. Slices borrow the parser's buffers until the callback returns.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The last event ID seen on this stream (persists across events, as in a browser).
    pub id: &'a [u8],
    /// The `event:` name, empty for the default `message`.
    pub name: &'a [u8],
    /// The `data` lines joined with LF, without the trailing LF.
    pub data: &'a [u8],
}

/// Why a stream could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseError {
    /// A line exceeded [`LINE_BYTES_MAX`].
    LineTooLong,
    /// An event's data exceeded [`EVENT_BYTES_MAX`].
    EventTooLarge,
}

/// Parser state for one stream. Buffers start empty and only hold a partial line or the
/// event being assembled.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    name: Vec<u8>,
    /// The id field most recently parsed, not yet confirmed by a dispatch.
    id_buffer: Vec<u8>,
    /// The id of the last dispatched event: what a reconnecting browser sends.
    last_id: Vec<u8>,
    /// The previous chunk ended in CR: an LF at the start of the next one is not a new line.
    after_cr: bool,
    /// Still at the very start of the stream, where one UTF-8 BOM is skipped.
    at_start: bool,
}

impl SseParser {
    /// A parser for a new stream.
    pub fn new() -> SseParser {
        SseParser {
            at_start: true,
            ..SseParser::default()
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

    /// Feeds `bytes`, calling `on_event` for each complete event.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        on_event: &mut impl FnMut(Event<'_>),
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
            self.end_line(on_event)?;
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
        if self.line.len() + part.len() > LINE_BYTES_MAX {
            return Err(SseError::LineTooLong);
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(Event<'_>)) -> Result<(), SseError> {
        self.at_start = false;
        let line = std::mem::take(&mut self.line);
        let result = if line.is_empty() {
            self.dispatch(on_event);
            Ok(())
        } else {
            self.field(&line)
        };
        self.line = line;
        self.line.clear();
        result
    }

    fn field(&mut self, line: &[u8]) -> Result<(), SseError> {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return Ok(()),
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.data.len() + value.len() + 1 > EVENT_BYTES_MAX {
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
            _ => {} // `retry` and unknown fields do not concern a load generator.
        }
        Ok(())
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(Event<'_>)) {
        if self.last_id != self.id_buffer {
            self.last_id.clear();
            self.last_id.extend_from_slice(&self.id_buffer);
        }
        if !self.data.is_empty() {
            self.data.pop(); // The trailing LF.
            on_event(Event {
                id: &self.last_id,
                name: &self.name,
                data: &self.data,
            });
        }
        self.data.clear();
        self.name.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of an event, for comparisons.
    type Owned = (String, String, String);

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<Owned> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser
                .feed(chunk, &mut |e| {
                    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    out.push((s(e.id), s(e.name), s(e.data)));
                })
                .unwrap();
        }
        out
    }

    /// Parses `input` whole, then split at every byte position (and byte by byte), and checks
    /// that every split gives `expected`.
    fn check(input: &[u8], expected: &[(&str, &str, &str)]) {
        let expected: Vec<Owned> = expected
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(parse_chunks(&[input]), expected, "whole {input:?}");
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(parse_chunks(&[a, b]), expected, "split at {split}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes), expected, "byte by byte");
    }

    #[test]
    fn herald_frames() {
        check(
            b"retry: 3000\n\nid: 1-1\ndata: seq=0 ts=5 xx\n\nid: 1-2\nevent: alert\ndata: b\n\n",
            &[("1-1", "", "seq=0 ts=5 xx"), ("1-2", "alert", "b")],
        );
    }

    #[test]
    fn line_ends_crlf_cr_lf() {
        check(
            b"id: a\r\ndata: x\r\n\r\nid: b\rdata: y\r\rid: c\ndata: z\n\n",
            &[("a", "", "x"), ("b", "", "y"), ("c", "", "z")],
        );
    }

    #[test]
    fn multi_line_data_comments_and_fields() {
        check(
            b": hi\n\ndata:one\ndata: two\ndata\nevent:e\nretry: 5\nbogus: 1\n\n",
            &[("", "e", "one\ntwo\n")],
        );
    }

    #[test]
    fn id_persists_and_empty_data_does_not_dispatch() {
        check(
            b"id: 7\n\nevent: x\n\ndata: a\n\nid\ndata: b\n\n",
            &[("7", "", "a"), ("", "", "b")],
        );
    }

    #[test]
    fn bom_is_skipped_once() {
        check(b"\xEF\xBB\xBFdata: a\n\n", &[("", "", "a")]);
        check(
            b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n",
            &[("", "", "b")],
        );
    }

    #[test]
    fn unterminated_event_is_not_dispatched() {
        check(b"data: a\n\ndata: b\n", &[("", "", "a")]);
    }

    #[test]
    fn resumed_keeps_last_id() {
        let mut parser = SseParser::resumed(b"9".to_vec());
        let mut ids = Vec::new();
        parser
            .feed(b"data: a\n\n", &mut |e| ids.push(e.id.to_vec()))
            .unwrap();
        assert_eq!(ids, vec![b"9".to_vec()]);
        assert_eq!(parser.last_id(), b"9");
    }

    #[test]
    fn cut_off_event_does_not_move_last_id() {
        let mut parser = SseParser::new();
        parser
            .feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n", &mut |_| {})
            .unwrap();
        assert_eq!(parser.last_id(), b"1");
        parser.feed(b"\n", &mut |_| {}).unwrap();
        assert_eq!(parser.last_id(), b"2");
    }

    #[test]
    fn long_line_is_refused() {
        let mut parser = SseParser::new();
        let line = vec![b'a'; LINE_BYTES_MAX + 1];
        assert_eq!(parser.feed(&line, &mut |_| {}), Err(SseError::LineTooLong));
    }
}
