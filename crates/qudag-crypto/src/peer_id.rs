//! [`PeerId`]: the SHA-256 of a peer's Ed25519 public key.

use std::fmt;
use std::str::FromStr;

use subtle::ConstantTimeEq;

/// A peer's identity: the SHA-256 digest of its Ed25519 public key (32 bytes).
///
/// Shown as 64 lowercase hex digits; [`FromStr`] accepts exactly that form and
/// nothing else (no prefix, no upper case, no whitespace), so a `PeerId`
/// printed and parsed back is the same value. Ordering is the byte order of
/// the digest; the simultaneous-dial rule relies on it.
///
/// # Examples
///
/// ```
/// use qudag_crypto::PeerId;
///
/// let id = PeerId::from_public_key(&[7u8; 32]);
/// let text = id.to_string();
/// assert_eq!(text.len(), 64);
/// assert_eq!(text.parse::<PeerId>().unwrap(), id);
/// assert!("not-a-peer-id".parse::<PeerId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId([u8; PeerId::LEN]);

impl PeerId {
    /// Length of a `PeerId` in bytes.
    pub const LEN: usize = 32;

    /// Derives the `PeerId` of an Ed25519 public key: `SHA-256(public_key)`.
    pub fn from_public_key(public_key: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
        let mut out = [0u8; Self::LEN];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// Wraps raw digest bytes (for example read from a trusted store).
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// The 32 digest bytes.
    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// Constant-time equality, for authentication paths (a verifier comparing
    /// the identity a peer proved with the one that was expected).
    pub fn ct_eq(&self, other: &PeerId) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; PeerId::LEN * 2];
        for (i, b) in self.0.iter().enumerate() {
            buf[2 * i] = HEX[usize::from(b >> 4)];
            buf[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        // The buffer holds only ASCII hex digits.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = self.to_string();
        write!(f, "PeerId({}…)", &full[..12])
    }
}

/// Why a string is not a [`PeerId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParsePeerIdError {
    /// The text is not 64 characters long.
    #[error("peer id must be 64 lowercase hex digits, got {0} characters")]
    Length(usize),
    /// A character is not a lowercase hex digit.
    #[error("peer id has a character that is not a lowercase hex digit at position {0}")]
    Character(usize),
}

impl FromStr for PeerId {
    type Err = ParsePeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != PeerId::LEN * 2 {
            return Err(ParsePeerIdError::Length(s.chars().count()));
        }
        let nibble = |i: usize| -> Result<u8, ParsePeerIdError> {
            match bytes[i] {
                c @ b'0'..=b'9' => Ok(c - b'0'),
                c @ b'a'..=b'f' => Ok(c - b'a' + 10),
                _ => Err(ParsePeerIdError::Character(i)),
            }
        };
        let mut out = [0u8; PeerId::LEN];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (nibble(2 * i)? << 4) | nibble(2 * i + 1)?;
        }
        Ok(PeerId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn check_err(input: &str, expect: ParsePeerIdError) {
        assert_eq!(input.parse::<PeerId>(), Err(expect));
    }

    #[test]
    fn rejects_wrong_length() {
        check_err("", ParsePeerIdError::Length(0));
        check_err(&"a".repeat(63), ParsePeerIdError::Length(63));
        check_err(&"a".repeat(65), ParsePeerIdError::Length(65));
    }

    #[test]
    fn rejects_upper_case_and_non_hex() {
        let mut s = "a".repeat(64);
        s.replace_range(10..11, "A");
        check_err(&s, ParsePeerIdError::Character(10));
        let mut s = "0".repeat(64);
        s.replace_range(63..64, "g");
        check_err(&s, ParsePeerIdError::Character(63));
    }

    #[test]
    fn multibyte_text_is_rejected_without_panic() {
        let s = "é".repeat(32); // 64 bytes, 32 chars
        assert!(s.parse::<PeerId>().is_err());
    }

    #[test]
    fn known_digest() {
        // SHA-256 of the empty string.
        let id = PeerId::from_public_key(b"");
        assert_eq!(
            id.to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(bytes in any::<[u8; 32]>()) {
            let id = PeerId::from_bytes(bytes);
            prop_assert_eq!(id.to_string().parse::<PeerId>().unwrap(), id);
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = s.parse::<PeerId>();
        }

        #[test]
        fn ct_eq_matches_eq(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            let (a, b) = (PeerId::from_bytes(a), PeerId::from_bytes(b));
            prop_assert_eq!(a.ct_eq(&b), a == b);
            prop_assert!(a.ct_eq(&a));
        }
    }
}
