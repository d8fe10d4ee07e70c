//! The write path: the gateway browsers talk to.
//!
//! * REST: accounts and sessions ([`api`]), history pages.
//! * WebSocket `/ws/rooms/{room}` ([`ws`]): each `send` is one atomic Redis append
//!   (seq + log + publish), acked at once; nothing on that path waits for PostgreSQL
//!   or RabbitMQ.
//! * Live fan-out through one Redis pub/sub connection per worker thread ([`hub`]), so
//!   any number of gateway replicas behave as one.
//! * Each worker thread has its own Redis connections and hub ([`AppState::for_worker`]):
//!   a send and its deliveries never wait for another thread to be scheduled.
//! * Flush triggers: a room's last member leaving, or its backlog reaching a threshold,
//!   queues a FlushRoom task for the persister.
//!
//! It writes no SQL (crates/archive) and no Redis key by hand (crates/roomlog), and never
//! touches PostgreSQL on the send path.

mod abort;
pub mod api;
pub mod auth;
pub mod error;
mod flush;
mod frame_limit;
pub mod hub;
pub mod limits;
mod metrics;
mod ops;
mod page;
pub mod protocol;
pub mod rooms;
mod socket;
mod ws;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use huddle_archive::Archive;
use huddle_broker::Broker;
use huddle_config::{BrokerSettings, PostgresSettings, RedisSettings, TrustSettings, MIN_SECRET_BYTES};
use huddle_proto::auth::BearerToken;
use huddle_proto::v1::hydrator_client::HydratorClient;
use huddle_roomlog::RoomLog;
use huddle_telemetry::Readiness;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;

/// The secret used in dev mode when none is configured: anyone can forge sessions signed
/// with it, so only `--dev` allows it.
const DEV_SECRET: &str = "huddle-dev-secret-change-me";

/// Gateway settings (flags or `HUDDLE_*` environment variables).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "huddle-gateway",
    version,
    about = "Huddle gateway: WebSocket rooms, REST API, web client",
    args_override_self = true
)]
pub struct Settings {
    /// Address to serve HTTP and WebSocket on.
    #[arg(long, env = "HUDDLE_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Address of the ops endpoints (`/metrics`, `/healthz`, `/readyz`): keep it off
    /// the public network.
    #[arg(long, env = "HUDDLE_GATEWAY_OPS_ADDR", default_value = "127.0.0.1:9100")]
    pub ops_addr: SocketAddr,
    /// Worker threads (0: one per core).
    #[arg(long, env = "HUDDLE_GATEWAY_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// gRPC URL of the hydrator.
    #[arg(long, env = "HUDDLE_HYDRATOR_URL", default_value = "http://127.0.0.1:50051", value_parser = huddle_config::grpc_url)]
    pub hydrator_url: String,
    /// Secret that signs session tokens; the same on every replica.
    /// At least 32 bytes, e.g. `openssl rand -base64 48`; required unless `--dev`.
    #[arg(long, env = "HUDDLE_SESSION_SECRET", hide_env_values = true)]
    pub session_secret: Option<SecretString>,
    /// Service-to-service trust (the gRPC token, dev mode).
    #[command(flatten)]
    pub trust: TrustSettings,
    /// Session lifetime in seconds.
    #[arg(long, env = "HUDDLE_SESSION_TTL_SECS", default_value_t = 7 * 24 * 3600, value_parser = huddle_config::at_least_one::<u64>)]
    pub session_ttl_secs: u64,
    /// Mark the session cookie Secure (behind HTTPS).
    #[arg(long, env = "HUDDLE_COOKIE_SECURE", default_value_t = false)]
    pub cookie_secure: bool,
    /// Origins allowed to open WebSockets besides the gateway's own (comma-separated; `*` for any).
    #[arg(long, env = "HUDDLE_ALLOWED_ORIGINS", value_delimiter = ',', default_value = "", value_parser = page::allowed_origin)]
    pub allowed_origins: Vec<String>,
    /// Deadline of a join (room hydration, history), of each hydrator call and of a
    /// send's append, in ms; past it the client gets 503 (join) or `unavailable` (send).
    #[arg(long, env = "HUDDLE_JOIN_TIMEOUT_MS", default_value_t = 5_000, value_parser = huddle_config::at_least_one::<u64>)]
    pub join_timeout_ms: u64,
    /// Messages sent in the `history` frame on join.
    #[arg(long, env = "HUDDLE_JOIN_HISTORY", default_value_t = 100)]
    pub join_history: usize,
    /// Queue a flush each time a room's unpersisted backlog reaches a multiple of this.
    #[arg(long, env = "HUDDLE_FLUSH_BACKLOG", default_value_t = 1000, value_parser = huddle_config::at_least_one::<u64>)]
    pub flush_backlog: u64,
    /// How often the Redis pub/sub connection is PINGed, in ms; one that does not answer
    /// within the join timeout is replaced and every socket resyncs.
    #[arg(long, env = "HUDDLE_PUBSUB_KEEPALIVE_MS", default_value_t = 5_000, value_parser = huddle_config::at_least_one::<u64>)]
    pub pubsub_keepalive_ms: u64,
    /// Password hashes (argon2id, ~19 MiB each) computed at once.
    #[arg(long, env = "HUDDLE_HASH_CONCURRENCY", default_value_t = 2, value_parser = huddle_config::at_least_one::<usize>)]
    pub hash_concurrency: usize,
    /// Sign-ups and logins waiting for a hashing slot; beyond that they get 503 `overloaded`.
    #[arg(long, env = "HUDDLE_HASH_QUEUE", default_value_t = 32, value_parser = huddle_config::at_least_one::<usize>)]
    pub hash_queue: usize,
    /// Longest a frame may wait for a socket that does not read, in ms; then the
    /// connection is reset (a client that stopped reading is never kept).
    #[arg(long, env = "HUDDLE_WRITE_TIMEOUT_MS", default_value_t = 10_000, value_parser = huddle_config::at_least_one::<u64>)]
    pub write_timeout_ms: u64,
    /// Longest the body of an API request may take to arrive after its head, in ms (a
    /// client that never sends the body it announced); then it gets 408 `request_timeout`.
    #[arg(long, env = "HUDDLE_BODY_TIMEOUT_MS", default_value_t = 10_000, value_parser = huddle_config::at_least_one::<u64>)]
    pub body_timeout_ms: u64,
    /// Outgoing frames queued per socket before it is closed as a slow consumer (4008).
    #[arg(long, env = "HUDDLE_SOCKET_QUEUE", default_value_t = 1024, value_parser = huddle_config::at_least_one::<usize>)]
    pub socket_queue: usize,
    /// On a Redis Cluster: pub/sub pushes a worker thread may have waiting before it drops
    /// new ones and resyncs every room it serves from the log (the counterpart of the
    /// output-buffer limit with which a single Redis cuts off a pub/sub client that lags).
    #[arg(long, env = "HUDDLE_REDIS_PUSH_BACKLOG", default_value_t = 16_384, value_parser = huddle_config::at_least_one::<usize>)]
    pub redis_push_backlog: usize,
    /// Sustained sends per second allowed per account (all its sockets on this gateway).
    #[arg(long, env = "HUDDLE_SEND_RATE", default_value_t = 20.0, value_parser = huddle_config::rate)]
    pub send_rate: f64,
    /// Burst of sends allowed per account.
    #[arg(long, env = "HUDDLE_SEND_BURST", default_value_t = 50, value_parser = huddle_config::at_least_one::<u32>)]
    pub send_burst: u32,
    /// Typing notices and pings per second per account (burst: 4 times as many).
    #[arg(long, env = "HUDDLE_NOTICE_RATE", default_value_t = 5.0, value_parser = huddle_config::rate)]
    pub notice_rate: f64,
    /// History pages per second per account (burst: 4 times as many).
    #[arg(long, env = "HUDDLE_HISTORY_RATE", default_value_t = 5.0, value_parser = huddle_config::rate)]
    pub history_rate: f64,
    /// Joins (socket upgrades) per second per account (burst: 4 times as many).
    #[arg(long, env = "HUDDLE_JOIN_RATE", default_value_t = 5.0, value_parser = huddle_config::rate)]
    pub join_rate: f64,
    /// Sign-ups and logins per minute per client address (an IPv6 /64 counts as one).
    #[arg(long, env = "HUDDLE_AUTH_RATE", default_value_t = 30.0, value_parser = huddle_config::rate)]
    pub auth_rate: f64,
    /// Burst of sign-ups and logins allowed per client address.
    #[arg(long, env = "HUDDLE_AUTH_BURST", default_value_t = 10, value_parser = huddle_config::at_least_one::<u32>)]
    pub auth_burst: u32,
    /// Proxies whose `X-Forwarded-For` header names the client (comma-separated IP
    /// addresses or CIDR networks, e.g. the ingress controllers' pod network); from anyone
    /// else the header is ignored.
    #[arg(long, env = "HUDDLE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = limits::parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Wrong passwords in a row an account may get before its logins are locked.
    #[arg(long, env = "HUDDLE_LOGIN_FREE_FAILURES", default_value_t = 5)]
    pub login_free_failures: u32,
    /// Longest lock on an account's logins, in seconds; the lock starts at 1 s after the
    /// free failures and doubles with each further failure.
    #[arg(long, env = "HUDDLE_LOGIN_MAX_LOCK_SECS", default_value_t = 900, value_parser = huddle_config::at_least_one::<u64>)]
    pub login_max_lock_secs: u64,
    /// Open sockets per account on this gateway.
    #[arg(long, env = "HUDDLE_ACCOUNT_CONNECTIONS", default_value_t = 20, value_parser = huddle_config::at_least_one::<usize>)]
    pub account_connections: usize,
    /// Open sockets on this gateway (beyond: 503 `overloaded`).
    #[arg(long, env = "HUDDLE_MAX_CONNECTIONS", default_value_t = 20_000, value_parser = huddle_config::at_least_one::<usize>)]
    pub max_connections: usize,
    /// Serve `/ws/echo`, an unauthenticated echo socket on the rooms' transport, for
    /// WebSocket conformance tests (scripts/autobahn). Never in production.
    #[arg(long, env = "HUDDLE_WS_ECHO", default_value_t = false, hide = true)]
    pub ws_echo: bool,
    /// The PostgreSQL archive (accounts, room directory, history).
    #[command(flatten)]
    pub postgres: PostgresSettings,
    /// The Redis room log and pub/sub.
    #[command(flatten)]
    pub redis: RedisSettings,
    /// RabbitMQ, where FlushRoom tasks for the persister are queued.
    #[command(flatten)]
    pub broker: BrokerSettings,
}

impl Settings {
    /// What failed logins cost.
    pub fn login_backoff(&self) -> huddle_roomlog::LoginBackoff {
        huddle_roomlog::LoginBackoff {
            free_failures: self.login_free_failures,
            first_lock: std::time::Duration::from_secs(1),
            max_lock: std::time::Duration::from_secs(self.login_max_lock_secs),
        }
    }

    /// The write deadline of a socket frame.
    pub fn write_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.write_timeout_ms)
    }

    /// How long an API request's body may take to arrive.
    pub fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.body_timeout_ms)
    }

    /// The deadline of a join, of each hydrator call and of a pub/sub (un)subscribe.
    pub fn join_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.join_timeout_ms)
    }
}

/// State of every request and socket on one worker thread: its own Redis pool and hub,
/// and the process-wide parts (limits, hashing threads, the archive) shared by all.
pub struct AppState {
    /// The settings the gateway started with.
    pub settings: Settings,
    /// The Redis room log (this thread's connections); also holds the revoked session ids.
    pub log: RoomLog,
    /// The PostgreSQL archive: accounts and the room directory.
    pub archive: Archive,
    /// Room operations: hydration on join, sends, history, presence and flush triggers.
    pub rooms: rooms::RoomService,
    /// Live fan-out to this thread's sockets.
    pub hub: hub::LocalHub,
    /// Signs and verifies session tokens.
    pub signer: auth::TokenSigner,
    /// The argon2id hashing threads for sign-ups and logins.
    pub passwords: Arc<auth::PasswordHashing>,
    /// Turns true when the gateway shuts down: sockets close with 1012.
    pub shutdown: watch::Receiver<bool>,
    /// Per-account rates and connection counts.
    pub limits: Arc<limits::Limits>,
    /// Held while the revoked-session cache is reloaded from PostgreSQL (one at a time).
    pub revocations_reload: Arc<tokio::sync::Mutex<()>>,
    hub_settings: hub::HubSettings,
}

impl AppState {
    /// The state for a new worker thread: the shared parts, and a Redis pool and a hub of
    /// its own (both open their connections on first use, on that thread).
    fn for_worker(&self) -> Self {
        let log = self.log.with_own_pool().unwrap_or_else(|error| {
            tracing::error!(%error, "cannot build a Redis pool for this worker; it shares the process's pool");
            self.log.clone()
        });
        Self {
            settings: self.settings.clone(),
            rooms: self.rooms.with_log(log.clone()),
            archive: self.archive.clone(),
            hub: hub::LocalHub::new(self.hub_settings.clone(), log.clone()),
            signer: self.signer.clone(),
            passwords: Arc::clone(&self.passwords),
            shutdown: self.shutdown.clone(),
            limits: Arc::clone(&self.limits),
            revocations_reload: Arc::clone(&self.revocations_reload),
            hub_settings: self.hub_settings.clone(),
            log,
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binding the listen address, or starting the password-hashing threads, failed.
    #[error("bind: {0}")]
    Io(#[from] std::io::Error),
    /// PostgreSQL could not be reached or migrated.
    #[error(transparent)]
    Archive(#[from] huddle_archive::ArchiveError),
    /// Redis could not be reached.
    #[error(transparent)]
    RoomLog(#[from] huddle_roomlog::RoomLogError),
    /// The configured hydrator URL is not a valid URI.
    #[error("hydrator url: {0}")]
    HydratorUrl(String),
    /// No usable session secret or gRPC token (missing or too short outside dev mode).
    #[error("session secret: {0}")]
    Secret(String),
}

/// A running gateway.
pub struct RunningGateway {
    addr: SocketAddr,
    ops_addr: SocketAddr,
    ops: actix_web::dev::ServerHandle,
    handle: actix_web::dev::ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: watch::Sender<bool>,
    flush_stop: watch::Sender<bool>,
    flush_publisher: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the ops endpoints listen.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// Graceful stop: stop accepting, tell every socket to reconnect elsewhere (1012),
    /// which counts them out of their rooms and queues the emptied rooms' flushes.
    pub async fn stop(self) {
        self.handle.pause().await;
        let _ = self.shutdown.send(true);
        self.handle.stop(true).await;
        let _ = self.server.await;
        // Only now, with every socket gone, the publisher drains the flush requests of
        // the rooms they left.
        let _ = self.flush_stop.send(true);
        let _ = self.flush_publisher.await;
        self.ops.stop(true).await;
    }
}

/// The limits as configured; idle accounts' buckets are dropped every minute, so their
/// memory follows the active accounts.
fn limits(settings: &Settings) -> Arc<limits::Limits> {
    let burst = |rate: f64| (rate * 4.0).ceil().clamp(1.0, u32::MAX as f64) as u32;
    let limits = limits::Limits::new(&limits::LimitSettings {
        send: (settings.send_rate, settings.send_burst),
        notices: (settings.notice_rate, burst(settings.notice_rate)),
        history: (settings.history_rate, burst(settings.history_rate)),
        joins: (settings.join_rate, burst(settings.join_rate)),
        auth: (settings.auth_rate / 60.0, settings.auth_burst),
        connections_per_account: settings.account_connections,
        connections: settings.max_connections,
    });
    let weak = Arc::downgrade(&limits);
    tokio::spawn(async move {
        let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
        while let Some(limits) = {
            every_minute.tick().await;
            weak.upgrade()
        } {
            limits.forget_idle();
        }
    });
    limits
}

/// The secret that signs sessions: the configured one if it is long enough; the
/// development one only in dev mode.
fn session_secret(settings: &Settings) -> Result<SecretString, StartError> {
    match (&settings.session_secret, settings.trust.dev) {
        (Some(secret), _) if secret.expose_secret().len() >= MIN_SECRET_BYTES => Ok(secret.clone()),
        (Some(secret), true) => {
            tracing::warn!("HUDDLE_SESSION_SECRET is shorter than {MIN_SECRET_BYTES} bytes; accepted in dev mode only");
            Ok(secret.clone())
        }
        (None, true) => {
            tracing::warn!("dev mode without HUDDLE_SESSION_SECRET: sessions are signed with a public secret");
            Ok(SecretString::from(DEV_SECRET))
        }
        (Some(_), false) => Err(StartError::Secret(format!(
            "HUDDLE_SESSION_SECRET must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -base64 48`)"
        ))),
        (None, false) => Err(StartError::Secret(
            "HUDDLE_SESSION_SECRET is not set: set it (at least 32 random bytes, the same on every gateway), \
             or pass --dev (HUDDLE_DEV=1) on a development machine"
                .into(),
        )),
    }
}

/// The process's open-file limit (the soft one, which `accept` runs into).
#[allow(unsafe_code)] // getrlimit has no safe wrapper in std
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct into `limit`, which outlives the call.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

/// `HUDDLE_MAX_CONNECTIONS`, lowered to what the open-file limit leaves for sockets after
/// the gateway's own descriptors (listeners, each worker's Redis pool and pub/sub
/// connection, the PostgreSQL pool, RabbitMQ, gRPC, plain HTTP requests). Out of
/// descriptors, actix stops accepting and joins hang; under the cap they get 503
/// `overloaded` instead.
fn connection_cap(settings: &Settings, open_file_limit: Option<u64>) -> usize {
    let workers = match settings.workers {
        0 => std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        n => n,
    };
    let own = 64 + workers * (settings.redis.redis_pool_size + 1) + settings.postgres.database_pool_size;
    let Some(limit) = open_file_limit else { return settings.max_connections };
    let room = usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(own).max(1);
    if settings.max_connections > room {
        tracing::warn!(
            configured = settings.max_connections,
            open_file_limit = limit,
            reserved = own,
            capped = room,
            "HUDDLE_MAX_CONNECTIONS is more than the open-file limit allows; capped (raise `ulimit -n` to hold more)"
        );
        return room;
    }
    settings.max_connections
}

/// Migrates the archive, connects to Redis, binds and starts the HTTP server.
pub async fn start(mut settings: Settings) -> Result<RunningGateway, StartError> {
    metrics::register();
    settings.max_connections = connection_cap(&settings, open_file_limit());
    let session_secret = session_secret(&settings)?;
    let grpc_token = settings.trust.grpc_token().map_err(StartError::Secret)?;
    let archive = Archive::connect(&settings.postgres)?;
    archive.migrate().await?;
    let log = RoomLog::connect(&settings.redis)?;
    log.ping().await?;
    let broker = Broker::lazy(&settings.broker);
    let hydrator_channel = tonic::transport::Endpoint::from_shared(settings.hydrator_url.clone())
        .map_err(|e| StartError::HydratorUrl(e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(settings.join_timeout())
        .connect_lazy();
    let hub_settings = hub::HubSettings {
        redis: settings.redis.clone(),
        keys: log.keys().clone(),
        queue_capacity: settings.socket_queue,
        push_backlog: settings.redis_push_backlog,
        deadline: settings.join_timeout(),
        keepalive: std::time::Duration::from_millis(settings.pubsub_keepalive_ms),
    };
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (flush_stop, flush_stopped) = watch::channel(false);
    let (flushes, flush_publisher) = flush::spawn(broker, flush_stopped);
    let template = Arc::new(AppState {
        rooms: rooms::RoomService::new(
            log.clone(),
            HydratorClient::with_interceptor(
                hydrator_channel,
                rooms::CallMetadata::new(BearerToken::new(grpc_token.as_ref())),
            ),
            flushes,
            settings.flush_backlog,
            settings.join_timeout(),
        ),
        signer: auth::TokenSigner::new(session_secret.expose_secret()),
        passwords: Arc::new(auth::PasswordHashing::new(settings.hash_concurrency, settings.hash_queue)?),
        limits: limits(&settings),
        revocations_reload: Arc::new(tokio::sync::Mutex::new(())),
        settings: settings.clone(),
        log: log.clone(),
        archive: archive.clone(),
        hub: hub::LocalHub::new(hub_settings.clone(), log.clone()),
        hub_settings,
        shutdown,
    });
    let readiness = Readiness::new(move || {
        let (archive, log) = (archive.clone(), log.clone());
        Box::pin(async move {
            archive.ping().await.map_err(|e| e.to_string())?;
            log.ping().await.map_err(|e| e.to_string())
        })
    });

    let listener = TcpListener::bind(settings.addr)?;
    let addr = listener.local_addr()?;
    let ops_listener = TcpListener::bind(settings.ops_addr)?;
    let ops_addr = ops_listener.local_addr()?;
    let ws_echo = settings.ws_echo;
    if ws_echo {
        tracing::warn!("serving /ws/echo: a conformance-test route; never enable it in production");
    }
    let ops_readiness = readiness.clone();
    let mut server = HttpServer::new(move || {
        let readiness = readiness.clone();
        let state = web::Data::new(template.for_worker());
        let app = App::new();
        let app = if ws_echo { app.route("/ws/echo", web::get().to(socket::echo)) } else { app };
        app.wrap(page::security_headers())
            .app_data(state.clone())
            .app_data(api::json_config())
            .app_data(api::query_config())
            .configure(|cfg| ops::configure_probes(cfg, readiness))
            .configure(api::configure)
            .route("/ws/rooms/{room}", web::get().to(ws::upgrade))
            .configure(page::configure)
            .default_service(web::to(api::not_found))
    })
    .on_connect(abort::ConnectionAbort::on_connect)
    // Frames are small and many: none may wait for the client's delayed ACK of the last.
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(10)
    .listen(listener)?;
    if settings.workers > 0 {
        server = server.workers(settings.workers);
    }
    let server = server.run();
    let handle = server.handle();
    let server = tokio::spawn(server);
    let ops_server = HttpServer::new(move || {
        let readiness = ops_readiness.clone();
        App::new().configure(|cfg| ops::configure(cfg, readiness))
    })
    .workers(1)
    .disable_signals()
    .listen(ops_listener)?
    .run();
    let ops = ops_server.handle();
    tokio::spawn(ops_server);
    tracing::info!(%addr, %ops_addr, "gateway listening");
    Ok(RunningGateway { addr, ops_addr, ops, handle, server, shutdown: shutdown_tx, flush_stop, flush_publisher })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{connection_cap, Settings};

    fn settings(args: &[&str]) -> Settings {
        Settings::parse_from(
            ["huddle-gateway", "--workers", "2", "--redis-pool-size", "32", "--database-pool-size", "16"]
                .iter()
                .chain(args),
        )
    }

    #[test]
    fn trusted_proxies_take_addresses_and_networks_and_refuse_anything_else() {
        let parsed = settings(&["--trusted-proxies", "10.42.0.0/16,192.0.2.7"]).trusted_proxies;
        assert_eq!(parsed.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10.42.0.0/16", "192.0.2.7/32"]);
        let refused = Settings::try_parse_from(["huddle-gateway", "--trusted-proxies", "10.0.0.1,ingress"]);
        assert!(refused.unwrap_err().to_string().contains("neither an IP address nor a CIDR network"));
    }

    #[test]
    fn a_setting_that_zero_or_nonsense_would_break_stops_the_gateway_at_start() {
        let zero_means_nothing = [
            "--database-pool-size",
            "--database-timeout-ms",
            "--redis-pool-size",
            "--redis-timeout-ms",
            "--redis-wait-timeout-ms",
            "--delivery-limit",
            "--session-ttl-secs",
            "--join-timeout-ms",
            "--flush-backlog",
            "--pubsub-keepalive-ms",
            "--hash-concurrency",
            "--hash-queue",
            "--write-timeout-ms",
            "--body-timeout-ms",
            "--socket-queue",
            "--redis-push-backlog",
            "--send-burst",
            "--auth-burst",
            "--login-max-lock-secs",
            "--account-connections",
            "--max-connections",
        ];
        let refused = |flag: &str, value: &str| Settings::try_parse_from(["huddle-gateway", flag, value]).is_err();
        for flag in zero_means_nothing {
            assert!(refused(flag, "0"), "{flag} 0 was accepted");
            assert!(!refused(flag, "1"), "{flag} 1 was refused");
        }
        for flag in ["--send-rate", "--notice-rate", "--history-rate", "--join-rate", "--auth-rate"] {
            for nonsense in ["0", "-1", "NaN", "inf", "1e23", "fast"] {
                assert!(refused(flag, nonsense), "{flag} {nonsense} was accepted");
            }
            assert!(!refused(flag, "0.5"), "{flag} 0.5 was refused");
        }
        for (flag, nonsense) in [
            ("--hydrator-url", "127.0.0.1:50051"),
            ("--hydrator-url", "ftp://127.0.0.1:50051"),
            ("--amqp-url", "not a url"),
            ("--amqp-url", "amqp://a:5672/%2f,http://b:5672"),
            ("--allowed-origins", "not an origin"),
            ("--allowed-origins", "https://chat.example.com/path"),
        ] {
            assert!(refused(flag, nonsense), "{flag} {nonsense} was accepted");
        }
        // Where 0 means something (documented), it stays accepted.
        for flag in ["--workers", "--join-history", "--login-free-failures", "--redis-wait-replicas"] {
            assert!(!refused(flag, "0"), "{flag} 0 was refused");
        }
        let origins =
            settings(&["--allowed-origins", "https://chat.example.com,http://127.0.0.1:3000"]).allowed_origins;
        assert_eq!(origins, ["https://chat.example.com", "http://127.0.0.1:3000"]);
    }

    #[test]
    fn connections_are_capped_to_what_the_open_file_limit_leaves() {
        // 64 + 2 workers × (32 pooled + 1 pub/sub) + 16 = 146 descriptors of its own.
        assert_eq!(connection_cap(&settings(&["--max-connections", "20000"]), Some(20_000)), 19_854);
        assert_eq!(connection_cap(&settings(&["--max-connections", "5000"]), Some(20_000)), 5_000);
        assert_eq!(connection_cap(&settings(&["--max-connections", "20000"]), None), 20_000);
        assert_eq!(connection_cap(&settings(&["--max-connections", "20000"]), Some(100)), 1);
    }
}
