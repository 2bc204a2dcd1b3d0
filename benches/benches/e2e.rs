//! End-to-end scenarios over QUIC on 127.0.0.1, each beside its raw-quinn
//! baseline measured in the same run (issues 10 and 17).
//!
//! A custom `main` (`harness = false`): the scenarios do not fit criterion's
//! iteration model. Each measurement runs over a bounded count and is
//! repeated in interleaved rounds (manager, baseline, baseline, manager,
//! ...: every other round in reverse order), so that drift or a noise episode on a shared machine falls on both
//! sides of a pair. Every sample is written, as one JSON object per line, to
//! `target/qudag-bench/e2e.jsonl` (or `--out PATH`); `cargo xtask bench`
//! computes the medians, the spread of the pairs, the ratios and the goals
//! (`xtask/src/report.rs`) and writes `docs/BENCHMARKS.md` and the plots.
//! Nothing here asserts a time.
//!
//! Scenarios (`--only NAME` runs one): `throughput` (64 B to 64 KiB; the
//! 64 KiB rounds also measure the default sealer's rate, for the goal's
//! ceiling), `connect`, `first_message` (a new connection's first message
//! over a 20 ms RTT delay proxy), `latency`, `memory`.
//!
//! Run: `cargo bench -p qudag-benches --bench e2e -- [--quick] [--only NAME] [--out PATH]`.
//! For a profile of the manager's side alone (5 full-size runs, no
//! baseline, no output file): `-- --profile-send SIZE [PER_CALL]` under
//! `perf record`.
//!
//! Memory is counted by a `GlobalAlloc` wrapper (live heap bytes) and by RSS,
//! each measurement in a fresh process (this binary, `--measure ...`); the
//! peers that hold the other end of the connections run in a child of that
//! process (`--child ...`), so only the listener's side is counted.

use std::fmt::Write as _;
use std::io::{BufRead, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use qudag_benches::delay_proxy::DelayProxy;
use qudag_benches::{quic_manager, raw_client, raw_server, BoxError};
use qudag_net::{
    ConnectionManager, FlushPolicy, Identity, ManagerConfig, PeerAddr, PeerId, QuicConfig,
    QuicTransport, Transport,
};

#[allow(unsafe_code)]
mod counting {
    //! Live heap bytes, counted at the allocator.
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

    static LIVE: AtomicIsize = AtomicIsize::new(0);

    /// The system allocator, counting live bytes.
    pub(crate) struct Counting;

    // SAFETY: every method forwards to `System` unchanged; the counter is a
    // side effect that never touches the memory.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            // SAFETY: same contract as the caller's.
            let p = unsafe { System.alloc(l) };
            if !p.is_null() {
                LIVE.fetch_add(l.size() as isize, Relaxed);
            }
            p
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            // SAFETY: same contract as the caller's.
            let p = unsafe { System.alloc_zeroed(l) };
            if !p.is_null() {
                LIVE.fetch_add(l.size() as isize, Relaxed);
            }
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(p, l) };
            LIVE.fetch_sub(l.size() as isize, Relaxed);
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            // SAFETY: same contract as the caller's.
            let q = unsafe { System.realloc(p, l, new) };
            if !q.is_null() {
                LIVE.fetch_add(new as isize - l.size() as isize, Relaxed);
            }
            q
        }
    }

    /// Live heap bytes now.
    pub(crate) fn live() -> isize {
        LIVE.load(Relaxed)
    }
}

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// Resident set size of this process, in bytes (Linux; 0 elsewhere).
fn rss() -> i64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Counts of one run mode.
#[derive(Debug, Clone, Copy)]
struct Plan {
    quick: bool,
    repeats: usize,
    bytes_per_run: usize,
    max_messages: usize,
    connects: usize,
    latency_run: Duration,
    loads: &'static [u64],
    rtt_pings: usize,
    /// Interleaved (manager, baseline) rounds of the goal scenarios.
    pairs: usize,
    /// 64-KiB seals per round of the sealer's rate.
    sealer_iters: usize,
    /// Interleaved rounds of the time-to-first-message scenario.
    ttfm_pairs: usize,
    /// Interleaved (raw, manager) measurements of the idle-connection memory
    /// (`mem_conns` each; the `many_conns` measurement runs once per side).
    mem_pairs: usize,
    mem_conns: usize,
    many_conns: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                quick,
                repeats: 1,
                bytes_per_run: 2 << 20,
                max_messages: 10_000,
                connects: 8,
                latency_run: Duration::from_millis(400),
                loads: &[1000, 5000],
                rtt_pings: 200,
                pairs: 2,
                sealer_iters: 100,
                ttfm_pairs: 3,
                mem_pairs: 2,
                mem_conns: 100,
                many_conns: 200,
            }
        } else {
            Plan {
                quick,
                repeats: 5,
                bytes_per_run: 256 << 20,
                max_messages: 500_000,
                connects: 60,
                latency_run: Duration::from_secs(2),
                loads: &[100, 1000, 5000, 20_000],
                rtt_pings: 2000,
                pairs: 7,
                sealer_iters: 2000,
                ttfm_pairs: 15,
                mem_pairs: 3,
                mem_conns: 1000,
                many_conns: 10_000,
            }
        }
    }

    fn count(&self, size: usize) -> usize {
        (self.bytes_per_run / size).clamp(200, self.max_messages)
    }
}

/// One JSON line, flat: string, number and number-array fields only.
#[derive(Default)]
struct Line(String);

impl Line {
    fn new(kind: &str) -> Self {
        let mut l = Line(String::from("{"));
        l.s("kind", kind);
        l
    }
    fn sep(&mut self) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
    }
    fn s(&mut self, k: &str, v: &str) -> &mut Self {
        self.sep();
        let v = v.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = write!(self.0, "\"{k}\":\"{v}\"");
        self
    }
    fn n(&mut self, k: &str, v: f64) -> &mut Self {
        self.sep();
        if v.is_finite() {
            let _ = write!(self.0, "\"{k}\":{v}");
        } else {
            let _ = write!(self.0, "\"{k}\":null");
        }
        self
    }
    fn arr(&mut self, k: &str, v: &[f64]) -> &mut Self {
        self.sep();
        let _ = write!(self.0, "\"{k}\":[");
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            if x.is_finite() {
                let _ = write!(self.0, "{x}");
            } else {
                self.0.push_str("null");
            }
        }
        self.0.push(']');
        self
    }
    fn done(&mut self) -> String {
        let mut s = std::mem::take(&mut self.0);
        s.push('}');
        s
    }
}

/// One row of the report: a figure's samples beside its baseline's.
#[derive(Default)]
struct Row<'a> {
    /// Stable key the report's goals refer to.
    id: &'a str,
    scenario: &'a str,
    figure: &'a str,
    unit: &'a str,
    baseline: &'a str,
    values: &'a [f64],
    baseline_values: &'a [f64],
    /// `values[i]` and `baseline_values[i]` were measured back to back.
    paired: bool,
    /// The ratio is baseline / figure (times faster) instead of figure / baseline.
    inverted: bool,
    /// More sample arrays (e.g. `sealer_values`), by field name.
    extra: &'a [(&'a str, &'a [f64])],
    note: &'a str,
}

/// Where the lines go: the file and stdout.
struct Out {
    file: std::fs::File,
}

impl Out {
    fn emit(&mut self, mut line: Line) {
        let s = line.done();
        println!("{s}");
        let _ = writeln!(self.file, "{s}");
        let _ = self.file.flush();
    }

    /// A figure beside its baseline: every sample of each, so that the
    /// report computes the medians, the spread and the ratio, and judges the
    /// goal (xtask/src/report.rs, keyed by `row.id`).
    fn result(&mut self, row: &Row<'_>) {
        let mut l = Line::new("result");
        l.s("id", row.id)
            .s("scenario", row.scenario)
            .s("figure", row.figure)
            .s("unit", row.unit)
            .s("baseline", row.baseline)
            .arr("values", row.values)
            .arr("baseline_values", row.baseline_values)
            .s("paired", if row.paired { "yes" } else { "no" })
            .s(
                "ratio_of",
                if row.inverted {
                    "baseline/figure"
                } else {
                    "figure/baseline"
                },
            );
        for (k, v) in row.extra {
            l.arr(k, v);
        }
        l.s("note", row.note);
        eprintln!(
            "e2e: {}: median {:.4} {} against {:.4} ({} and {} samples)",
            row.id,
            median(row.values.to_vec()),
            row.unit,
            median(row.baseline_values.to_vec()),
            row.values.len(),
            row.baseline_values.len()
        );
        self.emit(l);
    }

    fn point(&mut self, plot: &str, series: &str, x: f64, y: f64) {
        let mut l = Line::new("point");
        l.s("plot", plot).s("series", series).n("x", x).n("y", y);
        self.emit(l);
    }

    fn info(&mut self, key: &str, value: &str) {
        let mut l = Line::new("info");
        l.s("key", key).s("value", value);
        self.emit(l);
    }
}

/// The median (the mean of the two middle samples for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn manager_config(policy: FlushPolicy) -> ManagerConfig {
    let mut c = ManagerConfig::default();
    c.batch_mut().policy(policy);
    c
}

/// Polls `cond` every few ms until it holds or `limit` passes (a bench, not a test).
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

// ---------------------------------------------------------------- throughput

/// What one manager throughput run saw.
struct MgrRun {
    msgs_per_sec: f64,
    msgs_per_batch: f64,
    bytes_per_batch: f64,
}

/// `per_call` 1 sends with `send`, one message per call; above 1 with
/// `send_many`, `per_call` messages per call.
async fn manager_throughput(
    size: usize,
    count: usize,
    per_call: usize,
) -> Result<MgrRun, BoxError> {
    let (a, _) = quic_manager(manager_config(FlushPolicy::Adaptive), QuicConfig::default())?;
    let (b, b_addr) = quic_manager(manager_config(FlushPolicy::Adaptive), QuicConfig::default())?;
    let mut incoming = b.incoming().ok_or("incoming taken")?;
    a.connect(b_addr).await?;
    let payload = Bytes::from(vec![0xA5; size]);
    // Warm up: one message there, so both sessions are up.
    a.send(&b_addr.peer, payload.clone()).await?;
    incoming.recv().await.ok_or("no warm-up message")?;
    let before = a.metrics_snapshot();
    let start = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut n = 0;
        while n < count {
            match incoming.recv_batch().await {
                Some((_, batch)) => n += batch.len(),
                None => break,
            }
        }
        (n, Instant::now())
    });
    if per_call <= 1 {
        for _ in 0..count {
            a.send(&b_addr.peer, payload.clone()).await?;
        }
    } else {
        let mut left = count;
        while left > 0 {
            let k = left.min(per_call);
            a.send_many(&b_addr.peer, vec![payload.clone(); k]).await?;
            left -= k;
        }
    }
    let (got, end) = receiver.await?;
    if got < count {
        return Err(format!("received {got} of {count}").into());
    }
    let secs = end.duration_since(start).as_secs_f64();
    let after = a.metrics_snapshot();
    let batches = (after.batches_sent - before.batches_sent).max(1) as f64;
    let run = MgrRun {
        msgs_per_sec: count as f64 / secs,
        msgs_per_batch: (after.messages_sent - before.messages_sent) as f64 / batches,
        bytes_per_batch: (after.bytes_sent - before.bytes_sent) as f64 / batches,
    };
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
    Ok(run)
}

/// A raw quinn connection: the client side and the server side.
async fn raw_pair(
    server_bidi: u32,
    server_uni: u32,
) -> Result<
    (
        quinn::Endpoint,
        quinn::Endpoint,
        quinn::Connection,
        quinn::Connection,
    ),
    BoxError,
> {
    let server = raw_server(server_bidi, server_uni)?;
    let client = raw_client(0, 0)?;
    let addr = server.local_addr()?;
    let connecting = client.connect(addr, "raw")?;
    let (c, s) = tokio::join!(connecting, async {
        match server.accept().await {
            Some(i) => i.await.map_err(BoxError::from),
            None => Err("server closed".into()),
        }
    });
    Ok((server, client, c?, s?))
}

/// Raw quinn: every message with its own `write_all` on one stream.
async fn raw_stream_throughput(size: usize, count: usize) -> Result<f64, BoxError> {
    let (_se, _ce, c, s) = raw_pair(1, 0).await?;
    let (mut tx, _crx) = c.open_bi().await?;
    tx.write_all(&[0]).await?;
    let (_stx, mut rx) = s.accept_bi().await?;
    let mut one = [0u8; 1];
    rx.read_exact(&mut one).await?;
    let total = size * count;
    let payload = vec![0xA5u8; size];
    let start = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            match rx.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => n += chunk.bytes.len(),
                _ => break,
            }
        }
        (n, Instant::now())
    });
    for _ in 0..count {
        tx.write_all(&payload).await?;
    }
    let (got, end) = receiver.await?;
    if got < total {
        return Err(format!("received {got} of {total} bytes").into());
    }
    c.close(0u32.into(), b"done");
    Ok(count as f64 / end.duration_since(start).as_secs_f64())
}

/// Raw quinn: one unidirectional stream per message.
async fn raw_uni_throughput(size: usize, count: usize) -> Result<f64, BoxError> {
    let (_se, _ce, c, s) = raw_pair(0, 1024).await?;
    let payload = vec![0xA5u8; size];
    let start = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut n = 0;
        while n < count {
            let Ok(mut rx) = s.accept_uni().await else {
                break;
            };
            if rx.read_to_end(size).await.is_err() {
                break;
            }
            n += 1;
        }
        (n, Instant::now())
    });
    for _ in 0..count {
        let mut tx = c.open_uni().await?;
        tx.write_all(&payload).await?;
        tx.finish()?;
    }
    let (got, end) = receiver.await?;
    if got < count {
        return Err(format!("received {got} of {count} streams").into());
    }
    c.close(0u32.into(), b"done");
    Ok(count as f64 / end.duration_since(start).as_secs_f64())
}

/// The default sealer (ring's ChaCha20-Poly1305) sealing `iters` 64-KiB
/// buffers in a row on this thread: MB/s of plaintext. The figure the 64 KiB
/// goal's ceiling is computed from, measured in the same process and run.
fn sealer_rate(iters: usize) -> Result<f64, BoxError> {
    let mut sealer = qudag_crypto::default_sealer(qudag_crypto::SessionKey::from_bytes([7; 32]));
    let mut buf = vec![0x5Au8; 65536];
    // One warm-up seal, then the timed ones.
    let seq = sealer.next_seal_seq();
    std::hint::black_box(sealer.seal_in_place(seq, b"aad", &mut buf)?);
    let start = Instant::now();
    for _ in 0..iters {
        let seq = sealer.next_seal_seq();
        std::hint::black_box(sealer.seal_in_place(seq, b"aad", std::hint::black_box(&mut buf))?);
    }
    Ok(iters as f64 * 65536.0 / start.elapsed().as_secs_f64() / 1e6)
}

/// One run of a throughput round.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// The manager, `send` per message.
    Send,
    /// Raw quinn, `write_all` per message on one stream.
    Raw,
    /// The manager, `send_many` with 64 messages per call.
    Many,
    /// Raw quinn, a uni stream per message.
    Uni,
    /// The default sealer's rate at 64 KiB.
    Sealer,
}

/// The message sizes of the throughput plot; 128 B and 64 KiB also carry goals.
const SIZES: [usize; 6] = [64, 128, 1024, 4096, 16384, 65536];

/// Every size is measured in interleaved rounds (manager, then raw quinn,
/// then the extra runs of that size; every other round in reverse order),
/// so drift or a noise episode on a shared machine hits both sides of a pair; the report takes the median of
/// each side and shows the spread of the per-pair ratios.
async fn throughput(plan: &Plan, out: &mut Out) -> Result<(), BoxError> {
    for size in SIZES {
        let count = plan.count(size);
        let goal_size = size == 128 || size == 65536;
        let rounds = if goal_size { plan.pairs } else { plan.repeats };
        let (mut mgr, mut raw, mut many, mut uni, mut sealer) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut batching = Vec::new();
        let uni_count = (count / 4).max(200);
        for round in 0..rounds {
            let mut jobs = vec![Job::Send, Job::Raw];
            if size == 128 {
                jobs.extend([Job::Many, Job::Uni]);
            }
            if size == 65536 {
                jobs.push(Job::Sealer);
            }
            // ABBA: every other round runs in reverse, so no side always goes first.
            if round % 2 == 1 {
                jobs.reverse();
            }
            for job in jobs {
                match job {
                    Job::Send => {
                        let run = manager_throughput(size, count, 1).await?;
                        mgr.push(run.msgs_per_sec);
                        batching.push((run.msgs_per_sec, run.msgs_per_batch, run.bytes_per_batch));
                    }
                    Job::Raw => raw.push(raw_stream_throughput(size, count).await?),
                    Job::Many => many.push(manager_throughput(size, count, 64).await?.msgs_per_sec),
                    Job::Uni => uni.push(raw_uni_throughput(size, uni_count).await?),
                    Job::Sealer => sealer.push(sealer_rate(plan.sealer_iters)?),
                }
            }
        }
        let mb = |m: f64| m * size as f64 / 1e6;
        out.point(
            "throughput",
            "qudag manager (adaptive)",
            size as f64,
            mb(median(mgr.clone())),
        );
        out.point(
            "throughput",
            "raw quinn, write_all per message",
            size as f64,
            mb(median(raw.clone())),
        );
        // The batching of the run whose rate is the median (or next above it).
        batching.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (_, per_batch, bytes_per_batch) = batching[batching.len() / 2];
        out.info(
            &format!("batching at {size} B"),
            &format!(
                "{per_batch:.1} messages and {bytes_per_batch:.0} wire bytes per batch ({count} messages per run)"
            ),
        );
        if size == 128 {
            out.result(&Row {
                id: "tput_128_send",
                scenario: "throughput 128 B",
                figure: "manager, send (sealed + batched, adaptive)",
                unit: "msg/s",
                baseline: "raw quinn, write_all per message on one stream",
                values: &mgr,
                baseline_values: &raw,
                paired: true,
                note: "ratio = manager / baseline",
                ..Row::default()
            });
            out.result(&Row {
                id: "tput_128_many",
                scenario: "throughput 128 B",
                figure: "manager, send_many (64 per call)",
                unit: "msg/s",
                baseline: "raw quinn, write_all per message on one stream",
                values: &many,
                baseline_values: &raw,
                paired: true,
                note: "the same traffic through send_many (one peer lookup, clock read and queue reservation per call), run right after the pair's baseline; ratio = manager / baseline",
                ..Row::default()
            });
            out.result(&Row {
                id: "tput_128_uni",
                scenario: "throughput 128 B",
                figure: "manager, send (sealed + batched, adaptive)",
                unit: "msg/s",
                baseline: "raw quinn, one uni stream per message",
                values: &mgr,
                baseline_values: &uni,
                paired: true,
                note: &format!(
                    "the baseline sends {uni_count} messages per run; ratio = manager / baseline"
                ),
                ..Row::default()
            });
        }
        if size == 65536 {
            let to_mb = |v: &[f64]| v.iter().map(|&m| mb(m)).collect::<Vec<f64>>();
            out.result(&Row {
                id: "tput_64k",
                scenario: "throughput 64 KiB",
                figure: "manager, send (sealed + batched, adaptive)",
                unit: "MB/s",
                baseline: "raw quinn, bulk on one stream",
                values: &to_mb(&mgr),
                baseline_values: &to_mb(&raw),
                paired: true,
                extra: &[("sealer_values", &sealer)],
                note: &format!(
                    "ratio = manager / baseline; ceiling = 1 / (1 / raw + 1 / sealer), sealer = the default sealer (ring ChaCha20-Poly1305) sealing 64-KiB buffers on one thread, {} per round, measured in each round of this run",
                    plan.sealer_iters
                ),
                ..Row::default()
            });
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ connect

async fn connect(plan: &Plan, out: &mut Out) -> Result<(), BoxError> {
    let k = plan.connects;
    let loopback = || std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    // Everything is set up first; then round i measures one connect of each
    // kind in turn, so drift on a shared machine hits all of them alike.
    let mut cfg = manager_config(FlushPolicy::Adaptive);
    cfg.pool_mut().max_connections(k + 16);
    let (hub, hub_addr) = quic_manager(cfg, QuicConfig::default())?;
    let mut dialers = Vec::new();
    for _ in 0..k {
        dialers.push(quic_manager(manager_config(FlushPolicy::Adaptive), QuicConfig::default())?.0);
    }

    // Raw quinn: the handshake alone.
    let server = raw_server(1, 0)?;
    let addr = server.local_addr()?;
    let accept_raw = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(i) = server.accept().await {
            if let Ok(c) = i.await {
                held.push(c);
            }
        }
    });
    let client = raw_client(0, 0)?;

    // Raw quinn plus an acceptance byte: the server opens a uni stream once
    // its side of the handshake completes and writes one byte; the client's
    // connect ends when it read it (what the qudag transport's dial does).
    let ack_server = raw_server(0, 0)?;
    let ack_addr = ack_server.local_addr()?;
    let accept_ack = tokio::spawn(async move {
        while let Some(i) = ack_server.accept().await {
            tokio::spawn(async move {
                let Ok(c) = i.await else { return };
                if let Ok(mut s) = c.open_uni().await {
                    let _ = s.write_all(&[0x41]).await;
                    let _ = s.finish();
                }
                c.closed().await;
            });
        }
    });
    let ack_client = raw_client(0, 1)?;

    // The qudag transport's dial alone (handshake, PeerId check, the
    // listener's hello), without the acceptance byte or the manager's
    // session set-up.
    let listener_id = Identity::generate()?;
    let listener = Arc::new(QuicTransport::bind(
        loopback(),
        &listener_id,
        QuicConfig::default(),
    )?);
    let to = PeerAddr::new(listener_id.peer_id(), listener.local_addr());
    let accepting = listener.clone();
    let accept_transport = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok(c) = accepting.accept().await {
            held.push(c);
        }
    });
    let dialer = QuicTransport::bind(loopback(), &Identity::generate()?, QuicConfig::default())?;

    let (mut raw, mut raw_ack, mut dials, mut new) = (
        Vec::with_capacity(k),
        Vec::with_capacity(k),
        Vec::with_capacity(k),
        Vec::with_capacity(k),
    );
    let mut conns = Vec::new();
    let mut dialed = Vec::new();
    let us = |t: Instant| t.elapsed().as_secs_f64() * 1e6;
    for d in &dialers {
        let t = Instant::now();
        conns.push(client.connect(addr, "raw")?.await?);
        raw.push(us(t));

        let t = Instant::now();
        let c = ack_client.connect(ack_addr, "raw")?.await?;
        let mut s = c.accept_uni().await?;
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await?;
        raw_ack.push(us(t));
        conns.push(c);

        let t = Instant::now();
        dialed.push(dialer.dial(&to).await?);
        dials.push(us(t));

        let t = Instant::now();
        d.connect(hub_addr).await?;
        new.push(us(t));
    }
    let d = &dialers[0];
    let mut reuse = Vec::new();
    for _ in 0..k.max(20) {
        d.disconnect(&hub_addr.peer).await?;
        let t = Instant::now();
        d.connect(hub_addr).await?;
        reuse.push(us(t));
    }
    for d in &dialers {
        d.shutdown(Duration::from_millis(200)).await;
    }
    hub.shutdown(Duration::from_millis(200)).await;
    client.close(0u32.into(), b"done");
    ack_client.close(0u32.into(), b"done");
    dialer.close();
    listener.close();
    for task in [accept_raw, accept_ack, accept_transport] {
        task.abort();
    }
    drop((conns, dialed));
    let base = "raw quinn handshake (mutual TLS 1.3)";
    out.result(&Row {
        id: "connect_raw_ack",
        scenario: "connect",
        figure: "raw quinn handshake + acceptance byte",
        unit: "µs",
        baseline: base,
        values: &raw_ack,
        baseline_values: &raw,
        paired: true,
        note: "diagnostic: what waiting for a byte the listener sends after its side of the handshake costs by itself",
        ..Row::default()
    });
    out.result(&Row {
        id: "connect_dial",
        scenario: "connect",
        figure: "qudag transport dial alone (no manager)",
        unit: "µs",
        baseline: base,
        values: &dials,
        baseline_values: &raw,
        paired: true,
        note: "diagnostic: the transport's share of the manager's connect (handshake, PeerId check, the listener's hello; not the acceptance byte); the rest is the acceptance byte and the manager's session set-up",
        ..Row::default()
    });
    out.result(&Row {
        id: "connect_new",
        scenario: "connect",
        figure: "manager connect, new connection",
        unit: "µs",
        baseline: base,
        values: &new,
        baseline_values: &raw,
        paired: true,
        note: "ratio = manager / baseline (lower is better); the manager also waits for the listener's acceptance byte and opens the batch stream",
        ..Row::default()
    });
    out.result(&Row {
        id: "connect_reuse",
        scenario: "connect",
        figure: "manager connect, pooled reuse",
        unit: "µs",
        baseline: "manager connect, new connection",
        values: &reuse,
        baseline_values: &new,
        inverted: true,
        note: "ratio = new / reuse (times faster)",
        ..Row::default()
    });
    Ok(())
}

// ------------------------------------------------------------------ latency

async fn manager_latency(
    policy: FlushPolicy,
    rate: u64,
    run: Duration,
) -> Result<(f64, f64), BoxError> {
    let (a, _) = quic_manager(manager_config(policy), QuicConfig::default())?;
    let (b, b_addr) = quic_manager(manager_config(policy), QuicConfig::default())?;
    let mut incoming = b.incoming().ok_or("incoming taken")?;
    a.connect(b_addr).await?;
    let drain = tokio::spawn(async move { while incoming.recv_batch().await.is_some() {} });
    let period = Duration::from_millis((1000 / rate).max(1));
    let per_tick = (rate as f64 * period.as_secs_f64()).round().max(1.0) as u64;
    let ticks = (run.as_secs_f64() / period.as_secs_f64()).ceil() as u64;
    let payload = Bytes::from(vec![0x5Au8; 128]);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..ticks {
        tick.tick().await;
        for _ in 0..per_tick {
            a.send(&b_addr.peer, payload.clone()).await?;
        }
    }
    let total = ticks * per_tick;
    wait_until(Duration::from_secs(20), || {
        a.metrics_snapshot().messages_acked >= total
    })
    .await;
    let lat = a.metrics_snapshot().latency;
    a.shutdown(Duration::from_millis(500)).await;
    b.shutdown(Duration::from_millis(500)).await;
    drain.abort();
    Ok((lat.p50.as_secs_f64() * 1e6, lat.p99.as_secs_f64() * 1e6))
}

async fn raw_rtt(pings: usize) -> Result<(f64, f64), BoxError> {
    let (_se, _ce, c, s) = raw_pair(1, 0).await?;
    let (mut tx, mut rx) = c.open_bi().await?;
    let mut msg = vec![0x5Au8; 128];
    tx.write_all(&msg).await?;
    let echo = tokio::spawn(async move {
        let (mut stx, mut srx) = s.accept_bi().await?;
        let mut buf = vec![0u8; 128];
        loop {
            if srx.read_exact(&mut buf).await.is_err() {
                return Ok::<_, BoxError>(());
            }
            stx.write_all(&buf).await?;
        }
    });
    rx.read_exact(&mut msg).await?;
    let mut samples = Vec::with_capacity(pings);
    for _ in 0..pings {
        let t = Instant::now();
        tx.write_all(&msg).await?;
        rx.read_exact(&mut msg).await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    c.close(0u32.into(), b"done");
    echo.abort();
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99)))
}

async fn latency(plan: &Plan, out: &mut Out) -> Result<(), BoxError> {
    let (rtt50, rtt99) = raw_rtt(plan.rtt_pings).await?;
    let mut at_1000 = Vec::new();
    for &rate in plan.loads {
        for (name, policy) in [
            ("adaptive", FlushPolicy::Adaptive),
            ("fixed", FlushPolicy::Fixed),
        ] {
            let mut p50s = Vec::new();
            let mut p99s = Vec::new();
            for _ in 0..plan.repeats.min(2) {
                let (p50, p99) = manager_latency(policy, rate, plan.latency_run).await?;
                p50s.push(p50);
                p99s.push(p99);
            }
            let (p50, p99) = (median(p50s.clone()), median(p99s.clone()));
            out.point("latency", &format!("{name} p50"), rate as f64, p50 / 1000.0);
            out.point("latency", &format!("{name} p99"), rate as f64, p99 / 1000.0);
            if rate == 1000 {
                at_1000.push((name, p50s, p99s));
            }
        }
    }
    out.point(
        "latency",
        "raw quinn RTT p50",
        plan.loads[0] as f64,
        rtt50 / 1000.0,
    );
    out.point(
        "latency",
        "raw quinn RTT p50",
        *plan.loads.last().unwrap_or(&1000) as f64,
        rtt50 / 1000.0,
    );
    for (name, p50s, p99s) in at_1000 {
        let id50 = format!("latency_p50_{name}");
        let id99 = format!("latency_p99_{name}");
        out.result(&Row {
            id: &id50,
            scenario: "latency at 1,000 msg/s",
            figure: &format!("send→ack p50, {name}"),
            unit: "µs",
            baseline: "raw quinn ping-pong RTT p50",
            values: &p50s,
            baseline_values: &[rtt50],
            note: "ratio = manager / baseline (lower is better)",
            ..Row::default()
        });
        out.result(&Row {
            id: &id99,
            scenario: "latency at 1,000 msg/s",
            figure: &format!("send→ack p99, {name}"),
            unit: "µs",
            baseline: "raw quinn ping-pong RTT p99",
            values: &p99s,
            baseline_values: &[rtt99],
            note: "ratio = manager / baseline (lower is better)",
            ..Row::default()
        });
    }
    Ok(())
}

// ------------------------------------------------- first message over a delay

/// One way of the delayed link: 20 ms RTT.
const ONE_WAY: Duration = Duration::from_millis(10);

/// The first message's payload.
const FIRST: [u8; 128] = [0x42; 128];

/// Fresh managers on both ends, the listener behind a [`DelayProxy`]: µs
/// from the first `send` to a peer met for the first time (its address
/// given with `add_peer`, no `connect`) until the listener's application
/// holds the message. The send dials; the listener's hello (its
/// incarnation, with its handshake flight) lets the batch leave right
/// behind the handshake. Set-up and shutdown are not timed.
async fn ttfm_manager() -> Result<f64, BoxError> {
    let (pair, incoming) = delayed_pair(manager_config(FlushPolicy::Adaptive)).await?;
    let receiver = first_receipt(incoming);
    pair.a.add_peer(pair.to)?;
    let start = Instant::now();
    send_first(pair, receiver, start).await
}

/// Two fresh managers over QUIC, the listener `b` behind a [`DelayProxy`]
/// (`to` is its address through the proxy); `a` runs with `a_config`.
struct DelayedPair {
    a: ConnectionManager,
    b: ConnectionManager,
    to: PeerAddr,
    proxy: DelayProxy,
}

/// A [`DelayedPair`] and the listener's `Incoming`.
async fn delayed_pair(
    a_config: ManagerConfig,
) -> Result<(DelayedPair, qudag_net::Incoming), BoxError> {
    let (a, _) = quic_manager(a_config, QuicConfig::default())?;
    let (b, b_addr) = quic_manager(manager_config(FlushPolicy::Adaptive), QuicConfig::default())?;
    let incoming = b.incoming().ok_or("incoming taken")?;
    let proxy = DelayProxy::start(b_addr.addr, ONE_WAY).await?;
    let to = PeerAddr::new(b_addr.peer, proxy.addr());
    Ok((DelayedPair { a, b, to, proxy }, incoming))
}

/// The listener's application waiting for its first message: its length
/// and when it arrived.
fn first_receipt(
    mut incoming: qudag_net::Incoming,
) -> tokio::task::JoinHandle<(Option<usize>, Instant, qudag_net::Incoming)> {
    tokio::spawn(async move {
        let got = incoming.recv().await;
        (got.map(|(_, m)| m.len()), Instant::now(), incoming)
    })
}

/// Sends the first message from `a` to `b`, waits until `receiver` has it,
/// shuts both managers and the proxy down (not timed), and returns the µs
/// from `start` until the listener's application held the message.
async fn send_first(
    pair: DelayedPair,
    receiver: tokio::task::JoinHandle<(Option<usize>, Instant, qudag_net::Incoming)>,
    start: Instant,
) -> Result<f64, BoxError> {
    let DelayedPair { a, b, to, proxy } = pair;
    a.send(&to.peer, Bytes::from_static(&FIRST)).await?;
    let (got, end, _incoming) = tokio::time::timeout(Duration::from_secs(10), receiver).await??;
    if got != Some(FIRST.len()) {
        return Err(format!("the listener got {got:?} instead of the first message").into());
    }
    a.shutdown(Duration::from_millis(100)).await;
    b.shutdown(Duration::from_millis(100)).await;
    proxy.close().await;
    Ok(end.duration_since(start).as_secs_f64() * 1e6)
}

/// As [`ttfm_manager`], with `connect` first: µs from the start of
/// `connect` until the listener's application holds the first message
/// (`connect`, then one `send`), and µs until `connect` returned (it waits
/// for the listener's acceptance byte, one round trip after the handshake).
async fn ttfm_manager_connect() -> Result<(f64, f64), BoxError> {
    let (pair, incoming) = delayed_pair(manager_config(FlushPolicy::Adaptive)).await?;
    let receiver = first_receipt(incoming);
    let start = Instant::now();
    pair.a.connect(pair.to).await?;
    let connected = start.elapsed();
    let total = send_first(pair, receiver, start).await?;
    Ok((total, connected.as_secs_f64() * 1e6))
}

/// A known peer on a new connection: after a first exchange, the pooled
/// connection expires on both sides (the peers stay known); then µs from
/// one `send` (no `connect`) until the listener's application holds the
/// message. The send dials without waiting for the listener's acceptance
/// byte; the listener's hello tells its incarnation, so the batch (sent
/// to the same incarnation before) leaves behind the handshake.
async fn ttfm_manager_known() -> Result<f64, BoxError> {
    let mut cfg = manager_config(FlushPolicy::Adaptive);
    cfg.pool_mut().idle_timeout(Duration::from_millis(50));
    let (pair, mut incoming) = delayed_pair(cfg).await?;
    let (a, b, to) = (&pair.a, &pair.b, pair.to);
    a.connect(to).await?;
    a.send(&to.peer, Bytes::from_static(&FIRST)).await?;
    tokio::time::timeout(Duration::from_secs(10), incoming.recv())
        .await?
        .ok_or("no first exchange")?;
    a.disconnect(&to.peer).await?;
    if !wait_until(Duration::from_secs(10), || {
        a.open_connections() == 0 && b.open_connections() == 0
    })
    .await
    {
        return Err("the pooled connection did not expire".into());
    }
    let receiver = first_receipt(incoming);
    let start = Instant::now();
    send_first(pair, receiver, start).await
}

/// The same over raw quinn through the same kind of proxy: µs from the
/// start of `connect` until the server read the bytes (connect, open a uni
/// stream, `write_all`; the server accepts the stream and reads them), and
/// µs until the client's `connect` returned.
async fn ttfm_raw() -> Result<(f64, f64), BoxError> {
    let server = raw_server(0, 1)?;
    let client = raw_client(0, 0)?;
    let proxy = DelayProxy::start(server.local_addr()?, ONE_WAY).await?;
    let receiver = tokio::spawn(async move {
        let c = server.accept().await.ok_or("server closed")?.await?;
        let mut rx = c.accept_uni().await?;
        let mut buf = [0u8; FIRST.len()];
        rx.read_exact(&mut buf).await?;
        Ok::<_, BoxError>((Instant::now(), c, server))
    });
    let start = Instant::now();
    let c = client.connect(proxy.addr(), "raw")?.await?;
    let connected = start.elapsed();
    let mut tx = c.open_uni().await?;
    tx.write_all(&FIRST).await?;
    let (end, sc, server) = tokio::time::timeout(Duration::from_secs(10), receiver).await???;
    c.close(0u32.into(), b"done");
    sc.close(0u32.into(), b"done");
    drop((tx, server, client));
    proxy.close().await;
    Ok((
        end.duration_since(start).as_secs_f64() * 1e6,
        connected.as_secs_f64() * 1e6,
    ))
}

/// Time to the first delivered message on a new connection over 20 ms RTT:
/// manager and raw quinn in interleaved rounds.
async fn first_message(plan: &Plan, out: &mut Out) -> Result<(), BoxError> {
    let (mut mgr, mut raw, mut known, mut with_connect) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..plan.ttfm_pairs {
        if round % 2 == 0 {
            mgr.push(ttfm_manager().await?);
            raw.push(ttfm_raw().await?);
            known.push(ttfm_manager_known().await?);
            with_connect.push(ttfm_manager_connect().await?);
        } else {
            with_connect.push(ttfm_manager_connect().await?);
            known.push(ttfm_manager_known().await?);
            raw.push(ttfm_raw().await?);
            mgr.push(ttfm_manager().await?);
        }
    }
    let (with_connect, mgr_connect): (Vec<f64>, Vec<f64>) = with_connect.into_iter().unzip();
    let (raw, raw_connect): (Vec<f64>, Vec<f64>) = raw.into_iter().unzip();
    out.result(&Row {
        id: "ttfm_rtt20",
        scenario: "first message, 20 ms RTT",
        figure: "manager: first send to a peer met for the first time (add_peer, no connect), listener's application receives",
        unit: "µs",
        baseline: "raw quinn: connect, open stream, write_all, peer reads",
        values: &mgr,
        baseline_values: &raw,
        paired: true,
        note: "a new connection each round, through a user-space UDP delay proxy on 127.0.0.1 (10 ms each way, benches/src/delay_proxy.rs); 128-B message; ratio = manager / baseline (lower is better)",
        ..Row::default()
    });
    out.result(&Row {
        id: "ttfm_known",
        scenario: "first message, 20 ms RTT",
        figure: "manager: send to a known peer, new connection (no connect)",
        unit: "µs",
        baseline: "raw quinn: connect, open stream, write_all, peer reads",
        values: &known,
        baseline_values: &raw,
        paired: true,
        note: "diagnostic, same rounds: the peer was met before and its pooled connection expired; the send dials without waiting for the acceptance byte, and the listener's hello lets its batch leave behind the handshake; ratio = manager / baseline (lower is better)",
        ..Row::default()
    });
    out.result(&Row {
        id: "ttfm_connect_send",
        scenario: "first message, 20 ms RTT",
        figure: "manager: connect, then send, listener's application receives",
        unit: "µs",
        baseline: "raw quinn: connect, open stream, write_all, peer reads",
        values: &with_connect,
        baseline_values: &raw,
        paired: true,
        note: "diagnostic, same rounds: connect waits for the listener's acceptance byte (one round trip after the handshake) to report a refusal, so the send starts later; ratio = manager / baseline (lower is better)",
        ..Row::default()
    });
    out.result(&Row {
        id: "ttfm_connect",
        scenario: "first message, 20 ms RTT",
        figure: "of which (connect, then send): manager connect returned",
        unit: "µs",
        baseline: "of which: raw quinn connect returned",
        values: &mgr_connect,
        baseline_values: &raw_connect,
        paired: true,
        note: "diagnostic, same runs: the share of the time to the first message spent before connect returned; the rest is the first send to the listener's application",
        ..Row::default()
    });
    Ok(())
}

// ------------------------------------------------------------------- memory

/// What the parent saw while a child held `n` connections to it.
struct MemRun {
    heap_per_conn: f64,
    rss_per_conn: f64,
    heap_total: f64,
    setup_secs: f64,
    held: usize,
    pooled: usize,
    /// The manager's own `memory_bytes` gauge per connection (buffers it accounts).
    accounted_per_conn: f64,
}

impl MemRun {
    fn to_line(&self) -> String {
        format!(
            "measured {} {} {} {} {} {} {}",
            self.heap_per_conn,
            self.rss_per_conn,
            self.heap_total,
            self.setup_secs,
            self.held,
            self.pooled,
            self.accounted_per_conn
        )
    }

    fn from_line(line: &str) -> Option<MemRun> {
        let mut f = line.strip_prefix("measured ")?.split_whitespace();
        let mut next = || f.next()?.parse::<f64>().ok();
        Some(MemRun {
            heap_per_conn: next()?,
            rss_per_conn: next()?,
            heap_total: next()?,
            setup_secs: next()?,
            held: next()? as usize,
            pooled: next()? as usize,
            accounted_per_conn: next()?,
        })
    }
}

/// Runs one memory measurement in a fresh process (`--measure`), so that
/// neither its heap nor its RSS is disturbed by what earlier scenarios freed.
async fn measure_in_process(kind: &str, n: usize, limit: Duration) -> Result<MemRun, BoxError> {
    let exe = std::env::current_exe()?;
    let args = [
        "--measure".to_owned(),
        kind.to_owned(),
        n.to_string(),
        limit.as_secs().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(exe)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
    })
    .await??;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(MemRun::from_line)
        .ok_or_else(|| format!("memory measurement {kind} {n} printed no result: {text}").into())
}

/// The `--measure` process: one measurement, one `measured ...` line.
async fn measure(args: &[String]) -> Result<(), BoxError> {
    let kind = args.first().map(String::as_str).unwrap_or("");
    let n: usize = args.get(1).ok_or("count")?.parse()?;
    let limit = Duration::from_secs(args.get(2).ok_or("limit")?.parse()?);
    let run = match kind {
        "raw" => raw_memory(n, limit).await?,
        "manager" => manager_memory(n, limit).await?,
        other => return Err(format!("unknown measurement {other:?}").into()),
    };
    println!("{}", run.to_line());
    Ok(())
}

fn spawn_child(args: &[String]) -> Result<std::process::Child, BoxError> {
    Ok(Command::new(std::env::current_exe()?)
        .arg("--child")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?)
}

/// Waits (on a blocking thread) for the child's `ready` line; returns its count.
async fn child_ready(child: &mut std::process::Child, limit: Duration) -> Option<usize> {
    let stdout = child.stdout.take()?;
    let read = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.ok()?;
            if let Some(n) = line.strip_prefix("ready ") {
                return n.trim().parse::<usize>().ok();
            }
        }
        None
    });
    tokio::time::timeout(limit, read).await.ok()?.ok()?
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn manager_memory(n: usize, limit: Duration) -> Result<MemRun, BoxError> {
    let mut cfg = manager_config(FlushPolicy::Adaptive);
    cfg.pool_mut().max_connections(n + 64);
    let mut quic = QuicConfig::default();
    // One child process dials every connection from one address.
    quic.accept_backlog(1024)
        .max_handshakes(1024)
        .max_handshakes_per_ip(1024)
        .retry_above(1024);
    let (hub, hub_addr) = quic_manager(cfg, quic)?;
    settle().await;
    let (heap0, rss0) = (counting::live(), rss());
    let start = Instant::now();
    let mut child = spawn_child(&[
        "manager".into(),
        n.to_string(),
        hub_addr.addr.to_string(),
        hub_addr.peer.to_string(),
    ])?;
    let ready = child_ready(&mut child, limit).await;
    let _ = wait_until(Duration::from_secs(10), || hub.open_connections() >= n).await;
    let setup_secs = start.elapsed().as_secs_f64();
    let held = hub.open_connections();
    if ready.is_none() {
        eprintln!("e2e: the child did not report ready within {limit:?}; {held} connections held");
    }
    for p in hub.peers() {
        let _ = hub.disconnect(&p).await;
    }
    let _ = wait_until(Duration::from_secs(5), || hub.pooled_connections() >= held).await;
    settle().await;
    let pooled = hub.pooled_connections();
    let accounted = hub.metrics_snapshot().memory_bytes as f64;
    let (heap1, rss1) = (counting::live(), rss());
    let _ = child.kill();
    let _ = child.wait();
    hub.shutdown(Duration::from_millis(200)).await;
    let k = held.max(1) as f64;
    Ok(MemRun {
        heap_per_conn: (heap1 - heap0) as f64 / k,
        rss_per_conn: (rss1 - rss0) as f64 / k,
        heap_total: (heap1 - heap0) as f64,
        setup_secs,
        held,
        pooled,
        accounted_per_conn: accounted / k,
    })
}

async fn raw_memory(n: usize, limit: Duration) -> Result<MemRun, BoxError> {
    let server = raw_server(1, 0)?;
    let addr = server.local_addr()?;
    settle().await;
    let held: Arc<
        parking_lot::Mutex<Vec<(quinn::Connection, quinn::SendStream, quinn::RecvStream)>>,
    > = Arc::new(parking_lot::Mutex::new(Vec::with_capacity(0)));
    let count = Arc::new(AtomicUsize::new(0));
    let (heap0, rss0) = (counting::live(), rss());
    let (keep, counter) = (held.clone(), count.clone());
    let accept = tokio::spawn(async move {
        while let Some(i) = server.accept().await {
            let (keep, counter) = (keep.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(c) = i.await else { return };
                let Ok((tx, mut rx)) = c.accept_bi().await else {
                    return;
                };
                let mut one = [0u8; 1];
                if rx.read_exact(&mut one).await.is_ok() {
                    keep.lock().push((c, tx, rx));
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let start = Instant::now();
    let mut child = spawn_child(&["raw".into(), n.to_string(), addr.to_string()])?;
    let _ = child_ready(&mut child, limit).await;
    let _ = wait_until(Duration::from_secs(10), || {
        count.load(Ordering::Relaxed) >= n
    })
    .await;
    let setup_secs = start.elapsed().as_secs_f64();
    settle().await;
    let got = count.load(Ordering::Relaxed);
    let (heap1, rss1) = (counting::live(), rss());
    let _ = child.kill();
    let _ = child.wait();
    accept.abort();
    held.lock().clear();
    let k = got.max(1) as f64;
    Ok(MemRun {
        heap_per_conn: (heap1 - heap0) as f64 / k,
        rss_per_conn: (rss1 - rss0) as f64 / k,
        heap_total: (heap1 - heap0) as f64,
        setup_secs,
        held: got,
        pooled: 0,
        accounted_per_conn: 0.0,
    })
}

async fn memory(plan: &Plan, out: &mut Out) -> Result<(), BoxError> {
    let limit = Duration::from_secs(if plan.quick { 60 } else { 240 });
    let n = plan.mem_conns;
    // Interleaved pairs, each measurement in a fresh process; the labels
    // and the accounted figure come from the last pair.
    let (mut raws, mut mgrs) = (Vec::new(), Vec::new());
    for round in 0..plan.mem_pairs {
        for kind in if round % 2 == 0 {
            ["raw", "manager"]
        } else {
            ["manager", "raw"]
        } {
            let run = measure_in_process(kind, n, limit).await?;
            if kind == "raw" {
                raws.push(run);
            } else {
                mgrs.push(run);
            }
        }
    }
    let (raw, mgr) = (
        raws.last().ok_or("no memory pairs")?,
        mgrs.last().ok_or("no memory pairs")?,
    );
    let heap = |v: &[MemRun]| v.iter().map(|r| r.heap_per_conn).collect::<Vec<f64>>();
    let rss = |v: &[MemRun]| v.iter().map(|r| r.rss_per_conn).collect::<Vec<f64>>();
    out.result(&Row {
        id: "mem_idle_heap",
        scenario: "memory per idle connection",
        figure: &format!(
            "manager, pooled idle connection (heap, {} held, {} pooled)",
            mgr.held, mgr.pooled
        ),
        unit: "B",
        baseline: &format!(
            "raw quinn connection + one open bidi stream (heap, {} held)",
            raw.held
        ),
        values: &heap(&mgrs),
        baseline_values: &heap(&raws),
        paired: true,
        note: &format!(
            "live heap bytes counted at the allocator, listener side only, each measurement in a fresh process, raw and manager interleaved; of the manager's figure, {:.1} KiB per connection are buffers it accounts in its memory gauge; ratio = manager / baseline",
            mgr.accounted_per_conn / 1024.0
        ),
        ..Row::default()
    });
    out.result(&Row {
        id: "mem_idle_rss",
        scenario: "memory per idle connection",
        figure: "manager, pooled idle connection (RSS)",
        unit: "B",
        baseline: "raw quinn connection + one open bidi stream (RSS)",
        values: &rss(&mgrs),
        baseline_values: &rss(&raws),
        paired: true,
        note: "RSS delta of the listener process (fresh process per measurement); coarse: pages, not bytes, and untouched allocations do not count",
        ..Row::default()
    });
    let many = measure_in_process("manager", plan.many_conns, limit).await?;
    let many_raw = measure_in_process("raw", plan.many_conns, limit).await?;
    out.result(&Row {
        id: "many_setup",
        scenario: "concurrent connections",
        figure: &format!(
            "manager holding {} connections: set-up ({} held, {} pooled)",
            plan.many_conns, many.held, many.pooled
        ),
        unit: "s",
        baseline: &format!("raw quinn, same count ({} held)", many_raw.held),
        values: &[many.setup_secs],
        baseline_values: &[many_raw.setup_secs],
        paired: true,
        note: "dials from a child process, 32 at a time, one endpoint and certificate per dialer on both sides; ratio = manager / baseline",
        ..Row::default()
    });
    out.result(&Row {
        id: "mem_many_heap",
        scenario: "concurrent connections",
        figure: &format!(
            "manager holding {} connections: heap per connection",
            plan.many_conns
        ),
        unit: "B",
        baseline: &format!("raw quinn, same count ({} held)", many_raw.held),
        values: &[many.heap_per_conn],
        baseline_values: &[many_raw.heap_per_conn],
        paired: true,
        note: &format!(
            "listener heap {:.1} MiB total (raw quinn {:.1} MiB); RSS per connection {:.1} KiB (raw quinn {:.1} KiB); ratio = manager / baseline",
            many.heap_total / (1 << 20) as f64,
            many_raw.heap_total / (1 << 20) as f64,
            many.rss_per_conn / 1024.0,
            many_raw.rss_per_conn / 1024.0
        ),
        ..Row::default()
    });
    Ok(())
}

// -------------------------------------------------------------------- child

/// The child process: opens `n` connections to the parent and holds them
/// until killed, one endpoint (own identity) per connection. `manager`: a
/// qudag QUIC dial + the batch stream; `raw`: a raw quinn connection + one
/// bidi stream with one byte on it.
async fn child(args: &[String]) -> Result<(), BoxError> {
    let kind = args.first().map(String::as_str).unwrap_or("");
    let n: usize = args.get(1).ok_or("count")?.parse()?;
    let addr: std::net::SocketAddr = args.get(2).ok_or("addr")?.parse()?;
    let done = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    match kind {
        "manager" => {
            let peer: PeerId = args.get(3).ok_or("peer")?.parse()?;
            let to = PeerAddr::new(peer, addr);
            for _ in 0..n {
                let (sem, done) = (sem.clone(), done.clone());
                tasks.spawn(async move {
                    let _permit = sem.acquire_owned().await.ok()?;
                    let id = Identity::generate().ok()?;
                    let t = QuicTransport::bind(
                        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                        &id,
                        QuicConfig::default(),
                    )
                    .ok()?;
                    let conn = t.dial(&to).await.ok()?;
                    let streams = conn.open_stream().await.ok()?;
                    done.fetch_add(1, Ordering::Relaxed);
                    Some(Box::new((t, conn, streams)) as Box<dyn std::any::Any + Send>)
                });
            }
        }
        "raw" => {
            for _ in 0..n {
                let (sem, done) = (sem.clone(), done.clone());
                tasks.spawn(async move {
                    let _permit = sem.acquire_owned().await.ok()?;
                    // One endpoint (and certificate) per connection, as the
                    // manager's dialers have: with one shared socket, bursts
                    // of handshake replies overflow its receive buffer and a
                    // lost packet costs a 1 s probe timeout.
                    let client = raw_client(0, 0).ok()?;
                    let c = client.connect(addr, "raw").ok()?.await.ok()?;
                    let (mut tx, rx) = c.open_bi().await.ok()?;
                    tx.write_all(&[1]).await.ok()?;
                    done.fetch_add(1, Ordering::Relaxed);
                    Some(Box::new((client, c, tx, rx)) as Box<dyn std::any::Any + Send>)
                });
            }
        }
        other => return Err(format!("unknown child kind {other:?}").into()),
    }
    let mut keep = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(k)) = r {
            keep.push(k);
        }
    }
    println!("ready {}", keep.len());
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}

// --------------------------------------------------------------------- main

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--measure") {
        let rest = args[i + 1..].to_vec();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return rt.block_on(measure(&rest));
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let rest = args[i + 1..].to_vec();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        return rt.block_on(child(&rest));
    }
    if let Some(i) = args.iter().position(|a| a == "--profile-send") {
        // Only the manager's side of one throughput size, for `perf record`.
        let size: usize = args
            .get(i + 1)
            .ok_or("--profile-send SIZE [PER_CALL]")?
            .parse()?;
        let per_call: usize = args.get(i + 2).and_then(|a| a.parse().ok()).unwrap_or(1);
        let plan = Plan::new(false);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return rt.block_on(async {
            for _ in 0..plan.repeats {
                let run = manager_throughput(size, plan.count(size), per_call).await?;
                eprintln!("e2e: {size} B x {per_call}: {:.0} msg/s", run.msgs_per_sec);
            }
            Ok(())
        });
    }
    let quick = args.iter().any(|a| a == "--quick");
    let out_path = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/qudag-bench/e2e.jsonl")
        });
    let only: Option<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = Out {
        file: std::fs::File::create(&out_path)?,
    };
    let plan = Plan::new(quick);
    out.info("mode", if quick { "quick" } else { "full" });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let wants = |s: &str| only.as_deref().is_none_or(|o| o == s);
        let t = Instant::now();
        if wants("throughput") {
            throughput(&plan, &mut out).await?;
            eprintln!("e2e: throughput done at {:?}", t.elapsed());
        }
        if wants("connect") {
            connect(&plan, &mut out).await?;
            eprintln!("e2e: connect done at {:?}", t.elapsed());
        }
        if wants("first_message") {
            first_message(&plan, &mut out).await?;
            eprintln!("e2e: first_message done at {:?}", t.elapsed());
        }
        if wants("latency") {
            latency(&plan, &mut out).await?;
            eprintln!("e2e: latency done at {:?}", t.elapsed());
        }
        if wants("memory") {
            memory(&plan, &mut out).await?;
            eprintln!("e2e: memory done at {:?}", t.elapsed());
        }
        out.info("elapsed_s", &format!("{:.1}", t.elapsed().as_secs_f64()));
        Ok::<_, BoxError>(())
    })
}
