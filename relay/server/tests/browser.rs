//! The dashboard in real headless Chromium (Debian's `chromium`, driven by
//! playwright-core from `tests/browser/`, installed by scripts/setup).
//! Screenshots: `target/screenshots/`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use strata_relay::store::senders::{self, InputInfo, Inventory, LinkInfo, LinkSample, ModemInfo};

const BIN: &str = env!("CARGO_BIN_EXE_strata-relay");

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

#[tokio::test]
async fn log_in_add_destination_change_settings_log_out() {
    assert!(
        browser_dir().join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "playwright-core or chromium missing: run scripts/setup"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let env = |c: &mut Command| {
        c.env("STRATA_RELAY_DATA_DIR", &data)
            .env("STRATA_RELAY_LISTEN", "127.0.0.1:0")
            .env("STRATA_RELAY_BROKER_LISTEN", "127.0.0.1:0");
    };
    let mut add = Command::new(BIN);
    env(&mut add);
    let mut child = add
        .args([
            "user",
            "add",
            "--email",
            "owner@example.com",
            "--org",
            "Acme",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "correct horse battery").unwrap();
    assert!(child.wait().unwrap().success());

    // A sender as the device plane would have registered it.
    let db = strata_relay::db::connect(&format!("sqlite://{}/strata.db", data.display()))
        .await
        .unwrap();
    let (org,): (String,) = sqlx::query_as("SELECT id FROM organizations")
        .fetch_one(&db)
        .await
        .unwrap();
    let inventory = Inventory {
        links: vec![
            LinkInfo {
                name: "wwan0".into(),
                kind: "cellular".into(),
                up: true,
            },
            LinkInfo {
                name: "eth0".into(),
                kind: "ethernet".into(),
                up: true,
            },
        ],
        modems: vec![ModemInfo {
            id: "359072060000001".into(),
            model: "EM7455".into(),
            operator: "Telia".into(),
            technology: "lte".into(),
            signal_percent: 71,
            sim: "ready".into(),
            interface: "wwan0".into(),
            enabled: true,
            rsrp_dbm: Some(-97.0),
            sinr_db: Some(12.0),
            data: "carrying data".into(),
        }],
        inputs: vec![InputInfo {
            id: "hdmi0".into(),
            kind: "v4l2".into(),
            name: "HDMI capture".into(),
        }],
    };
    let sender = senders::create(&db, &org, "van-1", &inventory)
        .await
        .unwrap();
    senders::set_presence(&db, &sender, true, strata_relay::now_ms())
        .await
        .unwrap();

    let mut serve = Command::new(BIN);
    env(&mut serve);
    let mut server = serve
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = BufReader::new(server.stdout.take().unwrap())
        .lines()
        .map(|l| l.unwrap())
        .find(|l| l.starts_with("strata-relay listening on "))
        .unwrap();
    let url = line
        .strip_prefix("strata-relay listening on ")
        .unwrap()
        .to_string();

    // Telemetry keeps arriving while the browser works: one link appears only later.
    let feeder_db = db.clone();
    let feeder_sender = sender.clone();
    let feeder = tokio::spawn(async move {
        for i in 0.. {
            let ts = strata_relay::now_ms();
            let mut samples = vec![LinkSample {
                ts,
                link: "wwan0".into(),
                kbps: 2000 + i * 10,
                rtt_ms: 60,
                loss_permille: 4,
                retransmit_permille: 6,
            }];
            if i > 3 {
                samples.push(LinkSample {
                    ts,
                    link: "wwan2".into(),
                    kbps: 1200,
                    rtt_ms: 85,
                    loss_permille: 9,
                    retransmit_permille: 11,
                });
            }
            senders::record_telemetry(&feeder_db, &feeder_sender, &samples)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let key = "live_3x4m-pl3k-3y99";
    let mut node = Command::new("node");
    node.arg(browser_dir().join("dashboard.mjs"))
        .env("RELAY_URL", &url)
        .env("EMAIL", "owner@example.com")
        .env("PASSWORD", "correct horse battery")
        .env("SCREENSHOTS", &shots)
        .env("STREAM_KEY", key);
    let out = tokio::task::spawn_blocking(move || node.output().unwrap())
        .await
        .unwrap();
    feeder.abort();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("logged out"), "{stdout}");

    // What the browser did is in the database.
    let s = senders::get(&db, &org, &sender)
        .await
        .unwrap()
        .unwrap()
        .settings();
    assert_eq!((s.height, s.fps, s.max_kbps), (1080, 25, 4500));
    let (secret_enc,): (String,) = sqlx::query_as("SELECT secret_enc FROM destinations")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(!secret_enc.contains(key));
    for shot in ["destinations.png", "sender.png"] {
        assert!(
            std::fs::metadata(shots.join(shot)).unwrap().len() > 10_000,
            "{shot}"
        );
    }
}
