//! Unit tests of the exchange module.

use super::*;
use crate::config::Config;
use crate::conn::{Env, Now};
use crate::http::route::{RouteConfig, TopicLimits};
use crate::publish::PublishLimits;

/// Feeds `input` to a fresh exchange in one read and returns every answer byte it
/// writes, and the final step.
fn exchange(config: &Config, input: &[u8]) -> (String, Step) {
    let (written, step, _writes) = exchange_counting_writes(config, input);
    (written, step)
}

/// The limits the tests run with: `config`'s, with small topic and publish limits.
fn test_limits(config: &Config) -> Limits {
    let mut limits = config.limits();
    limits.route = RouteConfig {
        publish_listener: false,
        demo: true,
    };
    limits.topics = TopicLimits {
        per_subscription: 4,
        name_bytes: 32,
        patterns_max: 2,
        pattern_prefix_min: 1,
    };
    limits.publish = PublishLimits {
        topics_max: 4,
        topic_bytes_max: 32,
        frame_bytes_max: 1 << 20,
        data_bytes_max: 1 << 19,
        gap_event: "gap".into(),
    };
    limits
}

/// The clock the tests run at.
const NOW: Now = Now { ms: 0, unix_ms: 0 };

/// The environment the tests run in.
fn env<'a>(config: &'a Config, limits: &'a Limits) -> Env<'a> {
    Env {
        limits,
        cors_origins: &config.cors_origins,
        forwarded_header: config.forwarded_header,
        publish_token: config.publish_token.as_deref(),
        trusted_proxies: &[],
        render_metrics: &|_| String::new(),
        presence: &|_| crate::presence::TopicPresence::default(),
        readiness: crate::conn::Readiness::READY,
        subscribe_verifier: None,
        publish_verifier: None,
        authorizing: false,
        authorizing_publish: false,
    }
}

/// How the tests' bus answers publishes.
#[derive(Clone, Copy)]
enum TestBus {
    /// At once, like the embedded bus.
    Now,
    /// Later, like the Redis bus.
    Later,
}

/// A step as the loop would carry it out: a publish goes to `bus` under the next
/// serial (from 1) and the exchange is stepped again.
fn step(exchange: &mut Exchange, env: &Env<'_>, bus: TestBus, serial: &mut u64) -> Step {
    loop {
        match exchange.step(env, NOW) {
            Step::Publish(_) => {
                *serial += 1;
                let submitted = match bus {
                    TestBus::Now => {
                        Submitted::Done(Ok(vec![crate::EventId(format!("1-{serial}"))]))
                    }
                    TestBus::Later => Submitted::Pending,
                };
                exchange.on_submitted(*serial, submitted);
            }
            step => return step,
        }
    }
}

fn new_exchange(limits: &Limits, size: usize) -> Exchange {
    Exchange::new(
        vec![0; size].into_boxed_slice(),
        IpAddr::from([127, 0, 0, 1]),
        Listener::Main,
        false,
        NOW,
        limits,
    )
}

/// As [`exchange`], also returning how many writes the exchange asked for.
fn exchange_counting_writes(config: &Config, input: &[u8]) -> (String, Step, usize) {
    let limits = test_limits(config);
    let env = env(config, &limits);
    let mut exchange = new_exchange(&limits, 1024);
    let mut input = input;
    let mut written = Vec::new();
    let mut writes = 0;
    let mut serial = 0;
    loop {
        match step(&mut exchange, &env, TestBus::Now, &mut serial) {
            Step::Read if !input.is_empty() => {
                let target = exchange.read_target();
                let n = target.len().min(input.len());
                target[..n].copy_from_slice(&input[..n]);
                input = &input[n..];
                exchange.on_read(n, NOW, &limits);
            }
            Step::Write => {
                writes += 1;
                written.extend_from_slice(exchange.unsent());
                let n = exchange.unsent().len();
                exchange.on_written(n, NOW, &limits);
            }
            step => return (String::from_utf8(written).unwrap(), step, writes),
        }
    }
}

/// Drives `exchange` until it needs the bus or more input, writing what it asks to.
fn drive(exchange: &mut Exchange, env: &Env<'_>, serial: &mut u64, written: &mut Vec<u8>) -> Step {
    loop {
        match step(exchange, env, TestBus::Later, serial) {
            Step::Write => {
                written.extend_from_slice(exchange.unsent());
                let n = exchange.unsent().len();
                exchange.on_written(n, NOW, env.limits);
            }
            step => return step,
        }
    }
}

/// Drives `exchange`, reading from `offered` whenever it asks, until it stops for
/// something else (or `offered` runs out).
fn feed(
    exchange: &mut Exchange,
    env: &Env<'_>,
    serial: &mut u64,
    offered: &mut &[u8],
    written: &mut Vec<u8>,
) -> Step {
    loop {
        match drive(exchange, env, serial, written) {
            Step::Read if !offered.is_empty() => {
                let target = exchange.read_target();
                let n = target.len().min(offered.len());
                target[..n].copy_from_slice(&offered[..n]);
                *offered = &offered[n..];
                exchange.on_read(n, NOW, env.limits);
            }
            step => return step,
        }
    }
}

fn statuses(written: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(written)
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn publishes_answered_later_keep_request_order() {
    let config = Config::default();
    let limits = test_limits(&config);
    let env = env(&config, &limits);
    let mut serial = 0;
    let mut exchange = new_exchange(&limits, 1024);
    let input: &[u8] = b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1\
POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n2\
GET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n3";
    let mut offered = input;
    let mut written = Vec::new();
    // All three publishes go to the bus at once; nothing can be answered yet.
    assert_eq!(
        feed(&mut exchange, &env, &mut serial, &mut offered, &mut written),
        Step::Read
    );
    assert!(written.is_empty(), "{}", String::from_utf8_lossy(&written));
    assert!(!exchange.is_idle());
    assert_eq!(
        exchange.on_timeout(NOW, &limits),
        Step::Await,
        "the bus is waited for"
    );
    // The second answer comes first: it waits for the first.
    let id = |n: &str| Ok(vec![crate::EventId(format!("1-{n}"))]);
    assert_eq!(exchange.on_published(2, id("2")), (true, None));
    assert_eq!(
        drive(&mut exchange, &env, &mut serial, &mut written),
        Step::Read
    );
    assert!(written.is_empty());
    assert_eq!(exchange.on_published(1, id("1")), (true, None));
    assert_eq!(
        drive(&mut exchange, &env, &mut serial, &mut written),
        Step::Read
    );
    assert_eq!(
        statuses(&written),
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found"
        ],
        "the 404 was ready: it goes out as soon as the publishes before it did"
    );
    // A refusal is counted and answered in its place.
    let refused = exchange.on_published(3, Err(crate::PublishError::Unavailable));
    assert_eq!(
        refused,
        (
            true,
            Some(HttpError::Publish(crate::PublishError::Unavailable))
        )
    );
    assert_eq!(
        exchange.on_published(3, id("3")),
        (false, None),
        "answered once"
    );
    assert_eq!(
        drive(&mut exchange, &env, &mut serial, &mut written),
        Step::Read
    );
    assert_eq!(
        statuses(&written),
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 503 Service Unavailable"
        ]
    );
    let text = String::from_utf8_lossy(&written);
    let first = text.find("1-1\n").unwrap();
    let second = text.find("1-2\n").unwrap();
    assert!(first < second, "{text}");
    assert!(exchange.is_idle());
}

#[test]
fn in_flight_publishes_are_bounded() {
    let config = Config::default();
    let limits = test_limits(&config);
    let env = env(&config, &limits);
    let mut serial = 0;
    let mut exchange = new_exchange(&limits, 8192);
    let one: &[u8] = b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx";
    let input = one.repeat(PUBLISHES_IN_FLIGHT_MAX + 5);
    let mut offered = &input[..];
    let mut written = Vec::new();
    let step = feed(&mut exchange, &env, &mut serial, &mut offered, &mut written);
    assert_eq!(step, Step::Await, "stops reading at the bound");
    assert_eq!(exchange.in_flight, PUBLISHES_IN_FLIGHT_MAX);
    assert_eq!(
        exchange.on_published(1, Ok(vec![crate::EventId("1-1".into())])),
        (true, None)
    );
    assert_eq!(
        drive(&mut exchange, &env, &mut serial, &mut written),
        Step::Await
    );
    assert_eq!(statuses(&written).len(), 1);
}

#[test]
fn answers_held_behind_a_publish_are_bounded() {
    let config = Config::default();
    let limits = test_limits(&config);
    let env = env(&config, &limits);
    let mut serial = 0;
    let mut exchange = new_exchange(&limits, 8192);
    let mut input: Vec<u8> =
        b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".to_vec();
    let health: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    input.extend(health.repeat(10_000));
    let mut offered = &input[..];
    let mut written = Vec::new();
    let step = feed(&mut exchange, &env, &mut serial, &mut offered, &mut written);
    assert_eq!(step, Step::Await, "reading stops while the publish is owed");
    assert!(written.is_empty());
    assert!(exchange.queued_bytes >= QUEUED_ANSWER_BYTES_MAX);
    assert!(exchange.queued_bytes < QUEUED_ANSWER_BYTES_MAX + 1024);
    assert!(!offered.is_empty(), "the rest stays unread, in the socket");
    assert_eq!(
        exchange.on_published(1, Ok(vec![crate::EventId("1-1".into())])),
        (true, None)
    );
    drive(&mut exchange, &env, &mut serial, &mut written);
    assert_eq!(exchange.queued_bytes, 0);
    assert!(statuses(&written).len() > 100);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let config = Config::default();
    let (out, step) = exchange(
        &config,
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nPOST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let statuses: Vec<&str> = out.lines().filter(|l| l.starts_with("HTTP/1.1")).collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK"
        ]
    );
    assert!(out.ends_with("ok\n"), "{out}");
    assert_eq!(step, Step::Read);
}

#[test]
fn pipelined_answers_go_out_in_one_write_but_a_stream_waits_for_them() {
    let config = Config::default();
    let publish = "POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx";
    let (out, step, writes) = exchange_counting_writes(&config, publish.repeat(5).as_bytes());
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 5);
    assert_eq!((step, writes), (Step::Read, 1));
    let then_subscribe = format!("{publish}GET /events?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
    let (out, step, writes) = exchange_counting_writes(&config, then_subscribe.as_bytes());
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 1);
    assert!(matches!(step, Step::Subscribe(_)), "{step:?}");
    assert_eq!(writes, 1);
}

#[test]
fn an_empty_last_event_id_is_no_id() {
    let config = Config::default();
    for head in [
        "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \r\n\r\n",
        "GET /events?topic=a&lastEventId= HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let (_, step) = exchange(&config, head.as_bytes());
        let Step::Subscribe(request) = step else {
            panic!("{head:?} gave {step:?}");
        };
        assert_eq!(request.last_event_id, None, "{head:?}");
    }
}

#[test]
fn body_larger_than_the_head_buffer_and_expect_continue() {
    let config = Config::default();
    let data = "x".repeat(5000);
    let request = format!(
        "POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n{data}"
    );
    let (out, _) = exchange(&config, request.as_bytes());
    assert!(
        out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{out}"
    );
}

#[test]
fn subscribe_step_carries_header_id_over_query_id() {
    let config = Config::default();
    let (_, step) = exchange(
        &config,
        b"GET /events?topic=a&topic=b&lastEventId=q HTTP/1.1\r\nHost: x\r\nLast-Event-ID: h\r\n\r\n",
    );
    assert_eq!(
        step,
        Step::Subscribe(StreamRequest {
            topics: vec!["a".into(), "b".into()],
            last_event_id: Some("h".into()),
            resume: None,
            cors: String::new(),
            token_until_unix_ms: None,
            client: IpAddr::from([127, 0, 0, 1]),
            access: None,
            addr: IpAddr::from([127, 0, 0, 1]),
            ask: None,
        })
    );
}
