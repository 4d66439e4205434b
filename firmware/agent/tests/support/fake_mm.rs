//! A fake ModemManager at the hardware edge: on a private `dbus-daemon`,
//! `org.freedesktop.ModemManager1` with the real interfaces (object manager,
//! Modem, Modem3gpp, Signal, Sim) and one modem whose data port is `wwan0`.
//! The PIN is 1234; a SIM can also be missing or PUK-locked.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// What the fake modem holds and what the agent did to it.
#[derive(Debug)]
pub struct State {
    pub signal: u32,
    pub locked: bool,
    /// No SIM in the modem.
    pub sim_missing: bool,
    /// The SIM wants its PUK.
    pub puk: bool,
    /// Modem3gpp RegistrationState (1 home, 2 searching, 3 denied, 5 roaming).
    pub registration: u32,
    pub enabled: bool,
    pub apn: Option<String>,
    /// SetInitialEpsBearerSettings fails (a modem without an attach profile).
    pub attach_refused: bool,
    pub pins_tried: Vec<String>,
}

struct FakeModem(Arc<Mutex<State>>);

#[zbus::interface(name = "org.freedesktop.ModemManager1.Modem")]
impl FakeModem {
    #[zbus(property)]
    fn manufacturer(&self) -> String {
        "Quectel".into()
    }
    #[zbus(property)]
    fn model(&self) -> String {
        "EG25-G".into()
    }
    #[zbus(property)]
    fn equipment_identifier(&self) -> String {
        "861536030196001".into()
    }
    #[zbus(property)]
    fn device_identifier(&self) -> String {
        "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678".into()
    }
    #[zbus(property)]
    fn primary_port(&self) -> String {
        "cdc-wdm0".into()
    }
    #[zbus(property)]
    fn unlock_required(&self) -> u32 {
        // MM_MODEM_LOCK_SIM_PUK = 4, MM_MODEM_LOCK_SIM_PIN = 2, MM_MODEM_LOCK_NONE = 1
        let s = self.0.lock().unwrap();
        match (s.puk, s.locked) {
            (true, _) => 4,
            (false, true) => 2,
            (false, false) => 1,
        }
    }
    #[zbus(property)]
    fn state(&self) -> i32 {
        // MM_MODEM_STATE_FAILED = -1, DISABLED = 3, REGISTERED = 8
        let s = self.0.lock().unwrap();
        if s.sim_missing {
            -1
        } else if s.enabled {
            8
        } else {
            3
        }
    }
    #[zbus(property)]
    fn state_failed_reason(&self) -> u32 {
        // MM_MODEM_STATE_FAILED_REASON_SIM_MISSING = 2
        if self.0.lock().unwrap().sim_missing {
            2
        } else {
            0
        }
    }
    #[zbus(property)]
    fn signal_quality(&self) -> (u32, bool) {
        (self.0.lock().unwrap().signal, true)
    }
    #[zbus(property)]
    fn access_technologies(&self) -> u32 {
        1 << 14
    }
    #[zbus(property)]
    fn sim(&self) -> OwnedObjectPath {
        let path = if self.0.lock().unwrap().sim_missing {
            "/"
        } else {
            "/org/freedesktop/ModemManager1/SIM/0"
        };
        OwnedObjectPath::try_from(path).unwrap()
    }
    #[zbus(property)]
    fn ports(&self) -> Vec<(String, u32)> {
        vec![("cdc-wdm0".into(), 6), ("wwan0".into(), 2)]
    }
    async fn enable(&self, enable: bool) {
        self.0.lock().unwrap().enabled = enable;
    }
}

struct Fake3gpp(Arc<Mutex<State>>);

#[zbus::interface(name = "org.freedesktop.ModemManager1.Modem.Modem3gpp")]
impl Fake3gpp {
    #[zbus(property)]
    fn imei(&self) -> String {
        "861536030196001".into()
    }
    #[zbus(property)]
    fn operator_name(&self) -> String {
        "Telia".into()
    }
    #[zbus(property)]
    fn registration_state(&self) -> u32 {
        self.0.lock().unwrap().registration
    }
    async fn set_initial_eps_bearer_settings(
        &self,
        settings: std::collections::HashMap<String, OwnedValue>,
    ) -> zbus::fdo::Result<()> {
        if self.0.lock().unwrap().attach_refused {
            return Err(zbus::fdo::Error::NotSupported("Unsupported".into()));
        }
        let apn = settings
            .get("apn")
            .and_then(|v| String::try_from(v.try_clone().ok()?).ok());
        self.0.lock().unwrap().apn = apn;
        Ok(())
    }
}

struct FakeSignal;

#[zbus::interface(name = "org.freedesktop.ModemManager1.Modem.Signal")]
impl FakeSignal {
    #[zbus(property)]
    fn lte(&self) -> std::collections::HashMap<String, OwnedValue> {
        [("rsrp", -95.0f64), ("rsrq", -11.0), ("snr", 13.5)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), OwnedValue::from(v)))
            .collect()
    }
    async fn setup(&self, _rate: u32) {}
}

struct FakeSim(Arc<Mutex<State>>);

#[zbus::interface(name = "org.freedesktop.ModemManager1.Sim")]
impl FakeSim {
    async fn send_pin(&self, pin: String) -> zbus::fdo::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.pins_tried.push(pin.clone());
        if pin == "1234" {
            s.locked = false;
            Ok(())
        } else {
            Err(zbus::fdo::Error::Failed("Incorrect password".into()))
        }
    }
}

/// A private bus; killed on drop.
pub struct Bus {
    child: Child,
    /// Its D-Bus address.
    pub address: String,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a private `dbus-daemon`.
pub fn private_bus() -> Bus {
    let mut child = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon (package dbus, installed by scripts/setup)");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    Bus {
        child,
        address: line.trim().to_string(),
    }
}

/// Serves the fake ModemManager on `bus`; it lives as long as the connection.
pub async fn fake_modem_manager(bus: &Bus, state: Arc<Mutex<State>>) -> zbus::Connection {
    zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.ModemManager1")
        .unwrap()
        .serve_at("/org/freedesktop/ModemManager1", zbus::fdo::ObjectManager)
        .unwrap()
        .serve_at(
            "/org/freedesktop/ModemManager1/Modem/0",
            FakeModem(state.clone()),
        )
        .unwrap()
        .serve_at(
            "/org/freedesktop/ModemManager1/Modem/0",
            Fake3gpp(state.clone()),
        )
        .unwrap()
        .serve_at("/org/freedesktop/ModemManager1/Modem/0", FakeSignal)
        .unwrap()
        .serve_at("/org/freedesktop/ModemManager1/SIM/0", FakeSim(state))
        .unwrap()
        .build()
        .await
        .unwrap()
}

const MODEM_PATH: &str = "/org/freedesktop/ModemManager1/Modem/0";

/// The modem is unplugged: its objects leave the bus (as ModemManager's do).
pub async fn unplug(mm: &zbus::Connection) {
    let server = mm.object_server();
    server.remove::<FakeModem, _>(MODEM_PATH).await.unwrap();
    server.remove::<Fake3gpp, _>(MODEM_PATH).await.unwrap();
    server.remove::<FakeSignal, _>(MODEM_PATH).await.unwrap();
}

/// The modem is plugged in again.
pub async fn plug(mm: &zbus::Connection, state: Arc<Mutex<State>>) {
    let server = mm.object_server();
    server
        .at(MODEM_PATH, FakeModem(state.clone()))
        .await
        .unwrap();
    server.at(MODEM_PATH, Fake3gpp(state)).await.unwrap();
    server.at(MODEM_PATH, FakeSignal).await.unwrap();
}

/// A locked SIM, signal 71 %, enabled.
pub fn state() -> Arc<Mutex<State>> {
    Arc::new(Mutex::new(State {
        signal: 71,
        locked: true,
        sim_missing: false,
        puk: false,
        registration: 1,
        enabled: true,
        apn: None,
        attach_refused: false,
        pins_tried: Vec::new(),
    }))
}
