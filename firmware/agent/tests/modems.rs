//! Modems as the agent sees them through ModemManager's D-Bus API, on a
//! private `dbus-daemon` where a fake `org.freedesktop.ModemManager1`
//! (the hardware edge) implements the real interfaces: object manager,
//! Modem, Modem3gpp, Signal and Sim.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use strata_agent::config::AgentConfig;
use strata_agent::device::Device;
use strata_agent::modems::ModemManager;
use strata_proto::message::{
    Command as Cmd, CommandBody, DeviceMessage, Outcome, Secret, SimState,
};
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// What the fake modem holds and what the agent did to it.
#[derive(Debug)]
struct State {
    signal: u32,
    locked: bool,
    enabled: bool,
    apn: Option<String>,
    pins_tried: Vec<String>,
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
    fn unlock_required(&self) -> u32 {
        // MM_MODEM_LOCK_SIM_PIN = 2, MM_MODEM_LOCK_NONE = 1
        if self.0.lock().unwrap().locked { 2 } else { 1 }
    }
    #[zbus(property)]
    fn state(&self) -> i32 {
        // MM_MODEM_STATE_REGISTERED = 8, MM_MODEM_STATE_DISABLED = 3
        if self.0.lock().unwrap().enabled { 8 } else { 3 }
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
        OwnedObjectPath::try_from("/org/freedesktop/ModemManager1/SIM/0").unwrap()
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
    async fn set_initial_eps_bearer_settings(
        &self,
        settings: std::collections::HashMap<String, OwnedValue>,
    ) -> zbus::fdo::Result<()> {
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

struct Bus {
    child: Child,
    address: String,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn private_bus() -> Bus {
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

async fn fake_modem_manager(bus: &Bus, state: Arc<Mutex<State>>) -> zbus::Connection {
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

fn state() -> Arc<Mutex<State>> {
    Arc::new(Mutex::new(State {
        signal: 71,
        locked: true,
        enabled: true,
        apn: None,
        pins_tried: Vec::new(),
    }))
}

#[tokio::test]
async fn modems_appear_with_signal_and_sim_state() {
    let bus = private_bus();
    let st = state();
    let _mm = fake_modem_manager(&bus, st.clone()).await;
    let client = ModemManager::connect(Some(&bus.address)).await.unwrap();

    let found = client.modems().await.unwrap();
    assert_eq!(found.len(), 1);
    let m = &found[0].modem;
    assert_eq!(
        (m.manufacturer.as_str(), m.model.as_str(), m.imei.as_str()),
        ("Quectel", "EG25-G", "861536030196001")
    );
    assert_eq!(m.operator.as_deref(), Some("Telia"));
    assert_eq!(m.access_tech, "lte");
    assert_eq!(m.signal_percent, 71);
    assert_eq!(
        (m.rsrp_dbm, m.rsrq_db, m.sinr_db),
        (Some(-95.0), Some(-11.0), Some(13.5))
    );
    assert_eq!(m.sim, SimState::Locked);
    assert_eq!(m.interface.as_deref(), Some("wwan0"));
    assert!(m.enabled);

    // The signal changes: the next read says so.
    st.lock().unwrap().signal = 23;
    assert_eq!(client.modems().await.unwrap()[0].modem.signal_percent, 23);

    // Wrong PIN: refused with ModemManager's reason, and the PIN is not in it.
    let why = client.unlock_sim(&m.id, "9999").await.unwrap_err();
    assert!(
        why.contains("Incorrect password") && !why.contains("9999"),
        "{why}"
    );
    assert!(
        client.unlock_sim(&m.id, "12").await.is_err(),
        "malformed PIN refused"
    );
    client.unlock_sim(&m.id, "1234").await.unwrap();
    assert_eq!(client.modems().await.unwrap()[0].modem.sim, SimState::Ready);
    // The malformed one never reached the modem.
    assert_eq!(st.lock().unwrap().pins_tried, ["9999", "1234"]);

    let e = client.set_enabled("nope", false).await.unwrap_err();
    assert!(e.contains("no modem"), "{e}");
}

#[tokio::test]
async fn commands_from_the_relay_reach_the_modem() {
    gstreamer::init().unwrap();
    let bus = private_bus();
    let st = state();
    let _mm = fake_modem_manager(&bus, st.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg: AgentConfig = toml::from_str(&format!(
        "relay_url = \"https://127.0.0.1:1\"\ndata_dir = \"{}\"\n[links]\ninclude = [\"wwan0\"]\n\
         [inputs]\nauto_detect = false\n[modems]\nbus = \"{}\"",
        dir.path().display(),
        bus.address
    ))
    .unwrap();
    let mut device = Device::new(&cfg);
    let inv = device.inventory().await;
    assert_eq!(inv.modems.len(), 1);
    let id = inv.modems[0].id.clone();
    assert_eq!(inv.links[0].modem.as_deref(), Some(id.as_str()));

    let mut run = async |n: u64, body: CommandBody| {
        let payload =
            strata_proto::encode(&strata_proto::RelayMessage::Command(Cmd { id: n, body }));
        device.handle(&payload).await;
        match device.outbox.pop() {
            Some(DeviceMessage::Reply(r)) => r.outcome,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        run(
            1,
            CommandBody::UnlockSim {
                modem: id.clone(),
                pin: Secret("1234".into())
            }
        )
        .await,
        Outcome::Ok
    );
    assert_eq!(
        run(
            2,
            CommandBody::SetApn {
                modem: id.clone(),
                apn: "internet.telia.se".into()
            }
        )
        .await,
        Outcome::Ok
    );
    assert_eq!(
        run(
            3,
            CommandBody::SetModemEnabled {
                modem: id.clone(),
                enabled: false
            }
        )
        .await,
        Outcome::Ok
    );
    assert!(matches!(
        run(
            4,
            CommandBody::SetApn {
                modem: id.clone(),
                apn: "bad apn\n".into()
            }
        )
        .await,
        Outcome::Failed(_)
    ));
    let s = st.lock().unwrap();
    assert!(!s.locked && !s.enabled);
    assert_eq!(s.apn.as_deref(), Some("internet.telia.se"));
}
