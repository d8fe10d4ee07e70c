//! Reading the log: the newest messages, pages, ranges, and the chunks the persister
//! copies (with the epoch they belong to and, apart, entries that cannot be decoded).

use huddle_domain::{Held, RoomName, StoredMessage};

use crate::{LogEntry, Result, RoomLog};

/// A stream entry as Redis returns it: id, then field names and values as bytes.
type RawEntry = (String, Vec<Vec<u8>>);

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
    /// The entry's seq, from its stream id.
    pub seq: u64,
    /// The entry's field bytes as Redis holds them.
    pub raw: Vec<u8>,
    /// Why it could not be decoded (no field `m`, or the JSON error).
    pub reason: String,
}

impl RoomLog {
    /// The newest `limit` messages, oldest first.
    pub async fn recent(&self, room: &RoomName, limit: usize) -> Result<Vec<StoredMessage>> {
        Ok(self.before(room, 0, limit).await?.0)
    }

    /// Up to `limit` messages with seq < `before` (0: no bound), the newest ones, oldest
    /// first, and what the read covered (the `limit` newest entries, readable or not).
    pub async fn before(&self, room: &RoomName, before: u64, limit: usize) -> Result<(Vec<StoredMessage>, Held)> {
        if limit == 0 {
            return Ok((Vec::new(), Held::default()));
        }
        let end = if before == 0 { "+".to_owned() } else { format!("({before}-0") };
        let raw: Vec<RawEntry> = redis::cmd("XREVRANGE")
            .arg(self.keys.log(room))
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn().await?)
            .await?;
        let (mut messages, held) = readable(room, raw);
        messages.reverse();
        Ok((messages, held))
    }

    /// Messages with `from <= seq <= to`, in order, and what the read covered.
    pub async fn range(&self, room: &RoomName, from: u64, to: u64) -> Result<(Vec<StoredMessage>, Held)> {
        let raw: Vec<RawEntry> = redis::cmd("XRANGE")
            .arg(self.keys.log(room))
            .arg(format!("{from}-0"))
            .arg(format!("{to}-0"))
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(readable(room, raw))
    }

    /// Entries with `from <= seq <= to` and the epoch they belong to, read atomically
    /// (even when Redis is at maxmemory): what a chunk task writes to the archive. Entries
    /// that cannot be decoded come back apart, with their raw bytes, instead of failing the
    /// whole chunk.
    ///
    /// One `MULTI`/`EXEC` (read-only commands, so a full Redis still runs it) rather than
    /// a script: a script's `XRANGE` reply is turned into a Lua table and back, which cost
    /// Redis about 1 ms for a chunk of 500 entries against 0.2 ms for the transaction
    /// (`INFO commandstats`, Redis 7.0): most of what a chunk costs the Redis it drains.
    pub async fn chunk(&self, room: &RoomName, from: u64, to: u64) -> Result<Chunk> {
        let (epoch, raw): (Option<i64>, Vec<RawEntry>) = redis::pipe()
            .atomic()
            .get(self.keys.epoch(room))
            .xrange(self.keys.log(room), format!("{from}-0"), format!("{to}-0"))
            .query_async(&mut self.conn().await?)
            .await?;
        let mut chunk =
            Chunk { epoch: epoch.unwrap_or(0), messages: Vec::with_capacity(raw.len()), unreadable: Vec::new() };
        for (id, fields) in raw {
            let Some(seq) = seq_of_id(&id) else { continue };
            match decode(seq, &fields) {
                Ok(message) => chunk.messages.push(message),
                Err(reason) => chunk.unreadable.push(Unreadable { seq, raw: fields.concat(), reason }),
            }
        }
        Ok(chunk)
    }
}

/// The seq of a stream entry id (`<seq>-0`).
pub(crate) fn seq_of_id(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// The message a stream entry holds in its field `m`, or why there is none.
fn decode(seq: u64, fields: &[Vec<u8>]) -> std::result::Result<StoredMessage, String> {
    match fields.chunks(2).find(|pair| pair[0] == b"m").and_then(|pair| pair.get(1)) {
        None => Err("no field m".to_owned()),
        Some(bytes) => LogEntry::decode_at(seq, bytes).map_err(|e| e.to_string()),
    }
}

/// The messages of `raw` for a reader (a join, a page, a recovery), and what `raw`
/// covered. An entry that cannot be decoded is left out and logged, so one corrupt entry
/// (a hand edit, a damaged Redis: the append script never writes one) costs the room that
/// message, not every read of it; the persister quarantines it in the archive
/// ([`RoomLog::chunk`]).
fn readable(room: &RoomName, raw: Vec<RawEntry>) -> (Vec<StoredMessage>, Held) {
    let held = Held { entries: raw.len(), lowest_seq: raw.iter().filter_map(|(id, _)| seq_of_id(id)).min() };
    let messages = raw
        .into_iter()
        .filter_map(|(id, fields)| {
            let decoded = seq_of_id(&id).ok_or_else(|| "id is not <seq>-0".to_owned()).and_then(|seq| decode(seq, &fields));
            decoded
                .inspect_err(|reason| {
                    tracing::error!(room = %room, id = %id, reason = %reason, "a log entry cannot be decoded; left out of the read");
                })
                .ok()
        })
        .collect();
    (messages, held)
}

/// What Redis holds of a room's activity ([`RoomLog::summaries`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomSummary {
    /// The last seq handed out, if Redis holds the room.
    pub last_seq: Option<u64>,
    /// When the newest message Redis holds was sent (ms since the epoch).
    pub last_sent_at_ms: Option<i64>,
    /// People with a live socket in the room (counted up to [`ONLINE_COUNT_CAP`]).
    pub online: usize,
}

/// The most presence entries one room's summary reads.
pub const ONLINE_COUNT_CAP: usize = 1000;

impl RoomLog {
    /// Counter, newest message time and people online of each room, in three pipelined
    /// round trips whatever the number of rooms on one Redis (one key of one room per
    /// command, so Redis Cluster routes each by itself). A room whose newest entry cannot
    /// be read is summarised without its time.
    pub async fn summaries(&self, rooms: &[RoomName]) -> Result<Vec<RoomSummary>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let now = huddle_domain::now_ms();
        let counters: Vec<Option<u64>> =
            self.query_each(rooms.iter().map(|room| redis::Cmd::get(self.keys.seq(room))).collect()).await?;
        let newest: Vec<Vec<RawEntry>> = self
            .query_each(
                rooms
                    .iter()
                    .map(|room| {
                        redis::cmd("XREVRANGE").arg(self.keys.log(room)).arg("+").arg("-").arg("COUNT").arg(1).clone()
                    })
                    .collect(),
            )
            .await?;
        let online: Vec<Vec<String>> = self
            .query_each(
                rooms
                    .iter()
                    .map(|room| {
                        redis::Cmd::zrangebyscore_limit(
                            self.keys.online(room),
                            now,
                            "+inf",
                            0,
                            ONLINE_COUNT_CAP as isize,
                        )
                    })
                    .collect(),
            )
            .await?;
        Ok(counters
            .into_iter()
            .zip(newest)
            .zip(online)
            .map(|((last_seq, newest), members)| {
                let mut people: Vec<&str> = members.iter().filter_map(|m| m.split('|').nth(1)).collect();
                people.sort_unstable();
                people.dedup();
                RoomSummary {
                    last_seq,
                    last_sent_at_ms: newest
                        .first()
                        .and_then(|(id, fields)| decode(seq_of_id(id)?, fields).ok())
                        .map(|message| message.post.sent_at_ms),
                    online: people.len(),
                }
            })
            .collect())
    }
}
