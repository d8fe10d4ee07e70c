//! Revoked session tokens, cached from PostgreSQL until they would have expired anyway,
//! and the notice every gateway gets when a session ends.

use crate::{Result, RoomLog};

/// What the cache says about a session token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The token was revoked.
    Revoked,
    /// The token is not revoked.
    Live,
    /// The cache was lost (Redis restarted or was flushed): ask the archive, then
    /// [`RoomLog::load_revocations`].
    Unknown,
}

impl RoomLog {
    /// Marks a session token id as revoked until `ttl_secs` from now, then announces it on
    /// [`Keyspace::ended_sessions`](crate::Keyspace::ended_sessions) (two steps: on a
    /// cluster the marker and the channel live in different slots). The archive holds the
    /// durable record; this is its cache.
    pub async fn revoke_token(&self, token_id: &str, ttl_secs: u64) -> Result<()> {
        let mut conn = self.conn().await?;
        let _: () =
            redis::Cmd::set_ex(self.keys.revoked_token(token_id), 1, ttl_secs.max(1)).query_async(&mut conn).await?;
        let _: i64 = redis::cmd(self.publish_command)
            .arg(self.keys.ended_sessions())
            .arg(token_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Whether a session token id was revoked, as far as the cache knows.
    pub async fn revocation(&self, token_id: &str) -> Result<Revocation> {
        let found: Vec<bool> = self
            .query_each(vec![
                redis::Cmd::exists(self.keys.revoked_token(token_id)),
                redis::Cmd::exists(self.keys.revocations_loaded()),
            ])
            .await?;
        Ok(match (found[0], found[1]) {
            (true, _) => Revocation::Revoked,
            (false, true) => Revocation::Live,
            (false, false) => Revocation::Unknown,
        })
    }

    /// Fills the cache with every live revocation, (token id, seconds left), and marks
    /// it complete.
    pub async fn load_revocations(&self, revoked: &[(String, u64)]) -> Result<()> {
        let markers = revoked
            .iter()
            .map(|(token_id, ttl_secs)| redis::Cmd::set_ex(self.keys.revoked_token(token_id), 1, (*ttl_secs).max(1)));
        let _: Vec<redis::Value> = self.query_each(markers.collect()).await?;
        // Marked complete only once every marker is in.
        let _: () = redis::Cmd::set(self.keys.revocations_loaded(), 1).query_async(&mut self.conn().await?).await?;
        Ok(())
    }
}
