//! A client connection and its states: a plain HTTP exchange (keep-alive, pipelining,
//! publish bodies) or an event stream reading frames from the topic rings by cursor.
//!
//! The logic here is sans-io: the event loop reads bytes into the buffers handed out here,
//! asks what to do next, and writes the bytes handed back. Streams hold a cursor, never a
//! copy of an event; their head buffer is gone once the request head is parsed.

use std::borrow::Cow;
use std::io::IoSlice;

use std::net::IpAddr;

use crate::auth::{self, Claim, Verifier};
use crate::bus::{Bus, Resume};
use crate::client::{client_addr, Cidr, ClientTable};
use crate::config::Config;
use crate::http::answer::{self, HttpError};
use crate::http::head::{self, Method, Parsed, Request};
use crate::http::route::{self, Listener, Route, RouteConfig, TopicLimits};
use crate::publish::{self, BodyFormat, PublishLimits};
use crate::ring::Seq;
use crate::sse::{self, Frame};
use crate::topic::{TopicId, Topics};

/// Frames gathered into one `write_vectored` call. Linux accepts 1024; 64 frames already
/// amortise the syscall, and the iovec array lives on the stack.
pub(crate) const IOVECS_PER_WRITE_MAX: usize = 64;

/// The built-in demo page.
const DEMO_HTML: &str = include_str!("demo.html");

/// What the server knows that a request may need.
pub(crate) struct RequestContext<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// Router settings.
    pub route: RouteConfig,
    /// Subscription limits.
    pub topic_limits: TopicLimits,
    /// Publish limits.
    pub publish_limits: PublishLimits,
    /// The bus that publishes go to.
    pub bus: &'a dyn Bus,
    /// Proxies allowed to name the client.
    pub trusted_proxies: &'a [Cidr],
    /// Connections per client address, across loops.
    pub clients: &'a ClientTable,
    /// Renders the `/metrics` page.
    pub render_metrics: &'a dyn Fn() -> String,
    /// Verifies subscriber tokens, when a subscribe key is set.
    pub subscribe_verifier: Option<&'a Verifier>,
    /// Verifies publisher tokens, when a publish key is set.
    pub publish_verifier: Option<&'a Verifier>,
}

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnInfo {
    /// The listener the connection came in on.
    pub listener: Listener,
    /// The client address counted against `max_connections_per_ip`, if any.
    pub counted: Option<IpAddr>,
}

impl ConnInfo {
    /// Counts the connection for the client this request comes from (the peer, or who a
    /// trusted proxy says), moving the count if a kept-alive proxy connection now speaks
    /// for another client. Returns false when that client is at its limit.
    fn admit_client(
        &mut self,
        ctx: &RequestContext<'_>,
        peer: IpAddr,
        request: &Request<'_>,
    ) -> bool {
        let max = ctx.config.max_connections_per_ip;
        if max == 0 {
            return true;
        }
        let client = client_addr(
            peer,
            ctx.trusted_proxies,
            request.x_forwarded_for,
            request.forwarded,
        );
        if self.counted == Some(client) {
            return true;
        }
        if let Some(previous) = self.counted.take() {
            ctx.clients.release(previous);
        }
        if !ctx.clients.acquire(client, max) {
            return false;
        }
        self.counted = Some(client);
        true
    }
}

/// A request body being received.
struct PendingBody {
    bytes: Vec<u8>,
    filled: usize,
    format: BodyFormat,
    query: String,
    keep_alive: bool,
    cors: String,
    /// Topic patterns the publisher's token allows (`None`: any topic).
    grant: Option<Vec<String>>,
}

/// A plain HTTP exchange: reading request heads and bodies, writing answers in order.
pub(crate) struct Exchange {
    /// Bytes received and not yet consumed live in `inbuf[start..filled]`.
    inbuf: Box<[u8]>,
    start: usize,
    filled: usize,
    body: Option<PendingBody>,
    /// The TCP peer; kept here, not in the connection, because only requests need it.
    peer: IpAddr,
    out: Vec<u8>,
    sent: usize,
    close_after: bool,
    /// The last refusal answered, until the loop counts it.
    refusal: Option<HttpError>,
}

/// What the loop should do for an exchange next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Read more bytes into [`Exchange::read_target`].
    Read,
    /// Write [`Exchange::unsent`].
    Write,
    /// The request opened an event stream.
    Subscribe(StreamRequest),
    /// The last answer is written and the connection must end: shut the write side and
    /// discard input for a moment, so the client reads the answer rather than a reset.
    Linger,
    /// Close the connection now.
    Close,
}

/// A request for an event stream, as parsed from its head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StreamRequest {
    /// Distinct, valid topic names.
    pub topics: Vec<String>,
    /// `Last-Event-ID` header, else the `lastEventId` query parameter.
    pub last_event_id: Option<String>,
    /// CORS header lines for the response.
    pub cors: String,
}

impl Exchange {
    /// A new exchange over a head buffer (from the loop's pool).
    pub(crate) fn new(inbuf: Box<[u8]>, peer: IpAddr) -> Self {
        Exchange {
            inbuf,
            start: 0,
            filled: 0,
            body: None,
            peer,
            out: Vec::new(),
            sent: 0,
            close_after: false,
            refusal: None,
        }
    }

    /// The refusal answered since the last call, for the metrics.
    pub(crate) fn take_refusal(&mut self) -> Option<HttpError> {
        self.refusal.take()
    }

    /// An exchange whose only answer is a refusal (the connection is closed after it).
    pub(crate) fn refused(inbuf: Box<[u8]>, peer: IpAddr, error: HttpError) -> Self {
        let mut exchange = Exchange::new(inbuf, peer);
        exchange.refuse(error, "", false);
        exchange
    }

    /// Gives back the head buffer for reuse.
    pub(crate) fn into_buffer(self) -> Box<[u8]> {
        self.inbuf
    }

    /// Where the next read should go. Body bytes go straight into the body; head bytes
    /// into the bounded head buffer.
    pub(crate) fn read_target(&mut self) -> &mut [u8] {
        if let Some(body) = &mut self.body {
            if self.start == self.filled {
                return &mut body.bytes[body.filled..];
            }
        }
        if self.start > 0 {
            self.inbuf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        &mut self.inbuf[self.filled..]
    }

    /// Records `n` bytes read into the last [`Exchange::read_target`].
    pub(crate) fn on_read(&mut self, n: usize) {
        if let Some(body) = &mut self.body {
            if self.start == self.filled {
                body.filled += n;
                return;
            }
        }
        self.filled += n;
    }

    /// Bytes of the current answer not yet written.
    pub(crate) fn unsent(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// Records `n` answer bytes written. Returns whether the answer is complete.
    pub(crate) fn on_written(&mut self, n: usize) -> bool {
        self.sent += n;
        if self.sent < self.out.len() {
            return false;
        }
        self.out.clear();
        self.sent = 0;
        true
    }

    /// Whether the connection sits between requests: nothing received, nothing to send.
    pub(crate) fn is_idle(&self) -> bool {
        self.start == self.filled && self.body.is_none() && self.out.is_empty()
    }

    /// The connection's deadline passed: a request in progress gets 408; an idle
    /// keep-alive connection, or one that does not read its answer, is just closed.
    pub(crate) fn on_timeout(&mut self) -> Step {
        if self.is_idle() || !self.out.is_empty() {
            return Step::Close;
        }
        self.body = None;
        self.refuse(HttpError::HeadTimeout, "", false)
    }

    /// Decides the next step from the bytes received so far.
    pub(crate) fn step(&mut self, ctx: &RequestContext<'_>, info: &mut ConnInfo) -> Step {
        if !self.out.is_empty() {
            return Step::Write;
        }
        if self.close_after {
            return Step::Linger;
        }
        if self.body.is_some() {
            return self.continue_body(ctx);
        }
        // The parsed request borrows the buffer while the exchange changes state, so the
        // buffer is moved out for the duration and put back before any body is copied.
        let inbuf = std::mem::take(&mut self.inbuf);
        let full = self.start == 0 && self.filled == inbuf.len();
        let step = match head::parse(&inbuf[self.start..self.filled], full) {
            Ok(Parsed::NeedMore) => Step::Read,
            Err(error) => self.refuse(error, "", false),
            Ok(Parsed::Complete(request)) => self.on_head(ctx, info, request),
        };
        self.inbuf = inbuf;
        if self.body.is_some() && self.out.is_empty() {
            return self.continue_body(ctx);
        }
        step
    }

    fn refuse(&mut self, error: HttpError, cors: &str, keep_alive: bool) -> Step {
        let keep_alive = keep_alive && !error.closes();
        self.refusal = Some(error);
        self.out = answer::refusal(error, cors, keep_alive);
        self.close_after = !keep_alive;
        Step::Write
    }

    fn answer(&mut self, bytes: Vec<u8>, keep_alive: bool) -> Step {
        self.out = bytes;
        self.close_after = !keep_alive;
        Step::Write
    }

    fn on_head(
        &mut self,
        ctx: &RequestContext<'_>,
        info: &mut ConnInfo,
        request: Request<'_>,
    ) -> Step {
        let cors = answer::cors_headers(&ctx.config.cors_origins, request.origin);
        let keep_alive = request.keep_alive;
        // The head is consumed whatever the answer; a refusal that keeps the connection
        // open must not parse the same head again.
        self.start += request.head_len;
        if !info.admit_client(ctx, self.peer, &request) {
            return self.refuse(HttpError::TooManyFromClient, &cors, false);
        }
        let has_body = request.content_length > 0 || request.has_transfer_encoding;
        let route = match route::route(request.method, request.path, info.listener, ctx.route) {
            Ok(route) => route,
            // An unread body leaves the stream untrustworthy: answer and close.
            Err(error) => return self.refuse(error, &cors, keep_alive && !has_body),
        };
        if route != Route::Publish && has_body {
            return self.refuse(HttpError::UnexpectedBody, &cors, false);
        }
        let head_only = request.method == Method::Head;
        let step = match route {
            Route::Health => {
                let bytes = answer::response(
                    200,
                    "text/plain; charset=utf-8",
                    &cors,
                    b"ok\n",
                    keep_alive,
                    head_only,
                );
                self.answer(bytes, keep_alive)
            }
            Route::Demo => {
                let bytes = answer::response(
                    200,
                    "text/html; charset=utf-8",
                    "",
                    DEMO_HTML.as_bytes(),
                    keep_alive,
                    head_only,
                );
                self.answer(bytes, keep_alive)
            }
            Route::Preflight => self.answer(answer::preflight(&cors, keep_alive), keep_alive),
            Route::Metrics => {
                let text = (ctx.render_metrics)();
                let bytes = answer::response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    "",
                    text.as_bytes(),
                    keep_alive,
                    head_only,
                );
                self.answer(bytes, keep_alive)
            }
            Route::Events => match route::subscription(request.query, ctx.topic_limits) {
                Ok(subscription) => match authorize_subscription(ctx, &request, &subscription) {
                    Ok(()) => Step::Subscribe(StreamRequest {
                        topics: subscription.topics,
                        last_event_id: request
                            .last_event_id
                            .map(str::to_owned)
                            .or(subscription.last_event_id),
                        cors,
                    }),
                    Err(error) => self.refuse(error, &cors, keep_alive),
                },
                Err(error) => self.refuse(error, &cors, keep_alive),
            },
            Route::Publish => self.start_body(ctx, request, cors),
        };
        step
    }

    fn start_body(&mut self, ctx: &RequestContext<'_>, request: Request<'_>, cors: String) -> Step {
        let keep_alive = request.keep_alive;
        if request.has_transfer_encoding || !request.has_content_length {
            return self.refuse(HttpError::LengthRequired, &cors, false);
        }
        if request.content_length > ctx.config.max_publish_bytes {
            return self.refuse(HttpError::BodyTooLarge, &cors, false);
        }
        let body_unread = request.content_length > 0;
        let grant = match authorize_publisher(ctx, &request) {
            Ok(grant) => grant,
            Err(error) => return self.refuse(error, &cors, keep_alive && !body_unread),
        };
        let format = match publish::body_format(request.content_type) {
            Ok(format) => format,
            Err(error) => return self.refuse(error, &cors, keep_alive && !body_unread),
        };
        let query = request.query.to_owned();
        let expect_continue = request.expect_continue;
        let content_length = request.content_length;
        self.body = Some(PendingBody {
            bytes: vec![0; content_length],
            filled: 0,
            format,
            query,
            keep_alive,
            cors,
            grant,
        });
        let buffered = self.filled - self.start;
        if expect_continue && buffered < content_length {
            self.out = answer::CONTINUE.to_vec();
            return Step::Write;
        }
        Step::Read // The caller copies what is buffered into the body first.
    }

    fn continue_body(&mut self, ctx: &RequestContext<'_>) -> Step {
        let Some(body) = &mut self.body else {
            return Step::Read;
        };
        let take = (self.filled - self.start).min(body.bytes.len() - body.filled);
        body.bytes[body.filled..body.filled + take]
            .copy_from_slice(&self.inbuf[self.start..self.start + take]);
        body.filled += take;
        self.start += take;
        if body.filled < body.bytes.len() {
            return Step::Read;
        }
        let Some(body) = self.body.take() else {
            return Step::Read;
        };
        let json = body.format == BodyFormat::Json;
        let result = publish::parse_body(body.format, &body.query, &body.bytes).and_then(|event| {
            let outgoing =
                publish::prepare(&event, ctx.publish_limits).map_err(HttpError::Publish)?;
            if let Some(patterns) = &body.grant {
                if !auth::allows_all(patterns, outgoing.topics.iter().map(|t| &**t)) {
                    return Err(HttpError::Forbidden);
                }
            }
            ctx.bus.publish(outgoing).map_err(HttpError::Publish)
        });
        match result {
            Ok(id) if json => {
                let payload = serde_json::json!({ "id": id.as_str() }).to_string();
                let bytes = answer::response(
                    200,
                    "application/json",
                    &body.cors,
                    payload.as_bytes(),
                    body.keep_alive,
                    false,
                );
                self.answer(bytes, body.keep_alive)
            }
            Ok(id) => {
                let payload = format!("{id}\n");
                let bytes = answer::response(
                    200,
                    "text/plain; charset=utf-8",
                    &body.cors,
                    payload.as_bytes(),
                    body.keep_alive,
                    false,
                );
                self.answer(bytes, body.keep_alive)
            }
            Err(error) => self.refuse(error, &body.cors, body.keep_alive),
        }
    }
}

/// With a subscribe key, a subscription needs a token (`Authorization: Bearer`, the
/// `token` query parameter, or the `herald_token` cookie) whose `subscribe` claim covers
/// every topic.
fn authorize_subscription(
    ctx: &RequestContext<'_>,
    request: &Request<'_>,
    subscription: &route::Subscription,
) -> Result<(), HttpError> {
    let Some(verifier) = ctx.subscribe_verifier else {
        return Ok(());
    };
    let token = auth::bearer(request.authorization)
        .or(subscription.token.as_deref())
        .or_else(|| auth::cookie_token(request.cookie))
        .ok_or(HttpError::SubscribeUnauthorized)?;
    let patterns = verifier
        .patterns(token, Claim::Subscribe)
        .map_err(|_| HttpError::SubscribeUnauthorized)?;
    if !auth::allows_all(&patterns, subscription.topics.iter().map(String::as_str)) {
        return Err(HttpError::Forbidden);
    }
    Ok(())
}

/// With a publisher token or key, a publish needs `Authorization: Bearer` with the static
/// token (any topic) or a token whose `publish` claim lists the topics, which are checked
/// once the body is read. Returns those patterns (`None`: any topic).
fn authorize_publisher(
    ctx: &RequestContext<'_>,
    request: &Request<'_>,
) -> Result<Option<Vec<String>>, HttpError> {
    let static_token = ctx.config.publish_token.as_deref();
    if static_token.is_none() && ctx.publish_verifier.is_none() {
        return Ok(None);
    }
    let given = auth::bearer(request.authorization);
    if let Some(expected) = static_token {
        if auth::static_token_matches(given, expected) {
            return Ok(None);
        }
    }
    match (ctx.publish_verifier, given) {
        (Some(verifier), Some(token)) => verifier
            .patterns(token, Claim::Publish)
            .map(Some)
            .map_err(|_| HttpError::Unauthorized),
        _ => Err(HttpError::Unauthorized),
    }
}

/// One of a stream's topics and where the stream sits in that topic's subscriber list.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamTopic {
    /// The topic.
    pub id: TopicId,
    /// Position in the topic's subscriber list (kept current when others leave).
    pub position: u32,
}

/// Bytes to send before the next frame: the response head with the `retry:` frame and a
/// gap event, a heartbeat comment, or a parting `retry:` hint. Only set between frames.
struct Preamble {
    bytes: Cow<'static, [u8]>,
    sent: usize,
}

/// The heartbeat: an SSE comment line, ignored by every client.
const HEARTBEAT: &[u8] = b":\n";

/// How a stream that was asked to close is getting there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    /// Finish the frame in flight, then send `retry: <ms>` and close.
    Pending(u32),
    /// The parting hint is queued or sent; close once it is out.
    HintQueued,
}

/// An open event stream.
pub(crate) struct Stream {
    /// The stream's topics.
    pub topics: Box<[StreamTopic]>,
    /// Sequence number of the last frame written in full.
    cursor: Seq,
    /// Evictions at or below this were already reported to the client as a gap.
    gap_floor: Seq,
    /// Bytes of the next frame already written, and that frame's sequence number.
    partial: Option<(Seq, usize)>,
    preamble: Option<Box<Preamble>>,
    closing: Option<Closing>,
    /// The socket returned `WouldBlock`; the stream waits for writable readiness.
    pub blocked: bool,
    /// Loop turn in which the stream was last queued for a flush (dedupes the queue).
    pub queued_turn: u64,
    /// Loop clock (ms) of the last write that moved bytes; heartbeats go to quiet streams.
    pub last_write_ms: u64,
    /// Loop clock (ms) at which the stream's lifetime ends (0: never).
    pub expires_ms: u64,
}

/// Why a stream stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// It fell behind by more than `max_lag_bytes`, or past the history it needed.
    SlowConsumer,
    /// The peer closed, reset, or the socket failed.
    PeerGone,
    /// The stream was told to come back later and closed (lifetime or shutdown).
    Finished,
}

/// Result of a flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Everything available was written.
    Idle,
    /// The socket is full; wait for writable.
    Blocked,
    /// The write budget ran out with more to write; flush again next turn.
    More,
    /// Close the stream.
    End(StreamEnd),
}

/// Where a new stream starts, and what it must be told first.
pub(crate) struct StreamStart {
    /// The stream's topics (registered by the caller).
    pub topics: Box<[StreamTopic]>,
    /// First frames to send: head, retry, maybe gap.
    pub preamble: Vec<u8>,
    /// Cursor: the stream is sent every kept event after it.
    pub cursor: Seq,
    /// Evictions up to here are covered by the gap event (if any).
    pub gap_floor: Seq,
}

/// Decides a new stream's cursor and preamble from its Last-Event-ID.
pub(crate) fn start_stream(
    request: &StreamRequest,
    topics: Box<[StreamTopic]>,
    table: &Topics,
    bus: &dyn Bus,
    config: &Config,
) -> StreamStart {
    let mut preamble = answer::stream_head(&request.cors);
    preamble.extend_from_slice(&sse::encode_retry(config.retry_ms));
    let evicted_max = topics
        .iter()
        .filter_map(|t| table.get(t.id))
        .map(|t| t.ring.evicted_max())
        .max()
        .unwrap_or(0);
    let (cursor, gap) = match request.last_event_id.as_deref() {
        None => (table.head_seq(), false),
        Some(id) => match bus.resume_point(id) {
            Resume::After(seq) => (seq, seq < evicted_max),
            Resume::Unknown => (0, true),
        },
    };
    if gap {
        let id = request.last_event_id.as_deref().unwrap_or("");
        preamble.extend_from_slice(&sse::encode_gap(&config.gap_event, id));
    }
    StreamStart {
        topics,
        preamble,
        cursor,
        gap_floor: if gap { evicted_max } else { 0 },
    }
}

impl Stream {
    /// A stream starting at `start`, at loop time `now_ms`.
    pub(crate) fn new(start: StreamStart, now_ms: u64) -> Self {
        Stream {
            topics: start.topics,
            cursor: start.cursor,
            gap_floor: start.gap_floor,
            partial: None,
            preamble: Some(Box::new(Preamble {
                bytes: Cow::Owned(start.preamble),
                sent: 0,
            })),
            closing: None,
            blocked: false,
            // Not yet queued in any turn: events drained later in the turn that opened
            // the stream must still queue it.
            queued_turn: 0,
            last_write_ms: now_ms,
            expires_ms: 0,
        }
    }

    /// Queues a heartbeat comment if the stream is quiet: nothing in flight and nothing
    /// written for `heartbeat_ms`. Returns whether one was queued.
    pub(crate) fn queue_heartbeat(&mut self, now_ms: u64, heartbeat_ms: u64) -> bool {
        let quiet = self.preamble.is_none()
            && self.partial.is_none()
            && self.closing.is_none()
            && !self.blocked
            && now_ms.saturating_sub(self.last_write_ms) >= heartbeat_ms;
        if quiet {
            self.preamble = Some(Box::new(Preamble {
                bytes: Cow::Borrowed(HEARTBEAT),
                sent: 0,
            }));
        }
        quiet
    }

    /// Asks the stream to finish the frame in flight, send `retry: <retry_ms>` and close.
    pub(crate) fn close_with_hint(&mut self, retry_ms: u32) {
        if self.closing.is_none() {
            self.closing = Some(Closing::Pending(retry_ms));
        }
    }

    /// Whether every topic still holds all events after the cursor (or the gap covered them).
    fn covered(&self, table: &Topics) -> bool {
        let floor = self.cursor.max(self.gap_floor);
        self.topics.iter().all(|t| {
            table
                .get(t.id)
                .is_some_and(|topic| topic.ring.covers(floor))
        })
    }

    /// Bytes this stream is behind the newest event (frames shared by several of its
    /// topics count once per topic: an over-estimate, never an under-estimate).
    pub(crate) fn lag_bytes(&self, table: &Topics) -> Option<u64> {
        if !self.covered(table) {
            return None;
        }
        let mut lag: u64 = self
            .topics
            .iter()
            .filter_map(|t| table.get(t.id))
            .map(|topic| topic.ring.lag_bytes(self.cursor))
            .sum();
        if let Some((_, offset)) = self.partial {
            lag = lag.saturating_sub(offset as u64);
        }
        if let Some(preamble) = &self.preamble {
            lag += (preamble.bytes.len() - preamble.sent) as u64;
        }
        Some(lag)
    }

    /// Whether the stream is further behind than `lag_max` allows (or past the history).
    pub(crate) fn too_slow(&self, table: &Topics, lag_max: usize) -> bool {
        self.lag_bytes(table).is_none_or(|lag| lag > lag_max as u64)
    }

    /// Writes as much as the socket takes, up to `writes_max` calls. `write` is one
    /// `write_vectored` on the stream's socket, already classified.
    pub(crate) fn flush(
        &mut self,
        table: &Topics,
        writes_max: usize,
        now_ms: u64,
        deliveries: &mut u64,
        mut write: impl FnMut(&[IoSlice<'_>]) -> crate::socket::IoOutcome,
    ) -> Flushed {
        use crate::socket::IoOutcome;
        for _ in 0..writes_max {
            if !self.covered(table) {
                return Flushed::End(StreamEnd::SlowConsumer);
            }
            let mut frames: [(Seq, usize); IOVECS_PER_WRITE_MAX] = [(0, 0); IOVECS_PER_WRITE_MAX];
            let mut slices: [IoSlice<'_>; IOVECS_PER_WRITE_MAX] =
                [IoSlice::new(&[]); IOVECS_PER_WRITE_MAX];
            let mut count = 0;
            if let Some(preamble) = &self.preamble {
                slices[0] = IoSlice::new(&preamble.bytes[preamble.sent..]);
                count = 1;
            }
            let mut stale_partial = false;
            let partial = self.partial;
            let first_slot = count;
            // A closing stream only finishes the frame in flight.
            let frames_max = match (self.closing, partial) {
                (None, _) => IOVECS_PER_WRITE_MAX,
                (Some(_), Some(_)) => first_slot + 1,
                (Some(_), None) => first_slot,
            };
            for_each_after(table, &self.topics, self.cursor, |seq, frame| {
                if count >= frames_max {
                    return false;
                }
                let offset = match partial {
                    Some((partial_seq, offset)) if count == first_slot => {
                        if partial_seq != seq {
                            stale_partial = true;
                            return false;
                        }
                        offset
                    }
                    _ => 0,
                };
                slices[count] = IoSlice::new(&frame[offset..]);
                frames[count] = (seq, frame.len() - offset);
                count += 1;
                count < IOVECS_PER_WRITE_MAX
            });
            if stale_partial {
                return Flushed::End(StreamEnd::SlowConsumer);
            }
            if count == 0 {
                match self.closing {
                    None => return Flushed::Idle,
                    Some(Closing::HintQueued) => return Flushed::End(StreamEnd::Finished),
                    Some(Closing::Pending(retry_ms)) => {
                        self.preamble = Some(Box::new(Preamble {
                            bytes: Cow::Owned(sse::encode_retry(retry_ms).to_vec()),
                            sent: 0,
                        }));
                        self.closing = Some(Closing::HintQueued);
                        continue;
                    }
                }
            }
            let total: usize = slices[..count].iter().map(|s| s.len()).sum();
            match write(&slices[..count]) {
                IoOutcome::Done(n) => {
                    self.last_write_ms = now_ms;
                    self.advance(n, &frames[first_slot..count], deliveries);
                    if n == total && count < frames_max && self.closing.is_none() {
                        return Flushed::Idle;
                    }
                }
                IoOutcome::WouldBlock => return Flushed::Blocked,
                IoOutcome::PeerClosed | IoOutcome::Failed(_) => {
                    return Flushed::End(StreamEnd::PeerGone)
                }
            }
        }
        Flushed::More
    }

    fn advance(&mut self, mut n: usize, frames: &[(Seq, usize)], deliveries: &mut u64) {
        if let Some(preamble) = &mut self.preamble {
            let take = n.min(preamble.bytes.len() - preamble.sent);
            preamble.sent += take;
            n -= take;
            if preamble.sent < preamble.bytes.len() {
                return;
            }
            self.preamble = None;
        }
        for &(seq, remaining) in frames {
            if n >= remaining {
                n -= remaining;
                self.cursor = seq;
                self.partial = None;
                *deliveries += 1;
            } else {
                if n > 0 {
                    let done = self.partial.map_or(0, |(_, offset)| offset);
                    self.partial = Some((seq, done + n));
                }
                return;
            }
        }
    }
}

/// Calls `visit` with every kept frame after `cursor` across `topics`, in sequence order,
/// each event once, until `visit` returns false.
pub(crate) fn for_each_after<'t>(
    table: &'t Topics,
    topics: &[StreamTopic],
    cursor: Seq,
    mut visit: impl FnMut(Seq, &'t Frame) -> bool,
) {
    if let [only] = topics {
        let Some(topic) = table.get(only.id) else {
            return;
        };
        let mut index = topic.ring.first_after(cursor);
        while let Some(entry) = topic.ring.get(index) {
            if !visit(entry.seq, &entry.frame) {
                return;
            }
            index += 1;
        }
        return;
    }
    // A k-way merge over the topics' rings; k is at most TOPICS_PER_SUBSCRIPTION_MAX.
    let mut positions = [0usize; crate::config::TOPICS_PER_SUBSCRIPTION_MAX];
    let rings: Vec<_> = topics
        .iter()
        .filter_map(|t| table.get(t.id).map(|topic| &topic.ring))
        .collect();
    for (ring, position) in rings.iter().zip(positions.iter_mut()) {
        *position = ring.first_after(cursor);
    }
    loop {
        let mut next: Option<(Seq, &'t Frame)> = None;
        for (ring, &position) in rings.iter().zip(positions.iter()) {
            if let Some(entry) = ring.get(position) {
                if next.is_none_or(|(seq, _)| entry.seq < seq) {
                    next = Some((entry.seq, &entry.frame));
                }
            }
        }
        let Some((seq, frame)) = next else {
            return;
        };
        for (ring, position) in rings.iter().zip(positions.iter_mut()) {
            if ring.get(*position).is_some_and(|entry| entry.seq == seq) {
                *position += 1;
            }
        }
        if !visit(seq, frame) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::IoOutcome;
    use crate::topic::{HistoryLimits, SubscriberRef};
    use bytes::Bytes;

    fn table() -> Topics {
        Topics::new(HistoryLimits {
            events: 100,
            bytes: 1 << 20,
            total_bytes: 1 << 24,
        })
    }

    fn subscribe(table: &mut Topics, names: &[&str]) -> Box<[StreamTopic]> {
        names
            .iter()
            .enumerate()
            .map(|(slot, name)| {
                let (id, position) = table.subscribe(
                    name,
                    SubscriberRef {
                        conn: 0,
                        slot: slot as u16,
                    },
                );
                StreamTopic { id, position }
            })
            .collect()
    }

    fn frame(seq: Seq) -> Frame {
        Bytes::from(format!("id: {seq}\ndata: x\n\n"))
    }

    #[test]
    fn merge_visits_union_once_in_order() {
        let mut table = table();
        let topics = subscribe(&mut table, &["a", "b"]);
        table.append(1, &["a".into()], &frame(1));
        table.append(2, &["a".into(), "b".into()], &frame(2));
        table.append(3, &["b".into()], &frame(3));
        table.append(4, &["c".into()], &frame(4));
        let mut seen = Vec::new();
        for_each_after(&table, &topics, 0, |seq, _| {
            seen.push(seq);
            true
        });
        assert_eq!(seen, [1, 2, 3]);
        seen.clear();
        for_each_after(&table, &topics, 2, |seq, _| {
            seen.push(seq);
            true
        });
        assert_eq!(seen, [3]);
    }

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut table = table();
        let topics = subscribe(&mut table, &["a"]);
        for seq in 1..=3 {
            table.append(seq, &["a".into()], &frame(seq));
        }
        let mut stream = Stream::new(
            StreamStart {
                topics,
                preamble: b"HEAD".to_vec(),
                cursor: 0,
                gap_floor: 0,
            },
            0,
        );
        let mut wire = Vec::new();
        let mut deliveries = 0;
        // A socket that takes 5 bytes per call, then blocks every other call.
        let mut calls = 0;
        loop {
            let outcome = stream.flush(&table, 4, 0, &mut deliveries, |slices| {
                calls += 1;
                if calls % 2 == 0 {
                    return IoOutcome::WouldBlock;
                }
                let mut budget = 5;
                for slice in slices {
                    let take = budget.min(slice.len());
                    wire.extend_from_slice(&slice[..take]);
                    budget -= take;
                }
                IoOutcome::Done(5 - budget)
            });
            if outcome == Flushed::Idle {
                break;
            }
            assert!(calls < 100);
        }
        let expected: Vec<u8> = [&b"HEAD"[..], &frame(1), &frame(2), &frame(3)].concat();
        assert_eq!(wire, expected);
        assert_eq!(deliveries, 3);
        assert_eq!(stream.lag_bytes(&table), Some(0));
    }

    #[test]
    fn evicted_history_ends_a_lagging_stream() {
        let mut table = Topics::new(HistoryLimits {
            events: 2,
            bytes: 1 << 20,
            total_bytes: 1 << 24,
        });
        let topics = subscribe(&mut table, &["a"]);
        let stream = Stream::new(
            StreamStart {
                topics,
                preamble: Vec::new(),
                cursor: 0,
                gap_floor: 0,
            },
            0,
        );
        table.append(1, &["a".into()], &frame(1));
        assert!(!stream.too_slow(&table, 1000));
        assert!(stream.too_slow(&table, 5));
        for seq in 2..=3 {
            table.append(seq, &["a".into()], &frame(seq));
        }
        assert_eq!(stream.lag_bytes(&table), None);
    }

    /// Feeds `input` to a fresh exchange in one read and returns every answer byte it
    /// writes, and the final step.
    fn exchange(config: &Config, input: &[u8]) -> (String, Step) {
        let bus = crate::bus::embedded::EmbeddedBus::new(crate::bus::Fanout::new());
        let ctx = RequestContext {
            config,
            route: RouteConfig {
                publish_listener: false,
                demo: true,
            },
            topic_limits: TopicLimits {
                per_subscription: 4,
                name_bytes: 32,
            },
            publish_limits: PublishLimits {
                topics_max: 4,
                topic_bytes_max: 32,
                frame_bytes_max: 1 << 20,
            },
            bus: &bus,
            trusted_proxies: &[],
            clients: &ClientTable::new(),
            render_metrics: &String::new,
            subscribe_verifier: None,
            publish_verifier: None,
        };
        let mut info = ConnInfo {
            listener: Listener::Main,
            counted: None,
        };
        let mut exchange = Exchange::new(
            vec![0; 1024].into_boxed_slice(),
            IpAddr::from([127, 0, 0, 1]),
        );
        let mut input = input;
        let mut written = Vec::new();
        loop {
            match exchange.step(&ctx, &mut info) {
                Step::Read if !input.is_empty() => {
                    let target = exchange.read_target();
                    let n = target.len().min(input.len());
                    target[..n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    exchange.on_read(n);
                }
                Step::Write => {
                    written.extend_from_slice(exchange.unsent());
                    let n = exchange.unsent().len();
                    exchange.on_written(n);
                }
                step => return (String::from_utf8(written).unwrap(), step),
            }
        }
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let config = Config::default();
        let (out, step) = exchange(
            &config,
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nPOST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let statuses: Vec<&str> = out.lines().filter(|l| l.starts_with("HTTP/1.1")).collect();
        assert_eq!(
            statuses,
            [
                "HTTP/1.1 404 Not Found",
                "HTTP/1.1 200 OK",
                "HTTP/1.1 200 OK"
            ]
        );
        assert!(out.ends_with("ok\n"), "{out}");
        assert_eq!(step, Step::Read);
    }

    #[test]
    fn body_larger_than_the_head_buffer_and_expect_continue() {
        let config = Config::default();
        let data = "x".repeat(5000);
        let request = format!(
            "POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n{data}"
        );
        let (out, _) = exchange(&config, request.as_bytes());
        assert!(
            out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            "{out}"
        );
    }

    #[test]
    fn subscribe_step_carries_header_id_over_query_id() {
        let config = Config::default();
        let (_, step) = exchange(
            &config,
            b"GET /events?topic=a&topic=b&lastEventId=q HTTP/1.1\r\nHost: x\r\nLast-Event-ID: h\r\n\r\n",
        );
        assert_eq!(
            step,
            Step::Subscribe(StreamRequest {
                topics: vec!["a".into(), "b".into()],
                last_event_id: Some("h".into()),
                cors: String::new(),
            })
        );
    }
}
