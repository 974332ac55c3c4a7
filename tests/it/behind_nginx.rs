//! herald behind a real nginx (issue 6, part 4): Debian's `nginx-light` on loopback, with a
//! private configuration built from the `nginx` block of README's "Behind nginx" section.
//! Events pass through unbuffered, `X-Forwarded-For` names the client only when the trusted
//! proxy sends it, heartbeats keep nginx's `proxy_read_timeout` from cutting quiet streams,
//! and the block as written (TLS with a throwaway certificate) serves streams over HTTP/2.
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

/// Where Debian's nginx packages put the binary.
const NGINX_BIN: &str = "/usr/sbin/nginx";

/// README.md, whose recommended nginx configuration these tests run.
const README: &str = include_str!("../../README.md");

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
/// HTTP/2 part of the line is run by [`readme_nginx_block_serves_sse_over_http2_and_tls`]) and
/// `edits`. Each replaced text must occur exactly once,
/// so a change to the README's block fails here rather than testing something else.
fn readme_config(herald: SocketAddr, listen: SocketAddr, edits: &[(&str, &str)]) -> String {
    let listen = format!("listen {listen};");
    let mut replacements = vec![("listen 443 ssl http2;", listen.as_str())];
    replacements.extend_from_slice(edits);
    readme_block_with(herald, &replacements)
}

/// README's configuration as written, with its certificate comment replaced by `certificate`
/// and the port of its `listen` line by `listen` (everything else on that line stays).
fn readme_tls_config(herald: SocketAddr, listen: SocketAddr, certificate: &SelfSigned) -> String {
    let listen = format!("listen {listen} ");
    let certificate = format!(
        "ssl_certificate {}; ssl_certificate_key {};",
        certificate.cert().display(),
        certificate.key().display()
    );
    readme_block_with(
        herald,
        &[
            ("listen 443 ", listen.as_str()),
            ("# ssl_certificate ...;", certificate.as_str()),
        ],
    )
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

/// The fenced `nginx` block of README's "Cluster mode" section, for three nodes on `nodes`
/// and listening on `listen`.
fn readme_cluster_config(nodes: &[SocketAddr; 3], listen: SocketAddr) -> String {
    const FENCE: &str = "```nginx\n";
    let (_, section) = README
        .split_once("## Cluster mode")
        .expect("README.md has a \"Cluster mode\" section");
    let start = section.find(FENCE).expect("an ```nginx block in it") + FENCE.len();
    let end = start + section[start..].find("```").unwrap();
    let mut block = section[start..end].to_owned();
    let listen = format!("listen {listen};");
    let nodes: Vec<String> = nodes.iter().map(|addr| format!("server {addr} ")).collect();
    let replacements = [
        ("server 127.0.0.1:8081 ", nodes[0].as_str()),
        ("server 127.0.0.1:8082 ", nodes[1].as_str()),
        ("server 127.0.0.1:8083 ", nodes[2].as_str()),
        ("listen 443 ssl http2;", listen.as_str()),
    ];
    for (from, to) in replacements {
        assert_eq!(
            block.matches(from).count(),
            1,
            "README's cluster nginx block should contain {from:?} exactly once:\n{block}"
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

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Unbuffered delivery
// ---------------------------------------------------------------------------------------------

/// Events published one at a time in the latency comparison.
const LATENCY_EVENTS: usize = 100;

/// Reads `n` events on its own thread, sending each one's data and arrival time.
fn stamp_arrivals(
    mut stream: EventStream,
    n: usize,
    path: &'static str,
) -> (Receiver<(String, Instant)>, JoinHandle<()>) {
    let (sender, arrivals) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for i in 0..n {
            let event = stream.next_event(&format!("event {} of {n} {path}", i + 1));
            if sender.send((event.data, Instant::now())).is_err() {
                return;
            }
        }
    });
    (arrivals, reader)
}

/// Waits (up to [`DEADLINE`]) for the arrival of the event with `data`.
fn arrival(arrivals: &Receiver<(String, Instant)>, data: &str, path: &str) -> Instant {
    let (received, at) = arrivals.recv_timeout(DEADLINE).unwrap_or_else(|_| {
        panic!(
            "{data:?} did not arrive {path} within {DEADLINE:?} of its publish, and nothing \
             else was published meanwhile: the stream is buffered"
        )
    });
    assert_eq!(received, data, "events arrived out of order {path}");
    at
}

/// Microseconds at quantile `q` (0 to 1) of sorted `values`.
fn quantile(values: &[i64], q: f64) -> i64 {
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Publishes [`LATENCY_EVENTS`] events one at a time, each only after the previous one has
/// arrived through nginx (a proxy that buffers the stream holds it, and the wait times out),
/// to one subscriber through nginx configured with README's block plus `edits` and one
/// connected to herald directly. Prints the per-event latency difference.
fn assert_events_pass_unbuffered(name: &str, edits: &[(&str, &str)]) {
    let herald = HeraldProcess::spawn(&[]);
    let nginx = Nginx::start(name, |listen| readme_config(herald.addr, listen, edits));
    let target = events_target(&["latency"], None);
    let proxied = EventStream::open(nginx.addr, None, &target, &[])
        .unwrap_or_else(|refused| panic!("through nginx: {}", refused.summary()));
    assert!(
        proxied.chunks.is_some(),
        "nginx should stream to an HTTP/1.1 client in chunks"
    );
    let direct = EventStream::open(herald.addr, None, &target, &[])
        .unwrap_or_else(|refused| panic!("direct: {}", refused.summary()));
    let (proxied_arrivals, proxied_reader) =
        stamp_arrivals(proxied, LATENCY_EVENTS, "through nginx");
    let (direct_arrivals, direct_reader) = stamp_arrivals(direct, LATENCY_EVENTS, "direct");

    let mut publisher = Conn::connect(herald.addr);
    let mut proxied_us = Vec::with_capacity(LATENCY_EVENTS);
    let mut direct_us = Vec::with_capacity(LATENCY_EVENTS);
    let mut difference_us = Vec::with_capacity(LATENCY_EVENTS);
    for i in 0..LATENCY_EVENTS {
        let data = format!("event {i}");
        let published = Instant::now();
        publisher.send(post_request(
            "/publish?topic=latency",
            Some("text/plain"),
            data.as_bytes(),
            &[],
        ));
        let answer = publisher.read_response("the publish answer");
        assert_eq!(answer.status, 200, "publish: {}", answer.summary());
        let through_nginx = arrival(&proxied_arrivals, &data, "through nginx");
        let direct = arrival(&direct_arrivals, &data, "direct");
        let micros = |from: Instant, to: Instant| {
            i64::try_from(to.duration_since(from).as_micros()).unwrap()
        };
        proxied_us.push(micros(published, through_nginx));
        direct_us.push(micros(published, direct));
        difference_us.push(proxied_us[i] - direct_us[i]);
    }
    proxied_reader.join().unwrap();
    direct_reader.join().unwrap();

    for values in [&mut proxied_us, &mut direct_us, &mut difference_us] {
        values.sort_unstable();
    }
    eprintln!(
        "{name}: {LATENCY_EVENTS} events, publish-to-receive latency in µs: \
         direct median {} max {}; through nginx median {} max {}; \
         nginx minus direct per event: median {} p90 {} max {}",
        quantile(&direct_us, 0.5),
        quantile(&direct_us, 1.0),
        quantile(&proxied_us, 0.5),
        quantile(&proxied_us, 1.0),
        quantile(&difference_us, 0.5),
        quantile(&difference_us, 0.9),
        quantile(&difference_us, 1.0),
    );
}

#[test]
fn readme_nginx_config_passes_each_event_through_unbuffered() {
    assert_events_pass_unbuffered("readme", &[]);
}

/// README: "herald also sends `X-Accel-Buffering: no` on every stream, so nginx does not
/// buffer it even where `proxy_buffering` is on."
#[test]
fn x_accel_buffering_keeps_a_buffering_nginx_from_buffering_streams() {
    assert_events_pass_unbuffered(
        "buffering-on",
        &[("proxy_buffering off;", "proxy_buffering on;")],
    );
}

// ---------------------------------------------------------------------------------------------
// TLS and HTTP/2
// ---------------------------------------------------------------------------------------------

/// Debian's `openssl`, which makes the throwaway certificate.
const OPENSSL_BIN: &str = "/usr/bin/openssl";

/// Debian's `curl` (built with nghttp2): the HTTP/2 client.
const CURL_BIN: &str = "/usr/bin/curl";

/// A self-signed certificate for `127.0.0.1` and its key, in a directory removed on drop.
struct SelfSigned {
    dir: PathBuf,
}

impl SelfSigned {
    fn create() -> SelfSigned {
        assert!(
            Path::new(OPENSSL_BIN).exists(),
            "{OPENSSL_BIN} is missing: the TLS test makes its certificate with it \
             (apt-get install -y openssl)"
        );
        let dir = std::env::temp_dir().join(format!("herald-nginx-{}-cert", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let certificate = SelfSigned { dir };
        let output = Command::new(OPENSSL_BIN)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(certificate.key())
            .arg("-out")
            .arg(certificate.cert())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        certificate
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

impl Drop for SelfSigned {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Issue 12: README's block as written, `listen ... ssl http2` and a real certificate where it
/// has a comment, in a real nginx: a client that offers HTTP/2 over TLS gets it (a browser
/// then shares one connection among all its streams), and an event stream flows through it.
#[test]
fn readme_nginx_block_serves_sse_over_http2_and_tls() {
    assert!(
        Path::new(CURL_BIN).exists(),
        "{CURL_BIN} is missing: the TLS test's HTTP/2 client (apt-get install -y curl)"
    );
    let herald = HeraldProcess::spawn(&[]);
    let certificate = SelfSigned::create();
    let nginx = Nginx::start("tls", |listen| {
        readme_tls_config(herald.addr, listen, &certificate)
    });
    let mut curl = Command::new(CURL_BIN)
        .args([
            "--silent",
            "--show-error",
            "--no-buffer",
            "--include",
            "--http2",
        ])
        .arg("--cacert")
        .arg(certificate.cert())
        .arg(format!("https://{}/events?topic=h2", nginx.addr))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = PipeLines::new(curl.stdout.take().unwrap());
    let mut stderr = PipeLines::new(curl.stderr.take().unwrap());
    let deadline = Instant::now() + DEADLINE;
    let mut next_line = |waiting_for: &str| match stdout.next_before(deadline) {
        Next::Line(line) => line.trim_end().to_owned(),
        other => {
            let _ = stderr.next_before(Instant::now() + Duration::from_millis(100));
            panic!(
                "curl: {other:?} while waiting for {waiting_for}; stdout {:#?}; stderr {:#?}",
                stdout.seen(),
                stderr.seen()
            )
        }
    };
    assert_eq!(next_line("the status line"), "HTTP/2 200");
    while !next_line("the opening retry: frame").starts_with("retry: ") {}
    let id = publish_form(herald.addr, &[("topic", "h2"), ("data", "over http2")]);
    while next_line("the event's id") != format!("id: {id}") {}
    assert_eq!(next_line("the event's data"), "data: over http2");
    let _ = curl.kill();
    let _ = curl.wait();
}

// ---------------------------------------------------------------------------------------------
// X-Forwarded-For
// ---------------------------------------------------------------------------------------------

/// Opens a stream that must be admitted; `why` says what admission shows.
fn admitted(addr: SocketAddr, from: &str, headers: &[(&str, &str)], why: &str) -> EventStream {
    EventStream::open(
        addr,
        Some(ip(from)),
        &events_target(&["xff"], None),
        headers,
    )
    .unwrap_or_else(|refused| panic!("{why}: refused with {}", refused.summary()))
}

/// Opens a stream that must be refused with 429 as over `--max-connections-per-ip`.
fn refused_per_ip(addr: SocketAddr, from: &str, headers: &[(&str, &str)], why: &str) {
    match EventStream::open(
        addr,
        Some(ip(from)),
        &events_target(&["xff"], None),
        headers,
    ) {
        Ok(_) => panic!("{why}: the stream was admitted"),
        Err(refusal) => {
            assert_eq!(refusal.status, 429, "{why}: {}", refusal.summary());
            assert!(
                refusal.body_text().contains("max_connections_per_ip"),
                "{why}: {}",
                refusal.summary()
            );
        }
    }
}

#[test]
fn x_forwarded_for_names_the_client_only_when_the_trusted_proxy_sends_it() {
    let herald = HeraldProcess::spawn(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--max-connections-per-ip",
        "2",
    ]);
    let nginx = Nginx::start("xff", |listen| readme_config(herald.addr, listen, &[]));

    // nginx connects to herald from 127.0.0.1 and appends the client's address; herald counts
    // that address, so two clients get two streams each through the one proxy address.
    let mut streams = vec![
        admitted(
            nginx.addr,
            "127.0.0.2",
            &[],
            "1st stream of 127.0.0.2 via nginx",
        ),
        admitted(
            nginx.addr,
            "127.0.0.2",
            &[],
            "2nd stream of 127.0.0.2 via nginx",
        ),
        admitted(
            nginx.addr,
            "127.0.0.3",
            &[],
            "1st stream of 127.0.0.3 via nginx",
        ),
        admitted(
            nginx.addr,
            "127.0.0.3",
            &[],
            "2nd stream of 127.0.0.3 via nginx",
        ),
    ];
    refused_per_ip(
        nginx.addr,
        "127.0.0.2",
        &[],
        "3rd stream of 127.0.0.2 via nginx",
    );
    // Behind the proxy a client cannot pick its address either: nginx appends the real one,
    // and herald walks the list from the right, stopping at the first untrusted hop.
    refused_per_ip(
        nginx.addr,
        "127.0.0.2",
        &[("X-Forwarded-For", "127.0.0.9")],
        "3rd stream of 127.0.0.2 via nginx claiming to be 127.0.0.9",
    );

    // An untrusted peer naming 127.0.0.2 (which is full) is counted as itself.
    let forged = [("X-Forwarded-For", "127.0.0.2")];
    streams.push(admitted(
        herald.addr,
        "127.0.0.5",
        &forged,
        "1st direct stream of 127.0.0.5 claiming to be 127.0.0.2",
    ));
    streams.push(admitted(
        herald.addr,
        "127.0.0.5",
        &forged,
        "2nd direct stream of 127.0.0.5 claiming to be 127.0.0.2",
    ));
    refused_per_ip(
        herald.addr,
        "127.0.0.5",
        &forged,
        "3rd direct stream of 127.0.0.5 claiming to be 127.0.0.2",
    );

    // Every admitted stream, proxied or not, is live.
    publish_form(herald.addr, &[("topic", "xff"), ("data", "to all six")]);
    for (i, stream) in streams.iter_mut().enumerate() {
        let event = stream.next_event(&format!("the event on stream {}", i + 1));
        assert_eq!(event.data, "to all six");
    }
}

/// `GET /events?topic=xff` with raw header lines (which may hold any bytes) after `Host`.
fn request_with_raw_headers(lines: &[&[u8]]) -> Vec<u8> {
    let mut request = build_request("GET", &events_target(&["xff"], None), &[], b"");
    request.truncate(request.len() - 2); // The blank line, put back after the raw lines.
    for line in lines {
        request.extend_from_slice(line);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request
}

/// Opens a stream from `from` with raw header lines; `Ok` when admitted, else the refusal.
fn open_raw(addr: SocketAddr, from: &str, lines: &[&[u8]]) -> Result<EventStream, Response> {
    EventStream::open_with(
        addr,
        Some(ip(from)),
        &events_target(&["xff"], None),
        request_with_raw_headers(lines),
    )
}

#[test]
fn issue_10_an_unreadable_x_forwarded_for_never_lets_a_client_borrow_an_address() {
    let herald = HeraldProcess::spawn(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--max-connections-per-ip",
        "1",
    ]);
    let nginx = Nginx::start("xff-unreadable", |listen| {
        readme_config(herald.addr, listen, &[])
    });
    // nginx turns the client's `X-Forwarded-For: \xff` into `\xff, 127.0.0.5`; the
    // client-written `Forwarded` passes through untouched. herald reads only
    // X-Forwarded-For, walks it from the right and stops at 127.0.0.5, the client.
    let spoof: [&[u8]; 2] = [b"X-Forwarded-For: \xff", b"Forwarded: for=127.0.0.9"];
    let mut streams = vec![open_raw(nginx.addr, "127.0.0.5", &spoof)
        .unwrap_or_else(|r| panic!("the first stream of 127.0.0.5 was refused: {}", r.summary()))];
    // The victim's own address is untouched...
    streams.push(admitted(
        nginx.addr,
        "127.0.0.9",
        &[],
        "127.0.0.9's stream after 127.0.0.5 claimed its address",
    ));
    // ...and the spoofer is counted as itself.
    match open_raw(nginx.addr, "127.0.0.5", &spoof) {
        Ok(_) => panic!("a second stream of 127.0.0.5 was admitted over its limit of one"),
        Err(refusal) => assert_eq!(refusal.status, 429, "{}", refusal.summary()),
    }
    // Every spelling of the same trick fails alike: a malformed hop, an empty one, an
    // obfuscated `Forwarded` node.
    let tricks: [&[u8]; 4] = [
        b"X-Forwarded-For: 127.0.0.9 x",
        b"X-Forwarded-For: 127.0.0.9,,",
        b"X-Forwarded-For: \"127.0.0.9\"",
        b"Forwarded: for=_hidden, for=127.0.0.9",
    ];
    for trick in tricks {
        let refused = open_raw(nginx.addr, "127.0.0.5", &[trick]);
        let summary = refused
            .as_ref()
            .map_or_else(Response::summary, |_| "admitted".into());
        assert!(
            matches!(&refused, Err(r) if r.status == 429),
            "127.0.0.5 with {:?}: {summary}",
            String::from_utf8_lossy(trick)
        );
    }
    publish_form(herald.addr, &[("topic", "xff"), ("data", "to both")]);
    for (i, stream) in streams.iter_mut().enumerate() {
        assert_eq!(
            stream.next_event(&format!("the event on stream {i}")).data,
            "to both"
        );
    }
}

#[test]
fn issue_10_with_forwarded_header_forwarded_a_client_written_x_forwarded_for_is_ignored() {
    let herald = HeraldProcess::spawn(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--max-connections-per-ip",
        "1",
        "--forwarded-header",
        "forwarded",
    ]);
    // A proxy that sets only `Forwarded` (replacing whatever the client sent) and passes
    // the client's `X-Forwarded-For` through.
    let nginx = Nginx::start("forwarded-only", |listen| {
        readme_config(
            herald.addr,
            listen,
            &[(
                "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                "proxy_set_header Forwarded \"for=$remote_addr\";",
            )],
        )
    });
    let spoof = [("X-Forwarded-For", "127.0.0.9")];
    let mut streams = [
        admitted(
            nginx.addr,
            "127.0.0.5",
            &spoof,
            "127.0.0.5 claiming 127.0.0.9",
        ),
        admitted(nginx.addr, "127.0.0.9", &[], "127.0.0.9 itself"),
    ];
    refused_per_ip(
        nginx.addr,
        "127.0.0.5",
        &spoof,
        "a second stream of 127.0.0.5 claiming 127.0.0.9",
    );
    refused_per_ip(nginx.addr, "127.0.0.9", &[], "a second stream of 127.0.0.9");
    publish_form(herald.addr, &[("topic", "xff"), ("data", "to both")]);
    for (i, stream) in streams.iter_mut().enumerate() {
        assert_eq!(
            stream.next_event(&format!("the event on stream {i}")).data,
            "to both"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Idle timeouts and heartbeats
// ---------------------------------------------------------------------------------------------

/// How long the quiet stream is watched: more than three of nginx's 2 s read timeouts.
const QUIET_WATCH: Duration = Duration::from_secs(7);

#[test]
fn heartbeats_keep_nginx_read_timeout_from_cutting_a_quiet_stream() {
    let herald = HeraldProcess::spawn(&["--heartbeat-ms", "500"]);
    let nginx = Nginx::start("heartbeat", |listen| {
        readme_config(
            herald.addr,
            listen,
            &[("proxy_read_timeout 1h;", "proxy_read_timeout 2s;")],
        )
    });
    let mut stream = EventStream::open(nginx.addr, None, &events_target(&["quiet"], None), &[])
        .unwrap_or_else(|refused| panic!("through nginx: {}", refused.summary()));
    let opened = Instant::now();
    loop {
        match stream.read_before(opened + QUIET_WATCH) {
            Outcome::Bytes => {}
            Outcome::TimedOut => break,
            Outcome::Ended => panic!(
                "the quiet stream ended after {:?} with {} heartbeats; last chunk: {}",
                opened.elapsed(),
                stream.heartbeats(),
                stream.ended_with_last_chunk()
            ),
        }
    }
    assert!(
        stream.pending.is_empty(),
        "nothing was published, yet events arrived: {:?}",
        stream.pending
    );
    assert!(
        stream.heartbeats() > 0,
        "no heartbeat comment arrived in {QUIET_WATCH:?}"
    );
    eprintln!(
        "heartbeat: {} heartbeat comments through nginx in {QUIET_WATCH:?}, no close",
        stream.heartbeats()
    );

    publish_form(
        herald.addr,
        &[("topic", "quiet"), ("data", "after the quiet")],
    );
    let event = stream.next_event("the event published after the quiet spell");
    assert_eq!(event.data, "after the quiet");
    let log = nginx.error_log();
    assert!(
        !log.contains("upstream timed out"),
        "nginx error log:\n{log}"
    );
}

/// The control: the same quiet stream, but herald's heartbeat comes later than nginx's read
/// timeout. nginx cuts the stream, so the heartbeats are what kept the other one open.
#[test]
fn nginx_cuts_a_quiet_stream_whose_heartbeat_comes_after_its_read_timeout() {
    let herald = HeraldProcess::spawn(&["--heartbeat-ms", "5000"]);
    let nginx = Nginx::start("no-heartbeat", |listen| {
        readme_config(
            herald.addr,
            listen,
            &[("proxy_read_timeout 1h;", "proxy_read_timeout 1s;")],
        )
    });
    let mut stream = EventStream::open(nginx.addr, None, &events_target(&["quiet"], None), &[])
        .unwrap_or_else(|refused| panic!("through nginx: {}", refused.summary()));
    // Before herald's first heartbeat (5 s after the `retry:` frame): if nginx has not cut
    // the stream by then, it would not have without heartbeats either.
    let watch_until = Instant::now() + Duration::from_secs(4);
    loop {
        match stream.read_before(watch_until) {
            Outcome::Bytes => {}
            Outcome::Ended => break,
            Outcome::TimedOut => {
                panic!("nginx kept a stream quiet for 4 s open despite proxy_read_timeout 1s")
            }
        }
    }
    assert_eq!(stream.heartbeats(), 0, "a heartbeat arrived");
    assert!(
        !stream.ended_with_last_chunk(),
        "the response was ended, not cut by nginx's timeout"
    );
    let log = nginx.error_log();
    assert!(
        log.contains("upstream timed out"),
        "nginx error log:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// A cluster behind one nginx
// ---------------------------------------------------------------------------------------------

/// Subscribers opened through the README's cluster block.
const CLUSTER_SUBSCRIBERS: usize = 30;
/// Events published through it.
const CLUSTER_EVENTS: usize = 20;

/// README "Cluster mode": three nodes on one Redis behind the README's `upstream` block.
/// `least_conn` spreads the subscribers over every node, publishes through nginx reach
/// every subscriber once, in order, with the same ids whichever node serves it.
#[test]
fn readme_cluster_config_spreads_subscribers_over_the_nodes() {
    let redis = testkit::redis::RedisServer::start("nginx-cluster");
    let url = redis.url();
    let nodes: Vec<HeraldProcess> = (0..3)
        .map(|_| {
            HeraldProcess::spawn(&[
                "--bus",
                "redis",
                "--redis-url",
                &url,
                "--redis-stream",
                "nginx-cluster",
                "--threads",
                "1",
            ])
        })
        .collect();
    let addrs = [nodes[0].addr, nodes[1].addr, nodes[2].addr];
    for addr in addrs {
        wait_until("every node's reader is connected", || {
            scrape(addr).get("herald_redis_connected") == Some(1.0)
        });
    }
    let nginx = Nginx::start("cluster", |listen| readme_cluster_config(&addrs, listen));
    let target = events_target(&["score"], None);
    let mut streams: Vec<EventStream> = (0..CLUSTER_SUBSCRIBERS)
        .map(|_| {
            EventStream::open(nginx.addr, None, &target, &[])
                .unwrap_or_else(|refused| panic!("through nginx: {}", refused.summary()))
        })
        .collect();
    let per_node: Vec<f64> = addrs
        .iter()
        .map(|&addr| scrape(addr).value("herald_subscribers"))
        .collect();
    assert_eq!(
        per_node.iter().sum::<f64>(),
        CLUSTER_SUBSCRIBERS as f64,
        "every subscriber is on some node: {per_node:?}"
    );
    assert!(
        per_node.iter().all(|&n| n >= 5.0),
        "least_conn spreads {CLUSTER_SUBSCRIBERS} subscribers over the three nodes: {per_node:?}"
    );

    let mut publisher = Conn::connect(nginx.addr);
    let mut ids = Vec::with_capacity(CLUSTER_EVENTS);
    for i in 0..CLUSTER_EVENTS {
        publisher.send(post_request(
            "/publish?topic=score",
            Some("text/plain"),
            format!("goal {i}").as_bytes(),
            &[],
        ));
        let answer = publisher.read_response("the publish answer through nginx");
        assert_eq!(answer.status, 200, "publish: {}", answer.summary());
        ids.push(answer.body_text().trim().to_owned());
    }
    for (n, stream) in streams.iter_mut().enumerate() {
        for (i, id) in ids.iter().enumerate() {
            let event = stream.next_event(&format!("event {i} on subscriber {n}"));
            assert_eq!(
                (event.data.as_str(), event.last_event_id.as_str()),
                (format!("goal {i}").as_str(), id.as_str()),
                "subscriber {n} gets every event once, in order, with the stream's ids"
            );
        }
    }
    drop(nginx);
    drop(nodes);
}

/// How long the control below waits for an event that a buffering nginx holds back.
const BUFFERED_WAIT: Duration = Duration::from_secs(1);

/// The control for [`x_accel_buffering_keeps_a_buffering_nginx_from_buffering_streams`]:
/// the same nginx (`proxy_buffering on`) in front of an upstream that streams an event
/// *without* `X-Accel-Buffering: no` holds the event back until the upstream ends the
/// response. So the test above shows the header at work, not an nginx that never buffers.
#[test]
fn a_buffering_nginx_holds_back_a_stream_without_x_accel_buffering() {
    let upstream = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (finish, finished) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = upstream.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(conn.read(&mut byte).unwrap(), 1, "request head");
            head.push(byte[0]);
        }
        use std::io::Write;
        conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              Connection: close\r\n\r\nretry: 1000\n\ndata: held\n\n",
        )
        .unwrap();
        // Keep the response open until the test has looked, then end it.
        let _ = finished.recv_timeout(DEADLINE);
    });
    let nginx = Nginx::start("buffering-control", |listen| {
        readme_config(
            upstream_addr,
            listen,
            &[("proxy_buffering off;", "proxy_buffering on;")],
        )
    });
    let mut client = TcpStream::connect(nginx.addr).unwrap();
    use std::io::Write;
    client
        .write_all(&build_request("GET", "/events?topic=t", &[], b""))
        .unwrap();
    client.set_read_timeout(Some(BUFFERED_WAIT)).unwrap();
    let mut seen = Vec::new();
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    while started.elapsed() < BUFFERED_WAIT {
        match client.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("reading through nginx: {e}"),
        }
    }
    assert!(
        !String::from_utf8_lossy(&seen).contains("data: held"),
        "nginx with proxy_buffering on passed an unmarked stream through unbuffered, so the \
         X-Accel-Buffering test proves nothing: {}",
        String::from_utf8_lossy(&seen)
    );
    finish.send(()).unwrap();
    server.join().unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while !String::from_utf8_lossy(&seen).contains("data: held") && Instant::now() < deadline {
        match client.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(e) => panic!("reading through nginx: {e}"),
        }
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("data: held"),
        "the held event arrives once the upstream ends the response: {}",
        String::from_utf8_lossy(&seen)
    );
}
