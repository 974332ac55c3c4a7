//! The embedded, in-process bus: ids are `<epoch>-<seq>`, where the epoch is the start
//! time in Unix milliseconds, so an id from an earlier run is recognised as foreign.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{
    BackfillError, BackfillRequest, Bus, BusHealth, BusStats, Fanout, InboxItem, Outgoing,
    Published, Resume, Stored, Submitted, Ticket,
};
use crate::event::{EventId, PublishError};
use crate::history::ring::Seq;
use crate::sse::{encode_event, EventFields};

/// In-process sequence numbers with an epoch.
pub(crate) struct EmbeddedBus {
    epoch: u64,
    /// The last assigned sequence number (the next is one more); the lock also serialises delivery so inboxes
    /// receive events in id order.
    next: Mutex<Seq>,
    published: AtomicU64,
    /// The publish time of the last event (Unix ms), written under `next`'s lock: times
    /// never go back in id order even when the wall clock does, which `since` and the
    /// history's time to live rely on.
    last_ms: AtomicU64,
    closed: AtomicBool,
    fanout: Fanout,
}

impl EmbeddedBus {
    /// A bus delivering to `fanout`'s loops.
    pub(crate) fn new(fanout: Fanout) -> Self {
        let epoch = unix_ms().max(1);
        EmbeddedBus {
            epoch,
            next: Mutex::new(0),
            published: AtomicU64::new(0),
            last_ms: AtomicU64::new(epoch),
            closed: AtomicBool::new(false),
            fanout,
        }
    }

    fn format_id(&self, seq: Seq) -> String {
        // Sized once, without the formatting machinery: this runs on every publish.
        let (mut epoch, mut digits) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (epoch, seq) = (epoch.format(self.epoch), digits.format(seq));
        let mut id = String::with_capacity(epoch.len() + 1 + seq.len());
        id.push_str(epoch);
        id.push('-');
        id.push_str(seq);
        id
    }
}

/// The wall clock in Unix ms (0 if it reads before 1970).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl EmbeddedBus {
    /// Publishes `events` with consecutive ids, or none of them: the lock is held from the
    /// first id to the last delivery, and room for the whole batch is checked first.
    fn publish_now(&self, events: Vec<Outgoing<'_>>) -> Stored {
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::ShuttingDown);
        }
        // A panic while holding the lock cannot leave the counter half-updated: it is a
        // single integer written last. So a poisoned lock is safe to keep using.
        let mut last = self
            .next
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // Under the lock, so times follow ids; one time for a batch.
        let time_ms = self.last_ms.load(Ordering::Relaxed).max(unix_ms());
        self.last_ms.store(time_ms, Ordering::Relaxed);
        let mut ids = Vec::with_capacity(events.len());
        let mut items = Vec::with_capacity(events.len());
        let mut bytes = 0;
        for (seq, event) in (*last + 1..).zip(events) {
            let id = self.format_id(seq);
            let frame = encode_event(&EventFields {
                id: &id,
                name: event.name,
                data: event.data,
                retry_ms: event.retry_ms,
            });
            bytes += frame.len();
            items.push(InboxItem::Event(Arc::new(Published {
                seq,
                topics: event.topics.into_boxed_slice(),
                frame,
                time_ms,
            })));
            ids.push(EventId(id));
        }
        if !self.fanout.has_room(items.len(), bytes) {
            return Err(PublishError::Busy);
        }
        let newest = *last + items.len() as Seq;
        // Recognisable before any loop can send them: a client that got an event from one
        // loop and resumes on another must not find its id "from the future".
        // The embedded sequence counts publishes of one run, far below u64::MAX.
        self.published
            .store(u64::try_from(newest).unwrap_or(u64::MAX), Ordering::Release);
        for item in &items {
            self.fanout.broadcast(item);
        }
        *last = newest;
        Ok(ids)
    }
}

impl Bus for EmbeddedBus {
    /// Always answers at once: ids come from memory.
    fn publish(&self, events: Vec<Outgoing<'_>>, _ticket: Option<Ticket>) -> Submitted {
        Submitted::Done(self.publish_now(events))
    }

    fn resume_point(&self, last_event_id: &str) -> Resume {
        let Some((epoch, seq)) = last_event_id.split_once('-') else {
            return Resume::Unknown;
        };
        let (Ok(epoch), Ok(seq)) = (epoch.parse::<u64>(), seq.parse::<u64>()) else {
            return Resume::Unknown;
        };
        if epoch != self.epoch || seq > self.published.load(Ordering::Acquire) {
            return Resume::Unknown;
        }
        Resume::After(Seq::from(seq))
    }

    fn id_of(&self, seq: Seq) -> String {
        self.format_id(seq)
    }

    /// Ids are a counter: the rings keep each event's time.
    fn seq_at(&self, _unix_ms: u64) -> Option<Seq> {
        None
    }

    /// Every event of this run reaches the loops.
    fn reach_floor(&self) -> Option<Seq> {
        Some(0)
    }

    /// The rings are the only history.
    fn can_backfill(&self) -> bool {
        false
    }

    fn backfill(&self, _request: BackfillRequest, _ticket: Ticket) -> Result<(), BackfillError> {
        Err(BackfillError::Unavailable)
    }

    fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    fn stats(&self) -> BusStats {
        BusStats::default()
    }

    /// In-process: nothing to lose contact with.
    fn health(&self) -> BusHealth {
        BusHealth::Connected
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.fanout.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(data: &str) -> Outgoing<'_> {
        Outgoing {
            topics: vec!["t".into()],
            name: None,
            data,
            retry_ms: None,
        }
    }

    #[test]
    fn ids_increase_and_resume_recognises_epoch() {
        let bus = EmbeddedBus::new(Fanout::new());
        let first = bus.publish_now(vec![outgoing("a")]).unwrap().remove(0);
        let second = bus.publish_now(vec![outgoing("b")]).unwrap().remove(0);
        assert_eq!(bus.resume_point(first.as_str()), Resume::After(1));
        assert_eq!(bus.resume_point(second.as_str()), Resume::After(2));
        assert_eq!(bus.resume_point(&bus.format_id(3)), Resume::Unknown);
        assert_eq!(bus.resume_point("1-1"), Resume::Unknown);
        assert_eq!(bus.resume_point("nonsense"), Resume::Unknown);
        assert_eq!(bus.resume_point(""), Resume::Unknown);
        bus.close();
        assert_eq!(
            bus.publish(vec![outgoing("c")], None),
            Submitted::Done(Err(PublishError::ShuttingDown))
        );
        assert_eq!(bus.published(), 2);
    }

    /// A batch takes consecutive ids and reaches an inbox whole, in order; one that does
    /// not fit refuses all its events and leaves the sequence where it was.
    #[test]
    fn a_batch_is_consecutive_and_all_or_nothing() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let mut fanout = Fanout::new();
        let inbox = fanout.add_loop(waker);
        let bus = EmbeddedBus::new(fanout);
        let ids = bus
            .publish_now(vec![outgoing("a"), outgoing("b"), outgoing("c")])
            .unwrap();
        let seqs: Vec<Resume> = ids.iter().map(|id| bus.resume_point(id.as_str())).collect();
        assert_eq!(seqs, [Resume::After(1), Resume::After(2), Resume::After(3)]);
        let too_many: Vec<Outgoing<'_>> = (0..super::super::INBOX_EVENTS_MAX - 2)
            .map(|_| outgoing("x"))
            .collect();
        assert_eq!(bus.publish_now(too_many), Err(PublishError::Busy));
        assert_eq!(bus.published(), 3);
        let mut delivered = Vec::new();
        while let Some(InboxItem::Event(published)) = inbox.try_recv() {
            delivered.push(published.seq);
        }
        assert_eq!(delivered, [1, 2, 3]);
        let next = bus.publish_now(vec![outgoing("d")]).unwrap();
        assert_eq!(bus.resume_point(next[0].as_str()), Resume::After(4));
    }
}
