//! A client's WebSocket text frame: parsed into a frame or a documented error event.
#![no_main]
use huddle_gateway::protocol::parse_client_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(error) = parse_client_frame(text) {
        let event: serde_json::Value = serde_json::from_str(&error.to_event()).expect("error events are JSON");
        assert!(matches!(event["code"].as_str(), Some("bad_json" | "unknown_type" | "bad_frame")), "{event}");
    }
});
