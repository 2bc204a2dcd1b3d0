//! Floods: 1,000 concurrent `connect` calls under a limit of 100, and a
//! flood of half-open inbound QUIC handshakes while a good peer connects.
//!
//! (10,000 concurrent connections between two processes is a load test: it
//! lives in `cargo xtask bench`, outside the default test run.)

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qudag_net::{
    ConnectionManager, Identity, ManagerConfig, MemoryNetwork, NetError, PeerAddr, QuicConfig,
    QuicTransport, Transport, TransportError,
};
use support::{guard, memory_node, quic_node};

const GUARD: Duration = Duration::from_secs(60);

/// 1,000 concurrent `connect` calls to 1,000 distinct peers with
/// `max_connections(100)`: the count of open connections never exceeds 100,
/// every refusal is a typed `Limit` error, no refused dial keeps a slot, and
/// shutdown leaves none taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connects_never_exceed_the_limit() {
    const PEERS: usize = 1_000;
    const LIMIT: usize = 100;
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config
        .pool_mut()
        .max_connections(LIMIT)
        .max_pending_dials(PEERS);
    let hub = memory_node(&net, "hub", config);
    let targets: Vec<_> = (0..PEERS)
        .map(|i| memory_node(&net, &format!("target-{i}"), ManagerConfig::default()))
        .collect();

    // Samples the limiter's count while the connects run (no event to await:
    // the point is to observe every intermediate value we can).
    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (mgr, done, max_seen) = (hub.mgr.clone(), done.clone(), max_seen.clone());
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !done.load(Ordering::Acquire) {
                max_seen.fetch_max(mgr.open_connections(), Ordering::AcqRel);
                samples += 1;
                tokio::task::yield_now().await;
            }
            samples
        })
    };
    let connects: Vec<_> = targets
        .iter()
        .map(|t| {
            let (mgr, to): (ConnectionManager, PeerAddr) = (hub.mgr.clone(), t.addr);
            tokio::spawn(async move { mgr.connect(to).await })
        })
        .collect();
    let mut ok = 0usize;
    let mut limited = 0usize;
    for c in connects {
        match guard("a connect returns", GUARD, c).await.expect("task") {
            Ok(()) => ok += 1,
            Err(NetError::Limit(_)) => limited += 1,
            Err(other) => panic!("unexpected connect error {other:?}"),
        }
    }
    done.store(true, Ordering::Release);
    let samples = sampler.await.expect("sampler");
    let max = max_seen.load(Ordering::Acquire);
    eprintln!(
        "connect flood: {ok} connected, {limited} refused, max open {max} over {samples} samples"
    );

    assert!(max <= LIMIT, "open connections peaked at {max} > {LIMIT}");
    assert_eq!(ok + limited, PEERS);
    assert!(ok > 0 && ok <= LIMIT, "{ok} connected");
    assert!(limited >= PEERS - LIMIT);
    assert_eq!(hub.mgr.open_connections(), ok, "refused dials hold no slot");
    let snap = hub.mgr.metrics_snapshot();
    assert!(snap.errors.get(qudag_metrics::ErrorKind::LimitReached) >= limited as u64);

    hub.mgr.shutdown(Duration::from_secs(2)).await;
    assert_eq!(
        hub.mgr.open_connections(),
        0,
        "no slot is taken after shutdown"
    );
    for t in &targets {
        t.mgr.shutdown(Duration::from_millis(100)).await;
    }
}

/// A genuine client Initial's destination connection ID (long header:
/// flags, version, DCID length, DCID), to tell captured Initials apart.
fn dcid(datagram: &[u8]) -> Option<Vec<u8>> {
    let len = usize::from(*datagram.get(5)?);
    datagram.get(6..6 + len).map(<[u8]>::to_vec)
}

/// Half-open inbound handshakes (replayed client Initials from a socket that
/// never answers) hold at most `max_handshakes` slots: a good peer is
/// refused while they hold them, with a typed error, and gets in once they
/// time out; none of them becomes a peer of the manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshake_flood_is_bounded_and_a_good_peer_gets_in() {
    const SLOTS: usize = 16;
    const FLOOD: usize = 64;
    let mut quic = QuicConfig::default();
    quic.max_handshakes(SLOTS)
        .handshake_timeout(Duration::from_millis(1500));
    let mut victim = quic_node(ManagerConfig::default(), quic);
    let mut good_config = ManagerConfig::default();
    good_config
        .backoff_mut()
        .base(Duration::from_millis(50))
        .cap(Duration::from_millis(200));
    let good = quic_node(good_config, QuicConfig::default());

    // Capture distinct genuine Initials: a client dials a silent relay socket.
    let relay = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let capturer = Arc::new(
        QuicTransport::bind(
            "127.0.0.1:0".parse().expect("addr"),
            &Identity::generate().expect("identity"),
            QuicConfig::default(),
        )
        .expect("bind"),
    );
    let to_relay = PeerAddr::new(victim.addr.peer, relay.local_addr().expect("addr"));
    let dials: Vec<_> = (0..FLOOD)
        .map(|_| {
            let c = capturer.clone();
            tokio::spawn(async move {
                let _ = c.dial(&to_relay).await;
            })
        })
        .collect();
    let mut initials: Vec<Vec<u8>> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    guard("capture Initials", GUARD, async {
        let mut buf = vec![0u8; 65536];
        while initials.len() < FLOOD {
            let (n, _) = relay.recv_from(&mut buf).await.expect("recv");
            if let Some(id) = dcid(&buf[..n]) {
                if ids.insert(id) {
                    initials.push(buf[..n].to_vec());
                }
            }
        }
    })
    .await;
    for d in dials {
        d.abort();
    }
    capturer.close();

    // The flood: every Initial replayed to the victim from the silent relay.
    for i in &initials {
        relay.send_to(i, victim.addr.addr).await.expect("send");
    }

    // The good peer is refused while the half-open handshakes hold every slot...
    let mut refused = 0u32;
    guard("the good peer gets in", GUARD, async {
        loop {
            match good.mgr.connect(victim.addr).await {
                Ok(()) => break,
                Err(NetError::Transport(TransportError::Refused { .. })) => refused += 1,
                // Waiting out the backoff the manager asks for.
                Err(NetError::Backoff { retry_at, .. }) => {
                    tokio::time::sleep_until(retry_at.into()).await;
                }
                Err(other) => panic!("unexpected connect error {other:?}"),
            }
        }
    })
    .await;
    assert!(refused > 0, "the flood held every handshake slot at first");
    // ...and once they time out it connects and exchanges messages.
    good.mgr
        .send(&victim.addr.peer, Bytes::from_static(b"hello"))
        .await
        .expect("accepted");
    let (from, m) = guard("the good message arrives", GUARD, victim.incoming.recv())
        .await
        .expect("victim alive");
    assert_eq!((from, &m[..]), (good.addr.peer, &b"hello"[..]));
    assert_eq!(
        victim.mgr.peers(),
        vec![good.addr.peer],
        "no half-open handshake became a peer"
    );
    assert_eq!(victim.mgr.open_connections(), 1);
    good.mgr.shutdown(Duration::from_secs(1)).await;
    victim.mgr.shutdown(Duration::from_secs(1)).await;
}
