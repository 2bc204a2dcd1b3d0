//! The default sink: [`Metrics`], its snapshots and the rate window.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use thread_local::ThreadLocal;

use crate::histogram::{Histogram, LatencySummary};
use crate::sink::{CloseKind, ConnState, ErrorKind, MetricsSink, OpenKind};

/// The default rate window: 10 seconds.
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(10);

/// A sample is stored only if this fraction of the window has passed since
/// the last stored one, which bounds the samples kept to about this many.
const SAMPLES_PER_WINDOW: u32 = 64;
/// Hard cap on stored samples, whatever the call pattern.
const MAX_SAMPLES: usize = 2 * SAMPLES_PER_WINDOW as usize + 2;

fn add_u64(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Relaxed);
}

fn add_i64(gauge: &AtomicI64, delta: isize) {
    gauge.fetch_add(delta as i64, Relaxed);
}

/// A zero-sized field that starts a new cache-line group in a `repr(C)`
/// struct (128 bytes: two lines, as adjacent-line prefetchers pull pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct LineBreak;

/// What one thread has added to the figures `send` moves per message, in
/// [`Core::local`]. Only the owning thread writes its copy, with a plain
/// load and store (no locked read-modify-write); readers sum every
/// thread's copy. Counts wrap, and so does the sum: a gauge's copies may
/// drift far apart (one thread adds what another subtracts), their sum
/// modulo 2^64 is the gauge.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Local {
    messages_queued: AtomicU64,
    payload_bytes_queued: AtomicU64,
    queued_messages: AtomicU64,
    memory_bytes: AtomicU64,
}

/// Adds `n` to a counter only the calling thread writes (see [`Local`]).
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// The atomics every event updates; shared with the Prometheus collector.
///
/// The figures `send` moves for every message (the queued counters and the
/// queued-messages and memory gauges) are kept per thread ([`Local`]), so
/// that a `send` costs no locked instruction and no cache line shared with
/// other cores. The rest is laid out in groups by the thread that writes
/// them per batch (the peer driver, the reader), each group on its own
/// cache lines, so that a counter bumped on one core does not keep evicting
/// the line another core is bumping (false sharing).
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct Core {
    local: ThreadLocal<Local>,
    _gauges: LineBreak,
    pub(crate) pending_dials: AtomicI64,
    _driver: LineBreak,
    // Written by the peer drivers.
    pub(crate) batches_sent: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) payload_bytes_acked: AtomicU64,
    pub(crate) messages_undelivered: AtomicU64,
    pub(crate) payload_bytes_undelivered: AtomicU64,
    /// Counts `message_acked` too (one record per ack).
    pub(crate) latency: Histogram,
    _reader: LineBreak,
    // Written by the readers.
    pub(crate) batches_received: AtomicU64,
    pub(crate) batch_messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) payload_bytes_received: AtomicU64,
    _rare: LineBreak,
    // Connection events: rare.
    pub(crate) connecting: AtomicI64,
    pub(crate) connected: AtomicI64,
    pub(crate) state_entries: [AtomicU64; ConnState::ALL.len()],
    pub(crate) closes: [AtomicU64; CloseKind::ALL.len()],
    pub(crate) opens: [AtomicU64; OpenKind::ALL.len()],
    pub(crate) errors: [AtomicU64; ErrorKind::ALL.len()],
}

impl Core {
    /// The calling thread's [`Local`].
    fn local(&self) -> &Local {
        self.local.get_or_default()
    }

    /// The sum of one field of every thread's [`Local`].
    fn sum(&self, field: impl Fn(&Local) -> &AtomicU64) -> u64 {
        self.local
            .iter()
            .fold(0u64, |sum, l| sum.wrapping_add(field(l).load(Relaxed)))
    }

    pub(crate) fn messages_queued(&self) -> u64 {
        self.sum(|l| &l.messages_queued)
    }

    pub(crate) fn payload_bytes_queued(&self) -> u64 {
        self.sum(|l| &l.payload_bytes_queued)
    }

    pub(crate) fn queued_messages(&self) -> i64 {
        self.sum(|l| &l.queued_messages) as i64
    }

    pub(crate) fn memory_bytes(&self) -> i64 {
        self.sum(|l| &l.memory_bytes) as i64
    }

    fn gauge(&self, state: ConnState) -> Option<&AtomicI64> {
        match state {
            ConnState::Connecting => Some(&self.connecting),
            ConnState::Connected => Some(&self.connected),
            ConnState::New | ConnState::Disconnected | ConnState::Failed => None,
        }
    }

    /// Messages delivered in either direction: acked out + received in.
    fn delivered(&self) -> u64 {
        self.latency
            .count()
            .wrapping_add(self.messages_received.load(Relaxed))
    }

    /// Reads every atomic (not as one atomic step; see [`MetricsSnapshot`]).
    pub(crate) fn read(&self, messages_per_second: f64) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Relaxed);
        let latency = self.latency.summary();
        MetricsSnapshot {
            messages_queued: self.messages_queued(),
            messages_sent: load(&self.messages_sent),
            messages_acked: latency.count,
            messages_undelivered: load(&self.messages_undelivered),
            messages_received: load(&self.messages_received),
            batches_sent: load(&self.batches_sent),
            batches_received: load(&self.batches_received),
            batch_messages_received: load(&self.batch_messages_received),
            bytes_sent: load(&self.bytes_sent),
            bytes_received: load(&self.bytes_received),
            payload_bytes_queued: self.payload_bytes_queued(),
            payload_bytes_acked: load(&self.payload_bytes_acked),
            payload_bytes_undelivered: load(&self.payload_bytes_undelivered),
            payload_bytes_received: load(&self.payload_bytes_received),
            connections_connecting: self.connecting.load(Relaxed),
            connections_connected: self.connected.load(Relaxed),
            state_entries: StateCounts(self.state_entries.each_ref().map(load)),
            pending_dials: self.pending_dials.load(Relaxed),
            queued_messages: self.queued_messages(),
            memory_bytes: self.memory_bytes(),
            errors: ErrorCounts(self.errors.each_ref().map(load)),
            closes: CloseCounts(self.closes.each_ref().map(load)),
            opens: OpenCounts(self.opens.each_ref().map(load)),
            latency,
            messages_per_second,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    delivered: u64,
}

/// Samples of the delivered-message total, kept over about one window.
#[derive(Debug)]
struct RateWindow {
    window: Duration,
    min_gap: Duration,
    samples: VecDeque<Sample>,
}

impl RateWindow {
    fn new(window: Duration) -> Self {
        Self {
            window,
            min_gap: window / SAMPLES_PER_WINDOW,
            samples: VecDeque::with_capacity(MAX_SAMPLES),
        }
    }

    /// Stores a sample of `delivered` at `now` (see [`Metrics::tick`]) and
    /// returns the rate at `now`.
    fn observe(&mut self, now: Instant, delivered: u64) -> f64 {
        let store = match self.samples.back() {
            None => true,
            Some(last) => now
                .checked_duration_since(last.at)
                .is_some_and(|d| d >= self.min_gap),
        };
        if store {
            if self.samples.len() == MAX_SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back(Sample { at: now, delivered });
        }
        if let Some(cutoff) = now.checked_sub(self.window) {
            // Keep the newest sample at or before the cutoff as the baseline.
            while self.samples.len() >= 2 && self.samples[1].at <= cutoff {
                self.samples.pop_front();
            }
        }
        let Some(base) = self.samples.front() else {
            return 0.0;
        };
        let span = now.saturating_duration_since(base.at);
        if span.is_zero() {
            return 0.0;
        }
        delivered.wrapping_sub(base.delivered) as f64 / span.as_secs_f64()
    }
}

/// The default sink: lock-free counters, gauges and a latency histogram.
///
/// Every [`MetricsSink`] event is a few relaxed atomic operations; nothing
/// on the event path locks or allocates, except a thread's first event,
/// which sets up that thread's own copy of the figures `send` moves per
/// message (those are kept per thread and summed when read, so the
/// sending threads share no cache line). A `parking_lot::Mutex` guards only
/// the rate window, which only [`tick`](Self::tick),
/// [`snapshot`](Self::snapshot) and
/// [`network_metrics`](Self::network_metrics) touch.
///
/// # What is counted
///
/// - Counters: see the fields of [`MetricsSnapshot`].
/// - Connection gauges: connections in [`ConnState::Connecting`] and
///   [`ConnState::Connected`] ([`ConnState::is_gauged`]); every
///   [`state_changed`](MetricsSink::state_changed) also counts an entry into
///   `to`.
/// - Gauges reported by delta: pending dials, queued messages, memory.
/// - Latency: every [`message_acked`](MetricsSink::message_acked) latency
///   goes into a [`Histogram`].
///
/// # Memory
///
/// `memory_usage` / `memory_bytes` is the sum of the deltas reported
/// through [`memory`](MetricsSink::memory): the payload bytes of queued,
/// batched, unacknowledged and received-but-not-yet-consumed messages plus
/// connection buffer capacities, as reported by the manager. It is exact
/// if the manager reports every take and release, and is not an estimate
/// made here.
///
/// # Rate
///
/// `messages_per_second` is (messages acknowledged + messages received)
/// per second over the recent rate window (default
/// [`DEFAULT_RATE_WINDOW`], 10 s). There is no clock inside: the rate is
/// computed from samples of the delivered total recorded at the `now`
/// passed to [`tick`](Self::tick) and to [`snapshot`](Self::snapshot) /
/// [`network_metrics`](Self::network_metrics):
///
/// 1. Each call stores a sample `(now, total)`, unless less than
///    window / 64 has passed since the last stored one or `now` is earlier
///    than it.
/// 2. The baseline is the newest stored sample at or before
///    `now - window`, or, while the window is not yet full, the oldest
///    stored sample. Older samples are dropped.
/// 3. The rate is `(total at now - baseline total) / (now - baseline time)`,
///    or `0.0` if that span is zero (e.g. on the very first call).
///
/// So with ticks every second and a 10 s window, the rate at `now` covers
/// exactly `[now - 10 s, now]`; with ticks sparser than the window it covers
/// the span since the previous tick. Call `tick` once at start-up and then
/// periodically.
///
/// # Examples
///
/// ```
/// use qudag_metrics::{ConnState, Metrics, MetricsSink};
/// use std::time::{Duration, Instant};
///
/// let metrics = Metrics::new();
/// let t0 = Instant::now();
/// metrics.tick(t0);
///
/// metrics.state_changed(ConnState::New, ConnState::Connecting);
/// metrics.state_changed(ConnState::Connecting, ConnState::Connected);
/// for _ in 0..20 {
///     metrics.message_acked(100, Duration::from_millis(4));
/// }
///
/// let m = metrics.network_metrics(t0 + Duration::from_secs(2));
/// assert_eq!(m.connections, 1);
/// assert_eq!(m.messages_per_second, 10.0);
/// assert_eq!(m.avg_latency, Duration::from_millis(4));
/// ```
pub struct Metrics {
    core: Arc<Core>,
    window: Mutex<RateWindow>,
}

impl Metrics {
    /// A sink with the default rate window ([`DEFAULT_RATE_WINDOW`], 10 s).
    pub fn new() -> Self {
        Self::with_rate_window(DEFAULT_RATE_WINDOW)
    }

    /// A sink whose `messages_per_second` covers `window`.
    ///
    /// # Panics
    ///
    /// Panics if `window` is zero.
    pub fn with_rate_window(window: Duration) -> Self {
        assert!(!window.is_zero(), "rate window must be non-zero");
        Self {
            core: Arc::new(Core::default()),
            window: Mutex::new(RateWindow::new(window)),
        }
    }

    /// The rate window.
    pub fn rate_window(&self) -> Duration {
        self.window.lock().window
    }

    /// Records a rate sample at `now` (see [Rate](Self#rate)). The manager
    /// calls it from a periodic task; `snapshot` also records one.
    pub fn tick(&self, now: Instant) {
        self.messages_per_second(now);
    }

    /// Records a rate sample at `now` and returns the rate over the window
    /// (see [Rate](Self#rate)).
    pub fn messages_per_second(&self, now: Instant) -> f64 {
        let delivered = self.core.delivered();
        self.window.lock().observe(now, delivered)
    }

    /// The full snapshot at `now`; records a rate sample like
    /// [`tick`](Self::tick).
    ///
    /// Each figure is read atomically, the set is not: events recorded
    /// concurrently may show in some figures and not yet in others.
    pub fn snapshot(&self, now: Instant) -> MetricsSnapshot {
        let rate = self.messages_per_second(now);
        self.core.read(rate)
    }

    /// The compact snapshot at `now`; records a rate sample like
    /// [`tick`](Self::tick).
    pub fn network_metrics(&self, now: Instant) -> NetworkMetrics {
        self.snapshot(now).network_metrics()
    }

    /// The latency histogram (send → ack of every acknowledged message).
    pub fn latency(&self) -> &Histogram {
        &self.core.latency
    }

    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("rate_window", &self.rate_window())
            .field("messages_acked", &self.core.latency.count())
            .field(
                "messages_received",
                &self.core.messages_received.load(Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl MetricsSink for Metrics {
    fn message_queued(&self, bytes: usize) {
        let l = self.core.local();
        bump(&l.messages_queued, 1);
        bump(&l.payload_bytes_queued, bytes as u64);
    }

    fn message_accepted(&self, bytes: usize) {
        let l = self.core.local();
        bump(&l.messages_queued, 1);
        bump(&l.payload_bytes_queued, bytes as u64);
        bump(&l.queued_messages, 1);
        bump(&l.memory_bytes, bytes as u64);
    }

    fn messages_queued(&self, sizes: &mut dyn Iterator<Item = usize>) {
        let (mut count, mut bytes) = (0usize, 0usize);
        for len in sizes {
            count += 1;
            bytes += len;
        }
        let l = self.core.local();
        bump(&l.messages_queued, count as u64);
        bump(&l.payload_bytes_queued, bytes as u64);
    }

    fn batch_flushed(&self, messages: usize, bytes: usize) {
        self.core.batches_sent.fetch_add(1, Relaxed);
        add_u64(&self.core.messages_sent, messages);
        add_u64(&self.core.bytes_sent, bytes);
    }

    fn message_acked(&self, bytes: usize, latency: Duration) {
        self.core.latency.record(latency);
        add_u64(&self.core.payload_bytes_acked, bytes);
    }

    fn messages_acked(&self, acked: &mut dyn Iterator<Item = (usize, Duration)>) {
        let mut bytes = 0usize;
        self.core.latency.record_many(acked.map(|(len, latency)| {
            bytes += len;
            latency
        }));
        add_u64(&self.core.payload_bytes_acked, bytes);
    }

    fn message_undelivered(&self, bytes: usize) {
        self.core.messages_undelivered.fetch_add(1, Relaxed);
        add_u64(&self.core.payload_bytes_undelivered, bytes);
    }

    fn batch_received(&self, messages: usize, bytes: usize) {
        self.core.batches_received.fetch_add(1, Relaxed);
        add_u64(&self.core.batch_messages_received, messages);
        add_u64(&self.core.bytes_received, bytes);
    }

    fn message_received(&self, bytes: usize) {
        self.core.messages_received.fetch_add(1, Relaxed);
        add_u64(&self.core.payload_bytes_received, bytes);
    }

    fn messages_received(&self, sizes: &mut dyn Iterator<Item = usize>) {
        let (mut count, mut bytes) = (0usize, 0usize);
        for len in sizes {
            count += 1;
            bytes += len;
        }
        add_u64(&self.core.messages_received, count);
        add_u64(&self.core.payload_bytes_received, bytes);
    }

    fn state_changed(&self, from: ConnState, to: ConnState) {
        if let Some(g) = self.core.gauge(from) {
            g.fetch_sub(1, Relaxed);
        }
        if let Some(g) = self.core.gauge(to) {
            g.fetch_add(1, Relaxed);
        }
        self.core.state_entries[to.index()].fetch_add(1, Relaxed);
    }

    fn connection_opened(&self, how: OpenKind) {
        self.core.opens[how.index()].fetch_add(1, Relaxed);
    }

    fn connection_closed(&self, reason: CloseKind) {
        self.core.closes[reason.index()].fetch_add(1, Relaxed);
    }

    fn error(&self, kind: ErrorKind) {
        self.core.errors[kind.index()].fetch_add(1, Relaxed);
    }

    fn pending_dials(&self, delta: isize) {
        add_i64(&self.core.pending_dials, delta);
    }

    fn queued_messages(&self, delta: isize) {
        bump(&self.core.local().queued_messages, delta as i64 as u64);
    }

    fn memory(&self, delta: isize) {
        bump(&self.core.local().memory_bytes, delta as i64 as u64);
    }
}

/// The compact snapshot of the seed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NetworkMetrics {
    /// (Messages acknowledged + messages received) per second over the rate
    /// window (see [`Metrics`], "Rate").
    pub messages_per_second: f64,
    /// Connections in [`ConnState::Connected`].
    pub connections: usize,
    /// Mean send → ack latency of every message acknowledged so far (exact,
    /// lifetime).
    pub avg_latency: Duration,
    /// Bytes the manager reports through [`memory`](MetricsSink::memory):
    /// payload bytes of queued, batched, unacknowledged and
    /// received-but-not-yet-consumed messages plus connection buffer
    /// capacities.
    pub memory_usage: usize,
}

/// Counts per [`ConnState`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts([u64; ConnState::ALL.len()]);

impl StateCounts {
    /// The count for `state`.
    pub fn get(&self, state: ConnState) -> u64 {
        self.0[state.index()]
    }

    /// Every `(state, count)`, in [`ConnState::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (ConnState, u64)> + '_ {
        ConnState::ALL.into_iter().zip(self.0)
    }
}

/// Counts per [`ErrorKind`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; ErrorKind::ALL.len()]);

impl ErrorCounts {
    /// The count for `kind`.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind.index()]
    }

    /// The sum over every kind.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Every `(kind, count)`, in [`ErrorKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorKind, u64)> + '_ {
        ErrorKind::ALL.into_iter().zip(self.0)
    }
}

/// Counts per [`CloseKind`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseCounts([u64; CloseKind::ALL.len()]);

impl CloseCounts {
    /// The count for `reason`.
    pub fn get(&self, reason: CloseKind) -> u64 {
        self.0[reason.index()]
    }

    /// The sum over every reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Every `(reason, count)`, in [`CloseKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (CloseKind, u64)> + '_ {
        CloseKind::ALL.into_iter().zip(self.0)
    }
}

/// Counts per [`OpenKind`]: dials, accepts and pooled reuses that gave a
/// peer a usable connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenCounts([u64; OpenKind::ALL.len()]);

impl OpenCounts {
    /// The count for `how`.
    pub fn get(&self, how: OpenKind) -> u64 {
        self.0[how.index()]
    }

    /// The sum over every kind.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Every `(kind, count)`, in [`OpenKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (OpenKind, u64)> + '_ {
        OpenKind::ALL.into_iter().zip(self.0)
    }
}

/// Every figure [`Metrics`] keeps, read at one time.
///
/// Counters count since creation. Gauges are `i64` and go negative only if
/// the reporter's deltas are unbalanced.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// `message_queued` events.
    pub messages_queued: u64,
    /// Messages in flushed batches (sum of `batch_flushed` `messages`).
    pub messages_sent: u64,
    /// `message_acked` events (equals `latency.count`).
    pub messages_acked: u64,
    /// `message_undelivered` events.
    pub messages_undelivered: u64,
    /// `message_received` events.
    pub messages_received: u64,
    /// `batch_flushed` events.
    pub batches_sent: u64,
    /// `batch_received` events.
    pub batches_received: u64,
    /// Messages in received batches (sum of `batch_received` `messages`).
    pub batch_messages_received: u64,
    /// Bytes on the wire in flushed batches.
    pub bytes_sent: u64,
    /// Bytes on the wire in received batches.
    pub bytes_received: u64,
    /// Payload bytes of queued messages.
    pub payload_bytes_queued: u64,
    /// Payload bytes of acknowledged messages.
    pub payload_bytes_acked: u64,
    /// Payload bytes of undelivered messages.
    pub payload_bytes_undelivered: u64,
    /// Payload bytes of received messages.
    pub payload_bytes_received: u64,
    /// Gauge: connections in [`ConnState::Connecting`].
    pub connections_connecting: i64,
    /// Gauge: connections in [`ConnState::Connected`].
    pub connections_connected: i64,
    /// Transitions into each state (`to` of every `state_changed`).
    pub state_entries: StateCounts,
    /// Gauge: dials in progress.
    pub pending_dials: i64,
    /// Gauge: messages held in queues.
    pub queued_messages: i64,
    /// Gauge: bytes held by the manager (see [`NetworkMetrics::memory_usage`]).
    pub memory_bytes: i64,
    /// `error` events per kind.
    pub errors: ErrorCounts,
    /// `connection_closed` events per reason.
    pub closes: CloseCounts,
    /// `connection_opened` events per kind (dialed, accepted, reused).
    pub opens: OpenCounts,
    /// Send → ack latency of acknowledged messages.
    pub latency: LatencySummary,
    /// (Acknowledged + received) messages per second over the rate window.
    pub messages_per_second: f64,
}

impl MetricsSnapshot {
    /// The compact view: connected count and memory clamped at zero, mean
    /// latency.
    pub fn network_metrics(&self) -> NetworkMetrics {
        let clamp = |v: i64| usize::try_from(v.max(0)).unwrap_or(usize::MAX);
        NetworkMetrics {
            messages_per_second: self.messages_per_second,
            connections: clamp(self.connections_connected),
            avg_latency: self.latency.mean,
            memory_usage: clamp(self.memory_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn every_counter_after_known_events() {
        let m = Metrics::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            m.message_queued(100);
        }
        m.messages_queued(&mut [150, 50].into_iter());
        m.batch_flushed(5, 560);
        for i in 1..=4 {
            m.message_acked(100, ms(i));
        }
        m.message_undelivered(100);
        m.batch_received(3, 350);
        m.batch_received(0, 40);
        for _ in 0..3 {
            m.message_received(90);
        }
        m.error(ErrorKind::Decode);
        m.error(ErrorKind::Decode);
        m.error(ErrorKind::Backoff);
        m.connection_closed(CloseKind::Remote);
        m.pending_dials(2);
        m.queued_messages(7);
        m.memory(4096);

        let s = m.snapshot(t0);
        assert_eq!(s.messages_queued, 5);
        assert_eq!(s.payload_bytes_queued, 500);
        assert_eq!(s.batches_sent, 1);
        assert_eq!(s.messages_sent, 5);
        assert_eq!(s.bytes_sent, 560);
        assert_eq!(s.messages_acked, 4);
        assert_eq!(s.payload_bytes_acked, 400);
        assert_eq!(s.messages_undelivered, 1);
        assert_eq!(s.payload_bytes_undelivered, 100);
        assert_eq!(s.batches_received, 2);
        assert_eq!(s.batch_messages_received, 3);
        assert_eq!(s.bytes_received, 390);
        assert_eq!(s.messages_received, 3);
        assert_eq!(s.payload_bytes_received, 270);
        assert_eq!(s.errors.get(ErrorKind::Decode), 2);
        assert_eq!(s.errors.get(ErrorKind::Backoff), 1);
        assert_eq!(s.errors.get(ErrorKind::Other), 0);
        assert_eq!(s.errors.total(), 3);
        assert_eq!(s.closes.get(CloseKind::Remote), 1);
        assert_eq!(s.closes.total(), 1);
        assert_eq!(s.pending_dials, 2);
        assert_eq!(s.queued_messages, 7);
        assert_eq!(s.memory_bytes, 4096);
        assert_eq!(s.latency.count, 4);
        assert_eq!(s.latency.mean, Duration::from_micros(2500));
        assert_eq!(s.latency.max, ms(4));
        assert!(s.latency.p50 >= ms(2) && s.latency.p50 < ms(2) + ms(2) / 16);
        assert!(s.latency.p90 >= ms(4) && s.latency.p90 <= ms(4));
        assert_eq!(s.latency.p99, ms(4)); // capped at the exact max
        assert_eq!(s.messages_per_second, 0.0); // first sample: empty span

        let n = s.network_metrics();
        assert_eq!(n.connections, 0);
        assert_eq!(n.avg_latency, Duration::from_micros(2500));
        assert_eq!(n.memory_usage, 4096);

        // The gauges come back down.
        m.pending_dials(-2);
        m.queued_messages(-7);
        m.memory(-4096);
        let s = m.snapshot(t0);
        assert_eq!(
            (s.pending_dials, s.queued_messages, s.memory_bytes),
            (0, 0, 0)
        );
        assert_eq!(m.network_metrics(t0).memory_usage, 0);
    }

    #[test]
    fn connection_gauges_return_to_zero_when_connections_close() {
        use ConnState::*;
        let m = Metrics::new();
        let t = Instant::now();
        for _ in 0..3 {
            m.state_changed(New, Connecting);
        }
        let s = m.snapshot(t);
        assert_eq!((s.connections_connecting, s.connections_connected), (3, 0));
        m.state_changed(Connecting, Connected);
        m.state_changed(Connecting, Connected);
        m.state_changed(Connecting, Failed);
        let s = m.snapshot(t);
        assert_eq!((s.connections_connecting, s.connections_connected), (0, 2));
        assert_eq!(m.network_metrics(t).connections, 2);
        // The failed one retries and connects; one drops and reconnects.
        m.state_changed(Failed, Connecting);
        m.state_changed(Connecting, Connected);
        m.state_changed(Connected, Disconnected);
        m.state_changed(Disconnected, Connecting);
        m.state_changed(Connecting, Connected);
        assert_eq!(m.network_metrics(t).connections, 3);
        for _ in 0..3 {
            m.state_changed(Connected, Disconnected);
            m.connection_closed(CloseKind::Shutdown);
        }
        let s = m.snapshot(t);
        assert_eq!((s.connections_connecting, s.connections_connected), (0, 0));
        assert_eq!(s.network_metrics().connections, 0);
        assert_eq!(s.state_entries.get(Connecting), 5);
        assert_eq!(s.state_entries.get(Connected), 4);
        assert_eq!(s.state_entries.get(Disconnected), 4);
        assert_eq!(s.state_entries.get(Failed), 1);
        assert_eq!(s.state_entries.get(New), 0);
        assert_eq!(s.closes.get(CloseKind::Shutdown), 3);
    }

    #[test]
    fn rate_covers_the_window_not_the_lifetime() {
        let m = Metrics::with_rate_window(secs(10));
        let t0 = Instant::now();
        // 1000 acks per second for 10 s, ticked every second.
        m.tick(t0);
        for s in 1..=10 {
            for _ in 0..1000 {
                m.message_acked(10, ms(1));
            }
            m.tick(t0 + secs(s));
        }
        assert_eq!(m.network_metrics(t0 + secs(10)).messages_per_second, 1000.0);
        // Then 5 s of 200 received per second: the window [5 s, 15 s] holds
        // 5 * 1000 + 5 * 200 = 6000 messages.
        for s in 11..=15 {
            for _ in 0..200 {
                m.message_received(10);
            }
            m.tick(t0 + secs(s));
        }
        assert_eq!(m.network_metrics(t0 + secs(15)).messages_per_second, 600.0);
        // 10 idle seconds later the window is empty, the lifetime is not.
        for s in 16..=25 {
            m.tick(t0 + secs(s));
        }
        let n = m.network_metrics(t0 + secs(25));
        assert_eq!(n.messages_per_second, 0.0);
        assert_eq!(n.avg_latency, ms(1));
    }

    #[test]
    fn rate_before_the_window_fills_uses_the_oldest_sample() {
        let m = Metrics::with_rate_window(secs(10));
        let t0 = Instant::now();
        m.tick(t0);
        for _ in 0..300 {
            m.message_received(1);
        }
        assert_eq!(m.snapshot(t0 + secs(3)).messages_per_second, 100.0);
    }

    #[test]
    fn sparse_ticks_use_the_previous_tick_as_baseline() {
        let m = Metrics::with_rate_window(secs(1));
        let t0 = Instant::now();
        m.tick(t0);
        for _ in 0..50 {
            m.message_received(1);
        }
        // 5 s later, with a 1 s window, the only baseline is t0.
        assert_eq!(m.snapshot(t0 + secs(5)).messages_per_second, 10.0);
    }

    #[test]
    fn first_call_and_time_going_backwards_give_zero_without_panicking() {
        let m = Metrics::with_rate_window(secs(1));
        let t0 = Instant::now() + secs(100);
        m.message_received(1);
        assert_eq!(m.snapshot(t0).messages_per_second, 0.0);
        assert_eq!(m.snapshot(t0 - secs(50)).messages_per_second, 0.0);
        assert_eq!(m.snapshot(t0).messages_per_second, 0.0);
    }

    #[test]
    fn zero_window_is_refused() {
        let r = std::panic::catch_unwind(|| Metrics::with_rate_window(Duration::ZERO));
        assert!(r.is_err());
        assert_eq!(Metrics::default().rate_window(), DEFAULT_RATE_WINDOW);
    }

    #[test]
    fn events_from_many_threads_through_dyn_are_all_counted() {
        let metrics = Arc::new(Metrics::new());
        let sink: Arc<dyn MetricsSink> = metrics.clone();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let sink = &sink;
                s.spawn(move || {
                    for _ in 0..1000 {
                        sink.message_accepted(2);
                        sink.message_acked(2, ms(1));
                        sink.queued_messages(-1);
                        sink.memory(-2);
                    }
                });
            }
        });
        let snap = metrics.snapshot(Instant::now());
        assert_eq!(snap.messages_queued, 4000);
        assert_eq!(snap.messages_acked, 4000);
        assert_eq!(snap.payload_bytes_acked, 8000);
        assert_eq!(snap.queued_messages, 0);
        assert_eq!(snap.memory_bytes, 0);
        assert!(format!("{metrics:?}").contains("messages_acked: 4000"));
    }

    /// An event that moves the figures kept per thread ([`Local`]).
    #[derive(Clone, Debug)]
    enum Moved {
        Accepted(usize),
        Queued(usize),
        ManyQueued(Vec<usize>),
        Gauge(isize),
        Memory(isize),
    }

    fn moved() -> impl Strategy<Value = Moved> {
        prop_oneof![
            (0usize..1 << 40).prop_map(Moved::Accepted),
            (0usize..1 << 40).prop_map(Moved::Queued),
            proptest::collection::vec(0usize..1 << 20, 0..5).prop_map(Moved::ManyQueued),
            any::<i32>().prop_map(|d| Moved::Gauge(d as isize)),
            prop_oneof![
                any::<i32>().prop_map(|d| d as isize),
                Just(isize::MAX),
                Just(isize::MIN)
            ]
            .prop_map(Moved::Memory),
        ]
    }

    proptest! {
        /// The figures kept per thread read as the sum of every thread's
        /// events, from threads that ran at once and threads that ended
        /// before (whose ids, and copies, later threads take over); and
        /// `message_accepted` is `message_queued`, `queued_messages(1)` and
        /// `memory(bytes)`.
        #[test]
        fn per_thread_figures_sum_every_threads_events(
            waves in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(moved(), 0..20), 1..4),
                1..4,
            ),
        ) {
            let m = Metrics::new();
            let (mut queued, mut bytes, mut gauge, mut memory) = (0u64, 0u64, 0i64, 0i64);
            for wave in &waves {
                std::thread::scope(|s| {
                    for events in wave {
                        let m = &m;
                        s.spawn(move || {
                            for e in events {
                                match e {
                                    Moved::Accepted(n) => m.message_accepted(*n),
                                    Moved::Queued(n) => m.message_queued(*n),
                                    Moved::ManyQueued(ns) => m.messages_queued(&mut ns.iter().copied()),
                                    Moved::Gauge(d) => m.queued_messages(*d),
                                    Moved::Memory(d) => m.memory(*d),
                                }
                            }
                        });
                    }
                });
                for e in wave.iter().flatten() {
                    match e {
                        Moved::Accepted(n) => {
                            queued += 1;
                            bytes = bytes.wrapping_add(*n as u64);
                            gauge = gauge.wrapping_add(1);
                            memory = memory.wrapping_add(*n as i64);
                        }
                        Moved::Queued(n) => {
                            queued += 1;
                            bytes = bytes.wrapping_add(*n as u64);
                        }
                        Moved::ManyQueued(ns) => {
                            queued += ns.len() as u64;
                            bytes = ns.iter().fold(bytes, |b, &n| b.wrapping_add(n as u64));
                        }
                        Moved::Gauge(d) => gauge = gauge.wrapping_add(*d as i64),
                        Moved::Memory(d) => memory = memory.wrapping_add(*d as i64),
                    }
                }
                let snap = m.snapshot(Instant::now());
                prop_assert_eq!(snap.messages_queued, queued);
                prop_assert_eq!(snap.payload_bytes_queued, bytes);
                prop_assert_eq!(snap.queued_messages, gauge);
                prop_assert_eq!(snap.memory_bytes, memory);
            }
        }
    }

    proptest! {
        /// The batch forms count exactly what the per-message forms count.
        #[test]
        fn batch_events_equal_per_message_events(
            acked in proptest::collection::vec((0usize..100_000, 0u64..10_000_000), 0..50),
            received in proptest::collection::vec(0usize..100_000, 0..50),
        ) {
            let (one, many) = (Metrics::new(), Metrics::new());
            for &(len, ns) in &acked {
                one.message_acked(len, Duration::from_nanos(ns));
            }
            for &len in &received {
                one.message_received(len);
            }
            many.messages_acked(&mut acked.iter().map(|&(l, ns)| (l, Duration::from_nanos(ns))));
            many.messages_received(&mut received.iter().copied());
            let t = Instant::now();
            let (a, b) = (one.snapshot(t), many.snapshot(t));
            prop_assert_eq!(a.messages_acked, b.messages_acked);
            prop_assert_eq!(a.payload_bytes_acked, b.payload_bytes_acked);
            prop_assert_eq!(a.messages_received, b.messages_received);
            prop_assert_eq!(a.payload_bytes_received, b.payload_bytes_received);
            prop_assert_eq!(a.latency, b.latency);
        }
    }

    proptest! {
        /// Any valid walk through the state machine leaves the gauges equal
        /// to the connections in each live state, and zero after closing.
        #[test]
        fn gauges_track_states_and_return_to_zero(
            walks in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 0..12), 0..8),
        ) {
            use ConnState::*;
            let m = Metrics::new();
            let mut states = Vec::new();
            for walk in &walks {
                let mut s = New;
                for &ok in walk {
                    let next = match (s, ok) {
                        (New | Disconnected | Failed, _) => Connecting,
                        (Connecting, true) => Connected,
                        (Connecting, false) => Failed,
                        (Connected, _) => Disconnected,
                    };
                    m.state_changed(s, next);
                    s = next;
                }
                states.push(s);
            }
            let snap = m.snapshot(Instant::now());
            let count = |st| states.iter().filter(|&&s| s == st).count() as i64;
            prop_assert_eq!(snap.connections_connecting, count(Connecting));
            prop_assert_eq!(snap.connections_connected, count(Connected));
            for s in states {
                match s {
                    Connecting => m.state_changed(Connecting, Failed),
                    Connected => m.state_changed(Connected, Disconnected),
                    _ => {}
                }
            }
            let snap = m.snapshot(Instant::now());
            prop_assert_eq!(snap.connections_connecting, 0);
            prop_assert_eq!(snap.connections_connected, 0);
        }

        /// Whatever the tick schedule, the rate equals the delivered delta
        /// over the span since the baseline, and the samples stay bounded.
        #[test]
        fn rate_matches_its_definition_and_samples_stay_bounded(
            steps in proptest::collection::vec((0u64..3_000, 0u64..500), 1..300),
            window_ms in 1u64..5_000,
        ) {
            let window = ms(window_ms);
            let m = Metrics::with_rate_window(window);
            let t0 = Instant::now();
            let mut t = t0;
            let mut total = 0u64;
            // Every tick at or after `t0`, with the total at that time.
            let mut history: Vec<(Instant, u64)> = Vec::new();
            for (gap, delivered) in steps {
                t += ms(gap);
                for _ in 0..delivered {
                    m.message_received(1);
                }
                total += delivered;
                let rate = m.messages_per_second(t);
                history.push((t, total));
                let samples = m.window.lock().samples.len();
                prop_assert!(samples <= MAX_SAMPLES);
                // The baseline is one of the earlier ticks at or before t.
                let base = m.window.lock().samples[0];
                prop_assert!(base.at <= t);
                prop_assert!(history.iter().any(|&(at, d)| at == base.at && d == base.delivered));
                // It is no older than needed: the next stored sample is
                // after the cutoff.
                if let (Some(next), Some(cutoff)) = (m.window.lock().samples.get(1), t.checked_sub(window)) {
                    prop_assert!(next.at > cutoff);
                }
                let span = t - base.at;
                let want = if span.is_zero() { 0.0 } else { (total - base.delivered) as f64 / span.as_secs_f64() };
                prop_assert_eq!(rate, want);
            }
        }
    }
}
