//! Reading a node: one bounded HTTP GET of its metrics endpoint, the
//! Prometheus text parsed into samples, and the samples (or the node's final
//! JSON summary) turned into its [`Books`](crate::books::Books).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Connect timeout of a scrape.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Whole-exchange timeout of a scrape.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read (a 48-node mesh with restarts stays far below).
pub const MAX_BODY: usize = 8 << 20;

/// One sample: the metric name, its labels, its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (with `_total` where the text has it).
    pub name: String,
    /// Label pairs, in order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// GETs `http://addr/metrics` within [`SCRAPE_TIMEOUT`]; the body.
///
/// # Errors
///
/// If the node does not answer in time, or not with 200.
pub fn get(addr: SocketAddr) -> Result<String> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    s.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: testnet\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if start.elapsed() > SCRAPE_TIMEOUT {
            bail!("scrape of {addr} took longer than {SCRAPE_TIMEOUT:?}");
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > MAX_BODY {
            bail!("scrape of {addr} is larger than {MAX_BODY} bytes");
        }
    }
    let text = String::from_utf8(out).context("metrics are not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics answer: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// Parses Prometheus text: every sample line (comments skipped). Lines that
/// do not parse are skipped too.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_owned(), Vec::new()),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let mut labels = Vec::new();
            for pair in inner.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=')?;
                labels.push((k.to_owned(), v.trim_matches('"').to_owned()));
            }
            (name.to_owned(), labels)
        }
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Samples by name, for lookups.
#[derive(Debug, Default)]
pub struct Samples(pub BTreeMap<String, Vec<Sample>>);

impl Samples {
    /// Groups `samples` by name.
    pub fn new(samples: Vec<Sample>) -> Self {
        let mut m: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
        for s in samples {
            m.entry(s.name.clone()).or_default().push(s);
        }
        Samples(m)
    }

    /// Every sample named `name`.
    pub fn all(&self, name: &str) -> &[Sample] {
        self.0.get(name).map_or(&[], Vec::as_slice)
    }

    /// The value of `name` whose label `k` is `v` (or the only one when `k` is empty).
    pub fn value(&self, name: &str, k: &str, v: &str) -> f64 {
        self.all(name)
            .iter()
            .find(|s| k.is_empty() || s.label(k) == Some(v))
            .map_or(0.0, |s| s.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_and_without_labels() {
        let text = "# TYPE x counter\nx_total 3\nq{quantile=\"0.5\"} 0.25\nbad line\nr{peer=\"ab\",incarnation=\"7\"} 12\n# EOF\n";
        let s = Samples::new(parse(text));
        assert_eq!(s.value("x_total", "", ""), 3.0);
        assert_eq!(s.value("q", "quantile", "0.5"), 0.25);
        let r = &s.all("r")[0];
        assert_eq!(
            (r.label("peer"), r.label("incarnation"), r.value),
            (Some("ab"), Some("7"), 12.0)
        );
        assert_eq!(s.value("missing", "", ""), 0.0);
    }
}
