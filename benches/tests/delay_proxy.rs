//! The delay proxy: datagrams go through in both directions, in order, each
//! held for the configured delay (read on tokio's paused clock, not the
//! wall clock); it refuses non-loopback servers and closes its socket when
//! closed.

use std::net::SocketAddr;
use std::time::Duration;

use qudag_benches::delay_proxy::DelayProxy;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// A UDP echo server on 127.0.0.1; the task ends when aborted.
async fn echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    (addr, task)
}

#[tokio::test(start_paused = true)]
async fn datagrams_round_trip_in_order_after_both_delays() {
    let (server, task) = echo().await;
    let one_way = Duration::from_millis(10);
    let proxy = DelayProxy::start(server, one_way).await.unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(proxy.addr()).await.unwrap();
    let t0 = Instant::now();
    for m in [b"one".as_slice(), b"two", b"three"] {
        client.send(m).await.unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        let n = client.recv(&mut buf).await.unwrap();
        got.push(buf[..n].to_vec());
    }
    // Paused clock: this is the proxy's timer arithmetic, not a measurement.
    assert!(t0.elapsed() >= 2 * one_way, "{:?}", t0.elapsed());
    assert_eq!(got, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    let stats = proxy.stats();
    assert_eq!(stats.received.load(std::sync::atomic::Ordering::Relaxed), 6);
    assert_eq!(stats.dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    proxy.close().await;
    task.abort();
}

#[tokio::test]
async fn a_closed_proxy_no_longer_listens() {
    let (server, task) = echo().await;
    let proxy = DelayProxy::start(server, Duration::from_millis(1))
        .await
        .unwrap();
    let addr = proxy.addr();
    proxy.close().await;
    // A connected UDP socket learns of the closed port from the ICMP reply.
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(addr).await.unwrap();
    client.send(b"anyone?").await.unwrap();
    let mut buf = [0u8; 16];
    let err = client.recv(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    task.abort();
}

#[tokio::test]
async fn only_loopback_servers_are_accepted() {
    let err = DelayProxy::start("192.0.2.1:4433".parse().unwrap(), Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
