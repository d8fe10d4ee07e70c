//! The persist path: copies each room's new Redis entries into PostgreSQL.
//!
//! A `FlushRoom` master task claims the room's unpersisted range and splits it into
//! `PersistChunk` tasks; chunk workers write each range with one batched, idempotent
//! insert, advance the watermark and trim Redis. A sweep re-queues every dirty room
//! periodically, so a room is flushed even if the gateway that held it died. The
//! `Persister` gRPC service lets operators flush a room and read its flush lag.
//!
//! Its service shell (ports, health, shutdown) is crates/worker; the Redis and PostgreSQL
//! steps are crates/roomlog and crates/archive. This crate keeps only the task logic.

mod grpc;
mod metrics;
mod sweep;
mod tasks;

use std::net::SocketAddr;
use std::time::Duration;

use huddle_archive::Archive;
use huddle_broker::{Broker, TaskQueue};
use huddle_config::{BrokerSettings, PostgresSettings, RedisSettings, TrustSettings};
use huddle_proto::v1::persister_server::PersisterServer;
use huddle_roomlog::RoomLog;
use huddle_telemetry::Readiness;
use huddle_worker::Worker;
use tonic::server::NamedService;
use tonic::service::Routes;

pub use tasks::{decode_task, PersistTasks, Task};

/// Persister settings (flags or `HUDDLE_*` environment variables).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "huddle-persister",
    version,
    about = "Huddle persister: copies Redis room logs into PostgreSQL",
    args_override_self = true
)]
pub struct Settings {
    /// Address of the gRPC server (Persister + grpc.health.v1).
    #[arg(long, env = "HUDDLE_PERSISTER_GRPC_ADDR", default_value = "127.0.0.1:50052")]
    pub grpc_addr: SocketAddr,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HUDDLE_PERSISTER_OPS_ADDR", default_value = "127.0.0.1:9102")]
    pub ops_addr: SocketAddr,
    /// Nice value the persister binary runs at (0 to 19; 0: normal priority): above 0,
    /// its bursts yield the CPU to a gateway or Redis on the same cores.
    #[arg(long, env = "HUDDLE_PERSISTER_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub cpu_nice: i32,
    /// Messages per PersistChunk task (one batched INSERT each).
    #[arg(long, env = "HUDDLE_CHUNK_SIZE", default_value_t = 500, value_parser = huddle_config::at_least_one::<u64>)]
    pub chunk_size: u64,
    /// Unacknowledged tasks a consumer holds at once, per queue.
    #[arg(long, env = "HUDDLE_PREFETCH", default_value_t = 16, value_parser = huddle_config::at_least_one::<u16>)]
    pub prefetch: u16,
    /// How often dirty rooms are re-queued for flushing, in ms.
    #[arg(long, env = "HUDDLE_SWEEP_INTERVAL_MS", default_value_t = 5_000, value_parser = huddle_config::at_least_one::<u64>)]
    pub sweep_interval_ms: u64,
    /// How long a flush's claim on a range stops other flushes from re-queuing it, in ms.
    #[arg(long, env = "HUDDLE_FLUSH_CLAIM_MS", default_value_t = 30_000, value_parser = huddle_config::at_least_one::<u64>)]
    pub flush_claim_ms: u64,
    /// First retry delay of a failed task, in ms (doubles per delivery, capped at 30 s).
    #[arg(long, env = "HUDDLE_RETRY_BASE_MS", default_value_t = 200, value_parser = huddle_config::at_least_one::<u64>)]
    pub retry_base_ms: u64,
    /// The PostgreSQL archive.
    #[command(flatten)]
    pub postgres: PostgresSettings,
    /// The Redis room log.
    #[command(flatten)]
    pub redis: RedisSettings,
    /// RabbitMQ, which carries the FlushRoom and PersistChunk tasks.
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
    /// Inspect or re-drive tasks in the dead-letter queue.
    DeadLetters {
        /// What to do with them.
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

/// What to do with dead-lettered tasks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeadLetterAction {
    /// Show dead-lettered tasks (they stay in the queue).
    List {
        /// Most tasks to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move dead-lettered tasks back to the queues they died in.
    Redrive {
        /// Most tasks to move.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
}

/// Why the persister could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// PostgreSQL could not be reached or migrated.
    #[error(transparent)]
    Archive(#[from] huddle_archive::ArchiveError),
    /// Redis could not be reached.
    #[error(transparent)]
    RoomLog(#[from] huddle_roomlog::RoomLogError),
    /// RabbitMQ could not be reached or its queues declared.
    #[error(transparent)]
    Broker(#[from] huddle_broker::BrokerError),
    /// The gRPC or ops port could not be bound, or the gRPC server not set up.
    #[error(transparent)]
    Worker(#[from] huddle_worker::WorkerError),
    /// No usable gRPC token (missing or too short outside dev mode).
    #[error("grpc token: {0}")]
    Trust(String),
}

/// A running persister: [`Worker::stop`] stops it gracefully (consumers take no new tasks,
/// in-flight tasks and calls finish, then RabbitMQ is closed).
pub type RunningPersister = Worker;

/// Migrates the archive, connects to Redis and RabbitMQ, and starts the consumers, the
/// sweep and the gRPC server.
pub async fn start(settings: Settings) -> Result<RunningPersister, StartError> {
    metrics::register();
    let grpc_token = settings.trust.grpc_token().map_err(StartError::Trust)?;
    let archive = Archive::connect(&settings.postgres)?;
    archive.migrate().await?;
    let log = RoomLog::connect(&settings.redis)?;
    log.ping().await?;
    let broker = Broker::connect(&settings.broker).await?;
    let mut worker = Worker::bind(settings.grpc_addr, settings.ops_addr, readiness(&archive, &log, &broker)).await?;

    let handler = PersistTasks {
        log: log.clone(),
        archive: archive.clone(),
        broker: broker.clone(),
        chunk_size: settings.chunk_size.max(1),
        flush_claim_ms: settings.flush_claim_ms,
    };
    let retry_base = Duration::from_millis(settings.retry_base_ms);
    for queue in [TaskQueue::Flush, TaskQueue::PersistChunk] {
        let consumer = huddle_broker::consume(
            broker.clone(),
            queue,
            settings.prefetch,
            handler.clone(),
            retry_base,
            worker.stopping(),
        );
        worker.spawn(format!("{} consumer", queue.suffix()), consumer);
    }
    let sweep_every = Duration::from_millis(settings.sweep_interval_ms);
    worker.spawn("sweep", sweep::run(log.clone(), broker.clone(), sweep_every, worker.stopping()));
    let service = PersisterServer::new(grpc::PersisterService { log, archive, broker: broker.clone() });
    worker.serve(PersisterServer::<grpc::PersisterService>::NAME, Routes::new(service), grpc_token.as_ref()).await?;
    tracing::info!(grpc_addr = %worker.grpc_addr(), ops_addr = %worker.ops_addr(), "persister running");
    worker.finally(async move { broker.close().await });
    Ok(worker)
}

fn readiness(archive: &Archive, log: &RoomLog, broker: &Broker) -> Readiness {
    let (archive, log, broker) = (archive.clone(), log.clone(), broker.clone());
    Readiness::new(move || {
        let (archive, log, broker) = (archive.clone(), log.clone(), broker.clone());
        Box::pin(async move {
            archive.ping().await.map_err(|e| e.to_string())?;
            log.ping().await.map_err(|e| e.to_string())?;
            if broker.is_connected().await {
                Ok(())
            } else {
                Err("rabbitmq not connected".to_owned())
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Settings;

    #[test]
    fn a_setting_that_zero_would_break_stops_the_persister_at_start() {
        let refused = |flag: &str, value: &str| Settings::try_parse_from(["huddle-persister", flag, value]).is_err();
        for flag in [
            "--chunk-size",
            "--prefetch",
            "--sweep-interval-ms",
            "--flush-claim-ms",
            "--retry-base-ms",
            "--delivery-limit",
            "--database-pool-size",
        ] {
            assert!(refused(flag, "0"), "{flag} 0 was accepted");
            assert!(!refused(flag, "1"), "{flag} 1 was refused");
        }
        assert!(!refused("--cpu-nice", "0"), "--cpu-nice 0 (documented) was refused");
    }
}
