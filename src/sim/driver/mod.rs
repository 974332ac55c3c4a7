//! The simulation's event loop: `event_loop/` (`io.rs`, `subscribe.rs`, `fanout.rs`,
//! `clock.rs`, the turn in `mod.rs`) step for step, over simulated sockets ([`Pipe`]), the
//! simulated bus and a simulated clock instead of mio, the Redis bus and `Instant::now`.
//! What it drives is the real thing: `conn::Connection`, `history::Topics` and the timer
//! wheel. When the event loop changes how it carries out the core's actions, this file
//! follows.

use std::time::{Duration, Instant};

use slab::Slab;

use crate::bus::{InboxItem, Ticket};
use crate::config::Limits;
use crate::conn::{self, ConnState, Connection, Exchange, Expired, Flushed, Now, Step};
use crate::conn::{Parting, StreamEnd, LINGER};
use crate::history::topics::{TopicId, Topics};
use crate::http::route::Listener;
use crate::socket::IoOutcome;
use crate::wheel::{TimerHandle, TimerWheel};

use super::app::SimApp;
use super::bus::SimBus;
use super::net::Pipe;
use super::Rng;

mod open;

// The event loop's own budgets, so the simulation runs what production runs.
pub(super) use crate::event_loop::io::{
    HTTP_ROUNDS_MAX, STREAM_DISCARD_READS_MAX, STREAM_WRITES_PER_TURN_MAX,
};
use crate::event_loop::queue::FanOutQueue;
pub(super) use crate::event_loop::{inbox_budget, HEAD_POOL_MAX, TIMER_TICK};
/// The loop writes 256 streams per turn (`fanout.rs`); the simulation's few streams would
/// never see a second slice, so it writes fewer per turn to exercise the queue.
const FAN_OUT_STREAMS_PER_TURN_MAX: usize = 3;

/// A connection as the loop holds it.
pub(super) struct Slot {
    /// Its simulated socket (an index into [`Driver::pipes`], never reused).
    pub pipe: usize,
    pub timer: Option<TimerHandle>,
    pub conn: Connection,
}

/// The simulated event loop and the world it talks to.
pub(super) struct Driver {
    pub limits: Limits,
    pub conns: Slab<Slot>,
    pub topics: Topics,
    pub wheel: TimerWheel<usize>,
    pub pipes: Vec<Pipe>,
    pub bus: SimBus,
    /// The application that decides access, when it is on.
    pub app: SimApp,
    pub rng: Rng,
    /// Connections waiting to be accepted.
    pub backlog: Vec<usize>,
    origin: Instant,
    pub now: Now,
    write_next: Vec<usize>,
    fan_out: FanOutQueue,
    read_next: Vec<usize>,
    dirty: Vec<TopicId>,
    pub head_pool: Vec<Box<[u8]>>,
    pub lingering: usize,
    pub subscribers: u64,
    serial: u64,
    /// Counted for the stats.
    pub deliveries: u64,
    pub slow_closes: u64,
}

impl Driver {
    /// A loop at time 0.
    pub(super) fn new(limits: Limits, bus: SimBus, app: SimApp, rng: Rng) -> Self {
        // The wheel's `Instant`s are only ever compared with each other: one real instant
        // as the origin keeps every run the same.
        let origin = Instant::now();
        Driver {
            topics: Topics::new(limits.history),
            limits,
            conns: Slab::new(),
            wheel: TimerWheel::new(origin, TIMER_TICK),
            pipes: Vec::new(),
            bus,
            app,
            rng,
            backlog: Vec::new(),
            origin,
            now: Now {
                ms: 0,
                unix_ms: 1_700_000_000_000,
            },
            write_next: Vec::new(),
            fan_out: FanOutQueue::default(),
            read_next: Vec::new(),
            dirty: Vec::new(),
            head_pool: Vec::new(),
            lingering: 0,
            subscribers: 0,
            serial: 0,
            deliveries: 0,
            slow_closes: 0,
        }
    }

    /// Moves the clock forward.
    pub(super) fn advance(&mut self, ms: u64) {
        self.now.ms += ms;
        self.now.unix_ms += ms;
    }

    /// One turn of `EventLoop::run`, after the poll.
    pub(super) fn turn(&mut self) {
        self.expire_timers();
        let ready: Vec<(usize, bool, bool)> = self
            .conns
            .iter()
            .filter_map(|(key, slot)| {
                let pipe = &mut self.pipes[slot.pipe];
                let edges = (
                    std::mem::take(&mut pipe.readable),
                    std::mem::take(&mut pipe.writable),
                );
                (edges.0 || edges.1).then_some((key, edges.0, edges.1))
            })
            .collect();
        for (key, readable, writable) in ready {
            self.on_ready(key, readable, writable);
        }
        for pipe in std::mem::take(&mut self.backlog) {
            self.admit(pipe);
        }
        let mut leftovers = std::mem::take(&mut self.read_next);
        leftovers.sort_unstable();
        leftovers.dedup();
        for key in leftovers {
            self.on_ready(key, true, false);
        }
        self.answer_app();
        self.drain_completions();
        self.drain_inbox();
        self.fan_out();
    }

    pub(super) fn ticket(&mut self, key: usize) -> Ticket {
        self.serial += 1;
        Ticket {
            loop_index: 0,
            conn: key,
            serial: self.serial,
        }
    }

    /// `accept.rs`'s `admit`: every connection is admitted (the sim has no budgets).
    fn admit(&mut self, pipe: usize) {
        let buffer = self
            .head_pool
            .pop()
            .unwrap_or_else(|| vec![0; self.limits.head_bytes_max].into_boxed_slice());
        let peer = [127, 0, 0, 1].into();
        let exchange = Exchange::new(buffer, peer, Listener::Main, false, self.now, &self.limits);
        let key = self.conns.insert(Slot {
            pipe,
            timer: None,
            conn: Connection::new(exchange),
        });
        // Registered for both: the first poll reports what is there.
        self.pipes[pipe].readable = true;
        self.pipes[pipe].writable = true;
        self.rearm_exchange(key);
    }

    fn on_ready(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        match slot.conn.state_mut() {
            ConnState::Exchange(_) => self.drive(key),
            ConnState::Streaming(stream) => {
                if writable && stream.on_writable() {
                    self.write_stream(key);
                }
                if readable {
                    self.discard_input(key);
                }
            }
            ConnState::Lingering { .. } if readable => self.discard_input(key),
            ConnState::Lingering { .. } | ConnState::Resuming(_) | ConnState::Authorizing(_) => {}
        }
    }

    fn recycle(&mut self, buffer: Box<[u8]>) {
        if self.head_pool.len() < HEAD_POOL_MAX && buffer.len() == self.limits.head_bytes_max {
            self.head_pool.push(buffer);
        }
    }

    /// `io.rs`'s `drive`.
    pub(super) fn drive(&mut self, key: usize) {
        let limits = &self.limits;
        let env = super::env(limits, self.app.on);
        let now = self.now;
        let mut rounds = 0;
        let mut blocked = false;
        while !blocked && rounds < HTTP_ROUNDS_MAX {
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            let pipe = &mut self.pipes[slot.pipe];
            let Some(exchange) = slot.conn.exchange() else {
                return;
            };
            let step = exchange.step(&env, now);
            exchange.take_refusals().for_each(drop);
            match step {
                Step::Read => {
                    rounds += 1;
                    let target = exchange.read_target();
                    assert!(!target.is_empty(), "read requested with no room");
                    match pipe.server_read(&mut self.rng, target) {
                        IoOutcome::Done(n) => exchange.on_read(n, now, limits),
                        IoOutcome::WouldBlock => blocked = true,
                        IoOutcome::PeerClosed | IoOutcome::Failed(_) => return self.close(key),
                    }
                }
                Step::Write => {
                    rounds += 1;
                    match pipe.server_write(&mut self.rng, &[exchange.unsent()]) {
                        IoOutcome::Done(n) => exchange.on_written(n, now, limits),
                        IoOutcome::WouldBlock => blocked = true,
                        IoOutcome::PeerClosed | IoOutcome::Failed(_) => return self.close(key),
                    }
                }
                Step::Admit(client) => exchange.on_admitted(client, true),
                Step::Publish(mut job) => {
                    self.serial += 1;
                    let ticket = Ticket {
                        loop_index: 0,
                        conn: key,
                        serial: self.serial,
                    };
                    let submitted = self.bus.publish(&mut self.rng, job.outgoing(), ticket);
                    exchange.on_submitted(ticket.serial, submitted);
                }
                Step::Subscribe(request) => {
                    self.rearm_exchange(key);
                    return self.open_stream(key, request);
                }
                Step::Authorize(ask) => return self.ask_about_publish(key, *ask),
                Step::Linger => return self.linger(key),
                Step::Close => return self.close(key),
                Step::Await => blocked = true,
            }
        }
        if !blocked {
            self.read_next.push(key);
        }
        self.rearm_exchange(key);
    }

    /// `io.rs`'s `linger` (the sim has no lingering cap).
    fn linger(&mut self, key: usize) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        self.pipes[slot.pipe].server_shut_write = true;
        if let Some(buffer) = slot.conn.linger() {
            self.recycle(buffer);
        }
        self.lingering += 1;
        self.set_timer(key, self.now.ms + LINGER.as_millis() as u64);
        self.discard_input(key);
    }

    /// `io.rs`'s `discard_input`.
    fn discard_input(&mut self, key: usize) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let mut scratch = [0u8; 1024];
        for _ in 0..STREAM_DISCARD_READS_MAX {
            match self.pipes[slot.pipe].server_read(&mut self.rng, &mut scratch) {
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
        self.read_next.push(key);
    }

    /// `io.rs`'s `write_stream`.
    pub(super) fn write_stream(&mut self, key: usize) {
        let Some(Slot { pipe, conn, .. }) = self.conns.get_mut(key) else {
            return;
        };
        let Some(stream) = conn.stream_mut() else {
            return;
        };
        let pipe = &mut self.pipes[*pipe];
        let rng = &mut self.rng;
        let outcome = stream.flush(
            &self.topics,
            STREAM_WRITES_PER_TURN_MAX,
            self.now.ms,
            &mut self.deliveries,
            |slices| {
                let slices: Vec<&[u8]> = slices.iter().map(|s| &**s).collect();
                pipe.server_write(rng, &slices)
            },
        );
        match outcome {
            Flushed::Idle => {}
            Flushed::Blocked => {
                if stream.too_slow(&self.topics, self.limits.lag_bytes_max) {
                    self.close_stream(key, StreamEnd::SlowConsumer);
                }
            }
            Flushed::More => self.write_next.push(key),
            Flushed::End(end) => self.close_stream(key, end),
        }
    }

    fn close_stream(&mut self, key: usize, end: StreamEnd) {
        if end.is_slow() {
            self.slow_closes += 1;
        }
        self.close(key);
    }

    /// `io.rs`'s `close`.
    pub(super) fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let slot = self.conns.remove(key);
        if let Some(timer) = slot.timer {
            self.wheel.cancel(timer);
        }
        self.pipes[slot.pipe].server_closed = true;
        match slot.conn.into_state() {
            ConnState::Lingering { .. } => self.lingering -= 1,
            ConnState::Exchange(exchange) => self.recycle(exchange.into_buffer()),
            ConnState::Resuming(resuming) => self.recycle(resuming.exchange.into_buffer()),
            ConnState::Authorizing(authorizing) => self.recycle(authorizing.exchange.into_buffer()),
            ConnState::Streaming(stream) => {
                self.subscribers -= 1;
                for topic in stream.topics() {
                    let Some(moved) = self.topics.unsubscribe(topic.id, topic.position) else {
                        continue;
                    };
                    if let Some(other) = self
                        .conns
                        .get_mut(moved.conn)
                        .and_then(|s| s.conn.stream_mut())
                    {
                        other.moved(usize::from(moved.slot), topic.position);
                    }
                }
            }
        }
    }

    /// `fanout.rs`'s `drain_inbox`.
    fn drain_inbox(&mut self) {
        let budget = inbox_budget(self.limits.history);
        let (mut events_left, mut bytes_left) = self.fan_out.begin_drain(budget);
        while events_left > 0 && bytes_left > 0 {
            let Some(item) = self.bus.try_recv() else {
                break;
            };
            let event = match item {
                InboxItem::Event(event) => event,
                InboxItem::Lost { .. } => {
                    let keys: Vec<usize> = self
                        .conns
                        .iter()
                        .filter(|(_, slot)| slot.conn.stream().is_some())
                        .map(|(key, _)| key)
                        .collect();
                    keys.into_iter().for_each(|key| self.send_back(key));
                    continue;
                }
            };
            self.topics
                .append_at(event.seq, &event.topics, &event.frame, event.time_ms);
            self.fan_out.drained(event.frame.len());
            events_left -= 1;
            bytes_left = bytes_left.saturating_sub(event.frame.len());
        }
    }

    /// `fanout.rs`'s `fan_out`.
    fn fan_out(&mut self) {
        let mut leftovers = std::mem::take(&mut self.write_next);
        let mut dirty = std::mem::take(&mut self.dirty);
        self.topics.take_dirty(&mut dirty);
        let conns = &mut self.conns;
        let queue = &mut self.fan_out;
        let mut enqueue = |key: usize| {
            let fresh = conns
                .get_mut(key)
                .and_then(|slot| slot.conn.stream_mut())
                .is_some_and(|stream| stream.enqueue());
            if fresh {
                queue.push(key);
            }
        };
        for &id in &dirty {
            if let Some(topic) = self.topics.get(id) {
                topic
                    .subscribers
                    .iter()
                    .for_each(|subscriber| enqueue(subscriber.conn));
            }
        }
        self.topics.sweep(&dirty);
        self.dirty = dirty;
        for key in leftovers.drain(..) {
            let queued = self
                .conns
                .get(key)
                .and_then(|s| s.conn.stream())
                .map(|s| s.is_queued());
            if queued == Some(false) {
                self.write_or_check(key);
            }
        }
        self.write_next = leftovers;
        for _ in 0..FAN_OUT_STREAMS_PER_TURN_MAX {
            let Some(key) = self.fan_out.pop() else {
                break;
            };
            let Some(stream) = self.conns.get_mut(key).and_then(|s| s.conn.stream_mut()) else {
                continue;
            };
            stream.dequeue();
            self.write_or_check(key);
        }
    }

    /// `fanout.rs`'s `write_or_check`.
    fn write_or_check(&mut self, key: usize) {
        let Some(stream) = self.conns.get(key).and_then(|s| s.conn.stream()) else {
            return;
        };
        if !stream.is_blocked() {
            self.write_stream(key);
        } else if stream.too_slow(&self.topics, self.limits.lag_bytes_max) {
            self.close_stream(key, StreamEnd::SlowConsumer);
        }
    }

    /// `clock.rs`'s `set_timer`.
    fn set_timer(&mut self, key: usize, at_ms: u64) {
        let at = self.origin + Duration::from_millis(at_ms);
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(old) = slot.timer.take() {
            self.wheel.cancel(old);
        }
        slot.timer = Some(self.wheel.set(at, key));
    }

    fn rearm_exchange(&mut self, key: usize) {
        if let Some(at_ms) = self
            .conns
            .get_mut(key)
            .and_then(|slot| slot.conn.take_deadline())
        {
            self.set_timer(key, at_ms);
        }
    }

    /// `clock.rs`'s `send_back` (never draining: the sim does not shut down).
    fn send_back(&mut self, key: usize) {
        let retry_ms = conn::jittered_retry_ms(&self.limits, self.rng.next(), false);
        if let Some(stream) = self.conns.get_mut(key).and_then(|s| s.conn.stream_mut()) {
            stream.close_with_hint(retry_ms, Parting::LostEvents);
        }
        self.write_stream(key);
    }

    fn expire_timers(&mut self) {
        let mut due = Vec::new();
        let now = self.origin + Duration::from_millis(self.now.ms);
        self.wheel.expire(now, |key| due.push(key));
        for key in due {
            self.on_timer(key);
        }
    }

    fn on_timer(&mut self, key: usize) {
        let now = self.now;
        let random = self.rng.next();
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        slot.timer = None;
        match slot.conn.on_deadline(now, &self.limits, random) {
            Expired::Close(end) => self.close_stream(key, end),
            Expired::Drive => {
                self.rearm_exchange(key);
                self.drive(key);
            }
            Expired::Write { next_ms, .. } => {
                self.set_timer(key, next_ms);
                self.write_stream(key);
            }
        }
    }
}
