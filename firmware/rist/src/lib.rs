//! Bonded RIST: one stream over several links at once, on standard RIST main
//! profile with PSK encryption, so any RIST receiver can take it.
//!
//! - [`BondedSender`]: one librist sender context with one peer per link; each
//!   peer sits behind a relay bound to the link's interface or source address.
//! - [`BondedReceiver`]: listens on one port per link and yields the
//!   reassembled, in-order MPEG-TS.
//! - [`controller`]: recomputes per-link weights from live stats so each link
//!   carries what it can, parks dark links, and publishes the usable capacity.
//!
//! What we hand-write, and why:
//! - the bindings (`strata-rist-sys`), because crates.io's `librist-sys`
//!   vendors a 2021 librist and cannot cross-build;
//! - the per-link relays ([`relay`](crate::relay) is private), because librist
//!   0.2.7 cannot bind a unicast peer to an interface, and counting every
//!   datagram is how we see a link go dark within a few hundred ms;
//! - the controller, because librist's own balancing uses static weights.

pub mod controller;
mod link;
mod log;
mod peer;
mod psk;
mod receiver;
mod relay;
mod sender;
mod stats;
pub mod ts;

pub use link::{LinkBind, LinkSpec, LinkState};
pub use psk::{Psk, PskError, ensure_private};
pub use receiver::{BondedReceiver, DataCallback, ReceiveError, ReceiverConfig};
pub use sender::{BondedSender, SendError, SenderConfig};
pub use stats::{BondStats, FlowStats, LinkStats, PeerStats, PortStats};
