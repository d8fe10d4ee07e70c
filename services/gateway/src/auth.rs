//! Sessions and passwords.
//!
//! A session token is `base64url(claims JSON) "." base64url(HMAC-SHA256)`, signed with
//! the shared secret, so any gateway replica verifies it without a lookup; logout adds
//! the token id to a Redis set of revoked ids. (A JWT library would add RSA/EC code we
//! do not use for one HS256 signature.) Passwords are argon2id PHC strings, hashed on
//! a few dedicated threads ([`PasswordHashing`]), because a hash deliberately takes tens of
//! milliseconds and ~19 MiB.

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::future::LocalBoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::AppState;
use huddle_roomlog::Revocation;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "huddle_session";

/// What a session token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub uid: i64,
    /// Username.
    pub name: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Token id, for revocation.
    pub jti: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `payload.signature` in base64url, or the payload is not claims JSON.
    #[error("malformed session token")]
    Malformed,
    /// The HMAC does not match: forged, altered, or signed with another secret.
    #[error("session token signature does not match")]
    BadSignature,
    /// Genuine, but its `exp` has passed.
    #[error("session expired")]
    Expired,
}

/// Signs and verifies session tokens.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl TokenSigner {
    /// A signer using `secret`.
    pub fn new(secret: &str) -> Self {
        Self { key: secret.as_bytes().to_vec() }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    /// The token for `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{payload}.{signature}")
    }

    /// The claims of a genuine, unexpired token.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, TokenError> {
        let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.exp <= now_secs {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Current Unix time in seconds.
pub fn now_secs() -> i64 {
    huddle_domain::now_ms() / 1000
}

/// Password hashing on a few dedicated threads: argon2id takes ~19 MiB and tens of
/// milliseconds per hash, so hashing on a growing thread pool lets a burst of sign-ups or
/// logins take the gateway's memory (and the allocator keeps a per-thread arena of it).
/// `concurrency` threads hash; up to `queue` requests wait (at most [`HASH_WAIT`]); beyond
/// that the request is refused with 503 `overloaded` and Retry-After.
pub struct PasswordHashing {
    jobs: std::sync::mpsc::SyncSender<HashJob>,
}

/// One queued hash: runs unless its requester stopped waiting.
struct HashJob {
    queued: Instant,
    work: Box<dyn FnOnce() + Send>,
}

/// Longest a request waits for a hashing thread.
const HASH_WAIT: Duration = Duration::from_secs(5);

impl PasswordHashing {
    /// Starts `concurrency` hashing threads with room for `queue` waiting requests.
    pub fn new(concurrency: usize, queue: usize) -> std::io::Result<Self> {
        let (jobs, inbox) = std::sync::mpsc::sync_channel::<HashJob>(queue);
        let inbox = Arc::new(Mutex::new(inbox));
        for n in 0..concurrency.max(1) {
            let inbox = Arc::clone(&inbox);
            std::thread::Builder::new().name(format!("password-hash-{n}")).spawn(move || loop {
                let job = match inbox.lock() {
                    Ok(inbox) => inbox.recv(),
                    Err(poisoned) => poisoned.into_inner().recv(),
                };
                let Ok(job) = job else { return };
                if job.queued.elapsed() < HASH_WAIT {
                    (job.work)();
                }
            })?;
        }
        Ok(Self { jobs })
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let overloaded = || ApiError::Overloaded("too many sign-ups and logins at once; retry");
        let (done, result) = tokio::sync::oneshot::channel();
        let job = HashJob {
            queued: Instant::now(),
            work: Box::new(move || {
                let _ = done.send(work());
            }),
        };
        self.jobs.try_send(job).map_err(|_| overloaded())?;
        match tokio::time::timeout(HASH_WAIT, result).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) | Err(_) => Err(overloaded()),
        }
    }

    /// Hashes a new password into an argon2id PHC string.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move || Argon2::default().hash_password(password.as_bytes()).map(|hash| hash.to_string()))
            .await?
            .map_err(ApiError::internal)
    }

    /// Checks a password against a stored PHC string.
    pub async fn verify(&self, password: String, stored: String) -> Result<bool, ApiError> {
        self.run(move || {
            let parsed = PasswordHash::new(&stored).map_err(|e| e.to_string())?;
            Ok::<bool, String>(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await?
        .map_err(ApiError::internal)
    }

    /// A hash to verify unknown usernames against (made once per process), so a login
    /// costs the same whether or not the name exists.
    pub async fn dummy_hash(&self) -> Result<String, ApiError> {
        static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
        DUMMY.get_or_try_init(|| self.hash(uuid::Uuid::new_v4().to_string())).await.cloned()
    }
}

/// The signed-in user of a request: from the session cookie, an `Authorization: Bearer`
/// header, or a `token` query parameter (for WebSocket clients that cannot set headers).
#[derive(Debug, Clone)]
pub struct AuthUser(pub Claims);

/// The token of an `Authorization` value with the `Bearer` scheme, which is
/// case-insensitive (RFC 9110 §11.1): `bearer x` is as good as `Bearer x`.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn token_of(req: &HttpRequest) -> Option<String> {
    if let Some(header) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        if let Some(token) = header.to_str().ok().and_then(bearer_token) {
            return Some(token.to_owned());
        }
    }
    if let Some(cookie) = req.cookie(SESSION_COOKIE) {
        return Some(cookie.value().to_owned());
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("token").cloned())
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = token_of(req);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal("application state missing"))?;
            let token = token.ok_or(ApiError::Unauthorized("missing session token"))?;
            let claims = state.signer.verify(&token, now_secs()).map_err(|e| match e {
                TokenError::Expired => ApiError::SessionExpired,
                _ => ApiError::Unauthorized("invalid session token"),
            })?;
            if is_revoked(&state, &claims.jti).await? {
                return Err(ApiError::SessionExpired);
            }
            Ok(AuthUser(claims))
        })
    }
}

/// Ends a session before its token expires: recorded in PostgreSQL (so it survives a
/// Redis loss), cached in Redis, and announced to every gateway, which closes the
/// session's sockets.
pub async fn end_session(state: &AppState, claims: &Claims) -> Result<(), ApiError> {
    state.archive.revoke_session(&claims.jti, claims.uid, claims.exp).await.map_err(ApiError::unavailable)?;
    let ttl = (claims.exp - now_secs()).max(1) as u64;
    state.log.revoke_token(&claims.jti, ttl).await.map_err(ApiError::unavailable)
}

/// Whether session `jti` was ended: Redis answers, and when Redis lost its cache, the
/// cache is filled again from PostgreSQL first — by one request at a time, so a Redis
/// loss under load costs one archive read, not one per request.
pub async fn is_revoked(state: &AppState, jti: &str) -> Result<bool, ApiError> {
    if let Some(revoked) = cached_revocation(state, jti).await? {
        return Ok(revoked);
    }
    let _reloading = state.revocations_reload.lock().await;
    // Whoever held the lock before may have reloaded the cache already.
    if let Some(revoked) = cached_revocation(state, jti).await? {
        return Ok(revoked);
    }
    let now = now_secs();
    let revoked = state.archive.live_revocations().await.map_err(ApiError::unavailable)?;
    let cached: Vec<(String, u64)> =
        revoked.iter().map(|(id, expires)| (id.clone(), (expires - now).max(1) as u64)).collect();
    state.log.load_revocations(&cached).await.map_err(ApiError::unavailable)?;
    crate::metrics::REVOCATION_RELOADS.add(1, &[]);
    tracing::info!(revocations = cached.len(), "revoked sessions reloaded into Redis from PostgreSQL");
    Ok(revoked.iter().any(|(id, _)| id == jti))
}

/// What the Redis cache says of `jti`; `None` if the cache was lost.
async fn cached_revocation(state: &AppState, jti: &str) -> Result<Option<bool>, ApiError> {
    Ok(match state.log.revocation(jti).await.map_err(ApiError::unavailable)? {
        Revocation::Revoked => Some(true),
        Revocation::Live => Some(false),
        Revocation::Unknown => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims { uid: 1, name: "ada".into(), exp, jti: "t1".into() }
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let signer = TokenSigner::new("secret");
        let token = signer.sign(&claims(100));
        assert_eq!(signer.verify(&token, 50), Ok(claims(100)));
        assert_eq!(signer.verify(&token, 100), Err(TokenError::Expired));
        assert_eq!(TokenSigner::new("other").verify(&token, 50), Err(TokenError::BadSignature));
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"uid":2,"name":"x","exp":999,"jti":"j"}"#),
            token.split_once('.').unwrap().1
        );
        assert_eq!(signer.verify(&forged, 50), Err(TokenError::BadSignature));
        assert_eq!(signer.verify("garbage", 50), Err(TokenError::Malformed));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_other_schemes_are_not_tokens() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
