//! `cargo xtask --help` and `cargo xtask <task> --help` print usage and exit
//! 0, for every task the top-level help lists; a wrong option is a usage
//! error (exit 2), not a panic.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_xtask");

fn xtask(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run xtask");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The task names under "Commands:" in the top-level help.
fn tasks(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|t| *t != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_task_explains_itself() {
    let (code, help, _) = xtask(&["--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("Usage: cargo xtask"), "{help}");
    let tasks = tasks(&help);
    for expected in ["bench", "ci", "fuzz", "testnet"] {
        assert!(
            tasks.iter().any(|t| t == expected),
            "{expected} in {tasks:?}"
        );
    }
    for task in &tasks {
        let (code, out, err) = xtask(&[task, "--help"]);
        assert_eq!(code, 0, "{task} --help: {err}");
        assert!(
            out.to_lowercase()
                .contains(&format!("usage: cargo xtask {task}")),
            "{task}: {out}"
        );
    }
}

#[test]
fn a_wrong_option_is_a_usage_error() {
    for args in [
        &["bench", "--nope"][..],
        &["fuzz", "--seconds", "x"],
        &["nope"],
    ] {
        let (code, out, err) = xtask(args);
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains("--help"), "points to the help: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}
