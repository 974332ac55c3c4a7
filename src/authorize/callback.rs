//! The `--auth-url` callback: each question is a `POST` to the application, which decides
//! like nginx's `auth_request` or Centrifugo's connect proxy. It runs on the pool's worker
//! threads, never on an event loop.
//!
//! The request carries the client's `Cookie`, `Authorization` and `Origin` headers as
//! they arrived and a JSON body: `{"action":"subscribe","client":"<address>",
//! "topics":[...],"token":<the token query parameter or null>}`. The answer decides: any
//! 2xx allows, with an optional JSON body `{"topics":[...], "expires_at":<Unix seconds>,
//! "expires_in":<seconds>}` (every member optional; `topics` lists names and `prefix*`
//! patterns that must cover what was asked, the earlier of the two expiries ends the
//! stream); 401 and 403 are passed on to the client; anything else, a body herald cannot
//! read, a redirect, a failed connection or no answer within `auth_timeout` is
//! `Unavailable` (the client gets `503`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{AccessRequest, Authorize, Decision, Grant};

/// Bytes of an answer body read at most; a longer one is a failed call.
pub(crate) const ANSWER_BYTES_MAX: u64 = 64 * 1024;
/// Topic patterns an answer may grant; more is a failed call (matching cost must not
/// depend on what an application sends back).
pub(crate) const GRANT_TOPICS_MAX: usize = 256;

/// How much longer a call may take than `auth_timeout`: more than the timer wheel's tick,
/// so the waiting subscription's deadline passes first.
const CALL_GRACE: Duration = Duration::from_millis(500);

/// What a 2xx answer may say.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    expires_at: Option<f64>,
    #[serde(default)]
    expires_in: Option<f64>,
}

/// The HTTP callback.
pub(crate) struct HttpCallback {
    url: String,
    agent: ureq::Agent,
}

impl HttpCallback {
    /// A callback to `url` for subscriptions that wait `timeout` for it.
    pub(crate) fn new(url: &str, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            // A little past the subscription's own deadline, so the client is told the
            // application was too slow (by its loop) rather than that it failed.
            .timeout_global(Some(timeout + CALL_GRACE))
            // Statuses are decisions here, not errors.
            .http_status_as_error(false)
            // A redirect is not an answer: an auth endpoint that moved is misconfigured.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        HttpCallback {
            url: url.to_owned(),
            agent,
        }
    }

    fn call(&self, request: &AccessRequest) -> Result<Decision, String> {
        let body = serde_json::json!({
            "action": request.action.name(),
            "client": request.client.to_string(),
            "topics": request.topics,
            "token": request.token,
        })
        .to_string();
        let mut call = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json");
        for (name, value) in [
            ("cookie", &request.cookie),
            ("authorization", &request.authorization),
            ("origin", &request.origin),
        ] {
            if let Some(value) = value {
                call = call.header(name, value);
            }
        }
        let mut response = call.send(body.as_bytes()).map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            401 => return Ok(Decision::Unauthorized),
            403 => return Ok(Decision::Forbidden),
            200..=299 => {}
            status => return Err(format!("answered {status}")),
        }
        let bytes = response
            .body_mut()
            .with_config()
            .limit(ANSWER_BYTES_MAX)
            .read_to_vec()
            .map_err(|e| format!("unreadable answer: {e}"))?;
        grant_from(&bytes, SystemTime::now()).map(Decision::Allow)
    }
}

/// The grant a 2xx answer's body gives (an empty body allows what was asked).
fn grant_from(body: &[u8], now: SystemTime) -> Result<Grant, String> {
    let body = body.trim_ascii();
    if body.is_empty() {
        return Ok(Grant::default());
    }
    // serde would also read a struct from an array (`[]` as `{}`): only an object is one.
    if body.first() != Some(&b'{') {
        return Err("answer is not a JSON object".into());
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("answer is not the JSON herald reads: {e}"))?;
    if answer
        .topics
        .as_ref()
        .is_some_and(|topics| topics.len() > GRANT_TOPICS_MAX)
    {
        return Err(format!("answer grants more than {GRANT_TOPICS_MAX} topics"));
    }
    let at = |secs: f64, from: SystemTime| -> Result<SystemTime, String> {
        if !secs.is_finite() || secs < 0.0 {
            return Err("expires_at and expires_in must be non-negative numbers".into());
        }
        // Saturates far in the future rather than overflowing.
        Ok(from
            .checked_add(Duration::from_secs_f64(secs.min(1e12)))
            .unwrap_or(from))
    };
    let expires_at = match (answer.expires_at, answer.expires_in) {
        (None, None) => None,
        (Some(at_secs), None) => Some(at(at_secs, UNIX_EPOCH)?),
        (None, Some(in_secs)) => Some(at(in_secs, now)?),
        (Some(at_secs), Some(in_secs)) => Some(at(at_secs, UNIX_EPOCH)?.min(at(in_secs, now)?)),
    };
    Ok(Grant {
        topics: answer.topics,
        expires_at,
    })
}

impl Authorize for HttpCallback {
    fn authorize(&self, request: &AccessRequest) -> Decision {
        self.call(request).unwrap_or_else(|reason| {
            log::warn!("auth callback failed ({reason}): answering 503");
            Decision::Unavailable
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_grants() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(grant_from(b"", now), Ok(Grant::default()));
        assert_eq!(grant_from(b" \n", now), Ok(Grant::default()));
        assert_eq!(grant_from(b"{}", now), Ok(Grant::default()));
        let grant = grant_from(br#"{"topics":["a","p/*"],"expires_in":30}"#, now).unwrap();
        assert_eq!(grant.topics, Some(vec!["a".into(), "p/*".into()]));
        assert_eq!(grant.expires_at, Some(now + Duration::from_secs(30)));
        let grant = grant_from(br#"{"expires_at":1010.5,"expires_in":60}"#, now).unwrap();
        assert_eq!(
            grant.expires_at,
            Some(UNIX_EPOCH + Duration::from_millis(1_010_500))
        );
        let far = grant_from(br#"{"expires_at":1e300}"#, now).unwrap();
        assert!(far.expires_at.is_some());
        for bad in [
            &br#"{"expires_in":-1}"#[..],
            br#"{"expires_at":"soon"}"#,
            br#"{"topics":"a"}"#,
            br#"{"topic":["a"]}"#,
            b"not json",
            b"[]",
        ] {
            assert!(
                grant_from(bad, now).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: Vec<String> = (0..=GRANT_TOPICS_MAX).map(|n| n.to_string()).collect();
        let body = serde_json::json!({ "topics": many }).to_string();
        assert!(grant_from(body.as_bytes(), now).is_err());
    }
}
