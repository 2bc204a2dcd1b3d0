//! Running a testnet: start the nodes, run the scenario, scrape, drain,
//! stop, and balance the books. One thread drives everything in ticks of
//! [`TICK`]; scrapes run in parallel threads, each bounded by the scrape
//! timeout. Every process started is stopped before [`run`] returns, also
//! on error or interruption (the [`Proc`]s kill their groups when dropped).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::Signal;

use crate::books::{self, Books, End, Incarnation, Verdict};
use crate::plan::{self, Options, Plan, Rng, Step};
use crate::proc::Proc;
use crate::proxy::Forwarder;
use crate::scrape::{self, Samples};

/// The driver's tick.
pub const TICK: Duration = Duration::from_millis(100);
/// Time between two scrape rounds.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// The most a node may take to print its first line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The most the final drain may take.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The nodes' `unreachable_after`: longer than the partition and any restart.
pub const UNREACHABLE_AFTER_SECS: u64 = 60;
/// The nodes' shutdown grace.
pub const GRACE_SECS: u64 = 5;

/// Where things are.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The `qudag-node` binary.
    pub bin: PathBuf,
    /// A directory for keys, configs and logs (created if missing).
    pub dir: PathBuf,
    /// Set by a signal handler to stop early (children are stopped).
    pub interrupted: Arc<AtomicBool>,
    /// Print progress on stderr.
    pub verbose: bool,
}

/// A timed mark on the time axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// Seconds since traffic started.
    pub t: f64,
    /// `kill`, `restart`, `cut`, `heal`, `drain`.
    pub what: String,
    /// The node, if it is about one.
    pub node: Option<usize>,
}

/// One point of the network-wide time series.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Point {
    /// Seconds since traffic started.
    pub t: f64,
    /// Messages acknowledged per second, all nodes.
    pub acked_per_s: f64,
    /// Messages received per second, all nodes.
    pub received_per_s: f64,
    /// Connections (connected), all nodes.
    pub connections: f64,
    /// p99 send-to-ack latency over the interval, all nodes, µs.
    pub p99_us: f64,
    /// Bytes held by the managers, all nodes.
    pub memory: f64,
    /// RSS, all nodes.
    pub rss: f64,
    /// Nodes that answered this scrape.
    pub answered: usize,
}

/// One node's row of the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeRow {
    /// Index.
    pub node: usize,
    /// Listed peers.
    pub peers: usize,
    /// Its connection limit, if below its peers.
    pub limit: Option<usize>,
    /// Times killed.
    pub kills: usize,
    /// Delivered (acknowledged) per second over the run, all incarnations.
    pub sent_per_s: f64,
    /// Received per second over the run, all incarnations.
    pub received_per_s: f64,
    /// Latency of its last incarnation, µs.
    pub p50_us: u64,
    /// Latency of its last incarnation, µs.
    pub p99_us: u64,
    /// Mean connections over the scrapes.
    pub connections: f64,
    /// Evictions, all incarnations.
    pub evictions: u64,
    /// Dials, all incarnations.
    pub redials: u64,
    /// Largest memory held seen.
    pub memory_max: u64,
    /// Largest RSS seen.
    pub rss_max: u64,
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// What was asked.
    pub options: Options,
    /// The plan.
    pub plan: Plan,
    /// The books.
    pub verdict: Verdict,
    /// Per node.
    pub nodes: Vec<NodeRow>,
    /// The time series.
    pub timeline: Vec<Point>,
    /// Kills, restarts, cuts, heals.
    pub marks: Vec<Mark>,
    /// Processes started.
    pub started: usize,
    /// Processes still alive after the end (must be 0).
    pub leaked: usize,
    /// Problems with processes (unexpected exits, no summary, ...).
    pub problems: Vec<String>,
    /// Datagrams the partition proxy dropped.
    pub proxy_dropped: u64,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// Where keys, configs and logs are.
    pub dir: PathBuf,
}

impl Report {
    /// True if the books balance and every process behaved and is gone.
    pub fn ok(&self) -> bool {
        self.verdict.balanced() && self.leaked == 0 && self.problems.is_empty()
    }
}

/// A node: its plan, key, config, current process, and past incarnations.
#[derive(Debug)]
struct Node {
    peer_id: String,
    config: PathBuf,
    proc: Option<Proc>,
    /// The current process printed its first line.
    up: bool,
    /// Its current incarnation, from its first line.
    incarnation: Option<u64>,
    /// The last successful scrape of the current incarnation.
    last: Option<Books>,
    /// Scrapes of the current incarnation (for counter deltas).
    restart_at: Option<Instant>,
    kills: usize,
    starts: usize,
}

/// Per scrape, per node: what was read.
#[derive(Debug, Clone)]
struct Read {
    books: Books,
    buckets: Vec<(f64, f64)>,
}

/// Starts, runs and stops a testnet; balances its books.
///
/// # Errors
///
/// Set-up failures (keys, configs, binding the proxy, a node that never
/// starts) and interruption. A run that completes returns a [`Report`]
/// even when the books do not balance: check [`Report::ok`].
pub fn run(o: &Options, setup: &Setup) -> Result<Report> {
    let wall = Instant::now();
    let plan = Plan::new(o).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&setup.dir)
        .with_context(|| format!("cannot create {}", setup.dir.display()))?;
    let say = |s: String| {
        if setup.verbose {
            eprintln!("testnet [{:6.1} s]: {s}", wall.elapsed().as_secs_f64());
        }
    };
    // Keys (one per node, kept across restarts) and PeerIds.
    let mut ids = Vec::new();
    for n in &plan.nodes {
        let key = setup.dir.join(format!("node{}.key", n.index));
        let _ = std::fs::remove_file(&key);
        let out = Command::new(&setup.bin)
            .args(["keygen", "--out"])
            .arg(&key)
            .output()
            .with_context(|| format!("cannot run {}", setup.bin.display()))?;
        if !out.status.success() {
            bail!("keygen failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        ids.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let mut nodes: Vec<Node> = Vec::new();
    for n in &plan.nodes {
        let config = setup.dir.join(format!("node{}.toml", n.index));
        std::fs::write(&config, node_config(o, &plan, n.index, &ids))?;
        nodes.push(Node {
            peer_id: ids[n.index].clone(),
            config,
            proc: None,
            up: false,
            incarnation: None,
            last: None,
            restart_at: None,
            kills: 0,
            starts: 0,
        });
    }
    // The partition proxy, before the nodes (they dial through it).
    let mut proxies: Vec<Forwarder> = Vec::new();
    if let Some(p) = plan.partitioned {
        let port = o.port;
        proxies.push(Forwarder::start(
            plan.nodes[p].public,
            plan.nodes[p].bind,
            move |k| plan::upstream_for(k, port),
        )?);
        for &q in &plan.nodes[p].peers {
            let listen = plan::via_proxy(q, port);
            proxies.push(Forwarder::start(listen, plan.nodes[q].public, move |_| {
                (listen.ip(), port + 2).into()
            })?);
        }
    }
    let mut pids: Vec<u32> = Vec::new();
    let mut all: Vec<Incarnation> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut marks: Vec<Mark> = Vec::new();
    let mut reads: Vec<(f64, Vec<Option<Read>>)> = Vec::new();

    // The whole run is in a closure so that every exit path stops the nodes below.
    let outcome = (|| -> Result<()> {
        for (i, n) in nodes.iter_mut().enumerate() {
            pids.push(start(n, i, o, setup)?);
        }
        wait_up(&mut nodes, setup, START_TIMEOUT)?;
        say(format!(
            "{} nodes up; {} scenario for {} s",
            nodes.len(),
            o.scenario.name(),
            o.seconds
        ));
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(o.seconds);
        let mut rng = Rng::new(o.seed ^ 0x5eed);
        let mut churning = false;
        let mut next_kill = t0;
        let mut next_scrape = t0;
        let mut steps = plan.steps.clone().into_iter().peekable();
        let since = |t0: Instant| t0.elapsed().as_secs_f64();
        while Instant::now() < end {
            if setup.interrupted.load(Ordering::Acquire) {
                bail!("interrupted");
            }
            let now = Instant::now();
            while let Some(&(at, step)) = steps.peek() {
                if t0 + at > now {
                    break;
                }
                steps.next();
                match step {
                    Step::ChurnStart => {
                        churning = true;
                        next_kill = now;
                    }
                    Step::ChurnStop => churning = false,
                    Step::Cut | Step::Heal => {
                        let on = step == Step::Cut;
                        for f in &proxies {
                            f.cut(on);
                        }
                        let what = if on { "cut" } else { "heal" };
                        say(format!("{what} node{}", plan.partitioned.unwrap_or(0)));
                        marks.push(Mark {
                            t: since(t0),
                            what: what.into(),
                            node: plan.partitioned,
                        });
                    }
                }
            }
            // Unexpected exits are bugs (a panic, an error): record them.
            for (i, n) in nodes.iter_mut().enumerate() {
                if let Some(p) = n.proc.as_mut() {
                    if let Some(status) = p.try_wait() {
                        problems.push(format!(
                            "node{i} exited on its own ({status}): {}",
                            p.stderr_tail(5)
                        ));
                        all.push(Incarnation {
                            node: i,
                            end: End::Killed,
                            books: n.last.take(),
                        });
                        n.proc = None;
                        n.up = false;
                        n.restart_at = Some(now);
                    }
                }
            }
            // Restarts due, and first lines of restarted nodes.
            for (i, n) in nodes.iter_mut().enumerate() {
                if n.proc.is_none() && n.restart_at.is_some_and(|t| t <= now) {
                    pids.push(start(n, i, o, setup)?);
                    n.restart_at = None;
                    marks.push(Mark {
                        t: since(t0),
                        what: "restart".into(),
                        node: Some(i),
                    });
                }
                if !n.up {
                    poll_up(n)?;
                }
            }
            if churning && now >= next_kill {
                next_kill = now + o.churn_every;
                let candidates: Vec<usize> = (0..nodes.len())
                    .filter(|&i| plan.nodes[i].churnable && nodes[i].up)
                    .collect();
                if !candidates.is_empty() {
                    let i = candidates[rng.below(candidates.len())];
                    // The last scrape before the kill is this incarnation's books.
                    if let Some(r) = scrape_one(&plan.nodes[i].metrics, &nodes[i].peer_id) {
                        nodes[i].last = Some(r.books);
                    }
                    let n = &mut nodes[i];
                    if let Some(mut p) = n.proc.take() {
                        p.kill9();
                    }
                    n.kills += 1;
                    n.up = false;
                    n.restart_at = Some(Instant::now() + o.down_for);
                    all.push(Incarnation {
                        node: i,
                        end: End::Killed,
                        books: n.last.take(),
                    });
                    say(format!("kill -9 node{i}"));
                    marks.push(Mark {
                        t: since(t0),
                        what: "kill".into(),
                        node: Some(i),
                    });
                }
            }
            if now >= next_scrape {
                next_scrape += SCRAPE_EVERY;
                let round = scrape_all(&plan, &mut nodes);
                reads.push((since(t0), round));
            }
            std::thread::sleep(TICK.min(end.saturating_duration_since(Instant::now())));
        }
        // The end: everyone back up, generators stopped, everything drained.
        for (i, n) in nodes.iter_mut().enumerate() {
            if n.proc.is_none() {
                pids.push(start(n, i, o, setup)?);
                n.restart_at = None;
                marks.push(Mark {
                    t: since(t0),
                    what: "restart".into(),
                    node: Some(i),
                });
            }
        }
        wait_up(&mut nodes, setup, START_TIMEOUT)?;
        for f in &proxies {
            f.cut(false);
        }
        marks.push(Mark {
            t: since(t0),
            what: "drain".into(),
            node: None,
        });
        say("stopping traffic (SIGUSR1) and draining".into());
        for n in &nodes {
            if let Some(p) = &n.proc {
                p.signal(Signal::USR1);
            }
        }
        let until = Instant::now() + DRAIN_TIMEOUT;
        let mut next_report = Instant::now() + Duration::from_secs(2);
        loop {
            if setup.interrupted.load(Ordering::Acquire) {
                bail!("interrupted");
            }
            let round = scrape_all(&plan, &mut nodes);
            let drained = round
                .iter()
                .all(|r| r.as_ref().is_some_and(|r| r.books.figures.outstanding == 0));
            reads.push((since(t0), round));
            if drained {
                say("drained: nothing in flight anywhere".into());
                break;
            }
            if Instant::now() >= until {
                problems.push(format!(
                    "the network did not drain within {DRAIN_TIMEOUT:?}"
                ));
                break;
            }
            if Instant::now() >= next_report {
                next_report += Duration::from_secs(2);
                let waiting: Vec<String> = nodes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| {
                        let out = n.last.as_ref().map_or(0, |b| b.figures.outstanding);
                        (out > 0).then(|| format!("node{i}: {out}"))
                    })
                    .collect();
                say(format!("still in flight: {}", waiting.join(", ")));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        say("SIGTERM to every node".into());
        for n in &nodes {
            if let Some(p) = &n.proc {
                p.signal(Signal::TERM);
            }
        }
        let bound = Duration::from_secs(GRACE_SECS * 2 + 15);
        for (i, n) in nodes.iter_mut().enumerate() {
            let Some(mut p) = n.proc.take() else { continue };
            match p.wait_for(bound) {
                Some(status) if status.success() => {}
                Some(status) => {
                    problems.push(format!("node{i} ended with {status}: {}", p.stderr_tail(5)))
                }
                None => {
                    problems.push(format!("node{i} did not exit within {bound:?} of SIGTERM"));
                    p.kill9();
                }
            }
            let books = p.last_line().and_then(|l| Books::from_summary(&l).ok());
            if books.is_none() {
                problems.push(format!("node{i}: no JSON summary on stdout"));
            }
            all.push(Incarnation {
                node: i,
                end: End::Graceful,
                books,
            });
        }
        say("every node stopped".into());
        Ok(())
    })();
    // Stop everything, whatever happened; then look for leftovers.
    for n in &mut nodes {
        if let Some(mut p) = n.proc.take() {
            p.kill9();
        }
    }
    // Every process started is reaped by now; a group still alive is a leak
    // (a zombie grandchild is reaped by init: allow it a moment).
    let until = Instant::now() + Duration::from_secs(2);
    let leaked = loop {
        let alive = pids
            .iter()
            .filter(|&&pid| crate::proc::group_alive(pid))
            .count();
        if alive == 0 || Instant::now() >= until {
            break alive;
        }
        std::thread::sleep(crate::proc::POLL);
    };
    // Each node's final summary, one JSON line each, beside the logs.
    let summaries: Vec<String> = (0..nodes.len())
        .filter_map(|i| {
            let out = setup.dir.join(format!("node{i}.{}.out", nodes[i].starts));
            let out = std::fs::read_to_string(out).ok()?;
            out.lines()
                .last()
                .filter(|l| l.starts_with('{'))
                .map(str::to_owned)
        })
        .collect();
    let _ = std::fs::write(
        setup.dir.join("summaries.jsonl"),
        summaries.join("\n") + "\n",
    );
    let proxy_dropped = proxies
        .iter()
        .map(|f| f.counts.dropped.load(Ordering::Relaxed))
        .sum();
    drop(proxies);
    outcome?;

    let killed: Vec<bool> = nodes.iter().map(|n| n.kills > 0).collect();
    let ctx = books::RunFacts {
        peer_ids: ids.clone(),
        peers: plan.nodes.iter().map(|n| n.peers.clone()).collect(),
        killed,
        partitioned: plan.partitioned,
        min_per_pair: plan
            .nodes
            .iter()
            .map(|n| (n.expected_per_peer(o.seconds) / 20.0).max(5.0) as u64)
            .collect(),
    };
    let verdict = books::check(&ctx, &all);
    let timeline = timeline(&reads);
    let rows = rows(o, &plan, &nodes, &all, &reads);
    Ok(Report {
        options: o.clone(),
        plan,
        verdict,
        nodes: rows,
        timeline,
        marks,
        started: pids.len(),
        leaked,
        problems,
        proxy_dropped,
        wall: wall.elapsed(),
        dir: setup.dir.clone(),
    })
}

/// The TOML config of node `i`.
fn node_config(o: &Options, plan: &Plan, i: usize, ids: &[String]) -> String {
    let n = &plan.nodes[i];
    let peers: Vec<String> = n
        .peers
        .iter()
        .map(|&q| format!("\"{}@{}\"", ids[q], plan.dial_addr(i, q, o.port)))
        .collect();
    let mut s = format!(
        "# node{i} of a {}-node testnet ({} scenario); written by qudag-testnet\n\
         bind = \"{}\"\nkey = \"node{i}.key\"\nmetrics = \"{}\"\npeers = [{}]\n\
         unreachable_after = {UNREACHABLE_AFTER_SECS}\nbackoff_cap = 1\nidle_timeout = 5\ngrace = {GRACE_SECS}\n",
        plan.nodes.len(),
        o.scenario.name(),
        n.bind,
        n.metrics,
        peers.join(", ")
    );
    if let Some(m) = n.max_connections {
        s.push_str(&format!("max_connections = {m}\npark_every = 1\n"));
    }
    s.push_str(&format!(
        "\n[traffic]\nrate = {}\nsize = {}\nto = \"{}\"\n",
        n.rate,
        o.size,
        if n.to_all { "all" } else { "random" }
    ));
    s
}

/// Starts node `i`; its pid.
fn start(n: &mut Node, i: usize, o: &Options, setup: &Setup) -> Result<u32> {
    let mut cmd = Command::new(&setup.bin);
    cmd.args(["run", "--exit-with-parent", "--config"])
        .arg(&n.config);
    // Warnings, plus the node's own notes on new sender incarnations.
    cmd.env("RUST_LOG", "warn,qudag_node=info");
    if i == 0 {
        if let Some(k) = o.fault_drop_received {
            cmd.arg("--fault-drop-received").arg(k.to_string());
        }
    }
    n.starts += 1;
    let stem = setup.dir.join(format!("node{i}.{}", n.starts));
    let p = Proc::spawn(cmd, &stem)?;
    let pid = p.pid;
    n.proc = Some(p);
    n.up = false;
    n.incarnation = None;
    n.last = None;
    Ok(pid)
}

/// Reads the first line of a started node, if it is there.
fn poll_up(n: &mut Node) -> Result<()> {
    let Some(p) = &n.proc else { return Ok(()) };
    if let Some(line) = p.first_line() {
        let rest = line
            .strip_prefix("running ")
            .with_context(|| format!("unexpected first line {line:?}"))?;
        let (who, inc) = rest
            .split_once(" incarnation ")
            .with_context(|| format!("unexpected first line {line:?}"))?;
        if !who.starts_with(&n.peer_id) {
            bail!("node started as {who}, expected {}", n.peer_id);
        }
        n.incarnation = Some(inc.trim().parse()?);
        n.up = true;
    }
    Ok(())
}

fn wait_up(nodes: &mut [Node], setup: &Setup, timeout: Duration) -> Result<()> {
    let until = Instant::now() + timeout;
    loop {
        if setup.interrupted.load(Ordering::Acquire) {
            bail!("interrupted");
        }
        for n in nodes.iter_mut() {
            poll_up(n)?;
        }
        if let Some((i, n)) = nodes.iter_mut().enumerate().find(|(_, n)| !n.up) {
            if let Some(p) = n.proc.as_mut() {
                if let Some(status) = p.try_wait() {
                    bail!("node{i} exited at start ({status}): {}", p.stderr_tail(5));
                }
            }
            if Instant::now() >= until {
                bail!("node{i} did not start within {timeout:?}");
            }
            std::thread::sleep(crate::proc::POLL);
        } else {
            return Ok(());
        }
    }
}

fn scrape_one(addr: &std::net::SocketAddr, peer_id: &str) -> Option<Read> {
    let text = scrape::get(*addr).ok()?;
    let samples = Samples::new(scrape::parse(&text));
    let books = Books::from_samples(peer_id, &samples).ok()?;
    let buckets = samples
        .all("qudag_message_latency_seconds_bucket")
        .iter()
        .filter_map(|s| {
            let le = s.label("le")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, s.value))
        })
        .collect();
    Some(Read { books, buckets })
}

/// Scrapes every node that is up, in parallel; keeps each incarnation's last scrape.
fn scrape_all(plan: &Plan, nodes: &mut [Node]) -> Vec<Option<Read>> {
    let round: Vec<Option<Read>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let addr = plan.nodes[i].metrics;
                let (up, id, inc) = (n.up, n.peer_id.clone(), n.incarnation);
                s.spawn(move || {
                    if !up {
                        return None;
                    }
                    // A scrape that answers for an older incarnation is not this one's.
                    scrape_one(&addr, &id).filter(|r| Some(r.books.incarnation) == inc)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    for (n, r) in nodes.iter_mut().zip(&round) {
        if let Some(r) = r {
            n.last = Some(r.books.clone());
        }
    }
    round
}

/// The network-wide series from the scrape rounds: rates from counter
/// deltas per node incarnation, latency from merged histogram deltas.
fn timeline(reads: &[(f64, Vec<Option<Read>>)]) -> Vec<Point> {
    let mut out = Vec::new();
    for w in reads.windows(2) {
        let ((t0, a), (t1, b)) = (&w[0], &w[1]);
        let dt = (t1 - t0).max(1e-3);
        let mut p = Point {
            t: *t1,
            ..Point::default()
        };
        let mut merged: BTreeMap<u64, f64> = BTreeMap::new();
        for (x, y) in a.iter().zip(b) {
            let Some(y) = y else { continue };
            p.answered += 1;
            p.connections += y.books.figures.connections as f64;
            p.memory += y.books.figures.memory as f64;
            p.rss += y.books.figures.rss as f64;
            let same = x
                .as_ref()
                .filter(|x| x.books.incarnation == y.books.incarnation);
            let (acked0, recv0) = same.map_or((0, 0), |x| {
                (x.books.figures.acked, x.books.figures.received)
            });
            p.acked_per_s += y.books.figures.acked.saturating_sub(acked0) as f64 / dt;
            p.received_per_s += y.books.figures.received.saturating_sub(recv0) as f64 / dt;
            for (k, &(le, c)) in y.buckets.iter().enumerate() {
                let before = same.and_then(|x| x.buckets.get(k)).map_or(0.0, |b| b.1);
                *merged.entry(le.to_bits()).or_insert(0.0) += (c - before).max(0.0);
            }
        }
        // Cumulative buckets: the p99 is the first bound whose count reaches 99%.
        let mut bounds: Vec<(f64, f64)> = merged
            .into_iter()
            .map(|(k, v)| (f64::from_bits(k), v))
            .collect();
        bounds.sort_by(|x, y| x.0.total_cmp(&y.0));
        if let Some(&(_, total)) = bounds.last() {
            if total > 0.0 {
                if let Some(&(le, _)) = bounds.iter().find(|(_, c)| *c >= 0.99 * total) {
                    p.p99_us = if le.is_finite() { le * 1e6 } else { f64::NAN };
                }
            }
        }
        out.push(p);
    }
    out
}

fn rows(
    o: &Options,
    plan: &Plan,
    nodes: &[Node],
    all: &[Incarnation],
    reads: &[(f64, Vec<Option<Read>>)],
) -> Vec<NodeRow> {
    let secs = o.seconds as f64;
    (0..nodes.len())
        .map(|i| {
            let mine: Vec<&Books> = all
                .iter()
                .filter(|x| x.node == i)
                .filter_map(|x| x.books.as_ref())
                .collect();
            let last = all
                .iter()
                .rev()
                .find(|x| x.node == i && x.end == End::Graceful)
                .and_then(|x| x.books.as_ref());
            let seen: Vec<&Read> = reads
                .iter()
                .filter_map(|(_, r)| r.get(i).and_then(Option::as_ref))
                .collect();
            NodeRow {
                node: i,
                peers: plan.nodes[i].peers.len(),
                limit: plan.nodes[i].max_connections,
                kills: nodes[i].kills,
                sent_per_s: mine.iter().map(|b| b.figures.acked).sum::<u64>() as f64 / secs,
                received_per_s: mine.iter().map(|b| b.figures.received).sum::<u64>() as f64 / secs,
                p50_us: last.map_or(0, |b| b.figures.p50_us),
                p99_us: last.map_or(0, |b| b.figures.p99_us),
                connections: if seen.is_empty() {
                    0.0
                } else {
                    seen.iter()
                        .map(|r| r.books.figures.connections as f64)
                        .sum::<f64>()
                        / seen.len() as f64
                },
                evictions: mine.iter().map(|b| b.figures.evictions).sum(),
                redials: mine.iter().map(|b| b.figures.redials).sum(),
                memory_max: seen
                    .iter()
                    .map(|r| r.books.figures.memory)
                    .max()
                    .unwrap_or(0),
                rss_max: seen.iter().map(|r| r.books.figures.rss).max().unwrap_or(0),
            }
        })
        .collect()
}

/// A fresh run directory under the system's temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!(
        "qudag-testnet-{tag}-{}-{nanos}",
        std::process::id()
    ))
}

/// Removes `dir` (best effort).
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
