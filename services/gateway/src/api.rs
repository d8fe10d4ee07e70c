//! The REST API: accounts, rooms, history pages. Every error is a JSON body
//! `{"error": {"code": "...", "message": "..."}}` with a fitting status ([`ApiError`]).

use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::{web, HttpResponse};
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
            .route("/register", web::post().to(register))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/me", web::get().to(me))
            .route("/rooms", web::get().to(rooms))
            .route("/rooms/{room}/messages", web::get().to(messages)),
    );
}

/// Credentials for register and login.
#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct UserBody<'a> {
    id: i64,
    username: &'a str,
}

async fn register(state: web::Data<AppState>, body: web::Json<Credentials>) -> Result<HttpResponse, ApiError> {
    let Credentials { username, password } = body.into_inner();
    let username = Username::parse(&username)?;
    validate_password(&password)?;
    let hash = state.passwords.hash(password).await?;
    let id = state.archive.create_account(&username, &hash).await.map_err(ApiError::unavailable)?;
    let id = id.ok_or(ApiError::UsernameTaken)?;
    tracing::info!(user_id = id, username = username.as_str(), "user registered");
    Ok(HttpResponse::Created().json(serde_json::json!({ "user": UserBody { id, username: username.as_str() } })))
}

async fn login(state: web::Data<AppState>, body: web::Json<Credentials>) -> Result<HttpResponse, ApiError> {
    let Credentials { username, password } = body.into_inner();
    let account = state.archive.find_account(&username).await.map_err(ApiError::unavailable)?;
    let Some(Account { id, username: name, password_hash }) = account else {
        // Same work as a wrong password, so response time does not reveal which names exist.
        state.passwords.verify(password, state.passwords.dummy_hash().await?).await?;
        return Err(ApiError::BadCredentials);
    };
    if !state.passwords.verify(password, password_hash).await? {
        return Err(ApiError::BadCredentials);
    }
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

async fn logout(state: web::Data<AppState>, user: AuthUser) -> Result<HttpResponse, ApiError> {
    crate::auth::end_session(&state, &user.0).await?;
    let mut removal = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    removal.make_removal();
    Ok(HttpResponse::NoContent().cookie(removal).finish())
}

async fn me(user: AuthUser) -> HttpResponse {
    HttpResponse::Ok().json(UserBody { id: user.0.uid, username: &user.0.name })
}

async fn rooms(state: web::Data<AppState>, _user: AuthUser) -> Result<HttpResponse, ApiError> {
    let names = state.archive.room_names(ROOM_LIST_LIMIT).await.map_err(ApiError::unavailable)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "rooms": names })))
}

/// Query of a history page.
#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    before: u64,
    #[serde(default)]
    limit: u32,
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
    web::JsonConfig::default().limit(16 * 1024).error_handler(|error, _| ApiError::BadRequest(error.to_string()).into())
}

/// See [`json_config`].
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error, _| ApiError::BadRequest(error.to_string()).into())
}

/// JSON 404 for unknown routes.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}
