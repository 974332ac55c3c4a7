//! The one table of settings. Each entry of the `settings!` invocation below declares a
//! setting once: its name (the `Config` field and TOML key; the flag and `HERALD_*`
//! variable are derived from it), its type and how a flag is read (its `Kind`), its
//! default, its range, the placeholder for its value and its one-line help. From that one
//! table come the `Config` struct and its `Default`, the TOML keys (serde), the `herald
//! serve` flags with the defaults `--help` shows, the range checks of `Config::validate`,
//! and README's configuration table ([`readme_table`], kept current by a test).
//! No I/O here: reading the TOML file is the binary's job.

use std::net::SocketAddr;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};
use serde::Deserialize;

use super::kind::*;
use super::*;

/// The inclusive range `Config::validate` holds a numeric setting to.
#[derive(Clone, Copy)]
pub(crate) struct Range {
    pub(crate) min: u64,
    pub(crate) max: u64,
    /// The setting's value, widened.
    pub(crate) of: fn(&Config) -> u64,
}

/// One setting as the table declares it. [`SETTINGS`] lists them all, in README's order.
pub struct Setting {
    /// The `Config` field and the TOML key (`max_lag_bytes`).
    pub name: &'static str,
    /// The flag without `--` when it is not the name with `-` for `_` (`cors-origin`).
    flag: Option<&'static str>,
    /// The value's placeholder and unit in `--help` and README (`N`, `MS`, `SIZE`, `ADDR`).
    pub value_name: &'static str,
    /// One line for `--help` and README; `backticks` are Markdown, dropped in `--help`.
    pub help: &'static str,
    /// README's default when the real one differs per machine (`threads`: the cores).
    readme_default: Option<&'static str>,
    /// Whether the value is a secret: `--help` never shows it from the environment.
    secret: bool,
    /// Whether the flag may be given without a value.
    value_optional: bool,
    /// The range `validate` checks, for numeric settings.
    pub(crate) range: Option<Range>,
    kind_arg: fn(Arg) -> Arg,
    show: fn(&Config) -> Option<String>,
    apply: fn(&mut Config, &ArgMatches),
}

impl Setting {
    /// The flag, with `--`.
    pub fn flag(&self) -> String {
        match self.flag {
            Some(flag) => format!("--{flag}"),
            None => format!("--{}", self.name.replace('_', "-")),
        }
    }

    /// The environment variable: `HERALD_` and the name in capitals.
    pub fn env(&self) -> String {
        format!("HERALD_{}", self.name.to_ascii_uppercase())
    }

    /// The setting's value in `config` as `--help` shows it; `None` for no value.
    pub fn shown(&self, config: &Config) -> Option<String> {
        (self.show)(config)
    }

    fn arg(&self, defaults: &Config) -> Arg {
        let mut arg = Arg::new(self.name)
            .long(self.flag().trim_start_matches('-').to_owned())
            .env(self.env())
            .value_name(self.value_name)
            .help(plain(self.help));
        if self.secret {
            arg = arg.hide_env_values(true);
        }
        if let Some(default) = self.shown(defaults) {
            arg = arg.default_value(default);
        }
        (self.kind_arg)(arg)
    }
}

/// Builds one [`Setting`] from a table entry; options not given take these values.
macro_rules! setting {
    (@some) => { None };
    (@some $value:expr) => { Some($value) };
    ($name:ident, $kind:ty, $value_name:literal, $help:literal
     $(, range = ($min:expr, $max:expr))?
     $(, flag = $flag:literal)?
     $(, readme_default = $readme_default:literal)?
     $(, secret = $secret:literal)?) => {
        Setting {
            name: stringify!($name),
            flag: setting!(@some $($flag)?),
            value_name: $value_name,
            help: $help,
            readme_default: setting!(@some $($readme_default)?),
            secret: false $(|| $secret)?,
            value_optional: <$kind as Kind>::VALUE_OPTIONAL,
            range: setting!(@some $(Range {
                min: $min as u64,
                max: $max as u64,
                of: |config| u64::try_from(config.$name).unwrap_or(u64::MAX),
            })?),
            kind_arg: <$kind as Kind>::arg,
            show: |config| <$kind as Kind>::show(&config.$name),
            apply: |config, matches| {
                if let Some(value) = <$kind as Kind>::take(matches, stringify!($name)) {
                    config.$name = value;
                }
            },
        }
    };
}

/// Declares every setting once; see the module documentation for what it generates.
macro_rules! settings {
    ($(
        $(#[$attr:meta])*
        $name:ident: $ty:ty [$kind:ty] = $default:expr, $value_name:literal, $help:literal
        $(, $option:ident = $value:tt)*;
    )*) => {
        /// Everything a herald server needs to start. `Config::default()` is what `herald
        /// serve` runs with when given no flags. Each field is also a TOML key and a flag
        /// (see [`SETTINGS`](crate::config::settings::SETTINGS)).
        ///
        /// ```
        /// let mut config = herald::Config::default();
        /// config.listen = "127.0.0.1:0".parse().unwrap();
        /// config.threads = 1;
        /// assert!(config.validate().is_ok());
        /// ```
        ///
        /// `Debug` shows the settings with their secrets (`publish_token`, `subscribe_key`,
        /// `publish_key`, the credentials in `redis_url`) replaced by `***`.
        #[derive(Clone, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Config {
            $(
                #[doc = $help]
                #[doc = ""]
                $(#[$attr])*
                pub $name: $ty,
            )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $($name: $default,)* }
            }
        }

        /// Every setting, in README's order.
        pub static SETTINGS: &[Setting] = &[
            $(setting!($name, $kind, $value_name, $help $(, $option = $value)*),)*
        ];
    };
}

settings! {
    /// Port 0 picks a free port.
    listen: SocketAddr [Text<SocketAddr>] = default_listen(), "ADDR",
        "Subscriber (and publish) address; port 0 picks a free port";
    /// When set, the main listener refuses publishes with 403, so publishing can stay on a
    /// private interface.
    publish_listen: Option<SocketAddr> [Optional<Text<SocketAddr>>] = None, "ADDR",
        "Separate address for `POST /publish`; the main listener then answers `403` to publishes";
    threads: usize [Text<usize>] = default_threads(), "N",
        "Event loops, all accepting from one listening socket per address",
        range = (1, THREADS_MAX), readme_default = "one per core";
    history_events: usize [Text<usize>] = HISTORY_EVENTS_DEFAULT, "N",
        "Events kept per topic for resume",
        range = (1, HISTORY_EVENTS_MAX);
    history_bytes: usize [Size] = HISTORY_BYTES_DEFAULT, "SIZE",
        "Bytes of encoded events kept per topic for resume",
        range = (1, HISTORY_BYTES_MAX);
    history_total_bytes: usize [Size] = HISTORY_TOTAL_BYTES_DEFAULT, "SIZE",
        "Bytes of history across all topics",
        range = (1, HISTORY_BYTES_MAX);
    /// Expiry is lazy: a topic drops what expired when it is published to or resumed from.
    #[serde(deserialize_with = "deserialize_millis")]
    history_ttl: u64 [Millis] = 0, "DURATION",
        "How long an event is kept for resume and replay (`30s`, `10m`, `2h`); older events are neither replayed nor counted as kept, and a resume across them gets the gap event; 0 means until evicted",
        range = (0, HISTORY_TTL_MS_MAX);
    /// Empty: no CORS headers.
    cors_origins: Vec<String> [List] = Vec::new(), "ORIGIN",
        "Allowed origin, repeatable (`HERALD_CORS_ORIGINS` is comma-separated); `*` for any",
        flag = "cors-origin";
    publish_token: Option<String> [Optional<Text<String>>] = None, "TOKEN",
        "Require `Authorization: Bearer TOKEN` to publish",
        secret = true;
    retry_ms: u32 [Text<u32>] = RETRY_MS_DEFAULT, "MS",
        "Reconnect delay sent in each stream's first `retry:` frame",
        range = (0, RETRY_MS_MAX);
    gap_event: String [Text<String>] = GAP_EVENT_DEFAULT.to_owned(), "NAME",
        "Event name that tells a resuming client its Last-Event-ID is older than the history";
    max_topics_per_subscription: usize [Text<usize>] = TOPICS_PER_SUBSCRIPTION_DEFAULT, "N",
        "Topics per subscription or publish",
        range = (1, TOPICS_PER_SUBSCRIPTION_MAX);
    max_topic_bytes: usize [Text<usize>] = TOPIC_BYTES_DEFAULT, "N",
        "Longest topic name, in bytes",
        range = (1, TOPIC_BYTES_MAX);
    /// Each pattern is a ring of its own on every loop, fed by every event under it.
    max_patterns_per_subscription: usize [Text<usize>] = PATTERNS_PER_SUBSCRIPTION_DEFAULT, "N",
        "Wildcard topics (`prefix*`) per subscription, counted among its topics too; 0 refuses wildcards",
        range = (0, TOPICS_PER_SUBSCRIPTION_MAX);
    min_pattern_prefix: usize [Text<usize>] = PATTERN_PREFIX_MIN_DEFAULT, "N",
        "Shortest prefix of a wildcard topic, in bytes; `*` alone (every topic) is allowed only at 0",
        range = (0, TOPIC_BYTES_MAX);
    max_publish_bytes: usize [Size] = PUBLISH_BYTES_DEFAULT, "SIZE",
        "Largest publish body (bigger gets `413`)",
        range = (1, PUBLISH_BYTES_MAX);
    max_batch_events: usize [Text<usize>] = BATCH_EVENTS_DEFAULT, "N",
        "Events in one batch publish (NDJSON or a JSON array; more gets `413`)",
        range = (1, BATCH_EVENTS_MAX);
    max_lag_bytes: usize [Size] = LAG_BYTES_DEFAULT, "SIZE",
        "How far a subscriber may fall behind before it is closed (it then resumes from history)";
    max_head_bytes: usize [Size] = HEAD_BYTES_DEFAULT, "SIZE",
        "Largest request head (bigger gets `431`)",
        range = (HEAD_BYTES_MIN, HEAD_BYTES_MAX);
    demo: bool [Text<bool>] = true, "BOOL",
        "Serve the demo page on `/`";
    head_timeout_ms: u64 [Text<u64>] = HEAD_TIMEOUT_MS_DEFAULT, "MS",
        "Time to send a request head and body; then `408` and close",
        range = (TIMER_MS_MIN, TIMER_MS_MAX);
    heartbeat_ms: u64 [Text<u64>] = HEARTBEAT_MS_DEFAULT, "MS",
        "A stream quiet this long gets a `:` comment line; one whose client takes no bytes for twice this long is closed as a slow consumer",
        range = (TIMER_MS_MIN, TIMER_MS_MAX);
    idle_timeout_ms: u64 [Text<u64>] = IDLE_TIMEOUT_MS_DEFAULT, "MS",
        "A keep-alive connection idle this long between requests is closed",
        range = (TIMER_MS_MIN, TIMER_MS_MAX);
    /// Trades latency for fewer system calls: one wake-up and one write per stream carry
    /// everything that arrived during the rest; what arrived while a loop wrote is taken
    /// without one (BENCHMARKS.md has the curve).
    coalesce_ms: u64 [Text<u64>] = 0, "MS",
        "After writing to streams, once nothing new arrived meanwhile, a loop rests this long before it looks again, so the events, publishes and requests of that time are taken in one turn and each stream's events go out in one write (each stays its own SSE event): fewer wake-ups and writes for at most this much latency; 0 never rests",
        range = (0, COALESCE_MS_MAX);
    /// Each stream gets a random lifetime between 90 % and 100 % of this, so reconnects
    /// spread out. When not 0, at least 1 s and at most [`STREAM_LIFETIME_MS_MAX`].
    max_stream_lifetime_ms: u64 [Text<u64>] = 0, "MS",
        "Streams live 90-100 % of this, then get a jittered `retry:` hint and are closed; 0 means unlimited";
    shutdown_timeout_ms: u64 [Text<u64>] = SHUTDOWN_TIMEOUT_MS_DEFAULT, "MS",
        "How long a graceful shutdown (SIGTERM, SIGINT) may take before remaining connections are dropped",
        range = (TIMER_MS_MIN, TIMER_MS_MAX);
    /// A restart is then not a reconnect storm.
    shutdown_retry_window_ms: u64 [Text<u64>] = SHUTDOWN_RETRY_WINDOW_MS_DEFAULT, "MS",
        "At shutdown each subscriber gets `retry:` of `--retry-ms` plus a random share of this window",
        range = (0, TIMER_MS_MAX);
    /// The limit in force is [`Config::effective_max_connections`].
    max_connections: usize [Text<usize>] = 0, "N",
        "Open connections; past it new ones get `503` with `Retry-After`. 0 means the open-file limit minus 64 (and minus `--max-publish-connections` with `--publish-listen`); `herald serve` first raises its soft open-file limit to the hard one and logs the resulting ceiling at `info` (`herald_connections_max` in `/metrics`)",
        range = (0, CONNECTIONS_MAX);
    max_connections_per_ip: usize [Text<usize>] = 0, "N",
        "Open connections per client address; past it `429` with `Retry-After`; 0 means unlimited",
        range = (0, CONNECTIONS_MAX);
    /// Other peers are the client themselves.
    trusted_proxies: Vec<String> [List] = Vec::new(), "CIDR",
        "Proxy address block (`10.0.0.0/8`, `::1`) whose `--forwarded-header` names the client; repeatable (`HERALD_TRUSTED_PROXIES` is comma-separated)",
        flag = "trusted-proxy";
    /// Token topics are exact names, `prefix*` patterns or `*`.
    subscribe_key: Option<String> [Optional<Text<String>>] = None, "SECRET",
        "HS256 secret; `/events` then needs a JWT whose `subscribe` claim lists its topics",
        secret = true;
    publish_key: Option<String> [Optional<Text<String>>] = None, "SECRET",
        "HS256 secret; `/publish` then also accepts a JWT whose `publish` claim lists its topics",
        secret = true;
    /// Read at start (a file that is not a usable public key stops start-up) and again on
    /// SIGHUP or [`Handle::reload_keys`](crate::Handle::reload_keys).
    subscribe_public_key: Option<String> [Optional<Text<String>>] = None, "FILE",
        "PEM public key (RSA, EC P-256 or P-384, Ed25519); `/events` then needs a JWT it signed, with an algorithm of `--jwt-algorithm` (see [Identity provider keys](#identity-provider-keys))";
    /// A URL is fetched by a thread of its own, never an event loop, every `jwks_refresh`
    /// and on an unknown `kid` (at most once per
    /// [`JWKS_REFRESH_GAP_MS`]).
    subscribe_jwks: Option<String> [Optional<Text<String>>] = None, "SOURCE",
        "JWK Set (`https://` URL or file) whose keys sign subscriber JWTs; a key's `alg`, or else its type, says which algorithm it accepts; a token's `kid` picks the key";
    /// Read at start and on SIGHUP, like `subscribe_public_key`.
    publish_public_key: Option<String> [Optional<Text<String>>] = None, "FILE",
        "PEM public key; `/publish` then also accepts a JWT it signed whose `publish` claim lists its topics";
    /// Like `subscribe_jwks`; the same URL for both roles is fetched once.
    publish_jwks: Option<String> [Optional<Text<String>>] = None, "SOURCE",
        "JWK Set (`https://` URL or file) whose keys sign publisher JWTs";
    /// Never HS256: that is the secrets' algorithm, and a public key must never check a MAC.
    jwt_algorithms: Vec<String> [List] = Vec::new(), "ALG",
        "Algorithm that PEM keys and JWKS RSA keys without `alg` accept, repeatable (`HERALD_JWT_ALGORITHMS` is comma-separated): `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`, `ES256`, `ES384`, `EdDSA`; none means by key type (RSA: RS256, P-256: ES256, P-384: ES384, Ed25519: EdDSA)",
        flag = "jwt-algorithm";
    jwt_issuer: Option<String> [Optional<Text<String>>] = None, "ISS",
        "Every JWT must carry this `iss` (else `401`)";
    jwt_audience: Option<String> [Optional<Text<String>>] = None, "AUD",
        "Every JWT must carry this `aud` (a string, or an array that contains it; else `401`)";
    /// Also refetched when a token names an unknown `kid`, at most once per
    /// [`JWKS_REFRESH_GAP_MS`].
    #[serde(deserialize_with = "deserialize_millis")]
    jwks_refresh: u64 [Millis] = JWKS_REFRESH_MS_DEFAULT, "DURATION",
        "How often JWKS URLs are fetched again (`5m`, `1h`); also on a token with an unknown `kid`, at most once per 10 s; a failed fetch keeps the last keys",
        range = (JWKS_REFRESH_GAP_MS, JWKS_REFRESH_MS_MAX);
    jwks_ca_file: Option<String> [Optional<Text<String>>] = None, "FILE",
        "PEM CA certificates that JWKS `https://` fetches trust instead of the bundled Mozilla roots";
    /// Called on the worker pool (`auth_workers`), never on an event loop; an embedder's
    /// `Authorize` hook takes its place.
    auth_url: Option<String> [Optional<Text<String>>] = None, "URL",
        "The application's auth endpoint (`http://` or `https://`): each `GET /events` is first `POST`ed there with the client's cookies, `Authorization`, address and topics; a 2xx admits (its JSON may name the allowed topics and an expiry), `401` and `403` are passed on, anything else is `503` (see [Auth callback](#auth-callback))",
        secret = true;
    auth_timeout_ms: u64 [Text<u64>] = AUTH_TIMEOUT_MS_DEFAULT, "MS",
        "How long a subscription waits for the application's decision, queue and call together; then `503`",
        range = (TIMER_MS_MIN, AUTH_TIMEOUT_MS_MAX);
    auth_workers: usize [Text<usize>] = AUTH_WORKERS_DEFAULT, "N",
        "Threads that call the auth endpoint: the most calls in flight",
        range = (1, AUTH_WORKERS_MAX);
    auth_queue: usize [Text<usize>] = AUTH_QUEUE_DEFAULT, "N",
        "Subscriptions waiting for an auth worker; past it `503` at once",
        range = (1, AUTH_QUEUE_MAX);
    auth_publish: bool [Switch] = false, "BOOL",
        "Ask the auth endpoint before each publish too (`\"action\":\"publish\"`); the topics of the body must be within the answer's `topics`";
    auth_cache_ms: u64 [Text<u64>] = 0, "MS",
        "How long a decision is reused for the same question (credentials, address, topics); 0 never",
        range = (0, AUTH_CACHE_MS_MAX);
    bus: BusKind [Text<BusKind>] = BusKind::Embedded, "BUS",
        "`embedded` (one node) or `redis` (nodes sharing one Redis Stream; see [Cluster mode](#cluster-mode))";
    redis_url: String [Text<String>] = REDIS_URL_DEFAULT.to_owned(), "URL",
        "Redis for `--bus redis`: `redis://[user:password@]host:port/db`, or `rediss://` for TLS; errors and logs show it with the password as `***`",
        secret = true;
    redis_stream: String [Text<String>] = REDIS_STREAM_DEFAULT.to_owned(), "NAME",
        "The Redis Stream every node appends to and reads";
    /// Resumes older than what the stream keeps get the gap event; see
    /// [`Config::effective_redis_maxlen`].
    redis_maxlen: usize [Text<usize>] = 0, "N",
        "Approximate length the stream is trimmed to (`XADD MAXLEN ~`); 0 means `--history-total-bytes` / 1 KiB, at least `--history-events`",
        range = (0, REDIS_MAXLEN_MAX);
    /// Read once at start; a file that cannot be read or parsed stops the start.
    redis_tls_ca_file: Option<String> [Optional<Text<String>>] = None, "FILE",
        "PEM CA certificate(s) that verify Redis's certificate with a `rediss://` URL instead of the system's roots; the name verified is the URL's host, or the address Sentinel names (see [Cluster mode](#cluster-mode))";
    redis_tls_cert_file: Option<String> [Optional<Text<String>>] = None, "FILE",
        "PEM client certificate (chain) for a Redis with `tls-auth-clients`; needs `--redis-tls-key-file` and a `rediss://` URL";
    redis_tls_key_file: Option<String> [Optional<Text<String>>] = None, "FILE",
        "PEM private key of `--redis-tls-cert-file`";
    /// Asked in turn; the first that names a primary which says it is one wins.
    redis_sentinels: Vec<String> [List] = Vec::new(), "HOST:PORT",
        "Redis Sentinel to ask for the primary of `--redis-master-name`, repeatable (`HERALD_REDIS_SENTINELS` is comma-separated); herald follows a failover, and `--redis-url` then gives only the scheme, credentials and database",
        flag = "redis-sentinel";
    redis_master_name: String [Text<String>] = REDIS_MASTER_NAME_DEFAULT.to_owned(), "NAME",
        "The primary's name in Sentinel (`--redis-sentinel`)";
    /// 0 answers as soon as the primary stored the event (asynchronous replication).
    redis_wait_replicas: usize [Text<usize>] = 0, "N",
        "A publish is answered only once `WAIT` confirms this many replicas hold it, otherwise `503` (the event may still be stored); 0 answers when the primary has it (see [Cluster mode](#cluster-mode))",
        range = (0, REDIS_WAIT_REPLICAS_MAX);
    #[serde(deserialize_with = "deserialize_millis")]
    redis_wait_timeout: u64 [Millis] = REDIS_WAIT_TIMEOUT_MS_DEFAULT, "DURATION",
        "How long `WAIT` may take for `--redis-wait-replicas` (`500ms`, `2s`) before the publish gets `503`",
        range = (1, REDIS_WAIT_TIMEOUT_MS_MAX);
    /// Asked in turn for `CLUSTER SLOTS` when the slot's owner is not known.
    redis_cluster_nodes: Vec<String> [List] = Vec::new(), "HOST:PORT",
        "A node of a Redis Cluster to start from, repeatable (`HERALD_REDIS_CLUSTER_NODES` is comma-separated): herald then connects to the primary that owns the stream's hash slot and follows `MOVED`; `--redis-url` gives only the scheme and credentials (see [Cluster mode](#cluster-mode))",
        flag = "redis-cluster-node";
    /// An unreadable or malformed hop ends the walk at the nearest trusted proxy.
    forwarded_header: ForwardedHeader [Text<ForwardedHeader>] = ForwardedHeader::XForwardedFor, "HEADER",
        "The header a trusted proxy names the client in: `x-forwarded-for` or `forwarded` (RFC 7239); the other is never read (see [Client address](#client-address))";
    ipv6_prefix_per_ip: u8 [Text<u8>] = IPV6_PREFIX_PER_IP_DEFAULT, "BITS",
        "IPv6 clients count for `--max-connections-per-ip` by their network of this many bits (1-128); IPv4-mapped IPv6 counts as IPv4",
        range = (1, 128);
    max_publish_connections: usize [Text<usize>] = PUBLISH_CONNECTIONS_DEFAULT, "N",
        "Open connections on `--publish-listen`, counted apart from `--max-connections` and `--max-connections-per-ip`; past it `503` with `Retry-After: 1`",
        range = (1, CONNECTIONS_MAX);
    /// Read by the `herald` binary, which runs the feed; `Server` ignores it.
    demo_feed: bool [Switch] = false, "BOOL",
        "Publish sample `tick`, `metrics` and `alert` events to topic `demo` every second, so the demo page is alive";
    /// Read by the `herald` binary, which sets up logging; `Server` ignores it.
    #[serde(deserialize_with = "deserialize_level")]
    log_level: log::LevelFilter [Level] = log::LevelFilter::Warn, "LEVEL",
        "`error`, `warn`, `info`, `debug` or `trace` (what each adds: see [Logs](#logs))";
    /// Read by the `herald` binary, which sets up logging; `Server` ignores it.
    log_format: LogFormat [Text<LogFormat>] = LogFormat::Logfmt, "FORMAT",
        "`logfmt` or `json` (one object per line: `ts`, `level`, `target`, `msg`, then the event's fields); on stderr";
    /// Lines go to the `herald::access` target at `info`, whatever `log_level` says.
    access_log: bool [Switch] = false, "BOOL",
        "One `info` line per finished request or stream (client, method, path, status, bytes, duration, topics, close reason; never the query or a token; see [Logs](#logs))";
}

/// The default `listen` address.
fn default_listen() -> SocketAddr {
    // The literal is a valid socket address; a test below parses it.
    LISTEN_DEFAULT.parse().unwrap_or_else(|_| unreachable!())
}

/// `--config FILE`: the one flag that is not a setting.
const CONFIG_FILE: (&str, &str, &str) = (
    "config",
    "FILE",
    "TOML file with settings; its keys are the setting names with underscores (`history_events = 100`)",
);

/// The `herald serve` command: `--config` and one flag per setting, with its default.
pub fn serve_command() -> Command {
    let (name, value_name, help) = CONFIG_FILE;
    let config = Arg::new(name)
        .long(name)
        .env("HERALD_CONFIG")
        .value_name(value_name)
        .value_parser(clap::value_parser!(std::path::PathBuf))
        .help(plain(help));
    let defaults = Config::default();
    Command::new("serve")
        .about("Run the server.")
        .arg(config)
        .args(SETTINGS.iter().map(|setting| setting.arg(&defaults)))
}

/// The TOML file `--config` (or `HERALD_CONFIG`) names, if any.
pub fn config_file(matches: &ArgMatches) -> Option<&std::path::Path> {
    matches
        .get_one::<std::path::PathBuf>(CONFIG_FILE.0)
        .map(|path| path.as_path())
}

/// Sets in `config` every setting given as a flag or `HERALD_*` variable, so they win over
/// the file `config` was read from; clap's defaults are left out, since they are
/// `Config::default()`'s, which the file already overrode.
pub fn apply_given(config: &mut Config, matches: &ArgMatches) {
    apply_from(config, matches, |source| {
        matches!(source, ValueSource::CommandLine | ValueSource::EnvVariable)
    });
}

fn apply_from(config: &mut Config, matches: &ArgMatches, wanted: fn(ValueSource) -> bool) {
    for setting in SETTINGS {
        if matches.value_source(setting.name).is_some_and(wanted) {
            (setting.apply)(config, matches);
        }
    }
}

/// `help` for the terminal: Markdown's backticks dropped, `[text](#anchor)` links as `text`.
fn plain(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut rest = help;
    while let Some(open) = rest.find('[') {
        let link = rest[open..]
            .find("](#")
            .filter(|&middle| !rest[open + 1..open + middle].contains(['[', ']']))
            .and_then(|middle| Some((middle, rest[open + middle..].find(')')? + middle)));
        match link {
            Some((middle, close)) => {
                out.push_str(&rest[..open]);
                out.push_str(&rest[open + 1..open + middle]);
                rest = &rest[open + close + 1..];
            }
            None => {
                out.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out.replace('`', "")
}

/// README's configuration table: `--config`, then every setting with its default.
pub fn readme_table() -> String {
    let defaults = Config::default();
    let mut table = String::from("| flag | default | meaning |\n|---|---|---|\n");
    let (name, value_name, help) = CONFIG_FILE;
    table.push_str(&format!("| `--{name} {value_name}` | none | {help} |\n"));
    for setting in SETTINGS {
        let default = match (setting.readme_default, setting.shown(&defaults)) {
            (Some(text), _) => text.to_owned(),
            (None, Some(value)) => format!("`{value}`"),
            (None, None) => "none".to_owned(),
        };
        let value = match setting.value_optional {
            true => format!("[{}]", setting.value_name),
            false => setting.value_name.to_owned(),
        };
        table.push_str(&format!(
            "| `{} {value}` | {default} | {} |\n",
            setting.flag(),
            setting.help
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_in_help_parse_back_to_config_default() {
        let matches = serve_command().try_get_matches_from(["serve"]).unwrap();
        // A config that differs from the default in every setting with a default.
        let mut config: Config = toml::from_str(
            "listen = \"10.0.0.1:1\"\nthreads = 99\nhistory_events = 7\nhistory_bytes = 7\n\
             history_ttl = \"10m\"\n\
             history_total_bytes = 7\nretry_ms = 7\ngap_event = \"x\"\n\
             max_topics_per_subscription = 7\nmax_topic_bytes = 7\nmax_publish_bytes = 7\n\
             max_batch_events = 7\n\
             max_lag_bytes = 7\nmax_head_bytes = 7\ndemo = false\nhead_timeout_ms = 7\n\
             heartbeat_ms = 7\nidle_timeout_ms = 7\nmax_stream_lifetime_ms = 7\n\
             shutdown_timeout_ms = 7\nshutdown_retry_window_ms = 7\nmax_connections = 7\n\
             max_connections_per_ip = 7\nbus = \"redis\"\nredis_url = \"x\"\n\
             redis_stream = \"x\"\nredis_maxlen = 7\nforwarded_header = \"forwarded\"\n\
             ipv6_prefix_per_ip = 7\nmax_publish_connections = 7\ndemo_feed = true\n\
             log_level = \"trace\"\nlog_format = \"json\"\naccess_log = true\ncoalesce_ms = 7\n\
             max_patterns_per_subscription = 7\nmin_pattern_prefix = 7\n\
             redis_master_name = \"x\"\nredis_wait_replicas = 7\nredis_wait_timeout = 7\n\
             jwks_refresh = \"10m\"\nauth_timeout_ms = 7000\nauth_workers = 7\nauth_queue = 7\n\
             auth_publish = true\nauth_cache_ms = 7\n",
        )
        .unwrap();
        let defaults = Config::default();
        for setting in SETTINGS {
            let has_default = setting.shown(&defaults).is_some();
            assert_eq!(
                matches.value_source(setting.name) == Some(ValueSource::DefaultValue),
                has_default,
                "{}",
                setting.name
            );
            if has_default {
                assert_ne!(
                    setting.shown(&config),
                    setting.shown(&defaults),
                    "{}",
                    setting.name
                );
            }
        }
        apply_from(&mut config, &matches, |source| {
            source == ValueSource::DefaultValue
        });
        assert_eq!(config, defaults);
    }

    #[test]
    fn flags_and_env_names_are_the_documented_ones() {
        let names: Vec<String> = SETTINGS.iter().map(Setting::flag).collect();
        assert!(names.contains(&"--cors-origin".to_owned()));
        assert!(names.contains(&"--trusted-proxy".to_owned()));
        let cors = SETTINGS.iter().find(|s| s.name == "cors_origins").unwrap();
        assert_eq!(cors.env(), "HERALD_CORS_ORIGINS");
        serve_command().debug_assert();
    }

    #[test]
    fn help_is_plain_text() {
        assert_eq!(
            plain("`redis` (see [Cluster mode](#cluster-mode)), [1-2] `*`"),
            "redis (see Cluster mode), [1-2] *"
        );
        assert_eq!(plain("a [b](#c"), "a [b](#c");
        assert_eq!(plain("[x] [b](#c)"), "[x] b");
    }

    #[test]
    fn byte_sizes_show_in_their_largest_unit() {
        for (bytes, shown) in [
            (0, "0"),
            (1000, "1000"),
            (8 * 1024, "8KiB"),
            (512 * 1024, "512KiB"),
            (1 << 20, "1MiB"),
            (64 << 20, "64MiB"),
            (16 << 30, "16GiB"),
        ] {
            assert_eq!(show_bytes(bytes), shown);
            assert_eq!(parse_bytes(shown), Ok(bytes));
        }
    }

    #[test]
    fn every_setting_is_a_toml_key() {
        for setting in SETTINGS {
            let shown = setting.shown(&Config::default());
            let text = match (setting.name, shown) {
                (_, None) => continue,
                (
                    "listen" | "gap_event" | "redis_url" | "redis_stream" | "bus"
                    | "forwarded_header" | "log_level" | "log_format" | "redis_master_name"
                    | "redis_wait_timeout" | "jwks_refresh",
                    Some(value),
                ) => {
                    format!("{} = {value:?}", setting.name)
                }
                (name, Some(value)) if value.ends_with("iB") => {
                    format!("{name} = {}", parse_bytes(&value).unwrap())
                }
                (name, Some(value)) => format!("{name} = {value}"),
            };
            let parsed: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed, Config::default(), "{text}");
        }
    }
}
