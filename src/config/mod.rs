//! Server configuration: the defaults and ceilings as named consts, and validation.
//!
//! `Config` is plain data, declared once with every setting's flag, default, range and help
//! in the table of [`settings`]. The command line (`main.rs`) fills it from flags,
//! `HERALD_*` environment variables and an optional TOML file; library users build it in
//! code. Either way `Config::validate` runs before a server starts and names the first bad
//! setting in one line. No I/O here.

use std::fmt;

use serde::Deserialize;

mod kind;
mod limits;
pub mod settings;
mod validate;

pub(crate) use limits::Limits;
pub use settings::{Config, Setting, SETTINGS};
pub use validate::ConfigError;

/// Address the subscriber (and, by default, publish) listener binds to.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
/// Event loop threads are capped: each owns a listener and a poller, and past a few hundred
/// the per-thread history copies cost more than the parallelism gives.
pub const THREADS_MAX: usize = 256;
/// Events kept per topic for resume, by default.
pub const HISTORY_EVENTS_DEFAULT: usize = 1_000;
/// Ceiling on `history_events`: the per-topic ring is searched by binary search, but a
/// million entries per topic per thread is already more than any resume needs.
pub const HISTORY_EVENTS_MAX: usize = 1_000_000;
/// Bytes of encoded frames kept per topic for resume, by default.
pub const HISTORY_BYTES_DEFAULT: usize = 1024 * 1024;
/// Bytes of history across all topics, by default: the bound that stops a flood of distinct
/// topic names from exhausting memory.
pub const HISTORY_TOTAL_BYTES_DEFAULT: usize = 64 * 1024 * 1024;
/// Ceiling on `history_ttl` (ms): 30 days, past which a time to live bounds nothing the
/// byte budgets do not.
pub const HISTORY_TTL_MS_MAX: u64 = 30 * 86_400_000;
/// Ceiling on any history byte budget (per topic or total).
pub const HISTORY_BYTES_MAX: usize = 16 * 1024 * 1024 * 1024;
/// Reconnect delay sent to every new stream in its first `retry:` frame.
pub const RETRY_MS_DEFAULT: u32 = 3_000;
/// Ceiling on `retry_ms`: one day. Longer hints are almost certainly unit mistakes.
pub const RETRY_MS_MAX: u32 = 86_400_000;
/// Name of the event that tells a resuming client its history has a gap.
pub const GAP_EVENT_DEFAULT: &str = "gap";
/// Topics one subscription may name, by default.
pub const TOPICS_PER_SUBSCRIPTION_DEFAULT: usize = 16;
/// Ceiling on `max_topics_per_subscription`: a subscriber merges its topics' rings on every
/// write, so this bounds the merge width.
pub const TOPICS_PER_SUBSCRIPTION_MAX: usize = 256;
/// Wildcard topics (`prefix*`) one subscription may name, by default: each is fed every
/// event under its prefix, so a few cover what an application needs.
pub const PATTERNS_PER_SUBSCRIPTION_DEFAULT: usize = 4;
/// Shortest wildcard prefix in bytes, by default: `*` alone, every topic, must be asked for.
pub const PATTERN_PREFIX_MIN_DEFAULT: usize = 1;
/// Longest topic name in bytes, by default.
pub const TOPIC_BYTES_DEFAULT: usize = 128;
/// Ceiling on `max_topic_bytes`: names are interned per thread and counted in the history budget.
pub const TOPIC_BYTES_MAX: usize = 1024;
/// Largest publish body accepted, by default (bigger gets 413).
pub const PUBLISH_BYTES_DEFAULT: usize = 512 * 1024;
/// Ceiling on `max_publish_bytes`: a body is held whole in memory while it is parsed.
pub const PUBLISH_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Events one batch publish may carry, by default (more gets 413). A batch holds the
/// publish lock (embedded bus) or one `MULTI` (Redis) while it is stored, so other
/// publishers wait behind it; a thousand small events is a few milliseconds at most.
pub const BATCH_EVENTS_DEFAULT: usize = 1_000;
/// Ceiling on `max_batch_events`: a Redis writer sends a batch as one transaction, and the
/// embedded bus needs room for all of it in every loop's inbox at once.
pub const BATCH_EVENTS_MAX: usize = 16_384;
/// Bytes a subscriber may fall behind the newest event before it is closed, by default.
pub const LAG_BYTES_DEFAULT: usize = 1024 * 1024;
/// Largest request head (request line plus headers), by default (bigger gets 431).
/// Browser EventSource heads are small; cookies are the tail.
pub const HEAD_BYTES_DEFAULT: usize = 8 * 1024;
/// Smallest accepted `max_head_bytes`: a browser's head with a few cookies needs this much.
pub const HEAD_BYTES_MIN: usize = 1024;
/// Ceiling on `max_head_bytes`: every connection that is still reading its head holds a
/// buffer of this size.
pub const HEAD_BYTES_MAX: usize = 64 * 1024;

/// Time a client has to send a complete request head (and body), by default; then 408.
pub const HEAD_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Quiet time after which a stream gets a heartbeat comment, by default. Shorter than the
/// 60 s idle timeout of common proxies.
pub const HEARTBEAT_MS_DEFAULT: u64 = 15_000;
/// Time a keep-alive connection may sit between requests, by default.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Smallest accepted timeout or interval: the timer wheel ticks every 100 ms.
pub const TIMER_MS_MIN: u64 = 100;
/// Largest accepted timeout or interval: one hour.
pub const TIMER_MS_MAX: u64 = 3_600_000;
/// Longest `coalesce_ms`: a second of added latency is past any use of the hold.
pub const COALESCE_MS_MAX: u64 = 1_000;
/// How long a subscription waits for the application's decision, by default: long
/// enough for a session lookup, short enough that a client is not left hanging.
pub const AUTH_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Longest `auth_timeout_ms`: a browser gives up on a silent connection long before this.
pub const AUTH_TIMEOUT_MS_MAX: u64 = 60_000;
/// Threads calling the auth endpoint, by default.
pub const AUTH_WORKERS_DEFAULT: usize = 4;
/// Most threads calling the auth endpoint: each holds a stack and a connection.
pub const AUTH_WORKERS_MAX: usize = 256;
/// Subscriptions waiting for an auth worker, by default.
pub const AUTH_QUEUE_DEFAULT: usize = 1_024;
/// Most subscriptions waiting for an auth worker (each holds its credentials).
pub const AUTH_QUEUE_MAX: usize = 65_536;
/// Longest `auth_cache_ms`: a decision is not reused past an hour.
pub const AUTH_CACHE_MS_MAX: u64 = 3_600_000;
/// Time a graceful shutdown may take, by default: streams blocked on a full socket get
/// this long to take their parting hint.
pub const SHUTDOWN_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Window over which subscribers told to reconnect at shutdown spread their returns.
pub const SHUTDOWN_RETRY_WINDOW_MS_DEFAULT: u64 = 10_000;
/// Ceiling on `max_connections`.
pub const CONNECTIONS_MAX: usize = 10_000_000;
/// File descriptors kept free of connections (listeners, pollers, wakers, logs).
pub const FDS_RESERVED: usize = 64;
/// Largest accepted stream lifetime: one week.
pub const STREAM_LIFETIME_MS_MAX: u64 = 7 * 24 * 3_600_000;

/// Bits of an IPv6 client address that name one client for `max_connections_per_ip`, by
/// default: a /64 is what one site or one host is given, and a host can pick any address in
/// it, so counting full addresses would let one host open a connection per address.
pub const IPV6_PREFIX_PER_IP_DEFAULT: u8 = 64;
/// Connections the separate publish listener holds at most, by default. It has its own
/// budget so publishers and operators are served while subscribers fill `max_connections`;
/// publishers are a few application servers with keep-alive pools, and scrapers.
pub const PUBLISH_CONNECTIONS_DEFAULT: usize = 128;

/// How often JWKS URLs are fetched again, by default (ms): keys rotate on a scale of days,
/// and an unknown `kid` triggers a fetch sooner.
pub const JWKS_REFRESH_MS_DEFAULT: u64 = 5 * 60_000;
/// Shortest `jwks_refresh` (ms), and the shortest time between two fetches that tokens with
/// unknown `kid`s can cause, so made-up `kid`s cannot flood the identity provider.
pub const JWKS_REFRESH_GAP_MS: u64 = 10_000;
/// Longest `jwks_refresh` (ms): a day.
pub const JWKS_REFRESH_MS_MAX: u64 = 86_400_000;

/// Redis the Redis bus connects to, by default.
pub const REDIS_URL_DEFAULT: &str = "redis://127.0.0.1:6379/0";
/// Stream the Redis bus appends to and reads from, by default.
pub const REDIS_STREAM_DEFAULT: &str = "herald";
/// Longest stream name: Redis takes any key, but a name this long is a mistake.
pub const REDIS_STREAM_BYTES_MAX: usize = 256;
/// Ceiling on `redis_maxlen`: entries Redis keeps in memory for resumes.
pub const REDIS_MAXLEN_MAX: usize = 100_000_000;
/// The primary's name in Sentinel, by default: Sentinel's own example name.
pub const REDIS_MASTER_NAME_DEFAULT: &str = "mymaster";
/// Ceiling on `redis_wait_replicas`: more replicas than any Redis deployment runs.
pub const REDIS_WAIT_REPLICAS_MAX: usize = 64;
/// How long `WAIT` may take by default: a replica on the same network acknowledges in
/// well under a millisecond, so a second means it is gone or far behind.
pub const REDIS_WAIT_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Ceiling on `redis_wait_timeout`: a publisher holds its connection this long at most.
pub const REDIS_WAIT_TIMEOUT_MS_MAX: u64 = 60_000;
/// Sentinels herald asks in turn; more is a mistake in the list.
pub const REDIS_SENTINELS_MAX: usize = 16;
/// Redis Cluster seed nodes herald asks in turn; a few reachable ones are enough, since any
/// node knows every slot's owner.
pub const REDIS_CLUSTER_NODES_MAX: usize = 16;
/// Bytes of history one stream entry is counted as when `redis_maxlen` is derived from
/// `history_total_bytes`: a typical small event with its id and fields.
pub const REDIS_ENTRY_BYTES_ESTIMATE: usize = 1024;

/// Where published events go and where the event loops read them from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process: one node, ids `<start ms>-<sequence>`.
    #[default]
    Embedded,
    /// A Redis Stream shared by every node: ids are stream entry ids.
    Redis,
}

impl fmt::Display for BusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BusKind::Embedded => "embedded",
            BusKind::Redis => "redis",
        })
    }
}

impl std::str::FromStr for BusKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "embedded" => Ok(BusKind::Embedded),
            "redis" => Ok(BusKind::Redis),
            _ => Err(format!("{text:?} is not embedded or redis")),
        }
    }
}

/// The request header that names the client when the peer is a trusted proxy. Only this
/// one is read, so a client cannot pick the header its proxy does not rewrite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx's `$proxy_add_x_forwarded_for`).
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    #[serde(rename = "forwarded")]
    Forwarded,
}

impl fmt::Display for ForwardedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        })
    }
}

impl std::str::FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "x-forwarded-for" => Ok(ForwardedHeader::XForwardedFor),
            "forwarded" => Ok(ForwardedHeader::Forwarded),
            _ => Err(format!("{text:?} is not x-forwarded-for or forwarded")),
        }
    }
}

/// How log lines are written on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `ts=... level=... target=... msg="..." key=value`, one line per event.
    #[default]
    Logfmt,
    /// One JSON object per line: `ts`, `level`, `target`, `msg`, then the event's fields.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Logfmt => "logfmt",
            LogFormat::Json => "json",
        })
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "logfmt" => Ok(LogFormat::Logfmt),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{text:?} is not logfmt or json")),
        }
    }
}

// A default-sized body must be able to become a frame that fits the default lag budget,
// or a single large publish would disconnect every subscriber.
const _: () = assert!(PUBLISH_BYTES_DEFAULT < LAG_BYTES_DEFAULT);
const _: () = assert!(HEAD_BYTES_MIN <= HEAD_BYTES_DEFAULT && HEAD_BYTES_DEFAULT <= HEAD_BYTES_MAX);

/// Shown in place of a secret.
const REDACTED: &str = "***";

impl std::fmt::Debug for Config {
    /// Lists the settings it knows to be harmless and the secrets as `***`; a setting added
    /// later stays out (`..`) until it is listed here, so it cannot leak by default.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |value: &Option<String>| value.as_ref().map(|_| REDACTED);
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("publish_listen", &self.publish_listen)
            .field("threads", &self.threads)
            .field("history_events", &self.history_events)
            .field("history_bytes", &self.history_bytes)
            .field("history_total_bytes", &self.history_total_bytes)
            .field("history_ttl", &self.history_ttl)
            .field("cors_origins", &self.cors_origins)
            .field("publish_token", &secret(&self.publish_token))
            .field("retry_ms", &self.retry_ms)
            .field("gap_event", &self.gap_event)
            .field(
                "max_topics_per_subscription",
                &self.max_topics_per_subscription,
            )
            .field("max_topic_bytes", &self.max_topic_bytes)
            .field(
                "max_patterns_per_subscription",
                &self.max_patterns_per_subscription,
            )
            .field("min_pattern_prefix", &self.min_pattern_prefix)
            .field("max_publish_bytes", &self.max_publish_bytes)
            .field("max_lag_bytes", &self.max_lag_bytes)
            .field("max_head_bytes", &self.max_head_bytes)
            .field("demo", &self.demo)
            .field("head_timeout_ms", &self.head_timeout_ms)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("max_stream_lifetime_ms", &self.max_stream_lifetime_ms)
            .field("shutdown_timeout_ms", &self.shutdown_timeout_ms)
            .field("shutdown_retry_window_ms", &self.shutdown_retry_window_ms)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("subscribe_key", &secret(&self.subscribe_key))
            .field("publish_key", &secret(&self.publish_key))
            .field("subscribe_public_key", &self.subscribe_public_key)
            .field(
                "subscribe_jwks",
                &self.subscribe_jwks.as_deref().map(redact_url),
            )
            .field("publish_public_key", &self.publish_public_key)
            .field(
                "publish_jwks",
                &self.publish_jwks.as_deref().map(redact_url),
            )
            .field("jwt_algorithms", &self.jwt_algorithms)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwks_refresh", &self.jwks_refresh)
            .field("jwks_ca_file", &self.jwks_ca_file)
            .field("bus", &self.bus)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_stream", &self.redis_stream)
            .field("redis_maxlen", &self.redis_maxlen)
            .field("redis_tls_ca_file", &self.redis_tls_ca_file)
            .field("redis_tls_cert_file", &self.redis_tls_cert_file)
            .field("redis_tls_key_file", &self.redis_tls_key_file)
            .field("redis_sentinels", &self.redis_sentinels)
            .field("redis_master_name", &self.redis_master_name)
            .field("redis_wait_replicas", &self.redis_wait_replicas)
            .field("redis_wait_timeout", &self.redis_wait_timeout)
            .field("redis_cluster_nodes", &self.redis_cluster_nodes)
            .field("forwarded_header", &self.forwarded_header)
            .field("ipv6_prefix_per_ip", &self.ipv6_prefix_per_ip)
            .field("max_publish_connections", &self.max_publish_connections)
            .field("demo_feed", &self.demo_feed)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("access_log", &self.access_log)
            .finish_non_exhaustive()
    }
}

/// `url` with its credentials replaced by `***`, for errors and logs: the password of
/// `user:password@` (the whole user part when it has no `:`, where Redis URLs may also put
/// a lone password) and the value of a `pass` or `password` query parameter. Malformed URLs
/// are redacted too: those are the ones printed in errors. The user part runs to the last
/// `@`, so a password with an unescaped `/`, `?` or `@` is still covered.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    let rest = match rest.rfind('@') {
        Some(at) => {
            match rest[..at].split_once(':') {
                Some((user, _)) if !user.contains(['/', '?', '#']) => {
                    out.push_str(user);
                    out.push(':');
                }
                _ => {}
            }
            out.push_str(REDACTED);
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    let Some((path, query)) = rest.split_once('?') else {
        out.push_str(rest);
        return out;
    };
    out.push_str(path);
    for (i, pair) in query.split('&').enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        match pair.split_once('=') {
            Some((key, _))
                if key.eq_ignore_ascii_case("pass") || key.eq_ignore_ascii_case("password") =>
            {
                out.push_str(key);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    out
}

impl Config {
    /// The stream length the Redis bus trims to: `redis_maxlen`, or when that is 0 the
    /// total history budget at [`REDIS_ENTRY_BYTES_ESTIMATE`] per entry, at least
    /// `history_events`, so the stream holds at least what a node's rings can.
    pub fn effective_redis_maxlen(&self) -> usize {
        if self.redis_maxlen != 0 {
            return self.redis_maxlen;
        }
        (self.history_total_bytes / REDIS_ENTRY_BYTES_ESTIMATE)
            .max(self.history_events)
            .min(REDIS_MAXLEN_MAX)
    }

    /// The connection limit in force: `max_connections`, or when that is 0 the soft
    /// open-file limit ([`open_files_limit`]) minus [`FDS_RESERVED`] and, with a publish
    /// listener, minus its budget, so subscribers cannot take the descriptors it needs.
    pub fn effective_max_connections(&self) -> usize {
        if self.max_connections != 0 {
            return self.max_connections;
        }
        let publish = self
            .publish_listen
            .map_or(0, |_| self.max_publish_connections);
        open_files_limit()
            .map_or(10_000, |limit| {
                limit.saturating_sub(FDS_RESERVED).saturating_sub(publish)
            })
            .clamp(1, CONNECTIONS_MAX)
    }
}

/// One thread per core the OS says this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(THREADS_MAX)
}

/// The soft limit on open files (`RLIMIT_NOFILE`); the `herald` binary raises it to the
/// hard limit before the server starts.
pub fn open_files_limit() -> Option<usize> {
    let (soft, _hard) = rlimit::Resource::NOFILE.get().ok()?;
    Some(usize::try_from(soft).unwrap_or(usize::MAX))
}

/// Parses a byte size: a plain number of bytes or a number with a `K`, `KiB`, `M`, `MiB`,
/// `G` or `GiB` suffix (all binary).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte size like 65536, 64KiB or 1MiB"))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "KB" => 1024,
        "M" | "MiB" | "MB" => 1024 * 1024,
        "G" | "GiB" | "GB" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests;
