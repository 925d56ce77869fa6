//! The host's lifecycle: start every subsystem, run, and stop in two phases within a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState, HostInfo};
use crate::bus::Bus;
use crate::config::{ConfigError, Layers, load};
use crate::datadir::{self, DataDir, DataDirError, Layout};
use crate::events::{EventKind, Events};
use crate::reload::{ReloadHandle, ReloadSource, Reloader};
use crate::supervisor::{Ctx, Spawner, Supervisor};

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The configuration is invalid.
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigError),
    /// The data directory cannot be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The embedded store cannot be used.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another start-up failure.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How to start a host.
#[derive(Clone, Debug, Default)]
pub struct HostOptions {
    /// Where the configuration comes from (file, environment, flags); reloads read them again.
    pub layers: Layers,
    /// Data directory given on the command line (wins over everything else).
    pub data_dir: Option<PathBuf>,
    /// The host's own log, when the caller set up one the host may steer (file, level).
    pub log: Option<Arc<dyn crate::hostlog::LogControl>>,
}

/// A started host. Stop it with [`Host::shutdown`].
pub struct Host {
    cancel: CancellationToken,
    tasks: TaskTracker,
    supervisor: Arc<Supervisor>,
    events: Events,
    api_addr: Option<SocketAddr>,
    layout: Layout,
    reload: ReloadHandle,
    store: Arc<crate::store::Store>,
    spawner: Option<(Spawner, crate::supervisor::process::SpawnerThreads)>,
    bus_io: Option<crate::bus::IoThread>,
    cgroups: Option<Arc<crate::resources::CgroupRoot>>,
    logs: Arc<crate::logs::Logs>,
    indexer: Option<crate::store::logs::Indexer>,
    _data_dir: DataDir,
}

impl Host {
    /// Loads and validates the config, locks the data directory, starts the reaper, the bus,
    /// the reloader and the API, and starts the autostart plugins in dependency order in the
    /// background (so the API answers while dependencies are being waited for).
    pub async fn start(opts: HostOptions) -> Result<Self, HostError> {
        let loaded = load(&opts.layers)?;
        let config = loaded.config.clone();
        let root = datadir::resolve(
            opts.data_dir.as_deref(),
            config.data_dir_resolved().as_deref(),
        )?;
        let data_dir = DataDir::open(&root)?;
        let layout = data_dir.layout().clone();
        if let Some(log) = &opts.log {
            if let Err(e) = log.open_file(&layout.host_log()) {
                tracing::warn!(
                    "cannot write the host log {}: {e}",
                    layout.host_log().display()
                );
            }
            if !log.fixed_by_flag()
                && let Err(e) = log.set_level(&config.logs.host_level)
            {
                tracing::warn!("logs.host_level: {e}");
            }
        }
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let retention = crate::store::Retention {
            max_rows: config.store.events_max_rows,
            max_age: config.store.events_max_age,
        };
        let store = Arc::new(crate::store::Store::open(&layout.store_file(), retention)?);
        let first_seq = store.max_event_seq()? + 1;
        let events = Events::with_store(first_seq, store.events());
        if let Err(e) = store.record_run(std::process::id(), env!("CARGO_PKG_VERSION"), first_seq) {
            tracing::warn!("cannot record this run in the store: {e}");
        }

        let cgroups = if config.supervisor.cgroups {
            crate::resources::CgroupRoot::setup(&crate::resources::cgroup::instance_id(
                &layout.root,
            ))
        } else {
            crate::resources::CgroupRoot::disabled("supervisor.cgroups = false")
        };
        if cgroups.is_active() {
            tracing::info!("{}", cgroups.describe());
        } else {
            tracing::warn!("no cgroup in use: {}", cgroups.describe());
        }
        let cgroups = cgroups.is_active().then(|| Arc::new(cgroups));
        let (spawner, spawner_thread) = Spawner::start().map_err(|source| HostError::Io {
            what: "cannot start the spawner threads",
            source,
        })?;
        tasks.spawn(spawner.clone().reap(cancel.child_token()));
        let metrics = Arc::new(crate::metrics::Metrics::new(
            config.metrics.max_series_per_plugin,
        ));
        let bus_io = crate::bus::IoThread::start().map_err(|source| HostError::Io {
            what: "cannot start the bus I/O thread",
            source,
        })?;
        let bus = Bus::with_io(
            config.supervisor.request_timeout,
            Arc::clone(&metrics),
            Some(bus_io.handle().clone()),
        );
        let (restarted_tx, mut restarted_rx) = tokio::sync::mpsc::channel::<(Arc<str>, bool)>(256);
        tasks.spawn(bus.clone().run_expiry(cancel.child_token()));

        let indexer = crate::store::logs::Indexer::start(
            &layout.store_file(),
            &layout.logs_dir(),
            crate::store::logs::IndexRetention {
                max_age: config.logs.index_max_age,
                max_size: config.logs.index_max_size,
            },
        )?;
        let progress = Arc::clone(indexer.progress());
        let indexed: crate::logs::janitor::Indexed =
            Arc::new(move |plugin: &str, seq: u64| progress.indexed(plugin, seq));
        let logs = Arc::new(
            crate::logs::Logs::start(
                &layout.logs_dir(),
                &config.logs,
                events.clone(),
                Some(crate::logs::IndexLink {
                    indexed,
                    wake: Arc::clone(indexer.waker()),
                    stderr_levels: Arc::clone(indexer.stderr_levels()),
                    class: Arc::clone(indexer.class()),
                }),
            )
            .map_err(|source| HostError::Io {
                what: "cannot start the log writer",
                source,
            })?,
        );
        metrics.set_log_index(Arc::clone(indexer.progress()));
        let rebuild_index = Arc::clone(indexer.rebuild());
        let log_index = Arc::clone(indexer.progress());
        let ctx = Arc::new(Ctx {
            events: events.clone(),
            bus: bus.clone(),
            spawner: spawner.clone(),
            logs: Arc::clone(&logs),
            base_dir: config.base_dir(),
            supervisor: arc_swap::ArcSwap::from_pointee(config.supervisor.clone()),
            generation: std::sync::atomic::AtomicU64::new(1),
            metrics: Arc::clone(&metrics),
            restarted: restarted_tx,
            cgroups: cgroups.clone(),
            cancel: cancel.child_token(),
        });
        let supervisor = Arc::new(Supervisor::new(Arc::clone(&ctx), &config.plugins));
        let order = config.start_order();
        supervisor.set_order(&order);
        let (reloader, reload) = Reloader::new(
            opts.layers.clone(),
            loaded,
            Arc::clone(&supervisor),
            ctx,
            events.clone(),
        );
        if config.source.is_some() {
            tasks.spawn(crate::reload::watch(
                reloader.watch_dirs(),
                reload.clone(),
                cancel.child_token(),
            ));
        }
        tasks.spawn(reloader.run(cancel.child_token()));
        {
            // rest_for_one: a restart reaches the plugins that follow it, then theirs in turn.
            let sup = Arc::clone(&supervisor);
            let state = Arc::clone(reload.state());
            let stop = cancel.child_token();
            tasks.spawn(async move {
                loop {
                    let name = tokio::select! {
                        n = restarted_rx.recv() => n,
                        () = stop.cancelled() => None,
                    };
                    let Some((name, escalated)) = name else { break };
                    sup.propagate_restart(&name, escalated, &state.current())
                        .await;
                }
            });
        }

        let info = HostInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            data_dir: layout.root.display().to_string(),
            config_file: config.source.as_ref().map(|p| p.display().to_string()),
            protocol_versions: format!("{}-{}", appfw_proto::MIN_VERSION, appfw_proto::MAX_VERSION),
            started_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            api_listen: None,
        };
        let mut state = ApiState {
            supervisor: Arc::clone(&supervisor),
            events: events.clone(),
            bus,
            token: Arc::from(data_dir.token()),
            info: Arc::new(info),
            reload: reload.clone(),
            metrics,
            store: Arc::clone(&store),
            logs: Arc::clone(&logs),
            rebuild_index,
            log_index,
            started: Instant::now(),
            cancel: cancel.child_token(),
            log: opts.log.clone(),
        };
        let mut api_addr = None;
        let tcp = if config.api.listen.is_empty() {
            None
        } else {
            let l = tokio::net::TcpListener::bind(&config.api.listen)
                .await
                .map_err(|source| HostError::Bind {
                    addr: config.api.listen.clone(),
                    source,
                })?;
            api_addr = l.local_addr().ok();
            if let Some(a) = api_addr
                && !a.ip().is_loopback()
            {
                tracing::warn!(
                    "API listening on non-loopback address {a}: reachable from the network (token still required)"
                );
            }
            Some(l)
        };
        Arc::make_mut(&mut state.info).api_listen = api_addr.map(|a| a.to_string());
        let router = api::router(state);
        if let Some(l) = tcp {
            let stop = cancel.child_token();
            let r = router.clone();
            tasks.spawn(async move {
                let _ = axum::serve(l, r)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            });
        }
        if config.api.unix_socket {
            let path = layout.api_socket();
            // We hold the data directory lock, so a socket file here is a stale one.
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path).map_err(|source| HostError::Bind {
                addr: path.display().to_string(),
                source,
            })?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| HostError::Io {
                    what: "cannot set permissions of the API socket",
                    source,
                },
            )?;
            let stop = cancel.child_token();
            tasks.spawn(async move {
                let _ = axum::serve(l, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            });
        }

        {
            // Dependencies are waited for, so starting runs beside the API rather than before.
            let sup = Arc::clone(&supervisor);
            let plugins = config.plugins.clone();
            let wait = config.supervisor.handshake_timeout + std::time::Duration::from_secs(5);
            let stop = cancel.child_token();
            tasks.spawn(async move {
                tokio::select! {
                    () = sup.start_all(&plugins, &order, wait) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        events.emit(
            None,
            EventKind::HostStarted {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
            },
        );
        if let Some(a) = api_addr {
            tracing::info!("API on http://{a} and {}", layout.api_socket().display());
        }
        Ok(Self {
            cancel,
            tasks,
            supervisor,
            events,
            api_addr,
            layout,
            reload,
            store,
            spawner: Some((spawner, spawner_thread)),
            bus_io: Some(bus_io),
            cgroups,
            logs,
            indexer: Some(indexer),
            _data_dir: data_dir,
        })
    }

    /// Asks for config reloads.
    pub fn reload_handle(&self) -> &ReloadHandle {
        &self.reload
    }

    /// The event hub.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The plugins.
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
    }

    /// TCP address of the API, if enabled.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// The data directory's paths.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Stops every plugin (reverse start order, bounded by `supervisor.shutdown_timeout`), then
    /// the API and the background tasks, and joins them.
    pub async fn shutdown(mut self, reason: &str) {
        self.events.emit(
            None,
            EventKind::HostStopping {
                reason: reason.into(),
            },
        );
        let timeout = self.reload.state().current().supervisor.shutdown_timeout;
        let forced = self.supervisor.shutdown(timeout).await;
        // Every connection is closed and its tasks joined: the bus's I/O thread can go.
        if let Some(io) = self.bus_io.take() {
            let join = tokio::task::spawn_blocking(move || io.stop().join());
            if tokio::time::timeout(std::time::Duration::from_secs(5), join)
                .await
                .is_err()
            {
                tracing::error!("the bus I/O thread did not end within 5 s; exiting without it");
            }
        }
        self.events.emit(None, EventKind::HostStopped { forced });
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some host tasks did not finish within 5 s");
        }
        if let Some(c) = self.cgroups.take() {
            c.remove();
        }
        if let Some((spawner, thread)) = self.spawner.take() {
            drop(spawner);
            // The thread ends once the last handle (in the supervisor context) is dropped.
            drop(self.supervisor);
            let join = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout(std::time::Duration::from_secs(5), join)
                .await
                .is_err()
            {
                tracing::error!("the spawner threads did not end within 5 s; exiting without them");
            }
        }
        // Every plugin has stopped: write what their capture queued, then stop the log threads.
        let logs = Arc::clone(&self.logs);
        let stop = tokio::task::spawn_blocking(move || logs.stop());
        if tokio::time::timeout(std::time::Duration::from_secs(10), stop)
            .await
            .is_err()
        {
            tracing::error!("the log writer did not finish within 10 s");
        }
        // Then index what the files hold, so a clean stop leaves nothing unindexed.
        if let Some(ix) = self.indexer.take() {
            let stop = tokio::task::spawn_blocking(move || ix.stop());
            if tokio::time::timeout(std::time::Duration::from_secs(30), stop)
                .await
                .is_err()
            {
                tracing::error!(
                    "the log index did not catch up within 30 s; it resumes at the next start"
                );
            }
        }
        // Flush the store last, after the final events.
        match Arc::try_unwrap(self.store) {
            Ok(store) => {
                let close = tokio::task::spawn_blocking(move || store.close());
                if tokio::time::timeout(std::time::Duration::from_secs(10), close)
                    .await
                    .is_err()
                {
                    tracing::error!("the store did not flush within 10 s");
                }
            }
            Err(_) => tracing::warn!(
                "store still in use at shutdown; its writer flushes when the process exits"
            ),
        }
    }

    /// SIGKILLs every plugin now (a second Ctrl-C).
    pub async fn kill_all(&self) {
        self.supervisor.kill_all().await;
    }
}

/// Runs a host until `stop` resolves (first signal), then shuts down; a second signal while
/// stopping kills every plugin at once.
pub async fn run<F, G>(opts: HostOptions, stop: F, force: G) -> Result<(), HostError>
where
    F: Future<Output = &'static str>,
    G: Future<Output = ()>,
{
    let host = Host::start(opts).await?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::pin!(stop);
    let reason = loop {
        tokio::select! {
            r = &mut stop => break r,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading the config");
                host.reload_handle().trigger(ReloadSource::Signal);
            }
        }
    };
    // Weak: a strong handle would keep the spawner alive and the shutdown waiting for it.
    let supervisor = Arc::downgrade(host.supervisor());
    let shutdown = host.shutdown(reason);
    tokio::pin!(shutdown);
    tokio::pin!(force);
    tokio::select! {
        () = &mut shutdown => return Ok(()),
        () = &mut force => {
            tracing::warn!("second signal: killing every plugin now");
            if let Some(s) = supervisor.upgrade() {
                s.kill_all().await;
            }
        }
    }
    drop(supervisor);
    shutdown.await;
    Ok(())
}

/// Resolves at the first SIGTERM or SIGINT with the signal's name.
pub async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
