//! The sealed test vector of docs/PROTOCOL.md §7: a fixed key, sequence
//! number, first message number and body, and the exact frame bytes with
//! the tag, so an implementation can check its sealing without a live peer.
//! Both sealer backends must produce it.

use bytes::BytesMut;
use qudag_batch::encode_batch_frame;
use qudag_crypto::{ChaChaSealer, RingSealer, Sealer, SessionKey};

/// Key bytes 0x00, 0x01, …, 0x1f.
fn key() -> SessionKey {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    SessionKey::from_bytes(k)
}

fn seal(mut sealer: impl Sealer) -> String {
    // A sealer accepts only the next sequence number: seal seq 0 first.
    let mut scratch = BytesMut::new();
    let spans = encode_batch_frame(0, 0, &[&b"x"[..]], &mut scratch);
    let (head, rest) = scratch.split_at_mut(spans.body.start);
    let (body, _) = rest.split_at_mut(spans.body.len());
    sealer
        .seal_in_place(0, &head[spans.aad.clone()], body)
        .expect("seal 0");

    let mut out = BytesMut::new();
    let spans = encode_batch_frame(1, 7, &[&b"ab"[..], &b""[..]], &mut out);
    let (head, rest) = out.split_at_mut(spans.body.start);
    let (body, tag) = rest.split_at_mut(spans.body.len());
    let t = sealer
        .seal_in_place(1, &head[spans.aad.clone()], body)
        .expect("seal 1");
    tag.copy_from_slice(&t);
    out.iter().map(|b| format!("{b:02x}")).collect()
}

const VECTOR: &str = concat!(
    "0000002f01",                       // length 47, kind BATCH
    "0000000000000001",                 // seq 1
    "0000000000000007",                 // first message number 7
    "695c7cdb310ab8784c137e2fb314",     // sealed body (14 bytes)
    "e7ebd631c894e8bfa59cb3c31d7a901e", // tag
);

#[test]
fn sealed_batch_frame_matches_the_protocol_vector() {
    assert_eq!(seal(RingSealer::new(key())), VECTOR);
    assert_eq!(seal(ChaChaSealer::new(key())), VECTOR);
}
