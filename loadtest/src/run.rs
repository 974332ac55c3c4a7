//! One scenario against one target, start to finish: spawn the workers, wait until every
//! subscription is open, read the server's memory, publish (one phase, or the saturation
//! ladder), wait for the deliveries to drain, collect the workers' counters and histograms,
//! and fill a [`Report`]. Server CPU is read from `/proc` around each publishing phase.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::fleet::{Collected, Fleet};
use crate::latency::{self, Summary};
use crate::procfs;
use crate::protocol::{Control, Deliveries, WorkerSpec};
use crate::publisher::{self, Plan, PublishStats};
use crate::report::{self, Report, Step, WorkerShare};
use crate::scenario::{Scenario, Settings};
use crate::schedule;
use crate::target::Target;

/// Longest wait for deliveries after the last publish. The drain ends as soon as nothing
/// is owed, so this only bounds a run against a server that loses events while a worker
/// keeps moving; a client that lags by tens of seconds (one worker for thousands of
/// churning subscribers) must still get its backlog.
const DRAIN_MAX: Duration = Duration::from_secs(180);

/// Moments of a run at which [`measure_observed`] lets its caller read the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before the workers start, right after the first memory reading.
    Idle,
    /// Every subscription is open (or failed) and the settle time passed, right after the
    /// second memory reading.
    Connected,
    /// A publishing phase is about to start (server CPU is read here).
    Publishing,
    /// The phase's deliveries drained, before the workers are asked for their counters
    /// (server CPU is read here).
    Drained,
}

/// Runs `settings` against `target`.
pub fn measure(target: &Target, settings: &Settings) -> io::Result<Report> {
    measure_observed(target, settings, &mut |_| Ok(()))
}

/// [`measure`], calling `observe` at each [`Stage`] (per-node memory and CPU, Redis's own
/// figures); an error from it ends the run.
pub fn measure_observed(
    target: &Target,
    settings: &Settings,
    observe: &mut dyn FnMut(Stage) -> io::Result<()>,
) -> io::Result<Report> {
    let deadline = Instant::now() + Duration::from_secs(settings.deadline_seconds);
    let prefix = topic_prefix();
    let specs = worker_specs(target, settings, &prefix, source_base());
    let mut report = Report {
        target: target.name.clone(),
        scenario: settings.scenario.name().to_owned(),
        subscribers: settings.subscribers,
        topics: settings.topics,
        workers: specs.len(),
        payload_bytes: settings.payload_bytes,
        rate: settings.rate,
        ..Report::default()
    };
    report.memory_before = procfs::memory(&target.pids)?;
    let tcp_before = procfs::tcp_mem_bytes();
    observe(Stage::Idle)?;
    let mut fleet = Fleet::spawn(&specs)?;
    let ready = fleet.wait_ready(deadline)?;
    report.connected = settings.subscribers as u64 - ready.failed.len() as u64;
    report.failures = ready.failures;
    report.connect_seconds = ready.connect_seconds;
    report.connect_latency = Summary::of(&ready.connect_latency);
    std::thread::sleep(Duration::from_millis(settings.settle_ms));
    report.memory_after = procfs::memory(&target.pids)?;
    fill_memory(&mut report, tcp_before, procfs::tcp_mem_bytes());
    observe(Stage::Connected)?;
    if settings.scenario.publishes() {
        let per_topic =
            report::subscribers_per_topic(settings.subscribers, settings.topics, &ready.failed);
        let mut run = Publishing {
            target,
            settings,
            prefix: &prefix,
            per_topic: &per_topic,
            fleet: &mut fleet,
            deadline,
            next_event: 0,
            observe,
        };
        run.all_phases(&mut report)?;
    }
    fleet.shutdown();
    Ok(report)
}

/// Topic names unique to this run, so a long-running server's old history never mixes in.
fn topic_prefix() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("lt{}p{}-", secs % 1_000_000, std::process::id())
}

/// Source numbers reserved for one run (each holds `per_source` subscribers): 640k
/// subscribers at the default 10k per source.
const SOURCES_PER_RUN: usize = 64;

/// The first source number of a new run: a slot picked from the clock and a per-process
/// counter, so runs in a row (a sweep, or one invocation after another) use fresh
/// addresses while the last run's TIME_WAIT sockets linger on theirs. 65,536 slots of 64
/// stay inside 127.0.0.0/8.
fn source_base() -> usize {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as usize);
    let slot = secs.wrapping_add(RUNS.fetch_add(1, Ordering::Relaxed) * 7_919) % 65_536;
    slot * SOURCES_PER_RUN
}

/// Splits the subscribers over as few workers as `per_worker` allows, evenly; a cluster
/// target gets a multiple of its node count, and worker `w` subscribes on node
/// `w % nodes`, so the subscribers spread evenly over the nodes.
pub fn worker_specs(
    target: &Target,
    s: &Settings,
    prefix: &str,
    source_base: usize,
) -> Vec<WorkerSpec> {
    let nodes = target.subscribe_endpoints();
    let workers = s
        .subscribers
        .div_ceil(s.per_worker.max(1))
        .max(1)
        .next_multiple_of(nodes.len());
    let mut first = 0;
    (0..workers)
        .map(|w| {
            let count = s.subscribers / workers + usize::from(w < s.subscribers % workers);
            let node = nodes[w % nodes.len()];
            let spec = WorkerSpec {
                index: w,
                connect: node.addr,
                host: node.host.clone(),
                path_template: node.path_template.clone(),
                topic_prefix: prefix.to_owned(),
                topics: s.topics,
                first,
                count,
                per_source: s.per_source,
                source_base,
                connect_inflight_max: s.connect_inflight,
                connect_timeout_ms: s.connect_timeout_ms,
                churn_percent: s.churn_percent,
                deadline_ms: s.deadline_seconds * 1000 + 30_000,
                history_events: s.history_events,
            };
            first += count;
            spec
        })
        .collect()
}

fn fill_memory(report: &mut Report, tcp_before: u64, tcp_after: u64) {
    let (before, after, n) = (report.memory_before, report.memory_after, report.connected);
    report.rss_per_connection_bytes = report::per_connection(before.rss_bytes, after.rss_bytes, n);
    report.anon_per_connection_bytes =
        report::per_connection(before.anon_bytes, after.anon_bytes, n);
    report.kernel_tcp_per_connection_bytes = report::per_connection(tcp_before, tcp_after, n);
}

/// The publishing part of a run.
struct Publishing<'a> {
    target: &'a Target,
    settings: &'a Settings,
    prefix: &'a str,
    per_topic: &'a [u64],
    fleet: &'a mut Fleet,
    deadline: Instant,
    next_event: u64,
    observe: &'a mut dyn FnMut(Stage) -> io::Result<()>,
}

/// What one publishing phase measured.
struct Phase {
    publish: PublishStats,
    collected: Collected,
    expected: u64,
    window_seconds: f64,
    server_cpu_seconds: f64,
    server_system_seconds: f64,
    client_cpu_seconds: f64,
}

impl Publishing<'_> {
    fn all_phases(&mut self, report: &mut Report) -> io::Result<()> {
        let mut latency = latency::histogram();
        let mut by_worker: Vec<(WorkerShare, Histogram<u64>)> = Vec::new();
        let mut waits: Vec<u64> = Vec::new();
        let mut window = 0.0;
        let rates = match self.settings.scenario {
            Scenario::Saturation => schedule::ladder(
                self.settings.rate,
                self.settings.step_factor,
                self.settings.steps_max,
            ),
            _ => vec![self.settings.rate],
        };
        for rate in rates {
            if Instant::now() >= self.deadline {
                break;
            }
            let events = match self.settings.scenario {
                Scenario::Saturation => self.events_for(rate),
                _ => self.settings.events,
            };
            let phase = self.phase(rate, events)?;
            window += phase.window_seconds;
            latency
                .add(&phase.collected.latency)
                .map_err(io::Error::other)?;
            by_worker.resize_with(phase.collected.by_worker.len(), || {
                (WorkerShare::default(), latency::histogram())
            });
            for ((share, h), (d, l)) in by_worker.iter_mut().zip(&phase.collected.by_worker) {
                share.received += d.received;
                share.duplicated += d.duplicated;
                share.gaps += d.gaps;
                h.add(l).map_err(io::Error::other)?;
            }
            waits.resize(phase.collected.waits.len().max(waits.len()), 0);
            for (total, phase) in waits.iter_mut().zip(&phase.collected.waits) {
                *total += phase;
            }
            let passed = self.account(report, rate, events, &phase);
            if self.settings.scenario == Scenario::Saturation && !passed {
                break;
            }
        }
        report.latency = Summary::of(&latency);
        report.by_worker = by_worker
            .into_iter()
            .map(|(share, h)| WorkerShare {
                latency: Summary::of(&h),
                latency_buckets: latency::Buckets::of(&h),
                ..share
            })
            .collect();
        report.latency_buckets = latency::Buckets::of(&latency);
        report.deliveries_per_second = if window > 0.0 {
            report.received as f64 / window
        } else {
            0.0
        };
        report.server_cpu_seconds_per_million =
            report::per_million(report.server_cpu_seconds, report.received);
        report.worker_waits_per_second = waits
            .iter()
            .min()
            .filter(|_| window > 0.0)
            .map(|&fewest| fewest as f64 / window);
        Ok(())
    }

    /// A saturation step's events: the step's duration at `rate`.
    fn events_for(&self, rate: f64) -> u64 {
        let base = self.settings.events as f64 / self.settings.rate.max(1.0);
        ((base * rate).round() as u64).max(1)
    }

    /// Adds a phase to the report; returns whether it met the saturation bars.
    fn account(&self, report: &mut Report, rate: f64, events: u64, phase: &Phase) -> bool {
        let d: &Deliveries = &phase.collected.deliveries;
        let lost = report::lost(phase.expected, d.received);
        report.events += events;
        report.rate = rate;
        add_publish(&mut report.publish, &phase.publish);
        report.expected += phase.expected;
        report.received += d.received;
        report.lost += lost;
        report.duplicated += d.duplicated;
        report.gaps += d.gaps;
        report.foreign += d.foreign;
        report.disconnects += d.disconnects;
        report.reconnects += d.reconnects;
        report.loss.add(&report::Loss::of(lost, d));
        report.server_cpu_seconds += phase.server_cpu_seconds;
        report.server_system_seconds += phase.server_system_seconds;
        report.subscriber_reads += d.reads;
        report.client_cpu_seconds += phase.client_cpu_seconds;
        let p99_ms = Summary::of(&phase.collected.latency).p99_ms;
        let achieved = phase.publish.achieved_rate();
        let passed = lost == 0
            && d.duplicated == 0
            && p99_ms <= self.settings.p99_limit_ms
            && achieved >= 0.9 * rate
            && phase.publish.refused + phase.publish.io_errors == 0;
        if self.settings.scenario == Scenario::Saturation {
            report.steps.push(Step {
                rate,
                achieved_rate: achieved,
                expected: phase.expected,
                received: d.received,
                lost,
                duplicated: d.duplicated,
                p99_ms,
                passed,
            });
            if passed {
                report.saturation_rate = Some(rate);
            }
        }
        passed
    }

    /// Publishes `events` at `rate`, drains, collects.
    fn phase(&mut self, rate: f64, events: u64) -> io::Result<Phase> {
        let plan = Plan {
            endpoints: self.target.publish_endpoints(),
            topic_prefix: self.prefix.to_owned(),
            topics: self.settings.topics,
            first_event: self.next_event,
            events,
            rate,
            payload_bytes: self.settings.payload_bytes,
            connections: self.settings.publishers,
            deadline: self.deadline,
        };
        let expected = report::expected_deliveries(self.per_topic, self.next_event, events);
        self.next_event += events;
        let server_cpu = procfs::cpu_seconds(&self.target.pids)?;
        let server_system = procfs::system_seconds(&self.target.pids)?;
        let own_cpu = procfs::own_cpu_seconds();
        (self.observe)(Stage::Publishing)?;
        self.fleet.tell(Control::Go)?;
        let start = Instant::now();
        let publish = publisher::run(&plan);
        // Churn stops with the publishing; the drain then waits until every subscriber has
        // the last event of its topic (so none is cut off between streams or behind its
        // socket buffer at collection), or nothing moves for the quiet period.
        self.fleet.tell(Control::Calm {
            published: self.next_event,
        })?;
        let quiet = Duration::from_millis(self.settings.drain_quiet_ms);
        let drain_deadline = (Instant::now() + DRAIN_MAX).min(self.deadline);
        let last = self.fleet.drain(quiet, drain_deadline);
        (self.observe)(Stage::Drained)?;
        let server_cpu = procfs::cpu_seconds(&self.target.pids)? - server_cpu;
        let server_system = procfs::system_seconds(&self.target.pids)? - server_system;
        let own_cpu = procfs::own_cpu_seconds() - own_cpu;
        let collected = self
            .fleet
            .collect(self.next_event, self.deadline + Duration::from_secs(10))?;
        Ok(Phase {
            window_seconds: last
                .duration_since(start)
                .as_secs_f64()
                .max(publish.elapsed_s),
            client_cpu_seconds: own_cpu + collected.cpu_seconds,
            publish,
            collected,
            expected,
            server_cpu_seconds: server_cpu,
            server_system_seconds: server_system,
        })
    }
}

fn add_publish(total: &mut PublishStats, phase: &PublishStats) {
    let before = total.elapsed_s;
    total.sent += phase.sent;
    total.accepted += phase.accepted;
    total.refused += phase.refused;
    total.io_errors += phase.io_errors;
    total.late_max_ms = total.late_max_ms.max(phase.late_max_ms);
    total.elapsed_s = before + phase.elapsed_s;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::ScenarioArgs;
    use clap::Parser;

    /// Just the scenario flags, to build settings the way the command line does.
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        scenario: ScenarioArgs,
    }

    fn settings(args: &[&str]) -> Settings {
        let flags = Flags::parse_from(std::iter::once("t").chain(args.iter().copied()));
        flags.scenario.settings(Scenario::Fanout, None)
    }

    fn herald_at(ports: &[u16]) -> Target {
        let nodes: Vec<(String, String)> = ports
            .iter()
            .map(|&p| crate::target::Preset::Herald.templates(([127, 0, 0, 1], p).into()))
            .collect();
        Target::cluster("t", &nodes, &[]).unwrap()
    }

    #[test]
    fn single_target_uses_few_workers() {
        let s = settings(&["--subscribers", "25000", "--per-worker", "10000"]);
        let specs = worker_specs(&herald_at(&[7]), &s, "p-", 0);
        let counts: Vec<usize> = specs.iter().map(|w| w.count).collect();
        assert_eq!(counts, vec![8_334, 8_333, 8_333]);
        assert!(specs.iter().all(|w| w.connect.port() == 7));
        assert_eq!(specs[1].first, 8_334);
    }

    #[test]
    fn cluster_spreads_workers_over_nodes() {
        let s = settings(&["--subscribers", "9000", "--per-worker", "10000"]);
        let specs = worker_specs(&herald_at(&[1, 2, 3]), &s, "p-", 0);
        let ports: Vec<u16> = specs.iter().map(|w| w.connect.port()).collect();
        assert_eq!(ports, vec![1, 2, 3]);
        assert!(specs.iter().all(|w| w.count == 3_000));
        assert_eq!(specs[2].first, 6_000);
        assert_eq!(specs[2].host, "127.0.0.1:3");
        // Four workers' worth of subscribers round up to six, two per node.
        let s = settings(&["--subscribers", "40", "--per-worker", "10"]);
        let specs = worker_specs(&herald_at(&[1, 2, 3]), &s, "p-", 0);
        let ports: Vec<u16> = specs.iter().map(|w| w.connect.port()).collect();
        assert_eq!(ports, vec![1, 2, 3, 1, 2, 3]);
        assert_eq!(specs.iter().map(|w| w.count).sum::<usize>(), 40);
    }
}
