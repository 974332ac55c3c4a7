#![allow(clippy::unwrap_used)]
//! herald's streams read by SSE clients that share no code with herald or with the parser in
//! `testkit::sse`: the npm `eventsource` package under Node.js and Python's `httpx` with
//! `httpx-sse` (issue 6, part 3). Each runs as a child process from `tests/clients/`, prints
//! what it receives as JSON lines, and must see exactly the events herald published (ids,
//! types and data) and exactly what the Rust-side parser sees, live and on resume.
//!
//! The clients are never skipped: a missing `node` or `python3`, or missing packages, fails
//! with the command that installs them (`.ci/run` runs it on a fresh machine).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::common::*;
use herald::{Event, Handle};

/// How much longer than its own timeout ([`DEADLINE`]) a client process is given before the
/// test stops waiting for it, so the client's own "timed out" message is what a failure shows.
const CLIENT_GRACE: Duration = Duration::from_secs(5);

/// The two independent clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    /// `tests/clients/eventsource_client.mjs`: the npm `eventsource` package.
    NodeEventSource,
    /// `tests/clients/sse_client.py`: `httpx` + `httpx-sse`.
    PythonHttpxSse,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::NodeEventSource => "node eventsource",
            Client::PythonHttpxSse => "python httpx-sse",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Client::NodeEventSource => "node",
            Client::PythonHttpxSse => "python3",
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Client::NodeEventSource => {
                "install Node.js 20 or newer, then run `(cd tests/clients && npm ci)`"
            }
            Client::PythonHttpxSse => {
                "install Python 3, then run `python3 -m pip install -r tests/clients/requirements.txt`"
            }
        }
    }

    fn script(self) -> PathBuf {
        let file = match self {
            Client::NodeEventSource => "eventsource_client.mjs",
            Client::PythonHttpxSse => "sse_client.py",
        };
        clients_dir().join(file)
    }

    /// Blocks the library yields before the events themselves. httpx-sse dispatches a block
    /// that has fields but no `data:` line, so herald's opening `retry:` frame reaches it as an
    /// empty `message` (a WHATWG EventSource, like the npm package, dispatches nothing).
    fn leading_blocks(self) -> usize {
        match self {
            Client::NodeEventSource => 0,
            Client::PythonHttpxSse => 1,
        }
    }
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// One line a client printed for an event.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Received {
    event: SseEvent,
    /// The `retry:` value of the block, where the library reports it (httpx-sse only).
    retry_ms: Option<u64>,
}

/// A client subscribed in a child process. Killed (by its PID) when dropped while running.
struct ClientProcess {
    client: Client,
    child: Child,
    stdout: PipeLines,
    stderr: Option<Receiver<String>>,
    /// The client gives up by itself at [`DEADLINE`] after its start; this is a bit later.
    deadline: Instant,
    count: usize,
}

impl ClientProcess {
    /// Starts `client` on `topics` of the server at `addr`, to print `events` events (plus the
    /// library's leading blocks) and exit. `names` are the event names to listen for.
    fn spawn(
        client: Client,
        addr: SocketAddr,
        topics: &[&str],
        last_event_id: Option<&str>,
        names: &[&str],
        events: usize,
    ) -> ClientProcess {
        let count = events + client.leading_blocks();
        let mut command = Command::new(client.program());
        command
            .current_dir(clients_dir())
            .arg(client.script())
            .args(["--url", &format!("http://{addr}")])
            .args(["--count", &count.to_string()])
            .args(["--timeout-ms", &DEADLINE.as_millis().to_string()]);
        for topic in topics {
            command.args(["--topic", topic]);
        }
        if let Some(id) = last_event_id {
            command.args(["--last-event-id", id]);
        }
        if client == Client::NodeEventSource {
            for name in names {
                command.args(["--event", name]);
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "{}: cannot run `{}` ({e}); these tests are never skipped: {}",
                client.name(),
                client.program(),
                client.install_hint()
            )
        });
        let deadline = Instant::now() + DEADLINE + CLIENT_GRACE;
        let stdout = PipeLines::new(child.stdout.take().unwrap());
        let stderr = read_all_on_thread(child.stderr.take().unwrap());
        ClientProcess {
            client,
            child,
            stdout,
            stderr: Some(stderr),
            deadline,
            count,
        }
    }

    /// The next stdout line, or `None` once the client has closed stdout (exited).
    fn next_line(&mut self, waiting_for: &str) -> Option<String> {
        match self.stdout.next_before(self.deadline) {
            Next::Line(line) => Some(line),
            Next::Closed => None,
            Next::TimedOut => {
                let _ = self.child.kill();
                let status = self.child.wait().unwrap();
                self.fail(&format!("timed out waiting for {waiting_for}"), status)
            }
        }
    }

    /// Fails the test with everything the client printed.
    fn fail(&mut self, what: &str, status: ExitStatus) -> ! {
        let stderr = self
            .stderr
            .take()
            .map(|text| text.recv().unwrap_or_default())
            .unwrap_or_default();
        panic!(
            "{} client: {what}; it ended with {status}; stdout: {:#?}; stderr: {stderr}\n\
             (if a package is missing: {})",
            self.client.name(),
            self.stdout.seen(),
            self.client.install_hint()
        );
    }

    /// Waits for the client's `{"ready":true}` line: its request was answered with a stream.
    fn wait_ready(&mut self) {
        let Some(line) = self.next_line("its ready line") else {
            let status = self.child.wait().unwrap();
            self.fail("exited before subscribing", status)
        };
        let value: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: stdout line {line:?}: {e}", self.client.name()));
        assert_eq!(
            value,
            serde_json::json!({ "ready": true }),
            "{}: the first line must be the ready line",
            self.client.name()
        );
    }

    /// Reads the client's event lines until it exits, which must be with status 0 after
    /// exactly its count; returns the events after the library's leading blocks.
    fn finish(mut self) -> Vec<SseEvent> {
        let mut received = Vec::new();
        while let Some(line) = self.next_line("its events and exit") {
            received.push(self.parse(&line));
        }
        let status = self.child.wait().unwrap();
        if !status.success() || received.len() != self.count {
            self.fail(
                &format!(
                    "expected exit status 0 after {} event lines, got {}",
                    self.count,
                    received.len()
                ),
                status,
            );
        }
        let events = received.split_off(self.client.leading_blocks());
        for mut block in received {
            // A stream opened without Last-Event-ID also gives the id it starts at.
            if !block.event.last_event_id.is_empty() {
                split_id(&block.event.last_event_id);
                block.event.last_event_id.clear();
            }
            assert_eq!(
                block,
                Received {
                    event: SseEvent {
                        event_type: "message".to_owned(),
                        data: String::new(),
                        last_event_id: String::new(),
                    },
                    retry_ms: Some(u64::from(RETRY_MS_DEFAULT)),
                },
                "{}: the leading block must be herald's opening `retry:` frame",
                self.client.name()
            );
        }
        events
            .into_iter()
            .map(|received| {
                assert_eq!(
                    received.retry_ms,
                    None,
                    "{}: no published event carries retry",
                    self.client.name()
                );
                received.event
            })
            .collect()
    }

    fn parse(&self, line: &str) -> Received {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}: stdout line {line:?}: {e}", self.client.name()));
        let field = |name: &str| {
            value[name]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no string {name:?} in {line}", self.client.name()))
                .to_owned()
        };
        Received {
            event: SseEvent {
                event_type: field("type"),
                data: field("data"),
                last_event_id: field("id"),
            },
            retry_ms: value.get("retry").map(|retry| {
                retry
                    .as_u64()
                    .unwrap_or_else(|| panic!("{}: bad retry in {line}", self.client.name()))
            }),
        }
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Publishes `event` and returns what every EventSource must dispatch for it.
fn publish_expecting(handle: &Handle, event: &Event) -> SseEvent {
    let id = publish(handle, event);
    SseEvent {
        event_type: event.name.clone().unwrap_or_else(|| "message".to_owned()),
        data: normalize_newlines(&event.data),
        last_event_id: id.as_str().to_owned(),
    }
}

/// Named and unnamed events with data that is hard to carry: LF, CRLF and CR line breaks,
/// trailing breaks, SSE syntax inside the data, unicode in data and names, the empty string.
fn tricky_events(topic_a: &str, topic_b: &str) -> Vec<Event> {
    vec![
        Event::new(topic_a, "hello"),
        Event::new(topic_b, r#"{"price":42.5,"symbol":"HRLD"}"#).named("tick"),
        Event::new(topic_a, "line one\nline two\nline three")
            .and_topic(topic_b)
            .named("alert"),
        Event::new(topic_a, "crlf one\r\ncrlf two\r\n"),
        Event::new(topic_b, "lone\rcarriage\r").named("metrics"),
        Event::new(topic_a, ""),
        Event::new(topic_b, "").named("tick"),
        Event::new(topic_a, "\n"),
        Event::new(topic_a, "é ß 世界 🚀 \u{2028} \u{200b} end").named("ünïcödé-事件"),
        Event::new(
            topic_b,
            "data: not a field\n: not a comment\nid: 99\nevent: fake\nretry: 1\n\ndata: injected",
        ),
        Event::new(topic_a, "  two leading spaces\n\ttab"),
        Event::new(topic_b, "quotes \" and \\ backslash, nul \u{0} inside").named("alert"),
    ]
}

/// The event names among `events`, plus the gap event's, for the clients to listen for.
fn event_names(events: &[Event]) -> Vec<&str> {
    let mut names: Vec<&str> = events.iter().filter_map(|e| e.name.as_deref()).collect();
    names.push("gap");
    names.push("done");
    names.sort_unstable();
    names.dedup();
    names
}

fn sentinel(topic: &str) -> Event {
    Event::new(topic, "sentinel: nothing after this").named("done")
}

#[test]
fn node_and_python_clients_receive_exactly_what_herald_published() {
    let server = start(|_| {});
    let handle = server.handle();
    let addr = server.local_addr();
    let topics = ["clients/a", "clients/b"];
    let events = tricky_events(topics[0], topics[1]);
    let names = event_names(&events);
    // Every event below plus the sentinel; an event on another topic must not arrive.
    let expected_len = events.len() + 1;

    let mut rust = subscribe(addr, &topics);
    let mut node = ClientProcess::spawn(
        Client::NodeEventSource,
        addr,
        &topics,
        None,
        &names,
        expected_len,
    );
    let mut python = ClientProcess::spawn(
        Client::PythonHttpxSse,
        addr,
        &topics,
        None,
        &names,
        expected_len,
    );
    node.wait_ready();
    python.wait_ready();
    wait_until("the Rust, Node and Python subscribers", || {
        handle.stats().subscribers == 3
    });

    let mut expected = Vec::new();
    for (at, event) in events.iter().enumerate() {
        expected.push(publish_expecting(&handle, event));
        if at == 2 {
            publish(
                &handle,
                &Event::new("clients/other", "not subscribed").named("tick"),
            );
        }
    }
    expected.push(publish_expecting(&handle, &sentinel(topics[1])));
    assert_eq!(expected.len(), expected_len);

    assert_eq!(
        rust.events(expected_len),
        expected,
        "the Rust parser (testkit::sse)"
    );
    assert_eq!(node.finish(), expected, "the npm eventsource client");
    assert_eq!(python.finish(), expected, "the httpx-sse client");
    server.shutdown();
}

/// Publishes history, then subscribes `client` (and the Rust parser) with the id of an early
/// event: both must get exactly the events after it, then the live sentinel, and no gap.
fn resume_case(client: Client) {
    let server = start(|_| {});
    let handle = server.handle();
    let addr = server.local_addr();
    let topic = "clients/resume";
    let history = vec![
        Event::new(topic, "first"),
        Event::new(topic, "second\r\nhas two lines").named("tick"),
        Event::new(topic, "third, missed").named("alert"),
        Event::new(topic, "fourth\nmissed"),
        Event::new(topic, "").named("tick"),
        Event::new(topic, "sixth: ünïcödé 🚀 missed\r"),
    ];
    let names = event_names(&history);
    let published: Vec<SseEvent> = history
        .iter()
        .map(|event| publish_expecting(&handle, event))
        .collect();
    let resume_from = published[1].last_event_id.clone();
    let mut expected = published[2..].to_vec();
    let expected_len = expected.len() + 1;

    let mut rust = Subscriber::open(
        addr,
        &events_target(&[topic], None),
        &[("Last-Event-ID", resume_from.as_str())],
    );
    let mut process = ClientProcess::spawn(
        client,
        addr,
        &[topic],
        Some(&resume_from),
        &names,
        expected_len,
    );
    process.wait_ready();
    wait_until("the Rust and the resuming client's subscriptions", || {
        handle.stats().subscribers == 2
    });
    expected.push(publish_expecting(&handle, &sentinel(topic)));

    assert_eq!(
        rust.events(expected_len),
        expected,
        "the Rust parser resuming from {resume_from}"
    );
    assert_eq!(
        process.finish(),
        expected,
        "the {} client resuming from {resume_from}",
        client.name()
    );
    server.shutdown();
}

#[test]
fn node_eventsource_resumes_with_last_event_id() {
    resume_case(Client::NodeEventSource);
}

#[test]
fn python_httpx_sse_resumes_with_last_event_id() {
    resume_case(Client::PythonHttpxSse);
}
