//! The writer thread: takes publishes from a bounded queue and appends each batch as one
//! pipeline of `XADD`s, then answers every publisher with its entry ids or a refusal, only
//! once Redis replied. A publish of several events (a batch publish) goes inside
//! `MULTI`/`EXEC` in that pipeline, so no other client's entry lands between its entries.
//! It never delivers: what it stores reaches the loops through the reader, like an entry
//! any other node or application appended.
//!
//! With `redis_wait_replicas` N > 0 the pipeline ends with one `WAIT N timeout`, which
//! covers every write before it on the connection; a publish whose entries were stored is
//! answered with its ids only when `WAIT` counted N replicas, and refused with
//! [`PublishError::NotReplicated`] otherwise (its entries may then be stored, and be
//! delivered, or vanish in a failover).

use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::Value;

use super::cluster::not_served;
use super::entry::parse_id;
use super::link::{RedisConn, Throttle};
use super::{Core, READ_BLOCK};
use crate::bus::{Completion, Stored, Ticket};
use crate::event::{EventId, PublishError};

/// Publishes waiting for the writer. Past this a publish gets 503 at once: Redis is
/// slower than the publishers, and queueing more would only add latency and memory.
pub(super) const WRITE_QUEUE_MAX: usize = 4_096;
/// Event bytes waiting for the writer, for the same reason: 4,096 publishes of the largest
/// size would otherwise hold gigabytes while Redis is slow.
pub(super) const WRITE_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Event bytes sent in one pipeline (at least one publish always goes).
const WRITE_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// `XADD`s sent in one pipeline: one round trip for a burst, bounded reply memory (at
/// least one publish always goes, whatever its number of events).
const WRITE_BATCH_MAX: usize = 256;

/// Where a publish's answer goes.
pub(super) enum Reply {
    /// A connection on a loop.
    Loop(Ticket),
    /// A thread blocked in `Handle::publish`.
    Wait(Sender<Stored>),
}

/// One publish waiting for the writer: its events, validated, and where its answer goes.
pub(super) struct WriteJob {
    /// The events, stored together with consecutive entry ids or not at all.
    pub events: Vec<WriteEvent>,
    /// Who waits for the answer.
    pub reply: Reply,
}

impl WriteJob {
    /// Data bytes of all its events, as counted against the queue's byte budget.
    pub(super) fn bytes(&self) -> usize {
        self.events.iter().map(|event| event.data.len()).sum()
    }
}

/// One event of a [`WriteJob`].
pub(super) struct WriteEvent {
    /// Distinct, valid topic names.
    pub topics: Vec<Box<str>>,
    /// Valid event name.
    pub name: Option<String>,
    /// The data.
    pub data: String,
    /// Optional `retry:` hint.
    pub retry_ms: Option<u32>,
}

/// The writer thread's body: runs until the bus closes.
pub(super) fn run_writer(core: &Core, jobs: &Receiver<WriteJob>) {
    let wait = match core.wait_replicas {
        0 => std::time::Duration::ZERO,
        _ => core.wait_timeout,
    };
    let mut connection = RedisConn::blocking_for("writer", wait);
    let mut batch = Vec::with_capacity(WRITE_BATCH_MAX);
    let mut refusals = Throttle::new();
    probe(core, &mut connection);
    loop {
        let (mut bytes, mut events) = match jobs.recv_timeout(READ_BLOCK) {
            Ok(job) => {
                let counts = (job.bytes(), job.events.len());
                batch.push(job);
                counts
            }
            Err(RecvTimeoutError::Timeout) => {
                if core.closed.load(Ordering::Acquire) {
                    return;
                }
                probe(core, &mut connection);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        while events < WRITE_BATCH_MAX && bytes < WRITE_BATCH_BYTES_MAX {
            match jobs.try_recv() {
                Ok(job) => {
                    bytes += job.bytes();
                    events += job.events.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        core.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        let (results, reached) = match connection.get(core) {
            None => (vec![Err(PublishError::Unavailable); batch.len()], false),
            Some(conn) => match xadd_batch(conn, core, &batch, &mut refusals) {
                Ok((results, None)) => (results, true),
                // Answered as the replies say; the next batch goes to the slot's new owner.
                Ok((results, Some(error))) => {
                    connection.lost(core, &error);
                    (results, false)
                }
                Err(error) => {
                    connection.lost(core, &error);
                    (vec![Err(PublishError::Unavailable); batch.len()], false)
                }
            },
        };
        core.writer_connected.store(reached, Ordering::Relaxed);
        for (job, result) in batch.drain(..).zip(results) {
            match job.reply {
                Reply::Loop(ticket) => core.fanout.complete(Completion::Published(ticket, result)),
                // The waiter may have given up; nothing to do then.
                Reply::Wait(tx) => drop(tx.try_send(result)),
            }
        }
    }
}

/// Records whether the writer can reach Redis, without waiting for a publish to find out:
/// called at start and after every `READ_BLOCK` without publishes, when `RedisConn::get`
/// checks an idle connection with a `PING` (one a second per node) or, while Redis is
/// down, tries to reconnect under its backoff. `/readyz` reads the result, so a writer that
/// lost Redis shows before a publish is refused, and one that got it back shows within
/// about a second of the backoff allowing it, publishes or not.
fn probe(core: &Core, connection: &mut RedisConn) {
    let reached = connection.get(core).is_some();
    core.writer_connected.store(reached, Ordering::Relaxed);
}

/// Appends a batch in one pipeline, each publish of several events inside `MULTI`/`EXEC`.
/// `Err` only when the connection failed (then any of the entries may or may not be
/// stored); a refused publish is an `Err` in its slot. In a Redis Cluster, a node that no
/// longer serves the stream's slot refuses the `XADD`s from the moment it stopped (`MOVED`,
/// `ASK`): those publishes are refused, the ones stored before are answered with their ids,
/// and the error comes back beside the answers so the connection is left.
fn xadd_batch(
    conn: &mut redis::Connection,
    core: &Core,
    batch: &[WriteJob],
    refusals: &mut Throttle,
) -> redis::RedisResult<(Vec<Stored>, Option<redis::RedisError>)> {
    let mut pipe = redis::pipe();
    let mut expected = 0;
    for job in batch {
        let atomic = job.events.len() > 1;
        if atomic {
            pipe.cmd("MULTI");
        }
        for event in &job.events {
            let cmd = pipe
                .cmd("XADD")
                .arg(&core.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(core.maxlen)
                .arg("*")
                .arg("topic")
                .arg(event.topics.join(","));
            if let Some(name) = &event.name {
                cmd.arg("event").arg(name);
            }
            cmd.arg("data").arg(&event.data);
            if let Some(retry_ms) = event.retry_ms {
                cmd.arg("retry").arg(retry_ms);
            }
        }
        if atomic {
            pipe.cmd("EXEC");
        }
        expected += job.events.len() + if atomic { 2 } else { 0 };
    }
    if core.wait_replicas > 0 {
        pipe.cmd("WAIT")
            .arg(core.wait_replicas)
            .arg(core.wait_timeout.as_millis() as u64);
        expected += 1;
    }
    // Replies are read one by one so the first I/O error (a frozen Redis timing out) ends
    // the batch at once; reading on would wait the timeout again for every reply.
    conn.send_packed_command(&pipe.get_packed_pipeline())?;
    let mut replies = Vec::with_capacity(expected);
    for _ in 0..expected {
        replies.push(conn.recv_response()?); // A refused entry is Ok(ServerError).
    }
    // A demoted primary (a failover under way) refuses every write: reconnecting finds the
    // new one, where keeping the connection would refuse publishes until it is closed.
    let read_only =
        |reply: &Value| matches!(reply, Value::ServerError(error) if error.code() == "READONLY");
    if replies.iter().any(read_only) {
        return Err(redis::RedisError::from((
            redis::ErrorKind::ReadOnly,
            "redis is a replica now",
        )));
    }
    let not_served = replies.iter().find_map(not_served);
    let replicated = match core.wait_replicas {
        0 => true,
        wanted => match replies.pop() {
            Some(Value::Int(count)) => usize::try_from(count).is_ok_and(|count| count >= wanted),
            _ => false,
        },
    };
    let mut replies = replies.into_iter();
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let result = if job.events.len() > 1 {
            // `MULTI`'s `OK` and each `QUEUED` carry nothing `EXEC`'s reply does not: a
            // command refused while queueing makes `EXEC` fail (`EXECABORT`), storing none.
            let exec = replies.nth(job.events.len() + 1);
            match exec {
                Some(Value::Array(ids)) if ids.len() == job.events.len() => {
                    ids.iter().map(|id| entry_id(id, refusals)).collect()
                }
                other => Err(refused(other.as_ref(), refusals)),
            }
        } else {
            replies
                .next()
                .map_or(Err(PublishError::Unavailable), |reply| {
                    entry_id(&reply, refusals).map(|id| vec![id])
                })
        };
        results.push(match result {
            Ok(_) if !replicated => Err(PublishError::NotReplicated),
            other => other,
        });
    }
    Ok((results, not_served))
}

/// The entry id in an `XADD` reply, or its refusal (logged, throttled).
fn entry_id(reply: &Value, refusals: &mut Throttle) -> Result<EventId, PublishError> {
    match reply {
        Value::BulkString(id) if parse_id(id).is_some() => {
            Ok(EventId(String::from_utf8_lossy(id).into_owned()))
        }
        other => Err(refused(Some(other), refusals)),
    }
}

/// Logs (throttled) a reply that stored nothing, and refuses the publish it answers.
fn refused(reply: Option<&Value>, refusals: &mut Throttle) -> PublishError {
    if let Some(held) = refusals.allow() {
        log::warn!("redis refused an XADD ({held} more not logged): {reply:?}");
    }
    PublishError::Unavailable
}
