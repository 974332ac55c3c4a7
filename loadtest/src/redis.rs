//! Redis for the `cluster` subcommand: a private `redis-server` (free loopback port, no
//! persistence, its own directory, stopped by its pid), a RESP2 client small enough to
//! read (command encoding and reply parsing are sans-io and unit-tested; [`Conn`] is the
//! one blocking socket), and the XADD pipeline benchmark that measures what one stream
//! takes when written directly, the ceiling under herald's publish path.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::payload;
use crate::peers;

/// Debian's redis-server.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// How long redis-server may take to answer PING after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long redis-server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest status, error or length line accepted in a reply.
const LINE_BYTES_MAX: usize = 64 * 1024;

/// Largest bulk string accepted in a reply.
const BULK_BYTES_MAX: i64 = 64 * 1024 * 1024;

/// Most elements of one array accepted in a reply.
const ARRAY_LEN_MAX: i64 = 1_000_000;

/// Deepest nesting of arrays accepted (XRANGE answers are three deep).
const DEPTH_MAX: usize = 8;

/// Most entries one connection of the XADD benchmark writes, whatever the duration says.
const XADD_ENTRIES_PER_CONNECTION_MAX: u64 = 50_000_000;

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc` (`None` for the null bulk string `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` (`None` for the null array `*-1`).
    Array(Option<Vec<Reply>>),
}

/// Why a reply could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RespError(pub &'static str);

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad RESP reply: {}", self.0)
    }
}

impl std::error::Error for RespError {}

/// Appends one command (an array of bulk strings) to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the start of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    parse_at(buf, 0, 0)
}

/// Parses the reply starting at `at`; returns it and the offset just past it.
fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, RespError> {
    if depth > DEPTH_MAX {
        return Err(RespError("arrays nested too deep"));
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let body = &buf[at + 1..];
    let Some(len) = body.windows(2).position(|w| w == b"\r\n") else {
        return if body.len() > LINE_BYTES_MAX {
            Err(RespError("line too long"))
        } else {
            Ok(None)
        };
    };
    if len > LINE_BYTES_MAX {
        return Err(RespError("line too long"));
    }
    let line = &body[..len];
    let next = at + 1 + len + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    let reply = match kind {
        b'+' => (Reply::Simple(text()), next),
        b'-' => (Reply::Error(text()), next),
        b':' => (Reply::Integer(integer(line)?), next),
        b'$' => {
            let n = integer(line)?;
            if n < 0 {
                (Reply::Bulk(None), next)
            } else if n > BULK_BYTES_MAX {
                return Err(RespError("bulk string too large"));
            } else {
                let end = next + n as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(RespError("bulk string not followed by CRLF"));
                }
                (Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)
            }
        }
        b'*' => {
            let n = integer(line)?;
            if n < 0 {
                (Reply::Array(None), next)
            } else if n > ARRAY_LEN_MAX {
                return Err(RespError("array too long"));
            } else {
                let mut items = Vec::with_capacity((n as usize).min(1024));
                let mut pos = next;
                for _ in 0..n {
                    match parse_at(buf, pos, depth + 1)? {
                        Some((item, end)) => {
                            items.push(item);
                            pos = end;
                        }
                        None => return Ok(None),
                    }
                }
                (Reply::Array(Some(items)), pos)
            }
        }
        _ => return Err(RespError("unknown reply type")),
    };
    Ok(Some(reply))
}

/// A signed decimal integer of a RESP line.
fn integer(line: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError("bad integer"))
}

/// The value of `field` in an `INFO` answer (`field:value` lines).
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().to_owned())
    })
}

/// A blocking connection to a loopback Redis.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    scratch: Box<[u8]>,
}

impl Conn {
    /// Connects to `addr` (loopback only).
    pub fn connect(addr: SocketAddrV4) -> io::Result<Conn> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "only 127.0.0.0/8 may be targeted",
            ));
        }
        let stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
        })
    }

    /// Writes raw command bytes (one or many encoded commands).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads the next reply.
    pub fn reply(&mut self) -> io::Result<Reply> {
        loop {
            if let Some((reply, used)) = parse(&self.buf).map_err(io::Error::other)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let n = self.stream.read(&mut self.scratch)?;
            if n == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "redis closed the connection",
                ));
            }
            self.buf.extend_from_slice(&self.scratch[..n]);
        }
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut out = Vec::new();
        encode(&mut out, args);
        self.send(&out)?;
        self.reply()
    }
}

/// The redis-server this tool started: stopped by its pid (SIGTERM, then SIGKILL) and its
/// directory removed when dropped.
pub struct RedisServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddrV4,
    dir: PathBuf,
    /// Its `redis_version`.
    pub version: String,
}

impl RedisServer {
    /// Starts `bin` on a free loopback port with `--save '' --appendonly no` in a private
    /// directory, and waits until it answers PING.
    pub fn start(bin: &Path) -> io::Result<RedisServer> {
        let addr = match peers::free_loopback_port()? {
            std::net::SocketAddr::V4(addr) => addr,
            other => return Err(io::Error::other(format!("not IPv4: {other}"))),
        };
        let dir = std::env::temp_dir().join(format!(
            "loadtest-redis-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir)?;
        let child = peers::spawn_or_hint(
            Command::new(bin)
                .arg("--port")
                .arg(addr.port().to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no", "--databases", "1"])
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(dir.join("redis.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
            &bin.display().to_string(),
            "redis-server",
        )?;
        let mut server = RedisServer {
            child,
            addr,
            dir,
            version: String::new(),
        };
        server.version = server.wait_ready()?;
        Ok(server)
    }

    /// Waits for PING to answer PONG; returns the server's version. Refused connections,
    /// I/O errors and other answers (such as `-LOADING`) are retried until
    /// [`START_TIMEOUT`]; the last of them is in the timeout's message.
    fn wait_ready(&mut self) -> io::Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(io::Error::other(format!(
                    "redis-server exited at start ({status}); see {}",
                    self.dir.join("redis.log").display()
                )));
            }
            let last = match self.ask_version(deadline) {
                Ok(version) => return Ok(version),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!("redis-server did not answer on {}: {last}", self.addr),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One start-up attempt: connect, PING, and read `redis_version` from `INFO server`,
    /// each read bounded by `deadline`.
    fn ask_version(&self, deadline: Instant) -> io::Result<String> {
        let mut conn = Conn::connect(self.addr)?;
        let left = deadline.saturating_duration_since(Instant::now());
        conn.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(100))))?;
        match conn.call(&[b"PING"])? {
            Reply::Simple(pong) if pong == "PONG" => {}
            other => return Err(io::Error::other(format!("PING answered {other:?}"))),
        }
        let info = match conn.call(&[b"INFO", b"server"])? {
            Reply::Bulk(Some(text)) => String::from_utf8_lossy(&text).into_owned(),
            _ => String::new(),
        };
        Ok(info_field(&info, "redis_version").unwrap_or_default())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The URL herald's `--redis-url` takes.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        peers::stop_child(&mut self.child, STOP_TIMEOUT, |pid| {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One XADD pipeline measurement.
#[derive(Clone, Debug)]
pub struct XaddPlan {
    /// Redis.
    pub addr: SocketAddrV4,
    /// The stream written.
    pub stream: String,
    /// The `topic` field of every entry.
    pub topic: String,
    /// Connections, one thread each.
    pub connections: usize,
    /// Commands written per batch before reading their replies.
    pub depth: usize,
    /// How long to keep writing.
    pub duration: Duration,
    /// `data` bytes (a loadtest payload, as herald would write it).
    pub payload_bytes: usize,
    /// `MAXLEN ~` of every XADD (what herald's `--redis-maxlen` is set to).
    pub maxlen: u64,
}

/// What one XADD measurement did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct XaddRun {
    /// The stream written.
    pub stream: String,
    /// Connections.
    pub connections: usize,
    /// Pipeline depth.
    pub depth: usize,
    /// Entries acknowledged with an id.
    pub entries: u64,
    /// Error replies.
    pub errors: u64,
    /// Connections that broke.
    pub io_errors: u64,
    /// Seconds from the first write to the last reply.
    pub seconds: f64,
    /// Entries acknowledged per second.
    pub entries_per_second: f64,
}

/// Writes XADD batches on every connection of `plan` until its duration is over.
pub fn xadd_bench(plan: &XaddPlan) -> XaddRun {
    let start = Instant::now();
    let stop_at = start + plan.duration;
    let mut run = XaddRun {
        stream: plan.stream.clone(),
        connections: plan.connections.max(1),
        depth: plan.depth.max(1),
        ..XaddRun::default()
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..run.connections)
            .map(|c| scope.spawn(move || xadd_connection(plan, c as u64, stop_at)))
            .collect();
        for handle in handles {
            let (entries, errors, io_errors) = handle.join().unwrap_or((0, 0, 1));
            run.entries += entries;
            run.errors += errors;
            run.io_errors += io_errors;
        }
    });
    run.seconds = start.elapsed().as_secs_f64();
    run.entries_per_second = per_second(run.entries, run.seconds);
    run
}

/// `count / seconds`, zero for an empty interval.
pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// One connection of [`xadd_bench`]: (entries, error replies, broken connections).
fn xadd_connection(plan: &XaddPlan, c: u64, stop_at: Instant) -> (u64, u64, u64) {
    let Ok(mut conn) = Conn::connect(plan.addr) else {
        return (0, 0, 1);
    };
    let depth = plan.depth.max(1) as u64;
    let maxlen = plan.maxlen.to_string();
    let (mut batch, mut body) = (Vec::new(), Vec::new());
    let (mut entries, mut errors) = (0, 0);
    let mut seq = c << 40;
    while Instant::now() < stop_at && entries + errors < XADD_ENTRIES_PER_CONNECTION_MAX {
        batch.clear();
        for _ in 0..depth {
            payload::encode(&mut body, seq, payload::unix_nanos(), plan.payload_bytes);
            seq += 1;
            encode(
                &mut batch,
                &[
                    b"XADD",
                    plan.stream.as_bytes(),
                    b"MAXLEN",
                    b"~",
                    maxlen.as_bytes(),
                    b"*",
                    b"topic",
                    plan.topic.as_bytes(),
                    b"data",
                    &body,
                ],
            );
        }
        if conn.send(&batch).is_err() {
            return (entries, errors, 1);
        }
        for _ in 0..depth {
            match conn.reply() {
                Ok(Reply::Bulk(Some(_))) => entries += 1,
                Ok(_) => errors += 1,
                Err(_) => return (entries, errors, 1),
            }
        }
    }
    (entries, errors, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode() {
        let mut out = Vec::new();
        encode(&mut out, &[b"XADD", b"s", b"*", b"data", b""]);
        assert_eq!(
            out,
            b"*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$4\r\ndata\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn replies_parse() {
        let cases: Vec<(&[u8], Reply)> = vec![
            (b"+PONG\r\n", Reply::Simple("PONG".into())),
            (b"-ERR no\r\n", Reply::Error("ERR no".into())),
            (b":-12\r\n", Reply::Integer(-12)),
            (
                b"$15\r\n1764230400123-0\r\n",
                Reply::Bulk(Some(b"1764230400123-0".to_vec())),
            ),
            (b"$0\r\n\r\n", Reply::Bulk(Some(Vec::new()))),
            (b"$-1\r\n", Reply::Bulk(None)),
            (b"*-1\r\n", Reply::Array(None)),
            (
                b"*2\r\n$2\r\na\r\r\n*1\r\n:1\r\n",
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"a\r".to_vec())),
                    Reply::Array(Some(vec![Reply::Integer(1)])),
                ])),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse(bytes), Ok(Some((want.clone(), bytes.len()))));
            // Every proper prefix needs more bytes.
            for end in 0..bytes.len() {
                assert_eq!(parse(&bytes[..end]), Ok(None), "{bytes:?} cut at {end}");
            }
        }
    }

    #[test]
    fn pipelined_replies_parse_one_at_a_time() {
        let buf = b"$3\r\n1-0\r\n$3\r\n1-1\r\n-ERR x\r\n";
        let (first, used) = parse(buf).unwrap().unwrap();
        assert_eq!(first, Reply::Bulk(Some(b"1-0".to_vec())));
        let (second, used2) = parse(&buf[used..]).unwrap().unwrap();
        assert_eq!(second, Reply::Bulk(Some(b"1-1".to_vec())));
        let (third, _) = parse(&buf[used + used2..]).unwrap().unwrap();
        assert_eq!(third, Reply::Error("ERR x".into()));
    }

    #[test]
    fn bad_replies() {
        for bytes in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b"$3\r\nabcd\r\n",
            b"$99999999999\r\n",
            b"*99999999999\r\n",
        ] {
            assert!(parse(bytes).is_err(), "{bytes:?}");
        }
        let deep = "*1\r\n".repeat(DEPTH_MAX + 2) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
        let long = vec![b'+'; LINE_BYTES_MAX + 2];
        assert!(parse(&long).is_err());
    }

    /// The bulk strings of nested arrays, space-separated.
    fn flatten(replies: &[Reply]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in replies {
            match r {
                Reply::Bulk(Some(b)) => {
                    out.extend_from_slice(b);
                    out.push(b' ');
                }
                Reply::Array(Some(items)) => out.extend(flatten(items)),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn private_server_takes_pipelined_xadds() {
        let bin = Path::new(REDIS_SERVER);
        assert!(
            bin.exists(),
            "this test needs {REDIS_SERVER} (apt-get install redis-server)"
        );
        let server = RedisServer::start(bin).unwrap();
        assert!(!server.version.is_empty());
        let run = xadd_bench(&XaddPlan {
            addr: server.addr,
            stream: "s".into(),
            topic: "t".into(),
            connections: 2,
            depth: 8,
            duration: Duration::from_millis(100),
            payload_bytes: 64,
            maxlen: 1_000,
        });
        assert_eq!((run.errors, run.io_errors), (0, 0), "{run:?}");
        assert!(run.entries >= 16 && run.entries % 8 == 0, "{run:?}");
        let mut conn = Conn::connect(server.addr).unwrap();
        let Reply::Integer(len) = conn.call(&[b"XLEN", b"s"]).unwrap() else {
            panic!("XLEN");
        };
        // Approximate trimming keeps at least MAXLEN entries.
        assert!(len >= 1_000.min(run.entries as i64), "{len} of {run:?}");
        let Reply::Array(Some(entries)) = conn
            .call(&[b"XRANGE", b"s", b"-", b"+", b"COUNT", b"1"])
            .unwrap()
        else {
            panic!("XRANGE");
        };
        let text = String::from_utf8_lossy(&flatten(&entries)).into_owned();
        assert!(text.contains("topic t data seq="), "{text}");
        let pid = server.pid();
        drop(server);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn start_up_retries_after_io_errors() {
        // A stand-in redis that hangs up on the first connection, answers garbage on the
        // second, and only then behaves.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            panic!("not IPv4");
        };
        let fake = std::thread::spawn(move || {
            let mut request = [0u8; 1024];
            drop(listener.accept().unwrap());
            let (mut conn, _) = listener.accept().unwrap();
            let _ = conn.read(&mut request);
            conn.write_all(b"?\r\n").unwrap();
            drop(conn);
            let (mut conn, _) = listener.accept().unwrap();
            let _ = conn.read(&mut request);
            conn.write_all(b"+PONG\r\n").unwrap();
            let _ = conn.read(&mut request);
            let info = "# Server\r\nredis_version:7.0.15\r\n";
            write!(conn, "${}\r\n{info}\r\n", info.len()).unwrap();
        });
        let dir = std::env::temp_dir().join(format!("loadtest-redis-fake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let mut server = RedisServer {
            child,
            addr,
            dir: dir.clone(),
            version: String::new(),
        };
        assert_eq!(server.wait_ready().unwrap(), "7.0.15");
        fake.join().unwrap();
        drop(server);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!dir.exists());
    }

    #[test]
    fn info_and_rates() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(info_field(info, "redis_version").as_deref(), Some("7.0.15"));
        assert_eq!(info_field(info, "nope"), None);
        assert_eq!(per_second(500, 2.0), 250.0);
        assert_eq!(per_second(5, 0.0), 0.0);
    }
}
