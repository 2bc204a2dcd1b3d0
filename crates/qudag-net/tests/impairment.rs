//! The manager over QUIC through a UDP impairment proxy (loss, delay with
//! jitter, reordering, duplication, a 10 s partition then heal), and a slow
//! receiver over the in-memory transport.
//!
//! In every scenario the delivery contract holds exactly: every accepted
//! message is received (in order, once) or handed back, and
//! acked + handed back == accepted. QUIC runs on real time here (real
//! sockets); every wait is on an event (`Incoming::recv`, `Events::recv`,
//! a channel) with `tokio::time::timeout` only as a failure guard.

mod support;

use std::time::Duration;

use qudag_metrics::ErrorKind;
use qudag_net::{
    ConnState, Event, Events, Incoming, ManagerConfig, MemoryNetwork, PeerAddr, QuicConfig,
    SendError,
};
use support::proxy::{Impairment, Proxy};
use support::{assert_contract, guard, index, memory_node, msg, quic_node, HandedBack, Node};
use tokio::sync::mpsc;

const GUARD: Duration = Duration::from_secs(60);
const MSG_LEN: usize = 32;

/// QUIC settings that notice a dead path in about 2 s.
fn quick_quic() -> QuicConfig {
    let mut q = QuicConfig::default();
    q.idle_timeout(Duration::from_secs(2))
        .keep_alive(Duration::from_millis(400))
        .handshake_timeout(Duration::from_secs(2));
    q
}

/// Manager settings for impaired paths: fast backoff, queued messages wait
/// through a long partition instead of coming back as unreachable.
fn patient_config() -> ManagerConfig {
    let mut c = ManagerConfig::default();
    c.connect_timeout(Duration::from_secs(2))
        .max_failed_dials(10_000)
        .unreachable_after(Duration::from_secs(120));
    c.backoff_mut()
        .base(Duration::from_millis(50))
        .cap(Duration::from_millis(500));
    c
}

/// Moves every received message number to a channel until the manager shuts down.
fn spawn_receiver(mut incoming: Incoming) -> mpsc::UnboundedReceiver<u32> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((_, m)) = incoming.recv().await {
            let _ = tx.send(index(&m));
        }
    });
    rx
}

/// Waits (on the channel) until message `last` is received; returns what was received meanwhile.
async fn recv_until(rx: &mut mpsc::UnboundedReceiver<u32>, last: u32, out: &mut Vec<u32>) {
    guard("receiving the last message", GUARD, async {
        loop {
            let i = rx.recv().await.expect("receiver alive");
            out.push(i);
            if i == last {
                return;
            }
        }
    })
    .await;
}

/// Waits for a state change of the sender's peer to `to`, recording every event on the way.
async fn wait_state(events: &mut Events, to: ConnState, seen: &mut HandedBack, limit: Duration) {
    guard(&format!("state {to:?}"), limit, async {
        loop {
            let ev = events.recv().await.expect("manager alive");
            let hit = matches!(ev, Event::StateChanged { to: t, .. } if t == to);
            seen.record(ev);
            if hit {
                return;
            }
        }
    })
    .await;
}

struct Pair {
    a: Node,
    b_peer: qudag_net::PeerId,
    b: qudag_net::ConnectionManager,
    rx: mpsc::UnboundedReceiver<u32>,
    proxy: Proxy,
}

/// `b` listens behind a proxy with `imp`; `a` connects to it through the proxy.
async fn pair(imp: Impairment, seed: u64) -> Pair {
    let b = quic_node(ManagerConfig::default(), quick_quic());
    let proxy = Proxy::start(b.addr.addr, imp, seed).await;
    let a = quic_node(patient_config(), quick_quic());
    guard(
        "connect through the proxy",
        GUARD,
        a.mgr.connect(PeerAddr::new(b.addr.peer, proxy.addr())),
    )
    .await
    .expect("connect through the proxy");
    Pair {
        b_peer: b.addr.peer,
        rx: spawn_receiver(b.incoming),
        b: b.mgr,
        a,
        proxy,
    }
}

/// Sends `0..n` from a to b through the impaired path; everything arrives,
/// in order, exactly once, and is acknowledged.
async fn all_delivered_through(imp: Impairment, n: u32, seed: u64) -> Pair {
    let mut p = pair(imp, seed).await;
    let (mgr, to) = (p.a.mgr.clone(), p.b_peer);
    let sender = tokio::spawn(async move {
        for i in 0..n {
            mgr.send(&to, msg(i, MSG_LEN)).await.expect("accepted");
        }
    });
    let mut received = Vec::new();
    recv_until(&mut p.rx, n - 1, &mut received).await;
    sender.await.expect("sender");
    p.a.mgr.shutdown(Duration::from_secs(10)).await;
    p.b.shutdown(Duration::from_secs(2)).await;
    let mut back = HandedBack::default();
    back.drain(&mut p.a.events);
    let snap = p.a.mgr.metrics_snapshot();
    assert_contract(n, &received, &back.messages, snap.messages_acked);
    assert_eq!(
        received.len() as u32,
        n,
        "the connection survived: nothing came back"
    );
    assert_eq!(snap.messages_acked, u64::from(n));
    assert_eq!(snap.memory_bytes, 0, "every buffer was given back");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_percent_loss_delivers_everything() {
    let imp = Impairment {
        loss: 0.01,
        ..Impairment::default()
    };
    let p = all_delivered_through(imp, 20_000, 1).await;
    let dropped = p
        .proxy
        .stats()
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 0, "the proxy dropped datagrams");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_delivers_everything() {
    let imp = Impairment {
        loss: 0.05,
        ..Impairment::default()
    };
    let p = all_delivered_through(imp, 10_000, 5).await;
    let dropped = p
        .proxy
        .stats()
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 0, "the proxy dropped datagrams");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_ms_delay_with_jitter_delivers_everything() {
    let imp = Impairment {
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(20),
        ..Impairment::default()
    };
    let p = all_delivered_through(imp, 10_000, 50).await;
    let rtt = p.a.mgr.metrics_snapshot().latency;
    // Latency is measured from send to ack: at least one delayed round trip.
    assert!(rtt.count > 0, "latency was measured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_and_duplicated_datagrams_deliver_everything_once() {
    let imp = Impairment {
        reorder: 0.1,
        reorder_hold: Duration::from_millis(15),
        duplicate: 0.05,
        jitter: Duration::from_millis(2),
        ..Impairment::default()
    };
    let p = all_delivered_through(imp, 10_000, 7).await;
    let s = p.proxy.stats();
    let (rcv, fwd) = (
        s.received.load(std::sync::atomic::Ordering::Relaxed),
        s.forwarded.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        fwd > rcv,
        "the proxy duplicated datagrams ({fwd} forwarded of {rcv})"
    );
}

/// A 10 s partition: the connection fails with a typed error, what was in
/// flight comes back, what was queued during the partition waits, and after
/// the heal the sender redials (with backoff) and delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_second_partition_then_heal_recovers() {
    let mut p = pair(Impairment::default(), 10).await;
    let mut seen = HandedBack::default();
    let to = p.b_peer;
    let mut received = Vec::new();
    let mut next = 0u32;

    // Phase 1: a healthy exchange.
    for _ in 0..2_000 {
        p.a.mgr
            .send(&to, msg(next, MSG_LEN))
            .await
            .expect("accepted");
        next += 1;
    }
    recv_until(&mut p.rx, next - 1, &mut received).await;

    // Phase 2: cut, then send: these are written into a dead path.
    let cut_at = tokio::time::Instant::now();
    p.proxy.cut();
    for _ in 0..500 {
        p.a.mgr
            .send(&to, msg(next, MSG_LEN))
            .await
            .expect("accepted");
        next += 1;
    }
    // The idle timeout notices the dead path.
    wait_state(
        &mut p.a.events,
        ConnState::Failed,
        &mut seen,
        Duration::from_secs(15),
    )
    .await;
    // Phase 3: sent while the path is down: they queue and wait for a redial.
    let phase3 = next;
    for _ in 0..500 {
        p.a.mgr
            .send(&to, msg(next, MSG_LEN))
            .await
            .expect("accepted");
        next += 1;
    }
    // The partition lasts 10 s: this sleep is the scenario, not synchronisation.
    tokio::time::sleep_until(cut_at + Duration::from_secs(10)).await;
    let during = p.a.mgr.metrics_snapshot();
    p.proxy.heal();

    wait_state(
        &mut p.a.events,
        ConnState::Connected,
        &mut seen,
        Duration::from_secs(15),
    )
    .await;
    // Phase 4: after the heal.
    for _ in 0..500 {
        p.a.mgr
            .send(&to, msg(next, MSG_LEN))
            .await
            .expect("accepted");
        next += 1;
    }
    recv_until(&mut p.rx, next - 1, &mut received).await;

    p.a.mgr.shutdown(Duration::from_secs(10)).await;
    p.b.shutdown(Duration::from_secs(2)).await;
    seen.drain(&mut p.a.events);
    while let Ok(i) = p.rx.try_recv() {
        received.push(i);
    }
    let snap = p.a.mgr.metrics_snapshot();
    assert_contract(next, &received, &seen.messages, snap.messages_acked);

    // Typed failures were counted while the path was down: the lost
    // connection, then redials that timed out.
    let dial_errors = during.errors.get(ErrorKind::HandshakeFailed)
        + during.errors.get(ErrorKind::DialFailed)
        + during.errors.get(ErrorKind::Transport);
    assert!(
        dial_errors > 0,
        "redials during the partition failed with typed errors: {:?}",
        during.errors.iter().collect::<Vec<_>>()
    );
    assert!(
        seen.states
            .iter()
            .any(|&(_, to)| to == ConnState::Connecting),
        "the sender redialed: {:?}",
        seen.states
    );
    // Messages queued during the partition waited for the redial and arrived.
    let got: std::collections::HashSet<u32> = received.iter().copied().collect();
    assert!(
        (phase3..next).all(|i| got.contains(&i)),
        "messages sent during the partition and after the heal were delivered"
    );
    assert!(
        seen.messages.iter().all(|&i| i < phase3),
        "only messages written into the dead path came back"
    );
}

/// A receiver that does not read: the sender's memory stays within the bound
/// its configuration implies, and `send` waits instead of buffering.
///
/// In-memory transport with paused time: when every task is idle the
/// runtime advances the clock, so `timeout(1 s, send)` expiring means `send`
/// is blocked for good, not merely slow.
#[tokio::test(start_paused = true)]
async fn slow_receiver_bounds_sender_memory_and_send_waits() {
    const QUEUE: usize = 64;
    const UNACKED: usize = 4;
    const LEN: usize = 100;
    let net = MemoryNetwork::with_pipe_capacity(16 * 1024);
    let mut config = ManagerConfig::default();
    config
        .queue_capacity(QUEUE)
        .max_unacked_batches(UNACKED)
        .incoming_capacity(2)
        .ack_timeout(Duration::from_secs(3600));
    let a = memory_node(&net, "sender", config.clone());
    let mut b = memory_node(&net, "slow receiver", config);
    a.mgr.connect(b.addr).await.expect("connect");
    let to = b.addr.peer;

    // What the sender may hold: its queue, the unacknowledged batches, and
    // the session's read and write buffers (64 KiB each at most).
    let batch_msgs = qudag_net::BatchConfig::default().get_max_messages();
    let batch_bytes = batch_msgs * (LEN + 4) + 29;
    let bound = (QUEUE * LEN + UNACKED * batch_bytes + 2 * 64 * 1024 + batch_bytes) as i64;

    let mut accepted = 0u32;
    let mut max_memory = 0i64;
    let mut full_rounds = 0;
    // Paused time: each `sleep` returns once every task is idle (the clock
    // only advances then), so it lets the driver and the reader run until
    // they block, deterministically.
    for _round in 0..200 {
        loop {
            match a.mgr.try_send(&to, msg(accepted, LEN)) {
                Ok(()) => accepted += 1,
                Err(SendError::Full { .. }) => break,
                Err(other) => panic!("unexpected send error {other:?}"),
            }
        }
        full_rounds += 1;
        max_memory = max_memory.max(a.mgr.metrics_snapshot().memory_bytes);
        tokio::time::sleep(Duration::from_millis(10)).await;
        max_memory = max_memory.max(a.mgr.metrics_snapshot().memory_bytes);
    }
    assert!(full_rounds > 0);
    assert!(
        max_memory <= bound,
        "sender memory {max_memory} exceeds the configured bound {bound}"
    );
    eprintln!(
        "slow receiver: accepted {accepted}, sender memory peak {max_memory} B, bound {bound} B"
    );
    let before = accepted;
    // More rounds accept nothing more: the sender is blocked, not buffering.
    for _ in 0..20 {
        assert!(matches!(
            a.mgr.try_send(&to, msg(accepted, LEN)),
            Err(SendError::Full { .. })
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(accepted, before);
    assert!(
        (accepted as usize) < 10 * (QUEUE + UNACKED * batch_msgs),
        "accepted {accepted}: far more than the queue and the window"
    );
    // `send` waits while the queue is full.
    let blocked =
        tokio::time::timeout(Duration::from_secs(1), a.mgr.send(&to, msg(accepted, LEN))).await;
    assert!(
        blocked.is_err(),
        "send completed while the receiver does not read"
    );

    // The receiver starts reading: everything arrives, in order, and send completes.
    let sender = {
        let mgr = a.mgr.clone();
        tokio::spawn(async move {
            mgr.send(&to, msg(accepted, LEN))
                .await
                .expect("accepted once there is room");
        })
    };
    let total = accepted + 1;
    let mut received = Vec::new();
    guard("slow receiver catches up", GUARD, async {
        while received.len() < total as usize {
            let (_, m) = b.incoming.recv().await.expect("alive");
            received.push(index(&m));
        }
    })
    .await;
    sender.await.expect("sender");
    a.mgr.shutdown(Duration::from_secs(5)).await;
    b.mgr.shutdown(Duration::from_secs(5)).await;
    let mut back = HandedBack::default();
    let mut events = a.events;
    back.drain(&mut events);
    let snap = a.mgr.metrics_snapshot();
    assert_contract(total, &received, &back.messages, snap.messages_acked);
    assert_eq!(snap.messages_acked, u64::from(total));
    assert_eq!(snap.memory_bytes, 0);
}
