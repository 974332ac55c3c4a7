//! A loop's thread, and loops helping each other. The thread owns the poller and runs
//! turns on the loop's state, which it holds locked except while it sleeps in `poll`.
//! Meanwhile another loop may take the lock and do the sleeping loop's share of events it
//! just published: when one loop reads a publish, every other loop has the event, and
//! waking one only to write a few streams (an eventfd write, a context switch, an
//! `epoll_wait` and a turn) costs more than the writes. So the publishing loop's wake-ups
//! wait until it has read its turn's requests (`bus::defer_wakes`), and then, before its
//! own fan-out, for each loop still asleep with
//! at most [`HELP_STREAMS_MAX`] streams to write, it writes them itself; a loop with more,
//! or with anything else to do, is woken as before and writes in parallel.
//!
//! The lock never waits on a sibling: a loop only `try_lock`s another, and only while
//! that one is parked (see `Inbox::park`), so two loops cannot wait on each other.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use mio::{Events, Poll};

use super::{EventLoop, EVENTS_PER_POLL_MAX};
use crate::bus::LoopWaker;

/// Most streams a loop writes for a sleeping sibling; past this, the sibling is woken to
/// write them itself, in parallel (a fan-out to many is what a second loop is for).
pub(crate) const HELP_STREAMS_MAX: usize = 64;

/// Another loop, as a loop sees it: its state (while it runs) and what wakes it.
#[derive(Clone)]
pub(crate) struct Sibling {
    state: Weak<Mutex<EventLoop>>,
    wake: LoopWaker,
}

impl Sibling {
    /// Writes the sibling's new events for it if it sleeps and has little to write;
    /// otherwise wakes it (if it sleeps).
    fn help_or_wake(&self) {
        if self.wake.is_parked() {
            if let Some(state) = self.state.upgrade() {
                // Busy (running a turn, or helped by another loop): it sees its inbox
                // before it parks again.
                if let Ok(mut sibling) = state.try_lock() {
                    // Parked under its own lock means asleep in `poll` (or on its way in or
                    // out): its thread needs the lock back before it touches anything.
                    if self.wake.is_parked() && sibling.help() {
                        return;
                    }
                }
            }
        }
        self.wake.nudge();
    }
}

/// One loop's thread: the poller, and the state it shares with its siblings.
pub(crate) struct LoopThread {
    poll: Poll,
    state: Arc<Mutex<EventLoop>>,
    siblings: Vec<Sibling>,
}

impl LoopThread {
    /// The threads of `loops` (each with the poller its state was registered with), each
    /// knowing the others; `wakers` are the loops' in the same order.
    pub(crate) fn all(loops: Vec<(Poll, EventLoop)>, wakers: Vec<LoopWaker>) -> Vec<LoopThread> {
        let loops: Vec<(Poll, Arc<Mutex<EventLoop>>)> = loops
            .into_iter()
            .map(|(poll, state)| (poll, Arc::new(Mutex::new(state))))
            .collect();
        let siblings: Vec<Sibling> = loops
            .iter()
            .zip(wakers)
            .map(|((_, state), wake)| Sibling {
                state: Arc::downgrade(state),
                wake,
            })
            .collect();
        loops
            .into_iter()
            .map(|(poll, state)| LoopThread {
                poll,
                state,
                siblings: siblings.clone(),
            })
            .collect()
    }

    /// Runs turns until the server stops. The state is dropped (closing every socket the
    /// loop owns) when the last reference goes: at once, or at the end of a sibling's help.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_PER_POLL_MAX);
        crate::bus::defer_wakes();
        let state = self.state;
        let mut core = lock(&state);
        loop {
            if let Some(timeout) = core.before_poll(&mut self.poll, &mut events) {
                drop(core);
                let polled = self.poll.poll(&mut events, timeout);
                core = lock(&state);
                core.inbox.unpark();
                if let Err(error) = polled {
                    if error.kind() != std::io::ErrorKind::Interrupted {
                        log::error!("poll failed, stopping this event loop: {error}");
                        return;
                    }
                }
            }
            if !core.turn(&events, &self.siblings) {
                return;
            }
        }
    }
}

/// A loop's state, locked. A panic while it was held (a bug, never input) leaves a state
/// the loop can still close down; keep going rather than stop every loop that touches it.
fn lock(state: &Mutex<EventLoop>) -> MutexGuard<'_, EventLoop> {
    state.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl EventLoop {
    /// At the end of the turn's publishing: wakes, or helps, the loops this turn's
    /// publishes handed events to.
    pub(super) fn help_siblings(&mut self, siblings: &[Sibling]) {
        let mut loops = crate::bus::take_deferred_wakes();
        while loops != 0 {
            let index = loops.trailing_zeros() as usize;
            loops &= loops - 1;
            if index == self.ctx.index {
                continue; // This loop is awake; it drained its inbox this turn.
            }
            if let Some(sibling) = siblings.get(index) {
                sibling.help_or_wake();
            }
        }
    }

    /// Run by another loop's thread while this one sleeps in `poll`: takes the new events
    /// and, when they leave at most [`HELP_STREAMS_MAX`] streams to write, writes them.
    /// Returns whether that was all: false when this loop's own thread has work left
    /// (more streams, more events, the bus's answers, waiting replays, a first timer
    /// armed while it sleeps without a timeout), and must be woken.
    fn help(&mut self) -> bool {
        if self.drain_deadline.is_some() {
            return false;
        }
        self.clock.read();
        self.drain_inbox();
        self.queue_dirty();
        if self.pending.fan_out.len() + self.pending.write_next.len() > HELP_STREAMS_MAX {
            return false;
        }
        self.fan_out();
        let done = !self.work_left()
            && self.inbox.is_empty()
            && self.replays_waiting.is_empty()
            && !(self.sleeps_untimed && self.wheel.len() > 0);
        if done {
            self.counters.helps += 1;
        }
        self.publish_stats(false);
        done
    }
}
