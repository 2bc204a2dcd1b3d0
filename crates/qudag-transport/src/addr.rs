//! [`PeerAddr`]: who to dial, and where.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use qudag_crypto::{ParsePeerIdError, PeerId};

/// A peer and the address it listens on, written `PEERID@IP:PORT`.
///
/// # Examples
///
/// ```
/// use qudag_transport::PeerAddr;
///
/// let text = format!("{}@127.0.0.1:4433", "ab".repeat(32));
/// let addr: PeerAddr = text.parse().unwrap();
/// assert_eq!(addr.addr.port(), 4433);
/// assert_eq!(addr.to_string(), text);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PeerAddr {
    /// The identity the dialer requires the remote to prove.
    pub peer: PeerId,
    /// The socket address to dial.
    pub addr: SocketAddr,
}

impl PeerAddr {
    /// Pairs a peer with an address.
    pub fn new(peer: PeerId, addr: SocketAddr) -> Self {
        Self { peer, addr }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.peer, self.addr)
    }
}

/// Why a string is not a [`PeerAddr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParsePeerAddrError {
    /// There is no `@` between the peer id and the address.
    #[error("expected PEERID@IP:PORT, found no '@'")]
    MissingAt,
    /// The part before `@` is not a peer id.
    #[error("bad peer id: {0}")]
    PeerId(#[from] ParsePeerIdError),
    /// The part after `@` is not a socket address.
    #[error("bad socket address {0:?} (expected IP:PORT)")]
    Addr(String),
}

impl FromStr for PeerAddr {
    type Err = ParsePeerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (peer, addr) = s.split_once('@').ok_or(ParsePeerAddrError::MissingAt)?;
        let peer = peer.parse()?;
        let addr = addr
            .parse()
            .map_err(|_| ParsePeerAddrError::Addr(addr.to_owned()))?;
        Ok(Self { peer, addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_are_typed() {
        assert_eq!(
            "abc".parse::<PeerAddr>(),
            Err(ParsePeerAddrError::MissingAt)
        );
        assert!(matches!(
            "x@1.2.3.4:5".parse::<PeerAddr>(),
            Err(ParsePeerAddrError::PeerId(_))
        ));
        let bad = format!("{}@nowhere", "0".repeat(64));
        assert_eq!(
            bad.parse::<PeerAddr>(),
            Err(ParsePeerAddrError::Addr("nowhere".into()))
        );
    }

    #[test]
    fn ipv6_round_trip() {
        let text = format!("{}@[::1]:9", "0".repeat(64));
        assert_eq!(text.parse::<PeerAddr>().unwrap().to_string(), text);
    }
}
