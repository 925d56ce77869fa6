//! Control groups: one root per host instance, one group per plugin.
//!
//! Hand-written over plain file operations rather than a cgroups crate: the interface is a few
//! files per controller, and what matters here (which hierarchy to use, where the host may write,
//! moving a child in between `fork` and `exec`, freezing before a sweep) is the product itself.
//!
//! * **v2** (unified) is used when the host's own cgroup offers the controllers and the host may
//!   create a child group and enable them there. When the host's cgroup holds processes (the
//!   host itself), the "no internal processes" rule forbids enabling controllers for children,
//!   so the host first moves itself into a leaf `appfw-host` beside its root.
//! * **v1** (legacy or hybrid) is used per controller (`memory`, `cpu`, `pids`, `freezer`)
//!   wherever that hierarchy is writable.
//! * The root is `<host's cgroup>/appfw-<id>`, where `<id>` is derived from the data directory,
//!   which only one host may hold (its lock): two hosts never share a root, and a host restarted
//!   on the same data directory finds (and sweeps) what a crashed predecessor left.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use appfw_config::LimitsConfig;

/// A v1 controller the host uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    /// Memory limit and OOM accounting.
    Memory,
    /// CPU quota and weight.
    Cpu,
    /// Number of tasks.
    Pids,
    /// Freezing a group before a sweep (v1 only; v2 has `cgroup.freeze` in every group).
    Freezer,
}

impl Controller {
    const ALL: [Self; 4] = [Self::Memory, Self::Cpu, Self::Pids, Self::Freezer];

    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Cpu => "cpu",
            Self::Pids => "pids",
            Self::Freezer => "freezer",
        }
    }
}

/// How a limit is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// By a cgroup v2 controller.
    CgroupV2,
    /// By a cgroup v1 controller.
    CgroupV1,
    /// By a resource limit of each process (`setrlimit`) or its nice value.
    Process,
    /// Not enforced by the kernel: the host samples /proc and acts on what it finds.
    Sampling,
}

impl Mechanism {
    /// Words for the host log.
    pub fn describe(self) -> &'static str {
        match self {
            Self::CgroupV2 => "cgroup v2",
            Self::CgroupV1 => "cgroup v1",
            Self::Process => "per-process rlimit/nice",
            Self::Sampling => "sampling /proc (not enforced by the kernel)",
        }
    }
}

/// Why cgroups could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    // One write(2) per value: cgroup files take exactly one value per write. O_TRUNC as a shell's
    // `>` does (cgroupfs ignores it; a plain file, in the tests, needs it).
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io(path))?;
    f.write_all(value.as_bytes()).map_err(io(path))
}

/// The cgroup hierarchies this host instance uses, with its root group in each.
#[derive(Debug, Default)]
pub struct CgroupRoot {
    /// The v2 root group, when v2 controllers are used.
    v2: Option<PathBuf>,
    /// v2 controllers enabled for plugin groups.
    v2_controllers: Vec<&'static str>,
    /// v1 controllers and the root group in each hierarchy.
    v1: Vec<(Controller, PathBuf)>,
    /// Why the hierarchies that are not used could not be (for the start-up log line).
    notes: Vec<String>,
}

/// A cgroup line of /proc/self/cgroup: (controllers, path).
fn own_cgroups(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            Some((
                ctrls
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path.to_string(),
            ))
        })
        .collect()
}

/// A cgroup mount from /proc/self/mountinfo: (mount root, mount point, fs type, super options).
fn cgroup_mounts(text: &str) -> Vec<(String, PathBuf, String, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let fstype = *r.first()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            let opts = r.get(2).map_or_else(Vec::new, |o| {
                o.split(',').map(str::to_string).collect::<Vec<_>>()
            });
            Some((
                unescape(f.get(3)?),
                PathBuf::from(unescape(f.get(4)?)),
                fstype.to_string(),
                opts,
            ))
        })
        .collect()
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of cgroup `path` in a hierarchy mounted at `point` from `root`.
fn dir_of(root: &str, point: &Path, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .trim_start_matches('/');
    if rel.is_empty() {
        point.to_path_buf()
    } else {
        point.join(rel)
    }
}

/// A short stable id of a data directory (FNV-1a; std's hasher is not stable across releases).
pub fn instance_id(data_dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("appfw-{:012x}", h & 0xffff_ffff_ffff)
}

impl CgroupRoot {
    /// Finds the usable hierarchies and creates this instance's root group in each. Never
    /// fails: what cannot be used is noted for [`CgroupRoot::describe`].
    pub fn setup(instance: &str) -> Self {
        let cgroups = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::setup_from(&own_cgroups(&cgroups), &cgroup_mounts(&mounts), instance)
    }

    fn setup_from(
        own: &[(Vec<String>, String)],
        mounts: &[(String, PathBuf, String, Vec<String>)],
        instance: &str,
    ) -> Self {
        let mut me = Self::default();
        // v2 first.
        let unified = own.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| p);
        let v2_mount = mounts.iter().find(|m| m.2 == "cgroup2");
        match (unified, v2_mount) {
            (Some(path), Some((root, point, _, _))) => {
                let own_dir = dir_of(root, point, path);
                match setup_v2(&own_dir, instance) {
                    Ok((dir, ctrls)) if !ctrls.is_empty() => {
                        me.v2 = Some(dir);
                        me.v2_controllers = ctrls;
                    }
                    Ok((dir, _)) => {
                        let _ = fs::remove_dir(&dir);
                        me.notes.push(format!(
                            "cgroup v2 at {} offers no memory/cpu/pids controller",
                            own_dir.display()
                        ));
                    }
                    Err(e) => me.notes.push(format!("cgroup v2 not usable: {e}")),
                }
            }
            _ => me.notes.push("no cgroup v2 hierarchy".into()),
        }
        for c in Controller::ALL {
            let in_v2 = match c {
                Controller::Freezer => me.v2.is_some(),
                _ => me.v2_controllers.contains(&c.name()),
            };
            if in_v2 {
                continue;
            }
            let Some((root, point, _, _)) = mounts
                .iter()
                .find(|m| m.2 == "cgroup" && m.3.iter().any(|o| o == c.name()))
            else {
                continue;
            };
            let Some((_, path)) = own
                .iter()
                .find(|(ctrls, _)| ctrls.iter().any(|x| x == c.name()))
            else {
                continue;
            };
            let dir = dir_of(root, point, path).join(instance);
            match fs::create_dir(&dir) {
                Ok(()) => me.v1.push((c, dir)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    // Left by a host that crashed on this data directory.
                    sweep_stale(&dir);
                    me.v1.push((c, dir));
                }
                Err(e) => me
                    .notes
                    .push(format!("cgroup v1 {} not writable: {e}", c.name())),
            }
        }
        me
    }

    /// No cgroups, for the reason given.
    pub fn disabled(why: &str) -> Self {
        Self {
            notes: vec![why.to_string()],
            ..Self::default()
        }
    }

    /// Whether any cgroup is in use.
    pub fn is_active(&self) -> bool {
        self.v2.is_some() || !self.v1.is_empty()
    }

    fn v1_dir(&self, c: Controller) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(x, _)| *x == c)
            .map(|(_, d)| d.as_path())
    }

    /// How a controller's limit is enforced, if by a cgroup.
    pub fn mechanism(&self, c: Controller) -> Option<Mechanism> {
        if self.v2.is_some()
            && (c == Controller::Freezer || self.v2_controllers.contains(&c.name()))
        {
            Some(Mechanism::CgroupV2)
        } else if self.v1_dir(c).is_some() {
            Some(Mechanism::CgroupV1)
        } else {
            None
        }
    }

    /// One line for the host log: which mechanism enforces which limit.
    pub fn describe(&self) -> String {
        let at = |c: Controller| match self.mechanism(c) {
            Some(Mechanism::CgroupV2) => format!(
                "cgroup v2 ({})",
                self.v2.as_deref().unwrap_or(Path::new("")).display()
            ),
            Some(_) => format!(
                "cgroup v1 ({})",
                self.v1_dir(c).unwrap_or(Path::new("")).display()
            ),
            None => String::new(),
        };
        let or = |c: Controller, fallback: &str| {
            let s = at(c);
            if s.is_empty() {
                fallback.to_string()
            } else {
                s
            }
        };
        let mut line = format!(
            "resource limits: memory via {}; cpu via {}; pids via {}; open files via rlimit; descendants tracked via {}",
            or(
                Controller::Memory,
                "sampling (restart when RSS is over the limit)"
            ),
            or(
                Controller::Cpu,
                "nice value for cpu_weight, cpu quota not enforced (sampled)"
            ),
            or(Controller::Pids, "nothing (not enforced; threads sampled)"),
            or(
                Controller::Freezer,
                "subreaper adoption and the process group"
            ),
        );
        if !self.notes.is_empty() {
            line.push_str(" (");
            line.push_str(&self.notes.join("; "));
            line.push(')');
        }
        line
    }

    /// Creates (or reuses) plugin `name`'s group in every hierarchy and applies `limits`.
    pub fn plugin(&self, name: &str, limits: &LimitsConfig) -> Result<PluginCgroup, CgroupError> {
        let mut dirs = Vec::new();
        if let Some(v2) = &self.v2 {
            dirs.push((None, v2.join(name)));
        }
        for (c, d) in &self.v1 {
            dirs.push((Some(*c), d.join(name)));
        }
        let mut fresh = true;
        for (_, d) in &dirs {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => fresh = false,
                Err(e) => return Err(io(d)(e)),
            }
        }
        let cg = PluginCgroup {
            v2: self.v2.as_ref().map(|r| r.join(name)),
            v2_controllers: self.v2_controllers.clone(),
            v1: dirs
                .into_iter()
                .filter_map(|(c, d)| c.map(|c| (c, d)))
                .collect(),
        };
        // A new group starts unlimited: only limits need writing (fewer cgroupfs writes at start).
        if limits.any() || !fresh {
            cg.apply(limits)?;
        }
        Ok(cg)
    }

    /// Removes the root groups (after every plugin group was removed). A host that shuts down
    /// cleanly leaves no cgroup directory behind.
    pub fn remove(&self) {
        let dirs = self.v2.iter().chain(self.v1.iter().map(|(_, d)| d));
        for d in dirs {
            // Plugin groups left by plugins that never ran to the end (removed as they stopped).
            if let Ok(rd) = fs::read_dir(d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = fs::remove_dir(e.path());
                    }
                }
            }
            if let Err(e) = fs::remove_dir(d)
                && e.kind() != ErrorKind::NotFound
            {
                tracing::warn!(cgroup = %d.display(), "cannot remove the host's cgroup: {e}");
            }
        }
    }
}

/// Sets up the v2 root: returns it and the controllers enabled for its children.
fn setup_v2(own: &Path, instance: &str) -> Result<(PathBuf, Vec<&'static str>), CgroupError> {
    let avail_path = own.join("cgroup.controllers");
    let avail = fs::read_to_string(&avail_path).map_err(io(&avail_path))?;
    let wanted: Vec<&'static str> = ["memory", "cpu", "pids"]
        .into_iter()
        .filter(|c| avail.split_whitespace().any(|a| a == *c))
        .collect();
    let dir = own.join(instance);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => sweep_stale(&dir),
        Err(e) => return Err(io(&dir)(e)),
    }
    if wanted.is_empty() {
        return Ok((dir, wanted));
    }
    let enable: String = wanted
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let subtree = own.join("cgroup.subtree_control");
    if let Err(e) = write_file(&subtree, &enable) {
        // EBUSY: the host's own group holds processes. Move the host into a leaf and retry.
        let leaf = own.join("appfw-host");
        match fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e2) => {
                let _ = fs::remove_dir(&dir);
                return Err(io(&leaf)(e2));
            }
        }
        let moved = write_file(&leaf.join("cgroup.procs"), &std::process::id().to_string())
            .and_then(|()| write_file(&subtree, &enable));
        if let Err(e2) = moved {
            let _ = fs::remove_dir(&dir);
            tracing::debug!("enabling cgroup v2 controllers: {e}; after moving the host: {e2}");
            return Err(e2);
        }
    }
    write_file(&dir.join("cgroup.subtree_control"), &enable)?;
    Ok((dir, wanted))
}

/// Kills whatever a crashed predecessor left in `root`'s plugin groups and removes them.
fn sweep_stale(root: &Path) {
    let Ok(rd) = fs::read_dir(root) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for pid in read_pids(&p.join("cgroup.procs")) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        tracing::warn!(cgroup = %p.display(), "swept a plugin cgroup left by a previous host");
        let _ = fs::remove_dir(&p);
    }
}

fn read_pids(path: &Path) -> Vec<u32> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// One plugin's groups.
#[derive(Debug)]
pub struct PluginCgroup {
    v2: Option<PathBuf>,
    v2_controllers: Vec<&'static str>,
    v1: Vec<(Controller, PathBuf)>,
}

/// `cpu` cores as a CFS quota per 100 ms period, microseconds.
fn quota_us(cores: f64) -> u64 {
    (cores * 100_000.0).round().max(1000.0) as u64
}

/// cgroup v2 `cpu.weight` (1-10000, default 100) as v1 `cpu.shares` (default 1024).
fn shares(weight: u32) -> u64 {
    (u64::from(weight) * 1024 / 100).max(2)
}

impl PluginCgroup {
    fn v1_dir(&self, c: Controller) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(x, _)| *x == c)
            .map(|(_, d)| d.as_path())
    }

    fn v2_has(&self, c: &str) -> Option<&Path> {
        self.v2
            .as_deref()
            .filter(|_| self.v2_controllers.contains(&c))
    }

    /// Writes `limits` into the groups; limits that are not set are reset to unlimited (a
    /// reload may have removed one).
    pub fn apply(&self, limits: &LimitsConfig) -> Result<(), CgroupError> {
        let mem = limits.memory;
        if let Some(d) = self.v2_has("memory") {
            write_file(
                &d.join("memory.max"),
                &mem.map_or_else(|| "max".into(), |m| m.to_string()),
            )?;
            // The limit means memory, not memory plus swap.
            let swap = d.join("memory.swap.max");
            if swap.exists() {
                write_file(&swap, if mem.is_some() { "0" } else { "max" })?;
            }
        } else if let Some(d) = self.v1_dir(Controller::Memory) {
            let value = mem.map_or_else(|| "-1".into(), |m| m.to_string());
            let memsw = d.join("memory.memsw.limit_in_bytes");
            // memsw must stay >= the memory limit: raise order matters.
            if memsw.exists() && mem.is_none() {
                write_file(&memsw, "-1")?;
            }
            write_file(&d.join("memory.limit_in_bytes"), &value)?;
            if memsw.exists() && mem.is_some() {
                write_file(&memsw, &value)?;
            }
        }
        if let Some(d) = self.v2_has("cpu") {
            write_file(
                &d.join("cpu.max"),
                &limits.cpu.map_or_else(
                    || "max 100000".into(),
                    |c| format!("{} 100000", quota_us(c)),
                ),
            )?;
            write_file(
                &d.join("cpu.weight"),
                &limits.cpu_weight.unwrap_or(100).to_string(),
            )?;
        } else if let Some(d) = self.v1_dir(Controller::Cpu) {
            write_file(&d.join("cpu.cfs_period_us"), "100000")?;
            write_file(
                &d.join("cpu.cfs_quota_us"),
                &limits
                    .cpu
                    .map_or_else(|| "-1".into(), |c| quota_us(c).to_string()),
            )?;
            write_file(
                &d.join("cpu.shares"),
                &shares(limits.cpu_weight.unwrap_or(100)).to_string(),
            )?;
        }
        let pids = limits.pids.map_or_else(|| "max".into(), |n| n.to_string());
        if let Some(d) = self.v2_has("pids") {
            write_file(&d.join("pids.max"), &pids)?;
        } else if let Some(d) = self.v1_dir(Controller::Pids) {
            write_file(&d.join("pids.max"), &pids)?;
        }
        Ok(())
    }

    /// The `cgroup.procs` files a new process of the plugin joins: v2's one group, or in v1 the
    /// tracking hierarchy (freezer) plus only the controllers its limits use. Each v1 move takes
    /// the kernel's cgroup write lock (an RCU grace period), so a plugin without limits pays for
    /// one move, not four.
    pub fn procs_paths(&self, limits: &LimitsConfig) -> Vec<PathBuf> {
        if let Some(d) = &self.v2 {
            return vec![d.join("cgroup.procs")];
        }
        let track = self.tracking_controller();
        self.v1
            .iter()
            .filter(|(c, _)| {
                Some(*c) == track
                    || match c {
                        Controller::Memory => limits.memory.is_some(),
                        Controller::Cpu => limits.cpu.is_some() || limits.cpu_weight.is_some(),
                        Controller::Pids => limits.pids.is_some(),
                        Controller::Freezer => false,
                    }
            })
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// The v1 hierarchy that tracks membership: freezer, else pids, else memory.
    fn tracking_controller(&self) -> Option<Controller> {
        [Controller::Freezer, Controller::Pids, Controller::Memory]
            .into_iter()
            .find(|c| self.v1_dir(*c).is_some())
    }

    /// The group that tracks membership: v2, else v1 freezer, pids or memory.
    fn tracking(&self) -> Option<&Path> {
        self.v2
            .as_deref()
            .or_else(|| self.tracking_controller().and_then(|c| self.v1_dir(c)))
    }

    /// Pids of every process in the group.
    pub fn members(&self) -> Vec<u32> {
        self.tracking()
            .map(|d| read_pids(&d.join("cgroup.procs")))
            .unwrap_or_default()
    }

    /// OOM kills in the group so far, when the memory controller is in use.
    pub fn oom_kills(&self) -> Option<u64> {
        let (file, key) = if let Some(d) = self.v2_has("memory") {
            (d.join("memory.events"), "oom_kill ")
        } else {
            (
                self.v1_dir(Controller::Memory)?.join("memory.oom_control"),
                "oom_kill ",
            )
        };
        fs::read_to_string(file)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    }

    fn freeze(&self, on: bool) -> bool {
        if let Some(d) = &self.v2 {
            return write_file(&d.join("cgroup.freeze"), if on { "1" } else { "0" }).is_ok();
        }
        match self.v1_dir(Controller::Freezer) {
            Some(d) => write_file(
                &d.join("freezer.state"),
                if on { "FROZEN" } else { "THAWED" },
            )
            .is_ok(),
            None => false,
        }
    }

    /// Kills every process in the group: frozen first, so nothing forks during the sweep, then
    /// SIGKILLed, then thawed so the kills take effect. Returns `pid (comm)` of each process it
    /// killed and waits (up to `wait`) until the group is empty.
    pub async fn sweep(&self, wait: Duration) -> Vec<String> {
        let Some(track) = self.tracking() else {
            return Vec::new();
        };
        let procs = track.join("cgroup.procs");
        if read_pids(&procs).is_empty() {
            return Vec::new();
        }
        let frozen = self.freeze(true);
        if frozen {
            // v1's freezer is asynchronous: FREEZING until every task stopped.
            let state = self
                .v1_dir(Controller::Freezer)
                .map(|d| d.join("freezer.state"));
            if let Some(state) = state {
                for _ in 0..100 {
                    if fs::read_to_string(&state).is_ok_and(|s| s.trim() == "FROZEN") {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        let mut killed = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let pids = read_pids(&procs);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32)
                    && rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok()
                {
                    let entry = format!("{pid} ({})", comm.trim());
                    if !killed.contains(&entry) {
                        killed.push(entry);
                    }
                }
            }
            if frozen {
                self.freeze(false);
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(cgroup = %track.display(), "processes still in the plugin's cgroup after the sweep");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if frozen {
            self.freeze(false);
        }
        killed
    }

    /// Removes the groups (they must be empty).
    pub fn remove(&self) {
        for d in self.v2.iter().chain(self.v1.iter().map(|(_, d)| d)) {
            if let Err(e) = fs::remove_dir(d)
                && e.kind() != ErrorKind::NotFound
            {
                tracing::warn!(cgroup = %d.display(), "cannot remove a plugin cgroup: {e}");
            }
        }
    }
}

/// Writes this process's pid to each of `fds`. Called between `fork` and `exec`, so it must
/// not allocate: the pid is formatted on the stack.
pub fn join_in_child(fds: &[i32]) -> std::io::Result<()> {
    let mut buf = [0u8; 12];
    let mut n = rustix::process::getpid().as_raw_nonzero().get() as u32;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for fd in fds {
        // SAFETY: the fds are open in the parent for the whole spawn and so in the child.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
        rustix::io::write(fd, &buf[i..])?;
    }
    Ok(())
}

/// Opens `paths` for [`join_in_child`] (close-on-exec: they close at `exec`).
pub fn open_procs(paths: &[PathBuf]) -> Result<Vec<OwnedFd>, CgroupError> {
    paths
        .iter()
        .map(|p| {
            fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map(OwnedFd::from)
                .map_err(io(p))
        })
        .collect()
}

/// The raw fds of `files`, for [`join_in_child`].
pub fn raw(files: &[OwnedFd]) -> Vec<i32> {
    files.iter().map(AsRawFd::as_raw_fd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_own_cgroups_and_mounts() {
        let own = own_cgroups(
            "9:name=systemd:/\n4:memory:/sandbox/a b\n1:cpu,cpuacct:/\n0::/user.slice\n",
        );
        assert_eq!(
            own[1],
            (vec!["memory".to_string()], "/sandbox/a b".to_string())
        );
        assert_eq!(own[2].0, vec!["cpu".to_string(), "cpuacct".to_string()]);
        assert_eq!(own[3], (vec![], "/user.slice".to_string()));
        let mounts = cgroup_mounts(
            "30 25 0:26 / /sys/fs/cgroup/cpu\\040x rw,relatime shared:5 - cgroup cgroup rw,cpu,cpuacct\n\
             31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
             32 25 0:28 / /proc rw - proc proc rw\n",
        );
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].1, PathBuf::from("/sys/fs/cgroup/cpu x"));
        assert!(mounts[0].3.contains(&"cpu".to_string()));
        assert_eq!(mounts[1].2, "cgroup2");
    }

    #[test]
    fn paths_follow_the_mount_root() {
        let p = dir_of(
            "/docker/x",
            Path::new("/sys/fs/cgroup/memory"),
            "/docker/x/app",
        );
        assert_eq!(p, PathBuf::from("/sys/fs/cgroup/memory/app"));
        assert_eq!(
            dir_of("/", Path::new("/sys/fs/cgroup"), "/"),
            PathBuf::from("/sys/fs/cgroup")
        );
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = instance_id(Path::new("/var/lib/appfw"));
        assert_eq!(a, instance_id(Path::new("/var/lib/appfw")));
        assert_ne!(a, instance_id(Path::new("/var/lib/appfw2")));
        assert!(a.starts_with("appfw-") && a.len() == 18, "{a}");
    }

    #[test]
    fn v1_joins_the_tracking_hierarchy_and_only_the_limited_controllers() {
        let cg = PluginCgroup {
            v2: None,
            v2_controllers: Vec::new(),
            v1: Controller::ALL
                .into_iter()
                .map(|c| (c, PathBuf::from(format!("/cg/{}/p", c.name()))))
                .collect(),
        };
        let names = |l: &LimitsConfig| -> Vec<String> {
            cg.procs_paths(l)
                .iter()
                .map(|p| p.parent().unwrap().parent().unwrap().display().to_string())
                .collect()
        };
        assert_eq!(names(&LimitsConfig::default()), ["/cg/freezer"]);
        let l = LimitsConfig {
            memory: Some(1 << 30),
            pids: Some(10),
            ..LimitsConfig::default()
        };
        assert_eq!(names(&l), ["/cg/memory", "/cg/pids", "/cg/freezer"]);
    }

    #[test]
    fn cpu_figures_convert() {
        assert_eq!(quota_us(0.5), 50_000);
        assert_eq!(quota_us(2.0), 200_000);
        assert_eq!(shares(100), 1024);
        assert_eq!(shares(1), 10);
    }

    /// The v2 set-up and limit files, on a directory that stands in for a delegated cgroup2
    /// tree (this machine's v2 hierarchy has no controllers; v1 is tested for real by the
    /// integration tests).
    #[test]
    fn v2_limits_are_written_to_the_plugin_group() {
        let tmp = tempfile::tempdir().unwrap();
        let own = tmp.path();
        fs::write(own.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        fs::write(own.join("cgroup.subtree_control"), "").unwrap();
        let inst = own.join("appfw-x");
        fs::create_dir(&inst).unwrap();
        fs::write(inst.join("cgroup.subtree_control"), "").unwrap();
        let root = CgroupRoot {
            v2: Some(inst.clone()),
            v2_controllers: vec!["memory", "cpu", "pids"],
            ..CgroupRoot::default()
        };
        // Files a real cgroupfs creates with the group.
        let g = inst.join("web");
        fs::create_dir(&g).unwrap();
        for f in [
            "memory.max",
            "memory.swap.max",
            "cpu.max",
            "cpu.weight",
            "pids.max",
            "cgroup.procs",
        ] {
            fs::write(g.join(f), "").unwrap();
        }
        let limits = LimitsConfig {
            memory: Some(64 << 20),
            cpu: Some(0.25),
            cpu_weight: Some(200),
            pids: Some(16),
            open_files: None,
        };
        let cg = root.plugin("web", &limits).unwrap();
        let read = |f: &str| fs::read_to_string(g.join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "25000 100000");
        assert_eq!(read("cpu.weight"), "200");
        assert_eq!(read("pids.max"), "16");
        assert_eq!(cg.procs_paths(&limits), vec![g.join("cgroup.procs")]);
        cg.apply(&LimitsConfig::default()).unwrap();
        assert_eq!(read("memory.max"), "max");
        assert_eq!(read("cpu.max"), "max 100000");
        assert_eq!(read("pids.max"), "max");
        assert_eq!(
            root.mechanism(Controller::Memory),
            Some(Mechanism::CgroupV2)
        );
        assert!(
            root.describe().contains("memory via cgroup v2"),
            "{}",
            root.describe()
        );
    }
}
