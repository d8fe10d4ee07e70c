//! What the gateway reads back from Redis: stream entries and pub/sub payloads.
#![no_main]
use huddle_roomlog::{parse_published, LogEntry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(post) = LogEntry::decode(data) {
        assert_eq!(LogEntry::decode(LogEntry::encode(&post).as_bytes()).ok(), Some(post));
    }
    let _ = parse_published(&String::from_utf8_lossy(data));
});
