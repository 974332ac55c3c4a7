#![allow(clippy::unwrap_used)]
//! HTTP/1.x connection handling: keep-alive, pipelined publishes answered in order,
//! `Connection: close`, HTTP/1.0 (closes unless `Connection: keep-alive`) and
//! `Expect: 100-continue`.

use crate::common::*;

fn publish_text(topic: &str, body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    post_request(
        &format!("/publish?topic={topic}"),
        Some("text/plain"),
        body.as_bytes(),
        extra,
    )
}

#[test]
fn pipelined_publishes_in_one_write_are_answered_in_order() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["pipe"]);

    let mut batch = Vec::new();
    batch.extend(publish_text("pipe", "one", &[]));
    batch.extend(post_request(
        "/publish",
        Some("application/x-www-form-urlencoded"),
        b"topic=pipe&data=two",
        &[],
    ));
    batch.extend(post_request(
        "/publish",
        Some("application/json"),
        br#"{"topic":"pipe","data":"three"}"#,
        &[],
    ));
    batch.extend(build_request("GET", "/healthz", &[], b""));
    batch.extend(publish_text("pipe", "four", &[("Connection", "close")]));

    let mut conn = Conn::connect(addr);
    conn.send(&batch);
    let first = conn.read_response("answer 1 of 5 (raw publish)");
    let second = conn.read_response("answer 2 of 5 (form publish)");
    let third = conn.read_response("answer 3 of 5 (JSON publish)");
    let health = conn.read_response("answer 4 of 5 (GET /healthz)");
    let fifth = conn.read_response("answer 5 of 5 (raw publish, Connection: close)");
    conn.expect_closed("the answer to a request with Connection: close");

    for response in [&first, &second, &third, &fifth] {
        assert_eq!(response.status, 200, "{}", response.summary());
    }
    let ids = [
        id_from_text_answer(first.body_text()),
        id_from_text_answer(second.body_text()),
        id_from_json_answer(third.body_text()),
        id_from_text_answer(fifth.body_text()),
    ];
    assert_eq!(
        (health.status, health.body_text()),
        (200, "ok\n"),
        "{}",
        health.summary()
    );

    let got: Vec<(String, String)> = subscriber
        .events(4)
        .into_iter()
        .map(|e| (e.last_event_id, e.data))
        .collect();
    let expected: Vec<(String, String)> = ids
        .iter()
        .zip(["one", "two", "three", "four"])
        .map(|(id, data)| (id.clone(), data.to_owned()))
        .collect();
    assert_eq!(
        got, expected,
        "the answers' ids belong to the publishes in order"
    );
}

#[test]
fn many_pipelined_publishes_split_across_writes() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["pipe"]);
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.extend(publish_text("pipe", &format!("m{i}"), &[]));
    }
    let mut conn = Conn::connect(addr);
    // Cut the batch at arbitrary points, mid-head and mid-body.
    for piece in batch.chunks(333) {
        conn.send(piece);
    }
    let ids: Vec<String> = (0..50)
        .map(|i| {
            let response = conn.read_response(&format!("answer {} of 50", i + 1));
            assert_eq!(response.status, 200, "{}", response.summary());
            id_from_text_answer(response.body_text())
        })
        .collect();
    let events = subscriber.events(50);
    for (i, (event, id)) in events.iter().zip(&ids).enumerate() {
        assert_eq!(
            (event.data.as_str(), event.last_event_id.as_str()),
            (format!("m{i}").as_str(), id.as_str())
        );
    }
}

#[test]
fn http_1_1_keeps_the_connection_open_until_connection_close() {
    let server = start(|_| {});
    let mut conn = Conn::connect(server.local_addr());
    for i in 0..3 {
        conn.send(build_request("GET", "/healthz", &[], b""));
        let response = conn.read_response(&format!("keep-alive answer {i}"));
        assert_eq!((response.status, response.body_text()), (200, "ok\n"));
    }
    conn.send(publish_text("ka", "x", &[]));
    assert_eq!(
        conn.read_response("publish on a reused connection").status,
        200
    );
    conn.send(build_request(
        "GET",
        "/healthz",
        &[("Connection", "close")],
        b"",
    ));
    let response = conn.read_response("the last answer");
    assert_eq!(response.status, 200);
    conn.expect_closed("an answer to Connection: close");
}

#[test]
fn http_1_0_closes_after_the_answer() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut conn = Conn::connect(addr);
    conn.send("GET /healthz HTTP/1.0\r\n\r\n");
    let response = conn.read_response("an HTTP/1.0 answer");
    assert_eq!((response.status, response.body_text()), (200, "ok\n"));
    conn.expect_closed("an answer to HTTP/1.0 without keep-alive");

    let mut conn = Conn::connect(addr);
    conn.send(
        "POST /publish?topic=old HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
    );
    let response = conn.read_response("an HTTP/1.0 publish answer");
    assert_eq!(response.status, 200, "{}", response.summary());
    id_from_text_answer(response.body_text());
    conn.expect_closed("an HTTP/1.0 publish answer");
}

#[test]
fn http_1_0_with_keep_alive_stays_open() {
    let server = start(|_| {});
    let mut conn = Conn::connect(server.local_addr());
    for i in 0..2 {
        conn.send("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let response = conn.read_response(&format!("HTTP/1.0 keep-alive answer {i}"));
        assert_eq!((response.status, response.body_text()), (200, "ok\n"));
    }
    conn.send(
        "POST /publish?topic=old HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(
        conn.read_response("HTTP/1.0 keep-alive publish").status,
        200
    );
    conn.send("GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(conn.read_response("the last HTTP/1.0 answer").status, 200);
    conn.expect_closed("an HTTP/1.0 answer without keep-alive");
}

#[test]
fn expect_100_continue_gets_continue_before_the_body_is_sent() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["cont"]);
    let body = b"topic=cont&data=after+continue";
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    let mut conn = Conn::connect(addr);
    conn.send(head);
    let interim = conn.read_until(b"\r\n\r\n", "the 100 Continue answer");
    assert_eq!(
        String::from_utf8_lossy(&interim),
        "HTTP/1.1 100 Continue\r\n\r\n",
        "the interim answer"
    );
    conn.send(body);
    let response = conn.read_response("the final answer after 100 Continue");
    assert_eq!(response.status, 200, "{}", response.summary());
    let id = id_from_text_answer(response.body_text());
    let event = subscriber.next_event("the event published after 100 Continue");
    assert_eq!(
        (event.data.as_str(), event.last_event_id.as_str()),
        ("after continue", id.as_str())
    );

    // The connection is still usable.
    conn.send(build_request(
        "GET",
        "/healthz",
        &[("Connection", "close")],
        b"",
    ));
    assert_eq!(
        conn.read_response("healthz after 100-continue").body_text(),
        "ok\n"
    );
}

#[test]
fn expect_100_continue_with_body_sent_anyway() {
    // Clients may send the body without waiting; the answers must still be right.
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["cont"]);
    let mut conn = Conn::connect(addr);
    conn.send(post_request(
        "/publish?topic=cont",
        Some("text/plain"),
        b"eager",
        &[("Expect", "100-continue"), ("Connection", "close")],
    ));
    let mut response = conn.read_response("the first answer");
    if response.status == 100 {
        response = conn.read_response("the final answer");
    }
    assert_eq!(response.status, 200, "{}", response.summary());
    let id = id_from_text_answer(response.body_text());
    let event = subscriber.next_event("the eager event");
    assert_eq!(
        (event.data.as_str(), event.last_event_id.as_str()),
        ("eager", id.as_str())
    );
}
