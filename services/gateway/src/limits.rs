//! Abuse limits per account, per client address and per gateway process: what one user
//! may do however many sockets they open, how fast one address may sign up and log in,
//! and how many sockets one gateway holds.
//!
//! Rates are token buckets (`governor`) keyed by account id or client address (an IPv6
//! address counts by its /64, which one subscriber usually holds whole); connections are
//! counted per account and in total. All of them are per gateway process: a user spread
//! over `n` gateways gets up to `n` times a rate. (Failed logins are counted per account
//! in Redis instead, across gateways: see `huddle_roomlog::logins`.)

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::ApiError;

/// One keyed token bucket: `per_sec` sustained, `burst` at once, per key.
struct Rate<K: Hash + Eq + Clone>(DefaultKeyedRateLimiter<K>);

impl<K: Hash + Eq + Clone> Rate<K> {
    fn new(per_sec: f64, burst: u32) -> Self {
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs_f64(1.0 / per_sec.max(0.001));
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
        Self(DefaultKeyedRateLimiter::keyed(quota))
    }

    fn allow(&self, key: K) -> bool {
        self.0.check_key(&key).is_ok()
    }

    /// Takes a token, or says how long until one is there.
    fn take(&self, key: K) -> Result<(), Duration> {
        self.0.check_key(&key).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn forget_idle(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in which case
/// the right-most address of `X-Forwarded-For` that is not itself a trusted proxy (the
/// left part of that header is whatever the client chose to send, so it is never used).
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted_proxies: &[ipnet::IpNet]) -> IpAddr {
    let trusted = |address: &IpAddr| trusted_proxies.iter().any(|network| network.contains(address));
    if !trusted(&peer) {
        return peer;
    }
    let hops = forwarded_for.unwrap_or_default().rsplit(',').map(str::trim);
    for hop in hops {
        match hop.parse::<IpAddr>() {
            Ok(address) if trusted(&address) => continue,
            Ok(address) => return address,
            // Garbage where an address should be: stop at the last hop we could trust.
            Err(_) => break,
        }
    }
    peer
}

/// One `HUDDLE_TRUSTED_PROXIES` entry: a network (`10.0.0.0/8`) or one address (`10.0.0.1`).
pub fn parse_proxy(entry: &str) -> Result<ipnet::IpNet, String> {
    let entry = entry.trim();
    entry
        .parse::<ipnet::IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{entry:?} is neither an IP address nor a CIDR network (e.g. 10.0.0.0/8)"))
}

/// The key an address is limited by: IPv4 whole, IPv6 by its /64 network.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)),
        v4 => v4,
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
    /// Sign-ups and logins per second per client address, and in a burst.
    pub auth: (f64, u32),
    /// Open sockets per account.
    pub connections_per_account: usize,
    /// Open sockets on this gateway.
    pub connections: usize,
}

/// The gateway's limits.
pub struct Limits {
    sends: Rate<i64>,
    notices: Rate<i64>,
    history: Rate<i64>,
    joins: Rate<i64>,
    auth: Rate<IpAddr>,
    per_account: usize,
    total: usize,
    open: AtomicUsize,
    open_by_account: Mutex<HashMap<i64, usize>>,
}

impl Limits {
    /// Limits as configured.
    pub fn new(settings: &LimitSettings) -> Arc<Self> {
        Arc::new(Self {
            sends: Rate::new(settings.send.0, settings.send.1),
            notices: Rate::new(settings.notices.0, settings.notices.1),
            history: Rate::new(settings.history.0, settings.history.1),
            joins: Rate::new(settings.joins.0, settings.joins.1),
            auth: Rate::new(settings.auth.0, settings.auth.1),
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

    /// Admits a sign-up or login from `address`, or refuses it with 429 `rate_limited`
    /// and the wait until the next is allowed.
    pub fn admit_auth(&self, address: IpAddr) -> Result<(), ApiError> {
        self.auth.take(address_key(address)).map_err(ApiError::AddressThrottled)
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
            rate.forget_idle();
        }
        self.auth.forget_idle();
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
            auth: (0.001, 2),
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
    fn sign_ups_and_logins_are_limited_per_address_and_ipv6_per_64() {
        let limits = limits(10, 10);
        let v4 = |last| IpAddr::from([192, 0, 2, last]);
        assert!(limits.admit_auth(v4(1)).is_ok() && limits.admit_auth(v4(1)).is_ok());
        let Err(ApiError::AddressThrottled(wait)) = limits.admit_auth(v4(1)) else { panic!("the burst is spent") };
        assert!(wait > Duration::from_secs(100), "the wait until the next token is reported: {wait:?}");
        assert!(limits.admit_auth(v4(2)).is_ok(), "another address has its own bucket");

        let v6 = |host: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, host]);
        assert!(limits.admit_auth(v6(1)).is_ok() && limits.admit_auth(v6(2)).is_ok());
        assert!(limits.admit_auth(v6(3)).is_err(), "hosts of one /64 share a bucket");
        assert!(limits.admit_auth(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1])).is_ok(), "another /64 does not");
        let mapped = IpAddr::from(std::net::Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert!(limits.admit_auth(mapped).is_err(), "an IPv4-mapped address is its IPv4 address");
    }

    #[test]
    fn the_client_address_is_believed_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxies = [parse_proxy("10.0.0.1").unwrap(), parse_proxy("10.0.0.2").unwrap()];
        assert_eq!(client_address(ip("198.51.100.7"), Some("1.2.3.4"), &proxies), ip("198.51.100.7"), "untrusted peer");
        assert_eq!(client_address(ip("10.0.0.1"), Some("1.2.3.4, 203.0.113.9"), &proxies), ip("203.0.113.9"));
        assert_eq!(
            client_address(ip("10.0.0.1"), Some("203.0.113.9, 10.0.0.2"), &proxies),
            ip("203.0.113.9"),
            "a chain of trusted proxies is skipped"
        );
        assert_eq!(client_address(ip("10.0.0.1"), Some("junk"), &proxies), ip("10.0.0.1"));
        assert_eq!(client_address(ip("10.0.0.1"), None, &proxies), ip("10.0.0.1"));
        assert_eq!(
            client_address(ip("10.0.0.3"), Some("1.2.3.4"), &proxies),
            ip("10.0.0.3"),
            "a neighbour is no proxy"
        );
    }

    /// Ingress controllers' pod addresses change: a whole network can be trusted.
    #[test]
    fn a_trusted_proxy_network_covers_every_address_in_it_and_nothing_else() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxies = [parse_proxy("10.42.0.0/16").unwrap(), parse_proxy("fd00::/8").unwrap()];
        assert_eq!(client_address(ip("10.42.7.9"), Some("203.0.113.9, 10.42.1.1"), &proxies), ip("203.0.113.9"));
        assert_eq!(client_address(ip("fd00::5"), Some("2001:db8::1"), &proxies), ip("2001:db8::1"));
        assert_eq!(
            client_address(ip("10.43.0.1"), Some("203.0.113.9"), &proxies),
            ip("10.43.0.1"),
            "outside the network"
        );
        assert!(parse_proxy("10.0.0.0/33").is_err() && parse_proxy("ingress").is_err());
        assert_eq!(parse_proxy(" 192.0.2.1 ").unwrap().to_string(), "192.0.2.1/32");
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
