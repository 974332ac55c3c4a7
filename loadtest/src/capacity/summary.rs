//! The printed summary of a `cluster --capacity` run: its settings, one row per node,
//! Redis, and the whole run.

use std::io::{self, Write};

use super::CapacityReport;
use crate::protocol::SOCKETS_PER_WORKER_MAX;

fn bytes(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

fn mib(v: u64) -> String {
    format!("{:.1}", v as f64 / (1024.0 * 1024.0))
}

/// The summary: the run's settings, one row per node, Redis, and the whole run.
pub(super) fn write_summary(out: &mut impl Write, r: &CapacityReport) -> io::Result<()> {
    let (rate, payload_bytes) = r
        .settings
        .as_ref()
        .map_or((0.0, 0), |s| (s.rate, s.payload_bytes));
    writeln!(
        out,
        "\ncapacity: {} subscribers on {} herald nodes (--bus redis, --threads {}, \
         --max-connections {}) on redis {} stream {:?}; {} workers (<= {} sockets each), \
         {} source addresses",
        r.subscribers,
        r.nodes,
        r.node_threads,
        r.node_max_connections,
        r.redis_version,
        r.stream,
        r.workers,
        SOCKETS_PER_WORKER_MAX,
        r.source_addresses
    )?;
    writeln!(
        out,
        "fan-out: 1 topic, published through node 0, {} ev/s, {} events, {} B payload; \
         window {:.1} s",
        rate, r.run.events, payload_bytes, r.window_seconds
    )?;
    writeln!(
        out,
        "  {:<5} {:>7} {:>9} {:>9} {:>9} {:>10} {:>7} {:>9} {:>11} {:>11} {:>4} p50/p90/p99/p99.9/max ms",
        "node",
        "subs",
        "RSS MiB",
        "anon MiB",
        "RSS B/sub",
        "anon B/sub",
        "CPU s",
        "us/deliv",
        "expected",
        "received",
        "dup"
    )?;
    for (n, f) in r.per_node.iter().enumerate() {
        let l = &f.latency;
        writeln!(
            out,
            "  {:<5} {:>7} {:>9} {:>9} {:>9} {:>10} {:>7.2} {:>9} {:>11} {:>11} {:>4} \
             {:.1}/{:.1}/{:.1}/{:.1}/{:.1}",
            n,
            f.subscribers,
            mib(f.memory_connected.rss_bytes),
            mib(f.memory_connected.anon_bytes),
            bytes(f.rss_per_subscriber_bytes),
            bytes(f.anon_per_subscriber_bytes),
            f.cpu_seconds,
            f.cpu_us_per_delivery
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
            f.expected,
            f.received,
            f.duplicated,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms
        )?;
    }
    let x = &r.redis;
    writeln!(
        out,
        "  redis: used_memory {} / {} / {} MiB (idle / connected / after), RSS {} MiB, \
         stream {} -> {} entries, {} -> {} B ({} B per entry), CPU {:.2} s ({:.1} % of a \
         core)",
        mib(x.used_memory_idle),
        mib(x.used_memory_connected),
        mib(x.used_memory_after),
        mib(x.rss_after),
        x.stream_length_before,
        x.stream_length_after,
        x.stream_bytes_before,
        x.stream_bytes_after,
        bytes(x.bytes_per_entry),
        x.cpu_seconds,
        100.0 * x.cpu_share
    )?;
    writeln!(
        out,
        "  kernel, whole machine, both ends of each loopback socket: slab {} B and TCP \
         buffers {} B per subscriber after connecting",
        bytes(r.kernel_slab_per_subscriber_bytes),
        bytes(r.run.kernel_tcp_per_connection_bytes)
    )?;
    let l = &r.run.latency;
    writeln!(
        out,
        "  all: connected {} of {} in {:.1} s; latency p50 {:.1} p90 {:.1} p99 {:.1} \
         p99.9 {:.1} max {:.1} ms; expected {} received {} lost {} duplicated {}; \
         publishes {} accepted, {} refused",
        r.run.connected,
        r.subscribers,
        r.run.connect_seconds,
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        r.run.expected,
        r.run.received,
        r.run.lost,
        r.run.duplicated,
        r.run.publish.accepted,
        r.run.publish.refused
    )?;
    writeln!(
        out,
        "  CPU over the window: nodes + redis {:.2} s ({} s per million deliveries), load \
         generator (workers + publisher) {:.2} s",
        r.run.server_cpu_seconds,
        r.run
            .server_cpu_seconds_per_million
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
        r.run.client_cpu_seconds
    )?;
    for p in &r.problems {
        writeln!(out, "  PROBLEM: {p}")?;
    }
    Ok(())
}
