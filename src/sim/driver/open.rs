//! The simulation's copy of `event_loop/subscribe.rs`: resume plans carried out against
//! the simulated bus, topics registered, streams opened.

use crate::authorize::AccessRequest;
use crate::bus::{Backfill, Completion};
use crate::conn::authorizing;
use crate::conn::resume::{self, BusView, Opening, Plan};
use crate::conn::{StreamRequest, Waiting};
use crate::history::ring::Seq;
use crate::http::answer::{AuthFailure, HttpError};

use super::super::bus::SimBus;
use super::Driver;

impl Driver {
    pub(super) fn bus_view(&self) -> BusView {
        BusView {
            can_backfill: self.bus.can_backfill,
            reach_floor: self.bus.reach_floor(),
        }
    }

    pub(super) fn topics_evicted_max(&self, topics: &[String]) -> Seq {
        topics
            .iter()
            .map(|name| self.topics.evicted_max(name))
            .max()
            .unwrap_or(0)
    }

    /// `subscribe.rs`'s `open_stream`.
    pub(super) fn open_stream(&mut self, key: usize, mut request: StreamRequest) {
        if let Some(ask) = request.ask.take() {
            return self.ask_application(key, request, ask.topics);
        }
        let bus = &self.bus;
        resume::read_start(
            &mut request,
            &mut self.topics,
            self.now.unix_ms,
            &self.limits,
            // The simulated ids are a counter, like the embedded bus's.
            |_| None,
            |id| bus.resume_point(id),
        );
        let evicted_max = self.topics_evicted_max(&request.topics);
        let plan = resume::plan(&request, self.bus_view(), evicted_max, &self.limits);
        self.carry_out(key, request, plan);
    }

    /// `subscribe.rs`'s `ask_application`.
    fn ask_application(&mut self, key: usize, request: StreamRequest, topics: Vec<String>) {
        let ticket = self.ticket(key);
        if !self.app.ask(ticket, topics) {
            return self.refuse_stream(
                key,
                HttpError::AuthUnavailable(AuthFailure::Busy),
                &request,
            );
        }
        let deadline_ms = self.now.ms + self.limits.auth_timeout.as_millis() as u64;
        if let Some(slot) = self.conns.get_mut(key) {
            slot.conn
                .await_decision(ticket.serial, Waiting::Stream(request), deadline_ms);
        }
        self.rearm_exchange(key);
    }

    /// `subscribe.rs`'s `ask_about_publish`.
    pub(super) fn ask_about_publish(&mut self, key: usize, ask: AccessRequest) {
        let ticket = self.ticket(key);
        let queued = self.app.ask(ticket, ask.topics);
        let deadline_ms = self.now.ms + self.limits.auth_timeout.as_millis() as u64;
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if queued {
            slot.conn
                .await_decision(ticket.serial, Waiting::Publish, deadline_ms);
            self.rearm_exchange(key);
        } else {
            if let Some(exchange) = slot.conn.exchange() {
                exchange.on_decided(Err(AuthFailure::Busy));
            }
            self.drive(key);
        }
    }

    /// The application's answers this turn, each carried out as `subscribe.rs`'s
    /// `on_authorized` does.
    pub(super) fn answer_app(&mut self) {
        if !self.app.on {
            return;
        }
        for (ticket, decision) in self.app.answers(self.bus.calm, self.now.unix_ms) {
            let Some(slot) = self.conns.get_mut(ticket.conn) else {
                continue;
            };
            let Some(waiting) = slot
                .conn
                .take_decision(ticket.serial, self.now, &self.limits)
            else {
                continue; // Timed out, or the slot was reused.
            };
            let mut request = match waiting {
                Waiting::Stream(request) => request,
                Waiting::Publish => {
                    if let Some(exchange) = slot.conn.exchange() {
                        exchange.on_decided(Ok(decision));
                    }
                    self.drive(ticket.conn);
                    continue;
                }
            };
            match authorizing::decide(decision, &mut request, self.now) {
                Ok(()) => self.open_stream(ticket.conn, request),
                Err(error) => self.refuse_stream(ticket.conn, error, &request),
            }
        }
    }

    pub(super) fn carry_out(&mut self, key: usize, request: StreamRequest, plan: Plan) {
        match plan {
            Plan::Start(backfill) => self.open_stream_now(key, request, backfill),
            Plan::Refuse(error) => self.refuse_stream(key, error, &request),
            Plan::Fetch { fetch, so_far } => {
                let ticket = self.ticket(key);
                if let Err(error) = self.bus.backfill(&mut self.rng, fetch, ticket) {
                    return self.refuse_stream(key, error.into(), &request);
                }
                if let Some(slot) = self.conns.get_mut(key) {
                    slot.conn.await_backfill(ticket.serial, request, so_far);
                }
            }
        }
    }

    pub(super) fn refuse_stream(&mut self, key: usize, error: HttpError, request: &StreamRequest) {
        if let Some(exchange) = self.conns.get_mut(key).and_then(|s| s.conn.exchange()) {
            exchange.refuse_stream(error, request);
            self.drive(key);
        }
    }

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
            return;
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
                    &self.limits,
                );
                self.carry_out(key, request, plan);
            }
            Err(error) => self.refuse_stream(key, error.into(), &request),
        }
    }

    /// `subscribe.rs`'s `drain_completions`.
    pub(super) fn drain_completions(&mut self) {
        while let Some(completion) = self.bus.try_completion(&mut self.rng) {
            match completion {
                Completion::Published(ticket, result) => {
                    let Some(slot) = self.conns.get_mut(ticket.conn) else {
                        continue;
                    };
                    let (ours, _) = slot.conn.on_published(ticket.serial, result);
                    if ours {
                        self.drive(ticket.conn);
                    }
                }
                Completion::Backfilled(ticket, result) => {
                    self.on_backfilled(ticket.conn, ticket.serial, result)
                }
                // The simulated application answers through `answer_app`.
                Completion::Authorized(..) => {}
            }
        }
    }

    /// `subscribe.rs`'s `open_stream_now`. The events this stream may skip after a gap
    /// event (evicted from its rings or trimmed from the log) are noted on its socket for
    /// the client's checks.
    pub(super) fn open_stream_now(
        &mut self,
        key: usize,
        request: StreamRequest,
        backfill: Option<Backfill>,
    ) {
        let opening = Opening {
            bus: self.bus_view(),
            limits: &self.limits,
            now: self.now,
            random: self.rng.next(),
        };
        let stream = resume::open_stream(
            &mut self.topics,
            key,
            &request,
            backfill,
            opening,
            SimBus::id_of,
        );
        let forgotten = self
            .topics_evicted_max(&request.topics)
            .max(self.bus.log_floor)
            .max(self.bus.reach_floor().unwrap_or(0));
        let heartbeat_ms = self.limits.heartbeat.as_millis() as u64;
        let next_ms = stream.next_check_ms(self.now.ms, heartbeat_ms);
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        self.pipes[slot.pipe].forgotten = forgotten;
        if let Some(buffer) = slot.conn.start_stream(stream) {
            self.recycle(buffer);
        }
        self.subscribers += 1;
        self.set_timer(key, next_ms);
        self.write_stream(key);
    }
}
