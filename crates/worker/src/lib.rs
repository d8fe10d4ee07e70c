//! The runtime every worker service shares: what makes the persister and the hydrator a
//! service, so each of them keeps only its own job.
//!
//! A [`Worker`] binds the gRPC and ops ports, serves `/healthz`, `/readyz` and `/metrics`
//! on the ops port, serves the service's gRPC routes with the standard health and
//! reflection services beside them, runs the service's background tasks, and stops it
//! all gracefully: tasks are told to stop and awaited (in-flight work finishes), the gRPC
//! server answers its in-flight calls, then the ops port closes.
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

    /// Runs a background task until it returns; [`Worker::stop`] waits for it.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
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
        self.grpc = Some(tokio::spawn(server));
        Ok(())
    }

    /// Graceful stop: background tasks are told to stop and awaited, the gRPC server
    /// finishes its in-flight calls, the ops endpoints close, then the
    /// [`Worker::finally`] steps run.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "background task panicked");
            }
        }
        if let Some(grpc) = self.grpc {
            match grpc.await {
                Ok(Err(error)) => tracing::error!(%error, "grpc server failed"),
                Err(error) => tracing::error!(%error, "grpc server task panicked"),
                Ok(Ok(())) => {}
            }
        }
        let _ = self.ops.await;
        for step in self.last {
            step.await;
        }
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
