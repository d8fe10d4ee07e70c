//! A Redis at its `maxmemory` (policy `noeviction`, as the docs advise) refuses writes:
//! sends get `error` `unavailable`, nothing acked is lost, and the room takes sends again
//! once persistence has let Redis trim.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use huddle_e2e::{eventually, sign_up, OwnRedis, Stack, StackOptions, TestEnv, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_redis_refuses_sends_and_loses_nothing_acked() -> Result<()> {
    let redis = OwnRedis::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"])?;
    let env = TestEnv::with_redis(redis.url()).await?;
    let stack = Stack::start_on(
        env,
        StackOptions {
            gateways: 1,
            gateway_args: &["--flush-backlog", "100000"],
            // A small window: once persisted, the room's entries leave Redis.
            persister_args: &["--sweep-interval-ms", "200", "--flush-claim-ms", "1000", "--redis-window", "10"],
            ..Default::default()
        },
    )
    .await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut ws = Ws::join(&base, "full", &ada.token, "").await?;
    ws.expect("history").await?;
    // Nothing reaches PostgreSQL for now, so every message stays in Redis until it is full.
    stack.env.make_archive_refuse_inserts().await?;

    let body = "x".repeat(3_900);
    let mut acked = BTreeSet::new();
    let refusal = loop {
        if acked.len() > 5_000 {
            bail!("Redis never filled up (4 MB, {} messages of 3.9 KB acked)", acked.len());
        }
        let client_id = format!("c{}", acked.len() + 1);
        let answer = ws.send_for_answer(&body, &client_id).await?;
        if answer["type"] == "error" {
            break answer;
        }
        acked.insert(client_id);
    };
    assert_eq!(refusal["code"], "unavailable", "{refusal}");
    assert!(acked.len() > 100, "only {} messages fit", acked.len());

    // PostgreSQL takes writes again: every acked message arrives, and the room sends again.
    stack.env.let_archive_accept_inserts().await?;
    let db = stack.env.db().await?;
    let stored: BTreeSet<String> = eventually(Duration::from_secs(60), || async {
        let rows = db.query("SELECT client_id FROM messages", &[]).await?;
        let stored: BTreeSet<String> = rows.iter().map(|row| row.get(0)).collect();
        Ok((stored.len() >= acked.len()).then_some(stored))
    })
    .await
    .context("the acked messages never all reached PostgreSQL")?;
    assert_eq!(stored, acked, "PostgreSQL holds exactly the acked messages");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let seq = loop {
        assert!(tokio::time::Instant::now() < deadline, "no send accepted within 20 s after Redis trimmed");
        let answer = ws.send_for_answer("room for more", "after").await?;
        if answer["type"] == "ack" {
            break answer["seq"].as_u64().context("ack seq")?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(seq, acked.len() as u64 + 1);
    stack.shutdown().await
}
