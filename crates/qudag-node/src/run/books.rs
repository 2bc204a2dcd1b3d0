//! The books of one node, sans-IO: what it sent to each destination and what
//! came back undelivered ([`Outbox`]), and what it received from each sender
//! incarnation, in order or not ([`Inbox`]).
//!
//! The receiver's check is a state machine per `(sender, sender incarnation)`
//! stream: the first message seen sets the start (a receiver that started
//! after the sender cannot know what came before), then each message must
//! carry the next counter. A lower counter is a duplicate, a higher one a gap
//! (its size is added to `missing`). A payload that is not a generated one is
//! counted as malformed and changes no stream.

use std::collections::{BTreeMap, HashMap};

use qudag_net::{PeerId, UndeliveredReason};

use super::payload::{Header, HeaderError};

/// The most sender incarnations tracked per sender peer; older ones are
/// folded into [`Inbox::retired`] (a peer restarting forever cannot grow the books).
pub(crate) const MAX_INCARNATIONS_PER_PEER: usize = 64;
/// The most sender peers tracked; messages from more are counted in
/// [`Inbox::untracked`] (the allow-list or the peer list bounds senders anyway).
pub(crate) const MAX_SENDERS: usize = 4096;

/// One `(sender, incarnation)` stream as the receiver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub(crate) struct Stream {
    /// Counter of the first message seen.
    pub(crate) first: u64,
    /// Counter of the last message accepted in order (or past a gap).
    pub(crate) last: u64,
    /// Messages counted: in order, or the first after a gap.
    pub(crate) received: u64,
    /// Messages whose counter was not above the last one.
    pub(crate) duplicates: u64,
    /// Times a counter skipped ahead.
    pub(crate) gaps: u64,
    /// Counters skipped over by those gaps.
    pub(crate) missing: u64,
    /// The first counter the first gap skipped (meaningful when `gaps > 0`).
    pub(crate) first_missing: u64,
}

/// What one received message was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The first message of a stream.
    First,
    /// The next counter of its stream.
    InOrder,
    /// A counter at or below the last one seen.
    Duplicate,
    /// A counter above the next one: `skipped` counters never arrived (yet).
    Gap {
        /// How many counters were skipped.
        skipped: u64,
    },
    /// Not a generated payload.
    Malformed(HeaderError),
    /// From a sender beyond [`MAX_SENDERS`]: not checked.
    Untracked,
}

/// The receiving half of the books.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// Streams by sender, then by incarnation, in the order first seen.
    streams: HashMap<PeerId, Vec<(u64, Stream)>>,
    /// Payloads that were not generated ones.
    pub(crate) malformed: u64,
    /// Messages from senders beyond [`MAX_SENDERS`].
    pub(crate) untracked: u64,
    /// Messages counted in streams that were folded away (old incarnations).
    pub(crate) retired: Stream,
}

impl Inbox {
    /// Checks and counts one message from `from`.
    pub(crate) fn observe(&mut self, from: PeerId, payload: &[u8]) -> Verdict {
        let header = match Header::decode(payload) {
            Ok(h) => h,
            Err(e) => {
                self.malformed += 1;
                return Verdict::Malformed(e);
            }
        };
        if !self.streams.contains_key(&from) && self.streams.len() >= MAX_SENDERS {
            self.untracked += 1;
            return Verdict::Untracked;
        }
        let list = self.streams.entry(from).or_default();
        let stream = match list.iter().position(|(inc, _)| *inc == header.incarnation) {
            Some(i) => &mut list[i].1,
            None => {
                if list.len() >= MAX_INCARNATIONS_PER_PEER {
                    let (_, old) = list.remove(0);
                    fold(&mut self.retired, &old);
                }
                list.push((
                    header.incarnation,
                    Stream {
                        first: header.counter,
                        last: header.counter,
                        received: 1,
                        ..Stream::default()
                    },
                ));
                return Verdict::First;
            }
        };
        step(stream, header.counter)
    }

    /// Every stream: `(sender, incarnation, stream)`, sorted.
    pub(crate) fn streams(&self) -> Vec<(PeerId, u64, Stream)> {
        let mut out: Vec<_> = self
            .streams
            .iter()
            .flat_map(|(p, list)| list.iter().map(move |(inc, s)| (*p, *inc, *s)))
            .collect();
        out.sort_by(|a, b| (a.0.as_bytes(), a.1).cmp(&(b.0.as_bytes(), b.1)));
        out
    }

    /// Sums over every stream, the folded ones included.
    pub(crate) fn totals(&self) -> Stream {
        let mut t = self.retired;
        for list in self.streams.values() {
            for (_, s) in list {
                fold(&mut t, s);
            }
        }
        t
    }
}

/// The transition of one stream on a message numbered `counter`.
fn step(s: &mut Stream, counter: u64) -> Verdict {
    let next = s.last.saturating_add(1);
    if counter < next {
        s.duplicates += 1;
        Verdict::Duplicate
    } else {
        s.received += 1;
        s.last = counter;
        if counter == next {
            Verdict::InOrder
        } else {
            let skipped = counter - next;
            if s.gaps == 0 {
                s.first_missing = next;
            }
            s.gaps += 1;
            s.missing = s.missing.saturating_add(skipped);
            Verdict::Gap { skipped }
        }
    }
}

/// Adds the counts of `s` to `into`.
fn fold(into: &mut Stream, s: &Stream) {
    into.received += s.received;
    into.duplicates += s.duplicates;
    into.gaps += s.gaps;
    into.missing = into.missing.saturating_add(s.missing);
}

/// What one destination got from this incarnation.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Sent {
    /// Messages `send` accepted; also the next counter.
    pub(crate) accepted: u64,
    /// Messages handed back undelivered.
    pub(crate) handed_back: u64,
    /// Of those, handed back with `maybe_delivered` (the peer may have them).
    pub(crate) handed_back_maybe: u64,
    /// Handed back by reason (`peer restarted`, `peer unreachable`, ...).
    pub(crate) reasons: BTreeMap<String, u64>,
    /// Handed-back messages whose header was not this incarnation's (never expected).
    pub(crate) foreign: u64,
}

impl Sent {
    /// Accepted and not handed back: delivered (acknowledged) once nothing is in flight.
    pub(crate) fn delivered(&self) -> u64 {
        self.accepted.saturating_sub(self.handed_back)
    }
}

/// The sending half of the books.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// This process's incarnation, written into every payload.
    pub(crate) incarnation: u64,
    /// Per destination.
    pub(crate) to: HashMap<PeerId, Sent>,
}

impl Outbox {
    /// An empty outbox for `incarnation` (never 0).
    pub(crate) fn new(incarnation: u64) -> Self {
        Self {
            incarnation: incarnation.max(1),
            to: HashMap::new(),
        }
    }

    /// The header for the next message to `peer` (not counted until [`accepted`](Self::accepted)).
    pub(crate) fn next_header(&self, peer: &PeerId) -> Header {
        Header {
            incarnation: self.incarnation,
            counter: self.to.get(peer).map_or(0, |s| s.accepted),
        }
    }

    /// `send` accepted the message built from [`next_header`](Self::next_header).
    pub(crate) fn accepted(&mut self, peer: PeerId) {
        self.to.entry(peer).or_default().accepted += 1;
    }

    /// Messages to `peer` came back undelivered; the lowest and highest
    /// counter among them (for the log), if any was this incarnation's.
    pub(crate) fn handed_back<'a>(
        &mut self,
        peer: PeerId,
        messages: impl IntoIterator<Item = &'a [u8]>,
        reason: UndeliveredReason,
        maybe_delivered: bool,
    ) -> Option<(u64, u64)> {
        let incarnation = self.incarnation;
        let sent = self.to.entry(peer).or_default();
        let mut range: Option<(u64, u64)> = None;
        for m in messages {
            match Header::decode(m) {
                Ok(h) if h.incarnation == incarnation && h.counter < sent.accepted => {
                    range = Some(range.map_or((h.counter, h.counter), |(lo, hi)| {
                        (lo.min(h.counter), hi.max(h.counter))
                    }));
                    sent.handed_back += 1;
                    if maybe_delivered {
                        sent.handed_back_maybe += 1;
                    }
                    *sent.reasons.entry(reason.to_string()).or_insert(0) += 1;
                }
                _ => sent.foreign += 1,
            }
        }
        range
    }

    /// Sum over destinations: (accepted, handed back).
    pub(crate) fn totals(&self) -> (u64, u64) {
        self.to
            .values()
            .fold((0, 0), |(a, h), s| (a + s.accepted, h + s.handed_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn msg(inc: u64, counter: u64) -> Vec<u8> {
        Header {
            incarnation: inc,
            counter,
        }
        .encode(32)
    }

    #[test]
    fn in_order_duplicate_gap_and_malformed() {
        let mut inbox = Inbox::default();
        let a = peer(1);
        assert_eq!(inbox.observe(a, &msg(7, 0)), Verdict::First);
        assert_eq!(inbox.observe(a, &msg(7, 1)), Verdict::InOrder);
        assert_eq!(inbox.observe(a, &msg(7, 1)), Verdict::Duplicate);
        assert_eq!(inbox.observe(a, &msg(7, 0)), Verdict::Duplicate);
        assert_eq!(inbox.observe(a, &msg(7, 5)), Verdict::Gap { skipped: 3 });
        assert_eq!(inbox.observe(a, &msg(7, 6)), Verdict::InOrder);
        // A new incarnation is a new stream, starting wherever it starts.
        assert_eq!(inbox.observe(a, &msg(8, 3)), Verdict::First);
        assert_eq!(
            inbox.observe(a, b"short"),
            Verdict::Malformed(HeaderError::Short { len: 5 })
        );
        assert_eq!(
            inbox.observe(a, &[0u8; 40]),
            Verdict::Malformed(HeaderError::Magic)
        );
        let streams = inbox.streams();
        assert_eq!(streams.len(), 2);
        assert_eq!(
            streams[0].2,
            Stream {
                first: 0,
                last: 6,
                received: 4,
                duplicates: 2,
                gaps: 1,
                missing: 3,
                first_missing: 2,
            }
        );
        assert_eq!(streams[1].2.received, 1);
        assert_eq!(inbox.malformed, 2);
        assert_eq!(inbox.totals().received, 5);
    }

    #[test]
    fn incarnations_per_peer_are_bounded_and_folded() {
        let mut inbox = Inbox::default();
        let n = MAX_INCARNATIONS_PER_PEER as u64 + 10;
        for inc in 1..=n {
            inbox.observe(peer(1), &msg(inc, 0));
            inbox.observe(peer(1), &msg(inc, 1));
        }
        assert_eq!(inbox.streams().len(), MAX_INCARNATIONS_PER_PEER);
        assert_eq!(inbox.retired.received, 20);
        assert_eq!(inbox.totals().received, 2 * n);
    }

    #[test]
    fn outbox_counts_per_destination_and_checks_what_comes_back() {
        let mut out = Outbox::new(5);
        let (a, b) = (peer(1), peer(2));
        for _ in 0..3 {
            assert_eq!(
                out.next_header(&a).counter,
                out.to.get(&a).map_or(0, |s| s.accepted)
            );
            out.accepted(a);
        }
        out.accepted(b);
        let back = [msg(5, 1), msg(5, 2), msg(6, 0), msg(5, 9), b"x".to_vec()];
        let range = out.handed_back(
            a,
            back.iter().map(Vec::as_slice),
            UndeliveredReason::PeerRestarted,
            true,
        );
        assert_eq!(range, Some((1, 2)));
        let sa = &out.to[&a];
        assert_eq!(
            (sa.accepted, sa.handed_back, sa.handed_back_maybe),
            (3, 2, 2)
        );
        assert_eq!(
            sa.foreign, 3,
            "another incarnation, a counter never sent, junk"
        );
        assert_eq!(sa.delivered(), 1);
        assert_eq!(sa.reasons.get("peer restarted"), Some(&2));
        assert_eq!(out.totals(), (4, 2));
    }

    /// A reference model: the set of counters seen per stream.
    #[derive(Default)]
    struct Model {
        seen: HashMap<(u8, u64), (u64, u64)>, // (last, received)
    }

    proptest! {
        /// Against a model over any sequence of messages from a few senders
        /// and incarnations: every message is exactly one verdict, the counts
        /// add up, and a stream sent in order with no loss has no gap and no
        /// duplicate.
        #[test]
        fn checker_matches_the_model(
            msgs in proptest::collection::vec((0u8..3, 1u64..4, 0u64..20), 0..200),
        ) {
            let mut inbox = Inbox::default();
            let mut model = Model::default();
            let (mut firsts, mut dups, mut gaps, mut missing) = (0u64, 0u64, 0u64, 0u64);
            for &(p, inc, c) in &msgs {
                let v = inbox.observe(peer(p), &msg(inc, c));
                let expect = match model.seen.get_mut(&(p, inc)) {
                    None => {
                        model.seen.insert((p, inc), (c, 1));
                        firsts += 1;
                        Verdict::First
                    }
                    Some((last, n)) if c <= *last => { let _ = n; dups += 1; Verdict::Duplicate }
                    Some((last, n)) => {
                        let skipped = c - *last - 1;
                        *last = c;
                        *n += 1;
                        if skipped == 0 { Verdict::InOrder } else { gaps += 1; missing += skipped; Verdict::Gap { skipped } }
                    }
                };
                prop_assert_eq!(v, expect);
            }
            let t = inbox.totals();
            prop_assert_eq!(t.received + t.duplicates, msgs.len() as u64);
            prop_assert_eq!(t.duplicates, dups);
            prop_assert_eq!(t.gaps, gaps);
            prop_assert_eq!(t.missing, missing);
            prop_assert_eq!(inbox.streams().len() as u64, firsts);
        }

        /// In-order streams, interleaved any way, give no gap and no duplicate,
        /// and `received == last - first + 1` per stream.
        #[test]
        fn interleaved_in_order_streams_are_clean(
            lens in proptest::collection::vec(0u64..50, 1..5),
            starts in proptest::collection::vec(0u64..1000, 5),
            order in proptest::collection::vec(0usize..5, 0..400),
        ) {
            let mut inbox = Inbox::default();
            let mut next: Vec<u64> = starts.clone();
            for &i in &order {
                let i = i % lens.len();
                if next[i] - starts[i] < lens[i] {
                    inbox.observe(peer(i as u8), &msg(1, next[i]));
                    next[i] += 1;
                }
            }
            for (p, _, s) in inbox.streams() {
                let i = usize::from(p.as_bytes()[0]);
                prop_assert_eq!((s.duplicates, s.gaps), (0, 0));
                prop_assert_eq!(s.first, starts[i]);
                prop_assert_eq!(s.received, s.last - s.first + 1);
                prop_assert_eq!(s.received, next[i] - starts[i]);
            }
        }
    }
}
