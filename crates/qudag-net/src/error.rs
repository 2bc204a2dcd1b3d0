//! Errors of the connection manager, and why a message came back undelivered.

use std::time::Duration;

use bytes::Bytes;
use qudag_crypto::PeerId;
use tokio::time::Instant;

/// Errors of [`ConnectionManager`](crate::ConnectionManager) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The transport failed to dial or accept.
    #[error(transparent)]
    Transport(#[from] qudag_transport::TransportError),
    /// A connection or pending-dial limit is reached and no idle connection
    /// or stranger's session could be evicted.
    #[error(transparent)]
    Limit(#[from] crate::LimitError),
    /// The peer failed recently; dialing again is not allowed before
    /// `retry_at`, `retry_after` from when the error was made.
    #[error("peer {peer} is backing off after failed dials: retry in {retry_after:?}")]
    Backoff {
        /// The peer.
        peer: PeerId,
        /// Earliest instant of the next dial, on tokio's clock (so it can be
        /// slept until, and it follows `tokio::time::pause`).
        retry_at: Instant,
        /// How long from when this error was made until `retry_at`.
        retry_after: Duration,
    },
    /// Dial plus session set-up took longer than the connect timeout.
    #[error("connecting to {peer} timed out")]
    ConnectTimeout {
        /// The peer.
        peer: PeerId,
    },
    /// The session could not be set up on an established connection.
    #[error("session set-up with {peer} failed: {detail}")]
    Session {
        /// The peer.
        peer: PeerId,
        /// What failed.
        detail: String,
    },
    /// The peer is not known: it was never connected and has no address.
    #[error("unknown peer {0}: connect to it first")]
    UnknownPeer(PeerId),
    /// The manager is shutting down or shut down.
    #[error("the connection manager is shut down")]
    Shutdown,
}

/// Why `send` or `try_send` did not accept a message. The message is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The peer's queue is full (only from `try_send`).
    #[error("send queue to {peer} is full")]
    Full {
        /// The peer.
        peer: PeerId,
        /// The message, handed back.
        msg: Bytes,
    },
    /// The message is larger than the configured message limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The message length.
        len: usize,
        /// The configured limit.
        max: usize,
        /// The message, handed back.
        msg: Bytes,
    },
    /// The peer is not known (connect to it first).
    #[error("unknown peer {peer}: connect to it first")]
    UnknownPeer {
        /// The peer.
        peer: PeerId,
        /// The message, handed back.
        msg: Bytes,
    },
    /// The manager is shutting down.
    #[error("the connection manager is shut down")]
    Shutdown {
        /// The message, handed back.
        msg: Bytes,
    },
}

impl SendError {
    /// The message that was not accepted.
    pub fn into_message(self) -> Bytes {
        match self {
            SendError::Full { msg, .. }
            | SendError::TooLarge { msg, .. }
            | SendError::UnknownPeer { msg, .. }
            | SendError::Shutdown { msg } => msg,
        }
    }
}

/// Why [`send_many`](crate::ConnectionManager::send_many) stopped before
/// accepting every message. The messages it did not accept are handed back,
/// in order, in [`unsent`](SendManyError::unsent).
#[derive(Debug, thiserror::Error)]
#[error("{accepted} messages accepted, {} handed back: {reason}", unsent.len())]
#[non_exhaustive]
pub struct SendManyError {
    /// How many messages, from the front, were accepted (each is delivered or
    /// handed back through [`Events`](crate::Events), as with `send`).
    pub accepted: usize,
    /// Why the rest was not accepted.
    pub reason: SendManyReason,
    /// The messages not accepted, in their original order.
    pub unsent: Vec<Bytes>,
}

/// The reason in a [`SendManyError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendManyReason {
    /// The message at `index` is larger than the configured message limit;
    /// sizes are checked before anything is queued, so nothing was accepted.
    #[error("message {index} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its position in the call's messages.
        index: usize,
        /// Its length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The peer is not known (connect to it first).
    #[error("unknown peer {peer}: connect to it first")]
    UnknownPeer {
        /// The peer.
        peer: PeerId,
    },
    /// The manager is shutting down.
    #[error("the connection manager is shut down")]
    Shutdown,
}

/// Why accepted messages were handed back to the sender's application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UndeliveredReason {
    /// The connection failed in a way that no new connection can repair
    /// (a batch that could not be sealed, a message the batcher refused).
    ConnectionFailed,
    /// The peer stopped acknowledging, and no new connection made it
    /// acknowledge within `unreachable_after`.
    Unresponsive,
    /// The manager shut down before the messages were acknowledged.
    Shutdown,
    /// The peer refused or could not be reached, for longer than
    /// `unreachable_after` or `max_failed_dials` failed dials in a row, while the messages waited.
    Unreachable,
    /// This manager's connection limit (`max_connections`, or
    /// `max_pending_dials`) left no room to dial the peer for
    /// `unreachable_after` while the messages waited: every slot held a
    /// connection in use. The peer itself was never tried.
    ConnectionLimit,
    /// The peer restarted (a new incarnation): these messages were written
    /// to its previous incarnation, which may have delivered them before it
    /// stopped. Always `maybe_delivered`.
    PeerRestarted,
}

impl std::fmt::Display for UndeliveredReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UndeliveredReason::ConnectionFailed => "connection failed",
            UndeliveredReason::Unresponsive => "peer unresponsive",
            UndeliveredReason::Shutdown => "shutdown",
            UndeliveredReason::Unreachable => "peer unreachable",
            UndeliveredReason::PeerRestarted => "peer restarted",
            UndeliveredReason::ConnectionLimit => "connection limit",
        })
    }
}
