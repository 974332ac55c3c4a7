//! Results: the [`Report`] of one scenario against one target, the arithmetic behind its
//! derived figures (expected deliveries, loss, per-connection memory, CPU per million
//! deliveries), and the text tables: one target, or herald beside nchan with ratios.
//!
//! Pure: no I/O except the `Write` the tables go to.

use std::io::{self, Write};

use serde::Serialize;

use crate::latency::{Buckets, Summary};
use crate::procfs::Memory;
use crate::protocol::Failures;
use crate::publisher::PublishStats;

/// One step of the saturation ladder.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Step {
    /// Rate asked for, events per second.
    pub rate: f64,
    /// Rate the publisher achieved.
    pub achieved_rate: f64,
    /// Deliveries expected in the step.
    pub expected: u64,
    /// Deliveries received.
    pub received: u64,
    /// Deliveries missing.
    pub lost: u64,
    /// Deliveries repeated.
    pub duplicated: u64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Whether the step met every bar.
    pub passed: bool,
}

/// Everything measured in one scenario against one target.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The target's label.
    pub target: String,
    /// The scenario's name.
    pub scenario: String,
    /// Subscribers asked for.
    pub subscribers: usize,
    /// Topics.
    pub topics: usize,
    /// Worker processes.
    pub workers: usize,
    /// Subscriptions that opened.
    pub connected: u64,
    /// Subscriptions that failed, by kind.
    pub failures: Failures,
    /// Time to open every subscription (the slowest worker).
    pub connect_seconds: f64,
    /// Connect-to-head latency.
    pub connect_latency: Summary,
    /// Server memory before connecting.
    pub memory_before: Memory,
    /// Server memory with every subscription open and idle.
    pub memory_after: Memory,
    /// `VmRSS` growth per open subscription.
    pub rss_per_connection_bytes: Option<f64>,
    /// `RssAnon` growth per open subscription.
    pub anon_per_connection_bytes: Option<f64>,
    /// Kernel TCP memory growth per subscription (both ends of each connection).
    pub kernel_tcp_per_connection_bytes: Option<f64>,
    /// Events published (all phases).
    pub events: u64,
    /// Payload size.
    pub payload_bytes: usize,
    /// Rate asked for (the last step for saturation).
    pub rate: f64,
    /// What the publisher did.
    pub publish: PublishStats,
    /// Deliveries expected: every event to every opened subscriber of its topic.
    pub expected: u64,
    /// Deliveries received once.
    pub received: u64,
    /// Deliveries missing.
    pub lost: u64,
    /// Deliveries received again.
    pub duplicated: u64,
    /// Jumps over missing sequence numbers.
    pub gaps: u64,
    /// Events that were not loadtest payloads (gap notices and the like).
    pub foreign: u64,
    /// Streams the server closed.
    pub disconnects: u64,
    /// Streams reopened with Last-Event-ID.
    pub reconnects: u64,
    /// Where every lost delivery went (see [`Loss`]).
    pub loss: Loss,
    /// Deliveries per second over the publishing window.
    pub deliveries_per_second: f64,
    /// Delivery latency.
    pub latency: Summary,
    /// The latency histogram itself, for merging runs (not written to JSON).
    #[serde(skip)]
    pub latency_buckets: Buckets,
    /// Server CPU seconds over the publishing window.
    pub server_cpu_seconds: f64,
    /// Of `server_cpu_seconds`, the kernel-mode part (`stime`).
    pub server_system_seconds: f64,
    /// Server CPU seconds per million deliveries.
    pub server_cpu_seconds_per_million: Option<f64>,
    /// Load generator CPU seconds (workers and orchestrator) over the publishing window.
    pub client_cpu_seconds: f64,
    /// `read` calls the workers made on subscriber sockets while publishing and draining
    /// (those answered `WouldBlock` included): how many wake-ups the deliveries cost them.
    pub subscriber_reads: u64,
    /// The fewest times per second of the publishing window that any subscriber worker's
    /// reading thread blocked for lack of input. Near zero, that worker never caught up:
    /// the latency it measured includes its own backlog, and the load generator (not the
    /// server) may be what sets it; give it more workers (`--per-worker`).
    pub worker_waits_per_second: Option<f64>,
    /// Highest passing rate of the saturation ladder, events per second.
    pub saturation_rate: Option<f64>,
    /// The ladder's steps.
    pub steps: Vec<Step>,
    /// Each worker's share, by worker index, over every phase.
    pub by_worker: Vec<WorkerShare>,
}

/// What one worker process received over a run (its subscribers are on one node).
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerShare {
    /// Events received for the first time.
    pub received: u64,
    /// Events repeated.
    pub duplicated: u64,
    /// Jumps in sequence.
    pub gaps: u64,
    /// Delivery latency of this worker's subscribers.
    pub latency: Summary,
    /// The same as a histogram, to merge the workers of one node.
    #[serde(skip)]
    pub latency_buckets: Buckets,
}

/// The lost deliveries, event by event, by what explains each: the server announced it
/// with a gap notice (history could not serve the resume: not silent), the subscriber had
/// no id to resume from, nothing did, or it had not arrived when the workers were asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Loss {
    /// Skipped right after a gap notice.
    pub announced: u64,
    /// Skipped at the start of a stream opened without a Last-Event-ID.
    pub unanchored: u64,
    /// Skipped with no gap notice on a stream that resumed from an id.
    pub silent: u64,
    /// Not yet delivered on an open stream at collection.
    pub tail_streaming: u64,
    /// Not yet delivered to a subscriber between streams at collection.
    pub tail_reconnecting: u64,
    /// Lost deliveries none of the above accounts for (0 unless the counting is wrong).
    pub unexplained: u64,
    /// Gap notices received.
    pub gap_notices: u64,
    /// Gap notices with no hole after them: history could have served the resume.
    pub gap_notices_spurious: u64,
    /// Gap notices whose hole history held when the stream opened (checked only when the
    /// run was told the server's history depth).
    pub gap_notices_unfounded: u64,
    /// Announced holes checked against the history depth.
    pub gap_notices_checked: u64,
}

impl Loss {
    /// The breakdown of `lost` deliveries from the workers' counters.
    pub fn of(lost: u64, d: &crate::protocol::Deliveries) -> Loss {
        Loss {
            announced: d.missed_announced,
            unanchored: d.missed_unanchored,
            silent: d.missed_silent,
            tail_streaming: d.tail_streaming,
            tail_reconnecting: d.tail_reconnecting,
            unexplained: lost.saturating_sub(d.missed()),
            gap_notices: d.gap_notices,
            gap_notices_spurious: d.gap_notices_spurious,
            gap_notices_unfounded: d.gap_notices_unfounded,
            gap_notices_checked: d.gap_notices_checked,
        }
    }

    /// Adds another phase's breakdown.
    pub fn add(&mut self, o: &Loss) {
        self.announced += o.announced;
        self.unanchored += o.unanchored;
        self.silent += o.silent;
        self.tail_streaming += o.tail_streaming;
        self.tail_reconnecting += o.tail_reconnecting;
        self.unexplained += o.unexplained;
        self.gap_notices += o.gap_notices;
        self.gap_notices_spurious += o.gap_notices_spurious;
        self.gap_notices_unfounded += o.gap_notices_unfounded;
        self.gap_notices_checked += o.gap_notices_checked;
    }

    /// Lost deliveries that no gap notice announced: what "nothing lost" must find zero.
    pub fn unannounced(&self) -> u64 {
        self.unanchored
            + self.silent
            + self.tail_streaming
            + self.tail_reconnecting
            + self.unexplained
    }
}

/// Why a run does not prove that nothing was lost, or `None` when it does: every expected
/// delivery arrived once or was announced by a gap notice that was not spurious.
pub fn zero_loss_failure(r: &Report) -> Option<String> {
    let l = &r.loss;
    let mut why = Vec::new();
    if l.unannounced() > 0 {
        why.push(format!(
            "{} deliveries lost without a gap notice (unanchored {}, silent {}, tail on open streams {}, tail between streams {}, unexplained {})",
            l.unannounced(),
            l.unanchored,
            l.silent,
            l.tail_streaming,
            l.tail_reconnecting,
            l.unexplained
        ));
    }
    if l.gap_notices_spurious > 0 {
        why.push(format!(
            "{} gap notices with nothing missing after them",
            l.gap_notices_spurious
        ));
    }
    if l.gap_notices_unfounded > 0 {
        why.push(format!(
            "{} gap notices over holes that history still held",
            l.gap_notices_unfounded
        ));
    }
    if r.duplicated > 0 {
        why.push(format!("{} duplicated deliveries", r.duplicated));
    }
    if r.failures.total() > 0 {
        why.push(format!(
            "{} subscriptions failed to open",
            r.failures.total()
        ));
    }
    if r.publish.refused + r.publish.io_errors > 0 || r.publish.accepted < r.events {
        why.push(format!(
            "{} of {} publishes accepted",
            r.publish.accepted, r.events
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Events of `total` (numbered from 0, event k on topic k % topics) that fall on topic `t`.
pub fn events_on_topic(total: u64, topics: usize, t: usize) -> u64 {
    let topics = topics.max(1) as u64;
    total / topics + u64::from((t as u64) < total % topics)
}

/// Deliveries owed for events `first..first + count` given the subscribers per topic.
pub fn expected_deliveries(subscribers_per_topic: &[u64], first: u64, count: u64) -> u64 {
    let topics = subscribers_per_topic.len();
    subscribers_per_topic
        .iter()
        .enumerate()
        .map(|(t, &subs)| {
            let events =
                events_on_topic(first + count, topics, t) - events_on_topic(first, topics, t);
            subs * events
        })
        .sum()
}

/// Opened subscribers per topic: subscriber i is on topic i % topics.
pub fn subscribers_per_topic(subscribers: usize, topics: usize, failed: &[usize]) -> Vec<u64> {
    let topics = topics.max(1);
    let mut per: Vec<u64> = (0..topics)
        .map(|t| events_on_topic(subscribers as u64, topics, t))
        .collect();
    for &i in failed {
        per[i % topics] -= 1;
    }
    per
}

/// Deliveries that never arrived.
pub fn lost(expected: u64, received: u64) -> u64 {
    expected.saturating_sub(received)
}

/// Writes `value` as pretty JSON (and a final newline) to `path`: what every `--json`
/// writes.
pub fn write_json(path: &std::path::Path, value: &impl Serialize) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// CPU seconds per million deliveries; `None` when nothing was delivered.
pub fn per_million(cpu_seconds: f64, deliveries: u64) -> Option<f64> {
    (deliveries > 0).then(|| cpu_seconds * 1e6 / deliveries as f64)
}

/// Growth from `before` to `after` per connection; `None` without connections.
pub fn per_connection(before: u64, after: u64, connections: u64) -> Option<f64> {
    (connections > 0).then(|| (after as f64 - before as f64) / connections as f64)
}

/// `a / b`, `None` when either is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// One printed row: a label and how to read its value from a report.
struct Metric {
    label: &'static str,
    value: fn(&Report) -> Option<f64>,
    decimals: usize,
}

const fn metric(label: &'static str, value: fn(&Report) -> Option<f64>, decimals: usize) -> Metric {
    Metric {
        label,
        value,
        decimals,
    }
}

/// Every row of the tables, in order.
const METRICS: &[Metric] = &[
    metric("subscribers opened", |r| Some(r.connected as f64), 0),
    metric("subscribe failures", |r| Some(r.failures.total() as f64), 0),
    metric(
        "  by status (highest)",
        |r| (r.failures.status > 0).then_some(r.failures.status_seen as f64),
        0,
    ),
    metric("connect time (s)", |r| Some(r.connect_seconds), 2),
    metric("connect p99 (ms)", |r| Some(r.connect_latency.p99_ms), 2),
    metric("server RSS / conn (B)", |r| r.rss_per_connection_bytes, 0),
    metric("server anon / conn (B)", |r| r.anon_per_connection_bytes, 0),
    metric(
        "kernel TCP / conn (B)",
        |r| r.kernel_tcp_per_connection_bytes,
        0,
    ),
    metric("events published", |r| Some(r.events as f64), 0),
    metric(
        "publish rate (ev/s)",
        |r| Some(r.publish.achieved_rate()),
        0,
    ),
    metric("expected deliveries", |r| Some(r.expected as f64), 0),
    metric("received", |r| Some(r.received as f64), 0),
    metric("lost", |r| Some(r.lost as f64), 0),
    metric("  announced (gap)", |r| Some(r.loss.announced as f64), 0),
    metric(
        "  unanchored (no id)",
        |r| Some(r.loss.unanchored as f64),
        0,
    ),
    metric("  silent", |r| Some(r.loss.silent as f64), 0),
    metric(
        "  tail, open stream",
        |r| Some(r.loss.tail_streaming as f64),
        0,
    ),
    metric(
        "  tail, between streams",
        |r| Some(r.loss.tail_reconnecting as f64),
        0,
    ),
    metric("  unexplained", |r| Some(r.loss.unexplained as f64), 0),
    metric("gap notices", |r| Some(r.loss.gap_notices as f64), 0),
    metric(
        "  spurious",
        |r| Some(r.loss.gap_notices_spurious as f64),
        0,
    ),
    metric(
        "  checked vs history",
        |r| Some(r.loss.gap_notices_checked as f64),
        0,
    ),
    metric(
        "  unfounded",
        |r| Some(r.loss.gap_notices_unfounded as f64),
        0,
    ),
    metric("duplicated", |r| Some(r.duplicated as f64), 0),
    metric("reconnects", |r| Some(r.reconnects as f64), 0),
    metric("deliveries / s", |r| Some(r.deliveries_per_second), 0),
    metric("latency p50 (ms)", |r| Some(r.latency.p50_ms), 2),
    metric("latency p90 (ms)", |r| Some(r.latency.p90_ms), 2),
    metric("latency p99 (ms)", |r| Some(r.latency.p99_ms), 2),
    metric("latency p99.9 (ms)", |r| Some(r.latency.p999_ms), 2),
    metric("latency max (ms)", |r| Some(r.latency.max_ms), 2),
    metric("server CPU (s)", |r| Some(r.server_cpu_seconds), 2),
    metric(
        "  user (s)",
        |r| Some(r.server_cpu_seconds - r.server_system_seconds),
        2,
    ),
    metric("  system (s)", |r| Some(r.server_system_seconds), 2),
    metric(
        "server CPU s / M deliv",
        |r| r.server_cpu_seconds_per_million,
        3,
    ),
    metric("client CPU (s)", |r| Some(r.client_cpu_seconds), 2),
    metric("subscriber reads", |r| Some(r.subscriber_reads as f64), 0),
    metric(
        "  per delivery",
        |r| (r.received > 0).then(|| r.subscriber_reads as f64 / r.received as f64),
        3,
    ),
    metric("worker waits / s (min)", |r| r.worker_waits_per_second, 1),
    metric("saturation (ev/s)", |r| r.saturation_rate, 0),
];

fn cell(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}

/// The table of one report.
pub fn write_table(out: &mut impl Write, r: &Report) -> io::Result<()> {
    writeln!(
        out,
        "{} / {}: {} subscribers, {} topics, {} B payloads, {} worker(s)",
        r.target, r.scenario, r.subscribers, r.topics, r.payload_bytes, r.workers
    )?;
    for m in METRICS {
        writeln!(
            out,
            "  {:<24} {:>14}",
            m.label,
            cell((m.value)(r), m.decimals)
        )?;
    }
    for s in &r.steps {
        writeln!(
            out,
            "  step {:>9.0} ev/s: achieved {:>9.0}, lost {}, dup {}, p99 {:.2} ms, {}",
            s.rate,
            s.achieved_rate,
            s.lost,
            s.duplicated,
            s.p99_ms,
            if s.passed { "pass" } else { "FAIL" }
        )?;
    }
    if let Some(note) = saturated_worker_note(r) {
        writeln!(out, "  {note}")?;
    }
    Ok(())
}

/// Fewer blocking waits per second than this in some worker: it never caught up.
const WORKER_WAITS_PER_SECOND_MIN: f64 = 1.0;

/// A warning when a subscriber worker never caught up with its sockets (see
/// [`Report::worker_waits_per_second`]).
pub fn saturated_worker_note(r: &Report) -> Option<String> {
    let waits = r.worker_waits_per_second?;
    (waits < WORKER_WAITS_PER_SECOND_MIN).then(|| {
        format!(
            "note: a subscriber worker never caught up ({waits:.1} waits/s): its own backlog is \
             in the latency; split the subscribers over more workers with --per-worker"
        )
    })
}

/// herald beside nchan, with herald/nchan ratios.
pub fn write_comparison(out: &mut impl Write, herald: &Report, nchan: &Report) -> io::Result<()> {
    writeln!(
        out,
        "{}: {} subscribers, {} topics, {} B payloads",
        herald.scenario, herald.subscribers, herald.topics, herald.payload_bytes
    )?;
    writeln!(
        out,
        "  {:<24} {:>14} {:>14} {:>12}",
        "metric", herald.target, nchan.target, "ratio h/n"
    )?;
    for m in METRICS {
        let (h, n) = ((m.value)(herald), (m.value)(nchan));
        writeln!(
            out,
            "  {:<24} {:>14} {:>14} {:>12}",
            m.label,
            cell(h, m.decimals),
            cell(n, m.decimals),
            cell(ratio(h, n), 3)
        )?;
    }
    for r in [herald, nchan] {
        if let Some(note) = saturated_worker_note(r) {
            writeln!(out, "  {}: {note}", r.target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
