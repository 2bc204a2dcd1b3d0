//! A UDP impairment proxy for loopback tests: it sits between QUIC
//! endpoints and drops, delays (with jitter), duplicates and reorders
//! datagrams at configured rates, and can cut and heal the path.
//!
//! The dialer dials the proxy's address with the server's `PeerId` (QUIC
//! authenticates the peer, not the address). The proxy keeps one upstream
//! socket per client address, so the server sees one distinct source per
//! client. Randomness comes from a seeded xorshift generator, so a scenario's
//! impairment pattern is reproducible. Only loopback addresses are used.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Impairment rates, changeable at run time through [`Proxy::set`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Impairment {
    /// Fraction of datagrams dropped, 0.0..=1.0.
    pub(crate) loss: f64,
    /// Fixed delay added to every datagram.
    pub(crate) delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per datagram.
    pub(crate) jitter: Duration,
    /// Fraction of datagrams sent twice.
    pub(crate) duplicate: f64,
    /// Fraction of datagrams held back (by `reorder_hold`) so later ones overtake them.
    pub(crate) reorder: f64,
    /// How long a reordered datagram is held back.
    pub(crate) reorder_hold: Duration,
}

/// A seeded xorshift64* generator: reproducible, good enough for test impairments.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0 is replaced by a fixed odd constant).
    pub(crate) fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0.0..1.0`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Datagram counters of a proxy, both directions together.
#[derive(Debug, Default)]
pub(crate) struct ProxyStats {
    /// Datagrams received from either side.
    pub(crate) received: AtomicU64,
    /// Datagrams forwarded (duplicates count twice).
    pub(crate) forwarded: AtomicU64,
    /// Datagrams dropped by loss or by a cut.
    pub(crate) dropped: AtomicU64,
}

struct Ctl {
    impairment: Mutex<Impairment>,
    rng: Mutex<XorShift>,
    cut: AtomicBool,
    stats: ProxyStats,
}

/// What to do with one datagram.
struct Plan {
    copies: usize,
    delay: Duration,
}

impl Ctl {
    fn plan(&self) -> Option<Plan> {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        if self.cut.load(Ordering::Acquire) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let imp = *self.impairment.lock();
        let mut rng = self.rng.lock();
        if rng.unit() < imp.loss {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut delay = imp.delay + imp.jitter.mul_f64(rng.unit());
        if rng.unit() < imp.reorder {
            delay += imp.reorder_hold;
        }
        let copies = if rng.unit() < imp.duplicate { 2 } else { 1 };
        Some(Plan { copies, delay })
    }
}

/// Sends `data` to `to` through `socket` as `plan` says: at once, or from a
/// task that sleeps for the datagram's delay.
fn forward(ctl: &Arc<Ctl>, socket: &Arc<UdpSocket>, data: &[u8], to: SocketAddr) {
    let Some(plan) = ctl.plan() else { return };
    ctl.stats
        .forwarded
        .fetch_add(plan.copies as u64, Ordering::Relaxed);
    if plan.delay.is_zero() {
        for _ in 0..plan.copies {
            // UDP: a failed send is a lost datagram, which QUIC handles.
            let _ = socket.try_send_to(data, to);
        }
        return;
    }
    let socket = socket.clone();
    let data = data.to_vec();
    tokio::spawn(async move {
        // The datagram's own delay: this is the impairment, not synchronisation.
        tokio::time::sleep(plan.delay).await;
        for _ in 0..plan.copies {
            let _ = socket.send_to(&data, to).await;
        }
    });
}

/// A running impairment proxy in front of one server address.
pub(crate) struct Proxy {
    addr: SocketAddr,
    ctl: Arc<Ctl>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `server` (a loopback address).
    pub(crate) async fn start(server: SocketAddr, impairment: Impairment, seed: u64) -> Proxy {
        assert!(
            server.ip().is_loopback(),
            "the proxy is for loopback tests only"
        );
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind proxy"));
        let addr = front.local_addr().expect("proxy addr");
        let ctl = Arc::new(Ctl {
            impairment: Mutex::new(impairment),
            rng: Mutex::new(XorShift::new(seed)),
            cut: AtomicBool::new(false),
            stats: ProxyStats::default(),
        });
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let main = tokio::spawn(front_loop(front, server, ctl.clone(), tasks.clone()));
        tasks.lock().push(main);
        Proxy { addr, ctl, tasks }
    }

    /// The address clients dial instead of the server's.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the impairment rates (applies to datagrams from now on).
    pub(crate) fn set(&self, impairment: Impairment) {
        *self.ctl.impairment.lock() = impairment;
    }

    /// Drops every datagram in both directions until [`heal`](Proxy::heal).
    pub(crate) fn cut(&self) {
        self.ctl.cut.store(true, Ordering::Release);
    }

    /// Lets datagrams through again.
    pub(crate) fn heal(&self) {
        self.ctl.cut.store(false, Ordering::Release);
    }

    /// The counters.
    pub(crate) fn stats(&self) -> &ProxyStats {
        &self.ctl.stats
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

async fn front_loop(
    front: Arc<UdpSocket>,
    server: SocketAddr,
    ctl: Arc<Ctl>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            continue;
        };
        let up = match upstreams.get(&client) {
            Some(u) => u.clone(),
            None => {
                let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let u = Arc::new(u);
                upstreams.insert(client, u.clone());
                let back = tokio::spawn(back_loop(u.clone(), front.clone(), client, ctl.clone()));
                tasks.lock().push(back);
                u
            }
        };
        forward(&ctl, &up, &buf[..n], server);
    }
}

/// Server -> client: whatever arrives on a client's upstream socket goes back
/// to that client through the front socket.
async fn back_loop(up: Arc<UdpSocket>, front: Arc<UdpSocket>, client: SocketAddr, ctl: Arc<Ctl>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, _)) = up.recv_from(&mut buf).await else {
            continue;
        };
        forward(&ctl, &front, &buf[..n], client);
    }
}
