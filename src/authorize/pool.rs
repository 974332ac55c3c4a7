//! The authorization workers: a bounded queue of questions from the loops, a few threads
//! that put each to the [`Authorize`] hook (or the HTTP callback), and a short-lived cache
//! of answers. Each answer goes back to the asking loop as a completion for its ticket.
//!
//! Bounded everywhere: the queue holds `auth_queue` questions (past it the loop refuses
//! with `503` at once), the workers are `auth_workers` (the most calls in flight), a
//! question that waited longer than `auth_timeout` is answered `Unavailable` without a
//! call (its client has been told `503` by then), and the cache holds at most
//! [`CACHE_ENTRIES_MAX`] answers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{AccessAction, AccessRequest, Authorize, Decision};
use crate::bus::{Completer, Completion, Ticket};

/// Answers the cache holds at most. Past it, expired answers are dropped, and a new one is
/// not cached while the cache is still full: a flood of distinct credentials costs calls,
/// never memory.
pub(crate) const CACHE_ENTRIES_MAX: usize = 65_536;

/// How the pool runs.
#[derive(Clone, Debug)]
pub(crate) struct PoolSettings {
    /// Worker threads: the most calls in flight.
    pub workers: usize,
    /// Questions waiting for a worker.
    pub queue: usize,
    /// A question older than this is answered `Unavailable` without a call.
    pub timeout: Duration,
    /// How long an answer is reused for the same question; zero never.
    pub cache_ttl: Duration,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct PoolStats {
    /// Decisions by outcome: allowed, unauthorized, forbidden, unavailable.
    pub allowed: AtomicU64,
    /// `401`s.
    pub unauthorized: AtomicU64,
    /// `403`s.
    pub forbidden: AtomicU64,
    /// No decision (failure, timeout, or waited too long in the queue).
    pub unavailable: AtomicU64,
    /// Refused at once because the queue was full.
    pub busy: AtomicU64,
    /// Answered from the cache.
    pub cached: AtomicU64,
}

/// A question in the queue.
struct Job {
    ticket: Ticket,
    request: AccessRequest,
    queued_at: Instant,
}

/// The queue was full: the loop answers `503`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Busy;

/// The loops' end of the pool.
pub(crate) struct AuthPool {
    jobs: Sender<Job>,
    stats: Arc<PoolStats>,
}

impl AuthPool {
    /// Starts `settings.workers` threads that answer with `authorize` through `completer`.
    pub(crate) fn start(
        authorize: Arc<dyn Authorize>,
        settings: PoolSettings,
        completer: Completer,
    ) -> std::io::Result<AuthPool> {
        let (jobs, queue) = crossbeam_channel::bounded(settings.queue);
        let stats = Arc::new(PoolStats::default());
        let cache = Arc::new(Cache::new(settings.cache_ttl));
        for index in 0..settings.workers {
            let worker = Worker {
                authorize: authorize.clone(),
                queue: queue.clone(),
                completer: completer.clone(),
                stats: stats.clone(),
                cache: cache.clone(),
                timeout: settings.timeout,
            };
            // Detached: a worker ends when the loops (the queue's senders) are gone, or,
            // stuck in a hook that never returns, with the process.
            std::thread::Builder::new()
                .name(format!("herald-auth-{index}"))
                .spawn(move || worker.run())?;
        }
        Ok(AuthPool { jobs, stats })
    }

    /// Queues `request` for the connection `ticket` names, or refuses at once when the
    /// queue is full.
    pub(crate) fn submit(&self, ticket: Ticket, request: AccessRequest) -> Result<(), Busy> {
        let job = Job {
            ticket,
            request,
            queued_at: Instant::now(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                Err(Busy)
            }
        }
    }

    /// The pool's counters.
    pub(crate) fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }
}

/// One worker thread's share of the pool.
struct Worker {
    authorize: Arc<dyn Authorize>,
    queue: Receiver<Job>,
    completer: Completer,
    stats: Arc<PoolStats>,
    cache: Arc<Cache>,
    timeout: Duration,
}

impl Worker {
    fn run(self) {
        while let Ok(job) = self.queue.recv() {
            let decision = self.decide(&job);
            let counter = match &decision {
                Decision::Allow(_) => &self.stats.allowed,
                Decision::Unauthorized => &self.stats.unauthorized,
                Decision::Forbidden => &self.stats.forbidden,
                Decision::Unavailable => &self.stats.unavailable,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            self.completer
                .complete(Completion::Authorized(job.ticket, decision));
        }
    }

    fn decide(&self, job: &Job) -> Decision {
        // Its client was answered 503 when this much time had passed: calling now would
        // only add load to an application that is already behind.
        if job.queued_at.elapsed() >= self.timeout {
            return Decision::Unavailable;
        }
        if let Some(decision) = self.cache.get(&job.request) {
            self.stats.cached.fetch_add(1, Ordering::Relaxed);
            return decision;
        }
        // A panicking hook costs its client a 503, not the worker.
        let decision = catch_unwind(AssertUnwindSafe(|| self.authorize.authorize(&job.request)))
            .unwrap_or_else(|_| {
                log::error!("the authorize hook panicked: answering 503");
                Decision::Unavailable
            });
        // A failure is not remembered: the next client asks again.
        if decision != Decision::Unavailable {
            self.cache.put(&job.request, &decision);
        }
        decision
    }
}

/// What makes two questions the same for the cache: everything the callback is sent (the
/// other headers are not, and a reconnect's `Last-Event-ID` must not miss the cache).
#[derive(PartialEq, Eq, Hash)]
struct CacheKey {
    action: AccessAction,
    client: IpAddr,
    topics: Vec<String>,
    cookie: Option<String>,
    authorization: Option<String>,
    token: Option<String>,
    origin: Option<String>,
}

impl CacheKey {
    fn of(request: &AccessRequest) -> CacheKey {
        CacheKey {
            action: request.action,
            client: request.client,
            topics: request.topics.clone(),
            cookie: request.cookie.clone(),
            authorization: request.authorization.clone(),
            token: request.token.clone(),
            origin: request.origin.clone(),
        }
    }
}

/// Answers by question, each kept for the cache's time to live.
struct Cache {
    ttl: Duration,
    entries: Mutex<HashMap<CacheKey, (Instant, Decision)>>,
}

impl Cache {
    fn new(ttl: Duration) -> Self {
        Cache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The answer to the same question, when it is younger than the time to live.
    fn get(&self, request: &AccessRequest) -> Option<Decision> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, decision) = entries.get(&CacheKey::of(request))?;
        (at.elapsed() < self.ttl).then(|| decision.clone())
    }

    /// Remembers an answer (not when the cache is full of live answers).
    fn put(&self, request: &AccessRequest, decision: &Decision) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CACHE_ENTRIES_MAX {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= CACHE_ENTRIES_MAX {
                return;
            }
        }
        entries.insert(CacheKey::of(request), (Instant::now(), decision.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorize::Grant;
    use std::net::Ipv4Addr;

    fn request(cookie: &str) -> AccessRequest {
        AccessRequest {
            action: AccessAction::Subscribe,
            client: Ipv4Addr::LOCALHOST.into(),
            topics: vec!["news".into()],
            cookie: Some(cookie.into()),
            authorization: None,
            token: None,
            origin: None,
            headers: vec![("Cookie".into(), cookie.into())],
        }
    }

    #[test]
    fn the_cache_answers_the_same_question_within_its_time() {
        let cache = Cache::new(Duration::from_secs(60));
        let allow = Decision::Allow(Grant::default());
        cache.put(&request("a"), &allow);
        assert_eq!(cache.get(&request("a")), Some(allow.clone()));
        // Other headers (a reconnect's Last-Event-ID) are not part of the question.
        let mut reconnect = request("a");
        reconnect
            .headers
            .push(("Last-Event-ID".into(), "1-9".into()));
        assert_eq!(cache.get(&reconnect), Some(allow));
        assert_eq!(cache.get(&request("b")), None, "other credentials");
        let expired = Cache::new(Duration::from_nanos(1));
        expired.put(&request("a"), &Decision::Forbidden);
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(expired.get(&request("a")), None);
        let off = Cache::new(Duration::ZERO);
        off.put(&request("a"), &Decision::Forbidden);
        assert_eq!(off.get(&request("a")), None);
    }

    #[test]
    fn a_full_cache_keeps_its_memory() {
        let cache = Cache::new(Duration::from_secs(60));
        for n in 0..CACHE_ENTRIES_MAX + 10 {
            cache.put(&request(&n.to_string()), &Decision::Forbidden);
        }
        let len = cache.entries.lock().unwrap().len();
        assert_eq!(len, CACHE_ENTRIES_MAX);
        assert_eq!(
            cache.get(&request(&(CACHE_ENTRIES_MAX + 5).to_string())),
            None
        );
    }
}
