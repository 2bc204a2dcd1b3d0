//! Fuzz target: both `Sealer` backends' `open_in_place` on arbitrary bytes
//! must never panic and must agree (same result; same plaintext on success).
//!
//! Input layout: `flags (1) | seq (8) | aad_len (1) | aad | tag (16) | body`.
//! Flag bit 0 set: use the receivers' expected seq (0) instead of `seq`, so
//! the AEAD check is reached. Flag bit 1 set: first seal `body` properly
//! (so a valid batch is opened), then flip the bit `seq % (8 * len)` of
//! the sealed bytes when flag bit 2 is set.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qudag_crypto::{ChaChaSealer, RingSealer, Sealer, SessionKey, TAG_LEN};

const KEY: [u8; 32] = [0x24; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((seq, rest)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let raw_seq = u64::from_be_bytes(*seq);
    let Some((&aad_len, rest)) = rest.split_first() else {
        return;
    };
    let aad_len = usize::from(aad_len).min(rest.len());
    let (aad, rest) = rest.split_at(aad_len);
    let Some((tag, body)) = rest.split_first_chunk::<TAG_LEN>() else {
        return;
    };
    let mut tag = *tag;
    let mut body = body.to_vec();
    let plaintext = body.clone();
    let seq = if flags & 1 != 0 { 0 } else { raw_seq };

    let sealed_properly = flags & 2 != 0;
    let mut tampered = false;
    if sealed_properly {
        let mut tx = RingSealer::new(SessionKey::from_bytes(KEY));
        tag = tx.seal_in_place(0, aad, &mut body).expect("seq 0 seals");
        if flags & 4 != 0 {
            let total_bits = 8 * (body.len() + TAG_LEN);
            let bit = (raw_seq % total_bits as u64) as usize;
            if bit / 8 < body.len() {
                body[bit / 8] ^= 1 << (bit % 8);
            } else {
                tag[bit / 8 - body.len()] ^= 1 << (bit % 8);
            }
            tampered = true;
        }
    }

    let mut chacha = ChaChaSealer::new(SessionKey::from_bytes(KEY));
    let mut ring = RingSealer::new(SessionKey::from_bytes(KEY));
    let (mut bc, mut br) = (body.clone(), body);
    let rc = chacha.open_in_place(seq, aad, &mut bc, &tag);
    let rr = ring.open_in_place(seq, aad, &mut br, &tag);
    assert_eq!(rc, rr, "backends disagree");
    if rc.is_ok() {
        assert_eq!(bc, br, "backends opened to different plaintexts");
        assert_eq!(chacha.next_open_seq(), 1);
        assert_eq!(ring.next_open_seq(), 1);
    } else {
        assert_eq!(chacha.next_open_seq(), 0);
        assert_eq!(ring.next_open_seq(), 0);
    }
    if sealed_properly && seq == 0 {
        assert_eq!(rc.is_ok(), !tampered, "valid batch refused or tampered batch accepted");
        if !tampered {
            assert_eq!(bc, plaintext);
        }
    }
});
