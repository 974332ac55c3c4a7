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
//! - [`pem`]: every algorithm with a PEM key, only the algorithms its key was given; bad key
//!   settings stop start-up with one line.
//! - [`jwks`]: a JWKS over HTTPS with `iss` and `aud` enforced and bounded refetches; a failed
//!   fetch keeps the last keys, a failed first fetch does not stop start-up; the JWKS is
//!   refetched on its interval.
//! - [`rotation`]: keys rotate on SIGHUP while streams opened with the old key run to their
//!   `exp`.
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

mod jwks;
mod pem;
mod rotation;

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
