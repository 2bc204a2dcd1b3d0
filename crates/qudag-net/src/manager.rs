//! [`ConnectionManager`]: the public face, the accept loop and the pool cleanup task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use qudag_batch::CodecLimits;
use qudag_crypto::PeerId;
use qudag_metrics::{ErrorKind, FanOut, Metrics, MetricsSink, MetricsSnapshot, NetworkMetrics};
use qudag_pool::{Backoff, ConnState, DialPermit, LimitError, Limiter, Pool};
use qudag_transport::{Connection, PeerAddr, Transport};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tracing::Instrument;

use crate::driver::{error_kind, Ctl, Driver, Envelope, Peer};
use crate::event::EventQueue;
use crate::queue::TryPushError;
use crate::session::{self, CloseCode, Delivery, Pooled};
use crate::{
    ConfigError, Event, Events, Incoming, ManagerConfig, NetError, SendError, SendManyError,
    SendManyReason,
};

type PeerHasher = foldhash::fast::RandomState;

/// State shared by the manager handle, the drivers and the background tasks.
pub(crate) struct Shared {
    pub(crate) local: PeerId,
    /// This manager's incarnation: random, fresh at each start, never 0.
    pub(crate) incarnation: u64,
    /// The numbering floor: the highest message number any retired peer
    /// driver's outbox reached. A new driver's outbox numbers from here, so
    /// a peer that still remembers what it delivered of this incarnation
    /// never takes new messages for duplicates (`Outbox::starting_at`).
    pub(crate) number_floor: std::sync::atomic::AtomicU64,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) config: ManagerConfig,
    /// Looked up on every send. Keyed like the pool (see `qudag_pool::Pool`):
    /// a randomly seeded foldhash over PeerIds, which are SHA-256 outputs.
    pub(crate) peers: DashMap<PeerId, Arc<Peer>, PeerHasher>,
    /// Addresses the application connected to; they outlive retired drivers.
    addrs: DashMap<PeerId, SocketAddr, PeerHasher>,
    /// Inbound sessions of strangers, oldest first: the ones that never
    /// carried a message may be evicted to make room under the limit.
    unproven: Mutex<std::collections::VecDeque<std::sync::Weak<session::SessionHandle>>>,
    pub(crate) pool: Pool<Pooled>,
    pub(crate) limiter: Limiter,
    pub(crate) backoff: Backoff,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) sink: Arc<dyn MetricsSink>,
    /// Taken at shutdown, so that `Incoming` ends once the readers are gone.
    pub(crate) incoming_tx: Mutex<Option<mpsc::Sender<Delivery>>>,
    /// Closed when `shutdown` is done, so that `Events` ends after what it holds.
    events: Arc<EventQueue>,
    pub(crate) pool_changed: Notify,
    /// Changes when room under the connection limit may have come free.
    pub(crate) room: Arc<Room>,
    pub(crate) codec_limits: CodecLimits,
    /// Payload bytes of received batches the application has not taken
    /// yet, over all peers (`incoming_bytes`).
    pub(crate) incoming_budget: Arc<tokio::sync::Semaphore>,
    shutting_down: AtomicBool,
    stop: Notify,
}

/// Room under the connection limit: a generation, bumped with the waiters
/// woken whenever a slot may have come free (the limiter released one, or
/// a connection became evictable: parked in the pool, or a stranger's
/// unproven session). A driver whose dial met the limit waits for the next
/// change (`Driver::room_seen`) instead of redialing on a timer and giving
/// up after `max_failed_dials`.
#[derive(Debug, Default)]
pub(crate) struct Room {
    changes: std::sync::atomic::AtomicU64,
    notify: Notify,
}

impl Room {
    /// Room may have come free.
    pub(crate) fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// The generation now: read before trying for room.
    pub(crate) fn seen(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Returns once the generation differs from `seen`. Cancel-safe.
    pub(crate) async fn changed_since(&self, seen: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check: a change in between wakes us.
            notified.as_mut().enable();
            if self.seen() != seen {
                return;
            }
            notified.await;
        }
    }
}

impl Shared {
    /// Publishes an event to the application's `Events`, if it still listens.
    pub(crate) fn emit(&self, event: Event) {
        self.events.push(event);
    }

    /// True if the application connected to `peer` (it is not a stranger).
    pub(crate) fn is_known(&self, peer: &PeerId) -> bool {
        self.addrs.contains_key(peer)
    }

    /// True once `shutdown` (or the last handle's drop) began.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Makes room for one connection under the limit: closes the least
    /// recently used idle pooled connection, or else the oldest inbound
    /// session of a stranger that never carried a message. False if there
    /// is neither.
    fn make_room(&self) -> bool {
        if let Some((peer, handle)) = self.pool.evict_lru() {
            tracing::debug!(%peer, "evicting idle pooled connection to make room");
            self.sink
                .connection_closed(qudag_metrics::CloseKind::Evicted);
            handle.0.evict();
            return true;
        }
        let mut unproven = self.unproven.lock();
        while let Some(weak) = unproven.pop_front() {
            let Some(handle) = weak.upgrade() else {
                continue;
            };
            let peer = handle.conn.peer();
            let exchanged = self.peers.get(&peer).is_some_and(|p| p.exchanged());
            if !handle.conn.is_alive() || handle.carried() || exchanged || self.is_known(&peer) {
                // Never a candidate again: it carried a message, or is gone.
                continue;
            }
            drop(unproven);
            tracing::debug!(%peer, "evicting a stranger's idle session to make room");
            self.sink
                .connection_closed(qudag_metrics::CloseKind::Evicted);
            handle.evict();
            return true;
        }
        false
    }

    /// Remembers an inbound session of a stranger as a candidate for
    /// eviction, dropping candidates that no longer are once the list
    /// outgrows the connection limit (so it stays O(limit)).
    fn track_unproven(&self, handle: &Arc<session::SessionHandle>) {
        let mut unproven = self.unproven.lock();
        if unproven.len() >= 2 * self.limiter.max_connections().max(1) {
            unproven.retain(|w| {
                w.upgrade()
                    .is_some_and(|h| h.conn.is_alive() && !h.carried())
            });
        }
        unproven.push_back(Arc::downgrade(handle));
        drop(unproven);
        // Evictable: room for a dial that met the limit.
        self.room.changed();
    }

    /// A dial permit, making room (see `make_room`) while the connection
    /// limit is what stands in the way.
    pub(crate) fn dial_permit(&self) -> Result<DialPermit, NetError> {
        loop {
            match self.limiter.try_dial() {
                Ok(p) => return Ok(p),
                Err(LimitError::Connections { max }) => {
                    if !self.make_room() {
                        self.sink.error(ErrorKind::LimitReached);
                        return Err(NetError::Limit(LimitError::Connections { max }));
                    }
                }
                Err(e) => {
                    self.sink.error(ErrorKind::LimitReached);
                    return Err(NetError::Limit(e));
                }
            }
        }
    }

    pub(crate) fn peer(self: &Arc<Self>, id: PeerId, addr: Option<SocketAddr>) -> Arc<Peer> {
        self.peer_with(id, addr, None)
    }

    /// The peer's driver, spawned if there is none; a new one takes `recv`
    /// as its receiving session state if given (a retiring driver hands its
    /// own over, so that a session set up against it meanwhile stays valid).
    pub(crate) fn peer_with(
        self: &Arc<Self>,
        id: PeerId,
        addr: Option<SocketAddr>,
        recv: Option<Arc<session::RecvState>>,
    ) -> Arc<Peer> {
        let addr = addr.or_else(|| self.addrs.get(&id).map(|a| *a));
        if let Some(p) = self.peers.get(&id) {
            if let Some(a) = addr {
                let mut known = p.addr.lock();
                if known.is_none() {
                    *known = Some(a);
                }
            }
            return p.clone();
        }
        self.peers
            .entry(id)
            .or_insert_with(|| Driver::spawn(self.clone(), id, addr, recv))
            .clone()
    }

    fn on_inbound(self: &Arc<Self>, conn: Arc<dyn Connection>) {
        if self.shutting_down.load(Ordering::Acquire) {
            conn.close(CloseCode::Shutdown as u32, CloseCode::Shutdown.reason());
            return;
        }
        let slot = match self.limiter.try_accept() {
            Ok(s) => s,
            // Make room (an idle pooled connection, or a stranger's idle
            // session), once.
            Err(e) => {
                if !self.make_room() {
                    return self.refuse(conn, e);
                }
                match self.limiter.try_accept() {
                    Ok(s) => s,
                    Err(e) => return self.refuse(conn, e),
                }
            }
        };
        // Dialers and listeners share one QUIC socket, so the source address is
        // the peer's listening address; it is only used if no better one is known.
        let id = conn.peer();
        let addr = conn.remote_addr();
        // The reader delivers through the peer's receiving session state.
        let peer = self.peer(id, Some(addr));
        let ctx = match self.reader_ctx(id, peer.recv.clone()) {
            Ok(ctx) => ctx,
            Err(_) => {
                conn.close(CloseCode::Shutdown as u32, CloseCode::Shutdown.reason());
                return;
            }
        };
        // Set the connection up in its own task, bounded by the connect
        // timeout, and hand the driver only a connection that works.
        let shared = self.clone();
        let span = tracing::info_span!(parent: None, "accept", peer = %id, remote = %addr);
        let task = async move {
            let setup = tokio::time::timeout(
                shared.config.connect_timeout,
                session::establish(conn.clone(), shared.local, slot, ctx),
            )
            .await;
            match setup {
                Ok(Ok(session)) => {
                    if !shared.is_known(&id) {
                        shared.track_unproven(&session.handle);
                    }
                    if let Err(Ctl::Inbound(session)) =
                        peer.ctl.send(Ctl::Inbound(Box::new(session)))
                    {
                        // The driver retired meanwhile: close what it will not take.
                        session.handle.close(CloseCode::Normal);
                    }
                }
                Ok(Err(e)) => {
                    shared.sink.error(error_kind(&e));
                    if matches!(
                        e,
                        NetError::Transport(qudag_transport::TransportError::Protocol { .. })
                    ) {
                        // A bad stream preamble: the same warning as every
                        // other protocol violation.
                        tracing::warn!(peer = %id, error = %e, "closing connection: protocol violation");
                    } else {
                        tracing::debug!(peer = %id, error = %e, "inbound session set-up failed");
                    }
                    conn.close(CloseCode::Protocol as u32, CloseCode::Protocol.reason());
                }
                Err(_) => {
                    shared.sink.error(ErrorKind::HandshakeFailed);
                    conn.close(CloseCode::Protocol as u32, b"session set-up timed out");
                }
            }
        };
        tokio::spawn(task.instrument(span));
    }

    fn refuse(&self, conn: Arc<dyn Connection>, e: LimitError) {
        tracing::debug!(peer = %conn.peer(), error = %e, "refusing inbound connection");
        self.sink.error(ErrorKind::LimitReached);
        conn.close(CloseCode::Limit as u32, CloseCode::Limit.reason());
    }
}

/// The connection manager: authenticated, encrypted, pooled connections to
/// peers, and batched, in-order, acknowledged message delivery over them.
///
/// Cheap to clone (all clones drive the same manager). Dropping the last
/// clone without [`shutdown`](ConnectionManager::shutdown) stops every task
/// at once and hands back nothing; call `shutdown` to keep the delivery
/// contract.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct ConnectionManager {
    shared: Arc<Shared>,
    incoming: Arc<Mutex<Option<Incoming>>>,
    events: Arc<Mutex<Option<Events>>>,
    _guard: Arc<DropGuard>,
}

impl std::fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("local", &self.shared.local)
            .field("peers", &self.shared.peers.len())
            .finish_non_exhaustive()
    }
}

struct DropGuard(Arc<Shared>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.0.shutting_down.swap(true, Ordering::AcqRel) {
            self.0.stop.notify_waiters();
            self.0.transport.close();
            self.0.incoming_tx.lock().take();
            let now = Instant::now();
            for p in self.0.peers.iter() {
                let (done, _) = oneshot::channel();
                let _ = p.ctl.send(Ctl::Shutdown {
                    deadline: now,
                    done,
                });
            }
        }
    }
}

/// What [`ConnectionManager::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Peers whose drivers finished before the deadline.
    pub peers_closed: usize,
}

impl ConnectionManager {
    /// Starts a manager on `transport`: checks `config`
    /// ([`ManagerConfig::validate`]), then spawns the accept loop and the
    /// pool cleanup task on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] that makes `config` invalid.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub fn new(config: ManagerConfig, transport: Arc<dyn Transport>) -> Result<Self, ConfigError> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let sink: Arc<dyn MetricsSink> = if config.sinks.is_empty() {
            metrics.clone()
        } else {
            let mut all: Vec<Arc<dyn MetricsSink>> = vec![metrics.clone()];
            all.extend(config.sinks.iter().cloned());
            Arc::new(FanOut::new(all))
        };
        let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_capacity);
        let events = EventQueue::new(config.event_capacity);
        let incarnation = new_incarnation();
        // Dialers learn it from the transport up front (QUIC: the
        // listener's hello), so their first batch need not wait a round trip.
        transport.set_incarnation(incarnation);
        let room = Arc::new(Room::default());
        let freed = room.clone();
        let shared = Arc::new(Shared {
            local: transport.local_peer(),
            incarnation,
            number_floor: std::sync::atomic::AtomicU64::new(0),
            pool: Pool::new(&config.pool),
            limiter: Limiter::with_release_hook(&config.pool, move || freed.changed()),
            room,
            backoff: Backoff::new(config.backoff.clone()),
            codec_limits: config.batch.codec_limits(),
            incoming_budget: Arc::new(tokio::sync::Semaphore::new(config.incoming_bytes)),
            transport,
            config,
            peers: DashMap::with_hasher(PeerHasher::default()),
            addrs: DashMap::with_hasher(PeerHasher::default()),
            unproven: Mutex::new(std::collections::VecDeque::new()),
            metrics,
            sink: sink.clone(),
            incoming_tx: Mutex::new(Some(incoming_tx)),
            events: events.clone(),
            pool_changed: Notify::new(),
            shutting_down: AtomicBool::new(false),
            stop: Notify::new(),
        });
        tokio::spawn(accept_loop(shared.clone()));
        tokio::spawn(cleanup_loop(shared.clone()));
        Ok(ConnectionManager {
            incoming: Arc::new(Mutex::new(Some(Incoming {
                rx: incoming_rx,
                current: None,
            }))),
            events: Arc::new(Mutex::new(Some(Events { queue: events }))),
            _guard: Arc::new(DropGuard(shared.clone())),
            shared,
        })
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// This node's identity.
    pub fn local_peer(&self) -> PeerId {
        self.shared.local
    }

    /// The address peers dial to reach this node.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.transport.local_addr()
    }

    /// Connects to `to`: reuses a live session (or a pooled one younger than
    /// the pool timeout) before it dials. Remembers the address for redials.
    pub async fn connect(&self, to: PeerAddr) -> Result<(), NetError> {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(NetError::Shutdown);
        }
        self.shared.addrs.insert(to.peer, to.addr);
        // Twice at most: the driver may retire between the lookup and the
        // command (a retiring driver forwards commands it already has).
        for _ in 0..2 {
            let peer = self.shared.peer(to.peer, Some(to.addr));
            *peer.addr.lock() = Some(to.addr);
            let (tx, rx) = oneshot::channel();
            if peer.ctl.send(Ctl::Connect(tx)).is_err() {
                continue;
            }
            return rx.await.map_err(|_| NetError::Shutdown)?;
        }
        Err(NetError::Shutdown)
    }

    /// Remembers `to`'s address without dialing: the first
    /// [`send`](Self::send) to the peer dials it on demand (as after a
    /// `connect` whose connection has since gone). That is the fastest first
    /// message: over QUIC the listener tells its incarnation with its
    /// handshake flight, so the first batch leaves with the dialer's last
    /// handshake flight, while [`connect`](Self::connect) waits one more
    /// round trip to learn whether the listener accepted. A refusal then
    /// counts as a failed dial, and past `max_failed_dials` or
    /// `unreachable_after` the messages come back as
    /// [`Event::Undelivered`](crate::Event::Undelivered).
    ///
    /// # Errors
    ///
    /// [`NetError::Shutdown`] once shutdown began.
    pub fn add_peer(&self, to: PeerAddr) -> Result<(), NetError> {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(NetError::Shutdown);
        }
        self.shared.addrs.insert(to.peer, to.addr);
        if let Some(p) = self.known(&to.peer) {
            *p.addr.lock() = Some(to.addr);
        }
        Ok(())
    }

    /// Returns the peer's connection to the pool: it stays open and is reused
    /// by the next `connect` or `send` within the pool timeout, after which
    /// the cleanup task closes it. Messages already queued are still sent.
    pub async fn disconnect(&self, peer: &PeerId) -> Result<(), NetError> {
        let Some(p) = self.known(peer) else {
            // A retired driver has no connection: nothing to disconnect.
            return if self.shared.addrs.contains_key(peer) {
                Ok(())
            } else {
                Err(NetError::UnknownPeer(*peer))
            };
        };
        let (tx, rx) = oneshot::channel();
        if p.ctl.send(Ctl::Disconnect(tx)).is_err() {
            // It retired meanwhile: a retired driver has no connection.
            return if self.shared.is_shutting_down() {
                Err(NetError::Shutdown)
            } else {
                Ok(())
            };
        }
        rx.await.map_err(|_| NetError::Shutdown)
    }

    fn known(&self, peer: &PeerId) -> Option<Arc<Peer>> {
        self.shared.peers.get(peer).map(|p| p.clone())
    }

    /// The peer's driver, started again if it retired while idle and the
    /// application had connected to the peer (its address is remembered).
    fn driver_for(&self, peer: &PeerId) -> Option<Arc<Peer>> {
        self.known(peer).or_else(|| {
            let addr = self.shared.addrs.get(peer).map(|a| *a)?;
            Some(self.shared.peer(*peer, Some(addr)))
        })
    }

    /// Checks what `send` checks before it looks the peer up: shutdown, size.
    fn checked(&self, msg: Bytes) -> Result<Bytes, SendError> {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(SendError::Shutdown { msg });
        }
        let max = self.shared.config.batch.get_max_message_len();
        if msg.len() > max {
            return Err(SendError::TooLarge {
                len: msg.len(),
                max,
                msg,
            });
        }
        Ok(msg)
    }

    /// Queues `msg` for `p` if its byte budget and a queue slot are free now,
    /// and returns its length, for [`accepted`](Self::accepted) (which the
    /// caller calls once it let go of any lock: it runs the sink's code).
    /// The message is stamped by the queue's coarse clock
    /// ([`MsgQueue::try_push_stamped`](crate::queue::MsgQueue::try_push_stamped)):
    /// under load one clock read per batch, not per message.
    fn push_now(p: &Peer, msg: Bytes) -> Result<usize, TryPushError<Bytes>> {
        let len = msg.len();
        // A full queue is the usual reason to wait: seen before the budget
        // is taken, it costs a load instead of a take and a give.
        if !p.queue.has_room() || !p.budget.try_take(len) {
            return Err(TryPushError::Full(msg));
        }
        let envelope = |payload, sent_at| Envelope { payload, sent_at };
        match p.queue.try_push_stamped(msg, envelope) {
            Ok(()) => Ok(len),
            Err(e) => {
                p.budget.give(len);
                Err(e)
            }
        }
    }

    /// [`push_now`](Self::push_now) on the peer's running driver, under the
    /// peer table's read guard (which keeps the driver's queue from being
    /// retired meanwhile: `retire` closes it under the entry's write lock);
    /// hands `msg` back if no driver runs.
    fn push_to_running(
        &self,
        peer: &PeerId,
        msg: Bytes,
    ) -> Result<Result<usize, TryPushError<Bytes>>, Bytes> {
        match self.shared.peers.get(peer) {
            Some(p) => Ok(Self::push_now(&p, msg)),
            None => Err(msg),
        }
    }

    fn accepted(&self, len: usize) {
        self.shared.sink.message_accepted(len);
    }

    /// Queues `msg` for `peer`, waiting while the peer's queue is full.
    ///
    /// `Ok` means accepted: the message will be delivered to the peer's
    /// application in order, or handed back through [`Events`] as
    /// [`Event::Undelivered`]. Never both silently, never neither.
    pub async fn send(&self, peer: &PeerId, msg: Bytes) -> Result<(), SendError> {
        let msg = self.checked(msg)?;
        // The common case, with room now: no wait, so no future to poll and
        // no `Arc` to clone.
        let msg = match self.push_to_running(peer, msg) {
            Ok(Ok(len)) => {
                self.accepted(len);
                return Ok(());
            }
            Ok(Err(TryPushError::Full(msg) | TryPushError::Closed(msg))) | Err(msg) => msg,
        };
        self.send_waiting(peer, msg).await
    }

    /// `send` when the message cannot be queued at once: on a driver of its
    /// own (an `Arc`, started again if the peer's had retired), waiting for
    /// room; once more on a fresh driver if that one retires meanwhile.
    async fn send_waiting(&self, peer: &PeerId, mut msg: Bytes) -> Result<(), SendError> {
        for attempt in 0..2 {
            if attempt > 0 && self.shared.is_shutting_down() {
                break;
            }
            let Some(p) = self.driver_for(peer) else {
                return Err(SendError::UnknownPeer { peer: *peer, msg });
            };
            let len = msg.len();
            // Stamped before the wait: the latency counts from `send`.
            let env = Envelope {
                payload: msg,
                sent_at: Instant::now(),
            };
            let reserved = p.budget.take(len).await;
            match p.queue.push(env).await {
                Ok(()) => {
                    reserved.keep();
                    self.accepted(len);
                    return Ok(());
                }
                // The driver retired between the lookup and the push.
                Err(env) => msg = env.payload,
            }
        }
        Err(SendError::Shutdown { msg })
    }

    /// Queues every message of `msgs` for `peer`, in order, waiting while the
    /// peer's queue is full: for each message the same contract as
    /// [`send`](Self::send), at a fraction of the per-message cost (one peer
    /// lookup and one clock read per call, one queue reservation per chunk of
    /// up to the queue's capacity).
    ///
    /// Messages from one call are queued back to back, in order; messages from
    /// concurrent calls for the same peer may interleave between chunks.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, like `AsyncWriteExt::write_all`: if the future is
    /// dropped while it waits for room, a prefix of `msgs` may already be
    /// accepted (and is delivered or handed back as usual) and the rest is
    /// dropped with the future. Use [`send`](Self::send) per message where a
    /// call may be cancelled.
    ///
    /// # Errors
    ///
    /// A [`SendManyError`] that counts the messages accepted before it stopped
    /// and hands back the rest, in order. Sizes are checked first: a message
    /// over the limit refuses the whole call with nothing queued.
    ///
    /// # Examples
    ///
    /// ```
    /// # use qudag_net::{ConnectionManager, ManagerConfig, MemoryNetwork, PeerId, SendManyReason};
    /// # use bytes::Bytes;
    /// # use std::sync::Arc;
    /// # #[tokio::main]
    /// # async fn main() {
    /// # let net = MemoryNetwork::new();
    /// # let transport = Arc::new(net.bind(PeerId::from_bytes([1; 32])));
    /// let manager = ConnectionManager::new(ManagerConfig::default(), transport).unwrap();
    /// let stranger = PeerId::from_bytes([9; 32]);
    /// let msgs = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")];
    /// let err = manager.send_many(&stranger, msgs).await.unwrap_err();
    /// assert_eq!(err.accepted, 0);
    /// assert_eq!(err.reason, SendManyReason::UnknownPeer { peer: stranger });
    /// assert_eq!(err.unsent.len(), 2); // handed back, in order
    /// # }
    /// ```
    pub async fn send_many(&self, peer: &PeerId, msgs: Vec<Bytes>) -> Result<(), SendManyError> {
        let max = self.shared.config.batch.get_max_message_len();
        if let Some((index, len)) = msgs
            .iter()
            .map(Bytes::len)
            .enumerate()
            .find(|&(_, len)| len > max)
        {
            return Err(SendManyError {
                accepted: 0,
                reason: SendManyReason::TooLarge { index, len, max },
                unsent: msgs,
            });
        }
        let mut msgs = msgs;
        let sent_at = Instant::now();
        let mut next = 0;
        let mut driver: Option<Arc<Peer>> = None;
        let mut failed = 0;
        while next < msgs.len() {
            let p = match driver.take() {
                Some(p) => p,
                None => match self.check_many(peer) {
                    Ok(p) => p,
                    Err(reason) => {
                        return Err(SendManyError {
                            accepted: next,
                            reason,
                            unsent: msgs.split_off(next),
                        })
                    }
                },
            };
            let n = (msgs.len() - next).min(p.queue.capacity());
            let (mut count, mut bytes, mut short) = (0, 0, None);
            // The driver retired since the lookup (its queue closed).
            let mut closed = false;
            match p.queue.reserve(n).await {
                Err(_) => closed = true,
                Ok(mut slots) => {
                    while slots.left() > 0 && short.is_none() {
                        // Up to 64 messages that fit the peer's byte budget; their
                        // sizes are kept for the metrics sink, told after the
                        // queue's lock (a sink is the application's code).
                        let mut lens = [0usize; 64];
                        let mut k = 0;
                        while k < lens.len().min(slots.left()) {
                            let len = msgs[next + k].len();
                            if !p.budget.try_take(len) {
                                // Over the budget: wait for room below.
                                short = Some(len);
                                break;
                            }
                            lens[k] = len;
                            k += 1;
                        }
                        if k == 0 {
                            break;
                        }
                        let taken: usize = lens[..k].iter().sum();
                        let (mut i, end) = (next, next + k);
                        let pushed = slots.fill(|| {
                            (i < end).then(|| {
                                let payload = std::mem::take(&mut msgs[i]);
                                i += 1;
                                Envelope { payload, sent_at }
                            })
                        });
                        if pushed.is_err() {
                            p.budget.give(taken);
                            closed = true;
                            break;
                        }
                        next = end;
                        count += k;
                        bytes += taken;
                        self.shared
                            .sink
                            .messages_queued(&mut lens[..k].iter().copied());
                    }
                }
            }
            if count > 0 {
                self.shared.sink.queued_messages(count as isize);
                self.shared.sink.memory(bytes as isize);
                failed = 0;
            }
            if closed {
                // Once more on a fresh driver; twice in a row means the
                // manager is shutting down.
                failed += 1;
                if failed == 2 {
                    return Err(SendManyError {
                        accepted: next,
                        reason: SendManyReason::Shutdown,
                        unsent: msgs.split_off(next),
                    });
                }
                continue;
            }
            failed = 0;
            if let Some(len) = short {
                p.budget.room_for(len).await;
            }
            driver = Some(p);
        }
        Ok(())
    }

    /// The driver for a `send_many` chunk, or why there is none.
    fn check_many(&self, peer: &PeerId) -> Result<Arc<Peer>, SendManyReason> {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(SendManyReason::Shutdown);
        }
        self.driver_for(peer)
            .ok_or(SendManyReason::UnknownPeer { peer: *peer })
    }

    /// Queues `msg` for `peer` if its queue has room; `Full` hands it back otherwise.
    pub fn try_send(&self, peer: &PeerId, msg: Bytes) -> Result<(), SendError> {
        match self.try_send_once(peer, msg) {
            // The driver retired between the lookup and the send: once more.
            Err(SendError::Shutdown { msg }) if !self.shared.is_shutting_down() => {
                self.try_send_once(peer, msg)
            }
            other => other,
        }
    }

    fn try_send_once(&self, peer: &PeerId, msg: Bytes) -> Result<(), SendError> {
        let msg = self.checked(msg)?;
        let pushed = match self.push_to_running(peer, msg) {
            Ok(pushed) => pushed,
            // Retired: started again if the application connected to it.
            Err(msg) => match self.driver_for(peer) {
                Some(p) => Self::push_now(&p, msg),
                None => return Err(SendError::UnknownPeer { peer: *peer, msg }),
            },
        };
        pushed.map(|len| self.accepted(len)).map_err(|e| match e {
            TryPushError::Full(msg) => SendError::Full { peer: *peer, msg },
            TryPushError::Closed(msg) => SendError::Shutdown { msg },
        })
    }

    /// Takes the stream of received messages (once; later calls return `None`).
    pub fn incoming(&self) -> Option<Incoming> {
        self.incoming.lock().take()
    }

    /// Takes the stream of state changes and undelivered messages (once).
    pub fn events(&self) -> Option<Events> {
        self.events.lock().take()
    }

    /// The connection state of `peer`, if the manager knows it.
    pub fn status(&self, peer: &PeerId) -> Option<ConnState> {
        self.known(peer).map(|p| p.state.lock().state())
    }

    /// Every peer the manager knows.
    pub fn peers(&self) -> Vec<PeerId> {
        self.shared.peers.iter().map(|p| *p.key()).collect()
    }

    /// Connections currently open (active and pooled), as the limiter counts them.
    pub fn open_connections(&self) -> usize {
        self.shared.limiter.connections()
    }

    /// Idle connections parked in the pool.
    pub fn pooled_connections(&self) -> usize {
        self.shared.pool.len()
    }

    /// The seed's four figures, now.
    pub fn metrics(&self) -> NetworkMetrics {
        self.shared
            .metrics
            .network_metrics(Instant::now().into_std())
    }

    /// Every figure the built-in sink keeps, now.
    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot(Instant::now().into_std())
    }

    /// The built-in metrics sink (for Prometheus export and custom reads).
    pub fn metrics_sink(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Stops accepting messages and connections, flushes every queue, waits
    /// for acknowledgements up to `grace`, closes every connection with the
    /// shutdown reason, and hands back (as [`Event::Undelivered`]) whatever
    /// was not acknowledged. A peer whose connection is lost while messages
    /// wait for it is redialed within `grace`, so an unreachable peer makes
    /// the shutdown take the whole `grace`. Later calls return at once.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        if self.shared.shutting_down.swap(true, Ordering::AcqRel) {
            return ShutdownReport { peers_closed: 0 };
        }
        self.shared.stop.notify_waiters();
        let deadline = crate::driver::later(Instant::now(), grace);
        let peers: Vec<Arc<Peer>> = self.shared.peers.iter().map(|p| p.clone()).collect();
        let mut waits = Vec::new();
        for p in &peers {
            let (done, rx) = oneshot::channel();
            if p.ctl.send(Ctl::Shutdown { deadline, done }).is_ok() {
                waits.push(rx);
            }
        }
        let mut closed = 0;
        for w in waits {
            // A driver always answers: its wait is bounded by the deadline.
            if w.await.is_ok() {
                closed += 1;
            }
        }
        self.shared.transport.close();
        // The readers are gone with their sessions: dropping the last sender
        // lets `Incoming` end after what it holds.
        self.shared.incoming_tx.lock().take();
        self.shared.events.close();
        ShutdownReport {
            peers_closed: closed,
        }
    }
}

/// A random incarnation id, never 0 (0 means "none" on the wire).
fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // The standard library seeds `RandomState` from the OS's random source;
    // mixing in the time keeps two managers of one process apart too.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish().max(1)
}

async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            r = shared.transport.accept() => r,
            () = shared.stop.notified() => return,
        };
        match accepted {
            Ok(conn) => shared.on_inbound(conn),
            Err(e) if e.is_endpoint_closed() => return,
            Err(e) => {
                shared.sink.error(error_kind(&NetError::Transport(e)));
            }
        }
    }
}

async fn cleanup_loop(shared: Arc<Shared>) {
    // Samples for the messages-per-second window, a few per window.
    let period = (shared.metrics.rate_window() / 8).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = shared.pool.poll_timeout().map(Instant::from_std);
        tokio::select! {
            () = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                for (peer, handle) in shared.pool.handle_timeout(Instant::now().into_std()) {
                    match shared.peers.get(&peer) {
                        Some(p) => { let _ = p.ctl.send(Ctl::Expire(handle.0)); }
                        None => handle.0.close(CloseCode::Expired),
                    }
                }
            }
            () = shared.pool_changed.notified() => {}
            _ = tick.tick() => shared.metrics.tick(Instant::now().into_std()),
            () = shared.stop.notified() => return,
        }
    }
}
