//! The `users` table and the room directory: what the gateway's account and room-list
//! endpoints read and write.

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
    /// Creates an account; `None` if the name is taken (names are unique ignoring case).
    pub async fn create_account(&self, username: &Username, password_hash: &str) -> Result<Option<i64>> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "INSERT INTO users (username, password_hash) VALUES ($1, $2)
                 ON CONFLICT (lower(username)) DO NOTHING RETURNING id",
                &[&username.as_str(), &password_hash],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// The account named `username`, ignoring case. Takes any string: a login with a
    /// name that could never be registered simply finds nothing.
    pub async fn find_account(&self, username: &str) -> Result<Option<Account>> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt("SELECT id, username, password_hash FROM users WHERE lower(username) = lower($1)", &[&username])
            .await?;
        Ok(row.map(|row| Account { id: row.get(0), username: row.get(1), password_hash: row.get(2) }))
    }

    /// Names of up to `limit` rooms, in name order.
    pub async fn room_names(&self, limit: usize) -> Result<Vec<String>> {
        let rows =
            self.pool.get().await?.query("SELECT name FROM rooms ORDER BY name LIMIT $1", &[&(limit as i64)]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}
