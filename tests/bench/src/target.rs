//! The servers under test and how a client speaks to each: Huddle's own protocol, Socket.IO
//! (Engine.IO 4 over a WebSocket, written out here so the generator needs no JS), and the
//! Django Channels tutorial chat, plus the trivial in-memory server of `huddle-bench
//! trivial-server` (Huddle's frames, nothing behind them: the generator's own ceiling).
//! Each gives the generator the same three things: join a room, send a body to it, and
//! the bodies delivered to this client.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which server the generator talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Huddle's gateway: accounts, `/ws/rooms/{room}`, `send` and `message` frames.
    Huddle,
    /// Socket.IO 4 with the Redis adapter: `join`, `chat` events, `io.to(room).emit`.
    Socketio,
    /// Django Channels with channels_redis: the tutorial's `/ws/chat/{room}/`.
    Channels,
    /// `huddle-bench trivial-server`: Huddle's socket URL and frames, rooms in memory, no
    /// accounts, no storage; what the generator can drive at most.
    Trivial,
}

/// The sending half of one client's connection.
pub struct Client {
    target: Target,
    sink: SplitSink<Socket, Message>,
    room: String,
    sent: u64,
    pongs: tokio::sync::mpsc::UnboundedReceiver<()>,
}

/// The receiving half: yields delivered bodies, answers Engine.IO pings.
pub struct Receiver {
    target: Target,
    stream: SplitStream<Socket>,
    /// Engine.IO pongs to send back (its pings arrive on this half).
    pongs: tokio::sync::mpsc::UnboundedSender<()>,
}

/// What one incoming frame was.
pub enum Incoming {
    /// A chat message with this body.
    Delivery(String),
    /// The server refused a send (Huddle's `error` frames, e.g. `rate_limited`).
    Refusal,
    /// Anything else (acks, presence, history, pings).
    Other,
}

impl Target {
    /// Signs `name` up and in (Huddle only; the peers' tutorial chats have no accounts):
    /// the token to connect with.
    pub async fn account(self, http: &reqwest::Client, base: &str, name: &str) -> Result<Option<String>> {
        if self != Target::Huddle {
            return Ok(None);
        }
        let credentials = json!({ "username": name, "password": "bench-password" });
        let registered = post_retrying(http, &format!("{base}/api/register"), &credentials).await?;
        if !matches!(registered.status().as_u16(), 201 | 409) {
            bail!("register {name}: {} {}", registered.status(), registered.text().await?);
        }
        let login = post_retrying(http, &format!("{base}/api/login"), &credentials).await?;
        let login: Value = login.json().await?;
        Ok(Some(login["token"].as_str().with_context(|| format!("login {name}: {login}"))?.to_owned()))
    }

    /// Connects one client to `room` and waits until it is in the room.
    pub async fn connect(self, base: &str, room: &str, token: Option<&str>) -> Result<(Client, Receiver)> {
        self.connect_from(base, room, token, None).await
    }

    /// [`Target::connect`], with the text of the frame that said the client is in the
    /// room (Huddle's `history` frame; empty for Channels, which sends none).
    pub async fn connect_with_answer(
        self,
        base: &str,
        room: &str,
        token: Option<&str>,
    ) -> Result<(Client, Receiver, String)> {
        self.open(base, room, token, None).await
    }

    /// [`Target::connect`] from the local address `source` (port chosen by the kernel),
    /// with small socket buffers: many idle connections spread over several 127.0.0.x
    /// addresses so that no one address runs out of ephemeral ports.
    pub async fn connect_from(
        self,
        base: &str,
        room: &str,
        token: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<(Client, Receiver)> {
        let (client, receiver, _) = self.open(base, room, token, source).await?;
        Ok((client, receiver))
    }

    async fn open(
        self,
        base: &str,
        room: &str,
        token: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<(Client, Receiver, String)> {
        let ws_base = base.replacen("http", "ws", 1);
        let url = match self {
            Target::Huddle | Target::Trivial => {
                format!("{ws_base}/ws/rooms/{room}?token={}", token.unwrap_or_default())
            }
            Target::Socketio => format!("{ws_base}/socket.io/?EIO=4&transport=websocket"),
            Target::Channels => format!("{ws_base}/ws/chat/{room}/"),
        };
        // Nagle off, as browsers have it: small frames must not wait for the last one's ACK.
        let mut socket = match source {
            None => {
                tokio_tungstenite::connect_async_with_config(&url, None, true)
                    .await
                    .with_context(|| format!("connect {url}"))?
                    .0
            }
            Some(source) => {
                let server = server_address(base)?;
                let tcp = tokio::net::TcpSocket::new_v4()?;
                tcp.bind(SocketAddr::new(source, 0)).with_context(|| format!("bind {source}"))?;
                let stream = tcp.connect(server).await.with_context(|| format!("connect {server} from {source}"))?;
                stream.set_nodelay(true)?;
                let config = WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(0);
                tokio_tungstenite::client_async_with_config(&url, MaybeTlsStream::Plain(stream), Some(config))
                    .await
                    .with_context(|| format!("upgrade {url} from {source}"))?
                    .0
            }
        };
        let answer = match self {
            Target::Huddle | Target::Trivial => {
                wait_for(&mut socket, |text| text.contains(r#""type":"history""#)).await?
            }
            Target::Socketio => {
                wait_for(&mut socket, |text| text.starts_with('0')).await?;
                socket.send(Message::text("40")).await?;
                wait_for(&mut socket, |text| text.starts_with("40")).await?;
                socket.send(Message::text(format!(r#"42["join",{}]"#, json!(room)))).await?;
                wait_for(&mut socket, |text| text.starts_with(r#"42["joined""#)).await?
            }
            Target::Channels => String::new(),
        };
        let (sink, stream) = socket.split();
        // Engine.IO pings arrive on the receiving half; their pongs go out on the sending one.
        let (pongs, pending_pongs) = tokio::sync::mpsc::unbounded_channel();
        let client = Client { sink, target: self, room: room.to_owned(), sent: 0, pongs: pending_pongs };
        Ok((client, Receiver { target: self, stream, pongs }, answer))
    }
}

/// POSTs `body`, retrying (up to 20 times) while the gateway answers 503 `overloaded`, as
/// PROTOCOL says to: many sign-ups at once on a server sharing its core with others
/// outwait its password-hashing queue.
async fn post_retrying(http: &reqwest::Client, url: &str, body: &Value) -> Result<reqwest::Response> {
    let mut attempt = 0;
    loop {
        let response = http.post(url).json(body).send().await.with_context(|| format!("POST {url}"))?;
        attempt += 1;
        if response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE || attempt >= 20 {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(retry_after.clamp(1, 10))).await;
    }
}

/// `host:port` of an `http://` base URL, as a socket address.
fn server_address(base: &str) -> Result<SocketAddr> {
    let authority = base.split("://").nth(1).unwrap_or(base).split('/').next().unwrap_or_default();
    authority.parse().with_context(|| format!("{base}: not http://IP:PORT"))
}

/// Reads frames until one satisfies `done` (10 s at most), and returns that one.
async fn wait_for(socket: &mut Socket, done: impl Fn(&str) -> bool) -> Result<String> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = socket.next().await {
            match frame? {
                Message::Text(text) if done(&text) => return Ok(text.as_str().to_owned()),
                Message::Text(text) if text.as_str() == "2" => socket.send(Message::text("3")).await?,
                Message::Close(frame) => bail!("closed while joining: {frame:?}"),
                _ => {}
            }
        }
        bail!("connection ended while joining")
    })
    .await
    .context("no answer within 10 s while joining")?
}

impl Client {
    /// Sends `body` to the client's room.
    pub async fn send(&mut self, body: &str) -> Result<()> {
        self.keep_alive().await?;
        self.sent += 1;
        let frame = match self.target {
            Target::Huddle | Target::Trivial => {
                json!({ "type": "send", "body": body, "client_id": format!("b{}", self.sent) }).to_string()
            }
            Target::Socketio => format!(r#"42["chat",{}]"#, json!({ "room": self.room, "body": body })),
            Target::Channels => json!({ "message": body }).to_string(),
        };
        self.sink.send(Message::text(frame)).await?;
        Ok(())
    }

    /// Answers the pings the receiver saw (Engine.IO drops a client that does not).
    pub async fn keep_alive(&mut self) -> Result<()> {
        while self.pongs.try_recv().is_ok() {
            self.sink.send(Message::text("3")).await?;
        }
        Ok(())
    }
}

impl Receiver {
    /// The next frame, classified; `None` when the connection ended.
    pub async fn next(&mut self) -> Result<Option<Incoming>> {
        loop {
            let Some(frame) = self.stream.next().await else { return Ok(None) };
            let text = match frame? {
                Message::Text(text) => text,
                Message::Close(_) => return Ok(None),
                _ => continue,
            };
            return Ok(Some(match self.target {
                Target::Huddle | Target::Trivial => {
                    if text.starts_with(r#"{"type":"message""#) {
                        let frame: Value = serde_json::from_str(&text)?;
                        Incoming::Delivery(frame["body"].as_str().unwrap_or_default().to_owned())
                    } else if text.starts_with(r#"{"type":"error""#) {
                        Incoming::Refusal
                    } else {
                        Incoming::Other
                    }
                }
                Target::Socketio => {
                    if text.as_str() == "2" {
                        let _ = self.pongs.send(());
                        Incoming::Other
                    } else if let Some(event) = text.strip_prefix(r#"42["chat","#) {
                        let body: Value = serde_json::from_str(event.strip_suffix(']').unwrap_or(event))?;
                        Incoming::Delivery(body.as_str().unwrap_or_default().to_owned())
                    } else {
                        Incoming::Other
                    }
                }
                Target::Channels => {
                    let frame: Value = serde_json::from_str(&text)?;
                    Incoming::Delivery(frame["message"].as_str().unwrap_or_default().to_owned())
                }
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_come_from_base_urls() -> Result<()> {
        assert_eq!(server_address("http://127.0.0.1:8080")?, "127.0.0.1:8080".parse()?);
        assert_eq!(server_address("http://127.0.0.1:3000/")?, "127.0.0.1:3000".parse()?);
        assert!(server_address("http://localhost").is_err());
        Ok(())
    }
}
