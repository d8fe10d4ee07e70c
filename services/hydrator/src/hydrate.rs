//! HydrateRoom: single-flight restore of a room's counter and recent window.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use huddle_archive::Archive;
use huddle_domain::RoomName;
use huddle_proto::v1::hydrator_server::Hydrator;
use huddle_proto::v1::{GetHistoryRequest, GetHistoryResponse, HydrateRoomRequest, HydrateRoomResponse};
use huddle_roomlog::RoomLog;
use prometheus::{register_int_counter_vec, IntCounterVec};
use tonic::{Request, Response, Status};

static HYDRATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "huddle_hydrations_total",
        "HydrateRoom calls by outcome: loaded (this call restored the room), warm (Redis had it), waited (another caller restored it)",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// How often a caller that lost the race re-checks whether the winner is done.
const WAIT_POLL: Duration = Duration::from_millis(10);

/// The Hydrator gRPC service.
#[derive(Clone)]
pub struct HydrateService {
    pub(crate) log: RoomLog,
    pub(crate) archive: Archive,
    window: usize,
    timeout: Duration,
}

impl HydrateService {
    /// A service restoring `window` messages per room, waiting up to `timeout` for a
    /// concurrent restore by someone else.
    pub fn new(log: RoomLog, archive: Archive, window: usize, timeout: Duration) -> Self {
        Self { log, archive, window, timeout }
    }

    /// Makes sure Redis holds `room`. See the crate docs.
    #[tracing::instrument(skip_all, fields(%room))]
    pub async fn hydrate(&self, room: &RoomName) -> Result<HydrateRoomResponse, Status> {
        let deadline = Instant::now() + self.timeout;
        let lock_ttl_ms = self.timeout.as_millis() as u64;
        loop {
            let state = self.log.state(room).await.map_err(internal)?;
            if state.in_redis {
                return Ok(HydrateRoomResponse { last_seq: state.last_seq, loaded: 0, already_warm: true });
            }
            if let Some(guard) = self.log.try_lock(self.log.keys().hydrate_lock(room), lock_ttl_ms).await.map_err(internal)? {
                // The previous holder may have finished between our check and our lock:
                // re-opening a room Redis already holds would only move its epoch on.
                let state = match self.log.state(room).await {
                    Ok(state) => state,
                    Err(error) => {
                        let _ = self.log.unlock(guard).await;
                        return Err(internal(error));
                    }
                };
                if state.in_redis {
                    if let Err(error) = self.log.unlock(guard).await {
                        tracing::warn!(%room, %error, "could not release hydrate lock; it will expire");
                    }
                    HYDRATIONS.with_label_values(&["waited"]).inc();
                    return Ok(HydrateRoomResponse { last_seq: state.last_seq, loaded: 0, already_warm: true });
                }
                let result = self.load(room).await;
                if let Err(error) = self.log.unlock(guard).await {
                    tracing::warn!(%room, %error, "could not release hydrate lock; it will expire");
                }
                return result;
            }
            if Instant::now() >= deadline {
                return Err(Status::unavailable(format!("room {room} is being hydrated elsewhere; retry")));
            }
            tokio::time::sleep(WAIT_POLL).await;
            HYDRATIONS.with_label_values(&["waited"]).inc();
        }
    }

    async fn load(&self, room: &RoomName) -> Result<HydrateRoomResponse, Status> {
        let tail = self.archive.reopen_room(room, self.window).await.map_err(internal)?;
        let (initialised, last_seq) = self.log.hydrate(room, tail.last_seq, tail.epoch, &tail.recent).await.map_err(internal)?;
        let loaded = if initialised { tail.recent.len() as u32 } else { 0 };
        HYDRATIONS.with_label_values(&[if initialised { "loaded" } else { "warm" }]).inc();
        tracing::info!(%room, last_seq, loaded, abandoned = tail.abandoned, "room hydrated");
        Ok(HydrateRoomResponse { last_seq, loaded, already_warm: !initialised })
    }
}

pub(crate) fn parse_room(raw: &str) -> Result<RoomName, Status> {
    RoomName::parse(raw).map_err(|e| Status::invalid_argument(e.to_string()))
}

pub(crate) fn internal(error: impl std::fmt::Display) -> Status {
    tracing::error!(%error, "hydrator call failed");
    Status::internal(error.to_string())
}

#[tonic::async_trait]
impl Hydrator for HydrateService {
    async fn hydrate_room(&self, request: Request<HydrateRoomRequest>) -> Result<Response<HydrateRoomResponse>, Status> {
        let room = parse_room(&request.get_ref().room)?;
        self.hydrate(&room).await.map(Response::new)
    }

    async fn get_history(&self, request: Request<GetHistoryRequest>) -> Result<Response<GetHistoryResponse>, Status> {
        let request = request.into_inner();
        let room = parse_room(&request.room)?;
        self.history(&room, request.before_seq, request.limit).await.map(Response::new)
    }
}
