//! Tells an [`ObserveStreams`] hook when streams open and close, on a thread of its own:
//! the loops hand notices to a bounded queue and never wait, so a slow hook loses notices
//! (counted) instead of delaying a stream.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::{ObserveStreams, StreamInfo};

/// Notices waiting for the hook. Past it a notice is dropped and counted: a hook slower
/// than the streams it watches must not grow memory.
pub(crate) const NOTICES_MAX: usize = 65_536;

/// What happened to a stream.
enum Notice {
    Opened(Arc<StreamInfo>),
    Closed(Arc<StreamInfo>, &'static str),
}

/// The loops' end of the observer thread.
pub(crate) struct Observer {
    notices: Sender<Notice>,
    dropped: AtomicU64,
}

impl Observer {
    /// Starts the thread that calls `hook`.
    pub(crate) fn start(hook: Arc<dyn ObserveStreams>) -> std::io::Result<Observer> {
        let (notices, queue) = crossbeam_channel::bounded::<Notice>(NOTICES_MAX);
        // Detached: it ends when the loops (the queue's senders) are gone.
        std::thread::Builder::new()
            .name("herald-observe".into())
            .spawn(move || {
                while let Ok(notice) = queue.recv() {
                    // A panicking hook loses its notice, not the thread.
                    let called = catch_unwind(AssertUnwindSafe(|| match &notice {
                        Notice::Opened(stream) => hook.opened(stream),
                        Notice::Closed(stream, reason) => hook.closed(stream, reason),
                    }));
                    if called.is_err() {
                        log::error!("the stream observer hook panicked");
                    }
                }
            })?;
        Ok(Observer {
            notices,
            dropped: AtomicU64::new(0),
        })
    }

    /// A stream opened.
    /// A stream opened. Returns whether the hook will hear of it: when not (the queue was
    /// full), the loop must not tell it of the close either, so the hook never sees a
    /// close without its open.
    pub(crate) fn opened(&self, stream: &Arc<StreamInfo>) -> bool {
        self.send(Notice::Opened(stream.clone()))
    }

    /// A stream closed for the reason `reason` names.
    pub(crate) fn closed(&self, stream: Arc<StreamInfo>, reason: &'static str) {
        self.send(Notice::Closed(stream, reason));
    }

    fn send(&self, notice: Notice) -> bool {
        let sent = self.notices.try_send(notice).is_ok();
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Notices dropped because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::mpsc::{channel, Sender};
    use std::sync::Mutex;

    /// A hook that holds its thread until the gate opens, then reports what it heard.
    struct Gated {
        gate: Arc<Mutex<()>>,
        heard: Mutex<Sender<String>>,
    }

    impl ObserveStreams for Gated {
        fn opened(&self, stream: &StreamInfo) {
            drop(self.gate.lock());
            let _ = self
                .heard
                .lock()
                .unwrap()
                .send(format!("open {}", stream.id));
        }
        fn closed(&self, stream: &StreamInfo, reason: &'static str) {
            let _ = self
                .heard
                .lock()
                .unwrap()
                .send(format!("close {} {reason}", stream.id));
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_says_so() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let (tx, heard) = channel();
        let observer = Observer::start(Arc::new(Gated {
            gate: gate.clone(),
            heard: Mutex::new(tx),
        }))
        .unwrap();
        let stream = |id| {
            Arc::new(StreamInfo {
                id,
                client: Ipv4Addr::LOCALHOST.into(),
                topics: vec!["a".into()],
            })
        };
        // The thread takes one notice and waits at the gate; the queue then fills.
        let mut sent = 0;
        for id in 0..=NOTICES_MAX as u64 + 1 {
            sent += u64::from(observer.opened(&stream(id)));
        }
        assert!(!observer.opened(&stream(u64::MAX)), "a full queue refuses");
        assert!(observer.dropped() >= 1);
        assert_eq!(sent + observer.dropped(), NOTICES_MAX as u64 + 3);
        drop(held);
        assert_eq!(heard.recv().unwrap(), "open 0");
    }
}
