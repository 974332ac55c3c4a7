//! The blocking HTTP client of the `cluster` checks: one SSE subscription read until an
//! event arrives, and single requests (GET, publish POST) on fresh loopback connections
//! with a capped response body.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use testkit::sse::{Item, SseParser};

use super::invalid;
use crate::http::{self, ChunkedDecoder, Head};

pub(super) fn v4(addr: SocketAddr) -> io::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) if a.ip().is_loopback() => Ok(a),
        other => Err(invalid(format!("{other} is not an IPv4 loopback address"))),
    }
}

/// One blocking SSE subscription (herald's raw, unchunked stream body).
pub(super) struct SseConn {
    stream: TcpStream,
    parser: SseParser,
    /// (id, data) of the events received and not yet matched.
    events: Vec<(String, String)>,
}

impl SseConn {
    pub(super) fn open(addr: SocketAddrV4, path: &str, until: Instant) -> io::Result<SseConn> {
        let mut stream = connect(addr)?;
        stream.write_all(&http::subscribe_request(&addr.to_string(), path, b""))?;
        let (head, rest) = read_head(&mut stream, until)?;
        if head.status != 200 || !head.event_stream || head.chunked {
            return Err(io::Error::other(format!(
                "{addr}{path}: status {}, event stream {}, chunked {}",
                head.status, head.event_stream, head.chunked
            )));
        }
        let mut conn = SseConn {
            stream,
            parser: SseParser::new(),
            events: Vec::new(),
        };
        conn.feed(&rest)?;
        Ok(conn)
    }

    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        let events = &mut self.events;
        self.parser
            .feed(bytes, &mut |item| {
                if let Item::Event(e) = item {
                    events.push((
                        String::from_utf8_lossy(e.id).into_owned(),
                        String::from_utf8_lossy(e.data).into_owned(),
                    ));
                }
            })
            .map_err(|e| io::Error::other(format!("event stream: {e:?}")))
    }

    /// The id of the event whose data is `data`, once it arrives; `None` at `until`.
    pub(super) fn wait_for(&mut self, data: &str, until: Instant) -> io::Result<Option<String>> {
        let mut scratch = [0u8; 4096];
        loop {
            if let Some((id, _)) = self.events.iter().find(|(_, d)| d == data) {
                return Ok(Some(id.clone()));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            match self.stream.read(&mut scratch) {
                Ok(0) => return Err(io::Error::other("the probe stream closed")),
                Ok(n) => self.feed(&scratch[..n])?,
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

fn connect(addr: SocketAddrV4) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Reads a response head; returns it and the bytes after it.
fn read_head(stream: &mut TcpStream, until: Instant) -> io::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut scratch = [0u8; 4096];
    loop {
        if let Some(head) =
            http::parse_head(&buf).map_err(|e| io::Error::other(format!("response head: {e:?}")))?
        {
            return Ok((head, buf.split_off(head.len)));
        }
        if Instant::now() >= until {
            return Err(io::Error::new(ErrorKind::TimedOut, "no response head"));
        }
        match stream.read(&mut scratch) {
            Ok(0) => return Err(io::Error::other("closed before the response head")),
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Largest response body [`exchange`] accepts (metrics pages and publish answers are a
/// few KiB).
const BODY_BYTES_MAX: usize = 1024 * 1024;

fn body_too_large(addr: SocketAddr) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("response body from {addr} exceeds {BODY_BYTES_MAX} bytes"),
    )
}

/// One request on a fresh connection; the status and the body as text. A body over
/// [`BODY_BYTES_MAX`] is an error.
fn exchange(addr: SocketAddr, request: &[u8]) -> io::Result<(u16, String)> {
    let until = Instant::now() + Duration::from_secs(5);
    let mut stream = connect(v4(addr)?)?;
    stream.write_all(request)?;
    let (head, mut rest) = read_head(&mut stream, until)?;
    if head.content_length.is_some_and(|n| n > BODY_BYTES_MAX) {
        return Err(body_too_large(addr));
    }
    let mut scratch = [0u8; 16 * 1024];
    let mut decoder = ChunkedDecoder::default();
    let mut body = Vec::new();
    loop {
        let done = if head.chunked {
            decoder
                .feed(&rest, &mut |d| body.extend_from_slice(d))
                .map_err(|_| io::Error::other("bad chunked body"))?;
            rest.clear();
            decoder.is_done()
        } else {
            head.content_length.is_some_and(|n| rest.len() >= n)
        };
        if done {
            break;
        }
        if body.len() > BODY_BYTES_MAX || rest.len() > BODY_BYTES_MAX {
            return Err(body_too_large(addr));
        }
        if Instant::now() >= until {
            return Err(io::Error::new(ErrorKind::TimedOut, "response body"));
        }
        match stream.read(&mut scratch) {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&scratch[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    if !head.chunked {
        rest.truncate(head.content_length.unwrap_or(rest.len()));
        body = rest;
    }
    if body.len() > BODY_BYTES_MAX {
        return Err(body_too_large(addr));
    }
    Ok((head.status, String::from_utf8_lossy(&body).into_owned()))
}

pub(super) fn post(addr: SocketAddr, path: &str, body: &str) -> io::Result<(u16, String)> {
    let mut request = Vec::new();
    http::publish_request(&mut request, &addr.to_string(), path, body.as_bytes());
    exchange(addr, &request)
}

pub(super) fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, request.as_bytes())
}
