//! The values of the public API that are plain data: an [`Event`] to publish, the
//! [`EventId`] the bus gives it, why a publish is refused ([`PublishError`]), a [`Stats`]
//! snapshot, and why a server could not start ([`Error`]). The crate root re-exports them.

use std::fmt;
use std::net::SocketAddr;

use crate::config::ConfigError;

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
pub struct EventId(pub(crate) String);

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
    /// A batch holds more events than `max_batch_events`; none of it was published.
    BatchTooLarge,
    /// Redis stored the event but `WAIT` did not confirm `redis_wait_replicas` replicas
    /// within `redis_wait_timeout`: it may be delivered, or lost in a failover.
    NotReplicated,
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
            PublishError::BatchTooLarge => "batch exceeds max_batch_events",
            PublishError::NotReplicated => {
                "redis did not confirm redis_wait_replicas replicas within redis_wait_timeout; the event may still be delivered"
            }
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
