//! No service runs with a secret anyone knows unless asked to in dev mode: the gateway's
//! session secret, the gRPC token between the services. Secrets are never printed.

use anyhow::Result;
use clap::Parser;
use huddle_e2e::{free_addr, TestEnv};
use huddle_gateway::{Settings, StartError};

fn settings(env: &TestEnv, extra: &[&str]) -> Settings {
    let mut args: Vec<String> =
        ["huddle-gateway", "--addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0", "--hydrator-url"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.push(format!("http://{}", free_addr().expect("a free port")));
    args.extend(env.store_args());
    args.extend(env.broker_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    Settings::parse_from(args)
}

#[tokio::test]
async fn the_gateway_refuses_a_missing_or_short_secret_outside_dev_mode() -> Result<()> {
    let env = TestEnv::new().await?;
    for (extra, expected) in
        [(&[][..], "HUDDLE_SESSION_SECRET is not set"), (&["--session-secret", "change-me"][..], "at least 32 bytes")]
    {
        match huddle_gateway::start(settings(&env, extra)).await {
            Err(StartError::Secret(reason)) => assert!(reason.contains(expected), "{reason}"),
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(gateway) => {
                gateway.stop().await;
                panic!("started with {extra:?}");
            }
        }
    }
    // Dev mode starts without one; a long secret starts anywhere.
    huddle_gateway::start(settings(&env, &["--dev"])).await?.stop().await;
    let secret = "a-long-enough-secret-0123456789abcdef";
    let token = env.grpc_token();
    let configured = settings(&env, &["--session-secret", secret, "--grpc-token", &token]);
    assert!(!format!("{configured:?}").contains(secret), "Settings' Debug shows the secret");
    assert!(!format!("{configured:?}").contains(&token), "Settings' Debug shows the gRPC token");
    huddle_gateway::start(configured).await?.stop().await;
    env.cleanup().await
}

#[tokio::test]
async fn workers_refuse_to_serve_grpc_without_a_token_outside_dev_mode() -> Result<()> {
    let env = TestEnv::new().await?;
    let mut args: Vec<String> = ["huddle-persister", "--grpc-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(env.store_args());
    args.extend(env.broker_args());
    for (extra, expected) in
        [(&[][..], "HUDDLE_GRPC_TOKEN is not set"), (&["--grpc-token", "short"][..], "at least 32")]
    {
        let mut with = args.clone();
        with.extend(extra.iter().map(|s| s.to_string()));
        match huddle_persister::start(huddle_persister::Settings::parse_from(with)).await {
            Err(huddle_persister::StartError::Trust(reason)) => assert!(reason.contains(expected), "{reason}"),
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(persister) => {
                persister.stop().await;
                panic!("served gRPC with {extra:?}");
            }
        }
    }
    env.cleanup().await
}
