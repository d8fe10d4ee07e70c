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
//! they became dirty). Channel `{p}room:{r}` carries `"<seq> <entry JSON>"` per message,
//! and `"R <seq>"` when a hydration re-initialises the room's counter at `seq`.
//!
//! Every multi-step change is one Lua script, so it is atomic and one round-trip.
//!
//! A room takes writes only on the Redis process it was hydrated or re-checked on
//! (`checked_on`): after Redis restarts, possibly from an older state, the first write
//! finds the room unchecked, and the hydrator compares it with the archive first (see
//! [`RoomLog::recheck`]), so no seq the archive already holds is handed out again.

mod connection;

use connection::{Conn, ServerManager, ServerPool};

use std::sync::LazyLock;

use huddle_config::RedisSettings;
use huddle_domain::{LogEntry, RoomName, StoredMessage};
use redis::{AsyncCommands, Script};

/// How long a client_id keeps deduplicating resends.
pub const CLIENT_ID_TTL_SECS: u64 = 24 * 3600;

static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/append.lua")));
static HYDRATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/hydrate.lua")));
static RECHECK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/recheck.lua")));
static MARK_PERSISTED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/mark_persisted.lua")));
static CLAIM_FLUSH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/claim_flush.lua")));
static PRESENCE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/presence.lua")));
static RELEASE_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
});

/// Errors of the hot log.
#[derive(Debug, thiserror::Error)]
pub enum RoomLogError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis pool config: {0}")]
    PoolConfig(#[from] deadpool::managed::BuildError),
    #[error("corrupt log entry {id:?}: {reason}")]
    CorruptEntry { id: String, reason: String },
}

/// Result alias for this crate.
pub type Result<T, E = RoomLogError> = std::result::Result<T, E>;

/// Names of every Redis key and channel, under one prefix.
#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    /// A keyspace whose names all start with `prefix` (which must not contain `{`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    fn room_key(&self, room: &RoomName, part: &str) -> String {
        format!("{}room:{{{}}}:{}", self.prefix, room, part)
    }

    /// The room's seq counter.
    pub fn seq(&self, room: &RoomName) -> String {
        self.room_key(room, "seq")
    }
    /// The room's log stream.
    pub fn log(&self, room: &RoomName) -> String {
        self.room_key(room, "log")
    }
    /// The room's persisted watermark.
    pub fn persisted(&self, room: &RoomName) -> String {
        self.room_key(room, "persisted")
    }
    /// The room's epoch (which archive re-open the Redis copy comes from).
    pub fn epoch(&self, room: &RoomName) -> String {
        self.room_key(room, "epoch")
    }
    /// The `run_id` of the Redis process the room was last checked against the archive on.
    pub fn checked_on(&self, room: &RoomName) -> String {
        self.room_key(room, "checked_on")
    }
    /// The room's flush claim: what is already split into chunk tasks.
    pub fn claim(&self, room: &RoomName) -> String {
        self.room_key(room, "claim")
    }
    /// The room's presence set.
    pub fn online(&self, room: &RoomName) -> String {
        self.room_key(room, "online")
    }
    /// The room's hydration lock.
    pub fn hydrate_lock(&self, room: &RoomName) -> String {
        self.room_key(room, "hydrating")
    }
    /// Marker of a client_id a sender already used in the room. The key belongs to the
    /// sender: another user's equal client_id is a different message.
    pub fn client_id(&self, room: &RoomName, user_id: i64, client_id: &str) -> String {
        self.room_key(room, &client_id_marker(user_id, client_id))
    }
    /// Pub/sub channel of the room.
    pub fn channel(&self, room: &RoomName) -> String {
        format!("{}room:{{{}}}", self.prefix, room)
    }
    /// The room a channel name belongs to, if it is one of ours.
    pub fn room_of_channel(&self, channel: &str) -> Option<RoomName> {
        let inner = channel.strip_prefix(&self.prefix)?.strip_prefix("room:{")?.strip_suffix('}')?;
        RoomName::parse(inner).ok()
    }
    /// Sorted set of dirty rooms.
    pub fn dirty(&self) -> String {
        format!("{}dirty", self.prefix)
    }
    /// A named cluster-wide lock (e.g. the sweep leader).
    pub fn lock(&self, name: &str) -> String {
        format!("{}lock:{}", self.prefix, name)
    }
    /// Marker of a revoked session token.
    pub fn revoked_token(&self, token_id: &str) -> String {
        format!("{}revoked:{}", self.prefix, token_id)
    }
}

/// Outcome of [`RoomLog::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored under `seq`; `unpersisted` messages of the room are now above the watermark.
    Appended { seq: u64, unpersisted: u64 },
    /// The client_id was already used in this room; `seq` is the original message's.
    Duplicate { seq: u64 },
    /// Redis does not hold the room's counter, or this Redis process has not been
    /// checked against the archive for it yet: it must be hydrated first.
    NotReady,
}

/// What a chunk task reads from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The room's epoch the entries belong to.
    pub epoch: i64,
    /// The decodable entries, in seq order.
    pub messages: Vec<StoredMessage>,
    /// Entries that are not a valid log entry (written by something other than the append
    /// script, or corrupted).
    pub unreadable: Vec<Unreadable>,
}

/// A log entry that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub seq: u64,
    /// The entry's field bytes as Redis holds them.
    pub raw: Vec<u8>,
    pub reason: String,
}

/// A range a flush claimed for chunking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushClaim {
    pub from: u64,
    pub to: u64,
    /// The range includes seqs an earlier claim held without progress (now retried).
    pub reclaimed: bool,
}

/// A room's write-back state as Redis sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomState {
    pub in_redis: bool,
    pub last_seq: u64,
    pub persisted_seq: u64,
    /// When the room became dirty (epoch ms), if it is in the dirty index.
    pub dirty_since_ms: Option<i64>,
    /// Which archive re-open the Redis copy comes from (changes when Redis lost the room).
    pub epoch: i64,
}

/// Whether a room can take writes on the Redis process a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Redis does not hold the room: hydrate it from the archive.
    Missing,
    /// Redis holds the room at `last_seq`, but this Redis process was never checked
    /// against the archive for it: it may have gone back to an older state.
    Unchecked { last_seq: u64 },
    /// Hydrated or re-checked on this Redis process.
    Ready { last_seq: u64 },
}

/// One socket's presence entry.
#[derive(Debug, Clone)]
pub struct Presence {
    /// Unique per socket across gateways.
    pub socket: String,
    pub user_id: i64,
    pub user_name: String,
}

impl Presence {
    fn member(&self) -> String {
        format!("{}|{}|{}", self.socket, self.user_id, self.user_name)
    }
}

/// What a presence call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange {
    Join,
    Refresh,
    Leave,
}

/// A room's presence after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPresence {
    /// Live sockets of the changed user (0 after their last one left).
    pub user_sockets: usize,
    /// Live sockets in the room, all users.
    pub sockets: usize,
    /// Users online, by id: (id, name).
    pub online: Vec<(i64, String)>,
}

/// A held lock; release it with [`RoomLog::unlock`] (it also expires on its own).
#[derive(Debug)]
pub struct LockGuard {
    key: String,
    token: String,
}

/// The hot log, over a pooled Redis connection.
#[derive(Clone)]
pub struct RoomLog {
    pool: ServerPool,
    keys: Keyspace,
    window: u64,
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
        Ok(Self { pool, keys: Keyspace::new(settings.key_prefix.clone()), window: settings.redis_window })
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    async fn conn(&self) -> Result<Conn> {
        Ok(Conn(self.pool.get().await?))
    }

    /// Round-trips a PING (readiness).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Whether the room can take writes on the Redis process this call reaches.
    pub async fn readiness(&self, room: &RoomName) -> Result<Readiness> {
        let mut conn = self.conn().await?;
        let (seq, checked_on): (Option<u64>, Option<String>) =
            redis::pipe().get(self.keys.seq(room)).get(self.keys.checked_on(room)).query_async(&mut conn).await?;
        Ok(match seq {
            None => Readiness::Missing,
            Some(last_seq) if checked_on.as_deref() == Some(&*conn.run_id()) => Readiness::Ready { last_seq },
            Some(last_seq) => Readiness::Unchecked { last_seq },
        })
    }

    /// Appends one message atomically: seq INCR, XADD, client_id marker, dirty-index
    /// entry, PUBLISH.
    pub async fn append(&self, room: &RoomName, entry: &LogEntry) -> Result<AppendOutcome> {
        let json = serde_json::to_string(entry)
            .map_err(|e| RoomLogError::CorruptEntry { id: String::new(), reason: e.to_string() })?;
        let ttl = if entry.client_id.is_empty() { 0 } else { CLIENT_ID_TTL_SECS };
        let mut conn = self.conn().await?;
        let (seq, duplicate, unpersisted): (i64, i64, i64) = APPEND
            .key(self.keys.seq(room))
            .key(self.keys.log(room))
            .key(self.keys.persisted(room))
            .key(self.keys.client_id(room, entry.user_id, &entry.client_id))
            .key(self.keys.dirty())
            .key(self.keys.checked_on(room))
            .arg(self.keys.channel(room))
            .arg(json)
            .arg(ttl)
            .arg(room.as_str())
            .arg(huddle_domain::now_ms())
            .arg(&*conn.run_id())
            .invoke_async(&mut conn)
            .await?;
        if seq < 0 {
            return Ok(AppendOutcome::NotReady);
        }
        let seq = seq as u64;
        if duplicate == 1 {
            return Ok(AppendOutcome::Duplicate { seq });
        }
        Ok(AppendOutcome::Appended { seq, unpersisted: unpersisted.max(0) as u64 })
    }

    async fn mark_dirty_with(&self, conn: &mut Conn, room: &RoomName) -> Result<()> {
        let _: i64 = redis::cmd("ZADD")
            .arg(self.keys.dirty())
            .arg("NX")
            .arg(huddle_domain::now_ms())
            .arg(room.as_str())
            .query_async(conn)
            .await?;
        Ok(())
    }

    /// The newest `limit` messages, oldest first.
    pub async fn recent(&self, room: &RoomName, limit: usize) -> Result<Vec<StoredMessage>> {
        self.before(room, 0, limit).await
    }

    /// Up to `limit` messages with seq < `before` (0: no bound), the newest ones, oldest first.
    pub async fn before(&self, room: &RoomName, before: u64, limit: usize) -> Result<Vec<StoredMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let end = if before == 0 { "+".to_owned() } else { format!("({before}-0") };
        let raw: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
            .arg(self.keys.log(room))
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn().await?)
            .await?;
        let mut messages = parse_entries(raw)?;
        messages.reverse();
        Ok(messages)
    }

    /// Messages with `from <= seq <= to`, in order.
    pub async fn range(&self, room: &RoomName, from: u64, to: u64) -> Result<Vec<StoredMessage>> {
        let raw: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(self.keys.log(room))
            .arg(format!("{from}-0"))
            .arg(format!("{to}-0"))
            .query_async(&mut self.conn().await?)
            .await?;
        parse_entries(raw)
    }

    /// Entries with `from <= seq <= to` and the epoch they belong to, read atomically:
    /// what a chunk task writes to the archive. Entries that cannot be decoded come back
    /// apart, with their raw bytes, instead of failing the whole chunk.
    pub async fn chunk(&self, room: &RoomName, from: u64, to: u64) -> Result<Chunk> {
        let (epoch, raw): (Option<i64>, Vec<(String, Vec<Vec<u8>>)>) = redis::pipe()
            .atomic()
            .get(self.keys.epoch(room))
            .cmd("XRANGE")
            .arg(self.keys.log(room))
            .arg(format!("{from}-0"))
            .arg(format!("{to}-0"))
            .query_async(&mut self.conn().await?)
            .await?;
        let mut chunk =
            Chunk { epoch: epoch.unwrap_or(0), messages: Vec::with_capacity(raw.len()), unreadable: Vec::new() };
        for (id, fields) in raw {
            let Some(seq) = seq_of_id(&id) else { continue };
            let value = fields.chunks(2).find(|pair| pair[0] == b"m").and_then(|pair| pair.get(1));
            let decoded = match value {
                None => Err("no field m".to_owned()),
                Some(bytes) => serde_json::from_slice::<LogEntry>(bytes).map_err(|e| e.to_string()),
            };
            match decoded {
                Ok(entry) => chunk.messages.push(StoredMessage { seq, entry }),
                Err(reason) => chunk.unreadable.push(Unreadable { seq, raw: fields.concat(), reason }),
            }
        }
        Ok(chunk)
    }

    /// Initialises a room from the archive (counter = `archived_seq`, log = `recent`,
    /// the archive's `epoch`), unless Redis already holds it. Returns whether this call
    /// initialised it, and the counter afterwards.
    pub async fn hydrate(
        &self,
        room: &RoomName,
        archived_seq: u64,
        epoch: i64,
        recent: &[StoredMessage],
    ) -> Result<(bool, u64)> {
        let mut conn = self.conn().await?;
        let mut invocation = HYDRATE.prepare_invoke();
        invocation
            .key(self.keys.seq(room))
            .key(self.keys.log(room))
            .key(self.keys.persisted(room))
            .key(self.keys.epoch(room))
            .key(self.keys.checked_on(room))
            .arg(archived_seq)
            .arg(CLIENT_ID_TTL_SECS)
            .arg(self.keys.channel(room))
            .arg(epoch)
            .arg(&*conn.run_id());
        add_restored(&mut invocation, recent)?;
        let (initialised, seq): (i64, i64) = invocation.invoke_async(&mut conn).await?;
        Ok((initialised == 1, seq.max(0) as u64))
    }

    /// Brings a room Redis holds back in line with the archive, on a Redis process it was
    /// not checked on: restores `above` (archived messages above the counter Redis held,
    /// `redis_seq`), moves the counter to at least `archived_seq` so no archived seq is
    /// handed out again, the watermark to at least `archived_watermark` and the epoch to
    /// `epoch`, marks the room checked on this process, and tells sockets that anything
    /// they saw above `redis_seq` is gone. Returns the counter afterwards, or `None` if
    /// Redis lost the room meanwhile (hydrate it instead).
    pub async fn recheck(
        &self,
        room: &RoomName,
        redis_seq: u64,
        archived_seq: u64,
        archived_watermark: u64,
        epoch: i64,
        above: &[StoredMessage],
    ) -> Result<Option<u64>> {
        let mut conn = self.conn().await?;
        let mut invocation = RECHECK.prepare_invoke();
        invocation
            .key(self.keys.seq(room))
            .key(self.keys.log(room))
            .key(self.keys.persisted(room))
            .key(self.keys.epoch(room))
            .key(self.keys.checked_on(room))
            .arg(&*conn.run_id())
            .arg(redis_seq)
            .arg(archived_seq)
            .arg(archived_watermark)
            .arg(epoch)
            .arg(CLIENT_ID_TTL_SECS)
            .arg(self.keys.channel(room));
        add_restored(&mut invocation, above)?;
        let seq: i64 = invocation.invoke_async(&mut conn).await?;
        Ok((seq >= 0).then_some(seq as u64))
    }

    /// Moves the Redis watermark up to `persisted` (never down) and trims the log to its
    /// window without touching unpersisted entries. `None` when the room is not in Redis.
    pub async fn mark_persisted(&self, room: &RoomName, persisted: u64) -> Result<Option<(u64, u64)>> {
        let (seq, watermark): (i64, i64) = MARK_PERSISTED
            .key(self.keys.seq(room))
            .key(self.keys.log(room))
            .key(self.keys.persisted(room))
            .arg(persisted)
            .arg(self.window)
            .invoke_async(&mut self.conn().await?)
            .await?;
        Ok((seq >= 0).then_some((seq as u64, watermark as u64)))
    }

    /// Claims the unpersisted range not yet queued by another flush, for `claim_ms`. A
    /// claimed range whose watermark has not moved for `claim_ms` is claimed again
    /// (its chunk tasks were lost or gave up).
    pub async fn claim_flush(&self, room: &RoomName, claim_ms: u64) -> Result<Option<FlushClaim>> {
        let (from, to, reclaimed): (i64, i64, i64) = CLAIM_FLUSH
            .key(self.keys.seq(room))
            .key(self.keys.persisted(room))
            .key(self.keys.claim(room))
            .arg(claim_ms)
            .arg(huddle_domain::now_ms())
            .invoke_async(&mut self.conn().await?)
            .await?;
        Ok((from > 0).then_some(FlushClaim { from: from as u64, to: to as u64, reclaimed: reclaimed == 1 }))
    }

    /// Drops a room from the dirty index if everything is persisted. Race-free against a
    /// concurrent append: remove first, then re-add if the room turned out to be dirty.
    pub async fn clear_dirty_if_clean(&self, room: &RoomName) -> Result<()> {
        let state = self.state(room).await?;
        if !state.in_redis || state.last_seq > state.persisted_seq {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let _: i64 = conn.zrem(self.keys.dirty(), room.as_str()).await?;
        let state = self.state(room).await?;
        if state.in_redis && state.last_seq > state.persisted_seq {
            self.mark_dirty_with(&mut conn, room).await?;
        }
        Ok(())
    }

    /// Where the room stands: counter, watermark, dirty mark.
    pub async fn state(&self, room: &RoomName) -> Result<RoomState> {
        let mut conn = self.conn().await?;
        let (seq, persisted, dirty_since, epoch): (Option<u64>, Option<u64>, Option<f64>, Option<i64>) = redis::pipe()
            .get(self.keys.seq(room))
            .get(self.keys.persisted(room))
            .zscore(self.keys.dirty(), room.as_str())
            .get(self.keys.epoch(room))
            .query_async(&mut conn)
            .await?;
        Ok(RoomState {
            in_redis: seq.is_some(),
            last_seq: seq.unwrap_or(0),
            persisted_seq: persisted.unwrap_or(0),
            dirty_since_ms: dirty_since.map(|s| s as i64),
            epoch: epoch.unwrap_or(0),
        })
    }

    /// Up to `limit` dirty rooms, longest-dirty first, with when they became dirty.
    pub async fn dirty_rooms(&self, limit: usize) -> Result<Vec<(RoomName, i64)>> {
        let raw: Vec<(String, f64)> =
            self.conn().await?.zrange_withscores(self.keys.dirty(), 0, limit.saturating_sub(1) as isize).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(name, score)| RoomName::parse(&name).ok().map(|room| (room, score as i64)))
            .collect())
    }

    /// Records a socket's presence in a room (`Join`/`Refresh`, valid for `ttl_ms`) or
    /// removes it (`Leave`); returns the room's presence afterwards.
    pub async fn presence(
        &self,
        room: &RoomName,
        change: PresenceChange,
        socket: &Presence,
        ttl_ms: u64,
    ) -> Result<RoomPresence> {
        let now = huddle_domain::now_ms();
        let reply: Vec<String> = PRESENCE
            .key(self.keys.online(room))
            .arg(now)
            .arg(match change {
                PresenceChange::Join => "join",
                PresenceChange::Refresh => "refresh",
                PresenceChange::Leave => "leave",
            })
            .arg(socket.member())
            .arg(now + ttl_ms as i64)
            .arg(format!("|{}|", socket.user_id))
            .invoke_async(&mut self.conn().await?)
            .await?;
        let mut reply = reply.into_iter();
        let user_sockets = reply.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut sockets = 0;
        let mut online: Vec<(i64, String)> = Vec::new();
        for member in reply {
            sockets += 1;
            let mut parts = member.splitn(3, '|');
            let (Some(_), Some(id), Some(name)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let Ok(id) = id.parse() else { continue };
            if !online.iter().any(|(known, _)| *known == id) {
                online.push((id, name.to_owned()));
            }
        }
        online.sort();
        Ok(RoomPresence { user_sockets, sockets, online })
    }

    /// Takes the lock `key` for `ttl_ms` if nobody holds it.
    pub async fn try_lock(&self, key: String, ttl_ms: u64) -> Result<Option<LockGuard>> {
        let token = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
        );
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(taken.map(|_| LockGuard { key, token }))
    }

    /// Releases a lock if it is still ours.
    pub async fn unlock(&self, guard: LockGuard) -> Result<()> {
        let _: i64 = RELEASE_LOCK.key(guard.key).arg(guard.token).invoke_async(&mut self.conn().await?).await?;
        Ok(())
    }

    /// Publishes a payload on the room's channel that is not stored (typing notices).
    pub async fn publish_ephemeral(&self, room: &RoomName, payload: &str) -> Result<()> {
        let _: i64 = self.conn().await?.publish(self.keys.channel(room), payload).await?;
        Ok(())
    }

    /// Marks a session token id as revoked until `ttl_secs` from now.
    pub async fn revoke_token(&self, token_id: &str, ttl_secs: u64) -> Result<()> {
        let _: () = self.conn().await?.set_ex(self.keys.revoked_token(token_id), 1, ttl_secs.max(1)).await?;
        Ok(())
    }

    /// Whether a session token id was revoked.
    pub async fn is_token_revoked(&self, token_id: &str) -> Result<bool> {
        Ok(self.conn().await?.exists(self.keys.revoked_token(token_id)).await?)
    }
}

/// Adds (seq, entry JSON, client_id marker or "") per archived message to a script call,
/// so a resend of a restored message stays a duplicate.
fn add_restored(invocation: &mut redis::ScriptInvocation<'_>, messages: &[StoredMessage]) -> Result<()> {
    for message in messages {
        let json = serde_json::to_string(&message.entry)
            .map_err(|e| RoomLogError::CorruptEntry { id: message.seq.to_string(), reason: e.to_string() })?;
        let marker = if message.entry.client_id.is_empty() {
            String::new()
        } else {
            client_id_marker(message.entry.user_id, &message.entry.client_id)
        };
        invocation.arg(message.seq).arg(json).arg(marker);
    }
    Ok(())
}

/// The seq of a stream entry id (`<seq>-0`).
fn seq_of_id(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// The part of a client_id marker key after the room's prefix.
fn client_id_marker(user_id: i64, client_id: &str) -> String {
    format!("cid:{user_id}:{client_id}")
}

fn parse_entries(raw: Vec<(String, Vec<String>)>) -> Result<Vec<StoredMessage>> {
    raw.into_iter()
        .map(|(id, fields)| {
            let corrupt = |reason: &str| RoomLogError::CorruptEntry { id: id.clone(), reason: reason.to_owned() };
            let seq = seq_of_id(&id).ok_or_else(|| corrupt("id is not <seq>-0"))?;
            let json = fields
                .chunks(2)
                .find(|pair| pair[0] == "m")
                .and_then(|pair| pair.get(1))
                .ok_or_else(|| corrupt("no field m"))?;
            let entry = serde_json::from_str(json).map_err(|e| corrupt(&e.to_string()))?;
            Ok(StoredMessage { seq, entry })
        })
        .collect()
}

/// Prefix of the notice the hydrate and recheck scripts publish when sockets may have
/// seen seqs the room no longer holds.
pub const RESET_PREFIX: &str = "R ";

/// Parses a pub/sub payload (`"<seq> <entry JSON>"`) published by the append script.
pub fn parse_published(payload: &str) -> Option<StoredMessage> {
    let (seq, json) = payload.split_once(' ')?;
    Some(StoredMessage { seq: seq.parse().ok()?, entry: serde_json::from_str(json).ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_keys_share_a_hash_tag() {
        let keys = Keyspace::new("t1:");
        let room = RoomName::parse("lobby").unwrap();
        for key in [keys.seq(&room), keys.log(&room), keys.persisted(&room), keys.client_id(&room, 7, "c1")] {
            assert!(key.starts_with("t1:room:{lobby}:"), "{key}");
        }
        assert_eq!(keys.room_of_channel(&keys.channel(&room)), Some(room));
        assert_eq!(keys.room_of_channel("other:room:{lobby}"), None);
    }

    #[test]
    fn published_payload_parses() {
        let message = parse_published(r#"42 {"u":1,"n":"ada","b":"a b","t":5}"#).unwrap();
        assert_eq!(message.seq, 42);
        assert_eq!(message.entry.body, "a b");
        assert!(parse_published("nonsense").is_none());
    }
}
