//! The `users` table, revoked sessions and the room directory: what the gateway's
//! account, session and room-list endpoints read and write.

use huddle_domain::Username;

use crate::{Archive, Result};

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The account's key in `users`: the user id everywhere else.
    pub id: i64,
    /// The name as registered (lookups ignore case).
    pub username: String,
    /// The password's PHC string (argon2id).
    pub password_hash: String,
}

impl Archive {
    /// Creates an account; `None` if the name is taken: by the same name in any case, or
    /// by a look-alike ([`Username::lookalike_key`]).
    pub async fn create_account(&self, username: &Username, password_hash: &str) -> Result<Option<i64>> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "INSERT INTO users (username, password_hash, lookalike_key) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING RETURNING id",
                &[&username.as_str(), &password_hash, &username.lookalike_key()],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// The account named `username`, ignoring case.
    pub async fn find_account(&self, username: &Username) -> Result<Option<Account>> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "SELECT id, username, password_hash FROM users WHERE lower(username) = lower($1)",
                &[&username.as_str()],
            )
            .await?;
        Ok(row.map(|row| Account { id: row.get(0), username: row.get(1), password_hash: row.get(2) }))
    }

    /// Records that session `jti` of `user_id` ended before its token expires at
    /// `expires_at_secs` (Unix seconds). Idempotent.
    pub async fn revoke_session(&self, jti: &str, user_id: i64, expires_at_secs: i64) -> Result<()> {
        self.pool
            .get()
            .await?
            .execute(
                "INSERT INTO revoked_sessions (jti, user_id, expires_at) VALUES ($1, $2, to_timestamp($3::bigint))
                 ON CONFLICT (jti) DO NOTHING",
                &[&jti, &user_id, &expires_at_secs],
            )
            .await?;
        Ok(())
    }

    /// Every revoked session whose token has not expired yet: (jti, expiry in Unix
    /// seconds). Rows of expired tokens are deleted on the way.
    pub async fn live_revocations(&self) -> Result<Vec<(String, i64)>> {
        let client = self.pool.get().await?;
        client.execute("DELETE FROM revoked_sessions WHERE expires_at <= now()", &[]).await?;
        let rows =
            client.query("SELECT jti, extract(epoch FROM expires_at)::bigint FROM revoked_sessions", &[]).await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Up to `limit` rooms, in name order, with what the archive knows of their activity.
    pub async fn rooms(&self, limit: usize) -> Result<Vec<ArchivedRoom>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT name, persisted_seq, (extract(epoch FROM last_message_at) * 1000)::bigint
                 FROM rooms ORDER BY name LIMIT $1",
                &[&(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| ArchivedRoom {
                name: row.get(0),
                persisted_seq: row.get::<_, i64>(1).max(0) as u64,
                last_message_at_ms: row.get(2),
            })
            .collect())
    }
}

/// Gives accounts registered before look-alike keys existed their key; returns how many.
/// An account that looks like an older one keeps no key (it is not taken away from its
/// owner, and the unique index admits any number of NULLs).
pub(crate) async fn backfill_lookalike_keys(client: &tokio_postgres::Client) -> Result<u64> {
    let rows = client.query("SELECT id, username FROM users WHERE lookalike_key IS NULL ORDER BY id", &[]).await?;
    let mut keyed = 0;
    for row in rows {
        let (id, name): (i64, String) = (row.get(0), row.get(1));
        let Ok(username) = Username::parse(&name) else { continue };
        keyed += client
            .execute(
                "UPDATE users SET lookalike_key = $2 WHERE id = $1
                 AND NOT EXISTS (SELECT 1 FROM users WHERE lookalike_key = $2)",
                &[&id, &username.lookalike_key()],
            )
            .await?;
    }
    Ok(keyed)
}

/// A room as the archive knows it ([`Archive::rooms`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedRoom {
    /// Its name.
    pub name: String,
    /// The newest seq in PostgreSQL.
    pub persisted_seq: u64,
    /// When the newest persisted message was sent (ms since the epoch), if any.
    pub last_message_at_ms: Option<i64>,
}
