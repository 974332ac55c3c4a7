//! The `herald` command line: flags, `HERALD_*` environment variables and an optional TOML
//! file become a [`herald::Config`]; then the server runs until interrupted. A bad setting
//! is reported in one line and exits with status 2. `herald healthcheck` is the probe for
//! container images that have no curl.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::io::{Read as _, Write as _};

use clap::{Arg, ArgMatches, Command};
use herald::config::{settings, Config};
use herald::logging::announce;

/// The command line: `herald serve` with one flag per setting (see `config/settings.rs`).
fn command() -> Command {
    Command::new("herald")
        .version(env!("CARGO_PKG_VERSION"))
        .about(env!("CARGO_PKG_DESCRIPTION"))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(settings::serve_command())
        .subcommand(healthcheck_command())
}

/// What `herald healthcheck` asks when given no URL: the default listener's liveness route.
const HEALTHCHECK_URL_DEFAULT: &str = "http://127.0.0.1:8080/healthz";
/// Time `herald healthcheck` gives the whole exchange (connect, request, status line), so
/// a hung server fails the probe instead of hanging it. Docker's HEALTHCHECK in
/// deploy/Dockerfile allows 3 s.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of the answer read while looking for the end of its status line.
const HEALTHCHECK_READ_MAX: usize = 1024;

/// `herald healthcheck [URL]`.
fn healthcheck_command() -> Command {
    Command::new("healthcheck")
        .about(
            "GET an http:// URL (default: the default listener's /healthz) and exit 0 if it \
             answers 200, 1 otherwise (refused, timed out after 2 s, or another status); for \
             HEALTHCHECK in images without curl (README \"Deployment\")",
        )
        .arg(
            Arg::new("url")
                .value_name("URL")
                .default_value(HEALTHCHECK_URL_DEFAULT)
                .help("http://HOST[:PORT][/PATH], e.g. http://127.0.0.1:8080/readyz"),
        )
}

/// GETs `url` over a plain TCP connection within [`HEALTHCHECK_TIMEOUT`]; `Ok` only for a
/// `200` status line, otherwise the reason in one line.
fn healthcheck(url: &str) -> Result<(), String> {
    use std::io::ErrorKind;
    use std::net::{TcpStream, ToSocketAddrs};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |at| rest.split_at(at));
    if authority.is_empty() || url.contains(|c: char| c.is_ascii_control() || c == ' ') {
        return Err(format!("{url}: not an http://HOST[:PORT][/PATH] URL"));
    }
    // No port, or an IPv6 literal without one: HTTP's default.
    let host_port = match authority.rsplit_once(':') {
        Some((_, port)) if !port.ends_with(']') => authority.to_owned(),
        _ => format!("{authority}:80"),
    };
    let deadline = Instant::now() + HEALTHCHECK_TIMEOUT;
    let addr = host_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: the host has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, HEALTHCHECK_TIMEOUT)
        .map_err(|e| format!("{url}: cannot connect: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: herald-healthcheck\r\n\
         Connection: close\r\n\r\n"
    );
    let mut answer = Vec::with_capacity(HEALTHCHECK_READ_MAX);
    let mut chunk = [0u8; HEALTHCHECK_READ_MAX];
    let io = |e: std::io::Error| format!("{url}: {e}");
    stream
        .set_write_timeout(Some(HEALTHCHECK_TIMEOUT))
        .map_err(io)?;
    stream.write_all(request.as_bytes()).map_err(io)?;
    let status_line = loop {
        if let Some(end) = answer.windows(2).position(|w| w == b"\r\n") {
            break String::from_utf8_lossy(&answer[..end]).into_owned();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let room = HEALTHCHECK_READ_MAX - answer.len();
        if left.is_zero() || room == 0 {
            return Err(format!(
                "{url}: no status line within {HEALTHCHECK_TIMEOUT:?}"
            ));
        }
        stream.set_read_timeout(Some(left)).map_err(io)?;
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Err(format!("{url}: closed before a status line")),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            // A read timeout is WouldBlock on Unix; the deadline check above reports it.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    };
    let mut parts = status_line.splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some("HTTP/1.1" | "HTTP/1.0"), Some("200")) => Ok(()),
        _ => Err(format!("{url}: {status_line}")),
    }
}

/// Flags and environment over the file over the defaults.
fn into_config(matches: &ArgMatches) -> Result<Config, String> {
    let mut config = match settings::config_file(matches) {
        Some(path) => read_file(path)?,
        None => Config::default(),
    };
    settings::apply_given(&mut config, matches);
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
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
    let matches = match command().try_get_matches() {
        Ok(matches) => matches,
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
    let serve = match matches.subcommand() {
        Some(("serve", serve)) => serve,
        Some(("healthcheck", probe)) => {
            let url = probe
                .get_one::<String>("url")
                .map_or(HEALTHCHECK_URL_DEFAULT, String::as_str);
            return match healthcheck(url) {
                Ok(()) => ExitCode::SUCCESS,
                Err(line) => {
                    report(&format!("healthcheck failed: {line}"));
                    ExitCode::from(1)
                }
            };
        }
        _ => {
            // `subcommand_required` makes clap refuse anything else before this.
            report("herald serve and herald healthcheck are the only commands");
            return ExitCode::from(2);
        }
    };
    let config = match into_config(serve) {
        Ok(config) => config,
        Err(line) => {
            report(&line);
            return ExitCode::from(2);
        }
    };
    let demo_feed = config.demo_feed;
    let _logging =
        match herald::logging::init(config.log_level, config.log_format, config.access_log) {
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

/// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once. SIGHUP rereads
/// the token key files and refetches the JWKS URLs (on the server's key thread).
fn watch_signals(handle: herald::Handle) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("herald-signals".into())
        .spawn(move || {
            // Acting comes first and logging cannot fail or block, so a broken stderr
            // never costs a signal.
            let mut seen = 0;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    handle.reload_keys();
                    log::info!("signal {signal}, reloading the token keys");
                    continue;
                }
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
