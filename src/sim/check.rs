//! The invariants checked after every step of a simulation (listed in
//! `docs/simulation.md`): every index names only live connections in the right phase and
//! every closed one is gone from all of them; every buffer is within its named limit.
//! What the clients received is checked by the clients themselves (`client.rs`).

use crate::conn::exchange::{PUBLISHES_IN_FLIGHT_MAX, QUEUED_ANSWER_BYTES_MAX};
use crate::conn::ConnState;
use crate::history::topics::SubscriberRef;

use super::driver::{Driver, HEAD_POOL_MAX};

/// Bytes of the largest answer the sim's requests get (a publish id, a refusal).
const ANSWER_BYTES_MAX: usize = 1024;
/// The exchange's own batch (`ANSWERS_BATCH_BYTES_MAX`, private to it).
const ANSWERS_BATCH_BYTES_MAX: usize = 16 * 1024;

/// Checks the loop's indexes and buffers.
pub(super) fn invariants(driver: &Driver) -> Result<(), String> {
    let (mut streaming, mut lingering, mut timers) = (0, 0, 0);
    let mut pipes_seen = std::collections::HashSet::new();
    for (key, slot) in driver.conns.iter() {
        if !pipes_seen.insert(slot.pipe) {
            return Err(format!("two connections on pipe {}", slot.pipe));
        }
        if driver.pipes[slot.pipe].server_closed {
            return Err(format!("connection {key} lives on a closed socket"));
        }
        if slot.timer.is_none() {
            return Err(format!(
                "connection {key} has no deadline: it could hang forever"
            ));
        }
        timers += 1;
        match slot.conn.state() {
            ConnState::Exchange(exchange) => check_exchange(key, exchange, driver)?,
            ConnState::Resuming(resuming) => check_exchange(key, &resuming.exchange, driver)?,
            ConnState::Authorizing(authorizing) => {
                check_exchange(key, &authorizing.exchange, driver)?
            }
            ConnState::Lingering { .. } => lingering += 1,
            ConnState::Streaming(stream) => {
                streaming += 1;
                for (index, topic) in stream.topics().iter().enumerate() {
                    let entry = driver
                        .topics
                        .get(topic.id)
                        .and_then(|t| t.subscribers.get(topic.position as usize));
                    let expected = SubscriberRef {
                        conn: key,
                        slot: index as u16,
                    };
                    if entry != Some(&expected) {
                        return Err(format!("stream {key}'s topic {index} is not where it says"));
                    }
                }
                // A stream waiting in the fan-out queue has its lag checked when its
                // slice comes (within the pass).
                if stream.is_blocked() && !stream.is_queued() {
                    let lag = stream.lag_bytes(&driver.topics);
                    if lag.is_none_or(|lag| lag > driver.limits.lag_bytes_max as u64) {
                        return Err(format!(
                            "blocked stream {key} lags {lag:?} bytes, past the limit"
                        ));
                    }
                }
            }
        }
    }
    for (id, topic) in driver.topics.iter() {
        for (position, subscriber) in topic.subscribers.iter().enumerate() {
            let stream = driver
                .conns
                .get(subscriber.conn)
                .and_then(|s| s.conn.stream());
            let back = stream.and_then(|s| s.topics().get(usize::from(subscriber.slot)));
            if back.is_none_or(|t| t.id != id || t.position as usize != position) {
                return Err(format!(
                    "topic {id} lists connection {} that is not its subscriber",
                    subscriber.conn
                ));
            }
        }
    }
    if driver.wheel.len() != timers {
        return Err(format!(
            "the wheel holds {} timers for {timers} connections",
            driver.wheel.len()
        ));
    }
    if driver.subscribers != streaming || driver.lingering != lingering {
        return Err("the loop's subscriber or lingering count drifted".into());
    }
    if driver.head_pool.len() > HEAD_POOL_MAX {
        return Err("head buffer pool past its limit".into());
    }
    Ok(())
}

fn check_exchange(
    key: usize,
    exchange: &crate::conn::Exchange,
    driver: &Driver,
) -> Result<(), String> {
    let (in_flight, queued, unsent, head) = exchange.sizes();
    if in_flight > PUBLISHES_IN_FLIGHT_MAX {
        return Err(format!(
            "connection {key} has {in_flight} publishes in flight"
        ));
    }
    if queued >= QUEUED_ANSWER_BYTES_MAX + ANSWER_BYTES_MAX {
        return Err(format!("connection {key} holds {queued} B of answers"));
    }
    if unsent > ANSWERS_BATCH_BYTES_MAX + QUEUED_ANSWER_BYTES_MAX + ANSWER_BYTES_MAX {
        return Err(format!(
            "connection {key} has {unsent} B of answers to write"
        ));
    }
    if head != driver.limits.head_bytes_max {
        return Err(format!("connection {key}'s head buffer is {head} B"));
    }
    Ok(())
}
