//! MemoryTransport: semantics and fault injection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use proptest::prelude::*;
use qudag_transport::{
    CloseReason, Connection, MemoryNetwork, MemoryTransport, PeerAddr, PeerId, Side, Transport,
    TransportError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

fn peer(name: &str) -> PeerId {
    PeerId::from_public_key(name.as_bytes())
}

fn addr_of(t: &MemoryTransport) -> PeerAddr {
    PeerAddr::new(t.local_peer(), t.local_addr())
}

async fn connect(
    a: &MemoryTransport,
    b: &MemoryTransport,
) -> (Arc<dyn Connection>, Arc<dyn Connection>) {
    let to = addr_of(b);
    let (d, l) = tokio::join!(a.dial(&to), b.accept());
    (d.expect("dial"), l.expect("accept"))
}

fn remote(code: u32, reason: &'static str) -> CloseReason {
    CloseReason::Remote {
        code,
        reason: reason.into(),
    }
}

#[tokio::test]
async fn exchange_both_ways() {
    let net = MemoryNetwork::new();
    let (a, b) = (net.bind(peer("a")), net.bind(peer("b")));
    let (d, l) = connect(&a, &b).await;
    assert_eq!((d.peer(), l.peer()), (peer("b"), peer("a")));
    assert_eq!((d.side(), l.side()), (Side::Dialer, Side::Listener));
    assert_eq!(d.remote_addr(), b.local_addr());
    assert_eq!(l.remote_addr(), a.local_addr());

    let (mut dtx, mut drx) = d.open_stream().await.expect("stream");
    let (mut ltx, mut lrx) = l.open_stream().await.expect("stream");
    dtx.write_all(b"ping").await.expect("write");
    ltx.write_all(b"pong").await.expect("write");
    let mut buf = [0u8; 4];
    lrx.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
    drx.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"pong");
    assert!(
        matches!(d.open_stream().await, Err(TransportError::StreamTaken { peer: p }) if p == peer("b"))
    );

    // Dropping a writer is a clean end of stream.
    drop(dtx);
    let mut rest = Vec::new();
    lrx.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty());
    assert_eq!(net.live_connections(), 1);
}

/// The listener's incarnation, as set when it was dialed, reaches the dialer.
#[tokio::test]
async fn the_listeners_incarnation_reaches_the_dialer() {
    let net = MemoryNetwork::new();
    let (a, b) = (net.bind(peer("a")), net.bind(peer("b")));
    let (d, l) = connect(&a, &b).await;
    assert_eq!((d.peer_incarnation(), l.peer_incarnation()), (None, None));
    b.set_incarnation(9);
    a.set_incarnation(8);
    let (d, l) = connect(&a, &b).await;
    assert_eq!(
        (d.peer_incarnation(), l.peer_incarnation()),
        (Some(9), None)
    );
}

#[tokio::test]
async fn unknown_address_is_unreachable() {
    let net = MemoryNetwork::new();
    let a = net.bind(peer("a"));
    let to = PeerAddr::new(peer("b"), "127.0.0.1:9".parse().expect("addr"));
    let err = a.dial(&to).await.expect_err("nobody there");
    assert!(
        matches!(err, TransportError::Unreachable { peer: p, addr, .. } if p == peer("b") && addr == to.addr)
    );
}

#[tokio::test]
async fn wrong_peer_id_is_a_mismatch() {
    let net = MemoryNetwork::new();
    let (a, b) = (net.bind(peer("a")), net.bind(peer("b")));
    let to = PeerAddr::new(peer("c"), b.local_addr());
    let err = a.dial(&to).await.expect_err("mismatch");
    assert!(
        matches!(err, TransportError::PeerIdMismatch { expected, actual } if expected == peer("c") && actual == peer("b"))
    );
}

#[tokio::test]
async fn allow_list_refuses_strangers() {
    let net = MemoryNetwork::new();
    let (friend, stranger, host) = (
        net.bind(peer("f")),
        net.bind(peer("s")),
        net.bind(peer("h")),
    );
    host.set_allow_list(Some([peer("f")]));
    let err = stranger.dial(&addr_of(&host)).await.expect_err("refused");
    assert!(matches!(err, TransportError::Denied { peer: p } if p == peer("h")));
    let (_d, l) = connect(&friend, &host).await;
    assert_eq!(l.peer(), peer("f"));
    host.set_allow_list(None::<Vec<PeerId>>);
    let (_d, l) = connect(&stranger, &host).await;
    assert_eq!(l.peer(), peer("s"));
}

async fn close_from(side: Side) {
    let net = MemoryNetwork::new();
    let (a, b) = (net.bind(peer("a")), net.bind(peer("b")));
    let (d, l) = connect(&a, &b).await;
    let (closer, other) = match side {
        Side::Dialer => (d, l),
        Side::Listener => (l, d),
    };
    let (mut ctx, _crx) = closer.open_stream().await.expect("stream");
    let (_otx, mut orx) = other.open_stream().await.expect("stream");
    ctx.write_all(b"unread").await.expect("write");
    closer.close(42, b"bye");
    let mut buf = [0u8; 1];
    assert!(
        orx.read(&mut buf).await.is_err(),
        "pending data is discarded, read fails"
    );
    assert!(ctx.write_all(b"x").await.is_err());
    assert_eq!(other.close_reason(), Some(remote(42, "bye")));
    assert_eq!(other.closed().await, remote(42, "bye"));
    assert_eq!(
        closer.close_reason(),
        Some(CloseReason::Local {
            code: 42,
            reason: "bye".into()
        })
    );
    assert!(!other.is_alive());
    // A second close changes nothing.
    other.close(1, b"late");
    assert_eq!(other.close_reason(), Some(remote(42, "bye")));
    assert!(matches!(
        other.open_stream().await,
        Err(TransportError::Closed { .. })
    ));
    assert_eq!(net.live_connections(), 0);
}

#[tokio::test]
async fn close_from_dialer_is_seen_by_listener() {
    close_from(Side::Dialer).await;
}

#[tokio::test]
async fn close_from_listener_is_seen_by_dialer() {
    close_from(Side::Listener).await;
}

#[tokio::test]
async fn dropping_the_last_handle_closes() {
    let net = MemoryNetwork::new();
    let (a, b) = (net.bind(peer("a")), net.bind(peer("b")));
    let (d, l) = connect(&a, &b).await;
    let d2 = d.clone();
    drop(d);
    assert!(l.is_alive(), "another handle is still alive");
    drop(d2);
    assert_eq!(l.close_reason(), Some(remote(0, "dropped")));
}

#[tokio::test]
async fn writer_waits_when_the_buffer_is_full() {
    let net = MemoryNetwork::with_pipe_capacity(16);
    let (a, b) = (net.bind(peer("a")), net.bind(peer("b")));
    let (d, l) = connect(&a, &b).await;
    let (mut tx, _) = d.open_stream().await.expect("stream");
    let (_, mut rx) = l.open_stream().await.expect("stream");
    tx.write_all(&[1u8; 16]).await.expect("fits");

    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        Pin::new(&mut tx).poll_write(&mut cx, b"x").is_pending(),
        "a full buffer makes the writer wait"
    );
    let mut four = [0u8; 4];
    rx.read_exact(&mut four).await.expect("read");
    match Pin::new(&mut tx).poll_write(&mut cx, &[2u8; 10]) {
        Poll::Ready(Ok(n)) => assert_eq!(n, 4, "exactly the freed room is accepted"),
        other => panic!("writer must make progress after a read: {other:?}"),
    }
    // And a reader with nothing to read waits too.
    let mut rest = [0u8; 16];
    rx.read_exact(&mut rest).await.expect("read");
    let mut one = [0u8; 1];
    let mut buf = ReadBuf::new(&mut one);
    assert!(Pin::new(&mut rx).poll_read(&mut cx, &mut buf).is_pending());
}

#[tokio::test]
async fn refuse_next_dials_refuses_exactly_n() {
    let net = MemoryNetwork::new();
    let (a, b) = (net.bind(peer("a")), net.bind(peer("b")));
    net.refuse_next_dials(peer("b"), 2);
    for _ in 0..2 {
        let err = a.dial(&addr_of(&b)).await.expect_err("refused");
        assert!(matches!(err, TransportError::Refused { peer: p, .. } if p == peer("b")));
    }
    let (d, _l) = connect(&a, &b).await;
    assert!(d.is_alive());
}

#[tokio::test(start_paused = true)]
async fn dial_delay_holds_the_dial() {
    let net = MemoryNetwork::new();
    let (a, b) = (net.bind(peer("a")), net.bind(peer("b")));
    let delay = Duration::from_secs(3);
    net.set_dial_delay(peer("b"), Some(delay));
    let to = addr_of(&b);
    let start = tokio::time::Instant::now();
    let mut dial = Box::pin(a.dial(&to));
    tokio::select! {
        biased;
        _ = &mut dial => panic!("dial finished before its delay"),
        _ = tokio::time::sleep(delay - Duration::from_millis(1)) => {}
    }
    let conn = dial.await.expect("dial after the delay");
    assert!(tokio::time::Instant::now() - start >= delay);
    assert!(conn.is_alive());

    net.set_dial_delay(peer("b"), None);
    let start = tokio::time::Instant::now();
    a.dial(&to).await.expect("no delay");
    assert_eq!(tokio::time::Instant::now(), start, "no virtual time passes");
}

#[tokio::test]
async fn cut_loses_connections_and_blocks_dials_until_heal() {
    let net = MemoryNetwork::new();
    let (a, b, c) = (
        net.bind(peer("a")),
        net.bind(peer("b")),
        net.bind(peer("c")),
    );
    let (d, l) = connect(&a, &b).await;
    let (other, _other_l) = connect(&a, &c).await;
    let (_tx, mut rx) = d.open_stream().await.expect("stream");
    net.cut(peer("b"), peer("a")); // order of the pair does not matter
    assert!(matches!(d.close_reason(), Some(CloseReason::Lost(_))));
    assert!(matches!(l.close_reason(), Some(CloseReason::Lost(_))));
    assert!(rx.read(&mut [0u8; 1]).await.is_err());
    assert!(other.is_alive(), "other links are untouched");
    for (from, to) in [(&a, &b), (&b, &a)] {
        let err = from.dial(&addr_of(to)).await.expect_err("cut");
        assert!(matches!(err, TransportError::Unreachable { .. }));
    }
    net.heal(peer("a"), peer("b"));
    let (d, _l) = connect(&a, &b).await;
    assert!(d.is_alive());
}

#[tokio::test]
async fn drop_connections_loses_live_links_only() {
    let net = MemoryNetwork::new();
    let (a, b) = (net.bind(peer("a")), net.bind(peer("b")));
    let (d1, l1) = connect(&a, &b).await;
    let (d2, _l2) = connect(&b, &a).await;
    assert_eq!(net.drop_connections(peer("a"), peer("b")), 2);
    for c in [&d1, &l1, &d2] {
        assert!(matches!(c.close_reason(), Some(CloseReason::Lost(_))));
    }
    assert!(matches!(l1.closed().await, CloseReason::Lost(_)));
    assert_eq!(net.drop_connections(peer("a"), peer("b")), 0);
    let (d, _l) = connect(&a, &b).await;
    assert!(d.is_alive(), "dials still work after a drop");
}

#[tokio::test]
async fn exported_keys_agree_and_differ() {
    let net = MemoryNetwork::new();
    let (a, b) = (net.bind(peer("a")), net.bind(peer("b")));
    let (d1, l1) = connect(&a, &b).await;
    let (d2, l2) = connect(&a, &b).await;
    let export = |c: &Arc<dyn Connection>, label: &[u8]| {
        let mut k = [0u8; 32];
        c.export_keying_material(&mut k, label, b"")
            .expect("export");
        k
    };
    assert_eq!(export(&d1, b"x"), export(&l1, b"x"));
    assert_eq!(export(&d2, b"x"), export(&l2, b"x"));
    assert_ne!(export(&d1, b"x"), export(&d2, b"x"));
    assert_ne!(export(&d1, b"x"), export(&d1, b"y"));
}

#[tokio::test]
async fn endpoint_close_wakes_accept_and_closes_connections() {
    let net = MemoryNetwork::new();
    let (a, b) = (net.bind(peer("a")), Arc::new(net.bind(peer("b"))));
    let (d, l) = connect(&a, &b).await;
    let pending = tokio::spawn({
        let b = b.clone();
        async move { b.accept().await }
    });
    tokio::task::yield_now().await;
    b.close();
    assert!(matches!(
        pending.await.expect("task"),
        Err(TransportError::EndpointClosed)
    ));
    assert_eq!(l.close_reason(), Some(CloseReason::EndpointClosed));
    assert_eq!(d.closed().await, remote(0, "endpoint closed"));
    assert!(matches!(
        b.dial(&addr_of(&a)).await,
        Err(TransportError::EndpointClosed)
    ));
    let err = a
        .dial(&PeerAddr::new(peer("b"), b.local_addr()))
        .await
        .expect_err("gone");
    assert!(matches!(err, TransportError::Unreachable { .. }));
    // The address can be bound again.
    let b2 = net.bind_at(peer("b"), b.local_addr()).expect("rebind");
    let (d, _l) = connect(&a, &b2).await;
    assert!(d.is_alive());
    assert!(matches!(
        net.bind_at(peer("x"), b2.local_addr()),
        Err(TransportError::Setup(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the buffer size and the write chunking, the reader gets the
    /// same bytes, in order, then end of stream.
    #[test]
    fn bytes_arrive_in_order(
        cap in 1usize..64,
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..20),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let got = rt.block_on(async {
            let net = MemoryNetwork::with_pipe_capacity(cap);
            let (a, b) = (net.bind(peer("a")), net.bind(peer("b")));
            let (d, l) = connect(&a, &b).await;
            let (mut tx, _) = d.open_stream().await.expect("stream");
            let (_, mut rx) = l.open_stream().await.expect("stream");
            let to_send = chunks.clone();
            let writer = async move {
                for c in &to_send {
                    tx.write_all(c).await.expect("write");
                }
                tx.shutdown().await.expect("shutdown");
            };
            let mut got = Vec::new();
            let (_, read) = tokio::join!(writer, rx.read_to_end(&mut got));
            read.expect("read");
            got
        });
        prop_assert_eq!(got, chunks.concat());
    }
}
