//! The REST API: accounts, rooms, history pages. Every error is a JSON body
//! `{"error": {"code": "...", "message": "..."}}` with a fitting status ([`ApiError`]).

use actix_web::body::MessageBody;
use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PayloadError};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use huddle_domain::{validate_password, RoomName, StoredMessage, Username};
use serde::{Deserialize, Serialize};

use crate::auth::{now_secs, AuthUser, Claims, SESSION_COOKIE};
use crate::error::ApiError;
use crate::protocol::MessageView;
use crate::AppState;
use huddle_archive::accounts::Account;

/// The most rooms `GET /api/rooms` lists.
const ROOM_LIST_LIMIT: usize = 500;

/// Routes under `/api`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api")
            .wrap(actix_web::middleware::from_fn(body_deadline))
            .route("/register", web::post().to(register))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/me", web::get().to(me))
            .route("/rooms", web::get().to(rooms))
            .route("/rooms/{room}/messages", web::get().to(messages)),
    );
}

/// Gives an API request's body `HUDDLE_BODY_TIMEOUT_MS` to arrive: a client that
/// announces a body and never sends it would otherwise hold its connection for ever. (Not
/// on the WebSocket route: there the "body" is the socket's life.)
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(limit) = req.app_data::<web::Data<AppState>>().map(|state| state.settings.body_timeout()) {
        let deadline = tokio::time::Instant::now() + limit;
        let body = futures_util::stream::unfold(Some(req.take_payload()), move |payload| async move {
            let mut payload = payload?;
            match tokio::time::timeout_at(deadline, payload.next()).await {
                Ok(chunk) => chunk.map(|chunk| (chunk, Some(payload))),
                Err(_) => Some((Err(PayloadError::Io(std::io::ErrorKind::TimedOut.into())), None)),
            }
        });
        let body: std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<web::Bytes, PayloadError>>>> =
            Box::pin(body);
        req.set_payload(Payload::from(body));
    }
    next.call(req).await
}

/// Whether a body could not be read because it did not arrive in time ([`body_deadline`]).
fn timed_out(error: &PayloadError) -> bool {
    matches!(error, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// The body of register and login.
#[derive(Debug, Deserialize)]
pub struct Credentials {
    /// The name, before normalisation.
    pub username: String,
    /// The password, as typed.
    pub password: String,
}

#[derive(Serialize)]
struct UserBody<'a> {
    id: i64,
    username: &'a str,
}

/// Refuses a sign-up or login posted from another site, then spends one of the client
/// address's sign-ups and logins.
fn admit_auth(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    crate::page::check_origin(req, &state.settings.allowed_origins)?;
    let Some(peer) = req.peer_addr() else { return Ok(()) };
    let forwarded_for = req.headers().get("x-forwarded-for").and_then(|value| value.to_str().ok());
    let address = crate::limits::client_address(peer.ip(), forwarded_for, &state.settings.trusted_proxies);
    state.limits.admit_auth(address)
}

async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    admit_auth(&state, &req)?;
    let Credentials { username, password } = body.into_inner();
    let username = Username::parse(&username)?;
    validate_password(&password)?;
    let hash = state.passwords.hash(password).await?;
    let id = state.archive.create_account(&username, &hash).await.map_err(ApiError::unavailable)?;
    let id = id.ok_or(ApiError::UsernameTaken)?;
    tracing::info!(user_id = id, username = username.as_str(), "user registered");
    Ok(HttpResponse::Created().json(serde_json::json!({ "user": UserBody { id, username: username.as_str() } })))
}

async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    admit_auth(&state, &req)?;
    let Credentials { username, password } = body.into_inner();
    // A name that could never be registered has no account: no need to hash for it.
    let username = Username::parse(&username).map_err(|_| ApiError::BadCredentials)?;
    // Failed logins count per account, whatever its name's case, on every gateway.
    let attempts_of = username.as_str().to_lowercase();
    if let Some(lock) = state.log.login_lock(&attempts_of).await.map_err(ApiError::unavailable)? {
        return Err(ApiError::LoginLocked(lock));
    }
    let account = state.archive.find_account(&username).await.map_err(ApiError::unavailable)?;
    let verified = match account {
        Some(Account { id, username: name, password_hash }) => {
            state.passwords.verify(password, password_hash).await?.then_some((id, name))
        }
        None => {
            // Same work as a wrong password, so response time does not reveal which names exist.
            state.passwords.verify(password, state.passwords.dummy_hash().await?).await?;
            None
        }
    };
    let Some((id, name)) = verified else {
        let lock = state.log.login_failed(&attempts_of, &state.settings.login_backoff()).await;
        if let Some(lock) = lock.map_err(ApiError::unavailable)? {
            tracing::warn!(
                username = username.as_str(),
                lock_secs = lock.as_secs_f64(),
                "logins locked after failures"
            );
        }
        return Err(ApiError::BadCredentials);
    };
    state.log.login_succeeded(&attempts_of).await.map_err(ApiError::unavailable)?;
    let claims = Claims {
        uid: id,
        name: name.clone(),
        exp: now_secs() + state.settings.session_ttl_secs as i64,
        jti: uuid::Uuid::new_v4().simple().to_string(),
    };
    let token = state.signer.sign(&claims);
    let cookie = Cookie::build(SESSION_COOKIE, token.clone())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.settings.cookie_secure)
        .max_age(CookieDuration::seconds(state.settings.session_ttl_secs as i64))
        .finish();
    Ok(HttpResponse::Ok().cookie(cookie).json(serde_json::json!({
        "token": token,
        "expires_at": huddle_domain::rfc3339_from_ms(claims.exp * 1000),
        "user": UserBody { id, username: &name },
    })))
}

async fn logout(state: web::Data<AppState>, req: HttpRequest, user: AuthUser) -> Result<HttpResponse, ApiError> {
    crate::page::check_origin(&req, &state.settings.allowed_origins)?;
    crate::auth::end_session(&state, &user.0).await?;
    let mut removal = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    removal.make_removal();
    Ok(HttpResponse::NoContent().cookie(removal).finish())
}

async fn me(user: AuthUser) -> HttpResponse {
    HttpResponse::Ok().json(UserBody { id: user.0.uid, username: &user.0.name })
}

/// One room of `GET /api/rooms`' `directory`.
#[derive(Serialize)]
struct DirectoryEntry {
    name: String,
    /// The room's newest seq (Redis's counter, or the archive's for a room Redis does not
    /// hold): a client's unread count is this minus the last seq it read.
    last_seq: u64,
    /// When its newest message was sent (RFC 3339), if it has one.
    last_message_at: Option<String>,
    /// People with a live socket in it.
    online: usize,
}

async fn rooms(state: web::Data<AppState>, _user: AuthUser) -> Result<HttpResponse, ApiError> {
    let archived = state.archive.rooms(ROOM_LIST_LIMIT).await.map_err(ApiError::unavailable)?;
    // Names in the archive are valid room names; one that is not is listed, unsummarised.
    let parsed: Vec<Option<RoomName>> = archived.iter().map(|room| RoomName::parse(&room.name).ok()).collect();
    let summarised: Vec<RoomName> = parsed.iter().flatten().cloned().collect();
    let mut summaries = state.rooms.summaries(&summarised).await?.into_iter();
    let directory: Vec<DirectoryEntry> = archived
        .iter()
        .zip(&parsed)
        .map(|(room, name)| {
            let summary = name.as_ref().and_then(|_| summaries.next()).unwrap_or_default();
            let last_sent_at_ms = summary.last_sent_at_ms.or(room.last_message_at_ms);
            DirectoryEntry {
                name: room.name.clone(),
                last_seq: summary.last_seq.unwrap_or(room.persisted_seq).max(room.persisted_seq),
                last_message_at: last_sent_at_ms.map(huddle_domain::rfc3339_from_ms),
                online: summary.online,
            }
        })
        .collect();
    let names: Vec<&str> = archived.iter().map(|room| room.name.as_str()).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "rooms": names, "directory": directory })))
}

/// Query of a history page (`?before=…&limit=…`).
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// Messages with a seq below this; 0 (the default) for the newest.
    #[serde(default)]
    pub before: u64,
    /// How many; 0 (the default) means 50, and at most 200 come back.
    #[serde(default)]
    pub limit: u32,
}

async fn messages(
    state: web::Data<AppState>,
    _user: AuthUser,
    room: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let room = RoomName::parse(&room)?;
    let (messages, has_more) = state.rooms.history_page(&room, query.before, query.limit).await?;
    Ok(HttpResponse::Ok().json(page_body(&room, &messages, has_more)))
}

/// JSON body of a history page (REST).
pub fn page_body(room: &RoomName, messages: &[StoredMessage], has_more: bool) -> serde_json::Value {
    serde_json::json!({
        "room": room.as_str(),
        "messages": messages.iter().map(|m| MessageView::new(room, m)).collect::<Vec<_>>(),
        "has_more": has_more,
    })
}

/// Turns actix's extractor errors (bad JSON body, bad query) into JSON error bodies.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().limit(16 * 1024).error_handler(|error, _| match error {
        JsonPayloadError::Payload(payload) if timed_out(&payload) => ApiError::RequestTimeout.into(),
        error => ApiError::BadRequest(error.to_string()).into(),
    })
}

/// See [`json_config`].
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error, _| ApiError::BadRequest(error.to_string()).into())
}

/// JSON 404 for unknown routes.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}
