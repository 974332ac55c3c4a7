//! The scenario settings of the `cluster` parts (latency fan-out and rate search) derived
//! from its flags, and the seconds left before the run's deadline.

use std::io::{self, ErrorKind};
use std::time::{Duration, Instant};

use super::ClusterArgs;
use crate::payload::PAYLOAD_BYTES_MIN;
use crate::protocol::SOCKETS_PER_WORKER_MAX;
use crate::scenario::{Scenario, Settings};
use crate::schedule::Schedule;

/// Whole seconds left before `deadline` (at least one), or an error past it.
pub fn left(deadline: Instant) -> io::Result<u64> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if d >= Duration::from_secs(1) => Ok(d.as_secs()),
        _ => Err(io::Error::new(
            ErrorKind::TimedOut,
            "the run's deadline passed",
        )),
    }
}

/// Settings both sides share; `subscribers` split into one worker per node (three
/// workers against the embedded node too, so the client side is the same).
fn base_settings(args: &ClusterArgs, subscribers: usize, deadline_seconds: u64) -> Settings {
    let nodes = args.nodes.max(1);
    Settings {
        scenario: Scenario::Fanout,
        subscribers,
        topics: 1,
        rate: args.rate,
        events: 1,
        payload_bytes: args.payload_bytes.max(PAYLOAD_BYTES_MIN),
        publishers: 1,
        churn_percent: 0.0,
        per_worker: subscribers.div_ceil(nodes).clamp(1, SOCKETS_PER_WORKER_MAX),
        per_source: args.per_source.max(1),
        connect_inflight: 512,
        connect_timeout_ms: args.connect_timeout_ms,
        settle_ms: args.settle_ms,
        drain_quiet_ms: args.drain_quiet_ms,
        step_factor: args.search_step_factor,
        steps_max: 1,
        p99_limit_ms: args.p99_limit_ms,
        deadline_seconds,
        history_events: None,
    }
}

/// The latency part: fan-out on one topic at a fixed rate.
pub fn latency_settings(args: &ClusterArgs, deadline_seconds: u64) -> Settings {
    let events = Schedule::new(args.rate).events_in(secs(args.duration));
    Settings {
        events,
        ..base_settings(args, args.subscribers, deadline_seconds)
    }
}

/// The rate search: the saturation ladder over several topics and publish connections.
pub(super) fn search_settings(args: &ClusterArgs, deadline_seconds: u64) -> Settings {
    let rate = args.search_rate.max(1.0);
    Settings {
        scenario: Scenario::Saturation,
        topics: args.search_topics.max(1),
        rate,
        events: Schedule::new(rate).events_in(secs(args.search_step_seconds)),
        publishers: args.search_publishers.max(1),
        steps_max: args.search_steps_max,
        ..base_settings(args, args.search_subscribers, deadline_seconds)
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}
