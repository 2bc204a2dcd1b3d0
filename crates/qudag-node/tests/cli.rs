//! End-to-end tests of the `qudag-node` binary: real processes, QUIC over loopback.
//!
//! Every child process is bounded: it is killed when its guard drops, and
//! every wait has a deadline.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qudag-node");
/// Bound on any single child process (debug builds are slow, machines are shared).
const CHILD_TIMEOUT: Duration = Duration::from_secs(180);

/// A child process that is killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a finished child left.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Reads a pipe to the end on a thread, so a full pipe never blocks the child.
fn drain(mut r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx
}

/// Waits for `guard`'s child to exit (killing it after `timeout`), with its output.
fn finish(mut guard: Guard, stdout: mpsc::Receiver<String>, timeout: Duration) -> Finished {
    let stderr = drain(guard.0.stderr.take().expect("stderr piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = guard.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "child {:?} did not exit within {timeout:?}",
            guard.0.id()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.recv_timeout(timeout).unwrap_or_default();
    let stderr = stderr.recv_timeout(timeout).unwrap_or_default();
    Finished {
        status,
        stdout,
        stderr,
    }
}

/// Runs the binary to completion.
fn run(args: &[&str]) -> Finished {
    let mut child = Guard(cmd(args).spawn().expect("spawn qudag-node"));
    let out = drain(child.0.stdout.take().expect("stdout piped"));
    finish(child, out, CHILD_TIMEOUT)
}

/// A running `listen`: its guard, its first stdout line, and the rest of stdout.
struct Listener {
    guard: Guard,
    first_line: String,
    rest: mpsc::Receiver<String>,
}

impl Listener {
    /// `PEERID@ADDR` from the first line.
    fn peer_addr(&self) -> &str {
        self.first_line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line {:?}", self.first_line))
    }

    fn addr(&self) -> &str {
        self.peer_addr().split_once('@').expect("PEERID@ADDR").1
    }

    fn finish(self) -> Finished {
        finish(self.guard, self.rest, CHILD_TIMEOUT)
    }
}

/// Starts `listen` with `args` and reads its first stdout line (bounded).
fn listen(args: &[&str]) -> Listener {
    let mut guard = Guard(
        cmd(&[&["listen"], args].concat())
            .spawn()
            .expect("spawn listen"),
    );
    let stdout: ChildStdout = guard.0.stdout.take().expect("stdout piped");
    let (line_tx, line_rx) = mpsc::channel();
    let (rest_tx, rest_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = line_tx.send(line);
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        let _ = rest_tx.send(rest);
    });
    let first_line = line_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("listen printed no first line within 60 s");
    Listener {
        guard,
        first_line: first_line.trim_end().to_owned(),
        rest: rest_rx,
    }
}

/// A fresh temporary directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qudag-node-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The keys of `send --json`, sorted.
const SEND_KEYS: [&str; 10] = [
    "delivered",
    "elapsed_s",
    "error",
    "latency_p50_us",
    "latency_p99_us",
    "msgs_per_s",
    "not_sent",
    "requested",
    "sent",
    "undelivered",
];

/// Parses the one JSON line `send --json` printed and checks that it agrees
/// with itself and with the run: every key, the counts add up
/// (`requested = sent + not_sent`, `sent = delivered + undelivered`), and
/// `error` is the text of the `error:` line on stderr (or null on success).
/// Returns the numbers by key.
#[track_caller]
fn send_json(f: &Finished) -> BTreeMap<String, f64> {
    let lines: Vec<&str> = f.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line on stdout: {:?}", f.stdout);
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("valid JSON");
    let o = v.as_object().expect("a JSON object");
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    assert_eq!(keys, SEND_KEYS, "{o:?}");
    let n: BTreeMap<String, f64> = o
        .iter()
        .filter(|(k, _)| *k != "error")
        .map(|(k, v)| (k.clone(), v.as_f64().expect("a number")))
        .collect();
    assert_eq!(n["requested"], n["sent"] + n["not_sent"], "{n:?}");
    assert_eq!(n["sent"], n["delivered"] + n["undelivered"], "{n:?}");
    let error_line = f.stderr.lines().find_map(|l| l.strip_prefix("error: "));
    assert_eq!(o["error"].as_str(), error_line, "JSON error vs stderr");
    assert_eq!(f.status.success(), error_line.is_none());
    n
}

/// Asserts a failed run printed exactly one `error:` line containing `needle`, and no panic.
#[track_caller]
fn assert_one_line_error(f: &Finished, needle: &str) {
    assert!(
        !f.status.success(),
        "expected failure; stdout {:?}",
        f.stdout
    );
    let lines: Vec<&str> = f.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one stderr line, got {:?}",
        f.stderr
    );
    assert!(lines[0].starts_with("error: "), "{:?}", lines[0]);
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
    assert!(!f.stderr.contains("panicked") && !f.stderr.contains("backtrace"));
}

fn other_peer_id() -> String {
    "0123456789abcdef".repeat(4)
}

#[test]
fn listen_then_send_100k_messages_reports_json() {
    let l = listen(&[
        "--bind",
        "127.0.0.1:0",
        "--expect",
        "100000",
        "--timeout",
        "150",
    ]);
    let peer_addr = l.peer_addr().to_owned();
    let (id, addr) = peer_addr.split_once('@').unwrap();
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    let port: u16 = addr
        .strip_prefix("127.0.0.1:")
        .expect("bound on loopback")
        .parse()
        .unwrap();
    assert_ne!(port, 0, "the first line shows the real bound port");

    let s = run(&[
        "send",
        "--to",
        &peer_addr,
        "--count",
        "100000",
        "--size",
        "64",
        "--json",
        "--timeout",
        "150",
    ]);
    assert!(
        s.status.success(),
        "send failed: {:?} {:?}",
        s.stdout,
        s.stderr
    );
    let json = send_json(&s);
    assert_eq!(json["requested"], 100_000.0);
    assert_eq!(json["sent"], 100_000.0);
    assert_eq!(json["delivered"], 100_000.0);
    assert_eq!(json["undelivered"], 0.0);
    assert!(json["elapsed_s"] > 0.0);
    assert!(json["msgs_per_s"] > 0.0);
    assert!(json["latency_p50_us"] <= json["latency_p99_us"]);

    let done = l.finish();
    assert!(done.status.success(), "listen failed: {:?}", done.stderr);
    assert!(
        done.stdout.contains("received 100,000 messages"),
        "{:?}",
        done.stdout
    );
}

#[test]
fn send_to_a_wrong_peer_id_fails_with_one_line() {
    let l = listen(&["--bind", "127.0.0.1:0", "--timeout", "120"]);
    let to = format!("{}@{}", other_peer_id(), l.addr());
    let s = run(&[
        "send", "--to", &to, "--count", "10", "--size", "8", "--json",
    ]);
    assert_one_line_error(&s, "mismatch");
    assert!(s.stderr.contains(&other_peer_id()));
    let json = send_json(&s);
    assert_eq!((json["sent"], json["not_sent"]), (0.0, 10.0));
}

#[test]
fn allow_list_refuses_other_senders() {
    let l = listen(&[
        "--bind",
        "127.0.0.1:0",
        "--allow",
        &other_peer_id(),
        "--timeout",
        "120",
    ]);
    let s = run(&[
        "send",
        "--to",
        l.peer_addr(),
        "--count",
        "10",
        "--size",
        "8",
        "--json",
    ]);
    assert_one_line_error(&s, "refused");
    // The listener refuses in the TLS handshake (access_denied): the hint
    // names the allow-list the refusal came from.
    assert_one_line_error(&s, "allow-list");
    let json = send_json(&s);
    assert_eq!((json["sent"], json["not_sent"]), (0.0, 10.0));
}

#[test]
fn keygen_writes_a_private_key_that_listen_uses() {
    let dir = temp_dir("keygen");
    let key = dir.join("node.key");
    let key_s = key.to_str().unwrap();
    let k = run(&["keygen", "--out", key_s]);
    assert!(k.status.success(), "{:?}", k.stderr);
    let id = k.stdout.trim();
    assert_eq!(id.len(), 64, "{id:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let l = listen(&["--bind", "127.0.0.1:0", "--key", key_s, "--timeout", "120"]);
    assert_eq!(l.peer_addr().split_once('@').unwrap().0, id);
    drop(l);

    // Never overwrites an existing key.
    let again = run(&["keygen", "--out", key_s]);
    assert_one_line_error(&again, "already exists");

    // A bad key file is one line naming it.
    let bad = dir.join("bad.key");
    std::fs::write(&bad, b"not a key").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let b = run(&[
        "listen",
        "--bind",
        "127.0.0.1:0",
        "--key",
        bad.to_str().unwrap(),
    ]);
    assert_one_line_error(&b, "bad key file");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn send_to_an_unreachable_address_fails_with_one_line() {
    // A bound UDP socket that is not a QUIC endpoint: nothing ever answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = format!("{}@{}", other_peer_id(), silent.local_addr().unwrap());
    let s = run(&[
        "send",
        "--to",
        &to,
        "--count",
        "1",
        "--connect-timeout",
        "1",
        "--json",
    ]);
    assert_one_line_error(&s, "unreachable");
    let json = send_json(&s);
    assert_eq!((json["sent"], json["not_sent"]), (0.0, 1.0));
}

#[test]
fn listen_serves_prometheus_metrics_over_http() {
    // The line after `listening ...` names the metrics address.
    let mut guard = Guard(
        cmd(&[
            "listen",
            "--bind",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--timeout",
            "120",
        ])
        .spawn()
        .unwrap(),
    );
    let stdout = guard.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        for _ in 0..2 {
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(first.starts_with("listening "), "{first:?}");
    let second = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let url = second
        .trim()
        .strip_prefix("metrics http://")
        .expect("metrics line");
    let addr = url.strip_suffix("/metrics").unwrap();
    let get = |path: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let ok = get("/metrics");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(
        ok.contains("Content-Type: text/plain; version=0.0.4"),
        "{ok}"
    );
    assert!(ok.contains("qudag_messages_received"), "{ok}");
    assert!(get("/other").starts_with("HTTP/1.1 404"));
    drop(guard);
}

#[test]
fn demo_with_small_counts_prints_the_table() {
    let d = run(&[
        "demo",
        "--nodes",
        "2",
        "--messages",
        "2000",
        "--timeout",
        "120",
    ]);
    assert!(
        d.status.success(),
        "demo failed: {:?} {:?}",
        d.stdout,
        d.stderr
    );
    assert!(d.stdout.contains("QUIC"), "{}", d.stdout);
    assert!(d.stdout.contains("127.0.0.1"), "{}", d.stdout);
    for row in [
        "messages/s",
        "QUIC connections",
        "latency p50",
        "latency p99",
        "memory held (peak)",
    ] {
        assert!(d.stdout.contains(row), "missing {row:?} in {}", d.stdout);
    }
    assert!(
        d.stdout
            .contains("delivery contract: 2,000 delivered + 0 handed back = 2,000 of 2,000 sent"),
        "{}",
        d.stdout
    );
}

#[test]
fn usage_errors_exit_non_zero() {
    let d = run(&["demo", "--nodes", "1"]);
    assert!(!d.status.success());
    let s = run(&["send", "--to", "not-a-peer", "--count", "1"]);
    assert!(!s.status.success());
    assert!(s.stderr.contains("PEERID@IP:PORT"), "{}", s.stderr);
}

#[test]
fn sender_fails_fast_when_the_listener_goes_away() {
    // The listener leaves after 1000 messages; the sender must notice, stop,
    // and account for every accepted message (delivered or handed back).
    let l = listen(&[
        "--bind",
        "127.0.0.1:0",
        "--expect",
        "1000",
        "--linger",
        "0.001",
        "--timeout",
        "120",
    ]);
    let s = run(&[
        "send",
        "--to",
        l.peer_addr(),
        "--count",
        "100000",
        "--rate",
        "20000",
        "--size",
        "16",
        "--json",
        "--timeout",
        "120",
    ]);
    assert_one_line_error(&s, "not delivered");
    let json = send_json(&s);
    // The error line says the same numbers as the JSON.
    let line = s.stderr.trim_end();
    let expect = format!(
        "error: {} of 100000 messages not delivered ({} handed back, {} not sent): ",
        100_000 - json["delivered"] as u64,
        json["undelivered"] as u64,
        json["not_sent"] as u64,
    );
    assert!(line.starts_with(&expect), "{line:?} vs {expect:?}");
    // Acknowledged means taken by the listener's application, a whole batch at
    // a time: never more than the 1000 it read, and some of them.
    assert!(json["delivered"] <= 1000.0, "{json:?}");
    assert!(json["delivered"] > 0.0, "{json:?}");
    assert!(
        json["sent"] < 100_000.0,
        "the sender stopped early: {json:?}"
    );
    assert_eq!(
        json["delivered"] + json["undelivered"],
        json["sent"],
        "{json:?}"
    );
    assert!(l.finish().status.success());
}

/// The absurd values every numeric flag is tried with (besides 0, 1 and its maximum).
const ABSURD: [&str; 6] = ["1e19", "1e-20", "-1", "NaN", "inf", "100000000000"];

/// The largest `--size`, read from the refusal of a larger one (so the test
/// follows the library's limit instead of copying it).
fn max_size() -> String {
    let f = run(&[
        "send",
        "--to",
        &format!("{}@127.0.0.1:9", other_peer_id()),
        "--count",
        "1",
        "--size",
        &u64::MAX.to_string(),
    ]);
    assert_eq!(f.status.code(), Some(2), "{:?}", f.stderr);
    let tail = f
        .stderr
        .split("largest message of ")
        .nth(1)
        .unwrap_or_else(|| panic!("no limit in {:?}", f.stderr));
    tail.split(' ').next().expect("a number").to_owned()
}

/// One row of the numeric-flag table: a subcommand's base arguments (a run
/// that ends quickly), a flag, its maximum, whether the absurd value
/// `100000000000` is in range, and the values it is tried with.
struct FlagCase {
    base: Vec<String>,
    flag: &'static str,
    max: String,
    big_is_valid: bool,
}

/// `base` with `flag` set to `value` (replacing the base's own value).
fn with_flag(base: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut args = Vec::with_capacity(base.len() + 1);
    let mut it = base.iter();
    while let Some(a) = it.next() {
        if a == flag {
            it.next();
        } else {
            args.push(a.clone());
        }
    }
    args.push(format!("{flag}={value}"));
    args
}

#[test]
fn numeric_flags_never_panic_and_refuse_absurd_values_by_name() {
    // A target for `send`, so that values in range really run.
    let l = listen(&["--bind", "127.0.0.1:0", "--timeout", "170"]);
    let to = l.peer_addr().to_owned();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let demo = s(&[
        "demo",
        "--nodes",
        "2",
        "--messages",
        "10",
        "--timeout",
        "2",
        "--grace",
        "0.5",
    ]);
    let listen_base = s(&[
        "listen",
        "--bind",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--expect",
        "0",
        "--timeout",
        "0.5",
        "--linger",
        "0.5",
    ]);
    let send = s(&[
        "send",
        "--to",
        &to,
        "--count",
        "1",
        "--size",
        "8",
        "--connect-timeout",
        "20",
        "--timeout",
        "1",
        "--grace",
        "0.5",
    ]);
    let u64_max = u64::MAX.to_string();
    let days30 = "2592000".to_owned();
    let size_max = max_size();
    let case = |base: &Vec<String>, flag, max: &str, big_is_valid| FlagCase {
        base: base.clone(),
        flag,
        max: max.to_owned(),
        big_is_valid,
    };
    let cases = vec![
        case(&demo, "--nodes", "64", false),
        case(&demo, "--messages", &u64_max, true),
        case(&demo, "--size", &size_max, false),
        case(&demo, "--batch-size", "4294967295", false),
        case(&demo, "--timeout", &days30, false),
        case(&demo, "--grace", &days30, false),
        case(&listen_base, "--expect", &u64_max, true),
        case(&listen_base, "--timeout", &days30, false),
        case(&listen_base, "--linger", &days30, false),
        case(&listen_base, "--metrics-max-connections", "4096", false),
        case(&listen_base, "--metrics-header-timeout", "3600", false),
        case(&send, "--count", &u64_max, true),
        case(&send, "--size", &size_max, false),
        case(&send, "--rate", "1000000000", false),
        case(&send, "--connect-timeout", &days30, false),
        case(&send, "--timeout", &days30, false),
        case(&send, "--grace", &days30, false),
    ];
    let mut runs = Vec::new();
    for c in &cases {
        for value in ["0", "1", c.max.as_str()].into_iter().chain(ABSURD) {
            let must_refuse =
                ABSURD.contains(&value) && !(value == "100000000000" && c.big_is_valid);
            runs.push((
                with_flag(&c.base, c.flag, value),
                c.flag,
                value.to_owned(),
                must_refuse,
            ));
        }
    }
    // Two at a time: the machine has two cores.
    let results: Vec<_> = std::thread::scope(|scope| {
        let (a, b) = runs.split_at(runs.len() / 2);
        let work = |part: &[(Vec<String>, &'static str, String, bool)]| {
            part.iter()
                .map(|(args, flag, value, must_refuse)| {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    (
                        args.join(" "),
                        *flag,
                        value.clone(),
                        *must_refuse,
                        run(&args),
                    )
                })
                .collect::<Vec<_>>()
        };
        let ha = scope.spawn(move || work(a));
        let hb = scope.spawn(move || work(b));
        let mut all = ha.join().expect("first half");
        all.extend(hb.join().expect("second half"));
        all
    });
    assert_eq!(results.len(), cases.len() * 9);
    for (line, flag, value, must_refuse, f) in &results {
        let code = f.status.code();
        assert!(
            code.is_some() && code != Some(101) && code != Some(134),
            "`{line}` ended with {:?}: {:?}",
            f.status,
            f.stderr
        );
        assert!(
            !f.stderr.contains("panicked"),
            "`{line}` panicked: {:?}",
            f.stderr
        );
        if !f.status.success() {
            assert!(
                f.stderr.contains("error"),
                "`{line}` failed without a message: {:?}",
                f.stderr
            );
        }
        if *must_refuse {
            assert!(!f.status.success(), "`{line}` accepted {flag}={value}");
            assert!(
                f.stderr.contains(flag),
                "`{line}`: the message does not name {flag}: {:?}",
                f.stderr
            );
        }
    }
    // Values in range work: a few that must succeed.
    for (line, _, _, _, f) in &results {
        let ok_expected = [
            "--timeout=2592000",
            "--connect-timeout=2592000",
            "--rate=1000000000",
            "--metrics-max-connections=4096",
            "--expect=0",
        ];
        if ok_expected.iter().any(|s| line.ends_with(s)) {
            assert!(f.status.success(), "`{line}` failed: {:?}", f.stderr);
        }
    }
    drop(l);
}
