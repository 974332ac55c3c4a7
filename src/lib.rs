//! herald: a Server-Sent Events fan-out server.
//!
//! One process holds many open `text/event-stream` connections and pushes every event
//! published to a topic to all of that topic's subscribers, in order, with bounded memory.
//! This crate is both the `herald` binary and a library: build a [`Server`] from a
//! [`Config`], and publish from any thread through a cloneable [`Handle`].
//!
//! ```
//! use herald::{Config, Event, Server};
//!
//! let mut config = Config::default();
//! config.listen = "127.0.0.1:0".parse().unwrap();
//! config.threads = 1;
//! let server = Server::start(config).expect("bind a free port");
//! let handle = server.handle();
//!
//! // Subscribers connect to http://{server.local_addr()}/events?topic=prices.
//! let id = handle
//!     .publish(&Event::new("prices", r#"{"AAPL":187.2}"#).named("tick"))
//!     .expect("publish");
//! assert!(!id.as_str().is_empty());
//! assert_eq!(handle.stats().events_published, 1);
//!
//! server.shutdown();
//! ```
//!
//! The HTTP interface, the semantics of ids, history and resume, and the architecture are
//! described in the repository's README.md and ARCHITECTURE.md.

#![warn(missing_docs)]

mod auth;
#[doc(hidden)]
pub mod bench_core;
mod bus;
mod client;
pub mod config;
mod conn;
mod event_loop;
mod history;
mod http;
pub mod logging;
mod metrics;
mod publish;
mod server;
mod socket;
mod sse;
mod stream;
mod timer;

use std::fmt;
use std::net::SocketAddr;

pub use config::{BusKind, Config, ConfigError, ForwardedHeader};
pub use server::{Handle, Server};

/// One event to publish: its topics, optional name, data and optional `retry:` hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Topics the event goes to; a subscriber of several of them receives it once.
    pub topics: Vec<String>,
    /// The SSE event name (`event:` line); `None` is the default `message` event.
    pub name: Option<String>,
    /// The data. Line breaks (LF, CR or CRLF) become separate `data:` lines, which an
    /// EventSource joins back with LF.
    pub data: String,
    /// A reconnect delay in milliseconds for clients that receive this event.
    pub retry_ms: Option<u32>,
}

impl Event {
    /// An unnamed event with `data` for one topic.
    pub fn new(topic: impl Into<String>, data: impl Into<String>) -> Self {
        Event {
            topics: vec![topic.into()],
            name: None,
            data: data.into(),
            retry_ms: None,
        }
    }

    /// Also sends the event to `topic`.
    pub fn and_topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Sets the event name that EventSource listeners dispatch on.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the reconnect delay hint sent with this event.
    pub fn with_retry_ms(mut self, retry_ms: u32) -> Self {
        self.retry_ms = Some(retry_ms);
        self
    }
}

/// The id the bus assigned to a published event: what subscribers see in `id:` and send
/// back as `Last-Event-ID`. Opaque; ids of one bus increase in publish order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventId(String);

impl EventId {
    /// The id as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a publish was refused. `Display` is a one-line reason, the same text HTTP
/// publishers get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The event names no topic.
    NoTopic,
    /// A topic name is empty, too long or has characters outside the allowed set.
    InvalidTopic,
    /// More topics than `max_topics_per_subscription`.
    TooManyTopics,
    /// The event name is empty, too long, or contains CR, LF or NUL.
    InvalidEventName,
    /// The encoded event is larger than `max_lag_bytes` allows any subscriber to hold.
    TooLarge,
    /// The event loops' inboxes are full; retry shortly.
    Busy,
    /// The server is shutting down.
    ShuttingDown,
    /// The Redis bus cannot reach Redis (or Redis refused the event); retry shortly. The
    /// event may or may not have been stored: a retry can deliver it twice, never zero times.
    Unavailable,
    /// The event name is the configured `gap_event`, which only herald sends.
    ReservedEventName,
    /// The `retry` hint is not whole milliseconds within 0..=86400000.
    InvalidRetry,
    /// The data is larger than `max_publish_bytes`.
    DataTooLarge,
}

impl PublishError {
    /// The one-line reason.
    pub fn reason(self) -> &'static str {
        match self {
            PublishError::NoTopic => "no topic given",
            PublishError::InvalidTopic => {
                "invalid topic name (1..=max_topic_bytes of A-Z a-z 0-9 _ - . : / @ ~)"
            }
            PublishError::TooManyTopics => "too many topics (max_topics_per_subscription)",
            PublishError::InvalidEventName => "invalid event name (1..=64 bytes, no CR, LF or NUL)",
            PublishError::TooLarge => "encoded event exceeds max_lag_bytes",
            PublishError::Busy => "event loops are saturated; retry shortly",
            PublishError::ShuttingDown => "server is shutting down",
            PublishError::Unavailable => "redis is unavailable; retry shortly",
            PublishError::ReservedEventName => "event name is reserved for gap notices (gap_event)",
            PublishError::InvalidRetry => "retry must be milliseconds between 0 and 86400000",
            PublishError::DataTooLarge => "event data exceeds max_publish_bytes",
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PublishError {}

/// A snapshot of live counters, summed over all event loops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Open client connections (streams and plain requests).
    pub connections: u64,
    /// Open event streams.
    pub subscribers: u64,
    /// Events the bus handed to the event loops since start (with the Redis bus: the
    /// stream entries this node read, whichever node published them).
    pub events_published: u64,
    /// Events written in full to a subscriber (one per subscriber per event).
    pub deliveries: u64,
}

/// Why a server could not start.
#[derive(Debug)]
pub enum Error {
    /// A setting is invalid.
    Config(ConfigError),
    /// A listener could not be bound or a thread could not be started.
    Io {
        /// What herald was doing.
        context: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The address is already bound by another socket, in this process or another one;
    /// herald never shares a listening address.
    AddressInUse(SocketAddr),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(error) => error.fmt(f),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::AddressInUse(addr) => write!(
                f,
                "cannot listen on {addr}: the address is already in use (another herald or another program is listening there)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(error) => Some(error),
            Error::Io { source, .. } => Some(source),
            Error::AddressInUse(_) => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(error: ConfigError) -> Self {
        Error::Config(error)
    }
}

/// Entry points for the Criterion benches in `benches/`, the fuzz targets in `fuzz/` and the
/// property tests in `tests/`: thin wrappers over crate internals that return plain values.
/// Not part of the supported API.
#[doc(hidden)]
pub mod bench_support {
    use crate::http::head::{self, Parsed};
    use crate::http::route::{self, Listener, RouteConfig, TopicLimits};
    use crate::publish::{self, BodyFormat, PublishLimits};
    use crate::sse::{self, EventFields};
    use crate::{Event, PublishError};

    /// Encodes one event frame and returns its length.
    pub fn encode_event(id: &str, name: Option<&str>, data: &str) -> usize {
        crate::sse::encode_event(&crate::sse::EventFields {
            id,
            name,
            data,
            retry_ms: None,
        })
        .len()
    }

    /// Parses a request head; returns its length when complete and valid.
    pub fn parse_head(buf: &[u8]) -> Option<usize> {
        match crate::http::head::parse(buf, false) {
            Ok(crate::http::head::Parsed::Complete(request)) => Some(request.head_len),
            _ => None,
        }
    }

    /// A refusal: the status code and the one-line reason the client is sent.
    pub type Refusal = (u16, &'static str);

    /// What [`head_outcome`] found at the start of a buffer.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum HeadOutcome {
        /// The head is incomplete and the buffer has room for more.
        NeedMore,
        /// A complete head, and what routing made of it.
        Complete(HeadSummary),
        /// The head is refused.
        Refused(Refusal),
    }

    /// A complete head reduced to owned values, with the routing decisions taken from it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct HeadSummary {
        /// Bytes of the head, including the blank line.
        pub head_len: usize,
        /// The declared body length, when `Content-Length` was given.
        pub content_length: Option<usize>,
        /// Whether the connection stays open after this request.
        pub keep_alive: bool,
        /// The route on the main listener (demo on), by name, or its refusal.
        pub route: Result<String, Refusal>,
        /// The query read as a subscription (16 topics of up to 128 bytes): its topics.
        pub subscription: Result<Vec<String>, Refusal>,
        /// The bearer token of the `Authorization` header (scheme in any case; `None` for
        /// another scheme or a token with bytes no token has).
        pub bearer: Option<String>,
        /// The `herald_token` cookie.
        pub cookie_token: Option<String>,
        /// The publish body format named by `Content-Type`.
        pub publish_format: Result<PublishFormat, Refusal>,
        /// The client a proxy at 10.0.0.1 (10.0.0.0/8 trusted) names in `X-Forwarded-For`,
        /// then in `Forwarded`.
        pub forwarded_clients: [std::net::IpAddr; 2],
    }

    /// Parses the head at the start of `buf` (`full`: the buffer cannot take more bytes) and,
    /// when it is complete, routes it the way a connection would.
    pub fn head_outcome(buf: &[u8], full: bool) -> HeadOutcome {
        let request = match head::parse(buf, full) {
            Ok(Parsed::NeedMore) => return HeadOutcome::NeedMore,
            Ok(Parsed::Complete(request)) => request,
            Err(error) => return HeadOutcome::Refused(error.answer()),
        };
        let config = RouteConfig {
            publish_listener: false,
            demo: true,
        };
        let limits = TopicLimits {
            per_subscription: crate::config::TOPICS_PER_SUBSCRIPTION_DEFAULT,
            name_bytes: crate::config::TOPIC_BYTES_DEFAULT,
        };
        HeadOutcome::Complete(HeadSummary {
            head_len: request.head_len,
            content_length: request.has_content_length.then_some(request.content_length),
            keep_alive: request.keep_alive,
            route: route::route(request.method, request.path, Listener::Main, config)
                .map(|route| format!("{route:?}"))
                .map_err(|error| error.answer()),
            subscription: route::subscription(request.query, limits)
                .map(|subscription| subscription.topics)
                .map_err(|error| error.answer()),
            bearer: crate::auth::bearer(request.authorization)
                .and_then(Result::ok)
                .map(str::to_owned),
            cookie_token: crate::auth::cookie_token(request.cookie).map(str::to_owned),
            publish_format: publish_format(request.content_type),
            forwarded_clients: forwarded_clients(&request),
        })
    }

    /// What [`HeadSummary::forwarded_clients`] holds.
    fn forwarded_clients(request: &head::Request<'_>) -> [std::net::IpAddr; 2] {
        use crate::client::{client_addr, Cidr};
        use crate::config::ForwardedHeader;
        let peer = std::net::IpAddr::from([10, 0, 0, 1]);
        // A literal block, which parses.
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap_or_else(|_| unreachable!())];
        [
            (ForwardedHeader::XForwardedFor, request.x_forwarded_for),
            (ForwardedHeader::Forwarded, request.forwarded),
        ]
        .map(|(header, lines)| client_addr(peer, &trusted, header, lines.as_slice()))
    }

    /// How a publish body is read (a public mirror of the crate's body format).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PublishFormat {
        /// `application/x-www-form-urlencoded`.
        Form,
        /// `application/json`.
        Json,
        /// The body is the data.
        Raw,
    }

    /// The body format a `Content-Type` names, or its refusal.
    pub fn publish_format(content_type: Option<&str>) -> Result<PublishFormat, Refusal> {
        match publish::body_format(content_type) {
            Ok(BodyFormat::Form) => Ok(PublishFormat::Form),
            Ok(BodyFormat::Json) => Ok(PublishFormat::Json),
            Ok(BodyFormat::Raw) => Ok(PublishFormat::Raw),
            Err(error) => Err(error.answer()),
        }
    }

    /// Reads a `POST /publish` query string and body in `format` into an [`Event`].
    pub fn parse_publish(
        format: PublishFormat,
        query: &str,
        body: &[u8],
    ) -> Result<Event, Refusal> {
        let format = match format {
            PublishFormat::Form => BodyFormat::Form,
            PublishFormat::Json => BodyFormat::Json,
            PublishFormat::Raw => BodyFormat::Raw,
        };
        publish::parse_body(format, query, body).map_err(|error| error.answer())
    }

    /// Validates an event under the default limits; returns its deduplicated topics.
    pub fn prepare_publish(event: &Event) -> Result<Vec<String>, PublishError> {
        let limits = PublishLimits {
            topics_max: crate::config::TOPICS_PER_SUBSCRIPTION_DEFAULT,
            topic_bytes_max: crate::config::TOPIC_BYTES_DEFAULT,
            frame_bytes_max: crate::config::LAG_BYTES_DEFAULT,
            data_bytes_max: crate::config::PUBLISH_BYTES_DEFAULT,
            gap_event: crate::config::GAP_EVENT_DEFAULT.into(),
        };
        let outgoing = publish::prepare(event, &limits)?;
        Ok(outgoing.topics.iter().map(|t| t.to_string()).collect())
    }

    /// Whether `name` may be an event name.
    pub fn event_name_is_valid(name: &str) -> bool {
        sse::check_event_name(name).is_ok()
    }

    /// Encodes one event frame. `name` must pass [`event_name_is_valid`].
    pub fn encode_frame(
        id: &str,
        name: Option<&str>,
        data: &str,
        retry_ms: Option<u32>,
    ) -> Vec<u8> {
        sse::encode_event(&EventFields {
            id,
            name,
            data,
            retry_ms,
        })
        .to_vec()
    }

    /// The length [`encode_frame`] would produce, computed without encoding.
    pub fn encoded_frame_len(
        id: &str,
        name: Option<&str>,
        data: &str,
        retry_ms: Option<u32>,
    ) -> usize {
        sse::encoded_len(&EventFields {
            id,
            name,
            data,
            retry_ms,
        })
    }
}
