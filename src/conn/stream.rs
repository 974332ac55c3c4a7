//! An open event stream: a cursor into the topic rings, written by gathering every frame
//! the subscriber is behind by into one vectored write, plus the bytes that go between
//! frames (the response head, heartbeats, a parting `retry:` hint).
//!
//! Sans-io: the loop passes the socket write as a closure and the time as `now_ms`. A
//! stream never holds a copy of an event, and its memory does not grow with its backlog.
//! Where it starts is decided in `resume.rs`.

use std::borrow::Cow;
use std::io::IoSlice;

use smallvec::SmallVec;

use crate::history::merge::for_each_after;
use crate::history::ring::Seq;
use crate::history::topics::{StreamTopic, Topics};
use crate::sse;

/// Frames gathered into one vectored write (`sendmsg`). Linux accepts 1024; 64 frames already
/// amortise the syscall, and the iovec array lives on the stack.
pub(crate) const IOVECS_PER_WRITE_MAX: usize = 64;

/// The `retry:` a stream gets when its backfill was cut at the byte budget: the client
/// comes straight back for the rest.
const PARTIAL_BACKFILL_RETRY_MS: u32 = 100;

/// Bytes to send before the next frame: the response head with the `retry:` frame and a
/// gap event, a heartbeat comment, or a parting `retry:` hint. Only set between frames.
struct Preamble {
    bytes: Cow<'static, [u8]>,
    sent: usize,
}

/// The heartbeat: an SSE comment line, ignored by every client.
const HEARTBEAT: &[u8] = b":\n";

/// How a stream that was asked to close is getting there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    /// Finish the frame in flight, then send `retry: <ms>` and close.
    Pending(u32, Parting),
    /// The parting hint is queued or sent; close once it is out.
    HintQueued(Parting),
}

/// An open event stream.
pub(crate) struct Stream {
    /// The stream's topics.
    topics: StreamTopics,
    /// Sequence number of the last frame written in full.
    cursor: Seq,
    /// Evictions at or below this were already reported to the client as a gap.
    gap_floor: Seq,
    /// Bytes of the next frame already written, and that frame's sequence number.
    partial: Option<(Seq, usize)>,
    preamble: Option<Box<Preamble>>,
    closing: Option<Closing>,
    /// The socket returned `WouldBlock`; the stream waits for writable readiness.
    blocked: bool,
    /// Waiting in the loop's fan-out queue (it is there at most once).
    queued: bool,
    /// Loop clock (ms) of the last write that moved bytes; heartbeats go to quiet streams.
    last_write_ms: u64,
    /// Loop clock (ms) at which the stream is sent back to reconnect (0: never): the
    /// earlier of its `max_stream_lifetime_ms` and its token's `exp` plus the leeway.
    expires_ms: u64,
    /// Which of the two `expires_ms` is.
    expiry: Parting,
}

/// Why a connection stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// It fell behind by more than `max_lag_bytes`, or past the history it needed.
    SlowConsumer,
    /// Its socket was full and took no byte for [`STALLED_HEARTBEATS`](super::STALLED_HEARTBEATS)
    /// heartbeat intervals: its client stopped reading.
    Stalled,
    /// The peer closed, reset, or the socket failed.
    PeerGone,
    /// A connection that was not a stream ended its lingering.
    Finished,
    /// The stream was told to come back later, and its parting `retry:` is out.
    Parted(Parting),
}

/// Why a stream was told to come back later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parting {
    /// Its `max_stream_lifetime_ms` ran out.
    Lifetime,
    /// Its token's `exp` (plus the leeway) passed.
    TokenExpired,
    /// The server is shutting down.
    Shutdown,
    /// Its backfill stopped at the byte budget: the client resumes for the rest.
    BackfillCut,
    /// The bus lost events before this loop got them: the client resumes from the log.
    LostEvents,
}

impl StreamEnd {
    /// Whether the client could not keep up (counted as a slow-consumer close).
    pub(crate) fn is_slow(self) -> bool {
        matches!(self, StreamEnd::SlowConsumer | StreamEnd::Stalled)
    }

    /// The name the access log gives the reason (`close=`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            StreamEnd::SlowConsumer => "slow_consumer",
            StreamEnd::Stalled => "stalled",
            StreamEnd::PeerGone => "client_closed",
            StreamEnd::Finished => "finished",
            StreamEnd::Parted(Parting::Lifetime) => "lifetime",
            StreamEnd::Parted(Parting::TokenExpired) => "token_expired",
            StreamEnd::Parted(Parting::Shutdown) => "shutdown",
            StreamEnd::Parted(Parting::BackfillCut) => "backfill_cut",
            StreamEnd::Parted(Parting::LostEvents) => "lost_events",
        }
    }
}

/// Result of a flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Everything available was written.
    Idle,
    /// The socket is full; wait for writable.
    Blocked,
    /// The write budget ran out with more to write; flush again next turn.
    More,
    /// Close the stream.
    End(StreamEnd),
}

/// Where a new stream starts, and what it must be told first.
pub(crate) struct StreamStart {
    /// The stream's topics (registered by the caller).
    pub topics: Box<[StreamTopic]>,
    /// First frames to send: head, retry, maybe gap.
    pub preamble: Vec<u8>,
    /// Cursor: the stream is sent every kept event after it.
    pub cursor: Seq,
    /// Evictions up to here are covered by the gap event (if any).
    pub gap_floor: Seq,
    /// The backfill stopped at its byte budget: after the preamble the stream closes with
    /// a short `retry:` so the client resumes from the last event it got.
    pub partial: bool,
}

/// A stream's topics: most streams have one, kept inline so a write does not chase a
/// pointer to another cache line (it was half of `flush`'s own time with 10,000 streams).
enum StreamTopics {
    One(StreamTopic),
    Many(Box<[StreamTopic]>),
}

impl StreamTopics {
    fn new(topics: Box<[StreamTopic]>) -> Self {
        match *topics {
            [one] => StreamTopics::One(one),
            _ => StreamTopics::Many(topics),
        }
    }

    fn as_slice(&self) -> &[StreamTopic] {
        match self {
            StreamTopics::One(topic) => std::slice::from_ref(topic),
            StreamTopics::Many(topics) => topics,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [StreamTopic] {
        match self {
            StreamTopics::One(topic) => std::slice::from_mut(topic),
            StreamTopics::Many(topics) => topics,
        }
    }
}

impl Stream {
    /// A stream starting at `start`, at loop time `now_ms`, sent back to reconnect at
    /// loop time `expires_ms` (0: never).
    pub(crate) fn new(start: StreamStart, now_ms: u64, expires_ms: u64) -> Self {
        let partial = start.partial;
        let mut stream = Stream {
            topics: StreamTopics::new(start.topics),
            cursor: start.cursor,
            gap_floor: start.gap_floor,
            partial: None,
            preamble: Some(Box::new(Preamble {
                bytes: Cow::Owned(start.preamble),
                sent: 0,
            })),
            closing: None,
            blocked: false,
            queued: false,
            last_write_ms: now_ms,
            expires_ms,
            expiry: Parting::Lifetime,
        };
        if partial {
            // The backfill was cut at its byte budget: the client comes straight back for
            // the rest, from the last event it got.
            stream.close_with_hint(PARTIAL_BACKFILL_RETRY_MS, Parting::BackfillCut);
        }
        stream
    }

    /// The stream's topics, in subscription order.
    pub(crate) fn topics(&self) -> &[StreamTopic] {
        self.topics.as_slice()
    }

    /// The subscriber index moved this stream's entry for its topic in `slot` to
    /// `position` (another subscriber of that topic left).
    pub(crate) fn moved(&mut self, slot: usize, position: u32) {
        if let Some(topic) = self.topics.as_mut_slice().get_mut(slot) {
            topic.position = position;
        }
    }

    /// Whether the socket was full at the last write (the stream waits for writable).
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The socket became writable: returns whether the stream was waiting for it.
    pub(crate) fn on_writable(&mut self) -> bool {
        std::mem::replace(&mut self.blocked, false)
    }

    /// Marks the stream as waiting in the fan-out queue: returns false when it already
    /// waits there (so it is queued once).
    pub(crate) fn enqueue(&mut self) -> bool {
        !std::mem::replace(&mut self.queued, true)
    }

    /// Whether the stream waits in the fan-out queue (its lag is checked when it is taken
    /// from there).
    pub(crate) fn is_queued(&self) -> bool {
        self.queued
    }

    /// The fan-out took the stream from its queue to write it.
    pub(crate) fn dequeue(&mut self) {
        self.queued = false;
    }

    /// A blocked stream whose socket took no byte for `stalled_ms`: its client stopped
    /// reading, and holds whatever it is behind by (its share of the rings, a resume's
    /// backfill), even if no event comes to trigger the lag check.
    pub(crate) fn stalled(&self, now_ms: u64, stalled_ms: u64) -> bool {
        self.blocked && now_ms.saturating_sub(self.last_write_ms) >= stalled_ms
    }

    /// Whether the stream's lifetime (or its token) is over at `now_ms`.
    pub(crate) fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && now_ms >= self.expires_ms
    }

    /// The stream's end of life is its token's, not its lifetime's.
    pub(crate) fn expires_with_token(&mut self) {
        self.expiry = Parting::TokenExpired;
    }

    /// Why the stream ends at its end of life: its lifetime or its token.
    pub(crate) fn expiry(&self) -> Parting {
        self.expiry
    }

    /// When to look at the stream again: its next possible heartbeat or the end of its
    /// life. A heartbeat that was due but could not be queued (the stream is busy) is
    /// looked at again a full interval later.
    pub(crate) fn next_check_ms(&self, now_ms: u64, heartbeat_ms: u64) -> u64 {
        let due_ms = self.last_write_ms + heartbeat_ms;
        let at_ms = if due_ms > now_ms {
            due_ms
        } else {
            now_ms + heartbeat_ms
        };
        match self.expires_ms {
            0 => at_ms,
            expires_ms => at_ms.min(expires_ms),
        }
    }

    /// Queues a heartbeat comment if the stream is quiet: nothing in flight and nothing
    /// written for `heartbeat_ms`. Returns whether one was queued.
    pub(crate) fn queue_heartbeat(&mut self, now_ms: u64, heartbeat_ms: u64) -> bool {
        let quiet = self.preamble.is_none()
            && self.partial.is_none()
            && self.closing.is_none()
            && !self.blocked
            && now_ms.saturating_sub(self.last_write_ms) >= heartbeat_ms;
        if quiet {
            self.preamble = Some(Box::new(Preamble {
                bytes: Cow::Borrowed(HEARTBEAT),
                sent: 0,
            }));
        }
        quiet
    }

    /// Asks the stream to finish the frame in flight, send `retry: <retry_ms>` and close,
    /// for the reason `why`.
    pub(crate) fn close_with_hint(&mut self, retry_ms: u32, why: Parting) {
        if self.closing.is_none() {
            self.closing = Some(Closing::Pending(retry_ms, why));
        }
    }

    /// Whether every topic still holds all events after the cursor (or the gap covered them).
    fn covered(&self, table: &Topics) -> bool {
        let floor = self.cursor.max(self.gap_floor);
        self.topics().iter().all(|t| {
            table
                .get(t.id)
                .is_some_and(|topic| topic.ring.covers(floor))
        })
    }

    /// Bytes this stream is behind the newest event (frames shared by several of its
    /// topics count once per topic: an over-estimate, never an under-estimate).
    pub(crate) fn lag_bytes(&self, table: &Topics) -> Option<u64> {
        if !self.covered(table) {
            return None;
        }
        let mut lag: u64 = self
            .topics()
            .iter()
            .filter_map(|t| table.get(t.id))
            .map(|topic| topic.ring.lag_bytes(self.cursor))
            .sum();
        if let Some((_, offset)) = self.partial {
            lag = lag.saturating_sub(offset as u64);
        }
        if let Some(preamble) = &self.preamble {
            lag += (preamble.bytes.len() - preamble.sent) as u64;
        }
        Some(lag)
    }

    /// Whether the stream is further behind than `lag_max` allows (or past the history).
    pub(crate) fn too_slow(&self, table: &Topics, lag_max: usize) -> bool {
        self.lag_bytes(table).is_none_or(|lag| lag > lag_max as u64)
    }

    /// Writes as much as the socket takes, up to `writes_max` calls. `write` is one
    /// one vectored write (`socket::send_slices`) on the stream's socket, already classified.
    pub(crate) fn flush(
        &mut self,
        table: &Topics,
        writes_max: usize,
        now_ms: u64,
        deliveries: &mut u64,
        mut write: impl FnMut(&[IoSlice<'_>]) -> crate::socket::IoOutcome,
    ) -> Flushed {
        use crate::socket::IoOutcome;
        for _ in 0..writes_max {
            if !self.covered(table) {
                return Flushed::End(StreamEnd::SlowConsumer);
            }
            // Inline and filled as they go: every write of the fan-out builds these, and
            // arrays of the maximum width cost 3 KiB of stores each time to initialise.
            // Never past the inline width, so never on the heap.
            let mut frames: SmallVec<[(Seq, usize); IOVECS_PER_WRITE_MAX]> = SmallVec::new();
            let mut slices: SmallVec<[IoSlice<'_>; IOVECS_PER_WRITE_MAX]> = SmallVec::new();
            if let Some(preamble) = &self.preamble {
                slices.push(IoSlice::new(&preamble.bytes[preamble.sent..]));
            }
            let mut stale_partial = false;
            let partial = self.partial;
            let first_slot = slices.len();
            // A closing stream only finishes the frame in flight.
            let frames_max = match (self.closing, partial) {
                (None, _) => IOVECS_PER_WRITE_MAX,
                (Some(_), Some(_)) => first_slot + 1,
                (Some(_), None) => first_slot,
            };
            for_each_after(table, self.topics.as_slice(), self.cursor, |seq, frame| {
                if slices.len() >= frames_max {
                    return false;
                }
                let offset = match partial {
                    Some((partial_seq, offset)) if slices.len() == first_slot => {
                        if partial_seq != seq {
                            stale_partial = true;
                            return false;
                        }
                        offset
                    }
                    _ => 0,
                };
                slices.push(IoSlice::new(&frame[offset..]));
                frames.push((seq, frame.len() - offset));
                slices.len() < IOVECS_PER_WRITE_MAX
            });
            let count = slices.len();
            if stale_partial {
                return Flushed::End(StreamEnd::SlowConsumer);
            }
            if count == 0 {
                drop(slices); // It borrows the preamble replaced below.
                match self.closing {
                    None => return Flushed::Idle,
                    Some(Closing::HintQueued(why)) => return Flushed::End(StreamEnd::Parted(why)),
                    Some(Closing::Pending(retry_ms, why)) => {
                        self.preamble = Some(Box::new(Preamble {
                            bytes: Cow::Owned(sse::encode_retry(retry_ms).to_vec()),
                            sent: 0,
                        }));
                        self.closing = Some(Closing::HintQueued(why));
                        continue;
                    }
                }
            }
            let total: usize = slices.iter().map(|s| s.len()).sum();
            let outcome = write(&slices);
            drop(slices); // It borrows the preamble `advance` moves past.
            match outcome {
                IoOutcome::Done(n) => {
                    self.last_write_ms = now_ms;
                    self.advance(n, &frames, deliveries);
                    if n == total && count < frames_max && self.closing.is_none() {
                        return Flushed::Idle;
                    }
                }
                IoOutcome::WouldBlock => {
                    self.blocked = true;
                    return Flushed::Blocked;
                }
                IoOutcome::PeerClosed | IoOutcome::Failed(_) => {
                    return Flushed::End(StreamEnd::PeerGone)
                }
            }
        }
        Flushed::More
    }

    fn advance(&mut self, mut n: usize, frames: &[(Seq, usize)], deliveries: &mut u64) {
        if let Some(preamble) = &mut self.preamble {
            let take = n.min(preamble.bytes.len() - preamble.sent);
            preamble.sent += take;
            n -= take;
            if preamble.sent < preamble.bytes.len() {
                return;
            }
            self.preamble = None;
        }
        for &(seq, remaining) in frames {
            if n >= remaining {
                n -= remaining;
                self.cursor = seq;
                self.partial = None;
                *deliveries += 1;
            } else {
                if n > 0 {
                    let done = self.partial.map_or(0, |(_, offset)| offset);
                    self.partial = Some((seq, done + n));
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::fixtures::{frame, subscribe, table};
    use crate::history::topics::HistoryLimits;
    use crate::socket::IoOutcome;

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut table = table();
        let topics = subscribe(&mut table, &["a"]);
        for seq in 1..=3 {
            table.append(seq, &["a".into()], &frame(seq));
        }
        let mut stream = Stream::new(
            StreamStart {
                topics,
                preamble: b"HEAD".to_vec(),
                cursor: 0,
                gap_floor: 0,
                partial: false,
            },
            0,
            0,
        );
        let mut wire = Vec::new();
        let mut deliveries = 0;
        // A socket that takes 5 bytes per call, then blocks every other call.
        let mut calls = 0;
        loop {
            let outcome = stream.flush(&table, 4, 0, &mut deliveries, |slices| {
                calls += 1;
                if calls % 2 == 0 {
                    return IoOutcome::WouldBlock;
                }
                let mut budget = 5;
                for slice in slices {
                    let take = budget.min(slice.len());
                    wire.extend_from_slice(&slice[..take]);
                    budget -= take;
                }
                IoOutcome::Done(5 - budget)
            });
            if outcome == Flushed::Idle {
                break;
            }
            assert!(calls < 100);
        }
        let expected: Vec<u8> = [&b"HEAD"[..], &frame(1), &frame(2), &frame(3)].concat();
        assert_eq!(wire, expected);
        assert_eq!(deliveries, 3);
        assert_eq!(stream.lag_bytes(&table), Some(0));
    }

    #[test]
    fn evicted_history_ends_a_lagging_stream() {
        let mut table = Topics::new(HistoryLimits {
            events: 2,
            bytes: 1 << 20,
            total_bytes: 1 << 24,
            ttl_ms: None,
        });
        let topics = subscribe(&mut table, &["a"]);
        let stream = Stream::new(
            StreamStart {
                topics,
                preamble: Vec::new(),
                cursor: 0,
                gap_floor: 0,
                partial: false,
            },
            0,
            0,
        );
        table.append(1, &["a".into()], &frame(1));
        assert!(!stream.too_slow(&table, 1000));
        assert!(stream.too_slow(&table, 5));
        for seq in 2..=3 {
            table.append(seq, &["a".into()], &frame(seq));
        }
        assert_eq!(stream.lag_bytes(&table), None);
    }
}
