//! The owner task of one plugin. It alone holds the plugin's state machine; the API, the CLI,
//! timers, the reaper and the connection only send it messages, so nothing can race it into
//! starting a plugin twice.

use std::ffi::OsString;
use std::future::pending;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use appfw_proto::Frame;
use appfw_proto::pb::{self, FrameType, HealthStatus};
use bytes::Bytes;
use rustix::process::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::conn::{self, ConnEvent, ConnHandle, ConnParams};
use super::probe::{self, ProbeResult};
use super::process::{Child, ProcessSpec, describe};
use super::{Action, Apply, Ctx, LastExit, PluginState, PluginStatus, Reconfigured, backoff_delay};
use crate::config::{PluginConfig, Protocol, RestartPolicy};
use crate::events::{EventKind, Origin, RecoveryStep};
use crate::logs::capture;
use crate::logs::record::Kind;
use crate::metrics::RestartReason;
use crate::metrics::proc::{ProcSample, Sampler};
use crate::resources::{PluginCgroup, ProcessLimits, Usage, Watch};

/// Messages to a plugin's owner task.
pub(crate) enum Command {
    /// Start/stop/restart; the reply comes once the plugin settled (running, stopped, ...).
    Act(Action, Origin, oneshot::Sender<PluginStatus>),
    /// The current status, at once.
    Status(oneshot::Sender<PluginStatus>),
    /// Stop for good (host shutdown); the task ends after the process exited.
    Quit(&'static str, Origin, oneshot::Sender<PluginStatus>),
    /// SIGKILL the process group now (shutdown deadline passed).
    Kill,
    /// A new config for this plugin, and how to apply it.
    Reconfigure(
        Box<PluginConfig>,
        Apply,
        Origin,
        oneshot::Sender<Reconfigured>,
    ),
    /// A plugin this one depends on restarted: sent to `restart_with_dependencies` ones, and
    /// to every dependant when the recovery ladder reached `restart_dependants` (`true`).
    DependencyRestarted(Arc<str>, bool),
}

/// What to do when the current process exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterExit {
    Policy,
    Stop,
    Restart,
    Quit,
    /// An on-demand plugin stopped for idleness: back to `idle`.
    Idle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopPhase {
    None,
    Shutdown,
    Term,
    Kill,
}

struct Proc {
    child: Child,
    probe_tasks: Vec<JoinHandle<()>>,
    probe_rx: Option<mpsc::Receiver<ProbeResult>>,
    probe_cancel: tokio_util::sync::CancellationToken,
    conn: Option<ConnHandle>,
    conn_rx: Option<mpsc::Receiver<ConnEvent>>,
    capture: Vec<JoinHandle<()>>,
    phase: StopPhase,
    /// Set when the host kills the process for a fault: the exit then counts as a failure.
    kill_reason: Option<String>,
    /// Why a stop was asked for (the exit reason of a requested stop).
    stop_reason: Option<String>,
    /// The restart reason that goes with `kill_reason`.
    kill_cause: Option<RestartReason>,
    /// Capabilities negotiated in the handshake.
    caps: Vec<String>,
    /// The connection closed while the process was not being stopped: it gets a moment to
    /// exit by itself before it is terminated.
    conn_lost: Option<String>,
    ready: bool,
}

enum Input {
    Cmd(Option<Command>),
    Exit(Option<ExitStatus>),
    Conn(Option<ConnEvent>),
    Probe(Option<ProbeResult>),
    Timer,
    Sample,
    /// A message arrived for an on-demand plugin with no process.
    Demand,
    /// Subscription grace or idle check of an on-demand plugin.
    DemandTimer,
}

/// What the owner task knows of one probe.
#[derive(Clone, Debug)]
struct ProbeState {
    name: String,
    /// `None` until the thresholds decided.
    passing: Option<bool>,
    ok_streak: u32,
    fail_streak: u32,
    message: String,
    since: SystemTime,
}

/// How long a plugin may take to accept live settings before it is restarted instead.
const LIVE_UPDATE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a process whose connection closed may take to exit by itself.
const CONN_LOST_GRACE: Duration = Duration::from_millis(500);

/// How long an on-demand plugin has after its handshake to subscribe to what waits for it;
/// what it has not taken by then is dropped (requests refused).
const SUBSCRIBE_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct Actor {
    name: Arc<str>,
    cfg: PluginConfig,
    ctx: Arc<Ctx>,
    rx: mpsc::Receiver<Command>,
    state: PluginState,
    since: SystemTime,
    proc: Option<Proc>,
    restarts: u64,
    failures: u32,
    last_exit: Option<LastExit>,
    after_exit: AfterExit,
    timer: Option<Instant>,
    waiters: Vec<oneshot::Sender<PluginStatus>>,
    health: Option<pb::HealthReport>,
    probes: Vec<ProbeState>,
    /// The plugin's log while a process runs (closed after its capture ended).
    output: Option<Arc<crate::logs::PluginLog>>,
    warned_root: bool,
    /// Why the next restart happens (the `reason` label of the restart counter).
    restart_cause: RestartReason,
    /// Why the task is ending (host shutdown, removed from the config).
    quit_reason: &'static str,
    /// Stopped by an operator.
    held: bool,
    /// When the automatic restarts in the intensity window happened.
    recent_restarts: std::collections::VecDeque<std::time::Instant>,
    /// The last lines the current process printed.
    tail: Arc<capture::OutputTail>,
    /// The plugin's cgroups, when the host has any.
    cgroup: Option<PluginCgroup>,
    /// OOM kills counted in the cgroup when the current process started.
    oom_base: Option<u64>,
    /// Reused buffers for /proc reads.
    sampler: Sampler,
    /// When the next sample is due.
    sample_at: Option<Instant>,
    /// The previous sample of the current process (for the CPU rate).
    last_sample: Option<(ProcSample, std::time::Instant)>,
    /// The last figures of the current process.
    usage: Option<Usage>,
    /// Thresholds in force, and their state.
    thresholds: Vec<(crate::config::ThresholdConfig, bool)>,
    watch: Watch,
    /// Who or what caused the transition under way (the `by` of its events); back to
    /// `policy` once the plugin settles.
    by: Origin,
    /// The next restart is the recovery ladder's `restart_dependants` step.
    escalate: bool,
    /// The reason of the restart under way (for the `spawned` event).
    restarting: Option<RestartReason>,
    /// The bus side of an on-demand plugin.
    demand: Option<Arc<crate::bus::Demand>>,
    /// When the next subscription-grace or idle check of an on-demand plugin is due.
    demand_at: Option<Instant>,
    /// When the current process finished its handshake.
    ready_at: Option<Instant>,
}

impl Actor {
    pub(crate) fn new(cfg: PluginConfig, ctx: Arc<Ctx>, rx: mpsc::Receiver<Command>) -> Self {
        Self {
            name: Arc::from(cfg.name.as_str()),
            state: if cfg.on_demand() {
                PluginState::Idle
            } else {
                PluginState::Stopped
            },
            cfg,
            ctx,
            rx,
            since: SystemTime::now(),
            proc: None,
            restarts: 0,
            failures: 0,
            last_exit: None,
            after_exit: AfterExit::Policy,
            timer: None,
            waiters: Vec::new(),
            health: None,
            probes: Vec::new(),
            output: None,
            warned_root: false,
            restart_cause: RestartReason::Crash,
            quit_reason: "host shutting down",
            held: false,
            recent_restarts: std::collections::VecDeque::new(),
            tail: Arc::default(),
            cgroup: None,
            oom_base: None,
            sampler: Sampler::default(),
            sample_at: None,
            last_sample: None,
            usage: None,
            thresholds: Vec::new(),
            watch: Watch::default(),
            by: Origin::Host,
            escalate: false,
            restarting: None,
            demand: None,
            demand_at: None,
            ready_at: None,
        }
    }

    /// Creates the plugin's cgroups (if the host has any) and works out which thresholds apply.
    fn setup_resources(&mut self) {
        if let Some(root) = &self.ctx.cgroups {
            match &self.cgroup {
                Some(cg) => {
                    if let Err(e) = cg.apply(&self.cfg.limits) {
                        tracing::error!(plugin = %self.name, "cannot apply the new resource limits: {e}");
                    }
                }
                None => match root.plugin(&self.name, &self.cfg.limits) {
                    Ok(cg) => self.cgroup = Some(cg),
                    Err(e) => {
                        tracing::error!(plugin = %self.name, "cannot set up the plugin's cgroup: {e}; its limits are sampled instead");
                    }
                },
            }
        }
        let memory_by_cgroup = self.cgroup.is_some()
            && self
                .ctx
                .cgroups
                .as_ref()
                .is_some_and(|r| r.mechanism(crate::resources::Controller::Memory).is_some());
        self.thresholds =
            Watch::effective(&self.cfg.limits, &self.cfg.thresholds, memory_by_cgroup);
        self.watch.reset();
    }

    /// Samples the current process and acts on the thresholds.
    fn on_sample(&mut self) {
        let interval = self.ctx.supervisor.load().sample_interval;
        self.sample_at = Some(Instant::now() + interval);
        let Some(pid) = self.proc.as_ref().map(|p| p.child.pid) else {
            self.sample_at = None;
            return;
        };
        let Some(s) = self.sampler.sample(pid) else {
            return;
        };
        let now = std::time::Instant::now();
        let usage = Usage::from_samples(&s, self.last_sample.as_ref().map(|(p, t)| (p, *t)), now);
        self.last_sample = Some((s, now));
        self.usage = Some(usage);
        for b in self.watch.check(&self.thresholds, &usage, now) {
            let action = match b.action {
                crate::config::ThresholdAction::Warn => "warn",
                crate::config::ThresholdAction::Restart => "restart",
            };
            emit(
                &self.ctx,
                &self.name,
                &self.by,
                EventKind::LimitBreached {
                    resource: b.resource.as_str().into(),
                    value: b.value,
                    threshold: b.above,
                    for_ms: b.for_ms,
                    action: action.into(),
                    usage,
                },
            );
            if b.action == crate::config::ThresholdAction::Restart {
                let what = if b.memory_limit {
                    format!(
                        "memory limit: RSS {} over limits.memory {} (sampled: no memory cgroup)",
                        b.value, b.above
                    )
                } else {
                    format!(
                        "threshold: {} {} over {} for {} ms",
                        b.resource.as_str(),
                        b.value,
                        b.above,
                        b.for_ms
                    )
                };
                self.terminate(what, RestartReason::Limit, Signal::TERM);
            }
        }
    }

    pub(crate) async fn run(mut self) {
        self.setup_resources();
        self.apply_demand_config().await;
        loop {
            match self.next_input().await {
                Input::Cmd(Some(cmd)) => {
                    if self.on_command(cmd).await {
                        break;
                    }
                }
                // Every handle is gone: nobody can ask us anything any more; stop for good.
                Input::Cmd(None) => {
                    if self.proc.is_none() {
                        break;
                    }
                    self.after_exit = AfterExit::Quit;
                    self.begin_stop("host is gone");
                }
                Input::Exit(status) => {
                    // What the connection reported before the process died comes first (a
                    // protocol fault the plugin exits on at once): `select!` may have picked
                    // the exit although both were ready.
                    while let Some(ev) = self
                        .proc
                        .as_mut()
                        .and_then(|p| p.conn_rx.as_mut())
                        .and_then(|r| r.try_recv().ok())
                    {
                        self.on_conn_event(ev);
                    }
                    if self.on_exit(status).await {
                        break;
                    }
                }
                Input::Conn(Some(ev)) => self.on_conn_event(ev),
                Input::Conn(None) => {
                    if let Some(p) = self.proc.as_mut() {
                        p.conn_rx = None;
                    }
                }
                Input::Probe(Some(r)) => self.on_probe(r),
                Input::Probe(None) => {
                    if let Some(p) = self.proc.as_mut() {
                        p.probe_rx = None;
                    }
                }
                Input::Timer => self.on_timer().await,
                Input::Sample => self.on_sample(),
                Input::Demand => self.on_demand_wake().await,
                Input::DemandTimer => self.on_demand_timer(),
            }
        }
        self.timer = None;
        if self.demand.take().is_some() {
            // Nobody will start it any more: what waits for it is refused.
            self.ctx.bus.declare(&self.name, None);
        }
        if let Some(cg) = self.cgroup.take() {
            // Whatever is left (nothing, after the exit sweep) goes, then the group.
            cg.sweep(Duration::from_secs(2)).await;
            cg.remove();
        }
    }

    async fn next_input(&mut self) -> Input {
        let (exit, conn_rx, probe_rx) = match self.proc.as_mut() {
            Some(p) => (
                Some(&mut p.child.exit),
                p.conn_rx.as_mut(),
                p.probe_rx.as_mut(),
            ),
            None => (None, None, None),
        };
        let timer = self.timer;
        let sample_at = self.sample_at;
        let demand_at = self.demand_at;
        let demand = self.demand.as_deref();
        // Not biased: a plugin that floods its connection must not starve commands and timers.
        // An exit drains the connection's queued events first instead (see `Input::Exit`).
        tokio::select! {
            ev = async move { match conn_rx { Some(r) => r.recv().await, None => pending().await } } => Input::Conn(ev),
            () = async move { match demand { Some(d) => d.wake().notified().await, None => pending().await } } => Input::Demand,
            () = async move { match demand_at { Some(t) => tokio::time::sleep_until(t).await, None => pending().await } } => Input::DemandTimer,
            cmd = self.rx.recv() => Input::Cmd(cmd),
            st = async move { match exit { Some(f) => f.await.ok(), None => pending().await } } => Input::Exit(st),
            r = async move { match probe_rx { Some(r) => r.recv().await, None => pending().await } } => Input::Probe(r),
            () = async move { match timer { Some(t) => tokio::time::sleep_until(t).await, None => pending().await } } => Input::Timer,
            () = async move { match sample_at { Some(t) => tokio::time::sleep_until(t).await, None => pending().await } } => Input::Sample,
        }
    }

    fn status(&self) -> PluginStatus {
        let running = self.proc.as_ref();
        PluginStatus {
            name: self.name.to_string(),
            state: self.state,
            since: humantime::format_rfc3339_millis(self.since).to_string(),
            pid: running.map(|p| p.child.pid),
            started_at: running
                .map(|p| humantime::format_rfc3339_millis(p.child.started_at).to_string()),
            uptime_secs: running.map(|p| p.child.started.elapsed().as_secs_f64()),
            restarts: self.restarts,
            protocol: self.cfg.protocol,
            last_exit: self.last_exit.clone(),
            health: self.health.as_ref().map(|h| {
                HealthStatus::try_from(h.status)
                    .unwrap_or(HealthStatus::Unspecified)
                    .as_str_name()
                    .trim_start_matches("HEALTH_STATUS_")
                    .to_lowercase()
            }),
            health_message: self
                .health
                .as_ref()
                .map(|h| h.message.clone())
                .filter(|m| !m.is_empty()),
            next_restart_in_ms: (self.state == PluginState::Backoff)
                .then(|| {
                    self.timer
                        .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64)
                })
                .flatten(),
            checks: self.checks(),
            held: self.held,
            usage: running.and(self.usage),
            instance: self.cfg.instance.clone(),
            on_demand: self.demand.as_ref().map(|d| d.status()),
        }
    }

    fn checks(&self) -> Vec<super::CheckStatus> {
        let mut out: Vec<super::CheckStatus> = self
            .probes
            .iter()
            .map(|p| super::CheckStatus {
                name: format!("probe:{}", p.name),
                status: match p.passing {
                    Some(true) => "healthy",
                    Some(false) => "unhealthy",
                    None => "unknown",
                },
                message: p.message.clone(),
                since: Some(humantime::format_rfc3339_millis(p.since).to_string()),
            })
            .collect();
        if let Some(h) = &self.health {
            for c in &h.checks {
                out.push(super::CheckStatus {
                    name: format!("custom:{}", c.name),
                    status: health_word(c.status),
                    message: c.message.clone(),
                    since: None,
                });
            }
        }
        out
    }

    fn set_state(&mut self, to: PluginState, reason: &str) {
        if to != self.state {
            let from = self.state;
            self.state = to;
            self.since = SystemTime::now();
            self.sync_demand(reason);
            emit(
                &self.ctx,
                &self.name,
                &self.by,
                EventKind::StateChanged {
                    from,
                    to,
                    reason: reason.to_string(),
                    usage: self.proc.as_ref().and(self.usage),
                },
            );
        }
        if to.is_settled() {
            // The transition someone asked for is over: what follows is the host's doing.
            self.by = Origin::Policy;
        }
        if to.is_settled() && !self.waiters.is_empty() {
            let st = self.status();
            for w in self.waiters.drain(..) {
                let _ = w.send(st.clone());
            }
        }
    }

    /// Returns true when the task should end.
    async fn on_command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::DependencyRestarted(dep, escalated) => {
                self.by = Origin::Policy;
                let running = self
                    .proc
                    .as_ref()
                    .is_some_and(|p| p.phase == StopPhase::None);
                if running && !self.held {
                    self.after_exit = AfterExit::Restart;
                    self.restart_cause = RestartReason::Dependency;
                    self.begin_stop(&if escalated {
                        format!("recovery: dependency {dep} keeps failing")
                    } else {
                        format!("dependency {dep} restarted")
                    });
                }
            }
            Command::Kill => {
                // Killing is never followed by a restart: it is how a host stop is forced.
                if self.after_exit == AfterExit::Policy {
                    self.after_exit = AfterExit::Stop;
                }
                if let Some(p) = &mut self.proc {
                    p.phase = StopPhase::Kill;
                    let _ = p.child.signal_group(Signal::KILL);
                }
            }
            Command::Quit(why, by, reply) => {
                self.by = by;
                self.waiters.push(reply);
                self.after_exit = AfterExit::Quit;
                self.quit_reason = why;
                if self.proc.is_none() {
                    self.timer = None;
                    let to = if self.state.is_settled() && self.state != PluginState::Backoff {
                        self.state
                    } else {
                        PluginState::Stopped
                    };
                    self.set_state(to, why);
                    return true;
                }
                self.begin_stop(why);
            }
            Command::Act(action, by, reply) => {
                self.by = by;
                self.on_action(action, reply).await;
            }
            Command::Reconfigure(cfg, apply, by, reply) => {
                self.by = by;
                let outcome = self.reconfigure(*cfg, apply).await;
                if outcome != Reconfigured::Restarted {
                    self.by = Origin::Policy;
                }
                let _ = reply.send(outcome);
            }
        }
        false
    }

    /// Keeps the bus's view of an on-demand plugin in line with its state (called on changes).
    fn sync_demand(&self, reason: &str) {
        let Some(d) = &self.demand else { return };
        let (bus, name) = (&self.ctx.bus, &self.name);
        match self.state {
            PluginState::Starting => bus.demand_starting(d),
            // Live once it subscribed (the bus sees that), or at the end of the grace.
            PluginState::Running | PluginState::Unhealthy => {}
            PluginState::Stopped if self.held => bus.demand_refuse(
                d,
                "plugin_stopped",
                format!("{name} is stopped by an operator; `appfw start {name}` starts it"),
            ),
            PluginState::Failed => bus.demand_refuse(
                d,
                "plugin_failed",
                format!("{name} failed ({reason}); `appfw start {name}` starts it again"),
            ),
            PluginState::Idle
            | PluginState::Stopping
            | PluginState::Stopped
            | PluginState::Backoff
            | PluginState::Completed => bus.demand_cold(d),
        }
    }

    /// Declares the plugin on-demand to the bus (or not any more), after a start or a reload.
    async fn apply_demand_config(&mut self) {
        if !self.cfg.on_demand() {
            if self.demand.take().is_some() {
                self.ctx.bus.declare(&self.name, None);
                self.demand_at = None;
                self.ready_at = None;
                if self.state == PluginState::Idle {
                    self.spawn("start = \"always\"").await;
                }
            }
            return;
        }
        let d = self.ctx.bus.declare(
            &self.name,
            Some((&self.cfg.topics, self.cfg.on_demand_queue)),
        );
        let fresh = self.demand.is_none();
        self.demand = d;
        let conn = self
            .proc
            .as_ref()
            .filter(|p| p.ready && p.phase == StopPhase::None)
            .and_then(|p| p.conn.as_ref())
            .map(|c| c.link.conn_id);
        if fresh {
            match (self.state, conn, &self.demand) {
                // Running already (a reload made it on-demand): it subscribed long ago.
                (PluginState::Running | PluginState::Unhealthy, Some(conn), Some(d)) => {
                    self.ctx.bus.demand_live(d, conn);
                    d.touch();
                }
                (PluginState::Stopped | PluginState::Completed, _, _) if !self.held => {
                    self.set_state(PluginState::Idle, "start = \"on-demand\"");
                }
                _ => self.sync_demand(""),
            }
        }
        if conn.is_some() {
            self.schedule_demand_check();
        }
    }

    /// When to look again at an on-demand plugin: the end of its subscription grace, or when it
    /// would have been idle for `idle_stop`.
    fn schedule_demand_check(&mut self) {
        let Some(d) = &self.demand else {
            self.demand_at = None;
            return;
        };
        let mut next = self
            .ready_at
            .map(|r| SUBSCRIBE_GRACE.saturating_sub(r.elapsed()));
        if !self.cfg.idle_stop.is_zero() {
            // Not sooner than 100 ms: a request still being served is looked at again then.
            let left = self
                .cfg
                .idle_stop
                .saturating_sub(d.idle_for())
                .max(Duration::from_millis(100));
            next = Some(next.map_or(left, |n| n.min(left)));
        }
        self.demand_at = next.map(|n| Instant::now() + n);
    }

    /// A message arrived for an on-demand plugin with no process: start it (once; a plugin that
    /// is held, failed, backing off or still stopping is left alone, and started again at its
    /// exit when demand arrived meanwhile).
    async fn on_demand_wake(&mut self) {
        let Some(d) = self.demand.clone() else { return };
        let startable = match self.state {
            PluginState::Idle | PluginState::Completed => true,
            PluginState::Stopped => !self.held,
            _ => false,
        };
        if !startable || self.proc.is_some() {
            return;
        }
        let Some((topic, queued)) = d.pending_demand() else {
            return;
        };
        d.counters()
            .starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Traffic on its topics started it: the host's own rule.
        self.by = Origin::Policy;
        emit(
            &self.ctx,
            &self.name,
            &self.by,
            EventKind::DemandStart {
                topic: topic.clone(),
                queued: queued as u64,
            },
        );
        self.spawn(&format!("demand: message on {topic}")).await;
    }

    /// Ends the subscription grace, and stops an on-demand plugin idle for `idle_stop`.
    fn on_demand_timer(&mut self) {
        self.demand_at = None;
        let Some(d) = self.demand.clone() else { return };
        let Some(p) = self
            .proc
            .as_ref()
            .filter(|p| p.ready && p.phase == StopPhase::None)
        else {
            return;
        };
        let conn = p.conn.as_ref().map(|c| c.link.conn_id);
        if self
            .ready_at
            .is_some_and(|r| r.elapsed() >= SUBSCRIBE_GRACE)
        {
            self.ctx.bus.demand_settle(&d);
            self.ready_at = None;
        }
        let idle_stop = self.cfg.idle_stop;
        let busy = conn.is_some_and(|c| self.ctx.bus.serving(c) > 0);
        if !idle_stop.is_zero()
            && d.idle_for() >= idle_stop
            && !busy
            && matches!(self.state, PluginState::Running | PluginState::Unhealthy)
        {
            self.after_exit = AfterExit::Idle;
            self.begin_stop(&format!(
                "idle for {}",
                humantime::format_duration(idle_stop)
            ));
            return;
        }
        self.schedule_demand_check();
    }

    /// Takes a new config: live settings delivery when possible, else a restart if running.
    async fn reconfigure(&mut self, cfg: PluginConfig, apply: Apply) -> Reconfigured {
        let limits_changed = cfg.limits != self.cfg.limits || cfg.thresholds != self.cfg.thresholds;
        let demand_changed = cfg.start != self.cfg.start
            || cfg.topics != self.cfg.topics
            || cfg.idle_stop != self.cfg.idle_stop
            || cfg.on_demand_queue != self.cfg.on_demand_queue;
        let settings_changed = cfg.settings != self.cfg.settings;
        self.cfg = cfg;
        if limits_changed {
            // cgroup limits take effect at once, on the running process too.
            self.setup_resources();
        }
        if demand_changed {
            self.apply_demand_config().await;
        }
        if apply == Apply::Live && !settings_changed {
            // Only on-demand keys changed (a "tune" of the reload).
            return Reconfigured::Applied;
        }
        let Some(p) = self.proc.as_ref().filter(|p| p.phase == StopPhase::None) else {
            return Reconfigured::Stored;
        };
        if apply == Apply::Store {
            return Reconfigured::Stored;
        }
        if apply == Apply::Live {
            let accepts = p.ready && p.caps.iter().any(|c| c == appfw_proto::caps::CONFIG);
            match (&p.conn, accepts) {
                (Some(conn), true) => {
                    let json =
                        Bytes::from(serde_json::to_vec(&self.cfg.settings).unwrap_or_default());
                    let generation = self
                        .ctx
                        .generation
                        .load(std::sync::atomic::Ordering::Relaxed);
                    match conn
                        .config_update(json, generation, LIVE_UPDATE_TIMEOUT)
                        .await
                    {
                        Ok(()) => {
                            tracing::info!(plugin = %self.name, "settings updated live");
                            return Reconfigured::UpdatedLive;
                        }
                        Err(e) => {
                            tracing::warn!(plugin = %self.name, "live settings update failed ({e}); restarting instead")
                        }
                    }
                }
                _ => {
                    tracing::info!(plugin = %self.name, "plugin does not take live settings; restarting to apply them")
                }
            }
        }
        self.after_exit = AfterExit::Restart;
        self.restart_cause = RestartReason::Config;
        self.begin_stop("config changed");
        Reconfigured::Restarted
    }

    async fn on_action(&mut self, action: Action, reply: oneshot::Sender<PluginStatus>) {
        self.held = action == Action::Stop;
        // An operator's action starts the ladder over.
        self.escalate = false;
        let stopping = self.proc.as_ref().map(|p| p.phase != StopPhase::None);
        match (action, stopping) {
            (Action::Start, Some(false)) => {
                // Already running or starting: settled answers now, starting answers later.
                self.waiters.push(reply);
                let st = self.state;
                self.set_state(st, "");
            }
            (Action::Start, Some(true)) | (Action::Restart, Some(true)) => {
                self.waiters.push(reply);
                self.after_exit = AfterExit::Restart;
                self.restart_cause = RestartReason::Requested;
            }
            (Action::Start, None) => {
                self.waiters.push(reply);
                self.spawn("start requested").await;
            }
            (Action::Stop, Some(_)) => {
                self.waiters.push(reply);
                self.after_exit = AfterExit::Stop;
                self.begin_stop("stop requested");
            }
            (Action::Stop, None) => {
                self.waiters.push(reply);
                self.timer = None;
                let to = match self.state {
                    PluginState::Backoff | PluginState::Idle => PluginState::Stopped,
                    s => s,
                };
                self.set_state(to, "stop requested");
            }
            (Action::Restart, Some(false)) => {
                self.waiters.push(reply);
                self.after_exit = AfterExit::Restart;
                self.restart_cause = RestartReason::Requested;
                self.begin_stop("restart requested");
            }
            (Action::Restart, None) => {
                self.waiters.push(reply);
                if self.last_exit.is_some() {
                    self.restart_cause = RestartReason::Requested;
                    self.count_restart();
                }
                self.spawn("restart requested").await;
            }
        }
    }

    /// What to run. Secret references in env values are resolved here, at each start, so the
    /// resolved values exist only in the child's environment.
    fn spec(&self) -> Result<ProcessSpec, String> {
        let base = &self.ctx.base_dir;
        let program = if self.cfg.command.contains('/') {
            base.join(&self.cfg.command)
        } else {
            PathBuf::from(&self.cfg.command)
        };
        let mut env: Vec<(OsString, OsString)> = Vec::with_capacity(self.cfg.env.len() + 2);
        for (k, v) in &self.cfg.env {
            let value = crate::config::resolve_refs(v).map_err(|e| format!("env {k}: {e}"))?;
            env.push((k.into(), value.into()));
        }
        env.push((
            appfw_proto::ENV_PLUGIN_NAME.into(),
            self.name.to_string().into(),
        ));
        let (index, count) = self
            .cfg
            .instance
            .as_ref()
            .map_or((0, 1), |i| (i.index, i.count));
        env.push((appfw_proto::ENV_INSTANCE.into(), index.to_string().into()));
        env.push((appfw_proto::ENV_INSTANCES.into(), count.to_string().into()));
        let connect = self.cfg.protocol == Protocol::Appfw;
        if connect {
            env.push((
                appfw_proto::ENV_PLUGIN_PROTOCOL.into(),
                format!("{}-{}", appfw_proto::MIN_VERSION, appfw_proto::MAX_VERSION).into(),
            ));
        }
        Ok(ProcessSpec {
            name: self.name.to_string(),
            program,
            args: self.cfg.args.clone(),
            env,
            working_dir: self.cfg.working_dir.as_ref().map(|d| base.join(d)),
            connect,
            quiet: false,
            env_clear: !self.cfg.env_inherit,
            ids: super::users::resolve(self.cfg.user.as_deref(), self.cfg.group.as_deref())?,
            umask: self.cfg.umask_bits(),
            cgroups: self
                .cgroup
                .as_ref()
                .map(|c| c.procs_paths(&self.cfg.limits))
                .unwrap_or_default(),
            limits: ProcessLimits::for_plugin(&self.cfg.limits, self.ctx.cgroups.as_deref()),
        })
    }

    async fn spawn(&mut self, why: &str) {
        // The plugin's name comes from the owner task's span.
        tracing::debug!("spawning: {why}");
        self.timer = None;
        self.after_exit = AfterExit::Policy;
        self.health = None;
        self.set_state(PluginState::Starting, why);
        let spawned = match self.spec() {
            Ok(spec) => self
                .ctx
                .spawner
                .spawn(spec)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let error = e;
                emit(
                    &self.ctx,
                    &self.name,
                    &self.by,
                    EventKind::SpawnFailed {
                        error: error.clone(),
                    },
                );
                self.last_exit = Some(LastExit {
                    status: "not started".into(),
                    reason: error.clone(),
                    failure: true,
                    at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                });
                self.restart_cause = RestartReason::SpawnFailed;
                // Never retry a failing spawn in a hot loop, even on the first failure.
                let min = self.cfg.backoff.initial.max(Duration::from_millis(100));
                self.after_failure(true, Duration::ZERO, &error, min);
                return;
            }
        };
        emit(
            &self.ctx,
            &self.name,
            &self.by,
            EventKind::Spawned {
                pid: child.pid,
                restarts: self.restarts,
                restart_reason: self.restarting.take().map(|r| r.as_str().to_string()),
            },
        );
        self.oom_base = self.cgroup.as_ref().and_then(PluginCgroup::oom_kills);
        self.last_sample = None;
        self.usage = None;
        self.watch.reset();
        // A first figure soon after the start, then one per interval.
        let interval = self.ctx.supervisor.load().sample_interval;
        self.sample_at = Some(Instant::now() + interval.min(Duration::from_secs(1)));
        if !self.warned_root
            && rustix::process::geteuid().is_root()
            && self
                .cfg
                .user
                .as_deref()
                .is_none_or(|u| u == "root" || u == "0")
        {
            // Plugins inherit the host's user until per-plugin users are configured.
            tracing::warn!(plugin = %self.name, pid = child.pid, "plugin {} runs as root", self.name);
            self.warned_root = true;
        }
        let mut child = child;
        let mut capture = Vec::new();
        let log_cfg = self.ctx.logs.config().for_plugin(&self.cfg.logs);
        // Settings changed by a reload: reopen (everything queued was written at the exit).
        if self
            .output
            .as_ref()
            .is_some_and(|o| *o.settings() != log_cfg)
        {
            self.output = None;
        }
        if self.output.is_none() {
            match self.ctx.logs.open(
                &self.name,
                self.ctx.metrics.log_counters(&self.name),
                &log_cfg,
            ) {
                Ok(f) => self.output = Some(f),
                Err(e) => tracing::error!(plugin = %self.name, "cannot open output file: {e}"),
            }
        }
        for (stream, pipe) in [
            (Kind::Stdout, child.stdout.take().map(OwnedPipe::Out)),
            (Kind::Stderr, child.stderr.take().map(OwnedPipe::Err)),
        ] {
            let (Some(pipe), Some(out)) = (pipe, self.output.clone()) else {
                continue;
            };
            match pipe.into_async() {
                Ok(r) => capture.push(tokio::spawn(tracing::Instrument::in_current_span(
                    capture::capture(
                        out,
                        stream,
                        r,
                        self.ctx.metrics.log_counters(&self.name),
                        Arc::clone(&self.tail),
                    ),
                ))),
                Err(e) => tracing::error!(plugin = %self.name, "cannot capture output: {e}"),
            }
        }
        let mut proc = Proc {
            probe_tasks: Vec::new(),
            probe_rx: None,
            probe_cancel: self.ctx.cancel.child_token(),
            conn: None,
            conn_rx: None,
            capture,
            phase: StopPhase::None,
            kill_reason: None,
            stop_reason: None,
            kill_cause: None,
            caps: Vec::new(),
            conn_lost: None,
            ready: false,
            child,
        };
        if let Some(sock) = proc.child.socket.take() {
            let (tx, rx) = mpsc::channel(16);
            let sup = self.ctx.supervisor.load();
            let params = ConnParams {
                plugin: Arc::clone(&self.name),
                handshake_timeout: sup.handshake_timeout,
                heartbeat_interval: self
                    .cfg
                    .heartbeat_interval
                    .unwrap_or(sup.heartbeat_interval),
                heartbeat_timeout: self.cfg.heartbeat_timeout.unwrap_or(sup.heartbeat_timeout),
                max_frame_size: usize::try_from(sup.max_frame_size).unwrap_or(usize::MAX),
                settings_json: Bytes::from(
                    serde_json::to_vec(&self.cfg.settings).unwrap_or_default(),
                ),
                metrics: Arc::clone(&self.ctx.metrics),
                log: self.output.clone(),
            };
            match conn::start(params, sock, self.ctx.bus.clone(), tx, &self.ctx.cancel) {
                Ok(c) => {
                    proc.conn = Some(c);
                    proc.conn_rx = Some(rx);
                }
                Err(e) => {
                    tracing::error!(plugin = %self.name, "cannot set up the plugin connection: {e}");
                    proc.kill_reason = Some(format!("connection set-up failed: {e}"));
                    let _ = proc.child.signal_group(Signal::KILL);
                }
            }
            self.proc = Some(proc);
        } else {
            self.proc = Some(proc);
            self.start_probes();
            self.set_state(PluginState::Running, "process started");
        }
    }

    fn on_conn_event(&mut self, ev: ConnEvent) {
        let Some(p) = self.proc.as_mut() else { return };
        match ev {
            ConnEvent::Ready {
                version,
                capabilities,
            } => {
                p.ready = true;
                p.caps = capabilities;
                if p.phase == StopPhase::None {
                    if let Some(d) = &self.demand {
                        // The idle clock starts at the handshake; the plugin subscribes now.
                        d.touch();
                        self.ready_at = Some(Instant::now());
                        self.schedule_demand_check();
                    }
                    self.start_probes();
                    self.set_state(
                        PluginState::Running,
                        &format!("handshake complete (protocol v{version})"),
                    );
                }
            }
            ConnEvent::Refused { reason } => {
                emit(
                    &self.ctx,
                    &self.name,
                    &self.by,
                    EventKind::HandshakeRefused {
                        reason: reason.clone(),
                    },
                );
                // The plugin got the refusal and should exit by itself; it is terminated if not.
                p.kill_reason = Some(format!("handshake refused: {reason}"));
                p.kill_cause = Some(RestartReason::Protocol);
                p.conn_lost = Some(reason);
                self.timer = Some(Instant::now() + CONN_LOST_GRACE);
            }
            ConnEvent::Fault { code, message } => {
                emit(
                    &self.ctx,
                    &self.name,
                    &self.by,
                    EventKind::ProtocolFault {
                        code: code.to_string(),
                        message: message.clone(),
                    },
                );
                self.terminate(
                    format!("protocol fault: {code}: {message}"),
                    RestartReason::Protocol,
                    Signal::TERM,
                );
            }
            ConnEvent::HeartbeatMissed { silent, timeout } => {
                emit(
                    &self.ctx,
                    &self.name,
                    &self.by,
                    EventKind::HeartbeatMissed {
                        silent_ms: silent.as_millis() as u64,
                        timeout_ms: timeout.as_millis() as u64,
                    },
                );
                self.set_state(PluginState::Unhealthy, "no heartbeat");
                // A hung event loop cannot run a SIGTERM handler: kill it.
                self.terminate(
                    format!("hung: no heartbeat answer for {} ms", silent.as_millis()),
                    RestartReason::Hang,
                    Signal::KILL,
                );
            }
            ConnEvent::Closed { reason } => {
                if p.phase == StopPhase::None {
                    // Usually the process just died and its exit is about to be reaped; if it
                    // is still there after a moment, it lives on without a connection.
                    p.conn_lost = Some(reason);
                    self.timer = Some(Instant::now() + CONN_LOST_GRACE);
                }
            }
            ConnEvent::Goodbye { reason } => {
                tracing::debug!(plugin = %self.name, "plugin said goodbye: {reason}");
            }
            ConnEvent::Health(report) => {
                let unhealthy = report.status == HealthStatus::Unhealthy as i32;
                let msg = report.message.clone();
                self.health = Some(report);
                match (self.state, unhealthy) {
                    (PluginState::Running, true) => self.set_state(
                        PluginState::Unhealthy,
                        &format!("plugin reports unhealthy: {msg}"),
                    ),
                    (PluginState::Unhealthy, false) if self.healthy_enough() => {
                        self.set_state(PluginState::Running, "plugin reports healthy")
                    }
                    _ => {}
                }
            }
        }
    }

    /// The configured stop signal.
    fn stop_signal(&self) -> Signal {
        Signal::from_named_raw(self.cfg.stop_signal_number()).unwrap_or(Signal::TERM)
    }

    /// Starts the probes of a process that just became running.
    fn start_probes(&mut self) {
        let Some(p) = self.proc.as_mut() else { return };
        if self.cfg.probes.is_empty() || !p.probe_tasks.is_empty() {
            return;
        }
        let (tx, rx) = mpsc::channel(16);
        p.probe_tasks = probe::start(
            &self.name,
            &self.cfg.probes,
            &self.ctx.spawner,
            &self.ctx.base_dir,
            &tx,
            &p.probe_cancel,
        );
        p.probe_rx = Some(rx);
        self.probes = self
            .cfg
            .probes
            .iter()
            .map(|c| ProbeState {
                name: c.display_name(),
                passing: None,
                ok_streak: 0,
                fail_streak: 0,
                message: "not probed yet".into(),
                since: SystemTime::now(),
            })
            .collect();
    }

    /// Applies a probe result to the thresholds; a probe that turns failing marks the plugin
    /// unhealthy (or restarts it, for `restart = true`), one that turns passing clears that.
    fn on_probe(&mut self, r: ProbeResult) {
        let (Some(cfg), Some(st)) = (
            self.cfg.probes.get(r.index).cloned(),
            self.probes.get_mut(r.index),
        ) else {
            return;
        };
        st.message = r.message.clone();
        let changed = if r.ok {
            st.ok_streak += 1;
            st.fail_streak = 0;
            (st.passing != Some(true) && st.ok_streak >= cfg.success_threshold).then_some(true)
        } else {
            st.fail_streak += 1;
            st.ok_streak = 0;
            (st.passing != Some(false) && st.fail_streak >= cfg.failure_threshold).then_some(false)
        };
        let Some(passing) = changed else { return };
        st.passing = Some(passing);
        st.since = SystemTime::now();
        let name = st.name.clone();
        emit(
            &self.ctx,
            &self.name,
            &self.by,
            EventKind::ProbeChanged {
                probe: name.clone(),
                passing,
                message: r.message.clone(),
            },
        );
        let stopping = self
            .proc
            .as_ref()
            .is_none_or(|p| p.phase != StopPhase::None);
        if stopping {
            return;
        }
        if !passing && cfg.restart {
            // A failed liveness probe is a failure: the restart policy and backoff apply.
            self.terminate(
                format!("probe {name} failed: {}", r.message),
                RestartReason::Probe,
                Signal::TERM,
            );
        } else if !passing && self.state == PluginState::Running {
            self.set_state(
                PluginState::Unhealthy,
                &format!("probe {name} failing: {}", r.message),
            );
        } else if passing && self.state == PluginState::Unhealthy && self.healthy_enough() {
            self.set_state(PluginState::Running, "probes passing");
        }
    }

    /// No failing probe and no unhealthy self-report.
    fn healthy_enough(&self) -> bool {
        self.probes.iter().all(|p| p.passing != Some(false))
            && self
                .health
                .as_ref()
                .is_none_or(|h| h.status != HealthStatus::Unhealthy as i32)
    }

    /// Ends the process because of a fault: the exit counts as a failure.
    fn terminate(&mut self, reason: String, cause: RestartReason, sig: Signal) {
        self.by = Origin::Policy;
        let kill_after = self.cfg.kill_after;
        let Some(p) = self.proc.as_mut() else { return };
        if p.kill_reason.is_none() {
            p.kill_reason = Some(reason);
            p.kill_cause = Some(cause);
        }
        if matches!(p.phase, StopPhase::Kill) || (p.phase == StopPhase::Term && sig == Signal::TERM)
        {
            return;
        }
        let _ = p.child.signal_group(sig);
        p.phase = if sig == Signal::KILL {
            StopPhase::Kill
        } else {
            StopPhase::Term
        };
        self.timer = Some(
            Instant::now()
                + if sig == Signal::KILL {
                    Duration::from_secs(5)
                } else {
                    kill_after
                },
        );
    }

    /// Graceful stop: SHUTDOWN frame (protocol plugins) or SIGTERM, then escalation by timer.
    fn begin_stop(&mut self, reason: &str) {
        let (grace, kill_after) = (self.cfg.stop_grace, self.cfg.kill_after);
        let stop_sig = self.stop_signal();
        let Some(p) = self.proc.as_mut() else { return };
        if p.phase != StopPhase::None {
            return;
        }
        p.stop_reason = Some(reason.to_string());
        let by_frame = p.ready && p.conn.as_ref().is_some_and(|c| !c.link.outbox.is_closed());
        if by_frame {
            let mut f = Frame::control(
                FrameType::Shutdown,
                &pb::Shutdown {
                    grace_ms: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX),
                    reason: reason.to_string(),
                },
            );
            f.header.sender = appfw_proto::Str::from_static(crate::bus::HOST_SENDER);
            let sent = p
                .conn
                .as_ref()
                .is_some_and(|c| c.link.outbox.try_send(f).is_ok());
            p.phase = if sent {
                StopPhase::Shutdown
            } else {
                StopPhase::Term
            };
            if !sent {
                let _ = p.child.signal_group(stop_sig);
            }
            self.timer = Some(Instant::now() + if sent { grace } else { kill_after });
        } else {
            // `protocol = "none"`: the stop signal gets the stop grace. A protocol plugin that
            // has not finished its handshake cannot take a SHUTDOWN frame: SIGTERM, kill_after.
            let wait = if self.cfg.protocol == Protocol::None {
                grace
            } else {
                kill_after
            };
            let _ = p.child.signal_group(stop_sig);
            p.phase = StopPhase::Term;
            self.timer = Some(Instant::now() + wait);
        }
        self.set_state(PluginState::Stopping, reason);
    }

    async fn on_timer(&mut self) {
        self.timer = None;
        let stop_sig = self.stop_signal();
        let kill_after = self.cfg.kill_after;
        let name = Arc::clone(&self.name);
        match self.proc.as_mut() {
            None => {
                if self.state == PluginState::Backoff {
                    self.count_restart();
                    self.spawn("backoff elapsed").await;
                }
            }
            Some(p) if p.phase == StopPhase::None => {
                if let Some(reason) = p.conn_lost.take() {
                    self.terminate(
                        format!("connection lost: {reason}"),
                        RestartReason::ConnectionLost,
                        Signal::TERM,
                    );
                }
            }
            Some(p) => {
                let (sig, next, wait) = match p.phase {
                    StopPhase::Shutdown => (stop_sig, StopPhase::Term, kill_after),
                    StopPhase::Term | StopPhase::None => {
                        (Signal::KILL, StopPhase::Kill, Duration::from_secs(5))
                    }
                    StopPhase::Kill => {
                        tracing::error!(plugin = %name, pid = p.child.pid, "still alive 5 s after SIGKILL (uninterruptible sleep?)");
                        (Signal::KILL, StopPhase::Kill, Duration::from_secs(5))
                    }
                };
                let _ = p.child.signal_group(sig);
                p.phase = next;
                self.timer = Some(Instant::now() + wait);
                let signal = if sig == Signal::KILL {
                    "SIGKILL"
                } else {
                    "SIGTERM"
                };
                emit(
                    &self.ctx,
                    &self.name,
                    &self.by,
                    EventKind::StopEscalated {
                        signal: signal.into(),
                    },
                );
            }
        }
    }

    /// Returns true when the task should end.
    async fn on_exit(&mut self, status: Option<ExitStatus>) -> bool {
        let Some(p) = self.proc.take() else {
            return false;
        };
        self.timer = None;
        self.sample_at = None;
        self.demand_at = None;
        self.ready_at = None;
        // Anything the plugin left behind in its process group goes with it, and with the
        // cgroup, everything else it started (frozen, then killed), before any restart.
        let _ = p.child.signal_group(Signal::KILL);
        let killed = match &self.cgroup {
            Some(cg) => cg.sweep(Duration::from_secs(2)).await,
            None => super::orphans::sweep(&self.name, p.child.pid).await,
        };
        if !killed.is_empty() {
            tracing::warn!(plugin = %self.name, "killed what the plugin left running: {}", killed.join(", "));
        }
        // An OOM kill is told apart from a plain SIGKILL by the cgroup's counter.
        let oom = status
            .is_some_and(|s| std::os::unix::process::ExitStatusExt::signal(&s) == Some(9))
            && self
                .cgroup
                .as_ref()
                .and_then(PluginCgroup::oom_kills)
                .is_some_and(|n| n > self.oom_base.unwrap_or(0));
        let mut p = p;
        if oom && p.kill_reason.is_none() {
            p.kill_reason = Some(format!(
                "oom: killed by the kernel's OOM killer at limits.memory ({})",
                self.cfg
                    .limits
                    .memory
                    .map_or_else(|| "no limit".into(), crate::config::format_size)
            ));
            p.kill_cause = Some(RestartReason::Oom);
        }
        p.probe_cancel.cancel();
        for t in p.probe_tasks {
            t.abort();
            let _ = t.await;
        }
        if let Some(conn) = p.conn {
            conn.close(&self.ctx.bus).await;
        }
        for mut t in p.capture {
            // The pipes close once the group is gone. A descendant that left the group may still
            // hold them: stop reading after a bound rather than leave a task behind.
            tokio::select! {
                _ = &mut t => {}
                () = tokio::time::sleep(Duration::from_secs(2)) => {
                    t.abort();
                    let _ = t.await;
                    tracing::warn!(plugin = %self.name, "output pipe still open 2 s after exit (a descendant left the process group?); stopped capturing it");
                }
            }
        }
        // What the capture tasks queued is written before the exit is reported, so the file holds
        // the process's last words when `exited` is seen. The file stays open while the plugin
        // restarts (reopening it reads its last records: a respawn should not pay that) and is
        // closed below once the plugin stays down.
        if let Some(out) = self.output.as_ref()
            && !out.sync(Duration::from_secs(5)).await
        {
            tracing::warn!(plugin = %self.name, "log writer did not catch up within 5 s");
        }
        let uptime = p.child.started.elapsed();
        let status_text = status
            .as_ref()
            .map_or_else(|| "unknown".to_string(), describe);
        let requested = self.after_exit != AfterExit::Policy;
        if !requested {
            self.by = Origin::Policy;
        }
        let success = status.is_some_and(|s| {
            s.code()
                .is_some_and(|c| self.cfg.success_exit_codes.contains(&c))
        });
        // Dying before the start grace is a failed start, whatever the exit code.
        let early = !requested && p.kill_reason.is_none() && uptime < self.cfg.start_grace;
        let failure = p.kill_reason.is_some() || early || (!requested && !success);
        let reason = match (&p.kill_reason, requested) {
            (None, false) if early => format!(
                "failed start: exited after {} ms, before start_grace ({})",
                uptime.as_millis(),
                humantime::format_duration(self.cfg.start_grace)
            ),
            (Some(r), _) => r.clone(),
            (None, true) => p
                .stop_reason
                .clone()
                .unwrap_or_else(|| match self.after_exit {
                    AfterExit::Restart => "restart requested".into(),
                    AfterExit::Quit => self.quit_reason.into(),
                    _ => "stop requested".into(),
                }),
            (None, false) => match status
                .as_ref()
                .and_then(std::os::unix::process::ExitStatusExt::signal)
            {
                Some(sig) => format!(
                    "killed by {} (not sent by appfw)",
                    super::process::signal_name(sig)
                ),
                None => "exited on its own".into(),
            },
        };
        emit(
            &self.ctx,
            &self.name,
            &self.by,
            EventKind::Exited {
                pid: p.child.pid,
                status: status_text.clone(),
                failure,
                reason: reason.clone(),
                last_output: self.tail.take(),
                usage: self.usage.take(),
                killed,
            },
        );
        self.last_exit = Some(LastExit {
            status: status_text,
            reason: reason.clone(),
            failure,
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        });
        match std::mem::replace(&mut self.after_exit, AfterExit::Policy) {
            AfterExit::Quit => {
                self.set_state(PluginState::Stopped, self.quit_reason);
                return true;
            }
            AfterExit::Stop => self.set_state(PluginState::Stopped, "stopped by request"),
            AfterExit::Idle => self.set_state(PluginState::Idle, &reason),
            AfterExit::Restart => {
                self.count_restart();
                self.spawn("restart requested").await;
            }
            AfterExit::Policy => {
                self.restart_cause = p.kill_cause.unwrap_or(if success {
                    RestartReason::Exit
                } else {
                    RestartReason::Crash
                });
                self.after_failure(failure, uptime, &reason, Duration::ZERO);
                if self.timer.is_none() && self.state == PluginState::Backoff {
                    self.count_restart();
                    self.spawn(&format!("restarting after {reason}")).await;
                }
            }
        }
        // Demand that arrived while it was stopping starts it again.
        if self.state == PluginState::Idle {
            self.on_demand_wake().await;
        }
        // Nothing of a plugin that stays down stays open in the host.
        if self.proc.is_none() && self.state != PluginState::Backoff {
            self.output = None;
        }
        false
    }

    fn count_restart(&mut self) {
        self.restarts += 1;
        self.restarting = Some(self.restart_cause);
        self.ctx.metrics.restarted(&self.name, self.restart_cause);
        // Dependants that follow our restarts hear of it (never blocks; a full queue only
        // happens in a restart storm, which the intensity limit stops anyway).
        let escalated = std::mem::take(&mut self.escalate);
        let _ = self
            .ctx
            .restarted
            .try_send((Arc::clone(&self.name), escalated));
    }

    /// Applies the restart policy after the process ended (or could not start).
    fn after_failure(
        &mut self,
        failure: bool,
        uptime: Duration,
        reason: &str,
        min_delay: Duration,
    ) {
        let restart = match self.cfg.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failure,
            RestartPolicy::Never => false,
        };
        if !restart {
            // An on-demand plugin that finished its work waits for the next demand.
            let to = if failure {
                PluginState::Failed
            } else if self.cfg.on_demand() {
                PluginState::Idle
            } else {
                PluginState::Completed
            };
            self.set_state(to, reason);
            return;
        }
        if uptime >= self.cfg.backoff.reset_after {
            self.failures = 0;
        }
        // Restart intensity: too many automatic restarts in the window and the plugin stays down.
        let b = &self.cfg.backoff;
        let now = std::time::Instant::now();
        self.recent_restarts
            .retain(|t| now.duration_since(*t) < b.within);
        if self.recent_restarts.len() >= b.max_restarts as usize {
            let (n, within) = (self.recent_restarts.len() as u32, b.within);
            self.recent_restarts.clear();
            emit(
                &self.ctx,
                &self.name,
                &self.by,
                EventKind::GaveUp {
                    restarts: n,
                    within_ms: within.as_millis() as u64,
                    reason: reason.to_string(),
                },
            );
            self.set_state(
                PluginState::Failed,
                &format!(
                    "gave up: {n} restarts within {} (last: {reason})",
                    humantime::format_duration(within)
                ),
            );
            return;
        }
        self.recent_restarts.push_back(now);
        self.failures = self.failures.saturating_add(1);
        let delay = backoff_delay(&self.cfg.backoff, self.failures, fastrand::f64()).max(min_delay);
        // The recovery ladder: retry at once, then restart after a backoff, then restart the
        // dependants too; the intensity limit above is its last step (gave_up).
        let after = self.cfg.backoff.restart_dependants_after;
        let step = if after > 0 && self.failures >= after {
            RecoveryStep::RestartDependants
        } else if self.failures <= 1 {
            RecoveryStep::Retry
        } else {
            RecoveryStep::Restart
        };
        self.escalate = step == RecoveryStep::RestartDependants;
        self.set_state(PluginState::Backoff, reason);
        self.timer = (!delay.is_zero()).then(|| Instant::now() + delay);
        emit(
            &self.ctx,
            &self.name,
            &self.by,
            EventKind::RestartScheduled {
                step,
                delay_ms: delay.as_millis() as u64,
                attempt: self.failures,
            },
        );
    }
}

/// Emits a plugin's event with who or what caused it (a free function, so that it borrows only
/// the fields it reads while the process is borrowed mutably).
fn emit(ctx: &Ctx, name: &str, by: &Origin, kind: EventKind) {
    ctx.events.emit_by(Some(name), Some(by), kind);
}

/// The word for a reported health status.
fn health_word(status: i32) -> &'static str {
    match HealthStatus::try_from(status) {
        Ok(HealthStatus::Healthy) => "healthy",
        Ok(HealthStatus::Degraded) => "degraded",
        Ok(HealthStatus::Unhealthy) => "unhealthy",
        _ => "unknown",
    }
}

enum OwnedPipe {
    Out(std::process::ChildStdout),
    Err(std::process::ChildStderr),
}

impl OwnedPipe {
    fn into_async(self) -> std::io::Result<Box<dyn tokio::io::AsyncRead + Unpin + Send>> {
        Ok(match self {
            Self::Out(p) => Box::new(tokio::process::ChildStdout::from_std(p)?),
            Self::Err(p) => Box::new(tokio::process::ChildStderr::from_std(p)?),
        })
    }
}
