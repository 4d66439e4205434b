//! The agent against a real `strata-relay` (and its `strata-receiver`
//! workers), as an owner would use them: enrollment by user code, the
//! device online with its inventory, a stream from the test pattern over
//! three emulated links recorded by the relay and forwarded to nginx-rtmp
//! (ffprobe checks both), the
//! control channel cut for 30 s while the stream goes on, a restart that
//! keeps the identity, and revocation that stops the device and says why.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use strata_agent::config::AgentConfig;
use strata_agent::enrollment::Pending;
use support::fake_mm::{fake_modem_manager, private_bus};
use support::{Nginx, Owner, Proxy, Relay, probe, until};
use tokio::sync::{mpsc, oneshot};

struct RunningAgent {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningAgent {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("agent stops within 15 s")
            .unwrap()
            .unwrap();
    }
}

fn config(relay: &Relay, data: &std::path::Path, modem_bus: &str) -> AgentConfig {
    let text = format!(
        r#"
relay_url = "{url}"
relay_ca_file = "{ca}"
data_dir = "{data}"
[modems]
bus = "{modem_bus}"
[simulation]
seed = 7
[[simulation.link]]
name = "wwan0"
rate_kbps = 3000
delay_ms = 10
loss_percent = 0.5
[[simulation.link]]
name = "wwan1"
rate_kbps = 2000
delay_ms = 20
loss_percent = 1
[[simulation.link]]
name = "wwan2"
rate_kbps = 2000
delay_ms = 30
"#,
        url = relay.url,
        ca = relay.cert_path().display(),
        data = data.display(),
    );
    let cfg: AgentConfig = toml::from_str(&text).unwrap();
    cfg.validate().unwrap();
    cfg
}

fn start_agent(cfg: AgentConfig, codes: mpsc::UnboundedSender<Pending>) -> RunningAgent {
    let (tx, rx) = oneshot::channel();
    let hooks = strata_agent::Hooks {
        on_pending: Arc::new(move |p: &Pending| {
            let _ = codes.send(p.clone());
        }),
    };
    let task = tokio::spawn(strata_agent::run(cfg, hooks, async {
        let _ = rx.await;
    }));
    RunningAgent {
        stop: Some(tx),
        task,
    }
}

async fn sender(owner: &Owner, id: &str) -> Value {
    owner.api("GET", &format!("/senders/{id}"), None).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enroll_stream_survive_control_outage_restart_and_revoke() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The agent's log, shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("strata_agent=debug,info")
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let (proxy, target) = Proxy::start().await;
    let relay = Relay::start(&tmp.path().join("relay"), proxy.port, 47_000);
    target.send(relay.broker_port).unwrap();
    let owner = Owner::login(&relay).await;
    let agent_data = tmp.path().join("agent");
    let bus = private_bus();
    let modem = support::fake_mm::state();
    let _mm = fake_modem_manager(&bus, modem.clone()).await;
    let cfg = config(&relay, &agent_data, &bus.address);

    // Enrollment: the agent shows a code, the owner claims it.
    let (codes_tx, mut codes) = mpsc::unbounded_channel();
    let agent = start_agent(cfg.clone(), codes_tx.clone());
    let pending = tokio::time::timeout(Duration::from_secs(20), codes.recv())
        .await
        .expect("an enrollment code within 20 s")
        .unwrap();
    assert!(
        pending
            .verification_uri_complete
            .contains(&pending.user_code),
        "{pending:?}"
    );
    owner.claim(&pending.user_code, "Van 7").await;

    let id = Arc::new(Mutex::new(String::new()));
    until("the device online with three links", 30, async || {
        let (_, list) = owner.api("GET", "/senders", None).await;
        let Some(s) = list.as_array().and_then(|a| a.first()).cloned() else {
            return false;
        };
        *id.lock().unwrap() = s["id"].as_str().unwrap_or_default().to_string();
        s["online"] == true
            && s["inventory"]["links"]
                .as_array()
                .is_some_and(|l| l.len() == 3)
    })
    .await;
    let id = id.lock().unwrap().clone();

    // The modem (behind wwan0) as the owner sees it, and the SIM PIN typed on
    // the sender page reaching ModemManager on the device.
    let modem_id = sender(&owner, &id).await["inventory"]["modems"][0]["id"]
        .as_str()
        .expect("a modem in the inventory")
        .to_string();
    let page = format!("/o/{}/senders/{id}", owner.org);
    let action = format!("{page}/modems/{modem_id}");
    let (status, html) = owner
        .form(&page, &action, &[("action", "pin"), ("pin", "9999")])
        .await;
    assert_eq!(status, 200);
    assert!(
        html.contains("The device refused") && html.contains("Incorrect password"),
        "{html}"
    );
    assert!(modem.lock().unwrap().locked);
    let (_, html) = owner
        .form(&page, &action, &[("action", "pin"), ("pin", "1234")])
        .await;
    assert!(
        html.contains("SIM unlocked: the device confirmed"),
        "{html}"
    );
    assert!(!html.contains("value=\"1234\""), "the PIN is not echoed");
    assert!(!modem.lock().unwrap().locked);
    // The same through the API: an APN, and a malformed one refused before the device.
    let path = format!("/senders/{id}/modems/{modem_id}");
    let (status, body) = owner
        .api(
            "POST",
            &path,
            Some(json!({"action": "apn", "apn": "internet.telia.se"})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        modem.lock().unwrap().apn.as_deref(),
        Some("internet.telia.se")
    );
    let (status, _) = owner
        .api(
            "POST",
            &path,
            Some(json!({"action": "apn", "apn": "two words"})),
        )
        .await;
    assert_eq!(status, 400);
    let key = std::fs::read_to_string(agent_data.join("identity/device.key")).unwrap();

    // A recording and an RTMP destination (nginx-rtmp), and a stream to both.
    let (status, dest) = owner
        .api(
            "POST",
            "/destinations",
            Some(json!({"name": "Archive", "kind": "record", "target": "10"})),
        )
        .await;
    assert_eq!(status, 201, "{dest}");
    let dest_id = dest["id"].as_str().unwrap().to_string();
    let nginx = Nginx::start(&tmp.path().join("nginx"));
    let (status, live) = owner
        .api(
            "POST",
            "/destinations",
            Some(json!({
                "name": "Live",
                "kind": "rtmp",
                "target": format!("rtmp://127.0.0.1:{}/live", nginx.port),
                "secret": "agent-test-key",
            })),
        )
        .await;
    assert_eq!(status, 201, "{live}");
    let (status, started) = owner
        .api(
            "POST",
            &format!("/senders/{id}/streams"),
            Some(json!({"destinations": [dest_id, live["id"]]})),
        )
        .await;
    assert_eq!(status, 201, "{started}\n{}", relay.log());
    let stream_id = started["id"].as_str().unwrap().to_string();

    until("telemetry from three links", 40, async || {
        let (_, t) = owner
            .api("GET", &format!("/senders/{id}/telemetry"), None)
            .await;
        t.to_string().matches("wwan").count() >= 3
    })
    .await;
    assert_eq!(
        sender(&owner, &id).await["current_stream_id"],
        json!(stream_id)
    );

    // The control channel goes away for 30 s: the stream goes on.
    let rec_dir = relay.data.join("recordings").join(&dest_id);
    let size = || -> u64 {
        std::fs::read_dir(&rec_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.metadata().map_or(0, |m| m.len()))
                    .sum()
            })
            .unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_up(false);
    until("the relay sees the device offline", 20, async || {
        sender(&owner, &id).await["online"] == false
    })
    .await;
    let before = size();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = size();
    assert!(
        during > before + 1_000_000,
        "recording grew {} bytes while the control channel was down",
        during - before
    );
    proxy.set_up(true);
    let back = std::time::Instant::now();
    until("the device back online", 15, async || {
        sender(&owner, &id).await["online"] == true
    })
    .await;
    eprintln!("control channel back after {:?}", back.elapsed());
    assert!(back.elapsed() < Duration::from_secs(8));

    // Stop: the recording is finalized and holds H.264 + AAC.
    let (status, _) = owner
        .api("POST", &format!("/streams/{stream_id}/stop"), None)
        .await;
    assert_eq!(status, 204);
    until("the device reports it stopped", 15, async || {
        sender(&owner, &id).await["current_stream_id"].is_null()
    })
    .await;
    let mut files: Vec<_> = std::fs::read_dir(&rec_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let (codecs, duration) = probe(&files[0]);
    assert!(
        codecs.contains(&"h264".to_string()) && codecs.contains(&"aac".to_string()),
        "{codecs:?}"
    );
    assert!(duration > 30.0, "recorded {duration} s");
    // nginx got the same stream over RTMP (FLV remux, no transcoding).
    let mut flv = Vec::new();
    until("nginx finalized its recording", 10, async || {
        flv = nginx.recordings();
        !flv.is_empty()
    })
    .await;
    let (codecs, secs) = probe(flv.last().unwrap());
    assert!(
        codecs.contains(&"h264".to_string()) && codecs.contains(&"aac".to_string()),
        "nginx: {codecs:?}"
    );
    assert!(secs > 30.0, "nginx recorded {secs} s");

    // A restart keeps the identity: online again without a new code.
    agent.stop().await;
    until("offline after the agent stopped", 10, async || {
        sender(&owner, &id).await["online"] == false
    })
    .await;
    let agent = start_agent(cfg.clone(), codes_tx.clone());
    until("online again after the restart", 20, async || {
        sender(&owner, &id).await["online"] == true
    })
    .await;
    assert!(
        codes.try_recv().is_err(),
        "no new enrollment after a restart"
    );
    assert_eq!(
        std::fs::read_to_string(agent_data.join("identity/device.key")).unwrap(),
        key
    );

    // Revocation: the device is cut off and goes back to enrollment, with a new code.
    let (status, body) = owner
        .api("POST", &format!("/senders/{id}/revoke"), None)
        .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    let again = tokio::time::timeout(Duration::from_secs(20), codes.recv())
        .await
        .expect("a new enrollment code after revocation")
        .unwrap();
    assert_ne!(again.user_code, pending.user_code);
    assert!(!agent_data.join("identity/credentials.json").exists());
    agent.stop().await;
}
