//! The web client in headless Chromium (tests/browser/*.test.mjs, Playwright, run by
//! `node --test`) against an in-process stack. Missing Chromium, Node, playwright-core
//! or axe-core is a failure with the command that installs them, never a skip.
//!
//! Before node starts, a room of 1,000 messages is seeded through a second gateway (the
//! harness's lifted rates). The browsers' gateway sends at most 1 message a second per
//! account with bursts of 8, so a page that sends faster sees a real `rate_limited`
//! refusal. The node test stops and restarts that gateway, on the same port, through a
//! small control endpoint (`HUDDLE_CONTROL`: `POST /gateway/stop`, `POST /gateway/start`).
//! Screenshots go to `HUDDLE_BROWSER_ARTIFACTS` (default `<target dir>/browser-artifacts`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use huddle_e2e::{sign_up, start_gateway, Stack, StackOptions, Ws};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// The browsers' gateway: a send rate low enough for a page to run into.
const BROWSER_GATEWAY: &[&str] = &["--send-rate", "1", "--send-burst", "8"];
/// The seeded room and how many messages it holds.
const BIG_ROOM: &str = "archive";
const BIG_COUNT: u64 = 1000;

type Control = (String, oneshot::Sender<Result<(), String>>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_works_in_a_real_browser() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let browser_dir = root.join("tests/browser");
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    for needed in ["node_modules/playwright-core", "node_modules/axe-core/axe.min.js"] {
        if !PathBuf::from(&chromium).exists() || !browser_dir.join(needed).exists() {
            bail!("Chromium ({chromium}) or {needed} is missing: run scripts/browser-deps.sh (scripts/test does)");
        }
    }
    let artifacts = match std::env::var_os("HUDDLE_BROWSER_ARTIFACTS") {
        Some(dir) => PathBuf::from(dir),
        None => target_dir()?.join("browser-artifacts"),
    };
    std::fs::create_dir_all(&artifacts)?;

    let mut stack =
        Stack::start_with(StackOptions { gateways: 1, gateway_args: BROWSER_GATEWAY, ..StackOptions::default() })
            .await?;
    let started = std::time::Instant::now();
    seed(&stack, BIG_ROOM, BIG_COUNT).await?;
    eprintln!("seeded {BIG_COUNT} messages into #{BIG_ROOM} in {:?}", started.elapsed());
    let addr = stack.gateways[0].addr().to_string();
    let (control, mut commands) = control_server().await?;

    let url = stack.url(0);
    let dir = browser_dir.clone();
    let artifacts_env = artifacts.clone();
    // HUDDLE_BROWSER_ONLY=<pattern> runs only the tests whose names match (while working on one).
    let only = std::env::var("HUDDLE_BROWSER_ONLY").ok().map(|pattern| format!("--test-name-pattern={pattern}"));
    let mut node = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "--test-concurrency=1"])
            .args(only)
            .args(["core.test.mjs", "chat.test.mjs"])
            .current_dir(&dir)
            .env("HUDDLE_URL", url)
            .env("HUDDLE_CONTROL", control)
            .env("HUDDLE_BIG_ROOM", BIG_ROOM)
            .env("HUDDLE_BIG_COUNT", BIG_COUNT.to_string())
            .env("HUDDLE_BROWSER_ARTIFACTS", artifacts_env)
            .env("CHROMIUM_PATH", chromium)
            .output()
    });
    let output = loop {
        tokio::select! {
            output = &mut node => break output??,
            Some((path, reply)) = commands.recv() => {
                let answer = match path.as_str() {
                    "/gateway/stop" => match stack.gateways.pop() {
                        Some(gateway) => {
                            gateway.stop().await;
                            Ok(())
                        }
                        None => Err("the gateway is not running".to_owned()),
                    },
                    "/gateway/start" if stack.gateways.is_empty() => {
                        let mut args = BROWSER_GATEWAY.to_vec();
                        args.extend(["--addr", addr.as_str()]);
                        match start_gateway(&stack.env, stack.hydrator.grpc_addr(), &args).await {
                            Ok(gateway) => {
                                stack.gateways.push(gateway);
                                Ok(())
                            }
                            Err(error) => Err(format!("{error:#}")),
                        }
                    }
                    other => Err(format!("no such control command: {other}")),
                };
                let _ = reply.send(answer);
            }
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("browser test failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    }
    eprintln!("{stdout}\nscreenshots in {}", artifacts.display());
    stack.shutdown().await
}

/// `count` messages in `room` from one account, through a gateway of its own with the
/// harness's lifted rates (stopped afterwards): seq `i` has the body `message i of count`.
async fn seed(stack: &Stack, room: &str, count: u64) -> Result<()> {
    let seeder = start_gateway(&stack.env, stack.hydrator.grpc_addr(), &[]).await?;
    let base = format!("http://{}", seeder.addr());
    let user = sign_up(&base, "archivist").await?;
    let mut ws = Ws::join(&base, room, &user.token, "").await?;
    ws.expect("history").await?;
    let all: Vec<u64> = (1..=count).collect();
    for batch in all.chunks(100) {
        for i in batch {
            ws.send_json(
                &json!({ "type": "send", "body": format!("message {i} of {count}"), "client_id": format!("seed-{i}") }),
            )
            .await?;
        }
        let mut acked = 0;
        while acked < batch.len() {
            let frame = ws.next().await?.context("the seeding socket closed")?;
            match frame["type"].as_str() {
                Some("ack") => acked += 1,
                Some("error") => bail!("seeding refused: {frame}"),
                _ => {}
            }
        }
    }
    ws.leave().await?;
    seeder.stop().await;
    Ok(())
}

/// A tiny HTTP endpoint for the node test: each request's path is handed to the test
/// (with a reply channel) and answered 200 once done, 500 if it failed.
async fn control_server() -> Result<(String, mpsc::Receiver<Control>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (commands, received) = mpsc::channel::<Control>(4);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let commands = commands.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&request);
                let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
                let (reply, answer) = oneshot::channel();
                let (status, detail) = match commands.send((path, reply)).await {
                    Ok(()) => match answer.await {
                        Ok(Ok(())) => ("200 OK", String::new()),
                        Ok(Err(error)) => ("500 Internal Server Error", error),
                        Err(_) => ("500 Internal Server Error", "no answer".to_owned()),
                    },
                    Err(_) => ("503 Service Unavailable", "the test is over".to_owned()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{detail}",
                    detail.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok((url, received))
}

/// The cargo target directory this test was built into.
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // <target>/<profile>/deps/browser-<hash>
    exe.ancestors().nth(3).map(PathBuf::from).context("the test binary is not in a target directory")
}
