//! Huddle on a 3-node RabbitMQ cluster of the test's own: with `HUDDLE_AMQP_URL` naming
//! every node, a node killed under the services (first the one they all use, then the one
//! they moved to, while the first one is back) costs no acked message: the quorum queues
//! keep the tasks, the consumers reconnect to a live node, and PostgreSQL ends up with
//! every message exactly once.

use std::time::Duration;

use anyhow::{Context, Result};
use huddle_e2e::{eventually, sign_up, OwnRabbitCluster, Stack, StackOptions, TestEnv, Ws};

/// Rows in PostgreSQL's messages and distinct seqs among them (one room).
async fn archived(stack: &Stack) -> Result<(i64, i64)> {
    let db = stack.env.db().await?;
    let row = db.query_one("SELECT count(*), count(DISTINCT seq) FROM messages", &[]).await?;
    Ok((row.get(0), row.get(1)))
}

async fn wait_archived(stack: &Stack, cluster: &OwnRabbitCluster, count: i64, queue: &str) -> Result<()> {
    eventually(Duration::from_secs(25), || async {
        stack.flush_room("lobby").await.ok();
        let (rows, distinct) = archived(stack).await?;
        anyhow::ensure!(rows == distinct, "a message was archived twice: {rows} rows, {distinct} seqs");
        Ok((rows == count).then_some(()))
    })
    .await
    .with_context(|| format!("PostgreSQL never held {count} messages; {queue}: {}", cluster.quorum_status(2, queue)))
}

/// Sends `n` more messages, each acked with the next seq.
async fn say_more(ws: &mut Ws, sent: &mut u64, n: u64) -> Result<()> {
    for _ in 0..n {
        *sent += 1;
        assert_eq!(ws.say(&format!("m{sent}"), &format!("c{sent}")).await?, *sent, "acks in order");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_rabbitmq_node_loses_no_acked_message() -> Result<()> {
    let cluster = OwnRabbitCluster::start(3)?;
    let mut env = TestEnv::new().await?;
    env.amqp_url = cluster.urls();
    let stack = Stack::start_on(
        env,
        StackOptions {
            gateways: 1,
            gateway_args: &["--flush-backlog", "5"],
            // The flush claim keeps its default 30 s, longer than each phase may take: a
            // range whose chunk tasks could not be queued must be handed back, not wait.
            persister_args: &["--chunk-size", "5", "--sweep-interval-ms", "500"],
            ..Default::default()
        },
    )
    .await?;
    let flush_queue = stack.env.broker().await?.topology().queue(huddle_broker::TaskQueue::Flush);
    let members = cluster.quorum_members(2, &flush_queue);
    assert_eq!(members.len(), 3, "unless told otherwise, a quorum queue has a replica on every node: {members:?}");
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut ws = Ws::join(&base, "lobby", &ada.token, "").await?;
    ws.expect("history").await?;

    let mut sent = 0;
    say_more(&mut ws, &mut sent, 30).await?;
    wait_archived(&stack, &cluster, 30, &flush_queue).await?;

    // Every service connected to node 0, the first of the list.
    cluster.kill(0)?;
    say_more(&mut ws, &mut sent, 30).await?;
    wait_archived(&stack, &cluster, 60, &flush_queue).await?;

    // Node 0 comes back; the node they moved to goes.
    cluster.restart(0)?;
    cluster.kill(1)?;
    say_more(&mut ws, &mut sent, 30).await?;
    wait_archived(&stack, &cluster, 90, &flush_queue).await?;

    let db = stack.env.db().await?;
    let seqs: Vec<i64> =
        db.query("SELECT seq FROM messages ORDER BY seq", &[]).await?.iter().map(|r| r.get(0)).collect();
    assert_eq!(seqs, (1..=90).collect::<Vec<i64>>());
    ws.leave().await?;
    stack.shutdown().await
}

/// `HUDDLE_QUORUM_GROUP_SIZE` sets on how many of the cluster's nodes each task queue is
/// replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quorum_group_size_sets_how_many_nodes_hold_each_queue() -> Result<()> {
    let cluster = OwnRabbitCluster::start(3)?;
    let mut env = TestEnv::new().await?;
    env.amqp_url = cluster.urls();
    let settings = huddle_config::BrokerSettings {
        amqp_url: env.amqp_url.clone(),
        queue_prefix: env.queue_prefix.clone(),
        delivery_limit: 5,
        queue_type: huddle_config::QueueType::Quorum,
        quorum_group_size: Some(2),
    };
    let broker = huddle_broker::Broker::connect(&settings).await?;
    for queue in huddle_broker::TaskQueue::ALL {
        let name = broker.topology().queue(queue);
        let members = cluster.quorum_members(0, &name);
        assert_eq!(members.len(), 2, "{name}: {}", cluster.quorum_status(0, &name));
    }
    broker.close().await;
    Ok(())
}
