//! The manager's behaviour over the in-memory transport, with faults and
//! paused time: exchange, the delivery contract under failures, pooling,
//! limits, simultaneous dials, expiry, unresponsive peers and shutdown.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use qudag_net::{
    ConnState, Event, FlushPolicy, ManagerConfig, MemoryNetwork, NetError, PeerAddr, PeerId,
    SendError, SendManyReason, UndeliveredReason,
};

mod support;

use support::{handed_back, index, memory_node as node_with, recv_n, Node};

fn node(net: &MemoryNetwork, name: &str) -> Node {
    node_with(net, name, ManagerConfig::default())
}

fn msg(i: u32) -> Bytes {
    support::msg(i, 16)
}

/// `a` gives up on unacknowledged batches after 2 s and does not redial; `b`
/// holds one received batch for its application, so if the application never
/// reads, b's reader blocks and b stops acknowledging.
fn sender_and_slow_reader(net: &MemoryNetwork) -> (Node, Node) {
    let mut config = ManagerConfig::default();
    config
        .ack_timeout(Duration::from_secs(2))
        .max_failed_dials(1);
    let mut bcfg = ManagerConfig::default();
    bcfg.incoming_capacity(1);
    (node_with(net, "a", config), node_with(net, "b", bcfg))
}

#[tokio::test]
async fn exchange_in_both_directions_in_order() {
    let net = MemoryNetwork::new();
    let mut a = node(&net, "a");
    let mut b = node(&net, "b");
    a.mgr.connect(b.addr).await.unwrap();
    assert_eq!(a.mgr.status(&b.addr.peer), Some(ConnState::Connected));

    let n = 1000;
    let send_a = async {
        for i in 0..n {
            a.mgr.send(&b.addr.peer, msg(i)).await.unwrap();
        }
    };
    let send_b = async {
        // b learns a from the inbound connection: no connect needed.
        while b.mgr.status(&a.addr.peer) != Some(ConnState::Connected) {
            tokio::task::yield_now().await;
        }
        for i in 0..n {
            b.mgr.send(&a.addr.peer, msg(i)).await.unwrap();
        }
    };
    let (got_b, got_a, (), ()) = tokio::join!(
        recv_n(&mut b.incoming, a.addr.peer, n as usize),
        recv_n(&mut a.incoming, b.addr.peer, n as usize),
        send_a,
        send_b
    );
    for got in [got_a, got_b] {
        let idx: Vec<u32> = got.iter().map(|m| index(m)).collect();
        assert_eq!(idx, (0..n).collect::<Vec<_>>(), "in order, exactly once");
    }
    assert_eq!(
        net.live_connections(),
        1,
        "one connection serves both directions"
    );
    a.mgr.shutdown(Duration::from_secs(5)).await;
    b.mgr.shutdown(Duration::from_secs(5)).await;
    assert!(handed_back(&mut a.events).is_empty());
    assert!(handed_back(&mut b.events).is_empty());
    let snap = a.mgr.metrics_snapshot();
    assert_eq!(snap.messages_acked, u64::from(n));
    assert_eq!(snap.messages_received, u64::from(n));
}

#[tokio::test]
async fn send_errors_are_typed_and_hand_the_message_back() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config.batch_mut().max_message_len(100);
    let a = node_with(&net, "a", config);
    let b = node(&net, "b");
    let stranger = PeerId::from_public_key(b"stranger");
    match a.mgr.send(&stranger, msg(1)).await {
        Err(SendError::UnknownPeer { peer, msg: m }) => {
            assert_eq!(peer, stranger);
            assert_eq!(m, msg(1));
        }
        other => panic!("expected UnknownPeer, got {other:?}"),
    }
    a.mgr.connect(b.addr).await.unwrap();
    let big = Bytes::from(vec![0u8; 101]);
    match a.mgr.try_send(&b.addr.peer, big.clone()) {
        Err(SendError::TooLarge {
            len: 101,
            max: 100,
            msg,
        }) => assert_eq!(msg, big),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    a.mgr.shutdown(Duration::from_secs(1)).await;
    assert!(matches!(
        a.mgr.send(&b.addr.peer, msg(2)).await,
        Err(SendError::Shutdown { .. })
    ));
    assert!(matches!(
        a.mgr.connect(b.addr).await,
        Err(NetError::Shutdown)
    ));
}

#[tokio::test]
async fn dial_errors_are_typed() {
    let net = MemoryNetwork::new();
    let a = node(&net, "a");
    let b = node(&net, "b");
    let wrong = PeerAddr::new(PeerId::from_public_key(b"someone else"), b.addr.addr);
    match a.mgr.connect(wrong).await {
        Err(NetError::Transport(qudag_net::TransportError::PeerIdMismatch {
            expected,
            actual,
        })) => {
            assert_eq!((expected, actual), (wrong.peer, b.addr.peer));
        }
        other => panic!("expected PeerIdMismatch, got {other:?}"),
    }
    assert_eq!(a.mgr.status(&wrong.peer), Some(ConnState::Failed));
    // A failed peer backs off: an immediate retry is refused with the instant to wait for.
    assert!(matches!(
        a.mgr.connect(wrong).await,
        Err(NetError::Backoff { .. })
    ));
    assert_eq!(
        a.mgr.open_connections(),
        0,
        "failed dials give their slot back"
    );
}

#[tokio::test]
async fn try_send_reports_full_when_the_queue_is_full() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config.queue_capacity(4);
    let a = node_with(&net, "a", config);
    let b = node(&net, "b");
    // b is known (its address), but the link is cut: nothing drains the queue
    // beyond the one message the driver takes to start a dial.
    a.mgr.connect(b.addr).await.unwrap();
    net.cut(a.addr.peer, b.addr.peer);
    let mut full = 0;
    for i in 0..64 {
        if let Err(SendError::Full { msg: m, .. }) = a.mgr.try_send(&b.addr.peer, msg(i)) {
            assert_eq!(m, msg(i));
            full += 1;
        }
    }
    assert!(full > 0, "a bounded queue must refuse some of 64 messages");
    a.mgr.shutdown(Duration::from_millis(10)).await;
}

#[tokio::test(start_paused = true)]
async fn peer_dropped_mid_stream_every_message_is_acked_or_handed_back() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config.max_failed_dials(1);
    let mut a = node_with(&net, "a", config);
    let mut b = node(&net, "b");
    a.mgr.connect(b.addr).await.unwrap();
    let n: u32 = 5000;
    let mut received = Vec::new();
    for i in 0..n {
        a.mgr.send(&b.addr.peer, msg(i)).await.unwrap();
        if i == n / 2 {
            // Let some traffic through, then drop the connection under it.
            received.extend(recv_n(&mut b.incoming, a.addr.peer, 100).await);
            net.drop_connections(a.addr.peer, b.addr.peer);
        }
    }
    // a keeps redialing with backoff would reconnect; with max_failed_dials(1) it hands back.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some((_, m)) = b.incoming.recv().await {
            received.push(m);
        }
    })
    .await;
    a.mgr.shutdown(Duration::from_secs(1)).await;
    let back = handed_back(&mut a.events);
    let acked = a.mgr.metrics_snapshot().messages_acked;
    assert_eq!(
        acked + back.len() as u64,
        u64::from(n),
        "acknowledged + handed back == accepted, exactly"
    );
    // Received messages are a duplicate-free, in-order subset; every acked one was received.
    let got: Vec<u32> = received.iter().map(|m| index(m)).collect();
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    assert!(got.len() as u64 >= acked);
    let back_idx: HashSet<u32> = back.iter().map(|(m, _, _)| index(m)).collect();
    for (m, maybe, _) in &back {
        if !maybe {
            assert!(
                !got.contains(&index(m)),
                "a message handed back as not delivered was delivered"
            );
        }
    }
    for i in &got {
        let acked_or_maybe =
            back.iter().any(|(m, maybe, _)| index(m) == *i && *maybe) || !back_idx.contains(i);
        assert!(acked_or_maybe);
    }
}

#[tokio::test(start_paused = true)]
async fn reconnects_with_backoff_after_a_cut_link_heals() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    // The jitter is random: cap the backoff well inside `unreachable_after`,
    // so the first redial after the heal always comes before the queued
    // messages would be handed back as unreachable.
    config
        .max_failed_dials(50)
        .unreachable_after(Duration::from_secs(30));
    config.backoff_mut().cap(Duration::from_secs(1));
    let mut a = node_with(&net, "a", config);
    let mut b = node(&net, "b");
    a.mgr.connect(b.addr).await.unwrap();
    a.mgr.send(&b.addr.peer, msg(0)).await.unwrap();
    recv_n(&mut b.incoming, a.addr.peer, 1).await;
    // b acknowledges once its application took the message; wait for a to hear it.
    while a.mgr.metrics_snapshot().messages_acked < 1 {
        tokio::task::yield_now().await;
    }

    net.cut(a.addr.peer, b.addr.peer);
    for i in 1..=10 {
        a.mgr.send(&b.addr.peer, msg(i)).await.unwrap();
    }
    // Redials fail while the link is cut; time passes (paused clock).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(a.mgr.status(&b.addr.peer), Some(ConnState::Connected));
    let failures = a.mgr.metrics_snapshot().errors.total();
    assert!(
        failures >= 2,
        "several redials were tried and failed: {failures}"
    );
    net.heal(a.addr.peer, b.addr.peer);

    let got = tokio::time::timeout(
        Duration::from_secs(120),
        recv_n(&mut b.incoming, a.addr.peer, 10),
    )
    .await
    .expect("messages arrive after the heal");
    let idx: Vec<u32> = got.iter().map(|m| index(m)).collect();
    assert_eq!(idx, (1..=10).collect::<Vec<_>>());
    assert_eq!(a.mgr.status(&b.addr.peer), Some(ConnState::Connected));
    assert!(
        handed_back(&mut a.events).is_empty(),
        "nothing was written before the cut was noticed"
    );
}

#[tokio::test]
async fn pooled_reuse_does_not_dial() {
    let net = MemoryNetwork::new();
    let a = node(&net, "a");
    let mut b = node(&net, "b");
    a.mgr.connect(b.addr).await.unwrap();
    a.mgr.disconnect(&b.addr.peer).await.unwrap();
    assert_eq!(a.mgr.status(&b.addr.peer), Some(ConnState::Disconnected));
    assert_eq!(a.mgr.pooled_connections(), 1);
    // Any dial would now be refused: a successful connect proves reuse.
    net.refuse_next_dials(b.addr.peer, 100);
    a.mgr.connect(b.addr).await.unwrap();
    assert_eq!(a.mgr.status(&b.addr.peer), Some(ConnState::Connected));
    assert_eq!(a.mgr.pooled_connections(), 0);
    assert_eq!(net.live_connections(), 1);
    // Sending to a disconnected (pooled) peer reuses it too.
    a.mgr.disconnect(&b.addr.peer).await.unwrap();
    a.mgr.send(&b.addr.peer, msg(7)).await.unwrap();
    let got = recv_n(&mut b.incoming, a.addr.peer, 1).await;
    assert_eq!(got, vec![msg(7)]);
    assert_eq!(net.live_connections(), 1);
}

/// The buffers a burst of large messages grew go back once the connection
/// is quiet: the sender's frame buffer when the connection is pooled, the
/// receiver's read buffer as soon as its next read would wait. (Before, a
/// pooled connection kept up to 256 KiB of frame buffer and a read buffer
/// of twice the largest read.)
#[tokio::test]
async fn a_quiet_connection_gives_back_what_a_burst_grew() {
    let net = MemoryNetwork::new();
    let a = node(&net, "a");
    let mut b = node(&net, "b");
    a.mgr.connect(b.addr).await.unwrap();
    // One message per batch, each frame under the 256-KiB cap above which
    // the frame buffer is dropped after every write anyway.
    let big = Bytes::from(vec![7u8; 200 * 1024]);
    for _ in 0..4 {
        a.mgr.send(&b.addr.peer, big.clone()).await.unwrap();
        assert_eq!(
            recv_n(&mut b.incoming, a.addr.peer, 1).await,
            vec![big.clone()]
        );
    }
    // Yields until a has every ACK and b's reader went quiet.
    let settled = async {
        while a.mgr.metrics_snapshot().messages_acked < 4
            || b.mgr.metrics_snapshot().memory_bytes > 1024
        {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), settled)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "b holds {} bytes after the burst",
                b.mgr.metrics_snapshot().memory_bytes
            )
        });
    a.mgr.disconnect(&b.addr.peer).await.unwrap();
    assert_eq!(a.mgr.pooled_connections(), 1);
    let held = a.mgr.metrics_snapshot().memory_bytes;
    assert!(held <= 1024, "a pooled connection holds {held} bytes");
    // Still usable: the next large message allocates what it needs.
    a.mgr.send(&b.addr.peer, big.clone()).await.unwrap();
    assert_eq!(recv_n(&mut b.incoming, a.addr.peer, 1).await, vec![big]);
}

/// The listener side can pool too: a connection the peer dialed, put in the
/// pool with `disconnect`, stays there (open, counted) until the pool
/// timeout, whether or not the peer ever sent a message, and a send takes
/// it back without a dial.
#[tokio::test(start_paused = true)]
async fn an_inbound_connection_stays_pooled_on_the_listener() {
    let net = MemoryNetwork::new();
    for sent_first in [false, true] {
        let a = node(&net, &format!("dialer {sent_first}"));
        let mut b = node(&net, &format!("listener {sent_first}"));
        a.mgr.connect(b.addr).await.unwrap();
        if sent_first {
            a.mgr.send(&b.addr.peer, msg(0)).await.unwrap();
            assert_eq!(index(&b.incoming.recv().await.unwrap().1), 0);
        }
        while b.mgr.status(&a.addr.peer) != Some(ConnState::Connected) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        b.mgr.disconnect(&a.addr.peer).await.unwrap();
        assert_eq!(b.mgr.pooled_connections(), 1);
        // Well before the pool timeout (300 s) and the peer idle timeout.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(b.mgr.pooled_connections(), 1, "still pooled ({sent_first})");
        assert_eq!(b.mgr.open_connections(), 1, "still open ({sent_first})");
        assert_eq!(b.mgr.status(&a.addr.peer), Some(ConnState::Disconnected));
        // b sends back over the pooled connection: no dial (b could not
        // dial a, which never told b an address).
        b.mgr.send(&a.addr.peer, msg(1)).await.unwrap();
        let mut a = a;
        assert_eq!(index(&a.incoming.recv().await.unwrap().1), 1);
        let opens = b.mgr.metrics_snapshot().opens;
        assert_eq!(opens.get(qudag_net::OpenKind::Reused), 1);
        assert_eq!(opens.get(qudag_net::OpenKind::Dialed), 0);
        a.mgr.shutdown(Duration::from_secs(1)).await;
        b.mgr.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn pooled_connection_expires_after_the_pool_timeout() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config.pool_mut().idle_timeout(Duration::from_secs(300));
    let a = node_with(&net, "a", config);
    let b = node(&net, "b");
    a.mgr.connect(b.addr).await.unwrap();
    a.mgr.disconnect(&b.addr.peer).await.unwrap();
    tokio::time::sleep(Duration::from_secs(299)).await;
    assert_eq!(net.live_connections(), 1, "still pooled before the timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The cleanup task closed it; give the drivers a turn to observe it.
    for _ in 0..100 {
        if net.live_connections() == 0 && a.mgr.open_connections() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(net.live_connections(), 0);
    assert_eq!(a.mgr.pooled_connections(), 0);
    assert_eq!(a.mgr.open_connections(), 0, "the slot came back");
    // A new connect dials again.
    a.mgr.connect(b.addr).await.unwrap();
    assert_eq!(net.live_connections(), 1);
}

#[tokio::test]
async fn connection_limit_is_typed_and_evicts_idle_pooled_first() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config.pool_mut().max_connections(1);
    let a = node_with(&net, "a", config);
    let b = node(&net, "b");
    let c = node(&net, "c");
    a.mgr.connect(b.addr).await.unwrap();
    match a.mgr.connect(c.addr).await {
        Err(NetError::Limit(qudag_pool::LimitError::Connections { max: 1 })) => {}
        other => panic!("expected the connection limit, got {other:?}"),
    }
    assert_eq!(a.mgr.open_connections(), 1);
    // Once b is idle in the pool, it is evicted to make room for c.
    a.mgr.disconnect(&b.addr.peer).await.unwrap();
    a.mgr.connect(c.addr).await.unwrap();
    assert_eq!(a.mgr.open_connections(), 1);
    assert_eq!(a.mgr.pooled_connections(), 0);
    assert_eq!(a.mgr.status(&c.addr.peer), Some(ConnState::Connected));
}

/// `a` (one connection slot) holds a connection to `b` in use and has `c`'s
/// address: a send to `c` meets `a`'s own limit.
async fn at_the_limit_with_a_send_waiting(
    net: &MemoryNetwork,
    config: ManagerConfig,
) -> (Node, Node, Node) {
    let a = node_with(net, "a", config);
    let b = node(net, "b");
    let c = node(net, "c");
    a.mgr.connect(b.addr).await.unwrap();
    a.mgr.add_peer(c.addr).unwrap();
    a.mgr.send(&c.addr.peer, msg(1)).await.unwrap();
    (a, b, c)
}

fn limit_reached(node: &Node) -> u64 {
    node.mgr
        .metrics_snapshot()
        .errors
        .get(qudag_net::ErrorKind::LimitReached)
}

/// A send that meets the manager's own connection limit waits for a slot,
/// and dials the moment one comes free (here: `b` goes idle into the pool,
/// so it can be evicted), not on a timer. It used to count each refusal as
/// a failed dial of the peer and hand the message back as "peer
/// unreachable" after `max_failed_dials` redials 10 ms apart.
#[tokio::test(start_paused = true)]
async fn a_send_at_the_connection_limit_waits_for_room_then_dials() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config.pool_mut().max_connections(1);
    let (mut a, b, mut c) = at_the_limit_with_a_send_waiting(&net, config).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        handed_back(&mut a.events).is_empty(),
        "still waiting for room"
    );
    assert!(limit_reached(&a) >= 1, "the dial met the limit");
    assert_eq!(a.mgr.open_connections(), 1);
    let before = tokio::time::Instant::now();
    a.mgr.disconnect(&b.addr.peer).await.unwrap();
    assert_eq!(recv_n(&mut c.incoming, a.addr.peer, 1).await, [msg(1)]);
    assert!(
        before.elapsed() < Duration::from_millis(10),
        "dialed when the room came, not on a timer: {:?}",
        before.elapsed()
    );
    assert_eq!(a.mgr.status(&c.addr.peer), Some(ConnState::Connected));
    assert_eq!(
        a.mgr.pooled_connections(),
        0,
        "b's idle connection made the room"
    );
    assert!(handed_back(&mut a.events).is_empty());
}

/// With no slot coming free, the message goes back after
/// `unreachable_after`, not before, and says why: the connection limit.
#[tokio::test(start_paused = true)]
async fn a_send_that_never_finds_room_comes_back_as_connection_limit() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config
        .unreachable_after(Duration::from_secs(3))
        .pool_mut()
        .max_connections(1);
    let (mut a, _b, _c) = at_the_limit_with_a_send_waiting(&net, config).await;
    tokio::time::sleep(Duration::from_millis(2900)).await;
    assert!(handed_back(&mut a.events).is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        handed_back(&mut a.events),
        [(msg(1), false, UndeliveredReason::ConnectionLimit)]
    );
}

#[tokio::test]
async fn simultaneous_dial_leaves_one_connection_on_each_side() {
    for round in 0..20 {
        let net = MemoryNetwork::new();
        let a = node(&net, &format!("a{round}"));
        let b = node(&net, &format!("b{round}"));
        let (ra, rb) = tokio::join!(a.mgr.connect(b.addr), b.mgr.connect(a.addr));
        ra.unwrap();
        rb.unwrap();
        // Let both sides settle the duplicate.
        for _ in 0..200 {
            if net.live_connections() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(net.live_connections(), 1, "round {round}");
        assert_eq!(a.mgr.status(&b.addr.peer), Some(ConnState::Connected));
        assert_eq!(b.mgr.status(&a.addr.peer), Some(ConnState::Connected));
    }
}

#[tokio::test(start_paused = true)]
async fn unresponsive_peer_is_closed_and_messages_handed_back() {
    let net = MemoryNetwork::new();
    let (mut a, b) = sender_and_slow_reader(&net);
    // b's application never reads: b's reader blocks, so b stops acknowledging.
    a.mgr.connect(b.addr).await.unwrap();
    let n = 2000u32;
    let mut accepted = 0u64;
    for i in 0..n {
        if a.mgr.try_send(&b.addr.peer, msg(i)).is_ok() {
            accepted += 1;
        }
        tokio::task::yield_now().await;
    }
    // The ack timeout (2 s) closes each connection that acknowledges nothing,
    // and the session goes on over a redial: nothing comes back before
    // `unreachable_after` (10 s) has passed without progress.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let early: Vec<_> = std::iter::from_fn(|| a.events.try_recv())
        .filter(|ev| matches!(ev, Event::Undelivered { .. }))
        .collect();
    assert!(early.is_empty(), "handed back too early: {early:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut unresponsive = false;
    let mut back = 0u64;
    while let Some(ev) = a.events.try_recv() {
        if let Event::Undelivered {
            messages, reason, ..
        } = ev
        {
            unresponsive |= reason == UndeliveredReason::Unresponsive;
            back += messages.len() as u64;
        }
    }
    assert!(unresponsive, "the ack timeout closed the connection");
    a.mgr.shutdown(Duration::from_millis(100)).await;
    back += handed_back(&mut a.events).len() as u64;
    let acked = a.mgr.metrics_snapshot().messages_acked;
    assert_eq!(acked + back, accepted);
    drop(b);
}

#[tokio::test]
async fn shutdown_with_messages_in_flight_accounts_for_every_message() {
    let net = MemoryNetwork::new();
    let mut a = node(&net, "a");
    let mut bcfg = ManagerConfig::default();
    bcfg.incoming_capacity(2);
    let mut b = node_with(&net, "b", bcfg);
    a.mgr.connect(b.addr).await.unwrap();
    let n = 3000u32;
    let mut accepted = 0u64;
    for i in 0..n {
        if a.mgr.try_send(&b.addr.peer, msg(i)).is_ok() {
            accepted += 1;
        }
    }
    // b reads only a little; a's shutdown cannot wait for everything.
    let got = recv_n(&mut b.incoming, a.addr.peer, 10).await;
    assert_eq!(got.len(), 10);
    a.mgr.shutdown(Duration::from_millis(200)).await;
    let back = handed_back(&mut a.events);
    assert!(back
        .iter()
        .all(|(_, _, r)| *r == UndeliveredReason::Shutdown));
    let acked = a.mgr.metrics_snapshot().messages_acked;
    assert_eq!(acked + back.len() as u64, accepted);
    assert!(!back.is_empty(), "b could not take everything in time");
    assert_eq!(net.live_connections(), 0, "shutdown closed the connection");
    assert_eq!(
        a.mgr.metrics_snapshot().memory_bytes,
        0,
        "nothing held after shutdown"
    );
    b.mgr.shutdown(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn fixed_policy_also_delivers_everything() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config
        .batch_mut()
        .policy(FlushPolicy::Fixed)
        .max_delay(Duration::from_millis(1));
    let a = node_with(&net, "a", config);
    let mut b = node(&net, "b");
    a.mgr.connect(b.addr).await.unwrap();
    for i in 0..300 {
        a.mgr.send(&b.addr.peer, msg(i)).await.unwrap();
    }
    let got = recv_n(&mut b.incoming, a.addr.peer, 300).await;
    assert_eq!(
        got.iter().map(|m| index(m)).collect::<Vec<_>>(),
        (0..300).collect::<Vec<_>>()
    );
    let snap = a.mgr.metrics_snapshot();
    assert!(
        snap.batches_sent >= 3,
        "128-message batches: {}",
        snap.batches_sent
    );
}

#[tokio::test(start_paused = true)]
async fn idle_peers_are_forgotten_and_come_back_on_send() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config.peer_idle_timeout(Duration::from_secs(60));
    let a = node_with(&net, "a", config.clone());
    let mut b = node_with(&net, "b", config);
    a.mgr.connect(b.addr).await.unwrap();
    // b learns a from the inbound connection.
    while b.mgr.status(&a.addr.peer) != Some(ConnState::Connected) {
        tokio::task::yield_now().await;
    }
    net.drop_connections(a.addr.peer, b.addr.peer);
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(a.mgr.peers(), vec![b.addr.peer], "not yet idle long enough");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a.mgr.peers().is_empty(), "a forgot its idle peer");
    assert!(b.mgr.peers().is_empty(), "b forgot its idle peer");
    // a connected to b, so it remembers b's address; b never dialed a.
    assert!(matches!(
        b.mgr.send(&a.addr.peer, msg(1)).await,
        Err(SendError::UnknownPeer { .. })
    ));
    a.mgr.send(&b.addr.peer, msg(2)).await.unwrap();
    assert_eq!(recv_n(&mut b.incoming, a.addr.peer, 1).await, vec![msg(2)]);
    assert_eq!(a.mgr.status(&b.addr.peer), Some(ConnState::Connected));
}

/// A sender that forgot a peer which still remembers it (the peer's
/// `peer_idle_timeout` is longer) starts a fresh outbox, numbered from 0,
/// while the peer's RESUME says it delivered messages up to a higher number.
/// The fresh outbox goes on from there: its messages are delivered, not
/// refused as an acknowledgement "beyond the messages sent" (which closed
/// every connection as a protocol violation) nor dropped as duplicates.
#[tokio::test(start_paused = true)]
async fn a_sender_that_forgot_a_peer_which_remembers_it_is_delivered() {
    let net = MemoryNetwork::new();
    let mut short = ManagerConfig::default();
    short.peer_idle_timeout(Duration::from_secs(60));
    let mut long = ManagerConfig::default();
    long.peer_idle_timeout(Duration::from_secs(3600));
    let mut a = node_with(&net, "a", short);
    let mut b = node_with(&net, "b", long);
    a.mgr.connect(b.addr).await.unwrap();
    for i in 0..5 {
        a.mgr.send(&b.addr.peer, msg(i)).await.unwrap();
    }
    assert_eq!(recv_n(&mut b.incoming, a.addr.peer, 5).await.len(), 5);
    // Everything acknowledged before the link goes.
    while a.mgr.metrics_snapshot().messages_acked < 5 {
        tokio::task::yield_now().await;
    }
    net.drop_connections(a.addr.peer, b.addr.peer);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(a.mgr.peers().is_empty(), "a forgot b");
    assert_eq!(b.mgr.peers(), vec![a.addr.peer], "b still remembers a");

    for i in 5..10 {
        a.mgr.send(&b.addr.peer, msg(i)).await.unwrap();
    }
    let got: Vec<u32> = recv_n(&mut b.incoming, a.addr.peer, 5)
        .await
        .iter()
        .map(|m| index(m))
        .collect();
    assert_eq!(got, (5..10).collect::<Vec<_>>());
    // b acknowledges once its application took them; a hears it shortly.
    for _ in 0..10_000 {
        if a.mgr.metrics_snapshot().messages_acked >= 10 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let snap = a.mgr.metrics_snapshot();
    assert_eq!(snap.messages_acked, 10, "the new ones are acknowledged too");
    assert_eq!(
        snap.errors.total(),
        0,
        "no protocol violation, no failed dial"
    );
    a.mgr.shutdown(Duration::from_secs(5)).await;
    assert!(handed_back(&mut a.events).is_empty());
}

#[tokio::test(start_paused = true)]
async fn messages_for_an_unreachable_peer_come_back_after_unreachable_after() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config
        .max_failed_dials(1000)
        .unreachable_after(Duration::from_secs(10));
    config
        .backoff_mut()
        .base(Duration::from_secs(1))
        .cap(Duration::from_secs(60));
    let mut a = node_with(&net, "a", config);
    let b = node(&net, "b");
    a.mgr.connect(b.addr).await.unwrap();
    net.cut(a.addr.peer, b.addr.peer);
    let start = tokio::time::Instant::now();
    for i in 0..10 {
        a.mgr.send(&b.addr.peer, msg(i)).await.unwrap();
    }
    let mut back = Vec::new();
    while back.len() < 10 {
        match a.events.recv().await.unwrap() {
            Event::Undelivered {
                messages,
                reason,
                maybe_delivered,
                ..
            } => {
                assert_eq!(reason, UndeliveredReason::Unreachable);
                assert!(!maybe_delivered, "never written: certainly not delivered");
                back.extend(messages);
            }
            Event::StateChanged { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(10),
        "handed back too early: {waited:?}"
    );
    assert!(
        waited <= Duration::from_secs(11),
        "handed back too late: {waited:?}"
    );
    assert_eq!(back, (0..10).map(msg).collect::<Vec<_>>(), "in send order");
}

#[tokio::test]
async fn incoming_and_events_end_after_shutdown() {
    let net = MemoryNetwork::new();
    let mut a = node(&net, "a");
    let b = node(&net, "b");
    b.mgr.connect(a.addr).await.unwrap();
    b.mgr.send(&a.addr.peer, msg(1)).await.unwrap();
    b.mgr.shutdown(Duration::from_secs(1)).await;
    a.mgr.shutdown(Duration::from_secs(1)).await;
    // What arrived before the shutdown is still there, then the stream ends.
    let mut got = Vec::new();
    while let Some((_, m)) = a.incoming.recv().await {
        got.push(m);
    }
    assert!(got.len() <= 1);
    assert!(a.incoming.recv().await.is_none());
    let mut events = 0;
    while a.events.recv().await.is_some() {
        events += 1;
    }
    assert!(events > 0, "a saw b's connection come and go");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_cannot_wedge_the_writer() {
    // Small pipes: a's writes block as soon as b's reader stops.
    let net = MemoryNetwork::with_pipe_capacity(4096);
    let (mut a, b) = sender_and_slow_reader(&net);
    a.mgr.connect(b.addr).await.unwrap();
    // b's application never reads: b's reader blocks, its pipe fills, a's write blocks.
    let mut accepted = 0u64;
    for i in 0..20_000 {
        if a.mgr.try_send(&b.addr.peer, msg(i)).is_ok() {
            accepted += 1;
        }
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let snap = a.mgr.metrics_snapshot();
    assert!(
        snap.errors.get(qudag_metrics::ErrorKind::AckTimeout) >= 1,
        "the blocked write timed out"
    );
    // The driver is free: shutdown completes and accounts for everything.
    a.mgr.shutdown(Duration::from_secs(1)).await;
    let back = handed_back(&mut a.events).len() as u64;
    assert_eq!(a.mgr.metrics_snapshot().messages_acked + back, accepted);
    drop(b);
}

#[tokio::test]
async fn send_many_delivers_in_order_through_a_queue_smaller_than_the_call() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    // 1000 messages through a 16-slot queue: 63 chunks, most waiting for room.
    config.queue_capacity(16);
    let a = node_with(&net, "a", config);
    let mut b = node(&net, "b");
    a.mgr.connect(b.addr).await.unwrap();
    let n = 1000u32;
    let first: Vec<Bytes> = (0..n / 2).map(msg).collect();
    let second: Vec<Bytes> = (n / 2..n).map(msg).collect();
    let send = async {
        a.mgr.send_many(&b.addr.peer, first).await.unwrap();
        a.mgr.send(&b.addr.peer, msg(n)).await.unwrap();
        a.mgr.send_many(&b.addr.peer, second).await.unwrap();
        a.mgr.send_many(&b.addr.peer, Vec::new()).await.unwrap();
    };
    let (got, ()) = tokio::join!(recv_n(&mut b.incoming, a.addr.peer, n as usize + 1), send);
    let idx: Vec<u32> = got.iter().map(|m| index(m)).collect();
    let expect: Vec<u32> = (0..n / 2).chain([n]).chain(n / 2..n).collect();
    assert_eq!(idx, expect, "in call order, exactly once");
    a.mgr.shutdown(Duration::from_secs(5)).await;
    let snap = a.mgr.metrics_snapshot();
    assert_eq!(snap.messages_queued, u64::from(n) + 1);
    assert_eq!(snap.messages_acked, u64::from(n) + 1);
    assert_eq!(snap.queued_messages, 0, "the queue gauge returns to zero");
}

#[tokio::test]
async fn send_many_errors_hand_back_every_unsent_message_in_order() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config.batch_mut().max_message_len(100);
    let mut a = node_with(&net, "a", config);
    let mut b = node(&net, "b");
    let msgs = |r: std::ops::Range<u32>| -> Vec<Bytes> { r.map(msg).collect() };

    let stranger = PeerId::from_public_key(b"stranger");
    let err = a.mgr.send_many(&stranger, msgs(0..3)).await.unwrap_err();
    assert_eq!(err.accepted, 0);
    assert_eq!(err.reason, SendManyReason::UnknownPeer { peer: stranger });
    assert_eq!(err.unsent, msgs(0..3));

    a.mgr.connect(b.addr).await.unwrap();
    // One message over the limit refuses the whole call: nothing is queued.
    let mut with_big = msgs(0..3);
    with_big.insert(2, Bytes::from(vec![0u8; 101]));
    let err = a
        .mgr
        .send_many(&b.addr.peer, with_big.clone())
        .await
        .unwrap_err();
    assert_eq!(err.accepted, 0);
    assert_eq!(
        err.reason,
        SendManyReason::TooLarge {
            index: 2,
            len: 101,
            max: 100
        }
    );
    assert_eq!(err.unsent, with_big);
    assert_eq!(a.mgr.metrics_snapshot().messages_queued, 0);

    // The messages of a refused call never arrive; the next call's do.
    a.mgr.send_many(&b.addr.peer, msgs(10..12)).await.unwrap();
    let got = recv_n(&mut b.incoming, a.addr.peer, 2).await;
    assert_eq!(got, msgs(10..12));

    a.mgr.shutdown(Duration::from_secs(1)).await;
    let err = a
        .mgr
        .send_many(&b.addr.peer, msgs(20..25))
        .await
        .unwrap_err();
    assert_eq!((err.accepted, err.reason), (0, SendManyReason::Shutdown));
    assert_eq!(err.unsent, msgs(20..25));
    assert!(handed_back(&mut a.events).is_empty());
}

/// Reads frames from `reader` until one is decoded; `None` at the end of the
/// stream or when the connection closes.
async fn next_frame(
    reader: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
    decoder: &mut qudag_batch::FrameDecoder,
    buf: &mut bytes::BytesMut,
) -> Option<qudag_batch::Frame> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(frame) = decoder.decode(buf).expect("the manager's frames decode") {
            return Some(frame);
        }
        if reader.read_buf(buf).await.unwrap_or(0) == 0 {
            return None;
        }
    }
}

/// Over a transport that carries the listener's hello (its incarnation,
/// known when `dial` returns), the dialer's first batch follows its own
/// RESUME at once: it does not wait a round trip for the listener's RESUME.
/// A raw listener that writes nothing at all receives it. When that
/// listener comes back as another incarnation, the hello alone tells the
/// dialer so: the unacknowledged message goes back as `PeerRestarted`
/// (maybe delivered), before any RESUME, and is not written to the new
/// incarnation.
#[tokio::test(start_paused = true)]
async fn with_the_listeners_hello_the_first_batch_does_not_wait_for_its_resume() {
    use qudag_batch::{CodecLimits, Frame, FrameDecoder};
    use qudag_net::Transport;
    const GUARD: Duration = Duration::from_secs(20);

    let net = MemoryNetwork::new();
    let mut a = node(&net, "a");
    let id = PeerId::from_public_key(b"raw listener");
    let raw = net.bind(id);
    raw.set_incarnation(5);
    let to = PeerAddr::new(id, raw.local_addr());
    a.mgr.connect(to).await.unwrap();
    a.mgr.send(&id, msg(0)).await.unwrap();

    let conn = raw.accept().await.unwrap();
    let (_w, mut r) = conn.open_stream().await.unwrap();
    let mut decoder = FrameDecoder::new(CodecLimits::default());
    let mut buf = bytes::BytesMut::new();
    let (resume, batch) = support::guard("the first batch, without our RESUME", GUARD, async {
        let resume = next_frame(&mut *r, &mut decoder, &mut buf).await;
        let batch = next_frame(&mut *r, &mut decoder, &mut buf).await;
        (resume, batch)
    })
    .await;
    assert!(matches!(resume, Some(Frame::Resume(_))), "{resume:?}");
    let Some(Frame::Batch(batch)) = batch else {
        panic!("expected the batch, got {batch:?}");
    };
    assert_eq!(batch.first(), 0);

    // The listener "restarts": the connection goes, its hello changes.
    raw.set_incarnation(6);
    conn.close(0, b"restart");
    drop((conn, _w, r));
    let conn = support::guard("the redial", GUARD, raw.accept())
        .await
        .unwrap();
    let (_w, mut r) = conn.open_stream().await.unwrap();
    let mut decoder = FrameDecoder::new(CodecLimits::default());
    let mut buf = bytes::BytesMut::new();
    let resume = support::guard("the dialer's RESUME", GUARD, async {
        next_frame(&mut *r, &mut decoder, &mut buf).await
    })
    .await;
    assert!(matches!(resume, Some(Frame::Resume(_))), "{resume:?}");
    // The hello was taken before that RESUME was written.
    assert_eq!(
        handed_back(&mut a.events),
        vec![(msg(0), true, UndeliveredReason::PeerRestarted)]
    );
    // Nothing follows on the new connection: the message is not resent.
    a.mgr.shutdown(Duration::from_secs(1)).await;
    let rest = support::guard("the end of the stream", GUARD, async {
        next_frame(&mut *r, &mut decoder, &mut buf).await
    })
    .await;
    assert!(rest.is_none(), "{rest:?}");
}
