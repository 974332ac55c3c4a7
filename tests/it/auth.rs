#![allow(clippy::unwrap_used)]
//! Tokens (issue 4 part 4). With `subscribe_key`, `/events` needs an HS256 JWT whose
//! `subscribe` claim covers every topic (exact names, `prefix*`, `*`), sent as
//! `Authorization: Bearer`, the `token` query parameter or the `herald_token` cookie:
//! missing, badly signed or expired is `401` with `WWW-Authenticate: Bearer`, not covered
//! is `403`. With `publish_key`, `/publish` accepts a JWT whose `publish` claim covers its
//! topics (`403` otherwise) besides the static `publish_token`. `herald_auth_failures_total`
//! counts every refusal. Issue 10: `exp` and `nbf` must be numbers and are enforced with a
//! 5 s leeway, `crit` is refused, a stream ends with a `retry:` when its token does, the
//! `Bearer` scheme is case-insensitive, the cookie may be quoted, and the sources have one
//! precedence.
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

use std::net::SocketAddr;

use crate::common::*;
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

// ---------------------------------------------------------------------------------------------
// Time claims, crit, token sources (issue 10 items 6 to 8)
// ---------------------------------------------------------------------------------------------

/// The wall clock in Unix seconds, which tokens' `exp` and `nbf` are measured in.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HS256 token with exactly this header and these claims (JSON text, written out by
/// hand so malformed claims can be tried), signed with `key`. Only the HMAC comes from a
/// library: what is under test is how herald reads the claims.
fn mint(key: &str, header: &str, claims: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(key.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256);
    format!("{message}.{}", signature.unwrap())
}

/// A subscriber token for `news` with these extra claims (JSON members, may be empty).
fn sub_token(extra: &str) -> String {
    let claims = if extra.is_empty() {
        r#"{"subscribe":["news"]}"#.to_owned()
    } else {
        format!(r#"{{"subscribe":["news"],{extra}}}"#)
    };
    mint(SUBSCRIBE_KEY, r#"{"alg":"HS256","typ":"JWT"}"#, &claims)
}

#[test]
fn malformed_time_claims_a_future_nbf_and_a_crit_header_are_refused_401() {
    let server = start(|config| {
        config.subscribe_key = Some(SUBSCRIBE_KEY.to_owned());
        config.publish_key = Some(PUBLISH_KEY.to_owned());
    });
    let addr = server.local_addr();
    let now = unix_now();
    let crit = mint(
        SUBSCRIBE_KEY,
        r#"{"alg":"HS256","typ":"JWT","crit":["b64"],"b64":false}"#,
        r#"{"subscribe":["news"]}"#,
    );
    // (token, what the reason must mention, case)
    let refused: Vec<(String, &str, &str)> = vec![
        (sub_token(r#""exp":"4102444800""#), "exp", "exp as a string"),
        (sub_token(r#""exp":-1"#), "exp", "a negative exp"),
        (sub_token(r#""exp":null"#), "exp", "exp null"),
        (sub_token(r#""exp":{}"#), "exp", "exp an object"),
        (
            sub_token(&format!(r#""nbf":{}"#, now + 3600)),
            "nbf",
            "nbf an hour ahead",
        ),
        (sub_token(r#""nbf":"0""#), "nbf", "nbf as a string"),
        (
            sub_token(&format!(r#""exp":{}.5"#, now - 60)),
            "exp",
            "a fractional exp a minute ago",
        ),
        (crit, "crit", "a crit header"),
    ];
    for (token, mentions, case) in &refused {
        let response = try_subscribe(addr, &["news"], Some(token), &[])
            .map(|_| ())
            .expect_err(case);
        assert_error(&response, 401, case);
        assert!(
            response.body_text().contains(mentions),
            "{case}: the reason must name {mentions}; {}",
            response.summary()
        );
        assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer"),
            "{case}"
        );
    }
    // Publisher tokens follow the same rules.
    let bad_exp = mint(
        PUBLISH_KEY,
        r#"{"alg":"HS256"}"#,
        r#"{"publish":["news"],"exp":"never"}"#,
    );
    let response = publish_with(addr, &["news"], "x", Some(&bearer(&bad_exp)));
    assert_error(&response, 401, "a publisher token with exp as a string");
    // Siblings that stay accepted: a fractional exp ahead, nbf passed (or within the
    // leeway), iat in the future (informational), no exp at all.
    for (extra, case) in [
        (
            format!(r#""exp":{}.25"#, now + 3600),
            "a fractional exp ahead",
        ),
        (format!(r#""nbf":{}"#, now - 10), "nbf passed"),
        (format!(r#""nbf":{}"#, now + 1), "nbf a second ahead"),
        (format!(r#""iat":{}"#, now + 3600), "iat an hour ahead"),
        (String::new(), "no exp"),
    ] {
        if let Err(response) = try_subscribe(addr, &["news"], Some(&sub_token(&extra)), &[]) {
            panic!("{case}: refused: {}", response.summary());
        }
    }
    assert_eq!(auth_failures(addr), (refused.len() + 1) as f64);
}

#[test]
fn a_stream_whose_token_expires_gets_a_jittered_retry_and_is_closed_and_a_fresh_token_reconnects() {
    const RETRY_MS: u32 = 1_500;
    let server = start(|config| {
        config.subscribe_key = Some(SUBSCRIBE_KEY.to_owned());
        config.retry_ms = RETRY_MS;
        // A longer lifetime does not keep the stream past its token.
        config.max_stream_lifetime_ms = 600_000;
    });
    let addr = server.local_addr();
    // exp three seconds ago: still accepted within the 5 s leeway, so the token ends about
    // two seconds from now.
    let expiring = sub_token(&format!(r#""exp":{}"#, unix_now() - 3));
    let mut subscriber = try_subscribe(addr, &["news"], Some(&expiring), &[])
        .unwrap_or_else(|r| panic!("a token within the leeway was refused: {}", r.summary()));
    let id = publish(&server.handle(), &Event::new("news", "before expiry"));
    assert_eq!(
        subscriber
            .next_event("an event before the token expires")
            .last_event_id,
        id.as_str()
    );
    let rest = subscriber.read_to_close("the stream's end at its token's exp plus the leeway");
    assert!(rest.is_empty(), "unexpected events: {rest:?}");
    let hint = subscriber.closing_retry_hint();
    assert!(
        (u64::from(RETRY_MS)..2 * u64::from(RETRY_MS)).contains(&hint),
        "the closing retry: {hint} must be jittered within [{RETRY_MS}, {})",
        2 * RETRY_MS
    );
    // The same token now fails; a fresh one (here in the cookie, as a browser page that
    // renewed it would send) resumes where the stream stopped.
    let response = try_subscribe(addr, &["news"], Some(&expiring), &[])
        .map(|_| ())
        .expect_err("the expired token");
    assert_error(&response, 401, "reconnecting with the expired token");
    let fresh = sub_token(&format!(r#""exp":{}"#, unix_now() + 3600));
    let cookie = format!("herald_token={fresh}");
    let missed = publish(&server.handle(), &Event::new("news", "while away"));
    let mut again = Subscriber::open(
        addr,
        &events_target(&["news"], Some(id.as_str())),
        &[("Cookie", &cookie)],
    );
    assert_eq!(
        again
            .next_event("the event missed while reconnecting")
            .last_event_id,
        missed.as_str()
    );
}

#[test]
fn auth_schemes_are_case_insensitive_cookies_may_be_quoted_and_sources_have_one_precedence() {
    let server = start(|config| {
        config.subscribe_key = Some(SUBSCRIBE_KEY.to_owned());
        config.publish_key = Some(PUBLISH_KEY.to_owned());
        config.publish_token = Some(PUBLISH_TOKEN.to_owned());
    });
    let addr = server.local_addr();
    let good = SUB_NEWS_PRICES;
    let quoted = format!("a=1; herald_token=\"{good}\"; b=2");
    let upper = format!("BEARER {good}");
    let lower = format!("bearer {good}");
    let spaced = format!("Bearer \t {good} ");
    let bad_header = bearer(SUB_WRONG_KEY);
    let good_cookie = format!("herald_token={good}");
    let bad_cookie = format!("herald_token={SUB_WRONG_KEY}");
    let first_of_two = format!("herald_token={good}; herald_token={SUB_WRONG_KEY}");
    type Case<'a> = (Option<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let accepted: Vec<Case> = vec![
        (None, vec![("Authorization", &upper)], "scheme in capitals"),
        (
            None,
            vec![("Authorization", &lower)],
            "scheme in lower case",
        ),
        (None, vec![("Authorization", &spaced)], "spaces and a tab"),
        (None, vec![("Cookie", &quoted)], "a quoted cookie value"),
        (
            None,
            vec![("Cookie", &first_of_two)],
            "the first of two herald_token cookies",
        ),
        (
            Some(""),
            vec![("Cookie", &good_cookie)],
            "an empty token parameter is no token",
        ),
        (
            None,
            vec![
                ("Authorization", "Basic dXNlcjpwYXNz"),
                ("Cookie", &good_cookie),
            ],
            "another scheme is passed over",
        ),
        (
            None,
            vec![("Authorization", &upper), ("Cookie", &bad_cookie)],
            "the header wins over the cookie",
        ),
        (
            Some(good),
            vec![("Cookie", &bad_cookie)],
            "the parameter wins over the cookie",
        ),
    ];
    for (query, headers, case) in &accepted {
        if let Err(response) = try_subscribe(addr, &["news"], *query, headers) {
            panic!("{case}: refused: {}", response.summary());
        }
    }
    type Refused<'a> = (Option<&'a str>, Vec<(&'a str, &'a str)>, u16, &'a str);
    let refused: Vec<Refused> = vec![
        (
            Some(good),
            vec![("Authorization", &bad_header)],
            401,
            "a bad header token is not passed over for the parameter",
        ),
        (
            None,
            vec![("Authorization", &bad_header), ("Cookie", &good_cookie)],
            401,
            "a bad header token is not passed over for the cookie",
        ),
        (
            None,
            vec![("Authorization", &upper), ("Authorization", &upper)],
            400,
            "two Authorization headers",
        ),
    ];
    for (query, headers, status, case) in &refused {
        let response = try_subscribe(addr, &["news"], *query, headers)
            .map(|_| ())
            .expect_err(case);
        assert_error(&response, *status, case);
    }
    // RFC 6750's `access_token` parameter is not read: `token` is the one parameter.
    let target = format!("/events?topic=news&access_token={}", url_encode(good));
    let response = Subscriber::try_open_on(Conn::connect(addr), &target, &[])
        .map(|_| ())
        .expect_err("access_token");
    assert_error(&response, 401, "the access_token parameter");
    // Publishers: the scheme in any case, for the static token and for a JWT.
    for authorization in [
        format!("BEARER {PUBLISH_TOKEN}"),
        format!("bEaReR {PUB_NEWS_ALERTS}"),
    ] {
        let response = publish_with(addr, &["news"], "x", Some(&authorization));
        assert_eq!(
            response.status,
            200,
            "{authorization}: {}",
            response.summary()
        );
    }
}
