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
    pub(crate) fn opened(&self, stream: &Arc<StreamInfo>) {
        self.send(Notice::Opened(stream.clone()));
    }

    /// A stream closed for the reason `reason` names.
    pub(crate) fn closed(&self, stream: Arc<StreamInfo>, reason: &'static str) {
        self.send(Notice::Closed(stream, reason));
    }

    fn send(&self, notice: Notice) {
        if self.notices.try_send(notice).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notices dropped because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
