//! Talking to Redis from the bus's threads: [`Target`], where connections go (one Redis,
//! plainly or over TLS, the primary Sentinel names, or the Redis Cluster node that owns the
//! stream's hash slot), [`RedisConn`], a connection reopened
//! on demand under a jittered [`Backoff`], the plain `connect` the reader uses, and
//! [`Throttle`], which keeps a fault that repeats at event rate from flooding the log. The
//! decisions (`Backoff`, `Throttle`) are plain values; only `connect`, `open` and
//! `RedisConn` do I/O.

use std::time::{Duration, Instant};

use redis::{Client, ConnectionAddr, ConnectionInfo, RedisConnectionInfo, TlsCertificates, Value};

use super::cluster::ClusterNodes;
use super::sentinel::{NodeAddr, Sentinels};
use super::Core;

/// Where the bus's connections go.
pub(super) enum Target {
    /// The one Redis `redis_url` names.
    Direct(Client),
    /// Whichever Redis the sentinels name as the primary, asked at every (re)connection,
    /// so a failover is followed by reconnecting.
    Sentinel(Sentinels),
    /// The primary of a Redis Cluster that owns the stream's hash slot, found through the
    /// seed nodes and followed through `MOVED` replies.
    Cluster(ClusterNodes),
}

/// How a connection to a Redis node is made, whatever its address: plain TCP or TLS (with
/// the configured CA and client certificate), and the credentials and database of
/// `redis_url`.
#[derive(Clone)]
pub(super) struct Endpoint {
    /// TLS (`rediss://`).
    pub tls: bool,
    /// The CA and client certificate; `None`: the system's roots, no client certificate.
    pub certs: Option<TlsCertificates>,
    /// Credentials and database.
    pub redis: RedisConnectionInfo,
}

impl Endpoint {
    /// A client for the node at `host:port`; the TLS name verified is `host`.
    pub(super) fn client(&self, host: &str, port: u16) -> redis::RedisResult<Client> {
        let addr = match self.tls {
            true => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            },
            false => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let info = ConnectionInfo {
            addr,
            redis: self.redis.clone(),
        };
        match &self.certs {
            Some(certs) => Client::build_with_tls(info, certs.clone()),
            None => Client::open(info),
        }
    }
}

/// Time to open a connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Time Redis has to answer one command (the reader adds `READ_BLOCK`).
const IO_TIMEOUT: Duration = Duration::from_millis(2_000);
/// Shortest wait between reconnection attempts: a Redis that is down is not asked more
/// often than ten times a second per thread.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts: how late, at worst, a node notices that
/// Redis is back.
const BACKOFF_MAX: Duration = Duration::from_millis(2_000);

/// Opens a connection with the bus's timeouts; `extra_read` is added to the read timeout
/// (the reader's blocking `XREAD`).
/// With Sentinel, the [`Primary`] it reached is returned too.
pub(super) fn connect(
    core: &Core,
    extra_read: Duration,
) -> redis::RedisResult<(redis::Connection, Primary)> {
    match &core.target {
        Target::Direct(client) => Ok((open(client, extra_read)?, Primary::new(None))),
        Target::Sentinel(sentinels) => {
            let (conn, addr) = sentinels.connect_primary(extra_read)?;
            Ok((conn, Primary::new(Some(addr))))
        }
        // Whether the node still owns the slot, its replies say (`MOVED`), not a watcher.
        Target::Cluster(nodes) => {
            let (conn, _) = nodes.connect_owner(extra_read)?;
            Ok((conn, Primary::new(None)))
        }
    }
}

/// Lets the target learn from an error a thread's command got: in a Redis Cluster, a
/// `MOVED` names the node that owns the stream's slot now, where every thread's next
/// connection goes.
pub(super) fn learn(core: &Core, error: &redis::RedisError) {
    if let Target::Cluster(nodes) = &core.target {
        nodes.redirected(error);
    }
}

/// How often the watcher thread asks the sentinels for the primary, and so how late, at
/// most, a busy thread notices that they named another node. After a failover that leaves
/// the old primary up, Sentinel demotes it only once it notices (up to ten seconds), and
/// whatever is written to it meanwhile is discarded when it resynchronises; this bounds
/// herald's share of that to about a second.
pub(super) const SENTINEL_CHECK: Duration = Duration::from_millis(1_000);

/// The watcher thread's body (with Sentinel only): asks the sentinels for the primary each
/// `SENTINEL_CHECK` and records the answer in `Core::named_primary`, where the other
/// threads compare it with the node they are connected to. One thread does the asking, so
/// a slow or unreachable sentinel delays this thread, never a publish or a read.
pub(super) fn run_watcher(core: &Core) {
    let Target::Sentinel(sentinels) = &core.target else {
        return;
    };
    while !core.closed.load(std::sync::atomic::Ordering::Acquire) {
        let started = Instant::now();
        // Sentinels that cannot be asked leave the last answer: connections that work are
        // left alone.
        if let Ok(named) = sentinels.primary_addr() {
            *super::lock(&core.named_primary) = Some(named);
        }
        std::thread::sleep(SENTINEL_CHECK.saturating_sub(started.elapsed()));
    }
}

/// The node a connection through Sentinel reached, and when that was last confirmed.
pub(super) struct Primary {
    addr: Option<NodeAddr>,
    checked_at: Instant,
}

impl Primary {
    fn new(addr: Option<NodeAddr>) -> Self {
        Primary {
            addr,
            checked_at: Instant::now(),
        }
    }

    /// Whether the sentinels, as the watcher last heard them, name another node (looked
    /// at most once per `SENTINEL_CHECK`; no I/O here).
    pub(super) fn moved(&mut self, core: &Core) -> bool {
        let Some(addr) = &self.addr else {
            return false;
        };
        if self.checked_at.elapsed() < SENTINEL_CHECK {
            return false;
        }
        self.checked_at = Instant::now();
        match super::lock(&core.named_primary).as_ref() {
            Some(named) if named != addr => {
                log::info!(
                    "redis: the sentinels name {}:{} as the primary, not {}:{}; reconnecting",
                    named.0,
                    named.1,
                    addr.0,
                    addr.1
                );
                true
            }
            _ => false,
        }
    }
}

/// Opens a connection to `client`'s node with the bus's timeouts (see [`connect`]).
pub(super) fn open(client: &Client, extra_read: Duration) -> redis::RedisResult<redis::Connection> {
    let conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT + extra_read))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// A connection idle for longer than this is checked with a `PING` before use, so the
/// first request after a Redis restart goes out on a fresh connection instead of failing
/// on the dead one (an `XADD` that fails is not retried: it may have been stored).
const IDLE_CHECK: Duration = Duration::from_millis(1_000);

/// The wait before the next attempt after a failure, with decorrelated jitter: each wait is
/// drawn between `BACKOFF_MIN` and three times the previous one, capped at `BACKOFF_MAX`;
/// back to the minimum once something worked. Random, so the nodes of a cluster that lost
/// Redis together do not all come back to it in the same instant after it restarts. Sans-io:
/// the random source is a seeded xorshift, so tests replay it.
pub(super) struct Backoff {
    /// The previous wait (`BACKOFF_MIN` after a reset).
    last: Duration,
    /// xorshift64 state; never zero.
    rng: u64,
}

impl Backoff {
    /// A backoff drawing from `seed` (any value; zero is replaced).
    pub(super) fn new(seed: u64) -> Self {
        Backoff {
            last: BACKOFF_MIN,
            rng: seed.max(1),
        }
    }

    /// A backoff seeded from the process's hash keys (random per process and per call), so
    /// every thread of every node draws its own waits.
    pub(super) fn seeded() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Backoff::new(seed)
    }

    /// The wait to use now, in `[BACKOFF_MIN, BACKOFF_MAX]`.
    pub(super) fn step(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let upper = (self.last * 3).clamp(BACKOFF_MIN, BACKOFF_MAX);
        let span = (upper - BACKOFF_MIN).as_micros() as u64;
        let wait = BACKOFF_MIN + Duration::from_micros(self.rng % (span + 1));
        self.last = wait;
        wait
    }

    /// Something worked: the next failure waits about the minimum again.
    pub(super) fn reset(&mut self) {
        self.last = BACKOFF_MIN;
    }
}

/// A connection that is reopened on demand, no more often than a capped backoff allows,
/// so requests fail fast while Redis is down.
pub(super) struct RedisConn {
    role: &'static str,
    /// Added to the read timeout: what a command of this thread may block for.
    extra_read: Duration,
    conn: Option<redis::Connection>,
    /// The node `conn` reached (with Sentinel).
    primary: Primary,
    retry_at: Instant,
    backoff: Backoff,
    down_logged: bool,
    /// When the connection was last handed out for a request.
    used_at: Instant,
}

impl RedisConn {
    /// A connection for the thread named by `role` (in log lines); opened on first use.
    pub(super) fn new(role: &'static str) -> Self {
        RedisConn::blocking_for(role, Duration::ZERO)
    }

    /// Like [`RedisConn::new`], for a thread whose commands may block for `extra_read`
    /// (the writer's `WAIT`).
    pub(super) fn blocking_for(role: &'static str, extra_read: Duration) -> Self {
        RedisConn {
            role,
            extra_read,
            conn: None,
            primary: Primary::new(None),
            retry_at: Instant::now(),
            backoff: Backoff::seeded(),
            down_logged: false,
            used_at: Instant::now(),
        }
    }

    /// The connection, (re)opened if it is gone and the backoff allows; `None` while Redis
    /// cannot be reached.
    pub(super) fn get(&mut self, core: &Core) -> Option<&mut redis::Connection> {
        let now = Instant::now();
        if self.conn.is_some() && self.primary.moved(core) {
            self.conn = None;
            self.retry_at = now;
        }
        if now.duration_since(self.used_at) > IDLE_CHECK {
            if let Some(conn) = &mut self.conn {
                if let Err(error) = still_usable(core, conn) {
                    log::debug!("redis {} idle connection is gone: {error}", self.role);
                    self.conn = None;
                    self.retry_at = now;
                }
            }
        }
        self.used_at = now;
        if self.conn.is_none() && now >= self.retry_at {
            match connect(core, self.extra_read) {
                Ok((conn, primary)) => {
                    self.primary = primary;
                    if self.down_logged {
                        log::info!("redis {} reconnected", self.role);
                    }
                    self.conn = Some(conn);
                    self.backoff.reset();
                    self.down_logged = false;
                }
                Err(error) => {
                    if !self.down_logged {
                        log::warn!("redis {} cannot connect: {error}", self.role);
                        self.down_logged = true;
                    }
                    self.retry_at = Instant::now() + self.backoff.step();
                }
            }
        }
        self.conn.as_mut()
    }

    /// The connection failed: drop it; the next request tries a new one at once.
    pub(super) fn lost(&mut self, core: &Core, error: &redis::RedisError) {
        match error.kind() {
            // A Redis Cluster moving the stream's slot: routine, and followed at once.
            redis::ErrorKind::Moved | redis::ErrorKind::Ask => {
                log::info!("redis {} leaves a node: {error}", self.role);
            }
            _ => log::warn!("redis {} lost its connection: {error}", self.role),
        }
        learn(core, error);
        self.conn = None;
        self.down_logged = true;
        self.retry_at = Instant::now();
    }
}

/// Checks an idle connection: a `PING`, or with Sentinel a `ROLE`, so a connection to a
/// primary that was demoted (a failover that left it running) is dropped and the next one
/// goes to the new primary.
fn still_usable(core: &Core, conn: &mut redis::Connection) -> redis::RedisResult<()> {
    match &core.target {
        Target::Direct(_) | Target::Cluster(_) => redis::cmd("PING").query::<Value>(conn).map(drop),
        Target::Sentinel(_) => match super::sentinel::is_primary(conn)? {
            true => Ok(()),
            false => Err(redis::RedisError::from((
                redis::ErrorKind::ReadOnly,
                "no longer the primary",
            ))),
        },
    }
}

/// Lets a log line through at most once per `LOG_EVERY`, counting the ones held back: a
/// misconfigured stream or a misbehaving writer must not flood the log at event rate
/// (the metrics count every occurrence).
pub(super) struct Throttle {
    next: Option<Instant>,
    held: u64,
}

/// Shortest time between two lines of one kind.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl Throttle {
    /// A throttle that lets the first line through.
    pub(super) const fn new() -> Self {
        Throttle {
            next: None,
            held: 0,
        }
    }

    /// `Some(lines held back since the last one)` when a line may go out now.
    pub(super) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.next.is_some_and(|next| now < next) {
            self.held += 1;
            return None;
        }
        self.next = Some(now + LOG_EVERY);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10, item 16: nodes that lost Redis together retry at spread-out times, within
    /// the bounds, and a seed replays its waits.
    #[test]
    fn backoff_waits_are_jittered_within_bounds() {
        const NODES: u64 = 200;
        const STEPS: usize = 12;
        let mut nodes: Vec<Backoff> = (0..NODES)
            .map(|n| Backoff::new(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        // When each node makes its attempt number `step`, as offsets from the failure.
        let mut at = vec![Duration::ZERO; nodes.len()];
        for step in 0..STEPS {
            for (node, at) in nodes.iter_mut().zip(&mut at) {
                let wait = node.step();
                assert!((BACKOFF_MIN..=BACKOFF_MAX).contains(&wait), "{wait:?}");
                *at += wait;
            }
            let mut sorted = at.clone();
            sorted.sort();
            sorted.dedup();
            assert!(
                sorted.len() as u64 > NODES * 9 / 10,
                "attempt {step}: only {} distinct instants for {NODES} nodes",
                sorted.len()
            );
            let spread = sorted[sorted.len() - 1] - sorted[0];
            assert!(
                spread >= BACKOFF_MIN,
                "attempt {step}: every node retries within {spread:?}"
            );
        }
        // Past the first few attempts the waits reach the cap, but stay spread over it.
        let late: Vec<Duration> = nodes.iter_mut().map(Backoff::step).collect();
        assert!(late.iter().any(|w| *w > BACKOFF_MAX / 2));
        assert!(late.iter().any(|w| *w < BACKOFF_MAX / 2));
        // A reset starts over near the minimum.
        for node in &mut nodes {
            node.reset();
            assert!(node.step() <= BACKOFF_MIN * 3);
        }
        let replay = |seed| {
            let mut backoff = Backoff::new(seed);
            (0..STEPS).map(|_| backoff.step()).collect::<Vec<_>>()
        };
        assert_eq!(replay(7), replay(7));
        assert_ne!(replay(7), replay(8));
        assert_eq!(replay(0).len(), STEPS, "a zero seed still draws");
    }
}
