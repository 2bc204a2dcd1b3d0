//! `run`: a long-running node configured by a TOML file (every field also a
//! flag), for people who run a network and for `cargo xtask testnet`.
//!
//! It binds a QUIC endpoint, connects to its configured peers and keeps
//! them connected (the library redials with backoff while messages wait; a
//! supervisor reconnects peers that went away), optionally serves
//! Prometheus metrics, and optionally generates traffic. Every generated
//! payload carries the sender's incarnation and a per-destination counter
//! ([`payload`]); the receiver checks each stream for order, gaps and
//! duplicates ([`books`]). Its first stdout line is
//! `running <peer_id>@<addr> incarnation <n>`.
//!
//! Signals: SIGUSR1 stops the traffic generator (the node keeps running and
//! receiving); SIGTERM or SIGINT stop it, wait up to `grace` for what it
//! sent to be acknowledged, shut the manager down (handing back the rest),
//! and print one JSON summary line on stdout (the books and the metrics),
//! then exit 0.

pub(crate) mod books;
pub(crate) mod config;
pub(crate) mod payload;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use qudag_net::{
    ConnState, ConnectionManager, Event, ManagerConfig, PeerAddr, PeerId, QuicConfig,
    QuicTransport, SendError, Transport,
};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use books::{Inbox, Outbox, Sent, Stream};
use config::{ConfigError, Raw, RawTraffic, Target};

/// How often the supervisor looks for peers to reconnect.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// How often the drain wait looks at the counters.
const POLL: Duration = Duration::from_millis(20);
/// The most rounds the generator catches up at once after a stall.
const MAX_BURST: u64 = 64;

/// Options of `qudag-node run`. Each flag overrides the same field of `--config`.
#[derive(Debug, Args)]
#[command(after_long_help = RUN_AFTER_HELP)]
pub(crate) struct RunArgs {
    /// TOML file with the fields below (flags given here override it; a relative
    /// `key` is relative to the file's directory).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// `bind`: the QUIC address to bind, IP:PORT (required).
    #[arg(long, value_name = "ADDR")]
    pub(crate) bind: Option<String>,
    /// `key`: identity key file (from `keygen`); default: a fresh identity per
    /// start. Give one so that peers recognise the node after a restart.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// `peers`: a peer to connect to and keep connected, PEERID@IP:PORT
    /// (repeatable; replaces the file's list). No peer twice, not itself.
    #[arg(long = "peer", value_name = "PEERID@ADDR")]
    pub(crate) peers: Vec<String>,
    /// `allow`: admit only these peers (repeatable; replaces the file's list);
    /// default: every peer that proves an identity. Every peer must be on it.
    #[arg(long = "allow", value_name = "PEERID")]
    pub(crate) allow: Vec<String>,
    /// `max_connections`: the connection limit, 1 to 65536 (default 1024). Below
    /// the number of peers, idle pooled connections are evicted to make room.
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<u64>,
    /// `metrics`: serve Prometheus text at http://ADDR/metrics (library series
    /// plus the node's books, `qudag_node_*`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<String>,
    /// `unreachable_after`: seconds messages wait without progress before they
    /// are handed back (default 10, below 300).
    #[arg(long, value_name = "SECS")]
    pub(crate) unreachable_after: Option<f64>,
    /// `backoff_cap`: the largest redial backoff, seconds (default 5).
    #[arg(long, value_name = "SECS")]
    pub(crate) backoff_cap: Option<f64>,
    /// `idle_timeout`: QUIC idle timeout in seconds (default 10; keep-alive is a quarter).
    #[arg(long, value_name = "SECS")]
    pub(crate) idle_timeout: Option<f64>,
    /// `grace`: seconds the shutdown waits for acknowledgements (default 5).
    #[arg(long, value_name = "SECS")]
    pub(crate) grace: Option<f64>,
    /// `park_every`: return every connection to the pool this often, in seconds
    /// (it stays open and is reused; a full node may evict it). Default: never.
    #[arg(long, value_name = "SECS")]
    pub(crate) park_every: Option<f64>,
    /// `traffic.rate`: generate traffic, this many rounds per second (default 10
    /// when `[traffic]` is in the file).
    #[arg(long, value_name = "R")]
    pub(crate) rate: Option<f64>,
    /// `traffic.size`: bytes per generated message, at least 20 (default 64).
    #[arg(long, value_name = "BYTES")]
    pub(crate) size: Option<u64>,
    /// `traffic.to`: each round sends one message to every peer (`all`, the
    /// default) or to one random peer (`random`).
    #[arg(long, value_enum, value_name = "all|random")]
    pub(crate) to: Option<Target>,
    /// Exit (without a summary) when the parent process is gone: for harnesses
    /// that must not leave nodes behind.
    #[arg(long)]
    pub(crate) exit_with_parent: bool,
    /// Testing only: do not count the Nth received message (from 1), as if the
    /// application lost it; the books must then not balance.
    #[arg(long, value_name = "N", hide = true)]
    pub(crate) fault_drop_received: Option<u64>,
}

const RUN_AFTER_HELP: &str = "\
Config file (TOML; every field optional here, `bind` required in the end):

  bind = \"127.0.1.1:47000\"          # QUIC address
  key = \"node1.key\"                 # identity key (qudag-node keygen --out node1.key)
  peers = [\"<PEERID>@127.0.1.2:47000\", \"<PEERID>@127.0.1.3:47000\"]
  allow = [\"<PEERID>\", \"<PEERID>\"]  # optional allow-list (must contain every peer)
  max_connections = 8               # connection limit
  metrics = \"127.0.1.1:47001\"       # Prometheus endpoint (TCP)
  unreachable_after = 10            # seconds before waiting messages come back
  backoff_cap = 5                   # largest redial backoff, seconds
  idle_timeout = 10                 # QUIC idle timeout, seconds
  grace = 5                         # shutdown wait for acknowledgements, seconds
  park_every = 2                    # pool idle connections this often (lets limits evict)

  [traffic]                         # optional traffic generator
  rate = 50                         # rounds per second
  size = 64                         # bytes per message (>= 20: incarnation + counter header)
  to = \"all\"                        # \"all\" peers each round, or one \"random\" peer

A bad config (unknown field, bad address, unreadable key file, a peer listed
twice, the node itself as a peer) is one `error: config: FIELD: ...` line and
exit code 2. SIGUSR1 stops the generator; SIGTERM/SIGINT drain, shut down and
print one JSON summary line.";

impl RunArgs {
    /// The file (if any) with the flags laid over it.
    fn raw(&self) -> Result<Raw, ConfigError> {
        let mut raw = match &self.config {
            Some(path) => config::read_file(path)?,
            None => Raw::default(),
        };
        macro_rules! over {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field { raw.$field = Some(v.clone()); }
            )*};
        }
        over!(
            bind,
            key,
            max_connections,
            metrics,
            unreachable_after,
            backoff_cap,
            idle_timeout,
            grace,
            park_every
        );
        if !self.peers.is_empty() {
            raw.peers = Some(self.peers.clone());
        }
        if !self.allow.is_empty() {
            raw.allow = Some(self.allow.clone());
        }
        if self.rate.is_some() || self.size.is_some() || self.to.is_some() {
            let t = raw.traffic.get_or_insert_with(RawTraffic::default);
            if self.rate.is_some() {
                t.rate = self.rate;
            }
            if self.size.is_some() {
                t.size = self.size;
            }
            if let Some(to) = self.to {
                t.to = Some(match to {
                    Target::All => "all".to_owned(),
                    Target::Random => "random".to_owned(),
                });
            }
        }
        Ok(raw)
    }
}

/// Rounds due by `now` at `rate` per second from `start`: a sans-IO pacer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacer {
    start: Instant,
    interval: Duration,
    done: u64,
}

impl Pacer {
    /// A pacer of `rate` rounds per second (positive, finite) from `start`.
    pub(crate) fn new(start: Instant, rate: f64) -> Self {
        let interval = Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::from_secs(1));
        Self {
            start,
            interval: interval.max(Duration::from_nanos(1)),
            done: 0,
        }
    }

    /// How many rounds to run now (at most [`MAX_BURST`]; rounds further
    /// behind are skipped, not caught up), and records them as done.
    pub(crate) fn due(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start);
        let owed = (elapsed.as_nanos() / self.interval.as_nanos()) as u64 + 1;
        let n = owed.saturating_sub(self.done);
        if n > MAX_BURST {
            self.done = owed;
            MAX_BURST
        } else {
            self.done += n;
            n
        }
    }

    /// When the next round is due.
    pub(crate) fn next_at(&self) -> Instant {
        let nanos = self
            .interval
            .as_nanos()
            .saturating_mul(u128::from(self.done));
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX / 2))
    }
}

/// The node's books and the counters beside them, shared by its tasks.
#[derive(Debug)]
struct State {
    outbox: Outbox,
    inbox: Inbox,
    /// Messages not queued because the peer's queue was full (not accepted, not counted).
    skipped: u64,
    /// Event::Lagged totals.
    lagged: u64,
}

/// A random incarnation, never 0: the OS-seeded hasher mixed with the time.
fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// Resident set size of this process in bytes (0 where /proc is missing).
pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// A small xorshift generator for picking random peers (seeded by the incarnation).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// The JSON summary printed at the end.
#[derive(Debug, serde::Serialize)]
struct Summary {
    peer_id: String,
    addr: String,
    incarnation: u64,
    uptime_s: f64,
    /// Everything sent had been acknowledged or handed back before the shutdown.
    drained: bool,
    sent: BTreeMap<String, SentTo>,
    received: Vec<ReceivedFrom>,
    /// Sums over every received stream (folded-away incarnations included).
    received_totals: Stream,
    malformed: u64,
    untracked: u64,
    retired: Stream,
    skipped: u64,
    lagged_events: u64,
    metrics: SummaryMetrics,
}

#[derive(Debug, serde::Serialize)]
struct SentTo {
    #[serde(flatten)]
    sent: Sent,
    /// `accepted - handed_back`: acknowledged, when `drained`.
    delivered: u64,
}

#[derive(Debug, serde::Serialize)]
struct ReceivedFrom {
    from: String,
    incarnation: u64,
    #[serde(flatten)]
    stream: Stream,
}

#[derive(Debug, serde::Serialize)]
struct SummaryMetrics {
    messages_acked: u64,
    messages_received: u64,
    messages_undelivered: u64,
    latency_p50_us: u64,
    latency_p99_us: u64,
    connections: i64,
    evictions: u64,
    redials: u64,
    memory_bytes: i64,
    rss_bytes: u64,
}

/// Runs `run`.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let raw = args.raw()?;
    let identity = match &raw.key {
        Some(path) => qudag_net::Identity::load(path).map_err(|e| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let text = s.to_string();
                if !message.contains(&text) {
                    message = format!("{message}: {text}");
                }
                source = s.source();
            }
            ConfigError::new("key", message)
        })?,
        None => qudag_net::Identity::generate().context("cannot generate an identity key")?,
    };
    let cfg = config::validate(raw, identity.peer_id())?;
    let started = Instant::now();
    let incarnation = new_incarnation();

    let mut quic = QuicConfig::default();
    quic.idle_timeout(cfg.idle_timeout)
        .keep_alive(cfg.idle_timeout / 4);
    if let Some(allow) = &cfg.allow {
        quic.allow_list(Some(allow.clone()));
    }
    let transport = QuicTransport::bind(cfg.bind, &identity, quic)
        .with_context(|| format!("cannot bind {}", cfg.bind))?;
    let local = transport.local_addr();
    let mut mc = ManagerConfig::default();
    mc.unreachable_after(cfg.unreachable_after)
        // Only `unreachable_after` decides when waiting messages come back.
        .max_failed_dials(u32::try_from(qudag_net::MAX_CAPACITY).unwrap_or(u32::MAX));
    mc.backoff_mut().cap(cfg.backoff_cap);
    if let Some(n) = cfg.max_connections {
        mc.pool_mut().max_connections(n);
    }
    let manager = ConnectionManager::new(mc, Arc::new(transport))?;
    let mut incoming = manager.incoming().context("incoming already taken")?;
    let mut events = manager.events().context("events already taken")?;

    let state = Arc::new(Mutex::new(State {
        outbox: Outbox::new(incarnation),
        inbox: Inbox::default(),
        skipped: 0,
        lagged: 0,
    }));

    let server = match cfg.metrics {
        Some(addr) => {
            let listener = crate::http::bind(addr)
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            let (metrics, state) = (manager.metrics_sink(), state.clone());
            let mgr = manager.clone();
            let render = move || {
                let lib = metrics.encode_prometheus();
                let st = state.lock().unwrap_or_else(|e| e.into_inner());
                books_prometheus(lib, incarnation, &st, &mgr)
            };
            Some(tokio::spawn(crate::http::serve(
                listener,
                crate::http::Limits::default(),
                Arc::new(render),
            )))
        }
        None => None,
    };

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "running {}@{local} incarnation {incarnation}",
        identity.peer_id()
    )?;
    out.flush()?;
    drop(out);

    // Received messages: checked and counted.
    let receiver = {
        let state = state.clone();
        let drop_nth = args.fault_drop_received;
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Some((from, batch)) = incoming.recv_batch().await {
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                for m in &batch {
                    n += 1;
                    if drop_nth == Some(n) {
                        continue;
                    }
                    match st.inbox.observe(from, m) {
                        books::Verdict::First => {
                            if let Ok(h) = payload::Header::decode(m) {
                                tracing::info!(%from, incarnation = h.incarnation, counter = h.counter, "first message of a sender incarnation");
                            }
                        }
                        books::Verdict::Gap { skipped } => {
                            let h = payload::Header::decode(m).ok();
                            tracing::warn!(%from, incarnation = h.map(|h| h.incarnation), counter = h.map(|h| h.counter), skipped, "gap in a sender's stream");
                        }
                        books::Verdict::Duplicate => {
                            let h = payload::Header::decode(m).ok();
                            tracing::warn!(%from, incarnation = h.map(|h| h.incarnation), counter = h.map(|h| h.counter), "duplicate message");
                        }
                        _ => {}
                    }
                }
            }
        })
    };
    // Events: handed-back messages go into the books.
    let event_task = {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                match ev {
                    Event::Undelivered {
                        peer,
                        messages,
                        reason,
                        maybe_delivered,
                    } => {
                        let range = st.outbox.handed_back(
                            peer,
                            messages.iter().map(|m| &m[..]),
                            reason,
                            maybe_delivered,
                        );
                        tracing::warn!(%peer, %reason, maybe_delivered, count = messages.len(), counters = ?range, "messages handed back");
                    }
                    Event::Lagged { missed } => st.lagged += missed,
                    _ => {}
                }
            }
        })
    };

    let stop_traffic = Arc::new(AtomicBool::new(false));
    let supervisor = tokio::spawn(supervise(
        manager.clone(),
        cfg.peers.clone(),
        cfg.max_connections,
    ));
    let parker = cfg
        .park_every
        .map(|every| tokio::spawn(park(manager.clone(), cfg.peers.clone(), every)));
    let generator = cfg.traffic.map(|t| {
        tokio::spawn(generate(
            manager.clone(),
            state.clone(),
            cfg.peers.iter().map(|p| p.peer).collect(),
            t,
            incarnation,
            stop_traffic.clone(),
        ))
    });
    let parent_watch = args.exit_with_parent.then(|| tokio::spawn(watch_parent()));

    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?;
    let parent_gone = async {
        match parent_watch {
            Some(h) => {
                let _ = h.await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(parent_gone);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: traffic generator stopped");
                stop_traffic.store(true, Ordering::Release);
            }
            () = &mut parent_gone => {
                tracing::warn!("parent process gone: exiting");
                std::process::exit(1);
            }
        }
    }

    // Graceful end: stop generating, wait for what was sent, shut down.
    stop_traffic.store(true, Ordering::Release);
    if let Some(g) = generator {
        let _ = g.await;
    }
    supervisor.abort();
    if let Some(p) = parker {
        p.abort();
    }
    let drain_until = Instant::now() + cfg.grace;
    let drained = loop {
        let out = outstanding(&manager, &state);
        if out == 0 {
            break true;
        }
        if Instant::now() >= drain_until {
            break false;
        }
        tokio::time::sleep(POLL).await;
    };
    manager.shutdown(cfg.grace).await;
    // Both end once the manager is shut down and what they hold is read.
    let bound = cfg.grace + Duration::from_secs(5);
    let _ = tokio::time::timeout(bound, event_task).await;
    let _ = tokio::time::timeout(bound, receiver).await;
    if let Some(s) = server {
        s.abort();
    }
    let summary = {
        let st = state.lock().unwrap_or_else(|e| e.into_inner());
        summarize(
            &manager,
            &st,
            identity.peer_id(),
            local,
            incarnation,
            started,
            drained,
        )
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// Messages accepted and neither acknowledged nor handed back yet.
fn outstanding(manager: &ConnectionManager, state: &Mutex<State>) -> u64 {
    let acked = manager.metrics_snapshot().messages_acked;
    let (accepted, back) = state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .outbox
        .totals();
    accepted.saturating_sub(back).saturating_sub(acked)
}

/// Connects to every peer, then reconnects the ones that failed or went
/// away. Under a connection limit it dials only while there are free slots:
/// its own dials would otherwise evict the connections peers are using to
/// reach it (the generator's messages still make the library dial).
async fn supervise(manager: ConnectionManager, peers: Vec<PeerAddr>, limit: Option<usize>) {
    let inflight: Arc<Vec<AtomicBool>> =
        Arc::new(peers.iter().map(|_| AtomicBool::new(false)).collect());
    let mut tried = vec![false; peers.len()];
    let mut tick = tokio::time::interval(SUPERVISE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut room = limit.map_or(usize::MAX, |l| l.saturating_sub(manager.open_connections()));
        for (i, p) in peers.iter().enumerate() {
            // Every peer is connected to once, whatever the room: that also
            // registers its address, without which `send` refuses it.
            if room == 0 && tried[i] {
                continue;
            }
            let lost = matches!(
                manager.status(&p.peer),
                None | Some(ConnState::Failed | ConnState::Disconnected | ConnState::New)
            );
            if !lost || inflight[i].swap(true, Ordering::AcqRel) {
                continue;
            }
            tried[i] = true;
            room = room.saturating_sub(1);
            let (manager, inflight, p) = (manager.clone(), inflight.clone(), *p);
            tokio::spawn(async move {
                // Bounded: a dial has its own timeouts; this only guards a hang.
                let r = tokio::time::timeout(Duration::from_secs(30), manager.connect(p)).await;
                if let Ok(Err(e)) = r {
                    tracing::debug!(peer = %p, error = %e, "connect failed; retrying later");
                }
                inflight[i].store(false, Ordering::Release);
            });
        }
    }
}

/// Returns every connection to the pool every `every`.
async fn park(manager: ConnectionManager, peers: Vec<PeerAddr>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        for p in &peers {
            let _ = manager.disconnect(&p.peer).await;
        }
    }
}

/// Exits when the parent process is gone (the process is re-parented).
async fn watch_parent() {
    let parent = rustix::process::getppid();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if rustix::process::getppid() != parent {
            return;
        }
    }
}

/// The traffic generator: rounds at `t.rate` until `stop`.
async fn generate(
    manager: ConnectionManager,
    state: Arc<Mutex<State>>,
    peers: Vec<PeerId>,
    t: config::Traffic,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let mut pacer = Pacer::new(Instant::now(), t.rate);
    let mut rng = Rng(seed | 1);
    while !stop.load(Ordering::Acquire) {
        let n = pacer.due(Instant::now());
        for _ in 0..n {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            let one = |peer: PeerId, st: &mut State| {
                let payload = Bytes::from(st.outbox.next_header(&peer).encode(t.size));
                match manager.try_send(&peer, payload) {
                    Ok(()) => st.outbox.accepted(peer),
                    Err(SendError::Full { .. } | SendError::UnknownPeer { .. }) => {
                        st.skipped += 1;
                    }
                    Err(_) => {}
                }
            };
            match t.to {
                Target::All => {
                    for &p in &peers {
                        one(p, &mut st);
                    }
                }
                Target::Random => {
                    let p = peers[rng.below(peers.len())];
                    one(p, &mut st);
                }
            }
        }
        tokio::time::sleep_until(pacer.next_at()).await;
    }
}

/// The JSON summary of this incarnation.
fn summarize(
    manager: &ConnectionManager,
    st: &State,
    me: PeerId,
    addr: std::net::SocketAddr,
    incarnation: u64,
    started: Instant,
    drained: bool,
) -> Summary {
    let snap = manager.metrics_snapshot();
    let evictions = snap
        .closes
        .iter()
        .find(|(k, _)| k.as_str() == "evicted")
        .map_or(0, |(_, n)| n);
    let redials = snap
        .state_entries
        .iter()
        .find(|(k, _)| k.as_str() == "connecting")
        .map_or(0, |(_, n)| n);
    Summary {
        peer_id: me.to_string(),
        addr: addr.to_string(),
        incarnation,
        uptime_s: started.elapsed().as_secs_f64(),
        drained,
        sent: st
            .outbox
            .to
            .iter()
            .map(|(p, s)| {
                let to = SentTo {
                    sent: s.clone(),
                    delivered: s.delivered(),
                };
                (p.to_string(), to)
            })
            .collect(),
        received_totals: st.inbox.totals(),
        received: st
            .inbox
            .streams()
            .into_iter()
            .map(|(p, inc, s)| ReceivedFrom {
                from: p.to_string(),
                incarnation: inc,
                stream: s,
            })
            .collect(),
        malformed: st.inbox.malformed,
        untracked: st.inbox.untracked,
        retired: st.inbox.retired,
        skipped: st.skipped,
        lagged_events: st.lagged,
        metrics: SummaryMetrics {
            messages_acked: snap.messages_acked,
            messages_received: snap.messages_received,
            messages_undelivered: snap.messages_undelivered,
            latency_p50_us: snap.latency.p50.as_micros() as u64,
            latency_p99_us: snap.latency.p99.as_micros() as u64,
            connections: snap.connections_connected,
            evictions,
            redials,
            memory_bytes: snap.memory_bytes,
            rss_bytes: rss_bytes(),
        },
    }
}

/// The library's Prometheus text with the node's books added before `# EOF`.
fn books_prometheus(
    lib: String,
    incarnation: u64,
    st: &State,
    manager: &ConnectionManager,
) -> String {
    use std::fmt::Write as _;
    let mut s = lib
        .strip_suffix("# EOF\n")
        .map(str::to_owned)
        .unwrap_or(lib);
    let acked = manager.metrics_snapshot().messages_acked;
    let (accepted, back) = st.outbox.totals();
    let _ = writeln!(
        s,
        "# TYPE qudag_node_info gauge\nqudag_node_info{{incarnation=\"{incarnation}\"}} 1"
    );
    let _ = writeln!(
        s,
        "# TYPE qudag_node_outstanding gauge\nqudag_node_outstanding {}",
        accepted.saturating_sub(back).saturating_sub(acked)
    );
    let _ = writeln!(
        s,
        "# TYPE qudag_node_rss_bytes gauge\nqudag_node_rss_bytes {}",
        rss_bytes()
    );
    let _ = writeln!(
        s,
        "# TYPE qudag_node_malformed counter\nqudag_node_malformed_total {}",
        st.inbox.malformed
    );
    let mut sent: Vec<_> = st.outbox.to.iter().collect();
    sent.sort_by_key(|(p, _)| p.as_bytes());
    for (name, f) in [
        ("sent", (|s: &Sent| s.accepted) as fn(&Sent) -> u64),
        ("handed_back", |s: &Sent| s.handed_back),
        ("handed_back_maybe", |s: &Sent| s.handed_back_maybe),
    ] {
        let _ = writeln!(s, "# TYPE qudag_node_{name} counter");
        for (p, v) in &sent {
            let _ = writeln!(s, "qudag_node_{name}_total{{peer=\"{p}\"}} {}", f(v));
        }
    }
    let streams = st.inbox.streams();
    for (name, kind, f) in [
        (
            "received",
            "counter",
            (|s: &Stream| s.received) as fn(&Stream) -> u64,
        ),
        ("duplicates", "counter", |s: &Stream| s.duplicates),
        ("gaps", "counter", |s: &Stream| s.gaps),
        ("received_first", "gauge", |s: &Stream| s.first),
        ("received_last", "gauge", |s: &Stream| s.last),
        ("first_missing", "gauge", |s: &Stream| s.first_missing),
    ] {
        let _ = writeln!(s, "# TYPE qudag_node_{name} {kind}");
        let suffix = if kind == "counter" { "_total" } else { "" };
        for (p, inc, st) in &streams {
            let _ = writeln!(
                s,
                "qudag_node_{name}{suffix}{{peer=\"{p}\",incarnation=\"{inc}\"}} {}",
                f(st)
            );
        }
    }
    s.push_str("# EOF\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_runs_rounds_on_time_and_skips_a_long_stall() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 10.0);
        assert_eq!(p.due(t0), 1);
        assert_eq!(p.due(t0), 0);
        assert_eq!(p.next_at(), t0 + Duration::from_millis(100));
        assert_eq!(p.due(t0 + Duration::from_millis(350)), 3);
        assert_eq!(p.due(t0 + Duration::from_secs(100)), MAX_BURST);
        assert_eq!(p.due(t0 + Duration::from_secs(100)), 0);
        assert!(p.next_at() > t0 + Duration::from_secs(100));
    }

    #[test]
    fn rng_stays_below_n() {
        let mut r = Rng(12345);
        for n in 1..50 {
            assert!(r.below(n) < n);
        }
    }
}
