//! [`TransportError`] and [`CloseReason`].

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use qudag_crypto::PeerId;

use crate::text::PeerText;

/// Why a connection ended.
///
/// Its `Display` escapes the reason bytes and the `Lost` text with
/// [`PeerText`]: a peer chooses them, and printing them must not drive the
/// reader's terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// This side closed it with [`Connection::close`](crate::Connection::close).
    Local {
        /// Application close code.
        code: u32,
        /// Application reason bytes (UTF-8 by convention).
        reason: Bytes,
    },
    /// The peer closed it with an application code and reason.
    Remote {
        /// Application close code sent by the peer.
        code: u32,
        /// Reason bytes sent by the peer.
        reason: Bytes,
    },
    /// The path failed: idle timeout, reset, a cut link, a dead peer.
    Lost(String),
    /// The local endpoint was shut down.
    EndpointClosed,
}

impl CloseReason {
    /// True if the peer closed the connection on purpose.
    pub fn is_remote(&self) -> bool {
        matches!(self, CloseReason::Remote { .. })
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local { code, reason } => {
                write!(f, "closed locally (code {code}: {})", PeerText(reason))
            }
            CloseReason::Remote { code, reason } => {
                write!(f, "closed by peer (code {code}: {})", PeerText(reason))
            }
            CloseReason::Lost(why) => write!(f, "connection lost: {}", PeerText(why.as_bytes())),
            CloseReason::EndpointClosed => f.write_str("local endpoint closed"),
        }
    }
}

/// Errors of a [`Transport`](crate::Transport) or [`Connection`](crate::Connection).
///
/// Every variant that concerns one peer carries it, so a caller can report
/// and act on the error without extra bookkeeping. Its `Display` escapes the
/// `detail` strings with [`PeerText`], since some quote what a peer sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Nothing answers at the address (no endpoint, unreachable, timed out before any reply).
    #[error("peer {peer} at {addr} is unreachable: {}", PeerText(.detail.as_bytes()))]
    Unreachable {
        /// The peer that was dialed.
        peer: PeerId,
        /// The address that was dialed.
        addr: SocketAddr,
        /// What the transport observed.
        detail: String,
    },
    /// The remote endpoint's allow-list does not admit this identity (over
    /// QUIC: the TLS alert `access_denied`).
    #[error("peer {peer} refused the connection: its allow-list does not admit this identity")]
    Denied {
        /// The refusing peer (as dialed).
        peer: PeerId,
    },
    /// The remote endpoint refused the connection for another reason than
    /// its allow-list (its limit on handshakes or connections, or it is
    /// shutting down); `detail` says which, as far as the transport knows.
    #[error("peer {peer} refused the connection: {}", PeerText(.detail.as_bytes()))]
    Refused {
        /// The refusing peer (as dialed).
        peer: PeerId,
        /// What the transport observed.
        detail: String,
    },
    /// The peer at the address proved a different identity than the one dialed.
    #[error("dialed peer {expected} but the peer at that address is {actual}")]
    PeerIdMismatch {
        /// The PeerId that was dialed.
        expected: PeerId,
        /// The PeerId the remote proved.
        actual: PeerId,
    },
    /// An inbound peer is not on the allow-list.
    #[error("inbound peer {peer} is not on the allow-list")]
    NotAllowed {
        /// The refused peer.
        peer: PeerId,
    },
    /// The handshake did not complete in time.
    #[error("handshake with {addr} timed out")]
    HandshakeTimeout {
        /// The peer, when known (outbound dials).
        peer: Option<PeerId>,
        /// The remote address.
        addr: SocketAddr,
    },
    /// The handshake failed (bad certificate, bad signature, protocol mismatch).
    #[error("handshake with {addr} failed: {}", PeerText(.detail.as_bytes()))]
    Handshake {
        /// The peer, when known (outbound dials).
        peer: Option<PeerId>,
        /// The remote address.
        addr: SocketAddr,
        /// What failed.
        detail: String,
    },
    /// The connection is closed; the reason says by whom and why.
    #[error("connection to {peer} closed: {reason}")]
    Closed {
        /// The peer of the closed connection.
        peer: PeerId,
        /// Why it closed.
        reason: CloseReason,
    },
    /// The batch stream of this connection was already opened.
    #[error("the stream of the connection to {peer} was already taken")]
    StreamTaken {
        /// The peer of the connection.
        peer: PeerId,
    },
    /// The peer broke the transport's wire protocol (for example a wrong stream preamble).
    #[error("peer {peer} broke the transport protocol: {}", PeerText(.detail.as_bytes()))]
    Protocol {
        /// The peer of the connection.
        peer: PeerId,
        /// What was wrong.
        detail: String,
    },
    /// Keying material could not be exported.
    #[error("keying material export failed for {peer}")]
    Export {
        /// The peer of the connection.
        peer: PeerId,
    },
    /// The local endpoint is closed; no more connections will be accepted or dialed.
    #[error("local endpoint is closed")]
    EndpointClosed,
    /// Setting up the local endpoint failed (bind, TLS configuration).
    #[error("endpoint setup failed: {}", PeerText(.0.as_bytes()))]
    Setup(String),
    /// An I/O error on the local socket.
    #[error("i/o error on the local socket")]
    Io(#[from] std::io::Error),
}

impl TransportError {
    /// The peer this error concerns, when known.
    pub fn peer(&self) -> Option<PeerId> {
        match self {
            TransportError::Unreachable { peer, .. }
            | TransportError::Refused { peer, .. }
            | TransportError::Denied { peer }
            | TransportError::NotAllowed { peer }
            | TransportError::Closed { peer, .. }
            | TransportError::Protocol { peer, .. }
            | TransportError::StreamTaken { peer }
            | TransportError::Export { peer } => Some(*peer),
            TransportError::PeerIdMismatch { expected, .. } => Some(*expected),
            TransportError::HandshakeTimeout { peer, .. }
            | TransportError::Handshake { peer, .. } => *peer,
            TransportError::EndpointClosed | TransportError::Setup(_) | TransportError::Io(_) => {
                None
            }
        }
    }

    /// True if the endpoint itself is gone (an accept loop should stop).
    pub fn is_endpoint_closed(&self) -> bool {
        matches!(self, TransportError::EndpointClosed)
    }
}
