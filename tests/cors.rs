#![allow(clippy::unwrap_used)]
//! CORS: preflight `OPTIONS` on /events and /publish, and `Access-Control-Allow-Origin` on
//! /events, for `cors_origins = ["*"]` and for a list of origins (allowed and not allowed).

mod common;

use std::net::SocketAddr;

use common::*;

const ALLOWED: &str = "https://app.example";
const ALSO_ALLOWED: &str = "http://localhost:5173";
const NOT_ALLOWED: &str = "https://evil.example";

fn origin_list() -> Vec<String> {
    vec![ALLOWED.to_owned(), ALSO_ALLOWED.to_owned()]
}

fn preflight(addr: SocketAddr, target: &str, origin: &str, method: &str) -> Response {
    exchange(
        addr,
        build_request(
            "OPTIONS",
            target,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", method),
                (
                    "Access-Control-Request-Headers",
                    "last-event-id, content-type, authorization",
                ),
                ("Connection", "close"),
            ],
            b"",
        ),
    )
}

/// Checks the parts of a 204 preflight answer that do not depend on the origin.
fn assert_preflight(response: &Response, case: &str) {
    assert_eq!(response.status, 204, "{case}: {}", response.summary());
    assert!(response.body.is_empty(), "{case}: a 204 has no body");
    let methods = response
        .header("access-control-allow-methods")
        .unwrap_or_else(|| {
            panic!(
                "{case}: no Access-Control-Allow-Methods; {}",
                response.summary()
            )
        });
    assert!(
        !methods.trim().is_empty(),
        "{case}: empty Access-Control-Allow-Methods"
    );
    let headers = response
        .header("access-control-allow-headers")
        .unwrap_or_else(|| {
            panic!(
                "{case}: no Access-Control-Allow-Headers; {}",
                response.summary()
            )
        })
        .to_ascii_lowercase();
    let listed: Vec<&str> = headers.split(',').map(str::trim).collect();
    for needed in ["last-event-id", "content-type", "authorization"] {
        assert!(
            listed.contains(&needed),
            "{case}: Access-Control-Allow-Headers {headers:?} lacks {needed}"
        );
    }
    let max_age = response
        .header("access-control-max-age")
        .unwrap_or_else(|| panic!("{case}: no Access-Control-Max-Age; {}", response.summary()));
    assert!(
        !max_age.is_empty() && max_age.bytes().all(|b| b.is_ascii_digit()),
        "{case}: Access-Control-Max-Age {max_age:?} is not a number of seconds"
    );
}

fn methods_listed(response: &Response) -> Vec<String> {
    response
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .split(',')
        .map(|m| m.trim().to_ascii_uppercase())
        .collect()
}

fn open_events(addr: SocketAddr, origin: Option<&str>) -> Subscriber {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
    Subscriber::open(addr, "/events?topic=cors", &headers)
}

#[test]
fn wildcard_preflight_on_events_and_publish() {
    let server = start(|config| config.cors_origins = vec!["*".to_owned()]);
    let addr = server.local_addr();
    let events = preflight(addr, "/events?topic=cors", ALLOWED, "GET");
    assert_preflight(&events, "OPTIONS /events with cors_origins = *");
    assert_eq!(events.header("access-control-allow-origin"), Some("*"));
    assert!(
        methods_listed(&events).contains(&"GET".to_owned()),
        "{}",
        events.summary()
    );

    let publish = preflight(addr, "/publish", NOT_ALLOWED, "POST");
    assert_preflight(&publish, "OPTIONS /publish with cors_origins = *");
    assert_eq!(publish.header("access-control-allow-origin"), Some("*"));
    assert!(
        methods_listed(&publish).contains(&"POST".to_owned()),
        "{}",
        publish.summary()
    );
}

#[test]
fn wildcard_allows_any_origin_on_events() {
    let server = start(|config| config.cors_origins = vec!["*".to_owned()]);
    let addr = server.local_addr();
    for origin in [ALLOWED, NOT_ALLOWED, "null"] {
        let subscriber = open_events(addr, Some(origin));
        assert_eq!(
            subscriber.head.header("access-control-allow-origin"),
            Some("*"),
            "GET /events with Origin {origin}: {}",
            subscriber.head.summary()
        );
        assert_eq!(
            subscriber
                .head
                .headers_named("access-control-allow-origin")
                .len(),
            1
        );
    }
}

#[test]
fn origin_list_echoes_an_allowed_origin_with_vary() {
    let server = start(|config| config.cors_origins = origin_list());
    let addr = server.local_addr();
    for origin in [ALLOWED, ALSO_ALLOWED] {
        let subscriber = open_events(addr, Some(origin));
        let head = &subscriber.head;
        assert_eq!(
            head.header("access-control-allow-origin"),
            Some(origin),
            "GET /events with allowed Origin {origin}: {}",
            head.summary()
        );
        let vary = head.headers_named("vary").join(",").to_ascii_lowercase();
        assert!(
            vary.split(',').any(|v| v.trim() == "origin"),
            "GET /events with allowed Origin {origin}: Vary must include Origin; {}",
            head.summary()
        );
    }
}

#[test]
fn origin_list_gives_no_allow_origin_to_other_origins() {
    let server = start(|config| config.cors_origins = origin_list());
    let addr = server.local_addr();
    for origin in [
        NOT_ALLOWED,
        "https://app.example.evil",
        "https://app.example:443",
        "http://app.example",
        "null",
    ] {
        let subscriber = open_events(addr, Some(origin));
        assert_eq!(subscriber.head.status, 200);
        assert_eq!(
            subscriber.head.header("access-control-allow-origin"),
            None,
            "GET /events with Origin {origin} not in the list: {}",
            subscriber.head.summary()
        );
    }
    let subscriber = open_events(addr, None);
    assert_eq!(
        subscriber.head.header("access-control-allow-origin"),
        None,
        "GET /events without Origin: {}",
        subscriber.head.summary()
    );
}

#[test]
fn origin_list_preflight_allowed_and_not_allowed() {
    let server = start(|config| config.cors_origins = origin_list());
    let addr = server.local_addr();
    for target in ["/events?topic=cors", "/publish"] {
        let method = if target == "/publish" { "POST" } else { "GET" };
        let allowed = preflight(addr, target, ALLOWED, method);
        let case = format!("OPTIONS {target} from an allowed origin");
        assert_preflight(&allowed, &case);
        assert_eq!(
            allowed.header("access-control-allow-origin"),
            Some(ALLOWED),
            "{case}: {}",
            allowed.summary()
        );
        assert!(
            methods_listed(&allowed).contains(&method.to_owned()),
            "{case}: {}",
            allowed.summary()
        );

        let refused = preflight(addr, target, NOT_ALLOWED, method);
        let case = format!("OPTIONS {target} from an origin not in the list");
        assert_eq!(refused.status, 204, "{case}: {}", refused.summary());
        assert_eq!(
            refused.header("access-control-allow-origin"),
            None,
            "{case}: {}",
            refused.summary()
        );
    }
}

#[test]
fn cors_headers_do_not_replace_the_stream_headers() {
    let server = start(|config| config.cors_origins = origin_list());
    let subscriber = open_events(server.local_addr(), Some(ALLOWED));
    let head = &subscriber.head;
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    assert_eq!(head.header("x-accel-buffering"), Some("no"));
    assert_eq!(head.header("connection"), Some("close"));
    assert_eq!(head.content_length(), None);
    assert_eq!(head.header("transfer-encoding"), None);
}

#[test]
fn no_cors_configured_gives_no_allow_origin() {
    let server = start(|_| {});
    let subscriber = open_events(server.local_addr(), Some(ALLOWED));
    assert_eq!(
        subscriber.head.header("access-control-allow-origin"),
        None,
        "{}",
        subscriber.head.summary()
    );
    let preflight = preflight(server.local_addr(), "/publish", ALLOWED, "POST");
    assert_preflight(&preflight, "OPTIONS /publish without cors_origins");
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        None,
        "{}",
        preflight.summary()
    );
}
