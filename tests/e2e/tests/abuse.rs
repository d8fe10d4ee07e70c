//! The abuse suite: the three real binaries, with the gateway's default limits, attacked
//! the ways a hostile internet would while one polite user keeps chatting. Afterwards the
//! services answer, the gateway's memory is back near where it started, the polite user
//! never lost a message, and every acked message is in PostgreSQL, gap-free.
//!
//! The gateway trusts 127.0.0.1 as its proxy, so each request can come from its own
//! client address through `X-Forwarded-For`, as behind an ingress.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::future::join_all;
use huddle_e2e::{eventually, free_addr, http, memory_mib, post_credentials, wait_ready, Service, TestEnv, User, Ws};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::{
    coding::{Data, OpCode},
    Frame,
};

/// POSTs credentials as a client at `address`: (status, error code).
async fn credentials(base: &str, what: &str, name: &str, address: &str) -> Result<(u16, String)> {
    let (status, code, _) = post_credentials(base, what, name, "password123", Some(address)).await?;
    Ok((status, code))
}

/// Signs `name` up and in as a client at `address`.
async fn account(base: &str, name: &str, address: &str) -> Result<User> {
    ensure!(credentials(base, "register", name, address).await?.0 == 201, "register {name}");
    let login: Value = http()
        .post(format!("{base}/api/login"))
        .header("X-Forwarded-For", address)
        .json(&json!({ "username": name, "password": "password123" }))
        .send()
        .await?
        .json()
        .await?;
    Ok(User {
        id: login["user"]["id"].as_i64().context("user id")?,
        name: name.to_owned(),
        token: login["token"].as_str().context("token")?.to_owned(),
    })
}

/// The status of a socket upgrade that is refused, or 101.
async fn upgrade_status(base: &str, room: &str, token: &str) -> Result<u16> {
    Ok(match Ws::join(base, room, token, "").await {
        Ok(ws) => {
            ws.leave().await?;
            101
        }
        Err(error) => match error.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            Some(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
            _ => return Err(error),
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_survive_abuse_with_bounded_memory_and_nothing_acked_lost() -> Result<()> {
    let env = TestEnv::new().await?;
    let (hydrator_grpc, hydrator_ops) = (free_addr()?, free_addr()?);
    let (persister_grpc, persister_ops) = (free_addr()?, free_addr()?);
    let (gateway_addr, gateway_ops) = (free_addr()?, free_addr()?);
    let hydrator = Service::spawn(
        "huddle-hydrator",
        &env,
        "",
        &[("HUDDLE_HYDRATOR_GRPC_ADDR", hydrator_grpc.clone()), ("HUDDLE_HYDRATOR_OPS_ADDR", hydrator_ops.clone())],
    )?;
    let persister = Service::spawn(
        "huddle-persister",
        &env,
        "",
        &[("HUDDLE_PERSISTER_GRPC_ADDR", persister_grpc), ("HUDDLE_PERSISTER_OPS_ADDR", persister_ops.clone())],
    )?;
    let gateway = Service::spawn(
        "huddle-gateway",
        &env,
        "",
        &[
            ("HUDDLE_GATEWAY_ADDR", gateway_addr.clone()),
            ("HUDDLE_GATEWAY_OPS_ADDR", gateway_ops.clone()),
            ("HUDDLE_HYDRATOR_URL", format!("http://{hydrator_grpc}")),
            ("HUDDLE_TRUSTED_PROXIES", "127.0.0.1".into()),
            // The defaults, which the harness lifts for other tests.
            ("HUDDLE_AUTH_RATE", "30".into()),
            ("HUDDLE_AUTH_BURST", "10".into()),
        ],
    )?;
    let base = format!("http://{gateway_addr}");
    let readyz = [
        format!("http://{hydrator_ops}/readyz"),
        format!("http://{persister_ops}/readyz"),
        format!("http://{gateway_ops}/readyz"),
    ];
    for url in &readyz {
        wait_ready(url, url).await?;
    }

    // The polite user chats in "town" all along, one message every 100 ms.
    let ada = account(&base, "ada", "198.51.100.1").await?;
    let mallory = account(&base, "mallory", "198.51.100.2").await?;
    let mut ada_ws = Ws::join(&base, "town", &ada.token, "").await?;
    ada_ws.expect("history").await?;
    let warm_up = ada_ws.say("warming up", "warm").await?;
    let before = memory_mib(gateway.pid(), "VmRSS")?;
    let stop = Arc::new(AtomicBool::new(false));
    let polite = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut acked = vec![];
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let answer = ada_ws.send_for_answer(&format!("polite {n}"), &format!("ada-{n}")).await?;
                ensure!(answer["type"] == "ack", "the polite user was refused: {answer}");
                acked.push(answer["seq"].as_u64().context("seq")?);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ada_ws.leave().await?;
            anyhow::Ok(acked)
        }
    });

    // 1. A burst of 1,000 sign-ups and 1,000 logins from one address: its burst of 10
    //    gets through, everything else is 429 rate_limited, with no hashing spent.
    let started = Instant::now();
    let burst = join_all((0..1000).map(|i| {
        let base = &base;
        async move { credentials(base, "register", &format!("burst{i}"), "203.0.113.7").await }
    }))
    .await;
    let logins = join_all((0..1000).map(|_| credentials(&base, "login", "mallory", "203.0.113.7"))).await;
    let mut statuses = std::collections::BTreeMap::<(u16, String), usize>::new();
    for answer in burst.into_iter().chain(logins) {
        *statuses.entry(answer?).or_default() += 1;
    }
    eprintln!("2,000 sign-ups and logins from one address in {:?}: {statuses:?}", started.elapsed());
    ensure!(statuses.get(&(201, String::new())).copied().unwrap_or(0) <= 11, "{statuses:?}");
    ensure!(statuses.get(&(429, "rate_limited".into())).copied().unwrap_or(0) >= 1989, "{statuses:?}");

    // 2. 1,000 sign-ups from 1,000 addresses at once: hashing is bounded, the rest get
    //    503 overloaded; nothing else.
    let started = Instant::now();
    let crowd = join_all((0..1000).map(|i| {
        let base = &base;
        async move {
            credentials(
                base,
                "register",
                &format!("crowd{i}"),
                &format!("10.{}.{}.{}", i / 65536, i / 256 % 256, i % 256),
            )
            .await
        }
    }))
    .await;
    let mut crowd_statuses = std::collections::BTreeMap::<(u16, String), usize>::new();
    for answer in crowd {
        *crowd_statuses.entry(answer?).or_default() += 1;
    }
    let peak = memory_mib(gateway.pid(), "VmHWM")?;
    eprintln!("1,000 sign-ups from 1,000 addresses in {:?}: {crowd_statuses:?}", started.elapsed());
    ensure!(
        crowd_statuses.keys().all(|k| *k == (201, String::new()) || *k == (503, "overloaded".into())),
        "{crowd_statuses:?}"
    );

    // 3. A send flood from one socket, then from 20 sockets of the same account: one
    //    budget (burst 50, 20/s) for all of them; the rest is refused, not stored.
    let mut floods = vec![Ws::join(&base, "town", &mallory.token, "").await?];
    floods[0].expect("history").await?;
    let mut refused_sockets = 0;
    for _ in 0..25 {
        match Ws::join(&base, "town", &mallory.token, "").await {
            Ok(mut ws) => {
                ws.expect("history").await?;
                floods.push(ws);
            }
            Err(_) => refused_sockets += 1,
        }
    }
    ensure!(floods.len() <= 20 && refused_sockets >= 6, "{} sockets open, {refused_sockets} refused", floods.len());
    let flood_started = Instant::now();
    let answers = join_all(floods.iter_mut().enumerate().map(|(s, ws)| async move {
        for i in 0..100 {
            ws.send_json(&json!({ "type": "send", "body": "flood", "client_id": format!("m{s}-{i}") })).await?;
        }
        let mut answers = vec![];
        while answers.len() < 100 {
            let frame = ws.next().await?.context("flood socket closed")?;
            if frame["type"] == "ack" || frame["type"] == "error" {
                answers.push(frame);
            }
        }
        anyhow::Ok(answers)
    }))
    .await;
    let flood_secs = flood_started.elapsed().as_secs_f64();
    let mut mallory_acked = vec![];
    let mut rate_limited = 0;
    for answer in answers.into_iter().flat_map(|a| a.into_iter().flatten()) {
        match (answer["type"].as_str(), answer["code"].as_str()) {
            (Some("ack"), _) => mallory_acked.push(answer["seq"].as_u64().context("seq")?),
            (Some("error"), Some("rate_limited")) => rate_limited += 1,
            _ => bail!("unexpected answer to a flood: {answer}"),
        }
    }
    eprintln!(
        "flood of {} sends over {} sockets in {flood_secs:.1} s: {} acked, {rate_limited} rate_limited",
        floods.len() * 100,
        floods.len(),
        mallory_acked.len()
    );
    ensure!(mallory_acked.len() as f64 <= 50.0 + 20.0 * flood_secs + 5.0, "acks beyond the account's budget");

    // 4. Rapid connect/disconnect: 2,000 upgrades in a row from one account (the
    //    sockets above still open) are refused with 429 at once; 300 silent TCP
    //    connections and a slowloris are dropped by the request-head timeout.
    drop(floods);
    let started = Instant::now();
    let mut upgrades = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..2000 {
        *upgrades.entry(upgrade_status(&base, "town", &mallory.token).await?).or_default() += 1;
    }
    eprintln!("2,000 connect/disconnect cycles in {:?}: {upgrades:?}", started.elapsed());
    ensure!(upgrades.keys().all(|s| *s == 101 || *s == 429), "{upgrades:?}");
    let mut silent = vec![];
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(&gateway_addr).await?);
    }
    let mut slowloris = tokio::net::TcpStream::connect(&gateway_addr).await?;
    slowloris.write_all(b"GET /api/me HTTP/1.1\r\nHost: x\r\n").await?;
    let dropped = join_all(silent.iter_mut().chain([&mut slowloris]).map(|stream| async move {
        let mut buf = [0u8; 512];
        // The server answers 408 or just closes: either way the stream ends.
        loop {
            match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }))
    .await;
    ensure!(dropped.iter().all(|d| *d), "{} idle connections were kept", dropped.iter().filter(|d| !**d).count());

    // 5. Bad frames: each gets its error event or close code; the gateway goes on.
    let mut ws = Ws::join(&base, "lab", &mallory.token, "").await?;
    ws.expect("history").await?;
    ws.send_raw(&"[".repeat(50_000)).await?;
    ensure!(ws.expect("error").await?["code"] == "bad_json");
    ws.send_raw(&format!("{}{}", "{\"a\":".repeat(10_000), "1}")).await?;
    ensure!(ws.expect("error").await?["code"] == "bad_json");
    ws.send_binary(&[0, 159, 146, 150]).await?;
    ensure!(ws.expect("error").await?["code"] == "binary_unsupported");
    ws.send_json(&json!({ "type": "send", "body": "nul \u{0} inside", "client_id": "nul" })).await?;
    ensure!(ws.expect("error").await?["code"] == "bad_body");
    ws.send_raw(&"x".repeat(70 * 1024)).await?;
    ensure!(ws.close_code().await? == Some(1009), "an oversized frame closes with 1009");
    let mut ws = Ws::join(&base, "lab", &mallory.token, "").await?;
    ws.expect("history").await?;
    ws.send_frame(Frame::message(vec![b'{', 0xc3, 0x28, b'}'], OpCode::Data(Data::Text), true)).await?;
    ensure!(ws.close_code().await? == Some(1007), "invalid UTF-8 closes with 1007");

    // 6. Forged, expired and revoked tokens: 401 on REST and on the upgrade.
    let forged = {
        let (payload, _) = mallory.token.split_once('.').context("token format")?;
        format!("{payload}.AAAA")
    };
    let expired = huddle_gateway::auth::TokenSigner::new(&env.session_secret()).sign(&huddle_gateway::auth::Claims {
        uid: mallory.id,
        name: "mallory".into(),
        exp: 1_000_000,
        jti: "expired-session".into(),
    });
    let revoked = account(&base, "trudy", "198.51.100.3").await?.token;
    let out = http().post(format!("{base}/api/logout")).bearer_auth(&revoked).send().await?;
    ensure!(out.status() == 204);
    for (token, code) in [(&forged, "unauthorized"), (&expired, "session_expired"), (&revoked, "session_expired")] {
        let me = http().get(format!("{base}/api/me")).bearer_auth(token).send().await?;
        ensure!(me.status() == 401, "REST with a {code} token: {}", me.status());
        ensure!(me.json::<Value>().await?["error"]["code"] == code);
        ensure!(upgrade_status(&base, "town", token).await? == 401, "upgrade with a {code} token");
    }

    // Afterwards: the polite user was never refused, everyone answers, memory is back.
    stop.store(true, Ordering::Relaxed);
    let ada_acked = polite.await??;
    ensure!(ada_acked.len() >= 10, "the polite user sent {} messages", ada_acked.len());
    for url in &readyz {
        ensure!(http().get(url).send().await?.status() == 200, "{url} not ready after the abuse");
    }
    ensure!(credentials(&base, "register", "newcomer", "198.51.100.9").await?.0 == 201);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = memory_mib(gateway.pid(), "VmRSS")?;
    eprintln!("gateway memory: {before} MiB before, peak {peak} MiB, {after} MiB after");
    ensure!(peak < before + 200, "gateway peak {peak} MiB from {before} MiB");
    ensure!(after < before + 100, "gateway memory {after} MiB after the abuse, {before} MiB before");

    // Every acked message of the room, and nothing else, is in PostgreSQL: seqs 1..=n.
    let mut acked: BTreeSet<u64> = ada_acked.into_iter().chain(mallory_acked).collect();
    acked.insert(warm_up);
    let expected: BTreeSet<u64> = (1..=*acked.last().context("acks")?).collect();
    ensure!(acked == expected, "acked seqs are not gap-free: {} of {}", acked.len(), expected.len());
    let db = env.db().await?;
    let stored = eventually(Duration::from_secs(30), || async {
        let rows = db
            .query("SELECT m.seq FROM messages m JOIN rooms r ON r.id = m.room_id WHERE r.name = 'town'", &[])
            .await?;
        let stored: BTreeSet<u64> = rows.iter().map(|row| row.get::<_, i64>(0) as u64).collect();
        Ok((stored.len() >= acked.len()).then_some(stored))
    })
    .await?;
    ensure!(stored == acked, "PostgreSQL holds {} messages, {} were acked", stored.len(), acked.len());
    gateway.terminate()?;
    persister.terminate()?;
    hydrator.terminate()?;
    env.cleanup().await
}
