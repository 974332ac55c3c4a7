//! Plain HTTP connections on the loop: driving an exchange through reads, parses and
//! answers until it would block, and the lingering close after a final answer.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use super::*;

/// Counts a refusal by status, and the ones with their own counters.
pub(super) fn count_refusal(shared: &Shared, error: HttpError) {
    shared.metrics.count_refusal(error.answer().0);
    match error {
        HttpError::Unauthorized(_) | HttpError::Forbidden => {
            shared.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
        }
        HttpError::TooManyFromClient => {
            shared
                .metrics
                .refused_per_ip
                .fetch_add(1, Ordering::Relaxed);
        }
        HttpError::ServerFull => {
            shared.metrics.refused_full.fetch_add(1, Ordering::Relaxed);
        }
        HttpError::PublishListenerFull => {
            shared
                .metrics
                .refused_publish_full
                .fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

impl EventLoop {
    pub(super) fn request_context<'s>(
        shared: &'s Shared,
        render_metrics: &'s dyn Fn() -> String,
        loop_index: usize,
        conn: usize,
        now_unix_ms: u64,
    ) -> RequestContext<'s> {
        RequestContext {
            limits: &shared.limits,
            cors_origins: &shared.config.cors_origins,
            forwarded_header: shared.config.forwarded_header,
            publish_token: shared.config.publish_token.as_deref(),
            bus: &*shared.bus,
            trusted_proxies: &shared.trusted_proxies,
            clients: &shared.clients,
            render_metrics,
            loop_index,
            conn,
            serials: &shared.serials,
            subscribe_verifier: shared.subscribe_verifier.as_ref(),
            publish_verifier: shared.publish_verifier.as_ref(),
            now_unix_ms,
        }
    }

    /// Reads, parses and answers requests on a plain HTTP connection until it would block.
    pub(super) fn drive_http(&mut self, key: usize) {
        let shared = self.shared.clone();
        let render_metrics = || shared.render_metrics();
        let ctx =
            Self::request_context(&shared, &render_metrics, self.index, key, self.now_unix_ms);
        for _ in 0..HTTP_ROUNDS_MAX {
            let Some(Connection {
                socket,
                info,
                state,
                idle,
                ..
            }) = self.conns.get_mut(key)
            else {
                return;
            };
            let ConnState::Http(exchange) = state else {
                return;
            };
            let step = exchange.step(&ctx, info);
            for error in exchange.take_refusals() {
                count_refusal(&shared, error);
            }
            match step {
                Step::Read => {
                    let target = exchange.read_target();
                    if target.is_empty() {
                        debug_assert!(false, "read requested with no room");
                        return self.close(key);
                    }
                    match socket::io(|| socket.read(target)) {
                        IoOutcome::Done(n) => {
                            exchange.on_read(n);
                            if *idle {
                                // A new request started: it gets the head deadline.
                                let at = self.now + shared.limits.head_timeout;
                                self.set_timer(key, at, false);
                            }
                        }
                        // Draining: a connection with no request under way and nothing
                        // more to read is done. One whose bytes already arrived is served.
                        IoOutcome::WouldBlock if self.drain_deadline.is_some() => {
                            if let Some(Connection {
                                state: ConnState::Http(exchange),
                                ..
                            }) = self.conns.get(key)
                            {
                                if exchange.is_idle() {
                                    return self.close(key);
                                }
                            }
                            return;
                        }
                        IoOutcome::WouldBlock => return,
                        IoOutcome::PeerClosed => return self.close(key),
                        IoOutcome::Failed(kind) => {
                            log::debug!("read failed: {kind:?}");
                            return self.close(key);
                        }
                    }
                }
                Step::Write => match socket::io(|| socket.write(exchange.unsent())) {
                    IoOutcome::Done(n) => {
                        self.counters.bytes_written += n as u64;
                        if exchange.on_written(n) {
                            // Answered: wait for the next request under the idle deadline,
                            // or the head deadline when one is already arriving.
                            let idle = exchange.is_idle();
                            let timeout = if idle {
                                shared.limits.idle_timeout
                            } else {
                                shared.limits.head_timeout
                            };
                            self.set_timer(key, self.now + timeout, idle);
                        }
                    }
                    IoOutcome::WouldBlock => return,
                    IoOutcome::PeerClosed | IoOutcome::Failed(_) => return self.close(key),
                },
                Step::Subscribe(request) => return self.open_stream(key, request),
                Step::Linger => return self.linger(key),
                Step::Close => return self.close(key),
                // A completion from the bus drives the connection again.
                Step::Await => return,
            }
        }
        self.read_next.push(key);
    }

    /// Ends a connection whose final answer is written: shut the write side (a FIN after
    /// the answer) and discard input for a moment, because closing with unread input would
    /// send a reset that can destroy the answer before the client reads it.
    pub(super) fn linger(&mut self, key: usize) {
        if self.lingering >= LINGERING_MAX {
            return self.close(key);
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Err(error) = conn.socket.shutdown(std::net::Shutdown::Write) {
            log::debug!("shutdown failed: {error}");
            return self.close(key);
        }
        let previous = std::mem::replace(&mut conn.state, ConnState::Lingering { discarded: 0 });
        if let ConnState::Http(exchange) = previous {
            self.recycle(exchange.into_buffer());
        }
        self.lingering += 1;
        self.set_timer(key, self.now + LINGER, false);
        self.discard_input(key);
    }
}
