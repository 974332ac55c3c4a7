#![allow(clippy::unwrap_used)]
//! TLS to Redis (issue 15, part 3): `herald serve --bus redis` with a `rediss://` URL against
//! a real `redis-server` listening only on its TLS port, with certificates `openssl` makes
//! for each test (a CA, a server certificate for `127.0.0.1` and `localhost`, a client
//! certificate). Events published over HTTP come back over SSE through the encrypted
//! stream, with and without `--tls-auth-clients yes` (then with the client certificate),
//! and through a `redis-sentinel` on a TLS port that names the primary by its IP address.
//!
//! A certificate herald cannot verify (another CA, or a name the certificate does not
//! hold) or a client certificate the server requires and does not get is not a start-up
//! failure: herald starts, as it does while Redis is down, and `/readyz` answers 503 while
//! the reason (the TLS error) is logged; publishes get 503. A TLS file that cannot be read
//! or holds no PEM stops the start with one line naming the setting; TLS files without a
//! `rediss://` URL, or a certificate without its key, exit 2 naming the setting.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::daemons::*;
use crate::common::*;
use testkit::redis::free_port;

/// How long the bus may take to connect; only bounds a hang.
const BUS_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `openssl args...` in `dir`; fails the test when it fails.
fn openssl(dir: &Scratch, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(&dir.dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl {args:?}: {e} (apt-get install openssl)"));
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA (`<ca>.crt`, `<ca>.key`) in `dir`.
fn make_ca(dir: &Scratch, ca: &str) {
    let (crt, key, subject) = (
        format!("{ca}.crt"),
        format!("{ca}.key"),
        format!("/CN={ca}"),
    );
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &crt,
            "-days", "2", "-subj", &subject,
        ],
    );
}

/// A certificate `<name>.crt` with key `<name>.key`, signed by `ca`, for `alt_names` and
/// the extended key usage `usage` (`serverAuth` or `clientAuth`).
fn make_cert(dir: &Scratch, ca: &str, name: &str, alt_names: &str, usage: &str) {
    let (crt, key, csr) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    let subject = format!("/CN={name}");
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
            &subject,
        ],
    );
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.dir.join(&ext),
        format!("subjectAltName={alt_names}\nextendedKeyUsage={usage}\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// The certificates every test uses: CA `ca` signing `server` (127.0.0.1, localhost),
/// `wrongname` (only `redis.invalid`) and `client`; and an unrelated CA `other`.
fn certificates(label: &str) -> Scratch {
    let dir = Scratch::new(label);
    make_ca(&dir, "ca");
    make_ca(&dir, "other");
    make_cert(
        &dir,
        "ca",
        "server",
        "IP:127.0.0.1,DNS:localhost",
        "serverAuth",
    );
    make_cert(&dir, "ca", "wrongname", "DNS:redis.invalid", "serverAuth");
    make_cert(&dir, "ca", "client", "DNS:herald", "clientAuth");
    dir
}

/// A `redis-server` listening only on a TLS port, with certificate `cert` of `dir`;
/// `auth_clients` makes it require a client certificate signed by `ca`.
fn tls_redis(dir: &Scratch, label: &str, cert: &str, auth_clients: bool) -> (Daemon, u16) {
    require(REDIS_SERVER, "redis-server");
    let port = free_port().unwrap();
    let mut args = redis_server_args(&dir.dir, label);
    args.extend([
        "--port".to_owned(),
        "0".to_owned(),
        "--tls-port".to_owned(),
        port.to_string(),
        "--tls-cert-file".to_owned(),
        dir.path(&format!("{cert}.crt")),
        "--tls-key-file".to_owned(),
        dir.path(&format!("{cert}.key")),
        "--tls-ca-cert-file".to_owned(),
        dir.path("ca.crt"),
        "--tls-auth-clients".to_owned(),
        if auth_clients { "yes" } else { "no" }.to_owned(),
    ]);
    let mut redis = Daemon::spawn(label, REDIS_SERVER, &args, &dir.dir);
    redis.wait_log("Ready to accept connections");
    (redis, port)
}

/// `herald serve --bus redis` with `url` and `extra` flags.
fn node(url: &str, stream: &str, extra: &[&str]) -> HeraldProcess {
    let mut args = vec![
        "--bus",
        "redis",
        "--redis-url",
        url,
        "--redis-stream",
        stream,
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    HeraldProcess::spawn(&args)
}

/// Polls `/readyz` until it answers `status`; fails after [`BUS_DEADLINE`].
fn wait_readyz(addr: SocketAddr, status: u16, waiting_for: &str) -> Response {
    let deadline = Instant::now() + BUS_DEADLINE;
    loop {
        let response = get(addr, "/readyz");
        if response.status == status {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting_for}: /readyz still answers {}",
            response.summary()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Events published on `addr` reach a subscriber on `addr` with the ids they were
/// answered with: they went to Redis over TLS and came back through the reader.
fn assert_round_trip(addr: SocketAddr, case: &str) {
    wait_readyz(addr, 200, case);
    let mut subscriber = subscribe(addr, &["tls"]);
    for n in 0..3 {
        let data = format!("{case} {n}");
        let id = publish_form(addr, &[("topic", "tls"), ("data", &data)]);
        let event = subscriber.next_event(case);
        assert_eq!(
            (event.data.as_str(), event.last_event_id.as_str()),
            (data.as_str(), id.as_str()),
            "{case}"
        );
    }
}

/// A node that cannot complete the TLS handshake: not ready, publishes refused, and the
/// log names the TLS fault (`expected` is a part of the error text).
fn assert_refused_by_tls(url: &str, extra: &[&str], expected: &str, case: &str) {
    let mut herald = node(url, case, extra);
    let response = wait_readyz(herald.addr, 503, case);
    assert!(
        response
            .body_text()
            .starts_with("not ready: the redis bus is disconnected"),
        "{case}: {}",
        response.summary()
    );
    let refused = post(
        herald.addr,
        "/publish",
        Some("application/x-www-form-urlencoded"),
        form(&[("topic", "tls"), ("data", "x")]).as_bytes(),
    );
    assert_error(&refused, 503, case);
    herald.signal("TERM");
    herald.wait_exit(DEADLINE);
    let log = herald.stderr_lines().join("\n");
    assert!(
        log.contains("cannot connect") && log.contains(expected),
        "{case}: the log names the TLS fault ({expected:?}): {log}"
    );
}

#[test]
fn events_go_through_a_tls_redis_verified_with_the_given_ca() {
    let certs = certificates("tls-plain");
    let (_redis, port) = tls_redis(&certs, "redis", "server", false);
    let ca = certs.path("ca.crt");
    for url in [
        format!("rediss://127.0.0.1:{port}/0"),
        format!("rediss://localhost:{port}/0"),
    ] {
        let herald = node(&url, "tls", &["--redis-tls-ca-file", &ca]);
        assert_round_trip(herald.addr, &url);
    }
    // Without the CA, the system's roots do not know the test's CA.
    assert_refused_by_tls(
        &format!("rediss://127.0.0.1:{port}/0"),
        &[],
        "UnknownIssuer",
        "no CA given",
    );
    assert_refused_by_tls(
        &format!("rediss://127.0.0.1:{port}/0"),
        &["--redis-tls-ca-file", &certs.path("other.crt")],
        "UnknownIssuer",
        "another CA",
    );
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let certs = certificates("tls-name");
    let (_redis, port) = tls_redis(&certs, "redis", "wrongname", false);
    assert_refused_by_tls(
        &format!("rediss://127.0.0.1:{port}/0"),
        &["--redis-tls-ca-file", &certs.path("ca.crt")],
        "not valid for name",
        "a certificate for redis.invalid at 127.0.0.1",
    );
}

#[test]
fn a_redis_that_requires_client_certificates_gets_the_given_one() {
    let certs = certificates("tls-mutual");
    let (_redis, port) = tls_redis(&certs, "redis", "server", true);
    let url = format!("rediss://127.0.0.1:{port}/0");
    let (ca, cert, key) = (
        certs.path("ca.crt"),
        certs.path("client.crt"),
        certs.path("client.key"),
    );
    let herald = node(
        &url,
        "mutual",
        &[
            "--redis-tls-ca-file",
            &ca,
            "--redis-tls-cert-file",
            &cert,
            "--redis-tls-key-file",
            &key,
        ],
    );
    assert_round_trip(herald.addr, "with the client certificate");
    drop(herald);
    // Without one, Redis ends the handshake.
    assert_refused_by_tls(
        &url,
        &["--redis-tls-ca-file", &ca],
        "cannot connect",
        "without a client certificate",
    );
}

/// Runs `herald serve args...` to its exit (it must exit at start); status and stderr.
fn start_fails(args: &[&str]) -> (Option<i32>, String) {
    let output = without_herald_env(&mut herald_serve(args))
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_tls_settings_stop_the_start_with_one_line_naming_the_setting() {
    let certs = certificates("tls-bad");
    let rediss = "rediss://127.0.0.1:1/0";
    let missing = certs.path("missing.crt");
    let not_pem = certs.path("server.ext");
    let (ca, cert, key) = (
        certs.path("ca.crt"),
        certs.path("client.crt"),
        certs.path("client.key"),
    );
    let plain = "redis://127.0.0.1:1/0";
    let cases: [(&str, &[&str], i32, &str); 6] = [
        (
            rediss,
            &["--redis-tls-ca-file", &missing],
            1,
            "redis_tls_ca_file",
        ),
        (
            rediss,
            &["--redis-tls-ca-file", &not_pem],
            1,
            "redis_tls_ca_file",
        ),
        (
            rediss,
            &["--redis-tls-cert-file", &cert, "--redis-tls-key-file", &ca],
            1,
            "redis_tls_key_file",
        ),
        (
            rediss,
            &["--redis-tls-cert-file", &cert],
            2,
            "redis_tls_key_file",
        ),
        (
            rediss,
            &["--redis-tls-key-file", &key],
            2,
            "redis_tls_cert_file",
        ),
        (plain, &["--redis-tls-ca-file", &ca], 2, "redis_tls_ca_file"),
    ];
    for (url, flags, code, setting) in cases {
        let mut args = vec!["--bus", "redis", "--redis-url", url];
        args.extend_from_slice(flags);
        let (status, stderr) = start_fails(&args);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(status, Some(code), "{flags:?}: {stderr}");
        assert_eq!(lines.len(), 1, "{flags:?}: one line: {stderr}");
        let kebab = setting.replace('_', "-");
        assert!(
            lines[0].contains(setting) || lines[0].contains(&kebab),
            "{flags:?}: the line names {setting}: {stderr}"
        );
    }
}

/// With Sentinel and a `rediss://` URL, the sentinels are asked over TLS too, and the
/// primary they name (an IP address) is verified against the certificate's IP entry.
#[test]
fn sentinels_and_the_primary_they_name_are_spoken_to_over_tls() {
    require(REDIS_SENTINEL, "redis-sentinel");
    let certs = certificates("tls-sentinel");
    let (_redis, port) = tls_redis(&certs, "redis", "server", false);
    let sentinel_port = free_port().unwrap();
    let conf = certs.path("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port 0\ntls-port {sentinel_port}\nbind 127.0.0.1\ndaemonize no\nlogfile {log}\n\
             dir {dir}\ntls-cert-file {crt}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
             tls-auth-clients no\ntls-replication yes\n\
             sentinel monitor tlsmaster 127.0.0.1 {port} 1\n",
            log = Daemon::log_path(&certs.dir, "sentinel").display(),
            dir = certs.dir.display(),
            crt = certs.path("server.crt"),
            key = certs.path("server.key"),
            ca = certs.path("ca.crt"),
        ),
    )
    .unwrap();
    let mut sentinel = Daemon::spawn("sentinel", REDIS_SENTINEL, &[conf], &certs.dir);
    sentinel.wait_log("+monitor master tlsmaster");
    let sentinel_addr = format!("127.0.0.1:{sentinel_port}");
    let ca = certs.path("ca.crt");
    let herald = node(
        // With Sentinel only the URL's scheme, credentials and database count.
        "rediss://sentinel-decides:1/0",
        "tls-sentinel",
        &[
            "--redis-sentinel",
            &sentinel_addr,
            "--redis-master-name",
            "tlsmaster",
            "--redis-tls-ca-file",
            &ca,
        ],
    );
    assert_round_trip(herald.addr, "through a TLS sentinel");
    drop(herald);
    assert_refused_by_tls(
        "rediss://sentinel-decides:1/0",
        &[
            "--redis-sentinel",
            &sentinel_addr,
            "--redis-master-name",
            "tlsmaster",
            "--redis-tls-ca-file",
            &certs.path("other.crt"),
        ],
        "UnknownIssuer",
        "a TLS sentinel with another CA",
    );
}
