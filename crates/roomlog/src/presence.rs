//! Who is in a room (`presence.lua`: a sorted set scored by expiry, so a crashed
//! gateway's sockets drop out by themselves), and notices published on the room's
//! channel without being stored (presence changes, typing).

use std::sync::LazyLock;

use huddle_domain::RoomName;
use redis::{AsyncCommands, Script};

use crate::{Result, RoomLog};

static PRESENCE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/presence.lua")));

/// One socket's presence entry.
#[derive(Debug, Clone)]
pub struct Presence {
    /// Unique per socket across gateways.
    pub socket: String,
    /// The account id of the socket's user.
    pub user_id: i64,
    /// The user's name, as listed to the room.
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
    /// A socket enters the room: its entry is added, valid for the TTL.
    Join,
    /// A socket still in the room pushes its entry's expiry on (heartbeat).
    Refresh,
    /// A socket leaves the room: its entry is removed.
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

impl RoomLog {
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

    /// Publishes a payload on the room's channel that is not stored (typing notices).
    pub async fn publish_ephemeral(&self, room: &RoomName, payload: &str) -> Result<()> {
        let _: i64 = self.conn().await?.publish(self.keys.channel(room), payload).await?;
        Ok(())
    }
}
