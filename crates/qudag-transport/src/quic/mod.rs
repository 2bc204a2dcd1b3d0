//! [`QuicTransport`]: QUIC over quinn, with mutual TLS 1.3 bound to the peers' identity keys.
//!
//! Each endpoint presents a self-signed certificate made from its Ed25519
//! identity key and requires one from its peer. Custom rustls verifiers check
//! the TLS 1.3 handshake signature, derive the peer's [`PeerId`] from its key,
//! and refuse a listener whose `PeerId` is not the one dialed
//! ([`TransportError::PeerIdMismatch`]) or, with an allow-list, a dialer not on
//! it ([`TransportError::Denied`] on the dialer; the listener's `accept`
//! never sees the refused attempt). ALPN is [`ALPN`] (`qudag/3`). Only TLS
//! 1.3, no session resumption, no client 0-RTT: every connection runs a full
//! handshake, so its exported keys are fresh. The listener does send
//! 0.5-RTT data: its hello (below).
//!
//! # Wire protocol
//!
//! - **Hello.** As soon as the listener has the dialer's ClientHello, it
//!   opens one unidirectional stream and writes its incarnation
//!   ([`Transport::set_incarnation`]; [`HELLO_LEN`] bytes, big-endian, 0 for
//!   none) as 0.5-RTT data, which leaves with its handshake flight. The
//!   dialer's [`dial`](Transport::dial) reads it once its own handshake
//!   completes (no extra round trip) and returns it as
//!   [`Connection::peer_incarnation`], so that the caller may write before
//!   the listener's first reply (`docs/PROTOCOL.md` §6, §10).
//! - **Acceptance.** When the listener's side of the handshake completes (it
//!   verified the dialer's certificate and allow-list), it writes the byte
//!   [`ACCEPT_BYTE`] (`0x41`) on the same stream, after the hello, and
//!   finishes it. A QUIC client finishes its handshake before the server has
//!   checked the client's certificate, so the dialer's
//!   [`dial`](Transport::dial) returns at that point (its first bytes can
//!   leave at once, queued behind its handshake), and
//!   [`Connection::accepted`] reads the byte: it returns the refusal
//!   ([`TransportError::Denied`] for the allow-list) that `dial` used to
//!   return, under the same handshake deadline.
//! - **Batch stream.** The dialer's [`open_stream`](Connection::open_stream)
//!   opens the connection's one bidirectional stream and writes the byte
//!   [`STREAM_PREAMBLE`] (`0x51`), which makes the stream visible to the
//!   listener; the listener's `open_stream` accepts it and checks the byte.
//!   After that both directions carry the caller's bytes, in order.
//! - **Limits.** A listener admits one bidirectional stream and no
//!   unidirectional ones; a dialer admits one unidirectional stream (the
//!   acceptance) and no bidirectional ones. quinn preallocates state per
//!   admitted stream, so these stay tiny.
//! - **Close.** [`Connection::close`] sends a QUIC `CONNECTION_CLOSE` with the
//!   application code and reason (the codes belong to the caller).
//!   [`Transport::close`] closes every connection with code 0 and reason
//!   `endpoint closed`; dropping the last handle of a connection closes it
//!   with code 0 and reason `dropped`.
//!
//! # Handshake limits
//!
//! A background task owns the endpoint's accept loop. Each inbound attempt
//! takes a slot out of [`QuicConfig::max_handshakes`] or is turned away
//! statelessly, before any TLS work:
//!
//! - once [`QuicConfig::retry_above`] handshakes are in progress, an attempt
//!   whose source address is not validated gets a QUIC Retry: the dialer
//!   proves it receives at its address by echoing the token (one extra round
//!   trip). Replayed or spoofed Initials never do, so they hold at most
//!   `retry_above` slots and the rest stays for real dialers;
//! - one source IP holds at most [`QuicConfig::max_handshakes_per_ip`]
//!   slots (beyond it: a Retry if unvalidated, else refused);
//! - with no slot free, a validated attempt is refused (`CONNECTION_REFUSED`,
//!   nothing queued).
//!
//! The handshake then runs in its own task under
//! [`QuicConfig::handshake_timeout`], and the completed connection waits in
//! a bounded backlog for [`accept`](Transport::accept). A failed or
//! timed-out inbound handshake is logged (`tracing`, debug) and not returned
//! from `accept`.
//!
//! # Examples
//!
//! ```
//! use qudag_crypto::Identity;
//! use qudag_transport::{PeerAddr, QuicConfig, QuicTransport, Transport};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (alice_id, bob_id) = (Identity::generate()?, Identity::generate()?);
//! let loopback = "127.0.0.1:0".parse()?;
//! let alice = QuicTransport::bind(loopback, &alice_id, QuicConfig::default())?;
//! let bob = QuicTransport::bind(loopback, &bob_id, QuicConfig::default())?;
//!
//! let to_bob = PeerAddr::new(bob_id.peer_id(), bob.local_addr());
//! let (dialed, accepted) = tokio::join!(alice.dial(&to_bob), bob.accept());
//! let (dialed, accepted) = (dialed?, accepted?);
//! assert_eq!(accepted.peer(), alice_id.peer_id());
//!
//! let (mut tx, _rx) = dialed.open_stream().await?;
//! tx.write_all(b"hello").await?;
//! let (_tx, mut rx) = accepted.open_stream().await?;
//! let mut buf = [0u8; 5];
//! rx.read_exact(&mut buf).await?;
//! assert_eq!(&buf, b"hello");
//!
//! let mut key = [0u8; 32];
//! dialed.export_keying_material(&mut key, b"qudag example", b"")?;
//! alice.close();
//! bob.close();
//! # Ok(())
//! # }
//! ```

mod config;
mod tls;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use qudag_crypto::{Identity, PeerId};
use quinn::{ConnectionError, TransportErrorCode, VarInt};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

pub use config::{QuicConfig, QuicConfigError, MAX_COUNT};
pub use tls::{peer_id_from_certificate, CertError, MAX_CERT_LEN};

use crate::text::{escaped, PeerText};
use crate::{
    CloseReason, Connection, PeerAddr, RecvStream, SendStream, Side, Transport, TransportError,
};
use tls::{AllowList, DialVerifier, ListenVerifier, LocalCert, MismatchSlot};

/// The ALPN protocol id: the protocol name and its version.
pub const ALPN: &[u8] = b"qudag/3";
/// The length of the listener's hello: its incarnation, 8 bytes big-endian,
/// first on the acceptance stream.
pub const HELLO_LEN: usize = 8;
/// The byte the listener sends on its acceptance stream after the hello.
pub const ACCEPT_BYTE: u8 = 0x41;
/// The byte the dialer writes first on the batch stream.
pub const STREAM_PREAMBLE: u8 = 0x51;
/// The server name a dialer puts in its TLS ClientHello. Never checked; the identity is the key.
const SERVER_NAME: &str = "qudag";
/// TLS alert `access_denied` (RFC 8446 §6.2), sent by a listener whose allow-list refuses the dialer.
const ALERT_ACCESS_DENIED: u8 = 49;
/// TLS alert `no_application_protocol` (RFC 7301 §3.2): the peers share no ALPN
/// protocol, that is no protocol version.
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

/// A QUIC endpoint that dials and accepts authenticated connections.
///
/// See the [module docs](self) for the protocol and the limits.
/// Dropping it closes it, as [`Transport::close`] does.
pub struct QuicTransport {
    endpoint: quinn::Endpoint,
    local: Arc<LocalCert>,
    local_addr: SocketAddr,
    config: QuicConfig,
    client_transport: Arc<quinn::TransportConfig>,
    /// See [`client_tls`].
    client_tls: rustls::ClientConfig,
    allow: AllowList,
    incoming: tokio::sync::Mutex<mpsc::Receiver<QuicConnection>>,
    shared: Arc<EndpointShared>,
    admission: Arc<Admission>,
    accept_task: JoinHandle<()>,
}

/// State an endpoint shares with its connections.
#[derive(Debug)]
struct EndpointShared {
    closed: AtomicBool,
    closed_tx: watch::Sender<bool>,
    /// The hello: told to every dialer ([`Transport::set_incarnation`]); 0: none.
    incarnation: AtomicU64,
}

impl fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicTransport")
            .field("peer", &self.local.peer)
            .field("addr", &self.local_addr)
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn transport_config(
    config: &QuicConfig,
    side: Side,
) -> Result<quinn::TransportConfig, TransportError> {
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| TransportError::Setup("idle timeout out of range".into()))?;
    let (bidi, uni) = match side {
        Side::Listener => (1u32, 0u32),
        Side::Dialer => (0, 1),
    };
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(uni))
        .stream_receive_window(VarInt::from_u32(config.stream_receive_window))
        .receive_window(VarInt::from_u32(config.receive_window))
        .send_window(config.send_window)
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive))
        .datagram_receive_buffer_size(None);
    Ok(t)
}

fn setup<E: fmt::Display>(what: &'static str) -> impl FnOnce(E) -> TransportError {
    move |e| TransportError::Setup(format!("{what}: {e}"))
}

impl QuicTransport {
    /// Binds a UDP socket at `addr` and starts accepting connections as `identity`.
    ///
    /// Binding port 0 picks a free port; [`local_addr`](Transport::local_addr)
    /// tells which. Must be called inside a tokio runtime (it spawns the
    /// accept task); fails with [`TransportError::Setup`] otherwise, or if
    /// `config` is invalid ([`QuicConfig::validate`]).
    pub fn bind(
        addr: SocketAddr,
        identity: &Identity,
        config: QuicConfig,
    ) -> Result<Self, TransportError> {
        let local = LocalCert::new(identity.pkcs8_der()).map_err(TransportError::Setup)?;
        if !local.peer.ct_eq(&identity.peer_id()) {
            return Err(TransportError::Setup(
                "identity key and peer id disagree".into(),
            ));
        }
        Self::bind_cert(addr, local, config)
    }

    /// Like [`bind`](QuicTransport::bind), from an Ed25519 PKCS#8 v1/v2
    /// document; the [`PeerId`] is derived from its public key.
    pub fn bind_pkcs8(
        addr: SocketAddr,
        pkcs8_der: &[u8],
        config: QuicConfig,
    ) -> Result<Self, TransportError> {
        Self::bind_cert(
            addr,
            LocalCert::new(pkcs8_der).map_err(TransportError::Setup)?,
            config,
        )
    }

    fn bind_cert(
        addr: SocketAddr,
        local: LocalCert,
        config: QuicConfig,
    ) -> Result<Self, TransportError> {
        config.validate().map_err(setup("invalid configuration"))?;
        let runtime = tokio::runtime::Handle::try_current().map_err(setup("no tokio runtime"))?;
        let provider = tls::provider();
        let allow: AllowList = Arc::new(RwLock::new(
            config.allow_list.clone().map(|l| l.into_iter().collect()),
        ));

        let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup("tls"))?
            .with_client_cert_verifier(ListenVerifier::new(allow.clone(), &provider))
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                local.certified.clone(),
            )));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.send_tls13_tickets = 0;
        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        tls.max_early_data_size = 0;
        let quic_tls =
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(setup("quic tls"))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
        let client_tls = client_tls(&local)?;
        let client_transport = Arc::new(transport_config(&config, Side::Dialer)?);
        server
            .transport_config(Arc::new(transport_config(&config, Side::Listener)?))
            .max_incoming(config.max_handshakes.saturating_add(16));

        let socket = std::net::UdpSocket::bind(addr)?;
        let endpoint = {
            let _guard = runtime.enter();
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(server),
                socket,
                Arc::new(quinn::TokioRuntime),
            )?
        };
        let local_addr = endpoint.local_addr()?;
        let shared = Arc::new(EndpointShared {
            closed: AtomicBool::new(false),
            closed_tx: watch::channel(false).0,
            incarnation: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(config.accept_backlog);
        let admission = Arc::new(Admission {
            slots: Arc::new(Semaphore::new(config.max_handshakes)),
            per_ip: Mutex::new(HashMap::new()),
            retry_above: config.retry_above,
            max_per_ip: config.max_handshakes_per_ip,
        });
        let accept_task = runtime.spawn(accept_loop(
            endpoint.clone(),
            admission.clone(),
            config.max_handshakes,
            tx,
            config.handshake_timeout,
            shared.clone(),
        ));
        Ok(Self {
            endpoint,
            local: Arc::new(local),
            local_addr,
            client_transport,
            client_tls,
            config,
            allow,
            incoming: tokio::sync::Mutex::new(rx),
            shared,
            admission,
            accept_task,
        })
    }

    /// Replaces the allow-list (`None` admits every peer). Applies to
    /// handshakes that have not yet verified the dialer's certificate.
    pub fn set_allow_list(&self, peers: Option<impl IntoIterator<Item = PeerId>>) {
        *self.allow.write() = peers.map(|p| p.into_iter().collect());
    }

    /// Inbound handshakes holding a slot of
    /// [`max_handshakes`](QuicConfig::max_handshakes) now: in progress, or
    /// done and waiting for [`accept`](Transport::accept).
    pub fn handshakes_in_progress(&self) -> usize {
        self.config.max_handshakes - self.admission.slots.available_permits()
    }

    /// The configuration this endpoint was bound with.
    pub fn config(&self) -> &QuicConfig {
        &self.config
    }

    fn check_closed(&self) -> Result<(), TransportError> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(TransportError::EndpointClosed)
        } else {
            Ok(())
        }
    }

    /// The client config for one dial: the endpoint's template with a
    /// verifier that expects `expected` (cloning the template shares its key
    /// and settings; nothing is parsed or signed per dial).
    fn client_config(
        &self,
        expected: PeerId,
    ) -> Result<(quinn::ClientConfig, MismatchSlot), TransportError> {
        let (verifier, actual) = DialVerifier::new(expected, &tls::provider());
        let mut tls = self.client_tls.clone();
        tls.dangerous().set_certificate_verifier(verifier);
        let quic_tls =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(setup("quic tls"))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic_tls));
        client.transport_config(self.client_transport.clone());
        Ok((client, actual))
    }
}

/// The endpoint's client TLS settings: TLS 1.3 only, ALPN `qudag/3`, the
/// identity certificate, no resumption, SNI or early data. Each dial clones
/// it and sets its own [`DialVerifier`].
fn client_tls(local: &LocalCert) -> Result<rustls::ClientConfig, TransportError> {
    let provider = tls::provider();
    // A placeholder: every dial replaces it with one for the dialed PeerId.
    let (verifier, _) = DialVerifier::new(local.peer, &provider);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup("tls"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            local.certified.clone(),
        )));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_sni = false;
    tls.enable_early_data = false;
    Ok(tls)
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        Transport::close(self);
        self.accept_task.abort();
    }
}

/// Maps a failed dial to the error the caller sees.
fn dial_error(
    to: &PeerAddr,
    actual: &Mutex<Option<PeerId>>,
    shared: &EndpointShared,
    e: ConnectionError,
) -> TransportError {
    if let Some(actual) = *actual.lock() {
        return TransportError::PeerIdMismatch {
            expected: to.peer,
            actual,
        };
    }
    let handshake = |detail: String| TransportError::Handshake {
        peer: Some(to.peer),
        addr: to.addr,
        detail,
    };
    match e {
        ConnectionError::ConnectionClosed(c)
            if c.error_code == TransportErrorCode::CONNECTION_REFUSED =>
        {
            TransportError::Refused {
                peer: to.peer,
                detail: "the peer refused the connection (handshake limit or shutting down)".into(),
            }
        }
        ConnectionError::ConnectionClosed(_) if is_access_denied(&e) => {
            TransportError::Denied { peer: to.peer }
        }
        ConnectionError::ConnectionClosed(c)
            if c.error_code == TransportErrorCode::crypto(ALERT_NO_APPLICATION_PROTOCOL) =>
        {
            handshake(format!(
                "protocol version mismatch: the peer does not speak {} \
                 (TLS alert no_application_protocol)",
                String::from_utf8_lossy(ALPN)
            ))
        }
        // The reason bytes are the peer's: escape them (see `PeerText`).
        ConnectionError::ApplicationClosed(c) => TransportError::Refused {
            peer: to.peer,
            detail: format!(
                "closed during the handshake (code {}: {})",
                c.error_code,
                PeerText(&c.reason)
            ),
        },
        ConnectionError::TimedOut => TransportError::Unreachable {
            peer: to.peer,
            addr: to.addr,
            detail: "no answer (idle timeout)".into(),
        },
        ConnectionError::Reset => TransportError::Unreachable {
            peer: to.peer,
            addr: to.addr,
            detail: "reset by the peer".into(),
        },
        ConnectionError::LocallyClosed if shared.closed.load(Ordering::Acquire) => {
            TransportError::EndpointClosed
        }
        // A CONNECTION_CLOSE frame carries the peer's reason text.
        other => handshake(escaped(other.to_string())),
    }
}

#[async_trait]
impl Transport for QuicTransport {
    fn local_peer(&self) -> PeerId {
        self.local.peer
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    async fn dial(&self, to: &PeerAddr) -> Result<Arc<dyn Connection>, TransportError> {
        self.check_closed()?;
        let (client, actual) = self.client_config(to.peer)?;
        let mut connecting = self
            .endpoint
            .connect_with(client, to.addr, SERVER_NAME)
            .map_err(|e| match e {
                quinn::ConnectError::EndpointStopping => TransportError::EndpointClosed,
                quinn::ConnectError::InvalidRemoteAddress(_) => TransportError::Unreachable {
                    peer: to.peer,
                    addr: to.addr,
                    detail: e.to_string(),
                },
                other => TransportError::Setup(format!("dial: {other}")),
            })?;
        let fail = |e| dial_error(to, &actual, &self.shared, e);
        // `timeout` semantics: a deadline past what `Instant` holds never comes.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(self.config.handshake_timeout)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30));

        // 1. Any answer at all (the listener's ServerHello and extensions).
        match tokio::time::timeout_at(deadline, connecting.handshake_data()).await {
            Err(_) => {
                return Err(TransportError::Unreachable {
                    peer: to.peer,
                    addr: to.addr,
                    detail: "no answer within the handshake timeout".into(),
                })
            }
            Ok(Err(e)) => return Err(fail(e)),
            Ok(Ok(_)) => {}
        }
        // 2. Our side of the TLS handshake (the listener proved `to.peer`).
        let conn = match tokio::time::timeout_at(deadline, connecting).await {
            Err(_) => {
                return Err(TransportError::HandshakeTimeout {
                    peer: Some(to.peer),
                    addr: to.addr,
                })
            }
            Ok(Err(e)) => return Err(fail(e)),
            Ok(Ok(conn)) => conn,
        };
        // 3. The listener's hello: its incarnation, sent with its handshake
        // flight (0.5-RTT data), so it is here or about to be.
        let mut c = QuicConnection::new(conn, to.peer, Side::Dialer, self.shared.clone());
        c.acceptance_deadline = Some(deadline);
        let hello = match tokio::time::timeout_at(deadline, read_hello(&c.conn)).await {
            Err(_) => Err(Acceptance::Timeout),
            Ok(r) => r,
        };
        match hello {
            Ok((incarnation, stream)) => {
                c.peer_incarnation = Some(incarnation).filter(|&i| i != 0);
                *c.acceptance_stream.get_mut() = Some(stream);
            }
            Err(failure) => {
                match failure {
                    Acceptance::Timeout => c.close(0, b"handshake timeout"),
                    Acceptance::Bad(_) => c.close(0, b"bad acceptance"),
                    Acceptance::Lost(_) => {}
                }
                return Err(c.acceptance_error(&failure));
            }
        }
        // 4. The listener's acceptance (it checked our certificate and its
        // allow-list) is read by `accepted`, not here: the caller's first
        // bytes need not wait for it.
        Ok(Arc::new(c))
    }

    async fn accept(&self) -> Result<Arc<dyn Connection>, TransportError> {
        let mut closed = self.shared.closed_tx.subscribe();
        self.check_closed()?;
        let mut rx = tokio::select! {
            rx = self.incoming.lock() => rx,
            _ = closed.wait_for(|c| *c) => return Err(TransportError::EndpointClosed),
        };
        loop {
            self.check_closed()?;
            tokio::select! {
                conn = rx.recv() => match conn {
                    Some(c) if c.conn.close_reason().is_none() => return Ok(Arc::new(c)),
                    Some(_) => continue, // the dialer left before we accepted
                    None => return Err(TransportError::EndpointClosed),
                },
                _ = closed.wait_for(|c| *c) => return Err(TransportError::EndpointClosed),
            }
        }
    }

    fn set_incarnation(&self, incarnation: u64) {
        self.shared
            .incarnation
            .store(incarnation, Ordering::Release);
    }

    fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.endpoint.close(VarInt::from_u32(0), b"endpoint closed");
        self.shared.closed_tx.send_replace(true);
    }
}

/// Why the listener's acceptance did not arrive (kept, so that every call
/// of [`Connection::accepted`] gives the same answer).
#[derive(Debug, Clone)]
enum Acceptance {
    Lost(ConnectionError),
    Bad(String),
    Timeout,
}

/// Reads the listener's hello from its acceptance stream: its incarnation,
/// and the stream, for [`read_acceptance`].
async fn read_hello(conn: &quinn::Connection) -> Result<(u64, quinn::RecvStream), Acceptance> {
    let mut stream = conn.accept_uni().await.map_err(Acceptance::Lost)?;
    let mut hello = [0u8; HELLO_LEN];
    match stream.read_exact(&mut hello).await {
        Ok(()) => Ok((u64::from_be_bytes(hello), stream)),
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e))) => {
            Err(Acceptance::Lost(e))
        }
        Err(e) => Err(Acceptance::Bad(escaped(format!("acceptance stream: {e}")))),
    }
}

/// Reads the acceptance byte that follows the hello.
async fn read_acceptance(stream: Option<&mut quinn::RecvStream>) -> Result<(), Acceptance> {
    let Some(stream) = stream else {
        return Err(Acceptance::Bad("acceptance stream already read".into()));
    };
    let mut byte = [0u8; 1];
    match stream.read_exact(&mut byte).await {
        Ok(()) if byte[0] == ACCEPT_BYTE => Ok(()),
        Ok(()) => Err(Acceptance::Bad(format!(
            "unexpected acceptance byte {:#04x}",
            byte[0]
        ))),
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e))) => {
            Err(Acceptance::Lost(e))
        }
        Err(e) => Err(Acceptance::Bad(escaped(format!("acceptance stream: {e}")))),
    }
}

/// Inbound handshakes in progress: in all, and per source IP.
struct Admission {
    slots: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    retry_above: usize,
    max_per_ip: usize,
}

/// The key a source is counted under for `max_handshakes_per_ip`: the IPv4
/// address, or the IPv6 /64 (one host's or one site's usual allocation, so
/// an attacker with a /64 does not get a fresh key per address).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// What the accept loop does with an inbound attempt.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Start the handshake.
    Accept,
    /// Ask the dialer to prove its address first (stateless).
    Retry,
    /// Refuse at once (stateless).
    Refuse,
}

/// The admission rule, apart from the state it reads: an attempt from an
/// unproven address gets a Retry once `retry_above` handshakes are in
/// progress, or once its IP holds `max_per_ip`; a proven one is refused if
/// its IP holds `max_per_ip` or no slot is free.
fn admit(validated: bool, in_progress: usize, free: usize, from_ip: usize, a: &Admission) -> Admit {
    if !validated && (in_progress >= a.retry_above || from_ip >= a.max_per_ip) {
        Admit::Retry
    } else if free == 0 || from_ip >= a.max_per_ip {
        Admit::Refuse
    } else {
        Admit::Accept
    }
}

/// A handshake's hold on the admission state, given back on drop.
struct Slot {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    admission: Arc<Admission>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_ip = self.admission.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    admission: Arc<Admission>,
    max: usize,
    tx: mpsc::Sender<QuicConnection>,
    timeout: Duration,
    shared: Arc<EndpointShared>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let ip = source_key(remote.ip());
        let slot = {
            let mut per_ip = admission.per_ip.lock();
            let free = admission.slots.available_permits();
            let from_ip = per_ip.get(&ip).copied().unwrap_or(0);
            let validated = incoming.remote_address_validated();
            match admit(validated, max - free, free, from_ip, &admission) {
                Admit::Accept => match admission.slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        *per_ip.entry(ip).or_insert(0) += 1;
                        Some(Slot {
                            _permit: permit,
                            ip,
                            admission: admission.clone(),
                        })
                    }
                    Err(_) => None,
                },
                Admit::Retry => {
                    drop(per_ip);
                    tracing::trace!(%remote, "handshakes pile up: validating the address first");
                    if let Err(e) = incoming.retry() {
                        // Cannot happen for an unvalidated address (quinn's
                        // contract); refuse rather than hold state.
                        e.into_incoming().refuse();
                    }
                    continue;
                }
                Admit::Refuse => None,
            }
        };
        match slot {
            Some(slot) => {
                tokio::spawn(inbound(incoming, slot, tx.clone(), timeout, shared.clone()));
            }
            None => {
                tracing::debug!(%remote, "handshake limit reached; refusing");
                incoming.refuse();
            }
        }
    }
}

/// Runs one inbound handshake under the timeout, then hands the connection to `accept`.
async fn inbound(
    incoming: quinn::Incoming,
    slot: Slot,
    tx: mpsc::Sender<QuicConnection>,
    timeout: Duration,
    shared: Arc<EndpointShared>,
) {
    let remote = incoming.remote_address();
    let handshake = async {
        // 0.5-RTT: the hello leaves with our handshake flight, before the
        // dialer is verified (it tells only when this node started).
        let (conn, done) = match incoming.accept()?.into_0rtt() {
            Ok((conn, done)) => (conn, Some(done)),
            // Cannot happen on a server (quinn's contract): then the hello
            // waits for the handshake.
            Err(connecting) => (connecting.await?, None),
        };
        let lost = |conn: &quinn::Connection| {
            conn.close_reason()
                .unwrap_or(ConnectionError::LocallyClosed)
        };
        let mut accept = conn.open_uni().await?;
        let hello = shared.incarnation.load(Ordering::Acquire).to_be_bytes();
        if accept.write_all(&hello).await.is_err() {
            return Err(lost(&conn));
        }
        // The handshake completes: the dialer's certificate and our
        // allow-list were checked (a refusal closes the connection).
        if let Some(done) = done {
            done.await;
        }
        if let Some(e) = conn.close_reason() {
            return Err(e);
        }
        let peer = remote_peer(&conn).ok_or_else(|| {
            conn.close(VarInt::from_u32(0), b"no peer identity");
            ConnectionError::LocallyClosed
        })?;
        let sent = async {
            accept.write_all(&[ACCEPT_BYTE]).await?;
            accept.finish()?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        };
        if sent.await.is_err() {
            return Err(lost(&conn));
        }
        Ok::<_, ConnectionError>((conn, peer))
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok((conn, peer))) => {
            let conn = QuicConnection::new(conn, peer, Side::Listener, shared);
            // Waits while the backlog is full, holding the handshake slot.
            let _ = tx.send(conn).await;
        }
        // quinn's text may carry the peer's close reason: escaped.
        Ok(Err(e)) => {
            let e = e.to_string();
            tracing::debug!(%remote, error = %crate::PeerText(e.as_bytes()), "inbound handshake failed");
        }
        Err(_) => tracing::debug!(%remote, "inbound handshake timed out"),
    }
    drop(slot);
}

/// The PeerId the remote proved during the handshake.
fn remote_peer(conn: &quinn::Connection) -> Option<PeerId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    match certs.as_slice() {
        [cert] => tls::peer_id_of(cert).ok(),
        _ => None,
    }
}

/// One authenticated QUIC connection. Returned by [`QuicTransport`] as `Arc<dyn Connection>`.
///
/// Dropping it closes the connection (code 0, reason `dropped`), even if its
/// streams are still held.
pub struct QuicConnection {
    conn: quinn::Connection,
    peer: PeerId,
    side: Side,
    /// A dialer's deadline for the listener's acceptance (the dial's
    /// handshake deadline); `None` on the listener.
    acceptance_deadline: Option<tokio::time::Instant>,
    /// The listener's acceptance, read once.
    acceptance: tokio::sync::OnceCell<Result<(), Acceptance>>,
    /// The acceptance stream after the hello, until the acceptance is read.
    /// Read through the lock, not taken out: a cancelled `accepted` leaves
    /// it in place for the next call.
    acceptance_stream: tokio::sync::Mutex<Option<quinn::RecvStream>>,
    /// The incarnation of the listener's hello (dialer side, non-zero).
    peer_incarnation: Option<u64>,
    stream_taken: AtomicBool,
    local_close: Mutex<Option<(u32, Bytes)>>,
    endpoint: Arc<EndpointShared>,
}

impl fmt::Debug for QuicConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicConnection")
            .field("peer", &self.peer)
            .field("remote", &self.conn.remote_address())
            .field("side", &self.side)
            .field("open", &self.conn.close_reason().is_none())
            .finish()
    }
}

impl QuicConnection {
    fn new(
        conn: quinn::Connection,
        peer: PeerId,
        side: Side,
        endpoint: Arc<EndpointShared>,
    ) -> Self {
        Self {
            conn,
            peer,
            side,
            acceptance_deadline: None,
            acceptance: tokio::sync::OnceCell::new(),
            acceptance_stream: tokio::sync::Mutex::new(None),
            peer_incarnation: None,
            stream_taken: AtomicBool::new(false),
            local_close: Mutex::new(None),
            endpoint,
        }
    }

    fn reason(&self, e: &ConnectionError) -> CloseReason {
        match e {
            ConnectionError::ApplicationClosed(c) => match u32::try_from(c.error_code.into_inner())
            {
                Ok(code) => CloseReason::Remote {
                    code,
                    reason: c.reason.clone(),
                },
                Err(_) => CloseReason::Lost(format!(
                    "peer closed with out-of-range code {}",
                    c.error_code
                )),
            },
            ConnectionError::LocallyClosed => match &*self.local_close.lock() {
                Some((code, reason)) => CloseReason::Local {
                    code: *code,
                    reason: reason.clone(),
                },
                None if self.endpoint.closed.load(Ordering::Acquire) => CloseReason::EndpointClosed,
                None => CloseReason::Lost("closed locally".into()),
            },
            ConnectionError::TimedOut => CloseReason::Lost("idle timeout".into()),
            ConnectionError::Reset => CloseReason::Lost("reset by peer".into()),
            // A CONNECTION_CLOSE frame carries the peer's reason text.
            other => CloseReason::Lost(escaped(other.to_string())),
        }
    }

    fn closed_error(&self, e: &ConnectionError) -> TransportError {
        // The listener's refusal (its allow-list's `access_denied` alert)
        // can reach a dialer after `dial` returned, while it opens its
        // stream: that is still a refusal, not a lost connection.
        let first = self.conn.close_reason();
        if self.side == Side::Dialer && is_access_denied(first.as_ref().unwrap_or(e)) {
            return TransportError::Denied { peer: self.peer };
        }
        TransportError::Closed {
            peer: self.peer,
            reason: self.close_reason().unwrap_or_else(|| self.reason(e)),
        }
    }

    /// The dial error for a listener that did not accept.
    fn acceptance_error(&self, failure: &Acceptance) -> TransportError {
        let to = PeerAddr::new(self.peer, self.conn.remote_address());
        match failure {
            Acceptance::Lost(e) => dial_error(&to, &Mutex::new(None), &self.endpoint, e.clone()),
            Acceptance::Bad(detail) => TransportError::Handshake {
                peer: Some(self.peer),
                addr: to.addr,
                detail: detail.clone(),
            },
            Acceptance::Timeout => TransportError::HandshakeTimeout {
                peer: Some(self.peer),
                addr: to.addr,
            },
        }
    }

    fn protocol_error(&self, detail: String) -> TransportError {
        TransportError::Protocol {
            peer: self.peer,
            detail,
        }
    }
}

/// The close a listener's allow-list refusal makes: TLS alert `access_denied`.
fn is_access_denied(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::ConnectionClosed(c)
        if c.error_code == TransportErrorCode::crypto(ALERT_ACCESS_DENIED))
}

impl Drop for QuicConnection {
    fn drop(&mut self) {
        self.conn.close(VarInt::from_u32(0), b"dropped");
    }
}

#[async_trait]
impl Connection for QuicConnection {
    fn peer(&self) -> PeerId {
        self.peer
    }

    fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    fn side(&self) -> Side {
        self.side
    }

    async fn accepted(&self) -> Result<(), TransportError> {
        let Some(deadline) = self.acceptance_deadline else {
            return Ok(());
        };
        let result = self
            .acceptance
            .get_or_init(|| async {
                let mut stream = self.acceptance_stream.lock().await;
                let read =
                    tokio::time::timeout_at(deadline, read_acceptance(stream.as_mut())).await;
                // Read (or failed) for good: the stream is not needed again.
                *stream = None;
                match read {
                    Ok(r) => r,
                    Err(_) => Err(Acceptance::Timeout),
                }
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(failure) => {
                match failure {
                    Acceptance::Timeout => self.close(0, b"handshake timeout"),
                    Acceptance::Bad(_) => self.close(0, b"bad acceptance"),
                    Acceptance::Lost(_) => {}
                }
                Err(self.acceptance_error(failure))
            }
        }
    }

    fn peer_incarnation(&self) -> Option<u64> {
        self.peer_incarnation
    }

    async fn open_stream(&self) -> Result<(SendStream, RecvStream), TransportError> {
        if let Some(e) = self.conn.close_reason() {
            return Err(self.closed_error(&e));
        }
        if self.stream_taken.swap(true, Ordering::AcqRel) {
            return Err(TransportError::StreamTaken { peer: self.peer });
        }
        match self.side {
            Side::Dialer => {
                let (mut send, recv) = self
                    .conn
                    .open_bi()
                    .await
                    .map_err(|e| self.closed_error(&e))?;
                send.write_all(&[STREAM_PREAMBLE])
                    .await
                    .map_err(|e| match e {
                        quinn::WriteError::ConnectionLost(e) => self.closed_error(&e),
                        other => self.protocol_error(escaped(format!("batch stream: {other}"))),
                    })?;
                Ok((Box::new(send), Box::new(recv)))
            }
            Side::Listener => {
                let (send, mut recv) = self
                    .conn
                    .accept_bi()
                    .await
                    .map_err(|e| self.closed_error(&e))?;
                let mut byte = [0u8; 1];
                match recv.read_exact(&mut byte).await {
                    Ok(()) if byte[0] == STREAM_PREAMBLE => Ok((Box::new(send), Box::new(recv))),
                    Ok(()) => {
                        Err(self.protocol_error(format!("bad stream preamble {:#04x}", byte[0])))
                    }
                    Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e))) => {
                        Err(self.closed_error(&e))
                    }
                    Err(e) => Err(self.protocol_error(escaped(format!("batch stream: {e}")))),
                }
            }
        }
    }

    fn export_keying_material(
        &self,
        out: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), TransportError> {
        self.conn
            .export_keying_material(out, label, context)
            .map_err(|_| TransportError::Export { peer: self.peer })
    }

    fn rtt(&self) -> Option<Duration> {
        Some(self.conn.rtt())
    }

    fn close(&self, code: u32, reason: &[u8]) {
        {
            let mut local = self.local_close.lock();
            if local.is_some()
                || self.conn.close_reason().is_some()
                || self.endpoint.closed.load(Ordering::Acquire)
            {
                return;
            }
            *local = Some((code, Bytes::copy_from_slice(reason)));
        }
        self.conn.close(VarInt::from_u32(code), reason);
    }

    fn close_reason(&self) -> Option<CloseReason> {
        self.conn.close_reason().map(|e| self.reason(&e))
    }

    async fn closed(&self) -> CloseReason {
        let e = self.conn.closed().await;
        self.reason(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GUARD: Duration = Duration::from_secs(10);

    fn admission(retry_above: usize, max_per_ip: usize) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(0)),
            per_ip: Mutex::new(HashMap::new()),
            retry_above,
            max_per_ip,
        }
    }

    proptest::proptest! {
        /// Unproven addresses never take a slot at or above `retry_above` or
        /// beyond their IP's share, proven ones never beyond the free slots
        /// or their IP's share, and nothing else is turned away.
        #[test]
        fn admission_rule(
            validated: bool,
            in_progress in 0usize..300,
            free in 0usize..300,
            from_ip in 0usize..50,
            retry_above in 0usize..300,
            max_per_ip in 0usize..50,
        ) {
            let a = admission(retry_above, max_per_ip);
            let got = admit(validated, in_progress, free, from_ip, &a);
            let over_ip = from_ip >= max_per_ip;
            let expected = if !validated && (in_progress >= retry_above || over_ip) {
                Admit::Retry
            } else if free == 0 || over_ip {
                Admit::Refuse
            } else {
                Admit::Accept
            };
            proptest::prop_assert_eq!(&got, &expected);
            if got == Admit::Accept {
                proptest::prop_assert!(free > 0 && from_ip < max_per_ip);
                proptest::prop_assert!(validated || in_progress < retry_above);
            }
        }
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// A `LocalCert` whose certificate holds key A but is signed by key B:
    /// the handshake signature (made with A) verifies, the self-signature
    /// does not.
    fn badly_self_signed_cert() -> LocalCert {
        let a = Identity::generate().expect("key a");
        let b = Identity::generate().expect("key b");
        let key_a = rcgen::KeyPair::try_from(a.pkcs8_der()).expect("rcgen key a");
        let key_b = rcgen::KeyPair::try_from(b.pkcs8_der()).expect("rcgen key b");
        let issuer = rcgen::Issuer::new(
            rcgen::CertificateParams::new(vec!["b".to_owned()]).expect("params"),
            &key_b,
        );
        let cert = rcgen::CertificateParams::new(vec!["qudag".to_owned()])
            .expect("params")
            .signed_by(&key_a, &issuer)
            .expect("cert");
        let genuine = LocalCert::new(a.pkcs8_der()).expect("genuine cert");
        let signing = genuine.certified.key.clone();
        LocalCert {
            certified: Arc::new(rustls::sign::CertifiedKey::new(
                vec![cert.der().clone()],
                signing,
            )),
            peer: a.peer_id(),
        }
    }

    /// A `LocalCert` that presents A's genuine certificate but signs the
    /// handshake with key B: someone who copied A's certificate without
    /// holding A's key.
    fn stolen_cert() -> LocalCert {
        let a = Identity::generate().expect("key a");
        let b = Identity::generate().expect("key b");
        let genuine_a = LocalCert::new(a.pkcs8_der()).expect("cert a");
        let genuine_b = LocalCert::new(b.pkcs8_der()).expect("cert b");
        LocalCert {
            certified: Arc::new(rustls::sign::CertifiedKey::new(
                genuine_a.certified.cert.clone(),
                genuine_b.certified.key.clone(),
            )),
            peer: a.peer_id(),
        }
    }

    fn bind_good() -> (Identity, QuicTransport) {
        let id = Identity::generate().expect("identity");
        let t = QuicTransport::bind(loopback(), &id, QuicConfig::default()).expect("bind");
        (id, t)
    }

    /// A copied certificate without its key is refused by the handshake
    /// signature, and the listener hands out the next genuine dialer.
    #[tokio::test]
    async fn listener_refuses_a_dialer_that_does_not_hold_its_certificates_key() {
        let (listener_id, listener) = bind_good();
        let stolen = QuicTransport::bind_cert(loopback(), stolen_cert(), QuicConfig::default())
            .expect("bind stolen");
        let to = PeerAddr::new(listener_id.peer_id(), listener.local_addr());
        // The dialer's side completes before the listener checks its
        // certificate; the refusal is the acceptance's error.
        let refused =
            tokio::time::timeout(GUARD, async { stolen.dial(&to).await?.accepted().await })
                .await
                .expect("guard");
        assert!(refused.is_err(), "a copied certificate accepted");

        let (honest_id, honest) = bind_good();
        let (dialed, accepted) = tokio::time::timeout(GUARD, async {
            tokio::join!(honest.dial(&to), listener.accept())
        })
        .await
        .expect("guard");
        dialed.expect("honest dial");
        assert_eq!(accepted.expect("accept").peer(), honest_id.peer_id());
    }

    #[tokio::test]
    async fn dialer_refuses_a_listener_that_does_not_hold_its_certificates_key() {
        let cert = stolen_cert();
        let peer = cert.peer;
        let stolen =
            QuicTransport::bind_cert(loopback(), cert, QuicConfig::default()).expect("bind stolen");
        let (_, dialer) = bind_good();
        let to = PeerAddr::new(peer, stolen.local_addr());
        let refused = tokio::time::timeout(GUARD, dialer.dial(&to))
            .await
            .expect("guard");
        match refused {
            Err(TransportError::Handshake { detail, .. }) => {
                assert!(detail.contains("ignature"), "unexpected detail: {detail}");
            }
            other => panic!("expected a handshake error, got {other:?}"),
        }
    }

    /// The self-signature is not what proves a peer's key (the handshake
    /// signature is): a certificate for key A signed by another key, used by
    /// the holder of A, is accepted in both directions as A.
    #[tokio::test]
    async fn a_bad_self_signature_does_not_matter_to_the_holder_of_the_key() {
        let cert = badly_self_signed_cert();
        let peer = cert.peer;
        let odd = QuicTransport::bind_cert(loopback(), cert, QuicConfig::default()).expect("bind");
        let (good_id, good) = bind_good();
        let to_odd = PeerAddr::new(peer, odd.local_addr());
        let (dialed, accepted) = tokio::time::timeout(GUARD, async {
            tokio::join!(good.dial(&to_odd), odd.accept())
        })
        .await
        .expect("guard");
        let dialed = dialed.expect("dial");
        assert_eq!(dialed.peer(), peer);
        tokio::time::timeout(GUARD, dialed.accepted())
            .await
            .expect("guard")
            .expect("accepted");
        assert_eq!(accepted.expect("accept").peer(), good_id.peer_id());

        let to_good = PeerAddr::new(good_id.peer_id(), good.local_addr());
        let (dialed, accepted) = tokio::time::timeout(GUARD, async {
            tokio::join!(odd.dial(&to_good), good.accept())
        })
        .await
        .expect("guard");
        tokio::time::timeout(GUARD, dialed.expect("dial").accepted())
            .await
            .expect("guard")
            .expect("accepted");
        assert_eq!(accepted.expect("accept").peer(), peer);
    }
}
