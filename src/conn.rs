//! A client connection before it streams: the plain HTTP exchange (keep-alive,
//! pipelining, publish bodies, tokens), who the client is, and the request that turns it
//! into an event stream (see `stream.rs`).
//!
//! Sans-io: the event loop reads bytes into the buffers handed out here, asks what to do
//! next, and writes the bytes handed back. The head buffer is given back once a stream
//! starts.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::{self, Claim, TokenError, Verifier};
use crate::bus::{Backfill, Bus, Submitted, Ticket};
use crate::client::{client_addr, client_key, Cidr, ClientTable};
use crate::config::{ForwardedHeader, Limits};
use crate::http::answer::{self, HttpError};
use crate::http::head::{self, Method, Parsed, Request};
use crate::http::route::{self, Listener, Route};
use crate::publish::{self, BodyFormat};

/// Answers to pipelined requests gathered before they are written; past this the
/// exchange writes before parsing the next request, so the buffer stays bounded.
const ANSWERS_BATCH_BYTES_MAX: usize = 16 * 1024;
/// Pipelined publishes of one connection the bus may be working on at once (the Redis
/// bus answers them in order, from one pipeline). Past this the exchange reads no further
/// request until answers come back, which bounds what a connection can queue.
const PUBLISHES_IN_FLIGHT_MAX: usize = 64;
/// Bytes of ready answers held behind a publish the bus still owes (a client may pipeline
/// other requests behind its publishes). Past this the exchange reads no further request
/// until the bus answers, so a connection cannot make the server hold answers unbounded.
const QUEUED_ANSWER_BYTES_MAX: usize = 64 * 1024;

/// The built-in demo page.
const DEMO_HTML: &str = include_str!("demo.html");

/// What the server knows that a request may need.
pub(crate) struct RequestContext<'a> {
    /// The limits in force (routes, topics, publishes, bodies, connections per client).
    pub limits: &'a Limits,
    /// Origins allowed by CORS (`cors_origins`).
    pub cors_origins: &'a [String],
    /// The header a trusted proxy names the client in (`forwarded_header`).
    pub forwarded_header: ForwardedHeader,
    /// The static publish token (`publish_token`), if set.
    pub publish_token: Option<&'a str>,
    /// The bus that publishes go to.
    pub bus: &'a dyn Bus,
    /// Proxies allowed to name the client.
    pub trusted_proxies: &'a [Cidr],
    /// Connections per client address, across loops.
    pub clients: &'a ClientTable,
    /// Renders the `/metrics` page.
    pub render_metrics: &'a dyn Fn() -> String,
    /// Index of the loop handling the request.
    pub loop_index: usize,
    /// The connection's slab key, for requests the bus answers later.
    pub conn: usize,
    /// Source of ticket serials, unique across the server.
    pub serials: &'a AtomicU64,
    /// Verifies subscriber tokens, when a subscribe key is set.
    pub subscribe_verifier: Option<&'a Verifier>,
    /// Verifies publisher tokens, when a publish key is set.
    pub publish_verifier: Option<&'a Verifier>,
    /// Wall-clock time of this loop turn (Unix milliseconds), for token `exp` and `nbf`.
    pub now_unix_ms: u64,
}

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnInfo {
    /// The listener the connection came in on.
    pub listener: Listener,
    /// The client key (see `client::client_key`) counted against
    /// `max_connections_per_ip`, if any. Each key counted is released once: when a
    /// kept-alive proxy connection starts speaking for another client, or at close.
    pub counted: Option<IpAddr>,
}

impl ConnInfo {
    /// Counts the connection for the client a trusted proxy names, moving the count if a
    /// kept-alive proxy connection now speaks for another client. Returns false when that
    /// client is at its limit. Other peers were counted by their own address at accept
    /// (see the event loop's admission), and the publish listener has its own budget.
    fn admit_client(
        &mut self,
        ctx: &RequestContext<'_>,
        peer: IpAddr,
        request: &Request<'_>,
    ) -> bool {
        let Some(max) = ctx.limits.connections_per_ip_max else {
            return true;
        };
        if self.listener == Listener::Publish
            || !ctx.trusted_proxies.iter().any(|cidr| cidr.contains(peer))
        {
            return true;
        }
        let client = request_client(ctx, peer, request);
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

/// The key a request's client is counted under: the address a trusted proxy names (or
/// the peer), grouped by `client_key`. Admission and the bus's fair share of resumes use
/// this one reading.
fn request_client(ctx: &RequestContext<'_>, peer: IpAddr, request: &Request<'_>) -> IpAddr {
    let lines = match ctx.forwarded_header {
        ForwardedHeader::XForwardedFor => request.x_forwarded_for,
        ForwardedHeader::Forwarded => request.forwarded,
    };
    let client = client_addr(
        peer,
        ctx.trusted_proxies,
        ctx.forwarded_header,
        lines.as_slice(),
    );
    client_key(client, ctx.limits.ipv6_prefix_bits)
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

/// How to answer a publish once the bus has.
struct PublishReply {
    json: bool,
    keep_alive: bool,
    cors: String,
}

/// An answer queued behind a publish the bus has not answered yet: answers go out in
/// request order, whatever order they are ready in.
enum Queued {
    /// The bus's answer to the publish with this ticket serial.
    Publish { serial: u64, reply: PublishReply },
    /// An answer that is ready.
    Ready(Vec<u8>),
}

/// A resuming subscription whose missed events the bus is fetching; the exchange reads
/// nothing more, since the connection becomes a stream.
struct Resuming {
    serial: u64,
    request: StreamRequest,
    /// What earlier fetches for it brought.
    so_far: Option<Backfill>,
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
    /// Refusals answered since the loop last counted them (one `step` can answer many
    /// pipelined requests; bounded by the answers one step batches).
    refusals: Vec<HttpError>,
    /// Answers waiting for the oldest publish the bus has not answered; empty otherwise.
    queued: VecDeque<Queued>,
    /// Publishes in `queued` the bus has not answered.
    in_flight: usize,
    /// Bytes of the ready answers in `queued`.
    queued_bytes: usize,
    /// A subscription waiting for its backfill.
    resuming: Option<Box<Resuming>>,
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
    /// Wait: the bus answers a request of this connection later.
    Await,
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
    /// When the subscriber's token stops being accepted (Unix milliseconds: `exp` plus the
    /// leeway); the stream is sent back to reconnect then.
    pub token_until_unix_ms: Option<u64>,
    /// The client key (see `client_key`) the per-address limit counts: a resume's fetch
    /// from the bus waits in this client's turn.
    pub client: IpAddr,
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
            refusals: Vec::new(),
            queued: VecDeque::new(),
            in_flight: 0,
            queued_bytes: 0,
            resuming: None,
        }
    }

    /// The refusals answered since the last call, for the metrics.
    pub(crate) fn take_refusals(&mut self) -> impl Iterator<Item = HttpError> + '_ {
        self.refusals.drain(..)
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
        self.start == self.filled
            && self.body.is_none()
            && self.out.is_empty()
            && self.queued.is_empty()
            && self.resuming.is_none()
    }

    /// Whether the bus owes this exchange an answer.
    fn waiting_on_bus(&self) -> bool {
        self.in_flight > 0 || self.resuming.is_some()
    }

    /// Parks a subscription until the bus has fetched what it missed.
    pub(crate) fn await_resume(
        &mut self,
        serial: u64,
        request: StreamRequest,
        so_far: Option<Backfill>,
    ) {
        self.resuming = Some(Box::new(Resuming {
            serial,
            request,
            so_far,
        }));
    }

    /// The parked subscription the bus answered, and what earlier fetches brought, if
    /// `serial` is its ticket.
    pub(crate) fn take_resume(&mut self, serial: u64) -> Option<(StreamRequest, Option<Backfill>)> {
        if self.resuming.as_ref()?.serial != serial {
            return None;
        }
        let resuming = *self.resuming.take()?;
        Some((resuming.request, resuming.so_far))
    }

    /// Refuses a subscription that could not start (its missed events could not be
    /// fetched). The connection closes after the answer.
    pub(crate) fn refuse_stream(&mut self, error: HttpError, request: &StreamRequest) {
        self.refuse(error, &request.cors, false);
    }

    /// The bus answered the publish with ticket `serial`: its answer takes its place in
    /// line, and the answers now ready at the front go out. Returns whether the answer was
    /// for this exchange (its slot may have been reused), and the refusal it carried.
    pub(crate) fn on_published(
        &mut self,
        serial: u64,
        result: Result<crate::EventId, crate::PublishError>,
    ) -> (bool, Option<HttpError>) {
        let Some(slot) = self
            .queued
            .iter_mut()
            .find(|q| matches!(q, Queued::Publish { serial: s, .. } if *s == serial))
        else {
            return (false, None);
        };
        let Queued::Publish { reply, .. } = slot else {
            return (false, None);
        };
        let (bytes, refusal) = publish_answer(result, reply);
        self.queued_bytes += bytes.len();
        *slot = Queued::Ready(bytes);
        self.in_flight -= 1;
        while let Some(Queued::Ready(_)) = self.queued.front() {
            if let Some(Queued::Ready(bytes)) = self.queued.pop_front() {
                self.queued_bytes -= bytes.len();
                self.out.extend_from_slice(&bytes);
            }
        }
        (true, refusal)
    }

    /// The connection's deadline passed: a request in progress gets 408; an idle
    /// keep-alive connection, or one that does not read its answer, is just closed. A
    /// request at the bus is waited for (the bus answers within its own timeouts).
    pub(crate) fn on_timeout(&mut self) -> Step {
        if self.waiting_on_bus() {
            return Step::Await;
        }
        if self.is_idle() || !self.out.is_empty() {
            return Step::Close;
        }
        self.body = None;
        self.refuse(HttpError::HeadTimeout, "", false)
    }

    /// Decides the next step from the bytes received so far.
    pub(crate) fn step(&mut self, ctx: &RequestContext<'_>, info: &mut ConnInfo) -> Step {
        loop {
            // Ready answers go out while the bus works; nothing more is read meanwhile
            // when a stream waits for its backfill or too many publishes are in flight.
            let wait = if self.out.is_empty() {
                Step::Await
            } else {
                Step::Write
            };
            if self.resuming.is_some()
                || self.in_flight >= PUBLISHES_IN_FLIGHT_MAX
                || self.queued_bytes >= QUEUED_ANSWER_BYTES_MAX
            {
                return wait;
            }
            if self.close_after {
                return match (self.out.is_empty(), self.queued.is_empty()) {
                    (false, _) => Step::Write,
                    (true, false) => Step::Await,
                    (true, true) => Step::Linger,
                };
            }
            // Answers to pipelined requests already received go out in one write.
            let nothing_buffered = self.start == self.filled && self.body.is_none();
            if !self.out.is_empty()
                && (nothing_buffered || self.out.len() >= ANSWERS_BATCH_BYTES_MAX)
            {
                return Step::Write;
            }
            let progress = (self.out.len(), self.queued.len());
            match self.next_request(ctx, info) {
                Step::Write if (self.out.len(), self.queued.len()) != progress => continue,
                Step::Read | Step::Await if !self.out.is_empty() => return Step::Write,
                step => return step,
            }
        }
    }

    /// Queues an answer behind the publishes the bus still owes, or sends it with the
    /// next write when it owes none.
    fn emit(&mut self, bytes: &[u8]) {
        if self.queued.is_empty() {
            self.out.extend_from_slice(bytes);
        } else {
            self.queued_bytes += bytes.len();
            self.queued.push_back(Queued::Ready(bytes.to_vec()));
        }
    }

    /// Advances the request being received: the body in progress, or the next head.
    fn next_request(&mut self, ctx: &RequestContext<'_>, info: &mut ConnInfo) -> Step {
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
        if self.body.is_some() {
            return self.continue_body(ctx); // Copy what is buffered of the body.
        }
        step
    }

    fn refuse(&mut self, error: HttpError, cors: &str, keep_alive: bool) -> Step {
        let keep_alive = keep_alive && !error.closes();
        self.refusals.push(error);
        self.emit(&answer::refusal(error, cors, keep_alive));
        self.close_after = !keep_alive;
        Step::Write
    }

    fn answer(&mut self, bytes: Vec<u8>, keep_alive: bool) -> Step {
        self.emit(&bytes);
        self.close_after = !keep_alive;
        Step::Write
    }

    fn on_head(
        &mut self,
        ctx: &RequestContext<'_>,
        info: &mut ConnInfo,
        request: Request<'_>,
    ) -> Step {
        let cors = answer::cors_headers(ctx.cors_origins, request.origin);
        let keep_alive = request.keep_alive;
        // The head is consumed whatever the answer; a refusal that keeps the connection
        // open must not parse the same head again.
        self.start += request.head_len;
        if !info.admit_client(ctx, self.peer, &request) {
            return self.refuse(HttpError::TooManyFromClient, &cors, false);
        }
        let has_body = request.content_length > 0 || request.has_transfer_encoding;
        let route = match route::route(
            request.method,
            request.path,
            info.listener,
            ctx.limits.route,
        ) {
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
            Route::Events if !self.out.is_empty() || !self.queued.is_empty() => {
                // Earlier pipelined answers go out before the stream takes the connection:
                // un-consume the head and parse it again once they are written.
                self.start -= request.head_len;
                if self.out.is_empty() {
                    Step::Await
                } else {
                    Step::Write
                }
            }
            Route::Events => match route::subscription(request.query, ctx.limits.topics) {
                Ok(subscription) => match authorize_subscription(ctx, &request, &subscription) {
                    Ok(token_until_unix_ms) => Step::Subscribe(StreamRequest {
                        topics: subscription.topics,
                        // An empty id is no id (EventSource never sends one).
                        last_event_id: request
                            .last_event_id
                            .map(str::to_owned)
                            .or(subscription.last_event_id)
                            .filter(|id| !id.is_empty()),
                        cors,
                        token_until_unix_ms,
                        client: request_client(ctx, self.peer, &request),
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
        if request.content_length > ctx.limits.publish_body_bytes_max {
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
            self.emit(answer::CONTINUE);
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
        let reply = PublishReply {
            json: body.format == BodyFormat::Json,
            keep_alive: body.keep_alive,
            cors: body.cors,
        };
        let event = match publish::parse_body(body.format, &body.query, &body.bytes) {
            Ok(event) => event,
            Err(error) => return self.refuse(error, &reply.cors, reply.keep_alive),
        };
        let outgoing = match publish::prepare(&event, &ctx.limits.publish) {
            Ok(outgoing) => outgoing,
            Err(error) => {
                return self.refuse(HttpError::Publish(error), &reply.cors, reply.keep_alive)
            }
        };
        if let Some(patterns) = &body.grant {
            if !auth::allows_all(patterns, outgoing.topics.iter().map(|t| &**t)) {
                return self.refuse(HttpError::Forbidden, &reply.cors, reply.keep_alive);
            }
        }
        let serial = ctx.serials.fetch_add(1, Ordering::Relaxed);
        let ticket = Ticket {
            loop_index: ctx.loop_index,
            conn: ctx.conn,
            serial,
        };
        match ctx.bus.publish(outgoing, Some(ticket)) {
            Submitted::Done(result) => {
                let (bytes, refusal) = publish_answer(result, &reply);
                self.refusals.extend(refusal);
                self.answer(bytes, reply.keep_alive)
            }
            Submitted::Pending => {
                // The next pipelined request is read meanwhile; the answer keeps its place.
                self.close_after = !reply.keep_alive;
                self.queued.push_back(Queued::Publish { serial, reply });
                self.in_flight += 1;
                Step::Write
            }
        }
    }
}

/// The answer to a publish: its id (plain text, or JSON for a JSON body) or the refusal,
/// which is also returned for the metrics. A refused publish keeps the connection open.
fn publish_answer(
    result: Result<crate::EventId, crate::PublishError>,
    reply: &PublishReply,
) -> (Vec<u8>, Option<HttpError>) {
    let id = match result {
        Ok(id) => id,
        Err(error) => {
            let error = HttpError::Publish(error);
            return (
                answer::refusal(error, &reply.cors, reply.keep_alive),
                Some(error),
            );
        }
    };
    let (content_type, payload) = if reply.json {
        (
            "application/json",
            serde_json::json!({ "id": id.as_str() }).to_string(),
        )
    } else {
        ("text/plain; charset=utf-8", format!("{id}\n"))
    };
    let bytes = answer::response(
        200,
        content_type,
        &reply.cors,
        payload.as_bytes(),
        reply.keep_alive,
        false,
    );
    (bytes, None)
}

/// With a subscribe key, a subscription needs a token (see [`auth::subscriber_token`] for
/// where it is read) whose `subscribe` claim covers every topic. Returns when the token
/// stops being accepted (Unix milliseconds), which ends the stream.
fn authorize_subscription(
    ctx: &RequestContext<'_>,
    request: &Request<'_>,
    subscription: &route::Subscription,
) -> Result<Option<u64>, HttpError> {
    let Some(verifier) = ctx.subscribe_verifier else {
        return Ok(None);
    };
    let token = auth::subscriber_token(
        request.authorization,
        subscription.token.as_deref(),
        request.cookie,
    )
    .map_err(HttpError::Unauthorized)?;
    let grant = verifier
        .grant(token, Claim::Subscribe, ctx.now_unix_ms)
        .map_err(HttpError::Unauthorized)?;
    if !auth::allows_all(
        &grant.patterns,
        subscription.topics.iter().map(String::as_str),
    ) {
        return Err(HttpError::Forbidden);
    }
    Ok(grant.until_unix_ms)
}

/// With a publisher token or key, a publish needs `Authorization: Bearer` with the static
/// token (any topic) or a token whose `publish` claim lists the topics, which are checked
/// once the body is read. Returns those patterns (`None`: any topic). A publish is
/// checked once, when it arrives; a kept-alive connection presents its token again with
/// every request.
fn authorize_publisher(
    ctx: &RequestContext<'_>,
    request: &Request<'_>,
) -> Result<Option<Vec<String>>, HttpError> {
    let static_token = ctx.publish_token;
    if static_token.is_none() && ctx.publish_verifier.is_none() {
        return Ok(None);
    }
    let given = auth::bearer(request.authorization)
        .unwrap_or(Err(TokenError::Missing))
        .map_err(HttpError::Unauthorized)?;
    if static_token.is_some_and(|expected| auth::static_token_matches(given, expected)) {
        return Ok(None);
    }
    let verifier = ctx
        .publish_verifier
        .ok_or(HttpError::Unauthorized(TokenError::Invalid))?;
    verifier
        .grant(given, Claim::Publish, ctx.now_unix_ms)
        .map(|grant| Some(grant.patterns))
        .map_err(HttpError::Unauthorized)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::http::route::{RouteConfig, TopicLimits};
    use crate::publish::PublishLimits;

    /// Feeds `input` to a fresh exchange in one read and returns every answer byte it
    /// writes, and the final step.
    fn exchange(config: &Config, input: &[u8]) -> (String, Step) {
        let (written, step, _writes) = exchange_counting_writes(config, input);
        (written, step)
    }

    /// The limits the tests run with: `config`'s, with small topic and publish limits.
    fn test_limits(config: &Config) -> Limits {
        let mut limits = config.limits();
        limits.route = RouteConfig {
            publish_listener: false,
            demo: true,
        };
        limits.topics = TopicLimits {
            per_subscription: 4,
            name_bytes: 32,
        };
        limits.publish = PublishLimits {
            topics_max: 4,
            topic_bytes_max: 32,
            frame_bytes_max: 1 << 20,
            data_bytes_max: 1 << 19,
            gap_event: "gap".into(),
        };
        limits
    }

    /// The request context the tests run with, over `bus`.
    fn context<'a>(
        config: &'a Config,
        limits: &'a Limits,
        bus: &'a dyn Bus,
        clients: &'a ClientTable,
        serials: &'a AtomicU64,
    ) -> RequestContext<'a> {
        RequestContext {
            limits,
            cors_origins: &config.cors_origins,
            forwarded_header: config.forwarded_header,
            publish_token: config.publish_token.as_deref(),
            bus,
            trusted_proxies: &[],
            clients,
            render_metrics: &String::new,
            loop_index: 0,
            conn: 0,
            serials,
            subscribe_verifier: None,
            publish_verifier: None,
            now_unix_ms: 0,
        }
    }

    /// As [`exchange`], also returning how many writes the exchange asked for.
    fn exchange_counting_writes(config: &Config, input: &[u8]) -> (String, Step, usize) {
        let bus = crate::bus::embedded::EmbeddedBus::new(crate::bus::Fanout::new());
        let clients = ClientTable::new();
        let serials = AtomicU64::new(1);
        let limits = test_limits(config);
        let ctx = context(config, &limits, &bus, &clients, &serials);
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
        let mut writes = 0;
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
                    writes += 1;
                    written.extend_from_slice(exchange.unsent());
                    let n = exchange.unsent().len();
                    exchange.on_written(n);
                }
                step => return (String::from_utf8(written).unwrap(), step, writes),
            }
        }
    }

    /// A bus that answers every publish later, like the Redis bus.
    struct LaterBus;

    impl Bus for LaterBus {
        fn publish(&self, _: crate::bus::Outgoing<'_>, _: Option<Ticket>) -> Submitted {
            Submitted::Pending
        }
        fn resume_point(&self, _: &str) -> crate::bus::Resume {
            crate::bus::Resume::Unknown
        }
        fn id_of(&self, seq: crate::history::ring::Seq) -> String {
            seq.to_string()
        }
        fn reach_floor(&self) -> Option<crate::history::ring::Seq> {
            Some(0)
        }
        fn can_backfill(&self) -> bool {
            false
        }
        fn backfill(
            &self,
            _: crate::bus::BackfillRequest,
            _: Ticket,
        ) -> Result<(), crate::bus::BackfillError> {
            Err(crate::bus::BackfillError::Unavailable)
        }
        fn published(&self) -> u64 {
            0
        }
        fn stats(&self) -> crate::bus::BusStats {
            crate::bus::BusStats::default()
        }
        fn close(&self) {}
    }

    /// Drives `exchange` until it needs the bus or more input, writing what it asks to.
    fn drive(exchange: &mut Exchange, ctx: &RequestContext<'_>, written: &mut Vec<u8>) -> Step {
        let mut info = ConnInfo {
            listener: Listener::Main,
            counted: None,
        };
        loop {
            match exchange.step(ctx, &mut info) {
                Step::Write => {
                    written.extend_from_slice(exchange.unsent());
                    let n = exchange.unsent().len();
                    exchange.on_written(n);
                }
                step => return step,
            }
        }
    }

    /// Drives `exchange`, reading from `offered` whenever it asks, until it stops for
    /// something else (or `offered` runs out).
    fn feed(
        exchange: &mut Exchange,
        ctx: &RequestContext<'_>,
        offered: &mut &[u8],
        written: &mut Vec<u8>,
    ) -> Step {
        loop {
            match drive(exchange, ctx, written) {
                Step::Read if !offered.is_empty() => {
                    let target = exchange.read_target();
                    let n = target.len().min(offered.len());
                    target[..n].copy_from_slice(&offered[..n]);
                    *offered = &offered[n..];
                    exchange.on_read(n);
                }
                step => return step,
            }
        }
    }

    fn statuses(written: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(written)
            .lines()
            .filter(|l| l.starts_with("HTTP/1.1"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn publishes_answered_later_keep_request_order() {
        let config = Config::default();
        let clients = ClientTable::new();
        let serials = AtomicU64::new(1);
        let limits = test_limits(&config);
        let ctx = context(&config, &limits, &LaterBus, &clients, &serials);
        let mut exchange = Exchange::new(
            vec![0; 1024].into_boxed_slice(),
            IpAddr::from([127, 0, 0, 1]),
        );
        let input: &[u8] =
            b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1\
POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n2\
GET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n3";
        let mut offered = input;
        let mut written = Vec::new();
        // All three publishes go to the bus at once; nothing can be answered yet.
        assert_eq!(
            feed(&mut exchange, &ctx, &mut offered, &mut written),
            Step::Read
        );
        assert!(written.is_empty(), "{}", String::from_utf8_lossy(&written));
        assert!(!exchange.is_idle());
        assert_eq!(exchange.on_timeout(), Step::Await, "the bus is waited for");
        // The second answer comes first: it waits for the first.
        let id = |n: &str| Ok(crate::EventId(format!("1-{n}")));
        assert_eq!(exchange.on_published(2, id("2")), (true, None));
        assert_eq!(drive(&mut exchange, &ctx, &mut written), Step::Read);
        assert!(written.is_empty());
        assert_eq!(exchange.on_published(1, id("1")), (true, None));
        assert_eq!(drive(&mut exchange, &ctx, &mut written), Step::Read);
        assert_eq!(
            statuses(&written),
            [
                "HTTP/1.1 200 OK",
                "HTTP/1.1 200 OK",
                "HTTP/1.1 404 Not Found"
            ],
            "the 404 was ready: it goes out as soon as the publishes before it did"
        );
        // A refusal is counted and answered in its place.
        let refused = exchange.on_published(3, Err(crate::PublishError::Unavailable));
        assert_eq!(
            refused,
            (
                true,
                Some(HttpError::Publish(crate::PublishError::Unavailable))
            )
        );
        assert_eq!(
            exchange.on_published(3, id("3")),
            (false, None),
            "answered once"
        );
        assert_eq!(drive(&mut exchange, &ctx, &mut written), Step::Read);
        assert_eq!(
            statuses(&written),
            [
                "HTTP/1.1 200 OK",
                "HTTP/1.1 200 OK",
                "HTTP/1.1 404 Not Found",
                "HTTP/1.1 503 Service Unavailable"
            ]
        );
        let text = String::from_utf8_lossy(&written);
        let first = text.find("1-1\n").unwrap();
        let second = text.find("1-2\n").unwrap();
        assert!(first < second, "{text}");
        assert!(exchange.is_idle());
    }

    #[test]
    fn in_flight_publishes_are_bounded() {
        let config = Config::default();
        let clients = ClientTable::new();
        let serials = AtomicU64::new(1);
        let limits = test_limits(&config);
        let ctx = context(&config, &limits, &LaterBus, &clients, &serials);
        let mut exchange = Exchange::new(
            vec![0; 8192].into_boxed_slice(),
            IpAddr::from([127, 0, 0, 1]),
        );
        let one: &[u8] = b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx";
        let input = one.repeat(PUBLISHES_IN_FLIGHT_MAX + 5);
        let mut offered = &input[..];
        let mut written = Vec::new();
        let step = feed(&mut exchange, &ctx, &mut offered, &mut written);
        assert_eq!(step, Step::Await, "stops reading at the bound");
        assert_eq!(exchange.in_flight, PUBLISHES_IN_FLIGHT_MAX);
        assert_eq!(
            exchange.on_published(1, Ok(crate::EventId("1-1".into()))),
            (true, None)
        );
        assert_eq!(drive(&mut exchange, &ctx, &mut written), Step::Await);
        assert_eq!(statuses(&written).len(), 1);
    }

    #[test]
    fn answers_held_behind_a_publish_are_bounded() {
        let config = Config::default();
        let clients = ClientTable::new();
        let serials = AtomicU64::new(1);
        let limits = test_limits(&config);
        let ctx = context(&config, &limits, &LaterBus, &clients, &serials);
        let mut exchange = Exchange::new(
            vec![0; 8192].into_boxed_slice(),
            IpAddr::from([127, 0, 0, 1]),
        );
        let mut input: Vec<u8> =
            b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".to_vec();
        let health: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        input.extend(health.repeat(10_000));
        let mut offered = &input[..];
        let mut written = Vec::new();
        let step = feed(&mut exchange, &ctx, &mut offered, &mut written);
        assert_eq!(step, Step::Await, "reading stops while the publish is owed");
        assert!(written.is_empty());
        assert!(exchange.queued_bytes >= QUEUED_ANSWER_BYTES_MAX);
        assert!(exchange.queued_bytes < QUEUED_ANSWER_BYTES_MAX + 1024);
        assert!(!offered.is_empty(), "the rest stays unread, in the socket");
        assert_eq!(
            exchange.on_published(1, Ok(crate::EventId("1-1".into()))),
            (true, None)
        );
        drive(&mut exchange, &ctx, &mut written);
        assert_eq!(exchange.queued_bytes, 0);
        assert!(statuses(&written).len() > 100);
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
    fn pipelined_answers_go_out_in_one_write_but_a_stream_waits_for_them() {
        let config = Config::default();
        let publish = "POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx";
        let (out, step, writes) = exchange_counting_writes(&config, publish.repeat(5).as_bytes());
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 5);
        assert_eq!((step, writes), (Step::Read, 1));
        let then_subscribe = format!("{publish}GET /events?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
        let (out, step, writes) = exchange_counting_writes(&config, then_subscribe.as_bytes());
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 1);
        assert!(matches!(step, Step::Subscribe(_)), "{step:?}");
        assert_eq!(writes, 1);
    }

    #[test]
    fn an_empty_last_event_id_is_no_id() {
        let config = Config::default();
        for head in [
            "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \r\n\r\n",
            "GET /events?topic=a&lastEventId= HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let (_, step) = exchange(&config, head.as_bytes());
            let Step::Subscribe(request) = step else {
                panic!("{head:?} gave {step:?}");
            };
            assert_eq!(request.last_event_id, None, "{head:?}");
        }
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
                token_until_unix_ms: None,
                client: IpAddr::from([127, 0, 0, 1]),
            })
        );
    }
}
