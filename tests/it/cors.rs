#![allow(clippy::unwrap_used)]
//! CORS: preflight `OPTIONS` on /events and /publish, and `Access-Control-Allow-Origin` on
//! /events, for `cors_origins = ["*"]` and for a list of origins (allowed and not allowed).

use std::net::SocketAddr;

use crate::common::*;

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

/// Whether `response` lists `Origin` in `Vary`.
fn varies_on_origin(response: &Response) -> bool {
    response
        .headers_named("vary")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("origin"))
}

/// `GET` or `POST` `target` with these headers on its own connection; the answer, whether
/// a stream head (read up to its head) or a complete response.
fn answer_to(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
    let mut all = headers.to_vec();
    all.push(("Connection", "close"));
    let body: &[u8] = if method == "POST" { b"x" } else { b"" };
    if method == "POST" {
        all.push(("Content-Type", "text/plain"));
    }
    let mut conn = Conn::connect(addr);
    conn.send(build_request(method, target, &all, body));
    conn.read_head(&format!("the answer to {method} {target}"))
}

/// `{"subscribe": ["cors"]}` signed with [`SUBSCRIBE_KEY`], made with Python's standard
/// library (`hmac`, `hashlib.sha256`, `base64.urlsafe_b64encode` without padding) over the
/// header `{"alg":"HS256","typ":"JWT"}`.
const COOKIE_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsiY29ycyJdfQ.dD43I81gwdTYgmumBfPmm7tQWjptw4gjtJqbQCIEicY";
const SUBSCRIBE_KEY: &str = "herald-test-subscribe-secret-0123456789";

#[test]
fn named_origins_get_credentials_and_every_answer_varies_on_origin() {
    let server = start(|config| {
        config.cors_origins = origin_list();
        config.subscribe_key = Some(SUBSCRIBE_KEY.to_owned());
    });
    let addr = server.local_addr();
    let cookie = format!("herald_token={COOKIE_TOKEN}");
    // (method, target, headers besides Origin, status, case)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: [Case; 7] = [
        (
            "GET",
            "/events?topic=cors",
            vec![("Cookie", &cookie)],
            200,
            "a stream with a cookie token",
        ),
        (
            "GET",
            "/events?topic=cors",
            vec![],
            401,
            "a 401 for no token",
        ),
        (
            "GET",
            "/events?topic=other",
            vec![("Cookie", &cookie)],
            403,
            "a 403",
        ),
        ("GET", "/events", vec![], 400, "a 400 for no topic"),
        ("GET", "/nowhere", vec![], 404, "a 404"),
        ("GET", "/healthz", vec![], 200, "the health check"),
        ("POST", "/publish?topic=cors", vec![], 200, "a publish"),
    ];
    for (method, target, headers, status, case) in &cases {
        for origin in [Some(ALLOWED), Some(NOT_ALLOWED), None] {
            let mut all = headers.clone();
            all.extend(origin.map(|o| ("Origin", o)));
            let response = answer_to(addr, method, target, &all);
            let case = format!("{case} ({method} {target}, Origin {origin:?})");
            assert_eq!(response.status, *status, "{case}: {}", response.summary());
            assert!(
                varies_on_origin(&response),
                "{case}: no Vary: Origin; {}",
                response.summary()
            );
            let (allow_origin, credentials) = match origin {
                Some(ALLOWED) => (Some(ALLOWED), Some("true")),
                _ => (None, None),
            };
            assert_eq!(
                response.header("access-control-allow-origin"),
                allow_origin,
                "{case}: {}",
                response.summary()
            );
            assert_eq!(
                response.header("access-control-allow-credentials"),
                credentials,
                "{case}: {}",
                response.summary()
            );
        }
    }
    for origin in [ALLOWED, NOT_ALLOWED] {
        let response = preflight(addr, "/events?topic=cors", origin, "GET");
        let case = format!("a preflight from {origin}");
        assert_preflight(&response, &case);
        assert!(
            varies_on_origin(&response),
            "{case}: {}",
            response.summary()
        );
        let credentials = (origin == ALLOWED).then_some("true");
        assert_eq!(
            response.header("access-control-allow-credentials"),
            credentials,
            "{case}: {}",
            response.summary()
        );
    }
}

#[test]
fn a_wildcard_never_allows_credentials_and_varies_on_nothing() {
    let server = start(|config| config.cors_origins = vec!["*".to_owned()]);
    let addr = server.local_addr();
    for origin in [ALLOWED, NOT_ALLOWED] {
        let subscriber = open_events(addr, Some(origin));
        let preflight = preflight(addr, "/publish", origin, "POST");
        for (response, case) in [(&subscriber.head, "a stream"), (&preflight, "a preflight")] {
            assert_eq!(
                response.header("access-control-allow-credentials"),
                None,
                "{case} from {origin}: {}",
                response.summary()
            );
            assert!(
                !varies_on_origin(response),
                "{case} from {origin}: {}",
                response.summary()
            );
        }
    }
}
