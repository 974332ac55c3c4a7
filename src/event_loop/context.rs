//! What a loop needs from the server, typed and narrow: the limits, the bus, the shared
//! admission budgets, the request settings, the shutdown flags and the counters. Built by
//! `server.rs`, one per loop; nothing in the loop reaches back into the server.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::auth::{Auth, Verifier};
use crate::authorize::observe::Observer;
use crate::authorize::pool::AuthPool;
use crate::bus::{Bus, Ticket};
use crate::client::{client_key, Cidr, ClientTable};
use crate::config::{Config, ForwardedHeader, Limits};
use crate::conn::{Env, Readiness};
use crate::http::answer::HttpError;
use crate::http::route::Listener;
use crate::metrics::{Format, LoopStats, Metrics};
use crate::presence::{Presence, Query, TopicPresence};

use crossbeam_channel::Receiver;

/// Renders the `/metrics` page from every loop's counters.
pub(crate) type RenderMetrics = Arc<dyn Fn(Format) -> String + Send + Sync>;

/// Everything one loop gets from the server.
pub(crate) struct LoopContext {
    /// This loop's position among the server's loops (its inbox's index in the bus).
    pub index: usize,
    /// The limits in force, in their units.
    pub limits: Limits,
    /// The bus all publishes go through.
    pub bus: Arc<dyn Bus>,
    /// Connection budgets and per-address counts, across loops.
    pub admission: Arc<Admission>,
    /// What requests are checked against (CORS, tokens, proxies).
    pub settings: Arc<RequestSettings>,
    /// Drain and stop flags.
    pub shutdown: Arc<Shutdown>,
    /// Rare-event counters (refusals by status, auth failures).
    pub metrics: Arc<Metrics>,
    /// Renders `/metrics`.
    pub render_metrics: RenderMetrics,
    /// Serials of the tickets of requests the bus answers later, unique across loops.
    pub serials: Arc<AtomicU64>,
    /// This loop's gauges and counters, read by `/metrics` and `Handle::stats`.
    pub stats: Arc<LoopStats>,
    /// Subscriber counts per topic, across loops (and nodes): changed when a stream opens
    /// or closes.
    pub presence: Arc<Presence>,
    /// Library handles' questions about this loop's history (`Handle::topics`).
    pub queries: Receiver<Query>,
    /// Puts subscriptions to the application (`auth_url` or the `Authorize` hook).
    pub auth: Option<Arc<AuthPool>>,
    /// Tells the `ObserveStreams` hook when streams open and close.
    pub observer: Option<Arc<Observer>>,
}

impl LoopContext {
    /// The read-only view a connection's requests are answered from; `readiness` is what
    /// the loop read of its drain state and the bus.
    pub(crate) fn env<'a>(
        &'a self,
        render_metrics: &'a dyn Fn(Format) -> String,
        presence: &'a dyn Fn(&str) -> TopicPresence,
        readiness: Readiness,
    ) -> Env<'a> {
        let settings = &*self.settings;
        Env {
            limits: &self.limits,
            cors_origins: &settings.cors_origins,
            forwarded_header: settings.forwarded_header,
            publish_token: settings.publish_token.as_deref(),
            trusted_proxies: &settings.trusted_proxies,
            render_metrics,
            presence,
            readiness,
            subscribe_verifier: settings.subscribe_verifier.as_ref(),
            publish_verifier: settings.publish_verifier.as_ref(),
            authorizing: self.auth.is_some(),
            authorizing_publish: self.auth.is_some() && settings.auth_publish,
        }
    }

    /// A new ticket for a request of connection `key` that the bus answers later: the one
    /// place tickets are minted.
    pub(crate) fn ticket(&self, key: usize) -> Ticket {
        Ticket {
            loop_index: self.index,
            conn: key,
            serial: self.serials.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Counts a refusal by status, and the ones with their own counters.
    pub(crate) fn count_refusal(&self, error: HttpError) {
        let metrics = &self.metrics;
        metrics.count_refusal(error.answer().0);
        let counter = match error {
            HttpError::Unauthorized(_) | HttpError::Forbidden => &metrics.auth_failures,
            HttpError::TooManyFromClient => &metrics.refused_per_ip,
            HttpError::ServerFull => &metrics.refused_full,
            HttpError::PublishListenerFull => &metrics.refused_publish_full,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The settings requests are checked against, parsed once.
pub(crate) struct RequestSettings {
    /// Origins allowed by CORS.
    pub cors_origins: Vec<String>,
    /// The header a trusted proxy names the client in.
    pub forwarded_header: ForwardedHeader,
    /// The static publish token.
    pub publish_token: Option<String>,
    /// Proxies allowed to name the client.
    pub trusted_proxies: Vec<Cidr>,
    /// Verifies subscriber tokens (`subscribe_key`, `subscribe_public_key`,
    /// `subscribe_jwks`).
    pub subscribe_verifier: Option<Verifier>,
    /// Verifies publisher tokens (`publish_key`, `publish_public_key`, `publish_jwks`).
    pub publish_verifier: Option<Verifier>,
    /// Log each finished request and stream (`access_log`).
    pub access_log: bool,
    /// Ask the application before each publish too (`auth_publish`).
    pub auth_publish: bool,
}

impl RequestSettings {
    /// The request settings of a validated config, with the token verifiers `auth` built
    /// from it.
    pub(crate) fn new(config: &Config, auth: &Auth) -> Self {
        RequestSettings {
            cors_origins: config.cors_origins.clone(),
            forwarded_header: config.forwarded_header,
            publish_token: config.publish_token.clone(),
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .filter_map(|block| Cidr::parse(block).ok()) // Validated before.
                .collect(),
            subscribe_verifier: auth.subscribe.clone(),
            publish_verifier: auth.publish.clone(),
            access_log: config.access_log,
            auth_publish: config.auth_publish,
        }
    }

    /// Whether `peer` may name the client it speaks for.
    pub(crate) fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|cidr| cidr.contains(peer))
    }
}

/// A graceful drain, or an immediate stop, as every loop sees it.
pub(crate) struct Shutdown {
    /// Set once to drain every loop: stop accepting, tell streams to come back later, close.
    pub draining: AtomicBool,
    /// Set once to stop every loop at once.
    pub stopping: AtomicBool,
    /// When the graceful shutdown was asked for: every loop's drain ends
    /// `shutdown_timeout` after this, however late it notices.
    pub drain_started: OnceLock<Instant>,
}

/// The server's connection budgets and per-address counts: taken at accept (or, behind a
/// trusted proxy, when a head names the client) and given back at close, by the loop.
pub(crate) struct Admission {
    /// Admitted connections on the main listener, across all loops.
    pub connections: AtomicUsize,
    /// Admitted connections on the publish listeners, across all loops; its own budget
    /// (`max_publish_connections`), apart from `connections`.
    pub publish_connections: AtomicUsize,
    /// Connections per client address.
    pub clients: ClientTable,
}

impl Admission {
    /// Empty budgets.
    pub(crate) fn new() -> Self {
        Admission {
            connections: AtomicUsize::new(0),
            publish_connections: AtomicUsize::new(0),
            clients: ClientTable::new(),
        }
    }

    /// The connection budget of a listener: the publish listener has its own, so
    /// publishers and operators are served while subscribers fill the main one.
    fn budget(&self, limits: &Limits, listener: Listener) -> (&AtomicUsize, usize) {
        match listener {
            Listener::Main => (&self.connections, limits.connections_max),
            Listener::Publish => (&self.publish_connections, limits.publish_connections_max),
        }
    }

    /// Takes a slot of the listener's budget and, for a peer on the main listener that is
    /// not a trusted proxy (`names_itself`), one of its address's `max_connections_per_ip`
    /// slots, at accept: a client holding unfinished heads is counted before it sends a
    /// byte. Returns the key counted or the refusal. A trusted proxy's connections are
    /// counted by the client it names, once a head arrives ([`Admission::count_client`]).
    pub(crate) fn admit(
        &self,
        limits: &Limits,
        peer: IpAddr,
        names_itself: bool,
        listener: Listener,
    ) -> Result<Option<IpAddr>, HttpError> {
        let mut counted = None;
        let per_ip = match listener {
            Listener::Main if names_itself => limits.connections_per_ip_max,
            _ => None,
        };
        if let Some(per_ip) = per_ip {
            let key = client_key(peer, limits.ipv6_prefix_bits);
            if !self.clients.acquire(key, per_ip) {
                return Err(HttpError::TooManyFromClient);
            }
            counted = Some(key);
        }
        let (connections, max) = self.budget(limits, listener);
        if connections.fetch_add(1, Ordering::AcqRel) >= max {
            connections.fetch_sub(1, Ordering::AcqRel);
            if let Some(key) = counted {
                self.clients.release(key);
            }
            return Err(match listener {
                Listener::Main => HttpError::ServerFull,
                Listener::Publish => HttpError::PublishListenerFull,
            });
        }
        Ok(counted)
    }

    /// Counts a proxied connection for `client`, giving back the count of the client it
    /// spoke for before (`counted`, updated). Returns false when `client` is at its limit.
    pub(crate) fn count_client(
        &self,
        limits: &Limits,
        counted: &mut Option<IpAddr>,
        client: IpAddr,
    ) -> bool {
        if let Some(previous) = counted.take() {
            self.clients.release(previous);
        }
        let Some(max) = limits.connections_per_ip_max else {
            return true;
        };
        if !self.clients.acquire(client, max) {
            return false;
        }
        *counted = Some(client);
        true
    }

    /// Gives back what admission took for a connection: its listener's budget slot (if it
    /// was `admitted`) and its per-address slot (`counted`).
    pub(crate) fn release(
        &self,
        limits: &Limits,
        listener: Listener,
        admitted: bool,
        counted: Option<IpAddr>,
    ) {
        if admitted {
            self.budget(limits, listener)
                .0
                .fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(client) = counted {
            self.clients.release(client);
        }
    }
}
