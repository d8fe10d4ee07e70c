//! What each task does. Every step is idempotent, so a redelivered task is harmless.

use huddle_archive::{Archive, ChunkOutcome, UnreadableEntry};
use huddle_broker::{Broker, TaskError, TaskHandler, TaskQueue};
use huddle_domain::RoomName;
use huddle_proto::v1::{FlushRoomTask, PersistChunkTask};
use huddle_roomlog::RoomLog;

use std::time::Instant;

use tracing::Instrument;

use crate::metrics;

macro_rules! transient {
    ($e:expr) => {
        $e.map_err(|e| TaskError::Transient(e.to_string()))
    };
}

/// Executes flush and chunk tasks.
#[derive(Clone)]
pub struct PersistTasks {
    pub(crate) log: RoomLog,
    pub(crate) archive: Archive,
    pub(crate) broker: Broker,
    pub(crate) chunk_size: u64,
    pub(crate) flush_claim_ms: u64,
}

fn parse_room(raw: &str) -> Result<RoomName, TaskError> {
    RoomName::parse(raw).map_err(|e| TaskError::Poison(format!("room {raw:?}: {e}")))
}

/// A task as taken off its queue, checked: anything else is poison.
#[derive(Debug, PartialEq, Eq)]
pub enum Task {
    /// Flush the room: fan its unpersisted range out as chunk tasks.
    Flush {
        /// The room.
        room: RoomName,
        /// Why the flush was asked for (logs only).
        reason: String,
    },
    /// Copy seqs `from..=to` of the room into PostgreSQL.
    PersistChunk {
        /// The room.
        room: RoomName,
        /// First seq, at least 1.
        from: u64,
        /// Last seq, at least `from`.
        to: u64,
    },
}

/// Decodes and checks a task's payload. Whatever the bytes, the answer is a task or
/// [`TaskError::Poison`] (dead-lettered, never retried), never a panic.
pub fn decode_task(queue: TaskQueue, payload: &[u8]) -> Result<Task, TaskError> {
    use prost::Message;
    match queue {
        TaskQueue::Flush => {
            let task = FlushRoomTask::decode(payload).map_err(|e| TaskError::Poison(e.to_string()))?;
            Ok(Task::Flush { room: parse_room(&task.room)?, reason: task.reason })
        }
        TaskQueue::PersistChunk => {
            let task = PersistChunkTask::decode(payload).map_err(|e| TaskError::Poison(e.to_string()))?;
            check_range(task.from_seq, task.to_seq)?;
            Ok(Task::PersistChunk { room: parse_room(&task.room)?, from: task.from_seq, to: task.to_seq })
        }
        TaskQueue::Hydrate => Err(TaskError::Poison("the persister does not hydrate".into())),
    }
}

impl TaskHandler for PersistTasks {
    async fn handle(&self, queue: TaskQueue, payload: &[u8]) -> Result<(), TaskError> {
        match decode_task(queue, payload)? {
            Task::Flush { room, reason } => self.flush(room, &reason).await,
            Task::PersistChunk { room, from, to } => self.persist_chunk(room, from, to).await,
        }
    }
}

impl PersistTasks {
    /// Master task: claim the unpersisted range and fan it out as chunk tasks.
    async fn flush(&self, room: RoomName, reason: &str) -> Result<(), TaskError> {
        let Some(claim) = transient!(self.log.claim_flush(&room, self.flush_claim_ms).await)? else {
            return transient!(self.log.clear_dirty_if_clean(&room).await);
        };
        let (from, to) = (claim.from, claim.to);
        if claim.reclaimed {
            metrics::RANGES_RECLAIMED.add(1, &[]);
            tracing::warn!(%room, from, to, claim_ms = self.flush_claim_ms,
                "the watermark did not move for a whole claim: its chunk tasks were lost or dead-lettered; queuing the range again");
        }
        let chunks: Vec<PersistChunkTask> = chunk_ranges(from, to, self.chunk_size)
            .map(|(from_seq, to_seq)| PersistChunkTask { room: room.to_string(), from_seq, to_seq })
            .collect();
        huddle_failpoints::crash_point!("persister::flush_claimed");
        tracing::debug!(%room, from, to, chunks = chunks.len(), reason, "flush fanned out");
        if let Err(error) = self.broker.publish(TaskQueue::PersistChunk, &chunks).await {
            // Handed back, the range is claimed again by this task's retry instead of
            // waiting out the claim (a RabbitMQ node lost mid-publish).
            if let Err(release) = self.log.release_claim(&room, claim).await {
                tracing::warn!(%room, from, to, error = %release, "claim not handed back; it expires instead");
            }
            return Err(TaskError::Transient(format!("queuing chunk tasks: {error}")));
        }
        Ok(())
    }

    /// Chunk task: copy one range from Redis into PostgreSQL, then move the watermark.
    async fn persist_chunk(&self, room: RoomName, from: u64, to: u64) -> Result<(), TaskError> {
        let began = Instant::now();
        let chunk = transient!(self.log.chunk(&room, from, to).instrument(tracing::info_span!("read")).await)?;
        metrics::step_done("read", began);
        let unreadable: Vec<UnreadableEntry> = chunk
            .unreadable
            .into_iter()
            .map(|entry| UnreadableEntry { seq: entry.seq, raw: entry.raw, reason: entry.reason })
            .collect();
        let (epoch, messages) = (chunk.epoch, chunk.messages);
        let step = Instant::now();
        let store = tracing::info_span!("store", rows = messages.len());
        let stored =
            transient!(self.archive.store_chunk(&room, epoch, &messages, &unreadable).instrument(store).await)?;
        metrics::step_done("store", step);
        let watermark = match stored {
            ChunkOutcome::Stored { watermark, quarantined } => {
                for entry in &quarantined {
                    tracing::warn!(%room, seq = entry.seq, sqlstate = %entry.sqlstate, reason = %entry.reason,
                        "message quarantined: it cannot be stored (refused by PostgreSQL, or its sender is unknown); the room's persistence goes on past it");
                }
                metrics::MESSAGES_QUARANTINED.add(quarantined.len() as u64, &[]);
                watermark
            }
            ChunkOutcome::StaleEpoch => {
                // Read before Redis lost the room: those entries are gone and their seqs are
                // being reused. A later flush copies what Redis holds now.
                tracing::warn!(%room, from, to, epoch, "stale chunk dropped");
                return Ok(());
            }
        };
        metrics::MESSAGES_WRITTEN.add(messages.len() as u64, &[]);
        huddle_failpoints::crash_point!("persister::chunk_stored");
        let step = Instant::now();
        // Moves the watermark and, when the room is clean, drops its dirty mark.
        transient!(self.log.mark_persisted(&room, watermark).instrument(tracing::info_span!("mark")).await)?;
        huddle_failpoints::crash_point!("persister::watermark_moved");
        metrics::step_done("mark", step);
        metrics::CHUNK_SECONDS.record(huddle_telemetry::metrics::elapsed(began), &[]);
        tracing::debug!(%room, from, to, written = messages.len(), watermark, "chunk persisted");
        Ok(())
    }
}

/// A chunk task's range must be a non-empty range of real seqs (they start at 1); any
/// other can never succeed, so it is poison (dead-lettered, not retried).
fn check_range(from: u64, to: u64) -> Result<(), TaskError> {
    if from == 0 || from > to {
        return Err(TaskError::Poison(format!("bad range {from}..={to}")));
    }
    Ok(())
}

/// `from..=to` cut into consecutive ranges of at most `size` seqs, without overlap.
fn chunk_ranges(from: u64, to: u64, size: u64) -> impl Iterator<Item = (u64, u64)> {
    let size = size.max(1);
    (from..=to).step_by(size as usize).map(move |start| (start, start.saturating_add(size - 1).min(to)))
}

#[cfg(test)]
mod tests {
    use super::{check_range, chunk_ranges, decode_task, Task};
    use huddle_broker::{TaskError, TaskQueue};
    use huddle_proto::v1::{FlushRoomTask, PersistChunkTask};
    use proptest::prelude::*;
    use prost::Message;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Any bytes on any queue: a checked task or poison, never a panic.
        #[test]
        fn any_payload_decodes_to_a_checked_task_or_poison(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            for queue in [TaskQueue::Flush, TaskQueue::PersistChunk, TaskQueue::Hydrate] {
                match decode_task(queue, &payload) {
                    Ok(Task::PersistChunk { from, to, .. }) => prop_assert!(from >= 1 && from <= to),
                    Ok(Task::Flush { .. }) | Err(TaskError::Poison(_)) => {}
                    Err(other) => prop_assert!(false, "not poison: {other:?}"),
                }
            }
        }

        /// Well-formed chunk tasks with any room and range: accepted exactly when the room
        /// is a room name and the range can be read.
        #[test]
        fn chunk_tasks_are_accepted_exactly_when_valid(room in "\\PC{0,70}", from in any::<u64>(), to in any::<u64>()) {
            let payload = PersistChunkTask { room: room.clone(), from_seq: from, to_seq: to }.encode_to_vec();
            let valid = huddle_domain::RoomName::parse(&room).is_ok() && from >= 1 && from <= to;
            prop_assert_eq!(decode_task(TaskQueue::PersistChunk, &payload).is_ok(), valid);
            let flush = FlushRoomTask { room: room.clone(), reason: "test".into(), ..Default::default() }.encode_to_vec();
            prop_assert_eq!(decode_task(TaskQueue::Flush, &flush).is_ok(), huddle_domain::RoomName::parse(&room).is_ok());
        }

        /// Any range and chunk size: consecutive chunks that cover it exactly.
        #[test]
        fn any_range_is_cut_into_consecutive_chunks(from in 1u64..u64::MAX, len in 0u64..5_000, size in 0u64..u64::MAX) {
            let to = from.saturating_add(len);
            let chunks: Vec<_> = chunk_ranges(from, to, size).take(10_000).collect();
            prop_assert_eq!(chunks.first().map(|c| c.0), Some(from));
            prop_assert_eq!(chunks.last().map(|c| c.1), Some(to));
            for pair in chunks.windows(2) {
                prop_assert_eq!(pair[0].1 + 1, pair[1].0);
            }
        }
    }

    #[test]
    fn ranges_are_cut_without_gap_or_overlap() {
        assert_eq!(chunk_ranges(1, 10, 4).collect::<Vec<_>>(), [(1, 4), (5, 8), (9, 10)]);
        assert_eq!(chunk_ranges(7, 7, 100).collect::<Vec<_>>(), [(7, 7)]);
        assert_eq!(chunk_ranges(3, 5, 0).collect::<Vec<_>>(), [(3, 3), (4, 4), (5, 5)]);
    }

    #[test]
    fn a_range_that_can_never_be_read_is_poison() {
        assert!(check_range(1, 1).is_ok());
        assert!(check_range(5, 9).is_ok());
        for (from, to) in [(0, 5), (0, 0), (9, 5)] {
            assert!(matches!(check_range(from, to), Err(TaskError::Poison(_))), "{from}..={to}");
        }
    }
}
