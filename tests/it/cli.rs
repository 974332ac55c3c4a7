#![allow(clippy::unwrap_used)]
//! The `herald` binary: `serve --help` lists every flag; an invalid flag, environment
//! variable or TOML file stops start-up with exit code 2 and one stderr line naming the
//! setting; flags, `HERALD_*` variables and a TOML file are honoured, with precedence
//! flag > env > file. Servers run on `127.0.0.1:0` and are found through their
//! `herald listening on http://ADDR` line; each child is killed by its PID at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use crate::common::*;

/// Every `serve` flag the spec lists.
const FLAGS: [&str; 17] = [
    "--listen",
    "--threads",
    "--history-events",
    "--history-bytes",
    "--history-total-bytes",
    "--cors-origin",
    "--publish-token",
    "--publish-listen",
    "--retry-ms",
    "--gap-event",
    "--max-topics-per-subscription",
    "--max-topic-bytes",
    "--max-publish-bytes",
    "--max-lag-bytes",
    "--max-head-bytes",
    "--demo",
    "--config",
];

/// A `herald` command with no inherited `HERALD_*` variables, plus `env`.
fn herald(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(HERALD_BIN);
    command.args(args);
    without_herald_env(&mut command);
    command.envs(env.iter().copied());
    command.stdin(Stdio::null());
    command
}

/// A child process that is killed (by its PID) and reaped when dropped.
struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to its exit within [`DEADLINE`]; returns its status, stdout and stderr.
fn run(mut command: Command, what: &str) -> (ExitStatus, String, String) {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut running = Running {
        child: command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {HERALD_BIN}: {e}")),
    };
    let stdout = read_all_on_thread(running.child.stdout.take().unwrap());
    let stderr = read_all_on_thread(running.child.stderr.take().unwrap());
    let deadline = Instant::now() + DEADLINE;
    let collect = |receiver: Receiver<String>, name: &str| {
        let left = deadline.saturating_duration_since(Instant::now());
        receiver.recv_timeout(left).unwrap_or_else(|_| {
            panic!("{what}: herald did not exit (its {name} stayed open) within {DEADLINE:?}")
        })
    };
    let stderr_text = collect(stderr, "stderr");
    let stdout_text = collect(stdout, "stdout");
    let status = running.child.wait().unwrap();
    (status, stdout_text, stderr_text)
}

/// Asserts `herald args` (with `env`) refuses to start: exit code 2 and exactly one stderr
/// line that names `setting` (in `snake_case` or `kebab-case`).
fn assert_refused(args: &[&str], env: &[(&str, &str)], setting: &str) {
    let what = format!("herald {} with env {env:?}", args.join(" "));
    let (status, _stdout, stderr) = run(herald(args, env), &what);
    assert_eq!(
        status.code(),
        Some(2),
        "{what}: exit status {status:?}; stderr: {stderr:?}"
    );
    let body = stderr.strip_suffix('\n').unwrap_or(&stderr);
    assert!(
        !body.trim().is_empty() && !body.contains('\n'),
        "{what}: stderr must be exactly one line, got {stderr:?}"
    );
    let kebab = setting.replace('_', "-");
    assert!(
        body.contains(setting) || body.contains(&kebab),
        "{what}: the error line must name {setting:?} (or {kebab:?}), got {body:?}"
    );
}

/// A TOML file in the temp directory, removed when dropped.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "herald-cli-test-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        TempFile { path }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A started `herald serve` and the addresses from its stderr line(s).
struct Served {
    _running: Running,
    addr: SocketAddr,
    publish_addr: Option<SocketAddr>,
}

fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let text = rest.split_whitespace().next()?.trim_end_matches('/');
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("bad address {text:?} in stderr line {line:?}")),
    )
}

/// Starts `herald args` with `env` and waits for `herald listening on http://ADDR` (and for
/// `publishing on http://ADDR` when `expect_publish_listener`).
fn serve(args: &[&str], env: &[(&str, &str)], expect_publish_listener: bool) -> Served {
    let what = format!("herald {} with env {env:?}", args.join(" "));
    let (child, mut stderr) = spawn_draining_stderr(&mut herald(args, env));
    let mut running = Running { child };
    let deadline = Instant::now() + DEADLINE;
    let mut addr = None;
    let mut publish_addr = None;
    while addr.is_none() || (expect_publish_listener && publish_addr.is_none()) {
        match stderr.next_before(deadline) {
            Next::Line(line) => {
                if let Some(found) = address_after(&line, "herald listening on http://") {
                    addr = Some(found);
                }
                if let Some(found) = address_after(&line, "publishing on http://") {
                    publish_addr = Some(found);
                }
            }
            Next::TimedOut => panic!(
                "{what}: no `herald listening on http://ADDR` line within {DEADLINE:?}; stderr: {:?}",
                stderr.seen()
            ),
            Next::Closed => {
                let status = running.child.wait().unwrap();
                panic!(
                    "{what}: exited with {status:?} before listening; stderr: {:?}",
                    stderr.seen()
                )
            }
        }
    }
    let addr = addr.unwrap();
    assert_ne!(addr.port(), 0, "{what}: the line must give the bound port");
    Served {
        _running: running,
        addr,
        publish_addr,
    }
}

// --- Help ------------------------------------------------------------------------------------

#[test]
fn serve_help_lists_every_flag() {
    let (status, stdout, stderr) = run(herald(&["serve", "--help"], &[]), "herald serve --help");
    assert!(
        status.success(),
        "herald serve --help: {status:?}; stderr: {stderr:?}"
    );
    let missing: Vec<&str> = FLAGS
        .iter()
        .copied()
        .filter(|flag| {
            !stdout
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .any(|word| word == *flag)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "herald serve --help does not list {missing:?}; it printed:\n{stdout}"
    );
}

#[test]
fn top_level_help_names_the_serve_command() {
    let (status, stdout, stderr) = run(herald(&["--help"], &[]), "herald --help");
    assert!(
        status.success(),
        "herald --help: {status:?}; stderr: {stderr:?}"
    );
    assert!(stdout.contains("serve"), "herald --help:\n{stdout}");
}

// --- Refusals --------------------------------------------------------------------------------

#[test]
fn invalid_flag_values_exit_2_with_one_line_naming_the_setting() {
    let cases: [(&[&str], &str); 19] = [
        (&["--forwarded-header", "x-real-ip"], "forwarded_header"),
        (&["--ipv6-prefix-per-ip", "0"], "ipv6_prefix_per_ip"),
        (&["--ipv6-prefix-per-ip", "129"], "ipv6_prefix_per_ip"),
        (
            &["--max-publish-connections", "0"],
            "max_publish_connections",
        ),
        (&["--threads", "0"], "threads"),
        (&["--threads", "many"], "threads"),
        (&["--max-lag-bytes", "banana"], "max_lag_bytes"),
        (&["--history-events", "0"], "history_events"),
        (&["--history-bytes", "1.5MiB"], "history_bytes"),
        (&["--max-head-bytes", "10"], "max_head_bytes"),
        (&["--retry-ms=soon"], "retry_ms"),
        (&["--gap-event", "a b\nc"], "gap_event"),
        (&["--cors-origin", "example.com"], "cors_origin"),
        (&["--demo", "maybe"], "demo"),
        (
            &["--max-publish-bytes", "2MiB", "--max-lag-bytes", "1MiB"],
            "max_lag_bytes",
        ),
        (&["--publish-listen", "not-an-address"], "publish_listen"),
        (&["--auth-url", "ftp://app.example/auth"], "auth_url"),
        (&["--auth-url", "http://"], "auth_url"),
        (&["--auth-publish"], "auth_publish"),
    ];
    for (flags, setting) in cases {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        assert_refused(&args, &[], setting);
    }
    assert_refused(&["serve", "--listen", "nowhere"], &[], "listen");
}

#[test]
fn invalid_environment_values_exit_2_with_one_line_naming_the_setting() {
    let listen = ("HERALD_LISTEN", "127.0.0.1:0");
    for (env, setting) in [
        (("HERALD_THREADS", "0"), "threads"),
        (("HERALD_MAX_LAG_BYTES", "banana"), "max_lag_bytes"),
        (("HERALD_RETRY_MS", "soon"), "retry_ms"),
        (
            ("HERALD_CORS_ORIGINS", "https://ok.example,bad"),
            "cors_origin",
        ),
    ] {
        assert_refused(&["serve"], &[listen, env], setting);
    }
}

fn assert_toml_refused(name: &str, contents: &str, setting: &str) {
    let file = TempFile::new(name, contents);
    assert_refused(&["serve", "--config", file.path()], &[], setting);
}

#[test]
fn toml_value_of_the_wrong_type_exits_2_naming_the_setting() {
    assert_toml_refused(
        "wrong-type",
        "listen = \"127.0.0.1:0\"\nhistory_events = \"lots\"\n",
        "history_events",
    );
}

#[test]
fn toml_value_out_of_range_exits_2_naming_the_setting() {
    assert_toml_refused(
        "out-of-range",
        "listen = \"127.0.0.1:0\"\nthreads = 0\n",
        "threads",
    );
}

#[test]
fn toml_unknown_key_exits_2_naming_it() {
    assert_toml_refused(
        "unknown-key",
        "listen = \"127.0.0.1:0\"\ncolour = \"red\"\n",
        "colour",
    );
}

#[test]
fn toml_bad_address_exits_2_naming_the_setting() {
    assert_toml_refused("bad-listen", "listen = \"nowhere\"\n", "listen");
}

#[test]
fn toml_values_that_break_a_relation_exit_2_naming_the_setting() {
    assert_toml_refused(
        "bad-relation",
        "listen = \"127.0.0.1:0\"\nmax_publish_bytes = 2000000\nmax_lag_bytes = 1000000\n",
        "max_lag_bytes",
    );
}

#[test]
fn unparseable_or_missing_toml_file_exits_2_with_one_line() {
    let file = TempFile::new("syntax", "listen = \"127.0.0.1:0\"\nthreads = = 2\n[[[\n");
    let what = format!(
        "herald serve --config {} (a TOML syntax error)",
        file.path()
    );
    let (status, _, stderr) = run(herald(&["serve", "--config", file.path()], &[]), &what);
    assert_eq!(
        status.code(),
        Some(2),
        "{what}: {status:?}; stderr {stderr:?}"
    );
    let body = stderr.strip_suffix('\n').unwrap_or(&stderr);
    assert!(
        !body.trim().is_empty() && !body.contains('\n'),
        "{what}: stderr must be exactly one line, got {stderr:?}"
    );

    let missing = std::env::temp_dir().join(format!("herald-missing-{}.toml", std::process::id()));
    let missing = missing.to_str().unwrap();
    let what = format!("herald serve --config {missing} (no such file)");
    let (status, _, stderr) = run(
        herald(
            &["serve", "--listen", "127.0.0.1:0", "--config", missing],
            &[],
        ),
        &what,
    );
    assert_eq!(
        status.code(),
        Some(2),
        "{what}: {status:?}; stderr {stderr:?}"
    );
    let body = stderr.strip_suffix('\n').unwrap_or(&stderr);
    assert!(
        !body.contains('\n') && (body.contains("config") || body.contains(missing)),
        "{what}: expected one line naming the config file, got {stderr:?}"
    );
}

// --- Settings are honoured -------------------------------------------------------------------

/// The opening frame of a stream without its `id:` line (the stream's start, checked in
/// tests/it/subscribe.rs): what is left is the `retry:` hint these tests look at.
fn retry_frame(addr: SocketAddr) -> Vec<u8> {
    let raw = Subscriber::open(addr, "/events?topic=cli", &[]).raw;
    String::from_utf8_lossy(&raw)
        .split_inclusive('\n')
        .filter(|line| !line.starts_with("id: "))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn toml_file_settings_are_honoured() {
    let file = TempFile::new(
        "honoured",
        "listen = \"127.0.0.1:0\"\nthreads = 1\nretry_ms = 4321\ndemo = false\n\
         gap_event = \"cli-gap\"\ncors_origins = [\"https://toml.example\"]\n",
    );
    let served = serve(&["serve", "--config", file.path()], &[], false);
    assert_eq!(retry_frame(served.addr), b"retry: 4321\n\n");
    assert_error(
        &get(served.addr, "/"),
        404,
        "GET / with demo = false in TOML",
    );
    let resumed = Subscriber::open(
        served.addr,
        "/events?topic=cli",
        &[("Last-Event-ID", "1-1"), ("Origin", "https://toml.example")],
    );
    assert_eq!(
        resumed.head.header("access-control-allow-origin"),
        Some("https://toml.example"),
        "{}",
        resumed.head.summary()
    );
    let mut resumed = resumed;
    let gap = resumed.next_event("the gap event named in TOML");
    assert_eq!(gap.event_type, "cli-gap");
}

#[test]
fn environment_settings_are_honoured() {
    let served = serve(
        &["serve"],
        &[
            ("HERALD_LISTEN", "127.0.0.1:0"),
            ("HERALD_THREADS", "1"),
            ("HERALD_RETRY_MS", "2468"),
            ("HERALD_DEMO", "false"),
            ("HERALD_CORS_ORIGINS", "https://a.example,https://b.example"),
            ("HERALD_PUBLISH_TOKEN", "env-token"),
        ],
        false,
    );
    let addr = served.addr;
    assert_eq!(retry_frame(addr), b"retry: 2468\n\n");
    assert_error(&get(addr, "/"), 404, "GET / with HERALD_DEMO=false");
    for origin in ["https://a.example", "https://b.example"] {
        let subscriber = Subscriber::open(addr, "/events?topic=cli", &[("Origin", origin)]);
        assert_eq!(
            subscriber.head.header("access-control-allow-origin"),
            Some(origin),
            "{}",
            subscriber.head.summary()
        );
    }
    assert_error(
        &post(addr, "/publish?topic=cli", Some("text/plain"), b"x"),
        401,
        "publish without HERALD_PUBLISH_TOKEN's token",
    );
    let response = exchange(
        addr,
        post_request(
            "/publish?topic=cli",
            Some("text/plain"),
            b"x",
            &[
                ("Authorization", "Bearer env-token"),
                ("Connection", "close"),
            ],
        ),
    );
    assert_eq!(response.status, 200, "{}", response.summary());
}

#[test]
fn flags_are_honoured_and_the_publish_listener_is_announced() {
    let served = serve(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--publish-listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--retry-ms",
            "1357",
            "--history-events",
            "2",
            "--max-topics-per-subscription",
            "2",
            "--cors-origin",
            "https://one.example",
            "--cors-origin",
            "https://two.example",
        ],
        &[],
        true,
    );
    let addr = served.addr;
    let private = served.publish_addr.unwrap();
    assert_ne!(addr, private);
    assert_eq!(retry_frame(addr), b"retry: 1357\n\n");
    let mut subscriber = Subscriber::open(
        addr,
        "/events?topic=cli&topic=b",
        &[("Origin", "https://two.example")],
    );
    assert_eq!(
        subscriber.head.header("access-control-allow-origin"),
        Some("https://two.example")
    );
    assert_error(
        &get(addr, "/events?topic=a&topic=b&topic=c"),
        400,
        "three topics with --max-topics-per-subscription 2",
    );
    assert_error(
        &post(addr, "/publish?topic=cli", Some("text/plain"), b"x"),
        403,
        "publish on the main listener with --publish-listen",
    );
    let response = post(
        private,
        "/publish?topic=cli",
        Some("text/plain"),
        b"via flag",
    );
    assert_eq!(response.status, 200, "{}", response.summary());
    let id = id_from_text_answer(response.body_text());
    let event = subscriber.next_event("the event published on the publish listener");
    assert_eq!(
        (event.data.as_str(), event.last_event_id.as_str()),
        ("via flag", id.as_str())
    );
}

#[test]
fn flag_beats_env_beats_file() {
    let file = TempFile::new(
        "precedence",
        "listen = \"127.0.0.1:0\"\nthreads = 1\nretry_ms = 1111\n",
    );
    let served = serve(&["serve", "--config", file.path()], &[], false);
    assert_eq!(retry_frame(served.addr), b"retry: 1111\n\n", "file only");
    drop(served);

    let env = [("HERALD_RETRY_MS", "2222")];
    let served = serve(&["serve", "--config", file.path()], &env, false);
    assert_eq!(
        retry_frame(served.addr),
        b"retry: 2222\n\n",
        "env over file"
    );
    drop(served);

    let served = serve(
        &["serve", "--config", file.path(), "--retry-ms", "3333"],
        &env,
        false,
    );
    assert_eq!(
        retry_frame(served.addr),
        b"retry: 3333\n\n",
        "flag over env and file"
    );
    drop(served);

    // The config file itself may come from the environment.
    let served = serve(&["serve"], &[("HERALD_CONFIG", file.path())], false);
    assert_eq!(
        retry_frame(served.addr),
        b"retry: 1111\n\n",
        "HERALD_CONFIG"
    );
}

// --- One process per address (issue 10 item 4) -----------------------------------------------

/// Asserts `served` still answers `/healthz` and takes a publish.
fn assert_still_serving(addr: SocketAddr, publish_addr: SocketAddr, after: &str) {
    assert_healthy(addr, after);
    let response = post(
        publish_addr,
        "/publish",
        Some("application/x-www-form-urlencoded"),
        form(&[("topic", "still"), ("data", "here")]).as_bytes(),
    );
    assert_eq!(response.status, 200, "{after}: {}", response.summary());
}

#[test]
fn issue_10_a_second_serve_on_a_served_address_exits_2_naming_it() {
    let first = serve(&["serve", "--listen", "127.0.0.1:0"], &[], false);
    let taken = first.addr.to_string();
    assert_refused(&["serve", "--listen", &taken], &[], &taken);
    assert_still_serving(first.addr, first.addr, "after the second serve was refused");
}

#[test]
fn issue_10_a_second_serve_on_a_served_publish_address_exits_2_naming_it() {
    let first = serve(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--publish-listen",
            "127.0.0.1:0",
        ],
        &[],
        true,
    );
    let publish_addr = first.publish_addr.unwrap();
    let taken = publish_addr.to_string();
    // Its own publish address, or another process's main address: both are refused.
    assert_refused(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--publish-listen",
            &taken,
        ],
        &[],
        &taken,
    );
    assert_refused(&["serve", "--listen", &taken], &[], &taken);
    let main = first.addr.to_string();
    assert_refused(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--publish-listen",
            &main,
        ],
        &[],
        &main,
    );
    assert_still_serving(
        first.addr,
        publish_addr,
        "after the second serves were refused",
    );
}
