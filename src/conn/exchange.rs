//! The plain HTTP phase of a connection: request heads and bodies read into bounded
//! buffers, keep-alive and pipelining, and answers written in request order even when the
//! bus answers publishes later. Ends when a request opens an event stream, or with a
//! final answer.
//!
//! Sans-io: the loop reads into [`Exchange::read_target`], asks [`Exchange::step`] what to
//! do, writes [`Exchange::unsent`], and carries out what needs the world: publishing a
//! [`PublishJob`] (it mints the ticket), counting the client a proxy names
//! ([`Step::Admit`]), opening a stream. The exchange keeps its own deadline (head or idle)
//! and hands it out when it changes ([`Exchange::take_deadline`]).

use std::collections::VecDeque;
use std::net::IpAddr;

use crate::auth;
use crate::bus::{Outgoing, Resume, Submitted};
use crate::config::Limits;
use crate::event::Event;
use crate::http::answer::{self, HttpError};
use crate::http::head::{self, Parsed, Request};
use crate::http::route::{self, Listener, Route};
use crate::publish::{self, BodyFormat};

use super::handlers::{self, PublishReply};
use super::{Env, Now};

/// Answers to pipelined requests gathered before they are written; past this the
/// exchange writes before parsing the next request, so the buffer stays bounded.
const ANSWERS_BATCH_BYTES_MAX: usize = 16 * 1024;
/// Pipelined publishes of one connection the bus may be working on at once (the Redis
/// bus answers them in order, from one pipeline). Past this the exchange reads no further
/// request until answers come back, which bounds what a connection can queue.
pub(crate) const PUBLISHES_IN_FLIGHT_MAX: usize = 64;
/// Bytes of ready answers held behind a publish the bus still owes (a client may pipeline
/// other requests behind its publishes). Past this the exchange reads no further request
/// until the bus answers, so a connection cannot make the server hold answers unbounded.
pub(crate) const QUEUED_ANSWER_BYTES_MAX: usize = 64 * 1024;

/// A request body being received.
struct PendingBody {
    bytes: Vec<u8>,
    filled: usize,
    format: BodyFormat,
    query: String,
    reply: PublishReply,
    /// Topic patterns the publisher's token allows (`None`: any topic).
    grant: Option<Vec<String>>,
}

/// An answer queued behind a publish the bus has not answered yet: answers go out in
/// request order, whatever order they are ready in.
enum Queued {
    /// The bus's answer to the publish with this ticket serial.
    Publish { serial: u64, reply: PublishReply },
    /// An answer that is ready.
    Ready(Vec<u8>),
}

/// A validated publish for the loop to hand to the bus.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PublishJob {
    /// The event as received (its topics are in `topics`, deduped).
    event: Event,
    /// Distinct, valid topic names.
    topics: Vec<Box<str>>,
}

impl PublishJob {
    /// The event as the bus takes it (the topics move out: call once).
    pub(crate) fn outgoing(&mut self) -> Outgoing<'_> {
        Outgoing {
            topics: std::mem::take(&mut self.topics),
            name: self.event.name.as_deref(),
            data: &self.event.data,
            retry_ms: self.event.retry_ms,
        }
    }

}

/// Which deadline the exchange is under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// A request is (or may be) arriving: `head_timeout`.
    Head,
    /// Between requests on a kept-alive connection: `idle_timeout`.
    Idle,
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
    /// The listener the connection came in on (it decides the routes).
    listener: Listener,
    /// The peer is a trusted proxy on a listener with a per-address limit: each request's
    /// client is counted when its head arrives (see [`Step::Admit`]).
    count_per_request: bool,
    /// The client the loop counted for this connection (with `count_per_request`).
    client: Option<IpAddr>,
    /// The loop refused the client a head named: answer the head with 429 and close.
    client_refused: bool,
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
    /// The reply of the publish handed to the loop in a [`Step::Publish`], until the loop
    /// says what the bus did with it ([`Exchange::on_submitted`]).
    submitting: Option<PublishReply>,
    /// The deadline in force (loop ms) and its kind.
    deadline_ms: u64,
    wait: Wait,
    /// The deadline changed since the loop last took it.
    rearm: bool,
}

/// What the loop should do for an exchange next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Read more bytes into [`Exchange::read_target`].
    Read,
    /// Write [`Exchange::unsent`].
    Write,
    /// Count the connection for this client (release the one counted before, if any),
    /// then tell the exchange with [`Exchange::on_admitted`].
    Admit(IpAddr),
    /// Hand this publish to the bus under a new ticket, then tell the exchange what the
    /// bus did with [`Exchange::on_submitted`].
    Publish(Box<PublishJob>),
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
    /// `last_event_id` as the bus reads it: set once, by the loop, before the resume is
    /// planned (`None` when there is no id).
    pub resume: Option<Resume>,
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
    /// A new exchange over a head buffer (from the loop's pool), under the head deadline
    /// from `now`. With `count_per_request`, each request's client is counted as its head
    /// arrives (the peer is a trusted proxy).
    pub(crate) fn new(
        inbuf: Box<[u8]>,
        peer: IpAddr,
        listener: Listener,
        count_per_request: bool,
        now: Now,
        limits: &Limits,
    ) -> Self {
        Exchange {
            inbuf,
            start: 0,
            filled: 0,
            body: None,
            peer,
            listener,
            count_per_request,
            client: None,
            client_refused: false,
            out: Vec::new(),
            sent: 0,
            close_after: false,
            refusals: Vec::new(),
            queued: VecDeque::new(),
            in_flight: 0,
            queued_bytes: 0,
            submitting: None,
            deadline_ms: now.ms + limits.head_timeout.as_millis() as u64,
            wait: Wait::Head,
            rearm: true,
        }
    }

    /// An exchange whose only answer is a refusal (the connection is closed after it).
    pub(crate) fn refused(
        inbuf: Box<[u8]>,
        peer: IpAddr,
        error: HttpError,
        now: Now,
        limits: &Limits,
    ) -> Self {
        let mut exchange = Exchange::new(inbuf, peer, Listener::Main, false, now, limits);
        exchange.refuse(error, "", false);
        exchange
    }

    /// The refusals answered since the last call, for the metrics.
    pub(crate) fn take_refusals(&mut self) -> impl Iterator<Item = HttpError> + '_ {
        self.refusals.drain(..)
    }

    /// The deadline (loop ms) if it changed since the last call: the loop re-arms its
    /// timer then.
    pub(crate) fn take_deadline(&mut self) -> Option<u64> {
        std::mem::take(&mut self.rearm).then_some(self.deadline_ms)
    }

    fn set_deadline(&mut self, wait: Wait, now: Now, limits: &Limits) {
        let timeout = match wait {
            Wait::Head => limits.head_timeout,
            Wait::Idle => limits.idle_timeout,
        };
        self.wait = wait;
        self.deadline_ms = now.ms + timeout.as_millis() as u64;
        self.rearm = true;
    }

    /// Publishes at the bus, bytes of answers held behind them, bytes of answers to
    /// write, and the head buffer's size: for the simulation's limit checks.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn sizes(&self) -> (usize, usize, usize, usize) {
        (self.in_flight, self.queued_bytes, self.out.len() - self.sent, self.inbuf.len())
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

    /// Records `n` bytes read into the last [`Exchange::read_target`]. Bytes on an idle
    /// connection start a request: it gets the head deadline.
    pub(crate) fn on_read(&mut self, n: usize, now: Now, limits: &Limits) {
        if self.wait == Wait::Idle {
            self.set_deadline(Wait::Head, now, limits);
        }
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

    /// Records `n` answer bytes written. Once the answer is out the connection waits for
    /// the next request under the idle deadline, or the head deadline when one is already
    /// arriving.
    pub(crate) fn on_written(&mut self, n: usize, now: Now, limits: &Limits) {
        self.sent += n;
        if self.sent < self.out.len() {
            return;
        }
        self.out.clear();
        self.sent = 0;
        let wait = if self.is_idle() {
            Wait::Idle
        } else {
            Wait::Head
        };
        self.set_deadline(wait, now, limits);
    }

    /// Whether the connection sits between requests: nothing received, nothing to send.
    pub(crate) fn is_idle(&self) -> bool {
        self.start == self.filled
            && self.body.is_none()
            && self.out.is_empty()
            && self.queued.is_empty()
    }

    /// Answers a subscription that could not start (its missed events could not be
    /// fetched). The connection closes after the answer.
    pub(crate) fn refuse_stream(&mut self, error: HttpError, request: &StreamRequest) {
        self.refuse(error, &request.cors, false);
    }

    /// The loop counted (or, `admitted` false, refused) the client of the head that asked
    /// with [`Step::Admit`]; [`Exchange::step`] goes on with that head.
    pub(crate) fn on_admitted(&mut self, client: IpAddr, admitted: bool) {
        if admitted {
            self.client = Some(client);
        } else {
            self.client = None;
            self.client_refused = true;
        }
    }

    /// What the bus did with the publish of the last [`Step::Publish`], under ticket
    /// `serial`: answered at once, or later through [`Exchange::on_published`]; the answer
    /// keeps its place in line either way.
    pub(crate) fn on_submitted(&mut self, serial: u64, submitted: Submitted) {
        let Some(reply) = self.submitting.take() else {
            debug_assert!(false, "a publish was submitted that the exchange did not hand out");
            return;
        };
        self.close_after = !reply.keep_alive;
        match submitted {
            Submitted::Done(result) => {
                let (bytes, refusal) = handlers::publish_answer(result, &reply);
                self.refusals.extend(refusal);
                self.emit(&bytes);
            }
            Submitted::Pending => {
                // The next pipelined request is read meanwhile; the answer keeps its place.
                self.queued.push_back(Queued::Publish { serial, reply });
                self.in_flight += 1;
            }
        }
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
        let (bytes, refusal) = handlers::publish_answer(result, reply);
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

    /// The bus owes this exchange an answer past its deadline: it answers within its own
    /// timeouts, so look again a head timeout later.
    pub(crate) fn wait_for_bus(&mut self, now: Now, limits: &Limits) {
        self.set_deadline(Wait::Head, now, limits);
    }

    /// The connection's deadline passed: a request in progress gets 408; an idle
    /// keep-alive connection, or one that does not read its answer, is just closed. A
    /// request at the bus is waited for (the bus answers within its own timeouts).
    pub(crate) fn on_timeout(&mut self, now: Now, limits: &Limits) -> Step {
        if self.in_flight > 0 {
            self.wait_for_bus(now, limits);
            return Step::Await;
        }
        if self.is_idle() || !self.out.is_empty() {
            return Step::Close;
        }
        self.body = None;
        // The 408 gets one more deadline to go out.
        self.set_deadline(Wait::Head, now, limits);
        self.refuse(HttpError::HeadTimeout, "", false)
    }

    /// Decides the next step from the bytes received so far.
    pub(crate) fn step(&mut self, env: &Env<'_>, now: Now) -> Step {
        loop {
            // Ready answers go out while the bus works; nothing more is read meanwhile
            // when too many publishes are in flight or too many answers wait behind one.
            let wait = if self.out.is_empty() {
                Step::Await
            } else {
                Step::Write
            };
            if self.in_flight >= PUBLISHES_IN_FLIGHT_MAX
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
            match self.next_request(env, now) {
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
    fn next_request(&mut self, env: &Env<'_>, now: Now) -> Step {
        if self.body.is_some() {
            return self.continue_body(env);
        }
        // The parsed request borrows the buffer while the exchange changes state, so the
        // buffer is moved out for the duration and put back before any body is copied.
        let inbuf = std::mem::take(&mut self.inbuf);
        let full = self.start == 0 && self.filled == inbuf.len();
        let step = match head::parse(&inbuf[self.start..self.filled], full) {
            Ok(Parsed::NeedMore) => Step::Read,
            Err(error) => self.refuse(error, "", false),
            Ok(Parsed::Complete(request)) => self.on_head(env, now, request),
        };
        self.inbuf = inbuf;
        if self.body.is_some() {
            return self.continue_body(env); // Copy what is buffered of the body.
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

    /// Whether the client a head names must be counted first: returns the key to count.
    fn client_to_count(&self, env: &Env<'_>, request: &Request<'_>) -> Option<IpAddr> {
        if !self.count_per_request {
            return None;
        }
        let client = handlers::request_client(env, self.peer, request);
        (self.client != Some(client)).then_some(client)
    }

    fn on_head(&mut self, env: &Env<'_>, now: Now, request: Request<'_>) -> Step {
        let cors = answer::cors_headers(env.cors_origins, request.origin);
        let keep_alive = request.keep_alive;
        if std::mem::take(&mut self.client_refused) {
            self.start += request.head_len;
            return self.refuse(HttpError::TooManyFromClient, &cors, false);
        }
        if let Some(client) = self.client_to_count(env, &request) {
            // The head is parsed again once the loop counted its client.
            return Step::Admit(client);
        }
        // The head is consumed whatever the answer; a refusal that keeps the connection
        // open must not parse the same head again.
        self.start += request.head_len;
        let has_body = request.content_length > 0 || request.has_transfer_encoding;
        let route = match route::route(request.method, request.path, self.listener, env.limits.route) {
            Ok(route) => route,
            // An unread body leaves the stream untrustworthy: answer and close.
            Err(error) => return self.refuse(error, &cors, keep_alive && !has_body),
        };
        if route != Route::Publish && has_body {
            return self.refuse(HttpError::UnexpectedBody, &cors, false);
        }
        if let Some(bytes) = handlers::fixed_answer(env, route, &request, &cors) {
            return self.answer(bytes, keep_alive);
        }
        match route {
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
            Route::Events => match self.stream_request(env, now, &request, cors) {
                Ok(stream) => Step::Subscribe(stream),
                Err((error, cors)) => self.refuse(error, &cors, keep_alive),
            },
            _ => self.start_body(env, now, request, cors),
        }
    }

    fn stream_request(
        &self,
        env: &Env<'_>,
        now: Now,
        request: &Request<'_>,
        cors: String,
    ) -> Result<StreamRequest, (HttpError, String)> {
        let subscription = match route::subscription(request.query, env.limits.topics) {
            Ok(subscription) => subscription,
            Err(error) => return Err((error, cors)),
        };
        let token_until_unix_ms =
            match handlers::authorize_subscription(env, request, &subscription, now.unix_ms) {
                Ok(until) => until,
                Err(error) => return Err((error, cors)),
            };
        Ok(StreamRequest {
            topics: subscription.topics,
            // An empty id is no id (EventSource never sends one).
            last_event_id: request
                .last_event_id
                .map(str::to_owned)
                .or(subscription.last_event_id)
                .filter(|id| !id.is_empty()),
            resume: None,
            cors,
            token_until_unix_ms,
            client: handlers::request_client(env, self.peer, request),
        })
    }

    fn start_body(&mut self, env: &Env<'_>, now: Now, request: Request<'_>, cors: String) -> Step {
        let keep_alive = request.keep_alive;
        if request.has_transfer_encoding || !request.has_content_length {
            return self.refuse(HttpError::LengthRequired, &cors, false);
        }
        if request.content_length > env.limits.publish_body_bytes_max {
            return self.refuse(HttpError::BodyTooLarge, &cors, false);
        }
        let body_unread = request.content_length > 0;
        let grant = match handlers::authorize_publisher(env, &request, now.unix_ms) {
            Ok(grant) => grant,
            Err(error) => return self.refuse(error, &cors, keep_alive && !body_unread),
        };
        let format = match publish::body_format(request.content_type) {
            Ok(format) => format,
            Err(error) => return self.refuse(error, &cors, keep_alive && !body_unread),
        };
        let content_length = request.content_length;
        self.body = Some(PendingBody {
            bytes: vec![0; content_length],
            filled: 0,
            format,
            query: request.query.to_owned(),
            reply: PublishReply {
                json: format == BodyFormat::Json,
                keep_alive,
                cors,
            },
            grant,
        });
        let buffered = self.filled - self.start;
        if request.expect_continue && buffered < content_length {
            self.emit(answer::CONTINUE);
            return Step::Write;
        }
        Step::Read // The caller copies what is buffered into the body first.
    }

    fn continue_body(&mut self, env: &Env<'_>) -> Step {
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
        let reply = body.reply;
        let event = match publish::parse_body(body.format, &body.query, &body.bytes) {
            Ok(event) => event,
            Err(error) => return self.refuse(error, &reply.cors, reply.keep_alive),
        };
        let topics = match publish::prepare(&event, &env.limits.publish) {
            Ok(outgoing) => outgoing.topics,
            Err(error) => {
                return self.refuse(HttpError::Publish(error), &reply.cors, reply.keep_alive)
            }
        };
        if let Some(patterns) = &body.grant {
            if !auth::allows_all(patterns, topics.iter().map(|t| &**t)) {
                return self.refuse(HttpError::Forbidden, &reply.cors, reply.keep_alive);
            }
        }
        self.submitting = Some(reply);
        Step::Publish(Box::new(PublishJob { event, topics }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::conn::{Env, Now};
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

    /// The clock the tests run at.
    const NOW: Now = Now { ms: 0, unix_ms: 0 };

    /// The environment the tests run in.
    fn env<'a>(config: &'a Config, limits: &'a Limits) -> Env<'a> {
        Env {
            limits,
            cors_origins: &config.cors_origins,
            forwarded_header: config.forwarded_header,
            publish_token: config.publish_token.as_deref(),
            trusted_proxies: &[],
            render_metrics: &String::new,
            subscribe_verifier: None,
            publish_verifier: None,
        }
    }

    /// How the tests' bus answers publishes.
    #[derive(Clone, Copy)]
    enum TestBus {
        /// At once, like the embedded bus.
        Now,
        /// Later, like the Redis bus.
        Later,
    }

    /// A step as the loop would carry it out: a publish goes to `bus` under the next
    /// serial (from 1) and the exchange is stepped again.
    fn step(exchange: &mut Exchange, env: &Env<'_>, bus: TestBus, serial: &mut u64) -> Step {
        loop {
            match exchange.step(env, NOW) {
                Step::Publish(_) => {
                    *serial += 1;
                    let submitted = match bus {
                        TestBus::Now => {
                            Submitted::Done(Ok(crate::EventId(format!("1-{serial}"))))
                        }
                        TestBus::Later => Submitted::Pending,
                    };
                    exchange.on_submitted(*serial, submitted);
                }
                step => return step,
            }
        }
    }

    fn new_exchange(limits: &Limits, size: usize) -> Exchange {
        Exchange::new(
            vec![0; size].into_boxed_slice(),
            IpAddr::from([127, 0, 0, 1]),
            Listener::Main,
            false,
            NOW,
            limits,
        )
    }

    /// As [`exchange`], also returning how many writes the exchange asked for.
    fn exchange_counting_writes(config: &Config, input: &[u8]) -> (String, Step, usize) {
        let limits = test_limits(config);
        let env = env(config, &limits);
        let mut exchange = new_exchange(&limits, 1024);
        let mut input = input;
        let mut written = Vec::new();
        let mut writes = 0;
        let mut serial = 0;
        loop {
            match step(&mut exchange, &env, TestBus::Now, &mut serial) {
                Step::Read if !input.is_empty() => {
                    let target = exchange.read_target();
                    let n = target.len().min(input.len());
                    target[..n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    exchange.on_read(n, NOW, &limits);
                }
                Step::Write => {
                    writes += 1;
                    written.extend_from_slice(exchange.unsent());
                    let n = exchange.unsent().len();
                    exchange.on_written(n, NOW, &limits);
                }
                step => return (String::from_utf8(written).unwrap(), step, writes),
            }
        }
    }

    /// Drives `exchange` until it needs the bus or more input, writing what it asks to.
    fn drive(
        exchange: &mut Exchange,
        env: &Env<'_>,
        serial: &mut u64,
        written: &mut Vec<u8>,
    ) -> Step {
        loop {
            match step(exchange, env, TestBus::Later, serial) {
                Step::Write => {
                    written.extend_from_slice(exchange.unsent());
                    let n = exchange.unsent().len();
                    exchange.on_written(n, NOW, env.limits);
                }
                step => return step,
            }
        }
    }

    /// Drives `exchange`, reading from `offered` whenever it asks, until it stops for
    /// something else (or `offered` runs out).
    fn feed(
        exchange: &mut Exchange,
        env: &Env<'_>,
        serial: &mut u64,
        offered: &mut &[u8],
        written: &mut Vec<u8>,
    ) -> Step {
        loop {
            match drive(exchange, env, serial, written) {
                Step::Read if !offered.is_empty() => {
                    let target = exchange.read_target();
                    let n = target.len().min(offered.len());
                    target[..n].copy_from_slice(&offered[..n]);
                    *offered = &offered[n..];
                    exchange.on_read(n, NOW, env.limits);
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
        let limits = test_limits(&config);
        let env = env(&config, &limits);
        let mut serial = 0;
        let mut exchange = new_exchange(&limits, 1024);
        let input: &[u8] =
            b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1\
POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n2\
GET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n3";
        let mut offered = input;
        let mut written = Vec::new();
        // All three publishes go to the bus at once; nothing can be answered yet.
        assert_eq!(
            feed(&mut exchange, &env, &mut serial, &mut offered, &mut written),
            Step::Read
        );
        assert!(written.is_empty(), "{}", String::from_utf8_lossy(&written));
        assert!(!exchange.is_idle());
        assert_eq!(exchange.on_timeout(NOW, &limits), Step::Await, "the bus is waited for");
        // The second answer comes first: it waits for the first.
        let id = |n: &str| Ok(crate::EventId(format!("1-{n}")));
        assert_eq!(exchange.on_published(2, id("2")), (true, None));
        assert_eq!(drive(&mut exchange, &env, &mut serial, &mut written), Step::Read);
        assert!(written.is_empty());
        assert_eq!(exchange.on_published(1, id("1")), (true, None));
        assert_eq!(drive(&mut exchange, &env, &mut serial, &mut written), Step::Read);
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
        assert_eq!(drive(&mut exchange, &env, &mut serial, &mut written), Step::Read);
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
        let limits = test_limits(&config);
        let env = env(&config, &limits);
        let mut serial = 0;
        let mut exchange = new_exchange(&limits, 8192);
        let one: &[u8] = b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx";
        let input = one.repeat(PUBLISHES_IN_FLIGHT_MAX + 5);
        let mut offered = &input[..];
        let mut written = Vec::new();
        let step = feed(&mut exchange, &env, &mut serial, &mut offered, &mut written);
        assert_eq!(step, Step::Await, "stops reading at the bound");
        assert_eq!(exchange.in_flight, PUBLISHES_IN_FLIGHT_MAX);
        assert_eq!(
            exchange.on_published(1, Ok(crate::EventId("1-1".into()))),
            (true, None)
        );
        assert_eq!(drive(&mut exchange, &env, &mut serial, &mut written), Step::Await);
        assert_eq!(statuses(&written).len(), 1);
    }

    #[test]
    fn answers_held_behind_a_publish_are_bounded() {
        let config = Config::default();
        let limits = test_limits(&config);
        let env = env(&config, &limits);
        let mut serial = 0;
        let mut exchange = new_exchange(&limits, 8192);
        let mut input: Vec<u8> =
            b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".to_vec();
        let health: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        input.extend(health.repeat(10_000));
        let mut offered = &input[..];
        let mut written = Vec::new();
        let step = feed(&mut exchange, &env, &mut serial, &mut offered, &mut written);
        assert_eq!(step, Step::Await, "reading stops while the publish is owed");
        assert!(written.is_empty());
        assert!(exchange.queued_bytes >= QUEUED_ANSWER_BYTES_MAX);
        assert!(exchange.queued_bytes < QUEUED_ANSWER_BYTES_MAX + 1024);
        assert!(!offered.is_empty(), "the rest stays unread, in the socket");
        assert_eq!(
            exchange.on_published(1, Ok(crate::EventId("1-1".into()))),
            (true, None)
        );
        drive(&mut exchange, &env, &mut serial, &mut written);
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
                resume: None,
                cors: String::new(),
                token_until_unix_ms: None,
                client: IpAddr::from([127, 0, 0, 1]),
            })
        );
    }
}
