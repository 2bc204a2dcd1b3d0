//! Connection lifecycle, idle-connection pool, limits and dial backoff for
//! qudag-net, as sans-IO building blocks.
//!
//! This crate decides; it does not act. It holds no sockets, spawns no tasks
//! and never reads the clock: every time-dependent call takes `now: Instant`,
//! and every call that removes a connection returns it so the caller closes
//! it. The connection manager in `qudag-net` drives it.
//!
//! # Key types
//!
//! - [`StateMachine`] and [`ConnState`]: the lifecycle
//!   `New -> Connecting -> Connected -> Disconnected | Failed`, with
//!   `Connecting -> Failed`, `Disconnected -> Connecting`,
//!   `Disconnected -> Connected` (a pooled connection taken back, no dial)
//!   and `Failed -> Connecting` (after backoff). Every change returns a
//!   [`Transition`] event; any other change is a [`TransitionError`].
//!   [`ConnState`] is `qudag-metrics`' type, re-exported: one type for the
//!   whole workspace.
//! - [`Pool`]: idle connections, one per peer, over a `DashMap`, all methods
//!   `&self`. [`Pool::checkout`] never returns a closed or expired connection
//!   (see [`Poolable`]); [`Pool::poll_timeout`] and [`Pool::handle_timeout`]
//!   drive expiry (default 300 s, [`PoolConfig`]); [`Pool::evict_lru`] frees
//!   a slot when the limit is reached.
//! - [`Limiter`]: maximum open connections and pending dials, enforced by
//!   RAII [`DialPermit`] / [`ConnectionSlot`] values that give their
//!   reservation back on drop, exact under any interleaving of threads.
//! - [`Backoff`]: per-peer exponential backoff with full jitter
//!   ([`BackoffConfig`]: base 100 ms, cap 30 s), reset on success, with an
//!   injectable [`Jitter`] ([`RandomJitter`], [`FixedJitter`], [`ScriptedJitter`]).
//! - [`keep_connection`] and [`Role`]: the simultaneous-dial rule ("the
//!   connection dialed by the lower `PeerId` wins").
//!
//! # What it does not do
//!
//! No IO, no timers, no async runtime, no metrics export: [`Transition`]
//! values are the events the manager forwards to its metrics sink. It does
//! not close connections (it hands them back) and does not track active
//! connections (only idle ones, plus the slot counts of all of them).
//!
//! # Examples
//!
//! ```
//! use qudag_crypto::PeerId;
//! use qudag_pool::{
//!     Backoff, BackoffConfig, ConnState, ConnectionSlot, FixedJitter, Limiter,
//!     Pool, PoolConfig, Poolable, StateMachine,
//! };
//! use std::{sync::Arc, time::{Duration, Instant}};
//!
//! // A connection handle owns its slot, so dropping it frees the slot.
//! #[derive(Debug)]
//! struct Conn { _slot: ConnectionSlot }
//! impl Poolable for Conn {
//!     fn is_alive(&self) -> bool { true }
//! }
//!
//! let mut config = PoolConfig::default();
//! config.max_connections(1);
//! let (pool, limiter) = (Pool::new(&config), Limiter::new(&config));
//! let backoff = Backoff::with_jitter(BackoffConfig::default(), Arc::new(FixedJitter::max()));
//! let (a, b) = (PeerId::from_bytes([1; 32]), PeerId::from_bytes([2; 32]));
//! let t0 = Instant::now();
//!
//! // Dial `a`: reserve, connect, then park it idle.
//! let mut sm = StateMachine::new();
//! sm.transition(ConnState::Connecting)?;
//! let permit = limiter.try_dial()?;
//! sm.transition(ConnState::Connected)?;
//! backoff.on_success(&a);
//! pool.checkin(a, Conn { _slot: permit.established() }, t0);
//!
//! // Dialing `b` at the limit evicts the idle connection to `a` first.
//! let mut closed = Vec::new();
//! let permit = pool.try_dial(&limiter, |peer, conn| { closed.push(peer); drop(conn) })?;
//! assert_eq!(closed, [a]);
//! drop(permit); // the dial to `b` failed: its reservation is returned ...
//! assert_eq!(limiter.connections(), 0);
//! // ... and `b` backs off.
//! let retry_at = backoff.on_failure(b, t0);
//! assert_eq!(retry_at, t0 + Duration::from_millis(100));
//! assert!(backoff.check(&b, t0).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![doc(test(attr(deny(warnings))))]

/// The crate's README, compiled as a doctest so it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod backoff;
mod dial;
mod limit;
mod pool;
mod state;

pub use backoff::{
    Backoff, BackoffConfig, BackoffError, FixedJitter, Jitter, RandomJitter, ScriptedJitter,
};
pub use dial::{keep_connection, Role};
pub use limit::{ConnectionSlot, DialPermit, LimitError, Limiter};
pub use pool::{Pool, PoolConfig, Poolable};
pub use state::{ConnState, StateMachine, Transition, TransitionError};
