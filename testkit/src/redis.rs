//! A private `redis-server` ([`RedisServer`]) and a blocking client on the `redis` crate
//! ([`Client`]) for herald's tests and load generator.
//!
//! [`RedisServer`] runs redis-server on a free loopback port in its own directory and waits
//! until it answers `PING`. A durable one (the tests' default) keeps an append-only file
//! fsynced on every write, so a test can kill it with SIGKILL in the middle of a stream and
//! restart it on the same port and directory without losing what it acknowledged; the load
//! generator's keeps nothing on disk. Only the process this module started is ever signalled
//! (by its PID), when the caller asks or when the server is dropped, which kills it and
//! removes its directory.
//!
//! [`Client`] is the `redis` crate's sync connection with every read and write bounded by
//! [`REPLY_TIMEOUT`], plus the stream commands the tests use. Helpers named like a command
//! fail the test on an error; the `try_`/`launch` ones return it.

use std::io::{self, ErrorKind};
use std::net::{SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::{FromRedisValue, RedisResult, Value};

/// Where redis-server is found (Debian's `redis-server` package, which `.ci/deps` installs).
pub const REDIS_SERVER_BIN: &str = "/usr/bin/redis-server";

/// How long redis-server may take to answer `PING` after it was started. Generous: it only
/// bounds a hang.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for one connect, write or reply of a [`Client`].
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a wait for redis-server to come up re-checks: a poll interval, not a
/// synchronisation.
const START_POLL: Duration = Duration::from_millis(10);

/// Free ports tried by [`RedisServer::launch`]: another process may take the port between the
/// probe and redis-server binding it.
const PORT_ATTEMPTS: usize = 5;

/// How many lines of its log a failure message shows.
const LOG_TAIL_LINES: usize = 30;

/// How to run one redis-server.
#[derive(Clone, Debug)]
pub struct Options {
    /// The redis-server binary.
    pub bin: PathBuf,
    /// Append-only file fsynced on every write (`--appendonly yes --appendfsync always`);
    /// otherwise nothing is kept on disk (`--appendonly no`). Snapshots are off either way.
    pub durable: bool,
    /// Where its directory (data and `redis.log`) is made.
    pub parent_dir: PathBuf,
    /// Labels its directory, for whoever reads a failure.
    pub label: String,
}

impl Options {
    /// A durable redis-server from [`REDIS_SERVER_BIN`] under the system's temp directory.
    pub fn new(label: &str) -> Options {
        Options {
            bin: PathBuf::from(REDIS_SERVER_BIN),
            durable: true,
            parent_dir: std::env::temp_dir(),
            label: label.to_owned(),
        }
    }
}

/// A `redis-server` child process on `127.0.0.1:port` with its own directory.
pub struct RedisServer {
    child: Option<Child>,
    options: Options,
    /// The TCP port it listens on (kept across restarts).
    pub port: u16,
    /// Its directory (data and `redis.log`), removed when dropped.
    pub dir: PathBuf,
    /// Its `redis_version`, as `INFO server` gave it at the last start.
    pub version: String,
}

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// A port that was free on 127.0.0.1 a moment ago (bound to `:0`, then released).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Starts a durable instance for a test on a free port (`label` names its directory);
    /// fails the test if it cannot.
    pub fn start(label: &str) -> RedisServer {
        RedisServer::launch(&Options::new(label))
            .unwrap_or_else(|e| panic!("redis-server {label:?} did not start: {e}"))
    }

    /// Starts a durable instance for a test on `port`, which must be free.
    pub fn start_on(label: &str, port: u16) -> RedisServer {
        RedisServer::launch_on(&Options::new(label), port)
            .unwrap_or_else(|e| panic!("redis-server {label:?} did not start on {port}: {e}"))
    }

    /// Starts an instance on a free port and waits until it answers.
    pub fn launch(options: &Options) -> io::Result<RedisServer> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            match RedisServer::launch_on(options, free_port()?) {
                Ok(server) => return Ok(server),
                // It exited at start, most likely because the port was taken meanwhile.
                Err(e) if e.kind() == ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no port was tried")))
    }

    /// Starts an instance on `port` and waits until it answers.
    pub fn launch_on(options: &Options, port: u16) -> io::Result<RedisServer> {
        let dir = options.parent_dir.join(format!(
            "testkit-redis-{}-{}-{}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed),
            options.label
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut server = RedisServer {
            child: None,
            options: options.clone(),
            port,
            dir,
            version: String::new(),
        };
        server.try_launch()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr())
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new([127, 0, 0, 1].into(), self.port)
    }

    /// The process id of the running instance.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("redis-server on port {} is not running", self.port))
    }

    /// Spawns redis-server and waits until it answers `PING` and `INFO`. Refused connections,
    /// I/O errors and other answers (such as `-LOADING`) are retried until [`START_TIMEOUT`].
    /// An early exit is `AddrInUse` (the usual cause; its log says).
    fn try_launch(&mut self) -> io::Result<()> {
        assert!(self.child.is_none(), "redis-server is already running");
        let mut command = Command::new(&self.options.bin);
        command.args(["--port", &self.port.to_string()]).args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--daemonize",
            "no",
        ]);
        if self.options.durable {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                let bin = self.options.bin.display();
                io::Error::new(
                    e.kind(),
                    format!("{bin}: {e} (apt-get install redis-server)"),
                )
            })?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(io::Error::new(
                        ErrorKind::AddrInUse,
                        format!(
                            "redis-server on port {} exited at start ({status}); log:\n{}",
                            self.port,
                            self.log_tail()
                        ),
                    ));
                }
            }
            let last = match self.ask_version() {
                Ok(version) => {
                    self.version = version;
                    return Ok(());
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "redis-server did not answer on port {} within {START_TIMEOUT:?}: \
                         {last}; log:\n{}",
                        self.port,
                        self.log_tail()
                    ),
                ));
            }
            std::thread::sleep(START_POLL);
        }
    }

    /// One start-up attempt: connect, `PING`, and `redis_version` from `INFO server`.
    fn ask_version(&self) -> io::Result<String> {
        let mut client = Client::connect(self.port).map_err(io::Error::other)?;
        match client.try_command::<String>(&[b"PING"]) {
            Ok(pong) if pong == "PONG" => {}
            other => return Err(io::Error::other(format!("PING answered {other:?}"))),
        }
        let info: String = client
            .try_command(&[b"INFO", b"server"])
            .map_err(io::Error::other)?;
        Ok(info_field(&info, "redis_version").unwrap_or_default())
    }

    /// Whether the server answers `PING` with `PONG` right now.
    pub fn ping(&self) -> bool {
        Client::connect(self.port)
            .and_then(|mut client| client.try_command::<String>(&[b"PING"]))
            .is_ok_and(|pong| pong == "PONG")
    }

    /// A new client connection; fails the test if there is none.
    pub fn client(&self) -> Client {
        Client::connect(self.port)
            .unwrap_or_else(|e| panic!("connecting to redis-server on {}: {e}", self.port))
    }

    /// Kills the server with SIGKILL (by its PID) and reaps it: a crash, not a shutdown.
    pub fn kill(&mut self) {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("redis-server on port {} is not running", self.port));
        child.kill().expect("SIGKILL to our own child");
        child.wait().expect("reaping our own child");
    }

    /// Sends `signal` (e.g. `"STOP"`, `"CONT"`) to the server with `kill -SIGNAL PID`.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("running kill failed: {e}"));
        assert!(status.success(), "kill -{signal} {pid} failed: {status:?}");
    }

    /// Starts the server again on the same port and directory (a durable one reloads its
    /// append-only file); fails the test if it cannot.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_launch() {
            panic!("redis-server did not restart on port {}: {e}", self.port);
        }
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
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

/// The value of `field` in an `INFO` answer (`field:value` lines).
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().to_owned())
    })
}

/// One stream entry: its id and its field-value pairs, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// `ms-seq`.
    pub id: String,
    /// Field-value pairs as stored (UTF-8 decoded with replacement).
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

/// One blocking connection to a loopback Redis (RESP2, database 0).
pub struct Client {
    connection: redis::Connection,
}

impl Client {
    /// Connects to `127.0.0.1:port`; every connect, read and write is bounded by
    /// [`REPLY_TIMEOUT`].
    pub fn connect(port: u16) -> RedisResult<Client> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))?;
        let connection = client.get_connection_with_timeout(REPLY_TIMEOUT)?;
        connection.set_read_timeout(Some(REPLY_TIMEOUT))?;
        connection.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Client { connection })
    }

    /// The `redis` crate's connection, e.g. to pipeline raw commands.
    pub fn connection(&mut self) -> &mut redis::Connection {
        &mut self.connection
    }

    /// Sends one command and converts its reply; an error reply is an `Err`.
    pub fn try_command<T: FromRedisValue>(&mut self, args: &[&[u8]]) -> RedisResult<T> {
        let mut command = redis::Cmd::new();
        for arg in args {
            command.arg(*arg);
        }
        command.query(&mut self.connection)
    }

    /// Sends one command and converts its reply; fails the test on an I/O error, an error
    /// reply or a reply of another type.
    pub fn command<T: FromRedisValue>(&mut self, args: &[&str]) -> T {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.try_command(&bytes)
            .unwrap_or_else(|e| panic!("Redis {args:?} failed: {e}"))
    }

    /// `XADD stream * field value ...`; returns the id Redis assigned.
    pub fn xadd(&mut self, stream: &str, fields: &[(&str, &str)]) -> String {
        let mut args = vec!["XADD", stream, "*"];
        for (field, value) in fields {
            args.push(field);
            args.push(value);
        }
        self.command(&args)
    }

    /// `XADD stream * field value ...` with raw bytes (e.g. data that is not UTF-8).
    pub fn xadd_bytes(&mut self, stream: &str, fields: &[(&[u8], &[u8])]) -> String {
        let mut args: Vec<&[u8]> = vec![b"XADD", stream.as_bytes(), b"*"];
        for (field, value) in fields {
            args.push(field);
            args.push(value);
        }
        self.try_command(&args)
            .unwrap_or_else(|e| panic!("Redis XADD {stream} {fields:?}: {e}"))
    }

    /// `XLEN stream`.
    pub fn xlen(&mut self, stream: &str) -> i64 {
        self.command(&["XLEN", stream])
    }

    /// `XRANGE stream start end`, every entry.
    pub fn xrange(&mut self, stream: &str, start: &str, end: &str) -> Vec<StreamEntry> {
        entries(self.command(&["XRANGE", stream, start, end]))
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
        entries(self.command(&["XRANGE", stream, start, end, "COUNT", &count]))
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
        entries(self.command(&["XREVRANGE", stream, end, start, "COUNT", &count]))
    }

    /// The value of `key` in `XINFO STREAM stream` (a flat key-value array in RESP2).
    pub fn xinfo_stream<T: FromRedisValue>(&mut self, stream: &str, key: &str) -> T {
        let items: Vec<Value> = self.command(&["XINFO", "STREAM", stream]);
        let value = items
            .chunks(2)
            .find(|pair| String::from_redis_value(&pair[0]).is_ok_and(|k| k == key))
            .and_then(|pair| pair.get(1))
            .unwrap_or_else(|| panic!("XINFO STREAM {stream} has no {key}: {items:?}"));
        T::from_redis_value(value)
            .unwrap_or_else(|e| panic!("XINFO STREAM {stream} {key}: {e}: {value:?}"))
    }
}

/// Stream entries as `XRANGE` answers them: `[[id, [field, value, ...]], ...]`; fields and
/// values that are not UTF-8 are decoded with replacement characters.
fn entries(raw: Vec<(String, Vec<Vec<u8>>)>) -> Vec<StreamEntry> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    raw.into_iter()
        .map(|(id, values)| {
            assert!(values.len() % 2 == 0, "odd field list in entry {id}");
            StreamEntry {
                id,
                fields: values
                    .chunks(2)
                    .map(|pair| (text(&pair[0]), text(&pair[1])))
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
