//! Bad sentinel settings exit 2 with one line naming the setting.

use super::*;

#[test]
fn bad_sentinel_settings_exit_2_naming_the_setting() {
    for (flags, setting) in [
        (&["--redis-sentinel", "127.0.0.1"][..], "redis_sentinels"),
        (&["--redis-sentinel", "127.0.0.1:0"][..], "redis_sentinels"),
        (&["--redis-sentinel", ":26379"][..], "redis_sentinels"),
        (
            &[
                "--redis-sentinel",
                "127.0.0.1:26379",
                "--redis-master-name",
                "my master",
            ][..],
            "redis_master_name",
        ),
    ] {
        let mut args = vec!["--bus", "redis"];
        args.extend_from_slice(flags);
        let output = without_herald_env(&mut herald_serve(&args))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{flags:?}: {stderr}");
        assert!(
            stderr.contains(setting) || stderr.contains(&setting.replace('_', "-")),
            "{flags:?}: {stderr}"
        );
    }
}
