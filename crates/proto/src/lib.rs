//! Huddle's contracts, generated from the `.proto` files in `proto/`.
//!
//! * gRPC services: [`v1::hydrator_server::Hydrator`] / [`v1::hydrator_client::HydratorClient`]
//!   and [`v1::persister_server::Persister`] / [`v1::persister_client::PersisterClient`].
//! * RabbitMQ task payloads: [`v1::FlushRoomTask`], [`v1::PersistChunkTask`],
//!   [`v1::HydrateRoomTask`], encoded with prost.
//! * Conversions between the wire's [`v1::ChatMessage`] and the domain's
//!   [`StoredMessage`](huddle_domain::StoredMessage).
//!
//! * Service-to-service trust: a shared token on every internal call ([`auth`]).
//!
//! It knows the wire formats only: no store, no service.

use huddle_domain::{Post, StoredMessage};

pub mod auth;

/// Package `huddle.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("huddle.v1");
}

impl From<StoredMessage> for v1::ChatMessage {
    fn from(message: StoredMessage) -> Self {
        let post = message.post;
        Self {
            seq: message.seq,
            user_id: post.user_id,
            user_name: post.user_name,
            body: post.body,
            sent_at_ms: post.sent_at_ms,
            client_id: post.client_id,
        }
    }
}

impl From<v1::ChatMessage> for StoredMessage {
    fn from(message: v1::ChatMessage) -> Self {
        Self {
            seq: message.seq,
            post: Post {
                user_id: message.user_id,
                user_name: message.user_name,
                body: message.body,
                sent_at_ms: message.sent_at_ms,
                client_id: message.client_id,
            },
        }
    }
}

/// The encoded descriptors of every Huddle `.proto` file (for server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("huddle_descriptor");

/// The gRPC server reflection service (v1) describing `service` (its full name, e.g.
/// `huddle.v1.Persister`), the standard health service and itself, so `grpcurl` works
/// without `.proto` files and lists only what this server serves.
pub fn reflection_service(
    service: &str,
) -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(service)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .build_v1()
}
