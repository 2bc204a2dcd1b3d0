//! Fuzz target: arbitrary bytes through `FrameDecoder::decode` (in a loop, as
//! a receive buffer) and `decode_body` must never panic; an error consumes
//! nothing, and a body that decodes re-encodes to the same bytes.
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use qudag_batch::{decode_body, encode_batch_frame, CodecLimits, Frame, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    // small limits so that the fuzzer reaches them; default ones too
    let mut small = CodecLimits::default();
    small
        .max_frame_len(512)
        .max_messages(16)
        .max_message_len(64);
    for limits in [small, CodecLimits::default()] {
        let mut decoder = FrameDecoder::new(limits.clone());
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(Frame::Batch(batch))) => {
                    assert!(before - buf.len() <= limits.get_max_frame_len());
                    let _ = decode_body(batch.into_body(), &limits);
                }
                Ok(Some(Frame::Ack { .. })) => assert_eq!(before - buf.len(), 13),
                Ok(Some(Frame::Resume(_))) => assert_eq!(before - buf.len(), 29),
                Ok(None) => break,
                Err(_) => {
                    assert_eq!(buf.len(), before);
                    break;
                }
            }
        }
        if let Ok(messages) = decode_body(Bytes::copy_from_slice(data), &limits) {
            let mut out = BytesMut::new();
            let spans = encode_batch_frame(0, 0, &messages, &mut out);
            assert_eq!(&out[spans.body], data);
        }
    }
});
