//! A crash between two steps of the write, flush and hydrate paths loses and duplicates
//! nothing. Each test runs the real binaries built with crash points (crates/failpoints)
//! with one point armed: the process aborts the first time it gets there, as if
//! SIGKILLed. The test starts it again (unarmed), its client resends whatever was not
//! acked with the same client_id, and PostgreSQL must end up with every message exactly
//! once, acked seqs kept, seq gap-free.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use huddle_e2e::{failpoint_binary, free_addr, sign_up, wait_ready, OwnRedis, Service, TestEnv, User, Ws};

const MESSAGES: u64 = 30;
const ROOM: &str = "faults";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Hydrator,
    Persister,
    Gateway,
}

impl Role {
    fn binary(self) -> &'static str {
        match self {
            Role::Hydrator => "huddle-hydrator",
            Role::Persister => "huddle-persister",
            Role::Gateway => "huddle-gateway",
        }
    }
}

/// The three binaries on one test's stores, one of them with a crash point armed.
struct Cluster {
    env: TestEnv,
    redis: OwnRedis,
    armed: (Role, &'static str),
    hydrator_grpc: String,
    hydrator_ops: String,
    persister_ops: String,
    gateway_addr: String,
    running: Vec<(Role, Service)>,
    crashes: usize,
}

impl Cluster {
    async fn start(role: Role, point: &'static str) -> Result<Self> {
        let redis = OwnRedis::start()?;
        let env = TestEnv::with_redis(redis.url()).await?;
        let mut cluster = Self {
            env,
            redis,
            armed: (role, point),
            hydrator_grpc: free_addr()?,
            hydrator_ops: free_addr()?,
            persister_ops: free_addr()?,
            gateway_addr: free_addr()?,
            running: Vec::new(),
            crashes: 0,
        };
        for role in [Role::Hydrator, Role::Persister, Role::Gateway] {
            cluster.spawn(role, true).await?;
        }
        Ok(cluster)
    }

    fn base(&self) -> String {
        format!("http://{}", self.gateway_addr)
    }

    async fn spawn(&mut self, role: Role, first_start: bool) -> Result<()> {
        let mut vars: Vec<(&str, String)> = match role {
            Role::Hydrator => vec![
                ("HUDDLE_HYDRATOR_GRPC_ADDR", self.hydrator_grpc.clone()),
                ("HUDDLE_HYDRATOR_OPS_ADDR", self.hydrator_ops.clone()),
                // A crashed hydrator's room lock lasts this long.
                ("HUDDLE_HYDRATE_TIMEOUT_MS", "2000".into()),
            ],
            Role::Persister => vec![
                ("HUDDLE_PERSISTER_GRPC_ADDR", free_addr()?),
                ("HUDDLE_PERSISTER_OPS_ADDR", self.persister_ops.clone()),
                ("HUDDLE_SWEEP_INTERVAL_MS", "300".into()),
                ("HUDDLE_FLUSH_CLAIM_MS", "1000".into()),
                ("HUDDLE_RETRY_BASE_MS", "50".into()),
                ("HUDDLE_CHUNK_SIZE", "5".into()),
            ],
            Role::Gateway => vec![
                ("HUDDLE_GATEWAY_ADDR", self.gateway_addr.clone()),
                ("HUDDLE_GATEWAY_OPS_ADDR", free_addr()?),
                ("HUDDLE_GATEWAY_WORKERS", "2".into()),
                ("HUDDLE_HYDRATOR_URL", format!("http://{}", self.hydrator_grpc)),
                ("HUDDLE_FLUSH_BACKLOG", "7".into()),
            ],
        };
        if first_start && self.armed.0 == role {
            vars.push(("FAILPOINTS", format!("{}=return", self.armed.1)));
        }
        let service = Service::spawn_binary(failpoint_binary(role.binary())?, role.binary(), &self.env, "", &vars)?;
        let ready = match role {
            Role::Hydrator => format!("http://{}/readyz", self.hydrator_ops),
            Role::Persister => format!("http://{}/readyz", self.persister_ops),
            Role::Gateway => format!("{}/readyz", self.base()),
        };
        wait_ready(role.binary(), &ready).await?;
        self.running.push((role, service));
        Ok(())
    }

    /// Starts again, unarmed, every process that crashed.
    async fn heal(&mut self) -> Result<()> {
        let mut crashed = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].1.has_exited()? {
                crashed.push(self.running.remove(i).0);
            } else {
                i += 1;
            }
        }
        for role in crashed {
            self.crashes += 1;
            self.spawn(role, false).await?;
        }
        Ok(())
    }

    /// Joins the room, healing and retrying while the join is refused.
    async fn join(&mut self, user: &User) -> Result<Ws> {
        for _ in 0..50 {
            self.heal().await?;
            if let Ok(mut ws) = Ws::join(&self.base(), ROOM, &user.token, "").await {
                if ws.expect("history").await.is_ok() {
                    return Ok(ws);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("could not join {ROOM} within 10 s")
    }

    /// Sends every message until acked (resending with the same client_id after a
    /// crash), then waits until PostgreSQL holds them all; returns client_id → acked seq.
    async fn run(&mut self) -> Result<BTreeMap<String, u64>> {
        let user = sign_up(&self.base(), "ada").await?;
        let mut ws = self.join(&user).await?;
        let mut acked = BTreeMap::new();
        for i in 1..=MESSAGES {
            if i == MESSAGES / 2 && self.armed.1 == "hydrator::archive_rechecked" {
                // Redis restarts with everything so far: the next write re-checks the room.
                self.redis.save()?;
                self.redis.restart()?;
            }
            let client_id = format!("c{i}");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let seq = loop {
                if tokio::time::Instant::now() > deadline {
                    bail!("message {client_id} was never acked within 30 s");
                }
                match send(&mut ws, &client_id).await {
                    Ok(Some(seq)) => break seq,
                    Ok(None) => {
                        // Refused (a service behind the gateway is down): heal and resend.
                        self.heal().await?;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(_) => ws = self.join(&user).await?,
                }
            };
            acked.insert(client_id, seq);
        }
        drop(ws);
        let db = self.env.db().await?;
        for _ in 0..150 {
            self.heal().await?;
            let stored: i64 = db.query_one("SELECT count(*) FROM messages", &[]).await?.get(0);
            if stored >= MESSAGES as i64 {
                return Ok(acked);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("PostgreSQL never held all {MESSAGES} messages")
    }
}

/// Sends one message: `Some(seq)` when acked, `None` on an error frame (retry), `Err`
/// when the connection is gone.
async fn send(ws: &mut Ws, client_id: &str) -> Result<Option<u64>> {
    let answer = ws.send_for_answer(&format!("body of {client_id}"), client_id).await?;
    Ok(if answer["type"] == "ack" { answer["seq"].as_u64() } else { None })
}

async fn crash_loses_and_duplicates_nothing(role: Role, point: &'static str) -> Result<()> {
    let mut cluster = Cluster::start(role, point).await?;
    let acked = cluster.run().await?;
    assert!(cluster.crashes >= 1, "{point} was never reached: the test tested nothing");
    let db = cluster.env.db().await?;
    let rows = db.query("SELECT seq, client_id FROM messages ORDER BY seq", &[]).await?;
    let stored: Vec<(u64, String)> = rows.iter().map(|row| (row.get::<_, i64>(0) as u64, row.get(1))).collect();
    let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=MESSAGES).collect::<Vec<_>>(), "seq gap-free, each once");
    for (seq, client_id) in &stored {
        assert_eq!(acked.get(client_id), Some(seq), "{client_id} stored under another seq than acked (or twice)");
    }
    assert_eq!(acked.len() as u64, MESSAGES);
    let quarantined: i64 = db.query_one("SELECT count(*) FROM quarantined_messages", &[]).await?.get(0);
    assert_eq!(quarantined, 0);
    cluster.running.clear();
    cluster.env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_crash_after_the_append_before_the_ack() -> Result<()> {
    crash_loses_and_duplicates_nothing(Role::Gateway, "gateway::appended").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persister_crash_after_claiming_a_range_before_queuing_its_chunks() -> Result<()> {
    crash_loses_and_duplicates_nothing(Role::Persister, "persister::flush_claimed").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persister_crash_after_the_commit_before_the_redis_watermark() -> Result<()> {
    crash_loses_and_duplicates_nothing(Role::Persister, "persister::chunk_stored").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persister_crash_after_the_redis_watermark_before_the_task_ack() -> Result<()> {
    crash_loses_and_duplicates_nothing(Role::Persister, "persister::watermark_moved").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydrator_crash_after_reopening_the_archive_before_filling_redis() -> Result<()> {
    crash_loses_and_duplicates_nothing(Role::Hydrator, "hydrator::archive_reopened").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydrator_crash_after_rechecking_the_archive_before_fixing_redis() -> Result<()> {
    crash_loses_and_duplicates_nothing(Role::Hydrator, "hydrator::archive_rechecked").await
}
