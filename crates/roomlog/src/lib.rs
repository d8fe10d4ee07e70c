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
//! Across rooms: the dirty-room index, a sorted set of the rooms with unpersisted
//! messages, scored by when they became dirty or their watermark last moved — `{p}dirty`
//! on one Redis, and on Redis Cluster one set per hash slot, `{p}dirty:{<tag>}` with a tag
//! of that slot ([`Keyspace::dirty`]), so a room's index entry shares its slot;
//! `{p}revoked:<token id>` (a revoked session, until its token
//! expires) and `{p}revoked-loaded` (the revocation cache is complete; the archive holds
//! the durable list); `{p}login:{<account>}:failures` and `{p}login:{<account>}:lock` (failed
//! logins and the back-off they earned); `{p}lock:<name>`; channel `{p}sessions:ended` (token ids of ended
//! sessions, for every gateway). Channel `{p}room:{r}` carries `"<seq> <entry JSON>"` per message,
//! and `"R <seq>"` when a hydration re-initialises the room's counter at `seq`. On Redis
//! Cluster the channels are sharded (`SPUBLISH`) unless configured otherwise; a room's
//! channel then lives on the shard of its keys.
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
pub use flush::{DirtyRooms, FlushClaim, PersistLag, RoomState};
pub use hydrate::RESET_PREFIX;
pub use keys::Keyspace;
pub use locks::LockGuard;
pub use logins::LoginBackoff;
pub use presence::{Presence, PresenceChange, RoomPresence};
pub use read::{Chunk, RoomSummary, Unreadable, ONLINE_COUNT_CAP};
pub use sessions::Revocation;

pub use connection::connection_info;
use connection::{Conn, NodeConnection, ServerManager, ServerPool, THIS_PROCESS};
use huddle_config::{RedisMode, RedisSettings};
use huddle_domain::RoomName;

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
    /// Fewer replicas than configured confirmed an append in time (`WAIT`).
    #[error("only {acked} of {wanted} redis replicas confirmed the write in time")]
    NotReplicated {
        /// Replicas that confirmed it.
        acked: i64,
        /// Replicas required (`HUDDLE_REDIS_WAIT_REPLICAS`).
        wanted: u32,
    },
}

/// What the shards that answered returned, and why the others did not.
pub(crate) struct Reached<T> {
    /// The replies, in slot order, of every shard that answered.
    pub(crate) values: Vec<T>,
    /// One error per shard (slot range) that did not.
    pub(crate) unreachable: Vec<RoomLogError>,
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

/// The hot log, over a pooled Redis connection or a Redis Cluster's.
#[derive(Clone)]
pub struct RoomLog {
    backend: Backend,
    pub(crate) keys: Keyspace,
    pub(crate) window: u64,
    /// `SPUBLISH` (sharded pub/sub) or `PUBLISH`: how live messages are published.
    pub(crate) publish_command: &'static str,
    settings: std::sync::Arc<RedisSettings>,
}

#[derive(Clone)]
enum Backend {
    Single {
        pool: ServerPool,
        /// Reports the pool in `huddle_pool_connections{pool="redis"}` while the log lives.
        _pool_report: huddle_telemetry::metrics::PoolReport,
    },
    Cluster(std::sync::Arc<Cluster>),
}

/// A Redis Cluster client and its one connection (multiplexed, and shared by every
/// caller: it holds a connection per node and routes each command by hash slot), opened
/// on first use.
struct Cluster {
    client: redis::cluster::ClusterClient,
    conn: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection<NodeConnection>>,
    timeout: std::time::Duration,
}

/// The cluster client for `settings`: its seed nodes (`redis_url`, split at commas), RESP3
/// if `push` is wanted (pub/sub pushes), and the deadline of a connection and a reply.
pub fn cluster_client(settings: &RedisSettings, push: bool) -> Result<redis::cluster::ClusterClientBuilder> {
    let seeds = settings
        .redis_url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(connection_info)
        .collect::<Result<Vec<_>, _>>()?;
    let timeout = std::time::Duration::from_millis(settings.redis_timeout_ms.max(1));
    let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    if push {
        builder = builder.use_protocol(redis::ProtocolVersion::RESP3);
    }
    Ok(builder)
}

impl RoomLog {
    /// Builds the connection pool, or the cluster client (connections open lazily).
    pub fn connect(settings: &RedisSettings) -> Result<Self> {
        let timeout = std::time::Duration::from_millis(settings.redis_timeout_ms.max(1));
        let (backend, keys) = match settings.redis_mode {
            RedisMode::Single => {
                let pool = ServerPool::builder(ServerManager::new(&settings.redis_url)?)
                    .config(deadpool::managed::PoolConfig {
                        timeouts: deadpool::managed::Timeouts {
                            wait: Some(timeout),
                            create: Some(timeout),
                            recycle: Some(timeout),
                        },
                        ..deadpool::managed::PoolConfig::new(settings.redis_pool_size)
                    })
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()?;
                let observed = pool.clone();
                let _pool_report = huddle_telemetry::metrics::observe_pool("redis", move || {
                    let status = observed.status();
                    huddle_telemetry::metrics::PoolUse::of_deadpool(status.size, status.available, status.max_size)
                });
                (Backend::Single { pool, _pool_report }, Keyspace::new(settings.key_prefix.clone()))
            }
            RedisMode::Cluster => {
                let client = cluster_client(settings, false)?.build()?;
                let cluster = Cluster { client, conn: tokio::sync::OnceCell::new(), timeout };
                (Backend::Cluster(std::sync::Arc::new(cluster)), Keyspace::clustered(settings.key_prefix.clone()))
            }
        };
        Ok(Self {
            backend,
            keys,
            window: settings.redis_window,
            publish_command: if settings.sharded_pubsub() { "SPUBLISH" } else { "PUBLISH" },
            settings: std::sync::Arc::new(settings.clone()),
        })
    }

    /// The same log over a pool of its own. A multiplexed connection's reader runs on
    /// the runtime that opened it, so a thread that uses only its own pool gets its
    /// replies without a wake-up from another thread. (A cluster's log shares its
    /// connection: it is opened once per process.)
    pub fn with_own_pool(&self) -> Result<Self> {
        match self.backend {
            Backend::Single { .. } => Self::connect(&self.settings),
            Backend::Cluster(_) => Ok(self.clone()),
        }
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    pub(crate) async fn conn(&self) -> Result<Conn> {
        match &self.backend {
            Backend::Single { pool, .. } => Ok(Conn::get(pool).await?),
            Backend::Cluster(cluster) => {
                let conn = cluster
                    .conn
                    .get_or_try_init(|| async {
                        tokio::time::timeout(cluster.timeout, cluster.client.get_async_generic_connection())
                            .await
                            .unwrap_or_else(|_| {
                                Err(redis::RedisError::from((redis::ErrorKind::Io, "cluster connect timed out")))
                            })
                    })
                    .await?;
                Ok(Conn::Cluster(conn.clone()))
            }
        }
    }

    /// Waits until the configured number of replicas hold every write the connection made
    /// to `room`'s primary so far (`WAIT`, on the connection the append used).
    pub(crate) async fn wait_for_replicas(&self, conn: &mut Conn, room: &RoomName) -> Result<()> {
        let wanted = self.settings.redis_wait_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(wanted).arg(self.settings.redis_wait_timeout_ms.max(1));
        let acked: i64 = match conn {
            Conn::Pooled { .. } => wait.query_async(conn).await?,
            Conn::Cluster(cluster) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let primary = Route::new(keys::slot_of(room.as_str()), SlotAddr::Master);
                let reply = cluster
                    .route_command(wait, RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(primary)))
                    .await?;
                redis::from_redis_value(reply).map_err(redis::RedisError::from)?
            }
        };
        if acked < i64::from(wanted) {
            return Err(RoomLogError::NotReplicated { acked, wanted });
        }
        Ok(())
    }

    /// Runs `command` on every dirty-room index: on one Redis, its one index; on a
    /// cluster, one per hash slot, as one pipeline per slot range to the primary that
    /// serves it (`CLUSTER SLOTS`), so a sweep costs a round trip per primary rather than
    /// 16384 requests. A range whose primary does not answer (down, or the range moved
    /// meanwhile) is left out and its error returned with the rest; only when no range
    /// answers does the call fail.
    pub(crate) async fn on_dirty_indexes<T: redis::FromRedisValue>(
        &self,
        command: impl Fn(String) -> redis::Cmd,
    ) -> Result<Reached<T>> {
        use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
        let mut conn = self.conn().await?;
        let Conn::Cluster(cluster) = &mut conn else {
            let calls = self.keys.dirty_indexes().into_iter().map(&command).collect();
            return Ok(Reached { values: self.query_each(calls).await?, unreachable: Vec::new() });
        };
        let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(cluster).await?;
        let bound = |range: &[redis::Value], i: usize| redis::from_redis_value_ref::<u16>(range.get(i)?).ok();
        let calls =
            ranges.iter().filter_map(|range| Some((bound(range, 0)?, bound(range, 1)?))).map(|(first, last)| {
                let mut pipe = redis::pipe();
                for slot in first..=last {
                    pipe.add_command(command(self.keys.dirty_of_slot(slot)));
                }
                let mut cluster = cluster.clone();
                async move {
                    let primary = SingleNodeRoutingInfo::SpecificNode(Route::new(first, SlotAddr::Master));
                    let count = usize::from(last - first) + 1;
                    let replies = cluster.route_pipeline(pipe, 0, count, primary).await?;
                    replies
                        .into_iter()
                        .map(|reply| redis::from_redis_value::<T>(reply).map_err(redis::RedisError::from))
                        .collect::<Result<Vec<T>, redis::RedisError>>()
                }
            });
        let mut reached = Reached { values: Vec::new(), unreachable: Vec::new() };
        for range in futures_util::future::join_all(calls).await {
            match range {
                Ok(values) => reached.values.extend(values),
                Err(error) => reached.unreachable.push(error.into()),
            }
        }
        match (reached.values.is_empty(), reached.unreachable.is_empty()) {
            (true, false) => Err(reached.unreachable.swap_remove(0)),
            _ => Ok(reached),
        }
    }

    /// Runs commands that may each touch another hash slot: as one pipeline on a single
    /// Redis, at once (each routed by its key) on a cluster, which refuses a pipeline that
    /// spans slots. Replies come in the order of `commands`.
    pub(crate) async fn query_each<T: redis::FromRedisValue>(&self, commands: Vec<redis::Cmd>) -> Result<Vec<T>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        if let Conn::Cluster(cluster) = &conn {
            let calls = commands.into_iter().map(|command| {
                let mut conn = cluster.clone();
                async move { command.query_async::<T>(&mut conn).await }
            });
            return Ok(futures_util::future::try_join_all(calls).await?);
        }
        let mut pipe = redis::pipe();
        for command in commands {
            pipe.add_command(command);
        }
        Ok(pipe.query_async(&mut conn).await?)
    }

    /// Redis may have gone away (a pub/sub connection on it broke): every pooled
    /// connection is PINGed before its next use, so a dead one is replaced instead of
    /// failing its caller's command. (A cluster's connections repair themselves.)
    pub fn suspect_connections(&self) {
        if let Backend::Single { pool, .. } = &self.backend {
            pool.manager().suspect();
        }
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
        ("readiness.lua", include_str!("lua/readiness.lua")),
        ("recheck.lua", include_str!("lua/recheck.lua")),
        ("release_claim.lua", include_str!("lua/release_claim.lua")),
        ("take_lock.lua", include_str!("lua/take_lock.lua")),
    ];

    /// A script may touch only the keys its caller declares in KEYS (Redis Cluster routes
    /// a script by them, and refuses one that reaches for another): each command's key
    /// is a `KEYS[...]`. A command named by an argument is the publish command (PUBLISH or
    /// SPUBLISH, whose first argument is a channel, not a key).
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
                if command.starts_with("ARGV[") {
                    continue;
                }
                assert!(key.starts_with("KEYS["), "{name}: {command} touches {key:?}, not a declared key");
            }
        }
    }
}
