//! [`SessionKey`]: one direction's batch-sealing key, and the exporter labels
//! it is derived with.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Length of a [`SessionKey`] in bytes (ChaCha20-Poly1305 uses 256-bit keys).
pub const KEY_LEN: usize = 32;

/// TLS exporter label (RFC 5705 / RFC 8446 section 7.5) for the key that
/// seals batches sent by the dialer (the side that opened the connection) to
/// the listener. The exporter context is the dialer's PeerId followed by the
/// listener's (64 bytes), so the key is bound to both identities, and the
/// output is [`KEY_LEN`] bytes.
pub const LABEL_DIALER_TO_LISTENER: &[u8] = b"EXPORTER-qudag-net/2 batch key dialer->listener";

/// TLS exporter label for the key that seals batches sent by the listener to
/// the dialer. The exporter context is the dialer's PeerId followed by the
/// listener's (64 bytes), and the output is [`KEY_LEN`] bytes.
pub const LABEL_LISTENER_TO_DIALER: &[u8] = b"EXPORTER-qudag-net/2 batch key listener->dialer";

/// Which end of a connection this node is; picks the exporter labels.
///
/// # Examples
///
/// ```
/// use qudag_crypto::{Role, LABEL_DIALER_TO_LISTENER, LABEL_LISTENER_TO_DIALER};
///
/// assert_eq!(Role::Dialer.seal_label(), LABEL_DIALER_TO_LISTENER);
/// assert_eq!(Role::Listener.open_label(), LABEL_DIALER_TO_LISTENER);
/// assert_eq!(Role::Dialer.open_label(), LABEL_LISTENER_TO_DIALER);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that dialed (the TLS client).
    Dialer,
    /// The side that accepted (the TLS server).
    Listener,
}

impl Role {
    /// The exporter label of the key this side seals its outgoing batches with.
    pub const fn seal_label(self) -> &'static [u8] {
        match self {
            Role::Dialer => LABEL_DIALER_TO_LISTENER,
            Role::Listener => LABEL_LISTENER_TO_DIALER,
        }
    }

    /// The exporter label of the key this side opens incoming batches with.
    pub const fn open_label(self) -> &'static [u8] {
        match self {
            Role::Dialer => LABEL_LISTENER_TO_DIALER,
            Role::Listener => LABEL_DIALER_TO_LISTENER,
        }
    }
}

/// One direction's 256-bit batch-sealing key.
///
/// The bytes live in one heap [`Zeroizing`] buffer, written once and wiped
/// when the key is dropped; moving a `SessionKey` (into a sealer, into a
/// `Box<dyn Sealer>`) moves only the pointer, so moves leave no copies of
/// the key behind. There is no `Clone` and no way to read the bytes back
/// out of the crate; `Debug` prints `SessionKey(<redacted>)`. Build one from
/// the key material the transport exports (see [`LABEL_DIALER_TO_LISTENER`])
/// and hand it to a [`Sealer`](crate::Sealer) constructor, which consumes
/// it. What the sealers do with it is in their docs ("What is wiped").
///
/// # Examples
///
/// ```
/// use qudag_crypto::{KeyError, SessionKey};
///
/// let key = SessionKey::from_bytes([7u8; 32]);
/// assert_eq!(format!("{key:?}"), "SessionKey(<redacted>)");
/// assert!(matches!(SessionKey::from_slice(&[0u8; 31]), Err(KeyError::Length(31))));
/// ```
pub struct SessionKey(Box<Zeroizing<[u8; KEY_LEN]>>);

impl SessionKey {
    /// Copies `bytes` into the key's heap buffer and wipes the argument (a
    /// copy on this function's stack); wiping the caller's own copy is the
    /// caller's job.
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        let key = Self::copied(&bytes);
        bytes.zeroize();
        key
    }

    /// Copies a key out of `b`, which must be exactly [`KEY_LEN`] bytes long.
    pub fn from_slice(b: &[u8]) -> Result<Self, KeyError> {
        if b.len() != KEY_LEN {
            return Err(KeyError::Length(b.len()));
        }
        Ok(Self::copied(b))
    }

    /// The heap buffer is allocated zeroed and the key written straight
    /// into it, so no temporary holds the key.
    fn copied(b: &[u8]) -> Self {
        let mut key = Box::new(Zeroizing::new([0u8; KEY_LEN]));
        key.copy_from_slice(b);
        Self(key)
    }

    /// Constant-time comparison of two keys.
    pub fn ct_eq(&self, other: &SessionKey) -> bool {
        self.0[..].ct_eq(&other.0[..]).into()
    }

    /// The key bytes, for the sealer backends only.
    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

/// Why bytes are not a [`SessionKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key material is not [`KEY_LEN`] bytes long (the length is given).
    #[error("session key must be 32 bytes, got {0}")]
    Length(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_slice_checks_length() {
        assert_eq!(SessionKey::from_slice(&[]).err(), Some(KeyError::Length(0)));
        assert_eq!(
            SessionKey::from_slice(&[1u8; 33]).err(),
            Some(KeyError::Length(33))
        );
        let k = SessionKey::from_slice(&[9u8; 32]).unwrap();
        assert!(k.ct_eq(&SessionKey::from_bytes([9u8; 32])));
        assert!(!k.ct_eq(&SessionKey::from_bytes([8u8; 32])));
    }

    /// A move copies a pointer, not the key (the key's only copy is the
    /// heap buffer that is wiped on drop).
    #[test]
    fn moving_a_key_moves_a_pointer() {
        assert_eq!(
            std::mem::size_of::<SessionKey>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn debug_redacts() {
        let k = SessionKey::from_bytes([0xab; 32]);
        let s = format!("{k:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
    }

    #[test]
    fn labels_differ_and_roles_are_mirrored() {
        assert_ne!(LABEL_DIALER_TO_LISTENER, LABEL_LISTENER_TO_DIALER);
        for role in [Role::Dialer, Role::Listener] {
            let other = match role {
                Role::Dialer => Role::Listener,
                Role::Listener => Role::Dialer,
            };
            assert_eq!(role.seal_label(), other.open_label());
            assert_ne!(role.seal_label(), role.open_label());
            assert!(role.seal_label().starts_with(b"EXPORTER-"));
        }
    }
}
