//! What the manager tells the application: received messages ([`Incoming`])
//! and everything else ([`Events`]).

use std::sync::Arc;

use bytes::Bytes;
use qudag_crypto::PeerId;
use qudag_pool::ConnState;
use tokio::sync::mpsc;

use crate::session::{Delivery, Held, Receipt};
use crate::UndeliveredReason;

/// Something that happened to a peer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A peer's connection changed state.
    StateChanged {
        /// The peer.
        peer: PeerId,
        /// The state before.
        from: ConnState,
        /// The state after.
        to: ConnState,
    },
    /// Messages that `send` accepted and that were not acknowledged by the
    /// peer, handed back in the order they were sent.
    Undelivered {
        /// The peer they were sent to.
        peer: PeerId,
        /// The messages, in send order.
        messages: Vec<Bytes>,
        /// Why they came back.
        reason: UndeliveredReason,
        /// True if some of them were written to the connection before it
        /// failed, so the peer may have received them (its acknowledgement
        /// was lost). False means none of them reached the peer.
        maybe_delivered: bool,
    },
    /// State changes were dropped because
    /// [`event_capacity`](crate::ManagerConfig::event_capacity) of them
    /// waited unread (see [`Events`], "Overflow"). It comes before the events
    /// still queued; the state changes among them are newer than the ones
    /// dropped. Never stands for an [`Undelivered`](Event::Undelivered),
    /// which is never dropped.
    Lagged {
        /// How many state changes were dropped.
        missed: u64,
    },
}

/// The stream of [`Event`]s, taken once with
/// [`ConnectionManager::events`](crate::ConnectionManager::events).
///
/// # Overflow
///
/// State changes are bounded: when
/// [`event_capacity`](crate::ManagerConfig::event_capacity) of them wait
/// unread, the oldest waiting one is dropped for each new one, and the next
/// [`recv`](Events::recv) returns [`Event::Lagged`] with how many were
/// dropped, before the events still queued. The state changes after it are
/// newer than the ones dropped; an [`Event::Undelivered`] after it may be
/// older. A peer that connects and
/// leaves in a loop therefore cannot grow this queue, and an application
/// that never reads it loses only old state changes. [`Event::Undelivered`]
/// is never dropped: it carries messages `send` accepted, and the contract
/// says each comes back or arrives.
#[derive(Debug)]
pub struct Events {
    pub(crate) queue: Arc<EventQueue>,
}

impl Events {
    /// The next event; `None` once the manager is shut down and every event was read.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            let notified = self.queue.notify.notified();
            if let Some(next) = self.queue.pop() {
                return next;
            }
            notified.await;
        }
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.queue.pop().flatten()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        // Nobody will read: stop queueing, and let go of what waits.
        let mut q = self.queue.inner.lock();
        q.receiver_gone = true;
        q.events.clear();
        q.states = 0;
    }
}

/// The queue behind [`Events`]: bounded for state changes, unbounded for
/// handed-back messages (see "Overflow" there).
#[derive(Debug)]
pub(crate) struct EventQueue {
    inner: parking_lot::Mutex<QueueInner>,
    notify: tokio::sync::Notify,
    state_capacity: usize,
}

#[derive(Debug, Default)]
struct QueueInner {
    events: std::collections::VecDeque<Event>,
    /// `StateChanged` events in `events`.
    states: usize,
    /// State changes dropped since the last `Lagged` was handed out.
    dropped: u64,
    closed: bool,
    receiver_gone: bool,
}

impl EventQueue {
    pub(crate) fn new(state_capacity: usize) -> Arc<Self> {
        Arc::new(EventQueue {
            inner: parking_lot::Mutex::new(QueueInner::default()),
            notify: tokio::sync::Notify::new(),
            state_capacity: state_capacity.max(1),
        })
    }

    /// Queues `event`, dropping the oldest waiting state change if state
    /// changes are at capacity. Nothing is queued once closed or unread.
    pub(crate) fn push(&self, event: Event) {
        let mut q = self.inner.lock();
        if q.closed || q.receiver_gone {
            return;
        }
        if matches!(event, Event::StateChanged { .. }) {
            if q.states >= self.state_capacity {
                if let Some(i) = q
                    .events
                    .iter()
                    .position(|e| matches!(e, Event::StateChanged { .. }))
                {
                    q.events.remove(i);
                    q.states -= 1;
                    q.dropped += 1;
                }
            }
            q.states += 1;
        }
        q.events.push_back(event);
        drop(q);
        self.notify.notify_one();
    }

    /// No more events: `recv` ends once the queue is read.
    pub(crate) fn close(&self) {
        self.inner.lock().closed = true;
        self.notify.notify_one();
    }

    /// `Some(Some(event))`: the next one; `Some(None)`: closed and empty
    /// (the stream ended); `None`: nothing yet.
    fn pop(&self) -> Option<Option<Event>> {
        let mut q = self.inner.lock();
        if q.dropped > 0 {
            let missed = std::mem::take(&mut q.dropped);
            return Some(Some(Event::Lagged { missed }));
        }
        match q.events.pop_front() {
            Some(e) => {
                if matches!(e, Event::StateChanged { .. }) {
                    q.states -= 1;
                }
                Some(Some(e))
            }
            None if q.closed => Some(None),
            None => None,
        }
    }
}

/// Received messages, in order per peer, taken once with
/// [`ConnectionManager::incoming`](crate::ConnectionManager::incoming).
///
/// Messages arrive a batch at a time and are handed out one at a time, so
/// the per-message cost is a slice hand-off, not a channel operation.
///
/// A batch is acknowledged to its sender when the application has taken
/// its last message from here: "delivered" means returned by
/// [`recv`](Incoming::recv), [`try_recv`](Incoming::try_recv) or
/// [`recv_batch`](Incoming::recv_batch). Messages still queued here when
/// `Incoming` is dropped are not acknowledged, and their sender hands them
/// back (marked maybe delivered).
///
/// Dropped, it gives back everything it holds: unread messages leave the
/// `memory` gauge with the deliveries that carry them. A delivery that a
/// reader sends after the drop, through a slot it reserved before, leaves
/// it when the channel goes (once the manager and its readers let go).
pub struct Incoming {
    pub(crate) rx: mpsc::Receiver<Delivery>,
    pub(crate) current: Option<Current>,
}

/// The batch being handed out.
pub(crate) struct Current {
    peer: PeerId,
    rest: std::vec::IntoIter<Bytes>,
    receipt: Option<Receipt>,
    /// The bytes of `rest` in the `memory` gauge.
    held: Held,
}

impl Current {
    fn new(d: Delivery) -> Self {
        Current {
            peer: d.peer,
            rest: d.messages.into_iter(),
            receipt: Some(d.receipt),
            held: d.held,
        }
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl Incoming {
    /// The next received message and its sender; `None` once the manager is
    /// shut down and everything received was read.
    pub async fn recv(&mut self) -> Option<(PeerId, Bytes)> {
        loop {
            if let Some(m) = self.take_buffered() {
                return Some(m);
            }
            self.current = Some(Current::new(self.rx.recv().await?));
        }
    }

    /// The next received message if one is ready.
    pub fn try_recv(&mut self) -> Option<(PeerId, Bytes)> {
        loop {
            if let Some(m) = self.take_buffered() {
                return Some(m);
            }
            self.current = Some(Current::new(self.rx.try_recv().ok()?));
        }
    }

    /// The rest of the current batch and the next one, as a whole: for
    /// applications that process messages in bulk.
    pub async fn recv_batch(&mut self) -> Option<(PeerId, Vec<Bytes>)> {
        if let Some(mut cur) = self.current.take() {
            let rest: Vec<Bytes> = cur.rest.by_ref().collect();
            // Out of the gauge before the receipt lets the sender go on.
            drop(cur.held);
            if let Some(r) = cur.receipt.take() {
                r.delivered();
            }
            if !rest.is_empty() {
                return Some((cur.peer, rest));
            }
        }
        let Delivery {
            peer,
            messages,
            receipt,
            held,
        } = self.rx.recv().await?;
        drop(held);
        receipt.delivered();
        Some((peer, messages))
    }

    fn take_buffered(&mut self) -> Option<(PeerId, Bytes)> {
        let cur = self.current.as_mut()?;
        let Some(msg) = cur.rest.next() else {
            self.current = None;
            return None;
        };
        cur.held.release(msg.len());
        let peer = cur.peer;
        if cur.rest.len() == 0 {
            // The application has the whole batch: acknowledge it now.
            if let Some(r) = cur.receipt.take() {
                r.delivered();
            }
            self.current = None;
        }
        Some((peer, msg))
    }
}

#[cfg(test)]
mod incoming_tests {
    use super::*;
    use crate::session::RecvState;
    use qudag_metrics::Metrics;
    use tokio::sync::Semaphore;

    /// What a reader hands over: `sizes` messages, counted in `sink`'s
    /// memory gauge and in `budget`.
    fn delivery(sink: &Arc<Metrics>, budget: &Arc<Semaphore>, sizes: &[usize]) -> Delivery {
        let bytes: usize = sizes.iter().sum();
        let permit = budget
            .clone()
            .try_acquire_many_owned(bytes as u32)
            .expect("budget");
        Delivery {
            peer: PeerId::from_bytes([7; 32]),
            messages: sizes.iter().map(|&n| Bytes::from(vec![1u8; n])).collect(),
            receipt: Receipt::for_test(RecvState::new(), sizes.len() as u64, permit),
            held: Held::new(sink.clone(), bytes),
        }
    }

    fn memory(sink: &Metrics) -> i64 {
        sink.snapshot(std::time::Instant::now()).memory_bytes
    }

    const BUDGET: usize = 1 << 20;

    fn setup() -> (
        Arc<Metrics>,
        Arc<Semaphore>,
        mpsc::Sender<Delivery>,
        Incoming,
    ) {
        let (tx, rx) = mpsc::channel(4);
        let incoming = Incoming { rx, current: None };
        (
            Arc::new(Metrics::new()),
            Arc::new(Semaphore::new(BUDGET)),
            tx,
            incoming,
        )
    }

    /// A reader reserved a slot, `Incoming` was dropped, then the delivery
    /// went through the slot: it sits in the channel until the last sender
    /// goes, and its bytes must leave the gauge then (they stayed, before).
    #[tokio::test]
    async fn a_delivery_sent_after_incoming_dropped_leaves_the_gauge() {
        let (sink, budget, tx, incoming) = setup();
        let slot = tx.try_reserve().expect("room");
        drop(incoming);
        slot.send(delivery(&sink, &budget, &[100, 28]));
        assert_eq!(memory(&sink), 128, "held while it sits in the channel");
        drop(tx);
        assert_eq!(memory(&sink), 0);
        assert_eq!(budget.available_permits(), BUDGET);
    }

    /// Unread messages, in the batch being handed out and in the channel,
    /// leave the gauge when `Incoming` is dropped; read ones left it when
    /// they were taken.
    #[tokio::test]
    async fn dropping_incoming_gives_back_what_was_not_read() {
        let (sink, budget, tx, mut incoming) = setup();
        tx.try_send(delivery(&sink, &budget, &[10, 20, 30]))
            .ok()
            .unwrap();
        tx.try_send(delivery(&sink, &budget, &[40])).ok().unwrap();
        assert_eq!(memory(&sink), 100);
        let (_, first) = incoming.recv().await.expect("a message");
        assert_eq!(first.len(), 10);
        assert_eq!(memory(&sink), 90);
        drop(incoming);
        assert_eq!(memory(&sink), 0);
        assert_eq!(budget.available_permits(), BUDGET);
    }

    /// `recv_batch` hands out the rest of the current batch, then whole
    /// batches, each out of the gauge as it is handed out.
    #[tokio::test]
    async fn recv_batch_takes_messages_out_of_the_gauge() {
        let (sink, budget, tx, mut incoming) = setup();
        tx.try_send(delivery(&sink, &budget, &[1, 2, 3]))
            .ok()
            .unwrap();
        tx.try_send(delivery(&sink, &budget, &[4, 5])).ok().unwrap();
        assert_eq!(incoming.try_recv().map(|(_, m)| m.len()), Some(1));
        assert_eq!(memory(&sink), 14);
        let (_, rest) = incoming.recv_batch().await.expect("the rest");
        assert_eq!(rest.iter().map(Bytes::len).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(memory(&sink), 9);
        let (_, next) = incoming.recv_batch().await.expect("the next batch");
        assert_eq!(next.len(), 2);
        assert_eq!(memory(&sink), 0);
        drop(incoming);
        assert_eq!(memory(&sink), 0);
    }
}
