//! Sealer tests: RFC 8439 vector, differential ring vs RustCrypto, counters,
//! tamper detection, replay and reorder.

use super::*;
use proptest::prelude::*;

fn both(key: [u8; 32]) -> [Box<dyn Sealer>; 2] {
    [
        Box::new(ChaChaSealer::new(SessionKey::from_bytes(key))),
        Box::new(RingSealer::new(SessionKey::from_bytes(key))),
    ]
}

fn both_at(key: [u8; 32], seal: u64, open: u64) -> [Box<dyn Sealer>; 2] {
    [
        Box::new(ChaChaSealer::starting_at(
            SessionKey::from_bytes(key),
            seal,
            open,
        )),
        Box::new(RingSealer::starting_at(
            SessionKey::from_bytes(key),
            seal,
            open,
        )),
    ]
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// RFC 8439 section 2.8.2.
#[test]
fn rfc8439_vector_both_backends() {
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = 0x80 + i as u8;
    }
    let nonce: [u8; 12] = hex("07000000 40414243 44454647").try_into().unwrap();
    let aad = hex("50515253 c0c1c2c3 c4c5c6c7");
    let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let ciphertext = hex(
        "d31a8d34648e60db7b86afbc53ef7ec2 a4aded51296e08fea9e2b5a736ee62d6
         3dbea45e8ca9671282fafb69da92728b 1a71de0a9e060b2905d6a5b67ecd3b36
         92ddbd7f2d778b8c9803aee328091b58 fab324e4fad675945585808b4831d7bc
         3ff4def08e4b7a9de576d26586cec64b 6116",
    );
    let tag: [u8; 16] = hex("1ae10b594f09e26a7e902ecbd0600691").try_into().unwrap();

    let c = ChaChaSealer::new(SessionKey::from_bytes(key));
    let r = RingSealer::new(SessionKey::from_bytes(key));

    let mut buf = plaintext.to_vec();
    assert_eq!(c.seal_raw(&nonce, &aad, &mut buf), Ok(tag), "chacha tag");
    assert_eq!(buf, ciphertext, "chacha ciphertext");
    assert_eq!(r.open_raw(&nonce, &aad, &mut buf, &tag), Ok(()));
    assert_eq!(&buf[..], &plaintext[..], "ring opens chacha");

    assert_eq!(r.seal_raw(&nonce, &aad, &mut buf), Ok(tag), "ring tag");
    assert_eq!(buf, ciphertext, "ring ciphertext");
    assert_eq!(c.open_raw(&nonce, &aad, &mut buf, &tag), Ok(()));
    assert_eq!(&buf[..], &plaintext[..], "chacha opens ring");
}

#[test]
fn nonce_layout() {
    assert_eq!(nonce_for(0), [0; 12]);
    assert_eq!(
        nonce_for(0x0102_0304_0506_0708),
        [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(nonce_for(u64::MAX)[..4], [0, 0, 0, 0]);
}

#[test]
fn backends_are_named() {
    let [c, r] = both([0; 32]);
    assert_eq!(c.backend(), "chacha20poly1305");
    assert_eq!(r.backend(), "ring");
    assert_eq!(
        default_sealer(SessionKey::from_bytes([0; 32])).backend(),
        "ring"
    );
}

#[test]
fn debug_shows_counters_not_key() {
    for s in both([0x5a; 32]) {
        let d = format!("{s:?}");
        assert!(d.contains("next_seal: 0"), "{d}");
        assert!(!d.contains("90") && !d.contains("5a"), "{d}");
    }
}

#[test]
fn seal_exhausts_without_wrapping() {
    for mut s in both_at([3; 32], u64::MAX - 1, 0) {
        let mut buf = [0u8; 8];
        s.seal_in_place(u64::MAX - 1, b"", &mut buf).unwrap();
        assert_eq!(s.next_seal_seq(), u64::MAX);
        let mut buf2 = [0u8; 8];
        assert_eq!(
            s.seal_in_place(u64::MAX, b"", &mut buf2),
            Err(SealError::Exhausted)
        );
        assert_eq!(
            s.seal_in_place(0, b"", &mut buf2),
            Err(SealError::Exhausted)
        );
        assert_eq!(buf2, [0u8; 8], "refused seal must not touch the buffer");
        assert_eq!(s.next_seal_seq(), u64::MAX);
    }
}

#[test]
fn open_exhausts_without_wrapping() {
    let key = [4; 32];
    let [mut tx, _] = both_at(key, u64::MAX - 1, 0);
    let mut buf = *b"last";
    let tag = tx.seal_in_place(u64::MAX - 1, b"a", &mut buf).unwrap();
    for mut rx in both_at(key, 0, u64::MAX - 1) {
        let mut b = buf;
        rx.open_in_place(u64::MAX - 1, b"a", &mut b, &tag).unwrap();
        assert_eq!(&b, b"last");
        assert_eq!(rx.next_open_seq(), u64::MAX);
        let mut b = buf;
        assert_eq!(
            rx.open_in_place(u64::MAX, b"a", &mut b, &tag),
            Err(OpenError::Exhausted)
        );
        assert_eq!(
            rx.open_in_place(0, b"a", &mut b, &tag),
            Err(OpenError::Sequence {
                expected: u64::MAX,
                got: 0
            })
        );
        assert_eq!(rx.next_open_seq(), u64::MAX);
    }
}

#[test]
fn error_messages_are_lowercase_and_detail_free() {
    assert_eq!(
        OpenError::Authentication.to_string(),
        "batch authentication failed"
    );
    for msg in [
        OpenError::Sequence {
            expected: 1,
            got: 0,
        }
        .to_string(),
        OpenError::Exhausted.to_string(),
        SealError::Sequence {
            expected: 1,
            got: 0,
        }
        .to_string(),
        SealError::Exhausted.to_string(),
        SealError::TooLong { len: 3 }.to_string(),
    ] {
        assert!(msg.chars().next().unwrap().is_lowercase(), "{msg}");
        assert!(!msg.ends_with('.'), "{msg}");
    }
}

/// Which part of a sealed batch a test corrupts.
#[derive(Debug, Clone, Copy)]
enum Part {
    Ciphertext,
    Tag,
    Aad,
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![Just(Part::Ciphertext), Just(Part::Tag), Just(Part::Aad)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Both backends give byte-identical ciphertext and tag for any key,
    /// nonce, AAD and plaintext, and each opens the other's output.
    #[test]
    fn backends_are_byte_identical(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 12]>(),
        aad in proptest::collection::vec(any::<u8>(), 0..96),
        plaintext in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let c = ChaChaSealer::new(SessionKey::from_bytes(key));
        let r = RingSealer::new(SessionKey::from_bytes(key));
        let mut bc = plaintext.clone();
        let mut br = plaintext.clone();
        let tc = c.seal_raw(&nonce, &aad, &mut bc).unwrap();
        let tr = r.seal_raw(&nonce, &aad, &mut br).unwrap();
        prop_assert_eq!(&bc, &br);
        prop_assert_eq!(tc, tr);
        r.open_raw(&nonce, &aad, &mut bc, &tc).unwrap();
        c.open_raw(&nonce, &aad, &mut br, &tr).unwrap();
        prop_assert_eq!(&bc, &plaintext);
        prop_assert_eq!(&br, &plaintext);
    }

    /// Seal then open round-trips any batch sequence, across backends in
    /// both directions.
    #[test]
    fn round_trip_any_payload_and_aad(
        key in any::<[u8; 32]>(),
        batches in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..64),
             proptest::collection::vec(any::<u8>(), 0..1500)),
            1..8),
        tx_ring in any::<bool>(),
        rx_ring in any::<bool>(),
    ) {
        let [c1, r1] = both(key);
        let [c2, r2] = both(key);
        let mut tx = if tx_ring { r1 } else { c1 };
        let mut rx = if rx_ring { r2 } else { c2 };
        for (i, (aad, payload)) in batches.iter().enumerate() {
            let seq = i as u64;
            prop_assert_eq!(tx.next_seal_seq(), seq);
            let mut buf = payload.clone();
            let tag = tx.seal_in_place(seq, aad, &mut buf).unwrap();
            if payload.len() >= 16 {
                prop_assert_ne!(&buf, payload);
            }
            prop_assert_eq!(rx.next_open_seq(), seq);
            rx.open_in_place(seq, aad, &mut buf, &tag).unwrap();
            prop_assert_eq!(&buf, payload);
        }
        prop_assert_eq!(tx.next_seal_seq(), batches.len() as u64);
        prop_assert_eq!(rx.next_open_seq(), batches.len() as u64);
    }

    /// Any single flipped bit in ciphertext, tag or AAD fails with the
    /// detail-free error, leaves the counter alone, and the untouched batch
    /// still opens afterwards.
    #[test]
    fn flipped_bit_fails_to_open(
        key in any::<[u8; 32]>(),
        aad in proptest::collection::vec(any::<u8>(), 1..48),
        payload in proptest::collection::vec(any::<u8>(), 1..512),
        part in part(),
        index in any::<usize>(),
        bit in 0u8..8,
        rx_ring in any::<bool>(),
    ) {
        let [mut tx, _] = both(key);
        let mut sealed = payload.clone();
        let tag = tx.seal_in_place(0, &aad, &mut sealed).unwrap();
        let [c, r] = both(key);
        let mut rx = if rx_ring { r } else { c };

        let (mut buf, mut bad_aad, mut bad_tag) = (sealed.clone(), aad.clone(), tag);
        let target: &mut [u8] = match part {
            Part::Ciphertext => &mut buf,
            Part::Tag => &mut bad_tag,
            Part::Aad => &mut bad_aad,
        };
        let i = index % target.len();
        target[i] ^= 1 << bit;
        prop_assert_eq!(
            rx.open_in_place(0, &bad_aad, &mut buf, &bad_tag),
            Err(OpenError::Authentication)
        );
        prop_assert_eq!(rx.next_open_seq(), 0);

        let mut buf = sealed.clone();
        rx.open_in_place(0, &aad, &mut buf, &tag).unwrap();
        prop_assert_eq!(&buf, &payload);
    }

    /// A flipped bit in the sequence number fails: as a sequence error at the
    /// receiver's counter, and as an authentication failure for a receiver
    /// whose counter happens to be at the flipped value.
    #[test]
    fn flipped_sequence_bit_fails(
        key in any::<[u8; 32]>(),
        seq in 0u64..u64::MAX - 1,
        bit in 0u32..64,
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        rx_ring in any::<bool>(),
    ) {
        let flipped = seq ^ (1u64 << bit);
        prop_assume!(flipped != u64::MAX);
        let [mut tx, _] = both_at(key, seq, 0);
        let mut sealed = payload.clone();
        let tag = tx.seal_in_place(seq, b"aad", &mut sealed).unwrap();

        let [c, r] = both_at(key, 0, seq);
        let mut rx = if rx_ring { r } else { c };
        let mut buf = sealed.clone();
        prop_assert_eq!(
            rx.open_in_place(flipped, b"aad", &mut buf, &tag),
            Err(OpenError::Sequence { expected: seq, got: flipped })
        );

        let [c, r] = both_at(key, 0, flipped);
        let mut rx = if rx_ring { r } else { c };
        let mut buf = sealed.clone();
        prop_assert_eq!(
            rx.open_in_place(flipped, b"aad", &mut buf, &tag),
            Err(OpenError::Authentication)
        );
        prop_assert_eq!(rx.next_open_seq(), flipped);
    }

    /// Replays and reorders fail with a sequence error; in-order delivery of
    /// the rest still works after the refusal.
    #[test]
    fn replay_and_reorder_fail(
        key in any::<[u8; 32]>(),
        n in 2usize..10,
        order in proptest::collection::vec(any::<prop::sample::Index>(), 1..20),
        rx_ring in any::<bool>(),
    ) {
        let [mut tx, _] = both(key);
        let sealed: Vec<(Vec<u8>, [u8; TAG_LEN])> = (0..n)
            .map(|i| {
                let mut b = vec![i as u8; 10 + i];
                let t = tx.seal_in_place(i as u64, b"", &mut b).unwrap();
                (b, t)
            })
            .collect();
        let [c, r] = both(key);
        let mut rx = if rx_ring { r } else { c };
        for idx in order {
            let i = idx.index(n);
            let expected = rx.next_open_seq();
            let (mut buf, tag) = sealed[i].clone();
            let res = rx.open_in_place(i as u64, b"", &mut buf, &tag);
            if i as u64 == expected {
                prop_assert_eq!(res, Ok(()));
                prop_assert_eq!(buf, vec![i as u8; 10 + i]);
                prop_assert_eq!(rx.next_open_seq(), expected + 1);
            } else {
                prop_assert_eq!(res, Err(OpenError::Sequence { expected, got: i as u64 }));
                prop_assert_eq!(rx.next_open_seq(), expected);
            }
        }
    }

    /// A batch sealed as seq `a` presented as seq `b` (same tag) never opens,
    /// even at a receiver expecting `b`: the nonce binds the position.
    #[test]
    fn batch_moved_to_another_position_fails(
        key in any::<[u8; 32]>(),
        a in 0u64..1000,
        b in 0u64..1000,
        rx_ring in any::<bool>(),
    ) {
        prop_assume!(a != b);
        let [mut tx, _] = both_at(key, a, 0);
        let mut buf = b"moved batch".to_vec();
        let tag = tx.seal_in_place(a, b"", &mut buf).unwrap();
        let [c, r] = both_at(key, 0, b);
        let mut rx = if rx_ring { r } else { c };
        prop_assert_eq!(rx.open_in_place(b, b"", &mut buf, &tag), Err(OpenError::Authentication));
    }

    /// Sealing with any sequence number but the next is refused, leaves the
    /// buffer and counter unchanged, and the correct seal afterwards gives
    /// the same output a fresh sealer gives (no nonce was burned or reused).
    #[test]
    fn seal_refuses_reused_or_skipped_seq(
        key in any::<[u8; 32]>(),
        already in 0u64..5,
        wrong in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        prop_assume!(wrong != already);
        for mut s in both(key) {
            for i in 0..already {
                s.seal_in_place(i, b"", &mut [0u8; 4]).unwrap();
            }
            let mut buf = payload.clone();
            prop_assert_eq!(
                s.seal_in_place(wrong, b"x", &mut buf),
                Err(SealError::Sequence { expected: already, got: wrong })
            );
            prop_assert_eq!(&buf, &payload);
            prop_assert_eq!(s.next_seal_seq(), already);
            let tag = s.seal_in_place(already, b"x", &mut buf).unwrap();

            let [mut fresh, _] = both_at(key, already, 0);
            let mut buf2 = payload.clone();
            let tag2 = fresh.seal_in_place(already, b"x", &mut buf2).unwrap();
            prop_assert_eq!(&buf, &buf2);
            prop_assert_eq!(tag, tag2);
        }
    }

    /// Arbitrary bytes never panic either backend, and both agree.
    #[test]
    fn open_arbitrary_bytes_agrees(
        key in any::<[u8; 32]>(),
        seq in any::<u64>(),
        expected in prop_oneof![Just(0u64), any::<u64>()],
        aad in proptest::collection::vec(any::<u8>(), 0..32),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        tag in any::<[u8; 16]>(),
    ) {
        let [mut c, mut r] = both_at(key, 0, expected);
        let (mut bc, mut br) = (body.clone(), body.clone());
        let rc = c.open_in_place(seq, &aad, &mut bc, &tag);
        let rr = r.open_in_place(seq, &aad, &mut br, &tag);
        prop_assert_eq!(&rc, &rr);
        prop_assert!(rc.is_err());
        prop_assert_eq!(c.next_open_seq(), expected);
        prop_assert_eq!(r.next_open_seq(), expected);
    }
}

/// Neither sealer holds the key inline: moving one (into its `Box<dyn
/// Sealer>`) copies pointers and counters, never key bytes.
#[test]
fn sealers_hold_the_key_behind_a_pointer() {
    let words = |n: usize| n * std::mem::size_of::<usize>();
    // One pointer and two u64 counters.
    assert!(std::mem::size_of::<RingSealer>() <= words(1) + 16);
    assert!(std::mem::size_of::<ChaChaSealer>() <= words(1) + 16);
}
