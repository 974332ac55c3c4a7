//! The little HTTP/1.1 a load generator speaks: subscribe and publish request bytes, response
//! heads (through `httparse`), and a chunked transfer-coding decoder (nginx streams
//! EventSource bodies chunked; herald sends them raw until close).
//!
//! Sans-io: bytes in, bytes or facts out. No socket here.

/// Largest response head accepted. Real heads here are a few hundred bytes.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;

/// Header fields parsed in a response head; more is a malformed head.
const HEADERS_MAX: usize = 48;

/// The request that opens one event stream.
pub fn subscribe_request(host: &str, path: &str, last_event_id: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
    )
    .into_bytes();
    if !last_event_id.is_empty() {
        out.extend_from_slice(b"Last-Event-ID: ");
        out.extend_from_slice(last_event_id);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// One keep-alive publish with a raw `text/plain` body, appended to `out`.
pub fn publish_request(out: &mut Vec<u8>, host: &str, path: &str, body: &[u8]) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

/// What a response head says that the client needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// `Content-Type` is `text/event-stream` (parameters allowed).
    pub event_stream: bool,
    /// The body is chunked.
    pub chunked: bool,
    /// `Content-Length`, when given.
    pub content_length: Option<usize>,
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

/// Why a response head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not valid HTTP/1.x.
    Malformed,
    /// Longer than [`HEAD_BYTES_MAX`] without ending.
    TooLarge,
}

/// Parses a response head from the start of `buf`: `Ok(None)` means more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= HEAD_BYTES_MAX => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HeadError::Malformed),
    };
    let mut head = Head {
        status: response.code.unwrap_or(0),
        event_stream: false,
        chunked: false,
        content_length: None,
        len,
    };
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        let value = value.trim();
        if header.name.eq_ignore_ascii_case("content-type") {
            let media = value.split(';').next().unwrap_or("").trim();
            head.event_stream = media.eq_ignore_ascii_case("text/event-stream");
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().ends_with("chunked");
        } else if header.name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        }
    }
    Ok(Some(head))
}

/// Longest chunk-size line (hex digits plus extensions) accepted.
const CHUNK_LINE_BYTES_MAX: usize = 256;

/// Where a chunked body decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size line; `size` so far, `digits` seen, `in_ext` past a `;`.
    Size {
        size: u64,
        line: usize,
        in_ext: bool,
    },
    /// Inside chunk data with this many bytes left.
    Data(u64),
    /// Expecting the CR LF after chunk data; `cr` once the CR is seen.
    DataEnd { cr: bool },
    /// Reading trailer lines after the last chunk; `line` bytes of the current one.
    Trailer { line: usize },
    /// The body ended.
    Done,
}

/// A chunked body that broke the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkError;

/// Decodes `Transfer-Encoding: chunked` incrementally, split at any byte.
#[derive(Clone, Copy, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size {
                size: 0,
                line: 0,
                in_ext: false,
            },
        }
    }
}

impl ChunkedDecoder {
    /// True once the terminating chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Feeds raw bytes, passing decoded body bytes to `out`; returns how many bytes of
    /// `bytes` were consumed (all of them, unless the body ended inside `bytes`).
    pub fn feed(&mut self, bytes: &[u8], out: &mut impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < bytes.len() && self.state != ChunkState::Done {
            at += self.step(&bytes[at..], out)?;
        }
        Ok(at)
    }

    /// Consumes at least one byte of non-empty `bytes`.
    fn step(&mut self, bytes: &[u8], out: &mut impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let byte = bytes[0];
        self.state = match self.state {
            ChunkState::Data(left) => {
                let take = (left.min(bytes.len() as u64)) as usize;
                out(&bytes[..take]);
                self.state = if left == take as u64 {
                    ChunkState::DataEnd { cr: false }
                } else {
                    ChunkState::Data(left - take as u64)
                };
                return Ok(take);
            }
            ChunkState::Size { size, line, in_ext } => size_byte(byte, size, line, in_ext)?,
            ChunkState::DataEnd { cr: false } if byte == b'\r' => ChunkState::DataEnd { cr: true },
            ChunkState::DataEnd { .. } if byte == b'\n' => ChunkState::Size {
                size: 0,
                line: 0,
                in_ext: false,
            },
            ChunkState::DataEnd { .. } => return Err(ChunkError),
            ChunkState::Trailer { line } => match byte {
                b'\n' if line == 0 => ChunkState::Done,
                b'\n' => ChunkState::Trailer { line: 0 },
                b'\r' => ChunkState::Trailer { line },
                _ if line >= CHUNK_LINE_BYTES_MAX => return Err(ChunkError),
                _ => ChunkState::Trailer { line: line + 1 },
            },
            ChunkState::Done => return Ok(0),
        };
        Ok(1)
    }
}

/// One byte of a chunk-size line.
fn size_byte(byte: u8, size: u64, line: usize, in_ext: bool) -> Result<ChunkState, ChunkError> {
    if line >= CHUNK_LINE_BYTES_MAX {
        return Err(ChunkError);
    }
    let next = |size, in_ext| ChunkState::Size {
        size,
        line: line + 1,
        in_ext,
    };
    match byte {
        b'\n' if line == 0 => Err(ChunkError),
        b'\n' if size == 0 => Ok(ChunkState::Trailer { line: 0 }),
        b'\n' => Ok(ChunkState::Data(size)),
        b'\r' => Ok(next(size, in_ext)),
        _ if in_ext => Ok(next(size, true)),
        b';' | b' ' | b'\t' => Ok(next(size, true)),
        _ => {
            let digit = (byte as char).to_digit(16).ok_or(ChunkError)?;
            let size = size.checked_mul(16).ok_or(ChunkError)? + u64::from(digit);
            Ok(next(size, false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(input: &[u8], split: usize) -> (Vec<u8>, bool) {
        let mut decoder = ChunkedDecoder::default();
        let mut body = Vec::new();
        let (a, b) = input.split_at(split);
        for part in [a, b] {
            decoder
                .feed(part, &mut |d| body.extend_from_slice(d))
                .unwrap();
        }
        (body, decoder.is_done())
    }

    #[test]
    fn chunked_at_every_split() {
        let input = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..=input.len() {
            assert_eq!(
                decode_split(input, split),
                (b"hello 0123456789".to_vec(), true),
                "split at {split}"
            );
        }
    }

    #[test]
    fn chunked_stream_not_done_and_errors() {
        assert_eq!(decode_split(b"3\r\nabc\r\n", 4), (b"abc".to_vec(), false));
        let mut decoder = ChunkedDecoder::default();
        assert_eq!(decoder.feed(b"zz\r\n", &mut |_| {}), Err(ChunkError));
        let mut decoder = ChunkedDecoder::default();
        assert_eq!(decoder.feed(b"1\r\nab", &mut |_| {}), Err(ChunkError));
    }

    #[test]
    fn heads() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\nrest";
        for end in 0..raw.len() - 4 {
            assert_eq!(parse_head(&raw[..end]), Ok(None), "prefix {end}");
        }
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(
            (head.status, head.event_stream, head.chunked),
            (200, true, true)
        );
        assert_eq!(head.len, raw.len() - 4);
        let head = parse_head(
            b"HTTP/1.1 503 Busy\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (head.status, head.event_stream, head.content_length),
            (503, false, Some(4))
        );
        assert_eq!(parse_head(b"NOPE\r\n\r\n"), Err(HeadError::Malformed));
    }

    #[test]
    fn requests() {
        let req = subscribe_request("127.0.0.1:1", "/events?topic=a", b"1-2");
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("GET /events?topic=a HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"));
        assert!(text.ends_with("Last-Event-ID: 1-2\r\n\r\n"));
        let mut out = Vec::new();
        publish_request(&mut out, "h", "/pub/a", b"xyz");
        assert!(out.ends_with(b"Content-Length: 3\r\n\r\nxyz"));
    }
}
