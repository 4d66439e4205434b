//! Bonded RIST: one stream over several links at once, on standard RIST main
//! profile with PSK encryption, so any RIST receiver can take it.
//!
//! - [`BondedSender`]: one librist sender context with one peer per link; each
//!   peer sits behind a relay bound to the link's interface or source address.
//! - [`BondedReceiver`]: librist listens on one port per link, behind a kernel
//!   filter that drops and counts what is not RIST, and yields the
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
//! - the receiver ports' socket filter ([`port`](crate::port) is private),
//!   because librist drops garbage only after waking for it and logs it only
//!   now and then; finding librist's socket among our descriptors, because
//!   librist cannot be handed one;
//! - the controller, because librist's own balancing uses static weights;
//! - reading each outgoing datagram's RTP header ([`datagram`](crate::datagram),
//!   private; with a PSK, one AES block of a copy is decrypted with
//!   RustCrypto's `aes` and `pbkdf2`) and steering in the relays
//!   ([`steering`](crate::steering), private), because librist sends a
//!   retransmission back over whichever link the NACK came in on (the
//!   receiver's lowest-RTT link, usually the narrowest), answers the NACKs a
//!   25 ms reorder window raises for every packet of a slower link, and says
//!   neither which link lost a packet nor anything of the packets in flight on
//!   a link that dies.
//!
//! Why steer librist's sender instead of owning RIST's sender side (ARQ and
//! scheduling) in Rust: librist keeps the wire standard (GRE, RTCP, the PSK
//! scheme, key rotation, keepalives, buffer negotiation) and every receiver
//! reads it; the relays already see every datagram and own every link's
//! socket, so the decisions that cost the viewer (where a retransmission goes,
//! which NACKs to answer, what to resend when a link dies) can be made there.
//! What cannot be steered that way: a datagram keeps the nonce and GRE
//! sequence of the librist peer that made it, so sending media across links
//! is kept to retransmissions and rescues (a librist receiver derives a key
//! again whenever the nonce it sees changes).

pub mod controller;
mod datagram;
mod link;
mod log;
mod peer;
mod port;
mod psk;
mod receiver;
mod relay;
mod sender;
mod stats;
mod steering;
pub mod ts;

pub use link::{LinkBind, LinkSpec, LinkState};
pub use psk::{Psk, PskError, ensure_private};
pub use receiver::{BondedReceiver, DataCallback, ReceiveError, ReceiverConfig};
pub use sender::{BondedSender, SendError, SenderConfig};
pub use stats::{BondStats, FlowStats, LinkStats, PeerStats, PortStats};
