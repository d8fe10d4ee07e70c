//! The web client's files, the security headers every response carries, and the
//! `Origin` check of requests a browser's cookie would authenticate.
//!
//! The page loads its script and style from the gateway itself, so the Content Security
//! Policy allows no inline code at all: text from a message can never run as script,
//! even if a rendering bug put it into the page as markup.

use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::ApiError;

/// The policy: only this origin's script, style and sockets; no framing, no plugins,
/// no form posts elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self' ws: wss:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Headers added to every response, API and page alike.
pub fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("Cross-Origin-Opener-Policy", "same-origin"))
}

/// Routes of the web client.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(|| asset("text/html; charset=utf-8", include_str!("../static/index.html"))))
        .route("/app.js", web::get().to(|| asset("text/javascript; charset=utf-8", include_str!("../static/app.js"))))
        .route("/core.js", web::get().to(|| asset("text/javascript; charset=utf-8", include_str!("../static/core.js"))))
        .route("/app.css", web::get().to(|| asset("text/css; charset=utf-8", include_str!("../static/app.css"))));
}

async fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok().content_type(content_type).insert_header(("Cache-Control", "no-cache")).body(body)
}

/// Parses one entry of `HUDDLE_ALLOWED_ORIGINS`: `*`, nothing (the default), or an
/// origin as browsers send it, `http(s)://host[:port]` without a path. Anything else
/// could never equal an `Origin` header, so it stops the gateway at start instead of
/// silently allowing nobody.
pub fn allowed_origin(entry: &str) -> Result<String, String> {
    let entry = entry.trim();
    if entry.is_empty() || entry == "*" {
        return Ok(entry.to_owned());
    }
    let host = entry.strip_prefix("https://").or_else(|| entry.strip_prefix("http://"));
    match host {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) => Ok(entry.to_owned()),
        _ => Err(format!("'{entry}' is not an origin (http://host[:port] or https://host[:port], no path) or *")),
    }
}

/// Refuses a request a browser sent from another site: WebSocket upgrades and POSTs,
/// which a cookie would otherwise authenticate (cross-site request forgery). Browsers send
/// `Origin`; it must be the gateway's own host or an allowed origin. Non-browser clients
/// send none and are let through (they hold a token, which no other site can read).
pub fn check_origin(req: &HttpRequest, allowed: &[String]) -> Result<(), ApiError> {
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
