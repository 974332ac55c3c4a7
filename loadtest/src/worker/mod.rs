//! The `worker` subcommand: one process holding up to
//! [`SOCKETS_PER_WORKER_MAX`] SSE subscribers on
//! non-blocking sockets driven by one `mio` poll loop (no thread per connection). Sockets
//! bind to source addresses 127.0.0.2, 127.0.0.3, ... so that no source runs out of ports.
//!
//! It reads its [`WorkerSpec`] and then control words from stdin (a helper thread wakes the
//! loop), and reports progress, readiness and delivery counts with serialized latency
//! histograms as JSON lines on stdout. Every loop is bounded: the spec's deadline ends the
//! process whatever the orchestrator does.

mod sub;

use std::collections::VecDeque;
use std::io::{self, BufRead, ErrorKind, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::latency::{self, Buckets};
use crate::protocol::{
    self, Control, Deliveries, Failures, WorkerMsg, WorkerSpec, SOCKETS_PER_WORKER_MAX,
};
use sub::{Failure, Outcome, Sub, SubState, Tally};

/// Readiness events handled per poll call.
const EVENTS_PER_POLL: usize = 4096;
/// Longest wait in `poll`: the loop's tick for timeouts, churn and progress.
const TICK: Duration = Duration::from_millis(20);
/// How often progress lines are written.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// Scratch buffer for every read of this worker.
const READ_BYTES: usize = 64 * 1024;
/// Reconnect attempts per subscriber after its first stream opened. Past this it stays
/// down (and its missing events count as lost): a server that keeps refusing cannot keep
/// the worker busy forever.
const RECONNECTS_PER_SUB_MAX: u32 = 1_000;
/// The waker's token; subscriber tokens are their local indices, all below this.
const WAKER: Token = Token(usize::MAX);

/// Runs the worker: reads the spec from stdin and serves until `quit`, stdin EOF or the
/// deadline.
pub fn main() -> io::Result<()> {
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    let spec: WorkerSpec = serde_json::from_str(&line)
        .map_err(|e| io::Error::new(ErrorKind::InvalidInput, format!("worker spec: {e}")))?;
    if !spec.connect.ip().is_loopback() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "only 127.0.0.0/8 may be targeted",
        ));
    }
    if spec.count > SOCKETS_PER_WORKER_MAX {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("a worker holds at most {SOCKETS_PER_WORKER_MAX} sockets"),
        ));
    }
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let control = spawn_stdin_reader(waker);
    Worker::new(spec, poll, control).run()
}

/// Forwards control lines from stdin; EOF means the orchestrator is gone, so it says quit.
fn spawn_stdin_reader(waker: Arc<Waker>) -> Receiver<Control> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Some(control) = Control::parse(&line) {
                if tx.send(control).is_err() {
                    return;
                }
                let _ = waker.wake();
            }
        }
        let _ = tx.send(Control::Quit);
        let _ = waker.wake();
    });
    rx
}

/// The worker's state.
struct Worker {
    spec: WorkerSpec,
    poll: Poll,
    control: Receiver<Control>,
    subs: Vec<Sub>,
    /// Subscribers waiting for a connection attempt, in order.
    queue: VecDeque<usize>,
    /// Subscribers whose read budget ran out and must be read again next turn.
    more_to_read: Vec<usize>,
    tally: Tally,
    failures: Failures,
    failed: Vec<usize>,
    connect_latency: Histogram<u64>,
    started: Instant,
    deadline: Instant,
    last_open: Instant,
    ready_sent: bool,
    churning: bool,
    churn_cursor: usize,
    next_churn: Instant,
    next_progress: Instant,
    /// Events published in the run, once publishing ended (`calm`): progress lines then
    /// say how many of them are still owed to this worker's subscribers.
    published: Option<u64>,
    cpu_mark: f64,
    /// This (the reading) thread's blocking waits at `go` or the last report.
    waits_mark: u64,
    buf: Box<[u8]>,
}

impl Worker {
    fn new(spec: WorkerSpec, poll: Poll, control: Receiver<Control>) -> Worker {
        let now = Instant::now();
        let subs = (0..spec.count)
            .map(|i| {
                let topic = ((spec.first + i) % spec.topics.max(1)) as u32;
                Sub::new(topic, now, spec.history_events)
            })
            .collect();
        Worker {
            queue: (0..spec.count).collect(),
            deadline: now + Duration::from_millis(spec.deadline_ms),
            spec,
            poll,
            control,
            subs,
            more_to_read: Vec::new(),
            tally: Tally {
                deliveries: Deliveries::default(),
                latency: latency::histogram(),
            },
            failures: Failures::default(),
            failed: Vec::new(),
            connect_latency: latency::histogram(),
            started: now,
            last_open: now,
            ready_sent: false,
            churning: false,
            churn_cursor: 0,
            next_churn: now,
            next_progress: now,
            published: None,
            cpu_mark: crate::procfs::own_cpu_seconds(),
            waits_mark: crate::procfs::own_waits(),
            buf: vec![0; READ_BYTES].into_boxed_slice(),
        }
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            self.start_connects();
            let timeout = if self.more_to_read.is_empty() {
                TICK
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now_us = unix_micros();
            let retry = std::mem::take(&mut self.more_to_read);
            for i in retry {
                self.on_ready(i, now_us);
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.on_ready(event.token().0, now_us);
                }
            }
            if !self.on_control()? || Instant::now() >= self.deadline {
                break;
            }
            self.on_tick()?;
        }
        self.report()
    }

    /// Starts queued connection attempts up to the in-flight cap.
    fn start_connects(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let inflight = self.subs.iter().filter(|s| s.is_attempting()).count();
        let room = self.spec.connect_inflight_max.saturating_sub(inflight);
        for _ in 0..room {
            let Some(i) = self.queue.pop_front() else {
                return;
            };
            if let Err(failure) = self.connect(i) {
                self.on_failure(i, failure);
            }
        }
    }

    /// Opens subscriber `i`'s socket from its source address and queues the request.
    fn connect(&mut self, i: usize) -> Result<(), Failure> {
        let global = self.spec.first + i;
        let source = protocol::source_addr(self.spec.source_base, global, self.spec.per_source);
        let stream = open_socket(source, self.spec.connect).map_err(|_| Failure::Connect)?;
        let sub = &mut self.subs[i];
        let topic = protocol::topic_name(&self.spec.topic_prefix, sub.topic as usize);
        let path = self.spec.path_template.replace("{topic}", &topic);
        let request = crate::http::subscribe_request(&self.spec.host, &path, sub.parser.last_id());
        sub.track.opening(!sub.parser.last_id().is_empty());
        sub.parser = testkit::sse::SseParser::resumed(sub.parser.last_id().to_vec());
        sub.started = Instant::now();
        sub.state = SubState::Connecting {
            stream,
            request,
            sent: 0,
        };
        let Some(stream) = sub.stream() else {
            return Err(Failure::Connect);
        };
        self.poll
            .registry()
            .register(stream, Token(i), Interest::READABLE | Interest::WRITABLE)
            .map_err(|_| Failure::Connect)
    }

    fn on_ready(&mut self, i: usize, now_us: u64) {
        let Some(sub) = self.subs.get_mut(i) else {
            return;
        };
        match sub.on_ready(&mut self.buf, now_us, &mut self.tally) {
            Outcome::Pending => {}
            Outcome::MoreToRead => self.more_to_read.push(i),
            Outcome::Opened => self.on_opened(i),
            Outcome::Failed(failure) => self.on_failure(i, failure),
            Outcome::Ended => {
                self.tally.deliveries.disconnects += 1;
                self.drop_stream(i);
                self.requeue(i);
            }
        }
    }

    fn on_opened(&mut self, i: usize) {
        let now = Instant::now();
        let sub = &mut self.subs[i];
        if sub.opened_once {
            self.tally.deliveries.reconnects += 1;
        } else {
            sub.opened_once = true;
            let us = now.duration_since(sub.started).as_micros() as u64;
            self.connect_latency.saturating_record(us.max(1));
            self.last_open = now;
        }
    }

    /// An attempt failed: first attempts are counted and given up; reconnects retry.
    fn on_failure(&mut self, i: usize, failure: Failure) {
        self.drop_stream(i);
        if self.subs[i].opened_once {
            self.tally.deliveries.reconnect_failures += 1;
            self.requeue(i);
            return;
        }
        let f = &mut self.failures;
        match failure {
            Failure::Connect => f.connect += 1,
            Failure::Timeout => f.timeout += 1,
            Failure::Status(code) => {
                f.status += 1;
                f.status_seen = f.status_seen.max(code);
            }
            Failure::ContentType => f.content_type += 1,
            Failure::Malformed => f.malformed += 1,
            Failure::Closed => f.closed += 1,
        }
        self.failed.push(self.spec.first + i);
    }

    fn requeue(&mut self, i: usize) {
        let sub = &mut self.subs[i];
        if sub.attempts < RECONNECTS_PER_SUB_MAX {
            sub.attempts += 1;
            self.queue.push_back(i);
        }
    }

    fn drop_stream(&mut self, i: usize) {
        let sub = &mut self.subs[i];
        if let Some(stream) = sub.stream() {
            let _ = self.poll.registry().deregister(stream);
        }
        sub.state = SubState::Idle;
    }

    /// Applies pending control words; `false` means quit.
    fn on_control(&mut self) -> io::Result<bool> {
        loop {
            match self.control.try_recv() {
                Ok(Control::Go) => {
                    self.cpu_mark = crate::procfs::own_cpu_seconds();
                    self.waits_mark = crate::procfs::own_waits();
                    // Reads count from here: the connect phase's are not the fan-out's.
                    self.tally.deliveries.reads = 0;
                    self.churning = self.spec.churn_percent > 0.0;
                    self.next_churn = Instant::now() + Duration::from_secs(1);
                    self.published = None;
                }
                Ok(Control::Calm { published }) => {
                    self.churning = false;
                    self.published = Some(published);
                    // Say at once: the drain may already be over.
                    self.send_progress()?;
                }
                Ok(Control::Collect { published }) => {
                    self.churning = false;
                    self.count_tails(published);
                    self.report()?;
                }
                Ok(Control::Quit) | Err(TryRecvError::Disconnected) => return Ok(false),
                Err(TryRecvError::Empty) => return Ok(true),
            }
        }
    }

    fn on_tick(&mut self) -> io::Result<()> {
        let now = Instant::now();
        if self.churning && now >= self.next_churn {
            self.next_churn += Duration::from_secs(1);
            self.churn();
        }
        if !self.ready_sent && self.queue.is_empty() && self.initial_done() {
            self.ready_sent = true;
            self.send_ready()?;
        }
        if now >= self.next_progress {
            self.next_progress = now + PROGRESS_EVERY;
            self.expire_attempts(now);
            self.send_progress()?;
        }
        Ok(())
    }

    fn initial_done(&self) -> bool {
        self.subs
            .iter()
            .all(|s| s.opened_once || !s.is_attempting())
    }

    /// Fails attempts that have waited longer than the connect timeout.
    fn expire_attempts(&mut self, now: Instant) {
        let timeout = Duration::from_millis(self.spec.connect_timeout_ms);
        let expired: Vec<usize> = (0..self.subs.len())
            .filter(|&i| {
                let s = &self.subs[i];
                s.is_attempting() && now.duration_since(s.started) > timeout
            })
            .collect();
        for i in expired {
            self.on_failure(i, Failure::Timeout);
        }
    }

    /// Closes the next `churn_percent` of the open streams and queues them to resume.
    fn churn(&mut self) {
        let n = self.subs.len();
        let quota = ((n as f64) * self.spec.churn_percent / 100.0).round() as usize;
        let mut done = 0;
        for _ in 0..n {
            if done == quota {
                break;
            }
            let i = self.churn_cursor;
            self.churn_cursor = (self.churn_cursor + 1) % n;
            if self.subs[i].is_streaming() {
                self.drop_stream(i);
                self.queue.push_front(i);
                done += 1;
            }
        }
    }

    /// The events of `published` on `sub`'s topic after the last one it received.
    fn owed(&self, sub: &Sub, published: u64) -> u64 {
        crate::report::events_on_topic(published, self.spec.topics, sub.topic as usize)
            .saturating_sub(sub.next_seq)
    }

    /// Counts, for every subscriber that opened, the events of `published` on its topic it
    /// has not received yet: on an open stream (still in flight, or owed) or between
    /// streams.
    fn count_tails(&mut self, published: u64) {
        let mut d = self.tally.deliveries;
        let topics = self.spec.topics;
        for sub in self.subs.iter_mut().filter(|s| s.opened_once) {
            let on_topic = crate::report::events_on_topic(published, topics, sub.topic as usize);
            // A check waiting for an event that was never published: with N events of
            // history the skipped one was still held.
            if sub.track.gap_check.is_some_and(|c| c.seq >= on_topic) {
                sub.track.gap_check = None;
                d.gap_notices_checked += 1;
                d.gap_notices_unfounded += 1;
            }
            let owed = on_topic.saturating_sub(sub.next_seq);
            if sub.is_streaming() {
                d.tail_streaming += owed;
            } else {
                d.tail_reconnecting += owed;
            }
        }
        self.tally.deliveries = d;
    }

    fn send_progress(&self) -> io::Result<()> {
        send(&WorkerMsg::Progress {
            streaming: self.subs.iter().filter(|s| s.is_streaming()).count(),
            failed: self.failed.len(),
            received: self.tally.deliveries.received,
            owed: self.published.map(|published| {
                self.subs
                    .iter()
                    .filter(|s| s.opened_once)
                    .map(|s| self.owed(s, published))
                    .sum()
            }),
        })
    }

    fn send_ready(&self) -> io::Result<()> {
        send(&WorkerMsg::Ready {
            failed: self.failed.clone(),
            failures: self.failures,
            connect_seconds: self.last_open.duration_since(self.started).as_secs_f64(),
            connect_latency: Buckets::of(&self.connect_latency),
        })
    }

    /// Sends the counters since the last report and starts a new interval.
    fn report(&mut self) -> io::Result<()> {
        let cpu = crate::procfs::own_cpu_seconds();
        let waits = crate::procfs::own_waits();
        let msg = WorkerMsg::Report {
            deliveries: self.tally.deliveries,
            latency: Buckets::of(&self.tally.latency),
            cpu_seconds: cpu - self.cpu_mark,
            waits: waits.saturating_sub(self.waits_mark),
        };
        self.cpu_mark = cpu;
        self.waits_mark = waits;
        self.tally.deliveries = Deliveries::default();
        self.tally.latency.reset();
        send(&msg)
    }
}

/// A non-blocking socket bound to `source`, connecting to `to`. No `SO_REUSEADDR`: the
/// kernel then picks a port that no socket on `source` holds, TIME_WAIT ones included, so
/// a SYN never meets a stale connection's state.
fn open_socket(source: std::net::Ipv4Addr, to: SocketAddrV4) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    match socket.connect(&SocketAddr::V4(to).into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Linux's "connect in progress" on a non-blocking socket.
const EINPROGRESS: i32 = 115;

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Writes one message line to stdout and flushes it.
fn send(msg: &WorkerMsg) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, msg).map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}
