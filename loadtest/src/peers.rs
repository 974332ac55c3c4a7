//! The servers the `peers` subcommand starts: nginx + nchan from Debian's packages with a
//! private configuration in a temporary directory (loopback port, `worker_processes` as
//! asked, a per-channel message buffer like herald's history), and optionally herald from
//! a given binary. Both run as children of this process and are killed, by their own
//! handles, when dropped.

use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's nchan module lives.
pub const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A server process this tool started.
pub struct Spawned {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its temporary directory, removed on drop (nginx only).
    dir: Option<PathBuf>,
    /// nginx's worker processes, found at start: they outlive a killed master, so drop
    /// stops them too.
    workers: Vec<u32>,
}

impl Spawned {
    /// The process id (for nginx, the master; its workers are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        match &self.dir {
            Some(dir) => {
                stop_child(&mut self.child, STOP_TIMEOUT, |_| nginx_stop(dir));
                kill_nginx_workers(&self.workers);
                let _ = std::fs::remove_dir_all(dir);
            }
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Spawns `command`; when that fails, the error names `program` and the Debian packages
/// that provide it.
pub fn spawn_or_hint(command: &mut Command, program: &str, packages: &str) -> io::Result<Child> {
    command.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{program}: {e} (apt-get install {packages})"),
        )
    })
}

/// Stops a child of ours: if it is still running, `ask` asks it to exit (given its pid)
/// and it gets `timeout` to do so; then it is killed and reaped.
pub fn stop_child(child: &mut Child, timeout: Duration, ask: impl FnOnce(u32)) {
    if matches!(child.try_wait(), Ok(None)) {
        ask(child.id());
        let deadline = Instant::now() + timeout;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Asks the nginx running from `dir` to stop (`nginx -s stop`: the master ends its
/// workers).
fn nginx_stop(dir: &Path) {
    let _ = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-s", "stop"])
        .stderr(Stdio::null())
        .status();
}

/// Ends any nginx worker of ours that outlived its master, by pid.
fn kill_nginx_workers(workers: &[u32]) {
    for &pid in workers {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "nginx" {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

/// How long nginx may take to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The nginx configuration: nchan pub/sub locations on `addr` with `workers` processes.
pub fn nginx_config(dir: &Path, addr: SocketAddr, workers: usize, history: usize) -> String {
    let d = dir.display();
    format!(
        r#"load_module {NCHAN_MODULE};
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 19500;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    nchan_shared_memory_size 512M;
    server {{
        listen {addr} reuseport backlog=4096;
        location ~ ^/sub/([A-Za-z0-9_.:-]+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
            nchan_subscriber_first_message newest;
        }}
        location ~ ^/pub/([A-Za-z0-9_.:-]+)$ {{
            nchan_publisher http;
            nchan_channel_id $1;
            nchan_message_buffer_length {history};
            nchan_message_timeout 1h;
        }}
    }}
}}
"#
    )
}

/// Starts nginx + nchan on a free loopback port.
pub fn start_nchan(workers: usize, history: usize) -> io::Result<Spawned> {
    let dir = std::env::temp_dir().join(format!("loadtest-nchan-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let addr = free_loopback_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_config(&dir, addr, workers, history))?;
    let child = spawn_or_hint(
        Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
        "nginx",
        "nginx-light libnginx-mod-nchan",
    )?;
    let mut spawned = Spawned {
        child,
        addr,
        dir: Some(dir),
        workers: Vec::new(),
    };
    wait_listening(addr)?;
    spawned.workers = wait_children(spawned.pid(), workers)?;
    Ok(spawned)
}

/// Starts herald from `bin` on `127.0.0.1:0` and reads its address from stderr.
pub fn start_herald(bin: &Path, threads: usize, history: usize) -> io::Result<Spawned> {
    start_herald_with(bin, threads, history, &[])
}

/// [`start_herald`] with more `serve` flags (the cluster mode's `--bus redis ...`).
pub fn start_herald_with(
    bin: &Path,
    threads: usize,
    history: usize,
    extra: &[String],
) -> io::Result<Spawned> {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--demo", "false"])
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--history-events")
        .arg(history.to_string())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", bin.display())))?;
    let addr = match child.stderr.take() {
        Some(stderr) => read_listening_line(stderr),
        None => Err(io::Error::other("herald's stderr is not piped")),
    };
    match addr {
        Ok(addr) => Ok(Spawned {
            child,
            addr,
            dir: None,
            workers: Vec::new(),
        }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Reads herald's `herald listening on http://ADDR` line, then keeps draining its stderr
/// in the background so it never blocks on a full pipe.
fn read_listening_line(stderr: impl Read + Send + 'static) -> io::Result<SocketAddr> {
    let mut lines = BufReader::new(stderr);
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            break;
        }
        if let Some(addr) = parse_listening(&line) {
            std::thread::spawn(move || io::copy(&mut lines, &mut io::sink()));
            return Ok(addr);
        }
    }
    Err(io::Error::other(format!(
        "herald did not say where it listens (last line: {line:?})"
    )))
}

/// The address in `herald listening on http://ADDR`.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().split("listening on http://").nth(1)?;
    rest.trim_end_matches('/').parse().ok()
}

/// A loopback port that was free a moment ago.
pub fn free_loopback_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn wait_listening(addr: SocketAddr) -> io::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("nothing listening on {addr}"),
    ))
}

/// Waits for the master's `workers` children and returns their pids.
fn wait_children(pid: u32, workers: usize) -> io::Result<Vec<u32>> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let children = crate::procfs::children(pid);
        if children.len() >= workers {
            return Ok(children);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "nginx workers did not start",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line() {
        assert_eq!(
            parse_listening("herald listening on http://127.0.0.1:4567\n"),
            Some("127.0.0.1:4567".parse().unwrap())
        );
        assert_eq!(parse_listening("something else"), None);
    }

    #[test]
    fn config_mentions_what_matters() {
        let conf = nginx_config(Path::new("/tmp/x"), "127.0.0.1:9".parse().unwrap(), 2, 1000);
        for needle in [
            "worker_processes 2;",
            "listen 127.0.0.1:9 reuseport",
            "nchan_subscriber eventsource;",
            "nchan_message_buffer_length 1000;",
            "nchan_subscriber_first_message newest;",
            "pid /tmp/x/nginx.pid;",
        ] {
            assert!(conf.contains(needle), "{needle} missing from\n{conf}");
        }
    }
}
