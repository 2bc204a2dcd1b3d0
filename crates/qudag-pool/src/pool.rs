//! The idle-connection pool: [`Pool`], its [`PoolConfig`] and the
//! [`Poolable`] trait a handle implements.

use std::fmt;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use qudag_crypto::PeerId;

use crate::{ConnectionSlot, DialPermit, LimitError, Limiter};

/// What the pool needs to know of a connection handle.
pub trait Poolable {
    /// Whether the connection is still open. Called on every checkout, so a
    /// closed connection is never handed out; keep it cheap and non-blocking.
    fn is_alive(&self) -> bool;
}

impl<T: Poolable + ?Sized> Poolable for std::sync::Arc<T> {
    fn is_alive(&self) -> bool {
        (**self).is_alive()
    }
}

impl<T: Poolable + ?Sized> Poolable for Box<T> {
    fn is_alive(&self) -> bool {
        (**self).is_alive()
    }
}

/// Configuration of a [`Pool`] and its [`Limiter`].
///
/// `Default` gives the production defaults; setters document theirs.
///
/// # Examples
///
/// ```
/// use qudag_pool::PoolConfig;
/// use std::time::Duration;
///
/// let mut config = PoolConfig::default();
/// config.idle_timeout(Duration::from_secs(60)).max_connections(64);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_pending_dials: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            // the seed's pool timeout
            idle_timeout: Duration::from_secs(300),
            max_connections: 1024,
            max_pending_dials: 128,
        }
    }
}

impl PoolConfig {
    /// How long an idle connection stays pooled: it has expired once
    /// `now.saturating_duration_since(last_used) > idle_timeout`.
    /// Defaults to 300 seconds.
    pub fn idle_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.idle_timeout = timeout;
        self
    }

    /// The maximum number of open connections (active plus pooled, including
    /// those being dialed). Values above `u32::MAX` are clamped. `0` refuses
    /// every connection. Defaults to 1024.
    pub fn max_connections(&mut self, max: usize) -> &mut Self {
        self.max_connections = max;
        self
    }

    /// The maximum number of dials in flight at once. Values above `u32::MAX`
    /// are clamped. Defaults to 128.
    pub fn max_pending_dials(&mut self, max: usize) -> &mut Self {
        self.max_pending_dials = max;
        self
    }
}

struct Entry<C> {
    conn: C,
    last_used: Instant,
}

/// A concurrent pool of idle connections, at most one per peer, with expiry.
///
/// All methods take `&self`; the map is a [`DashMap`] so callers on different
/// peers rarely contend. The pool never reads the clock: every time-dependent
/// method takes `now`. Drive expiry like a quinn-proto timer: sleep until
/// [`poll_timeout`](Pool::poll_timeout), call
/// [`handle_timeout`](Pool::handle_timeout) with the current time, close what
/// it returns, repeat.
///
/// A connection that [`checkout`](Pool::checkout) finds closed or expired is
/// removed and never handed out; it is kept aside (its handle may hold a
/// [`ConnectionSlot`](crate::ConnectionSlot)) and returned by the next
/// `handle_timeout` or [`evict_lru`](Pool::evict_lru), and `poll_timeout`
/// reports a deadline at once so the cleanup task wakes to close it.
///
/// # Examples
///
/// ```
/// use qudag_crypto::PeerId;
/// use qudag_pool::{Pool, PoolConfig, Poolable};
/// use std::time::{Duration, Instant};
///
/// struct Conn;
/// impl Poolable for Conn {
///     fn is_alive(&self) -> bool { true }
/// }
///
/// let pool = Pool::new(PoolConfig::default().idle_timeout(Duration::from_secs(300)));
/// let peer = PeerId::from_bytes([1; 32]);
/// let t0 = Instant::now();
/// assert!(pool.checkin(peer, Conn, t0).is_none());
/// assert_eq!(pool.poll_timeout(), Some(t0 + Duration::from_secs(300) + Duration::from_nanos(1)));
/// assert!(pool.checkout(&peer, t0 + Duration::from_secs(10)).is_some());
///
/// pool.checkin(peer, Conn, t0);
/// assert!(pool.checkout(&peer, t0 + Duration::from_secs(301)).is_none()); // expired
/// assert_eq!(pool.handle_timeout(t0 + Duration::from_secs(301)).len(), 1); // close it
/// ```
pub struct Pool<C> {
    /// Keyed by PeerId with foldhash, seeded at random per pool: PeerIds are
    /// SHA-256 outputs, so a fast keyed hash spreads them as well as SipHash
    /// does, for about 6 ns less per lookup (the `pool` bench), and the
    /// map's size is bounded by the connection limit whatever a peer picks.
    map: DashMap<PeerId, Entry<C>, foldhash::fast::RandomState>,
    idle_timeout: Duration,
    /// See [`Pool::refresh_granularity`].
    refresh_granularity: Duration,
    /// Closed or expired entries removed by a checkout, with the instant they
    /// were found, waiting to be returned for closing.
    graveyard: Mutex<Vec<(PeerId, C, Instant)>>,
}

impl<C> fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("len", &self.map.len())
            .field("idle_timeout", &self.idle_timeout)
            .field("pending_close", &self.graveyard.lock().len())
            .finish()
    }
}

impl<C: Poolable> Pool<C> {
    /// An empty pool using `config`'s idle timeout.
    pub fn new(config: &PoolConfig) -> Self {
        Self {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            idle_timeout: config.idle_timeout,
            refresh_granularity: (config.idle_timeout / 100).min(Duration::from_secs(1)),
            graveyard: Mutex::new(Vec::new()),
        }
    }

    fn is_expired(&self, last_used: Instant, now: Instant) -> bool {
        now.saturating_duration_since(last_used) > self.idle_timeout
    }

    fn is_usable(&self, entry: &Entry<C>, now: Instant) -> bool {
        !self.is_expired(entry.last_used, now) && entry.conn.is_alive()
    }

    /// Parks an idle connection to `peer`, last used at `now`.
    ///
    /// If the peer already had a pooled connection, it is displaced and
    /// returned so the caller closes it.
    pub fn checkin(&self, peer: PeerId, conn: C, now: Instant) -> Option<C> {
        self.map
            .insert(
                peer,
                Entry {
                    conn,
                    last_used: now,
                },
            )
            .map(|old| old.conn)
    }

    /// Takes `peer`'s pooled connection out if it is alive and not expired at
    /// `now`. Concurrent checkouts of one peer hand the connection to exactly
    /// one caller.
    ///
    /// A closed or expired entry is removed and returned `None`; the entry is
    /// handed over for closing by the next [`handle_timeout`](Pool::handle_timeout)
    /// (which [`poll_timeout`](Pool::poll_timeout) then schedules at once).
    pub fn checkout(&self, peer: &PeerId, now: Instant) -> Option<C> {
        let (peer, entry) = self.map.remove(peer)?;
        if self.is_usable(&entry, now) {
            Some(entry.conn)
        } else {
            self.graveyard.lock().push((peer, entry.conn, now));
            None
        }
    }

    /// Returns a clone of `peer`'s pooled connection if it is alive and not
    /// expired at `now`, leaving it pooled and refreshing its last-used time.
    ///
    /// For handles that share one multiplexed connection (a QUIC connection
    /// serves many users at once). A closed or expired entry is removed as in
    /// [`checkout`](Pool::checkout).
    ///
    /// The lookup takes only the shard's read lock, so concurrent checkouts do
    /// not serialise. The last-used time is written (under the write lock)
    /// only when `now` is more than [`refresh_granularity`](Pool::refresh_granularity)
    /// past it: a connection in steady use is refreshed about once per
    /// granularity, and expires between `idle_timeout - granularity` and
    /// `idle_timeout` after its last checkout.
    pub fn checkout_shared(&self, peer: &PeerId, now: Instant) -> Option<C>
    where
        C: Clone,
    {
        {
            let entry = self.map.get(peer)?;
            let age = now.saturating_duration_since(entry.last_used);
            if age <= self.idle_timeout && entry.conn.is_alive() {
                if age <= self.refresh_granularity {
                    return Some(entry.conn.clone());
                }
            } else {
                drop(entry);
                return self.set_aside_if_unusable(peer, now);
            }
        }
        // Stale enough to refresh: re-check under the write lock, as a
        // concurrent checkout may have taken or replaced the entry meanwhile.
        let mut entry = self.map.get_mut(peer)?;
        if self.is_usable(&entry, now) {
            if now > entry.last_used {
                entry.last_used = now;
            }
            return Some(entry.conn.clone());
        }
        drop(entry);
        self.set_aside_if_unusable(peer, now)
    }

    /// Removes `peer`'s entry if it is unusable at `now` and sets it aside for
    /// closing. Always `None`: the tail of a checkout that found nothing usable.
    fn set_aside_if_unusable<T>(&self, peer: &PeerId, now: Instant) -> Option<T> {
        if let Some((peer, entry)) = self
            .map
            .remove_if(peer, |_, entry| !self.is_usable(entry, now))
        {
            self.graveyard.lock().push((peer, entry.conn, now));
        }
        None
    }

    /// How stale a last-used time must be before
    /// [`checkout_shared`](Pool::checkout_shared) rewrites it:
    /// `min(1 s, idle_timeout / 100)`.
    pub fn refresh_granularity(&self) -> Duration {
        self.refresh_granularity
    }

    /// Removes and returns every expired or closed entry at `now`, including
    /// those a checkout set aside. The caller closes them.
    pub fn handle_timeout(&self, now: Instant) -> Vec<(PeerId, C)> {
        let mut out: Vec<(PeerId, C)> = self
            .graveyard
            .lock()
            .drain(..)
            .map(|(peer, conn, _)| (peer, conn))
            .collect();
        let stale: Vec<PeerId> = self
            .map
            .iter()
            .filter(|e| !self.is_usable(e.value(), now))
            .map(|e| *e.key())
            .collect();
        for peer in stale {
            // Re-checked under the shard's write lock: a concurrent checkin may
            // have replaced the entry with a fresh one.
            if let Some((peer, entry)) = self
                .map
                .remove_if(&peer, |_, entry| !self.is_usable(entry, now))
            {
                out.push((peer, entry.conn));
            }
        }
        out
    }

    /// The earliest instant at which [`handle_timeout`](Pool::handle_timeout)
    /// has something to return; `None` if the pool is empty.
    ///
    /// For a live entry that is the first instant at which it counts as
    /// expired (`last_used + idle_timeout + 1 ns`, as expiry is strict); for a
    /// closed entry, or one a checkout set aside, it is an instant already
    /// reached, so the cleanup task wakes at once. Entries whose deadline does
    /// not fit in an `Instant` never expire. This scans the pool: call it from
    /// the cleanup task, not per message.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let set_aside = self.graveyard.lock().iter().map(|(_, _, at)| *at).min();
        let pooled = self
            .map
            .iter()
            .filter_map(|e| {
                let entry = e.value();
                if entry.conn.is_alive() {
                    entry
                        .last_used
                        .checked_add(self.idle_timeout)?
                        .checked_add(Duration::from_nanos(1))
                } else {
                    Some(entry.last_used)
                }
            })
            .min();
        match (set_aside, pooled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes and returns the least recently used entry, to free a connection
    /// slot when the limit is reached. Entries a checkout set aside and closed
    /// entries go first. `None` if there is nothing to evict.
    pub fn evict_lru(&self) -> Option<(PeerId, C)> {
        if let Some((peer, conn, _)) = self.graveyard.lock().pop() {
            return Some((peer, conn));
        }
        loop {
            // Closed entries sort before live ones, then oldest first.
            let (peer, last_used) = self
                .map
                .iter()
                .map(|e| (e.value().conn.is_alive(), e.value().last_used, *e.key()))
                .min()
                .map(|(_, last_used, peer)| (peer, last_used))?;
            // If a concurrent checkout or checkin changed the entry, scan again:
            // every failed attempt means the map changed under us.
            if let Some((peer, entry)) = self
                .map
                .remove_if(&peer, |_, entry| entry.last_used == last_used)
            {
                return Some((peer, entry.conn));
            }
        }
    }

    /// Removes `peer`'s pooled connection, whatever its state (the caller closes it).
    pub fn remove(&self, peer: &PeerId) -> Option<C> {
        self.map.remove(peer).map(|(_, entry)| entry.conn)
    }

    /// Reserves a dial with `limiter`; while the connection limit is reached,
    /// evicts the least recently used idle connection, hands it to `close`
    /// and retries.
    ///
    /// `close` must close and drop the connection so that its
    /// [`ConnectionSlot`] returns; otherwise the pool
    /// is emptied and the limit error returned.
    ///
    /// # Errors
    ///
    /// [`LimitError::Connections`] if the limit is reached and nothing is left
    /// to evict; [`LimitError::PendingDials`] if too many dials are in flight
    /// (nothing is evicted for that).
    pub fn try_dial(
        &self,
        limiter: &Limiter,
        mut close: impl FnMut(PeerId, C),
    ) -> Result<DialPermit, LimitError> {
        loop {
            match limiter.try_dial() {
                Err(err @ LimitError::Connections { .. }) => match self.evict_lru() {
                    Some((peer, conn)) => close(peer, conn),
                    None => return Err(err),
                },
                other => return other,
            }
        }
    }

    /// Takes a connection slot for an inbound connection with `limiter`,
    /// evicting least recently used idle connections (handed to `close`) while
    /// the limit is reached, as [`try_dial`](Pool::try_dial) does.
    ///
    /// # Errors
    ///
    /// [`LimitError::Connections`] if the limit is reached and nothing is left
    /// to evict.
    pub fn try_accept(
        &self,
        limiter: &Limiter,
        mut close: impl FnMut(PeerId, C),
    ) -> Result<ConnectionSlot, LimitError> {
        loop {
            match limiter.try_accept() {
                Err(err @ LimitError::Connections { .. }) => match self.evict_lru() {
                    Some((peer, conn)) => close(peer, conn),
                    None => return Err(err),
                },
                other => return other,
            }
        }
    }

    /// Number of pooled entries (not counting those set aside for closing).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no entry is pooled.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `peer` has a pooled entry (which may be closed or expired).
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.map.contains_key(peer)
    }

    /// Entries removed by a checkout as closed or expired, waiting to be
    /// returned by [`handle_timeout`](Pool::handle_timeout).
    pub fn pending_close(&self) -> usize {
        self.graveyard.lock().len()
    }

    /// The configured idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}
