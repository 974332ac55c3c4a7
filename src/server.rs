//! Starting and stopping a herald server: binds each listening address once (refusing one
//! that another socket holds) and hands every event loop a handle to it, connects the loops
//! to the bus, runs each loop on its own thread, and hands out [`Handle`]s.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::auth::Auth;
use crate::authorize::callback::HttpCallback;
use crate::authorize::observe::Observer;
use crate::authorize::pool::{AuthPool, PoolSettings};
use crate::authorize::{Authorize, Hooks};
use crate::bus::embedded::EmbeddedBus;
use crate::bus::redis::{RedisBus, RedisSettings, TlsFiles};
use crate::bus::{Bus, Fanout, Resume, Submitted};
use crate::config::{BusKind, Config, Limits};
use crate::event::{Error, Event, EventId, PublishError, Stats};
use crate::event_loop::context::{
    Admission, LoopContext, RenderMetrics, RequestSettings, Shutdown,
};
use crate::event_loop::{EventLoop, ListenerSlot, LoopThread, WAKER};
use crate::history::ring::Seq;
use crate::history::topics;
use crate::http::route::Listener;
use crate::metrics::{self, LoopStats, Metrics};
use crate::presence::{Presence, Query, TopicPresence, QUERY_QUEUE_MAX};
use crate::publish;
use crate::replay::{self, Replay, ReplayFrom, ReplayQuery, Start};
use crate::socket;

/// How long `Handle::topics` and `Handle::replay` wait for a loop to answer; a loop answers within a turn, so
/// only a stuck or stopped loop takes this long.
const QUERY_WAIT: Duration = Duration::from_millis(2_000);

/// State the server and its handles share (each loop gets its narrow
/// [`LoopContext`] instead).
pub(crate) struct Shared {
    /// The limits in force, from the config, in their units.
    limits: Limits,
    /// The bus all publishes go through.
    bus: Arc<dyn Bus>,
    /// The drain and stop flags every loop reads.
    shutdown: Arc<Shutdown>,
    /// Tells [`Server::join`] that a shutdown began (it then waits with a deadline).
    lifecycle: Sender<Lifecycle>,
    /// Per-loop counters.
    loop_stats: Vec<Arc<LoopStats>>,
    /// Wakers of every loop, for shutdown and for handles' queries.
    wakers: Vec<Arc<mio::Waker>>,
    /// Subscriber counts per topic (cluster-wide with the Redis bus).
    presence: Arc<Presence>,
    /// Each loop's query queue (`Handle::topics` asks a loop for newest ids).
    queries: Vec<Sender<Query>>,
    /// The newest event the handles published: a replay waits until a loop has it.
    newest_published: Mutex<Seq>,
    /// The token verifiers and their key thread ([`Handle::reload_keys`]).
    auth: Auth,
}

/// Renders `/metrics` from every loop's counters, the rare-event counters and the bus.
fn metrics_renderer(
    loop_stats: Vec<Arc<LoopStats>>,
    metrics: Arc<Metrics>,
    bus: Arc<dyn Bus>,
    max_connections: u64,
    hooks: (Option<Arc<AuthPool>>, Option<Arc<Observer>>),
) -> RenderMetrics {
    let (auth, observer) = hooks;
    Arc::new(move |format| {
        let snapshot = metrics::Snapshot {
            events_published: bus.published(),
            max_connections,
            bus: bus.stats(),
            auth: auth.as_ref().map(|pool| pool.stats()),
            notices_dropped: observer.as_ref().map(|observer| observer.dropped()),
        };
        metrics::render(&loop_stats, &metrics, &snapshot, format)
    })
}

impl Shared {
    fn drain(&self) {
        let _ = self.shutdown.drain_started.set(Instant::now());
        if !self.shutdown.draining.swap(true, Ordering::AcqRel) {
            self.wake_all();
            let _ = self.lifecycle.send(Lifecycle::Draining);
        }
    }

    fn stop(&self) {
        if !self.shutdown.stopping.swap(true, Ordering::AcqRel) {
            self.wake_all();
            let _ = self.lifecycle.send(Lifecycle::Stopping);
        }
    }

    fn wake_all(&self) {
        for waker in &self.wakers {
            if let Err(error) = waker.wake() {
                log::warn!("could not wake an event loop for shutdown: {error}");
            }
        }
    }
}

/// What [`Server::join`] is told: a shutdown began, or a loop thread ended.
enum Lifecycle {
    Draining,
    Stopping,
    /// Sent when a loop thread ends, by a guard it owns, so a panic counts too.
    Exited,
}

/// Sends [`Lifecycle::Exited`] when its loop thread ends, however it ends.
struct ExitNotice(Sender<Lifecycle>);

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.0.send(Lifecycle::Exited);
    }
}

/// How long after a drain's deadline (or an immediate stop) the server waits for its loop
/// threads before it gives up on them. A loop checks the deadline every turn, and a turn
/// is bounded; only a thread blocked outside herald's control (a write to a stderr pipe
/// nobody reads, say) can be later, and the process must still exit.
const JOIN_GRACE: Duration = Duration::from_millis(500);

/// A running herald server. Dropping it shuts it down.
pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Shutdown news for [`Server::join`].
    lifecycle: Receiver<Lifecycle>,
    local_addr: SocketAddr,
    publish_addr: Option<SocketAddr>,
}

/// A cheap, cloneable, `Send + Sync` handle to publish into a running server and read its
/// statistics from any thread.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Binds one listener on `addr` and returns a handle to it for each of `threads` loops. An
/// address that another socket holds (another process, or this one) is
/// [`Error::AddressInUse`]: nothing is shared.
fn bind_all(addr: SocketAddr, threads: usize) -> Result<Vec<mio::net::TcpListener>, Error> {
    socket::listen(addr, threads).map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => Error::AddressInUse(addr),
        _ => Error::Io {
            context: format!("cannot listen on {addr}"),
            source,
        },
    })
}

impl Server {
    /// Validates `config`, binds its listeners and starts one event loop per thread.
    pub fn start(config: Config) -> Result<Server, Error> {
        Server::start_with(config, Hooks::new())
    }

    /// [`Server::start`] with the embedding program's hooks: an [`Authorize`] hook that
    /// decides subscriptions in Rust (in place of `auth_url`), and an
    /// [`ObserveStreams`](crate::ObserveStreams) hook told when streams open and close.
    pub fn start_with(config: Config, hooks: Hooks) -> Result<Server, Error> {
        config.validate()?;
        // Before binding: a bad key file stops start-up, and the JWKS URLs are fetched
        // once so that the first subscribers find the keys.
        let auth = Auth::start(&config)?;
        let threads = config.threads;
        let mut main = bind_all(config.listen, threads)?;
        let local_addr = main[0]
            .local_addr()
            .map_err(io_error("cannot read the listen address"))?;
        let mut publish = match config.publish_listen {
            Some(addr) => bind_all(addr, threads)?,
            None => Vec::new(),
        };
        let publish_addr = match publish.first() {
            Some(listener) => Some(
                listener
                    .local_addr()
                    .map_err(io_error("cannot read the publish address"))?,
            ),
            None => None,
        };

        let mut fanout = Fanout::new();
        let mut loops = Vec::with_capacity(threads);
        let mut wakers = Vec::with_capacity(threads);
        for _ in 0..threads {
            let poll = mio::Poll::new().map_err(io_error("cannot create a poller"))?;
            let waker = Arc::new(
                mio::Waker::new(poll.registry(), WAKER)
                    .map_err(io_error("cannot create a waker"))?,
            );
            let inbox = fanout.add_loop(waker.clone());
            wakers.push(waker);
            let mut listeners = Vec::new();
            if let Some(listener) = main.pop() {
                listeners.push(ListenerSlot::new(listener, Listener::Main));
            }
            if let Some(listener) = publish.pop() {
                listeners.push(ListenerSlot::new(listener, Listener::Publish));
            }
            loops.push((poll, listeners, inbox, Arc::new(LoopStats::default())));
        }
        let limits = config.limits();
        let authorizer: Option<Arc<dyn Authorize>> = hooks.authorize.or_else(|| {
            let url = config.auth_url.as_deref()?;
            Some(Arc::new(HttpCallback::new(url, limits.auth_timeout)))
        });
        if config.auth_publish && authorizer.is_none() {
            // Otherwise publishes would go unasked while the operator believes they are not.
            return Err(Error::Config(crate::config::ConfigError {
                setting: "auth_publish",
                reason: "needs auth_url (or an Authorize hook) to ask".into(),
            }));
        }
        let auth_pool = match authorizer {
            Some(authorizer) => {
                let settings = PoolSettings {
                    workers: config.auth_workers,
                    queue: config.auth_queue,
                    timeout: limits.auth_timeout,
                    cache_ttl: Duration::from_millis(config.auth_cache_ms),
                };
                let pool = AuthPool::start(authorizer, settings, fanout.completer())
                    .map_err(io_error("cannot start the authorization workers"))?;
                Some(Arc::new(pool))
            }
            None => None,
        };
        let observer = match hooks.observe {
            Some(hook) => Some(Arc::new(
                Observer::start(hook).map_err(io_error("cannot start the stream observer"))?,
            )),
            None => None,
        };
        let settings = Arc::new(RequestSettings::new(&config, &auth));
        let loop_wakers = fanout.loop_wakers();
        let presence = Arc::new(Presence::new());
        let bus: Arc<dyn Bus> = match config.bus {
            BusKind::Embedded => Arc::new(EmbeddedBus::new(fanout)),
            BusKind::Redis => {
                let settings = RedisSettings {
                    url: config.redis_url.clone(),
                    stream: config.redis_stream.clone(),
                    maxlen: config.effective_redis_maxlen(),
                    limits: limits.publish.clone(),
                    data_bytes_max: config.max_publish_bytes,
                    presence: presence.clone(),
                    tls_files: TlsFiles {
                        ca: config.redis_tls_ca_file.clone(),
                        cert_and_key: config
                            .redis_tls_cert_file
                            .clone()
                            .zip(config.redis_tls_key_file.clone()),
                    },
                    sentinels: config.redis_sentinels.clone(),
                    master_name: config.redis_master_name.clone(),
                    cluster_nodes: config.redis_cluster_nodes.clone(),
                    wait_replicas: config.redis_wait_replicas,
                    wait_timeout: Duration::from_millis(config.redis_wait_timeout),
                };
                Arc::new(
                    RedisBus::start(fanout, settings)
                        .map_err(io_error("cannot start the redis bus"))?,
                )
            }
        };
        let (lifecycle_tx, lifecycle) = crossbeam_channel::unbounded();
        let loop_stats: Vec<Arc<LoopStats>> = loops.iter().map(|l| l.3.clone()).collect();
        let metrics = Arc::new(Metrics::new());
        let render_metrics = metrics_renderer(
            loop_stats.clone(),
            metrics.clone(),
            bus.clone(),
            limits.connections_max as u64,
            (auth_pool.clone(), observer.clone()),
        );
        let shutdown = Arc::new(Shutdown {
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            drain_started: OnceLock::new(),
        });
        let admission = Arc::new(Admission::new());
        let serials = Arc::new(AtomicU64::new(1));
        let (queries, query_rxs): (Vec<_>, Vec<_>) = (0..threads)
            .map(|_| crossbeam_channel::bounded(QUERY_QUEUE_MAX))
            .unzip();
        let shared = Arc::new(Shared {
            presence: presence.clone(),
            queries,
            newest_published: Mutex::new(0),
            auth,
            lifecycle: lifecycle_tx.clone(),
            limits: limits.clone(),
            bus: bus.clone(),
            shutdown: shutdown.clone(),
            loop_stats,
            wakers,
        });
        let mut server = Server {
            shared: shared.clone(),
            threads: Vec::with_capacity(threads),
            lifecycle,
            local_addr,
            publish_addr,
        };
        let mut states = Vec::with_capacity(threads);
        for (index, ((poll, listeners, inbox, stats), queries)) in
            loops.into_iter().zip(query_rxs).enumerate()
        {
            let ctx = LoopContext {
                index,
                limits: limits.clone(),
                bus: bus.clone(),
                admission: admission.clone(),
                settings: settings.clone(),
                shutdown: shutdown.clone(),
                metrics: metrics.clone(),
                render_metrics: render_metrics.clone(),
                serials: serials.clone(),
                stats,
                presence: presence.clone(),
                queries,
                auth: auth_pool.clone(),
                observer: observer.clone(),
            };
            let event_loop = EventLoop::new(&poll, listeners, inbox, ctx)
                .map_err(io_error("cannot register a listener"))?;
            states.push((poll, event_loop));
        }
        for (index, event_loop) in LoopThread::all(states, loop_wakers).into_iter().enumerate() {
            let notice = ExitNotice(lifecycle_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("herald-loop-{index}"))
                .spawn(move || {
                    let _notice = notice;
                    event_loop.run();
                })
                .map_err(io_error("cannot start an event loop thread"))?;
            server.threads.push(thread);
        }
        Ok(server)
    }

    /// The address subscribers connect to (with the real port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connection limit in force (`max_connections`, or the one derived from the
    /// open-file limit when that is 0).
    pub fn max_connections(&self) -> usize {
        self.shared.limits.connections_max
    }

    /// The separate publish listener's address, when one is configured.
    pub fn publish_addr(&self) -> Option<SocketAddr> {
        self.publish_addr
    }

    /// A handle for publishing and statistics.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Blocks until the server stops (after [`Handle::shutdown`] from another thread).
    pub fn wait(mut self) {
        self.join();
    }

    /// Shuts down gracefully and waits: stops accepting, finishes requests in flight, sends
    /// every subscriber a jittered `retry:` hint and closes it, all within
    /// `shutdown_timeout_ms`.
    pub fn shutdown(mut self) {
        self.shared.drain();
        self.join();
    }

    /// Waits for the loop threads: without a deadline until a shutdown begins, then until
    /// the drain's deadline plus [`JOIN_GRACE`] (an immediate stop: the grace alone). Loops
    /// still running then are told to stop at once and given one more grace; any thread
    /// still not done is left behind (the process exits without it) rather than waited on
    /// past the deadline the operator set.
    fn join(&mut self) {
        let mut running = self.threads.len();
        let mut deadline = None;
        let mut stopped = false;
        while running > 0 {
            if deadline.is_none() {
                deadline = self.shutdown_deadline();
            }
            let news = match deadline {
                None => self.lifecycle.recv().ok(),
                Some(at) => self.lifecycle.recv_deadline(at).ok(),
            };
            match news {
                Some(Lifecycle::Exited) => running -= 1,
                Some(Lifecycle::Draining | Lifecycle::Stopping) => {}
                None if !stopped => {
                    log::warn!("{running} event loop(s) still running past the shutdown deadline; stopping them");
                    stopped = true;
                    self.shared.stop();
                    deadline = Some(Instant::now() + JOIN_GRACE);
                }
                None => break,
            }
        }
        // A loop's notice is sent as its thread winds down, so a thread that sent it may
        // not be finished yet: those are joined (they are about to end). Only when the
        // deadline passed with loops still running are unfinished threads left behind.
        let gave_up = running > 0;
        for thread in self.threads.drain(..) {
            if gave_up && !thread.is_finished() {
                log::error!("an event loop thread did not stop; exiting without it");
                continue; // Detached: joining would wait on whatever blocks it.
            }
            if thread.join().is_err() {
                log::error!("an event loop thread panicked");
            }
        }
        self.shared.bus.close();
    }

    /// When waiting for the loops must end, once a shutdown began.
    fn shutdown_deadline(&self) -> Option<Instant> {
        if let Some(&started) = self.shared.shutdown.drain_started.get() {
            return Some(started + self.shared.limits.shutdown_timeout + JOIN_GRACE);
        }
        self.shared
            .shutdown
            .stopping
            .load(Ordering::Acquire)
            .then(|| Instant::now() + JOIN_GRACE)
    }
}

impl Drop for Server {
    /// Stops at once: connections are closed without a parting hint. Use
    /// [`Server::shutdown`] for a graceful stop.
    fn drop(&mut self) {
        self.shared.stop();
        self.join();
    }
}

impl Handle {
    /// Rereads the token key files (`subscribe_public_key`, `publish_public_key`, JWKS
    /// files) and refetches the JWKS URLs, on the server's key thread: returns at once. A
    /// file or URL that fails keeps its last keys (and is logged). `herald serve` calls
    /// this on SIGHUP. Does nothing when no public key is configured.
    pub fn reload_keys(&self) {
        self.shared.auth.reload();
    }

    /// Publishes an event to its topics and returns the id subscribers will see.
    ///
    /// With the Redis bus this waits for Redis to store the event (a round trip), and
    /// fails with [`PublishError::Unavailable`] while Redis cannot be reached.
    pub fn publish(&self, event: &Event) -> Result<EventId, PublishError> {
        let outgoing = publish::prepare(event, &self.shared.limits.publish)?;
        let mut ids = self.submit(vec![outgoing])?;
        // A bus answers one id per event.
        ids.pop().ok_or(PublishError::Unavailable)
    }

    /// Publishes several events at once and returns their ids, in order: all of them or,
    /// on any error, none. Every event is checked first (the first invalid one's error is
    /// returned); ids are consecutive on their topics, with no other publish between them
    /// (one lock with the embedded bus, one `MULTI`/`EXEC` with Redis). More than
    /// `max_batch_events` events is [`PublishError::BatchTooLarge`]; an empty batch
    /// publishes nothing.
    ///
    /// With the Redis bus this waits for Redis to store the events (a round trip).
    pub fn publish_batch(&self, events: &[Event]) -> Result<Vec<EventId>, PublishError> {
        if events.len() > self.shared.limits.batch_events_max {
            return Err(PublishError::BatchTooLarge);
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let outgoing = events
            .iter()
            .map(|event| publish::prepare(event, &self.shared.limits.publish))
            .collect::<Result<Vec<_>, _>>()?;
        self.submit(outgoing)
    }

    fn submit(&self, events: Vec<crate::bus::Outgoing<'_>>) -> Result<Vec<EventId>, PublishError> {
        match self.shared.bus.publish(events, None) {
            Submitted::Done(result) => {
                if let Some(Resume::After(seq)) = result
                    .as_ref()
                    .ok()
                    .and_then(|ids| ids.last())
                    .map(|id| self.shared.bus.resume_point(id.as_str()))
                {
                    let mut newest = self
                        .shared
                        .newest_published
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    *newest = (*newest).max(seq);
                }
                result
            }
            // Without a ticket a bus answers at once; this arm only keeps the match whole.
            Submitted::Pending => Err(PublishError::Unavailable),
        }
    }

    /// Live counters, summed over the event loops.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            events_published: self.shared.bus.published(),
            ..Stats::default()
        };
        for loop_stats in &self.shared.loop_stats {
            stats.connections += loop_stats.connections.load(Ordering::Relaxed);
            stats.subscribers += loop_stats.subscribers.load(Ordering::Relaxed);
            stats.deliveries += loop_stats.deliveries.load(Ordering::Relaxed);
        }
        stats
    }

    /// Each topic's subscriber count and newest id, in the order given (a name given
    /// twice is answered twice), as `GET /topics` reports them: the count is cluster-wide
    /// with the Redis bus (other nodes' counts up to about two seconds old), and the
    /// newest id is the one this node's history holds.
    ///
    /// The names are checked like a subscription's: [`PublishError::InvalidTopic`] for a
    /// bad name, [`PublishError::TooManyTopics`] past `max_topics_per_subscription`.
    /// Asks one event loop for the ids (it answers within a turn) and blocks until it
    /// does: [`PublishError::Busy`] when its query queue is full, and
    /// [`PublishError::ShuttingDown`] when no loop answers.
    pub fn topics(&self, names: &[&str]) -> Result<Vec<TopicPresence>, PublishError> {
        let limits = &self.shared.limits.topics;
        if names.len() > limits.per_subscription {
            return Err(PublishError::TooManyTopics);
        }
        if !names
            .iter()
            .all(|name| topics::is_valid_name(name, limits.name_bytes))
        {
            return Err(PublishError::InvalidTopic);
        }
        let ids = if names.is_empty() {
            Vec::new()
        } else {
            self.newest_ids(names)?
        };
        Ok(names
            .iter()
            .zip(ids)
            .map(|(name, last_id)| TopicPresence {
                subscribers: self.shared.presence.count(name),
                last_id,
            })
            .collect())
    }

    /// Asks a loop (the first that takes the query) for the newest ids of `names`.
    fn newest_ids(&self, names: &[&str]) -> Result<Vec<Option<String>>, PublishError> {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut busy = false;
        for (queue, waker) in self.shared.queries.iter().zip(&self.shared.wakers) {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let query = Query::Newest {
                names: names.clone(),
                reply,
            };
            match queue.try_send(query) {
                Ok(()) => {}
                Err(crossbeam_channel::TrySendError::Full(_)) => {
                    busy = true;
                    continue;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => continue,
            }
            // A loop in `poll` wakes; a running one finds the waker set at its next poll.
            if let Err(error) = waker.wake() {
                log::warn!("could not wake an event loop for a query: {error}");
            }
            if let Ok(ids) = answer.recv_timeout(QUERY_WAIT) {
                return Ok(ids);
            }
        }
        Err(if busy {
            PublishError::Busy
        } else {
            PublishError::ShuttingDown
        })
    }

    /// What the history keeps of `topics` from `from`, as an HTTP subscription with
    /// `lastEventId=earliest`, `since=` or a `Last-Event-ID` would be sent before its live
    /// events: each event once, in id order, with its id, event name, data (line breaks
    /// as LF) and `retry:` hint. It includes every event this server's handles published
    /// before the call (with the Redis bus it waits for the stream's reader to bring them
    /// back) and, on the embedded bus, every event published over HTTP before it.
    ///
    /// The answer comes from this node's memory, never from the Redis stream: at most
    /// `max_history_events` per topic (and within the history's byte budgets), nothing
    /// past `history_ttl_ms`, and [`Replay::gap`] set when events after the starting point
    /// may be missing (see there). `topics` may hold wildcards (`prefix*`) under the same
    /// limits as a subscription; names given twice count once.
    ///
    /// Errors: [`PublishError::InvalidTopic`] for a bad name or wildcard (or any
    /// wildcard when `max_patterns_per_subscription` is 0, or more wildcards than it
    /// allows), [`PublishError::TooManyTopics`] past `max_topics_per_subscription`,
    /// [`PublishError::NoTopic`] for none. Blocks until a loop answers (within a turn,
    /// once it has taken the events published before the call):
    /// [`PublishError::Busy`] when its query queue is full, and
    /// [`PublishError::ShuttingDown`] when no loop answers.
    ///
    /// ```
    /// use herald::{Config, Event, ReplayFrom, Server};
    ///
    /// let mut config = Config::default();
    /// config.listen = "127.0.0.1:0".parse().unwrap();
    /// config.threads = 1;
    /// let server = Server::start(config).expect("bind a free port");
    /// let handle = server.handle();
    /// let id = handle
    ///     .publish(&Event::new("prices", "41\r\n42").named("tick"))
    ///     .expect("publish");
    /// let replay = handle
    ///     .replay(&["prices"], ReplayFrom::Earliest)
    ///     .expect("replay");
    /// let event = &replay.events[0];
    /// assert_eq!((&event.id, event.event.as_deref()), (&id, Some("tick")));
    /// assert_eq!(event.data, "41\n42"); // CRLF and CR come back as LF
    /// assert!(!replay.gap);
    /// server.shutdown();
    /// ```
    pub fn replay(&self, topics: &[&str], from: ReplayFrom) -> Result<Replay, PublishError> {
        let limits = &self.shared.limits.topics;
        let mut names: Vec<String> = Vec::with_capacity(topics.len().min(limits.per_subscription));
        for name in topics {
            if !names.iter().any(|known| known == name) {
                if names.len() == limits.per_subscription {
                    return Err(PublishError::TooManyTopics);
                }
                names.push((*name).to_owned());
            }
        }
        if names.is_empty() {
            return Err(PublishError::NoTopic);
        }
        let mut patterns = 0;
        for name in &names {
            match topics::pattern_prefix(name) {
                None if topics::is_valid_name(name, limits.name_bytes) => {}
                Some(prefix)
                    if patterns < limits.patterns_max
                        && prefix.len() >= limits.pattern_prefix_min
                        && (prefix.is_empty()
                            || topics::is_valid_name(prefix, limits.name_bytes)) =>
                {
                    patterns += 1;
                }
                _ => return Err(PublishError::InvalidTopic),
            }
        }
        let start = match from {
            ReplayFrom::Earliest => Start::Earliest,
            ReplayFrom::Since(time) => Start::SinceMs(
                time.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| {
                        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                    }),
            ),
            ReplayFrom::After(id) => Start::After(id),
        };
        let newest = *self
            .shared
            .newest_published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let published = self.shared.bus.published();
        let (reply, answer) = crossbeam_channel::bounded(1);
        let query = Query::Replay(ReplayQuery {
            names,
            start,
            published,
            newest,
            until: Instant::now() + QUERY_WAIT,
            reply,
        });
        self.ask(query, &answer).map(replay::decode)
    }

    /// Puts `query` in the first loop's queue that takes it, wakes that loop and waits for
    /// its answer on `answer`, with a bound.
    fn ask<T>(&self, mut query: Query, answer: &Receiver<T>) -> Result<T, PublishError> {
        let mut busy = false;
        for (queue, waker) in self.shared.queries.iter().zip(&self.shared.wakers) {
            match queue.try_send(query) {
                Ok(()) => {}
                Err(crossbeam_channel::TrySendError::Full(back)) => {
                    busy = true;
                    query = back;
                    continue;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(back)) => {
                    query = back;
                    continue;
                }
            }
            // A loop in `poll` wakes; a running one finds the waker set at its next poll.
            if let Err(error) = waker.wake() {
                log::warn!("could not wake an event loop for a query: {error}");
            }
            return answer
                .recv_timeout(QUERY_WAIT)
                .map_err(|_| PublishError::ShuttingDown);
        }
        Err(if busy {
            PublishError::Busy
        } else {
            PublishError::ShuttingDown
        })
    }

    /// Starts a graceful shutdown (as [`Server::shutdown`] does) without waiting;
    /// [`Server::wait`] returns once it is complete.
    pub fn shutdown(&self) {
        self.shared.drain();
    }
}
