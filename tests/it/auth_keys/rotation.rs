//! Keys rotate without a restart (a JWKS URL and PEM and JWKS files on SIGHUP) while streams
//! opened with the old key go on until their token's `exp`.

use super::*;

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
