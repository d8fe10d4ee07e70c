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
        let limit = huddle_domain::page_len(limit);
        let mut page = self.log.before(room, before, limit).await.map_err(internal)?;
        if page.len() < limit {
            let below = page.first().map_or(if before == 0 { u64::MAX } else { before }, |m| m.seq);
            let mut older = self.archive.history_before(room, below, limit - page.len()).await.map_err(internal)?;
            older.append(&mut page);
            page = older;
        }
        let has_more = page.first().is_some_and(|m| m.seq > 1);
        Ok(GetHistoryResponse { messages: page.into_iter().map(ChatMessage::from).collect(), has_more })
    }
}
