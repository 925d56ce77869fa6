//! Supervision: one owner task per plugin (see [`actor`]), the spawner thread and the reaper
//! (see [`process`]), the host side of plugin connections, and output capture.

mod actor;
pub(crate) mod conn;
mod orphans;
mod probe;
pub mod process;
mod users;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::config::{BackoffConfig, PluginConfig, Protocol, SupervisorConfig};
use crate::events::{Events, Origin};
use actor::{Actor, Command};
pub use process::Spawner;

/// The states of a plugin (the shared vocabulary of the API, CLI and console).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// On-demand plugin not started yet.
    Idle,
    /// Spawned, handshake pending.
    Starting,
    /// Up.
    Running,
    /// Running but failing checks or heartbeats.
    Unhealthy,
    /// Being stopped.
    Stopping,
    /// Stopped by request (or never started).
    Stopped,
    /// Exited, waiting to restart.
    Backoff,
    /// A one-shot plugin exited successfully.
    Completed,
    /// Gave up; needs an operator.
    Failed,
}

impl PluginState {
    /// All states, in lifecycle order.
    pub const ALL: [Self; 9] = [
        Self::Idle,
        Self::Starting,
        Self::Running,
        Self::Unhealthy,
        Self::Stopping,
        Self::Stopped,
        Self::Backoff,
        Self::Completed,
        Self::Failed,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Unhealthy => "unhealthy",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Backoff => "backoff",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// Not in the middle of a transition: an action waiting for its outcome can be answered.
    pub fn is_settled(self) -> bool {
        !matches!(self, Self::Starting | Self::Stopping)
    }
}

impl fmt::Display for PluginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the last process of a plugin ended.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct LastExit {
    /// `exit code N` or `signal N (NAME)`.
    pub status: String,
    /// Why it ended.
    pub reason: String,
    /// Whether it counted as a failure.
    pub failure: bool,
    /// When, RFC 3339.
    pub at: String,
}

/// A snapshot of one plugin, as the API returns it.
#[derive(Clone, Debug, Serialize)]
pub struct PluginStatus {
    /// Name.
    pub name: String,
    /// State.
    pub state: PluginState,
    /// Since when it is in that state, RFC 3339.
    pub since: String,
    /// pid of the current process.
    pub pid: Option<u32>,
    /// When the current process started, RFC 3339.
    pub started_at: Option<String>,
    /// Seconds since the current process started.
    pub uptime_secs: Option<f64>,
    /// Restarts since the host started.
    pub restarts: u64,
    /// Protocol kind.
    pub protocol: Protocol,
    /// How the previous process ended.
    pub last_exit: Option<LastExit>,
    /// The plugin's own health report (`healthy`, `degraded`, `unhealthy`).
    pub health: Option<String>,
    /// Message of the health report.
    pub health_message: Option<String>,
    /// Time left before a scheduled restart.
    pub next_restart_in_ms: Option<u64>,
    /// Probe results (`probe:NAME`) and the plugin's own named checks (`custom:NAME`).
    pub checks: Vec<CheckStatus>,
    /// Stopped on purpose by an operator (and not started since): readiness does not wait
    /// for it.
    pub held: bool,
    /// The last sampled resource figures of the current process.
    pub usage: Option<crate::resources::Usage>,
    /// Which copy this is, for a plugin with `instances > 1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<crate::config::Instance>,
    /// For an on-demand plugin: its topics, what waits for it, its cold starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<crate::bus::DemandStatus>,
}

/// One named health check of a plugin.
#[derive(Clone, Debug, Serialize)]
pub struct CheckStatus {
    /// `probe:NAME` or `custom:NAME`.
    pub name: String,
    /// `healthy`, `degraded`, `unhealthy`, or `unknown` (not decided yet).
    pub status: &'static str,
    /// What was seen.
    pub message: String,
    /// Since when it has this status, RFC 3339.
    pub since: Option<String>,
}

/// An operator action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Start (no-op if running).
    Start,
    /// Stop and stay stopped.
    Stop,
    /// Stop then start.
    Restart,
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "start" => Ok(Self::Start),
            "stop" => Ok(Self::Stop),
            "restart" => Ok(Self::Restart),
            other => Err(format!(
                "unknown action {other:?}; expected start, stop or restart"
            )),
        }
    }
}

/// Why a supervisor call failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// No plugin of that name.
    #[error("no plugin named {0:?}")]
    UnknownPlugin(String),
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
}

/// The restart delay after `failures` consecutive failures (1-based): the first restart is
/// immediate, then `initial * multiplier^(failures-2)`, capped at `max`, spread by ±`jitter`.
/// `unit` is a uniform random number in [0, 1).
pub fn backoff_delay(b: &BackoffConfig, failures: u32, unit: f64) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let exp = b
        .multiplier
        .powi(i32::try_from(failures - 2).unwrap_or(i32::MAX));
    let base = (b.initial.as_secs_f64() * exp).min(b.max.as_secs_f64());
    let spread = 1.0 + b.jitter * (2.0 * unit - 1.0);
    Duration::from_secs_f64((base * spread).clamp(0.0, b.max.as_secs_f64()))
}

/// What every owner task shares.
pub(crate) struct Ctx {
    pub events: Events,
    pub bus: Bus,
    pub spawner: Spawner,
    pub logs: Arc<crate::logs::Logs>,
    pub base_dir: PathBuf,
    /// Swapped by a reload; read at each plugin start.
    pub supervisor: arc_swap::ArcSwap<SupervisorConfig>,
    /// Generation of the loaded config, sent with live settings updates.
    pub generation: std::sync::atomic::AtomicU64,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Names of plugins that just restarted, for `restart_with_dependencies`, and whether the
    /// recovery ladder escalated to restarting all their dependants.
    pub restarted: mpsc::Sender<(Arc<str>, bool)>,
    /// This host instance's cgroups, when any hierarchy is writable.
    pub cgroups: Option<Arc<crate::resources::CgroupRoot>>,
    pub cancel: CancellationToken,
}

/// What a plugin's owner task did with a new config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reconfigured {
    /// Settings delivered live; the process kept running.
    UpdatedLive,
    /// Restarted with the new config.
    Restarted,
    /// Stored; it applies at the next start (the plugin is not running).
    Stored,
    /// On-demand keys applied to the running plugin, without a restart.
    Applied,
}

/// How a plugin takes a new config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Apply {
    /// Only its settings changed: deliver them live if it can take them, else restart.
    Live,
    /// Restart it (if running) with the new config.
    Restart,
    /// Keep the new config for its next start; leave the process alone.
    Store,
}

#[derive(Default)]
struct Members {
    /// Instance names in start order.
    order: Vec<Arc<str>>,
    actors: HashMap<Arc<str>, mpsc::Sender<Command>>,
    /// Each config entry's instance names (`[name]`, or `name.0` ... with `instances > 1`) and
    /// its config as last given.
    groups: HashMap<Arc<str>, (Vec<Arc<str>>, PluginConfig)>,
}

/// Handle to every plugin's owner task. Plugins can be added and removed while it runs
/// (config reloads); the membership lock is never held across an await.
///
/// Names are those of the config (`web`), which stand for all of a plugin's copies, or of one
/// copy (`web.2`); an unreplicated plugin's one copy has the config name.
pub struct Supervisor {
    ctx: Arc<Ctx>,
    members: RwLock<Members>,
    tasks: TaskTracker,
}

impl Supervisor {
    pub(crate) fn new(ctx: Arc<Ctx>, plugins: &[PluginConfig]) -> Self {
        let sup = Self {
            ctx,
            members: RwLock::new(Members::default()),
            tasks: TaskTracker::new(),
        };
        for cfg in plugins {
            sup.add(cfg.clone());
        }
        sup
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Members> {
        self.members.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Members> {
        self.members.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates the owner tasks of a new plugin's copies (not started). Returns false if the
    /// name exists.
    pub(crate) fn add(&self, cfg: PluginConfig) -> bool {
        let group: Arc<str> = Arc::from(cfg.name.as_str());
        let mut m = self.write();
        if m.groups.contains_key(&group) {
            return false;
        }
        let names = self.spawn_instances(&mut m, &cfg.instance_configs());
        m.order.extend(names.iter().cloned());
        m.groups.insert(group, (names, cfg));
        true
    }

    /// Starts the owner tasks of `configs` (copies of one plugin); returns their names.
    fn spawn_instances(&self, m: &mut Members, configs: &[PluginConfig]) -> Vec<Arc<str>> {
        configs
            .iter()
            .map(|c| {
                let name: Arc<str> = Arc::from(c.name.as_str());
                let (tx, rx) = mpsc::channel(64);
                // Every host record of the owner task (and the tasks it starts) names the plugin.
                let span = tracing::error_span!("plugin", plugin = %name);
                self.tasks.spawn(tracing::Instrument::instrument(
                    Actor::new(c.clone(), Arc::clone(&self.ctx), rx).run(),
                    span,
                ));
                m.actors.insert(Arc::clone(&name), tx);
                name
            })
            .collect()
    }

    /// Sets the start order from config names (names not known are ignored; members not named
    /// keep their place at the end).
    pub(crate) fn set_order(&self, names: &[String]) {
        let mut m = self.write();
        let mut order: Vec<Arc<str>> = names
            .iter()
            .filter_map(|n| m.groups.get(n.as_str()))
            .flat_map(|(instances, _)| instances.iter().cloned())
            .collect();
        for n in &m.order {
            if !order.contains(n) {
                order.push(Arc::clone(n));
            }
        }
        m.order = order;
    }

    /// The copies `name` stands for: all of a config entry's, or the one named.
    fn resolve(&self, name: &str) -> Result<Vec<Arc<str>>, SupervisorError> {
        let m = self.read();
        if let Some((instances, _)) = m.groups.get(name) {
            return Ok(instances.clone());
        }
        m.actors
            .get_key_value(name)
            .map(|(k, _)| vec![Arc::clone(k)])
            .ok_or_else(|| SupervisorError::UnknownPlugin(name.to_string()))
    }

    /// Whether `name` is a config entry with several copies.
    pub fn is_replicated(&self, name: &str) -> bool {
        self.read()
            .groups
            .get(name)
            .is_some_and(|(_, cfg)| cfg.instances > 1)
    }

    /// Stops one copy for good and forgets it.
    async fn quit_instance(&self, name: &Arc<str>, by: Origin) {
        if let Ok(a) = self.actor(name) {
            let (tx, rx) = oneshot::channel();
            if a.send(Command::Quit("removed from the config", by, tx))
                .await
                .is_ok()
            {
                let _ = rx.await;
            }
        }
        let mut m = self.write();
        m.actors.remove(name);
        m.order.retain(|n| n != name);
        drop(m);
        self.ctx.metrics.forget_series(name);
    }

    /// Stops a plugin (every copy, last first) for good and forgets it.
    pub(crate) async fn remove(&self, name: &str, by: Origin) -> Result<(), SupervisorError> {
        let instances = self.resolve(name)?;
        for n in instances.iter().rev() {
            self.quit_instance(n, by.clone()).await;
        }
        self.write().groups.remove(name);
        Ok(())
    }

    /// Hands a plugin its new config. Copies added by a higher `instances` start (with
    /// `autostart`), copies beyond a lower one are stopped and removed; the others restart one
    /// at a time, each waiting for the previous to be healthy again (a copy that is not within
    /// `roll_wait` halts the roll: the rest keep running and take the config at their next
    /// start).
    pub(crate) async fn reconfigure(
        &self,
        name: &str,
        cfg: PluginConfig,
        apply: Apply,
        by: Origin,
        roll_wait: Duration,
    ) -> Result<(), SupervisorError> {
        let (old_names, old_cfg) = self
            .read()
            .groups
            .get(name)
            .cloned()
            .ok_or_else(|| SupervisorError::UnknownPlugin(name.to_string()))?;
        let configs = cfg.instance_configs();
        let new_names: Vec<Arc<str>> = configs.iter().map(|c| Arc::from(c.name.as_str())).collect();
        // Copies that go (scaling down, or between 1 and more copies, which renames them).
        for n in old_names.iter().rev().filter(|n| !new_names.contains(n)) {
            self.quit_instance(n, by.clone()).await;
        }
        let mut kept = Vec::new();
        let mut added = Vec::new();
        for c in &configs {
            if old_names.iter().any(|n| **n == *c.name) {
                kept.push(c.clone());
            } else {
                added.push(c.clone());
            }
        }
        {
            let mut m = self.write();
            let names = self.spawn_instances(&mut m, &added);
            // New copies go right after their siblings in the start order.
            let at = m
                .order
                .iter()
                .rposition(|n| kept.iter().any(|c| **n == *c.name))
                .map_or(m.order.len(), |i| i + 1);
            for (k, n) in names.into_iter().enumerate() {
                m.order.insert(at + k, n);
            }
            m.groups.insert(Arc::from(name), (new_names, cfg.clone()));
        }
        // A change of `instances` alone leaves the copies that stay alone.
        let same_but_count = PluginConfig {
            instances: cfg.instances,
            ..old_cfg
        } == cfg;
        let mut rolling = apply == Apply::Restart && !same_but_count;
        for c in kept {
            let copy = Arc::from(c.name.as_str());
            let step = match apply {
                Apply::Live => Apply::Live,
                Apply::Restart if rolling => Apply::Restart,
                _ => Apply::Store,
            };
            let outcome = self
                .reconfigure_instance(&copy, c, step, by.clone())
                .await?;
            if outcome == Reconfigured::Restarted && configs.len() > 1 {
                let deadline = tokio::time::Instant::now() + roll_wait;
                if let Err(st) = self
                    .wait_instance(&copy, Condition::Healthy, deadline)
                    .await
                {
                    tracing::error!(
                        plugin = %copy,
                        "rolling restart of {name} halted: {copy} is {st}, not healthy within {roll_wait:?}; the other copies keep running and take the new config at their next start"
                    );
                    rolling = false;
                }
            }
        }
        if cfg.autostart {
            for c in &added {
                let _ = self
                    .act_instance(&c.name, Action::Start, Duration::ZERO, by.clone())
                    .await;
            }
        }
        Ok(())
    }

    async fn reconfigure_instance(
        &self,
        name: &str,
        cfg: PluginConfig,
        apply: Apply,
        by: Origin,
    ) -> Result<Reconfigured, SupervisorError> {
        let (tx, rx) = oneshot::channel();
        self.actor(name)?
            .send(Command::Reconfigure(Box::new(cfg), apply, by, tx))
            .await
            .map_err(|_| SupervisorError::ShuttingDown)?;
        rx.await.map_err(|_| SupervisorError::ShuttingDown)
    }

    /// Every copy's name, in start order.
    pub fn names(&self) -> Vec<String> {
        self.read().order.iter().map(|n| n.to_string()).collect()
    }

    fn actor(&self, name: &str) -> Result<mpsc::Sender<Command>, SupervisorError> {
        self.read()
            .actors
            .get(name)
            .cloned()
            .ok_or_else(|| SupervisorError::UnknownPlugin(name.to_string()))
    }

    /// The status of one copy (an unreplicated plugin's name is its copy's).
    pub async fn status(&self, name: &str) -> Result<PluginStatus, SupervisorError> {
        let (tx, rx) = oneshot::channel();
        self.actor(name)?
            .send(Command::Status(tx))
            .await
            .map_err(|_| SupervisorError::ShuttingDown)?;
        rx.await.map_err(|_| SupervisorError::ShuttingDown)
    }

    /// The status of every copy `name` stands for.
    pub async fn statuses(&self, name: &str) -> Result<Vec<PluginStatus>, SupervisorError> {
        let mut out = Vec::new();
        for n in self.resolve(name)? {
            out.push(self.status(&n).await?);
        }
        Ok(out)
    }

    /// The status of every copy of every plugin, in start order.
    pub async fn list(&self) -> Vec<PluginStatus> {
        let names = self.names();
        let mut out = Vec::with_capacity(names.len());
        for name in &names {
            if let Ok(s) = self.status(name).await {
                out.push(s);
            }
        }
        out
    }

    /// Asks one copy for an action and waits up to `wait` for it to settle.
    async fn act_instance(
        &self,
        name: &str,
        action: Action,
        wait: Duration,
        by: Origin,
    ) -> Result<PluginStatus, SupervisorError> {
        let (tx, rx) = oneshot::channel();
        self.actor(name)?
            .send(Command::Act(action, by, tx))
            .await
            .map_err(|_| SupervisorError::ShuttingDown)?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(st)) => Ok(st),
            Ok(Err(_)) => Err(SupervisorError::ShuttingDown),
            Err(_) => self.status(name).await,
        }
    }

    /// Asks for an action and waits up to `wait` in all for the copies to settle; returns their
    /// statuses then. On several copies: `start` goes in order, `stop` in reverse, and `restart`
    /// rolls through them, each waiting for the previous to be healthy again (it halts at one
    /// that is not, leaving the rest running).
    pub async fn act(
        &self,
        name: &str,
        action: Action,
        wait: Duration,
        by: Origin,
    ) -> Result<Vec<PluginStatus>, SupervisorError> {
        let mut instances = self.resolve(name)?;
        if instances.len() == 1 {
            return Ok(vec![
                self.act_instance(&instances[0], action, wait, by).await?,
            ]);
        }
        if action == Action::Stop {
            instances.reverse();
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut halted = false;
        for n in &instances {
            if halted {
                break;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.act_instance(n, action, left, by.clone()).await?;
            if action == Action::Restart
                && let Err(st) = self.wait_instance(n, Condition::Healthy, deadline).await
            {
                tracing::error!(plugin = %n, "rolling restart of {name} halted: {n} is {st}, not healthy in time; the copies after it were left alone");
                halted = true;
            }
        }
        let mut out = self.statuses(name).await?;
        if action == Action::Stop {
            out.sort_by_key(|s| s.instance.as_ref().map(|i| i.index));
        }
        Ok(out)
    }

    /// Starts `plugins` (the `autostart` ones, not the on-demand ones) in dependency order: a
    /// plugin that others depend on is waited for (until it settles, at most `wait`) before they
    /// start; an on-demand dependency is not waited for (it runs only when asked).
    pub(crate) async fn start_all(
        &self,
        plugins: &[PluginConfig],
        order: &[String],
        wait: Duration,
    ) {
        let mut replies = Vec::new();
        for name in order {
            let Some(cfg) = plugins.iter().find(|p| &p.name == name) else {
                continue;
            };
            if !cfg.autostart || cfg.on_demand() {
                continue;
            }
            // Its dependencies started earlier in the order; wait for each to reach the
            // condition this plugin asks of it, within `wait` in all.
            let deadline = tokio::time::Instant::now() + wait;
            for dep in &cfg.depends_on {
                if let Err(st) = self.wait_condition(dep, deadline).await {
                    tracing::warn!(
                        plugin = name,
                        dependency = dep.as_str(),
                        "dependency {} is {st}, not {} within {wait:?}; starting {name} anyway",
                        dep.name,
                        dep.condition.as_str()
                    );
                }
            }
            let Ok(instances) = self.resolve(name) else {
                continue;
            };
            for n in &instances {
                let Ok(a) = self.actor(n) else { continue };
                let (tx, rx) = oneshot::channel();
                if a.send(Command::Act(Action::Start, Origin::Host, tx))
                    .await
                    .is_ok()
                {
                    replies.push(rx);
                }
            }
        }
        // Plugins start side by side (dependants wait above for their dependencies' conditions,
        // not for every earlier plugin): each owner task opens its log and pipes while the
        // spawner forks the next. Then wait, bounded, for them to settle.
        let settle = tokio::time::Instant::now() + wait.min(Duration::from_secs(1));
        for rx in replies {
            let _ = tokio::time::timeout_at(settle, rx).await;
        }
    }

    /// Waits until every copy of `dep` meets its condition or `deadline` passes; on a miss, the
    /// state of the first that does not.
    async fn wait_condition(
        &self,
        dep: &crate::config::Dependency,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        use crate::config::DependencyCondition as C;
        let cond = match dep.condition {
            C::Started => Condition::Started,
            C::Healthy => Condition::Healthy,
            C::Completed => Condition::Completed,
        };
        for n in self.resolve(&dep.name).map_err(|e| e.to_string())? {
            self.wait_instance(&n, cond, deadline)
                .await
                .map_err(|st| format!("{st} ({n})"))?;
        }
        Ok(())
    }

    /// Waits until copy `name` meets `cond` or `deadline` passes; on a miss, the state it is in.
    async fn wait_instance(
        &self,
        name: &str,
        cond: Condition,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        // Polled: conditions are rare (start-up, rolling restarts) and a status is one message
        // round trip.
        loop {
            let st = match self.status(name).await {
                Ok(st) => st,
                Err(e) => return Err(e.to_string()),
            };
            if st.on_demand.is_some() {
                // On-demand: it starts when asked, not for its dependants (validation allows
                // only the plain condition on it).
                return Ok(());
            }
            let met = match cond {
                Condition::Started => st.state == PluginState::Running,
                Condition::Healthy => {
                    st.state == PluginState::Running
                        && st.checks.iter().all(|c| c.status == "healthy")
                        && st.health.as_deref().is_none_or(|h| h == "healthy")
                }
                Condition::Completed => st.state == PluginState::Completed,
            };
            if met {
                return Ok(());
            }
            // A plugin that can no longer get there is not waited for.
            let hopeless = match cond {
                Condition::Completed => st.state == PluginState::Failed,
                _ => {
                    matches!(
                        st.state,
                        PluginState::Failed | PluginState::Completed | PluginState::Stopped
                    ) && !st.held
                }
            };
            if hopeless || tokio::time::Instant::now() >= deadline {
                let state = st.state.to_string();
                return Err(if st.state == PluginState::Running {
                    "running but not healthy".into()
                } else {
                    state
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Tells the plugins that follow `dep`'s restarts (per `config`) to restart; all of its
    /// dependants when the recovery ladder `escalated`. `dep` is a copy; dependants name its
    /// plugin.
    pub(crate) async fn propagate_restart(
        &self,
        dep: &Arc<str>,
        escalated: bool,
        config: &crate::config::Config,
    ) {
        let group = crate::config::group_of(dep);
        for p in &config.plugins {
            if (escalated || p.restart_with_dependencies)
                && p.depends_on.iter().any(|d| d.as_str() == group)
            {
                for n in self.resolve(&p.name).unwrap_or_default() {
                    if let Ok(a) = self.actor(&n) {
                        let _ = a
                            .send(Command::DependencyRestarted(Arc::clone(dep), escalated))
                            .await;
                    }
                }
            }
        }
    }

    /// SIGKILLs every plugin's process group now.
    pub async fn kill_all(&self) {
        let actors: Vec<_> = self.read().actors.values().cloned().collect();
        for a in actors {
            let _ = a.send(Command::Kill).await;
        }
    }

    /// Stops every plugin in reverse start order within `timeout`, then kills what is left.
    /// Returns the plugins that had to be killed.
    pub async fn shutdown(&self, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut forced = Vec::new();
        for name in self.names().iter().rev() {
            let Ok(a) = self.actor(name) else { continue };
            let (tx, rx) = oneshot::channel();
            if a.send(Command::Quit("host shutting down", Origin::Host, tx))
                .await
                .is_err()
            {
                continue;
            }
            if tokio::time::timeout_at(deadline, rx).await.is_err() {
                forced.push(name.clone());
            }
        }
        for name in &forced {
            if let Ok(a) = self.actor(name) {
                let _ = a.send(Command::Kill).await;
            }
        }
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("some plugin owner tasks did not finish within 10 s of SIGKILL");
        }
        forced
    }
}

/// What a wait for a copy waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    Started,
    Healthy,
    Completed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_first_then_exponential_and_capped() {
        let b = BackoffConfig {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(1),
            jitter: 0.0,
            reset_after: Duration::from_secs(30),
            ..BackoffConfig::default()
        };
        let d: Vec<u64> = (1..=7)
            .map(|n| backoff_delay(&b, n, 0.5).as_millis() as u64)
            .collect();
        assert_eq!(d, vec![0, 100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_spreads_within_bounds() {
        let b = BackoffConfig {
            jitter: 0.5,
            ..BackoffConfig::default()
        };
        let lo = backoff_delay(&b, 2, 0.0);
        let hi = backoff_delay(&b, 2, 0.999);
        assert_eq!(lo, Duration::from_millis(50));
        assert!(
            hi > Duration::from_millis(149) && hi <= Duration::from_millis(150),
            "{hi:?}"
        );
    }
}
