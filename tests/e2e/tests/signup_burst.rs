//! A burst of sign-ups cannot take the gateway's memory: password hashing (argon2, ~19 MiB
//! each) runs under a fixed concurrency limit with a short queue; beyond it clients get
//! 503 `overloaded` with Retry-After, and every retried sign-up gets through. The
//! gateway runs as its own process, so its peak memory is the measure.

use std::time::Duration;

use anyhow::{bail, Result};
use huddle_e2e::{free_addr, http, memory_mib, wait_ready, Service, TestEnv};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_simultaneous_sign_ups_keep_memory_bounded_and_all_get_through() -> Result<()> {
    let env = TestEnv::new().await?;
    let addr = free_addr()?;
    let gateway = Service::spawn(
        "huddle-gateway",
        &env,
        "",
        &[("HUDDLE_GATEWAY_ADDR", addr.clone()), ("HUDDLE_GATEWAY_OPS_ADDR", free_addr()?)],
    )?;
    let base = format!("http://{addr}");
    wait_ready("gateway", &format!("{base}/readyz")).await?;
    let before = memory_mib(gateway.pid(), "VmRSS")?;
    let signups = (0..600).map(|i| {
        let base = base.clone();
        async move {
            let client = http();
            let mut refusals = 0u32;
            loop {
                let response = client
                    .post(format!("{base}/api/register"))
                    .json(&json!({ "username": format!("user{i}"), "password": "password123" }))
                    .send()
                    .await?;
                match response.status().as_u16() {
                    201 => return anyhow::Ok(refusals),
                    503 => {
                        let retry_after =
                            response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                        let body: serde_json::Value = response.json().await?;
                        if body["error"]["code"] != "overloaded" || retry_after.is_none() {
                            bail!("503 without the documented code and Retry-After: {body} {retry_after:?}");
                        }
                        refusals += 1;
                        if refusals > 60 {
                            bail!("user{i} refused 60 times");
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    other => bail!("user{i}: unexpected {other}: {}", response.text().await?),
                }
            }
        }
    });
    let results = futures_util::future::join_all(signups).await;
    let mut refused = 0;
    for result in results {
        refused += result?;
    }
    let peak = memory_mib(gateway.pid(), "VmHWM")?;
    eprintln!("600 sign-ups: {refused} refusals (503) on the way; gateway memory {before} MiB before, peak {peak} MiB");
    assert!(refused > 0, "the burst must have met the limit");
    assert!(peak < before + 150, "gateway peak memory {peak} MiB (from {before} MiB)");
    let db = env.db().await?;
    let users: i64 = db.query_one("SELECT count(*) FROM users", &[]).await?.get(0);
    assert_eq!(users, 600);
    gateway.terminate()?;
    env.cleanup().await
}
