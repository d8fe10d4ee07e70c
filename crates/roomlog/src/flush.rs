//! The persist path's bookkeeping in Redis: claiming ranges for chunk tasks
//! (`claim_flush.lua`), moving the watermark and trimming (`mark_persisted.lua`), the
//! dirty-room index, and where a room stands.

use std::sync::LazyLock;

use huddle_domain::RoomName;
use redis::Script;

use crate::{Result, RoomLog, RoomLogError};

static MARK_PERSISTED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/mark_persisted.lua")));
static CLEAR_DIRTY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/clear_dirty.lua")));
static CLAIM_FLUSH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/claim_flush.lua")));
static RELEASE_CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/release_claim.lua")));

/// A range a flush claimed for chunking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushClaim {
    /// First seq of the claimed range (just above the watermark or the earlier claim).
    pub from: u64,
    /// Last seq of the claimed range, inclusive: the room's counter when claimed.
    pub to: u64,
    /// The range includes seqs an earlier claim held without progress (now retried).
    pub reclaimed: bool,
}

/// How far PostgreSQL is behind Redis ([`RoomLog::unpersisted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PersistLag {
    /// Messages in Redis not yet in PostgreSQL, over the rooms asked about.
    pub messages: u64,
    /// Rooms with unpersisted messages, in all.
    pub dirty_rooms: u64,
}

/// The dirty rooms the sweep found.
#[derive(Debug)]
pub struct DirtyRooms {
    /// Rooms with unpersisted messages and when each became dirty (ms since the epoch),
    /// longest-dirty first.
    pub rooms: Vec<(RoomName, i64)>,
    /// On a cluster: one error per shard that did not answer, whose rooms are left out.
    pub unreachable: Vec<RoomLogError>,
}

/// A room's write-back state as Redis sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomState {
    /// Whether Redis holds the room's seq counter, i.e. the room is initialised there.
    pub in_redis: bool,
    /// The last seq handed out (0 when the room is not in Redis).
    pub last_seq: u64,
    /// Redis's watermark: every seq up to it is in PostgreSQL (0 when unset).
    pub persisted_seq: u64,
    /// When the room became dirty (epoch ms), if it is in the dirty index.
    pub dirty_since_ms: Option<i64>,
    /// Which archive re-open the Redis copy comes from (changes when Redis lost the room).
    pub epoch: i64,
}

impl RoomLog {
    /// Moves the Redis watermark up to `persisted` (never down) and trims the log to its
    /// window without touching unpersisted entries; a room still dirty after the move is
    /// re-scored in the dirty index with now (it waits for persistence since now), and one
    /// with nothing left unpersisted leaves the index. `None` when the room is not in Redis.
    pub async fn mark_persisted(&self, room: &RoomName, persisted: u64) -> Result<Option<(u64, u64)>> {
        let (seq, watermark): (i64, i64) = MARK_PERSISTED
            .key(self.keys.seq(room))
            .key(self.keys.log(room))
            .key(self.keys.persisted(room))
            .key(self.keys.dirty(room))
            .arg(persisted)
            .arg(self.window)
            .arg(room.as_str())
            .arg(huddle_domain::now_ms())
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

    /// Hands back a claimed range whose chunk tasks could not be queued, so the next flush
    /// claims it at once; `false` if a later flush already claimed past it (the range then
    /// waits for the claim's lifetime, as a lost chunk task does).
    pub async fn release_claim(&self, room: &RoomName, claim: FlushClaim) -> Result<bool> {
        let released: i64 = RELEASE_CLAIM
            .key(self.keys.claim(room))
            .arg(claim.from)
            .arg(claim.to)
            .invoke_async(&mut self.conn().await?)
            .await?;
        Ok(released == 1)
    }

    /// Drops a room from the dirty index if everything Redis holds of it is persisted
    /// (one atomic script: no append can slip between the check and the removal).
    pub async fn clear_dirty_if_clean(&self, room: &RoomName) -> Result<()> {
        let _: i64 = CLEAR_DIRTY
            .key(self.keys.seq(room))
            .key(self.keys.persisted(room))
            .key(self.keys.dirty(room))
            .arg(room.as_str())
            .invoke_async(&mut self.conn().await?)
            .await?;
        Ok(())
    }

    /// Where the room stands: counter, watermark, dirty mark.
    pub async fn state(&self, room: &RoomName) -> Result<RoomState> {
        let mut conn = self.conn().await?;
        let (seq, persisted, dirty_since, epoch): (Option<u64>, Option<u64>, Option<f64>, Option<i64>) = redis::pipe()
            .get(self.keys.seq(room))
            .get(self.keys.persisted(room))
            .zscore(self.keys.dirty(room), room.as_str())
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

    /// The persist lag over `rooms`: messages Redis holds that PostgreSQL lacks (seq
    /// counter minus watermark, summed), and how many rooms are dirty in all.
    /// On a cluster with a shard that does not answer it fails: a lag that left that
    /// shard's rooms out would look smaller than it is.
    pub async fn unpersisted(&self, rooms: &[RoomName]) -> Result<PersistLag> {
        let sizes = self.on_dirty_indexes::<u64>(redis::Cmd::zcard).await?;
        if let Some(error) = sizes.unreachable.into_iter().next() {
            return Err(error);
        }
        let sizes = sizes.values;
        let counters: Vec<Option<u64>> = self
            .query_each(
                rooms
                    .iter()
                    .flat_map(|room| [redis::Cmd::get(self.keys.seq(room)), redis::Cmd::get(self.keys.persisted(room))])
                    .collect(),
            )
            .await?;
        let messages = counters
            .chunks(2)
            .map(|pair| pair[0].unwrap_or(0).saturating_sub(pair.get(1).copied().flatten().unwrap_or(0)))
            .sum();
        Ok(PersistLag { messages, dirty_rooms: sizes.into_iter().sum() })
    }

    /// Up to `limit` dirty rooms, longest-dirty first, with when they became dirty (from
    /// every index: on a cluster, one per hash slot). On a cluster, the rooms of a shard
    /// that does not answer are left out (they wait for a later sweep) and its error is in
    /// [`DirtyRooms::unreachable`]; the call fails only if no shard answers.
    pub async fn dirty_rooms(&self, limit: usize) -> Result<DirtyRooms> {
        let last = limit.saturating_sub(1) as isize;
        let indexes =
            self.on_dirty_indexes::<Vec<(String, f64)>>(|index| redis::Cmd::zrange_withscores(index, 0, last)).await?;
        let mut rooms: Vec<(RoomName, i64)> = indexes
            .values
            .into_iter()
            .flatten()
            .filter_map(|(name, score)| RoomName::parse(&name).ok().map(|room| (room, score as i64)))
            .collect();
        rooms.sort_by_key(|(_, since)| *since);
        rooms.truncate(limit);
        Ok(DirtyRooms { rooms, unreachable: indexes.unreachable })
    }
}
