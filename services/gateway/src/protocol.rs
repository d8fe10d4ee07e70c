//! The WebSocket protocol: JSON text frames with a `type` field (docs/PROTOCOL.md).

use std::sync::Arc;

use bytestring::ByteString;

use huddle_domain::{rfc3339_from_ms, RoomName, StoredMessage};
use serde::{Deserialize, Serialize};

/// Close code: the server is restarting; reconnect (with `since`).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;
/// Close code: the socket's session ended (logout, revocation or expiry); log in again.
pub const CLOSE_SESSION_ENDED: u16 = 4001;
/// Close code: the client did not read its messages fast enough.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// Frames a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Post a message.
    Send {
        /// The message text, checked against the body rules before it is stored.
        body: String,
        /// The sender's idempotency key; empty (the default) for none.
        #[serde(default)]
        client_id: String,
    },
    /// The user is typing (ephemeral, not stored).
    Typing {},
    /// Page older history.
    History {
        /// Return messages with a seq below this; 0 (the default) for the newest.
        #[serde(default)]
        before_seq: u64,
        /// How many messages to return; 0 (the default) means 50, and at most 200 come back.
        #[serde(default)]
        limit: u32,
    },
    /// Keep-alive; answered with `pong`.
    Ping {},
}

/// The frame types a client may send, for telling "unknown type" from "bad fields".
const CLIENT_TYPES: [&str; 4] = ["send", "typing", "history", "ping"];

/// Why a text frame could not be understood.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not JSON, or not an object with a string `type`.
    BadJson(String),
    /// A `type` this server does not know.
    UnknownType(String),
    /// A known type with missing or malformed fields.
    BadFrame(String),
}

impl FrameError {
    /// The error event for this failure.
    pub fn to_event(&self) -> String {
        match self {
            FrameError::BadJson(detail) => error_frame("bad_json", detail),
            FrameError::UnknownType(kind) => error_frame("unknown_type", &format!("unknown frame type {kind:?}")),
            FrameError::BadFrame(detail) => error_frame("bad_frame", detail),
        }
    }
}

/// Parses one client text frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| FrameError::BadJson(e.to_string()))?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| FrameError::BadJson("expected an object with a string \"type\"".into()))?;
    if !CLIENT_TYPES.contains(&kind) {
        return Err(FrameError::UnknownType(kind.to_owned()));
    }
    serde_json::from_value(value).map_err(|e| FrameError::BadFrame(e.to_string()))
}

/// A user as clients see one.
#[derive(Debug, Serialize)]
pub struct UserView<'a> {
    /// The user's account id.
    pub id: i64,
    /// The user's name.
    pub name: &'a str,
}

/// A message as clients see one (inside `message` and `history` frames).
#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    /// The room's name.
    pub room: &'a str,
    /// Position in the room: 1, 2, 3, … without gaps.
    pub seq: u64,
    /// Who sent it (their name at the time).
    pub user: UserView<'a>,
    /// The text as sent, to be rendered as plain text.
    pub body: &'a str,
    /// When the gateway took it: RFC 3339 UTC with milliseconds.
    pub sent_at: String,
    /// The sender's idempotency key (`""` if it sent none).
    pub client_id: &'a str,
}

impl<'a> MessageView<'a> {
    /// The view of a stored message.
    pub fn new(room: &'a RoomName, message: &'a StoredMessage) -> Self {
        Self {
            room: room.as_str(),
            seq: message.seq,
            user: UserView { id: message.post.user_id, name: &message.post.user_name },
            body: &message.post.body,
            sent_at: rfc3339_from_ms(message.post.sent_at_ms),
            client_id: &message.post.client_id,
        }
    }
}

#[derive(Serialize)]
struct Tagged<T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    inner: T,
}

fn tagged(kind: &'static str, inner: impl Serialize) -> String {
    serde_json::to_string(&Tagged { kind, inner }).expect("frames always serialise")
}

/// `message` frame, built once per message and shared by every local recipient.
pub fn message_frame(room: &RoomName, message: &StoredMessage) -> ByteString {
    tagged("message", MessageView::new(room, message)).into()
}

/// How a `history` frame came about.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HistoryMode {
    /// The latest messages, sent on join.
    Latest,
    /// An older page the client asked for.
    Page,
    /// Recovery after a reconnect with `since`: exactly the messages after it.
    Since,
}

#[derive(Serialize)]
struct HistoryBody<'a> {
    room: &'a str,
    mode: HistoryMode,
    messages: Vec<MessageView<'a>>,
    has_more: bool,
    epoch: i64,
}

/// `history` frame: `messages` oldest first. `epoch` names the room's current seq
/// lineage: a client reconnecting with `since` passes it back, so a view from before a
/// Redis loss (whose seqs may be reused) gets a `latest` history instead.
pub fn history_frame(
    room: &RoomName,
    mode: HistoryMode,
    messages: &[StoredMessage],
    has_more: bool,
    epoch: i64,
) -> String {
    tagged(
        "history",
        HistoryBody {
            room: room.as_str(),
            mode,
            messages: messages.iter().map(|m| MessageView::new(room, m)).collect(),
            has_more,
            epoch,
        },
    )
}

#[derive(Serialize)]
struct AckBody<'a> {
    client_id: &'a str,
    seq: u64,
    duplicate: bool,
}

/// `ack` frame to the sender.
pub fn ack_frame(client_id: &str, seq: u64, duplicate: bool) -> String {
    tagged("ack", AckBody { client_id, seq, duplicate })
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
}

/// `error` frame.
pub fn error_frame(code: &str, message: &str) -> String {
    tagged("error", ErrorBody { code, message, client_id: None })
}

/// `error` frame about one `send`, naming its client_id so the client can match it.
pub fn send_error_frame(code: &str, message: &str, client_id: &str) -> String {
    tagged("error", ErrorBody { code, message, client_id: Some(client_id).filter(|c| !c.is_empty()) })
}

#[derive(Serialize)]
struct TypingBody<'a> {
    room: &'a str,
    user: UserView<'a>,
}

/// `typing` frame.
pub fn typing_frame(room: &RoomName, user_id: i64, user_name: &str) -> Arc<str> {
    tagged("typing", TypingBody { room: room.as_str(), user: UserView { id: user_id, name: user_name } }).into()
}

/// What a `presence` frame reports.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    /// Who is online, sent once after the join's history.
    Snapshot,
    /// A user's first socket entered the room.
    Joined,
    /// A user's last socket left the room.
    Left,
}

#[derive(Serialize)]
struct PresenceBody<'a> {
    room: &'a str,
    event: PresenceEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<Vec<UserView<'a>>>,
}

/// `presence` snapshot: everyone online, sent to a socket once after its join's history.
pub fn presence_snapshot_frame(room: &RoomName, online: &[(i64, String)]) -> String {
    tagged(
        "presence",
        PresenceBody {
            room: room.as_str(),
            event: PresenceEvent::Snapshot,
            user: None,
            online: Some(online.iter().map(|(id, name)| UserView { id: *id, name }).collect()),
        },
    )
}

/// `presence` change: one user joined or left. It carries only that user, so a wave of N
/// joins costs N frames to each member, not N lists of up to N users.
pub fn presence_change_frame(room: &RoomName, event: PresenceEvent, user_id: i64, user_name: &str) -> String {
    tagged(
        "presence",
        PresenceBody {
            room: room.as_str(),
            event,
            user: Some(UserView { id: user_id, name: user_name }),
            online: None,
        },
    )
}

/// `pong` frame.
pub fn pong_frame() -> String {
    r#"{"type":"pong"}"#.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_frames() {
        assert!(matches!(
            parse_client_frame(r#"{"type":"send","body":"hi","client_id":"c1"}"#),
            Ok(ClientFrame::Send { body, client_id }) if body == "hi" && client_id == "c1"
        ));
        assert!(matches!(parse_client_frame(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping {})));
        assert!(matches!(
            parse_client_frame(r#"{"type":"history","before_seq":10}"#),
            Ok(ClientFrame::History { before_seq: 10, limit: 0 })
        ));
    }

    #[test]
    fn classifies_bad_frames() {
        assert!(matches!(parse_client_frame("not json"), Err(FrameError::BadJson(_))));
        assert!(matches!(parse_client_frame("[1]"), Err(FrameError::BadJson(_))));
        assert!(matches!(parse_client_frame(r#"{"type":"dance"}"#), Err(FrameError::UnknownType(t)) if t == "dance"));
        assert!(matches!(parse_client_frame(r#"{"type":"send"}"#), Err(FrameError::BadFrame(_))));
        assert!(matches!(parse_client_frame(r#"{"type":"send","body":5}"#), Err(FrameError::BadFrame(_))));
    }

    #[test]
    fn message_frame_shape() {
        let room = RoomName::parse("lobby").unwrap();
        let message = StoredMessage {
            seq: 3,
            post: huddle_domain::Post {
                user_id: 9,
                user_name: "ada".into(),
                body: "<b>hi</b>".into(),
                sent_at_ms: 0,
                client_id: "c".into(),
            },
        };
        let frame: serde_json::Value = serde_json::from_str(&message_frame(&room, &message)).unwrap();
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["seq"], 3);
        assert_eq!(frame["user"]["name"], "ada");
        assert_eq!(frame["body"], "<b>hi</b>");
        assert_eq!(frame["sent_at"], "1970-01-01T00:00:00Z");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Any text: a frame or one of the documented errors, never a panic.
        #[test]
        fn any_text_parses_or_gets_a_documented_error(text in "\\PC{0,200}|\\{\"type\":\"[a-z]{0,8}\"(,\"[a-z_]{1,10}\":(1|\"x\"|null|\\[\\]))*\\}") {
            match parse_client_frame(&text) {
                Ok(_) => {}
                Err(error) => {
                    let event: serde_json::Value = serde_json::from_str(&error.to_event()).unwrap();
                    let code = event["code"].as_str().unwrap_or_default().to_owned();
                    proptest::prop_assert!(["bad_json", "unknown_type", "bad_frame"].contains(&code.as_str()), "{}", code);
                }
            }
        }

        /// A send frame carries its body and client_id through parsing exactly.
        #[test]
        fn send_frames_keep_their_text(body in "\\PC{0,100}", client_id in "\\PC{0,20}") {
            let frame = serde_json::json!({ "type": "send", "body": body, "client_id": client_id }).to_string();
            match parse_client_frame(&frame) {
                Ok(ClientFrame::Send { body: parsed, client_id: parsed_id }) => {
                    proptest::prop_assert_eq!((parsed, parsed_id), (body, client_id));
                }
                other => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }
}
