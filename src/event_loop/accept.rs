//! Accepting connections: the listeners' accept budget per turn, admission (the
//! listener's connection budget and the per-address limit, taken here and given back in
//! `io.rs` at close), the pause when refusals pile up or descriptors run out.

use std::net::IpAddr;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{EventLoop, Slot, LINGERING_MAX};
use crate::conn::{Connection, Exchange};
use crate::http::route::Listener;

/// Connections accepted per listener per turn, so a connect storm cannot starve streams.
const ACCEPTS_PER_TURN_MAX: usize = 256;
/// Pause after `accept` fails for lack of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl EventLoop {
    /// Whether accepting may go on: resumes once lingering connections fall below the
    /// low-water mark and any descriptor back-off has passed.
    pub(super) fn accepting(&self) -> bool {
        let Some(until) = self.accept_paused else {
            return true;
        };
        let below_low_water = self.lingering < LINGERING_MAX * 9 / 10;
        let backoff_over = until.is_none_or(|until| self.clock.now() >= until);
        below_low_water && backoff_over
    }

    /// Stops accepting until `accepting` says otherwise; `until` adds a minimum pause.
    fn pause_accepting(&mut self, until: Option<std::time::Instant>) {
        if self.accept_paused.is_none() {
            self.counters.accept_pauses += 1;
        }
        self.accept_paused = Some(until);
    }

    /// Accepts from every listener with connections waiting, unless accepting is paused.
    pub(super) fn accept_all(&mut self) {
        if !self.accepting() {
            return;
        }
        self.accept_paused = None;
        for index in 0..self.listeners.len() {
            if self.listeners[index].pending {
                self.accept(index);
            }
        }
    }

    fn accept(&mut self, index: usize) {
        for _ in 0..ACCEPTS_PER_TURN_MAX {
            if self.lingering >= LINGERING_MAX {
                // The hard ceiling: resume below the low-water mark (see `accepting`).
                return self.pause_accepting(None);
            }
            let slot = &mut self.listeners[index];
            match slot.socket.accept() {
                Ok((socket, peer)) => {
                    let kind = slot.kind;
                    self.admit(socket, peer.ip(), kind);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    slot.pending = false;
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the connection stays in the backlog; try again
                    // after a pause (the listener stays pending).
                    log::warn!("accept failed, pausing accepts: {e}");
                    return self.pause_accepting(Some(self.clock.now() + ACCEPT_BACKOFF));
                }
            }
        }
        // Budget spent with connections possibly left: resume next turn.
    }

    /// Takes a new connection: an exchange under the head deadline, or, past the
    /// listener's budget or the per-address limit, a refusal that is written and lingered
    /// over.
    fn admit(&mut self, mut socket: TcpStream, peer: IpAddr, listener: Listener) {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(error) = self.registry.register(
            &mut socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("could not register a connection: {error}");
            return;
        }
        let limits = &self.ctx.limits;
        let buffer = self
            .head_pool
            .pop()
            .unwrap_or_else(|| vec![0; limits.head_bytes_max].into_boxed_slice());
        self.counters.accepted += 1;
        let trusted = self.ctx.settings.is_trusted(peer);
        let admission = self.ctx.admission.admit(limits, peer, !trusted, listener);
        let admitted = admission.is_ok();
        // Dead-peer detection costs five more setsockopt calls: only for connections that
        // stay, so a flood of refusals costs what it did.
        let tuned = if admitted {
            crate::socket::tune(&socket, limits.heartbeat)
        } else {
            socket.set_nodelay(true)
        };
        if let Err(error) = tuned {
            log::debug!("could not set TCP_NODELAY, TCP_USER_TIMEOUT or keepalive: {error}");
        }
        let now = self.clock.as_now();
        let access_log = self.ctx.settings.access_log;
        let (exchange, counted) = match admission {
            Ok(counted) => {
                // Behind a trusted proxy each request's client is counted as it arrives.
                let per_request = trusted
                    && listener == Listener::Main
                    && limits.connections_per_ip_max.is_some();
                let mut exchange = Exchange::new(buffer, peer, listener, per_request, now, limits);
                if access_log {
                    exchange.log_access();
                }
                (exchange, counted)
            }
            // Counted by the exchange's refusals when the loop drives it.
            Err(error) => {
                let exchange = Exchange::refused(buffer, peer, error, access_log, now, limits);
                (exchange, None)
            }
        };
        entry.insert(Slot {
            socket,
            timer: None,
            admitted,
            counted,
            listener,
            conn: Connection::new(exchange),
        });
        self.rearm_exchange(key);
        if !admitted {
            self.drive(key); // Write the refusal right away.
        }
    }
}
