//! Bad input gets a documented error and breaks nothing.

use anyhow::Result;
use huddle_e2e::{http, sign_up, Stack, StackOptions, Ws};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_events_and_the_connection_keeps_working() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut a = Ws::join(&base, "rough", &ada.token, "").await?;
    a.expect("history").await?;

    let cases: Vec<(String, &str)> = vec![
        ("not json at all".into(), "bad_json"),
        ("[1,2,3]".into(), "bad_json"),
        (json!({"type": "dance"}).to_string(), "unknown_type"),
        (json!({"type": "send"}).to_string(), "bad_frame"),
        (json!({"type": "send", "body": 42}).to_string(), "bad_frame"),
        (json!({"type": "send", "body": "", "client_id": "e1"}).to_string(), "empty_body"),
        (json!({"type": "send", "body": "   \n ", "client_id": "e2"}).to_string(), "empty_body"),
        (json!({"type": "send", "body": "x".repeat(4001), "client_id": "e3"}).to_string(), "body_too_long"),
        (json!({"type": "send", "body": "hi", "client_id": "has space"}).to_string(), "bad_client_id"),
        (json!({"type": "send", "body": "nul \u{0} inside", "client_id": "e4"}).to_string(), "bad_body"),
        (r#"{"type": "send", "body": "escaped \u0000 nul", "client_id": "e5"}"#.into(), "bad_body"),
        (r#"{"type": "send", "body": "lone \ud800 surrogate", "client_id": "e6"}"#.into(), "bad_json"),
    ];
    for (frame, code) in &cases {
        a.send_raw(frame).await?;
        let error = a.expect("error").await?;
        assert_eq!(error["code"], *code, "frame {frame}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let error = {
        a.send_json(&json!({"type": "send", "body": "", "client_id": "e9"})).await?;
        a.expect("error").await?
    };
    assert_eq!(error["client_id"], "e9");
    // A refused client_id is not echoed back (it may be anything, e.g. 10 KB of it).
    a.send_json(&json!({"type": "send", "body": "hi", "client_id": "x".repeat(10_000)})).await?;
    let refused = a.expect("error").await?;
    assert_eq!((refused["code"].as_str(), refused.get("client_id")), (Some("bad_client_id"), None));

    // History page parameters out of range are 400 bad_request with a JSON body.
    for query in ["limit=4294967296", "limit=-1", "before=x", "before=18446744073709551616"] {
        let response =
            http().get(format!("{base}/api/rooms/rough/messages?{query}")).bearer_auth(&ada.token).send().await?;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(response.json::<Value>().await?["error"]["code"], "bad_request", "{query}");
    }

    a.send_binary(b"\x00\x01").await?;
    assert_eq!(a.expect("error").await?["code"], "binary_unsupported");

    // Nothing was stored, and the connection and room still work.
    assert_eq!(a.say("still here", "ok-1").await?, 1);
    a.send_json(&json!({"type": "ping"})).await?;
    a.expect("pong").await?;

    // A frame over 64 KiB closes the socket with 1009; the room keeps working.
    a.send_raw(&"x".repeat(70 * 1024)).await?;
    assert_eq!(a.close_code().await?, Some(1009));
    let mut again = Ws::join(&base, "rough", &ada.token, "").await?;
    let history = again.expect("history").await?;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(again.say("after the big frame", "ok-2").await?, 2);
    again.leave().await?;
    stack.shutdown().await
}

/// A masked text frame header announcing `length` bytes (64-bit length form).
fn frame_header(length: u64) -> Vec<u8> {
    [&[0x81u8, 0x80 | 127][..], &length.to_be_bytes(), &[1, 2, 3, 4]].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_announcing_more_than_64_kib_is_refused_at_its_header() -> Result<()> {
    // Found by an outside audit: the frame was buffered until it was complete, so a
    // header announcing 2^40 bytes followed by a stream of bytes took the gateway's
    // memory (1.5 GB from three sockets in under a second), and the header alone held
    // the socket until the heartbeat.
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut ws = Ws::join(&base, "huge", &ada.token, "").await?;
    ws.expect("history").await?;
    let started = std::time::Instant::now();
    ws.write_bytes(&frame_header(1 << 40)).await?;
    // A first megabyte of the payload: it is never buffered whole, but is not read either.
    let _ = ws.write_bytes(&vec![b'x'; 1 << 20]).await;
    assert_eq!(ws.close_code().await?, Some(1009), "closed as too large");
    assert!(started.elapsed() < Duration::from_secs(3), "at its header, not later: {:?}", started.elapsed());

    // A 64-bit length with its most significant bit set is a framing error (RFC 6455 §5.2).
    let mut ws = Ws::join(&base, "huge", &ada.token, "").await?;
    ws.expect("history").await?;
    ws.write_bytes(&frame_header(u64::MAX)).await?;
    assert_eq!(ws.close_code().await?, Some(1002));

    // The room still works.
    let mut ws = Ws::join(&base, "huge", &ada.token, "").await?;
    ws.expect("history").await?;
    assert_eq!(ws.say("still here", "ok-1").await?, 1);
    ws.leave().await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_are_json_http_errors() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let client = http();
    let upgrade = |path: String, token: Option<String>| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let mut request = client
                .get(format!("{base}{path}"))
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await?;
            anyhow::Ok((status, body["error"]["code"].as_str().unwrap_or_default().to_owned()))
        }
    };
    assert_eq!(upgrade("/ws/rooms/lobby".into(), None).await?, (401, "unauthorized".into()));
    assert_eq!(upgrade("/ws/rooms/lobby".into(), Some("garbage".into())).await?, (401, "unauthorized".into()));
    assert_eq!(upgrade("/ws/rooms/Bad%20Room".into(), Some(ada.token.clone())).await?, (400, "bad_room".into()));
    assert_eq!(
        upgrade("/ws/rooms/lobby?since=abc".into(), Some(ada.token.clone())).await?,
        (400, "bad_request".into())
    );

    // An expired token: signed with the right secret, but in the past.
    let signer = huddle_gateway::auth::TokenSigner::new(&stack.env.session_secret());
    let expired =
        signer.sign(&huddle_gateway::auth::Claims { uid: ada.id, name: "ada".into(), exp: 1, jti: "old".into() });
    assert_eq!(upgrade("/ws/rooms/lobby".into(), Some(expired)).await?, (401, "session_expired".into()));

    // A foreign Origin is refused.
    let response = client
        .get(format!("{base}/ws/rooms/lobby"))
        .bearer_auth(&ada.token)
        .header("origin", "http://evil.example")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 403);

    // A valid join still works after all that.
    let mut a = Ws::join(&base, "lobby", &ada.token, "").await?;
    a.expect("history").await?;
    a.leave().await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_register_login_me_logout() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let client = http();
    let post = |path: &str, body: Value| client.post(format!("{base}{path}")).json(&body).send();

    let created = post("/api/register", json!({"username": "Ada_L", "password": "password123"})).await?;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await?;
    assert_eq!(created["user"]["username"], "Ada_L");

    let taken = post("/api/register", json!({"username": "ada_l", "password": "password123"})).await?;
    assert_eq!(taken.status(), 409);
    assert_eq!(taken.json::<Value>().await?["error"]["code"], "username_taken");
    let bad = post("/api/register", json!({"username": "a", "password": "password123"})).await?;
    assert_eq!(
        (bad.status().as_u16(), bad.json::<Value>().await?["error"]["code"].clone()),
        (400, json!("bad_username"))
    );
    let short = post("/api/register", json!({"username": "bob", "password": "short"})).await?;
    assert_eq!(short.json::<Value>().await?["error"]["code"], "bad_password");
    let garbage = client
        .post(format!("{base}/api/register"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await?;
    assert_eq!(
        (garbage.status().as_u16(), garbage.json::<Value>().await?["error"]["code"].clone()),
        (400, json!("bad_request"))
    );
    // Bodies are capped at 16 KiB: a well-formed one just over it is refused, one just
    // under it is read (and judged on its fields).
    let padded = |bytes: usize| json!({"username": "bob", "password": "password123", "pad": "x".repeat(bytes)});
    let over = post("/api/login", padded(16 * 1024)).await?;
    assert_eq!(
        (over.status().as_u16(), over.json::<Value>().await?["error"]["code"].clone()),
        (400, json!("bad_request"))
    );
    let under = post("/api/login", padded(16 * 1024 - 100)).await?;
    assert_eq!(under.json::<Value>().await?["error"]["code"], "bad_credentials");

    let wrong = post("/api/login", json!({"username": "Ada_L", "password": "wrong-password"})).await?;
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.json::<Value>().await?["error"]["code"], "bad_credentials");
    let nobody = post("/api/login", json!({"username": "nobody", "password": "password123"})).await?;
    assert_eq!(
        (nobody.status().as_u16(), nobody.json::<Value>().await?["error"]["code"].clone()),
        (401, json!("bad_credentials"))
    );
    let login = post("/api/login", json!({"username": "ADA_L", "password": "password123"})).await?;
    assert_eq!(login.status(), 200);
    let cookie = login.headers().get("set-cookie").and_then(|c| c.to_str().ok()).unwrap_or_default().to_owned();
    assert!(cookie.starts_with("huddle_session=") && cookie.contains("HttpOnly"), "{cookie}");
    let login: Value = login.json().await?;
    let token = login["token"].as_str().unwrap().to_owned();
    assert_eq!(login["user"]["username"], "Ada_L");

    let me = client.get(format!("{base}/api/me")).bearer_auth(&token).send().await?;
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await?["id"], created["user"]["id"]);
    let session_cookie = cookie.split(';').next().unwrap().to_owned();
    let by_cookie = client.get(format!("{base}/api/me")).header("cookie", &session_cookie).send().await?;
    assert_eq!(by_cookie.status(), 200);
    assert_eq!(client.get(format!("{base}/api/me")).send().await?.status(), 401);

    let out = client.post(format!("{base}/api/logout")).bearer_auth(&token).send().await?;
    assert_eq!(out.status(), 204);
    let after = client.get(format!("{base}/api/me")).bearer_auth(&token).send().await?;
    assert_eq!(after.status(), 401);
    assert_eq!(after.json::<Value>().await?["error"]["code"], "session_expired");

    let missing = client.get(format!("{base}/api/nope")).send().await?;
    assert_eq!(
        (missing.status().as_u16(), missing.json::<Value>().await?["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    stack.shutdown().await
}

/// RFC 6455: a Close is answered with a Close (the client's own code), and the server
/// ends the TCP connection at once; bad frames close with the documented codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_closing_handshake_is_answered_at_once_and_bad_frames_get_their_close_codes() -> Result<()> {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    };
    // One account opens 40 sockets in a row here: its join rate is lifted.
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        gateway_args: &["--join-rate", "1000"],
        ..StackOptions::default()
    })
    .await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let started = std::time::Instant::now();
    for code in [1000u16, 1001, 4000, 3999] {
        for _ in 0..10 {
            let mut ws = Ws::join(&base, "closing", &ada.token, "").await?;
            ws.expect("history").await?;
            let (answer, took) = ws.close_with(code).await?;
            assert_eq!(answer, Some(code), "the server echoes the client's close code");
            assert!(took < std::time::Duration::from_millis(500), "closing handshake took {took:?}");
        }
    }
    eprintln!("40 join/close cycles in {:?}", started.elapsed());

    // A code that may not be sent on the wire is a protocol error: 1002.
    let ws = Ws::join(&base, "closing", &ada.token, "").await?;
    let (answer, _) = ws.close_with(1005).await?;
    assert_eq!(answer, Some(1002));

    // A Close whose reason is not UTF-8 (masked with key 0): 1002, as docs/PROTOCOL.md says.
    let mut ws = Ws::join(&base, "closing", &ada.token, "").await?;
    ws.expect("history").await?;
    ws.write_bytes(&[0x88, 0x84, 0, 0, 0, 0, 0x03, 0xe8, 0xff, 0xfe]).await?;
    assert_eq!(ws.close_code().await?, Some(1002));

    // A text frame that is not UTF-8: 1007.
    let mut ws = Ws::join(&base, "closing", &ada.token, "").await?;
    ws.expect("history").await?;
    ws.send_frame(Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true)).await?;
    assert_eq!(ws.close_code().await?, Some(1007));

    // Broken framing (a reserved bit set) fails the connection with 1002 and ends it,
    // and costs the gateway nothing afterwards: more of them than it has workers, then
    // a join is still answered at once.
    for _ in 0..4 {
        let mut ws = Ws::join(&base, "closing", &ada.token, "").await?;
        ws.expect("history").await?;
        let mut frame = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
        frame.header_mut().rsv1 = true;
        ws.send_frame(frame).await?;
        assert_eq!(ws.close_code().await?, Some(1002));
    }
    let joined = std::time::Instant::now();
    let mut ws = Ws::join(&base, "closing", &ada.token, "").await?;
    ws.expect("history").await?;
    assert!(
        joined.elapsed() < std::time::Duration::from_secs(1),
        "join after failed connections took {:?}",
        joined.elapsed()
    );
    stack.shutdown().await
}

/// Every response carries the security headers; the page runs under a policy with no
/// inline code; a POST from another site is refused even with the session cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_api_carry_security_headers_and_cross_site_posts_are_refused() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let client = http();
    for path in ["/", "/app.js", "/app.css", "/api/me", "/api/nope"] {
        let response = client.get(format!("{base}{path}")).send().await?;
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let csp = header("content-security-policy");
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{path}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
    }
    let page = client.get(format!("{base}/")).send().await?.text().await?;
    assert!(!page.contains("<script>") && !page.contains("style="), "no inline script or style in the page");
    let script = client.get(format!("{base}/app.js")).send().await?;
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");

    let ada = sign_up(&base, "ada").await?;
    let cross_site = |path: &str| {
        client
            .post(format!("{base}{path}"))
            .header("Origin", "https://evil.example")
            .header("Cookie", format!("huddle_session={}", ada.token))
            .json(&json!({"username": "ada", "password": "password123"}))
            .send()
    };
    for path in ["/api/logout", "/api/login", "/api/register"] {
        let refused = cross_site(path).await?;
        assert_eq!(
            (refused.status().as_u16(), refused.json::<Value>().await?["error"]["code"].clone()),
            (403, json!("origin_not_allowed")),
            "{path}"
        );
    }
    let me = client.get(format!("{base}/api/me")).bearer_auth(&ada.token).send().await?;
    assert_eq!(me.status(), 200, "the cross-site logout did not end the session");
    let same_site = client
        .post(format!("{base}/api/logout"))
        .header("Origin", base.as_str())
        .header("Cookie", format!("huddle_session={}", ada.token))
        .send()
        .await?;
    assert_eq!(same_site.status(), 204, "the page's own origin may log out");
    stack.shutdown().await
}

/// A request whose announced body never arrives gets 408 `request_timeout` (JSON) at the
/// deadline and its connection closed (found by an outside audit: such a POST was held
/// open for 300 s and more, a way to pile up connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_gets_408_at_the_deadline() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        gateway_args: &["--body-timeout-ms", "300"],
        ..StackOptions::default()
    })
    .await?;
    let addr = stack.url(0).trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await?;
    let started = std::time::Instant::now();
    conn.write_all(
        b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await?;
    // The answer comes at the deadline; the connection closes after it, within actix-web's
    // 1 s disconnect grace (docs/PROTOCOL.md says both).
    let mut response = vec![0u8; 1];
    tokio::time::timeout(std::time::Duration::from_secs(5), conn.read_exact(&mut response))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5 s"))??;
    let answered = started.elapsed();
    tokio::time::timeout(std::time::Duration::from_secs(5), conn.read_to_end(&mut response))
        .await
        .map_err(|_| anyhow::anyhow!("the connection was not closed within 5 s of the answer"))??;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"request_timeout""#), "{text}");
    assert!(answered >= std::time::Duration::from_millis(250), "answered before the deadline: {answered:?}");

    // An ordinary request is not cut short.
    let ada = sign_up(&stack.url(0), "ada").await?;
    let me = http().get(format!("{}/api/me", stack.url(0))).bearer_auth(&ada.token).send().await?;
    assert_eq!(me.status(), 200);
    stack.shutdown().await
}
