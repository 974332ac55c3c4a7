//! The limits a running server enforces, turned once from a validated [`Config`] into typed
//! values that carry their units: times are `Duration`s, sizes are bytes (`*_bytes_max`),
//! counts are counts, and "0 means unlimited" settings are `Option`s. The event loops and
//! `conn/` read these, never the raw `*_ms` fields of the config.
//!
//! Settings that are not limits (CORS origins, the forwarded header, trusted proxies, the
//! publish token and keys) are not here: they are the loops' `RequestSettings`.

use std::sync::Arc;
use std::time::Duration;

use super::Config;
use crate::history::topics::HistoryLimits;
use crate::http::route::{RouteConfig, TopicLimits};
use crate::publish::PublishLimits;

/// Every limit the loops and connections enforce, from [`Config::limits`].
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Time a client has to send a complete request head and body (`head_timeout_ms`);
    /// then 408 and close. Also the time a 408 gets to go out.
    pub head_timeout: Duration,
    /// Time a keep-alive connection may sit between requests (`idle_timeout_ms`).
    pub idle_timeout: Duration,
    /// How long a subscription waits for the application's decision (`auth_timeout_ms`).
    pub auth_timeout: Duration,
    /// Quiet time after which a stream gets a heartbeat comment (`heartbeat_ms`); a blocked
    /// stream that writes no byte for `STALLED_HEARTBEATS` of these is a slow consumer.
    /// Also the TCP keepalive and user timeout of every socket.
    pub heartbeat: Duration,
    /// How long a loop rests after a turn that wrote streams, once nothing new arrived
    /// (`coalesce_ms`), gathering what arrives meanwhile into one turn; zero never rests.
    pub coalesce: Duration,
    /// Longest a stream lives (`max_stream_lifetime_ms`): each gets a random 90 to 100 % of
    /// it, then a jittered `retry:` and a close. `None`: streams live until they end.
    pub stream_lifetime: Option<Duration>,
    /// How long a graceful shutdown may take before remaining connections are dropped
    /// (`shutdown_timeout_ms`).
    pub shutdown_timeout: Duration,
    /// Window over which streams sent back at shutdown spread their returns
    /// (`shutdown_retry_window_ms`); may be zero.
    pub shutdown_retry_window: Duration,
    /// Reconnect delay in milliseconds (the `retry:` field's own unit), sent in each
    /// stream's first frame and the base of every later hint (`retry_ms`).
    pub retry_ms: u32,
    /// Name of the event that tells a resuming client its history has a gap (`gap_event`).
    pub gap_event: Arc<str>,
    /// Bytes a stream may fall behind the newest event before it is closed
    /// (`max_lag_bytes`); also the byte budget of a resume's backfill.
    pub lag_bytes_max: usize,
    /// Bytes of a request head buffer (`max_head_bytes`); bigger heads get 431.
    pub head_bytes_max: usize,
    /// Bytes of the largest publish body (`max_publish_bytes`); bigger ones get 413.
    pub publish_body_bytes_max: usize,
    /// Events in one batch publish (`max_batch_events`), from HTTP or a `Handle`; more
    /// are refused whole.
    pub batch_events_max: usize,
    /// Connections admitted on the main listeners across all loops: `max_connections`, or
    /// the one derived from the open-file limit when that is 0.
    pub connections_max: usize,
    /// Connections admitted on the publish listeners across all loops, a budget apart
    /// from `connections_max` (`max_publish_connections`).
    pub publish_connections_max: usize,
    /// Connections per client key (`max_connections_per_ip`); past it 429. `None`:
    /// unlimited.
    pub connections_per_ip_max: Option<usize>,
    /// Leading bits of an IPv6 client address that make its client key
    /// (`ipv6_prefix_per_ip`).
    pub ipv6_prefix_bits: u8,
    /// The checks every publish gets.
    pub publish: PublishLimits,
    /// Topics per subscription and topic name bytes.
    pub topics: TopicLimits,
    /// History kept per topic and in all, in events and bytes.
    pub history: HistoryLimits,
    /// Which routes exist (the publish listener, the demo page).
    pub route: RouteConfig,
}

impl Config {
    /// The limits this config sets, in their units. Call it on a validated config, once
    /// per server: `connections_max` may read the process's open-file limit.
    pub(crate) fn limits(&self) -> Limits {
        let gap_event: Arc<str> = self.gap_event.as_str().into();
        Limits {
            head_timeout: Duration::from_millis(self.head_timeout_ms),
            auth_timeout: Duration::from_millis(self.auth_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            coalesce: Duration::from_millis(self.coalesce_ms),
            stream_lifetime: (self.max_stream_lifetime_ms != 0)
                .then(|| Duration::from_millis(self.max_stream_lifetime_ms)),
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
            shutdown_retry_window: Duration::from_millis(self.shutdown_retry_window_ms),
            retry_ms: self.retry_ms,
            gap_event: gap_event.clone(),
            lag_bytes_max: self.max_lag_bytes,
            head_bytes_max: self.max_head_bytes,
            publish_body_bytes_max: self.max_publish_bytes,
            batch_events_max: self.max_batch_events,
            connections_max: self.effective_max_connections(),
            publish_connections_max: self.max_publish_connections,
            connections_per_ip_max: (self.max_connections_per_ip != 0)
                .then_some(self.max_connections_per_ip),
            ipv6_prefix_bits: self.ipv6_prefix_per_ip,
            publish: PublishLimits {
                topics_max: self.max_topics_per_subscription,
                topic_bytes_max: self.max_topic_bytes,
                frame_bytes_max: self.max_lag_bytes,
                data_bytes_max: self.max_publish_bytes,
                gap_event,
            },
            topics: TopicLimits {
                per_subscription: self.max_topics_per_subscription,
                name_bytes: self.max_topic_bytes,
                patterns_max: self.max_patterns_per_subscription,
                pattern_prefix_min: self.min_pattern_prefix,
            },
            history: HistoryLimits {
                events: self.history_events,
                bytes: self.history_bytes,
                total_bytes: self.history_total_bytes,
                ttl_ms: (self.history_ttl > 0).then_some(self.history_ttl),
            },
            route: RouteConfig {
                publish_listener: self.publish_listen.is_some(),
                demo: self.demo,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_unlimited_and_times_keep_their_milliseconds() {
        let mut config = Config {
            max_stream_lifetime_ms: 0,
            max_connections_per_ip: 0,
            heartbeat_ms: 1_500,
            ..Config::default()
        };
        let limits = config.limits();
        assert_eq!(limits.stream_lifetime, None);
        assert_eq!(limits.connections_per_ip_max, None);
        assert_eq!(limits.heartbeat, Duration::from_millis(1_500));
        config.max_stream_lifetime_ms = 60_000;
        config.max_connections_per_ip = 3;
        let limits = config.limits();
        assert_eq!(limits.stream_lifetime, Some(Duration::from_secs(60)));
        assert_eq!(limits.connections_per_ip_max, Some(3));
        assert_eq!(&*limits.publish.gap_event, config.gap_event);
    }
}
