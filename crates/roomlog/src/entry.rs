//! The log's record: how a post is stored in a room's stream and published on its
//! channel. An internal format, not the client protocol.

use huddle_domain::{Post, StoredMessage};
use serde::{Deserialize, Serialize};

/// What the log holds for one seq (field `m` of the stream entry). Short field names
/// keep Redis memory and the pub/sub payload small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The sender's account id.
    #[serde(rename = "u")]
    pub user_id: i64,
    /// The sender's name.
    #[serde(rename = "n")]
    pub user_name: String,
    /// The text.
    #[serde(rename = "b")]
    pub body: String,
    /// When the gateway took it (ms since the Unix epoch).
    #[serde(rename = "t")]
    pub sent_at_ms: i64,
    /// The sender's idempotency key, omitted when empty.
    #[serde(rename = "c", default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
}

impl From<&Post> for LogEntry {
    fn from(post: &Post) -> Self {
        Self {
            user_id: post.user_id,
            user_name: post.user_name.clone(),
            body: post.body.clone(),
            sent_at_ms: post.sent_at_ms,
            client_id: post.client_id.clone(),
        }
    }
}

impl From<LogEntry> for Post {
    fn from(entry: LogEntry) -> Self {
        Self {
            user_id: entry.user_id,
            user_name: entry.user_name,
            body: entry.body,
            sent_at_ms: entry.sent_at_ms,
            client_id: entry.client_id,
        }
    }
}

impl LogEntry {
    /// The JSON the log stores for `post`.
    pub fn encode(post: &Post) -> String {
        // Plain strings and integers: serialising cannot fail.
        serde_json::to_string(&Self::from(post)).unwrap_or_default()
    }

    /// The post a stored entry holds.
    pub fn decode(bytes: &[u8]) -> Result<Post, serde_json::Error> {
        serde_json::from_slice::<Self>(bytes).map(Post::from)
    }

    /// The message a stored entry at `seq` holds.
    pub fn decode_at(seq: u64, bytes: &[u8]) -> Result<StoredMessage, serde_json::Error> {
        Self::decode(bytes).map(|post| StoredMessage { seq, post })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_omits_an_empty_client_id() {
        let post =
            Post { user_id: 7, user_name: "ada".into(), body: "hi".into(), sent_at_ms: 5, client_id: String::new() };
        let json = LogEntry::encode(&post);
        assert!(!json.contains("\"c\""), "{json}");
        assert_eq!(json, r#"{"u":7,"n":"ada","b":"hi","t":5}"#);
        assert_eq!(LogEntry::decode(json.as_bytes()).unwrap(), post);
        let with_id = Post { client_id: "c1".into(), ..post };
        assert_eq!(LogEntry::decode(LogEntry::encode(&with_id).as_bytes()).unwrap(), with_id);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Any post survives the log, whatever its text (quotes, control characters,
        /// any Unicode), and a published payload carries it with its seq.
        #[test]
        fn any_post_round_trips(
            user_id in proptest::prelude::any::<i64>(),
            user_name in "\\PC{0,40}",
            body in "\\PC{0,200}",
            sent_at_ms in proptest::prelude::any::<i64>(),
            client_id in "[A-Za-z0-9_:.-]{0,64}",
            seq in 1u64..u64::MAX,
        ) {
            let post = Post { user_id, user_name, body, sent_at_ms, client_id };
            let json = LogEntry::encode(&post);
            proptest::prop_assert_eq!(LogEntry::decode(json.as_bytes()).unwrap(), post.clone());
            let published = crate::parse_published(&format!("{seq} {json}")).unwrap();
            proptest::prop_assert_eq!((published.seq, published.post), (seq, post));
        }

        /// Bytes that are not an entry are an error, never a panic.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = LogEntry::decode(&bytes);
            let _ = crate::parse_published(&String::from_utf8_lossy(&bytes));
        }
    }
}
