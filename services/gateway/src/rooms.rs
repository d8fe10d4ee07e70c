//! Room operations of the write path: make sure Redis holds a room (hydrating it over
//! gRPC if not), append messages, read history, count members and trigger flushes.

use huddle_domain::{Held, Post, RoomName, StoredMessage};
use huddle_proto::auth::BearerToken;
use huddle_proto::v1::hydrator_client::HydratorClient;
use huddle_proto::v1::{GetHistoryRequest, HydrateRoomRequest};
use huddle_roomlog::{AppendOutcome, Presence, PresenceChange, Readiness, RoomLog, RoomPresence};
use std::time::Duration;

use tonic::transport::Channel;

use crate::error::ApiError;
use crate::flush::FlushRequester;
use crate::hub::PRESENCE_PREFIX;
use crate::metrics::{APPEND_SECONDS, GRPC_CLIENT_SECONDS, MESSAGES_ACCEPTED};
use crate::protocol::{self, PresenceEvent};
use huddle_telemetry::metrics::KeyValue;

/// How long a socket's presence lasts unless refreshed (sockets refresh it on every
/// heartbeat, so a crashed gateway's sockets drop out within this).
pub const PRESENCE_TTL_MS: u64 = 60_000;

/// The hydrator's gRPC client; every call carries the service token and the trace.
pub type Hydrator = HydratorClient<tonic::service::interceptor::InterceptedService<Channel, CallMetadata>>;

/// What every hydrator call carries: the service token and the caller's W3C trace
/// context (`traceparent`), so the hydrator's spans join the caller's trace.
#[derive(Clone)]
pub struct CallMetadata(BearerToken);

impl CallMetadata {
    /// Calls that carry `token`.
    pub fn new(token: BearerToken) -> Self {
        Self(token)
    }
}

impl tonic::service::Interceptor for CallMetadata {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = self.0.call(request)?;
        for (key, value) in huddle_telemetry::trace_headers() {
            let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
            if let (Ok(key), Ok(value)) = (key, value.parse()) {
                request.metadata_mut().insert(key, value);
            }
        }
        Ok(request)
    }
}

/// Runs one hydrator call in a `grpc_client` span (the trace it carries) and records its
/// latency in `huddle_grpc_client_seconds{method, code}`; a call given up before it
/// answered (the join's deadline passed) is recorded as `Cancelled`.
async fn observed_call<T>(
    method: &'static str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    use tracing::Instrument as _;
    let mut observation = CallObservation { method, started: std::time::Instant::now(), code: tonic::Code::Cancelled };
    let result = call.instrument(tracing::info_span!("grpc_client", rpc.method = method)).await;
    observation.code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    result
}

/// Records one call when dropped: after its answer, or when the caller gave up on it.
struct CallObservation {
    method: &'static str,
    started: std::time::Instant,
    code: tonic::Code,
}

impl Drop for CallObservation {
    fn drop(&mut self) {
        GRPC_CLIENT_SECONDS.record(
            huddle_telemetry::metrics::elapsed(self.started),
            &[KeyValue::new("method", self.method), KeyValue::new("code", format!("{:?}", self.code))],
        );
    }
}

/// A message the room took (or had already taken, for a repeated client_id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The seq the message has in the room.
    pub seq: u64,
    /// The sender had already used this client_id here: `seq` is the original message's.
    pub duplicate: bool,
}

/// Room operations shared by the REST API and the sockets.
#[derive(Clone)]
pub struct RoomService {
    log: RoomLog,
    hydrator: Hydrator,
    flushes: FlushRequester,
    flush_backlog: u64,
    deadline: Duration,
}

impl RoomService {
    /// What Redis holds of each room's activity (the room directory).
    pub async fn summaries(&self, rooms: &[RoomName]) -> Result<Vec<huddle_roomlog::RoomSummary>, ApiError> {
        self.log.summaries(rooms).await.map_err(ApiError::unavailable)
    }

    /// `flush_backlog`: queue a flush each time a room's unpersisted count reaches a
    /// multiple of this. `deadline`: the longest a room may take to become ready.
    pub fn new(
        log: RoomLog,
        hydrator: Hydrator,
        flushes: FlushRequester,
        flush_backlog: u64,
        deadline: Duration,
    ) -> Self {
        Self { log, hydrator, flushes, flush_backlog: flush_backlog.max(1), deadline }
    }

    /// The same service over another connection pool to the same Redis.
    pub fn with_log(&self, log: RoomLog) -> Self {
        Self { log, ..self.clone() }
    }

    /// Makes sure Redis holds the room's counter, checked against the archive on this
    /// Redis process, hydrating or re-checking it through the hydrator if not.
    /// Answers within the deadline, or refuses with `unavailable` (503, Retry-After).
    pub async fn ensure_ready(&self, room: &RoomName) -> Result<(), ApiError> {
        self.hydrate_unless(room, |readiness| matches!(readiness, Readiness::Ready { .. })).await
    }

    /// Makes sure Redis holds the room at all, restoring it from the archive if Redis lost
    /// it; a room Redis holds is left as it is, even if not yet re-checked on this Redis
    /// process (a re-check starts a new epoch: the next write does it, and its reset tells
    /// each socket whether its view survived).
    pub async fn ensure_held(&self, room: &RoomName) -> Result<(), ApiError> {
        self.hydrate_unless(room, |readiness| !matches!(readiness, Readiness::Missing)).await
    }

    async fn hydrate_unless(&self, room: &RoomName, enough: fn(&Readiness) -> bool) -> Result<(), ApiError> {
        let ready = async {
            if enough(&self.log.readiness(room).await.map_err(ApiError::unavailable)?) {
                return Ok(());
            }
            // Boxed, like every gRPC call here: a tonic call's future is kilobytes, and
            // unboxed it would sit inside every socket's task for the socket's whole life.
            let mut hydrator = self.hydrator.clone();
            let call = hydrator.hydrate_room(HydrateRoomRequest { room: room.to_string() });
            Box::pin(observed_call("huddle.v1.Hydrator/HydrateRoom", call))
                .await
                .map_err(|status| ApiError::unavailable(format!("hydrator: {}", status.message())))?;
            Ok(())
        };
        tokio::time::timeout(self.deadline, ready)
            .await
            .map_err(|_| ApiError::unavailable(format!("room {room} was not ready within {:?}", self.deadline)))?
    }

    /// Appends a message. If Redis lost the room since the join, it is hydrated again
    /// first, so seq continues from the archive instead of restarting at 1.
    #[tracing::instrument(name = "append", skip_all)]
    pub async fn append(&self, room: &RoomName, entry: &Post) -> Result<Accepted, ApiError> {
        let started = std::time::Instant::now();
        let mut outcome = self.log.append(room, entry).await.map_err(ApiError::unavailable)?;
        if outcome == AppendOutcome::NotReady {
            self.ensure_ready(room).await?;
            outcome = self.log.append(room, entry).await.map_err(ApiError::unavailable)?;
        }
        APPEND_SECONDS.record(huddle_telemetry::metrics::elapsed(started), &[]);
        huddle_failpoints::crash_point!("gateway::appended");
        match outcome {
            AppendOutcome::Appended { seq, unpersisted } => {
                MESSAGES_ACCEPTED.add(1, &[]);
                if unpersisted % self.flush_backlog == 0 {
                    self.flushes.request(room, "backlog");
                }
                Ok(Accepted { seq, duplicate: false })
            }
            AppendOutcome::Duplicate { seq } => Ok(Accepted { seq, duplicate: true }),
            AppendOutcome::NotReady => Err(ApiError::unavailable("room could not be initialised")),
        }
    }

    /// Where the room stands in Redis (counter, epoch).
    pub async fn state(&self, room: &RoomName) -> Result<huddle_roomlog::RoomState, ApiError> {
        self.log.state(room).await.map_err(ApiError::unavailable)
    }

    /// The newest `limit` messages from Redis, oldest first.
    pub async fn latest(&self, room: &RoomName, limit: usize) -> Result<Vec<StoredMessage>, ApiError> {
        self.log.recent(room, limit).await.map_err(ApiError::unavailable)
    }

    /// Everything Redis holds above `after`, in order, and what the read covered.
    pub async fn since(&self, room: &RoomName, after: u64) -> Result<(Vec<StoredMessage>, Held), ApiError> {
        self.log.range(room, after + 1, u64::MAX).await.map_err(ApiError::unavailable)
    }

    /// Every message with seq > `after`, in order: from Redis, and from the archive
    /// (through the hydrator) for whatever Redis no longer holds. `None` when more than
    /// `max` messages were missed: the caller sends the latest history instead.
    pub async fn missed_since(
        &self,
        room: &RoomName,
        after: u64,
        max: u64,
    ) -> Result<Option<Vec<StoredMessage>>, ApiError> {
        let last_seq = self.log.state(room).await.map_err(ApiError::unavailable)?.last_seq;
        // Below `after`: Redis lost seqs the client saw, and they are being reused.
        if last_seq < after || last_seq - after > max {
            return Ok(None);
        }
        let (mut missed, held) = self.since(room, after).await?;
        let mut floor = held.lowest_seq.unwrap_or(last_seq + 1);
        while floor > after + 1 {
            let (page, _) = self.history_page(room, floor, 200).await?;
            let older: Vec<StoredMessage> = page.into_iter().filter(|m| m.seq > after && m.seq < floor).collect();
            let Some(first) = older.first() else {
                // The archive has nothing there either: those seqs were lost with Redis.
                break;
            };
            floor = first.seq;
            missed.splice(0..0, older);
        }
        Ok(Some(missed))
    }

    /// A page of older history: from Redis while it holds the page, continued through the
    /// hydrator (PostgreSQL) below Redis's oldest entry. Pages Redis holds are thus served
    /// while the hydrator is down, and cost one Redis read instead of a gRPC call.
    pub async fn history_page(
        &self,
        room: &RoomName,
        before: u64,
        limit: u32,
    ) -> Result<(Vec<StoredMessage>, bool), ApiError> {
        let len = huddle_domain::page_len(limit);
        let (from_redis, held) = self.log.before(room, before, len).await.map_err(ApiError::unavailable)?;
        let older = match huddle_domain::page_remainder(before, len, held) {
            None => Vec::new(),
            Some(rest) => {
                let mut hydrator = self.hydrator.clone();
                let request =
                    GetHistoryRequest { room: room.to_string(), before_seq: rest.before_seq, limit: rest.count as u32 };
                let older = Box::pin(observed_call("huddle.v1.Hydrator/GetHistory", hydrator.get_history(request)))
                    .await
                    .map_err(|status| ApiError::unavailable(format!("hydrator: {}", status.message())))?
                    .into_inner();
                older.messages.into_iter().map(StoredMessage::from).collect()
            }
        };
        Ok(huddle_domain::join_page(older, from_redis, held))
    }

    /// Records a socket joining, refreshing or leaving the room's presence. A user's first
    /// socket in and last socket out are announced to the room; the last socket out of the
    /// room queues its flush. `None` if Redis could not be reached (presence is best-effort).
    pub async fn presence(&self, room: &RoomName, change: PresenceChange, socket: &Presence) -> Option<RoomPresence> {
        let presence = match self.log.presence(room, change, socket, PRESENCE_TTL_MS).await {
            Ok(presence) => presence,
            Err(error) => {
                // The sweep flushes the room anyway; presence catches up on the next change.
                tracing::warn!(%room, %error, "presence not updated");
                return None;
            }
        };
        let event = match change {
            // A refresh counts sockets only when it had to re-add its own (Redis lost the
            // room's presence): its user is then announced again.
            PresenceChange::Join | PresenceChange::Refresh if presence.user_sockets == Some(1) => {
                Some(PresenceEvent::Joined)
            }
            PresenceChange::Leave if presence.user_sockets == Some(0) => Some(PresenceEvent::Left),
            _ => None,
        };
        let own = event.map(|event| (event, socket.user_id, socket.user_name.as_str()));
        // Users whose gateway stopped refreshing them (it crashed) leave as well.
        let expired = presence.expired_users.iter().map(|(id, name)| (PresenceEvent::Left, *id, name.as_str()));
        for (event, user_id, user_name) in expired.chain(own) {
            let frame = protocol::presence_change_frame(room, event, user_id, user_name);
            if let Err(error) = self.log.publish_ephemeral(room, &format!("{PRESENCE_PREFIX}{frame}")).await {
                tracing::warn!(%room, %error, "presence not announced");
            }
        }
        if change == PresenceChange::Leave && presence.sockets == 0 {
            self.flushes.request(room, "room_empty");
        }
        Some(presence)
    }

    /// Publishes a typing notice to the room (not stored).
    pub async fn typing(&self, room: &RoomName, frame: &str) -> Result<(), ApiError> {
        self.log
            .publish_ephemeral(room, &format!("{}{frame}", crate::hub::TYPING_PREFIX))
            .await
            .map_err(ApiError::unavailable)
    }
}
