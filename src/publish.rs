//! `POST /publish` bodies: form, JSON and raw, each into an [`Event`], and the validation
//! every publish (HTTP or library) passes before the bus sees it. The body is already
//! bounded by `max_publish_bytes` when it gets here. No I/O here.

use serde_json::Value;

use crate::bus::Outgoing;
use crate::config::RETRY_MS_MAX;
use crate::http::answer::HttpError;
use crate::sse::{check_event_name, encoded_len, EventFields};
use crate::{topic, Event, PublishError};

/// Longest event id any bus produces (`<20 digits>-<20 digits>`, with room to spare); used
/// to bound a frame's size before its id is known.
const ID_BYTES_MAX: usize = 48;

/// How the body is to be read, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFormat {
    /// `application/x-www-form-urlencoded`: `topic`, `data`, `event`, `retry` fields.
    Form,
    /// `application/json`: `{"topic", "event", "data", "retry"}`.
    Json,
    /// Anything textual: the body is the data; topics come from the query.
    Raw,
}

/// Picks the body format; unknown media types are refused rather than guessed.
pub(crate) fn body_format(content_type: Option<&str>) -> Result<BodyFormat, HttpError> {
    let Some(content_type) = content_type else {
        return Ok(BodyFormat::Raw);
    };
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/x-www-form-urlencoded" => Ok(BodyFormat::Form),
        "application/json" => Ok(BodyFormat::Json),
        "" | "text/plain" | "application/octet-stream" => Ok(BodyFormat::Raw),
        _ => Err(HttpError::UnsupportedMediaType),
    }
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
        let retry_ms = retry
            .parse::<u32>()
            .ok()
            .filter(|&ms| ms <= RETRY_MS_MAX)
            .ok_or(HttpError::BadPublish(
                "retry must be milliseconds between 0 and 86400000",
            ))?;
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

/// Reads a publish from its query string and body.
pub(crate) fn parse_body(format: BodyFormat, query: &str, body: &[u8]) -> Result<Event, HttpError> {
    let mut fields = Fields::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "topic" => fields.topics.push(value.into_owned()),
            "event" => fields.set_name(value.into_owned())?,
            "retry" => fields.set_retry(&value)?,
            _ => {}
        }
    }
    match format {
        BodyFormat::Form => read_form(&mut fields, body)?,
        BodyFormat::Json => read_json(&mut fields, body)?,
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
    for (key, value) in form_urlencoded::parse(body) {
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

/// Limits every publish is checked against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PublishLimits {
    /// Most topics per event.
    pub topics_max: usize,
    /// Longest topic name.
    pub topic_bytes_max: usize,
    /// Largest encoded frame (a subscriber's lag budget).
    pub frame_bytes_max: usize,
}

/// Validates an event and dedupes its topics for the bus.
pub(crate) fn prepare(event: &Event, limits: PublishLimits) -> Result<Outgoing<'_>, PublishError> {
    if event.topics.is_empty() {
        return Err(PublishError::NoTopic);
    }
    let mut topics: Vec<Box<str>> = Vec::with_capacity(event.topics.len());
    for name in &event.topics {
        if !topic::is_valid_name(name, limits.topic_bytes_max) {
            return Err(PublishError::InvalidTopic);
        }
        if !topics.iter().any(|t| **t == **name) {
            if topics.len() == limits.topics_max {
                return Err(PublishError::TooManyTopics);
            }
            topics.push(name.as_str().into());
        }
    }
    if let Some(name) = &event.name {
        check_event_name(name).map_err(|_| PublishError::InvalidEventName)?;
    }
    let fields = EventFields {
        id: "",
        name: event.name.as_deref(),
        data: &event.data,
        retry_ms: event.retry_ms,
    };
    if encoded_len(&fields) + ID_BYTES_MAX > limits.frame_bytes_max {
        return Err(PublishError::TooLarge);
    }
    Ok(Outgoing {
        topics,
        name: event.name.as_deref(),
        data: &event.data,
        retry_ms: event.retry_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PublishLimits = PublishLimits {
        topics_max: 2,
        topic_bytes_max: 16,
        frame_bytes_max: 200,
    };

    fn event(topics: &[&str], name: Option<&str>, data: &str, retry_ms: Option<u32>) -> Event {
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
            Err(HttpError::BadPublish(
                "retry must be milliseconds between 0 and 86400000",
            )),
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
    fn validation() {
        let ok = event(&["a", "b", "a"], Some("e"), "x", None);
        let outgoing = prepare(&ok, LIMITS).unwrap();
        assert_eq!(outgoing.topics.len(), 2);
        let fail = |e: Event, expected| assert_eq!(prepare(&e, LIMITS).err(), Some(expected));
        fail(event(&[], None, "x", None), PublishError::NoTopic);
        fail(event(&["a b"], None, "x", None), PublishError::InvalidTopic);
        fail(
            event(&["a", "b", "c"], None, "x", None),
            PublishError::TooManyTopics,
        );
        fail(
            event(&["a"], Some(""), "x", None),
            PublishError::InvalidEventName,
        );
        fail(
            event(&["a"], None, &"x".repeat(200), None),
            PublishError::TooLarge,
        );
    }
}
