//! Both formats read by a real Prometheus parser, Python's `prometheus_client`: its text
//! parser for 0.0.4 and its strict OpenMetrics parser; `HEAD` negotiates the format too.

use super::*;

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
