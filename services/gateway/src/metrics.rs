//! The gateway's metrics (OpenTelemetry instruments; names as the Prometheus scrape shows
//! them).

use std::sync::LazyLock;

use huddle_telemetry::metrics::{counter, seconds, up_down, Counter, Histogram, UpDownCounter};

/// Makes the counters that may stay at 0 for long (the trouble counters) show 0 on the
/// scrape from the start, instead of nothing until their first event.
pub fn register() {
    for counter in [&*MESSAGES_ACCEPTED, &*SLOW_CONSUMER_CLOSES, &*STUCK_RESETS, &*REVOCATION_RELOADS] {
        counter.add(0, &[]);
    }
    CONNECTIONS.add(0, &[]);
    ROOMS.add(0, &[]);
}

/// `huddle_gateway_connections`: open WebSocket connections.
pub static CONNECTIONS: LazyLock<UpDownCounter<i64>> =
    LazyLock::new(|| up_down("huddle_gateway_connections", "Open WebSocket connections"));

/// `huddle_gateway_rooms`: room subscriptions of this gateway. Each worker thread has its
/// own pub/sub hub, so a room with sockets on two worker threads counts twice.
pub static ROOMS: LazyLock<UpDownCounter<i64>> = LazyLock::new(|| {
    up_down(
        "huddle_gateway_rooms",
        "Rooms this gateway's worker threads hold sockets in (a room on two worker threads counts twice)",
    )
});

/// `huddle_gateway_messages_accepted_total`: messages appended to Redis (and acked).
pub static MESSAGES_ACCEPTED: LazyLock<Counter<u64>> =
    LazyLock::new(|| counter("huddle_gateway_messages_accepted", "Messages appended to Redis and acked"));

/// `huddle_gateway_sends_refused_total{code}`: send frames refused, by error code.
pub static SENDS_REFUSED: LazyLock<Counter<u64>> =
    LazyLock::new(|| counter("huddle_gateway_sends_refused", "Send frames refused, by error code"));

/// `huddle_gateway_append_seconds`: one append's Redis round trip.
pub static APPEND_SECONDS: LazyLock<Histogram<f64>> =
    LazyLock::new(|| seconds("huddle_gateway_append", "Time to append one message to Redis"));

/// `huddle_gateway_delivery_seconds`: from a message's append (its `sent_at_ms`) to its
/// broadcast being queued on this gateway's sockets.
pub static DELIVERY_SECONDS: LazyLock<Histogram<f64>> = LazyLock::new(|| {
    seconds(
        "huddle_gateway_delivery",
        "Time from a message's append to its broadcast being queued on this gateway's sockets (send to deliver)",
    )
});

/// `huddle_gateway_slow_consumer_closes_total`: sockets closed because their outgoing
/// queue overflowed (close code 4008).
pub static SLOW_CONSUMER_CLOSES: LazyLock<Counter<u64>> =
    LazyLock::new(|| counter("huddle_gateway_slow_consumer_closes", "Sockets closed for not reading fast enough"));

/// `huddle_gateway_client_errors_total{code}`: error events sent to clients.
pub static CLIENT_ERRORS: LazyLock<Counter<u64>> =
    LazyLock::new(|| counter("huddle_gateway_client_errors", "Error events sent to clients, by code"));

/// `huddle_gateway_flush_requests_total{reason}`: FlushRoom tasks queued.
pub static FLUSH_REQUESTS: LazyLock<Counter<u64>> =
    LazyLock::new(|| counter("huddle_gateway_flush_requests", "FlushRoom tasks queued, by reason"));

/// `huddle_gateway_pubsub_overflows_total`: on a Redis Cluster, times a worker thread's
/// pub/sub backlog was full, so pushes were dropped and every room on it resynced.
pub static PUBSUB_OVERFLOWS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    counter(
        "huddle_gateway_pubsub_overflows",
        "Redis Cluster pub/sub pushes dropped because a worker thread fell behind (its rooms then resync from the log)",
    )
});

/// `huddle_gateway_stuck_connection_resets_total`: connections reset because a frame
/// could not be written within the write timeout.
pub static STUCK_RESETS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    counter(
        "huddle_gateway_stuck_connection_resets",
        "Connections reset because a frame waited past the write timeout (the client read too slowly or not at all)",
    )
});

/// `huddle_gateway_revocation_reloads_total`: reloads of the revoked-session cache from
/// PostgreSQL (after Redis lost it).
pub static REVOCATION_RELOADS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    counter(
        "huddle_gateway_revocation_reloads",
        "Reloads of the revoked-session cache from PostgreSQL after Redis lost it",
    )
});

/// `huddle_grpc_client_seconds{method, code}`: the gateway's calls to the hydrator.
pub static GRPC_CLIENT_SECONDS: LazyLock<Histogram<f64>> =
    LazyLock::new(|| seconds("huddle_grpc_client", "Internal gRPC calls made, by method and status code"));
