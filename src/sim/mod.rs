//! A deterministic simulation of one event loop, in the spirit of TigerBeetle's VOPR and
//! sozu's simulation tests: one seed drives the real connection core (`conn/`), the
//! history (`history/`) and the timer wheel through a simulated network (`net.rs`), a
//! simulated clock with jumps, a simulated bus (`bus.rs`) and application (`app.rs`, the
//! `--auth-url` that decides access), with simulated HTTP clients
//! (`client.rs`) speaking real bytes, and checks the invariants of `docs/simulation.md`
//! after every step (`check.rs`). The loop itself is mirrored in `driver/`.
//!
//! Everything random comes from one [`Rng`] seeded by the seed, so a failing seed replays
//! exactly: `cargo run --release --features internals --example simulate -- --seed N`.

mod app;
mod bus;
mod check;
mod client;
mod driver;
mod net;

use std::time::Duration;

use crate::config::{Config, Limits};
use crate::conn::Env;

use app::SimApp;
use bus::SimBus;
use client::{Client, Kind};
use driver::Driver;
use net::Pipe;

/// A small, fast, seeded generator (SplitMix64): the simulation's only source of chance.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// True `per_mille` times in a thousand.
    pub(crate) fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// How long and how busy one simulated run is.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Steps of the busy phase (each a client, bus or clock action, then a loop turn).
    pub steps: usize,
    /// Publisher clients.
    pub publishers: usize,
    /// Subscriber clients.
    pub subscribers: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            steps: 400,
            publishers: 3,
            subscribers: 5,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    /// Events the bus assigned an id.
    pub published: u64,
    /// Events the subscribers received.
    pub received: u64,
    /// Gap events the subscribers received.
    pub gaps: u64,
    /// Connections opened.
    pub connections: u64,
    /// Streams closed as slow consumers.
    pub slow_closes: u64,
}

/// A broken invariant: the seed, the step, what broke, and how to replay it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// The step at which the invariant broke.
    pub step: usize,
    /// What broke.
    pub message: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at step {}: {}\nreplay: cargo run --release --features internals --example simulate -- --seed {}",
            self.seed, self.step, self.message, self.seed
        )
    }
}

/// The limits of a run: small, so that history is evicted, streams lag and deadlines pass.
fn limits(rng: &mut Rng) -> Limits {
    let mut limits = Config::default().limits();
    limits.head_timeout = Duration::from_millis(300 + rng.below(700));
    limits.idle_timeout = Duration::from_millis(500 + rng.below(3000));
    limits.heartbeat = Duration::from_millis(200 + rng.below(1000));
    limits.stream_lifetime = rng
        .chance(300)
        .then(|| Duration::from_millis(2_000 + rng.below(8_000)));
    limits.retry_ms = 100 + rng.below(400) as u32;
    limits.lag_bytes_max = 200 + rng.below(2_000) as usize;
    limits.head_bytes_max = 1024;
    limits.history.events = 2 + rng.below(20) as usize;
    limits.history.bytes = 4096;
    limits.history.total_bytes = 1 << 20;
    limits
}

/// The environment every request sees; `authorizing` when the simulated application
/// decides subscriptions and publishes.
fn env(limits: &Limits, authorizing: bool) -> Env<'_> {
    Env {
        limits,
        cors_origins: &[],
        forwarded_header: crate::config::ForwardedHeader::XForwardedFor,
        publish_token: None,
        trusted_proxies: &[],
        render_metrics: &|_| String::new(),
        presence: &|_| crate::presence::TopicPresence::default(),
        readiness: crate::conn::Readiness::READY,
        subscribe_verifier: None,
        publish_verifier: None,
        authorizing,
        authorizing_publish: authorizing,
    }
}

/// Runs seed `seed`: a busy phase of random steps, then a calm one in which every fault
/// stops and every subscriber must catch up with everything published to its topics.
pub fn simulate(seed: u64, options: &SimOptions) -> Result<SimStats, SimFailure> {
    let mut rng = Rng::new(seed);
    let limits = limits(&mut rng);
    let bus = SimBus::new(&mut rng);
    let mut world = World {
        driver: Driver::new(limits, bus, SimApp::new(seed), Rng::new(rng.next())),
        clients: Vec::new(),
        rng,
        stats: SimStats::default(),
    };
    for id in 0..options.publishers {
        world.clients.push(Client::publisher(id));
    }
    for id in 0..options.subscribers {
        let client = Client::subscriber(options.publishers + id, &mut world.rng);
        world.clients.push(client);
    }
    let fail = |step: usize, message: String| SimFailure {
        seed,
        step,
        message,
    };
    for step in 0..options.steps {
        world.step(false).map_err(|m| fail(step, m))?;
        check::invariants(&world.driver).map_err(|m| fail(step, m))?;
    }
    // The calm: no faults, clients read and reconnect, the bus answers and delivers.
    world.driver.bus.calm = true;
    for step in options.steps..options.steps + 2_000 {
        world.step(true).map_err(|m| fail(step, m))?;
        check::invariants(&world.driver).map_err(|m| fail(step, m))?;
        if world.caught_up() {
            return Ok(world.finish());
        }
    }
    Err(fail(options.steps + 2_000, world.lagging()))
}

/// The loop, its clients and the chance that moves them.
struct World {
    driver: Driver,
    clients: Vec<Client>,
    rng: Rng,
    stats: SimStats,
}

impl World {
    /// One random action, then a loop turn.
    fn step(&mut self, calm: bool) -> Result<(), String> {
        let rng = &mut self.rng;
        let driver = &mut self.driver;
        match rng.below(100) {
            0..=9 if !calm => driver.advance(1 + rng.below(100)),
            10..=11 if !calm => driver.advance(500 + rng.below(4_000)),
            12..=19 if !calm => {
                let index = rng.below(self.clients.len() as u64) as usize;
                let client = &mut self.clients[index];
                client.queue_requests(rng);
            }
            20..=29 => {
                let r = rng.below(8);
                let bus = &mut driver.bus;
                match r {
                    0..=2 => bus.take_queued(rng),
                    3..=4 => bus.deliver(1 + rng.below(6) as usize),
                    5 => bus.answer_fetch(rng),
                    // Only a bus with a log loses events or its reach (the embedded bus
                    // has neither).
                    6 if !calm && bus.can_backfill && rng.chance(100) => bus.lose(),
                    7 if !calm && bus.can_backfill && rng.chance(100) => bus.know_reach(false),
                    _ => bus.know_reach(true),
                }
            }
            _ => {
                let index = rng.below(self.clients.len() as u64) as usize;
                self.client_act(index, calm)?;
            }
        }
        if calm {
            // The clock stands still: progress must come from readiness and the bus, not
            // from a heartbeat timer that happens to write a stream that missed a wake-up.
            let bus = &mut self.driver.bus;
            bus.know_reach(true);
            bus.take_queued(&mut self.rng);
            bus.answer_fetch(&mut self.rng);
            bus.deliver(8);
        }
        self.driver.turn();
        Ok(())
    }

    /// What one client does: connect, send, read, pause, close.
    fn client_act(&mut self, index: usize, calm: bool) -> Result<(), String> {
        let now_ms = self.driver.now.ms;
        let rng = &mut self.rng;
        let client = &mut self.clients[index];
        let Some(pipe_index) = client.pipe else {
            let wants = match &client.kind {
                Kind::Publisher { .. } => !client.settled_queue_empty(),
                Kind::Subscriber(_) => true,
            };
            if wants && (calm || now_ms >= client.reconnect_ms) {
                let room = 32 + rng.below(4096) as usize;
                self.driver.pipes.push(Pipe::new(room));
                let pipe = self.driver.pipes.len() - 1;
                client.connect(pipe, &mut self.driver.pipes, &self.driver.bus, rng);
                self.driver.backlog.push(pipe);
                self.stats.connections += 1;
            }
            return Ok(());
        };
        let pipe = &mut self.driver.pipes[pipe_index];
        let choice = if calm { rng.below(3) } else { rng.below(20) };
        let over = match choice {
            0 => {
                client.send_some(pipe, rng);
                false
            }
            1 | 2 | 4..=14 => {
                if now_ms < client.paused_until_ms && !calm {
                    false
                } else {
                    let max = 1 + rng.below(2048) as usize;
                    client.receive(pipe, &self.driver.bus, max, self.driver.app.on)?
                }
            }
            3 => {
                client.paused_until_ms = now_ms + rng.below(3_000);
                false
            }
            15 if client.settled() || rng.chance(200) => {
                pipe.client_close(rng.chance(500));
                true
            }
            _ => {
                client.send_some(pipe, rng);
                false
            }
        };
        if over {
            client.pipe = None;
            client.reconnect_ms = now_ms + rng.below(1_000);
            if let Kind::Publisher { .. } = client.kind {
                client.discard_requests();
            }
            if !pipe.server_closed && !pipe.client_shut {
                pipe.client_close(false);
            }
        }
        Ok(())
    }

    /// Every subscriber has every delivered event of its topics, and every publisher has
    /// its answers.
    fn caught_up(&self) -> bool {
        self.clients.iter().all(|client| match &client.kind {
            Kind::Subscriber(sub) => {
                client.pipe.is_some() && sub.cursor.max(sub.forgotten) >= self.newest(&sub.topics)
            }
            Kind::Publisher { .. } => client.settled(),
        }) && !self.driver.bus.busy()
    }

    /// The newest delivered event on any of `topics`.
    fn newest(&self, topics: &[&str]) -> crate::history::ring::Seq {
        let ledger = &self.driver.bus.ledger;
        ledger
            .iter()
            .enumerate()
            .rev()
            .find(|(_, l)| l.delivered && l.topics.iter().any(|t| client::wants(topics, t)))
            .map_or(0, |(index, _)| index as u128 + 1)
    }

    /// Who did not catch up, for the failure message.
    fn lagging(&self) -> String {
        let mut out = String::from("not caught up after the calm:");
        for client in &self.clients {
            match &client.kind {
                Kind::Subscriber(sub) => {
                    let newest = self.newest(&sub.topics);
                    if sub.cursor.max(sub.forgotten) < newest || client.pipe.is_none() {
                        let server = client.pipe.and_then(|pipe| {
                            self.driver.conns.iter().find(|(_, s)| s.pipe == pipe)
                        });
                        let phase = match server.map(|(_, slot)| slot.conn.state()) {
                            None => "none",
                            Some(crate::conn::ConnState::Exchange(_)) => "exchange",
                            Some(crate::conn::ConnState::Resuming(_)) => "resuming",
                            Some(crate::conn::ConnState::Authorizing(_)) => "authorizing",
                            Some(crate::conn::ConnState::Streaming(stream)) => {
                                let pipe = &self.driver.pipes[server.map_or(0, |(_, s)| s.pipe)];
                                out.push_str(&format!(
                                    " [blocked {} lag {:?} buffered {} room {} readable {} writable {}]",
                                    stream.is_blocked(),
                                    stream.lag_bytes(&self.driver.topics),
                                    pipe.to_client.len(),
                                    pipe.room,
                                    pipe.readable,
                                    pipe.writable
                                ));
                                "streaming"
                            }
                            Some(crate::conn::ConnState::Lingering { .. }) => "lingering",
                        };
                        out.push_str(&format!(
                            " subscriber {} ({}) on {:?} at {} of {newest} (connected: {}, server side: {phase});",
                            client.id,
                            client.debug(),
                            sub.topics,
                            sub.cursor,
                            client.pipe.is_some()
                        ));
                    }
                }
                Kind::Publisher { .. } if !client.settled() => {
                    out.push_str(&format!(" publisher {} still owed answers;", client.id));
                }
                Kind::Publisher { .. } => {}
            }
        }
        out
    }

    fn finish(self) -> SimStats {
        let mut stats = self.stats;
        stats.published = self.driver.bus.ledger.len() as u64;
        stats.slow_closes = self.driver.slow_closes;
        for client in &self.clients {
            if let Kind::Subscriber(sub) = &client.kind {
                stats.received += sub.received;
                stats.gaps += sub.gaps;
            }
        }
        stats
    }
}
