//! The conversation between the orchestrator and its worker processes. The orchestrator
//! writes one [`WorkerSpec`] JSON line on the worker's stdin, then [`Control`] words, one
//! per line; the worker answers with [`WorkerMsg`] JSON lines on stdout.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::latency::Buckets;

/// Most subscriber sockets one worker process holds: the machine caps a process at 20,000
/// open files, and the worker needs a few for itself.
pub const SOCKETS_PER_WORKER_MAX: usize = 15_000;

/// Everything a worker needs to open and watch its share of the subscribers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// This worker's number (for messages).
    pub index: usize,
    /// Where the server listens (loopback only; checked again by the worker).
    pub connect: SocketAddrV4,
    /// `Host` header value.
    pub host: String,
    /// Subscribe path with a `{topic}` placeholder.
    pub path_template: String,
    /// Topic names are `{topic_prefix}{n}` for n in 0..topics.
    pub topic_prefix: String,
    /// Topics in the run; subscriber i listens to topic i % topics.
    pub topics: usize,
    /// Global index of this worker's first subscriber.
    pub first: usize,
    /// Subscribers this worker opens (at most [`SOCKETS_PER_WORKER_MAX`]).
    pub count: usize,
    /// Subscribers per source address: subscriber i binds source number
    /// `source_base + i / per_source` (see [`source_addr`]).
    pub per_source: usize,
    /// First source number of this run. Runs rotate through the loopback range so that a
    /// new run never lands on the TIME_WAIT sockets an earlier run left on its addresses.
    pub source_base: usize,
    /// Connection attempts in flight at once.
    pub connect_inflight_max: usize,
    /// A connect that has not received its response head by then fails.
    pub connect_timeout_ms: u64,
    /// Percent of this worker's subscribers that reconnect with Last-Event-ID each second
    /// after `go` (the churn scenario); 0 for none.
    pub churn_percent: f64,
    /// The worker exits by itself after this long, whatever it was told.
    pub deadline_ms: u64,
    /// The server's history depth in events per topic, when known: announced holes are
    /// checked against it ([`Deliveries::gap_notices_unfounded`]).
    #[serde(default)]
    pub history_events: Option<u64>,
}

/// Name of topic `n` of a run.
pub fn topic_name(prefix: &str, n: usize) -> String {
    format!("{prefix}{n}")
}

/// The source address for global subscriber `i` of a run whose first source number is
/// `base`: number 0 is 127.0.0.2, then 127.0.0.3, ... carrying into the higher octets, never
/// leaving 127.0.0.0/8.
pub fn source_addr(base: usize, i: usize, per_source: usize) -> Ipv4Addr {
    let number = base.wrapping_add(i / per_source.max(1));
    let n = 2 + (number % 0x00FF_FFF0) as u32;
    let [_, a, b, c] = n.to_be_bytes();
    Ipv4Addr::new(127, a, b, c)
}

/// What the orchestrator tells a worker after the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Publishing starts: begin churn, if any, and mark the CPU baseline.
    Go,
    /// Publishing ended: stop churning, so every subscriber is streaming (or finishing its
    /// last reconnect) while the deliveries drain, and none is cut off at collection.
    /// `published` is how many events the run has published so far: from now on progress
    /// lines say how many of them the worker's subscribers still miss ([`WorkerMsg::Progress`]
    /// `owed`), which is what tells the orchestrator the drain is over.
    Calm {
        /// Events published since the start of the run.
        published: u64,
    },
    /// Stop churning and send a [`WorkerMsg::Report`] for everything since the last one.
    /// `published` is how many events the run has published so far (events `0..published`,
    /// event k on topic k % topics): what each subscriber still misses is counted as tail.
    Collect {
        /// Events published since the start of the run.
        published: u64,
    },
    /// Close everything and exit.
    Quit,
}

impl Control {
    /// Parses one control line.
    pub fn parse(line: &str) -> Option<Control> {
        match line.trim().split_once(' ') {
            Some(("collect", published)) => Some(Control::Collect {
                published: published.parse().ok()?,
            }),
            Some(("calm", published)) => Some(Control::Calm {
                published: published.parse().ok()?,
            }),
            Some(_) => None,
            None => match line.trim() {
                "go" => Some(Control::Go),
                "quit" => Some(Control::Quit),
                _ => None,
            },
        }
    }

    /// The line that says this.
    pub fn line(self) -> String {
        match self {
            Control::Go => "go\n".to_owned(),
            Control::Calm { published } => format!("calm {published}\n"),
            Control::Collect { published } => format!("collect {published}\n"),
            Control::Quit => "quit\n".to_owned(),
        }
    }
}

/// Why initial subscriptions failed, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// The TCP connect or the request write failed.
    pub connect: u64,
    /// No response head within the connect timeout.
    pub timeout: u64,
    /// The status was not 200.
    pub status: u64,
    /// The highest of those statuses (0: none), so a run says what refused it.
    #[serde(default)]
    pub status_seen: u16,
    /// The Content-Type was not text/event-stream.
    pub content_type: u64,
    /// The head or body was not valid HTTP / SSE.
    pub malformed: u64,
    /// The server closed before the head was complete.
    pub closed: u64,
}

impl Failures {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.status + self.content_type + self.malformed + self.closed
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Failures) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.status += other.status;
        self.status_seen = self.status_seen.max(other.status_seen);
        self.content_type += other.content_type;
        self.malformed += other.malformed;
        self.closed += other.closed;
    }
}

/// Delivery counters of one collection interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliveries {
    /// Events received for the first time (in order or after a gap).
    pub received: u64,
    /// Events whose sequence number was not above the last one received (repeats).
    pub duplicated: u64,
    /// Times an event arrived with a sequence number beyond the next expected one.
    pub gaps: u64,
    /// Events whose data was not a loadtest payload (for example a `gap` notice).
    pub foreign: u64,
    /// Streams the server closed that the worker then reopened with Last-Event-ID.
    pub disconnects: u64,
    /// Reconnects (churn or after a disconnect) that completed.
    pub reconnects: u64,
    /// Reconnect attempts that failed (they are retried).
    pub reconnect_failures: u64,
    /// Gap notices received: events named [`GAP_EVENT`], the server saying a resume
    /// reached back past its history.
    pub gap_notices: u64,
    /// Gap notices after which the next event followed on without a hole: the server said
    /// it lost events that it then delivered (history could have served the resume).
    pub gap_notices_spurious: u64,
    /// With the server's history depth N known: gap notices whose hole was not real. The
    /// first event skipped, m, was in history when the stream opened, because event m + N
    /// of its topic was published after the stream's response head arrived (or never):
    /// with N events kept per topic, m could not have been evicted yet.
    pub gap_notices_unfounded: u64,
    /// With the history depth known: announced holes whose check is done (event m + N
    /// arrived), so `gap_notices_unfounded` speaks for them.
    pub gap_notices_checked: u64,
    /// Events skipped right after a gap notice: announced, so not silently lost.
    pub missed_announced: u64,
    /// Events skipped by the first event of a stream that was opened without a
    /// Last-Event-ID (the subscriber had no id to resume from yet), with no gap notice.
    pub missed_unanchored: u64,
    /// Events skipped on a stream with no gap notice and a Last-Event-ID: silent loss.
    pub missed_silent: u64,
    /// At collection: events published that an open stream had not delivered yet.
    pub tail_streaming: u64,
    /// At collection: events published that a subscriber between streams had not got.
    pub tail_reconnecting: u64,
    /// `read` calls on subscriber sockets since `go` (those that returned `WouldBlock`
    /// included): how many wake-ups the server's writes cost the subscribers.
    #[serde(default)]
    pub reads: u64,
}

impl Deliveries {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Deliveries) {
        self.received += other.received;
        self.duplicated += other.duplicated;
        self.gaps += other.gaps;
        self.foreign += other.foreign;
        self.disconnects += other.disconnects;
        self.reconnects += other.reconnects;
        self.reconnect_failures += other.reconnect_failures;
        self.gap_notices += other.gap_notices;
        self.gap_notices_spurious += other.gap_notices_spurious;
        self.gap_notices_unfounded += other.gap_notices_unfounded;
        self.gap_notices_checked += other.gap_notices_checked;
        self.missed_announced += other.missed_announced;
        self.missed_unanchored += other.missed_unanchored;
        self.missed_silent += other.missed_silent;
        self.tail_streaming += other.tail_streaming;
        self.tail_reconnecting += other.tail_reconnecting;
        self.reads += other.reads;
    }

    /// Every event that a subscriber did not receive and that these counters explain.
    pub fn missed(&self) -> u64 {
        self.missed_announced
            + self.missed_unanchored
            + self.missed_silent
            + self.tail_streaming
            + self.tail_reconnecting
    }
}

/// The event name herald (by default) gives the notice that a resume lost events.
pub const GAP_EVENT: &[u8] = b"gap";

/// A message from a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerMsg {
    /// Sent every few hundred milliseconds.
    Progress {
        /// Subscribers streaming now.
        streaming: usize,
        /// Initial subscriptions that failed.
        failed: usize,
        /// Events received since the last collect.
        received: u64,
        /// After `calm`: the published events that subscribers which opened have not
        /// received yet and have not skipped past (each subscriber's events after the last
        /// one it got): in flight, owed by the server, or never coming. 0 means every
        /// subscriber got the last event of its topic. `None` before `calm`.
        #[serde(default)]
        owed: Option<u64>,
    },
    /// Every initial subscription has either opened or failed.
    Ready {
        /// Global indices of the subscribers that failed (they are not expected to receive).
        failed: Vec<usize>,
        /// Failures by kind.
        failures: Failures,
        /// Seconds from the first connect to the last head.
        connect_seconds: f64,
        /// Time from connect start to response head, microseconds.
        connect_latency: Buckets,
    },
    /// Answer to `collect`.
    Report {
        /// Delivery counters since the last report.
        deliveries: Deliveries,
        /// Delivery latency (publish timestamp to receipt), microseconds.
        latency: Buckets,
        /// This worker's CPU seconds since `go` or the last report.
        cpu_seconds: f64,
        /// Times its reading thread blocked in that interval, for lack of input: about
        /// none means it never caught up with its sockets, so its own backlog is in the
        /// latency it measured.
        #[serde(default)]
        waits: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_stay_in_loopback() {
        assert_eq!(source_addr(0, 0, 10_000), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(0, 9_999, 10_000), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(0, 10_000, 10_000), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source_addr(0, 254, 1), Ipv4Addr::new(127, 0, 1, 0));
        assert_eq!(source_addr(256, 0, 1), Ipv4Addr::new(127, 0, 1, 2));
        for i in [0, 1 << 20, usize::MAX / 2, usize::MAX] {
            assert!(source_addr(i, i, 1).is_loopback());
            assert!(source_addr(usize::MAX, i, 1).is_loopback());
        }
    }

    #[test]
    fn control_lines() {
        for c in [
            Control::Go,
            Control::Calm { published: 7 },
            Control::Collect { published: 1234 },
            Control::Quit,
        ] {
            assert_eq!(Control::parse(&c.line()), Some(c));
        }
        assert_eq!(Control::parse("nope"), None);
        assert_eq!(Control::parse("collect x"), None);
        assert_eq!(Control::parse("go 1"), None);
        assert_eq!(Control::parse("calm"), None);
    }

    #[test]
    fn messages_round_trip() {
        let msg = WorkerMsg::Progress {
            streaming: 3,
            failed: 1,
            received: 9,
            owed: Some(2),
        };
        let line = serde_json::to_string(&msg).unwrap();
        assert!(line.contains("\"kind\":\"progress\""));
        let back: WorkerMsg = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, WorkerMsg::Progress { received: 9, .. }));
    }
}
