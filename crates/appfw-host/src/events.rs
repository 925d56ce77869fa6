//! Typed events: everything that happens is one [`Event`], emitted once through [`Events`],
//! which logs it, keeps it in a bounded in-memory log and broadcasts it to subscribers (the API,
//! and later the store, metrics and alert rules).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::supervisor::PluginState;

/// What happened.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The host finished starting.
    HostStarted {
        /// Host version.
        version: String,
        /// Host pid.
        pid: u32,
    },
    /// The host began stopping.
    HostStopping {
        /// Why.
        reason: String,
    },
    /// The host stopped every plugin.
    HostStopped {
        /// Plugins that had to be killed because the shutdown timeout ran out.
        forced: Vec<String>,
    },
    /// A plugin changed state.
    StateChanged {
        /// Previous state.
        from: PluginState,
        /// New state.
        to: PluginState,
        /// Why.
        reason: String,
        /// The last sampled figures of the process, while there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<crate::resources::Usage>,
    },
    /// A plugin process was started.
    Spawned {
        /// Its pid.
        pid: u32,
        /// 0 for the first start, then the restart count.
        restarts: u64,
        /// For a restart, its reason (`crash`, `oom`, `hang`, `requested`, `config`, ...: the
        /// `reason` label of `appfw_plugin_restarts_total`).
        #[serde(skip_serializing_if = "Option::is_none")]
        restart_reason: Option<String>,
    },
    /// A plugin could not be started.
    SpawnFailed {
        /// Why.
        error: String,
    },
    /// A plugin process exited.
    Exited {
        /// Its pid.
        pid: u32,
        /// `exit code N` or `signal N (NAME)`.
        status: String,
        /// Whether the exit counts as a failure.
        failure: bool,
        /// Why the process ended (e.g. killed after missing heartbeats).
        reason: String,
        /// The last lines it printed (at most 20 and 4 KiB), `stdout: ...`/`stderr: ...`.
        last_output: Vec<String>,
        /// Its last sampled resource figures.
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<crate::resources::Usage>,
        /// Descendants still running after it exited, killed by the sweep: `pid (command)`.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        killed: Vec<String>,
    },
    /// A sampled resource figure stayed over a threshold (`[[plugins.thresholds]]`, or the
    /// memory limit where no memory cgroup enforces it).
    LimitBreached {
        /// `rss`, `cpu`, `fds` or `threads`.
        resource: String,
        /// The sampled value (bytes, percent of one core, or a count).
        value: f64,
        /// The threshold.
        threshold: f64,
        /// How long it has been over, milliseconds.
        for_ms: u64,
        /// `warn` or `restart`.
        action: String,
        /// The figures of that sample.
        usage: crate::resources::Usage,
    },
    /// A step of the recovery ladder after a failure: a restart was scheduled.
    RestartScheduled {
        /// `retry` (the first failure: at once), `restart` (after a backoff delay) or
        /// `restart_dependants` (the plugin and the plugins that depend on it). The last step,
        /// giving up, is `gave_up`.
        step: RecoveryStep,
        /// Delay before the restart, milliseconds.
        delay_ms: u64,
        /// Failures in a row without `backoff.reset_after` of uptime in between.
        attempt: u32,
    },
    /// The plugin broke the wire protocol; its connection was closed.
    ProtocolFault {
        /// Stable code (`frame_too_large`, `malformed_frame`, ...).
        code: String,
        /// Detail.
        message: String,
    },
    /// The plugin's handshake was refused.
    HandshakeRefused {
        /// Detail naming both version ranges.
        reason: String,
    },
    /// The plugin answered no heartbeat in time.
    HeartbeatMissed {
        /// Time since the last answer, milliseconds.
        silent_ms: u64,
        /// The configured timeout, milliseconds.
        timeout_ms: u64,
    },
    /// Too many restarts within the intensity window: the plugin stays `failed`.
    GaveUp {
        /// Restarts in the window.
        restarts: u32,
        /// The window, milliseconds.
        within_ms: u64,
        /// The last exit's reason.
        reason: String,
    },
    /// A health probe turned passing or failing.
    ProbeChanged {
        /// The probe's name.
        probe: String,
        /// Whether it passes now.
        passing: bool,
        /// What it saw.
        message: String,
    },
    /// A new config was applied.
    ConfigReloaded {
        /// What asked (`file change`, `SIGHUP`, `API`).
        source: String,
        /// Generation now running.
        generation: u64,
        /// What changed.
        summary: String,
    },
    /// A new config was refused; the running one stays.
    ConfigRejected {
        /// What asked.
        source: String,
        /// Every problem, located.
        errors: Vec<String>,
    },
    /// A stop had to escalate to a signal.
    StopEscalated {
        /// The signal sent to the process group.
        signal: String,
    },
    /// An on-demand plugin is started because a message or request arrived for it.
    DemandStart {
        /// The topic of the first message that waits for it.
        topic: String,
        /// Messages and requests waiting for it.
        queued: u64,
    },
    /// The plugin's output is being dropped: its log file cannot be written (disk full), or
    /// `logs.policy = "drop"` and the writer is behind.
    LogDropped {
        /// Why.
        reason: String,
        /// Sequence number of the first line dropped.
        from_seq: u64,
    },
    /// Output is written again after a [`EventKind::LogDropped`].
    LogResumed {
        /// Lines dropped meanwhile.
        dropped: u64,
    },
}

impl EventKind {
    /// The `kind` tag as it appears in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Self::HostStarted { .. } => "host_started",
            Self::HostStopping { .. } => "host_stopping",
            Self::HostStopped { .. } => "host_stopped",
            Self::StateChanged { .. } => "state_changed",
            Self::Spawned { .. } => "spawned",
            Self::SpawnFailed { .. } => "spawn_failed",
            Self::Exited { .. } => "exited",
            Self::RestartScheduled { .. } => "restart_scheduled",
            Self::ProtocolFault { .. } => "protocol_fault",
            Self::HandshakeRefused { .. } => "handshake_refused",
            Self::HeartbeatMissed { .. } => "heartbeat_missed",
            Self::StopEscalated { .. } => "stop_escalated",
            Self::ConfigReloaded { .. } => "config_reloaded",
            Self::ProbeChanged { .. } => "probe_changed",
            Self::GaveUp { .. } => "gave_up",
            Self::LimitBreached { .. } => "limit_breached",
            Self::ConfigRejected { .. } => "config_rejected",
            Self::DemandStart { .. } => "demand_start",
            Self::LogDropped { .. } => "log_dropped",
            Self::LogResumed { .. } => "log_resumed",
        }
    }
}

/// The steps of the recovery ladder, in escalation order (then `gave_up`).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryStep {
    /// The first failure: restart at once (a one-off crash costs no delay).
    Retry,
    /// A further failure: restart after the backoff delay.
    Restart,
    /// Failing again and again: restart, and restart its dependants with it.
    RestartDependants,
}

impl RecoveryStep {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Restart => "restart",
            Self::RestartDependants => "restart_dependants",
        }
    }
}

/// Who or what caused an event: the `by` of every event a plugin's owner task emits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The host itself (start-up, shutdown, removal from the config).
    Host,
    /// The host's own rules: restart policy, health checks, limits, dependencies.
    Policy,
    /// A config reload, and what triggered it (`file change`, `SIGHUP`, `API, token ci`).
    Reload(Arc<str>),
    /// An API client, by the name of the token it presented; `cli` when it is `appfw`.
    Client {
        /// The `appfw` CLI (it says so in a header) rather than another HTTP client.
        cli: bool,
        /// The token's name (`local` for the data directory's token).
        token: Arc<str>,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host => f.write_str("host"),
            Self::Policy => f.write_str("policy"),
            Self::Reload(source) => write!(f, "reload ({source})"),
            Self::Client { cli: true, token } => write!(f, "cli (token {token})"),
            Self::Client { cli: false, token } => write!(f, "api (token {token})"),
        }
    }
}

impl Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One event.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Increasing number, unique per host run.
    pub seq: u64,
    /// When, RFC 3339.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The plugin concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Who or what caused it, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<Origin>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// Capacity of the in-memory event log.
const RING: usize = 4096;

/// The event hub. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    seq: AtomicU64,
    ring: Mutex<VecDeque<Arc<Event>>>,
    tx: broadcast::Sender<Arc<Event>>,
    store: Option<crate::store::EventSink>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// A new hub that keeps events in memory only.
    pub fn new() -> Self {
        Self::build(1, None)
    }

    /// A hub that also writes every event to the store, numbering from `first_seq`.
    pub fn with_store(first_seq: u64, sink: crate::store::EventSink) -> Self {
        Self::build(first_seq, Some(sink))
    }

    fn build(first_seq: u64, store: Option<crate::store::EventSink>) -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                seq: AtomicU64::new(first_seq.max(1)),
                ring: Mutex::new(VecDeque::with_capacity(256)),
                tx,
                store,
            }),
        }
    }

    /// The seq the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.inner.seq.load(Ordering::Relaxed)
    }

    /// Records and publishes an event, and writes it to the host log.
    pub fn emit(&self, plugin: Option<&str>, kind: EventKind) -> Arc<Event> {
        self.emit_by(plugin, None, kind)
    }

    /// [`Events::emit`] with who or what caused it.
    pub fn emit_by(
        &self,
        plugin: Option<&str>,
        by: Option<&Origin>,
        kind: EventKind,
    ) -> Arc<Event> {
        let ev = {
            // The number is taken under the ring's lock, so the ring is in seq order even when
            // tasks emit at the same time.
            let mut ring = self
                .inner
                .ring
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let ev = Arc::new(Event {
                seq: self.inner.seq.fetch_add(1, Ordering::Relaxed),
                time: SystemTime::now(),
                plugin: plugin.map(str::to_string),
                by: by.cloned(),
                kind,
            });
            if ring.len() == RING {
                ring.pop_front();
            }
            ring.push_back(Arc::clone(&ev));
            ev
        };
        log(&ev);
        if let Some(store) = &self.inner.store {
            store.write(&ev);
        }
        // No receiver is fine; a lagging one loses the oldest events and can re-read the ring.
        let _ = self.inner.tx.send(Arc::clone(&ev));
        ev
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    pub fn since(&self, after: u64, limit: usize) -> Vec<Arc<Event>> {
        let ring = self
            .inner
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ring.iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect()
    }

    /// A live stream of events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.tx.subscribe()
    }
}

fn log(ev: &Event) {
    let plugin = ev.plugin.as_deref().unwrap_or("");
    let kind = ev.kind.name();
    let by = ev
        .by
        .as_ref()
        .map_or_else(String::new, |b| format!(", by {b}"));
    match &ev.kind {
        EventKind::StateChanged {
            from, to, reason, ..
        } => {
            tracing::info!(plugin, event = kind, %from, %to, reason = %reason, "plugin {plugin}: {from} -> {to} ({reason}{by})")
        }
        EventKind::Spawned { pid, restarts, .. } => {
            tracing::info!(
                plugin,
                event = kind,
                pid,
                restarts,
                "plugin {plugin}: started, pid {pid}"
            )
        }
        EventKind::Exited {
            pid,
            status,
            failure,
            reason,
            ..
        } => {
            if *failure {
                tracing::warn!(plugin, event = kind, pid, status = %status, reason = %reason, "plugin {plugin}: pid {pid} exited with {status} ({reason})")
            } else {
                tracing::info!(plugin, event = kind, pid, status = %status, reason = %reason, "plugin {plugin}: pid {pid} exited with {status} ({reason})")
            }
        }
        EventKind::SpawnFailed { error } => {
            tracing::error!(plugin, event = kind, error = %error, "plugin {plugin}: cannot start: {error}")
        }
        EventKind::ProtocolFault { code, message } => {
            tracing::error!(plugin, event = kind, code = %code, "plugin {plugin}: protocol fault {code}: {message}; closing its connection")
        }
        EventKind::HandshakeRefused { reason } => {
            tracing::error!(
                plugin,
                event = kind,
                "plugin {plugin}: handshake refused: {reason}"
            )
        }
        EventKind::HeartbeatMissed {
            silent_ms,
            timeout_ms,
        } => {
            tracing::warn!(
                plugin,
                event = kind,
                silent_ms,
                timeout_ms,
                "plugin {plugin}: no heartbeat answer for {silent_ms} ms (timeout {timeout_ms} ms): hung"
            )
        }
        EventKind::RestartScheduled {
            step,
            delay_ms,
            attempt,
        } => {
            let step = step.as_str();
            tracing::info!(
                plugin,
                event = kind,
                step,
                delay_ms,
                attempt,
                "plugin {plugin}: {step} in {delay_ms} ms (failure {attempt} in a row without a stable uptime)"
            )
        }
        EventKind::LimitBreached {
            resource,
            value,
            threshold,
            for_ms,
            action,
            ..
        } => {
            tracing::warn!(
                plugin,
                event = kind,
                resource = %resource,
                value,
                threshold,
                action = %action,
                "plugin {plugin}: {resource} {value} over {threshold} for {for_ms} ms ({action})"
            )
        }
        EventKind::DemandStart { topic, queued } => {
            tracing::info!(plugin, event = kind, topic = %topic, queued, "plugin {plugin}: starting on demand (message on {topic}, {queued} waiting)")
        }
        EventKind::LogDropped { reason, from_seq } => {
            tracing::warn!(
                plugin,
                event = kind,
                from_seq,
                "plugin {plugin}: dropping its output from line {from_seq}: {reason}"
            )
        }
        EventKind::LogResumed { dropped } => {
            tracing::warn!(
                plugin,
                event = kind,
                dropped,
                "plugin {plugin}: writing its output again; {dropped} lines were dropped"
            )
        }
        EventKind::StopEscalated { signal } => {
            tracing::warn!(plugin, event = kind, signal = %signal, "plugin {plugin}: did not stop in time, sent {signal}")
        }
        EventKind::GaveUp {
            restarts,
            within_ms,
            reason,
        } => {
            tracing::error!(
                plugin,
                event = kind,
                restarts,
                within_ms,
                "plugin {plugin}: gave up after {restarts} restarts within {within_ms} ms (last: {reason}); start it again with `appfw start {plugin}`"
            )
        }
        EventKind::ProbeChanged {
            probe,
            passing,
            message,
        } => {
            if *passing {
                tracing::info!(plugin, event = kind, probe = %probe, "plugin {plugin}: probe {probe} passing ({message})")
            } else {
                tracing::warn!(plugin, event = kind, probe = %probe, "plugin {plugin}: probe {probe} failing ({message})")
            }
        }
        EventKind::ConfigReloaded {
            source,
            generation,
            summary,
        } => {
            tracing::info!(event = kind, source = %source, generation, "config reloaded ({source}), generation {generation}: {summary}")
        }
        EventKind::ConfigRejected { source, errors } => {
            tracing::error!(event = kind, source = %source, "config reload ({source}) refused; the running config stays:\n{}", errors.join("\n"))
        }
        EventKind::HostStarted { version, pid } => {
            tracing::info!(event = kind, version = %version, pid, "appfw host {version} started (pid {pid})")
        }
        EventKind::HostStopping { reason } => {
            tracing::info!(event = kind, reason = %reason, "host stopping: {reason}")
        }
        EventKind::HostStopped { forced } => {
            if forced.is_empty() {
                tracing::info!(event = kind, "all plugins stopped")
            } else {
                tracing::warn!(event = kind, ?forced, "shutdown timeout: killed {forced:?}")
            }
        }
    }
}
