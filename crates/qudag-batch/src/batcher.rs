//! The sans-IO [`Batcher`], the [`Batch`]es it hands out and [`PushError`].

use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::time::Instant;

use bytes::Bytes;

use crate::codec::{BODY_COUNT_LEN, BODY_LEN_PREFIX, FRAME_OVERHEAD};
use crate::config::{BatchConfig, ConfigError, FlushPolicy};

/// Groups messages into batches by count, bytes and time. Sans-IO: it never
/// reads the clock and does no IO; the caller passes `now` in.
///
/// Generic over the message type `M` (anything that is `AsRef<[u8]>`) so
/// the caller can carry its own data with each payload, for example a send
/// timestamp; only the payload bytes count towards the limits.
///
/// # Driving it
///
/// Like `quinn_proto::Connection`, the batcher is driven by a thin async
/// shell that owns the clock and the writer:
///
/// 1. [`push`](Self::push) each message with the current time.
/// 2. After every push, every [`handle_timeout`](Self::handle_timeout) and
///    every [`write_complete`](Self::write_complete), call
///    [`poll_batch`](Self::poll_batch) until it returns `None`, and write
///    the batches in the order returned.
/// 3. Arm one timer at [`poll_timeout`](Self::poll_timeout); when it fires,
///    call [`handle_timeout`](Self::handle_timeout) with the current time.
/// 4. When a write finishes, call [`write_complete`](Self::write_complete).
/// 5. At shutdown, call [`flush`](Self::flush) until it returns `None`.
///
/// # Flush rules
///
/// The open batch is closed (made ready for `poll_batch`) when
///
/// - it holds [`max_messages`](BatchConfig::max_messages) messages, or its
///   body cannot take even one more empty message;
/// - the next message would take its body over
///   [`max_bytes`](BatchConfig::max_bytes) (that message starts the next
///   batch);
/// - its deadline, [`max_delay`](BatchConfig::max_delay) after its first
///   message was pushed, is reached: at `handle_timeout`, or at a `push`
///   at or past the deadline (the new message then starts the next batch);
/// - under [`FlushPolicy::Adaptive`], `poll_batch` is called while the
///   writer is idle (no batch handed out since the last matching
///   `write_complete`);
/// - `flush` is called.
///
/// Messages come out exactly once, in push order. A message longer than
/// [`max_message_len`](BatchConfig::max_message_len) is refused at `push`
/// and handed back, never split.
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use qudag_batch::{BatchConfig, Batcher, FlushPolicy};
/// use std::time::{Duration, Instant};
///
/// let mut config = BatchConfig::default();
/// config.policy(FlushPolicy::Fixed);
/// let mut batcher = Batcher::new(config);
/// let t0 = Instant::now();
/// batcher.push(Bytes::from_static(b"hello"), t0).unwrap();
/// assert!(batcher.poll_batch().is_none()); // Fixed policy: wait for more
///
/// let deadline = batcher.poll_timeout().unwrap();
/// assert_eq!(deadline, t0 + Duration::from_millis(50));
/// batcher.handle_timeout(deadline);
/// let batch = batcher.poll_batch().unwrap();
/// assert_eq!(batch.messages(), [Bytes::from_static(b"hello")]);
/// batcher.write_complete();
/// ```
pub struct Batcher<M: AsRef<[u8]> = Bytes> {
    config: BatchConfig,
    max_message_len: usize,
    /// The batch being filled.
    open: Vec<M>,
    /// Encoded body length of `open`.
    open_body: usize,
    /// Payload bytes in `open`.
    open_payload: usize,
    /// When `open` must be closed; `None` while it is empty, or if
    /// `now + max_delay` overflows `Instant` (then it never expires).
    deadline: Option<Instant>,
    /// Closed batches not yet handed out, oldest first.
    ready: VecDeque<Batch<M>>,
    /// Messages in `open` and `ready`.
    pending_messages: usize,
    /// Payload bytes in `open` and `ready`.
    pending_bytes: usize,
    /// Batches handed out and not yet reported written.
    in_flight: usize,
    /// Length of the last closed batch, as the capacity for the next one.
    capacity_hint: usize,
}

impl<M: AsRef<[u8]>> fmt::Debug for Batcher<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("config", &self.config)
            .field("open_messages", &self.open.len())
            .field("open_body", &self.open_body)
            .field("deadline", &self.deadline)
            .field("ready_batches", &self.ready.len())
            .field("pending_messages", &self.pending_messages)
            .field("pending_bytes", &self.pending_bytes)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl<M: AsRef<[u8]>> Batcher<M> {
    /// A batcher with `config`.
    ///
    /// # Panics
    ///
    /// If `config` is invalid (see [`BatchConfig::validate`]); use
    /// [`try_new`](Self::try_new) to get the error instead.
    pub fn new(config: BatchConfig) -> Self {
        match Self::try_new(config) {
            Ok(batcher) => batcher,
            Err(e) => panic!("invalid batch configuration: {e}"),
        }
    }

    /// A batcher with `config`, or the reason `config` is invalid.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] from [`BatchConfig::validate`].
    pub fn try_new(config: BatchConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            max_message_len: config.get_max_message_len(),
            config,
            open: Vec::new(),
            open_body: BODY_COUNT_LEN,
            open_payload: 0,
            deadline: None,
            ready: VecDeque::new(),
            pending_messages: 0,
            pending_bytes: 0,
            in_flight: 0,
            capacity_hint: 0,
        })
    }

    /// The configuration this batcher runs with.
    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// Queues a message pushed at `now`.
    ///
    /// May close the open batch first (deadline reached, or the message does
    /// not fit) and may close the batch it joins (now full): call
    /// [`poll_batch`](Self::poll_batch) afterwards.
    ///
    /// # Errors
    ///
    /// [`PushError::TooLarge`] if the payload is longer than
    /// [`max_message_len`](BatchConfig::max_message_len); the message is
    /// handed back in the error and the batcher is unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// use qudag_batch::{BatchConfig, Batcher, PushError};
    /// use std::time::Instant;
    ///
    /// let mut config = BatchConfig::default();
    /// config.max_message_len(4);
    /// let mut batcher = Batcher::<Vec<u8>>::new(config);
    /// match batcher.push(b"too long".to_vec(), Instant::now()) {
    ///     Err(PushError::TooLarge { len: 8, max: 4, msg }) => assert_eq!(msg, b"too long"),
    ///     other => panic!("{other:?}"),
    /// }
    /// assert_eq!(batcher.pending_messages(), 0);
    /// ```
    pub fn push(&mut self, msg: M, now: Instant) -> Result<(), PushError<M>> {
        let len = msg.as_ref().len();
        if len > self.max_message_len {
            return Err(PushError::TooLarge {
                len,
                max: self.max_message_len,
                msg,
            });
        }
        if !self.open.is_empty()
            && (self.deadline.is_some_and(|d| d <= now)
                || self.open_body + BODY_LEN_PREFIX + len > self.config.get_max_bytes())
        {
            self.close_open();
        }
        if self.open.is_empty() {
            self.deadline = now.checked_add(self.config.get_max_delay());
        }
        self.open.push(msg);
        self.open_body += BODY_LEN_PREFIX + len;
        self.open_payload += len;
        self.pending_messages += 1;
        self.pending_bytes += len;
        if self.open.len() >= self.config.get_max_messages()
            || self.open_body + BODY_LEN_PREFIX > self.config.get_max_bytes()
        {
            self.close_open();
        }
        Ok(())
    }

    /// The next batch to write, oldest first: one closed by the flush rules,
    /// or (under [`FlushPolicy::Adaptive`], when no batch is in flight)
    /// whatever is pending. `None` if there is nothing to write now.
    ///
    /// Every batch returned counts as in flight until a matching
    /// [`write_complete`](Self::write_complete).
    #[must_use]
    pub fn poll_batch(&mut self) -> Option<Batch<M>> {
        if self.ready.is_empty()
            && self.config.get_policy() == FlushPolicy::Adaptive
            && self.in_flight == 0
        {
            self.close_open();
        }
        self.hand_out()
    }

    /// Processes the passage of time: closes the open batch if its deadline
    /// is at or before `now`. Call [`poll_batch`](Self::poll_batch) after.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            self.close_open();
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called:
    /// the deadline of the open batch (`max_delay` after its first message
    /// was pushed), or `None` if nothing waits for a deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// The writer finished writing one batch it got from
    /// [`poll_batch`](Self::poll_batch) or [`flush`](Self::flush). Under
    /// [`FlushPolicy::Adaptive`], once no batch is in flight, the next
    /// `poll_batch` hands out whatever is pending at once. Extra calls are
    /// ignored.
    pub fn write_complete(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Closes whatever is pending into a batch now, regardless of policy
    /// (explicit flush, shutdown), and returns the oldest batch not yet
    /// handed out. Call until it returns `None` to drain everything. Counts
    /// as in flight like [`poll_batch`](Self::poll_batch).
    #[must_use]
    pub fn flush(&mut self) -> Option<Batch<M>> {
        if self.ready.is_empty() {
            self.close_open();
        }
        self.hand_out()
    }

    /// Messages pushed and not yet handed out in a batch.
    pub fn pending_messages(&self) -> usize {
        self.pending_messages
    }

    /// Payload bytes of the messages pushed and not yet handed out (length
    /// prefixes and framing not counted).
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Batches handed out and not yet reported written with
    /// [`write_complete`](Self::write_complete).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn hand_out(&mut self) -> Option<Batch<M>> {
        let batch = self.ready.pop_front()?;
        self.pending_messages -= batch.len();
        self.pending_bytes -= batch.payload_bytes();
        self.in_flight += 1;
        Some(batch)
    }

    fn close_open(&mut self) {
        if self.open.is_empty() {
            return;
        }
        self.capacity_hint = self.open.len();
        let messages = mem::replace(&mut self.open, Vec::with_capacity(self.capacity_hint));
        self.ready.push_back(Batch {
            messages,
            payload_bytes: self.open_payload,
        });
        self.open_body = BODY_COUNT_LEN;
        self.open_payload = 0;
        self.deadline = None;
    }
}

/// A group of messages to be written as one BATCH frame, in push order.
/// Never empty when it comes from a [`Batcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<M> {
    messages: Vec<M>,
    payload_bytes: usize,
}

impl<M> Batch<M> {
    /// The messages, in push order.
    pub fn messages(&self) -> &[M] {
        &self.messages
    }

    /// The messages, in push order, by value.
    pub fn into_messages(self) -> Vec<M> {
        self.messages
    }

    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the batch holds no messages.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The sum of the message payload lengths, in bytes.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// The encoded body length, in bytes: 4 + 4 per message + payload. At
    /// most [`max_bytes`](BatchConfig::max_bytes).
    pub fn body_len(&self) -> usize {
        BODY_COUNT_LEN + BODY_LEN_PREFIX * self.messages.len() + self.payload_bytes
    }

    /// The encoded frame length, in bytes, as
    /// [`batch_frame_len`](crate::batch_frame_len) gives it.
    pub fn frame_len(&self) -> usize {
        FRAME_OVERHEAD + self.body_len()
    }
}

/// A message refused by [`Batcher::push`]. The message is handed back.
///
/// `Debug` and `Display` do not require `M: Debug`: they show lengths only.
#[non_exhaustive]
pub enum PushError<M> {
    /// The payload is longer than
    /// [`max_message_len`](BatchConfig::max_message_len).
    TooLarge {
        /// The payload length, in bytes.
        len: usize,
        /// The configured limit, in bytes.
        max: usize,
        /// The refused message, handed back.
        msg: M,
    },
}

impl<M> PushError<M> {
    /// The refused message.
    pub fn into_message(self) -> M {
        match self {
            Self::TooLarge { msg, .. } => msg,
        }
    }
}

impl<M> fmt::Debug for PushError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max, .. } => f
                .debug_struct("TooLarge")
                .field("len", len)
                .field("max", max)
                .finish_non_exhaustive(),
        }
    }
}

impl<M> fmt::Display for PushError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max, .. } => {
                write!(f, "message of {len} bytes exceeds the limit of {max}")
            }
        }
    }
}

impl<M> std::error::Error for PushError<M> {}
