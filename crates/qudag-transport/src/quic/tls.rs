//! TLS 1.3 for the QUIC transport: self-signed identity certificates and the
//! verifiers that turn a certificate into a [`PeerId`].
//!
//! Certificate rules (both directions):
//! - the peer sends exactly one certificate (no intermediates);
//! - it is a DER X.509 certificate whose SubjectPublicKeyInfo is an Ed25519
//!   key, encoded exactly as `30 2a 30 05 06 03 2b 65 70 03 21 00` followed
//!   by the 32 key bytes;
//! - its outer signature algorithm is Ed25519 (it is self-signed; the
//!   handshake does not verify that signature, see below);
//! - the TLS 1.3 `CertificateVerify` signature (scheme `ed25519`) verifies
//!   under that key;
//! - the peer's [`PeerId`] is `PeerId::from_public_key(key)`.
//!
//! Names, validity dates, extensions and CAs are not checked: the identity
//! is the key. For the same reason the certificate's self-signature is not
//! verified in a handshake: the `CertificateVerify` signature over the
//! handshake transcript already proves that the peer holds the key, and the
//! self-signature would only vouch for the fields that are ignored. That
//! saves one Ed25519 verification per side on every new connection.
//! [`peer_id_from_certificate`], which has no handshake, does verify it. Policy (the dialed PeerId, the allow-list) is applied in
//! `verify_tls13_signature`, after the peer has proven it holds the key, so a
//! [`PeerId`] reported in an error is one the peer proved.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use qudag_crypto::PeerId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls13_signature_with_raw_key, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
pub(crate) const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// The DER AlgorithmIdentifier of Ed25519 (RFC 8410).
const ED25519_ALG_ID: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
/// Certificates larger than this are refused before they are parsed.
pub const MAX_CERT_LEN: usize = 4096;

/// Why a certificate is not a qudag identity certificate (see
/// [`peer_id_from_certificate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Not well-formed DER, or not the X.509 shape expected.
    #[error("certificate is not well-formed DER X.509")]
    BadEncoding,
    /// The key or the certificate signature algorithm is not Ed25519.
    #[error("certificate key or signature algorithm is not Ed25519")]
    NotEd25519,
    /// The self-signature does not verify.
    #[error("certificate is not self-signed by its key")]
    BadSignature,
    /// Larger than [`MAX_CERT_LEN`].
    #[error("certificate is larger than {MAX_CERT_LEN} bytes")]
    TooLarge,
}

/// The [`PeerId`] a qudag identity certificate names, after checking every
/// rule of the [module docs](super) that concerns the certificate alone: its
/// shape, its Ed25519 key and its self-signature.
///
/// The transport runs this on every certificate a peer presents; it is
/// public for tools that hold a peer's certificate (for example from
/// `quinn::Connection::peer_identity`). Possession of the key is proven
/// only by a handshake, not by the certificate.
///
/// # Errors
///
/// A [`CertError`] saying which rule the bytes break.
///
/// # Examples
///
/// ```
/// use qudag_transport::quic::{peer_id_from_certificate, CertError};
///
/// assert_eq!(peer_id_from_certificate(b"not DER"), Err(CertError::BadEncoding));
/// ```
pub fn peer_id_from_certificate(der: &[u8]) -> Result<PeerId, CertError> {
    ed25519_key(der).map(|key| PeerId::from_public_key(&key))
}

impl From<CertError> for rustls::Error {
    fn from(e: CertError) -> Self {
        rustls::Error::InvalidCertificate(match e {
            CertError::BadEncoding | CertError::TooLarge | CertError::NotEd25519 => {
                CertificateError::BadEncoding
            }
            CertError::BadSignature => CertificateError::BadSignature,
        })
    }
}

/// One DER element: its tag, its content, the whole encoding, and what follows it.
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    whole: &'a [u8],
    rest: &'a [u8],
}

/// Reads one DER element strictly (single-byte tags, minimal definite lengths).
fn read_tlv(input: &[u8]) -> Result<Tlv<'_>, CertError> {
    let (&tag, after_tag) = input.split_first().ok_or(CertError::BadEncoding)?;
    if tag & 0x1f == 0x1f {
        return Err(CertError::BadEncoding); // multi-byte tags never occur in a certificate we accept
    }
    let (&first, after_len) = after_tag.split_first().ok_or(CertError::BadEncoding)?;
    let (len, after_len) = if first < 0x80 {
        (usize::from(first), after_len)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 2 || after_len.len() < n {
            return Err(CertError::BadEncoding); // indefinite, or longer than MAX_CERT_LEN allows
        }
        let len = after_len[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let min = if n == 1 { 0x80 } else { 0x100 };
        if len < min {
            return Err(CertError::BadEncoding); // not minimal
        }
        (len, &after_len[n..])
    };
    if after_len.len() < len {
        return Err(CertError::BadEncoding);
    }
    let header = input.len() - after_len.len();
    Ok(Tlv {
        tag,
        content: &after_len[..len],
        whole: &input[..header + len],
        rest: &after_len[len..],
    })
}

fn expect(input: &[u8], tag: u8) -> Result<Tlv<'_>, CertError> {
    let tlv = read_tlv(input)?;
    if tlv.tag == tag {
        Ok(tlv)
    } else {
        Err(CertError::BadEncoding)
    }
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const VERSION_TAG: u8 = 0xa0;

/// The parts of an identity certificate the rules look at.
struct Parsed<'a> {
    key: [u8; 32],
    tbs: &'a [u8],
    signature: &'a [u8],
}

/// Parses `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm,
/// signatureValue }` and walks `tbsCertificate` to its SubjectPublicKeyInfo
/// (version, serial, signature, issuer, validity, subject, spki), so a key
/// pattern hidden elsewhere in the certificate is never mistaken for the key.
fn parse(cert: &[u8]) -> Result<Parsed<'_>, CertError> {
    if cert.len() > MAX_CERT_LEN {
        return Err(CertError::TooLarge);
    }
    let outer = expect(cert, SEQUENCE)?;
    if !outer.rest.is_empty() {
        return Err(CertError::BadEncoding);
    }
    let tbs = expect(outer.content, SEQUENCE)?;
    let sig_alg = expect(tbs.rest, SEQUENCE)?;
    let sig = expect(sig_alg.rest, BIT_STRING)?;
    if !sig.rest.is_empty() {
        return Err(CertError::BadEncoding);
    }
    if sig_alg.whole != ED25519_ALG_ID {
        return Err(CertError::NotEd25519);
    }

    let mut fields = tbs.content;
    let first = read_tlv(fields)?;
    if first.tag == VERSION_TAG {
        fields = first.rest;
    }
    let serial = expect(fields, INTEGER)?;
    let inner_alg = expect(serial.rest, SEQUENCE)?;
    if inner_alg.whole != ED25519_ALG_ID {
        return Err(CertError::NotEd25519);
    }
    let issuer = expect(inner_alg.rest, SEQUENCE)?;
    let validity = expect(issuer.rest, SEQUENCE)?;
    let subject = expect(validity.rest, SEQUENCE)?;
    let spki = expect(subject.rest, SEQUENCE)?;
    let key = spki_key(spki.whole)?;

    // signatureValue: a BIT STRING with no unused bits holding the 64-byte signature.
    let signature = match sig.content.split_first() {
        Some((0, s)) if s.len() == 64 => s,
        _ => return Err(CertError::BadEncoding),
    };
    Ok(Parsed {
        key,
        tbs: tbs.whole,
        signature,
    })
}

/// The Ed25519 public key of a self-signed identity certificate, after
/// checking its shape ([`parse`]) and its self-signature: for a certificate
/// on its own ([`peer_id_from_certificate`]), where no handshake signature
/// proves the key.
pub(crate) fn ed25519_key(cert: &[u8]) -> Result<[u8; 32], CertError> {
    let parsed = parse(cert)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &parsed.key)
        .verify(parsed.tbs, parsed.signature)
        .map_err(|_| CertError::BadSignature)?;
    Ok(parsed.key)
}

/// The key of a certificate in a handshake: its shape only. The handshake's
/// `CertificateVerify` signature proves the key (see the module docs), so
/// the self-signature is not verified: an Ed25519 verification per side
/// saved on every connection.
fn accepted_key(cert: &[u8]) -> Result<[u8; 32], CertError> {
    parse(cert).map(|p| p.key)
}

/// The 32 key bytes of an Ed25519 SubjectPublicKeyInfo, checked strictly.
pub(crate) fn spki_key(spki: &[u8]) -> Result<[u8; 32], CertError> {
    match spki.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
        Some(key) => key.try_into().map_err(|_| CertError::NotEd25519),
        None => Err(CertError::NotEd25519),
    }
}

/// The PeerId of a certificate a verifier accepted in a completed handshake.
pub(crate) fn peer_id_of(cert: &[u8]) -> Result<PeerId, CertError> {
    accepted_key(cert).map(|k| PeerId::from_public_key(&k))
}

/// This node's certificate and key, parsed once into the form rustls signs with.
pub(crate) struct LocalCert {
    /// The certificate and the loaded signing key; shared by every client and
    /// server config of the endpoint, so no dial parses the key again.
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) peer: PeerId,
}

impl fmt::Debug for LocalCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCert")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl LocalCert {
    /// Makes a self-signed certificate for an Ed25519 PKCS#8 key.
    ///
    /// The key is parsed once, by rustls's ring provider, straight from the
    /// caller's buffer: no copy of the PKCS#8 document is made, and rcgen
    /// signs the certificate through that same signing key ([`CertSigner`])
    /// instead of parsing the key a second time. What is left is ring's
    /// parsed key pair inside the returned [`CertifiedKey`], which ring does
    /// not wipe; it lives as long as the endpoint's TLS configurations
    /// (docs/SECURITY.md §5).
    pub(crate) fn new(pkcs8: &[u8]) -> Result<Self, String> {
        let signing = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8))
            .map_err(|e| format!("identity key is not an Ed25519 PKCS#8 key: {e}"))?;
        let signer = CertSigner::new(signing.as_ref())?;
        let params = rcgen::CertificateParams::new(vec!["qudag".to_owned()])
            .map_err(|e| format!("certificate parameters: {e}"))?;
        let cert = params
            .self_signed(&signer)
            .map_err(|e| format!("self-signing the identity certificate: {e}"))?;
        let der = cert.der().clone();
        let public =
            ed25519_key(&der).map_err(|e| format!("generated certificate rejected: {e:?}"))?;
        Ok(Self {
            certified: Arc::new(CertifiedKey::new(vec![der], signing)),
            peer: PeerId::from_public_key(&public),
        })
    }
}

/// rcgen's view of a rustls Ed25519 signing key: rcgen signs the
/// certificate through it and never sees the private key.
struct CertSigner {
    signer: Box<dyn rustls::sign::Signer>,
    public: [u8; 32],
}

impl CertSigner {
    fn new(key: &dyn rustls::sign::SigningKey) -> Result<Self, String> {
        let not_ed25519 = || "identity key is not an Ed25519 key".to_owned();
        let signer = key
            .choose_scheme(&[SignatureScheme::ED25519])
            .ok_or_else(not_ed25519)?;
        let spki = key.public_key().ok_or_else(not_ed25519)?;
        let public = spki_key(spki.as_ref()).map_err(|_| not_ed25519())?;
        Ok(Self { signer, public })
    }
}

impl rcgen::PublicKeyData for CertSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for CertSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.signer
            .sign(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// The crypto provider used everywhere: ring (built once per process).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Verifies a TLS 1.3 handshake signature against the certificate's key and returns the proven PeerId.
fn verify_handshake(
    algs: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<PeerId, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        ));
    }
    let key = accepted_key(cert)?;
    let mut spki = Vec::with_capacity(44);
    spki.extend_from_slice(&ED25519_SPKI_PREFIX);
    spki.extend_from_slice(&key);
    verify_tls13_signature_with_raw_key(message, &SubjectPublicKeyInfoDer::from(spki), dss, algs)?;
    Ok(PeerId::from_public_key(&key))
}

fn check_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), rustls::Error> {
    if !intermediates.is_empty() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ));
    }
    accepted_key(end_entity)?;
    Ok(())
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic)
}

/// Where a dial's verifier leaves the PeerId a listener proved when it was not the one dialed.
pub(crate) type MismatchSlot = Arc<Mutex<Option<PeerId>>>;

/// The dialer's verifier: the listener must prove the PeerId that was dialed.
///
/// Built per dial. On a mismatch it remembers the PeerId the listener proved,
/// so the dial can report [`crate::TransportError::PeerIdMismatch`].
pub(crate) struct DialVerifier {
    expected: PeerId,
    actual: MismatchSlot,
    algs: WebPkiSupportedAlgorithms,
}

impl DialVerifier {
    pub(crate) fn new(expected: PeerId, provider: &CryptoProvider) -> (Arc<Self>, MismatchSlot) {
        let actual = Arc::new(Mutex::new(None));
        let v = Arc::new(Self {
            expected,
            actual: actual.clone(),
            algs: provider.signature_verification_algorithms,
        });
        (v, actual)
    }
}

impl fmt::Debug for DialVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for DialVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_chain(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let proven = verify_handshake(&self.algs, message, cert, dss)?;
        if !proven.ct_eq(&self.expected) {
            *self.actual.lock() = Some(proven);
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The shared, runtime-changeable allow-list of a listener.
pub(crate) type AllowList = Arc<RwLock<Option<HashSet<PeerId>>>>;

/// The listener's verifier: client certificates are mandatory, and a
/// configured allow-list must contain the proven PeerId.
pub(crate) struct ListenVerifier {
    allow: AllowList,
    algs: WebPkiSupportedAlgorithms,
}

impl ListenVerifier {
    pub(crate) fn new(allow: AllowList, provider: &CryptoProvider) -> Arc<Self> {
        Arc::new(Self {
            allow,
            algs: provider.signature_verification_algorithms,
        })
    }
}

impl fmt::Debug for ListenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenVerifier")
            .field("allow_list", &self.allow.read().as_ref().map(HashSet::len))
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ListenVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_chain(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let proven = verify_handshake(&self.algs, message, cert, dss)?;
        if let Some(allow) = &*self.allow.read() {
            if !allow.contains(&proven) {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pkcs8() -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("keygen")
            .as_ref()
            .to_vec()
    }

    fn public_key(pkcs8: &[u8]) -> [u8; 32] {
        use ring::signature::KeyPair;
        let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8).expect("valid key");
        kp.public_key().as_ref().try_into().expect("32 bytes")
    }

    #[test]
    fn generated_certificate_carries_the_identity_key() {
        let key = pkcs8();
        let cert = LocalCert::new(&key).expect("certificate");
        assert_eq!(ed25519_key(&cert.certified.cert[0]), Ok(public_key(&key)));
        assert_eq!(cert.peer, PeerId::from_public_key(&public_key(&key)));
    }

    #[test]
    fn non_ed25519_key_is_refused() {
        let rng = ring::rand::SystemRandom::new();
        let p256 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .expect("keygen");
        assert!(LocalCert::new(p256.as_ref()).is_err());
        assert!(LocalCert::new(b"not a key").is_err());
    }

    #[test]
    fn ecdsa_certificate_is_not_an_identity() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        assert_eq!(ed25519_key(cert.der()), Err(CertError::NotEd25519));
    }

    #[test]
    fn certificate_signed_by_another_key_is_refused() {
        // Subject key A, signed by key B: the key in the certificate did not sign it.
        let a = rcgen::KeyPair::try_from(pkcs8().as_slice()).expect("key a");
        let b = rcgen::KeyPair::try_from(pkcs8().as_slice()).expect("key b");
        let issuer_params = rcgen::CertificateParams::new(vec!["b".to_owned()]).expect("params");
        let issuer = rcgen::Issuer::new(issuer_params, &b);
        let cert = rcgen::CertificateParams::new(vec!["a".to_owned()])
            .expect("params")
            .signed_by(&a, &issuer)
            .expect("cert");
        assert_eq!(ed25519_key(cert.der()), Err(CertError::BadSignature));
    }

    #[test]
    fn spki_is_checked_strictly() {
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&[7u8; 32]);
        assert_eq!(spki_key(&spki), Ok([7u8; 32]));
        assert_eq!(spki_key(&spki[..43]), Err(CertError::NotEd25519));
        spki.push(0);
        assert_eq!(spki_key(&spki), Err(CertError::NotEd25519));
    }

    #[test]
    fn oversized_and_trailing_input_is_refused() {
        let cert = LocalCert::new(&pkcs8()).expect("certificate");
        let mut der = cert.certified.cert[0].to_vec();
        der.push(0);
        assert_eq!(ed25519_key(&der), Err(CertError::BadEncoding));
        assert_eq!(
            ed25519_key(&vec![0x30; MAX_CERT_LEN + 1]),
            Err(CertError::TooLarge)
        );
        assert_eq!(ed25519_key(&[]), Err(CertError::BadEncoding));
    }

    #[test]
    fn non_minimal_lengths_are_refused() {
        assert!(read_tlv(&[0x30, 0x81, 0x05, 1, 2, 3, 4, 5]).is_err());
        assert!(read_tlv(&[0x30, 0x82, 0x00, 0x90]).is_err());
        assert!(read_tlv(&[0x30, 0x80]).is_err());
        assert!(read_tlv(&[0x1f, 0x01, 0x00]).is_err());
        let ok = read_tlv(&[0x30, 0x02, 9, 9, 1]).expect("valid");
        assert_eq!(
            (ok.tag, ok.content, ok.rest),
            (0x30, &[9u8, 9][..], &[1u8][..])
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ed25519_key(&bytes);
        }

        #[test]
        fn any_single_bit_flip_is_refused_or_yields_the_same_key(idx in any::<prop::sample::Index>(), bit in 0u8..8) {
            // Only the original key can come out of a mutated certificate: the
            // self-signature covers every byte of tbsCertificate.
            let key = pkcs8();
            let cert = LocalCert::new(&key).expect("certificate");
            let mut der = cert.certified.cert[0].to_vec();
            let i = idx.index(der.len());
            der[i] ^= 1 << bit;
            if let Ok(k) = ed25519_key(&der) {
                prop_assert_eq!(k, public_key(&key));
            }
        }
    }
}
