//! What each task does. Every step is idempotent, so a redelivered task is harmless.

use huddle_archive::{Archive, ChunkOutcome, UnreadableEntry};
use huddle_broker::{Broker, TaskError, TaskHandler, TaskQueue};
use huddle_domain::RoomName;
use huddle_proto::v1::{FlushRoomTask, PersistChunkTask};
use huddle_roomlog::RoomLog;

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

impl TaskHandler for PersistTasks {
    async fn handle(&self, queue: TaskQueue, payload: &[u8]) -> Result<(), TaskError> {
        use prost::Message;
        match queue {
            TaskQueue::Flush => {
                let task = FlushRoomTask::decode(payload).map_err(|e| TaskError::Poison(e.to_string()))?;
                self.flush(&task).await
            }
            TaskQueue::PersistChunk => {
                let task = PersistChunkTask::decode(payload).map_err(|e| TaskError::Poison(e.to_string()))?;
                self.persist_chunk(&task).await
            }
            TaskQueue::Hydrate => Err(TaskError::Poison("the persister does not hydrate".into())),
        }
    }
}

impl PersistTasks {
    /// Master task: claim the unpersisted range and fan it out as chunk tasks.
    async fn flush(&self, task: &FlushRoomTask) -> Result<(), TaskError> {
        let room = parse_room(&task.room)?;
        let Some(claim) = transient!(self.log.claim_flush(&room, self.flush_claim_ms).await)? else {
            return transient!(self.log.clear_dirty_if_clean(&room).await);
        };
        let (from, to) = (claim.from, claim.to);
        if claim.reclaimed {
            metrics::RANGES_RECLAIMED.inc();
            tracing::warn!(%room, from, to, claim_ms = self.flush_claim_ms,
                "the watermark did not move for a whole claim: its chunk tasks were lost or dead-lettered; queuing the range again");
        }
        let chunks: Vec<PersistChunkTask> = chunk_ranges(from, to, self.chunk_size)
            .map(|(from_seq, to_seq)| PersistChunkTask { room: room.to_string(), from_seq, to_seq })
            .collect();
        huddle_failpoints::crash_point!("persister::flush_claimed");
        tracing::debug!(%room, from, to, chunks = chunks.len(), reason = %task.reason, "flush fanned out");
        transient!(self.broker.publish(TaskQueue::PersistChunk, &chunks).await)
    }

    /// Chunk task: copy one range from Redis into PostgreSQL, then move the watermark.
    async fn persist_chunk(&self, task: &PersistChunkTask) -> Result<(), TaskError> {
        let room = parse_room(&task.room)?;
        check_range(task.from_seq, task.to_seq)?;
        let timer = metrics::CHUNK_SECONDS.start_timer();
        let chunk = transient!(self.log.chunk(&room, task.from_seq, task.to_seq).await)?;
        let unreadable: Vec<UnreadableEntry> = chunk
            .unreadable
            .into_iter()
            .map(|entry| UnreadableEntry { seq: entry.seq, raw: entry.raw, reason: entry.reason })
            .collect();
        let (epoch, messages) = (chunk.epoch, chunk.messages);
        let watermark = match transient!(self.archive.store_chunk(&room, epoch, &messages, &unreadable).await)? {
            ChunkOutcome::Stored { watermark, quarantined } => {
                for entry in &quarantined {
                    tracing::warn!(%room, seq = entry.seq, sqlstate = %entry.sqlstate, reason = %entry.reason,
                        "message quarantined: PostgreSQL refused it; the room's persistence goes on past it");
                }
                metrics::MESSAGES_QUARANTINED.inc_by(quarantined.len() as u64);
                watermark
            }
            ChunkOutcome::StaleEpoch => {
                // Read before Redis lost the room: those entries are gone and their seqs are
                // being reused. A later flush copies what Redis holds now.
                tracing::warn!(%room, from = task.from_seq, to = task.to_seq, epoch, "stale chunk dropped");
                return Ok(());
            }
        };
        metrics::MESSAGES_WRITTEN.inc_by(messages.len() as u64);
        huddle_failpoints::crash_point!("persister::chunk_stored");
        transient!(self.log.mark_persisted(&room, watermark).await)?;
        huddle_failpoints::crash_point!("persister::watermark_moved");
        transient!(self.log.clear_dirty_if_clean(&room).await)?;
        timer.observe_duration();
        tracing::debug!(%room, from = task.from_seq, to = task.to_seq, written = messages.len(), watermark, "chunk persisted");
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
    (from..=to).step_by(size as usize).map(move |start| (start, (start + size - 1).min(to)))
}

#[cfg(test)]
mod tests {
    use super::{check_range, chunk_ranges};
    use huddle_broker::TaskError;

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
