//! The `cluster` subcommand (issue 5): herald's Redis bus measured on this machine.
//!
//! It starts a private redis-server, `--nodes` herald nodes with `--bus redis` on one
//! stream, and one herald with the embedded bus as the peer, checks with a probe that an
//! event published on the first node reaches every node with the id its publish answered,
//! and then measures:
//!
//! 1. **Latency**: the same fan-out (subscribers spread evenly over the nodes by worker
//!    process, one topic, fixed rate, payloads carrying their publish timestamp) against
//!    the embedded node and against the cluster, published through the first node, in
//!    `--rounds` rounds that alternate which side goes first. It prints p50/p90/p99/
//!    p99.9/max of both (histograms merged over the rounds) and the ratio
//!    cluster/embedded, and fails the run on any loss, duplicate, gap, refused publish or
//!    failed subscription.
//! 2. **Publish rate one stream sustains**: the saturation ladder publishing through every
//!    node (topic t on keep-alive connection t % P, connection c through node c % nodes,
//!    so each topic stays in order) until a step loses or repeats a delivery, has a refused
//!    publish, misses 90 % of its rate, or its p99 delivery latency exceeds the limit. The
//!    highest passing rate is what the stream sustained through herald; the same ladder
//!    against the embedded node shows what herald's publish path alone sustains.
//! 3. **Ceiling**: XADD pipelines straight to redis (`xadd.rs`, the redis crate) with the
//!    entry format herald writes, on a stream nobody reads and on herald's stream while
//!    every node reads it.
//!
//! With `--capacity` only the nodes start and one fan-out is measured per node instead
//! (`capacity/`).
//!
//! Afterwards each node's `herald_redis_*` metrics are read. Every process started here
//! stops when this returns (herald nodes killed by their handles, redis by its pid).
//!
//! This module holds the flags and the result types; the work is in its submodules:
//! `processes` (redis-server and the herald nodes), `measure` (the run itself and the
//! ceiling), `settings` (the scenario settings of each part), `checks` (the probe,
//! judging a latency run, reading node metrics), `wire` (the blocking HTTP and SSE client
//! the checks use) and `summary` (the printed summary).

mod checks;
mod measure;
mod processes;
mod settings;
mod summary;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::BTreeMap;
use std::io::{self, ErrorKind};
use std::path::PathBuf;

use serde::Serialize;
use testkit::redis::REDIS_SERVER_BIN;

use crate::latency::Summary;
use crate::report::{self, Report};
use crate::scenario::Settings;
use crate::xadd::XaddRun;

pub use checks::{probe, problems, PROBE_TIMEOUT};
pub use measure::run;
pub(crate) use processes::start_redis_nodes;
pub use settings::{latency_settings, left};

/// Flags of `cluster`.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterArgs {
    /// herald binary to start (e.g. target/release/herald).
    #[arg(long)]
    pub herald_bin: PathBuf,
    /// redis-server binary to start.
    #[arg(long, default_value = REDIS_SERVER_BIN)]
    pub redis_server: PathBuf,
    /// herald nodes on the Redis bus.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Event loop threads of each Redis node.
    #[arg(long, default_value_t = 1)]
    pub node_threads: usize,
    /// Event loop threads of the embedded peer.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Events kept per topic for resume, by every node.
    #[arg(long, default_value_t = 1_000)]
    pub history: usize,
    /// Stream name (`--redis-stream`).
    #[arg(long, default_value = "herald")]
    pub stream: String,
    /// `--redis-maxlen` of the nodes, and `MAXLEN ~` of the direct XADD measurement.
    #[arg(long, default_value_t = 100_000)]
    pub redis_maxlen: u64,

    /// Latency: subscribers, spread evenly over the nodes.
    #[arg(long, default_value_t = 9_000)]
    pub subscribers: usize,
    /// Latency: events per second on the one topic.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Latency: seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Latency: rounds, each measuring both sides (odd rounds start with the cluster).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Payload bytes, for every part (at least 40).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,

    /// Rate search: skip it.
    #[arg(long)]
    pub skip_search: bool,
    /// Rate search: also run the ladder against the embedded node.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub search_embedded: bool,
    /// Rate search: subscribers (spread over the nodes and the topics).
    #[arg(long, default_value_t = 72)]
    pub search_subscribers: usize,
    /// Rate search: topics.
    #[arg(long, default_value_t = 12)]
    pub search_topics: usize,
    /// Rate search: keep-alive publish connections, spread over the nodes.
    #[arg(long, default_value_t = 6)]
    pub search_publishers: usize,
    /// Rate search: first step, events per second.
    #[arg(long, default_value_t = 1_000.0)]
    pub search_rate: f64,
    /// Rate search: factor between steps.
    #[arg(long, default_value_t = 1.25)]
    pub search_step_factor: f64,
    /// Rate search: most steps.
    #[arg(long, default_value_t = 24)]
    pub search_steps_max: usize,
    /// Rate search: seconds per step.
    #[arg(long, default_value_t = 3.0)]
    pub search_step_seconds: f64,
    /// Rate search: a step fails when its p99 delivery latency exceeds this.
    #[arg(long, default_value_t = 100.0)]
    pub p99_limit_ms: f64,

    /// Ceiling: skip the direct XADD measurement.
    #[arg(long)]
    pub skip_ceiling: bool,
    /// Ceiling: seconds per configuration.
    #[arg(long, default_value_t = 2.0)]
    pub ceiling_seconds: f64,
    /// Ceiling: connections to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub ceiling_connections: Vec<usize>,
    /// Ceiling: pipeline depths to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub ceiling_depths: Vec<usize>,

    /// Subscribers per source address (127.0.0.2, 127.0.0.3, ...).
    #[arg(long, default_value_t = 10_000)]
    pub per_source: usize,
    /// Milliseconds a subscription may take to get its response head.
    #[arg(long, default_value_t = 15_000)]
    pub connect_timeout_ms: u64,
    /// Milliseconds to wait after connecting before reading memory.
    #[arg(long, default_value_t = 1_000)]
    pub settle_ms: u64,
    /// After publishing, stop waiting once no delivery arrived for this many milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub drain_quiet_ms: u64,
    /// The whole run stops after this many seconds, finished or not.
    #[arg(long, default_value_t = 900)]
    pub deadline_seconds: u64,
    /// Write the whole result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Capacity: only the nodes (no embedded peer, rate search or ceiling); one fan-out
    /// of --subscribers at --rate for --duration, reported per node (memory per
    /// subscriber, CPU, latency, loss) with Redis's memory and CPU.
    #[arg(long)]
    pub capacity: bool,
    /// Capacity: `--max-connections` of each node; 0 means its share of the subscribers
    /// plus 64.
    #[arg(long, default_value_t = 0)]
    pub node_max_connections: usize,
}

/// Cluster / embedded ratios of the latency percentiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencyRatio {
    /// p50 ratio.
    pub p50: Option<f64>,
    /// p90 ratio.
    pub p90: Option<f64>,
    /// p99 ratio.
    pub p99: Option<f64>,
    /// p99.9 ratio.
    pub p999: Option<f64>,
    /// max ratio.
    pub max: Option<f64>,
}

impl LatencyRatio {
    /// `cluster / embedded` for each percentile.
    pub fn of(cluster: &Summary, embedded: &Summary) -> LatencyRatio {
        let r = |c: f64, e: f64| report::ratio(Some(c), Some(e));
        LatencyRatio {
            p50: r(cluster.p50_ms, embedded.p50_ms),
            p90: r(cluster.p90_ms, embedded.p90_ms),
            p99: r(cluster.p99_ms, embedded.p99_ms),
            p999: r(cluster.p999_ms, embedded.p999_ms),
            max: r(cluster.max_ms, embedded.max_ms),
        }
    }
}

/// What the probe saw on one target.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Probe {
    /// The target's label.
    pub target: String,
    /// The id the publish answered, which every node's stream carried.
    pub id: String,
    /// Probe events published until every node delivered one.
    pub attempts: u32,
    /// Seconds the probe took.
    pub seconds: f64,
}

/// Everything `cluster` measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterReport {
    /// herald nodes on the Redis bus.
    pub nodes: usize,
    /// Event loop threads of each Redis node.
    pub node_threads: usize,
    /// Event loop threads of the embedded peer.
    pub embedded_threads: usize,
    /// redis-server's version.
    pub redis_version: String,
    /// The stream.
    pub stream: String,
    /// The probes, embedded peer first.
    pub probes: Vec<Probe>,
    /// Latency part: its settings.
    pub latency_settings: Option<Settings>,
    /// Latency part: the embedded node, one report per round.
    pub latency_embedded: Vec<Report>,
    /// Latency part: the cluster, one report per round.
    pub latency_cluster: Vec<Report>,
    /// Latency of the embedded node over every round.
    pub latency_embedded_merged: Summary,
    /// Latency of the cluster over every round.
    pub latency_cluster_merged: Summary,
    /// Latency part: cluster / embedded, over every round.
    pub latency_ratio: LatencyRatio,
    /// Rate search: its settings (first step).
    pub search_settings: Option<Settings>,
    /// Rate search against the embedded node.
    pub search_embedded: Option<Report>,
    /// Rate search against the cluster.
    pub search_cluster: Option<Report>,
    /// Highest passing rate through the embedded node.
    pub sustained_embedded_events_per_second: Option<f64>,
    /// Highest passing rate through the cluster.
    pub sustained_cluster_events_per_second: Option<f64>,
    /// Direct XADD runs on a stream nobody reads.
    pub ceiling: Vec<XaddRun>,
    /// The best of them.
    pub ceiling_entries_per_second: Option<f64>,
    /// The best configuration again on herald's stream while every node reads it.
    pub ceiling_with_readers: Option<XaddRun>,
    /// Each node's `herald_redis_*` metrics at the end.
    pub node_metrics: Vec<BTreeMap<String, f64>>,
    /// What was wrong with the latency part (empty when clean).
    pub problems: Vec<String>,
}

/// A run's end: `Ok` when nothing went wrong, else an error that says `run` (with its
/// verb: "the capacity run was") was not clean and lists every problem, so the command
/// exits non-zero after printing its summary.
pub fn verdict(run: &str, problems: &[String]) -> io::Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{run} not clean: {}",
        problems.join("; ")
    )))
}

pub fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidInput, message.into())
}
