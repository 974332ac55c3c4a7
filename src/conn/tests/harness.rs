//! The driver of the state-machine tables: one [`Connection`] carried through a script of
//! inputs the way the event loop carries it (`event_loop/io.rs`, `subscribe.rs`,
//! `clock.rs`), over an in-memory socket, recording what it wrote and what it asked for as
//! a trace of short lines.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use crate::authorize::{Decision, Grant};
use crate::bus::{Backfill, Resume, Submitted};
use crate::config::{Config, Limits};
use crate::conn::authorizing;
use crate::conn::resume::{self, BusView, Plan};
use crate::conn::{
    ConnState, Connection, Env, Exchange, Expired, Flushed, Now, Step, Stream, Waiting,
};
use crate::history::ring::Seq;
use crate::history::topics::{StreamTopic, SubscriberRef, Topics};
use crate::http::route::Listener;
use crate::socket::IoOutcome;

/// One input of a script.
#[derive(Clone, Copy, Debug)]
pub(super) enum In {
    /// These bytes arrive; the connection reads them when it asks.
    Recv(&'static str),
    /// Reads return at most this many bytes each (the bytes arrive split).
    Split(usize),
    /// The socket takes at most this many more bytes, then blocks.
    Room(usize),
    /// The socket takes everything again, and says it is writable.
    Writable,
    /// The bus answers publishes later (the default is at once, like the embedded bus).
    BusLater,
    /// The bus answers the publish with this ticket serial: its id, or a refusal (`None`).
    Published(u64, Option<&'static str>),
    /// The loop clock reaches this many ms; a deadline due by then fires.
    At(u64),
    /// Event `seq` is appended to a topic's ring, and the stream is written.
    Append(Seq, &'static str),
    /// The peer closes: a lingering connection is closed.
    PeerCloses,
    /// From here on the application decides subscriptions and publishes.
    Authorizing,
    /// The application decides the question with this ticket serial.
    Decided(u64, App),
}

/// What the application answers, in the scripts.
#[derive(Clone, Copy, Debug)]
pub(super) enum App {
    /// 2xx: what was asked.
    Allow,
    /// 2xx: only these comma-separated topic patterns.
    AllowTopics(&'static str),
    /// 2xx: until this wall-clock time (Unix ms).
    AllowUntil(u64),
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// No decision (the application failed).
    Unavailable,
}

impl App {
    fn decision(self) -> Decision {
        match self {
            App::Allow => Decision::allow(),
            App::AllowTopics(topics) => Decision::Allow(Grant {
                topics: Some(topics.split(',').map(str::to_owned).collect()),
                expires_at: None,
            }),
            App::AllowUntil(unix_ms) => Decision::Allow(Grant {
                topics: None,
                expires_at: Some(UNIX_EPOCH + std::time::Duration::from_millis(unix_ms)),
            }),
            App::Unauthorized => Decision::Unauthorized,
            App::Forbidden => Decision::Forbidden,
            App::Unavailable => Decision::Unavailable,
        }
    }
}

/// The limits of the tables: short times, so the scripts read easily.
pub(super) fn limits() -> Limits {
    let mut limits = Config::default().limits();
    limits.head_timeout = std::time::Duration::from_millis(500);
    limits.idle_timeout = std::time::Duration::from_millis(2_000);
    limits.heartbeat = std::time::Duration::from_millis(1_000);
    limits.retry_ms = 1_000;
    limits.lag_bytes_max = 64;
    limits.history.events = 4;
    limits
}

/// A connection under test, the loop's view of it, and the trace.
pub(super) struct Harness {
    pub limits: Limits,
    pub conn: Option<Connection>,
    pub now: Now,
    /// The connection's one deadline (loop ms), as the loop's wheel would hold it.
    pub deadline: Option<u64>,
    pub table: Topics,
    pub bus: BusView,
    pub trace: Vec<String>,
    /// Streams opened by a script end at this loop time (0: never).
    pub expires_ms: u64,
    input: VecDeque<u8>,
    split: usize,
    room: usize,
    bus_later: bool,
    serial: u64,
    wire: Vec<u8>,
    /// Lines of the SSE block being received.
    block: Vec<String>,
    streaming: bool,
    /// The application decides (see [`In::Authorizing`]).
    authorizing: bool,
    /// The stream's expiry is its grant's end.
    granted_until: bool,
}

impl Harness {
    /// A new connection at time 0, on the main listener.
    pub(super) fn new() -> Self {
        let limits = limits();
        let now = Now { ms: 0, unix_ms: 0 };
        let exchange = Exchange::new(
            vec![0; 8192].into_boxed_slice(),
            IpAddr::from([127, 0, 0, 1]),
            Listener::Main,
            false,
            now,
            &limits,
        );
        let table = Topics::new(limits.history);
        let mut harness = Harness {
            limits,
            conn: Some(Connection::new(exchange)),
            now,
            deadline: None,
            table,
            bus: BusView {
                can_backfill: false,
                reach_floor: Some(0),
            },
            trace: Vec::new(),
            expires_ms: 0,
            input: VecDeque::new(),
            split: usize::MAX,
            room: usize::MAX,
            bus_later: false,
            serial: 0,
            wire: Vec::new(),
            block: Vec::new(),
            streaming: false,
            authorizing: false,
            granted_until: false,
        };
        harness.rearm();
        harness
    }

    /// Runs a script and returns the trace.
    pub(super) fn run(mut self, script: &[In]) -> Vec<String> {
        self.drive();
        for input in script {
            self.apply(*input);
        }
        self.trace
    }

    /// Applies one input (for tests that look at the connection between inputs).
    pub(super) fn apply_for_test(&mut self, input: In) {
        self.apply(input);
    }

    /// Bytes of the exchange's answers not yet written.
    pub(super) fn unsent_len(&mut self) -> usize {
        self.conn
            .as_mut()
            .and_then(Connection::exchange)
            .map_or(0, |exchange| exchange.unsent().len())
    }

    fn apply(&mut self, input: In) {
        match input {
            In::Recv(bytes) => {
                self.input.extend(bytes.as_bytes());
                self.drive();
            }
            In::Split(n) => self.split = n,
            In::Room(n) => self.room = n,
            In::Writable => {
                self.room = usize::MAX;
                let waiting = match self.conn.as_mut().and_then(Connection::stream_mut) {
                    Some(stream) => stream.on_writable(),
                    None => true,
                };
                if waiting {
                    self.drive();
                }
            }
            In::BusLater => self.bus_later = true,
            In::Published(serial, id) => {
                let result = id
                    .map(|id| vec![crate::EventId(id.into())])
                    .ok_or(crate::PublishError::Unavailable);
                if let Some(conn) = &mut self.conn {
                    let (ours, _) = conn.on_published(serial, result);
                    if ours {
                        self.drive();
                    }
                }
            }
            In::At(ms) => {
                self.now.ms = ms;
                if self.deadline.is_some_and(|at| at <= ms) {
                    self.deadline = None;
                    self.on_deadline();
                }
            }
            In::Append(seq, topic) => {
                let frame = Bytes::from(format!("id: {seq}\ndata: {topic}\n\n"));
                // Published at `seq` seconds (Unix time), for `since` and expiry.
                let time_ms = u64::try_from(seq).unwrap_or(u64::MAX) * 1_000;
                self.table.append_at(seq, &[topic.into()], &frame, time_ms);
                let Some(stream) = self.conn.as_ref().and_then(Connection::stream) else {
                    return;
                };
                if !stream.is_blocked() {
                    self.drive();
                } else if stream.too_slow(&self.table, self.limits.lag_bytes_max) {
                    self.close("slow consumer");
                }
            }
            In::Authorizing => self.authorizing = true,
            In::Decided(serial, app) => self.decided(serial, app.decision()),
            In::PeerCloses => {
                if matches!(
                    self.conn.as_ref().map(Connection::state),
                    Some(ConnState::Lingering { .. })
                ) {
                    self.close("peer closed");
                }
            }
        }
    }

    /// What the loop's `on_timer` does.
    fn on_deadline(&mut self) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        let expired = conn.on_deadline(self.now, &self.limits, 7);
        match expired {
            Expired::Close(end) => self.close(&format!("deadline: close {end:?}")),
            Expired::Drive => {
                self.trace.push("deadline: drive".into());
                self.rearm();
                self.drive();
            }
            Expired::Write { heartbeat, next_ms } => {
                if heartbeat {
                    self.trace.push("heartbeat queued".into());
                }
                self.deadline = Some(next_ms);
                self.drive();
            }
        }
    }

    fn rearm(&mut self) {
        if let Some(at) = self.conn.as_mut().and_then(Connection::take_deadline) {
            self.deadline = Some(at);
        }
    }

    fn close(&mut self, why: &str) {
        self.flush_trace();
        self.trace.push(format!("close ({why})"));
        self.conn = None;
        self.deadline = None;
    }

    /// One socket write of at most the room left.
    fn write(&mut self, bytes: &[u8]) -> IoOutcome {
        write(&mut self.wire, &mut self.room, bytes)
    }

    /// What the loop's `drive` (exchange) or `write_stream` (stream) does.
    fn drive(&mut self) {
        if self.streaming {
            self.flush_stream();
            return self.flush_trace();
        }
        let limits = self.limits.clone();
        let env = Env {
            limits: &limits,
            cors_origins: &[],
            forwarded_header: crate::config::ForwardedHeader::XForwardedFor,
            publish_token: None,
            trusted_proxies: &[],
            render_metrics: &|_| String::new(),
            presence: &|_| crate::presence::TopicPresence::default(),
            readiness: crate::conn::Readiness::READY,
            subscribe_verifier: None,
            publish_verifier: None,
            authorizing: self.authorizing,
            authorizing_publish: self.authorizing,
        };
        for _ in 0..1000 {
            let Some(exchange) = self.conn.as_mut().and_then(Connection::exchange) else {
                break;
            };
            match exchange.step(&env, self.now) {
                Step::Read if self.input.is_empty() => break,
                Step::Read => {
                    let target = exchange.read_target();
                    let n = target.len().min(self.split).min(self.input.len());
                    for (to, from) in target.iter_mut().zip(self.input.drain(..n)) {
                        *to = from;
                    }
                    exchange.on_read(n, self.now, &self.limits);
                }
                Step::Write => {
                    let unsent = exchange.unsent().to_vec();
                    match self.write(&unsent) {
                        IoOutcome::Done(n) => {
                            if let Some(exchange) =
                                self.conn.as_mut().and_then(Connection::exchange)
                            {
                                exchange.on_written(n, self.now, &self.limits);
                            }
                        }
                        _ => {
                            self.flush_trace();
                            self.trace.push("write blocked".into());
                            break;
                        }
                    }
                }
                Step::Admit(client) => exchange.on_admitted(client, true),
                Step::Publish(mut job) => {
                    let topics = job
                        .outgoing()
                        .iter()
                        .map(|event| event.topics.join(","))
                        .collect::<Vec<_>>()
                        .join(";");
                    self.serial += 1;
                    let submitted = if self.bus_later {
                        Submitted::Pending
                    } else {
                        Submitted::Done(Ok(vec![crate::EventId(format!("1-{}", self.serial))]))
                    };
                    exchange.on_submitted(self.serial, submitted);
                    self.flush_trace();
                    self.trace
                        .push(format!("publish #{} to {topics}", self.serial));
                }
                Step::Subscribe(mut request) => {
                    self.flush_trace();
                    if let Some(ask) = request.ask.take() {
                        return self.ask(ask.topics.join(","), Waiting::Stream(request));
                    }
                    return self.subscribe(request);
                }
                Step::Authorize(ask) => {
                    self.flush_trace();
                    return self.ask(
                        format!("publish {}", ask.topics.join(",")),
                        Waiting::Publish,
                    );
                }
                Step::Linger => {
                    self.flush_trace();
                    self.trace.push("linger".into());
                    if let Some(conn) = &mut self.conn {
                        conn.linger();
                    }
                    self.deadline = Some(self.now.ms + crate::conn::LINGER.as_millis() as u64);
                    return;
                }
                Step::Close => return self.close("step"),
                Step::Await => {
                    self.flush_trace();
                    self.trace.push("await bus".into());
                    break;
                }
            }
        }
        self.rearm();
        self.flush_trace();
    }

    /// What the loop's `ask_application` and `ask_about_publish` do: the question gets
    /// the next serial, and the connection waits `auth_timeout` for it.
    fn ask(&mut self, what: String, waiting: Waiting) {
        self.serial += 1;
        self.trace.push(format!("ask #{} {what}", self.serial));
        let deadline_ms = self.now.ms + self.limits.auth_timeout.as_millis() as u64;
        if let Some(conn) = &mut self.conn {
            conn.await_decision(self.serial, waiting, deadline_ms);
        }
        self.rearm();
    }

    /// What the loop's `on_authorized` does.
    fn decided(&mut self, serial: u64, decision: Decision) {
        let (now, limits) = (self.now, self.limits.clone());
        let Some(waiting) = self
            .conn
            .as_mut()
            .and_then(|conn| conn.take_decision(serial, now, &limits))
        else {
            return self.trace.push(format!("#{serial} is no one's"));
        };
        match waiting {
            Waiting::Publish => {
                if let Some(exchange) = self.conn.as_mut().and_then(Connection::exchange) {
                    exchange.on_decided(Ok(decision));
                }
                self.drive();
            }
            Waiting::Stream(mut request) => {
                match authorizing::decide(decision, &mut request, self.now) {
                    Ok(()) => {
                        // A grant's end reaches the stream as its expiry, as a token's does.
                        if let Some(until) = request.token_until_unix_ms {
                            self.expires_ms = self.now.loop_ms_at(until);
                            self.granted_until = true;
                        }
                        self.subscribe(request)
                    }
                    Err(error) => {
                        if let Some(exchange) = self.conn.as_mut().and_then(Connection::exchange) {
                            exchange.refuse_stream(error, &request);
                        }
                        self.drive();
                    }
                }
            }
        }
    }

    /// What the loop's `open_stream` does for a bus without a log, with ids that are
    /// plain sequence numbers (which carry no time).
    fn subscribe(&mut self, mut request: crate::conn::StreamRequest) {
        resume::read_start(
            &mut request,
            &mut self.table,
            self.now.unix_ms,
            &self.limits,
            |_| None,
            |id| id.parse().map_or(Resume::Unknown, Resume::After),
        );
        let id = request.last_event_id.as_deref().unwrap_or("-");
        self.trace
            .push(format!("subscribe {} after {id}", request.topics.join(",")));
        let evicted = request
            .topics
            .iter()
            .map(|t| self.table.evicted_max(t))
            .max()
            .unwrap_or(0);
        let backfill = match resume::plan(&request, self.bus, evicted, &self.limits) {
            Plan::Start(backfill) => backfill,
            plan => return self.trace.push(format!("{plan:?}")),
        };
        self.start_stream(request, backfill, self.expires_ms);
    }

    /// What the loop's `open_stream_now` does.
    pub(super) fn start_stream(
        &mut self,
        request: crate::conn::StreamRequest,
        backfill: Option<Backfill>,
        expires_ms: u64,
    ) {
        let topics: Box<[StreamTopic]> = request
            .topics
            .iter()
            .enumerate()
            .map(|(slot, name)| {
                let subscriber = SubscriberRef {
                    conn: 0,
                    slot: slot as u16,
                };
                let (id, position) = self.table.subscribe(name, subscriber);
                StreamTopic { id, position }
            })
            .collect();
        let start = resume::stream_start(
            &request,
            topics,
            &self.table,
            self.bus,
            &self.limits,
            backfill,
            |seq| seq.to_string(),
        );
        let mut stream = Stream::new(start, self.now.ms, expires_ms);
        if self.granted_until {
            stream.expires_with_token();
        }
        let heartbeat_ms = self.limits.heartbeat.as_millis() as u64;
        self.deadline = Some(stream.next_check_ms(self.now.ms, heartbeat_ms));
        if let Some(conn) = &mut self.conn {
            conn.start_stream(stream);
        }
        self.streaming = true;
        self.flush_stream();
        self.flush_trace();
    }

    fn flush_stream(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let Some(stream) = conn.stream_mut() else {
            self.conn = Some(conn);
            return;
        };
        let mut deliveries = 0;
        let outcome = stream.flush(&self.table, 4, self.now.ms, &mut deliveries, |slices| {
            let bytes: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
            write(&mut self.wire, &mut self.room, &bytes)
        });
        let too_slow = stream.too_slow(&self.table, self.limits.lag_bytes_max);
        self.conn = Some(conn);
        match outcome {
            Flushed::Idle | Flushed::More => {}
            Flushed::Blocked if too_slow => self.close("slow consumer"),
            Flushed::Blocked => {
                self.flush_trace();
                self.trace.push("write blocked".into());
            }
            Flushed::End(end) => self.close(&format!("{end:?}")),
        }
    }

    /// Moves what was written into the trace: one line per complete HTTP answer (status
    /// and the first line of its body), then one per complete SSE block of a stream.
    fn flush_trace(&mut self) {
        loop {
            let text = String::from_utf8_lossy(&self.wire).into_owned();
            let Some(head_end) = text
                .find("\r\n\r\n")
                .filter(|_| text.starts_with("HTTP/1.1"))
            else {
                break;
            };
            let head = &text[..head_end];
            let status = &head[9..12];
            if head.contains("text/event-stream") {
                self.trace.push(format!("{status} stream"));
                self.wire.drain(..head_end + 4);
                continue;
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            if text.len() < head_end + 4 + length {
                break;
            }
            let body = &text[head_end + 4..head_end + 4 + length];
            let line = match status {
                "200" => body.lines().next().unwrap_or("").to_owned(),
                _ => String::new(),
            };
            self.trace
                .push(format!("{status} {line}").trim_end().to_owned());
            self.wire.drain(..head_end + 4 + length);
        }
        // The stream's bytes, once its head is out: one line per SSE block, and one per
        // comment (a heartbeat is a lone comment line).
        if !self.streaming || self.wire.starts_with(b"HTTP/1.1") {
            return;
        }
        while let Some(end) = self.wire.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.wire.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            match line.as_str() {
                "" => {
                    let block = std::mem::take(&mut self.block);
                    self.trace.push(block.join(" | "));
                }
                comment if comment.starts_with(':') && self.block.is_empty() => {
                    self.trace.push(comment.to_owned());
                }
                _ => self.block.push(line),
            }
        }
    }
}

/// One write to a socket that takes at most `room` more bytes.
fn write(wire: &mut Vec<u8>, room: &mut usize, bytes: &[u8]) -> IoOutcome {
    let n = bytes.len().min(*room);
    if n == 0 && !bytes.is_empty() {
        return IoOutcome::WouldBlock;
    }
    *room -= n;
    wire.extend_from_slice(&bytes[..n]);
    IoOutcome::Done(n)
}

/// Runs `script` on a new connection and compares the trace with `expected`.
pub(super) fn check(script: &[In], expected: &[&str]) {
    let trace = Harness::new().run(script);
    assert_eq!(trace, expected, "script: {script:?}");
}
