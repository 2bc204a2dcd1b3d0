//! The simultaneous-dial rule: [`Role`] and [`keep_connection`].

use qudag_crypto::PeerId;

/// The local node's side of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The local node dialed this connection.
    Dialer,
    /// The remote node dialed this connection; the local node accepted it.
    Listener,
}

/// Simultaneous dial: whether the connection in which the local node has
/// `role` is the one to keep when two connections link the same pair.
///
/// The rule is "the connection dialed by the lower `PeerId` wins" (byte order
/// of [`PeerId`]). Both sides compute it the same way, so each keeps the same
/// single connection and closes the other. A node connected to itself
/// (`local == remote`) keeps the connection.
///
/// # Examples
///
/// ```
/// use qudag_crypto::PeerId;
/// use qudag_pool::{keep_connection, Role};
///
/// let (low, high) = (PeerId::from_bytes([1; 32]), PeerId::from_bytes([2; 32]));
/// // The connection `low` dialed survives, on both sides.
/// assert!(keep_connection(&low, &high, Role::Dialer));
/// assert!(keep_connection(&high, &low, Role::Listener));
/// // The connection `high` dialed is closed, on both sides.
/// assert!(!keep_connection(&high, &low, Role::Dialer));
/// assert!(!keep_connection(&low, &high, Role::Listener));
/// ```
pub fn keep_connection(local: &PeerId, remote: &PeerId, role: Role) -> bool {
    let (dialer, other) = match role {
        Role::Dialer => (local, remote),
        Role::Listener => (remote, local),
    };
    dialer <= other
}
