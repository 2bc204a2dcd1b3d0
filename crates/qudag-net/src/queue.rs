//! [`MsgQueue`]: a peer's send queue, from `send` (many producers) to the
//! peer's driver (the only consumer).
//!
//! Why not a tokio bounded channel: tokio allocates a channel's first block
//! of 32 slots when the channel is made (1.5 KiB of envelopes for every
//! peer, idle or not) and costs a slot write, a semaphore operation and a
//! waker check per message on both sides. This queue allocates nothing until
//! the first message, and the driver takes everything queued (up to what it
//! may take) under one lock, giving the slots back with one semaphore call.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio::time::Instant;

/// A bounded FIFO of `T` with async waiting for room (senders) and for items
/// (the driver).
///
/// Capacity is counted in free slots (a FIFO-fair semaphore): a sender takes
/// one per item before it pushes, the driver gives them back as it takes
/// items out. Once [`close`](Self::close)d, pushes fail and hand the item
/// back, so whoever closes the queue gets every item that ever entered it.
#[derive(Debug)]
pub(crate) struct MsgQueue<T> {
    state: Mutex<State<T>>,
    slots: Semaphore,
    capacity: usize,
    /// Wakes the driver when the queue goes from empty to non-empty (a
    /// stored permit if it is not waiting: no lost wake-up), or closes.
    ready: Notify,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// The coarse clock of [`MsgQueue::try_push_stamped`]: the clock read
    /// of the first stamped push since the queue was empty or the consumer
    /// last took; `None` until then.
    stamp: Option<Instant>,
}

/// Why [`MsgQueue::try_push`] handed an item back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryPushError<T> {
    /// Every slot is taken.
    Full(T),
    /// The queue is closed.
    Closed(T),
}

/// The queue is closed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Closed;

/// The queue's coarse clock, as a push under the lock sees it; read only
/// by the pushes that want a time stamp.
struct Stamp<'a> {
    slot: &'a mut Option<Instant>,
    /// The queue was empty: the last reading is not this burst's.
    fresh: bool,
}

impl Stamp<'_> {
    /// The reading shared since the consumer's last take, or a new one.
    fn read(self) -> Instant {
        match *self.slot {
            Some(at) if !self.fresh => at,
            _ => *self.slot.insert(Instant::now()),
        }
    }
}

impl<T> MsgQueue<T> {
    /// An empty queue of `capacity` slots (at least 1, at most
    /// [`MAX_CAPACITY`](crate::MAX_CAPACITY), which the config enforces).
    pub(crate) fn new(capacity: usize) -> Self {
        MsgQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
                stamp: None,
            }),
            slots: Semaphore::new(capacity),
            capacity,
            ready: Notify::new(),
        }
    }

    /// The number of slots.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues `item`, waiting for a free slot; hands it back if the queue
    /// is (or gets) closed. Cancel-safe: until it returns, nothing is queued.
    pub(crate) async fn push(&self, item: T) -> Result<(), T> {
        let permit = match self.slots.try_acquire() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return Err(item),
            Err(TryAcquireError::NoPermits) => match self.slots.acquire().await {
                Ok(p) => p,
                Err(_) => return Err(item),
            },
        };
        // The slot now belongs to the item; the driver gives it back.
        permit.forget();
        self.put(item)
    }

    /// True if a slot is free now, or the queue is closed (a push would
    /// not wait, it would fail at once): a hint (another sender may take
    /// the slot first), for callers that would otherwise undo work when the
    /// push fails.
    pub(crate) fn has_room(&self) -> bool {
        self.slots.available_permits() > 0 || self.slots.is_closed()
    }

    /// Queues `item` if a slot is free.
    pub(crate) fn try_push(&self, item: T) -> Result<(), TryPushError<T>> {
        self.try_put_with(item, |item, _| item)
    }

    /// [`try_push`](Self::try_push) for an item that carries the time it
    /// was pushed: `make` builds it from `part` and a stamp read from the
    /// queue's coarse clock. That is the clock read by the first stamped
    /// push since the queue was empty or the consumer last took, shared by
    /// the pushes after it until the consumer's next take: under load one
    /// clock read per take (a batch) instead of one per item, and at light
    /// load (an empty queue) a read per item. A stamp is never later than
    /// its push. It is earlier by at most the time since the consumer's
    /// last take: one batch interval while the consumer keeps up, as long
    /// as the consumer stalls otherwise (for at most
    /// [`capacity`](Self::capacity) items, since later pushes wait for a
    /// slot).
    pub(crate) fn try_push_stamped<P>(
        &self,
        part: P,
        make: impl FnOnce(P, Instant) -> T,
    ) -> Result<(), TryPushError<P>> {
        self.try_put_with(part, |part, stamp| make(part, stamp.read()))
    }

    /// Takes a slot if one is free and pushes the item `make` builds.
    fn try_put_with<P>(
        &self,
        part: P,
        make: impl FnOnce(P, Stamp<'_>) -> T,
    ) -> Result<(), TryPushError<P>> {
        match self.slots.try_acquire() {
            // The slot now belongs to the item; the driver gives it back.
            Ok(p) => p.forget(),
            Err(TryAcquireError::Closed) => return Err(TryPushError::Closed(part)),
            Err(TryAcquireError::NoPermits) => return Err(TryPushError::Full(part)),
        }
        self.put_with(part, make).map_err(TryPushError::Closed)
    }

    /// Waits for `n` free slots (1 ≤ `n` ≤ capacity), for items pushed
    /// together with [`Reservation::fill`]. Cancel-safe.
    pub(crate) async fn reserve(&self, n: usize) -> Result<Reservation<'_, T>, Closed> {
        debug_assert!((1..=self.capacity).contains(&n));
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        let permit = self.slots.acquire_many(n32).await.map_err(|_| Closed)?;
        permit.forget();
        Ok(Reservation {
            queue: self,
            left: n32 as usize,
        })
    }

    /// Pushes an item whose slot is already taken.
    fn put(&self, item: T) -> Result<(), T> {
        self.put_with(item, |item, _| item)
    }

    /// Pushes the item `make` builds from `part` (its slot is already
    /// taken), under the lock; hands `part` back if the queue is closed.
    fn put_with<P>(&self, part: P, make: impl FnOnce(P, Stamp<'_>) -> T) -> Result<(), P> {
        let was_empty = {
            let mut state = self.state.lock();
            if state.closed {
                return Err(part);
            }
            let state = &mut *state;
            let was_empty = state.items.is_empty();
            let item = make(
                part,
                Stamp {
                    slot: &mut state.stamp,
                    fresh: was_empty,
                },
            );
            state.items.push_back(item);
            was_empty
        };
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Waits until an item is queued or the queue is closed. Cancel-safe
    /// (it takes nothing); for the one consumer.
    pub(crate) async fn ready(&self) {
        loop {
            {
                let state = self.state.lock();
                if !state.items.is_empty() || state.closed {
                    return;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Moves up to `max` of the oldest items into `out` (which must be
    /// empty; its allocation is swapped in when everything fits, so the
    /// lock is held for a swap, not a copy) and gives their slots back.
    /// Returns how many moved.
    pub(crate) fn take_into(&self, max: usize, out: &mut VecDeque<T>) -> usize {
        debug_assert!(out.is_empty());
        let n = {
            let mut state = self.state.lock();
            // The next stamped push reads the clock again.
            state.stamp = None;
            if state.items.len() <= max {
                std::mem::swap(&mut state.items, out);
            } else {
                out.extend(state.items.drain(..max));
            }
            out.len()
        };
        if n > 0 {
            self.slots.add_permits(n);
        }
        n
    }

    /// Frees the buffer if the queue is empty (it keeps the capacity of
    /// the largest burst otherwise).
    pub(crate) fn trim(&self) {
        let old = {
            let mut state = self.state.lock();
            if !state.items.is_empty() || state.items.capacity() == 0 {
                return;
            }
            std::mem::take(&mut state.items)
        };
        drop(old);
    }

    /// Refuses further items and returns those queued, in order; senders
    /// waiting for a slot get their items back.
    pub(crate) fn close(&self) -> VecDeque<T> {
        let items = {
            let mut state = self.state.lock();
            state.closed = true;
            std::mem::take(&mut state.items)
        };
        self.slots.close();
        self.ready.notify_one();
        items
    }
}

/// Slots taken by [`MsgQueue::reserve`]; those not filled go back on drop.
#[derive(Debug)]
pub(crate) struct Reservation<'a, T> {
    queue: &'a MsgQueue<T>,
    left: usize,
}

impl<T> Reservation<'_, T> {
    /// The reserved slots not filled yet.
    pub(crate) fn left(&self) -> usize {
        self.left
    }

    /// Pushes the items `next` yields, in order, under one lock, until it
    /// yields `None` or the reserved slots are used up; returns how many it
    /// pushed. If the queue closed meanwhile, `next` is not called and
    /// nothing is pushed. May be called again for the slots left.
    pub(crate) fn fill(&mut self, mut next: impl FnMut() -> Option<T>) -> Result<usize, Closed> {
        let (pushed, was_empty) = {
            let mut state = self.queue.state.lock();
            if state.closed {
                return Err(Closed);
            }
            let was_empty = state.items.is_empty();
            let mut pushed = 0;
            while self.left > 0 {
                let Some(item) = next() else { break };
                state.items.push_back(item);
                self.left -= 1;
                pushed += 1;
            }
            (pushed, was_empty)
        };
        if was_empty && pushed > 0 {
            self.queue.ready.notify_one();
        }
        Ok(pushed)
    }
}

impl<T> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        if self.left > 0 {
            self.queue.slots.add_permits(self.left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll};

    /// Polls `f` once with a no-op waker.
    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        TryPush,
        TryPushStamped,
        /// Reserve `n` slots, maybe close the queue, then offer `k` items.
        Reserve(usize, usize, bool),
        Take(usize),
        Trim,
        Close,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Push),
            3 => Just(Op::TryPush),
            2 => Just(Op::TryPushStamped),
            2 => (1usize..6, 0usize..8, prop::bool::weighted(0.1))
                .prop_map(|(n, k, close)| Op::Reserve(n, k, close)),
            3 => (0usize..6).prop_map(Op::Take),
            1 => Just(Op::Trim),
            1 => Just(Op::Close),
        ]
    }

    proptest! {
        /// Against a model: items come out in the order they went in, none
        /// is lost or duplicated, the queue never holds more than its
        /// capacity, a full or closed queue refuses (handing the item back),
        /// and `close` returns exactly what was still queued.
        #[test]
        fn matches_a_bounded_fifo(capacity in 1usize..6, ops in prop::collection::vec(op(), 0..60)) {
            let q = MsgQueue::new(capacity);
            let mut model: VecDeque<u32> = VecDeque::new();
            let mut closed = false;
            let mut next = 0u32;
            let mut out = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push => {
                        let r = poll_once(pin!(q.push(next)));
                        match r {
                            Poll::Ready(Ok(())) => {
                                prop_assert!(!closed && model.len() < capacity);
                                model.push_back(next);
                            }
                            Poll::Ready(Err(v)) => {
                                prop_assert!(closed);
                                prop_assert_eq!(v, next);
                            }
                            // Waits for room (dropped here: cancelled, nothing queued).
                            Poll::Pending => prop_assert!(!closed && model.len() == capacity),
                        }
                    }
                    Op::TryPush | Op::TryPushStamped => {
                        let pushed = match op {
                            Op::TryPush => q.try_push(next),
                            _ => q.try_push_stamped(next, |v, _| v),
                        };
                        match pushed {
                        Ok(()) => {
                            prop_assert!(!closed && model.len() < capacity);
                            model.push_back(next);
                        }
                        Err(TryPushError::Full(v)) => {
                            prop_assert!(!closed && model.len() == capacity);
                            prop_assert_eq!(v, next);
                        }
                        Err(TryPushError::Closed(v)) => {
                            prop_assert!(closed);
                            prop_assert_eq!(v, next);
                        }
                        }
                    }
                    Op::Reserve(n, k, close) => {
                        let n = n.min(capacity);
                        match poll_once(pin!(q.reserve(n))) {
                            Poll::Ready(Ok(mut r)) if close => {
                                // Closed between the reservation and the
                                // fill: nothing is taken or pushed.
                                let left: Vec<u32> = q.close().into_iter().collect();
                                prop_assert_eq!(left, model.drain(..).collect::<Vec<_>>());
                                closed = true;
                                prop_assert_eq!(r.fill(|| panic!("not called")), Err(Closed));
                            }
                            Poll::Ready(Ok(mut r)) => {
                                prop_assert!(!closed && model.len() + n <= capacity);
                                let mut offered = 0;
                                let pushed = r.fill(|| {
                                    (offered < k).then(|| {
                                        offered += 1;
                                        next + offered as u32
                                    })
                                });
                                let pushed = pushed.unwrap();
                                prop_assert_eq!(pushed, n.min(k));
                                for i in 1..=pushed {
                                    model.push_back(next + i as u32);
                                }
                                next += pushed as u32;
                            }
                            Poll::Ready(Err(Closed)) => prop_assert!(closed),
                            Poll::Pending => prop_assert!(!closed && model.len() + n > capacity),
                        }
                    }
                    Op::Take(max) => {
                        let n = q.take_into(max, &mut out);
                        let want: Vec<u32> = model.drain(..max.min(model.len())).collect();
                        prop_assert_eq!(n, want.len());
                        prop_assert_eq!(out.drain(..).collect::<Vec<_>>(), want);
                    }
                    Op::Trim => q.trim(),
                    Op::Close => {
                        let left: Vec<u32> = q.close().into_iter().collect();
                        prop_assert_eq!(left, model.drain(..).collect::<Vec<_>>());
                        closed = true;
                    }
                }
                next += 1;
                let ready = poll_once(pin!(q.ready())).is_ready();
                prop_assert_eq!(ready, closed || !model.is_empty());
            }
        }
    }

    #[derive(Debug, Clone)]
    enum StampOp {
        Push,
        Take(usize),
        Advance(u64),
    }

    fn stamp_op() -> impl Strategy<Value = StampOp> {
        prop_oneof![
            4 => Just(StampOp::Push),
            2 => (0usize..6).prop_map(StampOp::Take),
            3 => (1u64..2_000).prop_map(StampOp::Advance),
        ]
    }

    proptest! {
        /// The coarse clock of `try_push_stamped`: a push into an empty
        /// queue is stamped with its own time; every stamp is no later than
        /// its push and no earlier than the consumer's last take before it
        /// or the queue's last empty moment; and the clock is read at most
        /// once per take plus once per push into an empty queue.
        #[test]
        fn stamps_are_bounded_by_the_last_take(capacity in 1usize..8, ops in prop::collection::vec(stamp_op(), 0..80)) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let q: MsgQueue<(u32, Instant)> = MsgQueue::new(capacity);
                // (pushed at, stamp) of what the queue holds, in order.
                let mut model: VecDeque<(Instant, Instant)> = VecDeque::new();
                let mut floor = Instant::now();
                let mut stamps = std::collections::BTreeSet::new();
                let (mut takes, mut into_empty) = (0usize, 0usize);
                let mut out = VecDeque::new();
                for (i, op) in ops.into_iter().enumerate() {
                    match op {
                        StampOp::Push => {
                            let now = Instant::now();
                            let was_empty = model.is_empty();
                            match q.try_push_stamped(i as u32, |v, at| (v, at)) {
                                Ok(()) => {
                                    let stamp = {
                                        let state = q.state.lock();
                                        state.items.back().expect("just pushed").1
                                    };
                                    if was_empty {
                                        into_empty += 1;
                                        floor = now;
                                        prop_assert_eq!(stamp, now);
                                    }
                                    prop_assert!(stamp <= now && stamp >= floor);
                                    stamps.insert(stamp);
                                    model.push_back((now, stamp));
                                }
                                Err(TryPushError::Full(v)) => {
                                    prop_assert_eq!(model.len(), capacity);
                                    prop_assert_eq!(v, i as u32);
                                }
                                Err(TryPushError::Closed(_)) => prop_assert!(false, "never closed"),
                            }
                        }
                        StampOp::Take(max) => {
                            let n = q.take_into(max, &mut out);
                            takes += 1;
                            floor = Instant::now();
                            let want: Vec<(Instant, Instant)> = model.drain(..max.min(model.len())).collect();
                            prop_assert_eq!(n, want.len());
                            let got: Vec<Instant> = out.drain(..).map(|(_, at)| at).collect();
                            prop_assert_eq!(got, want.iter().map(|&(_, at)| at).collect::<Vec<_>>());
                        }
                        StampOp::Advance(us) => {
                            tokio::time::advance(std::time::Duration::from_micros(us)).await;
                        }
                    }
                }
                prop_assert!(stamps.len() <= takes + into_empty);
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn a_waiting_sender_gets_a_slot_when_the_driver_takes() {
        let q = std::sync::Arc::new(MsgQueue::new(1));
        q.push(1).await.unwrap();
        let sender = tokio::spawn({
            let q = q.clone();
            async move { q.push(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!sender.is_finished(), "no slot is free yet");
        let mut out = VecDeque::new();
        assert_eq!(q.take_into(8, &mut out), 1);
        sender.await.unwrap().unwrap();
        out.clear();
        q.take_into(8, &mut out);
        assert_eq!(out, [2]);
    }

    #[tokio::test]
    async fn close_hands_back_to_waiting_senders_and_wakes_the_driver() {
        let q = std::sync::Arc::new(MsgQueue::new(1));
        q.push(1).await.unwrap();
        let sender = tokio::spawn({
            let q = q.clone();
            async move { q.push(2).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(q.close(), [1]);
        assert_eq!(sender.await.unwrap(), Err(2));
        assert!(matches!(q.reserve(1).await, Err(Closed)));

        // A driver already waiting on an empty queue wakes when it closes.
        let q = std::sync::Arc::new(MsgQueue::<u32>::new(1));
        let driver = tokio::spawn({
            let q = q.clone();
            async move { q.ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!driver.is_finished(), "nothing to wake for yet");
        assert!(q.close().is_empty());
        tokio::time::timeout(std::time::Duration::from_secs(10), driver)
            .await
            .expect("close wakes the waiting driver")
            .unwrap();
    }

    #[tokio::test]
    async fn the_driver_wakes_on_the_first_item() {
        let q = std::sync::Arc::new(MsgQueue::<u32>::new(4));
        let driver = tokio::spawn({
            let q = q.clone();
            async move {
                q.ready().await;
                let mut out = VecDeque::new();
                q.take_into(8, &mut out);
                out
            }
        });
        tokio::task::yield_now().await;
        assert!(!driver.is_finished());
        let mut r = q.reserve(2).await.unwrap();
        let mut items = [7, 8].into_iter();
        assert_eq!(r.fill(|| items.next()), Ok(2));
        let taken = tokio::time::timeout(std::time::Duration::from_secs(10), driver)
            .await
            .expect("the first item wakes the driver");
        assert_eq!(taken.unwrap(), [7, 8]);
    }

    /// `has_room` is the fast path's hint: a full queue has none, but a
    /// queue closed while full has (a push fails at once, as `Closed`, and
    /// `try_send` says Shutdown rather than Full forever).
    #[test]
    fn a_closed_full_queue_has_room_for_a_push_that_fails() {
        let q = MsgQueue::new(1);
        assert!(q.has_room());
        q.try_push_stamped(1u32, |v, _| v).unwrap();
        assert!(!q.has_room());
        assert_eq!(q.try_push(2), Err(TryPushError::Full(2)));
        assert_eq!(q.close(), VecDeque::from([1]));
        assert!(q.has_room());
        assert_eq!(
            q.try_push_stamped(3, |v, _| v),
            Err(TryPushError::Closed(3))
        );
    }

    #[test]
    fn trim_frees_an_empty_queues_buffer_only() {
        let q = MsgQueue::new(200);
        for i in 0..100 {
            q.try_push(i).unwrap();
        }
        let mut out = VecDeque::new();
        q.take_into(60, &mut out);
        q.trim();
        assert!(q.state.lock().items.capacity() >= 40, "not empty: kept");
        out.clear();
        q.take_into(60, &mut out);
        // The swap handed the queue `out`'s old buffer.
        assert!(q.state.lock().items.capacity() > 0);
        q.trim();
        assert_eq!(q.state.lock().items.capacity(), 0);
        assert_eq!(out.len(), 40);
    }

    #[test]
    fn an_unfilled_reservation_gives_its_slots_back() {
        let q = MsgQueue::<u32>::new(3);
        let r = poll_once(pin!(q.reserve(3)));
        let Poll::Ready(Ok(mut r)) = r else {
            panic!("3 slots are free")
        };
        assert_eq!(q.try_push(1), Err(TryPushError::Full(1)));
        let mut one = Some(5);
        assert_eq!(r.fill(|| one.take()), Ok(1));
        assert_eq!(r.left(), 2);
        let mut one = Some(6);
        assert_eq!(r.fill(|| one.take()), Ok(1), "a second fill uses the rest");
        assert_eq!(q.try_push(0), Err(TryPushError::Full(0)), "still reserved");
        drop(r);
        // The slot left unused went back.
        assert_eq!(q.try_push(7), Ok(()));
        assert_eq!(q.try_push(8), Err(TryPushError::Full(8)));
        let mut out = VecDeque::new();
        q.take_into(8, &mut out);
        assert_eq!(out, [5, 6, 7]);
    }
}
