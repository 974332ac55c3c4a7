//! The simulated bus: a shared log with the Redis bus's shape, driven by the seed. It
//! answers publishes at once or later (later answers reordered across connections),
//! refuses some, delivers events to the loop's inbox in id order and in bursts, trims its
//! log, answers resume fetches late, partly or not at all, and now and then loses events
//! before the loop got them (`InboxItem::Lost`). It also keeps the ledger of every event
//! it ever assigned, which the clients' checks read.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bus::{
    Backfill, BackfillError, BackfillRequest, Completion, InboxItem, Outgoing, Published, Resume,
    Stored, Submitted, Ticket,
};
use crate::event::{EventId, PublishError};
use crate::history::ring::Seq;
use crate::sse::{self, EventFields};

use super::Rng;

/// The epoch of the simulated bus's ids (`7-<seq>`).
const EPOCH: u64 = 7;

/// One event the bus assigned an id.
pub(super) struct Logged {
    /// The topics it was published to.
    pub topics: Box<[Box<str>]>,
    /// Its data (unique per publish).
    pub data: String,
    /// Its encoded frame, as the rings and fetches hold it.
    pub frame: crate::sse::Frame,
    /// It reached the loop's inbox (not lost).
    pub delivered: bool,
}

/// A publish waiting for the bus to take it.
struct Queued {
    ticket: Ticket,
    /// Each event's topics and data, taken together or refused together.
    events: Vec<(Vec<Box<str>>, String)>,
}

/// How often the bus does what (per thousand), chosen per seed.
#[derive(Clone, Copy, Debug)]
pub(super) struct BusFaults {
    /// Publishes answered later rather than at once.
    pub later: u64,
    /// Publishes refused.
    pub refuse: u64,
    /// Fetches refused at once (queue full).
    pub fetch_busy: u64,
    /// Fetches that fail later.
    pub fetch_fail: u64,
    /// Fetches cut short (a scan budget ran out).
    pub fetch_partial: u64,
}

/// The simulated bus.
pub(super) struct SimBus {
    /// Every event ever assigned, by `seq - 1`.
    pub ledger: Vec<Logged>,
    /// Events at or below this are trimmed from the log.
    pub log_floor: Seq,
    /// Events the log keeps.
    log_max: usize,
    /// Every event above this reaches the loop.
    reach: Seq,
    /// The bus knows `reach` (a Redis bus does once its reader connected).
    reach_known: bool,
    /// The bus keeps a log it can fetch from.
    pub can_backfill: bool,
    /// Assigned, not yet in the inbox.
    undelivered: VecDeque<Seq>,
    inbox: VecDeque<InboxItem>,
    queued: Vec<Queued>,
    completions: Vec<Completion>,
    fetches: Vec<(BackfillRequest, Ticket)>,
    pub faults: BusFaults,
    /// No fault at all (the quiet end of a run).
    pub calm: bool,
}

impl SimBus {
    /// A bus with these habits.
    pub(super) fn new(rng: &mut Rng) -> Self {
        let can_backfill = rng.chance(600);
        SimBus {
            ledger: Vec::new(),
            log_floor: 0,
            log_max: 4 + rng.below(40) as usize,
            reach: 0,
            reach_known: true,
            can_backfill,
            undelivered: VecDeque::new(),
            inbox: VecDeque::new(),
            queued: Vec::new(),
            completions: Vec::new(),
            fetches: Vec::new(),
            faults: BusFaults {
                later: rng.below(1000),
                refuse: rng.below(100),
                fetch_busy: rng.below(150),
                fetch_fail: rng.below(150),
                fetch_partial: rng.below(400),
            },
            calm: false,
        }
    }

    fn fault(&self, rng: &mut Rng, per_mille: u64) -> bool {
        !self.calm && rng.chance(per_mille)
    }

    /// The id a client sees for `seq`.
    pub(super) fn id_of(seq: Seq) -> String {
        format!("{EPOCH}-{seq}")
    }

    /// Reads a client's Last-Event-ID.
    pub(super) fn resume_point(&self, id: &str) -> Resume {
        let parsed = id
            .split_once('-')
            .and_then(|(epoch, seq)| Some((epoch.parse::<u64>().ok()?, seq.parse::<Seq>().ok()?)));
        match parsed {
            Some((EPOCH, seq)) if seq <= self.ledger.len() as Seq => Resume::After(seq),
            _ => Resume::Unknown,
        }
    }

    /// `Bus::publish`: answered at once (taken or refused), or later.
    pub(super) fn publish(
        &mut self,
        rng: &mut Rng,
        events: Vec<Outgoing<'_>>,
        ticket: Ticket,
    ) -> Submitted {
        let queued = Queued {
            ticket,
            events: events
                .into_iter()
                .map(|event| (event.topics, event.data.to_owned()))
                .collect(),
        };
        if self.fault(rng, self.faults.later) {
            self.queued.push(queued);
            return Submitted::Pending;
        }
        Submitted::Done(self.take(rng, queued))
    }

    /// Takes a publish into the log (or refuses it).
    fn take(&mut self, rng: &mut Rng, queued: Queued) -> Stored {
        if self.fault(rng, self.faults.refuse) {
            return Err(PublishError::Unavailable);
        }
        let mut ids = Vec::with_capacity(queued.events.len());
        for (topics, data) in queued.events {
            let seq = self.ledger.len() as Seq + 1;
            let id = Self::id_of(seq);
            let frame = sse::encode_event(&EventFields {
                id: &id,
                name: None,
                data: &data,
                retry_ms: None,
            });
            self.ledger.push(Logged {
                topics: topics.into_boxed_slice(),
                data,
                frame,
                delivered: false,
            });
            self.undelivered.push_back(seq);
            ids.push(EventId(id));
        }
        // The log keeps its last `log_max` events.
        let oldest_kept = (self.ledger.len() as Seq).saturating_sub(self.log_max as Seq);
        self.log_floor = self.log_floor.max(oldest_kept);
        Ok(ids)
    }

    /// Takes one queued publish (any connection's: answers are reordered across them).
    pub(super) fn take_queued(&mut self, rng: &mut Rng) {
        if self.queued.is_empty() {
            return;
        }
        let queued = self
            .queued
            .swap_remove(rng.below(self.queued.len() as u64) as usize);
        let ticket = queued.ticket;
        let result = self.take(rng, queued);
        self.completions.push(Completion::Published(ticket, result));
    }

    /// Moves up to `n` assigned events into the inbox, in id order.
    pub(super) fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some(seq) = self.undelivered.pop_front() else {
                return;
            };
            let logged = &mut self.ledger[(seq - 1) as usize];
            logged.delivered = true;
            self.inbox.push_back(InboxItem::Event(Arc::new(Published {
                seq,
                topics: logged.topics.clone(),
                frame: logged.frame.clone(),
                // The simulation sets no time to live; times only need to be ordered.
                time_ms: seq as u64,
            })));
        }
    }

    /// The log dropped every event not yet delivered before the loop got it.
    pub(super) fn lose(&mut self) {
        let Some(&through) = self.undelivered.back() else {
            return;
        };
        self.undelivered.clear();
        self.log_floor = self.log_floor.max(through);
        self.reach = self.reach.max(through);
        self.inbox.push_back(InboxItem::Lost { through });
    }

    /// The bus loses (`false`) or finds (`true`) where its reach starts.
    pub(super) fn know_reach(&mut self, known: bool) {
        self.reach_known = known;
    }

    /// `Bus::reach_floor`.
    pub(super) fn reach_floor(&self) -> Option<Seq> {
        self.reach_known.then_some(self.reach)
    }

    /// `Bus::backfill`: refused now, or answered later.
    pub(super) fn backfill(
        &mut self,
        rng: &mut Rng,
        request: BackfillRequest,
        ticket: Ticket,
    ) -> Result<(), BackfillError> {
        if self.fault(rng, self.faults.fetch_busy) {
            return Err(BackfillError::Busy);
        }
        self.fetches.push((request, ticket));
        Ok(())
    }

    /// Answers one fetch under way, if any: failed, cut short, or in full.
    pub(super) fn answer_fetch(&mut self, rng: &mut Rng) {
        if self.fetches.is_empty() {
            return;
        }
        let (request, ticket) = self
            .fetches
            .swap_remove(rng.below(self.fetches.len() as u64) as usize);
        let result = if self.fault(rng, self.faults.fetch_fail) {
            Err(BackfillError::Unavailable)
        } else {
            let scan_max = if self.fault(rng, self.faults.fetch_partial) {
                rng.below(4) as usize
            } else {
                usize::MAX
            };
            Ok(self.fetch(&request, scan_max))
        };
        self.completions
            .push(Completion::Backfilled(ticket, result));
    }

    /// The events of `request` from the log, as the Redis bus's `fetch` reads them.
    fn fetch(&self, request: &BackfillRequest, scan_max: usize) -> Backfill {
        let mut out = Backfill {
            frames: Vec::new(),
            gap: false,
            through: request.after,
            complete: false,
        };
        if self.log_floor > request.after {
            out.gap = true;
            out.through = request.until;
            out.complete = true;
            return out;
        }
        let until = request.until.min(self.ledger.len() as Seq);
        for (scanned, seq) in (request.after + 1..=until).enumerate() {
            let logged = &self.ledger[(seq - 1) as usize];
            // Wildcards as the Redis backfill reads them.
            let wanted = logged
                .topics
                .iter()
                .any(|t| crate::auth::allows(&request.topics, t));
            if wanted {
                if scanned >= scan_max || out.frames.len() + logged.frame.len() > request.bytes_max
                {
                    out.frames
                        .extend_from_slice(&sse::encode_id(&Self::id_of(out.through)));
                    return out;
                }
                out.frames.extend_from_slice(&logged.frame);
            }
            out.through = seq;
        }
        out.through = request.until;
        out.complete = true;
        out
    }

    /// The next completion, any connection's.
    pub(super) fn try_completion(&mut self, rng: &mut Rng) -> Option<Completion> {
        if self.completions.is_empty() {
            return None;
        }
        Some(
            self.completions
                .swap_remove(rng.below(self.completions.len() as u64) as usize),
        )
    }

    /// The next inbox item, in order.
    pub(super) fn try_recv(&mut self) -> Option<InboxItem> {
        self.inbox.pop_front()
    }

    /// Whether the bus still owes anything (quiet once all is answered and delivered).
    pub(super) fn busy(&self) -> bool {
        !(self.queued.is_empty()
            && self.completions.is_empty()
            && self.fetches.is_empty()
            && self.undelivered.is_empty()
            && self.inbox.is_empty())
    }
}
