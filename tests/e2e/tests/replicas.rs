//! Many replicas of every service as real processes on one box, with no sticky routing:
//! three gateways, two persisters and two hydrators. Cold joins of one room through
//! different gateways and hydrators restore it once; everyone sees every message in
//! order whichever gateway they are on; a client that reconnects to another gateway with
//! `since` sees no gap and no duplicate; both persisters take work and every acked
//! message lands in PostgreSQL exactly once.

use std::time::Duration;

use anyhow::{Context, Result};
use huddle_e2e::{eventually, http, sign_up, ProcessSettings, Processes, TestEnv, Ws};

fn seqs(history: &serde_json::Value) -> Vec<u64> {
    history["messages"].as_array().into_iter().flatten().filter_map(|m| m["seq"].as_u64()).collect()
}

/// The value of an unlabelled series (or the sum of a labelled metric's series) in a scrape.
fn scraped(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_two_persisters_two_hydrators_keep_every_guarantee() -> Result<()> {
    const ROUNDS: u64 = 20;
    let env = TestEnv::new().await?;
    let services = Processes::start(
        &env,
        "",
        ProcessSettings {
            gateways: 3,
            persisters: 2,
            hydrators: 2,
            // Many small flushes and chunks, so both persisters get some.
            gateway: &[("HUDDLE_FLUSH_BACKLOG", "2".into())],
            persister: &[("HUDDLE_CHUNK_SIZE", "2".into()), ("HUDDLE_SWEEP_INTERVAL_MS", "500".into())],
            ..ProcessSettings::default()
        },
    )
    .await?;
    let urls: Vec<String> = services.gateways.iter().map(|g| g.url()).collect();
    let names = ["ada", "bob", "cyd"];
    let mut users = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // Sessions are signed with one secret: any gateway takes any user's token.
        users.push(sign_up(&urls[i], name).await?);
    }

    // All three join one cold room at once, each through its own gateway (gateways 0 and
    // 2 call hydrator 0, gateway 1 hydrator 1): the room is restored once.
    let joins = users.iter().zip(&urls).map(|(user, url)| Ws::join(url, "shared", &user.token, ""));
    let mut sockets: Vec<Ws> = futures_util::future::try_join_all(joins).await?;
    for socket in &mut sockets {
        assert_eq!(seqs(&socket.expect("history").await?), Vec::<u64>::new());
    }
    let mut loaded = 0;
    for hydrator in &services.hydrators {
        let metrics = http().get(format!("http://{}/metrics", hydrator.ops)).send().await?.text().await?;
        loaded += scraped(&metrics, r#"huddle_hydrations_total{outcome="loaded"}"#);
    }
    assert_eq!(loaded, 1, "one restore of the room across both hydrators");

    // Everyone sends in turn; everyone sees every message, in seq order, on its gateway.
    let mut expected = 0u64;
    for round in 0..ROUNDS {
        for (i, socket) in sockets.iter_mut().enumerate() {
            expected += 1;
            let seq = socket.say(&format!("{} {round}", names[i]), &format!("{}-{round}", names[i])).await?;
            assert_eq!(seq, expected, "seqs are handed out in order across gateways");
        }
    }
    for (i, socket) in sockets.iter_mut().enumerate() {
        for seq in 1..=expected {
            let message = socket.expect("message").await.with_context(|| format!("{} seq {seq}", names[i]))?;
            assert_eq!(message["seq"], seq, "{} sees every message in order", names[i]);
        }
    }

    // Bob leaves gateway 1; ada and cyd go on; bob comes back on gateway 2 with `since`:
    // exactly what he missed, then live messages.
    let bob = sockets.remove(1);
    bob.leave().await?;
    let missed_from = expected + 1;
    for round in 0..5 {
        for socket in sockets.iter_mut() {
            expected += 1;
            socket.say(&format!("while bob was away {round}"), &format!("away-{expected}")).await?;
        }
    }
    let since = format!("since={}", missed_from - 1);
    let mut bob = Ws::join(&urls[2], "shared", &users[1].token, &since).await?;
    let recovered = bob.expect("history").await?;
    assert_eq!(recovered["mode"], "since");
    assert_eq!(seqs(&recovered), (missed_from..=expected).collect::<Vec<_>>(), "no gap, no duplicate");
    expected += 1;
    assert_eq!(sockets[0].say("welcome back", "welcome").await?, expected);
    assert_eq!(bob.expect("message").await?["seq"], expected);
    // A resend of a message another gateway acked is the same message, not a new one.
    let resent = sockets[1].send_for_answer("cyd 0", "cyd-0").await?;
    assert_eq!(
        (resent["type"].as_str(), resent["seq"].as_u64(), resent["duplicate"].as_bool()),
        (Some("ack"), Some(3), Some(true))
    );

    for socket in sockets {
        socket.leave().await?;
    }
    bob.leave().await?;

    // Every acked message is in PostgreSQL once, and both persisters wrote some of them.
    let db = env.db().await?;
    eventually(Duration::from_secs(20), || async {
        let row =
            db.query_one("SELECT count(*), count(DISTINCT seq), coalesce(max(seq), 0) FROM messages", &[]).await?;
        let (rows, distinct, top) = (row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2));
        Ok((rows == expected as i64 && distinct == rows && top == expected as i64).then_some(()))
    })
    .await
    .context("not every acked message reached PostgreSQL exactly once")?;
    for persister in &services.persisters {
        let metrics = http().get(format!("http://{}/metrics", persister.ops)).send().await?.text().await?;
        let written = scraped(&metrics, "huddle_persister_messages_written_total");
        assert!(written > 0, "persister {} wrote nothing: the work is not spread", persister.addr);
    }
    services.terminate()?;
    env.cleanup().await
}
