//! Enrollment over HTTPS, shaped like the OAuth 2.0 device authorization
//! grant (RFC 8628). JSON bodies; field names follow the RFC where it has them.
//!
//! 1. The device `POST`s [`DeviceAuthorizationRequest`] (its CSR and facts) to
//!    [`AUTHORIZE_PATH`] and gets [`DeviceAuthorizationResponse`].
//! 2. It shows `verification_uri_complete` as a QR code and `user_code`.
//! 3. The owner opens it, logs in, checks the user code, names the device.
//! 4. The device polls [`TOKEN_PATH`] with [`TokenRequest`] every `interval`
//!    seconds: [`TokenError`] until confirmed, then [`DeviceCredentials`].

use serde::{Deserialize, Serialize};

/// Where the device asks for a code.
pub const AUTHORIZE_PATH: &str = "/enroll/device/authorize";
/// Where the device polls.
pub const TOKEN_PATH: &str = "/enroll/device/token";
/// The grant type of the poll (RFC 8628 §3.4).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// What the device says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFacts {
    /// Board model ("Orange Pi 5 Plus").
    pub model: String,
    /// Hostname.
    pub hostname: String,
    /// Agent version.
    pub agent_version: String,
}

/// Step 1: the device's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceAuthorizationRequest {
    /// PKCS#10 CSR (PEM) for the key the device generated and keeps.
    pub csr_pem: String,
    /// Facts shown to the owner when claiming.
    pub facts: DeviceFacts,
}

/// Step 1: the relay's answer (RFC 8628 §3.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceAuthorizationResponse {
    /// Secret the device polls with.
    pub device_code: String,
    /// Short code the owner compares ("BCDF-GHJK").
    pub user_code: String,
    /// Page where the owner types the user code.
    pub verification_uri: String,
    /// The same page with the code filled in (the QR code).
    pub verification_uri_complete: String,
    /// Seconds until the codes expire.
    pub expires_in: u64,
    /// Seconds between polls.
    pub interval: u64,
}

/// Step 4: a poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Must be [`GRANT_TYPE`].
    pub grant_type: String,
    /// From the authorization response.
    pub device_code: String,
}

/// Step 4: not yet, or never (RFC 8628 §3.5 error codes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenError {
    /// `authorization_pending`, `slow_down`, `access_denied`, `expired_token`
    /// or `invalid_grant` (unknown or already used code).
    pub error: String,
    /// Human text.
    pub error_description: String,
}

/// Where the device's control channel goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerAddress {
    /// Host name or address.
    pub host: String,
    /// TLS port.
    pub port: u16,
}

/// Step 4: success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCredentials {
    /// The id the relay gave the device (its certificate's subject).
    pub device_id: String,
    /// Device certificate, then intermediates (PEM).
    pub certificate_chain_pem: String,
    /// The device CA to trust for the broker (PEM).
    pub ca_pem: String,
    /// MQTT over TLS.
    pub broker: BrokerAddress,
    /// Certificate expiry, ms since the epoch (renew before).
    pub not_after_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes() {
        let r: DeviceAuthorizationRequest = serde_json::from_str(
            r#"{"csr_pem":"x","facts":{"model":"m","hostname":"h","agent_version":"0.1.0"}}"#,
        )
        .unwrap();
        assert_eq!(r.facts.model, "m");
        assert!(
            serde_json::from_str::<TokenRequest>(r#"{"grant_type":"g","device_code":"d","x":1}"#)
                .is_err()
        );
    }
}
