//! `GET /metrics` for the tests: [`Scrape`] checks a page line by line against the
//! Prometheus text exposition format (0.0.4) as it parses it, and the scrape helpers fetch
//! one page or wait on a keep-alive connection until a counter settles.

use std::net::SocketAddr;
use std::time::Instant;

use super::http::{build_request, get, Conn, Response};
use super::DEADLINE;

/// One `GET /metrics` page, checked line by line against the Prometheus text exposition
/// format (0.0.4) as it is parsed.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// The page as received.
    pub text: String,
    /// The samples in page order: `name` or `name{labels}` (labels as sent) and the value.
    pub samples: Vec<(String, f64)>,
}

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks `k="v",k="v"` (the text between the braces) and returns the label names.
fn parse_labels(labels: &str, line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("metrics: bad labels in {line:?}"));
        assert!(
            is_label_name(name),
            "metrics: bad label name {name:?} in {line:?}"
        );
        let mut value_end = None;
        let mut escaped = false;
        for (at, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    value_end = Some(at);
                    break;
                }
                '\n' => panic!("metrics: raw newline in a label value in {line:?}"),
                _ => {}
            }
        }
        let end = value_end.unwrap_or_else(|| panic!("metrics: unterminated label in {line:?}"));
        names.push(name.to_owned());
        rest = &after[end + 1..];
        if let Some(more) = rest.strip_prefix(',') {
            rest = more;
        } else {
            assert!(rest.is_empty(), "metrics: junk after a label in {line:?}");
        }
    }
    names
}

impl Scrape {
    /// Parses a page, failing the test on any line that is not `# HELP name text`,
    /// `# TYPE name kind` or a sample `name{labels} value`; on a sample whose family has no
    /// `# TYPE` line before it; on a family typed twice; and on a duplicate sample.
    pub fn parse(text: &str) -> Scrape {
        assert!(
            text.ends_with('\n'),
            "metrics: the page must end with a line feed"
        );
        let mut types: Vec<(String, String)> = Vec::new();
        let mut samples: Vec<(String, f64)> = Vec::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix('#') {
                let mut parts = comment.trim_start().splitn(3, ' ');
                let keyword = parts.next().unwrap_or_default();
                let name = parts.next().unwrap_or_default();
                let rest = parts.next().unwrap_or_default();
                match keyword {
                    "HELP" => assert!(is_metric_name(name), "metrics: bad HELP line {line:?}"),
                    "TYPE" => {
                        assert!(is_metric_name(name), "metrics: bad TYPE line {line:?}");
                        assert!(
                            ["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest),
                            "metrics: bad type in {line:?}"
                        );
                        assert!(
                            !types.iter().any(|(n, _)| n == name),
                            "metrics: family {name} typed twice"
                        );
                        types.push((name.to_owned(), rest.to_owned()));
                    }
                    _ => {} // Other comments are allowed by the format.
                }
                continue;
            }
            assert!(!line.trim().is_empty(), "metrics: blank line in the page");
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("metrics: sample line without a value: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("metrics: bad value in {line:?}"));
            let (name, label_names) = match key.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("metrics: bad labels in {line:?}"));
                    (name, parse_labels(labels, line))
                }
                None => (key, Vec::new()),
            };
            assert!(is_metric_name(name), "metrics: bad metric name in {line:?}");
            let family = types.iter().find(|(family, kind)| {
                name == family
                    || (kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| name.strip_suffix(suffix) == Some(family)))
                    || (kind == "summary"
                        && ["_sum", "_count"]
                            .iter()
                            .any(|suffix| name.strip_suffix(suffix) == Some(family)))
            });
            let (_, kind) = family
                .unwrap_or_else(|| panic!("metrics: sample {line:?} has no # TYPE before it"));
            if kind == "histogram" && name.ends_with("_bucket") {
                assert!(
                    label_names.iter().any(|l| l == "le"),
                    "metrics: histogram bucket without le: {line:?}"
                );
            }
            assert!(
                !samples.iter().any(|(k, _)| k == key),
                "metrics: duplicate sample {key}"
            );
            samples.push((key.to_owned(), value));
        }
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of the sample `key` (`name` or `name{labels}` exactly as sent), if present.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.samples.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The value of the sample `key`; fails the test if the page has no such sample.
    pub fn value(&self, key: &str) -> f64 {
        self.get(key)
            .unwrap_or_else(|| panic!("metrics: no sample {key} in\n{}", self.text))
    }

    /// Every sample whose name (before any `{`) is `name`, in page order.
    pub fn family(&self, name: &str) -> Vec<(String, f64)> {
        self.samples
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .cloned()
            .collect()
    }
}

/// Asserts a `/metrics` answer is `200` Prometheus text, and parses it.
pub fn parse_metrics_response(response: &Response) -> Scrape {
    assert_eq!(response.status, 200, "GET /metrics: {}", response.summary());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "GET /metrics: Content-Type {content_type:?} is not Prometheus text 0.0.4"
    );
    Scrape::parse(response.body_text())
}

/// `GET /metrics` on a new connection.
pub fn scrape(addr: SocketAddr) -> Scrape {
    parse_metrics_response(&get(addr, "/metrics"))
}

/// `GET /metrics` on an existing keep-alive connection, so repeated scrapes open no new
/// connections (and do not move the connection counters).
pub fn scrape_on(conn: &mut Conn) -> Scrape {
    conn.send(build_request("GET", "/metrics", &[], b""));
    parse_metrics_response(&conn.read_response("the /metrics answer"))
}

/// Scrapes on `conn` until `condition` holds for a page, or fails after [`DEADLINE`] showing
/// the last page. For counters that settle once the event loops finish their turn.
pub fn scrape_until(
    conn: &mut Conn,
    what: &str,
    mut condition: impl FnMut(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = scrape_on(conn);
        if condition(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}; last /metrics page:\n{}",
            page.text
        );
        std::thread::yield_now();
    }
}
