//! One authenticated, keyed connection of a peer session: set-up, and the
//! reader task that opens, decodes, deduplicates and delivers batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use qudag_batch::{
    decode_body, CodecLimits, ConnectionRules, DecodeError, Frame, FrameDecoder, Inbox, InboxPlan,
    Resume, RuleError,
};
use qudag_crypto::{
    default_sealer, OpenError, PeerId, Sealer, SessionKey, KEY_LEN, LABEL_DIALER_TO_LISTENER,
    LABEL_LISTENER_TO_DIALER,
};
use qudag_metrics::{ErrorKind, MetricsSink};
use qudag_pool::{ConnectionSlot, Poolable};
use qudag_transport::{CloseReason, Connection, RecvStream, SendStream, Side};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Notify};
use tracing::Instrument;

use crate::NetError;

/// Application close codes this crate sends (documented in docs/PROTOCOL.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum CloseCode {
    /// Closed on purpose (disconnect of an expired pooled connection, drop).
    Normal = 0,
    /// A simultaneous dial left two connections; this one lost.
    Duplicate = 1,
    /// Pooled longer than the pool timeout.
    Expired = 2,
    /// Evicted from the pool to make room under the connection limit.
    Evicted = 3,
    /// The peer sent bytes that do not decode, open or follow the sequence.
    Protocol = 4,
    /// The peer did not acknowledge within the ack timeout.
    Unresponsive = 5,
    /// The manager shut down.
    Shutdown = 6,
    /// The connection limit is reached.
    Limit = 7,
}

impl CloseCode {
    pub(crate) fn reason(self) -> &'static [u8] {
        match self {
            CloseCode::Normal => b"normal",
            CloseCode::Duplicate => b"duplicate connection",
            CloseCode::Expired => b"pooled connection expired",
            CloseCode::Evicted => b"evicted under the connection limit",
            CloseCode::Protocol => b"protocol violation",
            CloseCode::Unresponsive => b"unresponsive",
            CloseCode::Shutdown => b"shutdown",
            CloseCode::Limit => b"connection limit reached",
        }
    }
}

/// What the pool and the manager hold of a session: the connection and its limit slot.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) conn: Arc<dyn Connection>,
    slot: Mutex<Option<ConnectionSlot>>,
    signals: Arc<Signals>,
}

impl SessionHandle {
    pub(crate) fn close(&self, code: CloseCode) {
        self.conn.close(code as u32, code.reason());
    }

    /// True once a message went either way on this connection.
    pub(crate) fn carried(&self) -> bool {
        self.signals.carried.load(Ordering::Acquire)
    }

    /// Marks that a message went out on this connection.
    pub(crate) fn mark_carried(&self) {
        self.signals.carried.store(true, Ordering::Release);
    }

    /// Closes the connection and gives its limit slot back at once (eviction).
    pub(crate) fn evict(&self) {
        self.slot.lock().take();
        self.close(CloseCode::Evicted);
    }
}

/// A pooled session: the handle, shared with the peer's driver.
#[derive(Debug, Clone)]
pub(crate) struct Pooled(pub(crate) Arc<SessionHandle>);

impl Poolable for Pooled {
    fn is_alive(&self) -> bool {
        self.0.conn.is_alive()
    }
}

/// A received batch on its way to the application.
pub(crate) struct Delivery {
    pub(crate) peer: PeerId,
    pub(crate) messages: Vec<Bytes>,
    pub(crate) receipt: Receipt,
    /// The messages' bytes in the `memory` gauge, given back as the
    /// application takes them, or when the delivery is dropped: also if
    /// that happens inside the `Incoming` channel, a delivery sent through
    /// a slot reserved before `Incoming` was dropped.
    pub(crate) held: Held,
}

/// Acknowledges a batch once the application has taken all of its messages.
///
/// Dropped without [`delivered`](Receipt::delivered) (the application went
/// away with the batch unread), the batch is never acknowledged and its
/// sender hands it back as maybe delivered.
pub(crate) struct Receipt {
    recv: Arc<RecvState>,
    /// The batch's bytes in the `incoming_bytes` budget, released with the receipt.
    _budget: tokio::sync::OwnedSemaphorePermit,
    /// The sender incarnation the messages came from.
    incarnation: u64,
    /// Every message of that incarnation below this number is now taken.
    end: u64,
}

impl Receipt {
    /// A receipt for a batch of `recv`'s incarnation 0 that ends at `end`,
    /// holding `budget`: for tests of what takes deliveries.
    #[cfg(test)]
    pub(crate) fn for_test(
        recv: Arc<RecvState>,
        end: u64,
        budget: tokio::sync::OwnedSemaphorePermit,
    ) -> Self {
        Receipt {
            recv,
            _budget: budget,
            incarnation: 0,
            end,
        }
    }

    pub(crate) fn delivered(self) {
        let mut taken = self.recv.taken.lock();
        if taken.incarnation == self.incarnation && self.end > taken.next {
            taken.next = self.end;
            drop(taken);
            // The driver acknowledges on whatever connection is current.
            self.recv.wake.notify_one();
        }
    }
}

/// What the application took from one sender incarnation: the ACK and the
/// RESUME frames report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) incarnation: u64,
    pub(crate) next: u64,
}

/// The receiving half of a peer's session, shared by the readers of all its
/// connections (a replaced connection may still be read while the new one
/// starts) and kept as long as the peer's entry.
pub(crate) struct RecvState {
    /// Deduplication; locked across the hand-off to `Incoming`, so that
    /// batches of one peer are delivered one at a time and in order, and a
    /// cancelled hand-off commits nothing.
    inbox: tokio::sync::Mutex<Inbox>,
    pub(crate) taken: Mutex<Taken>,
    /// A BATCH from the peer was opened: forgetting this state could let a
    /// resend be delivered twice.
    pub(crate) used: std::sync::atomic::AtomicBool,
    /// Wakes the driver: the application took messages to acknowledge.
    pub(crate) wake: Notify,
}

impl RecvState {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(RecvState {
            inbox: tokio::sync::Mutex::new(Inbox::new()),
            taken: Mutex::new(Taken::default()),
            used: std::sync::atomic::AtomicBool::new(false),
            wake: Notify::new(),
        })
    }
}

/// What a connection's reader tells the peer's driver. Published, not
/// queued: however many frames the peer sends, this holds O(1) state, and
/// one `Notify` permit wakes the driver.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// The peer's RESUME on this connection, until the driver takes it.
    resume: Mutex<Option<Resume>>,
    /// The highest ACK the peer sent on this connection.
    acked: AtomicU64,
    /// Why the connection ended, once it did.
    ended: Mutex<Option<SessionEnd>>,
    /// A message went either way on this connection: it is not an idle
    /// stranger's session (which may be evicted to make room).
    carried: std::sync::atomic::AtomicBool,
    /// The peer's driver took this connection on; until then the reader
    /// delivers nothing (a connection the driver refuses, or set up against
    /// a driver that retired, must not have delivered anything).
    adopted: std::sync::atomic::AtomicBool,
    adopted_wake: Notify,
    notify: Notify,
}

impl Signals {
    pub(crate) async fn changed(&self) {
        self.notify.notified().await;
    }

    pub(crate) fn take_resume(&self) -> Option<Resume> {
        self.resume.lock().take()
    }

    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    pub(crate) fn take_ended(&self) -> Option<SessionEnd> {
        self.ended.lock().take()
    }

    /// The driver took the connection on: the reader may deliver.
    pub(crate) fn adopt(&self) {
        self.adopted.store(true, Ordering::Release);
        self.adopted_wake.notify_waiters();
    }

    async fn adopted(&self) {
        loop {
            let notified = self.adopted_wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.adopted.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone)]
pub(crate) enum SessionEnd {
    /// The connection closed (either side, or lost).
    Closed(CloseReason),
    /// The peer finished its stream (an orderly end: it shuts down).
    Finished,
    /// The peer violated the protocol; we closed the connection.
    Protocol(#[allow(dead_code, reason = "read through Debug in logs")] String),
}

/// The writer side of a live connection, owned by the peer's driver.
pub(crate) struct Session {
    pub(crate) handle: Arc<SessionHandle>,
    pub(crate) writer: SendStream,
    pub(crate) sealer: Box<dyn Sealer>,
    /// The next batch sequence number (the nonce) on this connection.
    pub(crate) next_seq: u64,
    /// The frame being written (every frame is encoded here first).
    pub(crate) buf: BytesMut,
    /// The capacity of `buf` counted in the `memory` gauge.
    pub(crate) buf_accounted: usize,
    pub(crate) signals: Arc<Signals>,
    /// The receiving session state its reader delivers through.
    pub(crate) recv: Arc<RecvState>,
    /// Our RESUME is the first frame on our direction; written yet?
    pub(crate) resume_written: bool,
    /// The highest acknowledgement (ours, of the peer's messages) written here.
    pub(crate) ack_written: u64,
    /// The sender incarnation our RESUME here acknowledged (its `known`).
    pub(crate) resume_known: u64,
    /// The peer's incarnation on this connection, from its RESUME once the
    /// driver processed it: ACKs here are about that incarnation only.
    pub(crate) peer_incarnation: Option<u64>,
    /// The highest acknowledgement of ours the peer sent here, processed.
    pub(crate) ack_seen: u64,
    /// A write is under way (or was cut off mid-frame by a cancelled future).
    pub(crate) writing: bool,
    /// When the driver took it on: the peer's RESUME is due by then + ack timeout.
    pub(crate) adopted_at: tokio::time::Instant,
    pub(crate) reader: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Brings the `memory` gauge in line with the frame buffer's capacity.
    pub(crate) fn account_buf(&mut self, sink: &dyn MetricsSink) {
        let cap = self.buf.capacity();
        if cap != self.buf_accounted {
            sink.memory(cap as isize - self.buf_accounted as isize);
            self.buf_accounted = cap;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Everything the reader needs besides its stream.
pub(crate) struct ReaderCtx {
    pub(crate) peer: PeerId,
    pub(crate) limits: CodecLimits,
    pub(crate) incoming: mpsc::Sender<Delivery>,
    /// Received bytes the application has not taken yet, over all peers.
    pub(crate) incoming_budget: Arc<tokio::sync::Semaphore>,
    /// How long a frame may stay incomplete (the ack timeout).
    pub(crate) frame_timeout: std::time::Duration,
    pub(crate) sink: Arc<dyn MetricsSink>,
    pub(crate) recv: Arc<RecvState>,
}

/// Derives this connection's direction key: the exporter context binds it to
/// both identities, dialer first (docs/PROTOCOL.md §8).
fn key(conn: &dyn Connection, local: &PeerId, label: &[u8]) -> Result<SessionKey, NetError> {
    let (dialer, listener) = match conn.side() {
        Side::Dialer => (*local, conn.peer()),
        Side::Listener => (conn.peer(), *local),
    };
    let mut context = [0u8; 64];
    context[..32].copy_from_slice(dialer.as_bytes());
    context[32..].copy_from_slice(listener.as_bytes());
    let mut bytes = [0u8; KEY_LEN];
    conn.export_keying_material(&mut bytes, label, &context)?;
    let key = SessionKey::from_bytes(bytes);
    zeroize_array(&mut bytes);
    Ok(key)
}

fn zeroize_array(bytes: &mut [u8; KEY_LEN]) {
    use zeroize::Zeroize;
    bytes.zeroize();
}

/// A number per connection set up by this process, for the `conn` span.
fn next_connection_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Derives the two direction keys, opens the stream pair and starts the reader.
pub(crate) async fn establish(
    conn: Arc<dyn Connection>,
    local: PeerId,
    slot: ConnectionSlot,
    ctx: ReaderCtx,
) -> Result<Session, NetError> {
    let (send_label, recv_label) = match conn.side() {
        Side::Dialer => (LABEL_DIALER_TO_LISTENER, LABEL_LISTENER_TO_DIALER),
        Side::Listener => (LABEL_LISTENER_TO_DIALER, LABEL_DIALER_TO_LISTENER),
    };
    let sealer = default_sealer(key(&*conn, &local, send_label)?);
    let opener = default_sealer(key(&*conn, &local, recv_label)?);
    let (writer, reader) = conn.open_stream().await?;
    let signals = Arc::new(Signals::default());
    let recv = ctx.recv.clone();
    // One span per connection, under the current one (the peer's driver
    // for a dial, the accept task for an inbound connection).
    let span = tracing::info_span!(
        "conn",
        id = next_connection_id(),
        peer = %conn.peer(),
        side = ?conn.side(),
        remote = %conn.remote_addr(),
    );
    let reader = tokio::spawn(
        read_loop(reader, opener, conn.clone(), ctx, signals.clone()).instrument(span),
    );
    Ok(Session {
        handle: Arc::new(SessionHandle {
            conn,
            slot: Mutex::new(Some(slot)),
            signals: signals.clone(),
        }),
        writer,
        sealer,
        next_seq: 0,
        buf: BytesMut::new(),
        buf_accounted: 0,
        signals,
        recv,
        resume_written: false,
        ack_written: 0,
        resume_known: 0,
        peer_incarnation: None,
        ack_seen: 0,
        writing: false,
        adopted_at: tokio::time::Instant::now(),
        reader,
    })
}

/// Smallest read the reader offers the stream, and its buffer size when idle
/// (held by every connection: a RESUME, an ACK or a one-message batch fits;
/// a burst doubles it up to [`MAX_READ`]).
const MIN_READ: usize = 256;
/// Largest read the reader offers the stream at once.
const MAX_READ: usize = 64 * 1024;
/// How long a connection stays quiet before its reader gives back a read
/// buffer a burst grew.
const IDLE_SHRINK: std::time::Duration = std::time::Duration::from_millis(200);

// Not an `async fn`, for the reason `Driver::run` is not: the task would
// carry its arguments twice.
#[allow(clippy::manual_async_fn, reason = "on purpose, see above")]
fn read_loop(
    mut stream: RecvStream,
    mut opener: Box<dyn Sealer>,
    conn: Arc<dyn Connection>,
    ctx: ReaderCtx,
    signals: Arc<Signals>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let end = match read_frames(&mut stream, &mut *opener, &*conn, &ctx, &signals).await {
            // The peer finished its stream at a frame boundary: it is shutting down.
            Ok(()) => conn
                .close_reason()
                .map_or(SessionEnd::Finished, SessionEnd::Closed),
            Err(ReadFailure::Closed) => SessionEnd::Closed(
                conn.close_reason()
                    .unwrap_or_else(|| CloseReason::Lost("stream failed".into())),
            ),
            Err(ReadFailure::Protocol(kind, detail)) => {
                ctx.sink.error(kind);
                tracing::warn!(peer = %ctx.peer, %detail, "closing connection: protocol violation");
                conn.close(CloseCode::Protocol as u32, CloseCode::Protocol.reason());
                SessionEnd::Protocol(detail)
            }
            Err(ReadFailure::AppGone) => SessionEnd::Closed(CloseReason::EndpointClosed),
        };
        *signals.ended.lock() = Some(end);
        signals.notify.notify_one();
    }
}

enum ReadFailure {
    Closed,
    Protocol(ErrorKind, String),
    AppGone,
}

fn open_error(e: OpenError) -> ReadFailure {
    let kind = match e {
        OpenError::Sequence { .. } => ErrorKind::Sequence,
        _ => ErrorKind::Authentication,
    };
    ReadFailure::Protocol(kind, e.to_string())
}

fn decode_error(e: DecodeError) -> ReadFailure {
    ReadFailure::Protocol(ErrorKind::Decode, e.to_string())
}

fn rule_error(e: RuleError) -> ReadFailure {
    ReadFailure::Protocol(ErrorKind::Sequence, e.to_string())
}

async fn read_frames(
    stream: &mut RecvStream,
    opener: &mut dyn Sealer,
    conn: &dyn Connection,
    ctx: &ReaderCtx,
    signals: &Signals,
) -> Result<(), ReadFailure> {
    let mut decoder = FrameDecoder::new(ctx.limits.clone());
    // Reads start small and double while they fill what was offered, so an
    // idle connection holds MIN_READ, not MAX_READ (or a whole large frame).
    let mut chunk = MIN_READ;
    let mut buf = BytesMut::with_capacity(chunk);
    // Accounts the buffer's capacity in `memory` and gives it back however the reader ends.
    let mut held = Held::new(ctx.sink.clone(), buf.capacity());
    // RESUME first, ACKs that advance, no empty batch (docs/PROTOCOL.md §5-§7).
    let mut rules = ConnectionRules::new();
    // Deliveries wait until the driver took this connection on.
    let mut adopted = false;
    // Since when part of a frame has waited for the rest: an incomplete
    // frame may not hold its buffer longer than the frame timeout.
    let mut partial_since: Option<tokio::time::Instant> = None;
    // While the buffer is larger than MIN_READ and the connection quiet:
    // when to give it back. Allocated only then, and reused across waits.
    let mut idle_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let mut decoded = false;
        while let Some(frame) = decoder.decode(&mut buf).map_err(decode_error)? {
            decoded = true;
            match frame {
                Frame::Resume(r) => {
                    rules.on_resume(&r).map_err(rule_error)?;
                    let restarted = match ctx.recv.inbox.try_lock() {
                        Ok(mut inbox) => inbox.on_resume(r.incarnation),
                        // Boxed, as every rare wait here: a future inline
                        // would sit in every connection's reader task.
                        Err(_) => {
                            Box::pin(async { ctx.recv.inbox.lock().await.on_resume(r.incarnation) })
                                .await
                        }
                    };
                    if restarted {
                        // A new incarnation of the peer (or first contact).
                        *ctx.recv.taken.lock() = Taken {
                            incarnation: r.incarnation,
                            next: 0,
                        };
                    }
                    *signals.resume.lock() = Some(r);
                    signals.notify.notify_one();
                }
                Frame::Ack { next } => {
                    // A repeat is a protocol violation, so a flood of ACKs
                    // ends the connection instead of costing the driver work.
                    rules.on_ack(next).map_err(rule_error)?;
                    signals.acked.store(next, Ordering::Release);
                    signals.notify.notify_one();
                }
                Frame::Batch(mut sealed) => {
                    let seq = sealed.seq();
                    let first = sealed.first();
                    // The order first (before the cost of opening it).
                    let inc = rules.on_batch(first, 1).map_err(rule_error)?;
                    if !adopted {
                        if !signals.adopted.load(Ordering::Acquire) {
                            Box::pin(signals.adopted()).await;
                        }
                        adopted = true;
                    }
                    let (aad, body, tag) = sealed.parts_mut();
                    opener
                        .open_in_place(seq, aad, body, tag)
                        .map_err(open_error)?;
                    ctx.recv.used.store(true, Ordering::Release);
                    signals.carried.store(true, Ordering::Release);
                    let wire = sealed.frame_len();
                    let messages =
                        decode_body(sealed.into_body(), &ctx.limits).map_err(decode_error)?;
                    rules.on_batch(first, messages.len()).map_err(rule_error)?;
                    ctx.sink.batch_received(messages.len(), wire);
                    // In order and at most once (the inbox), held back
                    // while the application is behind (`incoming_bytes`
                    // and the `Incoming` channel).
                    match try_deliver(ctx, inc, first, messages) {
                        Attempt::Done => {}
                        Attempt::Gone => return Err(ReadFailure::AppGone),
                        Attempt::Wait(messages) => {
                            Box::pin(deliver_waiting(ctx, inc, first, messages)).await?;
                        }
                    }
                }
            }
        }
        if buf.is_empty() && buf.capacity() > 2 * chunk {
            // Give back what a burst or a large frame grew; frames already
            // handed out keep their own part of the old allocation.
            buf = BytesMut::with_capacity(chunk);
        }
        if buf.capacity() - buf.len() < chunk / 2 {
            buf.reserve(chunk);
        }
        held.set(buf.capacity());
        if buf.is_empty() || decoded {
            partial_since = None;
        }
        if !buf.is_empty() {
            partial_since.get_or_insert_with(tokio::time::Instant::now);
        }
        let mut offered = buf.capacity() - buf.len();
        let read = match partial_since {
            Some(since) => {
                let deadline = crate::driver::later(since, ctx.frame_timeout);
                // Boxed: the timer would otherwise sit in every reader task.
                match Box::pin(tokio::time::timeout_at(deadline, stream.read_buf(&mut buf))).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(ReadFailure::Protocol(
                            ErrorKind::Decode,
                            "a frame stayed incomplete for longer than the ack timeout".into(),
                        ))
                    }
                }
            }
            // The buffer is empty (nothing partial) and a burst grew it.
            // If the connection stays quiet for IDLE_SHRINK, the buffer goes
            // back to MIN_READ (and the read size with it), so an idle
            // connection holds MIN_READ whatever it carried before; a busy
            // one that waits a moment between reads keeps its buffer.
            None if buf.capacity() > MIN_READ => {
                let timer =
                    idle_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(IDLE_SHRINK)));
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + IDLE_SHRINK);
                match read_or_idle(stream, &mut buf, timer.as_mut()).await {
                    Some(r) => r,
                    None => {
                        idle_timer = None;
                        chunk = MIN_READ;
                        buf = BytesMut::with_capacity(MIN_READ);
                        held.set(buf.capacity());
                        offered = buf.capacity();
                        stream.read_buf(&mut buf).await
                    }
                }
            }
            None => stream.read_buf(&mut buf).await,
        };
        match read {
            Ok(0) => {
                return if conn.is_alive() && !buf.is_empty() {
                    Err(decode_error(DecodeError::Truncated))
                } else {
                    Ok(())
                }
            }
            Ok(n) if n >= offered => chunk = (chunk * 2).min(MAX_READ),
            Ok(n) if n < chunk / 4 => chunk = (chunk / 2).max(MIN_READ),
            Ok(_) => {}
            Err(_) => return Err(ReadFailure::Closed),
        }
    }
}

/// How [`try_deliver`] went.
enum Attempt {
    /// Delivered, or nothing to deliver (a duplicate, a stale batch).
    Done,
    /// The application is gone.
    Gone,
    /// It would have to wait (the inbox, the `incoming_bytes` budget or the
    /// `Incoming` channel); nothing was done, the messages are given back.
    Wait(Vec<Bytes>),
}

/// Delivers a batch's messages without waiting, if nothing is in the way:
/// the common case, with no allocation. Otherwise leaves everything as it
/// was for [`deliver_waiting`].
fn try_deliver(ctx: &ReaderCtx, inc: u64, first: u64, mut messages: Vec<Bytes>) -> Attempt {
    let count = messages.len();
    let Ok(mut inbox) = ctx.recv.inbox.try_lock() else {
        return Attempt::Wait(messages);
    };
    let skip = match inbox.plan(inc, first, count) {
        InboxPlan::Deliver { skip } => skip,
        InboxPlan::Duplicate | InboxPlan::Stale => return Attempt::Done,
    };
    if skip == count {
        inbox.commit(inc, first, count);
        return Attempt::Done;
    }
    let bytes: usize = messages[skip..].iter().map(Bytes::len).sum();
    let budget = u32::try_from(bytes).unwrap_or(u32::MAX);
    let budget = match ctx.incoming_budget.clone().try_acquire_many_owned(budget) {
        Ok(b) => b,
        Err(tokio::sync::TryAcquireError::Closed) => return Attempt::Gone,
        Err(tokio::sync::TryAcquireError::NoPermits) => return Attempt::Wait(messages),
    };
    let slot = match ctx.incoming.try_reserve() {
        Ok(slot) => slot,
        Err(mpsc::error::TrySendError::Closed(())) => return Attempt::Gone,
        Err(mpsc::error::TrySendError::Full(())) => return Attempt::Wait(messages),
    };
    messages.drain(..skip);
    ctx.sink
        .messages_received(&mut messages.iter().map(Bytes::len));
    slot.send(delivery(
        ctx,
        inc,
        first + count as u64,
        messages,
        bytes,
        budget,
    ));
    inbox.commit(inc, first, count);
    Attempt::Done
}

/// The messages of one batch (`bytes` in all) for `Incoming`, with the
/// receipt that acknowledges them (every message of incarnation `inc`
/// below `end`) and holds their share of `incoming_bytes`; counts them in
/// the `memory` gauge until they are taken or dropped.
fn delivery(
    ctx: &ReaderCtx,
    inc: u64,
    end: u64,
    messages: Vec<Bytes>,
    bytes: usize,
    budget: tokio::sync::OwnedSemaphorePermit,
) -> Delivery {
    Delivery {
        peer: ctx.peer,
        messages,
        held: Held::new(ctx.sink.clone(), bytes),
        receipt: Receipt {
            _budget: budget,
            recv: ctx.recv.clone(),
            incarnation: inc,
            end,
        },
    }
}

/// [`try_deliver`], waiting where it would not (boxed by its caller).
async fn deliver_waiting(
    ctx: &ReaderCtx,
    inc: u64,
    first: u64,
    mut messages: Vec<Bytes>,
) -> Result<(), ReadFailure> {
    let count = messages.len();
    let mut inbox = ctx.recv.inbox.lock().await;
    let skip = match inbox.plan(inc, first, count) {
        InboxPlan::Deliver { skip } => skip,
        // Resent on this connection after another one
        // delivered it, or from a peer that restarted since.
        InboxPlan::Duplicate | InboxPlan::Stale => return Ok(()),
    };
    if skip > 0 {
        messages.drain(..skip);
    }
    if messages.is_empty() {
        inbox.commit(inc, first, count);
        return Ok(());
    }
    let bytes: usize = messages.iter().map(Bytes::len).sum();
    ctx.sink
        .messages_received(&mut messages.iter().map(Bytes::len));
    // Waits while the application holds `incoming_bytes`
    // unread (holding the inbox, like the channel below).
    let budget = u32::try_from(bytes).unwrap_or(u32::MAX);
    let Ok(budget) = ctx.incoming_budget.clone().acquire_many_owned(budget).await else {
        return Err(ReadFailure::AppGone);
    };
    let delivery = delivery(ctx, inc, first + count as u64, messages, bytes, budget);
    // Holding the inbox: the peer's batches go out one at a time, in order.
    // Refused, the delivery is dropped, and its bytes leave the gauge.
    if ctx.incoming.send(delivery).await.is_err() {
        return Err(ReadFailure::AppGone);
    }
    inbox.commit(inc, first, count);
    Ok(())
}

/// Reads into `buf`, or gives up (`None`, having read nothing: tokio's
/// `read_buf` is cancel-safe) once `idle` fires first.
async fn read_or_idle(
    stream: &mut RecvStream,
    buf: &mut BytesMut,
    mut idle: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Option<std::io::Result<usize>> {
    use std::future::Future;
    let mut read = std::pin::pin!(stream.read_buf(buf));
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = read.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(r));
        }
        idle.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Bytes of a buffer accounted in the `memory` gauge, returned on drop.
pub(crate) struct Held {
    sink: Arc<dyn MetricsSink>,
    bytes: usize,
}

impl Held {
    pub(crate) fn new(sink: Arc<dyn MetricsSink>, bytes: usize) -> Self {
        sink.memory(bytes as isize);
        Held { sink, bytes }
    }

    pub(crate) fn set(&mut self, bytes: usize) {
        if bytes != self.bytes {
            self.sink.memory(bytes as isize - self.bytes as isize);
            self.bytes = bytes;
        }
    }

    /// Gives `n` of the held bytes back.
    pub(crate) fn release(&mut self, n: usize) {
        self.set(self.bytes.saturating_sub(n));
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes != 0 {
            self.sink.memory(-(self.bytes as isize));
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::{ConnectionManager, ManagerConfig, MemoryNetwork, Transport};
    use qudag_transport::PeerAddr;

    /// Every connection's reader task holds this future for as long as the
    /// connection lives, pooled or not (docs/ARCHITECTURE.md, "idle
    /// cost"): 840 bytes with rustc 1.95; 1,296 as an `async fn` whose
    /// delivery waits sat inline. The bound leaves room for compiler
    /// versions, not for those waits to come back.
    #[tokio::test]
    async fn the_reader_task_stays_small() {
        let net = MemoryNetwork::new();
        let a = Arc::new(net.bind(PeerId::from_bytes([1; 32])));
        let b = net.bind(PeerId::from_bytes([2; 32]));
        let to = PeerAddr::new(b.local_peer(), b.local_addr());
        let m = ConnectionManager::new(ManagerConfig::default(), a.clone()).unwrap();
        let conn = a.dial(&to).await.unwrap();
        let (_writer, stream) = conn.open_stream().await.unwrap();
        let ctx = m.shared().reader_ctx(to.peer, RecvState::new()).unwrap();
        let opener = default_sealer(SessionKey::from_bytes([7; KEY_LEN]));
        let reader = read_loop(stream, opener, conn, ctx, Arc::new(Signals::default()));
        let size = std::mem::size_of_val(&reader);
        assert!(size <= 1_024, "read_loop is {size} bytes");
        m.shutdown(std::time::Duration::ZERO).await;
    }
}
