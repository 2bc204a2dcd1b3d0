//! A user-space UDP delay proxy on 127.0.0.1, for scenarios that need a
//! link with a round-trip time (the time-to-first-message scenario in
//! `benches/benches/e2e.rs` runs over 10 ms each way).
//!
//! It follows the impairment proxy of the qudag-net tests
//! (`crates/qudag-net/tests/support/proxy.rs`: one front socket, one
//! upstream socket per client address, so the server sees one source per
//! client), but only delays, and is bounded: each direction keeps its
//! datagrams in a [`DelayLine`] of fixed capacity (a full line drops the
//! datagram, as a router's queue would), and one task per direction sends
//! them when their timer fires. There is no task or allocation per datagram
//! beyond the datagram's own bytes.
//!
//! What it does not do: loss, jitter or reordering (the delay is the same
//! for every datagram, so a line is FIFO and stays in order), or any
//! address other than loopback. Dropping the [`DelayProxy`] stops it;
//! [`DelayProxy::close`] also waits until its sockets are closed.
//!
//! Key items: [`DelayProxy`], [`DelayLine`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A bounded FIFO of items that each become due a fixed `delay` after they
/// were pushed. Sans-IO: time comes in as `now`.
///
/// # Examples
///
/// ```
/// use qudag_benches::delay_proxy::DelayLine;
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let mut line = DelayLine::new(Duration::from_millis(10), 2);
/// let t0 = Instant::now();
/// line.push(t0, "a").unwrap();
/// assert_eq!(line.pop_due(t0 + Duration::from_millis(9)), None);
/// assert_eq!(line.poll_timeout(), Some(t0 + Duration::from_millis(10)));
/// assert_eq!(line.pop_due(t0 + Duration::from_millis(10)), Some("a"));
/// ```
#[derive(Debug)]
pub struct DelayLine<T> {
    delay: Duration,
    capacity: usize,
    items: VecDeque<(Instant, T)>,
}

impl<T> DelayLine<T> {
    /// An empty line that delays every item by `delay` and holds at most
    /// `capacity` items.
    ///
    /// # Panics
    ///
    /// If `capacity` is 0.
    pub fn new(delay: Duration, capacity: usize) -> Self {
        assert!(capacity > 0, "a delay line holds at least one item");
        DelayLine {
            delay,
            capacity,
            items: VecDeque::new(),
        }
    }

    /// Queues `item`, due at `now + delay`; gives it back if the line is
    /// full. `now` must not go backwards between calls (the line is FIFO).
    pub fn push(&mut self, now: Instant, item: T) -> Result<(), T> {
        if self.items.len() >= self.capacity {
            return Err(item);
        }
        self.items.push_back((now + self.delay, item));
        Ok(())
    }

    /// The earliest item's deadline, if any item is queued.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.items.front().map(|(at, _)| *at)
    }

    /// The earliest item, if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.items.front() {
            Some((at, _)) if *at <= now => self.items.pop_front().map(|(_, item)| item),
            _ => None,
        }
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Datagram counters of a proxy, both directions together.
#[derive(Debug, Default)]
pub struct DelayStats {
    /// Datagrams received from either side.
    pub received: AtomicU64,
    /// Datagrams sent on after their delay.
    pub forwarded: AtomicU64,
    /// Datagrams dropped: the line was full, or the socket could not take
    /// them at once.
    pub dropped: AtomicU64,
}

/// A running delay proxy in front of one server address on 127.0.0.1.
pub struct DelayProxy {
    addr: SocketAddr,
    stats: Arc<DelayStats>,
    tasks: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>>,
}

impl fmt::Debug for DelayProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelayProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Datagrams a line holds; beyond that a direction drops. 4096 datagrams of
/// up to ~1,500 B on loopback QUIC: a few MiB at most per direction.
const LINE_CAPACITY: usize = 4096;

impl DelayProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) that forwards to `server`
    /// and back, delaying every datagram by `one_way` in each direction (the
    /// RTT it adds is twice that). Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `server` is not a loopback address; otherwise the
    /// error of binding the front socket.
    pub async fn start(server: SocketAddr, one_way: Duration) -> io::Result<DelayProxy> {
        if !server.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the delay proxy forwards to loopback addresses only",
            ));
        }
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let stats = Arc::new(DelayStats::default());
        let tasks = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let main = tokio::spawn(front_loop(
            front,
            server,
            one_way,
            stats.clone(),
            tasks.clone(),
        ));
        tasks.lock().push(main);
        Ok(DelayProxy { addr, stats, tasks })
    }

    /// The address clients send to instead of the server's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters.
    pub fn stats(&self) -> &DelayStats {
        &self.stats
    }

    /// Stops the proxy and waits until its tasks (and so its sockets) are
    /// gone.
    pub async fn close(self) {
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

/// Client -> server: datagrams arriving on the front socket go out, after
/// the delay, through the client's own upstream socket.
async fn front_loop(
    front: Arc<UdpSocket>,
    server: SocketAddr,
    one_way: Duration,
    stats: Arc<DelayStats>,
    tasks: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>>,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut line: DelayLine<(Arc<UdpSocket>, Vec<u8>)> = DelayLine::new(one_way, LINE_CAPACITY);
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            r = front.recv_from(&mut buf) => {
                let Ok((n, client)) = r else { continue };
                stats.received.fetch_add(1, Ordering::Relaxed);
                let up = match upstreams.get(&client) {
                    Some(u) => u.clone(),
                    None => {
                        let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        let u = Arc::new(u);
                        upstreams.insert(client, u.clone());
                        let back = tokio::spawn(back_loop(
                            u.clone(),
                            front.clone(),
                            client,
                            one_way,
                            stats.clone(),
                        ));
                        tasks.lock().push(back);
                        u
                    }
                };
                if line.push(Instant::now(), (up, buf[..n].to_vec())).is_err() {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            () = due(line.poll_timeout()) => {
                while let Some((up, data)) = line.pop_due(Instant::now()) {
                    send(&up, &data, server, &stats);
                }
            }
        }
    }
}

/// Server -> client: whatever arrives on a client's upstream socket goes
/// back to that client through the front socket, after the delay.
async fn back_loop(
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    one_way: Duration,
    stats: Arc<DelayStats>,
) {
    let mut line: DelayLine<Vec<u8>> = DelayLine::new(one_way, LINE_CAPACITY);
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            r = up.recv_from(&mut buf) => {
                let Ok((n, _)) = r else { continue };
                stats.received.fetch_add(1, Ordering::Relaxed);
                if line.push(Instant::now(), buf[..n].to_vec()).is_err() {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            () = due(line.poll_timeout()) => {
                while let Some(data) = line.pop_due(Instant::now()) {
                    send(&front, &data, client, &stats);
                }
            }
        }
    }
}

/// Resolves at `at`, or never if there is nothing queued.
async fn due(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// UDP: a datagram the socket cannot take at once is lost, which QUIC handles.
fn send(socket: &UdpSocket, data: &[u8], to: SocketAddr, stats: &DelayStats) {
    match socket.try_send_to(data, to) {
        Ok(_) => stats.forwarded.fetch_add(1, Ordering::Relaxed),
        Err(_) => stats.dropped.fetch_add(1, Ordering::Relaxed),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn items_come_out_in_order_once_due() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(ms(10), 8);
        line.push(t0, 1).unwrap();
        line.push(t0 + ms(3), 2).unwrap();
        assert_eq!(line.poll_timeout(), Some(t0 + ms(10)));
        assert_eq!(line.pop_due(t0 + ms(9)), None);
        assert_eq!(line.pop_due(t0 + ms(10)), Some(1));
        assert_eq!(line.pop_due(t0 + ms(10)), None);
        assert_eq!(line.poll_timeout(), Some(t0 + ms(13)));
        assert_eq!(line.pop_due(t0 + ms(20)), Some(2));
        assert!(line.is_empty());
        assert_eq!(line.poll_timeout(), None);
    }

    #[test]
    fn a_full_line_gives_the_item_back() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(ms(1), 2);
        assert_eq!(line.push(t0, 'a'), Ok(()));
        assert_eq!(line.push(t0, 'b'), Ok(()));
        assert_eq!(line.push(t0, 'c'), Err('c'));
        assert_eq!(line.len(), 2);
        assert_eq!(line.pop_due(t0 + ms(1)), Some('a'));
        assert_eq!(line.push(t0 + ms(1), 'c'), Ok(()));
    }

    #[test]
    fn zero_delay_is_due_at_once() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(Duration::ZERO, 1);
        line.push(t0, ()).unwrap();
        assert_eq!(line.pop_due(t0), Some(()));
    }
}
