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
    /// Each worker's blocking waits in the interval, by worker index (see
    /// `WorkerMsg::Report`).
    pub waits: Vec<u64>,
    /// Each worker's own counters and latency, by worker index (a cluster's worker `w`
    /// subscribes on node `w % nodes`, so these give each node's share).
    pub by_worker: Vec<(Deliveries, Histogram<u64>)>,
}

/// The running workers.
pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    rx: Receiver<(usize, WorkerMsg)>,
    /// Latest `received` from each worker's progress line.
    received: Vec<u64>,
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
        if let WorkerMsg::Progress { received, .. } = &msg {
            self.received[w] = *received;
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
            let Some((_, msg)) = self.next(deadline) else {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{pending} worker(s) not ready before the deadline"),
                ));
            };
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

    /// Waits, after `calm`, until the [`DrainRule`] says the drain is over or `deadline`.
    /// Returns when deliveries were last seen to grow.
    pub fn drain(&mut self, quiet: Duration, deadline: Instant) -> Instant {
        let seen = self.received.iter().sum::<u64>();
        let mut rule = DrainRule::new(self.children.len(), quiet, seen, Instant::now());
        while let Some((w, msg)) = self.next(deadline) {
            if let WorkerMsg::Progress {
                owed: Some(owed), ..
            } = msg
            {
                let seen = self.received.iter().sum::<u64>();
                if rule.on_progress(w, owed, seen, Instant::now()) {
                    break;
                }
            }
        }
        rule.last_growth
    }

    /// Asks every worker for its counters and sums them; `published` is the number of
    /// events the run has published so far.
    pub fn collect(&mut self, published: u64, deadline: Instant) -> io::Result<Collected> {
        self.tell(Control::Collect { published })?;
        let mut out = Collected {
            deliveries: Deliveries::default(),
            latency: latency::histogram(),
            cpu_seconds: 0.0,
            waits: vec![0; self.children.len()],
            by_worker: (0..self.children.len())
                .map(|_| (Deliveries::default(), latency::histogram()))
                .collect(),
        };
        let mut pending = self.children.len();
        while pending > 0 {
            let Some((w, msg)) = self.next(deadline) else {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{pending} worker(s) did not report before the deadline"),
                ));
            };
            if let WorkerMsg::Report {
                deliveries,
                latency,
                cpu_seconds,
                waits,
            } = msg
            {
                out.deliveries.add(&deliveries);
                latency.add_to(&mut out.latency);
                out.cpu_seconds += cpu_seconds;
                if let Some(w) = out.waits.get_mut(w) {
                    *w += waits;
                }
                if let Some((d, h)) = out.by_worker.get_mut(w) {
                    d.add(&deliveries);
                    latency.add_to(h);
                }
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

/// When the drain after publishing is over. Sans-io (progress lines and times in), so the
/// rule is tested apart from the worker processes.
///
/// The drain is over when nothing is owed: every worker's latest progress line (sent after
/// `calm`) says each of its subscribers received the last published event of its topic.
/// That is exact whatever the client's lag, the history's depth or the gaps: a subscriber
/// between streams, or a worker too busy to read its sockets, is still owed its events and
/// the wait goes on. It is also over when nothing moved (no delivery, no change in what is
/// owed) for `quiet` according to a progress line that every worker sent at least `quiet`
/// after the last movement: a server that loses events does not hold the run forever,
/// while a stalled worker, whose silence says nothing, cannot end it (its first line after
/// a silence longer than `quiet` starts the quiet period again).
pub struct DrainRule {
    quiet: Duration,
    /// Each worker's owed count from its latest line after `calm`.
    owed: Vec<Option<u64>>,
    /// When each worker's latest line after `calm` arrived.
    spoke: Vec<Option<Instant>>,
    /// Deliveries seen so far.
    seen: u64,
    last_move: Instant,
    /// When deliveries were last seen to grow.
    pub last_growth: Instant,
}

impl DrainRule {
    /// The rule for `workers` workers, starting at `now` with `seen` deliveries counted.
    pub fn new(workers: usize, quiet: Duration, seen: u64, now: Instant) -> DrainRule {
        DrainRule {
            quiet,
            owed: vec![None; workers],
            spoke: vec![None; workers],
            seen,
            last_move: now,
            last_growth: now,
        }
    }

    /// Worker `w` says `owed` at `now`, with `seen` deliveries counted over all workers.
    /// Returns whether the drain is over.
    pub fn on_progress(&mut self, w: usize, owed: u64, seen: u64, now: Instant) -> bool {
        let (Some(slot), Some(spoke)) = (self.owed.get_mut(w), self.spoke.get_mut(w)) else {
            return false;
        };
        // A worker silent for longer than `quiet` was not seen to be still: what it says now
        // starts the quiet period again.
        let was_silent = spoke.is_some_and(|before| now.duration_since(before) > self.quiet);
        if *slot != Some(owed) || was_silent {
            *slot = Some(owed);
            self.last_move = now;
        }
        *spoke = Some(now);
        if seen != self.seen {
            self.seen = seen;
            self.last_growth = now;
            self.last_move = now;
        }
        if self.owed.iter().all(|o| *o == Some(0)) {
            return true;
        }
        let settled = self.last_move + self.quiet;
        self.spoke
            .iter()
            .all(|at| at.is_some_and(|at| at >= settled))
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

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_secs(2);

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    /// The drain ends the moment nothing is owed, however little time passed.
    #[test]
    fn over_when_nothing_is_owed() {
        let t = Instant::now();
        let mut rule = DrainRule::new(2, QUIET, 0, t);
        assert!(!rule.on_progress(0, 0, 10, at(t, 10)));
        assert!(!rule.on_progress(1, 3, 10, at(t, 20)));
        assert!(rule.on_progress(1, 0, 13, at(t, 30)));
        assert_eq!(rule.last_growth, at(t, 30));
    }

    /// A worker that stops talking (busy reading a backlog, or starved of CPU) while it is
    /// owed events never lets the quiet period end the drain, however long it is silent:
    /// the collection would count what sits in its socket buffers as missing.
    #[test]
    fn a_silent_worker_does_not_end_it() {
        let t = Instant::now();
        let mut rule = DrainRule::new(2, QUIET, 0, t);
        assert!(!rule.on_progress(1, 500, 0, at(t, 0)));
        for ms in (200..20_000).step_by(200) {
            assert!(!rule.on_progress(0, 0, 0, at(t, ms)), "{ms} ms");
        }
        // It speaks again, still owed and still not moving: now quiet counts from here.
        assert!(!rule.on_progress(1, 500, 0, at(t, 20_000)));
        assert!(!rule.on_progress(1, 500, 0, at(t, 21_000)));
        assert!(!rule.on_progress(0, 0, 0, at(t, 21_900)));
    }

    /// Owed events that never come (a server that loses them) end the drain once every
    /// worker has reported, `quiet` after the last movement, that nothing moved.
    #[test]
    fn nothing_moving_for_quiet_ends_it() {
        let t = Instant::now();
        let mut rule = DrainRule::new(2, QUIET, 0, t);
        assert!(!rule.on_progress(0, 7, 0, at(t, 100)));
        assert!(!rule.on_progress(1, 0, 0, at(t, 150)));
        assert!(!rule.on_progress(0, 5, 2, at(t, 300))); // A delivery: quiet restarts.
        for ms in (500..2_300).step_by(200) {
            assert!(!rule.on_progress(0, 5, 2, at(t, ms)), "{ms} ms");
            assert!(!rule.on_progress(1, 0, 2, at(t, ms + 50)), "{ms} ms");
        }
        assert!(!rule.on_progress(0, 5, 2, at(t, 2_300))); // Worker 1 last spoke at 2,150.
        assert!(rule.on_progress(1, 0, 2, at(t, 2_350)));
        assert_eq!(rule.last_growth, at(t, 300));
    }
}
