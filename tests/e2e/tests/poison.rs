//! No single message can stop a room's persistence: entries PostgreSQL refuses (or that
//! cannot even be decoded) are quarantined with their reason, and the room goes on.

use std::time::Duration;

use anyhow::Result;
use huddle_domain::{Post, RoomName};
use huddle_e2e::{eventually, sign_up, Stack, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_entry_is_quarantined_and_later_messages_are_persisted() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut ws = Ws::join(&base, "poisoned", &ada.token, "").await?;
    ws.expect("history").await?;
    assert_eq!(ws.say("before", "p-1").await?, 1);

    // Entries the gateway would refuse, written straight into the room's log the way a
    // buggy or older writer could: each kind PostgreSQL refuses, and one that is not a
    // log entry at all.
    let log = stack.env.room_log(2000)?;
    let room = RoomName::parse("poisoned")?;
    let bad = |body: &str, user_id: i64, sent_at_ms: i64| Post {
        user_id,
        user_name: "ada".into(),
        body: body.into(),
        sent_at_ms,
        client_id: String::new(),
    };
    for entry in [bad("nul \0 body", ada.id, 1), bad("ghost", ada.id + 999, 1), bad("far future", ada.id, i64::MAX)] {
        log.append(&room, &entry).await?;
    }
    let mut redis = redis::Client::open(huddle_e2e::redis_url())?.get_multiplexed_async_connection().await?;
    assert_eq!(write_undecodable(&mut redis, &log, &room, b"\xff\xfe not json").await?, 5);
    for i in 6..=8 {
        assert_eq!(ws.say(&format!("after {i}"), &format!("p-{i}")).await?, i);
    }

    // The sweep flushes the room; the watermark passes the bad entries.
    let db = stack.env.db().await?;
    eventually(Duration::from_secs(20), || async {
        let watermark: i64 = db.query_one("SELECT persisted_seq FROM rooms WHERE name = 'poisoned'", &[]).await?.get(0);
        Ok((watermark == 8).then_some(()))
    })
    .await?;
    let stored: Vec<i64> =
        db.query("SELECT seq FROM messages ORDER BY seq", &[]).await?.iter().map(|r| r.get(0)).collect();
    assert_eq!(stored, vec![1, 6, 7, 8]);
    let quarantined = db.query("SELECT seq, sqlstate, reason FROM quarantined_messages ORDER BY seq", &[]).await?;
    let found: Vec<(i64, String)> = quarantined.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(found, [(2, "22021"), (3, "23503"), (4, "22008"), (5, "")].map(|(s, c)| (s, c.to_owned())));
    for row in &quarantined {
        let reason: String = row.get(2);
        assert!(!reason.is_empty() && reason != "db error", "reason must name the cause: {reason}");
    }
    // Redis knows the room is clean again; nothing went to the dead-letter queue.
    eventually(Duration::from_secs(10), || async {
        let state = log.state(&room).await?;
        Ok((state.persisted_seq == 8 && state.dirty_since_ms.is_none()).then_some(()))
    })
    .await?;
    let broker = stack.env.broker().await?;
    assert!(broker.dead_letters(10).await?.is_empty(), "no task was dead-lettered");
    broker.close().await;
    ws.leave().await?;
    stack.shutdown().await
}

/// A log entry in Redis that cannot be decoded (written by hand, or a damaged Redis) is
/// left out of what readers get: a join's history, a recovery with `since` and a history
/// page all return the room's other messages. Before, each of them failed while the entry
/// was in the room's Redis window: the socket was closed with 1011, the page was 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_entry_in_redis_is_left_out_of_joins_recoveries_and_pages() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut ws = Ws::join(&base, "damaged", &ada.token, "").await?;
    ws.expect("history").await?;
    assert_eq!(ws.say("first", "d-1").await?, 1);

    // Two entries no reader can decode: bytes that are not UTF-8, and UTF-8 that is no
    // log entry. Each takes a seq, as a writer of the log would.
    let log = stack.env.room_log(2000)?;
    let room = RoomName::parse("damaged")?;
    let mut redis = redis::Client::open(huddle_e2e::redis_url())?.get_multiplexed_async_connection().await?;
    for raw in [&b"\xff\xfe not utf-8"[..], &b"{\"not\": \"an entry\"}"[..]] {
        write_undecodable(&mut redis, &log, &room, raw).await?;
    }
    assert_eq!(ws.say("fourth", "d-4").await?, 4);

    let mut joined = Ws::join(&base, "damaged", &ada.token, "").await?;
    let history = joined.expect("history").await?;
    assert_eq!(huddle_e2e::seqs(&history), [1, 4], "{history}");
    joined.leave().await?;
    let mut recovered = Ws::join(&base, "damaged", &ada.token, "since=1").await?;
    let since = recovered.expect("history").await?;
    assert_eq!((since["mode"].as_str(), huddle_e2e::seqs(&since)), (Some("since"), vec![4]), "{since}");
    // Live messages still reach the sockets that recovered.
    assert_eq!(ws.say("fifth", "d-5").await?, 5);
    assert_eq!(recovered.expect("message").await?["seq"], 5);
    recovered.leave().await?;
    let page = huddle_e2e::http()
        .get(format!("{base}/api/rooms/damaged/messages?limit=10"))
        .bearer_auth(&ada.token)
        .send()
        .await?;
    assert_eq!(page.status(), 200);
    let page: serde_json::Value = page.json().await?;
    assert_eq!(huddle_e2e::seqs(&page), [1, 4, 5], "{page}");
    ws.leave().await?;

    // A room whose first entry is the undecodable one: a page still knows it reached the
    // room's first message (before, the missing seq 1 read as "more below").
    let first = RoomName::parse("damaged-first")?;
    let mut ws = Ws::join(&base, first.as_str(), &ada.token, "").await?;
    ws.expect("history").await?;
    assert_eq!(write_undecodable(&mut redis, &log, &first, b"not an entry").await?, 1);
    assert_eq!(ws.say("second", "f-2").await?, 2);
    let page: serde_json::Value = huddle_e2e::http()
        .get(format!("{base}/api/rooms/damaged-first/messages?limit=10"))
        .bearer_auth(&ada.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!((huddle_e2e::seqs(&page), &page["has_more"]), (vec![2], &serde_json::json!(false)), "{page}");
    ws.leave().await?;
    stack.shutdown().await
}

/// Writes `raw` as the room's next log entry, straight into Redis the way a buggy or
/// older writer could (it takes the next seq, as the append script would); its seq.
async fn write_undecodable(
    redis: &mut redis::aio::MultiplexedConnection,
    log: &huddle_roomlog::RoomLog,
    room: &RoomName,
    raw: &[u8],
) -> Result<u64> {
    let seq: u64 = redis::cmd("INCR").arg(log.keys().seq(room)).query_async(redis).await?;
    let _: String = redis::cmd("XADD")
        .arg(log.keys().log(room))
        .arg(format!("{seq}-0"))
        .arg("m")
        .arg(raw)
        .query_async(redis)
        .await?;
    Ok(seq)
}
