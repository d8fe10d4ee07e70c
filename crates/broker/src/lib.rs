//! RabbitMQ transport for Huddle's tasks.
//!
//! Topology (every name starts with the configured prefix, e.g. `huddle`):
//!
//! | name | kind | purpose |
//! |---|---|---|
//! | `{p}.flush` | task queue | FlushRoom master tasks |
//! | `{p}.persist-chunk` | task queue | PersistChunk tasks |
//! | `{p}.hydrate` | task queue | HydrateRoom re-warm tasks |
//! | `{p}.dlx` | fanout exchange | receives tasks past their delivery limit |
//! | `{p}.dead` | task queue | bound to `{p}.dlx`: poison tasks for an operator |
//!
//! Queues are durable, of the configured [`QueueType`]: quorum queues by default, with
//! `x-delivery-limit`, so that RabbitMQ dead-letters a task that keeps failing instead of
//! letting it loop forever; classic queues have no delivery count, so the consumer keeps
//! one in the [`DELIVERIES_HEADER`] of a re-published copy and dead-letters the task itself
//! at the same limit. Publishing is persistent and waits for the broker's confirm;
//! consumers ack after their work is committed.
//!
//! It carries opaque task payloads: it knows no task's meaning, no Redis and no PostgreSQL.

mod consumer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use huddle_config::{BrokerSettings, QueueType};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::sync::Mutex;

/// `huddle_tasks_published_total{queue}`: tasks the broker confirmed.
static TASKS_PUBLISHED: std::sync::LazyLock<huddle_telemetry::metrics::Counter<u64>> = std::sync::LazyLock::new(|| {
    huddle_telemetry::metrics::counter("huddle_tasks_published", "Tasks published and confirmed by RabbitMQ, by queue")
});

pub use consumer::{consume, TaskError, TaskHandler};
pub use lapin::message::Delivery;

/// Errors of the task transport.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The connection, channel or an AMQP operation failed.
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    /// RabbitMQ did not open a consumer's channel or answer its `basic.consume` in time.
    #[error("rabbitmq did not open a consumer on {queue} within {after:?}")]
    ConsumeTimeout {
        /// Name of the queue.
        queue: String,
        /// How long it was given.
        after: std::time::Duration,
    },
    /// The AMQP URL setting named no node.
    #[error("no AMQP URL given")]
    NoNodes,
    /// A dead-lettered task names no queue it died in (no `x-first-death-queue`), so it
    /// cannot be re-driven: it is left in the dead-letter queue.
    #[error("a dead-lettered task names no queue it died in; left in the dead-letter queue after {moved} moved")]
    UnknownOrigin {
        /// Tasks moved before it.
        moved: usize,
    },
    /// RabbitMQ refused (nacked) a published or re-driven task instead of confirming it.
    #[error("broker refused task for {queue} (nack)")]
    Nacked {
        /// Name of the queue the task was published to.
        queue: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// The task queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskQueue {
    /// FlushRoom master tasks.
    Flush,
    /// PersistChunk tasks.
    PersistChunk,
    /// HydrateRoom re-warm tasks.
    Hydrate,
}

impl TaskQueue {
    /// All task queues.
    pub const ALL: [TaskQueue; 3] = [TaskQueue::Flush, TaskQueue::PersistChunk, TaskQueue::Hydrate];

    /// The queue's name without the prefix (`flush`, `persist-chunk`, `hydrate`).
    pub fn suffix(self) -> &'static str {
        match self {
            TaskQueue::Flush => "flush",
            TaskQueue::PersistChunk => "persist-chunk",
            TaskQueue::Hydrate => "hydrate",
        }
    }
}

/// Queue and exchange names under one prefix, and how the queues are declared.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    delivery_limit: u32,
    queue_type: QueueType,
    quorum_group_size: Option<u32>,
}

/// On a classic queue: how many earlier deliveries of this task ended without success.
/// The consumer keeps it in each copy it re-publishes (quorum queues count deliveries
/// themselves, in `x-delivery-count`).
pub const DELIVERIES_HEADER: &str = "x-huddle-deliveries";

impl Topology {
    /// The names and queue arguments the settings ask for.
    pub fn new(settings: &BrokerSettings) -> Self {
        Self {
            prefix: settings.queue_prefix.clone(),
            delivery_limit: settings.delivery_limit,
            queue_type: settings.queue_type,
            quorum_group_size: settings.quorum_group_size,
        }
    }

    /// Deliveries of a failing task before it is dead-lettered.
    pub fn delivery_limit(&self) -> u32 {
        self.delivery_limit
    }

    /// The kind of queue the tasks are in.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// Name of a task queue.
    pub fn queue(&self, queue: TaskQueue) -> String {
        format!("{}.{}", self.prefix, queue.suffix())
    }

    /// Name of the dead-letter exchange.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// Name of the queue holding dead-lettered tasks.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The arguments every queue of this topology is declared with, plus `extra`.
    fn queue_arguments(&self, extra: &[(&str, AMQPValue)]) -> FieldTable {
        let mut args = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from(kind)));
        if let (QueueType::Quorum, Some(size)) = (self.queue_type, self.quorum_group_size) {
            args.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(size as i32));
        }
        for (key, value) in extra {
            args.insert((*key).into(), value.clone());
        }
        args
    }

    async fn declare(&self, channel: &Channel) -> Result<()> {
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        let dlx = self.dead_letter_exchange();
        channel
            .exchange_declare(
                dlx.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await?;
        let dead = self.dead_letter_queue();
        channel.queue_declare(dead.as_str().into(), durable, self.queue_arguments(&[])).await?;
        channel
            .queue_bind(
                dead.as_str().into(),
                dlx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let dead_letter_exchange = ("x-dead-letter-exchange", AMQPValue::LongString(LongString::from(dlx.as_str())));
        for queue in TaskQueue::ALL {
            let args = match self.queue_type {
                QueueType::Quorum => self.queue_arguments(&[
                    dead_letter_exchange.clone(),
                    ("x-delivery-limit", AMQPValue::LongInt(self.delivery_limit as i32)),
                ]),
                // A classic queue has no delivery limit of its own: the consumer keeps it.
                QueueType::Classic => self.queue_arguments(std::slice::from_ref(&dead_letter_exchange)),
            };
            channel.queue_declare(self.queue(queue).as_str().into(), durable, args).await?;
        }
        Ok(())
    }
}

struct Link {
    connection: Arc<Connection>,
    publisher: Channel,
}

/// How long one node may take to accept a connection before the next one is tried (a node
/// behind a dead address can leave the TCP connect waiting for minutes).
const NODE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long RabbitMQ may take to answer a `basic.consume`. A quorum queue that is electing
/// a leader after a node died can leave it unanswered (seen with RabbitMQ 3.10), and a
/// consumer waiting for it would never take a task again.
const CONSUME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection to RabbitMQ that reconnects on demand, to the next node of the list when
/// the one it used goes away.
#[derive(Clone)]
pub struct Broker {
    /// The nodes to try, in order (one URL, or each node of a cluster).
    urls: Arc<[String]>,
    /// Index in `urls` of the node to try first: the one that last accepted a connection,
    /// or the one after a node that failed.
    preferred: Arc<AtomicUsize>,
    topology: Topology,
    link: Arc<Mutex<Option<Link>>>,
}

impl Broker {
    /// A broker handle that connects on first use (publishers that must keep working
    /// while RabbitMQ is down use this and retry later).
    pub fn lazy(settings: &BrokerSettings) -> Self {
        Self {
            urls: node_urls(&settings.amqp_url).into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            topology: Topology::new(settings),
            link: Arc::new(Mutex::new(None)),
        }
    }

    /// Connects and declares the topology now.
    pub async fn connect(settings: &BrokerSettings) -> Result<Self> {
        let broker = Self::lazy(settings);
        broker.connection().await?;
        Ok(broker)
    }

    /// The names in use.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The live connection, opening (and declaring the topology on) a new one if the
    /// previous one dropped.
    async fn connection(&self) -> Result<(Arc<Connection>, Channel)> {
        let mut link = self.link.lock().await;
        if let Some(current) = link.as_ref() {
            if current.connection.status().connected() && current.publisher.status().connected() {
                return Ok((current.connection.clone(), current.publisher.clone()));
            }
            tracing::warn!("rabbitmq connection lost; reconnecting");
        }
        let connection = Arc::new(self.connect_to_a_node().await?);
        let publisher = connection.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        self.topology.declare(&publisher).await?;
        *link = Some(Link { connection: connection.clone(), publisher: publisher.clone() });
        Ok((connection, publisher))
    }

    /// Opens a connection to the first node of the list, from the preferred one on, that
    /// accepts it; the error of the last one tried if none does.
    async fn connect_to_a_node(&self) -> Result<Connection> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last_error = None;
        for offset in 0..self.urls.len() {
            let index = (first + offset) % self.urls.len();
            let attempt = Connection::connect(&self.urls[index], ConnectionProperties::default());
            let timed_out = || lapin::ErrorKind::IOError(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
            match tokio::time::timeout(NODE_CONNECT_TIMEOUT, attempt).await.unwrap_or_else(|_| Err(timed_out().into()))
            {
                Ok(connection) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    if self.urls.len() > 1 {
                        tracing::info!(node = index, nodes = self.urls.len(), "connected to rabbitmq");
                    }
                    return Ok(connection);
                }
                Err(error) => {
                    // The URL holds a password: the node is named by its place in the list.
                    tracing::warn!(node = index, nodes = self.urls.len(), %error, "rabbitmq node refused the connection");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.map_or(BrokerError::NoNodes, BrokerError::Amqp))
    }

    /// Whether the connection is up (readiness).
    pub async fn is_connected(&self) -> bool {
        self.link.lock().await.as_ref().is_some_and(|l| l.connection.status().connected())
    }

    /// Publishes tasks persistently and waits until the broker has confirmed all of them.
    /// The current span's W3C trace context travels in the message headers.
    pub async fn publish<M: prost::Message>(&self, queue: TaskQueue, tasks: &[M]) -> Result<()> {
        let (_, channel) = self.connection().await?;
        let name = self.topology.queue(queue);
        let mut headers = FieldTable::default();
        for (key, value) in huddle_telemetry::trace_headers() {
            headers.insert(key.into(), AMQPValue::LongString(LongString::from(value.as_str())));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/x-protobuf".into())
            .with_headers(headers);
        let mut confirms = Vec::with_capacity(tasks.len());
        for task in tasks {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    name.as_str().into(),
                    BasicPublishOptions::default(),
                    &task.encode_to_vec(),
                    properties.clone(),
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            if !confirm.await?.is_ack() {
                retire_after_nack(&channel).await;
                return Err(BrokerError::Nacked { queue: name });
            }
        }
        TASKS_PUBLISHED.add(tasks.len() as u64, &[huddle_telemetry::metrics::KeyValue::new("queue", name)]);
        Ok(())
    }

    /// Starts consuming `queue` on a channel of its own with at most `prefetch`
    /// unacknowledged deliveries. The consumer ends when the connection drops; call
    /// again to resume.
    ///
    /// The channel comes with it because lapin closes a channel once neither it nor its
    /// consumer is held, and a delivery's ack on a closed channel is lost (the task comes
    /// back to the queue): hold the channel until every delivery is settled. Dropping the
    /// consumer alone only cancels it, so the broker sends no more.
    pub async fn consume(&self, queue: TaskQueue, prefetch: u16, tag: &str) -> Result<(Channel, Consumer)> {
        let (connection, _) = self.connection().await?;
        let channel = match tokio::time::timeout(CONSUME_TIMEOUT, connection.create_channel()).await {
            Ok(channel) => channel?,
            Err(_) => return Err(self.consume_timeout(queue)),
        };
        let subscribe = async {
            channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
            channel
                .basic_consume(
                    self.topology.queue(queue).as_str().into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        };
        match tokio::time::timeout(CONSUME_TIMEOUT, subscribe).await {
            Ok(consumer) => Ok((channel, consumer?)),
            Err(_) => {
                let _ = channel.close(200, "basic.consume unanswered; retrying".into()).await;
                Err(self.consume_timeout(queue))
            }
        }
    }

    fn consume_timeout(&self, queue: TaskQueue) -> BrokerError {
        BrokerError::ConsumeTimeout { queue: self.topology.queue(queue), after: CONSUME_TIMEOUT }
    }

    /// Up to `limit` dead-lettered tasks, oldest first, left in place.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadTask>> {
        let (connection, _) = self.connection().await?;
        // Unacked gets return to the queue, in order, when this channel closes.
        let channel = connection.create_channel().await?;
        let mut dead = Vec::new();
        let queue = self.topology.dead_letter_queue();
        while dead.len() < limit {
            let Some(message) = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await?
            else {
                break;
            };
            dead.push(DeadTask::from_delivery(&message.delivery));
        }
        let _ = channel.close(200, "peeked".into()).await;
        // The peeked tasks are ready again only once the broker has handled the close:
        // wait for that (briefly), so that a re-drive right after a peek finds them (it
        // saw an empty queue, found by CI).
        let settled_by = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while (self.depth_of(&queue).await? as usize) < dead.len() && std::time::Instant::now() < settled_by {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(dead)
    }

    /// Moves up to `limit` dead-lettered tasks back to the queues they died in; returns
    /// how many moved. Each is re-published (with confirm) before it leaves the dead queue.
    /// Only tasks already dead when it starts are moved: one that dies again meanwhile
    /// (still poison) stays in the dead queue instead of going round again.
    pub async fn redrive_dead_letters(&self, limit: usize) -> Result<usize> {
        let queue = self.topology.dead_letter_queue();
        let limit = limit.min(self.depth_of(&queue).await? as usize);
        let (connection, publisher) = self.connection().await?;
        let channel = connection.create_channel().await?;
        let mut moved = 0;
        while moved < limit {
            let Some(message) = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await?
            else {
                break;
            };
            let task = DeadTask::from_delivery(&message.delivery);
            if task.queue.is_empty() {
                // Published to "" it would be dropped unrouted (and still confirmed).
                let _ = channel.close(200, "a dead task of unknown origin".into()).await;
                return Err(BrokerError::UnknownOrigin { moved });
            }
            // A re-driven task starts counting its deliveries again.
            let properties = with_headers(&message.delivery, &[], &[DELIVERIES_HEADER, "x-delivery-count"]);
            self.publish_confirmed(&publisher, "", &task.queue, &message.delivery.data, properties).await?;
            message.delivery.ack(BasicAckOptions::default()).await?;
            moved += 1;
        }
        let _ = channel.close(200, "redriven".into()).await;
        Ok(moved)
    }

    /// On a classic queue: puts a copy of `delivery` at the back of `queue` that records
    /// `deliveries` earlier deliveries in its [`DELIVERIES_HEADER`]. The caller acks the
    /// original after this returns; if that ack is lost, the task runs twice (tasks are
    /// idempotent), never not at all.
    pub async fn requeue_counted(&self, queue: TaskQueue, delivery: &Delivery, deliveries: u32) -> Result<()> {
        let (_, publisher) = self.connection().await?;
        let properties = with_headers(delivery, &[(DELIVERIES_HEADER, AMQPValue::LongUInt(deliveries))], &[]);
        self.publish_confirmed(&publisher, "", &self.topology.queue(queue), &delivery.data, properties).await
    }

    /// On a classic queue: moves `delivery` to the dead-letter exchange the way a quorum
    /// queue does past its delivery limit (`x-first-death-reason: delivery_limit`). The
    /// caller acks the original after this returns.
    pub async fn dead_letter(&self, queue: TaskQueue, delivery: &Delivery) -> Result<()> {
        let (_, publisher) = self.connection().await?;
        let died_in = self.topology.queue(queue);
        let properties = with_headers(
            delivery,
            &[
                ("x-first-death-queue", AMQPValue::LongString(LongString::from(died_in.as_str()))),
                ("x-first-death-reason", AMQPValue::LongString(LongString::from("delivery_limit"))),
            ],
            &[],
        );
        self.publish_confirmed(&publisher, &self.topology.dead_letter_exchange(), "", &delivery.data, properties).await
    }

    /// Publishes one message and waits for the broker's confirm.
    async fn publish_confirmed(
        &self,
        publisher: &Channel,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let confirm = publisher
            .basic_publish(exchange.into(), routing_key.into(), BasicPublishOptions::default(), payload, properties)
            .await?;
        if !confirm.await?.is_ack() {
            retire_after_nack(publisher).await;
            let queue = if exchange.is_empty() { routing_key } else { exchange };
            return Err(BrokerError::Nacked { queue: queue.to_owned() });
        }
        Ok(())
    }

    /// Tasks waiting in `queue` (ready, not yet handed to a consumer).
    pub async fn queue_depth(&self, queue: TaskQueue) -> Result<u32> {
        self.depth_of(&self.topology.queue(queue)).await
    }

    async fn depth_of(&self, queue: &str) -> Result<u32> {
        let (connection, _) = self.connection().await?;
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared = channel.queue_declare(queue.into(), passive, FieldTable::default()).await?;
        let _ = channel.close(200, "counted".into()).await;
        Ok(declared.message_count())
    }

    /// Deletes every queue and exchange of this topology (test clean-up).
    pub async fn delete_topology(&self) -> Result<()> {
        let (_, channel) = self.connection().await?;
        for queue in TaskQueue::ALL {
            channel.queue_delete(self.topology.queue(queue).as_str().into(), QueueDeleteOptions::default()).await?;
        }
        channel.queue_delete(self.topology.dead_letter_queue().as_str().into(), QueueDeleteOptions::default()).await?;
        channel.exchange_delete(self.topology.dead_letter_exchange().as_str().into(), Default::default()).await?;
        Ok(())
    }

    /// Closes the connection cleanly.
    pub async fn close(&self) {
        if let Some(link) = self.link.lock().await.take() {
            // A connection whose I/O task is gone never answers; do not wait on it forever.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), link.connection.close(200, "bye".into())).await;
        }
    }
}

/// A task in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadTask {
    /// The queue it died in.
    pub queue: String,
    /// Why RabbitMQ dead-lettered it: `rejected` (poison) or `delivery_limit` (kept failing).
    pub reason: String,
    /// Payload size in bytes.
    pub size: usize,
}

impl DeadTask {
    fn from_delivery(delivery: &Delivery) -> Self {
        let header = |name: &str| {
            delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(name).cloned())
                .map(|value| match value {
                    AMQPValue::LongString(s) => s.to_string(),
                    AMQPValue::ShortString(s) => s.to_string(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default()
        };
        Self { queue: header("x-first-death-queue"), reason: header("x-first-death-reason"), size: delivery.data.len() }
    }
}

/// The properties of `delivery`, persistent, with the headers of `set` set and those of
/// `remove` removed.
fn with_headers(delivery: &Delivery, set: &[(&str, AMQPValue)], remove: &[&str]) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = delivery.properties.headers() {
        for (key, value) in old.inner() {
            if !remove.contains(&key.as_str()) && !set.iter().any(|(name, _)| *name == key.as_str()) {
                headers.insert(key.clone(), value.clone());
            }
        }
    }
    for (key, value) in set {
        headers.insert((*key).into(), value.clone());
    }
    delivery.properties.clone().with_delivery_mode(2).with_headers(headers)
}

/// Closes a publisher channel a task was nacked on, so the next publish opens a new one.
///
/// RabbitMQ 3.10 nacks every later publish of a channel that first published to a quorum
/// queue while the queue was electing a new leader (the channel keeps the dead leader it
/// read from a stale queue record), so a channel opened on a surviving node in the second
/// after another node died never recovers (found by `tests/e2e/tests/rabbitmq_cluster.rs`).
async fn retire_after_nack(channel: &Channel) {
    if let Err(error) = channel.close(200, "a publish was nacked; reopening".into()).await {
        tracing::debug!(%error, "closing the nacked publisher channel failed; it is replaced anyway");
    }
}

/// The node URLs of an AMQP URL setting: one URL, or several separated by commas (the
/// nodes of a cluster). A comma inside a password must be written `%2C`.
fn node_urls(setting: &str) -> Vec<String> {
    setting.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::node_urls;

    #[test]
    fn a_url_setting_names_one_node_or_a_comma_separated_list() {
        assert_eq!(node_urls("amqp://a:5672/%2f"), vec!["amqp://a:5672/%2f"]);
        assert_eq!(
            node_urls("amqp://u:p%2Cq@a:5672/v, amqp://u:p%2Cq@b:5672/v,"),
            vec!["amqp://u:p%2Cq@a:5672/v", "amqp://u:p%2Cq@b:5672/v"]
        );
        assert!(node_urls(" , ").is_empty());
    }
}
