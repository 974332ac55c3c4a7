//! The Redis Streams bus: every node appends to one stream and reads it back, so event
//! ids (stream entry ids) and their order are the same on every node.
//!
//! Three threads per node, each with its own connection, so the event loops never wait on
//! Redis:
//! - the writer takes publishes from a bounded queue and sends each batch as one pipeline
//!   of `XADD <stream> MAXLEN ~ <n> * ...`; every publisher is answered with its entry id,
//!   or refused, only once Redis replied;
//! - the reader runs a blocking `XREAD` after the last id it saw, encodes each entry's
//!   frame once and hands it to every loop in stream order. After losing Redis it
//!   reconnects with capped, jittered backoff and continues after that id, so nothing that reached
//!   the stream is skipped;
//! - the backfiller answers resumes older than a loop's rings with `XRANGE`.
//!
//! Entry format, for herald and for any application that appends directly:
//! `topic` (one name or several separated by `,`; the field may repeat), `data` (UTF-8),
//! optional `event` (the SSE event name) and `retry` (milliseconds). Other fields are
//! ignored. An entry that fails the checks a publish gets is skipped by every node alike.
//!
//! A stream id `<ms>-<n>` (two 64-bit numbers) maps to the loops' 128-bit sequence number
//! `ms << 64 | n`: exactly, both ways, and in order, so every id Redis accepts (an
//! application's explicit id in microseconds, a sequence near 2^64) is delivered like any
//! other, and so is everything after it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use redis::Value;

use super::fair::{FairQueue, Refused};
use super::{
    Backfill, BackfillRequest, Bus, BusStats, Completion, Fanout, Outgoing, Published, Resume,
    Submitted, Ticket,
};
use crate::history::ring::Seq;
use crate::publish::{self, PublishLimits};
use crate::sse::{encode_event, encode_id, EventFields};
use crate::{Event, EventId, PublishError};

/// Publishes waiting for the writer. Past this a publish gets 503 at once: Redis is
/// slower than the publishers, and queueing more would only add latency and memory.
const WRITE_QUEUE_MAX: usize = 4_096;
/// Event bytes waiting for the writer, for the same reason: 4,096 publishes of the largest
/// size would otherwise hold gigabytes while Redis is slow.
const WRITE_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Event bytes sent in one pipeline (at least one publish always goes).
const WRITE_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// `XADD`s sent in one pipeline: one round trip for a burst, bounded reply memory.
const WRITE_BATCH_MAX: usize = 256;
/// Resumes waiting for the backfiller; past this a resume gets 503 and retries.
const BACKFILL_QUEUE_MAX: usize = 1_024;
/// Resumes one client address may have waiting for the backfiller; past this its further
/// resumes get 503 and retry. The backfiller serves addresses in turn, so this only bounds
/// how much of the queue one address can take (a NAT or a browser's reconnect burst stays
/// well below it; a script sending resumes in a loop does not).
const BACKFILL_QUEUED_PER_CLIENT_MAX: usize = 16;
/// Stream entries one backfill reads, matching or not (eight `XRANGE` pages, a few ms of
/// Redis time). A resume that needs more gets what was found, its last id moved to the last
/// entry read, and a short `retry:`; it comes back for the rest in its turn. Without this a
/// resume from far back on a quiet topic held the single backfiller for the whole stream.
const BACKFILL_SCAN_MAX: usize = 8 * READ_COUNT_MAX;
const _: () = assert!(BACKFILL_QUEUED_PER_CLIENT_MAX <= BACKFILL_QUEUE_MAX);
/// Entries one `XREAD` or `XRANGE` returns, bounding the reply held in memory.
const READ_COUNT_MAX: usize = 512;
/// How long one `XREAD` blocks: also how soon the reader notices a shutdown.
const READ_BLOCK: Duration = Duration::from_millis(1_000);
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
/// How long a library `Handle::publish` waits for Redis before giving up with
/// `Unavailable` (the writer's own timeouts answer well before this).
const HANDLE_WAIT: Duration = Duration::from_millis(10_000);
/// The sequence number of stream id `ms-n`. Every id has one: a `Seq` is two ids' halves.
pub(crate) fn pack(ms: u64, n: u64) -> Seq {
    Seq::from(ms) << 64 | Seq::from(n)
}

/// The stream id of a sequence number.
pub(crate) fn format_id(seq: Seq) -> String {
    format!("{}-{}", seq >> 64, seq & Seq::from(u64::MAX))
}

/// Parses a full stream id `ms-n`.
pub(crate) fn parse_id(text: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(text).ok()?;
    let (ms, n) = text.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(n) {
        return None;
    }
    Some((ms.parse().ok()?, n.parse().ok()?))
}

/// Locks `mutex`; a panic while it was held cannot leave a plain value half-written.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the bus's threads share.
struct Core {
    client: redis::Client,
    stream: String,
    maxlen: usize,
    limits: PublishLimits,
    data_bytes_max: usize,
    fanout: Fanout,
    closed: AtomicBool,
    /// The stream's last id when the reader first connected (`None`: not yet). A lock, not
    /// an atomic: there is no stable 128-bit atomic, and it is taken once per resume.
    floor: Mutex<Option<Seq>>,
    delivered: AtomicU64,
    connected: AtomicBool,
    reconnects: AtomicU64,
    skipped: AtomicU64,
    backfills: AtomicU64,
    /// Entries read by backfills.
    backfill_scanned: AtomicU64,
    holes: AtomicU64,
    /// Event bytes in the writer's queue.
    queued_bytes: AtomicUsize,
}

/// Where a publish's answer goes.
enum Reply {
    /// A connection on a loop.
    Loop(Ticket),
    /// A thread blocked in `Handle::publish`.
    Wait(Sender<Result<EventId, PublishError>>),
}

struct WriteJob {
    topics: Vec<Box<str>>,
    name: Option<String>,
    data: String,
    retry_ms: Option<u32>,
    reply: Reply,
}

struct BackfillJob {
    request: BackfillRequest,
    ticket: Ticket,
}

/// A bus over one Redis Stream.
pub(crate) struct RedisBus {
    core: Arc<Core>,
    writes: Sender<WriteJob>,
    backfills: Arc<BackfillQueue>,
}

/// Resumes waiting for the backfiller, served one client address at a time.
struct BackfillQueue {
    jobs: Mutex<FairQueue<IpAddr, BackfillJob>>,
    /// Signalled when a job is queued.
    ready: Condvar,
}

/// What the Redis bus needs from the configuration.
pub(crate) struct RedisSettings {
    pub url: String,
    pub stream: String,
    pub maxlen: usize,
    pub limits: PublishLimits,
    pub data_bytes_max: usize,
}

impl RedisBus {
    /// Starts the writer, reader and backfiller threads. Redis need not be up: the
    /// threads keep trying, and publishes are refused until it is.
    pub(crate) fn start(fanout: Fanout, settings: RedisSettings) -> std::io::Result<RedisBus> {
        let shown = crate::config::redact_url(&settings.url);
        let client = redis::Client::open(settings.url.as_str()).map_err(|error| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{shown}: {}",
                    error.to_string().replace(&settings.url, &shown)
                ),
            )
        })?;
        log::info!("redis bus on {shown}, stream {:?}", settings.stream);
        let core = Arc::new(Core {
            client,
            stream: settings.stream,
            maxlen: settings.maxlen,
            limits: settings.limits,
            data_bytes_max: settings.data_bytes_max,
            fanout,
            closed: AtomicBool::new(false),
            floor: Mutex::new(None),
            delivered: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            backfills: AtomicU64::new(0),
            backfill_scanned: AtomicU64::new(0),
            holes: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
        });
        let (writes, write_jobs) = crossbeam_channel::bounded(WRITE_QUEUE_MAX);
        let backfills = Arc::new(BackfillQueue {
            jobs: Mutex::new(FairQueue::new(
                BACKFILL_QUEUE_MAX,
                BACKFILL_QUEUED_PER_CLIENT_MAX,
            )),
            ready: Condvar::new(),
        });
        let backfill_jobs = backfills.clone();
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(body)
                .map(drop)
        };
        let c = core.clone();
        spawn(
            "herald-redis-writer",
            Box::new(move || run_writer(&c, &write_jobs)),
        )?;
        let c = core.clone();
        spawn("herald-redis-reader", Box::new(move || run_reader(&c)))?;
        let c = core.clone();
        spawn(
            "herald-redis-backfill",
            Box::new(move || run_backfiller(&c, &backfill_jobs)),
        )?;
        Ok(RedisBus {
            core,
            writes,
            backfills,
        })
    }
}

impl Drop for RedisBus {
    /// The threads notice within `READ_BLOCK` and exit; nobody waits for them.
    fn drop(&mut self) {
        self.core.closed.store(true, Ordering::Release);
    }
}

impl Bus for RedisBus {
    fn publish(&self, event: Outgoing<'_>, ticket: Option<Ticket>) -> Submitted {
        if self.core.closed.load(Ordering::Acquire) {
            return Submitted::Done(Err(PublishError::ShuttingDown));
        }
        let (reply, wait) = match ticket {
            Some(ticket) => (Reply::Loop(ticket), None),
            None => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                (Reply::Wait(tx), Some(rx))
            }
        };
        let size = event.data.len();
        let queued = &self.core.queued_bytes;
        if queued.fetch_add(size, Ordering::AcqRel) + size > WRITE_QUEUE_BYTES_MAX {
            queued.fetch_sub(size, Ordering::AcqRel);
            return Submitted::Done(Err(PublishError::Busy));
        }
        let job = WriteJob {
            topics: event.topics,
            name: event.name.map(str::to_owned),
            data: event.data.to_owned(),
            retry_ms: event.retry_ms,
            reply,
        };
        match self.writes.try_send(job) {
            Ok(()) => {}
            Err(error) => {
                queued.fetch_sub(size, Ordering::AcqRel);
                return Submitted::Done(Err(match error {
                    TrySendError::Full(_) => PublishError::Busy,
                    TrySendError::Disconnected(_) => PublishError::ShuttingDown,
                }));
            }
        }
        match wait {
            None => Submitted::Pending,
            Some(rx) => Submitted::Done(
                rx.recv_timeout(HANDLE_WAIT)
                    .unwrap_or(Err(PublishError::Unavailable)),
            ),
        }
    }

    /// Any well-formed stream id: one newer than this node has read yet is simply
    /// waited for, since another node may have published it a moment ago.
    fn resume_point(&self, last_event_id: &str) -> Resume {
        match parse_id(last_event_id.as_bytes()).map(|(ms, n)| pack(ms, n)) {
            Some(seq) => Resume::After(seq),
            None => Resume::Unknown,
        }
    }

    fn id_of(&self, seq: Seq) -> String {
        format_id(seq)
    }

    fn reach_floor(&self) -> Option<Seq> {
        *lock(&self.core.floor)
    }

    fn can_backfill(&self) -> bool {
        true
    }

    fn backfill(&self, request: BackfillRequest, ticket: Ticket) -> Result<(), PublishError> {
        if self.core.closed.load(Ordering::Acquire) {
            return Err(PublishError::ShuttingDown);
        }
        let client = request.client;
        let queued = lock(&self.backfills.jobs).push(client, BackfillJob { request, ticket });
        match queued {
            Ok(()) => {
                self.backfills.ready.notify_one();
                Ok(())
            }
            // Both are 503 with Retry-After: the queue, or this address's share, is full.
            Err((Refused::Full | Refused::ClientFull, _)) => Err(PublishError::Busy),
        }
    }

    fn published(&self) -> u64 {
        self.core.delivered.load(Ordering::Relaxed)
    }

    fn stats(&self) -> BusStats {
        let core = &self.core;
        BusStats {
            connected: Some(core.connected.load(Ordering::Relaxed)),
            reconnects: core.reconnects.load(Ordering::Relaxed),
            skipped: core.skipped.load(Ordering::Relaxed),
            backfills: core.backfills.load(Ordering::Relaxed),
            backfill_scanned: core.backfill_scanned.load(Ordering::Relaxed),
            holes: core.holes.load(Ordering::Relaxed),
        }
    }

    fn close(&self) {
        self.core.closed.store(true, Ordering::Release);
        self.core.fanout.wake_all();
    }
}

/// Opens a connection with the bus's timeouts; `extra_read` is added to the read timeout
/// (the reader's blocking `XREAD`).
fn connect(core: &Core, extra_read: Duration) -> redis::RedisResult<redis::Connection> {
    let conn = core.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
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
pub(crate) struct Backoff {
    /// The previous wait (`BACKOFF_MIN` after a reset).
    last: Duration,
    /// xorshift64 state; never zero.
    rng: u64,
}

impl Backoff {
    /// A backoff drawing from `seed` (any value; zero is replaced).
    pub(crate) fn new(seed: u64) -> Self {
        Backoff {
            last: BACKOFF_MIN,
            rng: seed.max(1),
        }
    }

    /// A backoff seeded from the process's hash keys (random per process and per call), so
    /// every thread of every node draws its own waits.
    fn seeded() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Backoff::new(seed)
    }

    /// The wait to use now, in `[BACKOFF_MIN, BACKOFF_MAX]`.
    pub(crate) fn step(&mut self) -> Duration {
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
    pub(crate) fn reset(&mut self) {
        self.last = BACKOFF_MIN;
    }
}

/// A connection that is reopened on demand, no more often than a capped backoff allows,
/// so requests fail fast while Redis is down.
struct Link {
    role: &'static str,
    conn: Option<redis::Connection>,
    retry_at: Instant,
    backoff: Backoff,
    down_logged: bool,
    /// When the connection was last handed out for a request.
    used_at: Instant,
}

impl Link {
    fn new(role: &'static str) -> Self {
        Link {
            role,
            conn: None,
            retry_at: Instant::now(),
            backoff: Backoff::seeded(),
            down_logged: false,
            used_at: Instant::now(),
        }
    }

    fn get(&mut self, core: &Core) -> Option<&mut redis::Connection> {
        let now = Instant::now();
        if now.duration_since(self.used_at) > IDLE_CHECK {
            if let Some(conn) = &mut self.conn {
                if let Err(error) = redis::cmd("PING").query::<Value>(conn) {
                    log::debug!("redis {} idle connection is gone: {error}", self.role);
                    self.conn = None;
                    self.retry_at = now;
                }
            }
        }
        self.used_at = now;
        if self.conn.is_none() && now >= self.retry_at {
            match connect(core, Duration::ZERO) {
                Ok(conn) => {
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
    fn lost(&mut self, error: &redis::RedisError) {
        log::warn!("redis {} lost its connection: {error}", self.role);
        self.conn = None;
        self.down_logged = true;
        self.retry_at = Instant::now();
    }
}

fn run_writer(core: &Core, jobs: &Receiver<WriteJob>) {
    let mut link = Link::new("writer");
    let mut batch = Vec::with_capacity(WRITE_BATCH_MAX);
    let mut refusals = Throttle::new();
    loop {
        let mut bytes = match jobs.recv_timeout(READ_BLOCK) {
            Ok(job) => {
                let size = job.data.len();
                batch.push(job);
                size
            }
            Err(RecvTimeoutError::Timeout) => {
                if core.closed.load(Ordering::Acquire) {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        while batch.len() < WRITE_BATCH_MAX && bytes < WRITE_BATCH_BYTES_MAX {
            match jobs.try_recv() {
                Ok(job) => {
                    bytes += job.data.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        core.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        let results = match link.get(core) {
            None => vec![Err(PublishError::Unavailable); batch.len()],
            Some(conn) => match xadd_batch(conn, core, &batch, &mut refusals) {
                Ok(results) => results,
                Err(error) => {
                    link.lost(&error);
                    vec![Err(PublishError::Unavailable); batch.len()]
                }
            },
        };
        for (job, result) in batch.drain(..).zip(results) {
            match job.reply {
                Reply::Loop(ticket) => core.fanout.complete(Completion::Published(ticket, result)),
                // The waiter may have given up; nothing to do then.
                Reply::Wait(tx) => drop(tx.try_send(result)),
            }
        }
    }
}

/// Appends a batch in one pipeline. `Err` only when the connection failed (then any of
/// the entries may or may not be stored); a refused entry is an `Err` in its slot.
fn xadd_batch(
    conn: &mut redis::Connection,
    core: &Core,
    batch: &[WriteJob],
    refusals: &mut Throttle,
) -> redis::RedisResult<Vec<Result<EventId, PublishError>>> {
    let mut pipe = redis::pipe();
    for job in batch {
        let cmd = pipe
            .cmd("XADD")
            .arg(&core.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(core.maxlen)
            .arg("*")
            .arg("topic")
            .arg(job.topics.join(","));
        if let Some(name) = &job.name {
            cmd.arg("event").arg(name);
        }
        cmd.arg("data").arg(&job.data);
        if let Some(retry_ms) = job.retry_ms {
            cmd.arg("retry").arg(retry_ms);
        }
    }
    // Replies are read one by one so the first I/O error (a frozen Redis timing out) ends
    // the batch at once; reading on would wait the timeout again for every reply.
    conn.send_packed_command(&pipe.get_packed_pipeline())?;
    let mut replies = Vec::with_capacity(batch.len());
    for _ in 0..batch.len() {
        replies.push(conn.recv_response()?); // A refused entry is Ok(ServerError).
    }
    Ok((0..batch.len())
        .map(|i| match replies.get(i) {
            Some(Value::BulkString(id)) if parse_id(id).is_some() => {
                Ok(EventId(String::from_utf8_lossy(id).into_owned()))
            }
            other => {
                if let Some(held) = refusals.allow() {
                    log::warn!("redis refused an XADD ({held} more not logged): {other:?}");
                }
                Err(PublishError::Unavailable)
            }
        })
        .collect())
}

/// Lets a log line through at most once per `LOG_EVERY`, counting the ones held back: a
/// misconfigured stream or a misbehaving writer must not flood the log at event rate
/// (the metrics count every occurrence).
struct Throttle {
    next: Option<Instant>,
    held: u64,
}

/// Shortest time between two lines of one kind.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl Throttle {
    const fn new() -> Self {
        Throttle {
            next: None,
            held: 0,
        }
    }

    /// `Some(lines held back since the last one)` when a line may go out now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.next.is_some_and(|next| now < next) {
            self.held += 1;
            return None;
        }
        self.next = Some(now + LOG_EVERY);
        Some(std::mem::take(&mut self.held))
    }
}

/// Sleeps up to `total`, in slices, returning early when the bus closes.
fn nap(core: &Core, total: Duration) {
    let until = Instant::now() + total;
    while !core.closed.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

fn run_reader(core: &Core) {
    let mut last: Option<RawId> = None;
    let mut backoff = Backoff::seeded();
    let mut ever_connected = false;
    let mut down_logged = false;
    let mut skips = Throttle::new();
    while !core.closed.load(Ordering::Acquire) {
        // Logs the first failure of an outage, then waits a growing backoff.
        let mut retry_later = |what: &str, error: redis::RedisError| {
            if !down_logged {
                log::warn!("redis reader cannot {what}: {error}");
                down_logged = true;
            }
            nap(core, backoff.step());
        };
        let mut conn = match connect(core, READ_BLOCK) {
            Ok(conn) => conn,
            Err(error) => {
                retry_later("connect", error);
                continue;
            }
        };
        // Reading the stream's end also proves the stream can be read at all (a key of
        // another type fails here). The first time, reading starts after it: older entries
        // are served to resumes by the backfiller, not replayed into the rings.
        match last_entry(&mut conn, &core.stream).map(|id| id.unwrap_or((0, 0))) {
            Ok(id) => {
                if last.is_none() {
                    last = Some(id);
                    let floor = pack(id.0, id.1);
                    *lock(&core.floor) = Some(floor);
                }
                core.connected.store(true, Ordering::Release);
            }
            Err(error) => {
                retry_later("read the stream", error);
                continue;
            }
        }
        // After a disconnection the stream may have moved on past what this node read.
        let mut verify = ever_connected;
        if ever_connected {
            core.reconnects.fetch_add(1, Ordering::Relaxed);
            log::info!("redis reader reconnected");
        }
        ever_connected = true;
        // Backoff resets only once a read worked: a Redis that accepts connections but
        // refuses the read (a key of another type, a missing permission) is not hammered.
        let mut healthy = false;
        while !core.closed.load(Ordering::Acquire) {
            let after = last.unwrap_or((0, 0));
            let batch = xread(&mut conn, core, after).and_then(|entries| {
                // Trimming removes the oldest entries first, so nothing after `after` was
                // lost while `after` itself is still kept. Only a reader that was away, or
                // that reads a full batch (it is behind), can have been overtaken.
                let behind = entries.len() == READ_COUNT_MAX || core.maxlen < READ_COUNT_MAX;
                let lost = match entries.first() {
                    Some(_) if after != (0, 0) && (verify || behind) => {
                        first_entry(&mut conn, &core.stream)?.is_some_and(|first| first > after)
                    }
                    _ => false,
                };
                Ok((entries, lost))
            });
            match batch {
                Ok((entries, lost)) => {
                    if !healthy {
                        healthy = true;
                        backoff.reset();
                        down_logged = false;
                    }
                    if let (true, Some((next, _))) = (lost, entries.first()) {
                        report_hole(core, after, *next);
                    }
                    verify &= entries.is_empty();
                    for (id, fields) in entries {
                        deliver(core, id, &fields, &mut skips);
                        last = Some(id);
                    }
                }
                Err(error) => {
                    if !down_logged {
                        log::warn!("redis reader lost its connection: {error}");
                        down_logged = true;
                    }
                    break;
                }
            }
        }
        core.connected.store(false, Ordering::Release);
        if !healthy {
            nap(core, backoff.step());
        }
    }
}

/// The id of the stream's oldest entry, if it has one.
fn first_entry(conn: &mut redis::Connection, stream: &str) -> redis::RedisResult<Option<RawId>> {
    edge_entry(conn, stream, "XRANGE", ["-", "+"])
}

/// The id of the stream's newest entry, if it has one.
fn last_entry(conn: &mut redis::Connection, stream: &str) -> redis::RedisResult<Option<RawId>> {
    edge_entry(conn, stream, "XREVRANGE", ["+", "-"])
}

/// The first entry `command` (`XRANGE` or `XREVRANGE`) lists over `range`.
fn edge_entry(
    conn: &mut redis::Connection,
    stream: &str,
    command: &str,
    range: [&str; 2],
) -> redis::RedisResult<Option<RawId>> {
    let reply: Value = redis::cmd(command)
        .arg(stream)
        .arg(&range[..])
        .arg("COUNT")
        .arg(1)
        .query(conn)?;
    Ok(entries(reply).first().map(|(id, _)| *id))
}

/// The stream dropped entries after `last` before this node read them (it was cut off,
/// or slower than the publishers for longer than the stream keeps entries). They cannot
/// be delivered; instead the loops' knowledge now starts before `next`, and every stream
/// is told to resume, so each client learns of the gap from the backfill (which finds
/// the stream trimmed after its id) rather than missing events silently.
fn report_hole(core: &Core, last: RawId, next: RawId) {
    let holes = core.holes.fetch_add(1, Ordering::Relaxed) + 1;
    // A reader that stays behind reports a hole per batch: log the first and then every
    // hundredth, the metric counts them all.
    if holes % 100 == 1 {
        log::error!(
            "the stream dropped entries after {}-{} before this node read them (next kept: \
             {}-{}; {holes} such holes so far); streams resume and get the gap event. Raise \
             --redis-maxlen.",
            last.0,
            last.1,
            next.0,
            next.1
        );
    }
    let floor = pack(next.0, next.1).saturating_sub(1);
    if let Some(known) = lock(&core.floor).as_mut() {
        *known = (*known).max(floor);
    }
    let marker = Published {
        seq: floor,
        topics: Box::new([]),
        frame: bytes::Bytes::new(),
    };
    while !core.fanout.has_room(0) {
        if core.closed.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    core.fanout.deliver(&Arc::new(marker));
}

/// One blocking `XREAD` after `after`.
fn xread(
    conn: &mut redis::Connection,
    core: &Core,
    after: RawId,
) -> redis::RedisResult<Vec<(RawId, Vec<Value>)>> {
    let reply: Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(READ_COUNT_MAX)
        .arg("BLOCK")
        .arg(READ_BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(&core.stream)
        .arg(format!("{}-{}", after.0, after.1))
        .query(conn)?;
    // RESP2: [[stream, [entry, ...]]], or nil when the block timed out. Anything else is
    // an error, so the reader backs off instead of spinning on entries it cannot see.
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        other => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::TypeError,
                "unexpected XREAD reply",
                format!("{other:?}"),
            )))
        }
    };
    let mut out = Vec::new();
    for stream in streams {
        if let Value::Array(mut pair) = stream {
            if pair.len() == 2 {
                if let Some(list) = pair.pop() {
                    out.extend(entries(list));
                }
            }
        }
    }
    Ok(out)
}

/// A stream entry id, as `(ms, n)`.
type RawId = (u64, u64);

/// Decodes a list of stream entries `[[id, [field, value, ...]], ...]` (in id order);
/// items that are not entries are dropped.
fn entries(reply: Value) -> Vec<(RawId, Vec<Value>)> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            continue;
        };
        if pair.len() != 2 {
            continue;
        }
        let fields = match pair.pop() {
            Some(Value::Array(fields)) => fields,
            _ => Vec::new(),
        };
        if let Some(id) = pair.pop().as_ref().and_then(text).and_then(parse_id) {
            out.push((id, fields));
        }
    }
    out
}

fn text(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// An entry's fields as an event, checked like a publish body.
pub(crate) fn decode(
    fields: &[Value],
    data_bytes_max: usize,
    topics_max: usize,
) -> Result<Event, &'static str> {
    let mut event = Event {
        topics: Vec::new(),
        name: None,
        data: String::new(),
        retry_ms: None,
    };
    let (mut has_data, mut has_retry) = (false, false);
    for pair in fields.chunks(2) {
        let [field, value] = pair else {
            return Err("odd number of field values");
        };
        let (Some(field), Some(value)) = (text(field), text(value)) else {
            return Err("a field or value is not a string");
        };
        let value = std::str::from_utf8(value).map_err(|_| "a value is not UTF-8")?;
        match field {
            b"topic" => {
                // Distinct names only, and no more than a publish may name: a long
                // repetitive value must not become millions of strings.
                for name in value.split(',') {
                    if event.topics.iter().any(|t| t == name) {
                        continue;
                    }
                    if event.topics.len() == topics_max {
                        return Err(PublishError::TooManyTopics.reason());
                    }
                    event.topics.push(name.to_owned());
                }
            }
            b"data" if has_data => return Err("data given twice"),
            b"data" => {
                if value.len() > data_bytes_max {
                    return Err("data larger than max_publish_bytes");
                }
                event.data = value.to_owned();
                has_data = true;
            }
            b"event" if event.name.is_some() => return Err("event given twice"),
            b"event" => event.name = Some(value.to_owned()),
            b"retry" if has_retry => return Err("retry given twice"),
            b"retry" => {
                event.retry_ms =
                    Some(publish::parse_retry(value).ok_or(PublishError::InvalidRetry.reason())?);
                has_retry = true;
            }
            _ => {} // Applications may keep their own fields next to ours.
        }
    }
    Ok(event)
}

/// The entry as a frame for the loops, or why every node skips it.
/// `wanted` sees the topics before the frame is encoded: `None` when it declines.
fn to_published(
    core: &Core,
    id: RawId,
    fields: &[Value],
    wanted: impl Fn(&[Box<str>]) -> bool,
) -> Result<Option<Published>, &'static str> {
    let seq = pack(id.0, id.1);
    let event = decode(fields, core.data_bytes_max, core.limits.topics_max)?;
    let outgoing = publish::prepare(&event, &core.limits).map_err(PublishError::reason)?;
    if !wanted(&outgoing.topics) {
        return Ok(None);
    }
    let id = format_id(seq);
    let frame = encode_event(&EventFields {
        id: &id,
        name: outgoing.name,
        data: outgoing.data,
        retry_ms: outgoing.retry_ms,
    });
    Ok(Some(Published {
        seq,
        topics: outgoing.topics.into_boxed_slice(),
        frame,
    }))
}

/// Hands one entry to every loop, waiting (not dropping) while their inboxes are full:
/// the stream keeps the entries, so the reader can be the one that waits.
fn deliver(core: &Core, id: RawId, fields: &[Value], skips: &mut Throttle) {
    let published = match to_published(core, id, fields, |_| true) {
        Ok(Some(published)) => published,
        Ok(None) => return,
        Err(reason) => {
            core.skipped.fetch_add(1, Ordering::Relaxed);
            if let Some(held) = skips.allow() {
                log::warn!(
                    "skipping stream entry {}-{} ({held} more skipped without a line): {reason}",
                    id.0,
                    id.1
                );
            }
            return;
        }
    };
    while !core.fanout.has_room(published.frame.len()) {
        if core.closed.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    core.fanout.deliver(&Arc::new(published));
    core.delivered.fetch_add(1, Ordering::Relaxed);
}

fn run_backfiller(core: &Core, queue: &BackfillQueue) {
    let mut link = Link::new("backfiller");
    loop {
        let job = {
            let mut jobs = lock(&queue.jobs);
            loop {
                if core.closed.load(Ordering::Acquire) {
                    return;
                }
                if let Some((_, job)) = jobs.pop() {
                    break job;
                }
                jobs = queue
                    .ready
                    .wait_timeout(jobs, READ_BLOCK)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        let result = match link.get(core) {
            None => Err(PublishError::Unavailable),
            Some(conn) => match backfill(conn, core, &job.request) {
                Ok(backfill) => {
                    core.backfills.fetch_add(1, Ordering::Relaxed);
                    Ok(backfill)
                }
                Err(error) => {
                    link.lost(&error);
                    Err(PublishError::Unavailable)
                }
            },
        };
        core.fanout
            .complete(Completion::Backfilled(job.ticket, result));
    }
}

/// The events of `request.topics` in `(after, until]`, page by page, up to the byte budget
/// and `BACKFILL_SCAN_MAX` entries read; with `gap` when the stream already trimmed events
/// after `after`. An `after` older than the stream's first entry is answered at once with
/// the gap and nothing from the stream (the client refetches its state; the rings give it
/// what follows), so an id like `0-1` costs one `XRANGE` of one entry, not the whole stream.
fn backfill(
    conn: &mut redis::Connection,
    core: &Core,
    request: &BackfillRequest,
) -> redis::RedisResult<Backfill> {
    let mut out = Backfill {
        frames: Vec::new(),
        gap: false,
        through: request.after,
        complete: false,
    };
    if first_entry(conn, &core.stream)?.is_some_and(|(ms, n)| pack(ms, n) > request.after) {
        out.gap = true;
        out.through = request.until;
        out.complete = true;
        return Ok(out);
    }
    // Whether entries after the id were trimmed is asked after the scan: trimming only moves
    // forward, so a trim racing the scan is still seen (asked before, it could be missed).
    // Pages continue after the last id seen.
    let mut from = format_id(request.after);
    let mut scanned = 0;
    let wanted = |topics: &[Box<str>]| {
        topics
            .iter()
            .any(|topic| request.topics.iter().any(|t| **t == **topic))
    };
    loop {
        let count = READ_COUNT_MAX.min(BACKFILL_SCAN_MAX - scanned);
        let reply: Value = redis::cmd("XRANGE")
            .arg(&core.stream)
            .arg(format!("({from}"))
            .arg(format_id(request.until))
            .arg("COUNT")
            .arg(count)
            .query(conn)?;
        let page = entries(reply);
        let full_page = page.len() == count;
        scanned += page.len();
        core.backfill_scanned
            .fetch_add(page.len() as u64, Ordering::Relaxed);
        for (id, fields) in page {
            from = format!("{}-{}", id.0, id.1);
            if let Ok(Some(published)) = to_published(core, id, &fields, wanted) {
                if out.frames.len() + published.frame.len() > request.bytes_max {
                    return cut_short(conn, core, request, out);
                }
                out.frames.extend_from_slice(&published.frame);
            }
            out.through = pack(id.0, id.1);
        }
        if !full_page {
            out.through = request.until;
            out.complete = true;
            out.gap = trimmed_after(conn, &core.stream, request.after)?;
            return Ok(out);
        }
        if scanned >= BACKFILL_SCAN_MAX {
            return cut_short(conn, core, request, out);
        }
    }
}

/// A backfill that ran out of budget: what it found, then an `id:` for the last entry it
/// covered, so the client (told to come back at once) resumes after that entry, not after
/// the last event it happened to be sent.
fn cut_short(
    conn: &mut redis::Connection,
    core: &Core,
    request: &BackfillRequest,
    mut out: Backfill,
) -> redis::RedisResult<Backfill> {
    out.gap = trimmed_after(conn, &core.stream, request.after)?;
    out.frames
        .extend_from_slice(&encode_id(&format_id(out.through)));
    Ok(out)
}

/// Whether the stream may have dropped an entry newer than `after`: it no longer holds
/// `after` itself (trimming removes the oldest entries first, so whatever followed `after`
/// before the first entry kept is gone too), or it deleted a newer one (`XDEL`, which
/// Redis 7 reports as `max-deleted-entry-id`). When exactly `after` was the last entry
/// trimmed this reports a gap that was not needed; it never misses one.
fn trimmed_after(
    conn: &mut redis::Connection,
    stream: &str,
    after: Seq,
) -> redis::RedisResult<bool> {
    let reply = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query::<Value>(conn)
    {
        Ok(reply) => reply,
        // No such stream: whatever it held is gone.
        Err(error) if error.kind() == redis::ErrorKind::ResponseError => return Ok(after > 0),
        Err(error) => return Err(error),
    };
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Map(pairs) => pairs,
        Value::Array(flat) => {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut items = flat.into_iter();
            while let (Some(key), Some(value)) = (items.next(), items.next()) {
                pairs.push((key, value));
            }
            pairs
        }
        _ => return Ok(after > 0),
    };
    let field = |name: &[u8]| {
        pairs
            .iter()
            .find(|(key, _)| text(key) == Some(name))
            .map(|(_, value)| value)
    };
    let seq_of = |value: &Value| text(value).and_then(parse_id).map(|(ms, n)| pack(ms, n));
    let deleted = field(b"max-deleted-entry-id").and_then(seq_of).unwrap_or(0);
    let first = match field(b"first-entry") {
        Some(Value::Array(entry)) => entry.first().and_then(seq_of),
        _ => None,
    };
    let oldest_gone = match first {
        Some(first) => first > after,
        // Empty: everything up to the last id ever generated is gone.
        None => field(b"last-generated-id").and_then(seq_of).unwrap_or(0) > after,
    };
    Ok(oldest_gone || deleted > after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn ids_pack_in_order_and_round_trip() {
        let a = pack(1_764_230_400_123, 0);
        let b = pack(1_764_230_400_123, 1);
        let c = pack(1_764_230_400_124, 0);
        assert!(a < b && b < c);
        assert_eq!(format_id(b), "1764230400123-1");
        assert_eq!(parse_id(b"1764230400123-1"), Some((1_764_230_400_123, 1)));
        // Every id Redis accepts maps, in order, and back to itself.
        let ids = [
            (0, 1),
            (1_764_230_400_123, u64::MAX),
            (1_764_230_400_124, 0),
            (1_733_000_000_000_000, 0),
            (1_733_000_000_000_000, u64::MAX - 1),
            (u64::MAX, u64::MAX),
        ];
        for pair in ids.windows(2) {
            assert!(pack(pair[0].0, pair[0].1) < pack(pair[1].0, pair[1].1));
        }
        for (ms, n) in ids {
            let text = format_id(pack(ms, n));
            assert_eq!(parse_id(text.as_bytes()), Some((ms, n)), "{text}");
        }
        assert_eq!(
            format_id(Seq::MAX),
            "18446744073709551615-18446744073709551615"
        );
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "1-2-3",
            "a-1",
            "1-+1",
            "99999999999999999999999-0",
        ] {
            assert_eq!(parse_id(bad.as_bytes()), None, "{bad:?}");
        }
    }

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

    #[test]
    fn entries_decode_like_publishes() {
        let fields = [
            bulk("topic"),
            bulk("a,b"),
            bulk("topic"),
            bulk("c"),
            bulk("event"),
            bulk("note"),
            bulk("data"),
            bulk("x\ny"),
            bulk("retry"),
            bulk("250"),
            bulk("app_field"),
            bulk("ignored"),
        ];
        let event = decode(&fields, 100, 4).unwrap();
        assert_eq!(event.topics, ["a", "b", "c"]);
        assert_eq!(event.name.as_deref(), Some("note"));
        assert_eq!(event.data, "x\ny");
        assert_eq!(event.retry_ms, Some(250));

        let twice = [
            bulk("topic"),
            bulk("a"),
            bulk("data"),
            bulk("1"),
            bulk("data"),
            bulk("2"),
        ];
        assert_eq!(decode(&twice, 100, 4).unwrap_err(), "data given twice");
        let odd = [bulk("topic"), bulk("a"), bulk("data")];
        assert!(decode(&odd, 100, 4).is_err());
        let big = [bulk("topic"), bulk("a"), bulk("data"), bulk("0123456789")];
        assert!(decode(&big, 5, 4).is_err());
        let binary = [
            bulk("topic"),
            bulk("a"),
            bulk("data"),
            Value::BulkString(vec![0xff]),
        ];
        assert!(decode(&binary, 100, 4).is_err());
        let retry = [bulk("topic"), bulk("a"), bulk("retry"), bulk("soon")];
        assert!(decode(&retry, 100, 4).is_err());
        let many = "a,".repeat(100_000) + "b";
        let repeated = [bulk("topic"), bulk(&many), bulk("data"), bulk("x")];
        assert_eq!(decode(&repeated, 100, 4).unwrap().topics, ["a", "b"]);
        let wide = [bulk("topic"), bulk("a,b,c,d,e"), bulk("data"), bulk("x")];
        assert_eq!(
            decode(&wide, 100, 4).unwrap_err(),
            PublishError::TooManyTopics.reason()
        );
    }

    #[test]
    fn entry_lists_keep_order_and_drop_bad_ids() {
        let entry =
            |id: &str| Value::Array(vec![bulk(id), Value::Array(vec![bulk("topic"), bulk("a")])]);
        let reply = Value::Array(vec![
            entry("5-0"),
            entry("nonsense"),
            entry("5-1"),
            entry("9999999999999999-0"),
        ]);
        let ids: Vec<RawId> = entries(reply).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [(5, 0), (5, 1), (9_999_999_999_999_999, 0)]);
        assert!(entries(Value::Nil).is_empty());
    }
}
