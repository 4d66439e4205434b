//! A fake NetworkManager at the hardware edge: `org.freedesktop.NetworkManager`
//! with `GetDevices` and the Device interface's properties, on a private bus:
//! an activated Ethernet `eth0`, an activated modem (control port `cdc-wdm0`,
//! data interface `wwan0`) and a disconnected Wi-Fi `wlan0`.

use zbus::zvariant::OwnedObjectPath;

struct FakeNm;

const DEVICES: [(&str, &str, u32, u32); 3] = [
    // (Interface, IpInterface, DeviceType, State)
    ("eth0", "eth0", 1, 100),
    ("cdc-wdm0", "wwan0", 8, 100),
    ("wlan0", "", 2, 30),
];

fn path(n: usize) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!("/org/freedesktop/NetworkManager/Devices/{}", n + 1)).unwrap()
}

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl FakeNm {
    fn get_devices(&self) -> Vec<OwnedObjectPath> {
        (0..DEVICES.len()).map(path).collect()
    }
}

struct FakeDevice(usize);

#[zbus::interface(name = "org.freedesktop.NetworkManager.Device")]
impl FakeDevice {
    #[zbus(property)]
    fn interface(&self) -> String {
        DEVICES[self.0].0.into()
    }
    #[zbus(property)]
    fn ip_interface(&self) -> String {
        DEVICES[self.0].1.into()
    }
    #[zbus(property)]
    fn device_type(&self) -> u32 {
        DEVICES[self.0].2
    }
    #[zbus(property)]
    fn state(&self) -> u32 {
        DEVICES[self.0].3
    }
}

/// Serves the fake NetworkManager on the bus at `address`.
pub async fn fake_network_manager(address: &str) -> zbus::Connection {
    let mut b = zbus::connection::Builder::address(address)
        .unwrap()
        .name("org.freedesktop.NetworkManager")
        .unwrap()
        .serve_at("/org/freedesktop/NetworkManager", FakeNm)
        .unwrap();
    for n in 0..DEVICES.len() {
        b = b.serve_at(path(n), FakeDevice(n)).unwrap();
    }
    b.build().await.unwrap()
}
