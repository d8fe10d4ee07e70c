//! Redis connections that know which Redis process they talk to.
//!
//! A Redis that restarts from an older state (a snapshot, an AOF that lost its last
//! second, a replica that lagged behind and was promoted) holds rooms whose counters went
//! back, and nothing inside that Redis can tell. Its process id (`run_id`, new on every
//! start) can: each connection reads it once when it opens, and puts it in place of
//! [`THIS_PROCESS`] in each command it sends, so a script compares the process that runs
//! it with the one each room was last checked on. In a cluster, the connection to each
//! node does so, whichever node a command is routed (or redirected) to.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::{ClusterConnection, Connect};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};

/// Stands, in a command's arguments, for the `run_id` of the Redis process that runs the
/// command: the connection that sends it puts its process's `run_id` in its place. Only in
/// a command sent alone (a script call), not inside a pipeline. (No argument Huddle sends
/// is otherwise equal to it: it holds NUL bytes.)
pub(crate) const THIS_PROCESS: &str = "\0this-process\0";

/// `cmd` with every [`THIS_PROCESS`] argument replaced by `run_id`.
fn with_run_id<'c>(cmd: &'c Cmd, run_id: &str) -> Cow<'c, Cmd> {
    let is_marker =
        |arg: &redis::Arg<&[u8]>| matches!(arg, redis::Arg::Simple(bytes) if *bytes == THIS_PROCESS.as_bytes());
    if !cmd.args_iter().any(|arg| is_marker(&arg)) {
        return Cow::Borrowed(cmd);
    }
    let mut replaced = Cmd::new();
    for arg in cmd.args_iter() {
        match arg {
            redis::Arg::Simple(_) if is_marker(&arg) => replaced.arg(run_id),
            redis::Arg::Simple(bytes) => replaced.arg(bytes),
            // A cursor (SCAN's): no script call has one.
            _ => replaced.cursor_arg(0),
        };
    }
    Cow::Owned(replaced)
}

/// Reads the `run_id` of the process at the other end of `conn`.
async fn read_run_id(conn: &mut impl ConnectionLike) -> Result<Arc<str>, RedisError> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let run_id = run_id_of(&info)
        .ok_or_else(|| RedisError::from((ErrorKind::UnexpectedReturnType, "INFO server reported no run_id")))?;
    Ok(run_id.into())
}

/// Opens connections through deadpool-redis's manager and tags each with its server's
/// `run_id`.
pub(crate) struct ServerManager {
    inner: deadpool_redis::Manager,
    /// When the pool's clock started ([`Health`] times are relative to it).
    clock: Instant,
    /// Milliseconds on the pool's clock when Redis was last suspected of having gone away:
    /// a connection whose last reply is older is PINGed before it is handed out. Shared
    /// with every connection's [`Health`], which sets it when its connection fails.
    suspected_at_ms: Arc<AtomicU64>,
}

impl ServerManager {
    pub(crate) fn new(url: &str) -> Result<Self, RedisError> {
        Ok(Self {
            inner: deadpool_redis::Manager::new(connection_info(url)?)?,
            clock: Instant::now(),
            suspected_at_ms: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Every connection idle since now is PINGed before its next use.
    pub(crate) fn suspect(&self) {
        suspect_since(self.clock, &self.suspected_at_ms);
    }
}

fn suspect_since(clock: Instant, suspected_at_ms: &AtomicU64) {
    suspected_at_ms.store(clock.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
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
pub(crate) struct Health {
    /// The pool's clock.
    clock: Instant,
    /// Milliseconds on the pool's clock of the last successful reply.
    last_reply_ms: AtomicU64,
    broken: AtomicBool,
    /// The pool's [`ServerManager::suspect`] mark.
    pool_suspected_at_ms: Arc<AtomicU64>,
}

/// How recent a reply must be for a connection to be handed out without a PING.
const FRESH: Duration = Duration::from_secs(1);

impl Health {
    fn new(clock: Instant, pool_suspected_at_ms: Arc<AtomicU64>) -> Self {
        let now = clock.elapsed().as_millis() as u64;
        Self { clock, last_reply_ms: AtomicU64::new(now), broken: AtomicBool::new(false), pool_suspected_at_ms }
    }

    fn observe<T>(&self, result: &Result<T, RedisError>) {
        match result {
            Ok(_) => self.last_reply_ms.store(self.clock.elapsed().as_millis() as u64, Ordering::Relaxed),
            Err(error) if error.is_unrecoverable_error() || error.is_io_error() || error.is_connection_dropped() => {
                self.broken.store(true, Ordering::Relaxed);
                // Most likely Redis restarted: its other connections are as dead as this
                // one, but would be handed out unchecked while their last reply is fresh.
                suspect_since(self.clock, &self.pool_suspected_at_ms);
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
        let run_id = read_run_id(&mut conn).await?;
        let health = Arc::new(Health::new(self.clock, Arc::clone(&self.suspected_at_ms)));
        Ok(ServerConnection { conn, run_id, health })
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

/// A connection to use: a pooled one to a single Redis, or the cluster's.
pub(crate) enum Conn {
    /// To a single Redis. The connection is multiplexed: many callers share it at once,
    /// each request pipelined behind the others, so it goes back to the pool as soon as it
    /// is handed out rather than after the caller's round-trip.
    Pooled { conn: MultiplexedConnection, run_id: Arc<str>, health: Arc<Health> },
    /// To Redis Cluster, which routes each command by its keys' hash slot and follows
    /// the cluster's redirections and failovers.
    Cluster(ClusterConnection<NodeConnection>),
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
        Ok(Self::Pooled {
            conn: pooled.conn.clone(),
            run_id: Arc::clone(&pooled.run_id),
            health: Arc::clone(&pooled.health),
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Pooled { conn, run_id, health } => Box::pin(async move {
                let result = conn.req_packed_command(&with_run_id(cmd, run_id)).await;
                health.observe(&result);
                result
            }),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Pooled { conn, health, .. } => Box::pin(async move {
                let result = conn.req_packed_commands(pipeline, offset, count).await;
                health.observe(&result);
                result
            }),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Pooled { conn, .. } => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The connection to one node of a Redis Cluster, tagged with that node's `run_id`. The
/// cluster client opens a new one whenever it (re)connects to a node, so the tag is always
/// that of the process at the other end.
#[derive(Clone)]
pub(crate) struct NodeConnection {
    conn: MultiplexedConnection,
    run_id: Arc<str>,
}

impl Connect for NodeConnection {
    fn connect_with_config<'a, T>(info: T, config: AsyncConnectionConfig) -> RedisFuture<'a, Self>
    where
        T: IntoConnectionInfo + Send + 'a,
    {
        Box::pin(async move {
            let mut conn = <MultiplexedConnection as Connect>::connect_with_config(info, config).await?;
            let run_id = read_run_id(&mut conn).await?;
            Ok(Self { conn, run_id })
        })
    }
}

impl ConnectionLike for NodeConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move { self.conn.req_packed_command(&with_run_id(cmd, &self.run_id)).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.conn.req_packed_commands(pipeline, offset, count)
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
    use super::{run_id_of, with_run_id, THIS_PROCESS};

    #[test]
    fn run_id_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:270755b8b48fee75\r\ntcp_port:6379\r\n";
        assert_eq!(run_id_of(info), Some("270755b8b48fee75"));
        assert_eq!(run_id_of("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(run_id_of("redis_version:7.0.15"), None);
    }

    #[test]
    fn the_process_marker_becomes_the_connections_run_id() {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg("abc").arg(1).arg("k").arg(THIS_PROCESS).arg("x");
        let replaced = with_run_id(&cmd, "r1");
        assert_eq!(
            replaced.get_packed_command(),
            redis::cmd("EVALSHA").arg("abc").arg(1).arg("k").arg("r1").arg("x").get_packed_command()
        );
        let plain = redis::cmd("GET").arg("k").clone();
        assert!(matches!(with_run_id(&plain, "r1"), std::borrow::Cow::Borrowed(_)));
    }
}
