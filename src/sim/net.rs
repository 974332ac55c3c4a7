//! The simulated network: one [`Pipe`] per connection, two byte queues with a bounded
//! send buffer toward the client. Reads and writes move a random share of what they could
//! (split at random points), a full buffer is `WouldBlock`, the client may half-close or
//! reset, and the edges a poller would report (readable, writable) are kept for the
//! driver's next turn.

use std::collections::VecDeque;

use crate::history::ring::Seq;
use crate::socket::IoOutcome;

use super::Rng;

/// One connection's sockets, both ends.
#[derive(Default)]
pub(super) struct Pipe {
    /// Client to server.
    pub to_server: VecDeque<u8>,
    /// Server to client, at most `room` bytes (the kernel's send buffer).
    pub to_client: VecDeque<u8>,
    pub room: usize,
    /// The client sent FIN.
    pub client_shut: bool,
    /// The client reset the connection.
    pub reset: bool,
    /// The server shut its write side (lingering).
    pub server_shut_write: bool,
    /// The server closed the socket.
    pub server_closed: bool,
    /// Edges for the poller.
    pub readable: bool,
    pub writable: bool,
    /// Highest event id the stream on this pipe may skip after a gap event (noted by the
    /// driver when the stream opens).
    pub forgotten: Seq,
}

impl Pipe {
    /// A new connection whose send buffer holds `room` bytes.
    pub(super) fn new(room: usize) -> Self {
        Pipe {
            room,
            ..Pipe::default()
        }
    }

    /// The server reads into `target`.
    pub(super) fn server_read(&mut self, rng: &mut Rng, target: &mut [u8]) -> IoOutcome {
        if self.reset {
            return IoOutcome::PeerClosed;
        }
        if self.to_server.is_empty() {
            return if self.client_shut {
                IoOutcome::PeerClosed
            } else {
                IoOutcome::WouldBlock
            };
        }
        let most = target.len().min(self.to_server.len());
        let n = 1 + rng.below(most as u64) as usize;
        for (to, from) in target.iter_mut().zip(self.to_server.drain(..n)) {
            *to = from;
        }
        IoOutcome::Done(n)
    }

    /// The server writes the gathered `slices`.
    pub(super) fn server_write(&mut self, rng: &mut Rng, slices: &[&[u8]]) -> IoOutcome {
        if self.reset {
            return IoOutcome::PeerClosed;
        }
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let free = self.room.saturating_sub(self.to_client.len());
        if free == 0 && total > 0 {
            return IoOutcome::WouldBlock;
        }
        let most = total.min(free);
        let mut n = if rng.chance(300) {
            1 + rng.below(most.max(1) as u64) as usize
        } else {
            most
        };
        n = n.min(most);
        let mut left = n;
        for slice in slices {
            let take = left.min(slice.len());
            self.to_client.extend(&slice[..take]);
            left -= take;
        }
        IoOutcome::Done(n)
    }

    /// The client sends bytes.
    pub(super) fn client_send(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.client_shut || self.reset {
            return;
        }
        self.to_server.extend(bytes);
        self.readable = true;
    }

    /// The client reads up to `max` bytes: what it got, and whether the server's side is
    /// over (it closed or shut its write side and everything was read).
    pub(super) fn client_read(&mut self, max: usize) -> (Vec<u8>, bool) {
        let n = max.min(self.to_client.len());
        let bytes: Vec<u8> = self.to_client.drain(..n).collect();
        if n > 0 {
            self.writable = true;
        }
        let over = self.to_client.is_empty() && (self.server_closed || self.server_shut_write);
        (bytes, over)
    }

    /// The client closes: with a FIN, or a reset.
    pub(super) fn client_close(&mut self, reset: bool) {
        self.client_shut = true;
        self.reset |= reset;
        self.readable = true;
    }
}
