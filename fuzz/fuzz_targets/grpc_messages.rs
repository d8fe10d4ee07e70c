//! gRPC messages between the services: decoded or refused, and a decoded ChatMessage
//! converts to the domain's message and back unchanged.
#![no_main]
use huddle_domain::{RoomName, StoredMessage};
use huddle_proto::v1::{ChatMessage, FlushRoomRequest, GetHistoryRequest, GetHistoryResponse, HydrateRoomRequest, RoomStatusRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = HydrateRoomRequest::decode(data) {
        let _ = RoomName::parse(&request.room);
    }
    if let Ok(request) = GetHistoryRequest::decode(data) {
        let _ = RoomName::parse(&request.room);
    }
    let _ = FlushRoomRequest::decode(data);
    let _ = RoomStatusRequest::decode(data);
    if let Ok(response) = GetHistoryResponse::decode(data) {
        for message in response.messages {
            let stored = StoredMessage::from(message.clone());
            assert_eq!(ChatMessage::from(stored), message);
        }
    }
});
