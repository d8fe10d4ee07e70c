//! Sessions and passwords.
//!
//! A session token is `base64url(claims JSON) "." base64url(HMAC-SHA256)`, signed with
//! the shared secret, so any gateway replica verifies it without a lookup; logout adds
//! the token id to a Redis set of revoked ids. (A JWT library would add RSA/EC code we
//! do not use for one HS256 signature.) Passwords are argon2id PHC strings, hashed on
//! the blocking pool because a hash deliberately takes tens of milliseconds.

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

use crate::api::ApiError;
use crate::AppState;

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
    #[error("malformed session token")]
    Malformed,
    #[error("session token signature does not match")]
    BadSignature,
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

/// Hashes a password with argon2id and a random salt (on the blocking pool).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    web::block(move || Argon2::default().hash_password(password.as_bytes()).map(|hash| hash.to_string()))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// Checks a password against a stored PHC string (on the blocking pool).
pub async fn verify_password(password: String, stored: String) -> Result<bool, ApiError> {
    web::block(move || {
        let parsed = PasswordHash::new(&stored).map_err(|e| e.to_string())?;
        Ok::<bool, String>(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)
}

/// The signed-in user of a request: from the session cookie, an `Authorization: Bearer`
/// header, or a `token` query parameter (for WebSocket clients that cannot set headers).
#[derive(Debug, Clone)]
pub struct AuthUser(pub Claims);

fn token_of(req: &HttpRequest) -> Option<String> {
    if let Some(header) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        if let Some(token) = header.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")) {
            return Some(token.trim().to_owned());
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
            if state.log.is_token_revoked(&claims.jti).await.map_err(ApiError::unavailable)? {
                return Err(ApiError::SessionExpired);
            }
            Ok(AuthUser(claims))
        })
    }
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
        let forged = format!("{}.{}", URL_SAFE_NO_PAD.encode(br#"{"uid":2,"name":"x","exp":999,"jti":"j"}"#), token.split_once('.').unwrap().1);
        assert_eq!(signer.verify(&forged, 50), Err(TokenError::BadSignature));
        assert_eq!(signer.verify("garbage", 50), Err(TokenError::Malformed));
    }
}
