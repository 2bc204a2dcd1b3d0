//! The manager over QUIC on 127.0.0.1: the scenarios of `memory.rs` that do
//! not need fault injection, on the real transport.

use std::time::Duration;

use bytes::Bytes;
use qudag_net::{
    ConnState, ErrorKind, ManagerConfig, NetError, PeerAddr, PeerId, QuicConfig, TransportError,
    UndeliveredReason,
};

mod support;

use support::{handed_back, index, recv_n, Node};

fn quic_node(config: ManagerConfig) -> Node {
    support::quic_node(config, QuicConfig::default())
}

fn msg(i: u32) -> Bytes {
    support::msg(i, 16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_in_both_directions_over_quic() {
    let mut a = quic_node(ManagerConfig::default());
    let mut b = quic_node(ManagerConfig::default());
    a.mgr.connect(b.addr).await.unwrap();
    let n = 20_000u32;
    let (a_mgr, b_mgr) = (a.mgr.clone(), b.mgr.clone());
    let (a_id, b_id) = (a.addr.peer, b.addr.peer);
    let send_a = tokio::spawn(async move {
        for i in 0..n {
            a_mgr.send(&b_id, msg(i)).await.unwrap();
        }
    });
    let got_b = recv_n(&mut b.incoming, a_id, n as usize).await;
    // b replies on the connection a dialed.
    assert_eq!(b.mgr.status(&a_id), Some(ConnState::Connected));
    let send_b = tokio::spawn(async move {
        for i in 0..n {
            b_mgr.send(&a_id, msg(i)).await.unwrap();
        }
    });
    let got_a = recv_n(&mut a.incoming, b_id, n as usize).await;
    send_a.await.unwrap();
    send_b.await.unwrap();
    for got in [got_a, got_b] {
        assert!(
            got.iter().map(|m| index(m)).eq(0..n),
            "in order, exactly once"
        );
    }
    a.mgr.shutdown(Duration::from_secs(5)).await;
    b.mgr.shutdown(Duration::from_secs(5)).await;
    assert!(handed_back(&mut a.events).is_empty());
    assert!(handed_back(&mut b.events).is_empty());
    let snap = a.mgr.metrics_snapshot();
    assert_eq!(snap.messages_acked, u64::from(n));
    assert!(snap.batches_sent < u64::from(n), "messages were batched");
    assert_eq!(snap.memory_bytes, 0);
}

#[tokio::test]
async fn wrong_peer_id_is_refused_before_any_message() {
    let a = quic_node(ManagerConfig::default());
    let mut b = quic_node(ManagerConfig::default());
    let impostor = PeerAddr::new(PeerId::from_public_key(b"not b"), b.addr.addr);
    match a.mgr.connect(impostor).await {
        Err(NetError::Transport(TransportError::PeerIdMismatch { expected, actual })) => {
            assert_eq!((expected, actual), (impostor.peer, b.addr.peer));
        }
        other => panic!("expected PeerIdMismatch, got {other:?}"),
    }
    assert!(b.incoming.try_recv().is_none());
    assert_eq!(a.mgr.open_connections(), 0);
}

#[tokio::test]
async fn pooled_reuse_does_not_dial_over_quic() {
    let a = quic_node(ManagerConfig::default());
    let mut b = quic_node(ManagerConfig::default());
    a.mgr.connect(b.addr).await.unwrap();
    a.mgr.send(&b.addr.peer, msg(1)).await.unwrap();
    recv_n(&mut b.incoming, a.addr.peer, 1).await;
    a.mgr.disconnect(&b.addr.peer).await.unwrap();
    assert_eq!(a.mgr.pooled_connections(), 1);
    a.mgr.connect(b.addr).await.unwrap();
    a.mgr.send(&b.addr.peer, msg(2)).await.unwrap();
    recv_n(&mut b.incoming, a.addr.peer, 1).await;
    // b accepted exactly one connection: it entered Connected once.
    let b_connected = b
        .mgr
        .metrics_snapshot()
        .state_entries
        .get(qudag_metrics::ConnState::Connected);
    assert_eq!(b_connected, 1);
    assert_eq!(a.mgr.open_connections(), 1);
    assert_eq!(a.mgr.pooled_connections(), 0);
}

#[tokio::test]
async fn connection_limit_is_typed_over_quic() {
    let mut config = ManagerConfig::default();
    config.pool_mut().max_connections(1);
    let a = quic_node(config);
    let b = quic_node(ManagerConfig::default());
    let c = quic_node(ManagerConfig::default());
    a.mgr.connect(b.addr).await.unwrap();
    assert!(matches!(
        a.mgr.connect(c.addr).await,
        Err(NetError::Limit(_))
    ));
    assert_eq!(a.mgr.open_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_gone_mid_stream_every_message_is_acked_or_handed_back() {
    let mut config = ManagerConfig::default();
    config
        .max_failed_dials(2)
        .connect_timeout(Duration::from_secs(2));
    let mut a = quic_node(config);
    let mut b = quic_node(ManagerConfig::default());
    a.mgr.connect(b.addr).await.unwrap();
    let n = 20_000u32;
    let mut accepted = 0u64;
    for i in 0..n {
        if a.mgr.send(&b.addr.peer, msg(i)).await.is_ok() {
            accepted += 1;
        }
        if i == 2_000 {
            let got = recv_n(&mut b.incoming, a.addr.peer, 1_000).await;
            assert_eq!(got.len(), 1_000);
            // b goes away at once: no grace, its endpoint closes.
            b.mgr.shutdown(Duration::ZERO).await;
        }
    }
    a.mgr.shutdown(Duration::from_secs(2)).await;
    let back = handed_back(&mut a.events);
    let acked = a.mgr.metrics_snapshot().messages_acked;
    assert_eq!(
        acked + back.len() as u64,
        accepted,
        "acked + handed back == accepted"
    );
    assert!(!back.is_empty());
    assert_ne!(a.mgr.status(&b.addr.peer), Some(ConnState::Connected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_messages_in_flight_over_quic() {
    let mut a = quic_node(ManagerConfig::default());
    let mut bcfg = ManagerConfig::default();
    bcfg.incoming_capacity(1);
    let mut b = quic_node(bcfg);
    a.mgr.connect(b.addr).await.unwrap();
    let mut accepted = 0u64;
    for i in 0..50_000u32 {
        if a.mgr.try_send(&b.addr.peer, msg(i)).is_ok() {
            accepted += 1;
        }
    }
    recv_n(&mut b.incoming, a.addr.peer, 10).await;
    a.mgr.shutdown(Duration::from_millis(300)).await;
    let back = handed_back(&mut a.events);
    let acked = a.mgr.metrics_snapshot().messages_acked;
    assert_eq!(acked + back.len() as u64, accepted);
    assert_eq!(a.mgr.metrics_snapshot().memory_bytes, 0);
    b.mgr.shutdown(Duration::ZERO).await;
}

/// `connect` waits for the listener's acceptance, so an allow-list refusal
/// is its error. `send` does not wait: its first bytes leave behind the
/// handshake, and a refusal shows up as the connection ending before the
/// peer's RESUME, which counts as a failed dial, so `max_failed_dials`
/// still hands the message back as unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_listener_is_a_connect_error_and_failed_dials_for_send() {
    let mut config = ManagerConfig::default();
    config.max_failed_dials(3);
    let mut a = quic_node(config);
    let mut quic = QuicConfig::default();
    quic.allow_list(Some(vec![PeerId::from_public_key(b"somebody else")]));
    let b = support::quic_node(ManagerConfig::default(), quic);

    let e = a.mgr.connect(b.addr).await.unwrap_err();
    assert!(
        matches!(e, NetError::Transport(TransportError::Denied { peer }) if peer == b.addr.peer),
        "{e:?}"
    );
    // The address is known now; a send dials without waiting for the word.
    // Where an attempt fails depends on when the refusal arrives: during
    // `dial` (`Refused`), while the session is set up (`Transport`), or
    // after the first bytes left (the connection ends before the peer's
    // RESUME: `DialFailed`). Each is one failed dial and one error; the
    // waits the backoff imposes are counted apart (`Backoff`).
    let failures =
        |s: &qudag_net::MetricsSnapshot| s.errors.total() - s.errors.get(ErrorKind::Backoff);
    let dials_before = failures(&a.mgr.metrics_snapshot());
    a.mgr.send(&b.addr.peer, msg(1)).await.unwrap();
    let back = support::guard("hand-back", Duration::from_secs(60), async {
        loop {
            let back = handed_back(&mut a.events);
            if !back.is_empty() {
                break back;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].2, UndeliveredReason::Unreachable);
    let s = a.mgr.metrics_snapshot();
    assert_eq!(failures(&s) - dials_before, 3, "three failed dials");
    assert_eq!(s.messages_acked, 0);
    a.mgr.shutdown(Duration::from_secs(1)).await;
    b.mgr.shutdown(Duration::from_secs(1)).await;
}

/// `add_peer` remembers an address without dialing; the first `send` dials
/// on demand and is delivered, in order with what follows, and both
/// directions work on that connection. Without `add_peer` (or `connect`)
/// the peer is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_peer_then_send_dials_on_demand_over_quic() {
    let mut a = quic_node(ManagerConfig::default());
    let mut b = quic_node(ManagerConfig::default());
    let err = a.mgr.send(&b.addr.peer, msg(0)).await.unwrap_err();
    assert!(
        matches!(err, qudag_net::SendError::UnknownPeer { .. }),
        "{err:?}"
    );
    a.mgr.add_peer(b.addr).unwrap();
    assert_eq!(a.mgr.open_connections(), 0, "add_peer does not dial");
    for i in 0..10 {
        a.mgr.send(&b.addr.peer, msg(i)).await.unwrap();
    }
    let got = recv_n(&mut b.incoming, a.addr.peer, 10).await;
    assert!(got.iter().map(|m| index(m)).eq(0..10));
    b.mgr.send(&a.addr.peer, msg(99)).await.unwrap();
    let back = recv_n(&mut a.incoming, b.addr.peer, 1).await;
    assert_eq!(index(&back[0]), 99);
    a.mgr.shutdown(Duration::from_secs(5)).await;
    b.mgr.shutdown(Duration::from_secs(5)).await;
    assert!(handed_back(&mut a.events).is_empty());
    let snap = a.mgr.metrics_snapshot();
    assert_eq!(snap.messages_acked, 10);
    assert_eq!(snap.errors.total(), 0);
    a.mgr.shutdown(Duration::from_secs(1)).await;
    assert!(matches!(a.mgr.add_peer(b.addr), Err(NetError::Shutdown)));
}
