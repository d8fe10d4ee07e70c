//! Revoked session tokens, until they would have expired anyway, and the notice every
//! gateway gets when a session ends.

use redis::AsyncCommands;

use crate::{Result, RoomLog};

impl RoomLog {
    /// Marks a session token id as revoked until `ttl_secs` from now, and announces it on
    /// [`Keyspace::ended_sessions`](crate::Keyspace::ended_sessions) in the same step.
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

    /// Whether a session token id was revoked.
    pub async fn is_token_revoked(&self, token_id: &str) -> Result<bool> {
        Ok(self.conn().await?.exists(self.keys.revoked_token(token_id)).await?)
    }
}
