//! A user-space UDP forwarder that can drop everything: the impairment
//! proxy of the partition scenario (`tc` needs privileges this does not).
//!
//! A [`Forwarder`] listens on one address and forwards each client's
//! datagrams to one target from an upstream socket of its own (so that the
//! target's answers find their way back), and the answers back to the
//! client. While [`Forwarder::cut`] is on, it drops every datagram in both
//! directions. Every socket is on a fixed loopback address; every thread
//! wakes at least every [`TICK`] and ends once the forwarder is dropped.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// How often a forwarding thread looks at its stop flag.
pub const TICK: Duration = Duration::from_millis(50);
/// The most clients one forwarder serves.
pub const MAX_CLIENTS: usize = 64;

/// Counters of one forwarder.
#[derive(Debug, Default)]
pub struct Counts {
    /// Datagrams forwarded (both directions).
    pub forwarded: AtomicU64,
    /// Datagrams dropped while cut (both directions).
    pub dropped: AtomicU64,
}

/// One listening address forwarding to one target.
#[derive(Debug)]
pub struct Forwarder {
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// What went through and what was dropped.
    pub counts: Arc<Counts>,
}

impl Forwarder {
    /// Listens on `listen` and forwards to `target`; the `k`-th client gets
    /// the upstream socket bound to `upstream(k)`.
    ///
    /// # Errors
    ///
    /// If the listening socket cannot be bound.
    pub fn start(
        listen: SocketAddr,
        target: SocketAddr,
        upstream: impl Fn(usize) -> SocketAddr + Send + 'static,
    ) -> Result<Forwarder> {
        let sock =
            UdpSocket::bind(listen).with_context(|| format!("proxy cannot bind {listen}"))?;
        sock.set_read_timeout(Some(TICK))?;
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (c, s, n) = (cut.clone(), stop.clone(), counts.clone());
        let main = std::thread::Builder::new()
            .name(format!("proxy {listen}"))
            .spawn(move || listen_loop(sock, target, upstream, c, s, n))?;
        Ok(Forwarder {
            cut,
            stop,
            threads: vec![main],
            counts,
        })
    }

    /// Drops everything (`true`) or forwards again (`false`).
    pub fn cut(&self, on: bool) {
        self.cut.store(on, Ordering::Release);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn listen_loop(
    sock: UdpSocket,
    target: SocketAddr,
    upstream: impl Fn(usize) -> SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let mut clients: HashMap<SocketAddr, UdpSocket> = HashMap::new();
    let mut back: Vec<JoinHandle<()>> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Acquire) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue, // timeout: look at the flag
        };
        if cut.load(Ordering::Acquire) {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !clients.contains_key(&from) {
            if clients.len() >= MAX_CLIENTS {
                continue;
            }
            let Ok(up) = UdpSocket::bind(upstream(clients.len())) else {
                continue;
            };
            let _ = up.set_read_timeout(Some(TICK));
            let (Ok(up2), Ok(reply)) = (up.try_clone(), sock.try_clone()) else {
                continue;
            };
            let (c, s, k) = (cut.clone(), stop.clone(), counts.clone());
            if let Ok(t) = std::thread::Builder::new()
                .name(format!("proxy back {from}"))
                .spawn(move || back_loop(up2, reply, from, c, s, k))
            {
                back.push(t);
            }
            clients.insert(from, up);
        }
        if let Some(up) = clients.get(&from) {
            if up.send_to(&buf[..n], target).is_ok() {
                counts.forwarded.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    for t in back {
        let _ = t.join();
    }
}

fn back_loop(
    up: UdpSocket,
    reply: UdpSocket,
    client: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Acquire) {
        let Ok((n, _)) = up.recv_from(&mut buf) else {
            continue;
        };
        if cut.load(Ordering::Acquire) {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if reply.send_to(&buf[..n], client).is_ok() {
            counts.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn recv(s: &UdpSocket) -> Option<Vec<u8>> {
        let mut b = [0u8; 64];
        s.recv_from(&mut b).ok().map(|(n, _)| b[..n].to_vec())
    }

    #[test]
    fn forwards_both_ways_and_drops_everything_while_cut() {
        let target = UdpSocket::bind("127.0.1.231:0").unwrap();
        target
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let client = UdpSocket::bind("127.0.1.232:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let listen: SocketAddr = "127.0.1.233:47999".parse().unwrap();
        let fwd = Forwarder::start(listen, target.local_addr().unwrap(), |k| {
            SocketAddr::from((crate::plan::host(234 + k as u8), 47999))
        })
        .unwrap();
        client.send_to(b"ping", listen).unwrap();
        let mut b = [0u8; 64];
        let (n, from) = target.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], b"ping");
        assert_eq!(from, "127.0.1.234:47999".parse().unwrap(), "fixed upstream");
        target.send_to(b"pong", from).unwrap();
        assert_eq!(recv(&client).as_deref(), Some(&b"pong"[..]));

        fwd.cut(true);
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        target
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        client.send_to(b"lost", listen).unwrap();
        target.send_to(b"lost", from).unwrap();
        assert_eq!(recv(&target), None);
        assert_eq!(recv(&client), None);
        // Both datagrams were seen and dropped (bounded wait for the counter).
        let until = Instant::now() + Duration::from_secs(2);
        while fwd.counts.dropped.load(Ordering::Relaxed) < 2 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(fwd.counts.dropped.load(Ordering::Relaxed), 2);

        fwd.cut(false);
        target
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.send_to(b"back", listen).unwrap();
        assert_eq!(recv(&target).as_deref(), Some(&b"back"[..]));
        let t0 = Instant::now();
        drop(fwd);
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "threads end promptly"
        );
    }
}
