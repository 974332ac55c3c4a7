#![allow(clippy::unwrap_used)]
//! Admission and request limits (issue 4 part 2): `max_connections` answers the next
//! connection `503` with `Retry-After` while the admitted ones keep working;
//! `max_connections_per_ip` answers `429` with `Retry-After` per client address (other
//! source addresses in 127.0.0.0/8 are other clients); `X-Forwarded-For` and `Forwarded`
//! name the client only when the peer is a trusted proxy; too many topics is `400`, a
//! publish body over `max_publish_bytes` `413`, an oversized head or too many headers `431`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::common::*;
use herald::Event;

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A connection from `127.0.0.<from>`.
fn conn_from(addr: SocketAddr, from: u8) -> Conn {
    Conn::connect_with(addr, Some(loopback(from)), None)
}

/// `GET target` from `127.0.0.<from>` with extra headers and `Connection: close`.
fn get_from(addr: SocketAddr, from: u8, target: &str, headers: &[(&str, &str)]) -> Response {
    let mut conn = conn_from(addr, from);
    let mut all = vec![("Connection", "close")];
    all.extend_from_slice(headers);
    conn.send(build_request("GET", target, &all, b""));
    conn.read_response(&format!("the answer to GET {target} from 127.0.0.{from}"))
}

/// A subscriber to `topic` from `127.0.0.<from>` with extra headers.
fn subscribe_from(addr: SocketAddr, from: u8, topic: &str, headers: &[(&str, &str)]) -> Subscriber {
    Subscriber::open_on(
        conn_from(addr, from),
        &events_target(&[topic], None),
        headers,
    )
}

/// Asserts a refusal with `status` and `Retry-After: retry_after`, and that the connection
/// is then closed.
fn assert_refused_with_retry_after(
    conn: &mut Conn,
    status: u16,
    retry_after: &str,
    case: &str,
) -> Response {
    let response = conn.read_response(&format!("the {status} answer to {case}"));
    assert_error(&response, status, case);
    assert_eq!(
        response.header("retry-after"),
        Some(retry_after),
        "{case}: {}",
        response.summary()
    );
    conn.expect_closed(&format!("the {status} answer to {case}"));
    response
}

/// Publishes `data` to `topic` and checks every subscriber receives it.
fn assert_all_receive(
    server: &herald::Server,
    subscribers: &mut [Subscriber],
    topic: &str,
    data: &str,
) {
    let id = publish(&server.handle(), &Event::new(topic, data));
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let event = subscriber.next_event(&format!("{data:?} on subscriber {i}"));
        assert_eq!(
            (event.data.as_str(), event.last_event_id.as_str()),
            (data, id.as_str()),
            "subscriber {i}"
        );
    }
}

// --- max_connections -------------------------------------------------------------------------

#[test]
fn past_max_connections_new_connections_get_503_with_retry_after_and_the_first_keep_working() {
    const MAX: usize = 3;
    let server = start(|config| config.max_connections = MAX);
    let addr = server.local_addr();
    let mut admitted: Vec<Subscriber> = (0..MAX).map(|_| subscribe(addr, &["news"])).collect();
    for attempt in 0..4 {
        let mut conn = Conn::connect(addr);
        conn.send_may_be_cut(build_request("GET", "/healthz", &[], b""));
        assert_refused_with_retry_after(
            &mut conn,
            503,
            "5",
            &format!(
                "connection {} with max_connections {MAX}",
                MAX + 1 + attempt
            ),
        );
    }
    assert_all_receive(&server, &mut admitted, "news", "the admitted keep working");
    // Once one leaves, a new connection is admitted again.
    drop(admitted.pop());
    wait_until("the closed subscriber to be released", || {
        server.handle().stats().connections == (MAX - 1) as u64
    });
    let metrics = scrape(addr);
    assert_eq!(
        metrics.value("herald_connections_refused_total{reason=\"max_connections\"}"),
        4.0
    );
    assert_eq!(
        metrics.value("herald_http_refusals_total{status=\"503\"}"),
        4.0
    );
    assert_eq!(metrics.value("herald_connections_max"), MAX as f64);
    assert_all_receive(&server, &mut admitted, "news", "still working");
}

// --- max_connections_per_ip ------------------------------------------------------------------

#[test]
fn max_connections_per_ip_refuses_the_third_connection_of_one_address_with_429_only() {
    let server = start(|config| config.max_connections_per_ip = 2);
    let addr = server.local_addr();
    let mut first: Vec<Subscriber> = (0..2)
        .map(|_| subscribe_from(addr, 1, "news", &[]))
        .collect();
    for attempt in 0..2 {
        let mut conn = conn_from(addr, 1);
        conn.send(build_request("GET", "/healthz", &[], b""));
        assert_refused_with_retry_after(
            &mut conn,
            429,
            "1",
            &format!("connection {} from 127.0.0.1", 3 + attempt),
        );
    }
    // Another source address is another client.
    let response = get_from(addr, 2, "/healthz", &[]);
    assert_eq!(response.status, 200, "{}", response.summary());
    let mut second: Vec<Subscriber> = (0..2)
        .map(|_| subscribe_from(addr, 3, "other", &[]))
        .collect();
    assert_all_receive(&server, &mut first, "news", "one");
    assert_all_receive(&server, &mut second, "other", "two");
    let mut conn = conn_from(addr, 3);
    conn.send(build_request("GET", "/healthz", &[], b""));
    assert_refused_with_retry_after(&mut conn, 429, "1", "connection 3 from 127.0.0.3");
    // A slot freed on 127.0.0.1 is usable again.
    drop(first.pop());
    wait_until("the closed subscriber to be released", || {
        server.handle().stats().subscribers == 3
    });
    let response = get_from(addr, 1, "/healthz", &[]);
    assert_eq!(response.status, 200, "{}", response.summary());
    let metrics = parse_metrics_response(&get_from(addr, 4, "/metrics", &[]));
    assert_eq!(
        metrics.value("herald_connections_refused_total{reason=\"max_connections_per_ip\"}"),
        3.0
    );
    assert_eq!(
        metrics.value("herald_http_refusals_total{status=\"429\"}"),
        3.0
    );
}

/// Opens a connection from `127.0.0.<from>` that sends half a request head and waits.
fn partial_head_from(addr: SocketAddr, from: u8) -> Conn {
    let mut conn = conn_from(addr, from);
    conn.send(b"GET /events?topic=news HTTP/1.1\r\nHost: x\r\n");
    conn
}

/// Asserts that a connection from `127.0.0.<from>` that sends nothing is answered 429 at
/// accept, before any request head.
fn refused_at_accept(addr: SocketAddr, from: u8, case: &str) {
    let mut conn = conn_from(addr, from);
    let response = assert_refused_with_retry_after(&mut conn, 429, "1", case);
    assert!(
        response.body_text().contains("max_connections_per_ip"),
        "{case}: {}",
        response.summary()
    );
}

#[test]
fn issue_10_partial_heads_of_one_address_are_refused_at_accept_and_others_are_served() {
    const PER_IP: usize = 3;
    const MAX: usize = PER_IP + 2;
    let server = start(|config| {
        config.max_connections = MAX;
        config.max_connections_per_ip = PER_IP;
    });
    let addr = server.local_addr();
    // 127.0.0.2 holds its share with heads that never complete...
    let holders: Vec<Conn> = (0..PER_IP).map(|_| partial_head_from(addr, 2)).collect();
    wait_until("the partial heads to be accepted", || {
        server.handle().stats().connections == PER_IP as u64
    });
    // ...and is refused at accept for more, without sending a byte, so it can never fill
    // max_connections however many it opens.
    for attempt in 0..MAX {
        refused_at_accept(
            addr,
            2,
            &format!(
                "connection {} of 127.0.0.2 holding partial heads",
                PER_IP + 1 + attempt
            ),
        );
    }
    // Another address is served: a request and a stream.
    let response = get_from(addr, 3, "/healthz", &[]);
    assert_eq!(response.status, 200, "{}", response.summary());
    let mut others = vec![subscribe_from(addr, 3, "news", &[])];
    assert_all_receive(&server, &mut others, "news", "to 127.0.0.3");
    // Slots come back exactly once per connection: after the holders go, 127.0.0.2 gets
    // its full share again, and one more is refused.
    drop(holders);
    wait_until("the holders to be released", || {
        server.handle().stats().connections == 1
    });
    let again: Vec<Conn> = (0..PER_IP).map(|_| partial_head_from(addr, 2)).collect();
    wait_until("the new partial heads to be accepted", || {
        server.handle().stats().connections == (PER_IP + 1) as u64
    });
    refused_at_accept(addr, 2, "127.0.0.2 over its share again");
    drop(again);
    let metrics = parse_metrics_response(&get_from(addr, 4, "/metrics", &[]));
    assert_eq!(
        metrics.value("herald_connections_refused_total{reason=\"max_connections_per_ip\"}"),
        (MAX + 1) as f64
    );
    assert_eq!(
        metrics.value("herald_connections_refused_total{reason=\"max_connections\"}"),
        0.0
    );
}

#[test]
fn issue_10_connections_closed_every_way_give_their_address_slot_back() {
    const PER_IP: usize = 2;
    let server = start(|config| {
        config.max_connections_per_ip = PER_IP;
        config.head_timeout_ms = 200;
    });
    let addr = server.local_addr();
    for round in 0..3 {
        // A head that times out (408), a refused request (404, closed), a stream that
        // ends, a connection closed by its peer: each must release its slot.
        let mut timed_out = partial_head_from(addr, 5);
        let response = timed_out.read_response("the 408 for a head that never completes");
        assert_eq!(
            response.status,
            408,
            "round {round}: {}",
            response.summary()
        );
        timed_out.expect_closed("the 408 answer");
        let response = get_from(addr, 5, "/nowhere", &[]);
        assert_eq!(
            response.status,
            404,
            "round {round}: {}",
            response.summary()
        );
        // Both are closed once their peers have read the answers: the slots come back then.
        drop(timed_out);
        wait_until("the answered connections to close", || {
            server.handle().stats().connections == 0
        });
        let stream = subscribe_from(addr, 5, "news", &[]);
        let idle = conn_from(addr, 5);
        wait_until("the idle connection to be accepted", || {
            server.handle().stats().connections == PER_IP as u64
        });
        refused_at_accept(addr, 5, &format!("round {round}: a third connection"));
        drop(stream);
        drop(idle);
        wait_until("the stream and the idle connection to be released", || {
            server.handle().stats().connections == 0
        });
    }
}

#[test]
fn issue_10_ipv6_clients_are_refused_at_accept_too() {
    let server = start(|config| {
        config.listen = "[::1]:0".parse().unwrap();
        config.max_connections_per_ip = 2;
    });
    let addr = server.local_addr();
    let from = Some("::1".parse().unwrap());
    let mut held: Vec<Subscriber> = (0..2)
        .map(|_| {
            Subscriber::open_on(
                Conn::connect_with(addr, from, None),
                "/events?topic=v6",
                &[],
            )
        })
        .collect();
    let mut conn = Conn::connect_with(addr, from, None);
    assert_refused_with_retry_after(&mut conn, 429, "1", "a third connection from ::1");
    assert_all_receive(&server, &mut held, "v6", "to ::1");
}

// --- The publish listener --------------------------------------------------------------------

#[test]
fn issue_10_the_publish_listener_keeps_working_when_subscribers_fill_max_connections() {
    const MAX: usize = 3;
    let server = start(|config| {
        config.max_connections = MAX;
        config.publish_listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let addr = server.local_addr();
    let publish_addr = server.publish_addr().unwrap();
    let mut subscribers: Vec<Subscriber> = (0..MAX).map(|_| subscribe(addr, &["news"])).collect();
    let mut conn = Conn::connect(addr);
    conn.send_may_be_cut(build_request("GET", "/healthz", &[], b""));
    assert_refused_with_retry_after(&mut conn, 503, "5", "the main listener at max_connections");
    // Operators and publishers on the private listener are not refused.
    let response = get(publish_addr, "/healthz");
    assert_eq!(response.status, 200, "/healthz: {}", response.summary());
    let metrics = parse_metrics_response(&get(publish_addr, "/metrics"));
    assert_eq!(metrics.value("herald_connections_max"), MAX as f64);
    let id = publish_form(
        publish_addr,
        &[("topic", "news"), ("data", "still flowing")],
    );
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let event = subscriber.next_event(&format!("the publish on subscriber {i}"));
        assert_eq!(
            (event.data.as_str(), event.last_event_id.as_str()),
            ("still flowing", id.as_str())
        );
    }
    // A keep-alive publisher holding its connection does not take a subscriber's place,
    // and the main listener is still full.
    let mut publisher = Conn::connect(publish_addr);
    publisher.send(build_request("GET", "/healthz", &[], b""));
    let response = publisher.read_response("/healthz on a kept-alive publish connection");
    assert_eq!(response.status, 200, "{}", response.summary());
    let mut conn = Conn::connect(addr);
    conn.send_may_be_cut(build_request("GET", "/healthz", &[], b""));
    assert_refused_with_retry_after(&mut conn, 503, "5", "the main listener, still full");
}

// --- Trusted proxies -------------------------------------------------------------------------

#[test]
fn x_forwarded_for_from_a_trusted_proxy_names_the_client() {
    let server = start(|config| {
        config.max_connections_per_ip = 2;
        config.trusted_proxies = vec!["127.0.0.1/32".to_owned()];
    });
    let addr = server.local_addr();
    let xff = |client: &'static str| [("X-Forwarded-For", client)];
    let mut one: Vec<Subscriber> = (0..2)
        .map(|_| subscribe_from(addr, 1, "news", &xff("1.1.1.1")))
        .collect();
    // The third connection for 1.1.1.1 is refused, however the header is dressed up: hops
    // are walked from the right past trusted ones, so a prepended address changes nothing.
    let spellings: [(&str, &str); 3] = [
        ("X-Forwarded-For", "1.1.1.1"),
        ("X-Forwarded-For", "1.1.1.1, 127.0.0.1"),
        ("X-Forwarded-For", "9.9.9.9, 1.1.1.1"),
    ];
    for (name, value) in spellings {
        let mut conn = conn_from(addr, 1);
        conn.send(build_request("GET", "/healthz", &[(name, value)], b""));
        assert_refused_with_retry_after(&mut conn, 429, "1", &format!("a third {name}: {value}"));
    }
    // Another forwarded client through the same proxy is admitted, twice, then refused.
    let mut two: Vec<Subscriber> = (0..2)
        .map(|_| subscribe_from(addr, 1, "other", &xff("2.2.2.2")))
        .collect();
    let mut conn = conn_from(addr, 1);
    conn.send(build_request("GET", "/healthz", &xff("2.2.2.2"), b""));
    assert_refused_with_retry_after(&mut conn, 429, "1", "a third X-Forwarded-For: 2.2.2.2");
    // `Forwarded` is not the configured header, so it names nobody: the request is the
    // proxy's own (which holds nothing).
    let response = get_from(addr, 1, "/healthz", &[("Forwarded", "for=1.1.1.1")]);
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_all_receive(&server, &mut one, "news", "to 1.1.1.1");
    assert_all_receive(&server, &mut two, "other", "to 2.2.2.2");
}

#[test]
fn issue_10_every_x_forwarded_for_line_is_walked_from_the_last_one() {
    let server = start(|config| {
        config.max_connections_per_ip = 1;
        config.trusted_proxies = vec!["127.0.0.1/32".to_owned(), "10.0.0.0/8".to_owned()];
    });
    let addr = server.local_addr();
    // Two lines combine in order; the last is the nearest proxy's, and the trusted
    // 10.0.0.7 there says the client is 3.3.3.3 from the first line.
    let lines = [
        ("X-Forwarded-For", "3.3.3.3"),
        ("X-Forwarded-For", "10.0.0.7"),
    ];
    let mut held = vec![subscribe_from(addr, 1, "news", &lines)];
    let same_client: [&[(&str, &str)]; 3] = [
        &lines,
        &[("X-Forwarded-For", "3.3.3.3, 10.0.0.7")],
        &[("X-Forwarded-For", "3.3.3.3")],
    ];
    for headers in same_client {
        let mut conn = conn_from(addr, 1);
        conn.send(build_request("GET", "/healthz", headers, b""));
        assert_refused_with_retry_after(&mut conn, 429, "1", &format!("3.3.3.3 as {headers:?}"));
    }
    // The trusted hop was not counted in the client's place.
    let response = get_from(addr, 1, "/healthz", &[("X-Forwarded-For", "10.0.0.7")]);
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_all_receive(&server, &mut held, "news", "to 3.3.3.3");
}

#[test]
fn issue_10_with_forwarded_header_forwarded_only_forwarded_names_the_client() {
    let server = start(|config| {
        config.max_connections_per_ip = 1;
        config.trusted_proxies = vec!["127.0.0.1/32".to_owned()];
        config.forwarded_header = herald::ForwardedHeader::Forwarded;
    });
    let addr = server.local_addr();
    let mut held = vec![subscribe_from(
        addr,
        1,
        "news",
        &[("Forwarded", "for=\"[2001:db8::1]:4711\";proto=http")],
    )];
    // The same client (one /64) however it is spelled, in one line or two.
    let spellings: [&[(&str, &str)]; 4] = [
        &[("Forwarded", "for=\"[2001:db8::1]\"")],
        &[("Forwarded", "proto=https;FOR=\"[2001:db8:0:0::9]:80\"")],
        &[
            ("Forwarded", "for=192.0.2.1"),
            ("Forwarded", "for=\"[2001:db8::1]\""),
        ],
        &[("Forwarded", "for=\"[2001:db8::1]\", for=127.0.0.1")],
    ];
    for headers in spellings {
        let mut conn = conn_from(addr, 1);
        conn.send(build_request("GET", "/healthz", headers, b""));
        assert_refused_with_retry_after(&mut conn, 429, "1", &format!("{headers:?}"));
    }
    // X-Forwarded-For names nobody now; an obfuscated or unknown node stops at the proxy.
    // One kept-alive connection asks them all: the proxy, named as its own client, holds
    // its one slot across them (separate connections would race the server's close of the
    // previous one for that slot).
    let mut proxy = conn_from(addr, 1);
    for headers in [
        [("X-Forwarded-For", "2001:db8::1")],
        [("Forwarded", "for=unknown")],
        [("Forwarded", "for=_hidden")],
    ] {
        proxy.send(build_request("GET", "/healthz", &headers, b""));
        let response = proxy.read_response(&format!("the answer to {headers:?}"));
        assert_eq!(response.status, 200, "{headers:?}: {}", response.summary());
    }
    assert_all_receive(&server, &mut held, "news", "to 2001:db8::1");
}

#[test]
fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let server = start(|config| {
        config.max_connections_per_ip = 2;
        config.trusted_proxies = vec!["127.0.0.1/32".to_owned()];
    });
    let addr = server.local_addr();
    let mut held = vec![
        subscribe_from(addr, 2, "news", &[("X-Forwarded-For", "3.3.3.3")]),
        subscribe_from(addr, 2, "news", &[("Forwarded", "for=4.4.4.4")]),
    ];
    let mut conn = conn_from(addr, 2);
    conn.send(build_request(
        "GET",
        "/healthz",
        &[("X-Forwarded-For", "5.5.5.5")],
        b"",
    ));
    assert_refused_with_retry_after(
        &mut conn,
        429,
        "1",
        "a third connection from untrusted 127.0.0.2 claiming X-Forwarded-For 5.5.5.5",
    );
    // The proxy itself is unaffected by what 127.0.0.2 did.
    let response = get_from(addr, 1, "/healthz", &[("X-Forwarded-For", "5.5.5.5")]);
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_all_receive(&server, &mut held, "news", "held");
}

// --- Request limits --------------------------------------------------------------------------

#[test]
fn more_topics_than_max_topics_per_subscription_is_400() {
    let server = start(|config| config.max_topics_per_subscription = 2);
    let addr = server.local_addr();
    let mut ok = subscribe(addr, &["a", "b"]);
    let mut conn = Conn::connect(addr);
    conn.send(build_request(
        "GET",
        &events_target(&["a", "b", "c"], None),
        &[],
        b"",
    ));
    let response = conn.read_response("the answer to three topics");
    assert_error(
        &response,
        400,
        "three topics with max_topics_per_subscription 2",
    );
    let response = post(
        addr,
        "/publish?topic=a&topic=b&topic=c",
        Some("text/plain"),
        b"x",
    );
    assert_error(&response, 400, "a publish to three topics");
    assert_eq!(server.handle().stats().events_published, 0);
    let id = publish(&server.handle(), &Event::new("a", "x").and_topic("b"));
    let event = ok.next_event("an event on two topics");
    assert_eq!(event.last_event_id, id.as_str());
}

#[test]
fn a_publish_body_over_max_publish_bytes_is_413_and_closed() {
    const MAX: usize = 1_024;
    let server = start(|config| config.max_publish_bytes = MAX);
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["t"]);
    let mut conn = Conn::connect(addr);
    conn.send_may_be_cut(post_request(
        "/publish?topic=t",
        Some("text/plain"),
        &vec![b'x'; MAX + 1],
        &[],
    ));
    let response = conn.read_response("the answer to an oversized publish");
    assert_error(&response, 413, "a publish body of max_publish_bytes + 1");
    conn.expect_closed("the 413 answer");
    let body = vec![b'y'; MAX];
    let response = post(addr, "/publish?topic=t", Some("text/plain"), &body);
    assert_eq!(response.status, 200, "{}", response.summary());
    let event = subscriber.next_event("the largest allowed publish");
    assert_eq!(event.data.len(), MAX);
    assert_eq!(server.handle().stats().events_published, 1);
}

#[test]
fn an_oversized_head_and_too_many_headers_are_431_and_closed() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let max_head = herald::config::HEAD_BYTES_DEFAULT;
    let long = "v".repeat(max_head);
    let cases: [(&str, Vec<u8>); 2] = [
        (
            "a head over max_head_bytes",
            build_request("GET", "/healthz", &[("X-Long", &long)], b""),
        ),
        ("65 headers", {
            let names: Vec<String> = (0..65).map(|i| format!("X-H{i}")).collect();
            let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
            build_request("GET", "/healthz", &headers, b"")
        }),
    ];
    for (case, request) in cases {
        let mut conn = Conn::connect(addr);
        conn.send_may_be_cut(&request);
        let response = conn.read_response(&format!("the answer to {case}"));
        assert_error(&response, 431, case);
        conn.expect_closed(&format!("the 431 answer to {case}"));
    }
    // 64 headers are fine: Host (added by build_request), Connection and 62 more.
    let names: Vec<String> = (0..62).map(|i| format!("X-H{i}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    headers.push(("Connection", "close"));
    let response = exchange(addr, build_request("GET", "/healthz", &headers, b""));
    assert_eq!(response.status, 200, "64 headers: {}", response.summary());
    let metrics = scrape(addr);
    assert_eq!(
        metrics.value("herald_http_refusals_total{status=\"431\"}"),
        2.0
    );
}
