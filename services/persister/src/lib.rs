//! The persist path: copies each room's new Redis entries into PostgreSQL.
//!
//! A `FlushRoom` master task claims the room's unpersisted range and splits it into
//! `PersistChunk` tasks; chunk workers write each range with one batched, idempotent
//! insert, advance the watermark and trim Redis. A sweep re-queues every dirty room
//! periodically, so a room is flushed even if the gateway that held it died. The
//! `Persister` gRPC service lets operators flush a room and read its flush lag.

mod grpc;
mod metrics;
mod sweep;
mod tasks;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use huddle_archive::Archive;
use huddle_broker::{Broker, TaskQueue};
use huddle_config::{BrokerSettings, PostgresSettings, RedisSettings};
use huddle_proto::v1::persister_server::PersisterServer;
use huddle_roomlog::RoomLog;
use huddle_telemetry::{OpsServer, Readiness};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use tasks::PersistTasks;

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
    /// Messages per PersistChunk task (one batched INSERT each).
    #[arg(long, env = "HUDDLE_CHUNK_SIZE", default_value_t = 500)]
    pub chunk_size: u64,
    /// Unacknowledged tasks a consumer holds at once, per queue.
    #[arg(long, env = "HUDDLE_PREFETCH", default_value_t = 16)]
    pub prefetch: u16,
    /// How often dirty rooms are re-queued for flushing, in ms.
    #[arg(long, env = "HUDDLE_SWEEP_INTERVAL_MS", default_value_t = 5_000)]
    pub sweep_interval_ms: u64,
    /// How long a flush's claim on a range stops other flushes from re-queuing it, in ms.
    #[arg(long, env = "HUDDLE_FLUSH_CLAIM_MS", default_value_t = 30_000)]
    pub flush_claim_ms: u64,
    /// First retry delay of a failed task, in ms (doubles per delivery, capped at 30 s).
    #[arg(long, env = "HUDDLE_RETRY_BASE_MS", default_value_t = 200)]
    pub retry_base_ms: u64,
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
    /// Inspect or re-drive tasks in the dead-letter queue.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

/// What to do with dead-lettered tasks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeadLetterAction {
    /// Show dead-lettered tasks (they stay in the queue).
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move dead-lettered tasks back to the queues they died in.
    Redrive {
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
}

/// Why the persister could not start.
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
    #[error(transparent)]
    Broker(#[from] huddle_broker::BrokerError),
}

/// A running persister.
pub struct RunningPersister {
    grpc_addr: SocketAddr,
    ops_addr: SocketAddr,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    ops: OpsServer,
    broker: Broker,
}

impl RunningPersister {
    /// Where the gRPC server listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the ops endpoints listen.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// Graceful stop: consumers take no new tasks, in-flight tasks finish and are acked
    /// (unstarted prefetched ones go back to the queue when the channel closes).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for worker in self.workers {
            let _ = worker.await;
        }
        let _ = self.server.await;
        self.broker.close().await;
        self.ops.stop().await;
    }
}

/// Migrates the archive, connects to Redis and RabbitMQ, and starts the consumers, the
/// sweep and the gRPC server.
pub async fn start(settings: Settings) -> Result<RunningPersister, StartError> {
    let archive = Archive::connect(&settings.postgres)?;
    archive.migrate().await?;
    let log = RoomLog::connect(&settings.redis)?;
    log.ping().await?;
    let broker = Broker::connect(&settings.broker).await?;

    let grpc_listener = tokio::net::TcpListener::bind(settings.grpc_addr).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let ops_listener = TcpListener::bind(settings.ops_addr)?;
    let ops_addr = ops_listener.local_addr()?;
    let ops = huddle_telemetry::spawn_ops_server(ops_listener, readiness(&archive, &log, &broker))?;

    let handler = PersistTasks {
        log: log.clone(),
        archive: archive.clone(),
        broker: broker.clone(),
        chunk_size: settings.chunk_size.max(1),
        flush_claim_ms: settings.flush_claim_ms,
    };
    let (stop, stopped) = watch::channel(false);
    let retry_base = Duration::from_millis(settings.retry_base_ms);
    let mut workers = Vec::new();
    for queue in [TaskQueue::Flush, TaskQueue::PersistChunk] {
        workers.push(tokio::spawn(huddle_broker::consume(
            broker.clone(),
            queue,
            settings.prefetch,
            handler.clone(),
            retry_base,
            stopped.clone(),
        )));
    }
    workers.push(tokio::spawn(sweep::run(
        log.clone(),
        broker.clone(),
        Duration::from_millis(settings.sweep_interval_ms),
        stopped.clone(),
    )));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<PersisterServer<grpc::PersisterService>>().await;
    let mut grpc_stopped = stopped;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(huddle_proto::reflection_service()?)
            .add_service(PersisterServer::new(grpc::PersisterService { log, archive, broker: broker.clone() }))
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(grpc_listener), async move {
                let _ = grpc_stopped.wait_for(|stop| *stop).await;
            }),
    );
    tracing::info!(%grpc_addr, %ops_addr, "persister running");
    Ok(RunningPersister { grpc_addr, ops_addr, stop, workers, server, ops, broker })
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
