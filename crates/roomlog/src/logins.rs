//! Failed logins per account, shared by every gateway: after a few free failures each
//! further one locks the account's logins for a doubling time, so online password
//! guessing stays slow however many gateways or addresses the guesser uses.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::{Result, RoomLog};

static LOGIN_FAILED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/login_failed.lua")));

/// How failed logins are paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginBackoff {
    /// Failures in a row that cost nothing.
    pub free_failures: u32,
    /// The lock after the first failure beyond the free ones; each further one doubles it.
    pub first_lock: Duration,
    /// The longest lock.
    pub max_lock: Duration,
}

impl LoginBackoff {
    /// How long failures are remembered after the last one: long enough that waiting out
    /// a lock does not reset the count.
    fn memory(&self) -> Duration {
        self.max_lock.saturating_mul(4).max(Duration::from_secs(3600))
    }
}

impl RoomLog {
    /// How long logins of `account` stay locked (None: they may be tried now).
    pub async fn login_lock(&self, account: &str) -> Result<Option<Duration>> {
        let left_ms: i64 =
            redis::cmd("PTTL").arg(self.keys.login_lock(account)).query_async(&mut self.conn().await?).await?;
        Ok((left_ms > 0).then(|| Duration::from_millis(left_ms as u64)))
    }

    /// Counts a failed login of `account`; returns the lock it now has, if any.
    pub async fn login_failed(&self, account: &str, backoff: &LoginBackoff) -> Result<Option<Duration>> {
        let lock_ms: u64 = LOGIN_FAILED
            .key(self.keys.login_failures(account))
            .key(self.keys.login_lock(account))
            .arg(backoff.free_failures)
            .arg(backoff.first_lock.as_millis().max(1) as u64)
            .arg(backoff.max_lock.as_millis().max(1) as u64)
            .arg(backoff.memory().as_millis() as u64)
            .invoke_async(&mut self.conn().await?)
            .await?;
        Ok((lock_ms > 0).then(|| Duration::from_millis(lock_ms)))
    }

    /// Forgets `account`'s failures after a successful login.
    pub async fn login_succeeded(&self, account: &str) -> Result<()> {
        let _: () = redis::cmd("DEL")
            .arg(self.keys.login_failures(account))
            .arg(self.keys.login_lock(account))
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(())
    }
}
