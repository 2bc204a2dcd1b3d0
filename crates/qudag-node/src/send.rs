//! `send`: connects to one peer, sends `--count` messages, waits for their
//! acknowledgements and reports; exits 0 only if every message was delivered.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Args;
use qudag_net::{
    ConnState, ConnectionManager, Event, Events, ManagerConfig, NetError, PeerAddr, QuicConfig,
    QuicTransport, TransportError, UndeliveredReason,
};
use tokio::time::Instant;

use crate::demo::Policy;
use crate::keygen::load_identity;
use crate::parse;
use crate::report::{rate, SendSummary};

/// How often the ack wait looks at the counters.
const POLL: Duration = Duration::from_millis(2);
/// Messages sent between two looks at the event stream.
const EVENT_CHECK_EVERY: u64 = 1024;

/// Options of `qudag-node send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// The peer to send to, as printed by `listen`: PEERID@IP:PORT.
    #[arg(long, value_name = "PEERID@ADDR")]
    pub(crate) to: PeerAddr,
    /// How many messages to send.
    #[arg(long, value_name = "N")]
    pub(crate) count: u64,
    /// Payload size of each message, in bytes (at most the largest message, 1 MiB less framing).
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = parse::message_size)]
    pub(crate) size: usize,
    /// Send at most this many messages per second, from 0.001 to 1e9
    /// (default: as fast as the peer acknowledges).
    #[arg(long, value_name = "R", value_parser = parse::rate)]
    pub(crate) rate: Option<f64>,
    /// Identity key file (default: a fresh identity for this run).
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// Print one JSON object (sent, delivered, undelivered, elapsed_s, msgs_per_s,
    /// latency_p50_us, latency_p99_us) instead of a line of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Local address to bind (default: port 0 on the loopback or unspecified address).
    #[arg(long, value_name = "ADDR")]
    pub(crate) bind: Option<SocketAddr>,
    /// Batch flush policy.
    #[arg(long, value_enum, default_value_t = Policy::Adaptive)]
    pub(crate) policy: Policy,
    /// Seconds allowed to connect (dial, TLS handshake, session set-up); above 0, at most 2592000.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse::seconds)]
    pub(crate) connect_timeout: Duration,
    /// Seconds allowed for the whole run after connecting, acknowledgements
    /// included; above 0, at most 2592000 (30 days).
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse::seconds)]
    pub(crate) timeout: Duration,
    /// Seconds the final shutdown waits for outstanding acknowledgements; above 0, at most 2592000.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse::seconds)]
    pub(crate) grace: Duration,
}

/// The address to bind when none is given: port 0 on the loopback address of
/// the target's family if the target is loopback, else on the unspecified one.
pub(crate) fn default_bind(to: SocketAddr) -> SocketAddr {
    match (to.is_ipv4(), to.ip().is_loopback()) {
        (true, true) => (Ipv4Addr::LOCALHOST, 0).into(),
        (true, false) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        (false, true) => (Ipv6Addr::LOCALHOST, 0).into(),
        (false, false) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// One line a person can act on, for a failed connect to `to`.
pub(crate) fn describe_connect_error(e: &NetError, to: &PeerAddr) -> String {
    let addr = to.addr;
    match e {
        NetError::Transport(TransportError::PeerIdMismatch { expected, actual }) => format!(
            "peer id mismatch: dialed {expected} but the peer at {addr} is {actual}; check the PEERID in --to"
        ),
        NetError::Transport(TransportError::Denied { .. }) => format!(
            "connection refused by the peer at {addr}: its allow-list does not admit this node \
             (the listener admits it with --allow PEERID)"
        ),
        NetError::Transport(TransportError::Refused { detail, .. }) => {
            format!("connection refused by the peer at {addr}: {detail}")
        }
        NetError::Transport(TransportError::NotAllowed { peer }) => {
            format!("connection refused: {peer} is not on the allow-list")
        }
        NetError::Transport(TransportError::Unreachable { detail, .. }) => {
            format!("peer unreachable: nothing answered at {addr} ({detail})")
        }
        NetError::Transport(TransportError::HandshakeTimeout { .. })
        | NetError::ConnectTimeout { .. } => {
            format!("peer unreachable: no answer from {addr} within the connect timeout")
        }
        NetError::Transport(TransportError::Handshake { detail, .. }) => {
            format!("handshake with {addr} failed: {detail}")
        }
        other => format!("cannot connect to {to}: {other}"),
    }
}

/// What the event stream said about undelivered messages.
#[derive(Debug, Default)]
pub(crate) struct HandedBack {
    /// Messages handed back.
    pub(crate) messages: u64,
    /// The first reason seen.
    pub(crate) first_reason: Option<UndeliveredReason>,
    /// A connection went to `Failed` or `Disconnected`.
    pub(crate) connection_lost: bool,
}

impl HandedBack {
    /// Reads every event that is ready.
    pub(crate) fn drain(&mut self, events: &mut Events) {
        while let Some(ev) = events.try_recv() {
            self.on_event(ev);
        }
    }

    /// Counts one event.
    pub(crate) fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Undelivered {
                messages, reason, ..
            } => {
                self.messages += messages.len() as u64;
                self.first_reason.get_or_insert(reason);
            }
            Event::StateChanged {
                to: ConnState::Failed | ConnState::Disconnected,
                ..
            } => self.connection_lost = true,
            _ => {}
        }
    }

    /// Why sending should stop, if it should.
    pub(crate) fn stop_reason(&self) -> Option<String> {
        if let Some(reason) = self.first_reason {
            Some(format!("messages came back undelivered ({reason})"))
        } else if self.connection_lost {
            Some("the connection to the peer was lost".to_owned())
        } else {
            None
        }
    }
}

/// What a run counted, kept up to date as it goes so that a failure at
/// any point still reports what happened.
#[derive(Debug, Default)]
struct Counts {
    /// The connection was set up (a summary line is printed in text mode).
    connected: bool,
    sent: u64,
    delivered: u64,
    undelivered: u64,
    elapsed: Duration,
    latency_p50: Duration,
    latency_p99: Duration,
}

/// Runs `send`: the exchange, then one summary (JSON with `--json`) whose
/// counts and `error` agree with the `error:` line `main` prints.
pub(crate) async fn run(args: SendArgs) -> anyhow::Result<()> {
    let (json, requested) = (args.json, args.count);
    let mut counts = Counts::default();
    let result = exchange(args, &mut counts).await;
    let summary = SendSummary {
        requested,
        sent: counts.sent,
        delivered: counts.delivered,
        undelivered: counts.undelivered,
        elapsed_s: counts.elapsed.as_secs_f64(),
        msgs_per_s: rate(counts.delivered, counts.elapsed),
        latency_p50_us: counts.latency_p50.as_micros() as u64,
        latency_p99_us: counts.latency_p99.as_micros() as u64,
        error: result.as_ref().err().map(crate::error_line),
    };
    if json {
        println!("{}", summary.to_json());
    } else if counts.connected {
        println!("{}", summary.to_text());
    }
    result
}

/// Connects, sends, waits for the acknowledgements; fills `counts`.
async fn exchange(args: SendArgs, counts: &mut Counts) -> anyhow::Result<()> {
    // The parsers bound every duration to 30 days and the rate to
    // 0.001..=1e9 per second, so no sum below overflows.
    let (connect_timeout, timeout, grace) = (args.connect_timeout, args.timeout, args.grace);
    let identity = load_identity(args.key.as_deref())?;
    let to = args.to;
    let bind = args.bind.unwrap_or_else(|| default_bind(to.addr));
    let mut quic = QuicConfig::default();
    quic.handshake_timeout(connect_timeout);
    let transport = QuicTransport::bind(bind, &identity, quic)
        .with_context(|| format!("cannot bind a QUIC endpoint at {bind}"))?;

    let mut config = ManagerConfig::default();
    config.connect_timeout(connect_timeout);
    config.batch_mut().policy(args.policy.into());
    let manager = ConnectionManager::new(config, Arc::new(transport))?;
    let mut events = manager.events().context("event stream already taken")?;

    // A dial has its own timeouts; this outer bound only guards against a hang.
    let connected = tokio::time::timeout(
        connect_timeout + Duration::from_secs(1),
        manager.connect(to),
    )
    .await;
    match connected {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            manager.shutdown(Duration::ZERO).await;
            bail!("{}", describe_connect_error(&e, &to));
        }
        Err(_) => {
            manager.shutdown(Duration::ZERO).await;
            bail!(
                "peer unreachable: no answer from {} within the connect timeout",
                to.addr
            );
        }
    }
    counts.connected = true;
    tracing::info!(peer = %to, "connected");

    let payload = Bytes::from(vec![0xa5; args.size]);
    let start = Instant::now();
    let deadline = start + timeout;
    let mut back = HandedBack::default();
    let mut sent = 0u64;
    let mut stop: Option<String> = None;
    while sent < args.count {
        if let Some(r) = args.rate {
            // `sent / r` can exceed any duration (a slow rate, a huge count):
            // a due time past the deadline, or past what a clock can hold, ends the run.
            let due = Duration::try_from_secs_f64(sent as f64 / r)
                .ok()
                .and_then(|d| start.checked_add(d))
                .filter(|&due| due <= deadline);
            let Some(due) = due else {
                stop = Some(format!("timed out after {timeout:?} while sending"));
                break;
            };
            tokio::time::sleep_until(due).await;
        }
        // `send` waits while the queue is full; an event (a lost connection)
        // or the deadline interrupts the wait. A cancelled `send` did not
        // accept its message, so nothing is miscounted.
        tokio::select! {
            r = manager.send(&to.peer, payload.clone()) => match r {
                Ok(()) => sent += 1,
                Err(e) => {
                    stop = Some(format!("send failed: {e}"));
                    break;
                }
            },
            ev = events.recv() => match ev {
                Some(ev) => back.on_event(ev),
                None => {
                    stop = Some("the connection manager stopped".to_owned());
                    break;
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                stop = Some(format!("timed out after {timeout:?} while sending"));
                break;
            }
        }
        if sent.is_multiple_of(EVENT_CHECK_EVERY) {
            back.drain(&mut events);
        }
        if let Some(why) = back.stop_reason() {
            stop = Some(why);
            break;
        }
    }

    // Wait until every accepted message is acknowledged or handed back; on a
    // lost connection, the shutdown below hands back what is outstanding.
    while stop.is_none() {
        back.drain(&mut events);
        let acked = manager.metrics_snapshot().messages_acked;
        if acked + back.messages >= sent {
            break;
        }
        if let Some(why) = back.stop_reason() {
            stop = Some(why);
            break;
        }
        if Instant::now() >= deadline {
            stop.get_or_insert_with(|| {
                format!("timed out after {timeout:?} waiting for acknowledgements")
            });
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    counts.elapsed = start.elapsed();
    manager.shutdown(grace).await;
    back.drain(&mut events);
    let snap = manager.metrics_snapshot();
    counts.sent = sent;
    counts.delivered = snap.messages_acked;
    counts.undelivered = back.messages;
    counts.latency_p50 = snap.latency.p50;
    counts.latency_p99 = snap.latency.p99;

    if counts.delivered + counts.undelivered != sent {
        bail!(
            "delivery contract violated: {sent} accepted but {} acknowledged + {} handed back",
            counts.delivered,
            counts.undelivered
        );
    }
    if counts.delivered < args.count {
        let why = stop
            .or_else(|| back.first_reason.map(|r| r.to_string()))
            .unwrap_or_else(|| "unknown reason".to_owned());
        bail!(
            "{} of {} messages not delivered ({} handed back, {} not sent): {why}",
            args.count - counts.delivered,
            args.count,
            counts.undelivered,
            args.count - sent,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qudag_net::PeerId;

    fn to() -> PeerAddr {
        PeerAddr::new(
            PeerId::from_public_key(b"listener"),
            "127.0.0.1:4433".parse().unwrap(),
        )
    }

    #[track_caller]
    fn check(e: NetError, expect: &str) {
        let line = describe_connect_error(&e, &to());
        assert!(line.contains(expect), "{line:?} lacks {expect:?}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn connect_errors_are_actionable() {
        let other = PeerId::from_public_key(b"other");
        check(
            NetError::Transport(TransportError::PeerIdMismatch {
                expected: to().peer,
                actual: other,
            }),
            "peer id mismatch",
        );
        check(
            NetError::Transport(TransportError::Refused {
                peer: to().peer,
                detail: "closed during the handshake (code 7: connection limit reached)".into(),
            }),
            "refused by the peer at 127.0.0.1:4433: closed during the handshake (code 7",
        );
        let limit = describe_connect_error(
            &NetError::Transport(TransportError::Refused {
                peer: to().peer,
                detail: "code 7".into(),
            }),
            &to(),
        );
        assert!(!limit.contains("allow"), "{limit}");
        check(
            NetError::Transport(TransportError::Denied { peer: to().peer }),
            "its allow-list does not admit this node",
        );
        check(NetError::ConnectTimeout { peer: to().peer }, "unreachable");
        check(
            NetError::Transport(TransportError::Unreachable {
                peer: to().peer,
                addr: to().addr,
                detail: "no route".into(),
            }),
            "unreachable",
        );
        check(NetError::Shutdown, "cannot connect");
    }

    #[test]
    fn default_bind_follows_the_target() {
        assert_eq!(
            default_bind("127.0.0.1:9".parse().unwrap()),
            "127.0.0.1:0".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            default_bind("10.0.0.1:9".parse().unwrap()),
            "0.0.0.0:0".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            default_bind("[::1]:9".parse().unwrap()),
            "[::1]:0".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn handed_back_counts_messages_and_keeps_the_first_reason() {
        let mut b = HandedBack::default();
        let peer = to().peer;
        b.on_event(Event::Undelivered {
            peer,
            messages: vec![Bytes::new(); 3],
            reason: UndeliveredReason::Unreachable,
            maybe_delivered: false,
        });
        b.on_event(Event::Undelivered {
            peer,
            messages: vec![Bytes::new(); 2],
            reason: UndeliveredReason::Shutdown,
            maybe_delivered: true,
        });
        assert_eq!(b.messages, 5);
        assert_eq!(b.first_reason, Some(UndeliveredReason::Unreachable));
    }

    #[test]
    fn a_lost_connection_stops_sending() {
        let mut b = HandedBack::default();
        let peer = to().peer;
        b.on_event(Event::StateChanged {
            peer,
            from: ConnState::Connecting,
            to: ConnState::Connected,
        });
        assert_eq!(b.stop_reason(), None);
        b.on_event(Event::StateChanged {
            peer,
            from: ConnState::Connected,
            to: ConnState::Failed,
        });
        assert!(b.connection_lost);
        assert!(b.stop_reason().unwrap().contains("lost"));
        b.on_event(Event::Undelivered {
            peer,
            messages: vec![Bytes::new()],
            reason: UndeliveredReason::ConnectionFailed,
            maybe_delivered: true,
        });
        // The hand-back reason is more precise than the state change.
        assert!(b.stop_reason().unwrap().contains("connection failed"));
    }
}
