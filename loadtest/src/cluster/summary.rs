//! The printed summary of a `cluster` run: latency side by side with ratios, then the
//! publish rates, the XADD ceiling, the nodes' metrics and any problems.

use std::io::{self, Write};

use super::{ClusterArgs, ClusterReport};
use crate::report::Report;

fn cell(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}

/// The summary: latency side by side with ratios, then the publish rates.
pub(super) fn write_summary(
    out: &mut impl Write,
    args: &ClusterArgs,
    r: &ClusterReport,
) -> io::Result<()> {
    writeln!(
        out,
        "\ncluster: {} herald nodes (--bus redis, --threads {}) on redis {} stream {:?}, \
         vs one herald on the embedded bus (--threads {})",
        r.nodes, r.node_threads, r.redis_version, r.stream, r.embedded_threads
    )?;
    if let (Some(s), Some(c)) = (&r.latency_settings, r.latency_cluster.first()) {
        writeln!(
            out,
            "latency: fan-out to {} subscribers ({} per node), 1 topic, {} ev/s, {} events, \
             {} B, {} round(s)",
            s.subscribers,
            s.subscribers.div_ceil(r.nodes.max(1)),
            s.rate,
            s.events,
            s.payload_bytes,
            r.latency_cluster.len()
        )?;
        writeln!(
            out,
            "  {:<18} {:>12} {:>12} {:>10}",
            "", "embedded", c.target, "ratio"
        )?;
        let (e, c, q) = (
            &r.latency_embedded_merged,
            &r.latency_cluster_merged,
            &r.latency_ratio,
        );
        let rows = [
            ("p50 (ms)", e.p50_ms, c.p50_ms, q.p50),
            ("p90 (ms)", e.p90_ms, c.p90_ms, q.p90),
            ("p99 (ms)", e.p99_ms, c.p99_ms, q.p99),
            ("p99.9 (ms)", e.p999_ms, c.p999_ms, q.p999),
            ("max (ms)", e.max_ms, c.max_ms, q.max),
        ];
        for (label, ev, cv, q) in rows {
            writeln!(
                out,
                "  {label:<18} {:>12.2} {:>12.2} {:>10}",
                ev,
                cv,
                cell(q, 3)
            )?;
        }
        let pairs = r.latency_embedded.iter().zip(&r.latency_cluster);
        for (round, (e, c)) in pairs.enumerate() {
            writeln!(
                out,
                "  {:<18} {:>12} {:>12}",
                format!("round {round} p50/p99"),
                format!("{:.1}/{:.1}", e.latency.p50_ms, e.latency.p99_ms),
                format!("{:.1}/{:.1}", c.latency.p50_ms, c.latency.p99_ms),
            )?;
        }
        let sum = |rs: &[Report], f: fn(&Report) -> u64| rs.iter().map(f).sum::<u64>();
        for (label, f) in [
            ("received", (|x: &Report| x.received) as fn(&Report) -> u64),
            ("lost", |x: &Report| x.lost),
            ("duplicated", |x: &Report| x.duplicated),
        ] {
            writeln!(
                out,
                "  {label:<18} {:>12} {:>12}",
                sum(&r.latency_embedded, f),
                sum(&r.latency_cluster, f)
            )?;
        }
    }
    if let Some(s) = &r.search_settings {
        writeln!(
            out,
            "publish rate: ladder x{} from {} ev/s, {} s steps, {} topics, {} connections over \
             the nodes, {} subscribers; a step passes with no loss, duplicate or refusal, 90 % \
             of its rate and p99 <= {} ms",
            s.step_factor,
            s.rate,
            args.search_step_seconds,
            s.topics,
            s.publishers,
            s.subscribers,
            s.p99_limit_ms
        )?;
        let rate = |v: Option<f64>| match v {
            Some(v) => format!("{v:.0} ev/s"),
            None => format!("< {} ev/s", s.rate),
        };
        if r.search_embedded.is_some() {
            writeln!(
                out,
                "  {:<44} {:>14}",
                "herald, one embedded node",
                rate(r.sustained_embedded_events_per_second)
            )?;
        }
        writeln!(
            out,
            "  {:<44} {:>14}",
            format!("herald, {} nodes on one redis stream", r.nodes),
            rate(r.sustained_cluster_events_per_second)
        )?;
    }
    for x in &r.ceiling {
        writeln!(
            out,
            "  {:<44} {:>14}",
            format!(
                "XADD direct, {} conn x depth {}{}",
                x.connections,
                x.depth,
                if x.errors + x.io_errors > 0 {
                    " (errors)"
                } else {
                    ""
                }
            ),
            format!("{:.0} /s", x.entries_per_second)
        )?;
    }
    if let Some(x) = &r.ceiling_with_readers {
        writeln!(
            out,
            "  {:<44} {:>14}",
            format!(
                "XADD, {} conn x depth {}, {} nodes reading",
                x.connections, x.depth, r.nodes
            ),
            format!("{:.0} /s", x.entries_per_second)
        )?;
    }
    for (n, m) in r.node_metrics.iter().enumerate() {
        let pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "  node {n}: {}", pairs.join(" "))?;
    }
    for p in &r.problems {
        writeln!(out, "  PROBLEM: {p}")?;
    }
    Ok(())
}
