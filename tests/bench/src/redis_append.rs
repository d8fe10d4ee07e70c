//! The raw baseline of the write path: Huddle's own append script called straight from
//! Rust (the roomlog crate, pipelined over its pooled multiplexed connections), with no
//! gateway, socket or fan-out around it. A send can never be faster than this, so the
//! fan-out results are read against it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;
use huddle_domain::{Post, RoomName};
use serde::Serialize;
use tokio::time::Instant;

/// Baseline parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisAppendArgs {
    /// The Redis to measure (the one the server under test uses).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Key prefix, so the run's rooms collide with nothing.
    #[arg(long, default_value = "bench-append:")]
    pub key_prefix: String,
    /// Rooms appended to.
    #[arg(long, default_value_t = 50)]
    pub rooms: usize,
    /// Appends in flight at once.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Where to append the result as a JSON line.
    #[arg(long)]
    pub out: Option<String>,
}

/// What the baseline measured.
#[derive(Debug, Serialize)]
pub struct RedisAppendResult {
    /// Always `redis-append`.
    pub phase: &'static str,
    /// Appends completed.
    pub appends: u64,
    /// Appends per second.
    pub appends_per_sec: f64,
    /// Latency of one append, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// Appends as fast as `in_flight` concurrent callers can for `secs` seconds.
pub async fn run(args: RedisAppendArgs) -> Result<RedisAppendResult> {
    let log = crate::room_log(&args.redis_url, &args.key_prefix, 32)?;
    let rooms: Vec<RoomName> =
        (0..args.rooms).map(|i| RoomName::parse(&format!("append-{i}"))).collect::<Result<_, _>>()?;
    for room in &rooms {
        log.hydrate(room, 0, 0, &[]).await?;
    }
    let rooms = Arc::new(rooms);
    let appends = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(args.secs);
    let body = "x".repeat(args.body_bytes);
    let tasks = (0..args.in_flight).map(|task| {
        let (log, rooms, appends, body) = (log.clone(), Arc::clone(&rooms), Arc::clone(&appends), body.clone());
        tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let post = Post {
                    user_id: task as i64,
                    user_name: "bench".into(),
                    body: body.clone(),
                    sent_at_ms: huddle_domain::now_ms(),
                    client_id: format!("r{task}-{n}"),
                };
                let started = Instant::now();
                log.append(&rooms[(task + n as usize) % rooms.len()], &post).await?;
                latencies.saturating_record(started.elapsed().as_micros().max(1) as u64);
                appends.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        })
    });
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in futures_util::future::join_all(tasks).await {
        latencies.add(&task??)?;
    }
    let total = appends.load(Ordering::Relaxed);
    let result = RedisAppendResult {
        phase: "redis-append",
        appends: total,
        appends_per_sec: total as f64 / args.secs as f64,
        p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
    };
    eprintln!(
        "append script alone: {:.0} appends/s ({} in flight), p50 {:.2} ms, p99 {:.2} ms",
        result.appends_per_sec, args.in_flight, result.p50_ms, result.p99_ms
    );
    crate::append_json_line(args.out.as_deref(), &result)?;
    Ok(result)
}
