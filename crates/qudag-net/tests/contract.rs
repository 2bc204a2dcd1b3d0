//! Property tests of the delivery contract. The first: under any schedule of sends,
//! dropped connections, cut and healed links, disconnects and passing time,
//! every message `send` accepted is acknowledged or handed back (exactly
//! one of the two), the receiver gets an in-order, duplicate-free
//! subsequence containing every acknowledged message, and a message handed
//! back as "not delivered" was indeed not delivered. The session tests:
//! under drops, cuts healed within `unreachable_after`, simultaneous dials
//! and replacements, every message is delivered exactly once, in order, and
//! none handed back; with receiver restarts mixed in, acked + handed back ==
//! accepted and no incarnation sees a message twice. (Both fail when the
//! resend or the deduplication of `qudag_batch::session` is removed.)

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use qudag_net::{
    ConnectionManager, Event, FlushPolicy, ManagerConfig, MemoryNetwork, PeerAddr, PeerId,
    Transport,
};

#[derive(Debug, Clone)]
enum Op {
    Send(u16),
    DropConnections,
    Cut,
    Heal,
    Disconnect,
    Advance(u16),
    Receive(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u16..300).prop_map(Op::Send),
        1 => Just(Op::DropConnections),
        1 => Just(Op::Cut),
        1 => Just(Op::Heal),
        1 => Just(Op::Disconnect),
        2 => (1u16..3000).prop_map(Op::Advance),
        2 => (1u16..400).prop_map(Op::Receive),
    ]
}

fn msg(i: u32) -> Bytes {
    Bytes::copy_from_slice(&i.to_be_bytes())
}

fn index(m: &[u8]) -> u32 {
    u32::from_be_bytes(m.try_into().unwrap())
}

/// What came back, split by `maybe_delivered` (sure not delivered, maybe
/// delivered), and the count; fails if a message comes back twice.
fn handed_back(
    events: &mut qudag_net::Events,
) -> Result<(HashSet<u32>, HashSet<u32>, u64), TestCaseError> {
    let mut back_sure = HashSet::new();
    let mut back_maybe = HashSet::new();
    let mut back = 0u64;
    while let Some(ev) = events.try_recv() {
        if let Event::Undelivered {
            messages,
            maybe_delivered,
            ..
        } = ev
        {
            back += messages.len() as u64;
            for m in messages {
                let set = if maybe_delivered {
                    &mut back_maybe
                } else {
                    &mut back_sure
                };
                prop_assert!(set.insert(index(&m)), "handed back twice");
            }
        }
    }
    Ok((back_sure, back_maybe, back))
}

fn run(ops: Vec<Op>, adaptive: bool) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let net = MemoryNetwork::with_pipe_capacity(4096);
        let ta = Arc::new(net.bind(PeerId::from_public_key(b"a")));
        let tb = Arc::new(net.bind(PeerId::from_public_key(b"b")));
        let (a_id, b_addr) = (
            ta.local_peer(),
            PeerAddr::new(tb.local_peer(), tb.local_addr()),
        );
        let mut config = ManagerConfig::default();
        config
            .queue_capacity(64)
            .max_unacked_batches(4)
            .ack_timeout(Duration::from_secs(5))
            .max_failed_dials(4);
        config.batch_mut().max_messages(16).policy(if adaptive {
            FlushPolicy::Adaptive
        } else {
            FlushPolicy::Fixed
        });
        config
            .backoff_mut()
            .base(Duration::from_millis(50))
            .cap(Duration::from_secs(1));
        let a = ConnectionManager::new(config, ta).expect("valid config");
        let mut bcfg = ManagerConfig::default();
        bcfg.incoming_capacity(4);
        let b = ConnectionManager::new(bcfg, tb).expect("valid config");
        let mut events = a.events().unwrap();
        let mut incoming = b.incoming().unwrap();
        let _ = a.connect(b_addr).await;

        let mut next = 0u32;
        let mut accepted = 0u64;
        let mut received: Vec<u32> = Vec::new();
        for op in ops {
            match op {
                Op::Send(k) => {
                    for _ in 0..k {
                        if a.try_send(&b_addr.peer, msg(next)).is_ok() {
                            accepted += 1;
                        }
                        next += 1;
                    }
                }
                Op::DropConnections => {
                    net.drop_connections(a_id, b_addr.peer);
                }
                Op::Cut => net.cut(a_id, b_addr.peer),
                Op::Heal => net.heal(a_id, b_addr.peer),
                Op::Disconnect => {
                    let _ = a.disconnect(&b_addr.peer).await;
                }
                Op::Advance(ms) => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
                Op::Receive(k) => {
                    for _ in 0..k {
                        match incoming.try_recv() {
                            Some((_, m)) => received.push(index(&m)),
                            None => {
                                tokio::task::yield_now().await;
                            }
                        }
                    }
                }
            }
        }
        // Let what can arrive arrive, then shut a down.
        net.heal(a_id, b_addr.peer);
        let drain = async {
            while let Some((_, m)) = incoming.recv().await {
                received.push(index(&m));
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), drain).await;
        a.shutdown(Duration::from_secs(1)).await;
        while let Some((_, m)) = incoming.try_recv() {
            received.push(index(&m));
        }

        let (back_sure, _, back) = handed_back(&mut events)?;
        let snap = a.metrics_snapshot();
        prop_assert_eq!(
            snap.messages_acked + back,
            accepted,
            "acked + handed back == accepted"
        );
        prop_assert!(
            received.windows(2).all(|w| w[0] < w[1]),
            "in order, no duplicates"
        );
        prop_assert!(
            received.len() as u64 >= snap.messages_acked,
            "every acked message was received"
        );
        for r in &received {
            prop_assert!(
                !back_sure.contains(r),
                "message {} handed back as not delivered was delivered",
                r
            );
        }
        prop_assert_eq!(snap.memory_bytes, 0, "nothing held after shutdown");
        b.shutdown(Duration::ZERO).await;
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn delivery_contract_holds_under_faults(ops in proptest::collection::vec(op(), 1..40), adaptive in any::<bool>()) {
        run(ops, adaptive)?;
    }
}

/// Faults that a session outlives: a connection dropped (with whatever ACKs
/// were in flight), a link cut and healed within `unreachable_after`, both
/// peers dialing at once, the peer dialing again (a session replacement),
/// and, in the second test, the receiver restarting.
#[derive(Debug, Clone)]
enum SessionOp {
    Send(u16),
    DropConnections,
    /// Cut the link for this many ms (below `unreachable_after`), then heal
    /// it for 3 s: long enough for a redial under the test's 1 s backoff cap.
    CutFor(u16),
    /// Both managers dial each other at once.
    DialBoth,
    /// The receiver connects to the sender: a dial of its own when it has no
    /// live connection (racing the sender's redial after a drop; the loser
    /// is replaced), a reuse otherwise.
    PeerDials,
    Advance(u16),
    /// The receiver stops and starts again on the same address and identity.
    RestartReceiver,
}

fn session_op(restarts: bool) -> impl Strategy<Value = SessionOp> {
    let restart_weight = u32::from(restarts);
    prop_oneof![
        6 => (1u16..300).prop_map(SessionOp::Send),
        1 => Just(SessionOp::DropConnections),
        1 => (1u16..8000).prop_map(SessionOp::CutFor),
        1 => Just(SessionOp::DialBoth),
        1 => Just(SessionOp::PeerDials),
        2 => (1u16..3000).prop_map(SessionOp::Advance),
        restart_weight => Just(SessionOp::RestartReceiver),
    ]
}

/// What a session run saw: per receiver incarnation, what arrived, and what came back.
struct SessionRun {
    accepted: u64,
    acked: u64,
    /// Received message numbers, one list per receiver incarnation.
    received: Vec<Vec<u32>>,
    back_sure: HashSet<u32>,
    back_maybe: HashSet<u32>,
    back: u64,
}

fn session_run(ops: Vec<SessionOp>) -> Result<SessionRun, TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let net = MemoryNetwork::with_pipe_capacity(4096);
        let ta = Arc::new(net.bind(PeerId::from_public_key(b"a")));
        let b_id = PeerId::from_public_key(b"b");
        let tb = Arc::new(net.bind(b_id));
        let a_addr = PeerAddr::new(ta.local_peer(), ta.local_addr());
        let b_addr = PeerAddr::new(b_id, tb.local_addr());
        let mut config = ManagerConfig::default();
        config
            .queue_capacity(64)
            .max_unacked_batches(4)
            .ack_timeout(Duration::from_secs(5))
            .max_failed_dials(1000)
            .unreachable_after(Duration::from_secs(30));
        config.batch_mut().max_messages(16);
        config
            .backoff_mut()
            .base(Duration::from_millis(50))
            .cap(Duration::from_secs(1));
        let a = ConnectionManager::new(config, ta).expect("valid config");
        // The receiving application reads all the time, one list per
        // incarnation of the receiver.
        let received = Arc::new(parking_lot::Mutex::new(Vec::<Vec<u32>>::new()));
        let receiver = |t: Arc<qudag_net::MemoryTransport>| {
            let mut bcfg = ManagerConfig::default();
            bcfg.incoming_capacity(4);
            let b = ConnectionManager::new(bcfg, t).expect("valid config");
            let mut incoming = b.incoming().unwrap();
            let received = received.clone();
            let k = {
                let mut r = received.lock();
                r.push(Vec::new());
                r.len() - 1
            };
            let reader = tokio::spawn(async move {
                while let Some((_, m)) = incoming.recv().await {
                    received.lock()[k].push(index(&m));
                }
            });
            (b, reader)
        };
        let (mut b, mut reader) = receiver(tb);
        let mut events = a.events().unwrap();
        let _ = a.connect(b_addr).await;

        let mut next = 0u32;
        let mut accepted = 0u64;
        for op in ops {
            match op {
                SessionOp::Send(k) => {
                    for _ in 0..k {
                        if a.try_send(&b_addr.peer, msg(next)).is_ok() {
                            accepted += 1;
                        }
                        next += 1;
                    }
                }
                SessionOp::DropConnections => {
                    net.drop_connections(a_addr.peer, b_id);
                }
                SessionOp::CutFor(ms) => {
                    net.cut(a_addr.peer, b_id);
                    tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                    net.heal(a_addr.peer, b_id);
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                SessionOp::DialBoth => {
                    let _ = tokio::join!(a.connect(b_addr), b.connect(a_addr));
                }
                SessionOp::PeerDials => {
                    let _ = b.connect(a_addr).await;
                }
                SessionOp::Advance(ms) => {
                    tokio::time::sleep(Duration::from_millis(u64::from(ms))).await
                }
                SessionOp::RestartReceiver => {
                    // Stop at once: what b's application did not take is lost
                    // with b, as in a crash.
                    b.shutdown(Duration::ZERO).await;
                    reader.abort();
                    drop(b);
                    let t = Arc::new(net.bind_at(b_id, b_addr.addr).expect("address free"));
                    (b, reader) = receiver(t);
                }
            }
        }
        // Heal, then shut a down: its shutdown waits for the last ACKs.
        net.heal(a_addr.peer, b_id);
        a.shutdown(Duration::from_secs(20)).await;
        b.shutdown(Duration::ZERO).await;
        let _ = reader.await;
        let received = std::mem::take(&mut *received.lock());
        let (back_sure, back_maybe, back) = handed_back(&mut events)?;
        let acked = a.metrics_snapshot().messages_acked;
        prop_assert_eq!(
            a.metrics_snapshot().memory_bytes,
            0,
            "nothing held after shutdown"
        );
        Ok(SessionRun {
            accepted,
            acked,
            received,
            back_sure,
            back_maybe,
            back,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// No restart: every accepted message is delivered exactly once and in
    /// order, and none is handed back.
    #[test]
    fn sessions_deliver_exactly_once_across_connection_faults(
        ops in proptest::collection::vec(session_op(false), 1..40)
    ) {
        let r = session_run(ops)?;
        prop_assert_eq!(r.back, 0, "handed back: {:?} / {:?}", r.back_sure, r.back_maybe);
        prop_assert_eq!(r.acked, r.accepted);
        let got = &r.received[0];
        prop_assert_eq!(got.len() as u64, r.accepted, "each accepted message once");
        prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates");
    }

    /// With receiver restarts: acked + handed back == accepted, exactly; no
    /// incarnation receives a message twice or out of order; a message handed
    /// back as not delivered was not delivered; nothing acknowledged is
    /// handed back.
    #[test]
    fn sessions_account_for_every_message_across_restarts(
        ops in proptest::collection::vec(session_op(true), 1..40)
    ) {
        let r = session_run(ops)?;
        prop_assert_eq!(r.acked + r.back, r.accepted, "acked + handed back == accepted");
        for got in &r.received {
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "in order within an incarnation");
        }
        for m in r.received.iter().flatten() {
            prop_assert!(!r.back_sure.contains(m), "{} handed back as not delivered was delivered", m);
        }
    }
}
