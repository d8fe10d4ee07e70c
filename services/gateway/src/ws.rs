//! One WebSocket connection in one room: history on join, then live messages, sends,
//! typing, history pages and keep-alive, until either side closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessageStream, CloseCode};
use futures_util::{FutureExt, StreamExt};
use huddle_domain::{validate_client_id, MessageBody, Post, RoomName};
use serde::Deserialize;
use tracing::Instrument;

use crate::auth::{AuthUser, Claims};
use crate::error::ApiError;
use crate::hub::{Membership, Outbound};
use crate::metrics::{CLIENT_ERRORS, CONNECTIONS, SENDS_REFUSED};
use crate::protocol::{
    self, ClientFrame, HistoryMode, CLOSE_SERVICE_RESTART, CLOSE_SESSION_ENDED, CLOSE_SLOW_CONSUMER,
};
use crate::rooms::Accepted;
use crate::socket::{close, Exit, Inbound, SocketWriter};
use crate::AppState;
use huddle_roomlog::{Presence, PresenceChange};
use huddle_telemetry::metrics::KeyValue;

/// Server pings this often; a client silent for `CLIENT_TIMEOUT` is dropped.
const HEARTBEAT: Duration = Duration::from_secs(20);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// The `epoch` of the history the client's view comes from; if the room's epoch
    /// changed since (Redis lost it), `since` is ignored and the latest history is sent.
    pub epoch: Option<i64>,
}

/// `GET /ws/rooms/{room}`: checks room, session and Origin, hydrates the room if Redis
/// lacks it, then upgrades. Refusals are HTTP errors with a JSON body. A trace of its
/// own (`join`), through the hydrator when the room is cold.
#[tracing::instrument(name = "join", skip_all, fields(room = %room))]
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    room: web::Path<String>,
    query: web::Query<JoinQuery>,
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let room = RoomName::parse(&room)?;
    crate::page::check_origin(&req, &state.settings.allowed_origins)?;
    let ticket = state.limits.admit(user.0.uid)?;
    state.rooms.ensure_ready(&room).await?;
    let (response, writer, stream) = crate::socket::open(&req, body, state.settings.write_timeout())?;
    // The socket's life is a trace of its own, linked to the join that opened it.
    let span = tracing::info_span!(parent: None, "socket", %room, user_id = user.0.uid);
    span.follows_from(tracing::Span::current());
    let view = query.since.map(|since| ClientView { since, epoch: query.epoch });
    // The admission ticket is released when the session ends. (An async block awaiting
    // the session would hold the session's future twice: once captured, once running.)
    let session = run(state.into_inner(), user.0, room, view, writer, stream).map(move |()| drop(ticket));
    actix_web::rt::spawn(session.instrument(span));
    Ok(response)
}

/// Where a reconnecting client's view stands.
#[derive(Debug, Clone, Copy)]
struct ClientView {
    since: u64,
    epoch: Option<i64>,
}

struct Connection {
    state: Arc<AppState>,
    user: Claims,
    room: RoomName,
    socket: SocketWriter,
    /// Highest seq sent to this client: live messages at or below it are duplicates.
    last_seq: u64,
    /// The room's Redis epoch when this client's view was built: a different one means
    /// Redis lost the room meanwhile and seqs may have been reused.
    epoch: i64,
    /// This socket's entry in the room's presence.
    me: Presence,
}

async fn run(
    state: Arc<AppState>,
    user: Claims,
    room: RoomName,
    view: Option<ClientView>,
    socket: SocketWriter,
    mut stream: AggregatedMessageStream,
) {
    let hub = match state.hub.get().await {
        Ok(hub) => Arc::clone(hub),
        Err(error) => {
            tracing::error!(%room, %error, "cannot open the pub/sub connection");
            socket.finish(&mut stream, close(CloseCode::Error, "unavailable")).await;
            return;
        }
    };
    let mut membership = match hub.join(&room, &user.jti).await {
        Ok(membership) => membership,
        Err(error) => {
            tracing::error!(%room, %error, "cannot subscribe to room");
            socket.finish(&mut stream, close(CloseCode::Error, "unavailable")).await;
            return;
        }
    };
    CONNECTIONS.add(1, &[]);
    tracing::debug!(%room, user_id = user.uid, "socket joined");
    let me =
        Presence { socket: uuid::Uuid::new_v4().simple().to_string(), user_id: user.uid, user_name: user.name.clone() };
    let online = state.rooms.presence(&room, PresenceChange::Join, &me).await.map(|p| p.online);
    let mut conn =
        Connection { state: Arc::clone(&state), user, room: room.clone(), socket, last_seq: 0, epoch: 0, me };

    let exit = match conn.send_initial_history(view).await {
        Ok(()) => match conn.send_text(protocol::presence_snapshot_frame(&room, &online.unwrap_or_default())).await {
            Ok(()) => conn.serve(&mut stream, &mut membership).await,
            Err(exit) => exit,
        },
        Err(exit) => exit,
    };
    // Leave the room before ending the connection: a graceful shutdown waits for the
    // connection, not for this task, so cleanup after it could be cut short.
    tracing::debug!(%room, "socket left");
    hub.leave(&room, membership.id).await;
    state.rooms.presence(&room, PresenceChange::Leave, &conn.me).await;
    conn.socket.finish(&mut stream, exit).await;
    CONNECTIONS.add(-1, &[]);
}

/// The socket's session is over: close with 4001; the client must log in again.
fn session_ended(reason: &'static str) -> Exit {
    close(CloseCode::Other(CLOSE_SESSION_ENDED), reason)
}

/// The room cannot be read: the client is closed with 1011 and reconnects with `since`.
fn unavailable(what: &str, error: ApiError) -> Exit {
    tracing::warn!(%error, "{what}; closing with 1011 so the client reconnects");
    close(CloseCode::Error, "unavailable")
}

impl Connection {
    async fn send_text(&mut self, text: impl Into<bytestring::ByteString>) -> Result<(), Exit> {
        self.socket.text(text).await
    }

    /// A `send_error` for a send frame: also counted as a refused send.
    async fn refuse_send(&mut self, frame: String, code: &str) -> Result<(), Exit> {
        SENDS_REFUSED.add(1, &[KeyValue::new("code", code.to_owned())]);
        self.send_error(frame, code).await
    }

    async fn send_error(&mut self, frame: String, code: &str) -> Result<(), Exit> {
        CLIENT_ERRORS.add(1, &[KeyValue::new("code", code.to_owned())]);
        self.send_text(frame).await
    }

    /// The first frames: what the client missed since its view, or the latest history
    /// (no view, a view from another epoch, or too far behind).
    async fn send_initial_history(&mut self, view: Option<ClientView>) -> Result<(), Exit> {
        let unavailable = |error| unavailable("cannot read history", error);
        self.epoch = self.state.rooms.state(&self.room).await.map_err(unavailable)?.epoch;
        let current = self.epoch;
        let since = view.filter(|view| view.epoch.is_none_or(|epoch| epoch == current)).map(|view| view.since);
        if let Some(since) = since {
            if let Some(missed) =
                self.state.rooms.missed_since(&self.room, since, MAX_RECOVERY).await.map_err(unavailable)?
            {
                self.last_seq = missed.last().map_or(since, |m| m.seq);
                let mut frames = missed.chunks(RECOVERY_FRAME).peekable();
                if frames.peek().is_none() {
                    return self
                        .send_text(protocol::history_frame(&self.room, HistoryMode::Since, &[], since > 1, self.epoch))
                        .await;
                }
                for frame in frames {
                    let has_more = frame.first().is_some_and(|m| m.seq > 1);
                    self.send_text(protocol::history_frame(
                        &self.room,
                        HistoryMode::Since,
                        frame,
                        has_more,
                        self.epoch,
                    ))
                    .await?;
                }
                return Ok(());
            }
        }
        let latest =
            self.state.rooms.latest(&self.room, self.state.settings.join_history).await.map_err(unavailable)?;
        self.last_seq = latest.last().map_or(0, |m| m.seq);
        let has_more = latest.first().is_some_and(|m| m.seq > 1);
        self.send_text(protocol::history_frame(&self.room, HistoryMode::Latest, &latest, has_more, self.epoch)).await
    }

    async fn serve(&mut self, stream: &mut AggregatedMessageStream, membership: &mut Membership) -> Exit {
        let mut shutdown = self.state.shutdown.clone();
        let session_left = u64::try_from(self.user.exp - crate::auth::now_secs()).unwrap_or(0);
        let session_expires = tokio::time::sleep(Duration::from_secs(session_left));
        tokio::pin!(session_expires);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut last_heard = Instant::now();
        loop {
            let step = tokio::select! {
                frame = stream.next() => {
                    last_heard = Instant::now();
                    match Inbound::from_stream(frame) {
                        Inbound::Text(text) => self.on_text(&text).await,
                        Inbound::Binary(_) => {
                            self.send_error(protocol::error_frame("binary_unsupported", "send JSON text frames"), "binary_unsupported").await
                        }
                        Inbound::Ping(bytes) => self.socket.pong(&bytes).await,
                        Inbound::Pong => Ok(()),
                        Inbound::End(exit) => Err(exit),
                    }
                }
                outbound = membership.rx.recv() => match outbound {
                    // The hub dropped this socket for overflowing its queue: close now
                    // rather than after writing the backlog to a client that lags.
                    Some(_) if membership.rx.is_closed() => {
                        Err(close(CloseCode::Other(CLOSE_SLOW_CONSUMER), "slow consumer: outgoing queue overflowed"))
                    }
                    Some(outbound) => self.on_outbound(outbound).await,
                    None => Err(close(CloseCode::Other(CLOSE_SLOW_CONSUMER), "slow consumer: outgoing queue overflowed")),
                },
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > CLIENT_TIMEOUT {
                        Err(close(CloseCode::Policy, "heartbeat timeout"))
                    } else {
                        self.state.rooms.presence(&self.room, PresenceChange::Refresh, &self.me).await;
                        self.socket.ping(b"").await
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => {
                    Err(close(CloseCode::Other(CLOSE_SERVICE_RESTART), "server restarting; reconnect"))
                }
                () = &mut session_expires => Err(session_ended("session expired; log in again")),
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
                self.send_text(frame).await
            }
            Outbound::Message { .. } => Ok(()),
            Outbound::Typing { user_id, frame } if user_id != self.user.uid => self.send_text(frame).await,
            Outbound::Typing { .. } => Ok(()),
            Outbound::Presence { frame } => self.send_text(frame).await,
            // Rare paths, boxed: their futures would otherwise sit in every socket's
            // task for its whole life (see `serve`).
            Outbound::Resync => Box::pin(self.resync()).await,
            Outbound::SessionEnded => Err(session_ended("session ended (logged out or revoked); log in again")),
            // Redis lost the room and seq restarts below what this client saw: the
            // client gets a fresh `latest` history to replace its view.
            Outbound::Reset { seq } if seq < self.last_seq => Box::pin(self.send_initial_history(None)).await,
            // The client's view is intact (it saw nothing above the new counter), but the
            // room is on a new epoch: an empty `since` history hands the client the new
            // epoch for its next reconnect.
            Outbound::Reset { .. } => {
                let Ok(state) = self.state.rooms.state(&self.room).await else { return Ok(()) };
                if state.epoch == self.epoch {
                    return Ok(());
                }
                self.epoch = state.epoch;
                let frame = protocol::history_frame(&self.room, HistoryMode::Since, &[], self.last_seq > 1, self.epoch);
                self.send_text(frame).await
            }
        }
    }

    /// After a pub/sub outage: sends whatever the log holds above the last seq sent, or a
    /// fresh `latest` history if Redis lost the room meanwhile (a reset published during
    /// the outage was missed). A client whose view cannot be checked is closed with 1011
    /// and reconnects with `since`.
    async fn resync(&mut self) -> Result<(), Exit> {
        let unavailable = |error| unavailable("resync failed", error);
        // A logout announced while pub/sub was down was missed: ask Redis.
        if crate::auth::is_revoked(&self.state, &self.user.jti).await.map_err(unavailable)? {
            return Err(session_ended("session ended (logged out or revoked); log in again"));
        }
        // A Redis that came back empty holds no room yet: restore it from the archive
        // first, or the client would be handed an empty view.
        self.state.rooms.ensure_held(&self.room).await.map_err(unavailable)?;
        // Its presence may be gone with it: re-added now (and re-announced if it was),
        // not at the next heartbeat.
        self.state.rooms.presence(&self.room, PresenceChange::Refresh, &self.me).await;
        let state = self.state.rooms.state(&self.room).await.map_err(unavailable)?;
        if state.epoch != self.epoch || state.last_seq < self.last_seq {
            return self.send_initial_history(None).await;
        }
        // Redis may have trimmed part of what was missed (persisted meanwhile): the archive
        // fills in below it; too far behind, the client gets the latest history.
        let Some(missed) =
            self.state.rooms.missed_since(&self.room, self.last_seq, MAX_RECOVERY).await.map_err(unavailable)?
        else {
            return self.send_initial_history(None).await;
        };
        for message in missed {
            if message.seq > self.last_seq {
                self.last_seq = message.seq;
                self.send_text(protocol::message_frame(&self.room, &message)).await?;
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
            ClientFrame::Typing {} | ClientFrame::Ping {} if !self.state.limits.allow_notice(self.user.uid) => {
                self.send_error(
                    protocol::error_frame("rate_limited", "too many typing notices or pings; slow down"),
                    "rate_limited",
                )
                .await
            }
            ClientFrame::History { .. } if !self.state.limits.allow_history(self.user.uid) => {
                self.send_error(
                    protocol::error_frame("rate_limited", "too many history requests; slow down"),
                    "rate_limited",
                )
                .await
            }
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
                        self.send_text(protocol::history_frame(
                            &self.room,
                            HistoryMode::Page,
                            &messages,
                            has_more,
                            self.epoch,
                        ))
                        .await
                    }
                    Err(error) => {
                        error.log_cause();
                        self.send_error(protocol::error_frame(error.code(), &error.public_message()), error.code())
                            .await
                    }
                }
            }
            ClientFrame::Ping {} => self.send_text(protocol::pong_frame()).await,
        }
    }

    // Each message is a trace of its own (not a span of the socket's long life): the
    // append, the flush it may trigger and the persister's tasks for it join it.
    #[tracing::instrument(name = "send", parent = None, skip_all, fields(room = %self.room, user_id = self.user.uid, client_id = %client_id))]
    async fn on_send(&mut self, body: String, client_id: String) -> Result<(), Exit> {
        if let Err(error) = validate_client_id(&client_id) {
            return self
                .refuse_send(protocol::send_error_frame(error.code(), &error.to_string(), ""), error.code())
                .await;
        }
        let body = match MessageBody::parse(body) {
            Ok(body) => body,
            Err(error) => {
                return self
                    .refuse_send(protocol::send_error_frame(error.code(), &error.to_string(), &client_id), error.code())
                    .await;
            }
        };
        if !self.state.limits.allow_send(self.user.uid) {
            let frame = protocol::send_error_frame("rate_limited", "too many messages; slow down", &client_id);
            return self.refuse_send(frame, "rate_limited").await;
        }
        let entry = Post {
            user_id: self.user.uid,
            user_name: self.user.name.clone(),
            body: body.into_inner(),
            sent_at_ms: huddle_domain::now_ms(),
            client_id,
        };
        match self.state.rooms.append(&self.room, &entry).await {
            Ok(Accepted { seq, duplicate }) => {
                self.send_text(protocol::ack_frame(&entry.client_id, seq, duplicate)).await
            }
            Err(error) => {
                error.log_cause();
                let frame = protocol::send_error_frame(error.code(), &error.public_message(), &entry.client_id);
                self.refuse_send(frame, error.code()).await
            }
        }
    }
}
