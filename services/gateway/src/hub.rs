//! Live fan-out: one Redis pub/sub connection per gateway worker thread, shared by the
//! thread's sockets. A room's channel is subscribed while at least one of them is in it.
//! On Redis Cluster the connection is the cluster client's (a connection per node, each
//! channel subscribed on the shard that owns it, by `SSUBSCRIBE` unless sharded pub/sub is
//! off); it re-subscribes by itself after a failover or a slot move, and the hub makes each
//! such room's sockets resync once the new subscription is confirmed.
//!
//! Each socket has a bounded queue. Delivery never waits: a socket whose queue is full
//! is dropped from the hub (its queue closes) and its session closes it with code 4008,
//! so a stuck client never slows the room or the sender.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytestring::ByteString;
use futures_util::StreamExt;
use huddle_config::{RedisMode, RedisSettings};
use huddle_domain::RoomName;
use huddle_roomlog::{parse_published, Keyspace, RoomLog, RESET_PREFIX};
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult};
use tokio::sync::mpsc;

use crate::metrics::{DELIVERY_SECONDS, ROOMS, SLOW_CONSUMER_CLOSES};
use crate::protocol::message_frame;

/// Prefix of typing payloads on a room channel (messages start with their seq).
pub const TYPING_PREFIX: &str = "T ";
/// Prefix of presence payloads on a room channel.
pub const PRESENCE_PREFIX: &str = "P ";

/// Something for one socket to send.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A chat message frame.
    Message {
        /// The message's seq in the room's log.
        seq: u64,
        /// The serialised `message` frame, shared by every socket in the room (a clone
        /// is a reference count, not a copy).
        frame: ByteString,
    },
    /// A typing frame from `user_id`.
    Typing {
        /// Who is typing; that user's own sockets skip the frame.
        user_id: i64,
        /// The `typing` frame JSON, as published.
        frame: ByteString,
    },
    /// A presence frame (someone joined or left).
    Presence {
        /// The `presence` frame JSON, as published.
        frame: ByteString,
    },
    /// The room was re-initialised from the archive at `seq` (Redis had lost it):
    /// anything a socket saw above `seq` is gone.
    Reset {
        /// The seq the room's counter was re-initialised at.
        seq: u64,
    },
    /// Live delivery was interrupted (pub/sub reconnected): re-read the log from the
    /// last seq sent, so nothing published meanwhile is missed.
    Resync,
    /// The socket's session ended (logout or revocation, on any gateway): close it.
    SessionEnded,
}

/// A socket's place in a room; leave with [`Hub::leave`].
pub struct Membership {
    /// The socket's id in the room, to pass to [`Hub::leave`].
    pub id: u64,
    /// The socket's bounded queue; it closes when the hub drops the socket as too slow.
    pub rx: mpsc::Receiver<Outbound>,
}

/// A local socket as the hub knows it: its queue, and the session it belongs to.
struct Member {
    tx: mpsc::Sender<Outbound>,
    session: Arc<str>,
}

type Members = HashMap<RoomName, HashMap<u64, Member>>;

struct Subscriptions {
    sink: Sink,
    rooms: HashSet<RoomName>,
}

/// Where subscriptions are sent: one Redis's pub/sub connection, or a cluster's.
enum Sink {
    Single(PubSubSink),
    Cluster {
        conn: ClusterConnection,
        /// `SSUBSCRIBE` (sharded pub/sub) rather than `SUBSCRIBE`.
        sharded: bool,
    },
}

impl Sink {
    async fn subscribe(&mut self, channel: String) -> RedisResult<()> {
        match self {
            Self::Single(sink) => sink.subscribe(channel).await,
            Self::Cluster { conn, sharded: true } => conn.ssubscribe(channel).await,
            Self::Cluster { conn, sharded: false } => conn.subscribe(channel).await,
        }
    }

    async fn unsubscribe(&mut self, channel: String) -> RedisResult<()> {
        match self {
            Self::Single(sink) => sink.unsubscribe(channel).await,
            Self::Cluster { conn, sharded: true } => conn.sunsubscribe(channel).await,
            Self::Cluster { conn, sharded: false } => conn.unsubscribe(channel).await,
        }
    }

    /// A PING, on every primary of a cluster.
    async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Self::Single(sink) => sink.ping::<redis::Value>().await.map(drop),
            Self::Cluster { conn, .. } => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
                let every_node =
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::AllSucceeded)));
                conn.route_command(redis::cmd("PING"), every_node).await.map(drop)
            }
        }
    }
}

/// The gateway's fan-out hub.
pub struct Hub {
    settings: HubSettings,
    /// The thread's Redis pool, told when the pub/sub connection breaks.
    log: RoomLog,
    keys: Keyspace,
    members: Mutex<Members>,
    subscriptions: tokio::sync::Mutex<Subscriptions>,
    next_id: AtomicU64,
    queue_capacity: usize,
    /// Deadline of a subscribe, unsubscribe or keepalive round-trip.
    deadline: Duration,
    /// Wakes the dispatcher to replace a pub/sub connection that stopped answering.
    reconnect_now: tokio::sync::Notify,
    /// Which pub/sub connection is current (bumped by each reconnect), and which one last
    /// failed its keepalive: a wake-up about an already replaced connection is ignored.
    generation: AtomicU64,
    failed_generation: AtomicU64,
    /// On a cluster: the channels whose subscription Redis confirmed. A confirmation of
    /// one already confirmed is a re-subscription after a failover or a slot move.
    confirmed: Mutex<HashSet<String>>,
    /// On a cluster: a pass re-subscribing every channel is under way.
    resubscribing: std::sync::atomic::AtomicBool,
    /// On a cluster: a pass was asked for while one ran (a node may have failed after the
    /// running pass subscribed its channels there): it runs once more.
    resubscribe_again: std::sync::atomic::AtomicBool,
    /// On a cluster: pushes that found the backlog full and were dropped.
    dropped: Arc<DroppedPushes>,
}

/// How a hub reaches Redis and treats its sockets.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The Redis (or Redis Cluster) whose pub/sub carries the rooms' messages.
    pub redis: RedisSettings,
    /// The channel names.
    pub keys: Keyspace,
    /// Frames queued per socket before it is dropped as too slow.
    pub queue_capacity: usize,
    /// On a cluster: pushes waiting for the dispatcher before new ones are dropped.
    pub push_backlog: usize,
    /// Deadline of connecting and of a subscribe, unsubscribe or keepalive round-trip.
    pub deadline: Duration,
    /// How often the pub/sub connection is PINGed.
    pub keepalive: Duration,
}

/// The hub of one worker thread, opened by the first socket that joins on that thread.
///
/// Each worker thread has its own pub/sub connection, read on that thread, so a message
/// reaches the thread's sockets without a wake-up from another thread (on a busy core
/// each such hop waits for the scheduler). A room with sockets on two threads is
/// subscribed twice.
pub struct LocalHub {
    settings: HubSettings,
    log: RoomLog,
    hub: tokio::sync::OnceCell<Arc<Hub>>,
}

impl LocalHub {
    /// A hub for the current worker thread, not connected yet. `log` is the thread's pool:
    /// when the pub/sub connection breaks, its connections are checked before their next
    /// use (Redis may have restarted under all of them).
    pub fn new(settings: HubSettings, log: RoomLog) -> Self {
        Self { settings, log, hub: tokio::sync::OnceCell::new() }
    }

    /// The thread's hub, opening it on first use (once, however many sockets wait for
    /// it); a failed opening is tried again by the next caller.
    pub async fn get(&self) -> redis::RedisResult<&Arc<Hub>> {
        self.hub
            .get_or_try_init(|| async {
                tokio::time::timeout(self.settings.deadline, Hub::start(&self.settings, self.log.clone()))
                    .await
                    .unwrap_or_else(|_| {
                        Err(redis::RedisError::from((redis::ErrorKind::Io, "pub/sub connect timed out")))
                    })
            })
            .await
    }
}

impl Hub {
    /// Opens the pub/sub connection and starts dispatching, on the calling thread's runtime.
    /// The connection is PINGed every `keepalive`: one that does not answer within
    /// `deadline` (a half-open TCP connection delivers nothing and reports no error) is
    /// replaced, and every local socket resyncs.
    async fn start(settings: &HubSettings, log: RoomLog) -> redis::RedisResult<Arc<Self>> {
        let keys = settings.keys.clone();
        let dropped = Arc::new(DroppedPushes::default());
        let (mut sink, feed) = match settings.redis.redis_mode {
            RedisMode::Single => {
                let client = redis::Client::open(huddle_roomlog::connection_info(&settings.redis.redis_url)?)?;
                let (sink, stream) = client.get_async_pubsub().await?.split();
                (Sink::Single(sink), Feed::Single(stream))
            }
            RedisMode::Cluster => {
                let (pushes_tx, pushes) = mpsc::channel(settings.push_backlog.max(1));
                let overflowed = Arc::clone(&dropped);
                // Called on the connection's task, which must not wait: a push that finds
                // the backlog full is dropped, and the dispatcher is told at once.
                let push_sender = move |push: PushInfo| -> Result<(), mpsc::error::TrySendError<PushInfo>> {
                    match pushes_tx.try_send(push) {
                        Err(mpsc::error::TrySendError::Full(push)) => {
                            overflowed.record(&push.kind);
                            Ok(())
                        }
                        // The hub is gone: the client may stop sending.
                        other => other,
                    }
                };
                let client = huddle_roomlog::cluster_client(&settings.redis, true)
                    .map_err(|error| {
                        redis::RedisError::from((redis::ErrorKind::Io, "cluster client", error.to_string()))
                    })?
                    .push_sender(push_sender)
                    .build()?;
                let conn = client.get_async_connection().await?;
                (Sink::Cluster { conn, sharded: settings.redis.sharded_pubsub() }, Feed::Cluster(pushes))
            }
        };
        sink.subscribe(keys.ended_sessions()).await?;
        let hub = Arc::new(Self {
            settings: settings.clone(),
            log,
            keys,
            members: Mutex::new(HashMap::new()),
            subscriptions: tokio::sync::Mutex::new(Subscriptions { sink, rooms: HashSet::new() }),
            next_id: AtomicU64::new(1),
            queue_capacity: settings.queue_capacity.max(1),
            deadline: settings.deadline,
            reconnect_now: tokio::sync::Notify::new(),
            generation: AtomicU64::new(1),
            failed_generation: AtomicU64::new(0),
            confirmed: Mutex::new(HashSet::new()),
            resubscribing: std::sync::atomic::AtomicBool::new(false),
            resubscribe_again: std::sync::atomic::AtomicBool::new(false),
            dropped,
        });
        match feed {
            Feed::Single(stream) => tokio::spawn(Arc::clone(&hub).dispatch(stream)),
            Feed::Cluster(pushes) => tokio::spawn(Arc::clone(&hub).dispatch_pushes(pushes)),
        };
        tokio::spawn(Arc::clone(&hub).keep_alive(settings.keepalive));
        Ok(hub)
    }

    /// Adds a socket to `room`; once this returns, every message published to the room
    /// reaches the membership's queue. Fails after the deadline rather than waiting on
    /// a stuck pub/sub connection.
    /// `session` is the token id the socket was opened with: when that session ends, the
    /// socket gets [`Outbound::SessionEnded`].
    pub async fn join(&self, room: &RoomName, session: &str) -> redis::RedisResult<Membership> {
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut members = self.lock_members();
            let sockets = members.entry(room.clone()).or_insert_with(|| {
                ROOMS.add(1, &[]);
                Default::default()
            });
            sockets.insert(id, Member { tx, session: session.into() });
        }
        let subscribed = tokio::time::timeout(self.deadline, async {
            let mut subscriptions = self.subscriptions.lock().await;
            if !subscriptions.rooms.contains(room) {
                subscriptions.sink.subscribe(self.keys.channel(room)).await?;
                subscriptions.rooms.insert(room.clone());
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "pub/sub subscribe timed out"))));
        if let Err(error) = subscribed {
            self.remove(room, id);
            return Err(error);
        }
        Ok(Membership { id, rx })
    }

    /// Removes a socket; the room's channel is unsubscribed when no local socket is left.
    pub async fn leave(&self, room: &RoomName, id: u64) {
        self.remove(room, id);
        let unsubscribed = tokio::time::timeout(self.deadline, async {
            let mut subscriptions = self.subscriptions.lock().await;
            let empty = !self.lock_members().contains_key(room);
            if empty && subscriptions.rooms.remove(room) {
                let channel = self.keys.channel(room);
                self.lock_confirmed().remove(&channel);
                subscriptions.sink.unsubscribe(channel).await?;
            }
            redis::RedisResult::Ok(())
        })
        .await;
        match unsubscribed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%room, %error, "unsubscribe failed"),
            Err(_) => {
                tracing::warn!(%room, "unsubscribe timed out; the channel stays subscribed until pub/sub reconnects")
            }
        }
    }

    fn lock_members(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remove(&self, room: &RoomName, id: u64) {
        let mut members = self.lock_members();
        if let Some(sockets) = members.get_mut(room) {
            sockets.remove(&id);
            if sockets.is_empty() {
                members.remove(room);
                ROOMS.add(-1, &[]);
            }
        }
    }

    /// Delivers to every local socket of `room` without waiting; drops sockets whose
    /// queue is full.
    fn deliver(&self, room: &RoomName, outbound: Outbound) {
        let mut members = self.lock_members();
        let Some(sockets) = members.get_mut(room) else { return };
        sockets.retain(|_, member| match member.tx.try_send(outbound.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                SLOW_CONSUMER_CLOSES.add(1, &[]);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if sockets.is_empty() {
            members.remove(room);
            ROOMS.add(-1, &[]);
        }
    }

    /// Tells every local socket of `session` that it ended. A socket whose queue is full
    /// is dropped instead, which closes it as well.
    fn end_session(&self, session: &str) {
        let mut members = self.lock_members();
        for sockets in members.values_mut() {
            sockets
                .retain(|_, member| *member.session != *session || member.tx.try_send(Outbound::SessionEnded).is_ok());
        }
        let before = members.len();
        members.retain(|_, sockets| !sockets.is_empty());
        ROOMS.add(members.len() as i64 - before as i64, &[]);
    }

    fn dispatch_one(&self, channel: &str, payload: &str) {
        if channel == self.keys.ended_sessions() {
            return self.end_session(payload);
        }
        let Some(room) = self.keys.room_of_channel(channel) else { return };
        let outbound = if let Some(seq) = payload.strip_prefix(RESET_PREFIX) {
            let Ok(seq) = seq.parse() else { return };
            Outbound::Reset { seq }
        } else if let Some(json) = payload.strip_prefix(PRESENCE_PREFIX) {
            Outbound::Presence { frame: json.into() }
        } else if let Some(json) = payload.strip_prefix(TYPING_PREFIX) {
            let user_id = serde_json::from_str::<serde_json::Value>(json)
                .ok()
                .and_then(|v| v["user"]["id"].as_i64())
                .unwrap_or_default();
            Outbound::Typing { user_id, frame: json.into() }
        } else if let Some(message) = parse_published(payload) {
            let age_ms = huddle_domain::now_ms().saturating_sub(message.post.sent_at_ms).max(0);
            DELIVERY_SECONDS.record(age_ms as f64 / 1000.0, &[]);
            Outbound::Message { seq: message.seq, frame: message_frame(&room, &message) }
        } else {
            tracing::warn!(%room, "unparseable pub/sub payload ignored");
            return;
        };
        self.deliver(&room, outbound);
    }

    async fn dispatch(self: Arc<Self>, mut stream: PubSubStream) {
        loop {
            loop {
                let message = tokio::select! {
                    message = stream.next() => message,
                    _ = self.reconnect_now.notified() => {
                        if self.failed_generation.load(Ordering::Acquire) != self.generation.load(Ordering::Acquire) {
                            continue;
                        }
                        tracing::warn!("redis pub/sub connection stopped answering PING; reconnecting");
                        break;
                    }
                };
                let Some(message) = message else {
                    tracing::warn!("redis pub/sub connection lost; reconnecting");
                    break;
                };
                match message.get_payload::<String>() {
                    Ok(payload) => self.dispatch_one(message.get_channel_name(), &payload),
                    Err(error) => tracing::warn!(%error, "bad pub/sub message"),
                }
            }
            stream = self.reconnect().await;
        }
    }

    /// PINGs the pub/sub connection; one that does not answer in time is replaced.
    async fn keep_alive(self: Arc<Self>, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let generation = self.generation.load(Ordering::Acquire);
            let answered =
                tokio::time::timeout(self.deadline, async { self.subscriptions.lock().await.sink.ping().await }).await;
            let failure = match answered {
                Ok(Ok(_)) => continue,
                Ok(Err(error)) => format!("PING failed: {error}"),
                Err(_) => format!("PING unanswered within {} ms", self.deadline.as_millis()),
            };
            tracing::warn!(%failure, "redis pub/sub connection is not answering");
            if self.settings.redis.redis_mode == RedisMode::Cluster {
                // The cluster client repairs its node connections; make sure every
                // channel is subscribed again wherever its slot now lives.
                Arc::clone(&self).resubscribe_everything();
                continue;
            }
            self.failed_generation.store(generation, Ordering::Release);
            self.reconnect_now.notify_one();
        }
    }

    /// Opens a new pub/sub connection, re-subscribes every room and tells every socket
    /// to resync from the log.
    async fn reconnect(&self) -> PubSubStream {
        self.log.suspect_connections();
        let mut delay = Duration::from_millis(100);
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            // A new connection can be as silent as the old one: every step has the deadline.
            let Ok(info) = huddle_roomlog::connection_info(&self.settings.redis.redis_url) else { continue };
            let Ok(client) = redis::Client::open(info) else { continue };
            let Ok(Ok(pubsub)) = tokio::time::timeout(self.deadline, client.get_async_pubsub()).await else {
                continue;
            };
            let (mut sink, stream) = pubsub.split();
            let mut subscriptions = self.subscriptions.lock().await;
            let mut failed = false;
            let channels = std::iter::once(self.keys.ended_sessions())
                .chain(subscriptions.rooms.iter().map(|room| self.keys.channel(room)));
            for channel in channels {
                if !matches!(tokio::time::timeout(self.deadline, sink.subscribe(channel)).await, Ok(Ok(()))) {
                    failed = true;
                    break;
                }
            }
            if failed {
                continue;
            }
            subscriptions.sink = Sink::Single(sink);
            // A keepalive failure of the replaced connection must not tear this one down.
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.resync_every_room();
            tracing::info!(rooms = subscriptions.rooms.len(), "redis pub/sub reconnected");
            return stream;
        }
    }

    /// Reads a cluster's pushes: messages, and the confirmations and losses of
    /// subscriptions that tell when a room's live feed was interrupted.
    async fn dispatch_pushes(self: Arc<Self>, mut pushes: mpsc::Receiver<PushInfo>) {
        loop {
            // A drop wakes this even when no push follows it (the room went quiet).
            let next = tokio::select! {
                push = pushes.recv() => push,
                _ = self.dropped.noticed.notified() => {
                    self.recover_from_dropped_pushes();
                    continue;
                }
            };
            let Some(push) = next else { break };
            self.recover_from_dropped_pushes();
            let text =
                |index: usize| push.data.get(index).and_then(|value| redis::from_redis_value_ref::<String>(value).ok());
            match push.kind {
                PushKind::Message | PushKind::SMessage => match (text(0), text(1)) {
                    (Some(channel), Some(payload)) => self.dispatch_one(&channel, &payload),
                    _ => tracing::warn!(kind = ?push.kind, "bad pub/sub message"),
                },
                PushKind::Subscribe | PushKind::SSubscribe => {
                    if let Some(channel) = text(0) {
                        self.subscription_confirmed(channel);
                    }
                }
                PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                    let Some(channel) = text(0) else { continue };
                    // Either this hub left the room (and forgot its confirmation), or
                    // Redis dropped the subscription (its slot moved to another shard): a
                    // pass puts back a wanted one, whose confirmation then resyncs it.
                    let hub = Arc::clone(&self);
                    tokio::spawn(async move {
                        let wanted = match hub.keys.room_of_channel(&channel) {
                            Some(room) => hub.subscriptions.lock().await.rooms.contains(&room),
                            None => true,
                        };
                        if wanted {
                            hub.resubscribe_everything();
                        }
                    });
                }
                PushKind::Disconnection => {
                    // Also when the client replaces its first connections to the seed nodes.
                    tracing::info!("a redis cluster pub/sub node connection closed; re-subscribing every room");
                    self.log.suspect_connections();
                    Arc::clone(&self).resubscribe_everything();
                }
                _ => {}
            }
        }
        tracing::error!("redis cluster pub/sub feed closed; live delivery on this thread has stopped");
    }

    /// After pushes were dropped: every room re-reads its log (what was dropped was
    /// published before now, so it is there), and if a subscription's confirmation or loss
    /// was among them, every channel is subscribed again.
    fn recover_from_dropped_pushes(self: &Arc<Self>) {
        let (messages, others) = self.dropped.take();
        if !messages && !others {
            return;
        }
        tracing::warn!(
            backlog = self.settings.push_backlog,
            subscription_changes_dropped = others,
            "redis cluster pub/sub pushes dropped (this thread fell behind); every room resyncs"
        );
        crate::metrics::PUBSUB_OVERFLOWS.add(1, &[]);
        self.resync_every_room();
        if others {
            Arc::clone(self).resubscribe_everything();
        }
    }

    /// Tells every socket of this thread to re-read its room's log (live delivery had a
    /// gap).
    fn resync_every_room(&self) {
        let rooms: Vec<RoomName> = self.lock_members().keys().cloned().collect();
        for room in rooms {
            self.deliver(&room, Outbound::Resync);
        }
    }

    fn lock_confirmed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.confirmed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A subscription Redis confirmed. Confirmed again, it was re-made after an
    /// interruption (a failover, a slot move): the room's sockets re-read the log from the
    /// last seq each sent, as the feed now carries everything published from here on.
    fn subscription_confirmed(&self, channel: String) {
        let again = !self.lock_confirmed().insert(channel.clone());
        if !again {
            return;
        }
        if let Some(room) = self.keys.room_of_channel(&channel) {
            self.deliver(&room, Outbound::Resync);
        }
    }

    /// Subscribes every wanted channel again, until one whole pass succeeds after the last
    /// request for one (one pass at a time). Redis confirms each;
    /// [`Self::subscription_confirmed`] resyncs its room.
    fn resubscribe_everything(self: Arc<Self>) {
        self.resubscribe_again.store(true, Ordering::Release);
        if self.resubscribing.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                while self.resubscribe_again.swap(false, Ordering::AcqRel) {
                    let Some(failure) = self.subscribe_everything().await else { continue };
                    tracing::warn!(%failure, "re-subscribing on the redis cluster failed; trying again");
                    self.resubscribe_again.store(true, Ordering::Release);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                self.resubscribing.store(false, Ordering::Release);
                // A request that came after the last pass and before the flag dropped.
                if !self.resubscribe_again.load(Ordering::Acquire) || self.resubscribing.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
        });
    }

    /// One pass subscribing every wanted channel; what failed first, if anything did.
    async fn subscribe_everything(&self) -> Option<String> {
        let channels: Vec<String> = {
            let subscriptions = self.subscriptions.lock().await;
            std::iter::once(self.keys.ended_sessions())
                .chain(subscriptions.rooms.iter().map(|room| self.keys.channel(room)))
                .collect()
        };
        for channel in channels {
            let subscribed = tokio::time::timeout(self.deadline, async {
                let mut subscriptions = self.subscriptions.lock().await;
                let still_wanted =
                    self.keys.room_of_channel(&channel).is_none_or(|room| subscriptions.rooms.contains(&room));
                if still_wanted {
                    subscriptions.sink.subscribe(channel).await
                } else {
                    Ok(())
                }
            })
            .await;
            match subscribed {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Some(error.to_string()),
                Err(_) => return Some(format!("no answer within {} ms", self.deadline.as_millis())),
            }
        }
        None
    }
}

/// What a cluster's push channel had to drop since the dispatcher last looked.
#[derive(Default)]
struct DroppedPushes {
    messages: std::sync::atomic::AtomicBool,
    others: std::sync::atomic::AtomicBool,
    noticed: tokio::sync::Notify,
}

impl DroppedPushes {
    fn record(&self, kind: &PushKind) {
        let flag = match kind {
            PushKind::Message | PushKind::SMessage => &self.messages,
            _ => &self.others,
        };
        flag.store(true, Ordering::Release);
        self.noticed.notify_one();
    }

    /// Whether messages, and whether other pushes, were dropped; forgets both.
    fn take(&self) -> (bool, bool) {
        (self.messages.swap(false, Ordering::AcqRel), self.others.swap(false, Ordering::AcqRel))
    }
}

/// What the hub's dispatcher reads: one Redis's pub/sub stream, or a cluster's pushes.
enum Feed {
    Single(PubSubStream),
    Cluster(mpsc::Receiver<PushInfo>),
}
