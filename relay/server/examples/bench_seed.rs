//! Fills a relay database for `scripts/bench-relay-web`: one organization
//! with 1,000 senders and 10,000 telemetry rows per sender (3 links, the
//! newest rows in the last hour), an owner with a session and an API token.
//! Prints `ORG SENDER SESSION TOKEN` on one line.
//!
//! Usage: bench_seed DATABASE_URL [SENDERS] [ROWS_PER_SENDER]

use strata_relay::store::accounts::{self, Role};
use strata_relay::store::senders::{self, Inventory, LinkInfo};
use strata_relay::store::{sessions, tokens};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: bench_seed DATABASE_URL [SENDERS] [ROWS]"))?;
    let n_senders: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let rows: i64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let db = strata_relay::db::connect(&url).await?;
    let org = accounts::create_org(&db, "Bench").await?;
    let user = accounts::create_user(&db, "bench@example.com", "!").await?;
    accounts::add_member(&db, &org.id, &user.id, Role::Owner).await?;
    let inventory = Inventory {
        links: (0..3)
            .map(|i| LinkInfo {
                name: format!("wwan{i}"),
                kind: "cellular".into(),
                up: true,
            })
            .collect(),
        ..Default::default()
    };
    let mut first = String::new();
    for i in 0..n_senders {
        let id = senders::create(&db, &org.id, &format!("sender-{i:04}"), &inventory).await?;
        senders::set_presence(&db, &id, i % 3 != 0, strata_relay::now_ms()).await?;
        if i == 0 {
            first = id;
        }
    }
    // Generated inside the database: 10 million rows through the client would take minutes.
    let now = strata_relay::now_ms();
    let series = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)";
    let sql = format!(
        "{series} INSERT INTO telemetry (sender_id, ts, link, kbps, rtt_ms, loss_permille) \
         SELECT s.id, $2 - ((($1 - n.i) / 3) * 1000), 'wwan' || (n.i % 3), 1000 + (n.i * 37) % 2000, 30 + (n.i * 13) % 90, (n.i * 7) % 20 \
         FROM senders s, n WHERE s.org_id = $3"
    );
    sqlx::query(&sql)
        .bind(rows)
        .bind(now)
        .bind(&org.id)
        .execute(&db)
        .await?;
    if url.starts_with("sqlite:") {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&db)
            .await?;
    } else {
        sqlx::query("ANALYZE").execute(&db).await?;
    }
    let session = sessions::create(&db, &user.id, 24).await?;
    let (_, token) = tokens::create(&db, &org.id, &user.id, "bench", Role::Owner).await?;
    println!("{} {first} {session} {token}", org.id);
    Ok(())
}
