//! Names of every Redis key and channel, under one prefix (the table in the crate docs).

use huddle_domain::RoomName;

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
    /// Marker that the revoked-token cache holds every live revocation of the archive
    /// (gone with the rest of Redis, which makes the next check reload it).
    pub fn revocations_loaded(&self) -> String {
        format!("{}revoked-loaded", self.prefix)
    }
    /// Failed logins in a row of an account (by its canonical name).
    pub fn login_failures(&self, account: &str) -> String {
        format!("{}login:{}:failures", self.prefix, account)
    }
    /// Lock on an account's logins after too many failures.
    pub fn login_lock(&self, account: &str) -> String {
        format!("{}login:{}:lock", self.prefix, account)
    }
    /// Channel that carries the id of every session that ended (logout, revocation), so
    /// every gateway closes that session's sockets.
    pub fn ended_sessions(&self) -> String {
        format!("{}sessions:ended", self.prefix)
    }
}

/// The part of a client_id marker key after the room's prefix.
pub(crate) fn client_id_marker(user_id: i64, client_id: &str) -> String {
    format!("cid:{user_id}:{client_id}")
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
}
