//! Batcher configuration ([`BatchConfig`], [`FlushPolicy`]) and its validation.

use std::time::Duration;

use crate::codec::{CodecLimits, BODY_COUNT_LEN, BODY_LEN_PREFIX, FRAME_OVERHEAD};

/// Default [`BatchConfig::max_messages`]: 128 messages per batch.
pub const DEFAULT_MAX_MESSAGES: usize = 128;
/// Default [`BatchConfig::max_bytes`]: 1 MiB of batch body.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// Default [`BatchConfig::max_delay`]: 50 ms.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(50);

/// The smallest valid [`BatchConfig::max_bytes`]: the body of a batch holding
/// one empty message (a 4-byte count and one 4-byte length prefix).
pub const MIN_MAX_BYTES: usize = BODY_COUNT_LEN + BODY_LEN_PREFIX;

/// The largest valid [`BatchConfig::max_bytes`]: a body whose frame still has a
/// length field that fits a `u32` (the length field counts 25 bytes of kind,
/// sequence number and tag besides the body).
pub const MAX_MAX_BYTES: usize = (u32::MAX as usize) - (FRAME_OVERHEAD - 4);

/// When the [`Batcher`](crate::Batcher) closes a batch besides the count and
/// byte limits.
///
/// Both policies close a batch when it is full (by message count or body
/// bytes) and at the latest [`max_delay`](BatchConfig::max_delay) after its
/// first message was pushed. They differ only in what happens while the
/// writer is idle.
///
/// This enum is exhaustive: a new policy would be a breaking change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FlushPolicy {
    /// Wait for a full batch or the deadline, whatever the writer is doing.
    /// Predictable batch sizes; a message may wait up to `max_delay`.
    Fixed,
    /// Like [`Fixed`](Self::Fixed), and additionally hand out whatever is
    /// pending at once while the writer is idle (no batch in flight, see
    /// [`Batcher::write_complete`](crate::Batcher::write_complete)). A
    /// lightly loaded link gets near-zero batching delay; a saturated one
    /// accumulates full batches while each write is in progress. The
    /// default (of [`BatchConfig`] and of the connection manager's config).
    #[default]
    Adaptive,
}

/// Configuration of a [`Batcher`](crate::Batcher), builder style.
///
/// `Default` gives the production defaults. Setters take `&mut self` and
/// return `&mut Self` so calls chain; getters are named `get_*`. Setters do
/// not check anything: [`validate`](Self::validate) checks the whole
/// configuration, and [`Batcher::new`](crate::Batcher::new) panics on an
/// invalid one ([`Batcher::try_new`](crate::Batcher::try_new) returns the
/// error instead).
///
/// # Examples
///
/// ```
/// use qudag_batch::{BatchConfig, FlushPolicy};
/// use std::time::Duration;
///
/// let mut config = BatchConfig::default();
/// config
///     .max_messages(64)
///     .max_delay(Duration::from_millis(5))
///     .policy(FlushPolicy::Adaptive);
/// assert!(config.validate().is_ok());
/// assert_eq!(config.get_max_messages(), 64);
/// // the largest message defaults to whatever fits in one batch alone
/// assert_eq!(config.get_max_message_len(), 1024 * 1024 - 8);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    max_messages: usize,
    max_bytes: usize,
    max_message_len: Option<usize>,
    max_delay: Duration,
    policy: FlushPolicy,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_messages: DEFAULT_MAX_MESSAGES,
            max_bytes: DEFAULT_MAX_BYTES,
            max_message_len: None,
            max_delay: DEFAULT_MAX_DELAY,
            policy: FlushPolicy::Adaptive,
        }
    }
}

impl BatchConfig {
    /// The most messages one batch holds; a batch that reaches it is closed
    /// at once. Must be at least 1 and at most `u32::MAX`. Default: 128.
    pub fn max_messages(&mut self, n: usize) -> &mut Self {
        self.max_messages = n;
        self
    }

    /// The most bytes of one batch *body*, in bytes: the 4-byte message
    /// count plus, per message, a 4-byte length prefix and the payload
    /// (see `docs/PROTOCOL.md`). The frame around it adds 37 bytes. A
    /// message that would take the body over this closes the current batch
    /// and starts the next one. Must be between [`MIN_MAX_BYTES`] (8) and
    /// [`MAX_MAX_BYTES`]. Default: 1 MiB (1 048 576).
    pub fn max_bytes(&mut self, n: usize) -> &mut Self {
        self.max_bytes = n;
        self
    }

    /// The largest message payload accepted by
    /// [`Batcher::push`](crate::Batcher::push), in bytes. Larger messages
    /// are refused with [`PushError::TooLarge`](crate::PushError::TooLarge),
    /// never split. Must be at most `max_bytes - 8` (a message must fit in a
    /// batch alone). Default: `max_bytes - 8`, the largest that fits.
    pub fn max_message_len(&mut self, n: usize) -> &mut Self {
        self.max_message_len = Some(n);
        self
    }

    /// The longest a message waits in the batcher: a batch is closed at the
    /// latest this long after its first message was pushed (once the driver
    /// calls [`Batcher::handle_timeout`](crate::Batcher::handle_timeout)).
    /// Zero closes a batch at the first `handle_timeout` after its first
    /// push. Default: 50 ms.
    pub fn max_delay(&mut self, d: Duration) -> &mut Self {
        self.max_delay = d;
        self
    }

    /// The flush policy. Default: [`FlushPolicy::Adaptive`].
    pub fn policy(&mut self, p: FlushPolicy) -> &mut Self {
        self.policy = p;
        self
    }

    /// The configured [`max_messages`](Self::max_messages).
    pub fn get_max_messages(&self) -> usize {
        self.max_messages
    }

    /// The configured [`max_bytes`](Self::max_bytes).
    pub fn get_max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The effective [`max_message_len`](Self::max_message_len): the value
    /// set, or `max_bytes - 8` when none was set.
    pub fn get_max_message_len(&self) -> usize {
        self.max_message_len
            .unwrap_or_else(|| self.max_bytes.saturating_sub(MIN_MAX_BYTES))
    }

    /// The configured [`max_delay`](Self::max_delay).
    pub fn get_max_delay(&self) -> Duration {
        self.max_delay
    }

    /// The configured [`policy`](Self::policy).
    pub fn get_policy(&self) -> FlushPolicy {
        self.policy
    }

    /// Checks the configuration as a whole.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found, in the order the variants are
    /// declared.
    ///
    /// # Examples
    ///
    /// ```
    /// use qudag_batch::{BatchConfig, ConfigError};
    ///
    /// let mut config = BatchConfig::default();
    /// config.max_bytes(100).max_message_len(93);
    /// assert_eq!(
    ///     config.validate(),
    ///     Err(ConfigError::MessageLenExceedsBatch { max_message_len: 93, max_bytes: 100 })
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_messages == 0 || self.max_messages > u32::MAX as usize {
            return Err(ConfigError::MaxMessagesOutOfRange(self.max_messages));
        }
        if !(MIN_MAX_BYTES..=MAX_MAX_BYTES).contains(&self.max_bytes) {
            return Err(ConfigError::MaxBytesOutOfRange(self.max_bytes));
        }
        let max_message_len = self.get_max_message_len();
        if max_message_len > self.max_bytes - MIN_MAX_BYTES {
            return Err(ConfigError::MessageLenExceedsBatch {
                max_message_len,
                max_bytes: self.max_bytes,
            });
        }
        Ok(())
    }

    /// The receiver-side limits matching this configuration: a peer using
    /// this configuration never sends a frame these limits refuse.
    ///
    /// Meaningful for a configuration that passes
    /// [`validate`](Self::validate); for an invalid one the values saturate.
    ///
    /// # Examples
    ///
    /// ```
    /// use qudag_batch::{BatchConfig, CodecLimits};
    ///
    /// assert_eq!(BatchConfig::default().codec_limits(), CodecLimits::default());
    /// ```
    pub fn codec_limits(&self) -> CodecLimits {
        let mut limits = CodecLimits::default();
        limits
            .max_frame_len(self.max_bytes.saturating_add(FRAME_OVERHEAD))
            .max_messages(self.max_messages)
            .max_message_len(self.get_max_message_len());
        limits
    }
}

/// An invalid [`BatchConfig`], from [`BatchConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_messages` is zero or larger than `u32::MAX`.
    #[error("max_messages must be between 1 and u32::MAX, got {0}")]
    MaxMessagesOutOfRange(usize),
    /// `max_bytes` is outside [`MIN_MAX_BYTES`]`..=`[`MAX_MAX_BYTES`].
    #[error("max_bytes must be between {MIN_MAX_BYTES} and {MAX_MAX_BYTES}, got {0}")]
    MaxBytesOutOfRange(usize),
    /// `max_message_len` is larger than what fits in a batch of `max_bytes`
    /// alone (`max_bytes - 8`).
    #[error("max_message_len {max_message_len} does not fit in a batch of max_bytes {max_bytes}")]
    MessageLenExceedsBatch {
        /// The configured largest message.
        max_message_len: usize,
        /// The configured largest batch body.
        max_bytes: usize,
    },
}
