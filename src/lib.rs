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
mod event;
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

pub use config::{BusKind, Config, ConfigError, ForwardedHeader};
pub use event::{Error, Event, EventId, PublishError, Stats};
pub use server::{Handle, Server};

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
