//! The XADD pipeline benchmark of the `cluster` subcommand: what one Redis stream takes when
//! written directly, the ceiling under herald's publish path. Commands are encoded by the
//! `redis` crate and pipelined on [`testkit::redis::Client`]'s connection; the redis-server
//! itself is [`testkit::redis::RedisServer`].

use std::time::{Duration, Instant};

use redis::Value;
use serde::Serialize;
use testkit::redis::Client;

use crate::payload;

/// Most entries one connection of the XADD benchmark writes, whatever the duration says.
const XADD_ENTRIES_PER_CONNECTION_MAX: u64 = 50_000_000;

/// One XADD pipeline measurement.
#[derive(Clone, Debug)]
pub struct XaddPlan {
    /// Redis's port on 127.0.0.1.
    pub port: u16,
    /// The stream written.
    pub stream: String,
    /// The `topic` field of every entry.
    pub topic: String,
    /// Connections, one thread each.
    pub connections: usize,
    /// Commands written per batch before reading their replies.
    pub depth: usize,
    /// How long to keep writing.
    pub duration: Duration,
    /// `data` bytes (a loadtest payload, as herald would write it).
    pub payload_bytes: usize,
    /// `MAXLEN ~` of every XADD (what herald's `--redis-maxlen` is set to).
    pub maxlen: u64,
}

/// What one XADD measurement did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct XaddRun {
    /// The stream written.
    pub stream: String,
    /// Connections.
    pub connections: usize,
    /// Pipeline depth.
    pub depth: usize,
    /// Entries acknowledged with an id.
    pub entries: u64,
    /// Error replies.
    pub errors: u64,
    /// Connections that broke.
    pub io_errors: u64,
    /// Seconds from the first write to the last reply.
    pub seconds: f64,
    /// Entries acknowledged per second.
    pub entries_per_second: f64,
}

/// Writes XADD batches on every connection of `plan` until its duration is over.
pub fn xadd_bench(plan: &XaddPlan) -> XaddRun {
    let start = Instant::now();
    let stop_at = start + plan.duration;
    let mut run = XaddRun {
        stream: plan.stream.clone(),
        connections: plan.connections.max(1),
        depth: plan.depth.max(1),
        ..XaddRun::default()
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..run.connections)
            .map(|c| scope.spawn(move || xadd_connection(plan, c as u64, stop_at)))
            .collect();
        for handle in handles {
            let (entries, errors, io_errors) = handle.join().unwrap_or((0, 0, 1));
            run.entries += entries;
            run.errors += errors;
            run.io_errors += io_errors;
        }
    });
    run.seconds = start.elapsed().as_secs_f64();
    run.entries_per_second = per_second(run.entries, run.seconds);
    run
}

/// `count / seconds`, zero for an empty interval.
pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// One connection of [`xadd_bench`]: (entries, error replies, broken connections).
fn xadd_connection(plan: &XaddPlan, c: u64, stop_at: Instant) -> (u64, u64, u64) {
    let Ok(mut client) = Client::connect(plan.port) else {
        return (0, 0, 1);
    };
    let conn = client.connection();
    let depth = plan.depth.max(1) as u64;
    let (mut batch, mut body) = (Vec::new(), Vec::new());
    let (mut entries, mut errors) = (0, 0);
    let mut seq = c << 40;
    while Instant::now() < stop_at && entries + errors < XADD_ENTRIES_PER_CONNECTION_MAX {
        batch.clear();
        for _ in 0..depth {
            payload::encode(&mut body, seq, payload::unix_nanos(), plan.payload_bytes);
            seq += 1;
            redis::cmd("XADD")
                .arg(&plan.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(plan.maxlen)
                .arg("*")
                .arg("topic")
                .arg(&plan.topic)
                .arg("data")
                .arg(&body)
                .write_packed_command(&mut batch);
        }
        if conn.send_packed_command(&batch).is_err() {
            return (entries, errors, 1);
        }
        for _ in 0..depth {
            // An error reply is a value here (`ServerError`); `Err` is a broken connection.
            match conn.recv_response() {
                Ok(Value::BulkString(_)) => entries += 1,
                Ok(_) => errors += 1,
                Err(_) => return (entries, errors, 1),
            }
        }
    }
    (entries, errors, 0)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use testkit::redis::{Options, RedisServer};

    use super::*;

    #[test]
    fn private_server_takes_pipelined_xadds() {
        let options = Options {
            durable: false,
            ..Options::new("loadtest-xadd")
        };
        assert!(
            options.bin.exists(),
            "this test needs {} (apt-get install redis-server)",
            options.bin.display()
        );
        let server = RedisServer::launch(&options).unwrap();
        assert!(!server.version.is_empty());
        let run = xadd_bench(&XaddPlan {
            port: server.port,
            stream: "s".into(),
            topic: "t".into(),
            connections: 2,
            depth: 8,
            duration: Duration::from_millis(100),
            payload_bytes: 64,
            maxlen: 1_000,
        });
        assert_eq!((run.errors, run.io_errors), (0, 0), "{run:?}");
        assert!(run.entries >= 16 && run.entries % 8 == 0, "{run:?}");
        let mut client = server.client();
        let len = client.xlen("s");
        // Approximate trimming keeps at least MAXLEN entries.
        assert!(len >= 1_000.min(run.entries as i64), "{len} of {run:?}");
        let entries = client.xrange_count("s", "-", "+", 1);
        let fields: Vec<String> = entries[0]
            .fields
            .iter()
            .flat_map(|(field, value)| [field.clone(), value.clone()])
            .collect();
        let text = fields.join(" ");
        assert!(text.contains("topic t data seq="), "{text}");
        let pid = server.pid();
        drop(server);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(500, 2.0), 250.0);
        assert_eq!(per_second(5, 0.0), 0.0);
    }
}
