//! The write path's one step: appending a message (`append.lua`), and what its
//! publication on the room's channel looks like.

use std::sync::LazyLock;

use huddle_domain::{Post, RoomName, StoredMessage};
use redis::Script;

use crate::{LogEntry, Readiness, Result, RoomLog, THIS_PROCESS};

/// How long a client_id keeps deduplicating resends.
pub const CLIENT_ID_TTL_SECS: u64 = 24 * 3600;

static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/append.lua")));
static READINESS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/readiness.lua")));

/// Outcome of [`RoomLog::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored under `seq`; `unpersisted` messages of the room are now above the watermark.
    Appended {
        /// The seq the message got.
        seq: u64,
        /// How many of the room's seqs are above the persisted watermark, this one included.
        unpersisted: u64,
    },
    /// The client_id was already used in this room; `seq` is the original message's.
    Duplicate {
        /// The seq of the message first sent with this client_id.
        seq: u64,
    },
    /// Redis does not hold the room's counter, or this Redis process has not been
    /// checked against the archive for it yet: it must be hydrated first.
    NotReady,
}

impl RoomLog {
    /// Whether the room can take writes on the Redis process this call reaches.
    pub async fn readiness(&self, room: &RoomName) -> Result<Readiness> {
        let (seq, checked_here): (i64, i64) = READINESS
            .key(self.keys.seq(room))
            .key(self.keys.checked_on(room))
            .arg(THIS_PROCESS)
            .invoke_async(&mut self.conn().await?)
            .await?;
        Ok(match u64::try_from(seq) {
            Err(_) => Readiness::Missing,
            Ok(last_seq) if checked_here == 1 => Readiness::Ready { last_seq },
            Ok(last_seq) => Readiness::Unchecked { last_seq },
        })
    }

    /// Appends one message atomically: seq INCR, XADD, client_id marker, dirty-index
    /// entry, PUBLISH.
    pub async fn append(&self, room: &RoomName, post: &Post) -> Result<AppendOutcome> {
        let json = LogEntry::encode(post);
        let ttl = if post.client_id.is_empty() { 0 } else { CLIENT_ID_TTL_SECS };
        let mut conn = self.conn().await?;
        let (seq, duplicate, unpersisted): (i64, i64, i64) = APPEND
            .key(self.keys.seq(room))
            .key(self.keys.log(room))
            .key(self.keys.persisted(room))
            .key(self.keys.client_id(room, post.user_id, &post.client_id))
            .key(self.keys.dirty(room))
            .key(self.keys.checked_on(room))
            .arg(self.keys.channel(room))
            .arg(json)
            .arg(ttl)
            .arg(room.as_str())
            .arg(huddle_domain::now_ms())
            .arg(THIS_PROCESS)
            .arg(self.publish_command)
            .invoke_async(&mut conn)
            .await?;
        if seq < 0 {
            return Ok(AppendOutcome::NotReady);
        }
        self.wait_for_replicas(&mut conn, room).await?;
        let seq = seq as u64;
        if duplicate == 1 {
            return Ok(AppendOutcome::Duplicate { seq });
        }
        Ok(AppendOutcome::Appended { seq, unpersisted: unpersisted.max(0) as u64 })
    }
}

/// Parses a pub/sub payload (`"<seq> <entry JSON>"`) published by the append script.
pub fn parse_published(payload: &str) -> Option<StoredMessage> {
    let (seq, json) = payload.split_once(' ')?;
    LogEntry::decode_at(seq.parse().ok()?, json.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_payload_parses() {
        let message = parse_published(r#"42 {"u":1,"n":"ada","b":"a b","t":5}"#).unwrap();
        assert_eq!(message.seq, 42);
        assert_eq!(message.post.body, "a b");
        assert!(parse_published("nonsense").is_none());
    }
}
