//! The persister's Prometheus metrics.

use std::sync::LazyLock;

use prometheus::{register_histogram, register_int_counter, Histogram, IntCounter};

/// Messages written to PostgreSQL (a chunk written twice counts twice).
pub static MESSAGES_WRITTEN: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("huddle_persister_messages_written_total", "Messages sent to PostgreSQL in chunk inserts")
        .expect("metric registers once")
});

/// Time to write one chunk, seconds.
pub static CHUNK_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!("huddle_persister_chunk_seconds", "Time to persist one chunk task")
        .expect("metric registers once")
});

/// FlushRoom tasks queued by the sweep.
pub static SWEEP_FLUSHES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("huddle_persister_sweep_flushes_total", "FlushRoom tasks queued by the dirty-room sweep")
        .expect("metric registers once")
});

/// Log entries put into quarantine (refused by PostgreSQL or unreadable).
pub static MESSAGES_QUARANTINED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "huddle_persister_messages_quarantined_total",
        "Log entries PostgreSQL refused (or that could not be decoded), moved to quarantined_messages"
    )
    .expect("metric registers once")
});

/// Claimed ranges queued again because their watermark did not move for a whole claim.
pub static RANGES_RECLAIMED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "huddle_persister_ranges_reclaimed_total",
        "Flush ranges queued again because the watermark did not move for a whole claim (lost or dead-lettered chunk tasks)"
    )
    .expect("metric registers once")
});

/// Time of each step of a chunk task, seconds: `read` (the range from Redis, decoded),
/// `store` (the PostgreSQL transaction), `mark` (the Redis watermark, trim and dirty mark).
pub static CHUNK_STEP_SECONDS: LazyLock<prometheus::HistogramVec> = LazyLock::new(|| {
    prometheus::register_histogram_vec!(
        "huddle_persister_chunk_step_seconds",
        "Time of each step of a chunk task: read (Redis range, decoded), store (PostgreSQL transaction), mark (Redis watermark and dirty mark)",
        &["step"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
    )
    .expect("metric registers once")
});
