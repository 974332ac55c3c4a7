//! The backfiller thread: answers resumes older than a loop's rings with the events of the
//! subscription's topics, paged out of the stream with `XRANGE` under a byte and an entry
//! budget, and tells whether the stream trimmed events the client never got (the gap).
//! Requests wait in a [`FairQueue`] served one client address at a time.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, PoisonError};

use redis::Value;

use super::entry::{entries, format_id, pack, parse_id, text, to_published};
use super::fair::{FairQueue, Refused};
use super::link::RedisConn;
use super::reader::first_entry;
use super::{lock, Core, READ_BLOCK, READ_COUNT_MAX};
use crate::bus::{Backfill, BackfillError, BackfillRequest, Completion, Ticket};
use crate::history::ring::Seq;
use crate::sse::encode_id;

/// Resumes waiting for the backfiller; past this a resume gets 503 and retries.
const BACKFILL_QUEUE_MAX: usize = 1_024;
/// Resumes one client address may have waiting for the backfiller; past this its further
/// resumes get 503 and retry. The backfiller serves addresses in turn, so this only bounds
/// how much of the queue one address can take (a NAT or a browser's reconnect burst stays
/// well below it; a script sending resumes in a loop does not).
const BACKFILL_QUEUED_PER_CLIENT_MAX: usize = 16;
/// Stream entries one backfill reads, matching or not (eight `XRANGE` pages, a few ms of
/// Redis time). A resume that needs more gets what was found, its last id moved to the last
/// entry read, and a short `retry:`; it comes back for the rest in its turn. Without this a
/// resume from far back on a quiet topic held the single backfiller for the whole stream.
const BACKFILL_SCAN_MAX: usize = 8 * READ_COUNT_MAX;
const _: () = assert!(BACKFILL_QUEUED_PER_CLIENT_MAX <= BACKFILL_QUEUE_MAX);

/// A resume waiting for the backfiller, and whom to answer.
pub(super) struct BackfillJob {
    /// What to fetch.
    pub request: BackfillRequest,
    /// The connection waiting for it.
    pub ticket: Ticket,
}

/// Resumes waiting for the backfiller, served one client address at a time.
pub(super) struct BackfillQueue {
    jobs: Mutex<FairQueue<IpAddr, BackfillJob>>,
    /// Signalled when a job is queued.
    ready: Condvar,
}

impl BackfillQueue {
    /// An empty queue of `BACKFILL_QUEUE_MAX` jobs, `BACKFILL_QUEUED_PER_CLIENT_MAX` per
    /// client address.
    pub(super) fn new() -> Self {
        BackfillQueue {
            jobs: Mutex::new(FairQueue::new(
                BACKFILL_QUEUE_MAX,
                BACKFILL_QUEUED_PER_CLIENT_MAX,
            )),
            ready: Condvar::new(),
        }
    }

    /// Queues a job for the backfiller, or refuses it when the queue, or this client
    /// address's share of it, is full (both answered 503 with Retry-After).
    pub(super) fn push(&self, job: BackfillJob) -> Result<(), BackfillError> {
        let client = job.request.client;
        match lock(&self.jobs).push(client, job) {
            Ok(()) => {
                self.ready.notify_one();
                Ok(())
            }
            Err((Refused::Full | Refused::ClientFull, _)) => Err(BackfillError::Busy),
        }
    }
}

/// The backfiller thread's body: runs until the bus closes.
pub(super) fn run_backfiller(core: &Core, queue: &BackfillQueue) {
    let mut connection = RedisConn::new("backfiller");
    loop {
        let job = {
            let mut jobs = lock(&queue.jobs);
            loop {
                if core.closed.load(Ordering::Acquire) {
                    return;
                }
                if let Some((_, job)) = jobs.pop() {
                    break job;
                }
                jobs = queue
                    .ready
                    .wait_timeout(jobs, READ_BLOCK)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        let result = match connection.get(core) {
            None => Err(BackfillError::Unavailable),
            Some(conn) => match fetch(conn, core, &job.request) {
                Ok(backfill) => {
                    core.backfills.fetch_add(1, Ordering::Relaxed);
                    Ok(backfill)
                }
                Err(error) => {
                    connection.lost(core, &error);
                    Err(BackfillError::Unavailable)
                }
            },
        };
        core.fanout
            .complete(Completion::Backfilled(job.ticket, result));
    }
}

/// The events of `request.topics` in `(after, until]`, page by page, up to the byte budget
/// and `BACKFILL_SCAN_MAX` entries read; with `gap` when the stream already trimmed events
/// after `after`. An `after` older than the stream's first entry is answered at once with
/// the gap and nothing from the stream (the client refetches its state; the rings give it
/// what follows), so an id like `0-1` costs one `XRANGE` of one entry, not the whole stream.
///
/// A replay (`earliest`, `since`, or what the time to live keeps) is what the stream
/// holds from `after` on, with no gap: `after` maps a time to an id (`ms-0` less one), so
/// the range's start is also what keeps expired entries out (the loop moved it past them).
/// The stream is trimmed by `MAXLEN ~` only, not also `MINID`: one `XADD` takes one of
/// the two, and the length is what bounds Redis's memory under a burst; expired entries
/// cost memory there until the length trims them, never a delivery.
fn fetch(
    conn: &mut redis::Connection,
    core: &Core,
    request: &BackfillRequest,
) -> redis::RedisResult<Backfill> {
    let mut out = Backfill {
        frames: Vec::new(),
        gap: false,
        through: request.after,
        complete: false,
    };
    if !request.replay
        && first_entry(conn, &core.stream)?.is_some_and(|(ms, n)| pack(ms, n) > request.after)
    {
        out.gap = true;
        out.through = request.until;
        out.complete = true;
        return Ok(out);
    }
    // Whether entries after the id were trimmed is asked after the scan: trimming only moves
    // forward, so a trim racing the scan is still seen (asked before, it could be missed).
    // Pages continue after the last id seen.
    let mut from = format_id(request.after);
    let mut scanned = 0;
    // A wildcard (`prefix*`) wants every topic under its prefix, as on the rings.
    let wanted = |topics: &[Box<str>]| {
        topics
            .iter()
            .any(|topic| crate::auth::allows(&request.topics, topic))
    };
    loop {
        let count = READ_COUNT_MAX.min(BACKFILL_SCAN_MAX - scanned);
        let reply: Value = redis::cmd("XRANGE")
            .arg(&core.stream)
            .arg(format!("({from}"))
            .arg(format_id(request.until))
            .arg("COUNT")
            .arg(count)
            .query(conn)?;
        let page = entries(reply);
        let full_page = page.len() == count;
        scanned += page.len();
        core.backfill_scanned
            .fetch_add(page.len() as u64, Ordering::Relaxed);
        for (id, fields) in page {
            from = format!("{}-{}", id.0, id.1);
            if let Ok(Some(published)) = to_published(core, id, &fields, wanted) {
                if out.frames.len() + published.frame.len() > request.bytes_max {
                    return cut_short(conn, core, request, out);
                }
                out.frames.extend_from_slice(&published.frame);
            }
            out.through = pack(id.0, id.1);
        }
        if !full_page {
            out.through = request.until;
            out.complete = true;
            out.gap = !request.replay && trimmed_after(conn, &core.stream, request.after)?;
            return Ok(out);
        }
        if scanned >= BACKFILL_SCAN_MAX {
            return cut_short(conn, core, request, out);
        }
    }
}

/// A backfill that ran out of budget: what it found, then an `id:` for the last entry it
/// covered, so the client (told to come back at once) resumes after that entry, not after
/// the last event it happened to be sent.
fn cut_short(
    conn: &mut redis::Connection,
    core: &Core,
    request: &BackfillRequest,
    mut out: Backfill,
) -> redis::RedisResult<Backfill> {
    out.gap = !request.replay && trimmed_after(conn, &core.stream, request.after)?;
    out.frames
        .extend_from_slice(&encode_id(&format_id(out.through)));
    Ok(out)
}

/// Whether the stream may have dropped an entry newer than `after`: it no longer holds
/// `after` itself (trimming removes the oldest entries first, so whatever followed `after`
/// before the first entry kept is gone too), or it deleted a newer one (`XDEL`, which
/// Redis 7 reports as `max-deleted-entry-id`). When exactly `after` was the last entry
/// trimmed this reports a gap that was not needed; it never misses one.
fn trimmed_after(
    conn: &mut redis::Connection,
    stream: &str,
    after: Seq,
) -> redis::RedisResult<bool> {
    let reply = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query::<Value>(conn)
    {
        Ok(reply) => reply,
        // No such stream: whatever it held is gone.
        Err(error) if error.kind() == redis::ErrorKind::ResponseError => return Ok(after > 0),
        Err(error) => return Err(error),
    };
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Map(pairs) => pairs,
        Value::Array(flat) => {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut items = flat.into_iter();
            while let (Some(key), Some(value)) = (items.next(), items.next()) {
                pairs.push((key, value));
            }
            pairs
        }
        _ => return Ok(after > 0),
    };
    let field = |name: &[u8]| {
        pairs
            .iter()
            .find(|(key, _)| text(key) == Some(name))
            .map(|(_, value)| value)
    };
    let seq_of = |value: &Value| text(value).and_then(parse_id).map(|(ms, n)| pack(ms, n));
    let deleted = field(b"max-deleted-entry-id").and_then(seq_of).unwrap_or(0);
    let first = match field(b"first-entry") {
        Some(Value::Array(entry)) => entry.first().and_then(seq_of),
        _ => None,
    };
    let oldest_gone = match first {
        Some(first) => first > after,
        // Empty: everything up to the last id ever generated is gone.
        None => field(b"last-generated-id").and_then(seq_of).unwrap_or(0) > after,
    };
    Ok(oldest_gone || deleted > after)
}
