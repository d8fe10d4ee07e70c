//! Room names, usernames, message bodies and client_ids: accepted or refused, and what is
//! accepted is stable (a parsed username is its own normal form).
#![no_main]
use huddle_domain::{validate_client_id, MessageBody, RoomName, Username};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(room) = RoomName::parse(&text) {
        assert_eq!(RoomName::parse(room.as_str()).as_ref(), Ok(&room));
    }
    if let Ok(name) = Username::parse(&text) {
        let again = Username::parse(name.as_str()).expect("a normal form parses");
        assert_eq!(again.as_str(), name.as_str());
        assert_eq!(again.lookalike_key(), name.lookalike_key());
    }
    if let Ok(body) = MessageBody::parse(text.to_string()) {
        assert_eq!(body.into_inner(), text);
    }
    let _ = validate_client_id(&text);
});
