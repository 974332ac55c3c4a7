//! Child processes for the tests: the `herald` binary Cargo built ([`HeraldProcess`]), the one
//! way to spawn a child and drain its stderr ([`spawn_draining_stderr`], [`PipeLines`]),
//! reading a pipe to its end, and signals by PID.

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// The `herald` binary Cargo built for this test run.
pub const HERALD_BIN: &str = env!("CARGO_BIN_EXE_herald");

/// A running `herald serve --listen 127.0.0.1:0 ...`, found through its
/// `herald listening on http://ADDR` stderr line. Killed (by its PID) when dropped unless it
/// has exited.
pub struct HeraldProcess {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    lines: Receiver<Option<String>>,
    stderr: Vec<String>,
    exited: Option<ExitStatus>,
}

impl HeraldProcess {
    /// Starts `herald serve --listen 127.0.0.1:0 args...` without inherited `HERALD_*`
    /// variables and waits (up to [`DEADLINE`]) for its listening line.
    pub fn spawn(args: &[&str]) -> HeraldProcess {
        let mut command = Command::new(HERALD_BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args);
        for (name, _) in std::env::vars() {
            if name.starts_with("HERALD_") {
                command.env_remove(name);
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {HERALD_BIN}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = sender.send(None);
        });
        let mut process = HeraldProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
            stderr: Vec::new(),
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
                    process.stderr
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
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(Some(line)) => {
                self.stderr.push(line.clone());
                Some(line)
            }
            Ok(None) | Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "herald (pid {}): timed out waiting on its stderr; so far: {:?}",
                self.pid(),
                self.stderr
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
        &self.stderr
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

/// Sends `signal` (e.g. `"TERM"`, `"STOP"`) to a process this test started, with
/// `kill -SIGNAL PID`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("running kill failed: {e}"));
    assert!(status.success(), "kill -{signal} {pid} failed: {status:?}");
}
