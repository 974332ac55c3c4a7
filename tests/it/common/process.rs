//! Child processes for the tests: the `herald` binary Cargo built ([`HeraldProcess`]), the one
//! way to spawn a child and drain its stderr ([`spawn_draining_stderr`], [`PipeLines`]),
//! reading a pipe to its end, and signals by PID.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::DEADLINE;

// ---------------------------------------------------------------------------------------------
// Children and their pipes
// ---------------------------------------------------------------------------------------------

/// What [`PipeLines::next_before`] found.
#[derive(Debug)]
pub enum Next {
    /// One line, without its line end (also kept in [`PipeLines::seen`]).
    Line(String),
    /// The pipe is closed: every holder of its write end (the child and anything it started)
    /// has exited, or it sent bytes that are not UTF-8.
    Closed,
    /// The deadline passed first.
    TimedOut,
}

/// A child's pipe read line by line on its own thread for as long as the child writes, so a
/// chatty child never blocks on a full pipe; the lines read so far are kept for failure
/// messages.
pub struct PipeLines {
    receiver: Receiver<Option<String>>,
    seen: Vec<String>,
}

impl PipeLines {
    /// Starts draining `pipe` on a thread.
    pub fn new(pipe: impl Read + Send + 'static) -> PipeLines {
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if sender.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = sender.send(None);
        });
        PipeLines {
            receiver,
            seen: Vec::new(),
        }
    }

    /// The next line, waiting at most until `deadline`.
    pub fn next_before(&mut self, deadline: Instant) -> Next {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.receiver.recv_timeout(left) {
            Ok(Some(line)) => {
                self.seen.push(line.clone());
                Next::Line(line)
            }
            Ok(None) | Err(RecvTimeoutError::Disconnected) => Next::Closed,
            Err(RecvTimeoutError::Timeout) => Next::TimedOut,
        }
    }

    /// The lines read so far, in order.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }
}

/// Spawns `command` with stdin and stdout on `/dev/null` and its stderr drained into a
/// [`PipeLines`]; fails the test if it cannot start.
pub fn spawn_draining_stderr(command: &mut Command) -> (Child, PipeLines) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", command.get_program().to_string_lossy()));
    let stderr = PipeLines::new(child.stderr.take().unwrap());
    (child, stderr)
}

/// Reads a pipe to its end on a thread; the receiver gets the whole text (lossily decoded).
pub fn read_all_on_thread(mut pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = sender.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    receiver
}

/// Removes every inherited `HERALD_*` variable from `command`, so a developer's environment
/// never changes what a test starts.
pub fn without_herald_env(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars() {
        if name.starts_with("HERALD_") {
            command.env_remove(name);
        }
    }
    command
}

/// Sends `signal` (e.g. `"TERM"`, `"STOP"`) to a process this test started, with
/// `kill -SIGNAL PID`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("running kill failed: {e}"));
    assert!(status.success(), "kill -{signal} {pid} failed: {status:?}");
}

// ---------------------------------------------------------------------------------------------
// The herald binary
// ---------------------------------------------------------------------------------------------

/// The `herald` binary Cargo built for this test run.
pub const HERALD_BIN: &str = env!("CARGO_BIN_EXE_herald");

/// `herald serve --listen 127.0.0.1:0 args...` without inherited `HERALD_*` variables.
pub fn herald_serve(args: &[&str]) -> Command {
    let mut command = Command::new(HERALD_BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args);
    without_herald_env(&mut command);
    command
}

/// A running `herald serve --listen 127.0.0.1:0 ...`, found through its
/// `herald listening on http://ADDR` stderr line. Killed (by its PID) when dropped unless it
/// has exited.
pub struct HeraldProcess {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    stderr: PipeLines,
    exited: Option<ExitStatus>,
}

impl HeraldProcess {
    /// Starts `herald serve --listen 127.0.0.1:0 args...` without inherited `HERALD_*`
    /// variables and waits (up to [`DEADLINE`]) for its listening line.
    pub fn spawn(args: &[&str]) -> HeraldProcess {
        let (child, stderr) = spawn_draining_stderr(&mut herald_serve(args));
        let mut process = HeraldProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
            exited: None,
        };
        const MARKER: &str = "herald listening on http://";
        let deadline = Instant::now() + DEADLINE;
        loop {
            let Some(line) = process.next_line(deadline) else {
                let status = process.child.wait().unwrap();
                process.exited = Some(status);
                panic!(
                    "herald {args:?} exited with {status:?} before listening; stderr: {:?}",
                    process.stderr.seen()
                );
            };
            if let Some(at) = line.find(MARKER) {
                let text = line[at + MARKER.len()..].trim().trim_end_matches('/');
                process.addr = text
                    .parse()
                    .unwrap_or_else(|_| panic!("bad address in stderr line {line:?}"));
                return process;
            }
        }
    }

    /// The next stderr line, or `None` once stderr is closed; fails at `deadline`.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        match self.stderr.next_before(deadline) {
            Next::Line(line) => Some(line),
            Next::Closed => None,
            Next::TimedOut => panic!(
                "herald (pid {}): timed out waiting on its stderr; so far: {:?}",
                self.pid(),
                self.stderr.seen()
            ),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `"TERM"`) with `kill -SIGNAL PID`.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Waits (up to `within`) for the process to exit: its stderr closes when it does.
    /// Returns its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        while self.next_line(deadline).is_some() {}
        let status = self.child.wait().unwrap();
        self.exited = Some(status);
        status
    }

    /// The stderr lines read so far (only read while starting and in
    /// [`HeraldProcess::wait_exit`]).
    pub fn stderr_lines(&self) -> &[String] {
        self.stderr.seen()
    }

    /// A `kB` field of `/proc/PID/status` (e.g. `VmRSS`, `VmHWM`), in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let value = status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in {path}:\n{status}"));
        value
            .trim()
            .strip_suffix(" kB")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("bad {field} line in {path}: {value:?}"))
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
