//! Huddle's contracts, generated from the `.proto` files in `proto/`.
//!
//! * gRPC services: [`v1::hydrator_server::Hydrator`] / [`v1::hydrator_client::HydratorClient`]
//!   and [`v1::persister_server::Persister`] / [`v1::persister_client::PersisterClient`].
//! * RabbitMQ task payloads: [`v1::FlushRoomTask`], [`v1::PersistChunkTask`],
//!   [`v1::HydrateRoomTask`], encoded with prost.

/// Package `huddle.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("huddle.v1");
}
