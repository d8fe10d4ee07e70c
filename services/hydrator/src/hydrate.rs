//! HydrateRoom: single-flight restore of a room's counter and recent window.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use huddle_archive::Archive;
use huddle_domain::RoomName;
use huddle_proto::v1::hydrator_server::Hydrator;
use huddle_proto::v1::{GetHistoryRequest, GetHistoryResponse, HydrateRoomRequest, HydrateRoomResponse};
use huddle_roomlog::{Readiness, RoomLog};
use huddle_telemetry::metrics::{counter, elapsed, seconds, Counter, Histogram, KeyValue};
use tonic::{Request, Response, Status};
use tracing::Instrument;

static HYDRATIONS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    counter(
        "huddle_hydrations",
        "HydrateRoom calls by outcome: loaded (this call restored the room), rechecked (this call compared a room Redis held with the archive, on a Redis process new to it), warm (Redis had it), waited (another caller restored it)",
    )
});

static HYDRATE_SECONDS: LazyLock<Histogram<f64>> = LazyLock::new(|| {
    seconds(
        "huddle_hydrator_hydrate",
        "Time to answer one HydrateRoom call, by outcome: restored (this call loaded or re-checked the room), warm (Redis had it, or another caller restored it), failed",
    )
});

fn count(outcome: &'static str) {
    HYDRATIONS.add(1, &[KeyValue::new("outcome", outcome)]);
}

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
        let started = Instant::now();
        let mut result = self.hydrate_once_ready(room).await;
        if result.as_ref().is_err_and(|status| status.code() == tonic::Code::Internal) {
            // Once more: a call is idempotent, and the usual cause, a connection that
            // broke when Redis restarted, is replaced by then (the pool checks the rest).
            result = self.hydrate_once_ready(room).await;
        }
        let outcome = match &result {
            Ok(response) if response.already_warm => "warm",
            Ok(_) => "restored",
            Err(_) => "failed",
        };
        HYDRATE_SECONDS.record(elapsed(started), &[KeyValue::new("outcome", outcome)]);
        result
    }

    async fn hydrate_once_ready(&self, room: &RoomName) -> Result<HydrateRoomResponse, Status> {
        let deadline = Instant::now() + self.timeout;
        let lock_ttl_ms = self.timeout.as_millis() as u64;
        // Whether this call waited for another caller's hydration (counted once, at the end).
        let mut waited = false;
        loop {
            if let Readiness::Ready { last_seq } = self.log.readiness(room).await.map_err(internal)? {
                count(if waited { "waited" } else { "warm" });
                return Ok(HydrateRoomResponse { last_seq, loaded: 0, already_warm: true });
            }
            if let Some(guard) =
                self.log.try_lock(self.log.keys().hydrate_lock(room), lock_ttl_ms).await.map_err(internal)?
            {
                // The previous holder may have finished between our check and our lock:
                // re-opening a room Redis already holds would only move its epoch on.
                let readiness = match self.log.readiness(room).await {
                    Ok(readiness) => readiness,
                    Err(error) => {
                        let _ = self.log.unlock(guard).await;
                        return Err(internal(error));
                    }
                };
                let result = match readiness {
                    Readiness::Ready { last_seq } => {
                        count("waited");
                        Ok(HydrateRoomResponse { last_seq, loaded: 0, already_warm: true })
                    }
                    Readiness::Unchecked { last_seq } => self.recheck(room, last_seq).await,
                    Readiness::Missing => self.load(room).await,
                };
                if let Err(error) = self.log.unlock(guard).await {
                    tracing::warn!(%room, %error, "could not release hydrate lock; it will expire");
                }
                return result;
            }
            if Instant::now() >= deadline {
                return Err(Status::unavailable(format!("room {room} is being hydrated elsewhere; retry")));
            }
            tokio::time::sleep(WAIT_POLL).await;
            waited = true;
        }
    }

    async fn load(&self, room: &RoomName) -> Result<HydrateRoomResponse, Status> {
        let tail = self
            .archive
            .reopen_room(room, self.window)
            .instrument(tracing::info_span!("archive_read"))
            .await
            .map_err(internal)?;
        huddle_failpoints::crash_point!("hydrator::archive_reopened");
        let (initialised, last_seq) = self
            .log
            .hydrate(room, tail.last_seq, tail.epoch, &tail.recent)
            .instrument(tracing::info_span!("redis_restore", messages = tail.recent.len()))
            .await
            .map_err(internal)?;
        let loaded = if initialised { tail.recent.len() as u32 } else { 0 };
        // Not initialised: another caller restored it between our check and our script.
        count(if initialised { "loaded" } else { "waited" });
        tracing::info!(%room, last_seq, loaded, abandoned = tail.abandoned, "room hydrated");
        Ok(HydrateRoomResponse { last_seq, loaded, already_warm: !initialised })
    }

    /// Compares a room Redis holds at `redis_seq` with the archive, on a Redis process it
    /// was not checked on: Redis may have restarted from an older state, and its counter
    /// must not hand out a seq the archive already holds.
    async fn recheck(&self, room: &RoomName, redis_seq: u64) -> Result<HydrateRoomResponse, Status> {
        let archived = self.archive.recheck_room(room, redis_seq).await.map_err(internal)?;
        huddle_failpoints::crash_point!("hydrator::archive_rechecked");
        let Some(last_seq) = self
            .log
            .recheck(room, redis_seq, archived.last_seq, archived.watermark, archived.epoch, &archived.above)
            .await
            .map_err(internal)?
        else {
            // Redis lost the room between the two steps: restore it whole.
            return self.load(room).await;
        };
        count("rechecked");
        let restored = archived.above.len();
        if restored > 0 || archived.lost > 0 {
            tracing::warn!(%room, redis_seq, last_seq, restored, lost = archived.lost,
                "Redis had gone back to an older state of the room; restored what the archive holds above it");
        } else {
            tracing::info!(%room, last_seq, "room re-checked against the archive on a new Redis process");
        }
        Ok(HydrateRoomResponse { last_seq, loaded: restored as u32, already_warm: false })
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
    async fn hydrate_room(
        &self,
        request: Request<HydrateRoomRequest>,
    ) -> Result<Response<HydrateRoomResponse>, Status> {
        let room = parse_room(&request.get_ref().room)?;
        self.hydrate(&room).await.map(Response::new)
    }

    async fn get_history(&self, request: Request<GetHistoryRequest>) -> Result<Response<GetHistoryResponse>, Status> {
        let request = request.into_inner();
        let room = parse_room(&request.room)?;
        self.history(&room, request.before_seq, request.limit).await.map(Response::new)
    }
}
