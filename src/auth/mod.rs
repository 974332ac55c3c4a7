//! Who may subscribe to and publish on which topics: JSON Web Tokens whose `subscribe` or
//! `publish` claim lists topic names or `prefix*` patterns, signed with an HS256 secret or
//! a public key (PEM or JWKS), and the static publisher token; where a request carries its
//! token. No I/O here, and no clock: the caller passes the wall-clock time. The keys and
//! their sources live in `keys.rs` (a key and the algorithms it accepts, which key a token
//! may use), `jwks.rs` (key sets, HTTPS fetch) and `store.rs` (the key thread, which alone
//! reads files and fetches).
//!
//! The `jsonwebtoken` crate checks the signature and the algorithm; the time claims are
//! checked here against the injected time, because the crate reads the system clock itself
//! and lets an `exp` it cannot parse (a string, a negative number, `null`) through as if
//! the token had none. `iss` and `aud` are checked here too, when configured.

use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::decode;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use subtle::ConstantTimeEq;

mod jwks;
pub(crate) mod keys;
mod store;

use keys::Key;
pub(crate) use store::{Auth, Requests, RoleKeys};

/// Seconds of clock skew tolerated on `exp` and `nbf` between the token's issuer and
/// herald. A stream opened with an expiring token is closed this long after `exp`.
pub(crate) const LEEWAY_SECS: u64 = 5;
/// Patterns one token may carry; more is treated as an invalid token (it is bounded by the
/// head size anyway, but matching cost should not depend on a client's choice).
const PATTERNS_MAX: usize = 256;
/// The cookie EventSource clients (which cannot set headers) carry their token in.
pub(crate) const COOKIE_NAME: &str = "herald_token";

/// Why a token is refused (answered 401 with this reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// The request carries no token.
    Missing,
    /// Not a JWT, or its signature does not verify with any key that accepts its `alg`.
    Invalid,
    /// `exp` (plus the leeway) has passed.
    Expired,
    /// `nbf` (minus the leeway) is still ahead.
    NotYetValid,
    /// `exp` or `nbf` is not a non-negative number.
    BadTime,
    /// The header lists `crit` extensions, none of which herald understands.
    UnknownCrit,
    /// More than `PATTERNS_MAX` patterns.
    TooManyPatterns,
    /// `jwt_issuer` is set and `iss` is missing or another.
    WrongIssuer,
    /// `jwt_audience` is set and `aud` is missing or does not name it.
    WrongAudience,
}

impl TokenError {
    /// The one-line reason sent with the 401.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            TokenError::Missing => "missing token",
            TokenError::Invalid => {
                "invalid token (not a JWT signed with an accepted key and algorithm)"
            }
            TokenError::Expired => "expired token (exp has passed)",
            TokenError::NotYetValid => "token not valid yet (nbf is ahead)",
            TokenError::BadTime => "invalid token: exp and nbf must be non-negative numbers",
            TokenError::UnknownCrit => {
                "invalid token: crit names extensions herald does not support"
            }
            TokenError::TooManyPatterns => "invalid token: too many topic patterns",
            TokenError::WrongIssuer => "invalid token: iss is not the accepted issuer",
            TokenError::WrongAudience => "invalid token: aud does not name this server",
        }
    }
}

/// The claims herald reads. `exp` and `nbf` are kept as raw JSON so that a present but
/// malformed value (including `null`) is told apart from an absent one.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    exp: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<Value>,
    #[serde(default)]
    iss: Option<Value>,
    #[serde(default)]
    aud: Option<Value>,
}

/// `Some` for any value that is present, `null` included.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The header field herald checks itself (`jsonwebtoken`'s header drops it).
#[derive(Deserialize)]
struct CritHeader {
    #[serde(default, deserialize_with = "present")]
    crit: Option<Value>,
}

/// Which way a fractional NumericDate is rounded to milliseconds: towards refusing.
#[derive(Clone, Copy)]
enum Round {
    Down,
    Up,
}

/// A NumericDate (RFC 7519: seconds since the epoch, integer or not) in milliseconds, or
/// `BadTime` for anything else (strings, negative numbers, `null`, ...).
fn numeric_date_ms(value: &Value, round: Round) -> Result<u64, TokenError> {
    let Value::Number(number) = value else {
        return Err(TokenError::BadTime);
    };
    if let Some(secs) = number.as_u64() {
        return Ok(secs.saturating_mul(1000));
    }
    match number.as_f64() {
        // Float to integer casts saturate, so a huge date is the far future.
        Some(secs) if secs.is_finite() && secs >= 0.0 => Ok(match round {
            Round::Down => (secs * 1000.0).floor() as u64,
            Round::Up => (secs * 1000.0).ceil() as u64,
        }),
        _ => Err(TokenError::BadTime),
    }
}

/// Which claim a token must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// `subscribe`: topics the holder may subscribe to.
    Subscribe,
    /// `publish`: topics the holder may publish to.
    Publish,
}

/// What a verified token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The patterns of the claim asked for (a token without that claim grants nothing).
    pub patterns: Vec<String>,
    /// Wall-clock time (Unix milliseconds) from which the token is refused: `exp` plus the
    /// leeway; `None` for a token without `exp`.
    pub until_unix_ms: Option<u64>,
}

/// The claims every token must carry when configured (`jwt_issuer`, `jwt_audience`).
#[derive(Debug, Default)]
pub(crate) struct ClaimRules {
    /// `iss` must be this string.
    pub issuer: Option<String>,
    /// `aud` must be this string, or an array that contains it.
    pub audience: Option<String>,
}

impl ClaimRules {
    fn check(&self, claims: &Claims) -> Result<(), TokenError> {
        if let Some(issuer) = &self.issuer {
            if !matches!(&claims.iss, Some(Value::String(iss)) if iss == issuer) {
                return Err(TokenError::WrongIssuer);
            }
        }
        if let Some(audience) = &self.audience {
            let named = match &claims.aud {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds
                    .iter()
                    .any(|aud| matches!(aud, Value::String(aud) if aud == audience)),
                _ => false,
            };
            if !named {
                return Err(TokenError::WrongAudience);
            }
        }
        Ok(())
    }
}

/// Verifies one role's tokens: against its HS256 secret and its public keys (the set in
/// force when the token arrives), with the issuer and audience rules. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Verifier {
    /// The HS256 secret (`subscribe_key`, `publish_key`).
    secret: Option<Arc<Key>>,
    /// The public keys, swapped by the key thread.
    public: Option<Arc<RoleKeys>>,
    /// Tells the key thread a token named an unknown `kid`.
    refresh: Option<Requests>,
    /// `iss` and `aud`.
    rules: Arc<ClaimRules>,
}

impl Verifier {
    /// A verifier for tokens signed with `secret` only.
    #[cfg(test)]
    pub(crate) fn new(secret: &str) -> Self {
        Verifier {
            secret: Some(Arc::new(Key::secret(secret))),
            public: None,
            refresh: None,
            rules: Arc::new(ClaimRules::default()),
        }
    }

    /// A verifier for tests: `keys` as the public keys, unknown `kid`s reported to
    /// `refresh`.
    #[cfg(test)]
    pub(crate) fn with_keys(
        secret: Option<&str>,
        keys: Vec<Key>,
        refresh: Option<Requests>,
        rules: ClaimRules,
    ) -> Self {
        Verifier {
            secret: secret.map(|secret| Arc::new(Key::secret(secret))),
            public: Some(Arc::new(RoleKeys::holding(keys))),
            refresh,
            rules: Arc::new(rules),
        }
    }

    /// Verifies `token` at wall-clock time `now_unix_ms` and returns what its `claim`
    /// grants. The header's `alg` and `kid` choose among the keys that accept that `alg`
    /// (see [`keys::select`]); a `kid` no key has asks the key thread to refetch the JWKS
    /// (it never waits for it). `exp` and `nbf` are optional (a token without `exp` does
    /// not expire), but when present they must be non-negative numbers; `iat` is not
    /// checked; `iss` and `aud` must match when configured.
    pub(crate) fn grant(
        &self,
        token: &str,
        claim: Claim,
        now_unix_ms: u64,
    ) -> Result<Grant, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|error| {
            log::debug!("invalid token: {:?}", error.kind());
            TokenError::Invalid
        })?;
        let public = self.public.as_ref().map(|keys| keys.snapshot());
        let keys = self
            .secret
            .as_deref()
            .into_iter()
            .chain(public.iter().flat_map(|set| set.keys()));
        let selection = keys::select(keys, header.alg, header.kid.as_deref());
        if selection.unknown_kid {
            if let Some(refresh) = &self.refresh {
                refresh.ask();
            }
        }
        let mut verified = None;
        let mut last_error = None;
        for key in selection.keys {
            let (decoding, validation) = key.decoding();
            match decode::<Claims>(token, decoding, validation) {
                Ok(data) => {
                    verified = Some(data.claims);
                    break;
                }
                Err(error) => last_error = Some(error),
            }
        }
        let Some(claims) = verified else {
            match last_error {
                Some(error) => log::debug!("invalid token: {:?}", error.kind()),
                None => log::debug!(
                    "invalid token: no key accepts alg {:?} with kid {:?}",
                    header.alg,
                    header.kid
                ),
            }
            return Err(TokenError::Invalid);
        };
        // RFC 7515 §4.1.11: a token that marks an extension critical must be refused by
        // a recipient that does not understand it, and herald understands none.
        if has_crit(token) {
            return Err(TokenError::UnknownCrit);
        }
        self.rules.check(&claims)?;
        let leeway_ms = LEEWAY_SECS * 1000;
        if let Some(nbf) = &claims.nbf {
            let nbf_ms = numeric_date_ms(nbf, Round::Up)?;
            if now_unix_ms.saturating_add(leeway_ms) < nbf_ms {
                return Err(TokenError::NotYetValid);
            }
        }
        let until_unix_ms = match &claims.exp {
            Some(exp) => Some(numeric_date_ms(exp, Round::Down)?.saturating_add(leeway_ms)),
            None => None,
        };
        if until_unix_ms.is_some_and(|until| now_unix_ms >= until) {
            return Err(TokenError::Expired);
        }
        let patterns = match claim {
            Claim::Subscribe => claims.subscribe,
            Claim::Publish => claims.publish,
        }
        .unwrap_or_default();
        if patterns.len() > PATTERNS_MAX {
            return Err(TokenError::TooManyPatterns);
        }
        Ok(Grant {
            patterns,
            until_unix_ms,
        })
    }
}

/// Whether the (already verified) token's header has a `crit` member.
fn has_crit(token: &str) -> bool {
    let header = token.split('.').next().unwrap_or("");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| serde_json::from_slice::<CritHeader>(&json).ok())
        // The header decoded for the signature check, so it decodes here.
        .is_none_or(|header| header.crit.is_some())
}

/// Whether `patterns` cover `topic`: an exact name, `prefix*` (every name that starts
/// with `prefix`, byte for byte), or `*` for everything. A wildcard subscription
/// `topic = wanted*` is covered only by a pattern whose prefix starts `wanted` (`prices/*`
/// covers `prices/eu/*`); an exact name never covers a wildcard (`prices/eu` does not cover
/// `prices/*`, which reaches topics the claim does not name).
pub(crate) fn allows(patterns: &[String], topic: &str) -> bool {
    let wanted = topic.strip_suffix('*');
    patterns
        .iter()
        .any(|pattern| match (pattern.strip_suffix('*'), wanted) {
            (Some(prefix), Some(wanted)) => wanted.starts_with(prefix),
            (Some(prefix), None) => topic.starts_with(prefix),
            (None, Some(_)) => false,
            (None, None) => pattern == topic,
        })
}

/// Checks every topic against a token's patterns.
pub(crate) fn allows_all<'t>(
    patterns: &[String],
    mut topics: impl Iterator<Item = &'t str>,
) -> bool {
    topics.all(|topic| allows(patterns, topic))
}

/// The credentials of an `Authorization: Bearer` header (RFC 6750 §2.1). The scheme is
/// case-insensitive (RFC 9110 §11.1) and spaces or tabs around it and the token are
/// ignored. `None` when there is no header, it names another scheme, or it carries no
/// token; `Invalid` for a token with bytes a token cannot have (so it is refused, not
/// passed over for another source).
pub(crate) fn bearer(authorization: Option<&[u8]>) -> Option<Result<&str, TokenError>> {
    let value = authorization?.trim_ascii();
    let end = value
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(value.len());
    let (scheme, token) = value.split_at(end);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = token.trim_ascii_start();
    if token.is_empty() {
        return None;
    }
    Some(
        std::str::from_utf8(token)
            .ok()
            .filter(|token| token.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or(TokenError::Invalid),
    )
}

/// The `herald_token` cookie: the first pair of that name in the `Cookie` header (RFC
/// 6265 §5.4 sends the most specific path first), with the optional double quotes of a
/// cookie value removed. An empty value counts as no cookie.
pub(crate) fn cookie_token(cookie: Option<&str>) -> Option<&str> {
    cookie?.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if name.trim() != COOKIE_NAME {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|quoted| quoted.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty()).then_some(value)
    })
}

/// A subscriber's token, from the first of these sources that carries one (the others
/// are not looked at): `Authorization: Bearer`, the `token` query parameter, the
/// `herald_token` cookie.
pub(crate) fn subscriber_token<'r>(
    authorization: Option<&'r [u8]>,
    query: Option<&'r str>,
    cookie: Option<&'r str>,
) -> Result<&'r str, TokenError> {
    if let Some(token) = bearer(authorization) {
        return token;
    }
    query
        .filter(|token| !token.is_empty())
        .or_else(|| cookie_token(cookie))
        .ok_or(TokenError::Missing)
}

/// Compares a bearer token with the static publisher token in time that does not depend
/// on their contents (only on whether the lengths differ).
pub(crate) fn static_token_matches(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

#[cfg(test)]
mod tests;
