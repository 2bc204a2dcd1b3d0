//! Floods: 1,000 concurrent `connect` calls under a limit of 100, and a
//! flood of replayed QUIC Initials (half-open handshakes) while an honest
//! peer connects.
//!
//! (10,000 concurrent connections between two processes is a load test: it
//! lives in `cargo xtask bench`, outside the default test run.)

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qudag_net::{
    ConnState, ConnectionManager, Event, Identity, ManagerConfig, MemoryNetwork, NetError,
    PeerAddr, QuicConfig, QuicTransport, Transport,
};
use support::{guard, memory_node, quic_node, raw_session, rss_bytes};
use tokio::io::AsyncReadExt;

const GUARD: Duration = Duration::from_secs(60);

/// 1,000 concurrent `connect` calls to 1,000 distinct peers with
/// `max_connections(100)`: the count of open connections never exceeds 100,
/// every refusal is a typed `Limit` error, no refused dial keeps a slot, and
/// shutdown leaves none taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connects_never_exceed_the_limit() {
    let _serial = SERIAL.lock().await;
    const PEERS: usize = 1_000;
    const LIMIT: usize = 100;
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    config
        .pool_mut()
        .max_connections(LIMIT)
        .max_pending_dials(PEERS);
    let hub = memory_node(&net, "hub", config);
    let targets: Vec<_> = (0..PEERS)
        .map(|i| memory_node(&net, &format!("target-{i}"), ManagerConfig::default()))
        .collect();

    // Samples the limiter's count while the connects run (no event to await:
    // the point is to observe every intermediate value we can).
    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (mgr, done, max_seen) = (hub.mgr.clone(), done.clone(), max_seen.clone());
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !done.load(Ordering::Acquire) {
                max_seen.fetch_max(mgr.open_connections(), Ordering::AcqRel);
                samples += 1;
                tokio::task::yield_now().await;
            }
            samples
        })
    };
    let connects: Vec<_> = targets
        .iter()
        .map(|t| {
            let (mgr, to): (ConnectionManager, PeerAddr) = (hub.mgr.clone(), t.addr);
            tokio::spawn(async move { mgr.connect(to).await })
        })
        .collect();
    let mut ok = 0usize;
    let mut limited = 0usize;
    for c in connects {
        match guard("a connect returns", GUARD, c).await.expect("task") {
            Ok(()) => ok += 1,
            Err(NetError::Limit(_)) => limited += 1,
            Err(other) => panic!("unexpected connect error {other:?}"),
        }
    }
    done.store(true, Ordering::Release);
    let samples = sampler.await.expect("sampler");
    let max = max_seen.load(Ordering::Acquire);
    eprintln!(
        "connect flood: {ok} connected, {limited} refused, max open {max} over {samples} samples"
    );

    assert!(max <= LIMIT, "open connections peaked at {max} > {LIMIT}");
    assert_eq!(ok + limited, PEERS);
    assert!(ok > 0 && ok <= LIMIT, "{ok} connected");
    assert!(limited >= PEERS - LIMIT);
    assert_eq!(hub.mgr.open_connections(), ok, "refused dials hold no slot");
    let snap = hub.mgr.metrics_snapshot();
    assert!(snap.errors.get(qudag_metrics::ErrorKind::LimitReached) >= limited as u64);

    hub.mgr.shutdown(Duration::from_secs(2)).await;
    assert_eq!(
        hub.mgr.open_connections(),
        0,
        "no slot is taken after shutdown"
    );
    for t in &targets {
        t.mgr.shutdown(Duration::from_millis(100)).await;
    }
}

/// A genuine client Initial's destination connection ID (long header:
/// flags, version, DCID length, DCID), to tell captured Initials apart.
fn dcid(datagram: &[u8]) -> Option<Vec<u8>> {
    let len = usize::from(*datagram.get(5)?);
    datagram.get(6..6 + len).map(<[u8]>::to_vec)
}

/// The review's attack: 272 genuine client Initials, captured once, are
/// replayed to a victim with the default `QuicConfig` (256 handshake slots)
/// from silent sockets that never answer, spread over several source
/// addresses, and replayed again while the first round still holds its
/// state. Before address validation this held every slot for the whole
/// handshake timeout and refused every honest dial. Now unproven addresses
/// get a stateless Retry once `retry_above` handshakes are in progress, so
/// an honest dialer connects on its first attempt and exchanges messages,
/// and none of the replays becomes a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_initials_do_not_lock_out_an_honest_dialer() {
    let _serial = SERIAL.lock().await;
    const FLOOD: usize = 272;
    const SOURCES: u8 = 8;
    let quic = QuicConfig::default();
    let victim_transport = Arc::new(
        QuicTransport::bind(
            "127.0.0.1:0".parse().expect("addr"),
            &Identity::generate().expect("identity"),
            quic.clone(),
        )
        .expect("bind"),
    );
    let mut victim = support::node_on(victim_transport.clone(), ManagerConfig::default());
    let good = quic_node(ManagerConfig::default(), QuicConfig::default());

    // Silent sockets on their own loopback addresses: the replays' sources.
    let mut relays = Vec::new();
    for i in 0..SOURCES {
        let addr = std::net::SocketAddr::from(([127, 0, 1, 60 + i], 0));
        relays.push(tokio::net::UdpSocket::bind(addr).await.expect("bind relay"));
    }
    // Capture distinct genuine Initials: a client dials the first (silent) relay.
    let capturer = Arc::new(
        QuicTransport::bind(
            "127.0.0.1:0".parse().expect("addr"),
            &Identity::generate().expect("identity"),
            QuicConfig::default(),
        )
        .expect("bind"),
    );
    let to_relay = PeerAddr::new(victim.addr.peer, relays[0].local_addr().expect("addr"));
    let dials: Vec<_> = (0..FLOOD)
        .map(|_| {
            let c = capturer.clone();
            tokio::spawn(async move {
                let _ = c.dial(&to_relay).await;
            })
        })
        .collect();
    let mut initials: Vec<Vec<u8>> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    guard("capture Initials", GUARD, async {
        let mut buf = vec![0u8; 65536];
        while initials.len() < FLOOD {
            let (n, _) = relays[0].recv_from(&mut buf).await.expect("recv");
            if let Some(id) = dcid(&buf[..n]) {
                if ids.insert(id) {
                    initials.push(buf[..n].to_vec());
                }
            }
        }
    })
    .await;
    for d in dials {
        d.abort();
    }
    capturer.close();

    // The flood, twice: every Initial replayed to the victim from a silent
    // relay, paced (4 datagrams a millisecond) so that the victim's socket
    // buffer does not drop them.
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    for _round in 0..2 {
        for (i, initial) in initials.iter().enumerate() {
            if i % 4 == 0 {
                pace.tick().await;
            }
            let relay = &relays[i % relays.len()];
            relay
                .send_to(initial, victim.addr.addr)
                .await
                .expect("send");
        }
    }
    // The replays hold half-open handshakes, but no more than `retry_above`:
    // the rest were answered with a stateless Retry that nobody echoes.
    guard("the replays take their share of slots", GUARD, async {
        while victim_transport.handshakes_in_progress() < 64 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        victim_transport.handshakes_in_progress(),
        64,
        "replays from unproven addresses hold at most retry_above slots"
    );

    // The honest dialer gets in at once: no refusal, no backoff.
    guard(
        "the honest dialer connects",
        GUARD,
        good.mgr.connect(victim.addr),
    )
    .await
    .expect("an honest dial succeeds while the replays hold their state");
    good.mgr
        .send(&victim.addr.peer, Bytes::from_static(b"hello"))
        .await
        .expect("accepted");
    let (from, m) = guard("the good message arrives", GUARD, victim.incoming.recv())
        .await
        .expect("victim alive");
    assert_eq!((from, &m[..]), (good.addr.peer, &b"hello"[..]));
    assert_eq!(
        victim.mgr.peers(),
        vec![good.addr.peer],
        "no replayed Initial became a peer"
    );
    assert_eq!(victim.mgr.open_connections(), 1);
    good.mgr.shutdown(Duration::from_secs(1)).await;
    victim.mgr.shutdown(Duration::from_secs(1)).await;
}

/// `n` strangers named `{prefix}-{i}`, 32 at a time, each connects to
/// `to`, sends its RESUME, reads the victim's (the victim took the session
/// on) and leaves.
async fn leave_in_a_loop(net: &MemoryNetwork, to: PeerAddr, prefix: &str, n: usize) {
    const AT_ONCE: usize = 32;
    let mut next = 0;
    let mut running = tokio::task::JoinSet::new();
    while next < n || !running.is_empty() {
        while next < n && running.len() < AT_ONCE {
            let (net, name) = (net.clone(), format!("{prefix}-{next}"));
            running.spawn(async move {
                let mut s = raw_session(&net, &name, to).await.expect("dial");
                let mut resume = [0u8; qudag_batch::RESUME_FRAME_LEN];
                s.reader
                    .read_exact(&mut resume)
                    .await
                    .expect("victim's RESUME");
                s.conn.close(0, b"bye");
            });
            next += 1;
        }
        guard("a session ends", GUARD, running.join_next())
            .await
            .expect("running")
            .expect("session task");
    }
}

/// Serialises the tests of this file that read the process's RSS (the
/// others would move it).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits (yielding) until `f` holds, bounded by the guard.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    guard(what, GUARD, async {
        while !f() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// The review's attack: 1,024 fresh identities connect and idle, filling
/// the default connection limit (1,024). Before, honest peers were refused
/// (close code 7) for as long as they stayed. Now the oldest idle session of
/// a stranger is evicted to make room: an honest dialer gets in and
/// exchanges messages, the victim can still dial out, and once the honest
/// peer carried a message, more throwaways evict each other, never it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throwaway_identities_cannot_lock_out_an_honest_peer() {
    let _serial = SERIAL.lock().await;
    const THROWAWAYS: usize = 1_024;
    let net = MemoryNetwork::new();
    let mut victim = memory_node(&net, "victim", ManagerConfig::default());
    let limit = 1_024; // PoolConfig's default max_connections
    let mut held = Vec::new();
    for i in 0..THROWAWAYS {
        let s = raw_session(&net, &format!("throwaway-{i}"), victim.addr)
            .await
            .expect("a throwaway gets in while there is room");
        held.push(s);
    }
    let mgr = victim.mgr.clone();
    until("the throwaways hold every slot", || {
        mgr.open_connections() == limit
    })
    .await;

    // An honest peer dials in and exchanges messages both ways.
    let mut honest = memory_node(&net, "honest", ManagerConfig::default());
    guard(
        "the honest peer connects",
        GUARD,
        honest.mgr.connect(victim.addr),
    )
    .await
    .expect("an honest dial is not refused");
    honest
        .mgr
        .send(&victim.addr.peer, Bytes::from_static(b"hello"))
        .await
        .expect("accepted");
    let (from, m) = guard("the honest message arrives", GUARD, victim.incoming.recv())
        .await
        .expect("victim alive");
    assert_eq!((from, &m[..]), (honest.addr.peer, &b"hello"[..]));
    victim
        .mgr
        .send(&honest.addr.peer, Bytes::from_static(b"welcome"))
        .await
        .expect("accepted");
    let (from, m) = guard("the reply arrives", GUARD, honest.incoming.recv())
        .await
        .expect("honest alive");
    assert_eq!((from, &m[..]), (victim.addr.peer, &b"welcome"[..]));

    // The victim can still dial out.
    let other = memory_node(&net, "other", ManagerConfig::default());
    guard(
        "the victim dials out",
        GUARD,
        victim.mgr.connect(other.addr),
    )
    .await
    .expect("an outbound dial makes room too");

    // More throwaways evict each other, never the peer that carried
    // messages; each is in once the victim's RESUME reaches it.
    for i in 0..100 {
        let mut s = raw_session(&net, &format!("late-throwaway-{i}"), victim.addr)
            .await
            .expect("dial");
        let mut resume = [0u8; qudag_batch::RESUME_FRAME_LEN];
        guard(
            "the victim takes the session on",
            GUARD,
            s.reader.read_exact(&mut resume),
        )
        .await
        .expect("victim's RESUME");
        held.push(s);
    }
    assert_eq!(mgr.open_connections(), limit);
    assert_eq!(
        victim.mgr.status(&honest.addr.peer),
        Some(ConnState::Connected)
    );
    assert_eq!(
        victim.mgr.status(&other.addr.peer),
        Some(ConnState::Connected)
    );
    honest
        .mgr
        .send(&victim.addr.peer, Bytes::from_static(b"still here"))
        .await
        .expect("accepted");
    let (from, m) = guard(
        "the honest peer is still served",
        GUARD,
        victim.incoming.recv(),
    )
    .await
    .expect("victim alive");
    assert_eq!((from, &m[..]), (honest.addr.peer, &b"still here"[..]));
    // Room was made 102 times (the honest peer, the dial out, 100 late
    // throwaways), each time by evicting a throwaway.
    let evicted = victim
        .mgr
        .metrics_snapshot()
        .closes
        .get(qudag_metrics::CloseKind::Evicted);
    eprintln!("throwaways: {evicted} of {} evicted", held.len());
    assert_eq!(evicted, 102, "one eviction per newcomer");
    until("the evicted throwaways see their close", || {
        held.iter().filter(|s| !s.conn.is_alive()).count() == 102
    })
    .await;
    drop(held);
    honest.mgr.shutdown(Duration::from_secs(1)).await;
    victim.mgr.shutdown(Duration::from_secs(1)).await;
    other.mgr.shutdown(Duration::from_secs(1)).await;
}

/// The review's attack: 10,000 identities connect, send their RESUME and
/// leave, while the application (like `qudag-node listen`) never reads its
/// events. Before, each kept a driver for `peer_idle_timeout` (300 s) and
/// three state changes each piled up in an unbounded queue. Now a stranger
/// that exchanged no message is forgotten as soon as it leaves, and the
/// event queue holds at most `event_capacity` state changes (then reports
/// `Lagged`). RSS after 10,000 sessions is where it was, within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_leave_leaves_nothing_behind() {
    let _serial = SERIAL.lock().await;
    const SESSIONS: usize = 10_000;
    const WARMUP: usize = 1_000;
    let net = MemoryNetwork::new();
    let mut config = ManagerConfig::default();
    let event_capacity = 1_024;
    config.event_capacity(event_capacity);
    let mut victim = memory_node(&net, "victim", config);
    let mgr = victim.mgr.clone();
    // A warm-up round first, so that the allocator's arenas and the
    // runtime's pools have grown; then RSS measures what sessions leave.
    leave_in_a_loop(&net, victim.addr, "warmup", WARMUP).await;
    until("the warm-up strangers are forgotten", || {
        mgr.peers().is_empty() && mgr.open_connections() == 0
    })
    .await;
    let rss_before = rss_bytes();
    let memory_before = victim.mgr.metrics_snapshot().memory_bytes;
    leave_in_a_loop(&net, victim.addr, "leaver", SESSIONS).await;
    assert_eq!(
        victim
            .mgr
            .metrics_snapshot()
            .state_entries
            .get(qudag_metrics::ConnState::Connected),
        (WARMUP + SESSIONS) as u64,
        "every stranger got a session"
    );
    until("every stranger is forgotten", || {
        mgr.peers().is_empty() && mgr.open_connections() == 0
    })
    .await;
    let rss_after = rss_bytes();

    let (mut states, mut lagged, mut other) = (0usize, 0u64, 0usize);
    while let Some(ev) = victim.events.try_recv() {
        match ev {
            Event::StateChanged { .. } => states += 1,
            Event::Lagged { missed } => lagged += missed,
            _ => other += 1,
        }
    }
    eprintln!("connect-and-leave: {states} state changes queued, {lagged} dropped as lagged");
    assert!(states <= event_capacity, "{states} state changes queued");
    assert!(lagged > 0, "older state changes were dropped and reported");
    assert_eq!(other, 0, "nothing was handed back");
    let memory_after = victim.mgr.metrics_snapshot().memory_bytes;
    assert_eq!(memory_after, memory_before, "the memory gauge is back");
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let grown = after.saturating_sub(before);
        // What may stay: the event queue (event_capacity events) and
        // allocator noise; 16 MiB of slack (the review measured 91 MB for
        // 10,000 sessions before).
        let bound = (event_capacity * 256) as u64 + (16 << 20);
        eprintln!(
            "connect-and-leave: RSS grew {} KiB (bound {} KiB)",
            grown / 1024,
            bound / 1024
        );
        assert!(grown < bound, "RSS grew {grown} bytes, over {bound}");
    }
    assert!(
        victim.incoming.try_recv().is_none(),
        "nothing was delivered"
    );
    victim.mgr.shutdown(Duration::from_secs(1)).await;
}

/// Byte budgets, both ways. A sender whose peer does not read may hold at
/// most `queue_bytes` of accepted messages (`try_send` says `Full` while the
/// count limit is far away); a receiver whose application does not read
/// holds at most `incoming_bytes` of delivered batches (its memory gauge
/// stays under that plus one batch). Once the application reads, everything
/// arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_budgets_bound_what_a_silent_application_holds() {
    let _serial = SERIAL.lock().await;
    const MSG: usize = 4096;
    const QUEUE_BYTES: usize = 256 * 1024;
    const INCOMING_BYTES: usize = 64 * 1024;
    const BATCH: usize = 16 * 1024;
    let net = MemoryNetwork::new();
    let mut sender_cfg = ManagerConfig::default();
    sender_cfg.batch_mut().max_bytes(BATCH);
    sender_cfg.queue_bytes(QUEUE_BYTES);
    let mut receiver_cfg = ManagerConfig::default();
    receiver_cfg.batch_mut().max_bytes(BATCH);
    receiver_cfg.incoming_bytes(INCOMING_BYTES);
    let sender = memory_node(&net, "budget-sender", sender_cfg);
    let mut receiver = memory_node(&net, "budget-receiver", receiver_cfg);
    sender.mgr.connect(receiver.addr).await.expect("connect");

    // The receiver's application does not read; the sender keeps sending.
    const TOTAL: u32 = 200; // 800 KiB: more than both budgets together
    let accepted = Arc::new(AtomicUsize::new(0));
    let sending = {
        let (mgr, to, accepted) = (sender.mgr.clone(), receiver.addr.peer, accepted.clone());
        tokio::spawn(async move {
            for i in 0..TOTAL {
                mgr.send(&to, support::msg(i, MSG)).await.expect("accepted");
                accepted.fetch_add(1, Ordering::AcqRel);
            }
        })
    };
    let rmgr = receiver.mgr.clone();
    until("the receiver's incoming budget fills", || {
        rmgr.metrics_snapshot().memory_bytes as usize >= INCOMING_BYTES - BATCH
    })
    .await;
    until("the sender's byte budget fills", || {
        (accepted.load(Ordering::Acquire) + 1) * MSG > QUEUE_BYTES
    })
    .await;
    // Nothing is acknowledged while the application does not read, so the
    // sender stays full: `send` waits, `try_send` says Full.
    let full = accepted.load(Ordering::Acquire);
    match sender
        .mgr
        .try_send(&receiver.addr.peer, Bytes::from_static(b"one more"))
    {
        Err(qudag_net::SendError::Full { .. }) => {}
        other => panic!("expected Full over the byte budget, got {other:?}"),
    }
    let held = full * MSG;
    let receiver_holds = receiver.mgr.metrics_snapshot().memory_bytes as usize;
    eprintln!(
        "byte budgets: sender holds {} KiB (queue_bytes {} KiB), receiver holds {} KiB (incoming_bytes {} KiB)",
        held / 1024,
        QUEUE_BYTES / 1024,
        receiver_holds / 1024,
        INCOMING_BYTES / 1024
    );
    assert!(held <= QUEUE_BYTES, "{held} bytes accepted over the budget");
    assert!(
        full < 8192 / 2,
        "the byte budget, not the count, stopped the sender ({full})"
    );
    // Delivered batches plus the reader's buffer (at most 64 KiB and one frame).
    assert!(
        receiver_holds <= INCOMING_BYTES + 2 * BATCH + 64 * 1024,
        "the receiver holds {receiver_holds} bytes for its application"
    );

    // The application reads: everything arrives, in order, nothing lost.
    let got = support::recv_n(&mut receiver.incoming, sender.addr.peer, TOTAL as usize).await;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(support::index(m), i as u32);
    }
    guard("the sender is done", GUARD, sending)
        .await
        .expect("sender task");
    sender.mgr.shutdown(Duration::from_secs(1)).await;
    receiver.mgr.shutdown(Duration::from_secs(1)).await;
}
