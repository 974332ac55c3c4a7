//! The `herald` command line: flags, `HERALD_*` environment variables and an optional TOML
//! file become a [`herald::Config`]; then the server runs until interrupted. A bad setting
//! is reported in one line and exits with status 2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write as _;

use clap::{Args, Parser, Subcommand};
use herald::config::{parse_bytes, Config};
use herald::logging::announce;

/// Server-Sent Events fan-out server.
#[derive(Parser)]
#[command(name = "herald", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
}

fn log_level(text: &str) -> Result<log::LevelFilter, String> {
    match text {
        "error" | "warn" | "info" | "debug" | "trace" => text.parse().map_err(|_| text.to_owned()),
        _ => Err(format!(
            "{text:?} is not one of error, warn, info, debug, trace"
        )),
    }
}

fn bytes(text: &str) -> Result<usize, String> {
    parse_bytes(text)
}

/// Every setting of `herald serve`. Unset flags fall back to the TOML file, then to the
/// default shown.
#[derive(Args)]
struct ServeArgs {
    /// Log level for the logfmt lines on stderr: error, warn, info, debug or trace. [default: warn]
    #[arg(long, env = "HERALD_LOG_LEVEL", value_name = "LEVEL", default_value = "warn", hide_default_value = true, value_parser = log_level)]
    log_level: log::LevelFilter,
    /// Publish sample `tick`, `alert` and `metrics` events to topic `demo` so the demo page is alive. [default: false]
    #[arg(long, env = "HERALD_DEMO_FEED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", default_value = "false", hide_default_value = true)]
    demo_feed: bool,
    /// TOML file with settings (keys are the setting names with underscores, e.g. history_events = 100).
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address for subscribers (and publishers, unless --publish-listen is set). [default: 127.0.0.1:8080]
    #[arg(long, env = "HERALD_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Separate address for POST /publish; the main listener then refuses publishes with 403. [default: none]
    #[arg(long, env = "HERALD_PUBLISH_LISTEN", value_name = "ADDR")]
    publish_listen: Option<SocketAddr>,
    /// Event loop threads. [default: number of cores]
    #[arg(long, env = "HERALD_THREADS", value_name = "N")]
    threads: Option<usize>,
    /// Events kept per topic for resume. [default: 1000]
    #[arg(long, env = "HERALD_HISTORY_EVENTS", value_name = "N")]
    history_events: Option<usize>,
    /// Bytes of events kept per topic for resume. [default: 1MiB]
    #[arg(long, env = "HERALD_HISTORY_BYTES", value_name = "SIZE", value_parser = bytes)]
    history_bytes: Option<usize>,
    /// Bytes of history kept across all topics. [default: 64MiB]
    #[arg(long, env = "HERALD_HISTORY_TOTAL_BYTES", value_name = "SIZE", value_parser = bytes)]
    history_total_bytes: Option<usize>,
    /// Origin allowed to use herald cross-origin (repeatable; * for any). [default: none, no CORS headers]
    #[arg(
        long = "cors-origin",
        env = "HERALD_CORS_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    cors_origins: Option<Vec<String>>,
    /// Require `Authorization: Bearer TOKEN` on POST /publish. [default: none, anyone may publish]
    #[arg(
        long,
        env = "HERALD_PUBLISH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    publish_token: Option<String>,
    /// Reconnect delay sent in the first retry: frame of every stream, in milliseconds. [default: 3000]
    #[arg(long, env = "HERALD_RETRY_MS", value_name = "MS")]
    retry_ms: Option<u32>,
    /// Event name that tells a resuming client its Last-Event-ID is older than the history. [default: gap]
    #[arg(long, env = "HERALD_GAP_EVENT", value_name = "NAME")]
    gap_event: Option<String>,
    /// Most topics in one subscription or publish. [default: 16]
    #[arg(long, env = "HERALD_MAX_TOPICS_PER_SUBSCRIPTION", value_name = "N")]
    max_topics_per_subscription: Option<usize>,
    /// Longest topic name in bytes. [default: 128]
    #[arg(long, env = "HERALD_MAX_TOPIC_BYTES", value_name = "N")]
    max_topic_bytes: Option<usize>,
    /// Largest publish body (bigger gets 413). [default: 512KiB]
    #[arg(long, env = "HERALD_MAX_PUBLISH_BYTES", value_name = "SIZE", value_parser = bytes)]
    max_publish_bytes: Option<usize>,
    /// Bytes a subscriber may fall behind before it is closed (it resumes from history). [default: 1MiB]
    #[arg(long, env = "HERALD_MAX_LAG_BYTES", value_name = "SIZE", value_parser = bytes)]
    max_lag_bytes: Option<usize>,
    /// Largest request head (bigger gets 431). [default: 8KiB]
    #[arg(long, env = "HERALD_MAX_HEAD_BYTES", value_name = "SIZE", value_parser = bytes)]
    max_head_bytes: Option<usize>,
    /// Serve the demo page on GET /. [default: true]
    #[arg(long, env = "HERALD_DEMO", value_name = "BOOL")]
    demo: Option<bool>,
    /// Milliseconds a client has to send a request head and body; then 408. [default: 10000]
    #[arg(long, env = "HERALD_HEAD_TIMEOUT_MS", value_name = "MS")]
    head_timeout_ms: Option<u64>,
    /// Milliseconds of quiet after which a stream gets a heartbeat comment. [default: 15000]
    #[arg(long, env = "HERALD_HEARTBEAT_MS", value_name = "MS")]
    heartbeat_ms: Option<u64>,
    /// Milliseconds a keep-alive connection may wait between requests. [default: 60000]
    #[arg(long, env = "HERALD_IDLE_TIMEOUT_MS", value_name = "MS")]
    idle_timeout_ms: Option<u64>,
    /// Longest stream life in milliseconds, jittered down by up to 10 %, then a retry: hint and a close (0: unlimited). [default: 0]
    #[arg(long, env = "HERALD_MAX_STREAM_LIFETIME_MS", value_name = "MS")]
    max_stream_lifetime_ms: Option<u64>,
    /// Milliseconds a graceful shutdown (SIGTERM, SIGINT) may take. [default: 5000]
    #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
    shutdown_timeout_ms: Option<u64>,
    /// At shutdown, subscribers get retry: of --retry-ms plus a random share of this window. [default: 10000]
    #[arg(long, env = "HERALD_SHUTDOWN_RETRY_WINDOW_MS", value_name = "MS")]
    shutdown_retry_window_ms: Option<u64>,
    /// Most open connections; past it new ones get 503 with Retry-After. 0: the open-file limit minus 64. [default: 0]
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Most open connections per client address; past it new ones get 429. 0: unlimited. [default: 0]
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    max_connections_per_ip: Option<usize>,
    /// Proxy address block whose X-Forwarded-For/Forwarded names the client (repeatable; HERALD_TRUSTED_PROXIES is comma-separated). [default: none]
    #[arg(
        long = "trusted-proxy",
        env = "HERALD_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    trusted_proxies: Option<Vec<String>>,
    /// HS256 secret: GET /events then needs a JWT whose subscribe claim lists its topics. [default: none]
    #[arg(
        long,
        env = "HERALD_SUBSCRIBE_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    subscribe_key: Option<String>,
    /// HS256 secret: POST /publish then also accepts a JWT whose publish claim lists its topics. [default: none]
    #[arg(
        long,
        env = "HERALD_PUBLISH_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    publish_key: Option<String>,
    /// Where events go: embedded (one node) or redis (nodes sharing one Redis Stream; see README "Cluster"). [default: embedded]
    #[arg(long, env = "HERALD_BUS", value_name = "BUS")]
    bus: Option<herald::BusKind>,
    /// Redis for --bus redis: redis://[user:password@]host:port/db. [default: redis://127.0.0.1:6379/0]
    #[arg(
        long,
        env = "HERALD_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    redis_url: Option<String>,
    /// Redis Stream every node appends to and reads. [default: herald]
    #[arg(long, env = "HERALD_REDIS_STREAM", value_name = "NAME")]
    redis_stream: Option<String>,
    /// Approximate length the stream is trimmed to (XADD MAXLEN ~). 0: history-total-bytes / 1 KiB, at least history-events. [default: 0]
    #[arg(long, env = "HERALD_REDIS_MAXLEN", value_name = "N")]
    redis_maxlen: Option<usize>,
    /// Header a trusted proxy names the client in: x-forwarded-for or forwarded; the other is ignored. [default: x-forwarded-for]
    #[arg(long, env = "HERALD_FORWARDED_HEADER", value_name = "HEADER")]
    forwarded_header: Option<herald::ForwardedHeader>,
    /// IPv6 clients count for --max-connections-per-ip by their network of this many bits (1-128). [default: 64]
    #[arg(long, env = "HERALD_IPV6_PREFIX_PER_IP", value_name = "BITS")]
    ipv6_prefix_per_ip: Option<u8>,
    /// Most open connections on --publish-listen, apart from --max-connections. [default: 128]
    #[arg(long, env = "HERALD_MAX_PUBLISH_CONNECTIONS", value_name = "N")]
    max_publish_connections: Option<usize>,
}

impl ServeArgs {
    /// Flags and environment over the file over the defaults.
    fn into_config(self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => read_file(path)?,
            None => Config::default(),
        };
        macro_rules! apply {
            ($($field:ident),*) => {$(
                if let Some(value) = self.$field { config.$field = value; }
            )*};
        }
        apply!(
            listen,
            threads,
            history_events,
            history_bytes,
            history_total_bytes,
            cors_origins,
            retry_ms,
            gap_event,
            max_topics_per_subscription,
            max_topic_bytes,
            max_publish_bytes,
            max_lag_bytes,
            max_head_bytes,
            demo,
            head_timeout_ms,
            heartbeat_ms,
            idle_timeout_ms,
            max_stream_lifetime_ms,
            shutdown_timeout_ms,
            shutdown_retry_window_ms,
            max_connections,
            max_connections_per_ip,
            trusted_proxies,
            bus,
            redis_url,
            redis_stream,
            redis_maxlen,
            forwarded_header,
            ipv6_prefix_per_ip,
            max_publish_connections
        );
        if self.publish_listen.is_some() {
            config.publish_listen = self.publish_listen;
        }
        if self.publish_token.is_some() {
            config.publish_token = self.publish_token;
        }
        if self.subscribe_key.is_some() {
            config.subscribe_key = self.subscribe_key;
        }
        if self.publish_key.is_some() {
            config.publish_key = self.publish_key;
        }
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// Reads a TOML settings file; sizes there are plain byte counts.
fn read_file(path: &std::path::Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str::<Config>(&text).map_err(|e| {
        let message = e.message().replace('\n', " ");
        match e.span().and_then(|span| key_at(&text, span.start)) {
            Some((line, key)) => format!(
                "invalid config file {} line {line}: setting {key}: {message}",
                path.display()
            ),
            None => format!("invalid config file {}: {message}", path.display()),
        }
    })
}

/// The line number and `key` of the `key = value` line holding byte `offset`.
fn key_at(text: &str, offset: usize) -> Option<(usize, &str)> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    let number = text[..start].matches('\n').count() + 1;
    (!key.is_empty()).then_some((number, key))
}

/// Writes one line to stderr for a start-up failure before logging is set up; a stderr
/// nobody reads is no reason to panic.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "herald: {line}");
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            let _ = error.print(); // --help and --version go to stdout.
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let rendered = error.render().to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            report(line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let Command::Serve(args) = cli.command;
    let log_level = args.log_level;
    let demo_feed = args.demo_feed;
    let config = match args.into_config() {
        Ok(config) => config,
        Err(line) => {
            report(&line);
            return ExitCode::from(2);
        }
    };
    let _logging = match herald::logging::init(log_level) {
        Ok(guard) => guard,
        Err(error) => {
            report(&error.to_string());
            return ExitCode::from(1);
        }
    };
    // From here on every line goes through the log queue: never a panic, never a block.
    let open_files = raise_open_files_limit();
    let server = match herald::Server::start(config) {
        Ok(server) => server,
        Err(error) => {
            announce(&format!("herald: {error}"));
            // A taken address is a setting to change, like an invalid one.
            let status = match error {
                herald::Error::Config(_) | herald::Error::AddressInUse(_) => 2,
                herald::Error::Io { .. } => 1,
            };
            return ExitCode::from(status);
        }
    };
    if let Err(error) = watch_signals(server.handle()) {
        announce(&format!("herald: cannot install signal handlers: {error}"));
        return ExitCode::from(1);
    }
    if demo_feed {
        if let Err(error) = spawn_demo_feed(server.handle()) {
            announce(&format!("herald: cannot start the demo feed: {error}"));
            return ExitCode::from(1);
        }
    }
    log_connection_ceiling(open_files, &server);
    announce(&format!(
        "herald listening on http://{}",
        server.local_addr()
    ));
    if let Some(addr) = server.publish_addr() {
        announce(&format!("herald publishing on http://{addr}"));
    }
    server.wait();
    log::info!("stopped");
    ExitCode::SUCCESS
}

/// Raises the soft open-file limit to the hard one, so the connection ceiling derived from
/// it is what the system allows rather than the common default of 1024; returns the soft
/// limit in force afterwards.
fn raise_open_files_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// One info line with the open-file limit and the connection ceiling it gives, and a
/// warning when an explicit `max_connections` is more than the descriptors allow.
fn log_connection_ceiling(open_files: std::io::Result<u64>, server: &herald::Server) {
    let ceiling = server.max_connections();
    match open_files {
        Ok(limit) => {
            log::info!("open-file limit {limit}; connection ceiling {ceiling}");
            let usable = limit.saturating_sub(herald::config::FDS_RESERVED as u64);
            if ceiling as u64 > usable {
                log::warn!(
                    "max_connections {ceiling} is more than the open-file limit {limit} allows \
                     ({usable}); past that, accepting pauses for want of descriptors"
                );
            }
        }
        Err(error) => {
            log::warn!("cannot raise the open-file limit ({error}); connection ceiling {ceiling}")
        }
    }
}

/// Publishes sample events to topic `demo` until the server stops: a price `tick` every
/// second, `metrics` every two seconds and an `alert` every five, like the stock-ticker and
/// notification examples of the classic SSE tutorial.
fn spawn_demo_feed(handle: herald::Handle) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("herald-demo-feed".into())
        .spawn(move || {
            let mut prices = [187.20_f64, 141.80, 415.50];
            let symbols = ["AAPL", "GOOGL", "MSFT"];
            let mut state: u64 = 0x2545_F491_4F6C_DD1D;
            for second in 0u64.. {
                // xorshift: sample data only.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut events = Vec::new();
                for (price, symbol) in prices.iter_mut().zip(symbols) {
                    let step = ((state >> (8 * (symbol.len() % 3))) % 201) as f64 / 100.0 - 1.0;
                    *price = (*price + step).max(1.0);
                    let data = format!(r#"{{"symbol":"{symbol}","price":{price:.2}}}"#);
                    events.push(herald::Event::new("demo", data).named("tick"));
                }
                if second % 2 == 0 {
                    let data = format!(
                        r#"{{"cpu":{},"memory_mb":{},"connections":{}}}"#,
                        state % 100,
                        512 + state % 256,
                        handle.stats().connections
                    );
                    events.push(herald::Event::new("demo", data).named("metrics"));
                }
                if second % 5 == 0 {
                    let level = ["info", "warning", "critical"][(state % 3) as usize];
                    let data =
                        format!(r#"{{"level":"{level}","message":"sample alert {second}"}}"#);
                    events.push(herald::Event::new("demo", data).named("alert"));
                }
                for event in &events {
                    if handle.publish(event) == Err(herald::PublishError::ShuttingDown) {
                        return;
                    }
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        })?;
    Ok(())
}

/// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
fn watch_signals(handle: herald::Handle) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("herald-signals".into())
        .spawn(move || {
            // Acting comes first and logging cannot fail or block, so a broken stderr
            // never costs a signal.
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen > 1 {
                    log::warn!("second signal {signal}, exiting now");
                    std::process::exit(130);
                }
                handle.shutdown();
                log::warn!("signal {signal}, shutting down gracefully");
            }
        })?;
    Ok(())
}
