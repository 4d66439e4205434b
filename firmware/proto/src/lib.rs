//! The contract between a Strata device (`strata-agent`) and the relay
//! (`strata-relay`), shared by both so they cannot drift apart:
//!
//! - [`topic`]: the MQTT topic layout, one subtree per device;
//! - [`message`]: every message, each way, postcard-encoded behind a small
//!   versioned [`envelope`]: a payload from a newer or older protocol, or a
//!   malformed one, is refused with a reason, never a panic;
//! - [`enrollment`]: the JSON bodies of the RFC 8628-shaped enrollment over
//!   HTTPS (device authorization request, polling, the issued certificate).
//!
//! Golden vectors in `tests/vectors.txt` pin the wire format: a change that
//! alters the bytes of an existing message fails the tests and needs a new
//! protocol version.

pub mod enrollment;
pub mod envelope;
pub mod message;
pub mod topic;

pub use envelope::{DecodeError, MAX_PAYLOAD, PROTOCOL_VERSION, decode, encode};
pub use message::{Command, CommandBody, DeviceMessage, RelayMessage, Secret};
