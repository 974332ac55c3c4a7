//! The Redis Streams bus: every node appends to one stream and reads it back, so event
//! ids (stream entry ids) and their order are the same on every node.
//!
//! Three threads per node, each with its own connection, so the event loops never wait on
//! Redis:
//! - the writer (`writer.rs`) takes publishes from a bounded queue and sends each batch as
//!   one pipeline of `XADD <stream> MAXLEN ~ <n> * ...` (a batch publish's inside
//!   `MULTI`/`EXEC`); every publisher is answered with its entry ids, or refused, only
//!   once Redis replied;
//! - the reader (`reader.rs`) runs a blocking `XREAD` after the last id it saw, encodes
//!   each entry's frame once and hands it to every loop in stream order. After losing
//!   Redis it reconnects with capped, jittered backoff and continues after that id, so
//!   nothing that reached the stream is skipped;
//! - the backfiller (`backfill.rs`) answers resumes older than a loop's rings with
//!   `XRANGE`, serving client addresses in turn from a `FairQueue` (`fair.rs`).
//!
//! A fourth thread (`presence.rs`) shares this node's subscriber counts with the other
//! nodes through a hash per node with a time-to-live, and sums theirs. With Sentinel a
//! fifth (`link.rs` `run_watcher`) asks the sentinels for the primary each second, so the
//! others leave a node they no longer name.
//!
//! `entry.rs` is the entry codec all three share; `link.rs` is where connections go (one
//! Redis, plainly or over TLS, the primary through `sentinel.rs`, or the Redis Cluster node
//! that owns the stream's hash slot through `cluster.rs`), the reconnecting
//! connection, its backoff and the log throttle. This file holds what the threads share
//! ([`Core`]), the [`Bus`] face the loops call, which only queues work for the threads, and
//! the reading of the TLS files at start.
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

mod backfill;
pub(crate) mod cluster;
mod entry;
mod fair;
mod link;
mod presence;
mod reader;
mod sentinel;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

use self::backfill::{run_backfiller, BackfillJob, BackfillQueue};
use self::cluster::ClusterNodes;
use self::entry::{format_id, pack, parse_id};
use self::link::{Endpoint, Target};
use self::reader::run_reader;
use self::sentinel::Sentinels;
use self::writer::{
    run_writer, Reply, WriteEvent, WriteJob, WRITE_QUEUE_BYTES_MAX, WRITE_QUEUE_MAX,
};
use super::{
    BackfillError, BackfillRequest, Bus, BusHealth, BusStats, Fanout, Outgoing, Resume, Submitted,
    Ticket,
};
use crate::event::PublishError;
use crate::history::ring::Seq;
use crate::publish::PublishLimits;

/// Entries one `XREAD` or `XRANGE` returns, bounding the reply held in memory.
const READ_COUNT_MAX: usize = 512;
/// How long one `XREAD` blocks: also how soon the reader notices a shutdown.
const READ_BLOCK: Duration = Duration::from_millis(1_000);
/// How long a library `Handle::publish` waits for Redis, besides `redis_wait_timeout`,
/// before giving up with `Unavailable` (the writer's own timeouts answer well before
/// this).
const HANDLE_WAIT: Duration = Duration::from_millis(10_000);

/// Locks `mutex`; a panic while it was held cannot leave a plain value half-written.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the bus's threads share.
struct Core {
    /// Where connections go.
    target: Target,
    stream: String,
    /// What the presence keys start with: the stream's name, or in a Redis Cluster a name
    /// in the stream's hash slot (`cluster::presence_prefix`).
    key_prefix: String,
    maxlen: usize,
    limits: PublishLimits,
    data_bytes_max: usize,
    fanout: Fanout,
    closed: AtomicBool,
    /// The stream's last id when the reader first connected (`None`: not yet). A lock, not
    /// an atomic: there is no stable 128-bit atomic, and it is taken once per resume.
    floor: Mutex<Option<Seq>>,
    delivered: AtomicU64,
    /// The reader holds a connection that reads the stream.
    connected: AtomicBool,
    /// The writer's last use of its connection (a batch, or the `PING` it sends when idle)
    /// worked.
    writer_connected: AtomicBool,
    reconnects: AtomicU64,
    skipped: AtomicU64,
    backfills: AtomicU64,
    /// Entries read by backfills.
    backfill_scanned: AtomicU64,
    holes: AtomicU64,
    /// Event bytes in the writer's queue.
    queued_bytes: AtomicUsize,
    /// The primary the sentinels named when the watcher last asked (with Sentinel).
    named_primary: Mutex<Option<self::sentinel::NodeAddr>>,
    /// Replicas `WAIT` must confirm before a publish is answered; 0: no `WAIT`.
    wait_replicas: usize,
    /// How long that `WAIT` may take.
    wait_timeout: Duration,
}

/// A bus over one Redis Stream.
pub(crate) struct RedisBus {
    core: Arc<Core>,
    writes: Sender<WriteJob>,
    backfills: Arc<BackfillQueue>,
}

/// What the Redis bus needs from the configuration.
pub(crate) struct RedisSettings {
    /// `redis_url`.
    pub url: String,
    /// `redis_stream`: the stream key every node reads and writes.
    pub stream: String,
    /// Approximate `MAXLEN` of the stream (the shared history).
    pub maxlen: usize,
    /// What every entry read from the stream is checked against.
    pub limits: PublishLimits,
    /// `max_publish_bytes`: the largest data an entry may carry.
    pub data_bytes_max: usize,
    /// This node's subscriber counts, written to Redis, and where the other nodes' sums go.
    pub presence: Arc<crate::presence::Presence>,
    /// `redis_tls_ca_file`, `redis_tls_cert_file`, `redis_tls_key_file`.
    pub tls_files: TlsFiles,
    /// `redis_sentinels`: when not empty, the primary is found through them.
    pub sentinels: Vec<String>,
    /// `redis_master_name`.
    pub master_name: String,
    /// `redis_cluster_nodes`: when not empty, Redis is a Redis Cluster and these are its
    /// seed nodes.
    pub cluster_nodes: Vec<String>,
    /// `redis_wait_replicas`.
    pub wait_replicas: usize,
    /// `redis_wait_timeout`.
    pub wait_timeout: Duration,
}

/// The TLS files of the settings, read once at start.
#[derive(Default)]
pub(crate) struct TlsFiles {
    /// PEM CA certificates; `None`: the system's roots.
    pub ca: Option<String>,
    /// PEM client certificate chain and its key; both or neither (`Config::validate`).
    pub cert_and_key: Option<(String, String)>,
}

impl TlsFiles {
    /// The certificates for the `redis` crate, or `None` when no file is given (the
    /// system's roots, no client certificate). A file that cannot be read, or holds no
    /// PEM certificate, is an error naming its setting.
    fn load(&self) -> std::io::Result<Option<redis::TlsCertificates>> {
        if self.ca.is_none() && self.cert_and_key.is_none() {
            return Ok(None);
        }
        let read = |setting: &str, path: &str, label: &str| {
            let pem = std::fs::read(path).map_err(|error| {
                std::io::Error::new(error.kind(), format!("{setting} {path:?}: {error}"))
            })?;
            if !pem
                .windows(label.len())
                .any(|window| window == label.as_bytes())
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{setting} {path:?}: no PEM {label} in it"),
                ));
            }
            Ok(pem)
        };
        let root_cert = match &self.ca {
            Some(path) => Some(read("redis_tls_ca_file", path, "CERTIFICATE-----")?),
            None => None,
        };
        let client_tls = match &self.cert_and_key {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read("redis_tls_cert_file", cert, "CERTIFICATE-----")?,
                client_key: read("redis_tls_key_file", key, "PRIVATE KEY-----")?,
            }),
            None => None,
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// Where the bus connects: the URL's node, or the primary the sentinels name (reached with
/// the URL's scheme, credentials and database). PEM that does not parse fails here, at
/// start, rather than at every connection.
fn target(settings: &RedisSettings, shown: &str) -> std::io::Result<Target> {
    use redis::IntoConnectionInfo;
    let invalid = |error: redis::RedisError| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{shown}: {}",
                error.to_string().replace(&settings.url, shown)
            ),
        )
    };
    let certs = settings.tls_files.load()?;
    let info = settings
        .url
        .as_str()
        .into_connection_info()
        .map_err(invalid)?;
    let endpoint = Endpoint {
        tls: matches!(info.addr, redis::ConnectionAddr::TcpTls { .. }),
        certs: certs.clone(),
        redis: info.redis.clone(),
    };
    // Parses the PEM now, through the same call every connection makes.
    endpoint.client("localhost", 1).map_err(invalid)?;
    if !settings.cluster_nodes.is_empty() {
        return Ok(Target::Cluster(ClusterNodes::new(
            &settings.cluster_nodes,
            &settings.stream,
            endpoint,
        )));
    }
    if !settings.sentinels.is_empty() {
        return Ok(Target::Sentinel(Sentinels::new(
            &settings.sentinels,
            &settings.master_name,
            endpoint,
        )));
    }
    let client = match certs {
        Some(certs) => redis::Client::build_with_tls(info, certs),
        None => redis::Client::open(info),
    };
    client.map(Target::Direct).map_err(invalid)
}

impl RedisBus {
    /// Starts the writer, reader and backfiller threads. Redis need not be up: the
    /// threads keep trying, and publishes are refused until it is.
    pub(crate) fn start(fanout: Fanout, settings: RedisSettings) -> std::io::Result<RedisBus> {
        let shown = crate::config::redact_url(&settings.url);
        let target = target(&settings, &shown)?;
        let mut key_prefix = settings.stream.clone();
        match &target {
            Target::Direct(_) => log::info!("redis bus on {shown}, stream {:?}", settings.stream),
            Target::Sentinel(_) => log::info!(
                "redis bus on primary {:?} of sentinels {}, stream {:?}",
                settings.master_name,
                settings.sentinels.join(","),
                settings.stream
            ),
            Target::Cluster(nodes) => {
                // `Config::validate` refused a name that has no such prefix.
                if let Some(prefix) = cluster::presence_prefix(&settings.stream) {
                    key_prefix = prefix;
                }
                log::info!(
                    "redis bus on the redis cluster of {}, stream {:?} in hash slot {}, \
                     presence keys {key_prefix:?}:presence:*",
                    settings.cluster_nodes.join(","),
                    settings.stream,
                    nodes.slot()
                );
            }
        }
        let core = Arc::new(Core {
            target,
            key_prefix,
            wait_replicas: settings.wait_replicas,
            wait_timeout: settings.wait_timeout,
            stream: settings.stream,
            maxlen: settings.maxlen,
            limits: settings.limits,
            data_bytes_max: settings.data_bytes_max,
            fanout,
            closed: AtomicBool::new(false),
            floor: Mutex::new(None),
            delivered: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            writer_connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            backfills: AtomicU64::new(0),
            backfill_scanned: AtomicU64::new(0),
            holes: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            named_primary: Mutex::new(None),
        });
        let (writes, write_jobs) = crossbeam_channel::bounded(WRITE_QUEUE_MAX);
        let backfills = Arc::new(BackfillQueue::new());
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
        if matches!(core.target, Target::Sentinel(_)) {
            let c = core.clone();
            spawn(
                "herald-redis-sentinel",
                Box::new(move || link::run_watcher(&c)),
            )?;
        }
        let (c, counts, node) = (core.clone(), settings.presence, presence::node_id());
        spawn(
            "herald-redis-presence",
            Box::new(move || presence::run_presence(&c, &counts, &node)),
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
    /// Queues the events as one job: the writer sends it as one `MULTI`/`EXEC` when it
    /// holds more than one event, so the entries are adjacent in the stream on every node.
    fn publish(&self, events: Vec<Outgoing<'_>>, ticket: Option<Ticket>) -> Submitted {
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
        let job = WriteJob {
            events: events
                .into_iter()
                .map(|event| WriteEvent {
                    topics: event.topics,
                    name: event.name.map(str::to_owned),
                    data: event.data.to_owned(),
                    retry_ms: event.retry_ms,
                })
                .collect(),
            reply,
        };
        // The whole batch counts against the queue's bytes: it is taken all or not at all.
        let size = job.bytes();
        let queued = &self.core.queued_bytes;
        if queued.fetch_add(size, Ordering::AcqRel) + size > WRITE_QUEUE_BYTES_MAX {
            queued.fetch_sub(size, Ordering::AcqRel);
            return Submitted::Done(Err(PublishError::Busy));
        }
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
                rx.recv_timeout(HANDLE_WAIT + self.core.wait_timeout)
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

    /// Ids Redis generates are its clock in ms. (An application that appends its own ids
    /// in another unit gets `since` and the time to live in that unit.)
    fn seq_at(&self, unix_ms: u64) -> Option<Seq> {
        Some(pack(unix_ms, 0))
    }

    fn reach_floor(&self) -> Option<Seq> {
        *lock(&self.core.floor)
    }

    fn can_backfill(&self) -> bool {
        true
    }

    fn backfill(&self, request: BackfillRequest, ticket: Ticket) -> Result<(), BackfillError> {
        if self.core.closed.load(Ordering::Acquire) {
            return Err(BackfillError::ShuttingDown);
        }
        self.backfills.push(BackfillJob { request, ticket })
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

    /// The reader first: without it nothing arrives, whatever the writer stores.
    fn health(&self) -> BusHealth {
        let core = &self.core;
        if !core.connected.load(Ordering::Relaxed) {
            BusHealth::ReaderDisconnected
        } else if !core.writer_connected.load(Ordering::Relaxed) {
            BusHealth::WriterDisconnected
        } else {
            BusHealth::Connected
        }
    }

    fn close(&self) {
        self.core.closed.store(true, Ordering::Release);
        self.core.fanout.wake_all();
    }
}
