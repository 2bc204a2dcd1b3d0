//! Helpers shared by the reliability and security suites (`impairment.rs`,
//! `hostile.rs`, `floods.rs`): nodes over either transport, numbered
//! messages, the delivery-contract check, and the UDP impairment proxy.
//!
//! Every test file uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

pub(crate) mod proxy;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qudag_net::{
    ConnectionManager, Event, Events, Identity, Incoming, ManagerConfig, MemoryNetwork,
    MemoryTransport, PeerAddr, PeerId, QuicConfig, QuicTransport, Transport, UndeliveredReason,
};

/// A manager with its taken `Incoming` and `Events`, and the address peers dial.
pub(crate) struct Node {
    pub(crate) mgr: ConnectionManager,
    pub(crate) incoming: Incoming,
    pub(crate) events: Events,
    pub(crate) addr: PeerAddr,
}

/// A node on the in-memory network, named `name`.
pub(crate) fn memory_node(net: &MemoryNetwork, name: &str, config: ManagerConfig) -> Node {
    let t: Arc<MemoryTransport> = Arc::new(net.bind(PeerId::from_public_key(name.as_bytes())));
    node_on(t, config)
}

/// A node on a QUIC endpoint bound to 127.0.0.1 with a fresh identity.
pub(crate) fn quic_node(config: ManagerConfig, quic: QuicConfig) -> Node {
    let id = Identity::generate().expect("identity");
    let t = QuicTransport::bind("127.0.0.1:0".parse().expect("addr"), &id, quic).expect("bind");
    node_on(Arc::new(t), config)
}

/// A node on `t`.
pub(crate) fn node_on(t: Arc<dyn Transport>, config: ManagerConfig) -> Node {
    let addr = PeerAddr::new(t.local_peer(), t.local_addr());
    let mgr = ConnectionManager::new(config, t).expect("valid config");
    Node {
        incoming: mgr.incoming().expect("incoming taken once"),
        events: mgr.events().expect("events taken once"),
        mgr,
        addr,
    }
}

/// Message number `i`, `len` bytes long (at least 16): `message-%08d` then padding.
pub(crate) fn msg(i: u32, len: usize) -> Bytes {
    let mut v = format!("message-{i:08}").into_bytes();
    v.resize(len.max(16), b'.');
    Bytes::from(v)
}

/// The number of a message made by [`msg`].
pub(crate) fn index(m: &[u8]) -> u32 {
    std::str::from_utf8(&m[8..16])
        .expect("utf-8 index")
        .parse()
        .expect("numbered message")
}

/// What came back undelivered, in event order.
#[derive(Debug, Default)]
pub(crate) struct HandedBack {
    /// Message numbers, in the order they came back.
    pub(crate) messages: Vec<u32>,
    /// The reasons seen.
    pub(crate) reasons: HashSet<UndeliveredReason>,
    /// State changes seen, `(from, to)`.
    pub(crate) states: Vec<(qudag_net::ConnState, qudag_net::ConnState)>,
}

impl HandedBack {
    /// Records one event.
    pub(crate) fn record(&mut self, ev: Event) {
        match ev {
            Event::Undelivered {
                messages, reason, ..
            } => {
                self.reasons.insert(reason);
                self.messages.extend(messages.iter().map(|m| index(m)));
            }
            Event::StateChanged { from, to, .. } => self.states.push((from, to)),
            _ => {}
        }
    }

    /// Records every event already queued.
    pub(crate) fn drain(&mut self, events: &mut Events) {
        while let Some(ev) = events.try_recv() {
            self.record(ev);
        }
    }
}

/// Asserts the delivery contract for messages `0..accepted` sent in order
/// from one sender to one receiver:
///
/// - `received` is strictly increasing (in order, no duplicates) and holds
///   only accepted messages;
/// - every accepted message is received or handed back;
/// - `acked + handed back == accepted`, exactly;
/// - every message not handed back was received (acked implies received).
pub(crate) fn assert_contract(accepted: u32, received: &[u32], handed_back: &[u32], acked: u64) {
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "received messages are in order and duplicate-free"
    );
    assert!(
        received.iter().all(|&i| i < accepted),
        "only accepted messages are received"
    );
    let back: HashSet<u32> = handed_back.iter().copied().collect();
    assert_eq!(
        back.len(),
        handed_back.len(),
        "nothing is handed back twice"
    );
    assert!(
        back.iter().all(|&i| i < accepted),
        "only accepted messages come back"
    );
    assert_eq!(
        acked + handed_back.len() as u64,
        u64::from(accepted),
        "acked ({acked}) + handed back ({}) == accepted ({accepted})",
        handed_back.len()
    );
    let got: HashSet<u32> = received.iter().copied().collect();
    let missing: Vec<u32> = (0..accepted)
        .filter(|i| !back.contains(i) && !got.contains(i))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "acked messages were not received (first ones: {missing:?})"
    );
}

/// Guard for awaits that must complete: fails the test after `limit`.
pub(crate) async fn guard<F: std::future::Future>(what: &str, limit: Duration, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Receives `n` messages, asserting they come from `from` (bounded by a 60 s guard).
pub(crate) async fn recv_n(incoming: &mut Incoming, from: PeerId, n: usize) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(n);
    let guard = tokio::time::timeout(Duration::from_secs(60), async {
        while out.len() < n {
            let (peer, m) = incoming.recv().await.expect("manager alive");
            assert_eq!(peer, from);
            out.push(m);
        }
    })
    .await;
    assert!(guard.is_ok(), "received only {} of {n} messages", out.len());
    out
}

/// Every message handed back so far (events already queued), with its flag and reason.
pub(crate) fn handed_back(events: &mut Events) -> Vec<(Bytes, bool, UndeliveredReason)> {
    let mut out = Vec::new();
    while let Some(ev) = events.try_recv() {
        if let Event::Undelivered {
            messages,
            maybe_delivered,
            reason,
            ..
        } = ev
        {
            out.extend(messages.into_iter().map(|m| (m, maybe_delivered, reason)));
        }
    }
    out
}

/// A raw session to `to` from a fresh identity on `net`: dialed, its stream
/// opened and a RESUME written, nothing else (a stranger that idles, or
/// leaves when the returned parts are dropped).
pub(crate) struct RawSession {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) conn: Arc<dyn qudag_net::Connection>,
    pub(crate) writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    pub(crate) reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
}

/// Opens a [`RawSession`] from the identity named `name`.
pub(crate) async fn raw_session(
    net: &MemoryNetwork,
    name: &str,
    to: PeerAddr,
) -> Result<RawSession, qudag_net::NetError> {
    use tokio::io::AsyncWriteExt;
    let t: Arc<dyn Transport> = Arc::new(net.bind(PeerId::from_public_key(name.as_bytes())));
    let conn = t.dial(&to).await?;
    let (mut writer, reader) = conn.open_stream().await?;
    let mut resume = bytes::BytesMut::new();
    qudag_batch::encode_resume_frame(
        &qudag_batch::Resume {
            incarnation: 1,
            known: 0,
            next: 0,
        },
        &mut resume,
    );
    writer.write_all(&resume).await.map_err(|e| {
        qudag_net::NetError::Transport(qudag_net::TransportError::Setup(e.to_string()))
    })?;
    Ok(RawSession {
        transport: t,
        conn,
        writer,
        reader,
    })
}

/// The process's resident set in bytes, from /proc (Linux); `None` elsewhere.
pub(crate) fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Implements `qudag_net::Connection` for a tuple struct around an
/// `Arc<dyn Connection>` (field 0): every method delegates to it but
/// `open_stream`, whose body is given, with the wrapper bound to `$this`.
/// For the tests' fault-injecting wrappers.
#[allow(unused_macros)]
macro_rules! wrap_connection {
    ($ty:ty, |$this:ident| $open:block) => {
        #[qudag_net::async_trait]
        impl qudag_net::Connection for $ty {
            fn peer(&self) -> qudag_net::PeerId {
                self.0.peer()
            }
            fn remote_addr(&self) -> std::net::SocketAddr {
                self.0.remote_addr()
            }
            fn side(&self) -> qudag_net::Side {
                self.0.side()
            }
            async fn open_stream(
                &self,
            ) -> Result<(qudag_net::SendStream, qudag_net::RecvStream), qudag_net::TransportError>
            {
                let $this = self;
                $open
            }
            fn export_keying_material(
                &self,
                out: &mut [u8],
                label: &[u8],
                context: &[u8],
            ) -> Result<(), qudag_net::TransportError> {
                self.0.export_keying_material(out, label, context)
            }
            fn rtt(&self) -> Option<std::time::Duration> {
                self.0.rtt()
            }
            fn close(&self, code: u32, reason: &[u8]) {
                self.0.close(code, reason);
            }
            fn close_reason(&self) -> Option<qudag_net::CloseReason> {
                self.0.close_reason()
            }
            async fn closed(&self) -> qudag_net::CloseReason {
                self.0.closed().await
            }
            async fn accepted(&self) -> Result<(), qudag_net::TransportError> {
                self.0.accepted().await
            }
            fn peer_incarnation(&self) -> Option<u64> {
                self.0.peer_incarnation()
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use wrap_connection;
