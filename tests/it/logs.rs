//! Logs (issue 12, item 1): the `herald` binary with `--log-format json` writes only JSON
//! objects on stderr (each parsed by `serde_json`: `ts`, `level`, `target`, `msg`, then the
//! fields), `--access-log` writes one line per answered request and per closed stream with
//! the right fields for every status class herald produces, `--log-level debug` writes the
//! debug lines README promises, and no token or secret appears in any line, in either format.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Child;
use std::time::Instant;

use serde_json::{Map, Value};

use crate::common::*;

const SUBSCRIBE_KEY: &str = "herald-test-subscribe-secret-0123456789";
const PUBLISH_TOKEN: &str = "static-publisher-token-in-the-logs-test";
/// `{"subscribe": ["news", "prices/*"], "exp": 4102444800}` signed with [`SUBSCRIBE_KEY`].
const SUB_NEWS: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsibmV3cyIsInByaWNlcy8qIl0sImV4cCI6NDEwMjQ0NDgwMH0.ufWIeJnyGwGqP3pw8-MHkvxs066OedNaTto6v0E-2_o";
/// The same claims signed with another secret.
const SUB_WRONG_KEY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsibmV3cyIsInByaWNlcy8qIl0sImV4cCI6NDEwMjQ0NDgwMH0.k-ncYKCI2pL2XD6_g5mihmjlmlQcVqHVPHmg2EKr43M";
/// Everything secret the tests send; none may appear in a log line. (The tokens' signatures
/// alone too: a line holding a cut token would still leak it.)
const SECRETS: [&str; 6] = [
    SUBSCRIBE_KEY,
    PUBLISH_TOKEN,
    SUB_NEWS,
    SUB_WRONG_KEY,
    "ufWIeJnyGwGqP3pw8",
    "k-ncYKCI2pL2XD6",
];

/// One log line as fields: JSON objects as they are, logfmt `key=value` pairs as strings.
type Line = Map<String, Value>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Json,
    Logfmt,
}

/// A `herald serve` child with its stderr read line by line.
struct Herald {
    child: Child,
    addr: SocketAddr,
    format: Format,
    stderr: PipeLines,
    exited: bool,
}

impl Herald {
    fn spawn(format: Format, args: &[&str]) -> Herald {
        let name = match format {
            Format::Json => "json",
            Format::Logfmt => "logfmt",
        };
        let mut all = vec!["--log-format", name];
        all.extend_from_slice(args);
        let (child, stderr) = spawn_draining_stderr(&mut herald_serve(&all));
        let mut herald = Herald {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            format,
            stderr,
            exited: false,
        };
        const MARKER: &str = "herald listening on http://";
        let line = herald.next_matching("the listening line", |text, _| text.contains(MARKER));
        let text = &line[line.find(MARKER).unwrap() + MARKER.len()..];
        let end = text.find(['"', ' ']).unwrap_or(text.len());
        herald.addr = text[..end].trim_end_matches('/').parse().unwrap();
        herald
    }

    /// Reads stderr until a line for which `wanted(text, fields)` holds; returns its text.
    fn next_matching(&mut self, what: &str, wanted: impl Fn(&str, &Line) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.stderr.next_before(deadline) {
                Next::Line(text) => {
                    let fields = parse(self.format, &text).unwrap_or_default();
                    if wanted(&text, &fields) {
                        return text;
                    }
                }
                other => panic!(
                    "waiting for {what}: {other:?}; stderr so far: {:#?}",
                    self.stderr.seen()
                ),
            }
        }
    }

    /// Waits for the access line of `method path` with `status`.
    fn access_line(&mut self, method: &str, path: &str, status: u64) -> Line {
        let text = self.next_matching(
            &format!("the access line of {method} {path} {status}"),
            |_, line| {
                text(line, "target") == "herald::access"
                    && text(line, "method") == method
                    && text(line, "path") == path
                    && text(line, "status") == status.to_string()
            },
        );
        parse(self.format, &text).unwrap()
    }

    /// SIGTERM, then every line until stderr closes; returns all lines herald wrote.
    fn stop(&mut self) -> Vec<String> {
        send_signal(self.child.id(), "TERM");
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.stderr.next_before(deadline) {
                Next::Line(_) => {}
                Next::Closed => break,
                Next::TimedOut => panic!("herald did not exit after SIGTERM"),
            }
        }
        let status = self.child.wait().unwrap();
        self.exited = true;
        assert!(status.success(), "{status:?}");
        self.stderr.seen().to_vec()
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A line's fields: a JSON line must be an object (`None` otherwise); a logfmt line starts
/// with `ts=` (`None` for the plain announcement lines).
fn parse(format: Format, text: &str) -> Option<Line> {
    match format {
        Format::Json => match serde_json::from_str(text).ok()? {
            Value::Object(map) => Some(map),
            _ => None,
        },
        Format::Logfmt => text.starts_with("ts=").then(|| parse_logfmt(text)),
    }
}

/// `key=value key="quoted \"value\""` pairs, unescaped, as strings.
fn parse_logfmt(text: &str) -> Line {
    let mut fields = Map::new();
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_owned();
        rest = &rest[eq + 1..];
        let mut value = String::new();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((at, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, 'r')) => value.push('\r'),
                        Some((_, other)) => value.push(other),
                        None => {}
                    },
                    '"' => {
                        end = at + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = &quoted[end..];
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            value.push_str(&rest[..end]);
            rest = &rest[end..];
        }
        fields.insert(key, Value::String(value));
    }
    fields
}

/// A field as text (numbers as digits), empty when absent.
fn text(line: &Line, key: &str) -> String {
    match line.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn number(line: &Line, key: &str) -> u64 {
    text(line, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {line:?}"))
}

/// The fields every access line has, with these values.
fn check_access(line: &Line, client: &str, msg: &str, topics: &str) {
    assert_eq!(text(line, "level"), "info", "{line:?}");
    assert_eq!(text(line, "msg"), msg, "{line:?}");
    assert_eq!(text(line, "client"), client, "{line:?}");
    assert_eq!(text(line, "topics"), topics, "{line:?}");
    assert!(number(line, "bytes") > 0, "{line:?}");
    number(line, "duration_ms");
}

/// Every status class a herald with tokens produces, each request's access line checked as
/// it arrives, then the stream closed by the shutdown; then every line checked for its
/// shape and for secrets.
fn every_status_is_logged_without_secrets(format: Format) {
    let mut herald = Herald::spawn(
        format,
        &[
            "--access-log",
            "--log-level",
            "debug",
            "--publish-token",
            PUBLISH_TOKEN,
            "--subscribe-key",
            SUBSCRIBE_KEY,
            "--max-publish-bytes",
            "1KiB",
            "--trusted-proxy",
            "127.0.0.1/32",
        ],
    );
    let addr = herald.addr;

    // 200, behind a trusted proxy: the client is the address it names.
    let request = build_request(
        "GET",
        "/healthz",
        &[("X-Forwarded-For", "203.0.113.7"), ("Connection", "close")],
        b"",
    );
    assert_eq!(exchange(addr, request).status, 200);
    let line = herald.access_line("GET", "/healthz", 200);
    check_access(&line, "203.0.113.7", "request", "");

    // 200 publish with the static token; 401 without; 413 over max_publish_bytes.
    let bearer = format!("Bearer {PUBLISH_TOKEN}");
    let auth = [("Authorization", bearer.as_str()), ("Connection", "close")];
    let body = form(&[("topic", "news"), ("data", "hello")]);
    let publish = post_request(
        "/publish",
        Some("application/x-www-form-urlencoded"),
        body.as_bytes(),
        &auth,
    );
    assert_eq!(exchange(addr, publish).status, 200);
    let line = herald.access_line("POST", "/publish", 200);
    check_access(&line, "127.0.0.1", "request", "news");
    let unauthorized = post(addr, "/publish?topic=news", Some("text/plain"), b"x");
    assert_eq!(unauthorized.status, 401);
    let line = herald.access_line("POST", "/publish", 401);
    check_access(&line, "127.0.0.1", "request", "");
    let big = vec![b'x'; 2048];
    let too_large = exchange(
        addr,
        post_request("/publish?topic=news", Some("text/plain"), &big, &auth),
    );
    assert_eq!(too_large.status, 413);
    herald.access_line("POST", "/publish", 413);

    // A stream with its token in the query, closed by its client.
    let target = format!("/events?topic=news&token={SUB_NEWS}");
    let subscriber = Subscriber::open(addr, &target, &[]);
    drop(subscriber);
    let line = herald.access_line("GET", "/events", 200);
    check_access(&line, "127.0.0.1", "stream", "news");
    assert_eq!(text(&line, "close"), "client_closed", "{line:?}");

    // 403: a token that does not cover the topic; 401: a token signed with another key, in
    // a header and in the cookie; both logged at debug too.
    let target = format!("/events?topic=sports&token={SUB_NEWS}");
    assert_eq!(get(addr, &target).status, 403);
    herald.access_line("GET", "/events", 403);
    let wrong = format!("Bearer {SUB_WRONG_KEY}");
    let request = build_request(
        "GET",
        "/events?topic=news",
        &[("Authorization", wrong.as_str()), ("Connection", "close")],
        b"",
    );
    assert_eq!(exchange(addr, request).status, 401);
    herald.access_line("GET", "/events", 401);
    let cookie = format!("herald_token={SUB_WRONG_KEY}");
    let request = build_request(
        "GET",
        "/events?topic=news",
        &[("Cookie", cookie.as_str()), ("Connection", "close")],
        b"",
    );
    assert_eq!(exchange(addr, request).status, 401);
    herald.access_line("GET", "/events", 401);

    // 404, 405 (a method herald does not serve is OTHER), 400 before any head.
    assert_eq!(get(addr, "/nope?token=x").status, 404);
    herald.access_line("GET", "/nope", 404);
    let request = build_request("DELETE", "/events", &[("Connection", "close")], b"");
    assert_eq!(exchange(addr, request).status, 405);
    herald.access_line("OTHER", "/events", 405);
    assert_eq!(exchange(addr, b"NOT HTTP\r\n\r\n").status, 400);
    let line = herald.access_line("-", "-", 400);
    assert_eq!(number(&line, "duration_ms"), 0, "{line:?}");

    // A stream open at shutdown: closed with the reason `shutdown`.
    let target = format!("/events?topic=news&topic=prices/a&token={SUB_NEWS}");
    let _subscriber = Subscriber::open(addr, &target, &[]);
    let lines = herald.stop();

    let mut parsed = Vec::new();
    for line in &lines {
        for secret in SECRETS {
            assert!(!line.contains(secret), "a secret in {line:?}");
        }
        match (format, parse(format, line)) {
            (_, Some(fields)) => parsed.push(fields),
            (Format::Json, None) => panic!("not a JSON object: {line:?}"),
            (Format::Logfmt, None) => {}
        }
    }
    for line in &parsed {
        for key in ["ts", "level", "target", "msg"] {
            assert!(line.contains_key(key), "no {key} in {line:?}");
        }
    }
    let stream = parsed
        .iter()
        .find(|line| text(line, "close") == "shutdown")
        .unwrap_or_else(|| panic!("no stream closed by the shutdown in {lines:#?}"));
    check_access(stream, "127.0.0.1", "stream", "news,prices/a");
    // `--log-level debug` logs why a token was refused (its kind, never the token).
    assert!(
        parsed.iter().any(|line| text(line, "level") == "debug"
            && text(line, "msg").starts_with("invalid token: ")),
        "no debug line for the refused token in {lines:#?}"
    );
    // JSON fields keep their types: numbers are numbers.
    if format == Format::Json {
        assert!(
            stream["status"].is_u64() && stream["bytes"].is_u64(),
            "{stream:?}"
        );
    }
}

#[test]
fn json_lines_parse_and_the_access_log_covers_every_status_without_secrets() {
    every_status_is_logged_without_secrets(Format::Json);
}

#[test]
fn logfmt_access_lines_cover_every_status_without_secrets() {
    every_status_is_logged_without_secrets(Format::Logfmt);
}

/// 429 at accept (before any head), and a stream closed at the end of its lifetime.
#[test]
fn refusals_at_accept_and_stream_lifetimes_are_logged() {
    let mut herald = Herald::spawn(
        Format::Json,
        &[
            "--access-log",
            "--max-connections-per-ip",
            "1",
            "--max-stream-lifetime-ms",
            "1000",
        ],
    );
    let addr = herald.addr;
    let mut subscriber = subscribe(addr, &["news"]);
    let mut refused = Conn::connect(addr);
    let response = refused.read_response("the 429 at accept");
    assert_eq!(response.status, 429);
    let line = herald.access_line("-", "-", 429);
    check_access(&line, "127.0.0.1", "request", "");
    // The stream is sent back within its lifetime; its client reads to the close.
    subscriber.read_to_close("the end of the stream's lifetime");
    let line = herald.access_line("GET", "/events", 200);
    check_access(&line, "127.0.0.1", "stream", "news");
    assert_eq!(text(&line, "close"), "lifetime", "{line:?}");
    let lines = herald.stop();
    for line in &lines {
        assert!(
            parse(Format::Json, line).is_some(),
            "not a JSON object: {line:?}"
        );
    }
}

/// Without `--access-log` there is no access line, even at `info`.
#[test]
fn the_access_log_is_off_by_default() {
    let mut herald = Herald::spawn(Format::Json, &["--log-level", "info"]);
    assert_eq!(get(herald.addr, "/healthz").status, 200);
    let lines = herald.stop();
    assert!(
        !lines.iter().any(|line| line.contains("herald::access")),
        "{lines:#?}"
    );
}
