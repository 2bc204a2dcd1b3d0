//! `rust-version` is a claim the build checks. This test checks the part
//! clippy cannot: no crate the six library crates depend on (normal and
//! build dependencies, as resolved in Cargo.lock) declares a higher
//! `rust-version` than the workspace. Clippy's `incompatible_msrv` lint
//! (warn by default, an error under `-D warnings` in CI) checks our own
//! code against the same number. A toolchain of exactly that version cannot
//! be installed here (no network beyond the package registries), so this is
//! the check that runs.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

const LIBRARIES: [&str; 6] = [
    "qudag-crypto",
    "qudag-batch",
    "qudag-pool",
    "qudag-metrics",
    "qudag-transport",
    "qudag-net",
];

fn version(v: &str) -> (u64, u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().expect("a number"));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// The triple of the toolchain that runs the tests (`rustc -vV`'s `host:`).
fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .trim()
        .to_owned()
}

#[test]
fn no_library_dependency_needs_a_newer_rust_than_rust_version() {
    // Offline, and only this machine's platform: a fresh machine that built
    // the workspace has downloaded the host's dependencies, not those of
    // other platforms (a Windows-only crate of clap's, for one), and the
    // full graph would need them.
    let host = host_triple();
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .args(["--filter-platform", &host])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let packages: HashMap<&str, &Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let name_of = |id: &str| packages[id]["name"].as_str().unwrap().to_owned();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();

    let ours: Vec<&str> = packages
        .keys()
        .copied()
        .filter(|id| LIBRARIES.contains(&name_of(id).as_str()))
        .collect();
    assert_eq!(ours.len(), LIBRARIES.len());
    let msrv = version(
        packages[ours[0]]["rust_version"]
            .as_str()
            .expect("rust-version is set"),
    );
    for id in &ours {
        assert_eq!(
            packages[id]["rust_version"].as_str().map(version),
            Some(msrv),
            "{} inherits the workspace rust-version",
            name_of(id)
        );
    }

    // Walk normal and build dependencies from the six libraries.
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = ours.clone();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let runtime = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if runtime {
                todo.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    assert!(seen.len() > 20, "the walk found the dependency tree");
    let too_new: Vec<String> = seen
        .iter()
        .filter_map(|id| {
            let rv = packages[id]["rust_version"].as_str()?;
            (version(rv) > msrv).then(|| format!("{} needs {rv}", name_of(id)))
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "rust-version {msrv:?} is not true: {too_new:?}"
    );
}
