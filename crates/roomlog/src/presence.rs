//! Who is in a room (`presence.lua`: a sorted set scored by expiry, so a crashed
//! gateway's sockets drop out by themselves), and notices published on the room's
//! channel without being stored (presence changes, typing).

use std::sync::LazyLock;

use huddle_domain::RoomName;
use redis::Script;

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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomPresence {
    /// Live sockets of the changed user after a join or leave (0 after their last one
    /// left), or after a refresh that had to re-add the socket (Redis had lost it); `None`
    /// after a refresh of a socket Redis still held, which does not count them.
    pub user_sockets: Option<usize>,
    /// Live sockets in the room, all users.
    pub sockets: usize,
    /// Users whose last socket's entry expired during this call (their gateway stopped
    /// refreshing them): (id, name). Each expiry is reported to exactly one caller.
    pub expired_users: Vec<(i64, String)>,
    /// After a join, the users online, by id: (id, name). Empty after a refresh or leave.
    pub online: Vec<(i64, String)>,
}

impl RoomLog {
    /// Records a socket's presence in a room (`Join`/`Refresh`, valid for `ttl_ms`) or
    /// removes it (`Leave`), dropping entries that expired; returns what changed.
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
        Ok(parse_presence_reply(reply))
    }

    /// Publishes a payload on the room's channel that is not stored (typing notices).
    pub async fn publish_ephemeral(&self, room: &RoomName, payload: &str) -> Result<()> {
        let _: i64 = redis::cmd(self.publish_command)
            .arg(self.keys.channel(room))
            .arg(payload)
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(())
    }
}

/// Reads `presence.lua`'s reply: counts, the expired users, then the members on a join.
fn parse_presence_reply(reply: Vec<String>) -> RoomPresence {
    let mut reply = reply.into_iter();
    let mut number = || reply.next().and_then(|n| n.parse::<i64>().ok()).unwrap_or(0);
    let user_sockets = usize::try_from(number()).ok();
    let sockets = usize::try_from(number()).unwrap_or(0);
    let expired = usize::try_from(number()).unwrap_or(0);
    let expired_users = reply.by_ref().take(expired).filter_map(|user| id_and_name(&user)).collect();
    let mut online: Vec<(i64, String)> = Vec::new();
    for member in reply {
        // "<socket>|<id>|<name>"
        let Some((_, user)) = member.split_once('|') else { continue };
        let Some((id, name)) = id_and_name(user) else { continue };
        if !online.iter().any(|(known, _)| *known == id) {
            online.push((id, name));
        }
    }
    online.sort();
    RoomPresence { user_sockets, sockets, expired_users, online }
}

/// "<id>|<name>" (a name may itself hold '|').
fn id_and_name(user: &str) -> Option<(i64, String)> {
    let (id, name) = user.split_once('|')?;
    Some((id.parse().ok()?, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_join_reply_lists_each_user_once_by_id() {
        let reply = strings(&["2", "3", "1", "9|ghost", "s1|7|bob", "s2|3|a|da", "s3|7|bob"]);
        let presence = parse_presence_reply(reply);
        assert_eq!(presence.user_sockets, Some(2));
        assert_eq!(presence.sockets, 3);
        assert_eq!(presence.expired_users, vec![(9, "ghost".to_owned())]);
        assert_eq!(presence.online, vec![(3, "a|da".to_owned()), (7, "bob".to_owned())]);
    }

    #[test]
    fn a_refresh_reply_counts_no_user() {
        let presence = parse_presence_reply(strings(&["-1", "5", "0"]));
        assert_eq!(presence, RoomPresence { user_sockets: None, sockets: 5, ..RoomPresence::default() });
    }
}
