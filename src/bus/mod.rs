//! The one boundary between event sources and the event loops.
//!
//! A [`Bus`] assigns each event its id, encodes it once into a frame, and hands the same
//! `Arc<Published>` to every loop's inbox through [`Fanout`], in id order. Publishers (HTTP
//! handlers on any loop, library handles on any thread) only ever call the bus; loops only
//! ever read their inbox. The embedded bus is the default; the Redis bus (`redis/`)
//! answers publishes and resume backfills from its own threads, through each loop's
//! completion queue.

pub(crate) mod embedded;
pub(crate) mod redis;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::event::{EventId, PublishError};
use crate::history::ring::Seq;
use crate::sse::Frame;

/// Events one loop's inbox may hold. A publisher that finds an inbox this full gets
/// `PublishError::Busy` (HTTP 503) instead of blocking; a loop drains far faster than
/// this fills unless it is stuck.
pub(crate) const INBOX_EVENTS_MAX: usize = 65_536;
/// Frame bytes one loop's inbox may hold, for the same reason: a stuck loop must not let
/// publishers pile up memory.
pub(crate) const INBOX_BYTES_MAX: usize = 256 * 1024 * 1024;
// A batch is delivered whole or refused: the largest must fit an empty inbox, or it could
// never be published.
const _: () = assert!(crate::config::BATCH_EVENTS_MAX <= INBOX_EVENTS_MAX);

/// An event on its way to the loops: assigned, encoded, immutable.
pub(crate) struct Published {
    /// Bus-assigned sequence number.
    pub seq: Seq,
    /// Distinct, validated topic names (at least one).
    pub topics: Box<[Box<str>]>,
    /// The encoded event, shared by every loop and subscriber.
    pub frame: Frame,
    /// When it was published, in Unix ms, never decreasing in id order: the embedded
    /// bus's clock (held monotonic), or the Redis entry id's millisecond part.
    pub time_ms: u64,
}

/// What a loop's inbox carries, in id order.
#[derive(Clone)]
pub(crate) enum InboxItem {
    /// The next event, shared by every loop.
    Event(Arc<Published>),
    /// The bus lost the events up to `through` before it could deliver them (its log
    /// dropped them first): every stream must resume, so that each is served from the log,
    /// which reports the gap to the clients that missed something.
    Lost {
        /// Every event up to here that this loop was not sent is gone from the log.
        through: Seq,
    },
}

impl InboxItem {
    /// The frame bytes this item holds, as counted against `INBOX_BYTES_MAX`.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            InboxItem::Event(published) => published.frame.len(),
            InboxItem::Lost { .. } => 0,
        }
    }
}

/// Which request of which connection a bus answer is for. `serial` is unique per request,
/// so it tells a connection's requests apart and a slot reused by a later connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    /// The loop that owns the connection.
    pub loop_index: usize,
    /// The connection's slab key.
    pub conn: usize,
    /// Unique per request across the server.
    pub serial: u64,
}

/// A bus's answer to a publish: the ids of all its events in order, or why none was
/// published.
pub(crate) type Stored = Result<Vec<EventId>, PublishError>;

/// What `Bus::publish` did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Submitted {
    /// Answered at once.
    Done(Stored),
    /// The answer comes later as a [`Completion`] for the ticket.
    Pending,
}

/// Events a resuming subscriber missed, fetched from the bus's shared log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Backfill {
    /// Encoded frames of the subscriber's topics, in id order.
    pub frames: Vec<u8>,
    /// Events after the client's id were trimmed from the log before it could be read.
    pub gap: bool,
    /// Every event up to here is in `frames` or is not for these topics.
    pub through: Seq,
    /// `through` reached the requested end; otherwise a budget (bytes, or entries read)
    /// ran out first, and `frames` ends with an `id:` for `through`, so the client resumes
    /// from there.
    pub complete: bool,
}

/// A resume older than a loop's rings: fetch the events in `(after, until]`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BackfillRequest {
    /// The client's Last-Event-ID, as a sequence number.
    pub after: Seq,
    /// Events above this are in (or on their way to) the loop's rings.
    pub until: Seq,
    /// The subscription's topics and wildcard patterns (`prefix*`).
    pub topics: Vec<String>,
    /// Stop adding frames past this many bytes.
    pub bytes_max: usize,
    /// Who asked: fetches are served one per client in turn.
    pub client: std::net::IpAddr,
    /// A replay (`earliest`, `since`, or the start of what the time to live keeps): what
    /// the log no longer holds is not a gap, and an `after` older than the log is no
    /// reason to skip it.
    pub replay: bool,
}

/// A bus answer to a request a connection is waiting on.
#[derive(Debug)]
pub(crate) enum Completion {
    /// The publish was stored (its ids) or refused.
    Published(Ticket, Stored),
    /// The backfill, or why it could not be fetched.
    Backfilled(Ticket, Result<Backfill, BackfillError>),
    /// The application's decision on a subscription (`authorize::pool`).
    Authorized(Ticket, crate::authorize::Decision),
}

impl Completion {
    /// The request this answers.
    pub(crate) fn ticket(&self) -> Ticket {
        match self {
            Completion::Published(ticket, _)
            | Completion::Backfilled(ticket, _)
            | Completion::Authorized(ticket, _) => *ticket,
        }
    }
}

/// Why a resume's missed events could not be fetched. The loop answers the `GET /events`
/// with a 503 and the client retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackfillError {
    /// The fetch queue, or this client address's share of it, is full.
    Busy,
    /// The bus is closing.
    ShuttingDown,
    /// The bus cannot reach its log (or has none, or does not know its reach yet).
    Unavailable,
}

/// A loop's receiving end: published events, and answers to its connections' requests.
pub(crate) struct Inbox {
    rx: Receiver<InboxItem>,
    done: Receiver<Completion>,
    bytes: Arc<AtomicUsize>,
    parked: Arc<AtomicBool>,
}

impl Inbox {
    /// Takes the next event, if any.
    pub(crate) fn try_recv(&self) -> Option<InboxItem> {
        let item = self.rx.try_recv().ok()?;
        self.bytes.fetch_sub(item.bytes(), Ordering::Relaxed);
        Some(item)
    }

    /// Takes the next completion, if any.
    pub(crate) fn try_completion(&self) -> Option<Completion> {
        self.done.try_recv().ok()
    }

    /// Whether no event and no completion waits (senders do not wake a running loop, so a
    /// loop that would rest looks here).
    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty() && self.done.is_empty()
    }

    /// Called before the loop blocks in `poll`: from here on senders wake it. Returns
    /// false (and stays awake) when something arrived meanwhile. Senders push, then check
    /// the flag; the loop sets the flag, then checks the queues; with both sequentially
    /// consistent, one of them sees the other, so nothing waits for an unrelated wake-up.
    pub(crate) fn park(&self) -> bool {
        self.parked.store(true, Ordering::SeqCst);
        if self.is_empty() {
            return true;
        }
        self.parked.store(false, Ordering::SeqCst);
        false
    }

    /// Called when `poll` returns: the loop is running and will look at its queues.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }
}

/// What wakes one loop: its waker and the flag that says it sleeps in `poll` (see
/// [`Inbox::park`]).
#[derive(Clone)]
pub(crate) struct LoopWaker {
    parked: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
}

impl LoopWaker {
    /// Wakes the loop if it is (about to be) blocked in `poll`.
    pub(crate) fn nudge(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            if let Err(error) = self.waker.wake() {
                log::warn!("could not wake an event loop: {error}");
            }
        }
    }

    /// Whether the loop is (about to be) blocked in `poll`.
    pub(crate) fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
    }
}

thread_local! {
    /// On an event loop's thread: the loops (bit `i`: loop `i`) its publishes handed events
    /// to and did not wake, because the loop does that itself later in its turn, helping a
    /// sleeping one instead where it can (`EventLoop::help_siblings`). `None` elsewhere.
    static DEFERRED_WAKES: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Loops whose index is at least this are woken at once even from a loop's thread.
const DEFERRED_LOOPS_MAX: usize = 64;

/// Makes this thread (an event loop's) leave the wake-ups its broadcasts owe other loops
/// to [`take_deferred_wakes`].
pub(crate) fn defer_wakes() {
    DEFERRED_WAKES.with(|deferred| deferred.set(Some(0)));
}

/// The loops this thread's broadcasts handed events to since the last call, as a bit set.
pub(crate) fn take_deferred_wakes() -> u64 {
    DEFERRED_WAKES.with(|deferred| match deferred.get() {
        Some(mask) => {
            deferred.set(Some(0));
            mask
        }
        None => 0,
    })
}

/// The sending half of one loop's [`Inbox`].
#[derive(Clone)]
struct InboxSender {
    /// The loop's index (its bit among the deferred wake-ups).
    index: usize,
    tx: Sender<InboxItem>,
    done: Sender<Completion>,
    bytes: Arc<AtomicUsize>,
    wake: LoopWaker,
}

impl InboxSender {
    /// After an event: wakes the loop, or, on an event loop's thread, leaves that to the
    /// end of the loop's turn.
    fn nudge_or_defer(&self) {
        let deferred = self.index < DEFERRED_LOOPS_MAX
            && DEFERRED_WAKES.with(|deferred| match deferred.get() {
                Some(mask) => {
                    deferred.set(Some(mask | 1 << self.index));
                    true
                }
                None => false,
            });
        if !deferred {
            self.wake.nudge();
        }
    }
}

/// Hands `completion` to the loop its ticket names, among `senders`.
fn complete(senders: &[InboxSender], completion: Completion) {
    let Some(sender) = senders.get(completion.ticket().loop_index) else {
        return;
    };
    // Fails only when the loop has exited, and its connections with it.
    if sender.done.send(completion).is_ok() {
        sender.wake.nudge();
    }
}

/// Hands completions to the loops their tickets name (see [`Fanout::completer`]).
#[derive(Clone)]
pub(crate) struct Completer {
    senders: Vec<InboxSender>,
}

impl Completer {
    /// Hands a completion to the loop its ticket names.
    pub(crate) fn complete(&self, completion: Completion) {
        complete(&self.senders, completion);
    }
}

/// The senders to every loop's inbox. Callers serialise `broadcast` calls (the embedded
/// bus holds a lock across id assignment and delivery, the Redis bus has one reader
/// thread), which is what keeps every inbox in id order.
pub(crate) struct Fanout {
    senders: Vec<InboxSender>,
}

impl Fanout {
    /// An empty fan-out; `add_loop` connects loops before any publish.
    pub(crate) fn new() -> Self {
        Fanout {
            senders: Vec::new(),
        }
    }

    /// Creates an inbox for a loop woken by `waker`.
    pub(crate) fn add_loop(&mut self, waker: Arc<mio::Waker>) -> Inbox {
        let (tx, rx) = crossbeam_channel::bounded(INBOX_EVENTS_MAX);
        // Unbounded in type only: each completion answers one request a bus (or the
        // authorization pool) accepted into its bounded queues, so at most that many are
        // ever here.
        let (done, done_rx) = crossbeam_channel::unbounded();
        let bytes = Arc::new(AtomicUsize::new(0));
        let parked = Arc::new(AtomicBool::new(false));
        self.senders.push(InboxSender {
            index: self.senders.len(),
            tx,
            done,
            bytes: bytes.clone(),
            wake: LoopWaker {
                parked: parked.clone(),
                waker,
            },
        });
        Inbox {
            rx,
            done: done_rx,
            bytes,
            parked,
        }
    }

    /// Whether every inbox can take `events` more items holding `bytes` frame bytes in
    /// all. Only the serialised publisher adds to inboxes, so room seen here is still there
    /// at `broadcast`.
    pub(crate) fn has_room(&self, events: usize, bytes: usize) -> bool {
        self.senders.iter().all(|sender| {
            sender.tx.len() + events <= INBOX_EVENTS_MAX
                && sender.bytes.load(Ordering::Relaxed) + bytes <= INBOX_BYTES_MAX
        })
    }

    /// Hands an item to every loop, waking only loops that are blocked in `poll` (a
    /// running loop looks at its inbox before it blocks; see [`Inbox::park`]). On an event
    /// loop's thread the wake-ups wait for the end of the loop's turn ([`defer_wakes`]).
    pub(crate) fn broadcast(&self, item: &InboxItem) {
        let bytes = item.bytes();
        for sender in &self.senders {
            sender.bytes.fetch_add(bytes, Ordering::Relaxed);
            if sender.tx.try_send(item.clone()).is_err() {
                // has_room was checked by the one serialised broadcaster; only a loop that
                // has exited (shutdown) disconnects.
                sender.bytes.fetch_sub(bytes, Ordering::Relaxed);
                continue;
            }
            sender.nudge_or_defer();
        }
    }

    /// What wakes each loop, in loop order.
    pub(crate) fn loop_wakers(&self) -> Vec<LoopWaker> {
        self.senders
            .iter()
            .map(|sender| sender.wake.clone())
            .collect()
    }

    /// Hands a completion to the loop its ticket names.
    pub(crate) fn complete(&self, completion: Completion) {
        complete(&self.senders, completion);
    }

    /// A handle that hands completions to the loops, for answers that come from outside
    /// the bus (the authorization workers).
    pub(crate) fn completer(&self) -> Completer {
        Completer {
            senders: self.senders.clone(),
        }
    }

    /// Wakes every loop (used for shutdown).
    pub(crate) fn wake_all(&self) {
        for sender in &self.senders {
            let _ = sender.wake.waker.wake();
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
    /// `since` as the query gave it (Unix ms), before the loop reads it into a `From`.
    Since(u64),
    /// Every kept event after this sequence number, with the gap event first only when
    /// `gap`: `lastEventId=earliest` and `since` (no gap: they ask for what is kept), and a
    /// Last-Event-ID older than what the time to live keeps (a gap).
    From {
        /// The cursor: events after it are sent.
        after: Seq,
        /// Whether the client is told first that it missed events.
        gap: bool,
    },
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
}

/// Rare-event counters of a bus, for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BusStats {
    /// Whether the bus's reader is connected to its log (`None`: the bus has none).
    pub connected: Option<bool>,
    /// Times the reader connected again after losing its connection.
    pub reconnects: u64,
    /// Log entries no loop received because they were malformed.
    pub skipped: u64,
    /// Resumes served from the log.
    pub backfills: u64,
    /// Times the log dropped events before this node read them.
    pub holes: u64,
    /// Log entries read to answer resumes.
    pub backfill_scanned: u64,
}

/// Whether a bus can carry events right now: what `/readyz` reports about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BusHealth {
    /// Publishes can be stored and events arrive (the embedded bus always is).
    Connected,
    /// The reader has no connection to the log: no event from any node arrives.
    ReaderDisconnected,
    /// The writer cannot reach the log: publishes are refused with 503.
    WriterDisconnected,
}

/// The event source every loop reads from.
pub(crate) trait Bus: Send + Sync {
    /// Assigns ids, encodes the events and delivers them to every loop: all of them, with
    /// consecutive ids (no other publish lands between them), or none. With a `ticket`,
    /// the bus may answer later through the ticket's loop; without one it answers now,
    /// blocking the calling thread if it must.
    fn publish(&self, events: Vec<Outgoing<'_>>, ticket: Option<Ticket>) -> Submitted;
    /// Interprets a client's Last-Event-ID.
    fn resume_point(&self, last_event_id: &str) -> Resume;
    /// The id a client sees for sequence number `seq` (the inverse of `resume_point`).
    fn id_of(&self, seq: Seq) -> String;
    /// The lowest sequence number an event published at or after `unix_ms` can have,
    /// when ids carry their publish time (a Redis id `ms-n`: `ms-0`); `None` when they do
    /// not (the embedded bus's counter), and the loop reads its rings' times instead.
    fn seq_at(&self, unix_ms: u64) -> Option<Seq>;
    /// Every event above this sequence number reaches the loops' inboxes; the ones at or
    /// below it never did. `None` while unknown (the bus is not connected yet).
    fn reach_floor(&self) -> Option<Seq>;
    /// Whether `backfill` can fetch events the loops never had or already evicted.
    fn can_backfill(&self) -> bool;
    /// Fetches the events of a resume older than a loop's rings; answers with
    /// [`Completion::Backfilled`], or refuses now when its queue is full.
    fn backfill(&self, request: BackfillRequest, ticket: Ticket) -> Result<(), BackfillError>;
    /// Events handed to the loops since start.
    fn published(&self) -> u64;
    /// Counters for `/metrics`.
    fn stats(&self) -> BusStats;
    /// Whether the bus can carry events now. Cheap (two atomic loads at most): a loop asks
    /// each time it reads a connection's requests.
    fn health(&self) -> BusHealth;
    /// Refuses further publishes.
    fn close(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: Seq, frame: &'static [u8]) -> InboxItem {
        InboxItem::Event(Arc::new(Published {
            seq,
            topics: Box::new(["a".into()]),
            frame: Frame::from_static(frame),
            time_ms: 0,
        }))
    }

    /// Every loop gets every item in the order it was broadcast, a lost-events notice
    /// included, and the inbox's byte count returns to zero once drained.
    #[test]
    fn broadcast_reaches_every_inbox_in_order() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let mut fanout = Fanout::new();
        let inboxes = [fanout.add_loop(waker.clone()), fanout.add_loop(waker)];
        fanout.broadcast(&event(1, b"one"));
        fanout.broadcast(&InboxItem::Lost { through: 4 });
        fanout.broadcast(&event(5, b"five!"));
        for inbox in &inboxes {
            assert_eq!(inbox.bytes.load(Ordering::Relaxed), 8);
            let mut seen = Vec::new();
            while let Some(item) = inbox.try_recv() {
                seen.push(match item {
                    InboxItem::Event(published) => (published.seq, published.frame.len()),
                    InboxItem::Lost { through } => (through, 0),
                });
            }
            assert_eq!(seen, [(1, 3), (4, 0), (5, 5)]);
            assert_eq!(inbox.bytes.load(Ordering::Relaxed), 0);
        }
        assert!(fanout.has_room(INBOX_EVENTS_MAX, INBOX_BYTES_MAX));
        assert!(!fanout.has_room(INBOX_EVENTS_MAX + 1, 0));
        assert!(!fanout.has_room(1, INBOX_BYTES_MAX + 1));
    }

    /// Whether `poll` reports its waker within a short wait.
    fn woken(poll: &mut mio::Poll) -> bool {
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_millis(50)))
            .unwrap();
        !events.is_empty()
    }

    /// A parked loop is woken by a broadcast from any thread but an event loop's; there the
    /// wake-up is left to the loop's turn (the loops it owes are returned once, then
    /// forgotten), and the parked flag stays up for the loop to help or wake.
    #[test]
    fn a_loop_thread_defers_the_wake_ups_it_owes() {
        let mut polls: Vec<mio::Poll> = (0..2).map(|_| mio::Poll::new().unwrap()).collect();
        let mut fanout = Fanout::new();
        let inboxes: Vec<Inbox> = polls
            .iter()
            .map(|poll| {
                fanout.add_loop(Arc::new(
                    mio::Waker::new(poll.registry(), mio::Token(0)).unwrap(),
                ))
            })
            .collect();
        let wakers = fanout.loop_wakers();
        assert!(inboxes[1].park());
        fanout.broadcast(&event(1, b"one"));
        assert!(
            woken(&mut polls[1]),
            "a broadcast from another thread wakes at once"
        );
        assert!(!wakers[1].is_parked());
        assert_eq!(take_deferred_wakes(), 0, "this thread defers nothing");

        while inboxes[1].try_recv().is_some() {}
        assert!(inboxes[1].park());
        defer_wakes();
        fanout.broadcast(&event(2, b"two"));
        assert!(
            !woken(&mut polls[1]),
            "a loop's thread leaves the wake-up to its turn"
        );
        assert!(wakers[1].is_parked());
        assert_eq!(take_deferred_wakes(), 0b11);
        assert_eq!(take_deferred_wakes(), 0);
        wakers[1].nudge();
        assert!(woken(&mut polls[1]));
        assert!(!wakers[1].is_parked());
    }
}
