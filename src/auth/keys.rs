//! Verification keys and the rules that pick one for a token: each key carries the
//! algorithms it accepts, set when the key is loaded (an HS256 secret: HS256; a PEM public
//! key: `jwt_algorithms` that fit its type; a JWK: its `alg`, or what its type implies), so
//! a token's header `alg` only ever chooses among those and is never trusted alone. No I/O
//! here: PEM text comes in as bytes.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Keys one key set holds at most (a JWKS may list more; the rest are dropped with a
/// warning). Identity providers publish two to four (the current key and the next or the
/// previous one); a token without `kid` is tried against each key that accepts its `alg`,
/// so this also bounds the signature checks one request can cost.
pub(crate) const KEYS_MAX: usize = 16;

/// The public-key algorithms herald verifies, in the order `--help` lists them.
pub(crate) const PUBLIC_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What a public key is, which decides the algorithms it can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyType {
    /// RSA of any size: RS256/384/512 and PS256/384/512.
    Rsa,
    /// ECDSA on P-256: ES256.
    P256,
    /// ECDSA on P-384: ES384.
    P384,
    /// Ed25519: EdDSA.
    Ed25519,
}

impl KeyType {
    /// Whether this type of key can verify `algorithm`.
    pub(crate) fn fits(self, algorithm: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyType::Rsa => matches!(algorithm, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyType::P256 => algorithm == ES256,
            KeyType::P384 => algorithm == ES384,
            KeyType::Ed25519 => algorithm == EdDSA,
        }
    }

    /// The one algorithm a key of this type accepts when nothing names one: RS256 for RSA
    /// (the JOSE default), the curve's own for EC and Ed25519.
    fn default_algorithm(self) -> Algorithm {
        match self {
            KeyType::Rsa => Algorithm::RS256,
            KeyType::P256 => Algorithm::ES256,
            KeyType::P384 => Algorithm::ES384,
            KeyType::Ed25519 => Algorithm::EdDSA,
        }
    }

    /// The type's name in error lines.
    pub(crate) fn name(self) -> &'static str {
        match self {
            KeyType::Rsa => "RSA",
            KeyType::P256 => "EC P-256",
            KeyType::P384 => "EC P-384",
            KeyType::Ed25519 => "Ed25519",
        }
    }

    /// The algorithms a key of this type accepts: those of `configured` (the
    /// `jwt_algorithms` setting) that fit it, or its default when `configured` is empty.
    /// Empty when `configured` names none that fits: the caller refuses the key.
    pub(crate) fn algorithms(self, configured: &[Algorithm]) -> Vec<Algorithm> {
        if configured.is_empty() {
            return vec![self.default_algorithm()];
        }
        configured
            .iter()
            .copied()
            .filter(|&algorithm| self.fits(algorithm))
            .collect()
    }
}

/// Reads an algorithm name for `jwt_algorithms`: a public-key algorithm, exactly as JOSE
/// spells it. HS256 is refused: it belongs to the `subscribe_key`/`publish_key` secrets,
/// and a public key must never verify a MAC made with its own bytes.
pub(crate) fn public_algorithm(name: &str) -> Result<Algorithm, String> {
    let algorithm: Algorithm = name.parse().map_err(|_| {
        format!("{name:?} is not a JWT algorithm (RS256, PS256, ES256, EdDSA, ...)")
    })?;
    if !PUBLIC_ALGORITHMS.contains(&algorithm) {
        return Err(format!(
            "{name} is a shared-secret algorithm; list public-key ones (HS256 is subscribe_key's and publish_key's)"
        ));
    }
    Ok(algorithm)
}

/// One verification key.
#[derive(Clone)]
pub(crate) struct Key {
    /// The JWK `kid`, if it has one (PEM keys and secrets have none).
    kid: Option<String>,
    /// The algorithms this key accepts; never empty, all of the key's family.
    algorithms: Vec<Algorithm>,
    /// The key as `jsonwebtoken` takes it.
    decoding: DecodingKey,
    /// The signature check: `algorithms`, with every claim check off (they are done in
    /// [`super::Verifier::grant`] against the caller's clock).
    validation: Validation,
}

impl Key {
    /// A key from its parts: a JWK's `kid`, and the algorithms it accepts (non-empty,
    /// each fitting the key; the caller checked them with [`KeyType::fits`]).
    pub(crate) fn new(
        kid: Option<String>,
        algorithms: Vec<Algorithm>,
        decoding: DecodingKey,
    ) -> Key {
        // `jsonwebtoken` refuses every token for an empty list, so a key given none (which
        // the callers rule out) verifies nothing rather than panicking.
        let mut validation = Validation::default();
        validation.algorithms = algorithms.clone();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        Key {
            kid,
            algorithms,
            decoding,
            validation,
        }
    }

    /// The HS256 key of a shared secret (`subscribe_key`, `publish_key`).
    pub(crate) fn secret(secret: &str) -> Key {
        Key::new(
            None,
            vec![Algorithm::HS256],
            DecodingKey::from_secret(secret.as_bytes()),
        )
    }

    /// The key's `kid`.
    pub(crate) fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithms the key accepts.
    #[cfg(test)]
    pub(crate) fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// Whether the key accepts tokens whose header says `algorithm`.
    fn accepts(&self, algorithm: Algorithm) -> bool {
        self.algorithms.contains(&algorithm)
    }

    /// The key and the signature check for [`jsonwebtoken::decode`].
    pub(crate) fn decoding(&self) -> (&DecodingKey, &Validation) {
        (&self.decoding, &self.validation)
    }
}

/// Reads a PEM public key (`PUBLIC KEY`: RSA, EC P-256 or P-384, Ed25519; or PKCS#1 `RSA
/// PUBLIC KEY`) and gives it the `configured` algorithms that fit its type (its default
/// when none are configured). The error is one line for the start-up message or the
/// reload log.
pub(crate) fn pem_key(pem: &[u8], configured: &[Algorithm]) -> Result<Key, String> {
    let key_type = pem_key_type(pem)?;
    let algorithms = key_type.algorithms(configured);
    if algorithms.is_empty() {
        let listed: Vec<String> = configured.iter().map(|a| format!("{a:?}")).collect();
        return Err(format!(
            "jwt_algorithms ({}) has none that fits this {} key",
            listed.join(","),
            key_type.name()
        ));
    }
    let decoding = match key_type {
        KeyType::Rsa => DecodingKey::from_rsa_pem(pem),
        KeyType::P256 | KeyType::P384 => DecodingKey::from_ec_pem(pem),
        KeyType::Ed25519 => DecodingKey::from_ed_pem(pem),
    }
    .map_err(|error| format!("not a usable {} public key: {error}", key_type.name()))?;
    Ok(Key::new(None, algorithms, decoding))
}

/// DER object identifiers of the key algorithms and curves herald reads (RFC 5480, RFC 8410).
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// The type of the public key in a PEM file, from its `SubjectPublicKeyInfo`'s algorithm
/// identifier (its OID, and for EC the named curve).
fn pem_key_type(pem: &[u8]) -> Result<KeyType, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file (not text)".to_owned())?;
    let (label, der) = pem_block(text).ok_or("not a PEM file (no BEGIN/END block)")?;
    match label {
        "RSA PUBLIC KEY" => return Ok(KeyType::Rsa),
        "PUBLIC KEY" => {}
        "CERTIFICATE" => {
            return Err("a certificate; give the public key (openssl x509 -pubkey -noout)".into())
        }
        other if other.contains("PRIVATE") => {
            return Err(format!(
                "a {other}; give the public key, never the private one"
            ))
        }
        other => return Err(format!("a PEM {other}, not a PUBLIC KEY")),
    }
    let malformed = || "malformed PUBLIC KEY (not a SubjectPublicKeyInfo)".to_owned();
    // SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey
    // BIT STRING }; AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY }.
    let (spki, _) = der_item(&der, 0x30).ok_or_else(malformed)?;
    let (identifier, _) = der_item(spki, 0x30).ok_or_else(malformed)?;
    let (oid, parameters) = der_item(identifier, 0x06).ok_or_else(malformed)?;
    match oid {
        OID_RSA => Ok(KeyType::Rsa),
        OID_ED25519 => Ok(KeyType::Ed25519),
        OID_EC => match der_item(parameters, 0x06).map(|(curve, _)| curve) {
            Some(OID_P256) => Ok(KeyType::P256),
            Some(OID_P384) => Ok(KeyType::P384),
            _ => Err("an EC key on a curve herald does not verify (P-256 and P-384 only)".into()),
        },
        _ => Err("a public key of a type herald does not verify (RSA, EC, Ed25519 only)".into()),
    }
}

/// The label and decoded body of the first `-----BEGIN label-----` block.
fn pem_block(text: &str) -> Option<(&str, Vec<u8>)> {
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let label_end = start + text[start..].find("-----")?;
    let label = &text[start..label_end];
    let body_start = label_end + "-----".len();
    let end = body_start + text[body_start..].find("-----END ")?;
    let body: String = text[body_start..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    Some((label, der))
}

/// The contents of the DER item with `tag` at the start of `der`, and what follows it.
/// Definite lengths only (DER has no other), up to four length bytes.
fn der_item(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = der.split_first()?;
    if first != tag {
        return None;
    }
    let (&length_byte, rest) = rest.split_first()?;
    let (length, rest) = if length_byte < 0x80 {
        (usize::from(length_byte), rest)
    } else {
        let count = usize::from(length_byte & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes
            .iter()
            .fold(0usize, |length, &b| (length << 8) | usize::from(b));
        (length, rest)
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

/// The keys a token is tried against, and whether its `kid` named no key.
pub(crate) struct Selection<'k> {
    /// In order: the key its `kid` names, or each key that accepts its `alg`.
    pub keys: Vec<&'k Key>,
    /// The token names a `kid` no key has: a sign that the provider rotated its keys.
    pub unknown_kid: bool,
}

/// Which of `keys` a token with header `alg` and `kid` may be verified with. A `kid` that
/// a key has selects that key (and only if it accepts `alg`); a `kid` no key has leaves
/// the keys without a `kid` (PEM keys, secrets); no `kid` leaves every key. Either way only
/// keys that accept `alg` are returned, so the header cannot choose an algorithm a key was
/// not given (an HS256 token never reaches a public key).
pub(crate) fn select<'k>(
    keys: impl Iterator<Item = &'k Key> + Clone,
    alg: Algorithm,
    kid: Option<&str>,
) -> Selection<'k> {
    let named = kid.filter(|kid| keys.clone().any(|key| key.kid() == Some(kid)));
    let unknown_kid = kid.is_some() && named.is_none();
    let keys = keys
        .filter(|key| match (named, kid) {
            (Some(kid), _) => key.kid() == Some(kid),
            (None, Some(_)) => key.kid().is_none(),
            (None, None) => true,
        })
        .filter(|key| key.accepts(alg))
        .collect();
    Selection { keys, unknown_kid }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `openssl genpkey` and `openssl pkey -pubout`; public halves only.
    const RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnJ6oIMoySM6fAV9yawDd
ZU3rDPAyKcFipL130EY1tkV37NtrS+kY5BKgygdQzGV+46tT8QvfJ87QS9cy9Q5y
JN6wwHAbEnPLKWDPr/bRrnyO7IfQUL6mhRLwMe49jNU2zHf4G6c0yq4JGHAHh8l/
cpMehsJRCnJDNaoukWwYGTyLoxWrAxlXJPRgfEawDzUSzCnZ1JSNpX4/ZF0Y9f7D
AHrtr07pv5RzOW98i/+O4Ni6Ax8nV4R2WgWVgDRzbbhJ+SquVe1wrvdWINU70MxE
wblIiYXTSdVQxvZUkWYLCyIhXMBrXBgR1TAlP2aONnsJGCZJubhZOFiM+/kj8Y6u
bwIDAQAB
-----END PUBLIC KEY-----
";
    const P256_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEmrXg+6fnQYJUVnKsexEJyasIjipT
Ei02s58m+4AvNbFoNtHvREfJwtFZXe3ibpPEZdJgFC7Xzta5MDJZ1uV2BA==
-----END PUBLIC KEY-----
";
    const ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAis2Q7AXNaxh1GICp/BIcLL6/UJqwSkl3tY75x1L4Hs4=
-----END PUBLIC KEY-----
";

    #[test]
    fn pem_keys_get_the_configured_algorithms_that_fit() {
        let rsa = pem_key(RSA_PEM.as_bytes(), &[]).unwrap();
        assert_eq!(rsa.algorithms(), [Algorithm::RS256]);
        let configured = [Algorithm::PS256, Algorithm::ES256, Algorithm::RS512];
        let rsa = pem_key(RSA_PEM.as_bytes(), &configured).unwrap();
        assert_eq!(rsa.algorithms(), [Algorithm::PS256, Algorithm::RS512]);
        let ec = pem_key(P256_PEM.as_bytes(), &configured).unwrap();
        assert_eq!(ec.algorithms(), [Algorithm::ES256]);
        let ed = pem_key(ED25519_PEM.as_bytes(), &[]).unwrap();
        assert_eq!(ed.algorithms(), [Algorithm::EdDSA]);
        let error = pem_key(ED25519_PEM.as_bytes(), &configured).err().unwrap();
        assert!(error.contains("none that fits this Ed25519 key"), "{error}");
        let error = pem_key(P256_PEM.as_bytes(), &[Algorithm::ES384])
            .err()
            .unwrap();
        assert!(error.contains("EC P-256"), "{error}");
    }

    #[test]
    fn pem_files_that_are_not_public_keys_are_refused() {
        for (pem, expected) in [
            ("", "no BEGIN/END block"),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "never the private",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "certificate",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                "malformed",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----\n",
                "no BEGIN/END",
            ),
        ] {
            let error = pem_key(pem.as_bytes(), &[]).err().unwrap();
            assert!(error.contains(expected), "{pem:?}: {error}");
        }
    }

    #[test]
    fn der_items_are_bounded_by_their_input() {
        assert_eq!(
            der_item(&[0x30, 0x02, 1, 2, 3], 0x30),
            Some((&[1u8, 2][..], &[3u8][..]))
        );
        assert_eq!(der_item(&[0x30, 0x03, 1, 2], 0x30), None);
        assert_eq!(
            der_item(&[0x30, 0x81, 0x01, 9], 0x30),
            Some((&[9u8][..], &[][..]))
        );
        assert_eq!(der_item(&[0x30, 0x85, 1, 1, 1, 1, 1], 0x30), None);
        assert_eq!(der_item(&[0x30, 0x80], 0x30), None);
        assert_eq!(der_item(&[0x31, 0x00], 0x30), None);
        assert_eq!(der_item(&[], 0x30), None);
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(public_algorithm("ES384"), Ok(Algorithm::ES384));
        assert_eq!(public_algorithm("EdDSA"), Ok(Algorithm::EdDSA));
        assert!(public_algorithm("HS256")
            .unwrap_err()
            .contains("shared-secret"));
        assert!(public_algorithm("none")
            .unwrap_err()
            .contains("not a JWT algorithm"));
        assert!(
            public_algorithm("rs256").is_err(),
            "JOSE names are case-sensitive"
        );
        for algorithm in PUBLIC_ALGORITHMS {
            let fits = [KeyType::Rsa, KeyType::P256, KeyType::P384, KeyType::Ed25519]
                .into_iter()
                .filter(|key_type| key_type.fits(algorithm))
                .count();
            assert_eq!(fits, 1, "{algorithm:?} fits exactly one key type");
        }
        for key_type in [KeyType::Rsa, KeyType::P256, KeyType::P384, KeyType::Ed25519] {
            assert!(!key_type.fits(Algorithm::HS256));
        }
    }

    fn key(kid: Option<&str>, algorithms: &[Algorithm]) -> Key {
        Key::new(
            kid.map(str::to_owned),
            algorithms.to_vec(),
            DecodingKey::from_secret(b"unused"),
        )
    }

    fn chosen(keys: &[Key], alg: Algorithm, kid: Option<&str>) -> (Vec<usize>, bool) {
        let selection = select(keys.iter(), alg, kid);
        let indices = selection
            .keys
            .iter()
            .map(|chosen| keys.iter().position(|k| std::ptr::eq(k, *chosen)).unwrap())
            .collect();
        (indices, selection.unknown_kid)
    }

    #[test]
    fn key_selection() {
        use Algorithm::*;
        let keys = [
            key(None, &[HS256]),
            key(None, &[RS256, PS256]),
            key(Some("a"), &[RS256]),
            key(Some("b"), &[ES256]),
            key(Some("c"), &[EdDSA]),
        ];
        // A kid selects its key, only for an algorithm that key accepts.
        assert_eq!(chosen(&keys, RS256, Some("a")), (vec![2], false));
        assert_eq!(chosen(&keys, ES256, Some("b")), (vec![3], false));
        assert_eq!(chosen(&keys, PS256, Some("a")), (vec![], false));
        assert_eq!(chosen(&keys, HS256, Some("a")), (vec![], false));
        // An unknown kid: the keys without one, and a hint to refresh.
        assert_eq!(chosen(&keys, RS256, Some("z")), (vec![1], true));
        assert_eq!(chosen(&keys, HS256, Some("z")), (vec![0], true));
        assert_eq!(chosen(&keys, ES256, Some("z")), (vec![], true));
        // No kid: every key that accepts the algorithm, in order.
        assert_eq!(chosen(&keys, RS256, None), (vec![1, 2], false));
        assert_eq!(chosen(&keys, HS256, None), (vec![0], false));
        assert_eq!(chosen(&keys, EdDSA, None), (vec![4], false));
        assert_eq!(chosen(&keys, ES384, None), (vec![], false));
    }
}
