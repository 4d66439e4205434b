//! Enrollment, device side: the RFC 8628-shaped flow of `strata-proto`.
//! The device posts its CSR, shows `verification_uri_complete` as a QR code
//! (console, log, the status page) with the user code, and polls until the
//! owner has claimed it.

use std::sync::Arc;
use std::time::Duration;

use qrcode::QrCode;
use strata_proto::enrollment::{
    AUTHORIZE_PATH, DeviceAuthorizationRequest, DeviceAuthorizationResponse, DeviceCredentials,
    DeviceFacts, GRANT_TYPE, TOKEN_PATH, TokenError, TokenRequest,
};

use crate::config::AgentConfig;
use crate::identity::Identity;

/// What the owner needs to claim the device (also given to the embedding
/// program, e.g. a test acting as the owner).
#[derive(Debug, Clone)]
pub struct Pending {
    /// The code the owner compares.
    pub user_code: String,
    /// The QR code's target.
    pub verification_uri_complete: String,
}

/// The HTTPS client for the relay: only `relay_ca_file` is trusted when set,
/// else the system's CA bundle.
pub fn http_client(cfg: &AgentConfig) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("strata-agent/", env!("CARGO_PKG_VERSION")));
    let bundle = match &cfg.relay_ca_file {
        Some(p) => {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("relay_ca_file {}: {e}", p.display()))?
        }
        None => std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default(),
    };
    for cert in reqwest::Certificate::from_pem_bundle(&bundle)? {
        b = b.add_root_certificate(cert);
    }
    Ok(b.build()?)
}

/// What this device says about itself to the owner.
pub fn facts() -> DeviceFacts {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| {
                s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                    .to_string()
            })
            .filter(|s| !s.is_empty())
    };
    DeviceFacts {
        model: read("/proc/device-tree/model")
            .or_else(|| read("/sys/class/dmi/id/product_name"))
            .unwrap_or_else(|| "unknown board".into()),
        hostname: read("/proc/sys/kernel/hostname").unwrap_or_else(|| "strata".into()),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Runs the flow until the owner claims the device; stores and returns the
/// credentials. Expired or denied codes start over with new ones; network
/// errors are retried with backoff.
pub async fn enroll(
    cfg: &AgentConfig,
    identity: &mut Identity,
    on_pending: &(dyn Fn(&Pending) + Send + Sync),
) -> anyhow::Result<DeviceCredentials> {
    let http = http_client(cfg)?;
    let base = cfg.relay_base().to_string();
    let mut backoff = Backoff::default();
    loop {
        let auth = match authorize(&http, &base, identity).await {
            Ok(a) => {
                backoff.reset();
                a
            }
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "enrollment: the relay did not answer");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let pending = Pending {
            user_code: auth.user_code.clone(),
            verification_uri_complete: auth.verification_uri_complete.clone(),
        };
        show(&pending);
        on_pending(&pending);
        match poll(&http, &base, &auth).await {
            Poll::Issued(creds) => {
                identity.store((*creds).clone())?;
                tracing::info!(device_id = %creds.device_id, "enrolled");
                return Ok(*creds);
            }
            Poll::StartOver(why) => {
                tracing::warn!(reason = %why, "enrollment: starting over with a new code");
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    }
}

async fn authorize(
    http: &reqwest::Client,
    base: &str,
    identity: &Identity,
) -> anyhow::Result<DeviceAuthorizationResponse> {
    let req = DeviceAuthorizationRequest {
        csr_pem: identity.csr_pem()?,
        facts: facts(),
    };
    let resp = http
        .post(format!("{base}{AUTHORIZE_PATH}"))
        .json(&req)
        .send()
        .await?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("{status}: {}", body.chars().take(300).collect::<String>());
    }
    Ok(resp.json().await?)
}

enum Poll {
    Issued(Box<DeviceCredentials>),
    StartOver(String),
}

async fn poll(http: &reqwest::Client, base: &str, auth: &DeviceAuthorizationResponse) -> Poll {
    let mut interval = Duration::from_secs(auth.interval.clamp(1, 60));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(auth.expires_in.max(1));
    let body = TokenRequest {
        grant_type: GRANT_TYPE.into(),
        device_code: auth.device_code.clone(),
    };
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() >= deadline {
            return Poll::StartOver("the code expired".into());
        }
        let resp = match http
            .post(format!("{base}{TOKEN_PATH}"))
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "enrollment poll failed; retrying");
                continue;
            }
        };
        if resp.status().is_success() {
            match resp.json::<DeviceCredentials>().await {
                Ok(c) => return Poll::Issued(Box::new(c)),
                Err(e) => return Poll::StartOver(format!("unreadable credentials: {e}")),
            }
        }
        let err: TokenError = match resp.json().await {
            Ok(e) => e,
            Err(_) => continue,
        };
        match err.error.as_str() {
            "authorization_pending" => {}
            // RFC 8628 §3.5: add 5 seconds to the interval.
            "slow_down" => interval += Duration::from_secs(5),
            "access_denied" => return Poll::StartOver("the owner denied the request".into()),
            other => return Poll::StartOver(format!("{other}: {}", err.error_description)),
        }
    }
}

/// Puts the QR code and user code where the owner can see them: the console
/// (stderr, which the unit sends to the journal and the serial console) and
/// the log; the status page draws them from the same [`Pending`].
fn show(p: &Pending) {
    tracing::info!(
        user_code = %p.user_code,
        url = %p.verification_uri_complete,
        "enroll this device: open the URL (or scan the QR code) and check the code"
    );
    match QrCode::new(p.verification_uri_complete.as_bytes()) {
        Ok(code) => {
            let text = code
                .render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build();
            eprintln!(
                "\nTo enroll this device, scan this code or open\n  {}\nand check that it shows the code {}\n\n{text}\n",
                p.verification_uri_complete, p.user_code
            );
        }
        Err(e) => tracing::warn!(error = %e, "the enrollment URL does not fit a QR code"),
    }
}

/// The QR code of `url` as an SVG element.
pub fn qr_svg(url: &str) -> Option<String> {
    let code = QrCode::new(url.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color>()
            .min_dimensions(256, 256)
            .build(),
    )
}

/// Exponential backoff with jitter, 1 s to 30 s.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let base = 1000u64 << self.attempt.min(5);
        self.attempt += 1;
        let jitter = rand::random_range(0..=base / 4);
        Duration::from_millis((base + jitter).min(30_000))
    }

    /// Back to the shortest wait.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Shared callback type for [`enroll`].
pub type OnPending = Arc<dyn Fn(&Pending) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_thirty_seconds() {
        let mut b = Backoff::default();
        let first = b.next_wait();
        assert!(first >= Duration::from_secs(1) && first <= Duration::from_millis(1250));
        for _ in 0..10 {
            b.next_wait();
        }
        assert_eq!(b.next_wait(), Duration::from_secs(30));
        b.reset();
        assert!(b.next_wait() < Duration::from_secs(2));
    }

    #[test]
    fn facts_are_never_empty() {
        let f = facts();
        assert!(!f.model.is_empty() && !f.hostname.is_empty());
    }
}
