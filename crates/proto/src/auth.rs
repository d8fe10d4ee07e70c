//! Service-to-service trust for the internal gRPC calls: every call carries a shared
//! secret as `authorization: Bearer <token>`; servers refuse a call without it with
//! `UNAUTHENTICATED`.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

/// Client side: adds the token to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    /// Sends `token` (none: calls go without one, for a dev-mode server).
    pub fn new(token: Option<&SecretString>) -> Self {
        Self(token.and_then(|token| format!("Bearer {}", token.expose_secret()).parse().ok()))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Server side: lets through only calls that carry the token.
#[derive(Clone)]
pub struct RequireToken {
    /// SHA-256 of `Bearer <token>`: comparing digests leaks nothing about the token
    /// through timing. `None`: dev mode without a token, every call passes.
    expected: Option<[u8; 32]>,
}

impl RequireToken {
    /// Requires `token` (none: dev mode, nothing is required).
    pub fn new(token: Option<&SecretString>) -> Self {
        Self { expected: token.map(|token| digest(format!("Bearer {}", token.expose_secret()).as_bytes())) }
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = self.expected else { return Ok(request) };
        let presented = request.metadata().get("authorization").map(|value| digest(value.as_bytes()));
        if presented == Some(expected) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("missing or wrong service token"))
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;

    use super::*;

    #[test]
    fn only_calls_with_the_token_pass() {
        let token = SecretString::from("a-shared-secret-of-enough-length-0123");
        let mut server = RequireToken::new(Some(&token));
        let signed = BearerToken::new(Some(&token)).call(Request::new(())).unwrap();
        assert!(server.call(signed).is_ok());
        assert_eq!(server.call(Request::new(())).unwrap_err().code(), tonic::Code::Unauthenticated);
        let other = SecretString::from("another-secret-of-enough-length-01234");
        let forged = BearerToken::new(Some(&other)).call(Request::new(())).unwrap();
        assert_eq!(server.call(forged).unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
