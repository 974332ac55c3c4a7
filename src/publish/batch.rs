//! Batch publish bodies: NDJSON (`application/x-ndjson`, one JSON event object a line) and
//! a JSON array of event objects. Each event is read exactly as a single JSON publish is,
//! and the first bad one refuses the whole batch, naming its line or index. The count is
//! checked while reading, so a body of many tiny events stops at `max_batch_events` + 1.
//! The body is already bounded by `max_publish_bytes`. No I/O here.

use serde_json::value::RawValue;

use super::{read_json, Fields, NOT_UTF8};
use crate::event::{Event, PublishError};
use crate::http::answer::{BatchPlace, HttpError};
use crate::http::form;

/// The events of a batch in body order, each with where it sits.
pub(crate) type Batch = Vec<(BatchPlace, Event)>;

/// The refusal of a batch that holds no event.
const EMPTY: HttpError = HttpError::BadPublish("batch holds no event");

/// Whether a JSON body's top level is an array (then it is a batch). Only JSON
/// whitespace may come first; anything else is left to the single-event reader.
pub(crate) fn is_array(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'[')
}

/// A batch names everything per event; a query `topic`, `event` or `retry` would leave
/// it unclear which events it applies to, so it is refused rather than guessed.
fn check_query(query: &str) -> Result<(), HttpError> {
    for pair in form::pairs(query.as_bytes()) {
        let (key, _) = pair.map_err(|_| NOT_UTF8)?;
        if matches!(&*key, "topic" | "event" | "retry") {
            return Err(HttpError::BadPublish(
                "a batch takes topic, event and retry from each event, not the query",
            ));
        }
    }
    Ok(())
}

/// One event object, read like a single JSON publish body.
fn read_event(bytes: &[u8], place: BatchPlace) -> Result<(BatchPlace, Event), HttpError> {
    let mut fields = Fields::default();
    read_json(&mut fields, bytes)
        .and_then(|()| fields.into_event())
        .map(|event| (place, event))
        .map_err(|error| error.in_batch(place))
}

/// Reads an NDJSON body: one event object per line (`\n`, optionally `\r\n`); lines of
/// only whitespace are skipped but counted, so a refusal's line number is the editor's.
pub(crate) fn ndjson(query: &str, body: &[u8], events_max: usize) -> Result<Batch, HttpError> {
    check_query(query)?;
    let mut events = Vec::new();
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| matches!(b, b' ' | b'\t')) {
            continue;
        }
        if events.len() == events_max {
            return Err(HttpError::Publish(PublishError::BatchTooLarge));
        }
        events.push(read_event(line, BatchPlace::Line(index + 1))?);
    }
    if events.is_empty() {
        return Err(EMPTY);
    }
    Ok(events)
}

/// Reads a JSON array of event objects. The array is split into its elements' raw text
/// first (no values built), so an over-long array is refused before any event is read.
pub(crate) fn array(query: &str, body: &[u8], events_max: usize) -> Result<Batch, HttpError> {
    check_query(query)?;
    let elements: Vec<&RawValue> = serde_json::from_slice(body)
        .map_err(|_| HttpError::BadPublish("body is not valid JSON"))?;
    if elements.len() > events_max {
        return Err(HttpError::Publish(PublishError::BatchTooLarge));
    }
    if elements.is_empty() {
        return Err(EMPTY);
    }
    elements
        .iter()
        .enumerate()
        .map(|(index, raw)| read_event(raw.get().as_bytes(), BatchPlace::Index(index)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str, data: &str) -> Event {
        Event {
            topics: vec![topic.to_owned()],
            name: None,
            data: data.to_owned(),
            retry_ms: None,
        }
    }

    fn refusal(result: Result<Batch, HttpError>) -> String {
        let error = result.unwrap_err();
        match error {
            HttpError::InBatch { place, reason, .. } => format!("{place}: {reason}"),
            other => other.answer().1.to_owned(),
        }
    }

    #[test]
    fn ndjson_lines_in_order_blank_lines_counted() {
        let body = b"{\"topic\":\"a\",\"data\":\"1\"}\r\n\n  \n{\"topic\":[\"a\",\"b\"],\"event\":\"e\",\"data\":{\"k\":2},\"retry\":5}\n";
        let batch = ndjson("", body, 10).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0], (BatchPlace::Line(1), event("a", "1")));
        assert_eq!(batch[1].0, BatchPlace::Line(4));
        assert_eq!(batch[1].1.topics, ["a", "b"]);
        assert_eq!(batch[1].1.name.as_deref(), Some("e"));
        assert_eq!(batch[1].1.data, r#"{"k":2}"#);
        assert_eq!(batch[1].1.retry_ms, Some(5));
    }

    #[test]
    fn ndjson_refusals_name_the_line() {
        let check = |body: &str, expected: &str| {
            assert_eq!(
                refusal(ndjson("", body.as_bytes(), 3)),
                expected,
                "{body:?}"
            )
        };
        check(
            "{\"topic\":\"a\",\"data\":1}\n\n{\"topic\":\"a\"}\n",
            "line 3: missing data",
        );
        check(
            "{\"topic\":\"a\",\"data\":1}\n{",
            "line 2: body is not valid JSON",
        );
        check("[1]", "line 1: JSON body must be an object");
        check(
            "{\"topic\":\"a\",\"data\":1,\"data\":2}",
            "line 1: JSON body repeats a key",
        );
        check("", "batch holds no event");
        check("\n \r\n", "batch holds no event");
        let four = "{\"topic\":\"a\",\"data\":1}\n".repeat(4);
        check(&four, "batch exceeds max_batch_events");
        assert_eq!(ndjson("", four.as_bytes(), 4).unwrap().len(), 4);
        // The count stops the read: nothing past the limit is parsed.
        let past = format!("{}{{", "{\"topic\":\"a\",\"data\":1}\n".repeat(3));
        assert_eq!(
            refusal(ndjson("", past.as_bytes(), 3)),
            "batch exceeds max_batch_events"
        );
    }

    #[test]
    fn arrays_in_order_refusals_name_the_index() {
        let body = br#" [{"topic":"a","data":"1"}, {"topic":"b","data":"2"}] "#;
        assert!(is_array(body));
        assert!(!is_array(br#"{"topic":"a","data":"["}"#));
        assert!(!is_array(b""));
        let batch = array("", body, 2).unwrap();
        assert_eq!(
            batch,
            [
                (BatchPlace::Index(0), event("a", "1")),
                (BatchPlace::Index(1), event("b", "2")),
            ]
        );
        assert_eq!(
            refusal(array("", body, 1)),
            "batch exceeds max_batch_events"
        );
        assert_eq!(refusal(array("", b"[]", 1)), "batch holds no event");
        assert_eq!(
            refusal(array(
                "",
                br#"[{"topic":"a","data":1},{"data":1,"x":1}]"#,
                5
            )),
            "index 1: unknown JSON key (expected topic, event, data, retry)"
        );
        assert_eq!(
            refusal(array("", br#"[{"topic":"a","data":1},"#, 5)),
            "body is not valid JSON"
        );
        // The array splits without checking escapes; the element's own read refuses them.
        assert_eq!(
            refusal(array("", br#"[{"topic":"a","data":"\ud800"}]"#, 5)),
            "index 0: body is not valid JSON"
        );
    }

    #[test]
    fn a_batch_refuses_fields_in_the_query() {
        for query in ["topic=a", "event=e", "retry=5"] {
            assert_eq!(
                refusal(ndjson(query, b"{\"topic\":\"a\",\"data\":1}", 5)),
                "a batch takes topic, event and retry from each event, not the query"
            );
        }
        assert!(array("other=1", br#"[{"topic":"a","data":1}]"#, 5).is_ok());
    }
}
