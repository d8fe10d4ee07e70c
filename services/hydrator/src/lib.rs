//! The hydrate path: restores rooms that Redis lost from the PostgreSQL archive.
//!
//! * `HydrateRoom` loads a room's seq counter and recent window into Redis, once per
//!   room however many callers ask at the same moment (a Redis lock per room; the
//!   others wait for the winner's result).
//! * `GetHistory` pages older history: what Redis still holds, continued from
//!   PostgreSQL below it.
//! * HydrateRoom tasks from RabbitMQ re-warm many rooms after a Redis loss, spread over
//!   every hydrator replica; `huddle-hydrator rewarm` queues them for recently active rooms.
//!
//! Its service shell is crates/worker; the Redis and PostgreSQL steps are crates/roomlog
//! and crates/archive. This crate keeps only the single-flight logic and the paging.

mod history;
mod hydrate;
mod rewarm;

use std::net::SocketAddr;
use std::time::Duration;

use huddle_archive::Archive;
use huddle_broker::{Broker, TaskQueue};
use huddle_config::{BrokerSettings, PostgresSettings, RedisSettings, TrustSettings};
use huddle_proto::v1::hydrator_server::HydratorServer;
use huddle_roomlog::RoomLog;
use huddle_telemetry::Readiness;
use huddle_worker::Worker;
use tonic::server::NamedService;
use tonic::service::Routes;

pub use hydrate::HydrateService;
pub use rewarm::{decode_rewarm_task, queue_rewarm};

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
    #[arg(long, env = "HUDDLE_HYDRATE_WINDOW", default_value_t = 500, value_parser = huddle_config::at_least_one::<usize>)]
    pub hydrate_window: usize,
    /// How long a caller waits for another replica's hydration of the same room.
    #[arg(long, env = "HUDDLE_HYDRATE_TIMEOUT_MS", default_value_t = 10_000, value_parser = huddle_config::at_least_one::<u64>)]
    pub hydrate_timeout_ms: u64,
    /// HydrateRoom tasks handled at once by this replica.
    #[arg(long, env = "HUDDLE_HYDRATE_PREFETCH", default_value_t = 8, value_parser = huddle_config::at_least_one::<u16>)]
    pub hydrate_prefetch: u16,
    /// The PostgreSQL archive.
    #[command(flatten)]
    pub postgres: PostgresSettings,
    /// The Redis room log.
    #[command(flatten)]
    pub redis: RedisSettings,
    /// RabbitMQ, which carries the HydrateRoom re-warm tasks.
    #[command(flatten)]
    pub broker: BrokerSettings,
    /// Service-to-service trust: the gRPC token every call must carry.
    #[command(flatten)]
    pub trust: TrustSettings,
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
    /// PostgreSQL could not be reached or migrated.
    #[error(transparent)]
    Archive(#[from] huddle_archive::ArchiveError),
    /// The Redis connection pool could not be set up.
    #[error(transparent)]
    RoomLog(#[from] huddle_roomlog::RoomLogError),
    /// The gRPC or ops port could not be bound, or the gRPC server not set up.
    #[error(transparent)]
    Worker(#[from] huddle_worker::WorkerError),
    /// No usable gRPC token (missing or too short outside dev mode).
    #[error("grpc token: {0}")]
    Trust(String),
}

/// A running hydrator: [`Worker::stop`] stops it gracefully (consumers take no new tasks,
/// in-flight tasks and calls finish, then RabbitMQ is closed).
pub type RunningHydrator = Worker;

/// Migrates the archive, binds the listeners and starts serving.
pub async fn start(settings: Settings) -> Result<RunningHydrator, StartError> {
    let grpc_token = settings.trust.grpc_token().map_err(StartError::Trust)?;
    let archive = Archive::connect(&settings.postgres)?;
    archive.migrate().await?;
    let log = RoomLog::connect(&settings.redis)?;
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
    let mut worker = Worker::bind(settings.grpc_addr, settings.ops_addr, readiness).await?;

    let service =
        HydrateService::new(log, archive, settings.hydrate_window, Duration::from_millis(settings.hydrate_timeout_ms));
    // RabbitMQ only carries re-warm tasks: joins keep working while it is down.
    let broker = Broker::lazy(&settings.broker);
    let rewarm = huddle_broker::consume(
        broker.clone(),
        TaskQueue::Hydrate,
        settings.hydrate_prefetch,
        rewarm::RewarmTasks(service.clone()),
        Duration::from_millis(200),
        worker.stopping(),
    );
    worker.spawn("hydrate consumer", rewarm);
    worker
        .serve(HydratorServer::<HydrateService>::NAME, Routes::new(HydratorServer::new(service)), grpc_token.as_ref())
        .await?;
    tracing::info!(grpc_addr = %worker.grpc_addr(), ops_addr = %worker.ops_addr(), "hydrator listening");
    worker.finally(async move { broker.close().await });
    Ok(worker)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Settings;

    #[test]
    fn a_setting_that_zero_would_break_stops_the_hydrator_at_start() {
        let refused = |flag: &str, value: &str| Settings::try_parse_from(["huddle-hydrator", flag, value]).is_err();
        for flag in ["--hydrate-window", "--hydrate-timeout-ms", "--hydrate-prefetch", "--redis-timeout-ms"] {
            assert!(refused(flag, "0"), "{flag} 0 was accepted");
            assert!(!refused(flag, "1"), "{flag} 1 was refused");
        }
    }
}
