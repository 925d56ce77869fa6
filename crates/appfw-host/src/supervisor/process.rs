//! Starting plugin processes and learning of their exits.
//!
//! * **A few spawner threads.** `PR_SET_PDEATHSIG` fires when the *thread* that forked the child
//!   exits, so every plugin is forked from one of [`SPAWNER_THREADS`] long-lived threads that
//!   live as long as the host. More than one, because a spawn waits until the child has
//!   `exec`ed (std reports a failed `exec` that way): with one thread, 50 plugins start one
//!   `exec` after the other.
//! * **One reaper.** It waits for `SIGCHLD` and reaps every exited child with `waitpid(-1)`,
//!   dispatching the status to the owner of that pid. It reaps while holding the spawn gate for
//!   writing, which every spawner holds for reading across `fork`/`exec` and the insertion into
//!   the process table: so the reaper never reaps a child whose spawn is still in progress (std's
//!   own wait on a failed `exec` would then panic), and never sees a pid that is not in the table
//!   yet. Nothing else in the host may wait for children (no `tokio::process`), or exit statuses
//!   would be stolen.
//! * **No bare pids.** A child stays a zombie until the reaper reaps it, so its pid cannot be
//!   reused while it is in the table. Signals go to the leader through its pidfd (exactly that
//!   process, even after it was reaped: the kernel then answers ESRCH) and to the rest of its
//!   process group by group id. After the leader was reaped, the group id is only signalled once,
//!   at once, to clean up leftovers; the cgroup backend of the resource-limits work removes even
//!   that small window.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Instant, SystemTime};

use rustix::process::{Pid, Signal, WaitOptions};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// What to run.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// Plugin name, for messages.
    pub name: String,
    /// Program (a path, or a name looked up in `PATH`).
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Variables added to the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory.
    pub working_dir: Option<PathBuf>,
    /// Whether to pass a connected socket (`APPFW_PLUGIN_FD`).
    pub connect: bool,
    /// Discard stdout and stderr instead of capturing them (probes).
    pub quiet: bool,
    /// Start from an empty environment (then `env`) instead of the host's.
    pub env_clear: bool,
    /// Switch to this user and group (uid, gid) before exec.
    pub ids: Option<(u32, u32)>,
    /// Set this umask before exec.
    pub umask: Option<u32>,
    /// `cgroup.procs` files the child joins before exec (so it is limited from its first
    /// instruction, and nothing it forks escapes).
    pub cgroups: Vec<PathBuf>,
    /// rlimits and nice value set before exec.
    pub limits: crate::resources::ProcessLimits,
}

/// A started child.
#[derive(Debug)]
pub struct Child {
    /// Its pid (also its process group and session id).
    pub pid: u32,
    /// pidfd, when the kernel supports it.
    pub pidfd: Option<OwnedFd>,
    /// Its stdout.
    pub stdout: Option<ChildStdout>,
    /// Its stderr.
    pub stderr: Option<ChildStderr>,
    /// The host's end of the plugin socket.
    pub socket: Option<UnixStream>,
    /// Resolves with the exit status once the reaper reaped it.
    pub exit: oneshot::Receiver<ExitStatus>,
    /// When it was started.
    pub started: Instant,
    /// Wall-clock start.
    pub started_at: SystemTime,
}

impl Child {
    /// Sends `sig` to the whole process group (the leader and everything it started that did not
    /// leave the group). Only valid before the leader was reaped.
    pub fn signal_group(&self, sig: Signal) -> std::io::Result<()> {
        if let Some(fd) = &self.pidfd {
            match rustix::process::pidfd_send_signal(fd, sig) {
                Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let pid = Pid::from_raw(self.pid as i32).ok_or_else(|| std::io::Error::other("pid 0"))?;
        match rustix::process::kill_process_group(pid, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Spawner threads: enough to overlap a few `exec`s (and the cgroup joins before them) on a
/// small machine; each costs a parked thread.
pub const SPAWNER_THREADS: usize = 4;

/// The process table and the gate that keeps the reaper out while a spawn is in progress.
#[derive(Default)]
struct Procs {
    /// Held for reading across each spawn, for writing while reaping.
    gate: RwLock<()>,
    /// pid -> who waits for its exit status.
    table: Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>,
}

type Table = Arc<Procs>;

fn lock(t: &Table) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<ExitStatus>>> {
    t.table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The spawner threads, to join at shutdown (they end once every [`Spawner`] is dropped).
pub struct SpawnerThreads(Vec<std::thread::JoinHandle<()>>);

impl SpawnerThreads {
    /// Waits for every spawner thread; an error if one of them panicked.
    pub fn join(self) -> std::thread::Result<()> {
        let mut result = Ok(());
        for t in self.0 {
            if let Err(e) = t.join() {
                result = Err(e);
            }
        }
        result
    }
}

/// Why a spawn failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// exec or fork failed.
    #[error("cannot run {program}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The socket pair could not be created.
    #[error("cannot create the plugin socket: {0}")]
    Socket(std::io::Error),
    /// The plugin's cgroup could not be joined.
    #[error("cannot put the plugin in its cgroup: {0}")]
    Cgroup(#[from] crate::resources::cgroup::CgroupError),
    /// The spawner thread is gone (host shutting down).
    #[error("the host is shutting down")]
    ShuttingDown,
}

struct Job {
    spec: ProcessSpec,
    reply: oneshot::Sender<Result<Child, SpawnError>>,
}

/// Handle to the spawner thread and the process table. Cheap to clone.
#[derive(Clone)]
pub struct Spawner {
    jobs: std::sync::mpsc::Sender<Job>,
    table: Table,
}

impl Spawner {
    /// Starts the spawner threads. They live until every handle is dropped.
    pub fn start() -> std::io::Result<(Self, SpawnerThreads)> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        // The threads take turns at the receiver; the one that got a job releases it at once.
        let rx = Arc::new(Mutex::new(rx));
        let table: Table = Arc::default();
        let mut threads = Vec::with_capacity(SPAWNER_THREADS);
        for i in 0..SPAWNER_THREADS {
            let (t, rx) = (Arc::clone(&table), Arc::clone(&rx));
            let thread = std::thread::Builder::new()
                .name(format!("appfw-spawner-{i}"))
                .spawn(move || {
                    loop {
                        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(job) = next else { break };
                        let result = spawn_one(&t, job.spec);
                        if let Err(Ok(child)) = job.reply.send(result) {
                            // Nobody waits for it any more (the requester was cancelled): do
                            // not leave it running unsupervised.
                            let _ = child.signal_group(Signal::KILL);
                        }
                    }
                });
            match thread {
                Ok(t) => threads.push(t),
                // The ones already started end when `tx` is dropped on return.
                Err(e) => return Err(e),
            }
        }
        Ok((Self { jobs: tx, table }, SpawnerThreads(threads)))
    }

    /// Starts a process from the spawner thread.
    pub async fn spawn(&self, spec: ProcessSpec) -> Result<Child, SpawnError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { spec, reply })
            .map_err(|_| SpawnError::ShuttingDown)?;
        rx.await.map_err(|_| SpawnError::ShuttingDown)?
    }

    /// Number of live children the reaper is waiting for.
    pub fn live_children(&self) -> usize {
        lock(&self.table).len()
    }

    /// Runs the reaper until `cancel`. Marks the host as child subreaper first, so orphaned
    /// grandchildren of plugins are re-parented to it and reaped rather than left as zombies.
    pub async fn reap(self, cancel: CancellationToken) {
        if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
            tracing::warn!(
                "cannot become child subreaper ({e}); orphaned plugin children go to init"
            );
        }
        let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot watch SIGCHLD: {e}; plugin exits will not be seen");
                return;
            }
        };
        loop {
            reap_all(&self.table);
            tokio::select! {
                _ = sigchld.recv() => {}
                () = cancel.cancelled() => break,
            }
        }
        reap_all(&self.table);
    }
}

fn reap_all(table: &Table) {
    let _gate = table.gate.write().unwrap_or_else(PoisonError::into_inner);
    let mut map = lock(table);
    loop {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => {
                let raw = pid.as_raw_nonzero().get();
                let status = ExitStatus::from_raw(status.as_raw());
                match map.remove(&raw) {
                    Some(tx) => {
                        let _ = tx.send(status);
                    }
                    None => tracing::debug!(pid = raw, %status, "reaped an orphaned descendant"),
                }
            }
            Ok(None) | Err(rustix::io::Errno::CHILD) => break,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::warn!("waitpid failed: {e}");
                break;
            }
        }
    }
}

fn spawn_one(table: &Table, spec: ProcessSpec) -> Result<Child, SpawnError> {
    let (host_end, child_end) = if spec.connect {
        let (a, b) = UnixStream::pair().map_err(SpawnError::Socket)?;
        (Some(a), Some(OwnedFd::from(b)))
    } else {
        (None, None)
    };
    let mut cmd = Command::new(&spec.program);
    if spec.env_clear {
        cmd.env_clear();
    }
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    if spec.quiet {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    if let Some(fd) = &child_end {
        cmd.env(appfw_proto::ENV_PLUGIN_FD, fd.as_raw_fd().to_string());
    }
    let host_pid = rustix::process::getpid();
    let child_fd = child_end.as_ref().map(AsRawFd::as_raw_fd);
    let (ids, umask, limits) = (spec.ids, spec.umask, spec.limits);
    // Opened here, closed when this function returns (and at exec in the child).
    let cgroup_files = crate::resources::cgroup::open_procs(&spec.cgroups)?;
    let cgroup_fds = crate::resources::cgroup::raw(&cgroup_files);
    // SAFETY: the closure runs between fork and exec and only makes raw syscalls through
    // rustix (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            // Own session and process group: signals to the group reach everything it starts.
            rustix::process::setsid()?;
            // Die with the host, even if it is SIGKILLed.
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // The host may have died between fork and prctl; then nobody will supervise us.
            if rustix::process::getppid() != Some(host_pid) {
                return Err(std::io::Error::other("the host exited during spawn"));
            }
            crate::resources::cgroup::join_in_child(&cgroup_fds)?;
            if let Some(n) = limits.open_files {
                rustix::process::setrlimit(
                    rustix::process::Resource::Nofile,
                    rustix::process::Rlimit {
                        current: Some(n),
                        maximum: Some(n),
                    },
                )?;
            }
            if let Some(nice) = limits.nice {
                rustix::process::setpriority_process(None, nice)?;
            }
            if let Some(mask) = umask {
                rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
            }
            if let Some((uid, gid)) = ids {
                // Groups first, then the group, then the user: afterwards there is no right
                // left to change them. In the forked child (one thread) the per-thread calls
                // change the whole process.
                let gid = rustix::process::Gid::from_raw(gid);
                rustix::thread::set_thread_groups(&[gid])?;
                rustix::thread::set_thread_gid(gid)?;
                rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid))?;
            }
            if let Some(fd) = child_fd {
                // The inherited socket must survive exec (the host's end stays close-on-exec).
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
    let gate = table.gate.read().unwrap_or_else(PoisonError::into_inner);
    let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
        program: spec.program.display().to_string(),
        source,
    })?;
    let (tx, exit) = oneshot::channel();
    let pid = child.id();
    lock(table).insert(pid as i32, tx);
    drop(gate);
    let started = Instant::now();
    let pidfd = Pid::from_raw(pid as i32)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    // The child has its copy; ours must be closed or EOF never comes.
    drop(child_end);
    // Bigger pipes: a flooding plugin blocks less often, and capture reads bigger chunks (fewer
    // wake-ups per line). Best effort: the kernel may cap it (pipe-max-size, pipe-user-pages).
    if let Some(p) = &child.stdout {
        let _ = rustix::pipe::fcntl_setpipe_size(p, PIPE_SIZE);
    }
    if let Some(p) = &child.stderr {
        let _ = rustix::pipe::fcntl_setpipe_size(p, PIPE_SIZE);
    }
    Ok(Child {
        pid,
        pidfd,
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        socket: host_end,
        exit,
        started,
        started_at: SystemTime::now(),
    })
}

/// Size asked for the stdout and stderr pipes (the unprivileged default maximum).
const PIPE_SIZE: usize = 1024 * 1024;

/// The conventional name of a signal number (`SIGKILL`), or `SIG<n>`.
pub fn signal_name(sig: i32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(sig)
        .ok()
        .and_then(|i| NAMES.get(i))
        .filter(|n| !n.is_empty())
        .map_or_else(|| format!("SIG{sig}"), |n| (*n).to_string())
}

/// Describes an exit status like `exit code 3` or `signal 9 (SIGKILL)`.
pub fn describe(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        format!("signal {sig} ({})", signal_name(sig))
    } else {
        format!("status {}", status.into_raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_described_with_signal_names() {
        assert_eq!(describe(&ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
        assert_eq!(describe(&ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(signal_name(64), "SIG64");
    }
}
