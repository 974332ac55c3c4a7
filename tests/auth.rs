#![allow(clippy::unwrap_used)]
//! Tokens (issue 4 part 4). With `subscribe_key`, `/events` needs an HS256 JWT whose
//! `subscribe` claim covers every topic (exact names, `prefix*`, `*`), sent as
//! `Authorization: Bearer`, the `token` query parameter or the `herald_token` cookie:
//! missing, badly signed or expired is `401` with `WWW-Authenticate: Bearer`, not covered
//! is `403`. With `publish_key`, `/publish` accepts a JWT whose `publish` claim covers its
//! topics (`403` otherwise) besides the static `publish_token`. `herald_auth_failures_total`
//! counts every refusal.
//!
//! The tokens are fixed vectors made by an independent implementation, PyJWT 2.15.1
//! (`pip install pyjwt`), with this script:
//!
//! ```python
//! import jwt
//! SUB = "herald-test-subscribe-secret-0123456789"
//! PUB = "herald-test-publish-secret-0123456789"
//! OTHER = "an-entirely-different-secret-0123456789"
//! far, past = 4102444800, 1600000000  # 2100-01-01, 2020-09-13
//! def t(claims, key): return jwt.encode(claims, key, algorithm="HS256")
//! print("SUB_NEWS_PRICES", t({"subscribe": ["news", "prices/*"], "exp": far}, SUB))
//! print("SUB_WRONG_KEY", t({"subscribe": ["news", "prices/*"], "exp": far}, OTHER))
//! print("SUB_EXPIRED", t({"subscribe": ["news", "prices/*"], "exp": past}, SUB))
//! print("SUB_EVERYTHING", t({"subscribe": ["*"], "exp": far}, SUB))
//! print("SUB_PUBLISH_ONLY", t({"publish": ["news"], "exp": far}, SUB))
//! print("PUB_NEWS_ALERTS", t({"publish": ["news", "alerts/*"], "exp": far}, PUB))
//! print("PUB_WRONG_KEY", t({"publish": ["news", "alerts/*"], "exp": far}, OTHER))
//! print("PUB_EXPIRED", t({"publish": ["news", "alerts/*"], "exp": past}, PUB))
//! ```

mod common;

use std::net::SocketAddr;

use common::*;
use herald::Event;

const SUBSCRIBE_KEY: &str = "herald-test-subscribe-secret-0123456789";
const PUBLISH_KEY: &str = "herald-test-publish-secret-0123456789";
const PUBLISH_TOKEN: &str = "static-publisher-token";

/// `{"subscribe": ["news", "prices/*"], "exp": 4102444800}` signed with [`SUBSCRIBE_KEY`].
const SUB_NEWS_PRICES: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsibmV3cyIsInByaWNlcy8qIl0sImV4cCI6NDEwMjQ0NDgwMH0.ufWIeJnyGwGqP3pw8-MHkvxs066OedNaTto6v0E-2_o";
/// The same claims signed with another secret.
const SUB_WRONG_KEY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsibmV3cyIsInByaWNlcy8qIl0sImV4cCI6NDEwMjQ0NDgwMH0.k-ncYKCI2pL2XD6_g5mihmjlmlQcVqHVPHmg2EKr43M";
/// The same claims, expired in 2020, signed with [`SUBSCRIBE_KEY`].
const SUB_EXPIRED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsibmV3cyIsInByaWNlcy8qIl0sImV4cCI6MTYwMDAwMDAwMH0.6kf0MGQp7OoGSkdxEFIaqrNAEDEG4AL84kJePB7sBqE";
/// `{"subscribe": ["*"], "exp": 4102444800}` signed with [`SUBSCRIBE_KEY`].
const SUB_EVERYTHING: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsiKiJdLCJleHAiOjQxMDI0NDQ4MDB9.H_4mkSZsJGmQInXTPQUJMJrMdQNHuztFaC3GuYLnj2U";
/// `{"publish": ["news"], "exp": 4102444800}` signed with [`SUBSCRIBE_KEY`]: valid, but
/// grants no subscription.
const SUB_PUBLISH_ONLY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJwdWJsaXNoIjpbIm5ld3MiXSwiZXhwIjo0MTAyNDQ0ODAwfQ.LXyp1ARzZ79yK9MjJtlNxsrQcLnYgomqh59wsspibTs";
/// `{"publish": ["news", "alerts/*"], "exp": 4102444800}` signed with [`PUBLISH_KEY`].
const PUB_NEWS_ALERTS: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJwdWJsaXNoIjpbIm5ld3MiLCJhbGVydHMvKiJdLCJleHAiOjQxMDI0NDQ4MDB9.IVlh1VlVuAaznzdB5RDpR_uqTFGDz7wHUZde5eSVlGk";
/// The same claims signed with another secret.
const PUB_WRONG_KEY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJwdWJsaXNoIjpbIm5ld3MiLCJhbGVydHMvKiJdLCJleHAiOjQxMDI0NDQ4MDB9.Ofkzr2xKKZnx7dR4JyLfUsbkipbcEpG95Wx4Jr7dntg";
/// The same claims, expired in 2020, signed with [`PUBLISH_KEY`].
const PUB_EXPIRED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJwdWJsaXNoIjpbIm5ld3MiLCJhbGVydHMvKiJdLCJleHAiOjE2MDAwMDAwMDB9.XpdxjRxFTMLdPbMPgJYsBNPc16Z8SUMIMNnF6W6cp8w";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET /events` for `topics` with `token` in the query (if any) and extra headers; the
/// refusal, or the open stream.
fn try_subscribe(
    addr: SocketAddr,
    topics: &[&str],
    query_token: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<Subscriber, Response> {
    let mut target = events_target(topics, None);
    if let Some(token) = query_token {
        target.push_str(&format!("&token={}", url_encode(token)));
    }
    Subscriber::try_open_on(Conn::connect(addr), &target, headers)
}

/// Asserts `GET /events?topic=..` with `authorization` is refused with `status`.
fn assert_subscribe_refused(
    addr: SocketAddr,
    topics: &[&str],
    authorization: Option<&str>,
    status: u16,
    case: &str,
) {
    let headers: Vec<(&str, &str)> = authorization
        .map(|value| vec![("Authorization", value)])
        .unwrap_or_default();
    match try_subscribe(addr, topics, None, &headers) {
        Ok(_) => panic!("{case}: the subscription was accepted"),
        Err(response) => {
            assert_error(&response, status, case);
            if status == 401 {
                assert_eq!(
                    response.header("www-authenticate"),
                    Some("Bearer"),
                    "{case}: {}",
                    response.summary()
                );
            }
        }
    }
}

fn auth_failures(addr: SocketAddr) -> f64 {
    scrape(addr).value("herald_auth_failures_total")
}

#[test]
fn subscriptions_without_a_valid_token_are_401_and_uncovered_topics_403() {
    let server = start(|config| config.subscribe_key = Some(SUBSCRIBE_KEY.to_owned()));
    let addr = server.local_addr();
    let garbage = bearer("not.a.jwt");
    let wrong_key = bearer(SUB_WRONG_KEY);
    let expired = bearer(SUB_EXPIRED);
    let not_bearer = format!("Basic {SUB_NEWS_PRICES}");
    let unauthorized: [(Option<&str>, &str); 5] = [
        (None, "no token"),
        (Some(&garbage), "a token that is not a JWT"),
        (Some(&wrong_key), "a token signed with another key"),
        (Some(&expired), "an expired token"),
        (Some(&not_bearer), "a token under another scheme"),
    ];
    for (authorization, case) in unauthorized {
        assert_subscribe_refused(addr, &["news"], authorization, 401, case);
    }
    let good = bearer(SUB_NEWS_PRICES);
    let publish_only = bearer(SUB_PUBLISH_ONLY);
    let forbidden: [(&[&str], &str, &str); 5] = [
        (&["sports"], &good, "a topic the token does not list"),
        (&["news", "sports"], &good, "one topic of two not covered"),
        (&["prices"], &good, "the bare prefix of prices/*"),
        (
            &["pricesx"],
            &good,
            "a name that only shares the prefix's letters",
        ),
        (
            &["news"],
            &publish_only,
            "a token without a subscribe claim",
        ),
    ];
    for (topics, authorization, case) in forbidden {
        assert_subscribe_refused(addr, topics, Some(authorization), 403, case);
    }
    let refusals = (unauthorized.len() + forbidden.len()) as f64;
    let metrics = scrape(addr);
    assert_eq!(metrics.value("herald_auth_failures_total"), refusals);
    assert_eq!(
        metrics.value("herald_http_refusals_total{status=\"401\"}"),
        unauthorized.len() as f64
    );
    assert_eq!(
        metrics.value("herald_http_refusals_total{status=\"403\"}"),
        forbidden.len() as f64
    );
    assert_eq!(server.handle().stats().subscribers, 0);
}

#[test]
fn a_covering_token_in_the_header_query_or_cookie_opens_a_stream_that_receives_events() {
    let server = start(|config| config.subscribe_key = Some(SUBSCRIBE_KEY.to_owned()));
    let addr = server.local_addr();
    let header = bearer(SUB_NEWS_PRICES);
    let cookie = format!("theme=dark; herald_token={SUB_NEWS_PRICES}; lang=en");
    let everything = bearer(SUB_EVERYTHING);
    let mut streams: Vec<(&str, Subscriber)> = vec![
        (
            "Authorization header",
            try_subscribe(addr, &["news"], None, &[("Authorization", &header)])
                .unwrap_or_else(|r| panic!("header token refused: {}", r.summary())),
        ),
        (
            "token query parameter",
            try_subscribe(addr, &["news"], Some(SUB_NEWS_PRICES), &[])
                .unwrap_or_else(|r| panic!("query token refused: {}", r.summary())),
        ),
        (
            "herald_token cookie",
            try_subscribe(addr, &["news"], None, &[("Cookie", &cookie)])
                .unwrap_or_else(|r| panic!("cookie token refused: {}", r.summary())),
        ),
        (
            "news and a prices/* topic",
            try_subscribe(
                addr,
                &["news", "prices/aapl"],
                None,
                &[("Authorization", &header)],
            )
            .unwrap_or_else(|r| panic!("prefix token refused: {}", r.summary())),
        ),
        (
            "the * pattern",
            try_subscribe(
                addr,
                &["news", "prices/aapl", "anything/at.all"],
                None,
                &[("Authorization", &everything)],
            )
            .unwrap_or_else(|r| panic!("* token refused: {}", r.summary())),
        ),
    ];
    let handle = server.handle();
    let first = publish(&handle, &Event::new("news", "headline"));
    for (how, stream) in &mut streams {
        let event = stream.next_event(&format!("an event on the stream opened with the {how}"));
        assert_eq!(
            (event.data.as_str(), event.last_event_id.as_str()),
            ("headline", first.as_str()),
            "{how}"
        );
    }
    let second = publish(&handle, &Event::new("prices/aapl", "187.2"));
    for (how, stream) in &mut streams[3..] {
        let event = stream.next_event(&format!("a prices/aapl event on the {how} stream"));
        assert_eq!(event.last_event_id, second.as_str(), "{how}");
    }
    assert_eq!(auth_failures(addr), 0.0);
}

/// `POST /publish?topic=..` with a text body and an optional `Authorization` value.
fn publish_with(
    addr: SocketAddr,
    topics: &[&str],
    data: &str,
    authorization: Option<&str>,
) -> Response {
    let query: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
    let headers: Vec<(&str, &str)> = authorization
        .map(|value| vec![("Authorization", value), ("Connection", "close")])
        .unwrap_or_else(|| vec![("Connection", "close")]);
    exchange(
        addr,
        post_request(
            &format!("/publish?{}", form(&query)),
            Some("text/plain"),
            data.as_bytes(),
            &headers,
        ),
    )
}

#[test]
fn publishing_takes_a_jwt_with_a_publish_claim_for_its_topics_or_the_static_token() {
    let server = start(|config| {
        config.publish_key = Some(PUBLISH_KEY.to_owned());
        config.publish_token = Some(PUBLISH_TOKEN.to_owned());
    });
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["news", "alerts/fire", "sports"]);
    let jwt = bearer(PUB_NEWS_ALERTS);
    let static_token = bearer(PUBLISH_TOKEN);
    let accepted: [(&[&str], &str, &str); 4] = [
        (&["news"], &jwt, "jwt news"),
        (&["alerts/fire"], &jwt, "jwt alerts/fire"),
        (&["news", "alerts/fire"], &jwt, "jwt both"),
        (&["sports"], &static_token, "static sports"),
    ];
    let mut ids = Vec::new();
    for (topics, authorization, data) in accepted {
        let response = publish_with(addr, topics, data, Some(authorization));
        assert_eq!(response.status, 200, "{data}: {}", response.summary());
        ids.push(id_from_text_answer(response.body_text()));
    }
    let wrong_key = bearer(PUB_WRONG_KEY);
    let expired = bearer(PUB_EXPIRED);
    let subscriber_token = bearer(SUB_NEWS_PRICES);
    let wrong_static = bearer("static-publisher-tokeN");
    let refused: [(&[&str], Option<&str>, u16, &str); 8] = [
        (&["news"], None, 401, "no token"),
        (
            &["news"],
            Some(&wrong_key),
            401,
            "a JWT signed with another key",
        ),
        (&["news"], Some(&expired), 401, "an expired JWT"),
        (&["news"], Some(&subscriber_token), 401, "a subscriber JWT"),
        (&["news"], Some(&wrong_static), 401, "a wrong static token"),
        (
            &["sports"],
            Some(&jwt),
            403,
            "a topic the JWT does not list",
        ),
        (
            &["news", "sports"],
            Some(&jwt),
            403,
            "one topic of two not listed",
        ),
        (&["alerts"], Some(&jwt), 403, "the bare prefix of alerts/*"),
    ];
    for (topics, authorization, status, case) in refused {
        let response = publish_with(addr, topics, case, authorization);
        assert_error(&response, status, case);
        if status == 401 {
            assert_eq!(
                response.header("www-authenticate"),
                Some("Bearer"),
                "{case}: {}",
                response.summary()
            );
        }
    }
    // Exactly the accepted publishes arrived, in order.
    publish(&server.handle(), &Event::new("news", "end"));
    let got: Vec<(String, String)> = subscriber
        .events_before("end")
        .into_iter()
        .map(|e| (e.data, e.last_event_id))
        .collect();
    let expected: Vec<(String, String)> = accepted
        .iter()
        .zip(&ids)
        .map(|((_, _, data), id)| ((*data).to_owned(), id.clone()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(auth_failures(addr), refused.len() as f64);
}

#[test]
fn a_publish_key_alone_requires_a_token() {
    let server = start(|config| config.publish_key = Some(PUBLISH_KEY.to_owned()));
    let addr = server.local_addr();
    let response = publish_with(addr, &["news"], "anonymous", None);
    assert_error(&response, 401, "a publish without a token");
    let response = publish_with(addr, &["news"], "signed", Some(&bearer(PUB_NEWS_ALERTS)));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(server.handle().stats().events_published, 1);
    assert_eq!(auth_failures(addr), 1.0);
}
