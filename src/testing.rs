//! Entry points into crate internals for the Criterion benches in `benches/`, the fuzz
//! targets in `fuzz/` and the property tests in `tests/it/proptest_roundtrip.rs`: thin
//! wrappers that return plain values, and the fan-out core driven without sockets (a topic
//! ring read by cursor; one frame written to many in-memory subscribers through the same
//! `Stream::flush` the event loop uses).
//!
//! Compiled only with the cargo feature `internals` (which herald's own dev-dependency on
//! itself turns on for tests and benches) and hidden from the docs: not a supported API.

use std::io::IoSlice;

use bytes::Bytes;

use crate::conn::stream::{Stream, StreamStart};
use crate::event::{Event, PublishError};
use crate::history::ring::{Ring, Seq};
use crate::history::topics::{HistoryLimits, StreamTopic, SubscriberRef, Topics};
use crate::http::answer::HttpError;
use crate::http::head::{self, Parsed};
use crate::http::route::{self, Listener, RouteConfig, TopicLimits};
use crate::publish::{self, BodyFormat, PublishLimits};
use crate::socket::IoOutcome;
use crate::sse::{self, EventFields};

pub use crate::sim::{simulate, SimFailure, SimOptions, SimStats};

/// Parses a request head; returns its length when complete and valid.
pub fn parse_head(buf: &[u8]) -> Option<usize> {
    match head::parse(buf, false) {
        Ok(Parsed::Complete(request)) => Some(request.head_len),
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
        patterns_max: crate::config::PATTERNS_PER_SUBSCRIPTION_DEFAULT,
        pattern_prefix_min: crate::config::PATTERN_PREFIX_MIN_DEFAULT,
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
    /// `application/x-ndjson`: a batch, one JSON event object per line
    /// ([`parse_publish_batch`]); [`parse_publish`] reads it as a single JSON line.
    Ndjson,
}

/// The body format a `Content-Type` names, or its refusal.
pub fn publish_format(content_type: Option<&str>) -> Result<PublishFormat, Refusal> {
    match publish::body_format(content_type) {
        Ok(BodyFormat::Form) => Ok(PublishFormat::Form),
        Ok(BodyFormat::Json) => Ok(PublishFormat::Json),
        Ok(BodyFormat::Raw) => Ok(PublishFormat::Raw),
        Ok(BodyFormat::Ndjson) => Ok(PublishFormat::Ndjson),
        Err(error) => Err(error.answer()),
    }
}

/// Reads a `POST /publish` query string and body in `format` into an [`Event`].
pub fn parse_publish(format: PublishFormat, query: &str, body: &[u8]) -> Result<Event, Refusal> {
    let format = match format {
        PublishFormat::Form => BodyFormat::Form,
        PublishFormat::Json => BodyFormat::Json,
        PublishFormat::Raw => BodyFormat::Raw,
        PublishFormat::Ndjson => BodyFormat::Ndjson,
    };
    publish::parse_body(format, query, body).map_err(|error| error.answer())
}

/// Reads a batch publish body (`Ndjson`, or `Json` whose top level is an array) of at
/// most `events_max` events, as `POST /publish` does: the events in order, or the refusal
/// of the whole batch (its reason without the line or index the HTTP answer adds).
/// A body that is not a batch (another format, a JSON object) is refused with 415.
pub fn parse_publish_batch(
    format: PublishFormat,
    query: &str,
    body: &[u8],
    events_max: usize,
) -> Result<Vec<Event>, Refusal> {
    let batch = match format {
        PublishFormat::Ndjson => publish::batch::ndjson(query, body, events_max),
        PublishFormat::Json if publish::batch::is_array(body) => {
            publish::batch::array(query, body, events_max)
        }
        _ => return Err(HttpError::UnsupportedMediaType.answer()),
    };
    batch
        .map(|events| events.into_iter().map(|(_, event)| event).collect())
        .map_err(|error| error.answer())
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

/// Encodes one event frame (the bytes every subscriber is sent). `name` must pass
/// [`event_name_is_valid`].
pub fn encode_frame(id: &str, name: Option<&str>, data: &str, retry_ms: Option<u32>) -> Bytes {
    sse::encode_event(&EventFields {
        id,
        name,
        data,
        retry_ms,
    })
}

/// The length [`encode_frame`] would produce, computed without encoding.
pub fn encoded_frame_len(id: &str, name: Option<&str>, data: &str, retry_ms: Option<u32>) -> usize {
    sse::encoded_len(&EventFields {
        id,
        name,
        data,
        retry_ms,
    })
}

/// A ring of `capacity` entries being appended to and read by cursor.
pub struct RingBench {
    ring: Ring,
    next: Seq,
    capacity: usize,
    frame: Bytes,
}

impl RingBench {
    /// A ring that keeps `capacity` frames of `frame_len` bytes.
    pub fn new(capacity: usize, frame_len: usize) -> Self {
        RingBench {
            ring: Ring::new(0),
            next: 1,
            capacity,
            frame: Bytes::from(vec![b'x'; frame_len]),
        }
    }

    /// Appends one frame (evicting the oldest past capacity), then reads the frames after
    /// `behind` entries from the head the way a lagging subscriber does. Returns the bytes
    /// read, so the work cannot be optimised away.
    pub fn publish_and_read(&mut self, behind: u64) -> usize {
        self.ring.push(self.next, self.frame.clone(), 0);
        self.ring.trim(self.capacity, usize::MAX);
        let cursor = self.next.saturating_sub(Seq::from(behind));
        self.next += 1;
        let mut index = self.ring.first_after(cursor);
        let mut read = 0;
        while let Some(entry) = self.ring.get(index) {
            read += entry.frame.len();
            index += 1;
        }
        read + self.ring.lag_bytes(cursor) as usize
    }
}

/// `subscribers` streams on one topic, each written through a writer that accepts
/// everything (no sockets): what one event costs the loop above the kernel.
pub struct FanoutBench {
    topics: Topics,
    streams: Vec<Stream>,
    next: Seq,
    frame: Bytes,
    deliveries: u64,
}

impl FanoutBench {
    /// `subscribers` streams on topic `t`, frames of `frame_len` bytes.
    pub fn new(subscribers: usize, frame_len: usize) -> Self {
        let mut topics = Topics::new(HistoryLimits {
            events: 1_000,
            bytes: 64 << 20,
            total_bytes: 64 << 20,
            ttl_ms: None,
        });
        let streams = (0..subscribers)
            .map(|conn| {
                let (id, position) = topics.subscribe("t", SubscriberRef { conn, slot: 0 });
                let start = StreamStart {
                    topics: Box::new([StreamTopic { id, position }]),
                    preamble: Vec::new(),
                    cursor: 0,
                    gap_floor: 0,
                    partial: false,
                };
                Stream::new(start, 0, 0)
            })
            .collect();
        FanoutBench {
            topics,
            streams,
            next: 1,
            frame: Bytes::from(vec![b'x'; frame_len]),
            deliveries: 0,
        }
    }

    /// Publishes one frame and writes it to every subscriber. Returns the bytes written.
    pub fn publish_one(&mut self) -> usize {
        self.topics.append(self.next, &["t".into()], &self.frame);
        self.next += 1;
        let mut written = 0;
        for stream in &mut self.streams {
            stream.flush(
                &self.topics,
                4,
                0,
                &mut self.deliveries,
                |slices: &[IoSlice<'_>]| {
                    let n: usize = slices.iter().map(|s| s.len()).sum();
                    written += n;
                    IoOutcome::Done(n)
                },
            );
        }
        written
    }
}
