//! A JWKS served over HTTPS: `iss` and `aud` enforced, an unknown `kid` refetches at most
//! once per refresh gap, a failed fetch keeps the last keys, a failed first fetch does not
//! stop start-up, and the JWKS is refetched on its interval.

use super::*;

#[test]
fn a_jwks_over_https_with_issuer_and_audience_and_refetches_bounded() {
    let dir = scratch("jwks");
    let iss = "https://id.example.com/";
    let good = |exp: u64| json!({ "subscribe": ["news"], "iss": iss, "aud": "herald", "exp": exp });
    let kid = |kid: &str| json!({ "kid": kid });
    let made = make(
        &dir,
        json!({ "rsa": "RSA", "p256": "P-256", "p384": "P-384", "ed": "Ed25519", "added": "P-256" }),
        json!([
            token("RS256", "rsa", "RS256", good(FAR), kid("rsa-1")),
            token("PS256", "rsa", "PS256", good(FAR), kid("rsa-1")),
            token("RS512", "rsa", "RS512", good(FAR), kid("rsa-1")),
            token("ES256", "p256", "ES256", good(FAR), kid("ec-1")),
            token("ES384", "p384", "ES384", good(FAR), kid("ec-2")),
            token("EdDSA", "ed", "EdDSA", good(FAR), kid("ed-1")),
            token("no-kid", "p256", "ES256", good(FAR), json!({})),
            token(
                "aud-array",
                "p256",
                "ES256",
                json!({ "subscribe": ["news"], "iss": iss, "aud": ["other", "herald"], "exp": FAR }),
                kid("ec-1")
            ),
            token(
                "wrong-iss",
                "p256",
                "ES256",
                json!({ "subscribe": ["news"], "iss": "https://evil.example.com/", "aud": "herald", "exp": FAR }),
                kid("ec-1")
            ),
            token(
                "no-iss",
                "p256",
                "ES256",
                json!({ "subscribe": ["news"], "aud": "herald", "exp": FAR }),
                kid("ec-1")
            ),
            token(
                "wrong-aud",
                "p256",
                "ES256",
                json!({ "subscribe": ["news"], "iss": iss, "aud": "someone-else", "exp": FAR }),
                kid("ec-1")
            ),
            token(
                "no-aud",
                "p256",
                "ES256",
                json!({ "subscribe": ["news"], "iss": iss, "exp": FAR }),
                kid("ec-1")
            ),
            token("kid-on-wrong-key", "p384", "ES384", good(FAR), kid("ec-1")),
            token("added", "added", "ES256", good(FAR), kid("added-1")),
            token("made-up-kid", "added", "ES256", good(FAR), kid("made-up")),
        ]),
    );
    let first = made.jwks(&[
        ("rsa", "rsa-1", None),
        ("p256", "ec-1", None),
        ("p384", "ec-2", Some("ES384")),
        ("ed", "ed-1", None),
    ]);
    let jwks = JwksServer::start(&dir, &first);
    let ca = dir.join("ca.pem").display().to_string();
    let url = jwks.url();
    let started = Instant::now();
    let server = herald(&[
        "--subscribe-jwks",
        &url,
        "--jwks-ca-file",
        &ca,
        "--jwt-issuer",
        iss,
        "--jwt-audience",
        "herald",
        "--jwt-algorithm",
        "RS256",
        "--jwt-algorithm",
        "PS256",
        "--jwks-refresh",
        "1h",
    ]);
    let addr = server.addr;
    // Fetched once before serving (the server prints its line before it answers).
    wait_until("the start-up fetch", || jwks.fetches() >= 1);
    let mut streams = Vec::new();
    for name in [
        "RS256",
        "PS256",
        "ES256",
        "ES384",
        "EdDSA",
        "no-kid",
        "aud-array",
    ] {
        streams.push((name, subscribe_with(addr, made.token(name), name)));
    }
    let mut refs: Vec<(&str, &mut Subscriber)> = streams
        .iter_mut()
        .map(|(name, stream)| (*name, stream))
        .collect();
    check_delivery(addr, &mut refs, "to every key of the set");
    for (name, case) in [
        (
            "RS512",
            "RS512: the RSA key without alg takes --jwt-algorithm's RS256 and PS256",
        ),
        ("wrong-iss", "another issuer"),
        ("no-iss", "no iss"),
        ("wrong-aud", "another audience"),
        ("no-aud", "no aud"),
        (
            "kid-on-wrong-key",
            "a kid that names a key of another curve",
        ),
    ] {
        assert_refused(addr, made.token(name), case);
    }
    assert_eq!(jwks.fetches(), 1, "known kids cause no fetch");

    // A key added to the set: its kid is unknown, so herald refetches (once the gap since
    // the start-up fetch has passed) and then admits the token.
    jwks.serve(&made.jwks(&[("p256", "ec-1", None), ("added", "added-1", None)]));
    assert_refused(addr, made.token("added"), "before the refetch");
    let mut added = subscribe_once_admitted(
        addr,
        made.token("added"),
        REFRESH_GAP + DEADLINE,
        "added key",
    );
    assert!(
        started.elapsed() >= REFRESH_GAP,
        "the refetch waited for the gap"
    );
    wait_until("the refetch's line", || jwks.fetches() >= 2);
    assert_eq!(
        jwks.fetches(),
        2,
        "one fetch for all the tokens with the added kid"
    );
    // Tokens with made-up kids, as fast as they come: at most one fetch per gap.
    let hammering = Instant::now();
    let mut refused = 0;
    while hammering.elapsed() < Duration::from_secs(3) {
        assert_refused(addr, made.token("made-up-kid"), "a made-up kid");
        refused += 1;
    }
    let window = hammering.elapsed();
    let fetches = jwks.fetches() - 2;
    let allowed = 1 + (window.as_millis() / REFRESH_GAP.as_millis()) as usize;
    assert!(
        fetches <= allowed,
        "{refused} unknown kids in {window:?} caused {fetches} fetches (at most {allowed})"
    );
    assert!(
        refused > 10,
        "the loop must have sent many unknown kids, sent {refused}"
    );
    // Streams of removed keys go on; the set's keys still work.
    let mut refs: Vec<(&str, &mut Subscriber)> = streams
        .iter_mut()
        .map(|(name, stream)| (*name, stream))
        .chain([("added", &mut added)])
        .collect();
    check_delivery(addr, &mut refs, "after the set changed");
    assert_refused(addr, made.token("RS256"), "a key removed from the set");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_fetch_keeps_the_last_keys_and_a_failed_first_fetch_does_not_stop_start_up() {
    let dir = scratch("failing");
    let made = make(
        &dir,
        json!({ "ed": "Ed25519" }),
        json!([token(
            "ed",
            "ed",
            "EdDSA",
            news(json!({ "exp": FAR })),
            json!({ "kid": "ed-1" })
        )]),
    );
    let jwks = JwksServer::start(&dir, "this is not a key set");
    let ca = dir.join("ca.pem").display().to_string();
    let url = jwks.url();
    let server = herald(&["--subscribe-jwks", &url, "--jwks-ca-file", &ca]);
    let addr = server.addr;
    assert_refused(addr, made.token("ed"), "no keys after a failed first fetch");
    wait_until("the first fetch", || jwks.fetches() >= 1);
    jwks.serve(&made.jwks(&[("ed", "ed-1", None)]));
    server.signal("HUP");
    let mut stream = subscribe_once_admitted(addr, made.token("ed"), DEADLINE, "after SIGHUP");
    // Fetches that fail (an empty set, then not JSON) keep the keys. The key thread fetches
    // in turn, so once the server has seen a fetch, the one before it was handled: the
    // last one only marks that.
    let before = jwks.fetches();
    for (n, document) in [r#"{"keys": []}"#, "{", "{}"].into_iter().enumerate() {
        jwks.serve(document);
        server.signal("HUP");
        wait_until("the fetch on SIGHUP", || jwks.fetches() > before + n);
    }
    let mut again = subscribe_with(addr, made.token("ed"), "after fetches that failed");
    check_delivery(
        addr,
        &mut [("first stream", &mut stream), ("second stream", &mut again)],
        "after failed fetches",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_jwks_is_refetched_on_its_interval() {
    let dir = scratch("interval");
    let made = make(
        &dir,
        json!({ "old": "P-256", "new": "P-256" }),
        // No `kid`: an unknown one would ask for a fetch itself.
        json!([token(
            "new",
            "new",
            "ES256",
            news(json!({ "exp": FAR })),
            json!({})
        )]),
    );
    let jwks = JwksServer::start(&dir, &made.jwks(&[("old", "old-1", None)]));
    let ca = dir.join("ca.pem").display().to_string();
    let url = jwks.url();
    let server = herald(&[
        "--subscribe-jwks",
        &url,
        "--jwks-ca-file",
        &ca,
        "--jwks-refresh",
        "10s",
    ]);
    wait_until("the first fetch", || jwks.fetches() >= 1);
    jwks.serve(&made.jwks(&[("new", "new-1", None)]));
    let mut stream = subscribe_once_admitted(
        server.addr,
        made.token("new"),
        REFRESH_GAP + DEADLINE,
        "a key the interval's fetch brought",
    );
    wait_until("the interval's fetch line", || jwks.fetches() >= 2);
    assert_eq!(jwks.fetches(), 2, "tokens without kid cause no fetch");
    check_delivery(
        server.addr,
        &mut [("new key", &mut stream)],
        "after the interval",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
