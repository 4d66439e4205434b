//! Relay configuration: a TOML file, overridden by `STRATA_RELAY_*`
//! environment variables, over embedded defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything `strata-relay serve` needs to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory holding the SQLite database, keys and the TLS certificate.
    pub data_dir: PathBuf,
    /// Address the HTTPS listener binds.
    pub listen: SocketAddr,
    /// Database URL; empty means `sqlite://<data_dir>/strata.db`.
    /// A `postgres://` URL selects PostgreSQL.
    pub database_url: String,
    /// Whether anyone may create an account (and an organization) at `/register`.
    pub registration_open: bool,
    /// TLS certificate chain (PEM); empty means the self-signed one in the data directory.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM), with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Session lifetime in hours.
    pub session_hours: u32,
    /// Login attempts allowed per minute, per client address and per account.
    pub login_attempts_per_minute: u32,
    /// The URL owners reach the dashboard at (QR codes point here); empty
    /// means `https://<listen>`.
    pub public_url: String,
    /// MQTT broker host devices are told to connect to; empty means the
    /// external broker's host, else the host of `public_url`.
    pub broker_host: String,
    /// MQTT broker TLS port devices are told to connect to; 0 means the
    /// port `broker_listen` is bound to.
    pub broker_port: u16,
    /// Address the embedded MQTT broker (mutual TLS) listens on.
    pub broker_listen: SocketAddr,
    /// Which broker devices connect to: the embedded one, or an external
    /// mosquitto (see `strata-relay mosquitto-config`).
    pub broker: BrokerMode,
    /// `host:port` of the external broker's mutual-TLS listener (with `broker = "external"`).
    pub external_broker: String,
    /// Where the relay keeps the CRL of revoked devices for the external
    /// broker's `crlfile`; empty means `<data_dir>/broker/devices.crl`. It
    /// must be readable by mosquitto's user (the data directory is 0700).
    pub external_broker_crl: Option<PathBuf>,
    /// Lifetime of device certificates, days (renewed over MQTT before expiry).
    pub device_cert_days: u32,
    /// Address receiver workers bind their RIST ports on.
    pub rist_bind: std::net::IpAddr,
    /// Host devices send RIST to; empty means the broker host.
    pub rist_host: String,
    /// First UDP port of the RIST port pool.
    pub rist_port_first: u16,
    /// Last UDP port of the RIST port pool.
    pub rist_port_last: u16,
    /// The strata-receiver binary; empty means next to strata-relay, else the PATH.
    pub receiver_bin: Option<PathBuf>,
    /// A stream with no input for this many seconds is stopped (and the device told).
    pub stream_no_input_s: u64,
    /// A stream whose device is offline and sends nothing for this many seconds is stopped.
    pub stream_offline_grace_s: u64,
    /// Memory limit of each worker (systemd scope, where systemd runs).
    pub worker_memory_max: String,
    /// CPU quota of each worker (systemd scope, where systemd runs).
    pub worker_cpu_quota: String,
}

/// Which MQTT broker the device plane uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    /// rumqttd's router inside the relay, behind our own TLS sessions.
    Embedded,
    /// An external mosquitto with the dynamic-security plugin, administered by the relay.
    External,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("strata-data"),
            listen: "127.0.0.1:8443".parse().expect("valid default"),
            database_url: String::new(),
            registration_open: false,
            tls_cert: None,
            tls_key: None,
            session_hours: 12,
            login_attempts_per_minute: 5,
            public_url: String::new(),
            broker_host: String::new(),
            broker_port: 0,
            broker_listen: "127.0.0.1:8883".parse().expect("valid default"),
            broker: BrokerMode::Embedded,
            external_broker: String::new(),
            external_broker_crl: None,
            device_cert_days: 30,
            rist_bind: "127.0.0.1".parse().expect("valid default"),
            rist_host: String::new(),
            rist_port_first: 20_000,
            rist_port_last: 20_999,
            receiver_bin: None,
            stream_no_input_s: 60,
            stream_offline_grace_s: 30,
            worker_memory_max: "512M".into(),
            worker_cpu_quota: "150%".into(),
        }
    }
}

impl Config {
    /// Loads defaults, then the TOML file if given, then `STRATA_RELAY_*` variables
    /// (for example `STRATA_RELAY_LISTEN=0.0.0.0:443`).
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                anyhow::bail!("config file {} does not exist", file.display());
            }
            fig = fig.merge(Toml::file(file));
        }
        let cfg: Config = fig.merge(Env::prefixed("STRATA_RELAY_")).extract()?;
        if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
            anyhow::bail!("tls_cert and tls_key go together");
        }
        if !(1..=397).contains(&cfg.device_cert_days) {
            anyhow::bail!("device_cert_days must be 1 to 397");
        }
        if cfg.rist_port_last < cfg.rist_port_first.saturating_add(3) {
            anyhow::bail!("rist_port_first..rist_port_last must hold at least two port pairs");
        }
        if cfg.stream_no_input_s == 0 {
            anyhow::bail!("stream_no_input_s must be at least 1");
        }
        if cfg.broker == BrokerMode::External {
            cfg.external_broker_addr()?;
        }
        if cfg.login_attempts_per_minute == 0 {
            anyhow::bail!("login_attempts_per_minute must be at least 1");
        }
        Ok(cfg)
    }

    /// The dashboard's public URL, without a trailing slash.
    pub fn public_url(&self) -> String {
        if self.public_url.is_empty() {
            format!("https://{}", self.listen)
        } else {
            self.public_url.trim_end_matches('/').to_string()
        }
    }

    /// The broker host devices connect to.
    pub fn broker_host(&self) -> String {
        if !self.broker_host.is_empty() {
            return self.broker_host.clone();
        }
        if self.broker == BrokerMode::External
            && let Ok((host, _)) = self.external_broker_addr()
        {
            return host;
        }
        self.public_host()
    }

    /// The host of the public URL (devices enroll there).
    pub fn public_host(&self) -> String {
        url::Url::parse(&self.public_url())
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
            .unwrap_or_else(|| "localhost".into())
    }

    /// Host and port of the external broker.
    pub fn external_broker_addr(&self) -> anyhow::Result<(String, u16)> {
        let (host, port) = self
            .external_broker
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .filter(|(h, p)| !h.is_empty() && *p != 0)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "external_broker must be host:port (got {:?})",
                    self.external_broker
                )
            })?;
        Ok((host.to_string(), port))
    }

    /// The host devices send RIST to.
    pub fn rist_host(&self) -> String {
        if self.rist_host.is_empty() {
            self.broker_host()
        } else {
            self.rist_host.clone()
        }
    }

    /// The database URL, defaulting to SQLite in the data directory.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}/strata.db", self.data_dir.display())
        } else {
            self.database_url.clone()
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
mod tests {
    use super::*;

    #[test]
    fn file_then_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "relay.toml",
                "listen = \"127.0.0.1:9000\"\nregistration_open = true\n",
            )?;
            jail.set_env("STRATA_RELAY_LISTEN", "127.0.0.1:9001");
            let cfg = Config::load(Some(Path::new("relay.toml"))).expect("loads");
            assert_eq!(cfg.listen.port(), 9001);
            assert!(cfg.registration_open);
            assert!(cfg.database_url().starts_with("sqlite://"));
            Ok(())
        });
    }

    #[test]
    fn external_broker_needs_host_and_port() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("STRATA_RELAY_BROKER", "external");
            for bad in ["", "broker.example", "broker.example:0", ":8883", "h:port"] {
                jail.set_env("STRATA_RELAY_EXTERNAL_BROKER", bad);
                assert!(Config::load(None).is_err(), "{bad:?}");
            }
            jail.set_env("STRATA_RELAY_EXTERNAL_BROKER", "[::1]:8884");
            let cfg = Config::load(None).expect("loads");
            assert_eq!(cfg.external_broker_addr().unwrap(), ("::1".into(), 8884));
            assert_eq!(
                cfg.broker_host(),
                "::1",
                "devices are sent to the external broker"
            );
            jail.set_env("STRATA_RELAY_BROKER", "elsewhere");
            assert!(Config::load(None).is_err(), "unknown broker mode");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "listne = \"127.0.0.1:9000\"\n")?;
            assert!(Config::load(Some(Path::new("bad.toml"))).is_err());
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }
}
