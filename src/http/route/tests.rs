//! Unit tests of request routing (`http/route.rs`).

use super::*;

const CONFIG: RouteConfig = RouteConfig {
    publish_listener: false,
    demo: true,
};
const LIMITS: TopicLimits = TopicLimits {
    per_subscription: 2,
    name_bytes: 8,
    patterns_max: 1,
    pattern_prefix_min: 2,
};

#[test]
fn wildcards() {
    let ok = subscription("topic=ab%2F*&topic=a", LIMITS).unwrap();
    assert_eq!(ok.topics, ["ab/*", "a"]);
    let refused = |query: &str| match subscription(query, LIMITS) {
        Err(HttpError::BadQuery(reason)) => reason,
        other => panic!("{query}: {other:?}"),
    };
    assert!(refused("topic=a*").contains("min_pattern_prefix"));
    assert!(refused("topic=*").contains("min_pattern_prefix"));
    assert!(refused("topic=ab*&topic=cd*").contains("max_patterns_per_subscription"));
    for query in [
        "topic=a*b*",
        "topic=ab**",
        "topic=a%20b*",
        "topic=123456789*",
    ] {
        assert!(refused(query).contains("one `*`"), "{query}");
    }
    assert_eq!(
        subscription("topic=a&topic=b&topic=cd*", LIMITS),
        Err(HttpError::TooManyTopics)
    );
    let all = TopicLimits {
        pattern_prefix_min: 0,
        ..LIMITS
    };
    assert_eq!(subscription("topic=*", all).unwrap().topics, ["*"]);
    let off = TopicLimits {
        patterns_max: 0,
        ..LIMITS
    };
    assert!(matches!(
        subscription("topic=ab*", off),
        Err(HttpError::BadQuery(reason)) if reason.contains("off")
    ));
    // `GET /topics` counts exact topics only.
    assert_eq!(
        topic_list("topic=ab*", LIMITS),
        Err(HttpError::InvalidTopic)
    );
}

#[test]
fn routes() {
    let check = |method, path, listener, config, expected: Result<Route, HttpError>| {
        assert_eq!(
            route(method, path, listener, config),
            expected,
            "{method:?} {path}"
        );
    };
    check(
        Method::Get,
        "/events",
        Listener::Main,
        CONFIG,
        Ok(Route::Events),
    );
    check(
        Method::Options,
        "/publish",
        Listener::Main,
        CONFIG,
        Ok(Route::Preflight),
    );
    check(Method::Head, "/", Listener::Main, CONFIG, Ok(Route::Demo));
    for listener in [Listener::Main, Listener::Publish] {
        for method in [Method::Get, Method::Head] {
            check(method, "/readyz", listener, CONFIG, Ok(Route::Ready));
        }
        check(
            Method::Post,
            "/readyz",
            listener,
            CONFIG,
            Err(HttpError::MethodNotAllowed { allow: "GET, HEAD" }),
        );
    }
    let split = RouteConfig {
        publish_listener: true,
        demo: false,
    };
    check(
        Method::Get,
        "/metrics",
        Listener::Main,
        CONFIG,
        Ok(Route::Metrics),
    );
    check(
        Method::Get,
        "/metrics",
        Listener::Main,
        split,
        Err(HttpError::NotFound),
    );
    check(
        Method::Get,
        "/metrics",
        Listener::Publish,
        split,
        Ok(Route::Metrics),
    );
    for (listener, config, expected) in [
        (Listener::Main, CONFIG, Ok(Route::Topics)),
        (Listener::Main, split, Err(HttpError::NotFound)),
        (Listener::Publish, split, Ok(Route::Topics)),
    ] {
        check(Method::Get, "/topics", listener, config, expected);
    }
    check(
        Method::Post,
        "/topics",
        Listener::Main,
        CONFIG,
        Err(HttpError::MethodNotAllowed { allow: "GET, HEAD" }),
    );
    check(
        Method::Get,
        "/nope",
        Listener::Main,
        CONFIG,
        Err(HttpError::NotFound),
    );
    check(
        Method::Post,
        "/events",
        Listener::Main,
        CONFIG,
        Err(HttpError::MethodNotAllowed {
            allow: "GET, OPTIONS",
        }),
    );
    check(
        Method::Get,
        "/publish",
        Listener::Main,
        CONFIG,
        Err(HttpError::MethodNotAllowed {
            allow: "POST, OPTIONS",
        }),
    );
    let split = RouteConfig {
        publish_listener: true,
        demo: false,
    };
    check(
        Method::Post,
        "/publish",
        Listener::Main,
        split,
        Err(HttpError::PublishListenerOnly),
    );
    check(
        Method::Post,
        "/publish",
        Listener::Publish,
        split,
        Ok(Route::Publish),
    );
    check(
        Method::Get,
        "/events",
        Listener::Publish,
        split,
        Err(HttpError::NotFound),
    );
    check(
        Method::Get,
        "/",
        Listener::Main,
        split,
        Err(HttpError::NotFound),
    );
}

#[test]
fn subscriptions() {
    let ok = subscription("topic=a&topic=b%2Fc&topic=a&lastEventId=1-2&_=9", LIMITS).unwrap();
    assert_eq!(ok.topics, ["a", "b/c"]);
    assert_eq!(ok.last_event_id.as_deref(), Some("1-2"));
    assert_eq!(subscription("", LIMITS), Err(HttpError::MissingTopic));
    assert_eq!(subscription("topic=", LIMITS), Err(HttpError::InvalidTopic));
    assert_eq!(
        subscription("topic=a+b", LIMITS),
        Err(HttpError::InvalidTopic)
    );
    assert_eq!(
        subscription("topic=123456789", LIMITS),
        Err(HttpError::InvalidTopic)
    );
    assert_eq!(
        subscription("topic=a&topic=b&topic=c", LIMITS),
        Err(HttpError::TooManyTopics)
    );
}

#[test]
fn topic_lists() {
    assert_eq!(
        topic_list("topic=a&topic=b&topic=a&token=x", LIMITS).unwrap(),
        ["a", "b"]
    );
    assert_eq!(topic_list("x=1", LIMITS), Err(HttpError::MissingTopic));
    assert_eq!(topic_list("topic=a*", LIMITS), Err(HttpError::InvalidTopic));
    assert_eq!(
        topic_list("topic=a&topic=b&topic=c", LIMITS),
        Err(HttpError::TooManyTopics)
    );
}

#[test]
fn since_is_read_strictly() {
    let since = |value: &str| subscription(&format!("topic=a&since={value}"), LIMITS);
    let ok = |value: &str| since(value).map(|s| s.since_ms);
    assert_eq!(ok("0"), Ok(Some(0)));
    assert_eq!(ok("1714564800123"), Ok(Some(1_714_564_800_123)));
    assert_eq!(ok("2024-05-01T12:00:00Z"), Ok(Some(1_714_564_800_000)));
    assert_eq!(
        ok("2024-05-01t12:00:00.123456789z"),
        Ok(Some(1_714_564_800_123))
    );
    assert_eq!(
        ok("2024-05-01T14:00:00.5%2B02:00"),
        Ok(Some(1_714_564_800_500))
    );
    assert_eq!(ok("2024-05-01T07:30:00-04:30"), Ok(Some(1_714_564_800_000)));
    assert_eq!(ok("1970-01-01T00:00:00Z"), Ok(Some(0)));
    assert_eq!(ok("2000-02-29T00:00:00Z"), Ok(Some(951_782_400_000)));
    assert_eq!(ok("9999-12-31T23:59:59.999Z"), Ok(Some(SINCE_MS_MAX)));
    assert_eq!(
        subscription("topic=a", LIMITS).map(|s| s.since_ms),
        Ok(None)
    );
    for bad in [
        "",
        "-1",
        "1e3",
        " 1",
        "1714564800.5",
        "9999999999999999",
        "253402300800000",
        "2024-05-01",
        "2024-05-01T12:00:00",
        "2024-05-01 12:00:00Z",
        "2024-05-01T12:00Z",
        "2024-13-01T12:00:00Z",
        "2023-02-29T12:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T12:00:00.Z",
        "2024-05-01T12:00:00.1234567890Z",
        "2024-05-01T12:00:00%2B24:00",
        "2024-05-01T12:00:00%2B0200",
        "1969-12-31T23:59:59Z",
        "1970-01-01T00:30:00%2B01:00",
        "%EF%BC%922024-05-01T12:00:00Z",
    ] {
        assert_eq!(
            since(bad),
            Err(HttpError::BadQuery(SINCE_REASON)),
            "{bad:?}"
        );
    }
    assert_eq!(
        subscription("topic=a&since=1&since=2", LIMITS),
        Err(HttpError::BadQuery("since may be given once"))
    );
}

/// Hostile input: every prefix of a full time, and each of its bytes replaced by
/// another, is read or refused, never a panic; what is read round-trips the offset.
#[test]
fn since_never_panics_on_mangled_times() {
    let full = "2024-05-01T12:00:00.123456789+02:00";
    for end in 0..=full.len() {
        let _ = parse_since(&full[..end]);
    }
    for at in 0..full.len() {
        for replacement in ["", "0", "9", "-", ":", ".", "Z", "T", "+", "\u{e9}", "99"] {
            let mangled = format!("{}{replacement}{}", &full[..at], &full[at + 1..]);
            let _ = parse_since(&mangled);
        }
    }
    assert_eq!(parse_since(full), Some(1_714_557_600_123));
}

#[test]
fn undecodable_or_control_parameters_are_refused() {
    let not_utf8 = Err(HttpError::BadQuery(
        "a query parameter is not UTF-8 once percent-decoded",
    ));
    for query in [
        "topic=a%FF",
        "topic=a&lastEventId=%FF",
        "topic=a&token=%C3%28",
        "topic=a&_=%FF",
    ] {
        assert_eq!(subscription(query, LIMITS), not_utf8, "{query:?}");
    }
    for query in [
        "topic=a&lastEventId=1%0A2",
        "topic=a&lastEventId=1%0D",
        "topic=a&lastEventId=%00",
    ] {
        assert_eq!(
            subscription(query, LIMITS),
            Err(HttpError::BadQuery(
                "lastEventId must not contain CR, LF or NUL"
            )),
            "{query:?}"
        );
    }
    let ok = subscription("topic=a&lastEventId=%E2%82%AC", LIMITS).unwrap();
    assert_eq!(ok.last_event_id.as_deref(), Some("€"));
}
