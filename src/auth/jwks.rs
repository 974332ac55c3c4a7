//! JSON Web Key Sets (RFC 7517): reading a set into [`Key`]s, each with the algorithms it
//! accepts, and fetching one over HTTPS. The fetch blocks, so only the key thread
//! (`store.rs`) calls it, never an event loop. Every set is hostile input: its size, its
//! key count and each key's fields are bounded or checked.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::keys::{Key, KeyType, KEYS_MAX};

/// Largest JWKS document read, from a file or a URL. Sets of a few RSA keys are 2 to 5
/// KiB; this leaves room for certificate chains (`x5c`) without letting a provider (or
/// whoever answers in its place) make herald buffer without bound.
pub(crate) const JWKS_BYTES_MAX: u64 = 256 * 1024;
/// How long one HTTPS fetch may take in all (connect, TLS, request, body).
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Redirects followed (each must stay on `https://`).
const REDIRECTS_MAX: u32 = 3;

/// One key of a set as it is written; the fields herald reads.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// The document: `{"keys": [...]}`. Each key is read on its own, so one key of a kind
/// herald does not verify (an encryption key, P-521) does not spoil the set.
#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// Reads a JWKS document. `rsa_algorithms` are what an RSA key without `alg` accepts
/// (`jwt_algorithms`' RSA ones, or RS256). Keys herald cannot use are skipped and logged;
/// a document that is not a key set is an error (one line).
pub(crate) fn parse(
    body: &[u8],
    rsa_algorithms: &[Algorithm],
    from: &str,
) -> Result<Vec<Key>, String> {
    let document: Document =
        serde_json::from_slice(body).map_err(|error| format!("not a JWKS document: {error}"))?;
    let mut keys = Vec::new();
    for (index, value) in document.keys.into_iter().enumerate() {
        let key = serde_json::from_value::<Jwk>(value)
            .map_err(|error| error.to_string())
            .and_then(|jwk| key(jwk, rsa_algorithms));
        match key {
            Ok(key) if keys.len() < KEYS_MAX => keys.push(key),
            Ok(_) => {
                log::warn!("JWKS {from}: more than {KEYS_MAX} usable keys; key {index} and later are ignored");
                break;
            }
            Err(reason) => log::info!("JWKS {from}: key {index} skipped: {reason}"),
        }
    }
    Ok(keys)
}

/// One JWK as a [`Key`]: its `alg` if it names one (which must fit its type), else the
/// algorithms its type implies.
fn key(jwk: Jwk, rsa_algorithms: &[Algorithm]) -> Result<Key, String> {
    if jwk.usage.as_deref().is_some_and(|usage| usage != "sig") {
        return Err("not a signing key (use is not sig)".into());
    }
    let missing = |field: &str| format!("{} key without {field}", jwk.kty);
    let (key_type, decoding) = match jwk.kty.as_str() {
        "RSA" => {
            let n = jwk.n.as_deref().ok_or_else(|| missing("n"))?;
            let e = jwk.e.as_deref().ok_or_else(|| missing("e"))?;
            (KeyType::Rsa, DecodingKey::from_rsa_components(n, e))
        }
        "EC" => {
            let key_type = match jwk.crv.as_deref() {
                Some("P-256") => KeyType::P256,
                Some("P-384") => KeyType::P384,
                other => return Err(format!("EC curve {other:?} (P-256 and P-384 only)")),
            };
            let x = jwk.x.as_deref().ok_or_else(|| missing("x"))?;
            let y = jwk.y.as_deref().ok_or_else(|| missing("y"))?;
            (key_type, DecodingKey::from_ec_components(x, y))
        }
        "OKP" => {
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err(format!("OKP curve {:?} (Ed25519 only)", jwk.crv));
            }
            let x = jwk.x.as_deref().ok_or_else(|| missing("x"))?;
            (KeyType::Ed25519, DecodingKey::from_ed_components(x))
        }
        "oct" => return Err("a shared secret (kty oct); a key set serves public keys".into()),
        other => return Err(format!("key type {other:?}")),
    };
    let decoding = decoding.map_err(|error| format!("bad key components: {error}"))?;
    let algorithms = match jwk.alg.as_deref() {
        Some(name) => {
            let algorithm: Algorithm = name
                .parse()
                .map_err(|_| format!("alg {name:?} is not a JWT signing algorithm"))?;
            if !key_type.fits(algorithm) {
                return Err(format!(
                    "alg {name} does not fit its {} key",
                    key_type.name()
                ));
            }
            vec![algorithm]
        }
        None => match key_type {
            KeyType::Rsa => rsa_algorithms.to_vec(),
            other => other.algorithms(&[]),
        },
    };
    Ok(Key::new(jwk.kid, algorithms, decoding))
}

/// The agent JWKS URLs are fetched with: HTTPS only (redirects too), a whole-fetch
/// timeout, and the CA certificates of `jwks_ca_file` (PEM) instead of the bundled Mozilla
/// roots when given.
pub(crate) fn agent(ca_pem: Option<&[u8]>) -> Result<ureq::Agent, String> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(pem) = ca_pem {
        let mut certificates = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(certificate)) => certificates.push(certificate),
                Ok(_) => {}
                Err(error) => return Err(format!("not PEM certificates: {error}")),
            }
        }
        if certificates.is_empty() {
            return Err("no PEM certificate in it".into());
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certificates));
    }
    let config = ureq::Agent::config_builder()
        .https_only(true)
        .max_redirects(REDIRECTS_MAX)
        .timeout_global(Some(FETCH_TIMEOUT))
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls.build())
        .build();
    Ok(ureq::Agent::new_with_config(config))
}

/// Fetches the document at `url` (at most [`JWKS_BYTES_MAX`] bytes; a non-2xx answer is
/// an error). Blocks for up to [`FETCH_TIMEOUT`].
pub(crate) fn fetch(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, String> {
    let mut response = agent.get(url).call().map_err(|error| error.to_string())?;
    response
        .body_mut()
        .with_config()
        .limit(JWKS_BYTES_MAX)
        .read_to_vec()
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn algorithms(body: &str, rsa: &[Algorithm]) -> Vec<(Option<String>, Vec<Algorithm>)> {
        parse(body.as_bytes(), rsa, "test")
            .unwrap()
            .iter()
            .map(|key| (key.kid().map(str::to_owned), key.algorithms().to_vec()))
            .collect()
    }

    const RSA: &str = r#""kty":"RSA","n":"u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw","e":"AQAB""#;
    const P256: &str = r#""kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0""#;
    const ED: &str =
        r#""kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo""#;

    #[test]
    fn algorithms_come_from_alg_or_the_key_type() {
        use Algorithm::*;
        let body = format!(
            r#"{{"keys":[{{{RSA},"kid":"r"}},{{{RSA},"kid":"r5","alg":"RS512"}},{{{P256},"kid":"e"}},{{{ED},"kid":"d"}}]}}"#
        );
        assert_eq!(
            algorithms(&body, &[RS256]),
            [
                (Some("r".into()), vec![RS256]),
                (Some("r5".into()), vec![RS512]),
                (Some("e".into()), vec![ES256]),
                (Some("d".into()), vec![EdDSA]),
            ]
        );
        // An RSA key without alg takes the configured RSA list; one with alg keeps its own.
        let got = algorithms(&body, &[PS256, RS384]);
        assert_eq!(got[0].1, [PS256, RS384]);
        assert_eq!(got[1].1, [RS512]);
    }

    #[test]
    fn keys_herald_cannot_use_are_skipped() {
        let body = format!(
            r#"{{"keys":[
                {{"kty":"oct","k":"c2VjcmV0","alg":"HS256","kid":"secret"}},
                {{{RSA},"alg":"ES256","kid":"mismatch"}},
                {{{RSA},"alg":"HS256","kid":"hs-on-rsa"}},
                {{{P256},"alg":"ES384","kid":"wrong-curve"}},
                {{{RSA},"use":"enc","kid":"enc"}},
                {{"kty":"EC","crv":"P-521","x":"AA","y":"AA","kid":"p521"}},
                {{"kty":"RSA","kid":"no-n","e":"AQAB"}},
                {{"kty":"RSA","kid":"bad-base64","n":"!!","e":"AQAB"}},
                {{"kty":"XYZ"}},
                "not an object",
                {{{ED},"kid":"kept","use":"sig"}}
            ]}}"#
        );
        assert_eq!(
            algorithms(&body, &[Algorithm::RS256]),
            [(Some("kept".into()), vec![Algorithm::EdDSA])]
        );
    }

    #[test]
    fn documents_are_bounded() {
        for body in ["", "[]", r#"{"keys":{}}"#, r#"{"nokeys":[]}"#] {
            assert!(parse(body.as_bytes(), &[], "test").is_err(), "{body}");
        }
        let many = vec![format!("{{{ED}}}"); KEYS_MAX + 5].join(",");
        let body = format!(r#"{{"keys":[{many}]}}"#);
        assert_eq!(parse(body.as_bytes(), &[], "test").unwrap().len(), KEYS_MAX);
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        assert!(agent(None).is_ok());
        assert!(agent(Some(b"nothing here"))
            .unwrap_err()
            .contains("no PEM certificate"));
    }
}
