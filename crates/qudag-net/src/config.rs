//! [`ManagerConfig`]: every knob of the connection manager, with production defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use qudag_batch::BatchConfig;
use qudag_metrics::MetricsSink;
use qudag_pool::{BackoffConfig, PoolConfig};

/// The longest duration a [`ManagerConfig`] accepts for any of its
/// timeouts: 30 days. Longer ones are refused by
/// [`validate`](ManagerConfig::validate), so that no deadline computed from
/// them can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The largest capacity (queue, incoming, unacked batches, events) a
/// [`ManagerConfig`] accepts: 2^24.
pub const MAX_CAPACITY: usize = 1 << 24;

/// The largest byte budget ([`queue_bytes`](ManagerConfig::queue_bytes),
/// [`incoming_bytes`](ManagerConfig::incoming_bytes)) a [`ManagerConfig`]
/// accepts: 1 TiB.
pub const MAX_BYTES: usize = if usize::BITS >= 64 {
    (1u64 << 40) as usize
} else {
    usize::MAX >> 3
};

/// Configuration of a [`ConnectionManager`](crate::ConnectionManager).
///
/// `Default` gives the production defaults listed on each setter. Setters
/// take `&mut self` and return `&mut Self`, so a config can be built in
/// place and reused. Setters never panic: values are checked together by
/// [`validate`](ManagerConfig::validate), which
/// [`ConnectionManager::new`](crate::ConnectionManager::new) calls.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use qudag_net::{FlushPolicy, ManagerConfig};
///
/// let mut config = ManagerConfig::default();
/// config.queue_capacity(1024).ack_timeout(Duration::from_secs(5));
/// config.batch_mut().policy(FlushPolicy::Fixed);
/// assert!(config.validate().is_ok());
///
/// config.queue_capacity(0);
/// assert!(config.validate().is_err());
/// ```
#[derive(Clone)]
pub struct ManagerConfig {
    pub(crate) batch: BatchConfig,
    pub(crate) pool: PoolConfig,
    pub(crate) backoff: BackoffConfig,
    pub(crate) queue_capacity: usize,
    pub(crate) incoming_capacity: usize,
    pub(crate) max_unacked_batches: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) ack_timeout: Duration,
    pub(crate) max_failed_dials: u32,
    pub(crate) unreachable_after: Duration,
    pub(crate) peer_idle_timeout: Duration,
    pub(crate) event_capacity: usize,
    pub(crate) queue_bytes: usize,
    pub(crate) incoming_bytes: usize,
    pub(crate) sinks: Vec<Arc<dyn MetricsSink>>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            batch: BatchConfig::default(),
            pool: PoolConfig::default(),
            backoff: BackoffConfig::default(),
            queue_capacity: 8192,
            incoming_capacity: 256,
            max_unacked_batches: 32,
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(15),
            max_failed_dials: 6,
            unreachable_after: Duration::from_secs(10),
            peer_idle_timeout: Duration::from_secs(300),
            event_capacity: 1024,
            queue_bytes: 32 << 20,
            incoming_bytes: 64 << 20,
            sinks: Vec::new(),
        }
    }
}

impl fmt::Debug for ManagerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerConfig")
            .field("batch", &self.batch)
            .field("pool", &self.pool)
            .field("backoff", &self.backoff)
            .field("queue_capacity", &self.queue_capacity)
            .field("incoming_capacity", &self.incoming_capacity)
            .field("max_unacked_batches", &self.max_unacked_batches)
            .field("connect_timeout", &self.connect_timeout)
            .field("ack_timeout", &self.ack_timeout)
            .field("max_failed_dials", &self.max_failed_dials)
            .field("unreachable_after", &self.unreachable_after)
            .field("peer_idle_timeout", &self.peer_idle_timeout)
            .field("event_capacity", &self.event_capacity)
            .field("queue_bytes", &self.queue_bytes)
            .field("incoming_bytes", &self.incoming_bytes)
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

impl ManagerConfig {
    /// The batching configuration (size, bytes, delay, policy). Default:
    /// [`BatchConfig::default`] with the adaptive policy, so a lightly loaded
    /// link sends at once and a saturated one sends full batches.
    pub fn batch_mut(&mut self) -> &mut BatchConfig {
        &mut self.batch
    }

    /// The pool configuration (idle timeout 300 s, connection and dial limits).
    pub fn pool_mut(&mut self) -> &mut PoolConfig {
        &mut self.pool
    }

    /// The per-peer redial backoff (exponential with full jitter).
    pub fn backoff_mut(&mut self) -> &mut BackoffConfig {
        &mut self.backoff
    }

    /// Messages each peer's send queue holds before `send` waits and
    /// `try_send` returns `Full`. Default: 8192.
    /// Between 1 and [`MAX_CAPACITY`] ([`validate`](Self::validate)).
    pub fn queue_capacity(&mut self, n: usize) -> &mut Self {
        self.queue_capacity = n;
        self
    }

    /// Received batches buffered for the application before readers stop
    /// reading (and QUIC flow control pushes back on the senders). Default: 256.
    /// Between 1 and [`MAX_CAPACITY`] ([`validate`](Self::validate)).
    pub fn incoming_capacity(&mut self, n: usize) -> &mut Self {
        self.incoming_capacity = n;
        self
    }

    /// Batches written but not yet acknowledged per connection before the
    /// writer stops taking messages from the queue. Default: 32.
    /// Between 1 and [`MAX_CAPACITY`] ([`validate`](Self::validate)).
    pub fn max_unacked_batches(&mut self, n: usize) -> &mut Self {
        self.max_unacked_batches = n;
        self
    }

    /// Time allowed for a dial plus session set-up. Default: 5 s.
    /// Positive and at most [`MAX_DURATION`].
    pub fn connect_timeout(&mut self, d: Duration) -> &mut Self {
        self.connect_timeout = d;
        self
    }

    /// A connection whose oldest unacknowledged batch (or the peer's RESUME
    /// on a new connection) is older than this is closed as unresponsive; the
    /// session goes on over a redial, and the batches are handed back only
    /// if [`unreachable_after`](Self::unreachable_after) passes without
    /// progress. Default: 15 s. Positive and at most [`MAX_DURATION`].
    pub fn ack_timeout(&mut self, d: Duration) -> &mut Self {
        self.ack_timeout = d;
        self
    }

    /// How many dials in a row may fail while messages wait: the `n`-th
    /// failed dial hands the waiting messages back as
    /// [`Unreachable`](crate::UndeliveredReason::Unreachable). Every dial
    /// counts, the first one after a lost connection included, so `n` is
    /// the number of dial attempts; they are spaced by the backoff. A dial
    /// that succeeds resets the count. Default: 6. At least 1 and at most
    /// [`MAX_CAPACITY`].
    pub fn max_failed_dials(&mut self, n: u32) -> &mut Self {
        self.max_failed_dials = n;
        self
    }

    /// How long messages wait without progress (no connection, or one that
    /// acknowledges nothing) before they are handed back as
    /// [`Unreachable`](crate::UndeliveredReason::Unreachable) or
    /// [`Unresponsive`](crate::UndeliveredReason::Unresponsive), whichever of
    /// this and [`max_failed_dials`](Self::max_failed_dials) comes first. A dial in
    /// progress is not cut short, so the wait can exceed this by up to the
    /// connect timeout. Keep it below the peers'
    /// [`peer_idle_timeout`](Self::peer_idle_timeout): a peer forgets a
    /// sender's session after that, and a resend after it could be delivered
    /// twice ([`validate`](Self::validate) refuses a value that is not
    /// below it). Default: 10 s. Positive and at most [`MAX_DURATION`].
    pub fn unreachable_after(&mut self, d: Duration) -> &mut Self {
        self.unreachable_after = d;
        self
    }

    /// A peer with no connection and nothing queued for this long is
    /// forgotten: its task ends and its backoff state is dropped, so peers
    /// seen once do not cost memory forever. Peers the application
    /// [`connect`](crate::ConnectionManager::connect)ed to keep their address,
    /// and `send` to them starts a new task. The peer's session state (what
    /// it delivered from the peer) goes with the task. A stranger (a peer
    /// the application never connected to) that exchanged no message is
    /// forgotten as soon as its connection is gone. Default: 300 s.
    /// Positive and at most [`MAX_DURATION`].
    pub fn peer_idle_timeout(&mut self, d: Duration) -> &mut Self {
        self.peer_idle_timeout = d;
        self
    }

    /// State changes [`Events`](crate::Events) holds unread before it drops
    /// the oldest and reports [`Event::Lagged`](crate::Event::Lagged).
    /// Handed-back messages are never dropped. Default: 1024. Between 1 and
    /// [`MAX_CAPACITY`].
    pub fn event_capacity(&mut self, n: usize) -> &mut Self {
        self.event_capacity = n;
        self
    }

    /// Payload bytes each peer's messages may hold from `send` until they
    /// are acknowledged or handed back (queued, batched and unacknowledged
    /// together): beyond it `send` waits and `try_send` returns `Full`, as
    /// for [`queue_capacity`](Self::queue_capacity). A message is let in
    /// whenever nothing else is held, so at least one message of any
    /// accepted size is always in flight. At least the batch's
    /// [`max_message_len`](qudag_batch::BatchConfig::max_message_len), at
    /// most [`MAX_BYTES`]. Default: 32 MiB.
    pub fn queue_bytes(&mut self, n: usize) -> &mut Self {
        self.queue_bytes = n;
        self
    }

    /// Payload bytes of received batches waiting for the application in
    /// [`Incoming`](crate::Incoming), over all peers: beyond it readers stop
    /// reading (and QUIC flow control pushes back on the senders), as for
    /// [`incoming_capacity`](Self::incoming_capacity). A batch's bytes are
    /// released when the application has taken its last message. At least
    /// the batch's [`max_bytes`](qudag_batch::BatchConfig::max_bytes) (a
    /// whole batch), at most [`MAX_BYTES`]. Default: 64 MiB.
    pub fn incoming_bytes(&mut self, n: usize) -> &mut Self {
        self.incoming_bytes = n;
        self
    }

    /// Adds a metrics sink that receives every event beside the built-in one.
    pub fn add_sink(&mut self, sink: Arc<dyn MetricsSink>) -> &mut Self {
        self.sinks.push(sink);
        self
    }
}

impl ManagerConfig {
    /// Checks the configuration as a whole: the batch configuration
    /// ([`BatchConfig::validate`]), every capacity between 1 and
    /// [`MAX_CAPACITY`], every timeout positive and at most
    /// [`MAX_DURATION`], and `unreachable_after` below `peer_idle_timeout`.
    /// The pool and backoff settings take any value (see their setters).
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.batch.validate()?;
        for (field, value) in [
            ("queue_capacity", self.queue_capacity),
            ("incoming_capacity", self.incoming_capacity),
            ("max_unacked_batches", self.max_unacked_batches),
            ("event_capacity", self.event_capacity),
            ("max_failed_dials", self.max_failed_dials as usize),
        ] {
            if !(1..=MAX_CAPACITY).contains(&value) {
                return Err(ConfigError::Capacity { field, value });
            }
        }
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("ack_timeout", self.ack_timeout),
            ("unreachable_after", self.unreachable_after),
            ("peer_idle_timeout", self.peer_idle_timeout),
        ] {
            if value.is_zero() || value > MAX_DURATION {
                return Err(ConfigError::Duration { field, value });
            }
        }
        let budgets = [
            (
                "queue_bytes",
                self.queue_bytes,
                self.batch.get_max_message_len(),
            ),
            (
                "incoming_bytes",
                self.incoming_bytes,
                self.batch.get_max_bytes(),
            ),
        ];
        for (field, value, min) in budgets {
            if value < min.max(1) || value > MAX_BYTES {
                return Err(ConfigError::Bytes {
                    field,
                    value,
                    min: min.max(1),
                });
            }
        }
        if self.unreachable_after >= self.peer_idle_timeout {
            return Err(ConfigError::UnreachableAfterIdle {
                unreachable_after: self.unreachable_after,
                peer_idle_timeout: self.peer_idle_timeout,
            });
        }
        Ok(())
    }
}

/// Why a [`ManagerConfig`] is invalid, from [`ManagerConfig::validate`] and
/// [`ConnectionManager::new`](crate::ConnectionManager::new).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The batch configuration is invalid.
    #[error("batch configuration: {0}")]
    Batch(#[from] qudag_batch::ConfigError),
    /// A capacity is 0 or above [`MAX_CAPACITY`].
    #[error("{field} must be between 1 and {MAX_CAPACITY}, got {value}")]
    Capacity {
        /// The setter's name.
        field: &'static str,
        /// The value given.
        value: usize,
    },
    /// A byte budget is below what one message (`queue_bytes`) or one batch
    /// (`incoming_bytes`) needs, or above [`MAX_BYTES`].
    #[error("{field} must be between {min} and {MAX_BYTES}, got {value}")]
    Bytes {
        /// The setter's name.
        field: &'static str,
        /// The value given.
        value: usize,
        /// The least it may be with this batch configuration.
        min: usize,
    },
    /// A timeout is zero or longer than [`MAX_DURATION`].
    #[error("{field} must be positive and at most {MAX_DURATION:?}, got {value:?}")]
    Duration {
        /// The setter's name.
        field: &'static str,
        /// The value given.
        value: Duration,
    },
    /// `unreachable_after` is not below `peer_idle_timeout`: a resend after
    /// the peer forgot the session could be delivered twice.
    #[error(
        "unreachable_after ({unreachable_after:?}) must be below peer_idle_timeout \
         ({peer_idle_timeout:?}): peers forget a session after that, and a later \
         resend could be delivered twice"
    )]
    UnreachableAfterIdle {
        /// The configured `unreachable_after`.
        unreachable_after: Duration,
        /// The configured `peer_idle_timeout`.
        peer_idle_timeout: Duration,
    },
}
