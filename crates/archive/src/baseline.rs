//! The persist benchmark's baseline: the same rows written by PostgreSQL's fastest bulk
//! path, a binary `COPY`, into a plain table of the messages table's shape (its columns,
//! defaults, checks and primary key; no foreign keys, no idempotency, no watermark). The
//! persister's rate is read against it (`huddle-bench persist`).

use std::time::{Duration, Instant};

use huddle_domain::StoredMessage;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::{Archive, Result};

/// The table the baseline writes; dropped before and after.
const TABLE: &str = "bench_copy_baseline";

/// The column types of `messages` as `COPY … (BINARY)` sends them.
pub(crate) const MESSAGE_TYPES: [Type; 7] =
    [Type::INT8, Type::INT8, Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ];

/// When a message was sent, as PostgreSQL's `timestamptz` takes it.
pub(crate) fn sent_at(message: &StoredMessage) -> std::time::SystemTime {
    let ms = message.post.sent_at_ms;
    if ms >= 0 {
        std::time::UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        std::time::UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// What the baseline measured: one binary `COPY` of the rows into each table.
#[derive(Debug, Clone, Copy)]
pub struct CopyBaseline {
    /// Into a plain table shaped like `messages` (no foreign keys).
    pub plain: Duration,
    /// Into the same table with the two foreign keys `messages` had until migration V7
    /// (room, sender), checked per row: what the chunk write paid before it checked its
    /// senders once per chunk.
    pub with_foreign_keys: Duration,
}

impl Archive {
    /// Writes `rows` (room id, message) with one binary `COPY` into a fresh plain table
    /// shaped like `messages`, then into one that also has its former foreign keys, and returns
    /// how long each `COPY` took (the tables are created before the clock starts and
    /// dropped afterwards).
    pub async fn copy_baseline(&self, rows: &[(i64, StoredMessage)]) -> Result<CopyBaseline> {
        let client = self.pool.get().await?;
        client.batch_execute("SET statement_timeout = 0").await?;
        let create = format!(
            "DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"
        );
        client.batch_execute(&create).await?;
        let plain = copy_into(&client, rows).await?;
        client.batch_execute(&create).await?;
        client
            .batch_execute(&format!(
                "ALTER TABLE {TABLE} ADD FOREIGN KEY (room_id) REFERENCES rooms (id), ADD FOREIGN KEY (user_id) REFERENCES users (id)"
            ))
            .await?;
        let with_foreign_keys = copy_into(&client, rows).await?;
        client.batch_execute(&format!("DROP TABLE {TABLE}; RESET statement_timeout")).await?;
        Ok(CopyBaseline { plain, with_foreign_keys })
    }
}

/// One binary `COPY` of `rows` into the baseline table; how long it took.
async fn copy_into(client: &tokio_postgres::Client, rows: &[(i64, StoredMessage)]) -> Result<Duration> {
    let started = Instant::now();
    let sink = client
        .copy_in(&format!(
            "COPY {TABLE} (room_id, seq, user_id, user_name, body, client_id, sent_at) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &MESSAGE_TYPES);
    let mut writer = std::pin::pin!(writer);
    for (room_id, message) in rows {
        let post = &message.post;
        writer
            .as_mut()
            .write(&[
                room_id,
                &(message.seq as i64),
                &post.user_id,
                &post.user_name,
                &post.body,
                &post.client_id,
                &sent_at(message),
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(started.elapsed())
}
