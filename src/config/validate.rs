//! Validation: `Config::validate` checks every setting against its range and the settings
//! against each other, and names the first bad one in a [`ConfigError`].

use std::fmt;

use super::*;

/// A setting that is out of range or malformed. `Display` is one line naming the setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting's name as in the TOML file (`max_lag_bytes`).
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn fault(setting: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError {
        setting,
        reason: reason.into(),
    })
}

fn within(setting: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return fault(setting, format!("{value} is outside {min}..={max}"));
    }
    Ok(())
}

impl Config {
    /// Checks every setting against its range (from the table in [`settings`]) and the
    /// relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for setting in SETTINGS {
            if let Some(range) = setting.range {
                within(setting.name, (range.of)(self), range.min, range.max)?;
            }
        }
        if self.history_total_bytes < self.history_bytes {
            return fault(
                "history_total_bytes",
                "must be at least history_bytes (one topic's budget)",
            );
        }
        if let Err(reason) = crate::sse::check_event_name(&self.gap_event) {
            return fault("gap_event", reason);
        }
        if self.max_stream_lifetime_ms != 0 {
            within(
                "max_stream_lifetime_ms",
                self.max_stream_lifetime_ms,
                1_000,
                STREAM_LIFETIME_MS_MAX,
            )?;
        }
        if self.max_lag_bytes <= self.max_publish_bytes {
            return fault(
                "max_lag_bytes",
                "must exceed max_publish_bytes, or one large event would disconnect every subscriber",
            );
        }
        for origin in &self.cors_origins {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && origin.bytes().all(|b| b.is_ascii_graphic()));
            if !ok {
                return fault(
                    "cors_origins",
                    format!("{origin:?} is not * or a scheme://host[:port] origin"),
                );
            }
        }
        for block in &self.trusted_proxies {
            if let Err(reason) = crate::client::Cidr::parse(block) {
                return fault("trusted_proxies", reason);
            }
        }
        if let Some(token) = &self.publish_token {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return fault(
                    "publish_token",
                    "must be non-empty printable ASCII without spaces",
                );
            }
        }
        for (setting, key) in [
            ("subscribe_key", &self.subscribe_key),
            ("publish_key", &self.publish_key),
        ] {
            if key.as_deref().is_some_and(str::is_empty) {
                return fault(setting, "must not be empty");
            }
        }
        self.validate_token_keys()?;
        if let Some(url) = &self.auth_url {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.parse::<ureq::http::Uri>().is_err() {
                return fault("auth_url", "must be an http:// or https:// URL");
            }
        }
        if self.publish_listen == Some(self.listen) && self.listen.port() != 0 {
            return fault("publish_listen", "must differ from listen");
        }
        if self.redis_stream.is_empty() || self.redis_stream.len() > REDIS_STREAM_BYTES_MAX {
            return fault(
                "redis_stream",
                format!("must be 1..={REDIS_STREAM_BYTES_MAX} bytes"),
            );
        }
        if self.bus == BusKind::Redis {
            check_redis_url(&self.redis_url).or_else(|reason| fault("redis_url", reason))?;
            self.check_redis_tls()?;
            self.check_redis_sentinels()?;
            self.check_redis_cluster()?;
        }
        Ok(())
    }

    /// TLS files go with a `rediss://` URL, and a client certificate with its key.
    fn check_redis_tls(&self) -> Result<(), ConfigError> {
        let tls = self.redis_url.starts_with("rediss://");
        for (setting, file) in [
            ("redis_tls_ca_file", &self.redis_tls_ca_file),
            ("redis_tls_cert_file", &self.redis_tls_cert_file),
            ("redis_tls_key_file", &self.redis_tls_key_file),
        ] {
            match file {
                Some(path) if path.is_empty() => return fault(setting, "must not be empty"),
                Some(_) if !tls => {
                    return fault(setting, "needs a rediss:// redis_url (TLS to Redis)")
                }
                _ => {}
            }
        }
        match (&self.redis_tls_cert_file, &self.redis_tls_key_file) {
            (Some(_), None) => fault("redis_tls_key_file", "must be set with redis_tls_cert_file"),
            (None, Some(_)) => fault("redis_tls_cert_file", "must be set with redis_tls_key_file"),
            _ => Ok(()),
        }
    }

    /// Each sentinel is a `host:port`; the master name is one printable word.
    fn check_redis_sentinels(&self) -> Result<(), ConfigError> {
        if self.redis_sentinels.len() > REDIS_SENTINELS_MAX {
            return fault(
                "redis_sentinels",
                format!("at most {REDIS_SENTINELS_MAX} sentinels"),
            );
        }
        check_host_ports("redis_sentinels", &self.redis_sentinels)?;
        let name = &self.redis_master_name;
        if name.is_empty() || name.len() > 256 || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return fault(
                "redis_master_name",
                "must be 1..=256 printable ASCII bytes without spaces",
            );
        }
        Ok(())
    }
}

impl Config {
    /// Redis Cluster seeds are `host:port`s, not combined with Sentinel (a cluster fails
    /// over by itself); a cluster has database 0 only; and the stream's name lets the
    /// presence keys share its hash slot (`bus::redis::cluster::presence_prefix`).
    fn check_redis_cluster(&self) -> Result<(), ConfigError> {
        if self.redis_cluster_nodes.is_empty() {
            return Ok(());
        }
        if self.redis_cluster_nodes.len() > REDIS_CLUSTER_NODES_MAX {
            return fault(
                "redis_cluster_nodes",
                format!("at most {REDIS_CLUSTER_NODES_MAX} nodes"),
            );
        }
        check_host_ports("redis_cluster_nodes", &self.redis_cluster_nodes)?;
        if !self.redis_sentinels.is_empty() {
            return fault(
                "redis_cluster_nodes",
                "cannot be combined with redis_sentinels: a Redis Cluster fails over by itself",
            );
        }
        use redis::IntoConnectionInfo;
        let db = self
            .redis_url
            .as_str()
            .into_connection_info()
            .map_or(0, |info| info.redis.db);
        if db != 0 {
            return fault(
                "redis_url",
                "a Redis Cluster has database 0 only (redis_cluster_nodes is set)",
            );
        }
        if crate::bus::redis::cluster::presence_prefix(&self.redis_stream).is_none() {
            return fault(
                "redis_stream",
                "in a Redis Cluster, a name holding `}` needs a hash tag, such as {herald}",
            );
        }
        Ok(())
    }

    /// The public-key settings: names only, no file is read here (the server reads the
    /// keys when it starts, and a key that does not fit `jwt_algorithms` stops it there).
    fn validate_token_keys(&self) -> Result<(), ConfigError> {
        for name in &self.jwt_algorithms {
            if let Err(reason) = crate::auth::keys::public_algorithm(name) {
                return fault("jwt_algorithms", reason);
            }
        }
        for (setting, value) in [
            ("subscribe_public_key", &self.subscribe_public_key),
            ("publish_public_key", &self.publish_public_key),
            ("jwt_issuer", &self.jwt_issuer),
            ("jwt_audience", &self.jwt_audience),
            ("jwks_ca_file", &self.jwks_ca_file),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return fault(setting, "must not be empty");
            }
        }
        for (setting, jwks) in [
            ("subscribe_jwks", &self.subscribe_jwks),
            ("publish_jwks", &self.publish_jwks),
        ] {
            let Some(jwks) = jwks else { continue };
            if jwks.is_empty() {
                return fault(setting, "must not be empty");
            }
            if jwks.starts_with("http://") {
                return fault(
                    setting,
                    "must be an https:// URL or a file (keys fetched over plain HTTP can be swapped on the way)",
                );
            }
            if jwks.starts_with("https://")
                && (jwks.len() == "https://".len() || !jwks.bytes().all(|b| b.is_ascii_graphic()))
            {
                return fault(setting, format!("{:?} is not a URL", redact_url(jwks)));
            }
        }
        Ok(())
    }
}

/// Checks a Redis URL's shape without connecting. Reasons show the URL redacted.
fn check_redis_url(url: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    let shown = redact_url(url);
    if !url.starts_with("redis://")
        && !url.starts_with("rediss://")
        && !url.starts_with("redis+unix://")
        && !url.starts_with("unix://")
    {
        return Err(format!(
            "{shown:?} is not a redis://host:port/db or rediss://host:port/db URL"
        ));
    }
    if url.starts_with("rediss://") && url.contains('#') {
        return Err(format!(
            "{shown:?}: #insecure is refused; give the CA with redis_tls_ca_file"
        ));
    }
    let info = url
        .into_connection_info()
        // The client's message is not expected to quote the URL; if it ever does, redacted.
        .map_err(|error| format!("{shown:?}: {}", error.to_string().replace(url, &shown)))?;
    // The bus parses RESP2 replies; RESP3 maps would read as no entries.
    if info.redis.protocol != redis::ProtocolVersion::RESP2 {
        return Err(format!(
            "{shown:?}: herald speaks RESP2 to Redis; drop ?protocol="
        ));
    }
    Ok(())
}

/// Each address of `list` is a `host:port` with a printable host and a port that is not 0.
fn check_host_ports(setting: &'static str, list: &[String]) -> Result<(), ConfigError> {
    for address in list {
        let port = address
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic()))
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .filter(|port| *port != 0);
        if port.is_none() {
            return fault(setting, format!("{address:?} is not a host:port"));
        }
    }
    Ok(())
}
