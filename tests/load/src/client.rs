//! One well-behaved client: sends at a fixed rate, reconnects (to the next gateway) with
//! `since=<last seq seen>` when its connection drops, and resends every unacked message
//! with its original client_id.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{Acked, ClientReport};

/// Resend an unacked message if its ack is this late (the ack may have been lost).
const RESEND_AFTER: Duration = Duration::from_secs(3);
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// What one client does.
pub struct ClientConfig {
    pub index: usize,
    pub run_id: String,
    pub room: String,
    pub urls: Vec<String>,
    pub token: String,
    pub messages: usize,
    pub interval: Duration,
    pub body_bytes: usize,
    pub deadline: Instant,
}

struct Pending {
    body: String,
    sent_at: Instant,
}

struct State {
    report: ClientReport,
    pending: BTreeMap<String, Pending>,
    acked: HashMap<String, u64>,
    /// Highest seq seen; `None` before the first history frame.
    last_seq: Option<u64>,
}

impl State {
    fn observe(&mut self, seq: u64) {
        self.report.seen += 1;
        match self.last_seq {
            Some(last) if seq <= last => self.report.out_of_order += 1,
            Some(last) => {
                self.report.view_gaps += seq - last - 1;
                self.last_seq = Some(seq);
            }
            None => self.last_seq = Some(seq),
        }
    }

    fn on_frame(&mut self, room: &str, frame: &Value) {
        match frame["type"].as_str() {
            Some("history") => {
                let messages = frame["messages"].as_array().cloned().unwrap_or_default();
                if frame["mode"] == "latest" {
                    // A fresh load: it defines where this client's view starts.
                    if self.last_seq.is_some() {
                        self.report.view_resets += 1;
                    }
                    self.last_seq = Some(messages.last().and_then(|m| m["seq"].as_u64()).unwrap_or(0));
                    self.report.seen += messages.len();
                } else {
                    for message in messages {
                        self.observe(message["seq"].as_u64().unwrap_or(0));
                    }
                }
            }
            Some("message") => self.observe(frame["seq"].as_u64().unwrap_or(0)),
            Some("ack") => {
                let client_id = frame["client_id"].as_str().unwrap_or_default().to_owned();
                let seq = frame["seq"].as_u64().unwrap_or(0);
                if frame["duplicate"] == true {
                    self.report.duplicate_acks += 1;
                }
                self.pending.remove(&client_id);
                match self.acked.get(&client_id) {
                    Some(&earlier) if earlier != seq => self.report.ack_conflicts += 1,
                    Some(_) => {}
                    None => {
                        self.acked.insert(client_id.clone(), seq);
                        self.report.acked.push(Acked { room: room.to_owned(), seq, client_id });
                    }
                }
            }
            // Errors (rate_limited, unavailable) leave the message pending: it is resent.
            _ => {}
        }
    }
}

fn send_frame(client_id: &str, body: &str) -> Message {
    Message::text(json!({ "type": "send", "body": body, "client_id": client_id }).to_string())
}

/// Runs the client until every message is acked or the deadline passes.
pub async fn run(config: ClientConfig) -> ClientReport {
    let mut state =
        State { report: ClientReport::default(), pending: BTreeMap::new(), acked: HashMap::new(), last_seq: None };
    let mut next = 0;
    let mut url = config.index % config.urls.len();
    let mut ticker = tokio::time::interval(config.interval);
    let mut resend = tokio::time::interval(Duration::from_secs(1));
    let padding = "x".repeat(config.body_bytes.saturating_sub(24));

    'connection: while Instant::now() < config.deadline && (next < config.messages || !state.pending.is_empty()) {
        let since = state.last_seq.map(|s| format!("&since={s}")).unwrap_or_default();
        let ws_url = format!(
            "{}/ws/rooms/{}?token={}{since}",
            config.urls[url].replacen("http", "ws", 1),
            config.room,
            config.token
        );
        let stream = match tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(ws_url)).await
        {
            Ok(Ok((stream, _))) => stream,
            _ => {
                state.report.reconnects += 1;
                url = (url + 1) % config.urls.len();
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        let (mut sink, mut frames) = stream.split();
        // Whatever was not acked on the last connection goes again, same client_id.
        for (client_id, pending) in state.pending.iter_mut() {
            pending.sent_at = Instant::now();
            if sink.send(send_frame(client_id, &pending.body)).await.is_err() {
                state.report.reconnects += 1;
                continue 'connection;
            }
        }
        loop {
            if next >= config.messages && state.pending.is_empty() {
                let _ = sink.close().await;
                break 'connection;
            }
            if Instant::now() >= config.deadline {
                break 'connection;
            }
            let outcome = tokio::select! {
                _ = ticker.tick(), if next < config.messages => {
                    let client_id = format!("{}-{}-{next}", config.run_id, config.index);
                    let body = format!("{} #{next} {padding}", config.index);
                    next += 1;
                    state.report.sent += 1;
                    let frame = send_frame(&client_id, &body);
                    state.pending.insert(client_id, Pending { body, sent_at: Instant::now() });
                    sink.send(frame).await.is_ok()
                }
                _ = resend.tick() => {
                    let mut ok = true;
                    for (client_id, pending) in state.pending.iter_mut() {
                        if pending.sent_at.elapsed() >= RESEND_AFTER {
                            pending.sent_at = Instant::now();
                            ok &= sink.send(send_frame(client_id, &pending.body)).await.is_ok();
                        }
                    }
                    ok
                }
                frame = frames.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(frame) = serde_json::from_str::<Value>(&text) {
                            state.on_frame(&config.room, &frame);
                        }
                        true
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => false,
                    Some(Ok(_)) => true,
                },
            };
            if !outcome {
                state.report.reconnects += 1;
                url = (url + 1) % config.urls.len();
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue 'connection;
            }
        }
    }
    state.report.unacked = state.pending.len() + (config.messages - next);
    state.report
}
