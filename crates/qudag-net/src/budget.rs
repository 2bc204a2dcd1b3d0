//! [`ByteBudget`]: the payload bytes a peer's accepted messages may hold
//! from `send` until they are acknowledged or handed back.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// A byte count with a ceiling, shared by the senders (who take) and the
/// peer's driver (which gives back). Lock-free: one compare-and-swap per
/// message taken, one subtraction per batch given back.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    used: AtomicUsize,
    max: usize,
    room: Notify,
}

impl ByteBudget {
    pub(crate) fn new(max: usize) -> Self {
        ByteBudget {
            used: AtomicUsize::new(0),
            max,
            room: Notify::new(),
        }
    }

    /// True if `n` more bytes fit now. Anything fits when nothing is held,
    /// so one message of any accepted size can always be in flight.
    fn fits(&self, used: usize, n: usize) -> bool {
        used == 0 || used.saturating_add(n) <= self.max
    }

    /// Takes `n` bytes if they fit.
    pub(crate) fn try_take(&self, n: usize) -> bool {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if !self.fits(used, n) {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Takes `n` bytes, waiting until they fit. The bytes go back when the
    /// returned guard drops, unless it is [`kept`](Reserved::keep).
    pub(crate) async fn take(&self, n: usize) -> Reserved<'_> {
        // The common case, without touching the `Notify` (registering a
        // waiter takes its lock): one compare-and-swap.
        if self.try_take(n) {
            return Reserved {
                budget: self,
                n: Some(n),
            };
        }
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Registered before the check: a `give` in between wakes us.
            notified.as_mut().enable();
            if self.try_take(n) {
                return Reserved {
                    budget: self,
                    n: Some(n),
                };
            }
            notified.await;
        }
    }

    /// Waits until `n` bytes would fit (without taking them).
    pub(crate) async fn room_for(&self, n: usize) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.fits(self.used.load(Ordering::Acquire), n) {
                return;
            }
            notified.await;
        }
    }

    /// Takes `n` bytes whether or not they fit (messages moved over from a
    /// retired driver, already accepted).
    pub(crate) fn force_take(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives `n` bytes back and wakes the senders waiting for room.
    pub(crate) fn give(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.room.notify_waiters();
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes taken for a message on its way into a queue: given back if the
/// message does not get in (the future was cancelled, the queue closed).
#[derive(Debug)]
pub(crate) struct Reserved<'a> {
    budget: &'a ByteBudget,
    n: Option<usize>,
}

impl Reserved<'_> {
    /// The message got in: its bytes stay taken until the driver gives them back.
    pub(crate) fn keep(mut self) {
        self.n = None;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.n {
            self.budget.give(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the order of takes and gives, `used` is the sum taken
        /// minus the sum given, and a take beyond the ceiling is refused
        /// unless nothing is held.
        #[test]
        fn takes_and_gives_balance(max in 1usize..1000, ops in prop::collection::vec((any::<bool>(), 0usize..600), 0..100)) {
            let b = ByteBudget::new(max);
            let mut held: Vec<usize> = Vec::new();
            for (take, n) in ops {
                if take {
                    let used: usize = held.iter().sum();
                    let fits = used == 0 || used + n <= max;
                    prop_assert_eq!(b.try_take(n), fits);
                    if fits {
                        held.push(n);
                    }
                } else if let Some(n) = held.pop() {
                    b.give(n);
                }
                prop_assert_eq!(b.used(), held.iter().sum::<usize>());
                // Over the ceiling only by one message let in alone.
                prop_assert!(b.used() <= max || held.iter().filter(|&&n| n > 0).count() == 1);
            }
        }
    }

    #[tokio::test]
    async fn a_cancelled_take_gives_back_and_a_waiter_wakes_on_give() {
        let b = ByteBudget::new(10);
        assert!(b.try_take(8));
        {
            let r = b.take(2).await;
            assert_eq!(b.used(), 10);
            drop(r); // not kept: given back
        }
        assert_eq!(b.used(), 8);
        let waiter = async {
            let r = b.take(5).await;
            r.keep();
        };
        let giver = async {
            tokio::task::yield_now().await;
            b.give(8);
        };
        tokio::join!(waiter, giver);
        assert_eq!(b.used(), 5);
    }
}
