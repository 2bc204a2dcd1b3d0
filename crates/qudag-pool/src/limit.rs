//! Connection and pending-dial limits: [`Limiter`], the RAII [`DialPermit`]
//! and [`ConnectionSlot`], and [`LimitError`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::PoolConfig;

/// One connection in the packed counter (low 32 bits).
const CONN: u64 = 1;
/// One pending dial in the packed counter (high 32 bits).
const DIAL: u64 = 1 << 32;
/// The largest limit the packed counter can hold.
const MAX_LIMIT: usize = u32::MAX as usize;

/// A limit was reached; nothing was reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// Every connection slot is taken (active plus pooled connections).
    #[error("connection limit reached (max {max})")]
    Connections {
        /// The configured maximum number of connections.
        max: usize,
    },
    /// Too many dials are in flight.
    #[error("pending dial limit reached (max {max})")]
    PendingDials {
        /// The configured maximum number of pending dials.
        max: usize,
    },
}

/// What [`Limiter::with_release_hook`] calls after every release.
type ReleaseHook = Box<dyn Fn() + Send + Sync>;

struct Inner {
    /// Connections in the low 32 bits, pending dials in the high 32 bits, so
    /// one compare-exchange reserves both at once.
    counts: AtomicU64,
    max_connections: usize,
    max_pending_dials: usize,
    on_release: Option<ReleaseHook>,
}

impl Inner {
    fn release(&self, amount: u64) {
        let prev = self.counts.fetch_sub(amount, Ordering::AcqRel);
        debug_assert!(
            prev & 0xffff_ffff >= amount & 0xffff_ffff && prev >> 32 >= amount >> 32,
            "limiter released more than it reserved"
        );
        if let Some(hook) = &self.on_release {
            hook();
        }
    }

    /// Reserves `amount` if the result stays within both limits.
    fn try_reserve(&self, amount: u64) -> Result<(), LimitError> {
        let mut cur = self.counts.load(Ordering::Relaxed);
        loop {
            let conns = (cur & 0xffff_ffff) as usize;
            let dials = (cur >> 32) as usize;
            if amount & 0xffff_ffff != 0 && conns >= self.max_connections {
                return Err(LimitError::Connections {
                    max: self.max_connections,
                });
            }
            if amount >> 32 != 0 && dials >= self.max_pending_dials {
                return Err(LimitError::PendingDials {
                    max: self.max_pending_dials,
                });
            }
            match self.counts.compare_exchange_weak(
                cur,
                cur + amount,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Enforces the maximum number of open connections and of pending dials.
///
/// Cheap to clone (an `Arc` inside); permits and slots keep the limiter alive,
/// so they are `'static + Send` and can live inside connection handles. Both
/// counters are packed in one `AtomicU64` updated by compare-exchange loops,
/// so no interleaving of concurrent callers ever admits more than the limits,
/// and a dial reserves its pending-dial count and its connection slot in one
/// atomic step. Limits above `u32::MAX` are clamped to `u32::MAX`.
///
/// The connection limit counts every open connection: active ones and the
/// idle ones parked in a [`Pool`](crate::Pool). When it is reached, free a slot
/// by evicting the least recently used idle connection
/// ([`Pool::try_dial`](crate::Pool::try_dial) does that) before refusing.
///
/// # Examples
///
/// ```
/// use qudag_pool::{LimitError, Limiter, PoolConfig};
///
/// let limiter = Limiter::new(PoolConfig::default().max_connections(1));
/// let permit = limiter.try_dial().unwrap();
/// assert_eq!(limiter.try_accept().unwrap_err(), LimitError::Connections { max: 1 });
/// let slot = permit.established(); // the dial succeeded
/// assert_eq!((limiter.connections(), limiter.pending_dials()), (1, 0));
/// drop(slot); // the connection closed
/// assert_eq!(limiter.connections(), 0);
/// ```
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("connections", &self.connections())
            .field("max_connections", &self.inner.max_connections)
            .field("pending_dials", &self.pending_dials())
            .field("max_pending_dials", &self.inner.max_pending_dials)
            .finish()
    }
}

impl Limiter {
    /// A limiter with `config`'s `max_connections` and `max_pending_dials`.
    pub fn new(config: &PoolConfig) -> Self {
        Self::build(config, None)
    }

    /// [`new`](Self::new), calling `hook` after every release (a dropped
    /// [`DialPermit`] or [`ConnectionSlot`], a dial
    /// [`established`](DialPermit::established)), once the counts are
    /// lower: so that who waits for room can try again then, instead of
    /// polling. It runs on the releasing thread, inside a `Drop`: it must
    /// be quick and must not block or panic.
    ///
    /// ```
    /// use qudag_pool::{Limiter, PoolConfig};
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let released = Arc::new(AtomicUsize::new(0));
    /// let seen = released.clone();
    /// let limiter = Limiter::with_release_hook(PoolConfig::default().max_connections(1), move || {
    ///     seen.fetch_add(1, Ordering::Relaxed);
    /// });
    /// let slot = limiter.try_accept().unwrap();
    /// assert!(limiter.try_accept().is_err());
    /// drop(slot);
    /// assert_eq!(released.load(Ordering::Relaxed), 1);
    /// assert!(limiter.try_accept().is_ok());
    /// ```
    pub fn with_release_hook(config: &PoolConfig, hook: impl Fn() + Send + Sync + 'static) -> Self {
        Self::build(config, Some(Box::new(hook)))
    }

    fn build(config: &PoolConfig, on_release: Option<ReleaseHook>) -> Self {
        Self {
            inner: Arc::new(Inner {
                counts: AtomicU64::new(0),
                max_connections: config.max_connections.min(MAX_LIMIT),
                max_pending_dials: config.max_pending_dials.min(MAX_LIMIT),
                on_release,
            }),
        }
    }

    /// Reserves a pending dial and a connection slot, atomically.
    ///
    /// Dropping the [`DialPermit`] (the dial failed) returns both;
    /// [`DialPermit::established`] turns it into a [`ConnectionSlot`].
    ///
    /// # Errors
    ///
    /// [`LimitError::Connections`] if every connection slot is taken (checked
    /// first), else [`LimitError::PendingDials`] if too many dials are in flight.
    pub fn try_dial(&self) -> Result<DialPermit, LimitError> {
        self.inner.try_reserve(CONN + DIAL)?;
        Ok(DialPermit {
            inner: Some(self.inner.clone()),
        })
    }

    /// Takes a connection slot for an inbound connection.
    ///
    /// # Errors
    ///
    /// [`LimitError::Connections`] if every connection slot is taken.
    pub fn try_accept(&self) -> Result<ConnectionSlot, LimitError> {
        self.inner.try_reserve(CONN)?;
        Ok(ConnectionSlot {
            inner: self.inner.clone(),
        })
    }

    /// Connection slots currently taken (including those of pending dials).
    pub fn connections(&self) -> usize {
        (self.inner.counts.load(Ordering::Acquire) & 0xffff_ffff) as usize
    }

    /// Dials currently in flight.
    pub fn pending_dials(&self) -> usize {
        (self.inner.counts.load(Ordering::Acquire) >> 32) as usize
    }

    /// The configured (possibly clamped) connection limit.
    pub fn max_connections(&self) -> usize {
        self.inner.max_connections
    }

    /// The configured (possibly clamped) pending-dial limit.
    pub fn max_pending_dials(&self) -> usize {
        self.inner.max_pending_dials
    }
}

/// A reserved pending dial plus its connection slot.
///
/// Dropping it means the dial failed: both are returned.
/// [`established`](DialPermit::established) means it succeeded.
#[must_use = "dropping the permit gives the reservation back at once"]
pub struct DialPermit {
    /// `None` once `established` moved the reservation out.
    inner: Option<Arc<Inner>>,
}

impl fmt::Debug for DialPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialPermit").finish_non_exhaustive()
    }
}

impl DialPermit {
    /// The dial succeeded: releases the pending-dial count and keeps the
    /// connection slot, which is returned when the slot is dropped.
    pub fn established(mut self) -> ConnectionSlot {
        let inner = self
            .inner
            .take()
            .unwrap_or_else(|| unreachable!("a live permit always holds its limiter"));
        inner.release(DIAL);
        ConnectionSlot { inner }
    }
}

impl Drop for DialPermit {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.release(DIAL + CONN);
        }
    }
}

/// One taken connection slot; dropping it returns the slot.
///
/// Keep it inside the connection handle so the slot lives exactly as long as
/// the connection.
#[must_use = "dropping the slot gives it back at once"]
pub struct ConnectionSlot {
    inner: Arc<Inner>,
}

impl fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSlot").finish_non_exhaustive()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.inner.release(CONN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(conns: usize, dials: usize) -> Limiter {
        Limiter::new(
            PoolConfig::default()
                .max_connections(conns)
                .max_pending_dials(dials),
        )
    }

    /// The hook runs once per release of any kind, after the counts went
    /// down (what it sees is the room a waiter would find), and never on a
    /// reservation or a refusal.
    #[test]
    fn the_release_hook_runs_after_every_release_with_the_counts_lowered() {
        use std::sync::{Mutex, OnceLock};
        let seen: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
        let me: Arc<OnceLock<Limiter>> = Arc::default();
        let (log, this) = (seen.clone(), me.clone());
        let l = Limiter::with_release_hook(
            PoolConfig::default()
                .max_connections(2)
                .max_pending_dials(1),
            move || {
                let l = this.get().expect("set");
                log.lock()
                    .unwrap()
                    .push((l.connections(), l.pending_dials()));
            },
        );
        me.set(l.clone()).ok().unwrap();
        let failed = l.try_dial().unwrap();
        assert!(l.try_dial().is_err(), "one dial at a time");
        drop(failed);
        let dial = l.try_dial().unwrap();
        let accepted = l.try_accept().unwrap();
        assert!(l.try_accept().is_err(), "two connections");
        let dialed = dial.established();
        drop(accepted);
        drop(dialed);
        assert_eq!(*seen.lock().unwrap(), [(0, 0), (2, 0), (1, 0), (0, 0)]);
        // (The hook and the limiter hold each other here: a leak, in a test.)
    }

    #[test]
    fn dial_permit_reserves_both_and_drop_returns_both() {
        let l = limiter(3, 2);
        let a = l.try_dial().unwrap();
        let b = l.try_dial().unwrap();
        assert_eq!((l.connections(), l.pending_dials()), (2, 2));
        assert_eq!(
            l.try_dial().unwrap_err(),
            LimitError::PendingDials { max: 2 }
        );
        // An inbound connection does not need a pending-dial count.
        let c = l.try_accept().unwrap();
        assert_eq!(
            l.try_dial().unwrap_err(),
            LimitError::Connections { max: 3 }
        );
        assert_eq!(
            l.try_accept().unwrap_err(),
            LimitError::Connections { max: 3 }
        );
        drop(a);
        assert_eq!((l.connections(), l.pending_dials()), (2, 1));
        let slot = b.established();
        assert_eq!((l.connections(), l.pending_dials()), (2, 0));
        drop((slot, c));
        assert_eq!((l.connections(), l.pending_dials()), (0, 0));
    }

    #[test]
    fn zero_limits_refuse_everything() {
        let l = limiter(0, 5);
        assert_eq!(
            l.try_dial().unwrap_err(),
            LimitError::Connections { max: 0 }
        );
        assert_eq!(
            l.try_accept().unwrap_err(),
            LimitError::Connections { max: 0 }
        );
        let l = limiter(5, 0);
        assert_eq!(
            l.try_dial().unwrap_err(),
            LimitError::PendingDials { max: 0 }
        );
        assert!(l.try_accept().is_ok());
    }

    #[test]
    fn huge_limits_are_clamped() {
        let l = limiter(usize::MAX, usize::MAX);
        assert_eq!(l.max_connections(), u32::MAX as usize);
        assert_eq!(l.max_pending_dials(), u32::MAX as usize);
        let _p = l.try_dial().unwrap();
        assert_eq!((l.connections(), l.pending_dials()), (1, 1));
    }

    #[test]
    fn slot_outlives_limiter_handle() {
        let l = limiter(1, 1);
        let slot = l.try_accept().unwrap();
        let l2 = l.clone();
        drop(l);
        assert_eq!(l2.connections(), 1);
        drop(slot);
        assert_eq!(l2.connections(), 0);
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            LimitError::Connections { max: 4 }.to_string(),
            "connection limit reached (max 4)"
        );
        assert_eq!(
            LimitError::PendingDials { max: 2 }.to_string(),
            "pending dial limit reached (max 2)"
        );
    }
}
