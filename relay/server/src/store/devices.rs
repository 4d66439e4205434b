//! What the device plane writes about senders: inventory, last seen,
//! renewed certificates, revocation. Device ids are sender ids; these calls
//! come from authenticated devices (the broker checked the certificate), so
//! only revocation takes an organization.

use crate::db::Db;
use crate::now_ms;
use crate::store::senders::Inventory;

/// Whether the device exists and was not revoked.
pub async fn is_active(db: &Db, device_id: &str) -> sqlx::Result<bool> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM senders WHERE id = $1 AND revoked_at IS NULL")
            .bind(device_id)
            .fetch_optional(db)
            .await?;
    Ok(row.is_some())
}

/// Stores the inventory a device reported.
pub async fn set_inventory(db: &Db, device_id: &str, inventory: &Inventory) -> sqlx::Result<()> {
    sqlx::query("UPDATE senders SET inventory = $1, last_seen_at = $2 WHERE id = $3")
        .bind(serde_json::to_string(inventory).expect("inventory serializes"))
        .bind(now_ms())
        .bind(device_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Records that the device was heard from.
pub async fn seen(db: &Db, device_id: &str, at_ms: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE senders SET last_seen_at = $1 WHERE id = $2")
        .bind(at_ms)
        .bind(device_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Records a certificate issued to a device (enrollment or renewal).
pub async fn record_certificate(
    db: &Db,
    device_id: &str,
    serial: &str,
    not_after_ms: i64,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO device_certificates (serial, sender_id, issued_at, not_after) VALUES ($1, $2, $3, $4)")
        .bind(serial)
        .bind(device_id)
        .bind(now_ms())
        .bind(not_after_ms)
        .execute(db)
        .await?;
    Ok(())
}

/// Marks the organization's device revoked (and offline); false if it has no such device.
pub async fn revoke(db: &Db, org_id: &str, device_id: &str) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE senders SET revoked_at = COALESCE(revoked_at, $1), online = 0 WHERE org_id = $2 AND id = $3",
    )
    .bind(now_ms())
    .bind(org_id)
    .bind(device_id)
    .execute(db)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Every revoked device, for the broker at start-up.
pub async fn revoked(db: &Db) -> sqlx::Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM senders WHERE revoked_at IS NOT NULL")
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Marks every device offline (at start-up: presence is rebuilt from the broker).
pub async fn all_offline(db: &Db) -> sqlx::Result<()> {
    sqlx::query("UPDATE senders SET online = 0 WHERE online <> 0")
        .execute(db)
        .await?;
    Ok(())
}

/// Every device that may connect (enrolled, not revoked), for an external broker.
pub async fn active(db: &Db) -> sqlx::Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM senders WHERE revoked_at IS NULL")
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Serials of unexpired certificates of revoked devices, for an external broker's CRL.
pub async fn revoked_serials(db: &Db) -> sqlx::Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT c.serial FROM device_certificates c JOIN senders s ON s.id = c.sender_id \
         WHERE s.revoked_at IS NOT NULL AND c.not_after > $1",
    )
    .bind(now_ms())
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(s,)| s).collect())
}
