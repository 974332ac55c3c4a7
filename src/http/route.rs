//! Method and path to [`Route`], and the query parameters of a subscription.
//! No I/O here.

use super::answer::HttpError;
use super::form;
use super::head::Method;
use crate::history::topics;

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listener {
    /// The main listener: subscribe, health, demo, and publish unless a publish listener is set.
    Main,
    /// The separate publish listener: publish, health, readiness and metrics.
    Publish,
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /events`: open an event stream.
    Events,
    /// `POST /publish`.
    Publish,
    /// `GET|HEAD /healthz`: liveness, 200 while the process serves.
    Health,
    /// `GET|HEAD /readyz`: readiness, 503 while draining or while the bus is disconnected.
    Ready,
    /// `GET|HEAD /`: the demo page.
    Demo,
    /// `GET|HEAD /metrics`: Prometheus text or OpenMetrics, by `Accept`. Served on the
    /// publish listener when there is one (a private interface), else on the main listener.
    Metrics,
    /// `GET|HEAD /topics`: subscriber counts and newest ids of the topics named. Served
    /// where `/metrics` is, and to publishers only when publishing needs a token.
    Topics,
    /// `OPTIONS /events` or `OPTIONS /publish`: a CORS preflight.
    Preflight,
}

/// What the router needs to know about the server's configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RouteConfig {
    /// Whether a separate publish listener exists.
    pub publish_listener: bool,
    /// Whether the demo page is served.
    pub demo: bool,
}

/// Chooses a route, or the precise refusal.
pub(crate) fn route(
    method: Method,
    path: &str,
    listener: Listener,
    config: RouteConfig,
) -> Result<Route, HttpError> {
    let (route, allow) = match path {
        "/events" if listener == Listener::Main => (Route::Events, "GET, OPTIONS"),
        "/publish" => (Route::Publish, "POST, OPTIONS"),
        "/healthz" => (Route::Health, "GET, HEAD"),
        "/readyz" => (Route::Ready, "GET, HEAD"),
        "/metrics" if listener == Listener::Publish || !config.publish_listener => {
            (Route::Metrics, "GET, HEAD")
        }
        "/topics" if listener == Listener::Publish || !config.publish_listener => {
            (Route::Topics, "GET, HEAD")
        }
        "/" if listener == Listener::Main && config.demo => (Route::Demo, "GET, HEAD"),
        _ => return Err(HttpError::NotFound),
    };
    let allowed = match (route, method) {
        (Route::Events, Method::Get) => Route::Events,
        (Route::Events | Route::Publish, Method::Options) => Route::Preflight,
        (Route::Publish, Method::Post) => Route::Publish,
        (
            Route::Health | Route::Ready | Route::Demo | Route::Metrics | Route::Topics,
            Method::Get | Method::Head,
        ) => route,
        _ => return Err(HttpError::MethodNotAllowed { allow }),
    };
    if allowed == Route::Publish && listener == Listener::Main && config.publish_listener {
        return Err(HttpError::PublishListenerOnly);
    }
    Ok(allowed)
}

/// The parameters of `GET /events`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Subscription {
    /// Distinct, valid topic names in the order given.
    pub topics: Vec<String>,
    /// `lastEventId` from the query (the header, when present, takes precedence).
    pub last_event_id: Option<String>,
    /// `token` from the query, for EventSource clients that cannot set headers.
    pub token: Option<String>,
}

/// Limits on a subscription's topics.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TopicLimits {
    /// Most topics per subscription.
    pub per_subscription: usize,
    /// Longest topic name.
    pub name_bytes: usize,
}

/// Reads the `topic` parameters (repeatable) of `GET /topics`: distinct, valid names, at
/// most as many as a subscription may name. Other parameters are ignored.
pub(crate) fn topic_list(query: &str, limits: TopicLimits) -> Result<Vec<String>, HttpError> {
    let mut topics: Vec<String> = Vec::new();
    for pair in form::pairs(query.as_bytes()) {
        let (key, value) = pair.map_err(|_| {
            HttpError::BadQuery("a query parameter is not UTF-8 once percent-decoded")
        })?;
        if key != "topic" {
            continue;
        }
        if !topics::is_valid_name(&value, limits.name_bytes) {
            return Err(HttpError::InvalidTopic);
        }
        if topics.iter().any(|t| *t == *value) {
            continue;
        }
        if topics.len() == limits.per_subscription {
            return Err(HttpError::TooManyTopics);
        }
        topics.push(value.into_owned());
    }
    if topics.is_empty() {
        return Err(HttpError::MissingTopic);
    }
    Ok(topics)
}

/// Reads `topic` (repeatable) and `lastEventId` from a query string. Other parameters are
/// ignored: browsers and proxies add cache-busters. Any parameter that is not UTF-8 once
/// percent-decoded is refused: read leniently, `%FF` would become U+FFFD.
pub(crate) fn subscription(query: &str, limits: TopicLimits) -> Result<Subscription, HttpError> {
    let mut topics: Vec<String> = Vec::new();
    let mut last_event_id = None;
    let mut token = None;
    for pair in form::pairs(query.as_bytes()) {
        let (key, value) = pair.map_err(|_| {
            HttpError::BadQuery("a query parameter is not UTF-8 once percent-decoded")
        })?;
        match &*key {
            "topic" => {
                if !topics::is_valid_name(&value, limits.name_bytes) {
                    return Err(HttpError::InvalidTopic);
                }
                if topics.iter().any(|t| *t == *value) {
                    continue;
                }
                if topics.len() == limits.per_subscription {
                    return Err(HttpError::TooManyTopics);
                }
                topics.push(value.into_owned());
            }
            // No id herald sends, or an EventSource keeps, holds CR, LF or NUL; the header
            // cannot carry them either, so the query may not.
            "lastEventId" if value.contains(['\r', '\n', '\0']) => {
                return Err(HttpError::BadQuery(
                    "lastEventId must not contain CR, LF or NUL",
                ))
            }
            "lastEventId" => last_event_id = Some(value.into_owned()),
            "token" => token = Some(value.into_owned()),
            _ => {}
        }
    }
    if topics.is_empty() {
        return Err(HttpError::MissingTopic);
    }
    Ok(Subscription {
        topics,
        last_event_id,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: RouteConfig = RouteConfig {
        publish_listener: false,
        demo: true,
    };
    const LIMITS: TopicLimits = TopicLimits {
        per_subscription: 2,
        name_bytes: 8,
    };

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
}
