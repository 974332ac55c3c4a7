//! Publishing: events paced by an absolute [`Schedule`] over one or more keep-alive HTTP/1.1
//! connections. Each connection pipelines its requests (a writer thread sends on schedule,
//! a reader thread consumes the answers), so the publish rate is open-loop: a slow server
//! does not slow the schedule down until [`INFLIGHT_MAX`] requests are outstanding.
//!
//! Event `k` goes to topic `k % topics` with per-topic sequence number `k / topics`;
//! topic `t` always uses connection `t % connections`, so each topic's events reach the
//! server in sequence order. With several endpoints (the nodes of a cluster), connection
//! `c` publishes through endpoint `c % endpoints`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::http::{self, ChunkedDecoder};
use crate::payload;
use crate::protocol::topic_name;
use crate::schedule::{self, Schedule};
use crate::target::Endpoint;

/// Requests outstanding on one connection before the writer waits for answers. Past this
/// the server is not keeping up; the lateness shows in `late_max_ms`.
pub const INFLIGHT_MAX: u64 = 4_096;

/// Most publish connections.
pub const CONNECTIONS_MAX: usize = 64;

/// One publishing phase.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Where to publish: connection `c` uses `endpoints[c % endpoints.len()]` (at least one).
    pub endpoints: Vec<Endpoint>,
    /// Topic names are `{topic_prefix}{n}`.
    pub topic_prefix: String,
    /// Topics in the run.
    pub topics: usize,
    /// Index of the first event (events continue across saturation steps).
    pub first_event: u64,
    /// Events in this phase.
    pub events: u64,
    /// Events per second.
    pub rate: f64,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Keep-alive connections.
    pub connections: usize,
    /// Everything stops by then.
    pub deadline: Instant,
}

/// What a publishing phase did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PublishStats {
    /// Requests written.
    pub sent: u64,
    /// 2xx answers.
    pub accepted: u64,
    /// Other answers.
    pub refused: u64,
    /// Connections that broke or timed out.
    pub io_errors: u64,
    /// Latest a request left behind its due time, in milliseconds.
    pub late_max_ms: f64,
    /// Seconds from the first due time to the last answer.
    pub elapsed_s: f64,
}

impl PublishStats {
    fn add(&mut self, o: &PublishStats) {
        self.sent += o.sent;
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.io_errors += o.io_errors;
        self.late_max_ms = self.late_max_ms.max(o.late_max_ms);
        self.elapsed_s = self.elapsed_s.max(o.elapsed_s);
    }

    /// Requests per second actually achieved.
    pub fn achieved_rate(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.sent as f64 / self.elapsed_s
        } else {
            0.0
        }
    }
}

/// The events of `plan` that connection `c` carries.
fn events_of(plan: &Plan, c: usize) -> impl Iterator<Item = u64> + '_ {
    let (topics, conns) = (plan.topics.max(1) as u64, plan.connections.max(1) as u64);
    (plan.first_event..plan.first_event + plan.events)
        .filter(move |k| (k % topics) % conns == c as u64)
}

/// Publishes the whole plan; returns when every answer is in or the deadline passes.
pub fn run(plan: &Plan) -> PublishStats {
    let connections = plan
        .connections
        .clamp(1, CONNECTIONS_MAX)
        .min(plan.topics.max(1));
    let plan = Plan {
        connections,
        ..plan.clone()
    };
    let start = Instant::now() + Duration::from_millis(20);
    let mut total = PublishStats::default();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|c| {
                let plan = &plan;
                scope.spawn(move || run_connection(plan, c, start))
            })
            .collect();
        for handle in handles {
            if let Ok(stats) = handle.join() {
                total.add(&stats);
            }
        }
    });
    total
}

/// One connection: a writer on schedule, a reader for the answers.
fn run_connection(plan: &Plan, c: usize, start: Instant) -> PublishStats {
    let expected = events_of(plan, c).count() as u64;
    let stream = match endpoint_of(plan, c).map(connect) {
        Some(Ok(stream)) => stream,
        _ => {
            return PublishStats {
                io_errors: 1,
                ..PublishStats::default()
            }
        }
    };
    let answered = Arc::new(AtomicU64::new(0));
    let reader_stream = stream.try_clone();
    std::thread::scope(|scope| {
        let reader = reader_stream.ok().map(|s| {
            let answered = Arc::clone(&answered);
            scope.spawn(move || read_answers(s, expected, &answered, plan.deadline))
        });
        let mut stats = write_requests(stream, plan, c, start, &answered);
        match reader.map(|r| r.join()) {
            Some(Ok(answers)) => {
                stats.accepted = answers.accepted;
                stats.refused = answers.refused;
                stats.io_errors += answers.io_errors;
            }
            _ => stats.io_errors += 1,
        }
        stats.elapsed_s = start.elapsed().as_secs_f64();
        stats
    })
}

/// The endpoint connection `c` publishes through.
fn endpoint_of(plan: &Plan, c: usize) -> Option<&Endpoint> {
    let n = plan.endpoints.len();
    (n > 0).then(|| &plan.endpoints[c % n])
}

fn connect(endpoint: &Endpoint) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&endpoint.addr.into(), Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Writes this connection's requests at their due times.
fn write_requests(
    mut stream: TcpStream,
    plan: &Plan,
    c: usize,
    start: Instant,
    answered: &AtomicU64,
) -> PublishStats {
    let schedule = Schedule::new(plan.rate);
    let mut stats = PublishStats::default();
    let Some(endpoint) = endpoint_of(plan, c) else {
        return stats;
    };
    let (mut body, mut request) = (Vec::new(), Vec::new());
    let topics = plan.topics.max(1) as u64;
    for k in events_of(plan, c) {
        let due = start + schedule.due(k - plan.first_event);
        if due >= plan.deadline {
            return stats;
        }
        schedule::wait_until(due);
        while stats.sent - answered.load(Ordering::Acquire) >= INFLIGHT_MAX {
            if Instant::now() >= plan.deadline {
                return stats;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let late = Instant::now().saturating_duration_since(due);
        stats.late_max_ms = stats.late_max_ms.max(late.as_secs_f64() * 1000.0);
        let path = endpoint.path(&topic_name(&plan.topic_prefix, (k % topics) as usize));
        payload::encode(
            &mut body,
            k / topics,
            payload::unix_nanos(),
            plan.payload_bytes,
        );
        request.clear();
        http::publish_request(&mut request, &endpoint.host, &path, &body);
        if stream.write_all(&request).is_err() || Instant::now() >= plan.deadline {
            stats.io_errors += 1;
            return stats;
        }
        stats.sent += 1;
    }
    stats
}

/// Answers read on one connection.
#[derive(Default)]
struct Answers {
    accepted: u64,
    refused: u64,
    io_errors: u64,
}

/// Largest answer (head and body) accepted on a publish connection; a publish answer is a
/// few hundred bytes, so anything bigger is a broken or hostile server, not a slow one.
const ANSWER_BYTES_MAX: usize = 1024 * 1024;

/// Bytes asked of the socket per read.
const READ_BYTES: usize = 64 * 1024;

/// Reads `expected` pipelined answers (or until the deadline or an error). An answer that
/// would need more than [`ANSWER_BYTES_MAX`] buffered bytes counts as an I/O error.
fn read_answers(
    mut stream: impl Read,
    expected: u64,
    answered: &AtomicU64,
    deadline: Instant,
) -> Answers {
    let mut answers = Answers::default();
    // `buf[at..]` is not parsed yet; the answers before `at` are counted, and dropped
    // once per read rather than once per answer.
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BYTES);
    let mut at = 0;
    let mut scratch = vec![0u8; READ_BYTES];
    while answers.accepted + answers.refused < expected {
        match take_answer(&buf[at..]) {
            Ok(Some((status, used))) => {
                at += used;
                if (200..300).contains(&status) {
                    answers.accepted += 1;
                } else {
                    answers.refused += 1;
                }
                answered.fetch_add(1, Ordering::AcqRel);
                continue;
            }
            // What is left is the start of one answer; past the cap it never ends here.
            Ok(None) if buf.len() - at > ANSWER_BYTES_MAX => {
                answers.io_errors += 1;
                break;
            }
            Ok(None) => {}
            Err(()) => {
                answers.io_errors += 1;
                break;
            }
        }
        if Instant::now() >= deadline {
            answers.io_errors += 1;
            break;
        }
        buf.drain(..at);
        at = 0;
        match stream.read(&mut scratch) {
            Ok(0) => {
                answers.io_errors += 1;
                break;
            }
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                answers.io_errors += 1;
                break;
            }
        }
    }
    answers
}

/// Parses one complete answer from the front of `buf`: its status and how many bytes it
/// took, `Ok(None)` when more bytes are needed, `Err` for a malformed answer or one that
/// announces a body over [`ANSWER_BYTES_MAX`].
fn take_answer(buf: &[u8]) -> Result<Option<(u16, usize)>, ()> {
    let Some(head) = http::parse_head(buf).map_err(|_| ())? else {
        return Ok(None);
    };
    let body = &buf[head.len..];
    let used = if head.chunked {
        let mut decoder = ChunkedDecoder::default();
        let used = decoder.feed(body, &mut |_| {}).map_err(|_| ())?;
        if !decoder.is_done() {
            return Ok(None);
        }
        used
    } else {
        let length = head.content_length.unwrap_or(0);
        if length > ANSWER_BYTES_MAX - head.len {
            return Err(());
        }
        if body.len() < length {
            return Ok(None);
        }
        length
    };
    Ok(Some((head.status, head.len + used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(topics: usize, connections: usize) -> Plan {
        Plan {
            endpoints: vec![
                Endpoint::parse("http://127.0.0.1:1/p?topic={topic}").unwrap(),
                Endpoint::parse("http://127.0.0.1:2/p?topic={topic}").unwrap(),
            ],
            topic_prefix: "t".into(),
            topics,
            first_event: 10,
            events: 12,
            rate: 100.0,
            payload_bytes: 64,
            connections,
            deadline: Instant::now(),
        }
    }

    #[test]
    fn topics_stick_to_one_connection() {
        let p = plan(4, 2);
        let c0: Vec<u64> = events_of(&p, 0).collect();
        let c1: Vec<u64> = events_of(&p, 1).collect();
        assert_eq!(c0, vec![10, 12, 14, 16, 18, 20]);
        assert_eq!(c1, vec![11, 13, 15, 17, 19, 21]);
        let single = plan(1, 1);
        assert_eq!(events_of(&single, 0).count(), 12);
        let ports: Vec<u16> = (0..3)
            .map(|c| endpoint_of(&p, c).unwrap().addr.port())
            .collect();
        assert_eq!(ports, vec![1, 2, 1]);
        let none = Plan {
            endpoints: Vec::new(),
            ..p
        };
        assert!(endpoint_of(&none, 0).is_none());
    }

    #[test]
    fn pipelined_answers() {
        let mut buf = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n1-1HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 503 X\r\nContent-Length: 9\r\n\r\nbu".to_vec();
        let mut at = 0;
        let mut take = |buf: &[u8]| {
            let answer = take_answer(&buf[at..]);
            if let Ok(Some((_, used))) = answer {
                at += used;
            }
            answer.map(|a| a.map(|(status, _)| status))
        };
        assert_eq!(take(&buf), Ok(Some(200)));
        assert_eq!(take(&buf), Ok(Some(201)));
        assert_eq!(take(&buf), Ok(None));
        buf.extend_from_slice(b"sy busy");
        assert_eq!(take(&buf), Ok(Some(503)));
        assert_eq!(at, buf.len());
        assert_eq!(take_answer(b""), Ok(None));
    }

    #[test]
    fn read_answers_counts_pipelined_answers_split_anywhere() {
        let one = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 429 No\r\nContent-Length: 0\r\n\r\n";
        let bytes: Vec<u8> = one.repeat(3_000);
        // A reader that hands out 7 bytes at a time, so answers straddle reads.
        struct Trickle(Vec<u8>, usize);
        impl Read for Trickle {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = 7.min(out.len()).min(self.0.len() - self.1);
                out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let answered = AtomicU64::new(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        let answers = read_answers(Trickle(bytes, 0), 6_000, &answered, deadline);
        assert_eq!(
            (answers.accepted, answers.refused, answers.io_errors),
            (3_000, 3_000, 0)
        );
        assert_eq!(answered.load(Ordering::Acquire), 6_000);
    }

    /// A server that answers with an endless chunked body, counting what it sent.
    struct EndlessChunked {
        head: bool,
        sent: usize,
    }

    impl Read for EndlessChunked {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let piece: Vec<u8> = if self.head {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()
            } else {
                let mut chunk = b"1000\r\n".to_vec();
                chunk.resize(chunk.len() + 0x1000, b'x');
                chunk.extend_from_slice(b"\r\n");
                chunk
            };
            self.head = false;
            let n = piece.len().min(out.len());
            out[..n].copy_from_slice(&piece[..n]);
            self.sent += n;
            Ok(n)
        }
    }

    #[test]
    fn oversized_answers_fail_instead_of_growing() {
        let answered = AtomicU64::new(0);
        let deadline = Instant::now() + Duration::from_secs(30);

        // An endless chunked body: the reader gives up just past the cap.
        let mut server = EndlessChunked {
            head: true,
            sent: 0,
        };
        let answers = read_answers(&mut server, 1, &answered, deadline);
        assert_eq!(
            (answers.accepted, answers.refused, answers.io_errors),
            (0, 0, 1)
        );
        assert!(server.sent > ANSWER_BYTES_MAX, "{}", server.sent);
        assert!(
            server.sent <= ANSWER_BYTES_MAX + 2 * READ_BYTES,
            "{}",
            server.sent
        );

        // A huge Content-Length over a real socket: refused from the head alone.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n");
            let filler = vec![b'x'; 64 * 1024];
            // Until the client hangs up (or far more than the cap).
            for _ in 0..1_000 {
                if conn.write_all(&filler).is_err() {
                    break;
                }
            }
        });
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let answers = read_answers(stream, 1, &answered, deadline);
        assert_eq!(
            (answers.accepted, answers.refused, answers.io_errors),
            (0, 0, 1)
        );
        assert!(Instant::now() < deadline);
        server.join().unwrap();
        assert_eq!(answered.load(Ordering::Acquire), 0);
        assert_eq!(
            take_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1048577\r\n\r\n"),
            Err(())
        );
    }
}
