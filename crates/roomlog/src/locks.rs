//! Cluster-wide locks with an owner token and an expiry (the hydrate lock of a room,
//! the sweep leader).

use std::sync::LazyLock;

use redis::Script;

use crate::{Result, RoomLog};

static TAKE_LOCK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/take_lock.lua")));
static RELEASE_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
});

/// A held lock; release it with [`RoomLog::unlock`] (it also expires on its own).
#[derive(Debug)]
pub struct LockGuard {
    key: String,
    token: String,
}

impl RoomLog {
    /// Takes the lock `key` for `ttl_ms` if nobody holds it.
    pub async fn try_lock(&self, key: String, ttl_ms: u64) -> Result<Option<LockGuard>> {
        let token = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
        );
        let taken: i64 = TAKE_LOCK.key(&key).arg(&token).arg(ttl_ms).invoke_async(&mut self.conn().await?).await?;
        Ok((taken == 1).then_some(LockGuard { key, token }))
    }

    /// Releases a lock if it is still ours.
    pub async fn unlock(&self, guard: LockGuard) -> Result<()> {
        let _: i64 = RELEASE_LOCK.key(guard.key).arg(guard.token).invoke_async(&mut self.conn().await?).await?;
        Ok(())
    }
}
