//! A fake NetworkManager at the hardware edge, on a private bus, with the
//! parts of `org.freedesktop.NetworkManager` the agent calls: `GetDevices`
//! and `ActivateConnection`; the Device interface's properties (`Udi`,
//! `Interface`, `IpInterface`, `DeviceType`, `State`, `StateReason`,
//! `Ip4Config`) and IP4Config's `AddressData`; `Settings.ListConnections`
//! and `AddConnection`; `Settings.Connection.GetSettings` and `Update`.
//!
//! Devices: an activated Ethernet `eth0`, a modem (control port `cdc-wdm0`,
//! `Udi` the fake ModemManager's modem, data interface `wwan0` once its
//! bearer is up) and a disconnected Wi-Fi `wlan0`. Activating a GSM
//! connection on the modem brings its bearer up at once (or fails with
//! [`Nm::refuse_with`]); [`drop_bearer`] takes it down as a network would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// A connection's settings as NetworkManager stores them (`a{sa{sv}}`).
pub type Settings = HashMap<String, HashMap<String, OwnedValue>>;

/// One fake device.
#[derive(Debug, Clone)]
pub struct Dev {
    pub interface: String,
    /// Its data interface while it has one.
    pub ip_interface: String,
    pub device_type: u32,
    pub state: u32,
    pub reason: u32,
    pub udi: String,
    /// Its IPv4 address while it has one.
    pub ipv4: Option<String>,
    /// Plugged in (listed by GetDevices).
    pub present: bool,
}

/// What the fake holds and what the agent did to it.
#[derive(Debug, Default)]
pub struct Nm {
    pub devices: Vec<Dev>,
    /// Stored connections.
    pub connections: Vec<Settings>,
    /// (connection index, device index) of each ActivateConnection.
    pub activations: Vec<(usize, usize)>,
    /// Activation fails with this NMDeviceStateReason (29: GSM APN failed).
    pub refuse_with: Option<u32>,
}

/// The fake modem's index in [`Nm::devices`].
pub const MODEM: usize = 1;

/// The devices above; the modem's bearer is up if `modem_up`.
pub fn state(modem_up: bool) -> Arc<Mutex<Nm>> {
    let dev = |i: &str, ip: &str, t, st, udi: &str, v4: Option<&str>| Dev {
        interface: i.into(),
        ip_interface: ip.into(),
        device_type: t,
        state: st,
        reason: 0,
        udi: udi.into(),
        ipv4: v4.map(String::from),
        present: true,
    };
    let modem = if modem_up {
        dev("cdc-wdm0", "wwan0", 8, 100, MM_MODEM, Some("10.64.1.2"))
    } else {
        dev("cdc-wdm0", "", 8, 30, MM_MODEM, None)
    };
    Arc::new(Mutex::new(Nm {
        devices: vec![
            dev(
                "eth0",
                "eth0",
                1,
                100,
                "/sys/devices/eth0",
                Some("192.168.1.20"),
            ),
            modem,
            dev("wlan0", "", 2, 30, "/sys/devices/wlan0", None),
        ],
        ..Nm::default()
    }))
}

const MM_MODEM: &str = "/org/freedesktop/ModemManager1/Modem/0";

/// The network takes the modem's bearer down (NMDeviceStateReason `reason`).
pub fn drop_bearer(nm: &Arc<Mutex<Nm>>, reason: u32) {
    let mut s = nm.lock().unwrap();
    let d = &mut s.devices[MODEM];
    d.state = 30;
    d.reason = reason;
    d.ip_interface.clear();
    d.ipv4 = None;
}

/// The modem is unplugged (`present` false) or plugged in again, its bearer down.
pub fn plug_modem(nm: &Arc<Mutex<Nm>>, present: bool) {
    drop_bearer(nm, 36); // NM_DEVICE_STATE_REASON_REMOVED
    nm.lock().unwrap().devices[MODEM].present = present;
}

fn device_path(n: usize) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!("/org/freedesktop/NetworkManager/Devices/{}", n + 1)).unwrap()
}

fn ip4_path(n: usize) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!(
        "/org/freedesktop/NetworkManager/IP4Config/{}",
        n + 1
    ))
    .unwrap()
}

fn connection_path(n: usize) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!(
        "/org/freedesktop/NetworkManager/Settings/{}",
        n + 1
    ))
    .unwrap()
}

fn index(path: &str, prefix: &str) -> Option<usize> {
    path.strip_prefix(prefix)?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

struct FakeNm(Arc<Mutex<Nm>>);

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl FakeNm {
    fn get_devices(&self) -> Vec<OwnedObjectPath> {
        let s = self.0.lock().unwrap();
        (0..s.devices.len())
            .filter(|n| s.devices[*n].present)
            .map(device_path)
            .collect()
    }

    fn activate_connection(
        &self,
        connection: OwnedObjectPath,
        device: OwnedObjectPath,
        _specific_object: OwnedObjectPath,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let mut s = self.0.lock().unwrap();
        let c = index(
            connection.as_str(),
            "/org/freedesktop/NetworkManager/Settings/",
        )
        .filter(|c| *c < s.connections.len())
        .ok_or_else(|| zbus::fdo::Error::InvalidArgs("unknown connection".into()))?;
        let d = index(device.as_str(), "/org/freedesktop/NetworkManager/Devices/")
            .filter(|d| *d < s.devices.len())
            .ok_or_else(|| zbus::fdo::Error::InvalidArgs("unknown device".into()))?;
        s.activations.push((c, d));
        let refuse = s.refuse_with;
        let dev = &mut s.devices[d];
        match refuse {
            Some(reason) => {
                dev.state = 30;
                dev.reason = reason;
            }
            None => {
                dev.state = 100;
                dev.reason = 0;
                dev.ip_interface = "wwan0".into();
                dev.ipv4 = Some("10.64.1.2".into());
            }
        }
        Ok(OwnedObjectPath::try_from(format!(
            "/org/freedesktop/NetworkManager/ActiveConnection/{}",
            s.activations.len()
        ))
        .unwrap())
    }
}

struct FakeDevice(Arc<Mutex<Nm>>, usize);

impl FakeDevice {
    fn dev(&self) -> Dev {
        self.0.lock().unwrap().devices[self.1].clone()
    }
}

#[zbus::interface(name = "org.freedesktop.NetworkManager.Device")]
impl FakeDevice {
    #[zbus(property)]
    fn udi(&self) -> String {
        self.dev().udi
    }
    #[zbus(property)]
    fn interface(&self) -> String {
        self.dev().interface
    }
    #[zbus(property)]
    fn ip_interface(&self) -> String {
        self.dev().ip_interface
    }
    #[zbus(property)]
    fn device_type(&self) -> u32 {
        self.dev().device_type
    }
    #[zbus(property)]
    fn state(&self) -> u32 {
        self.dev().state
    }
    #[zbus(property)]
    fn state_reason(&self) -> (u32, u32) {
        let d = self.dev();
        (d.state, d.reason)
    }
    #[zbus(property)]
    fn ip4_config(&self) -> OwnedObjectPath {
        match self.dev().ipv4 {
            Some(_) => ip4_path(self.1),
            None => OwnedObjectPath::try_from("/").unwrap(),
        }
    }
}

struct FakeIp4(Arc<Mutex<Nm>>, usize);

#[zbus::interface(name = "org.freedesktop.NetworkManager.IP4Config")]
impl FakeIp4 {
    #[zbus(property)]
    fn address_data(&self) -> Vec<HashMap<String, OwnedValue>> {
        let s = self.0.lock().unwrap();
        s.devices[self.1]
            .ipv4
            .iter()
            .map(|a| {
                HashMap::from([
                    (
                        "address".to_string(),
                        OwnedValue::try_from(zbus::zvariant::Value::from(a.as_str())).unwrap(),
                    ),
                    ("prefix".to_string(), OwnedValue::from(24u32)),
                ])
            })
            .collect()
    }
}

struct FakeSettings(Arc<Mutex<Nm>>);

#[zbus::interface(name = "org.freedesktop.NetworkManager.Settings")]
impl FakeSettings {
    fn list_connections(&self) -> Vec<OwnedObjectPath> {
        (0..self.0.lock().unwrap().connections.len())
            .map(connection_path)
            .collect()
    }

    async fn add_connection(
        &self,
        settings: HashMap<String, HashMap<String, OwnedValue>>,
        #[zbus(object_server)] server: &zbus::ObjectServer,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let n = {
            let mut s = self.0.lock().unwrap();
            s.connections.push(settings);
            s.connections.len() - 1
        };
        server
            .at(connection_path(n), FakeConnection(self.0.clone(), n))
            .await
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        Ok(connection_path(n))
    }
}

struct FakeConnection(Arc<Mutex<Nm>>, usize);

#[zbus::interface(name = "org.freedesktop.NetworkManager.Settings.Connection")]
impl FakeConnection {
    fn get_settings(&self) -> zbus::fdo::Result<Settings> {
        let s = self.0.lock().unwrap();
        s.connections[self.1]
            .iter()
            .map(|(k, sec)| {
                let sec = sec
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.try_clone()?)))
                    .collect::<Result<_, zbus::zvariant::Error>>()?;
                Ok((k.clone(), sec))
            })
            .collect::<Result<_, zbus::zvariant::Error>>()
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
    }

    fn update(&self, settings: HashMap<String, HashMap<String, OwnedValue>>) {
        self.0.lock().unwrap().connections[self.1] = settings;
    }
}

/// Serves the fake NetworkManager on the bus at `address`, the modem's bearer up.
pub async fn fake_network_manager(address: &str) -> zbus::Connection {
    serve(address, state(true)).await
}

/// Serves the fake NetworkManager holding `nm` on the bus at `address`.
pub async fn serve(address: &str, nm: Arc<Mutex<Nm>>) -> zbus::Connection {
    let devices = nm.lock().unwrap().devices.len();
    let mut b = zbus::connection::Builder::address(address)
        .unwrap()
        .name("org.freedesktop.NetworkManager")
        .unwrap()
        .serve_at("/org/freedesktop/NetworkManager", FakeNm(nm.clone()))
        .unwrap()
        .serve_at(
            "/org/freedesktop/NetworkManager/Settings",
            FakeSettings(nm.clone()),
        )
        .unwrap();
    for n in 0..devices {
        b = b
            .serve_at(device_path(n), FakeDevice(nm.clone(), n))
            .unwrap()
            .serve_at(ip4_path(n), FakeIp4(nm.clone(), n))
            .unwrap();
    }
    b.build().await.unwrap()
}

/// A string in a stored connection's settings.
pub fn setting(c: &Settings, section: &str, key: &str) -> Option<String> {
    String::try_from(c.get(section)?.get(key)?.try_clone().ok()?).ok()
}

/// A boolean in a stored connection's settings.
pub fn flag(c: &Settings, section: &str, key: &str) -> Option<bool> {
    bool::try_from(c.get(section)?.get(key)?).ok()
}
