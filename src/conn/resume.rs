//! Where a new stream starts: a subscription's Last-Event-ID, read once, turned into a
//! [`Plan`] (start from this loop's rings, or fetch what they no longer hold from the bus
//! first), the merge of a fetch that came back in parts, and the stream's opening bytes
//! (response head, `retry:`, the gap event, fetched frames).
//!
//! Pure: the loop passes what it read from the bus ([`BusView`], the parsed id) and from
//! its rings, and carries the plan out.

use crate::bus::{Backfill, BackfillError, BackfillRequest, Resume};
use crate::config::Limits;
use crate::history::merge::for_each_after;
use crate::history::ring::Seq;
use crate::history::topics::{StreamTopic, SubscriberRef, Topics};
use crate::http::answer::{self, HttpError};
use crate::sse;

use super::exchange::{Exchange, StreamRequest};
use super::stream::{Stream, StreamStart};
use super::Now;

/// A subscription parked while the bus fetches what its Last-Event-ID missed.
pub(crate) struct Resuming {
    /// The exchange the subscription came from: answers a refusal if the fetch fails, and
    /// gives its head buffer back when the stream starts.
    pub exchange: Box<Exchange>,
    /// The ticket serial of the fetch under way.
    pub serial: u64,
    /// The subscription.
    pub request: StreamRequest,
    /// What earlier fetches for it brought.
    pub so_far: Option<Backfill>,
}

/// What the bus can do for a resume, read by the loop when it plans one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BusView {
    /// The bus keeps a log it can fetch evicted events from.
    pub can_backfill: bool,
    /// Every event above this reaches the loops; `None` while the bus does not know yet.
    pub reach_floor: Option<Seq>,
}

/// What to do with a subscription.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Start the stream now (with what the bus fetched, if anything).
    Start(Option<Backfill>),
    /// Fetch these events first, then plan again with what came back joined to what
    /// earlier fetches brought (`so_far`).
    Fetch {
        /// The events to fetch.
        fetch: BackfillRequest,
        /// What earlier fetches for the same subscription brought.
        so_far: Option<Backfill>,
    },
    /// Refuse the subscription (the client retries).
    Refuse(HttpError),
}

/// Reads where a subscription starts, once, into `request.resume`: its Last-Event-ID
/// (`earliest`, or an id `resume_point` reads), else its `since`. With a time to live, the
/// subscription's rings first drop what expired at `now_unix_ms`, and a start before what
/// it keeps moves up to it: `since` and `earliest` begin at the oldest event still kept,
/// and an id older than that, on a bus whose ids carry their time (`seq_at`), becomes the
/// gap event and everything kept (on other buses the rings' evictions tell the gap).
/// Without `seq_at`, a time becomes a cursor through the rings' times. Wildcard patterns
/// the loop does not have yet are gathered first from the history of the topics under
/// them (and dropped again if that holds nothing), so their history counts like a topic's.
pub(crate) fn read_start(
    request: &mut StreamRequest,
    table: &mut Topics,
    now_unix_ms: u64,
    limits: &Limits,
    seq_at: impl Fn(u64) -> Option<Seq>,
    resume_point: impl Fn(&str) -> Resume,
) {
    table.gather_patterns(&request.topics);
    read_start_gathered(request, table, now_unix_ms, limits, seq_at, resume_point);
    table.drop_unused_patterns(&request.topics);
}

/// [`read_start`] once the patterns are gathered.
fn read_start_gathered(
    request: &mut StreamRequest,
    table: &mut Topics,
    now_unix_ms: u64,
    limits: &Limits,
    seq_at: impl Fn(u64) -> Option<Seq>,
    resume_point: impl Fn(&str) -> Resume,
) {
    table.expire(&request.topics, now_unix_ms);
    // The oldest publish time still kept.
    let kept_from = limits
        .history
        .ttl_ms
        .map_or(0, |ttl| now_unix_ms.saturating_sub(ttl) + 1);
    let since = match request.last_event_id.as_deref() {
        Some("earliest") => 0,
        Some(id) => {
            let resume = resume_point(id);
            request.resume = Some(match (resume, seq_at(kept_from)) {
                (Resume::After(after), Some(first)) if kept_from > 0 && after < first - 1 => {
                    Resume::From {
                        after: first - 1,
                        gap: true,
                    }
                }
                _ => resume,
            });
            return;
        }
        None => match request.resume {
            Some(Resume::Since(since)) => since,
            _ => return,
        },
    };
    let since = since.max(kept_from);
    let after = match seq_at(since) {
        Some(first) => first.saturating_sub(1),
        None => table.cursor_since(&request.topics, since),
    };
    request.resume = Some(Resume::From { after, gap: false });
}

/// The first plan for a subscription: start now when this loop's rings (whose newest
/// eviction across the subscription's topics is `evicted_max`) still hold everything
/// after the client's id, or the bus keeps no log; otherwise fetch the events between the
/// client's id and where the rings (or the bus's reach) begin.
pub(crate) fn plan(
    request: &StreamRequest,
    bus: BusView,
    evicted_max: Seq,
    limits: &Limits,
) -> Plan {
    if !bus.can_backfill {
        return Plan::Start(None);
    }
    let (after, replay) = match request.resume {
        Some(Resume::After(after)) => (after, false),
        Some(Resume::From { after, .. }) => (after, true),
        // No id, or not one of this bus's: the gap rule.
        _ => return Plan::Start(None),
    };
    let Some(reach) = bus.reach_floor else {
        return Plan::Refuse(BackfillError::Unavailable.into());
    };
    let until = reach.max(evicted_max);
    if after >= until {
        return Plan::Start(None);
    }
    Plan::Fetch {
        fetch: BackfillRequest {
            after,
            until,
            topics: request.topics.clone(),
            bytes_max: limits.lag_bytes_max,
            client: request.client,
            replay,
        },
        so_far: None,
    }
}

/// The plan once a fetch came back (merged with earlier parts: see [`merge`]). The rings
/// may have evicted past its end meanwhile (events kept arriving): fetch the difference
/// too, until the rings cover the rest or the byte budget is spent.
pub(crate) fn after_fetch(
    request: &StreamRequest,
    mut backfill: Backfill,
    bus: BusView,
    evicted_max: Seq,
    limits: &Limits,
) -> Plan {
    let budget = limits.lag_bytes_max;
    // The bus's reach moves up when it lost events: those must come from its log too.
    let evicted = evicted_max.max(bus.reach_floor.unwrap_or(0));
    if backfill.complete && backfill.through < evicted {
        if backfill.frames.len() >= budget {
            backfill.complete = false;
        } else {
            return Plan::Fetch {
                fetch: BackfillRequest {
                    after: backfill.through,
                    until: evicted,
                    topics: request.topics.clone(),
                    bytes_max: budget - backfill.frames.len(),
                    client: request.client,
                    replay: matches!(request.resume, Some(Resume::From { .. })),
                },
                so_far: Some(backfill),
            };
        }
    }
    Plan::Start(Some(backfill))
}

/// Joins what an earlier fetch brought with the part that just came back.
pub(crate) fn merge(so_far: Option<Backfill>, part: Backfill) -> Backfill {
    match so_far {
        Some(mut earlier) => {
            earlier.frames.extend_from_slice(&part.frames);
            Backfill {
                frames: earlier.frames,
                gap: earlier.gap || part.gap,
                ..part
            }
        }
        None => part,
    }
}

/// Decides a new stream's cursor and opening bytes from its Last-Event-ID (parsed once,
/// in `request.resume`) and the events the bus fetched for it. `id_of` names a
/// sequence number as the client sees it: a client without a Last-Event-ID is told where
/// its stream starts, the newest event this loop has or the bus's floor if that is higher
/// (events at or below it never reach this loop); resuming from that id loses nothing
/// published in between.
pub(crate) fn stream_start(
    request: &StreamRequest,
    topics: Box<[StreamTopic]>,
    table: &Topics,
    bus: BusView,
    limits: &Limits,
    backfill: Option<Backfill>,
    id_of: impl Fn(Seq) -> String,
) -> StreamStart {
    let mut preamble = answer::stream_head(&request.cors);
    // Where a stream with nothing to send from before now starts.
    let starts_at = table.head_seq().max(bus.reach_floor.unwrap_or(0));
    let start_id = match (&backfill, &request.resume) {
        (None, None) => Some(id_of(starts_at)),
        _ => None,
    };
    preamble.extend_from_slice(&sse::encode_opening(limits.retry_ms, start_id.as_deref()));
    let id = request.last_event_id.as_deref().unwrap_or("");
    let evicted_max = topics
        .iter()
        .filter_map(|t| table.get(t.id))
        .map(|t| t.ring.evicted_max())
        .max()
        .unwrap_or(0);
    // A replay from a time, or from what the time to live keeps, tells the gap only when
    // it says so; the rings' evictions before its cursor are no news to it.
    let replay = match request.resume {
        Some(Resume::From { gap, .. }) => Some(gap),
        _ => None,
    };
    let (cursor, gap) = match (&backfill, request.resume) {
        (Some(backfill), _) => {
            if backfill.gap || replay == Some(true) {
                preamble.extend_from_slice(&sse::encode_gap(&limits.gap_event, id));
            }
            preamble.extend_from_slice(&backfill.frames);
            (
                backfill.through,
                replay.is_none() && backfill.complete && backfill.through < evicted_max,
            )
        }
        (None, None) => (table.head_seq(), false),
        (None, Some(Resume::After(seq))) => (seq, seq < evicted_max),
        (None, Some(Resume::From { after, gap })) => (after, gap),
        // `read_start` turns a `since` into `From` before any stream opens; one that was
        // not read is treated as an id that is not this bus's.
        (None, Some(Resume::Unknown | Resume::Since(_))) => (0, true),
    };
    if gap {
        preamble.extend_from_slice(&sse::encode_gap(&limits.gap_event, id));
    }
    // A gap told with nothing after it that carries an id would leave the client's id
    // where it was, and every reconnect before the next event would tell it again: move
    // the id to where the stream starts (`id:` with no data dispatches nothing).
    let gap_told = gap || backfill.as_ref().is_some_and(|b| b.gap) || replay == Some(true);
    let nothing_follows = match &backfill {
        Some(backfill) => backfill.complete && backfill.frames.is_empty(),
        None => {
            let mut kept = false;
            for_each_after(table, &topics, cursor, |_, _| {
                kept = true;
                false
            });
            !kept
        }
    };
    if gap_told && nothing_follows {
        let moved_to = backfill.as_ref().map_or(starts_at, |b| b.through);
        preamble.extend_from_slice(&sse::encode_id(&id_of(moved_to)));
    }
    let partial = backfill.is_some_and(|b| !b.complete);
    StreamStart {
        topics,
        preamble,
        cursor,
        // A partial stream sends nothing from the rings, so no eviction concerns it.
        gap_floor: match (partial, gap || replay.is_some()) {
            (true, _) => Seq::MAX,
            (false, true) => evicted_max,
            (false, false) => 0,
        },
        partial,
    }
}

/// What opening a stream needs besides its request: the bus as it stands, the limits, the
/// clock and a random number for the lifetime's jitter.
pub(crate) struct Opening<'a> {
    /// What the bus can do, as read when the stream opens.
    pub bus: BusView,
    /// The limits in force.
    pub limits: &'a Limits,
    /// This turn's clock.
    pub now: Now,
    /// A random number for the lifetime's jitter.
    pub random: u64,
}

/// Opens connection `key`'s stream on a loop's rings: registers its topics in `table`,
/// decides its cursor and first bytes ([`stream_start`]), and its end of life: between 90
/// and 100 % of `stream_lifetime`, or its token's end (`exp` plus the leeway) if earlier,
/// so the client comes back, after a jittered `retry:`, with a fresh token. The loop and
/// the simulation both open streams here.
pub(crate) fn open_stream(
    table: &mut Topics,
    key: usize,
    request: &StreamRequest,
    backfill: Option<Backfill>,
    opening: Opening<'_>,
    id_of: impl Fn(Seq) -> String,
) -> Stream {
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
            let (id, position) = table.subscribe(name, subscriber);
            StreamTopic { id, position }
        })
        .collect();
    let Opening {
        bus,
        limits,
        now,
        random,
    } = opening;
    let start = stream_start(request, topics, table, bus, limits, backfill, id_of);
    let mut expires_ms = 0;
    let mut token_first = false;
    if let Some(lifetime) = limits.stream_lifetime {
        let lifetime_ms = lifetime.as_millis() as u64;
        let jitter = random % (lifetime_ms / 10).max(1);
        expires_ms = now.ms + lifetime_ms - jitter;
    }
    if let Some(until_unix_ms) = request.token_until_unix_ms {
        let token_end_ms = now.loop_ms_at(until_unix_ms);
        if expires_ms == 0 || token_end_ms < expires_ms {
            expires_ms = token_end_ms;
            token_first = true;
        }
    }
    let mut stream = Stream::new(start, now.ms, expires_ms);
    if token_first {
        stream.expires_with_token();
    }
    stream
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::history::fixtures::{frame, subscribe, table};

    fn request(resume: Resume) -> StreamRequest {
        StreamRequest {
            topics: vec!["a".into()],
            last_event_id: Some("1".into()),
            resume: Some(resume),
            cors: String::new(),
            token_until_unix_ms: None,
            client: std::net::IpAddr::from([127, 0, 0, 1]),
            access: None,
            addr: std::net::IpAddr::from([127, 0, 0, 1]),
            ask: None,
        }
    }

    fn preamble_of(
        request: &StreamRequest,
        table: &mut Topics,
        backfill: Option<Backfill>,
    ) -> String {
        let limits = Config::default().limits();
        let topics = subscribe(table, &["a"]);
        let bus = BusView {
            can_backfill: backfill.is_some(),
            reach_floor: Some(0),
        };
        let start = stream_start(request, topics, table, bus, &limits, backfill, |seq| {
            format!("s{seq}")
        });
        String::from_utf8(start.preamble).unwrap()
    }

    /// Found by the simulation: a gap told with nothing after it moves the client's id, so
    /// a reconnect does not tell it again; a gap followed by events leaves that to them.
    #[test]
    fn a_gap_with_nothing_after_it_moves_the_client_id() {
        // The log was trimmed after the client's id and holds nothing of its topics since.
        let trimmed = Backfill {
            frames: Vec::new(),
            gap: true,
            through: 9,
            complete: true,
        };
        let text = preamble_of(&request(Resume::After(1)), &mut table(), Some(trimmed));
        assert!(text.ends_with("\n\nid: s9\n\n"), "{text:?}");
        // The same with events fetched: their ids move the client.
        let fetched = Backfill {
            frames: frame(5).to_vec(),
            gap: true,
            through: 9,
            complete: true,
        };
        let text = preamble_of(&request(Resume::After(1)), &mut table(), Some(fetched));
        assert!(text.ends_with("id: 5\ndata: x\n\n"), "{text:?}");
        // An id of another epoch on a topic with nothing kept: start where the rings are.
        let mut rings = table();
        rings.append(7, &["b".into()], &frame(7));
        let text = preamble_of(&request(Resume::Unknown), &mut rings, None);
        assert!(text.ends_with("\n\nid: s7\n\n"), "{text:?}");
        // With events kept after the cursor, they follow the gap and carry their ids.
        let mut rings = table();
        rings.append(7, &["a".into()], &frame(7));
        let text = preamble_of(&request(Resume::Unknown), &mut rings, None);
        assert!(!text.contains("id: s"), "{text:?}");
    }
}
