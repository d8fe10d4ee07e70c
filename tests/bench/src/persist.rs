//! The persist path against PostgreSQL's own bulk load. A backlog of messages is appended
//! to Redis with the write path's real append script (each room opened first the way the
//! hydrator opens it: re-opened in the archive, then installed in Redis), then the real
//! persister (started by scripts/bench) is sent one `FlushRoom` task per room, and the
//! clock runs until every room's watermark has reached its last seq. In the same run the
//! same rows are written by one binary `COPY` into a plain table of the messages table's
//! shape: the baseline. Result: both rates and their ratio.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use huddle_domain::{Post, RoomName, StoredMessage, Username};
use huddle_proto::v1::FlushRoomTask;
use huddle_roomlog::AppendOutcome;
use serde::Serialize;
use tokio::time::Instant;

/// Scenario parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct PersistArgs {
    /// The Redis the persister reads.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// The persister's archive (migrated by the persister at start).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/huddle")]
    pub database_url: String,
    /// The persister's RabbitMQ.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// The persister's key prefix.
    #[arg(long, default_value = "huddle:")]
    pub key_prefix: String,
    /// The persister's queue prefix.
    #[arg(long, default_value = "huddle")]
    pub queue_prefix: String,
    /// Rooms the backlog is spread over.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Messages in the backlog (in total).
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Senders per room (each an account; a room's messages take turns among them).
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Give up when the persister has not caught up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// The persister's process id: its CPU time during the flush is reported per row.
    #[arg(long)]
    pub persister_pid: Option<u32>,
    /// The Redis process id: its CPU time during the flush is reported per row.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Where to append the result as a JSON line.
    #[arg(long)]
    pub out: Option<String>,
}

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct PersistResult {
    /// Always `persist`.
    pub phase: &'static str,
    /// Rooms.
    pub rooms: usize,
    /// Messages persisted (and copied by the baseline).
    pub messages: usize,
    /// How long building the backlog took (appends, not part of either rate).
    pub backlog_secs: f64,
    /// From queuing the flushes to the last room's watermark at its last seq.
    pub persist_secs: f64,
    /// Messages per second through the persister.
    pub persist_rows_per_sec: f64,
    /// How long the baseline's binary COPY took.
    pub copy_secs: f64,
    /// Rows per second through the baseline's binary COPY.
    pub copy_rows_per_sec: f64,
    /// `persist_rows_per_sec / copy_rows_per_sec`.
    pub ratio: f64,
    /// Rows per second through the same COPY into a table that also has the messages
    /// table's foreign keys (checked per row): the ceiling of any writer into `messages`.
    pub copy_fk_rows_per_sec: f64,
    /// The persister's CPU time during the flush, per row (µs), when its pid was given.
    pub persister_cpu_us_per_row: Option<f64>,
    /// Redis's CPU time during the flush, per row (µs), when its pid was given.
    pub redis_cpu_us_per_row: Option<f64>,
}

/// Builds the backlog, times the persister through it, then times the baseline COPY.
pub async fn run(args: PersistArgs) -> Result<PersistResult> {
    anyhow::ensure!(args.rooms > 0 && args.messages >= args.rooms, "need at least one message per room");
    let log = crate::room_log(&args.redis_url, &args.key_prefix, 32)?;
    let archive = huddle_archive::Archive::connect(&huddle_config::PostgresSettings {
        database_url: args.database_url.clone(),
        database_pool_size: 4,
        database_timeout_ms: 60_000,
    })?;
    archive.migrate().await?;
    let broker = huddle_broker::Broker::connect(&huddle_config::BrokerSettings {
        amqp_url: args.amqp_url.clone(),
        queue_prefix: args.queue_prefix.clone(),
        delivery_limit: 5,
        queue_type: huddle_config::QueueType::Quorum,
        quorum_group_size: None,
    })
    .await?;

    // The senders must exist: messages reference their accounts.
    let mut senders = Vec::with_capacity(args.rooms * args.senders.max(1));
    for i in 0..args.rooms * args.senders.max(1) {
        let username = Username::parse(&format!("bench-persist-{i}"))?;
        let id = match archive.create_account(&username, "not a password hash").await? {
            Some(id) => id,
            None => archive.find_account(&username).await?.context("bench account vanished")?.id,
        };
        senders.push((id, username.as_str().to_owned()));
    }
    let senders = Arc::new(senders);

    // Rooms opened as the hydrator opens them: re-opened in the archive (new epoch),
    // then installed in Redis with that epoch.
    let mut rooms = Vec::with_capacity(args.rooms);
    for i in 0..args.rooms {
        let room = RoomName::parse(&format!("persist-{i}"))?;
        let tail = archive.reopen_room(&room, 0).await?;
        let (initialised, _) = log.hydrate(&room, tail.last_seq, tail.epoch, &tail.recent).await?;
        anyhow::ensure!(initialised && tail.last_seq == 0, "room {room} was not new");
        let room_id = archive.ensure_room(&room).await?;
        rooms.push((room, room_id));
    }
    let rooms = Arc::new(rooms);

    // The backlog, through the append script, 64 appends in flight.
    let started = Instant::now();
    let body = "x".repeat(args.body_bytes);
    let in_flight = 64.min(args.messages);
    let per_room = args.senders.max(1);
    let tasks = (0..in_flight).map(|task| {
        let (log, rooms, body, senders) = (log.clone(), Arc::clone(&rooms), body.clone(), Arc::clone(&senders));
        let count = args.messages / in_flight + usize::from(task < args.messages % in_flight);
        tokio::spawn(async move {
            let mut rows = Vec::with_capacity(count);
            for n in 0..count {
                let index = task + n * in_flight;
                let (room, room_id) = &rooms[index % rooms.len()];
                let (user_id, user_name) =
                    &senders[(index % rooms.len()) * per_room + (index / rooms.len()) % per_room];
                let post = Post {
                    user_id: *user_id,
                    user_name: user_name.clone(),
                    body: body.clone(),
                    sent_at_ms: huddle_domain::now_ms(),
                    client_id: format!("p{task}-{n}"),
                };
                match log.append(room, &post).await? {
                    AppendOutcome::Appended { seq, .. } => rows.push((*room_id, StoredMessage { seq, post })),
                    other => anyhow::bail!("append to {room}: {other:?}"),
                }
            }
            anyhow::Ok(rows)
        })
    });
    let mut rows = Vec::with_capacity(args.messages);
    for task in futures_util::future::join_all(tasks).await {
        rows.extend(task??);
    }
    let backlog_secs = started.elapsed().as_secs_f64();
    let mut last_seq = vec![0u64; rooms.len()];
    for (room_id, message) in &rows {
        let index = rooms.iter().position(|(_, id)| id == room_id).context("row of an unknown room")?;
        last_seq[index] = last_seq[index].max(message.seq);
    }
    eprintln!("persist: backlog of {} messages over {} rooms in {backlog_secs:.2} s", rows.len(), rooms.len());

    // The persister's run: one FlushRoom per room, as a gateway or the sweep queues them.
    let cpu_of = |pid: Option<u32>| pid.map(|pid| crate::cpu::cpu_seconds(&pid.to_string())).transpose();
    let cpu_at_start = (cpu_of(args.persister_pid)?, cpu_of(args.redis_pid)?);
    let started = Instant::now();
    let flushes: Vec<FlushRoomTask> = rooms
        .iter()
        .map(|(room, _)| FlushRoomTask {
            room: room.to_string(),
            reason: "bench".into(),
            requested_at_ms: huddle_domain::now_ms(),
        })
        .collect();
    broker.publish(huddle_broker::TaskQueue::Flush, &flushes).await?;
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut pending: Vec<usize> = (0..rooms.len()).collect();
    while !pending.is_empty() {
        // Rooms that have caught up leave the list; one that has not ends the pass, so
        // the polling costs the Redis under test little.
        while let Some(&index) = pending.first() {
            if log.state(&rooms[index].0).await?.persisted_seq < last_seq[index] {
                break;
            }
            pending.remove(0);
        }
        if pending.is_empty() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} rooms not persisted after {} s",
            pending.len(),
            args.timeout_secs
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let persist_secs = started.elapsed().as_secs_f64();
    let per_row = |before: Option<f64>, pid: Option<u32>| -> Result<Option<f64>> {
        Ok(before.zip(cpu_of(pid)?).map(|(before, after)| (after - before) * 1e6 / rows.len() as f64))
    };
    let persister_cpu = per_row(cpu_at_start.0, args.persister_pid)?;
    let redis_cpu = per_row(cpu_at_start.1, args.redis_pid)?;
    for (index, (room, _)) in rooms.iter().enumerate() {
        let archived = archive.watermark(room).await?;
        anyhow::ensure!(
            archived == last_seq[index],
            "{room}: archive watermark {archived}, last seq {}",
            last_seq[index]
        );
    }

    let baseline = archive.copy_baseline(&rows).await?;
    let copy_secs = baseline.plain.as_secs_f64();
    let copy_fk_rate = rows.len() as f64 / baseline.with_foreign_keys.as_secs_f64();
    let messages = rows.len();
    let (persist_rate, copy_rate) = (messages as f64 / persist_secs, messages as f64 / copy_secs);
    let result = PersistResult {
        phase: "persist",
        rooms: rooms.len(),
        messages,
        backlog_secs,
        persist_secs,
        persist_rows_per_sec: persist_rate,
        copy_secs,
        copy_rows_per_sec: copy_rate,
        ratio: persist_rate / copy_rate,
        copy_fk_rows_per_sec: copy_fk_rate,
        persister_cpu_us_per_row: persister_cpu,
        redis_cpu_us_per_row: redis_cpu,
    };
    eprintln!(
        "persist: persister {persist_rate:.0} rows/s ({persist_secs:.2} s), raw binary COPY {copy_rate:.0} rows/s ({copy_secs:.3} s), ratio {:.3}; COPY with the foreign keys {copy_fk_rate:.0} rows/s",
        result.ratio
    );
    if let (Some(persister), Some(redis)) = (persister_cpu, redis_cpu) {
        eprintln!("persist: CPU per row during the flush: persister {persister:.2} µs, Redis {redis:.2} µs");
    }
    crate::append_json_line(args.out.as_deref(), &result)?;
    Ok(result)
}
