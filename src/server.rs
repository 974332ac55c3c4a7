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

mod handle;

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
