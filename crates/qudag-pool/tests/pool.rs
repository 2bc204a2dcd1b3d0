//! Pool behaviour through the public API: unit cases and a model-based
//! property test over random operation sequences with injected time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use qudag_crypto::PeerId;
use qudag_pool::{Limiter, Pool, PoolConfig, Poolable};

#[derive(Clone, Debug)]
struct Conn {
    id: u64,
    alive: Arc<AtomicBool>,
}

impl Conn {
    fn new(id: u64) -> Self {
        Self {
            id,
            alive: Arc::new(AtomicBool::new(true)),
        }
    }
    fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
    }
}

impl Poolable for Conn {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

const TTL: Duration = Duration::from_secs(100);

fn pool() -> Pool<Conn> {
    Pool::new(PoolConfig::default().idle_timeout(TTL))
}

fn ids(v: &[(PeerId, Conn)]) -> Vec<u64> {
    let mut ids: Vec<u64> = v.iter().map(|(_, c)| c.id).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn default_config_values() {
    let p: Pool<Conn> = Pool::new(&PoolConfig::default());
    assert_eq!(p.idle_timeout(), Duration::from_secs(300));
    let l = Limiter::new(&PoolConfig::default());
    assert_eq!((l.max_connections(), l.max_pending_dials()), (1024, 128));
}

#[test]
fn checkout_takes_the_connection_once() {
    let p = pool();
    let t0 = Instant::now();
    assert!(p.checkin(peer(1), Conn::new(1), t0).is_none());
    assert!(p.contains(&peer(1)));
    assert_eq!(p.checkout(&peer(1), t0).map(|c| c.id), Some(1));
    assert!(p.checkout(&peer(1), t0).is_none());
    assert!(p.is_empty());
}

#[test]
fn checkin_displaces_previous() {
    let p = pool();
    let t0 = Instant::now();
    p.checkin(peer(1), Conn::new(1), t0);
    assert_eq!(p.checkin(peer(1), Conn::new(2), t0).map(|c| c.id), Some(1));
    assert_eq!(p.len(), 1);
    assert_eq!(p.remove(&peer(1)).map(|c| c.id), Some(2));
}

#[test]
fn expiry_is_strictly_after_the_timeout() {
    let p = pool();
    let t0 = Instant::now();
    p.checkin(peer(1), Conn::new(1), t0);
    let deadline = p.poll_timeout().expect("one entry");
    assert_eq!(deadline, t0 + TTL + Duration::from_nanos(1));
    // Exactly at the timeout it is still usable, and nothing is due.
    assert!(p.handle_timeout(t0 + TTL).is_empty());
    assert_eq!(p.checkout(&peer(1), t0 + TTL).map(|c| c.id), Some(1));
    // At the reported deadline it is expired: handle_timeout makes progress.
    p.checkin(peer(1), Conn::new(2), t0);
    assert_eq!(ids(&p.handle_timeout(deadline)), [2]);
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn expired_checkout_is_set_aside_and_returned_by_handle_timeout() {
    let p = pool();
    let t0 = Instant::now();
    p.checkin(peer(1), Conn::new(1), t0);
    let late = t0 + TTL + Duration::from_secs(1);
    assert!(p.checkout(&peer(1), late).is_none());
    assert!(!p.contains(&peer(1)));
    assert_eq!(p.pending_close(), 1);
    // The cleanup task is woken at once.
    assert_eq!(p.poll_timeout(), Some(late));
    assert_eq!(ids(&p.handle_timeout(late)), [1]);
    assert_eq!(p.pending_close(), 0);
}

#[test]
fn dead_connection_is_never_handed_out() {
    let p = pool();
    let t0 = Instant::now();
    let c = Conn::new(1);
    c.kill();
    p.checkin(peer(1), c, t0);
    // A dead entry is due immediately.
    assert_eq!(p.poll_timeout(), Some(t0));
    assert!(p.checkout(&peer(1), t0).is_none());
    assert_eq!(ids(&p.handle_timeout(t0)), [1]);
    let c = Conn::new(2);
    p.checkin(peer(2), c.clone(), t0);
    c.kill();
    assert!(p.checkout_shared(&peer(2), t0).is_none());
    assert_eq!(p.pending_close(), 1);
    assert_eq!(ids(&p.handle_timeout(t0)), [2]);
}

#[test]
fn checkout_shared_keeps_and_refreshes() {
    let p = pool();
    let t0 = Instant::now();
    p.checkin(peer(1), Conn::new(1), t0);
    let t1 = t0 + Duration::from_secs(90);
    assert_eq!(p.checkout_shared(&peer(1), t1).map(|c| c.id), Some(1));
    assert!(p.contains(&peer(1)));
    // Refreshed at t1: still usable 90 s later.
    assert_eq!(p.poll_timeout(), Some(t1 + TTL + Duration::from_nanos(1)));
    let t2 = t1 + Duration::from_secs(90);
    assert!(p.handle_timeout(t2).is_empty());
    assert_eq!(p.checkout(&peer(1), t2).map(|c| c.id), Some(1));
}

#[test]
fn checkout_shared_refreshes_at_granularity() {
    let p = pool();
    let g = p.refresh_granularity();
    assert_eq!(g, Duration::from_secs(1)); // min(1 s, 100 s / 100)
    let t0 = Instant::now();
    p.checkin(peer(1), Conn::new(1), t0);
    let first = t0 + TTL + Duration::from_nanos(1);
    // Within the granularity the last-used time is left alone...
    assert!(p.checkout_shared(&peer(1), t0 + g).is_some());
    assert_eq!(p.poll_timeout(), Some(first));
    // ...past it, it is rewritten.
    let t1 = t0 + g + Duration::from_nanos(1);
    assert!(p.checkout_shared(&peer(1), t1).is_some());
    assert_eq!(p.poll_timeout(), Some(t1 + TTL + Duration::from_nanos(1)));
    // A short timeout gets a proportionally finer granularity.
    let short = Pool::<Conn>::new(PoolConfig::default().idle_timeout(Duration::from_millis(50)));
    assert_eq!(short.refresh_granularity(), Duration::from_micros(500));
}

#[test]
fn evict_lru_order() {
    let p = pool();
    let t0 = Instant::now();
    p.checkin(peer(1), Conn::new(1), t0 + Duration::from_secs(3));
    p.checkin(peer(2), Conn::new(2), t0 + Duration::from_secs(1));
    p.checkin(peer(3), Conn::new(3), t0 + Duration::from_secs(2));
    let dead = Conn::new(4);
    p.checkin(peer(4), dead.clone(), t0 + Duration::from_secs(9));
    dead.kill();
    // Dead first, then oldest first.
    let order: Vec<u64> = std::iter::from_fn(|| p.evict_lru().map(|(_, c)| c.id)).collect();
    assert_eq!(order, [4, 2, 3, 1]);
}

#[test]
fn try_dial_evicts_idle_before_refusing() {
    #[derive(Debug)]
    struct Slotted {
        _slot: qudag_pool::ConnectionSlot,
    }
    impl Poolable for Slotted {
        fn is_alive(&self) -> bool {
            true
        }
    }
    let mut config = PoolConfig::default();
    config.max_connections(2);
    let (p, l) = (Pool::<Slotted>::new(&config), Limiter::new(&config));
    let t0 = Instant::now();
    let a = l.try_accept().unwrap();
    let b = l.try_accept().unwrap();
    p.checkin(peer(1), Slotted { _slot: a }, t0 + Duration::from_secs(1));
    p.checkin(peer(2), Slotted { _slot: b }, t0);
    let mut closed = Vec::new();
    let permit = p.try_dial(&l, |peer, c| {
        closed.push(peer);
        drop(c);
    });
    let permit = permit.expect("an idle connection was evicted");
    assert_eq!(closed, [peer(2)]);
    assert_eq!(p.len(), 1);
    let slot = p
        .try_accept(&l, |peer, c| {
            closed.push(peer);
            drop(c);
        })
        .expect("the other idle connection was evicted");
    assert_eq!(closed, [peer(2), peer(1)]);
    // Nothing left to evict: a typed refusal.
    assert_eq!(
        p.try_dial(&l, |_, _| {}).unwrap_err(),
        qudag_pool::LimitError::Connections { max: 2 }
    );
    drop((permit, slot));
    assert_eq!(l.connections(), 0);
}

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Checkin(u8),
    Checkout(u8),
    CheckoutShared(u8),
    Kill(u8),
    HandleTimeout,
    WakeAtDeadline,
    EvictLru,
    Remove(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..120_000).prop_map(Op::Advance),
        // Around the refresh granularity (1 s at this TTL).
        2 => (0u64..2_000).prop_map(Op::Advance),
        4 => (0u8..5).prop_map(Op::Checkin),
        4 => (0u8..5).prop_map(Op::Checkout),
        2 => (0u8..5).prop_map(Op::CheckoutShared),
        1 => (0u8..5).prop_map(Op::Kill),
        1 => Just(Op::HandleTimeout),
        1 => Just(Op::WakeAtDeadline),
        1 => Just(Op::EvictLru),
        1 => (0u8..5).prop_map(Op::Remove),
    ]
}

struct Model {
    map: HashMap<PeerId, (Conn, Instant)>,
    set_aside: Vec<(PeerId, Conn, Instant)>,
}

impl Model {
    fn usable(c: &Conn, last: Instant, now: Instant) -> bool {
        c.is_alive() && now.saturating_duration_since(last) <= TTL
    }
    fn deadline(&self) -> Option<Instant> {
        let a = self.set_aside.iter().map(|(_, _, t)| *t);
        let b = self.map.values().map(|(c, last)| {
            if c.is_alive() {
                *last + TTL + Duration::from_nanos(1)
            } else {
                *last
            }
        });
        a.chain(b).min()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_ops_match_model_and_never_hand_out_bad_connections(ops in prop::collection::vec(op(), 1..80)) {
        let p = pool();
        let t0 = Instant::now();
        let mut now = t0;
        let mut model = Model { map: HashMap::new(), set_aside: Vec::new() };
        let mut next_id = 0u64;
        // Every connection handed back by the pool, by id: each exactly once.
        let mut returned: Vec<u64> = Vec::new();
        for op in ops {
            match op {
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Checkin(n) => {
                    let c = Conn::new(next_id);
                    next_id += 1;
                    let displaced = p.checkin(peer(n), c.clone(), now);
                    let expect = model.map.insert(peer(n), (c, now)).map(|(c, _)| c.id);
                    prop_assert_eq!(displaced.as_ref().map(|c| c.id), expect);
                    returned.extend(displaced.map(|c| c.id));
                }
                Op::Checkout(n) => {
                    let got = p.checkout(&peer(n), now);
                    let expect = match model.map.remove(&peer(n)) {
                        Some((c, last)) if Model::usable(&c, last, now) => Some(c.id),
                        Some((c, _)) => { model.set_aside.push((peer(n), c, now)); None }
                        None => None,
                    };
                    if let Some(c) = &got {
                        prop_assert!(c.is_alive(), "closed connection handed out");
                    }
                    prop_assert_eq!(got.as_ref().map(|c| c.id), expect);
                    returned.extend(got.map(|c| c.id));
                }
                Op::CheckoutShared(n) => {
                    let got = p.checkout_shared(&peer(n), now);
                    let expect = match model.map.get_mut(&peer(n)) {
                        Some((c, last)) if Model::usable(c, *last, now) => {
                            // Refreshed only once staler than the granularity.
                            if now.saturating_duration_since(*last) > p.refresh_granularity() {
                                *last = now;
                            }
                            Some(c.id)
                        }
                        Some(_) => {
                            let (c, _) = model.map.remove(&peer(n)).unwrap();
                            model.set_aside.push((peer(n), c, now));
                            None
                        }
                        None => None,
                    };
                    if let Some(c) = &got {
                        prop_assert!(c.is_alive(), "closed connection handed out");
                    }
                    prop_assert_eq!(got.map(|c| c.id), expect);
                }
                Op::Kill(n) => {
                    if let Some((c, _)) = model.map.get(&peer(n)) { c.kill(); }
                }
                Op::HandleTimeout | Op::WakeAtDeadline => {
                    if matches!(op, Op::WakeAtDeadline) {
                        let deadline = p.poll_timeout();
                        prop_assert_eq!(deadline, model.deadline());
                        match deadline {
                            Some(d) => now = now.max(d),
                            None => continue,
                        }
                    }
                    let got = ids(&p.handle_timeout(now));
                    let mut expect: Vec<u64> = model.set_aside.drain(..).map(|(_, c, _)| c.id).collect();
                    model.map.retain(|_, (c, last)| {
                        let keep = Model::usable(c, *last, now);
                        if !keep { expect.push(c.id); }
                        keep
                    });
                    expect.sort_unstable();
                    if matches!(op, Op::WakeAtDeadline) {
                        prop_assert!(!got.is_empty(), "woken at the deadline with nothing to do");
                    }
                    prop_assert_eq!(&got, &expect);
                    returned.extend(got);
                }
                Op::EvictLru => {
                    let got = p.evict_lru().map(|(peer, c)| (peer, c.id));
                    let expect = if let Some((peer, c, _)) = model.set_aside.pop() {
                        Some((peer, c.id))
                    } else {
                        let victim = model.map.iter()
                            .map(|(peer, (c, last))| (c.is_alive(), *last, *peer))
                            .min()
                            .map(|(_, _, peer)| peer);
                        victim.map(|peer| (peer, model.map.remove(&peer).unwrap().0.id))
                    };
                    prop_assert_eq!(got, expect);
                    returned.extend(got.map(|(_, id)| id));
                }
                Op::Remove(n) => {
                    let got = p.remove(&peer(n)).map(|c| c.id);
                    prop_assert_eq!(got, model.map.remove(&peer(n)).map(|(c, _)| c.id));
                    returned.extend(got);
                }
            }
            prop_assert_eq!(p.len(), model.map.len());
            prop_assert_eq!(p.pending_close(), model.set_aside.len());
            prop_assert_eq!(p.poll_timeout(), model.deadline());
        }
        // Drain: every connection ever checked in comes back exactly once.
        while let Some((_, c)) = p.evict_lru() { returned.push(c.id); }
        returned.sort_unstable();
        prop_assert_eq!(returned, (0..next_id).collect::<Vec<_>>());
    }
}
