//! The operator's endpoints: `/healthz` (the process is alive), `/readyz` (PostgreSQL and
//! Redis answer) and `/metrics` (Prometheus text) on the ops port, which is not meant to
//! be public; the probes only on the public port too, for load balancers.

use actix_web::{web, HttpResponse};
use huddle_telemetry::{metrics_text, status_body, Readiness};

/// Registers the probes, with `readiness` behind `/readyz` (the public port has these).
pub fn configure_probes(cfg: &mut web::ServiceConfig, readiness: Readiness) {
    cfg.app_data(web::Data::new(readiness))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// Registers the probes and `/metrics` (the ops port).
pub fn configure(cfg: &mut web::ServiceConfig, readiness: Readiness) {
    configure_probes(cfg, readiness);
    cfg.route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(status_body("ok", None))
}

async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    match readiness.check().await {
        Ok(()) => HttpResponse::Ok().json(status_body("ready", None)),
        Err(reason) => HttpResponse::ServiceUnavailable().json(status_body("unready", Some(reason))),
    }
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(metrics_text())
}
