//! The fan-out core without sockets: appending to a topic ring and reading it by cursor,
//! and one event written to 10,000 in-memory subscribers through the same flush the event
//! loop uses. What remains per delivery in production is the kernel's `writev`.
#![allow(missing_docs)] // criterion_group! generates undocumented items.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::testing::{FanoutBench, RingBench};

fn ring_publish_and_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_publish_and_read");
    group.throughput(Throughput::Elements(1));
    for behind in [1u64, 16, 256] {
        let mut ring = RingBench::new(1_000, 128);
        group.bench_with_input(BenchmarkId::new("behind", behind), &behind, |b, &behind| {
            b.iter(|| ring.publish_and_read(black_box(behind)))
        });
    }
    group.finish();
}

fn fanout_one_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_one_frame");
    for subscribers in [1_000usize, 10_000] {
        let mut fanout = FanoutBench::new(subscribers, 128);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::new("subscribers", subscribers),
            &subscribers,
            |b, _| b.iter(|| fanout.publish_one()),
        );
    }
    group.finish();
}

criterion_group!(benches, ring_publish_and_read, fanout_one_frame);
criterion_main!(benches);
