//! `POST /publish` bodies: form, JSON and raw, each into an [`Event`], and batches (NDJSON
//! or a JSON array, `batch.rs`) into several. `prepare.rs` holds [`prepare`], the
//! validation every event passes whatever its source. The body is already bounded by
//! `max_publish_bytes` when it gets here. No I/O here.

pub(crate) mod batch;
mod prepare;

pub(crate) use self::prepare::{prepare, PublishLimits};

use serde_json::Value;

use crate::config::RETRY_MS_MAX;
use crate::event::{Event, PublishError};
use crate::http::answer::HttpError;
use crate::http::form;

/// How the body is to be read, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFormat {
    /// `application/x-www-form-urlencoded`: `topic`, `data`, `event`, `retry` fields.
    Form,
    /// `application/json`: `{"topic", "event", "data", "retry"}`.
    Json,
    /// Anything textual: the body is the data; topics come from the query.
    Raw,
    /// `application/x-ndjson`: a batch, one JSON event object per line.
    Ndjson,
}

/// Picks the body format; unknown media types are refused rather than guessed.
pub(crate) fn body_format(content_type: Option<&str>) -> Result<BodyFormat, HttpError> {
    let Some(content_type) = content_type else {
        return Ok(BodyFormat::Raw);
    };
    // OWS only: `str::trim` would also strip U+00A0 and read `application/json\u{a0}` as
    // JSON, which a proxy in front sees as another type.
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim_matches([' ', '\t']);
    const FORMATS: [(&str, BodyFormat); 6] = [
        ("application/x-www-form-urlencoded", BodyFormat::Form),
        ("application/json", BodyFormat::Json),
        ("application/x-ndjson", BodyFormat::Ndjson),
        ("", BodyFormat::Raw),
        ("text/plain", BodyFormat::Raw),
        ("application/octet-stream", BodyFormat::Raw),
    ];
    // Media types are case-insensitive; compared in place, with no lowercased copy.
    FORMATS
        .iter()
        .find(|(name, _)| media.eq_ignore_ascii_case(name))
        .map(|&(_, format)| format)
        .ok_or(HttpError::UnsupportedMediaType)
}

/// Collects fields from the query and the body, refusing any given twice.
#[derive(Default)]
struct Fields {
    topics: Vec<String>,
    name: Option<String>,
    data: Option<String>,
    retry_ms: Option<u32>,
}

impl Fields {
    fn set_name(&mut self, name: String) -> Result<(), HttpError> {
        if self.name.replace(name).is_some() {
            return Err(HttpError::BadPublish("event given twice"));
        }
        Ok(())
    }

    fn set_data(&mut self, data: String) -> Result<(), HttpError> {
        if self.data.replace(data).is_some() {
            return Err(HttpError::BadPublish("data given twice"));
        }
        Ok(())
    }

    fn set_retry(&mut self, retry: &str) -> Result<(), HttpError> {
        let retry_ms = parse_retry(retry).ok_or(HttpError::Publish(PublishError::InvalidRetry))?;
        if self.retry_ms.replace(retry_ms).is_some() {
            return Err(HttpError::BadPublish("retry given twice"));
        }
        Ok(())
    }

    fn into_event(self) -> Result<Event, HttpError> {
        let data = self.data.ok_or(HttpError::BadPublish("missing data"))?;
        Ok(Event {
            topics: self.topics,
            name: self.name,
            data,
            retry_ms: self.retry_ms,
        })
    }
}

/// A `retry` value: `1*DIGIT` (no sign, space or fraction, as an EventSource reads `retry:`)
/// within [`RETRY_MS_MAX`]. Every source parses `retry` here; [`prepare`] checks the ceiling
/// again for events built in Rust.
pub(crate) fn parse_retry(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|&ms| ms <= RETRY_MS_MAX)
}

/// The refusal for a query string or form body that is not UTF-8 once percent-decoded.
const NOT_UTF8: HttpError = HttpError::BadPublish("a field is not UTF-8 once percent-decoded");

/// What a publish body carries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Publish {
    /// One event (form, raw, or a JSON object): answered with its id.
    One(Event),
    /// A batch (NDJSON, or a JSON array), published all or none and answered with the ids
    /// in order.
    Batch(batch::Batch),
}

/// Reads a publish request: one event, or a batch of at most `batch_events_max`.
pub(crate) fn parse_publish(
    format: BodyFormat,
    query: &str,
    body: &[u8],
    batch_events_max: usize,
) -> Result<Publish, HttpError> {
    match format {
        BodyFormat::Ndjson => batch::ndjson(query, body, batch_events_max).map(Publish::Batch),
        BodyFormat::Json if batch::is_array(body) => {
            batch::array(query, body, batch_events_max).map(Publish::Batch)
        }
        _ => parse_body(format, query, body).map(Publish::One),
    }
}

/// Reads a single-event publish from its query string and body (an NDJSON body is read
/// as one line).
pub(crate) fn parse_body(format: BodyFormat, query: &str, body: &[u8]) -> Result<Event, HttpError> {
    let mut fields = Fields::default();
    for pair in form::pairs(query.as_bytes()) {
        let (key, value) = pair.map_err(|_| NOT_UTF8)?;
        match &*key {
            "topic" => fields.topics.push(value.into_owned()),
            "event" => fields.set_name(value.into_owned())?,
            "retry" => fields.set_retry(&value)?,
            _ => {}
        }
    }
    match format {
        BodyFormat::Form => read_form(&mut fields, body)?,
        BodyFormat::Json | BodyFormat::Ndjson => read_json(&mut fields, body)?,
        BodyFormat::Raw => {
            let data = std::str::from_utf8(body)
                .map_err(|_| HttpError::BadPublish("body is not valid UTF-8"))?;
            fields.set_data(data.to_owned())?;
        }
    }
    fields.into_event()
}

fn read_form(fields: &mut Fields, body: &[u8]) -> Result<(), HttpError> {
    if std::str::from_utf8(body).is_err() {
        return Err(HttpError::BadPublish("body is not valid UTF-8"));
    }
    for pair in form::pairs(body) {
        let (key, value) = pair.map_err(|_| NOT_UTF8)?;
        match &*key {
            "topic" => fields.topics.push(value.into_owned()),
            "data" => fields.set_data(value.into_owned())?,
            "event" => fields.set_name(value.into_owned())?,
            "retry" => fields.set_retry(&value)?,
            _ => {
                return Err(HttpError::BadPublish(
                    "unknown form field (expected topic, data, event, retry)",
                ))
            }
        }
    }
    Ok(())
}

fn read_json(fields: &mut Fields, body: &[u8]) -> Result<(), HttpError> {
    // serde_json refuses a lone surrogate escape (`"\ud800"`) as invalid JSON, so JSON strings
    // are UTF-8 as strictly as form and raw bodies.
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| HttpError::BadPublish("body is not valid JSON"))?;
    let Value::Object(object) = value else {
        return Err(HttpError::BadPublish("JSON body must be an object"));
    };
    // `Value` keeps the last of repeated keys; a proxy or another parser may keep the
    // first. Refusing repeats keeps every reader of the body in agreement.
    if has_repeated_top_level_key(body) {
        return Err(HttpError::BadPublish("JSON body repeats a key"));
    }
    for (key, value) in object {
        match (key.as_str(), value) {
            ("topic", Value::String(topic)) => fields.topics.push(topic),
            ("topic", Value::Array(topics)) => {
                for topic in topics {
                    let Value::String(topic) = topic else {
                        return Err(HttpError::BadPublish(
                            "JSON topic must be a string or an array of strings",
                        ));
                    };
                    fields.topics.push(topic);
                }
            }
            ("topic", _) => {
                return Err(HttpError::BadPublish(
                    "JSON topic must be a string or an array of strings",
                ))
            }
            ("event", Value::String(name)) => fields.set_name(name)?,
            ("event", _) => return Err(HttpError::BadPublish("JSON event must be a string")),
            ("data", Value::String(data)) => fields.set_data(data)?,
            ("data", other) => fields.set_data(other.to_string())?,
            ("retry", Value::Number(retry)) => fields.set_retry(&retry.to_string())?,
            ("retry", _) => return Err(HttpError::BadPublish("JSON retry must be a number")),
            _ => {
                return Err(HttpError::BadPublish(
                    "unknown JSON key (expected topic, event, data, retry)",
                ))
            }
        }
    }
    Ok(())
}

/// Whether the top-level JSON object in `body` (already known to be valid) names a key
/// twice. Reads keys only; values are skipped without being built.
fn has_repeated_top_level_key(body: &[u8]) -> bool {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            // Only the four known keys are tracked (an unknown key is refused by the
            // caller anyway), so a body of many distinct keys costs linear time.
            const KNOWN: [&str; 4] = ["topic", "event", "data", "retry"];
            let mut seen = [false; KNOWN.len()];
            let mut repeated = false;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                map.next_value::<IgnoredAny>()?;
                if let Some(index) = KNOWN.iter().position(|known| *known == key) {
                    repeated |= std::mem::replace(&mut seen[index], true);
                }
            }
            Ok(repeated)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    deserializer.deserialize_map(Keys).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as a parser would make it (also used by `prepare.rs`'s tests).
    pub(super) fn event(
        topics: &[&str],
        name: Option<&str>,
        data: &str,
        retry_ms: Option<u32>,
    ) -> Event {
        Event {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            name: name.map(str::to_owned),
            data: data.to_owned(),
            retry_ms,
        }
    }

    fn check(format: BodyFormat, query: &str, body: &str, expected: Result<Event, HttpError>) {
        assert_eq!(
            parse_body(format, query, body.as_bytes()),
            expected,
            "{body:?}"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(body_format(None), Ok(BodyFormat::Raw));
        assert_eq!(
            body_format(Some("Application/JSON; charset=utf-8")),
            Ok(BodyFormat::Json)
        );
        assert_eq!(
            body_format(Some("application/x-www-form-urlencoded")),
            Ok(BodyFormat::Form)
        );
        assert_eq!(
            body_format(Some("application/x-ndjson")),
            Ok(BodyFormat::Ndjson)
        );
        assert_eq!(
            body_format(Some("multipart/form-data; boundary=x")),
            Err(HttpError::UnsupportedMediaType)
        );
    }

    #[test]
    fn form_bodies() {
        use BodyFormat::Form;
        check(
            Form,
            "",
            "topic=a&topic=b&data=x%0Ay&event=tick&retry=10",
            Ok(event(&["a", "b"], Some("tick"), "x\ny", Some(10))),
        );
        check(Form, "topic=q", "data=", Ok(event(&["q"], None, "", None)));
        check(
            Form,
            "",
            "topic=a",
            Err(HttpError::BadPublish("missing data")),
        );
        check(
            Form,
            "",
            "hello",
            Err(HttpError::BadPublish(
                "unknown form field (expected topic, data, event, retry)",
            )),
        );
        check(
            Form,
            "",
            "data=a&data=b",
            Err(HttpError::BadPublish("data given twice")),
        );
        check(
            Form,
            "event=a",
            "event=b&data=x",
            Err(HttpError::BadPublish("event given twice")),
        );
        check(
            Form,
            "",
            "data=x&retry=-1",
            Err(HttpError::Publish(PublishError::InvalidRetry)),
        );
    }

    #[test]
    fn json_bodies() {
        use BodyFormat::Json;
        check(
            Json,
            "",
            r#"{"topic":"a","data":"hi"}"#,
            Ok(event(&["a"], None, "hi", None)),
        );
        check(
            Json,
            "",
            r#"{"topic":["a","b"],"event":"e","data":{"k":[1,2]},"retry":5}"#,
            Ok(event(&["a", "b"], Some("e"), r#"{"k":[1,2]}"#, Some(5))),
        );
        check(
            Json,
            "",
            r#"{"topic":"a","data":null}"#,
            Ok(event(&["a"], None, "null", None)),
        );
        check(
            Json,
            "",
            r#"{"topic":"a"}"#,
            Err(HttpError::BadPublish("missing data")),
        );
        check(
            Json,
            "",
            r#"{"topic":"a","data":1,"x":2}"#,
            Err(HttpError::BadPublish(
                "unknown JSON key (expected topic, event, data, retry)",
            )),
        );
        check(
            Json,
            "",
            r#"{"topic":[1],"data":1}"#,
            Err(HttpError::BadPublish(
                "JSON topic must be a string or an array of strings",
            )),
        );
        check(
            Json,
            "",
            "[1]",
            Err(HttpError::BadPublish("JSON body must be an object")),
        );
        check(
            Json,
            "",
            "{",
            Err(HttpError::BadPublish("body is not valid JSON")),
        );
        for repeated in [
            r#"{"topic":"a","topic":"b","data":"x"}"#,
            r#"{"topic":"a","data":"x","data":"y"}"#,
        ] {
            check(
                Json,
                "",
                repeated,
                Err(HttpError::BadPublish("JSON body repeats a key")),
            );
        }
        // Many distinct keys: refused as unknown, in one pass (no pairwise comparison).
        let many: String = (0..20_000).map(|i| format!("\"k{i}\":1,")).collect();
        check(
            Json,
            "",
            &format!("{{{many}\"topic\":\"a\",\"data\":\"x\"}}"),
            Err(HttpError::BadPublish(
                "unknown JSON key (expected topic, event, data, retry)",
            )),
        );
        // Repeats inside nested data are the data's business, not a framing question.
        check(
            Json,
            "",
            r#"{"topic":"a","data":{"k":1,"k":2}}"#,
            Ok(event(&["a"], None, r#"{"k":2}"#, None)),
        );
    }

    #[test]
    fn raw_bodies() {
        use BodyFormat::Raw;
        check(
            Raw,
            "topic=a&event=e&retry=7",
            "line1\r\nline2",
            Ok(event(&["a"], Some("e"), "line1\r\nline2", Some(7))),
        );
        assert_eq!(
            parse_body(Raw, "topic=a", b"\xff"),
            Err(HttpError::BadPublish("body is not valid UTF-8"))
        );
    }

    #[test]
    fn retry_is_digits_within_a_day() {
        assert_eq!(parse_retry("0"), Some(0));
        assert_eq!(parse_retry("0086400000"), Some(RETRY_MS_MAX));
        for bad in [
            "",
            "+5",
            "-1",
            " 5",
            "5 ",
            "1.5",
            "86400001",
            "4294967296",
            "\u{661}",
        ] {
            assert_eq!(parse_retry(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn percent_decoding_is_strict_everywhere() {
        use BodyFormat::{Form, Json, Raw};
        let not_utf8 = Err(NOT_UTF8);
        check(Form, "", "topic=a&data=%FF", not_utf8.clone());
        check(Form, "", "topic=a&event=%C3%28&data=x", not_utf8.clone());
        check(Form, "topic=a%FF", "data=x", not_utf8.clone());
        check(Raw, "topic=a&event=%FF", "x", not_utf8.clone());
        check(Json, "x=%ED%A0%80", r#"{"topic":"a","data":"x"}"#, not_utf8);
        for lone in [r#""\ud800""#, r#""\udc00x""#, r#""a\ud83d""#] {
            check(
                Json,
                "",
                &format!(r#"{{"topic":"a","data":{lone}}}"#),
                Err(HttpError::BadPublish("body is not valid JSON")),
            );
        }
        check(
            Json,
            "",
            r#"{"topic":"a","data":"\ud83d\ude00"}"#,
            Ok(event(&["a"], None, "\u{1f600}", None)),
        );
        check(
            Form,
            "",
            "topic=a&data=%E2%82%AC+%F0%9F%98%80",
            Ok(event(&["a"], None, "\u{20ac} \u{1f600}", None)),
        );
    }
}
