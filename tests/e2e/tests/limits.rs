//! Limits hold per account, however many sockets it opens, and the room keeps working for
//! everyone else: sends, typing, history pages, joins, sockets per account, and sockets
//! per gateway, each refused with its documented code.

use anyhow::{Context, Result};
use huddle_e2e::{http, post_credentials as credentials, sign_up, Stack, StackOptions, Ws};
use serde_json::json;

/// The upgrade's refusal: (status, error code, Retry-After present).
async fn refused_join(base: &str, room: &str, token: &str) -> Result<(u16, String, bool)> {
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let response = http()
        .get(format!("{base}/ws/rooms/{room}"))
        .bearer_auth(token)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", key)
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body: serde_json::Value = response.json().await.context("refusal body is JSON")?;
    Ok((status, body["error"]["code"].as_str().unwrap_or_default().to_owned(), retry_after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_hold_per_account_across_its_sockets_and_spare_everyone_else() -> Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        gateway_args: &["--send-rate", "0.5", "--send-burst", "4", "--notice-rate", "1", "--history-rate", "1"],
        ..StackOptions::default()
    })
    .await?;
    let base = stack.url(0);
    let (ada, bob) = (sign_up(&base, "ada").await?, sign_up(&base, "bob").await?);
    let mut ada_one = Ws::join(&base, "lobby", &ada.token, "").await?;
    ada_one.expect("history").await?;
    let mut ada_two = Ws::join(&base, "lobby", &ada.token, "").await?;
    ada_two.expect("history").await?;
    let mut bob_ws = Ws::join(&base, "lobby", &bob.token, "").await?;
    bob_ws.expect("history").await?;

    // Four sends in a burst, spread over two sockets; the fifth is refused on either.
    for i in 0..4 {
        let ws = if i % 2 == 0 { &mut ada_one } else { &mut ada_two };
        assert_eq!(ws.send_for_answer("hi", &format!("a{i}")).await?["type"], "ack");
    }
    let refused = ada_two.send_for_answer("one too many", "a5").await?;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("rate_limited")));
    // Bob is not slowed by Ada.
    assert_eq!(bob_ws.send_for_answer("hello", "b1").await?["type"], "ack");

    // Typing notices and history pages have their own budgets (burst 4 at 1/s).
    let mut limited = 0;
    for _ in 0..8 {
        ada_one.send_json(&json!({ "type": "typing" })).await?;
    }
    for _ in 0..8 {
        ada_one.send_json(&json!({ "type": "history", "before_seq": 0, "limit": 1 })).await?;
    }
    let mut pages = 0;
    while pages + limited < 12 {
        let frame = ada_one.next().await?.context("socket closed")?;
        match (frame["type"].as_str(), frame["code"].as_str()) {
            (Some("error"), Some("rate_limited")) => limited += 1,
            (Some("history"), _) if frame["mode"] == "page" => pages += 1,
            _ => {}
        }
    }
    assert_eq!(pages, 4, "history pages in the burst");
    assert!(limited >= 8, "typing and history beyond the burst are refused ({limited})");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_are_capped_per_account_and_per_gateway() -> Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        gateway_args: &["--account-connections", "2", "--max-connections", "3", "--join-rate", "1000"],
        ..StackOptions::default()
    })
    .await?;
    let base = stack.url(0);
    let (ada, bob, cy) = (sign_up(&base, "ada").await?, sign_up(&base, "bob").await?, sign_up(&base, "cyd").await?);
    let mut first = Ws::join(&base, "lobby", &ada.token, "").await?;
    first.expect("history").await?;
    let mut second = Ws::join(&base, "lobby", &ada.token, "").await?;
    second.expect("history").await?;
    assert_eq!(refused_join(&base, "lobby", &ada.token).await?, (429, "too_many_connections".into(), false));

    let mut bobs = Ws::join(&base, "lobby", &bob.token, "").await?;
    bobs.expect("history").await?;
    assert_eq!(refused_join(&base, "lobby", &cy.token).await?, (503, "overloaded".into(), true), "the gateway is full");

    // A closed socket frees its places.
    first.leave().await?;
    let mut again = huddle_e2e::eventually(std::time::Duration::from_secs(5), || async {
        Ok(Ws::join(&base, "lobby", &ada.token, "").await.ok())
    })
    .await?;
    again.expect("history").await?;
    assert_eq!(again.say("back", "x1").await?, 1);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_too_fast_is_refused_with_retry_after() -> Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        gateway_args: &["--join-rate", "0.25"],
        ..StackOptions::default()
    })
    .await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    // The burst is one join at this rate.
    let mut ws = Ws::join(&base, "lobby", &ada.token, "").await?;
    ws.expect("history").await?;
    assert_eq!(refused_join(&base, "lobby", &ada.token).await?, (429, "rate_limited".into(), true));
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ups_and_logins_are_limited_per_client_address() -> Result<()> {
    // 3 at once, then one every 10 s; 127.0.0.1 is the one trusted proxy.
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        gateway_args: &["--auth-rate", "6", "--auth-burst", "3", "--trusted-proxies", "127.0.0.1"],
        ..StackOptions::default()
    })
    .await?;
    let base = stack.url(0);
    let client_a = Some("203.0.113.1");
    assert_eq!(credentials(&base, "register", "ada", "password123", client_a).await?.0, 201);
    assert_eq!(credentials(&base, "login", "ada", "password123", client_a).await?.0, 200);
    assert_eq!(credentials(&base, "login", "ada", "wrong-password", client_a).await?.1, "bad_credentials");
    let (status, code, retry_after) = credentials(&base, "login", "ada", "password123", client_a).await?;
    assert_eq!((status, code.as_str()), (429, "rate_limited"), "the address's burst is spent");
    let retry_after = retry_after.context("Retry-After")?;
    assert!((1..=10).contains(&retry_after), "the next token is at most 10 s away: {retry_after}");
    assert_eq!(credentials(&base, "register", "bob", "password123", client_a).await?.0, 429, "sign-ups share it");

    // Another client behind the same proxy has its own budget, and a client cannot claim
    // someone else's address by prepending it: only the hop the proxy added counts.
    assert_eq!(credentials(&base, "login", "ada", "password123", Some("203.0.113.2")).await?.0, 200);
    let spoofed = Some("203.0.113.9, 203.0.113.1");
    assert_eq!(credentials(&base, "login", "ada", "password123", spoofed).await?.0, 429);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_lock_the_accounts_logins_for_a_doubling_time() -> Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateways: 2,
        gateway_args: &["--login-free-failures", "2", "--login-max-lock-secs", "2"],
        ..StackOptions::default()
    })
    .await?;
    let (one, two) = (stack.url(0), stack.url(1));
    sign_up(&one, "ada").await?;
    sign_up(&one, "bob").await?;
    for _ in 0..2 {
        assert_eq!(credentials(&one, "login", "ada", "guess-guess", None).await?.1, "bad_credentials");
    }
    // The third failure locks for 1 s: even the right password waits, on every gateway,
    // whatever case the name is typed in.
    assert_eq!(credentials(&one, "login", "ada", "guess-guess", None).await?.1, "bad_credentials");
    let (status, code, retry_after) = credentials(&two, "login", "ADA", "password123", None).await?;
    assert_eq!((status, code.as_str(), retry_after), (429, "login_locked", Some(1)));
    assert_eq!(credentials(&two, "login", "bob", "password123", None).await?.0, 200, "other accounts log in");

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // The next failure doubles the lock, capped at the 2 s maximum.
    assert_eq!(credentials(&one, "login", "ada", "guess-guess", None).await?.1, "bad_credentials");
    assert_eq!(credentials(&one, "login", "ada", "password123", None).await?.2, Some(2));
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(credentials(&one, "login", "ada", "password123", None).await?.0, 200);
    // A success forgets the failures: two more are free again.
    for _ in 0..2 {
        assert_eq!(credentials(&one, "login", "ada", "guess-guess", None).await?.1, "bad_credentials");
    }
    assert_eq!(credentials(&one, "login", "ada", "password123", None).await?.0, 200);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usernames_are_unique_after_nfkc_ignoring_case_and_look_alikes() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let register = |name: &'static str| credentials(&base, "register", name, "password123", None);
    assert_eq!(register("paypal").await?.0, 201);
    for taken in ["PayPal", "paypa1", "ｐａｙｐａｌ", "PAYPAI"] {
        assert_eq!(register(taken).await?, (409, "username_taken".into(), None), "{taken} looks like paypal");
    }
    assert_eq!(register("ｍｏｄｅｒｎ").await?.0, 201, "full-width letters register as their NFKC form");
    assert_eq!(register("rnodern").await?.0, 409, "rn looks like m");
    assert_eq!(credentials(&base, "login", "modern", "password123", None).await?.0, 200);
    assert_eq!(credentials(&base, "login", "ＭＯＤＥＲＮ", "password123", None).await?.0, 200);
    assert_eq!(register("pаypal").await?.1, "bad_username", "a Cyrillic а is not a username letter");
    stack.shutdown().await
}
