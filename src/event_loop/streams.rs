//! Streams on the loop: opening one, draining the inbox into the topic rings, and the
//! fan-out that writes each stream whose topics moved once per turn.

use std::io::Write;
use std::time::Duration;

use super::*;
use crate::bus::{BackfillError, InboxItem};

/// The `retry:` a stream gets when its backfill was cut at the byte budget: the client
/// comes straight back for the rest.
const PARTIAL_BACKFILL_RETRY_MS: u32 = 100;

/// `Stream::queued_turn` of a stream waiting in the fan-out queue (no turn reaches it).
const QUEUED: u64 = u64::MAX;

impl EventLoop {
    /// Starts a subscription: at once, or, when it resumes from before what this loop's
    /// rings hold and the bus keeps a log, once the bus has fetched the missed events.
    pub(super) fn open_stream(&mut self, key: usize, request: StreamRequest) {
        match self.backfill_request(&request) {
            None => self.start_stream(key, request, None),
            Some(Ok(fetch)) => self.fetch_backfill(key, request, fetch, None),
            Some(Err(error)) => self.refuse_stream(key, error, &request),
        }
    }

    /// Parks a subscription while the bus fetches `fetch`; `so_far` is what earlier
    /// fetches for it brought.
    fn fetch_backfill(
        &mut self,
        key: usize,
        request: StreamRequest,
        fetch: BackfillRequest,
        so_far: Option<Backfill>,
    ) {
        let serial = self.shared.serials.fetch_add(1, Ordering::Relaxed);
        let ticket = Ticket {
            loop_index: self.index,
            conn: key,
            serial,
        };
        if let Err(error) = self.shared.bus.backfill(fetch, ticket) {
            return self.refuse_stream(key, error.into(), &request);
        }
        if let Some(Connection {
            state: ConnState::Http(exchange),
            ..
        }) = self.conns.get_mut(key)
        {
            exchange.await_resume(serial, request, so_far);
        }
    }

    /// Answers a subscription that cannot start with `error` (and closes).
    fn refuse_stream(&mut self, key: usize, error: HttpError, request: &StreamRequest) {
        if let Some(Connection {
            state: ConnState::Http(exchange),
            ..
        }) = self.conns.get_mut(key)
        {
            exchange.refuse_stream(error, request);
            self.drive_http(key);
        }
    }

    /// Newest eviction across the rings of these topics (or the one a new topic inherits).
    fn evicted_max(&self, topics: &[String]) -> Seq {
        topics
            .iter()
            .map(|name| self.topics.evicted_max(name))
            .max()
            .unwrap_or(0)
    }

    /// What to fetch from the bus for a resume this loop's rings cannot serve: the events
    /// after the client's id up to where the rings (or the bus's reach) begin. `None`
    /// when the rings suffice; an error when the bus cannot tell yet.
    fn backfill_request(
        &self,
        request: &StreamRequest,
    ) -> Option<Result<BackfillRequest, HttpError>> {
        let bus = &*self.shared.bus;
        if !bus.can_backfill() {
            return None;
        }
        let Resume::After(after) = bus.resume_point(request.last_event_id.as_deref()?) else {
            return None; // Not an id of this bus: the gap event, as always.
        };
        let Some(reach) = bus.reach_floor() else {
            return Some(Err(BackfillError::Unavailable.into()));
        };
        let until = reach.max(self.evicted_max(&request.topics));
        (after < until).then(|| {
            Ok(BackfillRequest {
                after,
                until,
                topics: request.topics.clone(),
                bytes_max: self.shared.limits.lag_bytes_max,
                client: request.client,
            })
        })
    }

    /// A fetch came back. The rings may have evicted past its end meanwhile (events kept
    /// arriving): fetch the difference too, until the rings cover the rest or the byte
    /// budget is spent; then start the stream.
    fn on_backfilled(&mut self, key: usize, request: StreamRequest, mut backfill: Backfill) {
        let budget = self.shared.limits.lag_bytes_max;
        // The bus's reach moves up when it lost events: those must come from its log too.
        let reach = self.shared.bus.reach_floor().unwrap_or(0);
        let evicted = self.evicted_max(&request.topics).max(reach);
        if backfill.complete && backfill.through < evicted {
            if backfill.frames.len() >= budget {
                backfill.complete = false;
            } else {
                let fetch = BackfillRequest {
                    after: backfill.through,
                    until: evicted,
                    topics: request.topics.clone(),
                    bytes_max: budget - backfill.frames.len(),
                    client: request.client,
                };
                return self.fetch_backfill(key, request, fetch, Some(backfill));
            }
        }
        self.start_stream(key, request, Some(backfill));
    }

    /// Answers the bus's completions: publish answers and fetched resumes.
    pub(super) fn drain_completions(&mut self) {
        while let Some(completion) = self.inbox.try_completion() {
            match completion {
                Completion::Published(ticket, result) => {
                    if let Some(Connection {
                        state: ConnState::Http(exchange),
                        ..
                    }) = self.conns.get_mut(ticket.conn)
                    {
                        let (ours, refusal) = exchange.on_published(ticket.serial, result);
                        if let Some(error) = refusal {
                            super::http::count_refusal(&self.shared, error);
                        }
                        if ours {
                            self.drive_http(ticket.conn);
                        }
                    }
                }
                Completion::Backfilled(ticket, result) => {
                    let Some(Connection {
                        state: ConnState::Http(exchange),
                        ..
                    }) = self.conns.get_mut(ticket.conn)
                    else {
                        continue;
                    };
                    let Some((request, so_far)) = exchange.take_resume(ticket.serial) else {
                        continue;
                    };
                    match result {
                        Ok(backfill) => {
                            let backfill = match so_far {
                                Some(mut earlier) => {
                                    earlier.frames.extend_from_slice(&backfill.frames);
                                    Backfill {
                                        frames: earlier.frames,
                                        gap: earlier.gap || backfill.gap,
                                        ..backfill
                                    }
                                }
                                None => backfill,
                            };
                            self.on_backfilled(ticket.conn, request, backfill);
                        }
                        Err(error) => self.refuse_stream(ticket.conn, error.into(), &request),
                    }
                }
            }
        }
    }

    /// Turns an HTTP connection into an event stream and sends its first bytes.
    fn start_stream(&mut self, key: usize, request: StreamRequest, backfill: Option<Backfill>) {
        let topics: Box<[StreamTopic]> = request
            .topics
            .iter()
            .enumerate()
            .map(|(slot, name)| {
                // Topics per subscription are capped far below u16::MAX by config validation.
                let subscriber = SubscriberRef {
                    conn: key,
                    slot: slot as u16,
                };
                let (id, position) = self.topics.subscribe(name, subscriber);
                StreamTopic { id, position }
            })
            .collect();
        let start = stream::start_stream(
            &request,
            topics,
            &self.topics,
            &*self.shared.bus,
            &self.shared.limits,
            backfill,
        );
        let partial = start.partial;
        let mut stream = Stream::new(start, self.now_ms());
        if partial {
            stream.close_with_hint(PARTIAL_BACKFILL_RETRY_MS);
        }
        if let Some(lifetime) = self.shared.limits.stream_lifetime {
            let lifetime_ms = lifetime.as_millis() as u64;
            // Between 90 % and 100 % of the configured lifetime.
            let jitter = self.random() % (lifetime_ms / 10).max(1);
            stream.expires_ms = self.now_ms() + lifetime_ms - jitter;
        }
        if let Some(until_unix_ms) = request.token_until_unix_ms {
            // The token's end (exp plus the leeway) ends the stream too, whichever comes
            // first: the client comes back, after a jittered `retry:`, with a fresh token.
            let token_end_ms = self.loop_ms_at(until_unix_ms);
            if stream.expires_ms == 0 || token_end_ms < stream.expires_ms {
                stream.expires_ms = token_end_ms;
            }
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let ConnState::Http(exchange) =
            std::mem::replace(&mut conn.state, ConnState::Stream(stream))
        {
            self.recycle(exchange.into_buffer());
        }
        self.subscribers += 1;
        self.arm_stream_timer(key);
        if self.drain_deadline.is_some() {
            self.send_back(key); // Opened while draining: told to come back at once.
        } else {
            self.flush(key);
        }
    }

    /// Writes a stream everything it is behind by, within the per-turn budget.
    pub(super) fn flush(&mut self, key: usize) {
        let Some(Connection {
            socket,
            state: ConnState::Stream(stream),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let lag_max = self.shared.limits.lag_bytes_max;
        let now_ms = self.now.saturating_duration_since(self.origin).as_millis() as u64;
        let counters = &mut self.counters;
        let mut written = 0;
        let outcome = stream.flush(
            &self.topics,
            STREAM_WRITES_PER_TURN_MAX,
            now_ms,
            &mut counters.deliveries,
            |slices| {
                let outcome = socket::io(|| socket.write_vectored(slices));
                if let IoOutcome::Done(n) = outcome {
                    written += n;
                }
                outcome
            },
        );
        counters.bytes_written += written as u64;
        match outcome {
            Flushed::Idle => {}
            Flushed::Blocked => {
                stream.blocked = true;
                if stream.too_slow(&self.topics, lag_max) {
                    self.close_stream(key, StreamEnd::SlowConsumer);
                }
            }
            Flushed::More => self.flush_next.push(key),
            Flushed::End(end) => self.close_stream(key, end),
        }
    }

    /// Takes published events from the inbox into the topic rings.
    pub(super) fn drain_inbox(&mut self) {
        let mut events = 0;
        let mut bytes = 0;
        while events < self.inbox_events_per_turn && bytes < self.inbox_bytes_per_turn {
            let Some(item) = self.inbox.try_recv() else {
                self.inbox_pending = false;
                return;
            };
            let event = match item {
                InboxItem::Event(event) => event,
                InboxItem::Lost { through } => {
                    self.restart_streams(through);
                    continue;
                }
            };
            self.topics.append(event.seq, &event.topics, &event.frame);
            events += 1;
            bytes += event.frame.len();
        }
        self.inbox_pending = true;
    }

    /// The bus lost events up to `through` before this loop got them (see
    /// `InboxItem::Lost`): every stream is told to come back after a jittered delay.
    /// Resuming, each is served from the bus's log, which reports the gap to the clients
    /// that missed something.
    fn restart_streams(&mut self, through: Seq) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| matches!(conn.state, ConnState::Stream(_)))
            .map(|(key, _)| key)
            .collect();
        if !keys.is_empty() {
            log::info!(
                "telling {} streams to resume after lost events (up to {})",
                keys.len(),
                self.shared.bus.id_of(through)
            );
        }
        for key in keys {
            self.send_back(key);
        }
    }

    /// Queues every stream whose topics received events, and those left over from the
    /// last turn, behind the streams still queued; then writes at most
    /// `FAN_OUT_STREAMS_PER_TURN_MAX` of them, so the loop polls again and takes new
    /// events mid-pass: a stream not yet written gets them in the same write. Blocked
    /// streams are only checked for lag.
    pub(super) fn fan_out(&mut self) {
        let mut leftovers = std::mem::take(&mut self.flush_next);
        let mut dirty = std::mem::take(&mut self.dirty);
        self.topics.take_dirty(&mut dirty);
        let conns = &mut self.conns;
        let queue = &mut self.fan_out_queue;
        // A stream is in the queue at most once: a key closed and reused while queued is
        // at worst written once more, with nothing to send.
        let mut enqueue = |key: usize| {
            if let Some(Connection {
                state: ConnState::Stream(stream),
                ..
            }) = conns.get_mut(key)
            {
                if stream.queued_turn != QUEUED {
                    stream.queued_turn = QUEUED;
                    queue.push_back(key);
                }
            }
        };
        leftovers.drain(..).for_each(&mut enqueue);
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
        self.flush_next = leftovers; // Keep the allocation.
        let lag_max = self.shared.limits.lag_bytes_max;
        for _ in 0..FAN_OUT_STREAMS_PER_TURN_MAX {
            let Some(key) = self.fan_out_queue.pop_front() else {
                break;
            };
            let Some(Connection {
                state: ConnState::Stream(stream),
                ..
            }) = self.conns.get_mut(key)
            else {
                continue;
            };
            stream.queued_turn = self.turn;
            if !stream.blocked {
                self.flush(key);
            } else if stream.too_slow(&self.topics, lag_max) {
                self.close_stream(key, StreamEnd::SlowConsumer);
            }
        }
    }

    pub(super) fn close_stream(&mut self, key: usize, end: StreamEnd) {
        match end {
            StreamEnd::SlowConsumer => {
                self.counters.slow_closes += 1;
                log::debug!("closing slow subscriber {key}");
            }
            StreamEnd::PeerGone => log::trace!("subscriber {key} went away"),
            StreamEnd::Finished => log::trace!("subscriber {key} told to reconnect later"),
        }
        self.close(key);
    }

    /// Sets a stream's next check: its next possible heartbeat or the end of its life.
    pub(super) fn arm_stream_timer(&mut self, key: usize) {
        let heartbeat_ms = self.shared.limits.heartbeat.as_millis() as u64;
        let Some(Connection {
            state: ConnState::Stream(stream),
            ..
        }) = self.conns.get(key)
        else {
            return;
        };
        let now_ms = self.now_ms();
        let due_ms = stream.last_write_ms + heartbeat_ms;
        // A heartbeat that was due but could not be queued (the stream is busy) is
        // looked at again a full interval later.
        let mut at_ms = if due_ms > now_ms {
            due_ms
        } else {
            now_ms + heartbeat_ms
        };
        if stream.expires_ms != 0 {
            at_ms = at_ms.min(stream.expires_ms);
        }
        let at = self.origin + Duration::from_millis(at_ms);
        self.set_timer(key, at, false);
    }
}
