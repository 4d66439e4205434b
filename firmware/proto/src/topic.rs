//! MQTT topics: one subtree per device, `strata/v1/dev/{device_id}/{kind}`.
//! A device may publish and subscribe only under its own subtree (the relay
//! enforces it); the relay subscribes to `strata/v1/dev/+/{kind}`.

/// Root of every Strata topic; the `v1` moves with incompatible layouts.
pub const ROOT: &str = "strata/v1/dev";

/// What a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Device presence (retained; last will).
    Status,
    /// Device inventory (retained).
    Inventory,
    /// Device telemetry.
    Telemetry,
    /// Command replies.
    Reply,
    /// Device events.
    Event,
    /// Certificate renewal requests.
    Renew,
    /// Commands to the device (the only relay-to-device topic).
    Command,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::Status,
        Kind::Inventory,
        Kind::Telemetry,
        Kind::Reply,
        Kind::Event,
        Kind::Renew,
        Kind::Command,
    ];

    /// The last topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Inventory => "inventory",
            Kind::Telemetry => "telemetry",
            Kind::Reply => "reply",
            Kind::Event => "event",
            Kind::Renew => "renew",
            Kind::Command => "cmd",
        }
    }

    /// Whether devices publish on it (all but commands).
    pub fn from_device(self) -> bool {
        self != Kind::Command
    }
}

/// Whether a device id is usable in a topic: 1–64 of `[a-z0-9-]`.
pub fn valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The topic of one kind for one device.
pub fn topic(device_id: &str, kind: Kind) -> String {
    format!("{ROOT}/{device_id}/{}", kind.as_str())
}

/// The filter the relay subscribes to for one kind from every device.
pub fn all_devices(kind: Kind) -> String {
    format!("{ROOT}/+/{}", kind.as_str())
}

/// The subtree a device may use, as a filter.
pub fn device_subtree(device_id: &str) -> String {
    format!("{ROOT}/{device_id}/#")
}

/// Splits a topic into device id and kind; `None` if it is not ours.
pub fn parse(topic: &str) -> Option<(&str, Kind)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let (device, kind) = rest.split_once('/')?;
    if !valid_device_id(device) {
        return None;
    }
    Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .map(|k| (device, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for k in Kind::ALL {
            assert_eq!(parse(&topic("abc123", k)), Some(("abc123", k)));
        }
        assert_eq!(all_devices(Kind::Telemetry), "strata/v1/dev/+/telemetry");
        assert_eq!(device_subtree("abc"), "strata/v1/dev/abc/#");
    }

    #[test]
    fn rejects_foreign_topics() {
        for t in [
            "",
            "strata/v1/dev",
            "strata/v1/dev/abc",
            "strata/v2/dev/abc/status",
            "strata/v1/dev/ABC/status",
            "strata/v1/dev/abc/status/extra",
            "strata/v1/dev/+/status",
            "strata/v1/dev/a#/status",
        ] {
            assert_eq!(parse(t), None, "{t}");
        }
        assert!(!valid_device_id(&"a".repeat(65)));
    }
}
