//! Config reloads. One task owns the running config; file changes, SIGHUP and the API send it
//! requests, so reloads never interleave (the last one wins, every one is recorded). A new
//! config is loaded and validated first: if invalid it is refused, the running one stays (last
//! known good) and the `config` health check turns degraded until a valid one is loaded. If
//! valid it is applied as a diff: unchanged plugins keep running untouched, changed ones restart,
//! removed ones stop, added ones start, and settings-only changes go to plugins live.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigDiff, ConfigError, Layers, Loaded, REDACTED, load};
use crate::events::{EventKind, Events, Origin};
use crate::supervisor::{Apply, Ctx, Supervisor};

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadSource {
    /// The config file (or an included one) changed on disk.
    File,
    /// SIGHUP.
    Signal,
    /// The HTTP API.
    Api,
}

impl fmt::Display for ReloadSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::File => "file change",
            Self::Signal => "SIGHUP",
            Self::Api => "API",
        })
    }
}

/// The outcome of an accepted reload (or a dry run).
#[derive(Clone, Debug, Serialize)]
pub struct ReloadReport {
    /// Generation now running (unchanged by a dry run).
    pub generation: u64,
    /// What asked.
    pub source: ReloadSource,
    /// False for a dry run (`plan`).
    pub applied: bool,
    /// What changes.
    pub diff: ConfigDiff,
    /// One-line summary of the diff.
    pub summary: String,
    /// The file written back (API with a file-based config).
    pub written: Option<PathBuf>,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is invalid; the running one stays.
    #[error("{0}")]
    Invalid(ConfigError),
    /// The new config could not be written back to the file; nothing was applied.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
}

/// The running config, shared with the API and the health checks.
pub struct ConfigState {
    current: ArcSwap<Config>,
    generation: std::sync::atomic::AtomicU64,
    last_error: Mutex<Option<(String, SystemTime)>>,
}

impl ConfigState {
    /// The running config (raw: secret references unresolved; redact before showing it).
    pub fn current(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// How many configs were applied since start (1 = the initial one).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The last refused reload's errors, until a valid config is loaded.
    pub fn last_error(&self) -> Option<(String, SystemTime)> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = e.map(|m| (m, SystemTime::now()));
    }
}

struct Job {
    source: ReloadSource,
    /// The API client that asked, if any.
    caller: Option<Origin>,
    text: Option<String>,
    dry_run: bool,
    reply: Option<oneshot::Sender<Result<ReloadReport, ReloadError>>>,
}

/// Asks the reloader for reloads. Cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<Job>,
    state: Arc<ConfigState>,
}

impl ReloadHandle {
    /// Reloads (from `text`, or from the files when `None`) and waits for the outcome.
    pub async fn reload(
        &self,
        source: ReloadSource,
        text: Option<String>,
        dry_run: bool,
    ) -> Result<ReloadReport, ReloadError> {
        self.reload_as(source, None, text, dry_run).await
    }

    /// [`ReloadHandle::reload`] on behalf of an API client, named in the events it causes.
    pub async fn reload_as(
        &self,
        source: ReloadSource,
        caller: Option<Origin>,
        text: Option<String>,
        dry_run: bool,
    ) -> Result<ReloadReport, ReloadError> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            source,
            caller,
            text,
            dry_run,
            reply: Some(tx),
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| ReloadError::ShuttingDown)?;
        rx.await.map_err(|_| ReloadError::ShuttingDown)?
    }

    /// Asks for a reload from the files without waiting (signals, the file watcher).
    pub fn trigger(&self, source: ReloadSource) {
        let job = Job {
            source,
            caller: None,
            text: None,
            dry_run: false,
            reply: None,
        };
        if self.tx.try_send(job).is_err() {
            // A full queue already holds reloads that will read the same files.
            tracing::debug!("reload already queued");
        }
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<ConfigState> {
        &self.state
    }
}

/// The task that owns the running config.
pub(crate) struct Reloader {
    layers: Layers,
    current: Loaded,
    supervisor: Arc<Supervisor>,
    ctx: Arc<Ctx>,
    events: Events,
    state: Arc<ConfigState>,
    rx: mpsc::Receiver<Job>,
    /// Who asked for the reload being handled.
    by: Origin,
}

impl Reloader {
    pub(crate) fn new(
        layers: Layers,
        current: Loaded,
        supervisor: Arc<Supervisor>,
        ctx: Arc<Ctx>,
        events: Events,
    ) -> (Self, ReloadHandle) {
        let (tx, rx) = mpsc::channel(16);
        let state = Arc::new(ConfigState {
            current: ArcSwap::from_pointee(current.config.clone()),
            generation: std::sync::atomic::AtomicU64::new(1),
            last_error: Mutex::new(None),
        });
        ctx.generation.store(1, Ordering::Relaxed);
        let handle = ReloadHandle {
            tx,
            state: Arc::clone(&state),
        };
        (
            Self {
                layers,
                current,
                supervisor,
                ctx,
                events,
                state,
                rx,
                by: Origin::Host,
            },
            handle,
        )
    }

    /// Directories to watch: those of the files read.
    pub(crate) fn watch_dirs(&self) -> Vec<PathBuf> {
        dirs_of(&self.current.files)
    }

    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        loop {
            let job = tokio::select! {
                j = self.rx.recv() => j,
                () = cancel.cancelled() => None,
            };
            let Some(job) = job else { break };
            // Everything a reload causes names it, and the client behind it.
            let label = match &job.caller {
                Some(Origin::Client { token, .. }) => format!("{}, token {token}", job.source),
                _ => job.source.to_string(),
            };
            self.by = Origin::Reload(Arc::from(label));
            let outcome = self.handle(job.source, job.text, job.dry_run).await;
            if let Some(reply) = job.reply {
                let _ = reply.send(outcome);
            }
        }
    }

    async fn handle(
        &mut self,
        source: ReloadSource,
        text: Option<String>,
        dry_run: bool,
    ) -> Result<ReloadReport, ReloadError> {
        let from_api = text.is_some();
        if text.as_deref().is_some_and(|t| t.trim().is_empty()) {
            let issue = crate::config::ConfigIssue {
                origin: None,
                file: None,
                key: String::new(),
                message: "empty config: send the whole file (an empty one would stop every plugin)"
                    .into(),
            };
            return Err(self.refuse(source, dry_run, ConfigError::Invalid(vec![issue])));
        }
        if text.is_none() && self.layers.file.is_none() {
            // Started without a config file: there is nothing to read again.
            return Ok(ReloadReport {
                generation: self.state.generation(),
                source,
                applied: false,
                diff: ConfigDiff::default(),
                summary: "no config file to reload".into(),
                written: None,
            });
        }
        let layers = match &text {
            Some(t) => {
                let restored = restore_redacted(t, &self.current.config)
                    .map_err(|m| self.refuse(source, dry_run, ConfigError::Invalid(vec![m])))?;
                self.layers.clone().with_text(&restored)
            }
            None => {
                let mut l = self.layers.clone();
                l.text = None;
                l
            }
        };
        let new = load(&layers).map_err(|e| self.refuse(source, dry_run, e))?;
        let diff = ConfigDiff::between(&self.current.config, &new.config);
        let mut report = ReloadReport {
            generation: self.state.generation(),
            source,
            applied: false,
            summary: diff.summary(),
            diff,
            written: None,
        };
        if dry_run {
            return Ok(report);
        }
        if source == ReloadSource::File && report.diff.is_empty() && new.text == self.current.text {
            // Our own write-back, or a save without changes.
            self.state.set_error(None);
            return Ok(report);
        }
        if from_api && let (Some(path), Some(t)) = (&self.layers.file, &new.text) {
            write_back(path, t).map_err(|source| ReloadError::Write {
                path: path.clone(),
                source,
            })?;
            report.written = Some(path.clone());
        }
        // Plugins taking settings live get the number of the config being applied.
        let generation = self.state.generation() + 1;
        self.ctx.generation.store(generation, Ordering::Relaxed);
        self.apply(&report.diff, &new.config).await;
        self.state.generation.store(generation, Ordering::Relaxed);
        self.state.current.store(Arc::new(new.config.clone()));
        self.state.set_error(None);
        self.current = new;
        report.generation = generation;
        report.applied = true;
        self.events.emit_by(
            None,
            Some(&self.by),
            EventKind::ConfigReloaded {
                source: source.to_string(),
                generation,
                summary: report.summary.clone(),
            },
        );
        Ok(report)
    }

    /// A refused config. A dry run only reports it: the running config's health is unchanged.
    fn refuse(&self, source: ReloadSource, dry_run: bool, e: ConfigError) -> ReloadError {
        if dry_run {
            return ReloadError::Invalid(e);
        }
        let errors: Vec<String> = match &e {
            ConfigError::Invalid(issues) => issues.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        };
        self.state.set_error(Some(errors.join("\n")));
        self.events.emit_by(
            None,
            Some(&self.by),
            EventKind::ConfigRejected {
                source: source.to_string(),
                errors,
            },
        );
        ReloadError::Invalid(e)
    }

    async fn apply(&self, diff: &ConfigDiff, new: &Config) {
        self.ctx.supervisor.store(Arc::new(new.supervisor.clone()));
        self.ctx
            .bus
            .set_default_timeout(new.supervisor.request_timeout);
        let old_order = self.supervisor.names();
        for name in old_order.iter().rev().filter(|n| diff.stop.contains(n)) {
            if let Err(e) = self.supervisor.remove(name, self.by.clone()).await {
                tracing::warn!(plugin = %name, "cannot remove: {e}");
            }
        }
        let plugin = |name: &str| new.plugin(name).cloned();
        // How long a rolling restart waits for each copy to be healthy again.
        let roll_wait = new.supervisor.handshake_timeout + Duration::from_secs(30);
        for change in &diff.restart {
            if let Some(cfg) = plugin(&change.name)
                && let Err(e) = self
                    .supervisor
                    .reconfigure(
                        &change.name,
                        cfg,
                        Apply::Restart,
                        self.by.clone(),
                        roll_wait,
                    )
                    .await
            {
                tracing::warn!(plugin = %change.name, "cannot reconfigure: {e}");
            }
        }
        for name in &diff.update {
            if let Some(cfg) = plugin(name)
                && let Err(e) = self
                    .supervisor
                    .reconfigure(name, cfg, Apply::Live, self.by.clone(), roll_wait)
                    .await
            {
                tracing::warn!(plugin = %name, "cannot update settings: {e}");
            }
        }
        // On-demand keys alone: the owner task applies them to the running plugin (`live` with
        // unchanged settings restarts nothing).
        for change in &diff.tune {
            if let Some(cfg) = plugin(&change.name)
                && let Err(e) = self
                    .supervisor
                    .reconfigure(&change.name, cfg, Apply::Live, self.by.clone(), roll_wait)
                    .await
            {
                tracing::warn!(plugin = %change.name, "cannot apply on-demand settings: {e}");
            }
        }
        let added: Vec<_> = diff.start.iter().filter_map(|n| plugin(n)).collect();
        for cfg in &added {
            self.supervisor.add(cfg.clone());
        }
        let order = new.start_order();
        self.supervisor.set_order(&order);
        let wait = new.supervisor.handshake_timeout + Duration::from_secs(5);
        self.supervisor.start_all(&added, &order, wait).await;
    }
}

/// Parent directories of `files`, each once.
fn dirs_of(files: &[PathBuf]) -> Vec<PathBuf> {
    let set: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .map(|d| {
            if d.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                d
            }
        })
        .collect();
    set.into_iter().collect()
}

/// A config sent back with `<redacted>` placeholders keeps the stored values there: plugins are
/// matched by name, values by key. The placeholder itself is never stored.
fn restore_redacted(text: &str, current: &Config) -> Result<String, crate::config::ConfigIssue> {
    if !text.contains(REDACTED) {
        return Ok(text.to_string());
    }
    // Invalid TOML is reported by the loader with its position.
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return Ok(text.to_string());
    };
    let issue = |key: String| crate::config::ConfigIssue {
        origin: None,
        file: current.source.clone(),
        key,
        message: format!("{REDACTED} is a placeholder, but no value is stored here to keep"),
    };
    if let Some(toml::Value::Table(tokens)) = table
        .get_mut("api")
        .and_then(toml::Value::as_table_mut)
        .and_then(|a| a.get_mut("tokens"))
    {
        for (k, v) in tokens.iter_mut() {
            if v.as_str() == Some(REDACTED) {
                let kept = current
                    .api
                    .tokens
                    .get(k)
                    .ok_or_else(|| issue(format!("api.tokens.{k}")))?;
                *v = toml::Value::String(kept.clone());
            }
        }
    }
    if let Some(toml::Value::Array(plugins)) = table.get_mut("plugins") {
        for (i, p) in plugins.iter_mut().enumerate() {
            let Some(t) = p.as_table_mut() else { continue };
            let name = t
                .get("name")
                .and_then(toml::Value::as_str)
                .unwrap_or_default()
                .to_string();
            let old = current.plugin(&name);
            if let Some(toml::Value::Table(env)) = t.get_mut("env") {
                for (k, v) in env.iter_mut() {
                    if v.as_str() == Some(REDACTED) {
                        let kept = old
                            .and_then(|o| o.env.get(k))
                            .ok_or_else(|| issue(format!("plugins[{i}].env.{k}")))?;
                        *v = toml::Value::String(kept.clone());
                    }
                }
            }
            if let Some(toml::Value::Table(settings)) = t.get_mut("settings") {
                let empty = toml::Table::new();
                let old_settings = old.map_or(&empty, |o| &o.settings);
                restore_table(
                    settings,
                    old_settings,
                    &format!("plugins[{i}].settings"),
                    &issue,
                )?;
            }
        }
    }
    toml::to_string(&table).map_err(|e| crate::config::ConfigIssue {
        origin: None,
        file: None,
        key: String::new(),
        message: format!("cannot re-serialize the config: {e}"),
    })
}

fn restore_table(
    t: &mut toml::Table,
    old: &toml::Table,
    prefix: &str,
    issue: &dyn Fn(String) -> crate::config::ConfigIssue,
) -> Result<(), crate::config::ConfigIssue> {
    for (k, v) in t.iter_mut() {
        let key = format!("{prefix}.{k}");
        match v {
            toml::Value::String(s) if s == REDACTED => {
                *v = old.get(k).cloned().ok_or_else(|| issue(key))?;
            }
            toml::Value::Table(inner) => {
                let empty = toml::Table::new();
                let o = old.get(k).and_then(toml::Value::as_table).unwrap_or(&empty);
                restore_table(inner, o, &key, issue)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Replaces `path` atomically (temp file, fsync, rename) after copying the old one to
/// `<path>.bak`; the new file keeps the old one's permissions.
fn write_back(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let perms = std::fs::metadata(path).map(|m| m.permissions()).ok();
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    if let Some(p) = perms {
        std::fs::set_permissions(&tmp, p)?;
    }
    if path.exists() {
        std::fs::copy(path, dir.join(format!("{name}.bak")))?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Watches the config's directories and asks for a reload (debounced: editors write a file in
/// several steps) when a `.toml` file in them changes.
pub(crate) async fn watch(dirs: Vec<PathBuf>, handle: ReloadHandle, cancel: CancellationToken) {
    use notify::Watcher;
    let (tx, mut rx) = mpsc::channel::<()>(64);
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && !matches!(ev.kind, notify::EventKind::Access(_))
                && ev
                    .paths
                    .iter()
                    .any(|p| p.extension().is_some_and(|x| x == "toml"))
            {
                let _ = tx.try_send(());
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(
                    "cannot watch the config files ({e}); reload with SIGHUP or the API"
                );
                return;
            }
        };
    for d in &dirs {
        if let Err(e) = watcher.watch(d, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(
                "cannot watch {} ({e}); reload with SIGHUP or the API",
                d.display()
            );
        }
    }
    loop {
        tokio::select! {
            ev = rx.recv() => if ev.is_none() { break },
            () = cancel.cancelled() => break,
        }
        // Debounce: wait until the directory was quiet for a moment.
        loop {
            tokio::select! {
                ev = rx.recv() => if ev.is_none() { return },
                () = tokio::time::sleep(Duration::from_millis(300)) => break,
                () = cancel.cancelled() => return,
            }
        }
        if let Err(e) = handle.reload(ReloadSource::File, None, false).await {
            tracing::error!(
                "config reload after a file change refused; the running config stays:\n{e}"
            );
        }
    }
}
