//! Supervision: one owner task per plugin (see [`actor`]), the spawner thread and the reaper
//! (see [`process`]), the host side of plugin connections, and output capture.

mod actor;
mod capture;
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
use crate::events::Events;
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
    pub logs_dir: PathBuf,
    pub base_dir: PathBuf,
    /// Swapped by a reload; read at each plugin start.
    pub supervisor: arc_swap::ArcSwap<SupervisorConfig>,
    /// Generation of the loaded config, sent with live settings updates.
    pub generation: std::sync::atomic::AtomicU64,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Names of plugins that just restarted, for `restart_with_dependencies`.
    pub restarted: mpsc::Sender<Arc<str>>,
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

#[derive(Default)]
struct Members {
    order: Vec<Arc<str>>,
    actors: HashMap<Arc<str>, mpsc::Sender<Command>>,
}

/// Handle to every plugin's owner task. Plugins can be added and removed while it runs
/// (config reloads); the membership lock is never held across an await.
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

    /// Creates the owner task of a new plugin (not started). Returns false if the name exists.
    pub(crate) fn add(&self, cfg: PluginConfig) -> bool {
        let name: Arc<str> = Arc::from(cfg.name.as_str());
        let mut m = self.write();
        if m.actors.contains_key(&name) {
            return false;
        }
        let (tx, rx) = mpsc::channel(64);
        self.tasks
            .spawn(Actor::new(cfg, Arc::clone(&self.ctx), rx).run());
        m.order.push(Arc::clone(&name));
        m.actors.insert(name, tx);
        true
    }

    /// Sets the start order (names not known are ignored; unknown members keep their place at
    /// the end).
    pub(crate) fn set_order(&self, names: &[String]) {
        let mut m = self.write();
        let mut order: Vec<Arc<str>> = names
            .iter()
            .filter_map(|n| {
                m.actors
                    .get_key_value(n.as_str())
                    .map(|(k, _)| Arc::clone(k))
            })
            .collect();
        for n in &m.order {
            if !order.contains(n) {
                order.push(Arc::clone(n));
            }
        }
        m.order = order;
    }

    /// Stops a plugin for good and forgets it.
    pub(crate) async fn remove(&self, name: &str) -> Result<PluginStatus, SupervisorError> {
        let a = self.actor(name)?;
        let (tx, rx) = oneshot::channel();
        a.send(Command::Quit("removed from the config", tx))
            .await
            .map_err(|_| SupervisorError::ShuttingDown)?;
        let st = rx.await.map_err(|_| SupervisorError::ShuttingDown)?;
        let mut m = self.write();
        m.actors.remove(name);
        m.order.retain(|n| &**n != name);
        self.ctx.metrics.forget_series(name);
        Ok(st)
    }

    /// Hands a plugin its new config; `live` says that only its settings changed.
    pub(crate) async fn reconfigure(
        &self,
        name: &str,
        cfg: PluginConfig,
        live: bool,
    ) -> Result<Reconfigured, SupervisorError> {
        let (tx, rx) = oneshot::channel();
        self.actor(name)?
            .send(Command::Reconfigure(Box::new(cfg), live, tx))
            .await
            .map_err(|_| SupervisorError::ShuttingDown)?;
        rx.await.map_err(|_| SupervisorError::ShuttingDown)
    }

    /// Plugin names in start order.
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

    /// The status of one plugin.
    pub async fn status(&self, name: &str) -> Result<PluginStatus, SupervisorError> {
        let (tx, rx) = oneshot::channel();
        self.actor(name)?
            .send(Command::Status(tx))
            .await
            .map_err(|_| SupervisorError::ShuttingDown)?;
        rx.await.map_err(|_| SupervisorError::ShuttingDown)
    }

    /// The status of every plugin, in start order.
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

    /// Asks for an action and waits up to `wait` for the plugin to settle; returns its status
    /// then (or the current status when the wait ran out).
    pub async fn act(
        &self,
        name: &str,
        action: Action,
        wait: Duration,
    ) -> Result<PluginStatus, SupervisorError> {
        let (tx, rx) = oneshot::channel();
        self.actor(name)?
            .send(Command::Act(action, tx))
            .await
            .map_err(|_| SupervisorError::ShuttingDown)?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(st)) => Ok(st),
            Ok(Err(_)) => Err(SupervisorError::ShuttingDown),
            Err(_) => self.status(name).await,
        }
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
            let Ok(a) = self.actor(name) else { continue };
            let (tx, rx) = oneshot::channel();
            if a.send(Command::Act(Action::Start, tx)).await.is_err() {
                continue;
            }
            // A one-shot's dependants wait on its completion instead, in their own turn.
            let _ = tokio::time::timeout(wait.min(Duration::from_secs(1)), rx).await;
        }
    }

    /// Waits until `dep` meets its condition or `deadline` passes; on a miss, the state it is in.
    async fn wait_condition(
        &self,
        dep: &crate::config::Dependency,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        use crate::config::DependencyCondition as C;
        // Polled: conditions are rare (start-up only) and a status is one message round trip.
        loop {
            let st = match self.status(&dep.name).await {
                Ok(st) => st,
                Err(e) => return Err(e.to_string()),
            };
            if st.on_demand.is_some() {
                // On-demand: it starts when asked, not for its dependants (validation allows
                // only the plain condition on it).
                return Ok(());
            }
            let met = match dep.condition {
                C::Started => st.state == PluginState::Running,
                C::Healthy => {
                    st.state == PluginState::Running
                        && st.checks.iter().all(|c| c.status == "healthy")
                        && st.health.as_deref().is_none_or(|h| h == "healthy")
                }
                C::Completed => st.state == PluginState::Completed,
            };
            if met {
                return Ok(());
            }
            // A dependency that can no longer get there is not waited for.
            let hopeless = match dep.condition {
                C::Completed => st.state == PluginState::Failed,
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

    /// Tells the plugins that follow `dep`'s restarts (per `config`) to restart.
    pub(crate) async fn propagate_restart(&self, dep: &Arc<str>, config: &crate::config::Config) {
        for p in &config.plugins {
            if p.restart_with_dependencies
                && p.depends_on.iter().any(|d| d.as_str() == &**dep)
                && let Ok(a) = self.actor(&p.name)
            {
                let _ = a.send(Command::DependencyRestarted(Arc::clone(dep))).await;
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
            if a.send(Command::Quit("host shutting down", tx))
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
