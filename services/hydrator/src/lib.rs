//! The hydrate path: restores rooms that Redis lost from the PostgreSQL archive.
//!
//! * `HydrateRoom` loads a room's seq counter and recent window into Redis, once per
//!   room however many callers ask at the same moment (a Redis lock per room; the
//!   others wait for the winner's result).
//! * `GetHistory` pages older history: what Redis still holds, continued from
//!   PostgreSQL below it.
//! * HydrateRoom tasks from RabbitMQ re-warm many rooms after a Redis loss, spread over
//!   every hydrator replica; `huddle-hydrator rewarm` queues them for recently active rooms.

mod history;
mod hydrate;
mod rewarm;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use huddle_archive::Archive;
use huddle_broker::{Broker, TaskQueue};
use huddle_config::{BrokerSettings, PostgresSettings, RedisSettings};
use huddle_proto::v1::hydrator_server::HydratorServer;
use huddle_roomlog::RoomLog;
use huddle_telemetry::{OpsServer, Readiness};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use hydrate::HydrateService;
pub use rewarm::queue_rewarm;

/// Hydrator settings (flags or `HUDDLE_*` environment variables).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "huddle-hydrator",
    version,
    about = "Huddle hydrator: restores rooms from PostgreSQL into Redis",
    args_override_self = true
)]
pub struct Settings {
    /// Address of the gRPC server (Hydrator + grpc.health.v1).
    #[arg(long, env = "HUDDLE_HYDRATOR_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HUDDLE_HYDRATOR_OPS_ADDR", default_value = "127.0.0.1:9101")]
    pub ops_addr: SocketAddr,
    /// Messages loaded into Redis when a room is hydrated.
    #[arg(long, env = "HUDDLE_HYDRATE_WINDOW", default_value_t = 500)]
    pub hydrate_window: usize,
    /// How long a caller waits for another replica's hydration of the same room.
    #[arg(long, env = "HUDDLE_HYDRATE_TIMEOUT_MS", default_value_t = 10_000)]
    pub hydrate_timeout_ms: u64,
    /// HydrateRoom tasks handled at once by this replica.
    #[arg(long, env = "HUDDLE_HYDRATE_PREFETCH", default_value_t = 8)]
    pub hydrate_prefetch: u16,
    #[command(flatten)]
    pub postgres: PostgresSettings,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub broker: BrokerSettings,
    /// Run an operator command instead of the service.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Operator commands (they run and exit; the service is the default).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Queue HydrateRoom tasks for every room active recently (after a Redis loss), so
    /// the hydrator replicas restore them before users come back.
    Rewarm {
        /// Rooms with a message in the last this many minutes.
        #[arg(long, default_value_t = 60)]
        active_within_mins: u64,
    },
}

/// Why the hydrator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("bind: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Archive(#[from] huddle_archive::ArchiveError),
    #[error(transparent)]
    RoomLog(#[from] huddle_roomlog::RoomLogError),
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A running hydrator.
pub struct RunningHydrator {
    grpc_addr: SocketAddr,
    ops_addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    rewarm_consumer: JoinHandle<()>,
    broker: Broker,
    ops: OpsServer,
}

impl RunningHydrator {
    /// Where the gRPC server listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the ops endpoints listen.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// Stops accepting calls and tasks, lets in-flight ones finish, then returns.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.rewarm_consumer.await;
        self.broker.close().await;
        match self.server.await {
            Ok(Err(error)) => tracing::error!(%error, "grpc server failed"),
            Err(error) => tracing::error!(%error, "grpc server task panicked"),
            Ok(Ok(())) => {}
        }
        self.ops.stop().await;
    }
}

/// Migrates the archive, binds the listeners and starts serving.
pub async fn start(settings: Settings) -> Result<RunningHydrator, StartError> {
    let archive = Archive::connect(&settings.postgres)?;
    archive.migrate().await?;
    let log = RoomLog::connect(&settings.redis)?;

    let grpc_listener = tokio::net::TcpListener::bind(settings.grpc_addr).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let ops_listener = TcpListener::bind(settings.ops_addr)?;
    let ops_addr = ops_listener.local_addr()?;

    let readiness = {
        let (archive, log) = (archive.clone(), log.clone());
        Readiness::new(move || {
            let (archive, log) = (archive.clone(), log.clone());
            Box::pin(async move {
                archive.ping().await.map_err(|e| e.to_string())?;
                log.ping().await.map_err(|e| e.to_string())
            })
        })
    };
    let ops = huddle_telemetry::spawn_ops_server(ops_listener, readiness)?;

    let service =
        HydrateService::new(log, archive, settings.hydrate_window, Duration::from_millis(settings.hydrate_timeout_ms));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<HydratorServer<HydrateService>>().await;
    let (stop, stopped) = watch::channel(false);
    // RabbitMQ only carries re-warm tasks: joins keep working while it is down.
    let broker = Broker::lazy(&settings.broker);
    let rewarm_consumer = tokio::spawn(huddle_broker::consume(
        broker.clone(),
        TaskQueue::Hydrate,
        settings.hydrate_prefetch,
        rewarm::RewarmTasks(service.clone()),
        Duration::from_millis(200),
        stopped.clone(),
    ));
    let mut grpc_stopped = stopped;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(huddle_proto::reflection_service()?)
            .add_service(HydratorServer::new(service))
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(grpc_listener), async move {
                let _ = grpc_stopped.wait_for(|stop| *stop).await;
            }),
    );
    tracing::info!(%grpc_addr, %ops_addr, "hydrator listening");
    Ok(RunningHydrator { grpc_addr, ops_addr, stop, server, rewarm_consumer, broker, ops })
}
