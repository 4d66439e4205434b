//! The device CA: signs the certificates devices use for mutual TLS to the
//! broker, and the broker's own server certificate. Created on first start
//! in `<data_dir>/ca/` (key 0600). Devices send a CSR for a key they keep;
//! the CA takes only the public key from it and decides everything else
//! (subject, lifetime, usages), so a device cannot ask for more.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Serial number, hex.
    pub serial: String,
    /// Expiry, ms since the epoch.
    pub not_after_ms: i64,
}

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Not a CSR, or its signature does not verify.
    #[error("the certificate signing request is not valid: {0}")]
    Invalid(String),
}

/// The device CA.
pub struct DeviceCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl std::fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceCa(..)")
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

impl DeviceCa {
    /// Opens the CA in `dir`, creating it (10 years) if absent.
    pub fn open_or_create(dir: &Path) -> anyhow::Result<DeviceCa> {
        let cert_path = dir.join("device-ca.pem");
        let key_path = dir.join("device-ca.key");
        if !cert_path.exists() {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            let key = KeyPair::generate().context("generating the device CA key")?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "Strata device CA");
            dn.push(DnType::OrganizationName, "strata");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let now = OffsetDateTime::now_utc();
            params.not_before = now - Duration::hours(1);
            params.not_after = now + Duration::days(3650);
            let cert = params.self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            fs::write(&cert_path, cert.pem())?;
            tracing::info!(cert = %cert_path.display(), "created the device CA");
        }
        let mode = fs::metadata(&key_path)?.permissions().mode();
        anyhow::ensure!(
            mode & 0o077 == 0,
            "{} is readable by others; chmod 600 it",
            key_path.display()
        );
        let ca_pem = fs::read_to_string(&cert_path)?;
        let key = KeyPair::from_pem(&fs::read_to_string(&key_path)?)
            .context("reading the device CA key")?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, key).context("reading the device CA certificate")?;
        Ok(DeviceCa { issuer, ca_pem })
    }

    /// The CA certificate (PEM), for devices and brokers to trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Checks that a CSR parses and its signature verifies.
    pub fn check_csr(&self, csr_pem: &str) -> Result<(), CsrError> {
        CertificateSigningRequestParams::from_pem(csr_pem)
            .map(|_| ())
            .map_err(|e| CsrError::Invalid(e.to_string()))
    }

    /// Signs a device's CSR: subject CN and O = `device_id`, client auth
    /// only, valid for `days`.
    pub fn sign_device(
        &self,
        csr_pem: &str,
        device_id: &str,
        days: u32,
    ) -> Result<Issued, CsrError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CsrError::Invalid(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device_id);
        // rumqttd-style brokers take the client's identity from O.
        dn.push(DnType::OrganizationName, device_id);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, &csr.public_key, days)
    }

    /// A server certificate for the broker's TLS listener.
    pub fn sign_server(&self, names: &[String], days: u32) -> anyhow::Result<(Issued, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("strata-broker"),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issued = self
            .issue(params, &key, days)
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok((issued, key.serialize_pem()))
    }

    /// A client certificate for the relay's own control-plane connection to
    /// an external broker: CN [`crate::broker::CONTROL_CLIENT_ID`], which is
    /// not a valid device id, so no device certificate can carry it.
    pub fn sign_relay_client(&self, days: u32) -> anyhow::Result<(Issued, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, crate::broker::CONTROL_CLIENT_ID);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let issued = self
            .issue(params, &key, days)
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok((issued, key.serialize_pem()))
    }

    /// A CRL (PEM) listing `serials` (hex, as [`Issued::serial`]), for an
    /// external broker. Valid for 397 days: an expired CRL makes OpenSSL
    /// refuse every client, and the relay writes a new one at each start
    /// and each revocation.
    pub fn crl(&self, serials: &[String]) -> anyhow::Result<String> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = serials
            .iter()
            .map(|s| {
                let bytes = crate::hex_decode(s)
                    .ok_or_else(|| anyhow::anyhow!("certificate serial {s:?} is not hex"))?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(397),
            // Seconds since the epoch: increases with every CRL written.
            crl_number: SerialNumber::from(now.unix_timestamp() as u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
        days: u32,
    ) -> Result<Issued, CsrError> {
        let serial: [u8; 16] = rand::random();
        let serial = {
            let mut s = serial;
            s[0] &= 0x7f; // positive
            s
        };
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        let not_after = now + Duration::days(i64::from(days));
        params.not_after = not_after;
        params.is_ca = IsCa::NoCa;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| CsrError::Invalid(e.to_string()))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: crate::hex_lower(&serial),
            not_after_ms: (not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CSR as a device makes it.
    pub fn device_csr() -> (KeyPair, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "i-want-to-be-someone-else");
        let csr = params.serialize_request(&key).unwrap();
        (key, csr.pem().unwrap())
    }

    #[test]
    fn signs_device_csrs_with_our_subject() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = DeviceCa::open_or_create(&tmp.path().join("ca")).unwrap();
        let (_key, csr) = device_csr();
        let issued = ca.sign_device(&csr, "dev123", 30).unwrap();
        assert!(issued.cert_pem.contains("BEGIN CERTIFICATE"));
        let der = pem_der(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "dev123"
        );
        assert!(cert.issuer().to_string().contains("Strata device CA"));
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, 30);
        // Reopening keeps the same CA.
        let again = DeviceCa::open_or_create(&tmp.path().join("ca")).unwrap();
        assert_eq!(again.ca_pem(), ca.ca_pem());
        assert_eq!(
            std::fs::metadata(tmp.path().join("ca/device-ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    #[test]
    fn refuses_garbage_and_tampered_csrs() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = DeviceCa::open_or_create(tmp.path()).unwrap();
        assert!(ca.sign_device("not a csr", "d", 30).is_err());
        let (_k, csr) = device_csr();
        let mut der = pem_der(&csr);
        let n = der.len();
        der[n - 10] ^= 0xff; // break the signature
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        assert!(ca.sign_device(&tampered, "d", 30).is_err());
    }

    #[test]
    fn crl_lists_the_revoked_serials_and_is_signed_by_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = DeviceCa::open_or_create(&tmp.path().join("ca")).unwrap();
        let (_key, csr) = device_csr();
        let issued = ca.sign_device(&csr, "dev123", 30).unwrap();
        let crl = ca.crl(std::slice::from_ref(&issued.serial)).unwrap();
        let der = pem_der(&crl);
        let (_, parsed) = x509_parser::parse_x509_crl(&der).unwrap();
        let serials: Vec<String> = parsed
            .iter_revoked_certificates()
            .map(|r| crate::hex_lower(r.raw_serial()))
            .collect();
        assert_eq!(serials, vec![issued.serial]);
        let ca_der = pem_der(ca.ca_pem());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        parsed
            .verify_signature(ca_cert.public_key())
            .expect("signed by the device CA");
        assert!(ca.crl(&["not hex".into()]).is_err());
    }

    fn pem_der(s: &str) -> Vec<u8> {
        pem::parse(s).unwrap().into_contents()
    }
}
