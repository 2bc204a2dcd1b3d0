//! Batcher behaviour through the public API: unit cases for each flush rule
//! and a model-driven property test over random configurations and
//! operation sequences.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use qudag_batch::{
    batch_frame_len, decode_body, encode_batch_frame, Batch, BatchConfig, Batcher, ConfigError,
    FlushPolicy, Frame, FrameDecoder, PushError,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(
    max_messages: usize,
    max_bytes: usize,
    delay: Duration,
    policy: FlushPolicy,
) -> BatchConfig {
    let mut c = BatchConfig::default();
    c.max_messages(max_messages)
        .max_bytes(max_bytes)
        .max_delay(delay)
        .policy(policy);
    c
}

fn msg(n: usize) -> Bytes {
    Bytes::from(vec![n as u8; n])
}

#[track_caller]
fn lens(batch: &Batch<Bytes>) -> Vec<usize> {
    batch.messages().iter().map(|m| m.len()).collect()
}

#[test]
fn defaults_are_the_production_values() {
    let c = BatchConfig::default();
    assert_eq!(c.get_max_messages(), 128);
    assert_eq!(c.get_max_bytes(), 1024 * 1024);
    assert_eq!(c.get_max_message_len(), 1024 * 1024 - 8);
    assert_eq!(c.get_max_delay(), ms(50));
    assert_eq!(c.get_policy(), FlushPolicy::Adaptive);
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn invalid_configs_are_refused() {
    let check = |c: &BatchConfig, e: ConfigError| {
        assert_eq!(c.validate(), Err(e.clone()));
        assert_eq!(Batcher::<Bytes>::try_new(c.clone()).err(), Some(e));
    };
    check(
        BatchConfig::default().max_messages(0),
        ConfigError::MaxMessagesOutOfRange(0),
    );
    check(
        BatchConfig::default().max_bytes(7),
        ConfigError::MaxBytesOutOfRange(7),
    );
    check(
        BatchConfig::default().max_bytes(8).max_message_len(1),
        ConfigError::MessageLenExceedsBatch {
            max_message_len: 1,
            max_bytes: 8,
        },
    );
    // the smallest valid batch: one empty message
    let mut smallest = BatchConfig::default();
    smallest.max_bytes(8);
    assert_eq!(smallest.get_max_message_len(), 0);
    assert_eq!(smallest.validate(), Ok(()));
}

#[test]
fn codec_limits_follow_the_config() {
    let mut c = BatchConfig::default();
    c.max_messages(7).max_bytes(1000).max_message_len(100);
    let limits = c.codec_limits();
    assert_eq!(limits.get_max_messages(), 7);
    assert_eq!(limits.get_max_message_len(), 100);
    assert_eq!(limits.get_max_frame_len(), 1000 + 37);
    assert_eq!(limits.max_body_len(), 1000);
}

#[test]
fn fixed_flushes_at_max_messages() {
    let mut b = Batcher::new(config(3, 1000, ms(50), FlushPolicy::Fixed));
    let t = Instant::now();
    for n in 0..2 {
        b.push(msg(n), t).unwrap();
        assert!(b.poll_batch().is_none());
    }
    b.push(msg(2), t).unwrap();
    let batch = b.poll_batch().unwrap();
    assert_eq!(lens(&batch), [0, 1, 2]);
    assert!(b.poll_batch().is_none());
    assert_eq!(b.pending_messages(), 0);
    assert_eq!(b.poll_timeout(), None);
}

#[test]
fn fixed_flushes_before_exceeding_max_bytes() {
    // body = 4 + (4 + 10) + (4 + 10) = 32; a third 10-byte message needs 46
    let mut b = Batcher::new(config(100, 40, ms(50), FlushPolicy::Fixed));
    let t = Instant::now();
    b.push(msg(10), t).unwrap();
    b.push(msg(10), t).unwrap();
    assert!(b.poll_batch().is_none());
    assert_eq!(b.pending_bytes(), 20);
    b.push(msg(10), t).unwrap(); // does not fit: closes the first two
    let batch = b.poll_batch().unwrap();
    assert_eq!(lens(&batch), [10, 10]);
    assert_eq!(batch.body_len(), 32);
    assert_eq!(b.pending_messages(), 1);
    assert_eq!(b.pending_bytes(), 10);
}

#[test]
fn fixed_closes_a_batch_that_cannot_take_another_message() {
    // 4 + 4 + 24 = 32 = max_bytes - 4: even an empty message would not fit
    let mut b = Batcher::new(config(100, 35, ms(50), FlushPolicy::Fixed));
    b.push(msg(24), Instant::now()).unwrap();
    assert_eq!(lens(&b.poll_batch().unwrap()), [24]);
}

#[test]
fn fixed_flushes_at_the_deadline_of_the_first_message() {
    let mut b = Batcher::new(config(100, 1000, ms(50), FlushPolicy::Fixed));
    let t0 = Instant::now();
    b.push(msg(1), t0).unwrap();
    b.push(msg(2), t0 + ms(30)).unwrap();
    assert_eq!(b.poll_timeout(), Some(t0 + ms(50)));
    b.handle_timeout(t0 + ms(49));
    assert!(b.poll_batch().is_none());
    b.handle_timeout(t0 + ms(50));
    assert_eq!(lens(&b.poll_batch().unwrap()), [1, 2]);
    assert_eq!(b.poll_timeout(), None);
    // the next message starts a new deadline
    b.push(msg(3), t0 + ms(60)).unwrap();
    assert_eq!(b.poll_timeout(), Some(t0 + ms(110)));
}

#[test]
fn push_past_the_deadline_closes_the_old_batch_first() {
    let mut b = Batcher::new(config(100, 1000, ms(50), FlushPolicy::Fixed));
    let t0 = Instant::now();
    b.push(msg(1), t0).unwrap();
    b.push(msg(2), t0 + ms(70)).unwrap(); // handle_timeout was never called
    assert_eq!(lens(&b.poll_batch().unwrap()), [1]);
    assert!(b.poll_batch().is_none());
    assert_eq!(b.poll_timeout(), Some(t0 + ms(120)));
}

#[test]
fn zero_delay_flushes_at_the_first_timeout() {
    let mut b = Batcher::new(config(100, 1000, Duration::ZERO, FlushPolicy::Fixed));
    let t0 = Instant::now();
    b.push(msg(1), t0).unwrap();
    assert_eq!(b.poll_timeout(), Some(t0));
    b.handle_timeout(t0);
    assert_eq!(lens(&b.poll_batch().unwrap()), [1]);
}

#[test]
fn too_large_is_refused_and_handed_back() {
    let mut c = config(100, 1000, ms(50), FlushPolicy::Fixed);
    c.max_message_len(5);
    let mut b = Batcher::new(c);
    let t = Instant::now();
    b.push(msg(5), t).unwrap();
    let big = msg(6);
    let err = b.push(big.clone(), t).unwrap_err();
    assert_eq!(err.to_string(), "message of 6 bytes exceeds the limit of 5");
    assert_eq!(format!("{err:?}"), "TooLarge { len: 6, max: 5, .. }");
    match err {
        PushError::TooLarge { len, max, msg } => {
            assert_eq!((len, max), (6, 5));
            assert_eq!(msg, big);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(b.pending_messages(), 1);
    assert_eq!(b.pending_bytes(), 5);
}

#[test]
fn the_default_message_limit_is_what_fits_a_batch_alone() {
    let mut b = Batcher::<Vec<u8>>::new(config(100, 64, ms(50), FlushPolicy::Fixed));
    let t = Instant::now();
    assert!(b.push(vec![0; 57], t).is_err());
    b.push(vec![0; 56], t).unwrap();
    let batch = b.poll_batch().unwrap();
    assert_eq!(batch.body_len(), 64);
    assert_eq!(batch.frame_len(), batch_frame_len(batch.messages()));
}

#[test]
fn flush_drains_everything_in_order() {
    let mut b = Batcher::new(config(2, 1000, ms(50), FlushPolicy::Fixed));
    let t = Instant::now();
    for n in 1..=5 {
        b.push(msg(n), t).unwrap();
    }
    assert_eq!(b.pending_messages(), 5);
    let mut out = Vec::new();
    while let Some(batch) = b.flush() {
        out.push(lens(&batch));
    }
    assert_eq!(out, [vec![1, 2], vec![3, 4], vec![5]]);
    assert_eq!((b.pending_messages(), b.pending_bytes()), (0, 0));
    assert_eq!(b.poll_timeout(), None);
    assert!(b.flush().is_none());
}

#[test]
fn adaptive_sends_at_once_when_idle_and_accumulates_while_busy() {
    let mut b = Batcher::new(config(4, 1000, ms(50), FlushPolicy::Adaptive));
    let t = Instant::now();
    b.push(msg(1), t).unwrap();
    let first = b.poll_batch().unwrap(); // writer idle: goes at once
    assert_eq!(lens(&first), [1]);
    assert_eq!(b.in_flight(), 1);
    for n in 2..=7 {
        b.push(msg(n), t).unwrap();
    }
    // writer busy: only the full batch comes out
    assert_eq!(lens(&b.poll_batch().unwrap()), [2, 3, 4, 5]);
    assert!(b.poll_batch().is_none());
    assert_eq!(b.pending_messages(), 2);
    b.write_complete();
    assert!(b.poll_batch().is_none(), "one batch still in flight");
    b.write_complete();
    assert_eq!(b.in_flight(), 0);
    assert_eq!(lens(&b.poll_batch().unwrap()), [6, 7]);
    b.write_complete();
    b.write_complete(); // extra completions are ignored
    assert_eq!(b.in_flight(), 0);
}

#[test]
fn adaptive_still_honours_the_deadline_while_busy() {
    let mut b = Batcher::new(config(100, 1000, ms(50), FlushPolicy::Adaptive));
    let t0 = Instant::now();
    b.push(msg(1), t0).unwrap();
    let _in_flight = b.poll_batch().unwrap();
    b.push(msg(2), t0 + ms(1)).unwrap();
    assert!(b.poll_batch().is_none());
    b.handle_timeout(b.poll_timeout().unwrap());
    assert_eq!(lens(&b.poll_batch().unwrap()), [2]);
}

#[test]
fn fixed_ignores_the_writer_state() {
    let mut b = Batcher::new(config(100, 1000, ms(50), FlushPolicy::Fixed));
    b.push(msg(1), Instant::now()).unwrap();
    b.write_complete();
    assert!(b.poll_batch().is_none());
}

#[test]
fn debug_does_not_need_debug_messages() {
    struct Opaque(Vec<u8>);
    impl AsRef<[u8]> for Opaque {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    let mut b = Batcher::<Opaque>::new(BatchConfig::default());
    b.push(Opaque(vec![1, 2]), Instant::now()).unwrap();
    let s = format!("{b:?}");
    assert!(s.contains("pending_messages: 1"), "{s}");
}

// ---- property test ----

/// A message carrying its identity and push time, as the manager would
/// carry a send timestamp.
#[derive(Debug, Clone, PartialEq)]
struct Msg {
    id: u64,
    pushed_at: Instant,
    data: Vec<u8>,
}

impl AsRef<[u8]> for Msg {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

#[derive(Debug, Clone)]
enum Op {
    Push(usize),
    Advance(u64),
    WriteComplete,
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..80).prop_map(Op::Push),
        3 => (0u64..40).prop_map(Op::Advance),
        2 => Just(Op::WriteComplete),
        1 => Just(Op::Flush),
    ]
}

fn any_config() -> impl Strategy<Value = BatchConfig> {
    (
        1usize..8,
        8usize..160,
        any::<Option<prop::sample::Index>>(),
        0u64..30,
        prop_oneof![Just(FlushPolicy::Fixed), Just(FlushPolicy::Adaptive)],
    )
        .prop_map(|(max_messages, max_bytes, msg_len, delay, policy)| {
            let mut c = config(max_messages, max_bytes, ms(delay), policy);
            if let Some(i) = msg_len {
                c.max_message_len(i.index(max_bytes - 8 + 1));
            }
            c
        })
}

struct Harness {
    b: Batcher<Msg>,
    config: BatchConfig,
    now: Instant,
    next_id: u64,
    accepted: Vec<Msg>,
    /// (batch, time handed out, from flush)
    out: Vec<(Batch<Msg>, Instant, bool)>,
    in_flight: usize,
}

impl Harness {
    fn drain(&mut self) {
        while let Some(batch) = self.b.poll_batch() {
            self.in_flight += 1;
            self.out.push((batch, self.now, false));
        }
        let emitted: usize = self.out.iter().map(|(b, ..)| b.len()).sum();
        let emitted_bytes: usize = self.out.iter().map(|(b, ..)| b.payload_bytes()).sum();
        let accepted_bytes: usize = self.accepted.iter().map(|m| m.data.len()).sum();
        assert_eq!(self.b.pending_messages(), self.accepted.len() - emitted);
        assert_eq!(self.b.pending_bytes(), accepted_bytes - emitted_bytes);
        assert_eq!(self.b.in_flight(), self.in_flight);
        if self.config.get_policy() == FlushPolicy::Adaptive && self.in_flight == 0 {
            assert_eq!(
                self.b.pending_messages(),
                0,
                "adaptive: idle writer leaves nothing pending"
            );
        }
        if let Some(deadline) = self.b.poll_timeout() {
            assert!(self.b.pending_messages() > 0);
            assert!(deadline >= self.now, "a passed deadline was not handled");
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Push(len) => {
                let m = Msg {
                    id: self.next_id,
                    pushed_at: self.now,
                    data: vec![self.next_id as u8; len],
                };
                self.next_id += 1;
                let before = (self.b.pending_messages(), self.b.pending_bytes());
                match self.b.push(m.clone(), self.now) {
                    Ok(()) => {
                        assert!(len <= self.config.get_max_message_len());
                        self.accepted.push(m);
                    }
                    Err(PushError::TooLarge { len: l, max, msg }) => {
                        assert!(len > self.config.get_max_message_len());
                        assert_eq!((l, max), (len, self.config.get_max_message_len()));
                        assert_eq!(msg, m, "the refused message comes back intact");
                        assert_eq!((self.b.pending_messages(), self.b.pending_bytes()), before);
                    }
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            Op::Advance(d) => {
                // like the async shell: wake at each deadline on the way
                let target = self.now + ms(d);
                while let Some(t) = self.b.poll_timeout().filter(|t| *t <= target) {
                    self.now = t;
                    self.b.handle_timeout(t);
                    assert!(
                        self.b.poll_timeout().is_none_or(|next| next > t),
                        "handle_timeout left its deadline armed"
                    );
                    self.drain();
                }
                self.now = target;
                self.b.handle_timeout(target);
            }
            Op::WriteComplete => {
                self.b.write_complete();
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            Op::Flush => self.flush_all(),
        }
        self.drain();
    }

    fn flush_all(&mut self) {
        while let Some(batch) = self.b.flush() {
            self.in_flight += 1;
            self.out.push((batch, self.now, true));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn batches_preserve_order_limits_and_deadlines(
        config in any_config(),
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let t0 = Instant::now();
        let mut h = Harness {
            b: Batcher::new(config.clone()),
            config: config.clone(),
            now: t0,
            next_id: 0,
            accepted: Vec::new(),
            out: Vec::new(),
            in_flight: 0,
        };
        for op in ops {
            h.apply(op);
        }
        h.flush_all();
        prop_assert_eq!(h.b.pending_messages(), 0);
        prop_assert_eq!(h.b.poll_timeout(), None);

        // every accepted message exactly once, in order
        let ids: Vec<u64> = h.out.iter().flat_map(|(b, ..)| b.messages().iter().map(|m| m.id)).collect();
        let want: Vec<u64> = h.accepted.iter().map(|m| m.id).collect();
        prop_assert_eq!(ids, want);

        let limits = config.codec_limits();
        let mut decoder = FrameDecoder::new(limits.clone());
        let flat: Vec<&Msg> = h.out.iter().flat_map(|(b, ..)| b.messages()).collect();
        let mut index = 0;
        for (seq, (batch, at, from_flush)) in h.out.iter().enumerate() {
            // limits
            prop_assert!(!batch.is_empty());
            prop_assert!(batch.len() <= config.get_max_messages());
            prop_assert!(batch.body_len() <= config.get_max_bytes());
            prop_assert_eq!(batch.payload_bytes(), batch.messages().iter().map(|m| m.data.len()).sum::<usize>());
            // no message waits longer than max_delay (both policies)
            for m in batch.messages() {
                prop_assert!(at.duration_since(m.pushed_at) <= config.get_max_delay(),
                    "message {} waited {:?}", m.id, at.duration_since(m.pushed_at));
            }
            // fixed policy: no batch leaves early unless it is full
            index += batch.len();
            if config.get_policy() == FlushPolicy::Fixed && !from_flush {
                let first = &batch.messages()[0];
                let full_by_count = batch.len() == config.get_max_messages();
                let full_by_bytes = batch.body_len() + 4 > config.get_max_bytes();
                let next_did_not_fit = flat.get(index)
                    .is_some_and(|n| batch.body_len() + 4 + n.data.len() > config.get_max_bytes());
                let deadline = *at >= first.pushed_at + config.get_max_delay();
                prop_assert!(full_by_count || full_by_bytes || next_did_not_fit || deadline,
                    "batch of {} left early", batch.len());
            }
            // the receiver's limits accept every batch the sender makes
            let mut wire = BytesMut::new();
            encode_batch_frame(seq as u64, 0, batch.messages(), &mut wire);
            prop_assert_eq!(wire.len(), batch.frame_len());
            let frame = decoder.decode(&mut wire).unwrap();
            let Some(Frame::Batch(sealed)) = frame else { panic!("not a batch: {frame:?}") };
            prop_assert_eq!(sealed.seq(), seq as u64);
            let decoded = decode_body(sealed.into_body(), &limits).unwrap();
            prop_assert!(decoded.iter().map(|b| &b[..]).eq(batch.messages().iter().map(|m| &m.data[..])));
        }
    }
}
