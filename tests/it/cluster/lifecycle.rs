//! A cluster node's life: SIGTERM stops it promptly with Redis up or down, it starts while
//! Redis is down, bad settings exit 2, and the Redis URL's password is used and never shown.

use super::*;

#[test]
fn sigterm_stops_redis_nodes_promptly_with_redis_up_or_down() {
    let redis = RedisServer::start("shutdown");
    let stream = "shutdown";
    let flags = [
        "--retry-ms",
        "1000",
        "--shutdown-retry-window-ms",
        "1000",
        "--shutdown-timeout-ms",
        "3000",
    ];
    let dead_url = format!("redis://127.0.0.1:{}/0", free_port().unwrap());
    let mut nodes = [
        Node::spawn("node with Redis", &redis.url(), stream, &flags),
        Node::spawn("node without Redis", &dead_url, stream, &flags),
    ];
    nodes[0].wait_connected();
    let mut subscribers: Vec<Subscriber> =
        nodes.iter().map(|n| subscribe(n.addr(), &["t"])).collect();
    let id = publish_to(nodes[0].addr(), "t", "before");
    assert_eq!(
        seen(&subscribers[0].next_event("the event before SIGTERM")),
        message("before", &id)
    );
    for node in &nodes {
        node.process.signal("TERM");
    }
    for (node, subscriber) in nodes.iter_mut().zip(&mut subscribers) {
        let started = Instant::now();
        let status = node.wait_exit(Duration::from_secs(8));
        let took = started.elapsed();
        assert!(
            status.success(),
            "{}: exit status {status:?} after SIGTERM",
            node.label
        );
        assert!(
            took < Duration::from_secs(4),
            "{}: took {took:?} to exit with --shutdown-timeout-ms 3000",
            node.label
        );
        let events = subscriber.read_to_close(&format!("the close on {}", node.label));
        assert!(events.is_empty(), "{}: {events:?}", node.label);
        let hint = subscriber.closing_retry_hint();
        assert!(
            (1000..=2000).contains(&hint),
            "{}: shutdown hint retry: {hint}",
            node.label
        );
    }
}

#[test]
fn a_node_starts_while_redis_is_down_and_connects_when_it_comes_up() {
    let port = free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}/0");
    let node = Node::spawn("node", &url, "late-redis", &[]);
    assert_eq!(node.metric(CONNECTED), 0.0, "no Redis yet");
    let response = try_publish(node.addr(), "t", "too early");
    assert_redis_unavailable(&response, "POST /publish before Redis ever ran");

    let _redis = RedisServer::start_on("late-redis", port);
    node.wait_connected();
    let mut subscriber = subscribe(node.addr(), &["t"]);
    let mut refused: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + DEADLINE;
    let (data, id) = loop {
        let data = format!("attempt {}", refused.len());
        let response = try_publish(node.addr(), "t", &data);
        match response.status {
            200 => break (data, id_from_text_answer(response.body_text())),
            503 => {
                assert!(
                    Instant::now() < deadline,
                    "publishes still refused {DEADLINE:?} after Redis came up: {}",
                    response.summary()
                );
                refused.insert(data);
                std::thread::sleep(RETRY_POLL);
            }
            _ => panic!("publish after Redis came up: {}", response.summary()),
        }
    };
    publish_to(node.addr(), "t", "end");
    assert_acknowledged_delivered(
        &seen_before_end(&mut subscriber),
        &[message(&data, &id)],
        &refused,
        "the subscriber",
    );
}

/// Runs `herald serve --listen 127.0.0.1:0 args...` with `env` (and no inherited `HERALD_*`)
/// to its exit within [`DEADLINE`]; returns the status and stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut command = herald_serve(args);
    command.envs(env.iter().copied());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {HERALD_BIN}: {e}"));
    let receiver = read_all_on_thread(child.stderr.take().unwrap());
    match receiver.recv_timeout(DEADLINE) {
        Ok(text) => (child.wait().unwrap(), text),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald {args:?} with {env:?} did not exit within {DEADLINE:?}");
        }
    }
}

fn assert_refused(args: &[&str], env: &[(&str, &str)], setting: &str) {
    let (status, stderr) = run_to_exit(args, env);
    let what = format!("herald serve {args:?} with env {env:?}");
    assert_eq!(
        status.code(),
        Some(2),
        "{what}: exit status {status:?}; stderr: {stderr:?}"
    );
    let line = stderr.strip_suffix('\n').unwrap_or(&stderr);
    assert!(
        !line.trim().is_empty() && !line.contains('\n'),
        "{what}: stderr must be exactly one line, got {stderr:?}"
    );
    let kebab = setting.replace('_', "-");
    assert!(
        line.contains(setting) || line.contains(&kebab),
        "{what}: the error line must name {setting:?}, got {line:?}"
    );
}

#[test]
fn bad_cluster_settings_exit_2_with_one_line_naming_the_setting() {
    assert_refused(
        &["--bus", "redis", "--redis-url", "not-a-url"],
        &[],
        "redis_url",
    );
    assert_refused(
        &["--bus", "redis"],
        &[("HERALD_REDIS_URL", "not-a-url")],
        "redis_url",
    );
    assert_refused(&["--bus", "nonsense"], &[], "bus");
    let toml = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "herald-cluster-{}-bad-redis-url.toml",
        std::process::id()
    ));
    std::fs::write(&toml, "bus = \"redis\"\nredis_url = \"not-a-url\"\n").unwrap();
    let toml_path = toml.to_str().unwrap().to_owned();
    assert_refused(&["--config", &toml_path], &[], "redis_url");
    let _ = std::fs::remove_file(&toml);
    assert_refused(&[], &[("HERALD_BUS", "nonsense")], "bus");
    // The Redis URL is only read with --bus redis: the embedded bus starts regardless.
    let node = HeraldProcess::spawn(&["--redis-url", "not-a-url", "--threads", "1"]);
    assert_healthy(node.addr, "starting with an unused bad --redis-url");
}

/// The password every URL in the issue-10 redaction test carries; it must never be printed.
const PASSWORD: &str = "s3cret";

/// Issue 10, item 13: the Redis URL's credentials are never shown. Start-up errors (a bad
/// port, RESP3, TLS without verification, a malformed URL, through the flag, the
/// environment and a TOML file),
/// `--help` with the URL in the environment, the logs of nodes that cannot connect or are
/// refused by Redis (at debug level), and `/metrics` all name the URL without its password.
#[test]
fn issue_10_the_redis_password_never_shows_in_errors_logs_help_or_metrics() {
    let port = free_port().unwrap();
    let bad_urls = [
        format!("redis://user:{PASSWORD}@127.0.0.1:notaport/0"),
        format!("redis://user:{PASSWORD}@127.0.0.1:{port}/0?protocol=resp3"),
        format!("rediss://user:{PASSWORD}@127.0.0.1:{port}/0#insecure"),
        format!("redis://user:{PASSWORD}@[::1/0"),
        format!("redis://{PASSWORD}@127.0.0.1:notaport/0"),
        format!("redis://user:{PASSWORD}/with/slash@127.0.0.1:notaport/0"),
        format!("user:{PASSWORD}@127.0.0.1:{port}"),
        format!("redis+unix:///tmp/none.sock?db=0&pass={PASSWORD}&protocol=resp3"),
    ];
    let toml = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "herald-cluster-{}-secret-redis-url.toml",
        std::process::id()
    ));
    for url in &bad_urls {
        let outcomes = [
            run_to_exit(&["--bus", "redis", "--redis-url", url], &[]),
            run_to_exit(&["--bus", "redis"], &[("HERALD_REDIS_URL", url)]),
            {
                std::fs::write(&toml, format!("bus = \"redis\"\nredis_url = \"{url}\"\n")).unwrap();
                run_to_exit(&["--config", toml.to_str().unwrap()], &[])
            },
        ];
        for (status, stderr) in outcomes {
            assert_eq!(status.code(), Some(2), "{url}: {stderr}");
            assert!(stderr.contains("redis_url"), "{url}: {stderr}");
            assert!(
                !stderr.contains(PASSWORD),
                "the refusal of a bad --redis-url shows its password: {stderr}"
            );
        }
    }
    let _ = std::fs::remove_file(&toml);

    let help = Command::new(HERALD_BIN)
        .args(["serve", "--help"])
        .env(
            "HERALD_REDIS_URL",
            format!("redis://user:{PASSWORD}@127.0.0.1:{port}/0"),
        )
        .output()
        .unwrap();
    let help =
        String::from_utf8_lossy(&help.stdout).into_owned() + &String::from_utf8_lossy(&help.stderr);
    assert!(help.contains("--redis-url"), "{help}");
    assert!(
        !help.contains(PASSWORD),
        "--help shows the password: {help}"
    );

    // Nodes that run and log: no Redis at all, and a Redis that refuses the credentials.
    let redis = RedisServer::start("secret");
    redis
        .client()
        .command::<()>(&["CONFIG", "SET", "requirepass", "other"]);
    let urls = [
        format!("redis://user:{PASSWORD}@127.0.0.1:{port}/0"),
        format!("redis://:{PASSWORD}@127.0.0.1:{}/0", redis.port),
    ];
    for url in &urls {
        let mut node =
            HeraldProcess::spawn(&["--bus", "redis", "--redis-url", url, "--log-level", "debug"]);
        let response = try_publish(node.addr, "t", "refused");
        assert_eq!(response.status, 503, "{}", response.summary());
        let metrics = get(node.addr, "/metrics");
        assert!(!metrics.body_text().contains(PASSWORD), "/metrics shows it");
        node.signal("TERM");
        node.wait_exit(DEADLINE);
        let log = node.stderr_lines().join("\n");
        assert!(
            log.contains("cannot connect"),
            "the node logs its failure: {log}"
        );
        assert!(
            log.contains(":***@127.0.0.1"),
            "the node logs which Redis it uses, redacted: {log}"
        );
        assert!(!log.contains(PASSWORD), "the log shows the password: {log}");
    }
}

/// A Redis that requires a password: the password in `--redis-url` is used (publishes are
/// stored and delivered); a wrong one gets 503 for publishes, and the node still serves
/// its subscribers.
#[test]
fn the_password_in_the_redis_url_is_used() {
    let redis = RedisServer::start("password");
    let mut admin = redis.client();
    admin.command::<()>(&["CONFIG", "SET", "requirepass", "s3cret"]);
    let good = format!("redis://:s3cret@127.0.0.1:{}/0", redis.port);
    let bad = format!("redis://:wrong@127.0.0.1:{}/0", redis.port);
    let node = Node::spawn("node with the password", &good, "password", &[]);
    let stranger = Node::spawn("node with a wrong password", &bad, "password", &[]);
    node.wait_connected();
    let mut subscriber = subscribe(node.addr(), &["t"]);
    let id = publish_to(node.addr(), "t", "authenticated");
    assert_eq!(
        seen(&subscriber.next_event("the event")),
        message("authenticated", &id)
    );
    assert_eq!(
        admin.xrange("password", &id, &id).len(),
        1,
        "the event is in the stream"
    );
    assert_redis_unavailable(
        &try_publish(stranger.addr(), "t", "refused"),
        "a publish with a wrong password",
    );
    assert_eq!(stranger.metric(CONNECTED), 0.0);
    let other = subscribe(stranger.addr(), &["t"]);
    assert!(
        other.retry_ms().is_some(),
        "the node still serves subscribers"
    );
}
