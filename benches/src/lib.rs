//! Shared helpers for the qudag-net benches: the raw-quinn baseline set-up
//! and the qudag managers over QUIC on 127.0.0.1.
//!
//! The baseline is made fair on purpose: the same crypto provider (rustls
//! with ring), TLS 1.3 only, mutual authentication with self-signed Ed25519
//! certificates (rcgen) whose handshake signatures are checked, no session
//! resumption, no 0-RTT, and the same flow-control windows, idle timeout and
//! keep-alive as [`QuicConfig::default`]. What the baseline leaves out is
//! exactly what qudag adds: PeerId derivation and checks, the acceptance
//! byte, the batch stream preamble, sealing, batching and acknowledgements.
//!
//! What it does not do: measure anything. The scenarios live in
//! `benches/benches/e2e.rs`, the micro benches beside it.
//!
//! Key items: [`raw_server`], [`raw_client`], [`baseline_transport_config`],
//! [`quic_manager`], and [`delay_proxy::DelayProxy`] (a bounded UDP delay
//! proxy on 127.0.0.1 for scenarios over a link with a round-trip time).
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), qudag_benches::BoxError> {
//! let server = qudag_benches::raw_server(1, 0)?;
//! let client = qudag_benches::raw_client(0, 0)?;
//! let addr = server.local_addr()?;
//! let (conn, accepted) = tokio::join!(client.connect(addr, "raw")?, async {
//!     server.accept().await.unwrap().await
//! });
//! assert!(conn.is_ok() && accepted.is_ok());
//! # Ok(())
//! # }
//! ```

#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]

pub mod delay_proxy;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use qudag_net::{ConnectionManager, Identity, ManagerConfig, PeerAddr, QuicConfig, QuicTransport};
use quinn::VarInt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The error type of the bench helpers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The flow-control windows, idle timeout and keep-alive of
/// [`QuicConfig::default`] (8 MiB stream window, 16 MiB connection windows,
/// 30 s idle, 10 s keep-alive), with `bidi` and `uni` concurrent streams
/// admitted from the peer.
pub fn baseline_transport_config(bidi: u32, uni: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(uni))
        .stream_receive_window(VarInt::from_u32(8 << 20))
        .receive_window(VarInt::from_u32(16 << 20))
        .send_window(16 << 20)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("30 s is in range"),
        ))
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .datagram_receive_buffer_size(None);
    t
}

/// A self-signed Ed25519 certificate and its key.
struct RawCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn raw_cert() -> Result<RawCert, BoxError> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let cert = rcgen::CertificateParams::new(vec!["raw".to_owned()])?.self_signed(&kp)?;
    Ok(RawCert {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(kp.serialize_der().into()),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate but checks the TLS 1.3 handshake signature, so
/// the baseline does the same public-key work as qudag's verifiers.
struct AnyCert {
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for AnyCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyCert")
    }
}

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("tls 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for AnyCert {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("tls 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

const ALPN: &[u8] = b"raw/1";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A raw quinn server endpoint on 127.0.0.1 (a free port) admitting `bidi`
/// and `uni` concurrent streams per connection. Must run inside a tokio
/// runtime.
pub fn raw_server(bidi: u32, uni: u32) -> Result<quinn::Endpoint, BoxError> {
    raw_server_alpn(bidi, uni, ALPN)
}

/// [`raw_server`] offering the ALPN protocol `alpn` (to play a peer of
/// another protocol version).
pub fn raw_server_alpn(bidi: u32, uni: u32, alpn: &[u8]) -> Result<quinn::Endpoint, BoxError> {
    let provider = provider();
    let cert = raw_cert()?;
    let verifier = Arc::new(AnyCert {
        algs: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain, cert.key)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)?,
    ));
    server
        .transport_config(Arc::new(baseline_transport_config(bidi, uni)))
        .max_incoming(1 << 16);
    Ok(quinn::Endpoint::server(server, loopback())?)
}

/// A raw quinn client endpoint on 127.0.0.1 whose default client config
/// presents its own certificate and admits `bidi` and `uni` concurrent
/// streams from the server. Connect with any server name.
pub fn raw_client(bidi: u32, uni: u32) -> Result<quinn::Endpoint, BoxError> {
    raw_client_alpn(bidi, uni, ALPN)
}

/// [`raw_client`] offering the ALPN protocol `alpn` (to play a peer of
/// another protocol version).
pub fn raw_client_alpn(bidi: u32, uni: u32, alpn: &[u8]) -> Result<quinn::Endpoint, BoxError> {
    let provider = provider();
    let cert = raw_cert()?;
    let verifier = Arc::new(AnyCert {
        algs: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert.chain, cert.key)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_sni = false;
    tls.enable_early_data = false;
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    client.transport_config(Arc::new(baseline_transport_config(bidi, uni)));
    let mut endpoint = quinn::Endpoint::client(loopback())?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// A [`ConnectionManager`] over a fresh identity's [`QuicTransport`] on
/// 127.0.0.1 (a free port, `quic` settings), and the address peers dial.
/// Must run inside a tokio runtime.
pub fn quic_manager(
    config: ManagerConfig,
    quic: QuicConfig,
) -> Result<(ConnectionManager, PeerAddr), BoxError> {
    let id = Identity::generate()?;
    let transport = Arc::new(QuicTransport::bind(loopback(), &id, quic)?);
    let addr = PeerAddr::new(id.peer_id(), qudag_net::Transport::local_addr(&*transport));
    Ok((ConnectionManager::new(config, transport)?, addr))
}
