//! Pool lookup cost beside its baselines, measured in the same run.
//!
//! Every benchmark looks up the same 1024 pooled peers, round robin (each
//! thread starting at a different offset), under 1 and 2 threads:
//!
//! - `dashmap_get`: bare `DashMap::get` + reading a field (the floor).
//! - `mutex_hashmap_get`: `parking_lot::Mutex<HashMap>::get` (what a naive pool does).
//! - `dashmap_get_foldhash`, `mutex_hashmap_get_foldhash`: the same with the
//!   hasher the pool uses (foldhash), so the report separates what the
//!   hasher saves from the pool's own overhead.
//! - `pool_checkout_shared`: `Pool::checkout_shared`, the non-removing lookup
//!   (liveness check, expiry check, last-used refresh, clone) — compare with
//!   the four above. Its clock is read once per thread and run (see
//!   `run_threads`), so last-used refreshes happen at the rate they would in
//!   use: about once per entry per second.
//! - `pool_checkout_checkin`: `Pool::checkout` + `Pool::checkin`, the pair the
//!   manager runs on `connect` / `disconnect` of an idle connection, beside
//!   `dashmap_remove_insert` and `mutex_remove_insert`, the same pair on the
//!   bare maps.
//!
//! One iteration is one operation per thread, so with perfect scaling the
//! 2-thread time equals the 1-thread time; throughput counts operations.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashmap::DashMap;
use parking_lot::Mutex;
use qudag_crypto::PeerId;
use qudag_pool::{Pool, PoolConfig, Poolable};

const PEERS: usize = 1024;

/// A cheap handle, so the benches measure the maps, not the handle.
#[derive(Clone, Debug)]
struct Conn {
    alive: bool,
    id: u64,
}

impl Poolable for Conn {
    fn is_alive(&self) -> bool {
        self.alive
    }
}

fn peers() -> Vec<PeerId> {
    (0..PEERS)
        .map(|i| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            PeerId::from_bytes(b)
        })
        .collect()
}

/// Runs `op(peer_index, now)` for `iters` iterations on each of `threads`
/// threads released together; returns the slowest thread's time. `now` is
/// read from the clock once per thread and run, so across a measurement it
/// advances at the real rate without a clock read per call.
fn run_threads(threads: usize, iters: u64, op: &(dyn Fn(usize, Instant) + Sync)) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let offset = t * PEERS / threads;
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters as usize {
                        op((offset + i) % PEERS, start);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

fn checkout(c: &mut Criterion) {
    let keys = peers();
    let now = Instant::now();
    let conn = |i: usize| Conn {
        alive: true,
        id: i as u64,
    };

    let dash: DashMap<PeerId, Conn> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, conn(i)))
        .collect();
    let dash_fold: DashMap<PeerId, Conn, foldhash::fast::RandomState> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, conn(i)))
        .collect();
    let mutex: Mutex<HashMap<PeerId, Conn>> = Mutex::new(
        keys.iter()
            .enumerate()
            .map(|(i, k)| (*k, conn(i)))
            .collect(),
    );
    let mutex_fold: Mutex<HashMap<PeerId, Conn, foldhash::fast::RandomState>> = Mutex::new(
        keys.iter()
            .enumerate()
            .map(|(i, k)| (*k, conn(i)))
            .collect(),
    );
    let pool: Pool<Conn> = Pool::new(&PoolConfig::default());
    for (i, k) in keys.iter().enumerate() {
        let _ = pool.checkin(*k, conn(i), now);
    }

    let mut group = c.benchmark_group("pool_checkout");
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        let mut bench = |name: &str, op: &(dyn Fn(usize, Instant) + Sync)| {
            group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                b.iter_custom(|iters| run_threads(threads, iters, op))
            });
        };
        bench("dashmap_get", &|i, _| {
            black_box(dash.get(&keys[i]).map(|e| e.alive));
        });
        bench("dashmap_get_foldhash", &|i, _| {
            black_box(dash_fold.get(&keys[i]).map(|e| e.alive));
        });
        bench("mutex_hashmap_get", &|i, _| {
            black_box(mutex.lock().get(&keys[i]).map(|e| e.alive));
        });
        bench("mutex_hashmap_get_foldhash", &|i, _| {
            black_box(mutex_fold.lock().get(&keys[i]).map(|e| e.alive));
        });
        bench("pool_checkout_shared", &|i, now| {
            black_box(pool.checkout_shared(&keys[i], black_box(now)).map(|c| c.id));
        });
        bench("dashmap_remove_insert", &|i, _| {
            if let Some((k, v)) = dash.remove(&keys[i]) {
                black_box(dash.insert(k, v));
            }
        });
        bench("mutex_remove_insert", &|i, _| {
            let v = mutex.lock().remove(&keys[i]);
            if let Some(v) = v {
                black_box(mutex.lock().insert(keys[i], v));
            }
        });
        bench("pool_checkout_checkin", &|i, now| {
            let now = black_box(now);
            if let Some(c) = pool.checkout(&keys[i], now) {
                black_box(pool.checkin(keys[i], c, now));
            }
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    targets = checkout
}
criterion_main!(benches);
