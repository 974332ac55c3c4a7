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
//! (`capacity.rs`).
//!
//! Afterwards each node's `herald_redis_*` metrics are read. Every process started here
//! stops when this returns (herald nodes killed by their handles, redis by its pid).

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use testkit::redis::{Client, Options, RedisServer, REDIS_SERVER_BIN};
use testkit::sse::{Item, SseParser};

use crate::http::{self, ChunkedDecoder, Head};
use crate::latency::Summary;
use crate::payload::PAYLOAD_BYTES_MIN;
use crate::peers::{self, Spawned};
use crate::protocol::SOCKETS_PER_WORKER_MAX;
use crate::report::{self, Report};
use crate::run;
use crate::scenario::{Scenario, Settings};
use crate::schedule::Schedule;
use crate::target::{Preset, Target};
use crate::xadd::{self, XaddPlan, XaddRun};

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

/// The processes of one `cluster` run; all stop when it is dropped (nodes first).
struct Processes {
    nodes: Vec<Spawned>,
    embedded: Spawned,
    redis: RedisServer,
}

/// Starts a private redis-server (named after `label`) and `args.nodes` herald nodes on
/// its stream, each with `extra` flags after the bus's.
pub(crate) fn start_redis_nodes(
    args: &ClusterArgs,
    label: &str,
    extra: &[String],
) -> io::Result<(RedisServer, Vec<Spawned>)> {
    let redis = RedisServer::launch(&Options {
        bin: args.redis_server.clone(),
        durable: false,
        ..Options::new(label)
    })?;
    let mut flags = vec![
        "--bus".to_owned(),
        "redis".to_owned(),
        "--redis-url".to_owned(),
        redis.url(),
        "--redis-stream".to_owned(),
        args.stream.clone(),
        "--redis-maxlen".to_owned(),
        args.redis_maxlen.to_string(),
    ];
    flags.extend_from_slice(extra);
    let mut nodes = Vec::new();
    for _ in 0..args.nodes.max(1) {
        nodes.push(peers::start_herald_with(
            &args.herald_bin,
            args.node_threads,
            args.history,
            &flags,
        )?);
    }
    Ok((redis, nodes))
}

impl Processes {
    fn start(args: &ClusterArgs) -> io::Result<Processes> {
        let (redis, nodes) = start_redis_nodes(args, "loadtest", &[])?;
        let embedded = peers::start_herald(&args.herald_bin, args.threads, args.history)?;
        Ok(Processes {
            nodes,
            embedded,
            redis,
        })
    }

    fn embedded_target(&self) -> io::Result<Target> {
        let (sub, publish) = Preset::Herald.templates(self.embedded.addr);
        Target::new("embedded", &sub, &publish, &[self.embedded.pid()]).map_err(invalid)
    }

    /// The nodes as one target; CPU and memory count every node and redis.
    fn cluster_target(&self) -> io::Result<Target> {
        let templates: Vec<(String, String)> = self
            .nodes
            .iter()
            .map(|n| Preset::Herald.templates(n.addr))
            .collect();
        let mut pids: Vec<u32> = self.nodes.iter().map(Spawned::pid).collect();
        pids.push(self.redis.pid());
        let name = format!("redis x{}", self.nodes.len());
        Target::cluster(&name, &templates, &pids).map_err(invalid)
    }

    fn node_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }
}

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
        let text = serde_json::to_string_pretty(&result).map_err(io::Error::other)?;
        std::fs::write(path, text + "\n")?;
    }
    drop(procs);
    if result.problems.is_empty() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the latency runs were not clean: {}",
            result.problems.join("; ")
        )))
    }
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

/// How long the probes may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait for a probe event on one node before publishing another.
const PROBE_WAIT: Duration = Duration::from_millis(1_000);

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
fn search_settings(args: &ClusterArgs, deadline_seconds: u64) -> Settings {
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

/// The latency of several runs, their histograms merged.
pub fn merged(reports: &[Report]) -> Summary {
    let mut h = crate::latency::histogram();
    for r in reports {
        r.latency_buckets.add_to(&mut h);
    }
    Summary::of(&h)
}

/// What makes a latency run unfit to compare: any loss, repeat, gap, foreign event,
/// refused publish or failed subscription.
pub fn problems(r: &Report) -> Vec<String> {
    let mut found = Vec::new();
    let mut check = |what: &str, n: u64| {
        if n > 0 {
            found.push(format!("{}: {n} {what}", r.target));
        }
    };
    check("lost", r.lost);
    check("duplicated", r.duplicated);
    check("gaps", r.gaps);
    check("foreign events", r.foreign);
    check("failed subscriptions", r.failures.total());
    check("refused publishes", r.publish.refused);
    check("publish connection errors", r.publish.io_errors);
    check("disconnects", r.disconnects);
    if r.expected == 0 {
        found.push(format!("{}: nothing was expected", r.target));
    }
    found
}

/// `herald_redis_*` samples of a Prometheus text exposition (labels kept in the name).
pub fn redis_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("herald_redis_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(char::is_whitespace)?;
            Some((name.trim().to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Whether `id` has the form of a Redis stream id, `ms-seq`.
pub fn is_stream_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    matches!(id.split_once('-'), Some((ms, seq)) if digits(ms) && digits(seq))
}

/// Subscribes on every node, publishes probe events on the first until one reaches every
/// node, and checks that every node's `id:` equals the id the publish answered (and, for
/// a Redis cluster, has the stream-id form).
pub fn probe(
    name: &str,
    nodes: &[SocketAddr],
    stream_ids: bool,
    until: Instant,
) -> io::Result<Probe> {
    let started = Instant::now();
    let topic = format!("loadtest-probe-{}", std::process::id());
    let path = format!("/events?topic={topic}");
    let mut conns = nodes
        .iter()
        .map(|&addr| SseConn::open(v4(addr)?, &path, until))
        .collect::<io::Result<Vec<_>>>()?;
    let mut attempts = 0;
    while Instant::now() < until && attempts < 20 {
        attempts += 1;
        let data = format!("probe {attempts}");
        let (status, body) = post(nodes[0], &format!("/publish?topic={topic}"), &data)?;
        let id = body.trim().to_owned();
        if status != 200 {
            return Err(io::Error::other(format!(
                "{name}: probe publish answered {status}: {id}"
            )));
        }
        if stream_ids && !is_stream_id(&id) {
            return Err(io::Error::other(format!(
                "{name}: publish answered {id:?}, not a stream id"
            )));
        }
        let wait_until = (Instant::now() + PROBE_WAIT).min(until);
        let mut seen = 0;
        for (n, conn) in conns.iter_mut().enumerate() {
            if let Some(got) = conn.wait_for(&data, wait_until)? {
                if got != id {
                    return Err(io::Error::other(format!(
                        "{name}: node {n} delivered {data:?} with id {got:?}, the publish answered {id:?}"
                    )));
                }
                seen += 1;
            }
        }
        if seen == conns.len() {
            return Ok(Probe {
                target: name.to_owned(),
                id,
                attempts,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        eprintln!(
            "{name}: probe {attempts} reached {seen} of {} node(s)",
            conns.len()
        );
    }
    Err(io::Error::new(
        ErrorKind::TimedOut,
        format!("{name}: no probe event reached every node"),
    ))
}

fn v4(addr: SocketAddr) -> io::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) if a.ip().is_loopback() => Ok(a),
        other => Err(invalid(format!("{other} is not an IPv4 loopback address"))),
    }
}

/// One blocking SSE subscription (herald's raw, unchunked stream body).
struct SseConn {
    stream: TcpStream,
    parser: SseParser,
    /// (id, data) of the events received and not yet matched.
    events: Vec<(String, String)>,
}

impl SseConn {
    fn open(addr: SocketAddrV4, path: &str, until: Instant) -> io::Result<SseConn> {
        let mut stream = connect(addr)?;
        stream.write_all(&http::subscribe_request(&addr.to_string(), path, b""))?;
        let (head, rest) = read_head(&mut stream, until)?;
        if head.status != 200 || !head.event_stream || head.chunked {
            return Err(io::Error::other(format!(
                "{addr}{path}: status {}, event stream {}, chunked {}",
                head.status, head.event_stream, head.chunked
            )));
        }
        let mut conn = SseConn {
            stream,
            parser: SseParser::new(),
            events: Vec::new(),
        };
        conn.feed(&rest)?;
        Ok(conn)
    }

    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        let events = &mut self.events;
        self.parser
            .feed(bytes, &mut |item| {
                if let Item::Event(e) = item {
                    events.push((
                        String::from_utf8_lossy(e.id).into_owned(),
                        String::from_utf8_lossy(e.data).into_owned(),
                    ));
                }
            })
            .map_err(|e| io::Error::other(format!("event stream: {e:?}")))
    }

    /// The id of the event whose data is `data`, once it arrives; `None` at `until`.
    fn wait_for(&mut self, data: &str, until: Instant) -> io::Result<Option<String>> {
        let mut scratch = [0u8; 4096];
        loop {
            if let Some((id, _)) = self.events.iter().find(|(_, d)| d == data) {
                return Ok(Some(id.clone()));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            match self.stream.read(&mut scratch) {
                Ok(0) => return Err(io::Error::other("the probe stream closed")),
                Ok(n) => self.feed(&scratch[..n])?,
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

fn connect(addr: SocketAddrV4) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Reads a response head; returns it and the bytes after it.
fn read_head(stream: &mut TcpStream, until: Instant) -> io::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut scratch = [0u8; 4096];
    loop {
        if let Some(head) =
            http::parse_head(&buf).map_err(|e| io::Error::other(format!("response head: {e:?}")))?
        {
            return Ok((head, buf.split_off(head.len)));
        }
        if Instant::now() >= until {
            return Err(io::Error::new(ErrorKind::TimedOut, "no response head"));
        }
        match stream.read(&mut scratch) {
            Ok(0) => return Err(io::Error::other("closed before the response head")),
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Largest response body [`exchange`] accepts (metrics pages and publish answers are a
/// few KiB).
const BODY_BYTES_MAX: usize = 1024 * 1024;

fn body_too_large(addr: SocketAddr) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("response body from {addr} exceeds {BODY_BYTES_MAX} bytes"),
    )
}

/// One request on a fresh connection; the status and the body as text. A body over
/// [`BODY_BYTES_MAX`] is an error.
fn exchange(addr: SocketAddr, request: &[u8]) -> io::Result<(u16, String)> {
    let until = Instant::now() + Duration::from_secs(5);
    let mut stream = connect(v4(addr)?)?;
    stream.write_all(request)?;
    let (head, mut rest) = read_head(&mut stream, until)?;
    if head.content_length.is_some_and(|n| n > BODY_BYTES_MAX) {
        return Err(body_too_large(addr));
    }
    let mut scratch = [0u8; 16 * 1024];
    let mut decoder = ChunkedDecoder::default();
    let mut body = Vec::new();
    loop {
        let done = if head.chunked {
            decoder
                .feed(&rest, &mut |d| body.extend_from_slice(d))
                .map_err(|_| io::Error::other("bad chunked body"))?;
            rest.clear();
            decoder.is_done()
        } else {
            head.content_length.is_some_and(|n| rest.len() >= n)
        };
        if done {
            break;
        }
        if body.len() > BODY_BYTES_MAX || rest.len() > BODY_BYTES_MAX {
            return Err(body_too_large(addr));
        }
        if Instant::now() >= until {
            return Err(io::Error::new(ErrorKind::TimedOut, "response body"));
        }
        match stream.read(&mut scratch) {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&scratch[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    if !head.chunked {
        rest.truncate(head.content_length.unwrap_or(rest.len()));
        body = rest;
    }
    if body.len() > BODY_BYTES_MAX {
        return Err(body_too_large(addr));
    }
    Ok((head.status, String::from_utf8_lossy(&body).into_owned()))
}

fn post(addr: SocketAddr, path: &str, body: &str) -> io::Result<(u16, String)> {
    let mut request = Vec::new();
    http::publish_request(&mut request, &addr.to_string(), path, body.as_bytes());
    exchange(addr, &request)
}

fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, request.as_bytes())
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}

/// The summary: latency side by side with ratios, then the publish rates.
fn write_summary(out: &mut impl Write, args: &ClusterArgs, r: &ClusterReport) -> io::Result<()> {
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

pub fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidInput, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        args: ClusterArgs,
    }

    fn args(extra: &[&str]) -> ClusterArgs {
        let base = ["t", "--herald-bin", "/x/herald"];
        Flags::parse_from(base.iter().chain(extra)).args
    }

    #[test]
    fn ratios() {
        let e = Summary {
            count: 10,
            p50_ms: 2.0,
            p90_ms: 4.0,
            p99_ms: 8.0,
            p999_ms: 0.0,
            max_ms: 10.0,
        };
        let c = Summary {
            p50_ms: 3.0,
            p90_ms: 4.0,
            p99_ms: 4.0,
            p999_ms: 1.0,
            max_ms: 25.0,
            ..e
        };
        let r = LatencyRatio::of(&c, &e);
        assert_eq!(r.p50, Some(1.5));
        assert_eq!(r.p90, Some(1.0));
        assert_eq!(r.p99, Some(0.5));
        assert_eq!(r.p999, None);
        assert_eq!(r.max, Some(2.5));
    }

    #[test]
    fn settings_from_flags() {
        let a = args(&["--subscribers", "9000", "--rate", "20", "--duration", "5"]);
        let s = latency_settings(&a, 100);
        assert_eq!(
            (s.subscribers, s.topics, s.events, s.publishers),
            (9_000, 1, 100, 1)
        );
        assert_eq!(s.per_worker, 3_000);
        assert_eq!(s.scenario, Scenario::Fanout);
        assert_eq!(s.deadline_seconds, 100);
        let s = search_settings(&a, 50);
        assert_eq!(s.scenario, Scenario::Saturation);
        assert_eq!((s.subscribers, s.topics, s.publishers), (72, 12, 6));
        assert_eq!((s.rate, s.events, s.steps_max), (1_000.0, 3_000, 24));
        assert_eq!(s.step_factor, 1.25);
        assert_eq!(s.per_worker, 24);
        // One subscriber per node still makes one worker per node.
        let a = args(&["--subscribers", "2", "--nodes", "3"]);
        assert_eq!(latency_settings(&a, 1).per_worker, 1);
        let a = args(&[
            "--ceiling-connections",
            "1,2,8",
            "--search-embedded",
            "false",
        ]);
        assert_eq!(a.ceiling_connections, vec![1, 2, 8]);
        assert!(!a.search_embedded);
    }

    #[test]
    fn rounds_merge() {
        let report = |values: &[u64]| {
            let mut h = crate::latency::histogram();
            for &v in values {
                h.record(v).unwrap();
            }
            Report {
                latency_buckets: crate::latency::Buckets::of(&h),
                ..Report::default()
            }
        };
        let m = merged(&[report(&[1_000, 2_000]), report(&[3_000, 4_000])]);
        assert_eq!(m.count, 4);
        assert!((m.max_ms - 4.0).abs() < 0.01, "{m:?}");
        assert!((m.p50_ms - 2.0).abs() < 0.01, "{m:?}");
        assert_eq!(merged(&[]), Summary::default());
        let a = args(&["--rounds", "3"]);
        assert_eq!(a.rounds, 3);
    }

    #[test]
    fn clean_and_unclean_reports() {
        let mut r = Report {
            target: "x".into(),
            expected: 10,
            received: 10,
            ..Report::default()
        };
        assert!(problems(&r).is_empty());
        r.lost = 2;
        r.duplicated = 1;
        r.publish.refused = 3;
        let p = problems(&r);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("2 lost"), "{p:?}");
        r = Report::default();
        assert_eq!(problems(&r).len(), 1);
    }

    #[test]
    fn metrics_and_ids() {
        let text = "# HELP herald_redis_connected reader\n# TYPE herald_redis_connected gauge\n\
                    herald_redis_connected 1\nherald_redis_reconnects_total 0\n\
                    herald_connections 5\nherald_redis_x{a=\"b c\"} 2.5\nherald_redis_bad x\n";
        let m = redis_metrics(text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m["herald_redis_connected"], 1.0);
        assert_eq!(m["herald_redis_x{a=\"b c\"}"], 2.5);
        assert!(is_stream_id("1764230400123-0"));
        assert!(is_stream_id("0-1"));
        for bad in ["", "1764230400123", "-1", "1-", "a-1", "1-2-3", "1 -2"] {
            assert!(!is_stream_id(bad), "{bad}");
        }
    }

    /// Serves one connection on a loopback port with `answer` (written in pieces until
    /// the client hangs up) and returns the address.
    fn one_answer(answer: Vec<u8>, filler: Vec<u8>) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(&answer);
            for _ in 0..1_000 {
                if filler.is_empty() || conn.write_all(&filler).is_err() {
                    break;
                }
            }
        });
        addr
    }

    #[test]
    fn exchange_caps_the_body() {
        let ok = one_answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            Vec::new(),
        );
        assert_eq!(get(ok, "/").unwrap(), (200, "hello".to_owned()));

        let announced = one_answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n".to_vec(),
            vec![b'x'; 64 * 1024],
        );
        let until_close = one_answer(b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), vec![b'x'; 64 * 1024]);
        let mut chunk = b"10000\r\n".to_vec();
        chunk.resize(chunk.len() + 0x10000, b'x');
        chunk.extend_from_slice(b"\r\n");
        let chunked = one_answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            chunk,
        );
        for addr in [announced, until_close, chunked] {
            let e = get(addr, "/").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
            assert!(e.to_string().contains("exceeds 1048576 bytes"), "{e}");
        }
    }
}
