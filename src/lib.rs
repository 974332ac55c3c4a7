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
mod bus;
mod client;
pub mod config;
mod conn;
mod event_loop;
mod http;
mod metrics;
mod publish;
mod ring;
mod server;
mod socket;
mod sse;
mod timer;
mod topic;

use std::fmt;

pub use config::{Config, ConfigError};
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
    /// Events accepted by the bus since start.
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
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(error) => error.fmt(f),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(error) => Some(error),
            Error::Io { source, .. } => Some(source),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(error: ConfigError) -> Self {
        Error::Config(error)
    }
}

/// Entry points for the Criterion benches in `benches/`; not part of the supported API.
#[doc(hidden)]
pub mod bench_support {
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
}
