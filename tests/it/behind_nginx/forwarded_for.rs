//! `X-Forwarded-For` behind nginx: it names the client only when the trusted proxy sends it,
//! an unreadable one never lets a client borrow an address, and with `--forwarded-header
//! forwarded` a client-written `X-Forwarded-For` is ignored (issue 10).

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Opens a stream that must be admitted; `why` says what admission shows.
fn admitted(addr: SocketAddr, from: &str, headers: &[(&str, &str)], why: &str) -> EventStream {
    EventStream::open(
        addr,
        Some(ip(from)),
        &events_target(&["xff"], None),
        headers,
    )
    .unwrap_or_else(|refused| panic!("{why}: refused with {}", refused.summary()))
}

/// Opens a stream that must be refused with 429 as over `--max-connections-per-ip`.
fn refused_per_ip(addr: SocketAddr, from: &str, headers: &[(&str, &str)], why: &str) {
    match EventStream::open(
        addr,
        Some(ip(from)),
        &events_target(&["xff"], None),
        headers,
    ) {
        Ok(_) => panic!("{why}: the stream was admitted"),
        Err(refusal) => {
            assert_eq!(refusal.status, 429, "{why}: {}", refusal.summary());
            assert!(
                refusal.body_text().contains("max_connections_per_ip"),
                "{why}: {}",
                refusal.summary()
            );
        }
    }
}

#[test]
fn x_forwarded_for_names_the_client_only_when_the_trusted_proxy_sends_it() {
    let herald = HeraldProcess::spawn(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--max-connections-per-ip",
        "2",
    ]);
    let nginx = Nginx::start("xff", |listen| readme_config(herald.addr, listen, &[]));

    // nginx connects to herald from 127.0.0.1 and appends the client's address; herald counts
    // that address, so two clients get two streams each through the one proxy address.
    let mut streams = vec![
        admitted(
            nginx.addr,
            "127.0.0.2",
            &[],
            "1st stream of 127.0.0.2 via nginx",
        ),
        admitted(
            nginx.addr,
            "127.0.0.2",
            &[],
            "2nd stream of 127.0.0.2 via nginx",
        ),
        admitted(
            nginx.addr,
            "127.0.0.3",
            &[],
            "1st stream of 127.0.0.3 via nginx",
        ),
        admitted(
            nginx.addr,
            "127.0.0.3",
            &[],
            "2nd stream of 127.0.0.3 via nginx",
        ),
    ];
    refused_per_ip(
        nginx.addr,
        "127.0.0.2",
        &[],
        "3rd stream of 127.0.0.2 via nginx",
    );
    // Behind the proxy a client cannot pick its address either: nginx appends the real one,
    // and herald walks the list from the right, stopping at the first untrusted hop.
    refused_per_ip(
        nginx.addr,
        "127.0.0.2",
        &[("X-Forwarded-For", "127.0.0.9")],
        "3rd stream of 127.0.0.2 via nginx claiming to be 127.0.0.9",
    );

    // An untrusted peer naming 127.0.0.2 (which is full) is counted as itself.
    let forged = [("X-Forwarded-For", "127.0.0.2")];
    streams.push(admitted(
        herald.addr,
        "127.0.0.5",
        &forged,
        "1st direct stream of 127.0.0.5 claiming to be 127.0.0.2",
    ));
    streams.push(admitted(
        herald.addr,
        "127.0.0.5",
        &forged,
        "2nd direct stream of 127.0.0.5 claiming to be 127.0.0.2",
    ));
    refused_per_ip(
        herald.addr,
        "127.0.0.5",
        &forged,
        "3rd direct stream of 127.0.0.5 claiming to be 127.0.0.2",
    );

    // Every admitted stream, proxied or not, is live.
    publish_form(herald.addr, &[("topic", "xff"), ("data", "to all six")]);
    for (i, stream) in streams.iter_mut().enumerate() {
        let event = stream.next_event(&format!("the event on stream {}", i + 1));
        assert_eq!(event.data, "to all six");
    }
}

/// `GET /events?topic=xff` with raw header lines (which may hold any bytes) after `Host`.
fn request_with_raw_headers(lines: &[&[u8]]) -> Vec<u8> {
    let mut request = build_request("GET", &events_target(&["xff"], None), &[], b"");
    request.truncate(request.len() - 2); // The blank line, put back after the raw lines.
    for line in lines {
        request.extend_from_slice(line);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request
}

/// Opens a stream from `from` with raw header lines; `Ok` when admitted, else the refusal.
fn open_raw(addr: SocketAddr, from: &str, lines: &[&[u8]]) -> Result<EventStream, Response> {
    EventStream::open_with(
        addr,
        Some(ip(from)),
        &events_target(&["xff"], None),
        request_with_raw_headers(lines),
    )
}

#[test]
fn issue_10_an_unreadable_x_forwarded_for_never_lets_a_client_borrow_an_address() {
    let herald = HeraldProcess::spawn(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--max-connections-per-ip",
        "1",
    ]);
    let nginx = Nginx::start("xff-unreadable", |listen| {
        readme_config(herald.addr, listen, &[])
    });
    // nginx turns the client's `X-Forwarded-For: \xff` into `\xff, 127.0.0.5`; the
    // client-written `Forwarded` passes through untouched. herald reads only
    // X-Forwarded-For, walks it from the right and stops at 127.0.0.5, the client.
    let spoof: [&[u8]; 2] = [b"X-Forwarded-For: \xff", b"Forwarded: for=127.0.0.9"];
    let mut streams = vec![open_raw(nginx.addr, "127.0.0.5", &spoof)
        .unwrap_or_else(|r| panic!("the first stream of 127.0.0.5 was refused: {}", r.summary()))];
    // The victim's own address is untouched...
    streams.push(admitted(
        nginx.addr,
        "127.0.0.9",
        &[],
        "127.0.0.9's stream after 127.0.0.5 claimed its address",
    ));
    // ...and the spoofer is counted as itself.
    match open_raw(nginx.addr, "127.0.0.5", &spoof) {
        Ok(_) => panic!("a second stream of 127.0.0.5 was admitted over its limit of one"),
        Err(refusal) => assert_eq!(refusal.status, 429, "{}", refusal.summary()),
    }
    // Every spelling of the same trick fails alike: a malformed hop, an empty one, an
    // obfuscated `Forwarded` node.
    let tricks: [&[u8]; 4] = [
        b"X-Forwarded-For: 127.0.0.9 x",
        b"X-Forwarded-For: 127.0.0.9,,",
        b"X-Forwarded-For: \"127.0.0.9\"",
        b"Forwarded: for=_hidden, for=127.0.0.9",
    ];
    for trick in tricks {
        let refused = open_raw(nginx.addr, "127.0.0.5", &[trick]);
        let summary = refused
            .as_ref()
            .map_or_else(Response::summary, |_| "admitted".into());
        assert!(
            matches!(&refused, Err(r) if r.status == 429),
            "127.0.0.5 with {:?}: {summary}",
            String::from_utf8_lossy(trick)
        );
    }
    publish_form(herald.addr, &[("topic", "xff"), ("data", "to both")]);
    for (i, stream) in streams.iter_mut().enumerate() {
        assert_eq!(
            stream.next_event(&format!("the event on stream {i}")).data,
            "to both"
        );
    }
}

#[test]
fn issue_10_with_forwarded_header_forwarded_a_client_written_x_forwarded_for_is_ignored() {
    let herald = HeraldProcess::spawn(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--max-connections-per-ip",
        "1",
        "--forwarded-header",
        "forwarded",
    ]);
    // A proxy that sets only `Forwarded` (replacing whatever the client sent) and passes
    // the client's `X-Forwarded-For` through.
    let nginx = Nginx::start("forwarded-only", |listen| {
        readme_config(
            herald.addr,
            listen,
            &[(
                "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                "proxy_set_header Forwarded \"for=$remote_addr\";",
            )],
        )
    });
    let spoof = [("X-Forwarded-For", "127.0.0.9")];
    let mut streams = [
        admitted(
            nginx.addr,
            "127.0.0.5",
            &spoof,
            "127.0.0.5 claiming 127.0.0.9",
        ),
        admitted(nginx.addr, "127.0.0.9", &[], "127.0.0.9 itself"),
    ];
    refused_per_ip(
        nginx.addr,
        "127.0.0.5",
        &spoof,
        "a second stream of 127.0.0.5 claiming 127.0.0.9",
    );
    refused_per_ip(nginx.addr, "127.0.0.9", &[], "a second stream of 127.0.0.9");
    publish_form(herald.addr, &[("topic", "xff"), ("data", "to both")]);
    for (i, stream) in streams.iter_mut().enumerate() {
        assert_eq!(
            stream.next_event(&format!("the event on stream {i}")).data,
            "to both"
        );
    }
}
