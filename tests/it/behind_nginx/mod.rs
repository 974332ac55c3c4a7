//! herald behind a real nginx (issue 6, part 4): Debian's `nginx-light` on loopback, with a
//! private configuration built from the `nginx` block of README's "Behind nginx" section.
//! Events pass through unbuffered, `X-Forwarded-For` names the client only when the trusted
//! proxy sends it, heartbeats keep nginx's `proxy_read_timeout` from cutting quiet streams,
//! and the block as written (TLS with a throwaway certificate) serves streams over HTTP/2.
//!
//! - [`unbuffered`]: events pass through the README's block unbuffered, and
//!   `X-Accel-Buffering: no` keeps a buffering nginx from holding them back (with its control).
//! - [`tls`]: the block as written serves streams over HTTP/2 and TLS.
//! - [`forwarded_for`]: `X-Forwarded-For` names the client only when the trusted proxy sends
//!   it, and an unreadable or client-written one never lets a client borrow an address.
//! - [`heartbeats`]: heartbeats keep nginx's `proxy_read_timeout` from cutting quiet streams.
//! - [`cluster_mode`]: the README's cluster block spreads subscribers over three nodes.
//!
//! This file holds what the submodules share: the [`Nginx`] process, the README's block with
//! edits, and [`EventStream`], a stream read directly or through nginx.
//!
//! nginx runs as a child process (`daemon off`) whose prefix, configuration, error log and pid
//! file live in a temporary directory; [`Nginx`] stops it and its worker by PID when dropped.
//! These tests need `/usr/sbin/nginx` (`apt-get install -y nginx-light`), and the TLS one also
//! `openssl` and `curl`; they fail, saying so, without them.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{
    build_request, events_target, post_request, publish_form, scrape, spawn_draining_stderr,
    wait_until, Conn, HeraldProcess, Next, PipeLines, Response, SseCollector, SseEvent, DEADLINE,
};

mod cluster_mode;
mod forwarded_for;
mod heartbeats;
mod tls;
mod unbuffered;

/// Where Debian's nginx packages put the binary.
const NGINX_BIN: &str = "/usr/sbin/nginx";

/// README.md, whose recommended nginx configuration these tests run.
const README: &str = include_str!("../../../README.md");

// ---------------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------------

/// Ports tried before giving up when another process takes the free port first.
const NGINX_PORT_ATTEMPTS: usize = 3;

/// A running nginx master process and its worker, on a free `127.0.0.1` port.
struct Nginx {
    /// The master process, started with `daemon off` so it is our child.
    master: Child,
    /// Worker PIDs, from the master's `start worker process PID` lines. A worker outlives a
    /// killed master, so it is stopped by its own PID if it is still there at the end.
    workers: Vec<u32>,
    /// The address nginx listens on.
    addr: SocketAddr,
    /// The private prefix: configuration, error log, pid file and temp paths.
    dir: PathBuf,
    /// The master's (and workers') stderr, one line per message; closed once every holder
    /// of the pipe has exited.
    stderr: PipeLines,
}

/// A port that was free a moment ago (nginx binds it itself, so it cannot be handed over).
fn free_port() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The whole `nginx.conf` around `servers` (the `http`-level blocks under test).
fn nginx_conf(dir: &Path, servers: &str) -> String {
    let dir = dir.display();
    format!(
        "worker_processes 1;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log info;\n\
         error_log stderr notice;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {dir}/client_body;\n\
         proxy_temp_path {dir}/proxy;\n\
         fastcgi_temp_path {dir}/fastcgi;\n\
         uwsgi_temp_path {dir}/uwsgi;\n\
         scgi_temp_path {dir}/scgi;\n\
         {servers}\n\
         }}\n"
    )
}

impl Nginx {
    /// Starts nginx in a fresh directory named after `name`, with the `http`-level blocks
    /// `servers(listen)` returns for its listening address. Returns once the master has bound
    /// the port and started its worker (both are logged, in that order, on stderr).
    fn start(name: &str, servers: impl Fn(SocketAddr) -> String) -> Nginx {
        assert!(
            Path::new(NGINX_BIN).exists(),
            "{NGINX_BIN} is missing: these tests run herald behind Debian's nginx-light \
             (apt-get install -y nginx-light)"
        );
        let dir = std::env::temp_dir().join(format!("herald-nginx-{}-{name}", std::process::id()));
        for attempt in 1..=NGINX_PORT_ATTEMPTS {
            // Fresh each attempt: a failed attempt's `Nginx` removes the directory when dropped.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let addr = free_port();
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(&dir, &servers(addr))).unwrap();
            let mut nginx = Nginx::spawn(&dir, &conf, addr);
            if nginx.wait_for_workers() {
                return nginx;
            }
            let status = nginx.master.wait().unwrap();
            let port_taken = nginx
                .stderr
                .seen()
                .iter()
                .any(|line| line.contains("Address already in use"));
            assert!(
                port_taken && attempt < NGINX_PORT_ATTEMPTS,
                "nginx exited with {status:?} before starting its worker; stderr: {:#?}\nconfig:\n{}",
                nginx.stderr.seen(),
                std::fs::read_to_string(&conf).unwrap_or_default()
            );
        }
        unreachable!("the last attempt either returns or fails its assertion")
    }

    fn spawn(dir: &Path, conf: &Path, addr: SocketAddr) -> Nginx {
        // Drains the pipe for as long as nginx lives, so a chatty error log never blocks it.
        let (master, stderr) = spawn_draining_stderr(
            Command::new(NGINX_BIN)
                .arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(conf)
                .args(["-g", "daemon off;"]),
        );
        Nginx {
            master,
            workers: Vec::new(),
            addr,
            dir: dir.to_owned(),
            stderr,
        }
    }

    /// Reads stderr until the worker has started (true) or nginx has exited (false).
    fn wait_for_workers(&mut self) -> bool {
        const MARKER: &str = "start worker process ";
        let deadline = Instant::now() + DEADLINE;
        loop {
            let line = match self.stderr.next_before(deadline) {
                Next::Line(line) => line,
                Next::Closed => return false,
                Next::TimedOut => panic!(
                    "nginx did not start its worker within {DEADLINE:?}; stderr: {:#?}",
                    self.stderr.seen()
                ),
            };
            if let Some(at) = line.find(MARKER) {
                let pid = line[at + MARKER.len()..]
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| {
                        panic!("bad worker pid in nginx's stderr line {line:?}");
                    });
                self.workers.push(pid);
            }
            if !self.workers.is_empty() {
                return true;
            }
        }
    }

    /// The error log written so far (`info` and above).
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Whether `pid` is still an nginx process (a stopped worker's PID is not reused within
    /// the moment this check matters, but do not signal a stranger if it were).
    fn is_nginx(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.contains("(nginx)") && !stat.contains(") Z "))
    }

    /// `kill -SIGNAL PID`; a process that is already gone is not an error here.
    fn signal(pid: u32, signal: &str) {
        let _ = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }

    /// Fast shutdown (SIGTERM: the master stops its worker and exits), waiting until every
    /// holder of the stderr pipe is gone; past [`DEADLINE`], SIGKILL to master and workers.
    fn stop(&mut self) {
        if self.master.try_wait().unwrap().is_none() {
            Nginx::signal(self.master.id(), "TERM");
        }
        let deadline = Instant::now() + DEADLINE;
        let all_exited = loop {
            match self.stderr.next_before(deadline) {
                Next::Line(_) => {}
                Next::Closed => break true,
                Next::TimedOut => break false,
            }
        };
        if !all_exited {
            eprintln!("nginx did not stop within {DEADLINE:?} of SIGTERM; killing it");
            let _ = self.master.kill();
        }
        let _ = self.master.wait();
        for &worker in &self.workers {
            if Nginx::is_nginx(worker) {
                Nginx::signal(worker, "KILL");
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "nginx error log ({}):\n{}",
                self.dir.display(),
                self.error_log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The fenced `nginx` block of README's "Behind nginx" section.
fn readme_nginx_block() -> &'static str {
    const FENCE: &str = "```nginx\n";
    let (_, section) = README
        .split_once("## Behind nginx")
        .expect("README.md has a \"Behind nginx\" section");
    let start = section.find(FENCE).expect("an ```nginx block in it") + FENCE.len();
    let end = start + section[start..].find("```").unwrap();
    &section[start..end]
}

/// README's recommended configuration, verbatim but for its upstream (herald's address), its
/// `listen` line (loopback, no TLS: the streaming tests read plain HTTP/1.1; the TLS and
/// HTTP/2 part of the line is run by [`tls::readme_nginx_block_serves_sse_over_http2_and_tls`])
/// and `edits`. Each replaced text must occur exactly once,
/// so a change to the README's block fails here rather than testing something else.
fn readme_config(herald: SocketAddr, listen: SocketAddr, edits: &[(&str, &str)]) -> String {
    let listen = format!("listen {listen};");
    let mut replacements = vec![("listen 443 ssl http2;", listen.as_str())];
    replacements.extend_from_slice(edits);
    readme_block_with(herald, &replacements)
}

/// README's nginx block with herald's address as its upstream and `edits` made, each of which
/// must match exactly once.
fn readme_block_with(herald: SocketAddr, edits: &[(&str, &str)]) -> String {
    let upstream = format!("server {herald};");
    let mut block = readme_nginx_block().to_owned();
    for (from, to) in [("server 127.0.0.1:8080;", upstream.as_str())]
        .iter()
        .chain(edits)
    {
        assert_eq!(
            block.matches(from).count(),
            1,
            "README's nginx block should contain {from:?} exactly once:\n{block}"
        );
        block = block.replace(from, to);
    }
    block
}

// ---------------------------------------------------------------------------------------------
// Event streams, direct or through nginx
// ---------------------------------------------------------------------------------------------

/// Where a chunked body decoder is: nginx answers HTTP/1.1 clients with chunked streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    Size,
    /// This many bytes of chunk data are still to come.
    Data(usize),
    /// This many bytes of the CRLF after a chunk's data are still to come.
    DataEnd(usize),
    /// After the last (zero-size) chunk: reading trailer lines up to a blank one.
    Trailer,
    /// The body is complete.
    Done,
}

/// A `Transfer-Encoding: chunked` decoder: bytes in, body bytes out.
struct Dechunker {
    state: ChunkState,
    line: Vec<u8>,
}

impl Dechunker {
    fn new() -> Self {
        Dechunker {
            state: ChunkState::Size,
            line: Vec::new(),
        }
    }

    /// Whether the last chunk has arrived (the sender ended the body on purpose).
    fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        while let Some(&first) = bytes.first() {
            match self.state {
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(bytes);
                        break;
                    };
                    self.line.extend_from_slice(&bytes[..end]);
                    bytes = &bytes[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    let line = String::from_utf8_lossy(&line);
                    let line = line.strip_suffix('\r').unwrap_or(&line);
                    self.state = match self.state {
                        ChunkState::Size => {
                            let size = line.split(';').next().unwrap_or_default().trim();
                            match usize::from_str_radix(size, 16) {
                                Ok(0) => ChunkState::Trailer,
                                Ok(size) => ChunkState::Data(size),
                                Err(_) => panic!("bad chunk-size line {line:?}"),
                            }
                        }
                        _ if line.is_empty() => ChunkState::Done,
                        _ => ChunkState::Trailer,
                    };
                }
                ChunkState::Data(left) => {
                    let taken = left.min(bytes.len());
                    body.extend_from_slice(&bytes[..taken]);
                    bytes = &bytes[taken..];
                    self.state = match left - taken {
                        0 => ChunkState::DataEnd(2),
                        left => ChunkState::Data(left),
                    };
                }
                ChunkState::DataEnd(left) => {
                    assert_eq!(first, b"\r\n"[2 - left], "chunk data not followed by CRLF");
                    bytes = &bytes[1..];
                    self.state = match left {
                        1 => ChunkState::Size,
                        _ => ChunkState::DataEnd(1),
                    };
                }
                ChunkState::Done => panic!("bytes after the last chunk: {bytes:?}"),
            }
        }
        body
    }
}

/// What one read of an [`EventStream`] brought.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Some bytes (maybe only part of a frame).
    Bytes,
    /// The stream ended: end of file, a reset, or the last chunk.
    Ended,
    /// Nothing arrived before the deadline.
    TimedOut,
}

/// An open `GET /events` stream, chunked (through nginx) or close-delimited (direct), read
/// with deadlines the caller chooses. The same code reads both ways, so their timings compare.
struct EventStream {
    /// Owns the socket; only its send and head reading are used.
    _conn: Conn,
    /// The socket, read directly so a deadline can pass without failing the test.
    socket: TcpStream,
    /// Present when the body is chunked.
    chunks: Option<Dechunker>,
    parser: SseCollector,
    pending: VecDeque<SseEvent>,
    ended: bool,
}

impl EventStream {
    /// `GET target` from source address `from` (any, if `None`); waits for the `retry:`
    /// frame, after which herald has registered the subscriber. A refusal comes back whole.
    fn open(
        addr: SocketAddr,
        from: Option<IpAddr>,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<EventStream, Response> {
        EventStream::open_with(
            addr,
            from,
            target,
            build_request("GET", target, headers, b""),
        )
    }

    /// [`EventStream::open`] with the whole request given as bytes (`target` names it).
    fn open_with(
        addr: SocketAddr,
        from: Option<IpAddr>,
        target: &str,
        request: Vec<u8>,
    ) -> Result<EventStream, Response> {
        let mut conn = Conn::connect_with(addr, from, None);
        conn.send(request);
        let mut head = conn.read_head(&format!("the response head of GET {target}"));
        if head.status != 200 {
            let length = head
                .content_length()
                .unwrap_or_else(|| panic!("refusal without Content-Length: {}", head.summary()));
            head.body = conn.read_exact_bytes(length, "the refusal's body");
            return Err(head);
        }
        assert_eq!(
            head.header("content-type"),
            Some("text/event-stream"),
            "GET {target} from {from:?}: {}",
            head.summary()
        );
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"));
        let socket = conn.try_clone_stream();
        let early = conn.take_buffered();
        let mut stream = EventStream {
            _conn: conn,
            socket,
            chunks: chunked.then(Dechunker::new),
            parser: SseCollector::new(),
            pending: VecDeque::new(),
            ended: false,
        };
        stream.take(&early);
        let deadline = Instant::now() + DEADLINE;
        while stream.parser.retry_ms.is_none() {
            let read = stream.read_before(deadline);
            assert_eq!(
                read,
                Outcome::Bytes,
                "waiting for the `retry:` frame of {target}"
            );
        }
        Ok(stream)
    }

    fn take(&mut self, bytes: &[u8]) {
        let body = match &mut self.chunks {
            Some(chunks) => {
                let body = chunks.feed(bytes);
                self.ended |= chunks.is_done();
                body
            }
            None => bytes.to_vec(),
        };
        self.pending.extend(self.parser.feed(&body));
    }

    /// Reads once, waiting at most until `deadline`.
    fn read_before(&mut self, deadline: Instant) -> Outcome {
        if self.ended {
            return Outcome::Ended;
        }
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
        else {
            return Outcome::TimedOut;
        };
        self.socket.set_read_timeout(Some(left)).unwrap();
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match self.socket.read(&mut buffer) {
                Ok(0) => {
                    self.ended = true;
                    return Outcome::Ended;
                }
                Ok(n) => {
                    self.take(&buffer[..n]);
                    return if self.ended {
                        Outcome::Ended
                    } else {
                        Outcome::Bytes
                    };
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Outcome::TimedOut;
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    self.ended = true;
                    return Outcome::Ended;
                }
                Err(e) => panic!("reading an event stream failed: {e}"),
            }
        }
    }

    /// The next event, within [`DEADLINE`].
    fn next_event(&mut self, waiting_for: &str) -> SseEvent {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            match self.read_before(deadline) {
                Outcome::Bytes => {}
                outcome => panic!("{outcome:?} while waiting for {waiting_for}"),
            }
        }
    }

    /// The heartbeat comments received so far.
    fn heartbeats(&self) -> usize {
        self.parser.comments.len()
    }

    /// Whether a chunked stream ended with its last chunk (the proxy finished the response
    /// because herald ended it) rather than being cut.
    fn ended_with_last_chunk(&self) -> bool {
        self.chunks.as_ref().is_some_and(Dechunker::is_done)
    }
}
