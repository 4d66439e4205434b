//! Modems and links as the agent sees them through ModemManager's and
//! NetworkManager's D-Bus APIs, on a private `dbus-daemon` where fakes of
//! `org.freedesktop.ModemManager1` (object manager, Modem, Modem3gpp,
//! Signal, Sim) and `org.freedesktop.NetworkManager` (GetDevices, Device)
//! stand in for the hardware edge and speak the real interfaces.

mod support;

use strata_agent::config::AgentConfig;
use strata_agent::device::Device;
use strata_agent::modems::ModemManager;
use strata_proto::message::{
    Command as Cmd, CommandBody, DeviceMessage, LinkKind, Outcome, Secret, SimState,
};
use support::fake_mm::{fake_modem_manager, private_bus, state};

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
    assert_eq!(inv.links.len(), 1, "include = [wwan0]: {:?}", inv.links);
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

#[tokio::test]
async fn links_come_from_network_manager() {
    gstreamer::init().unwrap();
    let bus = private_bus();
    let _mm = fake_modem_manager(&bus, state()).await;
    let _nm = support::fake_nm::fake_network_manager(&bus.address).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = |extra: &str| -> AgentConfig {
        toml::from_str(&format!(
            "relay_url = \"https://127.0.0.1:1\"\ndata_dir = \"{}\"\n[links]\nbus = \"{}\"\n{extra}\n\
             [inputs]\nauto_detect = false\n[modems]\nbus = \"{}\"",
            dir.path().display(),
            bus.address,
            bus.address
        ))
        .unwrap()
    };
    let mut device = Device::new(&cfg(""));
    let inv = device.inventory().await;
    let links: Vec<_> = inv
        .links
        .iter()
        .map(|l| (l.name.as_str(), l.kind, l.up, l.modem.is_some()))
        .collect();
    assert_eq!(
        links,
        [
            ("eth0", LinkKind::Ethernet, true, false),
            // The modem's data interface, not its control port, and its modem.
            ("wwan0", LinkKind::Cellular, true, true),
            ("wlan0", LinkKind::Wifi, false, false),
        ]
    );
    let mut device = Device::new(&cfg("exclude = [\"eth0\"]"));
    let names: Vec<_> = device
        .inventory()
        .await
        .links
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["wwan0", "wlan0"]);
}
