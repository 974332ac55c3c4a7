//! Unit tests of the config module.

use super::*;

#[test]
fn redis_urls_are_shown_without_credentials() {
    for (url, shown) in [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user:pw@h:1/0", "redis://user:***@h:1/0"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("redis://pw@h:1/0", "redis://***@h:1/0"),
        ("redis://u:p@w/x?y@h:1/0", "redis://u:***@h:1/0"),
        ("redis://u:pw@[::1/0", "redis://u:***@[::1/0"),
        ("u:pw@h:1", "u:***@h:1"),
        ("redis://a/b:pw@h", "redis://***@h"),
        (
            "redis+unix:///s.sock?db=1&pass=pw&PASSWORD=pw&user=u",
            "redis+unix:///s.sock?db=1&pass=***&PASSWORD=***&user=u",
        ),
        ("not-a-url", "not-a-url"),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
    }
    let config = Config {
        redis_url: "redis://u:pw1@h:1/0".into(),
        publish_token: Some("pw2".into()),
        subscribe_key: Some("pw3".into()),
        publish_key: Some("pw4".into()),
        ..Config::default()
    };
    let debug = format!("{config:?}");
    assert!(!debug.contains("pw"), "{debug}");
    assert!(debug.contains("redis://u:***@h:1/0"), "{debug}");
    assert!(debug.contains("redis_maxlen"), "{debug}");
}

#[test]
fn defaults_are_valid() {
    assert_eq!(Config::default().validate(), Ok(()));
    assert_eq!(Config::default().listen.port(), 8080);
}

#[test]
fn each_fault_names_its_setting() {
    let check = |edit: fn(&mut Config), setting: &str| {
        let mut config = Config::default();
        edit(&mut config);
        let error = config.validate().unwrap_err();
        assert_eq!(error.setting, setting);
        assert!(!error.to_string().contains('\n'));
    };
    check(|c| c.threads = 0, "threads");
    check(|c| c.history_events = 0, "history_events");
    check(|c| c.redis_stream = String::new(), "redis_stream");
    check(
        |c| {
            c.bus = BusKind::Redis;
            c.redis_url = "not-a-url".into();
        },
        "redis_url",
    );
    check(
        |c| {
            c.bus = BusKind::Redis;
            c.redis_url = "redis://127.0.0.1:notaport/0".into();
        },
        "redis_url",
    );
    check(
        |c| {
            c.bus = BusKind::Redis;
            c.redis_url = "redis://127.0.0.1:6379/0?protocol=resp3".into();
        },
        "redis_url",
    );
    check(|c| c.history_total_bytes = 1, "history_total_bytes");
    check(|c| c.gap_event = "a\nb".into(), "gap_event");
    check(
        |c| c.max_topics_per_subscription = 0,
        "max_topics_per_subscription",
    );
    check(|c| c.max_head_bytes = 10, "max_head_bytes");
    check(|c| c.heartbeat_ms = 5, "heartbeat_ms");
    check(|c| c.max_stream_lifetime_ms = 10, "max_stream_lifetime_ms");
    check(|c| c.max_lag_bytes = 1, "max_lag_bytes");
    check(
        |c| c.cors_origins = vec!["example.com".into()],
        "cors_origins",
    );
    check(|c| c.publish_token = Some("a b".into()), "publish_token");
    check(
        |c| c.trusted_proxies = vec!["10.0.0.0/99".into()],
        "trusted_proxies",
    );
}

#[test]
fn automatic_connection_limit_follows_the_open_file_limit() {
    let config = Config::default();
    let limit = open_files_limit().expect("Linux has RLIMIT_NOFILE");
    assert_eq!(config.effective_max_connections(), limit - FDS_RESERVED);
    let fixed = Config {
        max_connections: 123,
        ..Config::default()
    };
    assert_eq!(fixed.effective_max_connections(), 123);
    // A publish listener's budget is kept out of the subscribers' share.
    let with_publish = Config {
        publish_listen: Some("127.0.0.1:0".parse().unwrap()),
        max_publish_connections: 100,
        ..Config::default()
    };
    assert_eq!(
        with_publish.effective_max_connections(),
        limit - FDS_RESERVED - 100
    );
}

#[test]
fn new_admission_settings_are_validated() {
    let check = |tweak: fn(&mut Config), setting: &str| {
        let mut config = Config::default();
        tweak(&mut config);
        assert_eq!(config.validate().map_err(|e| e.setting), Err(setting));
    };
    check(|c| c.ipv6_prefix_per_ip = 0, "ipv6_prefix_per_ip");
    check(|c| c.ipv6_prefix_per_ip = 129, "ipv6_prefix_per_ip");
    check(|c| c.max_publish_connections = 0, "max_publish_connections");
    let config = Config {
        ipv6_prefix_per_ip: 128,
        ..Config::default()
    };
    assert!(config.validate().is_ok());
    assert_eq!("forwarded".parse(), Ok(ForwardedHeader::Forwarded));
    assert_eq!(
        "x-forwarded-for".parse(),
        Ok(ForwardedHeader::XForwardedFor)
    );
    assert!("X-Real-IP".parse::<ForwardedHeader>().is_err());
}

#[test]
fn byte_sizes() {
    assert_eq!(parse_bytes("65536"), Ok(65536));
    assert_eq!(parse_bytes("64KiB"), Ok(65536));
    assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
    assert_eq!(parse_bytes("2G"), Ok(2 << 30));
    assert!(parse_bytes("1.5MiB").is_err());
    assert!(parse_bytes("10 parsecs").is_err());
    assert!(parse_bytes("").is_err());
    assert!(parse_bytes("99999999999999999999G").is_err());
}
