//! `listen`: binds a QUIC endpoint, prints `listening <peer_id>@<addr>` as the
//! first line on stdout, and receives messages (until `--expect N` arrived,
//! `--timeout`, or Ctrl-C), optionally serving `/metrics` over HTTP.

use std::collections::HashSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use qudag_net::{ConnectionManager, ManagerConfig, PeerId, QuicConfig, QuicTransport, Transport};
use tokio::time::Instant;

use crate::keygen::load_identity;
use crate::parse;
use crate::report::{fmt_bytes, fmt_count, rate};

/// How often the linger wait looks at the open connections.
const POLL: Duration = Duration::from_millis(10);

/// Options of `qudag-node listen`.
#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
    /// Address to bind, e.g. 127.0.0.1:0 (port 0 picks a free port; the first line shows it).
    #[arg(long, value_name = "ADDR")]
    pub(crate) bind: SocketAddr,
    /// Identity key file (default: a fresh identity for this run).
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// Admit only these peers (repeatable); default: every peer that proves an identity.
    #[arg(long = "allow", value_name = "PEERID")]
    pub(crate) allow: Vec<PeerId>,
    /// Exit 0 after this many messages were received, printing a summary.
    #[arg(long, value_name = "N")]
    pub(crate) expect: Option<u64>,
    /// Serve the Prometheus text format at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,
    /// The most metrics connections served at once (1 to 4096); at the cap
    /// the endpoint stops accepting and the kernel's backlog holds the rest.
    #[arg(long, value_name = "N", default_value_t = crate::http::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub(crate) metrics_max_connections: usize,
    /// Seconds a metrics client has to send its request head (above 0, at most 3600).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse::header_timeout)]
    pub(crate) metrics_header_timeout: Duration,
    /// Give up (exit non-zero) after this many seconds (above 0, at most 2592000, i.e. 30 days).
    #[arg(long, value_name = "SECS", value_parser = parse::seconds)]
    pub(crate) timeout: Option<Duration>,
    /// Seconds to wait, after the last expected message, for the senders to
    /// collect their acknowledgements and disconnect (above 0, at most 2592000).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse::seconds)]
    pub(crate) linger: Duration,
}

/// What was received.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// Messages.
    pub(crate) messages: u64,
    /// Payload bytes.
    pub(crate) bytes: u64,
    /// Distinct senders.
    pub(crate) peers: HashSet<PeerId>,
    /// When the first message arrived.
    pub(crate) first_at: Option<Instant>,
}

impl Received {
    /// The summary line printed at the end.
    pub(crate) fn summary(&self, now: Instant) -> String {
        let elapsed = self
            .first_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        format!(
            "received {} messages ({}) from {} peer(s) in {:.3} s ({:.0} msgs/s)",
            fmt_count(self.messages),
            fmt_bytes(i64::try_from(self.bytes).unwrap_or(i64::MAX)),
            self.peers.len(),
            elapsed.as_secs_f64(),
            rate(self.messages, elapsed),
        )
    }
}

/// Runs `listen`.
pub(crate) async fn run(args: ListenArgs) -> anyhow::Result<()> {
    let linger = args.linger;
    let timeout = args.timeout;
    let identity = load_identity(args.key.as_deref())?;
    let mut quic = QuicConfig::default();
    if !args.allow.is_empty() {
        quic.allow_list(Some(args.allow.clone()));
    }
    let transport = QuicTransport::bind(args.bind, &identity, quic)
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let local = transport.local_addr();
    let manager = ConnectionManager::new(ManagerConfig::default(), Arc::new(transport))?;
    let mut incoming = manager
        .incoming()
        .context("incoming stream already taken")?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {}@{local}", identity.peer_id())?;
    out.flush()?;
    drop(out);

    let server = match args.metrics {
        Some(addr) => {
            let listener = crate::http::bind(addr)
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            println!("metrics http://{}/metrics", listener.local_addr()?);
            let limits = crate::http::Limits {
                max_connections: args.metrics_max_connections,
                header_timeout: args.metrics_header_timeout,
            };
            let metrics = manager.metrics_sink();
            Some(tokio::spawn(crate::http::serve(
                listener,
                limits,
                Arc::new(move || metrics.encode_prometheus()),
            )))
        }
        None => None,
    };

    // The parsers bound both durations to 30 days: these sums cannot overflow.
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut got = Received::default();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let outcome: anyhow::Result<()> = loop {
        if args.expect.is_some_and(|n| got.messages >= n) {
            break Ok(());
        }
        tokio::select! {
            msg = incoming.recv() => match msg {
                Some((from, msg)) => {
                    got.first_at.get_or_insert_with(Instant::now);
                    got.messages += 1;
                    got.bytes += msg.len() as u64;
                    got.peers.insert(from);
                }
                None => break Err(anyhow::anyhow!("the connection manager stopped")),
            },
            _ = &mut ctrl_c => break match args.expect {
                Some(n) => Err(anyhow::anyhow!("interrupted after {} of {n} messages", got.messages)),
                None => Ok(()),
            },
            () = sleep_until(deadline) => break Err(anyhow::anyhow!(
                "timed out after {:?} with {} of {} messages",
                timeout.unwrap_or_default(),
                got.messages,
                args.expect.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            )),
        }
    };
    let done = Instant::now();
    if outcome.is_ok() && args.expect.is_some() {
        // Our acknowledgements of the last batches may still be in flight:
        // closing now could cut them off. Let the senders finish and leave.
        let until = done + linger;
        while manager.open_connections() > 0 && Instant::now() < until {
            tokio::time::sleep(POLL).await;
        }
    }
    manager.shutdown(Duration::from_secs(1)).await;
    if let Some(s) = server {
        s.abort();
    }
    println!("{}", got.summary(done));
    if let Err(e) = outcome {
        bail!(e);
    }
    Ok(())
}

/// Sleeps until `at`, or forever without a deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_counts_peers_and_rate() {
        let t0 = Instant::now();
        let mut r = Received {
            first_at: Some(t0),
            ..Received::default()
        };
        r.messages = 2000;
        r.bytes = 2048;
        r.peers.insert(PeerId::from_public_key(b"a"));
        let s = r.summary(t0 + Duration::from_secs(2));
        assert!(
            s.contains("received 2,000 messages (2.0 KiB) from 1 peer(s)"),
            "{s}"
        );
        assert!(s.contains("(1000 msgs/s)"), "{s}");
        let empty = Received::default().summary(t0);
        assert!(empty.contains("received 0 messages"), "{empty}");
    }
}
