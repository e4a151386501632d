//! Agents' client certificates, checked against the master's CA (`enrollment.ca_file`) as Wazuh's
//! authd checks them with OpenSSL: a chain from the agent's certificate to one of the CA file's
//! certificates, each signature and validity period checked, intermediates marked as CAs. Unlike
//! webpki (rustls' verifier), version 1 certificates are taken, since that is what Wazuh's own
//! instructions make (`openssl x509 -req` without extensions).
//!
//! [`ClientVerifier`] is the TLS side: on a node that checks the CA itself it requires a
//! certificate and checks it; on a node that forwards enrollments it asks for one without requiring
//! it, checks only that the client holds its key, and the chain goes to the master, which checks it
//! with [`ClientCa::verify`].

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Longest chain followed from the agent's certificate to the CA.
const MAX_DEPTH: usize = 5;

/// Why a client certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no client certificate was presented")]
    Missing,
    #[error("a certificate does not parse: {0}")]
    Malformed(String),
    #[error("a certificate of the chain is not valid now ({0})")]
    OutOfValidity(String),
    #[error("the certificate is not issued by the CA in enrollment.ca_file")]
    UnknownIssuer,
    #[error("an intermediate certificate ({0}) is not a CA")]
    NotACa(String),
    #[error("the chain is longer than {MAX_DEPTH}")]
    TooLong,
    #[error("cannot read the CA file {path}: {why}")]
    CaFile { path: String, why: String },
}

/// A certificate of the CA file, kept whole.
struct Anchor {
    der: Vec<u8>,
}

/// The CA certificates agents' certificates must chain to.
pub struct ClientCa {
    anchors: Vec<Anchor>,
    subjects: Vec<DistinguishedName>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa").field("anchors", &self.anchors.len()).finish()
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(CertError::Malformed(e.to_string())),
    }
}

fn subject_of(cert: &X509Certificate<'_>) -> String {
    wazuh_cluster_protocol::agent::enrollment::printable(&cert.subject().to_string()).into_owned()
}

fn valid_at(cert: &X509Certificate<'_>, now: UnixTime) -> Result<(), CertError> {
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let at = x509_parser::time::ASN1Time::from_timestamp(secs).map_err(|e| CertError::Malformed(e.to_string()))?;
    if cert.validity().is_valid_at(at) {
        Ok(())
    } else {
        Err(CertError::OutOfValidity(subject_of(cert)))
    }
}

/// Whether `issuer` signed `cert` (names match and the signature checks with its key).
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Whether `cert` may issue others: a version 3 certificate must say so (basicConstraints CA);
/// a version 1 certificate (no extensions) only as a self-signed trust anchor, as OpenSSL has it.
fn is_ca(cert: &X509Certificate<'_>) -> bool {
    match cert.basic_constraints() {
        Ok(Some(bc)) => bc.value.ca,
        _ => false,
    }
}

impl ClientCa {
    /// The certificates of a PEM file.
    pub fn load(path: &Path) -> Result<ClientCa, CertError> {
        let fail = |why: String| CertError::CaFile { path: path.display().to_string(), why };
        let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        Self::from_pem(&pem).map_err(|e| fail(e.to_string()))
    }

    pub fn from_pem(pem: &[u8]) -> Result<ClientCa, CertError> {
        use rustls::pki_types::pem::PemObject;
        let certs: Result<Vec<CertificateDer<'static>>, _> = CertificateDer::pem_slice_iter(pem).collect();
        let certs = certs.map_err(|e| CertError::Malformed(e.to_string()))?;
        if certs.is_empty() {
            return Err(CertError::Malformed("no certificate found".into()));
        }
        let mut anchors = Vec::new();
        let mut subjects = Vec::new();
        for der in certs {
            let cert = parse(&der)?;
            subjects.push(DistinguishedName::from(cert.subject().as_raw().to_vec()));
            anchors.push(Anchor { der: der.to_vec() });
        }
        Ok(ClientCa { anchors, subjects })
    }

    /// Checks `chain` (the agent's certificate first, then any intermediates it sent) at `now`.
    pub fn verify(&self, chain: &[&[u8]], now: UnixTime) -> Result<(), CertError> {
        let (leaf, rest) = chain.split_first().ok_or(CertError::Missing)?;
        let mut current = parse(leaf)?;
        valid_at(&current, now)?;
        let intermediates = rest.iter().map(|der| parse(der)).collect::<Result<Vec<_>, _>>()?;
        let anchors = self.anchors.iter().map(|a| parse(&a.der)).collect::<Result<Vec<_>, _>>()?;
        // The agent's own certificate in the CA file is trusted as it is (as OpenSSL's store has it).
        if anchors.iter().any(|a| a.as_raw() == current.as_raw()) {
            return Ok(());
        }
        for _ in 0..MAX_DEPTH {
            if let Some(anchor) = anchors.iter().find(|a| signed_by(&current, a)) {
                return valid_at(anchor, now);
            }
            let Some(next) = intermediates.iter().find(|i| signed_by(&current, i)) else {
                return Err(CertError::UnknownIssuer);
            };
            if !is_ca(next) {
                return Err(CertError::NotACa(subject_of(next)));
            }
            valid_at(next, now)?;
            current = next.clone();
        }
        Err(CertError::TooLong)
    }
}

/// The schemes a client may prove its key with, and how each is checked (ring, on the key of the
/// client's certificate: version 1 certificates included).
const SCHEMES: &[(SignatureScheme, &dyn ring::signature::VerificationAlgorithm)] = &[
    (SignatureScheme::ECDSA_NISTP256_SHA256, &ring::signature::ECDSA_P256_SHA256_ASN1),
    (SignatureScheme::ECDSA_NISTP384_SHA384, &ring::signature::ECDSA_P384_SHA384_ASN1),
    (SignatureScheme::ED25519, &ring::signature::ED25519),
    (SignatureScheme::RSA_PSS_SHA256, &ring::signature::RSA_PSS_2048_8192_SHA256),
    (SignatureScheme::RSA_PSS_SHA384, &ring::signature::RSA_PSS_2048_8192_SHA384),
    (SignatureScheme::RSA_PSS_SHA512, &ring::signature::RSA_PSS_2048_8192_SHA512),
    (SignatureScheme::RSA_PKCS1_SHA256, &ring::signature::RSA_PKCS1_2048_8192_SHA256),
    (SignatureScheme::RSA_PKCS1_SHA384, &ring::signature::RSA_PKCS1_2048_8192_SHA384),
    (SignatureScheme::RSA_PKCS1_SHA512, &ring::signature::RSA_PKCS1_2048_8192_SHA512),
];

/// The TLS side of client certificates on the enrollment port.
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    /// Checked here (required); `None`: asked for, not required, not checked here (a node that
    /// forwards enrollments: the master checks the chain).
    ca: Option<Arc<ClientCa>>,
}

impl ClientVerifier {
    /// Requires a certificate from `ca`.
    pub(crate) fn requiring(ca: Arc<ClientCa>) -> Arc<Self> {
        Arc::new(Self { ca: Some(ca) })
    }

    /// Asks for a certificate and takes any (or none), checking only that the client holds its key.
    pub fn collecting() -> Arc<Self> {
        Arc::new(Self { ca: None })
    }

    fn check_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let bad = |why: &str| rustls::Error::General(format!("client certificate: {why}"));
        let (_, alg) =
            SCHEMES.iter().find(|(s, _)| *s == dss.scheme).ok_or_else(|| bad("unsupported signature scheme"))?;
        let parsed = parse(cert).map_err(|e| bad(&e.to_string()))?;
        let key = &parsed.public_key().subject_public_key.data;
        ring::signature::UnparsedPublicKey::new(*alg, key)
            .verify(message, dss.signature())
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.ca.is_some()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match &self.ca {
            Some(ca) => &ca.subjects,
            None => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let Some(ca) = &self.ca else { return Ok(ClientCertVerified::assertion()) };
        let chain: Vec<&[u8]> =
            std::iter::once(end_entity.as_ref()).chain(intermediates.iter().map(|c| c.as_ref())).collect();
        ca.verify(&chain, now).map_err(|e| rustls::Error::General(format!("client certificate refused: {e}")))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 signs with PSS, ECDSA or EdDSA only.
        if matches!(
            dss.scheme,
            SignatureScheme::RSA_PKCS1_SHA256 | SignatureScheme::RSA_PKCS1_SHA384 | SignatureScheme::RSA_PKCS1_SHA512
        ) {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        self.check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.iter().map(|(s, _)| *s).collect()
    }
}
