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

/// Holds `accept` until released, and makes every dialed connection's
/// stream set-up wait until the connection is closed: so a dial the peer
/// closes as a simultaneous dial's loser fails *during* set-up, and the
/// peer's winner arrives only when the test says.
#[derive(Debug)]
struct Gate {
    inner: qudag_net::MemoryTransport,
    open: tokio::sync::watch::Receiver<bool>,
}

#[derive(Debug)]
struct SlowOpen(std::sync::Arc<dyn qudag_net::Connection>);

#[qudag_net::async_trait]
impl qudag_net::Transport for Gate {
    fn local_peer(&self) -> qudag_net::PeerId {
        self.inner.local_peer()
    }
    fn local_addr(&self) -> std::net::SocketAddr {
        self.inner.local_addr()
    }
    async fn dial(
        &self,
        to: &qudag_net::PeerAddr,
    ) -> Result<std::sync::Arc<dyn qudag_net::Connection>, qudag_net::TransportError> {
        Ok(std::sync::Arc::new(SlowOpen(self.inner.dial(to).await?)))
    }
    async fn accept(
        &self,
    ) -> Result<std::sync::Arc<dyn qudag_net::Connection>, qudag_net::TransportError> {
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
        self.inner.accept().await
    }
    fn close(&self) {
        self.inner.close();
    }
    fn set_incarnation(&self, incarnation: u64) {
        self.inner.set_incarnation(incarnation);
    }
}

support::wrap_connection!(SlowOpen, |this| {
    this.0.closed().await;
    this.0.open_stream().await
});

/// The peer closes our dial as a simultaneous dial's loser while we are
/// still setting it up: that is not a failure. `connect` waits for the
/// peer's winning connection and succeeds on it, and the state never
/// shows Failed.
#[tokio::test(start_paused = true)]
async fn a_dial_replaced_during_set_up_waits_for_the_winner() {
    use qudag_net::{CloseKind, PeerId};
    let net = MemoryNetwork::new();
    let (x, y) = (PeerId::from_public_key(b"x"), PeerId::from_public_key(b"y"));
    // The connection the lower PeerId dialed wins.
    let (low, high) = if x < y { (x, y) } else { (y, x) };
    let (release, open) = tokio::sync::watch::channel(false);
    let gate = std::sync::Arc::new(Gate {
        inner: net.bind(high),
        open,
    });
    let mut h = support::node_on(gate, ManagerConfig::default());
    let mut l = memory_node_with_id(&net, low);

    // `low` dials first; `high` does not accept it yet.
    l.mgr.connect(h.addr).await.expect("low connects");
    // `high` dials back: `low` keeps its own dial and closes this one,
    // which fails while `high` sets it up.
    let high_mgr = h.mgr.clone();
    let low_addr = l.addr;
    let connect = tokio::spawn(async move { high_mgr.connect(low_addr).await });
    guard("the dial is replaced", Duration::from_secs(10), async {
        while h.mgr.metrics_snapshot().closes.get(CloseKind::Duplicate) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(!connect.is_finished(), "connect waits for the winner");
    // Now the winner arrives.
    release.send_replace(true);
    let r = guard("connect", Duration::from_secs(10), connect).await;
    r.expect("task").expect("connect succeeds on the winner");
    assert_eq!(h.mgr.status(&l.addr.peer), Some(ConnState::Connected));
    h.mgr.send(&l.addr.peer, msg(7, 8)).await.unwrap();
    let got = recv_n(&mut l.incoming, h.addr.peer, 1).await;
    assert_eq!(index(&got[0]), 7);
    let mut back = HandedBack::default();
    back.drain(&mut h.events);
    check(0, &back);
    h.mgr.shutdown(Duration::from_secs(1)).await;
    l.mgr.shutdown(Duration::from_secs(1)).await;
}

fn memory_node_with_id(net: &MemoryNetwork, id: qudag_net::PeerId) -> Node {
    support::node_on(std::sync::Arc::new(net.bind(id)), ManagerConfig::default())
}
