//! herald embedded in a Rust program: the program's own threads publish a price ticker
//! through a [`herald::Handle`] while herald serves the subscribers.
//!
//! Run with `cargo run --example embedded`, then `curl -N 'localhost:8080/events?topic=prices'`.
//! `HERALD_EXAMPLE_EVENTS=N` stops after N events (the test suite uses it); the listen
//! address comes from `HERALD_LISTEN` (default 127.0.0.1:8080).

use std::time::Duration;

use herald::{Config, Event, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    if let Ok(listen) = std::env::var("HERALD_LISTEN") {
        config.listen = listen.parse()?;
    }
    let limit: Option<u64> = std::env::var("HERALD_EXAMPLE_EVENTS")
        .ok()
        .map(|n| n.parse())
        .transpose()?;
    let server = Server::start(config)?;
    eprintln!(
        "serving on http://{}/events?topic=prices",
        server.local_addr()
    );

    const SYMBOLS: [&str; 3] = ["AAPL", "GOOGL", "MSFT"];
    let publishers: Vec<_> = SYMBOLS
        .iter()
        .enumerate()
        .map(|(index, &symbol)| {
            let handle = server.handle();
            std::thread::spawn(move || {
                let mut price = 100.0 + 50.0 * index as f64;
                let mut sent = 0u64;
                while limit.is_none_or(|limit| sent < limit) {
                    price += ((sent * 7 + index as u64) % 11) as f64 / 10.0 - 0.5;
                    let data = format!(r#"{{"symbol":"{symbol}","price":{price:.2}}}"#);
                    match handle.publish(&Event::new("prices", data).named("tick")) {
                        Ok(_) => sent += 1,
                        Err(error) => eprintln!("publish failed: {error}"),
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                sent
            })
        })
        .collect();
    let mut total = 0;
    for publisher in publishers {
        total += publisher.join().map_err(|_| "publisher thread panicked")?;
    }
    let stats = server.handle().stats();
    eprintln!(
        "published {total} events; stats: {} published, {} deliveries",
        stats.events_published, stats.deliveries
    );
    server.shutdown();
    Ok(())
}
