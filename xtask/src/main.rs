//! `cargo xtask`: project automation for qudag-net.
//!
//! - `cargo xtask bench [--quick]`: runs the criterion suites (sealer, batch,
//!   pool, metrics) and the end-to-end scenarios, then writes
//!   `docs/BENCHMARKS.md` (each figure beside the baseline measured in the
//!   same run, and their ratio, plus the machine and the command) and the
//!   SVG plots under `docs/`. `--quick` is a smoke run with tiny counts.
//! - `cargo xtask ci`: the steps of `.ci/run` without the fuzz smoke: format
//!   check, clippy with warnings as errors, tests, rustdoc with warnings as
//!   errors.
//! - `cargo xtask testnet [--nodes N] [--scenario S] [--seconds S] ...`:
//!   runs N `qudag-node run` processes on 127.0.1.x with churn and a
//!   partition, balances the network-wide books and writes
//!   `docs/TESTNET.md` with SVG plots (`testnet.rs`; `--help` for options).
//! - `cargo xtask fuzz [--seconds N]`: runs every cargo-fuzz target in
//!   `fuzz/` for N seconds (default 15) if `cargo +nightly fuzz` is
//!   available, and says why it skips otherwise.
//!
//! What it does not do: assert any time (benchmarks are not tests), or
//! install toolchains.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod report;
mod svg;
mod testnet;

/// Project automation for qudag-net.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    /// The task to run.
    #[command(subcommand)]
    task: Task,
}

/// The tasks.
#[derive(Debug, Subcommand)]
enum Task {
    /// Run the criterion suites and the end-to-end scenarios, then write
    /// docs/BENCHMARKS.md and the SVG plots (each figure beside its
    /// baseline measured in the same run, and their ratio).
    Bench {
        /// A smoke run with tiny counts; writes to target/qudag-bench/
        /// instead of docs/.
        #[arg(long)]
        quick: bool,
    },
    /// The steps of .ci/run without the fuzz smoke: format check, clippy
    /// with warnings as errors, tests, rustdoc with warnings as errors.
    Ci,
    /// Run every cargo-fuzz target in fuzz/ (needs `cargo +nightly` and
    /// cargo-fuzz; says why it skips otherwise).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 15, value_name = "N")]
        seconds: u64,
    },
    /// Run a many-node testnet of `qudag-node run` processes on 127.0.1.x
    /// (steady, churn, partition), balance the network-wide books and write
    /// docs/TESTNET.md (`cargo xtask testnet --help` for the options).
    #[command(disable_help_flag = true)]
    Testnet {
        /// The testnet's options, parsed by the task itself.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    // `cargo xtask` runs `cargo run -p xtask --`: the first argument is ours.
    match Cli::parse().task {
        Task::Bench { quick } => bench::run(quick),
        Task::Ci => ci(),
        Task::Fuzz { seconds } => fuzz(seconds),
        Task::Testnet { args } => testnet::run(&args),
    }
}

/// The workspace root (the parent of this crate's manifest directory).
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// `$CARGO` (the cargo running this task), or `cargo`.
pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(project_root());
    c
}

/// Runs `cmd`, echoing it; fails if it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn ci() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace"]))?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    eprintln!("ci passed");
    Ok(())
}

/// `cargo +nightly ...` through the rustup proxy (`$CARGO` names one toolchain).
fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly").current_dir(project_root());
    c
}

fn fuzz(seconds: u64) -> Result<()> {
    let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
    if !ok(nightly_cargo().arg("--version")) {
        println!("skipping fuzz: no nightly toolchain (cargo-fuzz needs `cargo +nightly`)");
        return Ok(());
    }
    if !ok(nightly_cargo().args(["fuzz", "--version"])) {
        println!("skipping fuzz: cargo-fuzz is not installed (`cargo install cargo-fuzz`)");
        return Ok(());
    }
    let list = nightly_cargo()
        .args(["fuzz", "list", "--fuzz-dir", "fuzz"])
        .output()
        .context("cargo fuzz list")?;
    if !list.status.success() {
        bail!("cargo fuzz list failed");
    }
    let root = project_root();
    for target in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        // Work on a copy so the checked-in corpus stays as it is.
        let work = std::env::temp_dir().join(format!("qudag-fuzz-{target}-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        for entry in std::fs::read_dir(&corpus)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), work.join(entry.file_name()))?;
            }
        }
        println!("fuzzing {target} for {seconds} s");
        let result = run(nightly_cargo()
            .args(["fuzz", "run", "--fuzz-dir", "fuzz", target])
            .arg(&work)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048"));
        let _ = std::fs::remove_dir_all(&work);
        result?;
    }
    Ok(())
}
