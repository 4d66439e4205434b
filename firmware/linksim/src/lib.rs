//! Emulated cellular links for tests, benchmarks and the demo.
//!
//! The kernel on our build machines has no `netem`, so loss, delay, jitter,
//! rate limits and outages are emulated in user space: each link is a UDP relay
//! on loopback between a sender and a receiver ([`LinkSim`]), driven by a TOML
//! description with an optional timeline ([`SimConfig`]). Every random choice
//! comes from a seeded generator, so a run's verdicts are reproducible.
//!
//! What the model does per datagram is described in [`shaper`].

pub mod config;
mod relay;
pub mod shaper;

pub use config::{ConfigError, GilbertElliott, Impairment, LinkConfig, LinkEvent, SimConfig};
pub use relay::{DirectionStats, LinkSim, LinkStats};
