//! Killing a peer process mid-stream: the survivor (an in-process manager)
//! reports `Failed` and keeps its session. When the peer comes back on the
//! same address with the same key (a new incarnation), the survivor hands
//! back exactly what the dead incarnation had not acknowledged (reason
//! `PeerRestarted`, maybe delivered), never resends what it acknowledged,
//! and delivers to the new incarnation what it had not written yet.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qudag_net::{
    ConnState, ConnectionManager, Event, Events, Identity, ManagerConfig, PeerAddr, QuicConfig,
    QuicTransport, SendError, UndeliveredReason,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_qudag-node");
const GUARD: Duration = Duration::from_secs(60);
/// The most messages the streaming sender queues before the kill.
const MAX_STREAMED: u32 = 200_000;

async fn guard<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {GUARD:?}: {what}"),
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("qudag-kill-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `qudag-node listen` (killed when dropped) and returns it with the
/// address it printed on its first line.
async fn listen(bind: &str, key: &std::path::Path) -> (Child, PeerAddr) {
    let mut child = Command::new(BIN)
        .args(["listen", "--bind", bind, "--timeout", "120", "--key"])
        .arg(key)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qudag-node listen");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = guard("the listener's first line", lines.next_line())
        .await
        .expect("read stdout")
        .expect("a first line");
    let addr: PeerAddr = first
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .parse()
        .expect("peer@addr");
    // Keep reading so a full pipe never blocks the child.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// Waits for a state change to `to`; counts handed-back messages on the way.
/// A message handed back, with its reason and `maybe_delivered`.
type Back = (Bytes, UndeliveredReason, bool);

fn record(ev: Event, handed_back: &mut Vec<Back>) {
    if let Event::Undelivered {
        messages,
        reason,
        maybe_delivered,
        ..
    } = ev
    {
        handed_back.extend(messages.into_iter().map(|m| (m, reason, maybe_delivered)));
    }
}

async fn wait_state(events: &mut Events, to: ConnState, handed_back: &mut Vec<Back>) {
    guard(&format!("state {to:?}"), async {
        loop {
            match events.recv().await.expect("manager alive") {
                Event::StateChanged { to: t, .. } if t == to => return,
                ev => record(ev, handed_back),
            }
        }
    })
    .await;
}

fn msg(i: u32) -> Bytes {
    Bytes::from(format!("kill-test-{i:010}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peer_fails_hands_back_and_is_redialed_on_return() {
    let dir = TempDir::new();
    let key = dir.0.join("listener.key");
    let status = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .stdout(Stdio::null())
        .status()
        .await
        .expect("keygen");
    assert!(status.success(), "keygen failed");
    let (first, addr) = listen("127.0.0.1:0", &key).await;

    // The survivor notices a dead path in about 2 s, redials fast and keeps
    // waiting messages through the restart.
    let mut quic = QuicConfig::default();
    quic.idle_timeout(Duration::from_secs(2))
        .keep_alive(Duration::from_millis(400));
    let mut config = ManagerConfig::default();
    // The queue holds everything the sender below can queue, so the messages
    // sent while the peer is down are accepted at once: with a full queue,
    // `send` would wait for the redial, which waits for the restart below.
    config
        .max_failed_dials(10_000)
        .unreachable_after(Duration::from_secs(120))
        .connect_timeout(Duration::from_secs(2))
        .queue_capacity(MAX_STREAMED as usize + 1_000);
    config
        .backoff_mut()
        .base(Duration::from_millis(50))
        .cap(Duration::from_millis(500));
    let id = Identity::generate().expect("identity");
    let t = QuicTransport::bind("127.0.0.1:0".parse().expect("addr"), &id, quic).expect("bind");
    let mgr = ConnectionManager::new(config, Arc::new(t)).expect("valid config");
    let mut events = mgr.events().expect("events");
    guard("connect", mgr.connect(addr)).await.expect("connect");

    // A sender streaming until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU32::new(0));
    let sender = {
        let (mgr, stop, accepted) = (mgr.clone(), stop.clone(), accepted.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) && accepted.load(Ordering::Acquire) < MAX_STREAMED {
                let i = accepted.load(Ordering::Acquire);
                match mgr.try_send(&addr.peer, msg(i)) {
                    Ok(()) => {
                        accepted.fetch_add(1, Ordering::AcqRel);
                    }
                    // Queue full: let the driver run.
                    Err(SendError::Full { .. }) => tokio::task::yield_now().await,
                    Err(other) => panic!("unexpected send error {other:?}"),
                }
            }
        })
    };
    // Mid-stream: once some messages were acknowledged. Acks raise no event,
    // so poll the counter, with a bounded number of short ticks.
    let mut ticks = 0;
    while mgr.metrics_snapshot().messages_acked < 2_000 {
        ticks += 1;
        assert!(ticks < 3_000, "no acknowledgements from the listener");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut first = first;
    first.kill().await.expect("kill the listener");
    let acked_at_kill = mgr.metrics_snapshot().messages_acked;
    stop.store(true, Ordering::Release);
    sender.await.expect("sender");

    let mut handed_back = Vec::new();
    wait_state(&mut events, ConnState::Failed, &mut handed_back).await;
    // Sent while the peer is dead: they wait for the redial.
    let before = accepted.load(Ordering::Acquire);
    for i in before..before + 100 {
        mgr.send(&addr.peer, msg(i))
            .await
            .expect("accepted while down");
    }
    let total = before + 100;

    // The peer returns on the same address with the same key.
    let (second, again) = listen(&addr.addr.to_string(), &key).await;
    assert_eq!(again, addr, "same identity, same address");
    wait_state(&mut events, ConnState::Connected, &mut handed_back).await;
    mgr.shutdown(Duration::from_secs(20)).await;
    while let Some(ev) = events.try_recv() {
        record(ev, &mut handed_back);
    }
    drop(second);

    let snap = mgr.metrics_snapshot();
    eprintln!(
        "kill: accepted {total}, acked {} ({acked_at_kill} before the kill), handed back {}",
        snap.messages_acked,
        handed_back.len()
    );
    assert_eq!(
        snap.messages_acked + handed_back.len() as u64,
        u64::from(total),
        "acked + handed back == accepted"
    );
    assert!(!handed_back.is_empty() || snap.messages_acked == u64::from(total));
    assert!(
        snap.messages_acked > acked_at_kill,
        "messages were delivered to the restarted peer"
    );
    assert!(
        handed_back
            .iter()
            .all(|(_, r, maybe)| *r == UndeliveredReason::PeerRestarted && *maybe),
        "only what the dead incarnation may have read comes back, as maybe delivered: {:?}",
        handed_back
            .iter()
            .map(|(_, r, m)| (*r, *m))
            .collect::<std::collections::HashSet<_>>()
    );
    let late: Vec<Bytes> = (before..total).map(msg).collect();
    assert!(
        late.iter()
            .all(|m| !handed_back.iter().any(|(b, _, _)| b == m)),
        "messages sent while the peer was down were delivered after the redial"
    );
    assert_eq!(mgr.metrics_snapshot().memory_bytes, 0);
}
