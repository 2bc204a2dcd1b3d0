//! What the manager tells the application: received messages ([`Incoming`])
//! and everything else ([`Events`]).

use std::sync::Arc;

use bytes::Bytes;
use qudag_crypto::PeerId;
use qudag_metrics::MetricsSink;
use qudag_pool::ConnState;
use tokio::sync::mpsc;

use crate::session::{Delivery, Receipt};
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
}

/// The stream of [`Event`]s, taken once with
/// [`ConnectionManager::events`](crate::ConnectionManager::events).
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` once the manager is shut down and every event was read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
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
pub struct Incoming {
    pub(crate) rx: mpsc::Receiver<Delivery>,
    pub(crate) current: Option<Current>,
    pub(crate) sink: Arc<dyn MetricsSink>,
}

/// The batch being handed out.
pub(crate) struct Current {
    peer: PeerId,
    rest: std::vec::IntoIter<Bytes>,
    receipt: Option<Receipt>,
}

impl Current {
    fn new(d: Delivery) -> Self {
        Current {
            peer: d.peer,
            rest: d.messages.into_iter(),
            receipt: Some(d.receipt),
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
            if let Some(r) = cur.receipt.take() {
                r.delivered();
            }
            if !rest.is_empty() {
                self.release(&rest);
                return Some((cur.peer, rest));
            }
        }
        let d = self.rx.recv().await?;
        self.release(&d.messages);
        d.receipt.delivered();
        Some((d.peer, d.messages))
    }

    fn take_buffered(&mut self) -> Option<(PeerId, Bytes)> {
        let cur = self.current.as_mut()?;
        let Some(msg) = cur.rest.next() else {
            self.current = None;
            return None;
        };
        self.sink.memory(-(msg.len() as isize));
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

    fn release(&self, batch: &[Bytes]) {
        let bytes: usize = batch.iter().map(Bytes::len).sum();
        self.sink.memory(-(bytes as isize));
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Unread messages are released, not acknowledged.
        if let Some(cur) = self.current.take() {
            let bytes: usize = cur.rest.map(|m| m.len()).sum();
            self.sink.memory(-(bytes as isize));
        }
        self.rx.close();
        while let Ok(d) = self.rx.try_recv() {
            self.release(&d.messages);
        }
    }
}
