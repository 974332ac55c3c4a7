#![allow(clippy::unwrap_used)]
//! The embedder's hooks (`Server::start_with`): an `Authorize` hook decides subscriptions in
//! Rust from the request's credentials, address and topics; an `ObserveStreams` hook is told
//! when streams open and close and why; a hook that blocks costs its own subscriptions a
//! 503, never the other streams.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use herald::{
    AccessAction, AccessRequest, Decision, Event, Grant, Hooks, ObserveStreams, Server, StreamInfo,
};

use crate::common::http::{assert_error, Conn};
use crate::common::server::{publish, test_config};
use crate::common::sse::Subscriber;
use crate::common::DEADLINE;

/// What the observer was told, in order.
#[derive(Debug, PartialEq)]
enum Notice {
    Opened(StreamInfo),
    Closed(StreamInfo, &'static str),
}

struct Recorder(Mutex<Sender<Notice>>);

impl ObserveStreams for Recorder {
    fn opened(&self, stream: &StreamInfo) {
        let _ = self.0.lock().unwrap().send(Notice::Opened(stream.clone()));
    }
    fn closed(&self, stream: &StreamInfo, reason: &'static str) {
        let _ = self
            .0
            .lock()
            .unwrap()
            .send(Notice::Closed(stream.clone(), reason));
    }
}

fn next(notices: &Receiver<Notice>, what: &str) -> Notice {
    notices
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("no notice for {what}"))
}

/// Decides by the `session` cookie: `s-alice` may read `news` and `alice/*` for a while,
/// `s-short` anything for 1 s, no cookie is 401, anything else 403.
fn decide(request: &AccessRequest) -> Decision {
    assert_eq!(request.action, AccessAction::Subscribe);
    // Every header arrives, in order, the cookie among them.
    assert_eq!(
        request.headers.first().map(|(name, _)| name.as_str()),
        Some("Host")
    );
    let cookie = request.headers.iter().find(|(name, _)| name == "Cookie");
    assert_eq!(
        cookie.map(|(_, value)| Some(value.as_str())),
        request.cookie.as_deref().map(Some)
    );
    let session = request.cookie.as_deref().and_then(|cookie| {
        cookie
            .split("; ")
            .find_map(|pair| pair.strip_prefix("session="))
    });
    match session {
        Some("s-alice") => Decision::Allow(Grant {
            topics: Some(vec!["news".into(), "alice/*".into()]),
            expires_at: None,
        }),
        Some("s-short") => Decision::Allow(Grant {
            topics: None,
            expires_at: Some(SystemTime::now() + Duration::from_secs(1)),
        }),
        Some(_) => Decision::Forbidden,
        None => Decision::Unauthorized,
    }
}

fn open(
    server: &Server,
    session: Option<&str>,
    topics: &str,
) -> Result<Subscriber, crate::common::http::Response> {
    let cookie = session.map(|s| format!("session={s}"));
    let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
    Subscriber::try_open_on(
        Conn::connect(server.local_addr()),
        &format!("/events?{topics}"),
        &headers,
    )
}

#[test]
fn the_hooks_decide_and_are_told_what_streams_do() {
    let (tx, notices) = channel();
    let hooks = Hooks::new()
        .authorize(decide)
        .observe(Recorder(Mutex::new(tx)));
    let mut config = test_config();
    config.retry_ms = 500;
    let server = Server::start_with(config, hooks).expect("start");
    let handle = server.handle();

    let mut alice = open(&server, Some("s-alice"), "topic=news&topic=alice/inbox").expect("alice");
    let opened = match next(&notices, "alice's stream") {
        Notice::Opened(stream) => stream,
        other => panic!("expected an open, got {other:?}"),
    };
    assert_eq!(opened.client, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(opened.topics, ["news", "alice/inbox"]);
    publish(&handle, &Event::new("alice/inbox", "hi"));
    assert_eq!(alice.next_event("alice's event").data, "hi");

    let refused = open(&server, Some("s-alice"), "topic=bob/inbox")
        .err()
        .expect("403");
    assert_error(&refused, 403, "outside the grant");
    let refused = open(&server, Some("s-bob"), "topic=news")
        .err()
        .expect("403");
    assert_error(&refused, 403, "forbidden");
    let refused = open(&server, None, "topic=news").err().expect("401");
    assert_error(&refused, 401, "no session");

    // The client goes: the hook hears why.
    drop(alice);
    assert_eq!(
        next(&notices, "alice's close"),
        Notice::Closed(opened, "client_closed")
    );

    // A grant that ends sends its stream back with a retry hint.
    let mut short = open(&server, Some("s-short"), "topic=news").expect("short");
    let opened = match next(&notices, "the short stream") {
        Notice::Opened(stream) => stream,
        other => panic!("expected an open, got {other:?}"),
    };
    short.read_to_close("the end of the short grant");
    assert!((500..=1000).contains(&short.closing_retry_hint()));
    assert_eq!(
        next(&notices, "the short close"),
        Notice::Closed(opened, "token_expired")
    );

    // Streams still open at shutdown are told so.
    let _late = open(&server, Some("s-alice"), "topic=news").expect("late");
    let opened = match next(&notices, "the late stream") {
        Notice::Opened(stream) => stream,
        other => panic!("expected an open, got {other:?}"),
    };
    server.shutdown();
    let closed = next(&notices, "the close at shutdown");
    assert!(
        closed == Notice::Closed(opened.clone(), "shutdown")
            || closed == Notice::Closed(opened, "server_stopped"),
        "{closed:?}"
    );
}

#[test]
fn a_hook_that_blocks_costs_only_its_own_subscriptions() {
    // The hook blocks every `s-stuck` subscription until the test ends.
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let hook_gate = gate.clone();
    let hooks = Hooks::new().authorize(move |request: &AccessRequest| {
        if request.cookie.as_deref() == Some("session=s-stuck") {
            drop(hook_gate.lock());
        }
        Decision::allow()
    });
    let mut config = test_config();
    config.auth_timeout_ms = 300;
    config.auth_workers = 1;
    config.auth_queue = 1;
    let server = Server::start_with(config, hooks).expect("start");
    let handle = server.handle();

    // The one worker is stuck: this subscription waits out its timeout.
    let mut stuck = Conn::connect(server.local_addr());
    stuck.send("GET /events?topic=news HTTP/1.1\r\nHost: x\r\nCookie: session=s-stuck\r\n\r\n");
    let answer = stuck.read_response("the stuck subscription's answer");
    assert_eq!(answer.status, 503, "{}", answer.summary());
    assert!(
        answer.body_text().contains("auth_timeout_ms"),
        "{}",
        answer.body_text()
    );

    // With the only worker stuck, the queue fills: a second question waits, a third is
    // refused at once. Events keep flowing to a stream opened before.
    drop(held);
    let mut watcher = open(&server, Some("s-ok"), "topic=news").expect("watcher");
    let _held_again = gate.lock().unwrap();
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut conn = Conn::connect(server.local_addr());
        conn.send("GET /events?topic=news HTTP/1.1\r\nHost: x\r\nCookie: session=s-stuck\r\n\r\n");
        conns.push(conn);
    }
    for n in 0..10 {
        publish(&handle, &Event::new("news", n.to_string()));
    }
    for n in 0..10 {
        assert_eq!(
            watcher.next_event("news past a stuck hook").data,
            n.to_string()
        );
    }
    for mut conn in conns {
        let answer = conn.read_response("a subscription behind the stuck hook");
        assert_eq!(answer.status, 503, "{}", answer.summary());
    }
}
