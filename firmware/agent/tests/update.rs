//! Self-update end to end: the agent binary (as the factory launcher) runs
//! against a real `strata-relay`, enrolls, and is updated from the API with
//! releases added by `strata-relay release add` and signed with
//! `strata-release`: a good release is installed and reports its version;
//! a bad signature, a truncated release and a release that never reaches
//! the relay all leave the installed version running, each with its reason
//! on the sender; an older release is refused; and the next good one,
//! without a reboot in between, installs.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use support::{Owner, Relay, until, workspace_bin};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, relay: &Relay, key_file: &Path) -> PathBuf {
    let data = dir.join("data");
    let text = format!(
        r#"
relay_url = "{url}"
relay_ca_file = "{ca}"
data_dir = "{data}"
[modems]
enabled = false
[update]
public_key_file = "{key}"
trial_s = 8
[simulation]
seed = 3
[[simulation.link]]
name = "wwan0"
rate_kbps = 2000
delay_ms = 10
"#,
        url = relay.url,
        ca = relay.cert_path().display(),
        data = data.display(),
        key = key_file.display(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs a command to success; its standard output.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Signs `binary` as `version` with `key` and adds it to the relay.
fn add_release(relay: &Relay, key: &Path, version: &str, binary: &Path) {
    let signature = run_ok(
        Command::new(workspace_bin("strata-release"))
            .args(["sign", "--version", version, "--binary"])
            .arg(binary)
            .arg("--key")
            .arg(key),
    );
    run_ok(
        Command::new(workspace_bin("strata-relay"))
            .args(["release", "add", "--version", version, "--target"])
            .arg(strata_release::TARGET)
            .arg("--binary")
            .arg(binary)
            .args(["--signature", signature.trim()])
            .env("STRATA_RELAY_DATA_DIR", &relay.data)
            .env_remove("STRATA_RELAY_CONFIG"),
    );
}

fn keygen(path: &Path) {
    let public = run_ok(
        Command::new(workspace_bin("strata-release"))
            .args(["keygen", "--out"])
            .arg(path),
    );
    std::fs::write(path.with_extension("pub"), public.trim()).unwrap();
}

async fn sender(owner: &Owner, id: &str) -> Value {
    owner.api("GET", &format!("/senders/{id}"), None).await.1
}

async fn update(owner: &Owner, id: &str, version: &str) {
    let (status, body) = owner
        .api(
            "POST",
            &format!("/senders/{id}/update"),
            Some(json!({"version": version, "target": strata_release::TARGET})),
        )
        .await;
    assert_eq!(status, 202, "update to {version}: {body}");
}

/// Waits until the sender's last update reads `contains`.
async fn update_reads(owner: &Owner, id: &str, contains: &str, secs: u64) -> Value {
    let mut last = Value::Null;
    until(
        &format!("the update to read {contains:?}"),
        secs,
        async || {
            last = sender(owner, id).await;
            last["agent_update"]
                .as_str()
                .is_some_and(|u| u.contains(contains))
                && last["online"] == true
        },
    )
    .await;
    last
}

#[tokio::test]
async fn signed_releases_install_and_bad_ones_roll_back() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("relay")).unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), 0, 24600);
    let owner = Owner::login(&relay).await;

    let key = tmp.path().join("release.key");
    keygen(&key);
    let wrong_key = tmp.path().join("wrong.key");
    keygen(&wrong_key);
    // The factory binary, in a place of its own (the launcher every restart goes through).
    let factory = tmp.path().join("factory");
    std::fs::create_dir_all(&factory).unwrap();
    let agent_bin = factory.join("strata-agent");
    std::fs::copy(workspace_bin("strata-agent"), &agent_bin).unwrap();
    let cfg = write_config(tmp.path(), &relay, &key.with_extension("pub"));
    let log_path = tmp.path().join("agent.log");
    let child = Command::new(&agent_bin)
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let _agent = Agent(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Enrollment: the code from the agent's log, claimed by the owner.
    let mut code = String::new();
    until("the agent shows its enrollment code", 30, async || {
        code = log()
            .lines()
            .find_map(|l| l.split("user_code=").nth(1))
            .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_default();
        !code.is_empty()
    })
    .await;
    owner.claim(&code, "Updater").await;
    let mut id = String::new();
    until("the device online", 30, async || {
        let (_, list) = owner.api("GET", "/senders", None).await;
        if let Some(s) = list.as_array().and_then(|a| a.first()) {
            id = s["id"].as_str().unwrap().to_string();
            return s["online"] == true;
        }
        false
    })
    .await;
    assert_eq!(
        sender(&owner, &id).await["agent_version"],
        env!("CARGO_PKG_VERSION")
    );

    // A good release: downloaded, verified, restarted into, committed.
    add_release(&relay, &key, "9.0.1", &agent_bin);
    update(&owner, &id, "9.0.1").await;
    let s = update_reads(&owner, &id, "Updated to 9.0.1", 60).await;
    assert_eq!(s["agent_version"], "9.0.1", "{}", log());
    let installed = tmp.path().join("data/update/installed/release.json");
    assert!(
        std::fs::read_to_string(&installed)
            .unwrap()
            .contains("9.0.1"),
        "installed on the data partition"
    );

    // Signed with another key: refused before anything changes.
    add_release(&relay, &wrong_key, "9.0.2", &agent_bin);
    update(&owner, &id, "9.0.2").await;
    let s = update_reads(&owner, &id, "signature", 60).await;
    assert_eq!(s["agent_version"], "9.0.1");

    // The stored release cut short: its SHA-256 no longer matches.
    add_release(&relay, &key, "9.0.3", &agent_bin);
    let stored = relay
        .data
        .join("releases")
        .join(strata_release::TARGET)
        .join("9.0.3/strata-agent");
    let len = std::fs::metadata(&stored).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&stored)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    update(&owner, &id, "9.0.3").await;
    let s = update_reads(&owner, &id, "SHA-256", 60).await;
    assert_eq!(s["agent_version"], "9.0.1");

    // Properly signed but never reaches the relay: stopped after trial_s,
    // the installed version runs again and says why.
    let hang = tmp.path().join("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 600\n").unwrap();
    add_release(&relay, &key, "9.0.4", &hang);
    update(&owner, &id, "9.0.4").await;
    let s = update_reads(&owner, &id, "Update to 9.0.4 failed", 90).await;
    assert!(
        s["agent_update"]
            .as_str()
            .unwrap()
            .contains("did not reach the relay within 8 s"),
        "{s}"
    );
    assert_eq!(s["agent_version"], "9.0.1", "{}", log());
    assert!(
        !tmp.path().join("data/update/trial").exists(),
        "the failed trial is gone"
    );
    let lines: Vec<String> = BufReader::new(std::fs::File::open(&log_path).unwrap())
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains("given up"))
        .collect();
    assert_eq!(lines.len(), 1, "one trial given up: {lines:?}");

    // No downgrades: an older signed release is refused at once.
    add_release(&relay, &key, "9.0.0", &agent_bin);
    let (status, body) = owner
        .api(
            "POST",
            &format!("/senders/{id}/update"),
            Some(json!({"version": "9.0.0", "target": strata_release::TARGET})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("not newer"), "{body}");

    // And after all that, the next good release still installs.
    add_release(&relay, &key, "9.1.0", &agent_bin);
    update(&owner, &id, "9.1.0").await;
    let s = update_reads(&owner, &id, "Updated to 9.1.0", 60).await;
    assert_eq!(s["agent_version"], "9.1.0", "{}", log());
    let previous = tmp.path().join("data/update/previous/release.json");
    assert!(
        std::fs::read_to_string(&previous)
            .unwrap()
            .contains("9.0.1")
    );
}
