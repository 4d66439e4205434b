//! Every message on the device's MQTT subtree. Devices publish
//! [`DeviceMessage`]s; the relay publishes [`RelayMessage`]s. Each topic
//! carries one kind (see [`crate::topic::Kind`]); a message on the wrong topic
//! is refused by the receiver.
//!
//! Fields are only ever appended at the end of a variant list, never
//! reordered: postcard encodes enum variants by index and structs by order.

use serde::{Deserialize, Serialize};

/// A secret (stream PSK, SIM PIN) that must not reach a log: `Debug` prints
/// `Secret(..)`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a device publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeviceMessage {
    /// Presence (retained; the last will says offline).
    Status(Status),
    /// Hardware as the owner thinks of it (retained, sent on change).
    Inventory(Inventory),
    /// Live numbers, about once a second.
    Telemetry(Telemetry),
    /// The answer to a command.
    Reply(Reply),
    /// Something happened.
    Event(Event),
    /// A certificate signing request for renewal (PEM).
    Renew {
        /// PKCS#10 CSR for the device's existing key.
        csr_pem: String,
    },
}

/// What the relay publishes to a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RelayMessage {
    /// Do something, and reply.
    Command(Command),
}

/// Device presence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Whether the device is up (false in the last will).
    pub online: bool,
    /// Agent version.
    pub agent_version: String,
    /// Changes at every boot, so the relay sees restarts.
    pub boot_id: String,
    /// The stream being sent, if any.
    pub streaming: Option<String>,
}

/// The device's hardware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// Network links.
    pub links: Vec<Link>,
    /// Cellular modems.
    pub modems: Vec<Modem>,
    /// Media inputs.
    pub inputs: Vec<Input>,
}

/// Kind of network link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkKind {
    /// Cellular modem.
    Cellular,
    /// Wired Ethernet.
    Ethernet,
    /// Wi-Fi.
    Wifi,
    /// Anything else (emulated links in simulation).
    Other,
}

/// One network interface the bond can use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// Kind.
    pub kind: LinkKind,
    /// Connected with an address.
    pub up: bool,
    /// The modem behind it, if cellular.
    pub modem: Option<String>,
}

/// SIM state as ModemManager reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimState {
    /// No SIM.
    Missing,
    /// Needs a PIN (or PUK).
    Locked,
    /// Usable.
    Ready,
    /// Not reported.
    Unknown,
}

/// One cellular modem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Modem {
    /// Stable id (equipment identifier).
    pub id: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// IMEI.
    pub imei: String,
    /// SIM state.
    pub sim: SimState,
    /// Registered operator.
    pub operator: Option<String>,
    /// Access technology (lte, 5gnr, umts...).
    pub access_tech: String,
    /// Signal quality, percent.
    pub signal_percent: u8,
    /// LTE/5G RSRP, dBm.
    pub rsrp_dbm: Option<f32>,
    /// LTE/5G RSRQ, dB.
    pub rsrq_db: Option<f32>,
    /// LTE/5G SINR, dB.
    pub sinr_db: Option<f32>,
    /// Enabled by the owner.
    pub enabled: bool,
    /// Configured APN.
    pub apn: Option<String>,
    /// Data interface.
    pub interface: Option<String>,
    /// Whether it carries data, and if not, why.
    pub data: ModemData,
}

/// Whether a modem carries data, and if not, why (the agent's bearer keeper
/// decides it from ModemManager's and NetworkManager's states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModemData {
    /// Not looked at yet (or the agent does not manage modem data here).
    Unknown,
    /// Its data bearer is up with an IPv4 address: a bond link.
    Connected,
    /// The data connection is being brought up.
    Connecting,
    /// Turned off by the owner.
    Disabled,
    /// No SIM in the modem.
    NoSim,
    /// The SIM needs its PIN.
    SimPinRequired,
    /// The SIM needs its PUK (too many wrong PINs).
    SimPukLocked,
    /// Locked by another code (a network or operator lock).
    SimLocked,
    /// Not registered: searching, no signal.
    Searching,
    /// The network refused the registration.
    RegistrationDenied,
    /// Registered on a visited network and roaming is not allowed.
    RoamingNotAllowed,
    /// The data bearer failed or dropped; retried with backoff.
    BearerFailed {
        /// NetworkManager's `NMDeviceStateReason` code.
        nm_reason: u32,
    },
}

/// Kind of media input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputKind {
    /// V4L2 capture (camera, HDMI capture).
    V4l2,
    /// A media file, looped.
    File,
    /// Built-in test pattern with tone.
    TestPattern,
}

/// One media input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// Id the encoder settings refer to.
    pub id: String,
    /// Kind.
    pub kind: InputKind,
    /// Human name.
    pub name: String,
    /// Formats as "FOURCC WIDTHxHEIGHT@FPS".
    pub formats: Vec<String>,
}

/// Link state as the bond sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkState {
    /// Carrying its share.
    Up,
    /// Nothing came back lately: carries nothing.
    Dark,
    /// Just added or healed: carrying a token share.
    Probing,
}

/// One link's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkTelemetry {
    /// Interface name.
    pub name: String,
    /// State.
    pub state: LinkState,
    /// Round-trip time, ms.
    pub rtt_ms: u32,
    /// Loss, per mille: packets this link carried that the receiver asked
    /// for again, over packets it carried.
    pub loss_permille: u16,
    /// Retransmissions among what this link sent, per mille.
    pub retransmit_permille: u16,
    /// Bitrate sent, kbit/s.
    pub kbps: u32,
    /// Share of the stream, per mille.
    pub share_permille: u16,
    /// Modem signal, percent, if cellular.
    pub signal_percent: Option<u8>,
}

/// Live numbers of a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Device time, ms since the epoch.
    pub ts_ms: u64,
    /// Per link.
    pub links: Vec<LinkTelemetry>,
    /// Capacity the bond reports usable, kbit/s.
    pub usable_kbps: u32,
    /// Encoder video bitrate, kbit/s (0 when not streaming).
    pub encoder_kbps: u32,
    /// Encoded frames per second.
    pub fps: f32,
    /// SoC temperature, °C.
    pub cpu_temp_c: Option<f32>,
}

/// A command's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Done.
    Ok,
    /// Not done, and why.
    Failed(String),
}

/// The answer to a command; a repeated command id gets the first answer again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The command's id.
    pub id: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// Something that happened on the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Device time, ms since the epoch.
    pub ts_ms: u64,
    /// What.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// The stream is being sent.
    StreamStarted {
        /// Stream id.
        stream_id: String,
    },
    /// The stream stopped.
    StreamStopped {
        /// Stream id.
        stream_id: String,
        /// Why.
        reason: String,
    },
    /// A link went dark.
    LinkDown {
        /// Interface.
        name: String,
    },
    /// A link came back.
    LinkUp {
        /// Interface.
        name: String,
    },
    /// Self-update progress.
    UpdateProgress {
        /// Version being installed.
        version: String,
        /// Percent downloaded.
        percent: u8,
    },
    /// Self-update failed (and was rolled back).
    UpdateFailed {
        /// Version tried.
        version: String,
        /// Why.
        reason: String,
    },
}

/// Video codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    /// H.264.
    H264,
    /// H.265.
    H265,
}

/// Encoder settings the owner chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderSettings {
    /// Input id from the inventory.
    pub input: String,
    /// Codec.
    pub codec: Codec,
    /// Frame height (width follows 16:9).
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Lowest video bitrate, kbit/s.
    pub min_kbps: u32,
    /// Highest video bitrate, kbit/s.
    pub max_kbps: u32,
    /// Send audio.
    pub audio: bool,
}

impl Default for EncoderSettings {
    /// What a sender uses until its owner chooses: the test pattern, 720p30
    /// H.264 with audio, 0.5 to 6 Mbit/s.
    fn default() -> Self {
        EncoderSettings {
            input: TEST_PATTERN.into(),
            codec: Codec::H264,
            height: 720,
            fps: 30,
            min_kbps: 500,
            max_kbps: 6000,
            audio: true,
        }
    }
}

/// Frame heights a device offers.
pub const HEIGHTS: [u32; 4] = [480, 720, 1080, 2160];
/// Frame rates a device offers.
pub const FRAME_RATES: [u32; 5] = [24, 25, 30, 50, 60];
/// Video bitrates a device accepts, kbit/s.
pub const KBPS_RANGE: std::ops::RangeInclusive<u32> = 200..=50_000;
/// The input id of the built-in test pattern.
pub const TEST_PATTERN: &str = "test";

impl EncoderSettings {
    /// Checks the settings, `has_input` telling which input ids the device
    /// has; the message names the field. Both sides use it, so the relay
    /// refuses what a device would.
    pub fn check(&self, has_input: impl Fn(&str) -> bool) -> Result<(), String> {
        if self.input != TEST_PATTERN && !has_input(&self.input) {
            return Err(format!(
                "input '{}' is not one of this sender's inputs",
                self.input
            ));
        }
        if !HEIGHTS.contains(&self.height) {
            return Err(format!("height must be one of {HEIGHTS:?}"));
        }
        if !FRAME_RATES.contains(&self.fps) {
            return Err(format!("fps must be one of {FRAME_RATES:?}"));
        }
        if !KBPS_RANGE.contains(&self.min_kbps) || !KBPS_RANGE.contains(&self.max_kbps) {
            return Err(format!(
                "bitrates must be between {} and {} kbit/s",
                KBPS_RANGE.start(),
                KBPS_RANGE.end()
            ));
        }
        if self.min_kbps > self.max_kbps {
            return Err("minimum bitrate is above the maximum".into());
        }
        Ok(())
    }
}

/// Checks an APN: 1 to 100 printable characters without spaces.
pub fn check_apn(apn: &str) -> Result<(), String> {
    if apn.is_empty() || apn.len() > 100 || !apn.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an APN is 1 to 100 printable characters without spaces".into());
    }
    Ok(())
}

/// Checks a SIM PIN: 4 to 8 digits. The message never contains the PIN.
pub fn check_pin(pin: &str) -> Result<(), String> {
    if !(4..=8).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err("a PIN is 4 to 8 digits".into());
    }
    Ok(())
}

/// A command with its id (the device answers every id once and repeats that
/// answer if the id comes again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Id, unique per device.
    pub id: u64,
    /// What to do.
    pub body: CommandBody,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandBody {
    /// Start sending a stream to the relay.
    StartStream {
        /// Stream id.
        stream_id: String,
        /// Relay host the links send to.
        relay_host: String,
        /// One RIST port per link, in order.
        ports: Vec<u16>,
        /// RIST PSK (AES-256) of this stream.
        psk: Secret,
        /// Encoder settings.
        encoder: EncoderSettings,
    },
    /// Stop sending.
    StopStream {
        /// Stream id.
        stream_id: String,
    },
    /// Store and apply encoder settings.
    ApplySettings(EncoderSettings),
    /// Enable or disable a modem.
    SetModemEnabled {
        /// Modem id.
        modem: String,
        /// Enabled.
        enabled: bool,
    },
    /// Set a modem's APN.
    SetApn {
        /// Modem id.
        modem: String,
        /// APN.
        apn: String,
    },
    /// Unlock a SIM.
    UnlockSim {
        /// Modem id.
        modem: String,
        /// PIN.
        pin: Secret,
    },
    /// A renewed certificate (answer to [`DeviceMessage::Renew`]).
    CertificateIssued {
        /// Device certificate then intermediates, PEM.
        chain_pem: String,
    },
    /// Install an agent release.
    Update {
        /// Version.
        version: String,
        /// HTTPS URL of the binary.
        url: String,
        /// SHA-256 of the binary, hex.
        sha256: String,
        /// ed25519 signature of the binary, hex.
        signature: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_the_rules() {
        EncoderSettings::default().check(|_| false).unwrap();
        assert!(check_apn("internet").is_ok() && check_apn("a b").is_err());
        let e = check_pin("12x4").unwrap_err();
        assert!(!e.contains("12x4") && check_pin("1234").is_ok());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = CommandBody::UnlockSim {
            modem: "m0".into(),
            pin: Secret("1234".into()),
        };
        let s = format!("{c:?}");
        assert!(s.contains("Secret(..)") && !s.contains("1234"), "{s}");
    }
}
