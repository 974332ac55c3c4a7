#![allow(clippy::unwrap_used)]
//! `--auth-url`: the herald binary asks a real application (tests/clients/auth_app.py, a
//! Python `http.server` started here) before each stream opens. What the application is
//! sent (cookies, `Authorization`, `Origin`, client address, topics), how each of its
//! answers reaches the client (2xx with topics and expiry, 401, 403, errors, garbage, no
//! answer in time, no application at all), the answer cache, and that subscribers already
//! streaming keep receiving every event while the application is slow.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::http::{assert_error, build_request, form, get, publish_form, Conn};
use crate::common::process::HeraldProcess;
use crate::common::sse::Subscriber;
use crate::common::DEADLINE;

/// The application, killed (by its PID) when dropped.
struct AuthApp {
    child: Child,
    addr: SocketAddr,
}

impl AuthApp {
    fn start() -> AuthApp {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/auth_app.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs tests/clients/auth_app.py (install Python 3)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the auth app prints its port");
        let port: u16 = line
            .trim()
            .strip_prefix("port ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the auth app: {line:?}"));
        AuthApp {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/auth", self.addr)
    }

    /// Every call the application received, in order.
    fn calls(&self) -> Vec<serde_json::Value> {
        let response = get(self.addr, "/calls");
        assert_eq!(response.status, 200, "{}", response.summary());
        serde_json::from_str(response.body_text()).expect("the calls are JSON")
    }
}

impl Drop for AuthApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// herald with `--auth-url` to `app` and `extra` flags.
fn herald(app: &AuthApp, extra: &[&str]) -> HeraldProcess {
    let url = app.url();
    let mut args = vec!["--auth-url", url.as_str(), "--threads", "2"];
    args.extend_from_slice(extra);
    HeraldProcess::spawn(&args)
}

/// Opens `/events?topic=...` with the cookie `user=<user>`; the refusal when there is one.
fn subscribe_as(
    addr: SocketAddr,
    user: &str,
    topics: &str,
) -> Result<Subscriber, crate::common::http::Response> {
    let cookie = format!("user={user}; theme=dark");
    Subscriber::try_open_on(
        Conn::connect(addr),
        &format!("/events?{topics}"),
        &[("Cookie", &cookie), ("Origin", "https://app.example")],
    )
}

#[test]
fn the_application_is_asked_and_its_answers_reach_the_client() {
    let app = AuthApp::start();
    let server = herald(&app, &[]);
    let addr = server.addr;

    // 2xx: admitted, and the stream carries events.
    let mut alice = subscribe_as(addr, "alice", "topic=news&topic=alice/inbox")
        .unwrap_or_else(|refused| panic!("alice was refused: {}", refused.summary()));
    publish_form(addr, &[("topic", "alice/inbox"), ("data", "hello")]);
    assert_eq!(alice.next_event("alice's first event").data, "hello");

    // What the application was sent: the credentials as they arrived, the client and topics.
    let calls = app.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call["cookie"], "user=alice; theme=dark");
    assert_eq!(call["origin"], "https://app.example");
    assert_eq!(call["content_type"], "application/json");
    assert_eq!(call["body"]["action"], "subscribe");
    assert_eq!(call["body"]["client"], "127.0.0.1");
    assert_eq!(
        call["body"]["topics"],
        serde_json::json!(["news", "alice/inbox"])
    );

    // Topics the grant does not cover: 403 from herald.
    let refused = subscribe_as(addr, "alice", "topic=bob/inbox")
        .err()
        .expect("403");
    assert_error(&refused, 403, "a topic outside alice's grant");
    assert!(
        refused.body_text().contains("application does not allow"),
        "{}",
        refused.body_text()
    );

    // 401 and 403 are passed on.
    let refused = subscribe_as(addr, "nobody", "topic=news")
        .err()
        .expect("401");
    assert_error(&refused, 401, "an unknown user");
    let refused = subscribe_as(addr, "mallory", "topic=news")
        .err()
        .expect("403");
    assert_error(&refused, 403, "a user the application forbids");

    // An application that fails, or answers what herald cannot read: 503, retry later.
    for user in ["broken", "garbage"] {
        let refused = subscribe_as(addr, user, "topic=news").err().expect("503");
        assert_error(&refused, 503, user);
        assert_eq!(refused.header("retry-after"), Some("1"), "{user}");
        assert!(
            refused.body_text().contains("could not decide"),
            "{}",
            refused.body_text()
        );
    }

    // Authorization and the token query parameter travel too.
    let mut conn = Conn::connect(addr);
    conn.send(
        "GET /events?topic=news&token=t0k HTTP/1.1\r\nHost: x\r\nCookie: user=bearer\r\nAuthorization: Bearer good\r\n\r\n",
    );
    let head = conn.read_head("the bearer user's stream");
    assert_eq!(head.status, 200, "{}", head.summary());
    let call = app.calls().pop().expect("a call");
    assert_eq!(call["authorization"], "Bearer good");
    assert_eq!(call["body"]["token"], "t0k");

    // The stream of the first subscriber went on through all of this.
    publish_form(addr, &[("topic", "news"), ("data", "still here")]);
    assert_eq!(alice.next_event("alice's news").data, "still here");
}

#[test]
fn a_grant_that_expires_ends_the_stream_with_a_retry_hint() {
    let app = AuthApp::start();
    let server = herald(&app, &["--retry-ms", "1000"]);
    let mut stream = subscribe_as(server.addr, "ttl1", "topic=news").expect("admitted");
    let started = Instant::now();
    stream.read_to_close("the end of the expiring stream");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed {:?} after opening, before the grant's 1 s",
        started.elapsed()
    );
    let retry = stream.closing_retry_hint();
    assert!(
        (1000..=2000).contains(&retry),
        "jittered from --retry-ms: {retry}"
    );
}

#[test]
fn answers_are_cached_per_question() {
    let app = AuthApp::start();
    let server = herald(&app, &["--auth-cache-ms", "60000"]);
    for _ in 0..3 {
        let _stream = subscribe_as(server.addr, "alice", "topic=news").expect("admitted");
    }
    let refused = subscribe_as(server.addr, "mallory", "topic=news")
        .err()
        .expect("403");
    assert_error(&refused, 403, "mallory");
    let refused = subscribe_as(server.addr, "mallory", "topic=news")
        .err()
        .expect("403");
    assert_error(&refused, 403, "mallory from the cache");
    // Another question (other topics) is asked again.
    let _other = subscribe_as(server.addr, "alice", "topic=alice/x").expect("admitted");
    let users: Vec<String> = app
        .calls()
        .iter()
        .map(|call| call["cookie"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        users.len(),
        3,
        "alice news, mallory, alice alice/x: {users:?}"
    );
    let metrics = get(server.addr, "/metrics");
    let text = metrics.body_text();
    assert!(text.contains("herald_auth_cache_hits_total 3"), "{text}");
    assert!(
        text.contains("herald_auth_decisions_total{result=\"forbidden\"} 2"),
        "{text}"
    );
}

#[test]
fn a_slow_or_absent_application_gets_503_and_streams_go_on() {
    let app = AuthApp::start();
    let server = herald(
        &app,
        &[
            "--auth-timeout-ms",
            "500",
            "--auth-workers",
            "2",
            "--auth-queue",
            "2",
        ],
    );
    let addr = server.addr;
    let mut watcher = subscribe_as(addr, "alice", "topic=news").expect("admitted");

    // Eight slow subscriptions at once: two calls in flight, two wait in the queue, the
    // rest are refused at once; every one gets 503 and no loop waits for any.
    let slow: Vec<Conn> = (0..8)
        .map(|_| {
            let mut conn = Conn::connect(addr);
            conn.send("GET /events?topic=news HTTP/1.1\r\nHost: x\r\nCookie: user=slow\r\n\r\n");
            conn
        })
        .collect();
    // Meanwhile the existing stream receives every event, in order.
    for n in 0..20 {
        publish_form(addr, &[("topic", "news"), ("data", &n.to_string())]);
    }
    for n in 0..20 {
        assert_eq!(
            watcher
                .next_event("news while the application is slow")
                .data,
            n.to_string()
        );
    }
    let mut reasons = Vec::new();
    for mut conn in slow {
        let head = conn.read_response("the slow subscription's answer");
        assert_eq!(head.status, 503, "{}", head.summary());
        reasons.push(head.body_text().trim().to_owned());
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("did not decide within auth_timeout_ms")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("too many subscriptions wait")),
        "{reasons:?}"
    );
    drop(server);

    // No application listening at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/auth", closed.local_addr().unwrap());
    drop(closed);
    let server = HeraldProcess::spawn(&["--auth-url", &dead_url]);
    let deadline = Instant::now() + DEADLINE;
    let refused = subscribe_as(server.addr, "alice", "topic=news")
        .err()
        .expect("503");
    assert!(Instant::now() < deadline);
    assert_error(&refused, 503, "no application");
}

#[test]
fn with_auth_publish_the_application_decides_publishes_too() {
    let app = AuthApp::start();
    let server = herald(&app, &["--auth-publish"]);
    let addr = server.addr;
    let mut alice = subscribe_as(addr, "alice", "topic=alice/inbox").expect("admitted");
    let publish = |user: Option<&str>, topic: &str| {
        let cookie = user.map(|user| format!("user={user}"));
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if let Some(cookie) = &cookie {
            headers.push(("Cookie", cookie));
        }
        let body = form(&[("topic", topic), ("data", "x")]);
        let mut conn = Conn::connect(addr);
        conn.send(build_request("POST", "/publish", &headers, body.as_bytes()));
        conn.read_response("the publish's answer")
    };
    let answer = publish(Some("alice"), "alice/inbox");
    assert_eq!(answer.status, 200, "{}", answer.summary());
    assert_eq!(alice.next_event("the allowed publish").data, "x");
    // A body topic outside the grant: 403 once the body is read.
    let answer = publish(Some("alice"), "bob/inbox");
    assert_error(&answer, 403, "a publish outside alice's grant");
    let answer = publish(None, "alice/inbox");
    assert_error(&answer, 401, "a publish without a session");
    let answer = publish(Some("mallory"), "alice/inbox");
    assert_error(&answer, 403, "a publisher the application forbids");
    let actions: Vec<String> = app
        .calls()
        .iter()
        .map(|call| call["body"]["action"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        actions,
        ["subscribe", "publish", "publish", "publish", "publish"]
    );
}
