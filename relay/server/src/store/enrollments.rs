//! Enrollments: a device's pending request, claimed by an owner into one of
//! their organizations, collected once by the device.

use crate::db::Db;
use crate::store::{new_secret, token_hash};
use crate::{new_id, now_ms};

/// How long a device code and user code live.
pub const LIFETIME_MS: i64 = 10 * 60_000;
/// Seconds a device waits between polls.
pub const POLL_INTERVAL_S: i64 = 5;

/// User code alphabet: consonants without look-alikes (RFC 8628 §6.1).
const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// A new user code, `XXXX-XXXX` (20^8 ≈ 2.6e10 values).
pub fn new_user_code() -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            s.push('-');
        }
        s.push(ALPHABET[rand::Rng::random_range(&mut rng, 0..ALPHABET.len())] as char);
    }
    s
}

/// Normalizes what a person typed: upper case, letters only, dash re-inserted.
pub fn normalize_user_code(typed: &str) -> Option<String> {
    let letters: String = typed
        .chars()
        .filter(|c| c.is_ascii_alphabetic())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if letters.len() != 8 || !letters.bytes().all(|b| ALPHABET.contains(&b)) {
        return None;
    }
    Some(format!("{}-{}", &letters[..4], &letters[4..]))
}

/// A stored enrollment.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Enrollment {
    /// Id.
    pub id: String,
    /// User code.
    pub user_code: String,
    /// The device's CSR.
    pub csr_pem: String,
    /// Device facts JSON.
    pub facts: String,
    /// pending, approved, denied, issued.
    pub state: String,
    /// Expiry, ms.
    pub expires_at: i64,
    /// Last poll, ms.
    pub last_poll_at: Option<i64>,
    /// The sender created when approved.
    pub sender_id: Option<String>,
    /// The certificate issued when approved.
    pub certificate_pem: Option<String>,
    /// Its expiry, ms.
    pub not_after: Option<i64>,
}

const COLUMNS: &str = "id, user_code, csr_pem, facts, state, expires_at, last_poll_at, sender_id, certificate_pem, not_after";

/// Stores a new request; returns (device code, user code).
pub async fn create(db: &Db, csr_pem: &str, facts_json: &str) -> sqlx::Result<(String, String)> {
    let device_code = new_secret("");
    let now = now_ms();
    // A user code must be unambiguous among live requests; retry on the rare clash.
    for _ in 0..5 {
        let user_code = new_user_code();
        let (clash,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM enrollments WHERE user_code = $1 AND state = 'pending' AND expires_at > $2")
                .bind(&user_code)
                .bind(now)
                .fetch_one(db)
                .await?;
        if clash > 0 {
            continue;
        }
        sqlx::query(
            "INSERT INTO enrollments (id, device_code_hash, user_code, csr_pem, facts, state, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7)",
        )
        .bind(new_id())
        .bind(token_hash(&device_code))
        .bind(&user_code)
        .bind(csr_pem)
        .bind(facts_json)
        .bind(now)
        .bind(now + LIFETIME_MS)
        .execute(db)
        .await?;
        return Ok((device_code, user_code));
    }
    Err(sqlx::Error::Protocol(
        "could not find a free user code".into(),
    ))
}

/// The live (pending, unexpired) request with this user code.
pub async fn pending_by_user_code(db: &Db, user_code: &str) -> sqlx::Result<Option<Enrollment>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM enrollments WHERE user_code = $1 AND state = 'pending' AND expires_at > $2"
    ))
    .bind(user_code)
    .bind(now_ms())
    .fetch_optional(db)
    .await
}

/// The request a device code belongs to.
pub async fn by_device_code(db: &Db, device_code: &str) -> sqlx::Result<Option<Enrollment>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM enrollments WHERE device_code_hash = $1"
    ))
    .bind(token_hash(device_code))
    .fetch_optional(db)
    .await
}

/// Deletes requests that can no longer be used (a day after they expired);
/// returns how many.
pub async fn purge_expired(db: &Db) -> sqlx::Result<u64> {
    let r = sqlx::query("DELETE FROM enrollments WHERE expires_at < $1")
        .bind(now_ms() - 24 * 3_600_000)
        .execute(db)
        .await?;
    Ok(r.rows_affected())
}

/// Records a poll.
pub async fn polled(db: &Db, id: &str, at: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE enrollments SET last_poll_at = $1 WHERE id = $2")
        .bind(at)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Moves a request from `from` to `to` state; false if it was not in `from`
/// (someone else got there first: codes are single-use).
pub async fn transition(db: &Db, id: &str, from: &str, to: &str) -> sqlx::Result<bool> {
    let r = sqlx::query("UPDATE enrollments SET state = $1 WHERE id = $2 AND state = $3")
        .bind(to)
        .bind(id)
        .bind(from)
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// What approving a request produced.
pub struct Approval<'a> {
    /// Organization it was claimed into.
    pub org_id: &'a str,
    /// The new sender's id (its device id).
    pub sender_id: &'a str,
    /// The name the owner gave it.
    pub sender_name: &'a str,
    /// Who claimed it.
    pub user_id: &'a str,
    /// The certificate.
    pub certificate_pem: &'a str,
    /// Its serial.
    pub serial: &'a str,
    /// Its expiry, ms.
    pub not_after: i64,
}

/// Approves a pending request and creates its sender in one transaction;
/// false (and nothing written) if it was no longer pending.
pub async fn approve(db: &Db, id: &str, a: &Approval<'_>) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO senders (id, org_id, name, inventory, settings, created_at) VALUES ($1, $2, $3, '{}', $4, $5)")
        .bind(a.sender_id)
        .bind(a.org_id)
        .bind(a.sender_name)
        .bind(serde_json::to_string(&crate::store::senders::EncoderSettings::default()).expect("settings serialize"))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    let r = sqlx::query(
        "UPDATE enrollments SET state = 'approved', org_id = $1, sender_id = $2, claimed_by = $3, certificate_pem = $4, not_after = $5 \
         WHERE id = $6 AND state = 'pending' AND expires_at > $7",
    )
    .bind(a.org_id)
    .bind(a.sender_id)
    .bind(a.user_id)
    .bind(a.certificate_pem)
    .bind(a.not_after)
    .bind(id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query("INSERT INTO device_certificates (serial, sender_id, issued_at, not_after) VALUES ($1, $2, $3, $4)")
        .bind(a.serial)
        .bind(a.sender_id)
        .bind(now_ms())
        .bind(a.not_after)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes() {
        for _ in 0..100 {
            let c = new_user_code();
            assert_eq!(normalize_user_code(&c).as_deref(), Some(c.as_str()));
        }
        assert_eq!(
            normalize_user_code("bcdf ghjk").as_deref(),
            Some("BCDF-GHJK")
        );
        assert_eq!(normalize_user_code("BCDF-GHJ"), None);
        assert_eq!(
            normalize_user_code("AEIO-UBCD"),
            None,
            "vowels are not in the alphabet"
        );
    }
}
