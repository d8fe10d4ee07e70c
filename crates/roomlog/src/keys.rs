//! Names of every Redis key and channel, under one prefix (the table in the crate docs).

use std::sync::LazyLock;

use huddle_domain::RoomName;

/// Hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Names of every Redis key and channel, under one prefix.
#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
    /// The dirty-room index is split by hash slot (Redis Cluster), not one set.
    dirty_per_slot: bool,
}

impl Keyspace {
    /// A keyspace whose names all start with `prefix` (which must not contain `{`), for one
    /// Redis.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), dirty_per_slot: false }
    }

    /// The same names for Redis Cluster, except that the dirty-room index is one set per
    /// hash slot, each in the slot of the rooms it lists: a script that writes a room's keys
    /// and its index entry then touches one slot, as a cluster requires.
    pub fn clustered(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), dirty_per_slot: true }
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
    /// The sorted set of dirty rooms that lists `room`.
    pub fn dirty(&self, room: &RoomName) -> String {
        if self.dirty_per_slot {
            self.dirty_of_slot(slot_of(room.as_str()))
        } else {
            format!("{}dirty", self.prefix)
        }
    }

    /// Every sorted set of dirty rooms: one, or one per hash slot.
    pub fn dirty_indexes(&self) -> Vec<String> {
        if self.dirty_per_slot {
            (0..SLOTS).map(|slot| self.dirty_of_slot(slot)).collect()
        } else {
            vec![format!("{}dirty", self.prefix)]
        }
    }

    /// The dirty-room index of the rooms in hash slot `slot` (on a cluster).
    pub(crate) fn dirty_of_slot(&self, slot: u16) -> String {
        format!("{}dirty:{{{}}}", self.prefix, SLOT_TAGS[usize::from(slot)])
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
    /// Failed logins in a row of an account (by its canonical name; tagged by it, so the
    /// count and the lock share a hash slot).
    pub fn login_failures(&self, account: &str) -> String {
        format!("{}login:{{{}}}:failures", self.prefix, account)
    }
    /// Lock on an account's logins after too many failures.
    pub fn login_lock(&self, account: &str) -> String {
        format!("{}login:{{{}}}:lock", self.prefix, account)
    }
    /// Channel that carries the id of every session that ended (logout, revocation), so
    /// every gateway closes that session's sockets.
    pub fn ended_sessions(&self) -> String {
        format!("{}sessions:ended", self.prefix)
    }
}

/// The Redis Cluster hash slot of a key whose hash tag is `tag` (CRC16/XMODEM mod 16384).
pub fn slot_of(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS
}

/// For each hash slot, a short hash tag that falls in it (the first base-36 number that
/// does): a key tagged with it lives in that slot.
static SLOT_TAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut tags = vec![String::new(); usize::from(SLOTS)];
    let mut missing = usize::from(SLOTS);
    let mut n: u64 = 0;
    while missing > 0 {
        let tag = base36(n);
        let slot = &mut tags[usize::from(slot_of(&tag))];
        if slot.is_empty() {
            *slot = tag;
            missing -= 1;
        }
        n += 1;
    }
    tags
});

fn base36(mut n: u64) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
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

    #[test]
    fn slots_are_those_redis_cluster_computes() {
        // CLUSTER KEYSLOT of each, on Redis 7.0.
        assert_eq!(slot_of("lobby"), 10294);
        assert_eq!(slot_of("123456789"), 12739);
        assert_eq!(slot_of("0"), 13907);
    }

    #[test]
    fn a_clustered_dirty_index_shares_its_rooms_slot() {
        let keys = Keyspace::clustered("t1:");
        for name in ["lobby", "general", "r-1", "a_b_c"] {
            let room = RoomName::parse(name).unwrap();
            let dirty = keys.dirty(&room);
            let tag = dirty.split_once('{').and_then(|(_, rest)| rest.split_once('}')).map(|(tag, _)| tag).unwrap();
            assert_eq!(slot_of(tag), slot_of(name), "{dirty}");
        }
        let indexes = keys.dirty_indexes();
        assert_eq!(indexes.len(), usize::from(SLOTS));
        assert_eq!(indexes.iter().collect::<std::collections::HashSet<_>>().len(), usize::from(SLOTS));
        assert_eq!(
            Keyspace::new("t1:").dirty_indexes(),
            vec![Keyspace::new("t1:").dirty(&RoomName::parse("x").unwrap())]
        );
    }

    #[test]
    fn both_login_keys_of_an_account_share_a_slot() {
        let keys = Keyspace::new("t1:");
        assert_eq!(keys.login_failures("ann"), "t1:login:{ann}:failures");
        assert_eq!(keys.login_lock("ann"), "t1:login:{ann}:lock");
    }
}
