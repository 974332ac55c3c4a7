//! The reader thread: a blocking `XREAD` after the last id it saw, each entry decoded,
//! encoded once and handed to every loop in stream order. It is the only sender to the
//! loops' inboxes, which is what keeps them in id order. It reconnects after losing Redis
//! and continues after its last id; when the stream dropped entries before it read them, it
//! raises the bus's reach floor and tells the loops with [`InboxItem::Lost`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

use super::entry::{entries, pack, to_published, RawId};
use super::link::{connect, learn, Backoff, Throttle};
use super::{lock, Core, READ_BLOCK, READ_COUNT_MAX};
use crate::bus::InboxItem;

/// Sleeps up to `total`, in slices, returning early when the bus closes.
fn nap(core: &Core, total: Duration) {
    let until = Instant::now() + total;
    while !core.closed.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// The reader thread's body: runs until the bus closes.
pub(super) fn run_reader(core: &Core) {
    let mut last: Option<RawId> = None;
    let mut backoff = Backoff::seeded();
    let mut ever_connected = false;
    let mut down_logged = false;
    let mut skips = Throttle::new();
    while !core.closed.load(Ordering::Acquire) {
        // Logs the first failure of an outage, then waits a growing backoff.
        let mut retry_later = |what: &str, error: redis::RedisError| {
            learn(core, &error);
            if !down_logged {
                log::warn!("redis reader cannot {what}: {error}");
                down_logged = true;
            }
            nap(core, backoff.step());
        };
        let (mut conn, mut primary) = match connect(core, READ_BLOCK) {
            Ok(found) => found,
            Err(error) => {
                retry_later("connect", error);
                continue;
            }
        };
        // Reading the stream's end also proves the stream can be read at all (a key of
        // another type fails here). The first time, reading starts after it: older entries
        // are served to resumes by the backfiller, not replayed into the rings.
        match last_entry(&mut conn, &core.stream).map(|id| id.unwrap_or((0, 0))) {
            Ok(id) => {
                if last.is_none() {
                    last = Some(id);
                    let floor = pack(id.0, id.1);
                    *lock(&core.floor) = Some(floor);
                }
                core.connected.store(true, Ordering::Release);
            }
            Err(error) => {
                retry_later("read the stream", error);
                continue;
            }
        }
        // After a disconnection the stream may have moved on past what this node read.
        let mut verify = ever_connected;
        if ever_connected {
            core.reconnects.fetch_add(1, Ordering::Relaxed);
            log::info!("redis reader reconnected");
        }
        ever_connected = true;
        // Backoff resets only once a read worked: a Redis that accepts connections but
        // refuses the read (a key of another type, a missing permission) is not hammered.
        let mut healthy = false;
        while !core.closed.load(Ordering::Acquire) {
            let after = last.unwrap_or((0, 0));
            let batch = xread(&mut conn, core, after).and_then(|entries| {
                // Trimming removes the oldest entries first, so nothing after `after` was
                // lost while `after` itself is still kept. Only a reader that was away, or
                // that reads a full batch (it is behind), can have been overtaken.
                let behind = entries.len() == READ_COUNT_MAX || core.maxlen < READ_COUNT_MAX;
                let lost = match entries.first() {
                    Some(_) if after != (0, 0) && (verify || behind) => {
                        first_entry(&mut conn, &core.stream)?.is_some_and(|first| first > after)
                    }
                    _ => false,
                };
                Ok((entries, lost))
            });
            match batch {
                Ok((entries, lost)) => {
                    if !healthy {
                        healthy = true;
                        backoff.reset();
                        down_logged = false;
                    }
                    if let (true, Some((next, _))) = (lost, entries.first()) {
                        report_hole(core, after, *next);
                    }
                    verify &= entries.is_empty();
                    for (id, fields) in entries {
                        forward_entry(core, id, &fields, &mut skips);
                        last = Some(id);
                    }
                    if primary.moved(core) {
                        break;
                    }
                }
                Err(error) => {
                    learn(core, &error);
                    if !down_logged {
                        log::warn!("redis reader lost its connection: {error}");
                        down_logged = true;
                    }
                    break;
                }
            }
        }
        core.connected.store(false, Ordering::Release);
        if !healthy {
            nap(core, backoff.step());
        }
    }
}

/// The id of the stream's oldest entry, if it has one.
pub(super) fn first_entry(
    conn: &mut redis::Connection,
    stream: &str,
) -> redis::RedisResult<Option<RawId>> {
    edge_entry(conn, stream, "XRANGE", ["-", "+"])
}

/// The id of the stream's newest entry, if it has one.
fn last_entry(conn: &mut redis::Connection, stream: &str) -> redis::RedisResult<Option<RawId>> {
    edge_entry(conn, stream, "XREVRANGE", ["+", "-"])
}

/// The first entry `command` (`XRANGE` or `XREVRANGE`) lists over `range`.
fn edge_entry(
    conn: &mut redis::Connection,
    stream: &str,
    command: &str,
    range: [&str; 2],
) -> redis::RedisResult<Option<RawId>> {
    let reply: Value = redis::cmd(command)
        .arg(stream)
        .arg(&range[..])
        .arg("COUNT")
        .arg(1)
        .query(conn)?;
    Ok(entries(reply).first().map(|(id, _)| *id))
}

/// The stream dropped entries after `last` before this node read them (it was cut off,
/// or slower than the publishers for longer than the stream keeps entries). They cannot
/// be delivered; instead the loops' knowledge now starts before `next`, and every stream
/// is told to resume, so each client learns of the gap from the backfill (which finds
/// the stream trimmed after its id) rather than missing events silently.
fn report_hole(core: &Core, last: RawId, next: RawId) {
    let holes = core.holes.fetch_add(1, Ordering::Relaxed) + 1;
    // A reader that stays behind reports a hole per batch: log the first and then every
    // hundredth, the metric counts them all.
    if holes % 100 == 1 {
        log::error!(
            "the stream dropped entries after {}-{} before this node read them (next kept: \
             {}-{}; {holes} such holes so far); streams resume and get the gap event. Raise \
             --redis-maxlen.",
            last.0,
            last.1,
            next.0,
            next.1
        );
    }
    let floor = pack(next.0, next.1).saturating_sub(1);
    if let Some(known) = lock(&core.floor).as_mut() {
        *known = (*known).max(floor);
    }
    broadcast_when_room(core, &InboxItem::Lost { through: floor });
}

/// One blocking `XREAD` after `after`.
fn xread(
    conn: &mut redis::Connection,
    core: &Core,
    after: RawId,
) -> redis::RedisResult<Vec<(RawId, Vec<Value>)>> {
    let reply: Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(READ_COUNT_MAX)
        .arg("BLOCK")
        .arg(READ_BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(&core.stream)
        .arg(format!("{}-{}", after.0, after.1))
        .query(conn)?;
    // RESP2: [[stream, [entry, ...]]], or nil when the block timed out. Anything else is
    // an error, so the reader backs off instead of spinning on entries it cannot see.
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        other => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::TypeError,
                "unexpected XREAD reply",
                format!("{other:?}"),
            )))
        }
    };
    let mut out = Vec::new();
    for stream in streams {
        if let Value::Array(mut pair) = stream {
            if pair.len() == 2 {
                if let Some(list) = pair.pop() {
                    out.extend(entries(list));
                }
            }
        }
    }
    Ok(out)
}

/// Hands one entry to every loop as an event, or counts it skipped when it fails the checks
/// a publish gets.
fn forward_entry(core: &Core, id: RawId, fields: &[Value], skips: &mut Throttle) {
    let published = match to_published(core, id, fields, |_| true) {
        Ok(Some(published)) => published,
        Ok(None) => return,
        Err(reason) => {
            core.skipped.fetch_add(1, Ordering::Relaxed);
            if let Some(held) = skips.allow() {
                log::warn!(
                    "skipping stream entry {}-{} ({held} more skipped without a line): {reason}",
                    id.0,
                    id.1
                );
            }
            return;
        }
    };
    if broadcast_when_room(core, &InboxItem::Event(Arc::new(published))) {
        core.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Hands `item` to every loop once all their inboxes have room for it, waiting (not
/// dropping) meanwhile: the stream keeps the entries, so the reader can be the one that
/// waits. False when the bus closed first.
fn broadcast_when_room(core: &Core, item: &InboxItem) -> bool {
    while !core.fanout.has_room(1, item.bytes()) {
        if core.closed.load(Ordering::Acquire) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    core.fanout.broadcast(item);
    true
}
