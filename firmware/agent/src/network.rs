//! The device's network interfaces from NetworkManager's D-Bus API
//! (`org.freedesktop.NetworkManager`, zbus): with `[links] auto_detect`,
//! every activated Ethernet, Wi-Fi or modem device with an IPv4 address
//! becomes a bonded link.
//!
//! Why zbus and not the nmrs crate: a modem's NetworkManager device is named
//! after its control port (`cdc-wdm0`) and its data interface (`wwan0`, the
//! one the bond binds to) is only in `IpInterface`, which nmrs does not
//! expose; nmrs also only talks to the system bus, and the tests use a
//! private one.

use std::collections::HashMap;

use strata_proto::message::LinkKind;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

pub(crate) const SERVICE: &str = "org.freedesktop.NetworkManager";
pub(crate) const ROOT: &str = "/org/freedesktop/NetworkManager";
const DEVICE: &str = "org.freedesktop.NetworkManager.Device";
const IP4_CONFIG: &str = "org.freedesktop.NetworkManager.IP4Config";

/// NMDeviceType values we bond over.
const TYPE_ETHERNET: u32 = 1;
const TYPE_WIFI: u32 = 2;
pub(crate) const TYPE_MODEM: u32 = 8;
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
    pub(crate) conn: zbus::Connection,
}

/// One NetworkManager device as the agent reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct NmDevice {
    /// Object path.
    pub path: OwnedObjectPath,
    /// `Udi`: for a modem, ModemManager's object path of it.
    pub udi: String,
    /// `Interface`: for a modem, its control port (`cdc-wdm0`, `ttyUSB2`).
    pub interface: String,
    /// `IpInterface`: the data interface, once it has one.
    pub ip_interface: Option<String>,
    /// `DeviceType`.
    pub device_type: u32,
    /// `State` (NMDeviceState).
    pub state: u32,
    /// The reason of the last state change (NMDeviceStateReason).
    pub state_reason: u32,
    /// Its IPv4 configuration has an address.
    pub has_ipv4: bool,
}

impl NmDevice {
    /// Activated with an IPv4 address: something the bond can send over.
    pub fn carries(&self) -> bool {
        self.state == STATE_ACTIVATED && self.has_ipv4
    }
}

impl NetworkManager {
    /// Connects to the system bus, or to `address`.
    pub async fn connect(address: Option<&str>) -> zbus::Result<NetworkManager> {
        Ok(NetworkManager {
            conn: crate::modems::bus(address).await?,
        })
    }

    async fn properties(
        &self,
        path: &str,
        iface: &str,
    ) -> zbus::Result<HashMap<String, OwnedValue>> {
        let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination(SERVICE)?
            .path(path)?
            .build()
            .await?;
        Ok(props
            .get_all(iface.try_into().expect("interface name"))
            .await?)
    }

    /// Every device NetworkManager has, in its order.
    pub async fn devices(&self) -> zbus::Result<Vec<NmDevice>> {
        let reply = self
            .conn
            .call_method(Some(SERVICE), ROOT, Some(SERVICE), "GetDevices", &())
            .await?;
        let paths: Vec<OwnedObjectPath> = reply.body().deserialize()?;
        let mut out = Vec::new();
        for path in paths {
            let all = self.properties(path.as_str(), DEVICE).await?;
            let get_u32 = |k: &str| all.get(k).and_then(|v| u32::try_from(v).ok());
            let get_str = |k: &str| {
                all.get(k)
                    .and_then(|v| v.try_clone().ok())
                    .and_then(|v| String::try_from(v).ok())
                    .unwrap_or_default()
            };
            let ip4 = all
                .get("Ip4Config")
                .and_then(|v| v.try_clone().ok())
                .and_then(|v| OwnedObjectPath::try_from(v).ok())
                .filter(|p| p.as_str() != "/");
            let has_ipv4 = match ip4 {
                Some(p) => {
                    let cfg = self.properties(p.as_str(), IP4_CONFIG).await?;
                    cfg.get("AddressData")
                        .and_then(|v| v.try_clone().ok())
                        .and_then(|v| Vec::<HashMap<String, OwnedValue>>::try_from(v).ok())
                        .is_some_and(|a| !a.is_empty())
                }
                None => false,
            };
            let state_reason = all
                .get("StateReason")
                .and_then(|v| v.try_clone().ok())
                .and_then(|v| <(u32, u32)>::try_from(v).ok())
                .map_or(0, |(_, r)| r);
            out.push(NmDevice {
                udi: get_str("Udi"),
                interface: get_str("Interface"),
                ip_interface: Some(get_str("IpInterface")).filter(|s| !s.is_empty()),
                device_type: get_u32("DeviceType").unwrap_or(0),
                state: get_u32("State").unwrap_or(0),
                state_reason,
                has_ipv4,
                path,
            });
        }
        Ok(out)
    }

    /// Every Ethernet, Wi-Fi and modem device, in NetworkManager's order; a
    /// link is up while it is activated with an IPv4 address (so a modem's
    /// link leaves the bond when its bearer drops).
    pub async fn links(&self) -> zbus::Result<Vec<NetLink>> {
        let mut out = Vec::new();
        for d in self.devices().await? {
            let kind = match d.device_type {
                TYPE_ETHERNET => LinkKind::Ethernet,
                TYPE_WIFI => LinkKind::Wifi,
                TYPE_MODEM => LinkKind::Cellular,
                _ => continue,
            };
            let up = d.carries();
            let Some(name) = d
                .ip_interface
                .or_else(|| Some(d.interface).filter(|s| !s.is_empty()))
            else {
                continue;
            };
            out.push(NetLink { name, kind, up });
        }
        Ok(out)
    }
}
