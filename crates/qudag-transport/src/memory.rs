//! [`MemoryTransport`]: an in-process transport with real semantics and fault injection.
//!
//! Endpoints bound on one [`MemoryNetwork`] reach each other by address. The
//! addresses look like `127.0.0.1:PORT` so that [`PeerAddr`] works unchanged,
//! but no socket is ever opened: the port is a counter of the network.
//!
//! Semantics, modelled on `tokio::io::duplex` and on QUIC:
//! - a connection carries one ordered byte stream per direction, each a
//!   bounded buffer (`pipe_capacity` bytes): a writer that finds it full waits;
//! - closing from either side fails the streams on both sides at once (pending
//!   data is discarded, as QUIC's CONNECTION_CLOSE does), and each side's
//!   [`Connection::close_reason`] says who closed and why;
//! - dropping the last handle of a connection closes it (code 0, "dropped");
//! - dropping a [`MemoryTransport`] closes it, as [`Transport::close`] does;
//! - dropping a stream's writer is a clean end of stream for the reader.
//!
//! Faults ([`MemoryNetwork`] methods): refuse the next N dials to a peer, delay
//! dials to a peer (a `tokio::time::sleep`, so `tokio::time::pause` controls
//! it), drop the live connections between two peers, cut the link between two
//! peers both ways (live connections are lost, dials fail until
//! [`MemoryNetwork::heal`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use qudag_crypto::PeerId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};

use crate::{
    CloseReason, Connection, PeerAddr, RecvStream, SendStream, Side, Transport, TransportError,
};

/// Default capacity of each direction's buffer, in bytes.
const DEFAULT_PIPE_CAPACITY: usize = 256 * 1024;
/// Inbound connections an endpoint queues before refusing more.
const ACCEPT_BACKLOG: usize = 1024;

/// A set of in-process endpoints that can reach each other, with fault injection.
///
/// Cloning gives another handle to the same network.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<NetInner>,
}

#[derive(Default)]
struct NetInner {
    endpoints: Mutex<HashMap<SocketAddr, Arc<Endpoint>>>,
    next_port: AtomicU16,
    next_link: AtomicU64,
    faults: Mutex<Faults>,
    links: Mutex<Vec<Weak<Link>>>,
    pipe_capacity: Option<usize>,
}

#[derive(Default)]
struct Faults {
    refuse_next: HashMap<PeerId, u32>,
    dial_delay: HashMap<PeerId, Duration>,
    cut: HashSet<(PeerId, PeerId)>,
}

fn pair(a: PeerId, b: PeerId) -> (PeerId, PeerId) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryNetwork")
            .field("endpoints", &self.inner.endpoints.lock().len())
            .field("live_connections", &self.live_connections())
            .finish()
    }
}

impl MemoryNetwork {
    /// A new, empty network with the default buffer size (256 KiB per direction).
    pub fn new() -> Self {
        Self::default()
    }

    /// A new network whose connections buffer `bytes` per direction.
    ///
    /// # Panics
    ///
    /// If `bytes` is zero.
    pub fn with_pipe_capacity(bytes: usize) -> Self {
        assert!(bytes > 0, "pipe capacity must be at least one byte");
        Self {
            inner: Arc::new(NetInner {
                pipe_capacity: Some(bytes),
                ..NetInner::default()
            }),
        }
    }

    /// Binds a new endpoint for `peer` at a fresh address.
    pub fn bind(&self, peer: PeerId) -> MemoryTransport {
        let port = self
            .inner
            .next_port
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        self.bind_at(peer, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .expect("fresh port is free")
    }

    /// Binds a new endpoint for `peer` at `addr` (for example to come back on
    /// the address a stopped endpoint had). Fails if the address is taken.
    pub fn bind_at(
        &self,
        peer: PeerId,
        addr: SocketAddr,
    ) -> Result<MemoryTransport, TransportError> {
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        let ep = Arc::new(Endpoint {
            peer,
            addr,
            incoming: tx,
            allow: Mutex::new(None),
            closed: AtomicBool::new(false),
            closed_tx: watch::channel(false).0,
            links: Mutex::new(Vec::new()),
            incarnation: AtomicU64::new(0),
        });
        let mut eps = self.inner.endpoints.lock();
        if eps.contains_key(&addr) {
            return Err(TransportError::Setup(format!("address {addr} is in use")));
        }
        eps.insert(addr, ep.clone());
        Ok(MemoryTransport {
            net: self.clone(),
            ep,
            incoming: tokio::sync::Mutex::new(rx),
        })
    }

    /// The next `n` dials to `peer` are refused with [`TransportError::Refused`].
    pub fn refuse_next_dials(&self, peer: PeerId, n: u32) {
        self.inner.faults.lock().refuse_next.insert(peer, n);
    }

    /// Dials to `peer` wait `delay` before completing (`None` removes the delay).
    pub fn set_dial_delay(&self, peer: PeerId, delay: Option<Duration>) {
        let mut f = self.inner.faults.lock();
        match delay {
            Some(d) => f.dial_delay.insert(peer, d),
            None => f.dial_delay.remove(&peer),
        };
    }

    /// Drops every live connection between `a` and `b`: both sides see
    /// [`CloseReason::Lost`]. Returns how many were dropped.
    pub fn drop_connections(&self, a: PeerId, b: PeerId) -> usize {
        self.lose_links(a, b, "connection dropped by fault injection")
    }

    /// Cuts the link between `a` and `b` both ways: live connections are lost
    /// and dials between them fail with [`TransportError::Unreachable`] until
    /// [`heal`](MemoryNetwork::heal).
    pub fn cut(&self, a: PeerId, b: PeerId) {
        self.inner.faults.lock().cut.insert(pair(a, b));
        self.lose_links(a, b, "link cut");
    }

    /// Heals a link cut with [`cut`](MemoryNetwork::cut).
    pub fn heal(&self, a: PeerId, b: PeerId) {
        self.inner.faults.lock().cut.remove(&pair(a, b));
    }

    /// Number of connections currently open on this network.
    pub fn live_connections(&self) -> usize {
        let mut links = self.inner.links.lock();
        links.retain(|w| w.upgrade().is_some_and(|l| l.is_open()));
        links.len()
    }

    fn lose_links(&self, a: PeerId, b: PeerId, why: &str) -> usize {
        let key = pair(a, b);
        let links: Vec<Arc<Link>> = self
            .inner
            .links
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|l| pair(l.dialer, l.listener) == key)
            .collect();
        links
            .iter()
            .filter(|l| l.end(Ending::Lost(why.to_owned())))
            .count()
    }

    fn pipe_capacity(&self) -> usize {
        self.inner.pipe_capacity.unwrap_or(DEFAULT_PIPE_CAPACITY)
    }
}

struct Endpoint {
    peer: PeerId,
    addr: SocketAddr,
    incoming: mpsc::Sender<MemoryConnection>,
    allow: Mutex<Option<HashSet<PeerId>>>,
    closed: AtomicBool,
    closed_tx: watch::Sender<bool>,
    links: Mutex<Vec<Weak<Link>>>,
    /// Told to dialers up front ([`Transport::set_incarnation`]); 0: none.
    incarnation: AtomicU64,
}

/// Remembers `link` in a list of weak links, first dropping the ones that
/// ended whenever the list would grow: a long-lived endpoint with many
/// short connections keeps O(live connections), not one entry per
/// connection ever made.
fn track(links: &mut Vec<Weak<Link>>, link: &Arc<Link>) {
    if links.len() == links.capacity() {
        links.retain(|w| w.strong_count() > 0);
    }
    links.push(Arc::downgrade(link));
}

/// One endpoint of a [`MemoryNetwork`]; its semantics are described there and in the crate docs.
pub struct MemoryTransport {
    net: MemoryNetwork,
    ep: Arc<Endpoint>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<MemoryConnection>>,
}

impl Drop for MemoryTransport {
    /// Closes the endpoint, as [`Transport::close`] does (like dropping a
    /// `QuicTransport`): its address is free again and its connections end.
    fn drop(&mut self) {
        Transport::close(self);
    }
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("peer", &self.ep.peer)
            .field("addr", &self.ep.addr)
            .finish()
    }
}

impl MemoryTransport {
    /// Restricts inbound connections to these peers (`None` admits everyone).
    /// A refused dialer sees [`TransportError::Refused`].
    pub fn set_allow_list(&self, peers: Option<impl IntoIterator<Item = PeerId>>) {
        *self.ep.allow.lock() = peers.map(|p| p.into_iter().collect());
    }

    /// The network this endpoint is bound on.
    pub fn network(&self) -> &MemoryNetwork {
        &self.net
    }

    fn check_closed(&self) -> Result<(), TransportError> {
        if self.ep.closed.load(Ordering::Acquire) {
            Err(TransportError::EndpointClosed)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn local_peer(&self) -> PeerId {
        self.ep.peer
    }

    fn local_addr(&self) -> SocketAddr {
        self.ep.addr
    }

    async fn dial(&self, to: &PeerAddr) -> Result<Arc<dyn Connection>, TransportError> {
        self.check_closed()?;
        let unreachable = |detail: &str| TransportError::Unreachable {
            peer: to.peer,
            addr: to.addr,
            detail: detail.to_owned(),
        };
        let delay = {
            let mut f = self.net.inner.faults.lock();
            if f.cut.contains(&pair(self.ep.peer, to.peer)) {
                return Err(unreachable("link cut"));
            }
            if let Some(n) = f.refuse_next.get_mut(&to.peer) {
                if *n > 0 {
                    *n -= 1;
                    return Err(TransportError::Refused {
                        peer: to.peer,
                        detail: "refused by fault injection".into(),
                    });
                }
            }
            f.dial_delay.get(&to.peer).copied()
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
            self.check_closed()?;
            if self
                .net
                .inner
                .faults
                .lock()
                .cut
                .contains(&pair(self.ep.peer, to.peer))
            {
                return Err(unreachable("link cut"));
            }
        }
        let target = self
            .net
            .inner
            .endpoints
            .lock()
            .get(&to.addr)
            .cloned()
            .ok_or_else(|| unreachable("no endpoint at this address"))?;
        if target.closed.load(Ordering::Acquire) {
            return Err(unreachable("no endpoint at this address"));
        }
        // The remote proves its identity before the dialer proves its own (as in TLS 1.3).
        if !target.peer.ct_eq(&to.peer) {
            return Err(TransportError::PeerIdMismatch {
                expected: to.peer,
                actual: target.peer,
            });
        }
        if let Some(allow) = &*target.allow.lock() {
            if !allow.contains(&self.ep.peer) {
                return Err(TransportError::Denied { peer: to.peer });
            }
        }
        let link = Link::new(&self.net, &self.ep, &target);
        let remote = MemoryConnection {
            link: link.clone(),
            side: Side::Listener,
        };
        if target.incoming.try_send(remote).is_err() {
            return Err(TransportError::Refused {
                peer: to.peer,
                detail: "accept backlog full".into(),
            });
        }
        for links in [&self.ep.links, &target.links, &self.net.inner.links] {
            track(&mut links.lock(), &link);
        }
        Ok(Arc::new(MemoryConnection {
            link,
            side: Side::Dialer,
        }))
    }

    async fn accept(&self) -> Result<Arc<dyn Connection>, TransportError> {
        let mut rx = self.incoming.lock().await;
        let mut closed = self.ep.closed_tx.subscribe();
        loop {
            self.check_closed()?;
            tokio::select! {
                conn = rx.recv() => match conn {
                    Some(c) if c.link.is_open() => return Ok(Arc::new(c)),
                    Some(_) => continue, // dialer gave up before we accepted
                    None => return Err(TransportError::EndpointClosed),
                },
                _ = closed.wait_for(|c| *c) => return Err(TransportError::EndpointClosed),
            }
        }
    }

    fn set_incarnation(&self, incarnation: u64) {
        self.ep.incarnation.store(incarnation, Ordering::Release);
    }

    fn close(&self) {
        if self.ep.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.net.inner.endpoints.lock().remove(&self.ep.addr);
        let links: Vec<_> = self
            .ep
            .links
            .lock()
            .drain(..)
            .filter_map(|w| w.upgrade())
            .collect();
        for link in links {
            let by = if link.dialer == self.ep.peer && link.dialer_addr == self.ep.addr {
                Side::Dialer
            } else {
                Side::Listener
            };
            link.end(Ending::Closed {
                by,
                code: 0,
                reason: Bytes::from_static(b"endpoint closed"),
                endpoint: true,
            });
        }
        self.ep.closed_tx.send_replace(true);
    }
}

// ---------------------------------------------------------------------------
// Connections

enum Ending {
    Closed {
        by: Side,
        code: u32,
        reason: Bytes,
        endpoint: bool,
    },
    Lost(String),
}

struct Link {
    id: u64,
    dialer: PeerId,
    listener: PeerId,
    dialer_addr: SocketAddr,
    listener_addr: SocketAddr,
    /// The listener's incarnation when it was dialed (0: none).
    listener_incarnation: u64,
    secret: [u8; 32],
    to_listener: Arc<Pipe>,
    to_dialer: Arc<Pipe>,
    state: Mutex<LinkState>,
    closed_tx: watch::Sender<bool>,
}

#[derive(Default)]
struct LinkState {
    ending: Option<Ending>,
    stream_taken: [bool; 2],
}

impl Link {
    fn new(net: &MemoryNetwork, dialer: &Endpoint, listener: &Endpoint) -> Arc<Self> {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .expect("system randomness is available");
        let cap = net.pipe_capacity();
        Arc::new(Link {
            id: net.inner.next_link.fetch_add(1, Ordering::Relaxed),
            dialer: dialer.peer,
            listener: listener.peer,
            dialer_addr: dialer.addr,
            listener_addr: listener.addr,
            listener_incarnation: listener.incarnation.load(Ordering::Acquire),
            secret,
            to_listener: Arc::new(Pipe::new(cap)),
            to_dialer: Arc::new(Pipe::new(cap)),
            state: Mutex::new(LinkState::default()),
            closed_tx: watch::channel(false).0,
        })
    }

    fn is_open(&self) -> bool {
        self.state.lock().ending.is_none()
    }

    /// Ends the link; false if it had already ended.
    fn end(&self, ending: Ending) -> bool {
        let msg = {
            let mut st = self.state.lock();
            if st.ending.is_some() {
                return false;
            }
            let msg = match &ending {
                Ending::Closed { code, reason, .. } => {
                    format!(
                        "connection closed (code {code}: {})",
                        String::from_utf8_lossy(reason)
                    )
                }
                Ending::Lost(why) => format!("connection lost: {why}"),
            };
            st.ending = Some(ending);
            msg
        };
        self.to_listener.fail(&msg);
        self.to_dialer.fail(&msg);
        self.closed_tx.send_replace(true);
        true
    }

    fn reason_for(&self, side: Side) -> Option<CloseReason> {
        let st = self.state.lock();
        Some(match st.ending.as_ref()? {
            Ending::Closed {
                by, endpoint: true, ..
            } if *by == side => CloseReason::EndpointClosed,
            Ending::Closed {
                by, code, reason, ..
            } if *by == side => CloseReason::Local {
                code: *code,
                reason: reason.clone(),
            },
            Ending::Closed { code, reason, .. } => CloseReason::Remote {
                code: *code,
                reason: reason.clone(),
            },
            Ending::Lost(why) => CloseReason::Lost(why.clone()),
        })
    }
}

/// One end of an in-memory connection.
pub struct MemoryConnection {
    link: Arc<Link>,
    side: Side,
}

impl fmt::Debug for MemoryConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConnection")
            .field("id", &self.link.id)
            .field("side", &self.side)
            .field("peer", &self.peer())
            .field("open", &self.link.is_open())
            .finish()
    }
}

impl MemoryConnection {
    /// A number unique to this connection within its network (both ends share it).
    pub fn id(&self) -> u64 {
        self.link.id
    }
}

impl Drop for MemoryConnection {
    fn drop(&mut self) {
        self.link.end(Ending::Closed {
            by: self.side,
            code: 0,
            reason: Bytes::from_static(b"dropped"),
            endpoint: false,
        });
    }
}

#[async_trait]
impl Connection for MemoryConnection {
    fn peer(&self) -> PeerId {
        match self.side {
            Side::Dialer => self.link.listener,
            Side::Listener => self.link.dialer,
        }
    }

    fn peer_incarnation(&self) -> Option<u64> {
        match self.side {
            Side::Dialer => Some(self.link.listener_incarnation).filter(|&i| i != 0),
            Side::Listener => None,
        }
    }

    /// Refusals happen in `dial` here: a connection that exists was accepted.
    async fn accepted(&self) -> Result<(), TransportError> {
        Ok(())
    }

    fn remote_addr(&self) -> SocketAddr {
        match self.side {
            Side::Dialer => self.link.listener_addr,
            Side::Listener => self.link.dialer_addr,
        }
    }

    fn side(&self) -> Side {
        self.side
    }

    async fn open_stream(&self) -> Result<(SendStream, RecvStream), TransportError> {
        if let Some(reason) = self.close_reason() {
            return Err(TransportError::Closed {
                peer: self.peer(),
                reason,
            });
        }
        let idx = usize::from(self.side == Side::Listener);
        {
            let mut st = self.link.state.lock();
            if st.stream_taken[idx] {
                return Err(TransportError::StreamTaken { peer: self.peer() });
            }
            st.stream_taken[idx] = true;
        }
        let (out, inp) = match self.side {
            Side::Dialer => (&self.link.to_listener, &self.link.to_dialer),
            Side::Listener => (&self.link.to_dialer, &self.link.to_listener),
        };
        Ok((
            Box::new(PipeWriter(out.clone())),
            Box::new(PipeReader(inp.clone())),
        ))
    }

    fn export_keying_material(
        &self,
        out: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), TransportError> {
        use ring::hkdf;
        struct Len(usize);
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"qudag-net memory transport")
            .extract(&self.link.secret);
        let info = [label, &[0u8][..], context];
        prk.expand(&info, Len(out.len()))
            .and_then(|okm| okm.fill(out))
            .map_err(|_| TransportError::Export { peer: self.peer() })
    }

    fn rtt(&self) -> Option<Duration> {
        None
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.link.end(Ending::Closed {
            by: self.side,
            code,
            reason: Bytes::copy_from_slice(reason),
            endpoint: false,
        });
    }

    fn close_reason(&self) -> Option<CloseReason> {
        self.link.reason_for(self.side)
    }

    async fn closed(&self) -> CloseReason {
        let mut rx = self.link.closed_tx.subscribe();
        // The sender lives in the link, which `self` keeps alive.
        let _ = rx.wait_for(|closed| *closed).await;
        self.link
            .reason_for(self.side)
            .unwrap_or_else(|| CloseReason::Lost("closed".into()))
    }
}

// ---------------------------------------------------------------------------
// Pipes: bounded, ordered, one direction.

struct Pipe {
    cap: usize,
    state: Mutex<PipeState>,
}

#[derive(Default)]
struct PipeState {
    buf: BytesMut,
    /// The connection ended: reads and writes fail with this message.
    failed: Option<String>,
    /// The writer shut down or was dropped: the reader sees end of stream after the buffer.
    write_done: bool,
    /// The reader was dropped: writes fail.
    read_gone: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

fn store(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl Pipe {
    fn new(cap: usize) -> Self {
        Pipe {
            cap,
            state: Mutex::new(PipeState::default()),
        }
    }

    fn fail(&self, msg: &str) {
        let (r, w) = {
            let mut st = self.state.lock();
            if st.failed.is_none() {
                st.failed = Some(msg.to_owned());
            }
            st.buf.clear();
            (st.read_waker.take(), st.write_waker.take())
        };
        r.into_iter().chain(w).for_each(Waker::wake);
    }
}

struct PipeWriter(Arc<Pipe>);
struct PipeReader(Arc<Pipe>);

fn closed_err(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, msg.to_owned())
}

impl AsyncWrite for PipeWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let pipe = &self.0;
        let mut st = pipe.state.lock();
        if let Some(msg) = &st.failed {
            return Poll::Ready(Err(closed_err(msg)));
        }
        if st.read_gone {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the peer stopped reading this stream",
            )));
        }
        if st.write_done {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = pipe.cap - st.buf.len();
        if room == 0 {
            store(&mut st.write_waker, cx);
            return Poll::Pending;
        }
        let n = room.min(data.len());
        st.buf.extend_from_slice(&data[..n]);
        let waker = st.read_waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.0.state.lock().failed {
            Some(msg) => Poll::Ready(Err(closed_err(msg))),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.finish();
        Poll::Ready(Ok(()))
    }
}

impl Pipe {
    fn finish(&self) {
        let waker = {
            let mut st = self.state.lock();
            st.write_done = true;
            st.read_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        self.0.finish();
    }
}

impl AsyncRead for PipeReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.0.state.lock();
        if let Some(msg) = &st.failed {
            return Poll::Ready(Err(closed_err(msg)));
        }
        if st.buf.is_empty() {
            if !st.write_done {
                store(&mut st.read_waker, cx);
                return Poll::Pending;
            }
            return Poll::Ready(Ok(())); // end of stream
        }
        let n = out.remaining().min(st.buf.len());
        out.put_slice(&st.buf[..n]);
        st.buf.advance(n);
        let waker = st.write_waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.0.state.lock();
            st.read_gone = true;
            st.write_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}
