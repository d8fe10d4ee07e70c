//! The join scenario (Huddle only): how long from opening a socket until its history
//! frame arrives.
//!
//! * cold burst: clients join rooms Redis has never held, many upgrades in flight at
//!   once (each room is created and hydrated by the first join);
//! * warm: one socket at a time joins a room whose last 100 messages Redis holds.

use std::time::Duration;

use anyhow::{ensure, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::target::{Incoming, Target};

/// Join parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct JoinArgs {
    /// Huddle's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Sockets of the cold burst.
    #[arg(long, default_value_t = 500)]
    pub clients: usize,
    /// Cold rooms they spread over.
    #[arg(long, default_value_t = 50)]
    pub rooms: usize,
    /// Upgrades in flight at once during the burst.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Messages in the warm room before its joins.
    #[arg(long, default_value_t = 100)]
    pub history: usize,
    /// Warm joins, one after another.
    #[arg(long, default_value_t = 200)]
    pub warm_joins: usize,
    /// Names this run's accounts and rooms.
    #[arg(long, default_value = "bench")]
    pub run_id: String,
    /// Where to append one JSON line per phase.
    #[arg(long)]
    pub out: Option<String>,
}

/// Join latencies of one phase.
#[derive(Debug, Serialize)]
pub struct JoinResult {
    /// `cold-burst` or `warm`.
    pub phase: &'static str,
    /// Joins measured.
    pub joins: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

fn summary(phase: &'static str, latencies: &Histogram<u64>) -> JoinResult {
    let ms = |us: u64| us as f64 / 1000.0;
    JoinResult {
        phase,
        joins: latencies.len() as usize,
        p50_ms: ms(latencies.value_at_quantile(0.5)),
        p99_ms: ms(latencies.value_at_quantile(0.99)),
        max_ms: ms(latencies.max()),
    }
}

/// Runs both phases; one account joins every socket (the bench lifts its limits).
pub async fn run(args: JoinArgs) -> Result<Vec<JoinResult>> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let token = Target::Huddle.account(&http, &args.url, &format!("{}-joiner", args.run_id)).await?;
    let token = token.unwrap_or_default();

    let join = |room: String| {
        let (url, token) = (args.url.clone(), token.clone());
        async move {
            let started = Instant::now();
            let (client, receiver) = Target::Huddle.connect(&url, &room, Some(&token)).await?;
            let latency = started.elapsed();
            drop((client, receiver));
            anyhow::Ok(latency)
        }
    };
    let mut burst = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let latencies: Vec<Result<Duration>> =
        futures_util::stream::iter((0..args.clients).map(|i| join(format!("{}-cold-{}", args.run_id, i % args.rooms))))
            .buffer_unordered(args.in_flight.max(1))
            .collect()
            .await;
    for latency in latencies {
        burst.saturating_record(latency?.as_micros().max(1) as u64);
    }

    // The warm room: `history` messages sent and delivered, then joins one at a time.
    let room = format!("{}-warm", args.run_id);
    let (mut writer, mut reader) = Target::Huddle.connect(&args.url, &room, Some(&token)).await?;
    for i in 0..args.history {
        writer.send(&format!("history message {i}")).await?;
    }
    let mut delivered = 0;
    while delivered < args.history {
        match tokio::time::timeout(Duration::from_secs(10), reader.next()).await {
            Ok(Ok(Some(Incoming::Delivery(_)))) => delivered += 1,
            Ok(Ok(Some(_))) => {}
            _ => break,
        }
    }
    ensure!(delivered == args.history, "only {delivered} of {} history messages were delivered", args.history);
    let mut warm = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..args.warm_joins {
        warm.saturating_record(join(room.clone()).await?.as_micros().max(1) as u64);
    }

    let results = vec![summary("cold-burst", &burst), summary("warm", &warm)];
    for result in &results {
        eprintln!(
            "join {}: {} joins, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            result.phase, result.joins, result.p50_ms, result.p99_ms, result.max_ms
        );
        crate::append_json_line(args.out.as_deref(), result)?;
    }
    Ok(results)
}
