//! No `ManagerConfig` makes the manager panic: every field at 0, 1, a
//! typical value, its maximum and absurd values either gives a typed
//! `ConfigError` from `ConnectionManager::new` (exactly when `validate`
//! refuses it) or works through `connect`, `send` and `shutdown` — with a
//! panic hook counting panics on every thread, spawned tasks included.
//!
//! (This file holds one test so that the process-wide hook sees only it.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use qudag_net::{
    ConfigError, ConnectionManager, FlushPolicy, ManagerConfig, MemoryNetwork, PeerAddr, PeerId,
    Transport, MAX_CAPACITY, MAX_DURATION,
};

static PANICS: AtomicUsize = AtomicUsize::new(0);
/// Runs whose config was valid (so connect, send and shutdown ran).
static VALID_RUNS: AtomicUsize = AtomicUsize::new(0);

fn counts() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![
        0,
        1,
        2,
        256,
        8192,
        MAX_CAPACITY,
        MAX_CAPACITY + 1,
        u32::MAX as usize,
        usize::MAX,
    ])
}

fn durations() -> impl Strategy<Value = Duration> {
    prop::sample::select(vec![
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_millis(1),
        Duration::from_millis(50),
        Duration::from_secs(1),
        Duration::from_secs(300),
        MAX_DURATION,
        MAX_DURATION + Duration::from_secs(1),
        Duration::from_secs(u64::MAX / 2),
        Duration::MAX,
    ])
}

/// A config built from arbitrary field values (the setters never panic).
#[derive(Debug, Clone)]
struct Fields {
    counts: [usize; 4],
    times: [Duration; 4],
    batch: (usize, usize, Option<usize>, Duration, bool),
    pool: (Duration, usize, usize),
    backoff: (Duration, Duration),
    max_failed_dials: u32,
    grace: Duration,
}

/// The defaults (what `ManagerConfig::default` sets), as `Fields`.
fn defaults() -> Fields {
    Fields {
        counts: [8192, 256, 32, 1024],
        times: [
            Duration::from_secs(5),
            Duration::from_secs(15),
            Duration::from_secs(10),
            Duration::from_secs(300),
        ],
        batch: (256, 1 << 20, None, Duration::from_millis(50), true),
        pool: (Duration::from_secs(300), 1024, 128),
        backoff: (Duration::from_millis(100), Duration::from_secs(30)),
        max_failed_dials: 6,
        grace: Duration::from_secs(1),
    }
}

/// One field set to an edge value.
#[derive(Debug, Clone)]
enum Edit {
    Count(usize, usize),
    Time(usize, Duration),
    BatchCount(bool, usize),
    MessageLen(Option<usize>),
    BatchDelay(Duration),
    Policy(bool),
    PoolTime(Duration),
    PoolCount(bool, usize),
    Backoff(bool, Duration),
    Redials(u32),
    Grace(Duration),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0usize..4, counts()).prop_map(|(i, v)| Edit::Count(i, v)),
        (0usize..4, durations()).prop_map(|(i, v)| Edit::Time(i, v)),
        (any::<bool>(), counts()).prop_map(|(w, v)| Edit::BatchCount(w, v)),
        prop::option::of(counts()).prop_map(Edit::MessageLen),
        durations().prop_map(Edit::BatchDelay),
        any::<bool>().prop_map(Edit::Policy),
        durations().prop_map(Edit::PoolTime),
        (any::<bool>(), counts()).prop_map(|(w, v)| Edit::PoolCount(w, v)),
        (any::<bool>(), durations()).prop_map(|(w, v)| Edit::Backoff(w, v)),
        prop::sample::select(vec![0u32, 1, 5, u32::MAX]).prop_map(Edit::Redials),
        durations().prop_map(Edit::Grace),
    ]
}

/// The defaults with one to four fields at edge values: most are valid, so
/// connect, send and shutdown run with every field at its edges.
fn fields() -> impl Strategy<Value = Fields> {
    prop::collection::vec(edit(), 1..=4).prop_map(|edits| {
        let mut f = defaults();
        for e in edits {
            match e {
                Edit::Count(i, v) => f.counts[i] = v,
                Edit::Time(i, v) => f.times[i] = v,
                Edit::BatchCount(false, v) => f.batch.0 = v,
                Edit::BatchCount(true, v) => f.batch.1 = v,
                Edit::MessageLen(v) => f.batch.2 = v,
                Edit::BatchDelay(v) => f.batch.3 = v,
                Edit::Policy(v) => f.batch.4 = v,
                Edit::PoolTime(v) => f.pool.0 = v,
                Edit::PoolCount(false, v) => f.pool.1 = v,
                Edit::PoolCount(true, v) => f.pool.2 = v,
                Edit::Backoff(false, v) => f.backoff.0 = v,
                Edit::Backoff(true, v) => f.backoff.1 = v,
                Edit::Redials(v) => f.max_failed_dials = v,
                Edit::Grace(v) => f.grace = v,
            }
        }
        f
    })
}

fn config(f: &Fields) -> ManagerConfig {
    let mut c = ManagerConfig::default();
    c.queue_capacity(f.counts[0])
        .incoming_capacity(f.counts[1])
        .max_unacked_batches(f.counts[2])
        .event_capacity(f.counts[3])
        .connect_timeout(f.times[0])
        .ack_timeout(f.times[1])
        .unreachable_after(f.times[2])
        .peer_idle_timeout(f.times[3])
        .max_failed_dials(f.max_failed_dials);
    let b = c.batch_mut();
    b.max_messages(f.batch.0)
        .max_bytes(f.batch.1)
        .max_delay(f.batch.3)
        .policy(if f.batch.4 {
            FlushPolicy::Adaptive
        } else {
            FlushPolicy::Fixed
        });
    if let Some(len) = f.batch.2 {
        b.max_message_len(len);
    }
    c.pool_mut()
        .idle_timeout(f.pool.0)
        .max_connections(f.pool.1)
        .max_pending_dials(f.pool.2);
    c.backoff_mut().base(f.backoff.0).cap(f.backoff.1);
    c
}

/// One run: `new`, then (if the config is valid) connect, send and
/// shutdown against a default peer, under paused time.
fn run(f: &Fields) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let config = config(f);
    let valid = config.validate();
    rt.block_on(async {
        let net = MemoryNetwork::new();
        let peer_t = Arc::new(net.bind(PeerId::from_public_key(b"peer")));
        let peer_addr = PeerAddr::new(peer_t.local_peer(), peer_t.local_addr());
        let peer = ConnectionManager::new(ManagerConfig::default(), peer_t).expect("default");
        let mut peer_in = peer.incoming().expect("incoming");
        let t = Arc::new(net.bind(PeerId::from_public_key(b"subject")));
        let mgr = match ConnectionManager::new(config, t) {
            Ok(m) => m,
            Err(e) => {
                prop_assert_eq!(Err(e.clone()), valid, "new refuses what validate refuses");
                prop_assert!(!e.to_string().is_empty());
                return Ok(());
            }
        };
        prop_assert_eq!(valid, Ok::<(), ConfigError>(()));
        VALID_RUNS.fetch_add(1, Ordering::SeqCst);
        let hour = Duration::from_secs(3600);
        let _ = tokio::time::timeout(hour, mgr.connect(peer_addr)).await;
        let sent =
            tokio::time::timeout(hour, mgr.send(&peer_addr.peer, Bytes::from_static(b"m"))).await;
        if matches!(sent, Ok(Ok(()))) {
            // Delivered or handed back; either way it does not panic.
            let _ = tokio::time::timeout(hour, peer_in.recv()).await;
        }
        let _ = mgr.try_send(&peer_addr.peer, Bytes::from_static(b"n"));
        let _ = tokio::time::timeout(hour, mgr.shutdown(f.grace)).await;
        let _ = tokio::time::timeout(hour, peer.shutdown(Duration::from_secs(1))).await;
        Ok(())
    })?;
    drop(rt);
    prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a task panicked");
    Ok(())
}

#[test]
fn no_config_makes_the_manager_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&fields(), |f| run(&f));
    if let Err(e) = result {
        panic!("{e}");
    }
    let valid = VALID_RUNS.load(Ordering::SeqCst);
    eprintln!("{valid} of 256 configs were valid and ran connect, send and shutdown");
    assert!(
        valid >= 64,
        "only {valid} valid configs: the strategy is off"
    );
    assert_eq!(ManagerConfig::default().validate(), Ok(()));
}
