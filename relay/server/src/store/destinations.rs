//! Where an organization's streams go. Stream keys and SRT passphrases are
//! write-only: stored encrypted, listed only as a masked hint.

use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::secrets::{SecretBox, hint};
use crate::{new_id, now_ms};

/// A destination as listed (no secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Destination {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// rtmp, srt, hls or record.
    pub kind: String,
    /// Server URL (rtmp, srt) or option (hls: segment seconds, record: rotation minutes).
    pub target: String,
    /// Whether a stream key or passphrase is stored.
    pub has_secret: bool,
    /// Last 4 characters of the secret, when it is long enough to show them.
    pub secret_hint: String,
}

impl Destination {
    /// The secret as shown in a page: bullets and the hint.
    pub fn masked_secret(&self) -> String {
        if self.has_secret {
            format!("••••••••{}", self.secret_hint)
        } else {
            String::new()
        }
    }
}

/// A destination as submitted by a form or the API.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationInput {
    /// Name, 1–64 characters.
    pub name: String,
    /// rtmp, srt, hls or record.
    pub kind: String,
    /// rtmp: `rtmp[s]://host[:port]/app`; srt: `srt://host:port`;
    /// hls: segment seconds (1–10); record: rotation minutes (1–1440).
    pub target: String,
    /// rtmp: stream key (required when creating); srt: passphrase (10–79
    /// characters, optional). Empty when updating keeps the stored one.
    #[serde(default)]
    pub secret: Option<String>,
}

impl DestinationInput {
    /// Checks the input; `creating` requires an RTMP stream key.
    pub fn validate(&self, creating: bool) -> Result<(), String> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err("name must be 1 to 64 printable characters".into());
        }
        let secret = self.secret.as_deref().unwrap_or("");
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) || secret.len() > 256 {
            return Err("the key must be at most 256 characters without spaces".into());
        }
        match self.kind.as_str() {
            "rtmp" => {
                let u = url::Url::parse(self.target.trim())
                    .map_err(|_| "the server URL is not a URL".to_string())?;
                if !matches!(u.scheme(), "rtmp" | "rtmps") || u.host_str().is_none_or(str::is_empty)
                {
                    return Err("the server URL must be rtmp://host/app or rtmps://host/app".into());
                }
                if u.path().trim_matches('/').is_empty()
                    || u.query().is_some()
                    || !u.username().is_empty()
                {
                    return Err("the server URL needs an application path and nothing else (the key goes in its own field)".into());
                }
                if creating && secret.is_empty() {
                    return Err("an RTMP destination needs a stream key".into());
                }
            }
            "srt" => {
                let u = url::Url::parse(self.target.trim())
                    .map_err(|_| "the SRT URL is not a URL".to_string())?;
                if u.scheme() != "srt"
                    || u.host_str().is_none_or(str::is_empty)
                    || u.port().is_none()
                {
                    return Err("the SRT URL must be srt://host:port".into());
                }
                if u.query().is_some() || !u.username().is_empty() {
                    return Err("put the passphrase in its own field, not in the URL".into());
                }
                if !secret.is_empty() && !(10..=79).contains(&secret.len()) {
                    return Err("an SRT passphrase has 10 to 79 characters".into());
                }
            }
            "hls" | "record" => {
                let (lo, hi, what) = if self.kind == "hls" {
                    (1, 10, "segment length (seconds)")
                } else {
                    (1, 1440, "rotation (minutes)")
                };
                match self.target.trim().parse::<u32>() {
                    Ok(n) if (lo..=hi).contains(&n) => {}
                    _ => return Err(format!("{what} must be a number from {lo} to {hi}")),
                }
                if !secret.is_empty() {
                    return Err(format!("a {} destination has no key", self.kind));
                }
            }
            _ => return Err("kind must be rtmp, srt, hls or record".into()),
        }
        Ok(())
    }
}

type Row = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

fn from_row((id, name, kind, target, secret_enc, secret_hint): Row) -> Destination {
    Destination {
        id,
        name,
        kind,
        target,
        has_secret: secret_enc.is_some(),
        secret_hint: secret_hint.unwrap_or_default(),
    }
}

/// The organization's destinations, by name.
pub async fn list(db: &Db, org_id: &str) -> sqlx::Result<Vec<Destination>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, name, kind, target, secret_enc, secret_hint FROM destinations WHERE org_id = $1 ORDER BY name, id",
    )
    .bind(org_id)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// One of the organization's destinations.
pub async fn get(db: &Db, org_id: &str, id: &str) -> sqlx::Result<Option<Destination>> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, name, kind, target, secret_enc, secret_hint FROM destinations WHERE org_id = $1 AND id = $2",
    )
    .bind(org_id)
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(from_row))
}

/// Creates a validated destination.
pub async fn create(
    db: &Db,
    sbox: &SecretBox,
    org_id: &str,
    input: &DestinationInput,
) -> sqlx::Result<Destination> {
    let id = new_id();
    let secret = input.secret.as_deref().filter(|s| !s.is_empty());
    sqlx::query(
        "INSERT INTO destinations (id, org_id, name, kind, target, secret_enc, secret_hint, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(org_id)
    .bind(input.name.trim())
    .bind(&input.kind)
    .bind(input.target.trim())
    .bind(secret.map(|s| sbox.seal(&id, s)))
    .bind(secret.map(hint))
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(get(db, org_id, &id).await?.expect("just inserted"))
}

/// Whether an edit must bring a new key: the kind or the server changed, so
/// the stored key would go somewhere its owner never sent it.
pub fn edit_needs_new_key(existing: &Destination, input: &DestinationInput) -> bool {
    let host = |t: &str| {
        url::Url::parse(t.trim()).ok().map(|u| {
            (
                u.scheme().to_string(),
                u.host_str().map(str::to_string),
                u.port(),
            )
        })
    };
    existing.kind != input.kind
        || !existing.has_secret && input.kind == "rtmp"
        || host(&existing.target) != host(&input.target)
}

/// Updates a validated destination. An empty secret keeps the stored one
/// when `keep_secret` (callers pass `!edit_needs_new_key(..)`), else drops
/// it; hls and record drop any key. False if the organization has no such
/// destination.
pub async fn update(
    db: &Db,
    sbox: &SecretBox,
    org_id: &str,
    id: &str,
    input: &DestinationInput,
    keep_secret: bool,
) -> sqlx::Result<bool> {
    let keyless = matches!(input.kind.as_str(), "hls" | "record");
    let new_secret = input
        .secret
        .as_deref()
        .filter(|s| !s.is_empty() && !keyless);
    let keep = new_secret.is_none() && keep_secret && !keyless;
    let sql = if keep {
        "UPDATE destinations SET name = $1, kind = $2, target = $3 WHERE org_id = $4 AND id = $5"
    } else {
        // A new key, or none (NULL) where the old one must not stay.
        "UPDATE destinations SET name = $1, kind = $2, target = $3, secret_enc = $6, secret_hint = $7 \
         WHERE org_id = $4 AND id = $5"
    };
    let mut q = sqlx::query(sql)
        .bind(input.name.trim())
        .bind(&input.kind)
        .bind(input.target.trim())
        .bind(org_id)
        .bind(id);
    if !keep {
        q = q
            .bind(new_secret.map(|s| sbox.seal(id, s)))
            .bind(new_secret.map(hint));
    }
    let r = q.execute(db).await?;
    Ok(r.rows_affected() > 0)
}

/// Deletes a destination; false if the organization has no such destination.
pub async fn delete(db: &Db, org_id: &str, id: &str) -> sqlx::Result<bool> {
    let r = sqlx::query("DELETE FROM destinations WHERE org_id = $1 AND id = $2")
        .bind(org_id)
        .bind(id)
        .execute(db)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// The decrypted secret, for handing to a receiver worker (never to a page).
pub async fn secret(
    db: &Db,
    sbox: &SecretBox,
    org_id: &str,
    id: &str,
) -> anyhow::Result<Option<String>> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT secret_enc FROM destinations WHERE org_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .fetch_optional(db)
            .await?;
    match row.and_then(|(s,)| s) {
        Some(sealed) => Ok(Some(sbox.open(id, &sealed)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(kind: &str, target: &str, secret: Option<&str>) -> DestinationInput {
        DestinationInput {
            name: "YouTube".into(),
            kind: kind.into(),
            target: target.into(),
            secret: secret.map(Into::into),
        }
    }

    #[test]
    fn validation() {
        assert!(
            input(
                "rtmp",
                "rtmp://a.rtmp.youtube.com/live2",
                Some("abcd-efgh-ijkl")
            )
            .validate(true)
            .is_ok()
        );
        assert!(
            input("rtmp", "rtmps://live.twitch.tv:443/app", Some("k"))
                .validate(true)
                .is_ok()
        );
        assert!(
            input("rtmp", "rtmp://a.rtmp.youtube.com/live2", None)
                .validate(true)
                .is_err()
        );
        assert!(
            input("rtmp", "rtmp://a.rtmp.youtube.com/live2", None)
                .validate(false)
                .is_ok()
        );
        assert!(
            input("rtmp", "rtmp://a.rtmp.youtube.com/", Some("k"))
                .validate(true)
                .is_err()
        );
        assert!(
            input("rtmp", "http://x/app", Some("k"))
                .validate(true)
                .is_err()
        );
        assert!(
            input("rtmp", "rtmp://x/app?key=1", Some("k"))
                .validate(true)
                .is_err()
        );
        assert!(
            input("rtmp", "rtmp://x/app", Some("a key"))
                .validate(true)
                .is_err()
        );
        assert!(
            input("srt", "srt://127.0.0.1:9000", Some("0123456789"))
                .validate(true)
                .is_ok()
        );
        assert!(
            input("srt", "srt://127.0.0.1:9000", Some("short"))
                .validate(true)
                .is_err()
        );
        assert!(
            input("srt", "srt://127.0.0.1", None)
                .validate(true)
                .is_err()
        );
        assert!(
            input("srt", "srt://h:1?passphrase=0123456789", None)
                .validate(true)
                .is_err()
        );
        assert!(input("hls", "4", None).validate(true).is_ok());
        assert!(input("hls", "40", None).validate(true).is_err());
        assert!(input("record", "60", None).validate(true).is_ok());
        assert!(input("record", "60", Some("x")).validate(true).is_err());
        assert!(input("ftp", "x", None).validate(true).is_err());
        assert!(
            DestinationInput {
                name: " ".into(),
                ..input("hls", "4", None)
            }
            .validate(true)
            .is_err()
        );
        assert!(
            DestinationInput {
                name: "x".repeat(65),
                ..input("hls", "4", None)
            }
            .validate(true)
            .is_err()
        );
    }
}
