//! The join scenario (Huddle only): how long from opening a socket until its history
//! frame arrives.
//!
//! * cold burst: clients join rooms Redis has never held, many upgrades in flight at
//!   once (each room is created and hydrated by the first join);
//! * warm: one socket at a time joins a room whose last 100 messages Redis holds;
//! * cold hydrate (with `--redis-url` and `--key-prefix`): rooms of 1,000 messages sent
//!   through the gateway and persisted, whose Redis keys are then deleted (only those
//!   rooms' keys, on the bench's own Redis), so their history is only in PostgreSQL; one
//!   socket at a time joins each, and the hydrator restores it before the history frame.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use huddle_domain::RoomName;
use serde::Serialize;
use serde_json::Value;
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
    /// The gateway's Redis, for the cold-hydrate phase (which runs only with it and
    /// `--key-prefix`). Only the phase's own rooms' keys are deleted; nothing is flushed.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The gateway's key prefix (`HUDDLE_KEY_PREFIX`).
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Rooms of the cold-hydrate phase, each joined once.
    #[arg(long, default_value_t = 20)]
    pub hydrate_rooms: usize,
    /// Messages in each, only in PostgreSQL when it is joined.
    #[arg(long, default_value_t = 1000)]
    pub hydrate_history: usize,
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
    /// `cold-burst`, `warm` or `cold-hydrate`.
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

    let mut results = vec![summary("cold-burst", &burst), summary("warm", &warm)];
    if let (Some(redis_url), Some(key_prefix)) = (&args.redis_url, &args.key_prefix) {
        let hydrate = cold_hydrate(&args, &token, redis_url, key_prefix).await?;
        results.push(summary("cold-hydrate", &hydrate));
    }
    for result in &results {
        eprintln!(
            "join {}: {} joins, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            result.phase, result.joins, result.p50_ms, result.p99_ms, result.max_ms
        );
        crate::append_json_line(args.out.as_deref(), result)?;
    }
    Ok(results)
}

/// Sends `count` messages to `room` and waits until all of them were delivered back.
async fn fill(url: &str, room: &str, token: &str, count: usize) -> Result<()> {
    let (mut writer, mut reader) = Target::Huddle.connect(url, room, Some(token)).await?;
    // Read while sending: acks and deliveries must not pile up in the gateway's queue.
    let count_deliveries = tokio::spawn(async move {
        let mut delivered = 0;
        while delivered < count {
            match tokio::time::timeout(Duration::from_secs(10), reader.next()).await {
                Ok(Ok(Some(Incoming::Delivery(_)))) => delivered += 1,
                Ok(Ok(Some(_))) => {}
                _ => break,
            }
        }
        delivered
    });
    for i in 0..count {
        writer.send(&format!("hydrate message {i}")).await?;
    }
    let delivered = count_deliveries.await.context("the reading task panicked")?;
    ensure!(delivered == count, "{room}: only {delivered} of {count} messages were delivered");
    Ok(())
}

/// The cold-hydrate phase: fill the rooms, wait until PostgreSQL holds every message,
/// delete the rooms' Redis keys, then join each once and check its history came back.
async fn cold_hydrate(args: &JoinArgs, token: &str, redis_url: &str, key_prefix: &str) -> Result<Histogram<u64>> {
    let log = crate::room_log(redis_url, key_prefix, 4)?;
    let mut redis = redis::Client::open(redis_url)?.get_multiplexed_async_connection().await.context("redis")?;
    let names: Vec<String> = (0..args.hydrate_rooms).map(|i| format!("{}-hydrate-{i}", args.run_id)).collect();
    let rooms: Vec<RoomName> = names.iter().map(|name| RoomName::parse(name)).collect::<Result<_, _>>()?;
    let started = Instant::now();
    let filled: Vec<Result<()>> =
        futures_util::future::join_all(names.iter().map(|room| fill(&args.url, room, token, args.hydrate_history)))
            .await;
    filled.into_iter().collect::<Result<Vec<()>>>()?;
    let sent = started.elapsed();
    // The persister's flushes (one queued per 1,000 unpersisted messages, and its sweep).
    let deadline = Instant::now() + Duration::from_secs(120);
    for room in &rooms {
        loop {
            let state = log.state(room).await?;
            if state.last_seq >= args.hydrate_history as u64 && state.persisted_seq >= state.last_seq {
                break;
            }
            if Instant::now() > deadline {
                bail!("{room}: {} of {} messages persisted after 120 s", state.persisted_seq, state.last_seq);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "join cold-hydrate: {} rooms of {} messages sent in {:.1} s, persisted after {:.1} s",
        rooms.len(),
        args.hydrate_history,
        sent.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for (room, name) in rooms.iter().zip(&names) {
        // Every key of this room (they share its hash tag), and nothing else.
        let seq_key = log.keys().seq(room);
        let pattern = format!("{}*", seq_key.strip_suffix("seq").context("seq key name")?);
        let keys: Vec<String> = {
            let mut iter: redis::AsyncIter<String> = redis::AsyncCommands::scan_match(&mut redis, &pattern).await?;
            let mut keys = vec![];
            while let Some(key) = iter.next_item().await {
                keys.push(key?);
            }
            keys
        };
        ensure!(keys.contains(&seq_key), "{room}: no seq key among {keys:?}");
        redis::cmd("DEL").arg(&keys).query_async::<()>(&mut redis).await?;
        ensure!(!log.state(room).await?.in_redis, "{room}: still in Redis after DEL");
        let begin = Instant::now();
        let (client, receiver, history) = Target::Huddle.connect_with_answer(&args.url, name, Some(token)).await?;
        latencies.saturating_record(begin.elapsed().as_micros().max(1) as u64);
        drop((client, receiver));
        let last_seq = last_history_seq(&history)?;
        ensure!(
            last_seq == args.hydrate_history as u64,
            "{room}: the history frame after hydration ends at seq {last_seq}, not {}",
            args.hydrate_history
        );
    }
    Ok(latencies)
}

/// The seq of the last message of a `history` frame (0 if it has none).
fn last_history_seq(frame: &str) -> Result<u64> {
    let frame: Value = serde_json::from_str(frame).context("history frame")?;
    let messages = frame["messages"].as_array().context("history frame without messages")?;
    Ok(messages.last().and_then(|message| message["seq"].as_u64()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_seq_of_a_history_frame() -> Result<()> {
        assert_eq!(last_history_seq(r#"{"type":"history","messages":[{"seq":9},{"seq":10}]}"#)?, 10);
        assert_eq!(last_history_seq(r#"{"type":"history","messages":[]}"#)?, 0);
        assert!(last_history_seq(r#"{"type":"history"}"#).is_err());
        assert!(last_history_seq("nope").is_err());
        Ok(())
    }
}
