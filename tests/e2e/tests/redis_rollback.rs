//! Redis coming back from an older state (a snapshot, an AOF that lost its last second, a
//! replica that lagged behind) must never hand out a seq PostgreSQL already holds, and
//! clients whose view went back get a `latest` history.

use std::time::Duration;

use anyhow::{Context, Result};
use huddle_e2e::{eventually, seqs, sign_up, OwnRedis, Stack, StackOptions, TestEnv, Ws};

/// The persister's flush claim is short here, so ranges claimed on the old Redis are
/// claimed again soon on the new one.
const PERSISTER_ARGS: &[&str] = &["--flush-claim-ms", "1000"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_back_from_an_older_snapshot_never_reuses_an_archived_seq() -> Result<()> {
    let mut redis = OwnRedis::start()?;
    let env = TestEnv::with_redis(redis.url()).await?;
    let stack =
        Stack::start_on(env, StackOptions { gateways: 1, persister_args: PERSISTER_ARGS, ..Default::default() })
            .await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut writer = Ws::join(&base, "lobby", &ada.token, "").await?;
    writer.expect("history").await?;
    let mut watcher = Ws::join(&base, "lobby", &ada.token, "").await?;
    watcher.expect("history").await?;

    for i in 1..=5 {
        assert_eq!(writer.say(&format!("m{i}"), &format!("c{i}")).await?, i);
    }
    stack.flush_room("lobby").await?;
    stack.wait_persisted(5).await?;
    redis.save()?; // the state Redis will come back with: seq 5
    for i in 6..=15 {
        assert_eq!(writer.say(&format!("m{i}"), &format!("c{i}")).await?, i);
    }
    stack.flush_room("lobby").await?;
    stack.wait_persisted(15).await?;
    let db = stack.env.db().await?;
    // Chunk 6..8 had not committed when Redis went down: the archive has 1..5 and 9..15.
    db.batch_execute(
        "DELETE FROM messages WHERE seq BETWEEN 6 AND 8; UPDATE rooms SET persisted_seq = 5 WHERE name = 'lobby'",
    )
    .await?;
    for i in 1..=15 {
        assert_eq!(watcher.expect("message").await?["seq"], i);
    }

    redis.restart()?; // SIGKILL, then back from the snapshot: the room's counter is at 5

    // The first write after the restart comes over a socket that joined before it: the
    // room must be compared with the archive before it takes that write.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let seq = loop {
        assert!(tokio::time::Instant::now() < deadline, "no ack within 20 s of Redis coming back");
        let answer = writer.send_for_answer("after the rollback", "c-after").await?;
        if answer["type"] == "ack" {
            break answer["seq"].as_u64().context("ack seq")?;
        }
        // The gateway's Redis connections are being replaced: try again.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(seq, 16, "a seq the archive holds was handed out again");
    let hydrator_ops = format!("http://{}", stack.hydrator.ops_addr());
    let metrics = huddle_e2e::http().get(format!("{hydrator_ops}/metrics")).send().await?.text().await?;
    assert!(
        metrics.contains(r#"huddle_hydrations_total{outcome="rechecked"} 1"#),
        "one re-check, no re-open: {metrics}"
    );

    let mut late = Ws::join(&base, "lobby", &ada.token, "").await?;
    let history = late.expect("history").await?;
    assert_eq!(
        seqs(&history)[..],
        [1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 14, 15, 16],
        "the archive's messages above the snapshot are restored: {history}"
    );

    // The watcher saw seqs up to 15, above what Redis came back with: it gets the latest
    // history (built from the restored log) and then the new message.
    let reset = watcher.expect("history").await?;
    assert_eq!(reset["mode"], "latest", "{reset}");
    let mut seen = seqs(&reset);
    if !seen.contains(&16) {
        seen.push(watcher.expect("message").await?["seq"].as_u64().context("seq")?);
    }
    assert_eq!(seen.last().copied(), Some(16));

    stack.flush_room("lobby").await?;
    eventually(Duration::from_secs(15), || async {
        let watermark: i64 = db.query_one("SELECT persisted_seq FROM rooms WHERE name = 'lobby'", &[]).await?.get(0);
        Ok((watermark == 16).then_some(()))
    })
    .await
    .context("the watermark did not pass the lost seqs")?;
    let stored: Vec<i64> =
        db.query("SELECT seq FROM messages ORDER BY seq", &[]).await?.iter().map(|row| row.get(0)).collect();
    assert_eq!(stored, [1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 14, 15, 16]);
    let body: String = db.query_one("SELECT body FROM messages WHERE seq = 16", &[]).await?.get(0);
    assert_eq!(body, "after the rollback");
    let lost: Vec<(i64, String)> = db
        .query("SELECT seq, reason FROM quarantined_messages ORDER BY seq", &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        lost.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        [6, 7, 8],
        "only the never-persisted seqs are recorded as lost"
    );
    assert!(lost.iter().all(|(_, reason)| reason == huddle_archive::LOST_IN_ROLLBACK), "{lost:?}");
    stack.shutdown().await
}
