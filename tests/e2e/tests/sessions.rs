//! A session ends everywhere at once: after logout its sockets on every gateway are
//! closed with 4001 and its token opens nothing; another session of the same user goes
//! on. A socket also closes with 4001 when its token expires.

use std::time::{Duration, Instant};

use anyhow::Result;
use huddle_e2e::{http, log_in, sign_up, Stack, StackOptions, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_closes_the_sessions_sockets_on_every_gateway() -> Result<()> {
    let stack = Stack::start(2).await?;
    let (first, second) = (stack.url(0), stack.url(1));
    let ada = sign_up(&first, "ada").await?;
    let other_session = log_in(&second, "ada").await?;
    let mut here = Ws::join(&first, "one", &ada.token, "").await?;
    here.expect("history").await?;
    let mut there = Ws::join(&second, "two", &ada.token, "").await?;
    there.expect("history").await?;
    let mut kept = Ws::join(&second, "one", &other_session.token, "").await?;
    kept.expect("history").await?;

    let logged_out = Instant::now();
    let response = http().post(format!("{first}/api/logout")).bearer_auth(&ada.token).send().await?;
    assert_eq!(response.status(), 204);
    assert_eq!(here.close_code().await?, Some(4001), "the socket on the gateway that logged out");
    assert_eq!(there.close_code().await?, Some(4001), "the socket on the other gateway");
    let took = logged_out.elapsed();
    assert!(took < Duration::from_secs(3), "sockets closed {took:?} after logout");

    // The token opens nothing any more; the user's other session goes on.
    assert!(Ws::join(&second, "one", &ada.token, "").await.is_err(), "a logged-out token opened a socket");
    assert_eq!(kept.say("still here", "k1").await?, 1);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_closes_when_its_session_expires() -> Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        gateway_args: &["--session-ttl-secs", "2"],
        ..StackOptions::default()
    })
    .await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut ws = Ws::join(&base, "short", &ada.token, "").await?;
    ws.expect("history").await?;
    let joined = Instant::now();
    assert_eq!(ws.close_code().await?, Some(4001));
    assert!(joined.elapsed() < Duration::from_secs(4), "closed {:?} after joining", joined.elapsed());
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_token_stays_dead_after_redis_loses_everything() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let other_session = log_in(&base, "ada").await?;
    let me = |token: String| {
        let base = base.clone();
        async move { anyhow::Ok(http().get(format!("{base}/api/me")).bearer_auth(token).send().await?.status()) }
    };
    assert_eq!(http().post(format!("{base}/api/logout")).bearer_auth(&ada.token).send().await?.status(), 204);
    assert_eq!(me(ada.token.clone()).await?, 401);

    // Redis loses every key (FLUSHALL, a restart without persistence): the revocation is
    // still in PostgreSQL.
    assert!(stack.env.wipe_redis().await? > 0);
    assert_eq!(me(ada.token.clone()).await?, 401, "a revoked token came back to life");
    assert!(Ws::join(&base, "one", &ada.token, "").await.is_err(), "a revoked token opened a socket");
    assert_eq!(me(other_session.token.clone()).await?, 200, "the other session is still valid");
    stack.shutdown().await
}
