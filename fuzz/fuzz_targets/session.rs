//! The peer session's handling of what a peer sends: a stream of frames
//! (RESUME, ACK, BATCH headers) from an arbitrary peer drives an `Outbox` and
//! an `Inbox`. Nothing may panic; a refused frame is a typed error.
#![no_main]

use std::time::Instant;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qudag_batch::{CodecLimits, Frame, FrameDecoder, Inbox, InboxPlan, Outbox};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut out: Outbox<u8> = Outbox::new(1);
    let mut inbox = Inbox::new();
    let mut decoder = FrameDecoder::new(CodecLimits::default());
    let mut buf = BytesMut::from(data);
    let mut sent = 0u8;
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        // Keep something in the window so acknowledgements have work.
        if out.may_send_new() {
            out.send(vec![sent, sent.wrapping_add(1)], now);
            sent = sent.wrapping_add(2);
        }
        match frame {
            Frame::Resume(r) => {
                inbox.on_resume(r.incarnation);
                if out.on_resume(r, |_| {}).is_ok() {
                    while out.poll_resend(now).is_some() {}
                }
            }
            Frame::Ack { next } => {
                let before = out.acked();
                if out.ack(next, |_| {}).is_ok() {
                    assert!(out.acked() >= before);
                }
            }
            Frame::Batch(b) => {
                let count = usize::from(b.seq() as u8);
                let inc = inbox.incarnation();
                if let InboxPlan::Deliver { skip } = inbox.plan(inc, b.first(), count) {
                    assert!(skip <= count);
                    inbox.commit(inc, b.first(), count);
                }
            }
        }
        if out.window_batches() > 64 {
            out.take_all();
        }
    }
});
