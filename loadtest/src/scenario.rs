//! The scenarios of issue 3 and their sizes: each has defaults (10k subscribers, the
//! rates of the issue) that flags override, so tiny versions run in seconds.

use serde::Serialize;

use crate::payload::PAYLOAD_BYTES_MIN;
use crate::protocol::SOCKETS_PER_WORKER_MAX;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Open N subscribers and measure memory only.
    Idle,
    /// 10k subscribers on one topic, 200 events/s for 10 s, 64-byte payloads.
    Fanout,
    /// 10k subscribers over 1,000 topics, 2,000 events/s for 10 s.
    Spread,
    /// 10k subscribers on one topic; step the rate up x1.5 until p99 > limit or any loss.
    Saturation,
    /// Time to open 10k subscriptions.
    ConnectStorm,
    /// 10k subscribers, 10% reconnect with Last-Event-ID every second while events flow.
    Churn,
    /// Fan-out at 1k, 5k, 10k and 19k subscribers, with an SVG chart.
    Sweep,
}

impl Scenario {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Fanout => "fanout",
            Scenario::Spread => "spread",
            Scenario::Saturation => "saturation",
            Scenario::ConnectStorm => "connect-storm",
            Scenario::Churn => "churn",
            Scenario::Sweep => "sweep",
        }
    }

    /// Whether events are published.
    pub fn publishes(self) -> bool {
        !matches!(self, Scenario::Idle | Scenario::ConnectStorm)
    }
}

/// Flags that size a scenario; each one left out takes the scenario's default.
#[derive(Clone, Debug, clap::Args)]
pub struct ScenarioArgs {
    /// Scenario to run.
    #[arg(long, value_enum, default_value = "fanout")]
    pub scenario: Scenario,
    /// Subscribers to open [default: 10000].
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Topics; subscriber i listens to topic i % topics [default: 1; spread: 1000].
    #[arg(long)]
    pub topics: Option<usize>,
    /// Events per second (the first step for saturation) [default: 200; spread: 2000].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of publishing (per step for saturation) [default: 10; saturation: 3; sweep: 5].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Events to publish, overriding rate x duration.
    #[arg(long)]
    pub events: Option<u64>,
    /// Payload bytes (at least 40) [default: 64].
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Keep-alive publish connections (topics are split over them) [default: 1].
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Percent of subscribers that reconnect each second in churn [default: 10].
    #[arg(long, default_value_t = 10.0)]
    pub churn_percent: f64,
    /// Subscribers per worker process (at most 15000).
    #[arg(long, default_value_t = 10_000)]
    pub per_worker: usize,
    /// Subscribers per source address (127.0.0.2, 127.0.0.3, ...).
    #[arg(long, default_value_t = 10_000)]
    pub per_source: usize,
    /// Connection attempts in flight per worker.
    #[arg(long, default_value_t = 512)]
    pub connect_inflight: usize,
    /// Milliseconds a subscription may take to get its response head.
    #[arg(long, default_value_t = 15_000)]
    pub connect_timeout_ms: u64,
    /// Milliseconds to wait after connecting before reading memory.
    #[arg(long, default_value_t = 1_000)]
    pub settle_ms: u64,
    /// After publishing, stop waiting once no delivery arrived for this many milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub drain_quiet_ms: u64,
    /// Saturation: rate factor between steps.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    /// Saturation: most steps.
    #[arg(long, default_value_t = 20)]
    pub steps_max: usize,
    /// Saturation: a step fails when p99 latency exceeds this.
    #[arg(long, default_value_t = 100.0)]
    pub p99_limit_ms: f64,
    /// Sweep: subscriber counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,19000")]
    pub sizes: Vec<usize>,
    /// The whole run stops after this many seconds, finished or not.
    #[arg(long, default_value_t = 900)]
    pub deadline_seconds: u64,
    /// The server's history depth in events per topic (herald's --history-events), when
    /// the count and not the bytes bounds it: each hole announced by a gap notice is then
    /// checked to be real (the event that many after the first one skipped was published
    /// before the stream opened, so history could not have held the skipped one).
    #[arg(long)]
    pub history_events: Option<u64>,
}

/// A scenario with every size resolved.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// The scenario (`sweep` runs as `fanout` at each size).
    pub scenario: Scenario,
    /// Subscribers.
    pub subscribers: usize,
    /// Topics.
    pub topics: usize,
    /// Events per second (first step for saturation).
    pub rate: f64,
    /// Events per phase (per step for saturation).
    pub events: u64,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Publish connections.
    pub publishers: usize,
    /// Churn percent per second (churn only).
    pub churn_percent: f64,
    /// Subscribers per worker.
    pub per_worker: usize,
    /// Subscribers per source address.
    pub per_source: usize,
    /// Connects in flight per worker.
    pub connect_inflight: usize,
    /// Connect timeout.
    pub connect_timeout_ms: u64,
    /// Settle time before the memory reading.
    pub settle_ms: u64,
    /// Drain quiet period.
    pub drain_quiet_ms: u64,
    /// Saturation factor.
    pub step_factor: f64,
    /// Saturation steps.
    pub steps_max: usize,
    /// Saturation p99 bar.
    pub p99_limit_ms: f64,
    /// Seconds the run may take.
    pub deadline_seconds: u64,
    /// The server's history depth in events per topic, to check announced holes against.
    pub history_events: Option<u64>,
}

impl ScenarioArgs {
    /// Resolves defaults for `scenario` (pass `Fanout` for each size of a sweep).
    pub fn settings(&self, scenario: Scenario, subscribers: Option<usize>) -> Settings {
        let spread = scenario == Scenario::Spread;
        let rate = self.rate.unwrap_or(if spread { 2_000.0 } else { 200.0 });
        let duration = self.duration.unwrap_or(match (self.scenario, scenario) {
            (Scenario::Sweep, _) => 5.0,
            (_, Scenario::Saturation) => 3.0,
            _ => 10.0,
        });
        let events = self
            .events
            .unwrap_or_else(|| crate::schedule::Schedule::new(rate).events_in(secs(duration)));
        Settings {
            scenario,
            subscribers: subscribers.or(self.subscribers).unwrap_or(10_000),
            topics: self.topics.unwrap_or(if spread { 1_000 } else { 1 }).max(1),
            rate,
            events,
            payload_bytes: self.payload_bytes.max(PAYLOAD_BYTES_MIN),
            publishers: self.publishers.max(1),
            churn_percent: if scenario == Scenario::Churn {
                self.churn_percent.clamp(0.0, 100.0)
            } else {
                0.0
            },
            per_worker: self.per_worker.clamp(1, SOCKETS_PER_WORKER_MAX),
            per_source: self.per_source.max(1),
            connect_inflight: self.connect_inflight.max(1),
            connect_timeout_ms: self.connect_timeout_ms,
            settle_ms: self.settle_ms,
            drain_quiet_ms: self.drain_quiet_ms,
            step_factor: self.step_factor,
            steps_max: self.steps_max,
            p99_limit_ms: self.p99_limit_ms,
            deadline_seconds: self.deadline_seconds,
            history_events: self.history_events,
        }
    }
}

fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}
