//! A subscription or publish waiting for the application's decision (`--auth-url` or the embedder's
//! [`Authorize`](crate::authorize::Authorize) hook), and what that decision makes of it:
//! the stream's request narrowed to the grant's expiry, or the refusal its client gets.
//!
//! Pure: the loop puts the question to the authorization pool and passes the answer in.

use crate::auth;
use crate::authorize::Decision;
use crate::http::answer::{AuthFailure, HttpError};

use super::exchange::{Exchange, StreamRequest};
use super::Now;

/// A request parked while the application decides.
pub(crate) struct Authorizing {
    /// The exchange the request came from: answers a refusal, and gives its head buffer
    /// back when a stream starts.
    pub exchange: Box<Exchange>,
    /// The ticket serial of the question.
    pub serial: u64,
    /// What waits for the decision.
    pub waiting: Waiting,
}

/// What waits for the application's decision.
pub(crate) enum Waiting {
    /// A subscription, its question taken out.
    Stream(StreamRequest),
    /// A publish, whose head the exchange parses again with the decision.
    Publish,
}

/// What `decision` makes of the subscription at `now`: allowed (its stream ends when the
/// earlier of its token and its grant ends, set in `request`), or refused. Every topic asked for must be
/// covered by the grant's topics, when it names any; a grant that has already ended is a
/// `401`, so the client comes back with fresh credentials rather than in a loop.
pub(crate) fn decide(
    decision: Decision,
    request: &mut StreamRequest,
    now: Now,
) -> Result<(), HttpError> {
    let grant = match decision {
        Decision::Allow(grant) => grant,
        Decision::Unauthorized => return Err(HttpError::AppUnauthorized),
        Decision::Forbidden => return Err(HttpError::AppForbidden),
        Decision::Unavailable => return Err(HttpError::AuthUnavailable(AuthFailure::Failed)),
    };
    if let Some(patterns) = &grant.topics {
        if !auth::allows_all(patterns, request.topics.iter().map(String::as_str)) {
            return Err(HttpError::AppForbidden);
        }
    }
    if let Some(expires_at) = grant.expires_at {
        let until_unix_ms = expires_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                since.as_millis().min(u128::from(u64::MAX)) as u64
            });
        if until_unix_ms <= now.unix_ms {
            return Err(HttpError::AppUnauthorized);
        }
        request.token_until_unix_ms = Some(
            request
                .token_until_unix_ms
                .map_or(until_unix_ms, |token| token.min(until_unix_ms)),
        );
    }
    Ok(())
}
