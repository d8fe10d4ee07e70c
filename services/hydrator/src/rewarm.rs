//! Bulk re-warm after a Redis loss: HydrateRoom tasks for recently active rooms, consumed
//! by every hydrator replica (competing consumers on one queue).

use std::time::Duration;

use huddle_archive::Archive;
use huddle_broker::{Broker, BrokerError, TaskError, TaskHandler, TaskQueue};
use huddle_domain::RoomName;
use huddle_proto::v1::HydrateRoomTask;
use prost::Message;

use crate::HydrateService;

/// Handles HydrateRoom tasks.
#[derive(Clone)]
pub(crate) struct RewarmTasks(pub(crate) HydrateService);

/// Decodes a HydrateRoom task into its room. Whatever the bytes, the answer is a room or
/// [`TaskError::Poison`] (dead-lettered, never retried), never a panic.
pub fn decode_rewarm_task(payload: &[u8]) -> Result<RoomName, TaskError> {
    let task = HydrateRoomTask::decode(payload).map_err(|e| TaskError::Poison(e.to_string()))?;
    RoomName::parse(&task.room).map_err(|e| TaskError::Poison(format!("room {:?}: {e}", task.room)))
}

impl TaskHandler for RewarmTasks {
    async fn handle(&self, _queue: TaskQueue, payload: &[u8]) -> Result<(), TaskError> {
        let room = decode_rewarm_task(payload)?;
        self.0.hydrate(&room).await.map(|_| ()).map_err(|status| TaskError::Transient(status.message().to_owned()))
    }
}

/// Errors of [`queue_rewarm`].
#[derive(Debug, thiserror::Error)]
pub enum RewarmError {
    #[error(transparent)]
    Archive(#[from] huddle_archive::ArchiveError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Queues a HydrateRoom task for every room with a message sent within `within`;
/// returns how many were queued.
pub async fn queue_rewarm(archive: &Archive, broker: &Broker, within: Duration) -> Result<usize, RewarmError> {
    let rooms = archive.active_rooms(within).await?;
    let tasks: Vec<HydrateRoomTask> = rooms.iter().map(|room| HydrateRoomTask { room: room.to_string() }).collect();
    for batch in tasks.chunks(500) {
        broker.publish(TaskQueue::Hydrate, batch).await?;
    }
    tracing::info!(rooms = tasks.len(), "re-warm queued");
    Ok(tasks.len())
}
