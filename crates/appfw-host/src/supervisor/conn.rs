//! The host's side of one plugin connection: handshake, heartbeats, and frames in both
//! directions. It reports what matters to the plugin's owner task as [`ConnEvent`]s and never
//! changes plugin state itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use appfw_proto::pb::{self, FrameType};
use appfw_proto::writer::{Sequencer, WriterEnd, write_frames};
use appfw_proto::{Frame, FrameCodec, FrameError, caps, negotiate_version};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, FramedParts, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Link, RouteCache, Wakes};

/// Room left in the read buffer below which the reader makes new room before reading.
const MIN_READ: usize = 4 * 1024;

/// Bytes still missing of the partly read frame at the start of `buf` (0: none or unknown).
fn partial_rest(buf: &[u8]) -> usize {
    match buf.first_chunk::<{ appfw_proto::LENGTH_PREFIX_LEN }>() {
        Some(prefix) => (appfw_proto::LENGTH_PREFIX_LEN + u32::from_be_bytes(*prefix) as usize)
            .saturating_sub(buf.len()),
        None => 0,
    }
}
/// The reader's buffer: a read takes up to this much, so a burst of small frames costs few
/// syscalls.
const READ_BUFFER: usize = 64 * 1024;

/// How long the reader waits for room to queue its own answers (PONG, acknowledgements) to a
/// plugin that does not read; a plugin that stuck is caught by the heartbeat.
const CONTROL_WAIT: Duration = Duration::from_secs(5);

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// What a connection tells the owner task.
#[derive(Debug)]
pub enum ConnEvent {
    /// Handshake done: the plugin is running.
    Ready {
        /// Negotiated version.
        version: u32,
        /// Negotiated capabilities.
        capabilities: Vec<String>,
    },
    /// Handshake refused (version mismatch).
    Refused {
        /// Names both ranges.
        reason: String,
    },
    /// The plugin broke the protocol; the connection is closed.
    Fault {
        /// Stable code.
        code: &'static str,
        /// Detail.
        message: String,
    },
    /// No PONG within the timeout.
    HeartbeatMissed {
        /// Silence so far.
        silent: Duration,
        /// Configured timeout.
        timeout: Duration,
    },
    /// The plugin closed its end (or it broke).
    Closed {
        /// Why.
        reason: String,
    },
    /// The plugin said it is exiting on purpose.
    Goodbye {
        /// Its reason.
        reason: String,
    },
    /// A health report.
    Health(pb::HealthReport),
}

/// Settings of one connection.
#[derive(Clone, Debug)]
pub struct ConnParams {
    /// The plugin (instance) name.
    pub plugin: Arc<str>,
    /// Time allowed for HELLO.
    pub handshake_timeout: Duration,
    /// PING interval.
    pub heartbeat_interval: Duration,
    /// Silence after which the plugin counts as hung.
    pub heartbeat_timeout: Duration,
    /// Largest frame.
    pub max_frame_size: usize,
    /// Settings JSON sent in WELCOME.
    pub settings_json: Bytes,
    /// Where LOG and METRICS frames are counted and kept.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The plugin's log file, where LOG frames are written as records.
    pub log: Option<Arc<crate::logs::PluginLog>>,
}

/// Requests the host itself sent to the plugin, waiting for their REPLY.
type HostPending = Arc<std::sync::Mutex<std::collections::HashMap<u64, oneshot::Sender<Frame>>>>;

/// Ids of host-originated requests: the upper half of the id space, so they never collide with
/// the ids the bus assigns to relayed requests.
static NEXT_HOST_REQUEST: AtomicU64 = AtomicU64::new(1 << 63);

/// A running connection. Dropping it does not stop it: call [`ConnHandle::close`].
pub struct ConnHandle {
    /// The bus endpoint.
    pub link: Arc<Link>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    pending: HostPending,
}

impl ConnHandle {
    /// Delivers new settings (CONFIG_UPDATE) and waits up to `timeout` for the plugin to accept.
    pub async fn config_update(
        &self,
        settings_json: Bytes,
        generation: u64,
        timeout: Duration,
    ) -> Result<(), String> {
        let id = NEXT_HOST_REQUEST.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, tx);
        let mut f = Frame::control(
            FrameType::ConfigUpdate,
            &pb::ConfigUpdate {
                settings_json,
                generation,
            },
        );
        f.header.request_id = id;
        f.header.sender = appfw_proto::Str::from_static(crate::bus::HOST_SENDER);
        let outcome = async {
            self.link
                .outbox
                .send(f, CONTROL_WAIT)
                .await
                .map_err(|e| match e {
                    crate::bus::SendError::Full => "the plugin's queue is full".to_string(),
                    crate::bus::SendError::Closed => "the connection is closed".to_string(),
                })?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => match reply.header.error {
                    None => Ok(()),
                    Some(e) => Err(format!("{}: {}", e.code, e.message)),
                },
                Ok(Err(_)) => Err("the connection closed before the plugin answered".into()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        }
        .await;
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        outcome
    }

    /// Stops both tasks, removes the plugin from the bus, and waits for them.
    pub async fn close(self, bus: &Bus) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        bus.disconnect(&self.link).await;
    }
}

/// Starts the reader and writer tasks of a fresh connection.
pub fn start(
    params: ConnParams,
    socket: std::os::unix::net::UnixStream,
    bus: Bus,
    events: mpsc::Sender<ConnEvent>,
    parent: &CancellationToken,
) -> std::io::Result<ConnHandle> {
    socket.set_nonblocking(true)?;
    // The socket and both tasks belong to the bus's I/O runtime when it has one (see
    // `bus::IoThread`): registered with its reactor, spawned onto it. Dropped before returning.
    let _io = bus.io_handle().map(tokio::runtime::Handle::enter);
    let stream = UnixStream::from_std(socket)?;
    let (read_half, mut write_half) = stream.into_split();
    let (tx, mut rx) = crate::bus::outbox::outbox();
    let link = Arc::new(Link::new(
        Arc::clone(&params.plugin),
        NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
        tx,
    ));
    let cancel = parent.child_token();
    let peer_seq = Arc::new(AtomicU64::new(0));
    let pending = HostPending::default();

    let writer = {
        let cancel = cancel.clone();
        let plugin = Arc::clone(&params.plugin);
        let max = params.max_frame_size;
        let peer_seq = Arc::clone(&peer_seq);
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let mut seq = Sequencer::new(0, peer_seq);
            let end = write_frames(&mut write_half, &mut rx, &mut seq, max, &cancel, |f, e| {
                tracing::warn!(plugin = %plugin, frame_type = f.header.r#type, "frame to plugin dropped: {e}");
            })
            .await;
            if let WriterEnd::Io(e) = end {
                tracing::debug!(plugin = %plugin, "writing to plugin failed: {e}");
            }
        }))
    };
    let reader = {
        let reader = Reader {
            link: Arc::clone(&link),
            bus,
            events,
            cancel: cancel.clone(),
            peer_seq,
            pending: Arc::clone(&pending),
            log_counters: params.metrics.log_counters(&params.plugin),
            publish_ack: std::sync::atomic::AtomicBool::new(false),
            params,
        };
        let frames = FramedRead::with_capacity(
            read_half,
            FrameCodec::new(reader.params.max_frame_size).keeping_wire(),
            READ_BUFFER,
        );
        tokio::spawn(tracing::Instrument::in_current_span(reader.run(frames)))
    };
    Ok(ConnHandle {
        link,
        cancel,
        tasks: vec![reader, writer],
        pending,
    })
}

struct Reader {
    params: ConnParams,
    link: Arc<Link>,
    bus: Bus,
    events: mpsc::Sender<ConnEvent>,
    cancel: CancellationToken,
    peer_seq: Arc<AtomicU64>,
    pending: HostPending,
    log_counters: Arc<crate::metrics::LogCounters>,
    /// Capability `publish_ack` was negotiated: a PUBLISH with a request_id gets a receipt.
    publish_ack: std::sync::atomic::AtomicBool,
}

type Frames = FramedRead<OwnedReadHalf, FrameCodec>;

/// A frame the reader could not handle without waiting. Moved only on that slow path, so its
/// size costs nothing per message (and boxing `Blocked` would allocate whenever a publisher
/// waits).
#[allow(clippy::large_enum_variant)]
enum Slow {
    /// Anything but PONG and a PUBLISH without a receipt.
    Frame(Frame),
    /// A PUBLISH that waits for a `block` subscriber's room.
    Blocked(crate::bus::Blocked),
}

/// How a connection ended, reported once.
enum End {
    Event(ConnEvent),
    /// Told the owner task already (before the last frame to the plugin, see
    /// [`Reader::report_first`]).
    Reported,
    Cancelled,
}

impl Reader {
    async fn run(self, frames: Frames) {
        let end = tokio::select! {
            end = self.serve(frames) => end,
            () = self.cancel.cancelled() => End::Cancelled,
        };
        match end {
            End::Event(ev) => {
                // Stop the writer too; a protocol error frame queued before this still goes out
                // because the writer drains its queue when cancelled.
                self.cancel.cancel();
                let _ = self.events.send(ev).await;
            }
            End::Reported => self.cancel.cancel(),
            End::Cancelled => {}
        }
    }

    /// Tells the owner task why the connection ends, then queues `last` (PROTOCOL_ERROR,
    /// REFUSE) for the plugin. In that order: a plugin that exits as soon as it reads the frame
    /// must not have its exit seen before the reason.
    async fn report_first(&self, ev: ConnEvent, last: Frame) -> End {
        let _ = self.events.send(ev).await;
        self.send(last).await;
        End::Reported
    }

    async fn send(&self, frame: Frame) {
        let frame_type = frame.header.r#type;
        if let Err(crate::bus::SendError::Full) = self.link.outbox.send(frame, CONTROL_WAIT).await {
            tracing::warn!(plugin = %self.params.plugin, frame_type, "plugin queue full: frame to the plugin dropped");
        }
    }

    async fn protocol_error(&self, code: &'static str, message: String) -> End {
        let err = pb::ProtocolError {
            code: code.to_string(),
            message: message.clone(),
        };
        let last = Frame::control(FrameType::ProtocolError, &err);
        self.report_first(ConnEvent::Fault { code, message }, last)
            .await
    }

    async fn frame_error(&self, e: FrameError) -> End {
        match e {
            FrameError::Io(e) => End::Event(ConnEvent::Closed {
                reason: format!("connection error: {e}"),
            }),
            FrameError::Truncated(_) => End::Event(ConnEvent::Closed {
                reason: e.to_string(),
            }),
            e => self.protocol_error(e.code(), e.to_string()).await,
        }
    }

    async fn handshake(&self, frames: &mut Frames) -> Result<(), End> {
        let first = match tokio::time::timeout(self.params.handshake_timeout, frames.next()).await {
            Err(_) => {
                let msg = format!(
                    "no HELLO within the handshake timeout of {:?}",
                    self.params.handshake_timeout
                );
                return Err(self.protocol_error("handshake_timeout", msg).await);
            }
            Ok(None) => {
                return Err(End::Event(ConnEvent::Closed {
                    reason: "closed before the handshake".into(),
                }));
            }
            Ok(Some(Err(e))) => return Err(self.frame_error(e).await),
            Ok(Some(Ok(f))) => f,
        };
        self.peer_seq.store(first.header.seq, Ordering::Relaxed);
        if first.frame_type() != Some(FrameType::Hello) {
            let msg = format!(
                "the first frame must be HELLO, got type {}",
                first.header.r#type
            );
            return Err(self.protocol_error("handshake_required", msg).await);
        }
        let hello: pb::Hello = match first.decode_payload() {
            Ok(h) => h,
            Err(e) => return Err(self.protocol_error(e.code(), e.to_string()).await),
        };
        let (host_min, host_max) = (appfw_proto::MIN_VERSION, appfw_proto::MAX_VERSION);
        let Some(version) =
            negotiate_version(hello.min_version, hello.max_version, host_min, host_max)
        else {
            let reason = format!(
                "protocol version mismatch: plugin speaks {}-{}, host speaks {host_min}-{host_max}",
                hello.min_version, hello.max_version
            );
            let refuse = pb::Refuse {
                reason: reason.clone(),
                host_min_version: host_min,
                host_max_version: host_max,
                plugin_min_version: hello.min_version,
                plugin_max_version: hello.max_version,
            };
            let last = Frame::control(FrameType::Refuse, &refuse);
            return Err(self.report_first(ConnEvent::Refused { reason }, last).await);
        };
        let capabilities: Vec<String> = hello
            .capabilities
            .iter()
            .filter(|c| caps::ALL.contains(&c.as_str()))
            .cloned()
            .collect();
        self.publish_ack.store(
            capabilities.iter().any(|c| c == caps::PUBLISH_ACK),
            Ordering::Relaxed,
        );
        self.link.batches.store(
            capabilities.iter().any(|c| c == caps::BATCH),
            Ordering::Relaxed,
        );
        let mut token = [0u8; 16];
        let _ = rustix::rand::getrandom(&mut token, rustix::rand::GetRandomFlags::empty());
        let welcome = pb::Welcome {
            version,
            capabilities,
            resume_token: Bytes::copy_from_slice(&token),
            heartbeat_interval_ms: millis(self.params.heartbeat_interval),
            heartbeat_timeout_ms: millis(self.params.heartbeat_timeout),
            max_frame_size: u32::try_from(self.params.max_frame_size).unwrap_or(u32::MAX),
            plugin_name: self.params.plugin.to_string(),
            settings_json: self.params.settings_json.clone(),
            host_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        self.send(Frame::control(FrameType::Welcome, &welcome))
            .await;
        let _ = self
            .events
            .send(ConnEvent::Ready {
                version,
                capabilities: welcome.capabilities.clone(),
            })
            .await;
        Ok(())
    }

    async fn serve(&self, mut frames: Frames) -> End {
        if let Err(end) = self.handshake(&mut frames).await {
            return end;
        }
        // From here on the reader reads and decodes by itself rather than through FramedRead's
        // stream: each read's whole frames are routed in one go, without a future or a
        // `Poll<Option<Result<Frame>>>` per frame to move around.
        let FramedParts {
            io: mut sock,
            codec,
            read_buf: mut buf,
            ..
        } = frames.into_parts();
        let mut codec: FrameCodec = codec;
        let mut ping = tokio::time::interval(self.params.heartbeat_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_pong = Instant::now();
        let mut nonce = 0u64;
        let mut wakes = Wakes::new();
        let mut routes = RouteCache::new();
        loop {
            // Room for the rest of a partly read frame and a buffer's worth after it, so large
            // frames come in a few big reads rather than one frame at a time; a fresh buffer
            // once the frames queued elsewhere still hold the old one.
            // (Capped: a prefix beyond the maximum is refused by the codec, never reserved.)
            let rest = partial_rest(&buf).min(codec.max_frame_size());
            let spare = buf.capacity() - buf.len();
            if spare < MIN_READ || spare < rest {
                buf.reserve(rest + READ_BUFFER);
            }
            tokio::select! {
                _ = ping.tick() => {
                    let silent = last_pong.elapsed();
                    if silent > self.params.heartbeat_timeout {
                        return End::Event(ConnEvent::HeartbeatMissed {
                            silent,
                            timeout: self.params.heartbeat_timeout,
                        });
                    }
                    nonce += 1;
                    let mut f = Frame::new(FrameType::Ping, Bytes::new());
                    f.header.request_id = nonce;
                    // Never wait on a full queue here: that would stall heartbeat detection.
                    let _ = self.link.outbox.try_send(f);
                }
                read = sock.read_buf(&mut buf) => {
                    match read {
                        Ok(0) if buf.is_empty() => {
                            return End::Event(ConnEvent::Closed {
                                reason: "plugin closed the connection".into(),
                            });
                        }
                        Ok(0) => return self.frame_error(FrameError::Truncated(buf.len())).await,
                        Ok(_) => {}
                        Err(e) => return self.frame_error(FrameError::Io(e)).await,
                    }
                    // Every whole frame read so far; a partial one waits for the next read.
                    loop {
                        // A stream of messages on the topic published on last goes on
                        // undecoded, as runs (see Bus::relay_run).
                        match self.bus.relay_run(
                            &self.link,
                            &mut buf,
                            codec.max_frame_size(),
                            &mut wakes,
                            &routes,
                        ) {
                            Ok(None) => {}
                            Ok(Some(seq)) => {
                                self.peer_seq.store(seq, Ordering::Relaxed);
                                continue;
                            }
                            Err(blocked) => {
                                self.peer_seq.store(blocked.last_seq(), Ordering::Relaxed);
                                self.bus.relay_run_wait(&self.link, blocked, &mut wakes).await;
                                continue;
                            }
                        }
                        let frame = match codec.decode(&mut buf) {
                            Ok(Some(f)) => f,
                            Ok(None) => break,
                            Err(e) => return self.frame_error(e).await,
                        };
                        // The common frames (PONG, a PUBLISH every queue has room for) are
                        // handled without waiting, so no future is built per frame.
                        if let Some(slow) =
                            self.handle_now(frame, &mut last_pong, &mut wakes, &mut routes)
                            && let Some(end) = self.handle_slow(slow, &mut wakes, &mut routes).await
                        {
                            return end;
                        }
                    }
                    // The read is routed: its subscribers' writers go (each once).
                    wakes.wake_all();
                    // A publisher waiting for a `block` subscriber reads nothing meanwhile, its
                    // PONGs included: that time is not the plugin's silence.
                    let waited = self.link.waited_us.swap(0, Ordering::Relaxed);
                    if waited > 0 {
                        last_pong += Duration::from_micros(waited);
                    }
                }
            }
        }
    }

    /// Handles a frame if that needs no waiting; hands it back otherwise.
    #[inline(always)]
    fn handle_now(
        &self,
        frame: Frame,
        last_pong: &mut Instant,
        wakes: &mut Wakes,
        routes: &mut RouteCache,
    ) -> Option<Slow> {
        self.peer_seq.store(frame.header.seq, Ordering::Relaxed);
        match frame.frame_type() {
            Some(FrameType::Pong) => {
                *last_pong = Instant::now();
                None
            }
            Some(FrameType::Publish)
                if frame.header.request_id == 0 || !self.publish_ack.load(Ordering::Relaxed) =>
            {
                match self.bus.publish_now(&self.link, frame, wakes, routes) {
                    Ok(result) => {
                        self.publish_refused(result);
                        None
                    }
                    Err(blocked) => Some(Slow::Blocked(blocked)),
                }
            }
            _ => Some(Slow::Frame(frame)),
        }
    }

    async fn handle_slow(
        &self,
        slow: Slow,
        wakes: &mut Wakes,
        routes: &mut RouteCache,
    ) -> Option<End> {
        match slow {
            Slow::Frame(frame) => self.handle(frame, wakes, routes).await,
            Slow::Blocked(blocked) => {
                let result = self.bus.publish_wait(&self.link, blocked, wakes).await;
                self.publish_refused(result);
                None
            }
        }
    }

    /// Logs a PUBLISH without a receipt that was refused for its topic.
    fn publish_refused(&self, result: Result<(), pb::Error>) {
        if let Err(e) = result
            && e.code == "invalid_topic"
        {
            tracing::warn!(plugin = %self.params.plugin, "publish refused: {}", e.message);
        }
    }

    async fn handle(
        &self,
        frame: Frame,
        wakes: &mut Wakes,
        routes: &mut RouteCache,
    ) -> Option<End> {
        let Some(ty) = frame.frame_type() else {
            tracing::debug!(plugin = %self.params.plugin, frame_type = frame.header.r#type, "unknown frame type skipped");
            return None;
        };
        if !matches!(ty, FrameType::Publish | FrameType::Request) {
            // What follows may wait (for room, for the owner task): no writer waits behind it.
            wakes.wake_all();
        }
        match ty {
            FrameType::Publish => {
                let receipt = frame.header.request_id;
                let result = self
                    .bus
                    .publish_batched(&self.link, frame, wakes, routes)
                    .await;
                if receipt != 0 && self.publish_ack.load(Ordering::Relaxed) {
                    wakes.wake_all();
                    let mut reply = Frame::new(FrameType::Reply, Bytes::new());
                    reply.header.request_id = receipt;
                    reply.header.sender = appfw_proto::Str::from_static(crate::bus::HOST_SENDER);
                    reply.header.error = result.err().map(Box::new);
                    self.send(reply).await;
                } else {
                    self.publish_refused(result);
                }
            }
            FrameType::Request => {
                // A span only for a traced request (host records about it carry its trace id).
                let span = trace_span("request", &frame.header.traceparent);
                tracing::Instrument::instrument(
                    self.bus.request_batched(&self.link, frame, wakes),
                    span,
                )
                .await;
            }
            FrameType::Reply => {
                let waiter = self
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&frame.header.request_id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(frame);
                    }
                    None => {
                        let span = trace_span("reply", &frame.header.traceparent);
                        tracing::Instrument::instrument(self.bus.reply(&self.link, frame), span)
                            .await;
                    }
                }
            }
            FrameType::Subscribe | FrameType::Unsubscribe => {
                let id = frame.header.request_id;
                let result = if ty == FrameType::Subscribe {
                    match frame.decode_payload::<pb::Subscribe>() {
                        Ok(sub) => self
                            .bus
                            .subscribe(&self.link, id, &frame.header.topic, &sub),
                        Err(e) => return Some(self.protocol_error(e.code(), e.to_string()).await),
                    }
                } else {
                    self.bus.unsubscribe(&self.link, id)
                };
                let mut reply = Frame::new(FrameType::Reply, Bytes::new());
                reply.header.request_id = id;
                reply.header.sender = appfw_proto::Str::from_static(crate::bus::HOST_SENDER);
                reply.header.error = result.err().map(Box::new);
                self.send(reply).await;
            }
            FrameType::Ping => {
                let mut pong = Frame::new(FrameType::Pong, Bytes::new());
                pong.header.request_id = frame.header.request_id;
                self.send(pong).await;
            }
            FrameType::Log => match frame.decode_payload::<pb::LogRecord>() {
                Ok(rec) => {
                    self.log_counters
                        .inc(pb::Level::try_from(rec.level).unwrap_or(pb::Level::Info));
                    log_record(&self.params.plugin, &rec);
                    if let Some(log) = &self.params.log {
                        log.sdk_record(&sdk_json(&rec)).await;
                    }
                }
                Err(e) => return Some(self.protocol_error(e.code(), e.to_string()).await),
            },
            FrameType::Health => match frame.decode_payload::<pb::HealthReport>() {
                Ok(r) => {
                    let _ = self.events.send(ConnEvent::Health(r)).await;
                }
                Err(e) => return Some(self.protocol_error(e.code(), e.to_string()).await),
            },
            FrameType::Metrics => match frame.decode_payload::<pb::MetricBatch>() {
                Ok(batch) => self.params.metrics.ingest(&self.params.plugin, batch),
                Err(e) => return Some(self.protocol_error(e.code(), e.to_string()).await),
            },
            FrameType::Goodbye => {
                let reason = frame
                    .decode_payload::<pb::Goodbye>()
                    .map(|g| g.reason)
                    .unwrap_or_default();
                let _ = self.events.send(ConnEvent::Goodbye { reason }).await;
            }
            FrameType::Hello => {
                return Some(
                    self.protocol_error("unexpected_frame", "HELLO after the handshake".into())
                        .await,
                );
            }
            // Frames only the host sends, or nothing to do: skip.
            _ => {}
        }
        None
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// A LOG frame as the JSON payload of an `l` record.
fn sdk_json(rec: &pb::LogRecord) -> Vec<u8> {
    let level = match pb::Level::try_from(rec.level).unwrap_or(pb::Level::Info) {
        pb::Level::Error => "error",
        pb::Level::Warn => "warn",
        pb::Level::Debug => "debug",
        pb::Level::Trace => "trace",
        _ => "info",
    };
    let fields: std::collections::BTreeMap<_, _> = rec.fields.iter().collect();
    serde_json::to_vec(&serde_json::json!({
        "level": level,
        "message": rec.message,
        "fields": fields,
    }))
    .unwrap_or_default()
}

fn log_record(plugin: &str, rec: &pb::LogRecord) {
    use pb::Level;
    let fields = if rec.fields.is_empty() {
        String::new()
    } else {
        let mut v: Vec<_> = rec.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        v.sort();
        format!(" {}", v.join(" "))
    };
    let msg = &rec.message;
    match Level::try_from(rec.level).unwrap_or(Level::Info) {
        Level::Error => tracing::error!(plugin, source = "sdk", "{msg}{fields}"),
        Level::Warn => tracing::warn!(plugin, source = "sdk", "{msg}{fields}"),
        Level::Debug => tracing::debug!(plugin, source = "sdk", "{msg}{fields}"),
        Level::Trace => tracing::trace!(plugin, source = "sdk", "{msg}{fields}"),
        _ => tracing::info!(plugin, source = "sdk", "{msg}{fields}"),
    }
}

/// A span carrying the trace id of a frame's `traceparent`, so the host's records about its
/// handling carry it (`trace_id`); none without a valid one.
fn trace_span(what: &'static str, traceparent: &str) -> tracing::Span {
    match appfw_proto::trace::TraceParent::parse(traceparent).and(traceparent.get(3..35)) {
        Some(trace_id) => tracing::error_span!("bus", op = what, trace_id),
        None => tracing::Span::none(),
    }
}
