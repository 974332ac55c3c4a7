#![allow(clippy::unwrap_used)]
//! `GET /metrics` (issue 4 part 6, issue 12 part 2): `200` Prometheus text (format 0.0.4)
//! whose every line parses as `# HELP`, `# TYPE` or `name{labels} value`, or OpenMetrics
//! 1.0.0 when the scraper's `Accept` prefers it; every family the README lists is there,
//! with no per-topic labels; and after a known amount of activity the counters and gauges
//! hold exactly what happened. Counters settle when the event loops end their turn, so the
//! page is re-read (on one keep-alive connection, which adds no connections) until it
//! matches or [`DEADLINE`] passes.
//!
//! Both formats are also read by a real Prometheus parser, the Python `prometheus_client`
//! library's (Debian's `python3-prometheus-client`, under Debian's `/usr/bin/python3`):
//! its text parser for 0.0.4 and its strict OpenMetrics parser, which refuses a page without
//! `# EOF`, a counter family named with `_total`, a histogram without `+Inf`, and more. It is
//! never skipped: without it the test fails with the command that installs it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::*;
use herald::Event;

/// Every family the README lists, with its type.
const FAMILIES: [(&str, &str); 16] = [
    ("herald_connections", "gauge"),
    ("herald_connections_max", "gauge"),
    ("herald_connections_accepted_total", "counter"),
    ("herald_connections_refused_total", "counter"),
    ("herald_subscribers", "gauge"),
    ("herald_topics", "gauge"),
    ("herald_events_published_total", "counter"),
    ("herald_deliveries_total", "counter"),
    ("herald_bytes_written_total", "counter"),
    ("herald_stream_writes_total", "counter"),
    ("herald_slow_consumer_closes_total", "counter"),
    ("herald_heartbeats_total", "counter"),
    ("herald_loop_helps_total", "counter"),
    ("herald_auth_failures_total", "counter"),
    ("herald_http_refusals_total", "counter"),
    ("herald_loop_turn_seconds", "histogram"),
];

/// Statuses herald answers refusals with (README "Refusals").
const REFUSAL_STATUSES: [u16; 14] = [
    400, 401, 403, 404, 405, 408, 411, 413, 415, 417, 429, 431, 503, 505,
];

/// Checks the turn-duration histogram: `le` bounds increase and end in `+Inf`, counts are
/// cumulative, and `+Inf` equals `_count`.
fn assert_histogram(page: &Scrape, name: &str) {
    let buckets = page.family(&format!("{name}_bucket"));
    assert!(
        buckets.len() >= 2,
        "{name}: too few buckets:\n{}",
        page.text
    );
    let mut previous_bound = f64::NEG_INFINITY;
    let mut previous_count = 0.0;
    for (key, count) in &buckets {
        let bound: f64 = key
            .split_once("le=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(le, _)| le.parse().unwrap())
            .unwrap_or_else(|| panic!("{name}: bucket without le: {key}"));
        assert!(bound > previous_bound, "{name}: le not increasing at {key}");
        assert!(
            *count >= previous_count,
            "{name}: counts not cumulative at {key}"
        );
        previous_bound = bound;
        previous_count = *count;
    }
    assert_eq!(
        previous_bound,
        f64::INFINITY,
        "{name}: last bucket must be +Inf"
    );
    assert_eq!(previous_count, page.value(&format!("{name}_count")));
    let sum = page.value(&format!("{name}_sum"));
    assert!(
        if previous_count == 0.0 {
            sum == 0.0
        } else {
            sum > 0.0
        },
        "{name}: _sum {sum} must be positive exactly when _count ({previous_count}) is"
    );
}

#[test]
fn metrics_is_prometheus_text_with_every_documented_family_and_no_topic_labels() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["secret-topic-name"]);
    let id = publish(
        &server.handle(),
        &Event::new("secret-topic-name", "x").named("secret-event-name"),
    );
    assert_eq!(subscriber.next_event("an event").last_event_id, id.as_str());
    let response = get(addr, "/metrics");
    let page = parse_metrics_response(&response);
    for (family, kind) in FAMILIES {
        assert!(
            page.text.contains(&format!("\n# TYPE {family} {kind}\n"))
                || page.text.starts_with(&format!("# TYPE {family} {kind}\n")),
            "no `# TYPE {family} {kind}` line in\n{}",
            page.text
        );
        assert!(
            page.text
                .lines()
                .any(|l| l.starts_with(&format!("# HELP {family} "))),
            "no `# HELP {family}` line in\n{}",
            page.text
        );
    }
    for status in REFUSAL_STATUSES {
        page.value(&format!(
            "herald_http_refusals_total{{status=\"{status}\"}}"
        ));
    }
    for reason in [
        "max_connections",
        "max_connections_per_ip",
        "max_publish_connections",
    ] {
        page.value(&format!(
            "herald_connections_refused_total{{reason=\"{reason}\"}}"
        ));
    }
    assert_histogram(&page, "herald_loop_turn_seconds");
    assert!(
        !page.text.contains("secret-topic-name") && !page.text.contains("secret-event-name"),
        "topic or event names leaked into /metrics:\n{}",
        page.text
    );
    for (key, value) in &page.samples {
        assert!(
            value.is_finite() && *value >= 0.0,
            "{key} has value {value}"
        );
    }
    // HEAD answers the same headers with no body.
    let mut conn = Conn::connect(addr);
    conn.send(build_request(
        "HEAD",
        "/metrics",
        &[("Connection", "close")],
        b"",
    ));
    let head = conn.read_head("the HEAD /metrics answer");
    assert_eq!(head.status, 200, "{}", head.summary());
    assert_eq!(head.header("content-type"), response.header("content-type"));
    conn.expect_closed("the HEAD /metrics answer");
}

#[test]
fn counters_and_gauges_match_known_activity() {
    const MAX_PUBLISH: usize = 1_024;
    let server = start(|config| config.max_publish_bytes = MAX_PUBLISH);
    let addr = server.local_addr();
    let mut connections_made = 0;
    // The scraping connection, kept alive throughout.
    let mut metrics_conn = Conn::connect(addr);
    connections_made += 1;
    let first = scrape_on(&mut metrics_conn);
    for counter in [
        "herald_events_published_total",
        "herald_deliveries_total",
        "herald_subscribers",
        "herald_slow_consumer_closes_total",
        "herald_heartbeats_total",
        "herald_auth_failures_total",
    ] {
        assert_eq!(first.value(counter), 0.0, "{counter} on a fresh server");
    }
    // Three subscribers: two on `a`, one on `b`.
    let mut a1 = subscribe(addr, &["a"]);
    let mut a2 = subscribe(addr, &["a"]);
    let mut b1 = subscribe(addr, &["b"]);
    connections_made += 3;
    // Four publishes over HTTP: three to `a`, one to `b`.
    for (topic, data) in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("a", "a3")] {
        publish_form(addr, &[("topic", topic), ("data", data)]);
        connections_made += 1;
    }
    // Refusals: 404 twice, 400 once, 405 once, 413 once.
    assert_error(&get(addr, "/nope"), 404, "GET /nope");
    assert_error(&get(addr, "/nope/again"), 404, "GET /nope/again");
    assert_error(&get(addr, "/events"), 400, "GET /events without a topic");
    let response = exchange(
        addr,
        build_request("DELETE", "/events?topic=a", &[("Connection", "close")], b""),
    );
    assert_error(&response, 405, "DELETE /events");
    let mut conn = Conn::connect(addr);
    conn.send_may_be_cut(post_request(
        "/publish?topic=a",
        Some("text/plain"),
        &vec![b'x'; MAX_PUBLISH + 1],
        &[],
    ));
    assert_error(
        &conn.read_response("the 413 answer"),
        413,
        "an oversized publish",
    );
    drop(conn);
    connections_made += 5;
    // Every subscriber reads what it was sent: 3 + 3 + 1 deliveries.
    let data = |events: Vec<SseEvent>| events.into_iter().map(|e| e.data).collect::<Vec<_>>();
    assert_eq!(data(a1.events(3)), ["a1", "a2", "a3"]);
    assert_eq!(data(a2.events(3)), ["a1", "a2", "a3"]);
    assert_eq!(data(b1.events(1)), ["b1"]);
    let received_by_subscribers = (a1.raw.len() + a2.raw.len() + b1.raw.len()) as f64;

    let expected: Vec<(String, f64)> = [
        ("herald_connections", 4.0), // three streams and the scraping connection
        ("herald_connections_accepted_total", connections_made as f64),
        ("herald_subscribers", 3.0),
        ("herald_events_published_total", 4.0),
        ("herald_deliveries_total", 7.0),
        ("herald_slow_consumer_closes_total", 0.0),
        ("herald_heartbeats_total", 0.0),
        ("herald_auth_failures_total", 0.0),
        (
            "herald_connections_refused_total{reason=\"max_connections\"}",
            0.0,
        ),
        (
            "herald_connections_refused_total{reason=\"max_connections_per_ip\"}",
            0.0,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(REFUSAL_STATUSES.iter().map(|&status| {
        let count = match status {
            404 => 2.0,
            400 | 405 | 413 => 1.0,
            _ => 0.0,
        };
        (
            format!("herald_http_refusals_total{{status=\"{status}\"}}"),
            count,
        )
    }))
    .collect();
    let mismatches = |page: &Scrape| -> Vec<String> {
        expected
            .iter()
            .filter(|(key, value)| page.get(key) != Some(*value))
            .map(|(key, value)| format!("{key}: expected {value}, got {:?}", page.get(key)))
            .collect()
    };
    let page = scrape_until(
        &mut metrics_conn,
        "the counters to match the activity",
        |page| mismatches(page).is_empty(),
    );
    assert!(mismatches(&page).is_empty(), "{:?}", mismatches(&page));
    assert!(
        page.value("herald_bytes_written_total") >= received_by_subscribers,
        "herald_bytes_written_total {} is less than the {received_by_subscribers} bytes the subscribers received",
        page.value("herald_bytes_written_total")
    );
    let topics = page.value("herald_topics");
    assert!(
        (2.0..=4.0).contains(&topics),
        "herald_topics is {topics}: two topics, counted once per event loop that has them (2 loops)"
    );
    assert_eq!(page.value("herald_event_loops"), 2.0);
    assert_histogram(&page, "herald_loop_turn_seconds");
    assert!(page.value("herald_loop_turn_seconds_count") > 0.0);

    // Streams leaving are seen in the gauges; the counters stay.
    drop(a1);
    drop(b1);
    let page = scrape_until(&mut metrics_conn, "two streams to be gone", |page| {
        page.get("herald_subscribers") == Some(1.0) && page.get("herald_connections") == Some(2.0)
    });
    assert_eq!(page.value("herald_deliveries_total"), 7.0);
    assert_eq!(
        page.value("herald_connections_accepted_total"),
        connections_made as f64
    );
}

#[test]
fn heartbeats_are_counted() {
    let server = start(|config| config.heartbeat_ms = 100);
    let addr = server.local_addr();
    let mut quiet = subscribe(addr, &["quiet"]);
    quiet.wait_for_comments(3, "three heartbeats");
    let received = quiet.comments().len() as f64;
    // Counters are stored once per loop turn, so the scrape may run just before the turn
    // that wrote the last heartbeat stores its count: wait for it, with a deadline.
    let mut conn = Conn::connect(addr);
    let page = scrape_until(&mut conn, "the heartbeats to be counted", |page| {
        page.get("herald_heartbeats_total")
            .is_some_and(|counted| counted >= received)
    });
    let counted = page.value("herald_heartbeats_total");
    assert!(
        counted >= quiet.comments().len() as f64,
        "herald_heartbeats_total {counted} < {} heartbeats received",
        quiet.comments().len()
    );
}

/// Refusals answered to pipelined requests in one read.
const PIPELINED_REFUSALS: usize = 25;

/// Every refusal is counted, also when one read brings many pipelined requests that are
/// answered together.
#[test]
fn pipelined_refusals_are_each_counted() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut requests = Vec::new();
    for i in 0..PIPELINED_REFUSALS {
        requests.extend_from_slice(&build_request("GET", &format!("/nope/{i}"), &[], b""));
    }
    let mut conn = Conn::connect(addr);
    conn.send(&requests);
    for i in 0..PIPELINED_REFUSALS {
        let answer = conn.read_response(&format!("answer {i}"));
        assert_eq!(answer.status, 404, "{}", answer.summary());
    }
    let page = scrape(addr);
    assert_eq!(
        page.value("herald_http_refusals_total{status=\"404\"}"),
        PIPELINED_REFUSALS as f64
    );
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus parser: Python's prometheus_client
// ---------------------------------------------------------------------------------------------

/// Debian's Python, which Debian's `python3-prometheus-client` installs for (a `python3`
/// earlier on PATH, such as a pyenv one, would not see it).
const PYTHON: &str = "/usr/bin/python3";

/// How to get the parser.
const INSTALL_HINT: &str = "apt-get install -y python3-prometheus-client (.ci/deps does)";

/// Reads a page from stdin with the parser named by argv[1] and prints its families as JSON.
const PARSE_SCRIPT: &str = r#"
import json, sys
if sys.argv[1] == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
families = [
    {"name": f.name, "type": f.type,
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]
json.dump(families, sys.stdout)
"#;

/// Which of `prometheus_client`'s parsers reads a page.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Parser {
    /// `prometheus_client.parser`: the Prometheus text format 0.0.4.
    Text,
    /// `prometheus_client.openmetrics.parser`: OpenMetrics, strictly.
    OpenMetrics,
}

/// One family as the parser returned it.
#[derive(Debug)]
struct ParsedFamily {
    kind: String,
    /// `(sample name, labels, value)`.
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// The families of `page` by name, as `parser` reads it; `Err` with the parser's complaint
/// when it refuses the page.
fn try_parse_with_prometheus_client(
    page: &str,
    parser: Parser,
) -> Result<BTreeMap<String, ParsedFamily>, String> {
    let which = match parser {
        Parser::Text => "text",
        Parser::OpenMetrics => "openmetrics",
    };
    let mut child = Command::new(PYTHON)
        .args(["-c", PARSE_SCRIPT, which])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} ({e}); never skipped: {INSTALL_HINT}"));
    // The page is a few KiB, well under a pipe's buffer, so writing before reading is safe.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the Python prometheus_client module is missing; never skipped: {INSTALL_HINT}\n{stderr}"
    );
    if !output.status.success() {
        return Err(stderr.into_owned());
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut families = BTreeMap::new();
    for family in json.as_array().unwrap() {
        let samples = family["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sample| {
                let labels = sample["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let name = sample["name"].as_str().unwrap().to_owned();
                (name, labels, sample["value"].as_f64().unwrap())
            })
            .collect();
        let name = family["name"].as_str().unwrap().to_owned();
        let kind = family["type"].as_str().unwrap().to_owned();
        let previous = families.insert(name.clone(), ParsedFamily { kind, samples });
        assert!(previous.is_none(), "{parser:?}: family {name} twice");
    }
    Ok(families)
}

/// [`try_parse_with_prometheus_client`], failing the test when the parser refuses the page.
fn parse_with_prometheus_client(page: &str, parser: Parser) -> BTreeMap<String, ParsedFamily> {
    try_parse_with_prometheus_client(page, parser)
        .unwrap_or_else(|error| panic!("{parser:?} parser refused the page: {error}\n{page}"))
}

/// The value of the unlabeled sample `sample` of `family`.
fn sample_value(families: &BTreeMap<String, ParsedFamily>, family: &str, sample: &str) -> f64 {
    let found = families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family} in {:?}", families.keys()));
    found
        .samples
        .iter()
        .find(|(name, labels, _)| name == sample && labels.is_empty())
        .unwrap_or_else(|| panic!("no sample {sample} in {family}: {found:?}"))
        .2
}

/// The Accept header Prometheus 2 sends by default.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` with `accept` (or none) on a keep-alive connection, asserting the
/// Content-Type the format must have.
fn scrape_as(conn: &mut Conn, accept: Option<&str>, content_type: &str) -> String {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    conn.send(build_request("GET", "/metrics", &headers, b""));
    let response = conn.read_response("the /metrics answer");
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(
        response.header("content-type"),
        Some(content_type),
        "Accept: {accept:?}"
    );
    assert_eq!(response.header("vary"), Some("Accept"));
    response.body_text().to_owned()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The herald binary, scraped as Prometheus scrapes it: both formats are accepted by
/// `prometheus_client`'s parsers, name the same families with the same types, and hold what
/// the test did (streams, events, deliveries) and plausible process metrics.
#[test]
fn both_formats_parse_with_prometheus_client_and_hold_what_happened() {
    const SUBSCRIBERS: usize = 5;
    const EVENTS: usize = 3;
    let spawned_at = unix_now();
    let herald = HeraldProcess::spawn(&[]);
    let addr = herald.addr;
    let mut subscribers: Vec<Subscriber> = (0..SUBSCRIBERS)
        .map(|_| subscribe(addr, &["news"]))
        .collect();
    for i in 0..EVENTS {
        publish_form(addr, &[("topic", "news"), ("data", &format!("n{i}"))]);
    }
    for subscriber in &mut subscribers {
        assert_eq!(subscriber.events(EVENTS).len(), EVENTS);
    }
    let mut conn = Conn::connect(addr);
    // Settle the counters first, on the Rust-side text parser.
    let delivered = (SUBSCRIBERS * EVENTS) as f64;
    scrape_until(&mut conn, "the deliveries to be counted", |page| {
        page.get("herald_deliveries_total") == Some(delivered)
    });

    let openmetrics_page = scrape_as(&mut conn, Some(PROMETHEUS_ACCEPT), OPENMETRICS_TYPE);
    assert!(
        openmetrics_page.ends_with("\n# EOF\n"),
        "{openmetrics_page}"
    );
    let text_page = scrape_as(&mut conn, None, TEXT_TYPE);
    let text_preferred = scrape_as(
        &mut conn,
        Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
        TEXT_TYPE,
    );
    Scrape::parse(&text_preferred);
    let openmetrics = parse_with_prometheus_client(&openmetrics_page, Parser::OpenMetrics);
    let text = parse_with_prometheus_client(&text_page, Parser::Text);
    // The strict parser can fail: a text page has no `# EOF`, and names counters otherwise.
    let refused = try_parse_with_prometheus_client(&text_page, Parser::OpenMetrics);
    assert!(
        refused.is_err(),
        "the OpenMetrics parser took a text 0.0.4 page"
    );

    // The same families, with the same types and sample names, in both formats; the build
    // info is a gauge in text and an info in OpenMetrics, each format's own way.
    let shape = |families: &BTreeMap<String, ParsedFamily>| -> Vec<(String, String, Vec<String>)> {
        families
            .iter()
            .map(|(name, family)| {
                let (name, kind) = match (name.as_str(), family.kind.as_str()) {
                    ("herald_build_info", "gauge") => ("herald_build".to_owned(), "info"),
                    _ => (name.clone(), family.kind.as_str()),
                };
                let mut samples: Vec<String> = family
                    .samples
                    .iter()
                    .map(|(sample, labels, _)| {
                        let labels: Vec<String> = labels
                            .iter()
                            .map(|(k, v)| match (k.as_str(), v.parse::<f64>()) {
                                ("le", Ok(bound)) => format!("le={bound}"),
                                _ => format!("{k}={v}"),
                            })
                            .collect();
                        format!("{sample}{{{}}}", labels.join(","))
                    })
                    .collect();
                samples.sort();
                (name, kind.to_owned(), samples)
            })
            .collect()
    };
    assert_eq!(shape(&openmetrics), shape(&text));

    for (families, parser) in [(&openmetrics, Parser::OpenMetrics), (&text, Parser::Text)] {
        let value = |family: &str, sample: &str| sample_value(families, family, sample);
        for (family, kind) in FAMILIES {
            let name = match kind {
                "counter" => family.strip_suffix("_total").unwrap(),
                _ => family,
            };
            assert_eq!(
                families.get(name).map(|f| f.kind.as_str()),
                Some(kind),
                "{parser:?}: family {name}"
            );
        }
        assert_eq!(
            value("herald_subscribers", "herald_subscribers"),
            SUBSCRIBERS as f64
        );
        assert_eq!(
            value("herald_events_published", "herald_events_published_total"),
            EVENTS as f64
        );
        assert_eq!(
            value("herald_deliveries", "herald_deliveries_total"),
            delivered
        );
        let turns = value("herald_loop_turn_seconds", "herald_loop_turn_seconds_count");
        assert!(turns > 0.0, "{parser:?}: no loop turns counted");

        let build = &families[match parser {
            Parser::OpenMetrics => "herald_build",
            Parser::Text => "herald_build_info",
        }];
        let version =
            BTreeMap::from([("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]);
        assert_eq!(
            build.samples,
            [("herald_build_info".to_owned(), version, 1.0)],
            "{parser:?}"
        );

        // The process metrics are herald's own process's (the child's, not this test's).
        let open_fds = value("process_open_fds", "process_open_fds");
        let max_fds = value("process_max_fds", "process_max_fds");
        let rss = value(
            "process_resident_memory_bytes",
            "process_resident_memory_bytes",
        );
        let virtual_memory = value(
            "process_virtual_memory_bytes",
            "process_virtual_memory_bytes",
        );
        let cpu = value("process_cpu_seconds", "process_cpu_seconds_total");
        let started = value("process_start_time_seconds", "process_start_time_seconds");
        assert_eq!(families["process_cpu_seconds"].kind, "counter");
        // Each held stream and the scraping connection is a descriptor of herald's.
        assert!(
            open_fds > SUBSCRIBERS as f64,
            "{parser:?}: process_open_fds {open_fds} with {SUBSCRIBERS} streams open"
        );
        assert!(
            max_fds >= open_fds,
            "{parser:?}: max {max_fds} < open {open_fds}"
        );
        assert!(
            rss > 0.0 && virtual_memory >= rss,
            "{parser:?}: rss {rss}, vm {virtual_memory}"
        );
        assert!(cpu >= 0.0, "{parser:?}: cpu {cpu}");
        // /proc's boot time is whole seconds and start times are in 10 ms ticks.
        let now = unix_now();
        assert!(
            started >= spawned_at - 1.5 && started <= now + 1.5,
            "{parser:?}: process_start_time_seconds {started}, spawned at {spawned_at}, now {now}"
        );
        let rss_kib = herald.status_kib("VmRSS") as f64;
        assert!(
            rss / 1024.0 > rss_kib / 4.0 && rss / 1024.0 < rss_kib * 4.0,
            "{parser:?}: process_resident_memory_bytes {rss} vs VmRSS {rss_kib} KiB now"
        );
    }
    drop(subscribers);
}

/// HEAD negotiates like GET, and the OpenMetrics page of an in-process server (with a
/// Redis-less bus) is accepted by the strict parser too.
#[test]
fn head_negotiates_and_openmetrics_parses_without_redis_families() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut conn = Conn::connect(addr);
    conn.send(build_request(
        "HEAD",
        "/metrics",
        &[("Accept", "application/openmetrics-text")],
        b"",
    ));
    let head = conn.read_head("the HEAD /metrics answer");
    assert_eq!(head.status, 200, "{}", head.summary());
    assert_eq!(head.header("content-type"), Some(OPENMETRICS_TYPE));
    let page = scrape_as(
        &mut conn,
        Some("application/openmetrics-text; q=0.9"),
        OPENMETRICS_TYPE,
    );
    let families = parse_with_prometheus_client(&page, Parser::OpenMetrics);
    assert!(!families.keys().any(|name| name.starts_with("herald_redis")));
    assert!(families.contains_key("herald_loop_turn_seconds"));
}
