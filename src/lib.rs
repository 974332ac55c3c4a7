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
mod authorize;
mod bus;
mod client;
pub mod config;
mod conn;
mod event;
mod event_loop;
mod history;
mod http;
pub mod logging;
mod metrics;
mod presence;
mod publish;
mod replay;
mod server;
#[cfg(any(test, feature = "internals"))]
mod sim;
mod socket;
mod sse;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod testing;
mod wheel;

pub use authorize::{
    AccessAction, AccessRequest, Authorize, Decision, Grant, Hooks, ObserveStreams, StreamInfo,
};
pub use config::{BusKind, Config, ConfigError, ForwardedHeader, LogFormat};
pub use event::{Error, Event, EventId, PublishError, Stats};
pub use presence::TopicPresence;
pub use replay::{Replay, ReplayFrom, StoredEvent};
pub use server::{Handle, Server};
