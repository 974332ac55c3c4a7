//! Counters and gauges, and their Prometheus text rendering for `GET /metrics`.
//!
//! Hot counters (deliveries, bytes) are kept as plain integers by each loop and stored
//! into that loop's [`LoopStats`] once per turn; rare events (refusals, auth failures)
//! are counted straight into the shared [`Metrics`]. Labels come from fixed sets only (no
//! per-topic or per-client labels), so the output's size is bounded.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (in microseconds) of the loop-turn duration histogram buckets.
pub(crate) const TURN_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// Statuses herald refuses requests with; each gets its own counter.
const REFUSAL_STATUSES: [u16; 15] = [
    400, 401, 403, 404, 405, 408, 411, 413, 415, 417, 429, 431, 500, 503, 505,
];

/// Counters one loop publishes once per turn.
#[derive(Default)]
pub(crate) struct LoopStats {
    /// Open connections on the loop (including ones being refused).
    pub connections: AtomicU64,
    /// Open streams.
    pub subscribers: AtomicU64,
    /// Topics with subscribers or history.
    pub topics: AtomicU64,
    /// Frames written in full to subscribers.
    pub deliveries: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Bytes written to clients (streams and answers).
    pub bytes_written: AtomicU64,
    /// Streams closed for falling too far behind.
    pub slow_closes: AtomicU64,
    /// Heartbeat comments queued.
    pub heartbeats: AtomicU64,
    /// Times accepting paused at the hard ceiling.
    pub accept_pauses: AtomicU64,
    /// Loop turns, and their durations by bucket (the last bucket is +Inf).
    pub turns: AtomicU64,
    /// Sum of turn durations in nanoseconds.
    pub turn_nanos: AtomicU64,
    /// Turn counts per bucket of [`TURN_BUCKETS_US`], plus +Inf.
    pub turn_buckets: [AtomicU64; TURN_BUCKETS_US.len() + 1],
}

/// A loop's own copy of its counters, updated without atomics on the hot path.
#[derive(Default)]
pub(crate) struct LoopCounters {
    /// See [`LoopStats::deliveries`].
    pub deliveries: u64,
    /// See [`LoopStats::accepted`].
    pub accepted: u64,
    /// See [`LoopStats::bytes_written`].
    pub bytes_written: u64,
    /// See [`LoopStats::slow_closes`].
    pub slow_closes: u64,
    /// See [`LoopStats::heartbeats`].
    pub heartbeats: u64,
    /// See [`LoopStats::accept_pauses`].
    pub accept_pauses: u64,
    /// See [`LoopStats::turns`].
    pub turns: u64,
    /// See [`LoopStats::turn_nanos`].
    pub turn_nanos: u64,
    /// See [`LoopStats::turn_buckets`].
    pub turn_buckets: [u64; TURN_BUCKETS_US.len() + 1],
}

impl LoopCounters {
    /// Records one turn's duration.
    pub(crate) fn record_turn(&mut self, duration: Duration) {
        let micros = duration.as_micros() as u64;
        let bucket = TURN_BUCKETS_US
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(TURN_BUCKETS_US.len());
        self.turn_buckets[bucket] += 1;
        self.turns += 1;
        self.turn_nanos += duration.as_nanos() as u64;
    }

    /// Stores the counters into the loop's shared stats.
    pub(crate) fn publish(&self, stats: &LoopStats) {
        let store = |cell: &AtomicU64, value: u64| cell.store(value, Ordering::Relaxed);
        store(&stats.deliveries, self.deliveries);
        store(&stats.accepted, self.accepted);
        store(&stats.bytes_written, self.bytes_written);
        store(&stats.slow_closes, self.slow_closes);
        store(&stats.heartbeats, self.heartbeats);
        store(&stats.accept_pauses, self.accept_pauses);
        store(&stats.turns, self.turns);
        store(&stats.turn_nanos, self.turn_nanos);
        for (cell, &value) in stats.turn_buckets.iter().zip(&self.turn_buckets) {
            store(cell, value);
        }
    }
}

/// Rare events, counted directly by whoever sees them.
pub(crate) struct Metrics {
    refusals: [AtomicU64; REFUSAL_STATUSES.len()],
    /// Connections refused at `max_connections`.
    pub refused_full: AtomicU64,
    /// Connections refused at `max_connections_per_ip`.
    pub refused_per_ip: AtomicU64,
    /// Connections refused at `max_publish_connections` on the publish listener.
    pub refused_publish_full: AtomicU64,
    /// Publishes refused for a missing or wrong token.
    pub auth_failures: AtomicU64,
}

impl Metrics {
    /// All zero.
    pub(crate) fn new() -> Self {
        Metrics {
            refusals: Default::default(),
            refused_full: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
            refused_publish_full: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
        }
    }

    /// Counts a refusal with `status`.
    pub(crate) fn count_refusal(&self, status: u16) {
        if let Some(index) = REFUSAL_STATUSES.iter().position(|&s| s == status) {
            self.refusals[index].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the rendering needs besides the per-loop stats.
pub(crate) struct Snapshot {
    /// Events accepted by the bus.
    pub events_published: u64,
    /// The connection limit in force.
    pub max_connections: u64,
    /// The bus's own counters.
    pub bus: crate::bus::BusStats,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders everything in the Prometheus text exposition format (version 0.0.4).
pub(crate) fn render(
    loops: &[std::sync::Arc<LoopStats>],
    metrics: &Metrics,
    snapshot: &Snapshot,
) -> String {
    let sum = |field: fn(&LoopStats) -> &AtomicU64| -> u64 {
        loops.iter().map(|l| field(l).load(Ordering::Relaxed)).sum()
    };
    let mut out = String::with_capacity(4096);
    let accept_pauses_help = format!(
        "Times an event loop stopped accepting at the hard ceiling ({} refused connections \
         still closing, or no file descriptors) until below the low-water mark.",
        crate::event_loop::LINGERING_MAX
    );
    let simple: [(&str, &str, &str, u64); 14] = [
        (
            "herald_connections",
            "gauge",
            "Open client connections.",
            sum(|l| &l.connections),
        ),
        (
            "herald_connections_max",
            "gauge",
            "The connection limit in force.",
            snapshot.max_connections,
        ),
        (
            "herald_connections_accepted_total",
            "counter",
            "Connections accepted.",
            sum(|l| &l.accepted),
        ),
        (
            "herald_subscribers",
            "gauge",
            "Open event streams.",
            sum(|l| &l.subscribers),
        ),
        (
            "herald_topics",
            "gauge",
            "Topics with subscribers or history, summed over event loops.",
            sum(|l| &l.topics),
        ),
        (
            "herald_events_published_total",
            "counter",
            "Events the bus handed to the event loops (with the Redis bus: stream entries this node read, from any publisher).",
            snapshot.events_published,
        ),
        (
            "herald_deliveries_total",
            "counter",
            "Events written in full to a subscriber.",
            sum(|l| &l.deliveries),
        ),
        (
            "herald_bytes_written_total",
            "counter",
            "Bytes written to clients.",
            sum(|l| &l.bytes_written),
        ),
        (
            "herald_slow_consumer_closes_total",
            "counter",
            "Streams closed for falling behind by more than max_lag_bytes or the history.",
            sum(|l| &l.slow_closes),
        ),
        (
            "herald_accept_pauses_total",
            "counter",
            &accept_pauses_help,
            sum(|l| &l.accept_pauses),
        ),
        (
            "herald_heartbeats_total",
            "counter",
            "Heartbeat comments sent to quiet streams.",
            sum(|l| &l.heartbeats),
        ),
        (
            "herald_auth_failures_total",
            "counter",
            "Requests refused for a missing, invalid or insufficient token (401 and 403 from tokens).",
            metrics.auth_failures.load(Ordering::Relaxed),
        ),
        (
            "herald_event_loops",
            "gauge",
            "Event loop threads.",
            loops.len() as u64,
        ),
        (
            "herald_log_lines_dropped_total",
            "counter",
            "Log lines dropped because stderr was blocked (queue full) or broken (write failed).",
            crate::logging::lines_dropped(),
        ),
    ];
    // Only a bus with a log (Redis) has these.
    let redis = snapshot.bus.connected.map(|connected| -> [(&str, &str, &str, u64); 6] {
        [
            (
                "herald_redis_connected",
                "gauge",
                "Whether this node's stream reader is connected to Redis (1) or retrying (0).",
                u64::from(connected),
            ),
            (
                "herald_redis_reconnects_total",
                "counter",
                "Times the stream reader connected again after losing Redis.",
                snapshot.bus.reconnects,
            ),
            (
                "herald_redis_entries_skipped_total",
                "counter",
                "Stream entries skipped as malformed (no valid topic, bad event name, non-UTF-8 or oversized data, unorderable id).",
                snapshot.bus.skipped,
            ),
            (
                "herald_redis_backfills_total",
                "counter",
                "Resumes served with events fetched from the stream (XRANGE).",
                snapshot.bus.backfills,
            ),
            (
                "herald_redis_holes_total",
                "counter",
                "Times the stream trimmed entries before this node read them (every stream was then told to resume, and gets the gap event). Raise --redis-maxlen if this moves.",
                snapshot.bus.holes,
            ),
            (
                "herald_redis_backfill_entries_scanned_total",
                "counter",
                "Stream entries read (XRANGE) to answer resumes, whether or not they were for the resume's topics.",
                snapshot.bus.backfill_scanned,
            ),
        ]
    });
    for (name, kind, help, value) in simple.into_iter().chain(redis.into_iter().flatten()) {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "herald_connections_refused_total",
        "counter",
        "Connections refused at admission, by reason.",
    );
    let _ = writeln!(
        out,
        "herald_connections_refused_total{{reason=\"max_connections\"}} {}",
        metrics.refused_full.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "herald_connections_refused_total{{reason=\"max_connections_per_ip\"}} {}",
        metrics.refused_per_ip.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "herald_connections_refused_total{{reason=\"max_publish_connections\"}} {}",
        metrics.refused_publish_full.load(Ordering::Relaxed)
    );
    family(
        &mut out,
        "herald_http_refusals_total",
        "counter",
        "Requests answered with an error, by status.",
    );
    for (status, cell) in REFUSAL_STATUSES.iter().zip(&metrics.refusals) {
        let _ = writeln!(
            out,
            "herald_http_refusals_total{{status=\"{status}\"}} {}",
            cell.load(Ordering::Relaxed)
        );
    }
    family(
        &mut out,
        "herald_loop_turn_seconds",
        "histogram",
        "Duration of event loop turns.",
    );
    let mut cumulative = 0;
    for (index, bound) in TURN_BUCKETS_US.iter().enumerate() {
        cumulative += loops
            .iter()
            .map(|l| l.turn_buckets[index].load(Ordering::Relaxed))
            .sum::<u64>();
        let _ = writeln!(
            out,
            "herald_loop_turn_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    let turns = sum(|l| &l.turns);
    let _ = writeln!(
        out,
        "herald_loop_turn_seconds_bucket{{le=\"+Inf\"}} {turns}"
    );
    let _ = writeln!(
        out,
        "herald_loop_turn_seconds_sum {}",
        sum(|l| &l.turn_nanos) as f64 / 1e9
    );
    let _ = writeln!(out, "herald_loop_turn_seconds_count {turns}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renders_prometheus_text() {
        let stats = Arc::new(LoopStats::default());
        let mut counters = LoopCounters {
            deliveries: 7,
            ..LoopCounters::default()
        };
        counters.record_turn(Duration::from_micros(80));
        counters.record_turn(Duration::from_secs(1));
        counters.publish(&stats);
        let metrics = Metrics::new();
        metrics.count_refusal(404);
        metrics.count_refusal(999); // Not a status herald sends: ignored.
        let text = render(
            &[stats],
            &metrics,
            &Snapshot {
                events_published: 3,
                max_connections: 10,
                bus: crate::bus::BusStats {
                    connected: Some(true),
                    reconnects: 2,
                    ..Default::default()
                },
            },
        );
        for line in [
            "herald_deliveries_total 7",
            "herald_events_published_total 3",
            "herald_redis_connected 1",
            "herald_redis_reconnects_total 2",
            "herald_http_refusals_total{status=\"404\"} 1",
            "herald_loop_turn_seconds_bucket{le=\"0.0001\"} 1",
            "herald_loop_turn_seconds_bucket{le=\"0.25\"} 1",
            "herald_loop_turn_seconds_bucket{le=\"+Inf\"} 2",
            "herald_loop_turn_seconds_count 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("herald_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
