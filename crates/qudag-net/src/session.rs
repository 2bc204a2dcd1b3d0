//! One authenticated, keyed session on a transport connection: set-up, and
//! the reader task that opens, decodes and delivers batches.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use qudag_batch::{decode_body, CodecLimits, DecodeError, Frame, FrameDecoder};
use qudag_crypto::{
    default_sealer, OpenError, PeerId, Sealer, SessionKey, KEY_LEN, LABEL_DIALER_TO_LISTENER,
    LABEL_LISTENER_TO_DIALER,
};
use qudag_metrics::{ErrorKind, MetricsSink};
use qudag_pool::{ConnectionSlot, Poolable};
use qudag_transport::{CloseReason, Connection, RecvStream, SendStream, Side};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

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
}

impl SessionHandle {
    pub(crate) fn close(&self, code: CloseCode) {
        self.conn.close(code as u32, code.reason());
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
}

/// Acknowledges a batch once the application has taken all of its messages.
///
/// Dropped without [`delivered`](Receipt::delivered) (the application went
/// away with the batch unread), the batch is never acknowledged and its
/// sender hands it back as maybe delivered.
pub(crate) struct Receipt {
    next_seq: u64,
    to_driver: mpsc::UnboundedSender<ReaderEvent>,
}

impl Receipt {
    pub(crate) fn delivered(self) {
        // The session may have ended meanwhile; its sender then hands the batch back.
        let _ = self.to_driver.send(ReaderEvent::Delivered(self.next_seq));
    }
}

/// What the reader tells the peer's driver.
#[derive(Debug)]
pub(crate) enum ReaderEvent {
    /// Batches with seq < n were taken by the application: acknowledge them.
    Delivered(u64),
    /// The peer acknowledged our batches with seq < n.
    Acked(u64),
    /// The session ended.
    Ended(SessionEnd),
}

/// Why a session ended.
#[derive(Debug, Clone)]
pub(crate) enum SessionEnd {
    /// The connection closed (either side, or lost).
    Closed(CloseReason),
    /// The peer violated the protocol; we closed the connection.
    Protocol(#[allow(dead_code, reason = "read through Debug in logs")] String),
}

/// The writer side of a live session, owned by the peer's driver.
pub(crate) struct Session {
    pub(crate) handle: Arc<SessionHandle>,
    pub(crate) writer: SendStream,
    pub(crate) sealer: Box<dyn Sealer>,
    pub(crate) buf: BytesMut,
    pub(crate) events: mpsc::UnboundedReceiver<ReaderEvent>,
    pub(crate) reader: tokio::task::JoinHandle<()>,
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
    pub(crate) sink: Arc<dyn MetricsSink>,
}

fn key(conn: &dyn Connection, label: &[u8]) -> Result<SessionKey, NetError> {
    let mut bytes = [0u8; KEY_LEN];
    conn.export_keying_material(&mut bytes, label, b"")?;
    let key = SessionKey::from_bytes(bytes);
    zeroize_array(&mut bytes);
    Ok(key)
}

fn zeroize_array(bytes: &mut [u8; KEY_LEN]) {
    use zeroize::Zeroize;
    bytes.zeroize();
}

/// Derives the two direction keys, opens the stream pair and starts the reader.
pub(crate) async fn establish(
    conn: Arc<dyn Connection>,
    slot: ConnectionSlot,
    ctx: ReaderCtx,
) -> Result<Session, NetError> {
    let (send_label, recv_label) = match conn.side() {
        Side::Dialer => (LABEL_DIALER_TO_LISTENER, LABEL_LISTENER_TO_DIALER),
        Side::Listener => (LABEL_LISTENER_TO_DIALER, LABEL_DIALER_TO_LISTENER),
    };
    let sealer = default_sealer(key(&*conn, send_label)?);
    let opener = default_sealer(key(&*conn, recv_label)?);
    let (writer, reader) = conn.open_stream().await?;
    let (tx, events) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_loop(reader, opener, conn.clone(), ctx, tx));
    Ok(Session {
        handle: Arc::new(SessionHandle {
            conn,
            slot: Mutex::new(Some(slot)),
        }),
        writer,
        sealer,
        buf: BytesMut::new(),
        events,
        reader,
    })
}

/// Smallest read the reader offers the stream, and its buffer size when idle.
const MIN_READ: usize = 4 * 1024;
/// Largest read the reader offers the stream at once.
const MAX_READ: usize = 64 * 1024;

async fn read_loop(
    mut stream: RecvStream,
    mut opener: Box<dyn Sealer>,
    conn: Arc<dyn Connection>,
    ctx: ReaderCtx,
    tx: mpsc::UnboundedSender<ReaderEvent>,
) {
    let end = match read_frames(&mut stream, &mut *opener, &*conn, &ctx, &tx).await {
        Ok(()) => SessionEnd::Closed(
            conn.close_reason()
                .unwrap_or_else(|| CloseReason::Lost("stream ended".into())),
        ),
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
    let _ = tx.send(ReaderEvent::Ended(end));
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

async fn read_frames(
    stream: &mut RecvStream,
    opener: &mut dyn Sealer,
    conn: &dyn Connection,
    ctx: &ReaderCtx,
    tx: &mpsc::UnboundedSender<ReaderEvent>,
) -> Result<(), ReadFailure> {
    let mut decoder = FrameDecoder::new(ctx.limits.clone());
    // Reads start small and double while they fill what was offered, so an
    // idle connection holds MIN_READ, not MAX_READ (or a whole large frame).
    let mut chunk = MIN_READ;
    let mut buf = BytesMut::with_capacity(chunk);
    // Accounts the buffer's capacity in `memory` and gives it back however the reader ends.
    let mut held = Held::new(ctx.sink.clone(), buf.capacity());
    loop {
        while let Some(frame) = decoder.decode(&mut buf).map_err(decode_error)? {
            match frame {
                Frame::Batch(mut sealed) => {
                    let seq = sealed.seq();
                    let (aad, body, tag) = sealed.parts_mut();
                    opener
                        .open_in_place(seq, aad, body, tag)
                        .map_err(open_error)?;
                    let wire = sealed.frame_len();
                    let messages =
                        decode_body(sealed.into_body(), &ctx.limits).map_err(decode_error)?;
                    ctx.sink.batch_received(messages.len(), wire);
                    let mut bytes = 0;
                    for m in &messages {
                        bytes += m.len();
                        ctx.sink.message_received(m.len());
                    }
                    let receipt = Receipt {
                        next_seq: seq + 1,
                        to_driver: tx.clone(),
                    };
                    if messages.is_empty() {
                        receipt.delivered();
                        continue;
                    }
                    ctx.sink.memory(bytes as isize);
                    let delivery = Delivery {
                        peer: ctx.peer,
                        messages,
                        receipt,
                    };
                    if ctx.incoming.send(delivery).await.is_err() {
                        ctx.sink.memory(-(bytes as isize));
                        return Err(ReadFailure::AppGone);
                    }
                }
                Frame::Ack { next_seq } => {
                    let _ = tx.send(ReaderEvent::Acked(next_seq));
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
        let offered = buf.capacity() - buf.len();
        match stream.read_buf(&mut buf).await {
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
}

impl Drop for Held {
    fn drop(&mut self) {
        self.sink.memory(-(self.bytes as isize));
    }
}
