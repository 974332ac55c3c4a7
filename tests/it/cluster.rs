#![allow(clippy::unwrap_used)]
//! Cluster mode (issue 5, part 5): several `herald serve --bus redis` processes share one
//! Redis stream, over real sockets, against a real `redis-server` each test starts for itself
//! (see `testkit::redis`; `.ci/deps` installs Debian's `redis-server`).
//!
//! - Fan-out: three nodes, subscribers and publishers on all of them; every subscriber gets
//!   every event of its topics exactly once, in stream-id order, with the ids the publishes
//!   were answered with (which are the stream's entry ids).
//! - Resume on another node: from its ring, from the stream when its ring is too short
//!   (`XRANGE` backfill), on a node started after the events, with an id the stream has
//!   trimmed (the gap event first, then what the stream keeps), while events keep coming (the
//!   seam between backfill and live events), and in parts when the backfill exceeds the lag
//!   budget.
//! - Redis crashes (SIGKILL) and restarts on the same port and AOF directory while a publisher
//!   keeps going: subscribers stay connected and get heartbeats, publishes get `503` with
//!   `Retry-After`, and afterwards every acknowledged event reaches every subscriber once, in
//!   order. A frozen Redis (SIGSTOP) holds a publish's answer until it acknowledged the XADD.
//! - Entries written by other Redis clients (`XADD`) are delivered; invalid ones are skipped
//!   and counted.
//! - A node starts while Redis is down and connects when it comes up; SIGTERM stops a node
//!   promptly with Redis up or down; bad settings exit 2.
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

// ---------------------------------------------------------------------------------------------
// 1. Fan-out across three nodes
// ---------------------------------------------------------------------------------------------

/// The publishes of the fan-out test: event `i` goes to `a`, `b` or both, some with an event
/// name, some with several lines of data.
struct Spec {
    topics: Vec<&'static str>,
    event: Option<&'static str>,
    data: String,
}

fn spec(i: usize) -> Spec {
    let topics = match i % 5 {
        0 | 1 => vec!["a"],
        2 | 3 => vec!["b"],
        _ => vec!["a", "b"],
    };
    let event = (i % 4 == 1).then_some("tick");
    let data = if i % 6 == 0 {
        format!("ev {i}\nsecond line of {i}\n\nafter a blank line")
    } else {
        format!("ev {i}")
    };
    Spec {
        topics,
        event,
        data,
    }
}

fn publish_spec(addr: SocketAddr, spec: &Spec) -> String {
    let mut pairs: Vec<(&str, &str)> = spec.topics.iter().map(|t| ("topic", *t)).collect();
    if let Some(event) = spec.event {
        pairs.push(("event", event));
    }
    pairs.push(("data", &spec.data));
    publish_form(addr, &pairs)
}

const FANOUT_EVENTS: usize = 300;
const FANOUT_PUBLISHERS: usize = 3;
const SUBSCRIBERS_PER_NODE: usize = 30;

#[test]
fn three_nodes_deliver_every_event_once_in_stream_order_with_the_published_ids() {
    let stream = "fanout";
    let (redis, nodes) = start_cluster(stream, [("node 0", &[]), ("node 1", &[]), ("node 2", &[])]);
    let topic_sets: [&[&str]; 3] = [&["a"], &["b"], &["a", "b"]];
    // (node, topic set, subscriber): ten of each set on every node.
    let mut subscribers: Vec<(usize, usize, Subscriber)> = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for k in 0..SUBSCRIBERS_PER_NODE {
            let set = k % topic_sets.len();
            subscribers.push((n, set, subscribe(node.addr(), topic_sets[set])));
        }
    }

    // Three publisher threads, each going round the three nodes; event i comes from thread
    // i % 3.
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let publishers: Vec<_> = (0..FANOUT_PUBLISHERS)
        .map(|t| {
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                (0..FANOUT_EVENTS / FANOUT_PUBLISHERS)
                    .map(|k| {
                        let i = t + FANOUT_PUBLISHERS * k;
                        (i, publish_spec(addrs[(t + k) % addrs.len()], &spec(i)))
                    })
                    .collect::<Vec<(usize, String)>>()
            })
        })
        .collect();
    let mut published: Vec<(usize, String)> = Vec::new();
    for (t, publisher) in publishers.into_iter().enumerate() {
        let ids = publisher
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        let in_order: Vec<&str> = ids.iter().map(|(_, id)| id.as_str()).collect();
        assert_strictly_increasing(
            &in_order,
            &format!("publisher {t}: one client's acknowledged publishes"),
        );
        published.extend(ids);
    }
    published.sort_by_key(|(_, id)| id_key(id));
    let all_ids: Vec<&str> = published.iter().map(|(_, id)| id.as_str()).collect();
    assert_strictly_increasing(&all_ids, "all publish answers (no id given twice)");

    // Each publish is one stream entry, whose id is the answered id.
    let mut redis_conn = redis.client();
    let entries = redis_conn.xrange(stream, "-", "+");
    let entry_ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        entry_ids, all_ids,
        "the stream's entries must be exactly the acknowledged publishes"
    );
    for (entry, (i, _)) in entries.iter().zip(&published) {
        let spec = spec(*i);
        assert_eq!(
            (entry.field("data"), entry.field("event")),
            (Some(spec.data.as_str()), spec.event),
            "stream entry {} of publish {i}: {:?}",
            entry.id,
            entry.fields
        );
    }

    let end = publish_form(addrs[1], &[("topic", "a"), ("topic", "b"), ("data", "end")]);
    let mut sequences_per_node: Vec<Vec<String>> = vec![Vec::new(); nodes.len()];
    for (k, (n, set, subscriber)) in subscribers.iter_mut().enumerate() {
        let topics = topic_sets[*set];
        let expected: Vec<Seen> = published
            .iter()
            .filter_map(|(i, id)| {
                let spec = spec(*i);
                spec.topics.iter().any(|t| topics.contains(t)).then(|| {
                    (
                        spec.event.unwrap_or("message").to_owned(),
                        spec.data,
                        id.clone(),
                    )
                })
            })
            .collect();
        let who = format!("subscriber {k} on node {n}, topics {topics:?}");
        let got = seen_before_end(subscriber);
        assert_same_events(&got, &expected, &who);
        assert_eq!(subscriber.last_event_id(), end, "{who}: the sentinel's id");
        if topics.len() == 2 {
            let ids: Vec<String> = got.into_iter().map(|(_, _, id)| id).collect();
            if sequences_per_node[*n].is_empty() {
                sequences_per_node[*n] = ids;
            } else {
                assert_eq!(sequences_per_node[*n], ids, "{who}: differs from its node");
            }
        }
    }
    for (n, ids) in sequences_per_node.iter().enumerate() {
        assert_eq!(
            ids, &sequences_per_node[0],
            "node {n} delivered another id sequence than node 0"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Resume on another node
// ---------------------------------------------------------------------------------------------

#[test]
fn resume_on_another_node_from_its_ring() {
    let (_redis, [a, b]) = start_cluster("resume-ring", [("node A", &[]), ("node B", &[])]);
    let nodes = [a.addr(), b.addr()];
    let mut reader = subscribe(a.addr(), &["r"]);
    let mut witness = subscribe(b.addr(), &["r"]);
    let data: Vec<String> = (1..=10).map(|i| format!("e{i}")).collect();

    let mut ids = Vec::new();
    for (i, d) in data[..5].iter().enumerate() {
        ids.push(publish_to(nodes[i % 2], "r", d));
    }
    let expected: Vec<Seen> = (0..5).map(|i| message(&data[i], &ids[i])).collect();
    let got: Vec<Seen> = reader.events(5).iter().map(seen).collect();
    assert_same_events(&got, &expected, "the reader on A");
    assert_eq!(reader.last_event_id(), ids[4]);
    drop(reader);

    for (i, d) in data[5..].iter().enumerate() {
        ids.push(publish_to(nodes[i % 2], "r", d));
    }
    let all: Vec<Seen> = (0..10).map(|i| message(&data[i], &ids[i])).collect();
    let got: Vec<Seen> = witness.events(10).iter().map(seen).collect();
    assert_same_events(&got, &all, "the witness on B");

    let backfills = b.metric(BACKFILLS);
    let mut resumed = resume_with_header(b.addr(), &["r"], &ids[4]);
    let end = publish_to(a.addr(), "r", "end");
    assert_same_events(
        &seen_before_end(&mut resumed),
        &all[5..],
        "resume on B after e5 (B's ring holds e1..e10)",
    );
    assert_eq!(resumed.last_event_id(), end, "then the live event");
    assert_eq!(
        b.metric(BACKFILLS),
        backfills,
        "B's ring held every missed event: the resume must not read the stream"
    );
}

#[test]
fn resume_older_than_the_nodes_ring_is_backfilled_from_the_stream() {
    let stream = "resume-backfill";
    let (_redis, [a, b]) = start_cluster(stream, A_AND_SMALL_RING_B);
    let nodes = [a.addr(), b.addr()];
    let mut reader = subscribe(a.addr(), &["r"]);
    let mut witness = subscribe(b.addr(), &["r"]);
    let data: Vec<String> = (1..=12).map(|i| format!("e{i}")).collect();

    let mut ids = Vec::new();
    for (i, d) in data[..5].iter().enumerate() {
        ids.push(publish_to(nodes[i % 2], "r", d));
    }
    let got: Vec<Seen> = reader.events(5).iter().map(seen).collect();
    let expected: Vec<Seen> = (0..5).map(|i| message(&data[i], &ids[i])).collect();
    assert_same_events(&got, &expected, "the reader on A");
    drop(reader);

    // e6..e12, with events of another topic in between (the backfill must leave them out).
    for (i, d) in data[5..].iter().enumerate() {
        ids.push(publish_to(nodes[i % 2], "r", d));
        if i % 2 == 0 {
            publish_to(nodes[(i + 1) % 2], "other", &format!("other {i}"));
        }
    }
    let all: Vec<Seen> = (0..12).map(|i| message(&data[i], &ids[i])).collect();
    let got: Vec<Seen> = witness.events(12).iter().map(seen).collect();
    assert_same_events(&got, &all, "the witness on B");

    let backfills = b.metric(BACKFILLS);
    let mut resumed = resume_with_header(b.addr(), &["r"], &ids[4]);
    let end = publish_to(a.addr(), "r", "end");
    assert_same_events(
        &seen_before_end(&mut resumed),
        &all[5..],
        "resume on B after e5 (B's ring holds only e11, e12)",
    );
    assert_eq!(resumed.last_event_id(), end, "then the live event");
    let after = b.metric(BACKFILLS);
    assert!(
        after > backfills,
        "{BACKFILLS} on B must go up for a resume older than its ring: {backfills} -> {after}"
    );
}

#[test]
fn a_node_started_after_the_events_serves_the_resume_from_the_stream() {
    let stream = "resume-late-node";
    let (redis, [a]) = start_cluster(stream, [("node A", &[])]);
    let topics = ["r", "s"];
    let mut reader = subscribe(a.addr(), &topics);
    let data: Vec<String> = (1..=6).map(|i| format!("e{i}")).collect();

    let mut ids = Vec::new();
    for (i, d) in data[..3].iter().enumerate() {
        ids.push(publish_to(a.addr(), topics[i % 2], d));
    }
    let all: Vec<Seen> = (0..3).map(|i| message(&data[i], &ids[i])).collect();
    let got: Vec<Seen> = reader.events(3).iter().map(seen).collect();
    assert_same_events(&got, &all, "the reader on A");
    drop(reader);
    for (i, d) in data[3..].iter().enumerate() {
        ids.push(publish_to(a.addr(), topics[(i + 1) % 2], d));
        publish_to(a.addr(), "unrelated", &format!("unrelated {i}"));
    }
    let all: Vec<Seen> = (0..6).map(|i| message(&data[i], &ids[i])).collect();

    let c = Node::spawn("node C (started later)", &redis.url(), stream, &[]);
    c.wait_connected();
    // A subscriber without Last-Event-ID gets only live events, not the stream's past.
    let mut fresh = subscribe(c.addr(), &topics);
    let backfills = c.metric(BACKFILLS);
    // Resume by query parameter this time, on both topics.
    let mut resumed = Subscriber::open(c.addr(), &events_target(&topics, Some(&ids[2])), &[]);
    let end = publish_to(c.addr(), "s", "end");
    assert_same_events(
        &seen_before_end(&mut resumed),
        &all[3..],
        "resume on C (started after e1..e6) after e3",
    );
    assert_eq!(resumed.last_event_id(), end, "then the live event");
    let got = seen_before_end(&mut fresh);
    assert!(
        got.is_empty(),
        "a new subscriber on C got old events {got:?}"
    );
    assert_eq!(fresh.last_event_id(), end);
    let after = c.metric(BACKFILLS);
    assert!(
        after > backfills,
        "{BACKFILLS} on C must go up: it never saw e4..e6 live ({backfills} -> {after})"
    );
}

#[test]
fn resumes_backfilled_while_events_keep_coming_have_no_gap_and_no_duplicate() {
    let stream = "resume-seam";
    let (_redis, [a, b]) = start_cluster(stream, A_AND_SMALL_RING_B);
    let mut witness = subscribe(b.addr(), &["r"]);
    let mut all: Vec<Seen> = Vec::new();
    for i in 0..20 {
        let data = format!("first {i}");
        let id = publish_to(a.addr(), "r", &data);
        all.push(message(&data, &id));
    }
    let got: Vec<Seen> = witness.events(all.len()).iter().map(seen).collect();
    assert_same_events(&got, &all, "the witness on B");

    // While a publisher keeps going on A, clients resume on B from ids B's ring no longer
    // holds: each answer is a backfill from the stream joined to the live events.
    let stop = Arc::new(AtomicBool::new(false));
    let steady: Outcomes = Arc::default();
    let steady_thread = steady_publisher(
        vec![a.addr()],
        "r",
        "steady",
        2_000,
        stop.clone(),
        steady.clone(),
    );
    let backfills = b.metric(BACKFILLS);
    let mut resumed: Vec<(usize, Subscriber)> = Vec::new();
    for j in (0..16).step_by(2) {
        wait_until("the steady publisher to move on", || {
            accepted_count(&steady) >= j * 3
        });
        resumed.push((j, resume_with_header(b.addr(), &["r"], &all[j].2)));
    }
    let steady_now = accepted_count(&steady);
    wait_until("more steady publishes after the last resume", || {
        accepted_count(&steady) >= steady_now + 20
    });
    stop.store(true, Ordering::Release);
    steady_thread
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    for (data, id) in std::mem::take(&mut *steady.lock().unwrap()) {
        let id = id.unwrap_or_else(|| panic!("steady publish {data:?} was refused"));
        all.push(message(&data, &id));
    }
    let end = publish_to(a.addr(), "r", "end");

    assert_same_events(
        &seen_before_end(&mut witness),
        &all[20..],
        "the witness on B",
    );
    // Every resume is checked before failing, so a failure shows how many went wrong.
    let mut failures = Vec::new();
    for (j, subscriber) in &mut resumed {
        let got = seen_before_end(subscriber);
        if let Some(difference) = difference(&got, &all[*j + 1..]) {
            failures.push(format!("resume after event {j}: {difference}"));
        }
        assert_eq!(subscriber.last_event_id(), end, "resume after event {j}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} resumes on B while events kept coming were wrong:\n{}",
        failures.len(),
        resumed.len(),
        failures.join("\n")
    );
    let after = b.metric(BACKFILLS);
    assert!(
        after >= backfills + resumed.len() as f64,
        "{BACKFILLS} on B: {backfills} -> {after} for {} resumes older than its ring",
        resumed.len()
    );
}

const TRIM_EVENTS: usize = 500;

/// The gap event comes at once, without reading the stream for the client's topics (an id
/// older than the stream cannot make the backfiller read all of it); then what the node's
/// rings keep (issue 10, item 11).
#[test]
fn resume_with_an_id_the_stream_has_trimmed_gets_the_gap_event_then_what_the_node_keeps() {
    let stream = "resume-trimmed";
    let small: &[&str] = &["--redis-maxlen", "10", "--history-events", "5"];
    let (redis, [a, b]) = start_cluster(stream, [("node A", small), ("node B", small)]);
    let mut reader = subscribe(a.addr(), &["r"]);
    let first = publish_to(a.addr(), "r", "e1");
    let event = reader.next_event("e1 on A");
    assert_eq!(seen(&event), message("e1", &first));
    drop(reader);

    // XADD MAXLEN ~ trims whole macro nodes, lazily: publish plenty, from four clients.
    let addrs = [a.addr(), b.addr()];
    let publishers: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for k in 0..(TRIM_EVENTS - 1) / 4 + 1 {
                    let i = 2 + t + 4 * k;
                    if i <= TRIM_EVENTS {
                        publish_to(addrs[(t + k) % 2], "r", &format!("e{i}"));
                    }
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
    }

    let mut redis_conn = redis.client();
    let length = redis_conn.xlen(stream);
    assert!(
        length < TRIM_EVENTS as i64,
        "--redis-maxlen 10 must trim the stream; XLEN is {length} after {TRIM_EVENTS} publishes"
    );
    assert!(
        redis_conn.xrange(stream, &first, &first).is_empty(),
        "e1 ({first}) must be trimmed from the stream"
    );
    let kept = redis_conn.xrange(stream, "-", "+");
    let first_entry: Option<(String, redis::Value)> =
        redis_conn.xinfo_stream(stream, "first-entry");
    assert_eq!(
        first_entry.map(|(id, _)| id).as_deref(),
        Some(kept[0].id.as_str()),
        "XINFO STREAM first-entry"
    );
    assert!(id_key(&kept[0].id) > id_key(&first));
    // B's rings keep the 5 newest events of `r`.
    assert!(kept.len() > 5, "the stream keeps more than B's rings");
    let expected: Vec<Seen> = kept[kept.len() - 5..]
        .iter()
        .map(|entry| message(entry.field("data").unwrap(), &entry.id))
        .collect();
    let scanned = b.metric(SCANNED);

    let backfills = b.metric(BACKFILLS);
    let mut resumed = resume_with_header(b.addr(), &["r"], &first);
    let gap = resumed.next_event("the gap event");
    assert_eq!(
        (gap.event_type.as_str(), gap.data.as_str()),
        ("gap", format!("{{\"lastEventId\":\"{first}\"}}").as_str()),
        "a resume from a trimmed id starts with the gap event"
    );
    let end = publish_to(b.addr(), "r", "end");
    assert_same_events(
        &seen_before_end(&mut resumed),
        &expected,
        "after the gap event: what B's rings keep",
    );
    assert_eq!(b.metric(SCANNED), scanned, "no stream entry was read");
    assert_eq!(resumed.last_event_id(), end, "then the live event");
    let after = b.metric(BACKFILLS);
    assert!(
        after > backfills,
        "{BACKFILLS} on B must go up: its ring holds 5 events, the stream {} ({backfills} -> {after})",
        kept.len()
    );
}

/// Entries in the stream of the resume-amplification test.
const AMPLIFY_ENTRIES: usize = 60_000;
/// Hostile resumes in that test (all from one address).
const AMPLIFY_HOSTILE: usize = 60;
/// Entries one backfill reads at most (the bus's `BACKFILL_SCAN_MAX`).
const BACKFILL_SCAN_MAX: usize = 4_096;
const SCANNED: &str = "herald_redis_backfill_entries_scanned_total";

/// Issue 10, item 11: resumes cannot make the node's backfiller read the whole stream for
/// one client, nor make other clients wait behind them. On a 60,000-entry stream:
/// - `Last-Event-ID: 0-1` (older than the stream) gets the gap event at once, reading no
///   entry;
/// - a resume from the first entry on a topic with no events reads at most one scan budget
///   of entries, then moves the client's last id to the last entry read (`id:`), sends a
///   short `retry:` and closes, so the client continues from there;
/// - 60 such resumes from one address, then one legitimate resume from another: the
///   legitimate one is served in its turn, not after the 60 (order of completion).
#[test]
fn issue_10_hostile_resumes_are_bounded_and_do_not_starve_other_clients() {
    let redis = RedisServer::start("amplify");
    let stream = "amplify";
    let mut admin = redis.client();
    let count = AMPLIFY_ENTRIES.to_string();
    admin.command::<()>(&[
        "EVAL",
        "for i = 1, tonumber(ARGV[1]) do \
         redis.call('XADD', KEYS[1], '*', 'topic', 'busy', 'data', 'e' .. i) end",
        "1",
        stream,
        &count,
    ]);
    let head = admin.xrange_count(stream, "-", "+", BACKFILL_SCAN_MAX + 1);
    let first = head[0].id.clone();
    let last_of_first_scan = head[BACKFILL_SCAN_MAX].id.clone();
    let tail = admin.xrevrange_count(stream, "+", "-", 100);
    // The node starts after the entries: every resume here is served from the stream.
    let node = Node::spawn("node", &redis.url(), stream, &[]);
    node.wait_connected();

    let scanned = node.metric(SCANNED);
    let mut early = resume_with_header(node.addr(), &["quiet"], "0-1");
    let gap = early.next_event("the gap event for 0-1");
    assert_eq!(gap.event_type, "gap");
    assert_eq!(
        node.metric(SCANNED),
        scanned,
        "an id older than the stream reads no entry"
    );
    drop(early);

    // One hostile resume alone: one scan budget, then an id to continue from.
    let target = events_target(&["quiet"], None);
    let mut probe = Subscriber::open(node.addr(), &target, &[("Last-Event-ID", &first)]);
    let events = probe.read_to_close("the first part of a resume on a quiet topic");
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(
        probe.last_event_id(),
        last_of_first_scan,
        "the client continues after the last entry read"
    );
    assert_eq!(probe.retry_ms(), Some(100), "and comes back shortly");
    assert_eq!(node.metric(SCANNED), scanned + BACKFILL_SCAN_MAX as f64);

    let (done, order) = mpsc::channel::<(String, u16)>();
    let hostile_ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let addr = node.addr();
    let mut threads = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..AMPLIFY_HOSTILE {
        let (done, target, first) = (done.clone(), target.clone(), first.clone());
        let mut conn = Conn::connect_with(addr, Some(hostile_ip), None);
        sockets.push(conn.try_clone_stream());
        threads.push(std::thread::spawn(move || {
            conn.send(build_request(
                "GET",
                &target,
                &[("Last-Event-ID", &first)],
                b"",
            ));
            // Read to the close (the end of a part, or the test shutting the socket down).
            let mut answer = Vec::new();
            while let Some(bytes) = conn.read_some("a hostile resume") {
                answer.extend_from_slice(&bytes);
            }
            let status = match answer.get(9..12) {
                Some(code) => String::from_utf8_lossy(code).parse().unwrap_or(0),
                None => 0, // Cut off by the test before it was served.
            };
            let _ = done.send(("hostile".to_owned(), status));
        }));
    }
    // The backfiller is busy with them before the legitimate resume arrives.
    node.wait_metric(SCANNED, "hostile resumes being read", |v| {
        v > scanned + BACKFILL_SCAN_MAX as f64
    });
    let resume_from = tail[tail.len() - 1].id.clone();
    let expected: Vec<Seen> = tail[..tail.len() - 1]
        .iter()
        .rev()
        .map(|entry| message(entry.field("data").unwrap(), &entry.id))
        .collect();
    let legit_ip: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let conn = Conn::connect_with(addr, Some(legit_ip), None);
    let mut legit = Subscriber::open_on(
        conn,
        &events_target(&["busy"], None),
        &[("Last-Event-ID", &resume_from)],
    );
    let got: Vec<Seen> = legit.events(expected.len()).iter().map(seen).collect();
    let _ = done.send(("legit".to_owned(), 200));
    assert_same_events(&got, &expected, "the legitimate resume");
    let mut before = 0;
    let mut refused = 0;
    for _ in 0..=AMPLIFY_HOSTILE {
        let (who, status) = order
            .recv_timeout(DEADLINE)
            .expect("every resume completes");
        match (who.as_str(), status) {
            ("legit", _) => break,
            (_, 200) => before += 1,
            (_, 503) => refused += 1,
            (_, other) => panic!("a hostile resume got {other}"),
        }
    }
    assert!(
        before <= 4,
        "{before} hostile resumes (of {AMPLIFY_HOSTILE}; {refused} refused) completed before \
         the legitimate one: it must be served in its turn"
    );
    for socket in sockets {
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn a_backfill_bigger_than_the_lag_budget_comes_in_parts_that_add_up_exactly() {
    let stream = "resume-parts";
    let small_budget: &[&str] = &[
        "--history-events",
        "2",
        "--max-publish-bytes",
        "16KiB",
        "--max-lag-bytes",
        "64KiB",
    ];
    let (_redis, [a, b]) = start_cluster(
        stream,
        [
            ("node A", &[]),
            ("node B (history 2, 64 KiB lag budget)", small_budget),
        ],
    );
    // 100 events of 2 KiB, then `end`: about 200 KiB to backfill, over three times B's lag
    // budget.
    let mut witness = subscribe(b.addr(), &["r"]);
    let mut all: Vec<Seen> = Vec::new();
    for i in 0..100 {
        let data = format!("{i:04} {}", "x".repeat(2048));
        let id = publish_to(a.addr(), "r", &data);
        all.push(message(&data, &id));
    }
    let end = publish_to(a.addr(), "r", "end");
    assert_same_events(&seen_before_end(&mut witness), &all, "the witness on B");

    // Resume like an EventSource: reconnect with the last id after each close, until `end`.
    let mut got: Vec<Seen> = Vec::new();
    let mut last = all[0].2.clone();
    let mut parts = 0;
    loop {
        parts += 1;
        assert!(
            parts <= 20,
            "after 20 parts only {} of {} events arrived",
            got.len(),
            all.len() - 1
        );
        let (events, ended) = read_part(b.addr(), "r", &last);
        assert!(
            ended.is_some() || !events.is_empty(),
            "part {parts} closed without an event (resuming after {last})"
        );
        if let Some(event) = events.iter().find(|e| e.event_type != "message") {
            panic!("part {parts}: unexpected {event:?}");
        }
        if let Some(event) = events.last() {
            last = event.last_event_id.clone();
        }
        got.extend(events.iter().map(seen));
        if let Some(end_id) = ended {
            assert_eq!(end_id, end, "the end's id");
            break;
        }
    }
    assert!(
        parts > 1,
        "a 200 KiB backfill must not fit a 64 KiB lag budget in one part"
    );
    assert_same_events(&got, &all[1..], &format!("the {parts} parts"));
}

/// One resume on `addr` after `last_id`, read until the event with data `end` (its id is
/// returned, the event itself is not in the list) or until the server closes the stream
/// (`None`).
fn read_part(addr: SocketAddr, topic: &str, last_id: &str) -> (Vec<SseEvent>, Option<String>) {
    let mut conn = Conn::connect(addr);
    conn.send(build_request(
        "GET",
        &events_target(&[topic], None),
        &[("Last-Event-ID", last_id)],
        b"",
    ));
    let head = conn.read_head("the head of a resume");
    assert_eq!(
        head.status,
        200,
        "resume after {last_id}: {}",
        head.summary()
    );
    let mut parser = SseCollector::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        let Some(bytes) = conn.read_some(&format!("the resume after {last_id}")) else {
            return (events, None);
        };
        for event in parser.feed(&bytes) {
            if event.data == "end" {
                return (events, Some(event.last_event_id));
            }
            events.push(event);
        }
    }
    panic!("the resume after {last_id} neither closed nor sent `end` within {DEADLINE:?}");
}

#[test]
fn sigterm_stops_redis_nodes_promptly_with_redis_up_or_down() {
    let redis = RedisServer::start("shutdown");
    let stream = "shutdown";
    let flags = [
        "--retry-ms",
        "1000",
        "--shutdown-retry-window-ms",
        "1000",
        "--shutdown-timeout-ms",
        "3000",
    ];
    let dead_url = format!("redis://127.0.0.1:{}/0", free_port().unwrap());
    let mut nodes = [
        Node::spawn("node with Redis", &redis.url(), stream, &flags),
        Node::spawn("node without Redis", &dead_url, stream, &flags),
    ];
    nodes[0].wait_connected();
    let mut subscribers: Vec<Subscriber> =
        nodes.iter().map(|n| subscribe(n.addr(), &["t"])).collect();
    let id = publish_to(nodes[0].addr(), "t", "before");
    assert_eq!(
        seen(&subscribers[0].next_event("the event before SIGTERM")),
        message("before", &id)
    );
    for node in &nodes {
        node.process.signal("TERM");
    }
    for (node, subscriber) in nodes.iter_mut().zip(&mut subscribers) {
        let started = Instant::now();
        let status = node.wait_exit(Duration::from_secs(8));
        let took = started.elapsed();
        assert!(
            status.success(),
            "{}: exit status {status:?} after SIGTERM",
            node.label
        );
        assert!(
            took < Duration::from_secs(4),
            "{}: took {took:?} to exit with --shutdown-timeout-ms 3000",
            node.label
        );
        let events = subscriber.read_to_close(&format!("the close on {}", node.label));
        assert!(events.is_empty(), "{}: {events:?}", node.label);
        let hint = subscriber.closing_retry_hint();
        assert!(
            (1000..=2000).contains(&hint),
            "{}: shutdown hint retry: {hint}",
            node.label
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Redis crashes and restarts
// ---------------------------------------------------------------------------------------------

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

#[test]
fn redis_crash_and_restart_keeps_subscribers_and_loses_no_acknowledged_event() {
    let stream = "outage";
    let heartbeat: &[&str] = &["--heartbeat-ms", "200"];
    let short_ring: &[&str] = &["--heartbeat-ms", "200", "--history-events", "2"];
    let (mut redis, nodes) = start_cluster(
        stream,
        [
            ("node 0", heartbeat),
            ("node 1", heartbeat),
            ("node 2 (history 2)", short_ring),
        ],
    );
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let mut subscribers: Vec<(usize, Subscriber)> = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for _ in 0..2 {
            subscribers.push((n, subscribe(node.addr(), &["k"])));
        }
    }

    // Before the crash.
    let mut before: Vec<Seen> = Vec::new();
    for i in 0..10 {
        let data = format!("before {i}");
        let id = publish_to(addrs[i % 3], "k", &data);
        before.push(message(&data, &id));
    }
    for (k, (n, subscriber)) in subscribers.iter_mut().enumerate() {
        let got: Vec<Seen> = subscriber.events(before.len()).iter().map(seen).collect();
        assert_same_events(
            &got,
            &before,
            &format!("subscriber {k} on node {n}, before"),
        );
    }

    // A publisher keeps going round the nodes through the crash and the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let steady: Outcomes = Arc::default();
    let steady_thread = steady_publisher(
        addrs.clone(),
        "k",
        "steady",
        5_000,
        stop.clone(),
        steady.clone(),
    );
    wait_until("a few steady publishes before the crash", || {
        accepted_count(&steady) >= 10
    });

    redis.kill();
    for node in &nodes {
        node.wait_metric(
            CONNECTED,
            "herald_redis_connected == 0 with Redis down",
            |v| v == 0.0,
        );
    }
    for (k, (n, subscriber)) in subscribers.iter_mut().enumerate() {
        let comments = subscriber.comments().len();
        subscriber.wait_for_comments(
            comments + 1,
            &format!("a heartbeat on subscriber {k} (node {n}) while Redis is down"),
        );
    }
    // Redis is dead: these can only be refused, and must never show up later.
    let mut never: HashSet<String> = HashSet::new();
    for (n, addr) in addrs.iter().enumerate() {
        let data = format!("while down {n}");
        let response = try_publish(*addr, "k", &data);
        assert_redis_unavailable(&response, &format!("POST /publish on node {n}, Redis down"));
        never.insert(data);
    }
    // A resume older than node 2's ring needs the stream: refused while Redis is down.
    let refused = Subscriber::try_open_on(
        Conn::connect(addrs[2]),
        &events_target(&["k"], None),
        &[("Last-Event-ID", &before[0].2)],
    );
    match refused {
        Ok(subscriber) => panic!(
            "a resume needing a backfill was accepted with Redis down; it got {:?}",
            subscriber.pending_events()
        ),
        Err(response) => assert_redis_unavailable(
            &response,
            "resume on node 2 older than its ring, Redis down",
        ),
    }
    // A resume inside node 0's ring needs no Redis.
    let mut resumed = resume_with_header(addrs[0], &["k"], &before[5].2);
    let got: Vec<Seen> = resumed.events(4).iter().map(seen).collect();
    assert_same_events(
        &got,
        &before[6..],
        "resume inside node 0's ring with Redis down",
    );

    redis.restart();
    // Straight away, before the nodes' readers are back: an entry from another client.
    let external = redis
        .client()
        .xadd(stream, &[("topic", "k"), ("data", "external")]);
    let mut acked: Vec<Seen> = vec![message("external", &external)];
    // Publish round the nodes until each has had one accepted; refusals meanwhile are fine.
    let mut maybe: HashSet<String> = HashSet::new();
    let mut accepted = [false; 3];
    let deadline = Instant::now() + DEADLINE;
    let mut attempt = 0;
    while !accepted.iter().all(|a| *a) {
        assert!(
            Instant::now() < deadline,
            "publishes were not accepted on every node within {DEADLINE:?} of Redis restarting \
             (accepted: {accepted:?})"
        );
        let n = attempt % 3;
        let data = format!("recovering {attempt}");
        let response = try_publish(addrs[n], "k", &data);
        match response.status {
            200 => {
                acked.push(message(&data, &id_from_text_answer(response.body_text())));
                accepted[n] = true;
            }
            503 => {
                maybe.insert(data);
                std::thread::sleep(RETRY_POLL);
            }
            _ => panic!(
                "publish on node {n} while Redis restarts: {}",
                response.summary()
            ),
        }
        attempt += 1;
    }
    let steady_now = accepted_count(&steady);
    wait_until("the steady publisher to get through again", || {
        accepted_count(&steady) >= steady_now + 10
    });
    stop.store(true, Ordering::Release);
    steady_thread
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let steady = std::mem::take(&mut *steady.lock().unwrap());
    let steady_refused = steady.iter().filter(|(_, id)| id.is_none()).count();
    assert!(
        steady_refused > 0,
        "the steady publisher never saw Redis down ({} publishes)",
        steady.len()
    );
    for (data, id) in steady {
        match id {
            Some(id) => acked.push(message(&data, &id)),
            None => {
                maybe.insert(data);
            }
        }
    }
    for i in 0..10 {
        let data = format!("after {i}");
        let id = publish_to(addrs[i % 3], "k", &data);
        acked.push(message(&data, &id));
    }
    let end = publish_to(addrs[1], "k", "end");
    acked.sort_by_key(|(_, _, id)| id_key(id));

    // Every acknowledged event is in the stream (the AOF kept what was fsynced).
    let stream_ids: HashSet<String> = redis
        .client()
        .xrange(stream, "-", "+")
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    for (_, data, id) in &acked {
        assert!(
            stream_ids.contains(id),
            "acknowledged {data:?} ({id}) is not in the stream"
        );
    }

    let mut readers: Vec<(String, &mut Subscriber)> = subscribers
        .iter_mut()
        .enumerate()
        .map(|(k, (n, s))| (format!("subscriber {k} on node {n}, through the crash"), s))
        .collect();
    readers.push((
        "the subscriber that resumed on node 0 while Redis was down".to_owned(),
        &mut resumed,
    ));
    for (who, subscriber) in readers {
        let got = seen_before_end(subscriber);
        if let Some((_, data, id)) = got.iter().find(|(_, data, _)| never.contains(data)) {
            panic!("{who}: {data:?} ({id}) was refused while Redis was dead, yet delivered");
        }
        assert_acknowledged_delivered(&got, &acked, &maybe, &who);
        assert_eq!(subscriber.last_event_id(), end, "{who}");
    }
    for node in &nodes {
        node.wait_connected();
        let reconnects = node.metric(RECONNECTS);
        assert!(
            reconnects > 0.0,
            "{RECONNECTS} on {} must count the reconnect, is {reconnects}",
            node.label
        );
    }
}

/// How long a publish is watched for a premature answer while Redis is frozen: the
/// observation window of the behaviour under test, not a synchronisation.
const FROZEN_WINDOW: Duration = Duration::from_millis(1_000);

#[test]
fn a_publish_is_answered_only_after_redis_acknowledged_it() {
    let (redis, [node]) = start_cluster("frozen", [("node", &["--heartbeat-ms", "200"])]);
    let mut subscriber = subscribe(node.addr(), &["t"]);
    let before = publish_to(node.addr(), "t", "before");
    assert_eq!(
        seen(&subscriber.next_event("the event before")),
        message("before", &before)
    );

    // Freeze Redis (SIGSTOP): its socket stays open, it just does not answer.
    redis.signal("STOP");
    let mut conn = Conn::connect(node.addr());
    conn.send(post_request(
        "/publish",
        Some("application/x-www-form-urlencoded"),
        b"topic=t&data=held",
        &[("Connection", "close")],
    ));
    let mut raw = conn.try_clone_stream();
    raw.set_read_timeout(Some(FROZEN_WINDOW)).unwrap();
    let mut early = [0u8; 1024];
    let early = match raw.read(&mut early) {
        Ok(n) => early[..n].to_vec(),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Vec::new(),
        Err(e) => panic!("reading the held publish's answer: {e}"),
    };
    // The subscriber keeps getting heartbeats meanwhile.
    let comments = subscriber.comments().len();
    subscriber.wait_for_comments(comments + 1, "a heartbeat while Redis is frozen");
    redis.signal("CONT");
    if !early.is_empty() {
        let text = String::from_utf8_lossy(&early);
        assert!(
            !text.starts_with("HTTP/1.1 200"),
            "the publish was answered 200 while Redis was frozen: {text:?}"
        );
        assert!(
            text.starts_with("HTTP/1.1 503"),
            "a publish while Redis is frozen may only be refused with 503, got {text:?}"
        );
        return; // Refused, so not acknowledged: nothing more to check.
    }
    let response = conn.read_response("the held publish's answer after Redis resumed");
    let after = publish_to(node.addr(), "t", "after");
    let got = seen_before(&mut subscriber, "after");
    match response.status {
        200 => {
            let held = id_from_text_answer(response.body_text());
            assert_same_events(
                &got,
                &[message("held", &held)],
                "the publish answered 200 after Redis resumed",
            );
        }
        503 => assert!(
            got.iter().all(|(_, data, _)| data == "held"),
            "unexpected events {got:?}"
        ),
        _ => panic!("the held publish: {}", response.summary()),
    }
    assert_eq!(subscriber.last_event_id(), after);
}

// ---------------------------------------------------------------------------------------------
// 4. Entries other Redis clients add
// ---------------------------------------------------------------------------------------------

#[test]
fn entries_added_with_xadd_reach_every_node_and_invalid_ones_are_skipped_and_counted() {
    let stream = "external";
    let small_publishes: &[&str] = &["--max-publish-bytes", "4KiB"];
    let (redis, nodes) = start_cluster(
        stream,
        [
            ("node 0", small_publishes),
            ("node 1", small_publishes),
            ("node 2", small_publishes),
        ],
    );
    let topic_sets: [&[&str]; 3] = [&["a"], &["b"], &["a", "b"]];
    let mut subscribers: Vec<(String, Subscriber)> = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for topics in topic_sets {
            subscribers.push((
                format!("subscriber on node {n}, topics {topics:?}"),
                subscribe(node.addr(), topics),
            ));
        }
    }

    let mut redis_conn = redis.client();
    let note = redis_conn.xadd(
        stream,
        &[
            ("topic", "a,b"),
            ("event", "note"),
            ("data", "line1\nline2"),
        ],
    );
    for (who, subscriber) in &mut subscribers {
        let event = subscriber.next_event(&format!("the XADDed note on the {who}"));
        assert_eq!(
            seen(&event),
            ("note".to_owned(), "line1\nline2".to_owned(), note.clone()),
            "{who}"
        );
    }

    // Invalid entries: a topic with a space, no topic at all, an event name with a newline,
    // data that is not UTF-8, data over --max-publish-bytes.
    let too_big = vec![b'x'; 5_000];
    let invalid: [&[(&[u8], &[u8])]; 5] = [
        &[(b"topic", b"a,b"), (b"data", &too_big)],
        &[(b"topic", b"has space"), (b"data", b"bad 1")],
        &[(b"data", b"bad 2"), (b"event", b"note")],
        &[
            (b"topic", b"a,b"),
            (b"event", b"two\nlines"),
            (b"data", b"bad 3"),
        ],
        &[(b"topic", b"a,b"), (b"data", b"bad \xff\xfe 4")],
    ];
    for fields in invalid {
        redis_conn.xadd_bytes(stream, fields);
    }
    // Valid: the topic field repeated, a retry field and an unknown field.
    let after = redis_conn.xadd(
        stream,
        &[
            ("topic", "a"),
            ("topic", "b"),
            ("source", "billing"),
            ("retry", "1500"),
            ("data", "after"),
        ],
    );
    for (who, subscriber) in &mut subscribers {
        let event =
            subscriber.next_event(&format!("the entry after the invalid ones on the {who}"));
        assert_eq!(seen(&event), message("after", &after), "{who}");
        assert_eq!(subscriber.retry_ms(), Some(1500), "{who}: the retry field");
    }
    // A JSON publish on one node, as a mix with the XADDed entries: answered with
    // {"id":"<stream id>"}, delivered everywhere with that id.
    let response = post(
        nodes[1].addr(),
        "/publish",
        Some("application/json"),
        br#"{"topic":["a","b"],"event":"j","data":{"x":1}}"#,
    );
    assert_eq!(response.status, 200, "JSON publish: {}", response.summary());
    let json_id = id_from_json_answer(response.body_text());
    assert!(
        id_key(&json_id) > id_key(&after),
        "the JSON publish's id {json_id} must follow {after}"
    );
    publish_form(
        nodes[0].addr(),
        &[("topic", "a"), ("topic", "b"), ("data", "end")],
    );
    for (who, subscriber) in &mut subscribers {
        let got = seen_before_end(subscriber);
        assert_eq!(
            got,
            vec![("j".to_owned(), "{\"x\":1}".to_owned(), json_id.clone())],
            "{who}: the JSON publish, then the end"
        );
    }
    for node in &nodes {
        let skipped = node.wait_metric(SKIPPED, "five skipped entries", |v| v >= 5.0);
        assert_eq!(skipped, 5.0, "{SKIPPED} on {}", node.label);
    }
}

/// Issue 10, item 10: entries with stream ids outside what `XADD *` produces today (an
/// outsider's explicit id in microseconds, then one with a sequence near 2^64) are ordinary
/// entries. They, and every publish after them (whose ids now follow theirs), reach every
/// subscriber on every node in stream order with the ids the publishers were answered with;
/// nothing is skipped, and a resume from such an id is served from the stream.
#[test]
fn issue_10_any_valid_stream_id_is_delivered_and_so_is_everything_after_it() {
    let stream = "wide-ids";
    let (redis, [a, b]) = start_cluster(stream, A_AND_SMALL_RING_B);
    let mut subscribers = [
        ("the subscriber on A", subscribe(a.addr(), &["t"])),
        ("the subscriber on B", subscribe(b.addr(), &["t"])),
    ];
    let mut outsider = redis.client();
    let mut xadd = |id: &str, data: &str| {
        let answered: String = outsider.command(&["XADD", stream, id, "topic", "t", "data", data]);
        assert_eq!(answered, id, "the outsider's XADD");
        message(data, id)
    };
    let mut expected = vec![xadd("1733000000000000-0", "outsider, microseconds")];
    for (i, node) in [&a, &b].iter().enumerate() {
        let data = format!("after microseconds {i}");
        expected.push(message(&data, &publish_to(node.addr(), "t", &data)));
    }
    expected.push(xadd(
        "1733000000000000-18446744073709551614",
        "outsider, sequence near 2^64",
    ));
    for (i, node) in [&a, &b, &a].iter().enumerate() {
        let data = format!("after the large sequence {i}");
        expected.push(message(&data, &publish_to(node.addr(), "t", &data)));
    }
    assert_eq!(
        expected[5].2, "1733000000000001-0",
        "Redis carries a full sequence into the millisecond"
    );
    let ids: Vec<&str> = expected.iter().map(|e| e.2.as_str()).collect();
    assert_strictly_increasing(&ids, "the answered ids");
    publish_to(b.addr(), "t", "end");
    for (who, subscriber) in &mut subscribers {
        assert_same_events(&seen_before_end(subscriber), &expected, who);
    }
    // B keeps 2 events per topic: a resume from the first outsider entry needs the stream.
    let mut resumed = resume_with_header(b.addr(), &["t"], &expected[0].2);
    assert_same_events(
        &seen_before_end(&mut resumed),
        &expected[1..],
        "a resume on B from the microsecond id",
    );
    for node in [&a, &b] {
        assert_eq!(node.metric(SKIPPED), 0.0, "{SKIPPED} on {}", node.label);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Start-up
// ---------------------------------------------------------------------------------------------

#[test]
fn a_node_starts_while_redis_is_down_and_connects_when_it_comes_up() {
    let port = free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}/0");
    let node = Node::spawn("node", &url, "late-redis", &[]);
    assert_eq!(node.metric(CONNECTED), 0.0, "no Redis yet");
    let response = try_publish(node.addr(), "t", "too early");
    assert_redis_unavailable(&response, "POST /publish before Redis ever ran");

    let _redis = RedisServer::start_on("late-redis", port);
    node.wait_connected();
    let mut subscriber = subscribe(node.addr(), &["t"]);
    let mut refused: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + DEADLINE;
    let (data, id) = loop {
        let data = format!("attempt {}", refused.len());
        let response = try_publish(node.addr(), "t", &data);
        match response.status {
            200 => break (data, id_from_text_answer(response.body_text())),
            503 => {
                assert!(
                    Instant::now() < deadline,
                    "publishes still refused {DEADLINE:?} after Redis came up: {}",
                    response.summary()
                );
                refused.insert(data);
                std::thread::sleep(RETRY_POLL);
            }
            _ => panic!("publish after Redis came up: {}", response.summary()),
        }
    };
    publish_to(node.addr(), "t", "end");
    assert_acknowledged_delivered(
        &seen_before_end(&mut subscriber),
        &[message(&data, &id)],
        &refused,
        "the subscriber",
    );
}

/// Runs `herald serve --listen 127.0.0.1:0 args...` with `env` (and no inherited `HERALD_*`)
/// to its exit within [`DEADLINE`]; returns the status and stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut command = herald_serve(args);
    command.envs(env.iter().copied());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {HERALD_BIN}: {e}"));
    let receiver = read_all_on_thread(child.stderr.take().unwrap());
    match receiver.recv_timeout(DEADLINE) {
        Ok(text) => (child.wait().unwrap(), text),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald {args:?} with {env:?} did not exit within {DEADLINE:?}");
        }
    }
}

fn assert_refused(args: &[&str], env: &[(&str, &str)], setting: &str) {
    let (status, stderr) = run_to_exit(args, env);
    let what = format!("herald serve {args:?} with env {env:?}");
    assert_eq!(
        status.code(),
        Some(2),
        "{what}: exit status {status:?}; stderr: {stderr:?}"
    );
    let line = stderr.strip_suffix('\n').unwrap_or(&stderr);
    assert!(
        !line.trim().is_empty() && !line.contains('\n'),
        "{what}: stderr must be exactly one line, got {stderr:?}"
    );
    let kebab = setting.replace('_', "-");
    assert!(
        line.contains(setting) || line.contains(&kebab),
        "{what}: the error line must name {setting:?}, got {line:?}"
    );
}

#[test]
fn bad_cluster_settings_exit_2_with_one_line_naming_the_setting() {
    assert_refused(
        &["--bus", "redis", "--redis-url", "not-a-url"],
        &[],
        "redis_url",
    );
    assert_refused(
        &["--bus", "redis"],
        &[("HERALD_REDIS_URL", "not-a-url")],
        "redis_url",
    );
    assert_refused(&["--bus", "nonsense"], &[], "bus");
    let toml = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "herald-cluster-{}-bad-redis-url.toml",
        std::process::id()
    ));
    std::fs::write(&toml, "bus = \"redis\"\nredis_url = \"not-a-url\"\n").unwrap();
    let toml_path = toml.to_str().unwrap().to_owned();
    assert_refused(&["--config", &toml_path], &[], "redis_url");
    let _ = std::fs::remove_file(&toml);
    assert_refused(&[], &[("HERALD_BUS", "nonsense")], "bus");
    // The Redis URL is only read with --bus redis: the embedded bus starts regardless.
    let node = HeraldProcess::spawn(&["--redis-url", "not-a-url", "--threads", "1"]);
    assert_healthy(node.addr, "starting with an unused bad --redis-url");
}

/// The password every URL in the issue-10 redaction test carries; it must never be printed.
const PASSWORD: &str = "s3cret";

/// Issue 10, item 13: the Redis URL's credentials are never shown. Start-up errors (a bad
/// port, RESP3, TLS without verification, a malformed URL, through the flag, the
/// environment and a TOML file),
/// `--help` with the URL in the environment, the logs of nodes that cannot connect or are
/// refused by Redis (at debug level), and `/metrics` all name the URL without its password.
#[test]
fn issue_10_the_redis_password_never_shows_in_errors_logs_help_or_metrics() {
    let port = free_port().unwrap();
    let bad_urls = [
        format!("redis://user:{PASSWORD}@127.0.0.1:notaport/0"),
        format!("redis://user:{PASSWORD}@127.0.0.1:{port}/0?protocol=resp3"),
        format!("rediss://user:{PASSWORD}@127.0.0.1:{port}/0#insecure"),
        format!("redis://user:{PASSWORD}@[::1/0"),
        format!("redis://{PASSWORD}@127.0.0.1:notaport/0"),
        format!("redis://user:{PASSWORD}/with/slash@127.0.0.1:notaport/0"),
        format!("user:{PASSWORD}@127.0.0.1:{port}"),
        format!("redis+unix:///tmp/none.sock?db=0&pass={PASSWORD}&protocol=resp3"),
    ];
    let toml = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "herald-cluster-{}-secret-redis-url.toml",
        std::process::id()
    ));
    for url in &bad_urls {
        let outcomes = [
            run_to_exit(&["--bus", "redis", "--redis-url", url], &[]),
            run_to_exit(&["--bus", "redis"], &[("HERALD_REDIS_URL", url)]),
            {
                std::fs::write(&toml, format!("bus = \"redis\"\nredis_url = \"{url}\"\n")).unwrap();
                run_to_exit(&["--config", toml.to_str().unwrap()], &[])
            },
        ];
        for (status, stderr) in outcomes {
            assert_eq!(status.code(), Some(2), "{url}: {stderr}");
            assert!(stderr.contains("redis_url"), "{url}: {stderr}");
            assert!(
                !stderr.contains(PASSWORD),
                "the refusal of a bad --redis-url shows its password: {stderr}"
            );
        }
    }
    let _ = std::fs::remove_file(&toml);

    let help = Command::new(HERALD_BIN)
        .args(["serve", "--help"])
        .env(
            "HERALD_REDIS_URL",
            format!("redis://user:{PASSWORD}@127.0.0.1:{port}/0"),
        )
        .output()
        .unwrap();
    let help =
        String::from_utf8_lossy(&help.stdout).into_owned() + &String::from_utf8_lossy(&help.stderr);
    assert!(help.contains("--redis-url"), "{help}");
    assert!(
        !help.contains(PASSWORD),
        "--help shows the password: {help}"
    );

    // Nodes that run and log: no Redis at all, and a Redis that refuses the credentials.
    let redis = RedisServer::start("secret");
    redis
        .client()
        .command::<()>(&["CONFIG", "SET", "requirepass", "other"]);
    let urls = [
        format!("redis://user:{PASSWORD}@127.0.0.1:{port}/0"),
        format!("redis://:{PASSWORD}@127.0.0.1:{}/0", redis.port),
    ];
    for url in &urls {
        let mut node =
            HeraldProcess::spawn(&["--bus", "redis", "--redis-url", url, "--log-level", "debug"]);
        let response = try_publish(node.addr, "t", "refused");
        assert_eq!(response.status, 503, "{}", response.summary());
        let metrics = get(node.addr, "/metrics");
        assert!(!metrics.body_text().contains(PASSWORD), "/metrics shows it");
        node.signal("TERM");
        node.wait_exit(DEADLINE);
        let log = node.stderr_lines().join("\n");
        assert!(
            log.contains("cannot connect"),
            "the node logs its failure: {log}"
        );
        assert!(
            log.contains(":***@127.0.0.1"),
            "the node logs which Redis it uses, redacted: {log}"
        );
        assert!(!log.contains(PASSWORD), "the log shows the password: {log}");
    }
}

/// Entries appended while the node is frozen, with a stream that keeps about 100.
const OVERTAKE_EVENTS: usize = 2_000;

/// A node whose reader is overtaken by the stream's trimming (here: the whole process is
/// frozen with SIGSTOP while 2,000 entries go into a stream that keeps about 100) cannot
/// deliver what was trimmed. It must not skip it silently: it counts the hole, tells its
/// streams to resume, and a resume then starts with the gap event, followed by exactly
/// what the stream still keeps.
#[test]
fn a_node_overtaken_by_the_trim_makes_its_streams_resume_into_the_gap_event() {
    let stream = "overtaken";
    let (redis, [node]) = start_cluster(stream, [("node", &["--redis-maxlen", "100"])]);
    let mut subscriber = subscribe(node.addr(), &["t"]);
    let first = publish_to(node.addr(), "t", "first");
    assert_eq!(
        seen(&subscriber.next_event("the first event")),
        message("first", &first)
    );

    node.process.signal("STOP");
    let mut redis_conn = redis.client();
    for i in 0..OVERTAKE_EVENTS {
        let data = format!("while frozen {i}");
        redis_conn.command::<()>(&[
            "XADD", stream, "MAXLEN", "~", "100", "*", "topic", "t", "data", &data,
        ]);
    }
    assert!(
        redis_conn.xrange(stream, &first, &first).is_empty(),
        "the first event ({first}) must have been trimmed while the node was frozen"
    );
    node.process.signal("CONT");

    // The stream ends with a parting `retry:` (whatever it got before the hole is fine).
    let got = subscriber.read_to_close("the stream to be told to resume");
    let last = got
        .last()
        .map_or(first.clone(), |event| event.last_event_id.clone());
    assert!(
        got.len() < OVERTAKE_EVENTS,
        "the subscriber cannot have received the {OVERTAKE_EVENTS} events, most were trimmed"
    );
    assert!(
        node.metric("herald_redis_holes_total") >= 1.0,
        "the hole is counted"
    );

    let kept = redis_conn.xrange(stream, &format!("({last}"), "+");
    let expected: Vec<Seen> = kept
        .iter()
        .map(|entry| message(entry.field("data").unwrap(), &entry.id))
        .collect();
    let mut resumed = resume_with_header(node.addr(), &["t"], &last);
    let gap = resumed.next_event("the gap event");
    assert_eq!(
        (gap.event_type.as_str(), gap.data.as_str()),
        ("gap", format!("{{\"lastEventId\":\"{last}\"}}").as_str()),
        "the resume after the hole starts with the gap event"
    );
    let end = publish_to(node.addr(), "t", "end");
    let after_gap = seen_before_end(&mut resumed);
    assert_same_events(
        &after_gap,
        &expected,
        "after the gap event: every entry the stream keeps",
    );
    assert!(!end.is_empty());
}

/// Publishes tried while the stream's key holds a string.
const WRONG_TYPE_PUBLISHES: usize = 50;

/// A stream name that holds another type of key: Redis accepts the connections and refuses
/// every command. Publishes get 503 (never a false 200), the node keeps serving, its log
/// says why without a line per attempt, and once the key is gone everything works.
#[test]
fn a_stream_key_of_another_type_gets_503_without_flooding_the_log_then_recovers() {
    let redis = RedisServer::start("wrong-type");
    let stream = "wrong-type";
    let mut redis_conn = redis.client();
    redis_conn.command::<()>(&["SET", stream, "not a stream"]);
    let mut node = Node::spawn("node", &redis.url(), stream, &["--log-level", "info"]);
    let mut subscriber = subscribe(node.addr(), &["t"]);
    for i in 0..WRONG_TYPE_PUBLISHES {
        assert_redis_unavailable(
            &try_publish(node.addr(), "t", &format!("refused {i}")),
            "a publish while the key is a string",
        );
    }
    assert_eq!(
        node.metric(CONNECTED),
        0.0,
        "the reader cannot read a string"
    );
    redis_conn.command::<()>(&["DEL", stream]);
    node.wait_connected();
    let deadline = Instant::now() + DEADLINE;
    let id = loop {
        let answer = try_publish(node.addr(), "t", "accepted");
        if answer.status == 200 {
            break answer.body_text().trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "publishing never recovered: {}",
            answer.summary()
        );
        std::thread::sleep(RETRY_POLL);
    };
    assert_eq!(
        seen(&subscriber.next_event("the first accepted event")),
        message("accepted", &id),
        "no refused publish reached a subscriber"
    );
    node.process.signal("TERM");
    node.wait_exit(DEADLINE);
    let wrong_type_lines = node
        .process
        .stderr_lines()
        .iter()
        .filter(|line| line.contains("WRONGTYPE"))
        .count();
    assert!(
        (1..=6).contains(&wrong_type_lines),
        "the log names the cause, without a line per refused publish or read: \
         {wrong_type_lines} WRONGTYPE lines"
    );
}

/// Publishes sent back to back on one connection, without waiting for answers.
const PIPELINED_PUBLISHES: usize = 300;

/// A publisher that pipelines (sends many requests before reading any answer) keeps many
/// publishes at Redis at once, and still gets its answers in request order, each id the
/// one its event carries, with the events delivered in that order.
#[test]
fn pipelined_publishes_on_one_connection_are_answered_in_order() {
    let (_redis, [node]) = start_cluster("pipelined", [("node", &[])]);
    let mut subscriber = subscribe(node.addr(), &["p"]);
    let mut requests = Vec::new();
    for i in 0..PIPELINED_PUBLISHES {
        requests.extend_from_slice(&post_request(
            "/publish?topic=p",
            Some("text/plain"),
            format!("pipelined {i}").as_bytes(),
            &[],
        ));
    }
    let mut conn = Conn::connect(node.addr());
    conn.send(&requests);
    let ids: Vec<String> = (0..PIPELINED_PUBLISHES)
        .map(|i| {
            let answer = conn.read_response(&format!("answer {i}"));
            assert_eq!(answer.status, 200, "publish {i}: {}", answer.summary());
            answer.body_text().trim().to_owned()
        })
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_strictly_increasing(&refs, "the answers, in request order");
    let events = subscriber.events(PIPELINED_PUBLISHES);
    for (i, (event, id)) in events.iter().zip(&ids).enumerate() {
        assert_eq!(
            seen(event),
            message(&format!("pipelined {i}"), id),
            "event {i} carries the id its publish was answered with"
        );
    }
}

/// A Redis that requires a password: the password in `--redis-url` is used (publishes are
/// stored and delivered); a wrong one gets 503 for publishes, and the node still serves
/// its subscribers.
#[test]
fn the_password_in_the_redis_url_is_used() {
    let redis = RedisServer::start("password");
    let mut admin = redis.client();
    admin.command::<()>(&["CONFIG", "SET", "requirepass", "s3cret"]);
    let good = format!("redis://:s3cret@127.0.0.1:{}/0", redis.port);
    let bad = format!("redis://:wrong@127.0.0.1:{}/0", redis.port);
    let node = Node::spawn("node with the password", &good, "password", &[]);
    let stranger = Node::spawn("node with a wrong password", &bad, "password", &[]);
    node.wait_connected();
    let mut subscriber = subscribe(node.addr(), &["t"]);
    let id = publish_to(node.addr(), "t", "authenticated");
    assert_eq!(
        seen(&subscriber.next_event("the event")),
        message("authenticated", &id)
    );
    assert_eq!(
        admin.xrange("password", &id, &id).len(),
        1,
        "the event is in the stream"
    );
    assert_redis_unavailable(
        &try_publish(stranger.addr(), "t", "refused"),
        "a publish with a wrong password",
    );
    assert_eq!(stranger.metric(CONNECTED), 0.0);
    let other = subscribe(stranger.addr(), &["t"]);
    assert!(
        other.retry_ms().is_some(),
        "the node still serves subscribers"
    );
}

/// Publishes pipelined on one connection while Redis is frozen.
const FROZEN_PIPELINED: usize = 20;

/// A frozen Redis (SIGSTOP: its socket open, nothing answered) fails a batch of pipelined
/// publishes once, within the bus's timeouts, instead of waiting the read timeout again
/// for every publish of the batch: all of them are answered 503 within the test deadline
/// (with one timeout per publish it took 40 s).
#[test]
fn a_frozen_redis_fails_a_pipelined_batch_once() {
    let (redis, [node]) = start_cluster("frozen-batch", [("node", &[])]);
    publish_to(node.addr(), "t", "warm");
    redis.signal("STOP");
    let mut requests = Vec::new();
    for i in 0..FROZEN_PIPELINED {
        requests.extend_from_slice(&post_request(
            "/publish?topic=t",
            Some("text/plain"),
            format!("frozen {i}").as_bytes(),
            &[],
        ));
    }
    let mut conn = Conn::connect(node.addr());
    conn.send(&requests);
    for i in 0..FROZEN_PIPELINED {
        let answer = conn.read_response(&format!("answer {i} while Redis is frozen"));
        assert_redis_unavailable(&answer, "a publish while Redis is frozen");
    }
    redis.signal("CONT");
}
