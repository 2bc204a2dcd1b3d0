//! qudag-crypto: who a peer is, and batch sealing.
//!
//! This crate holds the cryptography of qudag-net that is not TLS:
//!
//! - **Identity.** A node has an Ed25519 key pair ([`Identity`]); its
//!   [`PeerId`] is the SHA-256 of the public key, printed as 64 lowercase hex
//!   digits and parsed back strictly. Identities are saved to and loaded from
//!   a small text key file (format below) with owner-only permissions,
//!   and loaded only from a regular file the process's user owns.
//! - **Batch sealing.** The [`Sealer`] trait seals one batch in place under
//!   ChaCha20-Poly1305 with nonce = the batch's 64-bit sequence number, and
//!   opens only the next expected sequence number, so replayed, reordered,
//!   dropped or forged batches fail with a typed error ([`OpenError`]).
//!   Two byte-identical backends: [`RingSealer`] (ring, the default, faster
//!   here) and [`ChaChaSealer`] (RustCrypto `chacha20poly1305`); use
//!   [`default_sealer`].
//! - **Keys.** A [`SessionKey`] is one direction's 256-bit key, built from
//!   the TLS exporter of the authenticated session with the labels
//!   [`LABEL_DIALER_TO_LISTENER`] / [`LABEL_LISTENER_TO_DIALER`] (the
//!   two PeerIds as context, 32 bytes), held in a heap `zeroize` buffer and
//!   wiped on drop.
//! - **What is wiped.** The copies of secrets this crate owns are wiped on
//!   drop: the identity's PKCS#8 document, [`SessionKey`], the key file
//!   buffers, and [`ChaChaSealer`]'s cipher state. ring's own copies are
//!   not: the Ed25519 key pair inside [`Identity`], and [`RingSealer`]'s
//!   per-batch key (on the stack). docs/SECURITY.md §5 lists every copy
//!   and what an operator can do about the rest.
//!
//! It does **not** do network I/O, TLS, certificates or key exchange (the
//! transport crate builds the self-signed certificate from
//! [`Identity::pkcs8_der`] and exports the session keys), and it does not
//! read the clock: it is sans-IO apart from [`Identity::save`] and
//! [`Identity::load`]. It never prints a secret: `SessionKey`, `Identity`
//! and the sealers have redacting `Debug` implementations and no `Clone`.
//! Comparisons in authentication paths ([`PeerId::ct_eq`],
//! [`SessionKey::ct_eq`]) are constant-time (`subtle`).
//!
//! # Key file format
//!
//! ```text
//! qudag-identity-key v1 ed25519-pkcs8-hex
//! <the PKCS#8 v2 document in lowercase hex>
//! ```
//!
//! The header line [`KEY_FILE_HEADER`], then the Ed25519 PKCS#8 v2 DER
//! document (RFC 5958) as lowercase hex on one line, then an optional final
//! newline; at most [`MAX_KEY_FILE_LEN`] bytes. [`Identity::save`] creates
//! the file with mode `0600`, atomically, and never overwrites;
//! [`Identity::load`] refuses anything but a regular file owned by the
//! process's effective uid that group and others cannot access, without
//! blocking on a FIFO (see its docs for the symlink policy). The parser
//! alone is [`Identity::from_file_bytes`].
//!
//! # Examples
//!
//! ```
//! use qudag_crypto::{default_sealer, Identity, OpenError, Role, SessionKey};
//!
//! // Who we are.
//! let me = Identity::generate()?;
//! println!("peer id {}", me.peer_id());
//!
//! // Both ends export the same 32 bytes for the dialer->listener direction
//! // (here: a fixed stand-in for the TLS exporter output).
//! let exported = [0x11u8; 32];
//! assert_eq!(Role::Dialer.seal_label(), Role::Listener.open_label());
//! let mut dialer_tx = default_sealer(SessionKey::from_bytes(exported));
//! let mut listener_rx = default_sealer(SessionKey::from_bytes(exported));
//!
//! let mut batch = b"two small messages".to_vec();
//! let seq = dialer_tx.next_seal_seq();
//! let tag = dialer_tx.seal_in_place(seq, b"batch header", &mut batch)?;
//!
//! // A forged batch fails and leaves the receiver where it was...
//! let mut forged = batch.clone();
//! forged[0] ^= 1;
//! assert_eq!(
//!     listener_rx.open_in_place(seq, b"batch header", &mut forged, &tag),
//!     Err(OpenError::Authentication)
//! );
//! // ...and the genuine one opens.
//! listener_rx.open_in_place(seq, b"batch header", &mut batch, &tag)?;
//! assert_eq!(batch, b"two small messages");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![doc(test(attr(deny(warnings))))]

/// The crate's README, compiled as a doctest so it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod identity;
mod key;
mod peer_id;
mod sealer;

pub use identity::{
    verify_signature, FileKind, Identity, IdentityError, KEY_FILE_HEADER, MAX_KEY_FILE_LEN,
    PUBLIC_KEY_LEN, SIGNATURE_LEN,
};
pub use key::{
    KeyError, Role, SessionKey, KEY_LEN, LABEL_DIALER_TO_LISTENER, LABEL_LISTENER_TO_DIALER,
};
pub use peer_id::{ParsePeerIdError, PeerId};
pub use sealer::{
    default_sealer, nonce_for, ChaChaSealer, OpenError, RingSealer, SealError, Sealer, NONCE_LEN,
    TAG_LEN,
};
