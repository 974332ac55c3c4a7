//! Opening streams on the loop: the application's decision asked for and applied (with an
//! authorizer), a subscription's resume planned by `conn::resume` and carried out here (the
//! bus's fetches under a ticket, refusals), the stream's topics registered in the loop's
//! subscriber index and told to the stream observer, and its first bytes written.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::EventLoop;
use crate::authorize::{AccessRequest, Decision, StreamInfo};
use crate::bus::{Backfill, Completion};
use crate::conn::authorizing;
use crate::conn::resume::{self, BusView, Opening, Plan};
use crate::conn::{StreamRequest, Waiting};
use crate::history::ring::Seq;
use crate::http::answer::{AuthFailure, HttpError};

impl EventLoop {
    /// What the bus can do for a resume, as it stands now.
    fn bus_view(&self) -> BusView {
        let bus = &*self.ctx.bus;
        BusView {
            can_backfill: bus.can_backfill(),
            reach_floor: bus.reach_floor(),
        }
    }

    /// Newest eviction across the rings of these topics (or the one a new topic inherits).
    fn topics_evicted_max(&self, topics: &[String]) -> Seq {
        topics
            .iter()
            .map(|name| self.topics.evicted_max(name))
            .max()
            .unwrap_or(0)
    }

    /// Starts a subscription: at once, or, when it resumes from before what this loop's
    /// rings hold and the bus keeps a log, once the bus has fetched the missed events.
    /// The Last-Event-ID (or `since`) is read here, once, after the subscription's topics
    /// dropped what their time to live no longer keeps.
    pub(super) fn open_stream(&mut self, key: usize, mut request: StreamRequest) {
        if let Some(ask) = request.ask.take() {
            return self.ask_application(key, request, *ask);
        }
        let bus = &*self.ctx.bus;
        resume::read_start(
            &mut request,
            &mut self.topics,
            self.clock.as_now().unix_ms,
            &self.ctx.limits,
            |unix_ms| bus.seq_at(unix_ms),
            |id| bus.resume_point(id),
        );
        let evicted_max = self.topics_evicted_max(&request.topics);
        let plan = resume::plan(&request, self.bus_view(), evicted_max, &self.ctx.limits);
        self.carry_out(key, request, plan);
    }

    /// Puts a subscription to the application, parked until its answer (or `503` at its
    /// deadline); a full queue is refused at once.
    fn ask_application(&mut self, key: usize, request: StreamRequest, ask: AccessRequest) {
        let Some(pool) = self.ctx.auth.clone() else {
            return self.open_stream(key, request); // No authorizer: nothing to ask.
        };
        let ticket = self.ctx.ticket(key);
        if pool.submit(ticket, ask).is_err() {
            return self.refuse_stream(
                key,
                HttpError::AuthUnavailable(AuthFailure::Busy),
                &request,
            );
        }
        let deadline_ms = self.clock.as_now().ms + self.ctx.limits.auth_timeout.as_millis() as u64;
        if let Some(slot) = self.conns.get_mut(key) {
            slot.conn
                .await_decision(ticket.serial, Waiting::Stream(request), deadline_ms);
        }
        self.rearm_exchange(key);
    }

    /// Puts a publish to the application, parked until its answer; a full queue (or no
    /// authorizer) is a decision too, and the exchange goes on with it at once.
    pub(super) fn ask_about_publish(&mut self, key: usize, ask: AccessRequest) {
        let ticket = self.ctx.ticket(key);
        let queued = self.ctx.auth.as_ref().map(|pool| pool.submit(ticket, ask));
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        match queued {
            Some(Ok(())) => {
                let deadline_ms =
                    self.clock.as_now().ms + self.ctx.limits.auth_timeout.as_millis() as u64;
                slot.conn
                    .await_decision(ticket.serial, Waiting::Publish, deadline_ms);
                self.rearm_exchange(key);
            }
            Some(Err(_)) | None => {
                if let Some(exchange) = slot.conn.exchange() {
                    exchange.on_decided(Err(AuthFailure::Busy));
                }
                self.drive(key);
            }
        }
    }

    /// The application decided a parked request: a subscription opens within the grant or
    /// is refused; a publish goes on with its head.
    fn on_authorized(&mut self, key: usize, serial: u64, decision: Decision) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let now = self.clock.as_now();
        let Some(waiting) = slot.conn.take_decision(serial, now, &self.ctx.limits) else {
            return; // Not this connection's (it timed out, or its slot was reused).
        };
        let mut request = match waiting {
            Waiting::Stream(request) => request,
            Waiting::Publish => {
                if let Some(exchange) = slot.conn.exchange() {
                    exchange.on_decided(Ok(decision));
                }
                return self.drive(key);
            }
        };
        match authorizing::decide(decision, &mut request, now) {
            Ok(()) => self.open_stream(key, request),
            Err(error) => self.refuse_stream(key, error, &request),
        }
    }

    /// Carries out a resume plan.
    fn carry_out(&mut self, key: usize, request: StreamRequest, plan: Plan) {
        match plan {
            Plan::Start(backfill) => self.open_stream_now(key, request, backfill),
            Plan::Refuse(error) => self.refuse_stream(key, error, &request),
            Plan::Fetch { fetch, so_far } => {
                let ticket = self.ctx.ticket(key);
                if let Err(error) = self.ctx.bus.backfill(fetch, ticket) {
                    return self.refuse_stream(key, error.into(), &request);
                }
                if let Some(slot) = self.conns.get_mut(key) {
                    slot.conn.await_backfill(ticket.serial, request, so_far);
                }
            }
        }
    }

    /// Answers a subscription that cannot start with `error` (and closes).
    fn refuse_stream(&mut self, key: usize, error: HttpError, request: &StreamRequest) {
        if let Some(exchange) = self.conns.get_mut(key).and_then(|s| s.conn.exchange()) {
            exchange.refuse_stream(error, request);
            self.drive(key);
        }
    }

    /// The bus answered a fetch: plan again with what it brought.
    pub(super) fn on_backfilled(
        &mut self,
        key: usize,
        serial: u64,
        result: Result<Backfill, crate::bus::BackfillError>,
    ) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let Some((request, so_far)) = slot.conn.take_backfill(serial) else {
            return; // Not this connection's (its slot was reused).
        };
        match result {
            Ok(part) => {
                let backfill = resume::merge(so_far, part);
                let evicted_max = self.topics_evicted_max(&request.topics);
                let plan = resume::after_fetch(
                    &request,
                    backfill,
                    self.bus_view(),
                    evicted_max,
                    &self.ctx.limits,
                );
                self.carry_out(key, request, plan);
            }
            Err(error) => self.refuse_stream(key, error.into(), &request),
        }
    }

    /// Answers the completions: publish answers, fetched resumes, the application's
    /// decisions.
    pub(super) fn drain_completions(&mut self) {
        while let Some(completion) = self.inbox.try_completion() {
            match completion {
                Completion::Published(ticket, result) => {
                    let Some(slot) = self.conns.get_mut(ticket.conn) else {
                        continue;
                    };
                    let (ours, refusal) = slot.conn.on_published(ticket.serial, result);
                    if let Some(error) = refusal {
                        self.ctx.count_refusal(error);
                    }
                    if ours {
                        self.drive(ticket.conn);
                    }
                }
                Completion::Backfilled(ticket, result) => {
                    self.on_backfilled(ticket.conn, ticket.serial, result);
                }
                Completion::Authorized(ticket, decision) => {
                    self.on_authorized(ticket.conn, ticket.serial, decision);
                }
            }
        }
    }

    /// Turns connection `key` into an event stream now (`resume::open_stream`) and writes
    /// its first bytes.
    fn open_stream_now(
        &mut self,
        key: usize,
        mut request: StreamRequest,
        backfill: Option<Backfill>,
    ) {
        let opening = Opening {
            bus: self.bus_view(),
            limits: &self.ctx.limits,
            now: self.clock.as_now(),
            random: self.clock.random(),
        };
        let now = opening.now;
        let bus = &*self.ctx.bus;
        let stream =
            resume::open_stream(&mut self.topics, key, &request, backfill, opening, |seq| {
                bus.id_of(seq)
            });
        let limits = &self.ctx.limits;
        let heartbeat_ms = limits.heartbeat.as_millis() as u64;
        let next_ms = stream.next_check_ms(now.ms, heartbeat_ms);
        if !self.conns.contains(key) {
            return;
        }
        if let Some(line) = request.access.take() {
            // Keys are slab keys: the table is never longer than the slab has been.
            if self.stream_access.len() <= key {
                self.stream_access.resize_with(key + 1, || None);
            }
            self.stream_access[key] = Some(Box::new(super::access::StreamAccess {
                line: *line,
                bytes: 0,
            }));
        }
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(buffer) = slot.conn.start_stream(stream) {
            self.recycle(buffer);
        }
        self.subscribers += 1;
        for name in &request.topics {
            self.ctx.presence.join(name);
        }
        if let Some(observer) = &self.ctx.observer {
            let stream = Arc::new(StreamInfo {
                id: self.ctx.serials.fetch_add(1, Ordering::Relaxed),
                client: request.addr,
                topics: std::mem::take(&mut request.topics),
            });
            // A stream whose open the hook will not hear of is not followed to its close.
            if observer.opened(&stream) {
                // Keys are slab keys: the table is never longer than the slab has been.
                if self.observed.len() <= key {
                    self.observed.resize_with(key + 1, || None);
                }
                self.observed[key] = Some(stream);
            }
        }
        self.set_timer(key, next_ms);
        if self.drain_deadline.is_some() {
            self.send_back(key); // Opened while draining: told to come back at once.
        } else {
            self.write_stream(key);
        }
    }
}
