//! `qudag-node run` as a process: bad configs are one line naming the field
//! and exit code 2; `run --help` explains every field; a peer that sends
//! payloads which are not generated ones (here `qudag-node send`) is counted
//! as malformed, never a crash; SIGTERM ends with a JSON summary.
//!
//! Every child is killed when its guard drops; every wait is bounded.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qudag-node");
const BOUND: Duration = Duration::from_secs(60);

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p =
            std::env::temp_dir().join(format!("qudag-run-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keygen(dir: &TempDir, name: &str) -> String {
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(dir.0.join(name))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs `run --config FILE` with `text` and returns (exit code, stderr).
fn bad(dir: &TempDir, text: &str) -> (Option<i32>, String) {
    let path = dir.0.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Guard(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + BOUND;
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "run did not exit on a bad config");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

#[track_caller]
fn check_bad(dir: &TempDir, text: &str, field: &str) {
    let (code, err) = bad(dir, text);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with(&format!("error: config: {field}: ")),
        "{err:?} does not name {field}"
    );
}

#[test]
fn bad_configs_are_one_line_naming_the_field_and_exit_2() {
    let dir = TempDir::new("bad");
    let me = keygen(&dir, "me.key");
    let other = keygen(&dir, "other.key");
    let head = "bind = \"127.0.1.1:47500\"\nkey = \"me.key\"\n";
    check_bad(&dir, &format!("{head}colour = \"blue\"\n"), "colour");
    check_bad(&dir, "bind = \"127.0.1.1\"\n", "bind");
    check_bad(
        &dir,
        "bind = \"127.0.1.1:47500\"\nkey = \"nope.key\"\n",
        "key",
    );
    check_bad(
        &dir,
        &format!("{head}peers = [\"{other}@127.0.1.2:1\", \"{other}@127.0.1.3:1\"]\n"),
        "peers[1]",
    );
    check_bad(
        &dir,
        &format!("{head}peers = [\"{me}@127.0.1.2:1\"]\n"),
        "peers[0]",
    );
    check_bad(
        &dir,
        &format!("{head}peers = [\"{other}@nowhere\"]\n"),
        "peers[0]",
    );
    check_bad(&dir, &format!("{head}metrics = \"localhost\"\n"), "metrics");
}

#[test]
fn help_explains_every_field() {
    let out = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for field in [
        "bind",
        "key",
        "peers",
        "allow",
        "max_connections",
        "metrics",
        "unreachable_after",
        "backoff_cap",
        "idle_timeout",
        "grace",
        "park_every",
        "traffic.rate",
        "traffic.size",
        "traffic.to",
    ] {
        assert!(
            help.contains(&format!("`{field}`")),
            "--help does not explain {field}"
        );
    }
    assert!(help.contains("[traffic]"), "--help shows a config example");
}

#[test]
fn foreign_payloads_are_counted_as_malformed_and_sigterm_prints_the_summary() {
    let dir = TempDir::new("malformed");
    keygen(&dir, "node.key");
    let mut node = Guard(
        Command::new(BIN)
            .args(["run", "--bind", "127.0.1.1:47510", "--key"])
            .arg(dir.0.join("node.key"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = node.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(BOUND).expect("a first line");
    let addr = first
        .strip_prefix("running ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    // `send` payloads are 0xa5 bytes: not a generated payload; 8 bytes is also short.
    for size in ["8", "64"] {
        let out = Command::new(BIN)
            .args(["send", "--to", &addr, "--count", "3", "--size", size])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pid = rustix::process::Pid::from_raw(node.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let summary = rx.recv_timeout(BOUND).expect("a summary line");
    let until = Instant::now() + BOUND;
    let status = loop {
        if let Some(s) = node.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "run did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    assert!(summary.starts_with('{'), "{summary}");
    assert!(summary.contains("\"malformed\":6"), "{summary}");
    assert!(summary.contains("\"drained\":true"), "{summary}");
    assert!(
        summary.contains("\"received\":[]"),
        "nothing counted as a stream: {summary}"
    );
}
