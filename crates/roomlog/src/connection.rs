//! Pooled Redis connections that know which Redis process they talk to.
//!
//! A Redis that restarts from an older state (a snapshot, an AOF that lost its last
//! second, a replica that lagged behind) holds rooms whose counters went back, and
//! nothing inside that Redis can tell. Its process id (`run_id`, new on every start) can:
//! each connection reads it once when it opens, and the scripts compare it with the
//! process each room was last checked on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

/// Opens connections through deadpool-redis's manager and tags each with its server's
/// `run_id`.
pub(crate) struct ServerManager {
    inner: deadpool_redis::Manager,
    /// When the pool's clock started ([`Health`] times are relative to it).
    clock: Instant,
    /// Milliseconds on the pool's clock when Redis was last suspected of having gone away:
    /// a connection whose last reply is older is PINGed before it is handed out.
    suspected_at_ms: AtomicU64,
}

impl ServerManager {
    pub(crate) fn new(url: &str) -> Result<Self, RedisError> {
        Ok(Self {
            inner: deadpool_redis::Manager::new(connection_info(url)?)?,
            clock: Instant::now(),
            suspected_at_ms: AtomicU64::new(0),
        })
    }

    /// Every connection idle since now is PINGed before its next use.
    pub(crate) fn suspect(&self) {
        self.suspected_at_ms.store(self.clock.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }
}

/// Where `url` points, with Nagle's algorithm off: requests are small and pipelined, and
/// a request held back until the previous one is acknowledged waits for the server's
/// delayed ACK (tens of milliseconds).
pub fn connection_info(url: &str) -> Result<redis::ConnectionInfo, RedisError> {
    use redis::IntoConnectionInfo;
    Ok(url.into_connection_info()?.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

/// A connection, the `run_id` of the Redis process at its other end, and what its last
/// replies said about its health.
pub(crate) struct ServerConnection {
    conn: MultiplexedConnection,
    run_id: Arc<str>,
    health: Arc<Health>,
}

/// Whether a connection still works, as its own traffic shows: a reply within
/// [`FRESH`] proves it without a PING, and a connection error condemns it.
struct Health {
    /// The pool's clock.
    clock: Instant,
    /// Milliseconds on the pool's clock of the last successful reply.
    last_reply_ms: AtomicU64,
    broken: AtomicBool,
}

/// How recent a reply must be for a connection to be handed out without a PING.
const FRESH: Duration = Duration::from_secs(1);

impl Health {
    fn new(clock: Instant) -> Self {
        let now = clock.elapsed().as_millis() as u64;
        Self { clock, last_reply_ms: AtomicU64::new(now), broken: AtomicBool::new(false) }
    }

    fn observe<T>(&self, result: &Result<T, RedisError>) {
        match result {
            Ok(_) => self.last_reply_ms.store(self.clock.elapsed().as_millis() as u64, Ordering::Relaxed),
            Err(error) if error.is_unrecoverable_error() || error.is_io_error() || error.is_connection_dropped() => {
                self.broken.store(true, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }

    /// A reply within [`FRESH`], and after Redis was last suspected of having gone away.
    fn replied_recently(&self, suspected_at_ms: u64) -> bool {
        let last = self.last_reply_ms.load(Ordering::Relaxed);
        last >= suspected_at_ms && self.clock.elapsed().saturating_sub(Duration::from_millis(last)) < FRESH
    }
}

impl managed::Manager for ServerManager {
    type Type = ServerConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ServerConnection, RedisError> {
        let mut conn = managed::Manager::create(&self.inner).await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
        let run_id = run_id_of(&info)
            .ok_or_else(|| RedisError::from((ErrorKind::UnexpectedReturnType, "INFO server reported no run_id")))?;
        Ok(ServerConnection { conn, run_id: run_id.into(), health: Arc::new(Health::new(self.clock)) })
    }

    /// A connection that failed is dropped; one that answered within the last second is
    /// handed out as it is (no PING round-trip on the send path); an idle one is PINGed.
    async fn recycle(&self, connection: &mut ServerConnection, metrics: &Metrics) -> RecycleResult<RedisError> {
        if connection.health.broken.load(Ordering::Relaxed) {
            return Err(managed::RecycleError::message("the connection failed"));
        }
        if connection.health.replied_recently(self.suspected_at_ms.load(Ordering::Relaxed)) {
            return Ok(());
        }
        let result = managed::Manager::recycle(&self.inner, &mut connection.conn, metrics).await;
        if result.is_ok() {
            connection.health.observe(&Ok::<(), RedisError>(()));
        }
        result
    }
}

/// The pool of tagged connections.
pub(crate) type ServerPool = managed::Pool<ServerManager>;

/// A pooled connection to use. The connection is multiplexed: many callers share it at
/// once, each request pipelined behind the others, so it goes back to the pool as soon as
/// it is handed out rather than after the caller's round-trip.
pub(crate) struct Conn {
    conn: MultiplexedConnection,
    run_id: Arc<str>,
    health: Arc<Health>,
}

impl Conn {
    /// Takes a connection from the pool (checking it as [`ServerManager`] does) and
    /// returns it to the pool at once.
    ///
    /// The pool's future (waiting, creating and recycling, each under a deadline) takes
    /// about 7 KB; boxed, it lives only for the checkout instead of inside every future
    /// that talks to Redis — a socket's task holds one of those for its whole life.
    pub(crate) async fn get(pool: &ServerPool) -> Result<Self, managed::PoolError<RedisError>> {
        let pooled = Box::pin(pool.get()).await?;
        Ok(Self { conn: pooled.conn.clone(), run_id: Arc::clone(&pooled.run_id), health: Arc::clone(&pooled.health) })
    }

    /// The `run_id` of the Redis process this connection talks to.
    pub(crate) fn run_id(&self) -> Arc<str> {
        Arc::clone(&self.run_id)
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.health.observe(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.health.observe(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

fn run_id_of(info: &str) -> Option<&str> {
    info.lines().find_map(|line| line.strip_prefix("run_id:")).map(str::trim).filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::run_id_of;

    #[test]
    fn run_id_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:270755b8b48fee75\r\ntcp_port:6379\r\n";
        assert_eq!(run_id_of(info), Some("270755b8b48fee75"));
        assert_eq!(run_id_of("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(run_id_of("redis_version:7.0.15"), None);
    }
}
