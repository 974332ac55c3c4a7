//! Library replay: what [`crate::Handle::replay`] returns, and how a loop answers it from
//! its history the way an HTTP subscription with `lastEventId=earliest`, `since` or a
//! Last-Event-ID starts.
//!
//! The handle queues a [`ReplayQuery`] on one loop (the same queue `Handle::topics` uses)
//! and wakes it. The loop answers once it has taken from its inbox every event handed to
//! the loops before the question was asked (or found its inbox empty), and its rings
//! reached the newest event the server's handles published (with the Redis bus, that one
//! comes back through the stream's reader after the publish returned), so a replay sees
//! the handles' own earlier publishes. It reads where the replay starts exactly as a new
//! stream does (`conn::resume::read_start`: time to live, `since`, `earliest`, ids of
//! this bus or not, wildcard patterns gathered from the topics under them), then sends
//! back the kept frames after that point, each event once, in id order. The handle decodes
//! them off the loop.
//!
//! Every loop appends every event to its rings, so one loop's answer is the node's; only
//! the history budget's evictions, which spare topics a loop has subscribers for, can make
//! one loop keep less than another, and [`Replay::gap`] tells when that lost events after
//! an id. No bus fetch is made: with the Redis bus, what this node's memory no longer
//! holds (and an HTTP stream would fetch from the Redis stream) is reported as a gap.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use crossbeam_channel::Sender;

use crate::bus::{Bus, Resume};
use crate::config::Limits;
use crate::conn::resume::{self, BusView, Plan};
use crate::conn::StreamRequest;
use crate::event::EventId;
use crate::history::merge::for_each_after;
use crate::history::ring::Seq;
use crate::history::topics::{StreamTopic, Topics};
use crate::sse::{self, Frame};

/// Where [`crate::Handle::replay`] starts reading the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayFrom {
    /// Everything the history keeps, like `lastEventId=earliest`.
    Earliest,
    /// Every kept event published at or after this time, like `since=`. A time before
    /// 1970 is the same as [`ReplayFrom::Earliest`].
    Since(std::time::SystemTime),
    /// Every event after this id, like a resume with `Last-Event-ID` ([`EventId::as_str`],
    /// or an id a client sent; `earliest` means [`ReplayFrom::Earliest`]). An id that is
    /// not one of this bus's (another run's, malformed, newer than any event), or whose
    /// following events the history no longer keeps, gives [`Replay::gap`] and every
    /// kept event after what it can place, as an HTTP resume gets the gap event.
    After(String),
}

/// What [`crate::Handle::replay`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replay {
    /// The kept events of the topics asked for, in id order, each once (an event on
    /// several of them, or under a pattern and a topic, appears once).
    pub events: Vec<StoredEvent>,
    /// Events after the starting point may be missing: the history dropped them (count,
    /// bytes, total budget or time to live) before a [`ReplayFrom::After`] id could be
    /// followed, the id is not one this bus knows, or, with the Redis bus, the Redis
    /// stream may hold events this node's memory no longer does (an HTTP stream would
    /// fetch them; a replay answers from memory only). [`ReplayFrom::Earliest`] and
    /// [`ReplayFrom::Since`] on the embedded bus ask for what is kept, so they never have
    /// a gap, as over HTTP.
    pub gap: bool,
}

/// One event as the history keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredEvent {
    /// The id subscribers saw.
    pub id: EventId,
    /// The event name (`event:`), if it was published with one.
    pub event: Option<String>,
    /// The data as published, except that CR and CRLF line breaks come back as LF (the
    /// history keeps encoded frames, whose `data:` lines every SSE client reads that way).
    pub data: String,
    /// The `retry:` hint it was published with, in milliseconds.
    pub retry_ms: Option<u32>,
}

/// Where a replay starts, in the loop's terms.
pub(crate) enum Start {
    /// `lastEventId=earliest`.
    Earliest,
    /// `since`, in Unix ms.
    SinceMs(u64),
    /// A Last-Event-ID.
    After(String),
}

/// A handle's replay question, queued on one loop.
pub(crate) struct ReplayQuery {
    /// Distinct topic names and patterns, validated.
    pub names: Vec<String>,
    /// Where to start.
    pub start: Start,
    /// Events the bus had handed to the loops when the handle asked (`Bus::published`):
    /// the loop answers once it has taken that many from its inbox, or found it empty.
    pub published: u64,
    /// The newest event any handle of this server published before asking: the loop also
    /// waits until its rings reached it (with the Redis bus it arrives through the
    /// stream's reader, after the publish returned), or the bus's reach passed it.
    pub newest: Seq,
    /// When the handle stops waiting: a query still waiting then is dropped.
    pub until: Instant,
    /// Where the answer goes; the handle waits on the other end with a timeout.
    pub reply: Sender<Answer>,
}

/// A loop's answer: the kept frames after the starting point, and whether some may be
/// missing.
pub(crate) struct Answer {
    /// Encoded events, in id order (shared with the rings: no copy on the loop).
    pub frames: Vec<Frame>,
    /// See [`Replay::gap`].
    pub gap: bool,
}

/// Answers `query` from `table` at `now_ms` (Unix ms) as a new stream would start: the
/// kept frames after the starting point. At most what the loop keeps of these topics:
/// `max_history_events` per topic or pattern, within the history's byte budgets.
pub(crate) fn answer(
    table: &mut Topics,
    query: &ReplayQuery,
    now_ms: u64,
    limits: &Limits,
    bus: &dyn Bus,
) -> Answer {
    let (last_event_id, since) = match &query.start {
        Start::Earliest => (Some("earliest".to_owned()), None),
        Start::SinceMs(ms) => (None, Some(Resume::Since(*ms))),
        Start::After(id) => (Some(id.clone()), None),
    };
    let mut request = StreamRequest {
        topics: query.names.clone(),
        last_event_id,
        resume: since,
        cors: String::new(),
        token_until_unix_ms: None,
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        access: None,
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ask: None,
    };
    resume::read_start(
        &mut request,
        table,
        now_ms,
        limits,
        |unix_ms| bus.seq_at(unix_ms),
        |id| bus.resume_point(id),
    );
    let evicted_max = query
        .names
        .iter()
        .map(|name| table.evicted_max(name))
        .max()
        .unwrap_or(0);
    let (cursor, mut gap) = match request.resume {
        Some(Resume::After(after)) => (after, after < evicted_max),
        Some(Resume::From { after, gap }) => (after, gap),
        // Not this bus's id: everything kept, with the gap, as over HTTP.
        _ => (0, true),
    };
    let view = BusView {
        can_backfill: bus.can_backfill(),
        reach_floor: bus.reach_floor(),
    };
    // Where an HTTP stream would first fetch from the bus's log, the replay has a gap.
    if !matches!(
        resume::plan(&request, view, evicted_max, limits),
        Plan::Start(_)
    ) {
        gap = true;
    }
    let topics: Vec<StreamTopic> = query
        .names
        .iter()
        .filter_map(|name| table.find(name))
        .map(|id| StreamTopic { id, position: 0 })
        .collect();
    let mut frames = Vec::new();
    for_each_after(table, &topics, cursor, |_, frame| {
        frames.push(frame.clone());
        true
    });
    Answer { frames, gap }
}

/// Reads the loop's frames back into events (on the handle's thread, not the loop's).
pub(crate) fn decode(answer: Answer) -> Replay {
    let events = answer
        .frames
        .iter()
        .filter_map(|frame| {
            let decoded = sse::decode_event(frame);
            // The rings keep only frames `sse::encode_event` wrote.
            debug_assert!(decoded.is_some(), "a kept frame did not decode");
            decoded
        })
        .map(|decoded| StoredEvent {
            id: EventId(decoded.id),
            event: decoded.name,
            data: decoded.data,
            retry_ms: decoded.retry_ms,
        })
        .collect();
    Replay {
        events,
        gap: answer.gap,
    }
}
