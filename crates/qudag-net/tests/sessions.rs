//! Peer sessions that outlive connections: two managers that dial each other
//! and send at the same instant, repeated many times over QUIC on 127.0.0.1
//! and over the in-memory transport (paused time, and a multi-threaded
//! runtime). Whichever connection the simultaneous-dial rule keeps, nothing
//! is handed back, nothing is delivered twice, every message arrives in
//! order, and neither side ever shows the peer as Failed.

mod support;

use std::time::Duration;

use qudag_net::{ConnState, ManagerConfig, MemoryNetwork, QuicConfig};
use support::{guard, index, memory_node, msg, quic_node, recv_n, HandedBack, Node};

/// Messages each side sends per repetition.
const N: u32 = 40;

/// `a` and `b` connect to each other and send `N` messages each at once;
/// each receives the other's, then both shut down. Returns what came back
/// and the state changes seen, for both sides.
async fn dial_each_other(mut a: Node, mut b: Node) -> (HandedBack, HandedBack) {
    let (pa, pb) = (a.addr, b.addr);
    let side = |me: &qudag_net::ConnectionManager, to: qudag_net::PeerAddr| {
        let me = me.clone();
        async move {
            me.connect(to).await.expect("connect");
            for i in 0..N {
                me.send(&to.peer, msg(i, 24)).await.expect("send");
            }
        }
    };
    guard(
        "both sides connect and send",
        Duration::from_secs(30),
        async { tokio::join!(side(&a.mgr, pb), side(&b.mgr, pa)) },
    )
    .await;
    let (got_a, got_b) = tokio::join!(
        recv_n(&mut a.incoming, pb.peer, N as usize),
        recv_n(&mut b.incoming, pa.peer, N as usize)
    );
    for got in [&got_a, &got_b] {
        let ids: Vec<u32> = got.iter().map(|m| index(m)).collect();
        assert_eq!(
            ids,
            (0..N).collect::<Vec<_>>(),
            "each message once, in order"
        );
    }
    tokio::join!(
        a.mgr.shutdown(Duration::from_secs(10)),
        b.mgr.shutdown(Duration::from_secs(10))
    );
    // Nothing more arrives after the shutdown: no late duplicate.
    assert!(a.incoming.try_recv().is_none(), "a duplicate reached a");
    assert!(b.incoming.try_recv().is_none(), "a duplicate reached b");
    let (mut ha, mut hb) = (HandedBack::default(), HandedBack::default());
    ha.drain(&mut a.events);
    hb.drain(&mut b.events);
    (ha, hb)
}

#[track_caller]
fn check(rep: usize, back: &HandedBack) {
    assert!(
        back.messages.is_empty(),
        "repetition {rep}: {} messages handed back ({:?})",
        back.messages.len(),
        back.reasons
    );
    assert!(
        back.states.iter().all(|&(_, to)| to != ConnState::Failed),
        "repetition {rep}: the peer was shown as Failed: {:?}",
        back.states
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dial_over_quic_hands_nothing_back() {
    for rep in 0..200 {
        let a = quic_node(ManagerConfig::default(), QuicConfig::default());
        let b = quic_node(ManagerConfig::default(), QuicConfig::default());
        let (ha, hb) = dial_each_other(a, b).await;
        check(rep, &ha);
        check(rep, &hb);
    }
}

/// 200 repetitions over the in-memory transport, on the caller's runtime.
async fn in_memory_repetitions() {
    for rep in 0..200 {
        let net = MemoryNetwork::new();
        let a = memory_node(&net, &format!("a{rep}"), ManagerConfig::default());
        let b = memory_node(&net, &format!("b{rep}"), ManagerConfig::default());
        let (ha, hb) = dial_each_other(a, b).await;
        check(rep, &ha);
        check(rep, &hb);
    }
}

#[tokio::test(start_paused = true)]
async fn simultaneous_dial_in_memory_with_paused_time_hands_nothing_back() {
    in_memory_repetitions().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dial_in_memory_with_threads_hands_nothing_back() {
    in_memory_repetitions().await;
}
