//! The device's network interfaces from NetworkManager's D-Bus API
//! (`org.freedesktop.NetworkManager`, zbus): with `[links] auto_detect`,
//! every activated Ethernet, Wi-Fi or modem device becomes a bonded link.
//!
//! Why zbus and not the nmrs crate: a modem's NetworkManager device is named
//! after its control port (`cdc-wdm0`) and its data interface (`wwan0`, the
//! one the bond binds to) is only in `IpInterface`, which nmrs does not
//! expose; nmrs also only talks to the system bus, and the tests use a
//! private one.

use std::collections::HashMap;

use strata_proto::message::LinkKind;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

const SERVICE: &str = "org.freedesktop.NetworkManager";
const ROOT: &str = "/org/freedesktop/NetworkManager";
const DEVICE: &str = "org.freedesktop.NetworkManager.Device";

/// NMDeviceType values we bond over.
const TYPE_ETHERNET: u32 = 1;
const TYPE_WIFI: u32 = 2;
const TYPE_MODEM: u32 = 8;
/// NMDeviceState: activated.
const STATE_ACTIVATED: u32 = 100;

/// One interface NetworkManager manages.
#[derive(Debug, Clone, PartialEq)]
pub struct NetLink {
    /// The data interface the bond binds to (`wwan0`, `eth0`).
    pub name: String,
    /// What it is.
    pub kind: LinkKind,
    /// Activated (connected with an address).
    pub up: bool,
}

/// A connection to NetworkManager.
#[derive(Debug, Clone)]
pub struct NetworkManager {
    conn: zbus::Connection,
}

impl NetworkManager {
    /// Connects to the system bus, or to `address`.
    pub async fn connect(address: Option<&str>) -> zbus::Result<NetworkManager> {
        Ok(NetworkManager {
            conn: crate::modems::bus(address).await?,
        })
    }

    /// Every Ethernet, Wi-Fi and modem device, in NetworkManager's order.
    pub async fn links(&self) -> zbus::Result<Vec<NetLink>> {
        let reply = self
            .conn
            .call_method(Some(SERVICE), ROOT, Some(SERVICE), "GetDevices", &())
            .await?;
        let paths: Vec<OwnedObjectPath> = reply.body().deserialize()?;
        let mut out = Vec::new();
        for path in paths {
            let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
                .destination(SERVICE)?
                .path(path)?
                .build()
                .await?;
            let all: HashMap<String, OwnedValue> = props
                .get_all(DEVICE.try_into().expect("interface name"))
                .await?;
            let get_u32 = |k: &str| all.get(k).and_then(|v| u32::try_from(v).ok());
            let get_str = |k: &str| {
                all.get(k)
                    .and_then(|v| v.try_clone().ok())
                    .and_then(|v| String::try_from(v).ok())
                    .filter(|s| !s.is_empty())
            };
            let kind = match get_u32("DeviceType") {
                Some(TYPE_ETHERNET) => LinkKind::Ethernet,
                Some(TYPE_WIFI) => LinkKind::Wifi,
                Some(TYPE_MODEM) => LinkKind::Cellular,
                _ => continue,
            };
            let Some(name) = get_str("IpInterface").or_else(|| get_str("Interface")) else {
                continue;
            };
            out.push(NetLink {
                name,
                kind,
                up: get_u32("State") == Some(STATE_ACTIVATED),
            });
        }
        Ok(out)
    }
}
