//! Limiter behaviour: a model-based property test over random reservation
//! sequences, and many threads hammering the limiter and the pool at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use proptest::prelude::*;
use qudag_crypto::PeerId;
use qudag_pool::{ConnectionSlot, DialPermit, LimitError, Limiter, Pool, PoolConfig, Poolable};

fn limiter(conns: usize, dials: usize) -> Limiter {
    Limiter::new(
        PoolConfig::default()
            .max_connections(conns)
            .max_pending_dials(dials),
    )
}

#[derive(Clone, Debug)]
enum Op {
    Dial,
    Accept,
    Establish(usize),
    FailDial(usize),
    Close(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Dial),
        2 => Just(Op::Accept),
        2 => any::<usize>().prop_map(Op::Establish),
        1 => any::<usize>().prop_map(Op::FailDial),
        2 => any::<usize>().prop_map(Op::Close),
    ]
}

proptest! {
    #[test]
    fn random_reservations_match_model(
        max_conns in 0usize..6,
        max_dials in 0usize..4,
        ops in prop::collection::vec(op(), 0..100),
    ) {
        let l = limiter(max_conns, max_dials);
        let mut permits: Vec<DialPermit> = Vec::new();
        let mut slots: Vec<ConnectionSlot> = Vec::new();
        for op in ops {
            let (conns, dials) = (permits.len() + slots.len(), permits.len());
            match op {
                Op::Dial => match l.try_dial() {
                    Ok(p) => {
                        prop_assert!(conns < max_conns && dials < max_dials);
                        permits.push(p);
                    }
                    Err(e) => {
                        let expect = if conns >= max_conns {
                            LimitError::Connections { max: max_conns }
                        } else {
                            LimitError::PendingDials { max: max_dials }
                        };
                        prop_assert!(conns >= max_conns || dials >= max_dials);
                        prop_assert_eq!(e, expect);
                    }
                },
                Op::Accept => match l.try_accept() {
                    Ok(s) => {
                        prop_assert!(conns < max_conns);
                        slots.push(s);
                    }
                    Err(e) => {
                        prop_assert!(conns >= max_conns);
                        prop_assert_eq!(e, LimitError::Connections { max: max_conns });
                    }
                },
                Op::Establish(i) if !permits.is_empty() => {
                    let p = permits.swap_remove(i % permits.len());
                    slots.push(p.established());
                }
                Op::FailDial(i) if !permits.is_empty() => {
                    drop(permits.swap_remove(i % permits.len()));
                }
                Op::Close(i) if !slots.is_empty() => {
                    drop(slots.swap_remove(i % slots.len()));
                }
                _ => {}
            }
            prop_assert_eq!(l.connections(), permits.len() + slots.len());
            prop_assert_eq!(l.pending_dials(), permits.len());
            prop_assert!(l.connections() <= max_conns);
            prop_assert!(l.pending_dials() <= max_dials);
        }
        drop((permits, slots));
        prop_assert_eq!((l.connections(), l.pending_dials()), (0, 0));
    }
}

/// A tiny per-thread generator (the tests must not depend on a rand crate).
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const THREADS: usize = 8;
const ITERS: usize = 3_000;

#[test]
fn limiter_never_over_admits_under_many_threads() {
    const MAX_CONNS: usize = 5;
    const MAX_DIALS: usize = 3;
    let l = limiter(MAX_CONNS, MAX_DIALS);
    // Incremented after a reservation succeeds and decremented before it is
    // released, so it never exceeds the true count.
    let live_conns = Arc::new(AtomicUsize::new(0));
    let live_dials = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (l, live_conns, live_dials, refused, barrier) = (
                l.clone(),
                live_conns.clone(),
                live_dials.clone(),
                refused.clone(),
                barrier.clone(),
            );
            thread::spawn(move || {
                let mut rng = XorShift(0x9e37_79b9 + t as u64);
                let mut held: Vec<ConnectionSlot> = Vec::new();
                barrier.wait();
                for _ in 0..ITERS {
                    match rng.next() % 4 {
                        0 | 1 => match l.try_dial() {
                            Ok(permit) => {
                                let c = live_conns.fetch_add(1, Ordering::SeqCst) + 1;
                                let d = live_dials.fetch_add(1, Ordering::SeqCst) + 1;
                                assert!(c <= MAX_CONNS, "{c} connections admitted");
                                assert!(d <= MAX_DIALS, "{d} dials admitted");
                                live_dials.fetch_sub(1, Ordering::SeqCst);
                                if rng.next().is_multiple_of(2) {
                                    held.push(permit.established());
                                } else {
                                    live_conns.fetch_sub(1, Ordering::SeqCst);
                                    drop(permit); // the dial failed
                                }
                            }
                            Err(_) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        2 => match l.try_accept() {
                            Ok(slot) => {
                                let c = live_conns.fetch_add(1, Ordering::SeqCst) + 1;
                                assert!(c <= MAX_CONNS, "{c} connections admitted");
                                held.push(slot);
                            }
                            Err(e) => {
                                assert_eq!(e, LimitError::Connections { max: MAX_CONNS });
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        _ => {
                            if !held.is_empty() {
                                let i = rng.next() as usize % held.len();
                                live_conns.fetch_sub(1, Ordering::SeqCst);
                                drop(held.swap_remove(i));
                            }
                        }
                    }
                    assert!(l.connections() <= MAX_CONNS);
                    assert!(l.pending_dials() <= MAX_DIALS);
                }
                live_conns.fetch_sub(held.len(), Ordering::SeqCst);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker thread");
    }
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the limit was exercised"
    );
    assert_eq!((l.connections(), l.pending_dials()), (0, 0));
}

/// A connection that owns its slot and a unique id.
#[derive(Debug)]
struct Conn {
    id: u64,
    alive: AtomicBool,
    _slot: ConnectionSlot,
}

impl Poolable for Conn {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

#[test]
fn pool_and_limiter_under_many_threads() {
    const MAX_CONNS: usize = 6;
    let mut config = PoolConfig::default();
    config.max_connections(MAX_CONNS).max_pending_dials(4);
    let pool = Arc::new(Pool::<Conn>::new(&config));
    let l = Limiter::new(&config);
    let t0 = Instant::now();
    // Ids currently held by some thread: a checkout must never hand the same
    // connection to two callers.
    let held_ids = Arc::new(Mutex::new(HashSet::new()));
    let next_id = Arc::new(AtomicUsize::new(0));
    let checkouts = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (pool, l, held_ids, next_id, checkouts, barrier) = (
                pool.clone(),
                l.clone(),
                held_ids.clone(),
                next_id.clone(),
                checkouts.clone(),
                barrier.clone(),
            );
            thread::spawn(move || {
                let mut rng = XorShift(0x1234_5678 + t as u64);
                let mut held: Vec<(PeerId, Conn)> = Vec::new();
                barrier.wait();
                for i in 0..ITERS {
                    let peer = PeerId::from_bytes([(rng.next() % 8) as u8; 32]);
                    let now = t0 + Duration::from_millis(i as u64);
                    match rng.next() % 4 {
                        0 => {
                            // connect(): reuse a pooled connection, else dial
                            // (evicting idle ones at the limit).
                            if let Some(c) = pool.checkout(&peer, now) {
                                assert!(c.is_alive(), "closed connection handed out");
                                assert!(held_ids.lock().insert(c.id), "handed out twice");
                                checkouts.fetch_add(1, Ordering::Relaxed);
                                held.push((peer, c));
                            } else if let Ok(permit) = pool.try_dial(&l, |_, c| drop(c)) {
                                assert!(l.connections() <= MAX_CONNS);
                                if !rng.next().is_multiple_of(4) {
                                    let id = next_id.fetch_add(1, Ordering::Relaxed) as u64;
                                    held_ids.lock().insert(id);
                                    let c = Conn {
                                        id,
                                        alive: AtomicBool::new(true),
                                        _slot: permit.established(),
                                    };
                                    held.push((peer, c));
                                }
                            }
                        }
                        1 | 2 if !held.is_empty() => {
                            // disconnect(): park it idle (sometimes already dead).
                            let (peer, c) = held.swap_remove(rng.next() as usize % held.len());
                            if rng.next().is_multiple_of(5) {
                                c.alive.store(false, Ordering::SeqCst);
                            }
                            held_ids.lock().remove(&c.id);
                            drop(pool.checkin(peer, c, now));
                        }
                        3 => drop(pool.handle_timeout(now)),
                        _ => {}
                    }
                    assert!(l.connections() <= MAX_CONNS);
                }
                for (_, c) in held {
                    held_ids.lock().remove(&c.id);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker thread");
    }
    assert!(checkouts.load(Ordering::Relaxed) > 0, "reuse was exercised");
    assert_eq!(l.connections(), pool.len() + pool.pending_close());
    while pool.evict_lru().is_some() {}
    assert_eq!((l.connections(), l.pending_dials()), (0, 0));
}

#[test]
fn handles_are_send_sync_static() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Limiter>();
    check::<DialPermit>();
    check::<ConnectionSlot>();
    check::<Pool<Arc<Conn>>>();
    check::<qudag_pool::Backoff>();
}

#[derive(Clone, Debug)]
enum PoolOp {
    /// connect(): checkout, else dial with eviction; the dial succeeds or fails.
    Connect(u8, bool),
    /// disconnect(): park a held connection.
    Disconnect(usize),
    /// close a held connection for good.
    Close(usize),
    /// kill a pooled connection.
    Kill(u8),
    Advance(u64),
    Cleanup,
}

fn pool_op() -> impl Strategy<Value = PoolOp> {
    prop_oneof![
        4 => (0u8..6, any::<bool>()).prop_map(|(p, ok)| PoolOp::Connect(p, ok)),
        3 => any::<usize>().prop_map(PoolOp::Disconnect),
        1 => any::<usize>().prop_map(PoolOp::Close),
        1 => (0u8..6).prop_map(PoolOp::Kill),
        2 => (0u64..200).prop_map(PoolOp::Advance),
        1 => Just(PoolOp::Cleanup),
    ]
}

#[derive(Debug)]
struct Shared {
    alive: Arc<AtomicBool>,
    _slot: ConnectionSlot,
}

impl Poolable for Shared {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

proptest! {
    /// The manager's use, sequentially: slots are always accounted for (held +
    /// pooled + set aside), a dial is refused only when no idle connection is
    /// left to evict, and a refusal is a typed error.
    #[test]
    fn dial_evicts_idle_before_refusing_and_slots_return(
        max in 1usize..5,
        ops in prop::collection::vec(pool_op(), 0..80),
    ) {
        let mut config = PoolConfig::default();
        config.max_connections(max).idle_timeout(Duration::from_secs(100));
        let (pool, l) = (Pool::<Shared>::new(&config), Limiter::new(&config));
        let mut now = Instant::now();
        let mut held: Vec<(PeerId, Shared)> = Vec::new();
        let mut flags: std::collections::HashMap<PeerId, Arc<AtomicBool>> = Default::default();
        for op in ops {
            match op {
                PoolOp::Connect(n, ok) => {
                    let peer = PeerId::from_bytes([n; 32]);
                    if let Some(c) = pool.checkout(&peer, now) {
                        prop_assert!(c.is_alive());
                        held.push((peer, c));
                        continue;
                    }
                    let idle_before = pool.len() + pool.pending_close();
                    match pool.try_dial(&l, |_, c| drop(c)) {
                        Ok(permit) if ok => {
                            let alive = Arc::new(AtomicBool::new(true));
                            held.push((peer, Shared { alive, _slot: permit.established() }));
                        }
                        Ok(permit) => drop(permit),
                        Err(e) => {
                            prop_assert_eq!(e, LimitError::Connections { max });
                            prop_assert_eq!(held.len(), max, "refused with {} idle", idle_before);
                            prop_assert!(pool.is_empty() && pool.pending_close() == 0);
                        }
                    }
                }
                PoolOp::Disconnect(i) if !held.is_empty() => {
                    let (peer, c) = held.swap_remove(i % held.len());
                    flags.insert(peer, c.alive.clone());
                    drop(pool.checkin(peer, c, now));
                }
                PoolOp::Close(i) if !held.is_empty() => drop(held.swap_remove(i % held.len())),
                PoolOp::Kill(n) => {
                    let peer = PeerId::from_bytes([n; 32]);
                    if pool.contains(&peer) {
                        if let Some(f) = flags.get(&peer) { f.store(false, Ordering::SeqCst); }
                    }
                }
                PoolOp::Advance(s) => now += Duration::from_secs(s),
                PoolOp::Cleanup => drop(pool.handle_timeout(now)),
                _ => {}
            }
            prop_assert_eq!(l.connections(), held.len() + pool.len() + pool.pending_close());
            prop_assert!(l.connections() <= max);
            prop_assert_eq!(l.pending_dials(), 0);
        }
        drop(held);
        drop(pool);
        prop_assert_eq!(l.connections(), 0);
    }
}
