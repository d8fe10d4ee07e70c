//! The persister's metrics (OpenTelemetry instruments; names as the Prometheus scrape
//! shows them).

use std::sync::LazyLock;
use std::time::Instant;

use huddle_telemetry::metrics::{counter, elapsed, gauge, seconds, Counter, Gauge, Histogram, KeyValue};

/// Makes the counters that may stay at 0 for long (the trouble counters) show 0 on the
/// scrape from the start, instead of nothing until their first event.
pub fn register() {
    for counter in [&*MESSAGES_WRITTEN, &*SWEEP_FLUSHES, &*MESSAGES_QUARANTINED, &*RANGES_RECLAIMED] {
        counter.add(0, &[]);
    }
}

/// `huddle_persister_messages_written_total`: messages written to PostgreSQL (a chunk
/// written twice counts twice).
pub static MESSAGES_WRITTEN: LazyLock<Counter<u64>> =
    LazyLock::new(|| counter("huddle_persister_messages_written", "Messages sent to PostgreSQL in chunk inserts"));

/// `huddle_persister_chunk_seconds`: time to persist one chunk task.
pub static CHUNK_SECONDS: LazyLock<Histogram<f64>> =
    LazyLock::new(|| seconds("huddle_persister_chunk", "Time to persist one chunk task"));

/// `huddle_persister_sweep_flushes_total`: FlushRoom tasks queued by the sweep.
pub static SWEEP_FLUSHES: LazyLock<Counter<u64>> =
    LazyLock::new(|| counter("huddle_persister_sweep_flushes", "FlushRoom tasks queued by the dirty-room sweep"));

/// `huddle_persister_messages_quarantined_total`: log entries put into quarantine
/// (refused by PostgreSQL or unreadable).
pub static MESSAGES_QUARANTINED: LazyLock<Counter<u64>> = LazyLock::new(|| {
    counter(
        "huddle_persister_messages_quarantined",
        "Log entries PostgreSQL refused (or that could not be decoded), moved to quarantined_messages",
    )
});

/// `huddle_persister_ranges_reclaimed_total`: claimed ranges queued again because their
/// watermark did not move for a whole claim.
pub static RANGES_RECLAIMED: LazyLock<Counter<u64>> = LazyLock::new(|| {
    counter(
        "huddle_persister_ranges_reclaimed",
        "Flush ranges queued again because the watermark did not move for a whole claim (lost or dead-lettered chunk tasks)",
    )
});

/// `huddle_persister_chunk_step_seconds{step}`: `read` (the range from Redis, decoded),
/// `store` (the PostgreSQL transaction), `mark` (the Redis watermark and dirty mark).
pub static CHUNK_STEP_SECONDS: LazyLock<Histogram<f64>> = LazyLock::new(|| {
    seconds(
        "huddle_persister_chunk_step",
        "Time of each step of a chunk task: read (Redis range, decoded), store (PostgreSQL transaction), mark (Redis watermark and dirty mark)",
    )
});

/// Records one step of a chunk task begun at `started`.
pub fn step_done(step: &'static str, started: Instant) {
    CHUNK_STEP_SECONDS.record(elapsed(started), &[KeyValue::new("step", step)]);
}

/// `huddle_persister_unpersisted_messages`: messages in Redis not yet in PostgreSQL, over
/// the dirty rooms the last sweep of this replica saw.
pub static UNPERSISTED_MESSAGES: LazyLock<Gauge<f64>> = LazyLock::new(|| {
    gauge(
        "huddle_persister_unpersisted_messages",
        "Messages in Redis not yet in PostgreSQL, over the dirty rooms this replica's last sweep saw",
    )
});

/// `huddle_persister_oldest_unpersisted_seconds`: how long the longest-dirty room has
/// held unpersisted messages.
pub static OLDEST_UNPERSISTED_SECONDS: LazyLock<Gauge<f64>> = LazyLock::new(|| {
    gauge(
        "huddle_persister_oldest_unpersisted_seconds",
        "Age of the oldest unpersisted message (how long the longest-dirty room has been dirty), at this replica's last sweep",
    )
});

/// `huddle_persister_dirty_rooms`: rooms with unpersisted messages at the last sweep.
pub static DIRTY_ROOMS: LazyLock<Gauge<f64>> = LazyLock::new(|| {
    gauge("huddle_persister_dirty_rooms", "Rooms with unpersisted messages at this replica's last sweep")
});

/// `huddle_persister_redis_shards_unreachable`: Redis Cluster shards whose dirty-room
/// index this replica's last sweep could not read.
pub static REDIS_SHARDS_UNREACHABLE: LazyLock<Gauge<f64>> = LazyLock::new(|| {
    gauge(
        "huddle_persister_redis_shards_unreachable",
        "Redis Cluster shards whose dirty-room index this replica's last sweep could not read (their rooms wait)",
    )
});
