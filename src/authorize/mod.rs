//! Access decided by the application: the [`Authorize`] hook an embedder writes in Rust,
//! the `--auth-url` callback that asks an HTTP application the same question, the worker
//! pool that runs either off the event loops, and the [`ObserveStreams`] hook told when
//! streams open and close.
//!
//! A subscription that needs a decision waits parked in its loop (as a resume waits for
//! the bus); the question goes to a bounded queue served by a few worker threads, and the
//! answer comes back through the loop's completion queue. A slow or dead application
//! fills the queue, and what does not fit is refused with `503` at once: the loops never
//! wait for it.
//!
//! - [`pool`]: the workers, their bounded queue, the answer cache;
//! - [`callback`]: the HTTP callback (`--auth-url`);
//! - [`observe`]: the thread that tells an [`ObserveStreams`] hook what happened.

pub(crate) mod callback;
pub(crate) mod observe;
pub(crate) mod pool;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// What a request asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessAction {
    /// Open an event stream (`GET /events`).
    Subscribe,
    /// Publish (`POST /publish`, with `auth_publish`): the grant's topics bound the
    /// topics of the body, which is read after the decision.
    Publish,
}

impl AccessAction {
    /// The name the callback's JSON carries (`"subscribe"`).
    pub fn name(self) -> &'static str {
        match self {
            AccessAction::Subscribe => "subscribe",
            AccessAction::Publish => "publish",
        }
    }
}

/// A request that needs the application's decision: who asks (address and credentials,
/// as they arrived) and for which topics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRequest {
    /// What the request asks to do.
    pub action: AccessAction,
    /// The client: the peer, or the address a trusted proxy names.
    pub client: IpAddr,
    /// The topics (and `prefix*` patterns) asked for, in the request's order. A publish
    /// names the topics of its query (a raw-body publish's), often none: its body is
    /// read after the decision, and its topics must be within the grant's.
    pub topics: Vec<String>,
    /// The `Cookie` header, as sent.
    pub cookie: Option<String>,
    /// The `Authorization` header, as sent.
    pub authorization: Option<String>,
    /// The `token` query parameter of a subscription, decoded.
    pub token: Option<String>,
    /// The `Origin` header, as sent.
    pub origin: Option<String>,
    /// Every header of the request, in order (name as sent, value as lossy UTF-8; at
    /// most 64, within `max_head_bytes`), for a hook that decides on more than the above.
    /// The HTTP callback forwards only `Cookie`, `Authorization` and `Origin`, and the
    /// answer cache does not look at these.
    pub headers: Vec<(String, String)>,
}

/// What the application allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Topic names and `prefix*` patterns the client may use (as in a token's `subscribe`
    /// claim); every topic asked for must be covered, or the request gets `403`. `None`
    /// allows the topics asked for.
    pub topics: Option<Vec<String>>,
    /// When the grant ends: the stream is then sent back with a jittered `retry:` so its
    /// client returns for a fresh decision. `None`: it does not end for this reason.
    pub expires_at: Option<SystemTime>,
}

/// The application's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead, within this grant.
    Allow(Grant),
    /// `401`: the client is not known (no or bad credentials).
    Unauthorized,
    /// `403`: the client is known and may not do this.
    Forbidden,
    /// No decision could be made (the application failed or is unreachable): `503`, and
    /// the client retries.
    Unavailable,
}

impl Decision {
    /// Allow what was asked, with no end.
    pub fn allow() -> Decision {
        Decision::Allow(Grant::default())
    }
}

/// Decides access in the host program. It runs on herald's authorization worker threads,
/// never on an event loop: a call that blocks holds one worker (and, past `auth_timeout`,
/// its client gets `503`), never a loop.
pub trait Authorize: Send + Sync + 'static {
    /// The decision for one request.
    fn authorize(&self, request: &AccessRequest) -> Decision;
}

impl<F> Authorize for F
where
    F: Fn(&AccessRequest) -> Decision + Send + Sync + 'static,
{
    fn authorize(&self, request: &AccessRequest) -> Decision {
        self(request)
    }
}

/// An open stream as an [`ObserveStreams`] hook sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// Unique within the process; the same in a stream's `opened` and `closed`.
    pub id: u64,
    /// The client: the peer, or the address a trusted proxy names.
    pub client: IpAddr,
    /// The subscription's topics and patterns.
    pub topics: Vec<String>,
}

/// Told when streams open and close, on a thread of its own (never an event loop). The
/// notices go through a bounded queue: a hook slower than streams open and close loses
/// notices (counted in `herald_stream_notices_dropped_total`), never delays a stream.
pub trait ObserveStreams: Send + Sync + 'static {
    /// A stream opened.
    fn opened(&self, stream: &StreamInfo);
    /// A stream closed, for the reason `reason` names: `client_closed`, `slow_consumer`,
    /// `stalled`, `lifetime`, `token_expired` (its grant ended), `shutdown`,
    /// `backfill_cut`, `lost_events` or `server_stopped` (as in the access log).
    fn closed(&self, stream: &StreamInfo, reason: &'static str);
}

/// The hooks an embedding program gives [`Server::start_with`](crate::Server::start_with).
#[derive(Clone, Default)]
pub struct Hooks {
    pub(crate) authorize: Option<Arc<dyn Authorize>>,
    pub(crate) observe: Option<Arc<dyn ObserveStreams>>,
}

impl Hooks {
    /// No hooks: what [`Server::start`](crate::Server::start) uses.
    pub fn new() -> Self {
        Hooks::default()
    }

    /// Decide every subscription with `authorize` (in place of `auth_url`, which is then
    /// not called). Tokens are still checked first when a subscribe key is set.
    pub fn authorize(mut self, authorize: impl Authorize) -> Self {
        self.authorize = Some(Arc::new(authorize));
        self
    }

    /// Tell `observe` when streams open and close.
    pub fn observe(mut self, observe: impl ObserveStreams) -> Self {
        self.observe = Some(Arc::new(observe));
        self
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("authorize", &self.authorize.is_some())
            .field("observe", &self.observe.is_some())
            .finish()
    }
}
