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

use crate::authorize::{AccessRequest, Decision};
use crate::bus::{Outgoing, Resume, Submitted};
use crate::config::Limits;
use crate::event::Event;
use crate::http::answer::{self, AuthFailure, HttpError};
use crate::http::head::{self, Parsed};
use crate::http::route::Listener;
use crate::publish::BodyFormat;

use super::access::{Answered, RequestLine};
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
    /// Topic patterns the application's decision allows (`None`: any topic).
    app_grant: Option<Vec<String>>,
}

/// An answer queued behind a publish the bus has not answered yet: answers go out in
/// request order, whatever order they are ready in.
enum Queued {
    /// The bus's answer to the publish with this ticket serial.
    Publish { serial: u64, reply: PublishReply },
    /// An answer that is ready.
    Ready(Vec<u8>),
}

/// A validated publish for the loop to hand to the bus: one event, or a batch published
/// all or none.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PublishJob {
    /// Each event as received, with its distinct, valid topic names.
    events: Vec<(Event, Vec<Box<str>>)>,
}

impl PublishJob {
    /// The events as the bus takes them (the topics move out: call once).
    pub(crate) fn outgoing(&mut self) -> Vec<Outgoing<'_>> {
        self.events
            .iter_mut()
            .map(|(event, topics)| Outgoing {
                topics: std::mem::take(topics),
                name: event.name.as_deref(),
                data: &event.data,
                retry_ms: event.retry_ms,
            })
            .collect()
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
    /// The loop logs requests (`--access-log`): keep [`RequestLine`]s and [`Answered`]s.
    access_log: bool,
    /// With `access_log`, the request being handled, from its head to its answer (a
    /// publish's travels in its `PublishReply` meanwhile).
    line: Option<RequestLine>,
    /// With `access_log`, requests answered since the loop last took them (bounded like
    /// `refusals`).
    answered: Vec<Answered>,
    /// Answers waiting for the oldest publish the bus has not answered; empty otherwise.
    queued: VecDeque<Queued>,
    /// Publishes in `queued` the bus has not answered.
    in_flight: usize,
    /// Bytes of the ready answers in `queued`.
    queued_bytes: usize,
    /// The reply of the publish handed to the loop in a [`Step::Publish`], until the loop
    /// says what the bus did with it ([`Exchange::on_submitted`]).
    submitting: Option<PublishReply>,
    /// The application's decision on the publish head waiting to be parsed again (see
    /// [`Step::Authorize`]), or why there is none.
    decided: Option<Result<Decision, AuthFailure>>,
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
    /// Put this publish to the application (its head waits to be parsed again), then tell
    /// the exchange what it decided with [`Exchange::on_decided`].
    Authorize(Box<AccessRequest>),
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
    /// Where the stream starts: `Resume::Since` from the query when there is no
    /// Last-Event-ID; then set once, by the loop, from the Last-Event-ID or the `since`
    /// before the resume is planned (`resume::read_start`). `None`: start at the newest.
    pub resume: Option<Resume>,
    /// CORS header lines for the response.
    pub cors: String,
    /// When the subscriber's token stops being accepted (Unix milliseconds: `exp` plus the
    /// leeway); the stream is sent back to reconnect then.
    pub token_until_unix_ms: Option<u64>,
    /// The client key (see `client_key`) the per-address limit counts: a resume's fetch
    /// from the bus waits in this client's turn.
    pub client: IpAddr,
    /// With the access log, the request's line: the loop logs it when the stream closes.
    pub access: Option<Box<RequestLine>>,
    /// The client's address (the peer, or the one a trusted proxy names), for the
    /// stream observer.
    pub addr: IpAddr,
    /// With an authorizer, the question it must answer before the stream opens; the loop
    /// takes it out when it asks.
    pub ask: Option<Box<AccessRequest>>,
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
            access_log: false,
            line: None,
            answered: Vec::new(),
            queued: VecDeque::new(),
            in_flight: 0,
            queued_bytes: 0,
            submitting: None,
            decided: None,
            deadline_ms: now.ms + limits.head_timeout.as_millis() as u64,
            wait: Wait::Head,
            rearm: true,
        }
    }

    /// An exchange whose only answer is a refusal (the connection is closed after it);
    /// with `access_log` the refusal is kept for the access log.
    pub(crate) fn refused(
        inbuf: Box<[u8]>,
        peer: IpAddr,
        error: HttpError,
        access_log: bool,
        now: Now,
        limits: &Limits,
    ) -> Self {
        let mut exchange = Exchange::new(inbuf, peer, Listener::Main, false, now, limits);
        exchange.access_log = access_log;
        exchange.refuse(error, "", false);
        exchange
    }

    /// Keeps what the access log needs of each request from now on: the loop takes it
    /// with [`Exchange::take_answered`] (and a stream's in [`StreamRequest::access`]).
    pub(crate) fn log_access(&mut self) {
        self.access_log = true;
    }

    /// The refusals answered since the last call, for the metrics.
    pub(crate) fn take_refusals(&mut self) -> impl Iterator<Item = HttpError> + '_ {
        self.refusals.drain(..)
    }

    /// The requests answered since the last call, for the access log (none unless
    /// [`Exchange::log_access`] was called).
    pub(crate) fn take_answered(&mut self) -> impl Iterator<Item = Answered> + '_ {
        self.answered.drain(..)
    }

    /// Keeps the answer to the request being handled (`line`, or one without a head) for
    /// the access log.
    fn record(&mut self, line: Option<RequestLine>, status: u16, bytes: usize) {
        if !self.access_log {
            return;
        }
        let line = line.unwrap_or_else(|| RequestLine::headless(self.client.unwrap_or(self.peer)));
        self.answered.push(Answered {
            line,
            status,
            bytes,
        });
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
        (
            self.in_flight,
            self.queued_bytes,
            self.out.len() - self.sent,
            self.inbuf.len(),
        )
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
        self.line = request.access.as_deref().cloned();
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
            debug_assert!(
                false,
                "a publish was submitted that the exchange did not hand out"
            );
            return;
        };
        self.close_after = !reply.keep_alive;
        match submitted {
            Submitted::Done(result) => {
                let (bytes, refusal) = handlers::publish_answer(result, &reply);
                let status = refusal.map_or(200, |error| error.answer().0);
                self.record(reply.line, status, bytes.len());
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
        result: crate::bus::Stored,
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
        let line = reply.line.take();
        let bytes_len = bytes.len();
        self.queued_bytes += bytes_len;
        *slot = Queued::Ready(bytes);
        self.in_flight -= 1;
        let status = refusal.map_or(200, |error| error.answer().0);
        self.record(line, status, bytes_len);
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

    /// Puts the exchange under a head deadline from `now`: after the application's
    /// decision (or its absence), for the answer or the publish's body.
    pub(crate) fn restart_head_deadline(&mut self, now: Now, limits: &Limits) {
        self.set_deadline(Wait::Head, now, limits);
    }

    /// The application decided the publish that asked with [`Step::Authorize`] (or no
    /// decision came: `Err`); [`Exchange::step`] goes on with its head.
    pub(crate) fn on_decided(&mut self, decided: Result<Decision, AuthFailure>) {
        self.decided = Some(decided);
    }

    /// The application owes this exchange's subscription a decision until loop time
    /// `deadline_ms`.
    pub(crate) fn wait_until(&mut self, deadline_ms: u64) {
        self.wait = Wait::Head;
        self.deadline_ms = deadline_ms;
        self.rearm = true;
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
        // A publish whose body did not arrive is the request the 408 answers.
        if let Some(body) = self.body.take() {
            self.line = body.reply.line;
        }
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
        let bytes = answer::refusal(error, cors, keep_alive);
        let line = self.line.take();
        self.record(line, error.answer().0, bytes.len());
        self.emit(&bytes);
        self.close_after = !keep_alive;
        Step::Write
    }

    fn answer(&mut self, status: u16, bytes: Vec<u8>, keep_alive: bool) -> Step {
        let line = self.line.take();
        self.record(line, status, bytes.len());
        self.emit(&bytes);
        self.close_after = !keep_alive;
        Step::Write
    }
}

mod request;
#[cfg(test)]
mod tests;
