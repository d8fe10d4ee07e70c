//! Flush requests: the gateway's only RabbitMQ traffic, never on the send path.
//!
//! Sockets hand FlushRoom tasks to one publisher task that lives on the gateway's main
//! runtime (so the AMQP connection is not tied to an HTTP worker thread) and publishes
//! them in confirmed batches. If RabbitMQ is down or the queue is full, the request is
//! dropped: the persister's dirty-room sweep queues the flush later.

use huddle_broker::{Broker, TaskQueue};
use huddle_domain::RoomName;
use huddle_proto::v1::FlushRoomTask;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::metrics::FLUSH_REQUESTS;

/// Requests waiting to be published at most; more are dropped (the sweep covers them).
const QUEUE: usize = 10_000;
/// Tasks per confirmed batch at most.
const BATCH: usize = 256;

/// Hands flush requests to the publisher task.
#[derive(Clone)]
pub struct FlushRequester {
    tx: mpsc::Sender<FlushRoomTask>,
}

impl FlushRequester {
    /// Asks for `room` to be flushed; never waits.
    pub fn request(&self, room: &RoomName, reason: &'static str) {
        let task = FlushRoomTask { room: room.to_string(), reason: reason.into(), requested_at_ms: huddle_domain::now_ms() };
        if self.tx.try_send(task).is_err() {
            tracing::warn!(%room, reason, "flush request dropped; the sweep will cover it");
        }
    }
}

/// Starts the publisher; it drains and stops when `stop` turns true.
pub fn spawn(broker: Broker, stop: watch::Receiver<bool>) -> (FlushRequester, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (FlushRequester { tx }, tokio::spawn(publish(broker, rx, stop)))
}

async fn publish(broker: Broker, mut rx: mpsc::Receiver<FlushRoomTask>, mut stop: watch::Receiver<bool>) {
    let mut stopping = false;
    loop {
        let first = if stopping {
            match rx.try_recv() {
                Ok(task) => task,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                task = rx.recv() => match task { Some(task) => task, None => break },
                _ = stop.wait_for(|stop| *stop) => { stopping = true; continue; }
            }
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(task) => batch.push(task),
                Err(_) => break,
            }
        }
        match broker.publish(TaskQueue::Flush, &batch).await {
            Ok(()) => {
                for task in &batch {
                    FLUSH_REQUESTS.with_label_values(&[task.reason.as_str()]).inc();
                }
            }
            Err(error) => tracing::warn!(%error, tasks = batch.len(), "flush requests not queued; the sweep will cover them"),
        }
    }
    broker.close().await;
}
