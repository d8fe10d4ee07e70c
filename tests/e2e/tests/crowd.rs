//! Crowds: many clients at once get fast answers or a clear refusal, never a hang.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use huddle_e2e::{sign_up, Stack, StackOptions, Ws};

const ONE_ACCOUNT_CROWD: &[&str] = &["--join-rate", "100000", "--account-connections", "100000"];

/// 500 sockets join 50 rooms Redis has never held, 64 upgrades in flight at a time: each
/// is answered (history frame) quickly, and the gateway still serves cold joins afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_to_cold_rooms_is_answered_without_hanging() -> Result<()> {
    // One account opens every socket here: its join and socket limits are lifted.
    let stack =
        Stack::start_with(StackOptions { gateways: 1, gateway_args: ONE_ACCOUNT_CROWD, ..StackOptions::default() })
            .await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let join = |room: String| {
        let (base, token) = (base.clone(), ada.token.clone());
        async move {
            let started = Instant::now();
            let ws = tokio::time::timeout(Duration::from_secs(10), async {
                let mut ws = Ws::join(&base, &room, &token, "").await?;
                ws.expect("history").await?;
                anyhow::Ok(ws)
            })
            .await
            .with_context(|| format!("join to {room} hung for 10 s"))??;
            anyhow::Ok((started.elapsed(), ws))
        }
    };
    let results: Vec<Result<(Duration, Ws)>> =
        futures_util::stream::iter((0..500).map(|i| join(format!("cold-{}", i % 50))))
            .buffer_unordered(64)
            .collect()
            .await;
    let mut latencies = Vec::new();
    let mut sockets = Vec::new();
    for result in results {
        let (latency, ws) = result?;
        latencies.push(latency);
        sockets.push(ws);
    }
    latencies.sort();
    let (p50, max) = (latencies[latencies.len() / 2], latencies[latencies.len() - 1]);
    eprintln!("500 cold joins, 64 in flight: p50 {p50:?}, max {max:?}");
    assert!(max < Duration::from_secs(2), "every join is answered within 2 s (debug build); slowest {max:?}");

    // Nothing is wedged: a join to yet another cold room is still fast.
    let (latency, ws) = join("cold-after".into()).await?;
    assert!(latency < Duration::from_secs(1), "cold join after the burst took {latency:?}");
    drop(ws);
    drop(sockets);
    stack.shutdown().await
}

/// A join that cannot be served in time (here the hydrator accepts connections and never
/// answers) is refused with 503, a JSON error and Retry-After, at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_the_hydrator_cannot_serve_is_refused_at_the_deadline() -> Result<()> {
    // One account opens every socket here: its join and socket limits are lifted.
    let stack =
        Stack::start_with(StackOptions { gateways: 1, gateway_args: ONE_ACCOUNT_CROWD, ..StackOptions::default() })
            .await?;
    let ada = sign_up(&stack.url(0), "ada").await?;
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hole_addr = black_hole.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            held.push(socket);
        }
    });
    let gateway = huddle_e2e::start_gateway(&stack.env, hole_addr, &["--join-timeout-ms", "500"]).await?;
    let base = format!("http://{}", gateway.addr());

    let refusals = (0..20).map(|i| {
        let url = format!("{base}/ws/rooms/never-{i}?token={}", ada.token);
        async move {
            let started = Instant::now();
            let response = huddle_e2e::http().get(url).send().await?;
            anyhow::Ok((started.elapsed(), response))
        }
    });
    for refusal in futures_util::future::join_all(refusals).await {
        let (elapsed, response) = refusal?;
        assert_eq!(response.status(), 503);
        assert_eq!(
            response.headers().get("retry-after").map(|v| v.to_str().unwrap_or_default().to_owned()),
            Some("1".into())
        );
        let body: serde_json::Value = response.json().await?;
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(elapsed < Duration::from_secs(3), "refused after {elapsed:?}");
    }
    // Each call given up at the deadline is measured as Cancelled (an operator sees the
    // slow hydrator in huddle_grpc_client_seconds, not nothing).
    let metrics = huddle_e2e::http().get(format!("http://{}/metrics", gateway.ops_addr())).send().await?.text().await?;
    let series = r#"huddle_grpc_client_seconds_count{code="Cancelled",method="huddle.v1.Hydrator/HydrateRoom"} "#;
    let cancelled: u64 = metrics.lines().find_map(|l| l.strip_prefix(series)?.parse().ok()).unwrap_or(0);
    assert!(cancelled >= 20, "{cancelled} cancelled HydrateRoom calls measured");
    // Rooms Redis already holds are still served by that gateway.
    let mut ws = Ws::join(&stack.url(0), "warm", &ada.token, "").await?;
    ws.expect("history").await?;
    let mut same = Ws::join(&base, "warm", &ada.token, "").await?;
    same.expect("history").await?;
    gateway.stop().await;
    stack.shutdown().await
}
