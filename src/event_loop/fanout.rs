//! The live path on the loop: published events drained from the inbox into the topic
//! rings, and the fan-out that writes each stream whose topics moved once per turn.

use super::EventLoop;
use crate::bus::InboxItem;
use crate::conn::StreamEnd;
use crate::history::ring::Seq;

impl EventLoop {
    /// Takes published events from the inbox into the topic rings.
    pub(super) fn drain_inbox(&mut self) {
        let (events_max, bytes_max) = self.inbox_budget;
        let mut events = 0;
        let mut bytes = 0;
        while events < events_max && bytes < bytes_max {
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

    /// Writes every stream whose topics received events (once each), and those left over
    /// from the last turn. Blocked streams are only checked for lag.
    pub(super) fn fan_out(&mut self) {
        let mut queue = std::mem::take(&mut self.pending.write_next);
        let mut dirty = std::mem::take(&mut self.pending.dirty);
        self.topics.take_dirty(&mut dirty);
        let turn = self.turn;
        // Leftovers may name a stream more than once (written again from a timer or a
        // readiness event): each is written once per turn, within one budget.
        let conns = &mut self.conns;
        queue.retain(|&key| {
            conns
                .get_mut(key)
                .and_then(|slot| slot.conn.stream_mut())
                .is_some_and(|stream| stream.queue_in(turn))
        });
        for &id in &dirty {
            let Some(topic) = self.topics.get(id) else {
                continue;
            };
            for subscriber in &topic.subscribers {
                let queued = self
                    .conns
                    .get_mut(subscriber.conn)
                    .and_then(|slot| slot.conn.stream_mut())
                    .is_some_and(|stream| stream.queue_in(turn));
                if queued {
                    queue.push(subscriber.conn);
                }
            }
        }
        self.topics.sweep(&dirty);
        self.pending.dirty = dirty;
        let lag_max = self.ctx.limits.lag_bytes_max;
        for &key in &queue {
            let Some(stream) = self.conns.get(key).and_then(|slot| slot.conn.stream()) else {
                continue;
            };
            if !stream.is_blocked() {
                self.write_stream(key);
            } else if stream.too_slow(&self.topics, lag_max) {
                self.close_stream(key, StreamEnd::SlowConsumer);
            }
        }
        queue.clear();
        if self.pending.write_next.is_empty() {
            self.pending.write_next = queue; // Keep the allocation.
        }
    }
}
