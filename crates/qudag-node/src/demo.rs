//! `demo`: the main job. Several in-process nodes talk QUIC over 127.0.0.1
//! through their connection managers; a progress bar follows the
//! acknowledgements and a table of metrics ends the run.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qudag_net::{
    ConnectionManager, Events, FlushPolicy, Identity, ManagerConfig, PeerAddr, QuicConfig,
    QuicTransport, Transport,
};
use tokio::time::Instant;

use crate::parse;
use crate::report::{fmt_bytes, fmt_count, fmt_duration, rate, MergedLatency, Table};
use crate::send::{describe_connect_error, HandedBack};

/// How often the progress bar and the completion check look at the counters.
const TICK: Duration = Duration::from_millis(10);

/// The batch flush policy, as chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Policy {
    /// Send at once when the link is idle, full batches when it is busy.
    Adaptive,
    /// Wait for a full batch or the batch delay.
    Fixed,
}

impl From<Policy> for FlushPolicy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::Adaptive => FlushPolicy::Adaptive,
            Policy::Fixed => FlushPolicy::Fixed,
        }
    }
}

/// Who sends to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Topology {
    /// Node i sends to node i+1 (the last to the first).
    Ring,
    /// Every node sends to every other node.
    Mesh,
}

/// Options of `qudag-node demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Number of nodes (2 to 64).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(2..=64))]
    pub(crate) nodes: u16,
    /// Messages in total, split evenly over the sending pairs.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) messages: u64,
    /// Payload size of each message, in bytes (at most the largest message, 1 MiB less framing).
    #[arg(long, value_name = "BYTES", default_value_t = 128, value_parser = parse::message_size)]
    pub(crate) size: usize,
    /// Batch flush policy.
    #[arg(long, value_enum, default_value_t = Policy::Adaptive)]
    pub(crate) policy: Policy,
    /// Most messages per batch (1 to 4294967295).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) batch_size: u32,
    /// Who sends to whom.
    #[arg(long, value_enum, default_value_t = Topology::Ring)]
    pub(crate) topology: Topology,
    /// Give up (exit non-zero) if the traffic is not acknowledged within this
    /// many seconds (above 0, at most 2592000, i.e. 30 days).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse::seconds)]
    pub(crate) timeout: Duration,
    /// Seconds each node's shutdown waits for outstanding acknowledgements (above 0, at most 2592000).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse::seconds)]
    pub(crate) grace: Duration,
}

/// The sending pairs `(from, to)` of `topology` over `n` nodes.
pub(crate) fn flows(topology: Topology, n: usize) -> Vec<(usize, usize)> {
    match topology {
        Topology::Ring => (0..n).map(|i| (i, (i + 1) % n)).collect(),
        Topology::Mesh => (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .collect(),
    }
}

/// Splits `total` over `parts` as evenly as possible (the first ones get the remainder).
pub(crate) fn split(total: u64, parts: usize) -> Vec<u64> {
    let parts_u = parts as u64;
    (0..parts_u)
        .map(|i| total / parts_u + u64::from(i < total % parts_u))
        .collect()
}

/// One in-process node.
#[derive(Debug)]
struct Node {
    /// Its manager.
    manager: ConnectionManager,
    /// Its event stream (read by the demo, so nothing is missed).
    events: Events,
    /// Where the others reach it.
    addr: PeerAddr,
}

/// Runs `demo`.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (timeout, grace) = (args.timeout, args.grace);
    let n = usize::from(args.nodes);
    let mut config = ManagerConfig::default();
    config
        .batch_mut()
        .policy(args.policy.into())
        .max_messages(args.batch_size as usize);
    config
        .batch_mut()
        .validate()
        .context("invalid batch settings")?;
    if args.size > config.batch_mut().get_max_message_len() {
        bail!(
            "--size {} exceeds the largest message of {} bytes",
            args.size,
            config.batch_mut().get_max_message_len()
        );
    }

    println!(
        "qudag-node demo: {n} nodes talking QUIC (mutual TLS 1.3, sealed batches) over 127.0.0.1, \
         {:?} topology, {} messages of {} B, {:?} batching (up to {} per batch)",
        args.topology,
        fmt_count(args.messages),
        args.size,
        args.policy,
        args.batch_size
    );

    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        let identity = Identity::generate().context("cannot generate an identity key")?;
        let bind: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
        let transport = QuicTransport::bind(bind, &identity, QuicConfig::default())
            .context("cannot bind a QUIC endpoint on 127.0.0.1")?;
        let addr = PeerAddr::new(identity.peer_id(), transport.local_addr());
        let manager = ConnectionManager::new(config.clone(), Arc::new(transport))?;
        let events = manager.events().context("event stream already taken")?;
        nodes.push(Node {
            manager,
            events,
            addr,
        });
    }

    // Every node's application reads what it receives.
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(n);
    for node in &nodes {
        let mut incoming = node.manager.incoming().context("incoming already taken")?;
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            while let Some((_from, batch)) = incoming.recv_batch().await {
                received.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }));
    }

    let pairs = flows(args.topology, n);
    for &(from, to) in &pairs {
        let target = nodes[to].addr;
        nodes[from]
            .manager
            .connect(target)
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe_connect_error(&e, &target)))?;
    }

    let payload = Bytes::from(vec![0x5a; args.size]);
    let accepted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut senders = Vec::with_capacity(pairs.len());
    for (&(from, to), quota) in pairs.iter().zip(split(args.messages, pairs.len())) {
        let manager = nodes[from].manager.clone();
        let peer = nodes[to].addr.peer;
        let payload = payload.clone();
        let accepted = accepted.clone();
        senders.push(tokio::spawn(async move {
            for _ in 0..quota {
                if let Err(e) = manager.send(&peer, payload.clone()).await {
                    return Err(e.to_string());
                }
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }

    let bar = progress_bar(args.messages);
    let deadline = start + timeout;
    let mut back = HandedBack::default();
    let mut peak_memory = 0i64;
    let mut peak_connections = 0i64;
    let timed_out = loop {
        let mut acked = 0;
        let mut memory = 0;
        let mut connections = 0;
        for node in &mut nodes {
            back.drain(&mut node.events);
            let s = node.manager.metrics_snapshot();
            acked += s.messages_acked;
            memory += s.memory_bytes;
            connections += s.connections_connected;
        }
        peak_memory = peak_memory.max(memory);
        peak_connections = peak_connections.max(connections);
        bar.set_position(acked);
        bar.set_message(format!("handed back {}", back.messages));
        let senders_done = senders.iter().all(|s| s.is_finished());
        if senders_done && acked + back.messages >= accepted.load(Ordering::Relaxed) {
            break false;
        }
        if Instant::now() >= deadline {
            break true;
        }
        tokio::time::sleep(TICK).await;
    };
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let mut send_errors = Vec::new();
    for s in senders {
        if !s.is_finished() {
            s.abort();
        }
        if let Ok(Err(e)) = s.await {
            send_errors.push(e);
        }
    }

    // Latency of every sender, merged, before anything is torn down.
    let mut latency = MergedLatency::default();
    for node in &nodes {
        let sink = node.manager.metrics_sink();
        let h = sink.latency();
        latency.add(h.buckets(), h.max());
    }

    // Shut every node down at once; each hands back what is not acknowledged.
    let shutdowns: Vec<_> = nodes
        .iter()
        .map(|node| {
            let m = node.manager.clone();
            tokio::spawn(async move { m.shutdown(grace).await })
        })
        .collect();
    for s in shutdowns {
        s.await.context("a node's shutdown task failed")?;
    }
    let mut totals = Totals::default();
    for node in &mut nodes {
        back.drain(&mut node.events);
        let s = node.manager.metrics_snapshot();
        totals.acked += s.messages_acked;
        totals.batches += s.batches_sent;
        totals.errors += s.errors.total();
        totals.memory_end += s.memory_bytes;
    }
    for r in readers {
        r.abort();
    }
    let sent = accepted.load(Ordering::Relaxed);
    let received = received.load(Ordering::Relaxed);

    let mut table = Table::default();
    table
        .row("transport", "QUIC over 127.0.0.1")
        .row(
            "nodes",
            format!("{n} ({:?}, {} sending pairs)", args.topology, pairs.len()),
        )
        .row(
            "QUIC connections (peak)",
            (peak_connections / 2).to_string(),
        )
        .row("messages sent (accepted)", fmt_count(sent))
        .row("delivered (acknowledged)", fmt_count(totals.acked))
        .row("handed back (undelivered)", fmt_count(back.messages))
        .row("received by applications", fmt_count(received))
        .row("elapsed", fmt_duration(elapsed))
        .row("messages/s", fmt_count(rate(totals.acked, elapsed) as u64))
        .row(
            "payload throughput",
            format!(
                "{:.1} MiB/s",
                rate(totals.acked * args.size as u64, elapsed) / (1024.0 * 1024.0)
            ),
        )
        .row(
            "messages per batch (mean)",
            format!("{:.1}", totals.acked as f64 / totals.batches.max(1) as f64),
        )
        .row(
            "latency p50 (send to ack)",
            fmt_duration(latency.percentile(0.5)),
        )
        .row("latency p90", fmt_duration(latency.percentile(0.9)))
        .row("latency p99", fmt_duration(latency.percentile(0.99)))
        .row("latency max", fmt_duration(latency.max()))
        .row("memory held (peak)", fmt_bytes(peak_memory))
        .row("memory held (after shutdown)", fmt_bytes(totals.memory_end))
        .row("errors", totals.errors.to_string());
    print!("{}", table.render("qudag-node demo results"));
    println!(
        "delivery contract: {} delivered + {} handed back = {} of {} sent",
        fmt_count(totals.acked),
        fmt_count(back.messages),
        fmt_count(totals.acked + back.messages),
        fmt_count(sent)
    );

    if totals.acked + back.messages != sent {
        bail!(
            "delivery contract violated: {sent} sent but {} delivered + {} handed back",
            totals.acked,
            back.messages
        );
    }
    if let Some(e) = send_errors.first() {
        bail!("a sender stopped early: {e}");
    }
    if timed_out {
        bail!(
            "timed out after {timeout:?}: {} of {} messages acknowledged",
            totals.acked,
            args.messages
        );
    }
    Ok(())
}

/// Sums over every node after shutdown.
#[derive(Debug, Default)]
struct Totals {
    /// Messages acknowledged.
    acked: u64,
    /// Batches sent.
    batches: u64,
    /// Errors counted.
    errors: u64,
    /// Bytes still held after shutdown (should be zero).
    memory_end: i64,
}

/// A progress bar over `total` acknowledgements, on stderr (hidden when it is not a terminal).
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} acked ({per_sec}) {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ring_and_mesh_flows() {
        assert_eq!(flows(Topology::Ring, 3), vec![(0, 1), (1, 2), (2, 0)]);
        assert_eq!(flows(Topology::Ring, 2), vec![(0, 1), (1, 0)]);
        assert_eq!(
            flows(Topology::Mesh, 3),
            vec![(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
        );
    }

    #[test]
    fn split_spreads_the_remainder() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split(0, 2), vec![0, 0]);
    }

    proptest! {
        /// The split sums to the total and no two parts differ by more than one.
        #[test]
        fn split_is_exact_and_even(total in 0u64..10_000_000, parts in 1usize..100) {
            let s = split(total, parts);
            prop_assert_eq!(s.len(), parts);
            prop_assert_eq!(s.iter().sum::<u64>(), total);
            let (lo, hi) = (s.iter().min().unwrap(), s.iter().max().unwrap());
            prop_assert!(hi - lo <= 1);
        }

        /// Flows never loop to self and every node sends.
        #[test]
        fn flows_are_well_formed(n in 2usize..20, mesh in any::<bool>()) {
            let t = if mesh { Topology::Mesh } else { Topology::Ring };
            let f = flows(t, n);
            prop_assert!(f.iter().all(|&(a, b)| a != b && a < n && b < n));
            prop_assert!((0..n).all(|i| f.iter().any(|&(a, _)| a == i)));
            prop_assert_eq!(f.len(), if mesh { n * (n - 1) } else { n });
        }
    }
}
