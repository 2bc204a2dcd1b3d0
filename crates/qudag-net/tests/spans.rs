//! Tracing spans: one `peer` span per peer driver, one `accept` span per
//! inbound set-up, one `conn` span per connection under it, and the
//! driver's log lines inside its peer's span; and the warning a protocol
//! violation at set-up logs. Recorded by a small subscriber on a
//! current-thread runtime (every task runs on this thread).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::net::SocketAddr;

use bytes::Bytes;
use qudag_net::{
    Connection, ConnectionManager, ErrorKind, ManagerConfig, MemoryNetwork, MemoryTransport,
    PeerAddr, PeerId, Transport, TransportError,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

mod support;

#[derive(Debug, Clone)]
struct SpanRec {
    name: &'static str,
    fields: HashMap<String, String>,
    parent: Option<u64>,
}

#[derive(Debug, Clone)]
struct EventRec {
    level: tracing::Level,
    target: String,
    message: String,
    /// Names of the entered spans, innermost last.
    stack: Vec<u64>,
}

#[derive(Default)]
struct Log {
    spans: HashMap<u64, SpanRec>,
    events: Vec<EventRec>,
    stack: Vec<u64>,
}

/// Records spans (name, fields, parent) and events (with the spans entered).
#[derive(Clone, Default)]
struct Recorder {
    log: Arc<Mutex<Log>>,
    next: Arc<AtomicU64>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut log = self.log.lock().unwrap();
        let parent = if attrs.is_root() {
            None
        } else if let Some(p) = attrs.parent() {
            Some(p.into_u64())
        } else {
            log.stack.last().copied()
        };
        log.spans.insert(
            id,
            SpanRec {
                name: attrs.metadata().name(),
                fields,
                parent,
            },
        );
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let mut log = self.log.lock().unwrap();
        let stack = log.stack.clone();
        log.events.push(EventRec {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            message: fields.remove("message").unwrap_or_default(),
            stack,
        });
    }
    fn enter(&self, span: &Id) {
        self.log.lock().unwrap().stack.push(span.into_u64());
    }
    fn exit(&self, span: &Id) {
        let mut log = self.log.lock().unwrap();
        if let Some(i) = log.stack.iter().rposition(|&s| s == span.into_u64()) {
            log.stack.remove(i);
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn drivers_and_connections_log_inside_their_spans() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());

    let net = MemoryNetwork::new();
    let a_t = Arc::new(net.bind(PeerId::from_public_key(b"alice")));
    let b_t = Arc::new(net.bind(PeerId::from_public_key(b"bob")));
    let (alice_id, bob_id) = (a_t.local_peer(), b_t.local_peer());
    let b_addr = PeerAddr::new(bob_id, b_t.local_addr());
    let alice = ConnectionManager::new(ManagerConfig::default(), a_t).unwrap();
    let bob = ConnectionManager::new(ManagerConfig::default(), b_t).unwrap();
    let mut bob_in = bob.incoming().unwrap();
    alice.connect(b_addr).await.unwrap();
    alice
        .send(&bob_id, Bytes::from_static(b"hi"))
        .await
        .unwrap();
    bob_in.recv().await.unwrap();
    // Bob leaves: Alice's driver logs the end of its connection.
    bob.shutdown(Duration::from_secs(1)).await;
    alice.shutdown(Duration::from_secs(1)).await;

    let log = recorder.log.lock().unwrap();
    let find = |name: &str, peer: PeerId| -> Vec<(u64, SpanRec)> {
        log.spans
            .iter()
            .filter(|(_, s)| s.name == name && s.fields.get("peer") == Some(&peer.to_string()))
            .map(|(id, s)| (*id, s.clone()))
            .collect()
    };
    // Alice's driver for Bob, and the connection it dialed under it.
    let peer_spans = find("peer", bob_id);
    assert_eq!(peer_spans.len(), 1, "{:?}", log.spans);
    let (alice_driver, driver_span) = &peer_spans[0];
    assert_eq!(driver_span.parent, None, "a peer span is a root");
    let dialed: Vec<_> = find("conn", bob_id);
    assert_eq!(dialed.len(), 1, "{:?}", log.spans);
    assert_eq!(dialed[0].1.parent, Some(*alice_driver));
    assert_eq!(dialed[0].1.fields["side"], "Dialer");
    assert!(dialed[0].1.fields.contains_key("remote"));
    assert!(dialed[0].1.fields.contains_key("id"));
    // Bob's inbound set-up, and the connection under it.
    let accepts = find("accept", alice_id);
    assert_eq!(accepts.len(), 1, "{:?}", log.spans);
    let accepted = find("conn", alice_id);
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].1.parent, Some(accepts[0].0));
    assert_eq!(accepted[0].1.fields["side"], "Listener");
    assert_ne!(dialed[0].1.fields["id"], accepted[0].1.fields["id"]);

    // Every line the driver logged sits inside a peer span, and there was
    // at least one (the end of Alice's connection to Bob).
    let driver_events: Vec<&EventRec> = log
        .events
        .iter()
        .filter(|e| e.target.starts_with("qudag_net::driver"))
        .collect();
    assert!(
        driver_events
            .iter()
            .any(|e| e.message.contains("connection ended") && e.stack.contains(alice_driver)),
        "{driver_events:?}"
    );
    for e in driver_events {
        assert!(
            e.stack.iter().any(|s| log.spans[s].name == "peer"),
            "{e:?} outside a peer span"
        );
    }
}

/// Accepts like the transport it wraps, but every accepted connection's
/// stream opens with a protocol error, as QUIC reports a bad stream
/// preamble (`TransportError::Protocol`).
#[derive(Debug)]
struct BadPreamble(MemoryTransport);

#[derive(Debug)]
struct BadStream(Arc<dyn Connection>);

#[qudag_net::async_trait]
impl Transport for BadPreamble {
    fn local_peer(&self) -> PeerId {
        self.0.local_peer()
    }
    fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }
    async fn dial(&self, to: &PeerAddr) -> Result<Arc<dyn Connection>, TransportError> {
        self.0.dial(to).await
    }
    async fn accept(&self) -> Result<Arc<dyn Connection>, TransportError> {
        Ok(Arc::new(BadStream(self.0.accept().await?)))
    }
    fn close(&self) {
        self.0.close();
    }
    fn set_incarnation(&self, incarnation: u64) {
        self.0.set_incarnation(incarnation);
    }
}

support::wrap_connection!(BadStream, |this| {
    Err(TransportError::Protocol {
        peer: this.0.peer(),
        detail: "bad stream preamble 0x00".into(),
    })
});

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_bad_stream_preamble_is_warned_about_like_any_protocol_violation() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let net = MemoryNetwork::new();
    let a_t = Arc::new(net.bind(PeerId::from_public_key(b"alice")));
    let b_t = Arc::new(BadPreamble(net.bind(PeerId::from_public_key(b"bob"))));
    let alice_id = a_t.local_peer();
    let b_addr = PeerAddr::new(b_t.local_peer(), b_t.local_addr());
    let mut config = ManagerConfig::default();
    config.connect_timeout(Duration::from_secs(2));
    let alice = ConnectionManager::new(config, a_t).unwrap();
    let bob = ConnectionManager::new(ManagerConfig::default(), b_t).unwrap();
    // Alice's dial completes on her side; Bob's set-up fails, he counts
    // the error, warns, and closes the connection.
    let _ = alice.connect(b_addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bob.metrics_snapshot().errors.total() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no error counted");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(bob.metrics_snapshot().errors.get(ErrorKind::Transport), 1);
    alice.shutdown(Duration::from_secs(1)).await;
    bob.shutdown(Duration::from_secs(1)).await;

    let log = recorder.log.lock().unwrap();
    let warned: Vec<&EventRec> = log
        .events
        .iter()
        .filter(|e| {
            e.level == tracing::Level::WARN
                && e.message.contains("closing connection: protocol violation")
        })
        .collect();
    assert_eq!(warned.len(), 1, "{:?}", log.events);
    // Logged inside Bob's accept span for Alice.
    let span = &log.spans[warned[0].stack.last().expect("inside a span")];
    assert_eq!(span.name, "accept");
    assert_eq!(span.fields["peer"], alice_id.to_string());
}
