//! One client connection from accept to close, sans-io: the one [`ConnState`] enum and
//! every transition between its phases (exchange, resuming, streaming, lingering), the
//! deadline each phase keeps, and what each does when that deadline passes.
//!
//! A connection never touches a socket, the bus, a shared table, an atomic or a clock.
//! The event loop reads bytes into the buffers handed out here, passes the time
//! ([`Now`]), the bus's answers and a random number where jitter is needed, and carries
//! out what comes back: writes, bus publishes and fetches (the loop mints their
//! tickets), the per-address table (the loop acquires and releases), timers.
//!
//! - [`exchange`]: plain HTTP, keep-alive and pipelining, publish bodies, answers in
//!   request order;
//! - [`handlers`]: what each route answers, and the token checks;
//! - [`authorizing`]: a subscription waiting for the application's decision, and what
//!   the decision makes of it;
//! - [`resume`]: a subscription's Last-Event-ID turned into a plan (start now, or fetch
//!   from the bus first) and the stream's opening bytes;
//! - [`stream`]: the open stream, a cursor into the loop's rings.

pub(crate) mod access;
pub(crate) mod authorizing;
pub(crate) mod exchange;
mod handlers;
pub(crate) mod resume;
pub(crate) mod stream;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::auth::Verifier;
use crate::bus::{Backfill, BusHealth};
use crate::client::Cidr;
use crate::config::{ForwardedHeader, Limits};
use crate::http::answer::{AuthFailure, HttpError};
use crate::metrics::Format;

pub(crate) use authorizing::{Authorizing, Waiting};
pub(crate) use exchange::{Exchange, Step, StreamRequest};
pub(crate) use resume::Resuming;
pub(crate) use stream::{Flushed, Parting, Stream, StreamEnd};

/// How long a closing connection discards input so its peer reads the answer.
pub(crate) const LINGER: Duration = Duration::from_secs(1);
/// Input discarded from a closing connection before it is closed regardless.
pub(crate) const LINGER_BYTES_MAX: usize = 64 * 1024;
/// Heartbeat intervals a blocked stream may go without writing a byte before it is closed.
pub(crate) const STALLED_HEARTBEATS: u64 = 2;

/// The clock as the loop read it once this turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Now {
    /// Milliseconds since the loop started (monotonic): every deadline runs on this.
    pub ms: u64,
    /// The wall clock in Unix milliseconds: only token `exp` and `nbf` need it.
    pub unix_ms: u64,
}

impl Now {
    /// The loop time (ms) at which wall-clock time `unix_ms` arrives, as the two clocks
    /// stand now (a time already past is now). Never 0, which means "never".
    pub(crate) fn loop_ms_at(self, unix_ms: u64) -> u64 {
        self.ms
            .saturating_add(unix_ms.saturating_sub(self.unix_ms))
            .max(1)
    }
}

/// What the server knows that a request may need: read-only, the same for every
/// connection of a loop.
pub(crate) struct Env<'a> {
    /// The limits in force (routes, topics, publishes, bodies, connections per client).
    pub limits: &'a Limits,
    /// Origins allowed by CORS (`cors_origins`).
    pub cors_origins: &'a [String],
    /// The header a trusted proxy names the client in (`forwarded_header`).
    pub forwarded_header: ForwardedHeader,
    /// The static publish token (`publish_token`), if set.
    pub publish_token: Option<&'a str>,
    /// Proxies allowed to name the client.
    pub trusted_proxies: &'a [Cidr],
    /// Renders the `/metrics` page.
    pub render_metrics: &'a dyn Fn(Format) -> String,
    /// A topic's subscriber count and newest id, for `/topics`.
    pub presence: &'a dyn Fn(&str) -> crate::presence::TopicPresence,
    /// What `/readyz` answers from.
    pub readiness: Readiness,
    /// Verifies subscriber tokens, when a subscribe key is set.
    pub subscribe_verifier: Option<&'a Verifier>,
    /// Verifies publisher tokens, when a publish key is set.
    pub publish_verifier: Option<&'a Verifier>,
    /// The application decides each subscription (`auth_url` or an `Authorize` hook):
    /// stream requests carry the question for it.
    pub authorizing: bool,
    /// The application decides each publish too (`auth_publish`).
    pub authorizing_publish: bool,
}

/// Whether this node should be sent new traffic: `/readyz`'s input, read by the loop from
/// its drain state and the bus (never by the core, which touches no atomic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// A graceful shutdown is under way: the node is about to go.
    pub draining: bool,
    /// Whether the bus reaches its log.
    pub bus: BusHealth,
}

#[cfg(any(test, feature = "internals"))]
impl Readiness {
    /// Serving, and the bus connected: the simulation's and the unit tests' input.
    pub(crate) const READY: Readiness = Readiness {
        draining: false,
        bus: BusHealth::Connected,
    };
}

/// A reconnect hint between `retry_ms` and twice that (from `random`), so clients told to
/// leave together do not come back together. While draining, the spread is the
/// `shutdown_retry_window`, so a restart is not a reconnect storm.
pub(crate) fn jittered_retry_ms(limits: &Limits, random: u64, draining: bool) -> u32 {
    let base = limits.retry_ms;
    let spread = if draining {
        limits.shutdown_retry_window.as_millis() as u64 + 1
    } else {
        u64::from(base).max(1)
    };
    base.saturating_add((random % spread) as u32)
}

/// What a connection is doing: each phase owns its data, so a transition frees what the
/// phase before needed (the head buffer goes back to the pool when a stream starts).
pub(crate) enum ConnState {
    /// Reading request heads and bodies, writing answers in request order (keep-alive,
    /// pipelining); boxed so streams stay small.
    Exchange(Box<Exchange>),
    /// A subscription parked while the application decides (`auth_url` or the
    /// `Authorize` hook), until its answer or `auth_timeout` (then `503`). The exchange
    /// reads nothing more meanwhile; it answers a refusal.
    Authorizing(Box<Authorizing>),
    /// A subscription parked while the bus fetches what its Last-Event-ID missed. The
    /// exchange reads nothing more meanwhile; it is kept to answer if the fetch fails.
    Resuming(Box<Resuming>),
    /// An open event stream: a cursor into the loop's rings, never a copy of an event.
    Streaming(Stream),
    /// The final answer is written and the write side shut; input is discarded until the
    /// peer closes, [`LINGER`] passes or [`LINGER_BYTES_MAX`] arrived.
    Lingering {
        /// Bytes discarded so far.
        discarded: usize,
    },
}

/// What a passed deadline asks of the loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// Close the connection now.
    Close(StreamEnd),
    /// Drive the exchange again (it may have queued a 408); its new deadline is ready in
    /// [`Exchange::take_deadline`].
    Drive,
    /// Write the stream (a heartbeat or a parting `retry:` may be queued), then check it
    /// again at loop time `next_ms`.
    Write {
        /// A heartbeat was queued (for the metrics).
        heartbeat: bool,
        /// The stream's next check.
        next_ms: u64,
    },
}

/// One client connection, in its current phase. (Who it is and how it was admitted is
/// the loop's business: the connection's slab slot stays small that way.)
pub(crate) struct Connection {
    state: ConnState,
}

impl Connection {
    /// A new connection in its exchange phase.
    pub(crate) fn new(exchange: Exchange) -> Self {
        Connection {
            state: ConnState::Exchange(Box::new(exchange)),
        }
    }

    /// The current phase.
    pub(crate) fn state(&self) -> &ConnState {
        &self.state
    }

    /// The final phase, as the connection leaves the loop.
    pub(crate) fn into_state(self) -> ConnState {
        self.state
    }

    /// The current phase, to drive it.
    pub(crate) fn state_mut(&mut self) -> &mut ConnState {
        &mut self.state
    }

    /// The exchange, when the connection is in that phase.
    pub(crate) fn exchange(&mut self) -> Option<&mut Exchange> {
        match &mut self.state {
            ConnState::Exchange(exchange) => Some(exchange),
            _ => None,
        }
    }

    /// The stream, when the connection is streaming.
    pub(crate) fn stream(&self) -> Option<&Stream> {
        match &self.state {
            ConnState::Streaming(stream) => Some(stream),
            _ => None,
        }
    }

    /// The stream, when the connection is streaming, to write it.
    pub(crate) fn stream_mut(&mut self) -> Option<&mut Stream> {
        match &mut self.state {
            ConnState::Streaming(stream) => Some(stream),
            _ => None,
        }
    }

    /// The exchange's deadline (loop ms), if it moved since the last call (also while
    /// resuming): the loop re-arms its timer then.
    pub(crate) fn take_deadline(&mut self) -> Option<u64> {
        match &mut self.state {
            ConnState::Exchange(exchange) => exchange.take_deadline(),
            ConnState::Resuming(resuming) => resuming.exchange.take_deadline(),
            ConnState::Authorizing(authorizing) => authorizing.exchange.take_deadline(),
            _ => None,
        }
    }

    /// Parks the exchange's subscription or publish while the application decides the
    /// question asked under ticket `serial`, until loop time `deadline_ms`. (An answer goes
    /// through [`Connection::take_decision`], which returns the connection to its
    /// exchange.)
    pub(crate) fn await_decision(&mut self, serial: u64, waiting: Waiting, deadline_ms: u64) {
        let state = std::mem::replace(&mut self.state, ConnState::Lingering { discarded: 0 });
        self.state = match state {
            ConnState::Exchange(mut exchange) => {
                exchange.wait_until(deadline_ms);
                ConnState::Authorizing(Box::new(Authorizing {
                    exchange,
                    serial,
                    waiting,
                }))
            }
            other => {
                debug_assert!(false, "only an exchange parks for a decision");
                other
            }
        };
    }

    /// What waits for the decision, when `serial` is its question's ticket. The connection
    /// is back in its exchange phase, under a fresh head deadline (for its answer, or the
    /// publish's body), until the loop starts the stream or parks it again.
    pub(crate) fn take_decision(
        &mut self,
        serial: u64,
        now: Now,
        limits: &Limits,
    ) -> Option<Waiting> {
        match &self.state {
            ConnState::Authorizing(authorizing) if authorizing.serial == serial => {}
            _ => return None,
        }
        let ConnState::Authorizing(authorizing) =
            std::mem::replace(&mut self.state, ConnState::Lingering { discarded: 0 })
        else {
            return None; // Checked just above.
        };
        let Authorizing {
            mut exchange,
            waiting,
            ..
        } = *authorizing;
        exchange.restart_head_deadline(now, limits);
        self.state = ConnState::Exchange(exchange);
        Some(waiting)
    }

    /// Parks the exchange's subscription while the bus fetches `request`'s missed events
    /// under ticket `serial`; `so_far` is what earlier fetches brought. (A fetch that
    /// comes back goes through [`Connection::take_backfill`], which returns the connection
    /// to its exchange, so only an exchange parks.)
    pub(crate) fn await_backfill(
        &mut self,
        serial: u64,
        request: StreamRequest,
        so_far: Option<Backfill>,
    ) {
        let state = std::mem::replace(&mut self.state, ConnState::Lingering { discarded: 0 });
        self.state = match state {
            ConnState::Exchange(exchange) => ConnState::Resuming(Box::new(Resuming {
                exchange,
                serial,
                request,
                so_far,
            })),
            other => {
                debug_assert!(false, "only an exchange parks for a fetch");
                other
            }
        };
    }

    /// The parked subscription, and what the fetches brought, when `serial` is its
    /// ticket. The connection is back in its exchange phase until the loop starts the
    /// stream or parks it again.
    pub(crate) fn take_backfill(
        &mut self,
        serial: u64,
    ) -> Option<(StreamRequest, Option<Backfill>)> {
        match &self.state {
            ConnState::Resuming(resuming) if resuming.serial == serial => {}
            _ => return None,
        }
        let ConnState::Resuming(resuming) =
            std::mem::replace(&mut self.state, ConnState::Lingering { discarded: 0 })
        else {
            return None; // Checked just above.
        };
        let Resuming {
            exchange,
            request,
            so_far,
            ..
        } = *resuming;
        self.state = ConnState::Exchange(exchange);
        Some((request, so_far))
    }

    /// Opens the stream: the exchange's head buffer is returned for reuse.
    pub(crate) fn start_stream(&mut self, stream: Stream) -> Option<Box<[u8]>> {
        match std::mem::replace(&mut self.state, ConnState::Streaming(stream)) {
            ConnState::Exchange(exchange) => Some(exchange.into_buffer()),
            ConnState::Resuming(resuming) => Some(resuming.exchange.into_buffer()),
            ConnState::Authorizing(authorizing) => Some(authorizing.exchange.into_buffer()),
            _ => None,
        }
    }

    /// The final answer is out and the write side shut: discard input until the peer
    /// closes. Returns the head buffer for reuse.
    pub(crate) fn linger(&mut self) -> Option<Box<[u8]>> {
        match std::mem::replace(&mut self.state, ConnState::Lingering { discarded: 0 }) {
            ConnState::Exchange(exchange) => Some(exchange.into_buffer()),
            ConnState::Resuming(resuming) => Some(resuming.exchange.into_buffer()),
            ConnState::Authorizing(authorizing) => Some(authorizing.exchange.into_buffer()),
            _ => None,
        }
    }

    /// Records `n` bytes of input thrown away (from a stream's client, or while
    /// lingering). Returns whether the connection must close: a lingering peer that sent
    /// more than [`LINGER_BYTES_MAX`].
    pub(crate) fn on_discarded(&mut self, n: usize) -> bool {
        match &mut self.state {
            ConnState::Lingering { discarded } => {
                *discarded += n;
                *discarded > LINGER_BYTES_MAX
            }
            _ => false,
        }
    }

    /// The connection's deadline passed: a request in progress gets 408 and an idle
    /// keep-alive connection is closed; a subscription still waiting for the
    /// application's decision gets 503; a stream that moved no byte for
    /// [`STALLED_HEARTBEATS`] intervals while blocked is a slow consumer, one past its
    /// lifetime is sent back with a jittered `retry:` (from `random`), a quiet one gets a
    /// heartbeat; a lingering connection is closed.
    pub(crate) fn on_deadline(&mut self, now: Now, limits: &Limits, random: u64) -> Expired {
        let heartbeat_ms = limits.heartbeat.as_millis() as u64;
        match &mut self.state {
            ConnState::Lingering { .. } => Expired::Close(StreamEnd::Finished),
            ConnState::Exchange(exchange) => match exchange.on_timeout(now, limits) {
                Step::Close => Expired::Close(StreamEnd::PeerGone),
                _ => Expired::Drive,
            },
            // The bus answers within its own timeouts: look again a head timeout later.
            ConnState::Resuming(resuming) => {
                resuming.exchange.wait_for_bus(now, limits);
                Expired::Drive
            }
            // No decision in time: 503, and a late answer finds no question to match.
            ConnState::Authorizing(_) => {
                let ConnState::Authorizing(authorizing) =
                    std::mem::replace(&mut self.state, ConnState::Lingering { discarded: 0 })
                else {
                    return Expired::Drive; // Matched just above.
                };
                let Authorizing {
                    mut exchange,
                    waiting,
                    ..
                } = *authorizing;
                match waiting {
                    Waiting::Stream(request) => exchange
                        .refuse_stream(HttpError::AuthUnavailable(AuthFailure::Timeout), &request),
                    Waiting::Publish => exchange.on_decided(Err(AuthFailure::Timeout)),
                }
                // The 503 gets a head timeout to go out, like a 408.
                exchange.restart_head_deadline(now, limits);
                self.state = ConnState::Exchange(exchange);
                Expired::Drive
            }
            ConnState::Streaming(stream) => {
                if stream.stalled(now.ms, STALLED_HEARTBEATS * heartbeat_ms) {
                    return Expired::Close(StreamEnd::Stalled);
                }
                let mut heartbeat = false;
                if stream.expired(now.ms) {
                    let why = stream.expiry();
                    stream.close_with_hint(jittered_retry_ms(limits, random, false), why);
                } else {
                    heartbeat = stream.queue_heartbeat(now.ms, heartbeat_ms);
                }
                Expired::Write {
                    heartbeat,
                    next_ms: stream.next_check_ms(now.ms, heartbeat_ms),
                }
            }
        }
    }

    /// The bus answered the publish with ticket `serial`. Returns whether the answer was
    /// this connection's (its slot may have been reused), and the refusal it carried.
    pub(crate) fn on_published(
        &mut self,
        serial: u64,
        result: crate::bus::Stored,
    ) -> (bool, Option<HttpError>) {
        match &mut self.state {
            ConnState::Exchange(exchange) => exchange.on_published(serial, result),
            _ => (false, None),
        }
    }
}
