//! Abuse limits per account and per gateway process: what one user may do however many
//! sockets they open, and how many sockets one gateway holds.
//!
//! Rates are token buckets (`governor`) keyed by account id; connections are counted per
//! account and in total. All of them are per gateway process: a user spread over `n`
//! gateways gets up to `n` times a rate.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::ApiError;

/// One keyed token bucket: `per_sec` sustained, `burst` at once, per account.
struct AccountRate(DefaultKeyedRateLimiter<i64>);

impl AccountRate {
    fn new(per_sec: f64, burst: u32) -> Self {
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs_f64(1.0 / per_sec.max(0.001));
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
        Self(DefaultKeyedRateLimiter::keyed(quota))
    }

    fn allow(&self, account: i64) -> bool {
        self.0.check_key(&account).is_ok()
    }
}

/// The limits' settings (see the gateway's `Settings`).
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Sends per second per account, sustained, and in a burst.
    pub send: (f64, u32),
    /// Typing notices and pings per second per account, and in a burst.
    pub notices: (f64, u32),
    /// History pages per second per account, and in a burst.
    pub history: (f64, u32),
    /// Joins (socket upgrades) per second per account, and in a burst.
    pub joins: (f64, u32),
    /// Open sockets per account.
    pub connections_per_account: usize,
    /// Open sockets on this gateway.
    pub connections: usize,
}

/// The gateway's limits.
pub struct Limits {
    sends: AccountRate,
    notices: AccountRate,
    history: AccountRate,
    joins: AccountRate,
    per_account: usize,
    total: usize,
    open: AtomicUsize,
    open_by_account: Mutex<HashMap<i64, usize>>,
}

impl Limits {
    /// Limits as configured.
    pub fn new(settings: &LimitSettings) -> Arc<Self> {
        Arc::new(Self {
            sends: AccountRate::new(settings.send.0, settings.send.1),
            notices: AccountRate::new(settings.notices.0, settings.notices.1),
            history: AccountRate::new(settings.history.0, settings.history.1),
            joins: AccountRate::new(settings.joins.0, settings.joins.1),
            per_account: settings.connections_per_account.max(1),
            total: settings.connections.max(1),
            open: AtomicUsize::new(0),
            open_by_account: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `account` may send a message now.
    pub fn allow_send(&self, account: i64) -> bool {
        self.sends.allow(account)
    }

    /// Whether `account` may send a typing notice or a ping now.
    pub fn allow_notice(&self, account: i64) -> bool {
        self.notices.allow(account)
    }

    /// Whether `account` may ask for a history page now.
    pub fn allow_history(&self, account: i64) -> bool {
        self.history.allow(account)
    }

    /// Admits a new socket of `account`, or refuses it: `429 rate_limited` (joining too
    /// fast), `429 too_many_connections` (the account's sockets), `503 overloaded` (this
    /// gateway's). The returned ticket counts the socket until it is dropped.
    pub fn admit(self: &Arc<Self>, account: i64) -> Result<ConnectionTicket, ApiError> {
        if !self.joins.allow(account) {
            return Err(ApiError::RateLimited("joining too fast; retry in a moment"));
        }
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::Overloaded("this gateway holds as many sockets as it may; retry"));
        }
        let mut by_account = self.open_by_account.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let open = by_account.entry(account).or_default();
        if *open >= self.per_account {
            drop(by_account);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::TooManyConnections(self.per_account));
        }
        *open += 1;
        Ok(ConnectionTicket { limits: Arc::clone(self), account })
    }

    /// Forgets idle accounts' buckets, so memory follows the active accounts only.
    pub fn forget_idle(&self) {
        for rate in [&self.sends, &self.notices, &self.history, &self.joins] {
            rate.0.retain_recent();
            rate.0.shrink_to_fit();
        }
    }
}

/// One admitted socket; dropping it frees its place.
pub struct ConnectionTicket {
    limits: Arc<Limits>,
    account: i64,
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        let mut by_account = self.limits.open_by_account.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(open) = by_account.get_mut(&self.account) {
            *open -= 1;
            if *open == 0 {
                by_account.remove(&self.account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_account: usize, total: usize) -> Arc<Limits> {
        Limits::new(&LimitSettings {
            send: (1.0, 2),
            notices: (1.0, 2),
            history: (1.0, 2),
            joins: (1000.0, 1000),
            connections_per_account: per_account,
            connections: total,
        })
    }

    #[test]
    fn rates_are_per_account() {
        let limits = limits(10, 10);
        assert!(limits.allow_send(1) && limits.allow_send(1));
        assert!(!limits.allow_send(1), "the burst is spent");
        assert!(limits.allow_send(2), "another account has its own bucket");
    }

    #[test]
    fn connections_are_counted_per_account_and_in_total_and_freed_on_drop() {
        let limits = limits(2, 3);
        let a1 = limits.admit(1).unwrap();
        let _a2 = limits.admit(1).unwrap();
        assert!(matches!(limits.admit(1), Err(ApiError::TooManyConnections(2))));
        let _b1 = limits.admit(2).unwrap();
        assert!(matches!(limits.admit(3), Err(ApiError::Overloaded(_))));
        drop(a1);
        assert!(limits.admit(1).is_ok(), "a dropped ticket frees its place");
    }
}
