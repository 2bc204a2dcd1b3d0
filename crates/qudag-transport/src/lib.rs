//! qudag-transport: the network under the connection manager.
//!
//! This crate defines the boundary between the connection manager and the
//! network: a [`Transport`] dials and accepts authenticated [`Connection`]s to
//! peers named by [`PeerId`]; each connection carries one ordered byte stream
//! per direction (opened once, with [`Connection::open_stream`]), exports
//! keying material bound to the authenticated session, reports its round-trip
//! time, and closes with a code and reason that the other side observes as a
//! [`CloseReason`].
//!
//! Implementations:
//!
//! - [`MemoryTransport`] (always built): in-process, deterministic, with real
//!   semantics (ordered bytes, bounded buffers, close from either side, a dial
//!   of an unknown address fails) and fault injection through
//!   [`MemoryNetwork`]: refuse the next dials, delay dials, drop a connection,
//!   cut a link both ways and heal it. Tests of everything above the
//!   transport run on it first.
//! - `QuicTransport` (feature `quic`, on by default): QUIC over quinn with
//!   mutual TLS 1.3 whose certificates carry the peers' identity keys.
//!
//! What it does not do: framing, sealing, batching, pooling, retries. Those
//! live in `qudag-batch`, `qudag-crypto`, `qudag-pool` and `qudag-net`.
//!
//! The traits use `async-trait` so the manager can hold a transport as
//! `Arc<dyn Transport>`: that costs one box per dial, accept or stream open,
//! never per message (messages move through the boxed `AsyncWrite`/`AsyncRead`
//! streams, which are polled, not boxed, per write).
//!
//! # Examples
//!
//! ```
//! use qudag_crypto::PeerId;
//! use qudag_transport::{MemoryNetwork, PeerAddr, Transport};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = MemoryNetwork::new();
//! let alice = net.bind(PeerId::from_public_key(b"alice"));
//! let bob = net.bind(PeerId::from_public_key(b"bob"));
//!
//! let to_bob = PeerAddr::new(bob.local_peer(), bob.local_addr());
//! let (dialed, accepted) = tokio::join!(alice.dial(&to_bob), bob.accept());
//! let (dialed, accepted) = (dialed?, accepted?);
//! assert_eq!(accepted.peer(), alice.local_peer());
//!
//! let (mut tx, _rx) = dialed.open_stream().await?;
//! let (_tx, mut rx) = accepted.open_stream().await?;
//! tx.write_all(b"hello").await?;
//! let mut buf = [0u8; 5];
//! rx.read_exact(&mut buf).await?;
//! assert_eq!(&buf, b"hello");
//! # Ok(())
//! # }
//! ```

#![doc(test(attr(deny(warnings))))]

/// The crate's README, compiled as a doctest so it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod addr;
mod error;
mod memory;
#[cfg(feature = "quic")]
pub mod quic;
mod text;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

pub use addr::{ParsePeerAddrError, PeerAddr};
pub use error::{CloseReason, TransportError};
pub use memory::{MemoryConnection, MemoryNetwork, MemoryTransport};
pub use qudag_crypto::PeerId;
#[cfg(feature = "quic")]
pub use quic::{
    QuicConfig, QuicConfigError, QuicConnection, QuicTransport, MAX_COUNT as QUIC_MAX_COUNT,
};
pub use text::PeerText;

/// The sending half of a connection's ordered stream.
pub type SendStream = Box<dyn AsyncWrite + Send + Unpin>;
/// The receiving half of a connection's ordered stream.
pub type RecvStream = Box<dyn AsyncRead + Send + Unpin>;

/// Which end of a connection this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// This side dialed.
    Dialer,
    /// This side accepted.
    Listener,
}

/// An endpoint that dials and accepts authenticated connections.
///
/// Contract:
/// - [`dial`](Transport::dial) returns only a connection whose remote proved
///   the identity `to.peer`; a different identity is
///   [`TransportError::PeerIdMismatch`].
/// - [`accept`](Transport::accept) returns the next inbound connection whose
///   handshake completed. A failed inbound handshake may be returned as an
///   error; the caller keeps accepting until
///   [`TransportError::is_endpoint_closed`].
/// - [`close`](Transport::close) closes every connection with
///   [`CloseReason::EndpointClosed`] locally and makes later dials and accepts
///   fail with [`TransportError::EndpointClosed`].
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The identity of this endpoint.
    fn local_peer(&self) -> PeerId;
    /// The address peers dial to reach this endpoint.
    fn local_addr(&self) -> SocketAddr;
    /// Dials `to.peer` at `to.addr`.
    async fn dial(&self, to: &PeerAddr) -> Result<Arc<dyn Connection>, TransportError>;
    /// Waits for the next authenticated inbound connection.
    async fn accept(&self) -> Result<Arc<dyn Connection>, TransportError>;
    /// Closes the endpoint and all its connections.
    fn close(&self);
    /// Sets the incarnation (non-zero; 0: none) that this endpoint, as a
    /// listener, tells every dialer up front: the dialer's
    /// [`Connection::peer_incarnation`]. The connection manager sets its
    /// own, so that a dialer may write its first batch without waiting a
    /// round trip for the listener's RESUME (`docs/PROTOCOL.md` §6). A
    /// transport that cannot carry it ignores it and leaves
    /// `peer_incarnation` at `None`; the dialer then waits for the RESUME.
    ///
    /// No default, like [`Connection::accepted`] and
    /// [`Connection::peer_incarnation`]: a wrapping transport must pass it
    /// on, not lose the speed-up without a word.
    fn set_incarnation(&self, incarnation: u64);
}

/// One authenticated connection to a peer.
///
/// Contract:
/// - [`open_stream`](Connection::open_stream) is called once per connection
///   on each side; it yields the ordered stream in each direction. On the
///   dialer it opens the stream, on the listener it waits for the dialer's.
/// - After the connection closes, reads and writes on its streams fail, and
///   [`close_reason`](Connection::close_reason) tells why.
/// - [`export_keying_material`](Connection::export_keying_material) gives
///   both ends the same bytes for the same label and context, and different
///   bytes on every other connection.
#[async_trait]
pub trait Connection: Send + Sync + fmt::Debug + 'static {
    /// The authenticated identity of the remote peer.
    fn peer(&self) -> PeerId;
    /// The remote socket address.
    fn remote_addr(&self) -> SocketAddr;
    /// Whether this side dialed or accepted.
    fn side(&self) -> Side;
    /// Opens (dialer) or accepts (listener) the connection's ordered stream pair.
    async fn open_stream(&self) -> Result<(SendStream, RecvStream), TransportError>;
    /// Fills `out` with keying material exported from the authenticated session (RFC 8446 §7.5 for QUIC/TLS).
    fn export_keying_material(
        &self,
        out: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), TransportError>;
    /// The current round-trip time estimate, if the transport has one.
    fn rtt(&self) -> Option<Duration>;
    /// Closes the connection with an application code and reason; the peer sees [`CloseReason::Remote`].
    fn close(&self, code: u32, reason: &[u8]);
    /// Why the connection closed, or `None` while it is open.
    fn close_reason(&self) -> Option<CloseReason>;
    /// Waits until the connection is closed and returns why.
    async fn closed(&self) -> CloseReason;
    /// Resolves once the remote has accepted this connection.
    ///
    /// A dialer's [`Transport::dial`] may return as soon as its own side of
    /// the handshake is done, so its first bytes leave without waiting a
    /// round trip; the listener can still refuse it after that (over QUIC:
    /// its allow-list, [`TransportError::Denied`], or its limits,
    /// [`TransportError::Refused`]). This waits for the listener's word and
    /// returns the error `dial` would have returned. Later calls return the
    /// same result. A listener's side, or a transport that decides during
    /// `dial` (like [`MemoryTransport`]), returns `Ok(())` at once.
    ///
    /// No default: a wrapping transport must pass this on, or `connect`
    /// would report a refused connection as made.
    async fn accepted(&self) -> Result<(), TransportError>;
    /// On a dialed connection, the incarnation the listener told before
    /// anything was written (see [`Transport::set_incarnation`]), known
    /// when [`Transport::dial`] returns and authenticated as the listener's;
    /// `None` on a listener's side, if the listener set none, or if the
    /// transport does not carry it.
    ///
    /// No default: a wrapping transport must pass this on, or the manager's
    /// first batch on a new connection would wait a round trip for the
    /// listener's RESUME instead of leaving behind the handshake.
    fn peer_incarnation(&self) -> Option<u64>;
    /// True while the connection is open.
    fn is_alive(&self) -> bool {
        self.close_reason().is_none()
    }
}
