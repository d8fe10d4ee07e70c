//! Test harness for Huddle's end-to-end tests, in the "Zero to Production" style: each
//! test gets its own PostgreSQL database, Redis key prefix and RabbitMQ queue prefix
//! on the machine's real servers, and spawns the services on random ports.
//!
//! Missing servers are a test failure with a clear message, never a skip.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use huddle_proto::v1::hydrator_client::HydratorClient;
use huddle_proto::v1::persister_client::PersisterClient;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where the shared servers are (override with the same variables the services read).
/// A gRPC channel whose calls carry the service token.
pub type Authenticated =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, huddle_proto::auth::BearerToken>;

fn server_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// PostgreSQL server URL without database (`HUDDLE_TEST_PG`).
pub fn postgres_server() -> String {
    server_url("HUDDLE_TEST_PG", "postgres://postgres@127.0.0.1:5432")
}

/// Redis URL (`HUDDLE_TEST_REDIS`).
pub fn redis_url() -> String {
    server_url("HUDDLE_TEST_REDIS", "redis://127.0.0.1:6379")
}

/// AMQP URL (`HUDDLE_TEST_AMQP`).
pub fn amqp_url() -> String {
    server_url("HUDDLE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// One test's private slice of the shared servers.
pub struct TestEnv {
    /// Unique per test (creation time and a random part): every name below contains it.
    pub id: String,
    /// The Redis this test's services use (the shared one unless the test brought its own);
    /// for a cluster, every node's URL, separated by commas.
    pub redis_url: String,
    /// Single Redis, or Redis Cluster (an [`OwnRedisCluster`]).
    pub redis_mode: huddle_config::RedisMode,
    /// URL of the test's own database.
    pub database_url: String,
    /// Name of the test's own database.
    pub db_name: String,
    /// Prefix of every Redis key and channel of the test.
    pub key_prefix: String,
    /// Prefix of every RabbitMQ queue and exchange of the test.
    pub queue_prefix: String,
    /// The RabbitMQ this test's services use: the shared one unless the test brought its
    /// own (e.g. an [`OwnRabbitCluster`]'s node list).
    pub amqp_url: String,
    /// The kind of task queue the services declare (quorum unless a test asks otherwise).
    pub queue_type: huddle_config::QueueType,
}

impl TestEnv {
    /// Creates the test's database; fails clearly if a server is not reachable.
    pub async fn new() -> Result<Self> {
        Self::with_redis(redis_url()).await
    }

    /// Like [`TestEnv::new`], on the Redis at `redis_url` (e.g. an [`OwnRedis`]).
    pub async fn with_redis(redis_url: String) -> Result<Self> {
        Self::on(redis_url, huddle_config::RedisMode::Single).await
    }

    /// Like [`TestEnv::new`], on a Redis Cluster of the test's own.
    pub async fn with_redis_cluster(cluster: &OwnRedisCluster) -> Result<Self> {
        Self::on(cluster.urls().join(","), huddle_config::RedisMode::Cluster).await
    }

    async fn on(redis_url: String, redis_mode: huddle_config::RedisMode) -> Result<Self> {
        let _ = huddle_telemetry::init("e2e-test");
        // The creation time in the names lets scripts/clean-test-leftovers.sh remove what
        // a crashed run left behind without touching a run still in progress.
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let id = format!("{secs}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let db_name = format!("huddle_test_{id}");
        let (client, connection) =
            tokio_postgres::connect(&format!("{}/postgres", postgres_server()), tokio_postgres::NoTls)
                .await
                .with_context(|| {
                    format!("PostgreSQL is not reachable at {} (start it: scripts/services.sh)", postgres_server())
                })?;
        tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE {db_name}")).await?;
        let seed = redis_url.split(',').next().unwrap_or_default();
        let redis = redis::Client::open(seed)?;
        let mut conn = redis
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("Redis is not reachable at {redis_url} (start it: scripts/services.sh)"))?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(Self {
            database_url: format!("{}/{db_name}", postgres_server()),
            db_name,
            key_prefix: format!("ht{id}:"),
            queue_prefix: format!("ht{id}"),
            amqp_url: amqp_url(),
            queue_type: huddle_config::QueueType::Quorum,
            redis_url,
            redis_mode,
            id,
        })
    }

    /// The token the test's services require on every internal gRPC call.
    pub fn grpc_token(&self) -> String {
        format!("test-grpc-token-of-{}-0123456789", self.id)
    }

    /// Flags every service takes to trust the others: the gRPC token.
    pub fn trust_args(&self) -> Vec<String> {
        vec!["--grpc-token".into(), self.grpc_token()]
    }

    /// A client of the persister at `addr`, sending the test's gRPC token.
    pub async fn persister_client(&self, addr: SocketAddr) -> Result<PersisterClient<Authenticated>> {
        Ok(PersisterClient::with_interceptor(self.grpc_channel(addr).await?, self.bearer()))
    }

    /// A client of the hydrator at `addr`, sending the test's gRPC token.
    pub async fn hydrator_client(&self, addr: SocketAddr) -> Result<HydratorClient<Authenticated>> {
        Ok(HydratorClient::with_interceptor(self.grpc_channel(addr).await?, self.bearer()))
    }

    /// The interceptor that adds the test's gRPC token to a call.
    pub fn bearer(&self) -> huddle_proto::auth::BearerToken {
        huddle_proto::auth::BearerToken::new(Some(&secrecy::SecretString::from(self.grpc_token())))
    }

    /// A gRPC channel to `addr`.
    pub async fn grpc_channel(&self, addr: SocketAddr) -> Result<tonic::transport::Channel> {
        Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?)
    }

    /// The secret the test's gateways sign sessions with.
    pub fn session_secret(&self) -> String {
        format!("test-session-secret-of-{}", self.id)
    }

    /// Flags shared by every service: this test's database, key and queue prefixes.
    pub fn store_args(&self) -> Vec<String> {
        vec![
            "--database-url".into(),
            self.database_url.clone(),
            "--database-pool-size".into(),
            "4".into(),
            "--redis-url".into(),
            self.redis_url.clone(),
            "--redis-pool-size".into(),
            "8".into(),
            "--key-prefix".into(),
            self.key_prefix.clone(),
            "--redis-mode".into(),
            self.redis_mode_name().into(),
        ]
    }

    /// `single` or `cluster`, as `HUDDLE_REDIS_MODE` takes it.
    pub fn redis_mode_name(&self) -> &'static str {
        match self.redis_mode {
            huddle_config::RedisMode::Single => "single",
            huddle_config::RedisMode::Cluster => "cluster",
        }
    }

    /// Flags for services that talk to RabbitMQ.
    pub fn broker_args(&self) -> Vec<String> {
        vec![
            "--amqp-url".into(),
            self.amqp_url.clone(),
            "--queue-prefix".into(),
            self.queue_prefix.clone(),
            "--queue-type".into(),
            self.queue_type_name().into(),
        ]
    }

    /// `quorum` or `classic`, as `HUDDLE_QUEUE_TYPE` takes it.
    pub fn queue_type_name(&self) -> &'static str {
        match self.queue_type {
            huddle_config::QueueType::Quorum => "quorum",
            huddle_config::QueueType::Classic => "classic",
        }
    }

    /// The test's RabbitMQ topology, connected.
    pub async fn broker(&self) -> Result<huddle_broker::Broker> {
        Ok(huddle_broker::Broker::connect(&self.broker_settings()).await?)
    }

    fn broker_settings(&self) -> huddle_config::BrokerSettings {
        huddle_config::BrokerSettings {
            amqp_url: self.amqp_url.clone(),
            queue_prefix: self.queue_prefix.clone(),
            delivery_limit: 5,
            queue_type: self.queue_type,
            quorum_group_size: None,
        }
    }

    /// The test's Redis hot log, keeping `window` persisted messages per room.
    pub fn room_log(&self, window: u64) -> Result<huddle_roomlog::RoomLog> {
        Ok(huddle_roomlog::RoomLog::connect(&self.redis_settings(window))?)
    }

    /// The Redis settings of [`TestEnv::room_log`].
    pub fn redis_settings(&self, window: u64) -> huddle_config::RedisSettings {
        huddle_config::RedisSettings {
            redis_url: self.redis_url.clone(),
            redis_pool_size: 4,
            key_prefix: self.key_prefix.clone(),
            redis_window: window,
            redis_timeout_ms: 5_000,
            redis_mode: self.redis_mode,
            redis_sharded_pubsub: true,
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: 500,
        }
    }

    /// Deletes every Redis key of this test (what "Redis lost everything" means to it): on
    /// a cluster, on each of its primaries.
    pub async fn wipe_redis(&self) -> Result<u64> {
        let mut deleted = 0;
        for url in self.redis_url.split(',') {
            let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
            if role.first() == Some(&redis::Value::BulkString(b"master".to_vec())) {
                deleted += self.wipe_node(&mut conn).await?;
            }
        }
        Ok(deleted)
    }

    /// Deletes this test's keys on one Redis, one key per DEL (a cluster node refuses a
    /// DEL whose keys span slots).
    async fn wipe_node(&self, conn: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
        let mut cursor = 0u64;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.key_prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.del(key);
                }
                deleted += pipe.query_async::<Vec<u64>>(conn).await?.into_iter().sum::<u64>();
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Makes the archive fail every message insert for a reason that is not the row's
    /// fault (a trigger raising `P0001`): chunk tasks are retried, nothing is quarantined.
    pub async fn make_archive_refuse_inserts(&self) -> Result<()> {
        self.db()
            .await?
            .batch_execute(
                "CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'archive is read-only for this test'; END $$;
                 CREATE TRIGGER refuse_all BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_all();",
            )
            .await?;
        Ok(())
    }

    /// Undoes [`TestEnv::make_archive_refuse_inserts`].
    pub async fn let_archive_accept_inserts(&self) -> Result<()> {
        self.db().await?.batch_execute("DROP TRIGGER refuse_all ON messages").await?;
        Ok(())
    }

    /// A client of this test's database.
    pub async fn db(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Drops the database, the Redis keys and the queues of this test.
    pub async fn cleanup(&self) -> Result<()> {
        self.wipe_redis().await?;
        let broker = huddle_broker::Broker::lazy(&self.broker_settings());
        broker.delete_topology().await?;
        broker.close().await;
        let (client, connection) =
            tokio_postgres::connect(&format!("{}/postgres", postgres_server()), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name)).await?;
        Ok(())
    }
}

/// The three services of one test, in-process, on random ports.
pub struct Stack {
    /// The stores the services use.
    pub env: TestEnv,
    /// The hydrator every gateway calls.
    pub hydrator: huddle_hydrator::RunningHydrator,
    /// The persister.
    pub persister: huddle_persister::RunningPersister,
    /// The gateway replicas, each on its own port.
    pub gateways: Vec<huddle_gateway::RunningGateway>,
}

fn parse<T: clap::Parser>(name: &str, args: Vec<String>) -> T {
    T::parse_from(std::iter::once(name.to_owned()).chain(args))
}

/// Starts a hydrator of `env`.
pub async fn start_hydrator(env: &TestEnv, extra: &[&str]) -> Result<huddle_hydrator::RunningHydrator> {
    let mut args = vec!["--grpc-addr".into(), "127.0.0.1:0".into(), "--ops-addr".into(), "127.0.0.1:0".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(env.store_args());
    args.extend(env.broker_args());
    args.extend(env.trust_args());
    Ok(huddle_hydrator::start(parse("huddle-hydrator", args)).await?)
}

/// Starts a persister of `env` with a fast sweep (later flags win).
pub async fn start_persister(env: &TestEnv, extra: &[&str]) -> Result<huddle_persister::RunningPersister> {
    let mut args = vec![
        "--grpc-addr".into(),
        "127.0.0.1:0".into(),
        "--ops-addr".into(),
        "127.0.0.1:0".into(),
        "--sweep-interval-ms".into(),
        "500".into(),
        "--chunk-size".into(),
        "50".into(),
        "--retry-base-ms".into(),
        "50".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(env.store_args());
    args.extend(env.broker_args());
    args.extend(env.trust_args());
    Ok(huddle_persister::start(parse("huddle-persister", args)).await?)
}

/// Starts a gateway of `env` talking to the hydrator at `hydrator`; `extra` flags win.
pub async fn start_gateway(
    env: &TestEnv,
    hydrator: SocketAddr,
    extra: &[&str],
) -> Result<huddle_gateway::RunningGateway> {
    let mut args = vec![
        "--addr".into(),
        "127.0.0.1:0".into(),
        "--ops-addr".into(),
        "127.0.0.1:0".into(),
        "--workers".into(),
        "2".into(),
        "--hydrator-url".into(),
        format!("http://{hydrator}"),
        "--session-secret".into(),
        env.session_secret(),
        // Every test client signs up from 127.0.0.1, and test clients send as fast as the
        // gateway answers: the per-address and per-account rates are lifted (limits.rs
        // sets them back to test them).
        "--auth-rate".into(),
        "1000000".into(),
        "--auth-burst".into(),
        "1000000".into(),
        "--send-rate".into(),
        "100000".into(),
        "--send-burst".into(),
        "100000".into(),
        "--notice-rate".into(),
        "100000".into(),
    ];
    args.extend(env.store_args());
    args.extend(env.broker_args());
    args.extend(env.trust_args());
    // Last, so a test can override the stores too (later flags win).
    args.extend(extra.iter().map(|s| s.to_string()));
    Ok(huddle_gateway::start(parse("huddle-gateway", args)).await?)
}

/// Extra flags for the services of a [`Stack`].
#[derive(Default)]
pub struct StackOptions<'a> {
    /// How many gateway replicas.
    pub gateways: usize,
    /// Extra gateway flags (they win over the defaults).
    pub gateway_args: &'a [&'a str],
    /// Extra hydrator flags.
    pub hydrator_args: &'a [&'a str],
    /// Extra persister flags (they win over the fast test defaults).
    pub persister_args: &'a [&'a str],
}

impl Stack {
    /// A full stack with `gateways` gateway replicas.
    pub async fn start(gateways: usize) -> Result<Self> {
        Self::start_with(StackOptions { gateways, ..StackOptions::default() }).await
    }

    /// A full stack with extra flags.
    pub async fn start_with(options: StackOptions<'_>) -> Result<Self> {
        Self::start_on(TestEnv::new().await?, options).await
    }

    /// A full stack on `env` (e.g. one with its own Redis).
    pub async fn start_on(env: TestEnv, options: StackOptions<'_>) -> Result<Self> {
        let hydrator = start_hydrator(&env, options.hydrator_args).await?;
        let persister =
            start_persister(&env, options.persister_args).await.context("persister (is RabbitMQ running?)")?;
        let mut running = Vec::new();
        for _ in 0..options.gateways {
            running.push(start_gateway(&env, hydrator.grpc_addr(), options.gateway_args).await?);
        }
        Ok(Self { env, hydrator, persister, gateways: running })
    }

    /// Waits until PostgreSQL holds `count` messages (of all rooms).
    pub async fn wait_persisted(&self, count: i64) -> Result<()> {
        let db = self.env.db().await?;
        eventually(Duration::from_secs(15), || async {
            let n: i64 = db.query_one("SELECT count(*) FROM messages", &[]).await?.get(0);
            Ok((n == count).then_some(()))
        })
        .await
        .with_context(|| format!("PostgreSQL never held {count} messages"))
    }

    /// Asks the persister to flush `room` now (Persister.FlushRoom over gRPC).
    pub async fn flush_room(&self, room: &str) -> Result<()> {
        let mut persister = self.env.persister_client(self.persister.grpc_addr()).await?;
        persister.flush_room(huddle_proto::v1::FlushRoomRequest { room: room.into() }).await?;
        Ok(())
    }

    /// Base URL of gateway `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.gateways[i].addr())
    }

    /// Base URL of gateway `i`'s ops endpoints (`/metrics`).
    pub fn ops_url(&self, i: usize) -> String {
        format!("http://{}", self.gateways[i].ops_addr())
    }

    /// Stops everything and removes the test's data.
    pub async fn shutdown(self) -> Result<()> {
        for gateway in self.gateways {
            gateway.stop().await;
        }
        self.persister.stop().await;
        self.hydrator.stop().await;
        self.env.cleanup().await
    }
}

/// A signed-in API user.
#[derive(Clone, Debug)]
pub struct User {
    /// The account id.
    pub id: i64,
    /// The username.
    pub name: String,
    /// A session token from login.
    pub token: String,
}

/// An HTTP client.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("http client")
}

/// Registers `name` (password `password123`) and logs in.
pub async fn sign_up(base: &str, name: &str) -> Result<User> {
    let client = http();
    let credentials = json!({ "username": name, "password": "password123" });
    let registered = client.post(format!("{base}/api/register")).json(&credentials).send().await?;
    if registered.status() != 201 {
        bail!("register {name}: {} {}", registered.status(), registered.text().await?);
    }
    log_in(base, name).await
}

/// Logs `name` (password `password123`) in again: a new session with its own token.
pub async fn log_in(base: &str, name: &str) -> Result<User> {
    let credentials = json!({ "username": name, "password": "password123" });
    let login: Value = http().post(format!("{base}/api/login")).json(&credentials).send().await?.json().await?;
    Ok(User {
        id: login["user"]["id"].as_i64().context("user id")?,
        name: name.to_owned(),
        token: login["token"].as_str().with_context(|| format!("no token in {login}"))?.to_owned(),
    })
}

/// A WebSocket client of one room.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read while waiting for another type, handed out by later `expect`s.
    skipped: std::collections::VecDeque<Value>,
}

impl Ws {
    /// Joins `room` on the gateway at `base` (`extra_query` is appended, e.g. `since=5`).
    pub async fn join(base: &str, room: &str, token: &str, extra_query: &str) -> Result<Self> {
        let ws_base = base.replacen("http", "ws", 1);
        let url = format!("{ws_base}/ws/rooms/{room}?token={token}&{extra_query}");
        let (stream, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self { stream, skipped: Default::default() })
    }

    /// Like [`Ws::join`], over a TCP socket with a small receive buffer (`bytes`), so a
    /// client that reads slowly falls behind after kilobytes rather than megabytes.
    pub async fn join_with_receive_buffer(base: &str, room: &str, token: &str, bytes: u32) -> Result<Self> {
        let addr: SocketAddr = base.trim_start_matches("http://").parse()?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(bytes)?;
        let tcp = socket.connect(addr).await?;
        let url = format!("ws://{addr}/ws/rooms/{room}?token={token}");
        let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)).await?;
        Ok(Self { stream, skipped: Default::default() })
    }

    /// Sends a raw text frame.
    pub async fn send_raw(&mut self, text: &str) -> Result<()> {
        self.stream.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.send(Message::binary(bytes.to_vec())).await?;
        Ok(())
    }

    /// Sends a JSON frame.
    pub async fn send_json(&mut self, frame: &Value) -> Result<()> {
        self.send_raw(&frame.to_string()).await
    }

    /// Sends a message and waits for its ack; returns the seq.
    pub async fn say(&mut self, body: &str, client_id: &str) -> Result<u64> {
        self.send_json(&json!({ "type": "send", "body": body, "client_id": client_id })).await?;
        let ack = self.expect("ack").await?;
        if ack["client_id"] != client_id {
            bail!("ack for another client_id: {ack}");
        }
        ack["seq"].as_u64().context("ack seq")
    }

    /// Sends a message and returns the server's answer to it: its `ack`, or an `error`
    /// frame (a refusal the client may retry). Other frames in between are skipped.
    pub async fn send_for_answer(&mut self, body: &str, client_id: &str) -> Result<Value> {
        self.send_json(&json!({ "type": "send", "body": body, "client_id": client_id })).await?;
        loop {
            let frame = self.next().await?.context("socket closed before answering")?;
            let answered = frame["type"] == "error" || (frame["type"] == "ack" && frame["client_id"] == client_id);
            if answered {
                return Ok(frame);
            }
        }
    }

    /// The next JSON text frame (10 s timeout); `None` when the server closed.
    pub async fn next(&mut self) -> Result<Option<Value>> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .context("no frame within 10 s")?;
            match frame {
                Some(Ok(Message::Text(text))) => return Ok(Some(serde_json::from_str(&text)?)),
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(error.into()),
            }
        }
    }

    /// The next frame of type `kind`; frames of other types are kept, in order, for
    /// later `expect`s.
    pub async fn expect(&mut self, kind: &str) -> Result<Value> {
        if let Some(i) = self.skipped.iter().position(|f| f["type"] == kind) {
            return Ok(self.skipped.remove(i).expect("index is in range"));
        }
        loop {
            match self.next().await? {
                Some(frame) if frame["type"] == kind => return Ok(frame),
                Some(frame) => self.skipped.push_back(frame),
                None => bail!("connection closed while waiting for {kind}"),
            }
        }
    }

    /// The close frame's code, waiting for the server to close.
    pub async fn close_code(&mut self) -> Result<Option<u16>> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .context("server did not close within 10 s")?;
            match frame {
                Some(Ok(Message::Close(frame))) => return Ok(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok(None),
            }
        }
    }

    /// Writes `bytes` to the connection as they are, outside any frame the client builds
    /// (e.g. a frame header that announces more than is ever sent).
    pub async fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        match self.stream.get_mut() {
            MaybeTlsStream::Plain(tcp) => tcp.write_all(bytes).await?,
            _ => bail!("raw writes need a plain TCP connection"),
        }
        Ok(())
    }

    /// Sends a raw frame as built (e.g. a text frame that is not valid UTF-8).
    pub async fn send_frame(&mut self, frame: tokio_tungstenite::tungstenite::protocol::frame::Frame) -> Result<()> {
        self.stream.send(Message::Frame(frame)).await?;
        Ok(())
    }

    /// Starts the closing handshake with `code`; returns the code of the server's
    /// answering Close and how long until the connection ended (10 s at most).
    pub async fn close_with(mut self, code: u16) -> Result<(Option<u16>, Duration)> {
        use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
        let started = tokio::time::Instant::now();
        self.stream
            .send(Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: "bye".into() })))
            .await?;
        let mut answer = None;
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(frame) = self.stream.next().await {
                match frame {
                    Ok(Message::Close(frame)) => answer = frame.map(|f| u16::from(f.code)),
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        })
        .await
        .context("the connection did not end within 10 s of the client's Close")?;
        Ok((answer, started.elapsed()))
    }

    /// Reads one frame every `pause` until the server closes; returns its close code
    /// (`None` for a reset or a close without code) and how many frames came before it.
    pub async fn read_slowly_until_closed(mut self, pause: Duration) -> Result<(Option<u16>, usize)> {
        let mut frames = 0;
        loop {
            tokio::time::sleep(pause).await;
            let frame = tokio::time::timeout(Duration::from_secs(30), self.stream.next())
                .await
                .context("no frame and no close within 30 s")?;
            match frame {
                Some(Ok(Message::Close(frame))) => return Ok((frame.map(|f| u16::from(f.code)), frames)),
                Some(Ok(_)) => frames += 1,
                Some(Err(_)) | None => return Ok((None, frames)),
            }
        }
    }

    /// Closes the socket cleanly.
    pub async fn leave(mut self) -> Result<()> {
        self.stream.close(None).await?;
        while let Some(Ok(_)) = self.stream.next().await {}
        Ok(())
    }
}

/// The value of an unlabelled Prometheus metric served at `base`/metrics.
pub async fn metric(base: &str, name: &str) -> Result<f64> {
    let text = http().get(format!("{base}/metrics")).send().await?.text().await?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("no metric {name} at {base}/metrics"))?
        .trim()
        .parse()
        .with_context(|| format!("metric {name} is not a number"))
}

/// Seqs of the `messages` array of a history frame or page.
pub fn seqs(frame: &Value) -> Vec<u64> {
    frame["messages"].as_array().map(|m| m.iter().filter_map(|m| m["seq"].as_u64()).collect()).unwrap_or_default()
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("condition not met within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One span received by a [`TraceCollector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// `service.name` of the exporting process.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// The trace the span belongs to.
    pub trace_id: Vec<u8>,
    /// The span's own id.
    pub span_id: Vec<u8>,
    /// Its parent's id (empty for a root span).
    pub parent_span_id: Vec<u8>,
    /// Its string attributes.
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// A minimal OTLP/gRPC receiver (traces and metrics): what the services export, for
/// assertions.
#[derive(Clone, Default)]
pub struct TraceCollector {
    spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
    /// (service, metric name) pairs received.
    metrics: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<(String, String)>>>,
}

fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .iter()
        .flat_map(|r| r.attributes.iter())
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| string_value(kv.value.as_ref()))
        .unwrap_or_default()
}

fn string_value(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match value?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for TraceCollector {
    async fn export(
        &self,
        request: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>,
        tonic::Status,
    > {
        let mut spans = self.spans.lock().expect("collector lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = service_name(resource_spans.resource.as_ref());
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), string_value(kv.value.as_ref())?)))
                        .collect();
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        attributes,
                    });
                }
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService for TraceCollector {
    async fn export(
        &self,
        request: tonic::Request<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse>,
        tonic::Status,
    > {
        let mut metrics = self.metrics.lock().expect("collector lock");
        for resource_metrics in request.into_inner().resource_metrics {
            let service = service_name(resource_metrics.resource.as_ref());
            for scope in resource_metrics.scope_metrics {
                for metric in scope.metrics {
                    metrics.insert((service.clone(), metric.name));
                }
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

impl TraceCollector {
    /// Serves OTLP/gRPC (traces and metrics) on a random local port; returns the
    /// collector and its address.
    pub async fn start() -> Result<(Self, SocketAddr)> {
        use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let collector = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .add_service(MetricsServiceServer::new(collector.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        Ok((collector, addr))
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("collector lock").clone()
    }

    /// Every (service, metric name) received so far.
    pub fn metrics(&self) -> std::collections::BTreeSet<(String, String)> {
        self.metrics.lock().expect("collector lock").clone()
    }
}

// Real binaries as separate processes.

/// A service binary built next to this test (`cargo build --bins` builds them).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(|deps| deps.parent()).context("test binary has no target dir")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} is missing: run `cargo build --workspace --bins` first (scripts/test does)", path.display());
    }
    Ok(path)
}

/// Binary `name` built with crash points (`--features failpoints`), which scripts/test
/// builds into the target dir's `failpoints/` directory beside the normal ones.
pub fn failpoint_binary(name: &str) -> Result<PathBuf> {
    let normal = binary(name)?;
    let target = normal.parent().and_then(|profile| profile.parent()).context("binary has no target dir")?;
    let path = target.join("failpoints").join("debug").join(name);
    if !path.exists() {
        bail!(
            "{} is missing: scripts/test builds it (cargo build --target-dir <target>/failpoints --features {name}/failpoints)",
            path.display()
        );
    }
    Ok(path)
}

/// One running service process and its addresses.
pub struct Replica {
    /// The process.
    pub service: Service,
    /// Its public address: the gateway's HTTP + WebSocket, a worker's gRPC.
    pub addr: String,
    /// Its ops address (`/healthz`, `/readyz`, `/metrics`).
    pub ops: String,
}

impl Replica {
    /// `http://` + the public address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The three binaries as processes on one [`TestEnv`], ready: any number of each.
pub struct Processes {
    /// The hydrators.
    pub hydrators: Vec<Replica>,
    /// The persisters.
    pub persisters: Vec<Replica>,
    /// The gateways; gateway `i` calls hydrator `i % hydrators`.
    pub gateways: Vec<Replica>,
}

/// How many of each process [`Processes::start`] runs (0 counts as 1), and their extra
/// settings.
#[derive(Default)]
pub struct ProcessSettings<'a> {
    /// Hydrator replicas.
    pub hydrators: usize,
    /// Persister replicas.
    pub persisters: usize,
    /// Gateway replicas.
    pub gateways: usize,
    /// The hydrators' extra settings.
    pub hydrator: &'a [(&'a str, String)],
    /// The persisters'.
    pub persister: &'a [(&'a str, String)],
    /// The gateways'.
    pub gateway: &'a [(&'a str, String)],
}

impl Processes {
    /// Starts the hydrators, the persisters and the gateways (two worker threads each),
    /// each on free local ports, exporting to `otlp` if not empty; returns once all are
    /// ready.
    pub async fn start(env: &TestEnv, otlp: &str, settings: ProcessSettings<'_>) -> Result<Self> {
        let spawn = |name: &'static str, own: Vec<(&'static str, String)>, extra: &[(&str, String)]| {
            let mut vars: Vec<(&str, String)> = own;
            vars.extend(extra.iter().cloned());
            Service::spawn(name, env, otlp, &vars)
        };
        let replica = |name, addr_setting, ops_setting, own: Vec<(&'static str, String)>, extra| {
            let (addr, ops) = (free_addr()?, free_addr()?);
            let mut vars = vec![(addr_setting, addr.clone()), (ops_setting, ops.clone())];
            vars.extend(own);
            anyhow::Ok(Replica { service: spawn(name, vars, extra)?, addr, ops })
        };
        let mut hydrators = Vec::new();
        for _ in 0..settings.hydrators.max(1) {
            hydrators.push(replica(
                "huddle-hydrator",
                "HUDDLE_HYDRATOR_GRPC_ADDR",
                "HUDDLE_HYDRATOR_OPS_ADDR",
                vec![],
                settings.hydrator,
            )?);
        }
        let mut persisters = Vec::new();
        for _ in 0..settings.persisters.max(1) {
            persisters.push(replica(
                "huddle-persister",
                "HUDDLE_PERSISTER_GRPC_ADDR",
                "HUDDLE_PERSISTER_OPS_ADDR",
                vec![],
                settings.persister,
            )?);
        }
        let mut gateways = Vec::new();
        for i in 0..settings.gateways.max(1) {
            let hydrator = &hydrators[i % hydrators.len()];
            gateways.push(replica(
                "huddle-gateway",
                "HUDDLE_GATEWAY_ADDR",
                "HUDDLE_GATEWAY_OPS_ADDR",
                vec![("HUDDLE_GATEWAY_WORKERS", "2".into()), ("HUDDLE_HYDRATOR_URL", hydrator.url())],
                settings.gateway,
            )?);
        }
        for (name, replicas) in [("hydrator", &hydrators), ("persister", &persisters)] {
            for replica in replicas {
                wait_ready(name, &format!("http://{}/readyz", replica.ops)).await?;
            }
        }
        for gateway in &gateways {
            wait_ready("gateway", &format!("{}/readyz", gateway.url())).await?;
        }
        Ok(Self { hydrators, persisters, gateways })
    }

    /// SIGTERM to each, gateways first; each must exit 0.
    pub fn terminate(self) -> Result<()> {
        for replica in self.gateways.into_iter().chain(self.persisters).chain(self.hydrators) {
            replica.service.terminate()?;
        }
        Ok(())
    }
}

/// A local address nothing listens on right now.
pub fn free_addr() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// A child process that is killed if the test ends early.
pub struct Service {
    name: &'static str,
    child: Child,
}

impl Service {
    /// Starts binary `name` on `env`'s stores, configured by environment variables only;
    /// `otlp` (if not empty) is where it exports traces.
    pub fn spawn(name: &'static str, env: &TestEnv, otlp: &str, vars: &[(&str, String)]) -> Result<Self> {
        Self::spawn_binary(binary(name)?, name, env, otlp, vars)
    }

    /// Like [`Service::spawn`], running the executable at `path`.
    pub fn spawn_binary(
        path: PathBuf,
        name: &'static str,
        env: &TestEnv,
        otlp: &str,
        vars: &[(&str, String)],
    ) -> Result<Self> {
        let mut command = Command::new(path);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("HUDDLE_DATABASE_URL", &env.database_url)
            .env("HUDDLE_REDIS_URL", &env.redis_url)
            .env("HUDDLE_REDIS_MODE", env.redis_mode_name())
            .env("HUDDLE_KEY_PREFIX", &env.key_prefix)
            .env("HUDDLE_AMQP_URL", &env.amqp_url)
            .env("HUDDLE_QUEUE_PREFIX", &env.queue_prefix)
            .env("HUDDLE_QUEUE_TYPE", env.queue_type_name())
            .env("HUDDLE_SESSION_SECRET", env.session_secret())
            .env("HUDDLE_GRPC_TOKEN", env.grpc_token())
            .env("HUDDLE_AUTH_RATE", "1000000")
            .env("HUDDLE_AUTH_BURST", "1000000")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if !otlp.is_empty() {
            command.env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp);
        }
        for (key, value) in vars {
            command.env(key, value);
        }
        Ok(Self { name, child: command.spawn().with_context(|| format!("spawn {name}"))? })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (e.g. crashed at a crash point).
    pub fn has_exited(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// SIGTERM, then the exit status (graceful shutdown must exit 0).
    pub fn terminate(mut self) -> Result<()> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        if !status.success() {
            bail!("could not signal {}", self.name);
        }
        for _ in 0..150 {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("{} exited with {status} after SIGTERM", self.name);
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{} did not exit within 15 s of SIGTERM", self.name)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 30 s) until `url` answers 200: service `name` is ready.
pub async fn wait_ready(name: &str, url: &str) -> Result<()> {
    let client = http();
    eventually(Duration::from_secs(30), || async {
        Ok(match client.get(url).send().await {
            Ok(response) if response.status() == 200 => Some(()),
            _ => None,
        })
    })
    .await
    .with_context(|| format!("{name} never became ready at {url}"))
}

/// A TCP proxy in front of Redis that can turn its open connections half-open: after
/// [`FreezingProxy::freeze_open_connections`] they stay open but carry nothing, like a
/// connection whose peer vanished without a FIN. New connections work normally.
pub struct FreezingProxy {
    /// Where clients connect instead of the upstream.
    pub addr: SocketAddr,
    frozen_below: std::sync::Arc<std::sync::atomic::AtomicU64>,
    next_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FreezingProxy {
    /// Proxies a new local port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let frozen_below = Arc::new(AtomicU64::new(0));
        let next_id = Arc::new(AtomicU64::new(1));
        let (frozen, ids) = (Arc::clone(&frozen_below), Arc::clone(&next_id));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = ids.fetch_add(1, Ordering::SeqCst);
                let frozen = Arc::clone(&frozen);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let is_frozen = move || frozen.load(Ordering::SeqCst) > id;
                    let up = pump(client_read, server_write, is_frozen.clone());
                    let down = pump(server_read, client_write, is_frozen);
                    tokio::join!(up, down);
                });
            }
        });
        Ok(Self { addr, frozen_below, next_id })
    }

    /// Every connection open now stops carrying bytes, for good, without closing.
    pub fn freeze_open_connections(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_below.store(self.next_id.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    is_frozen: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if is_frozen() {
            // Half-open: hold both sockets, forward nothing, never close.
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A Redis server of the test's own, for faults the shared one must never see (kill,
/// restart, going back to an older snapshot). Killed when dropped.
pub struct OwnRedis {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts `redis-server` on a free port, keeping its files in a fresh directory and
    /// writing them only when told to ([`OwnRedis::save`]).
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Like [`OwnRedis::start`], with extra `redis-server` flags (e.g. `--maxmemory 4mb`).
    pub fn start_with(args: &[&str]) -> Result<Self> {
        let port: u16 = free_addr()?.rsplit(':').next().context("address has a port")?.parse()?;
        let dir = std::env::temp_dir().join(format!("huddle-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut redis = Self { port, dir, args: args.iter().map(|a| a.to_string()).collect(), child: None };
        redis.restart()?;
        Ok(redis)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Writes a snapshot (`SAVE`): what a restart comes back with.
    pub fn save(&self) -> Result<()> {
        let status =
            Command::new("redis-cli").args(["-p", &self.port.to_string(), "SAVE"]).stdout(Stdio::null()).status()?;
        if !status.success() {
            bail!("redis-cli SAVE failed");
        }
        Ok(())
    }

    /// SIGKILLs the server: whatever it did not save is gone.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again (on the same port and files) and waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .spawn()
            .context("redis-server is not installed (scripts/services.sh installs it)")?;
        self.child = Some(child);
        for _ in 0..100 {
            // A server that could not bind the port exits (another one may answer on it).
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                self.child = None;
                bail!("redis-server on port {} exited at start ({status}): the port is taken", self.port);
            }
            let pong = Command::new("redis-cli").args(["-p", &self.port.to_string(), "PING"]).output()?;
            if pong.stdout.starts_with(b"PONG") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("redis-server on port {} did not answer PING within 5 s", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of the test's own: 3 primaries, each with one replica, on free ports
/// (`redis-server --cluster-enabled yes`, joined by `redis-cli --cluster create`). A node
/// can be killed (its replica takes over after the 1 s node timeout) and restarted (it
/// rejoins as a replica). Nothing is saved to disk.
pub struct OwnRedisCluster {
    nodes: Vec<OwnRedis>,
}

impl OwnRedisCluster {
    /// Starts the six nodes and forms the cluster; waits until every slot is served.
    pub fn start() -> Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..20 {
            if nodes.len() == 6 {
                break;
            }
            let port = free_port_with_bus()?;
            let dir = std::env::temp_dir().join(format!("huddle-redis-cluster-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            // Replicas sync at once (by default a primary waits 5 s to batch them).
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--repl-diskless-sync-delay",
                "0",
            ];
            let mut node = OwnRedis { port, dir, args: args.iter().map(|a| a.to_string()).collect(), child: None };
            // Another test may have taken the port since it was found free: take another.
            if node.restart().is_ok() {
                nodes.push(node);
            }
        }
        anyhow::ensure!(nodes.len() == 6, "could not start 6 redis-server nodes on free ports");
        let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .context("redis-cli is not installed (scripts/services.sh installs it)")?;
        if !created.status.success() {
            bail!("redis-cli --cluster create failed: {}", String::from_utf8_lossy(&created.stdout));
        }
        let cluster = Self { nodes };
        cluster.wait_until_whole(Duration::from_secs(20))?;
        cluster.wait_until_replicated(Duration::from_secs(20))?;
        Ok(cluster)
    }

    /// Waits until three nodes are replicas whose link to their primary is up (a replica
    /// that never synced refuses to take over).
    fn wait_until_replicated(&self, within: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let synced = self
                .nodes
                .iter()
                .filter(|node| {
                    self.cli(node.port, &["INFO", "replication"])
                        .is_ok_and(|info| info.contains("role:slave") && info.contains("master_link_status:up"))
                })
                .count();
            if synced == 3 {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("only {synced} of 3 redis cluster replicas synced within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(OwnRedis::url).collect()
    }

    /// What `redis-cli -p <port> <args>` prints.
    pub fn cli(&self, port: u16, args: &[&str]) -> Result<String> {
        let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The port of the primary that serves `slot`, as a live node sees it.
    pub fn primary_of(&self, slot: u16) -> Result<u16> {
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            let nodes = self.cli(node.port, &["CLUSTER", "NODES"])?;
            for line in nodes.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                    continue;
                }
                let serves = fields[8..].iter().any(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    matches!((from.parse::<u16>(), to.parse::<u16>()), (Ok(from), Ok(to)) if (from..=to).contains(&slot))
                });
                if serves {
                    let port =
                        fields[1].split('@').next().and_then(|a| a.rsplit(':').next()).context("node address")?;
                    return Ok(port.parse()?);
                }
            }
        }
        bail!("no live node knows a primary for slot {slot}")
    }

    /// Moves hash slot `slot` (with its keys) from its primary to the primary on `to`, the
    /// way `redis-cli --cluster reshard` moves each slot: IMPORTING and MIGRATING, the keys
    /// in batches by MIGRATE, then the new owner announced to every primary. Commands on
    /// the slot meanwhile get ASK or TRYAGAIN, as in a production reshard.
    pub fn move_slot(&self, slot: u16, to: u16) -> Result<()> {
        let from = self.primary_of(slot)?;
        anyhow::ensure!(from != to, "slot {slot} is already on port {to}");
        let id = |port: u16| -> Result<String> { Ok(self.cli(port, &["CLUSTER", "MYID"])?.trim().to_owned()) };
        let (from_id, to_id) = (id(from)?, id(to)?);
        let slot_arg = slot.to_string();
        let ok = |port: u16, args: &[&str]| -> Result<()> {
            let out = self.cli(port, args)?;
            anyhow::ensure!(out.trim() == "OK", "redis-cli -p {port} {args:?}: {out}");
            Ok(())
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id])?;
        ok(from, &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id])?;
        loop {
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "10"])?;
            let keys: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(&keys);
            ok(from, &args)?;
        }
        // The new owner first, then the old one (as redis-cli's reshard does: clients
        // the old owner sends on with MOVED are then served), then every other primary.
        ok(to, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id])?;
        ok(from, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id])?;
        for node in self.nodes.iter().filter(|node| node.child.is_some() && ![from, to].contains(&node.port)) {
            if self.cli(node.port, &["ROLE"])?.starts_with("master") {
                ok(node.port, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id])?;
            }
        }
        Ok(())
    }

    /// The ports of the primaries, as a live node sees them.
    pub fn primaries(&self) -> Result<Vec<u16>> {
        let node = self.nodes.iter().find(|node| node.child.is_some()).context("no live node")?;
        let nodes = self.cli(node.port, &["CLUSTER", "NODES"])?;
        Ok(nodes
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|fields| fields.len() > 2 && fields[2].contains("master") && !fields[2].contains("fail"))
            .filter_map(|fields| fields[1].split('@').next()?.rsplit(':').next()?.parse().ok())
            .collect())
    }

    /// The port of a replica of the primary on `primary`, as a live node sees it.
    pub fn replica_of(&self, primary: u16) -> Result<u16> {
        let node = self.nodes.iter().find(|node| node.child.is_some()).context("no live node")?;
        let nodes = self.cli(node.port, &["CLUSTER", "NODES"])?;
        let port_of = |fields: &[&str]| fields[1].split('@').next().and_then(|a| a.rsplit(':').next()?.parse().ok());
        let lines: Vec<Vec<&str>> = nodes.lines().map(|line| line.split_whitespace().collect()).collect();
        let id = lines
            .iter()
            .find(|fields| fields.len() > 3 && port_of(fields) == Some(primary))
            .map(|fields| fields[0])
            .with_context(|| format!("no node on port {primary}"))?;
        lines
            .iter()
            .filter(|fields| fields.len() > 3 && fields[2].contains("slave") && fields[3] == id)
            .find_map(|fields| port_of(fields))
            .with_context(|| format!("the primary on port {primary} has no replica"))
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) -> Result<()> {
        self.nodes.iter_mut().find(|node| node.port == port).context("no such node")?.kill()
    }

    /// Starts the node on `port` again (empty: it rejoins as a replica and resyncs).
    pub fn restart(&mut self, port: u16) -> Result<()> {
        self.nodes.iter_mut().find(|node| node.port == port).context("no such node")?.restart()
    }

    /// Waits until a primary other than the one on `old_primary` serves `slot`, and the
    /// cluster is whole again (a replica took over the killed primary's slots).
    pub fn wait_for_failover(&self, slot: u16, old_primary: u16, within: Duration) -> Result<u16> {
        let deadline = std::time::Instant::now() + within;
        loop {
            match self.primary_of(slot) {
                Ok(primary) if primary != old_primary => {
                    self.wait_until_whole(deadline.saturating_duration_since(std::time::Instant::now()))?;
                    return Ok(primary);
                }
                _ if std::time::Instant::now() > deadline => {
                    bail!("no replica took over slot {slot} from port {old_primary} within {within:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Waits until a live node reports every slot served (`cluster_state:ok`) and no
    /// primary of a slot is one that is down.
    pub fn wait_until_whole(&self, within: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let whole = self.nodes.iter().filter(|node| node.child.is_some()).all(|node| {
                self.cli(node.port, &["CLUSTER", "INFO"]).is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if whole {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("the redis cluster did not become whole within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A free port whose cluster bus port (10000 above it) is free as well.
fn free_port_with_bus() -> Result<u16> {
    for _ in 0..100 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port with a free cluster bus port found")
}

/// A RabbitMQ cluster of this test's own, on free ports: nodes that can be killed and
/// restarted without touching the machine's shared RabbitMQ. Started through
/// `/usr/lib/rabbitmq/bin/rabbitmq-server` (Debian's `/usr/sbin` wrapper drops the
/// environment that names the node, its ports and its directories).
pub struct OwnRabbitCluster {
    nodes: Vec<RabbitNode>,
}

struct RabbitNode {
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
}

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

impl RabbitNode {
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(format!("{RABBITMQ_BIN}/{program}"));
        // Erlang writes erl_crash.dump into the working directory when a command fails.
        command
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq"));
        command
    }

    fn ctl(&self, args: &[&str]) -> Result<()> {
        let output = self.command("rabbitmqctl").arg("-n").arg(&self.name).args(args).output()?;
        if !output.status.success() {
            bail!("rabbitmqctl {} on {}: {}", args.join(" "), self.name, String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    fn spawn(&self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("server.log"))?;
        self.command("rabbitmq-server")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("{RABBITMQ_BIN}/rabbitmq-server (install rabbitmq-server: scripts/services.sh)")
            })?;
        Ok(())
    }

    /// Waits until the node runs (`await_startup` fails at once while the node is not yet
    /// reachable, so it is asked again).
    fn await_startup(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            match self.ctl(&["--timeout", "30", "await_startup"]) {
                Ok(()) => return Ok(()),
                Err(error) if std::time::Instant::now() > deadline => {
                    return Err(error)
                        .with_context(|| format!("node {} did not start (log: {})", self.name, self.dir.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Waits for a node just spawned; one that does not start is started again on new
    /// ports, twice at most: a port [`free_addr`] picked can be taken by another process
    /// before the node binds it (ephemeral ports of outgoing connections come from the same
    /// range). The last failure carries the end of the node's log.
    fn start_up_or_move(&mut self) -> Result<()> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            let Err(error) = self.await_startup() else { return Ok(()) };
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            if attempt == ATTEMPTS {
                return Err(error.context(format!("its log ends:\n{tail}")));
            }
            eprintln!(
                "node {} did not start (attempt {attempt}); moving it to new ports. Its log ends:\n{tail}",
                self.name
            );
            let _ = self.kill();
            self.port = free_addr()?.rsplit(':').next().context("port")?.parse()?;
            self.dist_port = free_addr()?.rsplit(':').next().context("port")?.parse()?;
            self.spawn()?;
            attempt += 1;
        }
    }

    /// SIGKILL, as a crash or a lost machine would.
    fn kill(&self) -> Result<()> {
        let pid = std::fs::read_to_string(self.dir.join("pid"))?;
        let status = Command::new("kill").args(["-KILL", pid.trim()]).status()?;
        if !status.success() {
            bail!("kill -KILL {} ({}) failed", pid.trim(), self.name);
        }
        Ok(())
    }
}

impl OwnRabbitCluster {
    /// Starts `size` nodes and joins them into one cluster (quorum queues declared on it
    /// get a replica on every node).
    pub fn start(size: usize) -> Result<Self> {
        Self::start_with_config(size, "")
    }

    /// Like [`OwnRabbitCluster::start`], each node with `config` in its `rabbitmq.conf`
    /// (e.g. a TLS listener).
    pub fn start_with_config(size: usize, config: &str) -> Result<Self> {
        let cookie = uuid::Uuid::new_v4().simple().to_string();
        // Node names and directories are unique per cluster, so that the tests of one
        // process can each run a cluster at the same time.
        static CLUSTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let cluster = format!("{}-{}", std::process::id(), CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut nodes = Vec::new();
        for i in 0..size {
            let port = free_addr()?.rsplit(':').next().context("port")?.parse()?;
            let dist_port = free_addr()?.rsplit(':').next().context("port")?.parse()?;
            let name = format!("huddle-test-{cluster}-{i}@localhost");
            let dir = std::env::temp_dir().join(format!("huddle-rabbit-{cluster}-{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("plugins"), "[].")?;
            std::fs::write(dir.join("rabbitmq.conf"), config)?;
            let cookie_file = dir.join(".erlang.cookie");
            std::fs::write(&cookie_file, &cookie)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cookie_file, std::fs::Permissions::from_mode(0o400))?;
            nodes.push(RabbitNode { name, port, dist_port, dir });
        }
        let mut cluster = Self { nodes };
        for node in &cluster.nodes {
            node.spawn()?;
        }
        for node in &mut cluster.nodes {
            node.start_up_or_move()?;
        }
        let first = &cluster.nodes[0].name;
        for node in &cluster.nodes[1..] {
            node.ctl(&["stop_app"])?;
            node.ctl(&["join_cluster", first])?;
            node.ctl(&["start_app"])?;
        }
        Ok(cluster)
    }

    /// Every node's AMQP URL, comma-separated (`HUDDLE_AMQP_URL`'s cluster form).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", n.port)).collect::<Vec<_>>().join(",")
    }

    /// SIGKILLs node `i`.
    pub fn kill(&self, i: usize) -> Result<()> {
        self.nodes[i].kill()
    }

    /// Starts node `i` again (it rejoins the cluster from its own files) and waits for it.
    pub fn restart(&self, i: usize) -> Result<()> {
        self.nodes[i].spawn()?;
        self.nodes[i].await_startup()
    }

    /// Names the nodes that run quorum queue `queue`'s replicas and its leader, as
    /// `rabbitmq-queues quorum_status` reports them (for failure messages).
    pub fn quorum_status(&self, i: usize, queue: &str) -> String {
        let node = &self.nodes[i];
        match node.command("rabbitmq-queues").arg("-n").arg(&node.name).args(["quorum_status", queue]).output() {
            Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
            Err(error) => error.to_string(),
        }
    }
}

impl OwnRabbitCluster {
    /// The nodes (by index) that hold a replica of quorum queue `queue`, as node `i`'s
    /// `rabbitmq-queues quorum_status` reports them.
    pub fn quorum_members(&self, i: usize, queue: &str) -> Vec<usize> {
        let status = self.quorum_status(i, queue);
        (0..self.nodes.len()).filter(|n| status.contains(&self.nodes[*n].name)).collect()
    }
}

impl Drop for OwnRabbitCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = node.kill();
        }
        for node in &self.nodes {
            let _ = std::fs::remove_dir_all(&node.dir);
        }
    }
}

/// `cargo metadata` of the workspace, resolved for this platform only (the dependencies
/// the build fetched), read offline.
pub fn cargo_metadata() -> Result<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = Command::new("rustc").arg("-vV").output().context("rustc -vV")?;
    let host = String::from_utf8(rustc.stdout)?
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host")?;
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", &host, "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
        .output()
        .context("cargo metadata")?;
    anyhow::ensure!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// A memory figure of a process from `/proc/<pid>/status`, in MiB: `VmRSS` (resident
/// now) or `VmHWM` (peak resident).
pub fn memory_mib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kib / 1024)
}

/// POSTs a name and password to `/api/{what}` (`register` or `login`), from the client
/// address `forwarded_for` if given (the gateway must trust 127.0.0.1 as its proxy): (status, error code, Retry-After in seconds).
pub async fn post_credentials(
    base: &str,
    what: &str,
    name: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> Result<(u16, String, Option<u64>)> {
    let mut request =
        http().post(format!("{base}/api/{what}")).json(&json!({ "username": name, "password": password }));
    if let Some(forwarded_for) = forwarded_for {
        request = request.header("X-Forwarded-For", forwarded_for);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    let body: Value = response.json().await.context("JSON body")?;
    Ok((status, body["error"]["code"].as_str().unwrap_or_default().to_owned(), retry_after))
}
