//! Modems carry data: the agent's bearer keeper against a fake ModemManager
//! and a fake NetworkManager on a private `dbus-daemon` (the real interface
//! names and methods; fakes only at the hardware edge). Time is handed to
//! the keeper, so the backoff is checked without sleeping through it.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_agent::config::AgentConfig;
use strata_agent::device::Device;
use strata_agent::modems::keeper::Keeper;
use strata_proto::message::{
    Command as Cmd, CommandBody, DeviceMessage, ModemData, Outcome, Secret,
};
use support::fake_mm::{self, fake_modem_manager, private_bus};
use support::fake_nm::{self, Nm, drop_bearer, flag, setting};

const MODEM: &str = "861536030196001";
const DEVICE_ID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";

struct World {
    _bus: fake_mm::Bus,
    mm_conn: zbus::Connection,
    _nm: zbus::Connection,
    _dir: tempfile::TempDir,
    mm: Arc<Mutex<fake_mm::State>>,
    nm: Arc<Mutex<Nm>>,
    device: Device,
    keeper: Keeper,
}

/// A device whose modem's SIM is unlocked (or as `setup` leaves it), its bearer down.
async fn world(setup: impl FnOnce(&mut fake_mm::State)) -> World {
    gstreamer::init().unwrap();
    let bus = private_bus();
    let mm = fake_mm::state();
    mm.lock().unwrap().locked = false;
    setup(&mut mm.lock().unwrap());
    let nm = fake_nm::state(false);
    let mm_conn = fake_modem_manager(&bus, mm.clone()).await;
    let nm_conn = fake_nm::serve(&bus.address, nm.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg: AgentConfig = toml::from_str(&format!(
        "relay_url = \"https://127.0.0.1:1\"\ndata_dir = \"{}\"\n[links]\nbus = \"{}\"\n\
         [inputs]\nauto_detect = false\n[modems]\nbus = \"{}\"",
        dir.path().display(),
        bus.address,
        bus.address
    ))
    .unwrap();
    let device = Device::new(&cfg);
    let keeper = device
        .bearer_keeper()
        .expect("links from NetworkManager: a keeper");
    World {
        _bus: bus,
        mm_conn,
        _nm: nm_conn,
        _dir: dir,
        mm,
        nm,
        device,
        keeper,
    }
}

impl World {
    /// The modem's data state and the links that are up, as the inventory says.
    async fn seen(&mut self) -> (ModemData, Vec<String>) {
        let inv = self.device.inventory().await;
        let data = inv.modems.iter().find(|m| m.id == MODEM).unwrap().data;
        let up = inv
            .links
            .into_iter()
            .filter(|l| l.up)
            .map(|l| l.name)
            .collect();
        (data, up)
    }

    async fn command(&mut self, id: u64, body: CommandBody) -> Outcome {
        let payload = strata_proto::encode(&strata_proto::RelayMessage::Command(Cmd { id, body }));
        self.device.handle(&payload).await;
        match self.device.outbox.pop() {
            Some(DeviceMessage::Reply(r)) => r.outcome,
            other => panic!("{other:?}"),
        }
    }

    fn activations(&self) -> usize {
        self.nm.lock().unwrap().activations.len()
    }
}

#[tokio::test]
async fn a_modem_gets_a_gsm_connection_auto_configured_then_with_the_owners_apn() {
    let mut w = world(|_| {}).await;
    let t0 = Instant::now();
    w.keeper.step(t0).await;
    {
        let nm = w.nm.lock().unwrap();
        assert_eq!(nm.connections.len(), 1);
        let c = &nm.connections[0];
        assert_eq!(setting(c, "connection", "type").as_deref(), Some("gsm"));
        assert_eq!(flag(c, "connection", "autoconnect"), Some(false));
        assert_eq!(setting(c, "gsm", "device-id").as_deref(), Some(DEVICE_ID));
        // No APN from the owner: NetworkManager picks it for the SIM's operator.
        assert_eq!(flag(c, "gsm", "auto-config"), Some(true));
        assert_eq!(setting(c, "gsm", "apn"), None);
        assert_eq!(flag(c, "gsm", "home-only"), Some(true));
        assert!(
            setting(c, "gsm", "pin").is_none(),
            "no PIN in NetworkManager"
        );
        // Activated on the modem's device, bound by ModemManager's object path.
        assert_eq!(nm.activations, [(0, fake_nm::MODEM)]);
    }
    w.keeper.step(t0 + Duration::from_secs(1)).await;
    let (data, up) = w.seen().await;
    assert_eq!(data, ModemData::Connected);
    assert_eq!(up, ["eth0", "wwan0"]);

    // Steady: no more activations, no second connection.
    for n in 2..10 {
        w.keeper.step(t0 + Duration::from_secs(n)).await;
    }
    assert_eq!(w.activations(), 1);

    // The owner sets an APN: the same connection gets it and is re-activated,
    // even though this modem has no LTE attach profile to take it too.
    w.mm.lock().unwrap().attach_refused = true;
    let apn = CommandBody::SetApn {
        modem: MODEM.into(),
        apn: "internet.telia.se".into(),
    };
    assert_eq!(w.command(1, apn).await, Outcome::Ok);
    w.keeper.step(t0 + Duration::from_secs(11)).await;
    {
        let nm = w.nm.lock().unwrap();
        assert_eq!(nm.connections.len(), 1);
        let c = &nm.connections[0];
        assert_eq!(
            setting(c, "gsm", "apn").as_deref(),
            Some("internet.telia.se")
        );
        assert_ne!(flag(c, "gsm", "auto-config"), Some(true));
        assert_eq!(flag(c, "gsm", "home-only"), Some(true));
        assert_eq!(nm.activations.len(), 2);
    }
    let inv = w.device.inventory().await;
    assert_eq!(inv.modems[0].apn.as_deref(), Some("internet.telia.se"));

    // After a restart the agent keeps the owner's APN (a fresh device, same data_dir).
    let cfg = w.device.config().clone();
    let again = Device::new(&cfg);
    let mut keeper = again.bearer_keeper().unwrap();
    drop_bearer(&w.nm, 36); // removed: unplugged while the agent was down
    keeper.step(t0 + Duration::from_secs(12)).await;
    let nm = w.nm.lock().unwrap();
    assert_eq!(nm.activations.len(), 3);
    assert_eq!(
        nm.connections.len(),
        1,
        "found by gsm.device-id, not added again"
    );
    assert_eq!(
        setting(&nm.connections[0], "gsm", "apn").as_deref(),
        Some("internet.telia.se")
    );
}

#[tokio::test]
async fn a_dropped_bearer_leaves_the_bond_and_comes_back_after_the_backoff() {
    let mut w = world(|_| {}).await;
    let t0 = Instant::now();
    w.keeper.step(t0).await;
    w.keeper.step(t0 + Duration::from_millis(500)).await;
    assert_eq!(
        w.seen().await,
        (ModemData::Connected, vec!["eth0".into(), "wwan0".into()])
    );

    // The agent loop is woken when a modem's state changes (to re-read the
    // links at once), and only then.
    let states = w.device.modem_data();
    let woken = async || {
        tokio::time::timeout(Duration::from_millis(50), states.changed())
            .await
            .is_ok()
    };
    assert!(woken().await, "connected: a change");
    w.keeper.step(t0 + Duration::from_millis(600)).await;
    assert!(!woken().await, "nothing changed");

    // The network drops the bearer (NM_DEVICE_STATE_REASON_MODEM_NO_CARRIER).
    drop_bearer(&w.nm, 25);
    let dropped = t0 + Duration::from_secs(1);
    w.keeper.step(dropped).await;
    assert!(woken().await, "dropped: a change");
    assert_eq!(
        w.seen().await,
        (
            ModemData::BearerFailed { nm_reason: 25 },
            vec!["eth0".into()]
        )
    );
    // Not re-dialled before the backoff (2 s) is over, however often it looks.
    for ms in (100..2000).step_by(100) {
        w.keeper.step(dropped + Duration::from_millis(ms)).await;
    }
    assert_eq!(w.activations(), 1);
    w.keeper.step(dropped + Duration::from_millis(2000)).await;
    assert_eq!(w.activations(), 2);
    w.keeper.step(dropped + Duration::from_millis(2100)).await;
    assert_eq!(
        w.seen().await,
        (ModemData::Connected, vec!["eth0".into(), "wwan0".into()])
    );

    // Dropped again at once: the next wait is longer (4 s).
    drop_bearer(&w.nm, 25);
    let again = dropped + Duration::from_secs(3);
    w.keeper.step(again).await;
    w.keeper.step(again + Duration::from_millis(3900)).await;
    assert_eq!(w.activations(), 2);
    w.keeper.step(again + Duration::from_millis(4000)).await;
    assert_eq!(w.activations(), 3);
}

#[tokio::test]
async fn an_unplugged_modem_comes_back_by_itself_when_plugged_in_again() {
    let mut w = world(|_| {}).await;
    let t0 = Instant::now();
    w.keeper.step(t0).await;
    w.keeper.step(t0 + Duration::from_millis(500)).await;
    assert_eq!(w.seen().await.0, ModemData::Connected);

    fake_mm::unplug(&w.mm_conn).await;
    fake_nm::plug_modem(&w.nm, false);
    w.keeper.step(t0 + Duration::from_secs(1)).await;
    let inv = w.device.inventory().await;
    assert!(inv.modems.is_empty(), "{:?}", inv.modems);
    let up: Vec<_> = inv
        .links
        .iter()
        .filter(|l| l.up)
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(up, ["eth0"]);

    // Plugged in again: dialled at the next look, no backoff (a new modem to the keeper).
    fake_mm::plug(&w.mm_conn, w.mm.clone()).await;
    fake_nm::plug_modem(&w.nm, true);
    w.keeper.step(t0 + Duration::from_millis(1100)).await;
    assert_eq!(w.activations(), 2);
    w.keeper.step(t0 + Duration::from_millis(1200)).await;
    assert_eq!(
        w.seen().await,
        (ModemData::Connected, vec!["eth0".into(), "wwan0".into()])
    );
    assert_eq!(
        w.nm.lock().unwrap().connections.len(),
        1,
        "the same connection"
    );
}

#[tokio::test]
async fn a_bearer_the_network_refuses_is_reported_with_networkmanagers_reason() {
    let mut w = world(|_| {}).await;
    w.nm.lock().unwrap().refuse_with = Some(29); // GSM APN failed
    let t0 = Instant::now();
    w.keeper.step(t0).await;
    assert_eq!(w.seen().await.0, ModemData::Connecting);
    // NetworkManager's device stays down past the activation grace.
    w.keeper.step(t0 + Duration::from_secs(11)).await;
    assert_eq!(
        w.seen().await,
        (
            ModemData::BearerFailed { nm_reason: 29 },
            vec!["eth0".into()]
        )
    );
    assert_eq!(w.activations(), 1);
}

#[tokio::test]
async fn sim_and_network_states_are_reported_and_never_dialled() {
    type Setup = fn(&mut fake_mm::State);
    let cases: [(Setup, ModemData); 6] = [
        (|s| s.locked = true, ModemData::SimPinRequired),
        (|s| s.sim_missing = true, ModemData::NoSim),
        (|s| s.puk = true, ModemData::SimPukLocked),
        (|s| s.registration = 2, ModemData::Searching),
        (|s| s.registration = 3, ModemData::RegistrationDenied),
        (|s| s.registration = 5, ModemData::RoamingNotAllowed),
    ];
    for (setup, want) in cases {
        let mut w = world(setup).await;
        let t0 = Instant::now();
        for n in 0..5 {
            w.keeper.step(t0 + Duration::from_secs(n * 30)).await;
        }
        assert_eq!(w.seen().await, (want, vec!["eth0".into()]), "{want:?}");
        assert_eq!(w.activations(), 0, "{want:?}: never dialled");
        assert!(
            w.mm.lock().unwrap().pins_tried.is_empty(),
            "the keeper never sends a PIN"
        );
    }

    // The owner enters the PIN: the modem is dialled at the next look.
    let mut w = world(|s| s.locked = true).await;
    let t0 = Instant::now();
    w.keeper.step(t0).await;
    assert_eq!(w.seen().await.0, ModemData::SimPinRequired);
    let unlock = CommandBody::UnlockSim {
        modem: MODEM.into(),
        pin: Secret("1234".into()),
    };
    assert_eq!(w.command(1, unlock).await, Outcome::Ok);
    w.keeper.step(t0 + Duration::from_secs(1)).await;
    w.keeper.step(t0 + Duration::from_secs(2)).await;
    assert_eq!(w.seen().await.0, ModemData::Connected);
}

#[tokio::test]
async fn a_wrong_pin_is_sent_once_only() {
    let mut w = world(|s| s.locked = true).await;
    let wrong = |id| {
        (
            id,
            CommandBody::UnlockSim {
                modem: MODEM.into(),
                pin: Secret("9999".into()),
            },
        )
    };
    let (id, body) = wrong(1);
    let Outcome::Failed(why) = w.command(id, body).await else {
        panic!("a wrong PIN is refused")
    };
    assert!(!why.contains("9999"), "{why}");
    // The owner (or a retrying relay, with a new command id) sends it again.
    let (id, body) = wrong(2);
    let Outcome::Failed(why) = w.command(id, body).await else {
        panic!("a refused PIN is refused again")
    };
    assert!(
        why.contains("already refused") && !why.contains("9999"),
        "{why}"
    );
    let t0 = Instant::now();
    for n in 0..5 {
        w.keeper.step(t0 + Duration::from_secs(n)).await;
    }
    assert_eq!(w.mm.lock().unwrap().pins_tried, ["9999"]);
    // Another PIN is one more try.
    let right = CommandBody::UnlockSim {
        modem: MODEM.into(),
        pin: Secret("1234".into()),
    };
    assert_eq!(w.command(3, right).await, Outcome::Ok);
    assert_eq!(w.mm.lock().unwrap().pins_tried, ["9999", "1234"]);

    // A PUK-locked SIM gets no PIN at all.
    let mut w = world(|s| s.puk = true).await;
    let (id, body) = wrong(1);
    let Outcome::Failed(why) = w.command(id, body).await else {
        panic!("refused")
    };
    assert!(why.contains("PUK"), "{why}");
    assert!(w.mm.lock().unwrap().pins_tried.is_empty());
}
