//! Who may open a TLS connection to the broker: a certificate chain to the
//! device CA (rustls' WebPKI verifier) whose subject names a device that has
//! not been revoked. Revocation is checked here, in the handshake, so a
//! revoked device never gets as far as MQTT.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Device ids the broker refuses.
pub type Revoked = Arc<RwLock<HashSet<String>>>;

/// The device id a certificate names (its subject CN), if it is a usable one.
pub fn device_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    strata_proto::topic::valid_device_id(cn).then(|| cn.to_string())
}

/// WebPKI chain verification plus the revoked set.
#[derive(Debug)]
pub struct DeviceVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Revoked,
}

impl DeviceVerifier {
    /// Trusts certificates issued by `ca_pem`, except those of revoked devices.
    pub fn new(ca_pem: &str, revoked: Revoked) -> anyhow::Result<DeviceVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        Ok(DeviceVerifier { inner, revoked })
    }
}

impl ClientCertVerifier for DeviceVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let Some(id) = device_id(end_entity) else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        };
        if self.revoked.read().expect("revoked set").contains(&id) {
            tracing::warn!(device = %id, "revoked device refused at the TLS handshake");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
