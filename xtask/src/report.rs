//! Reading the results (criterion's `estimates.json`, the e2e JSON lines)
//! and writing the markdown report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};

/// A JSON value: just enough JSON for criterion's files and our lines.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Parses one JSON document.
    pub(crate) fn parse(s: &str) -> Result<Json> {
        let mut p = Parser {
            b: s.as_bytes(),
            i: 0,
        };
        let v = p
            .value()
            .with_context(|| format!("bad json at byte {}", p.i))?;
        p.ws();
        anyhow::ensure!(p.i == p.b.len(), "trailing bytes after json at {}", p.i);
        Ok(v)
    }

    /// The field `k` of an object.
    pub(crate) fn get(&self, k: &str) -> Option<&Json> {
        match self {
            Json::Obj(f) => f.iter().find(|(n, _)| n == k).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn num(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<()> {
        self.ws();
        anyhow::ensure!(self.b.get(self.i) == Some(&c), "expected {:?}", c as char);
        self.i += 1;
        Ok(())
    }

    fn lit(&mut self, word: &str, v: Json) -> Result<Json> {
        anyhow::ensure!(
            self.b[self.i..].starts_with(word.as_bytes()),
            "expected {word}"
        );
        self.i += word.len();
        Ok(v)
    }

    fn value(&mut self) -> Result<Json> {
        self.ws();
        match self.b.get(self.i).copied() {
            Some(b'n') => self.lit("null", Json::Null),
            Some(b't') => self.lit("true", Json::Bool(true)),
            Some(b'f') => self.lit("false", Json::Bool(false)),
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b'[') => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(v));
                }
                loop {
                    v.push(self.value()?);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(v));
                        }
                        _ => anyhow::bail!("expected , or ]"),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut f = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(f));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    f.push((k, self.value()?));
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(f));
                        }
                        _ => anyhow::bail!("expected , or }}"),
                    }
                }
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.b.len()
                    && matches!(
                        self.b[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let s = std::str::from_utf8(&self.b[start..self.i])?;
                Ok(Json::Num(
                    s.parse().with_context(|| format!("bad number {s:?}"))?,
                ))
            }
            None => anyhow::bail!("unexpected end"),
        }
    }

    fn string(&mut self) -> Result<String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = *self.b.get(self.i).context("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => return Ok(String::from_utf8(out)?),
                b'\\' => {
                    let e = *self.b.get(self.i).context("bad escape")?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'u' => {
                            let hex = std::str::from_utf8(
                                self.b.get(self.i..self.i + 4).context("bad \\u")?,
                            )?;
                            self.i += 4;
                            let ch = char::from_u32(u32::from_str_radix(hex, 16)?).unwrap_or('?');
                            out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }
}

/// One criterion benchmark's result.
#[derive(Debug, Clone)]
pub(crate) struct Micro {
    pub(crate) group: String,
    pub(crate) function: String,
    pub(crate) param: Option<String>,
    /// Mean time per iteration, ns.
    pub(crate) mean_ns: f64,
    /// `("B" | "elem", n)` per iteration, if declared.
    pub(crate) throughput: Option<(&'static str, f64)>,
    /// The benchmark's directory under `target/criterion`.
    pub(crate) dir: PathBuf,
}

impl Micro {
    fn id(&self) -> String {
        match &self.param {
            Some(p) => format!("{}/{}/{}", self.group, self.function, p),
            None => format!("{}/{}", self.group, self.function),
        }
    }
}

/// One figure per benchmark id: the fastest of the runs in `all`, sorted by id.
pub(crate) fn fastest(mut all: Vec<Micro>) -> Vec<Micro> {
    all.sort_by(|a, b| a.id().cmp(&b.id()).then(a.mean_ns.total_cmp(&b.mean_ns)));
    all.dedup_by(|later, first| later.id() == first.id());
    all
}

/// Every criterion result under `root` written at or after `since`.
pub(crate) fn read_criterion(root: &Path, since: SystemTime) -> Result<Vec<Micro>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "new") {
                let est = p.join("estimates.json");
                let fresh = std::fs::metadata(&est)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since);
                if fresh {
                    if let Some(m) = read_one(&p, root)? {
                        out.push(m);
                    }
                }
            } else if p.file_name().is_some_and(|n| n != "report") {
                stack.push(p);
            }
        }
    }
    out.sort_by_key(|m| m.id());
    Ok(out)
}

fn read_one(new: &Path, root: &Path) -> Result<Option<Micro>> {
    let bench = Json::parse(&std::fs::read_to_string(new.join("benchmark.json"))?)?;
    let est = Json::parse(&std::fs::read_to_string(new.join("estimates.json"))?)?;
    let Some(mean) = est
        .get("mean")
        .and_then(|m| m.get("point_estimate"))
        .and_then(Json::num)
    else {
        return Ok(None);
    };
    let s = |k: &str| bench.get(k).and_then(Json::str).map(str::to_owned);
    let throughput = bench.get("throughput").and_then(|t| {
        let (kind, v) = match t {
            Json::Obj(f) => f.first()?,
            _ => return None,
        };
        let unit = if kind.starts_with("Bytes") {
            "B"
        } else {
            "elem"
        };
        Some((unit, v.num()?))
    });
    let dir = new
        .parent()
        .and_then(|d| d.strip_prefix(root).ok())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok(Some(Micro {
        group: s("group_id").unwrap_or_default(),
        function: s("function_id").unwrap_or_default(),
        param: s("value_str"),
        mean_ns: mean,
        throughput,
        dir,
    }))
}

/// The baselines a criterion figure is compared with (function ids in the
/// same group and with the same parameter). Empty for a baseline itself.
pub(crate) fn baselines_for<'a>(group: &str, function: &str, in_group: &[&'a str]) -> Vec<&'a str> {
    let pick = |names: &[&str]| -> Vec<&'a str> {
        in_group
            .iter()
            .copied()
            .filter(|f| names.contains(f))
            .collect()
    };
    match (group, function) {
        ("seal" | "open" | "open_sealer", "ring") => pick(&["chacha20poly1305"]),
        ("seal" | "open" | "open_sealer", _) => Vec::new(),
        ("pool_checkout", "pool_checkout_shared") => pick(&[
            "dashmap_get",
            "dashmap_get_foldhash",
            "mutex_hashmap_get",
            "mutex_hashmap_get_foldhash",
        ]),
        ("pool_checkout", "pool_checkout_checkin") => {
            pick(&["dashmap_remove_insert", "mutex_remove_insert"])
        }
        ("pool_checkout", _) => Vec::new(),
        (_, f) if f.starts_with("baseline_") => Vec::new(),
        _ => in_group
            .iter()
            .copied()
            .filter(|f| f.starts_with("baseline_"))
            .collect(),
    }
}

/// Whether a criterion function id is a baseline for something else.
fn is_baseline(group: &str, function: &str) -> bool {
    function.starts_with("baseline_")
        || (matches!(group, "seal" | "open" | "open_sealer") && function == "chacha20poly1305")
        || (group == "pool_checkout" && !function.starts_with("pool_"))
}

fn time(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn rate(m: &Micro) -> String {
    match m.throughput {
        Some(("B", n)) => format!("{:.2} GB/s", n / m.mean_ns),
        Some((_, n)) => format!("{:.1} M/s", n / m.mean_ns * 1e3),
        None => String::new(),
    }
}

/// The criterion table: one row per (figure, baseline) pair, then the
/// figures without a baseline.
pub(crate) fn micro_table(micro: &[Micro]) -> String {
    let mut s = String::from(
        "| benchmark | mean | throughput | baseline (same run) | baseline mean | speed ratio | report |\n|---|---:|---:|---|---:|---:|---|\n",
    );
    let mut lonely = Vec::new();
    for m in micro {
        if is_baseline(&m.group, &m.function) {
            continue;
        }
        let peers: Vec<&Micro> = micro
            .iter()
            .filter(|o| o.group == m.group && o.param == m.param)
            .collect();
        let names: Vec<&str> = peers.iter().map(|o| o.function.as_str()).collect();
        let bases = baselines_for(&m.group, &m.function, &names);
        if bases.is_empty() {
            lonely.push(m);
            continue;
        }
        for b in bases {
            let Some(base) = peers.iter().find(|o| o.function == b) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | `{}` | {} | {:.2}× | [html](../target/criterion/{}/report/index.html) |",
                m.id(),
                time(m.mean_ns),
                rate(m),
                base.id(),
                time(base.mean_ns),
                base.mean_ns / m.mean_ns,
                m.dir.display()
            );
        }
    }
    for m in lonely {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | — | — | — | [html](../target/criterion/{}/report/index.html) |",
            m.id(),
            time(m.mean_ns),
            rate(m),
            m.dir.display()
        );
    }
    s
}

/// One parsed e2e line.
pub(crate) type Line = BTreeMap<String, Json>;

/// The e2e JSON lines in `path`.
pub(crate) fn read_e2e(path: &Path) -> Result<Vec<Line>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for l in text.lines().filter(|l| l.starts_with('{')) {
        if let Json::Obj(f) = Json::parse(l)? {
            out.push(f.into_iter().collect());
        }
    }
    Ok(out)
}

pub(crate) fn field<'a>(l: &'a Line, k: &str) -> &'a str {
    l.get(k).and_then(Json::str).unwrap_or("")
}

pub(crate) fn num(l: &Line, k: &str) -> f64 {
    l.get(k).and_then(Json::num).unwrap_or(f64::NAN)
}

/// A value with its unit, scaled for reading.
pub(crate) fn value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    match unit {
        "msg/s" if v >= 1e6 => format!("{:.2} M msg/s", v / 1e6),
        "msg/s" => format!("{:.0} k msg/s", v / 1e3),
        "µs" if v >= 1e4 => format!("{:.1} ms", v / 1e3),
        "µs" => format!("{v:.0} µs"),
        "B" if v.abs() >= 1024.0 => format!("{:.1} KiB", v / 1024.0),
        "s" => format!("{v:.2} s"),
        _ => format!("{v:.0} {unit}"),
    }
}

/// The median of the finite samples (the mean of the two middle ones for
/// an even count); NaN if there is none.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The ratio of each pair, `figure / baseline` (`baseline / figure` if
/// `inverted`); pairs with a missing or non-finite side are left out.
pub(crate) fn pair_ratios(figure: &[f64], baseline: &[f64], inverted: bool) -> Vec<f64> {
    figure
        .iter()
        .zip(baseline)
        .map(|(&f, &b)| if inverted { b / f } else { f / b })
        .filter(|r| r.is_finite())
        .collect()
}

/// The rate a second ChaCha20-Poly1305 pass over every byte allows, given
/// the raw transport's rate and the sealer's (same units): the time per
/// byte is the sum of both, `1 / (1/raw + 1/sealer)`.
pub(crate) fn ceiling(raw: f64, sealer: f64) -> f64 {
    1.0 / (1.0 / raw + 1.0 / sealer)
}

/// How much a row's samples spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Spread {
    /// Min and max of the per-pair ratios, over `n` interleaved pairs.
    Pairs { min: f64, max: f64, n: usize },
    /// Min and max of the figure's own samples (no pairing), over `n` runs.
    Runs { min: f64, max: f64, n: usize },
    /// One sample each: no spread to show.
    One,
}

impl Spread {
    fn of(figure: &[f64], baseline: &[f64], paired: bool, inverted: bool) -> Spread {
        let range = |v: &[f64]| {
            let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (min, max, v.len())
        };
        if paired {
            let (min, max, n) = range(&pair_ratios(figure, baseline, inverted));
            if n >= 2 {
                return Spread::Pairs { min, max, n };
            }
        }
        let (min, max, n) = range(figure);
        if n >= 2 {
            Spread::Runs { min, max, n }
        } else {
            Spread::One
        }
    }

    /// The table cell.
    pub(crate) fn cell(&self, unit: &str) -> String {
        match *self {
            Spread::Pairs { min, max, n } => format!("{min:.2}–{max:.2}× ({n} pairs)"),
            Spread::Runs { min, max, n } => {
                format!("{}–{} ({n} runs)", value(min, unit), value(max, unit))
            }
            Spread::One => "one run".into(),
        }
    }
}

/// An e2e result: medians, ratio and spread computed from its samples.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) scenario: String,
    pub(crate) figure: String,
    pub(crate) unit: String,
    pub(crate) baseline: String,
    pub(crate) note: String,
    /// Median of the figure's samples.
    pub(crate) value: f64,
    /// Median of the baseline's samples.
    pub(crate) baseline_value: f64,
    /// `value / baseline_value`, or its inverse for an inverted row.
    pub(crate) ratio: f64,
    pub(crate) spread: Spread,
    /// For rows with sealer samples: the median sealer rate and the ceiling
    /// computed from it and the baseline's median.
    pub(crate) ceiling: Option<(f64, f64)>,
}

/// Numbers of a line field: an array of samples, or one number.
fn samples(l: &Line, many: &str, one: &str) -> Vec<f64> {
    match l.get(many) {
        Some(Json::Arr(v)) => v.iter().map(|x| x.num().unwrap_or(f64::NAN)).collect(),
        _ => l.get(one).and_then(Json::num).into_iter().collect(),
    }
}

impl Row {
    /// The row of a `result` line: sample arrays (`values`,
    /// `baseline_values`, optional `sealer_values`), or the single `value`
    /// and `baseline_value` of older lines.
    pub(crate) fn from_line(l: &Line) -> Row {
        let figure = samples(l, "values", "value");
        let baseline = samples(l, "baseline_values", "baseline_value");
        let inverted = field(l, "ratio_of") == "baseline/figure";
        let paired = field(l, "paired") == "yes";
        let (value, baseline_value) = (median(&figure), median(&baseline));
        let ratio = if inverted {
            baseline_value / value
        } else {
            value / baseline_value
        };
        let sealer = samples(l, "sealer_values", "sealer_value");
        let ceiling = (!sealer.is_empty()).then(|| {
            let s = median(&sealer);
            (s, ceiling(baseline_value, s))
        });
        Row {
            id: field(l, "id").to_owned(),
            scenario: field(l, "scenario").to_owned(),
            figure: field(l, "figure").to_owned(),
            unit: field(l, "unit").to_owned(),
            baseline: field(l, "baseline").to_owned(),
            note: field(l, "note").to_owned(),
            value,
            baseline_value,
            ratio,
            spread: Spread::of(&figure, &baseline, paired, inverted),
            ceiling,
        }
    }
}

/// The rows of every `result` line, in order.
pub(crate) fn rows(lines: &[Line]) -> Vec<Row> {
    lines
        .iter()
        .filter(|l| field(l, "kind") == "result")
        .map(Row::from_line)
        .collect()
}

/// Which way a goal bounds its ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// The ratio must be at least the bound.
    AtLeast,
    /// The ratio must be at most the bound.
    AtMost,
}

/// A goal on one row's ratio.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Goal {
    /// The row it judges (`id` of the e2e line).
    pub(crate) id: &'static str,
    /// The figure as the issue names it.
    pub(crate) title: &'static str,
    /// The issue that set it.
    pub(crate) issue: u32,
    pub(crate) op: Op,
    pub(crate) bound: f64,
    /// Also met if the figure is at least this fraction of the row's
    /// ceiling (the 64 KiB goal: 0.95, "within 5 % of the ceiling").
    pub(crate) of_ceiling: Option<f64>,
}

const fn goal(id: &'static str, title: &'static str, issue: u32, op: Op, bound: f64) -> Goal {
    Goal {
        id,
        title,
        issue,
        op,
        bound,
        of_ceiling: None,
    }
}

/// Every goal, issue 17's table first; the report lists each one, measured
/// or not.
pub(crate) const GOALS: &[Goal] = &[
    goal(
        "tput_128_send",
        "128 B, `send`, against raw quinn `write_all` per message",
        17,
        Op::AtLeast,
        1.5,
    ),
    goal(
        "tput_128_many",
        "128 B, `send_many`, against raw quinn `write_all` per message",
        17,
        Op::AtLeast,
        2.0,
    ),
    Goal {
        of_ceiling: Some(0.95),
        ..goal(
            "tput_64k",
            "64 KiB, against raw bulk on one stream",
            17,
            Op::AtLeast,
            0.8,
        )
    },
    goal(
        "connect_new",
        "new connection, loopback, against a raw quinn handshake",
        17,
        Op::AtMost,
        1.3,
    ),
    goal(
        "ttfm_rtt20",
        "time to the first delivered message on a new connection, 20 ms RTT, against raw quinn",
        17,
        Op::AtMost,
        1.1,
    ),
    goal(
        "mem_idle_heap",
        "heap per idle pooled connection, against raw quinn with one open bidi stream",
        17,
        Op::AtMost,
        1.2,
    ),
    goal(
        "mem_many_heap",
        "heap per connection with 10,000 held, against raw quinn",
        17,
        Op::AtMost,
        1.2,
    ),
    goal(
        "tput_128_uni",
        "128 B, `send`, against raw quinn with one uni stream per message",
        10,
        Op::AtLeast,
        10.0,
    ),
    goal(
        "connect_reuse",
        "pooled reuse against a new connection (times faster)",
        10,
        Op::AtLeast,
        100.0,
    ),
    goal(
        "latency_p50_adaptive",
        "send→ack p50 at 1,000 msg/s (adaptive) against the raw quinn RTT p50",
        10,
        Op::AtMost,
        3.0,
    ),
];

/// The goal on row `id`, if any.
pub(crate) fn goal_for(id: &str) -> Option<&'static Goal> {
    GOALS.iter().find(|g| g.id == id)
}

/// A goal's outcome in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The ratio is within the bound.
    Met,
    /// The ratio misses the bound, but the figure is within the allowed
    /// fraction of the ceiling.
    MetByCeiling,
    /// Neither.
    NotMet,
    /// The run has no finite figure for it (scenario not run, or failed).
    NotMeasured,
}

impl Verdict {
    /// The "met" cell.
    pub(crate) fn cell(self) -> &'static str {
        match self {
            Verdict::Met => "yes",
            Verdict::MetByCeiling => "yes (by the ceiling)",
            Verdict::NotMet => "**no**",
            Verdict::NotMeasured => "not measured",
        }
    }
}

impl Goal {
    /// Judges `row` (the row with this goal's id, if the run has one).
    pub(crate) fn judge(&self, row: Option<&Row>) -> Verdict {
        let Some(row) = row.filter(|r| r.ratio.is_finite()) else {
            return Verdict::NotMeasured;
        };
        let within = match self.op {
            Op::AtLeast => row.ratio >= self.bound,
            Op::AtMost => row.ratio <= self.bound,
        };
        if within {
            return Verdict::Met;
        }
        match (self.of_ceiling, row.ceiling) {
            (Some(frac), Some((_, c))) if row.value >= frac * c => Verdict::MetByCeiling,
            _ => Verdict::NotMet,
        }
    }

    /// The "goal" cell.
    pub(crate) fn cell(&self) -> String {
        let op = match self.op {
            Op::AtLeast => "≥",
            Op::AtMost => "≤",
        };
        match self.of_ceiling {
            Some(f) => format!("{op} {}×, or ≥ {f} × ceiling", self.bound),
            None => format!("{op} {}×", self.bound),
        }
    }
}

fn ratio_cell(r: &Row) -> String {
    let mut s = if r.ratio.is_finite() {
        format!("{:.2}×", r.ratio)
    } else {
        "—".into()
    };
    if let Some((_, c)) = r.ceiling {
        let _ = write!(s, " ({:.2}× ceiling)", r.value / c);
    }
    s
}

fn baseline_cell(r: &Row) -> String {
    let mut s = if r.baseline.is_empty() {
        "—".to_owned()
    } else {
        r.baseline.clone()
    };
    if let Some((sealer, c)) = r.ceiling {
        let _ = write!(
            s,
            "; ceiling with a second ChaCha20-Poly1305 pass: {}, from the sealer's {}",
            value(c, &r.unit),
            value(sealer, &r.unit)
        );
    }
    s
}

/// The goals table: every goal in [`GOALS`], measured or not, and the
/// verdicts in the same order.
pub(crate) fn goals_table(rows: &[Row]) -> (String, Vec<(&'static Goal, Verdict)>) {
    let mut s = String::from(
        "| issue | goal | figure (median) | same-run baseline (median) | ratio | spread | goal | met |\n|---:|---|---:|---|---:|---|---|---|\n",
    );
    let mut verdicts = Vec::new();
    for g in GOALS {
        let row = rows.iter().find(|r| r.id == g.id);
        let v = g.judge(row);
        verdicts.push((g, v));
        match row {
            Some(r) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} ({}) | {} | {} | {} | {} |",
                    g.issue,
                    g.title,
                    value(r.value, &r.unit),
                    value(r.baseline_value, &r.unit),
                    baseline_cell(r),
                    ratio_cell(r),
                    r.spread.cell(&r.unit),
                    g.cell(),
                    v.cell()
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| {} | {} | — | — | — | — | {} | {} |",
                    g.issue,
                    g.title,
                    g.cell(),
                    v.cell()
                );
            }
        }
    }
    (s, verdicts)
}

/// The e2e results table: every row, with its goal (if any) judged.
pub(crate) fn e2e_table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| scenario | figure | value | baseline (same run) | baseline value | ratio | spread | goal | met |\n|---|---|---:|---|---:|---:|---|---|---|\n",
    );
    for r in rows {
        let (goal, met) = match goal_for(&r.id) {
            Some(g) => (g.cell(), g.judge(Some(r)).cell()),
            None => (String::new(), ""),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.figure,
            value(r.value, &r.unit),
            baseline_cell(r),
            value(r.baseline_value, &r.unit),
            ratio_cell(r),
            r.spread.cell(&r.unit),
            goal,
            met,
        );
    }
    s
}

/// The hand-written notes: `## <goal id> ...` headings, each followed by
/// its text (up to the next `## ` heading). Text before the first heading
/// is the file's own introduction and is not returned.
pub(crate) fn parse_notes(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let flush = |c: Option<(String, String)>, out: &mut BTreeMap<String, String>| {
        if let Some((id, body)) = c {
            out.insert(id, body.trim().to_owned());
        }
    };
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            flush(current.take(), &mut out);
            let id = h.split_whitespace().next().unwrap_or("").to_owned();
            current = Some((id, String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    flush(current, &mut out);
    out
}

/// The "Goals not met" section: per unmet goal, its numbers and the
/// hand-written notes for its id (or a placeholder saying where to write
/// them).
pub(crate) fn unmet_section(
    verdicts: &[(&'static Goal, Verdict)],
    rows: &[Row],
    notes: &BTreeMap<String, String>,
    notes_path: &str,
) -> String {
    let mut s = String::new();
    let unmet: Vec<&(&Goal, Verdict)> = verdicts
        .iter()
        .filter(|(_, v)| *v == Verdict::NotMet)
        .collect();
    if unmet.is_empty() {
        s.push_str("Every measured goal was met in this run.\n");
    }
    for (g, _) in unmet {
        let _ = writeln!(s, "### {}\n", g.title);
        if let Some(r) = rows.iter().find(|r| r.id == g.id) {
            let _ = writeln!(
                s,
                "This run: {} against {} ({}), ratio {}, spread {}; goal {}.\n",
                value(r.value, &r.unit),
                value(r.baseline_value, &r.unit),
                baseline_cell(r),
                ratio_cell(r),
                r.spread.cell(&r.unit),
                g.cell()
            );
        }
        match notes.get(g.id).filter(|n| !n.is_empty()) {
            Some(n) => {
                let _ = writeln!(s, "{n}\n");
            }
            None => {
                let _ = writeln!(
                    s,
                    "_No analysis written yet: add it under `## {}` in `{notes_path}`; the \
                     generator copies that section here on every run in which this goal is not \
                     met._\n",
                    g.id
                );
            }
        }
    }
    let missing: Vec<&str> = verdicts
        .iter()
        .filter(|(_, v)| *v == Verdict::NotMeasured)
        .map(|(g, _)| g.title)
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(
            s,
            "Not measured in this run (scenario not run or failed): {}.\n",
            missing.join("; ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(json: &str, expect: Json) {
        assert_eq!(Json::parse(json).unwrap(), expect);
    }

    #[test]
    fn parses_flat_and_nested_json() {
        check("null", Json::Null);
        check(" -1.5e3 ", Json::Num(-1500.0));
        check(r#""a\"b\u00e9""#, Json::Str("a\"bé".into()));
        check(
            r#"{"mean":{"point_estimate":12.5},"x":[true,false]}"#,
            Json::Obj(vec![
                (
                    "mean".into(),
                    Json::Obj(vec![("point_estimate".into(), Json::Num(12.5))]),
                ),
                (
                    "x".into(),
                    Json::Arr(vec![Json::Bool(true), Json::Bool(false)]),
                ),
            ]),
        );
    }

    #[test]
    fn rejects_broken_json() {
        for bad in ["{", r#"{"a" 1}"#, "[1,", "nul", r#""open"#, "1 2"] {
            assert!(Json::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn baselines_pair_by_rule() {
        let seal = ["ring", "chacha20poly1305"];
        assert_eq!(
            baselines_for("seal", "ring", &seal),
            vec!["chacha20poly1305"]
        );
        assert!(baselines_for("seal", "chacha20poly1305", &seal).is_empty());
        let batch = ["fixed", "adaptive_idle", "baseline_vec_push"];
        assert_eq!(
            baselines_for("batcher_push_poll", "fixed", &batch),
            vec!["baseline_vec_push"]
        );
        assert!(baselines_for("batcher_push_poll", "baseline_vec_push", &batch).is_empty());
        let pool = ["dashmap_get", "mutex_hashmap_get", "pool_checkout_shared"];
        assert_eq!(
            baselines_for("pool_checkout", "pool_checkout_shared", &pool),
            vec!["dashmap_get", "mutex_hashmap_get"]
        );
        assert!(is_baseline("pool_checkout", "dashmap_get"));
        assert!(!is_baseline("metrics_read", "snapshot"));
    }

    #[test]
    fn fastest_keeps_one_figure_per_id() {
        let m = |function: &str, param: Option<&str>, mean_ns: f64| Micro {
            group: "pool_checkout".into(),
            function: function.into(),
            param: param.map(Into::into),
            mean_ns,
            throughput: None,
            dir: PathBuf::new(),
        };
        let got = fastest(vec![
            m("dashmap_get", Some("2"), 70.0),
            m("dashmap_get", Some("1"), 21.0),
            m("dashmap_get", Some("2"), 36.0),
            m("dashmap_get", Some("2"), 40.0),
            m("pool_checkout_shared", Some("2"), 33.0),
        ]);
        let got: Vec<(String, f64)> = got.iter().map(|m| (m.id(), m.mean_ns)).collect();
        assert_eq!(
            got,
            [
                ("pool_checkout/dashmap_get/1".to_owned(), 21.0),
                ("pool_checkout/dashmap_get/2".to_owned(), 36.0),
                ("pool_checkout/pool_checkout_shared/2".to_owned(), 33.0),
            ]
        );
    }

    #[test]
    fn reads_a_criterion_tree() {
        let root = std::env::temp_dir().join(format!("xtask-crit-{}", std::process::id()));
        let new = root.join("seal/ring/64/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"group_id":"seal","function_id":"ring","value_str":"64","throughput":{"Bytes":64}}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"confidence_interval":{"lower_bound":1.0},"point_estimate":32.0}}"#,
        )
        .unwrap();
        let got = read_criterion(&root, SystemTime::UNIX_EPOCH).unwrap();
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id(), "seal/ring/64");
        assert_eq!(got[0].mean_ns, 32.0);
        assert_eq!(rate(&got[0]), "2.00 GB/s");
        assert_eq!(got[0].dir, Path::new("seal/ring/64"));
    }

    fn line(json: &str) -> Line {
        let Json::Obj(f) = Json::parse(json).unwrap() else {
            panic!("not an object")
        };
        f.into_iter().collect()
    }

    #[track_caller]
    fn check_median(v: &[f64], expect: f64) {
        assert_eq!(median(v), expect, "{v:?}");
    }

    #[test]
    fn median_of_odd_even_and_dirty_samples() {
        check_median(&[3.0, 1.0, 2.0], 2.0);
        check_median(&[4.0, 1.0, 3.0, 2.0], 2.5);
        check_median(&[5.0], 5.0);
        check_median(&[1.0, f64::NAN, 3.0], 2.0);
        assert!(median(&[]).is_nan());
        assert!(median(&[f64::NAN]).is_nan());
    }

    #[test]
    fn pair_ratios_follow_the_pairing_and_direction() {
        assert_eq!(pair_ratios(&[2.0, 3.0], &[1.0, 2.0], false), [2.0, 1.5]);
        assert_eq!(pair_ratios(&[2.0, 4.0], &[1.0, 2.0], true), [0.5, 0.5]);
        // A lost sample on one side drops that pair only; extra samples have no pair.
        assert_eq!(
            pair_ratios(&[2.0, f64::NAN, 6.0, 9.0], &[1.0, 1.0, 3.0], false),
            [2.0, 2.0]
        );
    }

    #[test]
    fn spread_is_of_pairs_when_paired_else_of_runs() {
        assert_eq!(
            Spread::of(&[2.0, 3.0, 4.0], &[1.0, 2.0, 2.0], true, false),
            Spread::Pairs {
                min: 1.5,
                max: 2.0,
                n: 3
            }
        );
        assert_eq!(
            Spread::of(&[2.0, 3.0, 4.0], &[1.0], false, false),
            Spread::Runs {
                min: 2.0,
                max: 4.0,
                n: 3
            }
        );
        assert_eq!(Spread::of(&[2.0], &[1.0], true, false), Spread::One);
        assert_eq!(
            Spread::Pairs {
                min: 1.5,
                max: 2.0,
                n: 3
            }
            .cell("msg/s"),
            "1.50–2.00× (3 pairs)"
        );
        assert_eq!(
            Spread::Runs {
                min: 2.0,
                max: 4.0,
                n: 3
            }
            .cell("µs"),
            "2 µs–4 µs (3 runs)"
        );
    }

    #[test]
    fn ceiling_adds_the_times_per_byte() {
        assert_eq!(ceiling(1000.0, 1000.0), 500.0);
        assert!((ceiling(1000.0, 2250.0) - 692.307_692).abs() < 1e-3);
    }

    /// A 64-KiB row: manager, raw and sealer samples in MB/s.
    fn row_64k(mgr: &[f64], raw: &[f64], sealer: &[f64]) -> Row {
        let j = |v: &[f64]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        Row::from_line(&line(&format!(
            r#"{{"kind":"result","id":"tput_64k","scenario":"throughput 64 KiB","figure":"m","unit":"MB/s","baseline":"raw","values":[{}],"baseline_values":[{}],"sealer_values":[{}],"paired":"yes","ratio_of":"figure/baseline","note":""}}"#,
            j(mgr),
            j(raw),
            j(sealer)
        )))
    }

    #[test]
    fn the_64k_goal_is_met_by_ratio_or_by_the_ceiling() {
        let g = goal_for("tput_64k").unwrap();
        // 0.8 of raw: met outright.
        assert_eq!(
            g.judge(Some(&row_64k(&[800.0], &[1000.0], &[2000.0]))),
            Verdict::Met
        );
        // Ceiling 1/(1/1000 + 1/1000) = 500; 0.95 × 500 = 475.
        let r = row_64k(&[480.0, 470.0, 490.0], &[1000.0, 900.0, 1100.0], &[1000.0]);
        assert_eq!(r.ceiling, Some((1000.0, 500.0)));
        assert_eq!(g.judge(Some(&r)), Verdict::MetByCeiling);
        let r = row_64k(&[470.0], &[1000.0], &[1000.0]);
        assert_eq!(g.judge(Some(&r)), Verdict::NotMet);
        assert!(
            ratio_cell(&r).contains("0.94× ceiling"),
            "{}",
            ratio_cell(&r)
        );
        assert!(
            baseline_cell(&r).contains("500 MB/s"),
            "{}",
            baseline_cell(&r)
        );
    }

    #[test]
    fn goals_judge_their_direction_and_missing_rows() {
        let row = |id: &str, v: f64, b: f64, inv: bool| {
            Row::from_line(&line(&format!(
                r#"{{"kind":"result","id":"{id}","unit":"µs","values":[{v}],"baseline_values":[{b}],"ratio_of":"{}"}}"#,
                if inv {
                    "baseline/figure"
                } else {
                    "figure/baseline"
                }
            )))
        };
        let new = goal_for("connect_new").unwrap();
        assert_eq!(
            new.judge(Some(&row("connect_new", 130.0, 100.0, false))),
            Verdict::Met
        );
        assert_eq!(
            new.judge(Some(&row("connect_new", 131.0, 100.0, false))),
            Verdict::NotMet
        );
        assert_eq!(new.judge(None), Verdict::NotMeasured);
        let failed = Row::from_line(&line(
            r#"{"kind":"result","id":"connect_new","values":[null],"baseline_values":[1]}"#,
        ));
        assert_eq!(new.judge(Some(&failed)), Verdict::NotMeasured);
        let reuse = goal_for("connect_reuse").unwrap();
        let r = row("connect_reuse", 2.0, 900.0, true);
        assert_eq!(r.ratio, 450.0);
        assert_eq!(reuse.judge(Some(&r)), Verdict::Met);
    }

    #[test]
    fn every_issue_17_goal_is_listed_even_unmeasured() {
        let ids: Vec<&str> = GOALS
            .iter()
            .filter(|g| g.issue == 17)
            .map(|g| g.id)
            .collect();
        assert_eq!(
            ids,
            [
                "tput_128_send",
                "tput_128_many",
                "tput_64k",
                "connect_new",
                "ttfm_rtt20",
                "mem_idle_heap",
                "mem_many_heap"
            ]
        );
        let (t, verdicts) = goals_table(&[]);
        assert_eq!(verdicts.len(), GOALS.len());
        assert_eq!(t.matches("not measured").count(), GOALS.len(), "{t}");
    }

    #[test]
    fn e2e_rows_mark_unmet_goals() {
        let rows = rows(&[line(
            r#"{"kind":"result","id":"tput_128_send","scenario":"s","figure":"f","unit":"msg/s","baseline":"b","values":[2000000,1900000,2100000],"baseline_values":[1000000,1000000,1000000],"paired":"yes","ratio_of":"figure/baseline","note":""}"#,
        )]);
        let t = e2e_table(&rows);
        assert!(
            t.contains("| s | f | 2.00 M msg/s | b | 1.00 M msg/s | 2.00× | 1.90–2.10× (3 pairs) | ≥ 1.5× | yes |"),
            "{t}"
        );
        let old = rows_of_old_format();
        assert_eq!((old.value, old.baseline_value, old.ratio), (2e6, 1e6, 2.0));
        assert_eq!(old.spread, Spread::One);
    }

    /// A line as the e2e binary wrote them before sample arrays.
    fn rows_of_old_format() -> Row {
        Row::from_line(&line(
            r#"{"kind":"result","scenario":"s","figure":"f","value":2000000,"unit":"msg/s","baseline":"b","baseline_value":1000000,"ratio":2,"goal":">= 3","met":"no","note":""}"#,
        ))
    }

    #[test]
    fn notes_are_keyed_by_the_first_word_of_each_heading() {
        let notes = parse_notes(
            "# Notes\nintro, not a section\n## tput_64k — 64 KiB\n\nProfile: seal 40 %.\n\n## connect_new\nHandshake.\n## empty\n",
        );
        assert_eq!(notes.len(), 3);
        assert_eq!(notes["tput_64k"], "Profile: seal 40 %.");
        assert_eq!(notes["connect_new"], "Handshake.");
        assert_eq!(notes["empty"], "");
    }

    #[test]
    fn unmet_goals_get_their_notes_or_a_placeholder() {
        let r = |id: &str, v: f64| {
            Row::from_line(&line(&format!(
                r#"{{"kind":"result","id":"{id}","unit":"µs","values":[{v}],"baseline_values":[100]}}"#
            )))
        };
        let rows = [
            r("connect_new", 200.0),
            r("ttfm_rtt20", 300.0),
            r("mem_idle_heap", 100.0),
        ];
        let (_, verdicts) = goals_table(&rows);
        let notes = parse_notes("## connect_new\nWhy it is slow.\n");
        let s = unmet_section(&verdicts, &rows, &notes, "docs/bench-notes.md");
        assert!(s.contains("### new connection, loopback"), "{s}");
        assert!(s.contains("Why it is slow."), "{s}");
        assert!(
            s.contains("add it under `## ttfm_rtt20` in `docs/bench-notes.md`"),
            "{s}"
        );
        assert!(
            !s.contains("### heap per idle"),
            "met goals have no section: {s}"
        );
        assert!(s.contains("Not measured in this run"), "{s}");
    }

    proptest::proptest! {
        #[test]
        fn median_lies_within_the_samples(v in proptest::collection::vec(-1e9f64..1e9, 1..40)) {
            let m = median(&v);
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            proptest::prop_assert!(lo <= m && m <= hi);
        }

        #[test]
        fn ceiling_is_below_both_rates(raw in 1.0f64..1e6, sealer in 1.0f64..1e6) {
            let c = ceiling(raw, sealer);
            proptest::prop_assert!(c < raw && c < sealer && c >= raw.min(sealer) / 2.0 * (1.0 - 1e-12));
        }

        #[test]
        fn the_ratio_of_medians_lies_within_the_pair_spread_when_pairs_agree(
            base in proptest::collection::vec(1.0f64..1e6, 1..20),
            k in 0.1f64..10.0,
        ) {
            // Every pair has the same ratio k: the row's ratio is k and the spread collapses to it.
            let fig: Vec<f64> = base.iter().map(|b| b * k).collect();
            let spread = Spread::of(&fig, &base, true, false);
            let ratio = median(&fig) / median(&base);
            proptest::prop_assert!((ratio - k).abs() < 1e-9 * k);
            if let Spread::Pairs { min, max, .. } = spread {
                proptest::prop_assert!((min - k).abs() < 1e-9 * k && (max - k).abs() < 1e-9 * k);
            }
        }
    }
}
