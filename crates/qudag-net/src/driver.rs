//! The per-peer driver: one task per known peer that owns the peer's queue,
//! batcher, session (`Outbox`) and current connection, and is the only writer
//! to its stream.
//!
//! The driver is where the sans-IO cores meet IO and time: it reads the clock
//! (`tokio::time::Instant`, so `tokio::time::pause` controls it) and passes
//! `now` to the batcher, the outbox, the pool and the backoff. The session
//! logic (message numbers, resends, what a RESUME means) lives in
//! `qudag_batch::Outbox`; the driver moves bytes and keeps time.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use qudag_batch::{
    encode_ack_frame, encode_batch_frame, encode_resume_frame, Batcher, Outbox, Resume,
};
use qudag_crypto::PeerId;
use qudag_metrics::{CloseKind, ErrorKind, MetricsSink, OpenKind};
use qudag_pool::{keep_connection, ConnState, LimitError, Role, StateMachine};
use qudag_transport::{CloseReason, PeerAddr, Side, TransportError};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;

use crate::budget::ByteBudget;
use crate::manager::Shared;
use crate::queue::{MsgQueue, TryPushError};
use crate::session::{self, CloseCode, Pooled, ReaderCtx, RecvState, Session, SessionEnd};
use crate::{Event, NetError, UndeliveredReason};

/// The largest frame buffer a session keeps between batches.
const MAX_IDLE_WRITE_BUF: usize = 256 * 1024;

/// The shortest wait between two dials of one peer, whatever the backoff
/// says: a dial refused by a local limit takes no time and sets no backoff,
/// and a backoff base of 0 is allowed, so without it a driver with waiting
/// messages would retry in a busy loop until `unreachable_after`.
const MIN_REDIAL_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// How long a shutting-down driver waits for the peer to read its last frames and close.
const SHUTDOWN_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// A message on its way: the payload and when `send` accepted it, read
/// from the queue's coarse clock (`MsgQueue::try_push_stamped`): never
/// later than the `send`, possibly earlier (a reading shared with the
/// messages queued before it since the driver last took).
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) payload: Bytes,
    pub(crate) sent_at: Instant,
}

impl AsRef<[u8]> for Envelope {
    fn as_ref(&self) -> &[u8] {
        &self.payload
    }
}

/// Commands to a driver.
pub(crate) enum Ctl {
    Connect(oneshot::Sender<Result<(), NetError>>),
    Disconnect(oneshot::Sender<()>),
    /// An inbound connection, set up by the accept path (never by the driver,
    /// so a peer that stalls its set-up cannot hold the driver). Boxed: tokio
    /// allocates a channel's first block of 32 slots up front, per peer, so
    /// a 176-byte `Session` inline would cost every idle peer about 5 KiB.
    Inbound(Box<Session>),
    Expire(Arc<session::SessionHandle>),
    Shutdown {
        deadline: Instant,
        done: oneshot::Sender<()>,
    },
}

/// A peer's control commands, for its driver (the only consumer). Unlike a
/// tokio channel, which allocates a block of 32 slots when it is made (1 KiB
/// for every idle peer), it allocates nothing until the first command.
#[derive(Default)]
pub(crate) struct CtlQueue {
    state: Mutex<CtlState>,
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct CtlState {
    items: std::collections::VecDeque<Ctl>,
    closed: bool,
}

impl CtlQueue {
    /// Queues `ctl` for the driver; gives it back if the driver closed the
    /// queue (it retired or shut down).
    pub(crate) fn send(&self, ctl: Ctl) -> Result<(), Ctl> {
        {
            let mut state = self.state.lock();
            if state.closed {
                return Err(ctl);
            }
            state.items.push_back(ctl);
        }
        // A permit is stored if the driver is not waiting: no lost wake-up.
        self.notify.notify_one();
        Ok(())
    }

    /// The next command, in order; `None` once closed and empty.
    /// Cancel-safe: a command stays queued until this returns it.
    async fn recv(&self) -> Option<Ctl> {
        loop {
            {
                let mut state = self.state.lock();
                if let Some(ctl) = state.items.pop_front() {
                    return Some(ctl);
                }
                if state.closed {
                    return None;
                }
            }
            self.notify.notified().await;
        }
    }

    /// Refuses further commands and drops those queued (as dropping a
    /// channel's receiver does): a `connect` waiting on one hears that the
    /// driver is gone.
    fn close_and_clear(&self) {
        drop(self.close_and_take());
    }

    /// Refuses further commands and returns those queued, in order.
    fn close_and_take(&self) -> std::collections::VecDeque<Ctl> {
        let left = {
            let mut state = self.state.lock();
            state.closed = true;
            std::mem::take(&mut state.items)
        };
        self.notify.notify_one();
        left
    }
}

/// What the manager keeps of a peer.
pub(crate) struct Peer {
    pub(crate) id: PeerId,
    pub(crate) addr: Mutex<Option<SocketAddr>>,
    /// Messages from `send` to the driver.
    pub(crate) queue: MsgQueue<Envelope>,
    pub(crate) ctl: CtlQueue,
    pub(crate) state: Mutex<StateMachine>,
    /// The receiving half of the session with this peer.
    pub(crate) recv: Arc<RecvState>,
    /// Payload bytes of this peer's accepted messages not yet acknowledged
    /// or handed back (`queue_bytes`).
    pub(crate) budget: ByteBudget,
    /// A batch was written to the peer (new or resent).
    pub(crate) sent: std::sync::atomic::AtomicBool,
}

impl Peer {
    /// True once a message went either way with this peer: its state is
    /// worth keeping, and its connections are not a stranger's idle ones.
    pub(crate) fn exchanged(&self) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        self.sent.load(Acquire) || self.recv.used.load(Acquire)
    }
}

pub(crate) struct Driver {
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    /// What the last take from the queue moved out (empty between takes;
    /// kept for its allocation, which the queue and this swap).
    taken: std::collections::VecDeque<Envelope>,
    batcher: Batcher<Envelope>,
    session: Option<Session>,
    /// The session is parked in the pool (the user disconnected).
    idle: bool,
    /// The sending half of the session: numbers, window, resends.
    outbox: Outbox<Envelope>,
    /// Dials in a row that failed while messages waited.
    failed_dials: u32,
    next_redial: Option<Instant>,
    /// A dial met this manager's own connection limit (not a failure of
    /// the peer): the room generation (`Room::seen`) read before it. The
    /// driver dials again when room may have come free since, not on a
    /// timer; `give_up_at` still ends the wait.
    room_seen: Option<u64>,
    /// Since when messages have waited without progress (no connection, or
    /// one that acknowledges nothing); past `unreachable_after` they go back.
    down_since: Option<Instant>,
    /// Since when the driver has had nothing to do (no session, nothing queued).
    quiet_since: Option<Instant>,
    /// The peer closed our connection as a simultaneous dial's loser: its
    /// winner should arrive by then.
    winner_due: Option<Instant>,
    /// `connect` calls whose dial the peer replaced: answered when the
    /// winner is adopted, or when `winner_due` passes without it.
    connect_waiters: Vec<oneshot::Sender<Result<(), NetError>>>,
    /// The last connection ended because the peer stopped acknowledging
    /// (the reason given if the messages go back).
    unresponsive: bool,
    /// A connection was adopted at some point.
    had_session: bool,
}

impl Drop for Driver {
    /// However the driver ends (shutdown, retirement, its task aborted), the
    /// peer's control and message queues are closed and emptied, so no
    /// command or sender waits for it.
    fn drop(&mut self) {
        self.peer.ctl.close_and_clear();
        drop(self.peer.queue.close());
    }
}

/// `t + d`, or a point 30 years on if that overflows: a deadline that
/// never comes, as `tokio::time` itself uses for "never".
pub(crate) fn later(t: Instant, d: std::time::Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + std::time::Duration::from_secs(86_400 * 365 * 30))
}

fn std_now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// How many acknowledged messages go to the sink per `messages_acked`
/// call: they pass through a buffer on the stack ([`Acked`]), so an ACK
/// allocates nothing.
const ACK_CHUNK: usize = 64;

/// The messages one ACK (or RESUME) acknowledged, on their way to the
/// sink in calls of up to [`ACK_CHUNK`], and their totals for the gauges.
struct Acked {
    sink: Arc<dyn MetricsSink>,
    buf: [(usize, std::time::Duration); ACK_CHUNK],
    len: usize,
    count: usize,
    bytes: usize,
}

impl Acked {
    fn new(sink: Arc<dyn MetricsSink>) -> Self {
        Acked {
            sink,
            buf: [(0, std::time::Duration::ZERO); ACK_CHUNK],
            len: 0,
            count: 0,
            bytes: 0,
        }
    }

    /// One acknowledged message of `bytes` payload bytes, `latency` after
    /// its `send`.
    fn push(&mut self, bytes: usize, latency: std::time::Duration) {
        self.buf[self.len] = (bytes, latency);
        self.len += 1;
        self.count += 1;
        self.bytes += bytes;
        if self.len == ACK_CHUNK {
            self.flush();
        }
    }

    /// Reports what the buffer holds.
    fn flush(&mut self) {
        if self.len > 0 {
            self.sink
                .messages_acked(&mut self.buf[..self.len].iter().copied());
            self.len = 0;
        }
    }
}

/// Room may have come free under the connection limit since `seen`
/// (never, for `None`). Boxed: the wait sits in the driver's task only
/// while it waits.
async fn room_changed(shared: &Shared, seen: Option<u64>) {
    match seen {
        Some(seen) => Box::pin(shared.room.changed_since(seen)).await,
        None => std::future::pending().await,
    }
}

async fn signalled(signals: Option<Arc<session::Signals>>) {
    match signals {
        Some(s) => s.changed().await,
        None => std::future::pending().await,
    }
}

fn signals_of(session: &Option<Session>) -> Option<Arc<session::Signals>> {
    session.as_ref().map(|s| s.signals.clone())
}

impl Driver {
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        id: PeerId,
        addr: Option<SocketAddr>,
        recv: Option<Arc<RecvState>>,
    ) -> Arc<Peer> {
        let (peer, driver) = Driver::new(shared, id, addr, recv);
        driver.start();
        peer
    }

    /// Runs the driver in its own task.
    fn start(self) {
        // Everything the driver logs, and the spans of the connections it
        // dials, sit under one span per peer.
        let span = tracing::info_span!(parent: None, "peer", peer = %self.peer.id);
        tokio::spawn(self.run().instrument(span));
    }

    fn new(
        shared: Arc<Shared>,
        id: PeerId,
        addr: Option<SocketAddr>,
        recv: Option<Arc<RecvState>>,
    ) -> (Arc<Peer>, Driver) {
        let peer = Arc::new(Peer {
            id,
            addr: Mutex::new(addr),
            queue: MsgQueue::new(shared.config.queue_capacity),
            ctl: CtlQueue::default(),
            state: Mutex::new(StateMachine::new()),
            recv: recv.unwrap_or_else(RecvState::new),
            budget: ByteBudget::new(shared.config.queue_bytes),
            sent: std::sync::atomic::AtomicBool::new(false),
        });
        let driver = Driver {
            outbox: Outbox::starting_at(
                shared.incarnation,
                shared
                    .number_floor
                    .load(std::sync::atomic::Ordering::Acquire),
            ),
            batcher: Batcher::new(shared.config.batch.clone()),
            shared,
            peer: peer.clone(),
            taken: std::collections::VecDeque::new(),
            session: None,
            idle: false,
            failed_dials: 0,
            next_redial: None,
            room_seen: None,
            down_since: None,
            quiet_since: None,
            winner_due: None,
            connect_waiters: Vec::new(),
            unresponsive: false,
            had_session: false,
        };
        (peer, driver)
    }

    // Not an `async fn`: that would copy the driver (600 bytes) from its
    // argument slot into a local, and the task would carry both; the
    // block uses the captured driver in place.
    #[allow(clippy::manual_async_fn, reason = "on purpose, see above")]
    fn run(mut self) -> impl std::future::Future<Output = ()> + Send {
        async move {
            loop {
                if let Err(end) = self.flush_ready().await {
                    self.session_lost(end);
                }
                // A pooled (idle) session is not used for new messages until
                // `demand` takes it out of the pool (Disconnected -> Connected).
                let connected = self.session.is_some() && !self.idle;
                let sendable = self.outbox.may_send_new();
                let batch_deadline = if sendable {
                    self.batcher.poll_timeout().map(Instant::from_std)
                } else {
                    None
                };
                let ack_deadline = self.ack_due();
                let give_up_at = self
                    .down_since
                    .map(|t| later(t, self.shared.config.unreachable_after));
                let can_pull = sendable
                    && self.outbox.window_batches() < self.shared.config.max_unacked_batches
                    && self.batcher.pending_messages()
                        < self.shared.config.batch.get_max_messages();
                // Without a session, pull one message to learn that there is demand.
                let pull_for_demand = !connected
                    && self.next_redial.is_none()
                    && self.batcher.pending_messages() == 0
                    && self.outbox.is_empty();
                // A driver with nothing to do for a while retires (see `retire`);
                // never while it holds a session, pooled or not, or waits for a
                // simultaneous dial's winner.
                if !pull_for_demand
                    || self.down_since.is_some()
                    || self.session.is_some()
                    || self.winner_due.is_some()
                {
                    self.quiet_since = None;
                } else if self.quiet_since.is_none() {
                    self.quiet_since = Some(Instant::now());
                }
                let retire_at = self.quiet_since.map(|t| later(t, self.retire_after()));
                let next_redial = self.next_redial.filter(|_| !connected);
                let room_seen = self.room_seen.filter(|_| !connected);
                // One timer for all deadlines (a `Sleep` is 112 bytes, and each
                // select branch's future lives in the driver's task for as long
                // as the peer is known); the first one due, in this order, is
                // handled, as a biased select over one timer each would.
                let wake_at = [
                    batch_deadline,
                    ack_deadline,
                    next_redial,
                    give_up_at,
                    self.winner_due,
                    retire_at,
                ]
                .into_iter()
                .flatten()
                .min();
                tokio::select! {
                    biased;
                    ctl = self.peer.ctl.recv() => match ctl {
                        Some(Ctl::Shutdown { deadline, done }) => {
                            Box::pin(self.shutdown(deadline)).await;
                            let _ = done.send(());
                            return;
                        }
                        Some(ctl) => Box::pin(self.on_ctl(ctl)).await,
                        None => {
                            Box::pin(self.shutdown(Instant::now())).await;
                            return;
                        }
                    },
                    () = signalled(signals_of(&self.session)) => self.on_signals(),
                    // The application took messages: `flush_ready` acknowledges them.
                    () = self.peer.recv.wake.notified() => {}
                    () = self.peer.queue.ready(), if can_pull || pull_for_demand => {
                        if connected {
                            self.drain_queue();
                        } else {
                            // One message is enough to learn there is demand.
                            self.take_queued(1);
                            Box::pin(self.demand()).await;
                        }
                    }
                    () = room_changed(&self.shared, room_seen), if room_seen.is_some() => {
                        self.room_seen = None;
                        Box::pin(self.demand()).await;
                    }
                    () = sleep_until(wake_at) => {
                        let now = Instant::now();
                        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
                        if due(batch_deadline) {
                            self.batcher.handle_timeout(std_now());
                        } else if due(ack_deadline) {
                            self.unresponsive();
                        } else if due(next_redial) {
                            self.next_redial = None;
                            Box::pin(self.demand()).await;
                        } else if due(give_up_at) {
                            self.give_up();
                        } else if due(self.winner_due) {
                            self.winner_due_passed(connected);
                        } else if due(retire_at) {
                            Box::pin(self.retire()).await;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The simultaneous dial's winner did not arrive by `winner_due`.
    fn winner_due_passed(&mut self, connected: bool) {
        self.winner_due = None;
        if !connected && self.state() == ConnState::Connected {
            self.set_state(ConnState::Disconnected);
        }
        if self.session.is_none() && self.state() == ConnState::Connecting {
            // Our dial was replaced and the winner never came.
            self.set_state(ConnState::Failed);
        }
        for waiter in self.connect_waiters.drain(..) {
            let _ = waiter.send(Err(NetError::ConnectTimeout { peer: self.peer.id }));
        }
    }

    /// Leaves the manager's peer table so that peers seen once do not keep a
    /// task forever. Work that raced with the retirement (a message or a
    /// command sent to this driver after the table lookup) moves to a fresh
    /// driver, so nothing accepted is lost.
    async fn retire(&mut self) {
        let id = self.peer.id;
        // Before a successor can exist: it numbers from the floor.
        self.shared.number_floor.fetch_max(
            self.outbox.next_number(),
            std::sync::atomic::Ordering::AcqRel,
        );
        let shutting_down = self.shared.is_shutting_down();
        // Under the peer table's entry lock: close both queues and, if work
        // raced in, put a successor that already holds it in this driver's
        // place. A sender that misses this driver finds the successor with
        // the messages that beat it already queued ahead of its own (its
        // message back from the closed queue, it retries there); with the
        // lookup, the close and the hand-over apart, a second message of
        // the same sender could overtake the first.
        let mut successor = None;
        let mut refused = Vec::new();
        let (late, late_ctl) = match self.shared.peers.entry(id) {
            dashmap::mapref::entry::Entry::Occupied(mut entry)
                if Arc::ptr_eq(entry.get(), &self.peer) =>
            {
                let late = self.peer.queue.close();
                let late_ctl = self.peer.ctl.close_and_take();
                if (late.is_empty() && late_ctl.is_empty()) || shutting_down {
                    entry.remove();
                    (late, late_ctl)
                } else {
                    let addr = *self.peer.addr.lock();
                    // The successor keeps this driver's receiving state: a
                    // session set up against it meanwhile (its reader holds
                    // it) stays valid there.
                    let (next, driver) =
                        Driver::new(self.shared.clone(), id, addr, Some(self.peer.recv.clone()));
                    refused = self.hand_over(&next, late, late_ctl);
                    entry.insert(next);
                    successor = Some(driver);
                    Default::default()
                }
            }
            // Not this driver's entry (only `retire` removes one, so this
            // does not happen): close and settle below all the same.
            _ => (self.peer.queue.close(), self.peer.ctl.close_and_take()),
        };
        self.shared.backoff.forget(&id);
        let moved = successor.is_some();
        if let Some(driver) = successor {
            driver.start();
        }
        // A full successor queue is impossible (same capacity, it started
        // empty); should it ever refuse, the message goes back, not away.
        self.hand_back(refused, UndeliveredReason::Unreachable, false);
        tracing::debug!(peer = %id, moved, late = late.len() + late_ctl.len(), "idle peer driver retires");
        if late.is_empty() && late_ctl.is_empty() {
            return;
        }
        if shutting_down {
            // A successor would not be told to shut down: settle it here.
            self.hand_back(late.into(), UndeliveredReason::Shutdown, false);
            for ctl in late_ctl {
                match ctl {
                    Ctl::Connect(reply) => {
                        let _ = reply.send(Err(NetError::Shutdown));
                    }
                    Ctl::Disconnect(reply) => {
                        let _ = reply.send(());
                    }
                    Ctl::Inbound(session) => session.handle.close(CloseCode::Shutdown),
                    Ctl::Expire(handle) => handle.close(CloseCode::Expired),
                    Ctl::Shutdown { done, .. } => {
                        let _ = done.send(());
                    }
                }
            }
            return;
        }
        // Only on the path that cannot happen (see above).
        let addr = *self.peer.addr.lock();
        let next = self
            .shared
            .peer_with(id, addr, Some(self.peer.recv.clone()));
        let refused = self.hand_over(&next, late, late_ctl);
        self.hand_back(refused, UndeliveredReason::Unreachable, false);
    }

    /// Moves what raced with the retirement to `next`, in order; returns
    /// the messages its queue refused.
    fn hand_over(
        &self,
        next: &Peer,
        late: std::collections::VecDeque<Envelope>,
        late_ctl: std::collections::VecDeque<Ctl>,
    ) -> Vec<Envelope> {
        let mut refused = Vec::new();
        for env in late {
            let len = env.payload.len();
            // Its bytes move with it (already accepted: they may overshoot).
            next.budget.force_take(len);
            match next.queue.try_push(env) {
                Ok(()) => self.peer.budget.give(len),
                Err(TryPushError::Full(env) | TryPushError::Closed(env)) => {
                    next.budget.give(len);
                    refused.push(env);
                }
            }
        }
        for ctl in late_ctl {
            let _ = next.ctl.send(ctl);
        }
        refused
    }

    /// How long this driver stays with nothing to do before it retires. A
    /// stranger (a peer the application never connected to) that never
    /// exchanged a message keeps no state worth keeping: its driver retires
    /// as soon as its connection is gone, or after the connect timeout if
    /// its inbound set-up never completed. Any other peer is kept for
    /// `peer_idle_timeout`, so that a resend after a lost connection is
    /// still recognised as a duplicate.
    fn retire_after(&self) -> std::time::Duration {
        let stranger = !self.shared.is_known(&self.peer.id) && !self.peer.exchanged();
        if !stranger {
            self.shared.config.peer_idle_timeout
        } else if self.had_session {
            std::time::Duration::ZERO
        } else {
            self.shared.config.connect_timeout
        }
    }

    fn take(&mut self, env: Envelope) {
        // `send` checked the size against the same limit, so push cannot refuse;
        // if it ever did, the message goes back to the application, not away.
        // The message's wait started at `send`: its batch deadline counts
        // from its stamp (no later than the `send`, so the deadline is never
        // late; and this saves a clock read per message).
        let since = env.sent_at.into_std();
        if let Err(e) = self.batcher.push(env, since) {
            self.hand_back(
                vec![e.into_message()],
                UndeliveredReason::ConnectionFailed,
                false,
            );
        }
    }

    /// Moves what is already queued into the batcher, up to one batch.
    fn drain_queue(&mut self) {
        let max = self.shared.config.batch.get_max_messages();
        let room = max.saturating_sub(self.batcher.pending_messages());
        if room > 0 {
            self.take_queued(room);
        }
    }

    /// Gives back the queue's buffers if it is empty (a burst grew them;
    /// an idle peer keeps none).
    fn trim_queue(&mut self) {
        self.peer.queue.trim();
        self.taken = std::collections::VecDeque::new();
    }

    /// Moves up to `max` queued messages into the batcher.
    fn take_queued(&mut self, max: usize) {
        let mut taken = std::mem::take(&mut self.taken);
        let n = self.peer.queue.take_into(max, &mut taken);
        for env in taken.drain(..) {
            self.take(env);
        }
        // Keep an allocation the size of what recent takes moved, not of
        // the largest burst ever (the queue holds its twin).
        if taken.capacity() > 32 && taken.capacity() > 4 * n {
            taken = std::collections::VecDeque::new();
        }
        self.taken = taken;
    }

    // -- state ------------------------------------------------------------

    fn set_state(&self, to: ConnState) {
        let t = self.peer.state.lock().transition(to);
        match t {
            Ok(t) => {
                self.shared.sink.state_changed(t.from, t.to);
                self.shared.emit(Event::StateChanged {
                    peer: self.peer.id,
                    from: t.from,
                    to: t.to,
                });
            }
            Err(e) => tracing::debug!(peer = %self.peer.id, error = %e, "state transition skipped"),
        }
    }

    fn state(&self) -> ConnState {
        self.peer.state.lock().state()
    }

    // -- connecting -------------------------------------------------------

    async fn on_ctl(&mut self, ctl: Ctl) {
        match ctl {
            Ctl::Connect(reply) => {
                // The user's connect waits for the listener's acceptance,
                // or, if the peer replaced our dial, for its winner.
                match self.connect(true).await {
                    Err(e) if replaced(&e) && self.winner_due.is_some() => {
                        self.connect_waiters.push(reply);
                    }
                    r => {
                        let _ = reply.send(r);
                    }
                }
            }
            Ctl::Disconnect(reply) => {
                if let Some(s) = self.session.as_mut() {
                    if !self.idle {
                        self.idle = true;
                        // A pooled connection keeps no frame buffer (a
                        // burst may have grown it to MAX_IDLE_WRITE_BUF);
                        // the next frame allocates one.
                        s.buf = bytes::BytesMut::new();
                        s.account_buf(&*self.shared.sink);
                        self.trim_queue();
                        let s = self.session.as_ref().expect("just used");
                        self.set_state(ConnState::Disconnected);
                        let handle = Pooled(s.handle.clone());
                        if let Some(old) = self.shared.pool.checkin(self.peer.id, handle, std_now())
                        {
                            old.0.close(CloseCode::Duplicate);
                        }
                        self.shared.pool_changed.notify_one();
                        // Evictable now: room for a dial that met the limit.
                        self.shared.room.changed();
                    }
                }
                let _ = reply.send(());
            }
            Ctl::Inbound(session) => self.inbound(*session),
            Ctl::Expire(handle) => {
                if self
                    .session
                    .as_ref()
                    .is_some_and(|s| Arc::ptr_eq(&s.handle, &handle))
                {
                    self.shared.sink.connection_closed(CloseKind::Expired);
                }
                handle.close(CloseCode::Expired);
            }
            Ctl::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    /// Ensures a usable session: the live one, a pooled one, or a new dial.
    ///
    /// With `confirm`, a new dial also waits for the listener's acceptance
    /// ([`Connection::accepted`]), so a refusal is this call's error. Without
    /// it the session is used at once: its first bytes leave behind the
    /// handshake, and a refusal shows up as the connection ending before the
    /// peer's RESUME (counted as a failed dial in `session_lost`).
    async fn connect(&mut self, confirm: bool) -> Result<(), NetError> {
        if self.session.is_some() {
            if !self.idle {
                return Ok(());
            }
            if self
                .shared
                .pool
                .checkout(&self.peer.id, std_now())
                .is_some()
            {
                self.idle = false;
                // Disconnected -> Connected: no dial, no handshake.
                self.set_state(ConnState::Connected);
                self.shared.sink.connection_opened(OpenKind::Reused);
                return Ok(());
            }
            // Expired or dead in the pool: close it and dial anew.
            if let Some(s) = &self.session {
                s.handle.close(CloseCode::Expired);
            }
            self.session_lost(SessionEnd::Closed(CloseReason::Local {
                code: CloseCode::Expired as u32,
                reason: Bytes::from_static(CloseCode::Expired.reason()),
            }));
        }
        let addr = (*self.peer.addr.lock()).ok_or(NetError::UnknownPeer(self.peer.id))?;
        if let Err(e) = self.shared.backoff.check(&self.peer.id, std_now()) {
            self.shared.sink.error(ErrorKind::Backoff);
            let now = Instant::now();
            let retry_at = Instant::from_std(e.retry_at).max(now);
            return Err(NetError::Backoff {
                peer: self.peer.id,
                retry_at,
                retry_after: retry_at - now,
            });
        }
        let permit = self.shared.dial_permit()?;
        self.shared.sink.pending_dials(1);
        self.set_state(ConnState::Connecting);
        let to = PeerAddr::new(self.peer.id, addr);
        let shared = self.shared.clone();
        let recv = self.peer.recv.clone();
        let result = tokio::time::timeout(self.shared.config.connect_timeout, async {
            let conn = shared.transport.dial(&to).await?;
            let slot = permit.established();
            let ctx = shared.reader_ctx(to.peer, recv)?;
            let session = match session::establish(conn.clone(), shared.local, slot, ctx).await {
                Ok(session) => session,
                Err(e) => {
                    // A refusal can close the connection while the session
                    // is set up. The QUIC transport then says `Denied`
                    // itself; for a transport whose set-up errors do not
                    // classify a refusal, the acceptance says why.
                    if confirm {
                        if let Err(denied @ TransportError::Denied { .. }) = conn.accepted().await {
                            return Err(denied.into());
                        }
                    }
                    return Err(e);
                }
            };
            if confirm {
                if let Err(e) = session.handle.conn.accepted().await {
                    // Closed by the peer as the loser of a simultaneous
                    // dial is not a refusal: say so (see `replaced`).
                    return Err(match session.handle.conn.close_reason() {
                        Some(reason @ CloseReason::Remote { code, .. })
                            if code == CloseCode::Duplicate as u32 =>
                        {
                            NetError::Transport(TransportError::Closed {
                                peer: to.peer,
                                reason,
                            })
                        }
                        _ => e.into(),
                    });
                }
            }
            Ok(session)
        })
        .await;
        self.shared.sink.pending_dials(-1);
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(NetError::ConnectTimeout { peer: self.peer.id }),
        };
        match result {
            Ok(session) => {
                self.adopt(session, OpenKind::Dialed);
                if confirm {
                    self.accepted();
                }
                Ok(())
            }
            Err(e) if replaced(&e) => {
                // The peer closed our dial as the loser of a simultaneous
                // dial: not a failure. Its own dial is the winner and arrives
                // as inbound (adopted in `inbound`); until `winner_due` the
                // state stays Connecting.
                tracing::debug!(peer = %self.peer.id, "dial replaced by the peer's");
                self.shared.sink.connection_closed(CloseKind::Duplicate);
                self.winner_due = Some(later(Instant::now(), self.shared.config.connect_timeout));
                Err(e)
            }
            Err(e) => {
                self.shared.sink.error(error_kind(&e));
                self.set_state(ConnState::Failed);
                let retry = self.shared.backoff.on_failure(self.peer.id, std_now());
                tracing::debug!(peer = %self.peer.id, error = %e, ?retry, "dial failed");
                Err(e)
            }
        }
    }

    /// Makes `session` the current connection of the peer session. What the
    /// window holds is resent on it once the peer's RESUME arrives.
    fn adopt(&mut self, mut session: Session, how: OpenKind) {
        self.shared.sink.connection_opened(how);
        self.room_seen = None;
        session.adopted_at = Instant::now();
        session.signals.adopt();
        self.had_session = true;
        self.winner_due = None;
        for waiter in self.connect_waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
        let hello = match how {
            OpenKind::Dialed => session.handle.conn.peer_incarnation(),
            _ => None,
        };
        self.session = Some(session);
        self.outbox.connected();
        // The listener told its incarnation up front: writing starts now,
        // not a round trip later with its RESUME.
        if let Some(Ok(outcome)) = hello.map(|inc| self.outbox.on_hello(inc)) {
            if outcome.lost {
                tracing::debug!(peer = %self.peer.id, "peer restarted (hello)");
            }
            if !outcome.handed_back.is_empty() {
                self.hand_back(outcome.handed_back, UndeliveredReason::PeerRestarted, true);
            }
        }
        self.idle = false;
        self.next_redial = None;
        if how != OpenKind::Dialed {
            // An unconfirmed dial counts as a success once the peer's
            // RESUME shows the listener took it (`accepted`).
            self.accepted();
        }
        if self.state() != ConnState::Connected {
            if self.state() != ConnState::Connecting {
                self.set_state(ConnState::Connecting);
            }
            self.set_state(ConnState::Connected);
        }
    }

    /// The peer took the current connection: the failed-dial count and the
    /// backoff start over.
    fn accepted(&mut self) {
        self.failed_dials = 0;
        self.shared.backoff.on_success(&self.peer.id);
    }

    /// A connection the peer opened (already set up: the peer opened its
    /// stream on it). It replaces the current one only by the
    /// simultaneous-dial rule, or when the peer dialed again. A replacement
    /// loses nothing and is not a failure: the session goes on over the new
    /// connection, the state stays Connected.
    fn inbound(&mut self, session: Session) {
        if !Arc::ptr_eq(&session.recv, &self.peer.recv) {
            // Set up against a driver of this peer that retired since: its
            // reader delivers into other state. It has delivered nothing
            // (a reader waits for adoption), so the peer resends elsewhere.
            session.handle.close(CloseCode::Normal);
            return;
        }
        if let Some(current) = &self.session {
            if current.handle.conn.is_alive() {
                let keep_new = match current.handle.conn.side() {
                    // Both dialed: the rule both sides compute the same way.
                    Side::Dialer => {
                        keep_connection(&self.shared.local, &self.peer.id, Role::Listener)
                    }
                    // The peer dialed again and uses the new connection.
                    Side::Listener => true,
                };
                self.shared.sink.connection_closed(CloseKind::Duplicate);
                if !keep_new {
                    // Dropping the session stops its reader.
                    session.handle.close(CloseCode::Duplicate);
                    return;
                }
                current.handle.close(CloseCode::Duplicate);
                tracing::debug!(peer = %self.peer.id, "connection replaced");
                self.drop_session();
                self.adopt(session, OpenKind::Accepted);
                return;
            }
            self.session_lost(SessionEnd::Closed(
                current
                    .handle
                    .conn
                    .close_reason()
                    .unwrap_or(CloseReason::Lost("replaced".into())),
            ));
        }
        self.adopt(session, OpenKind::Accepted);
    }

    /// Messages wait and there is no usable session: reuse, dial, or schedule a redial.
    async fn demand(&mut self) {
        if self.session.is_some() && !self.idle {
            return;
        }
        let since = *self.down_since.get_or_insert_with(Instant::now);
        if Instant::now() >= later(since, self.shared.config.unreachable_after) {
            self.give_up();
            return;
        }
        if self.peer.addr.lock().is_none() {
            // A peer that only dialed us: wait for it to dial again, until
            // `give_up_at` (down_since + unreachable_after).
            return;
        }
        // Read before the dial, so that room freed after its refusal is
        // not missed; a wait for room from an earlier dial ends here (its
        // outcome is this dial's).
        let room = self.shared.room.seen();
        self.room_seen = None;
        // A send does not wait for the listener's acceptance: the first
        // batch leaves right behind the handshake.
        let result = self.connect(false).await;
        let deadline = later(since, self.shared.config.unreachable_after);
        match result {
            Ok(()) => {}
            Err(NetError::Limit(_)) => {
                // This manager's own limit, not the peer's failure: no
                // failed dial, no backoff. Dial again when a slot may have
                // come free (a connection closed or went idle into the
                // pool), until `give_up_at`.
                self.room_seen = Some(room);
            }
            Err(NetError::Backoff { retry_at, .. }) => {
                // Wake at the retry; `give_up_at` ends the wait if it turns too long.
                self.next_redial = Some(retry_at.min(deadline));
            }
            Err(e) if replaced(&e) => {
                // The peer's dial is the winner: wait for it, and dial again
                // only if it does not come.
                self.next_redial = self.winner_due.map(|t| t.min(deadline));
            }
            Err(e) => {
                self.failed_dials += 1;
                if self.failed_dials >= self.shared.config.max_failed_dials
                    || matches!(e, NetError::UnknownPeer(_) | NetError::Shutdown)
                {
                    self.give_up();
                } else {
                    self.next_redial = Some(self.redial_at().min(deadline));
                }
            }
        }
    }

    /// When to dial next: when the backoff allows, but never sooner than
    /// `MIN_REDIAL_DELAY` from now (no busy loop).
    fn redial_at(&self) -> Instant {
        let floor = later(Instant::now(), MIN_REDIAL_DELAY);
        self.shared
            .backoff
            .retry_at(&self.peer.id)
            .map_or(floor, |t| Instant::from_std(t).max(floor))
    }

    /// Hands back everything waiting for this peer: it stayed unreachable
    /// (or unresponsive) past `unreachable_after`, or `max_failed_dials` dials in a row failed.
    fn give_up(&mut self) {
        let reason = if self.session.is_some() || self.unresponsive {
            UndeliveredReason::Unresponsive
        } else if self.room_seen.is_some() {
            UndeliveredReason::ConnectionLimit
        } else {
            UndeliveredReason::Unreachable
        };
        self.unresponsive = false;
        self.room_seen = None;
        if self.session.is_some() {
            // Connected, yet nothing moved for that long.
            self.close_unresponsive();
        }
        self.failed_dials = 0;
        self.down_since = None;
        self.next_redial = None;
        let written = self.outbox.take_all();
        self.hand_back(written, reason, true);
        let mut msgs = self.drain_batcher();
        let mut queued = std::mem::take(&mut self.taken);
        self.peer.queue.take_into(usize::MAX, &mut queued);
        msgs.extend(queued.drain(..));
        self.hand_back(msgs, reason, false);
    }

    // -- writing ----------------------------------------------------------

    /// Writes what the session may write now: our RESUME first on a new
    /// connection, then an ACK if one is due, resends after the peer's
    /// RESUME, then new batches.
    async fn flush_ready(&mut self) -> Result<(), SessionEnd> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        if !s.resume_written {
            let taken = *self.peer.recv.taken.lock();
            let resume = Resume {
                incarnation: self.shared.incarnation,
                known: taken.incarnation,
                next: taken.next,
            };
            s.buf.clear();
            encode_resume_frame(&resume, &mut s.buf);
            s.resume_written = true;
            s.ack_written = taken.next;
            s.resume_known = taken.incarnation;
            self.write_frame().await?;
        }
        self.write_ack().await?;
        loop {
            let now = Instant::now();
            let (s, outbox) = (self.session.as_mut().expect("checked"), &mut self.outbox);
            let Some((first, msgs)) = outbox.poll_resend(now.into_std()) else {
                break;
            };
            let (n, wire) = seal_batch(s, first, msgs, &self.peer.id)?;
            self.write_frame().await?;
            self.shared.sink.batch_flushed(n, wire);
        }
        while self.outbox.may_send_new() {
            let Some(batch) = self.batcher.poll_batch() else {
                break;
            };
            let written = self.write_new(batch.into_messages()).await;
            // Also after a failed write: the next connection starts idle.
            self.batcher.write_complete();
            written?;
        }
        Ok(())
    }

    async fn write_new(&mut self, msgs: Vec<Envelope>) -> Result<(), SessionEnd> {
        let s = self
            .session
            .as_mut()
            .expect("may_send_new implies a session");
        self.peer
            .sent
            .store(true, std::sync::atomic::Ordering::Release);
        let (first, msgs) = self.outbox.send(msgs, std_now());
        let (n, wire) = seal_batch(s, first, msgs, &self.peer.id)?;
        self.write_frame().await?;
        self.shared.sink.batch_flushed(n, wire);
        Ok(())
    }

    /// Writes the frame encoded into the session's buffer (every frame goes
    /// out this way), bounded by the ack timeout, and accounts the buffer's
    /// capacity in `memory`.
    async fn write_frame(&mut self) -> Result<(), SessionEnd> {
        let limit = self.shared.config.ack_timeout;
        let sink = &*self.shared.sink;
        let s = self.session.as_mut().expect("a frame was encoded on it");
        s.account_buf(sink);
        s.writing = true;
        let written = write_bounded(&mut s.writer, &s.buf, &s.handle, limit, sink).await;
        s.writing = false;
        if s.buf.capacity() > MAX_IDLE_WRITE_BUF {
            // A burst of large batches grew it: do not keep that per connection.
            s.buf = bytes::BytesMut::new();
            s.account_buf(sink);
        }
        written
    }

    /// Acknowledges what the application took since the last ACK written on
    /// the current connection.
    async fn write_ack(&mut self) -> Result<(), SessionEnd> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        let taken = *self.peer.recv.taken.lock();
        // An ACK names messages of the incarnation the peer declared on this
        // connection; until its RESUME is processed there is nothing to say.
        if !s.resume_written || s.peer_incarnation != Some(taken.incarnation) {
            return Ok(());
        }
        let next = taken.next;
        if next <= s.ack_written {
            return Ok(());
        }
        s.ack_written = next;
        s.buf.clear();
        encode_ack_frame(next, &mut s.buf);
        self.write_frame().await
    }

    /// True if the application took messages of the peer that the current
    /// connection has not acknowledged yet, neither by an ACK nor by our
    /// RESUME, and it still can: the peer on it is the incarnation they
    /// came from, or its RESUME has not been read yet.
    fn ack_owed(&self) -> bool {
        let Some(s) = &self.session else {
            return false;
        };
        let taken = *self.peer.recv.taken.lock();
        if !s.resume_written || taken.incarnation == 0 || taken.next == 0 {
            return false;
        }
        match s.peer_incarnation {
            None => !(s.resume_known == taken.incarnation && s.ack_written >= taken.next),
            Some(p) => p == taken.incarnation && taken.next > s.ack_written,
        }
    }

    // -- reading ----------------------------------------------------------

    /// What the current connection's reader published: the peer's RESUME,
    /// its ACKs, the end of the connection.
    fn on_signals(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let signals = s.signals.clone();
        // The end first: the reader publishes it after every RESUME and ACK
        // it read, so reading it first makes the ACK read below at least as
        // new as the last one before the end. (Read last, an ACK published
        // between the two reads was lost with the connection.)
        let ended = signals.take_ended();
        let before = self.outbox.acked();
        let now = Instant::now();
        let mut done = Acked::new(self.shared.sink.clone());
        let mut on_acked = |env: Envelope| {
            done.push(env.payload.len(), now.duration_since(env.sent_at));
        };
        let mut violation = None;
        if let Some(resume) = signals.take_resume() {
            self.accepted();
            let s = self.session.as_mut().expect("checked");
            s.peer_incarnation = Some(resume.incarnation);
            if resume.incarnation != s.resume_known {
                // Our RESUME acknowledged another incarnation: nothing of
                // this one is acknowledged on this connection yet.
                s.ack_written = 0;
            }
            match self.outbox.on_resume(resume, &mut on_acked) {
                Ok(outcome) => {
                    if outcome.lost {
                        tracing::debug!(peer = %self.peer.id, "peer restarted");
                    }
                    if !outcome.handed_back.is_empty() {
                        self.hand_back(outcome.handed_back, UndeliveredReason::PeerRestarted, true);
                    }
                }
                Err(e) => violation = Some(e),
            }
        }
        let acked = signals.acked();
        let s = self.session.as_mut().expect("still there");
        if violation.is_none() && acked > s.ack_seen {
            s.ack_seen = acked;
            if let Err(e) = self.outbox.ack(acked, &mut on_acked) {
                violation = Some(e);
            }
        }
        done.flush();
        if done.count > 0 {
            let sink = &self.shared.sink;
            sink.memory(-(done.bytes as isize));
            self.peer.budget.give(done.bytes);
            sink.queued_messages(-(done.count as isize));
            if self.outbox.is_empty() && self.batcher.pending_messages() == 0 {
                // Everything written is acknowledged: nothing in flight.
                self.trim_queue();
            }
        }
        if self.outbox.acked() > before || (self.outbox.synced() && self.outbox.is_empty()) {
            // Progress: the peer is reachable and acknowledging.
            self.down_since = None;
            self.unresponsive = false;
        }
        if let Some(e) = violation {
            self.shared.sink.error(ErrorKind::Sequence);
            tracing::warn!(peer = %self.peer.id, error = %e, "closing connection: protocol violation");
            if let Some(s) = &self.session {
                s.handle.close(CloseCode::Protocol);
            }
            self.session_lost(SessionEnd::Protocol(e.to_string()));
            return;
        }
        if let Some(end) = ended {
            self.session_lost(end);
        }
    }

    /// When the peer owes an ACK, or its RESUME on a new connection.
    fn ack_due(&self) -> Option<Instant> {
        let ack_timeout = self.shared.config.ack_timeout;
        self.outbox
            .ack_deadline(ack_timeout)
            .map(Instant::from_std)
            .or_else(|| {
                let s = self.session.as_ref()?;
                (!self.outbox.synced()).then(|| later(s.adopted_at, ack_timeout))
            })
    }

    fn unresponsive(&mut self) {
        let due = self.ack_due();
        if due.is_none_or(|t| Instant::now() < t) {
            return;
        }
        self.shared.sink.error(ErrorKind::AckTimeout);
        self.unresponsive = true;
        self.close_unresponsive();
    }

    /// Closes the current connection with code 5 (the peer does not
    /// acknowledge); the session goes on.
    fn close_unresponsive(&mut self) {
        let Some(s) = &self.session else {
            return;
        };
        s.handle.close(CloseCode::Unresponsive);
        self.shared.sink.connection_closed(CloseKind::Unresponsive);
        self.session_lost(SessionEnd::Closed(unresponsive_reason()));
    }

    /// Lets go of the current connection without touching the session.
    fn drop_session(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        self.shared.sink.memory(-(session.buf_accounted as isize));
        // Closing is idempotent: the first reason stands. This releases the
        // peer at once instead of when the last handle is dropped.
        session.handle.close(CloseCode::Normal);
        // Only this driver parks sessions of this peer, so its pool entry, if any, is this session.
        self.shared.pool.remove(&self.peer.id);
        self.outbox.connection_lost();
    }

    /// The connection is gone. The session is not: what it had written stays
    /// in the window, to be resent on the next connection (a redial, or the
    /// peer's), and is handed back only if none comes in time.
    fn session_lost(&mut self, end: SessionEnd) {
        let Some(current) = &self.session else {
            return;
        };
        // A connection we dialed that ended before the peer's RESUME: the
        // listener refused it, or never answered on it.
        let unanswered_dial =
            current.peer_incarnation.is_none() && current.handle.conn.side() == Side::Dialer;
        match &end {
            SessionEnd::Closed(CloseReason::Remote { code, .. })
                if *code == CloseCode::Duplicate as u32 =>
            {
                self.shared.sink.connection_closed(CloseKind::Duplicate)
            }
            SessionEnd::Closed(CloseReason::Remote { .. }) | SessionEnd::Finished => {
                self.shared.sink.connection_closed(CloseKind::Remote)
            }
            SessionEnd::Closed(CloseReason::Local { .. }) => {}
            SessionEnd::Closed(_) => self.shared.sink.connection_closed(CloseKind::Error),
            SessionEnd::Protocol(_) => self.shared.sink.connection_closed(CloseKind::Error),
        }
        tracing::debug!(peer = %self.peer.id, ?end, "connection ended");
        self.drop_session();
        let was_idle = std::mem::replace(&mut self.idle, false);
        let remote_code = match &end {
            SessionEnd::Closed(CloseReason::Remote { code, .. }) => Some(*code),
            _ => None,
        };
        let duplicate = remote_code == Some(CloseCode::Duplicate as u32);
        // The peer closed on purpose (shut down, expired or evicted an idle
        // connection): a disconnect, not a failure.
        let orderly = [
            CloseCode::Normal,
            CloseCode::Shutdown,
            CloseCode::Expired,
            CloseCode::Evicted,
        ]
        .iter()
        .any(|c| remote_code == Some(*c as u32))
            || matches!(end, SessionEnd::Finished);
        let pending = !self.outbox.is_empty() || self.batcher.pending_messages() > 0;
        if !was_idle && self.state() == ConnState::Connected {
            if orderly {
                self.set_state(ConnState::Disconnected);
            } else if duplicate {
                // The peer kept the other connection of a simultaneous dial;
                // it arrives as inbound, and the state stays Connected unless
                // it does not come within the connect timeout.
                self.winner_due = Some(later(Instant::now(), self.shared.config.connect_timeout));
            } else {
                self.set_state(ConnState::Failed);
                self.shared.backoff.on_failure(self.peer.id, std_now());
            }
        }
        let local = matches!(
            end,
            SessionEnd::Closed(CloseReason::Local { .. } | CloseReason::EndpointClosed)
        );
        if unanswered_dial && !orderly && !duplicate && !local {
            // A dial the listener did not take counts as a failed dial, as
            // a refusal during `dial` would.
            self.shared.sink.error(ErrorKind::DialFailed);
            self.failed_dials += 1;
            if pending && self.failed_dials >= self.shared.config.max_failed_dials {
                self.give_up();
                return;
            }
        }
        if pending {
            self.down_since.get_or_insert_with(Instant::now);
            if self.next_redial.is_none() {
                self.next_redial = Some(self.redial_at());
            }
        }
    }

    fn drain_batcher(&mut self) -> Vec<Envelope> {
        let mut out = Vec::new();
        while let Some(b) = self.batcher.poll_batch() {
            out.extend(b.into_messages());
            self.batcher.write_complete();
        }
        if let Some(b) = self.batcher.flush() {
            out.extend(b.into_messages());
        }
        self.batcher.write_complete();
        out
    }

    fn hand_back(&self, msgs: Vec<Envelope>, reason: UndeliveredReason, maybe_delivered: bool) {
        if msgs.is_empty() {
            return;
        }
        let mut bytes = 0usize;
        let messages: Vec<Bytes> = msgs
            .into_iter()
            .map(|e| {
                bytes += e.payload.len();
                self.shared.sink.message_undelivered(e.payload.len());
                e.payload
            })
            .collect();
        self.shared.sink.memory(-(bytes as isize));
        self.peer.budget.give(bytes);
        self.shared.sink.queued_messages(-(messages.len() as isize));
        tracing::debug!(peer = %self.peer.id, n = messages.len(), %reason, "handing back undelivered messages");
        self.shared.emit(Event::Undelivered {
            peer: self.peer.id,
            messages,
            reason,
            maybe_delivered,
        });
    }

    // -- shutdown ---------------------------------------------------------

    async fn shutdown(&mut self, deadline: Instant) {
        // As in `retire`: everything that entered the queue.
        for env in self.peer.queue.close() {
            self.take(env);
        }
        let flushed = async {
            // Everything goes out: what the batcher holds, and the window
            // once the peer's RESUME allows the resend. A connection that
            // replaces the current one meanwhile (a simultaneous dial's
            // winner) carries on.
            loop {
                if self.session.is_none() {
                    let waiting = !self.outbox.is_empty() || self.batcher.pending_messages() > 0;
                    if !waiting {
                        return;
                    }
                    // Messages wait for a connection: dial (unless a
                    // simultaneous dial's winner is on its way, or the peer
                    // only ever dialed us), and take the peer's if it comes.
                    let mut retry = None;
                    if self.winner_due.is_none() && self.peer.addr.lock().is_some() {
                        match self.connect(false).await {
                            Ok(()) => continue,
                            Err(NetError::Backoff { retry_at, .. }) => {
                                retry = Some(retry_at);
                            }
                            Err(_) => {
                                retry = self
                                    .shared
                                    .backoff
                                    .retry_at(&self.peer.id)
                                    .map(Instant::from_std);
                            }
                        }
                    }
                    tokio::select! {
                        ctl = self.peer.ctl.recv() => match ctl {
                            Some(Ctl::Inbound(session)) => self.inbound(*session),
                            Some(_) => {}
                            None => return,
                        },
                        () = sleep_until(retry) => {}
                    }
                    continue;
                }
                // A connection that fails now is lost like any other; the
                // loop then redials or waits for the peer's.
                if let Err(end) = self.flush_ready().await {
                    self.session_lost(end);
                    continue;
                }
                if self.outbox.may_send_new() {
                    if let Some(b) = self.batcher.flush() {
                        let written = self.write_new(b.into_messages()).await;
                        self.batcher.write_complete();
                        if let Err(end) = written {
                            self.session_lost(end);
                        }
                        continue;
                    }
                }
                // Done once our messages are acknowledged and what the
                // application took is acknowledged on this connection (an
                // ACK waits for the peer's RESUME here, so wait for it too).
                if self.outbox.is_empty()
                    && self.batcher.pending_messages() == 0
                    && !self.ack_owed()
                {
                    return;
                }
                // The peer's frames, the application taking messages (their
                // ACK goes out at the top of the loop), or a replacement.
                tokio::select! {
                    () = signalled(signals_of(&self.session)) => self.on_signals(),
                    () = self.peer.recv.wake.notified() => {}
                    ctl = self.peer.ctl.recv() => {
                        if let Some(Ctl::Inbound(session)) = ctl {
                            self.inbound(*session);
                        }
                    }
                }
            }
        };
        // Past the deadline what is left goes back (below).
        let _ = tokio::time::timeout_at(deadline, flushed).await;
        if self.session.is_some() {
            // A write cut off by the deadline left part of a frame on the
            // stream: nothing more may follow it, so close at once.
            let cut_off = self.session.as_ref().is_some_and(|s| s.writing);
            if !cut_off {
                // Acknowledge what the application took, within the deadline.
                if let Ok(Err(end)) = tokio::time::timeout_at(deadline, self.write_ack()).await {
                    self.session_lost(end);
                }
            }
            if let Some(s) = self.session.as_mut().filter(|s| !s.writing) {
                // Finish our direction so the peer reads our last frames (acks
                // included) to the end, then give it until the deadline, at
                // most SHUTDOWN_LINGER, to close the connection itself; a close
                // from us would discard what it has not read yet.
                let linger = deadline.min(Instant::now() + SHUTDOWN_LINGER);
                if tokio::time::timeout_at(linger, s.writer.shutdown())
                    .await
                    .is_ok()
                {
                    let conn = s.handle.conn.clone();
                    let _ = tokio::time::timeout_at(linger, conn.closed()).await;
                }
                s.handle.close(CloseCode::Shutdown);
                self.shared.sink.connection_closed(CloseKind::Shutdown);
                // Stop the reader and wait until it has let go of its buffers.
                s.reader.abort();
                let _ = (&mut s.reader).await;
            } else if let Some(s) = &self.session {
                s.handle.close(CloseCode::Shutdown);
                self.shared.sink.connection_closed(CloseKind::Shutdown);
            }
            if self.state() == ConnState::Connected {
                self.set_state(ConnState::Disconnected);
            }
            self.drop_session();
        }
        let written = self.outbox.take_all();
        self.hand_back(written, UndeliveredReason::Shutdown, true);
        let rest = self.drain_batcher();
        self.hand_back(rest, UndeliveredReason::Shutdown, false);
        self.next_redial = None;
    }
}

/// Encodes and seals one batch into the session's buffer. Returns the
/// message count and the frame length.
fn seal_batch(
    s: &mut Session,
    first: u64,
    msgs: &[Envelope],
    peer: &PeerId,
) -> Result<(usize, usize), SessionEnd> {
    let seq = s.next_seq;
    s.buf.clear();
    let spans = encode_batch_frame(seq, first, msgs, &mut s.buf);
    let (head, rest) = s.buf.split_at_mut(spans.body.start);
    let (body, tag) = rest.split_at_mut(spans.body.len());
    match s.sealer.seal_in_place(seq, &head[spans.aad.clone()], body) {
        Ok(t) => tag[..t.len()].copy_from_slice(&t),
        Err(e) => {
            // The sequence is exhausted (2^64 batches): a new connection gets
            // new keys; the window is resent there.
            tracing::warn!(%peer, error = %e, "sealing refused");
            s.handle.close(CloseCode::Normal);
            return Err(SessionEnd::Protocol(e.to_string()));
        }
    }
    s.next_seq += 1;
    s.handle.mark_carried();
    Ok((msgs.len(), s.buf.len()))
}

/// Writes `bytes` to the session's stream. A peer that does not drain our
/// stream within `limit` (the ack timeout) is unresponsive: the connection is
/// closed, so a blocked write can never hold the driver (and its commands,
/// its shutdown) for longer than that.
async fn write_bounded(
    writer: &mut qudag_transport::SendStream,
    bytes: &[u8],
    handle: &session::SessionHandle,
    limit: std::time::Duration,
    sink: &dyn qudag_metrics::MetricsSink,
) -> Result<(), SessionEnd> {
    match tokio::time::timeout(limit, writer.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SessionEnd::Closed(
            handle
                .conn
                .close_reason()
                .unwrap_or_else(|| CloseReason::Lost("write failed".into())),
        )),
        Err(_) => {
            sink.error(ErrorKind::AckTimeout);
            sink.connection_closed(CloseKind::Unresponsive);
            handle.close(CloseCode::Unresponsive);
            Err(SessionEnd::Closed(unresponsive_reason()))
        }
    }
}

/// How a connection closed for not acknowledging is reported locally.
fn unresponsive_reason() -> CloseReason {
    CloseReason::Local {
        code: CloseCode::Unresponsive as u32,
        reason: Bytes::from_static(CloseCode::Unresponsive.reason()),
    }
}

/// Whether `e` is our dial closed by the peer as the loser of a
/// simultaneous dial (close code `Duplicate`): the peer's own dial wins.
fn replaced(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Transport(TransportError::Closed {
            reason: CloseReason::Remote { code, .. },
            ..
        }) if *code == CloseCode::Duplicate as u32
    )
}

pub(crate) fn error_kind(e: &NetError) -> ErrorKind {
    use qudag_transport::TransportError as T;
    match e {
        NetError::Transport(T::PeerIdMismatch { .. }) => ErrorKind::PeerIdMismatch,
        NetError::Transport(T::Refused { .. } | T::Denied { .. } | T::NotAllowed { .. }) => {
            ErrorKind::Refused
        }
        NetError::Transport(T::HandshakeTimeout { .. } | T::Handshake { .. }) => {
            ErrorKind::HandshakeFailed
        }
        NetError::Transport(T::Unreachable { .. }) => ErrorKind::DialFailed,
        NetError::Transport(_) => ErrorKind::Transport,
        NetError::Limit(LimitError::Connections { .. } | LimitError::PendingDials { .. }) => {
            ErrorKind::LimitReached
        }
        NetError::Limit(_) => ErrorKind::LimitReached,
        NetError::Backoff { .. } => ErrorKind::Backoff,
        NetError::ConnectTimeout { .. } => ErrorKind::HandshakeFailed,
        _ => ErrorKind::Other,
    }
}

impl Shared {
    /// What a new session's reader needs; `Shutdown` once the manager has
    /// closed the application's `Incoming` stream.
    pub(crate) fn reader_ctx(
        &self,
        peer: PeerId,
        recv: Arc<RecvState>,
    ) -> Result<ReaderCtx, NetError> {
        let incoming = self.incoming_tx.lock().clone().ok_or(NetError::Shutdown)?;
        Ok(ReaderCtx {
            peer,
            limits: self.codec_limits.clone(),
            incoming,
            incoming_budget: self.incoming_budget.clone(),
            frame_timeout: self.config.ack_timeout,
            sink: self.sink.clone(),
            recv,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queues hold commands and envelopes inline: a queue that grows
    /// to a burst keeps room for that many until the driver trims it.
    #[test]
    fn per_peer_queue_slots_stay_small() {
        assert!(
            std::mem::size_of::<Ctl>() <= 32,
            "Ctl is {} bytes",
            std::mem::size_of::<Ctl>()
        );
        assert!(
            std::mem::size_of::<Envelope>() <= 48,
            "Envelope is {} bytes",
            std::mem::size_of::<Envelope>()
        );
    }
}

#[cfg(test)]
mod ctl_queue_tests {
    use super::*;

    fn disconnect() -> (Ctl, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Ctl::Disconnect(tx), rx)
    }

    fn answer(ctl: Option<Ctl>) {
        match ctl {
            Some(Ctl::Disconnect(reply)) => reply.send(()).expect("caller waits"),
            _ => panic!("expected a Disconnect"),
        }
    }

    /// In order; a receive cancelled after its wake-up loses nothing; after
    /// `close_and_take` new commands come back, the queued ones are
    /// returned in order, and `recv` says `None`.
    #[tokio::test]
    async fn commands_arrive_in_order_and_close_refuses_new_ones() {
        let q = CtlQueue::default();
        let (a, mut ra) = disconnect();
        let (b, mut rb) = disconnect();
        assert!(q.send(a).is_ok());
        assert!(q.send(b).is_ok());
        answer(q.recv().await);
        assert_eq!(ra.try_recv(), Ok(()));
        // Woken (a permit is stored) but dropped before it is polled again.
        let pending = q.recv();
        drop(pending);
        let left = q.close_and_take();
        let (c, _rc) = disconnect();
        assert!(matches!(q.send(c), Err(Ctl::Disconnect(_))));
        assert_eq!(left.len(), 1);
        answer(left.into_iter().next());
        assert_eq!(rb.try_recv(), Ok(()));
        assert!(q.recv().await.is_none());
    }

    /// A receiver waiting on an empty queue is woken by a later send.
    #[tokio::test]
    async fn a_waiting_receiver_is_woken() {
        let q = Arc::new(CtlQueue::default());
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.recv().await.is_some() }
        });
        tokio::task::yield_now().await;
        let (a, _ra) = disconnect();
        assert!(q.send(a).is_ok());
        assert!(waiter.await.expect("task"));
    }

    /// Clearing drops what is queued: a caller waiting for a reply hears
    /// that nobody will answer, instead of waiting forever.
    #[tokio::test]
    async fn clear_drops_queued_commands() {
        let q = CtlQueue::default();
        let (a, ra) = disconnect();
        assert!(q.send(a).is_ok());
        q.close_and_clear();
        assert!(ra.await.is_err(), "the reply sender was dropped");
        let (b, _rb) = disconnect();
        assert!(q.send(b).is_err());
        assert!(q.recv().await.is_none());
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::{ConnectionManager, ManagerConfig, MemoryNetwork};

    /// Every known peer's task holds this future for as long as the peer
    /// is known (docs/ARCHITECTURE.md, "idle cost"): 1,272 bytes with rustc
    /// 1.95; 1,880 as an `async fn`; the bound
    /// leaves room for compiler versions, not for a second copy of the
    /// driver or a timer per deadline.
    #[tokio::test]
    async fn the_driver_task_stays_small() {
        let net = MemoryNetwork::new();
        let t = Arc::new(net.bind(PeerId::from_bytes([1; 32])));
        let m = ConnectionManager::new(ManagerConfig::default(), t).unwrap();
        let (_peer, driver) = Driver::new(m.shared(), PeerId::from_bytes([2; 32]), None, None);
        let run = driver.run();
        let size = std::mem::size_of_val(&run);
        assert!(size <= 1_536, "Driver::run is {size} bytes");
        m.shutdown(std::time::Duration::ZERO).await;
    }
}
