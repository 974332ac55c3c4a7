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
    /// Distinct, valid topic names and wildcards (`prefix*`) in the order given.
    pub topics: Vec<String>,
    /// `lastEventId` from the query (the header, when present, takes precedence).
    pub last_event_id: Option<String>,
    /// `token` from the query, for EventSource clients that cannot set headers.
    pub token: Option<String>,
    /// `since` (Unix ms or an RFC 3339 time) as Unix ms: replay what was published at or
    /// after it. A Last-Event-ID (header or `lastEventId`) wins over it, so an
    /// EventSource that reconnects with the same URL continues where it was instead of
    /// replaying again.
    pub since_ms: Option<u64>,
}

/// The latest `since` accepted, in Unix ms: 9999-12-31T23:59:59.999Z, the last instant
/// an RFC 3339 time can name. Later numbers are refused rather than read as "never".
const SINCE_MS_MAX: u64 = 253_402_300_799_999;

/// Why a `since` is refused.
const SINCE_REASON: &str =
    "since must be Unix milliseconds or an RFC 3339 time (2024-05-01T12:00:00Z) from 1970 on";

/// Reads `since`: Unix milliseconds (digits only) or an RFC 3339 date-time with a `Z` or
/// `±hh:mm` offset, up to nanoseconds (kept to the millisecond, rounded down). Strict:
/// anything else, a time before 1970 or after year 9999 is refused.
pub(crate) fn parse_since(text: &str) -> Option<u64> {
    let ms = if text.bytes().all(|b| b.is_ascii_digit()) {
        if text.is_empty() || text.len() > 15 {
            return None;
        }
        text.parse().ok()?
    } else {
        rfc3339_ms(text.as_bytes())?
    };
    (ms <= SINCE_MS_MAX).then_some(ms)
}

/// An RFC 3339 `date-time` as Unix ms; `None` when malformed or before 1970.
fn rfc3339_ms(text: &[u8]) -> Option<u64> {
    fn number(text: &[u8], at: usize, len: usize) -> Option<i64> {
        let digits = text.get(at..at + len)?;
        digits.iter().try_fold(0i64, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    }
    let sep = |at: usize, allowed: &[u8]| text.get(at).is_some_and(|b| allowed.contains(b));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (
        number(text, 0, 4)?,
        number(text, 5, 2)?,
        number(text, 8, 2)?,
    );
    let (hour, minute, second) = (
        number(text, 11, 2)?,
        number(text, 14, 2)?,
        number(text, 17, 2)?,
    );
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    // A leap second (60) is allowed by RFC 3339 and read as the next second's start.
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if text.get(at) == Some(&b'.') {
        let digits = text[at + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let padded = format!(
            "{:0<3}",
            std::str::from_utf8(&text[at + 1..at + 1 + digits]).ok()?
        );
        millis = padded[..3].parse::<i64>().ok()?;
        at += 1 + digits;
    }
    let offset_minutes = match text.get(at..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (number(text, at + 1, 2)?, number(text, at + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 60 + minutes;
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };
    // Days from 1970-01-01 to the civil date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1_000 + millis).ok()
}

/// Limits on a subscription's topics.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TopicLimits {
    /// Most topics per subscription.
    pub per_subscription: usize,
    /// Longest topic name.
    pub name_bytes: usize,
    /// Most wildcard topics (`prefix*`) per subscription; 0 refuses them.
    pub patterns_max: usize,
    /// Shortest wildcard prefix, in bytes.
    pub pattern_prefix_min: usize,
}

/// Checks one `topic` value of a subscription: a topic name, or a wildcard `prefix*` with
/// the meaning a JWT claim gives it (every topic whose name starts with `prefix`, byte for
/// byte), its prefix made of topic-name bytes, at least `pattern_prefix_min` long.
/// `patterns` is how many wildcards the subscription named before this one.
fn check_topic(value: &str, limits: TopicLimits, patterns: usize) -> Result<(), HttpError> {
    let Some(prefix) = topics::pattern_prefix(value) else {
        return match topics::is_valid_name(value, limits.name_bytes) {
            true => Ok(()),
            false => Err(HttpError::InvalidTopic),
        };
    };
    if limits.patterns_max == 0 {
        return Err(HttpError::BadQuery(
            "wildcard topics are off (max_patterns_per_subscription is 0)",
        ));
    }
    if !prefix.is_empty() && !topics::is_valid_name(prefix, limits.name_bytes) {
        return Err(HttpError::BadQuery(
            "a wildcard topic is a valid topic name prefix followed by one `*`",
        ));
    }
    if prefix.len() < limits.pattern_prefix_min {
        return Err(HttpError::BadQuery(
            "wildcard prefix shorter than min_pattern_prefix",
        ));
    }
    if patterns == limits.patterns_max {
        return Err(HttpError::BadQuery(
            "too many wildcard topics (max_patterns_per_subscription)",
        ));
    }
    Ok(())
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

/// Reads `topic` (repeatable: a name or a wildcard, see [`check_topic`]) and `lastEventId`
/// from a query string. Other parameters are
/// ignored: browsers and proxies add cache-busters. Any parameter that is not UTF-8 once
/// percent-decoded is refused: read leniently, `%FF` would become U+FFFD.
pub(crate) fn subscription(query: &str, limits: TopicLimits) -> Result<Subscription, HttpError> {
    let mut topics: Vec<String> = Vec::new();
    let mut last_event_id = None;
    let mut token = None;
    let mut since_ms = None;
    for pair in form::pairs(query.as_bytes()) {
        let (key, value) = pair.map_err(|_| {
            HttpError::BadQuery("a query parameter is not UTF-8 once percent-decoded")
        })?;
        match &*key {
            "topic" => {
                if topics.iter().any(|t| *t == *value) {
                    continue;
                }
                let patterns = topics
                    .iter()
                    .filter(|t| topics::pattern_prefix(t).is_some())
                    .count();
                check_topic(&value, limits, patterns)?;
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
            "since" if since_ms.is_some() => {
                return Err(HttpError::BadQuery("since may be given once"))
            }
            "since" => {
                since_ms = Some(parse_since(&value).ok_or(HttpError::BadQuery(SINCE_REASON))?)
            }
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
        since_ms,
    })
}

#[cfg(test)]
mod tests;
