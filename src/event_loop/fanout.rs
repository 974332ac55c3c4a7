//! The live path on the loop: published events drained from the inbox into the topic
//! rings, and the fan-out that writes each stream whose topics moved once per turn.

use super::EventLoop;
use crate::bus::InboxItem;
use crate::conn::StreamEnd;
use crate::history::ring::Seq;

/// Streams the fan-out writes per turn before the loop polls again. A pass over the
/// thousands of subscribers of one topic takes 100 to 450 ms of wall time on a busy box;
/// between slices the loop reads new publishes and drains its inbox, so an event published
/// mid-pass reaches every stream not yet written in the same pass (in the same write)
/// instead of waiting for the next pass (BENCHMARKS.md, "Single-topic fan-out").
const FAN_OUT_STREAMS_PER_TURN_MAX: usize = 256;

impl EventLoop {
    /// Takes published events from the inbox into the topic rings, within what is left of
    /// the inbox budget owed to the oldest waiting stream (`FanOutQueue::begin_drain`).
    pub(super) fn drain_inbox(&mut self) {
        let (mut events_left, mut bytes_left) = self.pending.fan_out.begin_drain(self.inbox_budget);
        self.inbox_pending = true;
        while events_left > 0 && bytes_left > 0 {
            let Some(item) = self.inbox.try_recv() else {
                self.inbox_pending = false;
                break;
            };
            let event = match item {
                InboxItem::Event(event) => event,
                InboxItem::Lost { through } => {
                    self.restart_streams(through);
                    continue;
                }
            };
            self.topics
                .append_at(event.seq, &event.topics, &event.frame, event.time_ms);
            self.pending.fan_out.drained(event.frame.len());
            self.events_taken += 1;
            events_left -= 1;
            bytes_left = bytes_left.saturating_sub(event.frame.len());
        }
    }

    /// The bus lost events up to `through` before this loop got them (see
    /// `InboxItem::Lost`): every stream is told to come back after a jittered delay.
    /// Resuming, each is served from the bus's log, which reports the gap to the clients
    /// that missed something.
    fn restart_streams(&mut self, through: Seq) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, slot)| slot.conn.stream().is_some())
            .map(|(key, _)| key)
            .collect();
        if !keys.is_empty() {
            log::info!(
                "telling {} streams to resume after lost events (up to {})",
                keys.len(),
                self.ctx.bus.id_of(through)
            );
        }
        for key in keys {
            self.send_back(key);
        }
    }

    /// Queues every stream whose topics received events behind the streams still queued
    /// (each stream once).
    pub(super) fn queue_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.pending.dirty);
        self.topics.take_dirty(&mut dirty);
        let conns = &mut self.conns;
        let queue = &mut self.pending.fan_out;
        // A key closed and reused while queued may be queued twice: at worst written once
        // more, with nothing to send.
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
        self.pending.dirty = dirty;
    }

    /// Queues the streams whose topics moved ([`EventLoop::queue_dirty`]), writes those
    /// left over from the last turn, then at most `FAN_OUT_STREAMS_PER_TURN_MAX` of the
    /// queue, so the loop polls again and takes new events mid-pass: a stream not yet
    /// written gets them in the same write. Blocked streams are only checked for lag.
    /// Notes whether it wrote any stream, for the rest of `--coalesce-ms`.
    pub(super) fn fan_out(&mut self) {
        self.queue_dirty();
        self.pending.wrote = !self.pending.write_next.is_empty();
        let mut leftovers = std::mem::take(&mut self.pending.write_next);
        // Streams with more to write after last turn's budget go on now, outside the
        // queue (one waiting in the queue is written when its slice comes): the queue holds
        // only what new events made dirty, so it empties once the inbox budget is spent.
        for &key in &leftovers {
            let Some(stream) = self.conns.get(key).and_then(|s| s.conn.stream()) else {
                continue;
            };
            if !stream.is_queued() {
                self.write_or_check(key);
            }
        }
        leftovers.clear();
        if self.pending.write_next.is_empty() {
            self.pending.write_next = leftovers; // Keep the allocation.
        }
        for _ in 0..FAN_OUT_STREAMS_PER_TURN_MAX {
            let Some(key) = self.pending.fan_out.pop() else {
                break;
            };
            self.pending.wrote = true;
            let Some(stream) = self.conns.get_mut(key).and_then(|s| s.conn.stream_mut()) else {
                continue;
            };
            stream.dequeue();
            self.write_or_check(key);
        }
    }

    /// Writes a stream, or, while its socket is full, only checks its lag.
    fn write_or_check(&mut self, key: usize) {
        let Some(stream) = self.conns.get(key).and_then(|s| s.conn.stream()) else {
            return;
        };
        if !stream.is_blocked() {
            self.write_stream(key);
        } else if stream.too_slow(&self.topics, self.ctx.limits.lag_bytes_max) {
            self.close_stream(key, StreamEnd::SlowConsumer);
        }
    }
}
