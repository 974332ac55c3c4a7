//! Counters and gauges, and what `GET /metrics` renders from them: herald's families, the
//! standard `process_*` ones (`process.rs`) and `herald_build_info`, as Prometheus text
//! 0.0.4 or OpenMetrics 1.0.0, whichever the scraper asks for (`format.rs`,
//! `exposition.rs`).
//!
//! Hot counters (deliveries, bytes) are kept as plain integers by each loop and stored
//! into that loop's [`LoopStats`] once per turn; rare events (refusals, auth failures)
//! are counted straight into the shared [`Metrics`]. Everything else is read when a scrape
//! asks. Labels come from fixed sets only (no per-topic or per-client labels), so the
//! output's size is bounded.

mod exposition;
mod format;
mod process;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use exposition::{Family, Histogram, Kind, Label, Sample, Value};
pub(crate) use format::Format;

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
    /// Writes to streams that wrote bytes.
    pub stream_writes: AtomicU64,
    /// Streams closed for falling too far behind.
    pub slow_closes: AtomicU64,
    /// Heartbeat comments queued.
    pub heartbeats: AtomicU64,
    /// Times accepting paused at the hard ceiling.
    pub accept_pauses: AtomicU64,
    /// Times another loop wrote this loop's share of events while it slept.
    pub helps: AtomicU64,
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
    /// See [`LoopStats::stream_writes`].
    pub stream_writes: u64,
    /// See [`LoopStats::slow_closes`].
    pub slow_closes: u64,
    /// See [`LoopStats::heartbeats`].
    pub heartbeats: u64,
    /// See [`LoopStats::accept_pauses`].
    pub accept_pauses: u64,
    /// See [`LoopStats::helps`].
    pub helps: u64,
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
        store(&stats.stream_writes, self.stream_writes);
        store(&stats.slow_closes, self.slow_closes);
        store(&stats.heartbeats, self.heartbeats);
        store(&stats.accept_pauses, self.accept_pauses);
        store(&stats.helps, self.helps);
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
    /// The authorization pool's counters, when the application decides subscriptions.
    pub auth: Option<std::sync::Arc<crate::authorize::pool::PoolStats>>,
    /// Stream notices the `ObserveStreams` hook lost, when there is one.
    pub notices_dropped: Option<u64>,
}

/// Renders every family in `format`: the per-loop counters summed, the rare-event
/// counters, the bus's, the build and the process.
pub(crate) fn render(
    loops: &[std::sync::Arc<LoopStats>],
    metrics: &Metrics,
    snapshot: &Snapshot,
    format: Format,
) -> String {
    let mut families = herald_families(loops, metrics, snapshot);
    families.extend(process::families());
    match format {
        Format::Text => exposition::encode_text(&families),
        Format::OpenMetrics => exposition::encode_openmetrics(families),
    }
}

/// A family of one unlabeled sample.
fn single(
    name: &'static str,
    kind: SingleKind,
    help: impl Into<Cow<'static, str>>,
    value: u64,
) -> Family {
    let samples = vec![Sample::plain(Value::Int(value))];
    Family {
        name,
        help: help.into(),
        kind: match kind {
            SingleKind::Counter => Kind::Counter(samples),
            SingleKind::Gauge => Kind::Gauge(samples),
        },
    }
}

/// The kind of a [`single`] family.
#[derive(Clone, Copy)]
enum SingleKind {
    Counter,
    Gauge,
}

/// herald's own families, in the order they have always been rendered.
fn herald_families(
    loops: &[std::sync::Arc<LoopStats>],
    metrics: &Metrics,
    snapshot: &Snapshot,
) -> Vec<Family> {
    use SingleKind::{Counter, Gauge};
    let sum = |field: fn(&LoopStats) -> &AtomicU64| -> u64 {
        loops.iter().map(|l| field(l).load(Ordering::Relaxed)).sum()
    };
    let accept_pauses_help = format!(
        "Times an event loop stopped accepting at the hard ceiling ({} refused connections \
         still closing, or no file descriptors) until below the low-water mark.",
        crate::event_loop::LINGERING_MAX
    );
    let mut families = vec![
        single(
            "herald_connections",
            Gauge,
            "Open client connections.",
            sum(|l| &l.connections),
        ),
        single(
            "herald_connections_max",
            Gauge,
            "The connection limit in force.",
            snapshot.max_connections,
        ),
        single(
            "herald_connections_accepted_total",
            Counter,
            "Connections accepted.",
            sum(|l| &l.accepted),
        ),
        single(
            "herald_subscribers",
            Gauge,
            "Open event streams.",
            sum(|l| &l.subscribers),
        ),
        single(
            "herald_topics",
            Gauge,
            "Topics with subscribers or history, summed over event loops.",
            sum(|l| &l.topics),
        ),
        single(
            "herald_events_published_total",
            Counter,
            "Events the bus handed to the event loops (with the Redis bus: stream entries this node read, from any publisher).",
            snapshot.events_published,
        ),
        single(
            "herald_deliveries_total",
            Counter,
            "Events written in full to a subscriber.",
            sum(|l| &l.deliveries),
        ),
        single(
            "herald_bytes_written_total",
            Counter,
            "Bytes written to clients.",
            sum(|l| &l.bytes_written),
        ),
        single(
            "herald_stream_writes_total",
            Counter,
            "Writes to streams (send or sendmsg calls that wrote bytes); deliveries per write is how many events a write carried on average.",
            sum(|l| &l.stream_writes),
        ),
        single(
            "herald_slow_consumer_closes_total",
            Counter,
            "Streams closed for falling behind by more than max_lag_bytes or the history.",
            sum(|l| &l.slow_closes),
        ),
        single(
            "herald_accept_pauses_total",
            Counter,
            accept_pauses_help,
            sum(|l| &l.accept_pauses),
        ),
        single(
            "herald_loop_helps_total",
            Counter,
            "Times a loop wrote a sleeping loop's share of the events it had just published instead of waking it.",
            sum(|l| &l.helps),
        ),
        single(
            "herald_heartbeats_total",
            Counter,
            "Heartbeat comments sent to quiet streams.",
            sum(|l| &l.heartbeats),
        ),
        single(
            "herald_auth_failures_total",
            Counter,
            "Requests refused for a missing, invalid or insufficient token (401 and 403 from tokens).",
            metrics.auth_failures.load(Ordering::Relaxed),
        ),
        single(
            "herald_event_loops",
            Gauge,
            "Event loop threads.",
            loops.len() as u64,
        ),
        single(
            "herald_log_lines_dropped_total",
            Counter,
            "Log lines dropped because stderr was blocked (queue full) or broken (write failed).",
            crate::logging::lines_dropped(),
        ),
    ];
    // Only a bus with a log (Redis) has these.
    if let Some(connected) = snapshot.bus.connected {
        let bus = &snapshot.bus;
        families.extend([
            single(
                "herald_redis_connected",
                Gauge,
                "Whether this node's stream reader is connected to Redis (1) or retrying (0).",
                u64::from(connected),
            ),
            single(
                "herald_redis_reconnects_total",
                Counter,
                "Times the stream reader connected again after losing Redis.",
                bus.reconnects,
            ),
            single(
                "herald_redis_entries_skipped_total",
                Counter,
                "Stream entries skipped as malformed (no valid topic, bad event name, non-UTF-8 or oversized data, unorderable id).",
                bus.skipped,
            ),
            single(
                "herald_redis_backfills_total",
                Counter,
                "Resumes served with events fetched from the stream (XRANGE).",
                bus.backfills,
            ),
            single(
                "herald_redis_holes_total",
                Counter,
                "Times the stream trimmed entries before this node read them (every stream was then told to resume, and gets the gap event). Raise --redis-maxlen if this moves.",
                bus.holes,
            ),
            single(
                "herald_redis_backfill_entries_scanned_total",
                Counter,
                "Stream entries read (XRANGE) to answer resumes, whether or not they were for the resume's topics.",
                bus.backfill_scanned,
            ),
        ]);
    }
    let load = |cell: &AtomicU64| Value::Int(cell.load(Ordering::Relaxed));
    if let Some(auth) = &snapshot.auth {
        families.push(Family {
            name: "herald_auth_decisions_total",
            help: "Subscriptions the application decided (auth_url or the Authorize hook), by outcome: allowed, unauthorized (401), forbidden (403), unavailable (503: failed or too slow), busy (503: the queue was full, never asked).".into(),
            kind: Kind::Counter(vec![
                Sample::labeled("result", "allowed", load(&auth.allowed)),
                Sample::labeled("result", "unauthorized", load(&auth.unauthorized)),
                Sample::labeled("result", "forbidden", load(&auth.forbidden)),
                Sample::labeled("result", "unavailable", load(&auth.unavailable)),
                Sample::labeled("result", "busy", load(&auth.busy)),
            ]),
        });
        families.push(single(
            "herald_auth_cache_hits_total",
            SingleKind::Counter,
            "Decisions answered from the cache (auth_cache_ms) instead of a call.",
            auth.cached.load(Ordering::Relaxed),
        ));
    }
    if let Some(dropped) = snapshot.notices_dropped {
        families.push(single(
            "herald_stream_notices_dropped_total",
            SingleKind::Counter,
            "Stream open and close notices the ObserveStreams hook lost because it fell behind.",
            dropped,
        ));
    }
    families.push(Family {
        name: "herald_connections_refused_total",
        help: "Connections refused at admission, by reason.".into(),
        kind: Kind::Counter(vec![
            Sample::labeled("reason", "max_connections", load(&metrics.refused_full)),
            Sample::labeled(
                "reason",
                "max_connections_per_ip",
                load(&metrics.refused_per_ip),
            ),
            Sample::labeled(
                "reason",
                "max_publish_connections",
                load(&metrics.refused_publish_full),
            ),
        ]),
    });
    families.push(Family {
        name: "herald_http_refusals_total",
        help: "Requests answered with an error, by status.".into(),
        kind: Kind::Counter(
            REFUSAL_STATUSES
                .iter()
                .zip(&metrics.refusals)
                .map(|(status, cell)| Sample::labeled("status", status.to_string(), load(cell)))
                .collect(),
        ),
    });
    let bucket_sum = |index: usize| -> u64 {
        loops
            .iter()
            .map(|l| l.turn_buckets[index].load(Ordering::Relaxed))
            .sum()
    };
    families.push(Family {
        name: "herald_loop_turn_seconds",
        help: "Duration of event loop turns.".into(),
        kind: Kind::Histogram(Histogram {
            buckets: TURN_BUCKETS_US
                .iter()
                .enumerate()
                .map(|(index, &bound)| (bound as f64 / 1e6, bucket_sum(index)))
                .collect(),
            overflow: bucket_sum(TURN_BUCKETS_US.len()),
            sum: sum(|l| &l.turn_nanos) as f64 / 1e9,
        }),
    });
    families.push(Family {
        name: "herald_build_info",
        help: "The running herald's version; always 1.".into(),
        kind: Kind::Info(Label {
            name: "version",
            value: env!("CARGO_PKG_VERSION").into(),
        }),
    });
    families
}

#[cfg(test)]
mod tests;
