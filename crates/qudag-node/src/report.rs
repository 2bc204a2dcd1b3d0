//! Output formats: the demo's metrics table, the `send --json` object, and
//! latency percentiles merged across nodes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Latency buckets merged from several nodes' histograms.
///
/// Each node's histogram reports `(largest value in bucket, count)`; merging
/// sums counts per bucket, so a percentile is the bucket bound at the rank
/// `ceil(q * n)`, capped at the largest recorded value (the same rule and the
/// same 1/16 relative error as a single histogram).
#[derive(Debug, Default, Clone)]
pub(crate) struct MergedLatency {
    /// Count per bucket upper bound.
    buckets: BTreeMap<Duration, u64>,
    /// The largest value recorded anywhere.
    max: Duration,
}

impl MergedLatency {
    /// Adds one histogram's non-empty buckets and its maximum.
    pub(crate) fn add(
        &mut self,
        buckets: impl IntoIterator<Item = (Duration, u64)>,
        max: Duration,
    ) {
        for (bound, n) in buckets {
            *self.buckets.entry(bound).or_insert(0) += n;
        }
        self.max = self.max.max(max);
    }

    /// How many values were merged.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.values().sum()
    }

    /// The value at quantile `q` (clamped to 0..=1), zero when empty.
    pub(crate) fn percentile(&self, q: f64) -> Duration {
        let total = self.count();
        if total == 0 {
            return Duration::ZERO;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (&bound, &n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return bound.min(self.max);
            }
        }
        self.max
    }

    /// The largest merged value.
    pub(crate) fn max(&self) -> Duration {
        self.max
    }
}

/// A two-column table with a title, as printed at the end of `demo`.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// `(label, value)` rows, in order.
    rows: Vec<(String, String)>,
}

impl Table {
    /// Appends a row.
    pub(crate) fn row(&mut self, label: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.rows.push((label.into(), value.into()));
        self
    }

    /// The table as text: a ruled box, labels left, values right-aligned.
    pub(crate) fn render(&self, title: &str) -> String {
        let lw = self
            .rows
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        let vw = self
            .rows
            .iter()
            .map(|(_, v)| v.chars().count())
            .max()
            .unwrap_or(0);
        let width = (lw + vw + 3).max(title.chars().count());
        let rule = format!("+{}+\n", "-".repeat(width + 2));
        let mut out = rule.clone();
        let _ = writeln!(out, "| {title:<width$} |");
        out.push_str(&rule);
        let vw = width - lw - 3;
        for (l, v) in &self.rows {
            let _ = writeln!(out, "| {l:<lw$} : {v:>vw$} |");
        }
        out.push_str(&rule);
        out
    }
}

/// What `send` reports, as a line of text or (`--json`) one JSON object.
///
/// The counts always add up: `requested = sent + not_sent` and
/// `sent = delivered + undelivered` (the delivery contract), and `error` is
/// the very text of the `error:` line printed on stderr, or `None` on success.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SendSummary {
    /// Messages asked for (`--count`).
    pub(crate) requested: u64,
    /// Messages `send` accepted.
    pub(crate) sent: u64,
    /// Messages the peer acknowledged.
    pub(crate) delivered: u64,
    /// Messages handed back undelivered.
    pub(crate) undelivered: u64,
    /// Seconds from the first send to the last acknowledgement (or giving up).
    pub(crate) elapsed_s: f64,
    /// `delivered / elapsed_s`.
    pub(crate) msgs_per_s: f64,
    /// Median send-to-ack latency, microseconds.
    pub(crate) latency_p50_us: u64,
    /// 99th percentile send-to-ack latency, microseconds.
    pub(crate) latency_p99_us: u64,
    /// Why the run failed: the text of the `error:` line.
    pub(crate) error: Option<String>,
}

impl SendSummary {
    /// Messages never accepted by `send` (the run stopped before them).
    pub(crate) fn not_sent(&self) -> u64 {
        self.requested.saturating_sub(self.sent)
    }

    /// The summary as one line of JSON; a non-finite float is written as 0
    /// and the error text is escaped, so the line is always valid JSON.
    pub(crate) fn to_json(&self) -> String {
        format!(
            "{{\"requested\":{},\"sent\":{},\"delivered\":{},\"undelivered\":{},\"not_sent\":{},\"elapsed_s\":{},\"msgs_per_s\":{},\"latency_p50_us\":{},\"latency_p99_us\":{},\"error\":{}}}",
            self.requested,
            self.sent,
            self.delivered,
            self.undelivered,
            self.not_sent(),
            json_f64(self.elapsed_s),
            json_f64(self.msgs_per_s),
            self.latency_p50_us,
            self.latency_p99_us,
            self.error.as_deref().map_or_else(|| "null".to_owned(), json_string),
        )
    }

    /// The summary as one human-readable line.
    pub(crate) fn to_text(&self) -> String {
        format!(
            "sent {} delivered {} undelivered {} in {:.3} s ({:.0} msgs/s), latency p50 {} p99 {}",
            self.sent,
            self.delivered,
            self.undelivered,
            self.elapsed_s,
            self.msgs_per_s,
            fmt_duration(Duration::from_micros(self.latency_p50_us)),
            fmt_duration(Duration::from_micros(self.latency_p99_us)),
        )
    }
}

/// `s` as a JSON string: quotes, backslashes and control characters escaped.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A float as a JSON number with six decimals; non-finite becomes 0.
fn json_f64(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6}")
    } else {
        "0".to_owned()
    }
}

/// `count / secs`, or 0 when no time passed.
pub(crate) fn rate(count: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        count as f64 / s
    } else {
        0.0
    }
}

/// A duration with a unit that keeps three significant-ish digits.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.3} s", ns as f64 / 1e9)
    }
}

/// A byte count in B, KiB or MiB.
pub(crate) fn fmt_bytes(n: i64) -> String {
    let a = n.unsigned_abs() as f64;
    if a < 1024.0 {
        format!("{n} B")
    } else if a < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

/// A count with thousands separators: `1234567` → `1,234,567`.
pub(crate) fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn merged_percentiles_follow_the_rank_rule() {
        let mut m = MergedLatency::default();
        assert_eq!(m.percentile(0.5), Duration::ZERO);
        m.add([(us(10), 50), (us(20), 40)], us(19));
        m.add([(us(20), 5), (us(100), 5)], us(90));
        assert_eq!(m.count(), 100);
        assert_eq!(m.percentile(0.5), us(10));
        assert_eq!(m.percentile(0.51), us(20));
        assert_eq!(m.percentile(0.95), us(20));
        // The last bucket's bound is capped at the real maximum.
        assert_eq!(m.percentile(0.99), us(90));
        assert_eq!(m.percentile(f64::NAN), us(10));
        assert_eq!(m.max(), us(90));
    }

    fn summary(error: Option<&str>) -> SendSummary {
        SendSummary {
            requested: 5,
            sent: 3,
            delivered: 2,
            undelivered: 1,
            elapsed_s: 0.5,
            msgs_per_s: f64::INFINITY,
            latency_p50_us: 7,
            latency_p99_us: 9,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn json_has_every_count_and_the_error() {
        assert_eq!(
            summary(None).to_json(),
            "{\"requested\":5,\"sent\":3,\"delivered\":2,\"undelivered\":1,\"not_sent\":2,\"elapsed_s\":0.500000,\"msgs_per_s\":0,\"latency_p50_us\":7,\"latency_p99_us\":9,\"error\":null}"
        );
        assert!(summary(None).to_text().contains("undelivered 1"));
        let j = summary(Some("say \"no\" \\ \u{1}")).to_json();
        assert!(
            j.ends_with(",\"error\":\"say \\\"no\\\" \\\\ \\u0001\"}"),
            "{j}"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1000), "1,000");
        assert_eq!(fmt_count(1234567), "1,234,567");
        assert_eq!(fmt_duration(Duration::from_nanos(5)), "5 ns");
        assert_eq!(fmt_duration(us(1500)), "1.50 ms");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(2048), "2.0 KiB");
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert_eq!(rate(10, Duration::from_secs(2)), 5.0);
    }

    #[test]
    fn table_lines_have_equal_width() {
        let mut t = Table::default();
        t.row("messages/s", "123,456").row("connections", "4");
        let text = t.render("qudag-node demo: a rather long title for the table");
        let widths: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{text}");
        assert!(text.contains("messages/s"));
        assert!(text.contains("123,456"));
    }

    proptest! {
        /// Percentiles are monotone in q and never exceed the maximum.
        #[test]
        fn merged_percentiles_are_monotone(
            parts in proptest::collection::vec(
                (proptest::collection::vec((1u64..1_000_000, 1u64..1000), 0..20), 0u64..1_000_000),
                1..5),
            qs in proptest::collection::vec(0.0f64..=1.0, 2..10),
        ) {
            let mut m = MergedLatency::default();
            for (buckets, max) in &parts {
                let top = buckets.iter().map(|b| b.0).max().unwrap_or(0).max(*max);
                m.add(buckets.iter().map(|&(b, n)| (us(b), n)), us(top));
            }
            let mut qs = qs;
            qs.sort_by(f64::total_cmp);
            let ps: Vec<Duration> = qs.iter().map(|&q| m.percentile(q)).collect();
            prop_assert!(ps.windows(2).all(|w| w[0] <= w[1]));
            prop_assert!(ps.iter().all(|&p| p <= m.max()));
        }

        /// Every table row renders to the same width whatever the content.
        #[test]
        fn tables_are_rectangular(rows in proptest::collection::vec(("[a-z ]{0,20}", "[0-9,.]{0,15}"), 0..8), title in "[a-z ]{0,50}") {
            let mut t = Table::default();
            for (l, v) in rows { t.row(l, v); }
            let text = t.render(&title);
            let widths: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
            prop_assert!(widths.windows(2).all(|w| w[0] == w[1]));
        }

        /// The JSON stays one line with exactly the ten keys, whatever the
        /// numbers and the error text.
        #[test]
        fn json_is_one_line(requested in any::<u64>(), sent in any::<u64>(), d in any::<u64>(), u in any::<u64>(), e in any::<f64>(), r in any::<f64>(), p in any::<u64>(), q in any::<u64>(), error in proptest::option::of(any::<String>())) {
            let s = SendSummary { requested, sent, delivered: d, undelivered: u, elapsed_s: e, msgs_per_s: r, latency_p50_us: p, latency_p99_us: q, error };
            let j = s.to_json();
            prop_assert!(!j.contains('\n'));
            let v: serde_json::Value = serde_json::from_str(&j).expect("valid JSON");
            let o = v.as_object().expect("an object");
            prop_assert_eq!(o.len(), 10);
            prop_assert!(o.iter().filter(|(k, _)| *k != "error").all(|(_, v)| v.is_number()));
            prop_assert_eq!(o["error"].as_str(), s.error.as_deref());
            prop_assert_eq!(o["not_sent"].as_u64(), Some(requested.saturating_sub(sent)));
        }
    }
}
