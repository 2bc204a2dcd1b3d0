//! The quick testnet: 8 `qudag-node run` processes on 127.0.1.x in a full
//! mesh, two of them with a connection limit below their peer count, nodes
//! of the second half killed with SIGKILL and restarted every few seconds
//! for 20 s; then drained and stopped, and the network-wide books balanced
//! (the rules are in `qudag_testnet::books`). And the same harness with one
//! received message dropped on purpose, which must not balance.
//!
//! No process outlives a test: every node is in its own process group,
//! killed when its guard drops (also on panic), and runs with
//! `--exit-with-parent`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use qudag_testnet::net::{remove_dir, temp_dir};
use qudag_testnet::{Options, Scenario, Setup, Topology};

const BIN: &str = env!("CARGO_BIN_EXE_qudag-node");

fn setup(tag: &str) -> Setup {
    Setup {
        bin: BIN.into(),
        dir: temp_dir(tag),
        interrupted: Arc::new(AtomicBool::new(false)),
        verbose: true,
    }
}

#[test]
fn churn_testnet_books_balance() {
    let o = Options {
        nodes: 8,
        scenario: Scenario::Churn,
        seconds: 20,
        topology: Topology::Mesh,
        rate: 20.0,
        port: 47300,
        seed: 18,
        ..Options::default()
    };
    let s = setup("ci-churn");
    let report = qudag_testnet::run(&o, &s).expect("the testnet ran");
    eprintln!("{}", report.verdict.summary());
    assert_eq!(report.leaked, 0, "processes leaked");
    assert!(
        report.problems.is_empty(),
        "{:?} (logs in {})",
        report.problems,
        s.dir.display()
    );
    assert!(
        report.marks.iter().any(|m| m.what == "kill"),
        "churn killed nobody"
    );
    assert!(report.verdict.exact_pairs > 0);
    assert!(
        report.ok(),
        "{} (logs in {})",
        report.verdict.summary(),
        s.dir.display()
    );
    remove_dir(&s.dir);
}

#[test]
fn a_message_dropped_on_purpose_unbalances_the_books() {
    let o = Options {
        nodes: 3,
        scenario: Scenario::Steady,
        seconds: 10,
        topology: Topology::Mesh,
        rate: 20.0,
        port: 47400,
        seed: 7,
        // node0's application "loses" the 25th message it receives.
        fault_drop_received: Some(25),
        ..Options::default()
    };
    let s = setup("ci-fault");
    let report = qudag_testnet::run(&o, &s).expect("the testnet ran");
    let text = report.verdict.summary();
    eprintln!("{text}");
    assert_eq!(report.leaked, 0, "processes leaked");
    assert!(!report.verdict.balanced(), "a lost message went unnoticed");
    assert_eq!(report.verdict.gaps, 1, "{text}");
    assert!(
        report
            .verdict
            .violations
            .iter()
            .any(|v| v.contains("→ node0") && v.contains("received")),
        "{text}"
    );
    remove_dir(&s.dir);
}
