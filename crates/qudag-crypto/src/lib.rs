//! qudag-crypto: who a peer is, and batch sealing.

mod key;
mod peer_id;
mod sealer;

pub use key::{
    KeyError, Role, SessionKey, KEY_LEN, LABEL_DIALER_TO_LISTENER, LABEL_LISTENER_TO_DIALER,
};
pub use peer_id::{ParsePeerIdError, PeerId};
pub use sealer::{
    default_sealer, nonce_for, ChaChaSealer, OpenError, RingSealer, SealError, Sealer, NONCE_LEN,
    TAG_LEN,
};
