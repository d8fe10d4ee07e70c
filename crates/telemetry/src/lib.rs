//! Telemetry shared by the Huddle services: structured `tracing` logs, Prometheus
//! metrics, and the operational endpoints `/healthz`, `/readyz` and `/metrics`.
//!
//! The gateway mounts the endpoints in its own actix-web app with [`configure_ops`];
//! the workers (persister, hydrator) serve them on a separate port with
//! [`spawn_ops_server`].

use std::future::Future;
use std::net::TcpListener;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use tracing_subscriber::EnvFilter;

/// Initialises the global tracing subscriber once; later calls are no-ops, so tests may
/// call it freely. `RUST_LOG` filters (default `info`); `HUDDLE_LOG_FORMAT=pretty` gives
/// human-readable lines instead of JSON.
pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let result = if std::env::var("HUDDLE_LOG_FORMAT").as_deref() == Ok("pretty") {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    };
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "telemetry initialised");
    }
}

/// The future a readiness check returns: `Err` carries the reason, shown by `/readyz`.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A readiness check: can this instance do its job right now (dependencies reachable)?
#[derive(Clone)]
pub struct Readiness(Arc<dyn Fn() -> CheckFuture + Send + Sync>);

impl Readiness {
    /// Wraps a closure that probes the service's dependencies.
    pub fn new(check: impl Fn() -> CheckFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(check))
    }
}

/// Registers `/healthz` (process is alive), `/readyz` (dependencies answer) and
/// `/metrics` (Prometheus text format) on an actix-web app.
pub fn configure_ops(cfg: &mut web::ServiceConfig, readiness: Readiness) {
    cfg.app_data(web::Data::new(readiness))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(status_body("ok", None))
}

async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    match (readiness.0)().await {
        Ok(()) => HttpResponse::Ok().json(status_body("ready", None)),
        Err(reason) => HttpResponse::ServiceUnavailable().json(status_body("unready", Some(reason))),
    }
}

fn status_body(status: &str, reason: Option<String>) -> std::collections::BTreeMap<&'static str, String> {
    let mut body = std::collections::BTreeMap::new();
    body.insert("status", status.to_owned());
    if let Some(reason) = reason {
        body.insert("reason", reason);
    }
    body
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics_text())
}

/// Everything in the default Prometheus registry, in the text exposition format.
pub fn metrics_text() -> String {
    let encoder = prometheus::TextEncoder::new();
    encoder
        .encode_to_string(&prometheus::gather())
        .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
}

/// A running ops endpoint server (see [`spawn_ops_server`]).
pub struct OpsServer {
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl OpsServer {
    /// Stops accepting and waits for the server thread to end.
    pub async fn stop(mut self) {
        self.handle.stop(true).await;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Serves the ops endpoints on `listener` from a dedicated thread with its own actix
/// runtime, so worker services built on plain tokio need no actix system of their own.
pub fn spawn_ops_server(listener: TcpListener, readiness: Readiness) -> std::io::Result<OpsServer> {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("ops-http".into())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let readiness = readiness.clone();
                    App::new().configure(move |cfg| configure_ops(cfg, readiness))
                })
                .workers(1)
                .disable_signals()
                .listen(listener)?
                .run();
                let _ = handle_tx.send(server.handle());
                server.await
            })
        })?;
    let handle = handle_rx
        .recv()
        .map_err(|_| std::io::Error::other("ops server failed to start"))?;
    Ok(OpsServer { handle, thread: Some(thread) })
}

/// Resolves on SIGTERM or Ctrl-C: the moment a service starts its graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}
