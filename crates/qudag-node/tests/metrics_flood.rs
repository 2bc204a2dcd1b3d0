//! The metrics endpoint under a slow-client flood, with a small descriptor
//! table (`ulimit -n 256`), in its own test process.
//!
//! 400 connections that never send a byte are held open. The endpoint must
//! keep serving (a fresh `GET /metrics` is answered 200 once the cap frees
//! slots through the header timeout) and must not spin: its CPU time over
//! the flood is well under half of the wall time (a ratio, never an absolute
//! time). The old hand-written server accepted until the descriptor table was
//! full and then spun on `accept` failing with "Too many open files".

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qudag-node");
/// Bound on every wait (debug builds are slow, machines are shared).
const GUARD: Duration = Duration::from_secs(60);
/// Silent connections held open.
const FLOOD: usize = 400;
/// The shortest measurement window.
const WINDOW: Duration = Duration::from_secs(4);
/// Fresh-client attempts before giving up.
const ATTEMPTS: usize = 5;

/// A child process that is killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// User plus system CPU time of `pid`, in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name is in parentheses and may hold spaces: fields are counted after it.
    let rest = &stat[stat.rfind(')').expect("comm field") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// Clock ticks per second (USER_HZ).
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One `GET /metrics` on a fresh connection: the whole answer, or why not.
fn get_metrics(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, GUARD).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(GUARD)).map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    Ok(out)
}

#[test]
fn a_slow_client_flood_neither_starves_nor_spins_the_metrics_endpoint() {
    let mut child = Command::new("sh")
        .args([
            "-c",
            r#"ulimit -n 256 && exec "$0" "$@""#,
            BIN,
            "listen",
            "--bind",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--metrics-header-timeout",
            "0.2",
            "--timeout",
            "120",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let stdout = child.stdout.take().expect("stdout piped");
    let stderr = child.stderr.take().expect("stderr piped");
    // `exec` keeps the pid: this is the listener's.
    let pid = child.id();
    let mut guard = Guard(child);

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = tx.send(line);
                }
            }
        }
    });
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        let _ = err_tx.send(s);
    });
    let first = rx.recv_timeout(GUARD).expect("listen's first line");
    assert!(first.starts_with("listening "), "{first:?}");
    let second = rx.recv_timeout(GUARD).expect("listen's metrics line");
    let addr: SocketAddr = second
        .trim()
        .strip_prefix("metrics http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected metrics line {second:?}"))
        .parse()
        .expect("metrics address");
    assert!(addr.ip().is_loopback());

    // The flood: connections that never send anything, all dialled at once
    // (as a real flood does, so they reach the server together), held open
    // throughout.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let flood: Vec<tokio::net::TcpStream> = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..FLOOD {
            set.spawn(tokio::time::timeout(
                GUARD,
                tokio::net::TcpStream::connect(addr),
            ));
        }
        let mut held = Vec::with_capacity(FLOOD);
        while let Some(r) = set.join_next().await {
            let stream = r
                .expect("connect task")
                .expect("flood connect within the guard")
                .expect("flood connect");
            held.push(stream);
        }
        held
    });
    assert_eq!(flood.len(), FLOOD);
    let t0 = Instant::now();
    let cpu0 = cpu_ticks(pid);

    // A fresh client is answered once the cap frees slots (each silent
    // connection is cut at the header timeout). Retried a bounded number of
    // times in case the server closes an attempt under pressure.
    let mut answers = Vec::new();
    for _ in 0..ATTEMPTS {
        let answer = get_metrics(addr);
        let ok = matches!(&answer, Ok(a) if a.starts_with("HTTP/1.1 200 OK\r\n"));
        answers.push(answer);
        if ok {
            break;
        }
    }
    let last = answers.last().expect("one attempt");
    let body = last
        .as_ref()
        .ok()
        .filter(|a| a.starts_with("HTTP/1.1 200 OK\r\n"))
        .unwrap_or_else(|| panic!("no 200 in {ATTEMPTS} attempts: {answers:?}"));
    assert!(
        body.contains("Content-Type: text/plain; version=0.0.4\r\n"),
        "{body}"
    );
    assert!(body.contains("qudag_messages_received"), "{body}");

    // Measure over at least WINDOW of the flood: long enough for the tick
    // resolution (10 ms) to be small against it, and for the connections
    // beyond the listen backlog to reach the server (the kernel retransmits
    // their SYN-ACK after 1 s, then 2 s). This is a measurement window, not
    // a synchronisation: nothing waits for the server here.
    while t0.elapsed() < WINDOW {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = (cpu_ticks(pid) - cpu0) as f64 / ticks_per_second();
    let wall = t0.elapsed().as_secs_f64();
    let ratio = cpu / wall;
    eprintln!("listener CPU {cpu:.2} s over {wall:.2} s of flood: ratio {ratio:.3}");
    assert!(
        guard.0.try_wait().expect("try_wait").is_none(),
        "the listener died under the flood"
    );
    drop(flood);
    let _ = guard.0.kill();
    let _ = guard.0.wait();
    let log = err_rx.recv_timeout(GUARD).unwrap_or_default();
    assert!(
        ratio < 0.5,
        "the listener used {cpu:.2} s of CPU in {wall:.2} s of flood (ratio {ratio:.2}); log: {} lines, first: {:?}",
        log.lines().count(),
        log.lines().next()
    );
    // Accept errors are logged at most once per back-off, never per failure.
    assert!(
        log.lines().count() < 20,
        "{} log lines, first: {:?}",
        log.lines().count(),
        log.lines().next()
    );
}
