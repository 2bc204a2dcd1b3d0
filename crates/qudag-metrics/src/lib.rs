//! Metrics for qudag-net: the [`MetricsSink`] trait the connection manager
//! reports events to, a default lock-free sink ([`Metrics`]) with counters,
//! gauges, latency histograms and snapshots, and Prometheus text export.
//!
//! # What it does
//!
//! - [`MetricsSink`]: one method per event (message queued, batch flushed,
//!   message acknowledged with its send → ack latency, message received,
//!   connection state changes, closes, errors, gauge deltas). Every method
//!   has a no-op default; the trait is object safe and stored as
//!   `Arc<dyn MetricsSink>`.
//! - [`Metrics`]: the default sink. Each event is a few relaxed atomic
//!   operations, never a lock. It produces the seed's [`NetworkMetrics`]
//!   and the full [`MetricsSnapshot`], with `messages_per_second` computed
//!   over a recent window from samples taken at injected `now` instants.
//! - [`Histogram`]: a lock-free log-linear latency histogram, relative
//!   error below 1/16, usable alone.
//! - [`NoopSink`] ignores everything; [`FanOut`] forwards to several sinks.
//! - With the default `prometheus` feature, `Metrics::encode_prometheus`
//!   renders the text exposition format (names prefixed `qudag_`, bounded
//!   label sets, no per-peer labels) through `prometheus-client`.
//!
//! # What it does not do
//!
//! It reads no clock (time comes in as `now: Instant`), spawns no task,
//! serves no HTTP endpoint, and depends on no other qudag crate. It does not
//! measure memory itself: `memory_usage` is exactly what the manager reports
//! through [`MetricsSink::memory`]. It keeps no per-peer figures.
//!
//! # Examples
//!
//! ```
//! use qudag_metrics::{CloseKind, ConnState, FanOut, Metrics, MetricsSink, NoopSink};
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//!
//! let metrics = Arc::new(Metrics::new());
//! // What the connection manager holds:
//! let sink: Arc<dyn MetricsSink> = Arc::new(FanOut::new(vec![metrics.clone(), Arc::new(NoopSink)]));
//!
//! let t0 = Instant::now();
//! metrics.tick(t0);
//! sink.state_changed(ConnState::New, ConnState::Connecting);
//! sink.state_changed(ConnState::Connecting, ConnState::Connected);
//! sink.message_queued(512);
//! sink.memory(512);
//! sink.batch_flushed(1, 560);
//! sink.message_acked(512, Duration::from_millis(3));
//! sink.memory(-512);
//!
//! let m = metrics.network_metrics(t0 + Duration::from_secs(1));
//! assert_eq!(m.connections, 1);
//! assert_eq!(m.messages_per_second, 1.0);
//! assert_eq!(m.avg_latency, Duration::from_millis(3));
//! assert_eq!(m.memory_usage, 0);
//!
//! sink.state_changed(ConnState::Connected, ConnState::Disconnected);
//! sink.connection_closed(CloseKind::Local);
//! let s = metrics.snapshot(t0 + Duration::from_secs(2));
//! assert_eq!(s.connections_connected, 0);
//! assert_eq!(s.closes.get(CloseKind::Local), 1);
//! assert_eq!(s.latency.max, Duration::from_millis(3));
//! ```
#![doc(test(attr(deny(warnings))))]

/// The crate's README, compiled as a doctest so it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod histogram;
mod metrics;
#[cfg(feature = "prometheus")]
mod prometheus;
mod sink;

pub use crate::histogram::{Histogram, LatencySummary};
pub use crate::metrics::{
    CloseCounts, ErrorCounts, Metrics, MetricsSnapshot, NetworkMetrics, OpenCounts, StateCounts,
    DEFAULT_RATE_WINDOW,
};
#[cfg(feature = "prometheus")]
pub use crate::prometheus::{PrometheusCollector, PREFIX};
pub use crate::sink::{CloseKind, ConnState, ErrorKind, FanOut, MetricsSink, NoopSink, OpenKind};
