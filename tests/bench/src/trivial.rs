//! The trivial fan-out server (`huddle-bench trivial-server --port P`): just enough of
//! Huddle's socket protocol for the generator (`/ws/rooms/{room}`, a `history` frame on
//! join, `send` in, `ack` and `message` out) with the rooms in memory and nothing behind
//! them: no accounts, no Redis, no storage. Each message is serialised once and handed
//! to every socket of its room. Run in the fan-out sweep like the servers under test, it
//! is the ceiling of the generator itself: a server cannot be measured beyond it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Server parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct TrivialArgs {
    /// Port to listen on (127.0.0.1).
    #[arg(long)]
    pub port: u16,
}

/// One room: its sockets' outgoing queues, and its last seq.
#[derive(Default)]
struct Room {
    members: HashMap<u64, mpsc::UnboundedSender<Message>>,
    seq: u64,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

/// Serves until killed.
pub async fn serve(args: TrivialArgs) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await.with_context(|| format!("bind {}", args.port))?;
    eprintln!("trivial fan-out server listening on {}", args.port);
    let rooms: Rooms = Arc::default();
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: wait for sockets to close.
                eprintln!("accept: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (rooms, id) = (Arc::clone(&rooms), ids.fetch_add(1, Ordering::Relaxed));
        tokio::spawn(async move {
            if let Err(error) = connection(stream, rooms, id).await {
                eprintln!("connection {id}: {error:#}");
            }
        });
    }
}

/// The room of a `/ws/rooms/{room}?…` path.
fn room_of(path: &str) -> Option<&str> {
    let room = path.strip_prefix("/ws/rooms/")?.split('?').next()?;
    (!room.is_empty()).then_some(room)
}

/// The `ack` and the `message` frame of a client's `send` frame (`None` for anything else).
fn answer(text: &str, room: &str, seq: u64) -> Option<(String, String)> {
    let frame: Value = serde_json::from_str(text).ok()?;
    if frame["type"] != "send" {
        return None;
    }
    let (body, client_id) = (frame["body"].as_str()?, frame["client_id"].as_str().unwrap_or_default());
    let ack = json!({ "type": "ack", "client_id": client_id, "seq": seq, "duplicate": false }).to_string();
    // `type` first, as Huddle writes it (the generator looks at the frame's start).
    let message = format!(
        r#"{{"type":"message","room":{},"seq":{seq},"user":{{"id":0,"name":"trivial"}},"body":{},"client_id":{}}}"#,
        json!(room),
        json!(body),
        json!(client_id)
    );
    Some((ack, message))
}

// The handshake callback's signature is tungstenite's (its error is a whole response).
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, rooms: Rooms, id: u64) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut path = String::new();
    let socket = tokio_tungstenite::accept_hdr_async(stream, |request: &Request, response: Response| {
        path = request.uri().to_string();
        Ok(response)
    })
    .await?;
    let room = room_of(&path).with_context(|| format!("not a room socket: {path}"))?.to_owned();
    let (mut sink, mut stream) = socket.split();
    let history =
        json!({ "type": "history", "room": room, "mode": "latest", "messages": [], "has_more": false, "epoch": 1 });
    sink.send(Message::text(history.to_string())).await?;
    let (queue, mut outgoing) = mpsc::unbounded_channel();
    rooms
        .lock()
        .map_err(|_| anyhow::anyhow!("rooms poisoned"))?
        .entry(room.clone())
        .or_default()
        .members
        .insert(id, queue.clone());
    // Writes whatever is queued, flushing once per batch.
    let writer = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            sink.feed(frame).await?;
            while let Ok(frame) = outgoing.try_recv() {
                sink.feed(frame).await?;
            }
            sink.flush().await?;
        }
        anyhow::Ok(())
    });
    while let Some(frame) = stream.next().await {
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Ok(mut rooms) = rooms.lock() else { break };
        let Some(members) = rooms.get_mut(&room) else { break };
        let Some((ack, message)) = answer(&text, &room, members.seq + 1) else { continue };
        members.seq += 1;
        let _ = queue.send(Message::text(ack));
        // One serialisation, shared by every socket of the room.
        let message = Message::Text(Utf8Bytes::from(message));
        for member in members.members.values() {
            let _ = member.send(message.clone());
        }
    }
    if let Ok(mut rooms) = rooms.lock() {
        if let Some(members) = rooms.get_mut(&room) {
            members.members.remove(&id);
            if members.members.is_empty() {
                rooms.remove(&room);
            }
        }
    }
    writer.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_come_from_the_path_and_sends_get_an_ack_and_a_message() {
        assert_eq!(room_of("/ws/rooms/r-1?token="), Some("r-1"));
        assert_eq!(room_of("/ws/rooms/"), None);
        assert_eq!(room_of("/other"), None);
        let (ack, message) = answer(r#"{"type":"send","body":"hi","client_id":"b1"}"#, "r-1", 7).expect("a send");
        assert!(ack.contains(r#""seq":7"#), "{ack}");
        assert!(message.starts_with(r#"{"type":"message""#), "{message}");
        assert!(message.contains(r#""body":"hi""#), "{message}");
        assert_eq!(answer(r#"{"type":"typing"}"#, "r-1", 1), None);
        assert_eq!(answer("not json", "r-1", 1), None);
    }
}
