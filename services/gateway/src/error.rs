//! The gateway's one error type: every refusal of the REST API and of a socket's upgrade,
//! with its stable code (docs/PROTOCOL.md), HTTP status and JSON body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use huddle_domain::ValidationError;
use serde::Serialize;

/// An API failure, rendered as a JSON error body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Input failed validation (username, password, room name, message): 400, with the
    /// validation's own code such as `bad_username`.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// The request could not be parsed (bad JSON or query, or a malformed WebSocket
    /// upgrade): 400 `bad_request`.
    #[error("{0}")]
    BadRequest(String),
    /// No session token, or one that is malformed or wrongly signed: 401 `unauthorized`.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The session token is past its expiry or was revoked by a logout: 401 `session_expired`.
    #[error("session expired or revoked; log in again")]
    SessionExpired,
    /// A login with an unknown username or a wrong password: 401 `bad_credentials`.
    #[error("wrong username or password")]
    BadCredentials,
    /// A WebSocket upgrade from an `Origin` that is not allowed: 403 `origin_not_allowed`.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// A registration of a username that already exists: 409 `username_taken`.
    #[error("username already taken")]
    UsernameTaken,
    /// No route matches the request: 404 `not_found`.
    #[error("not found")]
    NotFound,
    /// The request's body did not arrive within `HUDDLE_BODY_TIMEOUT_MS`: 408
    /// `request_timeout`.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// A dependency (Redis, PostgreSQL, hydrator) failed or timed out; the detail is
    /// logged: 503 `unavailable`, with `Retry-After: 1`.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// The gateway is shedding load (e.g. the password-hashing queue is full): 503
    /// `overloaded`, with `Retry-After: 1`.
    #[error("{0}")]
    Overloaded(&'static str),
    /// Too many requests of one kind from one account: 429 `rate_limited` (with
    /// `Retry-After`).
    #[error("{0}")]
    RateLimited(&'static str),
    /// Too many sign-ups and logins from one client address: 429 `rate_limited`, with
    /// `Retry-After` saying when the next one is allowed.
    #[error("too many sign-ups and logins from this address; retry in {} s", retry_secs(.0))]
    AddressThrottled(std::time::Duration),
    /// Logins of this account are locked for a while after repeated wrong passwords:
    /// 429 `login_locked`, with `Retry-After`.
    #[error("too many failed logins for this account; retry in {} s", retry_secs(.0))]
    LoginLocked(std::time::Duration),
    /// The account already holds the most sockets allowed (the number): 429
    /// `too_many_connections`.
    #[error("this account already has {0} open sockets; close one first")]
    TooManyConnections(usize),
    /// An unexpected failure; the detail is logged, not shown: 500 `internal`.
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

    /// What the client is told: an outage's detail (which dependency, its error) is for
    /// the logs ([`ApiError::log_cause`]), not for clients.
    pub fn public_message(&self) -> String {
        match self {
            Self::Unavailable(_) => "temporarily unavailable; retry shortly".to_owned(),
            _ => self.to_string(),
        }
    }

    /// Logs the cause of an internal error or an outage (the client only gets its code).
    pub fn log_cause(&self) {
        if let Self::Internal(detail) | Self::Unavailable(detail) = self {
            tracing::error!(code = self.code(), %detail, "request failed");
        }
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
            Self::RequestTimeout => "request_timeout",
            Self::Unavailable(_) => "unavailable",
            Self::Overloaded(_) => "overloaded",
            Self::RateLimited(_) | Self::AddressThrottled(_) => "rate_limited",
            Self::LoginLocked(_) => "login_locked",
            Self::TooManyConnections(_) => "too_many_connections",
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
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited(_) | Self::AddressThrottled(_) | Self::LoginLocked(_) | Self::TooManyConnections(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        self.log_cause();
        let mut response = HttpResponse::build(self.status_code());
        match self {
            // Overload and outages are passing: tell clients when to come back.
            Self::Unavailable(_) | Self::Overloaded(_) | Self::RateLimited(_) => {
                response.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
            }
            Self::AddressThrottled(wait) | Self::LoginLocked(wait) => {
                response.insert_header((actix_web::http::header::RETRY_AFTER, retry_secs(wait).to_string()));
            }
            _ => {}
        }
        response.json(ErrorEnvelope { error: ErrorDetail { code: self.code(), message: self.public_message() } })
    }
}

/// A wait in whole seconds, rounded up (a `Retry-After` of 0 would invite a retry storm).
fn retry_secs(wait: &std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}
