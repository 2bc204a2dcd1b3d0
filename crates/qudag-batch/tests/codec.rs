//! The wire codec through the public API: golden bytes, every error, zero
//! copy, and property tests (round trip, streaming, limits, truncation,
//! arbitrary input).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use qudag_batch::{
    batch_frame_len, decode_body, encode_ack_frame, encode_batch_frame, encode_resume_frame,
    CodecLimits, DecodeError, Frame, FrameDecoder, Resume, RESUME_FRAME_LEN, TAG_LEN,
};

fn limits(frame: usize, messages: usize, message: usize) -> CodecLimits {
    let mut l = CodecLimits::default();
    l.max_frame_len(frame)
        .max_messages(messages)
        .max_message_len(message);
    l
}

fn body_of(messages: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::new();
    let spans = encode_batch_frame(0, 0, messages, &mut out);
    out.freeze().slice(spans.body)
}

#[track_caller]
fn check_frame(bytes: &[u8], expect: Result<Option<Frame>, DecodeError>) {
    let mut buf = BytesMut::from(bytes);
    let got = FrameDecoder::new(CodecLimits::default()).decode(&mut buf);
    let failed = got.is_err();
    assert_eq!(got, expect);
    if failed {
        assert_eq!(&buf[..], bytes, "an error consumes nothing");
    }
}

#[track_caller]
fn check_body(bytes: &[u8], expect: Result<Vec<&[u8]>, DecodeError>) {
    let got = decode_body(Bytes::copy_from_slice(bytes), &limits(1000, 3, 10));
    let got = got.map(|v| v.iter().map(|b| b.to_vec()).collect::<Vec<_>>());
    let expect = expect.map(|v| v.iter().map(|b| b.to_vec()).collect::<Vec<_>>());
    assert_eq!(got, expect);
}

#[test]
fn golden_batch_frame() {
    let mut out = BytesMut::from(&b"xx"[..]); // spans index into the whole buffer
    let spans = encode_batch_frame(
        0x0102_0304_0506_0708,
        0x1112_1314_1516_1718,
        &[&b"ab"[..], &b""[..]],
        &mut out,
    );
    #[rustfmt::skip]
    let want: &[u8] = &[
        b'x', b'x',
        0, 0, 0, 47,                  // length of what follows: 1 + 8 + 8 + 14 + 16
        1,                            // kind BATCH
        1, 2, 3, 4, 5, 6, 7, 8,       // seq
        0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // first message number
        0, 0, 0, 2,                   // count
        0, 0, 0, 2, b'a', b'b',       // message 0
        0, 0, 0, 0,                   // message 1 (empty)
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // tag
    ];
    assert_eq!(&out[..], want);
    assert_eq!((spans.aad, spans.body, spans.tag), (2..23, 23..37, 37..53));
    assert_eq!(batch_frame_len(&[&b"ab"[..], &b""[..]]), 51);
}

#[test]
fn golden_ack_frame() {
    let mut out = BytesMut::new();
    encode_ack_frame(u64::MAX - 1, &mut out);
    assert_eq!(
        &out[..],
        &[0, 0, 0, 9, 2, 255, 255, 255, 255, 255, 255, 255, 254]
    );
    check_frame(&out, Ok(Some(Frame::Ack { next: u64::MAX - 1 })));
}

#[test]
fn golden_resume_frame() {
    let mut out = BytesMut::new();
    let resume = Resume {
        incarnation: 0x0102_0304_0506_0708,
        known: 0x1112_1314_1516_1718,
        next: 5,
    };
    encode_resume_frame(&resume, &mut out);
    #[rustfmt::skip]
    let want: &[u8] = &[
        0, 0, 0, 25,                                    // length: 1 + 3 * 8
        3,                                              // kind RESUME
        1, 2, 3, 4, 5, 6, 7, 8,                         // incarnation
        0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // known
        0, 0, 0, 0, 0, 0, 0, 5,                         // next
    ];
    assert_eq!(&out[..], want);
    assert_eq!(out.len(), RESUME_FRAME_LEN);
    check_frame(&out, Ok(Some(Frame::Resume(resume))));
}

#[test]
fn frame_errors() {
    let max = CodecLimits::default().get_max_frame_len();
    check_frame(&[0, 0], Ok(None));
    check_frame(
        &[0, 0, 0, 0],
        Err(DecodeError::FrameTooShort { len: 4, min: 5 }),
    );
    check_frame(&[0, 0, 0, 9], Ok(None));
    check_frame(&[0, 0, 0, 9, 7], Err(DecodeError::UnknownKind(7)));
    check_frame(&[0, 0, 0, 1, 0], Err(DecodeError::UnknownKind(0)));
    check_frame(
        &[0, 0, 0, 36, 1],
        Err(DecodeError::FrameTooShort { len: 40, min: 41 }),
    );
    check_frame(
        &[0, 0, 0, 24, 3],
        Err(DecodeError::FrameTooShort { len: 28, min: 29 }),
    );
    check_frame(
        &[0, 0, 0, 26, 3],
        Err(DecodeError::TrailingBytes { extra: 1 }),
    );
    check_frame(
        &[0, 0, 0, 8, 2],
        Err(DecodeError::FrameTooShort { len: 12, min: 13 }),
    );
    check_frame(
        &[0, 0, 0, 10, 2],
        Err(DecodeError::TrailingBytes { extra: 1 }),
    );
    check_frame(
        &[255, 255, 255, 255],
        Err(DecodeError::FrameTooLarge {
            len: 4 + u32::MAX as u64,
            max,
        }),
    );
    // one byte over the default limit, announced by the first 4 bytes alone
    let over = (max - 4 + 1) as u32;
    check_frame(
        &over.to_be_bytes(),
        Err(DecodeError::FrameTooLarge {
            len: max as u64 + 1,
            max,
        }),
    );
}

#[test]
fn an_oversized_frame_is_refused_before_buffering() {
    let mut buf = BytesMut::with_capacity(8);
    buf.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut decoder = FrameDecoder::new(CodecLimits::default());
    assert!(matches!(
        decoder.decode(&mut buf),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    assert!(
        buf.capacity() < 1024,
        "no room was reserved for the refused frame"
    );
}

#[test]
fn an_acceptable_partial_frame_reserves_the_rest() {
    let mut wire = BytesMut::new();
    encode_batch_frame(9, 0, &[vec![7u8; 5000]], &mut wire);
    let mut buf = BytesMut::from(&wire[..100]);
    let mut decoder = FrameDecoder::new(CodecLimits::default());
    assert_eq!(decoder.needed(&buf), wire.len() - 100);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(buf.capacity() >= wire.len());
    assert_eq!(decoder.needed(&buf[..1]), 3);
    buf.extend_from_slice(&wire[100..]);
    assert_eq!(decoder.needed(&buf), 0);
    let Some(Frame::Batch(batch)) = decoder.decode(&mut buf).unwrap() else {
        panic!()
    };
    assert_eq!(batch.seq(), 9);
    assert_eq!(batch.frame_len(), wire.len());
    assert!(buf.is_empty());
}

#[test]
fn body_errors() {
    check_body(&[0, 0, 0, 0], Ok(vec![]));
    check_body(&[0, 0, 0, 1, 0, 0, 0, 1, 9], Ok(vec![&[9]]));
    check_body(&[], Err(DecodeError::Truncated));
    check_body(&[0, 0, 0], Err(DecodeError::Truncated));
    check_body(&[0, 0, 0, 1], Err(DecodeError::Truncated));
    check_body(&[0, 0, 0, 1, 0, 0, 0, 2, 9], Err(DecodeError::Truncated));
    check_body(
        &[0, 0, 0, 0, 5],
        Err(DecodeError::TrailingBytes { extra: 1 }),
    );
    check_body(
        &[0, 0, 0, 1, 0, 0, 0, 0, 5, 6],
        Err(DecodeError::TrailingBytes { extra: 2 }),
    );
    check_body(
        &[0, 0, 0, 4],
        Err(DecodeError::TooManyMessages { count: 4, max: 3 }),
    );
    check_body(
        &[255, 255, 255, 255],
        Err(DecodeError::TooManyMessages {
            count: u32::MAX,
            max: 3,
        }),
    );
    check_body(
        &[0, 0, 0, 1, 0, 0, 0, 11],
        Err(DecodeError::MessageTooLarge { len: 11, max: 10 }),
    );
    // a count the limits allow but the bytes cannot hold: refused before allocating
    check_body(&[0, 0, 0, 3, 0, 0, 0, 0], Err(DecodeError::Truncated));
    let big = vec![0u8; 1000 - 37 + 1];
    check_body(&big, Err(DecodeError::BodyTooLarge { len: 964, max: 963 }));
}

#[test]
fn error_messages_are_lowercase_and_informative() {
    assert_eq!(
        DecodeError::FrameTooLarge { len: 10, max: 5 }.to_string(),
        "frame of 10 bytes exceeds the limit of 5"
    );
    assert_eq!(
        DecodeError::UnknownKind(4).to_string(),
        "unknown frame kind 4"
    );
    assert_eq!(
        DecodeError::Truncated.to_string(),
        "batch body is truncated"
    );
}

#[test]
fn decoding_is_zero_copy() {
    let mut wire = BytesMut::new();
    let spans = encode_batch_frame(1, 0, &[&b"hello"[..], &b"world"[..]], &mut wire);
    let base = wire.as_ptr() as usize;
    let mut decoder = FrameDecoder::new(CodecLimits::default());
    let Some(Frame::Batch(batch)) = decoder.decode(&mut wire).unwrap() else {
        panic!()
    };
    let body = batch.into_body();
    assert_eq!(
        body.as_ptr() as usize,
        base + spans.body.start,
        "body is not a copy"
    );
    let messages = decode_body(body, &CodecLimits::default()).unwrap();
    assert_eq!(messages[0].as_ptr() as usize, base + spans.body.start + 8);
    assert_eq!(messages[1].as_ptr() as usize, base + spans.body.start + 17);
}

#[test]
fn parts_expose_aad_body_and_tag_for_opening_in_place() {
    let mut wire = BytesMut::new();
    let spans = encode_batch_frame(5, 0, &[&b"abc"[..]], &mut wire);
    wire[spans.tag.clone()].copy_from_slice(&[0xee; TAG_LEN]);
    let aad = wire[spans.aad.clone()].to_vec();
    let body = wire[spans.body.clone()].to_vec();
    let Some(Frame::Batch(mut batch)) = FrameDecoder::new(CodecLimits::default())
        .decode(&mut wire)
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(batch.body(), &body[..]);
    let (a, b, t) = batch.parts_mut();
    assert_eq!((a, &*b, t), (&aad[..], &body[..], &[0xee; TAG_LEN]));
    b[10] = b'z'; // "open" in place
    let messages = decode_body(batch.into_body(), &CodecLimits::default()).unwrap();
    assert_eq!(messages, [&b"abz"[..]]);
}

// ---- property tests ----

fn messages() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..24)
}

fn body_bytes(messages: &[Vec<u8>]) -> Bytes {
    let mut out = BytesMut::new();
    let spans = encode_batch_frame(0, 0, messages, &mut out);
    out.freeze().slice(spans.body)
}

#[derive(Debug, Clone)]
enum Wire {
    Batch(u64, u64, Vec<Vec<u8>>, [u8; TAG_LEN]),
    Ack(u64),
    Resume(Resume),
}

fn wire_frame() -> impl Strategy<Value = Wire> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            messages(),
            any::<[u8; TAG_LEN]>()
        )
            .prop_map(|(s, f, m, t)| Wire::Batch(s, f, m, t)),
        any::<u64>().prop_map(Wire::Ack),
        any::<(u64, u64, u64)>().prop_map(|(incarnation, known, next)| Wire::Resume(Resume {
            incarnation,
            known,
            next
        })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_of_encode_is_identity(
        prefix in prop::collection::vec(any::<u8>(), 0..8),
        seq in any::<u64>(),
        msgs in messages(),
        tag in any::<[u8; TAG_LEN]>(),
    ) {
        let mut out = BytesMut::from(&prefix[..]);
        let spans = encode_batch_frame(seq, 0, &msgs, &mut out);
        prop_assert_eq!(out.len() - prefix.len(), batch_frame_len(&msgs));
        prop_assert_eq!(spans.aad.clone(), prefix.len()..prefix.len() + 21);
        prop_assert_eq!(spans.body.end, spans.tag.start);
        prop_assert_eq!(spans.tag.end, out.len());
        prop_assert_eq!(&out[spans.tag.clone()], &[0u8; TAG_LEN]);
        out[spans.tag.clone()].copy_from_slice(&tag);
        let aad = out[spans.aad.clone()].to_vec();
        let _prefix = out.split_to(prefix.len());

        let limits = CodecLimits::default();
        let mut decoder = FrameDecoder::new(limits.clone());
        let Some(Frame::Batch(mut batch)) = decoder.decode(&mut out).unwrap() else {
            panic!("not a batch")
        };
        prop_assert!(out.is_empty());
        prop_assert_eq!(batch.seq(), seq);
        let (a, _body, t) = batch.parts_mut();
        prop_assert_eq!(a, &aad[..]);
        prop_assert_eq!(t, &tag);
        let decoded = decode_body(batch.into_body(), &limits).unwrap();
        prop_assert_eq!(decoded, msgs);
    }

    #[test]
    fn a_stream_decodes_the_same_whatever_the_chunking(
        frames in prop::collection::vec(wire_frame(), 0..6),
        cuts in prop::collection::vec(1usize..50, 0..40),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            match f {
                Wire::Batch(seq, first, m, tag) => {
                    let spans = encode_batch_frame(*seq, *first, m, &mut wire);
                    wire[spans.tag].copy_from_slice(tag);
                }
                Wire::Ack(n) => encode_ack_frame(*n, &mut wire),
                Wire::Resume(r) => encode_resume_frame(r, &mut wire),
            }
        }
        let limits = CodecLimits::default();
        let mut decoder = FrameDecoder::new(limits.clone());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &wire[..];
        let mut cuts = cuts.into_iter();
        while !rest.is_empty() {
            let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                got.push(frame);
            }
            prop_assert_eq!(decoder.needed(&buf) == 0, false, "progress was possible");
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got.len(), frames.len());
        for (g, f) in got.into_iter().zip(&frames) {
            match (g, f) {
                (Frame::Batch(mut b), Wire::Batch(seq, first, m, tag)) => {
                    prop_assert_eq!(b.seq(), *seq);
                    prop_assert_eq!(b.first(), *first);
                    prop_assert_eq!(b.parts_mut().2, tag);
                    prop_assert_eq!(&decode_body(b.into_body(), &limits).unwrap(), m);
                }
                (Frame::Ack { next }, Wire::Ack(n)) => prop_assert_eq!(next, *n),
                (Frame::Resume(got), Wire::Resume(r)) => prop_assert_eq!(got, *r),
                (g, f) => prop_assert!(false, "got {:?} for {:?}", g, f),
            }
        }
    }

    #[test]
    fn limits_are_enforced_exactly(
        msgs in messages(),
        max_frame in 37usize..2000,
        max_messages in 0usize..30,
        max_message_len in 0usize..70,
    ) {
        let l = limits(max_frame, max_messages, max_message_len);
        let mut wire = BytesMut::new();
        encode_batch_frame(0, 0, &msgs, &mut wire);
        let frame_len = wire.len();
        let body = body_bytes(&msgs);

        let frame = FrameDecoder::new(l.clone()).decode(&mut wire);
        if frame_len <= max_frame {
            prop_assert!(matches!(frame, Ok(Some(Frame::Batch(_)))));
        } else {
            prop_assert_eq!(frame, Err(DecodeError::FrameTooLarge { len: frame_len as u64, max: max_frame }));
        }

        let longest = msgs.iter().map(Vec::len).max().unwrap_or(0);
        let result = decode_body(body.clone(), &l);
        if body.len() > max_frame - 37 {
            prop_assert_eq!(result, Err(DecodeError::BodyTooLarge { len: body.len(), max: max_frame - 37 }));
        } else if msgs.len() > max_messages {
            prop_assert_eq!(result, Err(DecodeError::TooManyMessages { count: msgs.len() as u32, max: max_messages }));
        } else if longest > max_message_len {
            let first = msgs.iter().find(|m| m.len() > max_message_len).unwrap();
            prop_assert_eq!(result, Err(DecodeError::MessageTooLarge { len: first.len() as u32, max: max_message_len }));
        } else {
            prop_assert_eq!(result.unwrap(), msgs);
        }
    }

    #[test]
    fn truncated_or_padded_bodies_are_refused(
        msgs in messages(),
        cut in any::<prop::sample::Index>(),
        garbage in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let body = body_bytes(&msgs);
        let limits = CodecLimits::default();
        let short = body.slice(..cut.index(body.len()));
        prop_assert_eq!(decode_body(short, &limits), Err(DecodeError::Truncated));
        let mut long = BytesMut::from(&body[..]);
        long.extend_from_slice(&garbage);
        prop_assert_eq!(
            decode_body(long.freeze(), &limits),
            Err(DecodeError::TrailingBytes { extra: garbage.len() })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_accepted_bodies_are_canonical(
        input in prop::collection::vec(any::<u8>(), 0..300),
        small in any::<bool>(),
    ) {
        let l = if small { limits(200, 8, 40) } else { CodecLimits::default() };
        // frames: every Ok consumes exactly one frame, every Err consumes nothing
        let mut buf = BytesMut::from(&input[..]);
        let mut decoder = FrameDecoder::new(l.clone());
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let consumed = before - buf.len();
                    match frame {
                        Frame::Ack { .. } => prop_assert_eq!(consumed, 13),
                        Frame::Resume(_) => prop_assert_eq!(consumed, RESUME_FRAME_LEN),
                        Frame::Batch(b) => {
                            prop_assert_eq!(consumed, b.frame_len());
                            prop_assert!(consumed <= l.get_max_frame_len());
                            let _ = decode_body(b.into_body(), &l);
                        }
                    }
                }
                Ok(None) => { prop_assert!(decoder.needed(&buf) > 0); break }
                Err(_) => { prop_assert_eq!(buf.len(), before); break }
            }
        }
        // bodies: anything accepted re-encodes to the same bytes
        if let Ok(msgs) = decode_body(Bytes::from(input.clone()), &l) {
            prop_assert!(msgs.len() <= l.get_max_messages());
            prop_assert_eq!(body_of(&msgs.iter().map(|m| &m[..]).collect::<Vec<_>>()), &input[..]);
        }
    }
}
