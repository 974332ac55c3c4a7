//! Where each role's public keys come from and how they change while the server runs. A
//! role's keys are one immutable [`KeySet`] behind a lock held only to clone or swap an
//! `Arc`, so a loop's read never waits on a fetch. One thread, `herald-keys`, owns every
//! source: it reads the PEM and JWKS files, fetches JWKS URLs, and swaps in the new set; it
//! refetches on the `jwks_refresh` interval, when a loop reports an unknown `kid` (at most
//! once every [`REFRESH_GAP`]), and it rereads everything when asked
//! ([`Auth::reload`], SIGHUP in `herald serve`). A failed read or fetch keeps the last good
//! keys and logs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use jsonwebtoken::Algorithm;

use super::keys::{self, Key, KeyType};
use super::{jwks, ClaimRules, Verifier};
use crate::config::{Config, ConfigError};

/// The shortest time between two fetches of a JWKS URL that a token can cause: an unknown
/// `kid` asks for a refetch, and tokens with made-up `kid`s must not turn herald into a
/// flood against the identity provider. A rotated key is picked up at most this late.
pub(crate) const REFRESH_GAP: Duration = Duration::from_millis(crate::config::JWKS_REFRESH_GAP_MS);
/// When a fetch failed, the next try comes this soon (or at the interval, if sooner),
/// rather than a whole `jwks_refresh` later.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// One role's public keys as the loops read them.
#[derive(Default)]
pub(crate) struct RoleKeys {
    current: RwLock<Arc<KeySet>>,
}

impl RoleKeys {
    /// The keys in force: an `Arc` clone under a read lock that a swap holds for an
    /// instant only.
    pub(crate) fn snapshot(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A role holding `keys`, for tests.
    #[cfg(test)]
    pub(crate) fn holding(held: Vec<Key>) -> RoleKeys {
        let keys = RoleKeys::default();
        keys.replace(KeySet { keys: held });
        keys
    }

    fn replace(&self, set: KeySet) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
    }
}

/// A role's keys at one moment: its PEM key first, then its JWKS keys.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// The keys, in order.
    pub(crate) fn keys(&self) -> &[Key] {
        &self.keys
    }
}

/// Asks the key thread for one kind of work without waiting: a full queue means a
/// request is already pending, which covers this one.
#[derive(Clone)]
pub(crate) struct Requests(Sender<()>);

impl Requests {
    /// Requests sent to `sender`, for tests.
    #[cfg(test)]
    pub(crate) fn to(sender: Sender<()>) -> Requests {
        Requests(sender)
    }

    /// Asks, if no request is pending; never blocks.
    pub(crate) fn ask(&self) {
        match self.0.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

/// Where a JWKS comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum JwksSource {
    /// An `https://` URL, fetched by the key thread.
    Url(String),
    /// A file, read at start and on reload.
    File(PathBuf),
}

impl JwksSource {
    fn new(text: &str) -> JwksSource {
        match text.starts_with("https://") {
            true => JwksSource::Url(text.to_owned()),
            false => JwksSource::File(PathBuf::from(text)),
        }
    }
}

/// One role's sources and the keys last read from each.
struct Role {
    /// Its PEM setting's name and file.
    pem: Option<(&'static str, PathBuf)>,
    /// Its JWKS setting's name and source.
    jwks: Option<(&'static str, JwksSource)>,
    /// The key last read from the PEM file.
    pem_key: Option<Key>,
    /// The keys last read from the JWKS.
    jwks_keys: Vec<Key>,
    /// What the loops read.
    shared: Arc<RoleKeys>,
}

impl Role {
    /// A role with its PEM and JWKS settings (name, value); nothing read yet.
    fn new(pem: (&'static str, &Option<String>), jwks: (&'static str, &Option<String>)) -> Role {
        Role {
            pem: pem.1.as_ref().map(|path| (pem.0, PathBuf::from(path))),
            jwks: jwks
                .1
                .as_deref()
                .map(|text| (jwks.0, JwksSource::new(text))),
            pem_key: None,
            jwks_keys: Vec::new(),
            shared: Arc::new(RoleKeys::default()),
        }
    }

    /// Whether any public key source is set: then the role checks tokens.
    fn has_public(&self) -> bool {
        self.pem.is_some() || self.jwks.is_some()
    }

    /// Whether the role's JWKS is a URL.
    fn has_url(&self) -> bool {
        matches!(self.jwks, Some((_, JwksSource::Url(_))))
    }

    /// Reads the role's files at start; an error names the setting.
    fn load_files(&mut self, reader: &Reader) -> Result<(), ConfigError> {
        if let Some((setting, path)) = &self.pem {
            let key = reader.pem(path).map_err(|reason| ConfigError {
                setting,
                reason: format!("{}: {reason}", path.display()),
            })?;
            self.pem_key = Some(key);
        }
        if let Some((setting, JwksSource::File(path))) = &self.jwks {
            let keys = reader.jwks_file(path).map_err(|reason| ConfigError {
                setting,
                reason: format!("{}: {reason}", path.display()),
            })?;
            if keys.is_empty() {
                return Err(ConfigError {
                    setting,
                    reason: format!("{}: no key herald can verify with", path.display()),
                });
            }
            self.jwks_keys = keys;
        }
        Ok(())
    }

    /// Swaps in the role's current keys: its PEM key first, then its JWKS keys.
    fn publish(&self) {
        let keys = self
            .pem_key
            .iter()
            .chain(&self.jwks_keys)
            .cloned()
            .collect();
        self.shared.replace(KeySet { keys });
    }
}

/// How the key thread reads keys: the settings that shape them.
struct Reader {
    /// `jwt_algorithms`, parsed.
    algorithms: Vec<Algorithm>,
    /// The RSA algorithms of a JWK without `alg`.
    rsa_algorithms: Vec<Algorithm>,
    /// The HTTPS agent, when some role has a URL.
    agent: Option<ureq::Agent>,
}

impl Reader {
    /// The reader of a validated `config`; the HTTPS agent (with `jwks_ca_file`'s
    /// certificates) only when some role has a URL.
    fn new(config: &Config, has_url: bool) -> Result<Reader, ConfigError> {
        let algorithms: Vec<Algorithm> = config
            .jwt_algorithms
            .iter()
            .filter_map(|name| keys::public_algorithm(name).ok()) // Validated before.
            .collect();
        let mut rsa_algorithms = KeyType::Rsa.algorithms(&algorithms);
        if rsa_algorithms.is_empty() {
            rsa_algorithms = KeyType::Rsa.algorithms(&[]);
        }
        let ca_fault = |reason| ConfigError {
            setting: "jwks_ca_file",
            reason,
        };
        let agent = match (has_url, &config.jwks_ca_file) {
            (false, _) => None,
            (true, None) => Some(jwks::agent(None).map_err(ca_fault)?),
            (true, Some(path)) => {
                let pem = read_bounded(Path::new(path)).map_err(ca_fault)?;
                Some(jwks::agent(Some(&pem)).map_err(ca_fault)?)
            }
        };
        Ok(Reader {
            algorithms,
            rsa_algorithms,
            agent,
        })
    }

    fn pem(&self, path: &Path) -> Result<Key, String> {
        let pem = read_bounded(path)?;
        keys::pem_key(&pem, &self.algorithms)
    }

    fn jwks_file(&self, path: &Path) -> Result<Vec<Key>, String> {
        let body = read_bounded(path)?;
        jwks::parse(&body, &self.rsa_algorithms, &path.display().to_string())
    }

    fn jwks_url(&self, url: &str) -> Result<Vec<Key>, String> {
        let agent = self.agent.as_ref().ok_or("no HTTPS agent")?;
        let body = jwks::fetch(agent, url)?;
        jwks::parse(&body, &self.rsa_algorithms, url)
    }
}

/// Reads a key file, refusing one past [`jwks::JWKS_BYTES_MAX`] (a key file that large is
/// a wrong path, a device or a log).
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(jwks::JWKS_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if bytes.len() as u64 > jwks::JWKS_BYTES_MAX {
        return Err(format!(
            "{} is larger than {} bytes",
            path.display(),
            jwks::JWKS_BYTES_MAX
        ));
    }
    Ok(bytes)
}

/// The server's token verifiers and, when any role has public keys, the thread that keeps
/// them current.
pub(crate) struct Auth {
    /// Verifies subscriber tokens; `None` when no subscribe key source is set.
    pub subscribe: Option<Verifier>,
    /// Verifies publisher tokens; `None` when no publish key source is set.
    pub publish: Option<Verifier>,
    /// Asks the key thread to reread every source; `None` without public keys.
    reload: Option<Requests>,
}

impl Auth {
    /// Builds the verifiers of a validated `config`: reads the PEM and JWKS files (a file
    /// that cannot be read or holds no usable key stops start-up, naming its setting),
    /// fetches each JWKS URL once (a failed fetch is logged and the role starts with no
    /// JWKS keys, so its tokens get `401` until a retry succeeds), and starts the key
    /// thread.
    pub(crate) fn start(config: &Config) -> Result<Auth, crate::Error> {
        let mut roles = [
            Role::new(
                ("subscribe_public_key", &config.subscribe_public_key),
                ("subscribe_jwks", &config.subscribe_jwks),
            ),
            Role::new(
                ("publish_public_key", &config.publish_public_key),
                ("publish_jwks", &config.publish_jwks),
            ),
        ];
        let has_url = roles.iter().any(Role::has_url);
        let reader = Reader::new(config, has_url)?;
        for role in &mut roles {
            role.load_files(&reader)?;
            role.publish();
        }
        let has_public = [roles[0].has_public(), roles[1].has_public()];
        let shared = [roles[0].shared.clone(), roles[1].shared.clone()];
        let mut thread = KeyThread {
            reader,
            roles,
            interval: Duration::from_millis(config.jwks_refresh),
            last_fetch: None,
            next_fetch: None,
        };
        thread.fetch_urls();
        let (mut refresh, mut reload) = (None, None);
        if has_public.contains(&true) {
            // One pending request of each kind is enough: a second would do the same work.
            let (refresh_tx, refresh_rx) = crossbeam_channel::bounded(1);
            let (reload_tx, reload_rx) = crossbeam_channel::bounded(1);
            std::thread::Builder::new()
                .name("herald-keys".into())
                .spawn(move || thread.run(&refresh_rx, &reload_rx))
                .map_err(|source| crate::Error::Io {
                    context: "cannot start the key thread".into(),
                    source,
                })?;
            refresh = Some(Requests(refresh_tx));
            reload = Some(Requests(reload_tx));
        }
        let rules = Arc::new(ClaimRules {
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        });
        let verifier = |secret: &Option<String>, role: usize| {
            let public = has_public[role].then(|| shared[role].clone());
            (secret.is_some() || public.is_some()).then(|| Verifier {
                secret: secret
                    .as_deref()
                    .map(|secret| Arc::new(Key::secret(secret))),
                public,
                refresh: refresh.clone(),
                rules: rules.clone(),
            })
        };
        Ok(Auth {
            subscribe: verifier(&config.subscribe_key, 0),
            publish: verifier(&config.publish_key, 1),
            reload,
        })
    }

    /// Asks the key thread to reread the key files and refetch the JWKS URLs; returns at
    /// once. Does nothing when no public key is configured.
    pub(crate) fn reload(&self) {
        if let Some(reload) = &self.reload {
            reload.ask();
        }
    }
}

/// The key thread's state.
struct KeyThread {
    reader: Reader,
    /// The subscribe and the publish role.
    roles: [Role; 2],
    /// `jwks_refresh`.
    interval: Duration,
    /// When the URLs were last fetched (successfully or not).
    last_fetch: Option<Instant>,
    /// When they are fetched next; `None` without URLs.
    next_fetch: Option<Instant>,
}

impl KeyThread {
    /// Serves requests until the server is gone (either queue's senders dropped).
    fn run(mut self, refresh: &Receiver<()>, reload: &Receiver<()>) {
        loop {
            // Without URLs nothing is due; a day is as good as forever then.
            let wait = self.next_fetch.map_or(Duration::from_secs(86_400), |at| {
                at.saturating_duration_since(Instant::now())
            });
            crossbeam_channel::select! {
                recv(refresh) -> request => match request {
                    Ok(()) => self.refetch_soon(Instant::now()),
                    Err(_) => return,
                },
                recv(reload) -> request => match request {
                    Ok(()) => {
                        log::info!("reloading the token keys");
                        self.reload_files();
                        self.fetch_urls();
                    }
                    Err(_) => return,
                },
                default(wait) => {
                    if self.next_fetch.is_some_and(|at| Instant::now() >= at) {
                        self.fetch_urls();
                    }
                }
            }
        }
    }

    /// An unknown `kid`: fetch now if the last fetch is [`REFRESH_GAP`] old, else as soon
    /// as it is (however many more unknown `kid`s arrive meanwhile).
    fn refetch_soon(&mut self, now: Instant) {
        let Some(next) = self.next_fetch else {
            return; // No URL: nothing to refetch.
        };
        let earliest = self.last_fetch.map_or(now, |at| at + REFRESH_GAP);
        if now >= earliest {
            self.fetch_urls();
        } else {
            self.next_fetch = Some(next.min(earliest));
        }
    }

    /// Fetches every distinct JWKS URL once and swaps in what each gave to the roles that
    /// use it; a failure keeps their last keys. Schedules the next fetch.
    fn fetch_urls(&mut self) {
        let mut urls: Vec<String> = Vec::new();
        for role in &self.roles {
            if let Some((_, JwksSource::Url(url))) = &role.jwks {
                if !urls.contains(url) {
                    urls.push(url.clone());
                }
            }
        }
        if urls.is_empty() {
            return;
        }
        let mut failed = false;
        for url in &urls {
            let shown = crate::config::redact_url(url);
            let keys = match self.reader.jwks_url(url) {
                Ok(keys) if keys.is_empty() => {
                    // An empty set is more likely a broken provider than a wish to refuse
                    // every token; the keys that worked so far stay.
                    failed = true;
                    log::warn!("JWKS {shown}: no usable key, keeping the last keys");
                    continue;
                }
                Ok(keys) => keys,
                Err(reason) => {
                    failed = true;
                    log::warn!("JWKS {shown}: fetch failed, keeping the last keys: {reason}");
                    continue;
                }
            };
            log::info!("JWKS {shown}: {} key(s)", keys.len());
            for role in &mut self.roles {
                if matches!(&role.jwks, Some((_, JwksSource::Url(u))) if u == url) {
                    role.jwks_keys = keys.clone();
                    role.publish();
                }
            }
        }
        let now = Instant::now();
        self.last_fetch = Some(now);
        let wait = match failed {
            true => self.interval.min(RETRY_AFTER_FAILURE),
            false => self.interval,
        };
        self.next_fetch = Some(now + wait);
    }

    /// Rereads the PEM and JWKS files; a file that fails keeps the role's last keys.
    fn reload_files(&mut self) {
        for role in &mut self.roles {
            let mut changed = false;
            if let Some((setting, path)) = &role.pem {
                match self.reader.pem(path) {
                    Ok(key) => {
                        role.pem_key = Some(key);
                        changed = true;
                    }
                    Err(reason) => log::warn!(
                        "{setting} {}: keeping the last key: {reason}",
                        path.display()
                    ),
                }
            }
            if let Some((setting, JwksSource::File(path))) = &role.jwks {
                match self.reader.jwks_file(path) {
                    Ok(keys) if !keys.is_empty() => {
                        role.jwks_keys = keys;
                        changed = true;
                    }
                    Ok(_) => log::warn!(
                        "{setting} {}: no usable key, keeping the last keys",
                        path.display()
                    ),
                    Err(reason) => log::warn!(
                        "{setting} {}: keeping the last keys: {reason}",
                        path.display()
                    ),
                }
            }
            if changed {
                role.publish();
            }
        }
    }
}
