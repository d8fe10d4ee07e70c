//! After Redis loses the revoked-session cache, a crowd of requests reloads it from
//! PostgreSQL once, not once per request. (Its own test binary: the reload counter is
//! process-wide, and every new test environment starts with an empty cache.)

use anyhow::Result;
use huddle_e2e::{http, log_in, metric, sign_up, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_after_a_redis_loss_reloads_revocations_once() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let other_session = log_in(&base, "ada").await?;
    assert_eq!(http().post(format!("{base}/api/logout")).bearer_auth(&ada.token).send().await?.status(), 204);
    // Connections opened beforehand, so the crowd's requests arrive together.
    let client = http();
    let warm_up = (0..100).map(|_| client.get(format!("{base}/healthz")).send());
    for response in futures_util::future::join_all(warm_up).await {
        response?;
    }
    assert!(stack.env.wipe_redis().await? > 0);

    let reloads = "huddle_gateway_revocation_reloads_total";
    let before = metric(&stack.ops_url(0), reloads).await?;
    let answers = futures_util::future::join_all((0..200).map(|i| {
        let token = if i % 2 == 0 { &ada.token } else { &other_session.token };
        let request = client.get(format!("{base}/api/me")).bearer_auth(token).send();
        async move { anyhow::Ok((i % 2, request.await?.status().as_u16())) }
    }))
    .await;
    for answer in answers {
        let (revoked, status) = answer?;
        assert_eq!(status, if revoked == 0 { 401 } else { 200 });
    }
    assert_eq!(metric(&stack.ops_url(0), reloads).await? - before, 1.0, "one reload for 200 requests");
    stack.shutdown().await
}
