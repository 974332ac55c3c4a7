//! Frame encoding and request-head parsing: the per-publish and per-connection costs
//! that do not depend on the number of subscribers.

#![allow(missing_docs)] // criterion_group! generates undocumented items.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::testing::{encode_frame, parse_head};

fn frame_encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_encode");
    let cases = [
        ("64B_one_line", "x".repeat(64)),
        ("1KiB_16_lines", format!("{}\n", "y".repeat(63)).repeat(16)),
        ("64KiB_one_line", "z".repeat(64 * 1024)),
    ];
    for (name, data) in &cases {
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), data, |b, data| {
            b.iter(|| {
                encode_frame(
                    black_box("1795754409169-42"),
                    Some("tick"),
                    black_box(data),
                    None,
                )
            })
        });
    }
    group.finish();
}

fn head_parsing(c: &mut Criterion) {
    let head = b"GET /events?topic=prices&topic=alerts HTTP/1.1\r\nHost: herald.example\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36\r\n\
Accept: text/event-stream\r\nCache-Control: no-cache\r\nLast-Event-ID: 1795754409169-41\r\n\
Origin: https://app.example\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
Cookie: session=0123456789abcdef0123456789abcdef\r\n\r\n";
    let mut group = c.benchmark_group("head_parse");
    group.throughput(Throughput::Bytes(head.len() as u64));
    group.bench_function("browser_eventsource_head", |b| {
        b.iter(|| parse_head(black_box(head)).expect("complete head"))
    });
    // The head of every publish: a loop parses thousands of these a second.
    let publish: &[u8] =
        b"POST /publish?topic=prices HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 64\r\n\r\n";
    group.bench_function("publish_head", |b| {
        b.iter(|| parse_head(black_box(publish)).expect("complete head"))
    });
    group.finish();
}

criterion_group!(benches, frame_encoding, head_parsing);
criterion_main!(benches);
