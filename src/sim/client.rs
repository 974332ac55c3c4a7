//! The simulated clients, speaking real bytes: publishers that pipeline `POST /publish`,
//! `GET /healthz` and unknown paths and check every answer against the request it is for
//! (in request order, a publish's id naming that publish's event), and subscribers that
//! `GET /events` with or without a Last-Event-ID, parse the stream with a strict SSE
//! parser, and check what they get against the bus's ledger: each event of their topics
//! once, in id order, with no hole unless a gap event said so (and then only events the
//! server no longer had).

use crate::history::ring::Seq;

use super::bus::SimBus;
use super::net::Pipe;
use super::Rng;

/// Topics the clients use.
pub(super) const TOPICS: [&str; 3] = ["t0", "t1", "t2"];
/// Wildcards some subscribers use: all of [`TOPICS`], or one of them as a prefix.
const PATTERNS: [&str; 4] = ["t*", "t0*", "t1*", "t2*"];

/// Whether a subscription to `topics` (names and `prefix*` wildcards) gets events of
/// topic `name`.
pub(super) fn wants(topics: &[&str], name: &str) -> bool {
    topics.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => *p == name,
    })
}

/// What a publisher expects for each request it sent, in order.
#[derive(Debug)]
pub(super) enum Expect {
    Publish(String),
    Health,
    NotFound,
}

/// A client and its connection.
pub(super) struct Client {
    pub id: usize,
    pub pipe: Option<usize>,
    /// Loop time at which a disconnected client connects again.
    pub reconnect_ms: u64,
    /// A subscriber stops reading until then.
    pub paused_until_ms: u64,
    pub kind: Kind,
    /// Bytes received and not yet parsed.
    inbuf: Vec<u8>,
    /// The answer head of the current connection is parsed (subscribers).
    head_done: bool,
}

pub(super) enum Kind {
    Publisher {
        sent: usize,
        expect: std::collections::VecDeque<Expect>,
        /// Bytes of requests not yet sent (they go out in random pieces).
        unsent: Vec<u8>,
    },
    Subscriber(Box<Subscriber>),
}

/// A subscriber's view, across its connections.
pub(super) struct Subscriber {
    pub topics: Vec<&'static str>,
    /// The last id it was given (the SSE "last event ID"), as sent back on reconnect.
    pub last_id: Option<String>,
    /// Its sequence number: every event of its topics up to here was received (or
    /// skipped after a gap).
    pub cursor: Seq,
    /// The current connection announced a gap: events it forgot may be missing from it
    /// (only those: `Pipe::forgotten`).
    gap: bool,
    /// Events up to here were forgotten by the server when it announced a gap: the
    /// client is owed nothing at or below it (nor told an id for it: see the report).
    pub forgotten: Seq,
    /// The current connection was opened without a Last-Event-ID.
    fresh: bool,
    /// The current connection's SSE block being read.
    block: Vec<String>,
    /// Events received, for the stats.
    pub received: u64,
    pub gaps: u64,
}

impl Client {
    pub(super) fn publisher(id: usize) -> Self {
        Client::new(
            id,
            Kind::Publisher {
                sent: 0,
                expect: Default::default(),
                unsent: Vec::new(),
            },
        )
    }

    pub(super) fn subscriber(id: usize, rng: &mut Rng) -> Self {
        let mut topics = vec![TOPICS[rng.below(3) as usize]];
        if rng.chance(400) {
            let other = TOPICS[rng.below(3) as usize];
            if other != topics[0] {
                topics.push(other);
            }
        }
        // Wildcards, chosen by id so the seeds draw what they drew before: every fourth
        // subscriber adds `t*` to its topics (each event of its topics still once), and
        // every fourth swaps its first topic for that topic as a prefix.
        match id % 4 {
            1 => topics.push(PATTERNS[0]),
            3 => {
                let index = TOPICS.iter().position(|t| *t == topics[0]).unwrap_or(0);
                topics[0] = PATTERNS[index + 1];
            }
            _ => {}
        }
        Client::new(
            id,
            Kind::Subscriber(Box::new(Subscriber {
                topics,
                last_id: None,
                cursor: 0,
                gap: false,
                forgotten: 0,
                fresh: false,
                block: Vec::new(),
                received: 0,
                gaps: 0,
            })),
        )
    }

    fn new(id: usize, kind: Kind) -> Self {
        Client {
            id,
            pipe: None,
            reconnect_ms: 0,
            paused_until_ms: 0,
            kind,
            inbuf: Vec::new(),
            head_done: false,
        }
    }

    /// Opens a connection (on `pipe`) and queues its first request(s).
    pub(super) fn connect(&mut self, pipe: usize, pipes: &mut [Pipe], bus: &SimBus, rng: &mut Rng) {
        self.pipe = Some(pipe);
        self.inbuf.clear();
        self.head_done = false;
        match &mut self.kind {
            Kind::Publisher { .. } => {}
            Kind::Subscriber(sub) => {
                let mut request = String::from("GET /events?");
                let query: Vec<String> = sub.topics.iter().map(|t| format!("topic={t}")).collect();
                request.push_str(&query.join("&"));
                request.push_str(" HTTP/1.1\r\nHost: sim\r\n");
                sub.gap = false;
                sub.block.clear();
                sub.fresh = sub.last_id.is_none();
                // Now and then an id that is not the bus's: the stream must start with a gap.
                if rng.chance(30) {
                    sub.last_id = Some("9-1".into());
                }
                if let Some(id) = &sub.last_id {
                    request.push_str(&format!("Last-Event-ID: {id}\r\n"));
                    if bus.resume_point(id) == crate::bus::Resume::Unknown {
                        sub.cursor = 0;
                    }
                }
                request.push_str("\r\n");
                pipes[pipe].client_send(request.as_bytes());
            }
        }
    }

    /// A publisher queues a few more pipelined requests.
    pub(super) fn queue_requests(&mut self, rng: &mut Rng) {
        let Kind::Publisher {
            sent,
            expect,
            unsent,
        } = &mut self.kind
        else {
            return;
        };
        for _ in 0..1 + rng.below(4) {
            match rng.below(10) {
                0 => {
                    unsent.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: sim\r\n\r\n");
                    expect.push_back(Expect::Health);
                }
                1 => {
                    unsent.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: sim\r\n\r\n");
                    expect.push_back(Expect::NotFound);
                }
                _ => {
                    *sent += 1;
                    let data = format!("c{}n{sent}", self.id);
                    let mut topic = format!("topic={}", TOPICS[rng.below(3) as usize]);
                    if rng.chance(300) {
                        topic.push_str(&format!("&topic={}", TOPICS[rng.below(3) as usize]));
                    }
                    let request = format!(
                        "POST /publish?{topic} HTTP/1.1\r\nHost: sim\r\nContent-Length: {}\r\n\r\n{data}",
                        data.len()
                    );
                    unsent.extend_from_slice(request.as_bytes());
                    expect.push_back(Expect::Publish(data));
                }
            }
        }
    }

    /// Sends a random piece of what a publisher has queued.
    pub(super) fn send_some(&mut self, pipe: &mut Pipe, rng: &mut Rng) {
        let Kind::Publisher { unsent, .. } = &mut self.kind else {
            return;
        };
        if unsent.is_empty() {
            return;
        }
        let n = 1 + rng.below(unsent.len() as u64) as usize;
        pipe.client_send(&unsent[..n]);
        unsent.drain(..n);
    }

    /// The client's state, for a failure message.
    pub(super) fn debug(&self) -> String {
        let mut out = format!("head {} inbuf {}", self.head_done, self.inbuf.len());
        if let Kind::Subscriber(sub) = &self.kind {
            out.push_str(&format!(
                " last {:?} received {} gaps {}",
                sub.last_id, sub.received, sub.gaps
            ));
        }
        out
    }

    /// Whether a publisher has requests it has not sent yet (it connects for them).
    pub(super) fn settled_queue_empty(&self) -> bool {
        match &self.kind {
            Kind::Publisher { unsent, .. } => unsent.is_empty(),
            Kind::Subscriber(_) => true,
        }
    }

    /// A publisher's connection ended: what it had not sent or not heard back is given
    /// up (a publish whose answer was lost may still have been taken, as in life).
    pub(super) fn discard_requests(&mut self) {
        if let Kind::Publisher { expect, unsent, .. } = &mut self.kind {
            expect.clear();
            unsent.clear();
        }
    }

    /// Whether the client has nothing more to send or hear on its connection.
    pub(super) fn settled(&self) -> bool {
        match &self.kind {
            Kind::Publisher { expect, unsent, .. } => expect.is_empty() && unsent.is_empty(),
            Kind::Subscriber(_) => true,
        }
    }

    /// Reads what arrived and checks it (with `authorizing`, the application may refuse
    /// publishes). Returns whether the connection is over (the server closed it), or the
    /// broken rule.
    pub(super) fn receive(
        &mut self,
        pipe: &mut Pipe,
        bus: &SimBus,
        max: usize,
        authorizing: bool,
    ) -> Result<bool, String> {
        let (bytes, over) = pipe.client_read(max);
        self.inbuf.extend_from_slice(&bytes);
        match &mut self.kind {
            Kind::Publisher { expect, .. } => {
                while let Some((status, body, len)) = parse_answer(&self.inbuf)? {
                    self.inbuf.drain(..len);
                    if status == 408 {
                        return Ok(true); // Stalled too long: the connection ends.
                    }
                    let Some(expected) = expect.pop_front() else {
                        return Err(format!("an answer ({status}) to no request"));
                    };
                    check_answer(&expected, status, &body, bus, authorizing)?;
                }
            }
            Kind::Subscriber(sub) => {
                if !self.head_done {
                    let Some(end) = find(&self.inbuf, b"\r\n\r\n") else {
                        return Ok(over);
                    };
                    let head = String::from_utf8_lossy(&self.inbuf[..end]).into_owned();
                    if !head.contains("text/event-stream") {
                        // Refused (503 while the bus cannot fetch, 408, ...): come back.
                        return Ok(true);
                    }
                    self.inbuf.drain(..end + 4);
                    self.head_done = true;
                }
                while let Some(end) = self.inbuf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.inbuf.drain(..=end).collect();
                    let line = std::str::from_utf8(&line[..end])
                        .map_err(|_| "a stream line that is not UTF-8".to_string())?
                        .to_owned();
                    sub.line(line, bus, pipe.forgotten)?;
                }
            }
        }
        Ok(over)
    }
}

impl Subscriber {
    /// One line of the stream (strict: the fields herald sends, nothing else).
    fn line(&mut self, line: String, bus: &SimBus, forgotten: Seq) -> Result<(), String> {
        if line.starts_with(':') {
            return Ok(()); // A heartbeat.
        }
        if !line.is_empty() {
            let field = line.split_once(": ").map_or(line.as_str(), |(f, _)| f);
            if !matches!(field, "id" | "data" | "event" | "retry") {
                return Err(format!("unexpected stream line {line:?}"));
            }
            self.block.push(line);
            return Ok(());
        }
        let block = std::mem::take(&mut self.block);
        let value = |name: &str| {
            block
                .iter()
                .find_map(|l| l.strip_prefix(name).and_then(|l| l.strip_prefix(": ")))
        };
        let (id, data, event) = (value("id"), value("data"), value("event"));
        if let Some(event) = event {
            if event != "gap" || id.is_some() {
                return Err(format!("unexpected event block {block:?}"));
            }
            self.gap = true;
            self.gaps += 1;
            self.forgotten = self.forgotten.max(forgotten);
            return Ok(());
        }
        let Some(id) = id else {
            return Ok(()); // `retry:` alone.
        };
        let seq = match bus.resume_point(id) {
            crate::bus::Resume::After(seq) => seq,
            // The simulated bus reads ids into `After` or `Unknown` only.
            _ => return Err(format!("an id the bus never gave: {id}")),
        };
        let opening = value("retry").is_some();
        if opening {
            // Where a stream without an id starts: nothing before it is owed.
            if self.last_id.is_some() {
                return Err("an opening id for a stream that resumed".into());
            }
            self.cursor = seq;
            self.last_id = Some(id.to_owned());
            return Ok(());
        }
        if seq <= self.cursor && data.is_some() {
            return Err(format!(
                "event {seq} again or out of order (after {})",
                self.cursor
            ));
        }
        // Nothing of ours between the cursor and this id may be missing.
        let upto = if data.is_some() { seq - 1 } else { seq };
        for missed in self.cursor + 1..=upto {
            let logged = &bus.ledger[(missed - 1) as usize];
            let ours = logged.topics.iter().any(|t| wants(&self.topics, t));
            // A stream opened without an id is not owed events the bus lost before it
            // opened: its opening id may predate them when the bus did not know its reach.
            let lost_before = self.fresh && !logged.delivered && missed <= forgotten;
            if ours && !(self.gap && missed <= forgotten) && !lost_before {
                return Err(format!(
                    "event {missed} skipped (cursor {}, got {seq}, gap {}, forgotten {forgotten}, topics {:?})",
                    self.cursor, self.gap, self.topics
                ));
            }
        }
        if let Some(data) = data {
            let logged = &bus.ledger[(seq - 1) as usize];
            if logged.data != data || !logged.topics.iter().any(|t| wants(&self.topics, t)) {
                return Err(format!("event {seq} is not the one published ({data:?})"));
            }
            self.received += 1;
        }
        self.cursor = self.cursor.max(seq);
        self.last_id = Some(id.to_owned());
        Ok(())
    }
}

/// An answer's status and body when a whole one is at the start of `buf`, and its length.
fn parse_answer(buf: &[u8]) -> Result<Option<(u16, String, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|h| h.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an answer: {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    if buf.len() < end + 4 + length {
        return Ok(None);
    }
    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
    Ok(Some((status, body, end + 4 + length)))
}

/// Whether an answer fits the request it answers (in order).
fn check_answer(
    expected: &Expect,
    status: u16,
    body: &str,
    bus: &SimBus,
    authorizing: bool,
) -> Result<(), String> {
    match (expected, status) {
        // The application refused it (only when one decides).
        (Expect::Publish(_), 401 | 403) if authorizing => Ok(()),
        (Expect::Health, 200) if body == "ok\n" => Ok(()),
        (Expect::NotFound, 404) => Ok(()),
        (Expect::Publish(_), 503) => Ok(()),
        (Expect::Publish(data), 200) => {
            let id = body.trim_end();
            let crate::bus::Resume::After(seq) = bus.resume_point(id) else {
                return Err(format!("publish of {data} answered with id {id:?}"));
            };
            let logged = bus.ledger.get((seq as usize).wrapping_sub(1));
            if logged.is_none_or(|l| &l.data != data) {
                return Err(format!("publish of {data} answered with another's id {id}"));
            }
            Ok(())
        }
        _ => Err(format!(
            "{expected:?} answered {status} {body:?}: out of request order?"
        )),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
