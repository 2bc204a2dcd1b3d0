//! Peer sessions that outlive connections, sans-IO: message numbering, the
//! retransmit window, resume and deduplication.
//!
//! A pair of peers shares a session for as long as neither restarts. Each
//! side numbers the messages it sends to the other 0, 1, 2, … (the numbers
//! belong to the session, not to a connection). [`Outbox`] is the sending
//! half: it keeps every written message until the peer acknowledges it, and
//! on a new connection it resends what the peer's RESUME frame says it lacks.
//! [`Inbox`] is the receiving half: it drops what it already delivered, so a
//! message reaches the application exactly once and in order however many
//! connections carried it. The protocol is `docs/PROTOCOL.md` §6.
//!
//! Like the [`Batcher`](crate::Batcher), both take `now` as an argument and do
//! no IO.
//!
//! # Examples
//!
//! A message written on a connection that dies, resent on the next one, and
//! delivered once:
//!
//! ```
//! use qudag_batch::{Inbox, InboxPlan, Outbox, Resume};
//! use std::time::Instant;
//!
//! let now = Instant::now();
//! let (alice, bob) = (11, 22); // incarnations
//! let mut out = Outbox::new(alice);
//! let mut inbox = Inbox::new();
//!
//! // Connection 1: after bob's RESUME (first contact: it knows nothing of
//! // alice), alice writes message 0; bob delivers it, but the ACK is lost.
//! out.connected();
//! assert!(!out.may_send_new()); // bob's incarnation is not known yet
//! out.on_resume(Resume { incarnation: bob, known: 0, next: 0 }, |_| {}).unwrap();
//! assert!(out.may_send_new());
//! let (first, _msgs) = out.send(vec!["hello"], now);
//! inbox.on_resume(alice);
//! assert_eq!(inbox.plan(alice, first, 1), InboxPlan::Deliver { skip: 0 });
//! inbox.commit(alice, first, 1);
//! out.connection_lost();
//!
//! // Connection 2: bob's RESUME says it knows alice but acknowledged nothing.
//! out.connected();
//! let outcome = out
//!     .on_resume(Resume { incarnation: bob, known: alice, next: 0 }, |_| {})
//!     .unwrap();
//! assert!(!outcome.lost);
//! let (first, msgs) = out.poll_resend(now).unwrap(); // resent...
//! assert_eq!((first, msgs), (0, &["hello"][..]));
//! assert_eq!(inbox.plan(alice, first, 1), InboxPlan::Duplicate); // ...and dropped
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::Resume;

/// A batch written at least once and not yet acknowledged.
#[derive(Debug)]
struct InFlight<M> {
    /// The number of its first message.
    first: u64,
    msgs: Vec<M>,
    /// When it was last written.
    written_at: Instant,
}

impl<M> InFlight<M> {
    fn end(&self) -> u64 {
        self.first + self.msgs.len() as u64
    }
}

/// The sending half of a peer session: numbers messages, keeps them until
/// acknowledged, and resends them on the next connection.
///
/// Call order, per connection: [`connected`](Self::connected); on a
/// connection we dialed whose listener told its incarnation up front, the
/// [`on_hello`](Self::on_hello); then, while
/// [`may_send_new`](Self::may_send_new), [`send`](Self::send) batches; feed
/// the peer's RESUME to [`on_resume`](Self::on_resume) and its ACKs to
/// [`ack`](Self::ack); after the hello or a RESUME, write what
/// [`poll_resend`](Self::poll_resend) returns until it returns `None`;
/// finally [`connection_lost`](Self::connection_lost) (or `connected` again
/// for a replacement).
///
/// Invariants (checked by the property tests in `tests/session.rs`):
/// - message numbers are given out once, in order, without gaps (from the
///   first number, [`starting_at`](Self::starting_at));
/// - a message leaves the window only by an acknowledgement covering it, or
///   handed back by [`on_hello`](Self::on_hello) or
///   [`on_resume`](Self::on_resume) (the peer restarted) or
///   [`take_all`](Self::take_all) (the caller gives up);
/// - nothing is written on a connection before the peer's incarnation on it
///   is known (from its hello or its RESUME), and a message written to one
///   incarnation of the peer is never written to another, so nothing that
///   an earlier incarnation may have read reaches a later one.
#[derive(Debug)]
pub struct Outbox<M> {
    incarnation: u64,
    /// The peer's incarnation, from its last hello or RESUME.
    peer: Option<u64>,
    /// The incarnation the current connection's hello named, if it had one.
    hello: Option<u64>,
    /// The number of the next new message.
    next: u64,
    /// Every message below this was acknowledged.
    acked: u64,
    window: VecDeque<InFlight<M>>,
    /// The last `stale` window entries are not yet written on the current
    /// connection (entries are resent front to back, and nothing new is
    /// written while any is stale, so the stale ones are always a suffix).
    stale: usize,
    live: bool,
    synced: bool,
}

/// What [`Outbox::on_resume`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct ResumeOutcome<M> {
    /// The peer restarted (its incarnation is not the one we wrote to): the
    /// messages written only on earlier connections may or may not have
    /// reached its old incarnation's application, and are handed back.
    pub lost: bool,
    /// Those messages, in order. Empty unless `lost`.
    pub handed_back: Vec<M>,
}

/// An acknowledgement or RESUME frame that breaks the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// It acknowledges messages that were never sent.
    #[error("acknowledgement of message {ack} beyond the {next} messages sent")]
    BeyondSent {
        /// The acknowledged bound.
        ack: u64,
        /// The number of messages sent so far.
        next: u64,
    },
    /// A RESUME frame (or hello) with incarnation 0 (reserved for "none").
    #[error("resume frame with incarnation 0")]
    ZeroIncarnation,
    /// The peer's RESUME names another incarnation than the hello on the
    /// same connection.
    #[error("resume frame of incarnation {resume} on a connection whose hello said {hello}")]
    HelloMismatch {
        /// The incarnation of the connection's hello.
        hello: u64,
        /// The incarnation of its RESUME.
        resume: u64,
    },
}

impl<M> Outbox<M> {
    /// An empty outbox for this node's `incarnation` (never 0), with no
    /// connection, numbering from 0.
    pub fn new(incarnation: u64) -> Self {
        Self::starting_at(incarnation, 0)
    }

    /// An empty outbox numbering from `first`: for a peer that this
    /// incarnation met before and forgot, `first` must be at least every
    /// number an earlier outbox of this incarnation gave out (the manager
    /// keeps that floor), since the peer may still remember them and would
    /// drop new messages under those numbers as duplicates. Receivers
    /// accept a session that starts above 0.
    pub fn starting_at(incarnation: u64, first: u64) -> Self {
        Self {
            incarnation,
            peer: None,
            hello: None,
            next: first,
            acked: first,
            window: VecDeque::new(),
            stale: 0,
            live: false,
            synced: false,
        }
    }

    /// A new connection carries the session from now on (a first one, a
    /// redial, or a replacement of the current one): everything in the window
    /// waits for the peer's hello or RESUME on it before it is resent.
    pub fn connected(&mut self) {
        self.live = true;
        self.synced = false;
        self.hello = None;
        self.stale = self.window.len();
    }

    /// The current connection is gone: nothing is written until the next one.
    pub fn connection_lost(&mut self) {
        self.live = false;
        self.synced = false;
        self.hello = None;
        self.stale = self.window.len();
    }

    /// Takes the hello of the current connection: the listener we dialed
    /// told its `incarnation` before anything was written on it (QUIC
    /// transport: in its half-round-trip data). Writing may start at once,
    /// without waiting for its RESUME: the whole window is resent if the
    /// peer is the incarnation we wrote to before (it drops what it
    /// delivered) or if nothing was ever written. If it is another
    /// incarnation, the peer restarted: what was written on earlier
    /// connections is handed back (as [`on_resume`](Self::on_resume) does),
    /// and new messages follow.
    ///
    /// Call right after [`connected`](Self::connected), before anything is
    /// written on the connection.
    ///
    /// # Errors
    ///
    /// [`AckError::ZeroIncarnation`]: a protocol violation, close the connection.
    pub fn on_hello(&mut self, incarnation: u64) -> Result<ResumeOutcome<M>, AckError> {
        if incarnation == 0 {
            return Err(AckError::ZeroIncarnation);
        }
        let outcome = self.learn(incarnation);
        self.hello = Some(incarnation);
        Ok(outcome)
    }

    /// The peer's incarnation on the current connection is `incarnation`:
    /// if it is not the one we wrote to, hands back what waits to be resent.
    fn learn(&mut self, incarnation: u64) -> ResumeOutcome<M> {
        // A different incarnation than the one we wrote to: the peer restarted
        // and lost what it had. (Without one known, nothing was written yet.)
        let lost = self.peer.is_some_and(|p| p != incarnation);
        self.peer = Some(incarnation);
        let mut handed_back = Vec::new();
        if lost {
            let keep = self.window.len() - self.stale;
            for entry in self.window.drain(keep..) {
                handed_back.extend(entry.msgs);
            }
            self.stale = 0;
            // What the peer acknowledges from now on counts from what is left.
            self.acked = self.window.front().map_or(self.next, |e| e.first);
        }
        ResumeOutcome { lost, handed_back }
    }

    /// Whether the peer's incarnation on the current connection is known
    /// (its hello or RESUME), so that writing may start.
    fn may_write(&self) -> bool {
        self.live && (self.synced || self.hello.is_some())
    }

    /// Whether a new batch may be written now: there is a connection, the
    /// peer's incarnation on it is known (its hello or RESUME arrived), and
    /// nothing older waits to be resent.
    ///
    /// Never "blind", even to a peer met before: the peer may have restarted
    /// since, and batches written without knowing its incarnation would
    /// reach its new incarnation while this side still counts them as
    /// written to the old one. Found by the 32-node testnet: such a batch,
    /// lost with a replaced connection, came back as `PeerRestarted` while
    /// the next one was delivered to the new incarnation after a hole.
    pub fn may_send_new(&self) -> bool {
        self.may_write() && self.stale == 0
    }

    /// Whether the peer's RESUME arrived on the current connection.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Numbers `msgs` and keeps them until acknowledged. Returns the number of
    /// the first one and the messages, to encode.
    ///
    /// Call only while [`may_send_new`](Self::may_send_new); otherwise the
    /// batch is still numbered and kept, and goes out with the next resend.
    pub fn send(&mut self, msgs: Vec<M>, now: Instant) -> (u64, &[M]) {
        let first = self.next;
        self.next += msgs.len() as u64;
        if !self.may_send_new() {
            self.stale += 1;
        }
        self.window.push_back(InFlight {
            first,
            msgs,
            written_at: now,
        });
        let last = self.window.back().expect("just pushed");
        (first, &last.msgs)
    }

    /// The next batch to resend on the current connection, after the peer's
    /// hello or RESUME, oldest first; marks it written at `now`.
    pub fn poll_resend(&mut self, now: Instant) -> Option<(u64, &[M])> {
        if !self.may_write() || self.stale == 0 {
            return None;
        }
        let i = self.window.len() - self.stale;
        self.stale -= 1;
        let entry = &mut self.window[i];
        entry.written_at = now;
        Some((entry.first, &entry.msgs))
    }

    /// Takes the peer's RESUME on the current connection: learns its
    /// incarnation. If that is the incarnation we wrote to before, the
    /// window is resent from where the RESUME says the peer is (the peer drops
    /// what it already delivered). If it is another one, the peer restarted:
    /// what was written only on earlier connections is handed back, since the
    /// old incarnation may or may not have delivered it. `acked` receives
    /// each newly acknowledged message, in order.
    ///
    /// A peer that forgot us without restarting (`known` is not our
    /// incarnation) is resent the window like one that remembers: that is
    /// exactly-once only if it forgets a sender no earlier than the sender
    /// gives up on it (see `docs/PROTOCOL.md` §6). The other way round (we
    /// forgot the peer, it still remembers what it delivered of ours), the
    /// manager's numbering floor ([`starting_at`](Self::starting_at)) keeps
    /// new numbers above the peer's.
    ///
    /// # Errors
    ///
    /// [`AckError::ZeroIncarnation`], [`AckError::HelloMismatch`] or
    /// [`AckError::BeyondSent`]: a protocol violation, close the connection.
    pub fn on_resume(
        &mut self,
        resume: Resume,
        acked: impl FnMut(M),
    ) -> Result<ResumeOutcome<M>, AckError> {
        if resume.incarnation == 0 {
            return Err(AckError::ZeroIncarnation);
        }
        if let Some(hello) = self.hello.filter(|&h| h != resume.incarnation) {
            return Err(AckError::HelloMismatch {
                hello,
                resume: resume.incarnation,
            });
        }
        // `next` is an acknowledgement only if it is about our incarnation; a
        // RESUME written before the peer read ours says nothing of it.
        let about_us = resume.known == self.incarnation;
        let lost = self.peer.is_some_and(|p| p != resume.incarnation);
        if !lost && about_us && resume.next > self.next {
            return Err(AckError::BeyondSent {
                ack: resume.next,
                next: self.next,
            });
        }
        let outcome = self.learn(resume.incarnation);
        self.synced = true;
        if !outcome.lost && about_us {
            self.ack(resume.next, acked)?;
        }
        Ok(outcome)
    }

    /// Takes an acknowledgement: every message below `next` was delivered.
    /// A bound at or below an earlier one changes nothing. `acked` receives
    /// each newly acknowledged message, in order. Returns how many there were.
    ///
    /// # Errors
    ///
    /// [`AckError::BeyondSent`] if `next` covers messages never sent.
    pub fn ack(&mut self, next: u64, mut acked: impl FnMut(M)) -> Result<usize, AckError> {
        if next > self.next {
            return Err(AckError::BeyondSent {
                ack: next,
                next: self.next,
            });
        }
        if next <= self.acked {
            return Ok(0);
        }
        let mut n = 0;
        while let Some(front) = self.window.front_mut() {
            if front.end() <= next {
                let entry = self.window.pop_front().expect("checked");
                n += entry.msgs.len();
                entry.msgs.into_iter().for_each(&mut acked);
            } else {
                if front.first < next {
                    // Acknowledged in part (batch boundaries differ): rare.
                    let k = (next - front.first) as usize;
                    n += k;
                    front.msgs.drain(..k).for_each(&mut acked);
                    front.first = next;
                }
                break;
            }
        }
        self.acked = next;
        self.stale = self.stale.min(self.window.len());
        Ok(n)
    }

    /// When the oldest batch written on the current connection is due for an
    /// acknowledgement, given the ack timeout; `None` if none is waiting.
    pub fn ack_deadline(&self, timeout: Duration) -> Option<Instant> {
        if !self.live || self.window.len() == self.stale {
            return None;
        }
        // A deadline past what `Instant` can hold is no deadline.
        self.window
            .front()
            .and_then(|e| e.written_at.checked_add(timeout))
    }

    /// Hands back every unacknowledged message, in order (the caller gives
    /// up: the peer stayed unreachable, or shutdown). All of them were
    /// written at least once, so each may have been delivered.
    pub fn take_all(&mut self) -> Vec<M> {
        self.stale = 0;
        self.acked = self.next;
        self.window.drain(..).flat_map(|e| e.msgs).collect()
    }

    /// Batches written and not yet acknowledged.
    pub fn window_batches(&self) -> usize {
        self.window.len()
    }

    /// Whether nothing waits for an acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }

    /// The number the next new message gets.
    pub fn next_number(&self) -> u64 {
        self.next
    }

    /// Every message below this number was acknowledged (or handed back).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The peer's incarnation, once a hello or a RESUME told it.
    pub fn peer_incarnation(&self) -> Option<u64> {
        self.peer
    }
}

/// The receiving half of a peer session: which messages of the peer's
/// current incarnation were already delivered.
///
/// O(1) state: the peer's incarnation and the next message number expected.
/// A batch whose messages are all below that number is a duplicate (the
/// sender resent it on a new connection) and is dropped; one that starts
/// above it follows messages the sender handed back, and is delivered.
/// Delivery is two steps, [`plan`](Self::plan) then [`commit`](Self::commit),
/// so that a caller whose delivery is cancelled commits nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inbox {
    peer: u64,
    next: u64,
}

/// What to do with a received batch, from [`Inbox::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxPlan {
    /// Deliver the batch's messages from index `skip` on (the first `skip`
    /// were delivered before).
    Deliver {
        /// How many leading messages to drop.
        skip: usize,
    },
    /// Every message of the batch was delivered before.
    Duplicate,
    /// The batch comes from an incarnation of the peer that is no longer
    /// current (a connection of a peer that has restarted since).
    Stale,
}

impl Inbox {
    /// No state for any incarnation yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The peer's RESUME on some connection names its `incarnation`: a new
    /// one (the peer restarted, or first contact) starts over at message 0.
    /// Returns whether it was new.
    pub fn on_resume(&mut self, incarnation: u64) -> bool {
        if incarnation == self.peer {
            return false;
        }
        self.peer = incarnation;
        self.next = 0;
        true
    }

    /// Which of a batch's `count` messages, numbered from `first`, sent by
    /// `incarnation`, are new.
    pub fn plan(&self, incarnation: u64, first: u64, count: usize) -> InboxPlan {
        if incarnation != self.peer || incarnation == 0 {
            return InboxPlan::Stale;
        }
        let end = first.saturating_add(count as u64);
        if end <= self.next {
            return InboxPlan::Duplicate;
        }
        InboxPlan::Deliver {
            skip: self.next.saturating_sub(first) as usize,
        }
    }

    /// The batch planned with the same arguments was delivered.
    pub fn commit(&mut self, incarnation: u64, first: u64, count: usize) {
        if incarnation == self.peer {
            self.next = self.next.max(first.saturating_add(count as u64));
        }
    }

    /// The peer incarnation this inbox holds state for (0: none).
    pub fn incarnation(&self) -> u64 {
        self.peer
    }

    /// The next message number expected from that incarnation.
    pub fn next_expected(&self) -> u64 {
        self.next
    }
}

/// Why a frame breaks the order rules of one connection
/// ([`ConnectionRules`]); each is a protocol violation (close code 4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// A BATCH or ACK came before the peer's RESUME.
    #[error("a {0} frame before RESUME")]
    BeforeResume(&'static str),
    /// A second RESUME on the same connection.
    #[error("a second RESUME frame")]
    SecondResume,
    /// A RESUME with incarnation 0 (reserved for "none").
    #[error("RESUME with incarnation 0")]
    ZeroIncarnation,
    /// An ACK not above the previous ACK on this connection (the first: not above 0).
    #[error("an acknowledgement that does not advance ({ack} after {previous})")]
    AckNotAdvancing {
        /// The acknowledgement received.
        ack: u64,
        /// The previous one on this connection (0 before the first).
        previous: u64,
    },
    /// A BATCH with no message.
    #[error("an empty batch")]
    EmptyBatch,
    /// `first + count` does not fit in a `u64`.
    #[error("message numbers overflow")]
    NumberOverflow,
}

/// The order rules for the frames a peer sends on one connection
/// (docs/PROTOCOL.md §5–§7), sans-IO: RESUME first and once, with a
/// non-zero incarnation; each ACK above the one before it; no empty BATCH;
/// message numbers that fit in a `u64`. A receiver runs every decoded frame
/// through it before acting on it; what passes is then the business of
/// [`Inbox`] (batches) and [`Outbox`] (ACK and RESUME contents).
///
/// The ACK rule is what makes an ACK flood cost nothing: a peer can only
/// send ACKs that say something new, and there are at most as many of those
/// as messages sent.
///
/// # Examples
///
/// ```
/// use qudag_batch::{ConnectionRules, Resume, RuleError};
///
/// let mut rules = ConnectionRules::new();
/// assert_eq!(rules.on_ack(1), Err(RuleError::BeforeResume("ACK")));
/// rules.on_resume(&Resume { incarnation: 7, known: 0, next: 0 }).unwrap();
/// assert_eq!(rules.on_ack(1), Ok(()));
/// assert_eq!(rules.on_ack(1), Err(RuleError::AckNotAdvancing { ack: 1, previous: 1 }));
/// assert_eq!(rules.on_batch(0, 0), Err(RuleError::EmptyBatch));
/// assert_eq!(rules.on_batch(0, 3), Ok(7)); // the sender's incarnation
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionRules {
    /// The peer's incarnation, from its RESUME.
    peer: Option<u64>,
    last_ack: u64,
}

impl ConnectionRules {
    /// The rules of a new connection: nothing received yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The peer's RESUME.
    ///
    /// # Errors
    ///
    /// [`RuleError::SecondResume`] or [`RuleError::ZeroIncarnation`].
    pub fn on_resume(&mut self, resume: &Resume) -> Result<(), RuleError> {
        if self.peer.is_some() {
            return Err(RuleError::SecondResume);
        }
        if resume.incarnation == 0 {
            return Err(RuleError::ZeroIncarnation);
        }
        self.peer = Some(resume.incarnation);
        Ok(())
    }

    /// An ACK naming `next`.
    ///
    /// # Errors
    ///
    /// [`RuleError::BeforeResume`] or [`RuleError::AckNotAdvancing`].
    pub fn on_ack(&mut self, next: u64) -> Result<(), RuleError> {
        if self.peer.is_none() {
            return Err(RuleError::BeforeResume("ACK"));
        }
        if next <= self.last_ack {
            return Err(RuleError::AckNotAdvancing {
                ack: next,
                previous: self.last_ack,
            });
        }
        self.last_ack = next;
        Ok(())
    }

    /// A BATCH whose first message is numbered `first`, holding `count`
    /// messages, or just its header (`count` unknown yet: pass 1) to check
    /// the order before opening it. Returns the sender's incarnation.
    ///
    /// # Errors
    ///
    /// [`RuleError::BeforeResume`], [`RuleError::EmptyBatch`] or
    /// [`RuleError::NumberOverflow`].
    pub fn on_batch(&self, first: u64, count: usize) -> Result<u64, RuleError> {
        let peer = self.peer.ok_or(RuleError::BeforeResume("BATCH"))?;
        if count == 0 {
            return Err(RuleError::EmptyBatch);
        }
        if first.checked_add(count as u64).is_none() {
            return Err(RuleError::NumberOverflow);
        }
        Ok(peer)
    }

    /// The peer's incarnation, once its RESUME arrived.
    pub fn peer_incarnation(&self) -> Option<u64> {
        self.peer
    }

    /// The highest ACK received on this connection (0 before the first).
    pub fn last_ack(&self) -> u64 {
        self.last_ack
    }
}
