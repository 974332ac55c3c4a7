//! Access errors (401 without the right bearer token, 403 on the main listener when
//! `--publish-listen` is set), and a subscriber undisturbed by a stream of bad requests.

use super::*;

// --- Access ----------------------------------------------------------------------------------

#[test]
fn publish_without_the_right_bearer_token_is_401() {
    let server = start(|config| config.publish_token = Some("s3cret-token".to_owned()));
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["a"]);
    let wrong: [(&str, Option<&str>); 6] = [
        ("no Authorization", None),
        ("a wrong token", Some("Bearer wrong-token")),
        ("a token prefix", Some("Bearer s3cret")),
        ("a longer token", Some("Bearer s3cret-token-x")),
        ("Basic credentials", Some("Basic czNjcmV0LXRva2Vu")),
        ("Bearer without a token", Some("Bearer")),
    ];
    for (case, authorization) in wrong {
        let extra: Vec<(&str, &str)> = authorization
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        let response = check(
            addr,
            &format!("publish with {case}"),
            &post_request("/publish?topic=a", TEXT, b"refused", &extra),
            401,
            false,
        );
        let challenge = response.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer"),
            "publish with {case}: WWW-Authenticate must be Bearer, got {:?}",
            response.summary()
        );
    }
    let response = exchange(
        addr,
        post_request(
            "/publish?topic=a",
            TEXT,
            b"end",
            &[("Authorization", "Bearer s3cret-token")],
        ),
    );
    assert_eq!(
        response.status,
        200,
        "publish with the right token: {}",
        response.summary()
    );
    assert_eq!(
        subscriber.events_before("end"),
        vec![],
        "refused publishes published nothing"
    );
}

#[test]
fn publish_on_the_main_listener_is_403_when_publish_listen_is_set() {
    let server = start(|config| config.publish_listen = Some("127.0.0.1:0".parse().unwrap()));
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["a"]);
    check(
        addr,
        "raw publish on the main listener",
        &post_raw("/publish?topic=a", TEXT, b"no"),
        403,
        false,
    );
    check(
        addr,
        "form publish on the main listener",
        &post_raw("/publish", FORM, b"topic=a&data=no"),
        403,
        false,
    );
    let private = server.publish_addr().unwrap();
    let response = post(private, "/publish?topic=a", TEXT, b"end");
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(subscriber.events_before("end"), vec![]);
}

// --- The server keeps serving ----------------------------------------------------------------

#[test]
fn a_subscriber_is_undisturbed_by_a_stream_of_bad_requests() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let handle = server.handle();
    let mut subscriber = subscribe(addr, &["calm"]);
    let first = publish(&handle, &Event::new("calm", "before"));
    for request in [
        &b"\x00\x01\x02\x03\r\n\r\n"[..],
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ] {
        let mut conn = Conn::connect(addr);
        conn.send_may_be_cut(request);
        let response = conn.read_response("an error answer");
        assert!(
            (400..500).contains(&response.status),
            "{:?}: {}",
            String::from_utf8_lossy(request),
            response.summary()
        );
    }
    let second = publish(&handle, &Event::new("calm", "after"));
    let events = subscriber.events(2);
    assert_eq!(
        events
            .iter()
            .map(|e| (e.data.as_str(), e.last_event_id.as_str()))
            .collect::<Vec<_>>(),
        vec![("before", first.as_str()), ("after", second.as_str())]
    );
    assert_healthy(addr, "a stream of bad requests");
}
