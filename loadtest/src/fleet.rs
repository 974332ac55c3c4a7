//! The orchestrator's side of the worker processes: spawn `loadtest worker` children, hand
//! each its spec, read their JSON lines on one channel, and wait for readiness, delivery
//! progress and reports, always against a deadline. Children are killed (by their own pid)
//! if they do not exit when told.

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::latency;
use crate::protocol::{Control, Deliveries, Failures, WorkerMsg, WorkerSpec};

/// How long a worker may take to exit after `quit` before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// What every worker said when its subscriptions were all open or failed.
pub struct Readiness {
    /// Global indices of subscribers that never opened.
    pub failed: Vec<usize>,
    /// Failures by kind.
    pub failures: Failures,
    /// Longest worker's time to open all of its subscriptions.
    pub connect_seconds: f64,
    /// Connect-to-head latency of every opened subscription, microseconds.
    pub connect_latency: Histogram<u64>,
}

/// The summed answer to one `collect`.
pub struct Collected {
    /// Delivery counters.
    pub deliveries: Deliveries,
    /// Delivery latency, microseconds.
    pub latency: Histogram<u64>,
    /// Worker CPU seconds in the interval.
    pub cpu_seconds: f64,
}

/// The running workers.
pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    rx: Receiver<(usize, WorkerMsg)>,
    /// Latest `received` from each worker's progress line.
    received: Vec<u64>,
    /// Latest `streaming` from each worker's progress line.
    streaming: Vec<usize>,
    /// Subscribers each worker opened (its count less its failed initial subscriptions).
    opened: Vec<usize>,
}

impl Fleet {
    /// Starts one worker process per spec, using this executable.
    pub fn spawn(specs: &[WorkerSpec]) -> io::Result<Fleet> {
        let exe = std::env::current_exe()?;
        let (tx, rx) = mpsc::channel();
        let mut fleet = Fleet {
            children: Vec::new(),
            stdins: Vec::new(),
            rx,
            received: vec![0; specs.len()],
            streaming: vec![0; specs.len()],
            opened: specs.iter().map(|spec| spec.count).collect(),
        };
        for (w, spec) in specs.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(io::Error::other("worker pipes missing"));
            };
            fleet.children.push(child);
            let mut line = serde_json::to_vec(spec).map_err(io::Error::other)?;
            line.push(b'\n');
            stdin.write_all(&line)?;
            fleet.stdins.push(stdin);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<WorkerMsg>(&line) {
                        Ok(msg) => {
                            if tx.send((w, msg)).is_err() {
                                break;
                            }
                        }
                        Err(e) => eprintln!("worker {w}: unreadable line ({e}): {line}"),
                    }
                }
            });
        }
        Ok(fleet)
    }

    /// Sends a control word to every worker.
    pub fn tell(&mut self, control: Control) -> io::Result<()> {
        for stdin in &mut self.stdins {
            stdin.write_all(control.line().as_bytes())?;
            stdin.flush()?;
        }
        Ok(())
    }

    /// Next message, or `None` at the deadline or when every worker is gone.
    fn next(&mut self, deadline: Instant) -> Option<(usize, WorkerMsg)> {
        let left = deadline.checked_duration_since(Instant::now())?;
        let (w, msg) = match self.rx.recv_timeout(left) {
            Ok(got) => got,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
        };
        if let WorkerMsg::Progress {
            received,
            streaming,
            ..
        } = &msg
        {
            self.received[w] = *received;
            self.streaming[w] = *streaming;
        }
        Some((w, msg))
    }

    /// Waits until every worker is ready.
    pub fn wait_ready(&mut self, deadline: Instant) -> io::Result<Readiness> {
        let mut ready = Readiness {
            failed: Vec::new(),
            failures: Failures::default(),
            connect_seconds: 0.0,
            connect_latency: latency::histogram(),
        };
        let mut pending = self.children.len();
        while pending > 0 {
            let Some((w, msg)) = self.next(deadline) else {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{pending} worker(s) not ready before the deadline"),
                ));
            };
            if let WorkerMsg::Ready { failed, .. } = &msg {
                self.opened[w] = self.opened[w].saturating_sub(failed.len());
            }
            if let WorkerMsg::Ready {
                failed,
                failures,
                connect_seconds,
                connect_latency,
            } = msg
            {
                ready.failed.extend(failed);
                ready.failures.add(&failures);
                ready.connect_seconds = ready.connect_seconds.max(connect_seconds);
                connect_latency.add_to(&mut ready.connect_latency);
                pending -= 1;
            }
        }
        Ok(ready)
    }

    /// Waits until the workers have received `expected` events in this interval, or no
    /// new event arrived for `quiet` while every opened subscriber was streaming, or
    /// `deadline`. A subscriber between streams (a lagging worker may take seconds to
    /// reconnect) is still owed its replay, so quiet alone does not end the wait then.
    /// Returns when the count was last seen to grow.
    pub fn drain(&mut self, expected: u64, quiet: Duration, deadline: Instant) -> Instant {
        let mut last_growth = Instant::now();
        let mut seen = self.received.iter().sum::<u64>();
        while seen < expected {
            let until = (last_growth + quiet).min(deadline);
            if self.next(until).is_none() {
                let all_streaming = self
                    .streaming
                    .iter()
                    .zip(&self.opened)
                    .all(|(streaming, opened)| streaming >= opened);
                if all_streaming || Instant::now() >= deadline {
                    break;
                }
                // Wait for the reconnects (progress lines come every 200 ms).
                if self.next(deadline).is_none() {
                    break;
                }
            }
            let now_seen = self.received.iter().sum::<u64>();
            if now_seen > seen {
                seen = now_seen;
                last_growth = Instant::now();
            }
        }
        last_growth
    }

    /// Asks every worker for its counters and sums them; `published` is the number of
    /// events the run has published so far.
    pub fn collect(&mut self, published: u64, deadline: Instant) -> io::Result<Collected> {
        self.tell(Control::Collect { published })?;
        let mut out = Collected {
            deliveries: Deliveries::default(),
            latency: latency::histogram(),
            cpu_seconds: 0.0,
        };
        let mut pending = self.children.len();
        while pending > 0 {
            let Some((_, msg)) = self.next(deadline) else {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{pending} worker(s) did not report before the deadline"),
                ));
            };
            if let WorkerMsg::Report {
                deliveries,
                latency,
                cpu_seconds,
            } = msg
            {
                out.deliveries.add(&deliveries);
                latency.add_to(&mut out.latency);
                out.cpu_seconds += cpu_seconds;
                pending -= 1;
            }
        }
        self.received.iter_mut().for_each(|r| *r = 0);
        Ok(out)
    }

    /// Tells the workers to quit and reaps them, killing any that linger.
    pub fn shutdown(mut self) {
        let _ = self.tell(Control::Quit);
        self.stdins.clear();
        let deadline = Instant::now() + EXIT_GRACE;
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
