//! Cost of one recorded message event on `qudag_metrics::Metrics`, through
//! `&dyn MetricsSink` as the connection manager calls it, beside a bare
//! relaxed atomic increment measured in the same run.
//!
//! `cargo bench -p qudag-benches --bench metrics`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qudag_metrics::{FanOut, Histogram, Metrics, MetricsSink, NoopSink};

fn events(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics_event");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));

    let bare = AtomicU64::new(0);
    g.bench_function("baseline_atomic_fetch_add", |b| {
        b.iter(|| black_box(&bare).fetch_add(1, Ordering::Relaxed))
    });

    // What `send` reported per message before `message_accepted`: two
    // counters and two gauges, one locked add each.
    let four = [
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ];
    g.bench_function("baseline_four_atomic_fetch_adds", |b| {
        b.iter(|| {
            let [a, n, q, m] = black_box(&four);
            a.fetch_add(1, Ordering::Relaxed);
            n.fetch_add(256, Ordering::Relaxed);
            q.fetch_add(1, Ordering::Relaxed);
            m.fetch_add(256, Ordering::Relaxed);
        })
    });

    let metrics: Arc<dyn MetricsSink> = Arc::new(Metrics::new());
    let sink: &dyn MetricsSink = black_box(&*metrics);
    g.bench_function("message_queued_dyn", |b| {
        b.iter(|| sink.message_queued(black_box(256)))
    });
    // What `send` reports per message: the same four figures, kept per thread.
    g.bench_function("message_accepted_dyn", |b| {
        b.iter(|| sink.message_accepted(black_box(256)))
    });

    // Latencies spread over many buckets, as real acks would be.
    let latencies: Vec<Duration> = (0..1024u64)
        .map(|i| Duration::from_micros(50 + i * i % 20_000))
        .collect();
    let mut i = 0usize;
    g.bench_function("message_acked_dyn", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            sink.message_acked(black_box(256), latencies[i]);
        })
    });

    let histogram = Histogram::new();
    let mut j = 0usize;
    g.bench_function("histogram_record", |b| {
        b.iter(|| {
            j = (j + 1) & 1023;
            histogram.record(black_box(latencies[j]));
        })
    });

    let noop: Arc<dyn MetricsSink> = Arc::new(NoopSink);
    let noop_ref: &dyn MetricsSink = black_box(&*noop);
    g.bench_function("noop_message_acked_dyn", |b| {
        b.iter(|| noop_ref.message_acked(black_box(256), Duration::from_micros(80)))
    });

    let fan: Arc<dyn MetricsSink> = Arc::new(FanOut::new(vec![
        Arc::new(Metrics::new()),
        Arc::new(NoopSink),
    ]));
    let fan_ref: &dyn MetricsSink = black_box(&*fan);
    g.bench_function("fanout2_message_acked_dyn", |b| {
        b.iter(|| fan_ref.message_acked(black_box(256), Duration::from_micros(80)))
    });
    g.finish();

    // Reads are off the hot path, but show what a snapshot costs.
    let m = Metrics::new();
    for l in &latencies {
        m.message_acked(256, *l);
    }
    let t0 = Instant::now();
    let mut k = 0u64;
    let mut g = c.benchmark_group("metrics_read");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("snapshot", |b| {
        b.iter(|| {
            k += 1;
            black_box(m.snapshot(t0 + Duration::from_millis(k)))
        })
    });
    g.bench_function("encode_prometheus", |b| {
        b.iter(|| black_box(m.encode_prometheus()))
    });
    g.finish();
}

criterion_group!(benches, events);
criterion_main!(benches);
