//! Protocol versions: a peer that speaks only `qudag/1` (the version before
//! peer sessions) or `qudag/2` (before the listener's hello) is refused
//! during the TLS handshake, in both directions, with TLS alert
//! `no_application_protocol` (QUIC error 0x178), before any frame is
//! exchanged (docs/PROTOCOL.md §10).

use std::time::Duration;

use qudag_benches::{quic_manager, raw_client_alpn, raw_server_alpn};
use qudag_net::{ManagerConfig, NetError, PeerAddr, PeerId, QuicConfig, TransportError};

/// TLS alert `no_application_protocol` (RFC 8446 §6.2).
const NO_APPLICATION_PROTOCOL: u8 = 120;

/// The versions before this one.
const OLD: [&[u8]; 2] = [b"qudag/1", b"qudag/2"];

#[tokio::test]
async fn an_older_dialer_is_refused_during_the_handshake() {
    for alpn in OLD {
        an_older_dialer_is_refused(alpn).await;
    }
}

async fn an_older_dialer_is_refused(alpn: &[u8]) {
    let (mgr, addr) = quic_manager(ManagerConfig::default(), QuicConfig::default()).unwrap();
    let old = raw_client_alpn(0, 1, alpn).unwrap();
    let attempt = old.connect(addr.addr, "qudag").unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .expect("refused at once")
        .expect_err("an older dialer is refused");
    match err {
        quinn::ConnectionError::ConnectionClosed(close) => assert_eq!(
            close.error_code,
            quinn::TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL),
            "refused with no_application_protocol: {close:?}"
        ),
        other => panic!("unexpected refusal {other:?}"),
    }
    assert_eq!(mgr.open_connections(), 0);
    mgr.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn an_older_listener_is_refused_with_a_clear_error() {
    for alpn in OLD {
        an_older_listener_is_refused(alpn).await;
    }
}

async fn an_older_listener_is_refused(alpn: &[u8]) {
    let old = raw_server_alpn(1, 1, alpn).unwrap();
    let to = PeerAddr::new(PeerId::from_bytes([7; 32]), old.local_addr().unwrap());
    let server = old.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let _ = incoming.await;
        }
    });
    let (mgr, _) = quic_manager(ManagerConfig::default(), QuicConfig::default()).unwrap();
    let err = mgr
        .connect(to)
        .await
        .expect_err("an older listener is refused");
    let NetError::Transport(TransportError::Handshake { detail, .. }) = &err else {
        panic!("expected a handshake error, got {err:?}");
    };
    assert!(
        detail.contains("protocol version mismatch") && detail.contains("qudag/3"),
        "the error names the protocol mismatch: {detail}"
    );
    mgr.shutdown(Duration::ZERO).await;
}
