//! The Redis hot log of every room: the write-back cache in front of PostgreSQL.
//!
//! Per room (all keys share the room's hash tag, so one Redis Cluster slot holds them):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}room:{r}:seq` | string | last seq handed out; its presence means "initialised" |
//! | `{p}room:{r}:log` | stream | entry id `<seq>-0`, field `m` = [`LogEntry`] JSON |
//! | `{p}room:{r}:persisted` | string | watermark: every seq ≤ it is in PostgreSQL |
//! | `{p}room:{r}:claim` | hash | `upto`: highest seq already split into chunk tasks; `wm`, `since`: when the watermark last moved (expires) |
//! | `{p}room:{r}:epoch` | string | which archive re-open this copy comes from (stale chunks are refused) |
//! | `{p}room:{r}:checked_on` | string | `run_id` of the Redis process this copy was last checked against the archive on |
//! | `{p}room:{r}:online` | sorted set | `<socket>\|<user id>\|<name>` scored by expiry (presence) |
//! | `{p}room:{r}:cid:<user id>:<id>` | string | seq of that sender's send with that client_id (expires) |
//!
//! Globally: `{p}dirty` (sorted set: rooms with unpersisted messages, scored by when
//! they became dirty or their watermark last moved); `{p}revoked:<token id>` (a revoked session, until its token
//! expires) and `{p}revoked-loaded` (the revocation cache is complete; the archive holds
//! the durable list); `{p}login:<account>:failures` and `{p}login:<account>:lock` (failed
//! logins and the back-off they earned); `{p}lock:<name>`; channel `{p}sessions:ended` (token ids of ended
//! sessions, for every gateway). Channel `{p}room:{r}` carries `"<seq> <entry JSON>"` per message,
//! and `"R <seq>"` when a hydration re-initialises the room's counter at `seq`.
//!
//! Every multi-step change is one Lua script, so it is atomic and one round-trip.
//!
//! A room takes writes only on the Redis process it was hydrated or re-checked on
//! (`checked_on`): after Redis restarts, possibly from an older state, the first write
//! finds the room unchecked, and the hydrator compares it with the archive first (see
//! [`RoomLog::recheck`]), so no seq the archive already holds is handed out again.
//!
//! It owns every Redis key and script of Huddle (the gateway's pub/sub connection only
//! subscribes to the channels named here); it knows no PostgreSQL, no RabbitMQ, no HTTP.

//!
//! One module per job: [`append`] (the write path), [`entry`] (the stored record), [`read`], [`flush`] (the persist
//! path's bookkeeping), [`hydrate`] (restore and re-check), [`presence`], [`locks`],
//! [`sessions`] (revoked tokens), [`logins`] (failed-login back-off), [`keys`] (every key name); each script sits in `lua/`
//! under the name of its module's operation.

pub mod append;
mod connection;
pub mod entry;
pub mod flush;
pub mod hydrate;
pub mod keys;
pub mod locks;
pub mod logins;
pub mod presence;
pub mod read;
pub mod sessions;

pub use append::{parse_published, AppendOutcome, CLIENT_ID_TTL_SECS};
pub use entry::LogEntry;
pub use flush::{FlushClaim, PersistLag, RoomState};
pub use hydrate::RESET_PREFIX;
pub use keys::Keyspace;
pub use locks::LockGuard;
pub use logins::LoginBackoff;
pub use presence::{Presence, PresenceChange, RoomPresence};
pub use read::{Chunk, RoomSummary, Unreadable, ONLINE_COUNT_CAP};
pub use sessions::Revocation;

pub use connection::connection_info;
use connection::{Conn, ServerManager, ServerPool};
use huddle_config::RedisSettings;

/// Errors of the hot log.
#[derive(Debug, thiserror::Error)]
pub enum RoomLogError {
    /// A Redis command or script failed (connection lost, timeout or server error).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No pooled connection could be had (waiting timed out, or opening one failed).
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    /// The connection pool could not be built from the settings.
    #[error("redis pool config: {0}")]
    PoolConfig(#[from] deadpool::managed::BuildError),
    /// A stream entry read back is not a valid log entry.
    #[error("corrupt log entry {id:?}: {reason}")]
    CorruptEntry {
        /// The stream entry id (normally `<seq>-0`).
        id: String,
        /// What is wrong with it (bad id, no field `m`, or JSON that does not decode).
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = RoomLogError> = std::result::Result<T, E>;

/// Whether a room can take writes on the Redis process a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Redis does not hold the room: hydrate it from the archive.
    Missing,
    /// Redis holds the room at `last_seq`, but this Redis process was never checked
    /// against the archive for it: it may have gone back to an older state.
    Unchecked {
        /// The last seq this Redis process's counter handed out.
        last_seq: u64,
    },
    /// Hydrated or re-checked on this Redis process.
    Ready {
        /// The last seq the room's counter handed out.
        last_seq: u64,
    },
}

/// The hot log, over a pooled Redis connection.
#[derive(Clone)]
pub struct RoomLog {
    pool: ServerPool,
    /// Reports the pool in `huddle_pool_connections{pool="redis"}` while the log lives.
    _pool_report: huddle_telemetry::metrics::PoolReport,
    pub(crate) keys: Keyspace,
    pub(crate) window: u64,
    settings: std::sync::Arc<RedisSettings>,
}

impl RoomLog {
    /// Builds the connection pool (connections open lazily).
    pub fn connect(settings: &RedisSettings) -> Result<Self> {
        let timeout = Some(std::time::Duration::from_millis(settings.redis_timeout_ms.max(1)));
        let pool = ServerPool::builder(ServerManager::new(&settings.redis_url)?)
            .config(deadpool::managed::PoolConfig {
                timeouts: deadpool::managed::Timeouts { wait: timeout, create: timeout, recycle: timeout },
                ..deadpool::managed::PoolConfig::new(settings.redis_pool_size)
            })
            .runtime(deadpool::Runtime::Tokio1)
            .build()?;
        let observed = pool.clone();
        let _pool_report = huddle_telemetry::metrics::observe_pool("redis", move || {
            let status = observed.status();
            huddle_telemetry::metrics::PoolUse::of_deadpool(status.size, status.available, status.max_size)
        });
        Ok(Self {
            pool,
            _pool_report,
            keys: Keyspace::new(settings.key_prefix.clone()),
            window: settings.redis_window,
            settings: std::sync::Arc::new(settings.clone()),
        })
    }

    /// The same log over a pool of its own. A multiplexed connection's reader runs on
    /// the runtime that opened it, so a thread that uses only its own pool gets its
    /// replies without a wake-up from another thread.
    pub fn with_own_pool(&self) -> Result<Self> {
        Self::connect(&self.settings)
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    pub(crate) async fn conn(&self) -> Result<Conn> {
        Ok(Conn::get(&self.pool).await?)
    }

    /// Redis may have gone away (a pub/sub connection on it broke): every pooled
    /// connection is PINGed before its next use, so a dead one is replaced instead of
    /// failing its caller's command.
    pub fn suspect_connections(&self) {
        self.pool.manager().suspect();
    }

    /// Round-trips a PING (readiness).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// Every script, by file name.
    const SCRIPTS: &[(&str, &str)] = &[
        ("append.lua", include_str!("lua/append.lua")),
        ("claim_flush.lua", include_str!("lua/claim_flush.lua")),
        ("clear_dirty.lua", include_str!("lua/clear_dirty.lua")),
        ("hydrate.lua", include_str!("lua/hydrate.lua")),
        ("login_failed.lua", include_str!("lua/login_failed.lua")),
        ("mark_persisted.lua", include_str!("lua/mark_persisted.lua")),
        ("presence.lua", include_str!("lua/presence.lua")),
        ("read_chunk.lua", include_str!("lua/read_chunk.lua")),
        ("recheck.lua", include_str!("lua/recheck.lua")),
        ("release_claim.lua", include_str!("lua/release_claim.lua")),
        ("take_lock.lua", include_str!("lua/take_lock.lua")),
    ];

    /// A script may touch only the keys its caller declares in KEYS (Redis Cluster routes
    /// a script by them, and refuses one that reaches for another): each command's key
    /// is a `KEYS[...]` (PUBLISH names a channel, not a key).
    #[test]
    fn every_script_touches_only_the_keys_it_declares() {
        let listed: std::collections::BTreeSet<_> = SCRIPTS.iter().map(|(name, _)| name.to_string()).collect();
        let on_disk: std::collections::BTreeSet<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lua"))
            .expect("src/lua")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        assert_eq!(listed, on_disk, "every script in src/lua is checked");
        for (name, source) in SCRIPTS {
            for call in source.split("redis.call(").skip(1) {
                let mut args = call.splitn(3, ',').map(str::trim);
                let command = args.next().unwrap_or_default().trim_matches('\'').to_ascii_uppercase();
                let key = args.next().unwrap_or_default();
                if command == "PUBLISH" {
                    continue;
                }
                assert!(key.starts_with("KEYS["), "{name}: {command} touches {key:?}, not a declared key");
            }
        }
    }
}
