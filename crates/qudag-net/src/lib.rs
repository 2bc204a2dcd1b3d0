//! qudag-net: authenticated, encrypted, pooled connections between the peers
//! of a p2p network, moving small messages between them fast.
//!
//! [`ConnectionManager`] wires the layered crates together:
//!
//! - `qudag-transport`: a [`Transport`] dials and accepts connections
//!   authenticated by [`PeerId`] (QUIC with mutual TLS 1.3, or in-memory);
//! - `qudag-crypto`: every batch is sealed with ChaCha20-Poly1305 under a key
//!   per direction exported from the authenticated session, nonce = batch
//!   sequence number; a replayed, reordered, dropped or forged batch closes
//!   the connection;
//! - `qudag-batch`: messages are batched (128 messages, a byte limit, or
//!   50 ms; or adaptively, at once when the link is idle);
//! - `qudag-pool`: connection states, the pool of idle connections (300 s),
//!   connection limits, per-peer backoff, the simultaneous-dial rule;
//! - `qudag-metrics`: counters, gauges, latency histograms, Prometheus text.
//!
//! Delivery contract: every message [`send`](ConnectionManager::send)
//! accepted is either delivered to the peer's application (in order, through
//! its [`Incoming`]) and acknowledged, or handed back to the sender's
//! application as [`Event::Undelivered`] with the reason. Nothing is dropped
//! silently. Two managers share a session that outlives their connections:
//! what a lost or replaced connection had not got acknowledged is resent on
//! the next one and the receiver drops what it already delivered, so as long
//! as neither manager restarts a message is delivered exactly once. Messages
//! come back only when the peer stays unreachable past `unreachable_after`,
//! when it restarted ([`UndeliveredReason::PeerRestarted`]), or at the
//! shutdown deadline. A handed-back message has `maybe_delivered = true` when
//! it was written before: the peer may have it.
//!
//! What it does not do: peer discovery, routing, or resending what was handed
//! back (that is the application's decision).
//!
//! # Logs
//!
//! The manager logs through `tracing`, in spans a subscriber can filter
//! and group by:
//!
//! - `peer` (field `peer`): one per peer, around everything its driver does
//!   (dials, redials, pooling, hand-backs); a root span.
//! - `accept` (fields `peer`, `remote`): the set-up of one inbound
//!   connection; a root span.
//! - `conn` (fields `id`, `peer`, `side`, `remote`): one per connection,
//!   around its reader; under the `peer` span for a dial and under the
//!   `accept` span for an inbound connection. `id` is unique in the process.
//!
//! A protocol violation by a peer is a `warn` line ("closing connection:
//! protocol violation"); routine events (a dial failed, a connection ended
//! or was replaced) are `debug`.
//!
//! # Examples
//!
//! Two managers over the in-memory transport (QUIC is the same with
//! `QuicTransport`):
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use qudag_net::{ConnectionManager, ManagerConfig, MemoryNetwork, PeerAddr, PeerId, Transport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = MemoryNetwork::new();
//! let alice_t = Arc::new(net.bind(PeerId::from_public_key(b"alice")));
//! let bob_t = Arc::new(net.bind(PeerId::from_public_key(b"bob")));
//! let bob_addr = PeerAddr::new(bob_t.local_peer(), bob_t.local_addr());
//!
//! let alice = ConnectionManager::new(ManagerConfig::default(), alice_t)?;
//! let bob = ConnectionManager::new(ManagerConfig::default(), bob_t)?;
//! let mut bob_in = bob.incoming().unwrap();
//!
//! alice.connect(bob_addr).await?;
//! alice.send(&bob_addr.peer, Bytes::from_static(b"hello")).await?;
//! let (from, msg) = bob_in.recv().await.unwrap();
//! assert_eq!((from, &msg[..]), (alice.local_peer(), &b"hello"[..]));
//!
//! alice.shutdown(std::time::Duration::from_secs(1)).await;
//! bob.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```

#![doc(test(attr(deny(warnings))))]

/// The README's example, compiled as a doctest so it cannot rot.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// This crate's README, compiled as a doctest too.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;

mod budget;
mod config;
mod driver;
mod error;
mod event;
mod manager;
mod queue;
mod session;

pub use config::{ConfigError, ManagerConfig, MAX_BYTES, MAX_CAPACITY, MAX_DURATION};
pub use error::{NetError, SendError, SendManyError, SendManyReason, UndeliveredReason};
pub use event::{Event, Events, Incoming};
pub use manager::{ConnectionManager, ShutdownReport};

// Everything a user needs to build, match or read the manager's values, and
// to implement or wrap a `Transport`, without depending on a layer crate.
pub use qudag_batch::{BatchConfig, ConfigError as BatchConfigError, FlushPolicy};
pub use qudag_crypto::{Identity, ParsePeerIdError, PeerId};
pub use qudag_metrics::{
    CloseCounts, CloseKind, ConnState, ErrorCounts, ErrorKind, FanOut, Histogram, LatencySummary,
    Metrics, MetricsSink, MetricsSnapshot, NetworkMetrics, NoopSink, OpenCounts, OpenKind,
    StateCounts,
};
pub use qudag_pool::{BackoffConfig, LimitError, PoolConfig};
pub use qudag_transport::{
    CloseReason, Connection, MemoryConnection, MemoryNetwork, MemoryTransport, ParsePeerAddrError,
    PeerAddr, PeerText, RecvStream, SendStream, Side, Transport, TransportError,
};
#[cfg(feature = "quic")]
pub use qudag_transport::{
    QuicConfig, QuicConfigError, QuicConnection, QuicTransport, QUIC_MAX_COUNT,
};

/// The attribute macro [`Transport`] and [`Connection`] are written with:
/// put `#[qudag_net::async_trait]` on an `impl Transport` or `impl
/// Connection` (a re-export of the `async-trait` crate's macro, so that a
/// wrapper needs no extra dependency).
pub use async_trait::async_trait;
