//! Who may subscribe to and publish on which topics: HS256 JSON Web Tokens whose
//! `subscribe` or `publish` claim lists topic names or `prefix*` patterns, verified with the
//! `jsonwebtoken` crate, and the static publisher token. No I/O here.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;
/// Patterns one token may carry; more is treated as an invalid token (it is bounded by the
/// head size anyway, but matching cost should not depend on a client's choice).
const PATTERNS_MAX: usize = 256;

/// A missing, malformed, badly signed or expired token (answered 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InvalidToken;

/// The claims herald reads.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
}

/// Which claim a token must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// `subscribe`: topics the holder may subscribe to.
    Subscribe,
    /// `publish`: topics the holder may publish to.
    Publish,
}

/// A verifier for one HS256 secret.
pub(crate) struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// A verifier for tokens signed with `secret`.
    pub(crate) fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        // `exp` is checked when present; tokens without one do not expire.
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        Verifier {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Verifies `token` and returns the patterns of `claim` (a token without that claim
    /// grants nothing).
    pub(crate) fn patterns(&self, token: &str, claim: Claim) -> Result<Vec<String>, InvalidToken> {
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|error| {
            match error.kind() {
                ErrorKind::ExpiredSignature => log::debug!("expired token"),
                kind => log::debug!("invalid token: {kind:?}"),
            }
            InvalidToken
        })?;
        let patterns = match claim {
            Claim::Subscribe => data.claims.subscribe,
            Claim::Publish => data.claims.publish,
        }
        .unwrap_or_default();
        if patterns.len() > PATTERNS_MAX {
            return Err(InvalidToken);
        }
        Ok(patterns)
    }
}

/// Whether `patterns` cover `topic`: an exact name, `prefix*`, or `*` for everything.
pub(crate) fn allows(patterns: &[String], topic: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => pattern == topic,
        })
}

/// Checks every topic against a token's patterns.
pub(crate) fn allows_all<'t>(
    patterns: &[String],
    mut topics: impl Iterator<Item = &'t str>,
) -> bool {
    topics.all(|topic| allows(patterns, topic))
}

/// The bearer token of an `Authorization` header.
pub(crate) fn bearer(authorization: Option<&[u8]>) -> Option<&str> {
    let value = authorization?;
    let token = value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))?;
    std::str::from_utf8(token.trim_ascii()).ok()
}

/// The `herald_token` cookie, for EventSource clients that cannot set headers.
pub(crate) fn cookie_token(cookie: Option<&str>) -> Option<&str> {
    cookie?.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name.trim() == "herald_token").then(|| value.trim())
    })
}

/// Compares a bearer token with the static publisher token in time independent of where
/// they differ.
pub(crate) fn static_token_matches(given: Option<&str>, expected: &str) -> bool {
    let Some(given) = given else {
        return false;
    };
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    let mut difference = given.len() ^ expected.len();
    for (i, &b) in expected.iter().enumerate() {
        difference |= usize::from(b ^ given.get(i).copied().unwrap_or(0));
    }
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with PyJWT 2.15 (an independent implementation):
    //   jwt.encode({"subscribe": ["news", "prices/*"], "publish": ["news"]}, "s3cret", "HS256")
    const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsibmV3cyIsInByaWNlcy8qIl0sInB1Ymxpc2giOlsibmV3cyJdfQ.NRpBrpVlS2QJyoaIWcbKfGQB4E2VATD2WHmxnrERj6o";
    //   jwt.encode({"subscribe": ["news"], "exp": 1000000000}, "s3cret", "HS256")
    const EXPIRED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsibmV3cyJdLCJleHAiOjEwMDAwMDAwMDB9.UoM2wVllKnYKzv8LmPhY6T69bAMcaeQ6aVqje2f60Ag";

    #[test]
    fn verifies_independently_made_tokens() {
        let verifier = Verifier::new("s3cret");
        let subscribe = verifier.patterns(TOKEN, Claim::Subscribe).unwrap();
        assert_eq!(subscribe, ["news", "prices/*"]);
        assert_eq!(verifier.patterns(TOKEN, Claim::Publish).unwrap(), ["news"]);
        assert_eq!(
            verifier.patterns(EXPIRED, Claim::Subscribe),
            Err(InvalidToken)
        );
        let wrong_key = Verifier::new("other");
        assert_eq!(
            wrong_key.patterns(TOKEN, Claim::Subscribe),
            Err(InvalidToken)
        );
        assert_eq!(
            verifier.patterns("not.a.jwt", Claim::Subscribe),
            Err(InvalidToken)
        );
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
    }

    #[test]
    fn token_sources() {
        assert_eq!(bearer(Some(b"Bearer abc ")), Some("abc"));
        assert_eq!(bearer(Some(b"Basic abc")), None);
        assert_eq!(
            cookie_token(Some("a=1; herald_token=xyz; b=2")),
            Some("xyz")
        );
        assert_eq!(cookie_token(Some("a=1")), None);
        assert!(static_token_matches(Some("s3cret"), "s3cret"));
        assert!(!static_token_matches(Some("s3cre"), "s3cret"));
        assert!(!static_token_matches(None, "s3cret"));
    }
}
