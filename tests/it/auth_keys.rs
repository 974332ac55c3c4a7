#![allow(clippy::unwrap_used)]
//! Asymmetric tokens and key sets (issue 14, part 1), against the `herald` binary: keys and
//! tokens made by PyJWT with `cryptography` (`tests/clients/jwt_keys.py`, an implementation
//! that shares no code with herald), PEM public keys on disk, and a JWKS served over HTTPS by
//! a small Python server with a certificate made here with `openssl`, trusted through
//! `--jwks-ca-file`.
//!
//! Each algorithm (RS256/384/512, PS256, ES256, ES384, EdDSA) admits a subscriber whose
//! stream then receives events; the algorithm must be one its key was given (an HS256
//! token signed with the public PEM as the secret, or an RSA algorithm not listed, is
//! `401`); `iss` and `aud` are enforced when configured; an unknown `kid` makes herald
//! refetch the JWKS and accept a key added to it, but refetches stay at most one per 10 s
//! however many such tokens arrive (counted at the JWKS server); and keys rotate without a
//! restart (a JWKS URL on its interval and on SIGHUP, PEM and JWKS files on SIGHUP) while
//! streams opened with the old key go on until their token's `exp`; a failed fetch keeps
//! the last keys, and a failed first fetch does not stop start-up.
//!
//! Never skipped: a missing `python3`, PyJWT or `openssl` fails with the command that
//! installs them (`.ci/deps`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// The static publisher token every server here is started with, so events can be published
/// whatever the token rules.
const PUBLISH_TOKEN: &str = "auth-keys-publisher";
/// herald's bound on refetches caused by unknown `kid`s (`JWKS_REFRESH_GAP_MS`).
const REFRESH_GAP: Duration = Duration::from_millis(herald::config::JWKS_REFRESH_GAP_MS);
const INSTALL: &str =
    "run `python3 -m pip install -r tests/clients/requirements.txt` and install openssl (.ci/deps does both)";

/// A fresh directory for one test's keys and certificates.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-auth-keys-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What `jwt_keys.py make` produced: the tokens by name, each key's public JWK, and each
/// key's public PEM file in `dir`.
struct Made {
    dir: PathBuf,
    tokens: HashMap<String, String>,
    jwks: HashMap<String, Value>,
}

impl Made {
    fn token(&self, name: &str) -> &str {
        self.tokens
            .get(name)
            .unwrap_or_else(|| panic!("no token {name}"))
    }

    fn pem(&self, key: &str) -> String {
        self.dir
            .join(format!("{key}.pub.pem"))
            .display()
            .to_string()
    }

    /// A JWKS document of `keys`: (key name, kid, alg or none).
    fn jwks(&self, keys: &[(&str, &str, Option<&str>)]) -> String {
        let keys: Vec<Value> = keys
            .iter()
            .map(|(name, kid, alg)| {
                let mut jwk = self.jwks[*name].clone();
                jwk["kid"] = json!(kid);
                if let Some(alg) = alg {
                    jwk["alg"] = json!(alg);
                }
                jwk
            })
            .collect();
        json!({ "keys": keys }).to_string()
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/jwt_keys.py")
}

/// Runs `jwt_keys.py make` with `keys` (name: kind) and `tokens` (each: name, key, alg,
/// claims, headers).
fn make(dir: &Path, keys: Value, tokens: Value) -> Made {
    let mut child = Command::new("python3")
        .arg(script())
        .arg("make")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL}"));
    let spec = json!({ "keys": keys, "tokens": tokens }).to_string();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "jwt_keys.py make failed ({INSTALL}): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let made: Value = serde_json::from_slice(&output.stdout).unwrap();
    let strings = |field: &str| -> HashMap<String, Value> {
        made[field]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    Made {
        dir: dir.to_owned(),
        tokens: strings("tokens")
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap().to_owned()))
            .collect(),
        jwks: strings("jwks"),
    }
}

/// A token spec: `name` signed by `key` with `alg`, these claims and header fields.
fn token(name: &str, key: &str, alg: &str, claims: Value, headers: Value) -> Value {
    json!({ "name": name, "key": key, "alg": alg, "claims": claims, "headers": headers })
}

/// A spec for an HS256 token whose MAC secret is `key`'s public PEM.
fn hmac_with_public_pem(name: &str, key: &str, claims: Value) -> Value {
    let mut spec = token(name, key, "HS256", claims, json!({}));
    spec["hmac_with_public_pem"] = json!(true);
    spec
}

/// A far `exp` (2100-01-01).
const FAR: u64 = 4_102_444_800;

/// Runs `openssl` with `args` (split on spaces) in `dir`.
fn openssl(dir: &Path, args: &str) {
    let output = Command::new("openssl")
        .args(args.split(' '))
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); {INSTALL}"));
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A throwaway CA (`ca.pem`) and a certificate it signed for `127.0.0.1` (`leaf.pem`,
/// `leaf.key`), in `dir`.
fn certificates(dir: &Path) {
    openssl(
        dir,
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
         -out ca.pem -days 2 -subj /CN=herald-test-CA \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
    );
    openssl(
        dir,
        "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key \
         -out leaf.csr -subj /CN=127.0.0.1",
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem \
         -days 2 -extfile leaf.ext",
    );
}

/// The Python HTTPS server of `jwks.json` in a directory, counting its fetches. Killed (by
/// its PID) when dropped.
struct JwksServer {
    child: Child,
    port: u16,
    file: PathBuf,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(dir: &Path, document: &str) -> JwksServer {
        certificates(dir);
        let file = dir.join("jwks.json");
        std::fs::write(&file, document).unwrap();
        let mut child = Command::new("python3")
            .arg(script())
            .arg("serve-jwks")
            .arg(dir.join("leaf.pem"))
            .arg(dir.join("leaf.key"))
            .arg(&file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = first
            .strip_prefix("listening ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("the JWKS server did not start ({INSTALL}): {first:?}"));
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = fetches.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line == "fetch /jwks.json" {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        JwksServer {
            child,
            port,
            file,
            fetches,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/jwks.json", self.port)
    }

    fn serve(&self, document: &str) {
        let next = self.file.with_extension("next");
        std::fs::write(&next, document).unwrap();
        std::fs::rename(&next, &self.file).unwrap();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /events?topic=news` with `Authorization: Bearer token`.
fn try_subscribe(addr: SocketAddr, token: &str) -> Result<Subscriber, Response> {
    let authorization = format!("Bearer {token}");
    Subscriber::try_open_on(
        Conn::connect(addr),
        &events_target(&["news"], None),
        &[("Authorization", &authorization)],
    )
}

fn subscribe_with(addr: SocketAddr, token: &str, case: &str) -> Subscriber {
    try_subscribe(addr, token)
        .unwrap_or_else(|refused| panic!("{case}: refused: {}", refused.summary()))
}

fn assert_refused(addr: SocketAddr, token: &str, case: &str) {
    match try_subscribe(addr, token) {
        Ok(_) => panic!("{case}: the subscription was accepted"),
        Err(response) => assert_error(&response, 401, case),
    }
}

/// Publishes `data` to `news` with the static publisher token.
fn publish_news(addr: SocketAddr, data: &str) {
    publish_with(addr, PUBLISH_TOKEN, data, 200);
}

fn publish_with(addr: SocketAddr, token: &str, data: &str, status: u16) {
    let authorization = format!("Bearer {token}");
    let body = form(&[("topic", "news"), ("data", data)]);
    let response = exchange(
        addr,
        post_request(
            "/publish",
            Some("application/x-www-form-urlencoded"),
            body.as_bytes(),
            &[("Authorization", &authorization), ("Connection", "close")],
        ),
    );
    assert_eq!(
        response.status,
        status,
        "publish {data}: {}",
        response.summary()
    );
}

/// Publishes `data` and checks every stream of `streams` receives it next.
fn check_delivery(addr: SocketAddr, streams: &mut [(&str, &mut Subscriber)], data: &str) {
    publish_news(addr, data);
    for (case, stream) in streams.iter_mut() {
        let event = stream.next_event(&format!("{data} on the stream of {case}"));
        assert_eq!(event.data, data, "{case}");
    }
}

/// Retries a subscription with `token` until it is admitted (the key thread swapped in the
/// key it needs), for up to `within`.
fn subscribe_once_admitted(
    addr: SocketAddr,
    token: &str,
    within: Duration,
    case: &str,
) -> Subscriber {
    let deadline = Instant::now() + within;
    loop {
        match try_subscribe(addr, token) {
            Ok(stream) => return stream,
            Err(response) => {
                assert_error(&response, 401, case);
                assert!(
                    Instant::now() < deadline,
                    "{case}: still refused after {within:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn herald(args: &[&str]) -> HeraldProcess {
    let mut all = vec!["--publish-token", PUBLISH_TOKEN];
    all.extend_from_slice(args);
    HeraldProcess::spawn(&all)
}

fn news(claims: Value) -> Value {
    let mut claims = claims;
    claims["subscribe"] = json!(["news"]);
    claims
}

#[test]
fn every_algorithm_admits_a_subscriber_with_a_pem_key_and_only_its_algorithms() {
    let dir = scratch("pem");
    let claims = news(json!({ "exp": FAR }));
    let no_header = json!({});
    let made = make(
        &dir,
        json!({ "rsa": "RSA", "p256": "P-256", "p384": "P-384", "ed": "Ed25519", "other": "RSA" }),
        json!([
            token("RS256", "rsa", "RS256", claims.clone(), no_header.clone()),
            token("RS384", "rsa", "RS384", claims.clone(), no_header.clone()),
            token("RS512", "rsa", "RS512", claims.clone(), no_header.clone()),
            token("PS256", "rsa", "PS256", claims.clone(), no_header.clone()),
            token("PS384", "rsa", "PS384", claims.clone(), no_header.clone()),
            token("ES256", "p256", "ES256", claims.clone(), no_header.clone()),
            token("ES384", "p384", "ES384", claims.clone(), no_header.clone()),
            token("EdDSA", "ed", "EdDSA", claims.clone(), no_header.clone()),
            token(
                "other-key",
                "other",
                "RS256",
                claims.clone(),
                no_header.clone()
            ),
            token(
                "ES256-on-p384",
                "p256",
                "ES256",
                claims.clone(),
                no_header.clone()
            ),
            hmac_with_public_pem("hs256-with-pem", "rsa", claims.clone()),
            token(
                "publish-EdDSA",
                "ed",
                "EdDSA",
                json!({ "publish": ["news"], "exp": FAR }),
                no_header.clone()
            ),
        ]),
    );
    let (rsa, p256, p384, ed) = (
        made.pem("rsa"),
        made.pem("p256"),
        made.pem("p384"),
        made.pem("ed"),
    );
    let servers = [
        (
            herald(&[
                "--subscribe-public-key",
                &rsa,
                "--jwt-algorithm",
                "RS256",
                "--jwt-algorithm",
                "RS384",
                "--jwt-algorithm",
                "RS512",
                "--jwt-algorithm",
                "PS256",
            ]),
            &["RS256", "RS384", "RS512", "PS256"][..],
        ),
        (herald(&["--subscribe-public-key", &p256]), &["ES256"][..]),
        (herald(&["--subscribe-public-key", &p384]), &["ES384"][..]),
        (
            herald(&["--subscribe-public-key", &ed, "--publish-public-key", &ed]),
            &["EdDSA"][..],
        ),
    ];
    for (server, algorithms) in &servers {
        let addr = server.addr;
        for alg in *algorithms {
            let mut stream = subscribe_with(addr, made.token(alg), alg);
            check_delivery(
                addr,
                &mut [(alg, &mut stream)],
                &format!("signed with {alg}"),
            );
        }
    }
    let rsa_server = servers[0].0.addr;
    // The header names an algorithm the key was not given.
    assert_refused(
        rsa_server,
        made.token("PS384"),
        "PS384 is not among --jwt-algorithm",
    );
    assert_refused(rsa_server, made.token("ES256"), "an EC token at an RSA key");
    // The classic confusion: HS256 with the public key's PEM as the MAC secret.
    assert_refused(
        rsa_server,
        made.token("hs256-with-pem"),
        "HS256 with the PEM as secret",
    );
    assert_refused(
        rsa_server,
        made.token("other-key"),
        "signed by another RSA key",
    );
    assert_refused(
        servers[2].0.addr,
        made.token("ES256-on-p384"),
        "ES256 at a P-384 key",
    );
    // The publish role has its own key.
    let ed_server = servers[3].0.addr;
    publish_with(ed_server, made.token("publish-EdDSA"), "by token", 200);
    publish_with(ed_server, made.token("EdDSA"), "no publish claim", 403);
    publish_with(
        servers[1].0.addr,
        made.token("publish-EdDSA"),
        "no publish key",
        401,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_key_settings_stop_start_up_with_one_line() {
    let dir = scratch("startup");
    let made = make(&dir, json!({ "p256": "P-256" }), json!([]));
    let p256 = made.pem("p256");
    let missing = dir.join("missing.pem").display().to_string();
    for (args, setting) in [
        (
            vec![
                "--subscribe-public-key",
                p256.as_str(),
                "--jwt-algorithm",
                "RS256",
            ],
            "subscribe_public_key",
        ),
        (
            vec!["--subscribe-public-key", missing.as_str()],
            "subscribe_public_key",
        ),
        (vec!["--publish-jwks", missing.as_str()], "publish_jwks"),
        (
            vec!["--subscribe-jwks", "http://127.0.0.1:1/jwks.json"],
            "subscribe_jwks",
        ),
        (vec!["--jwt-algorithm", "HS256"], "jwt_algorithms"),
        (
            vec![
                "--subscribe-jwks",
                "https://127.0.0.1:1/jwks.json",
                "--jwks-ca-file",
                missing.as_str(),
            ],
            "jwks_ca_file",
        ),
    ] {
        let output = herald_serve(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr
            .lines()
            .find(|line| line.contains("invalid setting"))
            .unwrap_or_else(|| panic!("{args:?}: no `invalid setting` line in {stderr:?}"));
        assert!(line.contains(setting), "{args:?}: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_jwks_over_https_with_issuer_and_audience_and_refetches_bounded() {
    let dir = scratch("jwks");
    let iss = "https://id.example.com/";
    let good = |exp: u64| json!({ "subscribe": ["news"], "iss": iss, "aud": "herald", "exp": exp });
    let kid = |kid: &str| json!({ "kid": kid });
    let made = make(
        &dir,
        json!({ "rsa": "RSA", "p256": "P-256", "p384": "P-384", "ed": "Ed25519", "added": "P-256" }),
        json!([
            token("RS256", "rsa", "RS256", good(FAR), kid("rsa-1")),
            token("PS256", "rsa", "PS256", good(FAR), kid("rsa-1")),
            token("RS512", "rsa", "RS512", good(FAR), kid("rsa-1")),
            token("ES256", "p256", "ES256", good(FAR), kid("ec-1")),
            token("ES384", "p384", "ES384", good(FAR), kid("ec-2")),
            token("EdDSA", "ed", "EdDSA", good(FAR), kid("ed-1")),
            token("no-kid", "p256", "ES256", good(FAR), json!({})),
            token(
                "aud-array",
                "p256",
                "ES256",
                json!({ "subscribe": ["news"], "iss": iss, "aud": ["other", "herald"], "exp": FAR }),
                kid("ec-1")
            ),
            token(
                "wrong-iss",
                "p256",
                "ES256",
                json!({ "subscribe": ["news"], "iss": "https://evil.example.com/", "aud": "herald", "exp": FAR }),
                kid("ec-1")
            ),
            token(
                "no-iss",
                "p256",
                "ES256",
                json!({ "subscribe": ["news"], "aud": "herald", "exp": FAR }),
                kid("ec-1")
            ),
            token(
                "wrong-aud",
                "p256",
                "ES256",
                json!({ "subscribe": ["news"], "iss": iss, "aud": "someone-else", "exp": FAR }),
                kid("ec-1")
            ),
            token(
                "no-aud",
                "p256",
                "ES256",
                json!({ "subscribe": ["news"], "iss": iss, "exp": FAR }),
                kid("ec-1")
            ),
            token("kid-on-wrong-key", "p384", "ES384", good(FAR), kid("ec-1")),
            token("added", "added", "ES256", good(FAR), kid("added-1")),
            token("made-up-kid", "added", "ES256", good(FAR), kid("made-up")),
        ]),
    );
    let first = made.jwks(&[
        ("rsa", "rsa-1", None),
        ("p256", "ec-1", None),
        ("p384", "ec-2", Some("ES384")),
        ("ed", "ed-1", None),
    ]);
    let jwks = JwksServer::start(&dir, &first);
    let ca = dir.join("ca.pem").display().to_string();
    let url = jwks.url();
    let started = Instant::now();
    let server = herald(&[
        "--subscribe-jwks",
        &url,
        "--jwks-ca-file",
        &ca,
        "--jwt-issuer",
        iss,
        "--jwt-audience",
        "herald",
        "--jwt-algorithm",
        "RS256",
        "--jwt-algorithm",
        "PS256",
        "--jwks-refresh",
        "1h",
    ]);
    let addr = server.addr;
    // Fetched once before serving (the server prints its line before it answers).
    wait_until("the start-up fetch", || jwks.fetches() >= 1);
    let mut streams = Vec::new();
    for name in [
        "RS256",
        "PS256",
        "ES256",
        "ES384",
        "EdDSA",
        "no-kid",
        "aud-array",
    ] {
        streams.push((name, subscribe_with(addr, made.token(name), name)));
    }
    let mut refs: Vec<(&str, &mut Subscriber)> = streams
        .iter_mut()
        .map(|(name, stream)| (*name, stream))
        .collect();
    check_delivery(addr, &mut refs, "to every key of the set");
    for (name, case) in [
        (
            "RS512",
            "RS512: the RSA key without alg takes --jwt-algorithm's RS256 and PS256",
        ),
        ("wrong-iss", "another issuer"),
        ("no-iss", "no iss"),
        ("wrong-aud", "another audience"),
        ("no-aud", "no aud"),
        (
            "kid-on-wrong-key",
            "a kid that names a key of another curve",
        ),
    ] {
        assert_refused(addr, made.token(name), case);
    }
    assert_eq!(jwks.fetches(), 1, "known kids cause no fetch");

    // A key added to the set: its kid is unknown, so herald refetches (once the gap since
    // the start-up fetch has passed) and then admits the token.
    jwks.serve(&made.jwks(&[("p256", "ec-1", None), ("added", "added-1", None)]));
    assert_refused(addr, made.token("added"), "before the refetch");
    let mut added = subscribe_once_admitted(
        addr,
        made.token("added"),
        REFRESH_GAP + DEADLINE,
        "added key",
    );
    assert!(
        started.elapsed() >= REFRESH_GAP,
        "the refetch waited for the gap"
    );
    wait_until("the refetch's line", || jwks.fetches() >= 2);
    assert_eq!(
        jwks.fetches(),
        2,
        "one fetch for all the tokens with the added kid"
    );
    // Tokens with made-up kids, as fast as they come: at most one fetch per gap.
    let hammering = Instant::now();
    let mut refused = 0;
    while hammering.elapsed() < Duration::from_secs(3) {
        assert_refused(addr, made.token("made-up-kid"), "a made-up kid");
        refused += 1;
    }
    let window = hammering.elapsed();
    let fetches = jwks.fetches() - 2;
    let allowed = 1 + (window.as_millis() / REFRESH_GAP.as_millis()) as usize;
    assert!(
        fetches <= allowed,
        "{refused} unknown kids in {window:?} caused {fetches} fetches (at most {allowed})"
    );
    assert!(
        refused > 10,
        "the loop must have sent many unknown kids, sent {refused}"
    );
    // Streams of removed keys go on; the set's keys still work.
    let mut refs: Vec<(&str, &mut Subscriber)> = streams
        .iter_mut()
        .map(|(name, stream)| (*name, stream))
        .chain([("added", &mut added)])
        .collect();
    check_delivery(addr, &mut refs, "after the set changed");
    assert_refused(addr, made.token("RS256"), "a key removed from the set");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keys_rotate_on_sighup_while_streams_opened_with_the_old_key_run_to_their_exp() {
    let dir = scratch("rotate");
    let exp = unix_ms() / 1000 + 10;
    let sub = |exp: u64| json!({ "subscribe": ["news"], "exp": exp });
    let publish = json!({ "publish": ["news"], "exp": FAR });
    let made = make(
        &dir,
        json!({ "old": "Ed25519", "new": "Ed25519", "old-rsa": "RSA", "new-rsa": "RSA" }),
        json!([
            token("old-soon", "old", "EdDSA", sub(exp), json!({})),
            token("old", "old", "EdDSA", sub(FAR), json!({})),
            token("new", "new", "EdDSA", sub(FAR), json!({})),
            token(
                "old-publish",
                "old",
                "EdDSA",
                publish.clone(),
                json!({ "kid": "old" })
            ),
            token(
                "new-publish",
                "new",
                "EdDSA",
                publish.clone(),
                json!({ "kid": "new" })
            ),
            token(
                "url-old-soon",
                "old-rsa",
                "RS256",
                sub(exp),
                json!({ "kid": "r1" })
            ),
            token(
                "url-old",
                "old-rsa",
                "RS256",
                sub(FAR),
                json!({ "kid": "r1" })
            ),
            token(
                "url-new",
                "new-rsa",
                "RS256",
                sub(FAR),
                json!({ "kid": "r2" })
            ),
        ]),
    );
    // PEM and JWKS files, rewritten in place.
    let pem_file = dir.join("subscribe.pem");
    let jwks_file = dir.join("publish-jwks.json");
    std::fs::copy(made.pem("old"), &pem_file).unwrap();
    std::fs::write(&jwks_file, made.jwks(&[("old", "old", None)])).unwrap();
    let files = herald(&[
        "--subscribe-public-key",
        &pem_file.display().to_string(),
        "--publish-jwks",
        &jwks_file.display().to_string(),
    ]);
    // A JWKS URL, refetched on SIGHUP without waiting for the gap.
    let jwks = JwksServer::start(&dir, &made.jwks(&[("old-rsa", "r1", None)]));
    let ca = dir.join("ca.pem").display().to_string();
    let url = jwks.url();
    let fetched = herald(&[
        "--subscribe-jwks",
        &url,
        "--jwks-ca-file",
        &ca,
        "--jwks-refresh",
        "1h",
    ]);

    let mut file_stream = subscribe_with(files.addr, made.token("old-soon"), "old PEM key");
    let mut url_stream = subscribe_with(fetched.addr, made.token("url-old-soon"), "old JWKS key");
    publish_with(
        files.addr,
        made.token("old-publish"),
        "old publish key",
        200,
    );
    file_stream.next_event("the event published with the old key");

    std::fs::copy(made.pem("new"), &pem_file).unwrap();
    std::fs::write(&jwks_file, made.jwks(&[("new", "new", None)])).unwrap();
    jwks.serve(&made.jwks(&[("new-rsa", "r2", None)]));
    assert_refused(
        files.addr,
        made.token("new"),
        "the new PEM key before SIGHUP",
    );
    files.signal("HUP");
    fetched.signal("HUP");
    let mut new_file_stream = subscribe_once_admitted(
        files.addr,
        made.token("new"),
        DEADLINE,
        "new PEM key after SIGHUP",
    );
    let mut new_url_stream = subscribe_once_admitted(
        fetched.addr,
        made.token("url-new"),
        DEADLINE,
        "new JWKS key after SIGHUP",
    );
    wait_until("the fetch on SIGHUP", || jwks.fetches() >= 2);
    assert_eq!(jwks.fetches(), 2, "one fetch at start, one on SIGHUP");
    assert_refused(
        files.addr,
        made.token("old"),
        "the old PEM key after the rotation",
    );
    assert_refused(
        fetched.addr,
        made.token("url-old"),
        "the old JWKS key after the rotation",
    );
    publish_with(
        files.addr,
        made.token("old-publish"),
        "old publish key",
        401,
    );
    publish_with(
        files.addr,
        made.token("new-publish"),
        "new publish key",
        200,
    );
    for stream in [&mut file_stream, &mut new_file_stream] {
        let event = stream.next_event("the event published with the new key");
        assert_eq!(event.data, "new publish key");
    }
    check_delivery(
        files.addr,
        &mut [
            ("old PEM stream", &mut file_stream),
            ("new PEM stream", &mut new_file_stream),
        ],
        "after the PEM rotation",
    );
    check_delivery(
        fetched.addr,
        &mut [
            ("old JWKS stream", &mut url_stream),
            ("new JWKS stream", &mut new_url_stream),
        ],
        "after the JWKS rotation",
    );
    // The old streams end when their tokens do (exp + 5 s of leeway), with a retry hint;
    // the new ones go on.
    wait_past(exp * 1000);
    for (case, stream) in [
        ("old PEM stream", &mut file_stream),
        ("old JWKS stream", &mut url_stream),
    ] {
        stream.read_to_close(&format!("the end of the {case} at its exp"));
        assert!(stream.closing_retry_hint() > 0, "{case}");
    }
    check_delivery(
        files.addr,
        &mut [("new PEM stream", &mut new_file_stream)],
        "after the old streams ended",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_fetch_keeps_the_last_keys_and_a_failed_first_fetch_does_not_stop_start_up() {
    let dir = scratch("failing");
    let made = make(
        &dir,
        json!({ "ed": "Ed25519" }),
        json!([token(
            "ed",
            "ed",
            "EdDSA",
            news(json!({ "exp": FAR })),
            json!({ "kid": "ed-1" })
        )]),
    );
    let jwks = JwksServer::start(&dir, "this is not a key set");
    let ca = dir.join("ca.pem").display().to_string();
    let url = jwks.url();
    let server = herald(&["--subscribe-jwks", &url, "--jwks-ca-file", &ca]);
    let addr = server.addr;
    assert_refused(addr, made.token("ed"), "no keys after a failed first fetch");
    wait_until("the first fetch", || jwks.fetches() >= 1);
    jwks.serve(&made.jwks(&[("ed", "ed-1", None)]));
    server.signal("HUP");
    let mut stream = subscribe_once_admitted(addr, made.token("ed"), DEADLINE, "after SIGHUP");
    // Fetches that fail (an empty set, then not JSON) keep the keys. The key thread fetches
    // in turn, so once the server has seen a fetch, the one before it was handled: the
    // last one only marks that.
    let before = jwks.fetches();
    for (n, document) in [r#"{"keys": []}"#, "{", "{}"].into_iter().enumerate() {
        jwks.serve(document);
        server.signal("HUP");
        wait_until("the fetch on SIGHUP", || jwks.fetches() > before + n);
    }
    let mut again = subscribe_with(addr, made.token("ed"), "after fetches that failed");
    check_delivery(
        addr,
        &mut [("first stream", &mut stream), ("second stream", &mut again)],
        "after failed fetches",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_jwks_is_refetched_on_its_interval() {
    let dir = scratch("interval");
    let made = make(
        &dir,
        json!({ "old": "P-256", "new": "P-256" }),
        // No `kid`: an unknown one would ask for a fetch itself.
        json!([token(
            "new",
            "new",
            "ES256",
            news(json!({ "exp": FAR })),
            json!({})
        )]),
    );
    let jwks = JwksServer::start(&dir, &made.jwks(&[("old", "old-1", None)]));
    let ca = dir.join("ca.pem").display().to_string();
    let url = jwks.url();
    let server = herald(&[
        "--subscribe-jwks",
        &url,
        "--jwks-ca-file",
        &ca,
        "--jwks-refresh",
        "10s",
    ]);
    wait_until("the first fetch", || jwks.fetches() >= 1);
    jwks.serve(&made.jwks(&[("new", "new-1", None)]));
    let mut stream = subscribe_once_admitted(
        server.addr,
        made.token("new"),
        REFRESH_GAP + DEADLINE,
        "a key the interval's fetch brought",
    );
    wait_until("the interval's fetch line", || jwks.fetches() >= 2);
    assert_eq!(jwks.fetches(), 2, "tokens without kid cause no fetch");
    check_delivery(
        server.addr,
        &mut [("new key", &mut stream)],
        "after the interval",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
