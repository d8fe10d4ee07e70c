//! The Persister gRPC service: manual flush and flush-lag status.

use huddle_archive::Archive;
use huddle_broker::{Broker, TaskQueue};
use huddle_domain::RoomName;
use huddle_proto::v1::persister_server::Persister;
use huddle_proto::v1::{FlushRoomRequest, FlushRoomResponse, FlushRoomTask, RoomStatusRequest, RoomStatusResponse};
use huddle_roomlog::RoomLog;
use tonic::{Request, Response, Status};

/// Serves `huddle.v1.Persister`.
pub struct PersisterService {
    pub(crate) log: RoomLog,
    pub(crate) archive: Archive,
    pub(crate) broker: Broker,
}

fn room_of(raw: &str) -> Result<RoomName, Status> {
    RoomName::parse(raw).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn unavailable(error: impl std::fmt::Display) -> Status {
    Status::unavailable(error.to_string())
}

#[tonic::async_trait]
impl Persister for PersisterService {
    async fn flush_room(&self, request: Request<FlushRoomRequest>) -> Result<Response<FlushRoomResponse>, Status> {
        let room = room_of(&request.get_ref().room)?;
        let task =
            FlushRoomTask { room: room.to_string(), reason: "manual".into(), requested_at_ms: huddle_domain::now_ms() };
        self.broker.publish(TaskQueue::Flush, &[task]).await.map_err(unavailable)?;
        Ok(Response::new(FlushRoomResponse { queued: true }))
    }

    async fn room_status(&self, request: Request<RoomStatusRequest>) -> Result<Response<RoomStatusResponse>, Status> {
        let room = room_of(&request.get_ref().room)?;
        let state = self.log.state(&room).await.map_err(unavailable)?;
        let archived_seq = self.archive.watermark(&room).await.map_err(unavailable)?;
        let dirty_for_ms = state.dirty_since_ms.map_or(0, |since| (huddle_domain::now_ms() - since).max(0));
        Ok(Response::new(RoomStatusResponse {
            in_redis: state.in_redis,
            last_seq: state.last_seq,
            persisted_seq: state.persisted_seq,
            archived_seq,
            unpersisted: state.last_seq.saturating_sub(state.persisted_seq),
            dirty_for_ms,
        }))
    }
}
