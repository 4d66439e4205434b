//! The `strata-relay` binary as an operator runs it: first start creates
//! everything, `user add` reads the password from stdin, HTTPS with the
//! self-signed certificate, a browser-like login, SIGTERM stops it cleanly.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_strata-relay");

fn relay(data: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("STRATA_RELAY_DATA_DIR", data)
        .env("STRATA_RELAY_LISTEN", "127.0.0.1:0")
        .env("STRATA_RELAY_BROKER_LISTEN", "127.0.0.1:0")
        .env_remove("STRATA_RELAY_CONFIG");
    c
}

fn user_add(data: &Path, email: &str, password: &str) -> std::process::Output {
    let mut child = relay(data)
        .args(["user", "add", "--email", email, "--org", "Acme Broadcast"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path) -> Server {
    let mut child = relay(data)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The device broker's line comes first, then the dashboard's.
    let broker = lines.next().expect("a line on stdout").unwrap();
    assert!(
        broker.starts_with("strata-relay device broker on mqtts://127.0.0.1:"),
        "{broker}"
    );
    let line = lines.next().expect("a second line on stdout").unwrap();
    let url = line
        .strip_prefix("strata-relay listening on ")
        .expect("listening line")
        .to_string();
    Server { child, url }
}

#[test]
fn help_on_every_subcommand() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["user", "--help"],
        &["user", "add", "--help"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn bad_config_and_bad_users_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("relay.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\ndatabase = \"oops\"\n").unwrap();
    let out = relay(tmp.path())
        .args(["--config", cfg.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("database"),
        "names the bad key"
    );

    let data = tmp.path().join("data");
    let out = user_add(&data, "not-an-email", "correct horse battery");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an email"));
    let out = user_add(&data, "ann@example.com", "short");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 10"));
    assert!(
        user_add(&data, "ann@example.com", "correct horse battery")
            .status
            .success()
    );
    let out = user_add(&data, "ann@example.com", "correct horse battery");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

#[tokio::test]
async fn first_start_https_login_and_sigterm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = user_add(&data, "ann@example.com", "correct horse battery");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("owner of \"Acme Broadcast\""));
    for f in [
        "strata.db",
        "session.key",
        "secrets.key",
        "tls/cert.pem",
        "tls/key.pem",
    ] {
        assert!(data.join(f).exists(), "{f} created");
    }

    let mut server = serve(&data);
    assert!(server.url.starts_with("https://127.0.0.1:"));
    let cert =
        reqwest::Certificate::from_pem(&std::fs::read(data.join("tls/cert.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(cert)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .unwrap();
    // The certificate names 127.0.0.1, so verification passes with it as the root.
    let login = client
        .get(format!("{}/login", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let html = login.text().await.unwrap();
    let i = html.find("name=\"_csrf\" value=\"").unwrap() + 20;
    let csrf = &html[i..i + 64];
    let resp = client
        .post(format!("{}/login", server.url))
        .form(&[
            ("email", "ann@example.com"),
            ("password", "correct horse battery"),
            ("_csrf", csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.url().path().ends_with("/senders"), "{}", resp.url());
    let page = resp.text().await.unwrap();
    assert!(page.contains("Acme Broadcast") && page.contains("ann@example.com"));

    // Without the certificate as a root, a client refuses the connection.
    let strict = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(
        strict
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .is_err()
    );
    // Plain HTTP gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(server.url.replace("https://", "http://") + "/healthz")
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);

    // SIGTERM: graceful exit 0.
    let pid = server.child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc_kill(pid, 15) }, 0);
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still running 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
