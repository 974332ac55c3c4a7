//! The fan-out core without sockets, for the Criterion benches in `benches/`: a topic
//! ring with cursor reads, and one frame written to many in-memory subscribers through
//! the same `Stream::flush` the event loop uses. Not part of the supported API.

use std::io::IoSlice;

use bytes::Bytes;

use crate::history::ring::{Ring, Seq};
use crate::history::topics::{HistoryLimits, StreamTopic, SubscriberRef, Topics};
use crate::socket::IoOutcome;
use crate::stream::{Stream, StreamStart};

/// A ring of `capacity` entries being appended to and read by cursor.
pub struct RingBench {
    ring: Ring,
    next: Seq,
    capacity: usize,
    frame: Bytes,
}

impl RingBench {
    /// A ring that keeps `capacity` frames of `frame_len` bytes.
    pub fn new(capacity: usize, frame_len: usize) -> Self {
        RingBench {
            ring: Ring::new(0),
            next: 1,
            capacity,
            frame: Bytes::from(vec![b'x'; frame_len]),
        }
    }

    /// Appends one frame (evicting the oldest past capacity), then reads the frames after
    /// `behind` entries from the head the way a lagging subscriber does. Returns the bytes
    /// read, so the work cannot be optimised away.
    pub fn publish_and_read(&mut self, behind: u64) -> usize {
        self.ring.push(self.next, self.frame.clone());
        self.ring.trim(self.capacity, usize::MAX);
        let cursor = self.next.saturating_sub(Seq::from(behind));
        self.next += 1;
        let mut index = self.ring.first_after(cursor);
        let mut read = 0;
        while let Some(entry) = self.ring.get(index) {
            read += entry.frame.len();
            index += 1;
        }
        read + self.ring.lag_bytes(cursor) as usize
    }
}

/// `subscribers` streams on one topic, each written through a writer that accepts
/// everything (no sockets): what one event costs the loop above the kernel.
pub struct FanoutBench {
    topics: Topics,
    streams: Vec<Stream>,
    next: Seq,
    frame: Bytes,
    deliveries: u64,
}

impl FanoutBench {
    /// `subscribers` streams on topic `t`, frames of `frame_len` bytes.
    pub fn new(subscribers: usize, frame_len: usize) -> Self {
        let mut topics = Topics::new(HistoryLimits {
            events: 1_000,
            bytes: 64 << 20,
            total_bytes: 64 << 20,
        });
        let streams = (0..subscribers)
            .map(|conn| {
                let (id, position) = topics.subscribe("t", SubscriberRef { conn, slot: 0 });
                let start = StreamStart {
                    topics: Box::new([StreamTopic { id, position }]),
                    preamble: Vec::new(),
                    cursor: 0,
                    gap_floor: 0,
                    partial: false,
                };
                Stream::new(start, 0)
            })
            .collect();
        FanoutBench {
            topics,
            streams,
            next: 1,
            frame: Bytes::from(vec![b'x'; frame_len]),
            deliveries: 0,
        }
    }

    /// Publishes one frame and writes it to every subscriber. Returns the bytes written.
    pub fn publish_one(&mut self) -> usize {
        self.topics.append(self.next, &["t".into()], &self.frame);
        self.next += 1;
        let mut written = 0;
        for stream in &mut self.streams {
            stream.flush(
                &self.topics,
                4,
                0,
                &mut self.deliveries,
                |slices: &[IoSlice<'_>]| {
                    let n: usize = slices.iter().map(|s| s.len()).sum();
                    written += n;
                    IoOutcome::Done(n)
                },
            );
        }
        written
    }
}
