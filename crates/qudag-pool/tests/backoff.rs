//! Backoff: the exponential schedule, the reset, jitter bounds and the
//! simultaneous-dial rule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use qudag_crypto::PeerId;
use qudag_pool::{
    keep_connection, Backoff, BackoffConfig, BackoffError, FixedJitter, Jitter, RandomJitter, Role,
    ScriptedJitter,
};

fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn default_config() {
    let c = BackoffConfig::default();
    assert_eq!(c.upper_bound(0), ms(100));
    assert_eq!(c.upper_bound(1), ms(200));
    assert_eq!(c.upper_bound(8), Duration::from_millis(25_600));
    assert_eq!(c.upper_bound(9), Duration::from_secs(30));
    assert_eq!(c.upper_bound(u32::MAX), Duration::from_secs(30));
    let mut zero = BackoffConfig::default();
    zero.base(Duration::ZERO);
    assert_eq!(zero.upper_bound(40), Duration::ZERO);
}

#[test]
fn upper_bounds_double_up_to_the_cap_and_reset_on_success() {
    let jitter = Arc::new(ScriptedJitter::new([ms(7), ms(1_000)]));
    let mut config = BackoffConfig::default();
    config.base(ms(100)).cap(ms(1_000));
    let b = Backoff::with_jitter(config, jitter.clone());
    let t0 = Instant::now();
    // Scripted samples: 7 ms, then 1000 ms clamped to the 200 ms bound, then the bound.
    assert_eq!(b.on_failure(peer(1), t0), t0 + ms(7));
    assert_eq!(b.on_failure(peer(1), t0), t0 + ms(200));
    for _ in 0..4 {
        b.on_failure(peer(1), t0);
    }
    assert_eq!(b.attempts(&peer(1)), 6);
    assert_eq!(
        jitter.requested(),
        [ms(100), ms(200), ms(400), ms(800), ms(1_000), ms(1_000)]
    );
    // Another peer has its own schedule.
    assert_eq!(b.attempts(&peer(2)), 0);
    assert_eq!(b.retry_at(&peer(2)), None);
    b.on_success(&peer(1));
    assert_eq!(b.attempts(&peer(1)), 0);
    assert_eq!(b.retry_at(&peer(1)), None);
    b.on_failure(peer(1), t0);
    assert_eq!(jitter.requested().last(), Some(&ms(100)));
}

#[test]
fn check_refuses_until_retry_at() {
    let b = Backoff::with_jitter(
        BackoffConfig::default(),
        Arc::new(FixedJitter::per_mille(500)),
    );
    let t0 = Instant::now();
    assert_eq!(b.check(&peer(1), t0), Ok(()));
    let at = b.on_failure(peer(1), t0);
    assert_eq!(at, t0 + ms(50));
    assert_eq!(
        b.check(&peer(1), t0 + ms(49)),
        Err(BackoffError { retry_at: at })
    );
    assert_eq!(b.check(&peer(1), at), Ok(()));
    assert_eq!(
        BackoffError { retry_at: at }.to_string(),
        "peer is backing off after failed dials; retry later"
    );
    assert_eq!(b.len(), 1);
    b.forget(&peer(1));
    assert!(b.is_empty());
}

#[test]
fn huge_cap_saturates_instead_of_panicking() {
    let mut config = BackoffConfig::default();
    config.base(Duration::MAX).cap(Duration::MAX);
    let b = Backoff::with_jitter(config, Arc::new(FixedJitter::max()));
    let t0 = Instant::now();
    let at = b.on_failure(peer(1), t0);
    assert!(at > t0);
    assert!(b.check(&peer(1), t0).is_err());
}

#[test]
fn random_jitter_is_seeded_reproducibly_and_roughly_uniform() {
    let (a, b) = (RandomJitter::with_seed(42), RandomJitter::with_seed(42));
    let upper = Duration::from_nanos(1_000);
    let xs: Vec<Duration> = (0..10_000).map(|_| a.sample(upper)).collect();
    let ys: Vec<Duration> = (0..10_000).map(|_| b.sample(upper)).collect();
    assert_eq!(xs, ys);
    assert!(xs.iter().all(|d| *d <= upper));
    let mean = xs.iter().map(|d| d.as_nanos()).sum::<u128>() / xs.len() as u128;
    assert!((450..=550).contains(&mean), "mean {mean}");
    // Both ends of the range are reachable.
    assert!(xs.iter().any(|d| d.as_nanos() < 10) && xs.iter().any(|d| d.as_nanos() > 990));
    assert_eq!(a.sample(Duration::ZERO), Duration::ZERO);
    // Differently seeded generators differ.
    let c = RandomJitter::new();
    let zs: Vec<Duration> = (0..32).map(|_| c.sample(upper)).collect();
    assert_ne!(zs, xs[..32]);
}

proptest! {
    #[test]
    fn delay_within_full_jitter_bounds(
        base_ms in 0u64..10_000,
        cap_ms in 0u64..100_000,
        failures in 1u32..80,
        seed in any::<u64>(),
    ) {
        let mut config = BackoffConfig::default();
        config.base(ms(base_ms)).cap(ms(cap_ms));
        let b = Backoff::with_jitter(config.clone(), Arc::new(RandomJitter::with_seed(seed)));
        let mut now = Instant::now();
        for attempt in 0..failures {
            prop_assert_eq!(b.attempts(&peer(1)), attempt);
            let upper = ms(cap_ms).min(
                2u64.checked_pow(attempt)
                    .and_then(|f| base_ms.checked_mul(f))
                    .map_or(ms(cap_ms), ms),
            );
            prop_assert_eq!(config.upper_bound(attempt), upper);
            let at = b.on_failure(peer(1), now);
            prop_assert!(at >= now && at - now <= upper);
            prop_assert_eq!(b.retry_at(&peer(1)), Some(at));
            if at > now {
                prop_assert_eq!(b.check(&peer(1), now), Err(BackoffError { retry_at: at }));
            }
            prop_assert_eq!(b.check(&peer(1), at), Ok(()));
            now = at;
        }
        b.on_success(&peer(1));
        prop_assert_eq!(b.check(&peer(1), now), Ok(()));
    }

    #[test]
    fn simultaneous_dial_leaves_exactly_one_connection(
        a in any::<[u8; 32]>(),
        b in any::<[u8; 32]>(),
    ) {
        let (a, b) = (PeerId::from_bytes(a), PeerId::from_bytes(b));
        prop_assume!(a != b);
        // Connection 0 was dialed by `a`, connection 1 by `b`.
        let on_a = [keep_connection(&a, &b, Role::Dialer), keep_connection(&a, &b, Role::Listener)];
        let on_b = [keep_connection(&b, &a, Role::Listener), keep_connection(&b, &a, Role::Dialer)];
        prop_assert_eq!(on_a.iter().filter(|k| **k).count(), 1);
        prop_assert_eq!(on_a, on_b, "both sides keep the same connection");
        // The survivor is the one the lower id dialed.
        prop_assert_eq!(on_a[0], a < b);
    }
}

#[test]
fn self_connection_is_kept() {
    assert!(keep_connection(&peer(3), &peer(3), Role::Dialer));
    assert!(keep_connection(&peer(3), &peer(3), Role::Listener));
}
