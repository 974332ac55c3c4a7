#![allow(clippy::unwrap_used)]
//! `/readyz` against `/healthz` (issue 12, part 3): readiness is `200 ready` while the node
//! should be sent traffic, and `503` with a one-line reason while the Redis bus is
//! disconnected (a real `redis-server` stopped and started again on its port) or while the
//! server drains (SIGTERM to the real binary); liveness (`/healthz`) stays `200` throughout.
//!
//! Waits for a change of state poll `/readyz` on new connections until a deadline; nothing
//! is timed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use herald::BusKind;
use testkit::redis::RedisServer;

/// Pause between two polls of `/readyz` while waiting for the bus to change state.
const POLL: Duration = Duration::from_millis(20);
/// How long the bus may take to notice Redis went or came back: the reader's and the
/// writer's reconnect backoff is at most 2 s and the writer checks an idle connection each
/// second, so this only bounds a hang on a loaded machine.
const BUS_DEADLINE: Duration = Duration::from_secs(30);

const DRAINING: &str = "not ready: draining (a graceful shutdown is under way)\n";
const DISCONNECTED: &str = "not ready: the redis bus is disconnected";

/// `GET /readyz` on a new connection.
fn readyz(addr: SocketAddr) -> Response {
    get(addr, "/readyz")
}

/// Polls `/readyz` until it answers `status`, or fails after [`BUS_DEADLINE`] with the last
/// answer.
fn wait_readyz(addr: SocketAddr, status: u16, waiting_for: &str) -> Response {
    let deadline = Instant::now() + BUS_DEADLINE;
    loop {
        let response = readyz(addr);
        if response.status == status {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting_for}: /readyz still answers {} after {BUS_DEADLINE:?}",
            response.summary()
        );
        std::thread::sleep(POLL);
    }
}

fn assert_ready(response: &Response, case: &str) {
    assert_eq!(
        (response.status, response.body_text()),
        (200, "ready\n"),
        "{case}: {}",
        response.summary()
    );
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{case}"
    );
}

#[test]
fn readyz_is_200_on_both_listeners_with_the_embedded_bus() {
    let server = start(|config| config.publish_listen = Some("127.0.0.1:0".parse().unwrap()));
    let publish_addr = server.publish_addr().unwrap();
    for (addr, listener) in [(server.local_addr(), "main"), (publish_addr, "publish")] {
        assert_ready(&readyz(addr), &format!("GET on the {listener} listener"));
        let mut conn = Conn::connect(addr);
        conn.send(build_request("HEAD", "/readyz", &[], b""));
        let head = conn.read_head("the answer to HEAD /readyz");
        assert_eq!(head.status, 200, "HEAD on {listener}: {}", head.summary());
        assert_eq!(
            head.content_length(),
            Some("ready\n".len()),
            "HEAD on {listener}"
        );
        // Keep-alive: the next request on the same connection is answered, so HEAD sent
        // no body after the head.
        conn.send(build_request("GET", "/readyz", &[], b""));
        assert_ready(
            &conn.read_response("GET /readyz after HEAD"),
            &format!("GET after HEAD on the {listener} listener"),
        );
        let refused = post(addr, "/readyz", None, b"");
        assert_error(&refused, 405, "POST /readyz");
        assert_eq!(refused.header("allow"), Some("GET, HEAD"));
    }
}

/// Redis stops (SIGKILL, a crash) and starts again on the same port: `/readyz` follows,
/// `/healthz` never changes.
#[test]
fn readyz_is_503_while_redis_is_down_and_200_again_once_it_is_back() {
    let mut redis = RedisServer::start("readyz");
    let url = redis.url();
    let server = start(move |config| {
        config.bus = BusKind::Redis;
        config.redis_url = url;
        config.redis_stream = "readyz".into();
    });
    let addr = server.local_addr();
    let response = wait_readyz(addr, 200, "the bus connecting to redis");
    assert_ready(&response, "redis up");
    assert_healthy(addr, "the bus connected");

    redis.kill();
    let response = wait_readyz(addr, 503, "the bus noticing redis is gone");
    assert_error(&response, 503, "/readyz while redis is down");
    assert!(
        response.body_text().starts_with(DISCONNECTED),
        "the reason names the disconnected bus: {:?}",
        response.body_text()
    );
    assert_healthy(addr, "redis went away (liveness does not depend on it)");
    // The publish it cannot serve is refused too: readiness and publishing agree.
    let refused = post(
        addr,
        "/publish",
        Some("application/x-www-form-urlencoded"),
        form(&[("topic", "t"), ("data", "x")]).as_bytes(),
    );
    assert_error(&refused, 503, "a publish while redis is down");

    redis.restart();
    let response = wait_readyz(addr, 200, "the bus reconnecting to redis");
    assert_ready(&response, "redis back");
    publish_form(addr, &[("topic", "t"), ("data", "after")]);
}

/// While draining, the listener is closed, so the only requests still served are those on
/// connections already open with a request under way (an idle connection is closed). One
/// event loop, so the subscriber's parting hint shows the loop holding those connections
/// has begun draining before their heads are finished.
#[test]
fn readyz_is_503_while_draining_while_healthz_is_still_200() {
    let mut herald = HeraldProcess::spawn(&["--threads", "1", "--shutdown-timeout-ms", "10000"]);
    let addr = herald.addr;
    let mut subscriber = subscribe(addr, &["news"]);
    let mut ready_conn = Conn::connect(addr);
    ready_conn.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\n");
    let mut health_conn = Conn::connect(addr);
    health_conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
    // Answered on a later connection of the one loop: the two above were accepted (the
    // backlog is first in, first out), so a drain finds them open with a head under way.
    assert_ready(&readyz(addr), "before the signal");

    herald.signal("TERM");
    let events = subscriber.read_to_close("the parting hint of the drain");
    assert!(events.is_empty(), "unexpected events {events:?}");

    ready_conn.send(b"\r\n");
    let response = ready_conn.read_response("/readyz while draining");
    assert_error(&response, 503, "/readyz while draining");
    assert_eq!(response.body_text(), DRAINING);
    ready_conn.expect_closed("the answer while draining");

    health_conn.send(b"\r\n");
    let response = health_conn.read_response("/healthz while draining");
    assert_eq!(
        (response.status, response.body_text()),
        (200, "ok\n"),
        "liveness while draining: {}",
        response.summary()
    );

    let status = herald.wait_exit(DEADLINE);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; stderr: {:?}",
        herald.stderr_lines()
    );
}
