//! Parses the Prometheus text output line by line and checks the figures.
#![cfg(feature = "prometheus")]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use qudag_metrics::{CloseKind, ConnState, ErrorKind, Metrics, MetricsSink, OpenKind};

/// One parsed exposition.
#[derive(Debug, Default)]
struct Exposition {
    /// family name -> type
    types: HashMap<String, String>,
    /// family name -> help
    helps: HashMap<String, String>,
    /// (sample name, labels) -> value, in input order for histograms.
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut out = Exposition::default();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if line == "# EOF" {
                assert!(lines.peek().is_none(), "text after # EOF");
                return out;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("help text");
                assert!(!help.is_empty());
                assert!(
                    out.helps.insert(name.into(), help.into()).is_none(),
                    "duplicate HELP {name}"
                );
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("type");
                assert!(out.helps.contains_key(name), "TYPE before HELP for {name}");
                assert!(["counter", "gauge", "histogram"].contains(&ty), "type {ty}");
                assert!(
                    out.types.insert(name.into(), ty.into()).is_none(),
                    "duplicate TYPE {name}"
                );
            } else {
                assert!(!line.starts_with('#'), "unexpected comment {line}");
                out.samples.push(parse_sample(line));
            }
        }
        panic!("no # EOF");
    }

    /// The family a sample belongs to, with its declared type.
    fn family_of(&self, sample: &str) -> (&str, &str) {
        for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if let Some((name, ty)) = self.types.get_key_value(base) {
                    return (name, ty);
                }
            }
        }
        panic!("sample {sample} has no TYPE");
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let hits: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(hits.len(), 1, "{name}{labels:?} found {} times", hits.len());
        hits[0]
    }
}

/// `name{k="v",...} value` or `name value`.
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let (head, value) = line.rsplit_once(' ').expect("sample value");
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("bad value in {line}"));
    let (name, labels) = match head.split_once('{') {
        None => (head, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("closing brace");
            let labels = body
                .split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("label =");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .expect("quoted");
                    (k.to_string(), v.to_string())
                })
                .collect();
            (name, labels)
        }
    };
    assert!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "bad metric name {name}"
    );
    (name.to_string(), labels, value)
}

fn feed(m: &Metrics) {
    for _ in 0..6 {
        m.message_queued(100);
    }
    m.batch_flushed(6, 700);
    for ms in [1, 2, 3, 4, 200] {
        m.message_acked(100, Duration::from_millis(ms));
    }
    m.message_undelivered(100);
    m.batch_received(2, 300);
    m.message_received(120);
    m.message_received(130);
    m.state_changed(ConnState::New, ConnState::Connecting);
    m.state_changed(ConnState::New, ConnState::Connecting);
    m.state_changed(ConnState::Connecting, ConnState::Connected);
    m.error(ErrorKind::HandshakeFailed);
    m.error(ErrorKind::HandshakeFailed);
    m.error(ErrorKind::Sequence);
    m.connection_closed(CloseKind::Evicted);
    m.connection_opened(OpenKind::Dialed);
    m.connection_opened(OpenKind::Reused);
    m.connection_opened(OpenKind::Reused);
    m.pending_dials(1);
    m.queued_messages(3);
    m.memory(12_345);
}

#[test]
fn every_sample_is_typed_prefixed_and_bounded() {
    let m = Metrics::new();
    let empty = Exposition::parse(&m.encode_prometheus());
    feed(&m);
    let text = m.encode_prometheus();
    let e = Exposition::parse(&text);
    // Same series before and after events: nothing is created per event.
    assert_eq!(empty.samples.len(), e.samples.len());
    for (name, labels, _) in &e.samples {
        assert!(name.starts_with("qudag_"), "{name} lacks the prefix");
        let (_, ty) = e.family_of(name);
        if ty == "counter" {
            assert!(name.ends_with("_total"), "counter sample {name}");
        }
        for key in labels.keys() {
            assert!(
                ["state", "kind", "reason", "how", "le", "quantile"].contains(&key.as_str()),
                "unexpected label {key} on {name}"
            );
        }
    }
    // Bounded: 14 plain counters, 5 + 12 + 8 + 3 labelled, 2 + 3 gauges,
    // 2 + 15 histogram samples, 4 quantiles.
    assert_eq!(e.samples.len(), 14 + 5 + 12 + 8 + 3 + 2 + 3 + 2 + 15 + 4);
}

#[test]
fn values_after_known_events() {
    let m = Metrics::new();
    feed(&m);
    let e = Exposition::parse(&m.encode_prometheus());
    let v = |name: &str| e.value(name, &[]);
    assert_eq!(v("qudag_messages_queued_total"), 6.0);
    assert_eq!(v("qudag_payload_bytes_queued_total"), 600.0);
    assert_eq!(v("qudag_batches_sent_total"), 1.0);
    assert_eq!(v("qudag_messages_sent_total"), 6.0);
    assert_eq!(v("qudag_bytes_sent_total"), 700.0);
    assert_eq!(v("qudag_messages_acked_total"), 5.0);
    assert_eq!(v("qudag_payload_bytes_acked_total"), 500.0);
    assert_eq!(v("qudag_messages_undelivered_total"), 1.0);
    assert_eq!(v("qudag_payload_bytes_undelivered_total"), 100.0);
    assert_eq!(v("qudag_batches_received_total"), 1.0);
    assert_eq!(v("qudag_batch_messages_received_total"), 2.0);
    assert_eq!(v("qudag_bytes_received_total"), 300.0);
    assert_eq!(v("qudag_messages_received_total"), 2.0);
    assert_eq!(v("qudag_payload_bytes_received_total"), 250.0);
    assert_eq!(v("qudag_pending_dials"), 1.0);
    assert_eq!(v("qudag_queued_messages"), 3.0);
    assert_eq!(v("qudag_memory_bytes"), 12_345.0);

    assert_eq!(
        e.value("qudag_connections", &[("state", "connecting")]),
        1.0
    );
    assert_eq!(e.value("qudag_connections", &[("state", "connected")]), 1.0);
    assert_eq!(
        e.value(
            "qudag_connection_state_entries_total",
            &[("state", "connecting")]
        ),
        2.0
    );
    assert_eq!(
        e.value(
            "qudag_connection_state_entries_total",
            &[("state", "connected")]
        ),
        1.0
    );
    assert_eq!(
        e.value("qudag_errors_total", &[("kind", "handshake_failed")]),
        2.0
    );
    assert_eq!(e.value("qudag_errors_total", &[("kind", "sequence")]), 1.0);
    assert_eq!(e.value("qudag_errors_total", &[("kind", "decode")]), 0.0);
    assert_eq!(
        e.value("qudag_connections_closed_total", &[("reason", "evicted")]),
        1.0
    );
    assert_eq!(
        e.value("qudag_connections_closed_total", &[("reason", "local")]),
        0.0
    );
    for (how, n) in [("dialed", 1.0), ("accepted", 0.0), ("reused", 2.0)] {
        assert_eq!(
            e.value("qudag_connections_opened_total", &[("how", how)]),
            n,
            "{how}"
        );
    }

    // Histogram: 1, 2, 3, 4 and 200 ms.
    assert_eq!(v("qudag_message_latency_seconds_count"), 5.0);
    assert!((v("qudag_message_latency_seconds_sum") - 0.210).abs() < 1e-9);
    let buckets: Vec<(f64, f64)> = e
        .samples
        .iter()
        .filter(|(n, _, _)| n == "qudag_message_latency_seconds_bucket")
        .map(|(_, l, v)| {
            let le = &l["le"];
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, *v)
        })
        .collect();
    assert_eq!(buckets.len(), 15);
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "not cumulative"
    );
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 5.0));
    // Every bucket counts exactly the values at or below its bound.
    let values = [0.001, 0.002, 0.003, 0.004, 0.200];
    for (le, n) in &buckets {
        let want = values.iter().filter(|&&x| x <= *le).count() as f64;
        assert_eq!(*n, want, "bucket le={le}");
    }

    let q = |q: &str| e.value("qudag_message_latency_quantile_seconds", &[("quantile", q)]);
    assert!(
        q("0.5") >= 0.003 && q("0.5") < 0.003 * 17.0 / 16.0,
        "p50 {}",
        q("0.5")
    );
    assert!(q("0.9") >= 0.200 && q("0.9") <= 0.200, "p90 {}", q("0.9"));
    assert_eq!(q("1"), 0.2);
}

#[test]
fn collector_registers_in_a_user_registry() {
    use prometheus_client::registry::Registry;
    let m = Metrics::new();
    m.message_received(1);
    let mut registry = Registry::with_prefix("app");
    registry.register_collector(Box::new(m.prometheus_collector()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let e = Exposition::parse(&text);
    assert_eq!(e.value("app_messages_received_total", &[]), 1.0);
}
