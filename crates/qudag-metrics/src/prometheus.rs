//! Prometheus / OpenMetrics text export through `prometheus-client`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::histogram::{bucket_bounds, BUCKETS};
use crate::metrics::{Core, Metrics};
use crate::sink::{CloseKind, ConnState, ErrorKind, OpenKind};

/// The prefix of every exported name.
pub const PREFIX: &str = "qudag";

/// Exported latency histogram bucket bounds: 2^k ns for k = 10, 12, ..., 36
/// (about 1 µs to 69 s), then `+Inf`. Powers of two are bucket edges of
/// [`Histogram`](crate::Histogram), so the export is exact.
const EXPORT_BOUND_EXPONENTS: std::ops::RangeInclusive<u32> = 5..=18;

fn export_bounds() -> impl Iterator<Item = u64> {
    EXPORT_BOUND_EXPONENTS.map(|k| 1u64 << (2 * k))
}

fn seconds(nanos: u64) -> f64 {
    Duration::from_nanos(nanos).as_secs_f64()
}

/// A `prometheus-client` [`Collector`] reading a [`Metrics`]' atomics at
/// every scrape (no copies, no locks).
///
/// Register it in your own [`Registry`] (ideally one with the `qudag`
/// prefix, as [`Metrics::encode_prometheus`] does) to serve it beside other
/// metrics. Every name and label value comes from a fixed set: no per-peer
/// labels, bounded cardinality.
///
/// # Exported metrics (names without the prefix)
///
/// | name | type | labels |
/// |------|------|--------|
/// | `messages_queued`, `messages_sent`, `messages_acked`, `messages_undelivered`, `messages_received`, `batch_messages_received` | counter | |
/// | `batches_sent`, `batches_received` | counter | |
/// | `bytes_sent`, `bytes_received` (wire), `payload_bytes_{queued,acked,undelivered,received}` | counter | |
/// | `connection_state_entries` | counter | `state` |
/// | `errors` | counter | `kind` |
/// | `connections_closed` | counter | `reason` |
/// | `connections` | gauge | `state` (`connecting`, `connected`) |
/// | `pending_dials`, `queued_messages`, `memory_bytes` | gauge | |
/// | `message_latency_seconds` | histogram | `le` |
/// | `message_latency_quantile_seconds` | gauge | `quantile` (`0.5`, `0.9`, `0.99`, `1`) |
///
/// Counters get the `_total` suffix in samples. The message rate is not
/// exported: Prometheus computes it with `rate()`.
#[derive(Clone)]
pub struct PrometheusCollector {
    core: Arc<Core>,
}

impl fmt::Debug for PrometheusCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusCollector")
            .finish_non_exhaustive()
    }
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

fn counter_family<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (label_value, v) in values {
        metric
            .encode_family(&[(label, label_value)])?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

impl Collector for PrometheusCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let c = &*self.core;
        let load = |a: &AtomicU64| a.load(Relaxed);
        let counters: [(&str, &str, u64); 13] = [
            (
                "messages_queued",
                "Messages accepted by send.",
                c.messages_queued(),
            ),
            (
                "messages_sent",
                "Messages in flushed batches.",
                load(&c.messages_sent),
            ),
            (
                "messages_undelivered",
                "Messages handed back as undelivered.",
                load(&c.messages_undelivered),
            ),
            (
                "messages_received",
                "Messages received and passed to the application.",
                load(&c.messages_received),
            ),
            (
                "batch_messages_received",
                "Messages in received batches.",
                load(&c.batch_messages_received),
            ),
            ("batches_sent", "Batches flushed.", load(&c.batches_sent)),
            (
                "batches_received",
                "Batches received.",
                load(&c.batches_received),
            ),
            (
                "bytes_sent",
                "Bytes on the wire in flushed batches.",
                load(&c.bytes_sent),
            ),
            (
                "bytes_received",
                "Bytes on the wire in received batches.",
                load(&c.bytes_received),
            ),
            (
                "payload_bytes_queued",
                "Payload bytes of queued messages.",
                c.payload_bytes_queued(),
            ),
            (
                "payload_bytes_acked",
                "Payload bytes of acknowledged messages.",
                load(&c.payload_bytes_acked),
            ),
            (
                "payload_bytes_undelivered",
                "Payload bytes of undelivered messages.",
                load(&c.payload_bytes_undelivered),
            ),
            (
                "payload_bytes_received",
                "Payload bytes of received messages.",
                load(&c.payload_bytes_received),
            ),
        ];
        for (name, help, value) in counters {
            counter(&mut e, name, help, value)?;
        }
        e.encode_descriptor(
            "messages_acked",
            "Messages acknowledged by the peer.",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&c.latency.count(), None)?;

        counter_family(
            &mut e,
            "connection_state_entries",
            "Connection transitions into each state.",
            "state",
            ConnState::ALL
                .iter()
                .zip(&c.state_entries)
                .map(|(s, v)| (s.as_str(), v.load(Relaxed))),
        )?;
        counter_family(
            &mut e,
            "errors",
            "Errors by kind.",
            "kind",
            ErrorKind::ALL
                .iter()
                .zip(&c.errors)
                .map(|(k, v)| (k.as_str(), v.load(Relaxed))),
        )?;
        counter_family(
            &mut e,
            "connections_closed",
            "Connections closed by reason.",
            "reason",
            CloseKind::ALL
                .iter()
                .zip(&c.closes)
                .map(|(k, v)| (k.as_str(), v.load(Relaxed))),
        )?;
        counter_family(
            &mut e,
            "connections_opened",
            "Usable connections a peer got, by how: dialed, accepted, or reused from the pool (no dial).",
            "how",
            OpenKind::ALL
                .iter()
                .zip(&c.opens)
                .map(|(k, v)| (k.as_str(), v.load(Relaxed))),
        )?;

        {
            let mut m = e.encode_descriptor(
                "connections",
                "Connections in each live state.",
                None,
                MetricType::Gauge,
            )?;
            for (state, g) in [
                (ConnState::Connecting, &c.connecting),
                (ConnState::Connected, &c.connected),
            ] {
                m.encode_family(&[("state", state.as_str())])?
                    .encode_gauge(&g.load(Relaxed))?;
            }
        }
        gauge(
            &mut e,
            "pending_dials",
            "Dials in progress.",
            c.pending_dials.load(Relaxed),
        )?;
        gauge(
            &mut e,
            "queued_messages",
            "Messages held in queues.",
            c.queued_messages(),
        )?;
        gauge(
            &mut e,
            "memory_bytes",
            "Bytes held by the manager in queues, batches and buffers.",
            c.memory_bytes(),
        )?;

        // Histogram: fold the fine buckets into the exported bounds.
        let mut bounds: Vec<(f64, u64)> = export_bounds()
            .map(|b| (seconds(b), 0))
            .chain(std::iter::once((f64::MAX, 0)))
            .collect();
        let mut exported = export_bounds().collect::<Vec<_>>();
        exported.push(u64::MAX);
        let mut slot = 0;
        let mut count = 0u64;
        for i in 0..BUCKETS {
            let n = c.latency.bucket_count(i);
            if n == 0 {
                continue;
            }
            let hi = bucket_bounds(i).1;
            while slot + 1 < exported.len() && hi >= exported[slot] {
                slot += 1;
            }
            bounds[slot].1 += n;
            count += n;
        }
        let sum = c.latency.sum_nanos() as f64 / 1e9;
        e.encode_descriptor(
            "message_latency_seconds",
            "Send to ack latency of acknowledged messages.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &bounds, None)?;

        let summary = c.latency.summary();
        let mut m = e.encode_descriptor(
            "message_latency_quantile_seconds",
            "Send to ack latency quantiles (less than 1/16 above the true value; 1 is the exact max).",
            None,
            MetricType::Gauge,
        )?;
        for (q, v) in [
            ("0.5", summary.p50),
            ("0.9", summary.p90),
            ("0.99", summary.p99),
            ("1", summary.max),
        ] {
            m.encode_family(&[("quantile", q)])?
                .encode_gauge(&v.as_secs_f64())?;
        }
        Ok(())
    }
}

impl Metrics {
    /// A [`Collector`] over these metrics, to register in a
    /// `prometheus-client` [`Registry`].
    pub fn prometheus_collector(&self) -> PrometheusCollector {
        PrometheusCollector {
            core: Arc::clone(self.core()),
        }
    }

    /// The metrics in the Prometheus / OpenMetrics text exposition format,
    /// names prefixed `qudag_`, ending with `# EOF`. See
    /// [`PrometheusCollector`] for the list. No per-peer labels.
    ///
    /// # Examples
    ///
    /// ```
    /// use qudag_metrics::{Metrics, MetricsSink};
    ///
    /// let metrics = Metrics::new();
    /// metrics.message_queued(10);
    /// let text = metrics.encode_prometheus();
    /// assert!(text.contains("# TYPE qudag_messages_queued counter\n"));
    /// assert!(text.contains("\nqudag_messages_queued_total 1\n"));
    /// assert!(text.ends_with("# EOF\n"));
    /// ```
    pub fn encode_prometheus(&self) -> String {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(self.prometheus_collector()));
        let mut out = String::new();
        // Writing into a String cannot fail, and the collector only fails
        // when its writer does.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
