//! The chat data path end to end, in-process, against real PostgreSQL, Redis and RabbitMQ.

use std::time::Duration;

use anyhow::{Context, Result};
use huddle_e2e::{eventually, seqs, sign_up, Stack, StackOptions, Ws};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_see_each_other_in_order_and_a_late_joiner_gets_history() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let (ada, bob, cyd) = (sign_up(&base, "ada").await?, sign_up(&base, "bob").await?, sign_up(&base, "cyd").await?);

    let mut a = Ws::join(&base, "lobby", &ada.token, "").await?;
    let first = a.expect("history").await?;
    assert_eq!(first["room"], "lobby");
    assert_eq!(first["mode"], "latest");
    assert!(seqs(&first).is_empty());
    let mut b = Ws::join(&base, "lobby", &bob.token, "").await?;
    b.expect("history").await?;

    let s1 = a.say("hello from ada", "a-1").await?;
    let s2 = b.say("hi ada", "b-1").await?;
    let s3 = a.say("how are you?", "a-2").await?;
    assert_eq!((s1, s2, s3), (1, 2, 3));

    for ws in [&mut a, &mut b] {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let m = ws.expect("message").await?;
            assert_eq!(m["room"], "lobby");
            assert!(m["sent_at"].as_str().is_some_and(|t| t.ends_with('Z')));
            seen.push((
                m["seq"].as_u64().unwrap(),
                m["user"]["name"].as_str().unwrap().to_owned(),
                m["body"].as_str().unwrap().to_owned(),
            ));
        }
        assert_eq!(
            seen,
            vec![
                (1, "ada".to_owned(), "hello from ada".to_owned()),
                (2, "bob".to_owned(), "hi ada".to_owned()),
                (3, "ada".to_owned(), "how are you?".to_owned())
            ]
        );
    }

    // Typing notices reach the others, not the typist.
    b.send_json(&json!({"type": "typing"})).await?;
    let typing = a.expect("typing").await?;
    assert_eq!((typing["room"].as_str(), typing["user"]["name"].as_str()), (Some("lobby"), Some("bob")));

    let mut c = Ws::join(&base, "lobby", &cyd.token, "").await?;
    let history = c.expect("history").await?;
    assert_eq!(seqs(&history), vec![1, 2, 3]);
    assert_eq!(history["messages"][1]["user"]["id"], bob.id);
    assert_eq!(history["messages"][0]["client_id"], "a-1");

    let rooms: serde_json::Value =
        huddle_e2e::http().get(format!("{base}/api/rooms")).bearer_auth(&cyd.token).send().await?.json().await?;
    assert_eq!(rooms["rooms"], json!(["lobby"]));
    // The directory: each room's newest seq (a client's unread count), when it last
    // spoke, and how many people are in it.
    let lobby = &rooms["directory"][0];
    assert_eq!(
        (lobby["name"].as_str(), lobby["last_seq"].as_u64(), lobby["online"].as_u64()),
        (Some("lobby"), Some(3), Some(3))
    );
    let spoke = lobby["last_message_at"].as_str().context("last_message_at")?.to_owned();
    assert!(spoke.ends_with('Z'), "{spoke}");
    for ws in [a, b, c] {
        ws.leave().await?;
    }
    // A room Redis no longer holds is described from the archive.
    stack.wait_persisted(3).await?;
    stack.env.wipe_redis().await?;
    let rooms: serde_json::Value =
        huddle_e2e::http().get(format!("{base}/api/rooms")).bearer_auth(&cyd.token).send().await?.json().await?;
    let lobby = &rooms["directory"][0];
    assert_eq!((lobby["last_seq"].as_u64(), lobby["online"].as_u64()), (Some(3), Some(0)), "{rooms}");
    assert_eq!(lobby["last_message_at"].as_str(), Some(spoke.as_str()), "the archive's time of the newest message");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_through_one_gateway_reaches_a_client_on_another() -> Result<()> {
    let stack = Stack::start(2).await?;
    let (one, two) = (stack.url(0), stack.url(1));
    assert_ne!(one, two);
    let ada = sign_up(&one, "ada").await?;
    let bob = sign_up(&two, "bob").await?;
    let mut a = Ws::join(&one, "bridge", &ada.token, "").await?;
    a.expect("history").await?;
    let mut b = Ws::join(&two, "bridge", &bob.token, "").await?;
    b.expect("history").await?;

    let seq = a.say("across gateways", "x1").await?;
    let got = b.expect("message").await?;
    assert_eq!(got["seq"], seq);
    assert_eq!(got["body"], "across gateways");
    let back = b.say("and back", "y1").await?;
    assert_eq!(back, seq + 1);
    loop {
        let m = a.expect("message").await?;
        if m["seq"] == back {
            assert_eq!(m["user"]["name"], "bob");
            break;
        }
    }
    a.leave().await?;
    b.leave().await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_everyone_leaves_the_messages_land_in_postgres_exactly_once() -> Result<()> {
    // No sweep within the test: only the room-empty trigger can flush the room, so the
    // test fails if that trigger is gone.
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        persister_args: &["--sweep-interval-ms", "600000"],
        gateway_args: &["--flush-backlog", "100000"],
        ..Default::default()
    })
    .await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let bob = sign_up(&base, "bob").await?;
    let mut a = Ws::join(&base, "persist-me", &ada.token, "").await?;
    a.expect("history").await?;
    let mut b = Ws::join(&base, "persist-me", &bob.token, "").await?;
    b.expect("history").await?;
    // More than one chunk (the test persister uses chunks of 50).
    for i in 0..120 {
        let ws = if i % 2 == 0 { &mut a } else { &mut b };
        ws.say(&format!("message {i}"), &format!("c{i}")).await?;
    }
    a.leave().await?;
    b.leave().await?;

    let db = stack.env.db().await?;
    let count = eventually(Duration::from_secs(10), || async {
        let row = db
            .query_one(
                "SELECT count(*), count(DISTINCT m.seq), coalesce(min(m.seq), 0), coalesce(max(m.seq), 0), r.persisted_seq
                 FROM rooms r LEFT JOIN messages m ON m.room_id = r.id WHERE r.name = 'persist-me' GROUP BY r.persisted_seq",
                &[],
            )
            .await?;
        let (n, distinct, min, max, watermark): (i64, i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        Ok((n == 120 && watermark == 120).then_some((n, distinct, min, max)))
    })
    .await?;
    assert_eq!(count, (120, 120, 1, 120));
    let body: String = db
        .query_one(
            "SELECT m.body FROM messages m JOIN rooms r ON r.id = m.room_id WHERE r.name = 'persist-me' AND m.seq = 57",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(body, "message 56");

    // A flush requested again (redelivered master task) writes nothing twice.
    let mut persister = stack.env.persister_client(stack.persister.grpc_addr()).await?;
    persister.flush_room(huddle_proto::v1::FlushRoomRequest { room: "persist-me".into() }).await?;
    let status =
        persister.room_status(huddle_proto::v1::RoomStatusRequest { room: "persist-me".into() }).await?.into_inner();
    assert_eq!((status.last_seq, status.archived_seq, status.unpersisted), (120, 120, 0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total: i64 = db.query_one("SELECT count(*) FROM messages", &[]).await?.get(0);
    assert_eq!(total, 120);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_everything_history_rehydrates_and_seq_continues() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut a = Ws::join(&base, "phoenix", &ada.token, "").await?;
    a.expect("history").await?;
    for i in 1..=5 {
        assert_eq!(a.say(&format!("before {i}"), &format!("b{i}")).await?, i);
    }
    a.leave().await?;
    stack.wait_persisted(5).await?;
    let db = stack.env.db().await?;

    let deleted = stack.env.wipe_redis().await?;
    assert!(deleted > 0, "the test's keys were in Redis");

    // A new join hydrates the room from PostgreSQL before its history is sent.
    let mut a = Ws::join(&base, "phoenix", &ada.token, "").await?;
    let history = a.expect("history").await?;
    assert_eq!(seqs(&history), vec![1, 2, 3, 4, 5]);
    assert_eq!(history["messages"][4]["body"], "before 5");
    // The counter continues from the archive: no collision with seq 1.
    assert_eq!(a.say("after the wipe", "after-1").await?, 6);

    // A socket that stays in the room while Redis is wiped re-hydrates on its next send.
    // (The occupied room is persisted by the dirty-room sweep first; what Redis holds
    // unpersisted when it dies is lost without AOF: docs/RELIABILITY.md.)
    stack.wait_persisted(6).await?;
    stack.env.wipe_redis().await?;
    assert_eq!(a.say("after a second wipe", "after-2").await?, 7);
    a.leave().await?;

    eventually(Duration::from_secs(10), || async {
        let rows = db.query("SELECT seq FROM messages ORDER BY seq", &[]).await?;
        let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        Ok((seqs == (1..=7).collect::<Vec<i64>>()).then_some(()))
    })
    .await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_history_is_paged_from_postgres_through_the_hydrator() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut a = Ws::join(&base, "archive", &ada.token, "").await?;
    a.expect("history").await?;
    for i in 1..=30 {
        a.say(&format!("m{i}"), &format!("k{i}")).await?;
    }
    a.leave().await?;
    stack.wait_persisted(30).await?;
    // Only PostgreSQL has them now.
    stack.env.wipe_redis().await?;

    let client = huddle_e2e::http();
    let page: serde_json::Value = client
        .get(format!("{base}/api/rooms/archive/messages?before=21&limit=10"))
        .bearer_auth(&ada.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(seqs(&page), (11..=20).collect::<Vec<u64>>());
    assert_eq!(page["has_more"], true);
    assert_eq!(page["messages"][0]["body"], "m11");
    let first: serde_json::Value = client
        .get(format!("{base}/api/rooms/archive/messages?before=4&limit=10"))
        .bearer_auth(&ada.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(seqs(&first), vec![1, 2, 3]);
    assert_eq!(first["has_more"], false);

    // The same over the socket, after the room is warm again.
    let mut a = Ws::join(&base, "archive", &ada.token, "").await?;
    a.expect("history").await?;
    a.send_json(&json!({"type": "history", "before_seq": 6, "limit": 3})).await?;
    let page = a.expect("history").await?;
    assert_eq!(page["mode"], "page");
    assert_eq!(seqs(&page), vec![3, 4, 5]);
    a.leave().await?;
    stack.shutdown().await
}

/// Pages Redis holds come from Redis: a gateway whose hydrator is down still serves them,
/// over REST and over the socket, and refuses with 503 only a page Redis does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_redis_holds_are_served_while_the_hydrator_is_down() -> Result<()> {
    let stack = Stack::start(1).await?;
    let ada = sign_up(&stack.url(0), "ada").await?;
    let mut a = Ws::join(&stack.url(0), "held", &ada.token, "").await?;
    a.expect("history").await?;
    for i in 1..=5 {
        a.say(&format!("m{i}"), &format!("k{i}")).await?;
    }
    let no_hydrator = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let gateway = huddle_e2e::start_gateway(&stack.env, no_hydrator, &[]).await?;
    let base = format!("http://{}", gateway.addr());
    let page = |query: &str| {
        let request = huddle_e2e::http().get(format!("{base}/api/rooms/{query}")).bearer_auth(&ada.token);
        async move {
            let response = request.send().await?;
            anyhow::Ok((response.status().as_u16(), response.json::<serde_json::Value>().await?))
        }
    };

    let (status, newest) = page("held/messages?limit=3").await?;
    assert_eq!((status, seqs(&newest), newest["has_more"].as_bool()), (200, vec![3, 4, 5], Some(true)));
    // Fewer than asked for, but down to seq 1: the whole page is in Redis.
    let (status, oldest) = page("held/messages?before=3&limit=10").await?;
    assert_eq!((status, seqs(&oldest), oldest["has_more"].as_bool()), (200, vec![1, 2], Some(false)));

    let mut same = Ws::join(&base, "held", &ada.token, "").await?;
    same.expect("history").await?;
    same.send_json(&json!({"type": "history", "before_seq": 4, "limit": 2})).await?;
    assert_eq!(seqs(&same.expect("history").await?), vec![2, 3]);
    drop(same);

    // Redis holds nothing of this room: the page needs the hydrator, and says so.
    let (status, refused) = page("never-joined/messages").await?;
    assert_eq!((status, refused["error"]["code"].as_str()), (503, Some("unavailable")));
    // Which dependency failed, and how, is for the logs, not for clients.
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("hydrator") && !message.contains("tcp"), "{message}");
    a.leave().await?;
    gateway.stop().await;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_announces_a_users_first_socket_in_and_last_socket_out() -> Result<()> {
    let stack = Stack::start(2).await?;
    let (one, two) = (stack.url(0), stack.url(1));
    let ada = sign_up(&one, "ada").await?;
    let bob = sign_up(&one, "bob").await?;
    let names = |frame: &serde_json::Value| -> Vec<String> {
        frame["online"]
            .as_array()
            .map(|o| o.iter().filter_map(|u| u["name"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    };

    let mut a = Ws::join(&one, "hall", &ada.token, "").await?;
    a.expect("history").await?;
    let snapshot = a.expect("presence").await?;
    assert_eq!((snapshot["event"].as_str(), names(&snapshot)), (Some("snapshot"), vec!["ada".to_owned()]));
    assert_eq!(a.expect("presence").await?["event"], "joined", "ada's own arrival is announced too");

    // Bob joins through the other gateway, then opens a second tab.
    let mut b1 = Ws::join(&two, "hall", &bob.token, "").await?;
    b1.expect("history").await?;
    assert_eq!(names(&b1.expect("presence").await?), vec!["ada".to_owned(), "bob".to_owned()]);
    let joined = a.expect("presence").await?;
    assert_eq!((joined["event"].as_str(), joined["user"]["name"].as_str()), (Some("joined"), Some("bob")));
    assert_eq!(joined["user"]["id"].as_i64(), Some(bob.id));
    assert!(joined.get("online").is_none(), "a change carries the one user, not the list: {joined}");
    let mut b2 = Ws::join(&one, "hall", &bob.token, "").await?;
    b2.expect("history").await?;
    b2.leave().await?;
    // Closing one of two tabs announces nothing; closing the last one announces the leave.
    b1.leave().await?;
    let left = a.expect("presence").await?;
    assert_eq!((left["event"].as_str(), left["user"]["name"].as_str()), (Some("left"), Some("bob")));
    assert!(left.get("online").is_none(), "{left}");
    a.leave().await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_gateway_stopped_refreshing_them_is_announced_as_left() -> Result<()> {
    let stack = Stack::start(1).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let bob = sign_up(&base, "bob").await?;
    // A socket on a gateway that crashed: its entry was written once and never refreshed.
    let room = huddle_domain::RoomName::parse("hall").unwrap();
    let ghost = huddle_roomlog::Presence { socket: "crashed".into(), user_id: 999_999, user_name: "ghost".into() };
    stack.env.room_log(100)?.presence(&room, huddle_roomlog::PresenceChange::Join, &ghost, 1_500).await?;

    let mut a = Ws::join(&base, "hall", &ada.token, "").await?;
    a.expect("history").await?;
    let snapshot = a.expect("presence").await?;
    let ids: Vec<i64> = snapshot["online"].as_array().unwrap().iter().filter_map(|u| u["id"].as_i64()).collect();
    assert_eq!(ids, vec![ada.id, 999_999], "{snapshot}");
    assert_eq!(a.expect("presence").await?["event"], "joined");

    // Once the entry expired, the next change in the room drops it and announces it.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let mut b = Ws::join(&base, "hall", &bob.token, "").await?;
    b.expect("history").await?;
    let online = b.expect("presence").await?;
    assert_eq!(online["online"].as_array().map(Vec::len), Some(2), "{online}");
    let left = a.expect("presence").await?;
    assert_eq!((left["event"].as_str(), left["user"]["id"].as_i64()), (Some("left"), Some(999_999)), "{left}");
    let joined = a.expect("presence").await?;
    assert_eq!((joined["event"].as_str(), joined["user"]["name"].as_str()), (Some("joined"), Some("bob")));
    b.leave().await?;
    let left = a.expect("presence").await?;
    assert_eq!((left["event"].as_str(), left["user"]["name"].as_str()), (Some("left"), Some("bob")));
    a.leave().await?;
    stack.shutdown().await
}
