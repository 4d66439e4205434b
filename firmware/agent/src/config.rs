//! `/etc/strata/agent.toml`: what the image ships (no secret) plus, for
//! development and the demo, emulated links. The format is the one
//! documented in `device/config/agent.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The agent's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Relay the device enrolls with (HTTPS); the broker and RIST ingest are
    /// learned from it.
    pub relay_url: String,
    /// Trust only this certificate (PEM) for `relay_url`, for a relay with a
    /// self-signed certificate; absent means the system's CA bundle.
    #[serde(default)]
    pub relay_ca_file: Option<PathBuf>,
    /// Persistent state: key, certificate, settings.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Video files directly in this directory (mp4, mkv, mov, ts, m2ts,
    /// webm, flv) are offered as inputs, streamed in a loop.
    #[serde(default = "default_media_dir")]
    pub media_dir: PathBuf,
    /// `tracing` filter when `RUST_LOG` is unset.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Which interfaces are bonded.
    #[serde(default)]
    pub links: LinksConfig,
    /// Which media inputs are offered.
    #[serde(default)]
    pub inputs: InputsConfig,
    /// The local status page.
    #[serde(default)]
    pub status_page: StatusPageConfig,
    /// Where ModemManager is.
    #[serde(default)]
    pub modems: ModemsConfig,
    /// Emulated links instead of real interfaces (development, demo, tests).
    #[serde(default)]
    pub simulation: Option<SimulationConfig>,
    /// Self-update.
    #[serde(default)]
    pub update: UpdateConfig,
}

/// `[update]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// The release public key (64 hex digits), for a build without one baked
    /// in (`STRATA_RELEASE_PUBKEY` at build time wins; this is for
    /// development and tests). Without either, updates are refused.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// A new version that has not reached the relay this many seconds after
    /// it started is stopped and the previous one runs again.
    #[serde(default = "default_trial_s")]
    pub trial_s: u64,
    /// Largest release accepted, bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn default_trial_s() -> u64 {
    120
}

fn default_max_bytes() -> u64 {
    256 << 20
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            public_key_file: None,
            trial_s: default_trial_s(),
            max_bytes: default_max_bytes(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    "/var/lib/strata".into()
}

fn default_media_dir() -> PathBuf {
    "/var/lib/strata/media".into()
}

fn default_log_level() -> String {
    "info".into()
}

/// `[links]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinksConfig {
    /// Use every activated Ethernet, Wi-Fi and modem interface NetworkManager
    /// reports (when `include` is empty and there is no `[simulation]`).
    #[serde(default = "yes")]
    pub auto_detect: bool,
    /// D-Bus address of NetworkManager's bus; absent means the system bus.
    #[serde(default)]
    pub bus: Option<String>,
    /// Interfaces never used for streaming.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Use only these interfaces.
    #[serde(default)]
    pub include: Vec<String>,
}

impl Default for LinksConfig {
    fn default() -> Self {
        Self {
            auto_detect: true,
            bus: None,
            exclude: Vec::new(),
            include: Vec::new(),
        }
    }
}

/// `[inputs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsConfig {
    /// Offer every V4L2 capture device.
    #[serde(default = "yes")]
    pub auto_detect: bool,
    /// Offer this capture device even if detection misses it.
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// List the built-in test pattern in the inventory (it is listed anyway
    /// when there is no other input, and a relay may always ask for it).
    #[serde(default)]
    pub test_pattern: bool,
}

impl Default for InputsConfig {
    fn default() -> Self {
        Self {
            auto_detect: true,
            device: None,
            test_pattern: false,
        }
    }
}

/// `[modems]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModemsConfig {
    /// Read modems from ModemManager.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// D-Bus address of ModemManager's bus; absent means the system bus.
    #[serde(default)]
    pub bus: Option<String>,
}

impl Default for ModemsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bus: None,
        }
    }
}

/// `[status_page]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusPageConfig {
    /// Address the page listens on; absent means no page.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// `[simulation]`: each link is a `strata-linksim` relay on loopback in front
/// of the relay's RIST port, with the impairments given here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationConfig {
    /// Seed of the emulated links' random choices.
    #[serde(default)]
    pub seed: u64,
    /// The emulated links, in order.
    #[serde(rename = "link", default)]
    pub links: Vec<SimulatedLink>,
}

/// One emulated link.
#[derive(Debug, Clone, Deserialize)]
pub struct SimulatedLink {
    /// Interface name it stands for (`wwan0`).
    pub name: String,
    /// Rate, delay, loss… as in `strata-linksim`.
    #[serde(flatten)]
    pub impairment: strata_linksim::Impairment,
    /// Changes over time, from the start of each stream.
    #[serde(default, rename = "event")]
    pub events: Vec<strata_linksim::LinkEvent>,
}

fn yes() -> bool {
    true
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the position.
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl AgentConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.relay_url.trim_end_matches('/');
        if !url.starts_with("https://") || url.len() <= "https://".len() {
            return Err(ConfigError::Invalid(format!(
                "relay_url must be an https:// URL, not {:?}",
                self.relay_url
            )));
        }
        if let Some(sim) = &self.simulation {
            if sim.links.is_empty() {
                return Err(ConfigError::Invalid(
                    "[simulation] needs at least one [[simulation.link]]".into(),
                ));
            }
            let mut names: Vec<&str> = sim.links.iter().map(|l| l.name.as_str()).collect();
            names.sort();
            names.dedup();
            if names.len() != sim.links.len() {
                return Err(ConfigError::Invalid(
                    "[[simulation.link]] names must be unique".into(),
                ));
            }
        }
        Ok(())
    }

    /// The relay's base URL without a trailing slash.
    pub fn relay_base(&self) -> &str {
        self.relay_url.trim_end_matches('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_config_parses() {
        let text = include_str!("../../../device/config/agent.toml");
        let cfg: AgentConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/strata"));
        assert!(cfg.links.auto_detect && cfg.simulation.is_none());
    }

    #[test]
    fn simulation_links() {
        let cfg: AgentConfig = toml::from_str(
            r#"
relay_url = "https://127.0.0.1:8443"
[simulation]
seed = 3
[[simulation.link]]
name = "wwan0"
rate_kbps = 2000
delay_ms = 20
loss_percent = 0.5
[[simulation.link.event]]
at_s = 5
up = false
"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let sim = cfg.simulation.unwrap();
        assert_eq!(sim.links[0].impairment.rate_kbps, Some(2000));
        assert_eq!(sim.links[0].events[0].up, Some(false));
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let e = toml::from_str::<AgentConfig>("relay_url = \"https://r\"\nbogus = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let cfg: AgentConfig = toml::from_str("relay_url = \"http://r\"").unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("https"));
        let cfg: AgentConfig = toml::from_str("relay_url = \"https://r\"\n[simulation]\n").unwrap();
        assert!(cfg.validate().is_err());
    }
}
