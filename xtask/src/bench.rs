//! `cargo xtask bench`: run every suite, then write the report and plots.
//!
//! The numbers come from the suites; the judging (medians, spreads,
//! ceilings, goals) is in [`report`]; the analysis of unmet goals is written
//! by hand in `docs/bench-notes.md` and copied in, so it survives every run.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::report::{self, field, num, Line};
use crate::svg::{LineChart, Series};
use crate::{cargo, project_root, run as run_cmd};

/// The criterion suites, in the order they run.
const MICRO: [&str; 4] = ["sealer", "batch", "pool", "metrics"];

/// How many times a full run measures a micro suite; the report keeps each
/// figure's fastest run. The pool's 2-thread figures need both vCPUs of a
/// shared VM, and a noise episode there lasts a whole criterion benchmark
/// (seconds) and can double it, so one run is not enough; interference only
/// ever slows a figure down, so the fastest of three is the robust reading.
fn runs_of(suite: &str) -> usize {
    if suite == "pool" {
        3
    } else {
        1
    }
}

/// Runs the suites and writes the report: `docs/` for a full run,
/// `target/qudag-bench/` for `--quick` (a smoke run must not overwrite the
/// published numbers).
pub(crate) fn run(quick: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let root = project_root();
    let criterion_dir = target_dir().join("criterion");
    // Build every bench binary first, in one cargo invocation (they compile
    // in parallel, and no suite's measurement starts right after a link).
    run_cmd(cargo().args(["bench", "-p", "qudag-benches", "--benches", "--no-run"]))?;
    let mut all = Vec::new();
    for suite in MICRO {
        let runs = if quick { 1 } else { runs_of(suite) };
        for _ in 0..runs {
            // A little slack: criterion's files are written after this instant.
            let since = SystemTime::now() - Duration::from_secs(2);
            let mut cmd = cargo();
            cmd.args(["bench", "-p", "qudag-benches", "--bench", suite, "--"]);
            if quick {
                cmd.arg("--quick");
            }
            run_cmd(&mut cmd)?;
            all.extend(report::read_criterion(&criterion_dir, since)?);
        }
    }
    let micro = report::fastest(all);
    let jsonl = root.join("target/qudag-bench/e2e.jsonl");
    let mut cmd = cargo();
    cmd.args([
        "bench",
        "-p",
        "qudag-benches",
        "--bench",
        "e2e",
        "--",
        "--out",
    ])
    .arg(&jsonl);
    if quick {
        cmd.arg("--quick");
    }
    run_cmd(&mut cmd)?;

    let e2e = report::read_e2e(&jsonl)?;
    let out_dir = if quick {
        root.join("target/qudag-bench")
    } else {
        root.join("docs")
    };
    std::fs::create_dir_all(&out_dir)?;
    let command = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let throughput = plot(&e2e, "throughput", |series| LineChart {
        title: "Throughput against message size (one way, QUIC on 127.0.0.1)".into(),
        x_label: "message size (bytes, log scale)".into(),
        y_label: "payload MB/s".into(),
        x_log: true,
        y_log: false,
        series,
    });
    let latency = plot(&e2e, "latency", |series| LineChart {
        title: "Send → ack latency against offered load (128-B messages)".into(),
        x_label: "offered load (messages/s, log scale)".into(),
        y_label: "latency (ms, log scale)".into(),
        x_log: true,
        y_log: true,
        series,
    });
    std::fs::write(out_dir.join("bench-throughput.svg"), throughput)?;
    std::fs::write(out_dir.join("bench-latency.svg"), latency)?;
    // A missing notes file is not an error: every unmet goal then gets the
    // placeholder saying where to write its analysis.
    let notes = std::fs::read_to_string(root.join(NOTES)).unwrap_or_default();
    let md = markdown(&micro, &e2e, &notes, command, quick, started.elapsed());
    let path = out_dir.join("BENCHMARKS.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {} ({} criterion figures, {} e2e lines)",
        path.display(),
        micro.len(),
        e2e.len()
    );
    Ok(())
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the
/// workspace root if relative), else `target/` (criterion writes its results
/// under it).
fn target_dir() -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => project_root().join(d),
        None => project_root().join("target"),
    }
}

fn plot(lines: &[Line], name: &str, chart: impl FnOnce(Vec<Series>) -> LineChart) -> String {
    let mut series: Vec<Series> = Vec::new();
    for l in lines
        .iter()
        .filter(|l| field(l, "kind") == "point" && field(l, "plot") == name)
    {
        let s = field(l, "series");
        let point = (num(l, "x"), num(l, "y"));
        match series.iter_mut().find(|x| x.name == s) {
            Some(x) => x.points.push(point),
            None => series.push(Series {
                name: s.to_owned(),
                points: vec![point],
            }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    chart(series).to_svg()
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The CPU model named in `cpuinfo` (the text of `/proc/cpuinfo`), or "unknown".
pub(crate) fn cpu_model(cpuinfo: &str) -> &str {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
}

/// The machine section: cores, CPU model and flags of interest, OS, rustc, date.
fn machine(command: &str) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu_model(&cpuinfo);
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.split_whitespace().collect())
        .unwrap_or_default();
    let wanted = [
        "aes",
        "pclmulqdq",
        "vaes",
        "vpclmulqdq",
        "avx",
        "avx2",
        "avx512f",
        "avx512vl",
        "bmi2",
        "adx",
        "sha_ni",
    ];
    let have: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|f| flags.contains(f))
        .collect();
    let lack: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|f| !flags.contains(f))
        .collect();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| std::env::consts::OS.into());
    let mut s = String::new();
    let _ = writeln!(s, "- Command: `{command}`");
    let _ = writeln!(s, "- Date: {}", sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    let _ = writeln!(s, "- Cores: {cores} (`available_parallelism`)");
    let _ = writeln!(s, "- CPU: {model}");
    let _ = writeln!(
        s,
        "- CPU flags of interest: present {}; absent {}",
        if have.is_empty() {
            "none".into()
        } else {
            have.join(", ")
        },
        if lack.is_empty() {
            "none".into()
        } else {
            lack.join(", ")
        }
    );
    let _ = writeln!(s, "- OS: {os}, kernel {}", sh("uname", &["-r"]));
    let _ = writeln!(s, "- rustc: {}", sh("rustc", &["--version"]));
    let root = project_root();
    let root = root.to_string_lossy();
    let commit = sh("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    let dirty = sh(
        "git",
        &[
            "-C",
            &root,
            "status",
            "--porcelain",
            "--",
            "crates",
            "benches",
        ],
    );
    // `XY path` per line; the output is trimmed, so split on whitespace.
    let dirty: Vec<&str> = dirty
        .lines()
        .filter(|l| !l.starts_with("??"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let _ = writeln!(
        s,
        "- Source: commit `{commit}`{}",
        if dirty.is_empty() {
            String::new()
        } else {
            format!(
                " plus uncommitted changes to {} (a shared checkout: other work in progress was measured too)",
                dirty.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
            )
        }
    );
    let _ = writeln!(s, "- Load average when the report was written: {}", {
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into())
    });
    s
}

/// The hand-written notes the report copies under "Goals not met", relative
/// to the workspace root.
const NOTES: &str = "docs/bench-notes.md";

fn markdown(
    micro: &[report::Micro],
    e2e: &[Line],
    notes: &str,
    command: &str,
    quick: bool,
    took: Duration,
) -> String {
    let rows = report::rows(e2e);
    let mut s = String::new();
    s.push_str("# Benchmarks\n\n");
    let _ = writeln!(
        s,
        "Written by `{command}`; do not edit by hand, rerun the command (hand-written analysis \
         goes in [`bench-notes.md`](bench-notes.md), which the command copies in).{}\n",
        if quick {
            " **Quick mode: tiny counts, a smoke check; do not read the numbers.**"
        } else {
            ""
        }
    );
    s.push_str(
        "Every figure stands beside a baseline measured in the same run on the same machine. \
         The machine is a shared 2-core VM, so absolute numbers are noisy; the ratios are the \
         currency.\n\n",
    );
    s.push_str(
        "**Method.** The end-to-end scenarios run in interleaved rounds: manager, baseline, \
         manager, baseline, ... (a fresh connection pair per run; every other round runs its \
         jobs in reverse order, so neither side always goes first), so drift or a noise episode on \
         the shared machine falls on both sides of a pair instead of making a ratio. Each figure \
         and each baseline is the **median** of its runs, and the ratio is the ratio of the two \
         medians. The **spread** column gives the lowest and highest ratio of the individual \
         pairs (\"pairs\"), or, where the runs are not paired, the lowest and highest run of the \
         figure (\"runs\"); \"one run\" is a single measurement (the 10,000-connection \
         figures, which take a quarter of a minute per side, and the raw RTT). The 64 KiB goal may instead be met against its **ceiling**: \
         `1 / (1/raw + 1/sealer)`, the rate the raw bulk transfer would have with a second \
         ChaCha20-Poly1305 pass over every byte, where `sealer` is the default sealer's (ring) \
         rate sealing 64-KiB buffers, measured in every round of the same run; the goal is met if \
         the manager reaches 0.8 × raw **or** 0.95 × ceiling.\n\n",
    );
    s.push_str("## Machine\n\n");
    s.push_str(&machine(command));
    s.push_str("\n## Goals\n\n");
    s.push_str(
        "Every goal, whether or not this run measured it (issue 17's table first, then the \
         earlier ones). Ratios are figure / baseline unless the goal says otherwise.\n\n",
    );
    let (goals, verdicts) = report::goals_table(&rows);
    s.push_str(&goals);
    s.push_str("\n## End-to-end scenarios (QUIC on 127.0.0.1)\n\n");
    s.push_str(
        "Both ends run in one process on a 2-worker tokio runtime (the memory scenarios put the \
         dialing ends in a child process, so only the listener is counted). \
         `benches/benches/e2e.rs` writes every sample to `target/qudag-bench/e2e.jsonl`; the \
         medians, ratios and spreads below are computed from them. Ratios are figure / baseline \
         unless the row says otherwise; for times and bytes lower is better. The first-message \
         scenario runs both sides through a user-space UDP delay proxy on 127.0.0.1 (10 ms each \
         way, a bounded queue per direction, `benches/src/delay_proxy.rs`).\n\n",
    );
    s.push_str(
        "**Baseline.** Raw quinn 0.11 with the same crypto provider (rustls 0.23 with ring), \
         TLS 1.3 only, mutual authentication with self-signed Ed25519 certificates (rcgen) whose \
         handshake signatures are verified, no resumption or 0-RTT, and the same transport \
         settings as `QuicConfig::default()`: 8 MiB stream window, 16 MiB connection receive and \
         send windows, 30 s idle timeout, 10 s keep-alive. What the baseline leaves out is what \
         qudag adds: PeerId checks, the acceptance byte, the batch stream, batching, sealing, \
         acknowledgements and per-peer queues. The manager runs with `ManagerConfig::default()` \
         (adaptive flush policy) unless the row names the fixed policy.\n\n",
    );
    s.push_str(&report::e2e_table(&rows));
    let mut seen = std::collections::HashSet::new();
    let notes_rows: Vec<&report::Row> = rows
        .iter()
        .filter(|r| !r.note.is_empty())
        .filter(|r| seen.insert((r.scenario.as_str(), r.note.as_str())))
        .collect();
    if !notes_rows.is_empty() {
        s.push_str("\nRow notes:\n\n");
        for r in notes_rows {
            let _ = writeln!(s, "- {} / {}: {}", r.scenario, r.figure, r.note);
        }
    }
    let infos: Vec<&Line> = e2e
        .iter()
        .filter(|l| field(l, "kind") == "info" && field(l, "key").starts_with("batching"))
        .collect();
    if !infos.is_empty() {
        s.push_str("\nBatching the sender observed (from `metrics_snapshot()`):\n\n");
        for l in infos {
            let _ = writeln!(s, "- {}: {}", field(l, "key"), field(l, "value"));
        }
    }
    s.push_str("\n### Plots\n\n");
    s.push_str("![Throughput against message size](bench-throughput.svg)\n\n");
    s.push_str("![Latency against offered load](bench-latency.svg)\n\n");
    s.push_str(
        "The latency plot's fixed policy flushes at 128 messages or 50 ms, so at light load its \
         latency is the batch timer; the adaptive policy flushes at once when nothing is in \
         flight.\n",
    );
    s.push_str("\n## Micro benchmarks (criterion)\n\n");
    s.push_str(
        "Mean time per iteration from `target/criterion/**/new/estimates.json` (the `pool` \
         suite runs three times and each figure is its fastest run's mean: its 2-thread figures \
         are sensitive to noise on a shared 2-vCPU VM); the speed ratio \
         is baseline time / figure time (above 1: the figure is faster than its baseline). HTML \
         reports: [`target/criterion/report/index.html`](../target/criterion/report/index.html) \
         (local to the machine that ran the command). The baselines: the `chacha20poly1305` crate \
         for ring's ChaCha20-Poly1305 (seal, open), a bare `Vec` push for the batcher, `memcpy` \
         and a copy per message for the codec, `DashMap`/`Mutex<HashMap>` for the pool, and a \
         bare atomic add for the metrics sink.\n\n",
    );
    if micro.is_empty() {
        s.push_str("No criterion results were written in this run.\n");
    } else {
        s.push_str(&report::micro_table(micro));
    }
    s.push_str("\n## Goals not met\n\n");
    let _ = writeln!(
        s,
        "Per goal this run did not meet: its numbers, then the analysis written by hand in \
         [`{NOTES}`](bench-notes.md) under `## <goal id>` (profiles, where the time goes, what \
         would close it), copied in unchanged on every run.\n"
    );
    s.push_str(&report::unmet_section(
        &verdicts,
        &rows,
        &report::parse_notes(notes),
        NOTES,
    ));
    let _ = writeln!(
        s,
        "Reproduce with `{command}` (this run took {:.0} minutes on 2 cores, build included).",
        (took.as_secs_f64() / 60.0).ceil()
    );
    s
}
