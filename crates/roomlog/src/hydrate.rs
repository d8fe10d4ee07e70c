//! Installing a room from the archive (`hydrate.lua`) and re-checking a room a Redis
//! process holds against it (`recheck.lua`).

use std::sync::LazyLock;

use huddle_domain::{RoomName, StoredMessage};
use redis::Script;

use crate::{LogEntry, Result, RoomLog, CLIENT_ID_TTL_SECS, THIS_PROCESS};

static HYDRATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/hydrate.lua")));
static RECHECK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/recheck.lua")));

/// Prefix of the notice the hydrate and recheck scripts publish when sockets may have
/// seen seqs the room no longer holds.
pub const RESET_PREFIX: &str = "R ";

impl RoomLog {
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
        let mut invocation = self.room_state_invocation(&HYDRATE, room);
        invocation
            .arg(archived_seq)
            .arg(CLIENT_ID_TTL_SECS)
            .arg(self.keys.channel(room))
            .arg(epoch)
            .arg(THIS_PROCESS)
            .arg(self.publish_command);
        self.add_restored(&mut invocation, room, recent);
        let (initialised, seq): (i64, i64) = invocation.invoke_async(&mut self.conn().await?).await?;
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
        let mut invocation = self.room_state_invocation(&RECHECK, room);
        invocation
            .arg(THIS_PROCESS)
            .arg(redis_seq)
            .arg(archived_seq)
            .arg(archived_watermark)
            .arg(epoch)
            .arg(CLIENT_ID_TTL_SECS)
            .arg(self.keys.channel(room))
            .arg(self.publish_command);
        self.add_restored(&mut invocation, room, above);
        let seq: i64 = invocation.invoke_async(&mut self.conn().await?).await?;
        Ok((seq >= 0).then_some(seq as u64))
    }
}

impl RoomLog {
    /// A call of `script` with the keys both installing scripts take: counter, log,
    /// watermark, epoch and `checked_on`.
    fn room_state_invocation<'a>(&self, script: &'a Script, room: &RoomName) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.seq(room))
            .key(self.keys.log(room))
            .key(self.keys.persisted(room))
            .key(self.keys.epoch(room))
            .key(self.keys.checked_on(room));
        invocation
    }

    /// Adds (seq, entry JSON, index in KEYS of its client_id marker or 0) per archived
    /// message to a call made by [`Self::room_state_invocation`], and each marker's key to
    /// KEYS (declared, like every key a script touches), so a resend of a restored
    /// message stays a duplicate.
    fn add_restored(&self, invocation: &mut redis::ScriptInvocation<'_>, room: &RoomName, messages: &[StoredMessage]) {
        // The five keys of room_state_invocation come first.
        let mut next_key = 6;
        for message in messages {
            let json = LogEntry::encode(&message.post);
            let marker = if message.post.client_id.is_empty() {
                0
            } else {
                invocation.key(self.keys.client_id(room, message.post.user_id, &message.post.client_id));
                next_key += 1;
                next_key - 1
            };
            invocation.arg(message.seq).arg(json).arg(marker);
        }
    }
}
