//! The message bus: the host as mediator between plugins.
//!
//! Routing reads an immutable snapshot of the subscription table (swapped atomically when a
//! subscription changes), so publishing never takes a lock or asks a plugin's owner task.
//! Payloads are relayed as the same bytes; only the small header is rewritten (sender stamped,
//! receiver's subscription id set). On-demand plugins that are not running yet are the one
//! exception: their traffic waits in a bounded queue behind a lock (see [`demand`]).

mod demand;
mod io;
pub mod outbox;
mod topic;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use appfw_proto::pb::{self, ErrorKind, FrameType, SubscriptionKind};
use appfw_proto::run::scan_publish_run;
use appfw_proto::trace::{TraceParent, valid_tracestate};
use appfw_proto::{Frame, Header, Str, WireHeader, now_unix_ms};
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

pub use demand::{Demand, DemandStatus};
pub use io::IoThread;
pub use outbox::{Offer, Outbox, OutboxReceiver, Overflow, RunOffer, SendError, SubQueue, Wakes};
pub use topic::{MAX_TOPIC_LEN, Pattern, validate_topic};

use crate::metrics::{Metrics, SubscriberKey, TopicStat};

/// How long a reply or host error waits for room in a full connection queue before it is
/// dropped (and counted); the requester's own deadline still answers it.
const DELIVERY_WAIT: Duration = Duration::from_secs(1);
/// Messages of one subscription queued in the host when the subscriber does not say.
pub const DEFAULT_MAX_PENDING: usize = 256;
/// How long a publisher waits for a `block` subscriber's room when the subscriber does not say.
pub const DEFAULT_BLOCK_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a subscriber may make publishers wait (a blocked publisher's own traffic waits
/// behind it).
pub const MAX_BLOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// The server connection of a request queued for an on-demand plugin (connection ids start at 1).
const NO_SERVER: u64 = 0;

/// One plugin connection as the bus sees it.
#[derive(Debug)]
pub struct Link {
    /// The plugin (instance) name.
    pub plugin: Arc<str>,
    /// The same name as stamped in the `sender` of what it sends: made once, shared by every
    /// frame (a reference count, not an allocation, per message).
    pub sender: Str,
    /// Unique per connection, so a restarted plugin's new connection is a different link.
    pub conn_id: u64,
    /// Frames to write to the plugin.
    pub outbox: Arc<Outbox>,
    /// Time this plugin's frames spent waiting for `block` subscribers (µs, taken by its
    /// connection's reader, which does not count it as heartbeat silence).
    pub waited_us: AtomicU64,
    /// The plugin takes BATCH frames (capability `batch`, set by the handshake before it can
    /// subscribe): a run of messages for it is written as one frame, not message by message.
    pub batches: AtomicBool,
}

impl Link {
    /// The bus endpoint of a connection.
    pub fn new(plugin: Arc<str>, conn_id: u64, outbox: Arc<Outbox>) -> Self {
        Self {
            sender: Str::from(&*plugin),
            plugin,
            conn_id,
            outbox,
            waited_us: AtomicU64::new(0),
            batches: AtomicBool::new(false),
        }
    }
}

#[derive(Debug)]
struct Sub {
    link: Arc<Link>,
    id: u64,
    pattern: Pattern,
    kind: SubscriptionKind,
    group: Option<Arc<str>>,
    /// The demand of an on-demand plugin's subscription, with its index in the table's demands.
    demand: Option<(usize, Arc<Demand>)>,
    /// Its bound and overflow policy in the connection's outbox.
    queue: Arc<SubQueue>,
}

#[derive(Clone, Default)]
struct Table {
    subs: Vec<Arc<Sub>>,
    /// The on-demand plugins.
    demands: Vec<Arc<Demand>>,
}

struct PendingReq {
    origin: Arc<Link>,
    origin_id: u64,
    server_conn: u64,
    deadline_ms: u64,
    started: std::time::Instant,
    topic: Arc<TopicStat>,
}

#[derive(Default)]
struct Pending {
    by_id: HashMap<u64, PendingReq>,
    by_deadline: BTreeSet<(u64, u64)>,
}

/// What became of one copy of a message.
enum Delivered {
    Yes,
    /// Dropped by the subscription's drop policy.
    Dropped,
    /// A `block` subscription had no room in time.
    TimedOut,
    /// The subscriber's connection is closed.
    Closed,
}

/// Drops a malformed W3C trace context from a relayed header (the fields, never the frame), so
/// one plugin's bad value does not reach every receiver's tracer. A `tracestate` without a valid
/// `traceparent` means nothing and goes too. A frame whose header changed here is written
/// field by field (its received bytes still hold the dropped values).
fn sanitize_trace(plugin: &str, f: &mut Frame) {
    let h = &mut f.header;
    if h.traceparent.is_empty() && h.tracestate.is_empty() {
        return;
    }
    if TraceParent::parse(&h.traceparent).is_none() {
        if !h.traceparent.is_empty() {
            tracing::debug!(plugin, traceparent = %h.traceparent, "malformed traceparent dropped");
        }
        h.traceparent = Str::new();
        h.tracestate = Str::new();
        f.wire.clear();
    } else if !valid_tracestate(&h.tracestate) {
        tracing::debug!(plugin, "malformed tracestate dropped");
        h.tracestate = Str::new();
        f.wire.clear();
    }
}

/// A deadline in ms since the Unix epoch (0: none) as an instant.
fn instant_of(deadline_unix_ms: u64) -> Option<tokio::time::Instant> {
    (deadline_unix_ms != 0).then(|| {
        let left = deadline_unix_ms.saturating_sub(now_unix_ms());
        tokio::time::Instant::now() + Duration::from_millis(left)
    })
}

/// The subscriptions one message goes to, as indices into its table snapshot: up to 8 without
/// an allocation.
#[derive(Clone, Default)]
struct Targets {
    inline: [usize; 8],
    spill: Vec<usize>,
    count: usize,
}

impl Targets {
    fn push(&mut self, i: usize) {
        match self.inline.get_mut(self.count) {
            Some(slot) => *slot = i,
            None => self.spill.push(i),
        }
        self.count += 1;
    }

    fn get(&self, n: usize) -> usize {
        match self.inline.get(n) {
            Some(&i) => i,
            None => self.spill[n - self.inline.len()],
        }
    }
}

/// Where the last topic a connection published on went, so a stream of messages on one topic
/// skips validating the topic, looking up its counters and matching every pattern. Valid for
/// one table snapshot ([`Inner::generation`]); kept only for routes without queue groups (which
/// pick a member per message) and without a say of an on-demand plugin (a subscription of one
/// matches, or one declares the topic: its liveness is read per message).
#[derive(Default)]
pub struct RouteCache {
    /// The topic's bytes, in a buffer of this cache's (a slice of a frame would keep its whole
    /// read buffer alive).
    topic: Vec<u8>,
    route: Option<Route>,
    /// A cache that never keeps a route: for one-off publishes, so it never allocates.
    off: bool,
}

struct Route {
    generation: u64,
    table: Arc<Table>,
    stat: Arc<TopicStat>,
    targets: Targets,
}

impl RouteCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache that keeps nothing.
    pub fn off() -> Self {
        Self {
            off: true,
            ..Self::default()
        }
    }

    fn get(&self, topic: &str, generation: u64) -> Option<&Route> {
        self.route
            .as_ref()
            .filter(|r| r.generation == generation && self.topic == topic.as_bytes())
    }

    /// The route of the last topic, if the table is still the one it was made from.
    fn current(&self, generation: u64) -> Option<&Route> {
        self.route.as_ref().filter(|r| r.generation == generation)
    }

    fn keep(&mut self, topic: &str, route: Route) {
        if self.off {
            return;
        }
        self.topic.clear();
        self.topic.extend_from_slice(topic.as_bytes());
        self.route = Some(route);
    }
}

/// A run stopped at a subscriber without room for all of it, to be finished by
/// [`Bus::relay_run_wait`].
pub struct RunBlocked {
    table: Arc<Table>,
    targets: Targets,
    /// The target it stopped at.
    next: usize,
    /// The run's frames, as received.
    run: Bytes,
    topic_stat: Arc<TopicStat>,
    last_seq: u64,
}

impl RunBlocked {
    /// The `seq` of the run's last message.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

impl std::fmt::Debug for RunBlocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunBlocked")
            .field("next", &self.next)
            .field("targets", &self.targets.count)
            .finish()
    }
}

/// A publish stopped at a `block` subscriber without room, to be finished by
/// [`Bus::publish_wait`].
pub struct Blocked {
    table: Arc<Table>,
    targets: Targets,
    /// The target it stopped at, and its copy of the message.
    next: usize,
    out: Frame,
    /// The message for the targets after it.
    rest: Frame,
    deadline: Option<tokio::time::Instant>,
    topic_stat: Arc<TopicStat>,
}

impl std::fmt::Debug for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocked")
            .field("next", &self.next)
            .field("targets", &self.targets.count)
            .finish()
    }
}

/// The copy of `frame` for `target`, stamped with the sender and the subscription; the last
/// target takes `frame` itself (a header copy only bumps reference counts anyway).
#[inline(always)]
fn copy_for(from: &Link, target: &Sub, frame: &mut Frame, last: bool) -> Frame {
    let mut out = if last {
        std::mem::take(frame)
    } else {
        frame.clone()
    };
    stamp_for(from, target, &mut out);
    out
}

/// Stamps the sender and the subscription of `target` on its copy of a message.
#[inline(always)]
fn stamp_for(from: &Link, target: &Sub, out: &mut Frame) {
    out.header.sender = from.sender.clone();
    out.header.subscription_id = target.id;
    if let Some((_, d)) = &target.demand {
        d.touch();
    }
}

/// Counters of the bus.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Messages delivered to subscribers.
    pub delivered: AtomicU64,
    /// Frames not delivered: a subscription's overflow policy or block timeout, or a reply that
    /// found its requester's queue full for [`DELIVERY_WAIT`].
    pub dropped: AtomicU64,
    /// Of the delivered messages, those relayed as runs (a read's messages on one topic handed
    /// on undecoded, see [`Bus::relay_run`]).
    pub run_delivered: AtomicU64,
    /// Of those, the ones written in BATCH frames (subscribers with capability `batch`).
    pub batch_delivered: AtomicU64,
    /// Requests forwarded to a server.
    pub requests: AtomicU64,
    /// Requests answered by the host with an error (no responder, deadline, responder gone).
    pub request_errors: AtomicU64,
}

/// The bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    table: ArcSwap<Table>,
    /// Bumped after each change of `table`, so a [`RouteCache`] sees that its snapshot is old
    /// with one plain load rather than an `ArcSwap` load per message.
    generation: AtomicU64,
    edit: Mutex<()>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
    default_timeout_ms: AtomicU64,
    stats: BusStats,
    metrics: Arc<Metrics>,
    /// Wakes the expiry task when a request's deadline is earlier than every pending one.
    earlier_deadline: tokio::sync::Notify,
    /// The runtime of the connections' tasks ([`IoThread`]); `None`: the caller's.
    io: Option<tokio::runtime::Handle>,
}

/// The sender of what the host originates.
pub const HOST_SENDER: &str = "$host";

/// `sender` as a header string; `$host` without an allocation.
pub fn sender_str(sender: &str) -> Str {
    if sender == HOST_SENDER {
        Str::from_static(HOST_SENDER)
    } else {
        Str::from(sender)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The answer to a request nobody serves.
fn no_responders(topic: &str) -> pb::Error {
    error(
        ErrorKind::Temporary,
        "no_responders",
        format!("nobody serves {topic:?}"),
    )
}

fn error(kind: ErrorKind, code: &str, message: impl Into<String>) -> pb::Error {
    pb::Error {
        kind: kind as i32,
        code: code.into(),
        message: message.into(),
    }
}

impl Bus {
    /// A bus whose requests without a deadline get `default_timeout`.
    pub fn new(default_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self::with_io(default_timeout, metrics, None)
    }

    /// A bus whose connections' tasks run on `io` (the [`IoThread`]'s runtime).
    pub fn with_io(
        default_timeout: Duration,
        metrics: Arc<Metrics>,
        io: Option<tokio::runtime::Handle>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(Table::default()),
                generation: AtomicU64::new(0),
                edit: Mutex::new(()),
                pending: Mutex::new(Pending::default()),
                next_id: AtomicU64::new(1),
                round_robin: AtomicUsize::new(0),
                default_timeout_ms: AtomicU64::new(
                    u64::try_from(default_timeout.as_millis()).unwrap_or(u64::MAX),
                ),
                stats: BusStats::default(),
                metrics,
                earlier_deadline: tokio::sync::Notify::new(),
                io,
            }),
        }
    }

    /// The runtime connections' tasks run on, if not the caller's.
    pub fn io_handle(&self) -> Option<&tokio::runtime::Handle> {
        self.inner.io.as_ref()
    }

    /// Changes the deadline given to requests that carry none (a config reload).
    pub fn set_default_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.inner.default_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The counters.
    pub fn stats(&self) -> &BusStats {
        &self.inner.stats
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.inner.table.load().subs.len()
    }

    /// Requests waiting for a reply.
    pub fn pending_requests(&self) -> usize {
        lock(&self.inner.pending).by_id.len()
    }

    fn edit_table(&self, f: impl FnOnce(&mut Table)) {
        let _guard = lock(&self.inner.edit);
        let mut table = Table::clone(&self.inner.table.load());
        f(&mut table);
        self.inner.table.store(Arc::new(table));
        self.inner.generation.fetch_add(1, Ordering::Release);
    }

    /// The demand of an on-demand plugin, if `plugin` is one.
    pub fn demand(&self, plugin: &str) -> Option<Arc<Demand>> {
        self.inner
            .table
            .load()
            .demands
            .iter()
            .find(|d| d.plugin_name() == plugin)
            .cloned()
    }

    /// Adds a subscription of `link` with id `id`.
    pub fn subscribe(
        &self,
        link: &Arc<Link>,
        id: u64,
        pattern: &str,
        sub: &pb::Subscribe,
    ) -> Result<(), pb::Error> {
        let pattern =
            Pattern::parse(pattern).map_err(|m| error(ErrorKind::Permanent, "invalid_topic", m))?;
        let kind = match SubscriptionKind::try_from(sub.kind) {
            Ok(SubscriptionKind::Requests) => SubscriptionKind::Requests,
            _ => SubscriptionKind::Events,
        };
        let group = (!sub.queue_group.is_empty()).then(|| Arc::from(sub.queue_group.as_str()));
        let queue = Arc::new(self.sub_queue(link, pattern.as_str(), kind, sub));
        let add = || {
            self.edit_table(|t| {
                let demand = t
                    .demands
                    .iter()
                    .position(|d| d.plugin_name() == &*link.plugin)
                    .map(|i| (i, Arc::clone(&t.demands[i])));
                t.subs
                    .retain(|s| !(s.link.conn_id == link.conn_id && s.id == id));
                t.subs.push(Arc::new(Sub {
                    link: Arc::clone(link),
                    id,
                    pattern,
                    kind,
                    group,
                    demand,
                    queue,
                }));
            });
        };
        match self.demand(&link.plugin) {
            Some(d) => self.demand_subscribe(&d, link, add),
            None => add(),
        }
        Ok(())
    }

    fn sub_queue(
        &self,
        link: &Link,
        pattern: &str,
        kind: SubscriptionKind,
        sub: &pb::Subscribe,
    ) -> SubQueue {
        let policy = match pb::OverflowPolicy::try_from(sub.overflow) {
            Ok(pb::OverflowPolicy::DropOldest) => Overflow::DropOldest,
            Ok(pb::OverflowPolicy::DropNewest) => Overflow::DropNewest,
            _ => Overflow::Block,
        };
        let max_pending = match sub.max_pending {
            0 => DEFAULT_MAX_PENDING,
            n => (n as usize).min(outbox::OUTBOX_FRAMES),
        };
        let block_timeout = match sub.block_timeout_ms {
            0 => DEFAULT_BLOCK_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)).min(MAX_BLOCK_TIMEOUT),
        };
        let stat = self.inner.metrics.subscriber(SubscriberKey {
            plugin: link.plugin.to_string(),
            pattern: pattern.to_string(),
            kind: match kind {
                SubscriptionKind::Requests => "requests",
                _ => "events",
            },
            group: sub.queue_group.clone(),
            policy: policy.as_str(),
        });
        SubQueue::new(policy, max_pending, block_timeout, stat)
    }

    /// Drops subscription `id` of `link`.
    pub fn unsubscribe(&self, link: &Link, id: u64) -> Result<(), pb::Error> {
        let mut found = false;
        self.edit_table(|t| {
            let before = t.subs.len();
            t.subs
                .retain(|s| !(s.link.conn_id == link.conn_id && s.id == id));
            found = t.subs.len() != before;
        });
        if found {
            Ok(())
        } else {
            Err(error(
                ErrorKind::Permanent,
                "unknown_subscription",
                format!("no subscription with id {id}"),
            ))
        }
    }

    /// Forgets a connection: its subscriptions go, requests it was serving fail with
    /// `responder_gone`, requests it made are dropped.
    pub async fn disconnect(&self, link: &Link) {
        self.edit_table(|t| t.subs.retain(|s| s.link.conn_id != link.conn_id));
        if let Some(d) = self.demand(&link.plugin) {
            self.demand_disconnected(&d, link);
        }
        let orphaned: Vec<PendingReq> = {
            let mut p = lock(&self.inner.pending);
            let ids: Vec<u64> = p
                .by_id
                .iter()
                .filter(|(_, r)| r.server_conn == link.conn_id || r.origin.conn_id == link.conn_id)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| {
                    let r = p.by_id.remove(&id)?;
                    p.by_deadline.remove(&(r.deadline_ms, id));
                    Some(r)
                })
                .filter(|r| r.origin.conn_id != link.conn_id)
                .collect()
        };
        for r in orphaned {
            let e = error(
                ErrorKind::Temporary,
                "responder_gone",
                format!("{} went away before replying", link.plugin),
            );
            self.reply_error(&r.origin, r.origin_id, &link.plugin, e)
                .await;
        }
    }

    /// Delivers a PUBLISH from `from` to every matching subscriber, each by its overflow
    /// policy. `Err` is an invalid topic, or `slow_subscriber` when a `block` subscriber had no
    /// room before its block timeout or the PUBLISH's deadline (the others got the message).
    pub async fn publish(&self, from: &Link, frame: Frame) -> Result<(), pb::Error> {
        self.publish_batched(from, frame, &mut Wakes::new(), &mut RouteCache::off())
            .await
    }

    /// [`Bus::publish`] for a connection's reader routing a batch of frames: the subscribers'
    /// writers it fills are woken through `wakes`, by the caller once the batch is routed.
    pub async fn publish_batched(
        &self,
        from: &Link,
        frame: Frame,
        wakes: &mut Wakes,
        routes: &mut RouteCache,
    ) -> Result<(), pb::Error> {
        match self.publish_now(from, frame, wakes, routes) {
            Ok(result) => result,
            Err(blocked) => self.publish_wait(from, blocked, wakes).await,
        }
    }

    /// Publishes without waiting: the whole of [`Bus::publish_batched`] unless a `block`
    /// subscriber's queue is full, in which case the copies before it are delivered and the
    /// rest is handed back, to be finished by [`Bus::publish_wait`]. A reader routes its
    /// frames through this, so the common case builds no future per message.
    // The large `Err` is the rare path, returned in place; boxing it would allocate whenever a
    // publisher has to wait.
    // Inlined into the reader (the cached route is the whole path; the rest is a call): each
    // call a frame is passed to by value copies it.
    #[allow(clippy::result_large_err)]
    #[inline(always)]
    pub fn publish_now(
        &self,
        from: &Link,
        mut frame: Frame,
        wakes: &mut Wakes,
        routes: &mut RouteCache,
    ) -> Result<Result<(), pb::Error>, Blocked> {
        sanitize_trace(&from.plugin, &mut frame);
        // Read before the table (a change in between makes the cached route stale, not wrong).
        let generation = self.inner.generation.load(Ordering::Acquire);
        if let Some(r) = routes.get(&frame.header.topic, generation) {
            r.stat.messages.fetch_add(1, Ordering::Relaxed);
            r.stat
                .bytes
                .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
            frame.header.request_id = 0;
            return self.deliver_now(from, frame, wakes, &r.table, &r.targets, &r.stat);
        }
        self.publish_routing(from, frame, wakes, routes, generation)
    }

    /// [`Bus::publish_now`] for a topic without a cached route: validates it, matches the
    /// patterns, and caches the route if it can.
    #[allow(clippy::result_large_err)]
    #[inline(never)]
    fn publish_routing(
        &self,
        from: &Link,
        mut frame: Frame,
        wakes: &mut Wakes,
        routes: &mut RouteCache,
        generation: u64,
    ) -> Result<Result<(), pb::Error>, Blocked> {
        let len = frame.payload.len() as u64;
        if let Err(m) = validate_topic(&frame.header.topic) {
            return Ok(Err(error(ErrorKind::Permanent, "invalid_topic", m)));
        }
        let topic_stat = self.inner.metrics.with_topic(&frame.header.topic, |t| {
            t.messages.fetch_add(1, Ordering::Relaxed);
            t.bytes.fetch_add(len, Ordering::Relaxed);
            Arc::clone(t)
        });
        let table = self.inner.table.load_full();
        // On-demand plugins not live yet take the message through their queue; whether each is
        // live is read once, so a plugin turning live meanwhile gets it exactly once.
        let mut small = [false; 64];
        let mut big = Vec::new();
        let cold: &mut [bool] = if table.demands.len() <= small.len() {
            &mut small[..table.demands.len()]
        } else {
            big.resize(table.demands.len(), false);
            &mut big
        };
        if !table.demands.is_empty() {
            let mut stamped = frame.clone();
            stamped.header.sender = from.sender.clone();
            stamped.header.request_id = 0;
            for (i, d) in table.demands.iter().enumerate() {
                if !d.is_live() {
                    cold[i] = true;
                    self.demand_publish(d, &stamped);
                }
            }
        }
        let skip = |s: &Sub| match &s.demand {
            Some((i, _)) => cold.get(*i).copied().unwrap_or(true),
            None => false,
        };
        // Targets first, so the last one can take the frame itself instead of a copy (1 -> 1,
        // the common case, copies no header). Up to 8 on the stack.
        let mut targets = Targets::default();
        let mut groups_done: Vec<&str> = Vec::new();
        // Whether an on-demand plugin has a say in this route: a subscription of one matches
        // (it is skipped while the plugin is not live), or one declares the topic (its queue
        // takes the message while it is cold). Such a route is decided per message.
        let mut on_demand = table
            .demands
            .iter()
            .any(|d| d.declares(&frame.header.topic));
        for (i, sub) in table.subs.iter().enumerate() {
            if sub.kind != SubscriptionKind::Events || !sub.pattern.matches(&frame.header.topic) {
                continue;
            }
            on_demand |= sub.demand.is_some();
            if skip(sub) {
                continue;
            }
            let target = match &sub.group {
                None => i,
                Some(g) => {
                    if groups_done.contains(&&**g) {
                        continue;
                    }
                    groups_done.push(g);
                    self.pick_group_member(&table, i, g, &frame.header.topic, &skip)
                }
            };
            targets.push(target);
        }
        let cacheable =
            groups_done.is_empty() && !on_demand && targets.count <= targets.inline.len();
        drop(groups_done);
        if cacheable {
            let route = Route {
                generation,
                table: Arc::clone(&table),
                stat: Arc::clone(&topic_stat),
                targets: targets.clone(),
            };
            routes.keep(&frame.header.topic, route);
        }
        frame.header.request_id = 0;
        self.deliver_now(from, frame, wakes, &table, &targets, &topic_stat)
    }

    /// Offers the copies of a publish to `targets` without waiting; stops at a full `block`
    /// subscriber, handing the rest back.
    #[allow(clippy::result_large_err)]
    #[inline(always)]
    fn deliver_now(
        &self,
        from: &Link,
        frame: Frame,
        wakes: &mut Wakes,
        table: &Arc<Table>,
        targets: &Targets,
        topic_stat: &Arc<TopicStat>,
    ) -> Result<Result<(), pb::Error>, Blocked> {
        // The last target takes the frame itself: moved out of the Option (one copy), not
        // `mem::take`n (a copy and a default frame written back).
        let mut frame = Some(frame);
        for i in 0..targets.count {
            let target = &table.subs[targets.get(i)];
            let mut out = match frame.as_ref() {
                Some(f) if i + 1 < targets.count => f.clone(),
                _ => match frame.take() {
                    Some(f) => f,
                    None => break,
                },
            };
            stamp_for(from, target, &mut out);
            match target
                .link
                .outbox
                .offer_deferred(out, &target.queue, true, wakes)
            {
                Offer::Full(out) => {
                    return Err(Blocked {
                        // From the copy: the frame itself may be in it.
                        deadline: instant_of(out.header.deadline_unix_ms),
                        table: Arc::clone(table),
                        targets: targets.clone(),
                        next: i,
                        out,
                        rest: frame.unwrap_or_default(),
                        topic_stat: Arc::clone(topic_stat),
                    });
                }
                outcome => {
                    if let Delivered::Dropped = self.account(target, outcome) {
                        topic_stat.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(Ok(()))
    }

    /// Relays the run of PUBLISH frames at the start of `buf` that a connection's reader can
    /// hand on without decoding them: messages on the topic it published on last, while that
    /// route is cached and every subscriber has room for all of them (see
    /// [`appfw_proto::run`]). They are split off `buf` and queued for each subscriber as one
    /// item. `Ok(None)` if the frame at the start is not such a message (the reader decodes
    /// it as usual); else the `seq` of the last message taken. A subscriber the run does not
    /// fit after all (its connection's byte bound, another of its subscriptions in the same
    /// run, or a queue filled from another thread) gets the messages one by one:
    /// [`Bus::relay_run_wait`] finishes the run.
    #[allow(clippy::result_large_err)]
    #[inline]
    pub fn relay_run(
        &self,
        from: &Link,
        buf: &mut BytesMut,
        max_frame_size: usize,
        wakes: &mut Wakes,
        routes: &RouteCache,
    ) -> Result<Option<u64>, RunBlocked> {
        let generation = self.inner.generation.load(Ordering::Acquire);
        let Some(r) = routes.current(generation) else {
            return Ok(None);
        };
        // The first frame alone first: other traffic (logs, metrics, PONGs) between messages
        // costs one header check, not the targets' locks.
        if scan_publish_run(buf, &routes.topic, 1, max_frame_size).frames == 0 {
            return Ok(None);
        }
        // A `drop-newest` subscriber without room for all of them does not shorten the run: it
        // takes what it has room for (see below).
        let mut room = usize::MAX;
        for i in 0..r.targets.count {
            let target = &r.table.subs[r.targets.get(i)];
            if target.queue.policy != Overflow::DropNewest {
                room = room.min(target.link.outbox.room(&target.queue));
            }
        }
        let scan = scan_publish_run(buf, &routes.topic, room, max_frame_size);
        if scan.frames == 0 {
            return Ok(None);
        }
        let run = buf.split_to(scan.len).freeze();
        r.stat
            .messages
            .fetch_add(u64::from(scan.frames), Ordering::Relaxed);
        r.stat
            .bytes
            .fetch_add(scan.payload_bytes, Ordering::Relaxed);
        // The run names its topic with a slice of itself (checked UTF-8: it equals the route's).
        let topic = Str::try_from(run.slice(scan.topic_at..scan.topic_at + routes.topic.len()))
            .unwrap_or_default();
        let mut run = Some(run);
        for i in 0..r.targets.count {
            let target = &r.table.subs[r.targets.get(i)];
            let payload = match run.as_ref() {
                Some(b) if i + 1 < r.targets.count => b.clone(),
                _ => run.take().unwrap_or_default(),
            };
            let batch = target.link.batches.load(Ordering::Relaxed);
            let frame = Frame {
                header: Header {
                    r#type: FrameType::Publish as i32,
                    sender: from.sender.clone(),
                    topic: topic.clone(),
                    subscription_id: target.id,
                    ..Header::default()
                },
                payload,
                wire: if batch {
                    WireHeader::batch(scan.frames)
                } else {
                    WireHeader::run(scan.frames)
                },
            };
            let blocked = |frame: Frame| RunBlocked {
                table: Arc::clone(&r.table),
                targets: r.targets.clone(),
                next: i,
                run: frame.payload,
                topic_stat: Arc::clone(&r.stat),
                last_seq: scan.last_seq,
            };
            let queued = match target.link.outbox.offer_run(frame, &target.queue, wakes) {
                RunOffer::Taken { queued, dropped } => {
                    // A `drop-newest` subscriber's share of the run it had no room for.
                    if dropped > 0 {
                        self.dropped_new(target, dropped);
                        r.stat.dropped.fetch_add(dropped, Ordering::Relaxed);
                    }
                    queued
                }
                RunOffer::Full(frame) => return Err(blocked(frame)),
                RunOffer::Closed => 0,
            };
            if queued > 0 {
                let stats = &self.inner.stats;
                stats.delivered.fetch_add(queued, Ordering::Relaxed);
                stats.run_delivered.fetch_add(queued, Ordering::Relaxed);
                if batch {
                    stats.batch_delivered.fetch_add(queued, Ordering::Relaxed);
                }
                target
                    .queue
                    .stat
                    .delivered
                    .fetch_add(queued, Ordering::Relaxed);
            }
        }
        Ok(Some(scan.last_seq))
    }

    /// Counts `n` new messages dropped because `sub`'s queue was full (its drop policy; the
    /// topic's count is the caller's).
    fn dropped_new(&self, sub: &Sub, n: u64) {
        let q = &sub.queue;
        self.inner.stats.dropped.fetch_add(n, Ordering::Relaxed);
        q.stat.dropped_overflow.fetch_add(n, Ordering::Relaxed);
        if q.should_warn() {
            tracing::warn!(plugin = %sub.link.plugin, subscription = sub.id, pattern = sub.pattern.as_str(), policy = q.policy.as_str(), "subscriber queue full: new message dropped; counted in appfw_bus_subscriber_dropped_total");
        }
    }

    /// Finishes a run [`Bus::relay_run`] handed back: its messages one by one, each to the
    /// subscriber that had no room and those after it, as [`Bus::publish_wait`] does.
    pub async fn relay_run_wait(&self, from: &Link, blocked: RunBlocked, wakes: &mut Wakes) {
        let RunBlocked {
            table,
            targets,
            next,
            run,
            topic_stat,
            ..
        } = blocked;
        // Copied once to decode: a rare path (see Bus::relay_run).
        let mut rest = BytesMut::from(&run[..]);
        let mut codec = appfw_proto::FrameCodec::new(usize::MAX).keeping_wire();
        while let Ok(Some(mut frame)) = codec.decode(&mut rest) {
            let target = &table.subs[targets.get(next)];
            let out = copy_for(from, target, &mut frame, next + 1 == targets.count);
            let blocked = Blocked {
                table: Arc::clone(&table),
                targets: targets.clone(),
                next,
                out,
                rest: frame,
                deadline: None,
                topic_stat: Arc::clone(&topic_stat),
            };
            // A publish without a receipt: a late subscriber is counted, not reported.
            let _ = self.publish_wait(from, blocked, wakes).await;
        }
    }

    /// Finishes a publish [`Bus::publish_now`] handed back: waits for the full `block`
    /// subscriber's room (up to its block timeout or the publish's deadline), then delivers to
    /// the remaining subscribers, waiting likewise for each full one.
    pub async fn publish_wait(
        &self,
        from: &Link,
        blocked: Blocked,
        wakes: &mut Wakes,
    ) -> Result<(), pb::Error> {
        let Blocked {
            table,
            targets,
            next,
            out,
            mut rest,
            deadline,
            topic_stat,
        } = blocked;
        let mut late = 0usize;
        let mut first_late: Option<(Arc<str>, u64)> = None;
        let mut blocked_out = Some(out);
        for i in next..targets.count {
            let target = &table.subs[targets.get(i)];
            let out = match blocked_out.take() {
                Some(out) => out,
                None => copy_for(from, target, &mut rest, i + 1 == targets.count),
            };
            match self
                .deliver_to(from, target, out, true, deadline, wakes)
                .await
            {
                Delivered::Yes | Delivered::Closed => {}
                Delivered::Dropped => {
                    topic_stat.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Delivered::TimedOut => {
                    topic_stat.dropped.fetch_add(1, Ordering::Relaxed);
                    late += 1;
                    first_late.get_or_insert_with(|| (Arc::clone(&target.link.plugin), target.id));
                }
            }
        }
        match first_late {
            None => Ok(()),
            Some((plugin, id)) => Err(error(
                ErrorKind::Temporary,
                "slow_subscriber",
                format!(
                    "{late} subscriber(s) had no room for the message in time (first: {plugin}, subscription {id}); the others got it"
                ),
            )),
        }
    }

    /// Queues a message or request for subscription `sub` by its overflow policy, waiting (under
    /// `block`) until its block timeout or `deadline`, whichever comes first.
    async fn deliver_to(
        &self,
        from: &Link,
        sub: &Sub,
        frame: Frame,
        evict: bool,
        deadline: Option<tokio::time::Instant>,
        wakes: &mut Wakes,
    ) -> Delivered {
        let q = &sub.queue;
        let outbox = &sub.link.outbox;
        let outcome = match outbox.offer_deferred(frame, q, evict, wakes) {
            Offer::Full(frame) => {
                // Waiting for a writer to make room: none of them may wait for our wake-up.
                wakes.wake_all();
                let started = tokio::time::Instant::now();
                let mut until = started + q.block_timeout;
                if let Some(d) = deadline {
                    until = until.min(d);
                }
                let outcome = outbox.offer_until(frame, q, evict, until).await;
                let waited = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                from.waited_us.fetch_add(waited, Ordering::Relaxed);
                outcome
            }
            other => other,
        };
        self.account(sub, outcome)
    }

    /// Counts what became of a copy offered to `sub` (an [`Offer::Full`] here is final: the
    /// wait is over).
    fn account(&self, sub: &Sub, outcome: Offer) -> Delivered {
        let q = &sub.queue;
        let stats = &self.inner.stats;
        let delivered = || {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            q.stat.delivered.fetch_add(1, Ordering::Relaxed);
        };
        match outcome {
            Offer::Queued => {
                delivered();
                Delivered::Yes
            }
            Offer::QueuedDroppedOldest { first, count } => {
                delivered();
                let n = count as u64;
                stats.dropped.fetch_add(n, Ordering::Relaxed);
                q.stat.dropped_overflow.fetch_add(n, Ordering::Relaxed);
                self.inner.metrics.with_topic(&first.header.topic, |t| {
                    t.dropped.fetch_add(n, Ordering::Relaxed)
                });
                if q.should_warn() {
                    tracing::warn!(plugin = %sub.link.plugin, subscription = sub.id, pattern = sub.pattern.as_str(), "subscriber queue full: oldest message dropped (drop-oldest); counted in appfw_bus_subscriber_dropped_total");
                }
                Delivered::Yes
            }
            Offer::Dropped => {
                self.dropped_new(sub, 1);
                Delivered::Dropped
            }
            Offer::Full(_) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                q.stat.dropped_timeout.fetch_add(1, Ordering::Relaxed);
                if q.should_warn() {
                    tracing::warn!(plugin = %sub.link.plugin, subscription = sub.id, pattern = sub.pattern.as_str(), "subscriber queue stayed full until the publisher's deadline (block): message not delivered; counted in appfw_bus_subscriber_dropped_total");
                }
                Delivered::TimedOut
            }
            Offer::Closed => Delivered::Closed,
        }
    }

    fn pick_group_member(
        &self,
        table: &Table,
        first: usize,
        group: &str,
        topic: &str,
        skip: &dyn Fn(&Sub) -> bool,
    ) -> usize {
        // `first` itself is never skipped, so there is at least one member. Two passes over the
        // members (count, then pick) rather than collecting them: no allocation per message.
        let is_member = |s: &&Arc<Sub>| {
            s.kind == SubscriptionKind::Events
                && s.group.as_deref() == Some(group)
                && s.pattern.matches(topic)
                && !skip(s)
        };
        let members = table.subs[first..].iter().filter(is_member).count().max(1);
        let n = self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % members;
        table.subs[first..]
            .iter()
            .enumerate()
            .filter(|(_, s)| is_member(s))
            .nth(n)
            .map_or(first, |(i, _)| first + i)
    }

    /// Queues a reply or host error for `link`, waiting up to [`DELIVERY_WAIT`] for room.
    async fn deliver(&self, link: &Link, frame: Frame) {
        let stats = &self.inner.stats;
        match link.outbox.send(frame, DELIVERY_WAIT).await {
            Ok(()) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(SendError::Full) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %link.plugin, "plugin queue full for {DELIVERY_WAIT:?}: reply dropped");
            }
            Err(SendError::Closed) => {}
        }
    }

    /// Queues `frame` to `link` without waiting (under a demand's lock): a full queue drops it.
    fn try_deliver(&self, link: &Link, frame: Frame) {
        let stats = &self.inner.stats;
        match link.outbox.try_send(frame) {
            Ok(()) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(SendError::Full) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %link.plugin, "plugin queue full: queued message dropped");
            }
            Err(SendError::Closed) => {}
        }
    }

    /// [`Bus::reply_error`] without waiting.
    fn reply_error_now(&self, to: &Link, request_id: u64, sender: &str, e: pb::Error) {
        self.inner
            .stats
            .request_errors
            .fetch_add(1, Ordering::Relaxed);
        let mut f = Frame::new(FrameType::Reply, Bytes::new());
        f.header.request_id = request_id;
        f.header.sender = sender_str(sender);
        f.header.error = Some(Box::new(e));
        self.try_deliver(to, f);
    }

    fn add_pending(&self, host_id: u64, req: PendingReq) {
        let deadline_ms = req.deadline_ms;
        let mut p = lock(&self.inner.pending);
        p.by_id.insert(host_id, req);
        let earliest = p.by_deadline.first().is_none_or(|&(d, _)| deadline_ms < d);
        p.by_deadline.insert((deadline_ms, host_id));
        if earliest {
            self.inner.earlier_deadline.notify_one();
        }
    }

    fn take_pending(&self, host_id: u64) -> Option<PendingReq> {
        let mut p = lock(&self.inner.pending);
        let r = p.by_id.remove(&host_id)?;
        p.by_deadline.remove(&(r.deadline_ms, host_id));
        Some(r)
    }

    /// Answers a request the host cannot route with `e`. The reply may wait for room in the
    /// requester's outbox, so the writers this batch filled are woken first.
    async fn refuse_request(&self, from: &Link, origin_id: u64, wakes: &mut Wakes, e: pb::Error) {
        wakes.wake_all();
        self.reply_error(from, origin_id, HOST_SENDER, e).await;
    }

    async fn reply_error(&self, to: &Link, request_id: u64, sender: &str, e: pb::Error) {
        self.inner
            .stats
            .request_errors
            .fetch_add(1, Ordering::Relaxed);
        let mut f = Frame::new(FrameType::Reply, Bytes::new());
        f.header.request_id = request_id;
        f.header.sender = sender_str(sender);
        f.header.error = Some(Box::new(e));
        self.deliver(to, f).await;
    }

    /// Routes a REQUEST from `from` to one matching server, or answers it with an error at once.
    pub async fn request(&self, from: &Arc<Link>, frame: Frame) {
        self.request_batched(from, frame, &mut Wakes::new()).await;
    }

    /// [`Bus::request`] whose server's writer is woken through `wakes` (see
    /// [`Bus::publish_batched`]).
    pub async fn request_batched(&self, from: &Arc<Link>, mut frame: Frame, wakes: &mut Wakes) {
        sanitize_trace(&from.plugin, &mut frame);
        let origin_id = frame.header.request_id;
        // A second reference to the topic's bytes (no copy), so `frame` can move on.
        let topic_str = frame.header.topic.clone();
        let topic: &str = &topic_str;
        if let Err(m) = validate_topic(topic) {
            let e = error(ErrorKind::Permanent, "invalid_topic", m);
            return self.refuse_request(from, origin_id, wakes, e).await;
        }
        let now = now_unix_ms();
        let deadline_ms = match frame.header.deadline_unix_ms {
            0 => now.saturating_add(self.inner.default_timeout_ms.load(Ordering::Relaxed)),
            d => d,
        };
        if deadline_ms <= now {
            let e = error(
                ErrorKind::Temporary,
                "deadline_exceeded",
                "the deadline passed before the request was routed",
            );
            return self.refuse_request(from, origin_id, wakes, e).await;
        }
        let table = self.inner.table.load_full();
        // A live server first; an on-demand plugin is started only when nobody can answer now.
        // Counted, then picked by a second pass: no allocation per request.
        let is_server = |s: &&Arc<Sub>| {
            s.kind == SubscriptionKind::Requests
                && s.pattern.matches(topic)
                && s.demand.as_ref().is_none_or(|(_, d)| d.is_live())
        };
        let servers = table.subs.iter().filter(is_server).count();
        let demand = if servers == 0 {
            match self.demand_for(&table, topic) {
                Some(d) => Some(d),
                None => {
                    tracing::debug!(topic = %topic, "request answered no_responders: nobody serves {topic:?}");
                    let e = no_responders(topic);
                    return self.refuse_request(from, origin_id, wakes, e).await;
                }
            }
        } else {
            None
        };
        let host_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let len = frame.payload.len() as u64;
        let topic_stat = self.inner.metrics.with_topic(topic, |t| {
            t.messages.fetch_add(1, Ordering::Relaxed);
            t.bytes.fetch_add(len, Ordering::Relaxed);
            Arc::clone(t)
        });
        let req = PendingReq {
            origin: Arc::clone(from),
            origin_id,
            server_conn: NO_SERVER,
            deadline_ms,
            started: std::time::Instant::now(),
            topic: topic_stat,
        };
        let mut out = frame;
        out.header.sender = from.sender.clone();
        out.header.request_id = host_id;
        out.header.deadline_unix_ms = deadline_ms;
        if let Some(d) = demand {
            return self.demand_request(d, from, req, out);
        }
        let n = self.inner.round_robin.fetch_add(1, Ordering::Relaxed);
        // A server's `live` flag may change between the two passes: then the first one found.
        let server = table.subs.iter().filter(is_server).nth(n % servers);
        let Some(server) = server.or_else(|| table.subs.iter().find(is_server)) else {
            let e = no_responders(topic);
            return self.refuse_request(from, origin_id, wakes, e).await;
        };
        if let Some((_, d)) = &server.demand {
            d.touch();
        }
        self.add_pending(
            host_id,
            PendingReq {
                server_conn: server.link.conn_id,
                ..req
            },
        );
        out.header.subscription_id = server.id;
        self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        match self
            .deliver_to(from, server, out, false, instant_of(deadline_ms), wakes)
            .await
        {
            Delivered::Yes | Delivered::Closed => {}
            Delivered::Dropped | Delivered::TimedOut => {
                // Every request gets an answer: this one at once, not at its deadline.
                if let Some(r) = self.take_pending(host_id) {
                    let e = error(
                        ErrorKind::Temporary,
                        "overloaded",
                        format!("{}'s queue is full", server.link.plugin),
                    );
                    self.reply_error(&r.origin, r.origin_id, HOST_SENDER, e)
                        .await;
                }
            }
        }
    }

    /// Routes a REPLY from `from` back to the requester. A reply to a request that was not sent
    /// to `from` (or already answered or expired) is dropped: a plugin cannot answer for another.
    pub async fn reply(&self, from: &Link, mut frame: Frame) {
        sanitize_trace(&from.plugin, &mut frame);
        let host_id = frame.header.request_id;
        let req = {
            let mut p = lock(&self.inner.pending);
            match p.by_id.get(&host_id) {
                Some(r) if r.server_conn == from.conn_id => {
                    let r = p.by_id.remove(&host_id);
                    if let Some(r) = &r {
                        p.by_deadline.remove(&(r.deadline_ms, host_id));
                    }
                    r
                }
                _ => None,
            }
        };
        let Some(req) = req else {
            tracing::debug!(plugin = %from.plugin, host_id, "late or foreign reply dropped");
            return;
        };
        req.topic.latency.observe(req.started.elapsed());
        let mut out = frame;
        out.header.sender = from.sender.clone();
        out.header.request_id = req.origin_id;
        out.header.subscription_id = 0;
        self.deliver(&req.origin, out).await;
    }

    /// Answers expired requests with `deadline_exceeded` until `cancel`.
    pub async fn run_expiry(self, cancel: CancellationToken) {
        // Sleeps until the earliest deadline (woken early when a request with an earlier one
        // arrives), so an idle host does not tick.
        loop {
            let next = lock(&self.inner.pending)
                .by_deadline
                .first()
                .map(|&(d, _)| d);
            let sleep = async {
                match next {
                    Some(d) => {
                        let left = Duration::from_millis(d.saturating_sub(now_unix_ms()));
                        tokio::time::sleep(left).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = self.inner.earlier_deadline.notified() => continue,
                () = cancel.cancelled() => return,
            }
            let now = now_unix_ms();
            let expired: Vec<PendingReq> = {
                let mut p = lock(&self.inner.pending);
                let mut out = Vec::new();
                while let Some(&(d, id)) = p.by_deadline.first() {
                    if d > now {
                        break;
                    }
                    p.by_deadline.pop_first();
                    if let Some(r) = p.by_id.remove(&id) {
                        out.push(r);
                    }
                }
                out
            };
            for r in expired {
                let e = error(
                    ErrorKind::Temporary,
                    "deadline_exceeded",
                    "no reply before the deadline",
                );
                self.reply_error(&r.origin, r.origin_id, HOST_SENDER, e)
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The receiving end as the tests read it.
    struct Rx(OutboxReceiver);

    impl Rx {
        fn try_recv(&mut self) -> Result<Frame, ()> {
            self.0.try_recv().ok_or(())
        }
        async fn recv(&mut self) -> Option<Frame> {
            self.0.recv().await
        }
    }

    fn link(name: &str, conn: u64) -> (Arc<Link>, Rx) {
        let (tx, rx) = outbox::outbox_with(8, 1 << 20);
        let rx = Rx(rx);
        (Arc::new(Link::new(name.into(), conn, tx)), rx)
    }

    fn serving() -> pb::Subscribe {
        pb::Subscribe {
            kind: SubscriptionKind::Requests as i32,
            ..Default::default()
        }
    }

    fn request(topic: &str, id: u64) -> Frame {
        let mut f = Frame::new(FrameType::Request, Bytes::new());
        f.header.topic = topic.into();
        f.header.request_id = id;
        f
    }

    fn publish(topic: &str, sender: &str) -> Frame {
        let mut f = Frame::new(FrameType::Publish, Bytes::from_static(b"payload"));
        f.header.topic = topic.into();
        f.header.sender = sender.into();
        f
    }

    /// Routes the frames in `wire` as a connection's reader does: as runs where it can (if
    /// `runs`), else frame by frame.
    async fn read_frames(bus: &Bus, from: &Link, wire: &[u8], runs: bool) {
        let mut buf = BytesMut::from(wire);
        let mut codec = appfw_proto::FrameCodec::new(1 << 20).keeping_wire();
        let mut wakes = Wakes::new();
        let mut routes = RouteCache::new();
        loop {
            if runs {
                match bus.relay_run(from, &mut buf, 1 << 20, &mut wakes, &routes) {
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    Err(blocked) => {
                        bus.relay_run_wait(from, blocked, &mut wakes).await;
                        continue;
                    }
                }
            }
            let Some(f) = codec.decode(&mut buf).unwrap() else {
                break;
            };
            if let Err(blocked) = bus.publish_now(from, f, &mut wakes, &mut routes) {
                let _ = bus.publish_wait(from, blocked, &mut wakes).await;
            }
        }
        assert!(buf.is_empty());
        wakes.wake_all();
    }

    /// What a subscriber's writer writes of everything queued for it, decoded again.
    async fn written(rx: &mut OutboxReceiver) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut seq = appfw_proto::writer::Sequencer::new(0, Arc::new(AtomicU64::new(5)));
        let done = CancellationToken::new();
        done.cancel();
        appfw_proto::writer::write_frames(&mut out, rx, &mut seq, 1 << 20, &done, |_, _| {}).await;
        let mut buf = BytesMut::from(&out[..]);
        let mut codec = appfw_proto::FrameCodec::new(1 << 20);
        let mut frames = Vec::new();
        let mut next_seq = 1;
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            // Frames are numbered without gaps, a BATCH frame as one.
            assert_eq!(f.header.seq, next_seq);
            next_seq += 1;
            if f.frame_type() == Some(FrameType::Batch) {
                assert!(!f.payload.is_empty(), "a BATCH frame holds messages");
                for m in appfw_proto::batch::unbatch(&f) {
                    frames.push(m.unwrap());
                }
            } else {
                frames.push(f);
            }
        }
        assert!(buf.is_empty());
        frames
    }

    /// How a scenario's messages are relayed.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Mode {
        /// Decoded one by one.
        Single,
        /// As runs, written message by message.
        Runs,
        /// As runs, to subscribers that take BATCH frames.
        Batches,
    }

    /// The messages without their `seq` and `ack`, which number frames (a BATCH frame counts
    /// once), not messages.
    fn unnumbered(mut out: Vec<(Vec<Frame>, u64)>) -> Vec<(Vec<Frame>, u64)> {
        for f in out.iter_mut().flat_map(|(frames, _)| frames.iter_mut()) {
            f.header.seq = 0;
            f.header.ack = 0;
        }
        out
    }

    /// Relays `frames` in every [`Mode`], checks that each writes every subscriber the same
    /// messages (runs exactly what single frames write, batches the same messages), and
    /// returns what single frames write.
    async fn relayed_all(frames: &[Frame], subs: &[SubSpec]) -> Vec<(Vec<Frame>, u64)> {
        let single = relayed(frames, subs, Mode::Single).await;
        assert_eq!(relayed(frames, subs, Mode::Runs).await, single);
        assert_eq!(
            unnumbered(relayed(frames, subs, Mode::Batches).await),
            unnumbered(single.clone())
        );
        single
    }

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        for f in frames {
            appfw_proto::encode_frame_of(f, &f.payload, 1 << 20, &mut buf).unwrap();
        }
        buf.to_vec()
    }

    /// One subscription of a scenario: its pattern, policy, bound and outbox's byte bound.
    type SubSpec = (&'static str, Overflow, u32, usize);

    /// Runs `frames` from a publisher through a fresh bus to the subscribers of `subs`, as runs
    /// or frame by frame: what each subscriber is written, and its drop counters.
    async fn relayed(frames: &[Frame], subs: &[SubSpec], mode: Mode) -> Vec<(Vec<Frame>, u64)> {
        relayed_counting_runs(frames, subs, mode).await.0
    }

    /// [`relayed`], with how many copies went as runs.
    async fn relayed_counting_runs(
        frames: &[Frame],
        subs: &[SubSpec],
        mode: Mode,
    ) -> (Vec<(Vec<Frame>, u64)>, u64) {
        let bus = Bus::new(Duration::from_secs(1), Arc::new(Metrics::new(100)));
        let (a, _ra) = link("a", 1);
        let mut rxs = Vec::new();
        for (i, &(pattern, policy, max_pending, bytes)) in subs.iter().enumerate() {
            let (tx, rx) = outbox::outbox_with(1024, bytes);
            let l = Arc::new(Link::new(format!("s{i}").into(), 10 + i as u64, tx));
            l.batches.store(mode == Mode::Batches, Ordering::Relaxed);
            let overflow = match policy {
                Overflow::Block => pb::OverflowPolicy::Block,
                Overflow::DropOldest => pb::OverflowPolicy::DropOldest,
                Overflow::DropNewest => pb::OverflowPolicy::DropNewest,
            };
            let sub = pb::Subscribe {
                overflow: overflow as i32,
                max_pending,
                block_timeout_ms: 1,
                ..Default::default()
            };
            bus.subscribe(&l, 3 + i as u64, pattern, &sub).unwrap();
            rxs.push((l, rx));
        }
        read_frames(&bus, &a, &encoded(frames), mode != Mode::Single).await;
        let table = bus.inner.table.load_full();
        let mut out = Vec::new();
        for (l, mut rx) in rxs {
            let sub = table
                .subs
                .iter()
                .find(|s| Arc::ptr_eq(&s.link, &l))
                .unwrap();
            let dropped = sub.queue.stat.dropped_overflow.load(Ordering::Relaxed)
                + sub.queue.stat.dropped_timeout.load(Ordering::Relaxed);
            out.push((written(&mut rx).await, dropped));
        }
        (out, bus.inner.stats.run_delivered.load(Ordering::Relaxed))
    }

    fn sized(topic: &str, n: u8, size: usize) -> Frame {
        let mut f = Frame::new(FrameType::Publish, Bytes::from(vec![n; size]));
        f.header.topic = topic.into();
        f.header.seq = u64::from(n) + 1;
        f
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever mix of messages a publisher sends, relaying runs of them writes every
        /// subscriber exactly what relaying them one by one writes, and BATCH frames the same
        /// messages.
        #[test]
        fn runs_write_what_single_frames_write(
            msgs in proptest::collection::vec(
                (0usize..3, 0usize..5, proptest::bool::ANY, 0usize..300), 1..60)
        ) {
            const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let frames: Vec<Frame> = msgs.iter().enumerate().map(|(i, &(topic, extra, ct, size))| {
                let mut f = sized(["t.a", "t.b", "x.c"][topic], i as u8, size);
                match extra {
                    1 => f.header.traceparent = TP.into(),
                    2 => {
                        f.header.traceparent = TP.into();
                        f.header.tracestate = "k=v".into();
                    }
                    3 => f.header.traceparent = "00-bad".into(),
                    4 => f.header.request_id = 9,
                    _ => {}
                }
                if ct {
                    f.header.content_type = "text/plain".into();
                }
                f
            }).collect();
            let subs: [SubSpec; 3] = [
                ("t.*", Overflow::Block, 1000, 1 << 20),
                ("t.a", Overflow::DropNewest, 1000, 1 << 20),
                // Full after a few: takes part of a run.
                (">", Overflow::DropNewest, 7, 1 << 20),
            ];
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(relayed_all(&frames, &subs));
        }
    }

    #[tokio::test]
    async fn routes_are_cached_unless_an_on_demand_plugin_has_a_say() {
        let bus = Bus::new(Duration::from_secs(1), Arc::new(Metrics::new(100)));
        let (a, _ra) = link("a", 1);
        let (b, mut rb) = link("b", 2);
        bus.subscribe(&b, 1, ">", &pb::Subscribe::default())
            .unwrap();
        bus.declare("od", Some((&["od.>".to_string()], 16)));
        let mut routes = RouteCache::new();
        let generation = || bus.inner.generation.load(Ordering::Acquire);
        let send = async |topic: &str, routes: &mut RouteCache| {
            bus.publish_batched(&a, publish(topic, "a"), &mut Wakes::new(), routes)
                .await
                .unwrap();
        };
        send("t.x", &mut routes).await;
        assert!(
            routes.get("t.x", generation()).is_some(),
            "no on-demand plugin has a say on t.x"
        );
        send("od.x", &mut routes).await;
        assert!(
            routes.get("od.x", generation()).is_none(),
            "od declares od.x"
        );
        assert_eq!(
            bus.demand("od").unwrap().pending_demand().map(|(_, n)| n),
            Some(1),
            "its queue took the message"
        );
        // Declaring more topics makes the cached routes stale.
        send("t.x", &mut routes).await;
        assert!(routes.get("t.x", generation()).is_some());
        bus.declare("od", Some((&["od.>".to_string(), "t.*".to_string()], 16)));
        assert!(routes.current(generation()).is_none());
        send("t.x", &mut routes).await;
        assert!(routes.get("t.x", generation()).is_none());
        assert_eq!(
            bus.demand("od").unwrap().pending_demand().map(|(_, n)| n),
            Some(2)
        );
        // b got every message meanwhile.
        let mut n = 0;
        while rb.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 4);
    }

    #[tokio::test]
    async fn drop_oldest_cuts_the_front_of_a_queued_run() {
        let frames: Vec<Frame> = (0..10).map(|n| sized("t.a", n, 64)).collect();
        let subs: [SubSpec; 1] = [("t.a", Overflow::DropOldest, 4, 1 << 20)];
        let runs = relayed_all(&frames, &subs).await;
        let (got, dropped) = &runs[0];
        let firsts: Vec<u8> = got.iter().map(|f| f.payload[0]).collect();
        assert_eq!(firsts, [6, 7, 8, 9], "the newest four stay");
        assert_eq!(*dropped, 6);
    }

    #[tokio::test]
    async fn a_full_drop_newest_subscriber_takes_what_fits_of_a_run_and_the_others_all_of_it() {
        let frames: Vec<Frame> = (0..10).map(|n| sized("t.a", n, 64)).collect();
        let subs: [SubSpec; 3] = [
            ("t.a", Overflow::Block, 100, 1 << 20),
            ("t.*", Overflow::DropNewest, 4, 1 << 20),
            ("t.>", Overflow::DropOldest, 100, 1 << 20),
        ];
        let out = relayed_all(&frames, &subs).await;
        let firsts = |i: usize| -> Vec<u8> { out[i].0.iter().map(|f| f.payload[0]).collect() };
        assert_eq!(firsts(0), (0..10).collect::<Vec<u8>>());
        assert_eq!((firsts(1), out[1].1), (vec![0, 1, 2, 3], 6));
        assert_eq!(firsts(2), (0..10).collect::<Vec<u8>>());
        // After the first message (decoded, caching the route) the other nine went as a run to
        // all three, though the drop-newest one had room for three of them only.
        let (_, runs) = relayed_counting_runs(&frames, &subs, Mode::Runs).await;
        assert_eq!(runs, 9 + 3 + 9);
        // When the connection's own bound decides, message by message as before.
        let subs: [SubSpec; 1] = [("t.a", Overflow::DropNewest, 100, 200)];
        let out = relayed_all(&frames, &subs).await;
        assert_eq!(out[0].0.len() as u64 + out[0].1, 10);
    }

    #[tokio::test]
    async fn a_run_without_room_goes_message_by_message_under_the_policy() {
        // The first message caches the route; the run of the next three does not fit the
        // outbox's byte bound, so each is offered alone: two fit, the last is dropped.
        let frames: Vec<Frame> = (0..4).map(|n| sized("t.a", n, 64)).collect();
        let subs: [SubSpec; 1] = [("t.a", Overflow::DropNewest, 100, 200)];
        let runs = relayed_all(&frames, &subs).await;
        let (got, dropped) = &runs[0];
        let firsts: Vec<u8> = got.iter().map(|f| f.payload[0]).collect();
        assert_eq!(firsts, [0, 1, 2]);
        assert_eq!(*dropped, 1);
        // Under `block` the same messages wait out their timeout and are counted.
        let subs: [SubSpec; 1] = [("t.a", Overflow::Block, 100, 200)];
        let runs = relayed_all(&frames, &subs).await;
        assert_eq!(runs[0].1, 1);
    }

    #[tokio::test]
    async fn publish_reaches_matching_subscribers_with_the_sender_stamped() {
        let bus = Bus::new(Duration::from_secs(1), Arc::new(Metrics::new(100)));
        let (a, _ra) = link("a", 1);
        let (b, mut rb) = link("b", 2);
        let (c, mut rc) = link("c", 3);
        bus.subscribe(&b, 7, "orders.*", &pb::Subscribe::default())
            .unwrap();
        bus.subscribe(&c, 9, "other", &pb::Subscribe::default())
            .unwrap();
        bus.publish(&a, publish("orders.new", "forged"))
            .await
            .unwrap();
        let got = rb.try_recv().unwrap();
        assert_eq!(
            got.header.sender, "a",
            "the sender is stamped, not taken from the plugin"
        );
        assert_eq!(got.header.subscription_id, 7);
        assert_eq!(&got.payload[..], b"payload");
        assert!(rc.try_recv().is_err());
    }

    #[tokio::test]
    async fn queue_group_delivers_each_message_once() {
        let bus = Bus::new(Duration::from_secs(1), Arc::new(Metrics::new(100)));
        let (a, _ra) = link("a", 1);
        let (b, mut rb) = link("b", 2);
        let (c, mut rc) = link("c", 3);
        let g = pb::Subscribe {
            kind: SubscriptionKind::Events as i32,
            queue_group: "workers".into(),
            ..Default::default()
        };
        bus.subscribe(&b, 1, "jobs", &g).unwrap();
        bus.subscribe(&c, 1, "jobs", &g).unwrap();
        for _ in 0..6 {
            bus.publish(&a, publish("jobs", "a")).await.unwrap();
        }
        let (mut nb, mut nc) = (0, 0);
        while rb.try_recv().is_ok() {
            nb += 1;
        }
        while rc.try_recv().is_ok() {
            nc += 1;
        }
        assert_eq!(nb + nc, 6);
        assert!(
            nb > 0 && nc > 0,
            "round robin spreads the load: {nb} / {nc}"
        );
    }

    #[tokio::test]
    async fn request_without_server_is_answered_at_once() {
        let bus = Bus::new(Duration::from_secs(1), Arc::new(Metrics::new(100)));
        let (a, mut ra) = link("a", 1);
        bus.request(&a, request("nobody", 5)).await;
        let r = ra.try_recv().unwrap();
        assert_eq!(r.header.request_id, 5);
        assert_eq!(r.header.error.unwrap().code, "no_responders");
    }

    #[tokio::test]
    async fn request_reply_round_trip_and_foreign_replies_are_dropped() {
        let bus = Bus::new(Duration::from_secs(5), Arc::new(Metrics::new(100)));
        let (a, mut ra) = link("a", 1);
        let (b, mut rb) = link("b", 2);
        let (m, _rm) = link("mallory", 3);
        let serve = serving();
        bus.subscribe(&b, 4, "echo", &serve).unwrap();
        let mut f = Frame::new(FrameType::Request, Bytes::from_static(b"hi"));
        f.header.topic = "echo".into();
        f.header.request_id = 77;
        bus.request(&a, f).await;
        let req = rb.try_recv().unwrap();
        assert_eq!(req.header.sender, "a");
        assert_eq!(req.header.subscription_id, 4);
        assert!(
            req.header.deadline_unix_ms > 0,
            "the default deadline is filled in"
        );
        let mut forged = Frame::new(FrameType::Reply, Bytes::from_static(b"evil"));
        forged.header.request_id = req.header.request_id;
        bus.reply(&m, forged).await;
        assert!(ra.try_recv().is_err(), "mallory cannot answer b's request");
        let mut rep = Frame::new(FrameType::Reply, Bytes::from_static(b"hi"));
        rep.header.request_id = req.header.request_id;
        bus.reply(&b, rep).await;
        let got = ra.try_recv().unwrap();
        assert_eq!(got.header.request_id, 77);
        assert_eq!(got.header.sender, "b");
        assert_eq!(bus.pending_requests(), 0);
    }

    #[tokio::test]
    async fn server_disconnect_fails_outstanding_requests() {
        let bus = Bus::new(Duration::from_secs(5), Arc::new(Metrics::new(100)));
        let (a, mut ra) = link("a", 1);
        let (b, _rb) = link("b", 2);
        let serve = serving();
        bus.subscribe(&b, 1, "svc", &serve).unwrap();
        bus.request(&a, request("svc", 3)).await;
        bus.disconnect(&b).await;
        let got = ra.try_recv().unwrap();
        assert_eq!(got.header.error.unwrap().code, "responder_gone");
        assert_eq!(bus.subscription_count(), 0);
    }

    fn topics(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    async fn woken(d: &Demand) -> bool {
        tokio::time::timeout(Duration::from_millis(200), d.wake().notified())
            .await
            .is_ok()
    }

    fn payloads(rx: &mut Rx) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            out.push(String::from_utf8_lossy(&f.payload).into_owned());
        }
        out
    }

    fn numbered(topic: &str, n: usize) -> Frame {
        let mut f = Frame::new(FrameType::Publish, Bytes::from(n.to_string()));
        f.header.topic = topic.into();
        f
    }

    #[tokio::test]
    async fn on_demand_traffic_waits_for_the_subscriptions_then_flows_in_order() {
        let bus = Bus::new(Duration::from_secs(5), Arc::new(Metrics::new(100)));
        let (a, mut ra) = link("a", 1);
        let d = bus
            .declare("od", Some((&topics(&["orders.>", "svc"]), 10)))
            .unwrap();
        for i in 0..3 {
            bus.publish(&a, numbered("orders.new", i)).await.unwrap();
        }
        assert!(woken(&d).await, "the first message wakes the owner task");
        assert_eq!(d.pending_demand(), Some(("orders.new".to_string(), 3)));
        bus.request(&a, request("svc", 42)).await;
        bus.publish(&a, numbered("elsewhere", 9)).await.unwrap();
        assert_eq!(d.status().queued, 4, "undeclared topics are not held");
        assert!(ra.try_recv().is_err(), "nothing answered yet");
        bus.demand_starting(&d);
        let (od, mut rod) = link("od", 2);
        bus.subscribe(&od, 1, "orders.>", &pb::Subscribe::default())
            .unwrap();
        assert_eq!(payloads(&mut rod), ["0", "1", "2"], "delivered in order");
        assert!(!d.is_live(), "svc is not subscribed yet");
        // Published between the two SUBSCRIBEs: delivered at once, after the queued ones.
        bus.publish(&a, numbered("orders.new", 3)).await.unwrap();
        assert_eq!(payloads(&mut rod), ["3"]);
        bus.subscribe(&od, 2, "svc", &serving()).unwrap();
        let req = rod.try_recv().unwrap();
        assert_eq!(req.header.subscription_id, 2);
        assert_eq!(req.header.sender, "a");
        assert!(
            d.is_live(),
            "every declared topic is subscribed and nothing waits"
        );
        assert!(d.status().last_cold_start_ms.is_some());
        let mut rep = Frame::new(FrameType::Reply, Bytes::from_static(b"ok"));
        rep.header.request_id = req.header.request_id;
        bus.reply(&od, rep).await;
        assert_eq!(ra.try_recv().unwrap().header.request_id, 42);
        // Live: routed like any plugin.
        bus.publish(&a, numbered("orders.new", 4)).await.unwrap();
        assert_eq!(payloads(&mut rod), ["4"]);
        assert!(d.idle_for() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_full_on_demand_queue_refuses_requests_and_counts_dropped_messages() {
        let metrics = Arc::new(Metrics::new(100));
        let bus = Bus::new(Duration::from_secs(5), Arc::clone(&metrics));
        let (a, mut ra) = link("a", 1);
        let d = bus.declare("od", Some((&topics(&["t"]), 2))).unwrap();
        for i in 0..3 {
            bus.publish(&a, numbered("t", i)).await.unwrap();
        }
        assert_eq!(d.status().queued, 2);
        assert_eq!(d.counters().dropped.load(Ordering::Relaxed), 1);
        bus.request(&a, request("t", 7)).await;
        let e = ra.try_recv().unwrap().header.error.unwrap();
        assert_eq!(e.code, "overloaded");
        assert_eq!(e.kind, ErrorKind::Temporary as i32);
        assert!(e.message.contains("on_demand_queue"), "{}", e.message);
    }

    #[tokio::test]
    async fn a_queued_request_keeps_its_deadline() {
        let bus = Bus::new(Duration::from_secs(5), Arc::new(Metrics::new(100)));
        let (a, mut ra) = link("a", 1);
        let d = bus.declare("od", Some((&topics(&["slow"]), 10))).unwrap();
        let mut f = request("slow", 9);
        f.header.deadline_unix_ms = now_unix_ms() + 50;
        bus.request(&a, f).await;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(bus.clone().run_expiry(cancel.clone()));
        let got = tokio::time::timeout(Duration::from_secs(5), ra.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.header.error.unwrap().code, "deadline_exceeded");
        // The process that comes up later does not get the expired request.
        bus.demand_starting(&d);
        let (od, mut rod) = link("od", 2);
        bus.subscribe(&od, 1, "slow", &serving()).unwrap();
        assert!(rod.try_recv().is_err());
        assert_eq!(bus.pending_requests(), 0);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn held_plugins_refuse_at_once_and_live_servers_come_first() {
        let bus = Bus::new(Duration::from_secs(5), Arc::new(Metrics::new(100)));
        let (a, mut ra) = link("a", 1);
        let d = bus
            .declare("od", Some((&topics(&["svc", "x"]), 10)))
            .unwrap();
        bus.request(&a, request("x", 1)).await;
        assert!(woken(&d).await);
        bus.demand_refuse(&d, "plugin_stopped", "od is stopped".into());
        let e = ra.try_recv().unwrap().header.error.unwrap();
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("plugin_stopped", "od is stopped")
        );
        bus.request(&a, request("x", 2)).await;
        assert_eq!(
            ra.try_recv().unwrap().header.error.unwrap().code,
            "plugin_stopped"
        );
        bus.request(&a, request("nobody", 3)).await;
        assert_eq!(
            ra.try_recv().unwrap().header.error.unwrap().code,
            "no_responders"
        );
        // Another plugin serving the topic answers without waking the on-demand one.
        bus.demand_cold(&d);
        let (b, mut rb) = link("b", 3);
        bus.subscribe(&b, 1, "svc", &serving()).unwrap();
        bus.request(&a, request("svc", 4)).await;
        assert!(rb.try_recv().is_ok());
        assert!(!woken(&d).await);
        // No longer on-demand: what waits is refused.
        bus.request(&a, request("x", 5)).await;
        assert!(bus.declare("od", None).is_none());
        assert_eq!(
            ra.try_recv().unwrap().header.error.unwrap().code,
            "no_responders"
        );
    }

    fn with_policy(policy: pb::OverflowPolicy, max_pending: u32) -> pb::Subscribe {
        pb::Subscribe {
            kind: SubscriptionKind::Events as i32,
            overflow: policy as i32,
            max_pending,
            ..Default::default()
        }
    }

    fn sub_stat(
        m: &Metrics,
        plugin: &str,
        policy: Overflow,
    ) -> Arc<crate::metrics::SubscriberStat> {
        m.subscriber(SubscriberKey {
            plugin: plugin.into(),
            pattern: "t".into(),
            kind: "events",
            group: String::new(),
            policy: policy.as_str(),
        })
    }

    #[tokio::test]
    async fn slow_subscribers_with_drop_policies_never_slow_the_publisher_or_the_others() {
        use futures_util::FutureExt;
        let metrics = Arc::new(Metrics::new(100));
        let bus = Bus::new(Duration::from_secs(5), Arc::clone(&metrics));
        let (a, _ra) = link("a", 1);
        let (fast, mut rfast) = link("fast", 2);
        let (old, mut rold) = link("old", 3);
        let (new, mut rnew) = link("new", 4);
        bus.subscribe(&fast, 1, "t", &with_policy(pb::OverflowPolicy::Block, 4))
            .unwrap();
        bus.subscribe(
            &old,
            1,
            "t",
            &with_policy(pb::OverflowPolicy::DropOldest, 5),
        )
        .unwrap();
        bus.subscribe(
            &new,
            1,
            "t",
            &with_policy(pb::OverflowPolicy::DropNewest, 5),
        )
        .unwrap();
        let n = 5000;
        let mut got = Vec::with_capacity(n);
        for i in 0..n {
            // now_or_never: the publish completes without ever waiting for the slow two.
            let done = bus.publish(&a, numbered("t", i)).now_or_never();
            assert!(matches!(done, Some(Ok(()))), "publish {i} waited or failed");
            got.extend(payloads(&mut rfast));
            assert!(old.outbox.len() <= 5 && new.outbox.len() <= 5, "bounded");
        }
        let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        assert_eq!(got, want, "the fast subscriber got everything, in order");
        assert_eq!(
            payloads(&mut rold),
            ["4995", "4996", "4997", "4998", "4999"]
        );
        assert_eq!(payloads(&mut rnew), ["0", "1", "2", "3", "4"]);
        let lost = (n - 5) as u64;
        for (plugin, policy) in [("old", Overflow::DropOldest), ("new", Overflow::DropNewest)] {
            let st = sub_stat(&metrics, plugin, policy);
            assert_eq!(
                st.dropped_overflow.load(Ordering::Relaxed),
                lost,
                "{plugin}"
            );
            assert_eq!(st.pending.load(Ordering::Relaxed), 0, "{plugin} drained");
        }
        let fast_stat = sub_stat(&metrics, "fast", Overflow::Block);
        assert_eq!(fast_stat.delivered.load(Ordering::Relaxed), n as u64);
        assert_eq!(fast_stat.dropped_timeout.load(Ordering::Relaxed), 0);
        let topic_dropped = metrics.with_topic("t", |t| t.dropped.load(Ordering::Relaxed));
        assert_eq!(topic_dropped, 2 * lost, "drops are counted per topic too");
        assert_eq!(bus.stats().dropped.load(Ordering::Relaxed), 2 * lost);
    }

    #[tokio::test]
    async fn block_loses_nothing_and_a_deadline_turns_into_an_error_for_the_publisher() {
        let metrics = Arc::new(Metrics::new(100));
        let bus = Bus::new(Duration::from_secs(5), Arc::clone(&metrics));
        let (a, _ra) = link("a", 1);
        let (slow, rslow) = link("slow", 2);
        let (other, mut rother) = link("other", 3);
        bus.subscribe(&slow, 1, "t", &with_policy(pb::OverflowPolicy::Block, 4))
            .unwrap();
        bus.subscribe(
            &other,
            1,
            "t",
            &with_policy(pb::OverflowPolicy::DropNewest, 1),
        )
        .unwrap();
        // A consumer slower than the publisher: the publisher waits, nothing is lost.
        let n = 2000;
        let consumer = tokio::spawn(async move {
            let mut rx = rslow;
            let mut seen = Vec::with_capacity(n);
            while seen.len() < n {
                let f = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .expect("a message in time")
                    .expect("open");
                seen.push(String::from_utf8_lossy(&f.payload).into_owned());
                tokio::task::yield_now().await;
            }
            (seen, rx)
        });
        for i in 0..n {
            bus.publish(&a, numbered("t", i)).await.unwrap();
            let _ = payloads(&mut rother);
        }
        let (seen, _rslow) = consumer.await.unwrap();
        let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        assert_eq!(seen, want);
        let st = sub_stat(&metrics, "slow", Overflow::Block);
        assert_eq!(st.delivered.load(Ordering::Relaxed), n as u64);
        assert_eq!(st.dropped_timeout.load(Ordering::Relaxed), 0);
        // Nobody reads any more: once the queue is full, the publisher's deadline ends the wait
        // with an error naming the subscriber; the other subscriber still got the message.
        for i in 0..4 {
            bus.publish(&a, numbered("t", i)).await.unwrap();
            let _ = payloads(&mut rother);
        }
        let mut f = numbered("t", 99);
        f.header.deadline_unix_ms = now_unix_ms() + 50;
        let e = bus.publish(&a, f).await.unwrap_err();
        assert_eq!(e.code, "slow_subscriber");
        assert_eq!(e.kind, ErrorKind::Temporary as i32);
        assert!(e.message.contains("slow"), "{}", e.message);
        assert_eq!(payloads(&mut rother), ["99"]);
        assert_eq!(st.dropped_timeout.load(Ordering::Relaxed), 1);
        assert_eq!(st.pending.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_cached_route_follows_subscription_changes() {
        let bus = Bus::new(Duration::from_secs(1), Arc::new(Metrics::new(100)));
        let (a, _ra) = link("a", 1);
        let (b, mut rb) = link("b", 2);
        let (c, mut rc) = link("c", 3);
        let mut routes = RouteCache::new();
        bus.subscribe(&b, 1, "orders.*", &pb::Subscribe::default())
            .unwrap();
        bus.publish_batched(&a, numbered("orders.eu", 0), &mut Wakes::new(), &mut routes)
            .await
            .unwrap();
        bus.publish_batched(&a, numbered("orders.eu", 1), &mut Wakes::new(), &mut routes)
            .await
            .unwrap();
        assert_eq!(payloads(&mut rb), ["0", "1"]);
        // A new subscriber gets the next message on the cached topic; one that left does not.
        bus.subscribe(&c, 5, "orders.eu", &pb::Subscribe::default())
            .unwrap();
        bus.unsubscribe(&b, 1).unwrap();
        bus.publish_batched(&a, numbered("orders.eu", 2), &mut Wakes::new(), &mut routes)
            .await
            .unwrap();
        assert_eq!(payloads(&mut rb), Vec::<String>::new());
        let got = rc.try_recv().unwrap();
        assert_eq!((&*got.header.sender, got.header.subscription_id), ("a", 5));
        // Another topic is routed (and validated) on its own.
        let e = bus
            .publish_batched(
                &a,
                numbered("orders..eu", 3),
                &mut Wakes::new(),
                &mut routes,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, "invalid_topic");
        let counted = bus
            .inner
            .metrics
            .with_topic("orders.eu", |t| t.messages.load(Ordering::Relaxed));
        assert_eq!(counted, 3);
    }

    #[tokio::test]
    async fn a_lone_block_subscriber_waits_only_until_the_publish_deadline() {
        // The only subscriber is also the last target, which takes the frame itself: its
        // deadline must still end the wait (not the 5 s block timeout).
        let bus = Bus::new(Duration::from_secs(1), Arc::new(Metrics::new(100)));
        let (a, _ra) = link("a", 1);
        let (b, _rb) = link("b", 2);
        let sub = pb::Subscribe {
            block_timeout_ms: 5000,
            ..with_policy(pb::OverflowPolicy::Block, 1)
        };
        bus.subscribe(&b, 1, "t", &sub).unwrap();
        bus.publish(&a, numbered("t", 0)).await.unwrap();
        let mut f = numbered("t", 1);
        f.header.deadline_unix_ms = now_unix_ms() + 50;
        let e = tokio::time::timeout(Duration::from_secs(2), bus.publish(&a, f))
            .await
            .expect("the deadline ends the wait")
            .unwrap_err();
        assert_eq!(e.code, "slow_subscriber");
    }

    #[tokio::test]
    async fn malformed_trace_context_is_dropped_and_valid_one_relayed_unchanged() {
        let bus = Bus::new(Duration::from_secs(5), Arc::new(Metrics::new(100)));
        let (a, _ra) = link("a", 1);
        let (b, mut rb) = link("b", 2);
        bus.subscribe(&b, 1, "t", &pb::Subscribe::default())
            .unwrap();
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for (tp, ts, want_tp, want_ts) in [
            (good, "congo=t61rcWkgMzE", good, "congo=t61rcWkgMzE"),
            (good, "not a list member", good, ""),
            ("00-XYZ-00f067aa0ba902b7-01", "congo=1", "", ""),
            ("", "congo=1", "", ""),
        ] {
            let mut f = publish("t", "a");
            f.header.traceparent = tp.into();
            f.header.tracestate = ts.into();
            bus.publish(&a, f).await.unwrap();
            let got = rb.try_recv().unwrap();
            assert_eq!(
                &got.payload[..],
                b"payload",
                "the frame itself is delivered"
            );
            assert_eq!(
                (&*got.header.traceparent, &*got.header.tracestate),
                (want_tp, want_ts),
                "{tp:?} {ts:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_to_a_full_server_is_answered_overloaded_at_once() {
        let bus = Bus::new(Duration::from_secs(5), Arc::new(Metrics::new(100)));
        let (a, mut ra) = link("a", 1);
        let (b, _rb) = link("b", 2);
        let serve = pb::Subscribe {
            kind: SubscriptionKind::Requests as i32,
            overflow: pb::OverflowPolicy::DropNewest as i32,
            max_pending: 1,
            ..Default::default()
        };
        bus.subscribe(&b, 1, "svc", &serve).unwrap();
        bus.request(&a, request("svc", 1)).await;
        bus.request(&a, request("svc", 2)).await;
        let r = ra.try_recv().unwrap();
        assert_eq!(r.header.request_id, 2);
        assert_eq!(r.header.error.unwrap().code, "overloaded");
        assert_eq!(bus.pending_requests(), 1, "the first one waits for b");
    }

    #[tokio::test]
    async fn expired_requests_get_deadline_exceeded() {
        let bus = Bus::new(Duration::from_secs(5), Arc::new(Metrics::new(100)));
        let (a, mut ra) = link("a", 1);
        let (b, _rb) = link("b", 2);
        let serve = serving();
        bus.subscribe(&b, 1, "slow", &serve).unwrap();
        let mut f = request("slow", 9);
        f.header.deadline_unix_ms = now_unix_ms() + 50;
        bus.request(&a, f).await;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(bus.clone().run_expiry(cancel.clone()));
        let got = tokio::time::timeout(Duration::from_secs(5), ra.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.header.error.unwrap().code, "deadline_exceeded");
        cancel.cancel();
        task.await.unwrap();
    }
}
