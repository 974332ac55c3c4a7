//! What each route answers, and who may ask: the fixed answers (health, readiness, demo
//! page, metrics, CORS preflight), presence counts (`/topics`), a publish's answer once the bus assigned its id, the token
//! checks of subscribers and publishers, and whom a request speaks for behind a proxy.
//!
//! Pure: tokens are checked against the wall-clock time the loop passes in.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::auth::{self, Claim, TokenError};
use crate::bus::BusHealth;
use crate::client::{client_addr, client_key};
use crate::config::ForwardedHeader;
use crate::http::answer::{self, HttpError};
use crate::http::head::{Method, Request};
use crate::http::route::{self, Route};
use crate::metrics::Format;

use super::{Env, Readiness};

/// The built-in demo page.
const DEMO_HTML: &str = include_str!("../demo.html");

/// The answer of a route that needs nothing but the request, and its status: `None` for
/// the routes that stream or publish.
pub(super) fn fixed_answer(
    env: &Env<'_>,
    route: Route,
    request: &Request<'_>,
    cors: &str,
) -> Option<(u16, Vec<u8>)> {
    let keep_alive = request.keep_alive;
    let head_only = request.method == Method::Head;
    let mut status = 200;
    let (content_type, cors, body): (&str, &str, Cow<'static, [u8]>) = match route {
        Route::Health => ("text/plain; charset=utf-8", cors, Cow::Borrowed(b"ok\n")),
        Route::Ready => {
            let (code, reason) = readiness_answer(env.readiness);
            status = code;
            ("text/plain; charset=utf-8", cors, Cow::Borrowed(reason))
        }
        Route::Demo => (
            "text/html; charset=utf-8",
            "",
            Cow::Borrowed(DEMO_HTML.as_bytes()),
        ),
        Route::Metrics => {
            let format = Format::negotiate(request.accept.as_slice());
            (
                format.content_type(),
                // The body depends on Accept: a cache must not hand one format to the other.
                "Vary: Accept\r\n",
                Cow::Owned((env.render_metrics)(format).into_bytes()),
            )
        }
        Route::Preflight => return Some((204, answer::preflight(cors, keep_alive))),
        Route::Events | Route::Publish | Route::Topics => return None,
    };
    let bytes = answer::response(status, content_type, cors, &body, keep_alive, head_only);
    Some((status, bytes))
}

/// `GET /topics`: each named topic's subscriber count and newest id, as
/// `{"topics":{"<name>":{"subscribers":N,"last_id":"<id>"|null},...}}`. Asked by whoever
/// may publish: with a publish token or key the request needs the same `Authorization`
/// as a publish, and a JWT's `publish` claim must cover every topic named.
pub(super) fn topics_answer(
    env: &Env<'_>,
    request: &Request<'_>,
    cors: &str,
    now_unix_ms: u64,
) -> Result<Vec<u8>, HttpError> {
    let names = route::topic_list(request.query, env.limits.topics)?;
    if let Some(patterns) = authorize_publisher(env, request, now_unix_ms)? {
        if !auth::allows_all(&patterns, names.iter().map(String::as_str)) {
            return Err(HttpError::Forbidden);
        }
    }
    let mut topics = serde_json::Map::new();
    for name in names {
        let presence = (env.presence)(&name);
        topics.insert(
            name,
            serde_json::json!({
                "subscribers": presence.subscribers,
                "last_id": presence.last_id,
            }),
        );
    }
    let body = serde_json::json!({ "topics": topics }).to_string() + "\n";
    Ok(answer::response(
        200,
        "application/json",
        cors,
        body.as_bytes(),
        request.keep_alive,
        request.method == Method::Head,
    ))
}

/// The client a request speaks for: the address a trusted proxy names, or the peer.
pub(super) fn request_addr(env: &Env<'_>, peer: IpAddr, request: &Request<'_>) -> IpAddr {
    let lines = match env.forwarded_header {
        ForwardedHeader::XForwardedFor => request.x_forwarded_for,
        ForwardedHeader::Forwarded => request.forwarded,
    };
    client_addr(
        peer,
        env.trusted_proxies,
        env.forwarded_header,
        lines.as_slice(),
    )
}

/// `/readyz`: 200 while the node should be sent new traffic, else 503 and why, in one line.
/// Draining comes first: a node on its way out is not coming back, whatever its bus does.
fn readiness_answer(readiness: Readiness) -> (u16, &'static [u8]) {
    match readiness {
        Readiness { draining: true, .. } => (
            503,
            b"not ready: draining (a graceful shutdown is under way)\n",
        ),
        Readiness {
            bus: BusHealth::ReaderDisconnected,
            ..
        } => (
            503,
            b"not ready: the redis bus is disconnected (its reader cannot read the stream)\n",
        ),
        Readiness {
            bus: BusHealth::WriterDisconnected,
            ..
        } => (
            503,
            b"not ready: the redis bus is disconnected (its writer cannot reach redis)\n",
        ),
        Readiness {
            bus: BusHealth::Connected,
            ..
        } => (200, b"ready\n"),
    }
}

/// The key a request's client is counted under: the address a trusted proxy names (or
/// the peer), grouped by `client_key`. Admission and the bus's fair share of resumes use
/// this one reading.
pub(super) fn request_client(env: &Env<'_>, peer: IpAddr, request: &Request<'_>) -> IpAddr {
    client_key(
        request_addr(env, peer, request),
        env.limits.ipv6_prefix_bits,
    )
}

/// How to answer a publish once the bus has.
#[derive(Debug)]
pub(super) struct PublishReply {
    /// The body was JSON: so is the answer.
    pub json: bool,
    /// The body was a batch (NDJSON, or a JSON array): the answer is JSON and lists the
    /// ids in order.
    pub batch: bool,
    /// The connection stays open after the answer.
    pub keep_alive: bool,
    /// CORS header lines for the answer.
    pub cors: String,
    /// With the access log, the publish's request line.
    pub line: Option<super::access::RequestLine>,
}

/// The answer to a publish: its id (plain text, or JSON for a JSON body), a batch's ids
/// (`{"ids":[...]}`), or the refusal, which is also returned for the metrics. A refused
/// publish keeps the connection open.
pub(super) fn publish_answer(
    result: crate::bus::Stored,
    reply: &PublishReply,
) -> (Vec<u8>, Option<HttpError>) {
    let refuse = |error: crate::PublishError| {
        let error = HttpError::Publish(error);
        (
            answer::refusal(error, &reply.cors, reply.keep_alive),
            Some(error),
        )
    };
    let ids = match result {
        Ok(ids) => ids,
        Err(error) => return refuse(error),
    };
    let single = match (reply.batch, ids.as_slice()) {
        (true, _) => None,
        (false, [id]) => Some(id),
        (false, _) => {
            // A bus answers one id per event; a single publish is one event.
            debug_assert!(false, "a single publish answered with {} ids", ids.len());
            return refuse(crate::PublishError::Unavailable);
        }
    };
    let payload = match single {
        // The common answer, built without an intermediate string.
        Some(id) if !reply.json => {
            let bytes = answer::response_of(
                200,
                "text/plain; charset=utf-8",
                &reply.cors,
                &[id.as_str().as_bytes(), b"\n"],
                reply.keep_alive,
                false,
            );
            return (bytes, None);
        }
        Some(id) => serde_json::json!({ "id": id.as_str() }).to_string(),
        None => {
            let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
            serde_json::json!({ "ids": ids }).to_string()
        }
    };
    let bytes = answer::response(
        200,
        "application/json",
        &reply.cors,
        payload.as_bytes(),
        reply.keep_alive,
        false,
    );
    (bytes, None)
}

/// With a subscribe key, a subscription needs a token (see [`auth::subscriber_token`] for
/// where it is read) whose `subscribe` claim covers every topic. Returns when the token
/// stops being accepted (Unix milliseconds), which ends the stream.
pub(super) fn authorize_subscription(
    env: &Env<'_>,
    request: &Request<'_>,
    subscription: &route::Subscription,
    now_unix_ms: u64,
) -> Result<Option<u64>, HttpError> {
    let Some(verifier) = env.subscribe_verifier else {
        return Ok(None);
    };
    let token = auth::subscriber_token(
        request.authorization,
        subscription.token.as_deref(),
        request.cookie,
    )
    .map_err(HttpError::Unauthorized)?;
    let grant = verifier
        .grant(token, Claim::Subscribe, now_unix_ms)
        .map_err(HttpError::Unauthorized)?;
    if !auth::allows_all(
        &grant.patterns,
        subscription.topics.iter().map(String::as_str),
    ) {
        return Err(HttpError::Forbidden);
    }
    Ok(grant.until_unix_ms)
}

/// With a publisher token or key, a publish needs `Authorization: Bearer` with the static
/// token (any topic) or a token whose `publish` claim lists the topics, which are checked
/// once the body is read. Returns those patterns (`None`: any topic). A publish is
/// checked once, when it arrives; a kept-alive connection presents its token again with
/// every request.
pub(super) fn authorize_publisher(
    env: &Env<'_>,
    request: &Request<'_>,
    now_unix_ms: u64,
) -> Result<Option<Vec<String>>, HttpError> {
    let static_token = env.publish_token;
    if static_token.is_none() && env.publish_verifier.is_none() {
        return Ok(None);
    }
    let given = auth::bearer(request.authorization)
        .unwrap_or(Err(TokenError::Missing))
        .map_err(HttpError::Unauthorized)?;
    if static_token.is_some_and(|expected| auth::static_token_matches(given, expected)) {
        return Ok(None);
    }
    let verifier = env
        .publish_verifier
        .ok_or(HttpError::Unauthorized(TokenError::Invalid))?;
    verifier
        .grant(given, Claim::Publish, now_unix_ms)
        .map(|grant| Some(grant.patterns))
        .map_err(HttpError::Unauthorized)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of the inputs, and the answer it gets: draining wins over the bus.
    #[test]
    fn readiness_answers() {
        use BusHealth::*;
        let check = |draining: bool, bus: BusHealth, status: u16, body: &str| {
            let (got_status, got_body) = readiness_answer(Readiness { draining, bus });
            let got_body = std::str::from_utf8(got_body).unwrap();
            assert_eq!((got_status, got_body), (status, body), "{draining} {bus:?}");
            assert_eq!(got_body.matches('\n').count(), 1, "one line: {got_body:?}");
        };
        let draining = "not ready: draining (a graceful shutdown is under way)\n";
        let reader =
            "not ready: the redis bus is disconnected (its reader cannot read the stream)\n";
        let writer = "not ready: the redis bus is disconnected (its writer cannot reach redis)\n";
        check(false, Connected, 200, "ready\n");
        check(false, ReaderDisconnected, 503, reader);
        check(false, WriterDisconnected, 503, writer);
        for bus in [Connected, ReaderDisconnected, WriterDisconnected] {
            check(true, bus, 503, draining);
        }
    }
}
