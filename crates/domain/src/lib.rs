//! Huddle's domain: the validated names and values every service agrees on.
//!
//! Anything that crosses a trust boundary (a room name in a URL, a username at
//! registration, a message body on a socket) is parsed into one of these types first,
//! so the rest of the code never handles unchecked input. A [`Post`] and its
//! [`StoredMessage`] are the chat's own message types.
//!
//! It knows no storage and no transport: no Redis, PostgreSQL, AMQP, HTTP or wire
//! format. Each store keeps its own record type and converts at its edge.

use time::format_description::well_known::Rfc3339;

/// Longest message body accepted, in bytes of UTF-8.
pub const MAX_BODY_BYTES: usize = 4000;
/// Longest room name accepted.
pub const MAX_ROOM_LEN: usize = 64;
/// Messages in a history page when the client asks for none (`limit` 0).
pub const DEFAULT_PAGE_LEN: u32 = 50;
/// The most messages a history page holds, whatever the client asks for.
pub const MAX_PAGE_LEN: u32 = 200;

/// How many messages a history page asked for with `limit` holds at most.
pub fn page_len(limit: u32) -> usize {
    (if limit == 0 { DEFAULT_PAGE_LEN } else { limit.min(MAX_PAGE_LEN) }) as usize
}

/// What a read of the Redis log covered: the entries it returned, readable or not (an
/// entry that cannot be decoded is left out of the messages but still counts here), and
/// the lowest of their seqs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    /// Entries returned.
    pub entries: usize,
    /// The lowest seq among them; `None` when there were none.
    pub lowest_seq: Option<u64>,
}

/// What a history page of `len` messages below `before` (0: the newest) still lacks
/// once Redis returned its newest entries for it (`held`): the `count` newest messages
/// with seq below `before_seq` (0: no bound), which only the archive holds. `None` when
/// Redis filled the page or reached the room's first message.
///
/// The gateway and the hydrator both page this way: Redis first, the archive only below
/// Redis's oldest entry.
pub fn page_remainder(before: u64, len: usize, held: Held) -> Option<PageRemainder> {
    let reaches_the_first = held.lowest_seq == Some(1);
    (held.entries < len && !reaches_the_first)
        .then(|| PageRemainder { before_seq: held.lowest_seq.unwrap_or(before), count: len - held.entries })
}

/// The older part of a history page, below what Redis holds ([`page_remainder`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRemainder {
    /// Messages with a seq below this one (0: no bound).
    pub before_seq: u64,
    /// How many of the newest of them.
    pub count: usize,
}

/// A whole history page, oldest first: the archive's part (`older`, see
/// [`page_remainder`]) then Redis's (`from_redis`, of the read that `held` describes), and
/// whether the room has messages below it.
pub fn join_page(
    mut older: Vec<StoredMessage>,
    mut from_redis: Vec<StoredMessage>,
    held: Held,
) -> (Vec<StoredMessage>, bool) {
    let lowest = older.first().map(|m| m.seq).or(held.lowest_seq);
    older.append(&mut from_redis);
    (older, lowest.is_some_and(|seq| seq > 1))
}

/// Why an input was refused. [`ValidationError::code`] is the stable, documented code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A room name that is not a slug of the form [`RoomName::parse`] accepts.
    #[error("room names are 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    BadRoomName,
    /// A username outside 3-32 characters of ASCII letters, digits, `_`, `-` and `.`.
    #[error("usernames are 3-32 characters of letters, digits, '_', '-' and '.'")]
    BadUsername,
    /// A password shorter than 8 or longer than 128 characters.
    #[error("passwords are 8-128 characters")]
    BadPassword,
    /// A message body that is empty or only whitespace.
    #[error("message body is empty")]
    EmptyBody,
    /// A message body over [`MAX_BODY_BYTES`] bytes of UTF-8.
    #[error("message body is longer than {MAX_BODY_BYTES} bytes")]
    BodyTooLong,
    /// A message body containing U+0000, which PostgreSQL `text` cannot store.
    #[error("message body contains a NUL character (U+0000), which cannot be stored")]
    NulInBody,
    /// A client_id over 64 characters or with a character outside `[A-Za-z0-9_:.-]`.
    #[error("client_id is at most 64 characters of letters, digits, '-', '_', ':' and '.'")]
    BadClientId,
}

impl ValidationError {
    /// Machine-readable error code, as documented in docs/PROTOCOL.md.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRoomName => "bad_room",
            Self::BadUsername => "bad_username",
            Self::BadPassword => "bad_password",
            Self::EmptyBody => "empty_body",
            Self::BodyTooLong => "body_too_long",
            Self::NulInBody => "bad_body",
            Self::BadClientId => "bad_client_id",
        }
    }
}

/// A room name: a lowercase slug, safe inside Redis keys, URLs and log lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

impl RoomName {
    /// Parses a slug: `[a-z0-9][a-z0-9_-]{0,63}`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let valid = !raw.is_empty()
            && raw.len() <= MAX_ROOM_LEN
            && raw.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::BadRoomName)
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RoomName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A username as chosen at registration: NFKC-normalised, then 3-32 characters of ASCII
/// letters, digits, `_`, `-` and `.` (case is kept). Two names conflict when they are equal
/// ignoring case, or when they look alike ([`Username::lookalike_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

/// Longest raw username looked at before normalising, in bytes: far above any name that
/// could pass, so an oversized input is refused without normalising it.
const MAX_RAW_USERNAME_BYTES: usize = 256;

impl Username {
    /// Normalises `raw` to NFKC (so `ａｄａ`, in full-width letters, is `ada`) and accepts
    /// 3-32 characters of ASCII letters, digits, `_`, `-` and `.`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        use unicode_normalization::UnicodeNormalization;
        if raw.len() > MAX_RAW_USERNAME_BYTES {
            return Err(ValidationError::BadUsername);
        }
        let name: String = raw.nfkc().collect();
        let valid = (3..=32).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if valid {
            Ok(Self(name))
        } else {
            Err(ValidationError::BadUsername)
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the name looks like: its Unicode confusable skeleton (UTS #39), lowercased.
    /// Names with the same key are look-alikes (`paypal` and `paypa1`, `Ian` and `lan`,
    /// `rn` and `m`), and only the first of them may be registered.
    pub fn lookalike_key(&self) -> String {
        unicode_security::confusable_detection::skeleton(&self.0).collect::<String>().to_lowercase()
    }
}

/// Checks a password's length (8-128 characters); strength policy beyond that is the user's.
pub fn validate_password(raw: &str) -> Result<(), ValidationError> {
    if (8..=128).contains(&raw.chars().count()) {
        Ok(())
    } else {
        Err(ValidationError::BadPassword)
    }
}

/// A message body: plain text, not blank, at most [`MAX_BODY_BYTES`], without NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBody(String);

impl MessageBody {
    /// Accepts any text that is not only whitespace, fits the size cap and holds no NUL
    /// (PostgreSQL `text` cannot store U+0000; every other Unicode scalar it can). The
    /// text is kept as sent (no trimming): it is rendered as text, never as HTML.
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        if raw.trim().is_empty() {
            Err(ValidationError::EmptyBody)
        } else if raw.len() > MAX_BODY_BYTES {
            Err(ValidationError::BodyTooLong)
        } else if raw.contains('\0') {
            Err(ValidationError::NulInBody)
        } else {
            Ok(Self(raw))
        }
    }

    /// The body as text.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A client's idempotency key for a send: up to 64 characters of `[A-Za-z0-9_:.-]`.
pub fn validate_client_id(raw: &str) -> Result<(), ValidationError> {
    let valid =
        raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(ValidationError::BadClientId)
    }
}

/// What a user posts to a room: the message before the room gives it a seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// The sender's account id.
    pub user_id: i64,
    /// The sender's name when they sent it.
    pub user_name: String,
    /// The text, as sent ([`MessageBody`] rules).
    pub body: String,
    /// When the gateway took it, in ms since the Unix epoch.
    pub sent_at_ms: i64,
    /// The sender's idempotency key (empty: none); unique per (room, sender).
    pub client_id: String,
}

/// A post with the seq its room gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Position in the room: 1, 2, 3, … without gaps.
    pub seq: u64,
    /// What was posted.
    pub post: Post,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Formats epoch milliseconds as an RFC 3339 UTC timestamp with millisecond precision.
pub fn rfc3339_from_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_slugs() {
        for good in ["lobby", "a", "room-1", "0day", "x_y", &"a".repeat(64)] {
            assert!(RoomName::parse(good).is_ok(), "{good} should be accepted");
        }
        for bad in ["", "Lobby", "-x", "_x", "a b", "a/b", "{x}", "é", &"a".repeat(65)] {
            assert_eq!(RoomName::parse(bad), Err(ValidationError::BadRoomName), "{bad}");
        }
    }

    #[test]
    fn names_read_back_as_given() {
        let room = RoomName::parse("team-42").unwrap();
        assert_eq!((room.as_str(), room.to_string().as_str()), ("team-42", "team-42"));
        assert_eq!(Username::parse("Ada.L").unwrap().as_str(), "Ada.L");
    }

    #[test]
    fn passwords_are_8_to_128_characters() {
        assert_eq!(validate_password("1234567"), Err(ValidationError::BadPassword));
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password(&"é".repeat(128)).is_ok(), "characters, not bytes");
        assert_eq!(validate_password(&"x".repeat(129)), Err(ValidationError::BadPassword));
    }

    #[test]
    fn now_is_the_wall_clock_in_milliseconds() {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        assert!((now_ms() - wall).abs() < 5_000, "now_ms {} vs wall clock {wall}", now_ms());
    }

    #[test]
    fn usernames() {
        assert!(Username::parse("Ada.L_1").is_ok());
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse("has space").is_err());
        assert!(Username::parse(&"x".repeat(33)).is_err());
        assert!(Username::parse("ad\u{0}a").is_err());
        assert!(Username::parse(&"ａ".repeat(1000)).is_err(), "oversized input is refused before normalising");
    }

    #[test]
    fn usernames_are_nfkc_normalised() {
        assert_eq!(Username::parse("ａｄａ").unwrap().as_str(), "ada", "full-width letters");
        assert_eq!(Username::parse("ﬁona").unwrap().as_str(), "fiona", "the fi ligature");
        assert!(Username::parse("аda").is_err(), "a Cyrillic а stays Cyrillic, and is refused");
    }

    #[test]
    fn lookalike_names_share_a_key() {
        let key = |name: &str| Username::parse(name).unwrap().lookalike_key();
        for (a, b) in [("paypal", "paypa1"), ("Ian", "lan"), ("modern", "rnodern"), ("user0", "userO"), ("Ada", "ada")]
        {
            assert_eq!(key(a), key(b), "{a} and {b} look alike");
        }
        for (a, b) in [("ada", "bob"), ("alice", "alicia"), ("user1", "user2")] {
            assert_ne!(key(a), key(b), "{a} and {b} are told apart");
        }
    }

    #[test]
    fn bodies_are_capped_and_not_blank() {
        assert_eq!(MessageBody::parse(" \n\t".into()), Err(ValidationError::EmptyBody));
        assert_eq!(MessageBody::parse("x".repeat(MAX_BODY_BYTES + 1)), Err(ValidationError::BodyTooLong));
        assert!(MessageBody::parse("x".repeat(MAX_BODY_BYTES)).is_ok());
        assert_eq!(MessageBody::parse(" hi ".into()).unwrap().into_inner(), " hi ");
        assert_eq!(MessageBody::parse("a\0b".into()), Err(ValidationError::NulInBody));
        assert_eq!(ValidationError::NulInBody.code(), "bad_body");
        // Everything else PostgreSQL's UTF-8 text can hold is kept as sent.
        let unusual = "\u{1}\u{7f}\u{feff}\u{fffd}\u{10ffff}\u{202e}😀";
        assert_eq!(MessageBody::parse(unusual.into()).unwrap().into_inner(), unusual);
    }

    #[test]
    fn client_ids() {
        assert!(validate_client_id("").is_ok());
        assert!(validate_client_id("c-1:abc.9").is_ok());
        assert!(validate_client_id("a b").is_err());
        assert!(validate_client_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn a_page_holds_50_by_default_and_200_at_most() {
        assert_eq!([0, 1, 200, 201, u32::MAX].map(page_len), [50, 1, 200, 200, 200]);
    }

    fn messages(seqs: std::ops::RangeInclusive<u64>) -> Vec<StoredMessage> {
        seqs.map(|seq| StoredMessage {
            seq,
            post: Post {
                user_id: 1,
                user_name: "ada".into(),
                body: seq.to_string(),
                sent_at_ms: 0,
                client_id: String::new(),
            },
        })
        .collect()
    }

    /// What a read that returned exactly these seqs covered.
    fn held(seqs: std::ops::RangeInclusive<u64>) -> Held {
        Held { entries: seqs.clone().count(), lowest_seq: seqs.min() }
    }

    #[test]
    fn a_page_redis_fills_or_starts_needs_no_archive() {
        assert_eq!(page_remainder(0, 3, held(8..=10)), None);
        assert_eq!(page_remainder(50, 10, held(1..=4)), None, "seq 1 is the room's first");
    }

    #[test]
    fn the_archive_continues_a_page_below_the_oldest_entry_redis_holds() {
        assert_eq!(page_remainder(0, 50, held(41..=60)), Some(PageRemainder { before_seq: 41, count: 30 }));
        // Redis holds nothing of the page: the archive serves it whole, below `before`
        // (0 stays "no bound").
        assert_eq!(page_remainder(30, 5, Held::default()), Some(PageRemainder { before_seq: 30, count: 5 }));
        assert_eq!(page_remainder(0, 5, Held::default()), Some(PageRemainder { before_seq: 0, count: 5 }));
    }

    #[test]
    fn entries_redis_holds_but_cannot_decode_still_count_as_held() {
        // Seq 9 of 8..=10 could not be decoded: the page is short by it, and the archive,
        // which holds nothing above Redis's oldest entry, is not asked for more.
        assert_eq!(page_remainder(0, 3, held(8..=10)), None);
        // Seq 1 could not be decoded: the read still reached the room's first message.
        assert_eq!(page_remainder(0, 10, held(1..=4)), None);
        let (page, has_more) = join_page(Vec::new(), messages(2..=4), held(1..=4));
        assert_eq!((page.len(), has_more), (3, false));
    }

    #[test]
    fn a_joined_page_is_in_seq_order_and_knows_what_lies_below() {
        let (page, has_more) = join_page(messages(31..=40), messages(41..=60), held(41..=60));
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), (31..=60).collect::<Vec<_>>());
        assert!(has_more);
        assert!(join_page(Vec::new(), messages(41..=60), held(41..=60)).1);
        assert!(!join_page(messages(1..=3), messages(4..=5), held(4..=5)).1);
        assert!(!join_page(Vec::new(), Vec::new(), Held::default()).1);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_from_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Room names: accepted exactly when they are the documented slug.
        #[test]
        fn room_names_are_exactly_the_slugs(raw in "\\PC{0,70}|[a-z0-9_-]{0,70}") {
            let slug = !raw.is_empty()
                && raw.len() <= MAX_ROOM_LEN
                && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
                && raw.as_bytes()[0].is_ascii_alphanumeric();
            proptest::prop_assert_eq!(RoomName::parse(&raw).is_ok(), slug);
        }

        /// Usernames: a parsed name is its own normal form, and parsing never panics.
        #[test]
        fn usernames_are_stable_under_parsing(raw in "\\PC{0,40}|[A-Za-z0-9_.-]{0,40}") {
            if let Ok(name) = Username::parse(&raw) {
                let again = Username::parse(name.as_str()).unwrap();
                proptest::prop_assert_eq!(again.as_str(), name.as_str());
                proptest::prop_assert_eq!(again.lookalike_key(), name.lookalike_key());
                proptest::prop_assert!(name.as_str().is_ascii());
            }
        }

        /// Bodies: refused exactly when blank, too long or holding NUL; kept as sent.
        #[test]
        fn bodies_are_kept_or_refused_with_their_reason(raw in "\\PC{0,50}|[ \\x00a]{0,5}|.{3990,4010}") {
            match MessageBody::parse(raw.clone()) {
                Ok(body) => proptest::prop_assert_eq!(body.into_inner(), raw),
                Err(ValidationError::EmptyBody) => proptest::prop_assert!(raw.trim().is_empty()),
                Err(ValidationError::BodyTooLong) => proptest::prop_assert!(raw.len() > MAX_BODY_BYTES),
                Err(ValidationError::NulInBody) => proptest::prop_assert!(raw.contains('\0')),
                Err(other) => proptest::prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }
}
