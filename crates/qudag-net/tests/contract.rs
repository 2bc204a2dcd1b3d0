//! Property test of the delivery contract: under any schedule of sends,
//! dropped connections, cut and healed links, disconnects and passing time,
//! every message `send` accepted is acknowledged or handed back (exactly
//! one of the two), the receiver gets an in-order, duplicate-free
//! subsequence containing every acknowledged message, and a message handed
//! back as "not delivered" was indeed not delivered.

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
            .max_redials(3);
        config.batch_mut().max_messages(16).policy(if adaptive {
            FlushPolicy::Adaptive
        } else {
            FlushPolicy::Fixed
        });
        config
            .backoff_mut()
            .base(Duration::from_millis(50))
            .cap(Duration::from_secs(1));
        let a = ConnectionManager::new(config, ta);
        let mut bcfg = ManagerConfig::default();
        bcfg.incoming_capacity(4);
        let b = ConnectionManager::new(bcfg, tb);
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
