#![allow(clippy::unwrap_used)]
//! Cluster mode (issue 5, part 5): several `herald serve --bus redis` processes share one
//! Redis stream, over real sockets, against a real `redis-server` each test starts for itself
//! (see `testkit::redis`; `.ci/deps` installs Debian's `redis-server`).
//!
//! - [`delivery`]: fan-out over three nodes, subscribers and publishers on all of them; every
//!   subscriber gets every event of its topics exactly once, in stream-id order, with the ids
//!   the publishes were answered with (which are the stream's entry ids); pipelined publishes
//!   on one connection are answered in order.
//! - [`resume`]: resume on another node: from its ring, from the stream when its ring is too
//!   short (`XRANGE` backfill), on a node started after the events, with an id the stream has
//!   trimmed (the gap event first, then what the stream keeps), while events keep coming (the
//!   seam between backfill and live events), and after the trim overtook a frozen node.
//! - [`backfill_limits`]: hostile resumes are bounded and do not starve other clients; a
//!   backfill bigger than the lag budget comes in parts.
//! - [`outage`]: Redis crashes (SIGKILL) and restarts on the same port and AOF directory
//!   while a publisher keeps going: subscribers stay connected and get heartbeats, publishes
//!   get `503` with `Retry-After`, and afterwards every acknowledged event reaches every
//!   subscriber once, in order. A frozen Redis (SIGSTOP) holds a publish's answer until it
//!   acknowledged the XADD and fails a pipelined batch once; a stream key of another type
//!   gets `503` until it is gone.
//! - [`foreign_entries`]: entries written by other Redis clients (`XADD`) are delivered,
//!   whatever their valid ids; invalid ones are skipped and counted.
//! - [`lifecycle`]: a node starts while Redis is down and connects when it comes up; SIGTERM
//!   stops a node promptly with Redis up or down; bad settings exit 2; the password in the
//!   Redis URL is used and never shown.
//!
//! This file holds what the submodules share: the [`Node`] child process, event comparison,
//! publish helpers and the steady publisher of the outage and resume tests.
//!
//! Every test has its own redis-server (own port and directory), so tests run in parallel.
//! Every wait has a deadline ([`DEADLINE`]); the only sleeps are poll intervals between
//! retries of something that fails until the system has recovered.

use std::collections::HashSet;
use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use testkit::redis::{free_port, RedisServer};

mod backfill_limits;
mod delivery;
mod foreign_entries;
mod lifecycle;
mod outage;
mod resume;

const CONNECTED: &str = "herald_redis_connected";
const RECONNECTS: &str = "herald_redis_reconnects_total";
const SKIPPED: &str = "herald_redis_entries_skipped_total";
const BACKFILLS: &str = "herald_redis_backfills_total";

/// Pause between two attempts of something that keeps failing until Redis is back.
const RETRY_POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A `herald serve --bus redis` child. When a test fails, dropping it kills the node and
/// prints its stderr, so the failure shows what the server logged.
struct Node {
    process: HeraldProcess,
    label: String,
    /// Set once the test has waited for the process to exit (it is then never signalled).
    exited: bool,
}

impl Node {
    fn spawn(label: &str, redis_url: &str, stream: &str, extra: &[&str]) -> Node {
        let mut args = vec![
            "--bus",
            "redis",
            "--redis-url",
            redis_url,
            "--redis-stream",
            stream,
            "--threads",
            "2",
        ];
        args.extend_from_slice(extra);
        Node {
            process: HeraldProcess::spawn(&args),
            label: label.to_owned(),
            exited: false,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    fn metric(&self, name: &str) -> f64 {
        scrape(self.addr()).value(name)
    }

    /// Scrapes until `condition` holds for the value of `name`; returns that value.
    fn wait_metric(&self, name: &str, what: &str, condition: impl Fn(f64) -> bool) -> f64 {
        let mut conn = Conn::connect(self.addr());
        let page = scrape_until(&mut conn, &format!("{} on {}", what, self.label), |page| {
            page.get(name).is_some_and(&condition)
        });
        page.value(name)
    }

    /// Waits (up to `within`) for the process to exit; returns its status.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let status = self.process.wait_exit(within);
        self.exited = true;
        status
    }

    /// Waits until the node's stream reader is connected to Redis.
    fn wait_connected(&self) {
        self.wait_metric(CONNECTED, "herald_redis_connected == 1", |v| v == 1.0);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if !self.exited {
                let _ = Command::new("kill")
                    .args(["-KILL", &self.process.pid().to_string()])
                    .status();
                self.process.wait_exit(Duration::from_secs(5));
            }
            eprintln!(
                "--- stderr of herald {} (pid {}) ---\n{}",
                self.label,
                self.process.pid(),
                self.process.stderr_lines().join("\n")
            );
        }
    }
}

/// What a subscriber saw of one event: (event type, data, last event id).
type Seen = (String, String, String);

fn seen(event: &SseEvent) -> Seen {
    (
        event.event_type.clone(),
        event.data.clone(),
        event.last_event_id.clone(),
    )
}

fn message(data: &str, id: &str) -> Seen {
    ("message".to_owned(), data.to_owned(), id.to_owned())
}

/// A stream id `ms-seq` as numbers, for ordering.
fn id_key(id: &str) -> (u64, u64) {
    split_id(id)
}

/// Asserts `ids` are strictly increasing as stream ids.
fn assert_strictly_increasing(ids: &[&str], who: &str) {
    for pair in ids.windows(2) {
        assert!(
            id_key(pair[0]) < id_key(pair[1]),
            "{who}: ids not strictly increasing in stream order: {} then {}",
            pair[0],
            pair[1]
        );
    }
}

/// How `got` differs from `expected`: the first differing event with its neighbours, or the
/// extra or missing tail; `None` when they are equal.
fn difference(got: &[Seen], expected: &[Seen]) -> Option<String> {
    if let Some(at) = (0..got.len().min(expected.len())).find(|&i| got[i] != expected[i]) {
        return Some(format!(
            "event {at} differs: got {:?}, expected {:?} (got {} events, expected {}; \
             got around it: {:?}; expected around it: {:?})",
            got[at],
            expected[at],
            got.len(),
            expected.len(),
            &got[at.saturating_sub(2)..(at + 3).min(got.len())],
            &expected[at.saturating_sub(2)..(at + 3).min(expected.len())]
        ));
    }
    (got.len() != expected.len()).then(|| {
        format!(
            "got {} events, expected {}; the first {} agree; extra got: {:?}; missing: {:?}",
            got.len(),
            expected.len(),
            got.len().min(expected.len()),
            got.get(expected.len()..).unwrap_or_default(),
            expected.get(got.len()..).unwrap_or_default()
        )
    })
}

/// Asserts two event lists are equal, reporting the first difference rather than both lists.
fn assert_same_events(got: &[Seen], expected: &[Seen], who: &str) {
    if let Some(difference) = difference(got, expected) {
        panic!("{who}: {difference}");
    }
}

/// Starts a private redis-server and one `herald serve --bus redis` node per
/// `(label, flags)` on `stream` (which also names Redis's directory); returns once every node
/// is connected. Bind the result as `let (redis, [a, b]) = ...`: the nodes, declared after
/// Redis, are dropped before it.
fn start_cluster<const N: usize>(
    stream: &str,
    nodes: [(&str, &[&str]); N],
) -> (RedisServer, [Node; N]) {
    let redis = RedisServer::start(stream);
    let nodes = nodes.map(|(label, flags)| Node::spawn(label, &redis.url(), stream, flags));
    for node in &nodes {
        node.wait_connected();
    }
    (redis, nodes)
}

/// Node A (default history) and node B, whose rings keep 2 events per topic so resumes
/// on it need the stream.
const A_AND_SMALL_RING_B: [(&str, &[&str]); 2] = [
    ("node A", &[]),
    ("node B (history 2)", &["--history-events", "2"]),
];

/// Publishes `data` to topic `topic` with a form body; returns the answered id.
fn publish_to(addr: SocketAddr, topic: &str, data: &str) -> String {
    publish_form(addr, &[("topic", topic), ("data", data)])
}

/// Publishes over HTTP and returns the raw answer (for publishes that may be refused).
fn try_publish(addr: SocketAddr, topic: &str, data: &str) -> Response {
    post(
        addr,
        "/publish",
        Some("application/x-www-form-urlencoded"),
        form(&[("topic", topic), ("data", data)]).as_bytes(),
    )
}

/// Reads the events before the one with data `sentinel` and returns them.
fn seen_before(subscriber: &mut Subscriber, sentinel: &str) -> Vec<Seen> {
    subscriber
        .events_before(sentinel)
        .iter()
        .map(seen)
        .collect()
}

/// Reads the events before the sentinel `end` and returns them.
fn seen_before_end(subscriber: &mut Subscriber) -> Vec<Seen> {
    seen_before(subscriber, "end")
}

fn resume_with_header(addr: SocketAddr, topics: &[&str], id: &str) -> Subscriber {
    Subscriber::open(addr, &events_target(topics, None), &[("Last-Event-ID", id)])
}

/// Asserts a refusal because Redis is unavailable: `503`, a numeric `Retry-After`, and one
/// line of text that mentions Redis.
fn assert_redis_unavailable(response: &Response, case: &str) {
    assert_error(response, 503, case);
    let retry_after = response.header("retry-after").unwrap_or_else(|| {
        panic!(
            "{case}: a 503 needs Retry-After; got {}",
            response.summary()
        )
    });
    assert!(
        !retry_after.is_empty() && retry_after.bytes().all(|b| b.is_ascii_digit()),
        "{case}: Retry-After must be delay-seconds, got {retry_after:?}"
    );
    assert!(
        response.body_text().to_ascii_lowercase().contains("redis"),
        "{case}: the reason must mention redis, got {:?}",
        response.body_text()
    );
}

const SCANNED: &str = "herald_redis_backfill_entries_scanned_total";

/// Asserts `got` (what one subscriber received) is exactly the acknowledged events `acked`
/// (in stream-id order) once one removes events whose publish was refused (their data is in
/// `maybe`: a refused publish may or may not have reached the stream). No data may arrive
/// twice, refused or not, and the ids must be strictly increasing.
fn assert_acknowledged_delivered(got: &[Seen], acked: &[Seen], maybe: &HashSet<String>, who: &str) {
    let ids: Vec<&str> = got.iter().map(|(_, _, id)| id.as_str()).collect();
    assert_strictly_increasing(&ids, who);
    let mut data_seen: HashSet<&str> = HashSet::new();
    for (_, data, id) in got {
        assert!(
            data_seen.insert(data.as_str()),
            "{who}: {data:?} arrived twice (again with id {id})"
        );
    }
    let kept: Vec<Seen> = got
        .iter()
        .filter(|(_, data, _)| !maybe.contains(data))
        .cloned()
        .collect();
    assert_same_events(&kept, acked, who);
}

/// Outcomes of a background publisher: (data, `Some(id)` if answered 200, `None` if 503).
type Outcomes = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Publishes `"{prefix} N"` to `topic` round the nodes in `addrs`, one at a time, until `stop`
/// is set or `limit` publishes were made. A `503` is recorded and retried after
/// [`RETRY_POLL`] (with new data); any other refusal fails the test.
fn steady_publisher(
    addrs: Vec<SocketAddr>,
    topic: &'static str,
    prefix: &'static str,
    limit: usize,
    stop: Arc<AtomicBool>,
    outcomes: Outcomes,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for n in 0..limit {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let data = format!("{prefix} {n}");
            let response = try_publish(addrs[n % addrs.len()], topic, &data);
            match response.status {
                200 => {
                    let id = id_from_text_answer(response.body_text());
                    outcomes.lock().unwrap().push((data, Some(id)));
                }
                503 => {
                    outcomes.lock().unwrap().push((data, None));
                    std::thread::sleep(RETRY_POLL);
                }
                _ => panic!("steady publish {data:?}: {}", response.summary()),
            }
        }
    })
}

fn accepted_count(outcomes: &Outcomes) -> usize {
    outcomes
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, id)| id.is_some())
        .count()
}
