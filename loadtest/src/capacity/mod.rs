//! `cluster --capacity` (issue 15, point 5): how many subscribers several herald nodes on
//! one Redis stream hold, and what each costs.
//!
//! It starts a private redis-server and `--nodes` herald nodes on one stream (each with a
//! `--max-connections` that fits its share), no embedded peer, no rate search and no
//! ceiling. After the probe, one fan-out run: `--subscribers` spread over worker processes
//! (at most [`SOCKETS_PER_WORKER_MAX`] sockets each, a multiple of the node count, worker
//! `w` on node `w % nodes`, source addresses 127.0.0.2, 127.0.0.3, ...), one topic
//! published through node 0 at `--rate` for `--duration`. Around it, each node and Redis
//! are read apart:
//!
//! - each node's `VmRSS` and `RssAnon` before the workers start and once every
//!   subscription is open: growth / the node's subscribers is its user-space memory per
//!   subscriber;
//! - Redis `INFO memory` (`used_memory`) idle, connected and after publishing, and the
//!   stream's length;
//! - CPU (`utime + stime` from `/proc/PID/stat`) of each node and of redis-server over the
//!   publishing window (first publish to the end of the drain);
//! - publish-to-delivery latency percentiles, over all subscribers and per node;
//! - loss: every node's subscribers must receive every event exactly once; any loss,
//!   repeat, gap, failed subscription or refused publish fails the run.
//!
//! Every process started here stops when this returns (nodes by their handles, redis by
//! its pid).
//!
//! This module holds the run and its report types; the printed summary is in `summary`
//! and the unit tests in `tests`.
//!
//! [`SOCKETS_PER_WORKER_MAX`]: crate::protocol::SOCKETS_PER_WORKER_MAX

mod summary;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use testkit::redis::{info_field, Client, RedisServer};

use crate::cluster::{self, ClusterArgs, Probe};
use crate::latency::{self, Summary};
use crate::peers::Spawned;
use crate::procfs::{self, Memory};
use crate::report::{self, Report};
use crate::run::{self, Stage};
use crate::scenario::Settings;
use crate::target::{Preset, Target};
use summary::write_summary;

/// herald's own file descriptors besides connections (its `FDS_RESERVED`), kept free
/// under the open-file limit.
const NODE_FDS_RESERVED: usize = 64;

/// Connections a node accepts beyond its share of subscribers (probe, metrics, publish).
const NODE_CONNECTIONS_SPARE: usize = 64;

/// Everything one capacity run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CapacityReport {
    /// herald nodes on the Redis bus.
    pub nodes: usize,
    /// Event loop threads of each node.
    pub node_threads: usize,
    /// `--max-connections` of each node.
    pub node_max_connections: usize,
    /// redis-server's version.
    pub redis_version: String,
    /// The stream.
    pub stream: String,
    /// Subscribers asked for.
    pub subscribers: usize,
    /// Subscriber worker processes.
    pub workers: usize,
    /// Source addresses the subscribers were spread over.
    pub source_addresses: usize,
    /// The probe through the cluster.
    pub probe: Probe,
    /// The run's settings.
    pub settings: Option<Settings>,
    /// Each node's figures, node 0 first.
    pub per_node: Vec<NodeFigures>,
    /// redis-server's figures.
    pub redis: RedisFigures,
    /// Publishing window (first publish to the end of the drain), seconds.
    pub window_seconds: f64,
    /// Growth of the kernel's slab memory (`/proc/meminfo` `Slab:`, the whole machine)
    /// from before the workers started to every subscription open, per subscriber: both
    /// ends of each loopback socket, so about twice what a server's side costs.
    pub kernel_slab_per_subscriber_bytes: Option<f64>,
    /// The whole run (latency over all subscribers, loss, publish counters).
    pub run: Report,
    /// What was wrong (empty when clean).
    pub problems: Vec<String>,
}

/// One node's share and what it cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeFigures {
    /// Where it listens.
    pub addr: String,
    /// Its pid.
    pub pid: u32,
    /// Subscribers opened on it.
    pub subscribers: u64,
    /// Memory before the workers started.
    pub memory_idle: Memory,
    /// Memory with every subscription open.
    pub memory_connected: Memory,
    /// `VmRSS` growth / subscribers, bytes.
    pub rss_per_subscriber_bytes: Option<f64>,
    /// `RssAnon` growth / subscribers, bytes.
    pub anon_per_subscriber_bytes: Option<f64>,
    /// CPU seconds over the publishing window.
    pub cpu_seconds: f64,
    /// CPU microseconds per delivery made by this node.
    pub cpu_us_per_delivery: Option<f64>,
    /// Deliveries owed to its subscribers (events x subscribers).
    pub expected: u64,
    /// Deliveries received by its subscribers.
    pub received: u64,
    /// Repeats among them.
    pub duplicated: u64,
    /// Jumps in sequence.
    pub gaps: u64,
    /// Latency of its subscribers.
    pub latency: Summary,
}

/// redis-server, read apart from the nodes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RedisFigures {
    /// Its pid.
    pub pid: u32,
    /// `used_memory` before the workers started.
    pub used_memory_idle: u64,
    /// `used_memory` with every subscription open.
    pub used_memory_connected: u64,
    /// `used_memory` after publishing.
    pub used_memory_after: u64,
    /// Its `VmRSS` after publishing.
    pub rss_after: u64,
    /// Stream length before and after publishing.
    pub stream_length_before: u64,
    /// Stream length after publishing.
    pub stream_length_after: u64,
    /// CPU seconds over the publishing window.
    pub cpu_seconds: f64,
    /// Of a core, over the window.
    pub cpu_share: f64,
    /// The stream key's bytes (`MEMORY USAGE`) before publishing.
    pub stream_bytes_before: u64,
    /// The stream key's bytes after publishing.
    pub stream_bytes_after: u64,
    /// The stream key's growth per entry added while publishing, bytes.
    pub bytes_per_entry: Option<f64>,
}

/// What the observer reads at each stage, kept until the report is built.
#[derive(Default)]
struct Readings {
    memory_idle: Vec<Memory>,
    memory_connected: Vec<Memory>,
    cpu_start: Vec<f64>,
    cpu_end: Vec<f64>,
    redis_cpu_start: f64,
    redis_cpu_end: f64,
    started: Option<Instant>,
    window_seconds: f64,
    used_memory: [u64; 3],
    slab: [u64; 2],
    stream_length: [u64; 2],
    stream_bytes: [u64; 2],
}

/// The processes of one capacity run; all stop when it is dropped (nodes first).
struct Processes {
    nodes: Vec<Spawned>,
    redis: RedisServer,
}

impl Processes {
    fn start(args: &ClusterArgs, max_connections: usize) -> io::Result<Processes> {
        let extra = ["--max-connections".to_owned(), max_connections.to_string()];
        let (redis, nodes) = cluster::start_redis_nodes(args, "loadtest-capacity", &extra)?;
        Ok(Processes { nodes, redis })
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(Spawned::pid).collect()
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }
}

/// Subscribers each node gets: the worker split of [`run::worker_specs`], worker `w` on
/// node `w % nodes`.
pub fn per_node_subscribers(target: &Target, settings: &Settings, nodes: usize) -> Vec<u64> {
    let nodes = nodes.max(1);
    let mut counts = vec![0u64; nodes];
    for spec in run::worker_specs(target, settings, "", 0) {
        counts[spec.index % nodes] += spec.count as u64;
    }
    counts
}

/// `--max-connections` for each node: the flag, or the largest share plus a spare;
/// an error when that does not fit under the open-file limit.
pub fn node_max_connections(
    asked: usize,
    largest_share: u64,
    open_files: usize,
) -> Result<usize, String> {
    let ceiling = open_files.saturating_sub(NODE_FDS_RESERVED);
    let want = if asked == 0 {
        largest_share as usize + NODE_CONNECTIONS_SPARE
    } else {
        asked
    };
    if (want as u64) < largest_share + 1 {
        return Err(format!(
            "--node-max-connections {want} is below a node's share of {largest_share} \
             subscribers plus the probe"
        ));
    }
    if want > ceiling {
        return Err(format!(
            "a node would need {want} connections, over its ceiling of {ceiling} \
             ({open_files} open files): add nodes"
        ));
    }
    Ok(want)
}

/// The soft open-file limit of this process (the nodes inherit it and raise it to the
/// hard one, which this reads).
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            let hard = line.split_whitespace().nth(4)?;
            hard.parse().ok()
        })
        .unwrap_or(1_024)
}

/// `used_memory` of `INFO memory`, the stream's length, and the stream key's own bytes
/// (`MEMORY USAGE ... SAMPLES 0`: every entry counted, not a sample).
fn redis_memory(port: u16, stream: &str) -> io::Result<(u64, u64, u64)> {
    let mut client = Client::connect(port).map_err(io::Error::other)?;
    let info: String = client
        .try_command(&[b"INFO", b"memory"])
        .map_err(io::Error::other)?;
    let used = info_field(&info, "used_memory")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("INFO memory has no used_memory"))?;
    let length: u64 = client
        .try_command(&[b"XLEN", stream.as_bytes()])
        .map_err(io::Error::other)?;
    let key: Option<u64> = client
        .try_command(&[b"MEMORY", b"USAGE", stream.as_bytes(), b"SAMPLES", b"0"])
        .map_err(io::Error::other)?;
    Ok((used, length, key.unwrap_or(0)))
}

/// Runs the capacity measurement.
pub fn run(args: &ClusterArgs) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.deadline_seconds);
    let mut out = io::stdout().lock();
    let nodes = args.nodes.max(1);
    // Shares first, from a stand-in target with the right node count.
    let stand_in: Vec<(String, String)> = (0..nodes)
        .map(|n| Preset::Herald.templates(SocketAddr::from(([127, 0, 0, 1], 1 + n as u16))))
        .collect();
    let settings = cluster::latency_settings(args, cluster::left(deadline)?);
    let shares = per_node_subscribers(
        &Target::cluster("stand-in", &stand_in, &[]).map_err(cluster::invalid)?,
        &settings,
        nodes,
    );
    let largest = shares.iter().copied().max().unwrap_or(0);
    let max_connections =
        node_max_connections(args.node_max_connections, largest, open_files_limit())
            .map_err(cluster::invalid)?;

    let procs = Processes::start(args, max_connections)?;
    let templates: Vec<(String, String)> = procs
        .nodes
        .iter()
        .map(|n| Preset::Herald.templates(n.addr))
        .collect();
    let mut pids = procs.pids();
    pids.push(procs.redis.pid());
    let target =
        Target::cluster(&format!("redis x{nodes}"), &templates, &pids).map_err(cluster::invalid)?;
    eprintln!(
        "redis {} at {} (pid {}); {} nodes at {:?} (pids {:?}), --max-connections {}",
        procs.redis.version,
        procs.redis.addr(),
        procs.redis.pid(),
        nodes,
        procs.addrs(),
        procs.pids(),
        max_connections
    );
    let probe_until = (Instant::now() + cluster::PROBE_TIMEOUT).min(deadline);
    let probe = cluster::probe(&target.name, &procs.addrs(), true, probe_until)?;

    let node_pids = procs.pids();
    let redis_pid = procs.redis.pid();
    let port = procs.redis.port;
    let mut readings = Readings::default();
    let settings = cluster::latency_settings(args, cluster::left(deadline)?);
    let report = {
        let r = &mut readings;
        let mut observe = |stage: Stage| -> io::Result<()> {
            let node_memory = || -> io::Result<Vec<Memory>> {
                node_pids.iter().map(|&p| procfs::memory(&[p])).collect()
            };
            let node_cpu = || -> io::Result<Vec<f64>> {
                node_pids
                    .iter()
                    .map(|&p| procfs::cpu_seconds(&[p]))
                    .collect()
            };
            match stage {
                Stage::Idle => {
                    r.memory_idle = node_memory()?;
                    r.slab[0] = procfs::slab_bytes();
                    (r.used_memory[0], r.stream_length[0], r.stream_bytes[0]) =
                        redis_memory(port, &args.stream)?;
                }
                Stage::Connected => {
                    r.memory_connected = node_memory()?;
                    r.slab[1] = procfs::slab_bytes();
                    r.used_memory[1] = redis_memory(port, &args.stream)?.0;
                }
                Stage::Publishing => {
                    r.cpu_start = node_cpu()?;
                    r.redis_cpu_start = procfs::cpu_seconds(&[redis_pid])?;
                    r.started = Some(Instant::now());
                }
                Stage::Drained => {
                    r.cpu_end = node_cpu()?;
                    r.redis_cpu_end = procfs::cpu_seconds(&[redis_pid])?;
                    r.window_seconds = r.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
                    (r.used_memory[2], r.stream_length[1], r.stream_bytes[1]) =
                        redis_memory(port, &args.stream)?;
                }
            }
            Ok(())
        };
        run::measure_observed(&target, &settings, &mut observe)?
    };
    let redis_rss = procfs::memory(&[redis_pid]).map_or(0, |m| m.rss_bytes);
    let result = assemble(AssembleInput {
        args,
        procs: &procs,
        max_connections,
        shares: &shares,
        probe,
        settings,
        readings: &readings,
        redis_rss,
        report,
    });
    write_summary(&mut out, &result)?;
    if let Some(path) = &args.json {
        report::write_json(path, &result)?;
    }
    drop(procs);
    cluster::verdict("the capacity run was", &result.problems)
}

struct AssembleInput<'a> {
    args: &'a ClusterArgs,
    procs: &'a Processes,
    max_connections: usize,
    shares: &'a [u64],
    probe: Probe,
    settings: Settings,
    readings: &'a Readings,
    redis_rss: u64,
    report: Report,
}

/// The report from the readings and the run.
fn assemble(i: AssembleInput<'_>) -> CapacityReport {
    let nodes = i.procs.nodes.len().max(1);
    let r = i.readings;
    let events = i.report.events;
    let mut problems = cluster::problems(&i.report);
    let per_node: Vec<NodeFigures> = i
        .procs
        .nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let subscribers = i.shares.get(n).copied().unwrap_or(0);
            let mut h = latency::histogram();
            let (mut received, mut duplicated, mut gaps) = (0, 0, 0);
            for (w, share) in i.report.by_worker.iter().enumerate() {
                if w % nodes == n {
                    share.latency_buckets.add_to(&mut h);
                    received += share.received;
                    duplicated += share.duplicated;
                    gaps += share.gaps;
                }
            }
            let idle = r.memory_idle.get(n).copied().unwrap_or_default();
            let connected = r.memory_connected.get(n).copied().unwrap_or_default();
            let cpu = r.cpu_end.get(n).copied().unwrap_or(0.0)
                - r.cpu_start.get(n).copied().unwrap_or(0.0);
            let expected = events * subscribers;
            NodeFigures {
                addr: node.addr.to_string(),
                pid: node.pid(),
                subscribers,
                memory_idle: idle,
                memory_connected: connected,
                rss_per_subscriber_bytes: report::per_connection(
                    idle.rss_bytes,
                    connected.rss_bytes,
                    subscribers,
                ),
                anon_per_subscriber_bytes: report::per_connection(
                    idle.anon_bytes,
                    connected.anon_bytes,
                    subscribers,
                ),
                cpu_seconds: cpu,
                cpu_us_per_delivery: (received > 0).then(|| cpu * 1e6 / received as f64),
                expected,
                received,
                duplicated,
                gaps,
                latency: Summary::of(&h),
            }
        })
        .collect();
    for (n, f) in per_node.iter().enumerate() {
        if f.received != f.expected || f.duplicated > 0 || f.gaps > 0 {
            problems.push(format!(
                "node {n}: {} of {} deliveries, {} repeated, {} gaps",
                f.received, f.expected, f.duplicated, f.gaps
            ));
        }
    }
    let redis_cpu = r.redis_cpu_end - r.redis_cpu_start;
    let added = r.stream_length[1].saturating_sub(r.stream_length[0]);
    let redis = RedisFigures {
        pid: i.procs.redis.pid(),
        used_memory_idle: r.used_memory[0],
        used_memory_connected: r.used_memory[1],
        used_memory_after: r.used_memory[2],
        rss_after: i.redis_rss,
        stream_length_before: r.stream_length[0],
        stream_length_after: r.stream_length[1],
        cpu_seconds: redis_cpu,
        cpu_share: if r.window_seconds > 0.0 {
            redis_cpu / r.window_seconds
        } else {
            0.0
        },
        stream_bytes_before: r.stream_bytes[0],
        stream_bytes_after: r.stream_bytes[1],
        bytes_per_entry: (added > 0)
            .then(|| (r.stream_bytes[1] as f64 - r.stream_bytes[0] as f64) / added as f64),
    };
    let per_source = i.settings.per_source.max(1);
    CapacityReport {
        nodes,
        node_threads: i.args.node_threads,
        node_max_connections: i.max_connections,
        redis_version: i.procs.redis.version.clone(),
        stream: i.args.stream.clone(),
        subscribers: i.settings.subscribers,
        workers: i.report.workers,
        source_addresses: i.settings.subscribers.div_ceil(per_source),
        probe: i.probe,
        settings: Some(i.settings),
        per_node,
        redis,
        window_seconds: r.window_seconds,
        kernel_slab_per_subscriber_bytes: report::per_connection(
            r.slab[0],
            r.slab[1],
            i.report.connected,
        ),
        run: i.report,
        problems,
    }
}
