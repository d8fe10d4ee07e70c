//! Pooled Redis connections that know which Redis process they talk to.
//!
//! A Redis that restarts from an older state (a snapshot, an AOF that lost its last
//! second, a replica that lagged behind) holds rooms whose counters went back, and
//! nothing inside that Redis can tell. Its process id (`run_id`, new on every start) can:
//! each connection reads it once when it opens, and the scripts compare it with the
//! process each room was last checked on.

use std::sync::Arc;

use deadpool::managed::{self, Metrics, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

/// Opens connections through deadpool-redis's manager and tags each with its server's
/// `run_id`.
pub(crate) struct ServerManager {
    inner: deadpool_redis::Manager,
}

impl ServerManager {
    pub(crate) fn new(url: &str) -> Result<Self, RedisError> {
        Ok(Self { inner: deadpool_redis::Manager::new(url)? })
    }
}

/// A connection and the `run_id` of the Redis process at its other end.
pub(crate) struct ServerConnection {
    conn: MultiplexedConnection,
    run_id: Arc<str>,
}

impl managed::Manager for ServerManager {
    type Type = ServerConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ServerConnection, RedisError> {
        let mut conn = managed::Manager::create(&self.inner).await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
        let run_id = run_id_of(&info)
            .ok_or_else(|| RedisError::from((ErrorKind::UnexpectedReturnType, "INFO server reported no run_id")))?;
        Ok(ServerConnection { conn, run_id: run_id.into() })
    }

    async fn recycle(&self, connection: &mut ServerConnection, metrics: &Metrics) -> RecycleResult<RedisError> {
        managed::Manager::recycle(&self.inner, &mut connection.conn, metrics).await
    }
}

/// The pool of tagged connections.
pub(crate) type ServerPool = managed::Pool<ServerManager>;

/// A connection checked out of the pool.
pub(crate) struct Conn(pub(crate) managed::Object<ServerManager>);

impl Conn {
    /// The `run_id` of the Redis process this connection talks to.
    pub(crate) fn run_id(&self) -> Arc<str> {
        Arc::clone(&self.0.run_id)
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.conn.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.conn.get_db()
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
