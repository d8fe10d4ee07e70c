//! Micro-benchmark of the write path's one Redis round-trip: [`RoomLog::append`] (the
//! append script: seq INCR, XADD, client_id marker, dirty index, PUBLISH) against a real
//! Redis, one at a time (the latency of a send's storage step) and 64 in flight (what the
//! multiplexed pool pipelines).
//!
//! `cargo bench -p huddle-roomlog --bench append`; Redis from `HUDDLE_BENCH_REDIS_URL`
//! (default `redis://127.0.0.1:6379`; for a Redis Cluster, every node's URL separated by
//! commas with `HUDDLE_BENCH_REDIS_MODE=cluster`), and `HUDDLE_BENCH_WAIT_REPLICAS` (default
//! 0) replicas each append waits for. Every key it writes is under its own prefix
//! (`bench-append-<pid>:`); the log is trimmed between batches the way the persister's
//! watermark trims it, and its keys are deleted at the end. It flushes nothing.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use huddle_config::RedisSettings;
use huddle_domain::{Post, RoomName};
use huddle_roomlog::{AppendOutcome, RoomLog};
use tokio::runtime::Runtime;

const IN_FLIGHT: usize = 64;

struct Bench {
    runtime: Runtime,
    log: RoomLog,
    room: RoomName,
    url: String,
    prefix: String,
    sent: u64,
}

impl Bench {
    fn new() -> Self {
        let url = std::env::var("HUDDLE_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("bench-append-{}:", std::process::id());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let log = RoomLog::connect(&RedisSettings {
            redis_url: url.clone(),
            redis_pool_size: 8,
            key_prefix: prefix.clone(),
            redis_window: 2000,
            redis_timeout_ms: 2_000,
            redis_mode: match std::env::var("HUDDLE_BENCH_REDIS_MODE").as_deref() {
                Ok("cluster") => huddle_config::RedisMode::Cluster,
                _ => huddle_config::RedisMode::Single,
            },
            redis_sharded_pubsub: true,
            redis_wait_replicas: std::env::var("HUDDLE_BENCH_WAIT_REPLICAS")
                .map(|n| n.parse().expect("HUDDLE_BENCH_WAIT_REPLICAS is a number"))
                .unwrap_or(0),
            redis_wait_timeout_ms: 500,
        })
        .unwrap_or_else(|error| panic!("the append benchmark needs a Redis: {url} is not usable: {error}"));
        let room = RoomName::parse("append-bench").expect("a room name");
        runtime.block_on(async {
            if let Err(error) = log.ping().await {
                panic!(
                    "the append benchmark needs a reachable Redis (HUDDLE_BENCH_REDIS_URL, default redis://127.0.0.1:6379): {url}: {error}"
                );
            }
            log.hydrate(&room, 0, 0, &[]).await.expect("initialise the benchmark's room");
        });
        Self { runtime, log, room, url, prefix, sent: 0 }
    }

    fn post(&mut self) -> Post {
        self.sent += 1;
        Post {
            user_id: 1,
            user_name: "bench".into(),
            body: "x".repeat(64),
            sent_at_ms: huddle_domain::now_ms(),
            client_id: format!("b{}", self.sent),
        }
    }

    /// Lets Redis trim the log to its window, as the persister's watermark would.
    async fn trim(&self) {
        let state = self.log.state(&self.room).await.expect("room state");
        self.log.mark_persisted(&self.room, state.last_seq).await.expect("mark persisted");
    }

    /// Deletes every key under the benchmark's prefix (and nothing else), on every node
    /// the URL names (on a cluster, the node that owns the room's slot holds them).
    fn clean_up(&self) {
        self.runtime.block_on(async {
            for url in self.url.split(',') {
                self.clean_up_node(url).await;
            }
        });
    }

    async fn clean_up_node(&self, url: &str) {
        {
            let client = redis::Client::open(url).expect("redis url");
            let mut conn = client.get_multiplexed_async_connection().await.expect("redis connection");
            // A cluster's replicas refuse the DEL; their primaries' deletes reach them.
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await.expect("ROLE");
            if role.first().is_some_and(|role| redis::from_redis_value_ref::<String>(role).is_ok_and(|r| r == "slave"))
            {
                return;
            }
            let pattern = format!("{}*", self.prefix);
            let mut keys: Vec<String> = vec![];
            let mut iter: redis::AsyncIter<String> =
                redis::AsyncCommands::scan_match(&mut conn, &pattern).await.expect("scan");
            while let Some(key) = iter.next_item().await {
                keys.push(key.expect("a key"));
            }
            drop(iter);
            for chunk in keys.chunks(1000) {
                redis::cmd("DEL").arg(chunk).query_async::<()>(&mut conn).await.expect("delete the bench's keys");
            }
        }
    }
}

fn appended(outcome: AppendOutcome) {
    assert!(matches!(outcome, AppendOutcome::Appended { .. }), "append refused: {outcome:?}");
}

fn append(c: &mut Criterion) {
    let mut bench = Bench::new();
    c.bench_function("RoomLog::append, one at a time", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let post = bench.post();
                bench.runtime.block_on(async {
                    let started = Instant::now();
                    appended(bench.log.append(&bench.room, &post).await.expect("append"));
                    total += started.elapsed();
                    if i % 1000 == 999 {
                        bench.trim().await;
                    }
                });
            }
            bench.runtime.block_on(bench.trim());
            total
        })
    });
    let mut group = c.benchmark_group("RoomLog::append");
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    group.bench_function(format!("{IN_FLIGHT} in flight"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let posts: Vec<Post> = (0..IN_FLIGHT).map(|_| bench.post()).collect();
                bench.runtime.block_on(async {
                    let started = Instant::now();
                    let outcomes =
                        futures_util::future::join_all(posts.iter().map(|post| bench.log.append(&bench.room, post)))
                            .await;
                    total += started.elapsed();
                    for outcome in outcomes {
                        appended(outcome.expect("append"));
                    }
                    if i % 16 == 15 {
                        bench.trim().await;
                    }
                });
            }
            bench.runtime.block_on(bench.trim());
            total
        })
    });
    group.finish();
    bench.clean_up();
}

criterion_group!(benches, append);
criterion_main!(benches);
