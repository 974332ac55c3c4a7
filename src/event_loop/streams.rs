//! Streams on the loop: opening one, draining the inbox into the topic rings, and the
//! fan-out that writes each stream whose topics moved once per turn.

use std::io::Write;
use std::time::Duration;

use super::*;

impl EventLoop {
    /// Turns an HTTP connection into an event stream and sends its first bytes.
    pub(super) fn open_stream(&mut self, key: usize, request: StreamRequest) {
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
            &self.shared.config,
        );
        let mut stream = Stream::new(start, self.now_ms());
        let lifetime_ms = self.shared.config.max_stream_lifetime_ms;
        if lifetime_ms != 0 {
            // Between 90 % and 100 % of the configured lifetime.
            let jitter = self.random() % (lifetime_ms / 10).max(1);
            stream.expires_ms = self.now_ms() + lifetime_ms - jitter;
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
        if self.drain_deadline.is_some() {
            let retry_ms = self.jittered_retry_ms();
            if let Some(Connection {
                state: ConnState::Stream(stream),
                ..
            }) = self.conns.get_mut(key)
            {
                stream.close_with_hint(retry_ms);
            }
        }
        self.arm_stream_timer(key);
        self.flush(key);
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
        let lag_max = self.shared.config.max_lag_bytes;
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
            self.topics.append(item.seq, &item.topics, &item.frame);
            events += 1;
            bytes += item.frame.len();
        }
        self.inbox_pending = true;
    }

    /// Writes every stream whose topics received events (once each), and those left over
    /// from the last turn. Blocked streams are only checked for lag.
    pub(super) fn fan_out(&mut self) {
        let mut queue = std::mem::take(&mut self.flush_next);
        let mut dirty = std::mem::take(&mut self.dirty);
        self.topics.take_dirty(&mut dirty);
        let turn = self.turn;
        for &key in &queue {
            if let Some(Connection {
                state: ConnState::Stream(stream),
                ..
            }) = self.conns.get_mut(key)
            {
                stream.queued_turn = turn;
            }
        }
        for &id in &dirty {
            let Some(topic) = self.topics.get(id) else {
                continue;
            };
            for subscriber in &topic.subscribers {
                if let Some(Connection {
                    state: ConnState::Stream(stream),
                    ..
                }) = self.conns.get_mut(subscriber.conn)
                {
                    if stream.queued_turn != turn {
                        stream.queued_turn = turn;
                        queue.push(subscriber.conn);
                    }
                }
            }
        }
        self.topics.sweep(&dirty);
        self.dirty = dirty;
        let lag_max = self.shared.config.max_lag_bytes;
        for &key in &queue {
            let Some(Connection {
                state: ConnState::Stream(stream),
                ..
            }) = self.conns.get(key)
            else {
                continue;
            };
            if !stream.blocked {
                self.flush(key);
            } else if stream.too_slow(&self.topics, lag_max) {
                self.close_stream(key, StreamEnd::SlowConsumer);
            }
        }
        queue.clear();
        if self.flush_next.is_empty() {
            self.flush_next = queue; // Keep the allocation.
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
        let heartbeat_ms = self.shared.config.heartbeat_ms;
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
