//! The runtime every worker service shares: what makes the persister and the hydrator a
//! service, so each of them keeps only its own job.
//!
//! A [`Worker`] binds the gRPC and ops ports, serves `/healthz`, `/readyz` and `/metrics`
//! on the ops port, serves the service's gRPC routes with the standard health and
//! reflection services beside them, runs the service's background tasks, and stops it
//! all gracefully: tasks are told to stop and awaited (in-flight work finishes), the gRPC
//! server answers its in-flight calls, then the ops port closes.
//!
//! A background task or the gRPC server that ends before the stop (a panic, say) leaves
//! the service unable to do its job while it still looks alive, so that is a failure
//! ([`Worker::failure`]): the binary stops and exits with an error, and its orchestrator
//! starts a fresh one.
//!
//! It knows nothing of Redis, PostgreSQL or RabbitMQ: the service hands it a readiness
//! check and its tasks.

mod grpc_telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use huddle_proto::auth::RequireToken;
use huddle_telemetry::Readiness;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The gRPC or ops port could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// Why binding (or reading the bound address) failed.
        source: std::io::Error,
    },
    /// The gRPC reflection service could not be built from the descriptor sets.
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A running worker service's shell: ports, tasks, shutdown.
pub struct Worker {
    grpc_listener: Option<TcpListener>,
    grpc_addr: SocketAddr,
    ops_addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// Why the worker can no longer do its job, once it cannot.
    failure: watch::Sender<Option<String>>,
    tasks: Vec<JoinHandle<()>>,
    grpc: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    ops: JoinHandle<()>,
    last: Vec<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Worker {
    /// Binds both ports and starts serving the ops endpoints, with `readiness` behind
    /// `/readyz`.
    pub async fn bind(grpc_addr: SocketAddr, ops_addr: SocketAddr, readiness: Readiness) -> Result<Self, WorkerError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| WorkerError::Bind { addr, source })
        };
        let grpc_listener = bind(grpc_addr).await?;
        let ops_listener = bind(ops_addr).await?;
        let local =
            |listener: &TcpListener, addr| listener.local_addr().map_err(|source| WorkerError::Bind { addr, source });
        let (grpc_addr, ops_addr) = (local(&grpc_listener, grpc_addr)?, local(&ops_listener, ops_addr)?);
        let (stop, stopped) = watch::channel(false);
        let ops = tokio::spawn(serve_ops(ops_listener, readiness, stopped));
        Ok(Self {
            grpc_listener: Some(grpc_listener),
            grpc_addr,
            ops_addr,
            stop,
            failure: watch::Sender::new(None),
            tasks: Vec::new(),
            grpc: None,
            ops,
            last: Vec::new(),
        })
    }

    /// Where the gRPC server listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the ops endpoints listen.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// Turns `true` when the worker is stopping: background tasks watch it, finish what
    /// they hold, and return.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Runs a background task, named `name` in logs, until it returns; [`Worker::stop`]
    /// waits for it. It must run until [`Worker::stopping`] turns true: ending earlier,
    /// or panicking, is a [`Worker::failure`].
    pub fn spawn(&mut self, name: impl Into<String>, task: impl Future<Output = ()> + Send + 'static) {
        let (name, task) = (name.into(), tokio::spawn(task));
        let watch = self.watch_for_early_end();
        self.tasks.push(tokio::spawn(async move {
            let ended = task.await;
            watch(format!("background task {name}"), ended.err().map(|error| error.to_string()));
        }));
    }

    /// A check to run when a part of the worker ends, with what went wrong if anything: an
    /// end before the stop is a failure.
    fn watch_for_early_end(&self) -> impl FnOnce(String, Option<String>) + Send + 'static {
        let (stopping, failure) = (self.stopping(), self.failure.clone());
        move |part, error| {
            if *stopping.borrow() {
                if let Some(error) = error {
                    tracing::error!(part, error, "failed while stopping");
                }
                return;
            }
            let reason = format!("{part} {}", error.unwrap_or_else(|| "ended".to_owned()));
            tracing::error!(reason, "a part of the service ended before it was stopped; the service stops");
            // The first reason is the one reported.
            failure.send_if_modified(|failure| failure.is_none() && failure.replace(reason).is_none());
        }
    }

    /// Resolves, with its reason, once a background task or the gRPC server has ended
    /// before [`Worker::stop`] (a panic, say): the worker can no longer do its job.
    /// Never resolves otherwise.
    pub fn failure(&self) -> impl Future<Output = String> + Send + 'static {
        let mut failure = self.failure.subscribe();
        async move {
            let reason = failure.wait_for(Option::is_some).await.map(|reason| reason.clone().unwrap_or_default());
            match reason {
                Ok(reason) => reason,
                // The worker is gone: it stopped, so it did not fail.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Runs `step` at the very end of [`Worker::stop`], after everything that could still
    /// use a connection has ended (e.g. closing the RabbitMQ connection).
    pub fn finally(&mut self, step: impl Future<Output = ()> + Send + 'static) {
        self.last.push(Box::pin(step));
    }

    /// Serves `routes` (the service's own gRPC service, named `service_name` in the
    /// health protocol) with the gRPC health and reflection services beside them. Every
    /// call but the health service's must carry `token` (none: dev mode, calls go
    /// unchecked); health answers anyone, so a kubelet's gRPC probe works. A second call
    /// serves nothing more.
    pub async fn serve(
        &mut self,
        service_name: &'static str,
        routes: tonic::service::Routes,
        token: Option<&SecretString>,
    ) -> Result<(), WorkerError> {
        let Some(listener) = self.grpc_listener.take() else {
            tracing::error!(service_name, "Worker::serve called twice; the port serves the first routes only");
            return Ok(());
        };
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_service_status(service_name, tonic_health::ServingStatus::Serving).await;
        let mut stopping = self.stopping();
        // Everything but the health service needs the token: a kubelet's gRPC probe sends
        // no metadata, and serving status is no secret.
        let protected: tonic::service::Routes = routes
            .add_service(huddle_proto::reflection_service(service_name)?)
            .into_axum_router()
            .layer(tonic::service::InterceptorLayer::new(RequireToken::new(token)))
            .into();
        let server = tonic::transport::Server::builder()
            .layer(grpc_telemetry::GrpcTelemetryLayer)
            .add_routes(protected)
            .add_service(health_service)
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async move {
                let _ = stopping.wait_for(|stop| *stop).await;
                // Load balancers that watch gRPC health stop sending before the port closes.
                health_reporter.set_service_status(service_name, tonic_health::ServingStatus::NotServing).await;
            });
        let watch = self.watch_for_early_end();
        self.grpc = Some(tokio::spawn(async move {
            let served = server.await;
            watch("grpc server".to_owned(), served.as_ref().err().map(ToString::to_string));
            served
        }));
        Ok(())
    }

    /// Graceful stop: background tasks are told to stop and awaited, the gRPC server
    /// finishes its in-flight calls, the ops endpoints close, then the
    /// [`Worker::finally`] steps run.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        // Each part logged its own failure when it ended (watch_for_early_end).
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(grpc) = self.grpc {
            if let Err(error) = grpc.await {
                tracing::error!(%error, "grpc server task panicked");
            }
        }
        let _ = self.ops.await;
        for step in self.last {
            step.await;
        }
    }
}

/// Waits for SIGTERM or Ctrl-C, or for `worker`'s [`Worker::failure`]: `None` after a
/// signal, the failure's reason otherwise. Either way the caller then stops the worker.
pub async fn until_stopped_or_failed(worker: &Worker) -> Option<String> {
    tokio::select! {
        () = huddle_telemetry::shutdown_signal() => None,
        reason = worker.failure() => Some(reason),
    }
}

/// `/healthz` (the process is alive), `/readyz` (its dependencies answer) and `/metrics`
/// (Prometheus text), until the worker stops.
async fn serve_ops(listener: TcpListener, readiness: Readiness, mut stopping: watch::Receiver<bool>) {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { axum::Json(huddle_telemetry::status_body("ok", None)) }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness.check().await {
                        Ok(()) => (StatusCode::OK, axum::Json(huddle_telemetry::status_body("ready", None))),
                        Err(reason) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(huddle_telemetry::status_body("unready", Some(reason))),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(|| async {
                ([("content-type", "text/plain; version=0.0.4")], huddle_telemetry::metrics_text()).into_response()
            }),
        );
    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    });
    if let Err(error) = served.await {
        tracing::error!(%error, "ops endpoints failed");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Worker;

    async fn worker() -> Worker {
        let readiness = huddle_telemetry::Readiness::new(|| Box::pin(async { Ok(()) }));
        let any_port = "127.0.0.1:0".parse().unwrap();
        Worker::bind(any_port, any_port, readiness).await.unwrap()
    }

    #[tokio::test]
    async fn a_background_task_that_panics_is_the_workers_failure() {
        let mut worker = worker().await;
        let mut stopping = worker.stopping();
        worker.spawn("steady", async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        });
        worker.spawn("sweep", async { panic!("boom") });
        let reason = tokio::time::timeout(Duration::from_secs(5), worker.failure()).await.expect("no failure reported");
        assert!(reason.contains("background task sweep") && reason.contains("boom"), "{reason}");
        tokio::time::timeout(Duration::from_secs(5), worker.stop()).await.expect("the worker did not stop");
    }

    #[tokio::test]
    async fn a_background_task_that_returns_before_the_stop_is_a_failure_too() {
        let mut worker = worker().await;
        worker.spawn("consumer", async {});
        let reason = tokio::time::timeout(Duration::from_secs(5), worker.failure()).await.expect("no failure reported");
        assert_eq!(reason, "background task consumer ended");
    }

    #[tokio::test]
    async fn tasks_that_end_at_the_stop_are_no_failure() {
        let mut worker = worker().await;
        let mut stopping = worker.stopping();
        worker.spawn("consumer", async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        });
        let failure = worker.failure();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), worker.failure()).await.is_err(),
            "failed while running"
        );
        worker.stop().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(200), failure).await.is_err(),
            "the stop was taken for a failure"
        );
    }
}
