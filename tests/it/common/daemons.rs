//! Redis processes that `testkit::redis::RedisServer` does not start: a `redis-server` with
//! any arguments (a TLS port, a replica) and `redis-sentinel`, each a [`Daemon`] in a
//! [`Scratch`] directory, ready once its log shows a line the caller names. Only the
//! processes started here are ever signalled, by their PID; dropping a `Daemon` kills it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's `redis-server` and `redis-sentinel` are (`.ci/deps` installs both).
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// See [`REDIS_SERVER`].
pub const REDIS_SENTINEL: &str = "/usr/bin/redis-sentinel";

/// How long a daemon may take to log that it is ready; only bounds a hang.
pub const DAEMON_START: Duration = Duration::from_secs(20);

/// Pause between two reads of a log that does not show the awaited line yet.
const LOG_POLL: Duration = Duration::from_millis(20);

static SCRATCHES: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system's temp directory, removed when dropped.
pub struct Scratch {
    /// The directory.
    pub dir: PathBuf,
}

impl Scratch {
    /// A new empty directory labelled `label`.
    pub fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "herald-it-{label}-{}-{}",
            std::process::id(),
            SCRATCHES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    /// `name` inside the directory, as a string for command lines.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fails the test when `bin` is missing, naming the package to install.
pub fn require(bin: &str, package: &str) {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: apt-get install {package} (.ci/deps installs it)"
    );
}

/// One child process logging to `<label>.log` in a scratch directory.
pub struct Daemon {
    child: Option<Child>,
    /// Its log file.
    pub log: PathBuf,
    /// Its label, in failure messages.
    pub label: String,
}

impl Daemon {
    /// Starts `bin args...` in `dir`; its log (which the arguments must direct to
    /// [`Daemon::log_path`]) is read by [`Daemon::wait_log`].
    pub fn spawn(label: &str, bin: &str, args: &[String], dir: &Path) -> Daemon {
        let child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: starting {bin}: {e}"));
        Daemon {
            child: Some(child),
            log: Daemon::log_path(dir, label),
            label: label.to_owned(),
        }
    }

    /// Where a daemon labelled `label` in `dir` logs.
    pub fn log_path(dir: &Path, label: &str) -> PathBuf {
        dir.join(format!("{label}.log"))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log holds `marker` (at most [`DAEMON_START`]); fails the test with
    /// the log otherwise, or if the process exited.
    pub fn wait_log(&mut self, marker: &str) {
        let deadline = Instant::now() + DAEMON_START;
        loop {
            if self.log_text().contains(marker) {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "{} exited with {status}; log:\n{}",
                    self.label,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {marker:?} in its log within {DAEMON_START:?}; log:\n{}",
                self.label,
                self.log_text()
            );
            std::thread::sleep(LOG_POLL);
        }
    }

    /// SIGKILL by PID and reap: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.label, self.log_text());
        }
        self.kill();
    }
}

/// The arguments every private `redis-server` gets: loopback only, nothing on disk, a log
/// file, no daemonizing.
pub fn redis_server_args(dir: &Path, label: &str) -> Vec<String> {
    [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        dir.to_str().unwrap(),
        "--logfile",
        Daemon::log_path(dir, label).to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}
