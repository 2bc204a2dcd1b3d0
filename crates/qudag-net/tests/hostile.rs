//! Hostile input: a raw attacker peer that holds a genuine authenticated
//! connection and session keys, then sends tampered, truncated, oversized,
//! replayed, reordered and malformed batch frames. Each closes only that
//! connection (application close code 4, "protocol violation"), counts a
//! typed error, delivers nothing from the bad frame, and leaves an honest
//! peer of the same manager unaffected. Over QUIC, a peer presenting a
//! certificate for another key is refused before any message.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use qudag_batch::{
    encode_ack_frame, encode_batch_frame, encode_resume_frame, CodecLimits, Frame, FrameDecoder,
    Resume,
};
use qudag_crypto::{RingSealer, Sealer, SessionKey, KEY_LEN, LABEL_DIALER_TO_LISTENER};
use qudag_metrics::ErrorKind;
use qudag_net::Incoming;
use qudag_net::{
    CloseReason, ConnState, Connection, ManagerConfig, MemoryNetwork, MemoryTransport, NetError,
    PeerAddr, PeerId, QuicConfig, QuicTransport, Transport, TransportError,
};
use support::{guard, memory_node, quic_node, rss_bytes, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const GUARD: Duration = Duration::from_secs(20);

/// The attacker: an authenticated connection to the victim, its stream and
/// the sealer for the dialer-to-listener direction.
struct Attacker {
    _transport: Arc<dyn Transport>,
    conn: Arc<dyn Connection>,
    writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    sealer: RingSealer,
}

async fn attacker(net: &MemoryNetwork, name: &str, victim: PeerAddr) -> Attacker {
    let t: Arc<MemoryTransport> = Arc::new(net.bind(PeerId::from_public_key(name.as_bytes())));
    attacker_on(t, name, victim).await
}

/// An attacker on any transport (`name` seeds its incarnation).
async fn attacker_on(t: Arc<dyn Transport>, name: &str, victim: PeerAddr) -> Attacker {
    let conn = t.dial(&victim).await.expect("attacker dials");
    let (mut writer, reader) = conn.open_stream().await.expect("stream");
    let mut key = [0u8; KEY_LEN];
    // The exporter context: the dialer's PeerId, then the listener's.
    let mut context = [0u8; 64];
    context[..32].copy_from_slice(t.local_peer().as_bytes());
    context[32..].copy_from_slice(victim.peer.as_bytes());
    conn.export_keying_material(&mut key, LABEL_DIALER_TO_LISTENER, &context)
        .expect("export");
    // A session starts with a RESUME frame; the attacks follow it.
    let mut resume = BytesMut::new();
    let incarnation = u64::from_be_bytes(
        name.as_bytes()
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([1; 8]),
    );
    encode_resume_frame(
        &Resume {
            incarnation: incarnation.max(1),
            known: 0,
            next: 0,
        },
        &mut resume,
    );
    writer.write_all(&resume).await.expect("resume");
    Attacker {
        _transport: t,
        conn,
        writer,
        reader,
        sealer: RingSealer::new(SessionKey::from_bytes(key)),
    }
}

impl Attacker {
    /// A genuine sealed BATCH frame with sequence number `seq`.
    fn frame(&mut self, seq: u64, messages: &[&[u8]]) -> BytesMut {
        let mut out = BytesMut::new();
        let spans = encode_batch_frame(seq, seq, messages, &mut out);
        let (head, rest) = out.split_at_mut(spans.body.start);
        let (body, tag) = rest.split_at_mut(spans.body.len());
        let t = self
            .sealer
            .seal_in_place(seq, &head[spans.aad.clone()], body)
            .expect("seal");
        tag.copy_from_slice(&t);
        out
    }

    async fn write(&mut self, bytes: &[u8]) {
        // The victim may close first; a failed write is fine, the close reason tells.
        let _ = self.writer.write_all(bytes).await;
        let _ = self.writer.flush().await;
    }

    /// Waits until the victim closes the connection, and returns why.
    async fn closed(&self) -> CloseReason {
        guard("the victim closes the attacker", GUARD, self.conn.closed()).await
    }
}

/// The victim's received messages, forwarded by a task.
fn spawn_receiver(mut incoming: Incoming) -> mpsc::UnboundedReceiver<(PeerId, Bytes)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = incoming.recv().await {
            let _ = tx.send(m);
        }
    });
    rx
}

/// One hostile case: what the attacker writes, and the error kind it must count.
struct Case {
    name: &'static str,
    kind: ErrorKind,
    /// Legit messages the attacker sends first (delivered), before the bad bytes.
    legit: usize,
}

/// Writes the bytes of `case` on a fresh attacker connection.
async fn attack(a: &mut Attacker, case: &str) {
    match case {
        "tampered body" => {
            let mut f = a.frame(0, &[b"evil-body"]);
            f[qudag_batch::BATCH_HEADER_LEN + 5] ^= 0x01;
            a.write(&f).await;
        }
        "tampered tag" => {
            let mut f = a.frame(0, &[b"evil-tag"]);
            let last = f.len() - 1;
            f[last] ^= 0x80;
            a.write(&f).await;
        }
        "tampered aad length" => {
            // The length field is authenticated: claim one byte less and pad
            // nothing. The frame is still well formed for the decoder (the
            // tag's last byte becomes part of the next frame), so opening fails.
            let mut f = a.frame(0, &[b"evil-aad"]);
            f[3] -= 1;
            f.truncate(f.len() - 1);
            a.write(&f).await;
        }
        "tampered aad seq" => {
            let mut f = a.frame(0, &[b"evil-seq"]);
            f[12] ^= 0x01; // seq 0 -> 1: AAD and nonce change
            a.write(&f).await;
        }
        "replayed" => {
            let f = a.frame(0, &[b"legit-replay"]);
            a.write(&f).await;
            a.write(&f).await;
        }
        "reordered" => {
            let f0 = a.frame(0, &[b"evil-first"]);
            let f1 = a.frame(1, &[b"evil-second"]);
            a.write(&f1).await;
            a.write(&f0).await;
        }
        "truncated" => {
            let f = a.frame(0, &[b"evil-truncated"]);
            a.write(&f[..f.len() - 5]).await;
            let _ = a.writer.shutdown().await;
        }
        "oversized" => {
            // A length field far above the frame limit: refused before anything is allocated.
            a.write(&[0xff, 0xff, 0xff, 0xf0, qudag_batch::KIND_BATCH])
                .await;
        }
        "unknown kind" => {
            a.write(&[0, 0, 0, 9, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0]).await;
        }
        "sealed garbage body" => {
            // Authenticates, but the body claims 1000 messages and holds none.
            let mut out = BytesMut::new();
            let spans = encode_batch_frame(0, 0, &[] as &[&[u8]], &mut out);
            out[spans.body.start..spans.body.start + 4].copy_from_slice(&1000u32.to_be_bytes());
            let (head, rest) = out.split_at_mut(spans.body.start);
            let (body, tag) = rest.split_at_mut(spans.body.len());
            let t = a
                .sealer
                .seal_in_place(0, &head[spans.aad.clone()], body)
                .expect("seal");
            tag.copy_from_slice(&t);
            a.write(&out).await;
        }
        other => unreachable!("no case {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_only_that_connection_with_a_typed_error() {
    let net = MemoryNetwork::new();
    let victim = memory_node(&net, "victim", ManagerConfig::default());
    let mut honest = memory_node(&net, "honest", ManagerConfig::default());
    let Node {
        mgr: vmgr,
        incoming: vin,
        addr: vaddr,
        events: _vevents,
    } = victim;
    let mut vrx = spawn_receiver(vin);
    honest.mgr.connect(vaddr).await.expect("honest connects");

    let cases = [
        Case {
            name: "tampered body",
            kind: ErrorKind::Authentication,
            legit: 0,
        },
        Case {
            name: "tampered tag",
            kind: ErrorKind::Authentication,
            legit: 0,
        },
        Case {
            name: "tampered aad length",
            kind: ErrorKind::Authentication,
            legit: 0,
        },
        Case {
            name: "tampered aad seq",
            kind: ErrorKind::Sequence,
            legit: 0,
        },
        Case {
            name: "replayed",
            kind: ErrorKind::Sequence,
            legit: 1,
        },
        Case {
            name: "reordered",
            kind: ErrorKind::Sequence,
            legit: 0,
        },
        Case {
            name: "truncated",
            kind: ErrorKind::Decode,
            legit: 0,
        },
        Case {
            name: "oversized",
            kind: ErrorKind::Decode,
            legit: 0,
        },
        Case {
            name: "unknown kind",
            kind: ErrorKind::Decode,
            legit: 0,
        },
        Case {
            name: "sealed garbage body",
            kind: ErrorKind::Decode,
            legit: 0,
        },
    ];
    for (n, case) in cases.iter().enumerate() {
        let before = vmgr.metrics_snapshot().errors;
        let name = format!("mallory-{n}");
        let mallory = PeerId::from_public_key(name.as_bytes());
        let mut a = attacker(&net, &name, vaddr).await;
        attack(&mut a, case.name).await;
        let reason = a.closed().await;
        assert!(
            matches!(reason, CloseReason::Remote { code: 4, .. }),
            "{}: closed with {reason:?}, expected the protocol violation code 4",
            case.name
        );
        let after = vmgr.metrics_snapshot().errors;
        for kind in [
            ErrorKind::Authentication,
            ErrorKind::Sequence,
            ErrorKind::Decode,
        ] {
            let expected = before.get(kind) + u64::from(kind == case.kind);
            assert_eq!(after.get(kind), expected, "{}: {kind:?} count", case.name);
        }

        // The honest peer is unaffected, both ways.
        let ping = Bytes::from(format!("honest-{n}"));
        honest
            .mgr
            .send(&vaddr.peer, ping.clone())
            .await
            .expect("accepted");
        let mut from_mallory = Vec::new();
        guard("the honest message arrives", GUARD, async {
            loop {
                let (from, m) = vrx.recv().await.expect("victim alive");
                if from == honest.addr.peer {
                    assert_eq!(m, ping, "{}: honest messages in order", case.name);
                    break;
                }
                assert_eq!(
                    from, mallory,
                    "{}: only the attacker and the honest peer",
                    case.name
                );
                from_mallory.push(m);
            }
        })
        .await;
        assert_eq!(
            from_mallory.len(),
            case.legit,
            "{}: only the legit frames were delivered",
            case.name
        );
        assert!(
            from_mallory.iter().all(|m| m.starts_with(b"legit")),
            "{}: nothing from the bad frame was delivered: {from_mallory:?}",
            case.name
        );
        let pong = Bytes::from(format!("victim-{n}"));
        vmgr.send(&honest.addr.peer, pong.clone())
            .await
            .expect("accepted");
        let (from, m) = guard("the victim's reply arrives", GUARD, honest.incoming.recv())
            .await
            .expect("honest alive");
        assert_eq!((from, m), (vaddr.peer, pong));
        assert_eq!(vmgr.status(&honest.addr.peer), Some(ConnState::Connected));
    }
    let snap = vmgr.metrics_snapshot();
    let protocol_errors = snap.errors.get(ErrorKind::Authentication)
        + snap.errors.get(ErrorKind::Sequence)
        + snap.errors.get(ErrorKind::Decode);
    assert_eq!(protocol_errors, cases.len() as u64);
    honest.mgr.shutdown(Duration::from_secs(2)).await;
    vmgr.shutdown(Duration::from_secs(2)).await;
    assert_eq!(honest.mgr.metrics_snapshot().messages_undelivered, 0);
}

/// A listener presenting a certificate for a key other than the one the
/// dialer expects is refused during the handshake: a typed mismatch on the
/// dialer, a counted error, and the impostor receives nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_for_another_key_is_refused_before_any_message() {
    let dialer = quic_node(ManagerConfig::default(), QuicConfig::default());
    let mut impostor = quic_node(ManagerConfig::default(), QuicConfig::default());
    let expected = PeerId::from_public_key(b"the peer the dialer meant");
    let to = PeerAddr::new(expected, impostor.addr.addr);
    match guard("dial the impostor", GUARD, dialer.mgr.connect(to)).await {
        Err(NetError::Transport(TransportError::PeerIdMismatch {
            expected: e,
            actual,
        })) => {
            assert_eq!((e, actual), (expected, impostor.addr.peer));
        }
        other => panic!("expected PeerIdMismatch, got {other:?}"),
    }
    assert_eq!(dialer.mgr.status(&expected), Some(ConnState::Failed));
    assert_eq!(
        dialer
            .mgr
            .metrics_snapshot()
            .errors
            .get(ErrorKind::PeerIdMismatch),
        1
    );
    guard(
        "dialer shutdown",
        GUARD,
        dialer.mgr.shutdown(Duration::from_secs(1)),
    )
    .await;
    guard(
        "impostor shutdown",
        GUARD,
        impostor.mgr.shutdown(Duration::from_secs(1)),
    )
    .await;
    // The impostor never got a connection, a peer, or a message.
    assert!(
        impostor.incoming.try_recv().is_none(),
        "the impostor received nothing"
    );
    assert_eq!(impostor.mgr.metrics_snapshot().messages_received, 0);
    assert!(
        !impostor.mgr.peers().contains(&dialer.addr.peer),
        "the impostor never learned the dialer as a peer"
    );
}

/// How the attacker floods its ACKs.
#[derive(Debug, Clone, Copy)]
enum AckFlood {
    /// `ACK(0)` again and again: never a valid acknowledgement.
    Zeros,
    /// `ACK(1)` (valid once: the victim sent one message) then repeats.
    Repeats,
    /// `ACK(2)`, `ACK(3)`, ...: each advances, all cover messages never sent.
    CountingUp,
}

/// An authenticated peer floods the victim with ACK frames over QUIC (the
/// review grew a victim's RSS by 1.4 GB in 12 s this way). Each flood is a
/// protocol violation: the victim closes that connection (code 4) after at
/// most a few frames, counts a typed error, and its memory stays within a
/// bound computed from the config (the QUIC receive window, which bounds
/// what it buffers unread, plus slack); the honest peer is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_flood_closes_the_connection_and_memory_stays_bounded() {
    const FLOOD_BYTES: usize = 64 << 20; // 5 million ACK frames, if the victim let it
    let quic = QuicConfig::default();
    // QuicConfig's default connection receive window (16 MiB: what quinn
    // buffers unread for one connection) plus 32 MiB of slack.
    let bound: u64 = (16 << 20) + (32 << 20);
    let victim = quic_node(ManagerConfig::default(), quic.clone());
    let honest = quic_node(ManagerConfig::default(), QuicConfig::default());
    honest
        .mgr
        .connect(victim.addr)
        .await
        .expect("honest connects");
    let Node {
        mgr: vmgr,
        incoming: vin,
        addr: vaddr,
        events: _vevents,
    } = victim;
    let mut vrx = spawn_receiver(vin);
    let rss_before = rss_bytes();
    let memory_before = vmgr.metrics_snapshot().memory_bytes;

    for (n, flood) in [AckFlood::Zeros, AckFlood::Repeats, AckFlood::CountingUp]
        .into_iter()
        .enumerate()
    {
        let before = vmgr.metrics_snapshot().errors.get(ErrorKind::Sequence);
        let identity = qudag_net::Identity::generate().expect("identity");
        let t = QuicTransport::bind(
            "127.0.0.1:0".parse().expect("addr"),
            &identity,
            quic.clone(),
        )
        .expect("bind");
        let mut a = attacker_on(Arc::new(t), &format!("ackflood{n}"), vaddr).await;
        let mallory = identity.peer_id();
        let mut frame = BytesMut::new();
        if !matches!(flood, AckFlood::Zeros) {
            // The victim sends the attacker one message, so ACK(1) is valid once.
            guard("the victim knows the attacker", GUARD, async {
                while vmgr.status(&mallory) != Some(ConnState::Connected) {
                    tokio::task::yield_now().await;
                }
            })
            .await;
            vmgr.send(&mallory, Bytes::from_static(b"to mallory"))
                .await
                .expect("accepted");
            let mut decoder = FrameDecoder::new(CodecLimits::default());
            let mut buf = BytesMut::new();
            guard("the victim's batch reaches the attacker", GUARD, async {
                loop {
                    if let Some(Frame::Batch(_)) = decoder.decode(&mut buf).expect("decodes") {
                        break;
                    }
                    let got = a.reader.read_buf(&mut buf).await.expect("read");
                    assert!(got > 0, "the victim closed the stream early");
                }
            })
            .await;
        }
        // Flood until the victim closes the connection (a write fails).
        let mut next = 1u64;
        let mut written = 0usize;
        guard("the flood ends", GUARD, async {
            while written < FLOOD_BYTES {
                frame.clear();
                while frame.len() < 64 * 1024 {
                    match flood {
                        AckFlood::Zeros => encode_ack_frame(0, &mut frame),
                        AckFlood::Repeats => encode_ack_frame(1, &mut frame),
                        AckFlood::CountingUp => {
                            next += 1;
                            encode_ack_frame(next, &mut frame);
                        }
                    }
                }
                if a.writer.write_all(&frame).await.is_err() {
                    return;
                }
                written += frame.len();
            }
        })
        .await;
        let reason = a.closed().await;
        assert!(
            matches!(reason, CloseReason::Remote { code: 4, .. }),
            "{flood:?}: closed with {reason:?}, expected the protocol violation code 4"
        );
        assert!(
            written < FLOOD_BYTES,
            "{flood:?}: the victim took all {written} bytes of ACKs without closing"
        );
        let after = vmgr.metrics_snapshot().errors.get(ErrorKind::Sequence);
        assert_eq!(after, before + 1, "{flood:?}: one typed error");
        eprintln!(
            "{flood:?}: attacker wrote {} KiB before the close",
            written / 1024
        );

        // The honest peer is unaffected.
        let ping = Bytes::from(format!("honest-{n}"));
        honest
            .mgr
            .send(&vaddr.peer, ping.clone())
            .await
            .expect("accepted");
        let (from, m) = guard("the honest message arrives", GUARD, async {
            loop {
                let (from, m) = vrx.recv().await.expect("victim alive");
                if from == honest.addr.peer {
                    return (from, m);
                }
            }
        })
        .await;
        assert_eq!((from, m), (honest.addr.peer, ping));
    }
    if let (Some(before), Some(after)) = (rss_before, rss_bytes()) {
        let grown = after.saturating_sub(before);
        eprintln!(
            "ACK floods: RSS grew {} KiB (bound {} KiB)",
            grown / 1024,
            bound / 1024
        );
        assert!(
            grown < bound,
            "RSS grew {grown} bytes, over the bound {bound}"
        );
    }
    let memory_after = vmgr.metrics_snapshot().memory_bytes;
    assert!(
        memory_after - memory_before < 1 << 20,
        "the memory gauge grew from {memory_before} to {memory_after}"
    );
    honest.mgr.shutdown(Duration::from_secs(2)).await;
    vmgr.shutdown(Duration::from_secs(2)).await;
}

/// A peer that starts a frame and never finishes it (a slow-loris on the
/// batch stream) cannot hold the victim's read buffer: after the ack
/// timeout with the frame incomplete, the victim closes the connection
/// (code 4) and counts a decode error.
#[tokio::test(start_paused = true)]
async fn an_incomplete_frame_times_out() {
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config.ack_timeout(Duration::from_secs(2));
    let victim = memory_node(&net, "victim", config);
    let mut a = attacker(&net, "slowloris", victim.addr).await;
    let f = a.frame(0, &[b"a frame that never ends"]);
    a.write(&f[..f.len() / 2]).await;
    let started = tokio::time::Instant::now();
    let reason = a.closed().await;
    let waited = started.elapsed();
    assert!(
        matches!(reason, CloseReason::Remote { code: 4, .. }),
        "closed with {reason:?}"
    );
    assert!(
        waited >= Duration::from_secs(2),
        "closed after {waited:?}, before the ack timeout"
    );
    assert_eq!(
        victim.mgr.metrics_snapshot().errors.get(ErrorKind::Decode),
        1
    );
    victim.mgr.shutdown(Duration::from_secs(1)).await;
}
