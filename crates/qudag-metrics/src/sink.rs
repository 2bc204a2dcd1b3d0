//! The [`MetricsSink`] trait, its bounded label sets, [`NoopSink`] and [`FanOut`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The lifecycle state of one peer's connection: the one type for the whole
/// workspace (`qudag-pool`'s state machine, `qudag-net`'s events and these
/// metrics all use it).
///
/// The allowed transitions (enforced by `qudag_pool::StateMachine`) are exactly:
///
/// | from           | to             | when                                     |
/// |----------------|----------------|------------------------------------------|
/// | `New`          | `Connecting`   | the first dial starts                    |
/// | `Connecting`   | `Connected`    | the handshake completed                  |
/// | `Connecting`   | `Failed`       | the dial failed                          |
/// | `Connected`    | `Disconnected` | closed, or put in the pool, on purpose   |
/// | `Connected`    | `Failed`       | the connection was lost                  |
/// | `Disconnected` | `Connecting`   | redial                                   |
/// | `Disconnected` | `Connected`    | a pooled connection was taken back: no dial, no handshake |
/// | `Failed`       | `Connecting`   | redial, once the backoff allows it       |
///
/// Every other pair, including staying in the same state, is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// Created, no dial started yet.
    New,
    /// A dial or handshake is in progress.
    Connecting,
    /// Authenticated and usable.
    Connected,
    /// Closed after having been connected (cleanly or not).
    Disconnected,
    /// The last dial or handshake failed; the peer is backing off.
    Failed,
}

impl ConnState {
    /// Every state, in declaration order.
    pub const ALL: [ConnState; 5] = [
        ConnState::New,
        ConnState::Connecting,
        ConnState::Connected,
        ConnState::Disconnected,
        ConnState::Failed,
    ];

    /// The label value used in exports (`"connected"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            ConnState::New => "new",
            ConnState::Connecting => "connecting",
            ConnState::Connected => "connected",
            ConnState::Disconnected => "disconnected",
            ConnState::Failed => "failed",
        }
    }

    /// Whether [`Metrics`](crate::Metrics) keeps a gauge of connections in
    /// this state: only the live states [`Connecting`](Self::Connecting) and
    /// [`Connected`](Self::Connected) are gauged.
    ///
    /// `New` has no "created" event to balance it, and `Disconnected` /
    /// `Failed` have no "forgotten" event, so gauging them would drift; they
    /// are counted as transitions instead. With this rule every gauge returns
    /// to zero once all connections have closed.
    pub const fn is_gauged(self) -> bool {
        matches!(self, ConnState::Connecting | ConnState::Connected)
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ConnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error kinds (a bounded label set).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A dial failed (unreachable, refused by the transport, timed out).
    DialFailed,
    /// The TLS / QUIC handshake failed.
    HandshakeFailed,
    /// The peer authenticated as a different `PeerId` than the one dialed.
    PeerIdMismatch,
    /// An inbound peer was refused (allow-list).
    Refused,
    /// A configured limit (connections, queue, frame size) was reached.
    LimitReached,
    /// A frame or batch from a peer failed to decode.
    Decode,
    /// A sealed batch failed authentication.
    Authentication,
    /// A batch arrived with an unexpected sequence number.
    Sequence,
    /// The transport reported an error on an established connection.
    Transport,
    /// A batch was not acknowledged in time.
    AckTimeout,
    /// A dial was refused locally because the peer is backing off.
    Backoff,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::DialFailed,
        ErrorKind::HandshakeFailed,
        ErrorKind::PeerIdMismatch,
        ErrorKind::Refused,
        ErrorKind::LimitReached,
        ErrorKind::Decode,
        ErrorKind::Authentication,
        ErrorKind::Sequence,
        ErrorKind::Transport,
        ErrorKind::AckTimeout,
        ErrorKind::Backoff,
        ErrorKind::Other,
    ];

    /// The label value used in exports (`"dial_failed"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::DialFailed => "dial_failed",
            ErrorKind::HandshakeFailed => "handshake_failed",
            ErrorKind::PeerIdMismatch => "peer_id_mismatch",
            ErrorKind::Refused => "refused",
            ErrorKind::LimitReached => "limit_reached",
            ErrorKind::Decode => "decode",
            ErrorKind::Authentication => "authentication",
            ErrorKind::Sequence => "sequence",
            ErrorKind::Transport => "transport",
            ErrorKind::AckTimeout => "ack_timeout",
            ErrorKind::Backoff => "backoff",
            ErrorKind::Other => "other",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection closed (a bounded label set).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseKind {
    /// Closed by the local application.
    Local,
    /// Closed by the peer.
    Remote,
    /// Closed by the pool because it outlived the pool timeout.
    Expired,
    /// Closed to make room under the connection limit.
    Evicted,
    /// Closed as the loser of a simultaneous dial.
    Duplicate,
    /// Closed because of an error (see the error counters for the kind).
    Error,
    /// Closed because the peer stopped acknowledging.
    Unresponsive,
    /// Closed because the manager shut down.
    Shutdown,
}

impl CloseKind {
    /// Every reason, in declaration order.
    pub const ALL: [CloseKind; 8] = [
        CloseKind::Local,
        CloseKind::Remote,
        CloseKind::Expired,
        CloseKind::Evicted,
        CloseKind::Duplicate,
        CloseKind::Error,
        CloseKind::Unresponsive,
        CloseKind::Shutdown,
    ];

    /// The label value used in exports (`"local"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseKind::Local => "local",
            CloseKind::Remote => "remote",
            CloseKind::Expired => "expired",
            CloseKind::Evicted => "evicted",
            CloseKind::Duplicate => "duplicate",
            CloseKind::Error => "error",
            CloseKind::Unresponsive => "unresponsive",
            CloseKind::Shutdown => "shutdown",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CloseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a peer got a usable connection (a bounded label set): the counted
/// difference between a real dial and a pooled connection taken back.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpenKind {
    /// We dialed, and the handshake and session set-up completed.
    Dialed,
    /// The peer dialed us, and the handshake and session set-up completed.
    Accepted,
    /// An idle pooled connection was taken back: no dial, no handshake.
    Reused,
}

impl OpenKind {
    /// Every kind, in declaration order.
    pub const ALL: [OpenKind; 3] = [OpenKind::Dialed, OpenKind::Accepted, OpenKind::Reused];

    /// The label value used in exports (`"dialed"`, `"accepted"`, `"reused"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            OpenKind::Dialed => "dialed",
            OpenKind::Accepted => "accepted",
            OpenKind::Reused => "reused",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OpenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Receives the connection manager's events.
///
/// Every method has a no-op default, so a sink implements only what it
/// wants. The trait is object safe; the manager stores an
/// `Arc<dyn MetricsSink>`.
///
/// # Contract for implementors
///
/// Methods are called on the hot path, from many threads at once, often once
/// per message: they must be cheap and must not block. Use atomics; never
/// take a lock per event.
///
/// # Contract for callers
///
/// Each event is reported exactly once. Gauges are reported only through
/// their delta methods ([`pending_dials`](Self::pending_dials),
/// [`queued_messages`](Self::queued_messages), [`memory`](Self::memory),
/// [`state_changed`](Self::state_changed)) and
/// [`message_accepted`](Self::message_accepted) (a counter event with its
/// gauge moves, in one call); the other counter events
/// (`message_queued`, ...) never move a gauge, so a caller reports both.
///
/// # Examples
///
/// A sink that only counts errors:
///
/// ```
/// use qudag_metrics::{ErrorKind, MetricsSink};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// #[derive(Debug, Default)]
/// struct ErrorCounter(AtomicU64);
///
/// impl MetricsSink for ErrorCounter {
///     fn error(&self, _kind: ErrorKind) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// let sink = ErrorCounter::default();
/// sink.message_queued(10); // default: ignored
/// sink.error(ErrorKind::Decode);
/// assert_eq!(sink.0.load(Ordering::Relaxed), 1);
/// ```
pub trait MetricsSink: Send + Sync + fmt::Debug + 'static {
    /// `send` accepted a message of `bytes` payload bytes into a queue.
    fn message_queued(&self, bytes: usize) {
        let _ = bytes;
    }

    /// `send` accepted one message of `bytes` payload bytes into a queue:
    /// the counter event [`message_queued`](Self::message_queued) and the
    /// gauge moves that go with it ([`queued_messages`](Self::queued_messages)
    /// by +1, [`memory`](Self::memory) by +`bytes`), reported in one call
    /// because `send` reports them for every message. The default makes
    /// those three calls, so a sink that implements them sees each.
    fn message_accepted(&self, bytes: usize) {
        self.message_queued(bytes);
        self.queued_messages(1);
        self.memory(bytes as isize);
    }

    /// `send_many` accepted several messages at once: the payload size of
    /// each, in order. The default calls
    /// [`message_queued`](Self::message_queued) for each;
    /// [`Metrics`](crate::Metrics) updates its counters once per call.
    fn messages_queued(&self, sizes: &mut dyn Iterator<Item = usize>) {
        for bytes in sizes {
            self.message_queued(bytes);
        }
    }

    /// A batch of `messages` messages went out; `bytes` is its size on the
    /// wire (framed and sealed).
    fn batch_flushed(&self, messages: usize, bytes: usize) {
        let _ = (messages, bytes);
    }

    /// The peer acknowledged one message of `bytes` payload bytes; `latency`
    /// is the time from `send` to the ack. Called once per message.
    ///
    /// The connection manager reads the clock once per batch under load,
    /// not per `send`: a message queued behind others shares the time stamp
    /// of the first one queued since the peer's driver last took from the
    /// queue. So a latency can read high, never low, by up to the time the
    /// driver went without taking: one batch interval while it keeps up,
    /// but as long as a stall lasts (a full acknowledgement window, a
    /// redial) for messages sent while others wait in the queue.
    fn message_acked(&self, bytes: usize, latency: Duration) {
        let _ = (bytes, latency);
    }

    /// The peer acknowledged several messages at once: `(bytes, latency)`
    /// of each, in send order. The default calls
    /// [`message_acked`](Self::message_acked) for each, so a sink that
    /// implements only that one sees every message; [`Metrics`](crate::Metrics)
    /// updates its counters once per call.
    fn messages_acked(&self, acked: &mut dyn Iterator<Item = (usize, Duration)>) {
        for (bytes, latency) in acked {
            self.message_acked(bytes, latency);
        }
    }

    /// A message of `bytes` payload bytes was handed back to the sender's
    /// application as undelivered.
    fn message_undelivered(&self, bytes: usize) {
        let _ = bytes;
    }

    /// A batch of `messages` messages arrived; `bytes` is its size on the
    /// wire.
    fn batch_received(&self, messages: usize, bytes: usize) {
        let _ = (messages, bytes);
    }

    /// One message of `bytes` payload bytes was received and passed on to
    /// the application.
    fn message_received(&self, bytes: usize) {
        let _ = bytes;
    }

    /// Several messages of one batch were received and passed on to the
    /// application: the payload size of each (a [`FanOut`] passes a batch
    /// of more than 64 on in several calls). The default calls
    /// [`message_received`](Self::message_received) for each;
    /// [`Metrics`](crate::Metrics) updates its counters once per call.
    fn messages_received(&self, sizes: &mut dyn Iterator<Item = usize>) {
        for bytes in sizes {
            self.message_received(bytes);
        }
    }

    /// A connection moved from `from` to `to`.
    ///
    /// [`Metrics`](crate::Metrics) keeps a gauge for the states where
    /// [`ConnState::is_gauged`] is true (`from` −1, `to` +1 for those) and
    /// counts entries into every state.
    fn state_changed(&self, from: ConnState, to: ConnState) {
        let _ = (from, to);
    }

    /// A peer got a usable connection, `how`: a dial, an accepted
    /// connection, or a pooled one taken back. Called once each time; a
    /// dial that fails is an [`error`](Self::error) instead.
    fn connection_opened(&self, how: OpenKind) {
        let _ = how;
    }

    /// A connection closed for `reason`.
    fn connection_closed(&self, reason: CloseKind) {
        let _ = reason;
    }

    /// An error of `kind` happened.
    fn error(&self, kind: ErrorKind) {
        let _ = kind;
    }

    /// The number of dials in progress changed by `delta`.
    fn pending_dials(&self, delta: isize) {
        let _ = delta;
    }

    /// The number of messages held in queues changed by `delta`.
    fn queued_messages(&self, delta: isize) {
        let _ = delta;
    }

    /// The bytes held by the manager changed by `delta`: `+` when it takes
    /// bytes, `-` when it lets them go.
    ///
    /// Held bytes are the payload bytes of queued, batched, unacknowledged
    /// and received-but-not-yet-consumed messages plus connection buffer
    /// capacities.
    fn memory(&self, delta: isize) {
        let _ = delta;
    }
}

/// A sink that ignores every event.
///
/// # Examples
///
/// ```
/// use qudag_metrics::{MetricsSink, NoopSink};
/// use std::sync::Arc;
///
/// let sink: Arc<dyn MetricsSink> = Arc::new(NoopSink);
/// sink.message_queued(64);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoopSink;

impl MetricsSink for NoopSink {}

/// Forwards every event to several sinks, in order.
///
/// A batch event ([`messages_queued`](MetricsSink::messages_queued),
/// [`messages_acked`](MetricsSink::messages_acked),
/// [`messages_received`](MetricsSink::messages_received)) of more than 64
/// items reaches each sink as several calls of up to 64, in order (an
/// iterator can be read once; the items pass through a buffer on the
/// stack rather than a `Vec` per event).
///
/// # Examples
///
/// ```
/// use qudag_metrics::{FanOut, Metrics, MetricsSink, NoopSink};
/// use std::sync::Arc;
/// use std::time::Instant;
///
/// let a = Arc::new(Metrics::new());
/// let b = Arc::new(Metrics::new());
/// let fan = FanOut::new(vec![a.clone(), b.clone(), Arc::new(NoopSink)]);
/// fan.message_queued(3);
/// let now = Instant::now();
/// assert_eq!(a.snapshot(now).messages_queued, 1);
/// assert_eq!(b.snapshot(now).payload_bytes_queued, 3);
/// ```
#[derive(Clone, Debug, Default)]
pub struct FanOut {
    sinks: Vec<Arc<dyn MetricsSink>>,
}

impl FanOut {
    /// A sink forwarding to `sinks`, in order.
    pub fn new(sinks: Vec<Arc<dyn MetricsSink>>) -> Self {
        Self { sinks }
    }

    /// Adds `sink` at the end.
    pub fn push(&mut self, sink: Arc<dyn MetricsSink>) -> &mut Self {
        self.sinks.push(sink);
        self
    }

    /// The sinks events are forwarded to.
    pub fn sinks(&self) -> &[Arc<dyn MetricsSink>] {
        &self.sinks
    }
}

macro_rules! forward {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        for sink in &$self.sinks {
            sink.$method($($arg),*);
        }
    };
}

/// How many items of a batch event [`FanOut`] forwards per call: an
/// iterator can be read once, so it goes through a buffer on the stack (a
/// `Vec` per event would allocate once per batch).
const FAN_CHUNK: usize = 64;

impl FanOut {
    /// Calls `each` with the items of `items`, in order, in slices of up to
    /// [`FAN_CHUNK`]; never with an empty slice.
    fn chunks<T: Copy + Default>(items: &mut dyn Iterator<Item = T>, mut each: impl FnMut(&[T])) {
        let mut buf = [T::default(); FAN_CHUNK];
        loop {
            let mut n = 0;
            for (slot, item) in buf.iter_mut().zip(&mut *items) {
                *slot = item;
                n += 1;
            }
            if n > 0 {
                each(&buf[..n]);
            }
            if n < FAN_CHUNK {
                return;
            }
        }
    }
}

impl MetricsSink for FanOut {
    fn message_queued(&self, bytes: usize) {
        forward!(self, message_queued(bytes));
    }
    fn message_accepted(&self, bytes: usize) {
        forward!(self, message_accepted(bytes));
    }
    fn messages_queued(&self, sizes: &mut dyn Iterator<Item = usize>) {
        Self::chunks(sizes, |chunk| {
            forward!(self, messages_queued(&mut chunk.iter().copied()))
        });
    }
    fn batch_flushed(&self, messages: usize, bytes: usize) {
        forward!(self, batch_flushed(messages, bytes));
    }
    fn message_acked(&self, bytes: usize, latency: Duration) {
        forward!(self, message_acked(bytes, latency));
    }
    fn messages_acked(&self, acked: &mut dyn Iterator<Item = (usize, Duration)>) {
        Self::chunks(acked, |chunk| {
            forward!(self, messages_acked(&mut chunk.iter().copied()))
        });
    }
    fn message_undelivered(&self, bytes: usize) {
        forward!(self, message_undelivered(bytes));
    }
    fn batch_received(&self, messages: usize, bytes: usize) {
        forward!(self, batch_received(messages, bytes));
    }
    fn message_received(&self, bytes: usize) {
        forward!(self, message_received(bytes));
    }
    fn messages_received(&self, sizes: &mut dyn Iterator<Item = usize>) {
        Self::chunks(sizes, |chunk| {
            forward!(self, messages_received(&mut chunk.iter().copied()))
        });
    }
    fn state_changed(&self, from: ConnState, to: ConnState) {
        forward!(self, state_changed(from, to));
    }
    fn connection_opened(&self, how: OpenKind) {
        forward!(self, connection_opened(how));
    }
    fn connection_closed(&self, reason: CloseKind) {
        forward!(self, connection_closed(reason));
    }
    fn error(&self, kind: ErrorKind) {
        forward!(self, error(kind));
    }
    fn pending_dials(&self, delta: isize) {
        forward!(self, pending_dials(delta));
    }
    fn queued_messages(&self, delta: isize) {
        forward!(self, queued_messages(delta));
    }
    fn memory(&self, delta: isize) {
        forward!(self, memory(delta));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records every event as a string, to check forwarding.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Recorder {
        fn push(&self, s: String) {
            self.0.lock().unwrap().push(s);
        }
        fn events(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    impl MetricsSink for Recorder {
        fn message_queued(&self, bytes: usize) {
            self.push(format!("queued {bytes}"));
        }
        fn batch_flushed(&self, messages: usize, bytes: usize) {
            self.push(format!("flushed {messages} {bytes}"));
        }
        fn message_acked(&self, bytes: usize, latency: Duration) {
            self.push(format!("acked {bytes} {}", latency.as_micros()));
        }
        fn message_undelivered(&self, bytes: usize) {
            self.push(format!("undelivered {bytes}"));
        }
        fn batch_received(&self, messages: usize, bytes: usize) {
            self.push(format!("batch_received {messages} {bytes}"));
        }
        fn message_received(&self, bytes: usize) {
            self.push(format!("received {bytes}"));
        }
        fn state_changed(&self, from: ConnState, to: ConnState) {
            self.push(format!("state {from} {to}"));
        }
        fn connection_opened(&self, how: OpenKind) {
            self.push(format!("opened {how}"));
        }
        fn connection_closed(&self, reason: CloseKind) {
            self.push(format!("closed {reason}"));
        }
        fn error(&self, kind: ErrorKind) {
            self.push(format!("error {kind}"));
        }
        fn pending_dials(&self, delta: isize) {
            self.push(format!("dials {delta}"));
        }
        fn queued_messages(&self, delta: isize) {
            self.push(format!("queue {delta}"));
        }
        fn memory(&self, delta: isize) {
            self.push(format!("memory {delta}"));
        }
    }

    fn feed_all(sink: &dyn MetricsSink) {
        sink.message_queued(1);
        sink.messages_queued(&mut [10, 11].into_iter());
        sink.message_accepted(12);
        sink.batch_flushed(2, 3);
        sink.message_acked(4, Duration::from_micros(5));
        sink.message_undelivered(6);
        sink.batch_received(7, 8);
        sink.message_received(9);
        sink.state_changed(ConnState::Connecting, ConnState::Connected);
        sink.connection_closed(CloseKind::Expired);
        sink.error(ErrorKind::AckTimeout);
        sink.pending_dials(-1);
        sink.queued_messages(2);
        sink.memory(-3);
    }

    const EXPECTED: [&str; 17] = [
        "queued 1",
        "queued 10",
        "queued 11",
        "queued 12",
        "queue 1",
        "memory 12",
        "flushed 2 3",
        "acked 4 5",
        "undelivered 6",
        "batch_received 7 8",
        "received 9",
        "state connecting connected",
        "closed expired",
        "error ack_timeout",
        "dials -1",
        "queue 2",
        "memory -3",
    ];

    #[test]
    fn fan_out_forwards_every_event_to_every_sink_in_order() {
        let a = Arc::new(Recorder::default());
        let b = Arc::new(Recorder::default());
        let mut fan = FanOut::new(vec![a.clone(), Arc::new(NoopSink)]);
        fan.push(b.clone());
        assert_eq!(fan.sinks().len(), 3);
        feed_all(&fan);
        assert_eq!(a.events(), EXPECTED);
        assert_eq!(b.events(), EXPECTED);
    }

    /// Records the batch events a sink gets, one `Vec` per call.
    #[derive(Debug, Default)]
    struct Calls(Mutex<Vec<(&'static str, Vec<usize>)>>);

    impl Calls {
        fn record(&self, what: &'static str, items: impl Iterator<Item = usize>) {
            self.0.lock().unwrap().push((what, items.collect()));
        }
    }

    impl MetricsSink for Calls {
        fn messages_queued(&self, sizes: &mut dyn Iterator<Item = usize>) {
            self.record("queued", sizes);
        }
        fn messages_acked(&self, acked: &mut dyn Iterator<Item = (usize, Duration)>) {
            let acked: Vec<(usize, Duration)> = acked.collect();
            assert!(acked
                .iter()
                .all(|&(b, l)| l == Duration::from_micros(b as u64)));
            self.record("acked", acked.into_iter().map(|(b, _)| b));
        }
        fn messages_received(&self, sizes: &mut dyn Iterator<Item = usize>) {
            self.record("received", sizes);
        }
    }

    proptest::proptest! {
        /// `FanOut` passes a batch event of any length on to every sink
        /// whole and in order, in calls of 1 to `FAN_CHUNK` items.
        #[test]
        fn fan_out_forwards_batches_whole_in_bounded_chunks(n in 0usize..300) {
            let a = Arc::new(Calls::default());
            let b = Arc::new(Calls::default());
            let fan = FanOut::new(vec![a.clone(), b.clone()]);
            let items: Vec<usize> = (0..n).collect();
            fan.messages_queued(&mut items.iter().copied());
            fan.messages_acked(&mut items.iter().map(|&i| (i, Duration::from_micros(i as u64))));
            fan.messages_received(&mut items.iter().copied());
            for sink in [&a, &b] {
                let calls = sink.0.lock().unwrap().clone();
                for what in ["queued", "acked", "received"] {
                    let mine: Vec<&Vec<usize>> = calls.iter().filter(|c| c.0 == what).map(|c| &c.1).collect();
                    proptest::prop_assert!(mine.iter().all(|c| (1..=FAN_CHUNK).contains(&c.len())));
                    let all: Vec<usize> = mine.into_iter().flatten().copied().collect();
                    proptest::prop_assert_eq!(&all, &items);
                }
            }
        }
    }

    #[test]
    fn empty_fan_out_and_noop_accept_everything() {
        feed_all(&FanOut::default());
        feed_all(&NoopSink);
    }

    #[test]
    fn label_sets_are_distinct_and_indexed_in_order() {
        for (i, s) in ConnState::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        for (i, k) in CloseKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        let mut names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        let mut names: Vec<&str> = CloseKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CloseKind::ALL.len());
        let gauged: Vec<ConnState> = ConnState::ALL
            .into_iter()
            .filter(|s| s.is_gauged())
            .collect();
        assert_eq!(gauged, [ConnState::Connecting, ConnState::Connected]);
    }
}
