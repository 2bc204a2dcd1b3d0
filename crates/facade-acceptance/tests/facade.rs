//! `qudag-net` as a user meets it: this crate depends on `qudag-net`,
//! `bytes` and `tokio` only. It matches every error variant, reads every
//! metrics key, wraps the transport, and sees a pooled reuse that made no
//! dial. Each test fails if the facade stops re-exporting what it needs, or
//! if the behaviour it checks changes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qudag_net::{
    BatchConfigError, CloseKind, CloseReason, ConfigError, ConnState, Connection,
    ConnectionManager, ErrorKind, Event, Events, LimitError, ManagerConfig, MemoryNetwork,
    MemoryTransport, NetError, OpenKind, ParsePeerAddrError, ParsePeerIdError, PeerAddr, PeerId,
    PeerText, RecvStream, SendError, SendManyReason, SendStream, Side, Transport, TransportError,
    UndeliveredReason, QUIC_MAX_COUNT,
};

const GRACE: Duration = Duration::from_secs(1);

// ---- a wrapped transport, as a user writes one --------------------------

/// Counts dials and accepts of the transport it wraps, and wraps each
/// connection.
#[derive(Debug)]
struct Counting {
    inner: MemoryTransport,
    dials: AtomicUsize,
    accepts: AtomicUsize,
}

#[qudag_net::async_trait]
impl Transport for Counting {
    fn local_peer(&self) -> PeerId {
        self.inner.local_peer()
    }
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }
    async fn dial(&self, to: &PeerAddr) -> Result<Arc<dyn Connection>, TransportError> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let conn = self.inner.dial(to).await?;
        Ok(Arc::new(Wrapped(conn)))
    }
    async fn accept(&self) -> Result<Arc<dyn Connection>, TransportError> {
        let conn = self.inner.accept().await?;
        self.accepts.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(Wrapped(conn)))
    }
    fn close(&self) {
        self.inner.close();
    }
    fn set_incarnation(&self, incarnation: u64) {
        self.inner.set_incarnation(incarnation);
    }
}

/// A connection passed through unchanged (where a user would count bytes
/// or inject faults).
#[derive(Debug)]
struct Wrapped(Arc<dyn Connection>);

#[qudag_net::async_trait]
impl Connection for Wrapped {
    fn peer(&self) -> PeerId {
        self.0.peer()
    }
    fn remote_addr(&self) -> SocketAddr {
        self.0.remote_addr()
    }
    fn side(&self) -> Side {
        self.0.side()
    }
    async fn open_stream(&self) -> Result<(SendStream, RecvStream), TransportError> {
        self.0.open_stream().await
    }
    fn export_keying_material(
        &self,
        out: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), TransportError> {
        self.0.export_keying_material(out, label, context)
    }
    fn rtt(&self) -> Option<Duration> {
        self.0.rtt()
    }
    fn close(&self, code: u32, reason: &[u8]) {
        self.0.close(code, reason);
    }
    fn close_reason(&self) -> Option<CloseReason> {
        self.0.close_reason()
    }
    async fn closed(&self) -> CloseReason {
        self.0.closed().await
    }
    async fn accepted(&self) -> Result<(), TransportError> {
        self.0.accepted().await
    }
    fn peer_incarnation(&self) -> Option<u64> {
        self.0.peer_incarnation()
    }
}

fn counting(net: &MemoryNetwork, name: &str) -> Arc<Counting> {
    Arc::new(Counting {
        inner: net.bind(PeerId::from_public_key(name.as_bytes())),
        dials: AtomicUsize::new(0),
        accepts: AtomicUsize::new(0),
    })
}

fn addr_of(t: &dyn Transport) -> PeerAddr {
    PeerAddr::new(t.local_peer(), t.local_addr())
}

/// Every state change queued in `events` for `peer`, in order.
fn states(events: &mut Events, peer: PeerId) -> Vec<(ConnState, ConnState)> {
    let mut out = Vec::new();
    while let Some(ev) = events.try_recv() {
        if let Event::StateChanged { peer: p, from, to } = ev {
            if p == peer {
                out.push((from, to));
            }
        }
    }
    out
}

// ---- reuse is observable ------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pooled_reuse_makes_no_dial_and_is_counted_as_reuse() {
    let net = MemoryNetwork::new();
    let (a_t, b_t) = (counting(&net, "alice"), counting(&net, "bob"));
    let b_addr = addr_of(&*b_t);
    let alice = ConnectionManager::new(ManagerConfig::default(), a_t.clone()).unwrap();
    let bob = ConnectionManager::new(ManagerConfig::default(), b_t.clone()).unwrap();
    let mut events = alice.events().unwrap();
    let mut bob_in = bob.incoming().unwrap();

    alice.connect(b_addr).await.unwrap();
    alice
        .send(&b_addr.peer, Bytes::from_static(b"one"))
        .await
        .unwrap();
    assert_eq!(bob_in.recv().await.unwrap().1, Bytes::from_static(b"one"));
    assert_eq!(a_t.dials.load(Ordering::SeqCst), 1);
    assert_eq!(
        states(&mut events, b_addr.peer),
        [
            (ConnState::New, ConnState::Connecting),
            (ConnState::Connecting, ConnState::Connected)
        ]
    );

    // Put it in the pool; the next send takes it back.
    alice.disconnect(&b_addr.peer).await.unwrap();
    assert_eq!(alice.status(&b_addr.peer), Some(ConnState::Disconnected));
    assert_eq!(alice.pooled_connections(), 1);
    alice
        .send(&b_addr.peer, Bytes::from_static(b"two"))
        .await
        .unwrap();
    assert_eq!(bob_in.recv().await.unwrap().1, Bytes::from_static(b"two"));

    assert_eq!(a_t.dials.load(Ordering::SeqCst), 1, "no second dial");
    assert_eq!(
        states(&mut events, b_addr.peer),
        [
            (ConnState::Connected, ConnState::Disconnected),
            // Reuse: straight back to Connected, no Connecting.
            (ConnState::Disconnected, ConnState::Connected)
        ]
    );
    let opens = alice.metrics_snapshot().opens;
    assert_eq!(opens.get(OpenKind::Dialed), 1);
    assert_eq!(opens.get(OpenKind::Reused), 1);
    assert_eq!(opens.get(OpenKind::Accepted), 0);
    assert_eq!(opens.total(), 2);
    let bob_opens = bob.metrics_snapshot().opens;
    assert_eq!(bob_opens.get(OpenKind::Accepted), 1);
    assert_eq!(b_t.accepts.load(Ordering::SeqCst), 1);
    let text = alice.metrics_sink().encode_prometheus();
    assert!(
        text.contains("qudag_connections_opened_total{how=\"reused\"} 1"),
        "{text}"
    );

    alice.shutdown(GRACE).await;
    bob.shutdown(GRACE).await;
}

// ---- max_failed_dials counts attempts ----------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn max_failed_dials_is_the_number_of_dial_attempts() {
    let net = MemoryNetwork::new();
    let (a_t, b_t) = (counting(&net, "alice"), counting(&net, "bob"));
    let b_addr = addr_of(&*b_t);
    let mut config = ManagerConfig::default();
    config.max_failed_dials(4);
    let alice = ConnectionManager::new(config, a_t.clone()).unwrap();
    let bob = ConnectionManager::new(ManagerConfig::default(), b_t).unwrap();
    let mut events = alice.events().unwrap();
    let mut bob_in = bob.incoming().unwrap();
    alice.connect(b_addr).await.unwrap();
    alice
        .send(&b_addr.peer, Bytes::from_static(b"one"))
        .await
        .unwrap();
    bob_in.recv().await.unwrap();
    bob.shutdown(GRACE).await; // closes Bob's endpoint: every dial now fails
    assert_eq!(a_t.dials.load(Ordering::SeqCst), 1);

    alice
        .send(&b_addr.peer, Bytes::from_static(b"two"))
        .await
        .unwrap();
    let reason = loop {
        match events.recv().await.expect("events") {
            Event::Undelivered {
                messages, reason, ..
            } => {
                assert_eq!(messages, [Bytes::from_static(b"two")]);
                break reason;
            }
            _ => continue,
        }
    };
    assert_eq!(reason, UndeliveredReason::Unreachable);
    // The first dial after the loss counts: 4 attempts, not 5.
    assert_eq!(a_t.dials.load(Ordering::SeqCst), 1 + 4);
    alice.shutdown(GRACE).await;
}

// ---- every error variant, reached through the facade -------------------

/// A name for every variant a user can meet. The `match`es name each
/// variant through `qudag_net`, so a variant the facade cannot name fails
/// to compile; `_` arms are only there because the enums are
/// `#[non_exhaustive]`.
fn net_error(e: &NetError) -> String {
    match e {
        NetError::Transport(t) => format!("transport/{}", transport_error(t)),
        NetError::Limit(LimitError::Connections { max }) => format!("limit/connections/{max}"),
        NetError::Limit(LimitError::PendingDials { max }) => format!("limit/dials/{max}"),
        NetError::Limit(_) => "limit/other".into(),
        NetError::Backoff {
            peer: _,
            retry_at,
            retry_after,
        } => {
            // retry_at is on tokio's clock: it can be slept until directly.
            assert!(*retry_at >= tokio::time::Instant::now());
            assert!(*retry_after > Duration::ZERO);
            "backoff".into()
        }
        NetError::ConnectTimeout { peer: _ } => "connect_timeout".into(),
        NetError::Session { peer: _, detail: _ } => "session".into(),
        NetError::UnknownPeer(_) => "unknown_peer".into(),
        NetError::Shutdown => "shutdown".into(),
        _ => "other".into(),
    }
}

fn transport_error(e: &TransportError) -> &'static str {
    match e {
        TransportError::Unreachable { .. } => "unreachable",
        TransportError::Denied { peer: _ } => "denied",
        TransportError::Refused { peer: _, detail: _ } => "refused",
        TransportError::PeerIdMismatch {
            expected: _,
            actual: _,
        } => "mismatch",
        TransportError::NotAllowed { peer: _ } => "not_allowed",
        TransportError::HandshakeTimeout { peer: _, addr: _ } => "handshake_timeout",
        TransportError::Handshake { .. } => "handshake",
        TransportError::Closed { peer: _, reason } => close_reason(reason),
        TransportError::StreamTaken { peer: _ } => "stream_taken",
        TransportError::Protocol { peer: _, detail: _ } => "protocol",
        TransportError::Export { peer: _ } => "export",
        TransportError::EndpointClosed => "endpoint_closed",
        TransportError::Setup(_) => "setup",
        TransportError::Io(_) => "io",
        _ => "other",
    }
}

fn close_reason(r: &CloseReason) -> &'static str {
    match r {
        CloseReason::Local { code: _, reason: _ } => "closed/local",
        CloseReason::Remote { code: _, reason: _ } => "closed/remote",
        CloseReason::Lost(_) => "closed/lost",
        CloseReason::EndpointClosed => "closed/endpoint",
        _ => "closed/other",
    }
}

fn send_error(e: &SendError) -> &'static str {
    match e {
        SendError::Full { peer: _, msg: _ } => "full",
        SendError::TooLarge {
            len: _,
            max: _,
            msg: _,
        } => "too_large",
        SendError::UnknownPeer { peer: _, msg: _ } => "unknown_peer",
        SendError::Shutdown { msg: _ } => "shutdown",
        _ => "other",
    }
}

fn send_many_reason(r: &SendManyReason) -> &'static str {
    match r {
        SendManyReason::TooLarge {
            index: _,
            len: _,
            max: _,
        } => "too_large",
        SendManyReason::UnknownPeer { peer: _ } => "unknown_peer",
        SendManyReason::Shutdown => "shutdown",
        _ => "other",
    }
}

fn undelivered(r: UndeliveredReason) -> &'static str {
    match r {
        UndeliveredReason::ConnectionFailed => "connection_failed",
        UndeliveredReason::Unresponsive => "unresponsive",
        UndeliveredReason::Shutdown => "shutdown",
        UndeliveredReason::Unreachable => "unreachable",
        UndeliveredReason::PeerRestarted => "peer_restarted",
        _ => "other",
    }
}

fn config_error(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::Batch(BatchConfigError::MaxMessagesOutOfRange(_)) => "batch/max_messages",
        ConfigError::Batch(BatchConfigError::MaxBytesOutOfRange(_)) => "batch/max_bytes",
        ConfigError::Batch(BatchConfigError::MessageLenExceedsBatch { .. }) => "batch/len",
        ConfigError::Batch(_) => "batch/other",
        ConfigError::Capacity { field, value: _ } => field,
        ConfigError::Bytes {
            field,
            value: _,
            min: _,
        } => field,
        ConfigError::Duration { field, value: _ } => field,
        ConfigError::UnreachableAfterIdle { .. } => "unreachable_after_idle",
        _ => "other",
    }
}

fn parse_error(e: &ParsePeerAddrError) -> &'static str {
    match e {
        ParsePeerAddrError::MissingAt => "missing_at",
        ParsePeerAddrError::PeerId(ParsePeerIdError::Length(_)) => "peer_id/length",
        ParsePeerAddrError::PeerId(ParsePeerIdError::Character(_)) => "peer_id/character",
        ParsePeerAddrError::PeerId(_) => "peer_id/other",
        ParsePeerAddrError::Addr(_) => "addr",
        _ => "other",
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn errors_are_typed_and_reachable_through_the_facade() {
    // Parsing.
    assert_eq!(
        parse_error(&"nope".parse::<PeerAddr>().unwrap_err()),
        "missing_at"
    );
    let bad_id = "abc@127.0.0.1:1".parse::<PeerAddr>().unwrap_err();
    assert_eq!(parse_error(&bad_id), "peer_id/length");
    let id = PeerId::from_public_key(b"x").to_string();
    let bad_addr = format!("{id}@nowhere").parse::<PeerAddr>().unwrap_err();
    assert_eq!(parse_error(&bad_addr), "addr");

    // Configuration.
    let mut c = ManagerConfig::default();
    c.queue_capacity(0);
    let net = MemoryNetwork::new();
    let err = ConnectionManager::new(c, Arc::new(net.bind(PeerId::from_public_key(b"c"))))
        .expect_err("refused");
    assert_eq!(config_error(&err), "queue_capacity");
    let mut c = ManagerConfig::default();
    c.max_failed_dials(0);
    assert_eq!(config_error(&c.validate().unwrap_err()), "max_failed_dials");
    let mut c = ManagerConfig::default();
    c.batch_mut().max_messages(0);
    assert_eq!(
        config_error(&c.validate().unwrap_err()),
        "batch/max_messages"
    );

    // Dialing.
    let a_t = Arc::new(net.bind(PeerId::from_public_key(b"a")));
    let b_t = Arc::new(net.bind(PeerId::from_public_key(b"b")));
    let b_addr = addr_of(&*b_t);
    let mut config = ManagerConfig::default();
    config.pool_mut().max_connections(1);
    let a = ConnectionManager::new(config, a_t).unwrap();
    let b = ConnectionManager::new(ManagerConfig::default(), b_t.clone()).unwrap();

    let wrong = PeerAddr::new(PeerId::from_public_key(b"not b"), b_addr.addr);
    let e = a.connect(wrong).await.unwrap_err();
    assert_eq!(net_error(&e), "transport/mismatch");

    b_t.set_allow_list(Some([PeerId::from_public_key(b"someone else")]));
    let e = a.connect(b_addr).await.unwrap_err();
    assert_eq!(net_error(&e), "transport/denied");
    assert!(e.to_string().contains("allow-list"), "{e}");
    // The failure armed the backoff: an immediate retry says when to retry.
    let e = a.connect(b_addr).await.unwrap_err();
    assert_eq!(net_error(&e), "backoff");
    assert!(e.to_string().contains("retry in"), "{e}");
    let NetError::Backoff { retry_at, .. } = e else {
        unreachable!()
    };
    tokio::time::sleep_until(retry_at).await;
    b_t.set_allow_list(None::<Vec<PeerId>>);
    a.connect(b_addr)
        .await
        .expect("connects once the backoff passed");
    a.send(&b_addr.peer, Bytes::from_static(b"busy"))
        .await
        .unwrap();

    // The one slot is taken by a peer that exchanged messages: no room.
    let c_t = Arc::new(net.bind(PeerId::from_public_key(b"c2")));
    let c = ConnectionManager::new(ManagerConfig::default(), c_t.clone()).unwrap();
    let e = a.connect(addr_of(&*c_t)).await.unwrap_err();
    assert_eq!(net_error(&e), "limit/connections/1");
    assert_eq!(e.to_string(), "connection limit reached (max 1)");

    // Sending.
    let stranger = PeerId::from_public_key(b"stranger");
    let e = a.send(&stranger, Bytes::new()).await.unwrap_err();
    assert_eq!(send_error(&e), "unknown_peer");
    let huge = Bytes::from(vec![0; 2 << 20]);
    let e = a.send(&b_addr.peer, huge.clone()).await.unwrap_err();
    assert_eq!(send_error(&e), "too_large");
    assert_eq!(e.into_message(), huge, "handed back");
    let e = a
        .send_many(&b_addr.peer, vec![Bytes::new(), huge])
        .await
        .unwrap_err();
    assert_eq!(send_many_reason(&e.reason), "too_large");
    assert_eq!((e.accepted, e.unsent.len()), (0, 2));
    let e = a.disconnect(&stranger).await;
    assert!(e.is_ok() || net_error(&e.unwrap_err()) == "unknown_peer");

    for m in [&a, &b, &c] {
        m.shutdown(GRACE).await;
    }
    let e = a.connect(b_addr).await.unwrap_err();
    assert_eq!(net_error(&e), "shutdown");
    let e = a.try_send(&b_addr.peer, Bytes::new()).unwrap_err();
    assert_eq!(send_error(&e), "shutdown");

    // The hand-back reasons print as words.
    for r in [
        UndeliveredReason::ConnectionFailed,
        UndeliveredReason::Unresponsive,
        UndeliveredReason::Shutdown,
        UndeliveredReason::Unreachable,
        UndeliveredReason::PeerRestarted,
    ] {
        assert_ne!(undelivered(r), "other");
        assert!(!r.to_string().is_empty());
    }
    // Peer-chosen text is escaped before it is shown.
    assert_eq!(PeerText(b"a\x1b[2Jb").to_string(), "a\\u{1b}[2Jb");
    const { assert!(QUIC_MAX_COUNT >= 1 << 20) };
}

// ---- every metrics key ---------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_metrics_key_is_readable() {
    let net = MemoryNetwork::new();
    let (a_t, b_t) = (counting(&net, "a"), counting(&net, "b"));
    let b_addr = addr_of(&*b_t);
    let a = ConnectionManager::new(ManagerConfig::default(), a_t).unwrap();
    let b = ConnectionManager::new(ManagerConfig::default(), b_t).unwrap();
    let mut b_in = b.incoming().unwrap();
    a.connect(b_addr).await.unwrap();
    for _ in 0..3 {
        a.send(&b_addr.peer, Bytes::from_static(b"12345"))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        b_in.recv().await.unwrap();
    }
    // Acknowledgements travel back: wait (on the paused clock) until all
    // three are in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.metrics_snapshot().messages_acked < 3 {
        assert!(tokio::time::Instant::now() < deadline, "acks");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let s = a.metrics_snapshot();
    // Every plain field, by name.
    let counters = [
        ("messages_queued", s.messages_queued),
        ("messages_sent", s.messages_sent),
        ("messages_acked", s.messages_acked),
        ("messages_undelivered", s.messages_undelivered),
        ("messages_received", s.messages_received),
        ("batches_sent", s.batches_sent),
        ("batches_received", s.batches_received),
        ("batch_messages_received", s.batch_messages_received),
        ("bytes_sent", s.bytes_sent),
        ("bytes_received", s.bytes_received),
        ("payload_bytes_queued", s.payload_bytes_queued),
        ("payload_bytes_acked", s.payload_bytes_acked),
        ("payload_bytes_undelivered", s.payload_bytes_undelivered),
        ("payload_bytes_received", s.payload_bytes_received),
    ];
    let expect = |name: &str| match name {
        "messages_queued" | "messages_sent" | "messages_acked" => Some(3),
        "payload_bytes_queued" | "payload_bytes_acked" => Some(15),
        "messages_undelivered" | "payload_bytes_undelivered" | "messages_received" => Some(0),
        _ => None,
    };
    for (name, value) in counters {
        if let Some(v) = expect(name) {
            assert_eq!(value, v, "{name}");
        }
    }
    assert!(s.bytes_sent > 15 && s.batches_sent >= 1);
    assert_eq!(s.connections_connected, 1);
    assert_eq!(s.connections_connecting, 0);
    assert_eq!(s.pending_dials, 0);
    assert_eq!(s.queued_messages, 0);
    assert!(s.memory_bytes >= 0);
    assert_eq!(s.latency.count, 3);
    assert!(s.latency.p50 <= s.latency.p99 && s.latency.p99 <= s.latency.max);
    assert!(s.messages_per_second >= 0.0);

    // Every labelled family, keyed by the facade's label enums.
    let labels: Vec<&str> = s.state_entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        labels,
        ["new", "connecting", "connected", "disconnected", "failed"]
    );
    assert_eq!(s.state_entries.get(ConnState::Connected), 1);
    let kinds: Vec<ErrorKind> = s.errors.iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ErrorKind::ALL);
    assert_eq!(s.errors.total(), 0);
    let closes: Vec<CloseKind> = s.closes.iter().map(|(k, _)| k).collect();
    assert_eq!(closes, CloseKind::ALL);
    assert_eq!(s.closes.total(), 0);
    let opens: Vec<OpenKind> = s.opens.iter().map(|(k, _)| k).collect();
    assert_eq!(opens, OpenKind::ALL);
    assert_eq!(s.opens.get(OpenKind::Dialed), 1);

    // The compact view agrees.
    let n = a.metrics();
    assert_eq!(n.connections, 1);
    assert_eq!(s.network_metrics().connections, 1);
    assert!(n.avg_latency <= s.latency.max);
    let _ = (n.messages_per_second, n.memory_usage);

    a.shutdown(GRACE).await;
    b.shutdown(GRACE).await;
    // After shutdown the live gauges are back to zero.
    let s = a.metrics_snapshot();
    assert_eq!(s.connections_connected, 0);
    assert_eq!(s.closes.get(CloseKind::Shutdown), 1);
}

// ---- what this crate depends on -----------------------------------------

#[test]
fn this_crate_depends_on_the_facade_bytes_and_tokio_only() {
    let manifest = include_str!("../Cargo.toml");
    let deps: Vec<&str> = manifest
        .split("[dependencies]")
        .nth(1)
        .expect("a [dependencies] table")
        .lines()
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.split(['=', '.']).next().unwrap().trim())
        .collect();
    assert_eq!(deps, ["qudag-net", "bytes", "tokio"]);
    assert!(!manifest.contains("[dev-dependencies]"));
}
