//! The [`Sealer`] trait and its two ChaCha20-Poly1305 backends.
//!
//! Both backends implement the same AEAD (RFC 8439) with the same nonce
//! layout, so their output is byte-identical (a differential property test
//! holds them to it); they differ only in speed. [`default_sealer`] picks the
//! faster one as measured by `benches/benches/sealer.rs`.

use std::fmt;

use aead::{AeadInPlace, KeyInit};

use crate::key::SessionKey;

/// Length of the Poly1305 authentication tag in bytes.
pub const TAG_LEN: usize = 16;

/// Length of the AEAD nonce in bytes: 4 zero bytes, then the 64-bit sequence
/// number big-endian.
pub const NONCE_LEN: usize = 12;

/// Largest plaintext ChaCha20-Poly1305 may seal under one nonce (RFC 8439:
/// 2^38 - 64 bytes).
const MAX_PLAINTEXT_LEN: u64 = (1 << 38) - 64;

/// The nonce for sequence number `seq`: `0u32 || seq` big-endian.
///
/// # Examples
///
/// ```
/// assert_eq!(qudag_crypto::nonce_for(1), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
/// ```
pub fn nonce_for(seq: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    nonce
}

/// Seals and opens batches in place, one instance per direction of one
/// connection.
///
/// The sending side calls [`seal_in_place`](Sealer::seal_in_place) with
/// sequence numbers 0, 1, 2, ...; the receiving side, holding a sealer built
/// from the same key, calls [`open_in_place`](Sealer::open_in_place) with the
/// same sequence numbers in the same order. The nonce is the sequence number
/// ([`nonce_for`]), so a nonce is never used twice under one key: the sealer
/// refuses any `seq` other than the next one, and refuses to wrap.
/// Sequence number `u64::MAX` is never used: after `2^64 - 1` batches the
/// sealer is exhausted and the connection must be replaced.
///
/// The trait is object safe; the connection manager holds `Box<dyn Sealer>`.
///
/// # Examples
///
/// ```
/// use qudag_crypto::{default_sealer, OpenError, SessionKey};
///
/// let mut tx = default_sealer(SessionKey::from_bytes([1; 32]));
/// let mut rx = default_sealer(SessionKey::from_bytes([1; 32]));
///
/// let mut batch = *b"hello";
/// let tag = tx.seal_in_place(0, b"header", &mut batch).unwrap();
/// assert_ne!(&batch, b"hello");
///
/// // A replay of batch 0 fails after the first open succeeds.
/// let copy = batch;
/// rx.open_in_place(0, b"header", &mut batch, &tag).unwrap();
/// assert_eq!(&batch, b"hello");
/// let mut replay = copy;
/// assert_eq!(
///     rx.open_in_place(0, b"header", &mut replay, &tag),
///     Err(OpenError::Sequence { expected: 1, got: 0 })
/// );
/// ```
pub trait Sealer: fmt::Debug + Send + 'static {
    /// Seals `buf` in place under nonce = `seq` (12-byte nonce: 4 zero bytes
    /// || `seq` big-endian) with associated data `aad`; returns the tag.
    ///
    /// `seq` must be exactly [`next_seal_seq`](Sealer::next_seal_seq) (it
    /// starts at 0). A reused or skipped `seq`, an exhausted counter or a
    /// buffer too large for one nonce is a [`SealError`] and leaves `buf` and
    /// the counter unchanged; a nonce is never used twice.
    fn seal_in_place(
        &mut self,
        seq: u64,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], SealError>;

    /// Opens `buf` in place, given its sequence number, associated data and
    /// tag.
    ///
    /// Accepts only `seq` == [`next_open_seq`](Sealer::next_open_seq) (it
    /// starts at 0); on success `buf` holds the plaintext and the counter
    /// advances. On failure the counter is unchanged and the contents of
    /// `buf` are unspecified; the error says only whether the sequence number
    /// was wrong or the batch did not authenticate.
    fn open_in_place(
        &mut self,
        seq: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), OpenError>;

    /// The sequence number the next [`seal_in_place`](Sealer::seal_in_place)
    /// must use.
    fn next_seal_seq(&self) -> u64;

    /// The sequence number the next [`open_in_place`](Sealer::open_in_place)
    /// accepts.
    fn next_open_seq(&self) -> u64;

    /// Human-readable backend name: `"ring"` or `"chacha20poly1305"`.
    fn backend(&self) -> &'static str;
}

/// Why [`Sealer::seal_in_place`] refused to seal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// `seq` is not the next sealing sequence number (reused or skipped).
    #[error("sealing sequence number {got} is not the next one ({expected})")]
    Sequence {
        /// The sequence number the sealer expected.
        expected: u64,
        /// The sequence number the caller passed.
        got: u64,
    },
    /// All `2^64 - 1` sequence numbers have been used; sealing more would
    /// repeat a nonce.
    #[error("sealing sequence numbers are exhausted; the connection needs a new key")]
    Exhausted,
    /// The buffer is longer than ChaCha20-Poly1305 can seal under one nonce.
    #[error("batch of {len} bytes is too large to seal")]
    TooLong {
        /// The buffer length.
        len: usize,
    },
}

/// Why [`Sealer::open_in_place`] refused a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// `seq` is not the next expected sequence number: the batch was
    /// replayed, reordered or one before it was dropped.
    #[error("batch sequence number {got} is not the expected {expected}")]
    Sequence {
        /// The sequence number the receiver expected.
        expected: u64,
        /// The sequence number the batch carried.
        got: u64,
    },
    /// The batch, its associated data or its tag was not produced by the
    /// peer holding this key (forged or corrupted). Carries no detail.
    #[error("batch authentication failed")]
    Authentication,
    /// The receiver has opened `2^64 - 1` batches; no valid batch can follow.
    #[error("opening sequence numbers are exhausted")]
    Exhausted,
}

/// The two sequence counters and the checks every backend shares.
#[derive(Debug)]
struct Counters {
    next_seal: u64,
    next_open: u64,
}

impl Counters {
    const fn starting_at(next_seal: u64, next_open: u64) -> Self {
        Self {
            next_seal,
            next_open,
        }
    }

    /// Checks `seq` and `len` for sealing and consumes the sequence number.
    /// Returns the nonce to use. The counter is advanced before the backend
    /// runs, so even a backend failure cannot lead to nonce reuse.
    fn take_seal(&mut self, seq: u64, len: usize) -> Result<[u8; NONCE_LEN], SealError> {
        if self.next_seal == u64::MAX {
            return Err(SealError::Exhausted);
        }
        if seq != self.next_seal {
            return Err(SealError::Sequence {
                expected: self.next_seal,
                got: seq,
            });
        }
        if u64::try_from(len).map_or(true, |l| l > MAX_PLAINTEXT_LEN) {
            return Err(SealError::TooLong { len });
        }
        self.next_seal += 1;
        Ok(nonce_for(seq))
    }

    /// Checks `seq` for opening; the caller advances with [`Self::opened`]
    /// only once the batch authenticated.
    fn check_open(&self, seq: u64) -> Result<[u8; NONCE_LEN], OpenError> {
        if seq != self.next_open {
            return Err(OpenError::Sequence {
                expected: self.next_open,
                got: seq,
            });
        }
        if seq == u64::MAX {
            return Err(OpenError::Exhausted);
        }
        Ok(nonce_for(seq))
    }

    fn opened(&mut self) {
        // check_open refused u64::MAX, so this cannot overflow.
        self.next_open += 1;
    }
}

/// ChaCha20-Poly1305 from RustCrypto's `chacha20poly1305` crate, through the
/// `aead` in-place API (with runtime CPU feature detection).
///
/// # What is wiped
///
/// The key lives inside the cipher value, on the heap, which wipes it on
/// drop (`ZeroizeOnDrop`); the cipher value is built on the stack and moved
/// into its box, and that stack slot is not wiped. Each batch's ChaCha20 state and Poly1305 state (the
/// one-time MAC key) are built on the stack and wiped when the batch is
/// done (`chacha20` and `poly1305` with their `zeroize` features). Copies
/// the compiler leaves in registers or spilled stack slots are not.
pub struct ChaChaSealer {
    /// Boxed, so moving the sealer does not copy the key.
    cipher: Box<chacha20poly1305::ChaCha20Poly1305>,
    counters: Counters,
}

impl ChaChaSealer {
    /// A sealer whose seal and open counters both start at 0.
    pub fn new(key: SessionKey) -> Self {
        Self::starting_at(key, 0, 0)
    }

    pub(crate) fn starting_at(key: SessionKey, next_seal: u64, next_open: u64) -> Self {
        let cipher = Box::new(chacha20poly1305::ChaCha20Poly1305::new(key.expose().into()));
        Self {
            cipher,
            counters: Counters::starting_at(next_seal, next_open),
        }
    }

    pub(crate) fn seal_raw(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], ()> {
        let tag = self
            .cipher
            .encrypt_in_place_detached(nonce.into(), aad, buf)
            .map_err(|_| ())?;
        Ok(tag.into())
    }

    pub(crate) fn open_raw(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), ()> {
        self.cipher
            .decrypt_in_place_detached(nonce.into(), aad, buf, tag.into())
            .map_err(|_| ())
    }
}

impl fmt::Debug for ChaChaSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaChaSealer")
            .field("next_seal", &self.counters.next_seal)
            .field("next_open", &self.counters.next_open)
            .finish_non_exhaustive()
    }
}

/// ChaCha20-Poly1305 from `ring` (the implementation rustls and quinn
/// already use).
///
/// # What is wiped
///
/// The sealer keeps the [`SessionKey`] it was built from (a wiped-on-drop
/// buffer, see [`SessionKey`]) and builds ring's key value afresh for every
/// batch, on the stack of the seal or open call. ring does not wipe that
/// value: its last copy stays in that stack frame until later calls on the
/// same thread overwrite it. No copy of the key is left in freed heap
/// memory by this sealer. Building ring's key per batch costs a 32-byte
/// copy and a cached CPU-feature check (see docs/BENCHMARKS.md, group
/// `seal_vs_bare`).
pub struct RingSealer {
    key: SessionKey,
    counters: Counters,
}

impl RingSealer {
    /// A sealer whose seal and open counters both start at 0.
    pub fn new(key: SessionKey) -> Self {
        Self::starting_at(key, 0, 0)
    }

    pub(crate) fn starting_at(key: SessionKey, next_seal: u64, next_open: u64) -> Self {
        Self {
            key,
            counters: Counters::starting_at(next_seal, next_open),
        }
    }

    /// ring's key for one batch. ring refuses only keys of the wrong length,
    /// and ours is [`KEY_LEN`](crate::KEY_LEN) by type, so this does not fail.
    fn ring_key(&self) -> Result<ring::aead::LessSafeKey, ()> {
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, self.key.expose())
            .map(ring::aead::LessSafeKey::new)
            .map_err(|_| ())
    }

    pub(crate) fn seal_raw(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], ()> {
        let tag = self
            .ring_key()?
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                buf,
            )
            .map_err(|_| ())?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    pub(crate) fn open_raw(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), ()> {
        self.ring_key()?
            .open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(*tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| ())
    }
}

impl fmt::Debug for RingSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingSealer")
            .field("next_seal", &self.counters.next_seal)
            .field("next_open", &self.counters.next_open)
            .finish_non_exhaustive()
    }
}

macro_rules! impl_sealer {
    ($ty:ty, $name:literal) => {
        impl Sealer for $ty {
            fn seal_in_place(
                &mut self,
                seq: u64,
                aad: &[u8],
                buf: &mut [u8],
            ) -> Result<[u8; TAG_LEN], SealError> {
                let nonce = self.counters.take_seal(seq, buf.len())?;
                // Lengths were checked above; the backends fail for nothing else.
                self.seal_raw(&nonce, aad, buf)
                    .map_err(|()| SealError::TooLong { len: buf.len() })
            }

            fn open_in_place(
                &mut self,
                seq: u64,
                aad: &[u8],
                buf: &mut [u8],
                tag: &[u8; TAG_LEN],
            ) -> Result<(), OpenError> {
                let nonce = self.counters.check_open(seq)?;
                self.open_raw(&nonce, aad, buf, tag)
                    .map_err(|()| OpenError::Authentication)?;
                self.counters.opened();
                Ok(())
            }

            fn next_seal_seq(&self) -> u64 {
                self.counters.next_seal
            }

            fn next_open_seq(&self) -> u64 {
                self.counters.next_open
            }

            fn backend(&self) -> &'static str {
                $name
            }
        }
    };
}

impl_sealer!(ChaChaSealer, "chacha20poly1305");
impl_sealer!(RingSealer, "ring");

/// The faster backend on this hardware, as measured by
/// `benches/benches/sealer.rs`: [`RingSealer`] (see docs/BENCHMARKS.md).
///
/// # Examples
///
/// ```
/// let s = qudag_crypto::default_sealer(qudag_crypto::SessionKey::from_bytes([0; 32]));
/// assert_eq!(s.backend(), "ring");
/// ```
pub fn default_sealer(key: SessionKey) -> Box<dyn Sealer> {
    Box::new(RingSealer::new(key))
}

#[cfg(test)]
mod tests;
