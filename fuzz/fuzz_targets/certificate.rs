//! Fuzz target: the identity-certificate check a peer's certificate goes
//! through must never panic, and whatever it accepts names the PeerId of the
//! key it carries, within the size limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qudag_transport::quic::{peer_id_from_certificate, MAX_CERT_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(peer) = peer_id_from_certificate(data) {
        assert!(data.len() <= MAX_CERT_LEN);
        // Deterministic: the same bytes name the same peer.
        assert_eq!(peer_id_from_certificate(data), Ok(peer));
    }
});
