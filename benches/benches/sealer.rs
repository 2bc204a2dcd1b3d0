//! Batch sealing: ring vs RustCrypto `chacha20poly1305`, same criterion run.
//!
//! Seals (and opens) 64 B, 1 KiB, 16 KiB and 64 KiB batches with both
//! `Sealer` backends so the ratio is measured under the same conditions.
//! The sealers enforce sequence numbers, so each iteration uses the next
//! one; opening is measured on a pre-sealed batch by restoring a copy
//! through the raw AEADs' public APIs (ring's `LessSafeKey` and
//! `chacha20poly1305`'s `AeadInPlace`), which the sealers wrap.
//!
//! Run: `cargo bench -p qudag-benches --bench sealer` (about a minute).
//! Smoke: `cargo bench -p qudag-benches --bench sealer -- --test`.

use std::hint::black_box;
use std::time::Duration;

use aead::{AeadInPlace, KeyInit};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qudag_crypto::{nonce_for, ChaChaSealer, RingSealer, Sealer, SessionKey, TAG_LEN};

const SIZES: [usize; 4] = [64, 1024, 16 * 1024, 64 * 1024];
const KEY: [u8; 32] = [0x42; 32];
const AAD: &[u8] = b"qudag batch header";

fn sealer(backend: &str) -> Box<dyn Sealer> {
    match backend {
        "ring" => Box::new(RingSealer::new(SessionKey::from_bytes(KEY))),
        _ => Box::new(ChaChaSealer::new(SessionKey::from_bytes(KEY))),
    }
}

/// `Sealer::seal_in_place`, sequence number advancing every iteration.
fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        for backend in ["ring", "chacha20poly1305"] {
            group.bench_with_input(BenchmarkId::new(backend, size), &size, |b, &size| {
                let mut s = sealer(backend);
                let mut buf = vec![0u8; size];
                b.iter(|| {
                    let seq = s.next_seal_seq();
                    black_box(s.seal_in_place(seq, AAD, black_box(&mut buf)).unwrap())
                });
            });
        }
    }
    group.finish();
}

/// Opening (tag check + decrypt) one sealed batch, through each backend's
/// own in-place API with the sealers' nonce layout.
fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &KEY).unwrap(),
    );
    let rc = chacha20poly1305::ChaCha20Poly1305::new((&KEY).into());
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut sealed = vec![0u8; size];
        let tag: [u8; TAG_LEN] = sealer("ring").seal_in_place(0, AAD, &mut sealed).unwrap();
        let nonce = nonce_for(0);

        group.bench_with_input(BenchmarkId::new("ring", size), &size, |b, _| {
            let mut buf = sealed.clone();
            b.iter(|| {
                buf.copy_from_slice(&sealed);
                ring_key
                    .open_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::from(AAD),
                        ring::aead::Tag::from(tag),
                        black_box(&mut buf),
                        0..,
                    )
                    .unwrap();
            });
        });
        group.bench_with_input(BenchmarkId::new("chacha20poly1305", size), &size, |b, _| {
            let mut buf = sealed.clone();
            b.iter(|| {
                buf.copy_from_slice(&sealed);
                rc.decrypt_in_place_detached(
                    (&nonce).into(),
                    AAD,
                    black_box(&mut buf),
                    (&tag).into(),
                )
                .unwrap();
            });
        });
    }
    group.finish();
}

/// The `Sealer` open path end to end (sequence check + open), for both
/// backends: a fresh receiver per batch of iterations, fed in order.
fn open_sealer(c: &mut Criterion) {
    let mut group = c.benchmark_group("open_sealer");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let size = 1024;
    group.throughput(Throughput::Bytes(size as u64));
    // Pre-seal a run of batches once; each iteration opens the next one.
    const RUN: usize = 4096;
    let mut tx = sealer("ring");
    let run: Vec<(Vec<u8>, [u8; TAG_LEN])> = (0..RUN)
        .map(|i| {
            let mut b = vec![i as u8; size];
            let t = tx.seal_in_place(i as u64, AAD, &mut b).unwrap();
            (b, t)
        })
        .collect();
    for backend in ["ring", "chacha20poly1305"] {
        group.bench_function(BenchmarkId::new(backend, size), |b| {
            let mut rx = sealer(backend);
            let mut buf = vec![0u8; size];
            b.iter(|| {
                let seq = rx.next_open_seq();
                if seq as usize == RUN {
                    rx = sealer(backend);
                }
                let seq = rx.next_open_seq();
                let (sealed, tag) = &run[seq as usize];
                buf.copy_from_slice(sealed);
                rx.open_in_place(seq, AAD, black_box(&mut buf), tag)
                    .unwrap();
            });
        });
    }
    group.finish();
}

criterion_group!(benches, seal, open, open_sealer);
criterion_main!(benches);
