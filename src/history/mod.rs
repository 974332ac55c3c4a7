//! One event loop's history, sans-io: each topic's bounded ring of frames, the loop's
//! topic table with its subscriber index and history budget, the wildcard patterns'
//! index, and the merge that reads a subscriber's topics as one stream. No I/O here; the loop appends and the streams read.

pub(crate) mod merge;
pub(crate) mod patterns;
pub(crate) mod ring;
pub(crate) mod topics;

/// A small topic table, subscriptions and frames for the unit tests of the history and of
/// the streams that read it.
#[cfg(test)]
pub(crate) mod fixtures {
    use bytes::Bytes;

    use super::ring::Seq;
    use super::topics::{HistoryLimits, StreamTopic, SubscriberRef, Topics};
    use crate::sse::Frame;

    /// A table with room for 100 events and 1 MiB per topic.
    pub(crate) fn table() -> Topics {
        Topics::new(HistoryLimits {
            events: 100,
            bytes: 1 << 20,
            total_bytes: 1 << 24,
            ttl_ms: None,
        })
    }

    /// Subscribes connection 0 to `names`, one slot each, in order.
    pub(crate) fn subscribe(table: &mut Topics, names: &[&str]) -> Box<[StreamTopic]> {
        names
            .iter()
            .enumerate()
            .map(|(slot, name)| {
                let (id, position) = table.subscribe(
                    name,
                    SubscriberRef {
                        conn: 0,
                        slot: slot as u16,
                    },
                );
                StreamTopic { id, position }
            })
            .collect()
    }

    /// A frame whose bytes name its sequence number.
    pub(crate) fn frame(seq: Seq) -> Frame {
        Bytes::from(format!("id: {seq}\ndata: x\n\n"))
    }
}
