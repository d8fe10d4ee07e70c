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
    /// Marks a session token id as revoked until `ttl_secs` from now, and announces it on
    /// [`Keyspace::ended_sessions`](crate::Keyspace::ended_sessions) in the same step.
    /// The archive holds the durable record; this is its cache.
    pub async fn revoke_token(&self, token_id: &str, ttl_secs: u64) -> Result<()> {
        let _: () = redis::pipe()
            .atomic()
            .set_ex(self.keys.revoked_token(token_id), 1, ttl_secs.max(1))
            .ignore()
            .publish(self.keys.ended_sessions(), token_id)
            .ignore()
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(())
    }

    /// Whether a session token id was revoked, as far as the cache knows.
    pub async fn revocation(&self, token_id: &str) -> Result<Revocation> {
        let (revoked, loaded): (bool, bool) = redis::pipe()
            .exists(self.keys.revoked_token(token_id))
            .exists(self.keys.revocations_loaded())
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(match (revoked, loaded) {
            (true, _) => Revocation::Revoked,
            (false, true) => Revocation::Live,
            (false, false) => Revocation::Unknown,
        })
    }

    /// Fills the cache with every live revocation, (token id, seconds left), and marks
    /// it complete.
    pub async fn load_revocations(&self, revoked: &[(String, u64)]) -> Result<()> {
        let mut pipe = redis::pipe();
        for (token_id, ttl_secs) in revoked {
            pipe.set_ex(self.keys.revoked_token(token_id), 1, (*ttl_secs).max(1)).ignore();
        }
        pipe.set(self.keys.revocations_loaded(), 1).ignore();
        let _: () = pipe.query_async(&mut self.conn().await?).await?;
        Ok(())
    }
}
