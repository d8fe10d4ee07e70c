//! The gateway's Prometheus metrics.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge, Histogram, IntCounter,
    IntCounterVec, IntGauge,
};

/// Open WebSocket connections.
pub static CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("huddle_gateway_connections", "Open WebSocket connections").expect("metric registers once")
});

/// Messages accepted (appended to Redis) by this gateway.
pub static MESSAGES_ACCEPTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("huddle_gateway_messages_accepted_total", "Messages appended to Redis")
        .expect("metric registers once")
});

/// Append round-trip time, seconds.
pub static APPEND_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "huddle_gateway_append_seconds",
        "Time to append one message to Redis",
        vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]
    )
    .expect("metric registers once")
});

/// Sockets closed because their outgoing queue overflowed (close code 4008).
pub static SLOW_CONSUMER_CLOSES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("huddle_gateway_slow_consumer_closes_total", "Sockets closed for not reading fast enough")
        .expect("metric registers once")
});

/// Error events sent to clients, by code.
pub static CLIENT_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("huddle_gateway_client_errors_total", "Error events sent to clients", &["code"])
        .expect("metric registers once")
});

/// FlushRoom tasks queued by this gateway, by reason.
pub static FLUSH_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("huddle_gateway_flush_requests_total", "FlushRoom tasks queued", &["reason"])
        .expect("metric registers once")
});

/// Connections reset because a frame could not be written within the write timeout.
pub static STUCK_RESETS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "huddle_gateway_stuck_connection_resets_total",
        "Connections reset because the client stopped reading (a frame waited past the write timeout)"
    )
    .expect("metric registers once")
});

/// Reloads of the revoked-session cache from PostgreSQL (after Redis lost it).
pub static REVOCATION_RELOADS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "huddle_gateway_revocation_reloads_total",
        "Reloads of the revoked-session cache from PostgreSQL after Redis lost it"
    )
    .expect("metric registers once")
});
