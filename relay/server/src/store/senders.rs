//! Senders (enrolled devices): what the registry knows of them, the encoder
//! settings the owner chose, and their per-link telemetry.

use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::{new_id, now_ms};

/// A sender as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SenderRow {
    /// Id.
    pub id: String,
    /// Owner-given name.
    pub name: String,
    /// 1 while its control channel is up.
    pub online: i64,
    /// Last time the relay heard from it, ms since the epoch.
    pub last_seen_at: Option<i64>,
    /// The stream it is sending, if any.
    pub current_stream_id: Option<String>,
    /// Inventory JSON as last reported.
    pub inventory: String,
    /// Encoder settings JSON.
    pub settings: String,
    /// When the owner revoked it (the broker refuses it from then on).
    pub revoked_at: Option<i64>,
}

/// What a device reported about its hardware.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Inventory {
    /// Network links the bond can use.
    pub links: Vec<LinkInfo>,
    /// Cellular modems.
    pub modems: Vec<ModemInfo>,
    /// Media inputs (capture devices, files, test pattern).
    pub inputs: Vec<InputInfo>,
}

/// One network link.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// Kind: cellular, ethernet, wifi.
    pub kind: String,
    /// Whether it is connected.
    pub up: bool,
}

/// One cellular modem.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct ModemInfo {
    /// Id the device's modem commands refer to (equipment identifier).
    pub id: String,
    /// Model.
    pub model: String,
    /// Operator name.
    pub operator: String,
    /// Access technology (lte, 5gnr...).
    pub technology: String,
    /// Signal quality, percent.
    pub signal_percent: u8,
    /// SIM state.
    pub sim: String,
    /// Interface carrying its data.
    pub interface: String,
    /// Enabled by the owner.
    pub enabled: bool,
    /// LTE/5G RSRP, dBm, where the modem reports it.
    pub rsrp_dbm: Option<f32>,
    /// LTE/5G SINR, dB, where the modem reports it.
    pub sinr_db: Option<f32>,
    /// Whether it carries data, and if not, why, as the owner reads it
    /// (empty: the device did not say).
    pub data: String,
}

/// One media input.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct InputInfo {
    /// Id the settings refer to.
    pub id: String,
    /// Kind: v4l2, file, test.
    pub kind: String,
    /// Human name.
    pub name: String,
}

/// Video codec the device encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// H.264 (every destination).
    #[default]
    H264,
    /// H.265 (SRT, HLS and recordings; not RTMP).
    H265,
}

/// Encoder settings the owner chose for a sender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EncoderSettings {
    /// Input id from the inventory (`test` is the built-in test pattern).
    pub input: String,
    /// Video codec.
    pub codec: Codec,
    /// Frame height in lines (width follows 16:9).
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Lowest video bitrate the encoder may drop to, kbit/s.
    pub min_kbps: u32,
    /// Highest video bitrate, kbit/s.
    pub max_kbps: u32,
    /// Whether audio is sent.
    pub audio: bool,
}

impl Default for EncoderSettings {
    /// The device's own defaults (strata-proto).
    fn default() -> Self {
        let d = strata_proto::message::EncoderSettings::default();
        EncoderSettings {
            input: d.input,
            codec: match d.codec {
                strata_proto::message::Codec::H264 => Codec::H264,
                strata_proto::message::Codec::H265 => Codec::H265,
            },
            height: d.height,
            fps: d.fps,
            min_kbps: d.min_kbps,
            max_kbps: d.max_kbps,
            audio: d.audio,
        }
    }
}

pub use strata_proto::message::{FRAME_RATES, HEIGHTS};

impl EncoderSettings {
    /// Checks the settings; the message names the field (the device's own rules).
    pub fn validate(&self, inventory: &Inventory) -> Result<(), String> {
        strata_proto::message::EncoderSettings::from(self)
            .check(|id| inventory.inputs.iter().any(|i| i.id == id))
    }
}

impl SenderRow {
    /// The parsed inventory (empty if the stored JSON is unreadable).
    pub fn inventory(&self) -> Inventory {
        serde_json::from_str(&self.inventory).unwrap_or_default()
    }

    /// The parsed settings (defaults if none were saved).
    pub fn settings(&self) -> EncoderSettings {
        serde_json::from_str(&self.settings).unwrap_or_default()
    }
}

const COLUMNS: &str =
    "id, name, online, last_seen_at, current_stream_id, inventory, settings, revoked_at";

/// Creates a sender (enrollment does this; tests and benchmarks too).
pub async fn create(
    db: &Db,
    org_id: &str,
    name: &str,
    inventory: &Inventory,
) -> sqlx::Result<String> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO senders (id, org_id, name, inventory, settings, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(org_id)
    .bind(name)
    .bind(serde_json::to_string(inventory).expect("inventory serializes"))
    .bind(serde_json::to_string(&EncoderSettings::default()).expect("settings serialize"))
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(id)
}

/// A page of the organization's senders, by name.
pub async fn list(db: &Db, org_id: &str, limit: i64, offset: i64) -> sqlx::Result<Vec<SenderRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM senders WHERE org_id = $1 ORDER BY name, id LIMIT $2 OFFSET $3"
    ))
    .bind(org_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await
}

/// How many senders the organization has.
pub async fn count(db: &Db, org_id: &str) -> sqlx::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM senders WHERE org_id = $1")
        .bind(org_id)
        .fetch_one(db)
        .await?;
    Ok(n)
}

/// One of the organization's senders.
pub async fn get(db: &Db, org_id: &str, id: &str) -> sqlx::Result<Option<SenderRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM senders WHERE org_id = $1 AND id = $2"
    ))
    .bind(org_id)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Stores new encoder settings; false if the organization has no such sender.
pub async fn set_settings(
    db: &Db,
    org_id: &str,
    id: &str,
    settings: &EncoderSettings,
) -> sqlx::Result<bool> {
    let r = sqlx::query("UPDATE senders SET settings = $1 WHERE org_id = $2 AND id = $3")
        .bind(serde_json::to_string(settings).expect("settings serialize"))
        .bind(org_id)
        .bind(id)
        .execute(db)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// A sender's stored encoder settings (for the device plane: any organization).
pub async fn settings_of(db: &Db, id: &str) -> sqlx::Result<Option<EncoderSettings>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT settings FROM senders WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|(s,)| serde_json::from_str(&s).unwrap_or_default()))
}

/// Records presence (the device plane calls this on status messages).
pub async fn set_presence(db: &Db, id: &str, online: bool, at_ms: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE senders SET online = $1, last_seen_at = $2 WHERE id = $3")
        .bind(i64::from(online))
        .bind(at_ms)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// One link's numbers at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LinkSample {
    /// Time, ms since the epoch.
    pub ts: i64,
    /// Link (interface) name.
    pub link: String,
    /// Bitrate sent on the link, kbit/s.
    pub kbps: i64,
    /// Round-trip time, ms.
    pub rtt_ms: i64,
    /// Loss, per mille.
    pub loss_permille: i64,
    /// Retransmissions among what the link sent, per mille.
    pub retransmit_permille: i64,
}

/// Stores telemetry samples of one sender.
pub async fn record_telemetry(
    db: &Db,
    sender_id: &str,
    samples: &[LinkSample],
) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    for s in samples {
        sqlx::query("INSERT INTO telemetry (sender_id, ts, link, kbps, rtt_ms, loss_permille, retransmit_permille) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(sender_id)
            .bind(s.ts)
            .bind(&s.link)
            .bind(s.kbps)
            .bind(s.rtt_ms)
            .bind(s.loss_permille)
            .bind(s.retransmit_permille)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// The sender's samples newer than `since_ms`, oldest first, at most `limit`
/// (the newest ones when there are more).
pub async fn telemetry_since(
    db: &Db,
    org_id: &str,
    sender_id: &str,
    since_ms: i64,
    limit: i64,
) -> sqlx::Result<Vec<LinkSample>> {
    let mut rows: Vec<LinkSample> = sqlx::query_as(
        "SELECT t.ts, t.link, t.kbps, t.rtt_ms, t.loss_permille, t.retransmit_permille FROM telemetry t \
         JOIN senders s ON s.id = t.sender_id \
         WHERE s.org_id = $1 AND t.sender_id = $2 AND t.ts > $3 ORDER BY t.ts DESC LIMIT $4",
    )
    .bind(org_id)
    .bind(sender_id)
    .bind(since_ms)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.reverse();
    Ok(rows)
}

/// The sender's samples newer than `since_ms` averaged per link over
/// `bucket_ms` (loss and retransmissions: the worst in the bucket), oldest first, for charts:
/// a few hundred points instead of every sample.
pub async fn telemetry_buckets(
    db: &Db,
    org_id: &str,
    sender_id: &str,
    since_ms: i64,
    bucket_ms: i64,
) -> sqlx::Result<Vec<LinkSample>> {
    let bucket_ms = bucket_ms.max(1);
    sqlx::query_as(
        "SELECT (t.ts / $4) * $4 AS ts, t.link, CAST(AVG(t.kbps) AS BIGINT) AS kbps, \
         CAST(AVG(t.rtt_ms) AS BIGINT) AS rtt_ms, MAX(t.loss_permille) AS loss_permille, \
         MAX(t.retransmit_permille) AS retransmit_permille \
         FROM telemetry t JOIN senders s ON s.id = t.sender_id \
         WHERE s.org_id = $1 AND t.sender_id = $2 AND t.ts > $3 \
         GROUP BY t.ts / $4, t.link ORDER BY 1, 2",
    )
    .bind(org_id)
    .bind(sender_id)
    .bind(since_ms)
    .bind(bucket_ms)
    .fetch_all(db)
    .await
}

/// A modem's data state in the owner's words.
fn modem_data(d: strata_proto::message::ModemData) -> String {
    use strata_proto::message::ModemData;
    match d {
        ModemData::Unknown => String::new(),
        ModemData::Connected => "carrying data".into(),
        ModemData::Connecting => "connecting".into(),
        ModemData::Disabled => "turned off".into(),
        ModemData::NoSim => "no SIM card".into(),
        ModemData::SimPinRequired => "the SIM needs its PIN".into(),
        ModemData::SimPukLocked => "the SIM is locked: it needs its PUK".into(),
        ModemData::SimLocked => "the SIM is locked by the network or operator".into(),
        ModemData::Searching => "searching for a network (no signal)".into(),
        ModemData::RegistrationDenied => "the network refused the SIM".into(),
        ModemData::RoamingNotAllowed => "roaming: data not allowed".into(),
        ModemData::BearerFailed { nm_reason } => {
            format!("the data connection failed (NetworkManager reason {nm_reason}); retrying")
        }
    }
}

/// What the agent reports, as the dashboard shows it.
impl From<&strata_proto::message::Inventory> for Inventory {
    fn from(inv: &strata_proto::message::Inventory) -> Self {
        use strata_proto::message::{InputKind, LinkKind, SimState};
        Inventory {
            links: inv
                .links
                .iter()
                .map(|l| LinkInfo {
                    name: l.name.clone(),
                    kind: match l.kind {
                        LinkKind::Cellular => "cellular",
                        LinkKind::Ethernet => "ethernet",
                        LinkKind::Wifi => "wifi",
                        LinkKind::Other => "other",
                    }
                    .into(),
                    up: l.up,
                })
                .collect(),
            modems: inv
                .modems
                .iter()
                .map(|m| ModemInfo {
                    id: m.id.clone(),
                    enabled: m.enabled,
                    rsrp_dbm: m.rsrp_dbm,
                    sinr_db: m.sinr_db,
                    model: format!("{} {}", m.manufacturer, m.model).trim().to_string(),
                    operator: m.operator.clone().unwrap_or_default(),
                    technology: m.access_tech.clone(),
                    signal_percent: m.signal_percent,
                    sim: match m.sim {
                        SimState::Missing => "missing",
                        SimState::Locked => "locked",
                        SimState::Ready => "ready",
                        SimState::Unknown => "unknown",
                    }
                    .into(),
                    interface: m.interface.clone().unwrap_or_default(),
                    data: modem_data(m.data),
                })
                .collect(),
            inputs: inv
                .inputs
                .iter()
                .map(|i| InputInfo {
                    id: i.id.clone(),
                    kind: match i.kind {
                        InputKind::V4l2 => "v4l2",
                        InputKind::File => "file",
                        InputKind::TestPattern => "test",
                    }
                    .into(),
                    name: i.name.clone(),
                })
                .collect(),
        }
    }
}

/// The settings as the agent takes them.
impl From<&EncoderSettings> for strata_proto::message::EncoderSettings {
    fn from(s: &EncoderSettings) -> Self {
        strata_proto::message::EncoderSettings {
            input: s.input.clone(),
            codec: match s.codec {
                Codec::H264 => strata_proto::message::Codec::H264,
                Codec::H265 => strata_proto::message::Codec::H265,
            },
            height: s.height,
            fps: s.fps,
            min_kbps: s.min_kbps,
            max_kbps: s.max_kbps,
            audio: s.audio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_validation() {
        let inv = Inventory {
            inputs: vec![InputInfo {
                id: "cam0".into(),
                kind: "v4l2".into(),
                name: "HDMI".into(),
            }],
            ..Default::default()
        };
        let ok = EncoderSettings {
            input: "cam0".into(),
            ..Default::default()
        };
        assert!(ok.validate(&inv).is_ok());
        assert!(
            EncoderSettings {
                input: "cam9".into(),
                ..ok.clone()
            }
            .validate(&inv)
            .is_err()
        );
        assert!(
            EncoderSettings {
                height: 721,
                ..ok.clone()
            }
            .validate(&inv)
            .is_err()
        );
        assert!(
            EncoderSettings {
                min_kbps: 7000,
                ..ok.clone()
            }
            .validate(&inv)
            .is_err()
        );
        assert!(
            EncoderSettings {
                max_kbps: 10,
                ..ok.clone()
            }
            .validate(&inv)
            .is_err()
        );
        assert!(
            serde_json::from_str::<EncoderSettings>("{\"input\":\"test\",\"evil\":1}").is_err()
        );
    }
}
