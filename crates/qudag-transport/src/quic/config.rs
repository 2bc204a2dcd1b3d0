//! [`QuicConfig`]: the knobs of a [`QuicTransport`](super::QuicTransport).

use std::time::Duration;

use qudag_crypto::PeerId;

/// The largest `max_handshakes` or `accept_backlog` a [`QuicConfig`]
/// accepts: 2^24.
pub const MAX_COUNT: usize = 1 << 24;

/// Settings of a [`QuicTransport`](super::QuicTransport).
///
/// `Default` gives production values; each setter documents its default and
/// units. Values are checked together by [`validate`](QuicConfig::validate),
/// which [`QuicTransport::bind`](super::QuicTransport::bind) calls.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use qudag_transport::QuicConfig;
///
/// let mut config = QuicConfig::default();
/// config
///     .handshake_timeout(Duration::from_secs(5))
///     .idle_timeout(Duration::from_secs(20))
///     .keep_alive(Duration::from_secs(5));
/// assert!(config.validate().is_ok());
///
/// config.keep_alive(Duration::from_secs(20)); // not shorter than the idle timeout
/// assert!(config.validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicConfig {
    pub(crate) allow_list: Option<Vec<PeerId>>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_handshakes: usize,
    pub(crate) retry_above: usize,
    pub(crate) max_handshakes_per_ip: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) keep_alive: Duration,
    pub(crate) stream_receive_window: u32,
    pub(crate) receive_window: u32,
    pub(crate) send_window: u64,
    pub(crate) accept_backlog: usize,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            // Everyone who proves an identity may connect.
            allow_list: None,
            // Long enough for a lossy intercontinental path, short enough to
            // free a half-open slot quickly.
            handshake_timeout: Duration::from_secs(10),
            // Each half-open handshake holds a few KiB of TLS and QUIC state.
            max_handshakes: 256,
            // A quarter of the slots for attempts from unproven addresses:
            // spoofed or replayed Initials can never hold the rest.
            retry_above: 64,
            // One address (a host, or a NAT) cannot take more than this.
            max_handshakes_per_ip: 32,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            // One batch stream per direction: its window bounds the bytes in
            // flight on it (8 MiB covers 1 Gbit/s at 64 ms RTT).
            stream_receive_window: 8 << 20,
            receive_window: 16 << 20,
            send_window: 16 << 20,
            accept_backlog: 128,
        }
    }
}

impl QuicConfig {
    /// Only these peers may connect in (`None` admits every peer that proves
    /// an identity). A refused dialer's `dial` fails with
    /// [`TransportError::Refused`](crate::TransportError::Refused); the
    /// listener's `accept` never sees it. Default: `None`.
    pub fn allow_list(&mut self, peers: Option<Vec<PeerId>>) -> &mut Self {
        self.allow_list = peers;
        self
    }

    /// How long a handshake (dial or inbound) may take, including the
    /// listener's acceptance. Default: 10 s.
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Inbound handshakes in progress at once; an inbound attempt beyond the
    /// limit is refused at once (QUIC `CONNECTION_REFUSED`), never queued.
    /// Completed connections waiting for `accept` also hold their slot, so
    /// this bounds the memory unaccepted peers can claim. `0` refuses every
    /// inbound connection (a dial-only endpoint). At most [`MAX_COUNT`].
    /// Default: 256.
    pub fn max_handshakes(&mut self, n: usize) -> &mut Self {
        self.max_handshakes = n;
        self
    }

    /// Inbound handshakes in progress from which on a new attempt whose
    /// source address is not yet validated gets a stateless QUIC Retry
    /// instead of a slot: the dialer must echo the Retry token (one extra
    /// round trip) to prove it receives at its address. Replayed or spoofed
    /// Initials never answer a Retry, so they can hold at most this many
    /// slots; the rest of [`max_handshakes`](QuicConfig::max_handshakes)
    /// stays for dialers that prove their address. `0` validates every
    /// address (an extra round trip on every inbound connection). Default: 64.
    pub fn retry_above(&mut self, n: usize) -> &mut Self {
        self.retry_above = n;
        self
    }

    /// Inbound handshakes in progress from one source at once (an IPv4
    /// address, or an IPv6 /64); an attempt beyond it is answered with a
    /// Retry if its address is not validated yet, and refused
    /// (`CONNECTION_REFUSED`) if it is. Bounds what one host (or one NAT)
    /// can hold of [`max_handshakes`](QuicConfig::max_handshakes). At least
    /// 1. Default: 32.
    pub fn max_handshakes_per_ip(&mut self, n: usize) -> &mut Self {
        self.max_handshakes_per_ip = n;
        self
    }

    /// Close a connection after this long without any packet from the peer.
    /// QUIC uses the smaller of both sides' values. Default: 30 s.
    pub fn idle_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.idle_timeout = timeout;
        self
    }

    /// Send a keep-alive after this long without sending. Must be shorter than
    /// [`idle_timeout`](QuicConfig::idle_timeout): then the side with the
    /// smaller idle timeout (which QUIC negotiates) pings often enough to keep
    /// the connection open for both. Default: 10 s.
    pub fn keep_alive(&mut self, interval: Duration) -> &mut Self {
        self.keep_alive = interval;
        self
    }

    /// Bytes the peer may send on the batch stream before this side reads
    /// them. Default: 8 MiB.
    pub fn stream_receive_window(&mut self, bytes: u32) -> &mut Self {
        self.stream_receive_window = bytes;
        self
    }

    /// Bytes the peer may send on the whole connection before this side
    /// reads them. Default: 16 MiB.
    pub fn receive_window(&mut self, bytes: u32) -> &mut Self {
        self.receive_window = bytes;
        self
    }

    /// Bytes this side buffers for sending, unacknowledged, per connection.
    /// Default: 16 MiB.
    pub fn send_window(&mut self, bytes: u64) -> &mut Self {
        self.send_window = bytes;
        self
    }

    /// Connections that completed their handshake and wait for `accept`.
    /// Beyond that, handshakes wait (holding their
    /// [`max_handshakes`](QuicConfig::max_handshakes) slot). Between 1 and
    /// [`MAX_COUNT`]. Default: 128.
    pub fn accept_backlog(&mut self, n: usize) -> &mut Self {
        self.accept_backlog = n;
        self
    }

    /// Checks the settings together.
    pub fn validate(&self) -> Result<(), QuicConfigError> {
        if self.handshake_timeout.is_zero() {
            return Err(QuicConfigError::ZeroHandshakeTimeout);
        }
        if self.idle_timeout.is_zero() || self.idle_timeout.as_millis() >= 1u128 << 62 {
            return Err(QuicConfigError::IdleTimeout(self.idle_timeout));
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return Err(QuicConfigError::KeepAlive {
                keep_alive: self.keep_alive,
                idle_timeout: self.idle_timeout,
            });
        }
        if self.stream_receive_window == 0 || self.receive_window == 0 || self.send_window == 0 {
            return Err(QuicConfigError::ZeroWindow);
        }
        if self.accept_backlog == 0 {
            return Err(QuicConfigError::ZeroBacklog);
        }
        if self.max_handshakes_per_ip == 0 {
            return Err(QuicConfigError::ZeroPerIp);
        }
        for (field, value) in [
            ("max_handshakes", self.max_handshakes),
            ("accept_backlog", self.accept_backlog),
        ] {
            if value > MAX_COUNT {
                return Err(QuicConfigError::TooLarge { field, value });
            }
        }
        Ok(())
    }
}

/// Why a [`QuicConfig`] is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuicConfigError {
    /// The handshake timeout is zero.
    #[error("handshake timeout must be positive")]
    ZeroHandshakeTimeout,
    /// The idle timeout is zero or larger than QUIC can encode (2^62 ms).
    #[error("idle timeout {0:?} must be positive and below 2^62 ms")]
    IdleTimeout(Duration),
    /// The keep-alive interval is zero or not shorter than the idle timeout.
    #[error("keep-alive {keep_alive:?} must be positive and shorter than the idle timeout {idle_timeout:?}")]
    KeepAlive {
        /// The configured keep-alive interval.
        keep_alive: Duration,
        /// The configured idle timeout.
        idle_timeout: Duration,
    },
    /// A flow-control window is zero.
    #[error("flow-control windows must be positive")]
    ZeroWindow,
    /// The accept backlog is zero.
    #[error("accept backlog must be positive")]
    ZeroBacklog,
    /// `max_handshakes_per_ip` is zero (it would refuse every inbound
    /// connection; use `max_handshakes(0)` for a dial-only endpoint).
    #[error(
        "max_handshakes_per_ip must be at least 1 (max_handshakes(0) makes a dial-only endpoint)"
    )]
    ZeroPerIp,
    /// A count is above [`MAX_COUNT`].
    #[error("{field} must be at most {MAX_COUNT}, got {value}")]
    TooLarge {
        /// The setter's name.
        field: &'static str,
        /// The value given.
        value: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(QuicConfig::default().validate(), Ok(()));
    }

    #[test]
    fn keep_alive_must_be_shorter_than_idle() {
        let mut c = QuicConfig::default();
        c.keep_alive(Duration::from_secs(30));
        assert!(matches!(
            c.validate(),
            Err(QuicConfigError::KeepAlive { .. })
        ));
        c.keep_alive(Duration::ZERO);
        assert!(matches!(
            c.validate(),
            Err(QuicConfigError::KeepAlive { .. })
        ));
    }

    #[test]
    fn zero_values_are_refused() {
        let mut c = QuicConfig::default();
        c.handshake_timeout(Duration::ZERO);
        assert_eq!(c.validate(), Err(QuicConfigError::ZeroHandshakeTimeout));
        let mut c = QuicConfig::default();
        c.receive_window(0);
        assert_eq!(c.validate(), Err(QuicConfigError::ZeroWindow));
        let mut c = QuicConfig::default();
        c.accept_backlog(0);
        assert_eq!(c.validate(), Err(QuicConfigError::ZeroBacklog));
        let mut c = QuicConfig::default();
        c.idle_timeout(Duration::ZERO);
        assert!(matches!(c.validate(), Err(QuicConfigError::IdleTimeout(_))));
    }

    proptest! {
        /// Any value of the counts, from 0 to `usize::MAX`, is valid or a
        /// typed error; never more than `MAX_COUNT`.
        #[test]
        fn counts_are_bounded(handshakes in prop::sample::select(vec![0, 1, 256, MAX_COUNT, MAX_COUNT + 1, usize::MAX]),
                              backlog in prop::sample::select(vec![0, 1, 128, MAX_COUNT, MAX_COUNT + 1, usize::MAX]),
                              retry in any::<usize>(), per_ip in any::<usize>()) {
            let mut c = QuicConfig::default();
            c.max_handshakes(handshakes).accept_backlog(backlog).retry_above(retry).max_handshakes_per_ip(per_ip);
            let ok = handshakes <= MAX_COUNT && (1..=MAX_COUNT).contains(&backlog) && per_ip > 0;
            prop_assert_eq!(c.validate().is_ok(), ok);
        }

        #[test]
        fn valid_iff_keep_alive_below_idle(idle_ms in 0u64..100_000, ka_ms in 0u64..100_000) {
            let mut c = QuicConfig::default();
            c.idle_timeout(Duration::from_millis(idle_ms)).keep_alive(Duration::from_millis(ka_ms));
            let ok = idle_ms > 0 && ka_ms > 0 && ka_ms < idle_ms;
            prop_assert_eq!(c.validate().is_ok(), ok);
        }
    }
}
