//! Flush requests: the gateway's only RabbitMQ traffic, never on the send path.
//!
//! Sockets hand FlushRoom tasks to one publisher task that lives on the gateway's main
//! runtime (so the AMQP connection is not tied to an HTTP worker thread), which publishes
//! each with a confirm, in the trace of the socket that asked. If RabbitMQ is down or the queue is full, the request is
//! dropped: the persister's dirty-room sweep queues the flush later.

use huddle_broker::{Broker, TaskQueue};
use huddle_domain::RoomName;
use huddle_proto::v1::FlushRoomTask;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::metrics::FLUSH_REQUESTS;

/// Requests waiting to be published at most; more are dropped (the sweep covers them).
const QUEUE: usize = 10_000;

/// A flush request and the trace context of whoever asked for it.
struct Request {
    task: FlushRoomTask,
    trace: Vec<(String, String)>,
}

/// Hands flush requests to the publisher task.
#[derive(Clone)]
pub struct FlushRequester {
    tx: mpsc::Sender<Request>,
}

impl FlushRequester {
    /// Asks for `room` to be flushed; never waits.
    pub fn request(&self, room: &RoomName, reason: &'static str) {
        let task =
            FlushRoomTask { room: room.to_string(), reason: reason.into(), requested_at_ms: huddle_domain::now_ms() };
        if self.tx.try_send(Request { task, trace: huddle_telemetry::trace_headers() }).is_err() {
            tracing::warn!(%room, reason, "flush request dropped; the sweep will cover it");
        }
    }
}

/// Starts the publisher; it drains and stops when `stop` turns true.
pub fn spawn(broker: Broker, stop: watch::Receiver<bool>) -> (FlushRequester, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (FlushRequester { tx }, tokio::spawn(publish(broker, rx, stop)))
}

async fn publish(broker: Broker, mut rx: mpsc::Receiver<Request>, mut stop: watch::Receiver<bool>) {
    let mut stopping = false;
    loop {
        let request = if stopping {
            match rx.try_recv() {
                Ok(request) => request,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                request = rx.recv() => match request { Some(request) => request, None => break },
                _ = stop.wait_for(|stop| *stop) => { stopping = true; continue; }
            }
        };
        // One publish per request keeps each task in its requester's trace; flush
        // requests are rare (a room emptying, a backlog threshold), so batching buys little.
        let span = tracing::info_span!("flush_request", room = %request.task.room, reason = %request.task.reason);
        huddle_telemetry::continue_trace(&span, request.trace.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let reason = request.task.reason.clone();
        match broker.publish(TaskQueue::Flush, &[request.task]).instrument(span).await {
            Ok(()) => FLUSH_REQUESTS.add(1, &[huddle_telemetry::metrics::KeyValue::new("reason", reason)]),
            Err(error) => tracing::warn!(%error, "flush request not queued; the sweep will cover it"),
        }
    }
    broker.close().await;
}
