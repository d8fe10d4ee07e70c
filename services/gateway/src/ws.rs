//! One WebSocket connection in one room: history on join, then live messages, sends,
//! typing, history pages and keep-alive, until either side closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use futures_util::StreamExt;
use tracing::Instrument;
use serde::Deserialize;
use huddle_domain::{validate_client_id, LogEntry, MessageBody, RoomName};

use crate::abort::ConnectionAbort;
use crate::api::ApiError;
use crate::auth::{AuthUser, Claims};
use crate::hub::{Membership, Outbound};
use crate::metrics::{CLIENT_ERRORS, CONNECTIONS, STUCK_RESETS};
use crate::rooms::Accepted;
use huddle_roomlog::{Presence, PresenceChange};
use crate::protocol::{self, ClientFrame, HistoryMode, PresenceEvent, CLOSE_SERVICE_RESTART, CLOSE_SLOW_CONSUMER};
use crate::AppState;

/// Largest frame a client may send; bigger ones close the socket with 1009.
const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Server pings this often; a client silent for `CLIENT_TIMEOUT` is dropped.
const HEARTBEAT: Duration = Duration::from_secs(20);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the closing handshake may take (our Close queued and the connection gone)
/// before the connection is reset instead.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Most messages a reconnect with `since` recovers; further behind, the client gets the
/// latest history instead (and can tell by its `mode`).
const MAX_RECOVERY: u64 = 10_000;
/// Messages per `history` frame during recovery.
const RECOVERY_FRAME: usize = 500;

/// Query of the upgrade request (`token` is read by the auth extractor).
#[derive(Debug, Deserialize)]
pub struct JoinQuery {
    /// The last seq the client has: the server sends exactly what came after it.
    pub since: Option<u64>,
}

/// `GET /ws/rooms/{room}`: checks room, session and Origin, hydrates the room if Redis
/// lacks it, then upgrades. Refusals are HTTP errors with a JSON body.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    room: web::Path<String>,
    query: web::Query<JoinQuery>,
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let room = RoomName::parse(&room)?;
    check_origin(&req, &state.settings.allowed_origins)?;
    state.rooms.ensure_ready(&room).await?;
    let (response, session, stream) = actix_ws::handle(&req, body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let stream = stream.max_frame_size(MAX_FRAME_BYTES).aggregate_continuations().max_continuation_size(MAX_FRAME_BYTES);
    let abort = req.conn_data::<ConnectionAbort>().map(ConnectionAbort::downgrade).unwrap_or_default();
    let span = tracing::info_span!("socket", %room, user_id = user.0.uid);
    actix_web::rt::spawn(run(state.into_inner(), user.0, room, query.since, session, stream, abort).instrument(span));
    Ok(response)
}

/// Browsers send Origin; it must be the gateway's own host or an allowed origin.
/// Non-browser clients send none and are let through (they hold a token anyway).
fn check_origin(req: &HttpRequest, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(actix_web::http::header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().map_err(|_| ApiError::OriginNotAllowed)?;
    let host = req.connection_info().host().to_owned();
    let same_host = origin.split_once("://").is_some_and(|(_, rest)| rest == host);
    if same_host || allowed.iter().any(|a| a == origin || a == "*") {
        Ok(())
    } else {
        Err(ApiError::OriginNotAllowed)
    }
}

/// Per-connection send rate limit (token bucket).
struct RateLimit {
    tokens: f64,
    last: Instant,
    per_sec: f64,
    burst: f64,
}

impl RateLimit {
    fn new(per_sec: f64, burst: f64) -> Self {
        Self { tokens: burst, last: Instant::now(), per_sec, burst }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Connection {
    state: Arc<AppState>,
    user: Claims,
    room: RoomName,
    session: Session,
    /// Highest seq sent to this client: live messages at or below it are duplicates.
    last_seq: u64,
    rate: RateLimit,
    /// Longest a frame may wait to be taken by the socket before the client counts as stuck.
    write_timeout: Duration,
    abort: crate::abort::AbortHandle,
}

/// Why the connection loop ended.
enum Exit {
    /// The connection is gone (the peer vanished, or the close handshake is done).
    ClientClosed,
    /// The client sent a Close frame: answer it with one (RFC 6455 §5.5.1).
    ClientClose(Option<CloseReason>),
    /// The server closes the connection for this reason.
    Close(CloseReason),
    /// A frame could not be written within the write timeout: the client does not read.
    Stuck,
}

fn close(code: CloseCode, description: &str) -> Exit {
    Exit::Close(CloseReason { code, description: Some(description.to_owned()) })
}

async fn run(
    state: Arc<AppState>,
    user: Claims,
    room: RoomName,
    since: Option<u64>,
    session: Session,
    mut stream: actix_ws::AggregatedMessageStream,
    abort: crate::abort::AbortHandle,
) {
    let write_timeout = state.settings.write_timeout();
    let mut membership = match state.hub.join(&room).await {
        Ok(membership) => membership,
        Err(error) => {
            tracing::error!(%room, %error, "cannot subscribe to room");
            let reason = CloseReason { code: CloseCode::Error, description: Some("unavailable".into()) };
            close_connection(session, &mut stream, Some(reason), &abort).await;
            return;
        }
    };
    CONNECTIONS.inc();
    tracing::debug!(%room, user_id = user.uid, "socket joined");
    let me = Presence { socket: uuid::Uuid::new_v4().simple().to_string(), user_id: user.uid, user_name: user.name.clone() };
    let online = state.rooms.presence(&room, PresenceChange::Join, &me).await.map(|p| p.online);
    let rate = RateLimit::new(state.settings.send_rate, state.settings.send_burst);
    let mut conn = Connection {
        state: Arc::clone(&state),
        user,
        room: room.clone(),
        session,
        last_seq: 0,
        rate,
        write_timeout,
        abort,
    };

    let exit = match conn.send_initial_history(since).await {
        Ok(()) => match conn.send_text(protocol::presence_frame(&room, PresenceEvent::Snapshot, None, &online.unwrap_or_default())).await {
            Ok(()) => conn.serve(&mut stream, &mut membership, &me).await,
            Err(exit) => exit,
        },
        Err(exit) => exit,
    };
    match exit {
        Exit::ClientClosed => conn.abort.abort_later(),
        Exit::ClientClose(reason) => close_connection(conn.session.clone(), &mut stream, Some(answer_to(reason)), &conn.abort).await,
        Exit::Close(reason) => close_connection(conn.session.clone(), &mut stream, Some(reason), &conn.abort).await,
        Exit::Stuck => {
            STUCK_RESETS.inc();
            tracing::info!(%room, timeout_ms = write_timeout.as_millis() as u64, "client stopped reading; connection reset");
            conn.abort.abort();
        }
    }
    tracing::debug!(%room, "socket left");
    state.hub.leave(&room, membership.id).await;
    state.rooms.presence(&room, PresenceChange::Leave, &me).await;
    CONNECTIONS.dec();
}

/// The close code answering a client's Close: its own code (RFC 6455 §5.5.1), or 1000
/// when it sent none. (Close frames with codes not allowed on the wire never get here:
/// the frame decoder refuses them as a protocol error.)
fn answer_to(reason: Option<CloseReason>) -> CloseReason {
    CloseReason { code: reason.map_or(CloseCode::Normal, |r| r.code), description: None }
}

/// The closing handshake: queue our Close, then wait for the connection to end. A peer
/// that cannot take the Close, or does not finish within [`CLOSE_GRACE`], is reset.
async fn close_connection(
    session: Session,
    stream: &mut actix_ws::AggregatedMessageStream,
    reason: Option<CloseReason>,
    abort: &crate::abort::AbortHandle,
) {
    let handshake = async {
        if session.close(reason).await.is_err() {
            return;
        }
        // Frames after our Close are ignored; the stream ends when the connection does.
        while stream.next().await.is_some() {}
    };
    if tokio::time::timeout(CLOSE_GRACE, handshake).await.is_err() {
        abort.abort();
    } else {
        // The stream ended when actix finished the response body, i.e. after it wrote
        // our Close (on this same worker thread): the connection can end now.
        abort.finish();
    }
}

impl Connection {
    /// Hands one frame to the socket, within the write timeout.
    async fn send_text(&mut self, text: String) -> Result<(), Exit> {
        match tokio::time::timeout(self.write_timeout, self.session.text(text)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_closed)) => Err(Exit::ClientClosed),
            Err(_elapsed) => Err(Exit::Stuck),
        }
    }



    /// A ping (or the pong answering one), within the write timeout.
    async fn within_write_timeout(&mut self, ping: bool, payload: &[u8]) -> Result<(), Exit> {
        let session = &mut self.session;
        let sent = async move { if ping { session.ping(payload).await } else { session.pong(payload).await } };
        match tokio::time::timeout(self.write_timeout, sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_closed)) => Err(Exit::ClientClosed),
            Err(_elapsed) => Err(Exit::Stuck),
        }
    }

    async fn send_error(&mut self, frame: String, code: &str) -> Result<(), Exit> {
        CLIENT_ERRORS.with_label_values(&[code]).inc();
        self.send_text(frame).await
    }

    /// The first frames: what the client missed since `since`, or the latest history.
    async fn send_initial_history(&mut self, since: Option<u64>) -> Result<(), Exit> {
        let unavailable = |error: ApiError| {
            tracing::error!(%error, "cannot read history");
            close(CloseCode::Error, "unavailable")
        };
        if let Some(since) = since {
            if let Some(missed) = self.state.rooms.missed_since(&self.room, since, MAX_RECOVERY).await.map_err(unavailable)? {
                self.last_seq = missed.last().map_or(since, |m| m.seq);
                let mut frames = missed.chunks(RECOVERY_FRAME).peekable();
                if frames.peek().is_none() {
                    return self.send_text(protocol::history_frame(&self.room, HistoryMode::Since, &[], since > 1)).await;
                }
                for frame in frames {
                    let has_more = frame.first().is_some_and(|m| m.seq > 1);
                    self.send_text(protocol::history_frame(&self.room, HistoryMode::Since, frame, has_more)).await?;
                }
                return Ok(());
            }
        }
        let latest = self.state.rooms.latest(&self.room, self.state.settings.join_history).await.map_err(unavailable)?;
        self.last_seq = latest.last().map_or(0, |m| m.seq);
        let has_more = latest.first().is_some_and(|m| m.seq > 1);
        self.send_text(protocol::history_frame(&self.room, HistoryMode::Latest, &latest, has_more)).await
    }

    async fn serve(&mut self, stream: &mut actix_ws::AggregatedMessageStream, membership: &mut Membership, me: &Presence) -> Exit {
        let mut shutdown = self.state.shutdown.clone();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut last_heard = Instant::now();
        loop {
            let step = tokio::select! {
                frame = stream.next() => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(AggregatedMessage::Text(text))) => self.on_text(&text).await,
                        Some(Ok(AggregatedMessage::Binary(_))) => {
                            self.send_error(protocol::error_frame("binary_unsupported", "send JSON text frames"), "binary_unsupported").await
                        }
                        Some(Ok(AggregatedMessage::Ping(bytes))) => self.within_write_timeout(false, &bytes).await,
                        Some(Ok(AggregatedMessage::Pong(_))) => Ok(()),
                        Some(Ok(AggregatedMessage::Close(reason))) => Err(Exit::ClientClose(reason)),
                        None => Err(Exit::ClientClosed),
                        Some(Err(actix_ws::ProtocolError::Overflow)) => Err(close(CloseCode::Size, "frame too large")),
                        Some(Err(actix_ws::ProtocolError::Io(error))) if error.kind() == std::io::ErrorKind::InvalidData => {
                            Err(close(CloseCode::Invalid, "text frame is not valid UTF-8"))
                        }
                        Some(Err(error)) => Err(close(CloseCode::Protocol, &error.to_string())),
                    }
                }
                outbound = membership.rx.recv() => match outbound {
                    Some(outbound) => self.on_outbound(outbound).await,
                    None => Err(close(CloseCode::Other(CLOSE_SLOW_CONSUMER), "slow consumer: outgoing queue overflowed")),
                },
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > CLIENT_TIMEOUT {
                        Err(close(CloseCode::Policy, "heartbeat timeout"))
                    } else {
                        self.state.rooms.presence(&self.room, PresenceChange::Refresh, me).await;
                        self.within_write_timeout(true, b"").await
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => {
                    Err(close(CloseCode::Other(CLOSE_SERVICE_RESTART), "server restarting; reconnect"))
                }
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    async fn on_outbound(&mut self, outbound: Outbound) -> Result<(), Exit> {
        match outbound {
            Outbound::Message { seq, frame } if seq > self.last_seq => {
                self.last_seq = seq;
                self.send_text(frame.to_string()).await
            }
            Outbound::Message { .. } => Ok(()),
            Outbound::Typing { user_id, frame } if user_id != self.user.uid => self.send_text(frame.to_string()).await,
            Outbound::Typing { .. } => Ok(()),
            Outbound::Presence { frame } => self.send_text(frame.to_string()).await,
            Outbound::Resync => self.resync().await,
            // Redis lost the room and seq restarts below what this client saw: the
            // client gets a fresh `latest` history to replace its view.
            Outbound::Reset { seq } if seq < self.last_seq => self.send_initial_history(None).await,
            Outbound::Reset { .. } => Ok(()),
        }
    }

    /// Sends whatever the log holds above the last seq sent (after a pub/sub outage).
    async fn resync(&mut self) -> Result<(), Exit> {
        let missed = match self.state.rooms.since(&self.room, self.last_seq).await {
            Ok(missed) => missed,
            Err(error) => {
                tracing::warn!(room = %self.room, %error, "resync failed");
                return Ok(());
            }
        };
        for message in missed {
            if message.seq > self.last_seq {
                self.last_seq = message.seq;
                self.send_text(protocol::message_frame(&self.room, &message).to_string()).await?;
            }
        }
        Ok(())
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Exit> {
        let frame = match protocol::parse_client_frame(text) {
            Ok(frame) => frame,
            Err(error) => {
                let code = match error {
                    protocol::FrameError::BadJson(_) => "bad_json",
                    protocol::FrameError::UnknownType(_) => "unknown_type",
                    protocol::FrameError::BadFrame(_) => "bad_frame",
                };
                return self.send_error(error.to_event(), code).await;
            }
        };
        match frame {
            ClientFrame::Send { body, client_id } => self.on_send(body, client_id).await,
            ClientFrame::Typing {} => {
                let frame = protocol::typing_frame(&self.room, self.user.uid, &self.user.name);
                if let Err(error) = self.state.rooms.typing(&self.room, &frame).await {
                    tracing::debug!(%error, "typing notice dropped");
                }
                Ok(())
            }
            ClientFrame::History { before_seq, limit } => {
                match self.state.rooms.history_page(&self.room, before_seq, limit).await {
                    Ok((messages, has_more)) => {
                        self.send_text(protocol::history_frame(&self.room, HistoryMode::Page, &messages, has_more)).await
                    }
                    Err(error) => self.send_error(protocol::error_frame(error.code(), &error.to_string()), error.code()).await,
                }
            }
            ClientFrame::Ping {} => self.send_text(protocol::pong_frame()).await,
        }
    }

    #[tracing::instrument(name = "send", skip_all, fields(client_id = %client_id))]
    async fn on_send(&mut self, body: String, client_id: String) -> Result<(), Exit> {
        if let Err(error) = validate_client_id(&client_id) {
            return self.send_error(protocol::send_error_frame(error.code(), &error.to_string(), ""), error.code()).await;
        }
        let body = match MessageBody::parse(body) {
            Ok(body) => body,
            Err(error) => {
                return self.send_error(protocol::send_error_frame(error.code(), &error.to_string(), &client_id), error.code()).await;
            }
        };
        if !self.rate.allow() {
            let frame = protocol::send_error_frame("rate_limited", "too many messages; slow down", &client_id);
            return self.send_error(frame, "rate_limited").await;
        }
        let entry = LogEntry {
            user_id: self.user.uid,
            user_name: self.user.name.clone(),
            body: body.into_inner(),
            sent_at_ms: huddle_domain::now_ms(),
            client_id,
        };
        match self.state.rooms.append(&self.room, &entry).await {
            Ok(Accepted { seq, duplicate }) => self.send_text(protocol::ack_frame(&entry.client_id, seq, duplicate)).await,
            Err(error) => {
                let frame = protocol::send_error_frame(error.code(), &error.to_string(), &entry.client_id);
                self.send_error(frame, error.code()).await
            }
        }
    }
}
