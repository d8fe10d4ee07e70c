//! The PostgreSQL archive: where every message ends up, forever.
//!
//! * Versioned schema migrations ([`Archive::migrate`]), applied by every service at
//!   start under an advisory lock, so replicas starting together do not race.
//! * [`Archive::store_chunk`]: one idempotent write of a seq range (a binary `COPY` of
//!   the rows not yet stored) plus the watermark update, in one transaction. The room
//!   is locked and the chunk's senders are checked once per chunk (`messages` has no
//!   foreign keys since V7: they checked every row); a row whose sender has no account,
//!   and a row PostgreSQL refuses (isolated by splitting the batch), go to
//!   `quarantined_messages` with their reason, so no single message can stop a room.
//! * [`Archive::reopen_room`], [`Archive::recheck_room`] and [`Archive::history_before`]:
//!   what the hydrator reads.
//! * Accounts and the room directory ([`accounts`]).
//!
//! Every SQL statement of Huddle lives in this crate, behind typed functions; services
//! never see a connection.
//!
//! It knows no Redis, no RabbitMQ and no HTTP.

pub mod accounts;
mod baseline;

pub use accounts::ArchivedRoom;
pub use baseline::CopyBaseline;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use huddle_config::PostgresSettings;
use huddle_domain::{Post, RoomName, StoredMessage};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Arbitrary constant naming the advisory lock that serialises migrations.
const MIGRATION_LOCK: i64 = 0x4875_6464_6c65; // "Huddle"

/// Errors of the archive. Their text carries the cause (PostgreSQL's own message and
/// SQLSTATE), never only "db error".
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A statement failed in PostgreSQL, or the connection to it did.
    #[error("postgres: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No pooled connection could be had (waiting timed out, or opening one failed).
    #[error("postgres pool: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The database URL does not parse, or the pool could not be built from the settings.
    #[error("postgres url: {0}")]
    Config(String),
    /// Applying the schema migrations failed.
    #[error("migration: {0}")]
    Migration(#[from] refinery::Error),
}

/// Result alias for this crate.
pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

/// What the hydrator needs to re-open a room in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomTail {
    /// Highest seq in the archive (0 for a room without messages).
    pub last_seq: u64,
    /// The newest messages, oldest first.
    pub recent: Vec<StoredMessage>,
    /// Seqs between the old watermark and `last_seq` that the archive never received
    /// (acked messages lost with Redis). The watermark now skips them.
    pub abandoned: u64,
    /// The room's new epoch: chunks read under an older one are refused.
    pub epoch: i64,
}

/// What the hydrator needs to re-check a room Redis holds against the archive (after
/// Redis restarted, possibly from an older state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecheck {
    /// Highest seq in the archive (stored or quarantined).
    pub last_seq: u64,
    /// The archive's watermark afterwards.
    pub watermark: u64,
    /// Stored messages above the seq Redis holds, oldest first: Redis lost them.
    pub above: Vec<StoredMessage>,
    /// Seqs above the seq Redis holds that the archive never received (acked messages
    /// Redis lost before they were persisted), now recorded in quarantine as lost.
    pub lost: u64,
    /// The room's new epoch: chunks read from the Redis process before are refused.
    pub epoch: i64,
}

/// The most archived messages a re-check restores to Redis at once.
pub const RECHECK_RESTORE_LIMIT: usize = 100_000;

/// Reason recorded for a seq that Redis handed out and lost before it was persisted.
pub const LOST_IN_ROLLBACK: &str = "lost: Redis went back to an older state before this message was persisted";

/// A log entry the persister could not even decode; it is quarantined as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableEntry {
    /// The entry's seq in the room.
    pub seq: u64,
    /// The entry's bytes as Redis held them.
    pub raw: Vec<u8>,
    /// Why it could not be decoded; recorded in the quarantine reason.
    pub reason: String,
}

/// One entry put into quarantine by [`Archive::store_chunk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The seq of the quarantined entry.
    pub seq: u64,
    /// SQLSTATE of PostgreSQL's refusal (`""` for an unreadable entry).
    pub sqlstate: String,
    /// Why it was quarantined, as recorded in `quarantined_messages`.
    pub reason: String,
}

/// Outcome of [`Archive::store_chunk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Written (or already there); the watermark is now this. `quarantined` lists the
    /// entries newly put into quarantine by this call.
    Stored {
        /// Top of the gap-free prefix now stored or quarantined: every seq up to it is archived.
        watermark: u64,
        /// Entries newly quarantined by this call (empty if everything went in).
        quarantined: Vec<Quarantined>,
    },
    /// The chunk was read before the room was re-opened from the archive: not written.
    StaleEpoch,
}

/// The archive, over a connection pool.
#[derive(Clone)]
pub struct Archive {
    pool: Pool,
    /// Reports the pool in `huddle_pool_connections{pool="postgres"}` while it lives.
    _pool_report: huddle_telemetry::metrics::PoolReport,
}

impl Archive {
    /// Builds the pool (connections open lazily).
    pub fn connect(settings: &PostgresSettings) -> Result<Self> {
        let mut config: tokio_postgres::Config =
            settings.database_url.parse().map_err(|e: tokio_postgres::Error| ArchiveError::Config(e.to_string()))?;
        let timeout = std::time::Duration::from_millis(settings.database_timeout_ms.max(1));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        // Migrations run under an advisory lock with their own session setting (below).
        config.options(format!("-c statement_timeout={}", settings.database_timeout_ms));
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match config.get_ssl_mode() {
            // `sslmode=require`: TLS, with the server's certificate checked (as libpq's
            // verify-full would); any other mode is plaintext.
            tokio_postgres::config::SslMode::Require => Manager::from_config(config, tls_connector()?, manager_config),
            _ => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(settings.database_pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| ArchiveError::Config(e.to_string()))?;
        let observed = pool.clone();
        let _pool_report = huddle_telemetry::metrics::observe_pool("postgres", move || {
            let status = observed.status();
            huddle_telemetry::metrics::PoolUse::of_deadpool(status.size, status.available, status.max_size)
        });
        Ok(Self { pool, _pool_report })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<()> {
        let mut client = self.pool.get().await?;
        // Another replica may be migrating: wait for its lock as long as it takes.
        client.batch_execute("SET statement_timeout = 0").await?;
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
        let report = embedded::migrations::runner().run_async(&mut **client).await;
        let backfilled = match report {
            Ok(_) => accounts::backfill_lookalike_keys(&client).await,
            Err(_) => Ok(0),
        };
        client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
        client.batch_execute("RESET statement_timeout").await?;
        let report = report?;
        for migration in report.applied_migrations() {
            tracing::info!(version = migration.version(), name = migration.name(), "applied migration");
        }
        let backfilled = backfilled?;
        if backfilled > 0 {
            tracing::info!(accounts = backfilled, "look-alike keys computed for existing accounts");
        }
        Ok(())
    }

    /// Round-trips a trivial query (readiness).
    pub async fn ping(&self) -> Result<()> {
        self.pool.get().await?.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    /// The room's id, creating the room on first use.
    pub async fn ensure_room(&self, room: &RoomName) -> Result<i64> {
        ensure_room_on(&self.pool.get().await?, room).await
    }

    /// Writes `messages` of `room`, read from Redis under `epoch` (any order, any overlap
    /// with what is stored), quarantines `unreadable` entries, rows whose sender has no
    /// account (SQLSTATE 23503, the chunk's distinct senders looked up once) and every
    /// row PostgreSQL refuses, and moves the watermark over the gap-free prefix now present (stored or
    /// quarantined). Writers of one room are serialised by a row lock, so each sees the
    /// others' rows.
    pub async fn store_chunk(
        &self,
        room: &RoomName,
        epoch: i64,
        messages: &[StoredMessage],
        unreadable: &[UnreadableEntry],
    ) -> Result<ChunkOutcome> {
        let mut client = self.pool.get().await?;
        // Most chunks go in whole: one transaction, one binary COPY of the rows the archive
        // does not hold yet.
        if let Some(outcome) = store_chunk_copy(&mut client, room, epoch, messages, unreadable).await? {
            return Ok(outcome);
        }
        // One that PostgreSQL refuses (or that holds a value the COPY cannot carry) is
        // written again in a new transaction, part by part.
        store_chunk_careful(&mut client, room, epoch, messages, unreadable).await
    }

    /// Quarantined entries of a room, by seq: (seq, raw bytes, reason).
    pub async fn quarantined(&self, room: &RoomName) -> Result<Vec<(u64, Vec<u8>, String)>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT q.seq, q.raw, q.reason FROM quarantined_messages q JOIN rooms r ON r.id = q.room_id
                 WHERE r.name = $1 ORDER BY q.seq",
                &[&room.as_str()],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get::<_, i64>(0) as u64, row.get(1), row.get(2))).collect())
    }

    /// Rooms with a persisted message sent within the last `within`, most recent first.
    pub async fn active_rooms(&self, within: std::time::Duration) -> Result<Vec<RoomName>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT name FROM rooms WHERE last_message_at > now() - make_interval(secs => $1)
                 ORDER BY last_message_at DESC",
                &[&within.as_secs_f64()],
            )
            .await?;
        Ok(rows.iter().filter_map(|row| RoomName::parse(row.get(0)).ok()).collect())
    }

    /// The room's watermark as recorded in the archive (0 for an unknown room).
    pub async fn watermark(&self, room: &RoomName) -> Result<u64> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt("SELECT persisted_seq FROM rooms WHERE name = $1", &[&room.as_str()])
            .await?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    /// Prepares a room for a fresh Redis counter: creates it if new, returns its highest
    /// seq and newest `window` messages, and moves the watermark to the highest seq,
    /// because seqs the archive lacks below it can no longer arrive (Redis lost them).
    pub async fn reopen_room(&self, room: &RoomName, window: usize) -> Result<RoomTail> {
        let room_id = self.ensure_room(room).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (watermark, _) = lock_room(&tx, room_id).await?;
        let row = tx
            .query_one(
                "SELECT coalesce(max(seq), 0), count(*) FILTER (WHERE seq > $2) FROM (
                     SELECT seq FROM messages WHERE room_id = $1
                     UNION
                     SELECT seq FROM quarantined_messages WHERE room_id = $1
                 ) present",
                &[&room_id, &watermark],
            )
            .await?;
        let (last_seq, present_above): (i64, i64) = (row.get(0), row.get(1));
        let abandoned = (last_seq - watermark - present_above).max(0) as u64;
        let epoch: i64 = tx
            .query_one(
                "UPDATE rooms SET persisted_seq = GREATEST(persisted_seq, $2), epoch = epoch + 1 WHERE id = $1 RETURNING epoch",
                &[&room_id, &last_seq],
            )
            .await?
            .get(0);
        // Read in the same transaction: holding this connection while waiting for a
        // second one from the pool deadlocks once every connection is held that way.
        let recent = page(&tx, room_id, last_seq + 1, window).await?;
        tx.commit().await?;
        if abandoned > 0 {
            tracing::warn!(%room, abandoned, "archive has seq gaps that Redis can no longer fill");
        }
        Ok(RoomTail { last_seq: last_seq as u64, recent, abandoned, epoch })
    }

    /// Re-checks a room that Redis holds, at `redis_seq`, against the archive, for a Redis
    /// process the room was not checked on before (it may have restarted from an older
    /// state: a snapshot, an AOF that lost its last second, a lagging replica).
    /// Returns the archived messages above `redis_seq` (Redis must hold them again before
    /// it hands out another seq), records seqs above `redis_seq` that never arrived as
    /// lost, so the watermark can pass them, and moves the epoch on, so chunks read from
    /// the earlier Redis process are refused.
    pub async fn recheck_room(&self, room: &RoomName, redis_seq: u64) -> Result<RoomRecheck> {
        let room_id = self.ensure_room(room).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (watermark, _) = lock_room(&tx, room_id).await?;
        let redis_seq = redis_seq.min(i64::MAX as u64) as i64;
        let last_seq: i64 = tx
            .query_one(
                "SELECT coalesce(max(seq), 0) FROM (
                     SELECT seq FROM messages WHERE room_id = $1
                     UNION ALL
                     SELECT seq FROM quarantined_messages WHERE room_id = $1
                 ) present",
                &[&room_id],
            )
            .await?
            .get(0);
        let lost = tx
            .execute(
                "INSERT INTO quarantined_messages (room_id, seq, raw, reason)
                 SELECT $1, s, ''::bytea, $4 FROM generate_series($2::bigint + 1, $3::bigint) AS s
                 WHERE NOT EXISTS (SELECT 1 FROM messages WHERE room_id = $1 AND seq = s)
                 ON CONFLICT (room_id, seq) DO NOTHING",
                &[&room_id, &redis_seq, &last_seq, &LOST_IN_ROLLBACK],
            )
            .await?;
        let new_watermark = gap_free_top(&tx, room_id, watermark).await?;
        let epoch: i64 = tx
            .query_one(
                "UPDATE rooms SET persisted_seq = $2, epoch = epoch + 1 WHERE id = $1 RETURNING epoch",
                &[&room_id, &new_watermark],
            )
            .await?
            .get(0);
        let rows = tx
            .query(
                "SELECT seq, user_id, user_name, body, client_id,
                        round(extract(epoch FROM sent_at) * 1000)::bigint
                 FROM messages WHERE room_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&room_id, &redis_seq, &(RECHECK_RESTORE_LIMIT as i64)],
            )
            .await?;
        tx.commit().await?;
        let above: Vec<StoredMessage> = rows.iter().map(message_of_row).collect();
        if above.len() == RECHECK_RESTORE_LIMIT {
            tracing::warn!(%room, restored = above.len(), "Redis is far behind the archive; restoring only the oldest part of what it lost");
        }
        Ok(RoomRecheck { last_seq: last_seq as u64, watermark: new_watermark as u64, above, lost, epoch })
    }

    /// Up to `limit` messages with seq < `before` (0: no bound), the newest ones, oldest first.
    pub async fn history_before(&self, room: &RoomName, before: u64, limit: usize) -> Result<Vec<StoredMessage>> {
        let row = self.pool.get().await?.query_opt("SELECT id FROM rooms WHERE name = $1", &[&room.as_str()]).await?;
        let before = if before == 0 { i64::MAX } else { before.min(i64::MAX as u64) as i64 };
        match row {
            Some(row) => page(&self.pool.get().await?, row.get(0), before, limit).await,
            None => Ok(Vec::new()),
        }
    }
}

/// TLS for `sslmode=require`: the server's certificate must be valid for the URL's host
/// and signed by a CA of the system's trust store, or of the bundle `SSL_CERT_FILE` names.
fn tls_connector() -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let found = rustls_native_certs::load_native_certs();
    if let Some(error) = found.errors.into_iter().next() {
        return Err(ArchiveError::Config(format!("reading the trusted CA certificates: {error}")));
    }
    let mut roots = rustls::RootCertStore::empty();
    let (_, unparsable) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(ArchiveError::Config(format!(
            "sslmode=require, but no trusted CA certificate was found ({unparsable} could not be parsed): set SSL_CERT_FILE"
        )));
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Up to `limit` messages of a room with seq < `before`, the newest ones, oldest first.
async fn page(
    client: &impl deadpool_postgres::GenericClient,
    room_id: i64,
    before: i64,
    limit: usize,
) -> Result<Vec<StoredMessage>> {
    let rows = client
        .query(
            "SELECT seq, user_id, user_name, body, client_id,
                    round(extract(epoch FROM sent_at) * 1000)::bigint
             FROM messages WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
            &[&room_id, &before, &(limit as i64)],
        )
        .await?;
    let mut messages: Vec<StoredMessage> = rows.iter().map(message_of_row).collect();
    messages.reverse();
    Ok(messages)
}

/// The room's id, creating the room on first use.
async fn ensure_room_on(client: &impl deadpool_postgres::GenericClient, room: &RoomName) -> Result<i64> {
    let row = client
        .query_one(
            "WITH created AS (INSERT INTO rooms (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id)
             SELECT id FROM created UNION SELECT id FROM rooms WHERE name = $1 LIMIT 1",
            &[&room.as_str()],
        )
        .await?;
    Ok(row.get(0))
}

/// Locks the room for a chunk (creating it on first use) and checks the chunk's epoch:
/// the room's id and watermark, or `None` for a stale chunk.
async fn lock_for_chunk(
    tx: &deadpool_postgres::Transaction<'_>,
    room: &RoomName,
    epoch: i64,
) -> Result<Option<(i64, i64)>> {
    // The room almost always exists: lock it by name, and create it only if not.
    let (room_id, watermark, current_epoch) = match lock_room_by_name(tx, room).await? {
        Some(locked) => locked,
        None => {
            let room_id = ensure_room_on(tx, room).await?;
            let (watermark, epoch) = lock_room(tx, room_id).await?;
            (room_id, watermark, epoch)
        }
    };
    Ok((epoch == current_epoch).then_some((room_id, watermark)))
}

/// Quarantines the chunk's unreadable entries; the ones newly quarantined.
async fn quarantine_unreadable(
    tx: &deadpool_postgres::Transaction<'_>,
    room_id: i64,
    unreadable: &[UnreadableEntry],
) -> Result<Vec<Quarantined>> {
    let mut quarantined = Vec::new();
    for entry in unreadable {
        let reason = format!("unreadable log entry: {}", entry.reason);
        if quarantine(tx, room_id, entry.seq, &entry.raw, &reason, "").await? {
            quarantined.push(Quarantined { seq: entry.seq, sqlstate: String::new(), reason });
        }
    }
    Ok(quarantined)
}

/// Moves the room's watermark over the gap-free run above it and commits; every seq of
/// the chunk is present (stored or quarantined) by now.
async fn finish_chunk(
    tx: deadpool_postgres::Transaction<'_>,
    room_id: i64,
    watermark: i64,
    chunk_seqs: impl Iterator<Item = u64>,
    newest_stored: Option<i64>,
    quarantined: Vec<Quarantined>,
) -> Result<ChunkOutcome> {
    // The chunk's own seqs right above the watermark need no look-up: the run is searched
    // from the top of them.
    let start = covered_top(watermark, chunk_seqs);
    let new_watermark = gap_free_top(&tx, room_id, start).await?;
    let update = tx
        .prepare_cached(
            "UPDATE rooms SET persisted_seq = $2,
                    last_message_at = GREATEST(last_message_at, to_timestamp($3::bigint / 1000.0))
             WHERE id = $1",
        )
        .await?;
    tx.execute(&update, &[&room_id, &new_watermark, &newest_stored]).await?;
    tx.commit().await?;
    Ok(ChunkOutcome::Stored { watermark: new_watermark as u64, quarantined })
}

/// The top of the run of consecutive `seqs` (any order, repeats allowed) that starts right
/// above `watermark`; `watermark` if the seqs do not continue it.
fn covered_top(watermark: i64, seqs: impl Iterator<Item = u64>) -> i64 {
    let mut above: Vec<u64> = seqs.filter(|&seq| seq > watermark.max(0) as u64).collect();
    above.sort_unstable();
    above.dedup();
    let mut top = watermark;
    for seq in above {
        if seq != top as u64 + 1 || seq > i64::MAX as u64 {
            break;
        }
        top = seq as i64;
    }
    top
}

/// The fast write of a chunk: one transaction, one binary COPY. `None` when PostgreSQL
/// refused a row or a value cannot go through the COPY (nothing was written).
async fn store_chunk_copy(
    client: &mut deadpool_postgres::Client,
    room: &RoomName,
    epoch: i64,
    messages: &[StoredMessage],
    unreadable: &[UnreadableEntry],
) -> Result<Option<ChunkOutcome>> {
    if messages.iter().any(|m| !COPYABLE_SENT_AT_MS.contains(&m.post.sent_at_ms) || m.seq > i64::MAX as u64) {
        return Ok(None);
    }
    let tx = client.transaction().await?;
    let Some((room_id, watermark)) = lock_for_chunk(&tx, room, epoch).await? else {
        return Ok(Some(ChunkOutcome::StaleEpoch));
    };
    let mut quarantined = quarantine_unreadable(&tx, room_id, unreadable).await?;
    // What the archive already holds of the range is not written again (a redelivered
    // chunk, or a seq handed out twice: reported below); of the rest, the rows whose
    // sender has no account are quarantined, the others copied.
    let stored = stored_in_range(&tx, room_id, messages).await?;
    let present: std::collections::HashSet<u64> = stored.iter().map(|m| m.seq).collect();
    let new: Vec<&StoredMessage> = messages.iter().filter(|m| !present.contains(&m.seq)).collect();
    let unknown = unknown_senders(&tx, sender_ids(&new)).await?;
    let (refused, copied): (Vec<&StoredMessage>, Vec<&StoredMessage>) =
        new.iter().partition(|m| unknown.contains(&m.post.user_id));
    for message in refused {
        quarantine_unknown_sender(&tx, room_id, message, &mut quarantined).await?;
    }
    match copy_messages(&tx, room_id, &copied).await {
        Ok(()) => {}
        Err(error) if is_row_refusal(&error) => {
            tx.rollback().await?;
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    }
    for (message, reason) in reused(messages, &stored) {
        let raw = row_json(&message);
        if quarantine(&tx, room_id, message.seq, &raw, &reason, "").await? {
            quarantined.push(Quarantined { seq: message.seq, sqlstate: String::new(), reason });
        }
    }
    let newest_stored = messages.iter().filter(|m| !unknown.contains(&m.post.user_id)).map(|m| m.post.sent_at_ms).max();
    let seqs = messages.iter().map(|m| m.seq).chain(unreadable.iter().map(|e| e.seq));
    finish_chunk(tx, room_id, watermark, seqs, newest_stored, quarantined).await.map(Some)
}

/// The careful write of a chunk: one INSERT per part, each under a savepoint; a part
/// PostgreSQL refuses is split in halves until every refused row stands alone and is
/// quarantined.
async fn store_chunk_careful(
    client: &mut deadpool_postgres::Client,
    room: &RoomName,
    epoch: i64,
    messages: &[StoredMessage],
    unreadable: &[UnreadableEntry],
) -> Result<ChunkOutcome> {
    let mut tx = client.transaction().await?;
    let Some((room_id, watermark)) = lock_for_chunk(&tx, room, epoch).await? else {
        return Ok(ChunkOutcome::StaleEpoch);
    };
    let mut quarantined = quarantine_unreadable(&tx, room_id, unreadable).await?;
    let writable = without_unknown_senders(&tx, room_id, messages, &mut quarantined).await?;
    let mut pending: Vec<&[StoredMessage]> = vec![&writable];
    let mut newest_stored: Option<i64> = None;
    while let Some(batch) = pending.pop() {
        if batch.is_empty() {
            continue;
        }
        let savepoint = tx.savepoint("chunk_part").await?;
        match insert_messages(&savepoint, room_id, batch).await {
            Ok(inserted) => {
                savepoint.commit().await?;
                if inserted < batch.len() {
                    for (message, reason) in reused_seqs(&tx, room_id, batch).await? {
                        let raw = row_json(&message);
                        if quarantine(&tx, room_id, message.seq, &raw, &reason, "").await? {
                            quarantined.push(Quarantined { seq: message.seq, sqlstate: String::new(), reason });
                        }
                    }
                }
                let newest = batch.iter().map(|m| m.post.sent_at_ms).max();
                newest_stored = newest_stored.max(newest);
            }
            Err(error) if is_row_refusal(&error) => {
                savepoint.rollback().await?;
                if let [message] = batch {
                    let sqlstate = error.code().map(|c| c.code().to_owned()).unwrap_or_default();
                    let reason = describe(&error);
                    let raw = row_json(message);
                    if quarantine(&tx, room_id, message.seq, &raw, &reason, &sqlstate).await? {
                        quarantined.push(Quarantined { seq: message.seq, sqlstate, reason });
                    }
                } else {
                    let (left, right) = batch.split_at(batch.len() / 2);
                    pending.push(right);
                    pending.push(left);
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    let seqs = messages.iter().map(|m| m.seq).chain(unreadable.iter().map(|e| e.seq));
    finish_chunk(tx, room_id, watermark, seqs, newest_stored, quarantined).await
}

/// The messages of a chunk to insert the careful way: those whose sender has no account
/// are quarantined (see [`unknown_senders`]) and left out, unless the archive already
/// holds their seq (the insert then does nothing, and a different message there is
/// reported as a reused seq, as for any other row).
async fn without_unknown_senders<'m>(
    tx: &deadpool_postgres::Transaction<'_>,
    room_id: i64,
    messages: &'m [StoredMessage],
    quarantined: &mut Vec<Quarantined>,
) -> Result<std::borrow::Cow<'m, [StoredMessage]>> {
    let unknown = unknown_senders(tx, sender_ids(messages)).await?;
    if unknown.is_empty() {
        return Ok(std::borrow::Cow::Borrowed(messages));
    }
    let seqs: Vec<i64> = messages.iter().filter(|m| unknown.contains(&m.post.user_id)).map(|m| m.seq as i64).collect();
    let present: std::collections::HashSet<u64> =
        page_of_seqs(tx, room_id, &seqs).await?.iter().map(|m| m.seq).collect();
    let mut writable = Vec::with_capacity(messages.len());
    for message in messages {
        if unknown.contains(&message.post.user_id) && !present.contains(&message.seq) {
            quarantine_unknown_sender(tx, room_id, message, quarantined).await?;
        } else {
            writable.push(message.clone());
        }
    }
    Ok(std::borrow::Cow::Owned(writable))
}

/// Earliest and latest `sent_at` the binary COPY is given (years 1 to 9999); a message
/// outside goes the careful path, where PostgreSQL itself says what it thinks of it.
const COPYABLE_SENT_AT_MS: std::ops::RangeInclusive<i64> = -62_135_596_800_000..=253_402_300_799_999;

/// The stored messages of the chunk's seq range (read under the room lock, so no other
/// writer adds to it before the commit).
async fn stored_in_range(
    tx: &deadpool_postgres::Transaction<'_>,
    room_id: i64,
    messages: &[StoredMessage],
) -> Result<Vec<StoredMessage>> {
    let (Some(low), Some(high)) = (messages.iter().map(|m| m.seq).min(), messages.iter().map(|m| m.seq).max()) else {
        return Ok(Vec::new());
    };
    let select = tx
        .prepare_cached(
            "SELECT seq, user_id, user_name, body, client_id, round(extract(epoch FROM sent_at) * 1000)::bigint
             FROM messages WHERE room_id = $1 AND seq BETWEEN $2 AND $3",
        )
        .await?;
    let rows = tx.query(&select, &[&room_id, &(low as i64), &(high as i64)]).await?;
    Ok(rows.iter().map(message_of_row).collect())
}

/// Writes `messages` with one binary `COPY` (nothing if there are none). No conflict can
/// occur: the caller left out the seqs already stored, and the room's row lock
/// serialises its writers; if one did, the unique violation sends the chunk down the
/// careful path. `messages` has no foreign keys (V7): the caller checked the senders.
async fn copy_messages(
    tx: &deadpool_postgres::Transaction<'_>,
    room_id: i64,
    messages: &[&StoredMessage],
) -> std::result::Result<(), tokio_postgres::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let copy = tx
        .prepare_cached(
            "COPY messages (room_id, seq, user_id, user_name, body, client_id, sent_at) FROM STDIN (FORMAT binary)",
        )
        .await?;
    let writer =
        tokio_postgres::binary_copy::BinaryCopyInWriter::new(tx.copy_in(&copy).await?, &baseline::MESSAGE_TYPES);
    let mut writer = std::pin::pin!(writer);
    for message in messages {
        let post = &message.post;
        writer
            .as_mut()
            .write(&[
                &room_id,
                &(message.seq as i64),
                &post.user_id,
                &post.user_name,
                &post.body,
                &post.client_id,
                &baseline::sent_at(message),
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// SQLSTATE `foreign_key_violation`: a row whose sender has no account, as the foreign
/// key `messages` had until V7 refused it; the chunk write detects it now.
pub const FOREIGN_KEY_VIOLATION: &str = "23503";

/// The distinct senders of `messages`, in order.
fn sender_ids<M: std::borrow::Borrow<StoredMessage>>(messages: &[M]) -> Vec<i64> {
    let mut ids: Vec<i64> = messages.iter().map(|m| m.borrow().post.user_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Which of the chunk's senders `ids` (see [`sender_ids`]) have no account, looked up
/// once for the chunk. The senders found are locked `FOR KEY SHARE` until the
/// transaction ends, as the foreign key's per-row check did: no account can be deleted
/// under a chunk that names it.
async fn unknown_senders(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: Vec<i64>,
) -> Result<std::collections::HashSet<i64>> {
    if ids.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let select = tx.prepare_cached("SELECT id FROM users WHERE id = ANY($1) FOR KEY SHARE").await?;
    let known: std::collections::HashSet<i64> = tx.query(&select, &[&ids]).await?.iter().map(|r| r.get(0)).collect();
    Ok(ids.into_iter().filter(|id| !known.contains(id)).collect())
}

/// Quarantines a message whose sender has no account, with SQLSTATE 23503 and a reason
/// naming the missing user id.
async fn quarantine_unknown_sender(
    tx: &deadpool_postgres::Transaction<'_>,
    room_id: i64,
    message: &StoredMessage,
    quarantined: &mut Vec<Quarantined>,
) -> Result<()> {
    let user_id = message.post.user_id;
    let reason = format!(
        "ERROR {FOREIGN_KEY_VIOLATION}: the sender does not exist (Key (user_id)=({user_id}) is not present in table \"users\".)"
    );
    let raw = row_json(message);
    if quarantine(tx, room_id, message.seq, &raw, &reason, FOREIGN_KEY_VIOLATION).await? {
        quarantined.push(Quarantined { seq: message.seq, sqlstate: FOREIGN_KEY_VIOLATION.to_owned(), reason });
    }
    Ok(())
}

/// One batched insert; a conflict with a stored copy is not an error (idempotent).
/// Returns how many rows were new.
async fn insert_messages(
    tx: &deadpool_postgres::Transaction<'_>,
    room_id: i64,
    messages: &[StoredMessage],
) -> std::result::Result<usize, tokio_postgres::Error> {
    let seqs: Vec<i64> = messages.iter().map(|m| m.seq as i64).collect();
    let user_ids: Vec<i64> = messages.iter().map(|m| m.post.user_id).collect();
    let names: Vec<&str> = messages.iter().map(|m| m.post.user_name.as_str()).collect();
    let bodies: Vec<&str> = messages.iter().map(|m| m.post.body.as_str()).collect();
    let client_ids: Vec<&str> = messages.iter().map(|m| m.post.client_id.as_str()).collect();
    let sent_at: Vec<i64> = messages.iter().map(|m| m.post.sent_at_ms).collect();
    tx.execute(
        "INSERT INTO messages (room_id, seq, user_id, user_name, body, client_id, sent_at)
         SELECT $1, s, u, n, b, c, to_timestamp(t / 1000.0)
         FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[])
              AS batch (s, u, n, b, c, t)
         ON CONFLICT (room_id, seq) DO NOTHING",
        &[&room_id, &seqs, &user_ids, &names, &bodies, &client_ids, &sent_at],
    )
    .await
    .map(|inserted| inserted as usize)
}

/// The messages of `batch` whose seq the archive already holds with *another* message:
/// Redis handed that seq out twice (it lost its state without the room being re-opened,
/// e.g. a rollback to an older snapshot). `ON CONFLICT DO NOTHING` would drop them
/// silently; the caller quarantines them instead. A redelivered chunk (same message)
/// is not reported.
async fn reused_seqs(
    tx: &deadpool_postgres::Transaction<'_>,
    room_id: i64,
    batch: &[StoredMessage],
) -> Result<Vec<(StoredMessage, String)>> {
    let seqs: Vec<i64> = batch.iter().map(|m| m.seq as i64).collect();
    let stored = page_of_seqs(tx, room_id, &seqs).await?;
    Ok(reused(batch, &stored))
}

/// The messages of `batch` whose seq `stored` holds with another message (see
/// [`reused_seqs`]), each with the quarantine reason.
fn reused(batch: &[StoredMessage], stored: &[StoredMessage]) -> Vec<(StoredMessage, String)> {
    if stored.is_empty() {
        return Vec::new();
    }
    batch
        .iter()
        .filter_map(|message| {
            let existing = stored.iter().find(|s| s.seq == message.seq)?;
            let same = existing.post.user_id == message.post.user_id
                && existing.post.body == message.post.body
                && existing.post.client_id == message.post.client_id
                && (existing.post.sent_at_ms - message.post.sent_at_ms).abs() <= 1;
            (!same).then(|| {
                let reason = format!(
                    "seq {} already holds another message (user {}, sent {} ms): Redis handed the seq out twice",
                    message.seq, existing.post.user_id, existing.post.sent_at_ms
                );
                (message.clone(), reason)
            })
        })
        .collect()
}

/// The stored messages of a room with these seqs.
async fn page_of_seqs(
    tx: &deadpool_postgres::Transaction<'_>,
    room_id: i64,
    seqs: &[i64],
) -> Result<Vec<StoredMessage>> {
    let rows = tx
        .query(
            "SELECT seq, user_id, user_name, body, client_id, round(extract(epoch FROM sent_at) * 1000)::bigint
             FROM messages WHERE room_id = $1 AND seq = ANY($2)",
            &[&room_id, &seqs],
        )
        .await?;
    Ok(rows.iter().map(message_of_row).collect())
}

fn message_of_row(row: &tokio_postgres::Row) -> StoredMessage {
    StoredMessage {
        seq: row.get::<_, i64>(0) as u64,
        post: Post {
            user_id: row.get(1),
            user_name: row.get(2),
            body: row.get(3),
            client_id: row.get(4),
            sent_at_ms: row.get(5),
        },
    }
}

/// A refused row as it is kept in quarantine: its values as JSON (full field names; an
/// unreadable log entry keeps the log's own bytes instead).
fn row_json(message: &StoredMessage) -> Vec<u8> {
    let post = &message.post;
    serde_json::json!({
        "seq": message.seq,
        "user_id": post.user_id,
        "user_name": post.user_name,
        "body": post.body,
        "sent_at_ms": post.sent_at_ms,
        "client_id": post.client_id,
    })
    .to_string()
    .into_bytes()
}

/// Whether PostgreSQL refused a row for what it holds (a data exception, class 22, or an
/// integrity constraint, class 23) rather than for a passing reason (connection, lock).
fn is_row_refusal(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| code.code().starts_with("22") || code.code().starts_with("23"))
}

/// Puts one entry into quarantine; false if it already was (a redelivered chunk).
async fn quarantine(
    tx: &deadpool_postgres::Transaction<'_>,
    room_id: i64,
    seq: u64,
    raw: &[u8],
    reason: &str,
    sqlstate: &str,
) -> Result<bool> {
    // The reason quotes PostgreSQL, which may quote the row: keep it storable.
    let reason = reason.replace('\0', "\\0");
    let inserted = tx
        .execute(
            "INSERT INTO quarantined_messages (room_id, seq, raw, reason, sqlstate) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (room_id, seq) DO NOTHING",
            &[&room_id, &(seq as i64), &raw, &reason, &sqlstate],
        )
        .await?;
    Ok(inserted == 1)
}

/// A PostgreSQL error with its cause: the server's message and SQLSTATE, or the
/// client-side chain (connection refused, closed, …).
fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn describe_pool(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(error) => describe(error),
        other => other.to_string(),
    }
}

/// The top of the gap-free run of present seqs (stored or quarantined) that starts right
/// above `watermark`: what the watermark may move to.
async fn gap_free_top(tx: &deadpool_postgres::Transaction<'_>, room_id: i64, watermark: i64) -> Result<i64> {
    // The first run of consecutive seqs above the watermark has seq - row_number equal
    // to the watermark. Quarantined seqs count as present: they will never arrive as
    // messages. (UNION, not UNION ALL: a seq handed out twice is in both tables, and
    // must count once.)
    let query = tx
        .prepare_cached(
            "SELECT max(seq) FROM (
                 SELECT seq, seq - row_number() OVER (ORDER BY seq) AS run FROM (
                     SELECT seq FROM messages WHERE room_id = $1 AND seq > $2
                     UNION
                     SELECT seq FROM quarantined_messages WHERE room_id = $1 AND seq > $2
                 ) present
             ) runs WHERE run = $2",
        )
        .await?;
    let top: Option<i64> = tx.query_one(&query, &[&room_id, &watermark]).await?.get(0);
    Ok(top.unwrap_or(watermark).max(watermark))
}

/// Locks the room's row, found by name, for the transaction (see [`lock_room`]) and
/// returns its id, watermark and epoch; `None` if the room does not exist.
async fn lock_room_by_name(
    tx: &deadpool_postgres::Transaction<'_>,
    room: &RoomName,
) -> Result<Option<(i64, i64, i64)>> {
    let lock =
        tx.prepare_cached("SELECT id, persisted_seq, epoch FROM rooms WHERE name = $1 FOR NO KEY UPDATE").await?;
    let row = tx.query_opt(&lock, &[&room.as_str()]).await?;
    Ok(row.map(|row| (row.get(0), row.get(1), row.get(2))))
}

/// Locks the room's row for the transaction (serialising the room's archive writers)
/// and returns its watermark and epoch.
async fn lock_room(tx: &deadpool_postgres::Transaction<'_>, room_id: i64) -> Result<(i64, i64)> {
    let row =
        tx.query_one("SELECT persisted_seq, epoch FROM rooms WHERE id = $1 FOR NO KEY UPDATE", &[&room_id]).await?;
    Ok((row.get(0), row.get(1)))
}

#[cfg(test)]
mod tests {
    use super::covered_top;

    #[test]
    fn the_covered_run_starts_right_above_the_watermark_and_stops_at_the_first_gap() {
        assert_eq!(covered_top(0, [1, 2, 3].into_iter()), 3);
        assert_eq!(covered_top(0, [3, 1, 2, 2].into_iter()), 3);
        assert_eq!(covered_top(10, [5, 11, 12, 14].into_iter()), 12);
        assert_eq!(covered_top(10, [12, 13].into_iter()), 10);
        assert_eq!(covered_top(10, [1, 10].into_iter()), 10);
        assert_eq!(covered_top(7, std::iter::empty()), 7);
    }
}
