//! Per-peer dial backoff: [`Backoff`], [`BackoffConfig`], [`BackoffError`]
//! and the injectable [`Jitter`] source.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use qudag_crypto::PeerId;

/// Backoff delays: attempt `n` (from 0) waits a uniform random time in
/// `[0, min(cap, base * 2^n)]` ("full jitter").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    base: Duration,
    cap: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
        }
    }
}

impl BackoffConfig {
    /// The upper bound of the delay after the first failure; it doubles with
    /// every further consecutive failure. Defaults to 100 milliseconds.
    pub fn base(&mut self, base: Duration) -> &mut Self {
        self.base = base;
        self
    }

    /// The largest upper bound a delay can have. Defaults to 30 seconds.
    pub fn cap(&mut self, cap: Duration) -> &mut Self {
        self.cap = cap;
        self
    }

    /// The upper bound of the delay after `attempts` earlier consecutive
    /// failures: `min(cap, base * 2^attempts)`, saturating.
    pub fn upper_bound(&self, attempts: u32) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        1u32.checked_shl(attempts)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.cap, |d| d.min(self.cap))
    }
}

/// A source of randomness for the jitter, injectable for tests.
pub trait Jitter: Send + Sync + fmt::Debug {
    /// Returns a duration uniform in `[0, upper]`. Values above `upper` are
    /// clamped by [`Backoff`].
    fn sample(&self, upper: Duration) -> Duration;
}

/// The default [`Jitter`]: a SplitMix64 generator, lock-free, seeded from the
/// standard library's per-process random hash keys. Not cryptographic (it
/// only spreads retries out).
#[derive(Debug)]
pub struct RandomJitter {
    state: AtomicU64,
}

impl Default for RandomJitter {
    fn default() -> Self {
        Self::new()
    }
}

impl RandomJitter {
    /// A generator seeded from [`RandomState`].
    pub fn new() -> Self {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(0x5eed);
        Self::with_seed(hasher.finish())
    }

    /// A generator with a fixed seed (reproducible sequences).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    fn next_u64(&self) -> u64 {
        const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut z = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Nanoseconds of `d`, saturating at `u64::MAX` (about 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Jitter for RandomJitter {
    fn sample(&self, upper: Duration) -> Duration {
        let upper = nanos(upper);
        // Multiply-shift maps a uniform u64 onto [0, upper].
        let scaled = (u128::from(self.next_u64()) * (u128::from(upper) + 1)) >> 64;
        Duration::from_nanos(scaled as u64)
    }
}

/// A deterministic [`Jitter`] returning a fixed fraction of the upper bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedJitter {
    per_mille: u16,
}

impl FixedJitter {
    /// Always `upper * per_mille / 1000`; `per_mille` is clamped to 1000.
    pub fn per_mille(per_mille: u16) -> Self {
        Self {
            per_mille: per_mille.min(1000),
        }
    }

    /// Always the upper bound.
    pub fn max() -> Self {
        Self::per_mille(1000)
    }

    /// Always zero.
    pub fn zero() -> Self {
        Self::per_mille(0)
    }
}

impl Jitter for FixedJitter {
    fn sample(&self, upper: Duration) -> Duration {
        let n = u128::from(nanos(upper)) * u128::from(self.per_mille) / 1000;
        Duration::from_nanos(n as u64)
    }
}

/// A scripted [`Jitter`] for tests: returns the given samples in order (each
/// clamped to the requested bound, then the bound itself once exhausted) and
/// records every upper bound it was asked for.
#[derive(Debug, Default)]
pub struct ScriptedJitter {
    samples: Mutex<VecDeque<Duration>>,
    requested: Mutex<Vec<Duration>>,
}

impl ScriptedJitter {
    /// A jitter that returns `samples` in order.
    pub fn new(samples: impl IntoIterator<Item = Duration>) -> Self {
        Self {
            samples: Mutex::new(samples.into_iter().collect()),
            requested: Mutex::new(Vec::new()),
        }
    }

    /// Every upper bound passed to [`Jitter::sample`] so far, in order.
    pub fn requested(&self) -> Vec<Duration> {
        self.requested.lock().clone()
    }
}

impl Jitter for ScriptedJitter {
    fn sample(&self, upper: Duration) -> Duration {
        self.requested.lock().push(upper);
        self.samples
            .lock()
            .pop_front()
            .map_or(upper, |d| d.min(upper))
    }
}

/// A dial attempted too early: the peer is backing off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("peer is backing off after failed dials; retry later")]
pub struct BackoffError {
    /// The instant from which the peer may be dialed again.
    pub retry_at: Instant,
}

#[derive(Debug)]
struct PeerBackoff {
    attempts: u32,
    retry_at: Instant,
}

/// `now + d`, saturating at the largest representable instant we can find.
fn saturating_add(now: Instant, mut d: Duration) -> Instant {
    loop {
        if let Some(t) = now.checked_add(d) {
            return t;
        }
        d /= 2;
    }
}

/// Per-peer exponential backoff with full jitter, reset on success.
///
/// Concurrent (`&self`, over a [`DashMap`]) and sans-IO: it never reads the
/// clock. A peer with no recorded failure may be dialed at any time. Entries
/// are removed by [`on_success`](Backoff::on_success) (or
/// [`forget`](Backoff::forget)).
///
/// # Examples
///
/// ```
/// use qudag_crypto::PeerId;
/// use qudag_pool::{Backoff, BackoffConfig, FixedJitter};
/// use std::{sync::Arc, time::{Duration, Instant}};
///
/// let backoff = Backoff::with_jitter(BackoffConfig::default(), Arc::new(FixedJitter::max()));
/// let (peer, t0) = (PeerId::from_bytes([9; 32]), Instant::now());
/// assert_eq!(backoff.on_failure(peer, t0), t0 + Duration::from_millis(100));
/// assert_eq!(backoff.on_failure(peer, t0), t0 + Duration::from_millis(200));
/// assert!(backoff.check(&peer, t0 + Duration::from_millis(199)).is_err());
/// assert!(backoff.check(&peer, t0 + Duration::from_millis(200)).is_ok());
/// backoff.on_success(&peer);
/// assert_eq!(backoff.attempts(&peer), 0);
/// ```
pub struct Backoff {
    config: BackoffConfig,
    jitter: Arc<dyn Jitter>,
    peers: DashMap<PeerId, PeerBackoff>,
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("config", &self.config)
            .field("jitter", &self.jitter)
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl Backoff {
    /// A backoff table using [`RandomJitter`].
    pub fn new(config: BackoffConfig) -> Self {
        Self::with_jitter(config, Arc::new(RandomJitter::new()))
    }

    /// A backoff table drawing its jitter from `jitter`.
    pub fn with_jitter(config: BackoffConfig, jitter: Arc<dyn Jitter>) -> Self {
        Self {
            config,
            jitter,
            peers: DashMap::new(),
        }
    }

    /// Records a failed dial to `peer` at `now` and returns the instant before
    /// which it must not be dialed again:
    /// `now + uniform[0, min(cap, base * 2^attempts)]`, where `attempts` counts
    /// the earlier consecutive failures.
    pub fn on_failure(&self, peer: PeerId, now: Instant) -> Instant {
        let mut state = self.peers.entry(peer).or_insert(PeerBackoff {
            attempts: 0,
            retry_at: now,
        });
        let upper = self.config.upper_bound(state.attempts);
        let delay = self.jitter.sample(upper).min(upper);
        state.attempts = state.attempts.saturating_add(1);
        state.retry_at = saturating_add(now, delay);
        state.retry_at
    }

    /// Records a successful connection: the peer's backoff is reset.
    pub fn on_success(&self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// Forgets `peer` (same as a success; for peers that left the network).
    pub fn forget(&self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// The instant from which `peer` may be dialed again, if it has failed.
    pub fn retry_at(&self, peer: &PeerId) -> Option<Instant> {
        self.peers.get(peer).map(|s| s.retry_at)
    }

    /// Whether `peer` may be dialed at `now`.
    ///
    /// # Errors
    ///
    /// [`BackoffError`] with the retry instant if `now` is before it.
    pub fn check(&self, peer: &PeerId, now: Instant) -> Result<(), BackoffError> {
        match self.retry_at(peer) {
            Some(retry_at) if now < retry_at => Err(BackoffError { retry_at }),
            _ => Ok(()),
        }
    }

    /// Consecutive failures recorded for `peer` since its last success.
    pub fn attempts(&self, peer: &PeerId) -> u32 {
        self.peers.get(peer).map_or(0, |s| s.attempts)
    }

    /// Number of peers with recorded failures.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer has recorded failures.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The configuration in use.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }
}
