//! The external broker: a mosquitto (2.0, Debian's) with the
//! dynamic-security plugin, which the relay administers over MQTT.
//!
//! Devices authenticate with the certificates the device CA issues
//! (`use_identity_as_username`: the CN is the username and, with
//! `use_username_as_clientid`, the client id). The relay connects as
//! [`CONTROL_CLIENT_ID`] with a certificate it issues itself at start, and
//! keeps the plugin's list in step with the database: every enrolled device
//! gets a client and a role allowing exactly its own topics (the plugin has
//! no `%u` patterns, so one role per device); a revoked one is disabled
//! (which disconnects it at once) and deleted, so a reconnect may neither
//! publish nor subscribe. The relay also writes a CRL of revoked devices'
//! certificates for mosquitto's `crlfile`, which refuses them at the TLS
//! handshake once mosquitto has reloaded it (SIGHUP).
//!
//! [`files`] writes the configuration mosquitto needs (`strata-relay mosquitto-config`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use strata_proto::topic::{self, Kind};
use tokio::sync::{mpsc, oneshot};

use super::CONTROL_CLIENT_ID;
use crate::ca::DeviceCa;
use crate::control::Inbound;
use crate::db::Db;
use crate::store::devices;

/// Where the dynamic-security plugin takes commands.
const DYNSEC_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// Where it answers them.
const DYNSEC_RESPONSE: &str = "$CONTROL/dynamic-security/v1/response";
/// Bytes of commands per message when the whole device list is
/// synchronised (well under the listener's `max_packet_size`).
const SYNC_BATCH_BYTES: usize = 32 * 1024;
/// How long the relay waits for the plugin to answer a command.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Clients per `listClients` page (about 35 KB of answer).
const LIST_PAGE: usize = 1000;
/// Lifetime of the relay's own client certificate (a new one at every start).
const RELAY_CERT_DAYS: u32 = 397;

/// The role that gives a device its own topics.
pub fn role_name(device_id: &str) -> String {
    format!("strata-device-{device_id}")
}

/// What a device may do: publish on its own device-to-relay topics,
/// subscribe to and receive its own commands.
fn device_acls(device_id: &str) -> Vec<Value> {
    let mut acls: Vec<Value> = Kind::ALL
        .into_iter()
        .filter(|k| k.from_device())
        .map(|k| json!({"acltype": "publishClientSend", "topic": topic::topic(device_id, k), "allow": true}))
        .collect();
    let commands = topic::topic(device_id, Kind::Command);
    acls.push(json!({"acltype": "subscribeLiteral", "topic": commands, "allow": true}));
    acls.push(json!({"acltype": "publishClientReceive", "topic": commands, "allow": true}));
    acls
}

/// Commands that let a device use its topics (errors for an existing role
/// or client are expected and ignored).
fn admit_commands(device_id: &str) -> [Value; 2] {
    let role = role_name(device_id);
    [
        json!({"command": "createRole", "rolename": role, "acls": device_acls(device_id)}),
        json!({"command": "createClient", "username": device_id, "roles": [{"rolename": role}]}),
    ]
}

/// Commands that cut a device off and take its rights away.
fn revoke_commands(device_id: &str) -> [Value; 3] {
    [
        json!({"command": "disableClient", "username": device_id}),
        json!({"command": "deleteClient", "username": device_id}),
        json!({"command": "deleteRole", "rolename": role_name(device_id)}),
    ]
}

/// What to change so the plugin matches the database: devices admitted,
/// devices cut off, and the commands.
fn sync_plan(
    present: &HashSet<String>,
    active: &[String],
    revoked: &[String],
) -> (usize, usize, Vec<Value>) {
    let admit: Vec<&String> = active.iter().filter(|d| !present.contains(*d)).collect();
    let cut: Vec<&String> = revoked.iter().filter(|d| present.contains(*d)).collect();
    let commands = admit
        .iter()
        .flat_map(|d| admit_commands(d))
        .chain(cut.iter().flat_map(|d| revoke_commands(d)))
        .collect();
    (admit.len(), cut.len(), commands)
}

/// Whether a plugin error only says the change was made before.
fn harmless(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("already exists") || e.contains("not found")
}

/// The relay's administrative connection to the external broker.
pub struct Mosquitto {
    client: AsyncClient,
    db: Db,
    crl_path: PathBuf,
    failed: AtomicU64,
    /// Commands waiting for their answer, by correlation id.
    waiting: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    /// Connected and subscribed to the plugin's answers.
    ready: tokio::sync::watch::Sender<bool>,
    next_id: AtomicU64,
}

/// What connecting to the external broker needs.
pub struct MosquittoSetup<'a> {
    /// Host of its mutual-TLS listener.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The device CA: signs the relay's client certificate and (through
    /// `mosquitto-config`) the broker's server certificate.
    pub ca: &'a DeviceCa,
    /// The database, for the device list.
    pub db: Db,
    /// Where the CRL of revoked devices is written.
    pub crl_path: PathBuf,
}

/// Where the CRL of revoked devices goes: `external_broker_crl`, else
/// `<data_dir>/broker/devices.crl`.
pub fn crl_path(config: &crate::config::Config) -> PathBuf {
    config
        .external_broker_crl
        .clone()
        .unwrap_or_else(|| config.data_dir.join("broker").join("devices.crl"))
}

impl Mosquitto {
    /// Writes the CRL, connects, and forwards what devices publish to the
    /// returned channel; every (re)connect subscribes again and
    /// synchronises the plugin's device list with the database.
    pub async fn connect(
        setup: MosquittoSetup<'_>,
        inbound: mpsc::Sender<Inbound>,
    ) -> anyhow::Result<Arc<Mosquitto>> {
        write_crl(setup.ca, &setup.db, &setup.crl_path).await?;
        let (cert, key) = setup.ca.sign_relay_client(RELAY_CERT_DAYS)?;
        let tls = client_tls(setup.ca.ca_pem(), &cert.cert_pem, &key)?;
        let mut o = MqttOptions::new(CONTROL_CLIENT_ID, &setup.host, setup.port);
        o.set_transport(rumqttc::Transport::tls_with_config(
            TlsConfiguration::Rustls(Arc::new(tls)),
        ));
        o.set_keep_alive(Duration::from_secs(10));
        o.set_clean_session(true);
        o.set_max_packet_size(super::session::MAX_PACKET, super::session::MAX_PACKET);
        o.set_inflight(1000);
        let (client, eventloop) = AsyncClient::new(o, 1024);
        let m = Arc::new(Mosquitto {
            client,
            db: setup.db,
            crl_path: setup.crl_path,
            failed: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
            ready: tokio::sync::watch::Sender::new(false),
            next_id: AtomicU64::new(0),
        });
        tokio::spawn(run(m.clone(), eventloop, inbound));
        tracing::info!(host = %setup.host, port = setup.port, "using the external MQTT broker");
        Ok(m)
    }

    /// The client the control plane publishes commands with.
    pub fn client(&self) -> AsyncClient {
        self.client.clone()
    }

    /// Plugin commands that failed (other than "already done").
    pub fn failed_commands(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Lets a newly enrolled device use its topics; returns once the
    /// plugin answered, so the device's first subscription finds its role.
    pub async fn admit(&self, device_id: &str) {
        if let Err(e) = self.call(admit_commands(device_id).to_vec()).await {
            tracing::error!(device = device_id, error = %e, "admitting the device on the external broker failed; the next sync retries");
        }
    }

    /// Cuts a device off, takes its rights away and rewrites the CRL.
    pub async fn revoke(&self, ca: &DeviceCa, device_id: &str) {
        if let Err(e) = self.call(revoke_commands(device_id).to_vec()).await {
            tracing::error!(device = device_id, error = %e, "revoking the device on the external broker failed; the next sync retries");
        }
        if let Err(e) = write_crl(ca, &self.db, &self.crl_path).await {
            tracing::error!(error = %e, "writing the CRL for the external broker failed");
        }
    }

    /// Sends commands and waits for the plugin's answer to the last one.
    async fn call(&self, mut commands: Vec<Value>) -> anyhow::Result<Value> {
        // An answer published before our subscription would be lost.
        let mut ready = self.ready.subscribe();
        tokio::time::timeout(ANSWER_WITHIN, ready.wait_for(|r| *r))
            .await
            .context("not connected to the external broker")?
            .context("the broker connection is gone")?;
        let id = format!("strata-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("waiting").insert(id.clone(), tx);
        if let Some(last) = commands.last_mut() {
            last["correlationData"] = json!(id);
        }
        self.send(commands).await;
        let answer = tokio::time::timeout(ANSWER_WITHIN, rx).await;
        self.waiting.lock().expect("waiting").remove(&id);
        answer
            .context("the dynamic-security plugin did not answer within 10 s")?
            .context("connection lost before the plugin answered")
    }

    async fn send(&self, commands: Vec<Value>) {
        let payload = json!({ "commands": commands }).to_string();
        if let Err(e) = self
            .client
            .publish(DYNSEC_TOPIC, QoS::AtLeastOnce, false, payload)
            .await
        {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "sending to mosquitto's dynamic-security plugin failed");
        }
    }

    /// Brings the plugin's device list in line with the database: admits
    /// the devices it lacks and revokes the revoked ones it still has (a
    /// fleet in step costs one `listClients`; the plugin rewrites its whole
    /// JSON file after every command message).
    async fn sync(&self) -> anyhow::Result<()> {
        let present = self.list_clients().await?;
        let active = devices::active(&self.db).await?;
        let revoked = devices::revoked(&self.db).await?;
        let (admit, cut, commands) = sync_plan(&present, &active, &revoked);
        let mut batch = Vec::new();
        let mut bytes = 0;
        for c in commands {
            bytes += c.to_string().len();
            batch.push(c);
            if bytes >= SYNC_BATCH_BYTES {
                self.send(std::mem::take(&mut batch)).await;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.send(batch).await;
        }
        tracing::info!(
            devices = active.len(),
            admitted = admit,
            revoked = cut,
            "external broker's device list synchronised"
        );
        Ok(())
    }

    /// The plugin's client list, a page at a time (one answer for a whole
    /// fleet would exceed the packet size limit).
    async fn list_clients(&self) -> anyhow::Result<HashSet<String>> {
        let mut all = HashSet::new();
        loop {
            let r = self
                .call(vec![json!({
                    "command": "listClients",
                    "verbose": false,
                    "count": LIST_PAGE,
                    "offset": all.len(),
                })])
                .await?;
            if let Some(e) = r["error"].as_str() {
                anyhow::bail!("listClients: {e}");
            }
            let page: Vec<String> = r["data"]["clients"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(String::from))
                .collect();
            let total = r["data"]["totalCount"].as_u64().unwrap_or(0) as usize;
            let got = page.len();
            all.extend(page);
            if got == 0 || all.len() >= total {
                return Ok(all);
            }
        }
    }

    fn responses(&self, payload: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            tracing::warn!("unreadable answer from the dynamic-security plugin");
            return;
        };
        for r in v["responses"].as_array().into_iter().flatten() {
            if let Some(error) = r["error"].as_str().filter(|e| !harmless(e)) {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(command = %r["command"], error, "dynamic-security command failed");
            }
            if let Some(waiter) = r["correlationData"]
                .as_str()
                .and_then(|id| self.waiting.lock().expect("waiting").remove(id))
            {
                let _ = waiter.send(r.clone());
            }
        }
    }
}

/// Writes the CRL of revoked devices atomically (mosquitto may reload it at any moment).
pub async fn write_crl(ca: &DeviceCa, db: &Db, path: &Path) -> anyhow::Result<()> {
    let serials = devices::revoked_serials(db).await?;
    let pem = ca.crl(&serials)?;
    let dir = path.parent().context("CRL path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("crl.tmp");
    std::fs::write(&tmp, pem).with_context(|| format!("writing {}", tmp.display()))?;
    // Public data, for mosquitto's own user to read.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn client_tls(ca_pem: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.context("device CA")?)?;
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("relay client certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("relay client key")?;
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?)
}

/// Drives the connection: subscriptions and synchronisation on every
/// connect, device messages to the registry, plugin answers checked.
async fn run(m: Arc<Mosquitto>, mut eventloop: EventLoop, inbound: mpsc::Sender<Inbound>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("connected to the external MQTT broker");
                let m = m.clone();
                tokio::spawn(async move {
                    let mut filters: Vec<rumqttc::SubscribeFilter> = Kind::ALL
                        .into_iter()
                        .filter(|k| k.from_device())
                        .map(|k| {
                            rumqttc::SubscribeFilter::new(topic::all_devices(k), QoS::AtLeastOnce)
                        })
                        .collect();
                    filters.push(rumqttc::SubscribeFilter::new(
                        DYNSEC_RESPONSE.into(),
                        QoS::AtLeastOnce,
                    ));
                    // One SUBSCRIBE, so its SUBACK says the plugin's answers will reach us.
                    if let Err(e) = m.client.subscribe_many(filters).await {
                        tracing::error!(error = %e, "subscribing on the external broker failed");
                    }
                    if let Err(e) = m.sync().await {
                        tracing::error!(error = %e, "synchronising the external broker failed");
                    }
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic == DYNSEC_RESPONSE {
                    m.responses(&p.payload);
                    continue;
                }
                let msg = Inbound {
                    topic: p.topic,
                    payload: p.payload,
                };
                // Waits when the registry is behind: back-pressure, not memory.
                if inbound.send(msg).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(a))) => {
                if a.return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    tracing::error!(
                        "the external broker refused a subscription: is {CONTROL_CLIENT_ID} given the strata-relay role?"
                    );
                } else {
                    let _ = m.ready.send(true);
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = m.ready.send(false);
                tracing::warn!(error = %e, "external MQTT broker connection failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Files for a mosquitto that serves Strata devices.
pub struct ConfigFiles {
    /// `mosquitto.conf` text.
    pub conf: String,
    /// The dynamic-security plugin's initial state (JSON).
    pub dynsec: String,
    /// Server certificate (PEM), signed by the device CA.
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
}

/// Where Debian and Fedora put the dynamic-security plugin.
pub fn find_dynsec_plugin() -> Option<PathBuf> {
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    [
        format!("/usr/lib/{triplet}/mosquitto_dynamic_security.so"),
        "/usr/lib64/mosquitto_dynamic_security.so".into(),
        "/usr/lib/mosquitto_dynamic_security.so".into(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// The configuration of a mosquitto listening on `host:port` for Strata
/// devices, its files in `dir`, the relay's CRL at `crl`; the devices
/// enrolled so far are in the plugin's initial state.
pub fn files(
    ca: &DeviceCa,
    devices: &[String],
    names: &[String],
    listen: (&str, u16),
    dir: &Path,
    crl: &Path,
    plugin: &Path,
) -> anyhow::Result<ConfigFiles> {
    let (cert, key_pem) = ca.sign_server(names, 397)?;
    let d = |f: &str| dir.join(f).display().to_string();
    let conf = format!(
        "# Written by `strata-relay mosquitto-config`: a listener for Strata devices.\n\
         # Clients authenticate with certificates from the relay's device CA; the\n\
         # relay administers who may use which topics through the dynamic-security\n\
         # plugin and rewrites the CRL on revocation (reload mosquitto with SIGHUP\n\
         # to refuse revoked devices at the handshake).\n\
         per_listener_settings false\n\
         listener {port} {host}\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         crlfile {crl}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         use_username_as_clientid true\n\
         tls_version tlsv1.2\n\
         max_packet_size {max}\n\
         # The relay's one connection carries every device's messages: mosquitto's\n\
         # defaults (20 in flight, 1,000 queued per client) drop a fleet's burst\n\
         # of statuses after a restart.\n\
         max_inflight_messages 1000\n\
         max_queued_messages 100000\n\
         plugin {plugin}\n\
         plugin_opt_config_file {dynsec}\n",
        host = listen.0,
        port = listen.1,
        ca = d("ca.pem"),
        cert = d("server.pem"),
        key = d("server.key"),
        crl = crl.display(),
        max = super::session::MAX_PACKET,
        plugin = plugin.display(),
        dynsec = d("dynamic-security.json"),
    );
    let all = |t: &str| {
        [
            json!({"acltype": "publishClientSend", "topic": t, "allow": true}),
            json!({"acltype": "publishClientReceive", "topic": t, "allow": true}),
            json!({"acltype": "subscribePattern", "topic": t, "allow": true}),
            json!({"acltype": "unsubscribePattern", "topic": t, "allow": true}),
        ]
    };
    let mut relay_acls: Vec<Value> = all(&format!("{}/#", topic::ROOT)).to_vec();
    relay_acls.extend(all("$CONTROL/dynamic-security/#"));
    let mut clients = vec![json!({
        "username": CONTROL_CLIENT_ID,
        "textname": "the Strata relay's control plane",
        "roles": [{"rolename": "strata-relay"}],
    })];
    let mut roles = vec![json!({"rolename": "strata-relay", "acls": relay_acls})];
    for d in devices {
        clients.push(json!({"username": d, "roles": [{"rolename": role_name(d)}]}));
        roles.push(json!({"rolename": role_name(d), "acls": device_acls(d)}));
    }
    let dynsec = json!({
        "clients": clients,
        "roles": roles,
        "groups": [],
        "defaultACLAccess": {
            "publishClientSend": false,
            "publishClientReceive": false,
            "subscribe": false,
            "unsubscribe": true,
        },
    });
    Ok(ConfigFiles {
        conf,
        dynsec: serde_json::to_string_pretty(&dynsec)?,
        cert_pem: cert.cert_pem,
        key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_role_names_only_its_topics() {
        let [role, client] = admit_commands("dev-a");
        assert_eq!(client["username"], "dev-a");
        assert_eq!(client["roles"][0]["rolename"], "strata-device-dev-a");
        let acls = role["acls"].as_array().unwrap();
        for acl in acls {
            let t = acl["topic"].as_str().unwrap();
            assert!(t.starts_with("strata/v1/dev/dev-a/"), "{t}");
            assert!(!t.contains('#') && !t.contains('+'), "{t}");
        }
        let subs: Vec<_> = acls
            .iter()
            .filter(|a| a["acltype"] == "subscribeLiteral")
            .collect();
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0]["topic"], "strata/v1/dev/dev-a/cmd");
    }

    #[test]
    fn sync_changes_only_what_differs() {
        let present: HashSet<String> = ["_strata-relay", "a", "gone"]
            .into_iter()
            .map(String::from)
            .collect();
        let active = vec!["a".to_string(), "b".to_string()];
        let revoked = vec!["gone".to_string(), "never-there".to_string()];
        let (admitted, cut, commands) = sync_plan(&present, &active, &revoked);
        assert_eq!((admitted, cut), (1, 1));
        let names: Vec<(String, String)> = commands
            .iter()
            .map(|c| {
                let who = c["username"].as_str().or(c["rolename"].as_str()).unwrap();
                (c["command"].as_str().unwrap().to_string(), who.to_string())
            })
            .collect();
        assert_eq!(
            names,
            [
                ("createRole", "strata-device-b"),
                ("createClient", "b"),
                ("disableClient", "gone"),
                ("deleteClient", "gone"),
                ("deleteRole", "strata-device-gone"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let (_, _, none) = sync_plan(&present, &["a".into()], &[]);
        assert!(none.is_empty(), "a fleet in step costs nothing");
    }

    #[test]
    fn only_already_done_errors_are_harmless() {
        assert!(harmless("Client already exists"));
        assert!(harmless("Role not found"));
        assert!(!harmless("Internal error"));
    }
}
