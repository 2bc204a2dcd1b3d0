//! Batch sealing: ring vs RustCrypto `chacha20poly1305`, same criterion run.
//!
//! Seals (and opens) 64 B, 1 KiB, 16 KiB and 64 KiB batches with both
//! `Sealer` backends so the ratio is measured under the same conditions.
//! The sealers enforce sequence numbers, so each iteration uses the next
//! one; opening is measured on a pre-sealed batch by restoring a copy
//! through the raw AEADs' public APIs (ring's `LessSafeKey` and
//! `chacha20poly1305`'s `AeadInPlace`), which the sealers wrap.
//!
//! The `seal_vs_bare` group puts the two `Sealer`s next to the bare AEADs
//! at 64 B and 16 KiB; 16 KiB is the size the zeroization decision (docs/SECURITY.md §5) is
//! read at: each sealer against the fastest bare ChaCha20-Poly1305 in the
//! tree (ring's `LessSafeKey`, built once and kept).
//!
//! The `cipher_choice` group measures ring's AES-256-GCM beside the
//! protocol's ChaCha20-Poly1305, for the question of a second cipher.
//!
//! Run: `cargo bench -p qudag-benches --bench sealer` (about a minute).
//! Only that group: `cargo bench -p qudag-benches --bench sealer -- seal_vs_bare`.
//! Paired ratios (finely interleaved, ratios only):
//! `cargo bench -p qudag-benches --bench sealer -- --paired`.
//! Smoke: `cargo bench -p qudag-benches --bench sealer -- --test`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aead::{AeadInPlace, KeyInit};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
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

/// One seal with a bare ring AEAD, with the sealers' nonce layout.
fn bare_seal(key: &ring::aead::LessSafeKey, seq: u64, buf: &mut [u8]) -> ring::aead::Tag {
    key.seal_in_place_separate_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce_for(seq)),
        ring::aead::Aad::from(AAD),
        buf,
    )
    .unwrap()
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

/// One seal of 64 B and of 16 KiB: each `Sealer` beside the bare AEADs it wraps, in one
/// group so their ratios come from the same run. Functions named
/// `baseline_*` are the baselines (see `cargo xtask bench`'s report).
fn seal_vs_bare(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal_vs_bare");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for size in [64, 16 * 1024] {
        group.throughput(Throughput::Bytes(size as u64));
        // The bare AEADs: key schedule built once, nonce = a counter, as the
        // sealers do, without the sequence checks.
        group.bench_with_input(
            BenchmarkId::new("baseline_ring_aead", size),
            &size,
            |b, &size| {
                let key = ring::aead::LessSafeKey::new(
                    ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &KEY).unwrap(),
                );
                let mut buf = vec![0u8; size];
                let mut seq = 0u64;
                b.iter(|| {
                    seq += 1;
                    black_box(bare_seal(&key, seq, black_box(&mut buf)))
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("baseline_rustcrypto_aead", size),
            &size,
            |b, &size| {
                let key = chacha20poly1305::ChaCha20Poly1305::new((&KEY).into());
                let mut buf = vec![0u8; size];
                let mut seq = 0u64;
                b.iter(|| {
                    seq += 1;
                    black_box(
                        key.encrypt_in_place_detached(
                            (&nonce_for(seq)).into(),
                            AAD,
                            black_box(&mut buf),
                        )
                        .unwrap(),
                    )
                });
            },
        );
        for (name, backend) in [
            ("ring_sealer", "ring"),
            ("chacha_sealer", "chacha20poly1305"),
        ] {
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
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

/// The cipher the batch AEAD could use instead (a protocol change, not a
/// backend choice: docs/bench-notes.md, `tput_64k`): ring's AES-256-GCM
/// against ring's ChaCha20-Poly1305, the protocol's, sealing the same
/// buffers with a key built once. On CPUs with AES-NI and carry-less
/// multiply (VAES here) AES-GCM is the cheaper pass; without them it is the
/// slower one, which is why the protocol's single cipher is ChaCha20.
fn cipher_choice(c: &mut Criterion) {
    let mut group = c.benchmark_group("cipher_choice");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for size in [1024, 64 * 1024] {
        group.throughput(Throughput::Bytes(size as u64));
        for (name, alg) in [
            ("baseline_chacha20_poly1305", &ring::aead::CHACHA20_POLY1305),
            ("aes_256_gcm", &ring::aead::AES_256_GCM),
        ] {
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                let key =
                    ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, &KEY).unwrap());
                let mut buf = vec![0u8; size];
                let mut seq = 0u64;
                b.iter(|| {
                    seq += 1;
                    black_box(bare_seal(&key, seq, black_box(&mut buf)))
                });
            });
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    seal,
    open,
    open_sealer,
    seal_vs_bare,
    cipher_choice
);

/// `--paired`: each sealer against the bare ring AEAD, interleaved finely.
///
/// Every round times a block of seals with the bare AEAD, then with
/// `RingSealer`, then with `ChaChaSealer`, back to back, and keeps the ratio
/// bare time / sealer time (above 1: the sealer is faster); 60 rounds after
/// one warm-up round. Noise on a shared machine that lasts longer than a
/// round hits all three alike, so the median ratio is steadier than the
/// ratio of two criterion figures measured seconds apart. Prints ratios
/// only, no absolute times.
fn paired() {
    const ROUNDS: usize = 60;
    for (size, iters) in [(16 * 1024usize, 200u32), (64, 20_000)] {
        let bare = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &KEY).unwrap(),
        );
        let mut ring_sealer = sealer("ring");
        let mut chacha_sealer = sealer("chacha20poly1305");
        let mut buf = vec![0u8; size];
        let mut seq = 0u64;
        let mut ratios = [Vec::new(), Vec::new()];
        for round in 0..=ROUNDS {
            let start = Instant::now();
            for _ in 0..iters {
                seq += 1;
                let _tag = black_box(bare_seal(&bare, seq, black_box(&mut buf)));
            }
            let bare_time = start.elapsed().as_secs_f64();
            for (i, s) in [&mut ring_sealer, &mut chacha_sealer]
                .into_iter()
                .enumerate()
            {
                let start = Instant::now();
                for _ in 0..iters {
                    let seq = s.next_seal_seq();
                    black_box(s.seal_in_place(seq, AAD, black_box(&mut buf)).unwrap());
                }
                if round > 0 {
                    ratios[i].push(bare_time / start.elapsed().as_secs_f64());
                }
            }
        }
        for (name, mut r) in ["RingSealer", "ChaChaSealer"].into_iter().zip(ratios) {
            r.sort_by(f64::total_cmp);
            let n = r.len();
            println!(
                "paired {size} B {name}: bare ring / sealer median {:.3}, p10 {:.3}, p90 {:.3}, min {:.3}, max {:.3} ({n} rounds)",
                r[n / 2],
                r[n / 10],
                r[n * 9 / 10],
                r[0],
                r[n - 1]
            );
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--paired") {
        paired();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
