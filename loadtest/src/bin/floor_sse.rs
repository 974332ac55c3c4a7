//! `floor_sse`: a deliberately minimal SSE fan-out server, a benchmark instrument and not a
//! product. It measures the floor: the CPU any SSE server must spend when it does one
//! `write` per delivery on this machine, so herald's (and nchan's) figures can be read
//! against it.
//!
//! It speaks just enough HTTP/1.1 for `loadtest run --target herald`:
//!
//! - `GET /events?topic=T` answers `200 OK`, `Content-Type: text/event-stream`,
//!   `Cache-Control: no-cache` and `retry: 3000` in one write, then streams;
//! - `POST /publish?topic=T` with `Content-Length` (keep-alive, pipelined) frames the body
//!   as `id: N\ndata: <line>\n...\n\n` and writes it with ONE `write` per subscriber of T,
//!   then answers `200 OK` with the id. The answers to the requests read in one wake-up go
//!   out in one write.
//!
//! One thread, one edge-triggered `mio` poll, a `Vec` of connection slots, a map from topic
//! to subscriber slots. No history, no timers, no lag accounting, no auth, no percent
//! decoding. A subscriber whose socket is full gets the rest queued in user space (bounded;
//! past the bound it is dropped) and flushed when writable again. A publisher whose answers
//! pile up is not read until they drain.
//!
//! Usage: `floor_sse [ADDR] [WINDOW_US]` (default `127.0.0.1:8090`, no window). With a
//! window the loop sleeps that many microseconds after each batch of readiness events, so
//! events that arrive meanwhile share one wake-up (still one write per delivery): this
//! separates the per-wake-up cost from the per-write cost.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

/// The listener's token; connections use their slot index.
const LISTENER: Token = Token(usize::MAX);

/// Pending connections queued by the kernel (connect storms of thousands are normal).
const BACKLOG: i32 = 4096;

/// Bytes read per `read` call.
const READ_BYTES: usize = 64 * 1024;

/// Unparsed request bytes (a head plus its body) a connection may hold.
const REQUEST_BYTES_MAX: usize = 1024 * 1024;

/// Bytes queued for a subscriber whose socket is full before it is dropped.
const SUB_QUEUE_MAX: usize = 256 * 1024;

/// Queued answers past which a publisher is flushed, and past which it is not read.
const ANSWERS_FLUSH: usize = 64 * 1024;

/// Header fields parsed per request.
const HEADERS_MAX: usize = 32;

/// The head and first frame of every stream.
const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\n\r\nretry: 3000\n\n";

/// The answer to anything else; the connection closes after it.
const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What a connection has turned out to be.
enum Role {
    /// No complete request yet.
    New,
    /// Streaming events of this topic.
    Subscriber(Vec<u8>),
    /// Sending publishes.
    Publisher,
}

/// One connection.
struct Conn {
    stream: TcpStream,
    role: Role,
    /// Request bytes not yet handled.
    input: Vec<u8>,
    /// Bytes waiting for the socket (`output[sent..]`).
    output: Vec<u8>,
    sent: usize,
}

/// What the last write attempt left.
#[derive(PartialEq, Eq)]
enum Flushed {
    All,
    Some,
    Broken,
}

impl Conn {
    fn pending(&self) -> usize {
        self.output.len() - self.sent
    }

    /// Writes what is queued, as far as the socket takes it.
    fn flush(&mut self) -> Flushed {
        while self.sent < self.output.len() {
            match self.stream.write(&self.output[self.sent..]) {
                Ok(0) => return Flushed::Broken,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Flushed::Some,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Flushed::Broken,
            }
        }
        self.output.clear();
        self.sent = 0;
        Flushed::All
    }

    /// Sends one frame with one `write` when nothing is queued ahead of it; queues the rest.
    /// Returns false when the connection must close.
    fn send(&mut self, frame: &[u8], queue_max: usize) -> bool {
        let mut written = 0;
        if self.pending() == 0 {
            loop {
                match self.stream.write(frame) {
                    Ok(n) if n == frame.len() => return true,
                    Ok(0) => return false,
                    Ok(n) => written = n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => return false,
                }
                break;
            }
        }
        if self.pending() + frame.len() - written > queue_max {
            return false;
        }
        self.output.extend_from_slice(&frame[written..]);
        true
    }
}

/// The whole server.
struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Topic name to the slots of its subscribers.
    topics: HashMap<Vec<u8>, Vec<usize>>,
    next_id: u64,
    scratch: Vec<u8>,
    frame: Vec<u8>,
    /// Slots that broke during a fan-out, closed after it.
    broken: Vec<usize>,
    /// Sleep after each batch of events (see the usage note).
    window: Option<Duration>,
}

/// One parsed request at the front of a buffer.
enum Request {
    /// More bytes needed.
    Partial,
    /// Not something this server answers.
    Bad,
    /// `GET /events?topic=T`; the head is this long.
    Subscribe { topic: Vec<u8>, len: usize },
    /// `POST /publish?topic=T`; body at `body_at..body_at + body_len`.
    Publish {
        topic: Vec<u8>,
        body_at: usize,
        body_len: usize,
    },
}

fn parse(buf: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Request::Partial,
        Err(_) => return Request::Bad,
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Request::Bad;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(topic) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("topic="))
        .filter(|t| !t.is_empty())
    else {
        return Request::Bad;
    };
    let topic = topic.as_bytes().to_vec();
    match (method, path) {
        ("GET", "/events") => Request::Subscribe { topic, len },
        ("POST", "/publish") => {
            let body_len = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            match body_len {
                Some(body_len) if body_len <= REQUEST_BYTES_MAX / 2 => Request::Publish {
                    topic,
                    body_at: len,
                    body_len,
                },
                _ => Request::Bad,
            }
        }
        _ => Request::Bad,
    }
}

/// Frames `body` as one SSE event with `id` into `out`.
fn frame(out: &mut Vec<u8>, id: u64, body: &[u8]) {
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = writeln!(out, "id: {id}");
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

impl Server {
    fn new(addr: SocketAddr, window: Option<Duration>) -> io::Result<Server> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        let mut listener = TcpListener::from_std(socket.into());
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Server {
            poll,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            topics: HashMap::new(),
            next_id: 0,
            scratch: vec![0; READ_BYTES],
            frame: Vec::new(),
            broken: Vec::new(),
            window,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            match self.poll.poll(&mut events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                if event.token() == LISTENER {
                    self.accept()?;
                    continue;
                }
                let slot = event.token().0;
                if event.is_writable() {
                    self.on_writable(slot);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.on_readable(slot);
                }
            }
            if let Some(window) = self.window {
                std::thread::sleep(window);
            }
        }
    }

    fn accept(&mut self) -> io::Result<()> {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // EMFILE and friends: leave the rest in the backlog.
                Err(_) => return Ok(()),
            };
            stream.set_nodelay(true)?;
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            self.poll.registry().register(
                &mut stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            self.conns[slot] = Some(Conn {
                stream,
                role: Role::New,
                input: Vec::new(),
                output: Vec::new(),
                sent: 0,
            });
        }
    }

    fn close(&mut self, slot: usize) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if let Role::Subscriber(topic) = &conn.role {
            if let Some(subs) = self.topics.get_mut(topic) {
                if let Some(i) = subs.iter().position(|&s| s == slot) {
                    subs.swap_remove(i);
                }
                if subs.is_empty() {
                    self.topics.remove(topic);
                }
            }
        }
        self.free.push(slot);
    }

    fn on_writable(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if conn.pending() == 0 {
            return;
        }
        match conn.flush() {
            Flushed::Broken => self.close(slot),
            Flushed::Some => {}
            // A publisher paused on its answers can be read again.
            Flushed::All if matches!(conn.role, Role::Publisher) => self.on_readable(slot),
            Flushed::All => {}
        }
    }

    /// Reads until `WouldBlock` (edge-triggered), handling requests as they complete.
    fn on_readable(&mut self, slot: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            if conn.pending() > ANSWERS_FLUSH {
                match conn.flush() {
                    Flushed::Broken => return self.close(slot),
                    // Paused until writable.
                    Flushed::Some if conn.pending() > ANSWERS_FLUSH => return,
                    _ => {}
                }
            }
            let n = match conn.stream.read(&mut self.scratch) {
                Ok(0) => return self.close(slot),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.close(slot),
            };
            if matches!(conn.role, Role::Subscriber(_)) {
                continue; // Nothing a subscriber sends matters.
            }
            conn.input.extend_from_slice(&self.scratch[..n]);
            if !self.handle_requests(slot) {
                return self.close(slot);
            }
        }
        // One write for every answer of this wake-up.
        if let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) {
            if conn.flush() == Flushed::Broken {
                self.close(slot);
            }
        }
    }

    /// Handles the complete requests in a connection's input; false means close it.
    fn handle_requests(&mut self, slot: usize) -> bool {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        let input = std::mem::take(&mut conn.input);
        let mut at = 0;
        let mut ok = true;
        while at < input.len() {
            match parse(&input[at..]) {
                Request::Partial => break,
                Request::Bad => {
                    ok = false;
                    break;
                }
                Request::Subscribe { topic, len } => {
                    ok = self.subscribe(slot, topic);
                    at += len;
                    break; // The stream owns the connection from here.
                }
                Request::Publish {
                    topic,
                    body_at,
                    body_len,
                } => {
                    let end = at + body_at + body_len;
                    if input.len() < end {
                        break;
                    }
                    self.publish(slot, &topic, &input[at + body_at..end]);
                    at = end;
                }
            }
        }
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        if !ok {
            let _ = conn.stream.write(NOT_FOUND);
            return false;
        }
        if matches!(conn.role, Role::Subscriber(_)) {
            return true;
        }
        conn.input = input;
        conn.input.drain(..at);
        conn.input.len() <= REQUEST_BYTES_MAX
    }

    fn subscribe(&mut self, slot: usize, topic: Vec<u8>) -> bool {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        if !matches!(conn.role, Role::New) || !conn.send(STREAM_HEAD, SUB_QUEUE_MAX) {
            return false;
        }
        self.topics.entry(topic.clone()).or_default().push(slot);
        conn.role = Role::Subscriber(topic);
        true
    }

    fn publish(&mut self, slot: usize, topic: &[u8], body: &[u8]) {
        self.next_id += 1;
        let id = self.next_id;
        frame(&mut self.frame, id, body);
        if let Some(subs) = self.topics.get(topic) {
            for &sub in subs {
                let alive = self.conns[sub]
                    .as_mut()
                    .is_some_and(|c| c.send(&self.frame, SUB_QUEUE_MAX));
                if !alive {
                    self.broken.push(sub);
                }
            }
        }
        while let Some(sub) = self.broken.pop() {
            self.close(sub);
        }
        if let Some(conn) = self.conns[slot].as_mut() {
            conn.role = Role::Publisher;
            let digits = id.to_string();
            // Writing into a Vec cannot fail.
            let _ = writeln!(
                conn.output,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{digits}",
                digits.len() + 1
            );
        }
    }
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8090".to_owned());
    let window = args.next();
    let window_us = window.as_deref().map(str::parse::<u64>).transpose();
    let result = addr
        .parse::<SocketAddr>()
        .map_err(|e| io::Error::new(ErrorKind::InvalidInput, format!("{addr}: {e}")))
        .and_then(|addr| {
            let window_us = window_us.map_err(|e| {
                io::Error::new(ErrorKind::InvalidInput, format!("window {window:?}: {e}"))
            })?;
            let window = window_us.filter(|&us| us > 0).map(Duration::from_micros);
            Server::new(addr, window)
        })
        .and_then(|mut server| {
            eprintln!("floor_sse listening on {addr}, pid {}", std::process::id());
            server.run()
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor_sse: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
