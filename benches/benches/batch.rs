//! qudag-batch benches, each beside a baseline measured in the same run:
//!
//! - `batcher_push_poll`: 128-byte messages pushed through a [`Batcher`] and
//!   polled out in full batches, against pushing the same `Bytes` into a
//!   plain `Vec` drained every 128.
//! - `encode_full_batch`: [`encode_batch_frame`] of 128 × 128-byte messages,
//!   against one `memcpy` of the same payload bytes into a `BytesMut`.
//! - `decode_body`: [`decode_body`] of that batch's body, against the same
//!   `memcpy` baseline and against copying each message into its own `Vec`.
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qudag_batch::{
    decode_body, encode_batch_frame, BatchConfig, Batcher, CodecLimits, FlushPolicy,
};

const MSG_LEN: usize = 128;
const BATCH: usize = 128;
/// Messages per iteration of the push/poll bench.
const STREAM: usize = 1024;

fn messages() -> Vec<Bytes> {
    (0..BATCH)
        .map(|i| Bytes::from(vec![i as u8; MSG_LEN]))
        .collect()
}

fn push_poll(c: &mut Criterion) {
    let msg = Bytes::from(vec![7u8; MSG_LEN]);
    let now = Instant::now();
    let mut group = c.benchmark_group("batcher_push_poll");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .throughput(Throughput::Elements(STREAM as u64));
    for (name, policy) in [
        ("fixed", FlushPolicy::Fixed),
        ("adaptive_busy", FlushPolicy::Adaptive),
    ] {
        let mut config = BatchConfig::default();
        config.policy(policy);
        let mut batcher = Batcher::new(config);
        if policy == FlushPolicy::Adaptive {
            // keep one batch in flight so the adaptive batcher accumulates
            batcher.push(msg.clone(), now).unwrap();
            let _in_flight = batcher.poll_batch();
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut out = 0;
                for _ in 0..STREAM {
                    batcher.push(msg.clone(), now).unwrap();
                    if let Some(batch) = batcher.poll_batch() {
                        out += black_box(batch).len();
                        if policy == FlushPolicy::Fixed {
                            batcher.write_complete();
                        }
                    }
                }
                out
            })
        });
    }
    group.bench_function("adaptive_idle", |b| {
        let mut config = BatchConfig::default();
        config.policy(FlushPolicy::Adaptive);
        let mut batcher = Batcher::new(config);
        b.iter(|| {
            let mut out = 0;
            for _ in 0..STREAM {
                batcher.push(msg.clone(), now).unwrap();
                if let Some(batch) = batcher.poll_batch() {
                    out += black_box(batch).len();
                    batcher.write_complete();
                }
            }
            out
        })
    });
    group.bench_function("baseline_vec_push", |b| {
        let mut vec = Vec::with_capacity(BATCH);
        b.iter(|| {
            let mut out = 0;
            for _ in 0..STREAM {
                vec.push(msg.clone());
                if vec.len() == BATCH {
                    out += black_box(std::mem::replace(&mut vec, Vec::with_capacity(BATCH))).len();
                }
            }
            out
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let msgs = messages();
    let payload: Vec<u8> = msgs.iter().flat_map(|m| m.iter().copied()).collect();
    let mut wire = BytesMut::new();
    let spans = encode_batch_frame(0, 0, &msgs, &mut wire);
    let body = wire.freeze().slice(spans.body);
    let limits = CodecLimits::default();

    let mut group = c.benchmark_group("encode_full_batch");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .throughput(Throughput::Bytes(payload.len() as u64));
    let mut out = BytesMut::with_capacity(2 * body.len());
    group.bench_function("encode_batch_frame", |b| {
        b.iter(|| {
            out.clear();
            black_box(encode_batch_frame(1, 0, black_box(&msgs), &mut out));
        })
    });
    group.bench_function("baseline_memcpy", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&payload));
            black_box(&out);
        })
    });
    group.finish();

    let mut group = c.benchmark_group("decode_body");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("decode_body", |b| {
        b.iter(|| decode_body(black_box(body.clone()), &limits).unwrap())
    });
    group.bench_function("baseline_memcpy", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&body));
            black_box(&out);
        })
    });
    // what a copying decoder would do: one Vec per message (offsets known)
    group.bench_function("baseline_copy_each", |b| {
        b.iter(|| {
            let body = black_box(&body[..]);
            let mut pos = 4;
            let mut msgs = Vec::with_capacity(BATCH);
            for _ in 0..BATCH {
                msgs.push(body[pos + 4..pos + 4 + MSG_LEN].to_vec());
                pos += 4 + MSG_LEN;
            }
            msgs
        })
    });
    group.finish();
}

criterion_group!(benches, push_poll, codec);
criterion_main!(benches);
