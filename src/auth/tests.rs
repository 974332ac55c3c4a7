//! Unit tests of the token checks (`auth/mod.rs`).

use super::*;
use jsonwebtoken::{Algorithm, EncodingKey};

// Made with PyJWT 2.15 (an independent implementation):
//   jwt.encode({"subscribe": ["news", "prices/*"], "publish": ["news"]}, "s3cret", "HS256")
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsibmV3cyIsInByaWNlcy8qIl0sInB1Ymxpc2giOlsibmV3cyJdfQ.NRpBrpVlS2QJyoaIWcbKfGQB4E2VATD2WHmxnrERj6o";
//   jwt.encode({"subscribe": ["news"], "exp": 1000000000}, "s3cret", "HS256")
const EXPIRED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsibmV3cyJdLCJleHAiOjEwMDAwMDAwMDB9.UoM2wVllKnYKzv8LmPhY6T69bAMcaeQ6aVqje2f60Ag";
/// 2001-09-09 01:46:40 UTC, in milliseconds.
const NOW_MS: u64 = 1_000_000_000_000;

/// An HS256 token with this header and these claims (JSON text), signed with `s3cret`.
fn mint(header: &str, claims: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let key = EncodingKey::from_secret(b"s3cret");
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256);
    format!("{message}.{}", signature.unwrap())
}

fn grant(claims: &str, now_ms: u64) -> Result<Grant, TokenError> {
    let token = mint(r#"{"alg":"HS256","typ":"JWT"}"#, claims);
    Verifier::new("s3cret").grant(&token, Claim::Subscribe, now_ms)
}

#[test]
fn verifies_independently_made_tokens() {
    let verifier = Verifier::new("s3cret");
    let subscribe = verifier.grant(TOKEN, Claim::Subscribe, NOW_MS).unwrap();
    assert_eq!(subscribe.patterns, ["news", "prices/*"]);
    assert_eq!(subscribe.until_unix_ms, None);
    let publish = verifier.grant(TOKEN, Claim::Publish, NOW_MS).unwrap();
    assert_eq!(publish.patterns, ["news"]);
    // Expired at 1_000_000_000 s; accepted within the leeway, refused after it.
    let within = NOW_MS + LEEWAY_SECS * 1000 - 1;
    let grant = verifier.grant(EXPIRED, Claim::Subscribe, within).unwrap();
    assert_eq!(grant.until_unix_ms, Some(within + 1));
    assert_eq!(
        verifier.grant(EXPIRED, Claim::Subscribe, within + 1),
        Err(TokenError::Expired)
    );
    let wrong_key = Verifier::new("other");
    assert_eq!(
        wrong_key.grant(TOKEN, Claim::Subscribe, NOW_MS),
        Err(TokenError::Invalid)
    );
    assert_eq!(
        verifier.grant("not.a.jwt", Claim::Subscribe, NOW_MS),
        Err(TokenError::Invalid)
    );
}

// Ed25519 keys made with `openssl genpkey -algorithm ED25519`.
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIL1wRaNhrAz/EqeVnsx1lYO73q5tm3dJ0r+RP+fV6Urr\n-----END PRIVATE KEY-----\n";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAis2Q7AXNaxh1GICp/BIcLL6/UJqwSkl3tY75x1L4Hs4=\n-----END PUBLIC KEY-----\n";
const OTHER_ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA9D33WnsSbAuMLdGyr1kUMdne5w/RddxsG/8+UAaPgUQ=\n-----END PUBLIC KEY-----\n";

/// A token with this header and claims, signed with the Ed25519 key.
fn mint_eddsa(header: &str, claims: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::EdDSA);
    format!("{message}.{}", signature.unwrap())
}

fn ed_key(pem: &str) -> Key {
    keys::pem_key(pem.as_bytes(), &[]).unwrap()
}

#[test]
fn public_keys_verify_only_their_algorithms() {
    let claims = r#"{"subscribe":["news"]}"#;
    let verifier = Verifier::with_keys(None, vec![ed_key(ED_PUBLIC)], None, ClaimRules::default());
    let token = mint_eddsa(r#"{"alg":"EdDSA"}"#, claims);
    let grant = verifier.grant(&token, Claim::Subscribe, NOW_MS).unwrap();
    assert_eq!(grant.patterns, ["news"]);
    // The classic confusion: HS256 with the public key's bytes as the secret.
    for secret in [ED_PUBLIC.as_bytes(), ED_PUBLIC.trim_end().as_bytes()] {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let message = format!(
            "{}.{}",
            b64.encode(r#"{"alg":"HS256"}"#),
            b64.encode(claims)
        );
        let key = EncodingKey::from_secret(secret);
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256);
        let forged = format!("{message}.{}", signature.unwrap());
        assert_eq!(
            verifier.grant(&forged, Claim::Subscribe, NOW_MS),
            Err(TokenError::Invalid)
        );
    }
    // The header cannot claim another algorithm for the same signature.
    let relabelled = mint_eddsa(r#"{"alg":"ES256"}"#, claims);
    assert_eq!(
        verifier.grant(&relabelled, Claim::Subscribe, NOW_MS),
        Err(TokenError::Invalid)
    );
    // Another key does not verify it; with both, the right one is found.
    let other = Verifier::with_keys(
        None,
        vec![ed_key(OTHER_ED_PUBLIC)],
        None,
        ClaimRules::default(),
    );
    assert_eq!(
        other.grant(&token, Claim::Subscribe, NOW_MS),
        Err(TokenError::Invalid)
    );
    let both = Verifier::with_keys(
        Some("s3cret"),
        vec![ed_key(OTHER_ED_PUBLIC), ed_key(ED_PUBLIC)],
        None,
        ClaimRules::default(),
    );
    assert!(both.grant(&token, Claim::Subscribe, NOW_MS).is_ok());
    // The secret still verifies HS256 beside the public keys.
    assert!(both.grant(TOKEN, Claim::Subscribe, NOW_MS).is_ok());
}

#[test]
fn an_unknown_kid_asks_for_a_refresh_without_waiting() {
    let (sender, receiver) = crossbeam_channel::bounded(1);
    let verifier = Verifier::with_keys(
        None,
        vec![ed_key(ED_PUBLIC)],
        Some(Requests::to(sender)),
        ClaimRules::default(),
    );
    let claims = r#"{"subscribe":["news"]}"#;
    // PEM keys have no kid: a token naming one no key has still reaches them.
    let token = mint_eddsa(r#"{"alg":"EdDSA","kid":"new"}"#, claims);
    assert!(verifier.grant(&token, Claim::Subscribe, NOW_MS).is_ok());
    assert_eq!(receiver.try_recv(), Ok(()));
    // A full queue does not block the caller.
    for _ in 0..3 {
        let _ = verifier.grant(&token, Claim::Subscribe, NOW_MS);
    }
    assert_eq!(receiver.len(), 1);
    let plain = mint_eddsa(r#"{"alg":"EdDSA"}"#, claims);
    receiver.try_recv().unwrap();
    assert!(verifier.grant(&plain, Claim::Subscribe, NOW_MS).is_ok());
    assert!(receiver.try_recv().is_err(), "no kid, no refresh");
}

#[test]
fn issuer_and_audience_are_required_when_configured() {
    let rules = ClaimRules {
        issuer: Some("https://id.example.com/".into()),
        audience: Some("herald".into()),
    };
    let verifier = Verifier::with_keys(None, vec![ed_key(ED_PUBLIC)], None, rules);
    let check = |claims: &str| {
        let token = mint_eddsa(r#"{"alg":"EdDSA"}"#, claims);
        verifier.grant(&token, Claim::Subscribe, NOW_MS).map(|_| ())
    };
    let iss = r#""iss":"https://id.example.com/""#;
    assert_eq!(check(&format!(r#"{{{iss},"aud":"herald"}}"#)), Ok(()));
    assert_eq!(check(&format!(r#"{{{iss},"aud":["x","herald"]}}"#)), Ok(()));
    for (claims, error) in [
        (r#"{"aud":"herald"}"#.to_owned(), TokenError::WrongIssuer),
        (
            r#"{"iss":"https://evil.example.com/","aud":"herald"}"#.to_owned(),
            TokenError::WrongIssuer,
        ),
        (
            r#"{"iss":["https://id.example.com/"],"aud":"herald"}"#.to_owned(),
            TokenError::WrongIssuer,
        ),
        (format!("{{{iss}}}"), TokenError::WrongAudience),
        (
            format!(r#"{{{iss},"aud":"other"}}"#),
            TokenError::WrongAudience,
        ),
        (
            format!(r#"{{{iss},"aud":["other"]}}"#),
            TokenError::WrongAudience,
        ),
        (
            format!(r#"{{{iss},"aud":null}}"#),
            TokenError::WrongAudience,
        ),
        (
            format!(r#"{{{iss},"aud":[["herald"]]}}"#),
            TokenError::WrongAudience,
        ),
    ] {
        assert_eq!(check(&claims), Err(error), "{claims}");
    }
}

#[test]
fn malformed_time_claims_are_refused() {
    for claims in [
        r#"{"subscribe":["news"],"exp":"1000000000"}"#,
        r#"{"subscribe":["news"],"exp":-1}"#,
        r#"{"subscribe":["news"],"exp":null}"#,
        r#"{"subscribe":["news"],"exp":-0.5}"#,
        r#"{"subscribe":["news"],"nbf":"0"}"#,
        r#"{"subscribe":["news"],"nbf":null}"#,
    ] {
        assert_eq!(grant(claims, NOW_MS), Err(TokenError::BadTime), "{claims}");
    }
    // `jsonwebtoken` already refuses an array here (as an invalid token).
    assert!(grant(r#"{"subscribe":["news"],"exp":[1]}"#, NOW_MS).is_err());
}

#[test]
fn time_claims_are_checked_against_the_given_clock_with_leeway() {
    let leeway = LEEWAY_SECS * 1000;
    // A fractional exp counts from its exact instant.
    let claims = r#"{"subscribe":["news"],"exp":1000000000.5}"#;
    let until = NOW_MS + 500 + leeway;
    assert_eq!(grant(claims, NOW_MS).unwrap().until_unix_ms, Some(until));
    assert_eq!(grant(claims, until), Err(TokenError::Expired));
    // nbf: valid from nbf minus the leeway.
    let claims = r#"{"subscribe":["news"],"nbf":1000000010}"#;
    assert_eq!(
        grant(claims, NOW_MS + 10_000 - leeway - 1),
        Err(TokenError::NotYetValid)
    );
    assert!(grant(claims, NOW_MS + 10_000 - leeway).is_ok());
    // A huge exp is the far future, not an overflow.
    let claims = r#"{"subscribe":["news"],"exp":1e300}"#;
    assert!(grant(claims, NOW_MS).is_ok());
    // iat is informational: one in the future is not refused.
    let claims = r#"{"subscribe":["news"],"iat":4102444800}"#;
    assert!(grant(claims, NOW_MS).is_ok());
}

#[test]
fn a_crit_header_is_refused() {
    let claims = r#"{"subscribe":["news"]}"#;
    for header in [
        r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
        r#"{"alg":"HS256","crit":["exp"]}"#,
        r#"{"alg":"HS256","crit":[]}"#,
    ] {
        let token = mint(header, claims);
        let verifier = Verifier::new("s3cret");
        assert_eq!(
            verifier.grant(&token, Claim::Subscribe, NOW_MS),
            Err(TokenError::UnknownCrit),
            "{header}"
        );
    }
    let plain = mint(r#"{"alg":"HS256"}"#, claims);
    assert!(Verifier::new("s3cret")
        .grant(&plain, Claim::Subscribe, NOW_MS)
        .is_ok());
}

#[test]
fn reasons_are_one_line() {
    for error in [
        TokenError::Missing,
        TokenError::Invalid,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::BadTime,
        TokenError::UnknownCrit,
        TokenError::TooManyPatterns,
        TokenError::WrongIssuer,
        TokenError::WrongAudience,
    ] {
        assert!(!error.reason().is_empty() && !error.reason().contains('\n'));
    }
}

#[test]
fn patterns() {
    let patterns = vec!["news".to_owned(), "prices/*".to_owned()];
    assert!(allows(&patterns, "news"));
    assert!(!allows(&patterns, "newsy"));
    assert!(allows(&patterns, "prices/AAPL"));
    assert!(!allows(&patterns, "prices"));
    assert!(allows(&["*".to_owned()], "anything"));
    assert!(allows_all(&patterns, ["news", "prices/x"].into_iter()));
    assert!(!allows_all(&patterns, ["news", "alerts"].into_iter()));
    // Wildcard subscriptions.
    assert!(allows(&patterns, "prices/*"));
    assert!(allows(&patterns, "prices/eu/*"));
    assert!(!allows(&patterns, "prices*"), "reaches `pricesX`");
    assert!(
        !allows(&patterns, "news*"),
        "an exact claim covers no wildcard"
    );
    assert!(!allows(&["prices/eu".to_owned()], "prices/*"));
    assert!(!allows(&["prices/**".to_owned()], "prices/*"));
    assert!(allows(&["*".to_owned()], "*"));
    assert!(!allows(&["p*".to_owned()], "*"));
}

#[test]
fn bearer_credentials() {
    for (header, token) in [
        (&b"Bearer abc "[..], Some(Ok("abc"))),
        (b"bearer abc", Some(Ok("abc"))),
        (b"BEARER abc", Some(Ok("abc"))),
        (b"BeArEr \t abc", Some(Ok("abc"))),
        (b" Bearer abc", Some(Ok("abc"))),
        (b"Bearer", None),
        (b"Bearer   ", None),
        (b"Bearerabc", None),
        (b"Basic abc", None),
        (b"Bearer a b", Some(Err(TokenError::Invalid))),
        (b"Bearer \xff", Some(Err(TokenError::Invalid))),
    ] {
        assert_eq!(bearer(Some(header)), token, "{:?}", header.escape_ascii());
    }
    assert_eq!(bearer(None), None);
}

#[test]
fn cookie_tokens() {
    assert_eq!(
        cookie_token(Some("a=1; herald_token=xyz; b=2")),
        Some("xyz")
    );
    assert_eq!(cookie_token(Some(r#"herald_token="xyz""#)), Some("xyz"));
    assert_eq!(
        cookie_token(Some("herald_token=first; herald_token=second")),
        Some("first")
    );
    assert_eq!(cookie_token(Some("herald_token=")), None);
    assert_eq!(cookie_token(Some(r#"herald_token="""#)), None);
    assert_eq!(cookie_token(Some("a=1")), None);
    assert_eq!(cookie_token(Some("xherald_token=1")), None);
}

#[test]
fn token_precedence() {
    let cookie = Some("herald_token=c");
    assert_eq!(
        subscriber_token(Some(b"Bearer h"), Some("q"), cookie),
        Ok("h")
    );
    assert_eq!(
        subscriber_token(Some(b"Basic x"), Some("q"), cookie),
        Ok("q")
    );
    assert_eq!(subscriber_token(None, Some(""), cookie), Ok("c"));
    assert_eq!(
        subscriber_token(Some(b"Bearer a b"), None, cookie),
        Err(TokenError::Invalid)
    );
    assert_eq!(subscriber_token(None, None, None), Err(TokenError::Missing));
}

#[test]
fn static_tokens() {
    assert!(static_token_matches("s3cret", "s3cret"));
    assert!(!static_token_matches("s3cre", "s3cret"));
    assert!(!static_token_matches("s3cret!", "s3cret"));
    assert!(!static_token_matches("", "s3cret"));
}
