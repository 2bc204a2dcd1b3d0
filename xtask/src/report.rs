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

/// The e2e results table.
pub(crate) fn e2e_table(lines: &[Line]) -> String {
    let mut s = String::from(
        "| scenario | figure | value | baseline (same run) | baseline value | ratio | goal | met |\n|---|---|---:|---|---:|---:|---|---|\n",
    );
    for l in lines.iter().filter(|l| field(l, "kind") == "result") {
        let unit = field(l, "unit");
        let ratio = num(l, "ratio");
        let met = match field(l, "met") {
            "yes" => "yes",
            "no" => "**no**",
            _ => "",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            field(l, "scenario"),
            field(l, "figure"),
            value(num(l, "value"), unit),
            if field(l, "baseline").is_empty() {
                "—"
            } else {
                field(l, "baseline")
            },
            value(num(l, "baseline_value"), unit),
            if ratio.is_finite() {
                format!("{ratio:.2}×")
            } else {
                "—".into()
            },
            field(l, "goal").replace(">=", "≥").replace("<=", "≤"),
            met,
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

    #[test]
    fn e2e_rows_mark_unmet_goals() {
        let line = r#"{"kind":"result","scenario":"s","figure":"f","value":2000000,"unit":"msg/s","baseline":"b","baseline_value":1000000,"ratio":2,"goal":">= 3","met":"no","note":""}"#;
        let Json::Obj(f) = Json::parse(line).unwrap() else {
            panic!("not an object")
        };
        let t = e2e_table(&[f.into_iter().collect()]);
        assert!(
            t.contains("| s | f | 2.00 M msg/s | b | 1.00 M msg/s | 2.00× | ≥ 3 | **no** |"),
            "{t}"
        );
    }
}
