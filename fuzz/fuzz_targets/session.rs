//! The peer session's handling of what a peer sends on one connection: a
//! stream of frames (RESUME, ACK, BATCH headers) from an arbitrary peer goes
//! through the connection's order rules (`ConnectionRules`) and, where they
//! pass, drives an `Outbox` and an `Inbox`, as the reader and the driver do.
//! Nothing may panic; a refused frame is a typed error and ends the
//! connection (as a receiver would close it); ACKs that pass always advance.
#![no_main]

use std::time::Instant;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qudag_batch::{CodecLimits, ConnectionRules, Frame, FrameDecoder, Inbox, InboxPlan, Outbox};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut out: Outbox<u8> = Outbox::new(1);
    let mut inbox = Inbox::new();
    let mut decoder = FrameDecoder::new(CodecLimits::default());
    let mut rules = ConnectionRules::new();
    let mut buf = BytesMut::from(data);
    let mut sent = 0u8;
    out.connected();
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        // Keep something in the window so acknowledgements have work.
        if out.may_send_new() {
            out.send(vec![sent, sent.wrapping_add(1)], now);
            sent = sent.wrapping_add(2);
        }
        let passed = match &frame {
            Frame::Resume(r) => rules.on_resume(r).is_ok(),
            Frame::Ack { next } => {
                let before = rules.last_ack();
                let ok = rules.on_ack(*next).is_ok();
                assert!(!ok || rules.last_ack() > before, "a passing ACK advances");
                ok
            }
            Frame::Batch(b) => rules
                .on_batch(b.first(), usize::from(b.seq() as u8))
                .is_ok(),
        };
        if !passed {
            // A protocol violation: the receiver closes the connection.
            out.connection_lost();
            return;
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
                let inc = rules.peer_incarnation().expect("passed the rules");
                assert_eq!(inc, inbox.incarnation());
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
