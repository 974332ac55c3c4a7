//! One subscriber: its socket's state (connecting, reading the head, streaming), its SSE
//! parser, and its per-subscriber sequence tracking. The worker's loop calls
//! [`Sub::on_ready`] when the socket is ready and acts on the [`Outcome`].

use std::io::{self, ErrorKind, Read, Write};
use std::time::Instant;

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use testkit::sse::{Event, Item, SseParser};

use crate::http::{self, ChunkedDecoder};
use crate::latency::LATENCY_US_MAX;
use crate::payload;
use crate::protocol::Deliveries;

/// Reads per readiness event before the socket is put back on the worker's retry list
/// (edge-triggered readiness is only re-armed by reaching `WouldBlock`).
pub const READS_PER_WAKE_MAX: usize = 64;

/// Where a subscriber's connection is.
pub enum SubState {
    /// Not connected; waiting in the connect queue (or finished).
    Idle,
    /// TCP connect in flight or request partly written; `sent` bytes of `request` out.
    Connecting {
        /// The socket.
        stream: TcpStream,
        /// The request bytes.
        request: Vec<u8>,
        /// Bytes already written.
        sent: usize,
    },
    /// Request sent; collecting the response head.
    ReadingHead {
        /// The socket.
        stream: TcpStream,
        /// Head bytes so far (bounded by [`http::HEAD_BYTES_MAX`]).
        head: Vec<u8>,
    },
    /// 200 text/event-stream received; feeding the body to the parser.
    Streaming {
        /// The socket.
        stream: TcpStream,
        /// The chunked decoder, when the body is chunked.
        chunked: Option<ChunkedDecoder>,
    },
}

/// Why a connection attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Connect or write error.
    Connect,
    /// The head did not arrive in time.
    Timeout,
    /// Status other than 200 (this one).
    Status(u16),
    /// Not `text/event-stream`.
    ContentType,
    /// Bad HTTP or SSE.
    Malformed,
    /// Closed before the head completed.
    Closed,
}

/// What the loop must do after a readiness event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing new (may have received events).
    Pending,
    /// The read budget ran out before `WouldBlock`: call again next turn.
    MoreToRead,
    /// The response head arrived and the stream is open.
    Opened,
    /// The attempt failed before the stream opened.
    Failed(Failure),
    /// An open stream ended (closed by the server or broken).
    Ended,
}

/// What the worker accumulates from every subscriber.
pub struct Tally {
    /// Delivery counters since the last report.
    pub deliveries: Deliveries,
    /// Delivery latency in microseconds.
    pub latency: Histogram<u64>,
}

/// One subscriber.
pub struct Sub {
    /// Topic number.
    pub topic: u32,
    /// Connection state.
    pub state: SubState,
    /// The stream parser; its last id survives reconnects.
    pub parser: SseParser,
    /// The next per-topic sequence number expected.
    pub next_seq: u64,
    /// When the current connection attempt started.
    pub started: Instant,
    /// The first stream of this subscriber opened (later opens are reconnects).
    pub opened_once: bool,
    /// Reconnect attempts so far (bounded by the worker).
    pub attempts: u32,
    /// How the events this subscriber did not get are explained (see [`Track`]).
    pub track: Track,
}

/// What a subscriber knows about the stream it is on, to explain every hole in its
/// sequence: a gap notice announced it, the stream started without an id to resume from,
/// or nothing did (a silent loss).
#[derive(Clone, Copy, Debug, Default)]
pub struct Track {
    /// The current stream's request carried a Last-Event-ID.
    pub anchored: bool,
    /// No payload event has arrived on the current stream yet.
    pub fresh: bool,
    /// A gap notice arrived on this stream and no payload event since.
    pub gap_pending: bool,
    /// When the current stream's response head arrived (unix microseconds; 0 before).
    pub opened_us: u64,
    /// The server's history depth in events per topic, when the run knows it.
    pub history_events: Option<u64>,
    /// The check of the last announced hole still waiting for its event (survives
    /// reconnects: the event may come on a later stream).
    pub gap_check: Option<GapCheck>,
}

/// Whether an announced hole was real, with N events of history per topic: the first event
/// skipped, m, can only have been evicted if event m + N had been published before the
/// server answered the resume, so that event's publish timestamp must not be later than
/// the moment the stream's response head arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GapCheck {
    /// m + N.
    pub seq: u64,
    /// When the head of the stream that announced the hole arrived, unix microseconds.
    pub opened_us: u64,
}

impl Track {
    /// A new stream opens; `anchored` says whether it resumes from an id.
    pub fn opening(&mut self, anchored: bool) {
        *self = Track {
            anchored,
            fresh: true,
            gap_pending: false,
            opened_us: 0,
            history_events: self.history_events,
            gap_check: self.gap_check,
        };
    }

    /// Settles the pending check with the payload event `seq` published at `ts_us`:
    /// counted when `seq` is the event it waits for; dropped when a later hole skipped
    /// that event (the later hole has its own check).
    fn settle_check(&mut self, seq: u64, ts_us: u64, d: &mut Deliveries) {
        let Some(check) = self.gap_check else {
            return;
        };
        if seq < check.seq {
            return;
        }
        self.gap_check = None;
        if seq == check.seq {
            d.gap_notices_checked += 1;
            if ts_us > check.opened_us {
                d.gap_notices_unfounded += 1;
            }
        }
    }
}

impl Sub {
    /// A subscriber to `topic` that has not connected yet; `history_events` is the
    /// server's history depth when known (announced holes are then checked against it).
    pub fn new(topic: u32, now: Instant, history_events: Option<u64>) -> Sub {
        Sub {
            topic,
            state: SubState::Idle,
            parser: SseParser::new(),
            next_seq: 0,
            started: now,
            opened_once: false,
            attempts: 0,
            track: Track {
                history_events,
                ..Track::default()
            },
        }
    }

    /// The socket, if any.
    pub fn stream(&mut self) -> Option<&mut TcpStream> {
        match &mut self.state {
            SubState::Idle => None,
            SubState::Connecting { stream, .. }
            | SubState::ReadingHead { stream, .. }
            | SubState::Streaming { stream, .. } => Some(stream),
        }
    }

    /// True while an attempt is under way (not idle, not streaming).
    pub fn is_attempting(&self) -> bool {
        matches!(
            self.state,
            SubState::Connecting { .. } | SubState::ReadingHead { .. }
        )
    }

    /// True when the stream is open.
    pub fn is_streaming(&self) -> bool {
        matches!(self.state, SubState::Streaming { .. })
    }

    /// Advances the connection after a readiness event. `now_us` is the wall clock in
    /// microseconds since the Unix epoch (taken once per event batch); `buf` is scratch.
    pub fn on_ready(&mut self, buf: &mut [u8], now_us: u64, tally: &mut Tally) -> Outcome {
        if let SubState::Connecting { .. } = self.state {
            match self.write_request() {
                Ok(true) => {}
                Ok(false) => return Outcome::Pending,
                Err(_) => return Outcome::Failed(Failure::Connect),
            }
        }
        for _ in 0..READS_PER_WAKE_MAX {
            let Some(stream) = self.stream() else {
                return Outcome::Pending;
            };
            tally.deliveries.reads += 1;
            let n = match stream.read(buf) {
                Ok(0) => return self.closed(),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Outcome::Pending,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.closed(),
            };
            match self.on_bytes(&buf[..n], now_us, tally) {
                Outcome::Pending => {}
                Outcome::Opened => return self.opened_then_drain(buf, now_us, tally),
                other => return other,
            }
        }
        Outcome::MoreToRead
    }

    /// The head just completed within a read: keep draining the socket, then say Opened
    /// (or what went wrong since).
    fn opened_then_drain(&mut self, buf: &mut [u8], now_us: u64, tally: &mut Tally) -> Outcome {
        match self.on_ready(buf, now_us, tally) {
            Outcome::Pending => Outcome::Opened,
            Outcome::MoreToRead => Outcome::Opened, // The loop retries streaming subs too.
            Outcome::Ended => Outcome::Failed(Failure::Closed),
            other => other,
        }
    }

    /// Writes the rest of the request: `Ok(true)` once all of it is out.
    fn write_request(&mut self) -> io::Result<bool> {
        let SubState::Connecting {
            stream,
            request,
            sent,
        } = &mut self.state
        else {
            return Ok(true);
        };
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        while *sent < request.len() {
            match stream.write(&request[*sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => *sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let state = std::mem::replace(&mut self.state, SubState::Idle);
        if let SubState::Connecting { stream, .. } = state {
            self.state = SubState::ReadingHead {
                stream,
                head: Vec::new(),
            };
        }
        Ok(true)
    }

    fn closed(&mut self) -> Outcome {
        match self.state {
            SubState::Streaming { .. } => Outcome::Ended,
            _ => Outcome::Failed(Failure::Closed),
        }
    }

    /// Bytes read from the socket.
    fn on_bytes(&mut self, bytes: &[u8], now_us: u64, tally: &mut Tally) -> Outcome {
        match &mut self.state {
            SubState::ReadingHead { head, .. } => {
                head.extend_from_slice(bytes);
                self.on_head_bytes(now_us, tally)
            }
            SubState::Streaming { .. } => self.on_body(bytes, now_us, tally),
            _ => Outcome::Pending,
        }
    }

    /// Checks the head collected so far; once complete, switches to streaming and feeds
    /// whatever body bytes came with it.
    fn on_head_bytes(&mut self, now_us: u64, tally: &mut Tally) -> Outcome {
        let SubState::ReadingHead { head: bytes, .. } = &self.state else {
            return Outcome::Pending;
        };
        let head = match http::parse_head(bytes) {
            Ok(None) => return Outcome::Pending,
            Ok(Some(head)) => head,
            Err(_) => return Outcome::Failed(Failure::Malformed),
        };
        if head.status != 200 {
            return Outcome::Failed(Failure::Status(head.status));
        }
        if !head.event_stream {
            return Outcome::Failed(Failure::ContentType);
        }
        let state = std::mem::replace(&mut self.state, SubState::Idle);
        let SubState::ReadingHead { stream, head: raw } = state else {
            return Outcome::Pending;
        };
        let chunked = head.chunked.then(ChunkedDecoder::default);
        self.state = SubState::Streaming { stream, chunked };
        self.track.opened_us = now_us;
        match self.on_body(&raw[head.len..], now_us, tally) {
            Outcome::Pending => Outcome::Opened,
            Outcome::Ended => Outcome::Failed(Failure::Malformed),
            other => other,
        }
    }

    /// Body bytes of an open stream.
    fn on_body(&mut self, bytes: &[u8], now_us: u64, tally: &mut Tally) -> Outcome {
        let Sub {
            state,
            parser,
            next_seq,
            track,
            ..
        } = self;
        let SubState::Streaming { chunked, .. } = state else {
            return Outcome::Pending;
        };
        let mut on_event = |item: Item<'_>| {
            if let Item::Event(event) = item {
                count_event(&event, now_us, next_seq, track, tally);
            }
        };
        let result = match chunked {
            None => parser.feed(bytes, &mut on_event).map_err(|_| ()),
            Some(decoder) => {
                let mut parsed = Ok(());
                let fed = decoder.feed(bytes, &mut |body| {
                    if parsed.is_ok() {
                        parsed = parser.feed(body, &mut on_event);
                    }
                });
                match (fed, parsed) {
                    (Ok(_), Ok(())) if decoder.is_done() => return Outcome::Ended,
                    (Ok(_), Ok(())) => Ok(()),
                    _ => Err(()),
                }
            }
        };
        match result {
            Ok(()) => Outcome::Pending,
            Err(()) => Outcome::Ended,
        }
    }
}

/// Accounts one event: sequence tracking, the explanation of any hole, and latency.
fn count_event(
    event: &Event<'_>,
    now_us: u64,
    next_seq: &mut u64,
    track: &mut Track,
    tally: &mut Tally,
) {
    let Some((seq, ts_nanos)) = payload::decode(event.data) else {
        tally.deliveries.foreign += 1;
        if event.name == crate::protocol::GAP_EVENT {
            tally.deliveries.gap_notices += 1;
            track.gap_pending = true;
        }
        return;
    };
    let (fresh, gap_pending) = (track.fresh, track.gap_pending);
    track.fresh = false;
    track.gap_pending = false;
    if seq < *next_seq {
        tally.deliveries.duplicated += 1;
        return;
    }
    let d = &mut tally.deliveries;
    let ts_us = ts_nanos / 1000;
    track.settle_check(seq, ts_us, d);
    if seq > *next_seq {
        d.gaps += 1;
        let missed = seq - *next_seq;
        if gap_pending {
            d.missed_announced += missed;
            if let Some(depth) = track.history_events {
                track.gap_check = Some(GapCheck {
                    seq: *next_seq + depth,
                    opened_us: track.opened_us,
                });
                // The event after the hole may be the one the check waits for.
                track.settle_check(seq, ts_us, d);
            }
        } else if fresh && !track.anchored {
            d.missed_unanchored += missed;
        } else {
            d.missed_silent += missed;
        }
    } else if gap_pending {
        d.gap_notices_spurious += 1;
    }
    *next_seq = seq + 1;
    d.received += 1;
    let latency_us = now_us.saturating_sub(ts_us).clamp(1, LATENCY_US_MAX);
    tally.latency.saturating_record(latency_us);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally() -> Tally {
        Tally {
            deliveries: Deliveries::default(),
            latency: crate::latency::histogram(),
        }
    }

    fn event<'a>(name: &'a [u8], data: &'a [u8]) -> Event<'a> {
        Event {
            id: b"",
            name,
            data,
        }
    }

    #[test]
    fn sequence_tracking() {
        let mut t = tally();
        let mut next = 0;
        let mut track = Track::default();
        track.opening(true);
        let mut data = Vec::new();
        for seq in [0, 1, 1, 3, 2, 4] {
            payload::encode(&mut data, seq, 1_000_000, 64);
            count_event(&event(b"", &data), 2_000, &mut next, &mut track, &mut t);
        }
        count_event(
            &event(b"", b"not a payload"),
            0,
            &mut next,
            &mut track,
            &mut t,
        );
        let d = t.deliveries;
        assert_eq!((d.received, d.duplicated, d.gaps, d.foreign), (4, 2, 1, 1));
        assert_eq!((d.missed_silent, d.missed_announced), (1, 0));
        assert_eq!(next, 5);
        assert_eq!(t.latency.len(), 4);
        assert_eq!(t.latency.max(), 1_000);
    }

    /// Each hole is explained by what came before it on its stream.
    #[test]
    fn holes_are_classified() {
        let mut t = tally();
        let mut next = 0;
        let mut track = Track::default();
        let mut data = Vec::new();
        let mut feed = |seq: u64, track: &mut Track, next: &mut u64, t: &mut Tally| {
            payload::encode(&mut data, seq, 1_000_000, 64);
            count_event(&event(b"", &data), 2_000, next, track, t);
        };
        // A stream opened without an id starts at the server's newest event.
        track.opening(false);
        feed(2, &mut track, &mut next, &mut t);
        // A resumed stream announces what history no longer holds...
        track.opening(true);
        count_event(&event(b"gap", b""), 0, &mut next, &mut track, &mut t);
        feed(7, &mut track, &mut next, &mut t);
        // ...and a notice followed by no hole is spurious.
        track.opening(true);
        count_event(&event(b"gap", b"x"), 0, &mut next, &mut track, &mut t);
        feed(8, &mut track, &mut next, &mut t);
        // A hole with neither excuse is silent loss.
        feed(10, &mut track, &mut next, &mut t);
        let d = t.deliveries;
        assert_eq!(
            (d.missed_unanchored, d.missed_announced, d.missed_silent),
            (2, 4, 1)
        );
        assert_eq!(
            (d.gap_notices, d.gap_notices_spurious, d.foreign),
            (2, 1, 2)
        );
        assert_eq!(d.received, 4);
    }

    /// With N events of history, a hole announced at m is real only if event m + N was
    /// published by the time the stream opened.
    #[test]
    fn announced_holes_are_checked_against_the_history_depth() {
        let mut t = tally();
        let mut next = 0;
        let mut track = Track {
            history_events: Some(2),
            ..Track::default()
        };
        let mut data = Vec::new();
        let mut feed = |seq: u64, ts_us: u64, track: &mut Track, next: &mut u64, t: &mut Tally| {
            payload::encode(&mut data, seq, ts_us * 1000, 64);
            count_event(&event(b"", &data), 9_000, next, track, t);
        };
        track.opening(true);
        for seq in 0..5 {
            feed(seq, 1_000, &mut track, &mut next, &mut t);
        }
        // Resumed at 5_000 us; history had 7 and 8 (so 5 and 6 were evicted): real.
        track.opening(true);
        track.opened_us = 5_000;
        count_event(&event(b"gap", b""), 0, &mut next, &mut track, &mut t);
        feed(7, 4_000, &mut track, &mut next, &mut t);
        assert_eq!(track.gap_check, None);
        feed(8, 4_500, &mut track, &mut next, &mut t);
        // Resumed at 5_000 us and told 9 is gone, but 11 (9 + 2) was published later:
        // history still held 9.
        track.opening(true);
        track.opened_us = 5_000;
        count_event(&event(b"gap", b""), 0, &mut next, &mut track, &mut t);
        feed(10, 4_800, &mut track, &mut next, &mut t);
        assert!(track.gap_check.is_some());
        // A reconnect keeps the check; the event it waits for arrives on the next stream.
        track.opening(true);
        feed(11, 6_000, &mut track, &mut next, &mut t);
        let d = t.deliveries;
        assert_eq!((d.missed_announced, d.gap_notices), (3, 2));
        assert_eq!((d.gap_notices_checked, d.gap_notices_unfounded), (2, 1));
        assert_eq!(d.missed_silent, 0);
    }
}
