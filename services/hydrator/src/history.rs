//! GetHistory: pages of older messages, from Redis where it still holds them and from
//! PostgreSQL below that. Redis holds every seq above the persisted watermark and the
//! archive every seq at or below it, so the two halves meet without a gap.

use huddle_domain::RoomName;
use huddle_proto::v1::{ChatMessage, GetHistoryResponse};
use tonic::Status;

use crate::hydrate::{internal, HydrateService};

impl HydrateService {
    /// Up to `limit` messages with seq < `before` (0: newest), oldest first.
    pub async fn history(&self, room: &RoomName, before: u64, limit: u32) -> Result<GetHistoryResponse, Status> {
        let len = huddle_domain::page_len(limit);
        let (from_redis, held) = self.log.before(room, before, len).await.map_err(internal)?;
        let older = match huddle_domain::page_remainder(before, len, held) {
            None => Vec::new(),
            Some(rest) => self.archive.history_before(room, rest.before_seq, rest.count).await.map_err(internal)?,
        };
        let (page, has_more) = huddle_domain::join_page(older, from_redis, held);
        Ok(GetHistoryResponse { messages: page.into_iter().map(ChatMessage::from).collect(), has_more })
    }
}
