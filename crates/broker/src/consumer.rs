//! The consumer loop shared by every task queue: bounded prefetch, ack after the work is
//! done, retry with exponential back-off, dead-lettering of poison tasks, and
//! reconnection when RabbitMQ goes away.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use futures_util::StreamExt;
use huddle_telemetry::metrics::{counter, Counter, KeyValue};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use tokio::sync::watch;
use tracing::Instrument;

use huddle_config::QueueType;

use crate::{Broker, Delivery, TaskQueue};

static TASKS: LazyLock<Counter<u64>> =
    LazyLock::new(|| counter("huddle_tasks", "Tasks handled, by queue and outcome (ok, retry, dead)"));

const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// How a task failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The task can never succeed (undecodable, invalid room): dead-letter it at once.
    #[error("poison task: {0}")]
    Poison(String),
    /// A dependency failed: retry after a back-off, until the delivery limit.
    #[error("transient failure: {0}")]
    Transient(String),
}

/// Does the work of one task. Must be idempotent: tasks are delivered at least once.
pub trait TaskHandler: Clone + Send + Sync + 'static {
    /// Handles one payload of `queue`; the task is acked when this returns `Ok`.
    fn handle(&self, queue: TaskQueue, payload: &[u8]) -> impl Future<Output = Result<(), TaskError>> + Send;
}

/// Consumes `queue` until `stopped` turns true, reconnecting whenever the consumer ends.
/// On stop, no new task is taken, tasks in flight finish and are acked, and prefetched
/// ones return to the queue when their channel closes, right after.
pub async fn consume<H: TaskHandler>(
    broker: Broker,
    queue: TaskQueue,
    prefetch: u16,
    handler: H,
    retry_base: Duration,
    stopped: watch::Receiver<bool>,
) {
    let queue_name = broker.topology().queue(queue);
    // Every outcome's series exists from the start, so the first dead letter shows as an
    // increase from 0 (a series that is born at 1 shows no increase to alerts).
    for outcome in ["ok", "retry", "dead"] {
        TASKS.add(0, &[KeyValue::new("queue", queue_name.clone()), KeyValue::new("outcome", outcome)]);
    }
    let tag = format!("{queue_name}-{}", std::process::id());
    let prefetch = prefetch.max(1);
    while !*stopped.borrow() {
        let (channel, consumer) = match broker.consume(queue, prefetch, &tag).await {
            Ok(consumed) => consumed,
            Err(error) => {
                tracing::warn!(queue = %queue_name, %error, "cannot consume; retrying");
                let mut stopped = stopped.clone();
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_DELAY) => {},
                    _ = stopped.wait_for(|stop| *stop) => {},
                }
                continue;
            }
        };
        tracing::info!(queue = %queue_name, prefetch, "consuming");
        let mut stop_signal = stopped.clone();
        consumer
            .take_until(async move {
                let _ = stop_signal.wait_for(|stop| *stop).await;
            })
            .for_each_concurrent(usize::from(prefetch), |delivery| async {
                match delivery {
                    Ok(delivery) => settle(&broker, &handler, queue, &queue_name, delivery, retry_base).await,
                    Err(error) => tracing::warn!(queue = %queue_name, %error, "consumer error"),
                }
            })
            .await;
        // Only now that the tasks in flight are settled: for_each_concurrent drops the
        // consumer as soon as it ends (at a stop), and without this handle the channel
        // would close under their acks. Closing it returns the prefetched tasks at once.
        drop(channel);
        tracing::debug!(queue = %queue_name, "consumer ended and its tasks in flight settled");
    }
    tracing::info!(queue = %queue_name, "consumer stopped");
}

async fn settle<H: TaskHandler>(
    broker: &Broker,
    handler: &H,
    queue: TaskQueue,
    queue_name: &str,
    delivery: Delivery,
    retry_base: Duration,
) {
    let delivery_limit = broker.topology().delivery_limit();
    let classic = broker.topology().queue_type() == QueueType::Classic;
    let span = tracing::info_span!("task", queue = queue_name, redelivered = delivery.redelivered);
    let earlier = earlier_deliveries(&delivery, classic);
    let outcome = if classic && delivery.redelivered {
        // Its last delivery ended unsettled (its consumer died, or the connection did):
        // that delivery is counted in a copy before anything else, so a task that kills
        // its consumer reaches the delivery limit too, as on a quorum queue.
        if earlier > delivery_limit {
            tracing::error!(
                queue = queue_name,
                delivery_limit,
                "task never settled within its delivery limit; dead-lettered"
            );
            move_then_ack(broker.dead_letter(queue, &delivery), &delivery).await.map(|_| "dead")
        } else {
            move_then_ack(broker.requeue_counted(queue, &delivery, earlier), &delivery).await.map(|_| "retry")
        }
    } else {
        huddle_telemetry::continue_trace(&span, trace_headers(&delivery));
        match handler.handle(queue, &delivery.data).instrument(span).await {
            Ok(()) => answer(delivery.ack(BasicAckOptions::default())).await.map(|_| "ok"),
            Err(TaskError::Poison(reason)) => {
                tracing::error!(queue = queue_name, %reason, "poison task dead-lettered");
                answer(delivery.reject(BasicRejectOptions { requeue: false })).await.map(|_| "dead")
            }
            Err(TaskError::Transient(reason)) if earlier >= delivery_limit => {
                // Returned once more, it passes the delivery limit: a quorum queue
                // dead-letters it (reason delivery_limit), as this does on a classic one.
                // Counted here as dead, so the dead-letter alert sees it; no back-off,
                // nothing will retry it.
                tracing::error!(queue = queue_name, %reason, delivery_limit, "task failed on its last delivery; dead-lettered");
                if classic {
                    move_then_ack(broker.dead_letter(queue, &delivery), &delivery).await.map(|_| "dead")
                } else {
                    answer(delivery.nack(BasicNackOptions { requeue: true, multiple: false })).await.map(|_| "dead")
                }
            }
            Err(TaskError::Transient(reason)) => {
                let delay = retry_base.saturating_mul(1 << earlier.min(16)).min(MAX_RETRY_DELAY);
                tracing::warn!(queue = queue_name, %reason, attempt = earlier, delay_ms = delay.as_millis() as u64, "task failed; will retry");
                tokio::time::sleep(delay).await;
                if classic {
                    move_then_ack(broker.requeue_counted(queue, &delivery, earlier + 1), &delivery)
                        .await
                        .map(|_| "retry")
                } else {
                    answer(delivery.nack(BasicNackOptions { requeue: true, multiple: false })).await.map(|_| "retry")
                }
            }
        }
    };
    match outcome {
        Ok(outcome) => {
            TASKS.add(1, &[KeyValue::new("queue", queue_name.to_owned()), KeyValue::new("outcome", outcome)])
        }
        // The channel is gone: the broker redelivers the task to another consumer.
        Err(error) => tracing::warn!(queue = queue_name, %error, "could not settle task"),
    }
}

/// Acks `delivery` once its copy is published (`publish_copy`); if the copy is not, the
/// original goes back to its queue unchanged.
async fn move_then_ack(
    publish_copy: impl Future<Output = crate::Result<()>>,
    delivery: &Delivery,
) -> Result<(), String> {
    match publish_copy.await {
        Ok(()) => answer(delivery.ack(BasicAckOptions::default())).await.map(|_| ()),
        Err(error) => {
            // Not hot: the original comes back with its old count, and the copy would fail
            // again at once while the broker refuses it.
            tokio::time::sleep(RECONNECT_DELAY).await;
            let _ = answer(delivery.nack(BasicNackOptions { requeue: true, multiple: false })).await;
            Err(format!("could not re-publish the task: {error}"))
        }
    }
}

/// How long an ack, nack or reject may take to be sent.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a task's ack, nack or reject, or gives up after [`SETTLE_TIMEOUT`]: one issued as
/// the connection died may never complete, and a consumer waits for every task in flight
/// before it reconnects. The broker redelivers a task it was never told about.
async fn answer<T>(settle: impl Future<Output = Result<T, lapin::Error>>) -> Result<T, String> {
    match tokio::time::timeout(SETTLE_TIMEOUT, settle).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => Err(format!("no answer within {SETTLE_TIMEOUT:?}")),
    }
}

/// The string headers of a delivery (where the W3C trace context travels).
fn trace_headers(delivery: &Delivery) -> Vec<(&str, String)> {
    let Some(headers) = delivery.properties.headers() else { return Vec::new() };
    headers
        .inner()
        .iter()
        .filter_map(|(key, value)| match value {
            AMQPValue::LongString(text) => Some((key.as_str(), text.to_string())),
            _ => None,
        })
        .collect()
}

/// Earlier deliveries of this task: as counted by the quorum queue, or on a classic queue
/// by the copies this consumer re-published, plus the one that ended unsettled if this is
/// a redelivery.
fn earlier_deliveries(delivery: &Delivery, classic: bool) -> u32 {
    let header = if classic { crate::DELIVERIES_HEADER } else { "x-delivery-count" };
    let counted = delivery.properties.headers().as_ref().and_then(|headers| match headers.inner().get(header) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).ok(),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).ok(),
        Some(AMQPValue::LongUInt(n)) => Some(*n),
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).ok(),
        _ => None,
    });
    counted.unwrap_or(0).saturating_add(u32::from(classic && delivery.redelivered))
}
