//! Micro-benchmarks of the send path's pure steps: parsing a client's `send` frame,
//! checking its body, and serialising the `message` frame (once per message, shared by
//! every socket of the room). `cargo bench -p huddle-gateway --bench frames`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use huddle_domain::{MessageBody, Post, RoomName, StoredMessage};
use huddle_gateway::protocol::{message_frame, parse_client_frame};

fn frames(c: &mut Criterion) {
    let body = "x".repeat(64);
    let send = serde_json::json!({ "type": "send", "body": body, "client_id": "b12345" }).to_string();
    c.bench_function("parse a send frame", |b| b.iter(|| parse_client_frame(black_box(&send))));
    c.bench_function("check a 64-byte body", |b| b.iter(|| MessageBody::parse(black_box(body.clone()))));
    let room = RoomName::parse("lobby").expect("a room name");
    let message = StoredMessage {
        seq: 42,
        post: Post {
            user_id: 7,
            user_name: "ada".into(),
            body: body.clone(),
            sent_at_ms: 1_764_000_000_000,
            client_id: "b12345".into(),
        },
    };
    c.bench_function("serialise a message frame", |b| b.iter(|| message_frame(&room, black_box(&message))));
}

criterion_group!(benches, frames);
criterion_main!(benches);
