//! The REST API: accounts, rooms, history pages. Every error is a JSON body
//! `{"error": {"code": "...", "message": "..."}}` with a fitting status.

use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use huddle_domain::{validate_password, RoomName, StoredMessage, Username, ValidationError};
use serde::{Deserialize, Serialize};

use crate::auth::{now_secs, AuthUser, Claims, SESSION_COOKIE};
use crate::protocol::MessageView;
use crate::AppState;

/// An API failure, rendered as a JSON error body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("session expired or revoked; log in again")]
    SessionExpired,
    #[error("wrong username or password")]
    BadCredentials,
    #[error("origin not allowed")]
    OriginNotAllowed,
    #[error("username already taken")]
    UsernameTaken,
    #[error("not found")]
    NotFound,
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Overloaded(&'static str),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// An internal error; the detail is logged, not shown.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::Internal(error.to_string())
    }

    /// A dependency (Redis, PostgreSQL, hydrator) is unavailable.
    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        Self::Unavailable(error.to_string())
    }

    /// Stable machine-readable code (docs/PROTOCOL.md).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(e) => e.code(),
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::SessionExpired => "session_expired",
            Self::BadCredentials => "bad_credentials",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::UsernameTaken => "username_taken",
            Self::NotFound => "not_found",
            Self::Unavailable(_) => "unavailable",
            Self::Overloaded(_) => "overloaded",
            Self::Internal(_) => "internal",
        }
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Invalid(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) | Self::SessionExpired | Self::BadCredentials => StatusCode::UNAUTHORIZED,
            Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::UsernameTaken => StatusCode::CONFLICT,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unavailable(_) | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(detail) | Self::Unavailable(detail) = self {
            tracing::error!(code = self.code(), %detail, "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        if let Self::Unavailable(_) | Self::Overloaded(_) = self {
            // Overload and outages are passing: tell clients when to come back.
            response.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
        }
        response.json(ErrorEnvelope { error: ErrorDetail { code: self.code(), message: self.to_string() } })
    }
}

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
    let client = state.archive.pool().get().await.map_err(ApiError::unavailable)?;
    let row = client
        .query_opt(
            "INSERT INTO users (username, password_hash) VALUES ($1, $2)
             ON CONFLICT (lower(username)) DO NOTHING RETURNING id",
            &[&username.as_str(), &hash],
        )
        .await
        .map_err(ApiError::unavailable)?;
    let id: i64 = row.ok_or(ApiError::UsernameTaken)?.get(0);
    tracing::info!(user_id = id, username = username.as_str(), "user registered");
    Ok(HttpResponse::Created().json(serde_json::json!({ "user": UserBody { id, username: username.as_str() } })))
}

async fn login(state: web::Data<AppState>, body: web::Json<Credentials>) -> Result<HttpResponse, ApiError> {
    let Credentials { username, password } = body.into_inner();
    let client = state.archive.pool().get().await.map_err(ApiError::unavailable)?;
    let row = client
        .query_opt("SELECT id, username, password_hash FROM users WHERE lower(username) = lower($1)", &[&username])
        .await
        .map_err(ApiError::unavailable)?;
    drop(client);
    let Some(row) = row else {
        // Same work as a wrong password, so response time does not reveal which names exist.
        state.passwords.verify(password, state.passwords.dummy_hash().await?).await?;
        return Err(ApiError::BadCredentials);
    };
    let (id, name, stored): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
    if !state.passwords.verify(password, stored).await? {
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
    let ttl = (user.0.exp - now_secs()).max(1) as u64;
    state.log.revoke_token(&user.0.jti, ttl).await.map_err(ApiError::unavailable)?;
    let mut removal = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    removal.make_removal();
    Ok(HttpResponse::NoContent().cookie(removal).finish())
}

async fn me(user: AuthUser) -> HttpResponse {
    HttpResponse::Ok().json(UserBody { id: user.0.uid, username: &user.0.name })
}

async fn rooms(state: web::Data<AppState>, _user: AuthUser) -> Result<HttpResponse, ApiError> {
    let client = state.archive.pool().get().await.map_err(ApiError::unavailable)?;
    let rows =
        client.query("SELECT name FROM rooms ORDER BY name LIMIT 500", &[]).await.map_err(ApiError::unavailable)?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
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
