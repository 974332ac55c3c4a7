//! PEM public keys on disk: each algorithm (RS256/384/512, PS256, ES256, ES384, EdDSA)
//! admits a subscriber whose stream then receives events, only with an algorithm its key was
//! given; bad key settings stop start-up with one line.

use super::*;

/// A spec for an HS256 token whose MAC secret is `key`'s public PEM.
fn hmac_with_public_pem(name: &str, key: &str, claims: Value) -> Value {
    let mut spec = token(name, key, "HS256", claims, json!({}));
    spec["hmac_with_public_pem"] = json!(true);
    spec
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
