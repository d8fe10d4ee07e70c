//! Delivery guarantees: idempotent resends, exact recovery with `since`, slow consumers,
//! graceful shutdown.

use anyhow::{Context, Result};
use huddle_config::QueueType;
use huddle_e2e::{seqs, sign_up, Stack, StackOptions, Ws};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_client_id_is_acked_with_the_original_seq_on_any_gateway() -> Result<()> {
    let stack = Stack::start(2).await?;
    let ada = sign_up(&stack.url(0), "ada").await?;
    let mut first = Ws::join(&stack.url(0), "idem", &ada.token, "").await?;
    first.expect("history").await?;
    let seq = first.say("only once", "dup-1").await?;
    first.say("another", "dup-2").await?;
    first.leave().await?;

    // The "reconnect" goes to the other replica and resends.
    let mut second = Ws::join(&stack.url(1), "idem", &ada.token, "").await?;
    second.expect("history").await?;
    second.send_json(&json!({"type": "send", "body": "only once", "client_id": "dup-1"})).await?;
    let ack = second.expect("ack").await?;
    assert_eq!((ack["seq"].as_u64(), ack["duplicate"].as_bool()), (Some(seq), Some(true)));
    second.leave().await?;
    stack.wait_persisted(2).await?;

    // Even after Redis lost everything, the hydrated room remembers recent client_ids.
    stack.env.wipe_redis().await?;
    let mut third = Ws::join(&stack.url(0), "idem", &ada.token, "").await?;
    third.expect("history").await?;
    third.send_json(&json!({"type": "send", "body": "only once", "client_id": "dup-1"})).await?;
    let ack = third.expect("ack").await?;
    assert_eq!((ack["seq"].as_u64(), ack["duplicate"].as_bool()), (Some(seq), Some(true)));
    assert_eq!(third.say("new one", "dup-3").await?, 3);
    third.leave().await?;
    stack.wait_persisted(3).await?;
    let db = stack.env.db().await?;
    let copies: i64 = db.query_one("SELECT count(*) FROM messages WHERE client_id = 'dup-1'", &[]).await?.get(0);
    assert_eq!(copies, 1);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_equal_client_id_is_a_new_message() -> Result<()> {
    let stack = Stack::start(1).await?;
    let ada = sign_up(&stack.url(0), "ada").await?;
    let bob = sign_up(&stack.url(0), "bob").await?;
    let mut ada_ws = Ws::join(&stack.url(0), "shared-ids", &ada.token, "").await?;
    ada_ws.expect("history").await?;
    let mut bob_ws = Ws::join(&stack.url(0), "shared-ids", &bob.token, "").await?;
    bob_ws.expect("history").await?;
    assert_eq!(ada_ws.say("from ada", "c-1").await?, 1);
    bob_ws.send_json(&json!({"type": "send", "body": "from bob", "client_id": "c-1"})).await?;
    let ack = bob_ws.expect("ack").await?;
    assert_eq!((ack["seq"].as_u64(), ack["duplicate"].as_bool()), (Some(2), Some(false)), "{ack}");
    stack.wait_persisted(2).await?;

    // The markers restored by a hydration are per sender too.
    stack.env.wipe_redis().await?;
    let mut bob_again = Ws::join(&stack.url(0), "shared-ids", &bob.token, "").await?;
    bob_again.expect("history").await?;
    bob_again.send_json(&json!({"type": "send", "body": "from bob", "client_id": "c-1"})).await?;
    let ack = bob_again.expect("ack").await?;
    assert_eq!((ack["seq"].as_u64(), ack["duplicate"].as_bool()), (Some(2), Some(true)), "{ack}");
    bob_again.send_json(&json!({"type": "send", "body": "bob again", "client_id": "c-9"})).await?;
    assert_eq!(bob_again.expect("ack").await?["seq"].as_u64(), Some(3));
    let mut ada_again = Ws::join(&stack.url(0), "shared-ids", &ada.token, "").await?;
    ada_again.expect("history").await?;
    ada_again.send_json(&json!({"type": "send", "body": "ada new", "client_id": "c-9"})).await?;
    let ack = ada_again.expect("ack").await?;
    assert_eq!((ack["seq"].as_u64(), ack["duplicate"].as_bool()), (Some(4), Some(false)), "{ack}");
    stack.wait_persisted(4).await?;
    let db = stack.env.db().await?;
    let rows = db.query("SELECT user_name, body FROM messages ORDER BY seq", &[]).await?;
    let rows: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        rows,
        [("ada", "from ada"), ("bob", "from bob"), ("bob", "bob again"), ("ada", "ada new")]
            .map(|(u, b)| (u.to_owned(), b.to_owned()))
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_since_gets_exactly_what_was_missed_from_redis_or_postgres() -> Result<()> {
    // A tiny hydrate window: after a Redis loss most history is only in PostgreSQL.
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        hydrator_args: &["--hydrate-window", "2"],
        ..Default::default()
    })
    .await?;
    let base = stack.url(0);
    let (ada, bob) = (sign_up(&base, "ada").await?, sign_up(&base, "bob").await?);
    let mut a = Ws::join(&base, "recover", &ada.token, "").await?;
    a.expect("history").await?;
    for i in 1..=5 {
        a.say(&format!("a{i}"), &format!("a{i}")).await?;
    }
    a.leave().await?;

    let mut b = Ws::join(&base, "recover", &bob.token, "").await?;
    b.expect("history").await?;
    for i in 6..=10 {
        b.say(&format!("b{i}"), &format!("b{i}")).await?;
    }
    // From Redis: exactly 6..=10, marked as recovery, then live messages.
    let mut a = Ws::join(&base, "recover", &ada.token, "since=5").await?;
    let recovered = a.expect("history").await?;
    assert_eq!(recovered["mode"], "since");
    assert_eq!(seqs(&recovered), (6..=10).collect::<Vec<_>>());
    b.say("b11", "b11").await?;
    assert_eq!(a.expect("message").await?["seq"], 11);
    // Nothing newer than the client has: an empty recovery.
    a.leave().await?;
    let mut a = Ws::join(&base, "recover", &ada.token, "since=11").await?;
    let nothing = a.expect("history").await?;
    assert_eq!((nothing["mode"].as_str(), seqs(&nothing).len()), (Some("since"), 0));
    a.leave().await?;
    b.leave().await?;

    // From PostgreSQL: Redis lost the room; re-hydration loads only 2 messages.
    stack.wait_persisted(11).await?;
    stack.env.wipe_redis().await?;
    let mut a = Ws::join(&base, "recover", &ada.token, "since=3").await?;
    let recovered = a.expect("history").await?;
    assert_eq!(recovered["mode"], "since");
    assert_eq!(seqs(&recovered), (4..=11).collect::<Vec<_>>());
    assert_eq!(recovered["messages"][0]["body"], "a4");
    assert_eq!(a.say("after recovery", "a12").await?, 12);
    a.leave().await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_too_slowly_is_closed_with_4008_and_slows_nobody() -> Result<()> {
    let stack =
        Stack::start_with(StackOptions { gateways: 1, gateway_args: &["--socket-queue", "16"], ..Default::default() })
            .await?;
    let base = stack.url(0);
    let (ada, bob, cyd) = (sign_up(&base, "ada").await?, sign_up(&base, "bob").await?, sign_up(&base, "cyd").await?);
    let mut slow = Ws::join_with_receive_buffer(&base, "busy", &ada.token, 4096).await?;
    slow.expect("history").await?;
    // Reads a frame every 200 ms: far slower than the room below, which outruns even the
    // kernel's socket buffers (megabytes) that absorb a lag before the queue sees it.
    let slow = tokio::spawn(tokio::time::timeout(
        std::time::Duration::from_secs(120),
        slow.read_slowly_until_closed(std::time::Duration::from_millis(200)),
    ));
    let mut reader = Ws::join(&base, "busy", &cyd.token, "").await?;
    reader.expect("history").await?;
    let mut sender = Ws::join(&base, "busy", &bob.token, "").await?;
    sender.expect("history").await?;

    // ~6 MB of messages go out; the reading client gets each at once.
    let body = "x".repeat(3900);
    let started = std::time::Instant::now();
    for i in 1..=1500u64 {
        assert_eq!(sender.say(&body, &format!("s{i}")).await?, i);
        assert_eq!(reader.expect("message").await?["seq"], i, "the reading client gets everything in order");
    }
    let elapsed = started.elapsed();
    let (code, frames) = slow.await?.map_err(|_| anyhow::anyhow!("the slow client was never cut off"))??;
    // 4008 when the Close frame reaches it in time, else a reset (it lags by megabytes).
    assert!(matches!(code, Some(4008) | None), "closed with {code:?} after {frames} frames");
    assert!(frames < 1500, "the slow client was cut off before the room's backlog reached it ({frames} frames)");
    assert!(elapsed < std::time::Duration::from_secs(60), "sending took {elapsed:?}");
    let metrics = huddle_e2e::http().get(format!("{}/metrics", stack.ops_url(0))).send().await?.text().await?;
    assert!(metrics.contains("huddle_gateway_slow_consumer_closes_total 1"), "{metrics}");
    sender.leave().await?;
    reader.leave().await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_shutdown_closes_sockets_with_1012_and_flushes_their_rooms() -> Result<()> {
    let mut stack = Stack::start(2).await?;
    let ada = sign_up(&stack.url(0), "ada").await?;
    let mut a = Ws::join(&stack.url(0), "draining", &ada.token, "").await?;
    a.expect("history").await?;
    for i in 1..=7 {
        a.say(&format!("m{i}"), &format!("m{i}")).await?;
    }
    let leaving = stack.gateways.remove(0);
    let stopping = tokio::spawn(leaving.stop());
    assert_eq!(a.close_code().await?, Some(1012));
    stopping.await?;
    // The room emptied on shutdown, so it is flushed without waiting for a sweep.
    stack.wait_persisted(7).await?;
    // The client reconnects to the other replica and misses nothing.
    let mut again = Ws::join(&stack.url(0), "draining", &ada.token, "since=7").await?;
    assert_eq!(seqs(&again.expect("history").await?), Vec::<u64>::new());
    assert_eq!(again.say("on the other replica", "m8").await?, 8);
    again.leave().await?;
    stack.shutdown().await
}

/// A stack of one gateway whose task queues are of `queue_type`.
async fn stack_on_queues_of(queue_type: QueueType) -> Result<Stack> {
    let mut env = huddle_e2e::TestEnv::new().await?;
    env.queue_type = queue_type;
    Stack::start_on(env, StackOptions { gateways: 1, ..StackOptions::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_task_is_dead_lettered_and_can_be_redriven() -> Result<()> {
    a_poison_task_is_dead_lettered_and_can_be_redriven_on(QueueType::Quorum).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_task_is_dead_lettered_and_can_be_redriven_on_classic_queues() -> Result<()> {
    a_poison_task_is_dead_lettered_and_can_be_redriven_on(QueueType::Classic).await
}

async fn a_poison_task_is_dead_lettered_and_can_be_redriven_on(queue_type: QueueType) -> Result<()> {
    let stack = stack_on_queues_of(queue_type).await?;
    let broker = stack.env.broker().await?;
    let poison =
        huddle_proto::v1::FlushRoomTask { room: "Not A Room!".into(), reason: "test".into(), requested_at_ms: 0 };
    broker.publish(huddle_broker::TaskQueue::Flush, &[poison]).await?;
    let dead = huddle_e2e::eventually(std::time::Duration::from_secs(10), || async {
        let dead = broker.dead_letters(10).await?;
        Ok((!dead.is_empty()).then_some(dead))
    })
    .await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].queue, format!("{}.flush", stack.env.queue_prefix));
    assert_eq!(dead[0].reason, "rejected");
    // Listing leaves it there.
    assert_eq!(broker.dead_letters(10).await?.len(), 1);
    // Re-driven, it is consumed again (and, still poison, dead-lettered again).
    assert_eq!(broker.redrive_dead_letters(10).await?, 1);
    let metrics = huddle_e2e::eventually(std::time::Duration::from_secs(10), || async {
        let text = huddle_e2e::http()
            .get(format!("http://{}/metrics", stack.persister.ops_addr()))
            .send()
            .await?
            .text()
            .await?;
        let line = format!("huddle_tasks_total{{outcome=\"dead\",queue=\"{}.flush\"}} 2", stack.env.queue_prefix);
        Ok(text.contains(&line).then_some(text))
    })
    .await?;
    assert!(metrics.contains("huddle_tasks_total"));
    // A quorum queue dead-letters a rejected task a moment after the reject.
    huddle_e2e::eventually(std::time::Duration::from_secs(10), || async {
        Ok((broker.dead_letters(10).await?.len() == 1).then_some(()))
    })
    .await
    .context("the re-driven poison task is not back in the dead letters, once")?;
    broker.close().await;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_loss_recently_active_rooms_are_rewarmed_through_hydrate_tasks() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let rooms = ["warm-a", "warm-b", "warm-c"];
    for (i, room) in rooms.iter().enumerate() {
        let mut ws = Ws::join(&base, room, &ada.token, "").await?;
        ws.expect("history").await?;
        for n in 0..=i {
            ws.say("hello", &format!("{room}-{n}")).await?;
        }
        ws.leave().await?;
    }
    stack.wait_persisted(6).await?;
    stack.env.wipe_redis().await?;

    let archive = huddle_archive::Archive::connect(&huddle_config::PostgresSettings {
        database_url: stack.env.database_url.clone(),
        database_pool_size: 2,
        database_timeout_ms: 10_000,
    })?;
    let broker = stack.env.broker().await?;
    let queued = huddle_hydrator::queue_rewarm(&archive, &broker, std::time::Duration::from_secs(3600)).await?;
    assert_eq!(queued, 3);
    let log = stack.env.room_log(100)?;
    let states = huddle_e2e::eventually(std::time::Duration::from_secs(10), || async {
        let mut states = Vec::new();
        for room in rooms {
            states.push(log.state(&huddle_domain::RoomName::parse(room)?).await?);
        }
        Ok(states.iter().all(|s| s.in_redis).then_some(states))
    })
    .await?;
    assert_eq!(states.iter().map(|s| s.last_seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    broker.close().await;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_backlog_is_flushed_while_the_room_stays_busy() -> Result<()> {
    // No sweep to speak of: only the backlog trigger can flush this occupied room.
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        gateway_args: &["--flush-backlog", "10"],
        persister_args: &["--sweep-interval-ms", "3600000"],
        ..Default::default()
    })
    .await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut a = Ws::join(&base, "backlog", &ada.token, "").await?;
    a.expect("history").await?;
    for i in 1..=25 {
        a.say(&format!("m{i}"), &format!("m{i}")).await?;
    }
    // Each time the backlog reaches 10 a flush is queued, so once they complete fewer
    // than 10 messages are unpersisted although the room never emptied.
    let mut persister = stack.env.persister_client(stack.persister.grpc_addr()).await?;
    let status = huddle_e2e::eventually(std::time::Duration::from_secs(15), || {
        let mut persister = persister.clone();
        async move {
            let status = persister
                .room_status(huddle_proto::v1::RoomStatusRequest { room: "backlog".into() })
                .await?
                .into_inner();
            Ok((status.persisted_seq >= 16).then_some(status))
        }
    })
    .await?;
    assert_eq!(status.last_seq, 25);
    assert!(status.unpersisted < 10 && status.archived_seq >= status.persisted_seq, "{status:?}");
    let db = stack.env.db().await?;
    let stored: i64 = db.query_one("SELECT count(*) FROM messages", &[]).await?.get(0);
    assert!((16..=25).contains(&stored), "{stored}");
    persister.flush_room(huddle_proto::v1::FlushRoomRequest { room: "backlog".into() }).await?;
    a.leave().await?;
    stack.wait_persisted(25).await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_keeps_failing_is_retried_then_dead_lettered() -> Result<()> {
    a_task_that_keeps_failing_is_retried_then_dead_lettered_on(QueueType::Quorum).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_keeps_failing_on_a_classic_queue_is_retried_then_dead_lettered() -> Result<()> {
    a_task_that_keeps_failing_is_retried_then_dead_lettered_on(QueueType::Classic).await
}

async fn a_task_that_keeps_failing_is_retried_then_dead_lettered_on(queue_type: QueueType) -> Result<()> {
    let stack = stack_on_queues_of(queue_type).await?;
    let log = stack.env.room_log(100)?;
    // The archive fails every insert for a reason that is not the row's fault (not a data
    // or constraint error, so nothing is quarantined): the task must be retried.
    let db = stack.env.db().await?;
    let uid: i64 =
        db.query_one("INSERT INTO users (username, password_hash) VALUES ('ada', 'x') RETURNING id", &[]).await?.get(0);
    stack.env.make_archive_refuse_inserts().await?;
    let room = huddle_domain::RoomName::parse("doomed")?;
    log.hydrate(&room, 0, 0, &[]).await?;
    let entry = huddle_domain::Post {
        user_id: uid,
        user_name: "ada".into(),
        body: "boo".into(),
        sent_at_ms: 0,
        client_id: String::new(),
    };
    log.append(&room, &entry).await?;
    let mut persister = stack.env.persister_client(stack.persister.grpc_addr()).await?;
    persister.flush_room(huddle_proto::v1::FlushRoomRequest { room: "doomed".into() }).await?;

    let broker = stack.env.broker().await?;
    let dead = huddle_e2e::eventually(std::time::Duration::from_secs(20), || async {
        let dead = broker.dead_letters(10).await?;
        Ok((!dead.is_empty()).then_some(dead))
    })
    .await?;
    assert_eq!(dead[0].queue, format!("{}.persist-chunk", stack.env.queue_prefix));
    assert_eq!(dead[0].reason, "delivery_limit");
    let metrics =
        huddle_e2e::http().get(format!("http://{}/metrics", stack.persister.ops_addr())).send().await?.text().await?;
    let retries = format!("huddle_tasks_total{{outcome=\"retry\",queue=\"{}.persist-chunk\"}}", stack.env.queue_prefix);
    let line = metrics.lines().find(|l| l.starts_with(&retries)).unwrap_or_default();
    assert!(line.ends_with(" 5"), "expected 5 retries before dead-lettering: {line:?}");
    // The last failure is counted as what it is: a dead letter (the alert watches it).
    let dead_count =
        format!("huddle_tasks_total{{outcome=\"dead\",queue=\"{}.persist-chunk\"}}", stack.env.queue_prefix);
    let line = metrics.lines().find(|l| l.starts_with(&dead_count)).unwrap_or_default();
    assert!(line.ends_with(" 1"), "the dead-lettered task is counted once: {line:?}");
    // Nothing was half-written, and the room is still dirty, not forgotten.
    let status =
        persister.room_status(huddle_proto::v1::RoomStatusRequest { room: "doomed".into() }).await?.into_inner();
    assert_eq!((status.last_seq, status.persisted_seq, status.unpersisted), (1, 0, 1));
    assert!(status.dirty_for_ms > 0);
    let quarantined: i64 = db.query_one("SELECT count(*) FROM quarantined_messages", &[]).await?.get(0);
    assert_eq!(quarantined, 0, "a failure that is not the row's fault quarantines nothing");
    broker.close().await;
    stack.shutdown().await
}

/// A pub/sub connection that goes half-open (no FIN, no error, no bytes) is noticed by
/// its keepalive, replaced, and every socket resyncs: messages sent meanwhile arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_pubsub_connection_is_replaced_and_sockets_resync() -> Result<()> {
    let stack = Stack::start(1).await?;
    let upstream: std::net::SocketAddr = huddle_e2e::redis_url().trim_start_matches("redis://").parse()?;
    let proxy = huddle_e2e::FreezingProxy::start(upstream).await?;
    let proxy_url = format!("redis://{}", proxy.addr);
    let behind_proxy = huddle_e2e::start_gateway(
        &stack.env,
        stack.hydrator.grpc_addr(),
        &["--redis-url", &proxy_url, "--pubsub-keepalive-ms", "300", "--join-timeout-ms", "1000"],
    )
    .await?;
    let proxied = format!("http://{}", behind_proxy.addr());
    let (ada, bob) = (sign_up(&stack.url(0), "ada").await?, sign_up(&stack.url(0), "bob").await?);
    let mut listener = Ws::join(&proxied, "halfopen", &ada.token, "").await?;
    listener.expect("history").await?;
    let mut sender = Ws::join(&stack.url(0), "halfopen", &bob.token, "").await?;
    sender.expect("history").await?;
    sender.say("before", "h-1").await?;
    assert_eq!(listener.expect("message").await?["seq"], 1);

    proxy.freeze_open_connections();
    sender.say("during", "h-2").await?;
    sender.say("after", "h-3").await?;
    let started = std::time::Instant::now();
    assert_eq!(listener.expect("message").await?["seq"], 2, "missed while the connection was half-open");
    assert_eq!(listener.expect("message").await?["seq"], 3);
    eprintln!("half-open pub/sub noticed and resynced in {:?}", started.elapsed());
    // Live delivery is back.
    sender.say("live again", "h-4").await?;
    assert_eq!(listener.expect("message").await?["seq"], 4);
    behind_proxy.stop().await;
    stack.shutdown().await
}

/// Redis restarts empty under open sockets (found by an outside audit: the sockets were
/// sent an empty `latest` history of epoch 0, and their view stayed empty). Each socket
/// resyncs once the room is restored from the archive: a `latest` history of everything
/// persisted, on a new epoch, and seq continues; their presence is restored with it (it was
/// missing from newcomers' snapshots until each socket's next heartbeat, and never
/// announced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_open_across_a_redis_restart_get_the_restored_history() -> Result<()> {
    let mut redis = huddle_e2e::OwnRedis::start()?;
    let env = huddle_e2e::TestEnv::with_redis(redis.url()).await?;
    let stack = Stack::start_on(env, StackOptions { gateways: 1, ..StackOptions::default() }).await?;
    let base = stack.url(0);
    let (ada, bob) = (sign_up(&base, "ada").await?, sign_up(&base, "bob").await?);
    let mut a = Ws::join(&base, "restart", &ada.token, "").await?;
    let epoch = a.expect("history").await?["epoch"].as_i64().context("epoch")?;
    let mut b = Ws::join(&base, "restart", &bob.token, "").await?;
    b.expect("history").await?;
    for i in 1..=5 {
        a.say(&format!("m{i}"), &format!("k{i}")).await?;
    }
    for ws in [&mut a, &mut b] {
        for seq in 1..=5 {
            assert_eq!(ws.expect("message").await?["seq"], seq);
        }
    }
    stack.flush_room("restart").await?;
    stack.wait_persisted(5).await?;

    redis.restart()?;
    for ws in [&mut a, &mut b] {
        let view = ws.expect("history").await?;
        assert_eq!((view["mode"].as_str(), seqs(&view)), (Some("latest"), (1..=5).collect()), "{view}");
        assert!(view["epoch"].as_i64().is_some_and(|e| e != epoch && e > 0), "a new epoch: {view}");
    }
    assert_eq!(b.say("after", "b-1").await?, 6, "seq continues from the archive");
    assert_eq!(a.expect("message").await?["seq"], 6);

    // Their presence, lost with Redis, is back: a newcomer's snapshot lists them.
    let cyd = sign_up(&base, "cyd").await?;
    let mut c = Ws::join(&base, "restart", &cyd.token, "").await?;
    c.expect("history").await?;
    let snapshot = c.expect("presence").await?;
    let names: Vec<&str> =
        snapshot["online"].as_array().context("online")?.iter().filter_map(|u| u["name"].as_str()).collect();
    assert_eq!(names, ["ada", "bob", "cyd"], "{snapshot}");
    stack.shutdown().await
}

/// A range whose chunk tasks were dead-lettered is queued again by itself once the
/// archive works again, even while the room stays busy (each new flush renews the room's
/// claim, which must not hide the stuck range below it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_range_is_retried_while_the_room_stays_busy() -> Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        persister_args: &["--flush-claim-ms", "1500"],
        ..Default::default()
    })
    .await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let db = stack.env.db().await?;
    stack.env.make_archive_refuse_inserts().await?;
    let mut ws = Ws::join(&base, "stuck", &ada.token, "").await?;
    ws.expect("history").await?;
    for i in 1..=5 {
        ws.say(&format!("m{i}"), &format!("m{i}")).await?;
    }
    let broker = stack.env.broker().await?;
    huddle_e2e::eventually(std::time::Duration::from_secs(20), || async {
        Ok((!broker.dead_letters(10).await?.is_empty()).then_some(()))
    })
    .await?;
    stack.env.let_archive_accept_inserts().await?;

    // The room stays busy; nobody re-drives the dead letters.
    let mut sent = 5;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        sent += 1;
        ws.say(&format!("m{sent}"), &format!("m{sent}")).await?;
        let stored: i64 = db.query_one("SELECT count(*) FROM messages", &[]).await?.get(0);
        if stored == sent - 1 || stored == sent {
            let first: Option<i64> = db.query_one("SELECT min(seq) FROM messages", &[]).await?.get(0);
            assert_eq!(first, Some(1));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "seqs 1..=5 never reached PostgreSQL ({stored} of {sent} stored)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let reclaimed = huddle_e2e::metric(
        &format!("http://{}", stack.persister.ops_addr()),
        "huddle_persister_ranges_reclaimed_total",
    )
    .await?;
    assert!(reclaimed >= 1.0, "the retry is visible in the metrics");
    broker.close().await;
    ws.leave().await?;
    stack.shutdown().await
}

/// A reconnect with `since` from before a Redis loss must not be answered from the new
/// lineage (whose seqs reuse the lost ones): with its `epoch` it gets a `latest` history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_from_before_a_redis_loss_gets_the_latest_history() -> Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        persister_args: &["--sweep-interval-ms", "600000"],
        ..Default::default()
    })
    .await?;
    let base = stack.url(0);
    let (ada, bob) = (sign_up(&base, "ada").await?, sign_up(&base, "bob").await?);
    let mut a = Ws::join(&base, "lineage", &ada.token, "").await?;
    let epoch = a.expect("history").await?["epoch"].as_i64().expect("history frames carry the epoch");
    for i in 1..=3 {
        a.say(&format!("a{i}"), &format!("a{i}")).await?;
    }
    stack.flush_room("lineage").await?;
    stack.wait_persisted(3).await?;
    // Seqs 4 and 5 are acked but never persisted; then Redis loses everything.
    a.say("a4", "a4").await?;
    a.say("a5", "a5").await?;
    stack.env.wipe_redis().await?;
    let mut b = Ws::join(&base, "lineage", &bob.token, "").await?;
    let fresh = b.expect("history").await?;
    assert_ne!(fresh["epoch"].as_i64(), Some(epoch));
    for i in 4..=6 {
        assert_eq!(b.say(&format!("b{i}"), &format!("b{i}")).await?, i, "the lost seqs are reused");
    }

    let mut back = Ws::join(&base, "lineage", &ada.token, &format!("since=5&epoch={epoch}")).await?;
    let view = back.expect("history").await?;
    assert_eq!(view["mode"], "latest", "{view}");
    assert_eq!(seqs(&view), (1..=6).collect::<Vec<_>>());
    assert_eq!(view["messages"][3]["body"], "b4");
    // With the current epoch, `since` works as before.
    let current = view["epoch"].as_i64().expect("epoch");
    let mut again = Ws::join(&base, "lineage", &ada.token, &format!("since=5&epoch={current}")).await?;
    let view = again.expect("history").await?;
    assert_eq!((view["mode"].as_str(), seqs(&view)), (Some("since"), vec![6]));
    stack.shutdown().await
}

/// A task whose consumer dies while working on it, every time, ends in the dead-letter
/// queue after the delivery limit, like a task that keeps failing: RabbitMQ counts the
/// deliveries of a quorum queue, the consumer those of a classic one (a copy per death).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_consumer_dies_every_time_is_dead_lettered_at_the_limit() -> Result<()> {
    a_task_whose_consumer_dies_every_time_is_dead_lettered_on(QueueType::Quorum).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_consumer_dies_every_time_on_a_classic_queue_is_dead_lettered_at_the_limit() -> Result<()> {
    a_task_whose_consumer_dies_every_time_is_dead_lettered_on(QueueType::Classic).await
}

/// Signals each delivery it gets and holds it until the test releases it, then takes
/// `then` more to finish it.
#[derive(Clone)]
struct HeldMidTask {
    started: tokio::sync::mpsc::UnboundedSender<()>,
    release: std::sync::Arc<tokio::sync::Notify>,
    then: std::time::Duration,
}

impl huddle_broker::TaskHandler for HeldMidTask {
    async fn handle(&self, _: huddle_broker::TaskQueue, _: &[u8]) -> Result<(), huddle_broker::TaskError> {
        let released = self.release.notified();
        let _ = self.started.send(());
        released.await;
        tokio::time::sleep(self.then).await;
        Ok(())
    }
}

/// One flush task published on `env`'s queues (`admin`), and a consumer of it on a
/// connection of its own (`link`, `prefetch` deliveries at a time) whose every delivery
/// is a [`HeldMidTask`]: `deliveries` says when one starts, `release` lets it finish.
struct HeldConsumer {
    admin: huddle_broker::Broker,
    link: huddle_broker::Broker,
    deliveries: tokio::sync::mpsc::UnboundedReceiver<()>,
    release: std::sync::Arc<tokio::sync::Notify>,
    stop: tokio::sync::watch::Sender<bool>,
    consumer: tokio::task::JoinHandle<()>,
}

async fn held_consumer(env: &huddle_e2e::TestEnv, prefetch: u16, then: std::time::Duration) -> Result<HeldConsumer> {
    let admin = env.broker().await?;
    let task = huddle_proto::v1::FlushRoomTask { room: "lobby".into(), reason: "test".into(), requested_at_ms: 0 };
    admin.publish(huddle_broker::TaskQueue::Flush, &[task]).await?;
    let link = env.broker().await?;
    let (started, deliveries) = tokio::sync::mpsc::unbounded_channel();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let handler = HeldMidTask { started, release: release.clone(), then };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let consumer = tokio::spawn(huddle_broker::consume(
        link.clone(),
        huddle_broker::TaskQueue::Flush,
        prefetch,
        handler,
        std::time::Duration::from_millis(10),
        stopped,
    ));
    Ok(HeldConsumer { admin, link, deliveries, release, stop, consumer })
}

async fn a_task_whose_consumer_dies_every_time_is_dead_lettered_on(queue_type: QueueType) -> Result<()> {
    let mut env = huddle_e2e::TestEnv::new().await?;
    env.queue_type = queue_type;
    // A delivery held until the test has cut the consumer's connection: its ack then goes
    // nowhere, as if the process had died.
    let HeldConsumer { admin, link: consumer_link, mut deliveries, release: connection_cut, stop, consumer } =
        held_consumer(&env, 1, std::time::Duration::ZERO).await?;
    let limit = 5;
    // Each delivery is cut off mid-task. The next one comes after the consumer reconnects:
    // at once, or once its lost ack times out (10 s).
    for delivery in 1..=limit + 1 {
        tokio::time::timeout(std::time::Duration::from_secs(20), deliveries.recv())
            .await
            .ok()
            .flatten()
            .with_context(|| format!("delivery {delivery} of {} never came", limit + 1))?;
        consumer_link.close().await;
        connection_cut.notify_waiters();
    }
    let dead = huddle_e2e::eventually(std::time::Duration::from_secs(20), || async {
        let dead = admin.dead_letters(10).await?;
        Ok((!dead.is_empty()).then_some(dead))
    })
    .await
    .context("the task never reached the dead letters")?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let handled = limit + 1 + std::iter::from_fn(|| deliveries.try_recv().ok()).count();
    let _ = stop.send(true);
    consumer.abort();
    assert_eq!(handled, limit + 1, "the task is handed out once, then once per allowed redelivery");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].queue, format!("{}.flush", env.queue_prefix));
    assert_eq!(dead[0].reason, "delivery_limit");
    let queued = admin.queue_depth(huddle_broker::TaskQueue::Flush).await?;
    assert_eq!(queued, 0, "no copy of the task is left behind in the queue");
    admin.delete_topology().await?;
    admin.close().await;
    Ok(())
}

/// A task in flight when its consumer is told to stop (a persister's SIGTERM) is finished
/// and acked, so it is not handed out again. Before, the consumer's end closed the channel
/// under the task: its ack failed ("could not settle task ... Closing") and the broker put
/// it back in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_in_flight_at_a_stop_is_finished_and_acked_not_handed_out_again() -> Result<()> {
    let env = huddle_e2e::TestEnv::new().await?;
    // A free slot (prefetch 2): the consumer is polled for more while the task runs, and
    // so sees the stop. The task is held until the stop is sent, then takes 200 ms more.
    let HeldConsumer { admin, link: consumer_link, mut deliveries, release: stop_sent, stop, consumer } =
        held_consumer(&env, 2, std::time::Duration::from_millis(200)).await?;
    tokio::time::timeout(std::time::Duration::from_secs(20), deliveries.recv())
        .await
        .ok()
        .flatten()
        .context("the task was never delivered")?;
    stop.send(true)?;
    stop_sent.notify_waiters();
    tokio::time::timeout(std::time::Duration::from_secs(20), consumer)
        .await
        .context("the consumer did not stop within 20 s of the stop")??;
    // Whatever the consumer left unacked goes back to the queue with its connection.
    consumer_link.close().await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let queued = admin.queue_depth(huddle_broker::TaskQueue::Flush).await?;
    assert_eq!(queued, 0, "the task in flight at the stop was acked, so nothing is back in the queue");
    admin.delete_topology().await?;
    admin.close().await;
    Ok(())
}

/// A dead-lettered task that names no queue it died in (put there by hand, say) cannot be
/// re-driven: the re-drive says so and leaves it where it is (before, it was published to
/// the routing key "" and dropped unrouted, confirmed all the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_task_of_unknown_origin_is_left_in_the_dead_queue() -> Result<()> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let env = huddle_e2e::TestEnv::new().await?;
    let broker = env.broker().await?;
    let connection = lapin::Connection::connect(&env.amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let dead_queue = broker.topology().dead_letter_queue();
    let confirm = channel
        .basic_publish(
            "".into(),
            dead_queue.as_str().into(),
            BasicPublishOptions::default(),
            b"by hand",
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    anyhow::ensure!(confirm.is_ack(), "the broker refused the hand-made dead letter");
    let _ = connection.close(200, "done".into()).await;
    huddle_e2e::eventually(std::time::Duration::from_secs(5), || async {
        Ok((broker.dead_letters(10).await?.len() == 1).then_some(()))
    })
    .await?;

    let redriven = broker.redrive_dead_letters(10).await;
    assert!(
        matches!(redriven, Err(huddle_broker::BrokerError::UnknownOrigin { moved: 0 })),
        "the re-drive names the problem: {redriven:?}"
    );
    let left = broker.dead_letters(10).await?;
    assert_eq!(left.len(), 1, "the task stays in the dead queue: {left:?}");
    assert_eq!((left[0].queue.as_str(), left[0].size), ("", 7));
    broker.delete_topology().await?;
    broker.close().await;
    Ok(())
}
