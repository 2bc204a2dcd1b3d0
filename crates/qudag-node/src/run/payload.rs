//! The header every generated payload starts with, so that each receiver can
//! check what it gets: the sender's incarnation and a per-destination counter.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "QTN1"
//! 4       8     sender incarnation (u64, big endian, never 0)
//! 12      8     counter: 0 for the first message to this destination (u64, big endian)
//! 20      ...   padding up to the configured message size
//! ```
//!
//! Decoding never panics: a short or malformed payload is a [`HeaderError`].

/// The first four bytes of every generated payload.
pub(crate) const MAGIC: [u8; 4] = *b"QTN1";
/// Bytes of the header; the smallest generated message.
pub(crate) const HEADER_LEN: usize = 20;

/// What a generated payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Header {
    /// The sender's incarnation (fresh at each process start, never 0).
    pub(crate) incarnation: u64,
    /// The message's number among those sent to this destination by this incarnation.
    pub(crate) counter: u64,
}

/// Why a payload is not a generated one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    /// Fewer bytes than a header.
    #[error("payload of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short {
        /// The payload's length.
        len: usize,
    },
    /// The first four bytes are not [`MAGIC`].
    #[error("payload does not start with the testnet magic")]
    Magic,
    /// The incarnation is 0, which no sender uses.
    #[error("payload names incarnation 0")]
    ZeroIncarnation,
}

impl Header {
    /// A payload of `size` bytes (at least [`HEADER_LEN`]) carrying this header.
    pub(crate) fn encode(self, size: usize) -> Vec<u8> {
        let mut out = vec![0u8; size.max(HEADER_LEN)];
        out[..4].copy_from_slice(&MAGIC);
        out[4..12].copy_from_slice(&self.incarnation.to_be_bytes());
        out[12..20].copy_from_slice(&self.counter.to_be_bytes());
        out
    }

    /// The header at the start of `payload`; the padding is ignored.
    pub(crate) fn decode(payload: &[u8]) -> Result<Header, HeaderError> {
        let Some(head) = payload.get(..HEADER_LEN) else {
            return Err(HeaderError::Short { len: payload.len() });
        };
        if head[..4] != MAGIC {
            return Err(HeaderError::Magic);
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let incarnation = word(4);
        if incarnation == 0 {
            return Err(HeaderError::ZeroIncarnation);
        }
        Ok(Header {
            incarnation,
            counter: word(12),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn check(payload: &[u8], expect: Result<Header, HeaderError>) {
        assert_eq!(Header::decode(payload), expect);
    }

    #[test]
    fn known_bytes() {
        let h = Header {
            incarnation: 0x0102_0304_0506_0708,
            counter: 9,
        };
        let p = h.encode(24);
        assert_eq!(
            p,
            b"QTN1\x01\x02\x03\x04\x05\x06\x07\x08\0\0\0\0\0\0\0\x09\0\0\0\0"
        );
        check(&p, Ok(h));
        check(b"", Err(HeaderError::Short { len: 0 }));
        check(&p[..19], Err(HeaderError::Short { len: 19 }));
        check(&[0u8; 20], Err(HeaderError::Magic));
        let mut zero = p.clone();
        zero[4..12].fill(0);
        check(&zero, Err(HeaderError::ZeroIncarnation));
        // A size below the header still carries the whole header.
        assert_eq!(h.encode(0).len(), HEADER_LEN);
    }

    proptest! {
        /// encode then decode gives the header back, for any size.
        #[test]
        fn roundtrip(incarnation in 1u64.., counter in any::<u64>(), size in 0usize..256) {
            let h = Header { incarnation, counter };
            let p = h.encode(size);
            prop_assert_eq!(p.len(), size.max(HEADER_LEN));
            prop_assert_eq!(Header::decode(&p), Ok(h));
        }

        /// Any bytes decode to a header or a typed error, never a panic; a
        /// decoded header re-encodes to the same first 20 bytes.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            match Header::decode(&bytes) {
                Ok(h) => prop_assert_eq!(&h.encode(HEADER_LEN)[..], &bytes[..HEADER_LEN]),
                Err(HeaderError::Short { len }) => prop_assert!(len < HEADER_LEN),
                Err(_) => prop_assert!(bytes.len() >= HEADER_LEN),
            }
        }
    }
}
