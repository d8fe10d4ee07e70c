//! The storage layers' invariants against the real Redis and PostgreSQL: trimming,
//! idempotent appends and chunk writes, the watermark over out-of-order chunks, and
//! single-flight hydration.

use anyhow::{Context, Result};
use huddle_archive::Archive;
use huddle_config::PostgresSettings;
use huddle_domain::{Post, RoomName, StoredMessage};
use huddle_e2e::{sign_up, Stack, TestEnv, Ws};
use huddle_roomlog::{AppendOutcome, FlushClaim};

fn entry(user_id: i64, body: &str, client_id: &str) -> Post {
    Post {
        user_id,
        user_name: "ada".into(),
        body: body.into(),
        sent_at_ms: 1_700_000_000_000,
        client_id: client_id.into(),
    }
}

async fn archive(env: &TestEnv) -> Result<Archive> {
    let archive = Archive::connect(&PostgresSettings {
        database_url: env.database_url.clone(),
        database_pool_size: 4,
        database_timeout_ms: 10_000,
    })?;
    archive.migrate().await?;
    Ok(archive)
}

async fn user(env: &TestEnv) -> Result<i64> {
    Ok(env
        .db()
        .await?
        .query_one("INSERT INTO users (username, password_hash) VALUES ('ada', 'x') RETURNING id", &[])
        .await?
        .get(0))
}

#[tokio::test]
async fn an_append_no_replica_confirms_is_refused_and_its_resend_deduplicated() -> Result<()> {
    // The shared Redis has no replica: WAIT 1 can never be met.
    let env = TestEnv::new().await?;
    let settings =
        huddle_config::RedisSettings { redis_wait_replicas: 1, redis_wait_timeout_ms: 50, ..env.redis_settings(100) };
    let waiting = huddle_roomlog::RoomLog::connect(&settings)?;
    let room = RoomName::parse("replicated")?;
    assert_eq!(waiting.hydrate(&room, 0, 0, &[]).await?, (true, 0));
    let refused = waiting.append(&room, &entry(1, "one", "c1")).await;
    assert!(matches!(refused, Err(huddle_roomlog::RoomLogError::NotReplicated { acked: 0, wanted: 1 })), "{refused:?}");
    // The message is in Redis all the same: its resend is acked as the same seq.
    let at_once = env.room_log(100)?;
    assert_eq!(at_once.append(&room, &entry(1, "one", "c1")).await?, AppendOutcome::Duplicate { seq: 1 });
    env.cleanup().await
}

#[tokio::test]
async fn appends_need_an_initialised_room_and_dedupe_client_ids() -> Result<()> {
    let env = TestEnv::new().await?;
    let log = env.room_log(100)?;
    let room = RoomName::parse("dedupe")?;
    assert_eq!(log.append(&room, &entry(1, "too early", "c0")).await?, AppendOutcome::NotReady);
    assert_eq!(log.hydrate(&room, 41, 0, &[]).await?, (true, 41));
    assert_eq!(log.hydrate(&room, 7, 0, &[]).await?, (false, 41), "a second hydrate changes nothing");

    assert_eq!(log.append(&room, &entry(1, "one", "c1")).await?, AppendOutcome::Appended { seq: 42, unpersisted: 1 });
    assert_eq!(log.append(&room, &entry(1, "one again", "c1")).await?, AppendOutcome::Duplicate { seq: 42 });
    // Deduplication lasts 24 hours (docs/PROTOCOL.md), not longer, not shorter.
    let mut redis = redis::Client::open(env.redis_url.as_str())?.get_multiplexed_async_connection().await?;
    let ttl: i64 = redis::cmd("TTL").arg(log.keys().client_id(&room, 1, "c1")).query_async(&mut redis).await?;
    assert!((24 * 3600 - 60..=24 * 3600).contains(&ttl), "client_id marker TTL {ttl} s");
    assert_eq!(log.append(&room, &entry(1, "two", "")).await?, AppendOutcome::Appended { seq: 43, unpersisted: 2 });
    assert_eq!(log.append(&room, &entry(1, "three", "")).await?, AppendOutcome::Appended { seq: 44, unpersisted: 3 });
    let stored: Vec<u64> = log.range(&room, 1, u64::MAX).await?.0.iter().map(|m| m.seq).collect();
    assert_eq!(stored, vec![42, 43, 44]);
    let dirty = log.dirty_rooms(10).await?.rooms;
    assert_eq!(dirty.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), vec!["dedupe"]);
    env.cleanup().await
}

/// A flush claims each unpersisted range once; a claim whose watermark does not move for
/// the claim's lifetime is taken again (flagged), and a room stays in the dirty index,
/// with the time it became dirty, until everything is persisted.
#[tokio::test]
async fn flush_claims_cover_each_range_once_and_are_taken_again_when_stuck() -> Result<()> {
    let env = TestEnv::new().await?;
    let log = env.room_log(100)?;
    let room = RoomName::parse("claims")?;
    log.hydrate(&room, 0, 0, &[]).await?;
    assert_eq!(log.claim_flush(&room, 60_000).await?, None, "nothing to claim in an empty room");
    for i in 1..=3 {
        log.append(&room, &entry(1, &format!("m{i}"), "")).await?;
    }
    assert_eq!(log.claim_flush(&room, 300).await?, Some(FlushClaim { from: 1, to: 3, reclaimed: false }));
    assert_eq!(log.claim_flush(&room, 300).await?, None, "the range is claimed already");
    // The room stays busy (each flush renews the claim) but the watermark never moves: the
    // whole range is claimed again, flagged, once the claim's lifetime has passed.
    let mut reclaimed = None;
    for i in 4..=10 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        log.append(&room, &entry(1, &format!("m{i}"), "")).await?;
        match log.claim_flush(&room, 300).await? {
            Some(claim) if claim.reclaimed => {
                reclaimed = Some((claim, i));
                break;
            }
            Some(claim) => assert_eq!((claim.from, claim.to), (i, i), "only the new seq is claimed"),
            None => panic!("seq {i} was not claimed"),
        }
    }
    let (claim, seq) = reclaimed.expect("a stuck range was never claimed again");
    assert_eq!((claim.from, claim.to), (1, seq), "everything above the watermark, again");

    let dirty_since = log.state(&room).await?.dirty_since_ms.expect("the room is dirty");
    log.clear_dirty_if_clean(&room).await?;
    assert_eq!(log.state(&room).await?.dirty_since_ms, Some(dirty_since), "a dirty room keeps its place");
    log.mark_persisted(&room, seq).await?;
    assert_eq!(log.claim_flush(&room, 300).await?, None, "everything is persisted");
    log.clear_dirty_if_clean(&room).await?;
    assert_eq!(log.state(&room).await?.dirty_since_ms, None);
    env.cleanup().await
}

#[tokio::test]
async fn a_claim_whose_chunk_tasks_could_not_be_queued_is_handed_back() -> Result<()> {
    let env = TestEnv::new().await?;
    let log = env.room_log(100)?;
    let room = RoomName::parse("released")?;
    log.hydrate(&room, 0, 0, &[]).await?;
    for i in 1..=3 {
        log.append(&room, &entry(1, &format!("m{i}"), "")).await?;
    }
    let claim = log.claim_flush(&room, 60_000).await?.expect("1..3 to claim");
    assert!(log.release_claim(&room, claim).await?, "nothing claimed past it");
    assert_eq!(
        log.claim_flush(&room, 60_000).await?,
        Some(FlushClaim { from: 1, to: 3, reclaimed: false }),
        "handed back, the range is claimed again at once, not after 60 s"
    );
    // A later flush claimed past the range: handing 1..3 back now would queue 4 twice.
    log.append(&room, &entry(1, "m4", "")).await?;
    let later = log.claim_flush(&room, 60_000).await?.expect("4 to claim");
    assert_eq!((later.from, later.to), (4, 4));
    assert!(!log.release_claim(&room, claim).await?);
    assert_eq!(log.claim_flush(&room, 60_000).await?, None, "4 stays claimed");
    env.cleanup().await
}

#[tokio::test]
async fn trimming_keeps_the_window_and_never_drops_unpersisted_entries() -> Result<()> {
    let env = TestEnv::new().await?;
    let log = env.room_log(5)?;
    let room = RoomName::parse("trim")?;
    log.hydrate(&room, 0, 0, &[]).await?;
    for i in 1..=20 {
        log.append(&room, &entry(1, &format!("m{i}"), "")).await?;
    }
    // Persisted up to 8 of 20: 9..=20 must stay although the window is 5.
    assert_eq!(log.mark_persisted(&room, 8).await?, Some((20, 8)));
    let kept: Vec<u64> = log.range(&room, 1, u64::MAX).await?.0.iter().map(|m| m.seq).collect();
    assert_eq!(kept, (9..=20).collect::<Vec<_>>());
    assert_eq!(log.dirty_rooms(10).await?.rooms.len(), 1, "still dirty: 9..=20 are not persisted");
    // The watermark never moves back.
    assert_eq!(log.mark_persisted(&room, 3).await?, Some((20, 8)));
    // Everything persisted: the window of 5 remains.
    assert_eq!(log.mark_persisted(&room, 20).await?, Some((20, 20)));
    let kept: Vec<u64> = log.range(&room, 1, u64::MAX).await?.0.iter().map(|m| m.seq).collect();
    assert_eq!(kept, (16..=20).collect::<Vec<_>>());
    // The same step took the clean room out of the dirty index.
    assert!(log.dirty_rooms(10).await?.rooms.is_empty());
    // A room Redis does not hold is left alone.
    assert_eq!(log.mark_persisted(&RoomName::parse("absent")?, 5).await?, None);
    env.cleanup().await
}

fn stored(watermark: u64) -> huddle_archive::ChunkOutcome {
    huddle_archive::ChunkOutcome::Stored { watermark, quarantined: Vec::new() }
}

fn messages(range: std::ops::RangeInclusive<u64>, user_id: i64) -> Vec<StoredMessage> {
    range.map(|seq| StoredMessage { seq, post: entry(user_id, &format!("m{seq}"), &format!("c{seq}")) }).collect()
}

#[tokio::test]
async fn chunks_are_idempotent_and_the_watermark_only_crosses_gap_free_runs() -> Result<()> {
    let env = TestEnv::new().await?;
    let archive = archive(&env).await?;
    let uid = user(&env).await?;
    let room = RoomName::parse("chunks")?;
    // Out of order: 11..=20 first leaves the watermark at 0 (1..=10 missing).
    assert_eq!(archive.store_chunk(&room, 0, &messages(11..=20, uid), &[]).await?, stored(0));
    assert_eq!(archive.store_chunk(&room, 0, &messages(21..=25, uid), &[]).await?, stored(0));
    // The missing prefix arrives: the watermark jumps over all three chunks.
    assert_eq!(archive.store_chunk(&room, 0, &messages(1..=10, uid), &[]).await?, stored(25));
    // Written twice: nothing changes.
    assert_eq!(archive.store_chunk(&room, 0, &messages(5..=15, uid), &[]).await?, stored(25));
    let db = env.db().await?;
    let row = db.query_one("SELECT count(*), count(DISTINCT seq) FROM messages WHERE seq <= 25", &[]).await?;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (25, 25));

    // Concurrent chunks of one room never strand the watermark.
    let room = RoomName::parse("racing")?;
    let writes = (0..10u64).map(|i| {
        let archive = archive.clone();
        let room = room.clone();
        let batch = messages(i * 10 + 1..=i * 10 + 10, uid);
        tokio::spawn(async move { archive.store_chunk(&room, 0, &batch, &[]).await })
    });
    for write in writes {
        write.await??;
    }
    assert_eq!(archive.watermark(&room).await?, 100);

    // A chunk read under an older epoch (before the room was re-opened after a Redis
    // loss) is refused, and re-opening moves the epoch on.
    let room = RoomName::parse("chunks")?;
    let tail = archive.reopen_room(&room, 10).await?;
    assert_eq!((tail.last_seq, tail.epoch, tail.recent.len()), (25, 1, 10));
    assert_eq!(
        archive.store_chunk(&room, 0, &messages(26..=30, uid), &[]).await?,
        huddle_archive::ChunkOutcome::StaleEpoch
    );
    assert_eq!(archive.store_chunk(&room, 1, &messages(26..=30, uid), &[]).await?, stored(30));

    let page = archive.history_before(&RoomName::parse("chunks")?, 11, 3).await?;
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![8, 9, 10]);
    assert_eq!(page[0].post, entry(uid, "m8", "c8"));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_joining_a_cold_room_hydrates_it_once() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut a = Ws::join(&base, "crowd", &ada.token, "").await?;
    a.expect("history").await?;
    for i in 1..=3 {
        a.say(&format!("m{i}"), &format!("m{i}")).await?;
    }
    a.leave().await?;
    stack.wait_persisted(3).await?;
    stack.env.wipe_redis().await?;

    let hydrator = stack.env.hydrator_client(stack.hydrator.grpc_addr()).await?;
    let calls = (0..30).map(|_| {
        let mut client = hydrator.clone();
        tokio::spawn(async move {
            client
                .hydrate_room(huddle_proto::v1::HydrateRoomRequest { room: "crowd".into() })
                .await
                .map(|r| r.into_inner())
        })
    });
    let mut loaded_by = 0;
    for call in calls {
        let reply = call.await??;
        assert_eq!(reply.last_seq, 3);
        if !reply.already_warm {
            loaded_by += 1;
            assert_eq!(reply.loaded, 3);
        }
    }
    assert_eq!(loaded_by, 1, "exactly one caller loads the room from PostgreSQL");
    stack.shutdown().await
}

#[tokio::test]
async fn every_row_postgres_refuses_is_quarantined_and_the_watermark_moves_past_it() -> Result<()> {
    let env = TestEnv::new().await?;
    let archive = archive(&env).await?;
    let uid = user(&env).await?;
    let room = RoomName::parse("poison")?;
    let mut batch = messages(1..=12, uid);
    batch[2].post.body = "nul \0 in the body".into(); // seq 3: text cannot hold U+0000
    batch[4].post.user_name = "nul\0name".into(); // seq 5: same, another column
    batch[7].post.user_id = uid + 1000; // seq 8: no such user (foreign key)
    batch[10].post.sent_at_ms = i64::MAX; // seq 11: timestamp out of range
    batch[11].post.client_id = "\0".into(); // seq 12: NUL in the client_id
    let unreadable =
        [huddle_archive::UnreadableEntry { seq: 13, raw: b"m\xff{not json".to_vec(), reason: "not JSON".into() }];

    let huddle_archive::ChunkOutcome::Stored { watermark, quarantined } =
        archive.store_chunk(&room, 0, &batch, &unreadable).await?
    else {
        panic!("chunk refused as stale");
    };
    assert_eq!(watermark, 13, "the watermark moves past every refused row");
    let mut by_seq: Vec<(u64, String)> = quarantined.iter().map(|q| (q.seq, q.sqlstate.clone())).collect();
    by_seq.sort();
    assert_eq!(
        by_seq,
        [(3, "22021"), (5, "22021"), (8, "23503"), (11, "22008"), (12, "22021"), (13, "")]
            .map(|(s, c)| (s, c.to_owned()))
    );
    // The reason is PostgreSQL's own message, not "db error".
    let nul = quarantined.iter().find(|q| q.seq == 3).expect("seq 3 quarantined");
    assert!(nul.reason.contains("22021") && nul.reason.contains("0x00"), "{}", nul.reason);

    let db = env.db().await?;
    let written: Vec<i64> =
        db.query("SELECT seq FROM messages ORDER BY seq", &[]).await?.iter().map(|r| r.get(0)).collect();
    assert_eq!(written, vec![1, 2, 4, 6, 7, 9, 10]);
    // What was refused is kept: a refused row as its values, an unreadable entry as the
    // log's own bytes.
    let kept = archive.quarantined(&room).await?;
    assert_eq!(kept.iter().map(|(seq, _, _)| *seq).collect::<Vec<_>>(), vec![3, 5, 8, 11, 12, 13]);
    let row_3: serde_json::Value = serde_json::from_slice(&kept[0].1)?;
    assert_eq!(row_3["seq"], 3);
    assert_eq!(row_3["body"], batch[2].post.body.as_str());
    assert_eq!(row_3["user_id"], batch[2].post.user_id);
    assert_eq!(kept[5].1, b"m\xff{not json".to_vec());

    // Redelivered: nothing new is quarantined or written, the watermark stays.
    assert_eq!(archive.store_chunk(&room, 0, &batch, &unreadable).await?, stored(13));
    // Later messages of the room go on as usual.
    assert_eq!(archive.store_chunk(&room, 0, &messages(14..=15, uid), &[]).await?, stored(15));
    // A re-open after a Redis loss continues above quarantined seqs, never reusing them.
    let room_q = RoomName::parse("poison-tail")?;
    let mut tail = messages(1..=2, uid);
    tail[1].post.body = "\0".into();
    archive.store_chunk(&room_q, 0, &tail, &[]).await?;
    assert_eq!(archive.reopen_room(&room_q, 10).await?.last_seq, 2);
    env.cleanup().await
}

/// Two hydrators re-open the same room (the first one's lock expired mid-load): whichever
/// initialises Redis, chunks of the room are still accepted afterwards.
#[tokio::test]
async fn racing_reopens_leave_redis_and_the_archive_on_one_epoch() -> Result<()> {
    let env = TestEnv::new().await?;
    let archive = archive(&env).await?;
    let log = env.room_log(100)?;
    let uid = user(&env).await?;
    let room = RoomName::parse("raced")?;
    let first = archive.reopen_room(&room, 10).await?;
    let second = archive.reopen_room(&room, 10).await?;
    assert!(second.epoch > first.epoch);
    // The first re-open's Redis write lands first; the second finds the room there.
    assert_eq!(log.hydrate(&room, first.last_seq, first.epoch, &first.recent).await?, (true, 0));
    assert_eq!(log.hydrate(&room, second.last_seq, second.epoch, &second.recent).await?, (false, 0));
    for i in 1..=3 {
        log.append(&room, &entry(uid, &format!("m{i}"), "")).await?;
    }
    let chunk = log.chunk(&room, 1, 3).await?;
    assert_eq!(
        archive.store_chunk(&room, chunk.epoch, &chunk.messages, &[]).await?,
        stored(3),
        "chunks are not refused as stale"
    );
    env.cleanup().await
}

/// Redis handing out a seq twice (a rollback the gateways could not see) must not drop
/// the second message silently: it is quarantined with the reason, and a redelivered
/// chunk (the same messages again) is not mistaken for it.
#[tokio::test]
async fn a_seq_handed_out_twice_quarantines_the_second_message_instead_of_dropping_it() -> Result<()> {
    let env = TestEnv::new().await?;
    let archive = archive(&env).await?;
    let uid = user(&env).await?;
    let room = RoomName::parse("rolled-back")?;
    assert_eq!(archive.store_chunk(&room, 0, &messages(1..=3, uid), &[]).await?, stored(3));
    assert_eq!(archive.store_chunk(&room, 0, &messages(1..=3, uid), &[]).await?, stored(3), "redelivery");
    let mut reused = messages(3..=4, uid);
    reused[0].post.body = "a newer message that got seq 3 again".into();
    let huddle_archive::ChunkOutcome::Stored { watermark, quarantined } =
        archive.store_chunk(&room, 0, &reused, &[]).await?
    else {
        panic!("refused as stale");
    };
    assert_eq!(watermark, 4);
    assert_eq!(quarantined.iter().map(|q| q.seq).collect::<Vec<_>>(), vec![3]);
    assert!(quarantined[0].reason.contains("twice"), "{}", quarantined[0].reason);
    let kept = archive.quarantined(&room).await?;
    let row: serde_json::Value = serde_json::from_slice(&kept[0].1)?;
    assert_eq!(row["body"], "a newer message that got seq 3 again");

    // Out of order: the reused seq arrives while the watermark is still below it; the
    // seq then stands in both tables and must count once for the watermark.
    let room = RoomName::parse("rolled-back-early")?;
    assert_eq!(archive.store_chunk(&room, 0, &messages(3..=4, uid), &[]).await?, stored(0));
    let huddle_archive::ChunkOutcome::Stored { watermark, .. } =
        archive.store_chunk(&room, 0, &reused[..1], &[]).await?
    else {
        panic!("refused as stale");
    };
    assert_eq!(watermark, 0);
    assert_eq!(archive.store_chunk(&room, 0, &messages(1..=2, uid), &[]).await?, stored(4));
    env.cleanup().await
}

/// The send path makes one Redis round-trip: a connection that answered within the last
/// second is handed out without a PING, and many appends share the pool's multiplexed
/// connections at once. A connection that failed (Redis restarted) is replaced, not
/// handed out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_are_not_pinged_and_failed_ones_are_replaced() -> Result<()> {
    let mut redis = huddle_e2e::OwnRedis::start()?;
    let env = TestEnv::with_redis(redis.url()).await?;
    let log = env.room_log(100)?;
    let room = RoomName::parse("one-round-trip")?;
    log.hydrate(&room, 0, 0, &[]).await?;
    let mut admin = redis::Client::open(redis.url())?.get_multiplexed_async_connection().await?;
    let pings = |stats: String| -> u64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_ping:calls="))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut admin).await?;
    let posts: Vec<Post> = (0..200).map(|i| entry(1, "hi", &format!("c{i}"))).collect();
    let appends = posts.iter().map(|post| log.append(&room, post));
    for outcome in futures_util::future::join_all(appends).await {
        assert!(matches!(outcome?, AppendOutcome::Appended { .. }));
    }
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut admin).await?;
    assert!(pings(stats.clone()) <= 4, "200 appends cost {} PINGs (pool of 4)", pings(stats));

    // Redis restarts: every pooled connection breaks. Appends fail until the pool has
    // replaced them, then work again; no broken connection is handed out for ever.
    redis.restart()?;
    let mut recovered = false;
    for _ in 0..20 {
        if log.ping().await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "the pool still hands out broken connections after a Redis restart");

    // A restart the pool was warned of (the gateway's pub/sub connection broke): the
    // first command after it succeeds, because the dead connection is PINGed and
    // replaced before it is handed out.
    log.ping().await?;
    redis.restart()?;
    log.suspect_connections();
    log.ping().await.context("the first command after a suspected restart failed")?;
    env.cleanup().await
}

/// `messages` has no foreign keys (V7): a chunk checks its distinct senders once, under
/// the room's lock. A chunk whose only fault is unknown senders (the COPY path) stores
/// the known senders' rows and quarantines the others with 23503 and the missing id, as
/// the foreign key did; deleting a user or room that messages refer to is still refused.
#[tokio::test]
async fn a_chunk_checks_its_senders_once_and_quarantines_the_unknown_ones() -> Result<()> {
    let env = TestEnv::new().await?;
    let archive = archive(&env).await?;
    let uid = user(&env).await?;
    let db = env.db().await?;
    let per_row_triggers: i64 =
        db.query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'messages'::regclass", &[]).await?.get(0);
    assert_eq!(per_row_triggers, 0, "no per-row (foreign key) triggers on messages");

    let room = RoomName::parse("senders")?;
    let mut batch = messages(1..=6, uid);
    batch[1].post.user_id = uid + 1000; // seq 2
    batch[4].post.user_id = uid + 2000; // seq 5
    let huddle_archive::ChunkOutcome::Stored { watermark, quarantined } =
        archive.store_chunk(&room, 0, &batch, &[]).await?
    else {
        panic!("refused as stale");
    };
    assert_eq!(watermark, 6, "the watermark moves past the unknown senders' rows");
    let found: Vec<(u64, &str)> = quarantined.iter().map(|q| (q.seq, q.sqlstate.as_str())).collect();
    assert_eq!(found, [(2, "23503"), (5, "23503")]);
    for (q, missing) in quarantined.iter().zip([uid + 1000, uid + 2000]) {
        assert!(q.reason.contains(&format!("(user_id)=({missing})")), "{}", q.reason);
    }
    let written: Vec<i64> =
        db.query("SELECT seq FROM messages ORDER BY seq", &[]).await?.iter().map(|r| r.get(0)).collect();
    assert_eq!(written, vec![1, 3, 4, 6]);
    let kept: Vec<(i64, String)> = db
        .query("SELECT seq, sqlstate FROM quarantined_messages ORDER BY seq", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(kept, [(2, "23503".to_owned()), (5, "23503".to_owned())]);
    // Redelivered: nothing new, the watermark stays.
    assert_eq!(archive.store_chunk(&room, 0, &batch, &[]).await?, stored(6));

    // What the foreign keys also refused: removing a sender or a room messages refer to
    // (a room without quarantined rows: those still have their foreign key).
    assert_eq!(archive.store_chunk(&RoomName::parse("clean")?, 0, &messages(1..=2, uid), &[]).await?, stored(2));
    for delete in [format!("DELETE FROM users WHERE id = {uid}"), "DELETE FROM rooms WHERE name = 'clean'".into()] {
        let error = db.batch_execute(&delete).await.expect_err(&delete);
        assert_eq!(error.code().map(|c| c.code()), Some("23503"), "{delete}: {error}");
    }
    let idle: i64 = db
        .query_one("INSERT INTO users (username, password_hash) VALUES ('idle', 'x') RETURNING id", &[])
        .await?
        .get(0);
    assert_eq!(db.execute("DELETE FROM users WHERE id = $1", &[&idle]).await?, 1, "a user without messages goes");
    env.cleanup().await
}

/// The dirty index says how long a room has waited for persistence to move: a busy room
/// whose watermark keeps moving is not reported as lagging since its first message, and
/// one whose watermark stops keeps its age growing.
#[tokio::test]
async fn a_dirty_room_is_rescored_when_its_watermark_moves_and_only_then() -> Result<()> {
    let env = TestEnv::new().await?;
    let log = env.room_log(100)?;
    let room = RoomName::parse("rescored")?;
    log.hydrate(&room, 0, 1, &[]).await?;
    for i in 1..=3 {
        log.append(&room, &entry(1, &format!("m{i}"), "")).await?;
    }
    let first = log.state(&room).await?.dirty_since_ms.context("the room is dirty")?;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    log.mark_persisted(&room, 2).await?;
    let moved = log.state(&room).await?.dirty_since_ms.context("seq 3 is still unpersisted")?;
    assert!(moved > first, "the watermark moved: the wait starts again ({first} → {moved})");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    log.mark_persisted(&room, 2).await?;
    log.clear_dirty_if_clean(&room).await?;
    assert_eq!(log.state(&room).await?.dirty_since_ms, Some(moved), "no progress, no new score");
    let lag = log.unpersisted(std::slice::from_ref(&room)).await?;
    assert_eq!((lag.messages, lag.dirty_rooms), (1, 1));
    log.mark_persisted(&room, 3).await?;
    log.clear_dirty_if_clean(&room).await?;
    assert_eq!(log.state(&room).await?.dirty_since_ms, None);
    assert_eq!(log.unpersisted(&[room]).await?.messages, 0);
    env.cleanup().await
}
