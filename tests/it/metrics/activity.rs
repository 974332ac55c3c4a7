//! The Prometheus text page (format 0.0.4) with every family the README lists and no
//! per-topic labels, and counters, gauges and histograms that hold exactly what a known
//! amount of activity did (heartbeats and pipelined refusals included).

use super::*;

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
