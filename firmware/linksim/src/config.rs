//! The TOML description of a set of emulated links and their timelines.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// Why a link configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("invalid link configuration: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is out of range or inconsistent.
    #[error("invalid link configuration: {0}")]
    Invalid(String),
}

/// A set of links relayed by one emulator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of every random choice (loss, bursts, jitter); same seed, same verdicts.
    #[serde(default)]
    pub seed: u64,
    /// The links, in order.
    #[serde(rename = "link")]
    pub links: Vec<LinkConfig>,
}

/// One emulated link: a UDP relay from `listen` to `target` and back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Name shown in stats and used by timeline events (e.g. `wwan0`).
    pub name: String,
    /// Loopback address the sender sends to.
    pub listen: SocketAddr,
    /// Loopback address the relay forwards to (the receiver).
    pub target: SocketAddr,
    /// How the link treats traffic; applies to the uplink (sender to receiver).
    /// The downlink gets the same delay, jitter, loss and outages, but no rate limit.
    #[serde(flatten)]
    pub impairment: Impairment,
    /// Changes over time, relative to the start of the emulator.
    #[serde(default, rename = "event")]
    pub events: Vec<LinkEvent>,
}

/// The impairments of one link.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Impairment {
    /// Bottleneck rate in kbit/s; absent means unlimited.
    #[serde(default)]
    pub rate_kbps: Option<u32>,
    /// Bottleneck buffer in milliseconds at `rate_kbps`; packets that would wait
    /// longer are tail-dropped, as a modem's buffer does.
    #[serde(default = "default_queue_ms")]
    pub queue_ms: u32,
    /// One-way propagation delay in milliseconds (RTT is twice this).
    #[serde(default)]
    pub delay_ms: f64,
    /// Uniform jitter of +/- this many milliseconds; packets are never reordered.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Independent random loss, in percent.
    #[serde(default)]
    pub loss_percent: f64,
    /// Bursty loss on top of the random loss.
    #[serde(default)]
    pub burst: Option<GilbertElliott>,
    /// Whether the link starts up (true) or dark (false).
    #[serde(default = "default_up")]
    pub up: bool,
}

fn default_queue_ms() -> u32 {
    300
}

fn default_up() -> bool {
    true
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            rate_kbps: None,
            queue_ms: default_queue_ms(),
            delay_ms: 0.0,
            jitter_ms: 0.0,
            loss_percent: 0.0,
            burst: None,
            up: true,
        }
    }
}

/// Two-state (Gilbert–Elliott) burst loss: a good state without burst loss and a
/// bad state that loses `loss_in_bad_percent` of packets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GilbertElliott {
    /// Per-packet probability, in percent, of moving from good to bad.
    pub enter_bad_percent: f64,
    /// Per-packet probability, in percent, of moving from bad back to good.
    pub leave_bad_percent: f64,
    /// Loss in the bad state, in percent.
    #[serde(default = "hundred")]
    pub loss_in_bad_percent: f64,
}

fn hundred() -> f64 {
    100.0
}

/// A change to one link at a point of the timeline. Absent fields keep their value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEvent {
    /// Seconds after the emulator started.
    pub at_s: f64,
    /// Link goes dark (`false`) or comes back (`true`).
    #[serde(default)]
    pub up: Option<bool>,
    /// New rate limit in kbit/s.
    #[serde(default)]
    pub rate_kbps: Option<u32>,
    /// New one-way delay.
    #[serde(default)]
    pub delay_ms: Option<f64>,
    /// New jitter.
    #[serde(default)]
    pub jitter_ms: Option<f64>,
    /// New random loss.
    #[serde(default)]
    pub loss_percent: Option<f64>,
}

impl LinkEvent {
    /// Applies the event's changes to `imp`.
    pub fn apply(&self, imp: &mut Impairment) {
        if let Some(up) = self.up {
            imp.up = up;
        }
        if let Some(rate) = self.rate_kbps {
            imp.rate_kbps = Some(rate);
        }
        if let Some(d) = self.delay_ms {
            imp.delay_ms = d;
        }
        if let Some(j) = self.jitter_ms {
            imp.jitter_ms = j;
        }
        if let Some(l) = self.loss_percent {
            imp.loss_percent = l;
        }
    }
}

impl SimConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: SimConfig = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Checks ranges, unique names and that every address is on loopback.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.links.is_empty() {
            return bad("no [[link]] given".into());
        }
        for (i, l) in self.links.iter().enumerate() {
            if l.name.is_empty() {
                return bad(format!("link #{i} has an empty name"));
            }
            if self.links[..i].iter().any(|o| o.name == l.name) {
                return bad(format!("link name {:?} is used twice", l.name));
            }
            // Test traffic must never leave the machine.
            for (what, a) in [("listen", l.listen), ("target", l.target)] {
                if !a.ip().is_loopback() {
                    return bad(format!(
                        "link {:?}: {what} address {a} is not on loopback",
                        l.name
                    ));
                }
            }
            check_impairment(&l.name, &l.impairment)?;
            for e in &l.events {
                if !(e.at_s.is_finite() && e.at_s >= 0.0) {
                    return bad(format!(
                        "link {:?}: event time {} is invalid",
                        l.name, e.at_s
                    ));
                }
                let mut imp = l.impairment.clone();
                e.apply(&mut imp);
                check_impairment(&l.name, &imp)?;
            }
        }
        Ok(())
    }
}

fn check_impairment(name: &str, imp: &Impairment) -> Result<(), ConfigError> {
    let pct = |v: f64| v.is_finite() && (0.0..=100.0).contains(&v);
    let ms = |v: f64| v.is_finite() && (0.0..=60_000.0).contains(&v);
    let mut problems = Vec::new();
    if imp.rate_kbps == Some(0) {
        problems.push("rate_kbps must be > 0 (use up = false for a dead link)");
    }
    if !ms(imp.delay_ms) {
        problems.push("delay_ms must be within 0..=60000");
    }
    if !ms(imp.jitter_ms) {
        problems.push("jitter_ms must be within 0..=60000");
    }
    if !pct(imp.loss_percent) {
        problems.push("loss_percent must be within 0..=100");
    }
    if let Some(b) = &imp.burst
        && !(pct(b.enter_bad_percent) && pct(b.leave_bad_percent) && pct(b.loss_in_bad_percent))
    {
        problems.push("burst percentages must be within 0..=100");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "link {name:?}: {}",
            problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        seed = 7
        [[link]]
        name = "wwan0"
        listen = "127.0.0.1:20000"
        target = "127.0.0.1:15000"
        rate_kbps = 1000
        delay_ms = 20
        jitter_ms = 2
        loss_percent = 0.5
        burst = { enter_bad_percent = 1, leave_bad_percent = 30 }
        [[link.event]]
        at_s = 10
        up = false
        [[link.event]]
        at_s = 20
        up = true
    "#;

    #[test]
    fn parses_example() {
        let c = SimConfig::from_toml(EXAMPLE).unwrap();
        assert_eq!(c.seed, 7);
        let l = &c.links[0];
        assert_eq!(l.impairment.rate_kbps, Some(1000));
        assert_eq!(l.impairment.queue_ms, 300);
        assert_eq!(
            l.impairment.burst.as_ref().unwrap().loss_in_bad_percent,
            100.0
        );
        assert_eq!(l.events.len(), 2);
        assert_eq!(l.events[0].up, Some(false));
    }

    #[test]
    fn refuses_non_loopback() {
        let t = EXAMPLE.replace("127.0.0.1:15000", "192.0.2.1:15000");
        let e = SimConfig::from_toml(&t).unwrap_err().to_string();
        assert!(e.contains("not on loopback"), "{e}");
    }

    #[test]
    fn refuses_bad_values() {
        for (from, to, want) in [
            ("loss_percent = 0.5", "loss_percent = 150", "loss_percent"),
            ("rate_kbps = 1000", "rate_kbps = 0", "rate_kbps"),
            ("at_s = 10", "at_s = -1", "event time"),
            (
                "jitter_ms = 2",
                "jitter_ms = 2\ncolour = 3",
                "unknown field",
            ),
        ] {
            let e = SimConfig::from_toml(&EXAMPLE.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
    }

    #[test]
    fn refuses_duplicate_names() {
        let t = format!(
            "{EXAMPLE}\n[[link]]\nname = \"wwan0\"\nlisten = \"127.0.0.1:20001\"\ntarget = \"127.0.0.1:15002\"\n"
        );
        let e = SimConfig::from_toml(&t).unwrap_err().to_string();
        assert!(e.contains("used twice"), "{e}");
    }
}
