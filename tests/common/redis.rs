//! A private `redis-server` for one test, and a tiny RESP2 client over `std::net::TcpStream`.
//!
//! [`RedisServer::start`] runs `/usr/bin/redis-server` on a free loopback port with
//! append-only persistence fsynced on every write (`--appendonly yes --appendfsync always
//! --save ''`) in its own directory under Cargo's per-target temp dir, and waits until it
//! answers `PING`. It can be killed with SIGKILL and restarted on the same port and
//! directory, so a test can crash Redis in the middle of a stream without losing what it
//! acknowledged. Only the process this helper started is ever killed (by its PID), when the
//! test asks or when the helper is dropped.
//!
//! [`Resp`] and [`RespConn`] speak just enough RESP2 for the tests: send a command as an
//! array of bulk strings, read one reply of any type.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// Where the tests find Redis (Debian's `redis-server`, installed by `.ci/deps`).
pub const REDIS_SERVER_BIN: &str = "/usr/bin/redis-server";

/// How often a wait for Redis to come up re-checks: a poll interval, not a synchronisation.
const POLL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------------
// RESP2
// ---------------------------------------------------------------------------------------------

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    /// `+text`
    Simple(String),
    /// `-text`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` bytes, or `$-1` (nil).
    Bulk(Option<Vec<u8>>),
    /// `*n` replies, or `*-1` (nil).
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// A bulk string as UTF-8; fails the test on anything else.
    pub fn text(&self) -> String {
        match self {
            Resp::Bulk(Some(bytes)) => String::from_utf8(bytes.clone())
                .unwrap_or_else(|_| panic!("RESP: bulk string is not UTF-8: {bytes:?}")),
            Resp::Simple(text) => text.clone(),
            other => panic!("RESP: expected a string, got {other:?}"),
        }
    }

    /// An integer reply; fails the test on anything else.
    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(n) => *n,
            other => panic!("RESP: expected an integer, got {other:?}"),
        }
    }

    /// The items of an array reply (nil counts as empty); fails the test on anything else.
    pub fn items(&self) -> Vec<Resp> {
        match self {
            Resp::Array(Some(items)) => items.clone(),
            Resp::Array(None) => Vec::new(),
            other => panic!("RESP: expected an array, got {other:?}"),
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn protocol_error(what: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, what)
}

/// Reads one reply.
pub fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "Redis closed the connection",
        ));
    }
    let body = line
        .strip_suffix(b"\r\n")
        .ok_or_else(|| protocol_error(format!("RESP line without CRLF: {line:?}")))?;
    let (kind, rest) = body
        .split_first()
        .ok_or_else(|| protocol_error("empty RESP line".to_owned()))?;
    let text = String::from_utf8_lossy(rest).into_owned();
    let number = || -> std::io::Result<i64> {
        text.parse()
            .map_err(|_| protocol_error(format!("bad RESP number {text:?}")))
    };
    Ok(match kind {
        b'+' => Resp::Simple(text.clone()),
        b'-' => Resp::Error(text.clone()),
        b':' => Resp::Int(number()?),
        b'$' => {
            let n = number()?;
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut bytes = vec![0u8; usize::try_from(n).unwrap() + 2];
                reader.read_exact(&mut bytes)?;
                if !bytes.ends_with(b"\r\n") {
                    return Err(protocol_error("bulk string without CRLF".to_owned()));
                }
                bytes.truncate(bytes.len() - 2);
                Resp::Bulk(Some(bytes))
            }
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                Resp::Array(None)
            } else {
                let mut items = Vec::with_capacity(usize::try_from(n).unwrap());
                for _ in 0..n {
                    items.push(read_reply(reader)?);
                }
                Resp::Array(Some(items))
            }
        }
        other => {
            return Err(protocol_error(format!(
                "unknown RESP type byte {:?} in {line:?}",
                *other as char
            )))
        }
    })
}

/// One connection to Redis.
pub struct RespConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RespConn {
    /// Connects to Redis on `127.0.0.1:port`; every read and write is bounded by [`DEADLINE`].
    pub fn connect(port: u16) -> std::io::Result<RespConn> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, DEADLINE)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.set_write_timeout(Some(DEADLINE))?;
        stream.set_nodelay(true)?;
        Ok(RespConn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one command and reads its reply.
    pub fn try_command(&mut self, args: &[&[u8]]) -> std::io::Result<Resp> {
        self.writer.write_all(&encode_command(args))?;
        read_reply(&mut self.reader)
    }

    /// Sends one command and reads its reply; fails the test on an I/O error or an error reply.
    pub fn command(&mut self, args: &[&str]) -> Resp {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match self.try_command(&bytes) {
            Ok(Resp::Error(error)) => panic!("Redis {args:?} answered an error: {error}"),
            Ok(reply) => reply,
            Err(error) => panic!("Redis {args:?} failed: {error}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stream commands
// ---------------------------------------------------------------------------------------------

/// One stream entry: its id and its field-value pairs, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// `ms-seq`.
    pub id: String,
    /// Field-value pairs as stored.
    pub fields: Vec<(String, String)>,
}

impl StreamEntry {
    /// The first value of `field`, if any.
    pub fn field(&self, field: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_entries(reply: &Resp) -> Vec<StreamEntry> {
    reply
        .items()
        .iter()
        .map(|entry| {
            let parts = entry.items();
            assert_eq!(parts.len(), 2, "RESP: odd stream entry {entry:?}");
            let values = parts[1].items();
            assert!(values.len() % 2 == 0, "RESP: odd field list {entry:?}");
            StreamEntry {
                id: parts[0].text(),
                fields: values
                    .chunks(2)
                    .map(|pair| (pair[0].text(), pair[1].text()))
                    .collect(),
            }
        })
        .collect()
}

impl RespConn {
    /// `XADD stream * field value ...`; returns the id Redis assigned.
    pub fn xadd(&mut self, stream: &str, fields: &[(&str, &str)]) -> String {
        let mut args = vec!["XADD", stream, "*"];
        for (field, value) in fields {
            args.push(field);
            args.push(value);
        }
        self.command(&args).text()
    }

    /// `XADD stream * field value ...` with raw bytes (e.g. data that is not UTF-8).
    pub fn xadd_bytes(&mut self, stream: &str, fields: &[(&[u8], &[u8])]) -> String {
        let mut args: Vec<&[u8]> = vec![b"XADD", stream.as_bytes(), b"*"];
        for (field, value) in fields {
            args.push(field);
            args.push(value);
        }
        match self.try_command(&args) {
            Ok(reply @ Resp::Bulk(Some(_))) => reply.text(),
            other => panic!("Redis XADD {stream} {fields:?}: {other:?}"),
        }
    }

    /// `XLEN stream`.
    pub fn xlen(&mut self, stream: &str) -> i64 {
        self.command(&["XLEN", stream]).int()
    }

    /// `XRANGE stream start end`, every entry.
    pub fn xrange(&mut self, stream: &str, start: &str, end: &str) -> Vec<StreamEntry> {
        parse_entries(&self.command(&["XRANGE", stream, start, end]))
    }

    /// `XRANGE stream start end COUNT count`.
    pub fn xrange_count(
        &mut self,
        stream: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Vec<StreamEntry> {
        let count = count.to_string();
        parse_entries(&self.command(&["XRANGE", stream, start, end, "COUNT", &count]))
    }

    /// `XREVRANGE stream end start COUNT count` (newest first).
    pub fn xrevrange_count(
        &mut self,
        stream: &str,
        end: &str,
        start: &str,
        count: usize,
    ) -> Vec<StreamEntry> {
        let count = count.to_string();
        parse_entries(&self.command(&["XREVRANGE", stream, end, start, "COUNT", &count]))
    }

    /// The value of `key` in `XINFO STREAM stream` (a flat key-value array in RESP2).
    pub fn xinfo_stream(&mut self, stream: &str, key: &str) -> Resp {
        let items = self.command(&["XINFO", "STREAM", stream]).items();
        items
            .chunks(2)
            .find(|pair| pair[0].text() == key)
            .map(|pair| pair[1].clone())
            .unwrap_or_else(|| panic!("XINFO STREAM {stream} has no {key}: {items:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// A `redis-server` child process on `127.0.0.1:port` with its own data directory.
pub struct RedisServer {
    child: Option<Child>,
    /// The TCP port it listens on (kept across restarts).
    pub port: u16,
    /// Its data directory (AOF and log), removed when dropped.
    pub dir: PathBuf,
}

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// A port that was free on 127.0.0.1 a moment ago (bound to `:0`, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts a fresh instance on a free port (`name` only labels its directory).
    pub fn start(name: &str) -> RedisServer {
        // Another process may grab the port between `free_port` and Redis binding it: try a
        // few ports before failing.
        for _ in 0..5 {
            let mut server = RedisServer::new_stopped(name, free_port());
            if server.try_launch() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts a fresh instance on `port` (which must be free).
    pub fn start_on(name: &str, port: u16) -> RedisServer {
        let mut server = RedisServer::new_stopped(name, port);
        assert!(
            server.try_launch(),
            "redis-server did not start on port {port}; log:\n{}",
            server.log_tail()
        );
        server
    }

    fn new_stopped(name: &str, port: u16) -> RedisServer {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "herald-redis-{}-{}-{name}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        RedisServer {
            child: None,
            port,
            dir,
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The process id of the running instance.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("redis-server is not running")
            .id()
    }

    /// Spawns redis-server and waits until it answers PING; false if it exited first (e.g.
    /// the port was taken).
    fn try_launch(&mut self) -> bool {
        assert!(self.child.is_none(), "redis-server is already running");
        let child = Command::new(REDIS_SERVER_BIN)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {REDIS_SERVER_BIN}: {e} (run .ci/deps)"));
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                eprintln!(
                    "redis-server on port {} exited with {status} while starting; log:\n{}",
                    self.port,
                    self.log_tail()
                );
                self.child = None;
                return false;
            }
            if self.ping() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {DEADLINE:?}; log:\n{}",
                self.port,
                self.log_tail()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Whether the server answers `PING` with `PONG` right now.
    pub fn ping(&self) -> bool {
        RespConn::connect(self.port)
            .and_then(|mut conn| conn.try_command(&[b"PING"]))
            .is_ok_and(|reply| reply == Resp::Simple("PONG".to_owned()))
    }

    /// A new client connection.
    pub fn client(&self) -> RespConn {
        RespConn::connect(self.port)
            .unwrap_or_else(|e| panic!("connecting to redis-server on {}: {e}", self.port))
    }

    /// Kills the server with SIGKILL (by its PID) and reaps it: a crash, not a shutdown.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("redis-server is not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends `signal` (e.g. `"STOP"`, `"CONT"`) to the server with `kill -SIGNAL PID`.
    pub fn signal(&self, signal: &str) {
        crate::common::send_signal(self.pid(), signal);
    }

    /// Starts the server again on the same port and directory (it reloads its AOF).
    pub fn restart(&mut self) {
        assert!(
            self.try_launch(),
            "redis-server did not restart on port {}; log:\n{}",
            self.port,
            self.log_tail()
        );
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server on port {} (dir {}), last log lines ---\n{}",
                self.port,
                self.dir.display(),
                self.log_tail()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
