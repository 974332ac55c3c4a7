//! The one boundary between event sources and the event loops.
//!
//! A [`Bus`] assigns each event its id, encodes it once into a frame, and hands the same
//! `Arc<Published>` to every loop's inbox through [`Fanout`], in id order. Publishers (HTTP
//! handlers on any loop, library handles on any thread) only ever call the bus; loops only
//! ever read their inbox. The embedded bus is the default; a Redis bus plugs in here.

pub(crate) mod embedded;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::ring::Seq;
use crate::sse::Frame;
use crate::{EventId, PublishError};

/// Events one loop's inbox may hold. A publisher that finds an inbox this full gets
/// `PublishError::Busy` (HTTP 503) instead of blocking; a loop drains far faster than
/// this fills unless it is stuck.
pub(crate) const INBOX_EVENTS_MAX: usize = 65_536;
/// Frame bytes one loop's inbox may hold, for the same reason: a stuck loop must not let
/// publishers pile up memory.
pub(crate) const INBOX_BYTES_MAX: usize = 256 * 1024 * 1024;

/// An event on its way to the loops: assigned, encoded, immutable.
pub(crate) struct Published {
    /// Bus-assigned sequence number.
    pub seq: Seq,
    /// Distinct, validated topic names.
    pub topics: Box<[Box<str>]>,
    /// The encoded event, shared by every loop and subscriber.
    pub frame: Frame,
}

/// What a loop's inbox carries.
pub(crate) type InboxItem = Arc<Published>;

/// A loop's receiving end.
pub(crate) struct Inbox {
    rx: Receiver<InboxItem>,
    bytes: Arc<AtomicUsize>,
}

impl Inbox {
    /// Takes the next event, if any.
    pub(crate) fn try_recv(&self) -> Option<InboxItem> {
        let item = self.rx.try_recv().ok()?;
        self.bytes.fetch_sub(item.frame.len(), Ordering::Relaxed);
        Some(item)
    }
}

struct Link {
    tx: Sender<InboxItem>,
    bytes: Arc<AtomicUsize>,
    waker: Arc<mio::Waker>,
}

/// The senders to every loop's inbox. Callers serialise `deliver` calls (the bus holds a
/// lock across id assignment and delivery), which is what keeps every inbox in id order.
pub(crate) struct Fanout {
    links: Vec<Link>,
}

impl Fanout {
    /// An empty fan-out; `add_loop` connects loops before any publish.
    pub(crate) fn new() -> Self {
        Fanout { links: Vec::new() }
    }

    /// Creates an inbox for a loop woken by `waker`.
    pub(crate) fn add_loop(&mut self, waker: Arc<mio::Waker>) -> Inbox {
        let (tx, rx) = crossbeam_channel::bounded(INBOX_EVENTS_MAX);
        let bytes = Arc::new(AtomicUsize::new(0));
        self.links.push(Link {
            tx,
            bytes: bytes.clone(),
            waker,
        });
        Inbox { rx, bytes }
    }

    /// Whether every inbox can take a frame of `len` bytes. Only the serialised publisher
    /// adds to inboxes, so room seen here is still there at `deliver`.
    pub(crate) fn has_room(&self, len: usize) -> bool {
        self.links.iter().all(|link| {
            link.tx.len() < INBOX_EVENTS_MAX
                && link.bytes.load(Ordering::Relaxed) + len <= INBOX_BYTES_MAX
        })
    }

    /// Hands an event to every loop, waking a loop only when its inbox was empty (a loop
    /// drains its inbox to empty, or notes that it stopped early, before it sleeps).
    pub(crate) fn deliver(&self, item: &InboxItem, origin: Option<usize>) {
        for (index, link) in self.links.iter().enumerate() {
            let was_empty = link.tx.is_empty();
            link.bytes.fetch_add(item.frame.len(), Ordering::Relaxed);
            if link.tx.try_send(item.clone()).is_err() {
                // has_room was checked under the same lock; only a loop that has exited
                // (shutdown) disconnects.
                link.bytes.fetch_sub(item.frame.len(), Ordering::Relaxed);
                continue;
            }
            if was_empty && origin != Some(index) {
                if let Err(error) = link.waker.wake() {
                    log::warn!("could not wake an event loop: {error}");
                }
            }
        }
    }

    /// Wakes every loop (used for shutdown).
    pub(crate) fn wake_all(&self) {
        for link in &self.links {
            let _ = link.waker.wake();
        }
    }
}

/// Where a resuming subscriber starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resume {
    /// After the event with this sequence number.
    After(Seq),
    /// The id is not one of this bus's (another epoch, malformed, or from the future).
    Unknown,
}

/// An event validated for publishing: distinct topics, checked name and size.
pub(crate) struct Outgoing<'a> {
    /// Distinct, valid topic names.
    pub topics: Vec<Box<str>>,
    /// Valid event name.
    pub name: Option<&'a str>,
    /// The data.
    pub data: &'a str,
    /// Optional `retry:` hint.
    pub retry_ms: Option<u32>,
    /// The loop publishing it, if any: it drains its own inbox later in the same turn,
    /// so it needs no wake-up.
    pub origin: Option<usize>,
}

/// The event source every loop reads from.
pub(crate) trait Bus: Send + Sync {
    /// Assigns an id, encodes the event and delivers it to every loop.
    fn publish(&self, event: Outgoing<'_>) -> Result<EventId, PublishError>;
    /// Interprets a client's Last-Event-ID.
    fn resume_point(&self, last_event_id: &str) -> Resume;
    /// Events published since start.
    fn published(&self) -> u64;
    /// Refuses further publishes.
    fn close(&self);
}
