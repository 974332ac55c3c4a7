//! Carrying out a connection's steps on its socket: reading into the exchange's buffers,
//! writing its answers, handing its publishes to the bus and counting the client a proxy
//! names, writing a stream's frames in one gathered write, discarding what a stream's
//! client sends, the lingering close after a final answer, and the close that gives back
//! everything the connection held (admission, topics, head buffer).

use std::io::{Read, Write};

use super::{access, EventLoop, Slot, LINGERING_MAX};
use crate::conn::{ConnState, Flushed, Readiness, Step, StreamEnd, LINGER};
use crate::presence::TopicPresence;
use crate::socket::{self, IoOutcome};

/// Read/parse/write rounds per HTTP connection per wake-up (several pipelined requests).
pub(crate) const HTTP_ROUNDS_MAX: usize = 16;
/// Vectored writes (`socket::send_slices`) per stream per turn.
pub(crate) const STREAM_WRITES_PER_TURN_MAX: usize = 4;
/// Reads of unexpected bytes from a stream's client per wake-up; they are discarded.
pub(crate) const STREAM_DISCARD_READS_MAX: usize = 4;

impl EventLoop {
    /// Reads, parses and answers requests on a plain HTTP connection until it would block.
    pub(super) fn drive(&mut self, key: usize) {
        let ctx = &self.ctx;
        let now = self.clock.as_now();
        let render_metrics = &*ctx.render_metrics;
        let readiness = Readiness {
            draining: self.drain_deadline.is_some(),
            bus: ctx.bus.health(),
        };
        let (topics, presence) = (&self.topics, &*ctx.presence);
        let presence = |name: &str| TopicPresence {
            subscribers: presence.count(name),
            last_id: topics
                .newest_seq(name, now.unix_ms)
                .map(|seq| ctx.bus.id_of(seq)),
        };
        let env = ctx.env(render_metrics, &presence, readiness);
        let mut rounds = 0;
        let mut blocked = false;
        while !blocked && rounds < HTTP_ROUNDS_MAX {
            let Some(Slot {
                socket,
                conn,
                counted,
                ..
            }) = self.conns.get_mut(key)
            else {
                return;
            };
            let Some(exchange) = conn.exchange() else {
                return;
            };
            let step = exchange.step(&env, now);
            for error in exchange.take_refusals() {
                ctx.count_refusal(error);
            }
            if ctx.settings.access_log {
                for answered in exchange.take_answered() {
                    access::log_answered(&answered, now.ms);
                }
            }
            match step {
                Step::Read => {
                    rounds += 1;
                    let target = exchange.read_target();
                    if target.is_empty() {
                        debug_assert!(false, "read requested with no room");
                        return self.close(key);
                    }
                    match socket::io(|| socket.read(target)) {
                        IoOutcome::Done(n) => exchange.on_read(n, now, &ctx.limits),
                        // Draining: a connection with no request under way and nothing
                        // more to read is done. One whose bytes already arrived is served.
                        IoOutcome::WouldBlock
                            if self.drain_deadline.is_some() && exchange.is_idle() =>
                        {
                            return self.close(key);
                        }
                        IoOutcome::WouldBlock => blocked = true,
                        IoOutcome::PeerClosed => return self.close(key),
                        IoOutcome::Failed(kind) => {
                            log::debug!("read failed: {kind:?}");
                            return self.close(key);
                        }
                    }
                }
                Step::Write => {
                    rounds += 1;
                    match socket::io(|| socket.write(exchange.unsent())) {
                        IoOutcome::Done(n) => {
                            self.counters.bytes_written += n as u64;
                            exchange.on_written(n, now, &ctx.limits);
                        }
                        IoOutcome::WouldBlock => blocked = true,
                        IoOutcome::PeerClosed | IoOutcome::Failed(_) => return self.close(key),
                    }
                }
                Step::Admit(client) => {
                    let admitted = ctx.admission.count_client(&ctx.limits, counted, client);
                    exchange.on_admitted(client, admitted);
                }
                Step::Publish(mut job) => {
                    let ticket = ctx.ticket(key);
                    let submitted = ctx.bus.publish(job.outgoing(), Some(ticket));
                    exchange.on_submitted(ticket.serial, submitted);
                }
                Step::Subscribe(request) => {
                    self.rearm_exchange(key);
                    return self.open_stream(key, request);
                }
                Step::Authorize(ask) => return self.ask_about_publish(key, *ask),
                Step::Linger => return self.linger(key),
                Step::Close => return self.close(key),
                // A completion from the bus drives the connection again.
                Step::Await => blocked = true,
            }
        }
        if !blocked {
            // Budget spent with work possibly left: drive it again next turn.
            self.pending.read_next.push(key);
        }
        self.rearm_exchange(key);
    }

    /// Ends a connection whose final answer is written: shut the write side (a FIN after
    /// the answer) and discard input for a moment, because closing with unread input would
    /// send a reset that can destroy the answer before the client reads it.
    pub(super) fn linger(&mut self, key: usize) {
        if self.lingering >= LINGERING_MAX {
            return self.close(key);
        }
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if let Err(error) = slot.socket.shutdown(std::net::Shutdown::Write) {
            log::debug!("shutdown failed: {error}");
            return self.close(key);
        }
        if let Some(buffer) = slot.conn.linger() {
            self.recycle(buffer);
        }
        self.lingering += 1;
        let at_ms = self.clock.as_now().ms + LINGER.as_millis() as u64;
        self.set_timer(key, at_ms);
        self.discard_input(key);
    }

    /// Reads and drops whatever a stream's (or a lingering connection's) client sends;
    /// notices when it goes away.
    pub(super) fn discard_input(&mut self, key: usize) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let mut scratch = [0u8; 1024];
        for _ in 0..STREAM_DISCARD_READS_MAX {
            match socket::io(|| slot.socket.read(&mut scratch)) {
                IoOutcome::Done(n) => {
                    if slot.conn.on_discarded(n) {
                        return self.close(key);
                    }
                }
                IoOutcome::WouldBlock => return,
                IoOutcome::PeerClosed | IoOutcome::Failed(_) => {
                    return self.close_stream(key, StreamEnd::PeerGone)
                }
            }
        }
        self.pending.read_next.push(key);
    }

    /// Writes a stream everything it is behind by, within the per-turn budget.
    pub(super) fn write_stream(&mut self, key: usize) {
        let Some(Slot { socket, conn, .. }) = self.conns.get_mut(key) else {
            return;
        };
        let Some(stream) = conn.stream_mut() else {
            return;
        };
        let now_ms = self.clock.as_now().ms;
        let counters = &mut self.counters;
        let mut written = 0;
        let mut writes = 0;
        let outcome = stream.flush(
            &self.topics,
            STREAM_WRITES_PER_TURN_MAX,
            now_ms,
            &mut counters.deliveries,
            |slices| {
                let outcome = socket::io(|| socket::send_slices(&*socket, slices));
                if let IoOutcome::Done(n) = outcome {
                    written += n;
                    writes += 1;
                }
                outcome
            },
        );
        counters.bytes_written += written as u64;
        counters.stream_writes += writes;
        if self.ctx.settings.access_log {
            if let Some(Some(access)) = self.stream_access.get_mut(key) {
                access.bytes += written as u64;
            }
        }
        match outcome {
            Flushed::Idle => {}
            Flushed::Blocked => {
                if stream.too_slow(&self.topics, self.ctx.limits.lag_bytes_max) {
                    self.close_stream(key, StreamEnd::SlowConsumer);
                }
            }
            Flushed::More => self.pending.write_next.push(key),
            Flushed::End(end) => self.close_stream(key, end),
        }
    }

    /// Closes a connection for `end` (counted and logged for streams, and written to the
    /// access log).
    pub(super) fn close_stream(&mut self, key: usize, end: StreamEnd) {
        if end.is_slow() {
            self.counters.slow_closes += 1;
            log::debug!("closing slow subscriber {key} ({})", end.name());
        } else {
            log::trace!("connection {key} closed ({})", end.name());
        }
        if let Some(stream) = self.stream_access.get_mut(key).and_then(Option::take) {
            access::log_stream(&stream, end.name(), self.clock.as_now().ms);
        }
        if let Some(stream) = self.observed.get_mut(key).and_then(Option::take) {
            if let Some(observer) = &self.ctx.observer {
                observer.closed(stream, end.name());
            }
        }
        self.close(key);
    }

    /// Closes a connection: gives back its admission, its head buffer or its place in
    /// every topic's subscriber list, and its timer.
    pub(super) fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let slot = self.conns.remove(key);
        // Every stream closes through `close_stream`, which logs and clears its entry; a
        // connection must not leave one for the next user of its key.
        if let Some(entry) = self.stream_access.get_mut(key) {
            *entry = None;
        }
        if let Some(entry) = self.observed.get_mut(key) {
            *entry = None;
        }
        if let Some(timer) = slot.timer {
            self.wheel.cancel(timer);
        }
        self.ctx
            .admission
            .release(&self.ctx.limits, slot.listener, slot.admitted, slot.counted);
        match slot.conn.into_state() {
            ConnState::Lingering { .. } => self.lingering -= 1,
            ConnState::Exchange(exchange) => self.recycle(exchange.into_buffer()),
            ConnState::Resuming(resuming) => self.recycle(resuming.exchange.into_buffer()),
            ConnState::Authorizing(authorizing) => self.recycle(authorizing.exchange.into_buffer()),
            ConnState::Streaming(stream) => {
                self.subscribers -= 1;
                for topic in stream.topics() {
                    if let Some(name) = self.topics.get(topic.id).map(|t| t.name()) {
                        self.ctx.presence.leave(name);
                    }
                    let Some(moved) = self.topics.unsubscribe(topic.id, topic.position) else {
                        continue;
                    };
                    if let Some(other) = self
                        .conns
                        .get_mut(moved.conn)
                        .and_then(|slot| slot.conn.stream_mut())
                    {
                        other.moved(usize::from(moved.slot), topic.position);
                    }
                }
            }
        }
        // Dropping the socket closes it, which also removes it from the poller.
    }
}
