//! The plugin handle, its event loop and its writer.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use appfw_proto::pb::{self, FrameType, HealthStatus, Level, SubscriptionKind};
use appfw_proto::writer::{Sequencer, WriterEnd, write_frames};
use appfw_proto::{Frame, FrameCodec, caps};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{Framed, FramedParts, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{handshake, stream_from_env};
use crate::metrics::Metrics;
use crate::resilience::{
    AdaptiveLimit, BreakerConfig, CircuitBreaker, RetryPolicy, is_failure, unit_random,
};
use crate::trace::TraceContext;
use crate::{RequestError, SdkError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type EventHandler = Arc<dyn Fn(Message) -> BoxFuture<()> + Send + Sync>;
type RequestHandler = Arc<dyn Fn(Message) -> BoxFuture<Result<Bytes, RequestError>> + Send + Sync>;
type Pending = oneshot::Sender<Result<Message, RequestError>>;

/// Capacity of the outgoing queue; senders wait when it is full (backpressure).
const OUTBOX_CAPACITY: usize = 1024;
/// Destinations with a circuit breaker of their own; calls to further ones go unguarded.
const MAX_BREAKERS: usize = 1000;

/// A destination's breaker and its series.
struct Breaker {
    breaker: CircuitBreaker,
    state: crate::Gauge,
    opened: crate::Counter,
    retries: crate::Counter,
}

/// The adaptive handler limit and its series (created on first use).
struct Adaptive {
    limit: AdaptiveLimit,
    gauge: OnceLock<crate::Gauge>,
    shed: OnceLock<crate::Counter>,
}

/// How [`Plugin::request_with`] makes a call.
#[derive(Clone, Debug)]
pub struct RequestOptions {
    /// The caller's deadline for the whole call, retries included.
    pub timeout: Duration,
    /// Retry temporary errors (`None`: one attempt).
    pub retry: Option<RetryPolicy>,
    /// Guard the destination topic with a circuit breaker.
    pub circuit_breaker: bool,
}

impl RequestOptions {
    /// One attempt within `timeout`, with the destination's circuit breaker.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            retry: None,
            circuit_breaker: true,
        }
    }

    /// Retries temporary errors by `policy`, within the same `timeout`.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Without a circuit breaker.
    pub fn no_circuit_breaker(mut self) -> Self {
        self.circuit_breaker = false;
        self
    }
}

/// A message or request as delivered to a handler.
#[derive(Clone, Debug, Default)]
pub struct Message {
    /// The topic it was published or requested on.
    pub topic: String,
    /// The plugin that sent it, stamped by the host (cannot be forged).
    pub sender: String,
    /// The payload, exactly as the sender wrote it.
    pub payload: Bytes,
    /// Absolute deadline of a request, if any.
    pub deadline: Option<SystemTime>,
    /// W3C `traceparent` of the sender's span, if traced.
    pub traceparent: String,
    /// W3C `tracestate`.
    pub tracestate: String,
    /// Optional content type set by the sender.
    pub content_type: String,
    /// In a handler: the handler's trace context, continuing the sender's trace (or a new one
    /// if the message carried none). It is also [`TraceContext::current`] while the handler
    /// runs, so what the handler sends carries the same trace id.
    pub trace: Option<TraceContext>,
}

impl Message {
    fn from_frame(frame: Frame) -> Self {
        let h = frame.header;
        Self {
            topic: h.topic.to_string(),
            sender: h.sender.to_string(),
            payload: frame.payload,
            deadline: (h.deadline_unix_ms > 0)
                .then(|| UNIX_EPOCH + Duration::from_millis(h.deadline_unix_ms)),
            traceparent: h.traceparent.to_string(),
            tracestate: h.tracestate.to_string(),
            content_type: h.content_type.to_string(),
            trace: None,
        }
    }

    /// A message for a handler, with the handler's trace context.
    fn for_handler(frame: Frame) -> Self {
        let mut m = Self::from_frame(frame);
        m.trace = Some(
            TraceContext::continue_from(&m.traceparent, &m.tracestate)
                .unwrap_or_else(TraceContext::new_root),
        );
        m
    }

    /// Time left before the deadline (`None` without a deadline, zero once passed).
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline.map(|d| {
            d.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }
}

/// What the host does with a message for this subscription when its queue in the host is full
/// (the plugin reads slower than messages arrive).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Publishers wait for room, up to [`SubscribeOptions::block_timeout`] (and their own
    /// deadline); nothing is lost before that, and a publisher that asked for a receipt
    /// ([`Plugin::publish_confirmed`]) learns of a message that could not be delivered in time.
    #[default]
    Block,
    /// The oldest queued message is dropped to make room (latest values matter most).
    DropOldest,
    /// The new message is dropped (what is queued matters most); publishers never wait.
    DropNewest,
}

/// How a subscription is served; see [`Plugin::subscribe_with`].
#[derive(Clone, Debug, Default)]
pub struct SubscribeOptions {
    /// Share messages with the other members of this group (each goes to one of them).
    pub queue_group: String,
    /// What happens when the subscription's queue in the host is full.
    pub overflow: Overflow,
    /// Messages queued in the host for this subscription before `overflow` applies
    /// (0: the host's default, 256).
    pub max_pending: u32,
    /// [`Overflow::Block`]: the longest a publisher waits for room (zero: the host's default,
    /// 1 s; the host caps it at 5 s).
    pub block_timeout: Duration,
}

impl SubscribeOptions {
    /// Options with this overflow policy.
    pub fn overflow(policy: Overflow) -> Self {
        Self {
            overflow: policy,
            ..Self::default()
        }
    }

    /// Sets `max_pending`.
    pub fn max_pending(mut self, n: u32) -> Self {
        self.max_pending = n;
        self
    }

    /// Sets the queue group.
    pub fn queue_group(mut self, group: impl Into<String>) -> Self {
        self.queue_group = group.into();
        self
    }

    /// Sets the block timeout.
    pub fn block_timeout(mut self, d: Duration) -> Self {
        self.block_timeout = d;
        self
    }

    fn to_pb(&self, kind: SubscriptionKind) -> pb::Subscribe {
        pb::Subscribe {
            kind: kind as i32,
            queue_group: self.queue_group.clone(),
            overflow: match self.overflow {
                Overflow::Block => pb::OverflowPolicy::Block,
                Overflow::DropOldest => pb::OverflowPolicy::DropOldest,
                Overflow::DropNewest => pb::OverflowPolicy::DropNewest,
            } as i32,
            max_pending: self.max_pending,
            block_timeout_ms: u32::try_from(self.block_timeout.as_millis()).unwrap_or(u32::MAX),
        }
    }
}

/// Identifies a subscription for [`Plugin::unsubscribe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

enum Handler {
    Event(EventHandler),
    Request(RequestHandler),
}

/// Configures how a plugin connects. Obtain one with [`Plugin::builder`].
pub struct PluginBuilder {
    stream: Option<UnixStream>,
    capabilities: Vec<String>,
    max_in_flight: usize,
    handshake_timeout: Duration,
    sdk: String,
    versions: (u32, u32),
    handle_sigterm: bool,
    on_config: Option<ConfigHandler>,
    metrics_interval: Duration,
    new_traces: bool,
    breaker: BreakerConfig,
    latency_target: Option<(Duration, usize)>,
}

/// Called with new settings (a JSON object) sent by the host; `Err` refuses them, and the host
/// then restarts the plugin to apply them.
type ConfigHandler = Arc<dyn Fn(&[u8]) -> Result<(), RequestError> + Send + Sync>;

impl Default for PluginBuilder {
    fn default() -> Self {
        Self {
            stream: None,
            capabilities: caps::ALL
                .iter()
                .filter(|c| **c != caps::CONFIG)
                .map(|c| (*c).to_string())
                .collect(),
            max_in_flight: 256,
            handshake_timeout: Duration::from_secs(10),
            sdk: format!("appfw-sdk-rust/{}", env!("CARGO_PKG_VERSION")),
            versions: (appfw_proto::MIN_VERSION, appfw_proto::MAX_VERSION),
            handle_sigterm: true,
            on_config: None,
            metrics_interval: Duration::from_secs(5),
            new_traces: true,
            breaker: BreakerConfig::default(),
            latency_target: None,
        }
    }
}

impl PluginBuilder {
    /// Use this stream instead of the socket named by `APPFW_PLUGIN_FD` (tests, embedding).
    pub fn stream(mut self, stream: UnixStream) -> Self {
        self.stream = Some(stream);
        self
    }

    /// At most `n` request handlers run at once; further requests are answered at once with a
    /// temporary `overloaded` error (load shedding) instead of queueing without bound.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// How long to wait for the host's WELCOME.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The protocol versions to offer (for testing version negotiation).
    pub fn protocol_versions(mut self, min: u32, max: u32) -> Self {
        self.versions = (min, max);
        self
    }

    /// Accept settings changes live: `handler` gets the new settings (a JSON object, as
    /// [`Plugin::settings_json`] will then return); returning `Err` refuses them, and the host
    /// restarts the plugin instead. Without a handler the host restarts the plugin on every
    /// settings change.
    pub fn on_config<F>(mut self, handler: F) -> Self
    where
        F: Fn(&[u8]) -> Result<(), RequestError> + Send + Sync + 'static,
    {
        self.on_config = Some(Arc::new(handler));
        if !self.capabilities.iter().any(|c| c == caps::CONFIG) {
            self.capabilities.push(caps::CONFIG.to_string());
        }
        self
    }

    /// Whether the host may deliver a stream of messages for one subscription several to a
    /// frame (capability `batch`, on by default). Handlers see every message alike either way;
    /// off, each comes in its own frame, which costs the host a copy and stamps per message.
    pub fn batches(mut self, on: bool) -> Self {
        self.capabilities.retain(|c| c != caps::BATCH);
        if on {
            self.capabilities.push(caps::BATCH.to_string());
        }
        self
    }

    /// How often the plugin's metrics are sent to the host (default 5 s; Prometheus usually
    /// scrapes every 15 s or more).
    pub fn metrics_interval(mut self, every: Duration) -> Self {
        self.metrics_interval = every.max(Duration::from_millis(100));
        self
    }

    /// Whether a message or request sent outside any handler starts a new trace (default: yes).
    /// Off, such sends carry no `traceparent` (about 60 bytes less per frame); inside handlers
    /// the trace is continued either way.
    pub fn new_traces(mut self, yes: bool) -> Self {
        self.new_traces = yes;
        self
    }

    /// The circuit breakers [`Plugin::request_with`] keeps per destination topic (default: open
    /// after 5 consecutive failures, probe after 5 s, one probe at a time).
    pub fn circuit_breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Adapts the number of request handlers allowed at once to their latency: each one slower
    /// than `target` cuts the limit by a tenth (down to `min`), each one within it while the
    /// limit is in use raises it by one (up to `max_in_flight`). Requests over the limit are
    /// answered `overloaded` at once. The limit is the plugin's series `sdk_in_flight_limit`.
    pub fn latency_target(mut self, target: Duration, min: usize) -> Self {
        self.latency_target = Some((target, min));
        self
    }

    /// Whether SIGTERM starts a graceful shutdown (default: yes).
    pub fn handle_sigterm(mut self, yes: bool) -> Self {
        self.handle_sigterm = yes;
        self
    }

    /// Connects, performs the handshake and starts the event loop and the writer.
    pub async fn connect(self) -> Result<Plugin, SdkError> {
        let stream = match self.stream {
            Some(s) => s,
            None => stream_from_env()?,
        };
        let name = std::env::var(appfw_proto::ENV_PLUGIN_NAME).unwrap_or_default();
        // Before the handshake: the host counts the plugin as running once it is done, and a
        // SIGTERM from then on must be a graceful stop, not the default death by signal.
        let sigterm = if self.handle_sigterm {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()
        } else {
            None
        };
        let mut framed = Framed::new(stream, FrameCodec::default());
        let hello = pb::Hello {
            min_version: self.versions.0,
            max_version: self.versions.1,
            plugin_name: name,
            sdk: self.sdk,
            capabilities: self.capabilities,
            ..Default::default()
        };
        let (welcome, host_seq) = handshake(&mut framed, hello, self.handshake_timeout).await?;
        let max_frame = match welcome.max_frame_size {
            0 => appfw_proto::DEFAULT_MAX_FRAME_SIZE,
            n => n as usize,
        };
        let FramedParts { io, read_buf, .. } = framed.into_parts();
        let (read_half, write_half) = io.into_split();
        let mut reader = FramedRead::new(read_half, FrameCodec::new(max_frame));
        *reader.read_buffer_mut() = read_buf;

        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        let heartbeat_timeout_ms = welcome.heartbeat_timeout_ms;
        let inner = Arc::new(Inner {
            name: welcome.plugin_name.clone(),
            new_traces: self.new_traces,
            breaker_config: self.breaker,
            breakers: Mutex::new(HashMap::new()),
            adaptive: self.latency_target.map(|(target, min)| Adaptive {
                limit: AdaptiveLimit::new(target, min, self.max_in_flight),
                gauge: OnceLock::new(),
                shed: OnceLock::new(),
            }),
            settings: Mutex::new(welcome.settings_json.clone()),
            on_config: self.on_config,
            metrics: Metrics::default(),
            health: Mutex::new(HealthState::default()),
            welcome,
            outbox: tx,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
            max_in_flight: self.max_in_flight,
            event_wait: match heartbeat_timeout_ms {
                0 => Duration::from_secs(5),
                ms => Duration::from_millis(u64::from(ms) / 2),
            },
            shed: std::sync::OnceLock::new(),
            shedding: std::sync::atomic::AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            shutdown_grace: Mutex::new(None),
            closed: CancellationToken::new(),
            finish_writer: CancellationToken::new(),
            last_seq_in: Arc::new(AtomicU64::new(host_seq)),
            handlers: TaskTracker::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let writer = tokio::spawn(writer_loop(Arc::clone(&inner), write_half, rx, max_frame));
        let events = tokio::spawn(event_loop(Arc::clone(&inner), reader));
        let mut tasks = vec![writer, events];
        if let Some(mut sig) = sigterm {
            let token = inner.shutdown.clone();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = sig.recv() => token.cancel(),
                    () = token.cancelled() => {}
                }
            }));
        }
        if inner
            .welcome
            .capabilities
            .iter()
            .any(|c| c == caps::METRICS)
        {
            let inner2 = Arc::clone(&inner);
            let every = self.metrics_interval;
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => send_metrics(&inner2).await,
                        () = inner2.shutdown.cancelled() => break,
                    }
                }
            }));
        }
        *lock(&inner.tasks) = tasks;
        Ok(Plugin { inner })
    }
}

/// A connected plugin. Cheap to clone; every clone talks over the same connection.
///
/// The connection runs an *event loop* task that reads frames, answers the host's heartbeat
/// pings and dispatches handlers. Handlers run as their own tasks, so a slow handler does not
/// stop heartbeats, but a handler that blocks the runtime's threads does: the host then sees a
/// hung plugin and restarts it, which is the point.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    new_traces: bool,
    breaker_config: BreakerConfig,
    /// Circuit breakers by destination topic (at most [`MAX_BREAKERS`]).
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    adaptive: Option<Adaptive>,
    welcome: pb::Welcome,
    settings: Mutex<Bytes>,
    on_config: Option<ConfigHandler>,
    metrics: Metrics,
    health: Mutex<HealthState>,
    outbox: mpsc::Sender<Frame>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    subs: Mutex<HashMap<u64, Handler>>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    /// How long the event loop waits for a free handler slot before it sheds a message: half the
    /// heartbeat timeout, so PINGs waiting behind it are still answered in time.
    event_wait: Duration,
    /// Messages shed that way (created on the first one, so quiet plugins send no series).
    shed: std::sync::OnceLock<crate::Counter>,
    shedding: std::sync::atomic::AtomicBool,
    shutdown: CancellationToken,
    shutdown_grace: Mutex<Option<Duration>>,
    closed: CancellationToken,
    finish_writer: CancellationToken,
    last_seq_in: Arc<AtomicU64>,
    handlers: TaskTracker,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What the plugin last said of its health; every report carries all of it.
#[derive(Default)]
struct HealthState {
    status: HealthStatus,
    message: String,
    checks: std::collections::BTreeMap<String, (HealthStatus, String)>,
}

impl HealthState {
    fn report(&self) -> pb::HealthReport {
        pb::HealthReport {
            status: self.status as i32,
            message: self.message.clone(),
            checks: self
                .checks
                .iter()
                .map(|(name, (st, msg))| pb::HealthCheck {
                    name: name.clone(),
                    status: *st as i32,
                    message: msg.clone(),
                })
                .collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short critical sections cannot leave the maps in a
    // half-updated state, so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Plugin {
    /// A builder with the defaults (socket from `APPFW_PLUGIN_FD`).
    pub fn builder() -> PluginBuilder {
        PluginBuilder::default()
    }

    /// Connects with the defaults: the socket inherited from the host, all capabilities.
    pub async fn connect() -> Result<Self, SdkError> {
        Self::builder().connect().await
    }

    /// This plugin's (instance) name as the host knows it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The plugin settings from the host config, a JSON object (empty if none): those of the
    /// handshake, or the last ones accepted live.
    pub fn settings_json(&self) -> Bytes {
        lock(&self.inner.settings).clone()
    }

    /// The plugin's metrics: create counters, gauges and histograms here; they are sent to the
    /// host every [`PluginBuilder::metrics_interval`] and on shutdown.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// What the host answered in the handshake.
    pub fn welcome(&self) -> &pb::Welcome {
        &self.inner.welcome
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sets the trace context of an outgoing message or request (see [`TraceContext`]).
    fn stamp_trace(&self, f: &mut Frame) {
        if let Some(t) = TraceContext::for_outgoing(self.inner.new_traces) {
            f.header.traceparent = t.traceparent().into();
            f.header.tracestate = t.tracestate.into();
        }
    }

    async fn send(&self, frame: Frame) -> Result<(), SdkError> {
        if self.inner.closed.is_cancelled() {
            return Err(SdkError::Closed);
        }
        self.inner
            .outbox
            .send(frame)
            .await
            .map_err(|_| SdkError::Closed)
    }

    /// Publishes `payload` on `topic` to every subscriber.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), SdkError> {
        let mut f = Frame::new(FrameType::Publish, payload.into());
        f.header.topic = topic.into();
        self.stamp_trace(&mut f);
        self.send(f).await
    }

    /// Publishes `payload` with its `content_type` (what the typed helpers of
    /// [`crate::patterns`] use).
    pub async fn publish_typed(
        &self,
        topic: &str,
        payload: Bytes,
        content_type: &str,
    ) -> Result<(), SdkError> {
        let mut f = Frame::new(FrameType::Publish, payload);
        f.header.topic = topic.into();
        f.header.content_type = content_type.into();
        self.stamp_trace(&mut f);
        self.send(f).await
    }

    /// Publishes and waits (at most `timeout`) until the host has queued the message for every
    /// subscriber. `Err` with code `slow_subscriber` (temporary) when a `block` subscriber had no
    /// room before the deadline: the other subscribers got it, that one did not. Needs a host
    /// with capability `publish_ack` (else `Err` with code `unsupported`).
    pub async fn publish_confirmed(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<(), RequestError> {
        if !self.has_capability(caps::PUBLISH_ACK) {
            return Err(RequestError::permanent(
                "unsupported",
                "the host does not confirm publishes (no capability publish_ack)",
            ));
        }
        let mut f = Frame::new(FrameType::Publish, payload.into());
        f.header.topic = topic.into();
        f.header.deadline_unix_ms = unix_ms(SystemTime::now() + timeout).max(1);
        self.stamp_trace(&mut f);
        self.call(f, topic, timeout).await.map(|_| ())
    }

    /// A request with retries of temporary errors (exponential backoff with full jitter, never
    /// past `options.timeout`) and a circuit breaker per destination topic: after consecutive
    /// failures (temporary or critical errors) calls fail at once with a temporary
    /// `circuit_open` error, until a probe call succeeds. The breaker's state is the plugin's
    /// series `sdk_circuit_breaker_state{topic}` (0 closed, 1 open, 2 half-open, as of the last
    /// call), with `sdk_circuit_breaker_opened_total` and `sdk_request_retries_total`.
    ///
    /// ```no_run
    /// # async fn f(plugin: appfw_sdk::Plugin) {
    /// use appfw_sdk::{RequestOptions, resilience::RetryPolicy};
    /// use std::time::Duration;
    /// let opts = RequestOptions::new(Duration::from_secs(2)).retry(RetryPolicy::default());
    /// match plugin.request_with("prices.quote", "EURUSD", &opts).await {
    ///     Ok(reply) => println!("{:?}", reply.payload),
    ///     Err(e) => println!("gave up: {e}"),
    /// }
    /// # }
    /// ```
    pub async fn request_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        options: &RequestOptions,
    ) -> Result<Message, RequestError> {
        let payload: Bytes = payload.into();
        let deadline = Instant::now() + options.timeout;
        let breaker = options
            .circuit_breaker
            .then(|| self.breaker(topic))
            .flatten();
        let attempts = options.retry.as_ref().map_or(1, |r| r.max_attempts.max(1));
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RequestError::temporary(
                    "deadline_exceeded",
                    format!("no reply to {topic:?} within {:?}", options.timeout),
                ));
            }
            let pass = match &breaker {
                Some(b) => {
                    let p = b.breaker.admit(Instant::now(), topic);
                    b.state.set(b.breaker.state(Instant::now()).as_gauge());
                    Some(p?)
                }
                None => None,
            };
            let result = self.request_message(topic, payload.clone(), left).await;
            if let (Some(b), Some(pass)) = (&breaker, pass) {
                let before = b.breaker.opened.load(Ordering::Relaxed);
                b.breaker.record(pass, is_failure(&result), Instant::now());
                if b.breaker.opened.load(Ordering::Relaxed) != before {
                    b.opened.inc();
                }
                b.state.set(b.breaker.state(Instant::now()).as_gauge());
            }
            let err = match result {
                Ok(m) => return Ok(m),
                Err(e) => e,
            };
            attempt += 1;
            let Some(policy) = options.retry.as_ref() else {
                return Err(err);
            };
            if !err.is_temporary() || attempt >= attempts {
                return Err(err);
            }
            let pause = policy.backoff(attempt - 1, unit_random());
            if Instant::now() + pause >= deadline {
                return Err(err);
            }
            if let Some(b) = &breaker {
                b.retries.inc();
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// The circuit breaker of `topic` (created on first use), `None` past [`MAX_BREAKERS`].
    fn breaker(&self, topic: &str) -> Option<Arc<Breaker>> {
        let mut map = lock(&self.inner.breakers);
        if let Some(b) = map.get(topic) {
            return Some(Arc::clone(b));
        }
        if map.len() >= MAX_BREAKERS {
            return None;
        }
        let m = &self.inner.metrics;
        let labels = [("topic", topic)];
        let b = Arc::new(Breaker {
            breaker: CircuitBreaker::new(self.inner.breaker_config.clone()),
            state: m.gauge(
                "sdk_circuit_breaker_state",
                "Circuit breaker of a destination topic: 0 closed, 1 open, 2 half-open",
                &labels,
            ),
            opened: m.counter(
                "sdk_circuit_breaker_opened",
                "Times the circuit breaker of a destination topic opened",
                &labels,
            ),
            retries: m.counter(
                "sdk_request_retries",
                "Requests retried after a temporary error",
                &labels,
            ),
        });
        map.insert(topic.to_string(), Arc::clone(&b));
        Some(b)
    }

    /// Whether the host agreed to capability `name` in the handshake.
    pub fn has_capability(&self, name: &str) -> bool {
        self.inner.welcome.capabilities.iter().any(|c| c == name)
    }

    /// Sends a request on `topic` and waits for the reply for at most `timeout`.
    pub async fn request(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        self.request_message(topic, payload, timeout)
            .await
            .map(|m| m.payload)
    }

    /// Like [`Plugin::request`], returning the whole reply (sender, trace context).
    pub async fn request_message(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let mut f = Frame::new(FrameType::Request, payload.into());
        f.header.topic = topic.into();
        f.header.deadline_unix_ms = unix_ms(SystemTime::now() + timeout).max(1);
        self.stamp_trace(&mut f);
        self.call(f, topic, timeout).await
    }

    /// Sends `f` with a fresh request id and waits for the REPLY with that id.
    async fn call(
        &self,
        mut f: Frame,
        topic: &str,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(id, tx);
        f.header.request_id = id;
        if self.send(f).await.is_err() {
            lock(&self.inner.pending).remove(&id);
            return Err(closed_error());
        }
        // The host answers deadline_exceeded itself at the deadline; the extra margin only
        // covers a host that vanished, so this wait is bounded too.
        match tokio::time::timeout(timeout + Duration::from_millis(500), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(closed_error()),
            Err(_) => {
                lock(&self.inner.pending).remove(&id);
                Err(RequestError::temporary(
                    "deadline_exceeded",
                    format!("no reply to {topic:?} within {timeout:?}"),
                ))
            }
        }
    }

    async fn add_subscription(
        &self,
        pattern: &str,
        kind: SubscriptionKind,
        options: &SubscribeOptions,
        handler: Handler,
    ) -> Result<SubscriptionId, SdkError> {
        let id = self.next_id();
        lock(&self.inner.subs).insert(id, handler);
        let payload = options.to_pb(kind);
        match self
            .control_request(FrameType::Subscribe, pattern, id, &payload)
            .await
        {
            Ok(()) => Ok(SubscriptionId(id)),
            Err(error) => {
                lock(&self.inner.subs).remove(&id);
                Err(SdkError::Subscribe {
                    topic: pattern.to_string(),
                    error,
                })
            }
        }
    }

    /// Sends a control frame answered by the host with a REPLY of the same id.
    async fn control_request<M: prost::Message>(
        &self,
        ty: FrameType,
        topic: &str,
        id: u64,
        msg: &M,
    ) -> Result<(), RequestError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(id, tx);
        let mut f = Frame::control(ty, msg);
        f.header.topic = topic.into();
        f.header.request_id = id;
        if self.send(f).await.is_err() {
            lock(&self.inner.pending).remove(&id);
            return Err(closed_error());
        }
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(r)) => r.map(|_| ()),
            Ok(Err(_)) => Err(closed_error()),
            Err(_) => {
                lock(&self.inner.pending).remove(&id);
                Err(RequestError::temporary(
                    "deadline_exceeded",
                    "the host did not acknowledge within 10s",
                ))
            }
        }
    }

    /// Calls `handler` for every message published on a topic matching `pattern`
    /// (`*` matches one token, a final `>` one or more). Returns once the host confirmed it.
    pub async fn subscribe<F, Fut>(
        &self,
        pattern: &str,
        handler: F,
    ) -> Result<SubscriptionId, SdkError>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.subscribe_queue(pattern, "", handler).await
    }

    /// Like [`Plugin::subscribe`], sharing the messages with the other members of `group`: each
    /// message goes to one of them.
    pub async fn subscribe_queue<F, Fut>(
        &self,
        pattern: &str,
        group: &str,
        handler: F,
    ) -> Result<SubscriptionId, SdkError>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.subscribe_with(
            pattern,
            SubscribeOptions::default().queue_group(group),
            handler,
        )
        .await
    }

    /// Like [`Plugin::subscribe`], with the queue group, overflow policy and bounds of `options`.
    ///
    /// ```no_run
    /// # async fn f(plugin: appfw_sdk::Plugin) -> Result<(), appfw_sdk::SdkError> {
    /// use appfw_sdk::{Overflow, SubscribeOptions};
    /// // Only the latest prices matter: keep at most 16 queued, dropping the oldest.
    /// let opts = SubscribeOptions::overflow(Overflow::DropOldest).max_pending(16);
    /// plugin.subscribe_with("prices.>", opts, |msg| async move { let _ = msg; }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with<F, Fut>(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<SubscriptionId, SdkError>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let h: EventHandler = Arc::new(move |m| Box::pin(handler(m)));
        self.add_subscription(
            pattern,
            SubscriptionKind::Events,
            &options,
            Handler::Event(h),
        )
        .await
    }

    /// Serves requests on topics matching `pattern`: the handler's `Ok` bytes become the reply,
    /// its `Err` an error reply. A handler that panics is answered with a critical
    /// `handler_panicked` error and the plugin keeps running; one still running at the request's
    /// deadline is cancelled.
    pub async fn serve<F, Fut>(&self, pattern: &str, handler: F) -> Result<SubscriptionId, SdkError>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, RequestError>> + Send + 'static,
    {
        let h: RequestHandler = Arc::new(move |m| Box::pin(handler(m)));
        self.add_subscription(
            pattern,
            SubscriptionKind::Requests,
            &SubscribeOptions::default(),
            Handler::Request(h),
        )
        .await
    }

    /// Drops a subscription.
    pub async fn unsubscribe(&self, id: SubscriptionId) -> Result<(), SdkError> {
        let result = self
            .control_request(FrameType::Unsubscribe, "", id.0, &pb::Subscribe::default())
            .await;
        lock(&self.inner.subs).remove(&id.0);
        result.map_err(|error| SdkError::Subscribe {
            topic: String::new(),
            error,
        })
    }

    /// Reports the plugin's own view of its health (shown by the host's health checks).
    pub async fn report_health(
        &self,
        status: HealthStatus,
        message: impl Into<String>,
    ) -> Result<(), SdkError> {
        let report = {
            let mut h = lock(&self.inner.health);
            h.status = status;
            h.message = message.into();
            h.report()
        };
        self.send(Frame::control(FrameType::Health, &report)).await
    }

    /// Sets one named check (a custom check: shown by the host in `/healthz` as
    /// `service:PLUGIN/custom:NAME`) and reports health with every check.
    pub async fn set_check(
        &self,
        name: &str,
        status: HealthStatus,
        message: impl Into<String>,
    ) -> Result<(), SdkError> {
        let report = {
            let mut h = lock(&self.inner.health);
            h.checks.insert(name.to_string(), (status, message.into()));
            h.report()
        };
        self.send(Frame::control(FrameType::Health, &report)).await
    }

    /// Reports health with exactly these named checks (replacing those set before).
    pub async fn report_health_checks(
        &self,
        status: HealthStatus,
        message: impl Into<String>,
        checks: Vec<pb::HealthCheck>,
    ) -> Result<(), SdkError> {
        let report = {
            let mut h = lock(&self.inner.health);
            h.status = status;
            h.message = message.into();
            h.checks = checks
                .into_iter()
                .map(|c| {
                    let st = HealthStatus::try_from(c.status).unwrap_or(HealthStatus::Unspecified);
                    (c.name, (st, c.message))
                })
                .collect();
            h.report()
        };
        self.send(Frame::control(FrameType::Health, &report)).await
    }

    /// Sends a structured log record to the host.
    pub async fn log(
        &self,
        level: Level,
        message: impl Into<String>,
        fields: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), SdkError> {
        let record = pb::LogRecord {
            level: level as i32,
            message: message.into(),
            fields: fields.into_iter().collect(),
            time_unix_nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0)),
            target: String::new(),
        };
        self.send(Frame::control(FrameType::Log, &record)).await
    }

    /// Sends a batch of metric samples (the metrics API of later versions builds on this).
    pub async fn send_metrics(&self, batch: &pb::MetricBatch) -> Result<(), SdkError> {
        self.send(Frame::control(FrameType::Metrics, batch)).await
    }

    /// Resolves when the host asked the plugin to stop (SHUTDOWN frame), SIGTERM arrived, or the
    /// connection to the host closed.
    pub async fn shutdown_requested(&self) {
        self.inner.shutdown.cancelled().await;
    }

    /// Whether a shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Graceful shutdown: stop dispatching new work, wait for running handlers (up to the grace
    /// the host granted, else 5 s), say GOODBYE and flush everything queued to the host.
    pub async fn shutdown(&self, reason: &str) -> Result<(), SdkError> {
        self.inner.shutdown.cancel();
        let grace = lock(&self.inner.shutdown_grace).unwrap_or(Duration::from_secs(5));
        self.inner.handlers.close();
        // Keep some of the grace for the goodbye and the flush.
        let _ = tokio::time::timeout(grace.mul_f32(0.8), self.inner.handlers.wait()).await;
        send_metrics(&self.inner).await;
        let _ = self
            .send(Frame::control(
                FrameType::Goodbye,
                &pb::Goodbye {
                    reason: reason.to_string(),
                },
            ))
            .await;
        self.inner.finish_writer.cancel();
        let mut tasks = std::mem::take(&mut *lock(&self.inner.tasks)).into_iter();
        // The writer (first) drains the queue and returns; bounded in case the socket is stuck.
        if let Some(writer) = tasks.next() {
            let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        }
        // The event loop and the signal task only wait for input: stop them and join.
        self.inner.closed.cancel();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        Ok(())
    }

    /// Waits until a shutdown is requested, then shuts down gracefully. Returns an error if the
    /// connection to the host was lost rather than closed on purpose.
    pub async fn run_until_shutdown(&self) -> Result<(), SdkError> {
        self.shutdown_requested().await;
        let lost = self.inner.closed.is_cancelled();
        self.shutdown("shutdown requested").await?;
        if lost { Err(SdkError::Closed) } else { Ok(()) }
    }

    /// Handlers currently running.
    pub fn in_flight(&self) -> usize {
        self.inner.max_in_flight - self.inner.in_flight.available_permits()
    }
}

/// Sends every series, if there are any and the connection is up.
async fn send_metrics(inner: &Inner) {
    if inner.metrics.is_empty() || inner.closed.is_cancelled() {
        return;
    }
    let batch = inner.metrics.snapshot();
    let _ = inner
        .outbox
        .send(Frame::control(FrameType::Metrics, &batch))
        .await;
}

fn closed_error() -> RequestError {
    RequestError::temporary("connection_closed", "the connection to the host is closed")
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes queued frames (batched, sequence-numbered) until the plugin shuts down.
async fn writer_loop(
    inner: Arc<Inner>,
    mut sock: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Frame>,
    max_frame: usize,
) {
    // HELLO went out as seq 1.
    let mut seq = Sequencer::new(1, Arc::clone(&inner.last_seq_in));
    let end = write_frames(
        &mut sock,
        &mut rx,
        &mut seq,
        max_frame,
        &inner.finish_writer,
        |_, e| eprintln!("appfw-sdk: dropping outgoing frame: {e}"),
    )
    .await;
    if let WriterEnd::Io(e) = end {
        if !inner.shutdown.is_cancelled() {
            eprintln!("appfw-sdk: writing to the host failed: {e}");
        }
        inner.closed.cancel();
        inner.shutdown.cancel();
    }
}

/// The plugin's event loop: reads frames, answers heartbeats, dispatches work.
async fn event_loop(inner: Arc<Inner>, mut reader: FramedRead<OwnedReadHalf, FrameCodec>) {
    loop {
        let next = tokio::select! {
            f = reader.next() => f,
            () = inner.closed.cancelled() => break,
        };
        let frame = match next {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                eprintln!("appfw-sdk: connection to the host failed: {e}");
                break;
            }
            None => break,
        };
        inner.last_seq_in.store(frame.header.seq, Ordering::Relaxed);
        if frame.frame_type() == Some(FrameType::Batch) {
            // Several messages for one subscription: each is handled as if it came alone.
            let mut broken = None;
            for message in appfw_proto::batch::unbatch(&frame) {
                match message {
                    Ok(m) => dispatch(&inner, m).await,
                    Err(e) => broken = Some(e),
                }
            }
            if let Some(e) = broken {
                eprintln!("appfw-sdk: the host broke the protocol: {e}");
                break;
            }
            continue;
        }
        dispatch(&inner, frame).await;
    }
    inner.closed.cancel();
    inner.shutdown.cancel();
    // Wake everyone waiting on a reply: there will be none.
    for (_, tx) in lock(&inner.pending).drain() {
        let _ = tx.send(Err(closed_error()));
    }
}

async fn dispatch(inner: &Arc<Inner>, frame: Frame) {
    match frame.frame_type() {
        Some(FrameType::Ping) => {
            let mut pong = Frame::new(FrameType::Pong, Bytes::new());
            pong.header.request_id = frame.header.request_id;
            let _ = inner.outbox.send(pong).await;
        }
        Some(FrameType::Reply) => {
            let id = frame.header.request_id;
            let Some(tx) = lock(&inner.pending).remove(&id) else {
                return; // late reply to a request we gave up on
            };
            let result = match &frame.header.error {
                Some(e) => Err(RequestError::from_pb(e)),
                None => Ok(Message::from_frame(frame)),
            };
            let _ = tx.send(result);
        }
        Some(FrameType::Publish) => {
            let handler = match lock(&inner.subs).get(&frame.header.subscription_id) {
                Some(Handler::Event(h)) => Arc::clone(h),
                _ => return,
            };
            if inner.shutdown.is_cancelled() {
                return;
            }
            // Handlers are bounded like requests. Waiting for a slot stops this loop reading,
            // so the host's queue for us fills and the subscription's overflow policy applies
            // there; past half the heartbeat timeout the message is shed (counted) instead, so
            // the PINGs behind it are still answered.
            // Once a wait ran out, later messages are shed without waiting until a slot frees up,
            // so a run of them cannot add up past the heartbeat timeout.
            let permit = match Arc::clone(&inner.in_flight).try_acquire_owned() {
                Ok(p) => {
                    inner.shedding.store(false, Ordering::Relaxed);
                    p
                }
                Err(_) => {
                    let wait = Arc::clone(&inner.in_flight).acquire_owned();
                    let wait_for = if inner.shedding.load(Ordering::Relaxed) {
                        Duration::ZERO
                    } else {
                        inner.event_wait
                    };
                    match tokio::time::timeout(wait_for, wait).await {
                        Ok(Ok(p)) => p,
                        _ => {
                            inner.shedding.store(true, Ordering::Relaxed);
                            inner
                                .shed
                                .get_or_init(|| {
                                    inner.metrics.counter(
                                        "sdk_messages_shed",
                                        "Messages dropped by the plugin because its handlers stayed busy",
                                        &[],
                                    )
                                })
                                .inc();
                            return;
                        }
                    }
                }
            };
            let topic = frame.header.topic.clone();
            let msg = Message::for_handler(frame);
            let ctx = msg.trace.clone().unwrap_or_else(TraceContext::new_root);
            let fut = ctx.scope(handler(msg));
            inner.handlers.spawn(async move {
                let _permit = permit;
                if AssertUnwindSafe(fut).catch_unwind().await.is_err() {
                    eprintln!("appfw-sdk: handler for {topic:?} panicked; message dropped");
                }
            });
        }
        Some(FrameType::Request) => dispatch_request(inner, frame).await,
        Some(FrameType::Shutdown) => {
            if let Ok(s) = frame.decode_payload::<pb::Shutdown>() {
                *lock(&inner.shutdown_grace) = Some(Duration::from_millis(u64::from(s.grace_ms)));
            }
            inner.shutdown.cancel();
        }
        Some(FrameType::ConfigUpdate) => {
            let result = match (&inner.on_config, frame.decode_payload::<pb::ConfigUpdate>()) {
                (None, _) => Err(RequestError::permanent(
                    "unsupported",
                    "this plugin does not accept live settings updates",
                )),
                (Some(_), Err(e)) => Err(RequestError::permanent("bad_request", e.to_string())),
                (Some(handler), Ok(update)) => {
                    let handler = Arc::clone(handler);
                    let json = update.settings_json.clone();
                    // A panicking handler refuses the settings; the plugin keeps running.
                    match std::panic::catch_unwind(AssertUnwindSafe(|| handler(&json))) {
                        Ok(Ok(())) => {
                            *lock(&inner.settings) = update.settings_json;
                            Ok(Bytes::new())
                        }
                        Ok(Err(e)) => Err(e),
                        Err(p) => Err(RequestError::critical(
                            "handler_panicked",
                            panic_message(&p),
                        )),
                    }
                }
            };
            reply(inner, frame.header.request_id, result).await;
        }
        Some(FrameType::ProtocolError) => {
            if let Ok(e) = frame.decode_payload::<pb::ProtocolError>() {
                eprintln!(
                    "appfw-sdk: host reported a protocol error: {}: {}",
                    e.code, e.message
                );
            }
        }
        // Unknown or not-for-plugins frame types are skipped (forward compatibility).
        _ => {}
    }
}

async fn dispatch_request(inner: &Arc<Inner>, frame: Frame) {
    let id = frame.header.request_id;
    let found = match lock(&inner.subs).get(&frame.header.subscription_id) {
        Some(Handler::Request(h)) => Some(Arc::clone(h)),
        _ => None,
    };
    let handler = match found {
        Some(h) => h,
        None => {
            let err = RequestError::permanent(
                "no_handler",
                format!("no handler for {:?}", frame.header.topic),
            );
            return reply(inner, id, Err(err)).await;
        }
    };
    if inner.shutdown.is_cancelled() {
        let err = RequestError::temporary("shutting_down", "the plugin is shutting down");
        return reply(inner, id, Err(err)).await;
    }
    let msg = Message::for_handler(frame);
    let left = msg.time_left();
    if left == Some(Duration::ZERO) {
        let err = RequestError::temporary("deadline_exceeded", "deadline passed before start");
        return reply(inner, id, Err(err)).await;
    }
    if let Some(a) = &inner.adaptive {
        let running = inner.max_in_flight - inner.in_flight.available_permits();
        if !a.limit.admits(running) {
            a.shed
                .get_or_init(|| {
                    inner.metrics.counter(
                        "sdk_requests_shed",
                        "Requests answered overloaded because handler latency lowered the limit",
                        &[],
                    )
                })
                .inc();
            let err = RequestError::temporary(
                "overloaded",
                format!(
                    "{running} requests in flight, the limit is {} while handlers are slow",
                    a.limit.limit()
                ),
            );
            return reply(inner, id, Err(err)).await;
        }
    }
    let Ok(permit) = Arc::clone(&inner.in_flight).try_acquire_owned() else {
        let err = RequestError::temporary(
            "overloaded",
            format!("{} requests already in flight", inner.max_in_flight),
        );
        return reply(inner, id, Err(err)).await;
    };
    let inner2 = Arc::clone(inner);
    let ctx = msg.trace.clone().unwrap_or_else(TraceContext::new_root);
    inner.handlers.spawn(async move {
        let _permit = permit;
        // Checked again as the task starts: under load it may start later than dispatched.
        if msg.time_left() == Some(Duration::ZERO) {
            let err = RequestError::temporary("deadline_exceeded", "deadline passed before start");
            return reply(&inner2, id, Err(err)).await;
        }
        let run = AssertUnwindSafe(ctx.scope(handler(msg))).catch_unwind();
        let started = Instant::now();
        let outcome = match left {
            Some(left) => tokio::time::timeout(left, run).await.ok(),
            None => Some(run.await),
        };
        if let Some(a) = &inner2.adaptive {
            let running = inner2.max_in_flight - inner2.in_flight.available_permits();
            a.limit.observe(started.elapsed(), running);
            a.gauge
                .get_or_init(|| {
                    inner2.metrics.gauge(
                        "sdk_in_flight_limit",
                        "Request handlers allowed at once (adapted to their latency)",
                        &[],
                    )
                })
                .set(a.limit.limit() as f64);
        }
        let result = match outcome {
            None => Err(RequestError::temporary(
                "deadline_exceeded",
                "handler cancelled at the deadline",
            )),
            Some(Err(panic)) => Err(RequestError::critical(
                "handler_panicked",
                panic_message(&panic),
            )),
            Some(Ok(r)) => r,
        };
        reply(&inner2, id, result).await;
    });
}

async fn reply(inner: &Inner, id: u64, result: Result<Bytes, RequestError>) {
    let mut f = match result {
        Ok(payload) => Frame::new(FrameType::Reply, payload),
        Err(e) => {
            let mut f = Frame::new(FrameType::Reply, Bytes::new());
            f.header.error = Some(Box::new(e.to_pb()));
            f
        }
    };
    f.header.request_id = id;
    let _ = inner.outbox.send(f).await;
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("handler panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("handler panicked: {s}")
    } else {
        "handler panicked".to_string()
    }
}
