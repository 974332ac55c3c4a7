#![allow(clippy::unwrap_used)]
//! The process around the server (issue 10 items 4, 5 and 14): one process per address, the
//! open-file limit raised and reported, and logging that never stops serving.
//!
//! Each binary is started through `sh -c` where a test needs a shell's `ulimit`, found
//! through its `herald listening on http://ADDR` line, and killed by its PID when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

use herald::{Error, Server};

/// A started herald: its stderr up to and including the listening line, and the pipe itself
/// (dropping it closes the read end).
struct Started {
    child: Child,
    addr: SocketAddr,
    lines: Vec<String>,
    stderr: Option<BufReader<ChildStderr>>,
    exited: bool,
}

/// Starts `command` (stderr piped, stdout to null) and reads its stderr on a thread until the
/// listening line, within [`DEADLINE`]; the thread then hands the pipe back. Unlike
/// [`spawn_draining_stderr`], nothing drains it afterwards: these tests close it or let it fill.
fn start_process(mut command: Command) -> Started {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    without_herald_env(&mut command);
    let mut child = command.spawn().unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 => {
                    let done = line.contains("herald listening on http://");
                    lines.push(line.trim_end().to_owned());
                    if done {
                        let _ = sender.send((lines, Some(reader)));
                        return;
                    }
                }
                _ => {
                    let _ = sender.send((lines, None));
                    return;
                }
            }
        }
    });
    let (lines, stderr) = match receiver.recv_timeout(DEADLINE) {
        Ok(got) => got,
        Err(_) => {
            let _ = child.kill();
            panic!("herald did not print its listening line within {DEADLINE:?}");
        }
    };
    let Some(stderr) = stderr else {
        let status = child.wait().unwrap();
        panic!("herald exited with {status:?} before listening; stderr: {lines:?}");
    };
    const MARKER: &str = "herald listening on http://";
    let last = lines.last().unwrap();
    let text = &last[last.find(MARKER).unwrap() + MARKER.len()..];
    let addr = text.trim().trim_end_matches('/').parse().unwrap();
    Started {
        child,
        addr,
        lines,
        stderr: Some(stderr),
        exited: false,
    }
}

impl Started {
    /// Closes herald's stderr: the read end of the pipe goes away, so its next write
    /// fails with `EPIPE`.
    fn close_stderr(&mut self) {
        self.stderr = None;
    }

    /// Sends `signal` (e.g. `"TERM"`) by PID.
    fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Waits up to `within` for the exit.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exited = true;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "herald (pid {}) did not exit within {within:?}",
                self.child.id()
            );
            std::thread::yield_now();
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `herald serve --listen 127.0.0.1:0 args...` run by `sh -c` after `limits` (shell commands
/// such as `ulimit -Sn 1024`).
fn herald_under_shell(limits: &str, args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "{limits} && exec \"$0\" serve --listen 127.0.0.1:0 \"$@\""
        ))
        .arg(HERALD_BIN)
        .args(args);
    command
}

#[test]
fn issue_10_the_library_refuses_an_address_another_server_holds() {
    let first = start(|_| {});
    let taken = first.local_addr();
    let mut config = test_config();
    config.listen = taken;
    match Server::start(config) {
        Err(Error::AddressInUse(addr)) => assert_eq!(addr, taken),
        Err(other) => panic!("expected AddressInUse({taken}), got {other}"),
        Ok(second) => panic!("a second server started on {}", second.local_addr()),
    }
    let mut config = test_config();
    config.publish_listen = Some(taken);
    match Server::start(config) {
        Err(Error::AddressInUse(addr)) => assert_eq!(addr, taken),
        Err(other) => panic!("expected AddressInUse({taken}) for publish_listen, got {other}"),
        Ok(_) => panic!("a publish listener shared {taken}"),
    }
    assert_healthy(taken, "after the second server was refused");
}

/// Hard limit the test sets for the child; the soft one starts at the common 1024.
const HARD_NOFILE: u64 = 4096;

#[test]
fn issue_10_the_soft_open_file_limit_is_raised_to_the_hard_one_and_the_ceiling_logged() {
    let herald = start_process(herald_under_shell(
        &format!("ulimit -Sn 1024 && ulimit -Hn {HARD_NOFILE}"),
        &["--log-level", "info"],
    ));
    let ceiling = HARD_NOFILE - herald::config::FDS_RESERVED as u64;
    let scrape = scrape(herald.addr);
    assert_eq!(
        scrape.value("herald_connections_max"),
        ceiling as f64,
        "the connection ceiling under a soft limit of 1024 and a hard one of {HARD_NOFILE}"
    );
    let logged = herald.lines.iter().find(|line| {
        line.contains("level=info") && line.contains(&format!("connection ceiling {ceiling}"))
    });
    assert!(
        logged.is_some(),
        "no info line giving the connection ceiling {ceiling}; stderr: {:?}",
        herald.lines
    );
}

/// Opens a stream and drops it, then sends a request herald refuses: with `--log-level
/// trace` each of these is a log line.
fn make_it_log(addr: SocketAddr) {
    let subscriber = subscribe(addr, &["logs"]);
    drop(subscriber);
    let response = get(addr, "/nowhere");
    assert_eq!(response.status, 404, "{}", response.summary());
}

/// How long SIGTERM may take to stop herald: it only bounds a hang (the shutdown timeout is
/// 5 s by default).
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn issue_10_a_closed_stderr_drops_log_lines_counts_them_and_sigterm_still_stops_herald() {
    let mut herald = start_process(herald_serve(&["--log-level", "trace", "--threads", "2"]));
    let addr = herald.addr;
    herald.close_stderr();
    // Enough lines on both loops that some are written (and fail) before the checks.
    for _ in 0..20 {
        make_it_log(addr);
    }
    let mut conn = Conn::connect(addr);
    scrape_until(
        &mut conn,
        "log lines dropped on a closed stderr",
        |scrape| scrape.get("herald_log_lines_dropped_total").unwrap_or(0.0) > 0.0,
    );
    make_it_log(addr);
    assert_healthy(addr, "after logging into a closed stderr");
    let id = publish_form(addr, &[("topic", "alive"), ("data", "yes")]);
    split_id(&id);
    herald.signal("TERM");
    let status = herald.wait_exit(EXIT_DEADLINE);
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
}

#[test]
fn issue_10_sigterm_stops_herald_after_its_stderr_reader_went_away() {
    let mut herald = start_process(herald_serve(&[]));
    herald.close_stderr();
    herald.signal("TERM");
    let status = herald.wait_exit(EXIT_DEADLINE);
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
}

/// Requests made at most while filling a stderr nobody reads: a pipe holds 64 KiB and the
/// log queue 4,096 lines, a few hundred thousand bytes of trace lines in all; each round
/// logs several lines.
const ROUNDS_TO_FILL_MAX: usize = 20_000;

#[test]
fn issue_10_a_stderr_nobody_reads_never_blocks_serving_and_drops_are_counted() {
    let mut herald = start_process(herald_serve(&["--log-level", "trace", "--threads", "1"]));
    let addr = herald.addr;
    let mut conn = Conn::connect(addr);
    let mut filled = false;
    for round in 1..=ROUNDS_TO_FILL_MAX {
        make_it_log(addr);
        if round % 200 == 0
            && scrape_on(&mut conn)
                .get("herald_log_lines_dropped_total")
                .unwrap_or(0.0)
                > 0.0
        {
            filled = true;
            break;
        }
    }
    assert!(
        filled,
        "no log line dropped after {ROUNDS_TO_FILL_MAX} rounds into an unread stderr"
    );
    assert_healthy(addr, "with its stderr full");
    herald.signal("TERM");
    let status = herald.wait_exit(EXIT_DEADLINE);
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
}
