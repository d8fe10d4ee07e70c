//! The dirty-room sweep: re-queues a FlushRoom for every room with unpersisted messages,
//! so nothing is stranded when a gateway dies before its room empties. One replica
//! sweeps per interval (a Redis lock); claims in Redis stop a sweep from re-queuing a
//! range that a flush already fanned out.

use std::time::Duration;

use huddle_broker::{Broker, TaskQueue};
use huddle_domain::RoomName;
use huddle_proto::v1::FlushRoomTask;
use huddle_roomlog::RoomLog;
use tokio::sync::watch;

use crate::metrics::{
    DIRTY_ROOMS, OLDEST_UNPERSISTED_SECONDS, REDIS_SHARDS_UNREACHABLE, SWEEP_FLUSHES, UNPERSISTED_MESSAGES,
};

/// Rooms re-queued per sweep at most; the rest wait for the next one.
const ROOMS_PER_SWEEP: usize = 10_000;

/// Sweeps every `interval` until `stopped` turns true.
pub async fn run(log: RoomLog, broker: Broker, interval: Duration, mut stopped: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {},
            _ = stopped.wait_for(|stop| *stop) => break,
        }
        if let Err(error) = sweep_once(&log, &broker, interval).await {
            tracing::warn!(%error, "sweep failed");
        }
    }
}

async fn sweep_once(log: &RoomLog, broker: &Broker, interval: Duration) -> Result<(), String> {
    let dirty = log.dirty_rooms(ROOMS_PER_SWEEP).await.map_err(|e| e.to_string())?;
    REDIS_SHARDS_UNREACHABLE.record(dirty.unreachable.len() as f64, &[]);
    for error in &dirty.unreachable {
        tracing::warn!(%error, "a redis shard did not answer the sweep; its rooms wait for a later one");
    }
    let rooms = dirty.rooms;
    // Without a shard the lag would look smaller than it is (and reading it would wait on
    // that shard again): the gauges keep their values, and the shard gauge says why. They
    // are not worth a sweep either: the flushes are queued even if reporting fails.
    if dirty.unreachable.is_empty() {
        if let Err(error) = report_lag(log, &rooms).await {
            tracing::warn!(%error, "persist lag not reported");
        }
    }
    let lock_ttl = (interval.as_millis() as u64).saturating_sub(50).max(1);
    // The lock is left to expire: that is what spaces sweeps across replicas. On a Redis
    // Cluster it lives on one shard; while that shard is down every replica sweeps: their
    // flushes are idempotent (the flush claims keep a range from being queued twice), and
    // without that the other shards' rooms would never be swept.
    let _lock = match log.try_lock(log.keys().lock("sweep"), lock_ttl).await {
        Ok(Some(lock)) => Some(lock),
        Ok(None) => return Ok(()),
        Err(error) => {
            tracing::warn!(%error, "the sweep lock cannot be taken; sweeping without it");
            None
        }
    };
    if rooms.is_empty() {
        return Ok(());
    }
    let now = huddle_domain::now_ms();
    let tasks: Vec<FlushRoomTask> = rooms
        .iter()
        .map(|(room, _)| FlushRoomTask { room: room.to_string(), reason: "sweep".into(), requested_at_ms: now })
        .collect();
    broker.publish(TaskQueue::Flush, &tasks).await.map_err(|e| e.to_string())?;
    SWEEP_FLUSHES.add(tasks.len() as u64, &[]);
    tracing::debug!(rooms = tasks.len(), "sweep queued flushes");
    Ok(())
}

/// Sets the persist-lag gauges from the dirty index. Every replica reports on every tick
/// (not only the one holding the sweep lock), so no replica's gauges go stale.
async fn report_lag(log: &RoomLog, rooms: &[(RoomName, i64)]) -> Result<(), String> {
    let oldest_ms = rooms.first().map(|(_, since)| huddle_domain::now_ms().saturating_sub(*since).max(0)).unwrap_or(0);
    let names: Vec<RoomName> = rooms.iter().map(|(room, _)| room.clone()).collect();
    let lag = log.unpersisted(&names).await.map_err(|e| e.to_string())?;
    UNPERSISTED_MESSAGES.record(lag.messages as f64, &[]);
    DIRTY_ROOMS.record(lag.dirty_rooms as f64, &[]);
    OLDEST_UNPERSISTED_SECONDS.record(oldest_ms as f64 / 1000.0, &[]);
    Ok(())
}
