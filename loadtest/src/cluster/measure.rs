//! The `cluster` run itself: the probes, the latency rounds, the rate search, the direct
//! XADD ceiling and the nodes' metrics, then the summary and the JSON file.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use testkit::redis::Client;

use super::checks::{merged, probe, problems, redis_metrics, PROBE_TIMEOUT};
use super::processes::Processes;
use super::settings::{latency_settings, left, search_settings};
use super::summary::write_summary;
use super::wire::get;
use super::{ClusterArgs, ClusterReport, LatencyRatio};
use crate::payload::PAYLOAD_BYTES_MIN;
use crate::report;
use crate::run;
use crate::xadd::{self, XaddPlan};

/// Runs the whole `cluster` measurement.
pub fn run(args: &ClusterArgs) -> io::Result<()> {
    if args.capacity {
        return crate::capacity::run(args);
    }
    let deadline = Instant::now() + Duration::from_secs(args.deadline_seconds);
    let mut out = io::stdout().lock();
    let procs = Processes::start(args)?;
    let embedded = procs.embedded_target()?;
    let cluster = procs.cluster_target()?;
    eprintln!(
        "redis {} at {} (pid {}); {} nodes at {:?}; embedded at {}",
        procs.redis.version,
        procs.redis.addr(),
        procs.redis.pid(),
        procs.nodes.len(),
        procs.node_addrs(),
        procs.embedded.addr
    );
    let mut result = ClusterReport {
        nodes: procs.nodes.len(),
        node_threads: args.node_threads,
        embedded_threads: args.threads,
        redis_version: procs.redis.version.clone(),
        stream: args.stream.clone(),
        ..ClusterReport::default()
    };
    let probe_until = (Instant::now() + PROBE_TIMEOUT).min(deadline);
    result.probes.push(probe(
        "embedded",
        &[procs.embedded.addr],
        false,
        probe_until,
    )?);
    result.probes.push(probe(
        &cluster.name,
        &procs.node_addrs(),
        true,
        probe_until,
    )?);

    for round in 0..args.rounds.max(1) {
        let cluster_first = round % 2 == 1;
        for is_cluster in [cluster_first, !cluster_first] {
            let settings = latency_settings(args, left(deadline)?);
            let r = run::measure(if is_cluster { &cluster } else { &embedded }, &settings)?;
            report::write_table(&mut out, &r)?;
            out.flush()?;
            result.problems.extend(problems(&r));
            if is_cluster {
                result.latency_cluster.push(r);
            } else {
                result.latency_embedded.push(r);
            }
            result.latency_settings = Some(settings);
        }
    }
    result.latency_embedded_merged = merged(&result.latency_embedded);
    result.latency_cluster_merged = merged(&result.latency_cluster);
    result.latency_ratio = LatencyRatio::of(
        &result.latency_cluster_merged,
        &result.latency_embedded_merged,
    );

    if !args.skip_search {
        if args.search_embedded {
            let r = run::measure(&embedded, &search_settings(args, left(deadline)?))?;
            report::write_table(&mut out, &r)?;
            out.flush()?;
            result.sustained_embedded_events_per_second = r.saturation_rate;
            result.search_embedded = Some(r);
        }
        let settings = search_settings(args, left(deadline)?);
        let r = run::measure(&cluster, &settings)?;
        report::write_table(&mut out, &r)?;
        out.flush()?;
        result.sustained_cluster_events_per_second = r.saturation_rate;
        result.search_cluster = Some(r);
        result.search_settings = Some(settings);
    }

    if !args.skip_ceiling {
        ceiling(args, &procs, deadline, &mut result);
    }
    for addr in procs.node_addrs() {
        result.node_metrics.push(match get(addr, "/metrics") {
            Ok((200, text)) => redis_metrics(&text),
            _ => BTreeMap::new(),
        });
    }
    write_summary(&mut out, args, &result)?;
    if let Some(path) = &args.json {
        report::write_json(path, &result)?;
    }
    drop(procs);
    super::verdict("the latency runs were", &result.problems)
}

/// The direct XADD runs: every (connections, depth) on a private stream, then the best
/// again on herald's stream with the nodes reading.
fn ceiling(args: &ClusterArgs, procs: &Processes, deadline: Instant, result: &mut ClusterReport) {
    let plan = |stream: &str, connections: usize, depth: usize| XaddPlan {
        port: procs.redis.port,
        stream: stream.to_owned(),
        topic: "loadtest-ceiling".to_owned(),
        connections: connections.clamp(1, 64),
        depth: depth.clamp(1, 4_096),
        duration: Duration::from_secs_f64(args.ceiling_seconds.clamp(0.05, 60.0)),
        payload_bytes: args.payload_bytes.max(PAYLOAD_BYTES_MIN),
        maxlen: args.redis_maxlen,
    };
    let private = format!("{}-ceiling", args.stream);
    for &connections in &args.ceiling_connections {
        for &depth in &args.ceiling_depths {
            if Instant::now() + plan("", 1, 1).duration >= deadline {
                return;
            }
            let run = xadd::xadd_bench(&plan(&private, connections, depth));
            eprintln!(
                "XADD {connections} connection(s) x depth {depth}: {:.0} entries/s",
                run.entries_per_second
            );
            result.ceiling.push(run);
        }
    }
    if let Ok(mut client) = Client::connect(procs.redis.port) {
        let _ = client.try_command::<()>(&[b"DEL", private.as_bytes()]);
    }
    let best = result
        .ceiling
        .iter()
        .filter(|r| r.errors + r.io_errors == 0)
        .max_by(|a, b| a.entries_per_second.total_cmp(&b.entries_per_second))
        .cloned();
    result.ceiling_entries_per_second = best.as_ref().map(|r| r.entries_per_second);
    if let Some(best) = best {
        if Instant::now() + plan("", 1, 1).duration < deadline {
            let run = xadd::xadd_bench(&plan(&args.stream, best.connections, best.depth));
            result.ceiling_with_readers = Some(run);
        }
    }
}
