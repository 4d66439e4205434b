//! The world around the agent in the end-to-end tests: a real `strata-relay`
//! process (which runs real `strata-receiver` workers), an owner driving it
//! over HTTPS like a browser and its JSON API, and a TCP proxy in front of
//! the broker that a test can cut; a fake ModemManager ([`fake_mm`]) and
//! NetworkManager ([`fake_nm`]).

#![allow(dead_code)]

pub mod fake_mm;
pub mod fake_nm;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

/// A binary of the workspace, built next to this test (cargo test --workspace).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// A running `strata-relay serve`.
pub struct Relay {
    child: Child,
    /// Its data directory.
    pub data: PathBuf,
    /// Dashboard URL.
    pub url: String,
    /// The broker's real port.
    pub broker_port: u16,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PASSWORD: &str = "correct horse battery";

impl Relay {
    /// Starts a relay in `data` with one owner; devices are told to reach the
    /// broker at `advertised_broker_port` (a proxy) and RIST ports from `rist_first`.
    pub fn start(data: &Path, advertised_broker_port: u16, rist_first: u16) -> Relay {
        Relay::start_with(data, advertised_broker_port, rist_first, &[])
    }

    /// [`Relay::start`] with more `STRATA_RELAY_*` settings.
    pub fn start_with(
        data: &Path,
        advertised_broker_port: u16,
        rist_first: u16,
        extra: &[(&str, &str)],
    ) -> Relay {
        let bin = workspace_bin("strata-relay");
        workspace_bin("strata-receiver");
        let env = |c: &mut Command| {
            c.env("STRATA_RELAY_DATA_DIR", data)
                .env("STRATA_RELAY_LISTEN", "127.0.0.1:0")
                .env("STRATA_RELAY_BROKER_LISTEN", "127.0.0.1:0")
                .env(
                    "STRATA_RELAY_BROKER_PORT",
                    advertised_broker_port.to_string(),
                )
                .env("STRATA_RELAY_RIST_PORT_FIRST", rist_first.to_string())
                .env("STRATA_RELAY_RIST_PORT_LAST", (rist_first + 99).to_string())
                .env("STRATA_RELAY_STREAM_OFFLINE_GRACE_S", "120")
                .envs(extra.iter().copied())
                .env_remove("STRATA_RELAY_CONFIG");
        };
        let mut add = Command::new(&bin);
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
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        assert!(child.wait().unwrap().success(), "user add");

        let mut serve = Command::new(&bin);
        env(&mut serve);
        let log = std::fs::File::create(data.join("relay.log")).unwrap();
        let mut child = serve
            .arg("serve")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let broker = lines.next().expect("broker line").unwrap();
        let broker_port = broker.rsplit(':').next().unwrap().trim().parse().unwrap();
        let url = lines
            .next()
            .expect("listening line")
            .unwrap()
            .strip_prefix("strata-relay listening on ")
            .expect("listening line")
            .to_string();
        Relay {
            child,
            data: data.into(),
            url,
            broker_port,
        }
    }

    /// The relay's self-signed certificate.
    pub fn cert_path(&self) -> PathBuf {
        self.data.join("tls/cert.pem")
    }

    /// Its log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("relay.log")).unwrap_or_default()
    }
}

/// The owner: a logged-in browser session and an API token.
pub struct Owner {
    http: reqwest::Client,
    base: String,
    /// Organization id.
    pub org: String,
    token: String,
}

fn csrf(html: &str) -> String {
    let i = html.find("name=\"_csrf\" value=\"").expect("a CSRF field") + 20;
    html[i..i + 64].to_string()
}

impl Owner {
    /// Logs in and creates an API token.
    pub async fn login(relay: &Relay) -> Owner {
        let cert =
            reqwest::Certificate::from_pem(&std::fs::read(relay.cert_path()).unwrap()).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(cert)
            .cookie_store(true)
            .build()
            .unwrap();
        let base = relay.url.clone();
        let page = http.get(format!("{base}/login")).send().await.unwrap();
        let token = csrf(&page.text().await.unwrap());
        let resp = http
            .post(format!("{base}/login"))
            .form(&[
                ("email", "owner@example.com"),
                ("password", PASSWORD),
                ("_csrf", &token),
            ])
            .send()
            .await
            .unwrap();
        let path = resp.url().path().to_string();
        let org = path
            .strip_prefix("/o/")
            .and_then(|p| p.split('/').next())
            .unwrap_or_else(|| panic!("logged in to {path}"))
            .to_string();
        let html = resp.text().await.unwrap();
        let resp = http
            .post(format!("{base}/o/{org}/tokens"))
            .form(&[("name", "test"), ("role", "owner"), ("_csrf", &csrf(&html))])
            .send()
            .await
            .unwrap();
        let html = resp.text().await.unwrap();
        let i = html.find("id=\"new-token\">").expect("token shown once") + 15;
        let token = html[i..].split('<').next().unwrap().trim().to_string();
        Owner {
            http,
            base,
            org,
            token,
        }
    }

    /// Claims a device by its user code into the organization.
    pub async fn claim(&self, user_code: &str, name: &str) {
        let page = self
            .http
            .get(format!("{}/claim?code={user_code}", self.base))
            .send()
            .await
            .unwrap();
        let html = page.text().await.unwrap();
        let resp = self
            .http
            .post(format!("{}/claim", self.base))
            .form(&[
                ("code", user_code),
                ("org", &self.org),
                ("name", name),
                ("decision", "approve"),
                ("_csrf", &csrf(&html)),
            ])
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "claim: {}", resp.status());
    }

    /// Posts a dashboard form (with the CSRF token of `page`); returns status and HTML.
    pub async fn form(&self, page: &str, action: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let html = self
            .http
            .get(format!("{}{page}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let token = csrf(&html);
        let mut all = fields.to_vec();
        all.push(("_csrf", &token));
        let resp = self
            .http
            .post(format!("{}{action}", self.base))
            .form(&all)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// An API call; returns status and JSON (Null when empty).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/api/v1/o/{}{path}", self.base, self.org);
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// A TCP proxy to the broker that can be cut (connections dropped, new ones refused).
pub struct Proxy {
    /// Where devices connect.
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    /// Listens on a free port; forwards to `target` once set.
    pub async fn start() -> (Proxy, tokio::sync::oneshot::Sender<u16>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<u16>();
        let (u, g) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            let target = rx.await.unwrap();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (u, g) = (u.clone(), g.clone());
                tokio::spawn(async move {
                    let mine = g.load(Ordering::SeqCst);
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let cut = async {
                        while u.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == mine {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy(&mut ri, &mut wo) => {}
                        _ = tokio::io::copy(&mut ro, &mut wi) => {}
                        _ = cut => {}
                    }
                });
            }
        });
        (
            Proxy {
                port,
                up,
                generation,
            },
            tx,
        )
    }

    /// Cuts every connection and refuses new ones (`false`), or lets them through.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// ffprobe's view of a media file: (codec names, duration in seconds).
pub fn probe(path: &Path) -> (Vec<String>, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:format=duration",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let codecs = v["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["codec_name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (codecs, duration)
}

/// Waits until `f` is true, polling every 200 ms; panics with `what` after `secs`.
pub async fn until<F: AsyncFnMut() -> bool>(what: &str, secs: u64, mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// nginx with the RTMP module on a free port, recording what it receives
/// as FLV (`rec/`); stopped when dropped.
pub struct Nginx {
    child: Child,
    /// Its directory (config, logs, recordings).
    pub dir: PathBuf,
    /// Its RTMP port.
    pub port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// Starts nginx in `dir`.
    pub fn start(dir: &Path) -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all(dir.join("rec")).unwrap();
        let conf = format!(
            "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
             user root;\nmaster_process off;\ndaemon off;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
               application live {{ live on; record all; record_path {d}/rec; record_unique on; }} }} }}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx with the RTMP module (scripts/setup installs it)");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "nginx did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            dir: dir.to_path_buf(),
            port,
        }
    }

    /// What it recorded, oldest first.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(self.dir.join("rec"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }
}
