//! `axum_sse`: a plain axum + tokio SSE fan-out server, a benchmark instrument and not a
//! product. It is the idiomatic thing a Rust developer would write for "publish to a
//! topic, stream it to every subscriber": one `tokio::sync::broadcast` channel per topic,
//! and per subscriber an axum `Sse` response over a `BroadcastStream`, on tokio's
//! multi-thread runtime. herald's fan-out figures are read against it (issue 11).
//!
//! It answers what `loadtest run --target herald` sends:
//!
//! - `GET /events?topic=T` streams every event published to T after it subscribed, as
//!   `id: N\ndata: <body>\n\n` (axum's encoding, chunked by hyper), with axum's default
//!   keep-alive comment every 15 s;
//! - `POST /publish?topic=T` sends the body to T's channel and answers `200 OK` with the
//!   event's id and a newline.
//!
//! No history, no resume, no limits beyond the channel's: a subscriber more than
//! [`CHANNEL_EVENTS`] events behind skips the ones it missed (the stream leaves out
//! `Lagged`). Bodies go out through axum's `Event::data`, which splits on CR and LF alike (a
//! CRLF body gains an empty line; an empty body is an event no client dispatches), so
//! loadtest's one-line payloads are the only fair input. No `TCP_NODELAY` either, unless
//! asked: `axum::serve` leaves Nagle on, as most servers built from the examples do.
//!
//! Usage: `axum_sse [ADDR] [WORKERS] [nodelay]` (default `127.0.0.1:8091`, 2 worker threads,
//! Nagle on; `nodelay` sets `TCP_NODELAY` on every accepted connection, as herald does).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

/// Events a topic's channel holds for its slowest subscriber.
const CHANNEL_EVENTS: usize = 1024;

/// What travels through a topic's channel: the event id and its body.
type Message = (u64, Arc<str>);

/// The server's state, shared by every handler.
#[derive(Default)]
struct Topics {
    channels: Mutex<HashMap<String, broadcast::Sender<Message>>>,
    next_id: AtomicU64,
}

impl Topics {
    /// The channel of `topic`, created on first use.
    fn sender(&self, topic: &str) -> broadcast::Sender<Message> {
        // A poisoned lock means a handler panicked holding it; the map is still whole.
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_EVENTS).0)
            .clone()
    }

    /// Assigns the next id and sends `body` to `topic` under the map's lock, so two
    /// concurrent publishes reach a channel in id order (as herald's bus guarantees).
    fn publish(&self, topic: &str, body: Arc<str>) -> u64 {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let sender = channels
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_EVENTS).0);
        // No subscriber is not an error: the event is simply not delivered.
        let _ = sender.send((id, body));
        id
    }
}

/// The `?topic=` of both routes.
#[derive(Deserialize)]
struct TopicQuery {
    topic: String,
}

async fn subscribe(
    State(topics): State<Arc<Topics>>,
    Query(query): Query<TopicQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = topics.sender(&query.topic).subscribe();
    let stream = BroadcastStream::new(receiver).filter_map(|message| {
        let (id, body) = message.ok()?;
        Some(Ok(Event::default().id(id.to_string()).data(&*body)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn publish(
    State(topics): State<Arc<Topics>>,
    Query(query): Query<TopicQuery>,
    body: String,
) -> String {
    let id = topics.publish(&query.topic, body.into());
    format!("{id}\n")
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8091".to_owned());
    let workers = args.next().unwrap_or_else(|| "2".to_owned());
    let nodelay = args.next();
    let (addr, workers, nodelay) = match (
        addr.parse::<SocketAddr>(),
        workers.parse::<usize>(),
        nodelay.as_deref(),
    ) {
        (Ok(addr), Ok(workers), None | Some("nodelay")) if workers > 0 => {
            (addr, workers, nodelay.is_some())
        }
        _ => {
            eprintln!("usage: axum_sse [ADDR] [WORKERS] [nodelay]");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build();
    let result = runtime.and_then(|runtime| {
        runtime.block_on(async {
            let app = Router::new()
                .route("/events", get(subscribe))
                .route("/publish", post(publish))
                .with_state(Arc::new(Topics::default()));
            let listener = tokio::net::TcpListener::bind(addr).await?;
            eprintln!(
                "axum_sse listening on {addr}, {workers} workers, nodelay {nodelay}, pid {}",
                std::process::id()
            );
            if nodelay {
                let listener = listener.tap_io(|tcp| {
                    // Without it the connection still works, with Nagle on.
                    let _ = tcp.set_nodelay(true);
                });
                return axum::serve(listener, app).await;
            }
            axum::serve(listener, app).await
        })
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axum_sse: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
