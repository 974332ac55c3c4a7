//! Events pass through nginx unbuffered: the README's block delivers each event at once
//! (latency compared with a direct stream), `X-Accel-Buffering: no` keeps a buffering nginx
//! from buffering streams, and without it such an nginx holds a stream back.

use super::*;

/// Events published one at a time in the latency comparison.
const LATENCY_EVENTS: usize = 100;

/// Reads `n` events on its own thread, sending each one's data and arrival time.
fn stamp_arrivals(
    mut stream: EventStream,
    n: usize,
    path: &'static str,
) -> (Receiver<(String, Instant)>, JoinHandle<()>) {
    let (sender, arrivals) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for i in 0..n {
            let event = stream.next_event(&format!("event {} of {n} {path}", i + 1));
            if sender.send((event.data, Instant::now())).is_err() {
                return;
            }
        }
    });
    (arrivals, reader)
}

/// Waits (up to [`DEADLINE`]) for the arrival of the event with `data`.
fn arrival(arrivals: &Receiver<(String, Instant)>, data: &str, path: &str) -> Instant {
    let (received, at) = arrivals.recv_timeout(DEADLINE).unwrap_or_else(|_| {
        panic!(
            "{data:?} did not arrive {path} within {DEADLINE:?} of its publish, and nothing \
             else was published meanwhile: the stream is buffered"
        )
    });
    assert_eq!(received, data, "events arrived out of order {path}");
    at
}

/// Microseconds at quantile `q` (0 to 1) of sorted `values`.
fn quantile(values: &[i64], q: f64) -> i64 {
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Publishes [`LATENCY_EVENTS`] events one at a time, each only after the previous one has
/// arrived through nginx (a proxy that buffers the stream holds it, and the wait times out),
/// to one subscriber through nginx configured with README's block plus `edits` and one
/// connected to herald directly. Prints the per-event latency difference.
fn assert_events_pass_unbuffered(name: &str, edits: &[(&str, &str)]) {
    let herald = HeraldProcess::spawn(&[]);
    let nginx = Nginx::start(name, |listen| readme_config(herald.addr, listen, edits));
    let target = events_target(&["latency"], None);
    let proxied = EventStream::open(nginx.addr, None, &target, &[])
        .unwrap_or_else(|refused| panic!("through nginx: {}", refused.summary()));
    assert!(
        proxied.chunks.is_some(),
        "nginx should stream to an HTTP/1.1 client in chunks"
    );
    let direct = EventStream::open(herald.addr, None, &target, &[])
        .unwrap_or_else(|refused| panic!("direct: {}", refused.summary()));
    let (proxied_arrivals, proxied_reader) =
        stamp_arrivals(proxied, LATENCY_EVENTS, "through nginx");
    let (direct_arrivals, direct_reader) = stamp_arrivals(direct, LATENCY_EVENTS, "direct");

    let mut publisher = Conn::connect(herald.addr);
    let mut proxied_us = Vec::with_capacity(LATENCY_EVENTS);
    let mut direct_us = Vec::with_capacity(LATENCY_EVENTS);
    let mut difference_us = Vec::with_capacity(LATENCY_EVENTS);
    for i in 0..LATENCY_EVENTS {
        let data = format!("event {i}");
        let published = Instant::now();
        publisher.send(post_request(
            "/publish?topic=latency",
            Some("text/plain"),
            data.as_bytes(),
            &[],
        ));
        let answer = publisher.read_response("the publish answer");
        assert_eq!(answer.status, 200, "publish: {}", answer.summary());
        let through_nginx = arrival(&proxied_arrivals, &data, "through nginx");
        let direct = arrival(&direct_arrivals, &data, "direct");
        let micros = |from: Instant, to: Instant| {
            i64::try_from(to.duration_since(from).as_micros()).unwrap()
        };
        proxied_us.push(micros(published, through_nginx));
        direct_us.push(micros(published, direct));
        difference_us.push(proxied_us[i] - direct_us[i]);
    }
    proxied_reader.join().unwrap();
    direct_reader.join().unwrap();

    for values in [&mut proxied_us, &mut direct_us, &mut difference_us] {
        values.sort_unstable();
    }
    eprintln!(
        "{name}: {LATENCY_EVENTS} events, publish-to-receive latency in µs: \
         direct median {} max {}; through nginx median {} max {}; \
         nginx minus direct per event: median {} p90 {} max {}",
        quantile(&direct_us, 0.5),
        quantile(&direct_us, 1.0),
        quantile(&proxied_us, 0.5),
        quantile(&proxied_us, 1.0),
        quantile(&difference_us, 0.5),
        quantile(&difference_us, 0.9),
        quantile(&difference_us, 1.0),
    );
}

#[test]
fn readme_nginx_config_passes_each_event_through_unbuffered() {
    assert_events_pass_unbuffered("readme", &[]);
}

/// README: "herald also sends `X-Accel-Buffering: no` on every stream, so nginx does not
/// buffer it even where `proxy_buffering` is on."
#[test]
fn x_accel_buffering_keeps_a_buffering_nginx_from_buffering_streams() {
    assert_events_pass_unbuffered(
        "buffering-on",
        &[("proxy_buffering off;", "proxy_buffering on;")],
    );
}

/// How long the control below waits for an event that a buffering nginx holds back.
const BUFFERED_WAIT: Duration = Duration::from_secs(1);

/// The control for [`x_accel_buffering_keeps_a_buffering_nginx_from_buffering_streams`]:
/// the same nginx (`proxy_buffering on`) in front of an upstream that streams an event
/// *without* `X-Accel-Buffering: no` holds the event back until the upstream ends the
/// response. So the test above shows the header at work, not an nginx that never buffers.
#[test]
fn a_buffering_nginx_holds_back_a_stream_without_x_accel_buffering() {
    let upstream = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (finish, finished) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = upstream.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(conn.read(&mut byte).unwrap(), 1, "request head");
            head.push(byte[0]);
        }
        use std::io::Write;
        conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              Connection: close\r\n\r\nretry: 1000\n\ndata: held\n\n",
        )
        .unwrap();
        // Keep the response open until the test has looked, then end it.
        let _ = finished.recv_timeout(DEADLINE);
    });
    let nginx = Nginx::start("buffering-control", |listen| {
        readme_config(
            upstream_addr,
            listen,
            &[("proxy_buffering off;", "proxy_buffering on;")],
        )
    });
    let mut client = TcpStream::connect(nginx.addr).unwrap();
    use std::io::Write;
    client
        .write_all(&build_request("GET", "/events?topic=t", &[], b""))
        .unwrap();
    client.set_read_timeout(Some(BUFFERED_WAIT)).unwrap();
    let mut seen = Vec::new();
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    while started.elapsed() < BUFFERED_WAIT {
        match client.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("reading through nginx: {e}"),
        }
    }
    assert!(
        !String::from_utf8_lossy(&seen).contains("data: held"),
        "nginx with proxy_buffering on passed an unmarked stream through unbuffered, so the \
         X-Accel-Buffering test proves nothing: {}",
        String::from_utf8_lossy(&seen)
    );
    finish.send(()).unwrap();
    server.join().unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while !String::from_utf8_lossy(&seen).contains("data: held") && Instant::now() < deadline {
        match client.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(e) => panic!("reading through nginx: {e}"),
        }
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("data: held"),
        "the held event arrives once the upstream ends the response: {}",
        String::from_utf8_lossy(&seen)
    );
}
