//! [`prepare`], the validation every event passes whatever its source (an HTTP body, the
//! library `Handle`, or an entry the Redis reader decoded) before it is stored or
//! delivered, and the [`PublishLimits`] it checks against. No I/O here.

use std::sync::Arc;

use crate::bus::Outgoing;
use crate::config::RETRY_MS_MAX;
use crate::event::{Event, PublishError};
use crate::history::topics;
use crate::sse::{check_event_name, encoded_len, EventFields};

/// Longest event id any bus produces (`<20 digits>-<20 digits>`, with room to spare); used
/// to bound a frame's size before its id is known.
const ID_BYTES_MAX: usize = 48;

/// Limits every event is checked against, whatever its source.
#[derive(Clone, Debug)]
pub(crate) struct PublishLimits {
    /// Most topics per event.
    pub topics_max: usize,
    /// Longest topic name.
    pub topic_bytes_max: usize,
    /// Largest encoded frame (a subscriber's lag budget).
    pub frame_bytes_max: usize,
    /// Largest data (`max_publish_bytes`): an HTTP body is cut there already, and an event
    /// from the library or the Redis stream gets the same ceiling.
    pub data_bytes_max: usize,
    /// The `gap_event` name. Only herald sends it: a published event of that name would tell
    /// every resuming client's code to refetch its state, or hide a real gap.
    pub gap_event: Arc<str>,
}

/// Validates an event and dedupes its topics for the bus. HTTP publishes, library
/// publishes and Redis stream entries all pass here, so one source cannot carry what
/// another is refused.
pub(crate) fn prepare<'e>(
    event: &'e Event,
    limits: &PublishLimits,
) -> Result<Outgoing<'e>, PublishError> {
    if event.topics.is_empty() {
        return Err(PublishError::NoTopic);
    }
    let mut topics: Vec<Box<str>> = Vec::with_capacity(event.topics.len());
    for name in &event.topics {
        if !topics::is_valid_name(name, limits.topic_bytes_max) {
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
        if **name == *limits.gap_event {
            return Err(PublishError::ReservedEventName);
        }
    }
    if event.retry_ms.is_some_and(|ms| ms > RETRY_MS_MAX) {
        return Err(PublishError::InvalidRetry);
    }
    if event.data.len() > limits.data_bytes_max {
        return Err(PublishError::DataTooLarge);
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
    use crate::publish::tests::event;

    fn limits() -> PublishLimits {
        PublishLimits {
            topics_max: 2,
            topic_bytes_max: 16,
            frame_bytes_max: 200,
            data_bytes_max: 150,
            gap_event: "gap".into(),
        }
    }

    #[test]
    fn validation() {
        let ok = event(&["a", "b", "a"], Some("e"), "x", None);
        let limits = limits();
        let outgoing = prepare(&ok, &limits).unwrap();
        assert_eq!(outgoing.topics.len(), 2);
        let fail = |e: Event, expected| assert_eq!(prepare(&e, &limits).err(), Some(expected));
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
            event(&["a"], None, &"x".repeat(151), None),
            PublishError::DataTooLarge,
        );
        fail(
            event(&["a"], None, &"\n".repeat(150), None),
            PublishError::TooLarge,
        );
        fail(
            event(&["a"], Some("gap"), "x", None),
            PublishError::ReservedEventName,
        );
        fail(
            event(&["a"], None, "x", Some(RETRY_MS_MAX + 1)),
            PublishError::InvalidRetry,
        );
        for fine in [Some("Gap"), Some("gaps")] {
            assert!(prepare(&event(&["a"], fine, "x", Some(RETRY_MS_MAX)), &limits).is_ok());
        }
    }
}
